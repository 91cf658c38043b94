#!/usr/bin/env python3
"""The clients and the checks of scripts/cluster.sh (Python 3 standard library only).

cluster.sh runs the client commands inside its client namespace and the checks after each
phase. Every client connection binds one of the client namespace's source addresses (and a
source port of its own: each client process takes them in order from --ports) and sends
`GET /`; the page names the backend that
answered (`This is from ID`, where ID is the backend's address). Each connection is
written as one tab-separated record:

    SOURCE  PORT  BACKEND  ok|fail  START  END  KIND  DETAIL

START and END are Unix times in seconds; BACKEND is `-` when there was none; KIND is
`short`, `long` or `batch`. The checks map a record to the ballast instance that relayed it
through the instances' access logs (`default: SOURCE:PORT -> pods@ADDR:PORT (...)`): only an
instance that relayed a connection logs its source port.

Client commands:
  batch   N connections per source address, some at a time; prints the records
  hold    opens keep-alive connections and holds them; on the command `probe LABEL` read
          from stdin it sends one more request on each, on `close` it closes them
  load    short connections (and long ones that wait before asking) until a stop file
          appears; prints the records
  get     prints the body of an HTTP GET (the admin listener's /metrics)
Checks (exit 0 on PASS, 1 on FAIL; the last line printed is the summary):
  check-spread, check-held, check-join, check-rolling
"""

import argparse
import collections
import errno
import ipaddress
import os
import re
import socket
import sys
import threading
import time
import urllib.request

PAGE_ID = re.compile(rb"This is from ([^<\s]+)")
ACCESS = re.compile(
    r"ballast::access\] [^:]+: (\d+\.\d+\.\d+\.\d+):(\d+) -> (\S+) "
)
TIMEOUT = 3.0  # seconds for a connect and for a whole response


# --- clients ----------------------------------------------------------------------------


def sources(first, count):
    """`count` consecutive IPv4 addresses from `first`."""
    base = ipaddress.IPv4Address(first)
    return [str(base + i) for i in range(count)]


