#!/usr/bin/env bash
# Starts, lists and stops local demo backends (`ballast-backend`) on consecutive ports.
#
#   scripts/backends.sh start N [FIRST_PORT] [--ids ID,ID,...] [-- BACKEND_ARGS...]
#   scripts/backends.sh status
#   scripts/backends.sh stop
#
# Run `scripts/backends.sh help` for the details.
set -euo pipefail
SCRIPT_NAME=backends.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage:
  scripts/backends.sh start [N] [FIRST_PORT] [--ids ID,ID,...] [-- BACKEND_ARGS...]
  scripts/backends.sh status
  scripts/backends.sh stop

start   Starts N demo backends (`ballast-backend`) on 127.0.0.1:FIRST_PORT,
        127.0.0.1:FIRST_PORT+1, ... (FIRST_PORT defaults to 8081), waits until each
        one is listening, records them in the pid file and prints their addresses.
        Backend ids are `backend-PORT`, or the names given with `--ids`; N may
        then be left out (`start --ids vm4,vm5 8081`): a lone number of 1024 or
        more that differs from the number of ids is FIRST_PORT. Arguments after `--` go to every backend,
        e.g. `-- --max-requests 1 --load process`.
        Fails, stopping whatever it started, if a backend does not come up (for
        example because its port is taken) or backends are already running.
status  Lists the recorded backends and whether each is still running; exits 1 when
        none is recorded.
stop    Stops the recorded backends (SIGTERM, then SIGKILL after a bounded wait) and
        removes the pid file. Succeeds when nothing is running.

Environment:
  BALLAST_RUN_DIR        pid file and logs (default: target/ballast-run in the repository)
  BALLAST_BIN_DIR        directory holding ballast-backend; when unset the release
                         binary is used and built with `cargo build --release` if missing
  BALLAST_READY_TIMEOUT  seconds to wait for each backend to listen (default: 10)
  BALLAST_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default: 5)
EOF
}

# What bad_usage shows: the full help is long.
short_usage() {
    usage | sed -n '1,4p'
    printf '\nRun "scripts/backends.sh help" for the details.\n'
}

