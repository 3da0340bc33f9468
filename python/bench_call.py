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
import time
from pathlib import Path

import numpy as np

import nnc

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "bench" / "mlp_infer.nn"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nnc", default=str(ROOT / "target" / "release" / "nnc"))
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    m = nnc.compile(MODEL)
    x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
    for _ in range(200):
        m.run(x=x)
    # The median over repeats of each repeat's mean call.
    per_call = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.runs):
            m.run(x=x)
        per_call.append((time.perf_counter() - t) / args.runs * 1e6)
    py_us = statistics.median(per_call)

    out = subprocess.run(
        [args.nnc, "bench", str(MODEL), "--dim", "B=1", "--runs", str(args.runs), "--warmup", "200", "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    step_us = json.loads(out.stdout)["median_ms"] * 1e3
    print(f"model: {MODEL.relative_to(ROOT)} at batch 1")
    print(f"Python m.run(x=...): {py_us:.1f} us per call (median of {args.repeats} x {args.runs} calls)")
    print(f"nnc bench step:      {step_us:.1f} us (median of {args.runs} runs)")
    print(f"call overhead:       {py_us - step_us:.1f} us")


if __name__ == "__main__":
    main()
