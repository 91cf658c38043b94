//! The admin listener: status page, Prometheus metrics, JSON status and runtime API.
//!
//! Served by the crate's own minimal HTTP/1.1 code ([`crate::http`], as the demo backend),
//! with the same bounds: an 8 KiB request head, a 64 KiB (discarded) body and 10 s per
//! request; keep-alive is honoured. At most [`MAX_CONNECTIONS`] admin connections are served
//! at once; further ones wait in the kernel's backlog.
//!
//! | Method       | Path                                 | Answer                                  |
//! |--------------|--------------------------------------|-----------------------------------------|
//! | `GET`/`HEAD` | `/`                                  | status page (HTML, refreshes itself)    |
//! | `GET`/`HEAD` | `/metrics`                           | Prometheus text format 0.0.4            |
//! | `GET`/`HEAD` | `/api/status`                        | the page's data as JSON                 |
//! | `GET`/`HEAD` | `/healthz`                           | liveness: 200 `ok` (no token needed)    |
//! | `GET`/`HEAD` | `/readyz`                            | readiness: 200, or 503 with the reasons (no token needed) |
//! | `POST`       | `/api/backends/{name}/drain`         | weight 0 at runtime                     |
//! | `POST`       | `/api/backends/{name}/enable`        | back to the configured weight           |
//! | `POST`       | `/api/backends/{name}/weight/{n}`    | weight `n` (0..=256) at runtime         |
//!
//! `{name}` is percent-decoded (`web%201` names `web 1`). Runtime changes go through
//! [`Balancer::set_weight`], so they apply to new connections at once, leave established ones
//! alone, and are dropped by the next configuration reload.
//!
//! When `admin_token` is configured every request but the probes (`/healthz`, `/readyz`)
//! needs `Authorization: Bearer <token>` (compared in constant time), else 401 with
//! `WWW-Authenticate: Bearer`. So that the page works in a browser, `GET`/`HEAD` requests may
//! instead carry the token as `?token=...`; the page then sends it as a bearer header on its
//! own requests. `POST` requests only accept the header, and a `POST` whose `Origin` does
//! not match its `Host` is refused with 403, so another web site open in the same browser
//! cannot drive the API. The probes are left open because Kubernetes probes and load
//! balancers' health checks cannot easily send a token, and they tell nothing sensitive.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{debug, info, warn};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balancer::Balancer;
use crate::http::Limits;
use crate::listener::AcceptBackoff;

mod api;
mod auth;
mod chart;
mod metrics;
mod status;

use api::*;
use auth::*;
use chart::*;
use metrics::*;
pub(crate) use status::*;

/// How often the chart's history takes a sample of every backend's active connections.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: ten minutes at one sample every two seconds.
pub(crate) const HISTORY_LEN: usize = 300;
/// Admin connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const READ_ONLY: &[(&str, &str)] = &[("Allow", "GET, HEAD")];
const POST_ONLY: &[(&str, &str)] = &[("Allow", "POST")];
const CHALLENGE: &[(&str, &str)] = &[("WWW-Authenticate", "Bearer realm=\"ballast admin\"")];
/// Everything the page shows changes every two seconds; no cache may keep an old copy.
const NO_STORE: &[(&str, &str)] = &[("Cache-Control", "no-store")];

/// The status page; `__STATUS__` is replaced by the status JSON so the first paint needs no
/// round trip.
const PAGE: &str = include_str!("status.html");
const PAGE_SLOT: &str = "__STATUS__";

/// The status page's chart: a history of every backend's active connections, sampled by its
/// own task so that it outlives the admin listener (a reload that moves the listener keeps
/// the last ten minutes).
#[derive(Clone, Debug)]
pub(crate) struct Chart(Arc<Mutex<History>>);

