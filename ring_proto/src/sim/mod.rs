//! The deterministic simulator: the judge of every protocol change.
//!
//! A run is a pure function of its [`SimConfig`] (which holds the seed):
//! N [`Node`]s on virtual time, a seeded [`NetConfig`] network model (loss,
//! duplication, reordering, variable delay) and a seeded workload (several
//! senders, sizes from 1 B to 64 KiB, agreed and safe). After the run the
//! checker verifies the ordering invariants; a failing seed replays bit for
//! bit.
//!
//! ```text
//!  workload ──submit──► Node i ──poll_transmit──► Network (loss/dup/delay) ──► Node j
//!                         │ poll_event
//!                         ▼
//!                      Recorder ──► checks (same sequence, no dup, no gap, FIFO, safe)
//!                               └─► JSON-lines trace (optional)
//! ```

mod net;
mod trace;

pub use net::NetConfig;
pub use trace::TraceEvent;

use crate::Time;
use crate::ring::{Config, Dest, Event, Node};
use crate::wire::{Groups, MsgId, NodeId, RingId, Service};
use bytes::Bytes;
use net::Network;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
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
    /// The network stops losing datagrams at this virtual time.
    pub heal_at: Duration,
    /// A run that has not delivered everything by this virtual time fails.
    pub time_limit: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            nodes: 3,
            ring: Config::default(),
            net: NetConfig::default(),
            workload: Workload::default(),
            heal_at: Duration::from_millis(200),
            time_limit: Duration::from_secs(120),
        }
    }
}

/// A broken invariant. Fields name the daemon that saw it and the message.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two daemons delivered different messages at the same position.
    Order { node: NodeId, index: usize, expected: Option<MsgId>, got: Option<MsgId> },
    /// A daemon delivered a message twice.
    Duplicate { node: NodeId, id: MsgId },
    /// A daemon delivered an origin's messages out of order or skipped one.
    Fifo { node: NodeId, id: MsgId, expected_seq: u64 },
    /// A submitted message was not delivered by the end of the run.
    Lost { node: NodeId, id: MsgId },
    /// A delivered message's bytes or service differ from what was sent.
    Corrupt { node: NodeId, id: MsgId },
    /// A safe message was delivered before every member held its packet.
    UnsafeDelivery { node: NodeId, id: MsgId, missing_at: NodeId },
    /// A message was delivered that nobody submitted.
    Phantom { node: NodeId, id: MsgId },
    /// The run hit the time limit before everything was delivered.
    Stalled { at: Time },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Order { node, index, expected, got } => {
                write!(f, "order: node {node} delivery #{index} is {got:?}, node 0 delivered {expected:?}")
            }
            Self::Duplicate { node, id } => {
                write!(f, "duplicate: node {node} delivered {id:?} twice")
            }
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
            Self::Phantom { node, id } => {
                write!(f, "phantom: node {node} delivered {id:?}, never submitted")
            }
            Self::Stalled { at } => write!(f, "stalled: not everything delivered by {at}"),
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
    /// Messages accepted by `submit`.
    pub submitted: u64,
    /// Deliveries over all daemons.
    pub deliveries: u64,
    /// Virtual time at the end.
    pub end: Time,
    /// Payload bytes of all submitted messages.
    pub payload_bytes: u64,
    /// Datagrams sent (a send to all counts once, as with IP multicast).
    pub datagrams: u64,
    /// Bytes sent, including 28 bytes of IP and UDP header per datagram.
    pub wire_bytes: u64,
    /// Per-daemon counters.
    pub stats: Vec<crate::ring::Stats>,
}

impl Report {
    /// Payload bytes over wire bytes.
    pub fn wire_efficiency(&self) -> f64 {
        if self.wire_bytes == 0 { 0.0 } else { self.payload_bytes as f64 / self.wire_bytes as f64 }
    }
}

/// What a message should look like when delivered.
struct Sent {
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
    Bytes::from(v)
}

fn draw_size(rng: &mut ChaCha8Rng, w: &Workload) -> usize {
    if let Some(s) = w.fixed_size {
        return s;
    }
    let max = w.max_size.max(1);
    let cap = match rng.random_range(0..100) {
        0..60 => 200,
        60..85 => 1400,
        85..95 => 8192,
        _ => max,
    };
    rng.random_range(1..=cap.min(max))
}

