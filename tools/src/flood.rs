//! `ringfence flood`: measure throughput and latency of a cluster.
//!
//! Senders multicast `--messages` messages of `--size` bytes to one group;
//! one receiver per daemon (threads of this process, each with its own
//! [`Client`]) takes every message and checks it. With `--config FILE`, flood
//! connects to the client socket of every daemon of that cluster; otherwise
//! (`--spawn K`, K = 3 by default) it starts K daemons itself as child
//! processes of this binary on 127.0.0.1, and kills and reaps them at the end,
//! whatever happens.
//!
//! Each payload starts with 16 bytes: the send time (u64 LE, nanoseconds
//! since an `Instant` shared by all threads of this process), the sender's
//! index (u32 LE) and its sequence number (u32 LE). A receiver records the
//! latency (receive time minus send time) in an HDR histogram, checks
//! per-sender FIFO order and the payload length, and keeps a hash of the
//! whole delivery sequence; with agreed or safe service all receivers must
//! end with the same hash (the same total order).
//!
//! Throughput counts payload bytes once per message (not per receiver), from
//! the first send to the last delivery at any receiver. Everything is bounded
//! by `--timeout`: past it, flood reports what was delivered and fails.
//!
//! `--mode` is the group's protection mode (`docs/security.md`): a spawned
//! cluster's config gets a `[[group]]` rule giving the group that mode, and
//! every client joins stating it. In the keyed modes (`integrated-vs`,
//! `optimized-evs`) the senders join too (a closed VS group takes messages
//! from members only, and only members hold the view key to seal with; they
//! discard their own messages), the client library seals every payload and
//! opens it at each receiver, so the header above is checked after opening.
//! Every client answers flush requests (`integrated-vs`), and a message that
//! cannot be opened is counted and fails the run. `--remote-tls` gives the
//! spawned daemons TLS listeners with a fresh CA and certificates, and every
//! client connects over TCP+TLS with a client certificate instead of the Unix
//! socket. In the layered modes (`layered-tgdh`, ...) every client gets a
//! fresh Ed25519 identity (all public keys known to all), the senders join
//! as in the keyed modes, and the run starts once every client holds the
//! secure view of all of them (the members agreed on its key).

use crate::cluster::{LocalCluster, Spec, process_cpu_seconds};
use crate::connect_opts::ConnectOpts;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use ringfence_client::{
    Address, Client, ClientError, ConnectOptions, Event, GroupMode, LayeredIdentity, PeerKeys, Service,
    TlsOptions, ViewKind,
};
use ringfence_crypto::identity::SecretIdentity;
use ringfence_engine::DaemonConfig;
use ringfence_proto::wire::client::ErrorCode;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bytes at the start of every payload: send time, sender index, sequence.
const HEADER: usize = 16;
/// Messages per `multicast_batch` write when not paced.
const BATCH: usize = 64;

/// Delivery service, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServiceArg {
    /// No reliability.
    Unreliable,
    /// Reliable, unordered.
    Reliable,
    /// Per-sender order.
    Fifo,
    /// Causal order.
    Causal,
    /// Total order.
    Agreed,
    /// Total order, delivered once every daemon holds the message.
    Safe,
}

impl ServiceArg {
    fn service(self) -> Service {
        match self {
            Self::Unreliable => Service::Unreliable,
            Self::Reliable => Service::Reliable,
            Self::Fifo => Service::Fifo,
            Self::Causal => Service::Causal,
            Self::Agreed => Service::Agreed,
            Self::Safe => Service::Safe,
        }
    }

    /// The service promises per-sender order (and no loss).
    fn fifo(self) -> bool {
        matches!(self, Self::Fifo | Self::Causal | Self::Agreed | Self::Safe)
    }

    /// The service promises one total order at every receiver.
    fn total(self) -> bool {
        matches!(self, Self::Agreed | Self::Safe)
    }
}

/// Group protection mode, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    /// Nothing beyond the links between daemons.
    None,
    /// Closed VS group; members seal under the view key.
    IntegratedVs,
    /// Open EVS group; members seal under the view key, daemons reseal.
    OptimizedEvs,
    /// No client keys; remote clients over TLS.
    ThreeStep,
    /// Closed VS group; the members agree on each view's key by TGDH.
    LayeredTgdh,
    /// Layered, by group Diffie-Hellman (IKA.2).
    LayeredGdh,
    /// Layered, by Burmester-Desmedt.
    LayeredBd,
    /// Layered, by STR.
    LayeredStr,
    /// Layered, by centralized key distribution.
    LayeredCkd,
}

impl ModeArg {
    fn mode(self) -> GroupMode {
        match self {
            Self::None => GroupMode::None,
            Self::IntegratedVs => GroupMode::IntegratedVs,
            Self::OptimizedEvs => GroupMode::OptimizedEvs,
            Self::ThreeStep => GroupMode::ThreeStep,
            Self::LayeredTgdh => GroupMode::LayeredTgdh,
            Self::LayeredGdh => GroupMode::LayeredGdh,
            Self::LayeredBd => GroupMode::LayeredBd,
            Self::LayeredStr => GroupMode::LayeredStr,
            Self::LayeredCkd => GroupMode::LayeredCkd,
        }
    }
}

