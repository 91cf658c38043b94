#!/usr/bin/env bash
# Three ballast instances behind an ECMP router, in network namespaces on this machine:
# checks that they agree on every client's backend (Maglev), what losing one costs, that a
# new DNS address reaches all of them, and that a rolling restart loses no connection.
#
#   scripts/cluster.sh              (as root; Linux network namespaces, dnsmasq, nft, python3)
#
# Run `scripts/cluster.sh --help` for the details.
set -euo pipefail
SCRIPT_NAME=cluster.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/cluster.sh [--plain-ecmp]

Builds, in network namespaces of its own (nothing touches the host's network):

  clients (CLUSTER_CLIENTS source addresses, 10.0.1.100 and up)
     |
  router: VIP 10.0.0.100/32 by ECMP over three next hops, L4 hash
     |            |            |
  lb1          lb2          lb3      ballast each (same configuration: Maglev, VIP:80,
     |            |            |      backends by the name pods.cluster.test)
  backends 10.0.3.11-15:8080 (ballast-backend) and dns 10.0.3.53 (dnsmasq), on one bridge

then checks, and prints with figures:
  (a) every client address reaches the same backend whichever instance its flows land on;
  (b) SIGKILL of one instance loses only the connections it held, and once its route is
      withdrawn every new connection succeeds on the other two;
  (c) a backend address added to the DNS name gets its share of new connections on all
      three instances within two DNS intervals;
  (d) a rolling restart (route withdrawn, SIGTERM and drain, restart, route back) under
      load loses no connection.

The router pins each flow to the instance its first packet went to (conntrack marks and
one routing table per instance, set up with nft), as a router keeping flow affinity would:
withdrawing a route then moves only new flows. --plain-ecmp leaves that out, to show what
plain ECMP costs: removing or adding a next hop re-hashes some established flows onto
another instance, which resets them, so (b) and (d) then fail.

Needs root, `ip` (iproute2) with network namespaces, `dnsmasq` (Debian: dnsmasq-base),
`nft` (Debian: nftables; not with --plain-ecmp), `ss` and `python3`; installs nothing.
Everything it creates (namespaces, their links, processes) is removed when it exits,
also on Ctrl-C or SIGTERM; should the script itself be killed with SIGKILL, a helper it
leaves waiting removes them, and failing that the next run does. A run takes about 15 s
after the build (25 s with --plain-ecmp, whose drains wait out the grace period).

Exit status: 0 when every check passes, 1 when one fails or something goes wrong, 2 for
bad arguments or when it cannot run here (not root, no namespaces, a tool missing).

Environment:
  CLUSTER_CLIENTS        client source addresses (default: 100; 50 to 150)
  CLUSTER_READY_TIMEOUT  seconds to wait for each process or event (default: 10)
  CLUSTER_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default: 10)
  BALLAST_BIN_DIR        use ballast and ballast-backend from this directory and skip
                         `cargo build --release`
  BALLAST_RUN_DIR        logs and results (default: target/ballast-run); the script uses
                         its `cluster` subdirectory
EOF
}

# What bad_usage shows: the full help is long.
short_usage() {
    usage | sed -n '1p'
    printf '\nRun "scripts/cluster.sh --help" for the details.\n'
}

# --- arguments and environment -------------------------------------------------------------

PINNING=1
case ${1:-} in
-h | --help) usage; exit 0 ;;
--plain-ecmp) PINNING=0; shift ;;
-*) bad_usage "unknown option '$1'" ;;
esac
(($# == 0)) || bad_usage "unexpected argument '$1'"

CLIENTS=${CLUSTER_CLIENTS:-100}
READY_TIMEOUT=${CLUSTER_READY_TIMEOUT:-10}
STOP_TIMEOUT=${CLUSTER_STOP_TIMEOUT:-10}
if ! is_uint "$CLIENTS" || ((CLIENTS < 50 || CLIENTS > 150)); then
    bad_usage "CLUSTER_CLIENTS must be a number from 50 to 150, not '$CLIENTS'"
fi
CLIENTS=$((10#$CLIENTS))
is_uint "$READY_TIMEOUT" || bad_usage "CLUSTER_READY_TIMEOUT must be whole seconds, not '$READY_TIMEOUT'"
is_uint "$STOP_TIMEOUT" || bad_usage "CLUSTER_STOP_TIMEOUT must be whole seconds, not '$STOP_TIMEOUT'"

# Says why the script cannot run here and exits 2.
cannot_run() {
    note "cannot run here: $*"
    exit 2
}

[[ $(id -u) == 0 ]] || cannot_run "it needs root (network namespaces)"
# ip, dnsmasq and nft live in sbin directories, which a PATH may lack.
case ":$PATH:" in
*:/usr/sbin:*) ;;
*) PATH=$PATH:/usr/sbin:/sbin ;;
esac
tools=(ip dnsmasq ss python3 timeout mkfifo)
((PINNING)) && tools+=(nft)
for tool in "${tools[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        case $tool in
        dnsmasq) cannot_run "dnsmasq is missing (Debian: apt-get install dnsmasq-base)" ;;
        nft) cannot_run "nft is missing (Debian: apt-get install nftables), or use --plain-ecmp" ;;
        ip | ss) cannot_run "$tool is missing (Debian: apt-get install iproute2)" ;;
        *) cannot_run "$tool is missing" ;;
        esac
    fi
