#!/usr/bin/env bash
# Screenshots the admin status page in headless Chromium while a small demo runs under load.
#
#   scripts/screenshot.sh [OUTPUT.png]      (OUTPUT defaults to scripts/status.png)
#
# Run `scripts/screenshot.sh --help` for the details.
set -euo pipefail
SCRIPT_NAME=screenshot.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/screenshot.sh [OUTPUT.png]

Starts three demo backends (vm1, vm2, vm3) and ballast (WorkloadSensitive, admin listener
on a free loopback port) on a generated configuration, plus a fourth backend (vm4) that
is configured but not running, so the page shows a backend down. It then puts the demo
under bounded load (wrk when installed, otherwise parallel bash /dev/tcp requests) in
rising phases, changes vm2's weight and drains vm3 through the admin API half-way, and
once enough history has been sampled, saves a screenshot of the status page taken with
headless Chromium. Everything it started is stopped when it exits.

OUTPUT defaults to scripts/status.png in the repository.

Exit status: 0 when the screenshot was written, 1 when something failed, 2 for bad
arguments or when Chromium is missing (`apt-get install chromium` brings it on Debian;
this script installs nothing).

Environment:
  SCREENSHOT_SECONDS  seconds of load (and history) before the shot (default: 24, min 8)
  CHROMIUM            browser to use (default: the first of chromium, chromium-browser,
                      google-chrome found on PATH)
  BALLAST_BIN_DIR     use ballast and ballast-backend from this directory and skip
                      `cargo build --release`
EOF
}

# --- arguments -----------------------------------------------------------------------------