/// Options of `ringfence flood`.
#[derive(Args, Debug)]
pub(crate) struct FloodArgs {
    /// A cluster configuration: flood connects to every daemon's client
    /// socket. Without it, flood starts its own daemons (see --spawn).
    #[arg(long, conflicts_with = "spawn")]
    config: Option<PathBuf>,
    /// Start K daemons as child processes on 127.0.0.1 (the default, with
    /// K = 3, when no --config is given).
    #[arg(long, value_name = "K")]
    spawn: Option<usize>,
    /// Messages to send, in all (split evenly among the senders).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Payload size in bytes (at least 16: send time and sequence number).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Delivery service.
    #[arg(long, value_enum, default_value_t = ServiceArg::Agreed)]
    service: ServiceArg,
    /// Number of senders, placed on daemons 0, 1, ... round-robin.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// The group to flood.
    #[arg(long, default_value = "flood")]
    group: String,
    /// Print one JSON object on standard output instead of the summary.
    #[arg(long)]
    json: bool,
    /// Pace the senders to R messages/s in all (for latency); without it they
    /// send as fast as the daemons accept.
    #[arg(long, value_name = "R")]
    rate: Option<u64>,
    /// Spawned daemons: turn the accelerated ring off.
    #[arg(long, conflicts_with = "config")]
    no_accelerated: bool,
    /// Spawned daemons: turn packing of small messages off.
    #[arg(long, conflicts_with = "config")]
    no_packing: bool,
    /// Spawned daemons: the ring thread's I/O backend (auto, io_uring or
    /// portable).
    #[arg(long, conflicts_with = "config", default_value = "auto", value_parser = ["auto", "io_uring", "portable"])]
    backend: String,
    /// Spawned daemons: `unicast` (one datagram per peer) or `multicast`
    /// (one datagram to an IP multicast group on loopback).
    #[arg(long, conflicts_with = "config", default_value = "unicast", value_parser = ["unicast", "multicast"])]
    transport: String,
    /// Spawned daemons: where each ring thread runs (`auto`: core id mod
    /// cores, `none`: unpinned, or a core index).
    #[arg(long, conflicts_with = "config", default_value = "auto")]
    ring_core: String,
    /// Spawned daemons: link security between them (`encrypt`,
    /// `authenticate` or `none`).
    #[arg(long, conflicts_with = "config", default_value = "encrypt", value_parser = ["encrypt", "authenticate", "none"])]
    link_security: String,
    /// The group's protection mode. Spawned daemons get a `[[group]]` rule
    /// giving the group this mode; with --config, the cluster's policy must
    /// give it this mode.
    #[arg(long, value_enum, default_value_t = ModeArg::None)]
    mode: ModeArg,
    /// Spawned daemons: TLS listeners for TCP clients (a fresh CA, server
    /// and client certificates, `require_tls`); every flood client connects
    /// over TCP+TLS with a client certificate instead of the Unix socket.
    #[arg(long, conflicts_with_all = ["config", "tls_ca", "token"])]
    remote_tls: bool,
    /// Give up after this many seconds (setup included), report the shortfall
    /// and fail. Default: scaled to the work: 30 s, plus 1 s per 10,000
    /// messages (and per 10 MB of payload), or twice the paced duration
    /// with --rate.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Write the latency distribution (every receiver's deliveries, in
    /// microseconds) to FILE, in HdrHistogram's percentile text format
    /// (plottable with HdrHistogram's plotter).
    #[arg(long, value_name = "FILE")]
    histogram: Option<PathBuf>,
    /// With TLS or a token, flood connects to each daemon's `client_tcp`
    /// (needs --config).
    #[command(flatten)]
    connect: ConnectOpts,
}

/// Starts the daemons flood was asked to spawn.
fn spawn(n: usize, args: &FloodArgs) -> Result<LocalCluster, String> {
    let mut spec = Spec::new(n);
    spec.backend.clone_from(&args.backend);
    spec.transport.clone_from(&args.transport);
    spec.ring_core.clone_from(&args.ring_core);
    spec.link_security.clone_from(&args.link_security);
    if args.mode != ModeArg::None {
        spec.groups = format!("\n[[group]]\npattern = \"{}\"\nmode = \"{}\"\n", args.group, args.mode.mode());
    }
    spec.client_tls = args.remote_tls;
    if args.no_accelerated {
        spec.ring.push("accelerated = false".into());
    }
    if args.no_packing {
        spec.ring.push("packing = false".into());
    }
    LocalCluster::start("flood", &spec)
}

