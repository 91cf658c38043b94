//! The test DNS server (`tests/common/dns.rs`) against a real resolver, `hickory-resolver`
//! asking it alone, over loopback: so a later test of ballast's name resolution can trust
//! what the server answers.
//!
//! - `A` and `AAAA` answers come from the table, and follow it as it changes (within the
//!   answers' 1 s TTL).
//! - An unknown name is `NXDOMAIN`; a silent or failing server is an error, and so is one
//!   that fails the queries of one record type alone.
//! - A long answer is truncated over UDP and fetched again over TCP.
//! - Malformed packets are ignored.
//!
//! Readiness is a query counted at the server or an answer; a change is polled for with a
//! bounded deadline.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::WAIT;
use common::dns::{DnsServer, Mode};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter()
        .map(|s| s.parse().expect("test address"))
        .collect()
}

/// A resolver that asks the server at `addr` only, over UDP (and TCP for a truncated answer)
/// or over TCP alone, with a short timeout, no retry and no hosts file.
fn resolver(addr: SocketAddr, tcp_only: bool) -> TokioResolver {
    let mut server = if tcp_only {
        NameServerConfig::tcp(addr.ip())
    } else {
        NameServerConfig::udp_and_tcp(addr.ip())
    };
    for connection in &mut server.connections {
        connection.port = addr.port();
    }
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    );
    let options: &mut ResolverOpts = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = Duration::from_millis(300);
    options.attempts = 0;
    options.use_hosts_file = ResolveHosts::Never;
    builder.build().expect("resolver")
}

/// The addresses of `name`, sorted, or the resolver's error.
async fn lookup(resolver: &TokioResolver, name: &str) -> Result<Vec<IpAddr>, NetError> {
    let answer = resolver.lookup_ip(name).await?;
    let mut addrs: Vec<IpAddr> = answer.iter().collect();
    addrs.sort_unstable();
    Ok(addrs)
}

