#!/usr/bin/env bash
# Soak test: keep-alive load through the balancer while backends are killed and restarted
# and the configuration is reloaded, then a check that nothing leaked.
#
#   scripts/soak.sh [DURATION_SECONDS]      (default 60, at most 3600; settings: SOAK_*)
#
# Run `scripts/soak.sh --help` for the details. The work is done by scripts/soak.rs, the
# cargo example `soak`: this builds it (quietly; it builds what it tests itself, after
# reading its settings) and runs it under this script's name.
set -euo pipefail
SCRIPT_NAME=soak.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

harness=""
if [[ -n ${BALLAST_BIN_DIR:-} ]]; then harness=$(absolute "$BALLAST_BIN_DIR")/examples/soak; fi
if [[ ! -x $harness ]]; then
    cargo build --release --quiet --manifest-path "$REPO_ROOT/Cargo.toml" --example soak ||
        die "cargo build --release --example soak failed"
    harness=$(absolute "${CARGO_TARGET_DIR:-$REPO_ROOT/target}")/release/examples/soak
fi
exec -a "$0" "$harness" "$@"
