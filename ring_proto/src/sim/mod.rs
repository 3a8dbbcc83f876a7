//! The deterministic simulator: the judge of every protocol change.
//!
//! A run is a pure function of its [`SimConfig`] (which holds the seed):
//! N daemon cores ([`Server`]: node, client groups, client sessions, the
//! same object the daemon runtime drives) on virtual time, a seeded
//! [`NetConfig`] network model (loss, duplication, reordering, variable
//! delay), a seeded workload (several senders, sizes from 1 B to 64 KiB,
//! agreed and safe) and, optionally, a seeded fault schedule (partitions,
//! merges, crashes, restarts, bursty and asymmetric loss, one-way
//! reachability). Each daemon has one simulated client: it connects, joins
//! the open group [`SIM_GROUP`] and sends the workload as client protocol
//! `Multicast` frames, so a daemon-level bug replays here bit for bit.
//! After the run the checker verifies the ordering and Extended Virtual
//! Synchrony invariants over every message the nodes ordered (the
//! workload and the groups layer's own: joins, state exchanges); a failing
//! seed replays bit for bit.
//!
//! ```text
//!  workload ──Multicast──► Server i ──poll_transmit──► Network (loss/dup/delay, ──► Server j
//!  faults ──crash/restart──┘ │ poll_observed: Submitted,   partitions, one-way)
//!                            ▼               Node events
//!                         Log per incarnation ──► check (ordering, EVS, liveness)
//!                                             └─► JSON-lines trace (optional)
//! ```
//!
//! A daemon's outputs are taken as a runtime takes them: client frames
//! (discarded: the checks read the node's events), events, the persist gate
//! (the ring sequence asked for is "written" at once and survives a crash,
//! like the state file), then datagrams.

mod check;
mod faults;
mod net;
mod trace;

pub use faults::FaultKinds;
pub use net::NetConfig;
pub use trace::TraceEvent;

use crate::groups::{Body, ClientId, GroupMsg};
use crate::ring::{Config, ConfigKind, Dest, Event};
use crate::security::{KeyId, LinkMode, SecurityConfig};
use crate::server::{Handled, Observed, Server, ServerConfig, ServerEvent};
use crate::wire::client::{ClientFrame, Multicast};
use crate::wire::{Groups, MsgId, NodeId, RingId, Service};
use crate::{Incarnation, Node, Phase, Time};
use bytes::Bytes;
use check::{Entry, Log};
use faults::{Fault, Kind, Lasting};
use net::Network;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringfence_crypto::identity::SecretIdentity;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Write;
use std::time::Duration;

/// The seeded workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// How many daemons send (the first ones).
    pub senders: usize,
    /// Messages each sender submits.
    pub messages_per_sender: u32,
    /// Largest payload; sizes are drawn from 1 B up to this, mostly small.
    pub max_size: usize,
    /// Fraction of messages sent `safe` (the rest `agreed`).
    pub safe_fraction: f64,
    /// Submissions are spread over this much virtual time.
    pub span: Duration,
    /// If set, every payload has exactly this size.
    pub fixed_size: Option<usize>,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            senders: 3,
            messages_per_sender: 200,
            max_size: 64 * 1024,
            safe_fraction: 0.3,
            span: Duration::from_millis(50),
            fixed_size: None,
        }
    }
}

/// Everything a run depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The seed; all randomness derives from it.
    pub seed: u64,
    /// Number of daemons.
    pub nodes: usize,
    /// The ring configuration every daemon uses.
    pub ring: Config,
    /// The network model.
    pub net: NetConfig,
    /// The workload.
    pub workload: Workload,
    /// Fault kinds; none means one fixed ring for the whole run.
    pub faults: FaultKinds,
    /// Number of faults drawn (when `faults` is not empty).
    pub fault_count: usize,
    /// Faults happen within this span from the start.
    pub fault_span: Duration,
    /// Every fault heals, and the network stops losing datagrams, at this
    /// virtual time.
    pub heal_at: Duration,
    /// With faults: live daemons must all be in one ring this long after
    /// the heal.
    pub converge_within: Duration,
    /// A run that has not finished by this virtual time fails.
    pub time_limit: Duration,
    /// Link security and key agreement (runs with faults only; `None`:
    /// plain datagrams without the outer layer).
    pub security: Option<LinkMode>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            nodes: 3,
            ring: Config::default(),
            net: NetConfig::default(),
            workload: Workload::default(),
            faults: FaultKinds::default(),
            fault_count: 6,
            fault_span: Duration::from_millis(1500),
            heal_at: Duration::from_millis(200),
            converge_within: Duration::from_secs(15),
            time_limit: Duration::from_secs(120),
            security: None,
        }
    }
}

impl SimConfig {
    /// A run with every fault kind, for `nodes` daemons.
    pub fn with_faults(seed: u64, nodes: usize) -> Self {
        Self {
            seed,
            nodes,
            faults: FaultKinds::ALL,
            heal_at: Duration::from_millis(1600),
            workload: Workload {
                senders: nodes,
                messages_per_sender: 60,
                span: Duration::from_millis(1500),
                ..Workload::default()
            },
            ..Self::default()
        }
    }
}

