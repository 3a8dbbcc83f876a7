//! `ringfence sim`: runs seeds through the simulator, in parallel, and
//! reports violations with the command that replays them.

use clap::Args;
use ringfence_proto::ring::Config;
use ringfence_proto::sim::{self, FaultKinds, NetConfig, Report, SimConfig, Workload};
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Options of `ringfence sim`.
#[derive(Args, Debug, Clone)]
pub(crate) struct SimArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Daemons in the ring.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    nodes: u16,
    /// Probability that a datagram copy is lost (until the network heals).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability that a datagram copy is duplicated.
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Probability that a datagram copy is delayed past later ones.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Messages each sender submits (default 100; 60 with --faults).
    #[arg(long)]
    messages: Option<u32>,
    /// Daemons that send (default: all).
    #[arg(long)]
    senders: Option<usize>,
    /// Largest message size in bytes (sizes run from 1 B up to this).
    #[arg(long, default_value_t = 65536)]
    max_size: usize,
    /// Fraction of messages sent with the safe service.
    #[arg(long, default_value_t = 0.3)]
    safe: f64,
    /// Virtual milliseconds after which every fault heals and the network
    /// stops losing datagrams (default 200; 1600 with --faults).
    #[arg(long)]
    heal_ms: Option<u64>,
    /// Turn the accelerated ring off.
    #[arg(long)]
    no_accelerated: bool,
    /// Turn packing off (one message or fragment per frame).
    #[arg(long)]
    no_packing: bool,
    /// Fault kinds, comma-separated: partition, merge, crash, restart, loss,
    /// oneway; lasting ones after the heal: cut, pause, stall, deaf; or all.
    /// Without faults the daemons form one fixed ring.
    #[arg(long)]
    faults: Option<String>,
    /// Faults drawn per run (with --faults).
    #[arg(long, default_value_t = 6)]
    fault_count: usize,
    /// Write a JSON-lines trace per seed into this directory.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Link security and server key agreement (with --faults): encrypt,
    /// authenticate or none. Checks that every member of a ring derives the
    /// same server key, no outsider holds it, and (encrypt) no payload
    /// crosses the wire in clear. Without it: plain datagrams.
    #[arg(long, value_parser = ["encrypt", "authenticate", "none"])]
    security: Option<String>,
    /// The ring's timeout profile: default or low-latency (as `[ring]
    /// timeouts` in a daemon's config).
    #[arg(long, default_value = "default", value_parser = ["default", "low-latency"])]
    timeouts: String,
}

fn probability(name: &str, p: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&p) { Ok(p) } else { Err(format!("--{name} must be between 0 and 1, got {p}")) }
}

impl SimArgs {
    fn config(&self, seed: u64) -> Result<SimConfig, String> {
        let base_ring = Config::profile(&self.timeouts).unwrap_or_default();
        let ring = Config { accelerated: !self.no_accelerated, packing: !self.no_packing, ..base_ring };
        ring.validate().map_err(|e| e.to_string())?;
        if self.max_size == 0 || self.max_size > ring.max_message {
            return Err(format!("--max-size must be between 1 and {}", ring.max_message));
        }
        let faults = self.faults.as_deref().map(FaultKinds::parse).transpose()?.unwrap_or_default();
        if faults.is_empty() && self.security.is_some() {
            return Err(
                "--security needs --faults: without faults the daemons form one fixed ring, with no \
                        key agreement and plain datagrams"
                    .into(),
            );
        }
        let base = if faults.is_empty() {
            SimConfig { seed, nodes: usize::from(self.nodes), ..SimConfig::default() }
        } else {
            SimConfig::with_faults(seed, usize::from(self.nodes))
        };
        Ok(SimConfig {
            ring,
            net: NetConfig {
                loss: probability("loss", self.loss)?,
                dup: probability("dup", self.dup)?,
                reorder: probability("reorder", self.reorder)?,
                ..NetConfig::default()
            },
            workload: Workload {
                senders: self.senders.unwrap_or(usize::from(self.nodes)),
                messages_per_sender: self.messages.unwrap_or(base.workload.messages_per_sender.min(100)),
                max_size: self.max_size,
                safe_fraction: probability("safe", self.safe)?,
                ..base.workload
            },
            heal_at: self.heal_ms.map_or(base.heal_at, Duration::from_millis),
            security: self.security.as_deref().map(str::parse).transpose()?,
            faults,
            fault_count: self.fault_count,
            ..base
        })
    }

