//! The demo backend served by the `ballast-backend` binary.
//!
//! Two endpoints: `/` greets the visitor and says which backend answered (so a browser shows
//! the balancer at work), and `/load` reports CPU utilisation as a bare percentage for the
//! load-aware selection policy to poll.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, Limits, Reply, Request};
use crate::listener::{self, AcceptBackoff};

mod load;
mod page;

use load::*;
use page::*;

/// Where `/load` gets its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadSource {
    /// Whole-system CPU utilisation.
    System,
    /// This process's CPU use as a share of all CPUs, so it is comparable to `System`.
    Process,
    /// The trimmed contents of a file, re-read on every request: lets tests and demos set
    /// the load by hand.
    File(PathBuf),
}

/// How one demo backend listener behaves.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Backend identity shown on the page (`This is from {id}`).
    pub id: String,
    /// Who to greet (`Hello {name}!`).
    pub name: String,
    /// Where `/load` readings come from.
    pub load: LoadSource,
    /// Close the connection after this many responses, like nginx `keepalive_requests`.
    /// With 1, every browser refresh opens a new connection and so meets the balancer again.
    pub max_requests_per_connection: Option<u64>,
    /// CPU time burnt before each `GET /`, to make a backend's load climb under a benchmark.
    pub burn: Duration,
}

/// One listener of the demo backend: where it listens and the ID its page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The address to bind; port 0 picks a free port.
    pub addr: SocketAddr,
    /// The ID, or `None` for `backend-PORT` (the port it got).
    pub id: Option<String>,
    /// Whether the readiness line names the ID: with `--config`, one line per backend.
    pub named: bool,
}

/// A bound [`Site`]: the listener, the address it got and the ID it serves as.
#[derive(Debug)]
pub struct Bound {
    /// The listening socket.
    pub listener: TcpListener,
    /// The address it is bound to.
    pub local: SocketAddr,
    /// The ID its page shows.
    pub id: String,
    named: bool,
}

impl Site {
    /// One listener, as `--listen ADDR [--id ID]` asks for.
    pub fn listen(addr: SocketAddr, id: Option<String>) -> Site {
        Site {
            addr,
            id,
            named: false,
        }
    }

    /// One listener per backend of every service of `config`, in its order: on the
    /// backend's address, with its name as ID. Backends given by host name are left out:
    /// their addresses are not known before they are resolved.
    pub fn backends(config: &Config) -> Vec<Site> {
        config
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .filter_map(|b| match b.addr {
                crate::config::BackendAddr::Ip(addr) => Some(Site {
                    addr,
                    id: Some(b.name.clone()),
                    named: true,
                }),
                crate::config::BackendAddr::Name { .. } => None,
            })
            .collect()
    }

    /// Binds the listener. An address that is not this machine's is said so plainly, naming
    /// the backend: ballast-backend can only serve backends that run here.
    pub fn bind(&self) -> Result<Bound, String> {
        let listener = listener::bind(self.addr).map_err(|e| match (&self.id, e.kind()) {
            (Some(id), io::ErrorKind::AddrNotAvailable) if self.named => format!(
                "backend {id}: cannot listen on {}: not an address of this machine \
                 (ballast-backend serves only backends on local addresses)",
                self.addr
            ),
            (Some(id), _) if self.named => {
                format!("backend {id}: cannot listen on {}: {e}", self.addr)
            }
            _ => format!("cannot listen on {}: {e}", self.addr),
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        Ok(Bound {
            id: self
                .id
                .clone()
                .unwrap_or_else(|| format!("backend-{}", local.port())),
            listener,
            local,
            named: self.named,
        })
    }
}

impl Bound {
    /// The line that tells scripts and tests this listener is ready: `listening on ADDR`,
    /// with ` as ID` after it when the site is one backend of a configuration.
    pub fn readiness_line(&self) -> String {
        if self.named {
            format!("listening on {} as {}", self.local, self.id)
        } else {
            format!("listening on {}", self.local)
        }
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// Both endpoints are read-only.
const ALLOW: &[(&str, &str)] = &[("Allow", "GET, HEAD")];

/// Serves the demo until `shutdown` completes, one task per connection.
///
/// Accept errors are logged and retried (they are usually transient, such as running out of
/// file descriptors), so this returns `Ok` once shutdown is requested. Connections already
/// being served are not waited for.
pub async fn serve(
    listener: TcpListener,
    opts: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let host = hostname();
    info!(
        "demo backend {} on {} (host {host}, load from {:?})",
        opts.id,
        listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string()),
        opts.load
    );
    let ctx = Arc::new(Ctx {
        page: render_page(&opts.name, &host, &opts.id).into_bytes(),
        load: LoadMeter::start(&opts.load),
        max_requests: opts.max_requests_per_connection,
        burn: opts.burn,
        limits: Limits::default(),
    });

    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::new("demo accept");
    loop {
        tokio::select! {
            () = &mut shutdown => {
                info!("demo backend {} stops accepting", opts.id);
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff.reset();
                    let ctx = Arc::clone(&ctx);
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(stream, &ctx).await {
                            debug!("connection from {peer}: {e}");
                        }
                    });
                }
                Err(e) => backoff.on_error(e).await,
            },
        }
    }
}