/// A broken invariant. Fields name the daemon that saw it and the message.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two daemons delivered different messages at the same position (fixed ring).
    Order { node: NodeId, index: usize, expected: Option<MsgId>, got: Option<MsgId> },
    /// Two daemons delivered two messages in different orders.
    Reordered { a: NodeId, b: NodeId, first: MsgId, second: MsgId },
    /// A daemon delivered a message twice.
    Duplicate { node: NodeId, id: MsgId },
    /// A daemon delivered an origin's messages out of order (or, on a fixed
    /// ring, skipped one).
    Fifo { node: NodeId, id: MsgId, expected_seq: u64 },
    /// A submitted message was not delivered by the end of the run.
    Lost { node: NodeId, id: MsgId },
    /// A delivered message's bytes or service differ from what was sent.
    Corrupt { node: NodeId, id: MsgId },
    /// A safe message was delivered in a regular configuration before every
    /// member held its packet.
    UnsafeDelivery { node: NodeId, id: MsgId, missing_at: NodeId },
    /// A message was delivered that nobody submitted.
    Phantom { node: NodeId, id: MsgId },
    /// Two daemons installed one ring id with different members.
    RingConflict { ring: RingId },
    /// Two members of a ring hold different server keys for one epoch.
    KeyMismatch { ring: RingId, epoch: u64, a: NodeId, b: NodeId },
    /// A daemon holds the server key of a ring it is not a member of.
    KeyOutsider { node: NodeId, ring: RingId },
    /// A workload payload crossed the simulated wire in clear (`encrypt`).
    PlaintextOnWire { node: NodeId },
    /// A daemon of the converged ring never got its server key.
    NoKey { node: NodeId },
    /// Two daemons that installed the same configuration and successor
    /// delivered different messages in it.
    SetMismatch { a: NodeId, b: NodeId, ring: RingId, kind: ConfigKind },
    /// A message was delivered outside its ring's configuration (before the
    /// configuration, or in an unrelated one).
    WrongConfiguration { node: NodeId, id: MsgId },
    /// A daemon's configurations break EVS structure (a transitional
    /// configuration not between the regular one it came from and a regular
    /// one containing it, or not the same set at every daemon moving
    /// together; an incarnation starting with a transitional one).
    Structure { node: NodeId, ring: RingId, what: &'static str },
    /// Two daemons report a message ordered at different places.
    OrderedTwice { id: MsgId },
    /// A daemon did not deliver its own message and did not crash.
    SelfDelivery { node: NodeId, id: MsgId },
    /// After the heal, the live daemons did not install one common ring in time.
    NoConvergence { at: Time },
    /// The run hit the time limit before everything was delivered.
    Stalled { at: Time },
    /// During a lasting fault a probe was not delivered in time by a daemon
    /// that should have (its sender always; with a pause or stalls, every
    /// running daemon).
    NotLive { node: NodeId, id: MsgId, within: Duration },
    /// A membership change under scheduling stalls alone (no daemon
    /// failed, no datagram was lost).
    SpuriousChange { node: NodeId, ring: RingId },
    /// During a lasting cut or deaf daemon, after the ring settled, a daemon
    /// kept installing rings (see `CHURN_BASE`): the membership did not
    /// settle on the links that work both ways.
    Churn { node: NodeId, rings: u32 },
    /// A daemon refused its client's multicast, or dropped a message of its
    /// groups layer or a frame for its client (`what` says which and why).
    Refused { node: NodeId, what: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Order { node, index, expected, got } => {
                write!(f, "order: node {node} delivery #{index} is {got:?}, node 0 delivered {expected:?}")
            }
            Self::Reordered { a, b, first, second } => {
                write!(f, "order: node {a} delivered {first:?} before {second:?}, node {b} the other way")
            }
            Self::Duplicate { node, id } => write!(f, "duplicate: node {node} delivered {id:?} twice"),
            Self::Fifo { node, id, expected_seq } => write!(
                f,
                "fifo/gap: node {node} delivered {id:?}, expected seq {expected_seq} from that origin"
            ),
            Self::Lost { node, id } => write!(f, "lost: node {node} never delivered {id:?}"),
            Self::Corrupt { node, id } => {
                write!(f, "corrupt: node {node} delivered {id:?} with wrong bytes or service")
            }
            Self::UnsafeDelivery { node, id, missing_at } => {
                write!(f, "unsafe: node {node} delivered safe {id:?} while node {missing_at} lacked it")
            }
            Self::Phantom { node, id } => write!(f, "phantom: node {node} delivered {id:?}, never submitted"),
            Self::RingConflict { ring } => write!(f, "ring {ring} installed with different members"),
            Self::SetMismatch { a, b, ring, kind } => write!(
                f,
                "evs: nodes {a} and {b} delivered different messages in {kind:?} configuration {ring}"
            ),
            Self::WrongConfiguration { node, id } => {
                write!(f, "evs: node {node} delivered {id:?} outside its configuration")
            }
            Self::Structure { node, ring, what } => {
                write!(f, "evs structure: node {node} at configuration {ring}: {what}")
            }
            Self::OrderedTwice { id } => write!(f, "evs: {id:?} reported at two places in the order"),
            Self::SelfDelivery { node, id } => write!(f, "evs: node {node} never delivered its own {id:?}"),
            Self::NoConvergence { at } => write!(f, "liveness: no common ring by {at}"),
            Self::Stalled { at } => write!(f, "stalled: not everything delivered by {at}"),
            Self::NotLive { node, id, within } => {
                write!(
                    f,
                    "liveness: node {node} did not deliver {id:?} within {within:?} during a lasting fault"
                )
            }
            Self::SpuriousChange { node, ring } => {
                write!(f, "liveness: node {node} installed ring {ring} under scheduling stalls alone")
            }
            Self::Churn { node, rings } => write!(
                f,
                "churn: node {node} installed {rings} rings while a lasting cut held, after the ring settled"
            ),
            Self::KeyMismatch { ring, epoch, a, b } => {
                write!(
                    f,
                    "keys: nodes {a} and {b} hold different server keys for ring {ring} epoch {epoch:#x}"
                )
            }
            Self::KeyOutsider { node, ring } => {
                write!(f, "keys: node {node} holds the server key of ring {ring}, which it is not in")
            }
            Self::PlaintextOnWire { node } => {
                write!(f, "keys: node {node} sent a workload payload in clear with link_security = encrypt")
            }
            Self::NoKey { node } => write!(f, "keys: node {node} has no server key for the converged ring"),
            Self::Refused { node, what } => write!(f, "daemon: node {node} {what}"),
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Broken invariants (empty when the run is correct).
    pub violations: Vec<Violation>,
    /// Messages the daemons' nodes took for ordering: the clients'
    /// multicasts and the groups layer's own (joins, state exchanges).
    pub submitted: u64,
    /// Client multicasts among them (the workload and the probes).
    pub multicasts: u64,
    /// Deliveries over all daemons.
    pub deliveries: u64,
    /// Virtual time at the end.
    pub end: Time,
    /// Client payload bytes of the workload's multicasts (without the
    /// groups layer's header, as a client counts them).
    pub payload_bytes: u64,
    /// Datagrams sent (a send to all counts once, as with IP multicast).
    pub datagrams: u64,
    /// Bytes sent, including 28 bytes of IP and UDP header per datagram.
    pub wire_bytes: u64,
    /// Faults applied.
    pub faults: usize,
    /// Regular configurations installed, over all daemons.
    pub configurations: u64,
    /// Per-daemon counters (of the last incarnation).
    pub stats: Vec<crate::ring::Stats>,
}

impl Report {
    /// Payload bytes over wire bytes.
    pub fn wire_efficiency(&self) -> f64 {
        if self.wire_bytes == 0 { 0.0 } else { self.payload_bytes as f64 / self.wire_bytes as f64 }
    }
}

/// What a message should look like when delivered.
pub(crate) struct Sent {
    service: Service,
    digest: u64,
    len: usize,
}

fn digest(b: &[u8]) -> u64 {
    // FNV-1a: cheap and good enough to catch corruption in the simulator.
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

fn payload(rng: &mut ChaCha8Rng, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    // Every payload long enough carries a marker the wire check looks for.
    if len >= MARKER.len() {
        v[..MARKER.len()].copy_from_slice(MARKER);
    }
    Bytes::from(v)
}

/// What a workload payload starts with; `encrypt` runs check that it never
/// crosses the simulated wire.
const MARKER: &[u8; 16] = b"RFSIM-PLAINTEXT!";

fn contains_marker(bytes: &[u8]) -> bool {
    bytes.windows(MARKER.len()).any(|w| w == MARKER)
}

/// The identity of simulated daemon `id` (from the seed).
fn sim_identity(seed: u64, id: NodeId) -> SecretIdentity {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6964_0000 ^ (u64::from(id.0) << 40));
    let mut b = [0u8; 32];
    rng.fill(&mut b);
    SecretIdentity::from_bytes(&b)
}

/// A daemon of the simulation, with link security when the run asks for it.
fn make_node(
    cfg: &SimConfig,
    id: NodeId,
    now: Time,
    inc: Incarnation,
    incarnation: u32,
) -> Result<Node, crate::ring::ConfigError> {
    let Some(mode) = cfg.security else { return Node::new(cfg.ring.clone(), id, now, inc) };
    let peers = (0..cfg.nodes)
        .map(|i| {
            let n = NodeId(i as u16);
            (n, sim_identity(cfg.seed, n).public())
        })
        .collect();
    let mut seed = [0u8; 32];
    ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed ^ (u64::from(id.0) << 32) ^ (u64::from(incarnation) << 48))
        .fill(&mut seed);
    let sec = SecurityConfig {
        mode,
        identity: Some(std::sync::Arc::new(sim_identity(cfg.seed, id))),
        peers,
        aead: ringfence_crypto::aead::Backend::Ring,
        refresh_after: Some(Duration::from_millis(700)),
        refresh_bytes: Some(2 << 20),
        seed,
        incarnation,
        policy_digest: crate::security::policy::Policy::default().digest(),
    };
    Node::with_security(cfg.ring.clone(), id, now, inc, sec)
}

