//! Bytes parked per stalled reader, ballast beside HAProxy (run by `scripts/stalled.sh`).
//!
//! A backend writes as fast as it can to every connection; 50 clients with a 64 KiB
//! receive buffer connect through a proxy and never read. Once a stream has taken no byte
//! for 2 s, what the backend managed to write is what the whole path parks for that one
//! stalled reader: the backend's send queue, the proxy's sockets and pipes, the client's
//! receive queue. The direct row (no proxy) is the floor; a proxy adds what it holds.
//!
//! Usage: `stalled_readers [BALLAST_BINARY]` (default `target/release/ballast`). HAProxy
//! rows need `haproxy` on PATH and are skipped otherwise. Loopback only; every wait is
//! bounded and every process started here is killed before the next row.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stalled clients per row.
const CLIENTS: usize = 50;
/// A stream that took nothing for this long is stalled.
const STALLED_AFTER: Duration = Duration::from_secs(2);
/// The longest one row may take.
const ROW_LIMIT: Duration = Duration::from_secs(60);

/// The firehose backend: per row, the bytes written to each stream before it stalled.
struct Firehose {
    addr: SocketAddr,
    totals: Arc<Mutex<Vec<u64>>>,
    /// Raised to make every stalled stream of the row close.
    close: Arc<Mutex<Arc<AtomicBool>>>,
}

impl Firehose {
    fn start() -> std::io::Result<Firehose> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let totals = Arc::new(Mutex::new(Vec::new()));
        let close = Arc::new(Mutex::new(Arc::new(AtomicBool::new(false))));
        let (t, c) = (Arc::clone(&totals), Arc::clone(&close));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (t, c) = (Arc::clone(&t), Arc::clone(&lock(&c)));
                std::thread::spawn(move || pour(stream, &t, &c));
            }
        });
        Ok(Firehose {
            addr,
            totals,
            close,
        })
    }

    /// Starts a new row: forgets the last row's totals and closes its streams.
    fn next_row(&self) {
        lock(&self.close).store(true, Ordering::Relaxed);
        *lock(&self.close) = Arc::new(AtomicBool::new(false));
        lock(&self.totals).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes to `stream` until it has taken nothing for [`STALLED_AFTER`], records the total,
/// then holds the stream open until `close` is raised.
fn pour(mut stream: TcpStream, totals: &Mutex<Vec<u64>>, close: &AtomicBool) {
    let chunk = vec![0x5a_u8; 64 * 1024];
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut total = 0u64;
    let mut last = Instant::now();
    while last.elapsed() < STALLED_AFTER && !close.load(Ordering::Relaxed) {
        match stream.write(&chunk) {
            Ok(n) => {
                total += n as u64;
                last = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return,
        }
    }
    lock(totals).push(total);
    while !close.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A proxy process, killed when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts ballast on an ephemeral port with `relay` settings; returns it and its address.
fn start_ballast(
    binary: &str,
    backend: SocketAddr,
    relay: &str,
) -> Result<(Proxy, SocketAddr), String> {
    let dir = std::env::temp_dir().join(format!("ballast-stalled-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("stalled.ron");
    let config = format!(
        r#"(listen: "127.0.0.1:0", algorithm: RoundRobin, access_log: Off, relay: ({relay}),
            backends: [(name: "firehose", addr: "{backend}")])"#
    );
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {binary}: {e} (build with cargo build --release)"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let proxy = Proxy(child);
    for line in BufReader::new(stderr).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest
                .split([' ', ','])
                .next()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("no address in {line:?}"))?;
            return Ok((proxy, addr));
        }
    }
    Err("ballast exited before listening".into())
}

/// Starts HAProxy `mode tcp` on a free port, with `extra` in its defaults section.
fn start_haproxy(backend: SocketAddr, extra: &str) -> Result<(Proxy, SocketAddr), String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = std::env::temp_dir().join(format!("ballast-stalled-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("haproxy.cfg");
    let config = format!(
        "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
         timeout client 60s\n    timeout server 60s\n{extra}\nfrontend f\n    bind {addr}\n    \
         default_backend b\nbackend b\n    server s1 {backend}\n"
    );
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run haproxy: {e}"))?;
    let proxy = Proxy(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err("haproxy did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proxy, addr))
}

/// Connects [`CLIENTS`] readers that never read to `addr`; returns the bytes parked per
/// stream, sorted.
fn measure(firehose: &Firehose, addr: SocketAddr) -> Result<Vec<u64>, String> {
    firehose.next_row();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|e| e.to_string())?;
        // A slow, small client, as in the field report.
        socket
            .set_recv_buffer_size(64 * 1024)
            .map_err(|e| e.to_string())?;
        socket
            .connect(&addr.into())
            .map_err(|e| format!("connect {addr}: {e}"))?;
        clients.push(socket);
    }
    let deadline = Instant::now() + ROW_LIMIT;
    loop {
        let done = lock(&firehose.totals).len();
        if done >= CLIENTS {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {done} of {CLIENTS} streams stalled within {ROW_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut totals = lock(&firehose.totals).clone();
    totals.sort_unstable();
    drop(clients);
    Ok(totals)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn main() {
    let ballast = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/ballast".into());
    let firehose = match Firehose::start() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("stalled_readers: cannot start the backend: {e}");
            std::process::exit(1);
        }
    };
    let backend = firehose.addr;
    type Start<'a> = Box<dyn Fn() -> Result<Option<(Proxy, SocketAddr)>, String> + 'a>;
    let have_haproxy = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let haproxy = |extra: &'static str| -> Start<'_> {
        Box::new(move || {
            if have_haproxy {
                start_haproxy(backend, extra).map(Some)
            } else {
                Err("skipped: haproxy is not installed".into())
            }
        })
    };
    let rows: Vec<(&str, Start<'_>)> = vec![
        ("direct (no proxy)", Box::new(|| Ok(None))),
        (
            "ballast (defaults: splice Auto)",
            Box::new(|| start_ballast(&ballast, backend, "").map(Some)),
        ),
        (
            "ballast splice Off",
            Box::new(|| start_ballast(&ballast, backend, "splice: Off").map(Some)),
        ),
        ("HAProxy mode tcp", haproxy("")),
        ("HAProxy splice-auto", haproxy("    option splice-auto")),
    ];
    println!(
        "Bytes parked per stalled reader: {CLIENTS} clients (64 KiB receive buffer) that never read, behind a backend that writes as fast as it can; measured when each stream has taken nothing for {STALLED_AFTER:?}.\n"
    );
    println!("| System | Median MB | Max MB | Median over direct MB |");
    println!("|---|---:|---:|---:|");
    let mut direct_median = None;
    for (name, start) in rows {
        let started = start();
        let result = started.and_then(|proxy| {
            let addr = proxy.as_ref().map_or(backend, |(_, addr)| *addr);
            let totals = measure(&firehose, addr);
            drop(proxy);
            totals
        });
        match result {
            Ok(totals) => {
                let median = totals[totals.len() / 2];
                let max = totals[totals.len() - 1];
                let base = *direct_median.get_or_insert(median);
                println!(
                    "| {name} | {:.1} | {:.1} | {:+.1} |",
                    mb(median),
                    mb(max),
                    mb(median) - mb(base)
                );
            }
            Err(e) => println!("| {name} | {e} | | |"),
        }
    }
    firehose.next_row();
}
