//! A small authoritative-only DNS server on loopback, for tests of name resolution: it
//! answers `A` and `AAAA` queries (RFC 1035, RFC 3596) from a table the test changes while
//! it runs, over UDP and over TCP on the same port, and can be told to fail: every query,
//! or the queries of one record type only (an `AAAA` query timing out while `A` answers).
//!
//! Every query is peer input: a malformed packet is ignored, never a panic. Messages are
//! parsed and built with `hickory-proto`.
//!
//! This file is also the test server of the unit tests in `src/dns.rs` (through `#[path]`),
//! so it uses nothing else of `tests/common`.

#![allow(dead_code)] // each test uses its own subset

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The TTL of every answer, in seconds, unless [`DnsServer::set_ttl`] says otherwise.
pub(crate) const TTL: u32 = 1;

/// Upper bound for a wait here (a query count, an idle TCP client).
const WAIT: Duration = Duration::from_secs(10);

/// The largest answer sent over UDP (RFC 1035 section 4.2.1; the server ignores EDNS): a
/// longer one goes out truncated, and the client asks again over TCP.
const UDP_MAX: usize = 512;

/// TCP clients served at once; more are closed at once.
const TCP_CLIENTS: usize = 64;

/// How the server treats queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Answers from the table: the addresses, an empty answer for a name with none of the
    /// type asked, `NXDOMAIN` for a name not in the table.
    Answer,
    /// Reads queries and answers none, like a dead server (the client times out).
    Silent,
    /// Answers every query with `SERVFAIL`.
    ServFail,
}

struct Shared {
    /// Name (case-insensitive, fully qualified) → its addresses.
    table: Mutex<HashMap<Name, Vec<IpAddr>>>,
    /// The mode of every query type without one of its own.
    mode: Mutex<Mode>,
    /// Query types with a mode of their own ([`DnsServer::set_mode_for`]).
    modes_for: Mutex<HashMap<RecordType, Mode>>,
    /// The TTL of the answers, in seconds.
    ttl: AtomicU32,
    /// Well-formed queries received, over UDP and TCP, whatever the mode.
    queries: watch::Sender<usize>,
}

/// A running test DNS server; stops when dropped.
pub(crate) struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds `127.0.0.1:0` over UDP, and TCP on the same port, and serves both on tasks of
    /// the current runtime. Starts answering in [`Mode::Answer`] with an empty table.
    pub(crate) async fn start() -> DnsServer {
        let (udp, tcp) = bind().await;
        let addr = udp.local_addr().expect("DNS server address");
        let shared = Arc::new(Shared {
            table: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Answer),
            modes_for: Mutex::new(HashMap::new()),
            ttl: AtomicU32::new(TTL),
            queries: watch::Sender::new(0),
        });
        let tasks = vec![
            tokio::spawn(serve_udp(udp, Arc::clone(&shared))),
            tokio::spawn(serve_tcp(tcp, Arc::clone(&shared))),
        ];
        DnsServer {
            addr,
            shared,
            tasks,
        }
    }

    /// The address to send queries to, UDP or TCP.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `name` resolve to `addrs` (IPv4 ones in `A` answers, IPv6 ones in `AAAA`). An
    /// empty `addrs` makes a name that exists with no addresses.
    pub(crate) fn set(&self, name: &str, addrs: &[IpAddr]) {
        let mut table = self.shared.table.lock().expect("table lock");
        table.insert(fqdn(name), addrs.to_vec());
    }

    /// Makes `name` unknown: `NXDOMAIN`.
    pub(crate) fn remove(&self, name: &str) {
        let mut table = self.shared.table.lock().expect("table lock");
        table.remove(&fqdn(name));
    }

    /// Sets how the server treats every query from now on, whatever its type (the modes
    /// [`DnsServer::set_mode_for`] gave single types are forgotten).
    pub(crate) fn set_mode(&self, mode: Mode) {
        self.shared.modes_for.lock().expect("modes lock").clear();
        *self.shared.mode.lock().expect("mode lock") = mode;
    }

    /// Sets how the server treats the queries of `record_type` (`A` or `AAAA`) from now on,
    /// the other types keeping theirs: an `AAAA` query can time out while `A` answers.
    pub(crate) fn set_mode_for(&self, record_type: RecordType, mode: Mode) {
        let mut modes = self.shared.modes_for.lock().expect("modes lock");
        modes.insert(record_type, mode);
    }

    /// Sets the TTL of the answers from now on, in seconds.
    pub(crate) fn set_ttl(&self, seconds: u32) {
        self.shared.ttl.store(seconds, Ordering::Relaxed);
    }

    /// Well-formed queries received so far, answered or not (`A` and `AAAA` count apart).
    pub(crate) fn queries(&self) -> usize {
        *self.shared.queries.borrow()
    }

    /// Waits until at least `count` queries have been received in all, within 10 s.
    pub(crate) async fn wait_queries(&self, count: usize) {
        let mut queries = self.shared.queries.subscribe();
        let waited = tokio::time::timeout(WAIT, queries.wait_for(|n| *n >= count)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the DNS server did not get {count} queries in {WAIT:?}, only {}",
            self.queries()
        );
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A name as the table keys it.
fn fqdn(name: &str) -> Name {
    let mut name = Name::from_ascii(name).expect("a test name is a valid name");
    name.set_fqdn(true);
    name
}

/// A UDP socket on an ephemeral loopback port and a TCP listener on the same port, trying
/// another port when the TCP one is taken.
async fn bind() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS UDP");
        let addr = udp.local_addr().expect("DNS UDP address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP in 20 tries");
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    // Longer than any query a resolver sends; a longer datagram is cut and fails to parse.
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(answer) = answer(&shared, &buf[..len], true) {
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped (and every client task aborted with it) when this task is aborted.
    let mut clients = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while clients.try_join_next().is_some() {}
        if clients.len() < TCP_CLIENTS {
            clients.spawn(serve_tcp_client(stream, Arc::clone(&shared)));
        }
    }
}

