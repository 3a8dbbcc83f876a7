//! `ringfence groupbench`: the paper's Figure 5 and 6 experiments (Amir et
//! al., "Scaling Secure Group Communication Systems: Beyond Peer-to-Peer",
//! section 5.1) on real daemons on loopback, the integrated modes against
//! the five layered ones, in one interleaved run.
//!
//! - **Sizes (Figure 5).** For each group size N, repetition and mode, N
//!   fresh clients spread over the daemons (alternating between the two
//!   halves of the cluster) make one group: N - 1 join (not timed), then,
//!   each timed from its cause to the moment the *last* member holds its
//!   new secure view: **join** (the N-th client joins), **partition** (the
//!   two halves of the daemons are cut apart: every member holds the secure
//!   view of its side), **merge** (the cut is healed: all N again), **leave**
//!   (the N-th client leaves: the N - 1 others).
//! - **Rekey (Figure 6).** For each number of groups G, G groups of
//!   `--group-size` distinct clients, each group with one member on the last
//!   daemon and the others spread over the rest: the last daemon is cut off
//!   from the others (every member of every group holds a new secure view
//!   of its side), then reconnected (every group whole again).
//!
//! A secure view is `Event::SecureView` in a layered mode and the keyed
//! regular `Membership` in an integrated one. An event counts as done only
//! when every member expected holds a secure view read after the cause,
//! with exactly the expected members, and all members of one view hold the
//! same view and key; a refused agreement, an undecipherable message or a
//! daemon error fails it. Partitions are iptables rules on `lo` between the
//! two sides' daemon ports (`split.rs`; root). The clients run in this
//! process on a few threads (`clients.rs`), as the paper's ran on the
//! daemons' machines.

mod clients;
mod split;

use crate::cluster::{LocalCluster, Spec, process_cpu_seconds};
use clap::{Args, ValueEnum};
use clients::{Book, Done, Side, Workers};
use nix::sys::signal::{SigSet, Signal};
use ringfence_client::{Address, Client, GroupMode, LayeredIdentity, PeerKeys};
use ringfence_crypto::identity::SecretIdentity;
use split::Splitter;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A comma-separated list of numbers, or `none`.
#[derive(Clone, Debug)]
pub(crate) struct Numbers(Vec<usize>);

fn numbers(s: &str) -> Result<Numbers, String> {
    if s == "none" || s.is_empty() {
        return Ok(Numbers(Vec::new()));
    }
    s.split(',')
        .map(|x| x.trim().parse::<usize>().map_err(|e| format!("`{x}`: {e}")))
        .collect::<Result<_, _>>()
        .map(Numbers)
}

/// The events of the size experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EventKind {
    /// One more client joins a group of N - 1.
    Join,
    /// One member leaves a group of N.
    Leave,
    /// The daemons are cut in two halves.
    Partition,
    /// The halves are reconnected.
    Merge,
}

impl EventKind {
    fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Partition => "partition",
            Self::Merge => "merge",
        }
    }
}

/// Options of `ringfence groupbench`.
#[derive(Args, Debug)]
pub(crate) struct GroupbenchArgs {
    /// Daemons to start on 127.0.0.1 (partitions cut them in two halves;
    /// the rekey experiment cuts off the last one).
    #[arg(long, default_value_t = 4)]
    daemons: usize,
    /// Group sizes of the join/leave/partition/merge experiment (`none`:
    /// skip it).
    #[arg(long, value_parser = numbers, default_value = "2,8,32,100")]
    sizes: Numbers,
    /// Events of the size experiment (partition and merge run together).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "join,leave,partition,merge")]
    events: Vec<EventKind>,
    /// Numbers of groups of the rekey experiment (`none`: skip it).
    #[arg(long, value_parser = numbers, default_value = "1,10,100,200")]
    groups: Numbers,
    /// Members of each group in the rekey experiment.
    #[arg(long, default_value_t = 3)]
    group_size: usize,
    /// Modes compared (integrated: `integrated-vs`, `optimized-evs`;
    /// layered: `layered-tgdh`, `-gdh`, `-bd`, `-str`, `-ckd`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "integrated-vs,layered-tgdh,layered-gdh,layered-bd,layered-str,layered-ckd"
    )]
    modes: Vec<GroupMode>,
    /// Repetitions of everything (interleaved: each repetition runs every
    /// size and mode once).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Threads polling the clients.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The daemons' timeout profile (`[ring] timeouts`): `default` or
    /// `low-latency`.
    #[arg(long, default_value = "default")]
    timeouts: String,
    /// Socket backend of the daemons (`auto`, `io_uring`, `portable`).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Longest wait for one event, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Write every sample as a JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the daemons' directory and logs.
    #[arg(long)]
    keep_logs: bool,
}