/// The client addresses of every daemon of a configured cluster: Unix
/// sockets, or with `tcp` the `client_tcp` addresses.
fn configured_sockets(path: &Path, tcp: bool) -> Result<Vec<Address>, String> {
    // Any daemon's name selects the file's view of the whole cluster; read
    // the names from the file first.
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = text
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let v = l.strip_prefix("name")?.trim_start().strip_prefix('=')?.trim();
            Some(v.trim_matches('"').to_string())
        })
        .ok_or_else(|| format!("{}: no daemon in [[cluster.daemon]]", path.display()))?;
    let first = DaemonConfig::load(path, &name).map_err(|e| e.to_string())?;
    first
        .peers
        .iter()
        .map(|p| {
            let c = DaemonConfig::load(path, &p.name).map_err(|e| e.to_string())?;
            match (tcp, c.client_tcp) {
                (false, _) => Ok(Address::Unix(c.client_socket)),
                (true, Some(a)) => Ok(Address::Tcp(a)),
                (true, None) => Err(format!("daemon {} has no client_tcp", p.name)),
            }
        })
        .collect()
}

/// Nanoseconds since `base`.
fn ns_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Connects, retrying while the daemon is starting.
fn connect(
    addr: &Address,
    opts: &ConnectOptions,
    name: &str,
    deadline: Instant,
    spawned: &mut Option<LocalCluster>,
) -> Result<Client, String> {
    loop {
        match Client::connect_with(addr, name, opts) {
            Ok(c) => return Ok(c),
            Err(e) => {
                if let Some(s) = spawned.as_mut() {
                    s.check_alive()?;
                }
                if Instant::now() >= deadline {
                    return Err(format!("cannot connect to {addr:?}: {e}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// What a sender did.
struct SenderDone {
    /// Kept open until the end, so nothing it sent is cut off.
    _client: Client,
    sent: u64,
    first_ns: u64,
    /// Messages of the group it could not open (keyed modes: the senders
    /// are members and receive the other senders' messages).
    undecipherable: u64,
    first_undecipherable: Option<String>,
}

/// What a receiver saw.
struct ReceiverDone {
    delivered: u64,
    hist: Histogram<u64>,
    last_ns: u64,
    fifo_violations: u64,
    first_violation: Option<String>,
    bad_payloads: u64,
    order_hash: u64,
    views: u64,
    /// Messages the library (or the daemon) could not open.
    undecipherable: u64,
    first_undecipherable: Option<String>,
    /// Flush requests answered during the run (a view change).
    flushes: u64,
}

enum Done {
    Sender(usize, Result<SenderDone, String>),
    Receiver(usize, Result<ReceiverDone, String>),
}

struct SendPlan {
    service: Service,
    group: String,
    size: usize,
    count: u64,
    /// Per-sender pacing interval, if paced.
    interval_ns: Option<u64>,
}

fn write_header(buf: &mut [u8], ts: u64, sender: u32, seq: u32) {
    buf[0..8].copy_from_slice(&ts.to_le_bytes());
    buf[8..12].copy_from_slice(&sender.to_le_bytes());
    buf[12..16].copy_from_slice(&seq.to_le_bytes());
}

/// Messages that could not be opened, and the first one's description.
#[derive(Default)]
struct Undecipherable {
    count: u64,
    first: Option<String>,
}

impl Undecipherable {
    fn record(&mut self, sender: &str, key_id: u32, reason: &str) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(format!("from {sender} under key {key_id}: {reason}"));
        }
    }
}

/// Reads what the daemon said to a sender: errors, and in keyed modes (the
/// senders are members) views, flush requests and the other senders'
/// messages, which it skips; undecipherable ones are counted.
fn drain_sender(c: &mut Client, undecipherable: &mut Undecipherable) -> Result<(), String> {
    while let Some(ev) = c.poll().map_err(|e| e.to_string())? {
        match ev {
            Event::Error { code, text } => {
                return Err(format!("daemon refused a multicast ({code:?}): {text}"));
            }
            Event::FlushRequest { group, view_id } => {
                c.flush_ok(&group, view_id).map_err(|e| e.to_string())?
            }
            Event::Undecipherable { sender, key_id, reason, .. } => {
                undecipherable.record(&sender, key_id, &reason);
            }
            _ => {}
        }
    }
    Ok(())
}

fn run_sender(
    mut c: Client,
    idx: u32,
    plan: &SendPlan,
    base: Instant,
    stop: &AtomicBool,
    deadline: Instant,
) -> Result<SenderDone, String> {
    let groups = [plan.group.as_str()];
    let mut sent: u64 = 0;
    let mut first_ns = None;
    let mut undecipherable = Undecipherable::default();
    let err = |e: ClientError| format!("sender {idx}: {e}");
    if let Some(interval) = plan.interval_ns {
        let mut buf = vec![0u8; plan.size];
        let start = ns_since(base);
        while sent < plan.count {
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break;
            }
            let target = start + sent * interval;
            let mut now = ns_since(base);
            if now + 150_000 < target {
                std::thread::sleep(Duration::from_nanos(target - now - 100_000));
                now = ns_since(base);
            }
            while now < target {
                std::thread::yield_now();
                now = ns_since(base);
            }
            first_ns.get_or_insert(now);
            write_header(&mut buf, now, idx, u32::try_from(sent).unwrap_or(u32::MAX));
            c.multicast(plan.service, &groups, 0, &buf).map_err(err)?;
            sent += 1;
            if sent % 1024 == 0 {
                drain_sender(&mut c, &mut undecipherable)?;
            }
        }
    } else {
        let mut buf = vec![0u8; plan.size * BATCH];
        let mut batches: u64 = 0;
        while sent < plan.count {
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break;
            }
            let n = usize::try_from((plan.count - sent).min(BATCH as u64)).unwrap_or(BATCH);
            let now = ns_since(base);
            first_ns.get_or_insert(now);
            for (j, m) in buf.chunks_mut(plan.size).take(n).enumerate() {
                write_header(m, now, idx, u32::try_from(sent + j as u64).unwrap_or(u32::MAX));
            }
            c.multicast_batch(plan.service, &groups, 0, buf.chunks(plan.size).take(n)).map_err(err)?;
            sent += n as u64;
            batches += 1;
            if batches % 16 == 0 {
                drain_sender(&mut c, &mut undecipherable)?;
            }
        }
    }
    drain_sender(&mut c, &mut undecipherable)?;
    Ok(SenderDone {
        _client: c,
        sent,
        first_ns: first_ns.unwrap_or(0),
        undecipherable: undecipherable.count,
        first_undecipherable: undecipherable.first,
    })
}

struct RecvPlan {
    group: String,
    size: usize,
    /// Messages each sender sends.
    per_sender: Vec<u64>,
    expected: u64,
    fifo: bool,
}

fn run_receiver(
    mut c: Client,
    plan: &RecvPlan,
    base: Instant,
    progress: &AtomicU64,
    stop: &AtomicBool,
) -> Result<ReceiverDone, String> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut next = vec![0u64; plan.per_sender.len()];
    let mut done = ReceiverDone {
        delivered: 0,
        hist: Histogram::new(3).map_err(|e| e.to_string())?,
        last_ns: 0,
        fifo_violations: 0,
        first_violation: None,
        bad_payloads: 0,
        order_hash: 0xcbf2_9ce4_8422_2325,
        views: 0,
        undecipherable: 0,
        first_undecipherable: None,
        flushes: 0,
    };
    let mut undecipherable = Undecipherable::default();
    // A message that cannot be opened is not delivered, but it is one of the
    // expected ones: count it so the receiver ends (and the run fails).
    while done.delivered + undecipherable.count < plan.expected && !stop.load(Ordering::Relaxed) {
        match c.receive().map_err(|e| e.to_string())? {
            Event::Message(m) => {
                let now = ns_since(base);
                done.delivered += 1;
                done.last_ns = now;
                progress.store(done.delivered, Ordering::Relaxed);
                let p = &m.payload[..];
                if p.len() != plan.size || p.len() < HEADER {
                    done.bad_payloads += 1;
                    continue;
                }
                let ts = u64::from_le_bytes(p[0..8].try_into().unwrap_or_default());
                let sender = u32::from_le_bytes(p[8..12].try_into().unwrap_or_default()) as usize;
                let seq = u64::from(u32::from_le_bytes(p[12..16].try_into().unwrap_or_default()));
                if sender >= next.len() || seq >= plan.per_sender[sender] {
                    done.bad_payloads += 1;
                    continue;
                }
                hist.saturating_record(now.saturating_sub(ts).max(1));
                done.order_hash = (done.order_hash.rotate_left(17) ^ ((sender as u64) << 32 | seq))
                    .wrapping_mul(0x100_0000_01b3);
                if plan.fifo && seq != next[sender] {
                    done.fifo_violations += 1;
                    if done.first_violation.is_none() {
                        done.first_violation = Some(format!(
                            "sender {sender}: expected #{} got #{seq} (delivery {})",
                            next[sender], done.delivered
                        ));
                    }
                }
                next[sender] = seq + 1;
            }
            Event::Membership(v) if v.group == plan.group => done.views += 1,
            Event::FlushRequest { group, view_id } => {
                done.flushes += 1;
                c.flush_ok(&group, view_id).map_err(|e| e.to_string())?;
            }
            Event::Undecipherable { sender, key_id, reason, .. } => {
                undecipherable.record(&sender, key_id, &reason);
            }
            Event::Error { code, text } => return Err(format!("daemon error ({code:?}): {text}")),
            _ => {}
        }
    }
    done.undecipherable = undecipherable.count;
    done.first_undecipherable = undecipherable.first;
    done.hist = hist;
    Ok(done)
}

/// Whether a daemon error says a `flush_ok` answered no outstanding request.
fn stale_flush_ok(code: ErrorCode, text: &str) -> bool {
    code == ErrorCode::StaleView || text == "no flush requested"
}

/// Joins `clients[first..]` to the group in `mode` and waits until every
/// client sees a regular view with all of `clients` (so the daemons have
/// formed one ring) and, in keyed modes, holds its key; flush requests
/// (`integrated-vs`) are answered meanwhile.
fn wait_for_view(
    clients: &mut [Client],
    first: usize,
    group: &str,
    mode: GroupMode,
    deadline: Instant,
    spawned: &mut Option<LocalCluster>,
) -> Result<(), String> {
    let vs = mode == GroupMode::IntegratedVs || mode.layered();
    for c in clients[first..].iter_mut() {
        c.join_with(group, vs, mode).map_err(|e| e.to_string())?;
    }
    let want = clients.len();
    let mut ready = vec![false; want];
    let mut last = vec![0usize; want];
    let mut tick = 0u32;
    while !ready.iter().all(|&r| r) {
        let mut idle = true;
        for (i, c) in clients.iter_mut().enumerate() {
            while let Some(ev) = c.poll().map_err(|e| format!("client {i}: {e}"))? {
                idle = false;
                match ev {
                    Event::Membership(v) if v.group == group => {
                        last[i] = v.members.len();
                        ready[i] = v.kind == ViewKind::Regular
                            && v.members.len() == want
                            && (v.key.is_some() || !mode.keyed())
                            && !mode.layered();
                    }
                    // Layered: the members' key is agreed for the view.
                    Event::SecureView { group: g, members, .. } if g == group => {
                        last[i] = members.len();
                        ready[i] = members.len() == want;
                    }
                    Event::FlushRequest { group, view_id } => {
                        c.flush_ok(&group, view_id).map_err(|e| format!("client {i}: {e}"))?;
                    }
                    // Joins in quick succession restart a flush: the daemon
                    // asks again, and one of our answers finds no request
                    // outstanding (it says so with code 0, not `StaleView`).
                    Event::Error { code, text } if stale_flush_ok(code, &text) => {}
                    Event::Error { code, text } => return Err(format!("client {i}: {code:?}: {text}")),
                    _ => {}
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no view of all {want} clients (keyed: with its key) in time: they see views of {last:?} members"
            ));
        }
        if idle {
            tick += 1;
            if tick % 50 == 0 {
                if let Some(s) = spawned.as_mut() {
                    s.check_alive()?;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// The outcome of a run.
#[derive(Default)]
struct Report {
    daemons: usize,
    elapsed_s: f64,
    sent: u64,
    delivered: u64,
    expected: u64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    max_us: Option<f64>,
    /// CPU time of all spawned daemons per message sent, during the load.
    daemon_cpu_us_per_msg: Option<f64>,
    /// CPU time of this process (every sender and receiver: framing,
    /// seal and open, TLS) per message sent, during the load.
    client_cpu_us_per_msg: Option<f64>,
    fifo_violations: u64,
    bad_payloads: u64,
    /// Messages no receiver or sender could open (keyed modes).
    undecipherable: u64,
    first_undecipherable: Option<String>,
    /// Flush requests the receivers answered during the run.
    flushes: u64,
    total_order: Option<bool>,
    first_violation: Option<String>,
    errors: Vec<String>,
    timed_out: bool,
}

impl Report {
    fn order_ok(&self) -> bool {
        self.fifo_violations == 0
            && self.bad_payloads == 0
            && self.undecipherable == 0
            && self.total_order != Some(false)
    }

    fn ok(&self) -> bool {
        self.order_ok() && self.errors.is_empty() && !self.timed_out && self.delivered == self.expected
    }

    fn msgs_per_sec(&self) -> f64 {
        if self.elapsed_s > 0.0 { self.sent as f64 / self.elapsed_s } else { 0.0 }
    }
}

impl FloodArgs {
    /// The run's time bound in seconds: `--timeout`, or scaled to the work.
    fn timeout_secs(&self) -> u64 {
        self.timeout.unwrap_or_else(|| {
            let bytes = self.messages.saturating_mul(self.size as u64);
            let work = match self.rate {
                Some(r) => 2 * self.messages / r.max(1),
                None => self.messages / 10_000 + bytes / 10_000_000,
            };
            30u64.saturating_add(work)
        })
    }
}

/// Writes `h` (nanoseconds) as HdrHistogram's percentile distribution text
/// (`outputPercentileDistribution`), in microseconds.
fn write_histogram(path: &Path, h: &Histogram<u64>) -> std::io::Result<()> {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { "inf".into() };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:>14}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inverse
        );
    }
    let (mean, sd) = if h.is_empty() { (0.0, 0.0) } else { (h.mean() / 1000.0, h.stdev() / 1000.0) };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.max() as f64 / 1000.0,
        h.len(),
        h.buckets(),
        h.distinct_values()
    );
    std::fs::write(path, out)
}

/// A quantile in microseconds, to 0.1 us.
fn us(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0)
}

pub(crate) fn main(args: &FloodArgs) -> ExitCode {
    if args.size < HEADER {
        eprintln!(
            "flood: --size {} is too small: payloads carry a {HEADER}-byte header (send time, sender, sequence)",
            args.size
        );
        return ExitCode::from(2);
    }
    if args.senders == 0 || args.messages == 0 || args.rate == Some(0) || args.spawn == Some(0) {
        eprintln!("flood: --senders, --messages, --rate and --spawn must be at least 1");
        return ExitCode::from(2);
    }
    if args.mode != ModeArg::None
        && !args.mode.mode().layered()
        && args.config.is_none()
        && args.link_security != "encrypt"
    {
        eprintln!("flood: --mode {} needs --link-security encrypt", args.mode.mode());
        return ExitCode::from(2);
    }
    if args.messages / args.senders as u64 >= u64::from(u32::MAX) {
        eprintln!("flood: at most {} messages per sender", u32::MAX - 1);
        return ExitCode::from(2);
    }
    let mut spawned = None;
    let report = run(args, &mut spawned);
    let ok = report.ok();
    if let Some(s) = spawned.as_mut() {
        s.keep_dir |= !report.errors.is_empty() || report.timed_out;
    }
    // Stop the daemons before printing: the threads still blocked on them
    // end with the process.
    drop(spawned);
    print_report(args, &report);
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn run(args: &FloodArgs, spawned: &mut Option<LocalCluster>) -> Report {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs());
    let mut report = Report { expected: 0, ..Report::default() };
    let mut opts = args.connect.options();
    let sockets = match &args.config {
        Some(path) => configured_sockets(path, args.connect.remote()),
        None if args.connect.remote() => Err("TLS and token options need --config".into()),
        None => spawn(args.spawn.unwrap_or(3), args).map(|c| {
            let socks = match &c.client_tls {
                Some(t) => {
                    opts.tls = Some(
                        TlsOptions::new(&t.ca_cert, t.server_name.as_str()).with_client_cert(&t.cert, &t.key),
                    );
                    c.tcp.iter().copied().map(Address::Tcp).collect()
                }
                None => c.sockets().into_iter().map(Address::Unix).collect(),
            };
            *spawned = Some(c);
            socks
        }),
    };
    let sockets = match sockets {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(e);
            return report;
        }
    };
    let k = sockets.len();
    report.daemons = k;
    let m = args.senders;
    let per_sender: Vec<u64> =
        (0..m).map(|i| args.messages / m as u64 + u64::from((i as u64) < args.messages % m as u64)).collect();
    report.expected = args.messages * k as u64;

    // Layered modes: a fresh Ed25519 identity per client, every public key
    // known to every client (docs/security.md, "Layered groups").
    let mode = args.mode.mode();
    let names: Vec<String> =
        (0..k).map(|i| format!("flood-r{i}")).chain((0..m).map(|i| format!("flood-s{i}"))).collect();
    let secrets: Vec<SecretIdentity> =
        names.iter().map(|_| SecretIdentity::generate(&mut rand::rng())).collect();
    let mut peers = PeerKeys::new();
    for (n, s) in names.iter().zip(&secrets) {
        peers.insert(n, s.public());
    }
    let identify = |c: &mut Client, i: usize| {
        if mode.layered() {
            let secret = SecretIdentity::from_bytes(secrets[i].expose_secret());
            c.set_layered_identity(LayeredIdentity::new(secret, peers.clone()));
        }
    };

    // Receivers first, one per daemon; then wait until they see one ring.
    let mut receivers = Vec::with_capacity(k);
    for (i, s) in sockets.iter().enumerate() {
        match connect(s, &opts, &names[i], deadline, spawned) {
            Ok(mut c) => {
                identify(&mut c, i);
                receivers.push(c);
            }
            Err(e) => {
                report.errors.push(e);
                return report;
            }
        }
    }
    if let Err(e) = wait_for_view(&mut receivers, 0, &args.group, mode, deadline, spawned) {
        report.errors.push(e);
        return report;
    }
    for i in 0..m {
        match connect(&sockets[i % k], &opts, &names[k + i], deadline, spawned) {
            Ok(mut c) => {
                identify(&mut c, k + i);
                receivers.push(c);
            }
            Err(e) => {
                report.errors.push(e);
                return report;
            }
        }
    }
    // Keyed and layered modes: the senders join (as members they hold the
    // view key), and every client waits for the view with all of them and
    // its key.
    if mode.keyed() || mode.layered() {
        for c in &mut receivers[k..] {
            c.set_self_discard(true);
        }
        if let Err(e) = wait_for_view(&mut receivers, k, &args.group, mode, deadline, spawned) {
            report.errors.push(e);
            return report;
        }
    }
    let senders = receivers.split_off(k);

    let cpu_before = spawned.as_ref().and_then(LocalCluster::cpu_seconds);
    let client_cpu_before = process_cpu_seconds("self");
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..k).map(|_| AtomicU64::new(0)).collect());
    let (tx, rx) = mpsc::channel::<Done>();
    let recv_plan = Arc::new(RecvPlan {
        group: args.group.clone(),
        size: args.size,
        per_sender: per_sender.clone(),
        expected: args.messages,
        fifo: args.service.fifo(),
    });
    for (i, c) in receivers.into_iter().enumerate() {
        let (tx, plan, progress, stop) =
            (tx.clone(), Arc::clone(&recv_plan), Arc::clone(&progress), Arc::clone(&stop));
        std::thread::spawn(move || {
            let r = run_receiver(c, &plan, base, &progress[i], &stop);
            let _ = tx.send(Done::Receiver(i, r));
        });
    }
    for (i, c) in senders.into_iter().enumerate() {
        let plan = SendPlan {
            service: args.service.service(),
            group: args.group.clone(),
            size: args.size,
            count: per_sender[i],
            interval_ns: args.rate.map(|r| (1_000_000_000 * m as u64 / r).max(1)),
        };
        let (tx, stop) = (tx.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let r = run_sender(c, u32::try_from(i).unwrap_or(u32::MAX), &plan, base, &stop, deadline);
            let _ = tx.send(Done::Sender(i, r));
        });
    }
    drop(tx);

    let mut sent_done: Vec<Option<SenderDone>> = (0..m).map(|_| None).collect();
    let mut recv_done: Vec<Option<ReceiverDone>> = (0..k).map(|_| None).collect();
    let mut pending = m + k;
    // A progress line on a terminal (standard error), redrawn in place.
    let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let expected_total = report.expected;
    let progress_line = |progress: &[AtomicU64]| {
        let delivered: u64 = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
        let secs = base.elapsed().as_secs_f64();
        let pct = if expected_total > 0 { delivered as f64 * 100.0 / expected_total as f64 } else { 0.0 };
        eprint!(
            "\rflood: {delivered} of {expected_total} deliveries ({pct:.0}%), {:.0} deliveries/s, {secs:.1} s \x1b[K",
            delivered as f64 / secs.max(1e-9)
        );
    };
    let mut next_progress = Instant::now() + Duration::from_millis(500);
    while pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if show_progress {
            left.min(next_progress.saturating_duration_since(Instant::now()))
        } else {
            left
        };
        let got = rx.recv_timeout(wait);
        if show_progress && Instant::now() >= next_progress {
            next_progress += Duration::from_millis(500);
            progress_line(&progress);
        }
        if matches!(got, Err(mpsc::RecvTimeoutError::Timeout)) && Instant::now() < deadline {
            continue;
        }
        match got {
            Ok(Done::Sender(i, Ok(d))) => sent_done[i] = Some(d),
            Ok(Done::Receiver(i, Ok(d))) => recv_done[i] = Some(d),
            Ok(Done::Sender(i, Err(e))) => report.errors.push(format!("sender {i}: {e}")),
            Ok(Done::Receiver(i, Err(e))) => report.errors.push(format!("receiver {i} (daemon {i}): {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                report.timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if !report.errors.is_empty() {
            break;
        }
        pending -= 1;
    }
    if show_progress {
        eprint!("\r\x1b[K");
    }
    stop.store(true, Ordering::Relaxed);
    let cpu_after = spawned.as_ref().and_then(LocalCluster::cpu_seconds);
    let client_cpu_after = process_cpu_seconds("self");

    report.sent = sent_done.iter().flatten().map(|s| s.sent).sum();
    for s in sent_done.iter().flatten() {
        report.undecipherable += s.undecipherable;
        if report.first_undecipherable.is_none() {
            report.first_undecipherable.clone_from(&s.first_undecipherable);
        }
    }
    report.delivered = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
    let first = sent_done.iter().flatten().map(|s| s.first_ns).min().unwrap_or(0);
    let last = recv_done.iter().flatten().map(|r| r.last_ns).max().unwrap_or(0);
    report.elapsed_s = last.saturating_sub(first) as f64 / 1e9;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).unwrap_or_else(|_| unreachable!());
    for r in recv_done.iter().flatten() {
        let _ = hist.add(&r.hist);
        report.fifo_violations += r.fifo_violations;
        report.bad_payloads += r.bad_payloads;
        report.undecipherable += r.undecipherable;
        report.flushes += r.flushes;
        if report.first_undecipherable.is_none() {
            report.first_undecipherable.clone_from(&r.first_undecipherable);
        }
        if report.first_violation.is_none() {
            report.first_violation.clone_from(&r.first_violation);
        }
        if r.views > 0 {
            report.errors.push(format!("the group's membership changed {} time(s) during the run", r.views));
        }
    }
    let per_msg = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if report.sent > 0 => {
            Some(((b - a) * 1e6 / report.sent as f64 * 10.0).round() / 10.0)
        }
        _ => None,
    };
    report.daemon_cpu_us_per_msg = per_msg(cpu_before, cpu_after);
    report.client_cpu_us_per_msg = per_msg(client_cpu_before, client_cpu_after);
    if let Some(path) = &args.histogram {
        if let Err(e) = write_histogram(path, &hist) {
            report
                .errors
                .push(format!("cannot write the histogram to {} (`--histogram`): {e}", path.display()));
        }
    }
    report.p50_us = us(&hist, 0.5);
    report.p99_us = us(&hist, 0.99);
    report.p999_us = us(&hist, 0.999);
    report.max_us = us(&hist, 1.0);
    if args.service.total() && recv_done.iter().all(Option::is_some) {
        let hashes: Vec<u64> = recv_done.iter().flatten().map(|r| r.order_hash).collect();
        report.total_order = Some(hashes.windows(2).all(|w| w[0] == w[1]));
        if report.total_order == Some(false) && report.first_violation.is_none() {
            report.first_violation =
                Some(format!("receivers delivered different sequences (hashes {hashes:x?})"));
        }
    }
    report
}

