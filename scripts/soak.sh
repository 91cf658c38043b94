#!/usr/bin/env bash
# Soak test: keep-alive load through the balancer while backends are killed and restarted
# and the configuration is reloaded, then a check that nothing leaked.
#
#   scripts/soak.sh [DURATION_SECONDS]      (default 60, at most 3600)
#
# Run `scripts/soak.sh --help` for the details.
set -euo pipefail
SCRIPT_NAME=soak.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/soak.sh [DURATION_SECONDS]

Builds the release binaries, starts 3 demo backends (`ballast-backend`) and `ballast` on
a generated configuration, all on free 127.0.0.1 ports, warms up, records the balancer's
memory (VmRSS) and open file descriptors, then for DURATION_SECONDS (default 60, at most
3600) runs `wrk` through the balancer (keep-alive, -t2 -c32) while, in parallel:

  - every 10 s one backend is killed with SIGKILL and restarted on the same port 3 s later
    (the backends take turns; none is killed when the run would end before its restart);
  - every 5 s the configuration is rewritten (the algorithm alternates between
    LeastConnections and RoundRobin, the weights change) and the balancer gets SIGHUP.

Afterwards, once the load has stopped and the balancer's descriptor count has settled, it
prints a summary: wrk's totals (requests, socket errors, non-2xx/3xx responses), the kills,
the reloads accepted and rejected (counted in the balancer's log), and the balancer's
memory and descriptors at the start and at the end. Finally it stops the balancer with
SIGTERM.

What to expect: client-visible failures come only from connections that were open on a
backend at the moment it was killed (wrk counts them as read errors, at most one per such
connection, so at most -c per kill); reloads cause none, nor do new connections that meet
a dead backend (the balancer fails over).

Exit status: 0 when the balancer was alive at the end of the load, its descriptors came
back within SOAK_FD_MARGIN of the start and it stopped cleanly on SIGTERM; 1 otherwise;
2 for bad usage or when wrk is not installed (Debian package `wrk`); 128+N when stopped by
signal N (Ctrl-C: 130). Everything the script starts is stopped when it exits, however it
exits (after a SIGKILL of the script, a small watchdog stops it).

Environment:
  SOAK_CONNECTIONS       wrk connections (default: 32)
  SOAK_THREADS           wrk threads (default: 2)
  SOAK_KEEPALIVE         1: keep-alive connections (default); 0: every request asks for
                         `Connection: close`, so wrk opens a new connection per request and
                         reloads and kills meet a constant stream of new connections
  SOAK_KILL_INTERVAL     seconds between backend kills; 0 disables them (default: 10)
  SOAK_RESTART_DELAY     seconds a killed backend stays down (default: 3)
  SOAK_RELOAD_INTERVAL   seconds between reloads; 0 disables them (default: 5)
  SOAK_FD_MARGIN         descriptors the end may exceed the start by (default: 8)
  SOAK_SETTLE_TIMEOUT    seconds to wait for the descriptor count to settle (default: 30)
  SOAK_READY_TIMEOUT     seconds to wait for each process to listen (default: 10)
  SOAK_STOP_TIMEOUT      seconds to wait after SIGTERM before SIGKILL (default: 15; the
                         balancer drains for up to its grace period, 10 s)
  BALLAST_BIN_DIR        use ballast and ballast-backend from this directory and skip
                         `cargo build --release`
  BALLAST_RUN_DIR        logs and state (default: target/ballast-run); the soak uses its
                         `soak` subdirectory, which keeps the logs of the last run
EOF
}

# What bad_usage shows: the full help is long.
short_usage() {
    usage | sed -n '1,2p'
    printf 'Run "scripts/soak.sh --help" for the details.\n'
}