/// Daemon `node`'s core, as the simulator drives it: every event observed
/// (the checks read them), the groups layer's deadlines asked at every
/// step (exact timing), ring sequences up to `persisted` durable already.
fn make_server(node: Node, persisted: u64) -> Server {
    let mut cfg = ServerConfig::new(format!("sim{}", node.id().0));
    cfg.persisted_ring_seq = persisted;
    cfg.groups_check = Duration::ZERO;
    cfg.observe = true;
    Server::new(node, cfg)
}

/// The open group every simulated client joins and sends the workload to.
pub const SIM_GROUP: &[u8] = b"sim";

/// The name each daemon's simulated client connects with (its private
/// name is `#client#<daemon>`).
pub const SIM_CLIENT: &str = "client";

/// Each daemon's one simulated client.
const CLIENT: ClientId = ClientId(1);

/// Whether `ring_payload` (what the groups layer gave the ring) is a client
/// multicast of `payload`.
fn carries(ring_payload: &Bytes, payload: &[u8]) -> bool {
    matches!(GroupMsg::decode(ring_payload), Ok(GroupMsg { body: Body::Data { payload: p, .. }, .. }) if p == payload)
}

fn draw_size(rng: &mut ChaCha8Rng, w: &Workload, limit: usize) -> usize {
    if let Some(s) = w.fixed_size {
        return s.min(limit);
    }
    let max = w.max_size.max(1);
    let cap = match rng.random_range(0..100) {
        0..60 => 200,
        60..85 => 1400,
        85..95 => 8192,
        _ => max,
    };
    rng.random_range(1..=cap.min(max)).min(limit)
}

/// One scheduled submission.
struct Planned {
    at: Time,
    node: usize,
    service: Service,
    payload: Bytes,
}

/// What a client multicast is for, kept until its daemon's node takes it
/// (at once, or after backpressure held it).
#[derive(Debug)]
struct Awaiting {
    /// The client payload.
    payload: Bytes,
    /// When the client sent it.
    at: Time,
    purpose: Purpose,
}

#[derive(Debug)]
enum Purpose {
    /// The seeded workload.
    Workload,
    /// A probe after convergence: every live daemon must deliver it.
    Probe,
    /// A liveness probe: the logs in `expect` must deliver it within
    /// `within` of when it was sent.
    Live { within: Duration, expect: Vec<usize> },
}

/// A simulation in progress. Most callers want [`run`].
pub struct Sim<'t> {
    cfg: SimConfig,
    now: Time,
    /// The daemons; `None` while crashed.
    daemons: Vec<Option<Server>>,
    /// Per daemon: its client's multicast not yet taken by the node.
    awaiting: Vec<Option<Awaiting>>,
    /// The destination list of every multicast ([`SIM_GROUP`]).
    group: Groups,
    /// Client multicasts the nodes took.
    multicasts: u64,
    /// Index into `logs` of each daemon's current incarnation.
    current: Vec<usize>,
    /// Ring sequence each daemon persisted, as its state file would hold
    /// it (survives crashes).
    persisted: Vec<u64>,
    logs: Vec<Log>,
    net: Network,
    fault_rng: ChaCha8Rng,
    load_rng: ChaCha8Rng,
    plan: Vec<Planned>,
    next_plan: usize,
    /// Backpressure: the workload submits nothing before this time.
    retry_at: Option<Time>,
    fault_plan: Vec<(Time, Kind)>,
    next_fault: usize,
    faults_applied: usize,
    healed: bool,
    converged_at: Option<Time>,
    /// A common ring seen after the heal, and since when.
    candidate: Option<(RingId, Time)>,
    probes: Vec<MsgId>,
    sent: HashMap<MsgId, Sent>,
    violations: Vec<Violation>,
    /// Server keys seen: (ring, epoch) -> the first holder and its link key id.
    keys: BTreeMap<(RingId, u64), (NodeId, KeyId)>,
    /// Server keys handed to the owners (`Event::ServerKey`): first announcer and key.
    announced: BTreeMap<(RingId, u64), (NodeId, ringfence_crypto::aead::Key32)>,
    datagrams: u64,
    wire_bytes: u64,
    payload_bytes: u64,
    /// The second phase's fault, from `lasting_at` to `quiet_at`.
    lasting: Option<Lasting>,
    lasting_at: Time,
    quiet_at: Time,
    lasting_started: bool,
    /// With stalls: the ring all live daemons were in when they began.
    stall_ring: Option<RingId>,
    /// With a lasting cut or deaf daemon: from when rings installed count as
    /// churn, and how many each daemon installed since.
    churn_from: Option<Time>,
    churn_max: u32,
    churned: Vec<u32>,
    /// Pauses to apply: (start, daemon, length), in time order.
    pause_plan: Vec<(Time, usize, Duration)>,
    next_pause: usize,
    /// A paused daemon runs nothing until then; its datagrams wait.
    paused_until: Vec<Option<Time>>,
    held: Vec<VecDeque<Bytes>>,
    next_live_probe: Option<Time>,
    live_probes: Vec<LiveProbe>,
    live_ids: HashSet<MsgId>,
    /// When each current log delivered each liveness probe.
    live_delivered: HashMap<(usize, MsgId), Time>,
    trace: Option<&'t mut dyn Write>,
    /// Each daemon's last membership state written to the trace.
    traced_state: Vec<String>,
}

