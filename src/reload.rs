//! Reloads asked for from outside the supervisor: SIGHUP ([`crate::signal::Hangup`]) and,
//! with `--watch`, a change of the configuration file's content ([`crate::watch`]).
//!
//! Every source shares one [`Reloads`] channel to the supervisor
//! ([`crate::server::Server::run_with_reloads`]), so they work side by side and their
//! reloads are put in force one at a time, in the order asked. A request tells systemd that
//! a reload started (`RELOADING=1`), reads the file and sends the configuration on when it
//! validates; one that does not is logged as `reload rejected: ...` with the message
//! `--check` prints, systemd hears that the reload is over (`READY=1`), and the running
//! configuration keeps serving. For a configuration sent on, the supervisor gives the
//! verdict (`rejected` logs a refusal the same way for both).

use std::fmt::Display;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::systemd;

/// Configurations waiting for the supervisor: at most this many reloads are queued.
const QUEUED: usize = 4;

/// The sending side of the reload channel, for any number of sources (clone it).
#[derive(Clone, Debug)]
pub struct Reloads {
    path: PathBuf,
    sender: mpsc::Sender<Config>,
}

/// A reload channel for the configuration file at `path`: the sources' side, and the
/// receiver the supervisor takes reloads from.
pub fn channel(path: PathBuf) -> (Reloads, mpsc::Receiver<Config>) {
    let (sender, receiver) = mpsc::channel(QUEUED);
    (Reloads { path, sender }, receiver)
}

impl Reloads {
    /// The configuration file every reload reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads the configuration because of `why` (`SIGHUP`, `balancer.ron changed`): tells
    /// systemd, reads and validates the file, and sends a valid configuration to the
    /// supervisor; an invalid one is rejected. Returns false, doing nothing, once the
    /// supervisor is gone or shutting down.
    pub async fn request(&self, why: &str) -> bool {
        if self.sender.is_closed() {
            log::info!("{why}: shutting down, no reload");
            return false;
        }
        log::info!("{why}: reloading {}", self.path.display());
        systemd::reloading(&format!("reloading: {why}"));
        match Config::load(&self.path) {
            Ok(config) => self.sender.send(config).await.is_ok(),
            Err(e) => {
                rejected(e);
                !self.sender.is_closed()
            }
        }
    }
}

/// Logs a reload that was refused, `reload rejected: {why}; keeping the running
/// configuration`, and tells systemd that the reload is over.
pub(crate) fn rejected(why: impl Display) {
    let message = format!("reload rejected: {why}; keeping the running configuration");
    log::error!("{message}");
    systemd::ready(&message);
}
