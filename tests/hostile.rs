//! Hostile peers against the real `ballast` process: clients and backends that stay silent,
//! stall, reset, close at once or never finish a half-close; `/load` endpoints that hang,
//! trickle, flood, send binary or lie; and 2,000 connections at once. Every test proves the
//! misbehaving peer is cut off alone: other connections through the same balancer keep
//! working, byte-exact, while it misbehaves and afterwards, and the process stays up.
//!
//! Waits are bounded by `within` and wait for real signals (an accept, a byte, EOF, a log
//! line). The only sleeps are the hostile peers' own dawdling; the limits under test (idle,
//! half-close) are waited out by reading until the balancer closes the connection.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, mpsc, oneshot};
use tokio::task::JoinSet;

/// The idle and half-close limits of the tests that wait one out: short, yet far above
/// what a healthy exchange on loopback takes.
const SHORT: Duration = Duration::from_millis(500);

/// How much earlier than a limit a close may be seen: the relay's activity clock keeps whole
/// milliseconds, so its deadline can fall up to 1 ms before the exact one.
const SLACK: Duration = Duration::from_millis(10);

/// Within this a close caused by a peer's own action (not a timer) must reach the other
/// side. Far below every timer the tests configure, so it cannot be a timer firing.
const PROMPT: Duration = Duration::from_secs(3);

/// Sections for a balancer whose single backend may accept one hostile connection: health
/// probes pushed away (they would take that accept), and the given idle and half-close.
fn limits(idle: &str, half_close: &str) -> String {
    format!(
        "timeouts: (connect: \"2s\", idle: \"{idle}\", half_close: \"{half_close}\", grace: \"1s\"),\n    {NO_PROBES}"
    )
}

/// `len` bytes unique to `seed`: the seed itself, then xorshift noise seeded by it.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out: Vec<u8> = seed.to_be_bytes().into_iter().take(len).collect();
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 24) as u8);
    }
    out
}

/// Fails with where `got` first differs from `want`, instead of dumping both.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: got {} bytes for {} expected, first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
}

/// One complete healthy exchange through `addr`: 64 KiB unique to `seed` sent (then the write
/// side shut), the same 64 KiB echoed back, then EOF.
async fn healthy_echo(addr: SocketAddr, seed: u64) {
    let data = pattern(seed, 64 * 1024);
    let mut s = connect(addr).await;
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(data.len());
    let (sent, received) = within(async { tokio::join!(send, r.read_to_end(&mut back)) }).await;
    sent.expect("healthy client: send");
    received.expect("healthy client: receive");
    assert_same(&back, &data, &format!("healthy echo {seed}"));
}

/// A healthy connection held open across a hostile peer's misbehaviour: each round echoes
/// a fresh 16 KiB pattern; `finish` closes cleanly and expects nothing more.
struct Conversation {
    stream: TcpStream,
    seed: u64,
    rounds: u64,
}

impl Conversation {
    async fn open(addr: SocketAddr, seed: u64) -> Conversation {
        let mut c = Conversation {
            stream: connect(addr).await,
            seed,
            rounds: 0,
        };
        c.round().await;
        c
    }

    async fn round(&mut self) {
        self.rounds += 1;
        let data = pattern(self.seed * 1_000 + self.rounds, 16 * 1024);
        within(self.stream.write_all(&data))
            .await
            .expect("conversation: send");
        let mut back = vec![0u8; data.len()];
        within(self.stream.read_exact(&mut back))
            .await
            .expect("conversation: receive");
        assert_same(
            &back,
            &data,
            &format!("conversation {} round {}", self.seed, self.rounds),
        );
    }

    async fn finish(mut self) {
        self.round().await;
        within(self.stream.shutdown())
            .await
            .expect("conversation: shutdown");
        let (rest, end) = read_to_close(&mut self.stream).await;
        assert!(rest.is_empty(), "conversation: {} stray bytes", rest.len());
        assert_eq!(end, Ok(()), "conversation: clean EOF");
    }
}

