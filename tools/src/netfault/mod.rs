//! `ringfence netfault`: real daemons in network namespaces, faults applied
//! under load, and every client's history checked (docs/operations.md,
//! "Fault tests on a real network").
//!
//! One run: `--daemons` hosts on one bridge (see [`net`]), a daemon on each
//! with encrypted links over `--transport`, one client per daemon in an
//! open and a VS group (the first `--senders` at `--rate` messages/s, the
//! others at `--light-rate`, so every client's delivery gap can be
//! measured), then the faults one after the other, each held, healed and
//! followed by `--settle-secs` of load, then a drain and the checks of
//! [`check`]. Prints one line per fault and a `result` line; exits 1 on any
//! violation, 2 when the run could not be made (not root, no `ip`).

pub(crate) mod check;
mod load;
mod net;

use check::{Kind, Report, Window};
use clap::Args;
use load::{OPEN, Shared, VS};
use net::{Daemons, Net};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// `ringfence netfault` options.
#[derive(Args, Debug, Clone)]
pub(crate) struct NetfaultArgs {
    /// Daemons, one per network namespace.
    #[arg(long, default_value_t = 3)]
    daemons: usize,
    /// `unicast` or `multicast` (IP multicast on the namespaces' bridge).
    #[arg(long, default_value = "unicast")]
    transport: String,
    /// The faults, as `kind=count` separated by commas, applied round-robin
    /// over the kinds: `partition`, `loss`, `kill` (-9, then restart),
    /// `pause` (SIGSTOP, then SIGCONT), `oneway-token` (drop d0 -> d1, the
    /// token's direction), `oneway-against` (drop d1 -> d0).
    #[arg(long, default_value = "partition=2,loss=1,kill=1")]
    faults: String,
    /// How long a partition, loss or kill (until the restart) lasts.
    #[arg(long, default_value_t = 2.0)]
    hold_secs: f64,
    /// How long a one-way cut lasts.
    #[arg(long, default_value_t = 30.0)]
    oneway_secs: f64,
    /// How long a pause lasts.
    #[arg(long, default_value_t = 450)]
    pause_ms: u64,
    /// Load after each fault heals, before the next.
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
    /// Percentage of datagrams every host drops during `loss`.
    #[arg(long, default_value_t = 20)]
    loss_percent: u32,
    /// Clients sending at `--rate` (the others send at `--light-rate`).
    #[arg(long, default_value_t = 2)]
    senders: usize,
    /// Messages per second of each sender, over both groups.
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
    /// Messages per second of the other clients.
    #[arg(long, default_value_t = 20.0)]
    light_rate: f64,
    /// Seed of the choice of partitions and daemons.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A fault whose delivery gap exceeds this is a violation
    /// (`delivery-gap`); without it gaps are only reported.
    #[arg(long)]
    max_gap_ms: Option<u64>,
    /// Keep the run's directory (config, keys, daemon logs) here.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// The daemons' timeout profile (`[ring] timeouts`): `default` or
    /// `low-latency`.
    #[arg(long, default_value = "default")]
    timeouts: String,
}

/// One fault of the schedule.
#[derive(Clone, Debug)]
enum Fault {
    /// Two-way cuts between `side` and the others.
    Partition(Vec<usize>),
    Loss(u32),
    Kill(usize),
    Pause(usize),
    /// Datagrams from the first daemon to the second are dropped.
    OneWay(usize, usize),
}

impl Fault {
    fn name(&self, n: usize) -> String {
        let list = |v: &[usize]| v.iter().map(|i| format!("d{i}")).collect::<Vec<_>>().join(",");
        match self {
            Self::Partition(side) => {
                let rest: Vec<usize> = (0..n).filter(|i| !side.contains(i)).collect();
                format!("partition {{{}}} | {{{}}}", list(side), list(&rest))
            }
            Self::Loss(p) => format!("loss {p}%"),
            Self::Kill(i) => format!("kill -9 d{i} and restart"),
            Self::Pause(i) => format!("pause d{i}"),
            Self::OneWay(a, b) => format!("one-way cut d{a} -> d{b}"),
        }
    }
}

