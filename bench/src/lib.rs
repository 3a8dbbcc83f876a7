//! `ringfence-bench`: a lean in-memory network driver for benchmarking the
//! ringfence ordering core ([`ringfence_proto::Node`]).
//!
//! The deterministic simulator ([`ringfence_proto::sim`]) judges correctness:
//! it models loss, duplication and reordering, records every delivery and
//! checks the invariants afterwards. That bookkeeping would dominate a
//! throughput measurement, so this crate drives the same sans-IO state
//! machines over a perfect network instead:
//!
//! - N daemons ([`Setup::daemons`], 3 by default) on one virtual clock;
//! - no loss, a fixed one-way delay ([`Setup::delay`], zero by default, which
//!   means immediate delivery in send order) and one global FIFO of datagrams
//!   in flight, so a run is a pure function of its [`Setup`] and [`Load`];
//! - a flooding client per sender that keeps its daemon's send queue topped up
//!   to at most [`Load::queue_depth`] (never above
//!   `Config::max_pending_messages`), refilling in batches after each token
//!   visit and stopping on [`SubmitError::Backlogged`];
//! - one shared payload buffer, cloned by reference count, so submitting
//!   allocates nothing in the harness.
//!
//! A run ([`run`] or [`Cluster::drive`]) returns [`Counts`]: messages
//! ordered, deliveries, datagrams, wire bytes (datagram bytes plus 28 bytes of
//! IP/UDP header per datagram; a send to all members counts once, as with IP
//! multicast) and payload bytes, hence [`Counts::wire_efficiency`]. Cheap
//! checks catch a broken core without recording deliveries: every daemon must
//! deliver each origin's messages in order without gaps, with the right
//! length, and all daemons must deliver the same sequence (compared by a
//! running hash).
//!
//! ```
//! use ringfence_bench::{Load, Setup, run};
//!
//! let counts = run(&Setup::default(), &Load::new(1_000, 100)).unwrap();
//! assert_eq!(counts.messages, 1_000);
//! assert_eq!(counts.deliveries, 3_000);
//! assert!(counts.wire_efficiency() > 0.8);
//! ```

use bytes::Bytes;
use ringfence_proto::Node;
use ringfence_proto::ring::{Config, ConfigError, Dest, Event, IP_HEADER, SubmitError, UDP_HEADER};
use ringfence_proto::wire::Groups;
use ringfence_proto::{NodeId, RingId, Service, Time};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// Bytes of IPv4 and UDP header counted on the wire for every datagram.
pub const WIRE_HEADER: u64 = (IP_HEADER + UDP_HEADER) as u64;

/// The cluster: how many daemons, their ring configuration and the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Number of daemons (default 3).
    pub daemons: usize,
    /// Ring configuration every daemon uses (default [`Config::default`]).
    pub ring: Config,
    /// One-way delay of every datagram (default zero: immediate delivery in
    /// send order).
    pub delay: Duration,
    /// A drive that needs more virtual time than this fails as stalled
    /// (default 60 s).
    pub time_limit: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            daemons: 3,
            ring: Config::default(),
            delay: Duration::ZERO,
            time_limit: Duration::from_secs(60),
        }
    }
}

impl Setup {
    /// The default setup with packing and the accelerated ring set as given.
    pub fn with(packing: bool, accelerated: bool) -> Self {
        let mut s = Self::default();
        s.ring.packing = packing;
        s.ring.accelerated = accelerated;
        s
    }
}

/// What the clients submit in one drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    /// Messages submitted in total (over all senders).
    pub messages: u64,
    /// Payload size of every message, in bytes.
    pub size: usize,
    /// How many daemons send, the lowest ids first (default 1: all from
    /// daemon 0). Messages are spread round-robin; clamped to `1..=daemons`.
    pub senders: usize,
    /// Service of every message (default agreed).
    pub service: Service,
    /// Most messages a client keeps waiting in its daemon's send queue; also
    /// capped by `Config::max_pending_messages` (default `usize::MAX`, i.e.
    /// that cap).
    pub queue_depth: usize,
}

impl Load {
    /// `messages` agreed messages of `size` bytes, all from daemon 0, the send
    /// queue kept as full as the configuration allows.
    pub fn new(messages: u64, size: usize) -> Self {
        Self { messages, size, senders: 1, service: Service::Agreed, queue_depth: usize::MAX }
    }
}

