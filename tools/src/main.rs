//! `ringfence`: the command line of the ringfence group communication system.
//!
//! Subcommands: `daemon`, `user`, `flood`, `monitor`, `ctl`, `demo`, `keygen`,
//! `sim` (the deterministic simulator), `groupbench` (the paper's key
//! management experiments) and `netfault` (real daemons in
//! network namespaces under faults, histories checked).

mod cluster;
mod connect_opts;
mod ctl;
mod daemon;
mod demo;
mod flood;
mod groupbench;
mod keygen;
mod logging;
mod monitor;
mod netfault;
mod sim;
mod user;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the daemon's hot path still
/// allocates per message (docs/benchmarks.md, issue 16), and glibc's malloc
/// was a third of a daemon's CPU under `ringfence flood`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "ringfence", version, about = "Secure group communication over a token ring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the deterministic simulator over many seeds and check the invariants.
    Sim(sim::SimArgs),
    /// Run a daemon of the cluster described by a config file.
    Daemon(daemon::DaemonArgs),
    /// Interactive client: join, leave, send, and print what arrives.
    User(user::UserArgs),
    /// Start 3 daemons on loopback and show ordering, a crash and a merge.
    Demo,
    /// Show membership, ring and counters of every daemon of a cluster,
    /// asked over the network; unreachable daemons are marked.
    Monitor(monitor::MonitorArgs),
    /// Operator requests to one daemon: status, leave, shutdown, rekey.
    Ctl(ctl::CtlArgs),
    /// Measure throughput and latency with N messages of size S.
    Flood(flood::FloodArgs),
    /// The paper's Figure 5/6 experiments: time from join, leave,
    /// partition and merge to every member's new secure view, and rekeying
    /// many groups after a daemon change, integrated against layered.
    Groupbench(groupbench::GroupbenchArgs),
    /// Make a daemon identity (Ed25519, link security), or a CA and
    /// certificates for TLS clients.
    Keygen(keygen::KeygenArgs),
    /// Run daemons in network namespaces (root), apply partitions, one-way
    /// cuts, loss, kill -9 and pauses under load, and check the clients'
    /// histories.
    Netfault(netfault::NetfaultArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim::main(&args),
        Command::Daemon(args) => daemon::main(&args),
        Command::User(args) => user::main(&args),
        Command::Demo => demo::main(),
        Command::Monitor(args) => monitor::main(&args),
        Command::Ctl(args) => ctl::main(&args),
        Command::Flood(args) => flood::main(&args),
        Command::Groupbench(args) => groupbench::main(&args),
        Command::Keygen(args) => keygen::main(&args),
        Command::Netfault(args) => netfault::main(&args),
    }
}