# Milliseconds since the epoch, in NOW_MS (no subshell).
NOW_MS=0
now_ms() {
    local t=${EPOCHREALTIME//[^0-9]/}
    NOW_MS=$((10#$t / 1000))
}

# Formats a span in milliseconds as seconds with one decimal.
secs() {
    printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100))
}

# Records a started process for the watchdog: `PID WORD`, WORD being part of its command line.
record_pid() {
    printf '%s %s\n' "$1" "$2" >>"$PIDS_FILE"
}

# Appends a timestamped line (seconds since the load started) to the event log.
event() {
    now_ms
    local t=0
    ((LOAD_START_MS == 0)) || t=$((NOW_MS - LOAD_START_MS))
    printf 't=%7ss  %s\n' "$(secs "$t")" "$*" >>"$EVENTS"
}

# --- ports ---------------------------------------------------------------------------------

# Picks a port no TCP socket on this machine uses (per /proc/net/tcp{,6}), below the
# ephemeral range when there is room, so no outgoing connection can take it while a killed
# backend is down. Sets PORT; PICKED remembers the ports already handed out.
PICKED=" "
PORT=""
pick_port() {
    local lo hi first last used tries candidate hex
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { lo=32768; hi=60999; }
    if ((lo > 12000)); then
        first=10000 last=$((lo - 1))
    elif ((hi < 63000)); then
        first=$((hi + 1)) last=65535
    else
        first=1024 last=65535
    fi
    # Local ports in use, as the 4-digit upper-case hex of /proc/net/tcp (awk: there may be
    # tens of thousands of sockets in TIME_WAIT).
    used=" $(awk 'FNR > 1 { n = split($2, a, ":"); if (!(a[n] in seen)) { seen[a[n]]; printf "%s ", a[n] } }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null || true)"
    for ((tries = 0; tries < 500; tries++)); do
        candidate=$((first + (RANDOM * 32768 + RANDOM) % (last - first + 1)))
        printf -v hex '%04X' "$candidate"
        [[ $used == *" $hex "* || $PICKED == *" $candidate "* ]] && continue
        PICKED+="$candidate "
        PORT=$candidate
        return 0
    done
    return 1
}

# --- processes -----------------------------------------------------------------------------

# Ends PID at once and reaps it.
kill_now() {
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Starts backend I on its port and waits until it listens; records its PID in BACKEND_PIDS.
# Fails (leaving nothing running) when it exits first or does not report in time.
launch_backend() {
    local i=$1 name=${BACKEND_NAMES[$1]} port=${BACKEND_PORTS[$1]} out log pid
    out=$RUN_DIR/backend-$name.out
    log=$RUN_DIR/backend-$name.log
    : >"$out"
    printf -- '--- soak.sh: starting on 127.0.0.1:%s\n' "$port" >>"$log"
    "$BACKEND" --listen "127.0.0.1:$port" --id "$name" </dev/null >"$out" 2>>"$log" 9>&- &
    pid=$!
    record_pid "$pid" ballast-backend
    if wait_for_line "$out" '^listening on ' "$pid"; then
        BACKEND_PIDS[i]=$pid
        return 0
    fi
    if [[ -n $EXIT_STATUS ]]; then
        note "backend $name on 127.0.0.1:$port exited (status $EXIT_STATUS) before listening; its log ($log):"
    else
        note "backend $name on 127.0.0.1:$port did not report listening within ${READY_TIMEOUT}s; its log ($log):"
        kill_now "$pid"
    fi
    tail -n 5 "$log" | sed -e 's/^/    /' >&2
    BACKEND_PIDS[i]=""
    return 1
}

# Restarts killed backend I on the same port; a port still held (it should not be) is
# retried for up to READY_TIMEOUT seconds.
restart_backend() {
    local i=$1 deadline
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        if launch_backend "$i"; then
            RESTARTS=$((RESTARTS + 1))
            event "restarted backend ${BACKEND_NAMES[i]} (pid ${BACKEND_PIDS[i]})"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            RESTART_FAILURES=$((RESTART_FAILURES + 1))
            event "could not restart backend ${BACKEND_NAMES[i]}"
            note "could not restart backend ${BACKEND_NAMES[i]} on port ${BACKEND_PORTS[i]}; continuing without it"
            return 1
        fi
        sleep 0.2
    done
}

# Writes the balancer's configuration (atomically: a reload never reads half a file).
#   write_config ALGORITHM "W1 W2 W3" LABEL
write_config() {
    local algorithm=$1 weights i tmp=$CONFIG.tmp
    read -r -a weights <<<"$2"
    {
        printf '// Generated by scripts/soak.sh (%s); rewritten before every SIGHUP.\n' "$3"
        printf '(\n    listen: "127.0.0.1:%s",\n    algorithm: %s,\n    backends: [\n' \
            "$LISTEN_PORT" "$algorithm"
        for i in "${!BACKEND_NAMES[@]}"; do
            printf '        (name: "%s", addr: "127.0.0.1:%s", weight: %s),\n' \
                "${BACKEND_NAMES[i]}" "${BACKEND_PORTS[i]}" "${weights[i]}"
        done
        printf '    ],\n    health: (interval: "500ms", timeout: "300ms", rise: 2, fall: 2),\n)\n'
    } >"$tmp"
    mv -f "$tmp" "$CONFIG"
}

# Counts the lines of the balancer's log containing STRING.
log_count() {
    grep -c -F -e "$1" "$BALANCER_LOG" 2>/dev/null || true
}

# Rewrites the configuration for reload number N and sends SIGHUP, then waits (bounded)
# for the balancer to log the outcome.
ALGORITHMS=(RoundRobin LeastConnections)
WEIGHT_SETS=("1 1 1" "3 1 2" "1 2 3" "2 3 1")
reload() {
    local n=$1 algorithm weights before after deadline outcome
    algorithm=${ALGORITHMS[n % 2]}
    weights=${WEIGHT_SETS[n % 4]}
    write_config "$algorithm" "$weights" "reload $n"
    before=$(($(log_count 'reloaded: listening on') + $(log_count 'reload rejected')))
    kill -HUP "$BALANCER_PID" 2>/dev/null || return 0
    SIGHUPS=$((SIGHUPS + 1))
    deadline=$((SECONDS + 5))
    outcome="no answer within 5s"
    while ((SECONDS < deadline)) && alive "$BALANCER_PID"; do
        after=$(($(log_count 'reloaded: listening on') + $(log_count 'reload rejected')))
        if ((after > before)); then
            outcome=$(grep -F -e 'reloaded: listening on' -e 'reload rejected' "$BALANCER_LOG" |
                tail -n 1 | sed -e 's/^.*\] //')
            break
        fi
        sleep 0.02
    done
    event "reload $n ($algorithm, weights ${weights// /,}): $outcome"
}

# --- measurements --------------------------------------------------------------------------

# Open descriptors of PID, in FDS; fails when the process is gone.
count_fds() {
    local f n=0
    [[ -d /proc/$1/fd ]] || return 1
    for f in "/proc/$1/fd/"*; do
        [[ -e $f || -L $f ]] && n=$((n + 1))
    done
    FDS=$n
}

# A field of /proc/PID/status (the number, e.g. kB for VmRSS), or "?".
status_field() {
    local value
    value=$(awk -v key="$2:" '$1 == key { print $2; exit }' "/proc/$1/status" 2>/dev/null) || true
    printf '%s\n' "${value:-?}"
}

# Sockets among PID's descriptors.
count_sockets() {
    find "/proc/$1/fd" -mindepth 1 -maxdepth 1 -lname 'socket:*' 2>/dev/null | wc -l | tr -d ' '
}

# Samples the balancer's descriptor count every 0.25 s until 8 samples in a row (2 s) agree,
# for up to SETTLE_TIMEOUT seconds. Sets SETTLED_FDS (the lowest count of the last 2 s, so a
# health probe caught in flight does not count), SETTLED (1 when it settled) and SETTLE_MS.
settle_fds() {
    local start window=() n min max
    now_ms
    start=$NOW_MS
    SETTLED=0
    while :; do
        count_fds "$BALANCER_PID" || return 1
        window+=("$FDS")
        ((${#window[@]} <= 8)) || window=("${window[@]:1}")
        min=${window[0]} max=${window[0]}
        for n in "${window[@]}"; do
            ((n >= min)) || min=$n
            ((n <= max)) || max=$n
        done
        now_ms
        SETTLE_MS=$((NOW_MS - start))
        SETTLED_FDS=$min
        if ((${#window[@]} == 8 && min == max)); then
            SETTLED=1
            return 0
        fi
        ((SETTLE_MS < SETTLE_TIMEOUT * 1000)) || return 0
        sleep 0.25
    done
}

# Formats kB as MiB with one decimal.
mib() {
    if is_uint "$1"; then
        awk -v kb="$1" 'BEGIN { printf "%.1f MiB", kb / 1024 }'
    else
        printf '?'
    fi
}

# Formats a signed difference of kB as MiB.
mib_change() {
    if is_uint "$1" && is_uint "$2"; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f MiB", (b - a) / 1024 }'
    else
        printf '?'
    fi
}

# Reads the `SOAK key=value ...` line our wrk script prints into WRK_<key> variables.
read_wrk_totals() {
    local file=$1 line pair key
    WRK_requests="" WRK_duration_us=0 WRK_bytes=0 WRK_connect=0 WRK_read=0 WRK_write=0
    WRK_status=0 WRK_timeout=0 WRK_p50_us=0 WRK_p99_us=0 WRK_max_us=0
    line=$(grep -m1 '^SOAK ' "$file" 2>/dev/null || true)
    [[ -n $line ]] || return 1
    for pair in ${line#SOAK }; do
        key=${pair%%=*}
        is_uint "${pair#*=}" || continue
        case $key in
        requests | duration_us | bytes | connect | read | write | status | timeout | p50_us | p99_us | max_us)
            printf -v "WRK_$key" '%s' "${pair#*=}"
            ;;
        esac
    done
}

# --- cleanup -------------------------------------------------------------------------------

# Stops everything this script started.
cleanup() {
    local status=$?
    trap - EXIT
    trap 'FORCE=1' INT TERM HUP
    stop_pids "${WRK_PID:-}" "${BALANCER_PID:-}" ${BACKEND_PIDS[@]+"${BACKEND_PIDS[@]}"}
    stop_watchdog
    rm -f "$RUN_DIR/watchdog.fifo" "$PIDS_FILE" "$RUN_DIR/soak.pid" "$CONFIG.tmp"
    exit "$status"
}

# --- arguments and environment -------------------------------------------------------------

MAX_DURATION=3600

case ${1:-} in
-h | --help) usage; exit 0 ;;
-*) bad_usage "unknown option '$1'" ;;
esac
(($# <= 1)) || bad_usage "expected at most one argument, the duration in seconds"
DURATION=${1:-60}
if ! is_uint "$DURATION" || ((${#DURATION} > 9)); then
    bad_usage "the duration must be whole seconds (1 to $MAX_DURATION), not '$DURATION'"
fi
DURATION=$((10#$DURATION))
((DURATION >= 1 && DURATION <= MAX_DURATION)) ||
    bad_usage "the duration must be 1 to $MAX_DURATION seconds, not $DURATION"

setting() {
    local name=$1 default=$2 value
    value=${!name:-$default}
    if ! is_uint "$value" || ((${#value} > 9)); then
        bad_usage "$name must be a whole number, not '$value'"
    fi
    printf '%s\n' $((10#$value))
}
CONNECTIONS=$(setting SOAK_CONNECTIONS 32)
THREADS=$(setting SOAK_THREADS 2)
KILL_INTERVAL=$(setting SOAK_KILL_INTERVAL 10)
RESTART_DELAY=$(setting SOAK_RESTART_DELAY 3)
RELOAD_INTERVAL=$(setting SOAK_RELOAD_INTERVAL 5)
FD_MARGIN=$(setting SOAK_FD_MARGIN 8)
SETTLE_TIMEOUT=$(setting SOAK_SETTLE_TIMEOUT 30)
READY_TIMEOUT=$(setting SOAK_READY_TIMEOUT 10)
STOP_TIMEOUT=$(setting SOAK_STOP_TIMEOUT 15)
KEEPALIVE=$(setting SOAK_KEEPALIVE 1)
((KEEPALIVE <= 1)) || bad_usage "SOAK_KEEPALIVE must be 0 or 1, not '$KEEPALIVE'"
if ((KEEPALIVE)); then MODE="keep-alive"; else MODE="Connection: close, a new connection per request"; fi
((THREADS >= 1 && CONNECTIONS >= THREADS)) ||
    bad_usage "SOAK_CONNECTIONS ($CONNECTIONS) must be at least SOAK_THREADS ($THREADS), which must be at least 1"
((KILL_INTERVAL == 0 || KILL_INTERVAL > RESTART_DELAY)) ||
    bad_usage "SOAK_KILL_INTERVAL ($KILL_INTERVAL) must be longer than SOAK_RESTART_DELAY ($RESTART_DELAY): one backend down at a time"

if ! command -v wrk >/dev/null 2>&1; then
    note "wrk is not installed. It comes in the Debian package \`wrk\`:"
    note "    apt-get install wrk"
    note "(this script installs nothing itself)"
    exit 2
fi
WRK=$(command -v wrk)

RUN_DIR=$(absolute "${BALLAST_RUN_DIR:-$REPO_ROOT/target/ballast-run}")/soak
PIDS_FILE=$RUN_DIR/pids
CONFIG=$RUN_DIR/balancer.ron
BALANCER_LOG=$RUN_DIR/ballast.log
EVENTS=$RUN_DIR/events.log
WRK_OUT=$RUN_DIR/wrk.out
SUMMARY=$RUN_DIR/summary.txt
mkdir -p "$RUN_DIR"
if [[ -f $RUN_DIR/soak.pid ]]; then
    other=$(cat "$RUN_DIR/soak.pid" 2>/dev/null || true)
    if [[ -n $other ]] && is_ours "$other" soak.sh; then
        die "another soak.sh (pid $other) uses $RUN_DIR; stop it first"
    fi
fi
rm -f "$RUN_DIR"/backend-*.out "$RUN_DIR"/backend-*.log "$BALANCER_LOG" "$RUN_DIR/ballast.out" \
    "$EVENTS" "$WRK_OUT" "$RUN_DIR/warmup.out" "$SUMMARY" "$CONFIG" "$CONFIG.tmp"

cd "$REPO_ROOT"

# --- binaries ------------------------------------------------------------------------------

find_binaries --bin ballast --bin ballast-backend

# wrk reports its totals through this script's done() in one line that is easy to read back.
WRK_SCRIPT=$RUN_DIR/totals.lua
{
    printf -- '-- Written by scripts/soak.sh: prints wrk'"'"'s totals on one line for the script to read.\n'
    ((KEEPALIVE)) || printf 'wrk.headers["Connection"] = "close"\n'
    cat <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SOAK requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
EOF
} >"$WRK_SCRIPT"

# --- start ---------------------------------------------------------------------------------

BALANCER_PID=""
BACKEND_PIDS=()
WRK_PID=""
WATCHDOG_PID=""
LOAD_START_MS=0
KILLS=0
RESTARTS=0
RESTART_FAILURES=0
SIGHUPS=0
trap cleanup EXIT
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM
trap 'on_signal SIGHUP 129' HUP
printf '%s\n' "$$" >"$RUN_DIR/soak.pid"
: >"$PIDS_FILE"
: >"$EVENTS"
start_watchdog

# Info level: readiness and reloads are logged there. Without keep-alive, a per-connection
# access log would grow by thousands of lines a second, so it is left out unless asked for.
if ((KEEPALIVE)); then
    export RUST_LOG=${RUST_LOG:-info}
else
    export RUST_LOG=${RUST_LOG:-info,ballast::access=warn}
fi
case $RUST_LOG in
*info* | *debug* | *trace*) ;;
*) RUST_LOG=$RUST_LOG,ballast::server=info ;;
esac

BACKEND_NAMES=(a b c)
BACKEND_PORTS=()
for i in "${!BACKEND_NAMES[@]}"; do
    for attempt in 1 2 3 4 5; do
        pick_port || die "found no free port"
        BACKEND_PORTS[i]=$PORT
        if launch_backend "$i"; then break; fi
        ((attempt < 5)) || die "could not start backend ${BACKEND_NAMES[i]}"
        note "trying another port"
    done
    event "started backend ${BACKEND_NAMES[i]} on 127.0.0.1:${BACKEND_PORTS[i]} (pid ${BACKEND_PIDS[i]})"
done

for attempt in 1 2 3 4 5; do
    pick_port || die "found no free port"
    LISTEN_PORT=$PORT
    write_config RoundRobin "${WEIGHT_SETS[0]}" "initial"
    : >"$BALANCER_LOG"
    "$BALLAST" --config "$CONFIG" </dev/null >"$RUN_DIR/ballast.out" 2>"$BALANCER_LOG" 9>&- &
    BALANCER_PID=$!
    record_pid "$BALANCER_PID" ballast
    if wait_for_line "$BALANCER_LOG" 'listening on ' "$BALANCER_PID"; then break; fi
    if [[ -z $EXIT_STATUS ]]; then
        note "ballast did not report listening within ${READY_TIMEOUT}s; its log ($BALANCER_LOG):"
        tail -n 20 "$BALANCER_LOG" | sed -e 's/^/    /' >&2
        exit 1
    fi
    BALANCER_PID=""
    if ((attempt < 5)) && grep -q 'cannot listen on' "$BALANCER_LOG"; then
        note "ballast could not listen on 127.0.0.1:$LISTEN_PORT; trying another port"
        continue
    fi
    note "ballast exited (status $EXIT_STATUS) before listening; its log ($BALANCER_LOG):"
    tail -n 20 "$BALANCER_LOG" | sed -e 's/^/    /' >&2
    exit 1
done
TARGET=127.0.0.1:$LISTEN_PORT
URL=http://$TARGET/
event "started ballast on $TARGET (pid $BALANCER_PID)"
note "ballast on $TARGET (pid $BALANCER_PID) in front of backends ${BACKEND_NAMES[*]} on ports ${BACKEND_PORTS[*]}; logs in $RUN_DIR"

# --- warm-up and baseline ------------------------------------------------------------------

# A short run through every path (accept, pick, connect, relay), so the allocator and the
# runtime have their working set before the baseline is taken.
note "warm-up: wrk -t1 -c4 -d2s"
"$WRK" -t1 -c4 -d2s --timeout 2s -s "$WRK_SCRIPT" "$URL" </dev/null >"$RUN_DIR/warmup.out" 2>&1 9>&- ||
    die "wrk failed during the warm-up; its output: $(cat "$RUN_DIR/warmup.out")"
read_wrk_totals "$RUN_DIR/warmup.out" || die "no totals from the warm-up; wrk printed: $(cat "$RUN_DIR/warmup.out")"
if ((WRK_requests == 0 || WRK_status > 0 || WRK_connect > 0)); then
    die "the balancer does not serve the warm-up ($WRK_requests requests, $WRK_status bad statuses, $WRK_connect connect errors); see $BALANCER_LOG"
fi
alive "$BALANCER_PID" || die "ballast exited during the warm-up; see $BALANCER_LOG"
settle_fds || die "ballast exited during the warm-up; see $BALANCER_LOG"
START_FDS=$SETTLED_FDS
START_SOCKETS=$(count_sockets "$BALANCER_PID")
START_RSS=$(status_field "$BALANCER_PID" VmRSS)
START_THREADS=$(status_field "$BALANCER_PID" Threads)
note "baseline: $START_FDS fds ($START_SOCKETS sockets), VmRSS $(mib "$START_RSS"), $START_THREADS threads"

# --- load and chaos ------------------------------------------------------------------------

note "load: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s $URL ($MODE); kills every ${KILL_INTERVAL}s (0: none), reloads every ${RELOAD_INTERVAL}s (0: none)"
now_ms
LOAD_START_MS=$NOW_MS
LOAD_END_MS=$((LOAD_START_MS + DURATION * 1000))
"$WRK" -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 2s -s "$WRK_SCRIPT" "$URL" \
    </dev/null >"$WRK_OUT" 2>&1 9>&- &
WRK_PID=$!
record_pid "$WRK_PID" wrk
event "wrk started (pid $WRK_PID): -t$THREADS -c$CONNECTIONS -d${DURATION}s"

next_kill=0
((KILL_INTERVAL == 0)) || next_kill=$((LOAD_START_MS + KILL_INTERVAL * 1000))
next_reload=0
((RELOAD_INTERVAL == 0)) || next_reload=$((LOAD_START_MS + RELOAD_INTERVAL * 1000))
victim=0
down=""
restart_at=0
reloads_done=0
balancer_died=0
wrk_hung=0
hard_deadline=$((LOAD_END_MS + 30000))
while alive "$WRK_PID"; do
    if ! alive "$BALANCER_PID"; then
        balancer_died=1
        break
    fi
    now_ms
    if ((NOW_MS >= hard_deadline)); then
        wrk_hung=1
        break
    fi
    if [[ -n $down ]] && ((NOW_MS >= restart_at)); then
        restart_backend "$down" || true
        down=""
    fi
    # Kill only when the restart still falls inside the load, with a second to spare.
    if ((next_kill > 0 && NOW_MS >= next_kill)) && [[ -z $down ]]; then
        if ((NOW_MS + RESTART_DELAY * 1000 + 1000 <= LOAD_END_MS)); then
            pid=${BACKEND_PIDS[victim]}
            if [[ -n $pid ]] && alive "$pid"; then
                kill -KILL "$pid" 2>/dev/null || true
                wait "$pid" 2>/dev/null || true
                KILLS=$((KILLS + 1))
                event "SIGKILL backend ${BACKEND_NAMES[victim]} (pid $pid)"
            fi
            BACKEND_PIDS[victim]=""
            down=$victim
            restart_at=$((NOW_MS + RESTART_DELAY * 1000))
            victim=$(((victim + 1) % ${#BACKEND_NAMES[@]}))
        fi
        next_kill=$((next_kill + KILL_INTERVAL * 1000))
    fi
    if ((next_reload > 0 && NOW_MS >= next_reload)); then
        if ((NOW_MS + 1000 <= LOAD_END_MS)); then
            reloads_done=$((reloads_done + 1))
            reload "$reloads_done"
        fi
        next_reload=$((next_reload + RELOAD_INTERVAL * 1000))
    fi
    sleep 0.1
done
now_ms
event "load over"

# wrk stops early and still prints its totals on SIGINT (not on SIGTERM).
if ((wrk_hung)); then
    note "wrk still running 30 s after its duration; stopping it"
    kill -INT "$WRK_PID" 2>/dev/null || true
fi
if ((balancer_died)); then
    note "ballast exited during the load; stopping wrk"
    kill -INT "$WRK_PID" 2>/dev/null || true
fi
# Give wrk a moment to print, then make sure it is gone.
for ((n = 0; n < 50; n++)); do
    alive "$WRK_PID" || break
    sleep 0.1
done
kill_now "$WRK_PID"
WRK_PID=""
if [[ -n $down ]]; then
    restart_backend "$down" || true
    down=""
fi

# --- end state -----------------------------------------------------------------------------

END_ALIVE=0
BALANCER_STATUS=""
if alive "$BALANCER_PID"; then
    END_ALIVE=1
else
    wait "$BALANCER_PID" 2>/dev/null && BALANCER_STATUS=0 || BALANCER_STATUS=$?
fi
END_FDS="?" END_SOCKETS="?" END_RSS="?" END_HWM="?" END_THREADS="?" SETTLED=0 SETTLE_MS=0
if ((END_ALIVE)); then
    note "load over; waiting up to ${SETTLE_TIMEOUT}s for the balancer's descriptors to settle"
    if settle_fds; then
        END_FDS=$SETTLED_FDS
        END_SOCKETS=$(count_sockets "$BALANCER_PID")
        END_RSS=$(status_field "$BALANCER_PID" VmRSS)
        END_HWM=$(status_field "$BALANCER_PID" VmHWM)
        END_THREADS=$(status_field "$BALANCER_PID" Threads)
    else
        END_ALIVE=0
    fi
fi

HUP_SEEN=$(log_count 'SIGHUP: reloading')
RELOADS_OK=$(log_count 'reloaded: listening on')
RELOADS_REJECTED=$(log_count 'reload rejected')
FAILOVERS=$(log_count 'connect failed')
NO_BACKEND=$(log_count 'no backend available')
DOWN_FLIPS=$(grep -c -E 'backend .* is down' "$BALANCER_LOG" 2>/dev/null || true)
UP_FLIPS=$(grep -c -E 'backend .* is up$' "$BALANCER_LOG" 2>/dev/null || true)
LOG_ERRORS=$(grep -c -E '^\[[^]]* ERROR ' "$BALANCER_LOG" 2>/dev/null || true)
# With an access log (one line per connection, at info), the connections a backend ended:
# under keep-alive load only a killed backend ends one, so this is what the kills cut.
# (Without keep-alive the backends end every connection, so the count says nothing.)
ACCESS_LINES=0
((KEEPALIVE == 0)) || ACCESS_LINES=$(log_count 'ballast::access]')
CUT_BY_BACKEND=$(grep -c -E 'ballast::access\].*(backend error|backend closed)' "$BALANCER_LOG" 2>/dev/null || true)
# What wrk saw and the balancer logged, before the stop adds its own lines.
STOP_RESULT="not attempted (not running)"
STOP_OK=0
if ((END_ALIVE)); then
    now_ms
    stop_start=$NOW_MS
    kill -TERM "$BALANCER_PID" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$BALANCER_PID" && ((SECONDS < deadline)); do sleep 0.05; done
    now_ms
    if alive "$BALANCER_PID"; then
        STOP_RESULT="still running ${STOP_TIMEOUT}s after SIGTERM (killed)"
        kill_now "$BALANCER_PID"
    else
        wait "$BALANCER_PID" 2>/dev/null && st=0 || st=$?
        STOP_RESULT="exit $st after $(secs $((NOW_MS - stop_start))) s"
        ((st != 0)) || STOP_OK=1
    fi
    BALANCER_PID=""
fi

# --- report --------------------------------------------------------------------------------

HAVE_TOTALS=1
read_wrk_totals "$WRK_OUT" || HAVE_TOTALS=0
fd_change="?"
FD_OK=0
if is_uint "$END_FDS"; then
    fd_change=$(printf '%+d' $((END_FDS - START_FDS)))
    ((END_FDS <= START_FDS + FD_MARGIN)) && FD_OK=1
fi
sock_change="?"
is_uint "$END_SOCKETS" && sock_change=$(printf '%+d' $((END_SOCKETS - START_SOCKETS)))

failures=()
((END_ALIVE)) || failures+=("the balancer did not survive the load")
((END_ALIVE == 0 || FD_OK)) ||
    failures+=("open fds went from $START_FDS to $END_FDS (allowed: +$FD_MARGIN)")
((END_ALIVE == 0 || STOP_OK)) || failures+=("SIGTERM: $STOP_RESULT")
((wrk_hung == 0)) || failures+=("wrk did not finish")
warnings=()
if ((HAVE_TOTALS)); then
    unexpected=$((WRK_connect + WRK_timeout + WRK_status))
    ((unexpected == 0)) ||
        warnings+=("$unexpected connect errors, timeouts or bad statuses: kills and reloads should cause none")
    if ((ACCESS_LINES > 0 && WRK_read + WRK_write > CUT_BY_BACKEND)); then
        warnings+=("$((WRK_read + WRK_write)) read/write errors but only $CUT_BY_BACKEND connections ended by a backend: $((WRK_read + WRK_write - CUT_BY_BACKEND)) unexplained by the kills")
    elif ((WRK_read + WRK_write > KILLS * CONNECTIONS)); then
        warnings+=("$((WRK_read + WRK_write)) read/write errors: more than the $KILLS kill(s) x $CONNECTIONS connections could explain")
    fi
else
    warnings+=("wrk printed no totals")
fi
((SIGHUPS == RELOADS_OK)) ||
    warnings+=("$SIGHUPS SIGHUPs sent but $RELOADS_OK reloads accepted")
((RESTART_FAILURES == 0)) || warnings+=("$RESTART_FAILURES backend restart(s) failed")
((NO_BACKEND == 0)) || warnings+=("the balancer turned $NO_BACKEND client(s) away with no backend available")

{
    printf '\n'
    printf '== ballast soak: %s s of wrk -t%s -c%s (%s) through %s, 3 backends ==\n' \
        "$DURATION" "$THREADS" "$CONNECTIONS" "$MODE" "$TARGET"
    printf '\n'
    printf 'wrk\n'
    if ((HAVE_TOTALS)); then
        rps=0
        ((WRK_duration_us == 0)) || rps=$((WRK_requests * 1000000 / WRK_duration_us))
        printf '  %-26s %s  (%s req/s, %s read)\n' "requests" "$WRK_requests" "$rps" \
            "$(mib $((WRK_bytes / 1024)))"
        printf '  %-26s p50 %s ms, p99 %s ms, max %s ms\n' "latency" \
            "$(awk -v v="$WRK_p50_us" 'BEGIN { printf "%.2f", v / 1000 }')" \
            "$(awk -v v="$WRK_p99_us" 'BEGIN { printf "%.2f", v / 1000 }')" \
            "$(awk -v v="$WRK_max_us" 'BEGIN { printf "%.2f", v / 1000 }')"
        printf '  %-26s connect %s, read %s, write %s, timeout %s\n' "socket errors" \
            "$WRK_connect" "$WRK_read" "$WRK_write" "$WRK_timeout"
        printf '  %-26s %s\n' "non-2xx/3xx responses" "$WRK_status"
    else
        printf '  no totals: wrk printed\n'
        sed -e 's/^/    /' "$WRK_OUT"
    fi
    printf '\n'
    printf 'chaos\n'
    printf '  %-26s %s (restarted %s, restart failures %s)\n' "backend kills (SIGKILL)" \
        "$KILLS" "$RESTARTS" "$RESTART_FAILURES"
    printf '  %-26s %s sent, %s seen, %s accepted, %s rejected\n' "reloads (SIGHUP)" \
        "$SIGHUPS" "$HUP_SEEN" "$RELOADS_OK" "$RELOADS_REJECTED"
    printf '  %-26s %s connect failures (failed over), %s down / %s up flips,\n' "balancer log" \
        "$FAILOVERS" "$DOWN_FLIPS" "$UP_FLIPS"
    printf '  %-26s %s "no backend available", %s ERROR lines\n' "" "$NO_BACKEND" "$LOG_ERRORS"
    if ((ACCESS_LINES > 0)); then
        printf '  %-26s %s connections ended by their backend (access log)\n' "" "$CUT_BY_BACKEND"
    fi
    printf '\n'
    printf '%-28s %-12s %-12s %s\n' "balancer (ballast)" "start" "end" "change"
    printf '  %-26s %-12s %-12s %s\n' "VmRSS" "$(mib "$START_RSS")" "$(mib "$END_RSS")" \
        "$(mib_change "$START_RSS" "$END_RSS")  (peak $(mib "$END_HWM"))"
    if ((SETTLED)); then settle_note="settled after $(secs "$SETTLE_MS") s"
    elif ((END_ALIVE)); then settle_note="NOT settled in ${SETTLE_TIMEOUT}s; lowest of the last 2 s"
    else settle_note=""
    fi
    printf '  %-26s %-12s %-12s %s\n' "open fds" "$START_FDS" "$END_FDS" "$fd_change${settle_note:+  ($settle_note)}"
    printf '  %-26s %-12s %-12s %s\n' "  of which sockets" "$START_SOCKETS" "$END_SOCKETS" "$sock_change"
    printf '  %-26s %-12s %s\n' "threads" "$START_THREADS" "$END_THREADS"
    if ((END_ALIVE)); then
        printf '  %-26s %s\n' "alive after the load" "yes"
    else
        printf '  %-26s %s\n' "alive after the load" "NO (exit status ${BALANCER_STATUS:-?})"
    fi
    printf '  %-26s %s\n' "SIGTERM" "$STOP_RESULT"
    printf '\n'

    if ((${#failures[@]} == 0)); then
        printf 'verdict: PASS (alive, fds back within +%s of the start, clean stop)\n' "$FD_MARGIN"
    else
        printf 'verdict: FAIL\n'
        printf '  - %s\n' "${failures[@]}"
    fi
    if ((${#warnings[@]} > 0)); then
        printf 'warnings:\n'
        printf '  - %s\n' "${warnings[@]}"
    fi
    printf 'expected: read errors only from connections open on a backend when it was killed\n'
    printf '          (at most %s per kill), nothing from reloads.\n' "$CONNECTIONS"
    printf 'logs: %s (events.log: timeline, wrk.out: wrk'"'"'s own report)\n' "$RUN_DIR"
} >"$SUMMARY"
cat "$SUMMARY"

if ((${#failures[@]} > 0)); then exit 1; fi