/// What a trial is: its experiment, mode, size or number of groups, and
/// repetition.
#[derive(Clone, Copy)]
struct Trial {
    experiment: &'static str,
    mode: GroupMode,
    n: usize,
    rep: usize,
}

/// One timed event.
struct Sample {
    experiment: &'static str,
    event: &'static str,
    mode: GroupMode,
    /// Group size (sizes) or number of groups (rekey).
    n: usize,
    rep: usize,
    /// From the cause to the last member's secure view, ms; or why not.
    result: Result<(f64, f64), String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The run's state: the daemons, the clients' workers, what they saw.
struct Bench<'a> {
    args: &'a GroupbenchArgs,
    workers: Workers,
    cluster: LocalCluster,
    book: Book,
    splitter: Option<Splitter>,
    next_client: usize,
    samples: Vec<Sample>,
    json: Option<std::fs::File>,
}

impl Bench<'_> {
    fn limit(&self) -> Duration {
        Duration::from_secs(self.args.timeout)
    }

    /// Connects one fresh client per entry of `daemons` (the daemon each
    /// connects to), every one with a fresh layered identity known to all
    /// of them; hands them to the workers. Returns (id, private name).
    fn connect(&mut self, daemons: &[usize]) -> Result<Vec<(usize, String)>, String> {
        let first = self.next_client;
        self.next_client += daemons.len();
        let names: Vec<String> = (first..first + daemons.len()).map(|i| format!("gb{i}")).collect();
        let secrets: Vec<SecretIdentity> =
            names.iter().map(|_| SecretIdentity::generate(&mut rand::rng())).collect();
        let mut peers = PeerKeys::new();
        for (n, s) in names.iter().zip(&secrets) {
            peers.insert(n, s.public());
        }
        let deadline = Instant::now() + self.limit();
        let mut out = Vec::with_capacity(daemons.len());
        for ((k, &d), secret) in daemons.iter().enumerate().zip(secrets) {
            let addr = Address::Unix(self.cluster.socket(d));
            let mut c = loop {
                match Client::connect(&addr, &names[k]) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("cannot connect to daemon d{d}: {e}"));
                    }
                    Err(_) => {
                        self.cluster.check_alive()?;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            c.set_layered_identity(LayeredIdentity::new(secret, peers.clone()));
            let id = first + k;
            out.push((id, c.private_name().to_string()));
            self.workers.add(id, c);
        }
        Ok(out)
    }

    /// CPU seconds used so far by this process (every client) and by the
    /// daemons.
    fn cpu(&self) -> (f64, f64) {
        (process_cpu_seconds("self").unwrap_or(0.0), self.cluster.cpu_seconds().unwrap_or(0.0))
    }

    /// Waits until `sides` hold their secure views read after `t0`.
    fn wait(&mut self, sides: &[Side], t0: Instant) -> Result<Done, String> {
        let limit = self.limit();
        let r = self.book.wait(&self.workers.reports, sides, t0, limit);
        if r.is_err() {
            self.cluster.check_alive()?;
        }
        r
    }

    fn record(
        &mut self,
        t: Trial,
        event: &'static str,
        (t0, cpu0): (Instant, (f64, f64)),
        r: Result<Done, String>,
    ) {
        let Trial { experiment, mode, n, rep } = t;
        let members = r.as_ref().map_or(0, |d| d.members);
        let result = r.map(|d| (ms(d.last_secure - t0), ms(d.agreement)));
        let cpu1 = self.cpu();
        let (client_cpu, daemon_cpu) = ((cpu1.0 - cpu0.0) * 1e3, (cpu1.1 - cpu0.1) * 1e3);
        match &result {
            Ok((total, agree)) => {
                eprintln!(
                    "  {experiment} {event:<9} {mode:<14} n={n:<3} rep={rep}: {total:8.1} ms (view to key {agree:6.1} ms; \
                     CPU clients {client_cpu:4.0} ms, daemons {daemon_cpu:4.0} ms)"
                );
            }
            Err(e) => eprintln!("  {experiment} {event:<9} {mode:<14} n={n:<3} rep={rep}: FAILED: {e}"),
        }
        if let Some(f) = self.json.as_mut() {
            let v = match &result {
                Ok((total, agree)) => serde_json::json!({
                    "experiment": experiment, "event": event, "mode": mode.name(), "n": n, "rep": rep,
                    "ok": true, "total_ms": total, "view_to_key_ms": agree, "members": members,
                    "client_cpu_ms": client_cpu, "daemon_cpu_ms": daemon_cpu,
                }),
                Err(e) => serde_json::json!({
                    "experiment": experiment, "event": event, "mode": mode.name(), "n": n, "rep": rep,
                    "ok": false, "error": e,
                }),
            };
            let _ = writeln!(f, "{v}");
        }
        self.samples.push(Sample { experiment, event, mode, n, rep, result });
    }

    /// Ports of the two halves of the cluster.
    fn halves(&self) -> (Vec<u16>, Vec<u16>) {
        let h = self.args.daemons / 2;
        (self.cluster.ports[..h].to_vec(), self.cluster.ports[h..].to_vec())
    }

    /// Cuts the daemons of ports `a` from those of `b`.
    fn split(&self, a: &[u16], b: &[u16]) -> Result<(), String> {
        self.splitter.as_ref().ok_or("no partitions here")?.split(a, b)
    }

    /// Removes every cut.
    fn heal(&self) -> Result<(), String> {
        self.splitter.as_ref().map_or(Ok(()), Splitter::heal)
    }

    /// One client per daemon in one group, until all see all: the daemons
    /// formed one ring.
    fn whole_ring(&mut self) -> Result<(), String> {
        let daemons: Vec<usize> = (0..self.args.daemons).collect();
        let members = self.connect(&daemons)?;
        let t0 = Instant::now();
        for (id, _) in &members {
            self.workers.join(*id, "gb.probe", GroupMode::IntegratedVs);
        }
        let side = side("gb.probe", &members);
        let r = self.wait(&[side], t0);
        self.workers.drop_all();
        r.map(|_| ()).map_err(|e| format!("the daemons formed no ring: {e}"))
    }

    /// Runs `cause`, then waits for `sides`; records the event. The clock
    /// starts when `cause` starts (a join or leave to send, the iptables
    /// call that puts the rules in force or removes them), and only views
    /// read after that count: under CPU load an `iptables` call can take
    /// longer than the daemons need to merge once the rules are gone, so
    /// starting at its return missed such views (the run waited for a view
    /// it already had). `Ok` if it completed.
    fn event(
        &mut self,
        (t, event): (Trial, &'static str),
        cause: impl FnOnce(&Self) -> Result<(), String>,
        sides: &[Side],
        record: bool,
    ) -> bool {
        let cpu0 = self.cpu();
        let t0 = Instant::now();
        let caused = cause(self);
        let r = caused.and_then(|()| self.wait(sides, t0));
        let ok = r.is_ok();
        if record || !ok {
            self.record(t, event, (t0, cpu0), r);
        }
        ok
    }

    /// The size experiment, one group of `n` in `mode`.
    fn size_trial(&mut self, n: usize, mode: GroupMode, rep: usize) {
        let t = Trial { experiment: "size", mode, n, rep };
        self.book.clear();
        let d = self.args.daemons;
        let h = d / 2;
        // Alternate between the halves: 0, h, 1, h + 1, ...
        let order: Vec<usize> = (0..d).map(|k| if k % 2 == 0 { k / 2 } else { h + k / 2 }).collect();
        let on: Vec<usize> = (0..n).map(|k| order[k % d]).collect();
        let members = match self.connect(&on) {
            Ok(m) => m,
            Err(e) => {
                self.record(t, "setup", (Instant::now(), self.cpu()), Err(e));
                return;
            }
        };
        let group = format!("gb.{mode}.s{n}.r{rep}");
        let events = &self.args.events;
        let want = |e: EventKind| events.contains(&e);
        let (join, leave, part, merge) = (
            want(EventKind::Join),
            want(EventKind::Leave),
            want(EventKind::Partition),
            want(EventKind::Merge),
        );
        let all = side(&group, &members);
        let first = side(&group, &members[..n - 1]);
        let newcomer = members[n - 1].0;
        let ok = self.event(
            (t, "setup"),
            |b| {
                for (id, _) in &members[..n - 1] {
                    b.workers.join(*id, &group, mode);
                }
                Ok(())
            },
            std::slice::from_ref(&first),
            false,
        ) && self.event(
            (t, "join"),
            |b| {
                b.workers.join(newcomer, &group, mode);
                Ok(())
            },
            std::slice::from_ref(&all),
            join,
        );
        let ok = ok
            && (!(part || merge) || {
                let (a, b) = self.halves();
                let in_a: Vec<_> = (0..n).filter(|&k| on[k] < h).map(|k| members[k].clone()).collect();
                let in_b: Vec<_> = (0..n).filter(|&k| on[k] >= h).map(|k| members[k].clone()).collect();
                let sides = [side(&group, &in_a), side(&group, &in_b)];
                let ok = self.event((t, "partition"), |s| s.split(&a, &b), &sides, part);
                // Healed whatever happened; the merge is timed only after a
                // partition that completed.
                ok && self.event((t, "merge"), Self::heal, std::slice::from_ref(&all), merge)
            });
        let _ = self.heal();
        if ok && leave {
            self.event(
                (t, "leave"),
                |b| {
                    b.workers.leave(newcomer, &group);
                    Ok(())
                },
                std::slice::from_ref(&first),
                true,
            );
        }
        self.workers.drop_all();
    }

    /// The rekey experiment: `g` groups in `mode`, the last daemon cut off
    /// and reconnected.
    fn rekey_trial(&mut self, g: usize, mode: GroupMode, rep: usize) {
        let t = Trial { experiment: "rekey", mode, n: g, rep };
        self.book.clear();
        let d = self.args.daemons;
        let s = self.args.group_size;
        let on: Vec<usize> = (0..g)
            .flat_map(|k| std::iter::once(d - 1).chain((1..s).map(move |j| (k + j - 1) % (d - 1))))
            .collect();
        let members = match self.connect(&on) {
            Ok(m) => m,
            Err(e) => {
                self.record(t, "setup", (Instant::now(), self.cpu()), Err(e));
                return;
            }
        };
        let groups: Vec<String> = (0..g).map(|k| format!("gb.{mode}.g{g}.r{rep}.{k}")).collect();
        let whole: Vec<Side> = groups.iter().zip(members.chunks(s)).map(|(n, m)| side(n, m)).collect();
        let cut: Vec<Side> = groups
            .iter()
            .zip(members.chunks(s))
            .flat_map(|(n, m)| [side(n, &m[..1]), side(n, &m[1..])])
            .collect();
        let last = [self.cluster.ports[d - 1]];
        let rest = self.cluster.ports[..d - 1].to_vec();
        let join_all = |b: &Self| {
            for (grp, m) in groups.iter().zip(members.chunks(s)) {
                for (id, _) in m {
                    b.workers.join(*id, grp, mode);
                }
            }
            Ok(())
        };
        let _ = self.event((t, "setup"), join_all, &whole, false)
            && self.event((t, "cut-off"), |b| b.split(&last, &rest), &cut, true)
            && self.event((t, "back"), Self::heal, &whole, true);
        let _ = self.heal();
        self.workers.drop_all();
    }
}