# Sends SIGTERM to the given PIDs, waits up to STOP_TIMEOUT seconds for them to exit, then
# sends SIGKILL to the ones left.
terminate() {
    local pid deadline left
    (($# > 0)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while :; do
        left=()
        for pid in "$@"; do
            if alive "$pid"; then left+=("$pid"); fi
        done
        ((${#left[@]} > 0)) || return 0
        ((SECONDS < deadline)) || break
        sleep 0.1
    done
    note "still running after ${STOP_TIMEOUT}s, sending SIGKILL to ${left[*]}"
    kill -KILL "${left[@]}" 2>/dev/null || true
}

# The recorded backends as lines `PID PORT ID`, or nothing.
recorded() {
    if [[ -f $PID_FILE ]]; then cat "$PID_FILE"; fi
}

backend_bin() {
    local bin
    if [[ -n ${BALLAST_BIN_DIR:-} ]]; then
        bin=$(absolute "$BALLAST_BIN_DIR")/ballast-backend
        [[ -x $bin ]] || die "no executable ballast-backend in BALLAST_BIN_DIR ($BALLAST_BIN_DIR)"
    else
        bin=$(absolute "${CARGO_TARGET_DIR:-$REPO_ROOT/target}")/release/ballast-backend
        if [[ ! -x $bin ]]; then
            note "$bin is missing, running cargo build --release"
            (cd "$REPO_ROOT" && cargo build --release --bin ballast-backend) >&2 ||
                die "cargo build --release failed"
            [[ -x $bin ]] || die "cargo build --release did not produce $bin"
        fi
    fi
    printf '%s\n' "$bin"
}

cmd_start() {
    local count="" first_port="" ids_arg="" extra=() ids=()
    while (($# > 0)); do
        case $1 in
        --) shift; extra=("$@"); break ;;
        --ids) (($# >= 2)) || bad_usage "--ids needs a comma-separated list"; ids_arg=$2; shift 2 ;;
        --ids=*) ids_arg=${1#--ids=}; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) bad_usage "unknown option '$1'" ;;
        *)
            is_uint "$1" || bad_usage "'$1' is not a number"
            if [[ -z $count ]]; then count=$1
            elif [[ -z $first_port ]]; then first_port=$1
            else bad_usage "unexpected argument '$1'"
            fi
            shift
            ;;
        esac
    done
    if [[ -n $ids_arg ]]; then
        IFS=, read -r -a ids <<<"$ids_arg"
        local id
        for id in "${ids[@]}"; do
            [[ -n $id ]] || bad_usage "--ids has an empty id"
        done
        if [[ -z $count ]]; then
            count=${#ids[@]}
        elif [[ -z $first_port ]] && ((10#$count != ${#ids[@]} && 10#$count >= 1024)); then
            first_port=$count
            count=${#ids[@]}
        fi
        ((count == ${#ids[@]})) || bad_usage "N is $count but --ids names ${#ids[@]} backends"
    fi
    [[ -n $count ]] || bad_usage "start needs N, the number of backends"
    ((10#$count >= 1)) || bad_usage "N must be at least 1"
    count=$((10#$count))
    first_port=$((10#${first_port:-8081}))
    ((first_port >= 1 && first_port + count - 1 <= 65535)) ||
        bad_usage "ports $first_port..$((first_port + count - 1)) are out of range"

    local pid port running=()
    while read -r pid port _; do
        if [[ -n $pid ]] && is_ours "$pid" ballast-backend; then running+=("$pid:$port"); fi
    done < <(recorded)
    if ((${#running[@]} > 0)); then
        die "backends are already running (pid:port ${running[*]}); run 'scripts/backends.sh stop' first"
    fi
    rm -f "$PID_FILE"

    local bin
    bin=$(backend_bin)
    mkdir -p "$RUN_DIR"

    # Until every backend is up, a failure (or Ctrl-C) stops the ones already started.
    STARTED=()
    trap 'abort_start' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local i id out log addr line records=() addrs=()
    for ((i = 0; i < count; i++)); do
        port=$((first_port + i))
        if ((${#ids[@]} > 0)); then id=${ids[i]}; else id=backend-$port; fi
        addr=127.0.0.1:$port
        out=$RUN_DIR/backend-$port.out
        log=$RUN_DIR/backend-$port.log
        : >"$out"
        : >"$log"
        # Own stdin/stdout/stderr, so a caller reading this script's output is not held open
        # by backends that outlive it.
        "$bin" --listen "$addr" --id "$id" ${extra[@]+"${extra[@]}"} \
            </dev/null >"$out" 2>"$log" &
        pid=$!
        STARTED+=("$pid")

        if ! wait_for_line "$out" '^listening on ' "$pid"; then
            if [[ -n $EXIT_STATUS ]]; then
                note "backend $id on $addr exited (status $EXIT_STATUS) before listening; is the port taken?"
            else
                note "backend $id on $addr did not print its listening line within ${READY_TIMEOUT}s (log: $log)"
            fi
            sed -e 's/^/    /' "$log" | tail -n 20 >&2
            exit 1
        fi
        addr=${READY_LINE#listening on }
        records+=("$pid $port $id")
        addrs+=("$addr $id $pid")
    done

    printf '%s\n' "${records[@]}" >"$PID_FILE"
    trap - EXIT INT TERM
    for line in "${addrs[@]}"; do
        read -r addr id pid <<<"$line"
        printf '%s\t%s\tpid %s\n' "$addr" "$id" "$pid"
    done
    note "$count backend(s) running; logs in $RUN_DIR; stop with: scripts/backends.sh stop"
}

abort_start() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#STARTED[@]} > 0)); then
        note "stopping the backend(s) this run started"
        terminate "${STARTED[@]}"
        wait "${STARTED[@]}" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    exit "$status"
}

cmd_status() {
    (($# == 0)) || bad_usage "status takes no arguments"
    local pid port id any=0 up=0
    while read -r pid port id; do
        [[ -n $pid ]] || continue
        any=1
        if is_ours "$pid" ballast-backend; then
            up=$((up + 1))
            printf '127.0.0.1:%s\t%s\tpid %s\trunning\n' "$port" "$id" "$pid"
        else
            printf '127.0.0.1:%s\t%s\tpid %s\tNOT RUNNING (log: %s)\n' \
                "$port" "$id" "$pid" "$RUN_DIR/backend-$port.log"
        fi
    done < <(recorded)
    if ((any == 0)); then
        note "no backends recorded ($PID_FILE)"
        return 1
    fi
    note "$up running"
}

cmd_stop() {
    (($# == 0)) || bad_usage "stop takes no arguments"
    if [[ ! -f $PID_FILE ]]; then
        note "no backends recorded, nothing to stop"
        return 0
    fi
    local pid port id pids=()
    while read -r pid port id; do
        [[ -n $pid ]] || continue
        if is_ours "$pid" ballast-backend; then pids+=("$pid"); fi
    done < <(recorded)
    terminate ${pids[@]+"${pids[@]}"}
    rm -f "$PID_FILE"
    note "stopped ${#pids[@]} backend(s)"
}

RUN_DIR=$(absolute "${BALLAST_RUN_DIR:-$REPO_ROOT/target/ballast-run}")
PID_FILE=$RUN_DIR/backends.pid
READY_TIMEOUT=${BALLAST_READY_TIMEOUT:-10}
STOP_TIMEOUT=${BALLAST_STOP_TIMEOUT:-5}
is_uint "$READY_TIMEOUT" || die "BALLAST_READY_TIMEOUT must be whole seconds, not '$READY_TIMEOUT'"
is_uint "$STOP_TIMEOUT" || die "BALLAST_STOP_TIMEOUT must be whole seconds, not '$STOP_TIMEOUT'"
STARTED=()

(($# > 0)) || bad_usage "missing command"
command=$1
shift
case $command in
start) cmd_start "$@" ;;
status) cmd_status "$@" ;;
stop) cmd_stop "$@" ;;
help | -h | --help) usage ;;
*) bad_usage "unknown command '$command'" ;;
esac
