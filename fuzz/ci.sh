#!/usr/bin/env bash
# A short fuzzing pass over every target in fuzz_targets/ (about two
# minutes of fuzzing: 30 s each, one process each, from the seeds in
# seeds/), failing on a crash. The random seed is fixed (FUZZ_SEED, 1 by
# default), so a pass explores the same inputs in the same order on every
# run; a faster machine only gets further along them. The harnesses live
# in src/fuzz/; inputs that crashed them once are replayed by `cargo test
# --test fuzz_regressions`. Installs the nightly toolchain and cargo-fuzz
# when they are missing.
#
#   fuzz/ci.sh                 every target, 30 s each
#   FUZZ_SECONDS=300 fuzz/ci.sh loaders
#   FUZZ_SEED=7 fuzz/ci.sh differential
#   FUZZ_BUILD=dev fuzz/ci.sh  the dev profile (opt-level 1 for nnc and
#                              Cranelift, 0 for the rest: a shorter build,
#                              fewer executions per second), as CI
#   FUZZ_SANITIZER=none fuzz/ci.sh
#                              without AddressSanitizer, as CI
#   FUZZ_JOBS=2 fuzz/ci.sh     two targets at a time (each fuzzer is one
#                              process on one core), as CI; their output
#                              is printed when each ends
#   FUZZ_ONLY_BUILD=1 fuzz/ci.sh
#                              the toolchain, cargo-fuzz and the build,
#                              no fuzzing (CI builds while it tests)
set -euo pipefail
cd "$(dirname "$0")"

if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seconds="${FUZZ_SECONDS:-30}"
seed="${FUZZ_SEED:-1}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(parse_check compile_run differential loaders)
fi

# -a: debug assertions on, as in `cargo test` (the IR verifier runs);
# the dev profile has them anyway.
case "${FUZZ_BUILD:-release}" in
    release) mode=(-O -a) ;;
    dev) mode=(--dev) ;;
    *) echo "FUZZ_BUILD is release or dev, not ${FUZZ_BUILD}" >&2; exit 2 ;;
esac
# AddressSanitizer by default; FUZZ_SANITIZER=none leaves it out (the
# build takes about two thirds of the time), keeping the coverage and the
# debug assertions.
mode+=(-s "${FUZZ_SANITIZER:-address}")
echo "== cargo +nightly fuzz build ${mode[*]} ($(date -u +%H:%M:%S))"
cargo +nightly fuzz build "${mode[@]}"
if [ "${FUZZ_ONLY_BUILD:-0}" = 1 ]; then
    exit 0
fi

jobs="${FUZZ_JOBS:-1}"
fuzz_one() {
    local t=$1
    # New inputs go to corpus/$t (ignored by git); seeds/ is only read.
    mkdir -p "corpus/$t"
    cargo +nightly fuzz run "${mode[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -seed="$seed" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1
}

if [ "$jobs" -le 1 ]; then
    for t in "${targets[@]}"; do
        echo "== fuzz $t for ${seconds}s"
        fuzz_one "$t"
    done
else
    # Batches of $jobs targets at once, each into a log of its own,
    # printed in order; every target of a batch runs to its end.
    logs=$(mktemp -d)
    trap 'rm -rf "$logs"' EXIT
    failed=()
    for ((i = 0; i < ${#targets[@]}; i += jobs)); do
        batch=("${targets[@]:i:jobs}")
        pids=()
        for t in "${batch[@]}"; do
            fuzz_one "$t" >"$logs/$t" 2>&1 &
            pids+=($!)
        done
        for k in "${!batch[@]}"; do
            t=${batch[$k]}
            status=0
            wait "${pids[$k]}" || status=$?
            echo "== fuzz $t for ${seconds}s (exit $status)"
            cat "$logs/$t"
            if [ "$status" != 0 ]; then failed+=("$t"); fi
        done
    done
    if [ ${#failed[@]} -gt 0 ]; then
        echo "== crash or error in: ${failed[*]} ($(date -u +%H:%M:%S))"
        exit 1
    fi
fi
echo "== no crash ($(date -u +%H:%M:%S))"