#[tokio::test]
async fn answers_a_and_aaaa_from_the_table_and_follows_it() {
    let server = DnsServer::start().await;
    let resolver = resolver(server.addr(), false);
    server.set("web.test", &ips(&["127.0.0.2", "127.0.0.3", "::1"]));
    assert_eq!(
        lookup(&resolver, "web.test").await.expect("resolves"),
        ips(&["127.0.0.2", "127.0.0.3", "::1"])
    );
    // A and AAAA asked apart.
    assert_eq!(server.queries(), 2);
    // Case does not matter.
    server.set("Mixed.Test", &ips(&["127.0.0.4"]));
    assert_eq!(
        lookup(&resolver, "mixed.TEST").await.expect("resolves"),
        ips(&["127.0.0.4"])
    );

    // Down to one address: seen once the answers' TTL (1 s) has run out.
    server.set("web.test", &ips(&["127.0.0.3"]));
    let deadline = Instant::now() + WAIT;
    loop {
        let addrs = lookup(&resolver, "web.test").await.expect("resolves");
        if addrs == ips(&["127.0.0.3"]) {
            break;
        }
        assert_eq!(addrs, ips(&["127.0.0.2", "127.0.0.3", "::1"]), "old or new");
        assert!(Instant::now() < deadline, "the change was not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Removed: NXDOMAIN once the cached answer is gone.
    server.remove("web.test");
    let deadline = Instant::now() + WAIT;
    loop {
        match lookup(&resolver, "web.test").await {
            Err(e) if e.is_nx_domain() => break,
            Err(e) => panic!("not NXDOMAIN: {e}"),
            Ok(_) => assert!(Instant::now() < deadline, "the removal was not seen"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unknown_name_is_nxdomain_and_an_empty_one_has_no_records() {
    let server = DnsServer::start().await;
    let resolver = resolver(server.addr(), false);
    let e = lookup(&resolver, "nowhere.test")
        .await
        .expect_err("unknown");
    assert!(e.is_nx_domain(), "{e}");

    server.set("empty.test", &[]);
    let e = lookup(&resolver, "empty.test")
        .await
        .expect_err("no addresses");
    assert!(e.is_no_records_found() && !e.is_nx_domain(), "{e}");

    // IPv4 only: the AAAA query's empty answer leaves the A answer.
    server.set("v4.test", &ips(&["127.0.0.2"]));
    assert_eq!(
        lookup(&resolver, "v4.test").await.expect("resolves"),
        ips(&["127.0.0.2"])
    );
}

#[tokio::test]
async fn a_silent_or_failing_server_is_an_error_until_it_answers_again() {
    let server = DnsServer::start().await;
    let resolver = resolver(server.addr(), false);
    server.set("web.test", &ips(&["127.0.0.2"]));

    server.set_mode(Mode::Silent);
    let before = server.queries();
    let e = lookup(&resolver, "web.test").await.expect_err("silent");
    assert!(matches!(e, NetError::Timeout), "{e}");
    assert!(server.queries() > before, "the queries reached the server");

    server.set_mode(Mode::ServFail);
    let e = lookup(&resolver, "web.test").await.expect_err("SERVFAIL");
    assert!(
        matches!(
            e,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
        ),
        "{e}"
    );

    server.set_mode(Mode::Answer);
    assert_eq!(
        lookup(&resolver, "web.test").await.expect("resolves"),
        ips(&["127.0.0.2"])
    );
}

/// The addresses of `name`'s records of `record_type` alone, sorted, or the resolver's error.
async fn lookup_type(
    resolver: &TokioResolver,
    name: &str,
    record_type: RecordType,
) -> Result<Vec<IpAddr>, NetError> {
    let answer = resolver.lookup(name, record_type).await?;
    let mut addrs: Vec<IpAddr> = answer
        .answers()
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect();
    addrs.sort_unstable();
    Ok(addrs)
}

#[tokio::test]
async fn one_record_type_can_fail_while_the_other_answers() {
    let server = DnsServer::start().await;
    let resolver = resolver(server.addr(), false);
    server.set("web.test", &ips(&["127.0.0.2", "::2"]));

    server.set_mode_for(RecordType::AAAA, Mode::ServFail);
    assert_eq!(
        lookup_type(&resolver, "web.test", RecordType::A)
            .await
            .expect("A answers"),
        ips(&["127.0.0.2"])
    );
    let e = lookup_type(&resolver, "web.test", RecordType::AAAA)
        .await
        .expect_err("AAAA fails");
    assert!(
        matches!(
            e,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
        ),
        "{e}"
    );

    // The other way round, silent this time.
    server.set_mode(Mode::Answer);
    server.set_mode_for(RecordType::A, Mode::Silent);
    assert_eq!(
        lookup_type(&resolver, "web.test", RecordType::AAAA)
            .await
            .expect("AAAA answers"),
        ips(&["::2"])
    );
    let e = lookup_type(&resolver, "other.test", RecordType::A)
        .await
        .expect_err("A is silent");
    assert!(matches!(e, NetError::Timeout), "{e}");

    // `set_mode` is for every type: both answer again.
    server.set_mode(Mode::Answer);
    assert_eq!(
        lookup_type(&resolver, "web.test", RecordType::A)
            .await
            .expect("A answers"),
        ips(&["127.0.0.2"])
    );
    assert!(
        lookup_type(&resolver, "other.test", RecordType::A)
            .await
            .expect_err("no such name")
            .is_nx_domain()
    );
}

#[tokio::test]
async fn a_long_answer_goes_over_tcp() {
    let server = DnsServer::start().await;
    // 60 A records are beyond 512 bytes: truncated over UDP, then asked again over TCP.
    let many: Vec<IpAddr> = (1..=60u8).map(|i| IpAddr::from([127, 0, 1, i])).collect();
    server.set("many.test", &many);
    let udp = resolver(server.addr(), false);
    assert_eq!(lookup(&udp, "many.test").await.expect("resolves"), many);

    // And over TCP alone.
    let tcp = resolver(server.addr(), true);
    server.set("web.test", &ips(&["127.0.0.2", "::1"]));
    assert_eq!(
        lookup(&tcp, "web.test").await.expect("resolves"),
        ips(&["127.0.0.2", "::1"])
    );
}

#[tokio::test]
async fn malformed_packets_are_ignored() {
    let server = DnsServer::start().await;
    server.set("web.test", &ips(&["127.0.0.2"]));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    socket.connect(server.addr()).await.expect("connect");
    // Empty, short, a header claiming records that are not there, random bytes, and a
    // response (not a query).
    let packets: [&[u8]; 5] = [
        &[],
        &[0x12],
        &[0x12, 0x34, 1, 0, 0, 9, 0, 9, 0, 9, 0, 9],
        &[0x5a; 300],
        &[0x12, 0x34, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ];
    for packet in packets {
        socket.send(packet).await.expect("send");
    }
    // A TCP client that sends a length and then too little, then closes.
    let mut tcp = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect over TCP");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0, 40, 1, 2, 3])
        .await
        .expect("write");
    drop(tcp);

    // None of it was a query; the server still answers.
    let resolver = resolver(server.addr(), false);
    assert_eq!(
        lookup(&resolver, "web.test").await.expect("resolves"),
        ips(&["127.0.0.2"])
    );
    assert_eq!(
        server.queries(),
        2,
        "only the resolver's A and AAAA queries"
    );
}

#[tokio::test]
async fn queries_can_be_waited_for() {
    let server = DnsServer::start().await;
    let resolver = resolver(server.addr(), false);
    server.set("web.test", &ips(&["127.0.0.2"]));
    let lookups = tokio::spawn(async move {
        for _ in 0..3 {
            let _ = lookup(&resolver, "web.test").await;
        }
    });
    // Three lookups, two queries each (the 1 s TTL may serve the later ones from the cache,
    // so only the first pair is certain).
    server.wait_queries(2).await;
    lookups.await.expect("lookups");
    assert!(server.queries() >= 2);
}
