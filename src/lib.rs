//! ballast: a Layer-4 TCP load balancer.
//!
//! Map of the crate, one module per job:
//!
//! - [`config`]: reads `balancer.ron` into raw serde types, then validates them into domain
//!   types ([`config::Config`]); errors name the file, line:column and what was expected.
//! - [`selection`]: pure, I/O-free selection policies. A selector looks at a snapshot of
//!   candidates (weight, active connections, load, availability) and returns an index.
//! - [`health`]: the pure up/down state machine driven by check results (rise and fall).
//! - [`backend`]: the live, shared counters of one backend and the RAII guard that keeps the
//!   active-connection count honest.
//! - [`fault`]: whose fault a failed socket operation is, the peer's or ballast's own: the one
//!   rule the relay, the health checks and the load poller share.
//! - [`probe`]: one TCP connect or one raw HTTP/1.1 `GET`, bounded in size and time (the
//!   health check reads the response head only), and the `/load` body parser.
//! - [`monitor`]: background health checks and `/load` pollers that feed the backends' state.
//! - [`relay`]: moves bytes both ways between client and backend, preserving half-close.
//! - [`listener`]: listening sockets for both binaries (`SO_REUSEADDR`, `SO_REUSEPORT`, a
//!   deep backlog) and the back-off after a failed `accept`.
//! - [`server`]: the accept loop: pick a backend, connect (with failover), relay; stops on
//!   shutdown and drains with a bounded grace period.
//! - [`admin`]: the admin listener: status page, Prometheus metrics, JSON status and the
//!   runtime API (drain, enable, weight).
//! - [`http`]: the minimal HTTP/1.1 code shared by the demo backend (no framework).
//! - [`demo`]: the demo backend served by the `ballast-backend` binary.
//! - [`cli`]: command-line parsing for the `ballast` binary.

pub mod admin;
pub mod backend;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fault;
pub mod health;
pub mod http;
pub mod listener;
pub mod monitor;
pub mod probe;
pub mod relay;
pub mod selection;
pub mod server;
