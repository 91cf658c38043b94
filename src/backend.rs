//! The live state of one backend: its address and the counters the data path updates. A
//! [`ConnectionGuard`] owns one unit of `active`, so the count comes back down however a
//! connection ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::BackendConfig;
use crate::selection::Candidate;

#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub stats: Stats,
}

/// Counters shared by every connection to one backend.
#[derive(Debug, Default)]
pub struct Stats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_failures: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

impl Backend {
    pub fn new(config: &BackendConfig) -> Backend {
        Backend {
            name: config.name.clone(),
            addr: config.addr,
            weight: config.weight,
            stats: Stats::default(),
        }
    }

    /// What a selector may see of this backend right now.
    pub fn candidate(&self) -> Candidate {
        Candidate::new(self.weight, self.stats.active.load(Ordering::Relaxed))
    }

    /// Counts a new connection as active until the guard is dropped.
    pub fn connect_guard(self: &Arc<Self>) -> ConnectionGuard {
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            backend: Arc::clone(self),
        }
    }
}

/// One active connection to `backend`; dropping it decrements the active count.
#[derive(Debug)]
pub struct ConnectionGuard {
    backend: Arc<Backend>,
}

impl ConnectionGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.backend.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_active_connections() {
        let addr = "127.0.0.1:1".parse().expect("addr");
        let b = Arc::new(Backend::new(&BackendConfig {
            name: "a".into(),
            addr,
            weight: 1,
            check: crate::config::Check::Tcp,
            load_addr: addr,
            load_path: "/load".into(),
        }));
        let g1 = b.connect_guard();
        let g2 = b.connect_guard();
        assert_eq!(b.candidate().active, 2);
        drop(g1);
        assert_eq!(b.candidate().active, 1);
        drop(g2);
        assert_eq!(b.candidate().active, 0);
    }
}