/// Serves one TCP client: messages framed by a two-byte length (RFC 1035 section 4.2.2),
/// until it closes, sends something unreadable, or is idle for 10 s.
async fn serve_tcp_client(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            let mut query = vec![0u8; usize::from(len)];
            stream.read_exact(&mut query).await?;
            Ok::<_, std::io::Error>(query)
        };
        let Ok(Ok(query)) = tokio::time::timeout(WAIT, read).await else {
            return;
        };
        let Some(answer) = answer(&shared, &query, false) else {
            continue;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(2 + answer.len());
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The encoded answer to the message `packet`, or `None` for no answer (not a query, or
/// [`Mode::Silent`]). Over `udp`, an answer longer than [`UDP_MAX`] is sent truncated.
fn answer(shared: &Shared, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    shared.queries.send_modify(|n| *n += 1);
    let own_mode = match query.queries.as_slice() {
        [question] => {
            let modes = shared.modes_for.lock().expect("modes lock");
            modes.get(&question.query_type()).copied()
        }
        _ => None,
    };
    let mode = own_mode.unwrap_or_else(|| *shared.mode.lock().expect("mode lock"));
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.authoritative = true;
    response.add_queries(query.queries.iter().cloned());
    response.metadata.response_code = match mode {
        Mode::Silent => return None,
        Mode::ServFail => ResponseCode::ServFail,
        Mode::Answer if query.metadata.op_code != OpCode::Query => ResponseCode::NotImp,
        Mode::Answer => match query.queries.as_slice() {
            [question] => {
                let table = shared.table.lock().expect("table lock");
                match table.get(question.name()) {
                    None => ResponseCode::NXDomain,
                    Some(addrs) => {
                        let name = question.name().clone();
                        let ttl = shared.ttl.load(Ordering::Relaxed);
                        for addr in addrs {
                            let data = match (question.query_type(), addr) {
                                (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                                (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                                _ => continue,
                            };
                            response.add_answer(Record::from_rdata(name.clone(), ttl, data));
                        }
                        ResponseCode::NoError
                    }
                }
            }
            _ => ResponseCode::FormErr,
        },
    };
    let encoded = response.to_vec().ok()?;
    if udp && encoded.len() > UDP_MAX {
        response.answers.clear();
        response.metadata.truncation = true;
        return response.to_vec().ok();
    }
    Some(encoded)
}