/// Serves every listener, each with its options, until `shutdown` completes (see
/// [`serve`]): the demo backend's `--config` mode, one listener per backend.
pub async fn serve_all(
    sites: Vec<(TcpListener, DemoOptions)>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let stop = CancellationToken::new();
    let mut serving = JoinSet::new();
    for (listener, opts) in sites {
        serving.spawn(serve(listener, opts, stop.clone().cancelled_owned()));
    }
    shutdown.await;
    stop.cancel();
    while let Some(served) = serving.join_next().await {
        served.map_err(io::Error::other)??;
    }
    Ok(())
}

struct Ctx {
    page: Vec<u8>,
    load: LoadMeter,
    max_requests: Option<u64>,
    burn: Duration,
    limits: Limits,
}

async fn serve_connection(stream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    let on_error = |status: u16, _: &str| {
        let reason = http::reason_phrase(status).to_ascii_lowercase();
        Reply::new(status, PLAIN, format!("{reason}\n"))
    };
    http::serve_requests(
        stream,
        &ctx.limits,
        ctx.max_requests,
        on_error,
        |request| async move { respond(&request, ctx).await },
    )
    .await
}

fn plain(status: u16, body: impl Into<Vec<u8>>) -> Reply {
    Reply::new(status, PLAIN, body)
}

async fn respond(request: &Request, ctx: &Ctx) -> Reply {
    let readable = matches!(request.method.as_str(), "GET" | "HEAD");
    match request.path() {
        "/" if readable => {
            if request.method == "GET" && !ctx.burn.is_zero() {
                burn(ctx.burn).await;
            }
            Reply::new(200, HTML, ctx.page.clone())
        }
        "/load" if readable => match ctx.load.read().await {
            Some(load) => plain(200, load),
            None => plain(503, "load unavailable\n"),
        },
        "/" | "/load" => plain(405, "method not allowed\n").with_headers(ALLOW),
        _ => plain(404, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn escapes_html() {
        assert_eq!(
            html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(html_escape("plain"), "plain");
    }

    #[test]
    fn page_has_greeting_host_id_and_no_favicon() {
        let page = render_page("Ann", "box<1>", "VM4");
        assert!(page.contains("Hello Ann!"), "{page}");
        assert!(page.contains("box&lt;1&gt;"), "{page}");
        assert!(page.contains("This is from VM4"), "{page}");
        assert!(
            page.contains(r#"<link rel="icon" href="data:,">"#),
            "{page}"
        );
    }

    #[test]
    fn load_is_formatted_with_one_decimal_and_clamped() {
        assert_eq!(format_load(12.46), "12.5");
        assert_eq!(format_load(0.0), "0.0");
        assert_eq!(format_load(-3.0), "0.0");
        assert_eq!(format_load(250.0), "100.0");
        assert_eq!(format_load(f32::NAN), "0.0");
        assert_eq!(format_load(f32::INFINITY), "0.0");
    }

    #[test]
    fn hostname_is_never_empty() {
        assert!(!hostname().is_empty());
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("response within 5 s")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_in_process_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let opts = DemoOptions {
            id: "t1".into(),
            name: "world".into(),
            load: LoadSource::System,
            max_requests_per_connection: None,
            burn: Duration::ZERO,
        };
        let server = tokio::spawn(serve(listener, opts, async {
            let _ = stopped.await;
        }));

        let head = exchange(addr, b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.ends_with("\r\n\r\n"),
            "HEAD must carry no body: {head}"
        );
        assert!(!head.contains("Content-Length: 0\r\n"), "{head}");

        let post = exchange(
            addr,
            b"POST /load HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");

        let te = exchange(
            addr,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
        assert!(te.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{te}");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
