//! Differential test of the relay: the same stream scenarios run over a direct connection
//! and through ballast with every copy strategy (`splice: Off`, `Auto`, `Always`, and the
//! splicing ones again with pipes at the kernel's minimum of one page). Every run must
//! deliver the same bytes in the same order and end the same way (EOF or reset) on each
//! side as the direct connection does.
//!
//! Scenarios come from a seeded generator (set `BALLAST_DIFF_SEED` to explore others) plus a
//! fixed set of shapes taken from proxy bug reports: server-first protocols, a client that
//! half-closes and then downloads, a backend that answers only after a 16 MiB upload, slow
//! readers behind fast writers, resets after complete exchanges, empty streams. Ballast runs
//! in-process (`server::run`), so the test needs no binary and stays within CI's time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ballast::config::Config;
use ballast::server;
use common::pattern;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// How an endpoint ends its sending side once its writes are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    /// `shutdown(SHUT_WR)`: the peer reads EOF; this side keeps reading until the peer's EOF.
    Fin,
    /// Once the peer has read every byte of ours and we have read all of the peer's up to
    /// its EOF: an abortive close (`SO_LINGER` 0), so the peer reads a reset.
    Reset,
    /// Right after the writes, reading nothing: an abortive close mid-stream. How many of
    /// the bytes reach the peer is up to timing, on a direct connection too; what must hold
    /// is that the peer reads a prefix of them and then a reset, never a clean EOF.
    Abort,
}

/// What one endpoint does.
#[derive(Clone, Debug)]
struct Plan {
    /// Writes in order: milliseconds to pause first, then bytes to write.
    writes: Vec<(u64, usize)>,
    /// Write only after reading the peer's EOF (a server that answers a whole request).
    after_eof: bool,
    /// Send one byte of TCP urgent data (`MSG_OOB`) after this many writes. Without
    /// `SO_OOBINLINE` a reader never sees it in the stream, so it is not among the bytes
    /// the peer expects; a relay must neither pass it on inline nor stop at it.
    urgent_after: Option<usize>,
    finish: Finish,
    /// Bytes asked for per read.
    read_size: usize,
    /// Microseconds to pause after each read (a slow reader), for up to `MAX_PAUSE` in all.
    read_pause_us: u64,
    seed: u64,
}

/// The most a slow reader pauses in one run, so every scenario stays short.
const MAX_PAUSE: Duration = Duration::from_millis(300);

impl Plan {
    fn total(&self) -> usize {
        self.writes.iter().map(|&(_, len)| len).sum()
    }
}

/// How the reading side of an endpoint ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ending {
    Eof,
    Reset,
    Other(std::io::ErrorKind),
    /// The endpoint aborted without reading.
    NotRead,
}

/// What one endpoint saw: the bytes it read (checked against what the peer wrote) and how
/// its reading ended.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    received: usize,
    /// Whether the bytes read are exactly the peer's bytes, in order.
    exact: bool,
    /// Whether the bytes read are the start of the peer's bytes, in order.
    prefix: bool,
    ending: Ending,
}

/// Runs one endpoint of a scenario on `stream`. `mine_read` tells when the peer has read all
/// of our bytes; `peers_read` is raised once we have read all of the peer's.
async fn endpoint(
    stream: TcpStream,
    me: Plan,
    peer: Plan,
    mut mine_read: watch::Receiver<bool>,
    peers_read: watch::Sender<bool>,
) -> Outcome {
    let expected = pattern(peer.total(), peer.seed);
    if expected.is_empty() {
        let _ = peers_read.send(true);
    }
    if me.finish == Finish::Abort {
        return abort_after_writes(stream, &me).await;
    }
    let (r, mut w) = stream.into_split();
    let (eof_tx, eof_rx) = oneshot::channel::<()>();
    let reader = async {
        let mut got = Vec::with_capacity(expected.len());
        let mut buf = vec![0u8; me.read_size];
        let mut paused = Duration::ZERO;
        let ending = loop {
            // Not `read`: tokio takes a short read for an empty socket, and a read stops at
            // urgent data with more queued behind it. Only EAGAIN clears the readiness here.
            if let Err(e) = r.readable().await {
                break Ending::Other(e.kind());
            }
            match r.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(0) => break Ending::Eof,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() >= expected.len() {
                        let _ = peers_read.send(true);
                    }
                    if me.read_pause_us > 0 && paused < MAX_PAUSE {
                        let pause = Duration::from_micros(me.read_pause_us);
                        tokio::time::sleep(pause).await;
                        paused += pause;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ending::Reset,
                Err(e) => break Ending::Other(e.kind()),
            }
        };
        let _ = eof_tx.send(());
        (got, ending)
    };
    let writer = async {
        if me.after_eof {
            let _ = eof_rx.await;
        }
        let data = pattern(me.total(), me.seed);
        let mut at = 0;
        for (i, &(pause, len)) in me.writes.iter().enumerate() {
            if me.urgent_after == Some(i) {
                send_urgent(&w).await;
            }
            if pause > 0 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            w.write_all(&data[at..at + len]).await.expect("write");
            at += len;
        }
        match me.finish {
            // A peer that aborts may have reset the stream already.
            Finish::Fin if peer.finish == Finish::Abort => {
                let _ = w.shutdown().await;
            }
            Finish::Fin => w.shutdown().await.expect("shutdown"),
            Finish::Reset => {
                let _ = mine_read.wait_for(|&all| all).await;
            }
            Finish::Abort => unreachable!("aborting endpoints return early"),
        }
        w
    };
    let ((got, ending), w) = tokio::join!(reader, writer);
    let stream = r.reunite(w).expect("halves of one stream");
    if me.finish == Finish::Reset {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    }
    drop(stream);
    Outcome {
        received: got.len(),
        exact: got == expected,
        prefix: expected.starts_with(&got),
        ending,
    }
}

