//! `ballast-backend`: the demo backend. Behaviour lives in [`ballast::demo`] and the command
//! line in [`ballast::cli::backend`]; this file wires them: parse, bind every listener,
//! announce readiness, serve until SIGINT or SIGTERM. Exit codes: 2 for bad arguments, 1 for
//! a configuration that cannot be read or is invalid, or a failure to listen.

use std::io::Write;
use std::process::ExitCode;

use ballast::cli::backend::{Options, PROGRAM, Serve, parse};
use ballast::config::Config;
use ballast::demo::{self, DemoOptions, Site};
use ballast::signal::Shutdown;

fn main() -> ExitCode {
    let options = match PROGRAM.options(parse(std::env::args_os().skip(1))) {
        Ok(options) => options,
        Err(code) => return code,
    };

    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let sites = match &options.serve {
        Serve::Listen { addr, id } => vec![Site::listen(*addr, id.clone())],
        // The same reading and messages as `ballast --check`.
        Serve::Config(path) => match Config::load(path) {
            Ok(config) => Site::backends(&config),
            Err(e) => return PROGRAM.fail(e),
        },
    };

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return PROGRAM.fail(format_args!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(sites, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => PROGRAM.fail(message),
    }
}

async fn run(sites: Vec<Site>, options: Options) -> Result<(), String> {
    // Handlers go in before the readiness lines (see `signal`).
    let shutdown = Shutdown::install()?;

    // Every listener is bound before any is announced: the lines mean all are ready.
    let bound = sites
        .iter()
        .map(Site::bind)
        .collect::<Result<Vec<_>, String>>()?;

    // The readiness lines, written at once and flushed now because stdout is
    // block-buffered when it is a pipe.
    let lines: String = bound.iter().map(|b| b.readiness_line() + "\n").collect();
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(lines.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write the readiness line: {e}"))?;
    drop(stdout);

    let name = std::env::var("NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "world".to_string());
    let served = bound
        .into_iter()
        .map(|b| {
            let opts = DemoOptions {
                id: b.id,
                name: name.clone(),
                load: options.load.clone(),
                max_requests_per_connection: options.max_requests,
                burn: options.burn,
            };
            (b.listener, opts)
        })
        .collect();
    demo::serve_all(served, shutdown.requested())
        .await
        .map_err(|e| format!("serving failed: {e}"))?;
    log::info!("shut down");
    Ok(())
}
