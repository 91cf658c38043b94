//! The admin listener end to end, against the real `ballast` binary: the status page, the
//! JSON status, the Prometheus metrics, the runtime API (drain, enable, weight) and its
//! effect on real connections, the bearer token, and hostile requests.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// --- helpers ---------------------------------------------------------------------------------

/// A configuration with the admin listener on an ephemeral loopback port, plus `extra`
/// top-level sections.
fn admin_config(algorithm: &str, backends: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    config_with(
        algorithm,
        backends,
        &format!("admin: \"127.0.0.1:0\",\n    {extra}"),
    )
}

fn start(config_text: &str) -> (Balancer, SocketAddr) {
    let b = Balancer::start(config_text);
    let admin = admin_addr(&b);
    (b, admin)
}

/// Admin answers are JSON.
trait JsonReply {
    fn json(&self) -> Value;
}

impl JsonReply for Reply {
    fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.body))
    }
}

/// Reads one response (head, then a `Content-Length` body unless it answers a HEAD) from
/// `reader`.
async fn read_reply(reader: &mut BufReader<TcpStream>, head_only: bool) -> Reply {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        let n = within(reader.read_line(&mut line)).await.expect("read");
        assert!(n > 0, "connection closed inside a response head: {head:?}");
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let status = head[0]
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {:?}", head[0]));
    let headers: Vec<(String, String)> = head[1..]
        .iter()
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().expect("content-length"));
    let length = if head_only { 0 } else { length };
    let mut body = vec![0u8; length];
    within(reader.read_exact(&mut body)).await.expect("body");
    Reply {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// Sends `raw` as is, half-closes, and reads the one response plus EOF.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let head_only = raw.starts_with(b"HEAD ");
    let mut s = connect(addr).await;
    within(s.write_all(raw)).await.expect("write");
    let _ = s.shutdown().await;
    let mut reader = BufReader::new(s);
    let reply = read_reply(&mut reader, head_only).await;
    let mut rest = Vec::new();
    within(reader.read_to_end(&mut rest)).await.expect("EOF");
    assert!(rest.is_empty(), "bytes after the response: {rest:?}");
    reply
}

/// `METHOD path` with `Connection: close` and `headers`.
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    exchange(addr, raw.as_bytes()).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[]).await
}

async fn post(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "POST", path, &[]).await
}

async fn status_json(admin: SocketAddr) -> Value {
    let reply = get(admin, "/api/status").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// The value of sample `name{service="default",backend="..."}` (or `name` without labels)
/// in `text`.
fn metric(text: &str, name: &str, backend: Option<&str>) -> Option<f64> {
    let series = match backend {
        Some(b) => format!("{name}{{service=\"default\",backend=\"{b}\"}} "),
        None => format!("{name} "),
    };
    sample(text, &series)
}

/// The value of the sample whose line starts with `series ` (name and labels) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    let series = format!("{} ", series.trim_end());
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value in {text}")))
}

async fn metrics(admin: SocketAddr) -> String {
    let reply = get(admin, "/metrics").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

/// Polls `probe` until it returns `Some`, for at most `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `/readyz` answers 200 ready: once a health check has passed.
async fn wait_ready(admin: SocketAddr) -> Reply {
    eventually("/readyz to say ready", || async {
        let reply = get(admin, "/readyz").await;
        (reply.status == 200 && reply.body == READY).then_some(reply)
    })
    .await
}

/// A backend that greets every connection with `name` and a newline, then echoes.
async fn greeting_echo_backend(name: &'static str) -> SocketAddr {
    spawn_backend(move |mut s| async move {
        if s.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
            echo(s).await;
        }
    })
    .await
}

/// Connects through the balancer and returns the stream and the greeting's name.
async fn greeted(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = connect(addr).await;
    let mut name = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        let n = within(s.read(&mut byte)).await.expect("greeting");
        assert_eq!(n, 1, "closed before a greeting: {name:?}");
        if byte[0] == b'\n' {
            break;
        }
        name.push(byte[0]);
    }
    (s, String::from_utf8(name).expect("name"))
}

async fn sequential_names(addr: SocketAddr, count: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        names.push(read_all(addr).await);
    }
    names
}

/// Backend `name` of the one service of the single-service form.
fn backend<'v>(status: &'v Value, name: &str) -> &'v Value {
    status["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {status}"))
}

// --- the status page -------------------------------------------------------------------------

