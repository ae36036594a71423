#!/usr/bin/env bash
# Smoke-runs every cargo-fuzz target in fuzz/ for a few seconds each.
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]      (default 20; or FUZZ_SECONDS=...)
#
# - Installs cargo-fuzz with `cargo install --locked cargo-fuzz` when it is missing.
# - Works on a stable toolchain: libFuzzer needs nightly-only compiler flags (-Z sanitizer...),
#   which RUSTC_BOOTSTRAP=1 unlocks; set FUZZ_TOOLCHAIN=nightly to use `cargo +nightly` instead.
# - First replays the saved inputs in fuzz/regressions/<target>/ (inputs that crashed before),
#   then fuzzes from fuzz/corpus/<target>/ (local, ignored by git) seeded with fuzz/seeds/
#   (the golden-vector entries), with the libFuzzer dictionary fuzz/fuzz_targets/<target>.dict
#   when there is one.
# - Targets: every one `cargo fuzz list` names (fuzz/Cargo.toml): verify_entry and
#   foreign_then_genuine (ledger entry verification), decode_request (api request decoding)
#   and verify_token (projector bearer tokens).
# - The first build compiles the ledger, projector and api crates and their dependencies with
#   AddressSanitizer into fuzz/target: about 15 minutes on 2 cores; later runs reuse it.
#
# Exit status: 0 when no target crashed; 1 when one or more crashed (crash inputs are in
# fuzz/artifacts/<target>/); 2 when cargo-fuzz could not be installed or a target not built.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-${FUZZ_SECONDS:-20}}"
case "$seconds" in
    '' | *[!0-9]*) echo "fuzz-smoke: seconds must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz missing; installing it (cargo install --locked cargo-fuzz)"
    if ! cargo install --locked cargo-fuzz; then
        echo "fuzz-smoke: SETUP FAILED: could not install cargo-fuzz" >&2
        exit 2
    fi
fi

cargo_fuzz=(cargo fuzz)
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    cargo_fuzz=(cargo "+$FUZZ_TOOLCHAIN" fuzz)
else
    export RUSTC_BOOTSTRAP=1
fi

cd fuzz
targets=$("${cargo_fuzz[@]}" list) || { echo "fuzz-smoke: SETUP FAILED: cargo fuzz list" >&2; exit 2; }
if [ -z "$targets" ]; then
    echo "fuzz-smoke: SETUP FAILED: no fuzz targets found" >&2
    exit 2
fi

crashed=()
for t in $targets; do
    echo "fuzz-smoke: building $t"
    if ! "${cargo_fuzz[@]}" build "$t"; then
        echo "fuzz-smoke: SETUP FAILED: could not build $t" >&2
        exit 2
    fi
    regressions=()
    if [ -d "regressions/$t" ]; then
        while IFS= read -r -d '' f; do regressions+=("$f"); done < <(find "regressions/$t" -type f -print0)
    fi
    if [ "${#regressions[@]}" -gt 0 ]; then
        echo "fuzz-smoke: $t: replaying ${#regressions[@]} saved input(s) from fuzz/regressions/$t"
        if ! "${cargo_fuzz[@]}" run "$t" "${regressions[@]}" -- -runs=1; then
            echo "fuzz-smoke: $t CRASHED on a saved regression input" >&2
            crashed+=("$t (regression)")
            continue
        fi
    fi
    mkdir -p "corpus/$t"
    dict=()
    if [ -f "fuzz_targets/$t.dict" ]; then
        dict=("-dict=fuzz_targets/$t.dict")
    fi
    echo "fuzz-smoke: fuzzing $t for ${seconds}s"
    if ! "${cargo_fuzz[@]}" run "$t" "corpus/$t" seeds -- -max_total_time="$seconds" ${dict[@]+"${dict[@]}"}; then
        echo "fuzz-smoke: $t CRASHED; the input is in fuzz/artifacts/$t/" >&2
        crashed+=("$t")
    fi
done

if [ "${#crashed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${crashed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: ok: every target ran ${seconds}s without a crash: $(echo $targets)"
