#!/usr/bin/env bash
# Runs the balancer in front of local demo backends, one per backend of the configuration.
#
#   scripts/demo.sh [CONFIG]        (CONFIG defaults to balancer.ron in the repository)
#
# Run `scripts/demo.sh --help` for the details.
set -euo pipefail
SCRIPT_NAME=demo.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/demo.sh [CONFIG]

Builds the release binaries, checks CONFIG (default: balancer.ron in the repository) with
`ballast --check`, starts the demo backends (`ballast-backend --config CONFIG
--max-requests 1`: one process, one listener for every backend of CONFIG, on its address
and answering as its name), starts `ballast --config CONFIG` and prints the URL to open,
and the status page's when CONFIG turns the admin listener on (balancer.ron does, on
127.0.0.1:9000). Every response carries `Connection: close`, so each refresh is a
new connection and meets the balancer again. Ctrl-C (or SIGTERM) stops everything the
script started; it exits 0 after a requested stop (or a clean stop of the balancer) and
1 when something fails to start or the balancer fails.

Environment:
  DEMO_DURATION=SECONDS    stop by itself after that many seconds (for tests and CI)
  DEMO_BACKEND_ARGS="..."  extra arguments for every backend (split on spaces),
                           e.g. "--burn-ms 20 --load process"
  DEMO_READY_TIMEOUT       seconds to wait for each process to listen (default: 10)
  DEMO_STOP_TIMEOUT        seconds to wait after SIGTERM before SIGKILL (default: 15;
                           the balancer drains for up to the configured grace period)
  BALLAST_BIN_DIR          use ballast and ballast-backend from this directory and skip
                           `cargo build --release`
  BALLAST_RUN_DIR          logs and state (default: target/ballast-run); the demo uses
                           its `demo` subdirectory
  RUST_LOG                 log filter for the balancer and backends (default: info)
EOF
}

# Turns a bound address into one a client can connect to: 0.0.0.0 and [::] become loopback.
connectable() {
    case $1 in
    0.0.0.0:*) printf '127.0.0.1:%s\n' "${1##*:}" ;;
    "[::]:"*) printf '[::1]:%s\n' "${1##*:}" ;;
    *) printf '%s\n' "$1" ;;
    esac
}

# Waits for PID's line in FILE (wait_for_line); when it does not come, says why and shows
# the end of LOG.
wait_ready() {
    local file=$1 pattern=$2 pid=$3 what=$4 log=$5
    wait_for_line "$file" "$pattern" "$pid" && return 0
    if [[ -n $EXIT_STATUS ]]; then
        note "$what exited (status $EXIT_STATUS) before listening; is the port taken? Its log ($log):"
    else
        note "$what did not report listening within ${READY_TIMEOUT}s; its log ($log):"
    fi
    sed -e 's/^/    /' "$log" | tail -n 20 >&2
    return 1
}

# Copies what the balancer logged since the last call to stderr.
LOG_OFFSET=0
flush_balancer_log() {
    local size
    [[ -f $BALANCER_LOG ]] || return 0
    size=$(wc -c <"$BALANCER_LOG" | tr -d ' ')
    if ((size > LOG_OFFSET)); then
        tail -c +"$((LOG_OFFSET + 1))" "$BALANCER_LOG" | head -c "$((size - LOG_OFFSET))" >&2 || true
        LOG_OFFSET=$size
    fi
}

# Stops everything this script started: the balancer first, so that its drain lets
# requests in flight finish on backends that are still up, then the backends.
cleanup() {
    local status=$?
    trap - EXIT
    trap 'FORCE=1' INT TERM HUP
    if [[ -n ${SLEEP_PID:-} ]]; then kill "$SLEEP_PID" 2>/dev/null || true; fi
    stop_pids "${BALANCER_PID:-}"
    stop_pids "${BACKENDS_PID:-}"
    if ((BALANCER_READY)); then flush_balancer_log; fi
    stop_watchdog
    rm -f "$RUN_DIR/watchdog.fifo" "$PIDS_FILE" "$RUN_DIR/demo.pid"
    exit "$status"
}

# --- arguments and environment -------------------------------------------------------------

