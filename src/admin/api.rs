//! One admin connection: the request loop, routing, and the runtime API (drain, enable,
//! weight).

use crate::balancer::{Service, UnknownBackend};
use crate::config::MAX_WEIGHT;
use crate::http::{self, Reply, Request};
use log::debug;
use serde::Serialize;
use std::io;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;

use super::*;

pub(super) async fn serve_connection(stream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    http::serve_requests(
        stream,
        &ctx.limits,
        None,
        error_reply,
        |request| async move {
            let reply = respond(&request, ctx);
            debug!(
                "admin: {} {} -> {}",
                request.method,
                request.path(),
                reply.status
            );
            reply
        },
    )
    .await
}

/// A reply no cache keeps: every admin answer is live state.
pub(super) fn fresh(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
    Reply::new(status, content_type, body).with_headers(NO_STORE)
}

pub(super) fn json_reply(status: u16, value: &impl Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            fresh(status, JSON, body)
        }
        Err(e) => error_reply(500, &format!("cannot encode the answer: {e}")),
    }
}

/// `{"error": message}` with `status`.
pub(super) fn error_reply(status: u16, message: &str) -> Reply {
    let body = serde_json::json!({ "error": message });
    let mut body = body.to_string().into_bytes();
    body.push(b'\n');
    fresh(status, JSON, body)
}

pub(super) fn respond(request: &Request, ctx: &Ctx) -> Reply {
    // The probes answer without the token: Kubernetes probes and load balancers' health
    // checks cannot easily send one, and they reveal nothing worth hiding.
    if let Some(reply) = probe(request, &ctx.balancer) {
        return reply;
    }
    let services = ctx.balancer.services();
    let method = request.method.as_str();
    if let Some(token) = &services.config.admin_token
        && !authorized(request, token)
    {
        return error_reply(
            401,
            "this admin listener needs `Authorization: Bearer <token>` (or ?token=<token> on a GET)",
        )
        .with_headers(CHALLENGE);
    }
    let readable = matches!(method, "GET" | "HEAD");
    let path = request.path();
    match path {
        "/" if readable => fresh(200, HTML, render_page(&status(ctx, &services))),
        "/metrics" if readable => fresh(200, METRICS, metrics(&ctx.balancer, &services)),
        "/api/status" if readable => json_reply(200, &status(ctx, &services)),
        "/" | "/metrics" | "/api/status" => {
            error_reply(405, "method not allowed").with_headers(READ_ONLY)
        }
        _ => {
            if let Some(rest) = path.strip_prefix("/api/backends/") {
                return backend_action(request, None, rest, ctx);
            }
            let in_service = path
                .strip_prefix("/api/services/")
                .and_then(|rest| rest.split_once("/backends/"));
            match in_service {
                Some((service, rest)) if !service.contains('/') => {
                    backend_action(request, Some(service), rest, ctx)
                }
                _ => error_reply(404, "not found"),
            }
        }
    }
}

/// `/healthz` and `/readyz`, whatever the token; `None` for any other path.
///
/// `/healthz` (liveness) answers 200 `ok` for as long as the admin listener serves.
/// `/readyz` (readiness) answers 200 `{"ready":true,"reasons":[]}` while every service with
/// backends has one up, and 503 `{"ready":false,"reasons":[...]}` otherwise, or with
/// `["draining"]` from the start of the shutdown to the exit ([`Balancer::not_ready`]).
pub(super) fn probe(request: &Request, balancer: &Balancer) -> Option<Reply> {
    let path = request.path();
    if !matches!(path, "/healthz" | "/readyz") {
        return None;
    }
    if !matches!(request.method.as_str(), "GET" | "HEAD") {
        return Some(error_reply(405, "method not allowed").with_headers(READ_ONLY));
    }
    Some(if path == "/healthz" {
        fresh(200, TEXT, "ok\n")
    } else {
        let reasons = balancer.not_ready();
        let status = if reasons.is_empty() { 200 } else { 503 };
        json_reply(
            status,
            &serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons }),
        )
    })
}

/// `POST /api/services/{service}/backends/{name}/(drain|enable|weight/{n})`, or without
/// the service (`/api/backends/...`) for a backend name only one service has; `rest` is
/// what follows `/backends/`.
pub(super) fn backend_action(
    request: &Request,
    service: Option<&str>,
    rest: &str,
    ctx: &Ctx,
) -> Reply {
    let segments: Vec<&str> = rest.split('/').collect();
    let (name, weight) = match segments.as_slice() {
        [name, "drain"] => (name, Ok(Some(0))),
        [name, "enable"] => (name, Ok(None)),
        [name, "weight", n] => (
            name,
            parse_weight(n).map(Some).ok_or_else(|| {
                format!("invalid weight {n:?}: expected a whole number from 0 to {MAX_WEIGHT}")
            }),
        ),
        [name, "weight"] => (
            name,
            Err("missing weight: POST /api/backends/{name}/weight/{n}".to_string()),
        ),
        _ => return error_reply(404, "not found"),
    };
    if request.method != "POST" {
        return error_reply(405, "method not allowed: use POST").with_headers(POST_ONLY);
    }
    if !same_origin(request) {
        return error_reply(403, "cross-origin request refused");
    }
    let weight = match weight {
        Ok(weight) => weight,
        Err(message) => return error_reply(400, &message),
    };
    let Some(name) = percent_decode(name) else {
        return error_reply(400, "invalid percent-encoding in the backend name");
    };
    let services = ctx.balancer.services();
    let service = match service {
        Some(service) => {
            let Some(service) = percent_decode(service) else {
                return error_reply(400, "invalid percent-encoding in the service name");
            };
            match services.get(&service) {
                Some(found) => found,
                None => return error_reply(404, &format!("unknown service {service:?}")),
            }
        }
        None => {
            let has = |s: &&Arc<Service>| {
                s.file_config().backends.iter().any(|b| b.name == name)
                    || s.snapshot().backends.iter().any(|b| b.name == name)
            };
            let mut found = services.list.iter().filter(has);
            match (found.next(), found.next()) {
                (Some(only), None) => only,
                (None, _) => return error_reply(404, &format!("unknown backend {name:?}")),
                (Some(_), Some(_)) => {
                    return error_reply(
                        409,
                        &format!(
                            "several services have a backend {name:?}: use /api/services/{{service}}/backends/{{name}}/..."
                        ),
                    );
                }
            }
        }
    };
    match service.set_weight(&name, weight) {
        Ok(()) => {
            let snapshot = service.snapshot();
            let now = Instant::now();
            let changed: Vec<BackendStatus> = snapshot
                .backends
                .iter()
                .filter(|b| b.name == name || b.config.name == name)
                .map(|b| backend_status(b, &snapshot, now))
                .collect();
            match changed.len() {
                // Only a reload racing with this request removes it.
                0 => error_reply(404, &format!("unknown backend {name:?}")),
                1 => json_reply(200, &changed[0]),
                // A host name's every address.
                _ => json_reply(200, &changed),
            }
        }
        Err(UnknownBackend(name)) => error_reply(404, &format!("unknown backend {name:?}")),
    }
}

pub(super) fn parse_weight(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&w| w <= MAX_WEIGHT)
}

/// A browser sends `Origin` on a cross-site `POST`; refuse it unless it names this host.
/// Requests without `Origin` (curl, scripts) pass.
pub(super) fn same_origin(request: &Request) -> bool {
    let Some(origin) = request.header("origin") else {
        return true;
    };
    let host = request.header("host").unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    !host.is_empty() && origin_host.is_some_and(|h| h.eq_ignore_ascii_case(host))
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
pub(super) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