case ${1:-} in
-h | --help) usage; exit 0 ;;
-*) bad_usage "unknown option '$1'" ;;
esac
(($# <= 1)) || bad_usage "expected at most one argument, the output file"
OUTPUT=$(absolute "${1:-$REPO_ROOT/scripts/status.png}")
[[ -d $(dirname "$OUTPUT") ]] || bad_usage "no directory for $OUTPUT"

SECONDS_OF_LOAD=${SCREENSHOT_SECONDS:-24}
if ! is_uint "$SECONDS_OF_LOAD" || ((SECONDS_OF_LOAD < 8)); then
    bad_usage "SCREENSHOT_SECONDS must be whole seconds, at least 8, not '$SECONDS_OF_LOAD'"
fi

BROWSER=${CHROMIUM:-}
if [[ -z $BROWSER ]]; then
    for candidate in chromium chromium-browser google-chrome; do
        if command -v "$candidate" >/dev/null 2>&1; then
            BROWSER=$candidate
            break
        fi
    done
fi
if [[ -z $BROWSER ]] || ! command -v "$BROWSER" >/dev/null 2>&1; then
    note "headless Chromium is needed and was not found${BROWSER:+ ($BROWSER)}."
    note "On Debian or Ubuntu, 'apt-get install chromium' brings it (this script installs nothing)."
    exit 2
fi

# --- binaries ------------------------------------------------------------------------------

cd "$REPO_ROOT"
find_binaries

# --- cleanup -------------------------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ballast-screenshot.XXXXXX")
PIDS=()
LOAD_PIDS=()

cleanup() {
    local status=$? pid n
    trap - EXIT INT TERM HUP
    for pid in ${LOAD_PIDS[@]+"${LOAD_PIDS[@]}"}; do
        # The load generators are process groups of their own (set -m below).
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((n = 0; n < 50; n++)); do
        local running=0
        for pid in ${PIDS[@]+"${PIDS[@]}"} ${LOAD_PIDS[@]+"${LOAD_PIDS[@]}"}; do
            if kill -0 "$pid" 2>/dev/null; then running=1; fi
        done
        ((running)) || break
        sleep 0.1
    done
    for pid in ${PIDS[@]+"${PIDS[@]}"} ${LOAD_PIDS[@]+"${LOAD_PIDS[@]}"}; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# Waits up to 10 s for FILE to have a line matching the extended regex PATTERN while PID
# lives; prints the first part captured by sed expression EXTRACT.
wait_for() {
    local file=$1 extract=$2 pid=$3 what=$4 found
    for ((n = 0; n < 200; n++)); do
        found=$(sed -n -E "$extract" "$file" 2>/dev/null | head -n 1)
        if [[ -n $found ]]; then
            printf '%s\n' "$found"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    note "$what did not start; its output:"
    sed -e 's/^/    /' "$file" "$file.err" 2>/dev/null | tail -n 20 >&2
    return 1
}

# --- backends and balancer -----------------------------------------------------------------

# A free loopback port: a throwaway backend binds port 0 and is stopped at once.
free_port() {
    local out=$WORK/port.$1.out pid addr
    "$BACKEND" --listen 127.0.0.1:0 --id "port-$1" </dev/null >"$out" 2>"$out.err" &
    pid=$!
    PIDS+=("$pid")
    addr=$(wait_for "$out" 's/^listening on ([^ ]+).*/\1/p' "$pid" "port finder") || return 1
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    printf '%s\n' "${addr##*:}"
}

# CPU burnt per request differs per backend, so their /load readings differ.
declare -A BURN=([vm1]=1 [vm2]=3 [vm3]=2 [vm4]=1)
declare -A ADDR
for name in vm1 vm2 vm3 vm4; do
    out=$WORK/$name.out
    "$BACKEND" --listen 127.0.0.1:0 --id "$name" --max-requests 1 --load process \
        --burn-ms "${BURN[$name]}" </dev/null >"$out" 2>"$out.err" &
    pid=$!
    PIDS+=("$pid")
    ADDR[$name]=$(wait_for "$out" 's/^listening on ([^ ]+).*/\1/p' "$pid" "backend $name") || exit 1
done
# vm4 stays in the configuration but stops now: the page shows it down.
kill -TERM "${PIDS[3]}"
wait "${PIDS[3]}" 2>/dev/null || true

LISTEN_PORT=$(free_port listen) || exit 1
ADMIN_PORT=$(free_port admin) || exit 1
cat >"$WORK/balancer.ron" <<EOF
(
    listen: "127.0.0.1:$LISTEN_PORT",
    algorithm: WorkloadSensitive,
    admin: "127.0.0.1:$ADMIN_PORT",
    access_log: Off,
    backends: [
        (name: "vm1", addr: "${ADDR[vm1]}", weight: 3),
        (name: "vm2", addr: "${ADDR[vm2]}", weight: 2),
        (name: "vm3", addr: "${ADDR[vm3]}", weight: 2),
        (name: "vm4", addr: "${ADDR[vm4]}", weight: 1),
    ],
)
EOF
RUST_LOG=info "$BALLAST" --config "$WORK/balancer.ron" </dev/null >/dev/null 2>"$WORK/ballast.out" &
BALANCER_PID=$!
PIDS+=("$BALANCER_PID")
ADMIN=$(wait_for "$WORK/ballast.out" 's/.*admin listening on http:\/\/([^/ ]+)\/.*/\1/p' \
    "$BALANCER_PID" "ballast") || exit 1
LISTEN=$(wait_for "$WORK/ballast.out" 's/.* listening on ([0-9.]+:[0-9]+),.*/\1/p' \
    "$BALANCER_PID" "ballast") || exit 1
note "ballast on $LISTEN, admin on http://$ADMIN/"

# --- load ----------------------------------------------------------------------------------

# One HTTP request per connection with bash alone.
request() {
    local host=${LISTEN%:*} port=${LISTEN##*:}
    exec 3<>"/dev/tcp/$host/$port" || return 0
    printf 'GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$LISTEN" >&3 || true
    cat <&3 >/dev/null || true
    exec 3<&-
}

# Keeps CONNECTIONS clients busy for SECONDS.
load_phase() {
    local connections=$1 seconds=$2 i end
    if command -v wrk >/dev/null 2>&1; then
        wrk -t 2 -c "$connections" -d "${seconds}s" "http://$LISTEN/" >/dev/null 2>&1 || true
        return 0
    fi
    end=$((SECONDS + seconds))
    for ((i = 0; i < connections; i++)); do
        (while ((SECONDS < end)); do request; done) &
    done
    wait
}

# Rising, then falling load: the chart shows steps. The last phase outlasts the screenshot,
# so the counters are moving when it is taken; cleanup stops it.
phase=$((SECONDS_OF_LOAD / 3))
set -m
(
    load_phase 4 "$phase"
    load_phase 16 "$phase"
    load_phase 8 $((SECONDS_OF_LOAD - 2 * phase + 30))
) </dev/null >/dev/null 2>&1 &
LOAD_PIDS+=("$!")
set +m
note "load for ${SECONDS_OF_LOAD}s ($(command -v wrk >/dev/null 2>&1 && echo wrk || echo 'bash /dev/tcp'))"

# POST PATH to the admin API with bash alone; prints the status line.
admin_post() {
    local host=${ADMIN%:*} port=${ADMIN##*:} status
    exec 4<>"/dev/tcp/$host/$port" || die "cannot reach the admin listener at $ADMIN"
    printf 'POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
        "$1" "$ADMIN" >&4
    IFS= read -r status <&4 || status="no answer"
    cat <&4 >/dev/null || true
    exec 4<&-
    note "POST $1: ${status%$'\r'}"
}

sleep $((phase + phase / 2))
admin_post /api/backends/vm2/weight/4
admin_post /api/backends/vm3/drain
sleep $((SECONDS_OF_LOAD - phase - phase / 2))
kill -0 "$BALANCER_PID" 2>/dev/null || die "ballast exited; its log: $(tail -n 5 "$WORK/ballast.out")"

# --- screenshot ----------------------------------------------------------------------------

note "screenshot with $BROWSER"
rm -f "$OUTPUT"
# shellcheck disable=SC2054 # --window-size takes WIDTH,HEIGHT
browser=("$BROWSER" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --disable-dev-shm-usage --hide-scrollbars --force-device-scale-factor=1
    --user-data-dir="$WORK/chromium" --window-size=1280,900 --virtual-time-budget=3000
    --screenshot="$OUTPUT" "http://$ADMIN/")
if command -v timeout >/dev/null 2>&1; then
    timeout 90 "${browser[@]}" </dev/null >"$WORK/chromium.out" 2>&1 || true
else
    "${browser[@]}" </dev/null >"$WORK/chromium.out" 2>&1 || true
fi
if [[ ! -s $OUTPUT ]]; then
    note "Chromium wrote no screenshot; its output:"
    sed -e 's/^/    /' "$WORK/chromium.out" | tail -n 20 >&2
    exit 1
fi
note "wrote $OUTPUT"