fn print_report(args: &FloodArgs, r: &Report) {
    let mbytes = r.msgs_per_sec() * args.size as f64 / 1e6;
    let spawned = args.config.is_none();
    if args.json {
        let v = serde_json::json!({
            "msgs_per_sec": r.msgs_per_sec().round(),
            "mbytes_per_sec": (mbytes * 1000.0).round() / 1000.0,
            "p50_us": r.p50_us,
            "p99_us": r.p99_us,
            "p999_us": r.p999_us,
            "max_us": r.max_us,
            "delivered": r.delivered,
            "expected": r.expected,
            "sent": r.sent,
            "messages": args.messages,
            "size": args.size,
            "service": args.service.service().name(),
            "senders": args.senders,
            "receivers": r.daemons,
            "daemons": r.daemons,
            "spawned": spawned,
            "accelerated": spawned.then_some(!args.no_accelerated),
            "packing": spawned.then_some(!args.no_packing),
            "backend": spawned.then_some(args.backend.as_str()),
            "mode": args.mode.mode().name(),
            "remote_tls": args.remote_tls || args.connect.remote(),
            "rate": args.rate,
            "elapsed_s": r.elapsed_s,
            "daemon_cpu_us_per_msg": r.daemon_cpu_us_per_msg,
            "client_cpu_us_per_msg": r.client_cpu_us_per_msg,
            "order_ok": r.order_ok(),
            "fifo_violations": r.fifo_violations,
            "bad_payloads": r.bad_payloads,
            "undecipherable": r.undecipherable,
            "first_undecipherable": r.first_undecipherable,
            "flushes": r.flushes,
            "total_order_ok": r.total_order,
            "first_violation": r.first_violation,
            "timed_out": r.timed_out,
            "errors": r.errors,
            "ok": r.ok(),
        });
        println!("{v}");
        return;
    }
    let mut out = String::new();
    let setup = if spawned {
        format!(
            "{} spawned daemons ({} backend), accelerated {}, packing {}",
            r.daemons,
            args.backend,
            if args.no_accelerated { "off" } else { "on" },
            if args.no_packing { "off" } else { "on" }
        )
    } else {
        format!("{} daemons of {}", r.daemons, args.config.as_deref().unwrap_or(Path::new("?")).display())
    };
    let pacing =
        args.rate.map_or_else(|| "as fast as possible".to_string(), |r| format!("paced at {r} msgs/s"));
    let clients = if args.remote_tls || args.connect.remote() { "TCP+TLS clients" } else { "local clients" };
    let _ = writeln!(
        out,
        "flood: {} x {} B {} to group {:?} (mode {}, {clients}), {} sender(s), {} receiver(s), {}, {}",
        args.messages,
        args.size,
        args.service.service().name(),
        args.group,
        args.mode.mode(),
        args.senders,
        r.daemons,
        setup,
        pacing
    );
    let _ = writeln!(
        out,
        "  throughput  {:.0} msgs/s, {:.2} MB/s of payload ({} sent, {:.3} s from first send to last delivery)",
        r.msgs_per_sec(),
        mbytes,
        r.sent,
        r.elapsed_s
    );
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} us"));
    let _ = writeln!(
        out,
        "  latency     p50 {}, p99 {}, p99.9 {}, max {} (send to delivery, every receiver)",
        f(r.p50_us),
        f(r.p99_us),
        f(r.p999_us),
        f(r.max_us)
    );
    let loss = if r.delivered == r.expected {
        "no loss".to_string()
    } else {
        format!("SHORT by {}", r.expected.saturating_sub(r.delivered))
    };
    let _ = writeln!(out, "  delivered   {} of {} ({loss})", r.delivered, r.expected);
    if let Some(c) = r.daemon_cpu_us_per_msg {
        let _ =
            writeln!(out, "  daemon CPU  {c:.1} us per message (user + system, all {} daemons)", r.daemons);
    }
    if let Some(c) = r.client_cpu_us_per_msg {
        let _ = writeln!(out, "  client CPU  {c:.1} us per message (user + system, every flood client)");
    }
    let fifo = if !args.service.fifo() {
        "per-sender order not promised by this service".to_string()
    } else if r.fifo_violations == 0 {
        "per-sender FIFO ok".to_string()
    } else {
        format!("per-sender FIFO VIOLATED {} time(s)", r.fifo_violations)
    };
    let total = match r.total_order {
        Some(true) => format!("; same total order at all {} receivers", r.daemons),
        Some(false) => "; receivers DISAGREE on the total order".to_string(),
        None if args.service.total() => {
            "; total order not compared (not every receiver finished)".to_string()
        }
        None => String::new(),
    };
    let _ = writeln!(out, "  order       {fifo}{total}");
    if r.bad_payloads > 0 {
        let _ = writeln!(out, "  payloads    {} malformed", r.bad_payloads);
    }
    if r.undecipherable > 0 {
        let first = r.first_undecipherable.as_deref().unwrap_or("?");
        let _ =
            writeln!(out, "  keys        {} message(s) UNDECIPHERABLE (first: {first})", r.undecipherable);
    }
    if r.flushes > 0 {
        let _ = writeln!(out, "  flushes     {} during the run", r.flushes);
    }
    if let Some(v) = &r.first_violation {
        let _ = writeln!(out, "  first violation: {v}");
    }
    if r.timed_out {
        let _ = writeln!(out, "  TIMED OUT after {} s (--timeout)", args.timeout_secs());
    }
    for e in &r.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    let _ = writeln!(out, "  result      {}", if r.ok() { "ok" } else { "FAILED" });
    print!("{out}");
}
