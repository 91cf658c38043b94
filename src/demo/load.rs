//! The demo's CPU: the load reading `/load` serves (sampled in the background) and the
//! CPU burned per request with `--burn-ms`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::*;

/// How often the CPU sampler takes a reading; sysinfo needs at least
/// `MINIMUM_CPU_UPDATE_INTERVAL` between samples for a meaningful difference.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Busy-loops on the blocking pool so the async workers stay free to answer `/load` while
/// the CPU is being burnt.
pub(super) async fn burn(duration: Duration) {
    let spin = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    });
    if let Err(e) = spin.await {
        warn!("burn task failed: {e}");
    }
}

pub(super) enum LoadMeter {
    /// Latest reading of a background sampler, as `f32` bits.
    Sampled(Arc<AtomicU32>),
    File(PathBuf),
    Unavailable,
}

impl LoadMeter {
    pub(super) fn start(source: &LoadSource) -> LoadMeter {
        let (target, process) = match source {
            LoadSource::File(path) => return LoadMeter::File(path.clone()),
            LoadSource::System => (None, false),
            LoadSource::Process => (sysinfo::get_current_pid().ok(), true),
        };
        if process && target.is_none() {
            warn!("cannot find our own pid; /load will answer 503");
            return LoadMeter::Unavailable;
        }
        let sys = match sysinfo::System::new() {
            Ok(sys) => sys,
            Err(e) => {
                warn!("cannot read CPU statistics ({e}); /load will answer 503");
                return LoadMeter::Unavailable;
            }
        };
        let latest = Arc::new(AtomicU32::new(0f32.to_bits()));
        let weak = Arc::downgrade(&latest);
        let spawned = std::thread::Builder::new()
            .name("load-sampler".into())
            .spawn(move || sample_forever(sys, target, &weak));
        match spawned {
            Ok(_) => LoadMeter::Sampled(latest),
            Err(e) => {
                warn!("cannot start the load sampler ({e}); /load will answer 503");
                LoadMeter::Unavailable
            }
        }
    }

    /// The load as the `/load` body, or `None` when it cannot be known (→ 503).
    pub(super) async fn read(&self) -> Option<String> {
        match self {
            LoadMeter::Sampled(latest) => {
                Some(format_load(f32::from_bits(latest.load(Ordering::Relaxed))))
            }
            LoadMeter::File(path) => match tokio::fs::read_to_string(path).await {
                Ok(text) => Some(text.trim().to_string()),
                Err(e) => {
                    debug!("cannot read load file {}: {e}", path.display());
                    None
                }
            },
            LoadMeter::Unavailable => None,
        }
    }
}

/// Runs on a plain thread rather than the blocking pool because it never finishes on its
/// own, and the runtime waits for blocking-pool tasks when it shuts down. It stops once the
/// server has dropped the shared value.
pub(super) fn sample_forever(
    mut sys: sysinfo::System,
    process: Option<sysinfo::Pid>,
    latest: &Weak<AtomicU32>,
) {
    loop {
        // The first refresh only sets the baseline; usage is the difference to the next one.
        let percent = match process {
            None => {
                sys.refresh_cpu_usage();
                sys.global_cpu_usage()
            }
            Some(pid) => {
                sys.refresh_processes_specifics(
                    sysinfo::ProcessesToUpdate::Some(&[pid]),
                    true,
                    sysinfo::ProcessRefreshKind::nothing().with_cpu(),
                );
                // sysinfo counts 100 % per CPU; dividing by the CPU count makes it a share
                // of the machine like the system figure.
                let cpus = sys.cpus().len().max(1) as f32;
                sys.process(pid).map_or(0.0, |p| p.cpu_usage() / cpus)
            }
        };
        let Some(latest) = latest.upgrade() else {
            return;
        };
        latest.store(clamp_percent(percent).to_bits(), Ordering::Relaxed);
        drop(latest);
        std::thread::sleep(SAMPLE_EVERY.max(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL));
    }
}

pub(super) fn clamp_percent(p: f32) -> f32 {
    if p.is_finite() {
        p.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

/// One decimal, always within 0–100.
pub(super) fn format_load(p: f32) -> String {
    format!("{:.1}", clamp_percent(p))
}