/// An endpoint that writes its bytes and resets the stream at once, reading nothing.
async fn abort_after_writes(mut stream: TcpStream, me: &Plan) -> Outcome {
    let data = pattern(me.total(), me.seed);
    let mut at = 0;
    for &(pause, len) in &me.writes {
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        stream.write_all(&data[at..at + len]).await.expect("write");
        at += len;
    }
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(stream);
    Outcome {
        received: 0,
        exact: true,
        prefix: true,
        ending: Ending::NotRead,
    }
}

/// Sends one byte of urgent data, with pauses around it so that it arrives on its own.
async fn send_urgent(w: &tokio::net::tcp::OwnedWriteHalf) {
    /// `MSG_OOB` from `<sys/socket.h>`.
    const MSG_OOB: i32 = 1;
    tokio::time::sleep(Duration::from_millis(5)).await;
    socket2::SockRef::from(w.as_ref())
        .send_with_flags(b"!", MSG_OOB)
        .expect("send urgent data");
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// A scenario: what the client does and what the backend does.
type Scenario = (Plan, Plan);

/// Whether either side of `scenario` resets mid-stream.
fn aborts((client, backend): &Scenario) -> bool {
    client.finish == Finish::Abort || backend.finish == Finish::Abort
}

/// Runs every scenario, one after another, with the client connecting to `target` and the
/// backend accepting on `backend`. Returns (client, backend) outcomes per scenario.
async fn run_all(
    label: &str,
    target: SocketAddr,
    backend: &TcpListener,
    scenarios: &[Scenario],
) -> Vec<(Outcome, Outcome)> {
    let mut outcomes = Vec::new();
    for (i, (client_plan, backend_plan)) in scenarios.iter().enumerate() {
        let (c_read_tx, c_read_rx) = watch::channel(false);
        let (b_read_tx, b_read_rx) = watch::channel(false);
        let run = async {
            let client = async {
                let stream = TcpStream::connect(target).await.expect("connect");
                endpoint(
                    stream,
                    client_plan.clone(),
                    backend_plan.clone(),
                    b_read_rx,
                    c_read_tx,
                )
                .await
            };
            let server = async {
                let (stream, _) = backend.accept().await.expect("accept");
                endpoint(
                    stream,
                    backend_plan.clone(),
                    client_plan.clone(),
                    c_read_rx,
                    b_read_tx,
                )
                .await
            };
            tokio::join!(client, server)
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "scenario {i} through {label} stalled: client {client_plan:?}, backend {backend_plan:?}"
                )
            });
        outcomes.push(outcome);
    }
    outcomes
}

/// Starts ballast in-process on an ephemeral port in front of `backend` with `relay`
/// settings; it serves until the returned sender is dropped.
async fn start_ballast(backend: SocketAddr, relay: &str) -> (SocketAddr, oneshot::Sender<()>) {
    let text = format!(
        r#"(listen: "127.0.0.1:0", algorithm: RoundRobin, workers: 2,
            backends: [(name: "b", addr: "{backend}")],
            relay: ({relay}), timeouts: (idle: "30s"), access_log: Off,
            health: (interval: "1h"))"#
    );
    let config = Config::parse(&text, Path::new("differential.ron")).expect("config");
    let server = server::Server::bind(config).expect("bind");
    let addr = server.local_addrs()[0].1;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx)
}

/// A tiny xorshift generator: scenarios are reproducible from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

