#!/usr/bin/env bash
# bench/compare.sh: nnc vs the peer frameworks, same workloads, same run.
#
# For each workload it runs `nnc bench` and then the peer script from
# ../shared/bench (see ANCHORS.md there), back to back, and prints a markdown
# table: median [min-max] ms for both sides, ratio nnc/peer (< 1: nnc faster),
# nnc's compile_ms (plus init_ms, drawing the parameters' initial values)
# and the peer's setup time (jax/torch: first step, i.e. trace + compile;
# onnxruntime: session creation), all in ms.
# matmul is shown in GFLOP/s (2*n^3 / median time); its ratio is nnc/peer in
# GFLOP/s (> 1: nnc faster). Peers are pinned to ANCHOR_THREADS (default 2)
# threads. The memory column gives nnc's planned buffers and its process's
# peak resident memory, and the peer process's peak resident memory (one
# peer process may run several workloads: its peak covers all of them).
#
# The ratios only mean something within one run, on an idle machine; never
# compare them with figures from another run or another machine.
#
# usage: bench/compare.sh [--families] [NAMES]
#   NAMES   comma-separated workload names or prefixes (default: all core ones):
#           mlp_train mlp_infer_b1 mlp_infer_b128 chain matmul_512 matmul_1024
#           and, with --families or by name, lenet_train lstm_train transformer_train
#           transformer_stack_1 transformer_stack_8 transformer_stack_32
# env: NNC (target/release/nnc), PEER_PY (/work/venv-peers/bin/python),
#      SHARED_BENCH (../shared/bench from the repo root), RUNS (50),
#      KEEP_LOGS=1 keeps the raw logs (their folder is printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
NNC=${NNC:-target/release/nnc}
PEER_PY=${PEER_PY:-/work/venv-peers/bin/python}
SB=$(cd "${SHARED_BENCH:-../shared/bench}" && pwd)
RUNS=${RUNS:-50}
export ANCHOR_THREADS=${ANCHOR_THREADS:-2}

FAMILIES=0 SEL=""
for a in "$@"; do
  case $a in --families) FAMILIES=1 ;; -h|--help) awk 'NR>1 && !/^#/ {exit} NR>1' "$0"; exit 0 ;; *) SEL=$a ;; esac
done
[ -x "$PEER_PY" ] || { echo "no python at PEER_PY=$PEER_PY" >&2; exit 2; }
LOGS=$(mktemp -d /tmp/nnc-compare.XXXXXX)
[ "${KEEP_LOGS:-0}" = 1 ] || trap 'rm -rf "$LOGS"' EXIT
# One untimed nnc process first. On the VMs this is measured on, the first
# process after a pause compiled mlp_train in 48-72 ms and drew its
# parameters in 47-53 ms, against 7-13 ms and 1.6-2 ms in the processes
# right after: without this, that lands on whichever workload runs first.
"$NNC" bench examples/bench/mlp_train.nn --runs 1 --warmup 0 > /dev/null 2>&1 || true

wanted() {  # wanted NAME FAMILY?: selected by NAMES, else by the default set
  if [ -n "$SEL" ]; then
    local p; IFS=, read -ra ps <<< "$SEL"
    for p in "${ps[@]}"; do [[ $1 == "$p"* ]] && return 0; done; return 1
  fi
  [ "$2" = 0 ] || [ "$FAMILIES" = 1 ]
}

nnc() {  # nnc OUT FILE [--dim ..]: one JSON line, or an error object
  local out=$1 file=$2; shift 2
  echo ">> nnc $file $*" >&2
  if ! "$NNC" bench "examples/bench/$file.nn" --format json --runs "$RUNS" "$@" \
      > "$LOGS/$out.json" 2> "$LOGS/$out.err"; then
    echo '{"error": "nnc failed"}' > "$LOGS/$out.json"; tail -5 "$LOGS/$out.err" >&2
  fi
}

peer() {  # peer KEY CMD...: run the peer once per invocation (shared by rows)
  local key=$1; shift
  [ -e "$LOGS/$key.log" ] && return 0
  echo ">> peer $*" >&2
  # The peer's peak resident memory, from its rusage once it exits.
  "$PEER_PY" -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[1:])
print("PEAK_RSS", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.exit(r.returncode)' "$@" > "$LOGS/$key.log" 2>&1 \
    || { echo "peer $key exited with $?:" >&2; tail -5 "$LOGS/$key.log" >&2; }
}

