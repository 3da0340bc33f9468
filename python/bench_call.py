"""The cost of calling nnc from Python: `Model.run` at batch 1 against the
step `nnc bench` times in process, on the same model.

    python python/bench_call.py [--nnc target/release/nnc] [--runs 5000]

`nnc bench` times the compiled step alone, its inputs loaded once; a
Python call also converts the keyword arguments and the input array,
releases and retakes the GIL, loads the input into the program, runs it
and hands its output to NumPy. The difference is the call's overhead.
Compare builds of the same profile (a release wheel with a release `nnc`).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# The installed package, not its sources beside this script (which lack
# the compiled extension).
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import nnc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "bench" / "mlp_infer.nn"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nnc", default=str(ROOT / "target" / "release" / "nnc"))
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
    py_us, py_best = per_call(nnc.compile(MODEL), x, args.runs, args.repeats)
    # A graph that does next to nothing: what any call costs.
    tiny = nnc.compile(source="input x: [N]\noutput y = x + 1.0\n", name="tiny.nn")
    tiny_us, tiny_best = per_call(tiny, np.zeros(1, np.float32), args.runs, args.repeats)

    out = subprocess.run(
        [args.nnc, "bench", str(MODEL), "--dim", "B=1", "--runs", str(args.runs), "--warmup", "200", "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    bench = json.loads(out.stdout)
    step_us, step_best = bench["median_ms"] * 1e3, bench["min_ms"] * 1e3
    print(f"model: {MODEL.relative_to(ROOT)} at batch 1; {args.repeats} x {args.runs} calls, median (best)")
    print(f"Python m.run(x=...):  {py_us:6.1f} us ({py_best:.1f}) per call")
    print(f"nnc bench step:       {step_us:6.1f} us ({step_best:.1f})")
    print(f"call overhead:        {py_us - step_us:6.1f} us ({py_best - step_best:.1f})")
    print(f"m.run on a 1-element graph: {tiny_us:.1f} us ({tiny_best:.1f}) per call")


def per_call(m, x, runs, repeats):
    """The median and the best over `repeats` of the mean time of a call, in us."""
    for _ in range(200):
        m.run(x=x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(runs):
            m.run(x=x)
        times.append((time.perf_counter() - t) / runs * 1e6)
    return statistics.median(times), min(times)

if __name__ == "__main__":
    main()
