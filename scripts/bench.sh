#!/usr/bin/env bash
# Benchmarks ballast against no proxy, the floor, HAProxy and nginx on the same local
# backends and prints a Markdown table of medians.
#
#   scripts/bench.sh            (settings: BENCH_* in the environment)
#
# Run `scripts/bench.sh --help` for the details. The work is done by scripts/bench.rs, the
# cargo example `bench`: this builds it (quietly; it builds what it measures itself, after
# reading its settings) and runs it under this script's name.
set -euo pipefail
SCRIPT_NAME=bench.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

harness=""
if [[ -n ${BALLAST_BIN_DIR:-} ]]; then harness=$(absolute "$BALLAST_BIN_DIR")/examples/bench; fi
if [[ ! -x $harness ]]; then
    cargo build --release --quiet --manifest-path "$REPO_ROOT/Cargo.toml" --example bench ||
        die "cargo build --release --example bench failed"
    harness=$(absolute "${CARGO_TARGET_DIR:-$REPO_ROOT/target}")/release/examples/bench
fi
exec -a "$0" "$harness" "$@"