/// The schedule `spec` asks for (`kind=count,...`), round-robin over kinds.
fn schedule(spec: &str, n: usize, seed: u64, loss_percent: u32) -> Result<Vec<Fault>, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kind, count) = item.split_once('=').unwrap_or((item, "1"));
        let count: usize = count.parse().map_err(|e| format!("--faults: `{item}`: bad count: {e}"))?;
        if !["partition", "loss", "kill", "pause", "oneway-token", "oneway-against"].contains(&kind) {
            return Err(format!("--faults: `{kind}` is not a fault kind"));
        }
        kinds.push((kind.to_string(), count));
    }
    let rounds = kinds.iter().map(|k| k.1).max().unwrap_or(0);
    let mut out = Vec::new();
    for round in 0..rounds {
        for (kind, count) in &kinds {
            if round >= *count {
                continue;
            }
            out.push(match kind.as_str() {
                "partition" => {
                    // A random proper, non-empty side.
                    let mut side: Vec<usize> = (0..n).filter(|_| rng.random_bool(0.5)).collect();
                    if side.is_empty() || side.len() == n {
                        side = vec![rng.random_range(0..n)];
                    }
                    Fault::Partition(side)
                }
                "loss" => Fault::Loss(loss_percent),
                "kill" => Fault::Kill(rng.random_range(0..n)),
                "pause" => Fault::Pause(rng.random_range(0..n)),
                "oneway-token" => Fault::OneWay(0, 1),
                _ => Fault::OneWay(1, 0),
            });
        }
    }
    Ok(out)
}

/// The run's directory: removed when dropped unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes the keys and the cluster config; returns the config's path.
fn write_config(dir: &std::path::Path, n: usize, transport: &str, timeouts: &str) -> Result<PathBuf, String> {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).map_err(|e| format!("{}: {e}", keys.display()))?;
    let mut text = format!(
        "[daemon]\nring_core = \"none\"\n\n[ring]\ntimeouts = \"{timeouts}\"\n\n[cluster]\ntransport = \"{transport}\"\n"
    );
    if transport == "multicast" {
        text += "multicast_group = \"239.255.13.1:4810\"\n";
    }
    for i in 0..n {
        let name = format!("d{i}");
        let (_, public) = ringfence_crypto::identity::write_keypair(&keys, &name, &mut rand::rng())
            .map_err(|e| format!("identity of {name} in {}: {e}", keys.display()))?;
        let key = ringfence_crypto::identity::load_public(&public)
            .map_err(|e| format!("{}: {e}", public.display()))?
            .key
            .to_string();
        let _ = write!(
            text,
            "\n[[cluster.daemon]]\nid = {i}\nname = \"{name}\"\naddress = \"{}:4803\"\npublic_key = \"{key}\"\n",
            Net::addr(i)
        );
    }
    let _ = write!(
        text,
        "\n[security]\nlink_security = \"encrypt\"\nidentity = \"{}/{{name}}.key\"\n\n[paths]\nstate_dir = \"{}/{{name}}\"\n",
        keys.display(),
        dir.display()
    );
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// After the clients are whole again, how long views may still settle (a
/// restarted daemon's client rejoining, the VS group's second flush) before
/// a view change counts as spurious.
const QUIET_AFTER_WHOLE: Duration = Duration::from_millis(500);

/// And at least this long after the heal: a fault's views may come after
/// the first look found the clients whole (a paused daemon is taken out,
/// then merged back, after it runs again).
const QUIET_AFTER_HEAL: Duration = Duration::from_millis(1500);

/// What a run found, besides the checker's report.
struct Outcome {
    report: Report,
    /// Per fault: how long after healing every client was in a whole
    /// view of both groups again (`None`: not within the settle time).
    whole_after: Vec<Option<Duration>>,
}

pub(crate) fn main(args: &NetfaultArgs) -> ExitCode {
    if let Err(why) = net::available() {
        println!("netfault: SKIPPED: {why}");
        return ExitCode::from(2);
    }
    if !(1..=20).contains(&args.daemons)
        || !["unicast", "multicast"].contains(&args.transport.as_str())
        || !["default", "low-latency"].contains(&args.timeouts.as_str())
    {
        eprintln!(
            "netfault: --daemons must be 1 to 20, --transport unicast or multicast, --timeouts default or low-latency"
        );
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(outcome) => print(args, &outcome),
        Err(e) => {
            eprintln!("netfault: {e}");
            ExitCode::from(2)
        }
    }
}