row() {  # row NAME NNC_OUT PEER_LABEL PEER_KEY RESULT_TAG [GEMM_N]
  "$PEER_PY" - "$LOGS" "$@" <<'EOF'
import json, sys
logs, name, nout, label, key, tag = sys.argv[1:7]
n = int(sys.argv[7]) if len(sys.argv) > 7 else 0
def load_nnc():
    try:
        lines = [l for l in open(f"{logs}/{nout}.json") if l.strip()]
        return json.loads(lines[-1])
    except Exception as e:
        return {"error": f"bad nnc output: {e!r}"[:80]}
def load_peer():
    for l in open(f"{logs}/{key}.log"):
        if l.startswith(f"RESULT {tag} "):
            return json.loads(l[len(f"RESULT {tag} "):])
        # bench_stack.py: "torch eager L=8 first 812 ms median 27.10 ms"
        w = l.split()
        if tag.startswith("stack/") and len(w) == 9 and w[2] == tag.split("/")[1]:
            return {"median": float(w[7]) / 1e3, "first_step_s": float(w[4]) / 1e3}
    return {"error": f"no RESULT {tag}"}
def peer_rss():
    for l in open(f"{logs}/{key}.log"):
        if l.startswith("PEAK_RSS "):
            return int(l.split()[1])
    return None
mib = lambda b: f"{b / 2**20:.0f}" if b is not None else "?"
a, p = load_nnc(), load_peer()
if n:  # peer result is {"<n>": {"gflops_median": ..}}, by size
    p = p.get(str(n), p)
ok_a, ok_p = "error" not in a, "error" not in p
cells = [name]
gf = lambda ms: 2 * n ** 3 / (ms * 1e-3) / 1e9
if n:
    cells.append(f"{gf(a['median_ms']):.1f} GFLOP/s ({a['median_ms']:.3f} ms [{a['min_ms']:.3f}–{a['max_ms']:.3f}])"
                 if ok_a else f"n/a ({a['error']})")
    cells.append(label)
    cells.append(f"{p['gflops_median']:.1f} GFLOP/s [{p['gflops_worst']:.1f}–{p['gflops_best']:.1f}]"
                 if ok_p else f"n/a ({p['error']})")
    cells.append(f"{gf(a['median_ms']) / p['gflops_median']:.2f} (GFLOP/s)" if ok_a and ok_p else "n/a")
    first = None
else:
    cells.append(f"{a['median_ms']:.3f} [{a['min_ms']:.3f}–{a['max_ms']:.3f}]" if ok_a else f"n/a ({a['error']})")
    cells.append(label)
    spread = f" [{p['min']*1e3:.3f}–{p['max']*1e3:.3f}]" if ok_p and "min" in p else ""
    cells.append(f"{p['median']*1e3:.3f}{spread}" if ok_p else f"n/a ({p['error'][:80]})")
    cells.append(f"{a['median_ms'] / (p['median'] * 1e3):.2f}" if ok_a and ok_p else "n/a")
    # peer setup: jax/torch first step (trace + compile), onnxruntime session creation
    first = next((p[k] for k in ("first_step_s", "first_call_s", "session_s") if p.get(k)), None) if ok_p else None
c = f"{a['compile_ms']:.0f} + {a.get('init_ms', 0):.0f}" if ok_a else "n/a"
cells.append(c + (f" (peer setup {first*1e3:.0f})" if first else ""))
cells.append(f"{mib(a.get('planned_bytes'))} / {mib(a.get('peak_rss_bytes'))} · {mib(peer_rss())}"
             if ok_a else f"n/a · {mib(peer_rss())}")
print("| " + " | ".join(cells) + " |")
EOF
}

ROWS=()
add() { ROWS+=("$(row "$@")"); }

if wanted mlp_train 0; then
  nnc mlp_train mlp_train
  peer jax "$PEER_PY" "$SB/bench_jax.py" mlp --steps "$RUNS"
  add mlp_train mlp_train "jax.jit" jax train/jax-jit/mlp
fi
for b in 1 128; do
  wanted "mlp_infer_b$b" 0 || continue
  # Timed as bench_onnx.py times onnxruntime: 20 runs' warm-up, then runs
  # until they add up to half a second.
  nnc "mlp_infer_b$b" mlp_infer --dim "B=$b" --warmup 20 --min-time 0.5
  peer onnx "$PEER_PY" "$SB/bench_onnx.py"          # measures batch 1 and 128
  add "mlp_infer_b$b" "mlp_infer_b$b" "onnxruntime" onnx "infer/onnxruntime/mlp/bs$b"
done
if wanted chain 0; then
  nnc chain chain
  # the script also times torch eager/torch.compile; dynamo off skips the compile
  peer elem env TORCHDYNAMO_DISABLE=1 "$PEER_PY" "$SB/bench_elementwise.py" 16777216
  add chain chain "jax.jit" elem "elementwise/N=16777216/jax.jit"
  add chain chain "numpy (unfused)" elem "elementwise/N=16777216/numpy (unfused, 1 thr)"
fi
for n in 512 1024; do
  wanted "matmul_$n" 0 || continue
  nnc "matmul_$n" matmul --dim "N=$n"
  peer gemm "$PEER_PY" "$SB/bench_gemm.py" numpy     # all sizes 128..2048
  add "matmul_$n" "matmul_$n" "numpy sgemm (OpenBLAS)" gemm gemm/numpy/default-env "$n"
done
if wanted lenet_train 1; then
  nnc lenet_train lenet_train
  peer torch_eager "$PEER_PY" "$SB/bench_torch.py" eager lenet --steps "$RUNS"
  add lenet_train lenet_train "torch eager" torch_eager train/torch-eager/lenet
fi
for m in lstm transformer; do
  wanted "${m}_train" 1 || continue
  nnc "${m}_train" "${m}_train"
  peer torch_compile "$PEER_PY" "$SB/bench_torch.py" compile lstm transformer --steps "$RUNS"
  add "${m}_train" "${m}_train" "torch.compile" torch_compile "train/torch-compile/$m"
done

for l in 1 8 32; do
  wanted "transformer_stack_$l" 1 || continue
  nnc "transformer_stack_$l" "transformer_stack_$l"
  peer "stack_$l" "$PEER_PY" "$SB/bench_stack.py" "$l" eager
  add "transformer_stack_$l" "transformer_stack_$l" "torch eager" "stack_$l" "stack/L=$l"
done

[ ${#ROWS[@]} -gt 0 ] || { echo "no workload matches '$SEL'" >&2; exit 2; }
echo
echo "nnc vs peers, $(date -u +%FT%TZ), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg), RUNS=$RUNS, peer threads=$ANCHOR_THREADS"
echo
echo "| workload | nnc median ms [min–max] | peer | peer median ms | ratio nnc/peer | compile_ms + init_ms | MiB: nnc planned / peak RSS · peer peak RSS |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
[ "${KEEP_LOGS:-0}" = 1 ] && echo "logs: $LOGS" >&2
exit 0
