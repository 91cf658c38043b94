//! Signals, for both binaries: SIGINT and SIGTERM request a shutdown ([`Shutdown`]), and for
//! `ballast` SIGHUP requests a reload ([`Hangup`]).
//!
//! Install the handlers before announcing readiness: a signal that arrives before its
//! handler is installed takes the default action and kills the process.

use std::path::PathBuf;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::reload::{self, Reloads};

/// The exit status after a second SIGINT, when [`Shutdown::second_interrupt_exits`] is set:
/// 128 + SIGINT, as a shell reports a process killed by SIGINT.
pub const SECOND_INTERRUPT_STATUS: i32 = 130;

/// SIGINT and SIGTERM, the two ways to ask a binary to stop.
pub struct Shutdown {
    interrupt: Signal,
    terminate: Signal,
    second_interrupt_exits: bool,
}

impl Shutdown {
    /// Installs the SIGINT and SIGTERM handlers; from now on neither kills the process. Must
    /// be called inside a tokio runtime. The error names the signal that could not be
    /// watched.
    pub fn install() -> Result<Shutdown, String> {
        Ok(Shutdown {
            interrupt: watch(SignalKind::interrupt(), "SIGINT")?,
            terminate: watch(SignalKind::terminate(), "SIGTERM")?,
            second_interrupt_exits: false,
        })
    }

    /// After the first SIGINT or SIGTERM, a second SIGINT exits the process at once with
    /// [`SECOND_INTERRUPT_STATUS`] (a second SIGTERM still has no extra effect): the way out
    /// of a drain that takes too long.
    pub fn second_interrupt_exits(mut self) -> Shutdown {
        self.second_interrupt_exits = true;
        self
    }

    /// Completes on the first SIGINT or SIGTERM, after logging `SIGINT: shutting down` (or
    /// `SIGTERM: ...`). Later signals are ignored, except a second SIGINT when
    /// [`Shutdown::second_interrupt_exits`] is set.
    pub async fn requested(self) {
        let Shutdown {
            mut interrupt,
            mut terminate,
            second_interrupt_exits,
        } = self;
        tokio::select! {
            _ = interrupt.recv() => log::info!("SIGINT: shutting down"),
            _ = terminate.recv() => log::info!("SIGTERM: shutting down"),
        }
        if second_interrupt_exits {
            tokio::spawn(async move {
                if interrupt.recv().await.is_some() {
                    log::warn!("second SIGINT: exiting without waiting for open connections");
                    std::process::exit(SECOND_INTERRUPT_STATUS);
                }
            });
        }
    }
}

/// SIGHUP, `ballast`'s request to re-read its configuration.
pub struct Hangup {
    hangup: Signal,
}

impl Hangup {
    /// Installs the SIGHUP handler; from now on SIGHUP no longer kills the process. Must be
    /// called inside a tokio runtime.
    pub fn install() -> Result<Hangup, String> {
        Ok(Hangup {
            hangup: watch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Re-reads the configuration at `path` on every SIGHUP, in a task of its own, and sends
    /// each one that validates; a file that does not is logged (with the message `--check`
    /// prints) and skipped, so the running configuration keeps serving. The task ends when
    /// the receiver is dropped. See [`Hangup::reload_into`] to share the channel with other
    /// sources of reloads.
    pub fn reloads(self, path: PathBuf) -> mpsc::Receiver<Config> {
        let (reloads, reloaded) = reload::channel(path);
        self.reload_into(reloads);
        reloaded
    }

    /// Requests a reload on `reloads` at every SIGHUP ([`Reloads::request`]), in a task of
    /// its own that ends when the supervisor is gone.
    pub fn reload_into(self, reloads: Reloads) {
        let mut hangup = self.hangup;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                if !reloads.request("SIGHUP").await {
                    return;
                }
            }
        });
    }
}

fn watch(kind: SignalKind, name: &str) -> Result<Signal, String> {
    signal(kind).map_err(|e| format!("cannot watch {name}: {e}"))
}