case ${1:-} in
-h | --help) usage; exit 0 ;;
-*) bad_usage "unknown option '$1'" ;;
esac
(($# <= 1)) || bad_usage "expected at most one argument, the configuration file"
CONFIG=$(absolute "${1:-$REPO_ROOT/balancer.ron}")
[[ -f $CONFIG ]] || die "no configuration file at $CONFIG"

READY_TIMEOUT=${DEMO_READY_TIMEOUT:-10}
STOP_TIMEOUT=${DEMO_STOP_TIMEOUT:-15}
DURATION=${DEMO_DURATION:-}
is_uint "$READY_TIMEOUT" || die "DEMO_READY_TIMEOUT must be whole seconds, not '$READY_TIMEOUT'"
is_uint "$STOP_TIMEOUT" || die "DEMO_STOP_TIMEOUT must be whole seconds, not '$STOP_TIMEOUT'"
[[ -z $DURATION ]] || is_uint "$DURATION" ||
    die "DEMO_DURATION must be whole seconds, not '$DURATION'"
read -r -a BACKEND_ARGS <<<"${DEMO_BACKEND_ARGS:-}"

RUN_DIR=$(absolute "${BALLAST_RUN_DIR:-$REPO_ROOT/target/ballast-run}")/demo
PIDS_FILE=$RUN_DIR/pids
BALANCER_LOG=$RUN_DIR/ballast.log
mkdir -p "$RUN_DIR"
if [[ -f $RUN_DIR/demo.pid ]]; then
    other=$(cat "$RUN_DIR/demo.pid" 2>/dev/null || true)
    if [[ -n $other ]] && is_ours "$other" demo.sh; then
        die "another demo.sh (pid $other) uses $RUN_DIR; stop it first"
    fi
fi

BACKENDS_OUT=$RUN_DIR/backends.out
BACKENDS_LOG=$RUN_DIR/backends.log
rm -f "$BACKENDS_OUT" "$BACKENDS_LOG" "$BALANCER_LOG" "$RUN_DIR/ballast.out"

cd "$REPO_ROOT"

# --- binaries and configuration ------------------------------------------------------------

find_binaries

# --check first: a bad configuration fails before anything starts, with ballast's message.
summary=$("$BALLAST" --config "$CONFIG" --check) || die "$CONFIG is not a valid configuration"
printf '%s\n' "$summary" >&2

# The listen address, in case the balancer's readiness line does not show it.
LISTEN=$(printf '%s\n' "$summary" | sed -n 's/^listen[[:space:]][[:space:]]*\([^[:space:]]*\)$/\1/p')
# The admin listener: `off`, or `http://ADDR/` with ` (bearer token required)` after it.
ADMIN=$(printf '%s\n' "$summary" | sed -n 's/^admin[[:space:]][[:space:]]*//p')

# --- start ---------------------------------------------------------------------------------

BALANCER_PID=""
BALANCER_READY=0
BACKENDS_PID=""
BACKEND_COUNT=0
SLEEP_PID=""
WATCHDOG_PID=""
trap cleanup EXIT
trap 'on_signal SIGINT 0' INT
trap 'on_signal SIGTERM 0' TERM
trap 'on_signal SIGHUP 0' HUP
printf '%s\n' "$$" >"$RUN_DIR/demo.pid"
: >"$PIDS_FILE"
start_watchdog

# The balancer reports readiness in an info-level log line; keep it visible when RUST_LOG
# would hide info messages.
export RUST_LOG=${RUST_LOG:-info}
case $RUST_LOG in
*ballast::server*) ;;
*) RUST_LOG=$RUST_LOG,ballast::server=info ;;
esac

# One process serves every backend of CONFIG, each on its address under its name; it reads
# CONFIG as `ballast --check` just did. Once all its listeners are bound it prints one
# `listening on ADDR as NAME` line each, all at once.
: >"$BACKENDS_OUT"
: >"$BACKENDS_LOG"
"$BACKEND" --config "$CONFIG" --max-requests 1 ${BACKEND_ARGS[@]+"${BACKEND_ARGS[@]}"} \
    </dev/null >"$BACKENDS_OUT" 2>"$BACKENDS_LOG" 9>&- &
