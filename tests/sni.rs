//! Routing by TLS server name end to end, with real TLS: rustls clients complete whole
//! handshakes through ballast with rustls backends whose certificates (made by rcgen, signed
//! by one test CA the clients trust) are for different names, so a client that reached the
//! wrong backend fails its handshake. Each backend then writes its name and the server name
//! it saw, and the tests compare that exactly.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA: it signs every backend's certificate, and clients trust it alone.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        Pki {
            ca: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    /// A server configuration with a certificate for `names`.
    fn server(&self, names: &[&str]) -> Arc<ServerConfig> {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &self.ca)
            .expect("sign");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server config");
        Arc::new(config)
    }

    /// A client configuration that trusts the CA only.
    fn client(&self) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("CA root");
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

/// A TLS backend with a certificate for `names`: after the handshake it writes
/// `"NAME SNI"` (the server name it saw, lower-cased, or `-`) and closes with a
/// close_notify.
async fn tls_backend(pki: &Pki, name: &'static str, names: &[&str]) -> SocketAddr {
    let acceptor = TlsAcceptor::from(pki.server(names));
    spawn_backend(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(s).await else {
                return;
            };
            let sni = tls
                .get_ref()
                .1
                .server_name()
                .map_or("-".to_string(), str::to_ascii_lowercase);
            if tls
                .write_all(format!("{name} {sni}").as_bytes())
                .await
                .is_ok()
            {
                let _ = tls.shutdown().await;
            }
        }
    })
    .await
}

/// A TLS client through `addr` asking for `name` (sending it as SNI unless `sni` is false):
/// the whole handshake, then everything the backend writes.
async fn tls_get(pki: &Pki, addr: SocketAddr, name: &str, sni: bool) -> std::io::Result<String> {
    let mut config = pki.client();
    config.enable_sni = sni;
    let connector = TlsConnector::from(Arc::new(config));
    let server = ServerName::try_from(name.to_string()).expect("server name");
    let tcp = connect(addr).await;
    let mut tls = within(connector.connect(server, tcp)).await?;
    let mut out = String::new();
    within(tls.read_to_string(&mut out)).await?;
    Ok(out)
}

/// A TLS client through `addr` asking for `name` whose ClientHello arrives one byte per TCP
/// segment (`TCP_NODELAY`, one write per byte) and in TLS records of at most 64 bytes,
/// after `prefix` (a PROXY header, say); then the rest of the handshake and everything the
/// backend writes. Blocking, with every socket wait bounded.
fn trickled_get(
    config: ClientConfig,
    addr: SocketAddr,
    name: &str,
    prefix: &[u8],
) -> std::io::Result<String> {
    let mut config = config;
    config.max_fragment_size = Some(64);
    let server = ServerName::try_from(name.to_string()).expect("server name");
    let mut tls = ClientConnection::new(Arc::new(config), server).expect("client");
    let mut hello = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut hello)?;
    }
    // Several records: the first one's length is less than what follows its header.
    let first = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
    assert!(
        first + 5 < hello.len(),
        "one record of {} bytes",
        hello.len()
    );
    let mut socket = std::net::TcpStream::connect(addr)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(WAIT))?;
    socket.set_write_timeout(Some(WAIT))?;
    socket.write_all(prefix)?;
    for byte in &hello {
        socket.write_all(std::slice::from_ref(byte))?;
        std::thread::yield_now();
    }
    let mut out = String::new();
    rustls::Stream::new(&mut tls, &mut socket).read_to_string(&mut out)?;
    Ok(out)
}

/// The backends of the routing tests, each with its certificate.
struct Backends {
    pki: Pki,
    api: SocketAddr,
    www: SocketAddr,
    fallback: SocketAddr,
}

impl Backends {
    async fn start() -> Backends {
        let pki = Pki::new();
        let api = tls_backend(&pki, "api-1", &["api.example.com", "new.example.org"]).await;
        let www = tls_backend(&pki, "www-1", &["www.example.com", "*.example.com"]).await;
        let fallback = tls_backend(
            &pki,
            "fallback-1",
            &["fallback.example.org", "*.example.org"],
        )
        .await;
        Backends {
            pki,
            api,
            www,
            fallback,
        }
    }

