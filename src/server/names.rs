//! Backends' host names, for the supervisor: resolved before a configuration is put in
//! force (so its first connections already see the addresses), then re-resolved by the
//! watcher every `dns.interval`.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::future::join_all;
use log::error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BackendAddr, Config, DnsConfig};
use crate::dns::{self, Resolved, Resolver};

/// The host names of a configuration, what they resolve to, and their watcher.
pub(super) struct HostNames {
    hosts: BTreeSet<String>,
    dns: DnsConfig,
    resolved: Arc<Resolved>,
    watcher: Option<(watch::Receiver<Arc<Resolved>>, CancellationToken)>,
}

/// The host names backends of `config` are given by.
fn hosts(config: &Config) -> BTreeSet<String> {
    config
        .services
        .iter()
        .flat_map(|s| &s.backends)
        .filter_map(|b| match &b.addr {
            BackendAddr::Name { host, .. } => Some(host.clone()),
            BackendAddr::Ip(_) => None,
        })
        .collect()
}

impl HostNames {
    pub(super) fn new() -> HostNames {
        HostNames {
            hosts: BTreeSet::new(),
            dns: DnsConfig::default(),
            resolved: Arc::default(),
            watcher: None,
        }
    }

    /// Resolves the host names of `config` once and watches them on `tracker` from then
    /// on, unless they and the DNS settings are those already watched. Names shared with
    /// the previous configuration start from their last addresses, so a failed lookup now
    /// keeps them. Returns every name's addresses (none for a name never resolved).
    pub(super) async fn follow(&mut self, config: &Config, tracker: &TaskTracker) -> Arc<Resolved> {
        let hosts = hosts(config);
        if hosts == self.hosts && config.dns == self.dns {
            return Arc::clone(&self.resolved);
        }
        self.stop();
        let mut names = dns::Names::seeded(hosts.iter().cloned(), &self.resolved);
        self.hosts = hosts;
        self.dns = config.dns.clone();
        if self.hosts.is_empty() {
            self.resolved = Arc::default();
            return Arc::clone(&self.resolved);
        }
        match Resolver::new(&config.dns.servers, config.dns.interval) {
            Ok(resolver) => {
                names.refresh(&resolver).await;
                let stop = CancellationToken::new();
                let mut changes = dns::spawn_watcher(
                    Arc::new(resolver),
                    names,
                    config.dns.interval,
                    tracker,
                    stop.clone(),
                );
                self.resolved = Arc::clone(&changes.borrow_and_update());
                self.watcher = Some((changes, stop));
            }
            Err(e) => {
                error!("dns: {e}; backends given by host name have no addresses");
                self.resolved = Arc::new(names.resolved());
            }
        }
        Arc::clone(&self.resolved)
    }

    /// The next addresses the watcher publishes; never ready without a watcher.
    pub(super) async fn changed(&mut self) -> Arc<Resolved> {
        let Some((changes, _)) = &mut self.watcher else {
            return std::future::pending().await;
        };
        if changes.changed().await.is_err() {
            self.watcher = None;
            return std::future::pending().await;
        }
        self.resolved = Arc::clone(&changes.borrow_and_update());
        Arc::clone(&self.resolved)
    }

    /// Stops the watcher.
    pub(super) fn stop(&mut self) {
        if let Some((_, stop)) = self.watcher.take() {
            stop.cancel();
        }
    }
}

/// Whether some service of `config` has a backend, with host names resolved as in
/// `resolved`.
pub(super) fn can_serve(config: &Config, resolved: &Resolved) -> bool {
    config
        .services
        .iter()
        .flat_map(|s| &s.backends)
        .any(|b| match &b.addr {
            BackendAddr::Ip(_) => true,
            BackendAddr::Name { host, .. } => resolved.get(host).is_some_and(|a| !a.is_empty()),
        })
}

/// What `ballast --check` warns about: each backend host name of `config` that does not
/// resolve now, with the reason, in name order. Queries go where the running balancer's
/// would, every name at once (as the balancer's first lookups do), so a dead server costs
/// one lookup's wait in all, not one per name.
pub async fn unresolved(config: &Config) -> Vec<String> {
    let hosts = hosts(config);
    if hosts.is_empty() {
        return Vec::new();
    }
    let resolver = match Resolver::new(&config.dns.servers, config.dns.interval) {
        Ok(resolver) => resolver,
        Err(e) => return vec![format!("{e}: no host name can be resolved")],
    };
    let results = join_all(hosts.iter().map(|host| resolver.lookup(host))).await;
    let mut warnings = Vec::new();
    for (host, result) in hosts.iter().zip(results) {
        if let Err(e) = result {
            let users: Vec<String> = config
                .services
                .iter()
                .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
                .filter(|(_, b)| matches!(&b.addr, BackendAddr::Name { host: h, .. } if h == host))
                .map(|(s, b)| format!("service {} backend {}", s.name, b.name))
                .collect();
            warnings.push(format!(
                "{e} ({}): it has no addresses until it resolves",
                users.join(", ")
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::dns::test_server::{DnsServer, Mode};

    /// Five services, each with one backend by host name, resolved by `server` alone.
    fn five_names(server: &DnsServer, interval: &str) -> Config {
        let services: Vec<String> = (1..=5)
            .map(|i| {
                format!(
                    r#"(name: "s{i}", listen: "127.0.0.1:0", algorithm: RoundRobin,
                        backends: [(name: "b{i}", addr: "n{i}.test:80")]),"#
                )
            })
            .collect();
        let text = format!(
            r#"(services: [{}], dns: (servers: ["{}"], interval: "{interval}"))"#,
            services.concat(),
            server.addr()
        );
        Config::parse(&text, Path::new("test.ron")).expect("valid")
    }

    #[tokio::test]
    async fn check_resolves_every_name_at_once() {
        let server = DnsServer::start().await;
        server.set_mode(Mode::Silent);
        // A 4 s interval: each query waits 2 s for an answer. The five names' A and AAAA
        // queries (10) all arrive within the first second only if the names are resolved
        // at the same time; one after the other, the first name alone is asked until its
        // queries time out.
        let config = five_names(&server, "4s");
        let check = tokio::spawn(async move { unresolved(&config).await });
        let asked = tokio::time::timeout(Duration::from_secs(1), server.wait_queries(10)).await;
        let queries = server.queries();
        check.abort();
        assert!(
            asked.is_ok(),
            "only {queries} queries in 1 s: the names are resolved one after the other"
        );
    }

    #[tokio::test]
    async fn check_warns_about_each_name_that_does_not_resolve_in_name_order() {
        let server = DnsServer::start().await;
        server.set("n2.test", &["127.0.0.2".parse().expect("address")]);
        server.set("n4.test", &[]);
        let warnings = unresolved(&five_names(&server, "400ms")).await;
        assert_eq!(
            warnings,
            [
                "cannot resolve n1.test: no such name (service s1 backend b1): it has no addresses until it resolves",
                "cannot resolve n3.test: no such name (service s3 backend b3): it has no addresses until it resolves",
                "cannot resolve n4.test: it has no A or AAAA records (service s4 backend b4): it has no addresses until it resolves",
                "cannot resolve n5.test: no such name (service s5 backend b5): it has no addresses until it resolves",
            ]
        );
    }
}