done
# The interpreter itself, not a wrapper (pyenv's shims take a second to start).
PYTHON=$(python3 -c 'import sys; print(sys.executable)') || cannot_run "python3 does not run"
CLIENT_PY=$REPO_ROOT/scripts/cluster.py

# Namespaces of this run are named $PREFIX-...; a run killed too hard to clean up (SIGKILL)
# leaves some, which the next run removes (their owner's pid is in the name).
PREFIX=ballast-cl$$
probe_ns=$PREFIX-probe
ip netns add "$probe_ns" 2>/dev/null || cannot_run "'ip netns add' fails (no network namespaces?)"
ip netns del "$probe_ns"

# --- topology ------------------------------------------------------------------------------

VIP=10.0.0.100
PORT=80
NAME=pods.cluster.test
BACKEND_PORT=8080
DNS_ADDR=10.0.3.53
INTERVAL=1 # dns.interval, seconds
GRACE=5    # timeouts.grace, seconds
LONG_WAIT=1.0
FIRST_CLIENT=10.0.1.100
INSTANCES=(lb1 lb2 lb3)
BACKENDS=(10.0.3.11 10.0.3.12 10.0.3.13 10.0.3.14)
NEW_BACKEND=10.0.3.15
NS_RT=$PREFIX-router
NS_CL=$PREFIX-clients
NS_BE=$PREFIX-backends
NS_DNS=$PREFIX-dns
# ns_of lbN: that instance's namespace.
ns_of() {
    printf '%s-%s\n' "$PREFIX" "$1"
}
# front_of lbN: the instance's address on its link to the router (its ECMP next hop).
front_of() {
    printf '10.0.1%s.2\n' "${1#lb}"
}

RUN_DIR=$(absolute "${BALLAST_RUN_DIR:-$REPO_ROOT/target/ballast-run}")/cluster
mkdir -p "$RUN_DIR"
if [[ -f $RUN_DIR/cluster.pid ]]; then
    other=$(cat "$RUN_DIR/cluster.pid" 2>/dev/null || true)
    if [[ -n $other && $other != "$$" ]] && is_ours "$other" cluster.sh; then
        die "another cluster.sh (pid $other) uses $RUN_DIR; wait for it or set BALLAST_RUN_DIR"
    fi
