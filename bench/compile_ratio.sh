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
# With STAGES=1 it then runs each file N more times with NNC_LOG=compile
# (apart: the log's reads of /proc cost a little) and prints each
# compiler stage's median time for A and for B, and B − A: where B's
# extra compile time goes.
#
# usage: bench/compile_ratio.sh [N] [A.nn B.nn]
# env: NNC (target/release/nnc), STAGES (1: the stages' table too)
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

[[ ${STAGES:-0} == 1 ]] || exit 0
# "file<TAB>order<TAB>stage<TAB>ms" for every stage NNC_LOG=compile reports in one
# cold run of $1 (a stage that runs more than once, such as cse, summed).
stage_ms() {
  NNC_LOG=compile "$NNC" bench "$1" --runs 1 --warmup 0 --format json 2>&1 >/dev/null |
    sed -n 's/^\[compile\] \(.*\): \([0-9.]*\) ms.*/\1\t\2/p' |
    awk -F'\t' -v f="$2" '{ms[$1] += $2; if (!($1 in at)) at[$1] = n++}
      END {for (s in ms) printf "%s\t%d\t%s\t%s\n", f, at[s], s, ms[s]}'
}
rows=$(for _ in $(seq "$N"); do stage_ms "$A" A; stage_ms "$B" B; done)
echo
echo "stage medians over $N cold runs each (ms; NNC_LOG=compile):"
printf '| stage | A | B | B − A |\n| --- | --- | --- | --- |\n'
# Per stage, in the order the compiler ran them for B, each file's median
# ("-" where a file's compile has no such stage).
sort -t$'\t' -k3,3 -k1,1 -k4,4g <<<"$rows" | awk -F'\t' '
  {if ($1 == "B") atb[$3] = $2; else ata[$3] = $2; v[$1, $3, ++c[$1, $3]] = $4}
  END {
    # B'\''s order; a stage only A ran goes just before its place in A.
    for (s in ata) at[s] = ata[s] - 0.5
    for (s in atb) at[s] = atb[s]
    for (s in at) {
      a = c["A", s] ? v["A", s, int((c["A", s] + 1) / 2)] : "-"
      b = c["B", s] ? v["B", s, int((c["B", s] + 1) / 2)] : "-"
      printf "%s\t%s\t%s\t%s\n", at[s], s, a, b
    }
  }' | sort -n | awk -F'\t' '{
    d = ($3 == "-" || $4 == "-") ? "-" : sprintf("%+.2f", $4 - $3)
    fa = ($3 == "-") ? "-" : sprintf("%.2f", $3); fb = ($4 == "-") ? "-" : sprintf("%.2f", $4)
    printf "| %s | %s | %s | %s |\n", $2, fa, fb, d
  }'