#[tokio::test]
async fn status_page_is_self_contained_html() {
    let backends = [("alpha", named_backend("alpha").await, 1)];
    let (_b, admin) = start(&admin_config("RoundRobin", &backends, ""));

    let page = get(admin, "/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = &page.body;
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains(r#"<link rel="icon" href="data:,">"#));
    // It refreshes itself from the JSON API and draws its own chart.
    assert!(html.contains("fetch('/api/status'"), "no refresh");
    assert!(html.contains("<svg id=\"chart\""), "no chart");
    // The first paint needs no round trip: the status is embedded.
    assert!(html.contains("\"name\":\"alpha\""), "no embedded status");
    // No external asset of any kind.
    for needle in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "url(http",
        "@import",
        "<link rel=\"stylesheet\"",
    ] {
        assert!(!html.contains(needle), "external asset ({needle})");
    }

    let head = request(admin, "HEAD", "/", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn status_page_escapes_hostile_backend_names() {
    let name = "</script><b>x</b>";
    let backends = [(name, named_backend("x").await, 1)];
    let (_b, admin) = start(&admin_config("RoundRobin", &backends, ""));
    let html = get(admin, "/").await.body;
    assert!(!html.contains(name), "raw name in the page");
    assert!(
        html.contains("\\u003c/script>\\u003cb>x\\u003c/b>"),
        "{html}"
    );
    // The JSON API carries it as it is.
    assert_eq!(backend(&status_json(admin).await, name)["name"], name);
}

#[tokio::test]
async fn status_page_of_two_services_embeds_both_and_acts_per_service() {
    let (web, api) = (named_backend("w1").await, named_backend("a1").await);
    let (_b, admin) = start(&format!(
        r#"(
    admin: "127.0.0.1:0",
    services: [
        (name: "web", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "w1", addr: "{web}", weight: 1)]),
        (name: "api", listen: "127.0.0.1:0", algorithm: LeastConnections, accept_proxy: true,
         backends: [(name: "a1", addr: "{api}", weight: 1)]),
    ],
)
"#
    ));
    let html = get(admin, "/").await.body;
    // The first paint's data holds both services, each with its own backends.
    let embedded = html
        .split(r#"<script id="initial" type="application/json">"#)
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .expect("embedded status");
    let st: Value = serde_json::from_str(embedded).expect("embedded JSON");
    let services = st["services"].as_array().expect("services");
    let names: Vec<&Value> = services.iter().map(|s| &s["name"]).collect();
    assert_eq!(names, ["web", "api"], "{st}");
    assert_eq!(services[0]["backends"][0]["name"], "w1");
    assert_eq!(services[1]["backends"][0]["name"], "a1");
    assert_eq!(services[1]["accept_proxy"], true);
    // Its buttons name the service, so a backend name two services share stays unambiguous.
    assert!(
        html.contains("'/api/services/'"),
        "no per-service API in the page"
    );
    assert!(
        !html.contains("'/api/backends/'"),
        "service-less API in the page"
    );
}

// --- JSON status -----------------------------------------------------------------------------

#[tokio::test]
async fn status_json_reports_backends_totals_and_history() {
    let backends = [
        ("a", named_backend("a").await, 2),
        ("dead", refusing_addr(), 1),
    ];
    let (b, admin) = start(&admin_config(
        "RoundRobin",
        &backends,
        "health: (interval: \"250ms\"),",
    ));

    let st = status_json(admin).await;
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert!(st["uptime_seconds"].as_f64().expect("uptime") >= 0.0);
    let services = st["services"].as_array().expect("services");
    assert_eq!(services.len(), 1, "{st}");
    assert_eq!(services[0]["name"], "default");
    assert_eq!(services[0]["listen"], serde_json::json!(["127.0.0.1:0"]));
    assert_eq!(services[0]["algorithm"], "RoundRobin");
    assert_eq!(services[0]["totals"]["accepted"], 0);
    assert_eq!(st["totals"]["accepted"], 0);
    assert_eq!(st["totals"]["no_backend"], 0);
    assert_eq!(st["totals"]["active"], 0);
    let a = backend(&st, "a");
    assert_eq!(a["addr"], backends[0].1.to_string());
    assert_eq!(a["state"], "up");
    assert_eq!(a["up"], true);
    assert_eq!(a["weight"], 2);
    assert_eq!(a["configured_weight"], 2);
    assert_eq!(a["max_connections"], Value::Null);
    assert_eq!(a["load_percent"], Value::Null);
    assert_eq!(a["load_age_seconds"], Value::Null);
    for counter in [
        "active",
        "total",
        "bytes_sent",
        "bytes_received",
        "connect_failures",
    ] {
        assert_eq!(a[counter], 0, "{counter}");
    }
    let history = &st["history"];
    assert_eq!(history["interval_seconds"], 2.0);
    assert_eq!(history["capacity"], 300);
    let series = history["series"].as_array().expect("series");
    let names: Vec<&Value> = series.iter().map(|s| &s["backend"]).collect();
    assert_eq!(names, ["a", "dead"]);

    // Traffic: counters move; bytes are counted once the connection has finished.
    assert_eq!(read_all(b.addr).await, "a");
    b.wait_finished("a", 1);
    let a = eventually("the bytes of the finished connection", || async {
        let st = status_json(admin).await;
        let a = backend(&st, "a").clone();
        (a["bytes_received"] == 1).then_some(a)
    })
    .await;
    assert_eq!(a["total"], 1);
    assert!(a["bytes_sent"].as_u64().is_some());

    // The dead backend goes down after its failed checks, with the reason.
    let dead = eventually("the dead backend to be down", || async {
        let st = status_json(admin).await;
        let dead = backend(&st, "dead").clone();
        (dead["state"] == "down").then_some(dead)
    })
    .await;
    assert_eq!(dead["up"], false);
    let check = &dead["last_check"];
    assert_eq!(check["ok"], false);
    assert!(
        check["detail"]
            .as_str()
            .expect("detail")
            .contains("refused"),
        "{check}"
    );
    assert!(check["age_seconds"].as_f64().expect("age") >= 0.0);
    assert_eq!(
        backend(&status_json(admin).await, "a")["last_check"]["ok"],
        true
    );

    // History: one sample at once, another every two seconds, one value per backend each.
    let history = eventually("a second history sample", || async {
        let st = status_json(admin).await;
        let h = st["history"].clone();
        (h["ages_seconds"].as_array().expect("ages").len() >= 2).then_some(h)
    })
    .await;
    let ages: Vec<f64> = history["ages_seconds"]
        .as_array()
        .expect("ages")
        .iter()
        .map(|v| v.as_f64().expect("age"))
        .collect();
    assert!(
        ages.windows(2).all(|w| w[0] > w[1]),
        "oldest first: {ages:?}"
    );
    for s in history["series"].as_array().expect("series") {
        assert_eq!(s["active"].as_array().expect("values").len(), ages.len());
        assert!(s["active"][0].is_u64(), "{s}");
    }
}

#[tokio::test]
async fn history_samples_active_connections() {
    let backends = [("echo", echo_backend().await, 1)];
    let (b, admin) = start(&admin_config("RoundRobin", &backends, ""));
    let _open = [connect(b.addr).await, connect(b.addr).await];
    eventually("a sample with two active connections", || async {
        let st = status_json(admin).await;
        let values = st["history"]["series"][0]["active"].clone();
        let values = values.as_array().expect("values");
        (values.last() == Some(&Value::from(2))).then_some(())
    })
    .await;
    let st = status_json(admin).await;
    assert_eq!(st["totals"]["active"], 2);
    assert_eq!(backend(&st, "echo")["active"], 2);
}

// --- metrics ---------------------------------------------------------------------------------

const BACKEND_FAMILIES: [(&str, &str); 11] = [
    ("ballast_backend_connections_active", "gauge"),
    ("ballast_backend_connections_total", "counter"),
    ("ballast_backend_sent_bytes_total", "counter"),
    ("ballast_backend_received_bytes_total", "counter"),
    ("ballast_backend_connect_failures_total", "counter"),
    ("ballast_backend_up", "gauge"),
    ("ballast_backend_load_ratio", "gauge"),
    ("ballast_backend_weight", "gauge"),
    ("ballast_backend_configured_weight", "gauge"),
    ("ballast_backend_connect_duration_seconds", "histogram"),
    ("ballast_connection_duration_seconds", "histogram"),
];

/// The family a sample line's metric name belongs to: a histogram's `_bucket`, `_sum` and
/// `_count` series belong to the histogram.
fn family_of<'a>(text: &str, name: &'a str) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && text.contains(&format!("# TYPE {base} histogram\n"))
        {
            return base;
        }
    }
    name
}