    /// The command line that replays one seed with the same options.
    fn replay(&self, seed: u64) -> String {
        let mut cmd = format!("cargo run --release -p ringfence-tools -- sim --seeds 1 --start {seed}");
        cmd += &format!(" --nodes {} --max-size {}", self.nodes, self.max_size);
        cmd += &format!(
            " --loss {} --dup {} --reorder {} --safe {}",
            self.loss, self.dup, self.reorder, self.safe
        );
        if let Some(m) = self.messages {
            cmd += &format!(" --messages {m}");
        }
        if let Some(h) = self.heal_ms {
            cmd += &format!(" --heal-ms {h}");
        }
        if let Some(f) = &self.faults {
            cmd += &format!(" --faults {f} --fault-count {}", self.fault_count);
        }
        if let Some(s) = self.senders {
            cmd += &format!(" --senders {s}");
        }
        if self.no_accelerated {
            cmd += " --no-accelerated";
        }
        if self.no_packing {
            cmd += " --no-packing";
        }
        if let Some(s) = &self.security {
            cmd += &format!(" --security {s}");
        }
        if self.timeouts != "default" {
            cmd += &format!(" --timeouts {}", self.timeouts);
        }
        cmd
    }
}

fn run_seed(args: &SimArgs, seed: u64) -> Result<Report, String> {
    let cfg = args.config(seed)?;
    let Some(dir) = &args.trace else {
        return Ok(sim::run(&cfg));
    };
    let path = dir.join(format!("seed-{seed}.jsonl"));
    let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = BufWriter::new(file);
    let report = sim::run_traced(&cfg, Some(&mut w));
    w.flush().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(report)
}

pub(crate) fn main(args: &SimArgs) -> ExitCode {
    if let Err(e) = args.config(args.start) {
        eprintln!("sim: {e}");
        return ExitCode::from(2);
    }
    if let Some(dir) = &args.trace {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("sim: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 256);
    let next = AtomicU64::new(0);
    let finished = AtomicU64::new(0);
    let failures: Mutex<Vec<Report>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let violations = AtomicU64::new(0);
    let progress = std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.seeds {
                        break;
                    }
                    match run_seed(args, args.start + i) {
                        Ok(r) if r.violations.is_empty() => {}
                        Ok(r) => {
                            violations.fetch_add(r.violations.len() as u64, Ordering::Relaxed);
                            failures.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                        }
                        Err(e) => errors.lock().unwrap_or_else(|e| e.into_inner()).push(e),
                    }
                    let done = finished.fetch_add(1, Ordering::Relaxed) + 1;
                    if progress && (done % 16 == 0 || done == args.seeds) {
                        eprint!(
                            "\rsim: {done}/{} seeds, {} violations",
                            args.seeds,
                            violations.load(Ordering::Relaxed)
                        );
                    }
                }
            });
        }
    });
    if progress {
        eprintln!();
    }
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = errors.first() {
        eprintln!("sim: {e}");
        return ExitCode::from(2);
    }
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|r| r.seed);
    for r in &failures {
        println!("seed {} failed with {} violation(s):", r.seed, r.violations.len());
        for v in r.violations.iter().take(10) {
            println!("  {v}");
        }
        println!("  replay: {}", args.replay(r.seed));
    }
    let total = violations.load(Ordering::Relaxed);
    println!("sim: seeds={} violations={total}", args.seeds);
    if total == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
