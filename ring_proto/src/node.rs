//! The daemon's protocol state machine: Totem membership, one [`Ring`] of
//! ordering per configuration, and Extended Virtual Synchrony at every
//! change.
//!
//! ```text
//!            token lost / join / foreign ring / beacon
//!  Operational ─────────────────────────────────────► Gather ◄──────────┐
//!      ▲                                               │ consensus       │ timeout,
//!      │                                               ▼                 │ different
//!      │ every member's RecoveryDone delivered       Commit ─────────────┤ join
//!      └──────────────────────────────────────────── Recovery ──────────┘
//! ```
//!
//! # Calling contract
//!
//! Time is monotonic and supplied by the caller. After any `handle_*` or
//! [`Node::submit`] call, drain [`Node::poll_transmit`] (send each datagram in
//! the order given) and [`Node::poll_event`], then arm a timer for
//! [`Node::poll_timeout`] and call [`Node::handle_timeout`] when it expires.
//! `Dest::All` means every other daemon of the cluster, not only the current
//! members: that is how partitions find each other again.

use crate::Time;
use crate::ring::{
    Config, ConfigError, ConfigKind, Configuration, Delivery, Dest, Event, Outboxes, Pending, Ring,
    ServerKey, Stats, SubmitError, Transmit,
};
use crate::security::link::Received;
use crate::security::{Agreement, KeyId, Link, LinkMode, Reject, SecurityConfig, SecurityStats};
use crate::wire::{
    Beacon, CommitToken, DataPacket, Datagram, ENTRY_EMPTY, ENTRY_FRESH, Groups, Join, KIND_DATA, MsgId,
    NodeId, OldRing, RingId, Service, peek_kind,
};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Message counters of control messages live in the upper half of the
/// `msg_seq` space, apart from client messages.
const CTL_SEQ_BASE: u64 = 1 << 63;

/// Most a ring sequence from a datagram (a join's round, a beacon's or a
/// packet's ring, a commit token's new ring) may lie above the highest this
/// daemon knows. A round further ahead is taken as this much ahead (a
/// daemon far behind catches up in steps, one per join it hears); a commit
/// token further ahead is dropped. One forged datagram then moves ring
/// sequences by at most this, never to the end of their range (which would
/// leave no greater ring id to form).
pub const MAX_RING_STEP: u64 = 1 << 16;

/// What a daemon brings from its previous life (the runtime persists it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incarnation {
    /// Highest ring sequence this daemon ever saw: new rings are numbered
    /// above it, so ring ids are never reused across restarts.
    pub ring_seq: u64,
    /// First message counter to use: message ids are never reused across
    /// restarts.
    pub first_msg_seq: u64,
}

/// Membership phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A ring is installed; messages flow.
    Operational,
    /// Agreeing on the next membership by join messages.
    Gather,
    /// The commit token is forming the new ring.
    Commit,
    /// The new ring carries the old rings' missing packets.
    Recovery,
    /// This daemon left for good ([`Node::leave`]): it sends and accepts
    /// nothing more.
    Left,
}

#[derive(Clone, Debug)]
struct Gather {
    /// The round: the highest ring sequence known when it began. Joins of
    /// older rounds are stale and ignored; a join of a newer round makes
    /// this daemon start over in that round, dropping what it learned from
    /// others in the older one.
    round: u64,
    procs: BTreeSet<NodeId>,
    /// What this daemon's joins leave out (see [`Gather::resolve`]).
    fails: BTreeSet<NodeId>,
    /// Our suspects: daemons we cannot hear (silent through a consensus
    /// timeout, or not heard since an earlier one). Kept across rounds; a
    /// join from one of them clears it.
    own: BTreeSet<NodeId>,
    /// Members heard this round that still disagreed at a consensus
    /// timeout: left out for the rest of the round.
    stuck: BTreeSet<NodeId>,
    /// Each daemon heard this round: its suspects, and whether its latest
    /// join leaves us out.
    reports: BTreeMap<NodeId, (BTreeSet<NodeId>, bool)>,
    /// Daemons heard since the last consensus timeout (or the round's
    /// start): one not heard for a whole timeout is silent to us, whatever
    /// it said before.
    heard: BTreeSet<NodeId>,
    agreed: BTreeSet<NodeId>,
    join_at: Time,
    consensus_at: Time,
}

impl Gather {
    fn members(&self) -> Vec<NodeId> {
        self.procs.difference(&self.fails).copied().collect()
    }

    /// Whom to leave out. Our suspects and the members stuck at a timeout
    /// are out. The accusations among the rest (each daemon's suspects:
    /// who cannot hear whom) are settled by taking out daemons one at a
    /// time, the one in the most accusations first (then the one accused
    /// most, then the higher id), until no accusation is left among the
    /// members: a daemon that crashed or hears no one goes, and of the two
    /// ends of a one-way cut the one that cannot be heard goes, the same
    /// at every daemon that heard the same accusations. Totem takes the
    /// union of every fail set instead, and
    /// that is what stopped the cluster under a lasting one-way cut (issue
    /// 15): both ends were taken out at every daemon, round after round.
    ///
    /// When that takes us out, or every daemon we hear leaves us out, no
    /// ring with the others can form: we leave every other daemon out and
    /// propose a ring of our own (formed at the consensus timeout).
    fn resolve(&mut self, me: NodeId) {
        let mut fails: BTreeSet<NodeId> = self.own.union(&self.stuck).copied().collect();
        fails.remove(&me);
        let alive = |f: &BTreeSet<NodeId>, x: &NodeId| self.procs.contains(x) && !f.contains(x);
        let mut edges: BTreeSet<(NodeId, NodeId)> = BTreeSet::new();
        for (a, (suspects, _)) in &self.reports {
            if !alive(&fails, a) {
                continue;
            }
            for b in suspects.iter().filter(|b| *b != a && alive(&fails, b)) {
                edges.insert((*a, *b));
            }
        }
        let mut excluded = false;
        while !edges.is_empty() {
            // (accusations, times accused) per daemon.
            let mut degree: BTreeMap<NodeId, (usize, usize)> = BTreeMap::new();
            for (a, b) in &edges {
                degree.entry(*a).or_default().0 += 1;
                let d = degree.entry(*b).or_default();
                d.0 += 1;
                d.1 += 1;
            }
            let Some((out, _)) = degree.into_iter().max_by_key(|(id, d)| (*d, *id)) else { break };
            edges.retain(|(a, b)| *a != out && *b != out);
            if out == me {
                excluded = true;
            } else {
                fails.insert(out);
            }
        }
        let heard: Vec<bool> = self
            .reports
            .iter()
            .filter(|(id, _)| **id != me && !fails.contains(id) && self.procs.contains(id))
            .map(|(_, (_, leaves_us_out))| *leaves_us_out)
            .collect();
        excluded |= !heard.is_empty() && heard.iter().all(|x| *x);
        if excluded {
            fails = self.procs.iter().copied().filter(|p| *p != me).collect();
        }
        self.fails = fails;
    }

    /// Starts a new round: what we learned from others is forgotten, our
    /// own suspects are not (forgetting them let a daemon that keeps
    /// starting new rounds empty everyone's fail set forever: issue 15).
    fn new_round(&mut self, round: u64, me: NodeId) {
        self.round = round;
        self.reports.clear();
        self.heard.clear();
        self.stuck.clear();
        self.resolve(me);
        self.agreed = BTreeSet::from([me]);
    }
}

#[derive(Debug)]
struct Recovery {
    token: CommitToken,
    /// Members of the new ring that come from our old ring (the
    /// transitional configuration).
    old_members: Vec<NodeId>,
    max_stable: u64,
    done: BTreeSet<NodeId>,
    deadline: Time,
    /// The representative has started the new ring's token (once only: a
    /// duplicate of the second rotation must not start it again).
    started: bool,
}

#[derive(Debug)]
enum State {
    Operational,
    Gather(Gather),
    Commit { gather: Gather, ring_id: RingId, members: Vec<NodeId>, deadline: Time },
    Recovery { gather: Gather, rec: Recovery },
}

#[derive(Debug)]
struct SentCommit {
    bytes: Bytes,
    to: NodeId,
    ring_id: RingId,
    deadline: Time,
}

#[derive(Clone, Copy, Debug)]
struct Quarantine {
    until: Time,
    backoff: Duration,
}

/// A security alert for the runtime's log (rate-limited per kind and peer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// The daemon the datagram claimed to come from.
    pub peer: NodeId,
    /// What was wrong.
    pub text: String,
}

/// How often one kind of alert about one peer is repeated.
const ALERT_EVERY: Duration = Duration::from_secs(10);

/// How long a slow token rotation keeps the token timeout stretched.
const SLOW_MEMORY: Duration = Duration::from_secs(10);

/// The security state of a node.
#[derive(Debug)]
struct Sec {
    cfg: SecurityConfig,
    link: Link,
    /// The key agreement (absent in mode `none`).
    agreement: Option<Agreement>,
    stats: SecurityStats,
    /// The regular configuration held back from the clients until its key
    /// is agreed.
    pending: Option<Configuration>,
    /// The transitional configuration out of the last regular configuration
    /// shown, with the messages delivered in it: held back until the next
    /// regular configuration is shown, which it then precedes. Its members
    /// are those that moved on together from that configuration; every ring
    /// dropped before its key shrinks them to those that moved on together
    /// from it too. `None` before any regular configuration was shown in
    /// this incarnation.
    held: Option<(BTreeSet<NodeId>, Vec<Delivery>)>,
    /// Members that said they hold each new link key of our ring; a key
    /// is used once all did.
    checks: BTreeMap<KeyId, BTreeSet<NodeId>>,
    /// The newest key of our ring that every member is known to hold: one
    /// this daemon switched to (stable), or one a member sealed with. Every
    /// datagram of the ring goes sealed with it, and recovered packets of
    /// the ring travel through the next one sealed with it.
    ring_key: Option<(RingId, KeyId, u64)>,
    /// The last server key given to the owner (`Event::ServerKey`).
    announced: Option<(RingId, u64)>,
    /// Link keys derived here: id, ring, epoch, and the server key they
    /// come from (newest last, bounded).
    derived: VecDeque<(KeyId, RingId, u64, ringfence_crypto::aead::Key32)>,
    changed_at: Time,
    installed_at: Time,
    /// When the key agreement run in progress began.
    run_started: Time,
    agreed_at: Time,
    bytes_under_key: u64,
    refresh_asked: bool,
    alerts: VecDeque<Alert>,
    alerted: BTreeMap<(u8, NodeId), Time>,
}