/// The cumulative buckets of one histogram series (`labels` without `le`), as
/// `(le, count)` in the order they appear, with its `_sum` and `_count`.
fn histogram(text: &str, name: &str, labels: &str) -> (Vec<(String, f64)>, f64, f64) {
    let prefix = format!("{name}_bucket{{{labels},le=\"");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let (le, value) = rest.split_once("\"} ").expect("bucket line");
            (le.to_string(), value.parse().expect("bucket count"))
        })
        .collect();
    let sum = sample(text, &format!("{name}_sum{{{labels}}}")).expect("_sum");
    let count = sample(text, &format!("{name}_count{{{labels}}}")).expect("_count");
    (buckets, sum, count)
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_follow_the_traffic() {
    // The name in the configuration is RON-escaped; the backend is called `odd "one"\x`.
    let backends = [
        ("a", named_backend("a").await, 3),
        (r#"odd \"one\"\\x"#, named_backend("odd").await, 1),
    ];
    let odd = r#"odd \"one\"\\x"#; // the label value, escaped the same way
    let (b, admin) = start(&admin_config("RoundRobin", &backends, ""));

    let reply = get(admin, "/metrics").await;
    assert_eq!(reply.status, 200);
    let content_type = reply.header("content-type").expect("content type");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = reply.body;
    assert!(text.ends_with('\n'));
    let families = [
        ("ballast_build_info", "gauge"),
        ("ballast_uptime_seconds", "gauge"),
        ("ballast_connections_accepted_total", "counter"),
        ("ballast_connections_no_backend_total", "counter"),
        ("ballast_service_connections_accepted_total", "counter"),
        ("ballast_service_connections_no_backend_total", "counter"),
    ]
    .into_iter()
    .chain(BACKEND_FAMILIES);
    for (name, kind) in families {
        assert!(
            text.contains(&format!("\n# HELP {name} "))
                || text.starts_with(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "no TYPE for {name}"
        );
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
    }
    // Every sample line belongs to a declared family and has a numeric value, and every one
    // with a backend label names the service first.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let name = series.split('{').next().expect("name");
        let family = family_of(&text, name);
        assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        if series.contains("backend=\"") {
            assert!(
                series.starts_with(&format!("{name}{{service=\"default\",backend=\"")),
                "{line}"
            );
        }
    }
    assert!(text.contains(&format!(
        "ballast_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(metric(&text, "ballast_uptime_seconds", None).expect("uptime") >= 0.0);
    assert_eq!(
        metric(&text, "ballast_connections_accepted_total", None),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "ballast_connections_no_backend_total", None),
        Some(0.0)
    );
    for name in [
        "ballast_service_connections_accepted_total",
        "ballast_service_connections_no_backend_total",
    ] {
        assert_eq!(
            sample(&text, &format!("{name}{{service=\"default\"}}")),
            Some(0.0),
            "{name}"
        );
    }
    // Empty histograms: every bucket 0, `+Inf` last.
    for name in [
        "ballast_backend_connect_duration_seconds",
        "ballast_connection_duration_seconds",
    ] {
        let (buckets, sum, count) = histogram(&text, name, "service=\"default\",backend=\"a\"");
        assert!(buckets.len() > 5, "{name}: {buckets:?}");
        assert_eq!(buckets.last().map(|(le, _)| le.as_str()), Some("+Inf"));
        assert!(buckets.iter().all(|(_, n)| *n == 0.0), "{buckets:?}");
        assert_eq!((sum, count), (0.0, 0.0), "{name}");
    }
    for (name, value) in [
        ("ballast_backend_connections_active", 0.0),
        ("ballast_backend_connections_total", 0.0),
        ("ballast_backend_sent_bytes_total", 0.0),
        ("ballast_backend_received_bytes_total", 0.0),
        ("ballast_backend_connect_failures_total", 0.0),
        ("ballast_backend_up", 1.0),
        ("ballast_backend_weight", 3.0),
        ("ballast_backend_configured_weight", 3.0),
    ] {
        assert_eq!(metric(&text, name, Some("a")), Some(value), "{name}");
    }
    assert_eq!(
        metric(&text, "ballast_backend_weight", Some(odd)),
        Some(1.0)
    );
    // Load is unknown outside WorkloadSensitive: the family is declared, no sample.
    assert!(!text.contains("ballast_backend_load_ratio{"), "{text}");

    // Two connections: one to each backend in round robin.
    assert_eq!(read_all(b.addr).await, "a");
    assert_eq!(read_all(b.addr).await, "odd");
    b.wait_finished("a", 1);
    b.wait_finished(r#"odd "one"\x"#, 1);
    let text = eventually("counters after two connections", || async {
        let text = metrics(admin).await;
        (metric(&text, "ballast_backend_received_bytes_total", Some(odd)) == Some(3.0))
            .then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "ballast_connections_accepted_total", None),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "ballast_service_connections_accepted_total{service=\"default\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "ballast_backend_connections_total", Some("a")),
        Some(1.0)
    );
    // One connect and one finished connection each, in cumulative buckets.
    for backend in ["a", odd] {
        let labels = format!("service=\"default\",backend=\"{backend}\"");
        for name in [
            "ballast_backend_connect_duration_seconds",
            "ballast_connection_duration_seconds",
        ] {
            let (buckets, sum, count) = histogram(&text, name, &labels);
            assert_eq!(count, 1.0, "{name} {backend}");
            assert_eq!(buckets.last(), Some(&("+Inf".to_string(), 1.0)), "{name}");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{name}: {buckets:?}"
            );
            assert!(sum > 0.0 && sum < 10.0, "{name} {backend}: {sum}");
        }
    }
    assert_eq!(
        metric(&text, "ballast_backend_connections_total", Some(odd)),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "ballast_backend_received_bytes_total", Some("a")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "ballast_backend_connections_active", Some("a")),
        Some(0.0)
    );

    // A held connection shows as active.
    let held = connect(b.addr).await;
    eventually("one active connection", || async {
        let text = metrics(admin).await;
        let active = metric(&text, "ballast_backend_connections_active", Some("a")).unwrap_or(0.0)
            + metric(&text, "ballast_backend_connections_active", Some(odd)).unwrap_or(0.0);
        (active == 1.0).then_some(())
    })
    .await;
    drop(held);
}

#[tokio::test]
async fn metrics_count_failures_and_clients_without_backend() {
    let backends = [("dead", refusing_addr(), 1)];
    let (b, admin) = start(&admin_config(
        "RoundRobin",
        &backends,
        "health: (interval: \"250ms\"),",
    ));
    assert_eq!(read_all(b.addr).await, "");
    let text = eventually("the turned-away client", || async {
        let text = metrics(admin).await;
        (metric(&text, "ballast_connections_no_backend_total", None) == Some(1.0)).then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "ballast_connections_accepted_total", None),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "ballast_service_connections_no_backend_total{service=\"default\"}"
        ),
        Some(1.0)
    );
    // A failed connect is not timed: the failures counter has it.
    let (_, _, connects) = histogram(
        &text,
        "ballast_backend_connect_duration_seconds",
        "service=\"default\",backend=\"dead\"",
    );
    assert_eq!(connects, 0.0);
    assert!(
        metric(
            &text,
            "ballast_backend_connect_failures_total",
            Some("dead")
        )
        .expect("failures")
            >= 1.0
    );
    assert_eq!(
        metric(&text, "ballast_backend_connections_total", Some("dead")),
        Some(0.0)
    );
    eventually("the dead backend down", || async {
        let text = metrics(admin).await;
        (metric(&text, "ballast_backend_up", Some("dead")) == Some(0.0)).then_some(())
    })
    .await;
}

/// `promtool check metrics` (Debian package `prometheus`) on a live `/metrics`, with every
/// family holding samples: it must parse the text and find nothing to lint. Skipped, with a
/// note, where promtool is not installed.
#[tokio::test]
async fn promtool_finds_nothing_to_lint() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    if let Err(e) = Command::new("promtool").arg("--version").output() {
        eprintln!("promtool not runnable ({e}): skipped (install the Debian package prometheus)");
        return;
    }
    let backends = [
        ("a", named_backend("a").await, 2),
        (r#"odd \"one\"\\x"#, named_backend("odd").await, 1),
        ("dead", refusing_addr(), 1),
    ];
    let (b, admin) = start(&admin_config("RoundRobin", &backends, ""));
    // Connects, relayed connections and a failed connect: samples in every histogram.
    for _ in 0..4 {
        let _ = read_all(b.addr).await;
    }
    b.wait_finished("a", 1);
    let text = eventually("a finished connection", || async {
        let text = metrics(admin).await;
        let (_, _, count) = histogram(
            &text,
            "ballast_connection_duration_seconds",
            "service=\"default\",backend=\"a\"",
        );
        (count >= 1.0).then_some(text)
    })
    .await;

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {}\nstdout: {stdout}\nstderr: {stderr}\nmetrics:\n{text}",
        out.status
    );
}

