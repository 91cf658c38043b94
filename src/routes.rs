//! A service's route table: which target a TLS server name leads to. Built once per
//! configuration (at start and by every reload), read without a lock by every connection of
//! the service.
//!
//! Matching: the exact name first, then the longest matching wildcard. `*.example.com`
//! matches every name that ends in `.example.com`, whatever the number of labels before it
//! (`api.example.com`, `a.b.example.com`), but not `example.com` itself. Names are compared
//! lower-cased: the configuration and the ClientHello parser both lower-case them.
//!
//! Generic over the target so that it stays pure: the balancer holds tables of running
//! services.

use std::collections::HashMap;
use std::fmt;

use crate::config::RouteConfig;

/// One service's routes, with each target resolved.
pub(crate) struct Routes<T> {
    /// Exact names.
    exact: HashMap<String, T>,
    /// Wildcards by their suffix, the dot included (`*.example.com` is `.example.com`),
    /// longest first.
    wildcards: Vec<(String, T)>,
}

impl<T: Clone> Routes<T> {
    /// The table of `routes`, with each route's service resolved by `target`. A route whose
    /// service `target` does not know is left out (the configuration's rules leave none).
    pub(crate) fn new(routes: &[RouteConfig], mut target: impl FnMut(&str) -> Option<T>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcards = Vec::new();
        for route in routes {
            let Some(to) = target(&route.service) else {
                continue;
            };
            for name in &route.server_names {
                match name.strip_prefix('*') {
                    Some(suffix) => wildcards.push((suffix.to_string(), to.clone())),
                    None => {
                        exact.insert(name.clone(), to.clone());
                    }
                }
            }
        }
        // Stable: of two equal suffixes (which the configuration forbids) the first wins.
        wildcards.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Routes { exact, wildcards }
    }
}

impl<T> Routes<T> {
    /// Where server name `name` (lower case) leads: the route naming it exactly, else the
    /// route with the longest wildcard that matches it, else none.
    pub(crate) fn find(&self, name: &str) -> Option<&T> {
        if let Some(to) = self.exact.get(name) {
            return Some(to);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, to)| to)
    }
}

impl<T> fmt::Debug for Routes<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut exact: Vec<&String> = self.exact.keys().collect();
        exact.sort();
        let wildcards: Vec<String> = self
            .wildcards
            .iter()
            .map(|(s, _)| format!("*{s}"))
            .collect();
        f.debug_struct("Routes")
            .field("exact", &exact)
            .field("wildcards", &wildcards)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(names: &[&str], service: &str) -> RouteConfig {
        RouteConfig {
            server_names: names.iter().map(|n| n.to_string()).collect(),
            service: service.to_string(),
        }
    }

    fn table() -> Routes<String> {
        let routes = [
            route(&["*.example.com", "example.com"], "wide"),
            route(&["api.example.com", "*.eu.example.com"], "api"),
            route(&["*.api.example.com"], "deep"),
            route(&["gone.example.com"], "missing"),
        ];
        Routes::new(&routes, |s| (s != "missing").then(|| s.to_string()))
    }

    #[test]
    fn exact_first_then_the_longest_wildcard() {
        let t = table();
        let to = |name: &str| t.find(name).map(String::as_str);
        assert_eq!(to("api.example.com"), Some("api"));
        assert_eq!(to("example.com"), Some("wide"));
        assert_eq!(to("www.example.com"), Some("wide"));
        assert_eq!(to("a.b.example.com"), Some("wide"));
        assert_eq!(to("v1.api.example.com"), Some("deep"));
        assert_eq!(to("x.y.api.example.com"), Some("deep"));
        assert_eq!(to("paris.eu.example.com"), Some("api"));
        // A wildcard takes at least one label before its suffix.
        assert_eq!(to("eu.example.com"), Some("wide"));
        assert_eq!(to(".example.com"), None);
        assert_eq!(to("example.org"), None);
        assert_eq!(to("notexample.com"), None);
        // A route to a service the balancer does not know is left out.
        assert_eq!(to("gone.example.com"), Some("wide"));
    }

    #[test]
    fn debug_lists_names_only() {
        assert_eq!(
            format!("{:?}", table()),
            "Routes { exact: [\"api.example.com\", \"example.com\"], wildcards: [\"*.api.example.com\", \"*.eu.example.com\", \"*.example.com\"] }"
        );
    }
}