/// The side of `group` made of `members`.
fn side(group: &str, members: &[(usize, String)]) -> Side {
    Side {
        group: group.to_string(),
        clients: members.iter().map(|(id, _)| *id).collect(),
        names: members.iter().map(|(_, n)| n.clone()).collect::<BTreeSet<_>>(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// "median (min-max)" of the samples matching, or what failed.
fn cell(samples: &[Sample], experiment: &str, event: &str, mode: GroupMode, n: usize, part: usize) -> String {
    let mut v = Vec::new();
    let mut failed = 0;
    for s in samples
        .iter()
        .filter(|s| s.experiment == experiment && s.event == event && s.mode == mode && s.n == n)
    {
        match &s.result {
            Ok((total, agree)) => v.push(if part == 0 { *total } else { *agree }),
            Err(_) => failed += 1,
        }
    }
    let fail = if failed > 0 { format!(" **{failed} failed**") } else { String::new() };
    if v.is_empty() {
        return if failed > 0 { format!("failed ×{failed}") } else { "-".into() };
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    let m = median(&mut v);
    let f = |x: f64| if x < 10.0 { format!("{x:.1}") } else { format!("{x:.0}") };
    if v.len() == 1 { format!("{}{fail}", f(m)) } else { format!("{} ({}–{}){fail}", f(m), f(lo), f(hi)) }
}

/// The markdown tables of the run.
fn tables(args: &GroupbenchArgs, samples: &[Sample]) -> String {
    let mut out = String::new();
    let head = |out: &mut String, first: &str| {
        let _ = write!(out, "| {first} |");
        for m in &args.modes {
            let _ = write!(out, " {m} |");
        }
        out.push('\n');
        out.push_str("|---|");
        for _ in &args.modes {
            out.push_str("---:|");
        }
        out.push('\n');
    };
    for (part, what) in
        [(0, "cause → last member's secure view"), (1, "first new view → last member's secure view")]
    {
        if !args.sizes.0.is_empty() {
            let _ = writeln!(out, "\nGroup sizes, {what}, ms, median (min–max) of {} runs:\n", args.repeats);
            head(&mut out, "event, members");
            for e in &args.events {
                for &n in &args.sizes.0 {
                    let _ = write!(out, "| {} {n} |", e.name());
                    for &m in &args.modes {
                        let _ = write!(out, " {} |", cell(samples, "size", e.name(), m, n, part));
                    }
                    out.push('\n');
                }
            }
        }
        if !args.groups.0.is_empty() {
            let _ = writeln!(
                out,
                "\nRekey of G groups of {} after daemon d{} is cut off / back, {what}, ms, median (min–max) of {} runs:\n",
                args.group_size,
                args.daemons - 1,
                args.repeats
            );
            head(&mut out, "event, groups");
            for e in ["cut-off", "back"] {
                for &g in &args.groups.0 {
                    let _ = write!(out, "| {e} {g} |");
                    for &m in &args.modes {
                        let _ = write!(out, " {} |", cell(samples, "rekey", e, m, g, part));
                    }
                    out.push('\n');
                }
            }
        }
    }
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.result.is_err()).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\nFailed:");
        for s in failed {
            if let Err(e) = &s.result {
                let _ =
                    writeln!(out, "- {} {} {} n={} rep={}: {e}", s.experiment, s.event, s.mode, s.n, s.rep);
            }
        }
    }
    out
}

fn check_args(args: &GroupbenchArgs) -> Result<(), String> {
    if args.daemons < 2 {
        return Err("--daemons must be at least 2".into());
    }
    if let Some(m) = args.modes.iter().find(|m| !m.layered() && !m.keyed()) {
        return Err(format!(
            "mode {m} has no keys to measure: use integrated-vs, optimized-evs or a layered mode"
        ));
    }
    if args.sizes.0.iter().any(|&n| n < 2) {
        return Err("group sizes start at 2".into());
    }
    if !args.groups.0.is_empty() && args.group_size < 2 {
        return Err("--group-size must be at least 2".into());
    }
    if !["default", "low-latency"].contains(&args.timeouts.as_str()) {
        return Err("--timeouts is `default` or `low-latency`".into());
    }
    Ok(())
}

/// Held by the signal thread while it cleans up; `main` takes it before
/// returning, so the process does not end halfway through the clean-up.
static CLEANING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// On SIGINT, SIGTERM or SIGHUP: remove the iptables chain, kill the
/// daemons, remove their directory and exit 130. The signals are blocked in
/// this thread before any other starts (threads inherit the mask) and taken
/// by a thread of their own; the daemons, already started, keep theirs.
fn clean_up_on_signal(chain: Option<String>, daemons: Vec<u32>, dir: PathBuf) -> Result<(), String> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| format!("cannot block signals: {e}"))?;
    std::thread::Builder::new()
        .name("groupbench-signals".into())
        .spawn(move || {
            let Ok(sig) = signals.wait() else { return };
            // Held until the process exits: `main` waits for it before returning.
            let _cleaning = CLEANING.lock();
            eprintln!("groupbench: {sig}: removing the partition rules and stopping the daemons");
            if let Some(c) = &chain {
                split::remove(c);
            }
            for pid in daemons {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            std::process::exit(130);
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

pub(crate) fn main(args: &GroupbenchArgs) -> ExitCode {
    let result = run(args);
    let _wait_for_a_clean_up = CLEANING.lock();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringfence groupbench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &GroupbenchArgs) -> Result<bool, String> {
    check_args(args)?;
    let splits = (!args.sizes.0.is_empty()
        && args.events.iter().any(|e| matches!(e, EventKind::Partition | EventKind::Merge)))
        || !args.groups.0.is_empty();
    let splitter = if splits {
        Some(Splitter::new().map_err(|e| {
            format!(
                "partitions need iptables as root ({e}); `scripts/install-deps.sh` (as root) installs it, \
                 or run with `--events join,leave --groups none`"
            )
        })?)
    } else {
        None
    };
    let mut spec = Spec::new(args.daemons);
    spec.backend.clone_from(&args.backend);
    spec.ring.push(format!("timeouts = \"{}\"", args.timeouts));
    spec.groups = "\n[[group]]\npattern = \"gb.probe\"\nmode = \"integrated-vs\"\n".into();
    for m in &args.modes {
        let _ = write!(spec.groups, "\n[[group]]\npattern = \"gb.{m}.*\"\nmode = \"{m}\"\n");
    }
    let mut cluster = LocalCluster::start("groupbench", &spec)?;
    cluster.keep_dir = args.keep_logs;
    clean_up_on_signal(
        splitter.as_ref().map(|s| s.chain().to_string()),
        cluster.pids(),
        cluster.dir.clone(),
    )?;
    let json = match &args.json {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let mut bench = Bench {
        args,
        cluster,
        workers: Workers::start(args.threads),
        book: Book::default(),
        splitter,
        next_client: 0,
        samples: Vec::new(),
        json,
    };
    eprintln!(
        "groupbench: {} daemons ({} backend, {} timeouts), modes {}, {} repeats",
        args.daemons,
        args.backend,
        args.timeouts,
        args.modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
        args.repeats
    );
    let start = Instant::now();
    bench.whole_ring()?;
    for rep in 0..args.repeats {
        for &n in &args.sizes.0 {
            for &m in &args.modes {
                bench.size_trial(n, m, rep);
            }
        }
        for &g in &args.groups.0 {
            for &m in &args.modes {
                bench.rekey_trial(g, m, rep);
            }
        }
    }
    print!("{}", tables(args, &bench.samples));
    println!(
        "\n(wall clock {:.0} s; sends the daemons refused because the client had answered the flush: {})",
        start.elapsed().as_secs_f64(),
        bench.book.refused_while_flushing
    );
    let ok = bench.samples.iter().all(|s| s.result.is_ok());
    if !ok {
        bench.cluster.keep_dir = true;
    }
    Ok(ok)
}