impl Sec {
    /// When a key agreement run in progress (or a configuration still
    /// waiting for its key) is given up, if there is one.
    fn agreement_deadline(&self, token_timeout: Duration) -> Option<Time> {
        let stuck = self.pending.is_some() || self.agreement.as_ref().is_some_and(Agreement::running);
        stuck.then(|| self.run_started + (token_timeout * 20).max(Duration::from_secs(5)))
    }

    /// Whether a refresh may be asked for in ring `ring_id` now: its key is
    /// agreed, no run is going on and none was asked for.
    fn refresh_possible(&self, ring_id: RingId) -> bool {
        !self.refresh_asked
            && self
                .agreement
                .as_ref()
                .is_some_and(|a| !a.running() && a.key().is_some_and(|k| k.ring_id == ring_id))
    }

    fn alert(&mut self, now: Time, kind: u8, peer: NodeId, text: impl FnOnce() -> String) {
        self.alert_as(now, kind, peer, peer, text);
    }

    /// As `alert`, rate-limited under `slot` (bounded: a claimed sender id
    /// from an unauthenticated datagram does not get a slot of its own).
    fn alert_as(&mut self, now: Time, kind: u8, slot: NodeId, peer: NodeId, text: impl FnOnce() -> String) {
        let last = self.alerted.entry((kind, slot)).or_insert(Time::ZERO);
        if *last == Time::ZERO || now.saturating_since(*last) >= ALERT_EVERY {
            *last = now.max(Time::from_nanos(1));
            if self.alerts.len() < 64 {
                self.alerts.push_back(Alert { peer, text: text() });
            }
        }
    }
}

/// One daemon's protocol state machine. See the module docs for the calling
/// contract.
#[derive(Debug)]
pub struct Node {
    cfg: Config,
    id: NodeId,
    state: State,
    /// The last installed ring; `None` before the first.
    ring: Option<Ring>,
    /// The ring being recovered into (Recovery phase).
    next: Option<Ring>,
    out: Outboxes,
    next_msg_seq: u64,
    next_ctl_seq: u64,
    max_ring_seq: u64,
    /// Highest sequence of a ring this daemon numbered (as representative)
    /// or installed: what the runtime persists, never a number a datagram
    /// merely claimed.
    formed_ring_seq: u64,
    /// Highest (ring id, token seq) of a commit token accepted.
    last_commit: Option<(RingId, u64)>,
    sent_commit: Option<SentCommit>,
    last_token_at: Time,
    beacon_at: Time,
    quarantine: BTreeMap<NodeId, Quarantine>,
    /// The slowest token rotation seen lately (over a quarter of the token
    /// timeout), and until when it counts: see [`Node::token_timeout`].
    slow_rotation: Duration,
    slow_until: Time,
    /// The failure deadline a late timer was last excused to: a smaller
    /// lateness is excused once per deadline (see [`Node::excuse_stall`]).
    graced_until: Time,
    /// Daemons we suspected because we could not hear them, until a join or
    /// beacon of theirs reaches us: they are suspects from the first join
    /// of the next gather on, so a daemon behind a lasting one-way cut is
    /// left out at once rather than after another consensus timeout.
    unheard: BTreeSet<NodeId>,
    /// When we last echoed a beacon to each daemon (one we could not hear,
    /// or an outsider gathering in a stale round).
    echoed: BTreeMap<NodeId, Time>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Link security and the servers' key agreement (absent: plain datagrams
    /// without any outer layer, for ordering tests and the plain simulator).
    sec: Option<Box<Sec>>,
    /// The latest time given to a `handle_*` call.
    now: Time,
    /// Membership warnings for the log (rate-limited per kind and peer).
    notices: VecDeque<Alert>,
    noticed: BTreeMap<(u8, NodeId), Time>,
    /// Counters of rings that ended, and of the node itself.
    retired: Stats,
    /// [`Node::leave`] was called: inert from then on.
    left: bool,
}

