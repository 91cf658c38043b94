//! Prometheus metrics in the text exposition format 0.0.4.

use crate::backend::{Backend, Stats};
use crate::balancer::{Balancer, DEFAULT_SERVICE, Snapshot};
use crate::histogram::{Histogram, Reading};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::*;

/// The Prometheus text exposition format 0.0.4.
pub(super) fn metrics(balancer: &Balancer, snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    let totals = &balancer.totals;
    family(
        &mut out,
        "ballast_build_info",
        "gauge",
        "Build information; the value is always 1.",
    );
    let _ = writeln!(
        out,
        "ballast_build_info{{version=\"{}\"}} 1",
        escape_label(env!("CARGO_PKG_VERSION"))
    );
    family(
        &mut out,
        "ballast_uptime_seconds",
        "gauge",
        "Seconds since the balancer started.",
    );
    let _ = writeln!(
        out,
        "ballast_uptime_seconds {}",
        balancer.started.elapsed().as_secs_f64()
    );
    let accepted = totals.accepted.load(Ordering::Relaxed);
    let no_backend = totals.no_backend.load(Ordering::Relaxed);
    let bad_header = totals.bad_proxy_header.load(Ordering::Relaxed);
    counter(
        &mut out,
        "ballast_connections_accepted_total",
        "Client connections accepted.",
        "",
        accepted,
    );
    counter(
        &mut out,
        "ballast_connections_no_backend_total",
        "Client connections closed because no backend could take them.",
        "",
        no_backend,
    );
    counter(
        &mut out,
        "ballast_connections_bad_proxy_header_total",
        "Client connections closed for a missing, malformed, truncated or slow PROXY header.",
        "",
        bad_header,
    );
    // One service for now, so its totals are the balancer's.
    let service = format!("service=\"{}\"", escape_label(DEFAULT_SERVICE));
    let service_labels = format!("{{{service}}}");
    counter(
        &mut out,
        "ballast_service_connections_accepted_total",
        "Client connections accepted by the service.",
        &service_labels,
        accepted,
    );
    counter(
        &mut out,
        "ballast_service_connections_no_backend_total",
        "Client connections of the service closed because no backend could take them.",
        &service_labels,
        no_backend,
    );
    counter(
        &mut out,
        "ballast_service_connections_bad_proxy_header_total",
        "Client connections of the service closed for a bad or missing PROXY header.",
        &service_labels,
        bad_header,
    );

    type Value = fn(&Backend, &Snapshot) -> Option<String>;
    let per_backend: [(&str, &str, &str, Value); 9] = [
        (
            "ballast_backend_connections_active",
            "gauge",
            "Connections open to the backend now.",
            |b, _| Some(b.stats().active.load(Ordering::Relaxed).to_string()),
        ),
        (
            "ballast_backend_connections_total",
            "counter",
            "Client connections relayed to the backend.",
            |b, _| Some(b.stats().total.load(Ordering::Relaxed).to_string()),
        ),
        (
            "ballast_backend_sent_bytes_total",
            "counter",
            "Bytes sent to the backend, counted as they move.",
            |b, _| {
                Some(
                    b.stats()
                        .bytes_to_backend
                        .load(Ordering::Relaxed)
                        .to_string(),
                )
            },
        ),
        (
            "ballast_backend_received_bytes_total",
            "counter",
            "Bytes received from the backend, counted as they move.",
            |b, _| {
                Some(
                    b.stats()
                        .bytes_to_client
                        .load(Ordering::Relaxed)
                        .to_string(),
                )
            },
        ),
        (
            "ballast_backend_connect_failures_total",
            "counter",
            "Failed connection attempts to the backend.",
            |b, _| {
                Some(
                    b.stats()
                        .connect_failures
                        .load(Ordering::Relaxed)
                        .to_string(),
                )
            },
        ),
        (
            "ballast_backend_up",
            "gauge",
            "Whether the health checks consider the backend up (1) or down (0).",
            |b, _| Some(u8::from(b.is_up()).to_string()),
        ),
        (
            "ballast_backend_load_ratio",
            "gauge",
            "Last fresh /load reading as a ratio (0 to 1); absent when unknown or stale.",
            |b, _| b.load().map(|l| (f64::from(l) / 100.0).to_string()),
        ),
        (
            "ballast_backend_weight",
            "gauge",
            "Weight in effect, including runtime changes (0 = drained).",
            |b, _| Some(b.weight.to_string()),
        ),
        (
            "ballast_backend_configured_weight",
            "gauge",
            "Weight in the configuration file.",
            |b, s| Some(configured_weight(b, s).to_string()),
        ),
    ];
    let labels: Vec<String> = snapshot
        .backends
        .iter()
        .map(|b| format!("{service},backend=\"{}\"", escape_label(&b.name)))
        .collect();
    for (name, kind, help, value) in per_backend {
        family(&mut out, name, kind, help);
        for (b, labels) in snapshot.backends.iter().zip(&labels) {
            if let Some(v) = value(b, snapshot) {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    }

    type Durations = fn(&Stats) -> &Histogram;
    let histograms: [(&str, &str, Durations); 2] = [
        (
            "ballast_backend_connect_duration_seconds",
            "Time to connect to the backend (TCP handshake), for successful connects.",
            |s| &s.connect_duration,
        ),
        (
            "ballast_connection_duration_seconds",
            "Time from accept to close of client connections relayed to the backend.",
            |s| &s.connection_duration,
        ),
    ];
    for (name, help, durations) in histograms {
        family(&mut out, name, "histogram", help);
        for (b, labels) in snapshot.backends.iter().zip(&labels) {
            histogram(&mut out, name, labels, &durations(b.stats()).read());
        }
    }
    out
}

/// The `_bucket` (cumulative, `+Inf` last), `_sum` and `_count` samples of one histogram;
/// `labels` are the series' own (at least one), without `le`.
pub(super) fn histogram(out: &mut String, name: &str, labels: &str, reading: &Reading) {
    for (bound, count) in &reading.buckets {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
    }
    let count = reading.count;
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", reading.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// The `# HELP` and `# TYPE` lines of one metric family.
/// A counter family with its one sample; `labels` is empty or `{name="value",...}`.
fn counter(out: &mut String, name: &str, help: &str, labels: &str, value: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name}{labels} {value}");
}

pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value as the text format requires: backslash, double quote, line feed.
pub(super) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::Histogram;
    use std::time::Duration;

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        const BOUNDS: &[Duration] = &[Duration::from_millis(1), Duration::from_millis(250)];
        let h = Histogram::new(BOUNDS);
        for millis in [1, 2, 300] {
            h.observe(Duration::from_millis(millis));
        }
        let mut out = String::new();
        histogram(
            &mut out,
            "x_seconds",
            "service=\"s\",backend=\"b\"",
            &h.read(),
        );
        assert_eq!(
            out,
            "x_seconds_bucket{service=\"s\",backend=\"b\",le=\"0.001\"} 1\n\
             x_seconds_bucket{service=\"s\",backend=\"b\",le=\"0.25\"} 2\n\
             x_seconds_bucket{service=\"s\",backend=\"b\",le=\"+Inf\"} 3\n\
             x_seconds_sum{service=\"s\",backend=\"b\"} 0.303\n\
             x_seconds_count{service=\"s\",backend=\"b\"} 3\n"
        );
    }
}
