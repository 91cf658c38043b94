#!/usr/bin/env bash
# Bytes parked per stalled reader (a client that never reads, behind a backend that writes
# as fast as it can), ballast beside HAProxy and a direct connection. Builds the release
# binaries, then runs scripts/stalled_readers.rs; HAProxy rows need `haproxy` on PATH
# (Debian: apt-get install haproxy). Loopback only; takes about a minute.
set -euo pipefail
SCRIPT_NAME=stalled.sh
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/stalled.sh [--help]

Prints a markdown table: per system, the median and largest number of bytes parked per
stalled stream (50 clients with a 64 KiB receive buffer that never read).
USAGE
}

case ${1:-} in
"") ;;
-h | --help) usage; exit 0 ;;
*) bad_usage "unknown argument '$1'" ;;
esac

cd "$REPO_ROOT"
cargo build --release --quiet --bin ballast --example stalled_readers
exec target/release/examples/stalled_readers target/release/ballast