#[tokio::test]
async fn load_readings_are_published() {
    let dir = TempDir::new();
    let load_file = dir.write("load", "42.5\n");
    let demo = DemoBackend::start("vm1", &["--load-file", load_file.to_str().expect("path")]);
    let backends = [("vm1", demo.addr, 1)];
    let (_b, admin) = start(&admin_config(
        "WorkloadSensitive",
        &backends,
        "load_poll: (interval: \"200ms\"),",
    ));
    let text = eventually("a load reading", || async {
        let text = metrics(admin).await;
        metric(&text, "ballast_backend_load_ratio", Some("vm1")).map(|_| text)
    })
    .await;
    let ratio = metric(&text, "ballast_backend_load_ratio", Some("vm1")).expect("ratio");
    assert!((ratio - 0.425).abs() < 1e-6, "{ratio}");
    let vm1 = backend(&status_json(admin).await, "vm1").clone();
    assert_eq!(vm1["load_percent"], 42.5);
    let age = vm1["load_age_seconds"].as_f64().expect("load age");
    assert!((0.0..5.0).contains(&age), "{age}");
}

// --- runtime API -----------------------------------------------------------------------------

#[tokio::test]
async fn drain_stops_new_connections_while_open_ones_continue() {
    let backends = [
        ("a", greeting_echo_backend("a").await, 1),
        ("b", greeting_echo_backend("b").await, 1),
    ];
    let (b, admin) = start(&admin_config("RoundRobin", &backends, ""));

    // A long-lived connection on "a".
    let mut on_a = loop {
        let (s, name) = greeted(b.addr).await;
        if name == "a" {
            break s;
        }
    };

    let reply = post(admin, "/api/backends/a/drain").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let a = reply.json();
    assert_eq!(a["name"], "a");
    assert_eq!(a["state"], "drained");
    assert_eq!(a["weight"], 0);
    assert_eq!(a["configured_weight"], 1);

    // Every new connection goes to "b" at once.
    for _ in 0..8 {
        assert_eq!(greeted(b.addr).await.1, "b");
    }
    // The open one still works.
    within(on_a.write_all(b"still here\n"))
        .await
        .expect("write");
    let mut echo = vec![0u8; 11];
    within(on_a.read_exact(&mut echo)).await.expect("echo");
    assert_eq!(echo, b"still here\n");

    // The page's data shows it: drained, weight 0 of 1, its connection still active.
    let st = status_json(admin).await;
    let a = backend(&st, "a");
    assert_eq!(
        (
            &a["state"],
            &a["weight"],
            &a["configured_weight"],
            &a["active"]
        ),
        (
            &Value::from("drained"),
            &Value::from(0),
            &Value::from(1),
            &Value::from(1)
        )
    );
    let text = metrics(admin).await;
    assert_eq!(
        metric(&text, "ballast_backend_weight", Some("a")),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "ballast_backend_configured_weight", Some("a")),
        Some(1.0)
    );

    // Enable restores the configured weight, and "a" gets connections again.
    let reply = post(admin, "/api/backends/a/enable").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let a = reply.json();
    assert_eq!(
        (&a["state"], &a["weight"]),
        (&Value::from("up"), &Value::from(1))
    );
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(greeted(b.addr).await.1);
    }
    assert_eq!(names, ["a", "b", "a", "b"]);

    // The drained period did not disturb the long-lived connection either.
    within(on_a.write_all(b"bye\n")).await.expect("write");
    let mut echo = vec![0u8; 4];
    within(on_a.read_exact(&mut echo)).await.expect("echo");
    assert_eq!(echo, b"bye\n");
}

