//! The admin token: bearer header or `?token=`, compared in constant time.

use crate::http::Request;

use super::*;

/// Whether `request` carries `token`: as `Authorization: Bearer <token>`, or for reads as the
/// `token` query parameter.
pub(super) fn authorized(request: &Request, token: &str) -> bool {
    let from_header = request.header("authorization").and_then(|value| {
        let (scheme, credentials) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim_start_matches(' '))
    });
    if let Some(given) = from_header {
        return constant_time_eq(given.as_bytes(), token.as_bytes());
    }
    if matches!(request.method.as_str(), "GET" | "HEAD")
        && let Some(given) = query_param(&request.target, "token")
        && let Some(given) = percent_decode(given)
    {
        return constant_time_eq(given.as_bytes(), token.as_bytes());
    }
    false
}

/// The raw value of parameter `name` in the query of `target`.
pub(super) fn query_param<'t>(target: &'t str, name: &str) -> Option<&'t str> {
    let (_, query) = target.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right (only, unavoidably, whether its length was).
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}