BACKENDS_PID=$!
printf '%s\n' "$BACKENDS_PID" >>"$PIDS_FILE"
wait_ready "$BACKENDS_OUT" '^listening on ' "$BACKENDS_PID" "ballast-backend --config" "$BACKENDS_LOG" || exit 1
while IFS= read -r line; do
    [[ $line == "listening on "*" as "* ]] || continue
    rest=${line#listening on }
    note "backend ${rest#* as }: listening on ${rest%% *} (pid $BACKENDS_PID)"
    BACKEND_COUNT=$((BACKEND_COUNT + 1))
done <"$BACKENDS_OUT"

: >"$BALANCER_LOG"
"$BALLAST" --config "$CONFIG" </dev/null >"$RUN_DIR/ballast.out" 2>"$BALANCER_LOG" 9>&- &
BALANCER_PID=$!
printf '%s\n' "$BALANCER_PID" >>"$PIDS_FILE"
wait_ready "$BALANCER_LOG" 'listening on ' "$BALANCER_PID" "ballast" "$BALANCER_LOG" || exit 1
BALANCER_READY=1
flush_balancer_log
bound=$(printf '%s\n' "$READY_LINE" | sed -n 's/.*listening on \([^ ,]*\).*/\1/p')
[[ -n $bound ]] || bound=$LISTEN
target=$(connectable "$bound")
url="http://$target/"

# The admin listener binds right after the balancer's own (a failure there stops ballast).
status_line=""
if [[ -n $ADMIN && $ADMIN != off ]]; then
    wait_ready "$BALANCER_LOG" 'admin listening on http://' "$BALANCER_PID" "ballast's admin listener" "$BALANCER_LOG" || exit 1
    flush_balancer_log
    admin_bound=$(printf '%s\n' "$READY_LINE" | sed -n 's|.*admin listening on http://\([^/ ]*\)/.*|\1|p')
    admin_url="http://$(connectable "$admin_bound")/"
    status_line="Status page: $admin_url (Prometheus metrics at ${admin_url}metrics)"
    case $ADMIN in
    *"token required"*) status_line="$status_line; add ?token=... (admin_token in the configuration)" ;;
    esac
fi

cat <<EOF

ballast is listening on $bound (pid $BALANCER_PID) in front of $BACKEND_COUNT backend(s).

Open $url and refresh: each refresh lands on the next backend.
${status_line:-No status page: the configuration has no admin listener.}
From a shell:
  for i in \$(seq 8); do curl -s $url | grep -o 'This is from [^<]*'; done

Logs: $RUN_DIR
EOF
if [[ -n $DURATION ]]; then
    printf 'Stopping by itself in %ss (DEMO_DURATION).\n\n' "$DURATION"
else
    printf 'Press Ctrl-C to stop.\n\n'
fi

# --- run until stopped ---------------------------------------------------------------------

# The backends exiting is reported and the demo goes on (the balancer then finds them
# down); the balancer exiting ends the demo, successfully if it stopped cleanly (status 0).
end=$((SECONDS + ${DURATION:-0}))
while :; do
    flush_balancer_log
    if ! alive "$BALANCER_PID"; then
        wait "$BALANCER_PID" 2>/dev/null && status=0 || status=$?
        BALANCER_PID=""
        flush_balancer_log
        # ballast exits 0 only when told to stop (Ctrl-C in a terminal reaches it too).
        if ((status == 0)); then
            note "ballast stopped: stopping the backends"
            exit 0
        fi
        die "ballast exited with status $status"
    fi
    if [[ -n $BACKENDS_PID ]] && ! alive "$BACKENDS_PID"; then
        wait "$BACKENDS_PID" 2>/dev/null && status=0 || status=$?
        note "the backends (ballast-backend, pid $BACKENDS_PID) exited (status $status)"
        BACKENDS_PID=""
    fi
    if [[ -n $DURATION ]] && ((SECONDS >= end)); then
        note "DEMO_DURATION=${DURATION}s elapsed: stopping"
        exit 0
    fi
    sleep 0.25 &
    SLEEP_PID=$!
    wait "$SLEEP_PID" || true
    SLEEP_PID=""
done
