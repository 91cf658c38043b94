#!/usr/bin/env bash
# Benchmarks ballast against no proxy, HAProxy and nginx on the same local backends and
# prints a Markdown table of medians.
#
#   scripts/bench.sh
#
# Run `scripts/bench.sh --help` for the details.
set -euo pipefail
SCRIPT_NAME=bench.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/bench.sh

Measures, in one go and on the same backends (two `ballast-backend` servers and one
`iperf3 -s`), five ways to reach them: direct (no proxy), floor (the bare epoll relay of
scripts/floor_relay.rs: what any user-space relay costs at the least), ballast, HAProxy
(`mode tcp`, default threads) and nginx (`stream`, `worker_processes auto`). Every round
runs each system in turn with a freshly started proxy (round 1: direct, floor, ballast,
haproxy, nginx; round 2: the same ...), so drift on a noisy machine affects them all alike:

  keep-alive   wrk -t2 -c64 --latency GET /: requests/s and p99 latency
  churn        the same with `Connection: close`: requests/s
  bulk         iperf3 -c through the proxy to iperf3 -s: MB/s received (10^6 bytes/s)
  idle memory  4000 connections through the proxy, one request each, held open: growth
               of the proxy's resident memory (VmRSS summed over its processes) per
               connection, in KiB (n/a for direct)
  scale        keep-alive requests/s at 1000 connections / requests/s at 64

It prints the medians as a Markdown table (stdout) with, for each figure, the ratio to the
best of HAProxy and nginx, followed by the machine and the command; the same text goes to
$BALLAST_RUN_DIR/bench.md. Progress goes to stderr; configurations and raw outputs are kept
in $BALLAST_RUN_DIR/bench/.

It installs nothing: a tool or peer that is missing is skipped with a note naming the
Debian packages that bring it (wrk, iperf3, haproxy, nginx + libnginx-mod-stream).
Everything listens on 127.0.0.1 only and everything started is stopped on exit. Needs
Linux (/proc), python3 and GNU timeout. The soft open-files limit is raised to the hard one.

Environment:
  BENCH_SECONDS=5          length of each wrk and iperf3 run
  BENCH_RUNS=3             rounds; the table shows medians
  BENCH_CONNS=64           connections of the keep-alive and churn runs
  BENCH_SCALE_CONNS=1000   connections of the scale run
  BENCH_IDLE_CONNS=4000    connections of the idle-memory run
  BENCH_THREADS=2          wrk threads
  BENCH_WARMUP=1           seconds of wrk warm-up after each proxy starts
  BENCH_SYSTEMS="direct floor ballast haproxy nginx"
                           systems to run, in this order
  BENCH_BALLAST_EXTRA      extra top-level keys for ballast's configurations, such as
                           'workers: 1,' (to compare settings)
  BENCH_PORT=18100         first of eleven consecutive ports used on 127.0.0.1
  BENCH_READY_TIMEOUT=10   seconds to wait for a process to listen
  BENCH_STOP_TIMEOUT=10    seconds after SIGTERM before SIGKILL
  BALLAST_BIN_DIR          use ballast, ballast-backend and examples/floor_relay from this
                           directory and skip `cargo build --release`
  BALLAST_RUN_DIR          output directory (default: target/ballast-run)

ballast and the backends run with RUST_LOG=warn (no per-connection logging, like the
generated HAProxy and nginx configurations).
EOF
}

# A remark for the report (and stderr).
add_note() {
    note "$*"
    printf '%s\n' "$*" >>"$NOTES"
}