fn random_plan(rng: &mut Rng, finish: Finish) -> Plan {
    let writes: Vec<(u64, usize)> = (0..rng.below(6))
        .map(|_| {
            let pause = if rng.below(3) == 0 { rng.below(15) } else { 0 };
            let len = match rng.below(10) {
                0 => 0,
                1..=3 => 1 + rng.below(100) as usize,
                4..=6 => 1 + rng.below(70_000) as usize,
                7 | 8 => 1 + rng.below(1 << 20) as usize,
                _ => 1 + rng.below(6 << 20) as usize,
            };
            (pause, len)
        })
        .collect();
    let urgent_after =
        (!writes.is_empty() && rng.below(5) == 0).then(|| rng.below(writes.len() as u64) as usize);
    Plan {
        writes,
        after_eof: rng.below(4) == 0,
        urgent_after,
        finish,
        read_size: rng.pick(&[512, 4096, 16_384, 65_536, 1 << 20]),
        read_pause_us: rng.pick(&[0, 0, 0, 200, 1000]),
        seed: rng.next(),
    }
}

fn random_scenarios(seed: u64, count: usize) -> Vec<Scenario> {
    let mut rng = Rng(seed | 1);
    (0..count)
        .map(|_| {
            // At most one side resets, and only after a complete exchange: two resets race
            // each other and no two runs of even a direct connection would agree.
            let (client_finish, backend_finish) = match rng.below(6) {
                0 => (Finish::Reset, Finish::Fin),
                1 => (Finish::Fin, Finish::Reset),
                _ => (Finish::Fin, Finish::Fin),
            };
            let mut client = random_plan(&mut rng, client_finish);
            let mut backend = random_plan(&mut rng, backend_finish);
            // Both sides waiting for the other's EOF before writing would deadlock anywhere.
            if client.after_eof && backend.after_eof {
                client.after_eof = false;
            }
            // Resetting right after its own EOF is only deterministic if nothing else waits.
            if client.finish == Finish::Reset {
                backend.after_eof = false;
            }
            if backend.finish == Finish::Reset {
                client.after_eof = false;
            }
            (client, backend)
        })
        .collect()
}

fn plan(writes: &[(u64, usize)], finish: Finish, read_size: usize, pause_us: u64) -> Plan {
    Plan {
        writes: writes.to_vec(),
        after_eof: false,
        urgent_after: None,
        finish,
        read_size,
        read_pause_us: pause_us,
        seed: writes.len() as u64 * 7919 + read_size as u64,
    }
}

