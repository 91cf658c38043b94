//! The benchmark's floor: the leanest user-space TCP relay we know how to write, so that
//! `scripts/bench.sh` can show how much of a proxy's cost is the kernel's and how much is the
//! proxy's own. It has none of ballast's features: no timeouts, limits, health, statistics,
//! reload or graceful shutdown; a failed socket just drops its pair. Not for production.
//!
//! Usage: `floor_relay LISTEN BACKEND[,BACKEND...] [THREADS]`, e.g.
//! `floor_relay 127.0.0.1:9000 127.0.0.1:9001,127.0.0.1:9002`; it prints `listening on ADDR`
//! once it accepts (port 0 picks a free port). THREADS defaults to the
//! number of CPUs; each thread has its own `SO_REUSEPORT` listener and level-triggered epoll
//! set, connections go round robin over the backends, and a direction only buffers the bytes
//! its destination could not take yet.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::thread;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::{Domain, Protocol, Socket, Type};

const BUFFER: usize = 16 * 1024;
const LISTENER: u64 = u64::MAX;

/// LISTEN, the backends and the thread count, or `None` when the arguments are not that.
fn parse_args(args: &[String]) -> Option<(SocketAddr, Vec<SocketAddr>, usize)> {
    let listen = args.first()?.parse().ok()?;
    let backends = args
        .get(1)?
        .split(',')
        .map(|a| a.parse().ok())
        .collect::<Option<Vec<SocketAddr>>>()?;
    let threads = match args.get(2) {
        Some(n) => n.parse().ok().filter(|&n| n > 0)?,
        None => thread::available_parallelism().map_or(1, |n| n.get()),
    };
    (args.len() <= 3 && !backends.is_empty()).then_some((listen, backends, threads))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((listen, backends, threads)) = parse_args(&args) else {
        eprintln!("usage: floor_relay LISTEN BACKEND[,BACKEND...] [THREADS]");
        return ExitCode::from(2);
    };
    let mut workers = Vec::new();
    // Port 0 picks a port once; the other threads join the first one's.
    let mut listen = listen;
    for _ in 0..threads {
        let listener = match reuseport_listener(listen) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("floor_relay: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Ok(bound) = listener.local_addr() {
            listen = bound;
        }
        let backends = backends.clone();
        workers.push(thread::spawn(move || serve(listener, &backends)));
    }
    println!("listening on {listen}");
    for worker in workers {
        if let Ok(Err(e)) = worker.join() {
            eprintln!("floor_relay: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// One direction of a pair: bytes read from its source that its destination has not taken.
#[derive(Default)]
struct Direction {
    pending: Vec<u8>,
    source_eof: bool,
    done: bool,
}

struct Pair {
    sockets: [TcpStream; 2],
    /// `directions[i]` moves bytes from `sockets[i]` to `sockets[1 - i]`.
    directions: [Direction; 2],
}

fn serve(listener: TcpListener, backends: &[SocketAddr]) -> io::Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut buffer = vec![0u8; BUFFER];
    let mut next_backend = 0usize;
    loop {
        let ready = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..ready] {
            let token = event.data();
            if token == LISTENER {
                while let Ok((client, _)) = listener.accept() {
                    let backend = backends[next_backend % backends.len()];
                    next_backend = next_backend.wrapping_add(1);
                    let Ok(backend) = connect(backend) else {
                        continue;
                    };
                    let _ = client.set_nonblocking(true);
                    let slot = free.pop().unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    let pair = Pair {
                        sockets: [client, backend],
                        directions: Default::default(),
                    };
                    let registered = (0..2).try_for_each(|side| {
                        let flags = EpollFlags::EPOLLIN;
                        epoll.add(
                            &pair.sockets[side],
                            EpollEvent::new(flags, token_of(slot, side)),
                        )
                    });
                    if registered.is_ok() {
                        pairs[slot] = Some(pair);
                    } else {
                        free.push(slot);
                    }
                }
                continue;
            }
            let (slot, side) = ((token / 2) as usize, (token % 2) as usize);
            let Some(Some(pair)) = pairs.get_mut(slot) else {
                continue;
            };
            let alive = if event.events().contains(EpollFlags::EPOLLOUT) {
                flush(pair, 1 - side, &epoll, slot)
            } else {
                pump(pair, side, &mut buffer, &epoll, slot)
            };
            if !alive.unwrap_or(false) {
                // Closing the sockets also takes them out of the epoll set.
                pairs[slot] = None;
                free.push(slot);
            }
        }
    }
}

fn token_of(slot: usize, side: usize) -> u64 {
    (slot as u64) * 2 + side as u64
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// Reads what `sockets[from]` has and passes it on. Returns whether the pair lives on.
fn pump(
    pair: &mut Pair,
    from: usize,
    buffer: &mut [u8],
    epoll: &Epoll,
    slot: usize,
) -> io::Result<bool> {
    let n = match (&pair.sockets[from]).read(buffer) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
            return Ok(true);
        }
        Err(e) => return Err(e),
    };
    if n == 0 {
        pair.directions[from].source_eof = true;
        watch(pair, from, epoll, slot)?;
    } else {
        let written = match (&pair.sockets[1 - from]).write(&buffer[..n]) {
            Ok(w) => w,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written < n {
            pair.directions[from]
                .pending
                .extend_from_slice(&buffer[written..n]);
            watch(pair, 0, epoll, slot)?;
            watch(pair, 1, epoll, slot)?;
        }
    }
    finish_if_drained(pair, from)
}

/// Writes the bytes `directions[from]` holds back to `sockets[1 - from]`, which is writable.
fn flush(pair: &mut Pair, from: usize, epoll: &Epoll, slot: usize) -> io::Result<bool> {
    let direction = &mut pair.directions[from];
    match (&pair.sockets[1 - from]).write(&direction.pending) {
        Ok(w) => {
            direction.pending.drain(..w);
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    if direction.pending.is_empty() {
        watch(pair, 0, epoll, slot)?;
        watch(pair, 1, epoll, slot)?;
    }
    finish_if_drained(pair, from)
}

/// Watches `sockets[side]` for reading while its own direction is neither finished nor held
/// back (back-pressure), and for writing while the other direction holds bytes for it.
fn watch(pair: &Pair, side: usize, epoll: &Epoll, slot: usize) -> io::Result<()> {
    let own = &pair.directions[side];
    let mut flags = EpollFlags::empty();
    if !own.source_eof && own.pending.is_empty() {
        flags |= EpollFlags::EPOLLIN;
    }
    if !pair.directions[1 - side].pending.is_empty() {
        flags |= EpollFlags::EPOLLOUT;
    }
    let mut event = EpollEvent::new(flags, token_of(slot, side));
    Ok(epoll.modify(pair.sockets[side].as_fd(), &mut event)?)
}

/// Passes EOF on once a finished direction has delivered everything; the pair ends when both
/// directions have.
fn finish_if_drained(pair: &mut Pair, from: usize) -> io::Result<bool> {
    let direction = &mut pair.directions[from];
    if direction.source_eof && direction.pending.is_empty() && !direction.done {
        direction.done = true;
        pair.sockets[1 - from].shutdown(Shutdown::Write)?;
    }
    Ok(!(pair.directions[0].done && pair.directions[1].done))
}

/// The floor is only a fair floor if it relays correctly. These run the relay loop in-process
/// (`cargo test --all-targets` builds examples as test binaries, not as runnable programs)
/// over real loopback sockets.
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Bounds every blocking read and write, so a broken relay fails the test, not hangs it.
    const WAIT: Duration = Duration::from_secs(10);

    fn start_relay(backends: Vec<SocketAddr>) -> SocketAddr {
        let listener = reuseport_listener("127.0.0.1:0".parse().expect("address")).expect("listen");
        let addr = listener.local_addr().expect("address");
        thread::spawn(move || serve(listener, &backends));
        addr
    }

    /// A backend thread per connection, running `handle` on it.
    fn backend(handle: fn(TcpStream)) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || handle(stream));
            }
        });
        addr
    }

    fn echo(stream: TcpStream) {
        let mut reader = stream.try_clone().expect("clone");
        let mut writer = stream;
        if io::copy(&mut reader, &mut writer).is_ok() {
            let _ = writer.shutdown(Shutdown::Write);
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_write_timeout(Some(WAIT)).expect("timeout");
        stream
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn transfers_come_back_intact_and_half_close_is_passed_on() {
        let relay = start_relay(vec![backend(echo)]);
        for len in [1, 70_000, 8 * 1024 * 1024] {
            let data = pattern(len);
            let stream = connect(relay);
            let mut writer = stream.try_clone().expect("clone");
            let sent = data.clone();
            let sender = thread::spawn(move || {
                writer.write_all(&sent).expect("write");
                writer.shutdown(Shutdown::Write).expect("shutdown");
            });
            let mut back = Vec::new();
            (&stream).read_to_end(&mut back).expect("read to EOF");
            sender.join().expect("sender");
            assert_eq!(back.len(), len);
            assert!(back == data, "{len} bytes came back altered");
        }
    }

    #[test]
    fn connections_alternate_between_backends() {
        fn greet_a(mut s: TcpStream) {
            let _ = s.write_all(b"a");
        }
        fn greet_b(mut s: TcpStream) {
            let _ = s.write_all(b"b");
        }
        let relay = start_relay(vec![backend(greet_a), backend(greet_b)]);
        let names: Vec<String> = (0..6)
            .map(|_| {
                let mut stream = connect(relay);
                stream.shutdown(Shutdown::Write).expect("shutdown");
                let mut name = String::new();
                stream.read_to_string(&mut name).expect("read");
                name
            })
            .collect();
        assert_eq!(names, ["a", "b", "a", "b", "a", "b"]);
    }

    #[test]
    fn arguments() {
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let one: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let two: SocketAddr = "127.0.0.1:2".parse().expect("address");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
        assert_eq!(
            args(&["127.0.0.1:0", "127.0.0.1:1,127.0.0.1:2", "3"]),
            Some((listen, vec![one, two], 3))
        );
        assert_eq!(args(&[]), None);
        assert_eq!(args(&["127.0.0.1:0"]), None);
        assert_eq!(args(&["127.0.0.1:0", "127.0.0.1:1", "0"]), None);
        assert_eq!(args(&["127.0.0.1:0", "nowhere"]), None);
        assert_eq!(args(&["127.0.0.1:0", "127.0.0.1:1", "1", "extra"]), None);
    }
}