/// Reads until the peer closes: what arrived, and how reading ended (`Ok` for EOF).
async fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Result<(), io::ErrorKind>) {
    let mut got = Vec::new();
    let end = within(async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.kind()),
            }
        }
    })
    .await;
    (got, end)
}

/// Proves the peer of `s` has closed its socket completely, not merely shut its write side:
/// a byte written to a closed socket is answered with a reset. Returns the error the reset
/// left on `s`; `None` means no reset came within `WAIT` (the peer still holds its socket).
/// Only call it once the peer is expected to be gone: a live peer would receive the byte.
async fn reset_provoked(s: &mut TcpStream) -> Option<io::ErrorKind> {
    if let Err(e) = s.write_all(b"?").await {
        return Some(e.kind());
    }
    tokio::time::timeout(WAIT, s.ready(Interest::ERROR))
        .await
        .ok()?
        .ok()?;
    let pending = s.take_error().ok().flatten();
    Some(pending.map_or(io::ErrorKind::Other, |e| e.kind()))
}

/// The balancer's log line for the finished connection from `client`.
fn finished_line(b: &Balancer, client: SocketAddr) -> String {
    let needle = format!("{client} -> ");
    let line = b.log.wait_for(1, |l| l.contains(&needle));
    eprintln!("finished: {line}");
    line
}

/// The balancer is still running and no task of it panicked.
fn assert_still_serving(b: &mut Balancer) {
    let exited = b.proc.child.try_wait().expect("try_wait");
    assert!(exited.is_none(), "the balancer exited: {exited:?}");
    let panics = b.log.count(|l| l.contains("panicked"));
    assert_eq!(
        panics,
        0,
        "a balancer task panicked:\n{:#?}",
        b.log.snapshot()
    );
}

/// What the armed connection of a [`ScriptedBackend`] does.
enum Script {
    /// Echoes like a well-behaved backend.
    Echo,
    /// Reads and discards everything, never answers.
    Mute,
    /// Sends `bytes`, waits for `go`, then resets the connection (SO_LINGER 0, close).
    ResetAfter {
        bytes: Vec<u8>,
        go: oneshot::Receiver<()>,
    },
    /// Closes the connection as soon as it is accepted.
    CloseAtOnce,
    /// Reads to EOF and never closes its own side; after `go`, checks whether the balancer
    /// has closed the connection completely.
    NeverClose { go: oneshot::Receiver<()> },
    /// Sends `greeting` and shuts its write side at once, then reads to EOF.
    GreetAndHalfClose { greeting: &'static [u8] },
}

/// What the armed connection saw.
#[derive(Debug)]
struct Seen {
    received: Vec<u8>,
    /// How reading ended: `Ok` for EOF, else the error.
    end: Result<(), io::ErrorKind>,
    /// For [`Script::NeverClose`]: the reset a late write provoked (see [`reset_provoked`]).
    late_write_reset: Option<io::ErrorKind>,
}

struct Armed {
    script: Script,
    accepted: oneshot::Sender<()>,
    seen: oneshot::Sender<Seen>,
}

/// Reports of the armed connection.
struct Watch {
    accepted: oneshot::Receiver<()>,
    seen: oneshot::Receiver<Seen>,
}

impl Watch {
    async fn accepted(&mut self) {
        within(&mut self.accepted)
            .await
            .expect("the backend accepted the hostile connection");
    }

    async fn seen(self) -> Seen {
        within(self.seen).await.expect("the backend reported")
    }
}

/// A backend that echoes every connection, except the next one accepted after [`arm`],
/// which follows a script and reports what it saw.
///
/// [`arm`]: ScriptedBackend::arm
struct ScriptedBackend {
    addr: SocketAddr,
    armed: Arc<Mutex<Option<Armed>>>,
}

impl ScriptedBackend {
    async fn start() -> ScriptedBackend {
        let listener = listener().await;
        let addr = listener.local_addr().expect("addr");
        let armed: Arc<Mutex<Option<Armed>>> = Arc::default();
        let slot = Arc::clone(&armed);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let next = slot.lock().expect("armed lock").take();
                match next {
                    Some(armed) => {
                        let _ = armed.accepted.send(());
                        tokio::spawn(async move {
                            let _ = armed.seen.send(play(s, armed.script).await);
                        });
                    }
                    None => {
                        tokio::spawn(async move {
                            let _ = play(s, Script::Echo).await;
                        });
                    }
                }
            }
        });
        ScriptedBackend { addr, armed }
    }

    /// Scripts the next connection accepted. Arm it only when no other connection to this
    /// backend is on its way.
    fn arm(&self, script: Script) -> Watch {
        let (accepted_tx, accepted) = oneshot::channel();
        let (seen_tx, seen) = oneshot::channel();
        *self.armed.lock().expect("armed lock") = Some(Armed {
            script,
            accepted: accepted_tx,
            seen: seen_tx,
        });
        Watch { accepted, seen }
    }
}