fn print(args: &NetfaultArgs, o: &Outcome) -> ExitCode {
    let r = &o.report;
    for (i, (g, whole)) in r.gaps.iter().zip(&o.whole_after).enumerate() {
        let gap = g
            .longest
            .as_ref()
            .map_or("none measured".into(), |(d, c)| format!("{} ms (at {c})", d.as_millis()));
        let whole = whole.map_or("not within the settle time".into(), |d| format!("{} ms", d.as_millis()));
        println!(
            "fault {} {}: longest delivery gap {gap}; one whole view again {whole} after healing",
            i + 1,
            g.fault
        );
    }
    for v in r.violations.iter().take(30) {
        println!("violation {}: {}", v.kind, v.text);
    }
    if r.violations.len() > 30 {
        println!("... and {} more violations", r.violations.len() - 30);
    }
    let kinds: String = r.counts().iter().map(|(k, n)| format!(" {k}={n}")).collect();
    let max_gap = r.gaps.iter().filter_map(|g| g.longest.as_ref().map(|l| l.0)).max().unwrap_or_default();
    println!(
        "result daemons={} transport={} faults={} sent={} deliveries={} views={} stale_flush_ok={} max_gap_ms={} violations={}{kinds}",
        args.daemons,
        args.transport,
        r.gaps.len(),
        r.sent,
        r.deliveries,
        r.views,
        r.stale_flush_ok,
        max_gap.as_millis(),
        r.violations.len()
    );
    if r.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Waits up to `limit` for `cond`; returns how long it took.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run(args: &NetfaultArgs) -> Result<Outcome, String> {
    let n = args.daemons;
    let faults = schedule(&args.faults, n, args.seed, args.loss_percent)?;
    let tag = format!("{n}{}", &args.transport[..1]);
    let dir = RunDir {
        path: args.keep.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("ringfence-netfault-{}-{tag}", std::process::id()))
        }),
        keep: args.keep.is_some(),
    };
    let _ = std::fs::remove_dir_all(&dir.path);
    std::fs::create_dir_all(&dir.path).map_err(|e| format!("{}: {e}", dir.path.display()))?;
    let config = write_config(&dir.path, n, &args.transport, &args.timeouts)?;
    let net = Net::create(&tag, n)?;
    let bin = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut daemons = Daemons::start(bin, config, dir.path.clone(), (0..n).map(|i| net.host(i)).collect())?;
    println!(
        "netfault: {n} daemons, {}, encrypted links, groups {OPEN} (open) and {VS} (VS), {} senders at {}/s, others at {}/s, seed {}, {} faults",
        args.transport,
        args.senders.min(n),
        args.rate,
        args.light_rate,
        args.seed,
        faults.len()
    );

    // The clients.
    let shared = Arc::new(Shared::default());
    let t0 = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let spec = load::Spec {
                daemon: i,
                socket: dir.path.join(format!("d{i}")).join("client.sock"),
                rate: if i < args.senders { args.rate } else { args.light_rate },
                members: n,
            };
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || load::run(&spec, &shared, t0))
        })
        .collect();
    // Stops the clients however this function returns.
    struct StopClients(Arc<Shared>);
    impl Drop for StopClients {
        fn drop(&mut self) {
            self.0.phase.store(load::STOP, Ordering::SeqCst);
        }
    }
    let stop = StopClients(Arc::clone(&shared));
    let whole = || shared.whole.load(Ordering::SeqCst) == n;
    if wait_for(Duration::from_secs(60), whole).is_none() {
        return Err(format!("the {n} clients were not in one whole view within 60 s of the start"));
    }
    // Quiet intervals: no fault in force and the clients whole for a
    // while; a view change there is a false suspicion.
    let mut quiet = Vec::new();
    let whole_at = t0.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    quiet.push((whole_at + QUIET_AFTER_WHOLE, t0.elapsed()));

    let mut windows = Vec::new();
    let mut whole_after = Vec::new();
    let hold = Duration::from_secs_f64(args.hold_secs);
    let settle = Duration::from_secs_f64(args.settle_secs);
    for f in &faults {
        let name = f.name(n);
        println!("  {:>7.1} s: {name}", t0.elapsed().as_secs_f64());
        let start = t0.elapsed();
        let mut excluded = Vec::new();
        match f {
            Fault::Partition(side) => {
                for &a in side {
                    for b in (0..n).filter(|b| !side.contains(b)) {
                        net.cut(a, b)?;
                        net.cut(b, a)?;
                    }
                }
                std::thread::sleep(hold);
                net.heal()?;
            }
            Fault::Loss(percent) => {
                net.loss(*percent)?;
                std::thread::sleep(hold);
                net.heal()?;
            }
            Fault::OneWay(a, b) => {
                net.cut(*a, *b)?;
                std::thread::sleep(Duration::from_secs_f64(args.oneway_secs));
                net.heal()?;
            }
            Fault::Kill(i) => {
                excluded.push(*i);
                daemons.kill(*i);
                std::thread::sleep(hold);
                daemons.spawn(*i)?;
            }
            Fault::Pause(i) => {
                excluded.push(*i);
                daemons.signal(*i, "STOP")?;
                std::thread::sleep(Duration::from_millis(args.pause_ms));
                daemons.signal(*i, "CONT")?;
            }
        }
        // Let the views move before measuring the way back.
        let healed = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let back = wait_for(settle, whole).map(|_| healed.elapsed());
        whole_after.push(back);
        std::thread::sleep(settle.saturating_sub(healed.elapsed()));
        if let Some(back) = back {
            let healed_at = t0.elapsed() - healed.elapsed();
            quiet.push((healed_at + (back + QUIET_AFTER_WHOLE).max(QUIET_AFTER_HEAL), t0.elapsed()));
        }
        windows.push(Window { name, start, end: t0.elapsed(), excluded });
    }
    // Heal everything, then drain: no more sending, every own message back.
    let final_whole = wait_for(Duration::from_secs(30), whole);
    shared.phase.store(load::DRAIN, Ordering::SeqCst);
    let _ = wait_for(Duration::from_secs(20), || shared.settled.load(Ordering::SeqCst) == n);
    std::thread::sleep(Duration::from_millis(500));
    drop(stop);
    let mut logs = Vec::new();
    for t in threads {
        logs.extend(t.join().map_err(|_| "a client thread panicked".to_string())?);
    }
    let mut report = check::check(&logs, &[VS], &windows);
    let quiet: Vec<_> = quiet.into_iter().filter(|(a, b)| a < b).collect();
    check::spurious_changes(&logs, &quiet, &mut report);
    if final_whole.is_none() {
        report.add(
            Kind::FinalView,
            "the clients were not in one whole view within 30 s of the last fault".into(),
        );
    }
    if let Some(max) = args.max_gap_ms {
        let over: Vec<String> = report
            .gaps
            .iter()
            .filter_map(|g| {
                let (d, c) = g.longest.as_ref()?;
                (d.as_millis() > u128::from(max)).then(|| {
                    format!("{}: {} ms without a delivery at {c} (bound {max} ms)", g.fault, d.as_millis())
                })
            })
            .collect();
        for text in over {
            report.add(Kind::DeliveryGap, text);
        }
    }
    for (i, status) in daemons.exited() {
        report.add(Kind::Reported, format!("daemon d{i} exited by itself: {status}"));
    }
    Ok(Outcome { report, whole_after })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_goes_round_robin_over_the_kinds_and_names_bad_input() {
        let s = schedule("partition=2,oneway-token,kill=1,oneway-against=1", 3, 7, 20).unwrap();
        let names: Vec<String> = s.iter().map(|f| f.name(3)).collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(names[0].starts_with("partition {") && names[4].starts_with("partition {"), "{names:?}");
        assert_eq!(names[1], "one-way cut d0 -> d1");
        assert!(names[2].starts_with("kill -9 d"), "{names:?}");
        assert_eq!(names[3], "one-way cut d1 -> d0");
        for f in &s {
            if let Fault::Partition(side) = f {
                assert!(!side.is_empty() && side.len() < 3, "{side:?}");
            }
        }
        assert!(schedule("flood=1", 3, 1, 20).unwrap_err().contains("`flood`"));
        assert!(schedule("pause=x", 3, 1, 20).unwrap_err().contains("pause=x"));
    }
}