fi
rm -f "$RUN_DIR"/*.log "$RUN_DIR"/*.out "$RUN_DIR"/*.tsv "$RUN_DIR"/*.txt "$RUN_DIR"/*.map "$RUN_DIR"/*.err \
    "$RUN_DIR"/hold.fifo "$RUN_DIR"/load.stop "$RUN_DIR"/watchdog.fifo
HOSTS=$RUN_DIR/hosts
CONFIG=$RUN_DIR/cluster.ron

# --- helpers -------------------------------------------------------------------------------

# The time in whole microseconds, and microseconds as seconds with a fraction.
now_us() {
    local t=$EPOCHREALTIME
    printf '%s\n' "${t//[.,]/}"
}
seconds() {
    printf '%d.%06d\n' "$(($1 / 1000000))" "$(($1 % 1000000))"
}
# The same, to a hundredth.
hundredths() {
    printf '%d.%02d\n' "$(($1 / 1000000))" "$(($1 % 1000000 / 10000))"
}

# Sets a sysctl (KEY in dotted form) inside namespace NS without needing procps.
ns_sysctl() {
    local ns=$1 key=$2 value=$3
    # shellcheck disable=SC2016 # expanded by the inner shell
    ip netns exec "$ns" bash -c 'printf "%s\n" "$2" >"/proc/sys/$1"' _ "${key//.//}" "$value"
}

# Creates namespace NS with its loopback up and no reverse-path filter.
make_ns() {
    ip netns add "$1"
    ip -n "$1" link set lo up
    ns_sysctl "$1" net.ipv4.conf.all.rp_filter 0
    ns_sysctl "$1" net.ipv4.conf.default.rp_filter 0
}

# veth NS_A NAME_A NS_B NAME_B: a veth pair created straight into the two namespaces.
veth() {
    ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
    ip -n "$1" link set "$2" up
    ip -n "$3" link set "$4" up
}

# Starts a command in namespace NS in the background, stdin from /dev/null (or IN), stdout
# to OUT and stderr to ERR; sets SPAWNED to its pid (`ip netns exec` execs the command, so
# it is the command's own).
spawn() {
    local ns=$1 out=$2 err=$3 in=/dev/null
    shift 3
    if [[ $1 == --stdin ]]; then in=$2; shift 2; fi
    ip netns exec "$ns" "$@" <"$in" >"$out" 2>"$err" 8>&- 9>&- &
    SPAWNED=$!
}

# Runs a bounded client command (within LIMIT seconds) in the client namespace, its output
# to OUT, waiting for it in a way a signal interrupts (a foreground command would hold
# the traps back until it ends).
client() {
    local limit=$1 out=$2
    shift 2
    spawn "$NS_CL" "$out" "$out.err" timeout -k 2 "$limit" "$PYTHON" "$CLIENT_PY" "$@"
    CHILD_PID=$SPAWNED
    local status=0
    wait "$CHILD_PID" || status=$?
    CHILD_PID=""
    if ((status != 0)); then
        note "client '$1' failed (status $status):"
        sed -e 's/^/    /' "$out.err" | tail -n 20 >&2
        return 1
    fi
}

# Waits for PID's line in FILE (wait_for_line); when it does not come, says why and shows
# the end of LOG.
wait_ready() {
    local file=$1 pattern=$2 pid=$3 what=$4 log=$5
    wait_for_line "$file" "$pattern" "$pid" && return 0
    if [[ -n $EXIT_STATUS ]]; then
        note "$what exited (status $EXIT_STATUS) before '$pattern'; its log ($log):"
    else
        note "$what did not log '$pattern' within ${READY_TIMEOUT}s; its log ($log):"
    fi
    sed -e 's/^/    /' "$log" | tail -n 20 >&2
    return 1
}

# Waits (within READY_TIMEOUT) until FILE has at least N lines matching PATTERN.
wait_count() {
    local file=$1 pattern=$2 n=$3 what=$4 deadline count
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        count=$(grep -c -e "$pattern" "$file" 2>/dev/null || true)
        ((${count:-0} >= n)) && return 0
        ((SECONDS < deadline)) || die "timed out waiting for $what ($count of $n)"
        sleep 0.05
    done
}

# The ECMP route to the VIP over the given instances' next hops.
set_route() {
    local args=() lb
    for lb in "$@"; do args+=(nexthop via "$(front_of "$lb")" weight 1); done
    ip -n "$NS_RT" route replace "$VIP/32" "${args[@]}"
}

# The instances other than $1.
others() {
    local lb
    for lb in "${INSTANCES[@]}"; do [[ $lb == "$1" ]] || printf '%s\n' "$lb"; done
}

# `NAME=PATH@SIZE` for each instance's current log: where a phase's access lines start.
declare -A LB_PID=() LB_LOG=() LB_STARTS=()
log_marks() {
    local lb
    for lb in "${INSTANCES[@]}"; do
        printf -- '--log\n%s=%s@%s\n' "$lb" "${LB_LOG[$lb]}" "$(wc -c <"${LB_LOG[$lb]}" | tr -d ' ')"
    done
}

# ballast's accepted connections, from the instance's admin listener.
accepted() {
    ip netns exec "$(ns_of "$1")" "$PYTHON" "$CLIENT_PY" get http://127.0.0.1:9000/metrics 2>/dev/null |
        sed -n 's/^ballast_connections_accepted_total \([0-9]*\)$/\1/p'
}

# Starts ballast in instance LB's namespace (a new log each start) and waits until it
# listens with the four (or five) backends and its admin listener is up.
start_instance() {
    local lb=$1 n log
    n=$((${LB_STARTS[$lb]:-0} + 1))
    LB_STARTS[$lb]=$n
    log=$RUN_DIR/$lb.$n.log
    LB_LOG[$lb]=$log
    spawn "$(ns_of "$lb")" "$RUN_DIR/$lb.$n.out" "$log" "$BALLAST" --config "$CONFIG"
    LB_PID[$lb]=$SPAWNED
    wait_ready "$log" "listening on $VIP:$PORT, service" "$SPAWNED" "ballast $lb" "$log" || exit 1
    note "$lb: ${READY_LINE#*] } (pid $SPAWNED)"
    wait_ready "$log" 'admin listening on http://' "$SPAWNED" "ballast $lb" "$log" || exit 1
}

start_backend() {
    local addr=$1 out=$RUN_DIR/backend-$1.out
    spawn "$NS_BE" "$out" "$RUN_DIR/backend-$addr.log" \
        "$BACKEND" --listen "$addr:$BACKEND_PORT" --id "$addr"
    BACKEND_PIDS+=("$SPAWNED")
    wait_ready "$out" '^listening on ' "$SPAWNED" "backend $addr" "$RUN_DIR/backend-$addr.log" || exit 1
}

# --- cleanup -------------------------------------------------------------------------------

# Stops every process left in this run's namespaces (SIGKILL: whatever is still there
# after the orderly stop) and deletes the namespaces, their links with them.
remove_namespaces() {
    local prefix=$1 ns pids n
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        [[ $ns == "$prefix"-* ]] || continue
        for ((n = 0; n < 50; n++)); do
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [[ -n $pids ]] || break
            # shellcheck disable=SC2086 # a list of pids
            kill -KILL $pids 2>/dev/null || true
            sleep 0.1
        done
        ip netns del "$ns" 2>/dev/null || true
    done
}

# Namespaces of earlier runs whose script is gone (killed with SIGKILL).
remove_stale_namespaces() {
    local ns owner seen=" "
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        [[ $ns =~ ^ballast-cl([0-9]+)- ]] || continue
        owner=${BASH_REMATCH[1]}
        [[ $seen == *" $owner "* ]] && continue
        seen+="$owner "
        if ! is_ours "$owner" cluster.sh; then
            note "removing the namespaces of an earlier run (pid $owner) that did not clean up"
            remove_namespaces "ballast-cl$owner"
        fi
    done
}

# Like lib.sh's watchdog, for what a SIGKILL of this script would leave: a helper blocked
# on a FIFO only this script writes; at end-of-file without `done` it removes this run's
# namespaces and every process in them.
start_ns_watchdog() {
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
        remove_namespaces "$PREFIX"
    ) </dev/null >/dev/null 2>&1 9>&- &
    WATCHDOG_PID=$!
}

CHILD_PID=""
HOLD_PID=""
DNS_PID=""
BACKEND_PIDS=()
WATCHDOG_PID=""
cleanup() {
    local status=$?
    trap - EXIT
    trap 'FORCE=1' INT TERM HUP
    exec 8>&-
    local lb lbs=()
    for lb in "${INSTANCES[@]}"; do lbs+=("${LB_PID[$lb]:-}"); done
    stop_pids "$CHILD_PID" "$HOLD_PID" "${LOAD_PID:-}"
    stop_pids "${lbs[@]}"
    stop_pids "$DNS_PID" ${BACKEND_PIDS[@]+"${BACKEND_PIDS[@]}"}
    remove_namespaces "$PREFIX"
    stop_watchdog
    rm -f "$RUN_DIR/watchdog.fifo" "$RUN_DIR/hold.fifo" "$RUN_DIR/cluster.pid"
    if [[ -n $(ip netns list 2>/dev/null | awk -v p="$PREFIX-" 'index($1, p) == 1') ]]; then
        note "could not remove every namespace of $PREFIX"
        ((status != 0)) || status=1
    fi
    exit "$status"
}

# --- binaries, configuration ---------------------------------------------------------------

cd "$REPO_ROOT"
find_binaries
export RUST_LOG=info

cat >"$CONFIG" <<EOF
// Written by scripts/cluster.sh: the configuration of every instance.
(
    listen: "$VIP:$PORT",
    algorithm: Maglev,
    workers: 1,
    backends: [(name: "pods", addr: "$NAME:$BACKEND_PORT")],
    admin: "127.0.0.1:9000",
    timeouts: (connect: "1s", grace: "${GRACE}s"),
    dns: (servers: ["$DNS_ADDR:53"], interval: "${INTERVAL}s"),
)
EOF
# (`ballast --check` resolves the name, so it runs in an instance's namespace, below: from
# here its queries would leave for the host's network.)

trap cleanup EXIT
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM
trap 'on_signal SIGHUP 129' HUP
printf '%s\n' "$$" >"$RUN_DIR/cluster.pid"
remove_stale_namespaces
start_ns_watchdog
STARTED_US=$(now_us)

# --- network -------------------------------------------------------------------------------

note "creating namespaces $PREFIX-{router,clients,lb1,lb2,lb3,backends,dns}"
for ns in "$NS_RT" "$NS_CL" "$NS_BE" "$NS_DNS"; do make_ns "$ns"; done
for lb in "${INSTANCES[@]}"; do make_ns "$(ns_of "$lb")"; done

# Clients: 10.0.1.2 and the source addresses, routed through the router.
veth "$NS_CL" rt "$NS_RT" clients
ip -n "$NS_CL" addr add 10.0.1.2/24 dev rt
{
    base=${FIRST_CLIENT%.*}
    first=${FIRST_CLIENT##*.}
    for ((i = 0; i < CLIENTS; i++)); do
        printf 'address add %s.%d/24 dev rt\n' "$base" "$((first + i))"
    done
} >"$RUN_DIR/client-addresses.txt"
ip -n "$NS_CL" -batch "$RUN_DIR/client-addresses.txt"
ip -n "$NS_CL" route add default via 10.0.1.1
ip -n "$NS_RT" addr add 10.0.1.1/24 dev clients

# Backends and DNS on one bridge, in the backends' namespace.
ip -n "$NS_BE" link add br0 type bridge
ip -n "$NS_BE" link set br0 up
for addr in "${BACKENDS[@]}" "$NEW_BACKEND"; do
    ip -n "$NS_BE" addr add "$addr/24" dev br0
done
veth "$NS_DNS" be "$NS_BE" dns
ip -n "$NS_BE" link set dns master br0
ip -n "$NS_DNS" addr add "$DNS_ADDR/24" dev be

# Each instance: the VIP on its loopback, a link to the router, a port on the bridge.
for lb in "${INSTANCES[@]}"; do
    ns=$(ns_of "$lb")
    n=${lb#lb}
    veth "$ns" rt "$NS_RT" "$lb"
    ip -n "$NS_RT" addr add "10.0.1$n.1/24" dev "$lb"
    ip -n "$ns" addr add "$(front_of "$lb")/24" dev rt
    ip -n "$ns" route add default via "10.0.1$n.1"
    ip -n "$ns" addr add "$VIP/32" dev lo
    veth "$ns" be "$NS_BE" "$lb"
    ip -n "$NS_BE" link set "$lb" master br0
    ip -n "$ns" addr add "10.0.3.$n/24" dev be
done

# The router: forwarding, an L4 hash, and the ECMP route.
ns_sysctl "$NS_RT" net.ipv4.ip_forward 1
ns_sysctl "$NS_RT" net.ipv4.fib_multipath_hash_policy 1
set_route "${INSTANCES[@]}"
if ((PINNING)); then
    # Flow affinity: a connection's first packet takes the ECMP route and its conntrack
    # entry remembers the instance (postrouting); its later packets carry that mark
    # (prerouting) and a rule sends them through that instance's own table, whatever the
    # ECMP route says by then.
    map=""
    for lb in "${INSTANCES[@]}"; do
        n=${lb#lb}
        ip -n "$NS_RT" route add "$VIP/32" via "$(front_of "$lb")" table "10$n"
        ip -n "$NS_RT" rule add fwmark "$n" lookup "10$n" priority 100
        map+="${map:+, }\"$lb\" : $n"
    done
    ip netns exec "$NS_RT" nft -f - <<EOF
table ip affinity {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        ip daddr $VIP ct state established,related meta mark set ct mark
    }
    chain postrouting {
        type filter hook postrouting priority mangle; policy accept;
        ip daddr $VIP ct state new ct mark set oifname map { $map }
    }
}
EOF
fi

if ((PINNING)); then affinity="flows pinned by conntrack"; else affinity="plain ECMP, no flow pinning"; fi
printf '== ballast cluster: 3 instances behind an ECMP router, backends by DNS name ==\n\n'
row() {
    printf '%-9s %-25s %s\n' "$@"
}
row clients "$NS_CL" "$CLIENTS source addresses from $FIRST_CLIENT, router 10.0.1.1"
row router "$NS_RT" "$VIP/32 by ECMP over $(front_of lb1), $(front_of lb2), $(front_of lb3) (L4 hash; $affinity)"
row lb1-lb3 "$PREFIX-lb{1,2,3}" "ballast on $VIP:$PORT (the VIP on lo), Maglev, workers 1; 10.0.3.{1,2,3} toward the backends"
row backends "$NS_BE" "ballast-backend on ${BACKENDS[0]}-${BACKENDS[3]##*.}:$BACKEND_PORT, $NEW_BACKEND for (c); bridge br0"
row dns "$NS_DNS" "dnsmasq on $DNS_ADDR:53 answering $NAME; ballast re-resolves it every ${INTERVAL}s"
row logs "" "${RUN_DIR#"$REPO_ROOT"/}"
printf '\n'

# --- processes -----------------------------------------------------------------------------

for addr in "${BACKENDS[@]}"; do printf '%s %s\n' "$addr" "$NAME"; done >"$HOSTS"
spawn "$NS_DNS" "$RUN_DIR/dnsmasq.out" "$RUN_DIR/dnsmasq.log" \
    dnsmasq --keep-in-foreground --log-facility=- --conf-file=/dev/null --user=root --pid-file \
    --no-resolv --no-hosts --addn-hosts="$HOSTS" --local="/${NAME#*.}/" \
    --listen-address="$DNS_ADDR" --bind-interfaces --port=53
DNS_PID=$SPAWNED
wait_ready "$RUN_DIR/dnsmasq.log" "read $HOSTS - ${#BACKENDS[@]} names" "$DNS_PID" dnsmasq "$RUN_DIR/dnsmasq.log" || exit 1
note "dnsmasq: $NAME has ${#BACKENDS[@]} addresses (pid $DNS_PID)"

for addr in "${BACKENDS[@]}"; do start_backend "$addr"; done
note "backends: ${BACKENDS[*]} on port $BACKEND_PORT"

# ballast refuses to start when no backend resolves: check the configuration and the name
# first, as ballast would.
ip netns exec "$(ns_of lb1)" "$BALLAST" --config "$CONFIG" --check >"$RUN_DIR/check.out" 2>&1 ||
    die "ballast --check failed: $(cat "$RUN_DIR/check.out")"
if grep -q 'cannot resolve' "$RUN_DIR/check.out"; then
    die "$NAME does not resolve through $DNS_ADDR: $(grep 'cannot resolve' "$RUN_DIR/check.out")"
fi
for lb in "${INSTANCES[@]}"; do start_instance "$lb"; done

RESULTS=()
FAILED=0
# Runs a check (cluster.py check-...): prints what it says, and keeps its verdict line,
# `(x) PASS: ...` or `(x) FAIL: ...`, for the summary.
check() {
    local out line status=0
    out=$("$PYTHON" "$CLIENT_PY" "$@" 2>&1) || status=$?
    printf '%s\n\n' "$out"
    line=$(printf '%s\n' "$out" | grep -E '^\([a-d]\) (PASS|FAIL): ' | head -n 1 || true)
    [[ -n $line ]] || line="$1 FAIL: did not run to its verdict: $(printf '%s\n' "$out" | tail -n 1)"
    RESULTS+=("$line")
    ((status == 0)) || FAILED=1
}
clients=(--vip "$VIP:$PORT" --first "$FIRST_CLIENT")
instances=$(IFS=,; printf '%s' "${INSTANCES[*]}")

# --- (a) one backend per client address, whatever the instance ------------------------------

PER_SOURCE=6
note "(a) $CLIENTS addresses x $PER_SOURCE connections"
mapfile -t marks < <(log_marks)
client 120 "$RUN_DIR/a.tsv" batch "${clients[@]}" --count "$CLIENTS" --ports 10000 --per-source "$PER_SOURCE" --threads 8 ||
    die "the clients of (a) failed"
check check-spread --instances "$instances" "${marks[@]}" --records "$RUN_DIR/a.tsv" \
    --per-source "$PER_SOURCE" --map-out "$RUN_DIR/a.map"

# --- (b) SIGKILL of one instance ----------------------------------------------------------

# The first next hop: withdrawing it moves part of lb2's hash range to lb3 (hash-threshold
# ECMP), which is what --plain-ecmp shows; withdrawing the middle one would move nothing.
VICTIM=lb1
HELD=30
note "(b) holding $HELD connections, then SIGKILL of $VICTIM"
mkfifo "$RUN_DIR/hold.fifo"
exec 8<>"$RUN_DIR/hold.fifo"
spawn "$NS_CL" "$RUN_DIR/hold.out" "$RUN_DIR/hold.err" --stdin "$RUN_DIR/hold.fifo" \
    "$PYTHON" "$CLIENT_PY" hold "${clients[@]}" --count "$CLIENTS" --ports 20000 --number "$HELD" --max-seconds 60
HOLD_PID=$SPAWNED
wait_ready "$RUN_DIR/hold.out" '^ready' "$HOLD_PID" "the holding client" "$RUN_DIR/hold.out" || exit 1
ss_args=()
for lb in "${INSTANCES[@]}"; do
    ip netns exec "$(ns_of "$lb")" ss -Htn state established "( sport = :$PORT )" >"$RUN_DIR/held-$lb.txt"
    ss_args+=(--ss "$lb=$RUN_DIR/held-$lb.txt")
done
kill -KILL "${LB_PID[$VICTIM]}"
wait "${LB_PID[$VICTIM]}" 2>/dev/null || true
LB_PID[$VICTIM]=""

# probe LABEL: one more request on every held connection.
probe() {
    printf 'probe %s\n' "$1" >&8
    wait_ready "$RUN_DIR/hold.out" "^probed	$1\$" "$HOLD_PID" "the holding client" "$RUN_DIR/hold.err" || exit 1
}
probe after-kill
mapfile -t marks < <(log_marks)
client 60 "$RUN_DIR/b-before.tsv" batch "${clients[@]}" --count "$CLIENTS" --ports 21000 --per-source 1 --threads 8 ||
    die "the clients of (b) failed"
mapfile -t survivors < <(others "$VICTIM")
set_route "${survivors[@]}"
note "(b) route to $VICTIM withdrawn"
probe after-withdraw
client 60 "$RUN_DIR/b-after.tsv" batch "${clients[@]}" --count "$CLIENTS" --ports 22000 --per-source 2 --threads 8 ||
    die "the clients of (b) failed"
printf 'close\n' >&8
wait_ready "$RUN_DIR/hold.out" '^closed' "$HOLD_PID" "the holding client" "$RUN_DIR/hold.err" || exit 1
wait "$HOLD_PID" 2>/dev/null || true
HOLD_PID=""
exec 8>&-
check check-held --instances "$instances" "${marks[@]}" --held "$RUN_DIR/hold.out" "${ss_args[@]}" \
    --killed "$VICTIM" --before "$RUN_DIR/b-before.tsv" --after "$RUN_DIR/b-after.tsv" \
    --map-in "$RUN_DIR/a.map"
start_instance "$VICTIM"
set_route "${INSTANCES[@]}"
note "(b) $VICTIM restarted and its route is back"

# --- (c) a new address of the name ----------------------------------------------------------

note "(c) adding $NEW_BACKEND to $NAME under load"
start_backend "$NEW_BACKEND"
mapfile -t marks < <(log_marks)
rm -f "$RUN_DIR/load.stop"
spawn "$NS_CL" "$RUN_DIR/c.tsv" "$RUN_DIR/c.err" timeout -k 2 40 "$PYTHON" "$CLIENT_PY" load \
    "${clients[@]}" --count "$CLIENTS" --ports 30000 --short 4 --rate 150 --stop-file "$RUN_DIR/load.stop" --max-seconds 30
LOAD_PID=$SPAWNED
wait_count "$RUN_DIR/c.tsv" '	ok	' 100 "the load of (c) to start"
T0=$(now_us)
printf '%s %s\n' "$NEW_BACKEND" "$NAME" >>"$HOSTS"
kill -HUP "$DNS_PID"
wait_ready "$RUN_DIR/dnsmasq.log" "read $HOSTS - $((${#BACKENDS[@]} + 1)) names" "$DNS_PID" dnsmasq "$RUN_DIR/dnsmasq.log" || exit 1
# When each instance logs the new address (polled side by side, every 50 ms).
declare -A joined=()
joined_args=()
deadline=$((SECONDS + READY_TIMEOUT))
while ((${#joined[@]} < ${#INSTANCES[@]})); do
    for lb in "${INSTANCES[@]}"; do
        [[ -z ${joined[$lb]:-} ]] || continue
        if grep -q "joined: $NEW_BACKEND" "${LB_LOG[$lb]}"; then
            joined[$lb]=$(hundredths $(($(now_us) - T0)))
            joined_args+=(--joined "$lb=${joined[$lb]}")
            note "(c) $lb logged $NEW_BACKEND joining ${joined[$lb]} s after the SIGHUP"
        fi
    done
    ((SECONDS < deadline)) || die "not every instance logged $NEW_BACKEND joining within ${READY_TIMEOUT}s"
    sleep 0.05
done
# Two intervals for every instance to follow, then two seconds to measure the shares.
until_us=$((T0 + (2 * INTERVAL + 2) * 1000000))
for ((n = 0; n < 200; n++)); do
    (($(now_us) < until_us)) || break
    sleep 0.05
done
: >"$RUN_DIR/load.stop"
wait "$LOAD_PID" || die "the load of (c) failed: $(tail -n 5 "$RUN_DIR/c.err")"
LOAD_PID=""
check check-join --instances "$instances" "${marks[@]}" --records "$RUN_DIR/c.tsv" \
    --t0 "$(seconds "$T0")" --interval "$INTERVAL" --new "$NEW_BACKEND" \
    --backends $((${#BACKENDS[@]} + 1)) --map-in "$RUN_DIR/a.map" "${joined_args[@]}"

# --- (d) rolling restart under load -----------------------------------------------------------

note "(d) rolling restart under load"
mapfile -t marks < <(log_marks)
rm -f "$RUN_DIR/load.stop"
spawn "$NS_CL" "$RUN_DIR/d.tsv" "$RUN_DIR/d.err" timeout -k 2 100 "$PYTHON" "$CLIENT_PY" load \
    "${clients[@]}" --count "$CLIENTS" --ports 40000 --short 3 --rate 90 --long 12 --wait "$LONG_WAIT" \
    --stop-file "$RUN_DIR/load.stop" --max-seconds 90
LOAD_PID=$SPAWNED
wait_count "$RUN_DIR/d.tsv" '	long	' 12 "long connections of (d) to finish"
drained=()
for lb in "${INSTANCES[@]}"; do
    mapfile -t rest < <(others "$lb")
    set_route "${rest[@]}"
    # Wait until no new connection reaches it: its accepted count stays put for 300 ms.
    last=$(accepted "$lb")
    quiet=0
    for ((n = 0; n < 30 && quiet < 3; n++)); do
        sleep 0.1
        now=$(accepted "$lb")
        if [[ $now == "$last" ]]; then quiet=$((quiet + 1)); else quiet=0; last=$now; fi
    done
    ((quiet >= 3)) || die "$lb still accepts connections 3 s after its route was withdrawn"
    term_us=$(now_us)
    kill -TERM "${LB_PID[$lb]}"
    status=0
    for ((n = 0; n < (GRACE + STOP_TIMEOUT) * 20; n++)); do
        alive "${LB_PID[$lb]}" || break
        sleep 0.05
    done
    alive "${LB_PID[$lb]}" && die "$lb did not stop within $((GRACE + STOP_TIMEOUT)) s of SIGTERM"
    wait "${LB_PID[$lb]}" 2>/dev/null || status=$?
    ((status == 0)) || die "$lb exited with status $status after SIGTERM"
    took=$(hundredths $(($(now_us) - term_us)))
    open=$(sed -n 's/.*shutting down: waiting up to .* for \([0-9]*\) open connection.*/\1/p' "${LB_LOG[$lb]}" | tail -n 1)
    drained+=("$lb=${open:-0}=$took")
    note "(d) $lb: route withdrawn, SIGTERM, drained ${open:-0} open connection(s), exited 0 after $took s"
    start_instance "$lb"
    marks+=(--log "$lb=${LB_LOG[$lb]}@0")
    set_route "${INSTANCES[@]}"