/// What a drive produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Distinct messages ordered (each delivered by every daemon).
    pub messages: u64,
    /// Deliveries over all daemons (`messages` times the number of daemons).
    pub deliveries: u64,
    /// Datagrams sent, data and tokens (a send to all counts once).
    pub datagrams: u64,
    /// Bytes on the wire: datagram bytes plus [`WIRE_HEADER`] per datagram.
    pub wire_bytes: u64,
    /// Payload bytes of the messages ordered.
    pub payload_bytes: u64,
    /// Virtual time the drive took.
    pub virtual_time: Duration,
}

impl Counts {
    /// Payload bytes over wire bytes (0 when nothing was sent).
    pub fn wire_efficiency(&self) -> f64 {
        if self.wire_bytes == 0 { 0.0 } else { self.payload_bytes as f64 / self.wire_bytes as f64 }
    }
}

/// Why a drive failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DriveError {
    /// The ring configuration was rejected, or `daemons` is 0 or too large.
    Config(ConfigError),
    /// `submit` refused the message size.
    TooLarge(usize),
    /// Not every daemon delivered every message within the limits.
    Stalled {
        /// Virtual time when the driver gave up.
        at: Time,
        /// Deliveries so far in this drive, over all daemons.
        deliveries: u64,
    },
    /// A daemon delivered a message out of per-origin order, twice, or with a
    /// gap.
    Fifo {
        /// The daemon.
        node: NodeId,
    },
    /// A daemon delivered a message with the wrong length.
    Corrupt {
        /// The daemon.
        node: NodeId,
    },
    /// Two daemons delivered different sequences.
    Diverged {
        /// A daemon whose sequence differs from daemon 0's.
        node: NodeId,
    },
    /// A daemon delivered more messages than were submitted.
    Phantom {
        /// The daemon.
        node: NodeId,
    },
}

impl fmt::Display for DriveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => write!(f, "{e}"),
            Self::TooLarge(n) => write!(f, "message of {n} bytes refused as too large"),
            Self::Stalled { at, deliveries } => {
                write!(f, "stalled at {at} after {deliveries} deliveries")
            }
            Self::Fifo { node } => write!(f, "daemon {node} broke per-origin order"),
            Self::Corrupt { node } => write!(f, "daemon {node} delivered a wrong length"),
            Self::Diverged { node } => {
                write!(f, "daemon {node} delivered a different sequence than 0")
            }
            Self::Phantom { node } => write!(f, "daemon {node} delivered an extra message"),
        }
    }
}

impl std::error::Error for DriveError {}

impl From<ConfigError> for DriveError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

/// A datagram in flight to one daemon.
#[derive(Debug)]
struct InFlight {
    at: Time,
    to: usize,
    bytes: Bytes,
}

/// What the driver tracks per daemon across drives.
#[derive(Debug)]
struct Seen {
    /// Next expected message counter per origin (indexed by origin id).
    next_seq: Vec<u64>,
    /// Running hash of the delivered `(origin, seq)` sequence.
    order_hash: u64,
}

/// Per-drive bookkeeping.
#[derive(Debug)]
struct Drive {
    payload: Bytes,
    service: Service,
    depth: usize,
    /// Messages each daemon's client still has to submit.
    to_submit: Vec<u64>,
    /// Deliveries per daemon in this drive.
    delivered: Vec<u64>,
    target: u64,
    counts: Counts,
}

/// N daemons on a perfect in-memory network with a virtual clock.
///
/// Daemons have ids `0..N`; daemon 0 is the representative and starts the
/// token. A cluster may be driven several times; message counters and order
/// checks carry over from one drive to the next.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    seen: Vec<Seen>,
    net: VecDeque<InFlight>,
    now: Time,
    delay: Duration,
    time_limit: Duration,
}