/// One scheduled submission.
struct Planned {
    at: Time,
    node: usize,
    service: Service,
    payload: Bytes,
}

/// A simulation in progress. Most callers want [`run`].
pub struct Sim<'t> {
    cfg: SimConfig,
    now: Time,
    nodes: Vec<Node>,
    net: Network,
    plan: Vec<Planned>,
    next_plan: usize,
    sent: HashMap<MsgId, Sent>,
    delivered: Vec<Vec<MsgId>>,
    violations: Vec<Violation>,
    datagrams: u64,
    wire_bytes: u64,
    payload_bytes: u64,
    trace: Option<&'t mut dyn Write>,
}

impl fmt::Debug for Sim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim").field("seed", &self.cfg.seed).field("now", &self.now).finish_non_exhaustive()
    }
}

impl<'t> Sim<'t> {
    /// Builds the daemons, the network and the workload for `cfg`.
    pub fn new(cfg: SimConfig, trace: Option<&'t mut dyn Write>) -> Result<Self, crate::ring::ConfigError> {
        let ids: Vec<NodeId> = (0..cfg.nodes).map(|i| NodeId(i as u16)).collect();
        let ring_id = RingId { seq: 1, rep: ids[0] };
        let nodes = ids
            .iter()
            .map(|&id| Node::new(cfg.ring.clone(), id, &ids, ring_id, Time::ZERO))
            .collect::<Result<Vec<_>, _>>()?;
        let net_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6e65_7477_6f72_6b00);
        let mut load_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x776f_726b_6c6f_6164);
        let w = &cfg.workload;
        let mut plan = Vec::new();
        for node in 0..w.senders.min(cfg.nodes) {
            for _ in 0..w.messages_per_sender {
                let at = Time::from_nanos(load_rng.random_range(0..=w.span.as_nanos() as u64));
                let service =
                    if load_rng.random_bool(w.safe_fraction) { Service::Safe } else { Service::Agreed };
                let len = draw_size(&mut load_rng, w);
                let payload = payload(&mut load_rng, len);
                plan.push(Planned { at, node, service, payload });
            }
        }
        plan.sort_by_key(|p| p.at);
        let net = Network::new(cfg.net.clone(), net_rng, cfg.nodes);
        Ok(Self {
            delivered: vec![Vec::new(); cfg.nodes],
            cfg,
            now: Time::ZERO,
            nodes,
            net,
            plan,
            next_plan: 0,
            sent: HashMap::new(),
            violations: Vec::new(),
            datagrams: 0,
            wire_bytes: 0,
            payload_bytes: 0,
            trace,
        })
    }

    /// Runs to completion (everything delivered) or the time limit, then
    /// checks the invariants.
    pub fn run(mut self) -> Report {
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
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
            self.now = self.now.max(next);
            if self.now >= heal {
                self.net.lossy = false;
            }
            self.step();
        }
        self.finish()
    }

    fn next_time(&self) -> Option<Time> {
        let mut t = self.net.next_time();
        let mut consider = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Time| t.min(x)));
            }
        };
        for n in &self.nodes {
            consider(n.poll_timeout());
        }
        consider(self.plan.get(self.next_plan).map(|p| p.at));
        t
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some((to, bytes)) = self.net.pop_due(now) {
            self.nodes[to].handle_datagram(now, bytes);
            self.drain(to);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].poll_timeout().is_some_and(|t| t <= now) {
                self.nodes[i].handle_timeout(now);
                self.drain(i);
            }
        }
        while self.plan.get(self.next_plan).is_some_and(|p| p.at <= now) {
            let p = &self.plan[self.next_plan];
            let (node, service, payload) = (p.node, p.service, p.payload.clone());
            match self.nodes[node].submit(now, service, Groups::none(), payload.clone()) {
                Ok(id) => {
                    self.payload_bytes += payload.len() as u64;
                    self.sent.insert(id, Sent { service, digest: digest(&payload), len: payload.len() });
                    self.next_plan += 1;
                    self.drain(node);
                }
                Err(_) => {
                    // Backpressure: try again a little later.
                    self.plan[self.next_plan].at = now + Duration::from_millis(1);
                    self.plan[self.next_plan..].sort_by_key(|p| p.at);
                    break;
                }
            }
        }
    }

    fn drain(&mut self, i: usize) {
        let now = self.now;
        while let Some(t) = self.nodes[i].poll_transmit() {
            self.datagrams += 1;
            self.wire_bytes += t.bytes.len() as u64 + 28;
            match t.dest {
                Dest::All => {
                    for j in 0..self.nodes.len() {
                        if j != i {
                            self.net.send(now, i, j, &t.bytes);
                        }
                    }
                }
                Dest::Node(id) => self.net.send(now, i, id.0 as usize, &t.bytes),
            }
        }
        while let Some(ev) = self.nodes[i].poll_event() {
            let node = self.nodes[i].id();
            match ev {
                Event::Deliver(d) => {
                    if d.service == Service::Safe {
                        if let Some(m) = self.nodes.iter().find(|n| !n.holds(d.ring_seq)) {
                            self.violations.push(Violation::UnsafeDelivery {
                                node,
                                id: d.id,
                                missing_at: m.id(),
                            });
                        }
                    }
                    match self.sent.get(&d.id) {
                        None => self.violations.push(Violation::Phantom { node, id: d.id }),
                        Some(s)
                            if s.service != d.service
                                || s.len != d.payload.len()
                                || s.digest != digest(&d.payload) =>
                        {
                            self.violations.push(Violation::Corrupt { node, id: d.id });
                        }
                        Some(_) => {}
                    }
                    if let Some(w) = self.trace.as_mut() {
                        let ev =
                            TraceEvent::delivery(node, now, d.id, d.service, d.payload.len(), d.ring_seq);
                        let _ = trace::write_line(w, &ev);
                    }
                    self.delivered[i].push(d.id);
                }
                Event::Configuration(c) => {
                    if let Some(w) = self.trace.as_mut() {
                        let ev = TraceEvent::Configuration {
                            node,
                            t_ns: now.as_nanos(),
                            config: c.kind,
                            ring: c.ring_id,
                            members: &c.members,
                        };
                        let _ = trace::write_line(w, &ev);
                    }
                }
            }
        }
    }

    fn done(&self) -> bool {
        self.next_plan == self.plan.len() && self.delivered.iter().all(|d| d.len() == self.sent.len())
    }

    fn finish(mut self) -> Report {
        self.check();
        let deliveries = self.delivered.iter().map(|d| d.len() as u64).sum();
        Report {
            seed: self.cfg.seed,
            violations: self.violations,
            submitted: self.sent.len() as u64,
            deliveries,
            end: self.now,
            payload_bytes: self.payload_bytes,
            datagrams: self.datagrams,
            wire_bytes: self.wire_bytes,
            stats: self.nodes.iter().map(|n| n.stats().clone()).collect(),
        }
    }

    /// The end-of-run invariants.
    fn check(&mut self) {
        let reference = self.delivered[0].clone();
        for (i, seq) in self.delivered.iter().enumerate() {
            let node = NodeId(i as u16);
            // The same sequence at every daemon.
            if i > 0 {
                let n = seq.len().max(reference.len());
                if let Some(index) = (0..n).find(|&k| seq.get(k) != reference.get(k)) {
                    self.violations.push(Violation::Order {
                        node,
                        index,
                        expected: reference.get(index).copied(),
                        got: seq.get(index).copied(),
                    });
                }
            }
            // No duplicates; per-origin FIFO without gaps.
            let mut seen = HashSet::with_capacity(seq.len());
            let mut next: HashMap<NodeId, u64> = HashMap::new();
            for &id in seq {
                if !seen.insert(id) {
                    self.violations.push(Violation::Duplicate { node, id });
                    continue;
                }
                let expected = next.entry(id.origin).or_insert(1);
                if id.seq != *expected {
                    self.violations.push(Violation::Fifo { node, id, expected_seq: *expected });
                }
                *expected = id.seq + 1;
            }
            // Everything submitted was delivered.
            let mut lost: Vec<MsgId> = self.sent.keys().filter(|id| !seen.contains(id)).copied().collect();
            lost.sort_unstable();
            self.violations.extend(lost.into_iter().take(5).map(|id| Violation::Lost { node, id }));
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