done
# Some traffic through every restarted instance, then stop the load.
drain_args=()
for entry in "${drained[@]}"; do
    lb=${entry%%=*}
    wait_count "${LB_LOG[$lb]}" 'ballast::access' 5 "connections through the restarted $lb"
    drain_args+=(--drain "$entry=$(grep -c 'ballast::access' "${LB_LOG[$lb]}" || true)")
done
: >"$RUN_DIR/load.stop"
wait "$LOAD_PID" || die "the load of (d) failed: $(tail -n 5 "$RUN_DIR/d.err")"
LOAD_PID=""
check check-rolling --instances "$instances" "${marks[@]}" --records "$RUN_DIR/d.tsv" \
    --wait "$LONG_WAIT" "${drain_args[@]}"

# --- summary -------------------------------------------------------------------------------

took=$(hundredths $(($(now_us) - STARTED_US)))
printf '== summary ==\n'
printf '%s\n' "${RESULTS[@]}"
passed=0
for line in "${RESULTS[@]}"; do [[ $line == *" PASS: "* ]] && passed=$((passed + 1)); done
if ((FAILED == 0 && passed == 4)); then
    printf '\nverdict: PASS (4 of 4 checks) in %s s\n' "$took"
else
    printf '\nverdict: FAIL (%d of 4 checks passed) in %s s\n' "$passed" "$took"
    exit 1
fi