impl Node {
    /// A daemon starting up: it gathers, alone at first, and forms or joins a
    /// ring with whoever answers.
    pub fn new(cfg: Config, id: NodeId, now: Time, inc: Incarnation) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if id == NodeId::NONE {
            return Err(ConfigError { field: "id", reason: "65535 is reserved" });
        }
        let mut node = Self::blank(cfg, id, now, inc);
        node.enter_gather(now, BTreeSet::new(), BTreeSet::new());
        node.retired.membership_changes = 0;
        Ok(node)
    }

    /// A daemon with link security and the servers' key agreement: every
    /// datagram goes through [`crate::security::link`], and each regular
    /// configuration reaches [`Node::poll_event`] only once its server key
    /// is agreed (mode `none`: at once, as with [`Node::new`]).
    pub fn with_security(
        cfg: Config,
        id: NodeId,
        now: Time,
        inc: Incarnation,
        sec: SecurityConfig,
    ) -> Result<Self, ConfigError> {
        if sec.mode != LinkMode::None && (sec.identity.is_none() || !sec.peers.contains_key(&id)) {
            return Err(ConfigError {
                field: "security",
                reason: "a secure mode needs this daemon's identity and public key",
            });
        }
        let mut node = Self::new(cfg, id, now, inc)?;
        let link = Link::new(
            id,
            sec.mode,
            sec.digest(),
            sec.identity.clone(),
            sec.peers.clone(),
            sec.aead,
            sec.incarnation,
        );
        let agreement = match (&sec.identity, sec.mode) {
            (Some(identity), LinkMode::Encrypt | LinkMode::Authenticate) => {
                Some(Agreement::new(id, identity.clone(), sec.peers.clone(), sec.seed))
            }
            _ => None,
        };
        let stats = SecurityStats { mode: sec.mode, ..SecurityStats::default() };
        node.sec = Some(Box::new(Sec {
            cfg: sec,
            link,
            agreement,
            stats,
            pending: None,
            held: None,
            checks: BTreeMap::new(),
            ring_key: None,
            announced: None,
            derived: VecDeque::new(),
            changed_at: now,
            installed_at: now,
            run_started: now,
            agreed_at: now,
            bytes_under_key: 0,
            refresh_asked: false,
            alerts: VecDeque::new(),
            alerted: BTreeMap::new(),
        }));
        // The first datagrams (joins) were queued plain by `new`: wrap them.
        Ok(node)
    }

    /// Security counters (`None` without link security).
    pub fn security_stats(&self) -> Option<&SecurityStats> {
        self.sec.as_ref().map(|s| &s.stats)
    }

    /// The next alert for the log (at WARN): membership trouble (members
    /// left out, one-way cuts) and security alerts.
    pub fn poll_alert(&mut self) -> Option<Alert> {
        if let Some(a) = self.notices.pop_front() {
            return Some(a);
        }
        self.sec.as_mut()?.alerts.pop_front()
    }

    /// Queues a membership warning, at most one per kind and peer every
    /// [`ALERT_EVERY`].
    fn notice(&mut self, now: Time, kind: u8, peer: NodeId, text: impl FnOnce() -> String) {
        let last = self.noticed.entry((kind, peer)).or_insert(Time::ZERO);
        if *last == Time::ZERO || now.saturating_since(*last) >= ALERT_EVERY {
            *last = now.max(Time::from_nanos(1));
            if self.notices.len() < 64 {
                self.notices.push_back(Alert { peer, text: text() });
            }
        }
    }

    /// The server key agreed in the current ring: its ring, epoch and link
    /// key id (the secret itself stays inside).
    pub fn server_key(&self) -> Option<(RingId, u64, KeyId)> {
        let sec = self.sec.as_ref()?;
        let (ring, kid, epoch) = sec.ring_key?;
        self.ring.as_ref().filter(|r| r.ring_id() == ring)?;
        Some((ring, epoch, kid))
    }

    /// The secret server key in use in the current ring, held by every
    /// member (for deriving client group keys).
    pub fn server_secret(&self) -> Option<&ringfence_crypto::aead::Key32> {
        let sec = self.sec.as_ref()?;
        let (ring, kid, _) = sec.ring_key?;
        self.ring.as_ref().filter(|r| r.ring_id() == ring)?;
        sec.derived.iter().find(|d| d.0 == kid).map(|d| &d.3)
    }

    /// A daemon already operational in the ring `ring_id` of `members` (all
    /// members must be created alike). For tests and benchmarks of ordering.
    pub fn with_ring(
        cfg: Config,
        id: NodeId,
        members: &[NodeId],
        ring_id: RingId,
        now: Time,
    ) -> Result<Self, ConfigError> {
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let lowest = sorted.first() == Some(&id);
        let ring = Ring::new(cfg.clone(), id, &sorted, ring_id, now, lowest)?;
        let inc = Incarnation { ring_seq: ring_id.seq, first_msg_seq: 1 };
        let mut node = Self::blank(cfg, id, now, inc);
        node.ring = Some(ring);
        node.out.user_allowed = true;
        node.events.push_back(Event::Configuration(Configuration {
            kind: ConfigKind::Regular,
            ring_id,
            members: sorted,
        }));
        node.retired.rings_installed = 1;
        Ok(node)
    }

    fn blank(cfg: Config, id: NodeId, now: Time, inc: Incarnation) -> Self {
        Self {
            beacon_at: now + cfg.merge_interval,
            cfg,
            id,
            state: State::Operational,
            ring: None,
            next: None,
            out: Outboxes::default(),
            next_msg_seq: inc.first_msg_seq.clamp(1, CTL_SEQ_BASE - 1),
            next_ctl_seq: CTL_SEQ_BASE,
            max_ring_seq: inc.ring_seq,
            formed_ring_seq: inc.ring_seq,
            last_commit: None,
            sent_commit: None,
            last_token_at: now,
            quarantine: BTreeMap::new(),
            unheard: BTreeSet::new(),
            echoed: BTreeMap::new(),
            slow_rotation: Duration::ZERO,
            slow_until: Time::ZERO,
            graced_until: Time::ZERO,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            sec: None,
            now,
            notices: VecDeque::new(),
            noticed: BTreeMap::new(),
            retired: Stats::default(),
            left: false,
        }
    }

    /// This daemon's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The membership phase.
    pub fn phase(&self) -> Phase {
        if self.left {
            return Phase::Left;
        }
        match self.state {
            State::Operational => Phase::Operational,
            State::Gather(_) => Phase::Gather,
            State::Commit { .. } => Phase::Commit,
            State::Recovery { .. } => Phase::Recovery,
        }
    }

    /// The membership state in one line, for a debug log: phase, round,
    /// the gather's sets, the quarantined daemons and whether the ring's
    /// key is agreed. Changes at every step of a membership change.
    pub fn describe(&self) -> String {
        let ids = |s: &BTreeSet<NodeId>| s.iter().map(|n| n.0.to_string()).collect::<Vec<_>>().join(",");
        let quarantined: BTreeSet<NodeId> = self.held_in_quarantine(self.now).collect();
        let ring = self.ring.as_ref().map_or("none".into(), |r| r.ring_id().to_string());
        let keyed = self
            .sec
            .as_ref()
            .map(|s| s.ring_key.is_some_and(|k| Some(k.0) == self.ring.as_ref().map(|r| r.ring_id())));
        let state = match &self.state {
            State::Operational => "operational".to_string(),
            State::Gather(g) => format!(
                "gather round={} procs={{{}}} fails={{{}}} own={{{}}} stuck={{{}}} agreed={{{}}}",
                g.round,
                ids(&g.procs),
                ids(&g.fails),
                ids(&g.own),
                ids(&g.stuck),
                ids(&g.agreed)
            ),
            State::Commit { ring_id, members, .. } => {
                format!("commit {ring_id} members={{{}}}", ids(&members.iter().copied().collect()))
            }
            State::Recovery { rec, .. } => format!(
                "recovery {} members={{{}}}",
                rec.token.ring_id,
                ids(&rec.token.members.iter().copied().collect())
            ),
        };
        format!(
            "{state} ring={ring} keyed={keyed:?} unheard={{{}}} quarantined={{{}}} max_ring_seq={}",
            ids(&self.unheard),
            ids(&quarantined),
            self.max_ring_seq
        )
    }

    /// The installed ring's id and members, if any.
    pub fn ring(&self) -> Option<(RingId, &[NodeId])> {
        self.ring.as_ref().map(|r| (r.ring_id(), r.members()))
    }

    /// Highest ring sequence seen (claimed by a datagram, within
    /// [`MAX_RING_STEP`] of what this daemon knew).
    pub fn max_ring_seq(&self) -> u64 {
        self.max_ring_seq
    }

    /// The ring sequence the runtime must persist before sending (see
    /// [`Incarnation`]): the highest of a ring this daemon numbered or
    /// installed. A ring id is only ever reused by its own representative,
    /// so this is enough; a number only seen in a datagram is not persisted
    /// (in mode `none` nothing authenticates it).
    pub fn ring_seq_to_persist(&self) -> u64 {
        self.formed_ring_seq
    }

    /// Whether this daemon still keeps the state of ring `ring_id`.
    pub fn keeps(&self, ring_id: RingId) -> bool {
        [&self.ring, &self.next].into_iter().flatten().any(|r| r.ring_id() == ring_id)
    }

    /// Whether this daemon holds packet `seq` of ring `ring_id` (collected
    /// packets count). False for rings it no longer keeps.
    pub fn holds(&self, ring_id: RingId, seq: u64) -> bool {
        [&self.ring, &self.next]
            .into_iter()
            .flatten()
            .find(|r| r.ring_id() == ring_id)
            .is_some_and(|r| r.holds(seq))
    }

    /// Packets held in this daemon's stores (the ring and the ring being
    /// recovered into): bounded by the window whatever arrives.
    pub fn stored_packets(&self) -> usize {
        [&self.ring, &self.next].into_iter().flatten().map(Ring::stored_packets).sum()
    }

    /// Client messages waiting to be sent.
    pub fn pending(&self) -> usize {
        self.out.user.len()
    }

    /// Counters, over every ring this daemon was in.
    pub fn stats(&self) -> Stats {
        let mut s = self.retired.clone();
        for r in [&self.ring, &self.next].into_iter().flatten() {
            s.absorb(r.stats());
        }
        s
    }

    /// Whether [`Node::submit`] would refuse a message of `len` payload
    /// bytes for backpressure ([`SubmitError::Backlogged`]) now.
    pub fn backlogged_for(&self, len: usize) -> bool {
        self.out.user.len() >= self.cfg.max_pending_messages
            || self.out.user.bytes() + len > self.cfg.max_pending_bytes
    }

    /// Submits a message for ordered delivery to every member (this one
    /// included). It waits while membership changes; it is never lost unless
    /// this daemon crashes. Returns its id.
    pub fn submit(
        &mut self,
        now: Time,
        service: Service,
        groups: Groups,
        payload: Bytes,
    ) -> Result<MsgId, SubmitError> {
        if payload.len() > self.cfg.max_message || service.is_control() {
            return Err(SubmitError::TooLarge(payload.len()));
        }
        // A list that cannot ride in a frame would wedge the send queue.
        if groups.encoded_len() > self.cfg.max_group_list() {
            return Err(SubmitError::GroupListTooLong(groups.encoded_len()));
        }
        if self.backlogged_for(payload.len()) {
            return Err(SubmitError::Backlogged);
        }
        let msg_seq = self.next_msg_seq;
        self.next_msg_seq += 1;
        self.out.user.push(Pending { msg_seq, service, groups, payload, sent: 0 });
        self.retired.messages_submitted += 1;
        if matches!(self.state, State::Operational) {
            if let Some(r) = &mut self.ring {
                r.wake(now);
                r.request_token();
            }
        }
        Ok(MsgId { origin: self.id, seq: msg_seq })
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        // The rings' own queues are read in place: no move per datagram.
        // Only the current ring's own packets and tokens go sealed: membership
        // messages (joins, commit tokens, beacons) reach daemons outside it,
        // and the next ring has no key yet. Those are signed.
        let (t, ring_own) = if let Some(t) = self.transmits.pop_front() {
            (t, false)
        } else if self.left {
            // Only the leave's joins go out; the stopped rings' queues stay.
            return None;
        } else if let Some(t) = self.ring.as_mut().and_then(Ring::poll_transmit) {
            (t, true)
        } else {
            (self.next.as_mut().and_then(Ring::poll_transmit)?, false)
        };
        match &mut self.sec {
            None => Some(t),
            Some(sec)
                if ring_own
                    && sec.cfg.mode != LinkMode::None
                    && !matches!(self.state, State::Operational) =>
            {
                // A stopped ring's packet queued before the change began:
                // no longer sealable (the ring's key is not in use), and
                // recovery carries what it holds. Dropped, not sent signed.
                sec.stats.dropped_unsealable += 1;
                self.poll_transmit()
            }
            Some(sec) => {
                let to = match t.dest {
                    Dest::All => None,
                    Dest::Node(n) => Some(n),
                };
                let bytes = sec.link.seal(&t.bytes, to, ring_own, &mut sec.stats);
                Some(Transmit { dest: t.dest, bytes })
            }
        }
    }

    /// The next delivery or configuration event.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.left {
            return None;
        }
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        // In operation the ring's deliveries are read in place (no move per
        // message); during a change `pump` orders them among configurations.
        if matches!(self.state, State::Operational) {
            loop {
                let d = self.ring.as_mut()?.poll_delivery()?;
                if let Some(d) = self.screen(d) {
                    return Some(Event::Deliver(d));
                }
                if let Some(e) = self.events.pop_front() {
                    return Some(e);
                }
            }
        }
        None
    }

    /// One delivery of the current ring on its way to the owner: key
    /// agreement messages are acted on here and control messages dropped;
    /// a client message is kept (and counted against the key's data-out)
    /// unless it comes before the ring's key, where nothing but key
    /// agreement may stand.
    fn screen(&mut self, d: Delivery) -> Option<Delivery> {
        if d.service == Service::KeyAgreement {
            self.key_message(&d, true);
            return None;
        }
        if d.service.is_control() {
            return None;
        }
        if let Some(sec) = &mut self.sec {
            if sec.pending.is_some() {
                sec.stats.bad_agreement_messages += 1;
                return None;
            }
            sec.bytes_under_key += d.payload.len() as u64;
        }
        Some(d)
    }

    /// Whether key agreement messages must be taken off the ring as they
    /// arrive (a run in progress), rather than when the owner polls.
    fn agreeing(&self) -> bool {
        self.sec.as_ref().is_some_and(|s| s.agreement.as_ref().is_some_and(Agreement::running))
    }

    /// Moves the current ring's deliveries into the event queue, acting on
    /// key agreement messages on the way (during a run only).
    fn pump_keys(&mut self) {
        while self.agreeing() && matches!(self.state, State::Operational) {
            let Some(d) = self.ring.as_mut().and_then(Ring::poll_delivery) else { break };
            if let Some(d) = self.screen(d) {
                self.events.push_back(Event::Deliver(d));
            }
        }
    }

    /// Acts on one delivered key agreement message. Not `live`: the ring
    /// is ending (a delivery of its regular configuration during a change),
    /// nothing more is sent in it; only whether its first key is agreed
    /// (and its regular configuration shown) still counts.
    fn key_message(&mut self, d: &Delivery, live: bool) {
        let now = self.now;
        let Some(sec) = self.sec.as_mut() else { return };
        let Some(agreement) = sec.agreement.as_mut() else { return };
        let was_running = agreement.running();
        let out = agreement.handle(d.ring_id, d.id.origin, &d.payload);
        if !was_running && agreement.running() {
            sec.run_started = now; // a refresh began
        }
        let out = match out {
            Ok(out) => out,
            Err(why) => {
                sec.stats.bad_agreement_messages += 1;
                let origin = d.id.origin;
                sec.alert(now, 0xA0, origin, || {
                    format!("key agreement message from daemon {origin} rejected: {why}")
                });
                return;
            }
        };
        for env in out.send.into_iter().filter(|_| live) {
            self.push_ctl(Service::KeyAgreement, env);
        }
        if let Some(kid) = out.holds.filter(|_| live) {
            let Some(sec) = self.sec.as_mut() else { return };
            let members =
                self.ring.as_ref().filter(|r| r.ring_id() == d.ring_id).map(|r| r.members().to_vec());
            if let Some(members) = members {
                let said = sec.checks.entry(kid).or_default();
                said.insert(d.id.origin);
                if members.iter().all(|m| said.contains(m)) {
                    sec.checks.remove(&kid);
                    self.announce(kid);
                    self.adopt(kid);
                }
            }
        }
        if out.agreed {
            let Some(sec) = self.sec.as_mut() else { return };
            let Some(agreement) = sec.agreement.as_ref() else { return };
            let (Some(k), Some(link_key)) = (agreement.key(), agreement.link_key()) else { return };
            let (ring_id, epoch, kid) = (k.ring_id, k.epoch, k.link);
            let server = k.key.clone();
            let check = agreement.check(ring_id, kid);
            if live {
                // (An ending ring's key never seals anything.)
                sec.link.add_key(&link_key);
                if sec.derived.len() == 8 {
                    sec.derived.pop_front();
                }
                sec.derived.push_back((kid, ring_id, epoch, server.clone()));
            }
            sec.stats.keys_agreed += 1;
            sec.stats.rekeyed_at_ns = Some(now.as_nanos());
            sec.agreed_at = now;
            sec.bytes_under_key = 0;
            sec.refresh_asked = false;
            if let Some(c) = sec.pending.take() {
                sec.announced = Some((ring_id, epoch));
                if let Some((members, delivered)) = sec.held.take() {
                    // The transitional configuration out of the last regular
                    // one shown comes right before this one.
                    self.events.push_back(Event::Configuration(Configuration {
                        kind: ConfigKind::Transitional,
                        ring_id: c.ring_id,
                        members: members.into_iter().collect(),
                    }));
                    self.events.extend(delivered.into_iter().map(Event::Deliver));
                }
                self.events.push_back(Event::ServerKey(ServerKey { ring_id, epoch, key: server.clone() }));
                let Some(sec) = self.sec.as_mut() else { return };
                sec.stats.last_agreement_ns = Some(now.saturating_since(sec.changed_at).as_nanos() as u64);
                sec.stats.last_run_ns = Some(now.saturating_since(sec.installed_at).as_nanos() as u64);
                // Client messages wait until datagrams go sealed (`adopt`).
                self.events.push_back(Event::Configuration(c));
            }
            // Sealing starts once every member says it holds the key.
            if live {
                self.push_ctl(Service::KeyAgreement, check);
            }
        }
    }

    /// Every member said it holds key `kid` (at the same place in the order
    /// everywhere): a refreshed key of our ring goes to the owner here.
    fn announce(&mut self, kid: KeyId) {
        let Some(sec) = self.sec.as_mut() else { return };
        let Some((_, ring_id, epoch, key)) = sec.derived.iter().find(|(k, _, _, _)| *k == kid) else {
            return;
        };
        let (ring_id, epoch) = (*ring_id, *epoch);
        if self.ring.as_ref().is_none_or(|r| r.ring_id() != ring_id)
            || sec.announced.is_some_and(|(r, e)| r == ring_id && e >= epoch)
        {
            return;
        }
        let key = key.clone();
        sec.announced = Some((ring_id, epoch));
        self.events.push_back(Event::ServerKey(ServerKey { ring_id, epoch, key }));
    }

    /// Key `kid` is held by every member of its ring (it became stable here,
    /// or a member sealed a datagram with it): if it is our ring's and newer
    /// than the key in use, seal with it from now on.
    fn adopt(&mut self, kid: KeyId) {
        let Some(sec) = self.sec.as_mut() else { return };
        let Some(&(_, ring_id, epoch, _)) = sec.derived.iter().find(|(k, _, _, _)| *k == kid) else { return };
        if self.ring.as_ref().is_none_or(|r| r.ring_id() != ring_id)
            || sec.ring_key.is_some_and(|(rk, _, e)| rk == ring_id && e >= epoch)
        {
            return;
        }
        // Whatever our phase, every member of that ring holds the key: it
        // seals that ring's packets if recovery carries them on.
        sec.ring_key = Some((ring_id, kid, epoch));
        sec.stats.link_key = Some(kid.to_string());
        sec.stats.epoch = epoch;
        if !matches!(self.state, State::Operational) {
            return;
        }
        sec.link.send_with(Some(kid));
        if !self.out.user_allowed {
            // Client messages of this ring go sealed from the start.
            self.out.user_allowed = true;
            let now = self.now;
            if let Some(r) = &mut self.ring {
                r.wake(now);
            }
        }
    }

    /// Queues a control message on the current ring.
    fn push_ctl(&mut self, service: Service, payload: Bytes) {
        let msg_seq = self.next_ctl_seq;
        self.next_ctl_seq += 1;
        self.out.ctl.push(Pending { msg_seq, service, groups: Groups::none(), payload, sent: 0 });
        let now = self.now;
        if let Some(r) = &mut self.ring {
            r.wake(now);
        }
    }

    /// Asks the ring for a new server key now (an operator's `ringfence ctl
    /// rekey`): the same ordered refresh request the representative sends
    /// when `refresh_interval_s` or `refresh_bytes` says so. Refused (with
    /// the reason) without key agreement, outside a ring whose key is
    /// agreed, or while a run is going on.
    pub fn request_refresh(&mut self, now: Time) -> Result<(), &'static str> {
        self.now = now;
        if self.left {
            return Err("this daemon left the ring");
        }
        let Some(r) = self.ring.as_ref().filter(|_| matches!(self.state, State::Operational)) else {
            return Err("no ring installed (membership is changing): try again");
        };
        let ring_id = r.ring_id();
        let Some(sec) = self.sec.as_mut() else { return Err("link_security is \"none\": no server key") };
        let Some(agreement) = sec.agreement.as_ref() else {
            return Err("link_security is \"none\": no server key");
        };
        if !sec.refresh_possible(ring_id) {
            return Err("a key agreement is already running: try again");
        }
        sec.refresh_asked = true;
        sec.stats.refreshes += 1;
        let env = agreement.refresh_request(ring_id);
        self.push_ctl(Service::KeyAgreement, env);
        Ok(())
    }

    /// Leaves the cluster for good, as a daemon that is stopping: the other
    /// daemons form a new ring at once instead of waiting for the token
    /// timeout. Totem's membership protocol has no leave message; as
    /// Corosync does on a clean shutdown, this daemon sends a join naming
    /// itself in its fail set (Totem, section 4.2: "a processor ... that
    /// is in the fail set of a join message" is not admitted to the
    /// membership). Receivers in operation start a gather with the ring's
    /// members and take the failure from the join; they agree among
    /// themselves in one or two join rounds. The join goes twice (a lost
    /// datagram then only costs the token timeout, as before).
    ///
    /// From then on the node is inert: [`Node::phase`] is
    /// [`Phase::Left`], datagrams and timeouts are ignored, and nothing is
    /// sent or delivered. Drain [`Node::poll_transmit`] once after calling
    /// it.
    pub fn leave(&mut self, now: Time) {
        if self.left {
            return;
        }
        self.now = now;
        let procs: BTreeSet<NodeId> = match &self.state {
            State::Operational => self.ring.as_ref().map(|r| r.members().iter().copied().collect()),
            State::Gather(g) | State::Commit { gather: g, .. } | State::Recovery { gather: g, .. } => {
                Some(g.procs.clone())
            }
        }
        .unwrap_or_default();
        let ring_id = self.ring.as_ref().map_or(RingId { seq: 0, rep: self.id }, Ring::ring_id);
        if let Some(r) = &mut self.ring {
            r.stop();
            r.freeze(false);
        }
        if let Some(n) = self.next.take() {
            self.retired.absorb(n.stats());
        }
        if let Some(sec) = &mut self.sec {
            // Daemons that already formed another ring hear it too: signed.
            sec.link.send_with(None);
        }
        self.sent_commit = None;
        self.transmits.clear();
        self.events.clear();
        self.out.ctl.clear();
        self.out.user_allowed = false;
        let mut procs = procs;
        procs.insert(self.id);
        let join = Bytes::from(
            Join {
                sender: self.id,
                ring_id,
                max_ring_seq: self.max_ring_seq,
                procs: procs.into_iter().collect(),
                fails: vec![self.id],
                suspects: Vec::new(),
            }
            .encode(),
        );
        for _ in 0..2 {
            self.transmits.push_back(Transmit { dest: Dest::All, bytes: join.clone() });
        }
        self.left = true;
    }

    /// The representative asks for a refresh when the policy says so.
    fn maybe_refresh(&mut self, now: Time) {
        let Some(r) = self.ring.as_ref().filter(|_| matches!(self.state, State::Operational)) else { return };
        if r.members()[0] != self.id {
            return;
        }
        let ring_id = r.ring_id();
        let Some(sec) = self.sec.as_mut() else { return };
        if !sec.refresh_possible(ring_id)
            || !crate::security::refresh_due(&sec.cfg, sec.agreed_at, now, sec.bytes_under_key)
        {
            return;
        }
        let Some(agreement) = sec.agreement.as_ref() else { return };
        sec.refresh_asked = true;
        sec.stats.refreshes += 1;
        let env = agreement.refresh_request(ring_id);
        self.push_ctl(Service::KeyAgreement, env);
    }

    /// The token timeout in force: the configured one, or while token
    /// rotations have lately been slow (members starved of CPU: a loaded
    /// machine, short VM pauses), four times the slowest of them, up to
    /// four times the configured one. Issue 15: under scheduling stalls of 5 to
    /// 100 ms at every daemon, the token was late 300 ms at one of them now
    /// and then, and the ring broke up with no daemon failed.
    fn token_timeout(&self) -> Duration {
        let base = self.cfg.token_timeout;
        if self.now < self.slow_until { (self.slow_rotation * 4).clamp(base, base * 4) } else { base }
    }

    /// When this daemon gives up waiting on the others (the token, a
    /// consensus, a commit, a recovery), if it is waiting.
    fn failure_deadline(&self) -> Option<Time> {
        match &self.state {
            State::Operational => self
                .ring
                .as_ref()
                .filter(|r| !r.holds_token())
                .map(|_| self.last_token_at + self.token_timeout()),
            State::Gather(g) => Some(g.consensus_at),
            State::Commit { deadline, .. } => Some(*deadline),
            State::Recovery { rec, .. } => Some(rec.deadline),
        }
    }

    /// The next deadline at which [`Node::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.left {
            return None;
        }
        let mut t: Option<Time> = None;
        let mut consider = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.sent_commit.as_ref().map(|s| s.deadline));
        match &self.state {
            State::Operational => {
                if let Some(r) = &self.ring {
                    consider(r.poll_timeout());
                    if !r.holds_token() {
                        consider(Some(self.last_token_at + self.token_timeout()));
                    }
                    if let Some(sec) = &self.sec {
                        consider(sec.agreement_deadline(self.cfg.token_timeout));
                    }
                    if r.members()[0] == self.id {
                        consider(Some(self.beacon_at));
                        if let Some(sec) = self.sec.as_ref().filter(|s| s.refresh_possible(r.ring_id())) {
                            consider(sec.cfg.refresh_after.map(|d| sec.agreed_at + d));
                        }
                    }
                }
            }
            State::Gather(g) => {
                consider(Some(g.join_at));
                consider(Some(g.consensus_at));
            }
            State::Commit { deadline, .. } => consider(Some(*deadline)),
            State::Recovery { rec, .. } => {
                consider(self.next.as_ref().and_then(Ring::poll_timeout));
                consider(Some(rec.deadline));
            }
        }
        t
    }

    /// Handles expired timers.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.left {
            return;
        }
        self.excuse_stall(now);
        self.now = now;
        let deadline = self.sec.as_ref().and_then(|s| s.agreement_deadline(self.cfg.token_timeout));
        if matches!(self.state, State::Operational) && deadline.is_some_and(|d| d <= now) {
            // A key agreement that cannot finish (a member that never
            // answers, a failed run): start the membership over, which
            // runs the agreement again in a new ring.
            if let (Some(sec), Some(r)) = (self.sec.as_mut(), self.ring.as_ref()) {
                sec.stats.agreements_abandoned += 1;
                let ring = r.ring_id();
                sec.alert(now, 0xA1, self.id, || {
                    format!("key agreement in ring {ring} did not finish: forming the ring again")
                });
                let procs = r.members().iter().copied().collect();
                self.enter_gather(now, procs, BTreeSet::new());
            }
        }
        self.timeout(now);
        if self.sec.is_some() {
            self.pump_keys();
            self.maybe_refresh(now);
        }
    }

    /// A timer that fires long after its deadline means this daemon was not
    /// running (SIGSTOP, a VM pause, CPU starvation): the time it lost does
    /// not count against the others. Failure deadlines move on by the
    /// lateness, so the datagrams waiting in our socket (the token, joins)
    /// are read before anyone is suspected (issue 15: a paused daemon woke
    /// up, timed out the token first, then took the joins of the round that
    /// had left it out for current and went off alone).
    ///
    /// A smaller lateness gets a grace too, once per failure deadline: the
    /// token (or a join, a commit token) may wait in our socket, sent while
    /// we were stalled, and a runtime may hand over its timers before its
    /// datagrams. Over half a token retransmission late (simulator seed
    /// 1898: a daemon stalled for 90 ms woke 21 ms past its token deadline
    /// with the token read but not yet handled) the deadline moves on by
    /// the lateness plus one retransmission interval; less late, even on
    /// time, by the lateness plus [`Node::read_grace`] (seed 7909: a daemon
    /// stalled for 95 ms woke 0.8 ms past its token deadline, the token in
    /// its socket, and the ring re-formed with the same members). Once per
    /// deadline, so a machine whose timers always fire late still detects a
    /// lost token, soon after.
    fn excuse_stall(&mut self, now: Time) {
        let Some(due) = self.poll_timeout() else { return };
        let late = now.saturating_since(due);
        let failure = self.failure_deadline().filter(|&f| f <= now && f > self.graced_until);
        // Whether we did not run for a while (then our joins are stale too).
        let (by, stalled) = if late > self.cfg.token_timeout / 2 {
            self.retired.stalls += 1;
            (late + self.cfg.token_retransmit, true)
        } else if let Some(f) = failure {
            let by = now.saturating_since(f);
            let stalled = by > self.cfg.token_retransmit / 2;
            let grace = if stalled {
                self.retired.late_timers += 1;
                self.cfg.token_retransmit
            } else {
                self.read_grace()
            };
            self.graced_until = now + grace;
            (by + grace, stalled)
        } else {
            return;
        };
        self.last_token_at = self.last_token_at + by;
        match &mut self.state {
            State::Operational => {}
            State::Gather(g) => {
                g.consensus_at = g.consensus_at + by;
                if stalled {
                    g.join_at = now;
                }
            }
            State::Commit { deadline, .. } => *deadline = *deadline + by,
            State::Recovery { rec, .. } => rec.deadline = rec.deadline + by,
        }
        if let Some(sec) = &mut self.sec {
            sec.run_started = sec.run_started + by;
        }
    }

    /// How long a failure deadline that fell due is put off, once, so that
    /// the runtime hands over what waits in its sockets before this daemon
    /// acts on the silence (see [`Node::excuse_stall`]): a tenth of the
    /// token retransmission interval (2 ms by default), at least 100 us.
    fn read_grace(&self) -> Duration {
        (self.cfg.token_retransmit / 10).max(Duration::from_micros(100))
    }

    fn timeout(&mut self, now: Time) {
        if let Some(s) = &mut self.sent_commit {
            if s.deadline <= now {
                s.deadline = now + self.cfg.token_retransmit;
                let (to, bytes) = (s.to, s.bytes.clone());
                self.transmits.push_back(Transmit { dest: Dest::Node(to), bytes });
            }
        }
        let token_timeout = self.token_timeout();
        match &mut self.state {
            State::Operational => {
                let Some(r) = &mut self.ring else { return };
                let was_holding = r.holds_token();
                r.handle_timeout(now, &mut self.out);
                if was_holding && !r.holds_token() {
                    self.last_token_at = now;
                }
                // Token lost, or packets missing that no member sends
                // however often asked (Totem's "fail to receive").
                if r.failed_to_receive() || !r.holds_token() && now >= self.last_token_at + token_timeout {
                    let procs = r.members().iter().copied().collect();
                    self.enter_gather(now, procs, BTreeSet::new());
                } else if r.members()[0] == self.id && now >= self.beacon_at {
                    self.beacon_at = now + self.cfg.merge_interval;
                    // While we hold daemons in quarantine we would refuse
                    // the merge our beacon starts at them (seed 14413): no
                    // beacon until the quarantine ends. Others' beacons and
                    // echoes still start merges with daemons not held.
                    if !self.quarantine.values().any(|q| q.until > now) {
                        let b = Beacon { sender: self.id, ring_id: r.ring_id(), echo: false };
                        self.transmits
                            .push_back(Transmit { dest: Dest::All, bytes: Bytes::from(b.encode()) });
                    }
                }
            }
            State::Gather(g) => {
                if now >= g.consensus_at {
                    self.consensus_timeout(now);
                } else if now >= g.join_at {
                    g.join_at = now + self.cfg.join_interval;
                    self.send_join();
                }
            }
            State::Commit { gather, deadline, .. } => {
                if now >= *deadline {
                    let g = gather.clone();
                    self.enter_gather(now, g.procs, g.own);
                }
            }
            State::Recovery { gather, rec } => {
                if now >= rec.deadline || self.next.as_ref().is_some_and(Ring::failed_to_receive) {
                    let g = gather.clone();
                    self.enter_gather(now, g.procs, g.own);
                } else if let Some(n) = &mut self.next {
                    n.handle_timeout(now, &mut self.out);
                }
            }
        }
        self.pump(now);
    }

    /// Handles one datagram from the network. Undecodable datagrams, and
    /// datagrams of rings this daemon has no business with, are dropped and
    /// counted.
    pub fn handle_datagram(&mut self, now: Time, bytes: Bytes) {
        self.handle_received(now, Received::Shared(bytes));
    }

    /// As [`Node::handle_datagram`], for a datagram in a buffer of its own
    /// (the runtime's receive path): a sealed datagram is opened in place
    /// and what the node keeps of it are slices of this one buffer.
    pub fn handle_datagram_owned(&mut self, now: Time, buf: BytesMut) {
        self.handle_received(now, Received::Owned(buf));
    }

    fn handle_received(&mut self, now: Time, bytes: Received) {
        if self.left {
            return;
        }
        self.now = now;
        let mut seen_key = None;
        let mut from = None;
        let bytes = match &mut self.sec {
            None => bytes.freeze(),
            Some(sec) => {
                let raw = bytes.as_slice();
                let peer = NodeId(u16::from_be_bytes([
                    raw.get(9).copied().unwrap_or(0xff),
                    raw.get(10).copied().unwrap_or(0xff),
                ]));
                match sec.link.open_received(bytes) {
                    Ok((sender, inner, None)) => {
                        from = Some(sender);
                        inner
                    }
                    Ok((sender, inner, Some(kid))) => {
                        // A member sealed with it: every member holds it.
                        seen_key = Some(kid).filter(|k| sec.ring_key.is_none_or(|(_, r, _)| r != *k));
                        from = Some(sender);
                        inner
                    }
                    Err(Reject::UnknownKey) => {
                        // Routine for a daemon outside the ring (unicast
                        // "all" reaches every configured daemon): counted,
                        // not alerted.
                        sec.stats.count(Reject::UnknownKey);
                        return;
                    }
                    Err(r) => {
                        sec.stats.count(r);
                        let mode = sec.cfg.mode.name();
                        // Before authentication the claimed sender is anyone's
                        // guess: one alert slot per kind, not per claimed id.
                        let slot = match r {
                            Reject::BadSignature | Reject::AuthFailure | Reject::Replay => peer,
                            _ => NodeId(u16::MAX),
                        };
                        sec.alert_as(now, r as u8, slot, peer, || match r {
                            Reject::SettingsMismatch => format!(
                                "refusing daemon {peer}: its security settings (link_security, public keys) \
                                 differ from ours (link_security = {mode})"
                            ),
                            Reject::UnknownSender => format!("refusing daemon {peer}: no public key for it in the cluster config"),
                            Reject::BadSignature => format!(
                                "refusing a datagram claiming to be from daemon {peer}: bad signature (wrong identity?)"
                            ),
                            Reject::AuthFailure => format!("dropped a datagram from daemon {peer}: authentication failed"),
                            Reject::Replay => format!("dropped a replayed datagram from daemon {peer}"),
                            Reject::UnknownKey => String::new(),
                            Reject::Malformed => format!("dropped a malformed datagram (claimed sender {peer})"),
                            Reject::Misdirected => format!(
                                "dropped a datagram from daemon {peer} addressed to another daemon (redirected)"
                            ),
                        });
                        return;
                    }
                }
            }
        };
        self.handle_plain(now, from, bytes);
        if let Some(kid) = seen_key {
            self.adopt(kid);
        }
        if self.sec.is_some() {
            self.pump_keys();
            self.maybe_refresh(now);
        }
    }

    /// Acts on one protocol datagram (what the link layer let through;
    /// `from`: the sender its header names, `None` without a link layer).
    fn handle_plain(&mut self, now: Time, from: Option<NodeId>, bytes: Bytes) {
        // A data packet's chunks go into a vector recycled from the
        // current ring's collected packets: no allocation per packet.
        let decoded = match peek_kind(&bytes) {
            Ok(KIND_DATA) => {
                let spare = self.ring.as_mut().map(Ring::spare_chunks).unwrap_or_default();
                DataPacket::decode_into(bytes.clone(), spare).map(Datagram::Data)
            }
            _ => Datagram::decode(bytes.clone()),
        };
        match decoded {
            Ok(Datagram::Data(p)) => {
                if let Some(n) = self.next.as_mut().filter(|n| n.ring_id() == p.ring_id) {
                    n.handle_packet(bytes, p);
                    self.sent_commit = None;
                } else if let Some(r) = self.ring.as_mut().filter(|r| r.ring_id() == p.ring_id) {
                    r.handle_packet(bytes, p);
                } else {
                    self.foreign(now, p.sender, p.ring_id);
                }
            }
            Ok(Datagram::Token(t)) => {
                if let Some(n) = self.next.as_mut().filter(|n| n.ring_id() == t.ring_id) {
                    if n.handle_token(now, t, from, &mut self.out) {
                        self.sent_commit = None;
                        if let State::Recovery { rec, .. } = &mut self.state {
                            rec.deadline = now + self.cfg.token_timeout;
                        }
                    }
                } else if let Some(r) = self.ring.as_mut().filter(|r| r.ring_id() == t.ring_id) {
                    if matches!(self.state, State::Operational) && r.handle_token(now, t, from, &mut self.out)
                    {
                        // A slow rotation (a member starved of CPU held the
                        // token) stretches the token timeout for a while.
                        let rotation = now.saturating_since(self.last_token_at);
                        if rotation > self.cfg.token_timeout / 4 {
                            let before =
                                if now < self.slow_until { self.slow_rotation } else { Duration::ZERO };
                            self.slow_rotation = before.max(rotation);
                            self.slow_until = now + SLOW_MEMORY;
                        }
                        self.last_token_at = now;
                        if let Some((seq, stuck)) = r.failing_to_receive(now) {
                            let (ring, procs) = (r.ring_id(), r.members().iter().copied().collect());
                            let me = self.id;
                            self.notice(now, 1, me, || {
                                format!(
                                    "daemon {me} has missed packet {seq} of ring {ring} for {} ms while the \
                                     token kept coming (a one-way cut from some member?): forming the ring \
                                     again without the members it cannot hear",
                                    stuck.as_millis()
                                )
                            });
                            self.enter_gather(now, procs, BTreeSet::new());
                        }
                    }
                } else {
                    self.retired.foreign += 1;
                }
            }
            Ok(Datagram::Join(j)) => self.handle_join(now, j),
            Ok(Datagram::Commit(c)) => self.handle_commit(now, c),
            Ok(Datagram::Beacon(b)) => {
                // Only its sender sends a beacon: we hear that daemon. One
                // we could not hear may still not hear us (a daemon behind
                // a one-way cut, or a host whose incoming traffic is cut):
                // merging with it would only time out and re-form our ring,
                // again at every beacon. We echo it instead; its echo (or a
                // join) proves the link works both ways.
                if self.unheard.contains(&b.sender) && !b.echo {
                    self.echo_beacon(now, b.sender);
                } else {
                    self.unheard.remove(&b.sender);
                    self.foreign(now, b.sender, b.ring_id);
                }
            }
            Ok(Datagram::TokenRequest(t)) => {
                if let Some(r) = self.ring.as_mut().filter(|_| matches!(self.state, State::Operational)) {
                    r.handle_token_request(now, &t, from);
                }
            }
            Err(_) => self.retired.bad_datagrams += 1,
        }
        self.pump(now);
    }

    /// Tells `to`, a daemon we could not hear, that we hear it now (at most
    /// once per half merge interval): if it hears us too, it starts the
    /// merge.
    fn echo_beacon(&mut self, now: Time, to: NodeId) {
        let last = self.echoed.entry(to).or_insert(Time::ZERO);
        if *last != Time::ZERO && now.saturating_since(*last) < self.cfg.merge_interval / 2 {
            return;
        }
        *last = now.max(Time::from_nanos(1));
        self.retired.beacon_echoes += 1;
        let ring_id =
            self.ring.as_ref().map_or(RingId { seq: self.max_ring_seq, rep: self.id }, Ring::ring_id);
        let b = Beacon { sender: self.id, ring_id, echo: true };
        self.transmits.push_back(Transmit { dest: Dest::Node(to), bytes: Bytes::from(b.encode()) });
    }

    /// The daemons held in quarantine at `now`.
    fn held_in_quarantine(&self, now: Time) -> impl Iterator<Item = NodeId> + '_ {
        self.quarantine.iter().filter(move |(_, q)| q.until > now).map(|(n, _)| *n)
    }

    fn quarantined(&self, id: NodeId, now: Time) -> bool {
        self.quarantine.get(&id).is_some_and(|q| q.until > now)
    }

    fn add_quarantine(&mut self, id: NodeId, now: Time) {
        let (min, max) = (self.cfg.quarantine_min, self.cfg.quarantine_max);
        let q = self.quarantine.entry(id).or_insert(Quarantine { until: now, backoff: Duration::ZERO });
        // A repeat doubles it; one that comes long after the last ended
        // starts afresh.
        let fresh = q.backoff.is_zero() || now.saturating_since(q.until) > max;
        q.backoff = if fresh { min } else { (q.backoff * 2).min(max) };
        q.until = now + q.backoff;
    }

    /// A sign of another ring: a data packet or a beacon. In operation, a
    /// daemon outside our ring, or a member that moved to a newer ring,
    /// starts a membership change (a merge).
    fn foreign(&mut self, now: Time, sender: NodeId, ring_id: RingId) {
        self.retired.foreign += 1;
        if self.quarantined(sender, now) {
            return;
        }
        if self.unheard.contains(&sender) {
            // A packet of a daemon we could not hear: as its beacon (above).
            self.echo_beacon(now, sender);
            return;
        }
        let seq = self.bound_ring_seq(ring_id.seq);
        if seq > self.max_ring_seq {
            // A newer ring exists: a gather in progress moves to a new round,
            // so that the daemons of that ring listen to our joins.
            self.max_ring_seq = seq;
            let me = self.id;
            if let State::Gather(g) = &mut self.state {
                g.new_round(seq, me);
                self.send_join();
            }
        }
        if sender == self.id || sender == NodeId::NONE {
            return;
        }
        if !matches!(self.state, State::Operational) {
            return;
        }
        let Some(r) = &self.ring else { return };
        let mut procs: BTreeSet<NodeId> = r.members().iter().copied().collect();
        if !r.is_member(sender) {
            procs.insert(sender);
        } else if ring_id.seq <= r.ring_id().seq {
            return; // a late packet of an older ring
        }
        self.enter_gather(now, procs, BTreeSet::new());
    }

    fn enter_gather(&mut self, now: Time, mut procs: BTreeSet<NodeId>, mut fails: BTreeSet<NodeId>) {
        self.retired.membership_changes += 1;
        if let Some(sec) = &mut self.sec {
            // Membership messages reach daemons outside our ring: signed.
            sec.link.send_with(None);
            sec.checks.clear();
            if matches!(self.state, State::Operational) {
                // The change begins (a gather restarted within it does not).
                sec.changed_at = now;
            }
        }
        if let Some(r) = &mut self.ring {
            r.stop();
            r.freeze(false);
        }
        if let Some(n) = self.next.take() {
            self.retired.absorb(n.stats());
        }
        self.sent_commit = None;
        self.out.ctl.clear();
        self.out.user.restart_partial();
        self.out.user_allowed = false;
        procs.insert(self.id);
        // Daemons we still cannot hear stay suspects from the first join on.
        fails.extend(self.unheard.iter().filter(|u| procs.contains(u)).copied());
        fails.remove(&self.id);
        let mut g = Gather {
            round: self.max_ring_seq,
            procs,
            own: fails,
            fails: BTreeSet::new(),
            stuck: BTreeSet::new(),
            reports: BTreeMap::new(),
            heard: BTreeSet::new(),
            agreed: BTreeSet::from([self.id]),
            join_at: now + self.cfg.join_interval,
            consensus_at: now + self.cfg.consensus_timeout,
        };
        g.resolve(self.id);
        self.state = State::Gather(g);
        self.send_join();
        self.check_consensus(now, false);
    }

    fn send_join(&mut self) {
        let State::Gather(g) = &self.state else { return };
        let ring_id = self.ring.as_ref().map_or(RingId { seq: 0, rep: self.id }, Ring::ring_id);
        let j = Join {
            sender: self.id,
            ring_id,
            max_ring_seq: g.round,
            procs: g.procs.iter().copied().collect(),
            fails: g.fails.iter().copied().collect(),
            suspects: g.own.iter().filter(|o| g.fails.contains(o)).copied().collect(),
        };
        self.transmits.push_back(Transmit { dest: Dest::All, bytes: Bytes::from(j.encode()) });
    }

    /// `seq` from a datagram, taken as at most [`MAX_RING_STEP`] above the
    /// highest ring sequence known (counted when it was further).
    fn bound_ring_seq(&mut self, seq: u64) -> u64 {
        let limit = self.max_ring_seq.saturating_add(MAX_RING_STEP);
        if seq > limit {
            self.retired.ring_seq_bounded += 1;
        }
        seq.min(limit)
    }

    fn handle_join(&mut self, now: Time, mut j: Join) {
        if j.sender == self.id {
            return;
        }
        // We hear it: whatever we suspected of it, it is not silent to us.
        self.unheard.remove(&j.sender);
        j.max_ring_seq = self.bound_ring_seq(j.max_ring_seq);
        let accuses_us = j.suspects.contains(&self.id);
        // A join of a round that began before our ring was formed is stale.
        let stale_from = self
            .ring
            .as_ref()
            .filter(|r| matches!(self.state, State::Operational) && j.max_ring_seq < r.ring_id().seq)
            .map(|r| r.is_member(j.sender));
        if let Some(member) = stale_from {
            // Its sender, outside our ring, would wait for our agreement
            // until its consensus timeout and then hold us "stuck" in
            // quarantine (seed 2367: three daemons gathered in a round older
            // than the ring a fourth had just formed alone, timed it out,
            // and the quarantines kept the rings apart for 2 s). Our ring's
            // beacon, sent to it, moves its gather to a round we take part in.
            if !member && !self.quarantined(j.sender, now) {
                self.echo_beacon(now, j.sender);
            }
            return;
        }
        // A daemon our last change left out for what others said of it (one
        // that a member cannot hear) does not start a change here until its
        // quarantine ends: otherwise, behind a lasting one-way cut, its joins
        // would break the ring up as fast as it forms (issue 15). It takes
        // part in a change that something else started.
        let outsider = match &self.state {
            State::Operational => self.ring.as_ref().is_some_and(|r| !r.is_member(j.sender)),
            State::Commit { members, .. }
            | State::Recovery { rec: Recovery { token: CommitToken { members, .. }, .. }, .. } => {
                !members.contains(&j.sender)
            }
            State::Gather(_) => false,
        };
        if outsider && self.quarantined(j.sender, now) {
            self.retired.quarantined_joins += 1;
            return;
        }
        if let State::Gather(g) = &self.state {
            if j.max_ring_seq < g.round {
                return; // stale round: the sender will learn ours from our joins
            }
        }
        self.max_ring_seq = self.max_ring_seq.max(j.max_ring_seq);
        let jp: BTreeSet<NodeId> = j.procs.iter().copied().collect();
        let jf: BTreeSet<NodeId> = j.fails.iter().copied().collect();
        let their_members: Vec<NodeId> = jp.difference(&jf).copied().collect();
        let restart_from = match &self.state {
            // Only joins of rounds that began after our ring was formed get
            // here (see above): a member or an outsider wants a new ring.
            State::Operational => {
                if accuses_us {
                    // The round that left us out, read late (it waited in
                    // our socket while we were paused, say): we start a
                    // newer round, so its stale accusations are not
                    // counted; if its sender still cannot hear us, it says
                    // so again in that round.
                    self.max_ring_seq = self.max_ring_seq.max(j.max_ring_seq.saturating_add(1));
                }
                match &self.ring {
                    Some(r) => Some((r.members().iter().copied().collect(), BTreeSet::new())),
                    None => Some((BTreeSet::new(), BTreeSet::new())),
                }
            }
            State::Commit { gather, members, ring_id, .. }
            | State::Recovery { gather, rec: Recovery { token: CommitToken { members, ring_id, .. }, .. } } =>
            {
                // A join of the round that formed this ring: harmless if it
                // agrees, or if its sender is not to be a member.
                let old_round = j.max_ring_seq < ring_id.seq;
                if old_round && (their_members == *members || !members.contains(&j.sender)) {
                    return;
                }
                Some((gather.procs.clone(), BTreeSet::new()))
            }
            State::Gather(_) => None,
        };
        let was_operational = matches!(self.state, State::Operational);
        if let Some((procs, fails)) = restart_from {
            self.enter_gather(now, procs, fails);
        }
        let me = self.id;
        let State::Gather(g) = &mut self.state else { return };
        if j.max_ring_seq < g.round {
            return; // the round it accused us in is over
        }
        let mut changed = false;
        if j.max_ring_seq > g.round {
            g.new_round(j.max_ring_seq, me);
            changed = true;
        }
        let fails_before = g.fails.clone();
        if jf.contains(&j.sender) {
            // A daemon leaving cleanly (`Node::leave`) names itself failed:
            // out at once, no timeout.
            g.own.insert(j.sender);
            g.reports.remove(&j.sender);
        } else {
            g.own.remove(&j.sender);
            let suspects: BTreeSet<NodeId> = j.suspects.iter().copied().collect();
            // It leaves us out of a ring it wants with others (a daemon
            // that is itself excluded proposes a ring of its own: that is
            // not about us, and counting it would make exclusion feed on
            // itself).
            let leaves_us_out = jf.contains(&me) && their_members.len() >= 2;
            g.reports.insert(j.sender, (suspects, leaves_us_out));
            g.heard.insert(j.sender);
        }
        let procs_before = g.procs.len();
        g.procs.extend(jp.iter().copied());
        g.own.extend(self.unheard.iter().filter(|u| g.procs.contains(u)).copied());
        g.resolve(me);
        changed |= g.procs.len() != procs_before || g.fails != fails_before;
        if !changed && jp == g.procs && jf == g.fails {
            g.agreed.insert(j.sender);
        }
        if accuses_us && !was_operational {
            let who = j.sender;
            self.notice(now, 3, who, || {
                format!("daemon {who} cannot hear this daemon: the ring forms without one of us")
            });
        }
        let State::Gather(g) = &mut self.state else { return };
        if changed {
            g.agreed = BTreeSet::from([me]);
            g.consensus_at = now + self.cfg.consensus_timeout;
            self.send_join();
        }
        self.check_consensus(now, false);
    }

    fn consensus_timeout(&mut self, now: Time) {
        let me = self.id;
        let State::Gather(g) = &mut self.state else { return };
        let missing: Vec<NodeId> = g.members().into_iter().filter(|m| !g.agreed.contains(m)).collect();
        // Silent this round: a suspect (we cannot hear it). Heard but still
        // of another mind: left out for the rest of the round.
        let silent: Vec<NodeId> =
            g.members().into_iter().filter(|m| *m != me && !g.heard.contains(m)).collect();
        let stuck: Vec<NodeId> = missing.iter().filter(|m| !silent.contains(m)).copied().collect();
        let missing: Vec<NodeId> = silent.iter().chain(&stuck).copied().collect();
        g.heard.clear();
        g.own.extend(silent.iter().copied());
        g.stuck.extend(stuck.iter().copied());
        g.resolve(me);
        g.agreed = BTreeSet::from([me]);
        g.consensus_at = now + self.cfg.consensus_timeout;
        g.join_at = now + self.cfg.join_interval;
        self.unheard.extend(silent.iter().copied());
        let wait = self.cfg.consensus_timeout;
        for m in missing {
            if stuck.contains(&m) {
                self.add_quarantine(m, now);
            }
            let why = if silent.contains(&m) { "we cannot hear it" } else { "it proposes another ring" };
            self.notice(now, 2, m, || {
                format!(
                    "daemon {m} did not agree on the membership within {} ms ({why}): forming a ring \
                     without it",
                    wait.as_millis()
                )
            });
        }
        self.send_join();
        self.check_consensus(now, true);
    }

    /// When every member of our proposed membership sent a join equal to
    /// ours, the lowest member forms the ring with a commit token. A ring of
    /// one is formed only when the consensus timeout expires (`alone_ok`), so
    /// that joins on their way are heard first.
    fn check_consensus(&mut self, now: Time, alone_ok: bool) {
        let State::Gather(g) = &self.state else { return };
        let members = g.members();
        if members.first() != Some(&self.id) || members.iter().any(|m| !g.agreed.contains(m)) {
            return;
        }
        if members.len() == 1 && !alone_ok {
            return;
        }
        let gather = g.clone();
        let seq = self.max_ring_seq.max(self.ring.as_ref().map_or(0, |r| r.ring_id().seq)).saturating_add(1);
        self.max_ring_seq = seq;
        self.formed_ring_seq = self.formed_ring_seq.max(seq);
        let ring_id = RingId { seq, rep: self.id };
        let mut token = CommitToken {
            ring_id,
            token_seq: 0,
            rotation: 1,
            entries: vec![ENTRY_EMPTY; members.len()],
            members: members.clone(),
            rings: Vec::new(),
        };
        self.fill_entry(&mut token);
        self.last_commit = Some((ring_id, 0));
        self.state = State::Commit { gather, ring_id, members, deadline: now + self.cfg.token_timeout };
        self.pass_commit(now, token);
    }

    /// Writes this daemon's old-ring state into the commit token.
    fn fill_entry(&self, token: &mut CommitToken) {
        let Some(me) = token.members.iter().position(|&m| m == self.id) else { return };
        let Some(r) = &self.ring else {
            token.entries[me] = ENTRY_FRESH;
            return;
        };
        let idx = match token.rings.iter().position(|o| o.ring_id == r.ring_id()) {
            Some(i) => {
                let o = &mut token.rings[i];
                o.low_aru = o.low_aru.min(r.aru());
                o.max_stable = o.max_stable.max(r.stable());
                i
            }
            None if token.rings.len() < usize::from(ENTRY_EMPTY) => {
                token.rings.push(OldRing { ring_id: r.ring_id(), low_aru: r.aru(), max_stable: r.stable() });
                token.rings.len() - 1
            }
            None => return,
        };
        token.entries[me] = idx as u8;
    }

    fn pass_commit(&mut self, now: Time, mut token: CommitToken) {
        token.token_seq += 1;
        self.last_commit = Some((token.ring_id, token.token_seq));
        let pos = token.members.iter().position(|&m| m == self.id).unwrap_or(0);
        let to = token.members[(pos + 1) % token.members.len()];
        if to == self.id {
            // A ring of one: the token comes straight back.
            self.sent_commit = None;
            token.token_seq += 1;
            self.accept_commit(now, token);
            return;
        }
        let bytes = Bytes::from(token.encode());
        self.sent_commit = Some(SentCommit {
            bytes: bytes.clone(),
            to,
            ring_id: token.ring_id,
            deadline: now + self.cfg.token_retransmit,
        });
        self.transmits.push_back(Transmit { dest: Dest::Node(to), bytes });
    }

    fn handle_commit(&mut self, now: Time, c: CommitToken) {
        if c.ring_id.seq > self.max_ring_seq.saturating_add(MAX_RING_STEP) {
            self.retired.ring_seq_bounded += 1;
            return;
        }
        if self.last_commit.is_some_and(|(r, s)| r == c.ring_id && c.token_seq <= s) {
            return; // duplicate
        }
        if let Some(s) = &self.sent_commit {
            if s.ring_id == c.ring_id {
                self.sent_commit = None;
            }
        }
        self.accept_commit(now, c);
    }

    fn accept_commit(&mut self, now: Time, mut c: CommitToken) {
        let rep = c.ring_id.rep == self.id;
        if let State::Recovery { rec, .. } = &mut self.state {
            if rec.token.ring_id == c.ring_id && c.rotation == 2 && rep {
                // Both rotations done: everyone is in recovery. Start the
                // ring, once: a copy of this token must not restart it.
                self.last_commit = Some((c.ring_id, c.token_seq));
                if !std::mem::replace(&mut rec.started, true) {
                    self.sent_commit = None;
                    if let Some(n) = &mut self.next {
                        n.start_token(now);
                    }
                }
            }
            return;
        }
        match &self.state {
            State::Gather(g) if c.rotation == 1 && !rep => {
                // We must have heard every member in this round: a daemon
                // we cannot hear (a one-way cut) is not let into our ring
                // by a representative that hears it.
                if g.members() != c.members
                    || c.ring_id.seq <= g.round
                    || c.members.iter().any(|m| !g.agreed.contains(m) && !g.reports.contains_key(m))
                {
                    return;
                }
                if self.ring.as_ref().is_some_and(|r| r.ring_id() >= c.ring_id) {
                    return;
                }
                let gather = g.clone();
                self.max_ring_seq = self.max_ring_seq.max(c.ring_id.seq);
                self.fill_entry(&mut c);
                let members = c.members.clone();
                self.state = State::Commit {
                    gather,
                    ring_id: c.ring_id,
                    members,
                    deadline: now + self.cfg.token_timeout,
                };
                self.pass_commit(now, c);
            }
            State::Commit { ring_id, .. } if *ring_id == c.ring_id => {
                if c.rotation == 1 && rep {
                    if c.entries.contains(&ENTRY_EMPTY) {
                        return;
                    }
                    c.rotation = 2;
                } else if c.rotation != 2 || rep {
                    return;
                }
                self.enter_recovery(now, &c);
                self.pass_commit(now, c);
            }
            _ => {}
        }
    }

    fn enter_recovery(&mut self, now: Time, c: &CommitToken) {
        let State::Commit { gather, .. } = &self.state else { return };
        let gather = gather.clone();
        // Every member of the new ring holds the daemons it left out in
        // quarantine, not only those that saw them fail: otherwise a daemon
        // that one member cannot hear (a one-way cut) is let back in by the
        // others at its next beacon, again and again.
        // Those we could not hear ourselves are not: a join of theirs
        // proves them back (a paused daemon that woke up).
        let left_out: Vec<NodeId> = gather
            .procs
            .iter()
            .filter(|p| !c.members.contains(p) && !self.unheard.contains(p))
            .copied()
            .collect();
        for p in left_out {
            if !self.quarantined(p, now) {
                self.add_quarantine(p, now);
            }
        }
        let Ok(next) = Ring::new(self.cfg.clone(), self.id, &c.members, c.ring_id, now, false) else {
            return;
        };
        let me = c.members.iter().position(|&m| m == self.id).unwrap_or(0);
        let idx = c.entries[me];
        let (old_members, low_aru, max_stable) = match c.rings.get(usize::from(idx)) {
            Some(o) if idx != ENTRY_FRESH => {
                let members =
                    c.members.iter().zip(&c.entries).filter(|(_, e)| **e == idx).map(|(m, _)| *m).collect();
                (members, o.low_aru, o.max_stable)
            }
            _ => (Vec::new(), 0, 0),
        };
        self.out.ctl.clear();
        if let Some(r) = &mut self.ring {
            r.stop();
            r.freeze(true);
            if old_members.len() > 1 {
                let old_ring = r.ring_id();
                for raw in r.packets_above(low_aru) {
                    let raw = match &mut self.sec {
                        None => raw,
                        Some(sec) => seal_recovered(sec, old_ring, &raw),
                    };
                    let msg_seq = self.next_ctl_seq;
                    self.next_ctl_seq += 1;
                    self.out.ctl.push(Pending {
                        msg_seq,
                        service: Service::Recovered,
                        groups: Groups::none(),
                        payload: raw,
                        sent: 0,
                    });
                }
            }
        }
        let msg_seq = self.next_ctl_seq;
        self.next_ctl_seq += 1;
        self.out.ctl.push(Pending {
            msg_seq,
            service: Service::RecoveryDone,
            groups: Groups::none(),
            payload: Bytes::new(),
            sent: 0,
        });
        self.next = Some(next);
        let rec = Recovery {
            token: c.clone(),
            old_members,
            max_stable,
            done: BTreeSet::new(),
            deadline: now + self.cfg.token_timeout,
            started: false,
        };
        self.state = State::Recovery { gather, rec };
    }

    /// Moves datagrams and deliveries out of the rings, acting on recovery
    /// messages, and installs the new ring when recovery is complete.
    fn pump(&mut self, now: Time) {
        // Deliveries of the old ring during a change: messages in its regular
        // configuration, ahead of the configurations to come. (In operation
        // `poll_event` reads them in place.)
        while let Some(d) = self
            .ring
            .as_mut()
            .filter(|_| !matches!(self.state, State::Operational))
            .and_then(Ring::poll_delivery)
        {
            self.deliver_in_change(d);
        }
        loop {
            let Some(d) = self.next.as_mut().and_then(Ring::poll_delivery) else { break };
            let State::Recovery { rec, .. } = &mut self.state else { break };
            match d.service {
                Service::Recovered => {
                    let payload = match &mut self.sec {
                        None => Some(d.payload),
                        Some(sec) => {
                            let p = open_recovered(sec, d.id.origin, &d.payload);
                            if p.is_none() {
                                sec.stats.recovered_unopened += 1;
                            }
                            p
                        }
                    };
                    if let (Some(r), Some(payload)) = (&mut self.ring, payload) {
                        r.insert_recovered(payload);
                        while let Some(d) = self.ring.as_mut().and_then(Ring::poll_delivery) {
                            self.deliver_in_change(d);
                        }
                    }
                }
                Service::RecoveryDone => {
                    rec.done.insert(d.id.origin);
                    if rec.token.members.iter().all(|m| rec.done.contains(m)) {
                        self.install(now);
                        // Whatever the new ring delivered after the last
                        // marker belongs to the new configuration: it stays
                        // in the ring for `poll_event` (after the queued
                        // configurations), key agreement messages included.
                        self.pump_keys();
                        break;
                    }
                }
                _ => {}
            }
        }
    }

    /// A delivery of the ending ring in its regular configuration during a
    /// change. Client messages go to the owner. Key agreement messages of a
    /// ring whose regular configuration is not shown yet still count: every
    /// daemon moving on together delivers the same ones in it, so they all
    /// decide alike whether its key was agreed and its configuration shown.
    /// Other control messages stay inside.
    fn deliver_in_change(&mut self, d: Delivery) {
        if d.service == Service::KeyAgreement {
            let hidden =
                self.sec.as_ref().and_then(|s| s.pending.as_ref()).is_some_and(|c| c.ring_id == d.ring_id);
            if hidden {
                self.key_message(&d, false);
            }
            return;
        }
        if d.service.is_control() {
            return;
        }
        if let Some(sec) = self.sec.as_mut().filter(|s| s.pending.is_some()) {
            // Nothing but key agreement stands before a ring's key.
            sec.stats.bad_agreement_messages += 1;
            return;
        }
        self.events.push_back(Event::Deliver(d));
    }

    /// Ends the old ring under EVS and installs the new one.
    fn install(&mut self, now: Time) {
        let State::Recovery { rec, .. } = std::mem::replace(&mut self.state, State::Operational) else {
            return;
        };
        let Some(next) = self.next.take() else { return };
        if let Some(mut old) = self.ring.take() {
            let transitional = old.finish(rec.max_stable);
            while let Some(d) = old.poll_delivery() {
                self.deliver_in_change(d);
            }
            let delivered: Vec<Delivery> =
                transitional.into_iter().filter(|d: &Delivery| !d.service.is_control()).collect();
            self.retired.absorb(old.stats());
            match self.sec.as_mut().filter(|s| s.agreement.is_some()) {
                // Regular configurations are shown once keyed: the
                // transitional one waits for the next regular one shown.
                Some(sec) if sec.pending.is_none() => {
                    sec.held = Some((rec.old_members.iter().copied().collect(), delivered));
                }
                Some(sec) => {
                    // The old ring was dropped before its key (at every
                    // daemon moving on with this one): its configurations are
                    // never shown. The transitional configuration held (if a
                    // regular one was ever shown) keeps the daemons that
                    // moved on together through it.
                    sec.stats.bad_agreement_messages += delivered.len() as u64;
                    if let Some((members, _)) = &mut sec.held {
                        members.retain(|m| rec.old_members.contains(m));
                    }
                }
                None => {
                    self.events.push_back(Event::Configuration(Configuration {
                        kind: ConfigKind::Transitional,
                        ring_id: rec.token.ring_id,
                        members: rec.old_members.clone(),
                    }));
                    self.events.extend(delivered.into_iter().map(Event::Deliver));
                }
            }
        }
        let regular = Configuration {
            kind: ConfigKind::Regular,
            ring_id: rec.token.ring_id,
            members: rec.token.members.clone(),
        };
        let mut gated = false;
        let mut announce = Vec::new();
        if let Some(sec) = &mut self.sec {
            if let Some(agreement) = &mut sec.agreement {
                // The clients see the configuration once its key is agreed.
                announce = agreement.start(regular.ring_id, &regular.members).send;
                sec.pending = Some(regular.clone());
                sec.installed_at = now;
                sec.run_started = now;
                gated = true;
            }
        }
        if !gated {
            self.events.push_back(Event::Configuration(regular));
        }
        // A member's quarantine ends, but its length is remembered: a
        // daemon that one member cannot hear and that the ring takes back
        // in and leaves out again and again (a one-way cut that the others'
        // rings alternate around, simulator seed 12898) waits longer each
        // time, as in a quarantine that was never lifted.
        for m in &rec.token.members {
            if let Some(q) = self.quarantine.get_mut(m) {
                q.until = q.until.min(now);
            }
        }
        // Those ended over `quarantine_max` ago would start afresh anyway.
        let max = self.cfg.quarantine_max;
        self.quarantine.retain(|_, q| now.saturating_since(q.until) <= max);
        self.retired.rings_installed += 1;
        self.formed_ring_seq = self.formed_ring_seq.max(rec.token.ring_id.seq);
        self.ring = Some(next);
        self.out.user_allowed = !gated;
        for env in announce {
            self.push_ctl(Service::KeyAgreement, env);
        }
        self.last_token_at = now;
        self.beacon_at = now + self.cfg.merge_interval;
        if let Some(r) = &mut self.ring {
            if !self.out.is_empty() {
                r.wake(now);
            }
        }
    }
}

