//! `ballast`: the balancer binary. Parses arguments ([`ballast::cli::ballast`]), loads the
//! configuration, binds the listener and runs until SIGINT or SIGTERM; SIGHUP reloads the
//! configuration ([`ballast::signal`]), and so does a change of the file with `--watch`
//! ([`ballast::watch`]), both through one channel ([`ballast::reload`]). Errors are reported
//! for humans with a non-zero exit: 1 for a bad configuration or a failure to start, 2 for
//! bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use ballast::cli::ballast::{PROGRAM, parse};
use ballast::config::Config;
use ballast::reload;
use ballast::server;
use ballast::signal::{Hangup, Shutdown};

fn main() -> ExitCode {
    let options = match PROGRAM.options(parse(std::env::args_os().skip(1))) {
        Ok(options) => options,
        Err(code) => return code,
    };
    if options.check {
        return match Config::load(&options.config) {
            Ok(parsed) => {
                println!("{}: configuration is valid\n", options.config.display());
                print!("{}", parsed.summary());
                for warning in names_not_resolving(&parsed) {
                    println!("warning: {warning}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => PROGRAM.fail(e),
        };
    }
    // notify warns at every Kubernetes ConfigMap swap that the directory it watched is
    // gone (it is: the swap replaces it, and `--watch` follows): its own noise, not the
    // operator's concern. `RUST_LOG` still shows it when asked.
    let filter = "info,notify=error";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter)).init();
    // What `--watch` compares later contents with: read before the configuration, so that a
    // change in between is a change it sees.
    let seen = if options.watch {
        std::fs::read(&options.config).ok()
    } else {
        None
    };
    let config = match Config::load(&options.config) {
        Ok(config) => config,
        Err(e) => return PROGRAM.fail(e),
    };
    match serve(config, options.config, options.watch, seen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => PROGRAM.fail(message),
    }
}

/// Serves `config` until SIGINT or SIGTERM, reloading `path` on SIGHUP and, with `watch`,
/// whenever the file's content differs from `seen` (what `config` was read from) and from
/// the content of the last reload.
fn serve(config: Config, path: PathBuf, watch: bool, seen: Option<Vec<u8>>) -> Result<(), String> {
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
        let server = server::Server::bind(config).map_err(|e| e.to_string())?;
        let (reloads, reloaded) = reload::channel(path);
        if watch {
            ballast::watch::start(reloads.clone(), seen)?;
        }
        hangup.reload_into(reloads);
        server
            .run_with_reloads(shutdown.requested(), reloaded)
            .await
            .map_err(|e| e.to_string())
    })
}

/// The backend host names of `config` that do not resolve now (`--check` warns, and
/// ballast would start without their addresses).
fn names_not_resolving(config: &Config) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(server::unresolved(config)),
        Err(e) => vec![format!("cannot check host names: {e}")],
    }
}

/// mimalloc packs ballast's per-connection allocations (task frames and the runtime's
/// cache-aligned socket registrations) more tightly than glibc's malloc, and is faster on the
/// connection churn path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
