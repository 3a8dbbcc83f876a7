//! `ringfence daemon --config FILE [--name NAME]`.
//!
//! `SIGTERM` and `SIGINT` stop it cleanly: the signal is logged, clients
//! get `Bye { Shutdown }`, the daemon leaves the ring (the others reform at
//! once, not after the token timeout) and exits with status 0. A second
//! signal while stopping exits at once (status 1).

use crate::logging::LogArgs;
use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use ringfence_engine::{Daemon, DaemonConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::{error, info, warn};

/// Options of `ringfence daemon`.
#[derive(Args, Debug)]
#[command(after_help = "Log levels: RINGFENCE_LOG (default `info`; e.g. `debug`, `warn`, \
    `info,ringfence_engine=debug`).\nStops cleanly on SIGTERM or SIGINT (leaves the ring, exits 0).")]
pub(crate) struct DaemonArgs {
    /// The cluster configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// This daemon's name in `[[cluster.daemon]]`; may be left out when
    /// exactly one configured address is on this machine.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

pub(crate) fn main(args: &DaemonArgs) -> ExitCode {
    if let Err(e) = args.log.init() {
        eprintln!("ringfence daemon: {e}");
        return ExitCode::from(2);
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => match ringfence_engine::local_daemon(&args.config) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("ringfence daemon: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let cfg = match DaemonConfig::load(&args.config, &name) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringfence daemon: {e}");
            return ExitCode::from(2);
        }
    };
    // Signals are taken by one thread with sigwait: blocked here, before
    // any other thread exists, so every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("ringfence daemon: cannot block SIGTERM/SIGINT for a clean stop: {e}");
        return ExitCode::from(1);
    }
    let mut daemon = match Daemon::bind(cfg) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            eprintln!("ringfence daemon: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let spawned = std::thread::Builder::new().name("rf-signals".into()).spawn(move || {
        loop {
            let Ok(sig) = signals.wait() else { return };
            if flag.swap(true, Ordering::Relaxed) {
                warn!(signal = %sig, "second signal while stopping: exiting at once");
                std::process::exit(1);
            }
            info!(signal = %sig, "signal received: leaving the ring and stopping");
        }
    });
    if let Err(e) = spawned {
        eprintln!("ringfence daemon: cannot start the signal thread: {e}");
        return ExitCode::from(1);
    }
    match daemon.run(&stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("ringfence daemon: {e}");
            ExitCode::from(1)
        }
    }
}
