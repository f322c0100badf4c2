//! The `gitfleet` command: wires the engine and the actors together; no logic of its own
//! beyond reading arguments and showing progress.

mod cli;
mod display;
mod embedded;
mod remote;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GITFLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    gitfleet_git::init_tls();
    // One thread for the actors and the network: their work is small and many, and the git
    // work runs on threads of its own (gitfleet-git). A multi-threaded runtime measured ~15%
    // more CPU and twice the context switches for a no-op sync of 200 repositories, handing
    // every message between its workers. Nothing on it may block: blocking work is on
    // `spawn_blocking` or the store's writer thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gitfleet: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(embedded::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gitfleet: {e:#}");
            ExitCode::from(2)
        }
    }
}