# Prints the given PIDs and all their descendants, one per line.
tree_pids() {
    local -A children=()
    local f stat pid ppid p queue=("$@")
    for f in /proc/[0-9]*/stat; do
        # Not $(<"$f"): under set -e bash 5.2 exits when that file has just vanished.
        { IFS= read -r stat <"$f"; } 2>/dev/null || continue
        pid=${stat%% *}
        stat=${stat##*) }
        # A process that exits meanwhile can leave an empty or partial line.
        read -r _ ppid _ <<<"$stat" || continue
        [[ $pid =~ ^[0-9]+$ && $ppid =~ ^[0-9]+$ ]] || continue
        children[$ppid]+=" $pid"
    done
    while ((${#queue[@]} > 0)); do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        [[ -n $p ]] || continue
        printf '%s\n' "$p"
        # shellcheck disable=SC2206 # a space-separated list of PIDs
        queue+=(${children[$p]:-})
    done
}

# Prints `KIB COUNT`: VmRSS summed over the given PIDs and their descendants, and how many
# processes that is.
tree_rss() {
    local pids=() p v total=0 count=0
    mapfile -t pids < <(tree_pids "$@")
    for p in ${pids[@]+"${pids[@]}"}; do
        v=$(awk '/^VmRSS:/ { print $2; exit }' "/proc/$p/status" 2>/dev/null) || v=""
        [[ -n $v ]] || continue
        total=$((total + v))
        count=$((count + 1))
    done
    printf '%s %s\n' "$total" "$count"
}

# The number of threads of PID.
threads_of() {
    awk '/^Threads:/ { print $2; exit }' "/proc/$1/status" 2>/dev/null || true
}

# True when a socket listens on 127.0.0.1:PORT or 0.0.0.0:PORT. Reads /proc/net/tcp rather
# than connecting: a probe connection through a proxy would reach iperf3 as a stray client.
listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v a="0100007F:$hex" -v b="00000000:$hex" \
        'NR > 1 && $4 == "0A" && ($2 == a || $2 == b) { found = 1 } END { exit !found }' \
        /proc/net/tcp
}

# Waits until nothing listens on PORT any more (a stopped proxy of the previous round).
wait_port_free() {
    local port=$1 deadline=$((SECONDS + READY_TIMEOUT))
    while listening "$port"; do
        if ((SECONDS >= deadline)); then
            note "127.0.0.1:$port is still in use after ${READY_TIMEOUT}s"
            return 1
        fi
        sleep 0.1
    done
}

show_log() {
    if [[ -s $1 ]]; then sed -e 's/^/    /' "$1" | tail -n 20 >&2; fi
}

# Waits for PID's line in FILE (wait_for_line); when it does not come, says why and shows
# LOG.
wait_ready() {
    local file=$1 pattern=$2 pid=$3 what=$4 log=$5
    wait_for_line "$file" "$pattern" "$pid" && return 0
    if [[ -n $EXIT_STATUS ]]; then
        note "$what exited before it was ready; its log ($log):"
    else
        note "$what was not ready within ${READY_TIMEOUT}s; its log ($log):"
    fi
    show_log "$log"
    return 1
}

# Waits until PID listens on each PORT (it fails if PID exits first or after READY_TIMEOUT).
wait_listening() {
    local pid=$1 what=$2 log=$3 port deadline=$((SECONDS + READY_TIMEOUT))
    shift 3
    for port in "$@"; do
        until listening "$port"; do
            if ! alive "$pid"; then
                note "$what exited before listening on 127.0.0.1:$port; its log ($log):"
                show_log "$log"
                return 1
            fi
            if ((SECONDS >= deadline)); then
                note "$what did not listen on 127.0.0.1:$port within ${READY_TIMEOUT}s; its log ($log):"
                show_log "$log"
                return 1
            fi
            sleep 0.05
        done
    done
}

# Stops the given PIDs and their descendants: SIGTERM to the given ones, a bounded wait for
# the whole tree, then SIGKILL to whatever is left.
stop_tree() {
    (($# > 0)) || return 0
    local all=() left=() p deadline
    mapfile -t all < <(tree_pids "$@")
    kill -TERM "$@" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while :; do
        left=()
        for p in "${all[@]}"; do
            if alive "$p"; then left+=("$p"); fi
        done
        ((${#left[@]} > 0)) || break
        if ((FORCE || SECONDS >= deadline)); then
            note "still running after SIGTERM, sending SIGKILL to ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    wait "$@" 2>/dev/null || true
}

# Runs CMD with its output in OUT, killed after LIMIT seconds, and returns its status. It
# runs in the background so that a signal to this script is handled at once.
CHILD_PID=""
run_bounded() {
    local limit=$1 out=$2 status
    shift 2
    timeout -k 5 "$limit" "$@" </dev/null >"$out" 2>&1 &
    CHILD_PID=$!
    wait "$CHILD_PID" && status=0 || status=$?
    CHILD_PID=""
    return "$status"
}

# Stops everything this script started. A second Ctrl-C or SIGTERM sends SIGKILL at once.
cleanup() {
    local status=$?
    trap - EXIT
    trap 'FORCE=1' INT TERM HUP
    local pids=()
    for pid in ${CHILD_PID:-} ${HELPER_PID:-} ${SYS_PIDS[@]+"${SYS_PIDS[@]}"} \
        ${SERVER_PIDS[@]+"${SERVER_PIDS[@]}"}; do
        if [[ -n $pid ]] && alive "$pid"; then pids+=("$pid"); fi
    done
    if ((${#pids[@]} > 0)); then
        note "stopping ${#pids[@]} process(es)"
        stop_tree "${pids[@]}"
    fi
    exit "$status"
}

# --- arguments and environment -------------------------------------------------------------

case ${1:-} in
-h | --help) usage; exit 0 ;;
"") ;;
*) bad_usage "unexpected argument $1" ;;
esac

START_TIME=$SECONDS
HELPER=$REPO_ROOT/scripts/idle_conns.py

SECS=${BENCH_SECONDS:-5}
RUNS=${BENCH_RUNS:-3}
CONNS=${BENCH_CONNS:-64}
SCALE_CONNS=${BENCH_SCALE_CONNS:-1000}
IDLE_CONNS=${BENCH_IDLE_CONNS:-4000}
THREADS=${BENCH_THREADS:-2}
WARMUP=${BENCH_WARMUP:-1}
BASE_PORT=${BENCH_PORT:-18100}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-10}
STOP_TIMEOUT=${BENCH_STOP_TIMEOUT:-10}
for var in SECS:BENCH_SECONDS RUNS:BENCH_RUNS CONNS:BENCH_CONNS SCALE_CONNS:BENCH_SCALE_CONNS \
    IDLE_CONNS:BENCH_IDLE_CONNS THREADS:BENCH_THREADS WARMUP:BENCH_WARMUP BASE_PORT:BENCH_PORT \
    READY_TIMEOUT:BENCH_READY_TIMEOUT STOP_TIMEOUT:BENCH_STOP_TIMEOUT; do
    name=${var%%:*}
    is_uint "${!name}" || die "${var#*:} must be a whole number, not '${!name}'"
done
((SECS >= 1 && RUNS >= 1 && THREADS >= 1 && IDLE_CONNS >= 1)) ||
    die "BENCH_SECONDS, BENCH_RUNS, BENCH_THREADS and BENCH_IDLE_CONNS must be at least 1"
((CONNS >= THREADS && SCALE_CONNS >= THREADS)) ||
    die "BENCH_CONNS and BENCH_SCALE_CONNS must be at least BENCH_THREADS ($THREADS)"
((BASE_PORT >= 1024 && BASE_PORT + 10 <= 65535)) || die "BENCH_PORT must be 1024..65525"
read -r -a SYSTEMS <<<"${BENCH_SYSTEMS:-direct floor ballast haproxy nginx}"
((${#SYSTEMS[@]} > 0)) || die "BENCH_SYSTEMS is empty"
for sys in "${SYSTEMS[@]}"; do
    case $sys in
    direct | floor | ballast | haproxy | nginx) ;;
    *) die "BENCH_SYSTEMS: unknown system '$sys' (expected direct, floor, ballast, haproxy, nginx)" ;;
    esac
done

# The exact command, with the BENCH_ settings it ran with.
shell_quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./:,+-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}
COMMAND=""
while IFS= read -r var; do
    COMMAND+="$var=$(shell_quote "${!var}") "
done < <(compgen -e | grep '^BENCH_' | sort)
COMMAND+=$0

command -v python3 >/dev/null 2>&1 || die "python3 is needed (Debian package: python3)"
command -v timeout >/dev/null 2>&1 || die "GNU timeout is needed (Debian package: coreutils)"
[[ -r /proc/net/tcp ]] || die "needs Linux: /proc/net/tcp is not readable"
[[ -f $HELPER ]] || die "missing $HELPER"

# Every connection of the idle test costs a proxy two descriptors: use the whole hard limit.
hard=$(ulimit -Hn)
if [[ $hard == unlimited ]]; then hard=$(cat /proc/sys/fs/nr_open 2>/dev/null || echo 1048576); fi
ulimit -Sn "$hard" 2>/dev/null || true
NOFILE=$(ulimit -Sn)
if ((NOFILE < 2 * IDLE_CONNS + 256)); then
    note "the open-files limit ($NOFILE) is low for $IDLE_CONNS idle connections through a proxy (needs about $((2 * IDLE_CONNS + 256))); the idle-memory run may fail"
fi

RUN_DIR=$(absolute "${BALLAST_RUN_DIR:-$REPO_ROOT/target/ballast-run}")
BENCH_DIR=$RUN_DIR/bench
LOG_DIR=$BENCH_DIR/logs
CONF_DIR=$BENCH_DIR/conf
NGINX_DIR=$BENCH_DIR/nginx
RESULTS=$BENCH_DIR/results.tsv
NOTES=$BENCH_DIR/notes.txt
REPORT=$RUN_DIR/bench.md
mkdir -p "$LOG_DIR" "$CONF_DIR" "$NGINX_DIR"
rm -f "$LOG_DIR"/* "$RESULTS" "$NOTES"
: >"$RESULTS"
: >"$NOTES"

B1_PORT=$BASE_PORT
B2_PORT=$((BASE_PORT + 1))
IPERF_PORT=$((BASE_PORT + 2))
BALLAST_HTTP=$((BASE_PORT + 3))
BALLAST_BULK=$((BASE_PORT + 4))
HAPROXY_HTTP=$((BASE_PORT + 5))
HAPROXY_BULK=$((BASE_PORT + 6))
NGINX_HTTP=$((BASE_PORT + 7))
NGINX_BULK=$((BASE_PORT + 8))
FLOOR_HTTP=$((BASE_PORT + 9))
FLOOR_BULK=$((BASE_PORT + 10))
for ((port = BASE_PORT; port <= BASE_PORT + 10; port++)); do
    if listening "$port"; then
        die "127.0.0.1:$port is in use; choose another range of eleven ports with BENCH_PORT"
    fi
done

# --- tools and peers -----------------------------------------------------------------------

# Finds a program on PATH or in the sbin directories (not on a normal user's PATH on Debian).
find_program() {
    local dir
    if command -v "$1" 2>/dev/null; then return 0; fi
    for dir in /usr/sbin /sbin /usr/local/sbin; do
        if [[ -x $dir/$1 ]]; then printf '%s\n' "$dir/$1"; return 0; fi
    done
    return 1
}

SKIPPED=()
WRK=$(find_program wrk) || WRK=""
IPERF=$(find_program iperf3) || IPERF=""
HAPROXY=$(find_program haproxy) || HAPROXY=""
NGINX=$(find_program nginx) || NGINX=""
if [[ -z $WRK ]]; then
    add_note "wrk is not installed (Debian package: wrk): keep-alive, churn and scale are skipped"
fi
if [[ -z $IPERF ]]; then
    add_note "iperf3 is not installed (Debian package: iperf3): bulk is skipped"
fi

WANT=()
for sys in "${SYSTEMS[@]}"; do
    case $sys in
    haproxy)
        if [[ -z $HAPROXY ]]; then
            add_note "HAProxy is skipped: not installed (Debian package: haproxy)"
            SKIPPED+=(haproxy)
            continue
        fi
        ;;
    nginx)
        if [[ -z $NGINX ]]; then
            add_note "nginx is skipped: not installed (Debian packages: nginx libnginx-mod-stream)"
            SKIPPED+=(nginx)
            continue
        fi
        ;;
    esac
    WANT+=("$sys")
done
SYSTEMS=(${WANT[@]+"${WANT[@]}"})

# nginx's stream module is built in (--with-stream), a dynamic module (--with-stream=dynamic,
# Debian: libnginx-mod-stream installs ngx_stream_module.so) or absent.
NGINX_LOAD=""
if [[ " ${SYSTEMS[*]} " == *" nginx "* ]]; then
    nginx_flags=$("$NGINX" -V 2>&1 | tr ' ' '\n')
    modules=$(printf '%s\n' "$nginx_flags" | sed -n 's/^--modules-path=//p' | head -n 1)
    modules=${modules:-/usr/lib/nginx/modules}
    if grep -qx -- '--with-stream' <<<"$nginx_flags"; then
        NGINX_LOAD=""
    elif grep -qx -- '--with-stream=dynamic' <<<"$nginx_flags"; then
        if [[ -f $modules/ngx_stream_module.so ]]; then
            NGINX_LOAD="load_module $modules/ngx_stream_module.so;"
        else
            add_note "nginx is skipped: its stream module ($modules/ngx_stream_module.so) is not installed (Debian package: libnginx-mod-stream)"
            SKIPPED+=(nginx)
        fi
    elif [[ -f $modules/ngx_stream_module.so ]]; then
        NGINX_LOAD="load_module $modules/ngx_stream_module.so;"
    else
        add_note "nginx is skipped: it has no stream module (Debian package: libnginx-mod-stream)"
        SKIPPED+=(nginx)
    fi
    if [[ " ${SKIPPED[*]} " == *" nginx "* ]]; then
        WANT=()
        for sys in "${SYSTEMS[@]}"; do [[ $sys == nginx ]] || WANT+=("$sys"); done
        SYSTEMS=(${WANT[@]+"${WANT[@]}"})
    fi
fi

# --- binaries ------------------------------------------------------------------------------

cd "$REPO_ROOT"
# Progress goes to stderr, cargo's output too.
find_binaries --bin ballast --bin ballast-backend --example floor_relay >&2
FLOOR=$BIN_DIR/examples/floor_relay
if [[ " ${SYSTEMS[*]} " == *" floor "* && ! -x $FLOOR ]]; then
    add_note "floor is skipped: no $FLOOR (cargo build --release --example floor_relay)"
    WANT=()
    for sys in "${SYSTEMS[@]}"; do [[ $sys == floor ]] || WANT+=("$sys"); done
    SYSTEMS=(${WANT[@]+"${WANT[@]}"})
fi

# --- configurations ------------------------------------------------------------------------

cat >"$CONF_DIR/ballast-http.ron" <<EOF
// Generated by scripts/bench.sh: ballast over the two benchmark backends.
(
    listen: "127.0.0.1:$BALLAST_HTTP",
    algorithm: RoundRobin,
    backends: [
        (name: "b1", addr: "127.0.0.1:$B1_PORT"),
        (name: "b2", addr: "127.0.0.1:$B2_PORT"),
    ],
    timeouts: (grace: "2s"),
    limits: (max_connections: 20000),
    ${BENCH_BALLAST_EXTRA:-}
)
EOF
cat >"$CONF_DIR/ballast-bulk.ron" <<EOF
// Generated by scripts/bench.sh: ballast in front of the iperf3 server. Health checks are
// an hour apart so that no probe reaches iperf3 (it would take it for a client).
(
    listen: "127.0.0.1:$BALLAST_BULK",
    algorithm: RoundRobin,
    backends: [
        (name: "iperf3", addr: "127.0.0.1:$IPERF_PORT"),
    ],
    timeouts: (grace: "2s"),
    limits: (max_connections: 20000),
    health: (interval: "1h"),
    ${BENCH_BALLAST_EXTRA:-}
)
EOF
if [[ " ${SYSTEMS[*]} " == *" ballast "* ]]; then
    for conf in ballast-http ballast-bulk; do
        "$BALLAST" --config "$CONF_DIR/$conf.ron" --check >"$LOG_DIR/$conf-check.log" 2>&1 || {
            show_log "$LOG_DIR/$conf-check.log"
            die "ballast rejects the generated $CONF_DIR/$conf.ron"
        }
    done
fi

# Two descriptors per proxied connection, some to spare.
HAPROXY_MAXCONN=$(((NOFILE - 200) / 2))
((HAPROXY_MAXCONN <= 20000)) || HAPROXY_MAXCONN=20000
cat >"$CONF_DIR/haproxy.cfg" <<EOF
# Generated by scripts/bench.sh: HAProxy in TCP mode over the same backends as ballast.
# No nbthread: HAProxy's default of one thread per CPU.
global
    maxconn $HAPROXY_MAXCONN

defaults
    mode tcp
    maxconn $HAPROXY_MAXCONN
    timeout connect 5s
    timeout client 10m
    timeout server 10m

frontend http
    bind 127.0.0.1:$HAPROXY_HTTP
    default_backend http_backends

backend http_backends
    balance roundrobin
    server b1 127.0.0.1:$B1_PORT
    server b2 127.0.0.1:$B2_PORT

frontend bulk
    bind 127.0.0.1:$HAPROXY_BULK
    default_backend iperf3

backend iperf3
    balance roundrobin
    server iperf3 127.0.0.1:$IPERF_PORT
EOF
if [[ " ${SYSTEMS[*]} " == *" haproxy "* ]]; then
    if ! "$HAPROXY" -c -f "$CONF_DIR/haproxy.cfg" >"$LOG_DIR/haproxy-check.log" 2>&1; then
        show_log "$LOG_DIR/haproxy-check.log"
        add_note "HAProxy is skipped: it rejects the generated $CONF_DIR/haproxy.cfg"
        SKIPPED+=(haproxy)
    fi
fi

# nginx runs as the current user with everything under its own prefix. (As root the
# workers would otherwise switch to `nobody`.)
NGINX_USER=""
if ((EUID == 0)); then NGINX_USER="user $(id -un) $(id -gn);"; fi
NGINX_CONNECTIONS=$((NOFILE - 100))
((NGINX_CONNECTIONS <= 20000)) || NGINX_CONNECTIONS=20000
cat >"$NGINX_DIR/nginx.conf" <<EOF
# Generated by scripts/bench.sh: nginx stream (TCP) proxy over the same backends as ballast.
$NGINX_LOAD
$NGINX_USER
worker_processes auto;
worker_rlimit_nofile $NOFILE;
daemon off;
master_process on;
pid $NGINX_DIR/nginx.pid;
error_log $NGINX_DIR/error.log warn;

events {
    worker_connections $NGINX_CONNECTIONS;
}

stream {
    upstream http_backends {
        server 127.0.0.1:$B1_PORT;
        server 127.0.0.1:$B2_PORT;
    }
    server {
        listen 127.0.0.1:$NGINX_HTTP;
        proxy_pass http_backends;
    }

    upstream iperf3 {
        server 127.0.0.1:$IPERF_PORT;
    }
    server {
        listen 127.0.0.1:$NGINX_BULK;
        proxy_pass iperf3;
    }
}
EOF
NGINX_ARGS=(-p "$NGINX_DIR/" -c "$NGINX_DIR/nginx.conf" -e "$NGINX_DIR/error.log")
if [[ " ${SYSTEMS[*]} " == *" nginx "* && " ${SKIPPED[*]} " != *" nginx "* ]]; then
    if ! "$NGINX" -t "${NGINX_ARGS[@]}" >"$LOG_DIR/nginx-check.log" 2>&1; then
        show_log "$LOG_DIR/nginx-check.log"
        add_note "nginx is skipped: it rejects the generated $NGINX_DIR/nginx.conf"
        SKIPPED+=(nginx)
    fi
fi
WANT=()
for sys in "${SYSTEMS[@]}"; do
    [[ " ${SKIPPED[*]} " == *" $sys "* ]] || WANT+=("$sys")
done
SYSTEMS=(${WANT[@]+"${WANT[@]}"})
((${#SYSTEMS[@]} > 0)) || die "nothing to run"

# Versions for the report.
first_word_matching() { grep -o -m1 -E "$1" | head -n 1; }
V_BALLAST=$("$BALLAST" --version 2>/dev/null | first_word_matching '[0-9]+\.[0-9]+[^ ]*' || true)
V_HAPROXY=""
V_NGINX=""
V_WRK=""
V_IPERF=""
if [[ -n $HAPROXY ]]; then V_HAPROXY=$("$HAPROXY" -v 2>/dev/null | first_word_matching '[0-9]+\.[0-9]+\.[0-9]+' || true); fi
if [[ -n $NGINX ]]; then V_NGINX=$("$NGINX" -v 2>&1 | first_word_matching '[0-9]+\.[0-9]+\.[0-9]+' || true); fi
if [[ -n $WRK ]]; then V_WRK=$("$WRK" -v 2>&1 | first_word_matching '[0-9]+\.[0-9]+\.[0-9]+' || true); fi
if [[ -n $IPERF ]]; then V_IPERF=$("$IPERF" -v 2>&1 | first_word_matching '[0-9]+\.[0-9]+(\.[0-9]+)?' || true); fi

# --- backends ------------------------------------------------------------------------------

SYS_PIDS=()
SERVER_PIDS=()
HELPER_PID=""
IPERF_PID=""
trap cleanup EXIT
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM
trap 'on_signal SIGHUP 129' HUP

for i in 1 2; do
    port=$((BASE_PORT + i - 1))
    out=$LOG_DIR/backend-b$i.out
    log=$LOG_DIR/backend-b$i.log
    RUST_LOG=warn "$BACKEND" --listen "127.0.0.1:$port" --id "b$i" </dev/null >"$out" 2>"$log" &
    SERVER_PIDS+=("$!")
    wait_ready "$out" '^listening on ' "$!" "backend b$i (127.0.0.1:$port)" "$log" || exit 1
done

# (Re)starts the iperf3 server when it is not running.
ensure_iperf_server() {
    [[ -n $IPERF ]] || return 1
    if [[ -n $IPERF_PID ]] && alive "$IPERF_PID"; then return 0; fi
    if [[ -n $IPERF_PID ]]; then
        add_note "the iperf3 server had exited; restarted it (log: $LOG_DIR/iperf3-server.log)"
    fi
    wait_port_free "$IPERF_PORT" || return 1
    "$IPERF" -s -B 127.0.0.1 -p "$IPERF_PORT" </dev/null >>"$LOG_DIR/iperf3-server.log" 2>&1 &
    IPERF_PID=$!
    SERVER_PIDS+=("$IPERF_PID")
    wait_listening "$IPERF_PID" "iperf3 -s" "$LOG_DIR/iperf3-server.log" "$IPERF_PORT"
}
if [[ -n $IPERF ]]; then ensure_iperf_server || exit 1; fi

# --- systems -------------------------------------------------------------------------------

ROUND=0
SYS=""
HTTP_PORT=""
BULK_PORT=""
MEM_PIDS=()

# Starts one relay process of the system, COMMAND..., with its output in the round's log
# r<round>-NAME.log, and waits until it listens on PORT.
start_relay() {
    local name=$1 what=$2 port=$3 log=$LOG_DIR/r$ROUND-$1.log
    shift 3
    wait_port_free "$port" || return 1
    "$@" </dev/null >"$log" 2>&1 &
    SYS_PIDS+=("$!")
    wait_listening "$!" "$what" "$log" "$port"
}

start_system() {
    SYS_PIDS=()
    MEM_PIDS=()
    local log
    case $SYS in
    direct)
        HTTP_PORT=$B1_PORT
        BULK_PORT=$IPERF_PORT
        ;;
    ballast)
        HTTP_PORT=$BALLAST_HTTP
        BULK_PORT=$BALLAST_BULK
        # RUST_LOG=warn: at info ballast writes an access-log line per connection.
        # Readiness is then the listening socket (nothing is logged).
        start_relay ballast-http "ballast (ballast-http)" "$HTTP_PORT" \
            env RUST_LOG=warn "$BALLAST" --config "$CONF_DIR/ballast-http.ron" || return 1
        start_relay ballast-bulk "ballast (ballast-bulk)" "$BULK_PORT" \
            env RUST_LOG=warn "$BALLAST" --config "$CONF_DIR/ballast-bulk.ron" || return 1
        MEM_PIDS=("${SYS_PIDS[0]}")
        ;;
    floor)
        HTTP_PORT=$FLOOR_HTTP
        BULK_PORT=$FLOOR_BULK
        start_relay floor-http floor_relay "$HTTP_PORT" \
            "$FLOOR" "127.0.0.1:$HTTP_PORT" "127.0.0.1:$B1_PORT,127.0.0.1:$B2_PORT" || return 1
        start_relay floor-bulk floor_relay "$BULK_PORT" \
            "$FLOOR" "127.0.0.1:$BULK_PORT" "127.0.0.1:$IPERF_PORT" || return 1
        MEM_PIDS=("${SYS_PIDS[0]}")
        ;;
    haproxy)
        HTTP_PORT=$HAPROXY_HTTP
        BULK_PORT=$HAPROXY_BULK
        log=$LOG_DIR/r$ROUND-haproxy.log
        wait_port_free "$HTTP_PORT" || return 1
        wait_port_free "$BULK_PORT" || return 1
        "$HAPROXY" -f "$CONF_DIR/haproxy.cfg" -db </dev/null >"$log" 2>&1 &
        SYS_PIDS=("$!")
        MEM_PIDS=("$!")
        wait_listening "$!" haproxy "$log" "$HTTP_PORT" "$BULK_PORT" || return 1
        ;;
    nginx)
        HTTP_PORT=$NGINX_HTTP
        BULK_PORT=$NGINX_BULK
        log=$LOG_DIR/r$ROUND-nginx.log
        wait_port_free "$HTTP_PORT" || return 1
        wait_port_free "$BULK_PORT" || return 1
        "$NGINX" "${NGINX_ARGS[@]}" </dev/null >"$log" 2>&1 &
        SYS_PIDS=("$!")
        MEM_PIDS=("$!")
        wait_listening "$!" nginx "$log" "$HTTP_PORT" "$BULK_PORT" || return 1
        ;;
    esac
}

stop_system() {
    stop_tree ${SYS_PIDS[@]+"${SYS_PIDS[@]}"}
    SYS_PIDS=()
    MEM_PIDS=()
}

# True while every process of the system runs; notes it once otherwise.
system_alive() {
    local pid
    for pid in ${SYS_PIDS[@]+"${SYS_PIDS[@]}"}; do
        if ! alive "$pid"; then
            add_note "round $ROUND: $SYS (pid $pid) exited during the run; logs in $LOG_DIR"
            return 1
        fi
    done
}

record() {
    printf '%s\t%s\t%s\t%s\n' "$ROUND" "$SYS" "$1" "$2" >>"$RESULTS"
}

# Runs wrk against the system's HTTP port: NAME CONNECTIONS SECONDS [WRK_ARGS...]. Sets
# WRK_RPS, WRK_P99_MS, WRK_REQUESTS and WRK_ERRORS (socket errors and non-2xx/3xx replies).
WRK_RPS=""
WRK_P99_MS=""
WRK_REQUESTS=""
WRK_ERRORS=""
run_wrk() {
    local name=$1 conns=$2 secs=$3 out parsed status
    shift 3
    out=$LOG_DIR/r$ROUND-$SYS-$name.wrk
    run_bounded $((secs + 30)) "$out" "$WRK" -t"$THREADS" -c"$conns" -d"${secs}s" --latency \
        "$@" "http://127.0.0.1:$HTTP_PORT/" && status=0 || status=$?
    if ((status != 0)); then
        add_note "round $ROUND: $SYS $name: wrk failed (status $status; output: $out)"
        return 1
    fi
    parsed=$(awk '
        /^Requests\/sec:/ { rps = $2 }
        /^[ \t]+99(\.0+)?%/ {
            v = $2; unit = v; sub(/^[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
            f = (unit == "us") ? 0.001 : (unit == "ms") ? 1 : (unit == "s") ? 1000 : (unit == "m") ? 60000 : (unit == "h") ? 3600000 : -1
            if (f > 0) p99 = v * f
        }
        / requests in / { req = $1 }
        /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        END {
            if (rps == "" || p99 == "" || req == "") exit 1
            printf "%s %.3f %s %d\n", rps, p99, req, err
        }' "$out") || {
        add_note "round $ROUND: $SYS $name: cannot read wrk's output ($out)"
        return 1
    }
    read -r WRK_RPS WRK_P99_MS WRK_REQUESTS WRK_ERRORS <<<"$parsed"
    if ((WRK_REQUESTS == 0)); then
        add_note "round $ROUND: $SYS $name: no request completed ($out)"
        return 1
    fi
    if ((WRK_ERRORS * 100 > WRK_REQUESTS)); then
        add_note "round $ROUND: $SYS $name: $WRK_ERRORS errors for $WRK_REQUESTS requests ($out)"
    fi
}

measure_http() {
    local name=$1 conns=$2
    shift 2
    system_alive || return 1
    run_wrk "$name" "$conns" "$SECS" "$@" || return 0
    case $name in
    keepalive)
        record ka_rps "$WRK_RPS"
        record ka_p99_ms "$WRK_P99_MS"
        note "round $ROUND: $SYS keep-alive: $WRK_RPS req/s, p99 $WRK_P99_MS ms"
        ;;
    churn)
        record churn_rps "$WRK_RPS"
        note "round $ROUND: $SYS churn: $WRK_RPS req/s"
        ;;
    scale)
        record scale_rps "$WRK_RPS"
        note "round $ROUND: $SYS $conns connections: $WRK_RPS req/s, p99 $WRK_P99_MS ms"
        ;;
    esac
    sleep 0.5
}

measure_bulk() {
    local out=$LOG_DIR/r$ROUND-$SYS-bulk.json status mbps
    system_alive || return 1
    ensure_iperf_server || return 0
    run_bounded $((SECS + 30)) "$out" "$IPERF" -c 127.0.0.1 -p "$BULK_PORT" -t "$SECS" -J &&
        status=0 || status=$?
    mbps=$(python3 - "$out" <<'PY'
import json, sys
try:
    with open(sys.argv[1]) as f:
        data = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"no JSON: {e}")
if data.get("error"):
    sys.exit(data["error"])
try:
    print("%.1f" % (data["end"]["sum_received"]["bits_per_second"] / 8e6))
except (KeyError, TypeError):
    sys.exit("no end.sum_received in the output")
PY
    ) 2>"$out.err" || mbps=""
    if [[ -z $mbps ]] || ((status != 0)); then
        add_note "round $ROUND: $SYS bulk: iperf3 failed (status $status: $(head -c 200 "$out.err" 2>/dev/null); output: $out)"
        sleep 1
        return 0
    fi
    record bulk_mbps "$mbps"
    note "round $ROUND: $SYS bulk: $mbps MB/s"
    # iperf3 -s takes a moment to accept the next test.
    sleep 1
}

# Memory per idle connection: the proxy's RSS before, and while IDLE_CONNS connections that
# have each had one response are held open.
measure_idle() {
    local out=$LOG_DIR/r$ROUND-$SYS-idle.out err=$LOG_DIR/r$ROUND-$SYS-idle.err
    local limit=$((IDLE_CONNS / 50 + 30)) deadline before after procs_before procs status
    local closed lost kib
    system_alive || return 1
    sleep 1
    read -r before procs_before < <(tree_rss "${MEM_PIDS[@]}")
    python3 "$HELPER" --port "$HTTP_PORT" -n "$IDLE_CONNS" --timeout "$limit" --hold 300 \
        </dev/null >"$out" 2>"$err" &
    HELPER_PID=$!
    deadline=$((SECONDS + limit + 10))
    until grep -q '^ready ' "$out" 2>/dev/null; do
        if ! alive "$HELPER_PID" || ((SECONDS >= deadline)); then
            add_note "round $ROUND: $SYS idle: could not open $IDLE_CONNS connections: $(tail -n 3 "$err" | tr '\n' ' ')"
            stop_tree "$HELPER_PID"
            HELPER_PID=""
            return 0
        fi
        sleep 0.1
    done
    # Let the proxy settle (buffers released after the responses) before reading RSS.
    sleep 1
    read -r after procs < <(tree_rss "${MEM_PIDS[@]}")
    if ((${procs:-0} == 0 || ${procs_before:-0} == 0)); then
        add_note "round $ROUND: $SYS idle: could not read the proxy's memory (/proc/${MEM_PIDS[0]}/status); not recorded"
        before=""
    fi
    kill -TERM "$HELPER_PID" 2>/dev/null || true
    deadline=$((SECONDS + 20))
    while alive "$HELPER_PID" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$HELPER_PID"; then stop_tree "$HELPER_PID"; fi
    wait "$HELPER_PID" 2>/dev/null && status=0 || status=$?
    HELPER_PID=""
    closed=$(grep -m1 '^closed ' "$out" || true)
    lost=$(sed -n 's/^closed held [0-9]* lost \([0-9]*\)$/\1/p' "$out")
    [[ -n $before ]] || return 0
    if [[ -z $closed || $lost != 0 ]]; then
        add_note "round $ROUND: $SYS idle: connections did not stay open (${closed:-helper status $status}); not recorded"
        return 0
    fi
    kib=$(awk -v a="$after" -v b="$before" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (a - b) / n }')
    record idle_kib "$kib"
    note "round $ROUND: $SYS idle: RSS $before KiB -> $after KiB over $procs process(es) with $IDLE_CONNS connections: $kib KiB/connection"
    if [[ $procs != "$procs_before" ]]; then
        add_note "round $ROUND: $SYS idle: process count changed from $procs_before to $procs during the measurement"
    fi
    sleep 0.5
}

run_system() {
    local threads
    if ! start_system; then
        add_note "round $ROUND: $SYS did not start; logs in $LOG_DIR"
        stop_system
        return 0
    fi
    if [[ $SYS != direct ]]; then
        threads=$(threads_of "${MEM_PIDS[0]}")
        note "round $ROUND: $SYS running (pids: $(tree_pids "${SYS_PIDS[@]}" | tr '\n' ' ')threads of the main process: ${threads:-?})"
    fi
    # Warm-up, which also checks the path works.
    if [[ -n $WRK ]] && ((WARMUP > 0)); then
        if ! run_wrk warmup "$CONNS" "$WARMUP" || ((WRK_ERRORS > 0)); then
            add_note "round $ROUND: $SYS: the warm-up failed; skipping it this round (logs in $LOG_DIR)"
            stop_system
            return 0
        fi
    elif ! run_bounded 60 "$LOG_DIR/r$ROUND-$SYS-warmup.out" python3 "$HELPER" \
        --port "$HTTP_PORT" -n "$CONNS" --timeout 30 --hold 0; then
        add_note "round $ROUND: $SYS: the warm-up failed; skipping it this round (logs in $LOG_DIR)"
        stop_system
        return 0
    fi
    if [[ $SYS != direct ]]; then measure_idle || true; fi
    if [[ -n $WRK ]]; then
        measure_http keepalive "$CONNS" || true
        measure_http churn "$CONNS" -H 'Connection: close' || true
        measure_http scale "$SCALE_CONNS" || true
    fi
    if [[ -n $IPERF ]]; then measure_bulk || true; fi
    system_alive || true
    stop_system
}

note "systems: ${SYSTEMS[*]}; $RUNS run(s) of ${SECS}s per workload; logs in $LOG_DIR"
for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
    for SYS in "${SYSTEMS[@]}"; do
        run_system
    done
done

# --- report --------------------------------------------------------------------------------

ELAPSED=$((SECONDS - START_TIME))
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
if [[ -z $CPU_MODEL ]]; then CPU_MODEL=$(uname -m); fi
NPROC=$(nproc)
KERNEL=$(uname -sr)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
DISTRO=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null | head -n 1 || true)
export REPORT_SYSTEMS="${SYSTEMS[*]}" REPORT_RUNS=$RUNS REPORT_SECS=$SECS \
    REPORT_CONNS=$CONNS REPORT_SCALE_CONNS=$SCALE_CONNS REPORT_IDLE_CONNS=$IDLE_CONNS \
    REPORT_THREADS=$THREADS REPORT_WRK=${WRK:+1} REPORT_IPERF=${IPERF:+1} \
    REPORT_V_BALLAST=$V_BALLAST REPORT_V_HAPROXY=$V_HAPROXY REPORT_V_NGINX=$V_NGINX \
    REPORT_V_WRK=$V_WRK REPORT_V_IPERF=$V_IPERF REPORT_NPROC=$NPROC \
    REPORT_CPU=$CPU_MODEL REPORT_KERNEL=$KERNEL REPORT_DISTRO=$DISTRO \
    REPORT_COMMAND=$COMMAND REPORT_ELAPSED=$ELAPSED REPORT_DATE=$DATE
python3 - "$RESULTS" "$NOTES" "$REPORT" <<'PY'
import os
import statistics
import sys
from collections import defaultdict

results_path, notes_path, report_path = sys.argv[1:4]
env = os.environ
systems = env["REPORT_SYSTEMS"].split()
runs = int(env["REPORT_RUNS"])

data = defaultdict(lambda: defaultdict(dict))
with open(results_path) as f:
    for line in f:
        r, s, m, v = line.rstrip("\n").split("\t")
        data[s][m][int(r)] = float(v)
for s in list(data):
    ka, sc = data[s].get("ka_rps", {}), data[s].get("scale_rps", {})
    data[s]["scale"] = {r: sc[r] / ka[r] for r in sc if ka.get(r)}


def thousands(v):
    return f"{v:,.0f}"


columns = [
    # key, header, higher is better, format, needs
    ("ka_rps", "Keep-alive req/s", True, thousands, "wrk"),
    ("ka_p99_ms", "Keep-alive p99 ms", False, lambda v: f"{v:.2f}", "wrk"),
    ("churn_rps", "Churn req/s", True, thousands, "wrk"),
    ("bulk_mbps", "Bulk MB/s", True, thousands, "iperf"),
    ("idle_kib", "Idle KiB/conn", False, lambda v: f"{v:.1f}", None),
    ("scale", f"Scale {env['REPORT_SCALE_CONNS']}/{env['REPORT_CONNS']}", True,
     lambda v: f"{v:.2f}", "wrk"),
]
have = {"wrk": bool(env.get("REPORT_WRK")), "iperf": bool(env.get("REPORT_IPERF")), None: True}

medians = {s: {} for s in systems}
partial = []
for s in systems:
    for key, header, _, _, _ in columns:
        values = list(data[s].get(key, {}).values())
        if values:
            medians[s][key] = statistics.median(values)
            if len(values) < runs:
                partial.append(f"{s} {header}: median of {len(values)} of {runs} runs")

peers = [s for s in ("haproxy", "nginx") if s in systems]
best = {}
for key, _, higher, _, _ in columns:
    vals = [medians[s][key] for s in peers if key in medians[s]]
    if vals:
        best[key] = max(vals) if higher else min(vals)

labels = {
    "direct": "direct (no proxy)",
    "floor": "floor (bare epoll relay)",
    "ballast": f"ballast {env.get('REPORT_V_BALLAST', '')}".strip(),
    "haproxy": f"HAProxy {env.get('REPORT_V_HAPROXY', '')}".strip(),
    "nginx": f"nginx {env.get('REPORT_V_NGINX', '')}".strip(),
}

lines = []
lines.append("| System | " + " | ".join(c[1] for c in columns) + " |")
lines.append("|---|" + "---:|" * len(columns))
for s in systems:
    cells = []
    for key, _, _, fmt, needs in columns:
        if (s == "direct" and key == "idle_kib") or not have[needs]:
            cells.append("n/a")
            continue
        if key not in medians[s]:
            cells.append("failed")
            continue
        v = medians[s][key]
        cell = fmt(v)
        b = best.get(key)
        if b is not None and b > 0 and v >= 0:
            cell += f" ({v / b:.2f}x)"
        cells.append(cell)
    lines.append(f"| {labels[s]} | " + " | ".join(cells) + " |")

secs, conns, threads = env["REPORT_SECS"], env["REPORT_CONNS"], env["REPORT_THREADS"]
out = []
out.append(f"Medians of {runs} run{'s' if runs != 1 else ''}, systems interleaved in each "
           f"round, {secs} s per wrk or iperf3 run.")
out.append("")
out.extend(lines)
out.append("")
ratio_base = " and ".join({"haproxy": "HAProxy", "nginx": "nginx"}[p] for p in peers)
if peers:
    out.append(f"(N.NNx) is the ratio to the best of {ratio_base}: higher is better for "
               "req/s, MB/s and scale, lower for p99 and KiB/conn.")
else:
    out.append("No ratios: neither HAProxy nor nginx ran.")
out.append(
    f"Keep-alive: `wrk -t{threads} -c{conns} -d{secs}s --latency` on GET / (a 196-byte page); "
    f"churn: the same with `-H 'Connection: close'`; bulk: `iperf3 -c -t {secs}` "
    "(one TCP stream) to `iperf3 -s`, received MB/s (10^6 bytes/s); "
    f"idle: growth of the proxy's resident memory (VmRSS of all its processes) with "
    f"{env['REPORT_IDLE_CONNS']} open connections that have each had one request, per "
    f"connection; scale: keep-alive req/s at {env['REPORT_SCALE_CONNS']} connections / "
    f"at {conns}. Proxies round-robin over two `ballast-backend` servers on the same "
    "machine (direct: wrk to the first one, iperf3 straight to the server); HAProxy "
    "`mode tcp` with its default threads, nginx `stream` with `worker_processes auto`, "
    "ballast with its default of one worker thread per CPU and RUST_LOG=warn, floor "
    "(`scripts/floor_relay.rs`: the leanest relay we can write, one level-triggered epoll "
    "loop per CPU and nothing else) with one thread per CPU too; no proxy logs connections.")
tools = ", ".join(x for x in (
    f"wrk {env['REPORT_V_WRK']}" if env.get("REPORT_V_WRK") else "",
    f"iperf3 {env['REPORT_V_IPERF']}" if env.get("REPORT_V_IPERF") else "") if x)
distro = f", {env['REPORT_DISTRO']}" if env.get("REPORT_DISTRO") else ""
out.append("")
out.append(f"Machine: {env['REPORT_NPROC']} CPUs ({env['REPORT_CPU']}), "
           f"{env['REPORT_KERNEL']}{distro}" + (f"; {tools}" if tools else "") + ".")
mins, s_ = divmod(int(env["REPORT_ELAPSED"]), 60)
out.append(f"Command: `{env['REPORT_COMMAND']}` ({env['REPORT_DATE']}, took {mins}m{s_:02d}s).")

with open(notes_path) as f:
    notes = [n.strip() for n in f if n.strip()]
notes += partial
if notes:
    out.append("")
    out.append("Notes:")
    out.extend(f"- {n}" for n in notes)

text = "\n".join(out) + "\n"
with open(report_path, "w") as f:
    f.write(text)
sys.stdout.write(text)
PY
note "report written to $REPORT (took ${ELAPSED}s)"
