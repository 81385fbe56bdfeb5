#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ on its committed corpus for FUZZ_SECONDS each (default 600),
# with libFuzzer and AddressSanitizer through cargo-fuzz on the stable toolchain
# (RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z sanitizer flags cargo-fuzz passes).
# New inputs that reach new code are added to fuzz/corpus/<target>/; a crash stops the run and
# leaves its input in fuzz/artifacts/<target>/ (replay: `cargo fuzz run <target> <file>`).
# Usage: make fuzz [FUZZ_SECONDS=600] [FUZZ_TARGETS="collector sketch partial"]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${FUZZ_SECONDS:-600}"
targets="${FUZZ_TARGETS:-collector sketch partial}"
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi
command -v c++ >/dev/null || { echo "fuzz: a C++ compiler is needed for libFuzzer (apt-get install g++)" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
cd fuzz
for t in $targets; do
    mkdir -p "corpus/$t"
    echo "fuzz: $t for ${seconds}s on corpus/$t ($(ls "corpus/$t" | wc -l) inputs)"
    cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1
    # Keep the corpus small: only inputs that add coverage.
    cargo fuzz cmin -O "$t" "corpus/$t" >/dev/null 2>&1 || echo "fuzz: cmin of $t failed (corpus kept as is)"
done
echo "fuzz: done ($targets); review and commit fuzz/corpus"
