# shellcheck shell=bash
# Helpers shared by the scripts in this folder. A script sets SCRIPT_NAME (the name its
# messages start with, e.g. demo.sh) and sources this file before it changes directory.

# Where the script was started from (relative paths given to it are relative to that) and
# the repository it belongs to.
CALLER_DIR=$(pwd)
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --- messages ------------------------------------------------------------------------------

note() {
    printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2
}

die() {
    note "$*"
    exit 1
}

# Exits 2 after the message and the script's usage, or its short_usage where it defines one
# (the scripts whose full help is long point to it instead of repeating it).
bad_usage() {
    printf '%s: %s\n\n' "$SCRIPT_NAME" "$*" >&2
    if declare -F short_usage >/dev/null; then short_usage >&2; else usage >&2; fi
    exit 2
}

# The handler for INT, TERM and HUP: `trap 'on_signal SIGTERM 143' TERM`. Exiting runs the
# script's EXIT trap, which stops what it started.
on_signal() {
    note "$1: stopping"
    exit "$2"
}

# --- values and paths ----------------------------------------------------------------------

# True when $1 is a whole number.
is_uint() {
    [[ $1 =~ ^[0-9]+$ ]]
}

# Makes a path given by the caller absolute, relative to the directory the script was run from.
absolute() {
    case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$CALLER_DIR/$1" ;;
    esac
}

# Sets BIN_DIR, BALLAST and BACKEND: from BALLAST_BIN_DIR when it is set, otherwise from the
# release build after `cargo build --release CARGO_ARGS...` (call it from REPO_ROOT).
# shellcheck disable=SC2120 # demo.sh and screenshot.sh build everything
find_binaries() {
    if [[ -n ${BALLAST_BIN_DIR:-} ]]; then
        BIN_DIR=$(absolute "$BALLAST_BIN_DIR")
    else
        note "cargo build --release"
        cargo build --release "$@" || die "cargo build --release failed"
        BIN_DIR=$(absolute "${CARGO_TARGET_DIR:-$REPO_ROOT/target}")/release
    fi
    BALLAST=$BIN_DIR/ballast
    BACKEND=$BIN_DIR/ballast-backend
    [[ -x $BALLAST ]] || die "no executable ballast in $BIN_DIR"
    [[ -x $BACKEND ]] || die "no executable ballast-backend in $BIN_DIR"
}

# --- processes -----------------------------------------------------------------------------

# True while PID is a live process (a zombie counts as gone).
alive() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/stat ]]; then
        state=$(sed -e 's/^.*) //' -e 's/ .*//' "/proc/$pid/stat" 2>/dev/null) || return 0
    elif command -v ps >/dev/null 2>&1; then
        state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    else
        return 0
    fi
    [[ $state != Z* ]]
}

# True if PID is alive and its command line contains WORD (default: ballast), so a recycled
# PID is left alone.
is_ours() {
    local pid=$1 word=${2:-ballast} cmd
    alive "$pid" || return 1
    if [[ -r /proc/$pid/cmdline ]]; then
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    elif command -v ps >/dev/null 2>&1; then
        cmd=$(ps -o args= -p "$pid" 2>/dev/null) || return 1
    else
        return 0
    fi
    [[ $cmd == *"$word"* ]]
}

# Waits until FILE has a line matching the basic regex PATTERN while PID lives and sets
# READY_LINE to it. Fails after READY_TIMEOUT seconds, or as soon as PID exits: then it reaps
# PID and sets EXIT_STATUS to its status, which stays empty after a timeout. The caller says
# what went wrong, in its own words.
READY_LINE=""
EXIT_STATUS=""
# shellcheck disable=SC2034 # EXIT_STATUS is for the caller
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 deadline
    deadline=$((SECONDS + READY_TIMEOUT))
    EXIT_STATUS=""
    while :; do
        READY_LINE=$(grep -m1 -e "$pattern" "$file" 2>/dev/null || true)
        [[ -z $READY_LINE ]] || return 0
        if ! alive "$pid"; then
            wait "$pid" 2>/dev/null && EXIT_STATUS=0 || EXIT_STATUS=$?
            return 1
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

# Sends SIGTERM to those of the given processes that are still alive, waits for them (up to
# STOP_TIMEOUT seconds), then SIGKILLs what is left. The scripts' cleanup traps a second
# Ctrl-C or SIGTERM as FORCE=1, which sends SIGKILL at once.
FORCE=0
stop_pids() {
    local pid deadline left
    local pids=()
    for pid in "$@"; do
        if [[ -n $pid ]] && alive "$pid"; then pids+=("$pid"); fi
    done
    ((${#pids[@]} > 0)) || return 0
    note "stopping ${#pids[@]} process(es)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while :; do
        left=()
        for pid in "${pids[@]}"; do
            if alive "$pid"; then left+=("$pid"); fi
        done
        ((${#left[@]} > 0)) || break
        if ((FORCE || SECONDS >= deadline)); then
            note "sending SIGKILL to ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    wait "${pids[@]}" 2>/dev/null || true
}

# A helper that outlives a SIGKILL of the script: it blocks reading a FIFO (in RUN_DIR) whose
# only writer is the script, so it sees end-of-file when the script dies however it dies.
# After a normal cleanup the script calls stop_watchdog, which writes `done` first, and the
# helper just exits; otherwise it stops the processes recorded in PIDS_FILE, a line `PID
# [WORD]` each, WORD being what is_ours looks for in the command line. The processes started
# later get fd 9 closed (9>&-), so only the script holds the writing end.
start_watchdog() {
    local fifo=$RUN_DIR/watchdog.fifo
    rm -f "$fifo"
    mkfifo "$fifo"
    exec 9<>"$fifo"
    (
        set +e
        trap '' INT TERM HUP
        exec 3<"$fifo"
        line=""
        IFS= read -r -u 3 line
        [[ $line == "done" ]] && exit 0
        pids=()
        while read -r pid word; do
            if [[ -n $pid ]] && is_ours "$pid" "$word"; then pids+=("$pid"); fi
        done <"$PIDS_FILE"
        ((${#pids[@]} > 0)) || exit 0
        kill -TERM "${pids[@]}" 2>/dev/null
        for ((n = 0; n < 100; n++)); do
            left=()
            for pid in "${pids[@]}"; do
                if alive "$pid"; then left+=("$pid"); fi
            done
            ((${#left[@]} > 0)) || exit 0
            sleep 0.2
        done
        kill -KILL "${left[@]}" 2>/dev/null
    ) </dev/null >/dev/null 2>&1 9>&- &
    WATCHDOG_PID=$!
}

stop_watchdog() {
    if [[ -n ${WATCHDOG_PID:-} ]]; then
        printf 'done\n' >&9 || true
        exec 9>&-
        wait "$WATCHDOG_PID" 2>/dev/null || true
    fi
}