/// Shapes from bug reports against TCP proxies, always run.
fn fixed_scenarios() -> Vec<Scenario> {
    use Finish::{Abort, Fin, Reset};
    const MIB: usize = 1 << 20;
    let mut answer_after_upload = plan(&[(0, 3)], Fin, 65_536, 0);
    answer_after_upload.after_eof = true;
    let urgent = |writes: &[(u64, usize)], after: usize| Plan {
        urgent_after: Some(after),
        ..plan(writes, Fin, 65_536, 0)
    };
    vec![
        // Nothing either way.
        (plan(&[], Fin, 4096, 0), plan(&[], Fin, 4096, 0)),
        // Server-first (SMTP, MySQL, SSH): the backend greets before the client says a word.
        (
            plan(&[(20, 10), (0, 5000)], Fin, 4096, 0),
            plan(&[(0, 40), (5, 300)], Fin, 4096, 0),
        ),
        // The client half-closes at once, then downloads 8 MiB.
        (
            plan(&[], Fin, 65_536, 0),
            plan(&[(0, 8 * MIB)], Fin, 65_536, 0),
        ),
        // A 16 MiB upload, answered only once it has all arrived.
        (plan(&[(0, 16 * MIB)], Fin, 65_536, 0), answer_after_upload),
        // A slow reader behind a fast 4 MiB download.
        (
            plan(&[], Fin, 4096, 1000),
            plan(&[(0, 4 * MIB)], Fin, 65_536, 0),
        ),
        // A slow backend behind a fast 4 MiB upload.
        (
            plan(&[(0, 4 * MIB)], Fin, 65_536, 0),
            plan(&[], Fin, 4096, 1000),
        ),
        // Both directions in bulk at once.
        (
            plan(&[(0, 3 * MIB), (2, 3 * MIB)], Fin, 16_384, 0),
            plan(&[(0, 5 * MIB)], Fin, 16_384, 0),
        ),
        // A reset after a complete exchange, from either side.
        (
            plan(&[(0, MIB)], Reset, 65_536, 0),
            plan(&[(0, 2 * MIB)], Fin, 65_536, 0),
        ),
        (
            plan(&[(0, 2 * MIB)], Fin, 65_536, 0),
            plan(&[(0, MIB)], Reset, 65_536, 0),
        ),
        // Urgent data (telnet's and FTP's interrupt) amid small and bulk streams, both ways.
        (urgent(&[(0, 10), (0, 10)], 1), plan(&[], Fin, 4096, 0)),
        (
            urgent(&[(0, 100_000), (0, 100_000)], 1),
            plan(&[], Fin, 4096, 0),
        ),
        (
            plan(&[(0, 10)], Fin, 4096, 0),
            urgent(&[(0, 2 * MIB), (0, MIB)], 1),
        ),
        // An abortive close mid-stream, from either side, small and in bulk, with the peer
        // reading fast or slowly.
        (plan(&[(0, 10)], Abort, 4096, 0), plan(&[], Fin, 4096, 0)),
        (
            plan(&[(0, 4 * MIB)], Abort, 4096, 0),
            plan(&[], Fin, 65_536, 0),
        ),
        (
            plan(&[(0, 4 * MIB)], Abort, 4096, 0),
            plan(&[], Fin, 4096, 1000),
        ),
        (
            plan(&[], Fin, 65_536, 0),
            plan(&[(0, 4 * MIB)], Abort, 4096, 0),
        ),
        (
            plan(&[], Fin, 4096, 1000),
            plan(&[(3, 100), (3, MIB)], Abort, 4096, 0),
        ),
        // Many tiny writes with pauses between them (interactive traffic).
        (
            plan(&[(1, 1), (1, 2), (1, 3), (1, 1), (1, 5)], Fin, 1, 0),
            plan(&[(1, 4), (1, 1), (1, 7)], Fin, 1, 0),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_delivers_what_a_direct_connection_does() {
    let seed = std::env::var("BALLAST_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0ba1_1a57_u64);
    let mut scenarios = fixed_scenarios();
    scenarios.extend(random_scenarios(seed, 30));
    println!(
        "{} scenarios, random ones from seed {seed}",
        scenarios.len()
    );

    let strategies = [
        "splice: Off",
        "splice: Auto",
        "splice: Always",
        "splice: Auto, pipe_size: 4096",
        "splice: Always, pipe_size: 4096",
    ];
    let direct_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let direct_addr = direct_listener.local_addr().expect("addr");
    let mut runs = Vec::new();
    let mut keep_running = Vec::new();
    for relay in strategies {
        let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, stop) = start_ballast(backend.local_addr().expect("addr"), relay).await;
        keep_running.push(stop);
        let scenarios = scenarios.clone();
        runs.push(tokio::spawn(async move {
            (relay, run_all(relay, addr, &backend, &scenarios).await)
        }));
    }
    let direct = run_all(
        "a direct connection",
        direct_addr,
        &direct_listener,
        &scenarios,
    )
    .await;
    for (i, (client, backend)) in direct.iter().enumerate() {
        let (c, b) = &scenarios[i];
        let aborted = aborts(&scenarios[i]);
        assert!(
            (client.exact && backend.exact) || (aborted && client.prefix && backend.prefix),
            "scenario {i} is broken even over a direct connection: {client:?} {backend:?}"
        );
        let expect = |me: Finish, peer: Finish| match (me, peer) {
            (Finish::Abort, _) => Ending::NotRead,
            (_, Finish::Fin) => Ending::Eof,
            (_, Finish::Reset | Finish::Abort) => Ending::Reset,
        };
        assert_eq!(
            (&client.ending, &backend.ending),
            (&expect(c.finish, b.finish), &expect(b.finish, c.finish)),
            "scenario {i} over a direct connection"
        );
    }
    for run in runs {
        let (relay, outcomes) = tokio::time::timeout(Duration::from_secs(240), run)
            .await
            .expect("every strategy finishes within four minutes")
            .expect("run");
        for (i, (outcome, reference)) in outcomes.iter().zip(&direct).enumerate() {
            let context = || {
                format!(
                    "scenario {i} through ballast with `{relay}` (client, backend) differs from a direct connection ({reference:?}): {:?}",
                    scenarios[i]
                )
            };
            if aborts(&scenarios[i]) {
                // How much arrives before the reset is up to timing; that it is an exact
                // prefix, followed by a reset, is not.
                let ends = |o: &(Outcome, Outcome)| (o.0.ending.clone(), o.1.ending.clone());
                assert_eq!(ends(outcome), ends(reference), "{}", context());
                assert!(
                    outcome.0.prefix && outcome.1.prefix,
                    "{outcome:?}: {}",
                    context()
                );
            } else {
                assert_eq!(outcome, reference, "{}", context());
            }
        }
    }
    drop(keep_running);
}
