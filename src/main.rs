//! `ballast`: the balancer binary. Parses arguments, loads the configuration, binds the
//! listener and runs until SIGINT or SIGTERM; SIGHUP reloads the configuration. Errors are reported for humans with a non-zero
//! exit: 1 for a bad configuration or a failure to start, 2 for bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let listen = config.listen;
        let listener =
            server::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let (reloads, reloaded) = mpsc::channel(4);
        tokio::spawn(reload_on_sighup(path, reloads));
        server::run_with_reloads(config, listener, shutdown_signal(), reloaded)
            .await
            .map_err(|e| e.to_string())
    })
}

/// Re-reads the configuration on every SIGHUP; a file that does not validate is reported
/// and the running configuration keeps serving.
async fn reload_on_sighup(path: PathBuf, reloads: mpsc::Sender<Config>) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot watch SIGHUP, reloads disabled: {e}");
            return;
        }
    };
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

/// Completes on the first SIGINT or SIGTERM; a second SIGINT then exits at once.
async fn shutdown_signal() {
    first_stop_signal().await;
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            log::warn!("second SIGINT: exiting without waiting for open connections");
            std::process::exit(130);
        }
    });
}

async fn first_stop_signal() {
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