/// Reads to EOF or error, echoing each chunk when `echo`.
async fn drain(s: &mut TcpStream, echo: bool) -> (Vec<u8>, Result<(), io::ErrorKind>) {
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (received, Ok(())),
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if echo && let Err(e) = s.write_all(&buf[..n]).await {
                    return (received, Err(e.kind()));
                }
            }
            Err(e) => return (received, Err(e.kind())),
        }
    }
}

async fn play(mut s: TcpStream, script: Script) -> Seen {
    let mut late_write_reset = None;
    let (received, end) = match script {
        Script::Echo => {
            let seen = drain(&mut s, true).await;
            let _ = s.shutdown().await;
            seen
        }
        Script::Mute => drain(&mut s, false).await,
        Script::ResetAfter { bytes, go } => {
            let sent = s.write_all(&bytes).await.map_err(|e| e.kind());
            let _ = tokio::time::timeout(WAIT, go).await;
            s.set_zero_linger().expect("SO_LINGER 0");
            drop(s);
            (Vec::new(), sent)
        }
        Script::CloseAtOnce => {
            drop(s);
            (Vec::new(), Ok(()))
        }
        Script::NeverClose { go } => {
            let seen = drain(&mut s, false).await;
            let _ = tokio::time::timeout(WAIT, go).await;
            late_write_reset = reset_provoked(&mut s).await;
            seen
        }
        Script::GreetAndHalfClose { greeting } => {
            if s.write_all(greeting).await.is_ok() {
                let _ = s.shutdown().await;
            }
            drain(&mut s, false).await
        }
    };
    Seen {
        received,
        end,
        late_write_reset,
    }
}

/// A balancer in front of one scripted backend, with the given idle and half-close limits.
async fn scripted_balancer(idle: &str, half_close: &str) -> (ScriptedBackend, Balancer) {
    let backend = ScriptedBackend::start().await;
    let config = config_with(
        "RoundRobin",
        &[("scripted", backend.addr, 1)],
        &limits(idle, half_close),
    );
    (backend, Balancer::start(&config))
}

