//! `ballast`: the balancer binary. Parses arguments, loads the configuration, binds the
//! listener and runs until SIGINT or SIGTERM; SIGHUP reloads the configuration. Errors are reported for humans with a non-zero
//! exit: 1 for a bad configuration or a failure to start, 2 for bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use ballast::cli::{self, Command};
use ballast::config::Config;
use ballast::{listener, server};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("ballast: {message}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("ballast {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(parsed) => {
                println!("{}: configuration is valid\n", config.display());
                print!("{}", parsed.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ballast: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run { config } => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
            let config_path = config;
            let config = match Config::load(&config_path) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("ballast: {e}");
                    return ExitCode::from(1);
                }
            };
            match serve(config, config_path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("ballast: {message}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn serve(config: Config, path: PathBuf) -> Result<(), String> {
    // The control plane (signals, reloads, health checks, admin) and the first accept loop
    // share this thread; the server starts one more thread per further worker.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        // Handlers go in before the listener announces itself: a signal that arrives
        // between the two would otherwise take the default action and kill the process.
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| format!("cannot watch {name}: {e}"))
        };
        let signals = Signals {
            interrupt: watch(SignalKind::interrupt(), "SIGINT")?,
            terminate: watch(SignalKind::terminate(), "SIGTERM")?,
        };
        let hangup = watch(SignalKind::hangup(), "SIGHUP")?;
        let listen = config.listen;
        let listener =
            listener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let (reloads, reloaded) = mpsc::channel(4);
        tokio::spawn(reload_on_sighup(hangup, path, reloads));
        server::run_with_reloads(config, listener, signals.shutdown(), reloaded)
            .await
            .map_err(|e| e.to_string())
    })
}

/// Re-reads the configuration on every SIGHUP; a file that does not validate is reported
/// and the running configuration keeps serving.
async fn reload_on_sighup(mut hangup: Signal, path: PathBuf, reloads: mpsc::Sender<Config>) {
    while hangup.recv().await.is_some() {
        log::info!("SIGHUP: reloading {}", path.display());
        match Config::load(&path) {
            Ok(config) => {
                if reloads.send(config).await.is_err() {
                    return;
                }
            }
            Err(e) => log::error!("reload rejected: {e}; keeping the running configuration"),
        }
    }
}

struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Completes on the first SIGINT or SIGTERM; a second SIGINT then exits at once.
    async fn shutdown(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => log::info!("SIGINT: shutting down"),
            _ = self.terminate.recv() => log::info!("SIGTERM: shutting down"),
        }
        let mut interrupt = self.interrupt;
        tokio::spawn(async move {
            if interrupt.recv().await.is_some() {
                log::warn!("second SIGINT: exiting without waiting for open connections");
                std::process::exit(130);
            }
        });
    }
}

/// mimalloc packs ballast's per-connection allocations (task frames and the runtime's
/// cache-aligned socket registrations) more tightly than glibc's malloc, and is faster on the
/// connection churn path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
