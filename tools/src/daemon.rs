//! `ringfence daemon --config FILE --name NAME`.

use clap::Args;
use ringfence_engine::{Daemon, DaemonConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Options of `ringfence daemon`.
#[derive(Args, Debug)]
pub(crate) struct DaemonArgs {
    /// The cluster configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// This daemon's name in `[[cluster.daemon]]`.
    #[arg(long)]
    name: String,
}

pub(crate) fn main(args: &DaemonArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGFENCE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = match DaemonConfig::load(&args.config, &args.name) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringfence daemon: {e}");
            return ExitCode::from(2);
        }
    };
    let mut daemon = match Daemon::bind(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ringfence daemon: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    match daemon.run(&stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfence daemon: {e}");
            ExitCode::from(1)
        }
    }
}