impl Cluster {
    /// Builds the daemons of `setup` at virtual time zero.
    pub fn new(setup: &Setup) -> Result<Self, DriveError> {
        let n = u16::try_from(setup.daemons).ok().filter(|&n| n > 0 && n < u16::MAX).ok_or(
            DriveError::Config(ConfigError { field: "daemons", reason: "must be between 1 and 65534" }),
        )?;
        let ids: Vec<NodeId> = (0..n).map(NodeId).collect();
        let ring_id = RingId { seq: 1, rep: ids[0] };
        let nodes = ids
            .iter()
            .map(|&id| Node::with_ring(setup.ring.clone(), id, &ids, ring_id, Time::ZERO))
            .collect::<Result<Vec<_>, _>>()?;
        let seen = ids.iter().map(|_| Seen { next_seq: vec![1; ids.len()], order_hash: 0 }).collect();
        Ok(Self {
            nodes,
            seen,
            net: VecDeque::with_capacity(1024),
            now: Time::ZERO,
            delay: setup.delay,
            time_limit: setup.time_limit,
        })
    }

    /// The daemons, by id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The virtual clock.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Submits `load` and runs the network until every daemon delivered
    /// every message of it.
    pub fn drive(&mut self, load: &Load) -> Result<Counts, DriveError> {
        let n = self.nodes.len();
        let senders = load.senders.clamp(1, n) as u64;
        let to_submit = (0..n as u64)
            .map(|i| {
                if i < senders { load.messages / senders + u64::from(i < load.messages % senders) } else { 0 }
            })
            .collect();
        let depth = load.queue_depth.min(self.nodes[0].config().max_pending_messages).max(1);
        let mut d = Drive {
            payload: Bytes::from(vec![0xa5; load.size]),
            service: load.service,
            depth,
            to_submit,
            delivered: vec![0; n],
            target: load.messages,
            counts: Counts { payload_bytes: load.messages * load.size as u64, ..Counts::default() },
        };
        let start = self.now;
        let deadline = start + self.time_limit;
        // Guards a zero-delay run against spinning without progress.
        let max_datagrams = 100_000 + 64 * load.messages;

        for i in 0..n {
            self.service(i, &mut d)?;
        }
        while d.delivered.iter().any(|&k| k < d.target) {
            if d.counts.datagrams > max_datagrams {
                return Err(self.stalled(&d));
            }
            if self.net.front().is_some_and(|f| f.at <= self.now) {
                let Some(f) = self.net.pop_front() else { unreachable!("front checked") };
                self.nodes[f.to].handle_datagram(self.now, f.bytes);
                self.service(f.to, &mut d)?;
                continue;
            }
            let mut next = self.net.front().map(|f| f.at);
            let mut fired = false;
            for i in 0..n {
                match self.nodes[i].poll_timeout() {
                    Some(t) if t <= self.now => {
                        self.nodes[i].handle_timeout(self.now);
                        self.service(i, &mut d)?;
                        fired = true;
                    }
                    Some(t) => next = Some(next.map_or(t, |x| x.min(t))),
                    None => {}
                }
            }
            if fired {
                continue;
            }
            match next {
                Some(t) if t <= deadline => self.now = t,
                _ => return Err(self.stalled(&d)),
            }
        }

        let hash = self.seen[0].order_hash;
        if let Some(i) = self.seen.iter().position(|s| s.order_hash != hash) {
            return Err(DriveError::Diverged { node: self.nodes[i].id() });
        }
        d.counts.messages = d.target;
        d.counts.virtual_time = self.now - start;
        Ok(d.counts)
    }

    fn stalled(&self, d: &Drive) -> DriveError {
        DriveError::Stalled { at: self.now, deliveries: d.counts.deliveries }
    }