/// A recovered packet of `old_ring` for the new ring: sealed under the old
/// ring's link key when it had one (`1 ‖ blob`), else as it was (`0 ‖ raw`).
fn seal_recovered(sec: &mut Sec, old_ring: RingId, raw: &[u8]) -> Bytes {
    if let Some((_, kid, _)) = sec.ring_key.filter(|(r, _, _)| *r == old_ring) {
        if let Some(blob) = sec.link.seal_blob(kid, raw) {
            let mut b = Vec::with_capacity(1 + blob.len());
            b.push(1);
            b.extend_from_slice(&blob);
            return Bytes::from(b);
        }
    }
    if sec.cfg.mode == LinkMode::Encrypt && carries_client_data(raw) {
        // Fail closed: a client message never travels in clear. (Cannot
        // happen: a ring carries client messages only once every member
        // holds its key, and receiving one proves it.)
        sec.stats.dropped_unsealable += 1;
        return Bytes::from_static(&[2]);
    }
    let mut b = Vec::with_capacity(1 + raw.len());
    b.push(0);
    b.extend_from_slice(raw);
    Bytes::from(b)
}

/// Whether a data packet holds a chunk of a client message.
fn carries_client_data(raw: &[u8]) -> bool {
    DataPacket::decode(Bytes::copy_from_slice(raw))
        .map_or(true, |p| p.chunks.iter().any(|c| !c.service.is_control()))
}

/// The old ring's packet inside a recovered message, if this daemon can
/// open it (a daemon of another old ring cannot, and has no use for it).
fn open_recovered(sec: &Sec, origin: NodeId, payload: &Bytes) -> Option<Bytes> {
    match payload.first()? {
        0 => Some(payload.slice(1..)),
        1 => sec.link.open_blob(origin, &payload[1..]),
        _ => None,
    }
}
