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

Builds the release binaries, starts one demo backend (`ballast-backend --listen ADDR
--id NAME --max-requests 1`) for every backend of CONFIG (default: balancer.ron in the
repository), checks CONFIG with `ballast --check`, starts `ballast --config CONFIG` and
prints the URL to open. Every response carries `Connection: close`, so each refresh is a
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

# Reads CONFIG (RON) and prints `listen<TAB>ADDR` and one `backend<TAB>NAME<TAB>ADDR` per
# entry of `backends`, or `error<TAB>MESSAGE` lines. A small tokenizer rather than line
# matching: it skips `//` and nested `/* */` comments and strings, tracks bracket depth and
# takes `listen` from the top-level struct and `name`/`addr` from each struct in the
# top-level `backends` list, in any order and layout. It does not validate: `ballast
# --check` does that first.
parse_config() {
    awk '
    { src = src $0 "\n" }
    function on_string(val) {
        if (prev == ":") {
            if (depth == 1 && key[1] == "listen") listen = val
            if (inb && depth == 3 && key[3] == "name") { bname = val; hasname = 1 }
            if (inb && depth == 3 && key[3] == "addr") { baddr = val; hasaddr = 1 }
        }
        prev = "string"
    }
    END {
        n = length(src); i = 1; depth = 0; prev = ""; inb = 0; nb = 0; listen = ""
        while (i <= n) {
            c = substr(src, i, 1)
            two = substr(src, i, 2)
            if (two == "//") {
                j = index(substr(src, i), "\n"); i = j ? i + j : n + 1; continue
            }
            if (two == "/*") {
                lvl = 1; i += 2
                while (i <= n && lvl > 0) {
                    two = substr(src, i, 2)
                    if (two == "/*") { lvl++; i += 2 }
                    else if (two == "*/") { lvl--; i += 2 }
                    else i++
                }
                continue
            }
            if (c == " " || c == "\t" || c == "\r" || c == "\n") { i++; continue }
            if (c == "\"") {
                val = ""; i++
                while (i <= n) {
                    c = substr(src, i, 1)
                    if (c == "\\") {
                        e = substr(src, i + 1, 1)
                        if (e == "n") val = val "\n"; else if (e == "t") val = val "\t"; else val = val e
                        i += 2; continue
                    }
                    if (c == "\"") break
                    val = val c; i++
                }
                i++
                on_string(val); continue
            }
            if (c == "r" && substr(src, i + 1, 1) ~ /["#]/) {
                j = i + 1; hashes = ""
                while (substr(src, j, 1) == "#") { hashes = hashes "#"; j++ }
                if (substr(src, j, 1) == "\"") {
                    rest = substr(src, j + 1); k = index(rest, "\"" hashes)
                    if (k == 0) k = length(rest) + 1
                    val = substr(rest, 1, k - 1)
                    i = j + k + 1 + length(hashes)
                    on_string(val); continue
                }
            }
            if (c == "'\''") {
                i++
                while (i <= n && substr(src, i, 1) != "'\''") i += (substr(src, i, 1) == "\\") ? 2 : 1
                i++; prev = "char"; continue
            }
            if (c ~ /[A-Za-z_]/) {
                j = i
                while (j <= n && substr(src, j, 1) ~ /[A-Za-z0-9_]/) j++
                ident = substr(src, i, j - i); i = j; prev = "ident"; continue
            }
            if (c == ":") {
                if (prev == "ident") key[depth] = ident
                prev = ":"; i++; continue
            }
            if (c == "(" || c == "[" || c == "{") {
                depth++; kind[depth] = c; key[depth] = ""
                if (depth == 3 && c == "(" && kind[2] == "[" && key[1] == "backends") {
                    inb = 1; nb++; bname = ""; baddr = ""; hasname = 0; hasaddr = 0
                }
                prev = c; i++; continue
            }
            if (c == ")" || c == "]" || c == "}") {
                if (inb && depth == 3) {
                    if (!hasname) printf "error\tbackend #%d has no name\n", nb
                    else if (!hasaddr) printf "error\tbackend %s has no addr\n", bname
                    else printf "backend\t%s\t%s\n", bname, baddr
                    inb = 0
                }
                depth--; prev = c; i++; continue
            }
            prev = "other"; i++
        }
        if (listen == "") print "error\tno top-level listen address found"
        else printf "listen\t%s\n", listen
        if (nb == 0) print "error\tno backends found"
    }' "$1"
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
    stop_pids ${BACKEND_PIDS[@]+"${BACKEND_PIDS[@]}"}
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

rm -f "$RUN_DIR"/backend-*.out "$RUN_DIR"/backend-*.log "$BALANCER_LOG" "$RUN_DIR/ballast.out"

cd "$REPO_ROOT"

# --- binaries and configuration ------------------------------------------------------------

find_binaries

# --check first: a bad configuration fails before anything starts, with ballast's message.
summary=$("$BALLAST" --config "$CONFIG" --check) || die "$CONFIG is not a valid configuration"
printf '%s\n' "$summary" >&2

LISTEN=""
BACKEND_NAMES=()
BACKEND_ADDRS=()
errors=()
while IFS=$'\t' read -r kind a b; do
    case $kind in
    listen) LISTEN=$a ;;
    backend) BACKEND_NAMES+=("$a"); BACKEND_ADDRS+=("$b") ;;
    error) errors+=("$a") ;;
    esac
