#!/usr/bin/env python3
"""Opens N keep-alive HTTP connections, does one request on each and holds them open.

    scripts/idle_conns.py --port PORT [-n N] [--host 127.0.0.1] [--path /]
                          [--concurrency C] [--timeout SECONDS] [--hold SECONDS] [--stdin]

Used by scripts/bench.sh to measure a proxy's memory per idle connection. Each connection
sends `GET PATH HTTP/1.1` and reads the whole response (Content-Length framing), then stays
open. At most C connections are being set up at a time, so a listen backlog never
overflows. Once all N have had their response it prints `ready N` on stdout and holds them
until SIGTERM, SIGINT or SIGHUP (or, with --stdin, end of file on stdin), or until --hold
seconds have passed. Then it closes them all, prints `closed held N lost K` (K: connections
the peer closed while they were held) and exits 0.

Exits 1 with a message on stderr when a connection fails or the set-up takes longer than
--timeout seconds. Python 3 standard library only.
"""

import argparse
import asyncio
import os
import resource
import signal
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", "--connections", type=int, default=4000)
    p.add_argument("--path", default="/")
    p.add_argument("--concurrency", type=int, default=200,
                   help="connections being set up at once (default: 200)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds allowed to set up all connections (default: 60)")
    p.add_argument("--hold", type=float, default=300.0,
                   help="longest time to hold them, in seconds (default: 300)")
    p.add_argument("--stdin", action="store_true",
                   help="also stop holding at end of file on stdin")
    args = p.parse_args()
    if args.connections < 1 or args.concurrency < 1:
        p.error("-n and --concurrency must be at least 1")
    return args


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
    if target == resource.RLIM_INFINITY:
        target = needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        sys.exit(f"idle_conns.py: needs {needed} file descriptors but the limit is {soft}")


async def open_one(args, request, gate):
    async with gate:
        reader, writer = await asyncio.open_connection(args.host, args.port)
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ", 2)
            if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
                raise ValueError(f"bad status line {lines[0]!r}")
            length = None
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "transfer-encoding":
                    raise ValueError("chunked responses are not supported")
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if length is None:
                raise ValueError("response without Content-Length")
            if close:
                raise ValueError("the server closes the connection (Connection: close)")
            await reader.readexactly(length)
            return reader, writer
        except BaseException:
            writer.close()
            raise


async def main():
    args = parse_args()
    raise_fd_limit(args.connections + 64)
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "User-Agent: idle_conns.py\r\n\r\n"
    ).encode()
    gate = asyncio.Semaphore(args.concurrency)
    tasks = [asyncio.ensure_future(open_one(args, request, gate)) for _ in range(args.connections)]
    done, pending = await asyncio.wait(tasks, timeout=args.timeout)
    failures = [t.exception() for t in done if t.exception() is not None]
    if pending or failures:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            if t.exception() is None:
                t.result()[1].close()
        if failures:
            first = failures[0]
            print(f"idle_conns.py: {len(failures)} of {args.connections} connections to "
                  f"{args.host}:{args.port} failed; first: {type(first).__name__}: {first}",
                  file=sys.stderr)
        if pending:
            print(f"idle_conns.py: {len(pending)} of {args.connections} connections were not "
                  f"set up within {args.timeout:g}s", file=sys.stderr)
        return 1
    conns = [t.result() for t in tasks]
    print(f"ready {len(conns)}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    if args.stdin:
        def on_stdin():
            try:
                data = os.read(sys.stdin.fileno(), 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(sys.stdin.fileno())
                stop.set()
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.hold)
    except asyncio.TimeoutError:
        print(f"idle_conns.py: held for --hold {args.hold:g}s, closing", file=sys.stderr)

    lost = sum(1 for reader, _ in conns if reader.at_eof())
    for _, writer in conns:
        writer.close()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True), 10)
    except asyncio.TimeoutError:
        pass
    print(f"closed held {len(conns)} lost {lost}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