impl Chart {
    /// Starts sampling `balancer` on `tasks` until `stop` is cancelled.
    pub(crate) fn start(
        balancer: &Arc<Balancer>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Chart {
        let history = Arc::new(Mutex::new(History::new(HISTORY_LEN)));
        tasks.spawn(sample_history(
            Arc::clone(balancer),
            Arc::clone(&history),
            stop,
        ));
        Chart(history)
    }
}

/// Serves the admin endpoints on `listener`, with `chart`'s history, until `stop` is
/// cancelled. At shutdown the supervisor cancels it only once the drain is over, so that
/// `/readyz` answers 503 `draining` meanwhile.
pub(crate) async fn serve(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    chart: Chart,
    stop: CancellationToken,
) -> io::Result<()> {
    if let Ok(local) = listener.local_addr()
        && !local.ip().is_loopback()
        && balancer.services().config.admin_token.is_none()
    {
        warn!(
            "admin listener on {local} is not on loopback and has no admin_token: \
             anyone who can reach it can drain backends"
        );
    }
    let tasks = TaskTracker::new();
    let ctx = Arc::new(Ctx {
        balancer,
        history: chart.0,
        limits: Limits::default(),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = AcceptBackoff::new("admin accept");
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                let (ctx, stop) = (Arc::clone(&ctx), stop.clone());
                tasks.spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        result = serve_connection(stream, &ctx) => if let Err(e) = result {
                            debug!("admin connection from {peer}: {e}");
                        },
                    }
                    drop(permit);
                });
            }
            Err(e) => backoff.on_error(e).await,
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    info!("admin listener stopped");
    Ok(())
}

struct Ctx {
    balancer: Arc<Balancer>,
    history: Arc<Mutex<History>>,
    limits: Limits,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{self, Request};
    use std::time::Instant;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("plain"), "plain");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("web%201").as_deref(), Some("web 1"));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
    }

    #[test]
    fn weights_are_whole_numbers_up_to_the_maximum() {
        assert_eq!(parse_weight("0"), Some(0));
        assert_eq!(parse_weight("256"), Some(256));
        assert_eq!(parse_weight("257"), None);
        assert_eq!(parse_weight("-1"), None);
        assert_eq!(parse_weight("+1"), None);
        assert_eq!(parse_weight("1.5"), None);
        assert_eq!(parse_weight(""), None);
        assert_eq!(parse_weight("99999999999"), None);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn query_parameters() {
        assert_eq!(query_param("/?token=abc", "token"), Some("abc"));
        assert_eq!(query_param("/?a=1&token=x%26y#f", "token"), Some("x%26y"));
        assert_eq!(query_param("/?tokens=abc", "token"), None);
        assert_eq!(query_param("/", "token"), None);
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            version: http::Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn bearer_header_or_query_token_on_reads_only() {
        let ok = |r: &Request| authorized(r, "s3cret");
        assert!(ok(&request(
            "GET",
            "/",
            &[("Authorization", "Bearer s3cret")]
        )));
        assert!(ok(&request(
            "POST",
            "/",
            &[("authorization", "bearer  s3cret")]
        )));
        assert!(!ok(&request(
            "GET",
            "/",
            &[("Authorization", "Bearer nope")]
        )));
        assert!(!ok(&request(
            "GET",
            "/",
            &[("Authorization", "Basic s3cret")]
        )));
        assert!(!ok(&request("GET", "/", &[])));
        assert!(ok(&request("GET", "/?token=s3cret", &[])));
        assert!(ok(&request("HEAD", "/metrics?token=s3cre%74", &[])));
        assert!(!ok(&request(
            "POST",
            "/api/backends/a/drain?token=s3cret",
            &[]
        )));
        // A wrong header is not rescued by a right query parameter.
        assert!(!ok(&request(
            "GET",
            "/?token=s3cret",
            &[("Authorization", "Bearer nope")]
        )));
    }

    #[test]
    fn cross_origin_posts_are_recognised() {
        let r = |headers: &[(&str, &str)]| same_origin(&request("POST", "/", headers));
        assert!(r(&[]));
        assert!(r(&[
            ("Host", "127.0.0.1:9000"),
            ("Origin", "http://127.0.0.1:9000")
        ]));
        assert!(!r(&[
            ("Host", "127.0.0.1:9000"),
            ("Origin", "https://evil.example")
        ]));
        assert!(!r(&[("Origin", "http://127.0.0.1:9000")]));
        assert!(!r(&[("Host", "127.0.0.1:9000"), ("Origin", "null")]));
    }

    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        let mut h = History::new(3);
        let start = Instant::now();
        for i in 0..5u64 {
            h.push(Sample {
                at: start + Duration::from_secs(i),
                active: vec![(("s".into(), "a".into()), i)],
            });
        }
        assert_eq!(h.samples.len(), 3);
        let values: Vec<u64> = h.samples.iter().map(|s| s.active[0].1).collect();
        assert_eq!(values, [2, 3, 4]);
    }

    #[test]
    fn page_embeds_escaped_json() {
        assert_eq!(PAGE.matches(PAGE_SLOT).count(), 1);
        assert!(PAGE.contains(r#"<link rel="icon" href="data:,">"#));
    }
}
