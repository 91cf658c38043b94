//! `ballast`: the balancer binary. Parses arguments, loads the configuration, binds the
//! listener and runs until SIGINT or SIGTERM; SIGHUP reloads the configuration. Errors are reported for humans with a non-zero
//! exit: 1 for a bad configuration or a failure to start, 2 for bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use ballast::cli::{self, Command};
use ballast::config::Config;
use ballast::signal::{Hangup, Shutdown};
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
        // Handlers go in before the listener announces itself (see `signal`).
        let shutdown = Shutdown::install()?.second_interrupt_exits();
        let hangup = Hangup::install()?;
        let listen = config.listen;
        let listener =
            listener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let reloads = hangup.reloads(path);
        server::run_with_reloads(config, listener, shutdown.requested(), reloads)
            .await
            .map_err(|e| e.to_string())
    })
}

/// mimalloc packs ballast's per-connection allocations (task frames and the runtime's
/// cache-aligned socket registrations) more tightly than glibc's malloc, and is faster on the
/// connection churn path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