    /// `edge` listens and routes `api.example.com` to `api`, `www.example.com` and every
    /// other name under example.com to `www`; `own` is its own backends' entry (or empty),
    /// `extra` more of its keys.
    fn config(&self, own: &str, extra: &str) -> String {
        let Backends { api, www, .. } = self;
        format!(
            r#"(
    services: [
        (
            name: "edge",
            listen: "127.0.0.1:0",
            routes: [
                (server_names: ["api.example.com"], service: "api"),
                (server_names: ["www.example.com", "*.example.com"], service: "www"),
            ],
            {own}
            {extra}
        ),
        (name: "api", algorithm: RoundRobin, backends: [(name: "api-1", addr: "{api}")]),
        (name: "www", algorithm: RoundRobin, backends: [(name: "www-1", addr: "{www}")]),
    ],
    health: (interval: "1h"),
    admin: "127.0.0.1:0",
)"#
        )
    }

    /// `edge`'s own backends: the TLS fallback.
    fn own(&self) -> String {
        format!(
            "algorithm: RoundRobin, backends: [(name: \"fallback-1\", addr: \"{}\")],",
            self.fallback
        )
    }
}

/// Reads until the connection ends; true when it ended without a byte from ballast.
async fn closed_without_a_byte(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match within(s.read(&mut buf)).await {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// The log's warnings about client `client`.
fn warnings_about(b: &Balancer, client: SocketAddr) -> Vec<String> {
    let who = format!("] {client}: ");
    b.log
        .snapshot()
        .into_iter()
        .filter(|l| l.contains(" WARN ") && l.contains(&who))
        .collect()
}

/// Exact names, a wildcard and a name in capitals each reach their service's backend: the
/// handshake completes against that backend's certificate, the backend saw the name, the
/// access line names it, and the connections are the listening service's (accepted) and the
/// target's backends' (relayed).
#[tokio::test]
async fn each_server_name_reaches_its_services_backend() {
    let backends = Backends::start().await;
    let b = Balancer::start(&backends.config(&backends.own(), ""));
    for (name, expected, via) in [
        ("api.example.com", "api-1 api.example.com", "api"),
        ("www.example.com", "www-1 www.example.com", "www"),
        ("shop.example.com", "www-1 shop.example.com", "www"),
        ("API.Example.COM", "api-1 api.example.com", "api"),
    ] {
        let got = tls_get(&backends.pki, b.addr, name, true)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, expected, "{name}");
        let (backend, addr) = match via {
            "api" => ("api-1", backends.api),
            _ => ("www-1", backends.www),
        };
        let sni = name.to_ascii_lowercase();
        let line = format!(" -> {backend} ({addr}) [sni {sni} via service {via}]: ");
        b.log.wait_for(1, |l| l.contains(&line));
    }
    let metrics = http_get(admin_addr(&b), "/metrics").await;
    for line in [
        "ballast_service_connections_accepted_total{service=\"edge\"} 4",
        "ballast_service_connections_accepted_total{service=\"api\"} 0",
        "ballast_backend_connections_total{service=\"api\",backend=\"api-1\"} 2",
        "ballast_backend_connections_total{service=\"www\",backend=\"www-1\"} 2",
        "ballast_backend_connections_total{service=\"edge\",backend=\"fallback-1\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

/// A ClientHello that arrives one byte per TCP segment, in records of 64 bytes, still
/// routes; so does one after a PROXY header (`accept_proxy`), whose address the access line
/// shows.
#[tokio::test]
async fn a_hello_in_pieces_and_after_a_proxy_header_still_routes() {
    let backends = Backends::start().await;
    let b = Balancer::start(&backends.config(&backends.own(), ""));
    let (config, addr) = (backends.pki.client(), b.addr);
    let got = within(tokio::task::spawn_blocking(move || {
        trickled_get(config, addr, "api.example.com", b"")
    }))
    .await
    .expect("client")
    .expect("handshake");
    assert_eq!(got, "api-1 api.example.com");
    b.log
        .wait_for(1, |l| l.contains("[sni api.example.com via service api]: "));

    let proxied = Balancer::start(&backends.config(&backends.own(), "accept_proxy: true,"));
    let (config, addr) = (backends.pki.client(), proxied.addr);
    let got = within(tokio::task::spawn_blocking(move || {
        trickled_get(
            config,
            addr,
            "shop.example.com",
            b"PROXY TCP4 192.0.2.7 198.51.100.9 4242 443\r\n",
        )
    }))
    .await
    .expect("client")
    .expect("handshake");
    assert_eq!(got, "www-1 shop.example.com");
    let line = format!(
        "] edge: 192.0.2.7:4242 -> www-1 ({}) [sni shop.example.com via service www]: ",
        backends.www
    );
    proxied.log.wait_for(1, |l| l.contains(&line));
}

/// A ClientHello without a server name, or with one no route takes, goes to the service's
/// own backends; so does a client whose first byte is not a TLS handshake, its bytes
/// relayed unchanged.
#[tokio::test]
async fn unrouted_clients_go_to_the_services_own_backends() {
    let backends = Backends::start().await;
    let b = Balancer::start(&backends.config(&backends.own(), ""));
    let got = tls_get(&backends.pki, b.addr, "fallback.example.org", false)
        .await
        .expect("no SNI");
    assert_eq!(got, "fallback-1 -");
    let got = tls_get(&backends.pki, b.addr, "other.example.org", true)
        .await
        .expect("unknown name");
    assert_eq!(got, "fallback-1 other.example.org");
    let fallback = backends.fallback;
    for label in ["[no sni]", "[sni other.example.org, no route]"] {
        let line = format!(" -> fallback-1 ({fallback}) {label}: ");
        b.log.wait_for(1, |l| l.contains(&line));
    }

    // Not TLS: an echo backend gets the bytes as sent.
    let echo = echo_backend().await;
    let own = format!("algorithm: RoundRobin, backends: [(name: \"echo\", addr: \"{echo}\")],");
    let plain = Balancer::start(&backends.config(&own, ""));
    let sent = b"GET / HTTP/1.0\r\n\r\n".to_vec();
    assert_eq!(echo_through(plain.addr, sent.clone()).await, sent);
    let line = format!(
        " -> echo ({echo}) [not TLS]: {n} bytes up, {n} bytes down, ",
        n = sent.len()
    );
    plain.log.wait_for(1, |l| l.contains(&line));
}

/// A service with routes and no backends of its own closes each client that no route
/// takes (no server name, an unknown one, not TLS) with one warning saying why, and serves
/// the others.
#[tokio::test]
async fn without_own_backends_unrouted_clients_are_closed_with_one_warning() {
    let backends = Backends::start().await;
    let b = Balancer::start(&backends.config("", ""));

    let mut plain = connect(b.addr).await;
    let me = plain.local_addr().expect("addr");
    within(plain.write_all(b"GET / HTTP/1.0\r\n\r\n"))
        .await
        .expect("write");
    assert!(closed_without_a_byte(&mut plain).await);
    let access = format!("] edge: {me} -> - [not TLS]: 0 bytes up, 0 bytes down, ");
    b.log.wait_for(1, |l| l.contains(&access));
    assert_eq!(
        warnings_about(&b, me)
            .iter()
            .map(|l| message(l))
            .collect::<Vec<_>>(),
        [format!(
            "{me}: not a TLS ClientHello (the first byte is not a TLS handshake record), and service edge has no backends of its own; closing the client"
        )]
    );

    for (name, sni, label, why) in [
        (
            "other.example.org",
            true,
            "[sni other.example.org, no route]",
            "no route for server name \"other.example.org\"",
        ),
        (
            "api.example.com",
            false,
            "[no sni]",
            "a ClientHello without a server name",
        ),
    ] {
        assert!(
            tls_get(&backends.pki, b.addr, name, sni).await.is_err(),
            "{label}"
        );
        let access = format!(" -> - {label}: 0 bytes up, 0 bytes down, ");
        let line = b.log.wait_for(1, |l| l.contains(&access));
        let client: SocketAddr = message(&line)
            .strip_prefix("edge: ")
            .and_then(|rest| rest.split_once(" -> "))
            .and_then(|(client, _)| client.parse().ok())
            .expect("client address");
        assert_eq!(
            warnings_about(&b, client)
                .iter()
                .map(|l| message(l))
                .collect::<Vec<_>>(),
            [format!(
                "{client}: {why}, and service edge has no backends of its own; closing the client"
            )]
        );
    }

    // Routed clients are served all the same.
    let got = tls_get(&backends.pki, b.addr, "www.example.com", true)
        .await
        .expect("routed");
    assert_eq!(got, "www-1 www.example.com");
}

/// A client whose ClientHello does not arrive whole within `timeouts.client_hello` (silent,
/// or stalled after its first bytes) is closed at the limit, alone; one that closes halfway
/// is closed at once; a good client meanwhile is served.
#[tokio::test]
async fn a_slow_client_hello_is_closed_alone() {
    let backends = Backends::start().await;
    let b =
        Balancer::start(&backends.config(&backends.own(), "timeouts: (client_hello: \"300ms\"),"));
    let mut silent = connect(b.addr).await;
    let mut stalled = connect(b.addr).await;
    within(stalled.write_all(&[22, 3, 1, 0, 200, 1]))
        .await
        .expect("write");
    let mut cut = connect(b.addr).await;
    within(cut.write_all(&[22, 3, 1])).await.expect("write");
    within(cut.shutdown()).await.expect("half-close");

    let got = tls_get(&backends.pki, b.addr, "api.example.com", true)
        .await
        .expect("routed");
    assert_eq!(got, "api-1 api.example.com");

    assert!(closed_without_a_byte(&mut cut).await);
    assert!(closed_without_a_byte(&mut silent).await);
    assert!(closed_without_a_byte(&mut stalled).await);
    for (client, why) in [
        (&cut, "closed before its TLS ClientHello ended"),
        (&silent, "no complete TLS ClientHello within 300ms"),
        (&stalled, "no complete TLS ClientHello within 300ms"),
    ] {
        let me = client.local_addr().expect("addr");
        let warning = format!("] {me}: {why}; closing the client");
        b.log.wait_for(1, |l| l.contains(&warning));
        let access = format!("] edge: {me} -> -: 0 bytes up, 0 bytes down, ");
        b.log
            .wait_for(1, |l| l.contains(&access) && l.ends_with(why));
    }
}

/// A reload that adds a route and moves a target to another backend takes effect for new
/// clients: the routes are rebuilt with the running services.
#[tokio::test]
async fn a_reload_rebuilds_the_routes() {
    let backends = Backends::start().await;
    let config = backends.config(&backends.own(), "");
    let b = Balancer::start(&config);
    let got = tls_get(&backends.pki, b.addr, "new.example.org", true)
        .await
        .expect("before");
    assert_eq!(got, "fallback-1 new.example.org");

    let api2 = tls_backend(
        &backends.pki,
        "api-2",
        &["api.example.com", "new.example.org"],
    )
    .await;
    let reloaded = config
        .replace(
            "(server_names: [\"api.example.com\"], service: \"api\")",
            "(server_names: [\"api.example.com\", \"new.example.org\"], service: \"api\")",
        )
        .replace(
            &format!("(name: \"api-1\", addr: \"{}\")", backends.api),
            &format!("(name: \"api-2\", addr: \"{api2}\")"),
        );
    assert_ne!(reloaded, config);
    let verdict = b.reload(&reloaded);
    assert!(verdict.contains("reloaded"), "{verdict}");
    for (name, expected) in [
        ("new.example.org", "api-2 new.example.org"),
        ("api.example.com", "api-2 api.example.com"),
    ] {
        let got = tls_get(&backends.pki, b.addr, name, true)
            .await
            .expect("after");
        assert_eq!(got, expected);
    }
}

/// A client still sending its ClientHello when a reload changes the routes is routed by the
/// routes in force once its ClientHello is whole: here its exact route is gone, and the
/// wildcard takes it to `www` (whose certificate covers `*.example.com`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_finished_after_a_reload_follows_the_new_routes() {
    let backends = Backends::start().await;
    let config = backends.config(&backends.own(), "");
    let b = Balancer::start(&config);
    let (client, addr) = (backends.pki.client(), b.addr);
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let talker = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let server = ServerName::try_from("api.example.com").expect("server name");
        let mut tls = ClientConnection::new(Arc::new(client), server).expect("client");
        let mut hello = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut hello)?;
        }
        let mut socket = std::net::TcpStream::connect(addr)?;
        socket.set_read_timeout(Some(WAIT))?;
        socket.write_all(&hello[..20])?;
        let _ = sent_tx.send(());
        let _ = go_rx.recv_timeout(WAIT);
        socket.write_all(&hello[20..])?;
        let mut out = String::new();
        rustls::Stream::new(&mut tls, &mut socket).read_to_string(&mut out)?;
        Ok(out)
    });
    sent_rx.recv_timeout(WAIT).expect("first bytes sent");
    let reloaded = config
        .replace(
            "(server_names: [\"api.example.com\"], service: \"api\"),",
            "",
        )
        .replace(
            &format!(
                "(name: \"api\", algorithm: RoundRobin, backends: [(name: \"api-1\", addr: \"{}\")]),",
                backends.api
            ),
            "",
        );
    assert_ne!(reloaded, config);
    let verdict = tokio::task::block_in_place(|| b.reload(&reloaded));
    assert!(verdict.contains("reloaded"), "{verdict}");
    go_tx.send(()).expect("client waiting");
    let got = within(talker).await.expect("client").expect("handshake");
    assert_eq!(got, "www-1 api.example.com");
}