    /// After daemon `i` was called: send its datagrams, take its events and
    /// top up its send queue.
    fn service(&mut self, i: usize, d: &mut Drive) -> Result<(), DriveError> {
        let node = &mut self.nodes[i];
        // Top up first so that a held token is used at once (submit sets its
        // deadline to now); nothing is sent before the next handle call.
        let mut left = d.to_submit[i];
        while left > 0 && node.pending() < d.depth {
            match node.submit(self.now, d.service, Groups::none(), d.payload.clone()) {
                Ok(_) => left -= 1,
                Err(SubmitError::Backlogged) => break,
                Err(_) => return Err(DriveError::TooLarge(d.payload.len())),
            }
        }
        d.to_submit[i] = left;

        let at = self.now + self.delay;
        while let Some(t) = node.poll_transmit() {
            d.counts.datagrams += 1;
            d.counts.wire_bytes += t.bytes.len() as u64 + WIRE_HEADER;
            match t.dest {
                Dest::All => {
                    for to in (0..self.seen.len()).filter(|&to| to != i) {
                        self.net.push_back(InFlight { at, to, bytes: t.bytes.clone() });
                    }
                }
                Dest::Node(id) => self.net.push_back(InFlight { at, to: usize::from(id.0), bytes: t.bytes }),
            }
        }

        let seen = &mut self.seen[i];
        let id = node.id();
        while let Some(ev) = node.poll_event() {
            let Event::Deliver(m) = ev else { continue };
            let origin = usize::from(m.id.origin.0);
            let Some(next) = seen.next_seq.get_mut(origin) else {
                return Err(DriveError::Fifo { node: id });
            };
            if m.id.seq != *next {
                return Err(DriveError::Fifo { node: id });
            }
            *next += 1;
            if m.payload.len() != d.payload.len() {
                return Err(DriveError::Corrupt { node: id });
            }
            if d.delivered[i] == d.target {
                return Err(DriveError::Phantom { node: id });
            }
            d.delivered[i] += 1;
            d.counts.deliveries += 1;
            // FNV-1a over the message id.
            let mut h = seen.order_hash ^ u64::from(m.id.origin.0);
            h = h.wrapping_mul(0x100_0000_01b3) ^ m.id.seq;
            seen.order_hash = h.wrapping_mul(0x100_0000_01b3);
        }
        Ok(())
    }
}

