#!/usr/bin/env bash
# bench/aot/run.sh: the MLP of examples/bench/mlp_infer.nn compiled to a
# library (`nnc compile`, batch 1 and 128) and called from C: NAME_run's
# median over 200 calls, load + first run in a fresh process (three
# times) and the memory 8 execution contexts add; then the library whose
# batch takes any size at run time (no --dim: it runs chunks of 64, 32,
# …, 1 rows) at 1, 100 and 128 rows.
# Compare with `bench/compare.sh mlp_infer` in the same session.
# env: NNC (target/release/nnc), CC (cc).
set -euo pipefail
cd "$(dirname "$0")/../.."
NNC=${NNC:-target/release/nnc}
CC=${CC:-cc}
work=$(mktemp -d /tmp/nnc-aot-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$CC" -O2 -std=c99 -Wall -o "$work/mlp_run" bench/aot/mlp_run.c -ldl
for b in 1 128; do
  "$NNC" compile examples/bench/mlp_infer.nn --dim "B=$b" -o "$work/mlp$b.so" --name "mlp$b" >/dev/null
  "$work/mlp_run" time "$work/mlp$b.so" "mlp${b}_new" "mlp${b}_run"
  for _ in 1 2 3; do
    "$work/mlp_run" load "$work/mlp$b.so" "mlp${b}_new" "mlp${b}_run"
  done
  "$work/mlp_run" contexts "$work/mlp$b.so" "mlp${b}_new" "mlp${b}_run"
done
"$NNC" compile examples/bench/mlp_infer.nn -o "$work/mlpany.so" --name mlpany >/dev/null
for b in 1 100 128; do
  "$work/mlp_run" rows "$work/mlpany.so" mlpany_new mlpany_run "$b"
done