/// A message submitted during a lasting fault, and who must deliver it by
/// when.
#[derive(Debug)]
struct LiveProbe {
    id: MsgId,
    deadline: Time,
    within: Duration,
    /// Logs (current incarnations when it was sent) that must deliver it.
    expect: Vec<usize>,
}

/// The lasting fault starts this long after the heal, once the ring settled.
const LASTING_AFTER: Duration = Duration::from_millis(1500);
/// Liveness probes are sent this often during a lasting fault.
const LIVE_PROBE_EVERY: Duration = Duration::from_millis(250);
/// Rings a daemon may install during a lasting cut once the ring settled:
/// this many, and one more per second of the cut left (the end of the cut
/// left out is let back after a quarantine that doubles up to 3.2 s, and
/// left out again). Re-forming the ring at every beacon of a daemon that
/// cannot hear us (every 0.4 s) is churn.
const CHURN_BASE: u32 = 2;

/// Most datagrams a paused daemon's socket holds.
const HELD_MAX: usize = 4096;

impl fmt::Debug for Sim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim").field("seed", &self.cfg.seed).field("now", &self.now).finish_non_exhaustive()
    }
}

impl<'t> Sim<'t> {
    /// Builds the daemons, the network, the workload and the fault schedule.
    pub fn new(cfg: SimConfig, trace: Option<&'t mut dyn Write>) -> Result<Self, crate::ring::ConfigError> {
        let ids: Vec<NodeId> = (0..cfg.nodes).map(|i| NodeId(i as u16)).collect();
        let faulty = !cfg.faults.is_empty();
        let nodes = if faulty {
            ids.iter()
                .map(|&id| {
                    let inc = Incarnation { ring_seq: 0, first_msg_seq: 1 };
                    make_node(&cfg, id, Time::ZERO, inc, 0)
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            let ring_id = RingId { seq: 1, rep: ids[0] };
            ids.iter()
                .map(|&id| Node::with_ring(cfg.ring.clone(), id, &ids, ring_id, Time::ZERO))
                .collect::<Result<Vec<_>, _>>()?
        };
        let daemons: Vec<Option<Server>> = nodes.into_iter().map(|n| Some(make_server(n, 0))).collect();
        // What `Welcome` announces: the ring's largest message less the
        // groups layer's header (the CLI keeps `max_size` within the first).
        let limit = daemons
            .iter()
            .flatten()
            .next()
            .map_or(usize::MAX, |s| s.config().client_limits.max_payload as usize);
        let net_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6e65_7477_6f72_6b00);
        let mut load_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x776f_726b_6c6f_6164);
        let mut fault_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6661_756c_7473_0000);
        let w = &cfg.workload;
        let mut plan = Vec::new();
        for node in 0..w.senders.min(cfg.nodes) {
            for _ in 0..w.messages_per_sender {
                let at = Time::from_nanos(load_rng.random_range(0..=w.span.as_nanos() as u64));
                let service =
                    if load_rng.random_bool(w.safe_fraction) { Service::Safe } else { Service::Agreed };
                let len = draw_size(&mut load_rng, w, limit);
                let payload = payload(&mut load_rng, len);
                plan.push(Planned { at, node, service, payload });
            }
        }
        plan.sort_by_key(|p| p.at);
        let fault_plan = if faulty {
            faults::schedule(&mut fault_rng, cfg.faults, cfg.fault_count, cfg.fault_span.min(cfg.heal_at))
                .into_iter()
                .map(|(d, k)| (Time::ZERO + d, k))
                .collect()
        } else {
            Vec::new()
        };
        let net = Network::new(cfg.net.clone(), net_rng, cfg.nodes);
        let logs = (0..cfg.nodes).map(|i| Log::new(NodeId(i as u16), 0)).collect();
        // Its own stream, so that adding it changed no earlier seed.
        let mut lasting_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6c61_7374_696e_6700);
        let lasting = if faulty { faults::lasting(&mut lasting_rng, cfg.faults, cfg.nodes) } else { None };
        let heal = Time::ZERO + cfg.heal_at;
        let lasting_at = heal + LASTING_AFTER;
        let quiet_at = lasting.as_ref().map_or(heal, |l| lasting_at + l.len());
        let pause_plan = match &lasting {
            Some(Lasting::Pause { node, len }) => vec![(lasting_at, *node, *len)],
            Some(Lasting::Stall { spells, .. }) => {
                spells.iter().map(|&(node, off, len)| (lasting_at + off, node, len)).collect()
            }
            _ => Vec::new(),
        };
        let cfg_nodes = cfg.nodes;
        let mut sim = Self {
            current: (0..cfg.nodes).collect(),
            persisted: vec![0; cfg.nodes],
            logs,
            cfg,
            now: Time::ZERO,
            awaiting: (0..cfg_nodes).map(|_| None).collect(),
            daemons,
            group: Groups::encode(&[SIM_GROUP]).unwrap_or_default(),
            multicasts: 0,
            net,
            fault_rng,
            load_rng,
            plan,
            next_plan: 0,
            retry_at: None,
            fault_plan,
            next_fault: 0,
            faults_applied: 0,
            healed: false,
            converged_at: None,
            candidate: None,
            probes: Vec::new(),
            sent: HashMap::new(),
            violations: Vec::new(),
            keys: BTreeMap::new(),
            announced: BTreeMap::new(),
            datagrams: 0,
            wire_bytes: 0,
            payload_bytes: 0,
            lasting,
            lasting_at,
            quiet_at,
            lasting_started: false,
            stall_ring: None,
            churn_from: None,
            churn_max: CHURN_BASE,
            churned: vec![0; cfg_nodes],
            pause_plan,
            next_pause: 0,
            paused_until: vec![None; cfg_nodes],
            held: vec![VecDeque::new(); cfg_nodes],
            next_live_probe: None,
            live_probes: Vec::new(),
            live_ids: HashSet::new(),
            live_delivered: HashMap::new(),
            trace,
            traced_state: vec![String::new(); cfg_nodes],
        };
        for i in 0..sim.daemons.len() {
            sim.connect_client(i);
        }
        Ok(sim)
    }

    fn faulty(&self) -> bool {
        !self.cfg.faults.is_empty()
    }

    /// Runs to completion or the time limit, then checks the invariants.
    pub fn run(mut self) -> Report {
        let limit = Time::ZERO + self.cfg.time_limit;
        let heal = Time::ZERO + self.cfg.heal_at;
        loop {
            if self.done() {
                break;
            }
            let Some(next) = self.next_time() else { break };
            if next > limit {
                self.violations.push(Violation::Stalled { at: self.now });
                break;
            }
            if self.faulty()
                && self.healed
                && self.converged_at.is_none()
                && next > self.quiet_at.max(heal) + self.cfg.converge_within
            {
                self.violations.push(Violation::NoConvergence { at: self.now });
                break;
            }
            self.now = self.now.max(next);
            if self.now >= heal && !self.healed {
                self.note_fault(|| "heal".into());
                self.healed = true;
                self.net.heal();
            }
            self.apply_faults();
            self.apply_lasting();
            self.step();
            if self.faulty() && self.healed && self.now >= self.quiet_at && self.converged_at.is_none() {
                // One common ring, unchanged for two token timeouts: a ring
                // whose token was lost just before the heal is not it.
                match (self.converged(), self.candidate) {
                    (Some(r), Some((c, since))) if r == c => {
                        if self.now >= since + 2 * self.cfg.ring.token_timeout {
                            self.converged_at = Some(self.now);
                            self.send_probes();
                        }
                    }
                    (Some(r), _) => self.candidate = Some((r, self.now)),
                    (None, _) => self.candidate = None,
                }
            }
        }
        self.finish()
    }

    fn next_time(&mut self) -> Option<Time> {
        let mut t = self.net.next_time();
        let mut consider = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Time| t.min(x)));
            }
        };
        let now = self.now;
        for (i, s) in self.daemons.iter_mut().enumerate() {
            if self.paused_until[i].is_none() {
                consider(s.as_mut().and_then(|s| s.poll_timeout(now)));
            }
        }
        consider(self.plan.get(self.next_plan).map(|p| self.retry_at.map_or(p.at, |r| r.max(p.at))));
        consider(self.fault_plan.get(self.next_fault).map(|f| f.0));
        if !self.healed && self.faulty() {
            consider(Some(Time::ZERO + self.cfg.heal_at));
        }
        if self.lasting.is_some() {
            if !self.lasting_started {
                consider(Some(self.lasting_at));
            } else if self.now < self.quiet_at {
                consider(Some(self.quiet_at));
            }
        }
        consider(self.pause_plan.get(self.next_pause).map(|p| p.0));
        consider(self.paused_until.iter().flatten().copied().min());
        consider(self.next_live_probe);
        t
    }

    /// Writes a submit line: who sent what, in which ring, with its digest.
    fn trace_submit(&mut self, i: usize, id: MsgId, service: Service, payload: &[u8]) {
        let ring = self.daemons[i].as_ref().and_then(|s| s.node().ring().map(|r| r.0));
        if let Some(w) = self.trace.as_mut() {
            let ev = TraceEvent::Submit {
                node: NodeId(i as u16),
                t_ns: self.now.as_nanos(),
                origin: id.origin,
                seq: id.seq,
                service,
                size: payload.len(),
                digest: digest(payload),
                ring,
            };
            let _ = trace::write_line(w, &ev);
        }
    }

    /// Writes one line of the fault schedule to the trace.
    fn note_fault(&mut self, what: impl FnOnce() -> String) {
        if let Some(w) = self.trace.as_mut() {
            let ev = TraceEvent::Fault { t_ns: self.now.as_nanos(), fault: what() };
            let _ = trace::write_line(w, &ev);
        }
    }

    fn alive(&self) -> Vec<bool> {
        self.daemons.iter().map(Option::is_some).collect()
    }

    fn apply_faults(&mut self) {
        while self.fault_plan.get(self.next_fault).is_some_and(|f| f.0 <= self.now) {
            let kind = self.fault_plan[self.next_fault].1;
            self.next_fault += 1;
            let since = self.now - Time::ZERO;
            let alive = self.alive();
            let Some(fault) = faults::realise(&mut self.fault_rng, kind, &alive, since) else { continue };
            self.faults_applied += 1;
            self.note_fault(|| format!("{fault:?}"));
            match fault {
                Fault::Partition(labels) => {
                    for (a, row) in self.net.reachable.iter_mut().enumerate() {
                        for (b, r) in row.iter_mut().enumerate() {
                            *r = labels[a] == labels[b];
                        }
                    }
                }
                Fault::Merge => {
                    for row in &mut self.net.reachable {
                        row.fill(true);
                    }
                }
                Fault::OneWay(a, b) => self.net.reachable[a][b] = false,
                Fault::Loss { links, p, until } => {
                    for (a, b) in links {
                        self.net.burst[a][b] = Some((p, Time::ZERO + until));
                    }
                }
                Fault::Crash(i) => self.crash(i),
                Fault::Restart(i) => self.restart(i),
            }
        }
    }

    /// Starts and ends the lasting fault, pauses and resumes daemons, and
    /// sends the liveness probes.
    fn apply_lasting(&mut self) {
        let now = self.now;
        if !self.lasting_started && self.lasting.is_some() && now >= self.lasting_at {
            self.lasting_started = true;
            let what = format!(
                "lasting {:?}",
                self.lasting.as_ref().map(|l| match l {
                    Lasting::Stall { len, spells } =>
                        format!("stall of every daemon for {len:?}, {} spells", spells.len()),
                    other => format!("{other:?}"),
                })
            );
            self.note_fault(|| what);
            let settle = match &self.lasting {
                Some(Lasting::Cut { from, to, .. }) => {
                    self.net.reachable[*from][*to] = false;
                    Duration::from_secs(2)
                }
                Some(Lasting::Deaf { node, .. }) => {
                    for j in 0..self.daemons.len() {
                        if j != *node {
                            self.net.reachable[j][*node] = false;
                        }
                    }
                    Duration::from_secs(2)
                }
                Some(Lasting::Pause { .. }) => Duration::from_millis(1000),
                Some(Lasting::Stall { .. }) => {
                    self.stall_ring = self.converged();
                    Duration::from_millis(300)
                }
                None => Duration::ZERO,
            };
            self.next_live_probe = Some(now + settle).filter(|t| *t < self.quiet_at);
            if matches!(self.lasting, Some(Lasting::Cut { .. } | Lasting::Deaf { .. })) {
                self.churn_from = Some(now + settle);
                let window = self.quiet_at.saturating_since(now + settle);
                self.churn_max = CHURN_BASE + u32::try_from(window.as_secs()).unwrap_or(u32::MAX);
            }
        }
        if self.lasting_started && now >= self.quiet_at {
            if let Some(Lasting::Cut { from, to, .. }) = self.lasting {
                if !self.net.reachable[from][to] {
                    self.note_fault(|| format!("cut {from}->{to} healed"));
                }
                self.net.reachable[from][to] = true;
            }
            if let Some(Lasting::Deaf { node, .. }) = self.lasting {
                if (0..self.daemons.len()).any(|j| j != node && !self.net.reachable[j][node]) {
                    self.note_fault(|| format!("daemon {node} hears the others again"));
                }
                for j in 0..self.daemons.len() {
                    self.net.reachable[j][node] = true;
                }
            }
            self.next_live_probe = None;
        }
        while let Some(&(at, node, len)) = self.pause_plan.get(self.next_pause).filter(|p| p.0 <= now) {
            self.next_pause += 1;
            if self.daemons[node].is_some() && self.paused_until[node].is_none() {
                self.note_fault(|| format!("pause {node} for {len:?}"));
                self.paused_until[node] = Some(at + len);
            }
        }
        for i in 0..self.daemons.len() {
            if self.paused_until[i].is_some_and(|u| u <= now) {
                self.note_fault(|| format!("resume {i}"));
                self.paused_until[i] = None;
                self.resume(i);
            }
        }
        if let Some(t) = self.next_live_probe.filter(|t| *t <= now) {
            self.next_live_probe = Some(t + LIVE_PROBE_EVERY).filter(|t| *t < self.quiet_at);
            self.send_live_probes();
        }
    }

    /// A paused daemon runs again: its overdue timers first (the worst
    /// order for it), then the datagrams its socket held.
    fn resume(&mut self, i: usize) {
        let now = self.now;
        if let Some(s) = self.daemons[i].as_mut() {
            if s.poll_timeout(now).is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        self.drain(i);
        while let Some(b) = self.held[i].pop_front() {
            if let Some(s) = self.daemons[i].as_mut() {
                s.handle_datagram(now, b);
            }
            self.drain(i);
        }
    }

    /// During a lasting fault every running daemon sends a probe; its
    /// sender must deliver it within a bound, and with a pause or stalls
    /// every running daemon must.
    fn send_live_probes(&mut self) {
        let (within, all) = match self.lasting {
            Some(Lasting::Cut { .. } | Lasting::Deaf { .. }) => (Duration::from_secs(2), false),
            Some(Lasting::Pause { .. }) => (Duration::from_millis(1500), true),
            Some(Lasting::Stall { .. }) => (Duration::from_secs(1), true),
            None => return,
        };
        let running: Vec<usize> = (0..self.daemons.len())
            .filter(|&i| self.daemons[i].is_some() && self.paused_until[i].is_none())
            .collect();
        let expect_all: Vec<usize> = match self.lasting {
            // Stalled daemons are only late, not out.
            Some(Lasting::Stall { .. }) => (0..self.daemons.len())
                .filter(|&i| self.daemons[i].is_some())
                .map(|i| self.current[i])
                .collect(),
            _ => running.iter().map(|&i| self.current[i]).collect(),
        };
        for &i in &running {
            let len = self.load_rng.random_range(1..=200);
            let p = payload(&mut self.load_rng, len);
            let expect = if all { expect_all.clone() } else { vec![self.current[i]] };
            self.multicast(i, Service::Agreed, p, Purpose::Live { within, expect });
        }
    }

    fn crash(&mut self, i: usize) {
        // What it persisted stays in `persisted` (its state file).
        self.daemons[i] = None;
        self.awaiting[i] = None;
        self.logs[self.current[i]].crashed = true;
        if let Some(w) = self.trace.as_mut() {
            let _ = trace::write_line(
                w,
                &TraceEvent::Crash { node: NodeId(i as u16), t_ns: self.now.as_nanos() },
            );
        }
    }

    fn restart(&mut self, i: usize) {
        let incarnation = self.logs[self.current[i]].incarnation + 1;
        let inc =
            Incarnation { ring_seq: self.persisted[i], first_msg_seq: (u64::from(incarnation) << 32) + 1 };
        let Ok(node) = make_node(&self.cfg, NodeId(i as u16), self.now, inc, incarnation) else { return };
        self.daemons[i] = Some(make_server(node, self.persisted[i]));
        self.logs.push(Log::new(NodeId(i as u16), incarnation));
        self.current[i] = self.logs.len() - 1;
        if let Some(w) = self.trace.as_mut() {
            let ev = TraceEvent::Restart { node: NodeId(i as u16), t_ns: self.now.as_nanos(), incarnation };
            let _ = trace::write_line(w, &ev);
        }
        self.connect_client(i);
    }

    /// Daemon `i`'s client connects and joins [`SIM_GROUP`] (at the start,
    /// and after each restart: a client does not outlive its daemon).
    fn connect_client(&mut self, i: usize) {
        let now = self.now;
        let me = NodeId(i as u16);
        let Some(s) = self.daemons[i].as_mut() else { return };
        if let Err(e) =
            s.handle_connect(now, CLIENT, SIM_CLIENT, "sim", true, crate::wire::client::CLIENT_VERSION)
        {
            self.violations.push(Violation::Refused { node: me, what: format!("refused its client: {e}") });
        }
        let join = ClientFrame::Join { group: String::from_utf8_lossy(SIM_GROUP).into_owned() };
        if let Handled::Refused(e) = s.handle_client(now, CLIENT, join) {
            self.violations
                .push(Violation::Refused { node: me, what: format!("refused its client's join: {e}") });
        }
        self.drain(i);
    }

    /// Daemon `i`'s client multicasts `payload` to [`SIM_GROUP`]. False if
    /// the daemon is down or its ring refuses messages for now (the client
    /// waits, as a runtime stops reading it); a multicast the node has not
    /// taken yet is kept in `awaiting` until it does.
    fn multicast(&mut self, i: usize, service: Service, payload: Bytes, purpose: Purpose) -> bool {
        let now = self.now;
        let Some(s) = self.daemons[i].as_mut() else { return false };
        if s.backlogged() {
            return false;
        }
        let m = Multicast {
            service,
            msg_type: 0,
            self_discard: false,
            sealed: false,
            groups: self.group.clone(),
            payload: payload.clone(),
        };
        self.awaiting[i] = Some(Awaiting { payload, at: now, purpose });
        if let Handled::Refused(e) = s.handle_client(now, CLIENT, ClientFrame::Multicast(m)) {
            self.awaiting[i] = None;
            let what = format!("refused its client's multicast: {e}");
            self.violations.push(Violation::Refused { node: NodeId(i as u16), what });
        }
        self.drain(i);
        true
    }

    /// The ring, if all live daemons are operational in one ring made of
    /// exactly them.
    fn converged(&self) -> Option<RingId> {
        let live: Vec<NodeId> = self
            .daemons
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_some())
            .map(|(i, _)| NodeId(i as u16))
            .collect();
        let mut ring = None;
        for n in self.daemons.iter().flatten().map(Server::node) {
            if n.phase() != Phase::Operational {
                return None;
            }
            let (id, members) = n.ring()?;
            if members != live.as_slice() || ring.is_some_and(|r| r != id) {
                return None;
            }
            ring = Some(id);
        }
        ring
    }

    /// After convergence, every live daemon sends a few messages that every
    /// live daemon must deliver (check 8).
    fn send_probes(&mut self) {
        for i in 0..self.daemons.len() {
            for _ in 0..3 {
                let len = self.load_rng.random_range(1..=2000);
                let p = payload(&mut self.load_rng, len);
                self.multicast(i, Service::Agreed, p, Purpose::Probe);
            }
        }
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some((to, bytes)) = self.net.pop_due(now) {
            if self.paused_until[to].is_some() {
                if self.held[to].len() < HELD_MAX {
                    self.held[to].push_back(bytes);
                }
                continue;
            }
            if let Some(s) = self.daemons[to].as_mut() {
                s.handle_datagram(now, bytes);
                self.drain(to);
            }
        }
        for i in 0..self.daemons.len() {
            if self.paused_until[i].is_some() {
                continue;
            }
            let Some(s) = self.daemons[i].as_mut() else { continue };
            if s.poll_timeout(now).is_some_and(|t| t <= now) {
                s.handle_timeout(now);
                self.drain(i);
            }
        }
        if self.retry_at.is_some_and(|t| t > now) {
            return;
        }
        self.retry_at = None;
        while self.plan.get(self.next_plan).is_some_and(|p| p.at <= now) {
            let p = &self.plan[self.next_plan];
            let (node, service, payload) = (p.node, p.service, p.payload.clone());
            if let Some(until) = self.paused_until[node] {
                self.retry_at = Some(until);
                break;
            }
            if self.daemons[node].is_none() {
                self.next_plan += 1; // its sender is down
                continue;
            }
            if self.multicast(node, service, payload, Purpose::Workload) {
                self.next_plan += 1;
            } else {
                // Backpressure: the workload waits a little and tries
                // again (the plan keeps its order).
                self.retry_at = Some(now + Duration::from_millis(1));
                break;
            }
        }
    }

    /// Takes daemon `i`'s outputs as its runtime would (client frames,
    /// events, the persist gate, datagrams) and feeds what it observed to
    /// the checks.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        let Some(s) = self.daemons[i].as_mut() else { return };
        let me = s.node().id();
        while s.poll_client().is_some() {}
        while let Some(ev) = s.poll_event() {
            let what = match ev {
                ServerEvent::Undeliverable { error, .. } => {
                    format!("dropped a frame for its client: {error}")
                }
                ServerEvent::SubmitRefused(e) => format!("dropped a message of its groups layer: {e}"),
                _ => continue,
            };
            self.violations.push(Violation::Refused { node: me, what });
        }
        let mut observed = Vec::new();
        while let Some(o) = s.poll_observed() {
            observed.push(o);
        }
        // The state file: written at once, confirmed, kept over a crash.
        if let Some(seq) = s.poll_persist() {
            s.persisted(seq);
            self.persisted[i] = seq;
        }
        let mut out = Vec::new();
        while let Some(t) = s.poll_transmit() {
            out.push(t);
        }
        let node = s.node();
        if let Some(w) = self.trace.as_mut() {
            let state = node.describe();
            if self.traced_state[i] != state {
                let ev = TraceEvent::Membership { node: me, t_ns: now.as_nanos(), state: state.clone() };
                let _ = trace::write_line(w, &ev);
                self.traced_state[i] = state;
            }
        }
        if let Some((ring, epoch, kid)) = node.server_key() {
            // Every member of a ring derives the same key; no one else has it.
            let member = node.ring().is_some_and(|(r, m)| r == ring && m.contains(&me));
            if !member {
                self.violations.push(Violation::KeyOutsider { node: me, ring });
            }
            match self.keys.get(&(ring, epoch)) {
                Some(&(first, k)) if k != kid => {
                    self.violations.push(Violation::KeyMismatch { ring, epoch, a: first, b: me });
                }
                Some(_) => {}
                None => {
                    self.keys.insert((ring, epoch), (me, kid));
                }
            }
        }
        for t in out {
            if self.cfg.security == Some(LinkMode::Encrypt) && contains_marker(&t.bytes) {
                self.violations.push(Violation::PlaintextOnWire { node: me });
            }
            self.datagrams += 1;
            self.wire_bytes += t.bytes.len() as u64 + 28;
            match t.dest {
                Dest::All => {
                    for j in 0..self.daemons.len() {
                        if j != i {
                            self.net.send(now, i, j, &t.bytes);
                        }
                    }
                }
                Dest::Node(id) => self.net.send(now, i, usize::from(id.0), &t.bytes),
            }
        }
        for o in observed {
            match o {
                Observed::Node(ev) => self.on_event(i, me, ev),
                Observed::Submitted { id, service, payload } => self.on_submitted(i, id, service, payload),
                Observed::Client(..) => {}
            }
        }
    }

    /// Daemon `i`'s node took a message for ordering: its client's
    /// multicast, or one of its groups layer's own.
    fn on_submitted(&mut self, i: usize, id: MsgId, service: Service, payload: Bytes) {
        self.sent.insert(id, Sent { service, digest: digest(&payload), len: payload.len() });
        self.trace_submit(i, id, service, &payload);
        self.logs[self.current[i]].submitted.push(id);
        if !self.awaiting[i].as_ref().is_some_and(|a| carries(&payload, &a.payload)) {
            return;
        }
        let Some(a) = self.awaiting[i].take() else { return };
        self.multicasts += 1;
        match a.purpose {
            Purpose::Workload => self.payload_bytes += a.payload.len() as u64,
            Purpose::Probe => self.probes.push(id),
            Purpose::Live { within, expect } => {
                self.live_ids.insert(id);
                self.live_probes.push(LiveProbe { id, deadline: a.at + within, within, expect });
            }
        }
    }

    /// An event of daemon `i`'s node, in its delivery order.
    fn on_event(&mut self, i: usize, me: NodeId, ev: Event) {
        let now = self.now;
        match ev {
            Event::Deliver(d) => {
                let log = &self.logs[self.current[i]];
                if d.service == Service::Safe {
                    if let Some(Entry::Config { kind: ConfigKind::Regular, members, ring_id }) =
                        log.current_config()
                    {
                        // Every member that still keeps the ring must hold the packet.
                        if let Some(m) = members.iter().find(|m| {
                            self.daemons[usize::from(m.0)]
                                .as_ref()
                                .map(Server::node)
                                .is_some_and(|n| n.keeps(*ring_id) && !n.holds(*ring_id, d.ring_seq))
                        }) {
                            self.violations.push(Violation::UnsafeDelivery {
                                node: me,
                                id: d.id,
                                missing_at: *m,
                            });
                        }
                    }
                }
                if !log.in_its_configuration(d.ring_id) {
                    self.violations.push(Violation::WrongConfiguration { node: me, id: d.id });
                }
                match self.sent.get(&d.id) {
                    None => self.violations.push(Violation::Phantom { node: me, id: d.id }),
                    Some(s)
                        if s.service != d.service
                            || s.len != d.payload.len()
                            || s.digest != digest(&d.payload) =>
                    {
                        self.violations.push(Violation::Corrupt { node: me, id: d.id });
                    }
                    Some(_) => {}
                }
                if let Some(w) = self.trace.as_mut() {
                    let ev = TraceEvent::delivery(me, now, &d, digest(&d.payload));
                    let _ = trace::write_line(w, &ev);
                }
                if self.live_ids.contains(&d.id) {
                    self.live_delivered.entry((self.current[i], d.id)).or_insert(now);
                }
                self.logs[self.current[i]].push_delivery(d.id, d.ring_id, d.ring_seq);
            }
            Event::Configuration(c) => {
                if c.kind == ConfigKind::Regular
                    && self.stall_ring.is_some_and(|r| r != c.ring_id)
                    && now < self.quiet_at
                {
                    self.violations.push(Violation::SpuriousChange { node: me, ring: c.ring_id });
                }
                if c.kind == ConfigKind::Regular
                    && self.churn_from.is_some_and(|t| now >= t)
                    && now < self.quiet_at
                {
                    self.churned[i] += 1;
                    if self.churned[i] == self.churn_max + 1 {
                        self.violations.push(Violation::Churn { node: me, rings: self.churned[i] });
                    }
                }
                if let Some(w) = self.trace.as_mut() {
                    let ev = TraceEvent::Configuration {
                        node: me,
                        t_ns: now.as_nanos(),
                        config: c.kind,
                        ring: c.ring_id,
                        members: &c.members,
                    };
                    let _ = trace::write_line(w, &ev);
                }
                self.logs[self.current[i]].entries.push(Entry::Config {
                    kind: c.kind,
                    ring_id: c.ring_id,
                    members: c.members,
                });
            }
            Event::ServerKey(k) => {
                // The key handed to the owner is the one every member agreed.
                let (ring, epoch) = (k.ring_id, k.epoch);
                match self.announced.get(&(ring, epoch)) {
                    Some((first, key)) if *key != k.key => {
                        let a = *first;
                        self.violations.push(Violation::KeyMismatch { ring, epoch, a, b: me });
                    }
                    Some(_) => {}
                    None => {
                        self.announced.insert((ring, epoch), (me, k.key));
                    }
                }
            }
        }
    }

    fn done(&self) -> bool {
        if self.next_plan < self.plan.len() || (self.lasting.is_some() && self.now < self.quiet_at) {
            return false;
        }
        let waiting = self.live_probes.iter().any(|p| {
            self.now < p.deadline
                && p.expect
                    .iter()
                    .any(|&e| !self.logs[e].crashed && !self.live_delivered.contains_key(&(e, p.id)))
        });
        // A multicast that backpressure held counts once the node took it.
        if waiting || self.awaiting.iter().any(Option::is_some) {
            return false;
        }
        if self.faulty() {
            let Some(_) = self.converged_at else { return false };
            return self.daemons.iter().enumerate().filter(|(_, n)| n.is_some()).all(|(i, _)| {
                let log = &self.logs[self.current[i]];
                self.probes.iter().all(|p| log.delivered(*p))
            });
        }
        self.logs.iter().all(|l| l.delivery_count() == self.sent.len())
    }

    fn finish(mut self) -> Report {
        if let Some(w) = self.trace.as_mut() {
            let _ = trace::write_line(w, &TraceEvent::End { t_ns: self.now.as_nanos() });
        }
        let mut v = std::mem::take(&mut self.violations);
        for p in &self.live_probes {
            for &e in &p.expect {
                let on_time = self.live_delivered.get(&(e, p.id)).is_some_and(|t| *t <= p.deadline);
                if !on_time && !self.logs[e].crashed {
                    v.push(Violation::NotLive { node: self.logs[e].node, id: p.id, within: p.within });
                }
            }
        }
        if self.faulty() {
            check::evs(&self.logs, &mut v);
            if self.converged_at.is_some() && !v.iter().any(|x| matches!(x, Violation::Stalled { .. })) {
                for (i, n) in self.daemons.iter().enumerate() {
                    if let Some(n) = n
                        .as_ref()
                        .map(Server::node)
                        .filter(|_| self.cfg.security.is_some_and(|m| m != LinkMode::None))
                    {
                        if n.server_key().is_none_or(|(r, _, _)| n.ring().is_none_or(|(nr, _)| nr != r)) {
                            v.push(Violation::NoKey { node: NodeId(i as u16) });
                        }
                    }
                    if n.is_some() {
                        let log = &self.logs[self.current[i]];
                        for p in &self.probes {
                            if !log.delivered(*p) {
                                v.push(Violation::Lost { node: NodeId(i as u16), id: *p });
                            }
                        }
                    }
                }
            }
        } else {
            check::fixed_ring(&self.logs, &self.sent, &mut v);
        }
        let deliveries = self.logs.iter().map(|l| l.delivery_count() as u64).sum();
        let configurations = self
            .logs
            .iter()
            .map(|l| {
                l.entries
                    .iter()
                    .filter(|e| matches!(e, Entry::Config { kind: ConfigKind::Regular, .. }))
                    .count() as u64
            })
            .sum();
        Report {
            seed: self.cfg.seed,
            violations: v,
            submitted: self.sent.len() as u64,
            multicasts: self.multicasts,
            deliveries,
            end: self.now,
            payload_bytes: self.payload_bytes,
            datagrams: self.datagrams,
            wire_bytes: self.wire_bytes,
            faults: self.faults_applied,
            configurations,
            stats: self
                .daemons
                .iter()
                .map(|s| s.as_ref().map(|s| s.node().stats()).unwrap_or_default())
                .collect(),
        }
    }
}

/// Runs one seed.
pub fn run(cfg: &SimConfig) -> Report {
    run_traced(cfg, None)
}

/// Runs one seed, writing the JSON-lines trace to `trace` if given.
pub fn run_traced(cfg: &SimConfig, trace: Option<&mut dyn Write>) -> Report {
    match Sim::new(cfg.clone(), trace) {
        Ok(sim) => sim.run(),
        Err(e) => panic!("simulator config rejected: {e}"),
    }
}

#[cfg(test)]
mod tests;