#[tokio::test]
async fn weight_changes_the_split() {
    let backends = [
        ("a", named_backend("a").await, 1),
        ("b", named_backend("b").await, 1),
    ];
    let (b, admin) = start(&admin_config("WeightedRoundRobin", &backends, ""));
    assert_eq!(sequential_names(b.addr, 4).await, ["a", "b", "a", "b"]);

    let reply = post(admin, "/api/backends/a/weight/3").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let a = reply.json();
    assert_eq!(
        (&a["weight"], &a["configured_weight"]),
        (&Value::from(3), &Value::from(1))
    );
    assert_eq!(a["state"], "up");
    let names = sequential_names(b.addr, 16).await;
    for cycle in names.chunks(4) {
        assert_eq!(cycle, ["a", "a", "b", "a"], "{names:?}");
    }

    // Weight 0 by number drains too; 256 is the largest accepted.
    let reply = post(admin, "/api/backends/b/weight/0").await;
    assert_eq!(reply.json()["state"], "drained");
    assert_eq!(sequential_names(b.addr, 3).await, ["a", "a", "a"]);
    assert_eq!(post(admin, "/api/backends/b/weight/256").await.status, 200);
    let text = metrics(admin).await;
    assert_eq!(
        metric(&text, "ballast_backend_weight", Some("b")),
        Some(256.0)
    );
}

