#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 10), one after another,
# then prints how many inputs each one executed. Exits non-zero if any target crashed.
#
#   fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). libFuzzer wants a nightly
# compiler; RUSTC_BOOTSTRAP=1 lets the stable toolchain act as one for this build only.
# FUZZ_SANITIZER picks the sanitizer (default: address; `none` if it cannot build).
# FUZZ_BUILD_ARGS adds cargo-fuzz build options (e.g. `--codegen-units 16` for a quicker
# build, as CI does); CARGO_TARGET_DIR moves the build (cargo-fuzz follows it).
# Corpora grow in fuzz/corpus/<target>/, crash inputs land in fuzz/artifacts/<target>/.
set -euo pipefail

secs="${1:-10}"
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds-per-target]" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"
logs="$(mktemp -d)"

echo "building fuzz targets (sanitizer: $sanitizer)"
# shellcheck disable=SC2086 # FUZZ_BUILD_ARGS is a list of options
build_args=(--sanitizer "$sanitizer" ${FUZZ_BUILD_ARGS:-})
cargo fuzz build "${build_args[@]}"

targets=()
while IFS= read -r t; do
    targets+=("$t")
done < <(cargo fuzz list)

failed=0
for t in "${targets[@]}"; do
    echo "running $t for ${secs}s"
    mkdir -p "fuzz/corpus/$t"
    if ! cargo fuzz run "${build_args[@]}" "$t" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$logs/$t.log" 2>&1; then
        failed=1
        echo "  $t FAILED; last lines of its log:"
        tail -n 30 "$logs/$t.log" | sed 's/^/    /'
    fi
done

echo
printf '%-16s %14s %10s %8s  %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
    log="$logs/$t.log"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    corpus="$(find "fuzz/corpus/$t" -type f | wc -l)"
    if grep -q '^==[0-9]*==ERROR\|^SUMMARY\|panicked at' "$log"; then
        result=crash
    else
        result=ok
    fi
    printf '%-16s %14s %10s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$result"
done
echo "logs: $logs"
exit "$failed"
