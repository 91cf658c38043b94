//! Prometheus metrics in the text exposition format 0.0.4.

use crate::backend::{Backend, Stats};
use crate::balancer::{Balancer, Count, Services, Snapshot};
use crate::histogram::{Histogram, Reading};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;

/// The Prometheus text exposition format 0.0.4.
pub(super) fn metrics(balancer: &Balancer, services: &Services) -> String {
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
    // (name without its prefix, help for the process, help for a service, which total)
    type Total = (&'static str, &'static str, &'static str, Count);
    let counts: [Total; 3] = [
        (
            "connections_accepted_total",
            "Client connections accepted.",
            "Client connections accepted by the service.",
            Count::Accepted,
        ),
        (
            "connections_no_backend_total",
            "Client connections closed because no backend could take them.",
            "Client connections of the service closed because no backend could take them.",
            Count::NoBackend,
        ),
        (
            "connections_bad_proxy_header_total",
            "Client connections closed for a missing, malformed, truncated or slow PROXY header.",
            "Client connections of the service closed for a bad or missing PROXY header.",
            Count::BadProxyHeader,
        ),
    ];
    for (name, help, _, which) in counts {
        let name = format!("ballast_{name}");
        counter(&mut out, &name, help, "", totals.get(which));
    }
    for (name, _, help, which) in counts {
        let name = format!("ballast_service_{name}");
        family(&mut out, &name, "counter", help);
        for service in &services.list {
            let _ = writeln!(
                out,
                "{name}{{service=\"{}\"}} {}",
                escape_label(&service.name),
                service.totals.get(which)
            );
        }
    }

    type Value = fn(&Backend, &Snapshot) -> Option<String>;
    let per_backend: [(&str, &str, &str, Value); 10] = [
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
            "ballast_backend_effective_weight",
            "gauge",
            "Weight in effect now: the weight, or less while a slow start ramps it up.",
            |b, _| Some(b.effective_weight().to_string()),
        ),
        (
            "ballast_backend_configured_weight",
            "gauge",
            "Weight in the configuration file.",
            |b, s| Some(configured_weight(b, s).to_string()),
        ),
    ];
    let snapshots: Vec<(String, Arc<Snapshot>)> = services
        .list
        .iter()
        .map(|s| {
            (
                format!("service=\"{}\"", escape_label(&s.name)),
                s.snapshot(),
            )
        })
        .collect();
    let rows: Vec<(&Arc<Backend>, &Snapshot, String)> = snapshots
        .iter()
        .flat_map(|(service, snapshot)| {
            snapshot.backends.iter().map(move |b| {
                let labels = format!("{service},backend=\"{}\"", escape_label(&b.name));
                (b, snapshot.as_ref(), labels)
            })
        })
        .collect();
    for (name, kind, help, value) in per_backend {
        family(&mut out, name, kind, help);
        for (b, snapshot, labels) in &rows {
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
        for (b, _, labels) in &rows {
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