/// Builds a fresh [`Cluster`] for `setup` and drives `load` through it.
pub fn run(setup: &Setup, load: &Load) -> Result<Counts, DriveError> {
    Cluster::new(setup)?.drive(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enough 100 B messages for many full token rotations.
    const MESSAGES: u64 = 20_000;

    fn efficiency(packing: bool, size: usize) -> Counts {
        match run(&Setup::with(packing, true), &Load::new(MESSAGES, size)) {
            Ok(c) => c,
            Err(e) => panic!("drive failed: {e}"),
        }
    }

    #[test]
    fn packing_reaches_wire_efficiency_of_small_messages() {
        let on = efficiency(true, 100);
        let off = efficiency(false, 100);
        for c in [on, off] {
            assert_eq!(c.messages, MESSAGES);
            assert_eq!(c.deliveries, 3 * MESSAGES);
            assert_eq!(c.payload_bytes, 100 * MESSAGES);
        }
        let (e_on, e_off) = (on.wire_efficiency(), off.wire_efficiency());
        println!(
            "100 B, 3 daemons: packing on {e_on:.3} ({} datagrams), off {e_off:.3} ({} datagrams), gain {:.2}x",
            on.datagrams,
            off.datagrams,
            e_on / e_off
        );
        assert!(e_on >= 0.8, "packing on: wire efficiency {e_on:.3} < 0.8");
        assert!(e_off < e_on, "packing off ({e_off:.3}) must be below packing on ({e_on:.3})");
        // The gain is real, not rounding: one message per frame pays 68 bytes
        // of headers per 100 B payload (efficiency below 0.6).
        assert!(e_off < 0.6, "packing off: {e_off:.3}");
        assert!(on.datagrams * 8 < off.datagrams);
    }

    #[test]
    fn counts_match_the_daemons_own_counters() {
        let mut c = Cluster::new(&Setup::default()).unwrap();
        let counts = c.drive(&Load::new(5_000, 300)).unwrap();
        let stats: Vec<_> = c.nodes().iter().map(|n| n.stats().clone()).collect();
        assert_eq!(counts.datagrams, stats.iter().map(|s| s.datagrams_sent).sum::<u64>());
        assert_eq!(
            counts.wire_bytes,
            stats.iter().map(|s| s.bytes_sent + WIRE_HEADER * s.datagrams_sent).sum::<u64>()
        );
        assert!(stats.iter().all(|s| s.messages_delivered == 5_000));
        assert_eq!(stats[0].messages_submitted, 5_000);
        // A perfect network: nothing lost, resent or refused.
        for s in &stats {
            assert_eq!(s.retransmits_requested, 0);
            assert_eq!(s.packets_retransmitted, 0);
            assert_eq!(s.token_retransmits, 0);
            assert_eq!(s.duplicate_packets, 0);
            assert_eq!(s.reassembly_errors, 0);
        }
    }

    #[test]
    fn runs_are_deterministic() {
        let setup = Setup { delay: Duration::from_micros(50), ..Setup::default() };
        let load = Load { senders: 3, ..Load::new(3_001, 700) };
        let a = run(&setup, &load).unwrap();
        let b = run(&setup, &load).unwrap();
        assert_eq!(a, b);
        assert!(a.virtual_time > Duration::ZERO);
        assert_eq!(a.deliveries, 3 * 3_001);
    }

    #[test]
    fn every_configuration_delivers() {
        for packing in [true, false] {
            for accelerated in [true, false] {
                for (size, senders, depth) in [(1, 1, usize::MAX), (1000, 3, 10), (5000, 2, 64)] {
                    let load = Load { senders, queue_depth: depth, ..Load::new(2_000, size) };
                    let r = run(&Setup::with(packing, accelerated), &load);
                    let c = r
                        .unwrap_or_else(|e| panic!("packing {packing} accel {accelerated} size {size}: {e}"));
                    assert_eq!(c.deliveries, 6_000);
                }
            }
        }
    }

    #[test]
    fn a_cluster_can_be_driven_again() {
        let mut c = Cluster::new(&Setup::default()).unwrap();
        let first = c.drive(&Load::new(1_000, 100)).unwrap();
        let second = c.drive(&Load::new(1_000, 100)).unwrap();
        assert_eq!(first.deliveries, second.deliveries);
        assert!(c.nodes().iter().all(|n| n.stats().messages_delivered == 2_000));
    }

    /// The simulator drives daemon cores (`Server`): each client multicast
    /// reaches the ring wrapped by the groups layer (its header and the
    /// sender's name in the payload, the destination `sim` in the chunk's
    /// group list), and the groups layer orders a few messages of its own
    /// (joins, state exchanges). So the simulator's figures agree with this
    /// bare-node driver carrying messages of the wrapped size, counted per
    /// ring byte; per client byte the simulator is below it, by the header.
    #[test]
    fn wire_efficiency_agrees_with_the_simulator() {
        use ringfence_proto::groups::{Body, GroupMsg};
        use ringfence_proto::sim::{self, SIM_CLIENT, SIM_GROUP, SimConfig, Workload};
        // Stay below max_pending_messages: the simulator's backpressure path
        // gets slow once its plan is backlogged.
        for packing in [true, false] {
            for size in [100, 1000] {
                let mut cfg = SimConfig {
                    workload: Workload {
                        senders: 1,
                        messages_per_sender: 4_000,
                        fixed_size: Some(size),
                        safe_fraction: 0.0,
                        span: Duration::ZERO,
                        ..Workload::default()
                    },
                    ..SimConfig::default()
                };
                cfg.ring.packing = packing;
                let r = sim::run(&cfg);
                assert_eq!(r.violations, vec![]);
                assert_eq!((r.multicasts, r.payload_bytes), (4_000, 4_000 * size as u64));
                let data = Body::Data {
                    self_discard: false,
                    sealed: false,
                    msg_type: 0,
                    views: Vec::new(),
                    payload: Bytes::from(vec![0; size]),
                };
                let wrapped =
                    GroupMsg { sender: Bytes::from_static(SIM_CLIENT.as_bytes()), body: data }.encode();
                let list = Groups::encode(&[SIM_GROUP]).unwrap().encoded_len() - Groups::none().encoded_len();
                let ring_size = wrapped.len() + list;
                let ours = run(&Setup::with(packing, true), &Load::new(4_000, ring_size)).unwrap();
                let per_ring_byte = r.wire_efficiency() * ring_size as f64 / size as f64;
                let diff = (ours.wire_efficiency() - per_ring_byte).abs();
                assert!(
                    diff < 0.002,
                    "packing {packing}, {size} B ({ring_size} B in the ring): {ours:?} vs {r:?} ({per_ring_byte:.4})"
                );
            }
        }
    }

    #[test]
    fn bad_setups_are_refused() {
        let zero = Setup { daemons: 0, ..Setup::default() };
        assert!(matches!(run(&zero, &Load::new(1, 1)), Err(DriveError::Config(_))));
        let big = Load::new(1, Config::default().max_message + 1);
        assert_eq!(run(&Setup::default(), &big), Err(DriveError::TooLarge(big.size)));
    }
}
