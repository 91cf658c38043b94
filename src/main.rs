//! `ballast`: the balancer binary. Parses arguments, loads the configuration, binds the
//! listener and runs until SIGINT or SIGTERM. Errors are reported for humans with a non-zero
//! exit: 1 for a bad configuration or a failure to start, 2 for bad arguments.

use std::process::ExitCode;

use ballast::cli::{self, Command};
use ballast::config::Config;
use ballast::server;

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
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("ballast: {e}");
                    return ExitCode::from(1);
                }
            };
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("ballast: {message}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let listen = config.listen;
        let listener =
            server::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        server::run(config, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: shutting down"),
        _ = terminate.recv() => log::info!("SIGTERM: shutting down"),
    }
}