#[tokio::test]
async fn runtime_api_rejects_bad_requests() {
    let backends = [
        ("a", named_backend("a").await, 1),
        ("web 1", named_backend("web 1").await, 1),
    ];
    let (_b, admin) = start(&admin_config("RoundRobin", &backends, ""));

    // Unknown backends: 404 with a JSON error.
    for path in [
        "/api/backends/nope/drain",
        "/api/backends/nope/enable",
        "/api/backends/nope/weight/2",
        "/api/backends//drain",
    ] {
        let reply = post(admin, path).await;
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
        assert!(reply.json()["error"].as_str().is_some(), "{path}");
    }
    assert!(
        post(admin, "/api/backends/nope/drain").await.json()["error"]
            .as_str()
            .expect("error")
            .contains("nope")
    );
    // Bad weights: 400.
    for n in ["257", "-1", "abc", "1.5", "99999999999", "%31"] {
        let reply = post(admin, &format!("/api/backends/a/weight/{n}")).await;
        assert_eq!(reply.status, 400, "weight {n}: {reply:?}");
        assert!(reply.json()["error"].as_str().is_some());
    }
    assert_eq!(post(admin, "/api/backends/a/weight").await.status, 400);
    assert_eq!(post(admin, "/api/backends/a%zz/drain").await.status, 400);
    // Wrong methods: 405 with Allow.
    for (method, path, allow) in [
        ("GET", "/api/backends/a/drain", "POST"),
        ("PUT", "/api/backends/a/weight/2", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
        ("POST", "/api/status", "GET, HEAD"),
        ("DELETE", "/", "GET, HEAD"),
    ] {
        let reply = request(admin, method, path, &[]).await;
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
        assert!(reply.json()["error"].as_str().is_some());
    }
    // Unknown paths: 404.
    for path in [
        "/nope",
        "/api",
        "/api/backends/a",
        "/api/backends/a/reboot",
        "/metrics/",
    ] {
        let reply = get(admin, path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.json()["error"].as_str().is_some());
    }
    // Nothing changed so far.
    let st = status_json(admin).await;
    assert_eq!(backend(&st, "a")["weight"], 1);

    // Names are percent-decoded.
    let reply = post(admin, "/api/backends/web%201/drain").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["name"], "web 1");

    // A browser on another site cannot drive the API; the page's own origin can.
    let host = admin.to_string();
    let reply = request(
        admin,
        "POST",
        "/api/backends/a/drain",
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(backend(&status_json(admin).await, "a")["weight"], 1);
    let origin = format!("http://{host}");
    let reply = request(
        admin,
        "POST",
        "/api/backends/a/drain",
        &[("Origin", &origin)],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

// --- token -----------------------------------------------------------------------------------

#[tokio::test]
async fn token_is_required_when_configured() {
    let backends = [("a", named_backend("a").await, 1)];
    let (_b, admin) = start(&admin_config(
        "RoundRobin",
        &backends,
        "admin_token: \"s3cret-t0ken\",",
    ));
    let good = [("Authorization", "Bearer s3cret-t0ken")];

    for (method, path) in [
        ("GET", "/"),
        ("GET", "/metrics"),
        ("GET", "/api/status"),
        ("HEAD", "/api/status"),
        ("POST", "/api/backends/a/drain"),
        ("GET", "/nope"),
    ] {
        for headers in [
            &[][..],
            &[("Authorization", "Bearer wrong")],
            &[("Authorization", "Bearer s3cret-t0ke")],
            &[("Authorization", "Basic s3cret-t0ken")],
            &[("Authorization", "s3cret-t0ken")],
        ] {
            let reply = request(admin, method, path, headers).await;
            assert_eq!(reply.status, 401, "{method} {path} {headers:?}");
            let challenge = reply.header("www-authenticate").expect("challenge");
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
    }
    assert_eq!(request(admin, "GET", "/metrics", &good).await.status, 200);
    assert_eq!(request(admin, "GET", "/", &good).await.status, 200);
    let reply = request(admin, "GET", "/api/status", &good).await;
    assert_eq!(reply.status, 200);
    assert_eq!(backend(&reply.json(), "a")["weight"], 1);
    assert_eq!(
        request(admin, "GET", "/nope", &good).await.status,
        404,
        "authorized, then routed"
    );

    // Browsers may pass it in the query on reads, never on writes.
    let page = get(admin, "/?token=s3cret-t0ken").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<svg id=\"chart\""));
    assert_eq!(get(admin, "/metrics?token=s3cret-t0ken").await.status, 200);
    assert_eq!(get(admin, "/?token=wrong").await.status, 401);
    assert_eq!(
        post(admin, "/api/backends/a/drain?token=s3cret-t0ken")
            .await
            .status,
        401
    );
    assert_eq!(
        backend(&status_json_with(admin, &good).await, "a")["weight"],
        1
    );

    let reply = request(admin, "POST", "/api/backends/a/drain", &good).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        backend(&status_json_with(admin, &good).await, "a")["weight"],
        0
    );
}

async fn status_json_with(admin: SocketAddr, headers: &[(&str, &str)]) -> Value {
    let reply = request(admin, "GET", "/api/status", headers).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

// --- protocol --------------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let backends = [("a", named_backend("a").await, 1)];
    let (_b, admin) = start(&admin_config("RoundRobin", &backends, ""));
    let s = connect(admin).await;
    let mut reader = BufReader::new(s);
    for path in ["/api/status", "/metrics", "/", "/nope"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n\r\n");
        within(reader.get_mut().write_all(raw.as_bytes()))
            .await
            .expect("write");
        let reply = read_reply(&mut reader, false).await;
        assert_eq!(reply.header("connection"), Some("keep-alive"), "{path}");
        assert_eq!(
            reply.status,
            if path == "/nope" { 404 } else { 200 },
            "{path}"
        );
    }
    // Two pipelined requests, the last asking to close.
    let raw = format!(
        "GET /api/status HTTP/1.1\r\nHost: {admin}\r\n\r\n\
         POST /api/backends/a/weight/5 HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    );
    within(reader.get_mut().write_all(raw.as_bytes()))
        .await
        .expect("write");
    assert_eq!(read_reply(&mut reader, false).await.status, 200);
    let last = read_reply(&mut reader, false).await;
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    assert_eq!(last.json()["weight"], 5);
    let mut rest = Vec::new();
    within(reader.read_to_end(&mut rest)).await.expect("EOF");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn malformed_and_oversized_requests_do_not_disturb_the_balancer() {
    let backends = [("a", named_backend("a").await, 1)];
    let (b, admin) = start(&admin_config("RoundRobin", &backends, ""));

    let reply = exchange(admin, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(reply.json()["error"].as_str().is_some());

    let reply = exchange(admin, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert_eq!(reply.status, 400, "{reply:?}");

    let mut big = format!("GET / HTTP/1.1\r\nHost: {admin}\r\nX-Big: ");
    big.push_str(&"a".repeat(16 * 1024));
    big.push_str("\r\n\r\n");
    let reply = exchange(admin, big.as_bytes()).await;
    assert_eq!(reply.status, 431, "{reply:?}");

    let reply = exchange(
        admin,
        b"POST /api/backends/a/drain HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 413, "{reply:?}");

    let reply = exchange(admin, b"GET / HTTP/2.0\r\n\r\n").await;
    assert_eq!(reply.status, 505, "{reply:?}");

    // A client that sends half a request and goes away.
    let mut half = connect(admin).await;
    within(half.write_all(b"GET /api/sta"))
        .await
        .expect("write");
    drop(half);

    // The balancer and the admin listener carry on.
    assert_eq!(read_all(b.addr).await, "a");
    let st = status_json(admin).await;
    assert_eq!(
        backend(&st, "a")["weight"],
        1,
        "the drain above was refused"
    );
    assert_eq!(st["totals"]["accepted"], 1);
    assert_eq!(get(admin, "/metrics").await.status, 200);
}

#[tokio::test]
async fn removing_the_admin_listener_on_reload_closes_it() {
    let backends = [("a", named_backend("a").await, 1)];
    let (b, admin) = start(&admin_config("RoundRobin", &backends, ""));
    assert_eq!(get(admin, "/api/status").await.status, 200);
    let verdict = b.reload(&config("RoundRobin", &backends));
    assert!(verdict.contains("reloaded"), "{verdict}");
    eventually("the admin port to close", || async {
        TcpStream::connect(admin).await.is_err().then_some(())
    })
    .await;
    assert_eq!(read_all(b.addr).await, "a");
}

#[tokio::test]
async fn moving_the_admin_listener_on_reload_keeps_the_chart_history() {
    let backends = [("a", named_backend("a").await, 1)];
    let (b, admin) = start(&admin_config("RoundRobin", &backends, ""));
    let samples = |st: &Value| st["history"]["ages_seconds"].as_array().map_or(0, Vec::len);
    eventually("a second history sample", || async {
        (samples(&status_json(admin).await) >= 2).then_some(())
    })
    .await;
    let moved = refusing_addr();
    let text = config_with("RoundRobin", &backends, &format!("admin: \"{moved}\","));
    let verdict = b.reload(&text);
    assert!(verdict.contains("reloaded"), "{verdict}");
    eventually("the moved admin listener", || async {
        TcpStream::connect(moved).await.ok().map(drop)
    })
    .await;
    // A fresh history would hold one sample, taken when the new listener started.
    let st = status_json(moved).await;
    assert!(samples(&st) >= 2, "history restarted: {}", st["history"]);
}

// --- probes: /healthz and /readyz ------------------------------------------------------------

const READY: &str = "{\"ready\":true,\"reasons\":[]}\n";

/// Health checks that take a refusing backend out at its first failure.
const FAST_CHECKS: &str = "health: (interval: \"100ms\", timeout: \"100ms\", rise: 1, fall: 1),";

#[tokio::test]
async fn probes_answer_live_and_ready_without_the_token() {
    let backends = [("a", named_backend("a").await, 1)];
    let (_b, admin) = start(&admin_config(
        "RoundRobin",
        &backends,
        "admin_token: \"s3cret-t0ken\",",
    ));
    let live = get(admin, "/healthz").await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"), "{live:?}");
    assert_eq!(
        live.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(live.header("cache-control"), Some("no-store"));
    // Not ready until a health check has passed (every backend starts up, unchecked).
    let first = get(admin, "/readyz").await;
    assert!(
        (first.status, first.body.as_str())
            == (
                503,
                "{\"ready\":false,\"reasons\":[\"service default: no health check has passed yet\"]}\n"
            )
            || (first.status, first.body.as_str()) == (200, READY),
        "{first:?}"
    );
    let ready = wait_ready(admin).await;
    assert_eq!(ready.header("content-type"), Some("application/json"));
    for path in ["/healthz", "/readyz"] {
        let head = request(admin, "HEAD", path, &[]).await;
        assert_eq!((head.status, head.body.as_str()), (200, ""), "HEAD {path}");
        // A token, right or wrong, changes nothing.
        for token in ["Bearer s3cret-t0ken", "Bearer wrong"] {
            let reply = request(admin, "GET", path, &[("Authorization", token)]).await;
            assert_eq!(reply.status, 200, "{path} with {token}");
        }
        let post = post(admin, path).await;
        assert_eq!(post.status, 405, "POST {path}");
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
    }
    // Everything else still needs it.
    assert_eq!(get(admin, "/api/status").await.status, 401);
    assert_eq!(get(admin, "/healthz/x").await.status, 401);
}

#[tokio::test]
async fn not_ready_while_a_service_has_no_backend_up() {
    let web = named_backend("web").await;
    let db = refusing_addr();
    let (b, admin) = start(&format!(
        r#"(
            services: [
                (name: "web", listen: "127.0.0.1:0", algorithm: RoundRobin,
                 backends: [(name: "w1", addr: "{web}")]),
                (name: "db", listen: "127.0.0.1:0", algorithm: RoundRobin,
                 backends: [(name: "d1", addr: "{db}")]),
            ],
            admin: "127.0.0.1:0",
            {FAST_CHECKS}
        )"#
    ));
    b.log
        .wait_for(1, |l| l.contains("backend d1") && l.contains("is down"));
    // web's first check may still be on its way (100 ms): until then it is not ready either.
    let expected = "{\"ready\":false,\"reasons\":[\"service db: no backend up\"]}\n";
    let ready = eventually("/readyz to name db alone", || async {
        let reply = get(admin, "/readyz").await;
        (reply.body == expected).then_some(reply)
    })
    .await;
    assert_eq!(ready.status, 503, "{ready:?}");
    let head = request(admin, "HEAD", "/readyz", &[]).await;
    assert_eq!(head.status, 503);
    // Alive all the same, and web still serves.
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(read_all(b.service_addrs("web")[0]).await, "web");
}

/// Writes `msg` through `s` to an echo backend and reads it back.
async fn echoed(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    within(s.write_all(msg)).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    within(s.read_exact(&mut back)).await.expect("echo");
    back
}

#[tokio::test]
async fn not_ready_from_the_start_of_the_drain_while_connections_finish() {
    let (mut b, admin) = start(&admin_config(
        "RoundRobin",
        &[("echo", echo_backend().await, 1)],
        "timeouts: (grace: \"30s\"),",
    ));
    wait_ready(admin).await;
    let mut open = connect(b.addr).await;
    assert_eq!(echoed(&mut open, b"one").await, b"one");
    b.proc.signal("TERM");
    let draining = eventually("/readyz to say draining", || async {
        let reply = get(admin, "/readyz").await;
        (reply.status == 503).then_some(reply)
    })
    .await;
    assert_eq!(
        draining.body,
        "{\"ready\":false,\"reasons\":[\"draining\"]}\n"
    );
    b.log.wait_for(1, |l| {
        l.contains("shutting down: waiting up to 30s for 1 open connections")
    });
    // Still draining: the listener is closed, the connection relays, the admin answers.
    assert!(TcpStream::connect(b.addr).await.is_err(), "still accepting");
    assert_eq!(echoed(&mut open, b"two").await, b"two");
    assert_eq!(get(admin, "/readyz").await.status, 503);
    assert_eq!(get(admin, "/healthz").await.body, "ok\n");
    within(open.shutdown()).await.expect("shutdown");
    let mut rest = Vec::new();
    within(open.read_to_end(&mut rest)).await.expect("drain");
    assert_eq!(b.proc.wait_exit().code(), Some(0));
    b.log.wait_for(1, |l| l.contains("admin listener stopped"));
    assert!(TcpStream::connect(admin).await.is_err(), "admin still open");
}

#[tokio::test]
async fn the_drain_stays_bounded_with_admin_connections_open() {
    let (mut b, admin) = start(&admin_config(
        "RoundRobin",
        &[("echo", echo_backend().await, 1)],
        "timeouts: (grace: \"300ms\"),",
    ));
    wait_ready(admin).await;
    let mut open = connect(b.addr).await;
    assert_eq!(echoed(&mut open, b"x").await, b"x");
    // An idle keep-alive admin connection, and one that never finishes its request.
    let mut idle = BufReader::new(connect(admin).await);
    let ask = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\n\r\n");
    within(idle.get_mut().write_all(ask.as_bytes()))
        .await
        .expect("write");
    assert_eq!(read_reply(&mut idle, false).await.status, 200);
    let mut partial = connect(admin).await;
    within(partial.write_all(b"GET /readyz HTTP/1.1\r\n"))
        .await
        .expect("write");
    b.proc.signal("TERM");
    assert_eq!(b.proc.wait_exit().code(), Some(0));
    b.log.wait_for(1, |l| {
        l.contains("grace period over: closing 1 remaining connections")
    });
    // The admin listener, its connections with it, stopped once the drain was over.
    b.log.wait_for(1, |l| l.contains("admin listener stopped"));
    drop((idle, partial));
}

// --- scripts/screenshot.sh -------------------------------------------------------------------

const SCREENSHOT_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/screenshot.sh");

#[test]
fn screenshot_script_needs_chromium_and_installs_nothing() {
    let out = std::process::Command::new("bash")
        .arg(SCREENSHOT_SH)
        .env("CHROMIUM", "/nonexistent/chromium")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run screenshot.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("apt-get install chromium"), "{stderr}");

    let (code, stdout, _) = run("bash", &[SCREENSHOT_SH, "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("scripts/status.png"), "{stdout}");
    let (code, _, stderr) = run("bash", &[SCREENSHOT_SH, "--bogus"]);
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test]
async fn bytes_count_while_a_connection_is_still_open() {
    let (b, admin) = start(&admin_config(
        "RoundRobin",
        &[("e", echo_backend().await, 1)],
        NO_PROBES,
    ));
    let mut open = connect(b.addr).await;
    within(open.write_all(&[1u8; 5000])).await.expect("write");
    let mut back = vec![0u8; 5000];
    within(open.read_exact(&mut back)).await.expect("echo");
    // The relay counts a chunk just after writing it, so the client can hold the echo a
    // moment before the counter moves.
    let text = eventually("byte counters", || async {
        let text = metrics(admin).await;
        let received = metric(&text, "ballast_backend_received_bytes_total", Some("e"));
        (received == Some(5000.0)).then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "ballast_backend_sent_bytes_total", Some("e")),
        Some(5000.0)
    );
    assert_eq!(
        metric(&text, "ballast_backend_connections_active", Some("e")),
        Some(1.0)
    );
}