/// The client is closed cleanly (EOF, no bytes) by a time limit, no sooner than the short
/// limit after `started`, and its access line shows `(up, down)` bytes and `ending`.
async fn assert_cut_off(
    b: &Balancer,
    client: &mut TcpStream,
    peer: SocketAddr,
    started: Instant,
    (up, down): (usize, usize),
    ending: &str,
) {
    let (got, end) = read_to_close(client).await;
    let waited = started.elapsed();
    assert!(got.is_empty(), "{} unexpected bytes", got.len());
    assert_eq!(end, Ok(()), "the client sees EOF");
    assert!(
        waited >= SHORT - SLACK,
        "closed after {waited:?}, before the limit"
    );
    let line = finished_line(b, peer);
    assert!(
        line.contains(&format!(": {up} bytes up, {down} bytes down,"))
            && line.ends_with(&format!(", {ending}")),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------
// Hostile clients

#[tokio::test]
async fn client_that_never_sends_is_closed_at_the_idle_timeout() {
    let (backend, mut b) = scripted_balancer("500ms", "10s").await;
    let mut watch = backend.arm(Script::Echo);
    let started = Instant::now();
    let mut silent = connect(b.addr).await;
    let peer = silent.local_addr().expect("addr");
    watch.accepted().await;

    // While it sits there, others are served.
    for seed in 1..=3 {
        healthy_echo(b.addr, seed).await;
    }

    assert_cut_off(&b, &mut silent, peer, started, (0, 0), "idle timeout").await;
    let seen = watch.seen().await;
    assert!(seen.received.is_empty(), "{seen:?}");
    assert_eq!(seen.end, Ok(()), "the backend sees EOF: {seen:?}");

    healthy_echo(b.addr, 4).await;
    assert_still_serving(&mut b);
}

#[tokio::test]
async fn client_that_stalls_mid_request_is_closed_at_the_idle_timeout() {
    let (backend, mut b) = scripted_balancer("500ms", "10s").await;
    let mut watch = backend.arm(Script::Echo);
    let partial = b"GET /slow HTTP/1.1\r\nHost: ballast\r\nX-Slowloris: ";
    let mut staller = connect(b.addr).await;
    let peer = staller.local_addr().expect("addr");
    watch.accepted().await;
    let started = Instant::now();
    within(staller.write_all(partial)).await.expect("send");
    let mut echoed = vec![0u8; partial.len()];
    within(staller.read_exact(&mut echoed))
        .await
        .expect("echo of the partial request");
    assert_same(&echoed, partial, "partial request echo");

    for seed in 11..=13 {
        healthy_echo(b.addr, seed).await;
    }

    let moved = (partial.len(), partial.len());
    assert_cut_off(&b, &mut staller, peer, started, moved, "idle timeout").await;
    let seen = watch.seen().await;
    assert_same(&seen.received, partial, "what the backend received");
    assert_eq!(seen.end, Ok(()), "the backend sees EOF: {seen:?}");

    healthy_echo(b.addr, 14).await;
    assert_still_serving(&mut b);
}

#[tokio::test]
async fn client_reset_mid_stream_closes_its_backend_connection_only() {
    let (backend, mut b) = scripted_balancer("60s", "60s").await;
    let mut conversation = Conversation::open(b.addr, 21).await;
    let mut watch = backend.arm(Script::Echo);
    let mut resetter = connect(b.addr).await;
    let peer = resetter.local_addr().expect("addr");
    watch.accepted().await;
    let first = pattern(22, 32 * 1024);
    let second = pattern(23, 8 * 1024);
    within(resetter.write_all(&first)).await.expect("send");
    let mut echoed = vec![0u8; first.len()];
    within(resetter.read_exact(&mut echoed))
        .await
        .expect("echo of the first chunk");
    assert_same(&echoed, &first, "first chunk echo");
    // Mid-stream: more bytes in flight, their echo unread, then a reset.
    within(resetter.write_all(&second)).await.expect("send");
    resetter.set_zero_linger().expect("SO_LINGER 0");
    let reset_at = Instant::now();
    drop(resetter);

    let seen = watch.seen().await;
    let took = reset_at.elapsed();
    assert!(
        took < PROMPT,
        "backend connection closed {took:?} after the reset"
    );
    assert!(
        matches!(seen.end, Ok(()) | Err(io::ErrorKind::ConnectionReset)),
        "the backend connection ends: {seen:?}"
    );
    let sent: Vec<u8> = [first.as_slice(), &second].concat();
    assert!(
        seen.received.len() >= first.len() && sent.starts_with(&seen.received),
        "the backend got {} bytes, not a prefix of the {} sent covering the first chunk",
        seen.received.len(),
        sent.len()
    );
    let line = finished_line(&b, peer);
    assert!(line.contains(", client error: "), "{line}");

    conversation.round().await;
    healthy_echo(b.addr, 24).await;
    conversation.finish().await;
    assert_still_serving(&mut b);
}

#[tokio::test]
async fn client_half_close_without_backend_close_ends_at_the_half_close_timeout() {
    let (backend, mut b) = scripted_balancer("60s", "500ms").await;
    let (go, go_rx) = oneshot::channel();
    let mut watch = backend.arm(Script::NeverClose { go: go_rx });
    let mut client = connect(b.addr).await;
    let peer = client.local_addr().expect("addr");
    watch.accepted().await;
    let request = b"last words";
    within(client.write_all(request)).await.expect("send");
    let started = Instant::now();
    within(client.shutdown()).await.expect("shutdown");

    for seed in 31..=33 {
        healthy_echo(b.addr, seed).await;
    }

    let ending = "half-close timeout (client closed, the other side did not)";
    assert_cut_off(&b, &mut client, peer, started, (request.len(), 0), ending).await;
    // The backend's side is closed too: a late write from it meets a reset.
    go.send(()).expect("backend waiting");
    let seen = watch.seen().await;
    assert_same(&seen.received, request, "what the backend received");
    assert_eq!(seen.end, Ok(()), "{seen:?}");
    assert!(
        seen.late_write_reset.is_some(),
        "the balancer still holds the backend connection: {seen:?}"
    );

    healthy_echo(b.addr, 34).await;
    assert_still_serving(&mut b);
}

// ---------------------------------------------------------------------------------------
// Hostile backends

#[tokio::test]
async fn backend_that_never_answers_is_cut_off_at_the_idle_timeout() {
    let (backend, mut b) = scripted_balancer("500ms", "10s").await;
    let mut watch = backend.arm(Script::Mute);
    let mut client = connect(b.addr).await;
    let peer = client.local_addr().expect("addr");
    watch.accepted().await;
    let request = b"GET / HTTP/1.1\r\nHost: ballast\r\n\r\n";
    let started = Instant::now();
    within(client.write_all(request)).await.expect("send");

    for seed in 41..=43 {
        healthy_echo(b.addr, seed).await;
    }

    assert_cut_off(
        &b,
        &mut client,
        peer,
        started,
        (request.len(), 0),
        "idle timeout",
    )
    .await;
    let seen = watch.seen().await;
    assert_same(&seen.received, request, "what the backend received");
    assert_eq!(seen.end, Ok(()), "the backend sees EOF: {seen:?}");

    healthy_echo(b.addr, 44).await;
    assert_still_serving(&mut b);
}

#[tokio::test]
async fn backend_reset_mid_stream_closes_its_client_only() {
    let (backend, mut b) = scripted_balancer("60s", "60s").await;
    let mut conversation = Conversation::open(b.addr, 51).await;
    let partial = pattern(52, 48 * 1024);
    let (go, go_rx) = oneshot::channel();
    let mut watch = backend.arm(Script::ResetAfter {
        bytes: partial.clone(),
        go: go_rx,
    });
    let mut client = connect(b.addr).await;
    let peer = client.local_addr().expect("addr");
    watch.accepted().await;
    let mut got = vec![0u8; partial.len()];
    within(client.read_exact(&mut got))
        .await
        .expect("the partial response");
    assert_same(&got, &partial, "partial response");

    go.send(()).expect("backend waiting");
    let reset_at = Instant::now();
    let (rest, end) = read_to_close(&mut client).await;
    let took = reset_at.elapsed();
    assert!(rest.is_empty(), "{} bytes after the reset", rest.len());
    assert!(
        matches!(end, Ok(()) | Err(io::ErrorKind::ConnectionReset)),
        "the client sees EOF or a reset: {end:?}"
    );
    assert!(took < PROMPT, "client closed {took:?} after the reset");
    let seen = watch.seen().await;
    assert_eq!(seen.end, Ok(()), "the backend sent its bytes: {seen:?}");
    let line = finished_line(&b, peer);
    assert!(
        line.contains(&format!(": 0 bytes up, {} bytes down,", partial.len()))
            && (line.contains(", backend error: ") || line.ends_with(", backend closed")),
        "{line}"
    );

    conversation.round().await;
    healthy_echo(b.addr, 53).await;
    conversation.finish().await;
    assert_still_serving(&mut b);
}

#[tokio::test]
async fn backend_that_closes_at_once_gives_the_client_eof_promptly() {
    let (backend, mut b) = scripted_balancer("60s", "60s").await;
    let mut conversation = Conversation::open(b.addr, 61).await;
    let watch = backend.arm(Script::CloseAtOnce);
    let started = Instant::now();
    let mut client = connect(b.addr).await;
    let peer = client.local_addr().expect("addr");
    let (got, end) = read_to_close(&mut client).await;
    let took = started.elapsed();
    assert!(got.is_empty(), "{} unexpected bytes", got.len());
    assert_eq!(end, Ok(()), "the client sees EOF");
    assert!(took < PROMPT, "EOF after {took:?}");
    watch.seen().await;
    // The client closes too; the connection ends as the backend began it.
    drop(client);
    let line = finished_line(&b, peer);
    assert!(
        line.contains(": 0 bytes up, 0 bytes down,") && line.ends_with(", backend closed"),
        "{line}"
    );

    conversation.round().await;
    healthy_echo(b.addr, 62).await;
    conversation.finish().await;
    assert_still_serving(&mut b);
}

#[tokio::test]
async fn backend_half_close_without_client_close_ends_at_the_half_close_timeout() {
    let (backend, mut b) = scripted_balancer("60s", "500ms").await;
    let greeting: &[u8] = b"220 ready, and gone\r\n";
    let mut watch = backend.arm(Script::GreetAndHalfClose { greeting });
    let mut client = connect(b.addr).await;
    let peer = client.local_addr().expect("addr");
    watch.accepted().await;
    let (got, end) = read_to_close(&mut client).await;
    // The clock started when the relay saw the backend's EOF, before ours arrived.
    let started = Instant::now();
    assert_same(&got, greeting, "greeting");
    assert_eq!(end, Ok(()), "the client sees the backend's EOF");

    for seed in 71..=73 {
        healthy_echo(b.addr, seed).await;
    }

    // The client keeps its side open; the balancer must close it by itself.
    let line = finished_line(&b, peer);
    let waited = started.elapsed();
    assert!(
        line.contains(&format!(": 0 bytes up, {} bytes down,", greeting.len()))
            && line.ends_with(", half-close timeout (backend closed, the other side did not)"),
        "{line}"
    );
    assert!(
        waited >= SHORT - Duration::from_millis(100),
        "closed {waited:?} after the backend's EOF, before the limit"
    );
    let reset = reset_provoked(&mut client).await;
    assert!(
        reset.is_some(),
        "the balancer still holds the client connection"
    );
    let seen = watch.seen().await;
    assert_eq!(seen.end, Ok(()), "the backend sees EOF: {seen:?}");

    healthy_echo(b.addr, 74).await;
    assert_still_serving(&mut b);
}

// ---------------------------------------------------------------------------------------
// Hostile /load endpoints

/// How a fake `/load` endpoint answers.
#[derive(Clone, Copy, Debug)]
enum LoadAnswer {
    /// A well-formed reading.
    Good(&'static str),
    /// Reads the request and never answers.
    Silent,
    /// Sends a valid response one byte at a time, 40 ms apart.
    Trickle(&'static str),
    /// A 200 header, then 8 MiB of digits.
    Huge,
    /// Not HTTP at all: raw binary.
    Binary,
    /// A valid 200 header with a binary body.
    BinaryBody,
}

/// A response with `body` and a correct `Content-Length`.
fn load_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads a request head (up to the blank line); false if the peer went away first.
async fn read_request_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(n) if n > 0 && head.len() < 64 * 1024 => head.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// Serves one poll of a fake `/load` endpoint.
async fn answer_load(mut s: TcpStream, answer: LoadAnswer) {
    if !read_request_head(&mut s).await {
        return;
    }
    match answer {
        LoadAnswer::Good(body) => {
            let _ = s.write_all(&load_response(body)).await;
        }
        LoadAnswer::Silent => {
            // Holds the connection until the poller gives up on it.
            let mut sink = [0u8; 256];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        LoadAnswer::Trickle(body) => {
            for byte in load_response(body) {
                if s.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
        LoadAnswer::Huge => {
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n";
            if s.write_all(head).await.is_err() {
                return;
            }
            let digits: Vec<u8> = (0..64 * 1024).map(|i| b'0' + (i % 10) as u8).collect();
            for _ in 0..128 {
                if s.write_all(&digits).await.is_err() {
                    return;
                }
            }
        }
        LoadAnswer::Binary => {
            let garbage: Vec<u8> = (0..=255u8).cycle().take(2048).collect();
            let _ = s.write_all(&garbage).await;
        }
        LoadAnswer::BinaryBody => {
            let body = [0xff, 0xfe, 0x00, 0x01, 0x80, 0x9c, 0x2e, 0x35];
            let mut response =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            response.extend_from_slice(&body);
            let _ = s.write_all(&response).await;
        }
    }
    let _ = s.shutdown().await;
}

/// A fake `/load` endpoint; every poll it accepts is reported on `polls`, and every poll
/// connection the poller closed while the endpoint held it is reported on `dropped`.
async fn load_endpoint(
    answer: LoadAnswer,
    polls: mpsc::UnboundedSender<()>,
    dropped: mpsc::UnboundedSender<()>,
) -> SocketAddr {
    let listener: TcpListener = listener().await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = polls.send(());
            let dropped = dropped.clone();
            tokio::spawn(async move {
                answer_load(s, answer).await;
                let _ = dropped.send(());
            });
        }
    });
    addr
}

/// A WorkloadSensitive configuration polling each backend's `load_addr` every 200 ms.
fn load_config(backends: &[(String, SocketAddr, SocketAddr)]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(name, addr, load)| {
            format!("        (name: \"{name}\", addr: \"{addr}\", load_addr: \"{load}\"),")
        })
        .collect();
    format!(
        "(\n    listen: \"127.0.0.1:0\",\n    algorithm: WorkloadSensitive,\n    load_poll: (interval: \"200ms\", timeout: \"200ms\"),\n    {NO_PROBES}\n    backends: [\n{}\n    ],\n)\n",
        list.join("\n")
    )
}

#[tokio::test]
async fn hostile_load_endpoints_leave_the_balancer_serving() {
    // (name, answer, what the warning must say)
    let endpoints: [(&str, LoadAnswer, &str); 9] = [
        ("slow", LoadAnswer::Silent, "timed out after 200ms"),
        ("trickle", LoadAnswer::Trickle("5"), "timed out after 200ms"),
        (
            "huge",
            LoadAnswer::Huge,
            "bad response: body larger than 4 KiB",
        ),
        ("binary", LoadAnswer::Binary, "bad response: not HTTP/1.x"),
        (
            "binary-body",
            LoadAnswer::BinaryBody,
            "bad load reading: not text",
        ),
        (
            "negative",
            LoadAnswer::Good("-5"),
            "bad load reading: -5 is outside 0-100",
        ),
        (
            "over",
            LoadAnswer::Good("250"),
            "bad load reading: 250 is outside 0-100",
        ),
        (
            "nan",
            LoadAnswer::Good("NaN"),
            "bad load reading: \"NaN\" is not a number",
        ),
        ("good", LoadAnswer::Good("12.5"), ""),
    ];
    let mut backends = Vec::new();
    let mut polled = Vec::new();
    let mut dropped = Vec::new();
    for (name, answer, _) in endpoints {
        let (poll_tx, poll_rx) = mpsc::unbounded_channel();
        let (drop_tx, drop_rx) = mpsc::unbounded_channel();
        let load = load_endpoint(answer, poll_tx, drop_tx).await;
        backends.push((name.to_string(), echo_backend().await, load));
        polled.push(poll_rx);
        dropped.push(drop_rx);
    }
    let mut b = Balancer::start(&load_config(&backends));

    // Keep serving while the pollers meet their endpoints: each endpoint polled three times.
    let serve = async {
        for seed in 81..=100 {
            healthy_echo(b.addr, seed).await;
        }
    };
    let polls = async {
        for rx in &mut polled {
            for _ in 0..3 {
                within(rx.recv()).await.expect("endpoint task alive");
            }
        }
    };
    tokio::join!(serve, polls);
    // Connections the poller gave up on were closed, not leaked: the silent endpoint saw
    // its first two polls go away.
    for _ in 0..2 {
        within(dropped[0].recv())
            .await
            .expect("endpoint task alive");
    }

    for ((name, _, load), (_, _, reason)) in backends.iter().zip(endpoints) {
        let prefix = format!("backend {name}: load readings from http://{load}/load ");
        if reason.is_empty() {
            let line = b.log.wait_for(1, |l| l.contains(&prefix));
            assert!(line.contains("are good (12.5%)"), "{line}");
            continue;
        }
        let line = b.log.wait_for(1, |l| l.contains(&prefix));
        eprintln!("{line}");
        assert!(
            line.contains(" WARN ")
                && line.contains(&format!("failing: {reason}"))
                && line.contains("counts as unknown"),
            "backend {name}: {line}"
        );
        // Logged when readings go bad, not at every failing poll.
        let times = b.log.count(|l| l.contains(&prefix));
        assert_eq!(times, 1, "backend {name}: warned {times} times");
    }

    // Still serving, on every backend: each is an echo backend, the poll is not a health check.
    let mut clients = JoinSet::new();
    for seed in 101..=118 {
        clients.spawn(healthy_echo(b.addr, seed));
    }
    while let Some(done) = within(clients.join_next()).await {
        done.expect("healthy client");
    }
    let served: Vec<String> = b
        .log
        .snapshot()
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once(" -> ")?;
            Some(rest.split(" (").next()?.to_string())
        })
        .collect();
    let names: Vec<String> = tally(&served).into_keys().collect();
    assert!(
        names.len() >= 2,
        "connections should spread over backends of unknown load, went to {names:?}"
    );
    assert_still_serving(&mut b);
}

// ---------------------------------------------------------------------------------------
// Many at once

/// An echo backend whose listen backlog takes a burst of thousands of connects at once
/// (tokio's default backlog of 1024 would drop SYNs and stall connects for a second).
fn deep_echo_backend() -> SocketAddr {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.set_nonblocking(true).expect("nonblocking");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(4096).expect("listen");
    let listener = TcpListener::from_std(socket.into()).expect("tokio listener");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(play(s, Script::Echo));
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_connections_each_echo_byte_exact() {
    const CONNECTIONS: usize = 2_000;
    const SIZE: usize = 1024;
    let backend = deep_echo_backend();
    let mut b = Balancer::start(&config_with(
        "RoundRobin",
        &[("echo", backend, 1)],
        "timeouts: (connect: \"5s\"),",
    ));
    let addr = b.addr;
    // Every connection echoes its pattern, then waits until all of them have: 2,000 relays
    // open end to end at the same moment. Then each half-closes and expects a clean EOF.
    let all_open = Arc::new(Barrier::new(CONNECTIONS));
    let echoed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for i in 0..CONNECTIONS {
        let all_open = Arc::clone(&all_open);
        let echoed = Arc::clone(&echoed);
        clients.spawn(async move {
            let data = pattern(1_000_000 + i as u64, SIZE);
            let mut s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            s.write_all(&data).await.map_err(|e| format!("send: {e}"))?;
            let mut back = vec![0u8; SIZE];
            s.read_exact(&mut back)
                .await
                .map_err(|e| format!("echo: {e}"))?;
            if back != data {
                return Err(format!("connection {i}: echo differs"));
            }
            echoed.fetch_add(1, Ordering::Relaxed);
            all_open.wait().await;
            s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)
                .await
                .map_err(|e| format!("EOF: {e}"))?;
            if !rest.is_empty() {
                return Err(format!("connection {i}: {} stray bytes", rest.len()));
            }
            Ok::<(), String>(())
        });
    }
    let mut exact = 0;
    let mut failures = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(done) = clients.join_next().await {
            match done.expect("client task") {
                Ok(()) => exact += 1,
                Err(e) => failures.push(e),
            }
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "timed out: {} of {CONNECTIONS} echoed, {exact} finished, failures {failures:?}",
        echoed.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(exact, CONNECTIONS);
    eprintln!(
        "{CONNECTIONS} concurrent connections echoed in {:?}",
        started.elapsed()
    );
    healthy_echo(b.addr, 1).await;
    assert_still_serving(&mut b);
}