done < <(parse_config "$CONFIG")
if ((${#errors[@]} > 0)); then
    die "cannot read $CONFIG: ${errors[*]}"
fi
# Cross-check the small parser against ballast's own reading of the file.
expected=$(printf '%s\n' "$summary" | sed -n 's/^backends[[:space:]]*\([0-9][0-9]*\)[[:space:]]*$/\1/p')
if [[ -n $expected && $expected != "${#BACKEND_NAMES[@]}" ]]; then
    die "read ${#BACKEND_NAMES[@]} backends from $CONFIG but ballast --check counts $expected; scripts/demo.sh's parser needs fixing"
fi

# --- start ---------------------------------------------------------------------------------

BALANCER_PID=""
BALANCER_READY=0
BACKEND_PIDS=()
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

for i in "${!BACKEND_NAMES[@]}"; do
    name=${BACKEND_NAMES[i]}
    addr=${BACKEND_ADDRS[i]}
    base=$RUN_DIR/backend-$i-${name//[^A-Za-z0-9._-]/_}
    : >"$base.out"
    : >"$base.log"
    "$BACKEND" --listen "$addr" --id "$name" --max-requests 1 ${BACKEND_ARGS[@]+"${BACKEND_ARGS[@]}"} \
        </dev/null >"$base.out" 2>"$base.log" 9>&- &
    BACKEND_PIDS+=("$!")
    printf '%s\n' "$!" >>"$PIDS_FILE"
    wait_ready "$base.out" '^listening on ' "$!" "backend $name ($addr)" "$base.log" || exit 1
    note "backend $name: $READY_LINE (pid ${BACKEND_PIDS[i]})"
done

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

cat <<EOF

ballast is listening on $bound (pid $BALANCER_PID) in front of ${#BACKEND_NAMES[@]} backend(s).

Open $url and refresh: each refresh lands on the next backend.
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

# A backend that exits is reported and left out (the balancer routes around it: stopping
# one by hand is part of the demo); the balancer exiting ends the demo, successfully if it
# stopped cleanly (status 0).
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
    for i in "${!BACKEND_PIDS[@]}"; do
        pid=${BACKEND_PIDS[i]}
        if [[ -n $pid ]] && ! alive "$pid"; then
            wait "$pid" 2>/dev/null && status=0 || status=$?
            BACKEND_PIDS[i]=""
            note "backend ${BACKEND_NAMES[i]} (pid $pid) exited (status $status)"
        fi
    done
    if [[ -n $DURATION ]] && ((SECONDS >= end)); then
        note "DEMO_DURATION=${DURATION}s elapsed: stopping"
        exit 0
    fi
    sleep 0.25 &
    SLEEP_PID=$!
    wait "$SLEEP_PID" || true
    SLEEP_PID=""
done
