//! ballast: a Layer-4 TCP load balancer.
//!
//! Map of the crate, one job per module (data flows down this list: a module uses the ones
//! below it, never one above):
//!
//! - [`cli`]: command-line parsing for both binaries, on `lexopt`, with the conventions they
//!   share (`--flag VALUE` or `--flag=VALUE`, UTF-8 only, errors and exit codes): `ballast`
//!   for the balancer, `backend` for `ballast-backend`.
//! - [`signal`]: the signals both binaries answer: SIGINT and SIGTERM request a shutdown (a
//!   second SIGINT exits `ballast` at once), SIGHUP re-reads `ballast`'s configuration.
//! - [`watch`]: `--watch`, a reload whenever the configuration file's content changes (its
//!   directory watched with `notify`, ConfigMap symlink swaps included).
//! - [`server`]: the supervisor (worker threads, reload, shutdown with a bounded grace
//!   period) and, in `server/`, the `workers` (threads, and the listening addresses of
//!   every service they accept on), backends' host `names` (resolved, then watched), one
//!   worker's `accept` loop, `connect` (pick, failover, the queue), `hello` (a client's TLS
//!   ClientHello, peeked, and where its server name routes it) and one connection's
//!   `session` (relay and access line).
//! - `admin`: the admin listener, in `admin/`: `api` (connections, routing, runtime API,
//!   the `/healthz` and `/readyz` probes), `auth` (the token), `chart` (the history ring),
//!   `status` (JSON and page), `metrics` (Prometheus text).
//! - [`reload`]: the one channel every source of reloads (SIGHUP, `--watch`) feeds the
//!   supervisor through: reads and validates the file, logs a rejected reload.
//! - `systemd`: `Type=notify` messages (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=`)
//!   over `$NOTIFY_SOCKET`, nothing without it.
//! - [`demo`]: the demo backend served by the `ballast-backend` binary: its listeners (one,
//!   or one per backend of a configuration) and the two pages.
//! - `monitor`: background health checks and `/load` pollers that feed the backends' state.
//! - `balancer`: the live state the server and the admin listener share: the services, each
//!   with its snapshot swapped whole (reload, DNS answer, runtime weight, slow-start step),
//!   its tiers (backups last) and the candidate view a selector picks from, its totals, and
//!   its route table with its targets resolved.
//! - `routes`: a service's route table by TLS server name (exact names, then the longest
//!   wildcard), pure and generic over its targets.
//! - `backend`: the live, shared counters of one backend and the RAII guard that keeps the
//!   active-connection count honest.
//! - `histogram`: lock-free duration histograms with fixed buckets (connect time, connection
//!   duration), read as Prometheus histograms.
//! - `dns`: backends given by host name: their `A` and `AAAA` addresses, on
//!   `hickory-resolver`, and the watcher that re-resolves them every interval, keeps a
//!   failing name's last good addresses and publishes the changes.
//! - `probe`: one TCP connect or one raw HTTP/1.1 `GET`, bounded in size and time (the
//!   health check reads the response head only); in `probe/`: the response `head`, a bounded
//!   `body`, and the `load` reading.
//! - `http`: the minimal HTTP/1.1 server code the demo backend and the admin listener share
//!   (no framework; `httparse` reads request heads): `request` reading, `response` writing,
//!   the request loop.
//! - [`listener`]: listening sockets for both binaries (`SO_REUSEADDR`, `SO_REUSEPORT`, a
//!   deep backlog) and the back-off after a failed `accept`.
//! - [`proxy_protocol`]: PROXY protocol v1 and v2 headers (HAProxy's `proxy-protocol.txt`),
//!   built and parsed, pure and bounded.
//! - [`tls_hello`]: the server name (SNI) of a TLS ClientHello spread over any number of
//!   records and segments, read without changing a byte; pure and bounded.
//! - `fault`: whose fault a failed socket operation is, the peer's or ballast's own: the one
//!   rule the relay's backend connects, the accept back-off, the health checks and the load
//!   poller share.
//! - [`config`]: reads `balancer.ron` into `raw` serde types, then validates them into domain
//!   types ([`config::Config`]); its `error`s name the file, line:column and what was
//!   expected.
//! - `relay`: moves bytes both ways between client and backend, preserving half-close; in
//!   `relay/`: one `direction`, `zero_copy` (splice through pooled pipes) and the buffer
//!   `pool`.
//! - [`selection`]: pure, I/O-free selection policies, one family per file in `selection/`
//!   (weighted round robin, least connections, workload, Maglev, power of two choices). A
//!   selector looks at a snapshot of candidates (weight, active connections, load,
//!   availability) and the client's address, and returns an index.
//! - `health`: the pure up/down state machine driven by check results (rise and fall).

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub(crate) mod backend;
pub(crate) mod balancer;
pub mod cli;
pub mod config;
pub mod demo;
pub(crate) mod dns;
pub(crate) mod fault;
pub(crate) mod health;
pub(crate) mod histogram;
pub(crate) mod http;
pub mod listener;
pub(crate) mod monitor;
pub(crate) mod probe;
pub mod proxy_protocol;
pub(crate) mod relay;
pub mod reload;
pub(crate) mod routes;
pub mod selection;
pub mod server;
pub mod signal;
pub(crate) mod systemd;
pub mod tls_hello;
pub mod watch;
