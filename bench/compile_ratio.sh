#!/usr/bin/env bash
# bench/compile_ratio.sh [N] [A.nn B.nn]: how B's cold compile time
# compares with A's (by default transformer_stack_32 against
# transformer_stack_1: a model's compile cost should grow with the model,
# not with its repetition).
#
# Each file is compiled in N fresh processes (default 11) of
# `nnc bench F --runs 1 --warmup 0 --format json`, the two files
# alternated so that a slow stretch of a shared machine falls on both;
# prints each file's median (the lower of the middle two for an even N),
# min and max compile_ms, and the ratio of the medians, B / A. compile_ms
# leaves out drawing the parameters' initial values (init_ms) and making
# up the inputs.
#
# usage: bench/compile_ratio.sh [N] [A.nn B.nn]
# env: NNC (target/release/nnc)
set -euo pipefail
cd "$(dirname "$0")/.."
NNC=${NNC:-target/release/nnc}
N=11
if [[ $# -eq 1 || $# -eq 3 ]]; then
  N=$1
  shift
fi
A=${1:-examples/bench/transformer_stack_1.nn}
B=${2:-examples/bench/transformer_stack_32.nn}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "N must be a positive count, not '$N'" >&2; exit 2; }
for f in "$A" "$B"; do
  [ -f "$f" ] || { echo "no such file: $f" >&2; exit 2; }
done
[ -x "$NNC" ] || { echo "no nnc at NNC=$NNC (cargo build --release)" >&2; exit 2; }

compile_ms() {
  local out
  out=$("$NNC" bench "$1" --runs 1 --warmup 0 --format json) || { echo "nnc bench $1 failed" >&2; exit 1; }
  sed -n 's/.*"compile_ms":\([0-9.]*\).*/\1/p' <<<"$out"
}
# median min max of the numbers on stdin
stats() {
  sort -g | awk '{v[NR] = $1} END {printf "%.2f %.2f %.2f\n", v[int((NR + 1) / 2)], v[1], v[NR]}'
}

ta=() tb=()
for _ in $(seq "$N"); do
  ta+=("$(compile_ms "$A")")
  tb+=("$(compile_ms "$B")")
done
read -r ma loa hia < <(printf '%s\n' "${ta[@]}" | stats)
read -r mb lob hib < <(printf '%s\n' "${tb[@]}" | stats)
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpus, $(grep -o 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
printf '%s: compile_ms median %s [%s–%s] over %s cold runs\n' "$A" "$ma" "$loa" "$hia" "$N"
printf '%s: compile_ms median %s [%s–%s] over %s cold runs\n' "$B" "$mb" "$lob" "$hib" "$N"
awk -v a="$ma" -v b="$mb" 'BEGIN {printf "ratio %.2f\n", b / a}'