def parse_vip(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


class Ports:
    """Source ports handed out in order from `first`, so that no two connections of one
    client process share a (source address, port) pair, and the checks can tell every
    connection apart in the access logs (the kernel's choice of port repeats now and then).
    cluster.sh gives each client process a range of its own."""

    lock = threading.Lock()
    next = 0
    last = 65535

    @classmethod
    def start(cls, first):
        cls.next = first

    @classmethod
    def take(cls):
        with cls.lock:
            port = cls.next
            cls.next = cls.next + 1 if cls.next < cls.last else 1024
            return port


def connect(source, vip):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    for attempt in range(100):
        try:
            sock.bind((source, Ports.take()))
            break
        except OSError as error:
            if error.errno != errno.EADDRINUSE or attempt == 99:
                sock.close()
                raise
    try:
        sock.connect(vip)
    except OSError:
        sock.close()
        raise
    return sock


def request(vip, close):
    connection = "close" if close else "keep-alive"
    return f"GET / HTTP/1.1\r\nHost: {vip[0]}\r\nConnection: {connection}\r\n\r\n".encode()


def read_to_eof(sock):
    deadline = time.monotonic() + TIMEOUT
    data = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        if len(data) > 1 << 20:
            raise OSError("response larger than 1 MiB")


def read_response(sock):
    """One response with a Content-Length, leaving the connection open."""
    deadline = time.monotonic() + TIMEOUT
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode("latin-1")
            match = re.search(r"(?im)^content-length:\s*(\d+)", head)
            if not match:
                raise OSError("response without Content-Length")
            if len(data) - end - 4 >= int(match.group(1)):
                return data
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed before a whole response")
        data += chunk


def backend_of(response):
    if not response.startswith(b"HTTP/1.1 200"):
        raise OSError("not a 200 response: %r" % response[:40])
    match = PAGE_ID.search(response)
    if not match:
        raise OSError("no `This is from` in the page")
    return match.group(1).decode()


def describe(error):
    if isinstance(error, socket.timeout):
        return "timeout"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.replace("\t", " ").replace("\n", " ")


class Records:
    """Records written as they come, one line each, from many threads."""

    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()
        self.count = collections.Counter()

    def write(self, source, port, backend, ok, start, end, kind, detail=""):
        line = "\t".join(
            [
                source,
                str(port),
                backend or "-",
                "ok" if ok else "fail",
                f"{start:.6f}",
                f"{end:.6f}",
                kind,
                detail or "-",
            ]
        )
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()
            self.count["ok" if ok else "fail"] += 1


def one_connection(records, source, vip, kind, wait=0.0):
    """Connect, (wait,) ask for / with `Connection: close`, read to the end; one record."""
    start = time.time()
    port = 0
    try:
        sock = connect(source, vip)
        port = sock.getsockname()[1]
        try:
            if wait:
                time.sleep(wait)
            sock.sendall(request(vip, close=True))
            backend = backend_of(read_to_eof(sock))
        finally:
            sock.close()
        records.write(source, port, backend, True, start, time.time(), kind)
    except OSError as error:
        records.write(source, port, None, False, start, time.time(), kind, describe(error))


def cmd_batch(args):
    vip = parse_vip(args.vip)
    todo = [s for _ in range(args.per_source) for s in sources(args.first, args.count)]
    records = Records(sys.stdout)
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                source = todo.pop(0)
            one_connection(records, source, vip, "batch")

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


def cmd_load(args):
    """Short connections at about `rate` a second over `short` threads, and `long` threads
    each holding one connection `wait` seconds before asking, until the stop file exists
    (or `max_seconds` pass)."""
    vip = parse_vip(args.vip)
    addrs = sources(args.first, args.count)
    records = Records(sys.stdout)
    end = time.monotonic() + args.max_seconds
    stop = threading.Event()

    def running():
        if stop.is_set():
            return False
        if os.path.exists(args.stop_file) or time.monotonic() >= end:
            stop.set()
            return False
        return True

    def short(index):
        period = args.short / args.rate if args.rate > 0 else 0
        n = index
        next_at = time.monotonic()
        while running():
            one_connection(records, addrs[n % len(addrs)], vip, "short")
            n += args.short
            next_at += period
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()

    def long(index):
        n = index * 7 + 3
        while running():
            one_connection(records, addrs[n % len(addrs)], vip, "long", wait=args.wait)
            n += args.long * 7

    threads = [threading.Thread(target=short, args=(i,)) for i in range(args.short)]
    threads += [threading.Thread(target=long, args=(i,)) for i in range(args.long)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"# done: {records.count['ok']} ok, {records.count['fail']} failed", flush=True)
    return 0


def cmd_hold(args):
    """Holds `number` keep-alive connections (one request each) and obeys stdin."""
    vip = parse_vip(args.vip)
    addrs = sources(args.first, args.count)
    held = []  # [source, port, socket or None]
    deadline = time.monotonic() + args.max_seconds

    def bounded():
        # A stuck caller must not keep the connections (and this process) forever.
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        print("# hold: max seconds reached, exiting", flush=True)
        os._exit(1)

    threading.Thread(target=bounded, daemon=True).start()
    for i in range(args.number):
        source = addrs[(i * 37) % len(addrs)]
        try:
            sock = connect(source, vip)
            sock.sendall(request(vip, close=False))
            backend = backend_of(read_response(sock))
        except OSError as error:
            print(f"hold-failed\t{source}\t{describe(error)}", flush=True)
            return 1
        port = sock.getsockname()[1]
        held.append([source, port, sock])
        print(f"held\t{source}\t{port}\t{backend}", flush=True)
    print(f"ready\t{len(held)}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "probe":
            label = words[1] if len(words) > 1 else "-"
            for entry in held:
                source, port, sock = entry
                if sock is None:
                    print(f"probe\t{label}\t{source}\t{port}\tfail\tlost before", flush=True)
                    continue
                try:
                    sock.sendall(request(vip, close=False))
                    backend = backend_of(read_response(sock))
                    print(f"probe\t{label}\t{source}\t{port}\tok\t{backend}", flush=True)
                except OSError as error:
                    sock.close()
                    entry[2] = None
                    print(
                        f"probe\t{label}\t{source}\t{port}\tfail\t{describe(error)}",
                        flush=True,
                    )
            print(f"probed\t{label}", flush=True)
        elif words[0] == "close":
            break
    for _, _, sock in held:
        if sock is not None:
            sock.close()
    print("closed", flush=True)
    return 0


def cmd_get(args):
    with urllib.request.urlopen(args.url, timeout=TIMEOUT) as response:
        sys.stdout.write(response.read().decode())
    return 0


# --- checks -----------------------------------------------------------------------------


def read_records(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            source, port, backend, status, start, end, kind, detail = line.rstrip(
                "\n"
            ).split("\t")
            out.append(
                dict(
                    source=source,
                    port=int(port),
                    backend=None if backend == "-" else backend,
                    ok=status == "ok",
                    start=float(start),
                    end=float(end),
                    kind=kind,
                    detail=detail,
                )
            )
    return out


def read_logs(specs):
    """`NAME=PATH@OFFSET` (a log from that byte on): {(source, port): [(NAME, backend)]}."""
    seen = collections.defaultdict(list)
    for spec in specs or []:
        name, rest = spec.split("=", 1)
        path, offset = rest.rsplit("@", 1)
        with open(path, "rb") as f:
            f.seek(int(offset))
            text = f.read().decode("utf-8", "replace")
        for match in ACCESS.finditer(text):
            backend = match.group(3)
            # `pods@10.0.3.12:8080`: the address the page also names.
            if "@" in backend:
                backend = backend.split("@", 1)[1].rsplit(":", 1)[0]
            seen[(match.group(1), int(match.group(2)))].append((name, backend))
    return seen


def read_logs_for(records, specs, wait=3.0):
    """read_logs, read again (for up to `wait` seconds) until every successful record's
    connection is in some log: ballast writes an access line just after the connection
    closes, which can be a moment after the client has seen the end."""
    deadline = time.monotonic() + wait
    while True:
        logs = read_logs(specs)
        missing = [r for r in records if r["ok"] and (r["source"], r["port"]) not in logs]
        if not missing or time.monotonic() >= deadline:
            return logs
        time.sleep(0.1)


def instance_of(record, logs):
    """The one instance that logged this record's connection (None if none or several)."""
    entries = logs.get((record["source"], record["port"]), [])
    names = {name for name, _ in entries}
    return names.pop() if len(names) == 1 else None


def counted(counter, names):
    return ", ".join(f"{n} {counter.get(n, 0)}" for n in names)


def read_map(path):
    mapping = {}
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                source, backend = line.split()
                mapping[source] = backend
    return mapping


def verdict(label, ok, headline, details, problems):
    """Prints `(x) PASS: headline` (or FAIL), the figures indented below it, then what
    went wrong; returns the exit status."""
    print(f"{label} {'PASS' if ok else 'FAIL'}: {headline}")
    for line in details:
        print(f"    {line}")
    for line in problems:
        print(f"    ! {line}")
    return 0 if ok else 1


def cmd_check_spread(args):
    """(a): every address reached one backend whatever instance its flows landed on."""
    records = read_records(args.records)
    logs = read_logs_for(records, args.log)
    names = args.instances.split(",")
    failed = [r for r in records if not r["ok"]]
    by_source = collections.defaultdict(set)
    instances_of = collections.defaultdict(set)
    per_instance = collections.Counter()
    log_mismatch = 0
    unmapped = 0
    for r in records:
        if not r["ok"]:
            continue
        by_source[r["source"]].add(r["backend"])
        entries = logs.get((r["source"], r["port"]), [])
        if any(b != r["backend"] for _, b in entries):
            log_mismatch += 1
        name = instance_of(r, logs)
        if name is None:
            unmapped += 1
            continue
        per_instance[name] += 1
        instances_of[r["source"]].add(name)
    split = sorted(s for s, b in by_source.items() if len(b) > 1)
    over_two = sum(1 for s in instances_of.values() if len(s) >= 2)
    over_all = sum(1 for s in instances_of.values() if len(s) == len(names))
    backends = collections.Counter(next(iter(b)) for b in by_source.values() if len(b) == 1)
    if args.map_out:
        with open(args.map_out, "w", encoding="utf-8") as f:
            for source in sorted(by_source, key=ipaddress.IPv4Address):
                if len(by_source[source]) == 1:
                    f.write(f"{source} {next(iter(by_source[source]))}\n")
    sources_n = len(by_source)
    mapped = sum(per_instance.values())
    problems = [f"failed: {f['source']}:{f['port']}: {f['detail']}" for f in failed[:5]]
    if len(failed) > 5:
        problems.append(f"... {len(failed)} failed in all")
    problems += [f"{s} reached several backends: {', '.join(sorted(by_source[s]))}" for s in split]
    if log_mismatch:
        problems.append(f"{log_mismatch} access lines name another backend than the page")
    if unmapped:
        problems.append(f"{unmapped} connections in no access log (or in several)")
    if not all(per_instance.get(n, 0) >= mapped / len(names) / 2 for n in names):
        problems.append("ECMP left an instance with less than half its share of the flows")
    if over_two < 0.8 * sources_n:
        problems.append("too few addresses had flows on several instances to show anything")
    ok = not problems
    return verdict(
        "(a)",
        ok,
        f"each of {sources_n} client addresses reached one backend, whichever of the "
        f"{len(names)} instances its flows landed on ({len(records) - len(failed)}/"
        f"{len(records)} connections answered)",
        [
            f"connections: {args.per_source} per address, each from a source port of its own; "
            f"{len(records) - len(failed)}/{len(records)} answered",
            f"flows per instance (ECMP, L4 hash): {counted(per_instance, names)}",
            f"addresses whose flows landed on 2+ instances: {over_two}/{sources_n} "
            f"(on all {len(names)}: {over_all})",
            f"addresses that reached more than one backend: {len(split)}",
            f"addresses per backend (Maglev): {counted(backends, sorted(backends))}",
        ],
        problems,
    )


def read_held(path):
    held, probes = [], collections.defaultdict(dict)
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.rstrip("\n").split("\t")
            if words[0] == "held":
                held.append((words[1], int(words[2])))
            elif words[0] == "probe":
                probes[words[1]][(words[2], int(words[3]))] = (words[4] == "ok", words[5])
    return held, probes


def read_ss(specs):
    """`NAME=PATH`: `ss -Htn` output of an instance; {(source, port): NAME}."""
    where = {}
    for spec in specs:
        name, path = spec.split("=", 1)
        with open(path, encoding="utf-8") as f:
            for line in f:
                words = line.split()
                if len(words) < 4:
                    continue
                host, port = words[-1].rsplit(":", 1)
                where[(host, int(port))] = name
    return where


def cmd_check_held(args):
    """(b): killing one instance loses only the connections it held."""
    held, probes = read_held(args.held)
    where = read_ss(args.ss)
    names = args.instances.split(",")
    survivors = [n for n in names if n != args.killed]
    on = collections.Counter(where.get(h) for h in held)
    killed = [h for h in held if where.get(h) == args.killed]
    others = [h for h in held if where.get(h) not in (None, args.killed)]
    unknown = [h for h in held if h not in where]
    problems = []
    answered = {}
    for label in ("after-kill", "after-withdraw"):
        results = probes.get(label, {})
        answered[label] = sum(1 for h in others if results.get(h, (False, ""))[0])
        if answered[label] < len(others):
            problems.append(
                f"{len(others) - answered[label]} held connection(s) on "
                f"{' and '.join(survivors)} failed {label}"
            )
        alive_on_killed = [h for h in killed if results.get(h, (False, ""))[0]]
        if alive_on_killed:
            problems.append(
                f"{len(alive_on_killed)} connection(s) of the killed instance answered {label}"
            )
    before = read_records(args.before)
    refused = sum(1 for r in before if not r["ok"])
    after = read_records(args.after)
    failed_after = [r for r in after if not r["ok"]]
    logs = read_logs_for(after, args.log)
    per_instance = collections.Counter(instance_of(r, logs) for r in after if r["ok"])
    mapping = read_map(args.map_in)
    moved = [r for r in after if r["ok"] and mapping.get(r["source"]) not in (None, r["backend"])]
    if unknown:
        problems.append(f"{len(unknown)} held connection(s) not found by ss")
    if not killed:
        problems.append(f"no held connection was on {args.killed}")
    if failed_after:
        problems.append(f"{len(failed_after)} new connection(s) failed after the withdrawal")
    if per_instance.get(args.killed):
        problems.append(f"{per_instance[args.killed]} new connection(s) reached {args.killed}")
    if moved:
        problems.append(f"{len(moved)} new connection(s) reached another backend than in (a)")
    ok_after = len(after) - len(failed_after)
    return verdict(
        "(b)",
        not problems,
        f"SIGKILL of {args.killed} lost its {len(killed)} held connections"
        + (
            " and no other"
            if min(answered.values()) == len(others)
            else f", and {len(others) - min(answered.values())} more"
        )
        + f": {min(answered.values())}/{len(others)} on {' and '.join(survivors)} kept "
        f"working; after the route withdrawal {ok_after}/{len(after)} new connections succeeded",
        [
            f"held keep-alive connections: {len(held)} ({counted(on, names)})",
            f"after SIGKILL of {args.killed}: {len(killed)} of its {len(killed)} failed; "
            f"{answered['after-kill']}/{len(others)} on {' and '.join(survivors)} answered "
            f"another request",
            f"new connections while its route stayed: {refused}/{len(before)} refused "
            f"(the flows hashed to {args.killed})",
            f"after its route was withdrawn: {answered['after-withdraw']}/{len(others)} held "
            f"ones answered again; {ok_after}/{len(after)} new ones succeeded "
            f"({counted(per_instance, survivors)}, {per_instance.get(args.killed, 0)} on "
            f"{args.killed}), {ok_after - len(moved)} of them on the address's backend from (a)",
        ],
        problems,
    )


def cmd_check_join(args):
    """(c): a new address of the name gets its share on every instance within 2 intervals."""
    records = read_records(args.records)
    logs = read_logs_for(records, args.log)
    names = args.instances.split(",")
    t0 = args.t0
    settled = t0 + 2 * args.interval
    failed = [r for r in records if not r["ok"]]
    first = {}
    total = collections.Counter()
    hits = collections.Counter()
    after = collections.defaultdict(dict)  # instance -> source -> backends
    for r in sorted(records, key=lambda r: r["start"]):
        if not r["ok"]:
            continue
        name = instance_of(r, logs)
        if name is None:
            continue
        if r["backend"] == args.new and r["start"] >= t0 and name not in first:
            first[name] = r["start"] - t0
        if r["start"] >= settled:
            total[name] += 1
            hits[name] += r["backend"] == args.new
            after[name].setdefault(r["source"], set()).add(r["backend"])
    agree = True
    union = {}
    for name in names:
        for source, backends in after[name].items():
            if len(backends) > 1:
                agree = False
            for b in backends:
                if union.setdefault(source, b) != b:
                    agree = False
    mapping = read_map(args.map_in)
    to_new = sorted(s for s, b in union.items() if b == args.new)
    elsewhere = sorted(
        s for s, b in union.items() if b != args.new and mapping.get(s) not in (None, b)
    )
    limit = 2 * args.interval
    problems = []
    for name in names:
        if name not in first:
            problems.append(f"no connection reached {args.new} through {name}")
        elif first[name] > limit:
            problems.append(
                f"{name} first sent a connection to {args.new} after {first[name]:.2f} s"
            )
        # A wide band: each instance sees its own sample of the addresses.
        if total[name] and not 0.05 <= hits[name] / total[name] <= 0.5:
            problems.append(f"{name}'s share of {args.new} is {hits[name] / total[name]:.1%}")
        if not total[name]:
            problems.append(f"{name} relayed nothing after {limit:g} s")
    overall = sum(hits.values()) / max(1, sum(total.values()))
    if not 0.5 / args.backends <= overall <= 2.0 / args.backends:
        problems.append(f"the share of {args.new} over all instances is {overall:.1%}")
    if failed:
        problems.append(f"{len(failed)} connection(s) failed")
    if not agree:
        problems.append("the instances disagree on some address's backend")
    if len(elsewhere) > max(1, len(union) // 20):
        problems.append(f"{len(elsewhere)} addresses moved to an old backend")
    times = ", ".join(f"{n} {first[n]:.2f} s" if n in first else f"{n} never" for n in names)
    shares = ", ".join(
        f"{n} {hits[n]}/{total[n]} ({hits[n] / total[n]:.0%})" if total[n] else f"{n} -"
        for n in names
    )
    slowest = max(first.values(), default=float("nan"))
    return verdict(
        "(c)",
        not problems,
        f"{args.new}, added to the name, got {overall:.0%} of new connections, through every "
        f"instance within {slowest:.2f} s (limit {limit:g} s: two DNS intervals)",
        [
            "each instance's log line for the new address, after the DNS change: "
            + ", ".join(f"{n} {t} s" for n, t in sorted(j.split("=") for j in args.joined or [])),
            f"first connection to {args.new} after the DNS change: {times}",
            f"its share of connections from {limit:g} s on: {shares}; {overall:.0%} overall, "
            f"for 1/{args.backends} of the Maglev table",
            f"addresses that moved to it: {len(to_new)} of {len(union)}, "
            + ("every instance agreeing" if agree else "the instances DISAGREEING")
            + f"; moved between old backends: {len(elsewhere)}",
            f"connections: {len(records) - len(failed)}/{len(records)} succeeded",
        ],
        problems,
    )


def cmd_check_rolling(args):
    """(d): a rolling restart loses no connection that finishes within the grace period."""
    records = read_records(args.records)
    logs = read_logs_for(records, args.log)
    names = args.instances.split(",")
    failed = [r for r in records if not r["ok"]]
    kinds = collections.Counter(r["kind"] for r in records)
    per_instance = collections.Counter(instance_of(r, logs) for r in records if r["ok"])
    longest = max((r["end"] - r["start"] for r in records if r["ok"]), default=0.0)
    problems = [
        f"failed: {f['kind']} {f['source']}:{f['port']} at +{f['start'] - records[0]['start']:.2f} s: "
        f"{f['detail']}"
        for f in failed[:10]
    ]
    if len(failed) > 10:
        problems.append(f"... {len(failed)} failed in all")
    if kinds["long"] == 0 or kinds["short"] == 0:
        problems.append("the load lacked short or long connections")
    drains = []
    for entry in args.drain or []:
        name, open_, took, served = entry.split("=")
        drains.append(f"{name} {open_} in {float(took):.2f} s")
        if int(served) == 0:
            problems.append(f"{name} relayed nothing after its restart")
    return verdict(
        "(d)",
        not problems,
        f"rolling restart of all {len(names)} instances under load: {len(failed)} of "
        f"{len(records)} connections failed ({kinds['long']} of them lasting "
        f"~{args.wait:g} s)",
        [
            f"load: {kinds['short']} short connections and {kinds['long']} that wait "
            f"{args.wait:g} s before asking (longest {longest:.2f} s)",
            "each instance in turn: route withdrawn, SIGTERM, drain, restart, route back",
            f"open connections drained at SIGTERM, and how long the drain took: "
            f"{'; '.join(drains)}",
            f"connections per instance over the run: {counted(per_instance, names)}",
        ],
        problems,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def clients(p):
        p.add_argument("--vip", required=True, help="IP:PORT to connect to")
        p.add_argument("--first", required=True, help="first source address")
        p.add_argument("--count", type=int, required=True, help="number of source addresses")
        p.add_argument("--ports", type=int, required=True, help="first source port")

    p = sub.add_parser("batch")
    clients(p)
    p.add_argument("--per-source", type=int, default=1)
    p.add_argument("--threads", type=int, default=8)
    p.set_defaults(run=cmd_batch)

    p = sub.add_parser("load")
    clients(p)
    p.add_argument("--short", type=int, default=2, help="threads of short connections")
    p.add_argument("--rate", type=float, default=100, help="short connections a second")
    p.add_argument("--long", type=int, default=0, help="threads of long connections")
    p.add_argument("--wait", type=float, default=1.0, help="seconds a long one waits")
    p.add_argument("--stop-file", required=True)
    p.add_argument("--max-seconds", type=float, default=60)
    p.set_defaults(run=cmd_load)

    p = sub.add_parser("hold")
    clients(p)
    p.add_argument("--number", type=int, default=30)
    p.add_argument("--max-seconds", type=float, default=60)
    p.set_defaults(run=cmd_hold)

    p = sub.add_parser("get")
    p.add_argument("url")
    p.set_defaults(run=cmd_get)

    def checks(p):
        p.add_argument("--instances", required=True, help="instance names, comma-separated")
        p.add_argument("--log", action="append", help="NAME=PATH@OFFSET (repeatable)")

    p = sub.add_parser("check-spread")
    checks(p)
    p.add_argument("--records", required=True)
    p.add_argument("--per-source", type=int, required=True)
    p.add_argument("--map-out")
    p.set_defaults(run=cmd_check_spread)

    p = sub.add_parser("check-held")
    checks(p)
    p.add_argument("--held", required=True)
    p.add_argument("--ss", action="append", required=True, help="NAME=PATH")
    p.add_argument("--killed", required=True)
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--map-in")
    p.set_defaults(run=cmd_check_held)

    p = sub.add_parser("check-join")
    checks(p)
    p.add_argument("--records", required=True)
    p.add_argument("--t0", type=float, required=True)
    p.add_argument("--interval", type=float, required=True)
    p.add_argument("--new", required=True)
    p.add_argument("--backends", type=int, required=True)
    p.add_argument("--map-in")
    p.add_argument("--joined", action="append", help="NAME=SECONDS: when it logged the join")
    p.set_defaults(run=cmd_check_join)

    p = sub.add_parser("check-rolling")
    checks(p)
    p.add_argument("--records", required=True)
    p.add_argument("--wait", type=float, required=True)
    p.add_argument("--drain", action="append", help="NAME=OPEN=SECONDS=SERVED (repeatable)")
    p.set_defaults(run=cmd_check_rolling)

    args = parser.parse_args()
    if getattr(args, "ports", None):
        Ports.start(args.ports)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
