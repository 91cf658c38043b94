# shellcheck shell=bash
# Helpers shared by the scripts in this folder; each script sources this file after it has
# set CALLER_DIR (the directory it was started from).

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
