//! Ordering: the Totem single-ring protocol within one ring.
//!
//! A [`Ring`] is one daemon's ordering state for one ring (one regular
//! configuration); [`crate::Node`] owns it and replaces it when membership
//! changes. Exactly one token
//! circulates among the members in ascending id order (wrapping around); the
//! holder retransmits what others asked for, assigns the next sequence
//! numbers to new packets (within flow control), updates the token's aru and
//! retransmission requests, and passes it on. Every member delivers packets
//! in sequence order; a `safe` message waits until the token shows every
//! member holds it.
//!
//! The calling contract is [`crate::Node`]'s.

mod config;
mod pack;
mod store;

pub use config::{Config, ConfigError, IP_HEADER, SECURITY_OVERHEAD, UDP_HEADER};

use crate::Time;
use crate::wire::{
    Chunk, ChunkFlags, DataPacket, Groups, MsgId, NodeId, PacketBuilder, RingId, RtrRange, Service, Token,
    TokenRequest,
};
use bytes::{Bytes, BytesMut};
use pack::Partial;
pub(crate) use pack::{Outboxes, Pending};
use std::collections::VecDeque;
use store::{Store, Stored};

/// Token visits in a row at which this daemon misses packets and received
/// none of them since the last visit, before it gives the ring up and
/// gathers a new membership (Totem's "fail to receive"; Corosync's
/// `fail_recv_const` has the same default). A packet nobody holds (a
/// sender that crashed with it, or a token that claimed packets never
/// sent) would otherwise stop delivery for good while the token circulates.
pub const FAIL_TO_RECEIVE: u32 = 2500;

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every other member (IP multicast, or unicast fan-out).
    All,
    /// One member.
    Node(NodeId),
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dest: Dest,
    /// The datagram.
    pub bytes: Bytes,
}

/// Kind of a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigKind {
    /// A regular configuration (a ring).
    Regular,
    /// A transitional configuration (membership changes, next issue).
    Transitional,
}

/// A configuration delivered in the ordered stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configuration {
    /// Regular or transitional.
    pub kind: ConfigKind,
    /// The ring.
    pub ring_id: RingId,
    /// Members, ascending.
    pub members: Vec<NodeId>,
}

/// A delivered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Unique id: origin daemon and its message counter.
    pub id: MsgId,
    /// Service it was sent with.
    pub service: Service,
    /// Destination groups.
    pub groups: Groups,
    /// The payload (a slice of the received frame when not fragmented).
    pub payload: Bytes,
    /// The ring that ordered the message.
    pub ring_id: RingId,
    /// Sequence number of the packet that completed the message.
    pub ring_seq: u64,
}

/// What the node tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message, in the total order.
    Deliver(Delivery),
    /// A configuration change, in the same order.
    Configuration(Configuration),
    /// The servers' key in force from here on in the delivery order (nodes
    /// with link security only, `Node::with_security`). A ring's first key
    /// comes just before the ring's regular configuration; a refreshed key
    /// comes at the delivery of the last member's key check. Every member
    /// of the ring sees it at the same place in the order, so state derived
    /// from it in order (client group keys) is the same everywhere.
    ServerKey(ServerKey),
}

/// A server key and where it belongs (see [`Event::ServerKey`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKey {
    /// The ring whose members agreed it.
    pub ring_id: RingId,
    /// Its epoch (ring sequence << 16 | refreshes in the ring).
    pub epoch: u64,
    /// The secret (zeroized on drop; `Debug` shows no bytes).
    pub key: ringfence_crypto::aead::Key32,
}

/// Why `submit` refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The send queue is full; try again once the ring has drained it.
    #[error("send queue full")]
    Backlogged,
    /// The message exceeds `max_message` (the caller's misuse).
    #[error("message of {0} bytes exceeds the configured maximum")]
    TooLarge(usize),
    /// The destination list is too long to fit a frame
    /// (`Config::max_group_list`; the caller's misuse).
    #[error("a destination list of {0} bytes does not fit a frame")]
    GroupListTooLong(usize),
}

/// Counters; all only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Datagrams that failed to decode (dropped).
    pub bad_datagrams: u64,
    /// Datagrams for another ring or from a non-member (dropped).
    pub foreign: u64,
    /// Joins of quarantined daemons ignored in operation (they may not
    /// start a membership change yet).
    pub quarantined_joins: u64,
    /// Data packets with a sequence number far beyond the window (dropped).
    pub out_of_window: u64,
    /// Data packets received for the first time.
    pub packets_received: u64,
    /// Data packets received again (dropped).
    pub duplicate_packets: u64,
    /// New data packets this node sent.
    pub packets_sent: u64,
    /// Timers that fired more than half a token timeout late (this daemon
    /// was paused or starved); their failure deadlines were moved on.
    pub stalls: u64,
    /// Timers that fired over half a token retransmission late: the failure
    /// deadline waited one retransmission more, once, to read the socket.
    pub late_timers: u64,
    /// Beacons and packets of daemons we could not hear, answered with an
    /// echo instead of a merge (see `Node::echo_beacon`).
    pub beacon_echoes: u64,
    /// Packets this node retransmitted on request.
    pub packets_retransmitted: u64,
    /// Sequence numbers this node asked to be retransmitted.
    pub retransmits_requested: u64,
    /// Tokens accepted.
    pub tokens_received: u64,
    /// Tokens dropped as stale or duplicate (by token sequence).
    pub stale_tokens: u64,
    /// Rings given up because packets stayed missing for
    /// `FAIL_TO_RECEIVE` token visits.
    pub receive_failures: u64,
    /// Tokens dropped as impossible: not from this daemon's predecessor in
    /// the ring, or numbers outside the window (a forged or redirected
    /// token).
    pub bad_tokens: u64,
    /// Ring sequences from datagrams further above the highest known than
    /// `MAX_RING_STEP` (taken as that far, or dropped).
    pub ring_seq_bounded: u64,
    /// Tokens resent because the ring showed no progress.
    pub token_retransmits: u64,
    /// Token requests sent to the representative (something to send while
    /// the ring idled).
    pub token_requests_sent: u64,
    /// Token requests received (as the representative).
    pub token_requests_received: u64,
    /// Messages submitted and accepted.
    pub messages_submitted: u64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// Fragments that did not fit their message (dropped; a protocol bug).
    pub reassembly_errors: u64,
    /// Datagrams handed out (data, retransmissions and tokens).
    pub datagrams_sent: u64,
    /// Bytes handed out, without IP/UDP headers.
    pub bytes_sent: u64,
    /// Rings (regular configurations) installed.
    pub rings_installed: u64,
    /// Times the daemon left a ring or a ring attempt to gather anew.
    pub membership_changes: u64,
}

impl Stats {
    /// Adds another set of counters (of a ring that ended) to these.
    pub fn absorb(&mut self, o: &Self) {
        self.bad_datagrams += o.bad_datagrams;
        self.foreign += o.foreign;
        self.out_of_window += o.out_of_window;
        self.packets_received += o.packets_received;
        self.duplicate_packets += o.duplicate_packets;
        self.packets_sent += o.packets_sent;
        self.packets_retransmitted += o.packets_retransmitted;
        self.stalls += o.stalls;
        self.late_timers += o.late_timers;
        self.beacon_echoes += o.beacon_echoes;
        self.quarantined_joins += o.quarantined_joins;
        self.retransmits_requested += o.retransmits_requested;
        self.tokens_received += o.tokens_received;
        self.stale_tokens += o.stale_tokens;
        self.bad_tokens += o.bad_tokens;
        self.receive_failures += o.receive_failures;
        self.ring_seq_bounded += o.ring_seq_bounded;
        self.token_retransmits += o.token_retransmits;
        self.token_requests_sent += o.token_requests_sent;
        self.token_requests_received += o.token_requests_received;
        self.messages_submitted += o.messages_submitted;
        self.messages_delivered += o.messages_delivered;
        self.reassembly_errors += o.reassembly_errors;
        self.datagrams_sent += o.datagrams_sent;
        self.bytes_sent += o.bytes_sent;
        self.rings_installed += o.rings_installed;
        self.membership_changes += o.membership_changes;
    }
}

/// The token as last passed, kept until the ring shows it moved on.
#[derive(Debug)]
struct SentToken {
    bytes: Bytes,
    /// The token's `seq` when passed: a packet above it proves the token
    /// reached someone after us.
    seq: u64,
    deadline: Time,
}

/// A token the node holds instead of passing (idle ring, or a ring of one).
#[derive(Debug)]
struct Held {
    token: Token,
    /// Pass it at this time; `None` holds until there is something to send.
    deadline: Option<Time>,
}

/// One daemon's ordering state for one ring.
#[derive(Debug)]
pub struct Ring {
    cfg: Config,
    id: NodeId,
    members: Vec<NodeId>,
    successor: NodeId,
    ring_id: RingId,

    store: Store,
    /// Every packet up to here is held.
    my_aru: u64,
    /// Highest sequence number seen.
    high_seq: u64,
    /// Every member holds every packet up to here (the safe/stable line).
    stable: u64,
    /// Next packet to deliver from, and the chunk within it.
    deliver_seq: u64,
    deliver_chunk: usize,
    partials: Vec<Partial>,
    /// Raw data packets are refused (the ring is being recovered into the
    /// next one, whose recovery alone may add packets).
    frozen: bool,

    /// Highest token sequence accepted.
    last_token_seq: u64,
    /// The token's aru when this node last passed it.
    last_departure_aru: u64,
    /// The token's `seq` when this node last passed it.
    last_departure_seq: u64,
    /// Packets this node sent in its last visit (its share of `fcc`).
    my_trc: u32,
    /// Backlog this node added to the token in its last visit.
    my_backlog: u32,
    /// Token visits in a row that found packets missing and none of them
    /// received since the visit before (see `FAIL_TO_RECEIVE`).
    stuck_visits: u32,
    /// `my_aru` at the last token visit.
    visit_aru: u64,
    sent_token: Option<SentToken>,
    held: Option<Held>,
    /// Fail-to-receive detection: our aru when it last moved, since when,
    /// and how many token visits found it stuck below packets others sent.
    recv_aru: u64,
    recv_since: Time,
    recv_visits: u32,
    /// Representative: idle holds in a row with no packet numbered between
    /// them (the hold doubles with each, up to `token_idle_hold`).
    idle_holds: u32,
    /// Representative: the token's `seq` at its last idle hold.
    idle_seq: u64,
    /// The token looked idle when it last left here: a message submitted
    /// now asks the representative for it (a token request).
    idle_seen: bool,
    /// A token request went out since the token was last here.
    requested: bool,

    transmits: VecDeque<Transmit>,
    deliveries: VecDeque<Delivery>,
    token_buf: Vec<u8>,
    /// The free end of the block new packets, tokens and reassembled
    /// messages are built in.
    tx_block: BytesMut,
    /// The packets of one visit (kept for its allocation).
    visit_packets: Vec<Bytes>,
    stats: Stats,
}

impl Ring {
    /// Creates member `id`'s state for the ring `ring_id` formed by
    /// `members`. With `start_token`, this member (which must be the lowest)
    /// creates the token at `now`.
    pub fn new(
        cfg: Config,
        id: NodeId,
        members: &[NodeId],
        ring_id: RingId,
        now: Time,
        start_token: bool,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        let Some(pos) = members.iter().position(|&m| m == id) else {
            return Err(ConfigError { field: "members", reason: "must include this daemon" });
        };
        if members.contains(&NodeId::NONE) {
            return Err(ConfigError { field: "members", reason: "id 65535 is reserved" });
        }
        let successor = members[(pos + 1) % members.len()];
        let mut ring = Self {
            cfg,
            id,
            members,
            successor,
            ring_id,
            store: Store::new(),
            my_aru: 0,
            high_seq: 0,
            stable: 0,
            deliver_seq: 1,
            deliver_chunk: 0,
            partials: Vec::new(),
            frozen: false,
            last_token_seq: 0,
            last_departure_aru: 0,
            last_departure_seq: 0,
            my_trc: 0,
            my_backlog: 0,
            stuck_visits: 0,
            visit_aru: 0,
            sent_token: None,
            held: None,
            recv_aru: 0,
            recv_since: now,
            recv_visits: 0,
            idle_holds: 0,
            idle_seq: 0,
            idle_seen: false,
            requested: false,
            transmits: VecDeque::new(),
            deliveries: VecDeque::new(),
            token_buf: Vec::new(),
            tx_block: BytesMut::new(),
            visit_packets: Vec::new(),
            stats: Stats::default(),
        };
        if start_token {
            ring.start_token(now);
        }
        Ok(ring)
    }

    /// Creates the ring's first token (held, to be used at `now`).
    pub(crate) fn start_token(&mut self, now: Time) {
        let token = Token {
            ring_id: self.ring_id,
            token_seq: 0,
            seq: 0,
            aru: 0,
            aru_id: NodeId::NONE,
            fcc: 0,
            backlog: 0,
            rtr: Vec::new(),
        };
        self.held = Some(Held { token, deadline: Some(now) });
    }

    /// Stops all token activity (the ring is over for sending).
    pub(crate) fn stop(&mut self) {
        self.sent_token = None;
        self.held = None;
    }

    /// Refuses raw data packets from now on (see [`Ring::insert_recovered`]).
    pub(crate) fn freeze(&mut self, frozen: bool) {
        self.frozen = frozen;
    }

    /// Whether packets stayed missing here for `FAIL_TO_RECEIVE` token
    /// visits: the ring cannot deliver any more and must be formed anew.
    pub(crate) fn failed_to_receive(&self) -> bool {
        self.stuck_visits >= FAIL_TO_RECEIVE
    }

    /// Whether this node holds the token (idle hold, or a ring of one).
    pub(crate) fn holds_token(&self) -> bool {
        self.held.is_some()
    }

    /// This daemon's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The ring's members, ascending.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The current ring id.
    pub fn ring_id(&self) -> RingId {
        self.ring_id
    }

    /// Counters of this ring.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The stable line: every member holds every packet up to here.
    pub fn stable(&self) -> u64 {
        self.stable
    }

    /// Every packet up to this sequence number is held here.
    pub fn aru(&self) -> u64 {
        self.my_aru
    }

    /// Whether this node has received packet `seq` (collected packets count).
    pub fn holds(&self, seq: u64) -> bool {
        self.store.holds(seq)
    }

    /// Packets held in the store (received or missing, not yet collected).
    pub fn stored_packets(&self) -> usize {
        self.store.len()
    }

    /// Uses a held token now rather than at its deadline (there is something
    /// to send).
    pub(crate) fn wake(&mut self, now: Time) {
        if let Some(h) = &mut self.held {
            if h.deadline.is_none_or(|d| d > now) {
                h.deadline = Some(now);
            }
        }
    }

    /// Something was submitted here: if the ring idles and another member
    /// (the representative) may be holding the token, ask it for the token
    /// once per rotation instead of waiting out its idle hold.
    pub(crate) fn request_token(&mut self) {
        let rep = self.members[0];
        if rep == self.id || !self.idle_seen || self.requested || self.held.is_some() || self.frozen {
            return;
        }
        self.requested = true;
        self.stats.token_requests_sent += 1;
        let req = TokenRequest { sender: self.id, ring_id: self.ring_id };
        self.emit(Dest::Node(rep), Bytes::from(req.encode()));
    }

    /// A member asked for the token: use a held token now.
    pub(crate) fn handle_token_request(&mut self, now: Time, req: &TokenRequest, from: Option<NodeId>) {
        if req.ring_id != self.ring_id
            || from.is_some_and(|f| f != req.sender)
            || req.sender == self.id
            || !self.members.contains(&req.sender)
        {
            self.stats.foreign += 1;
            return;
        }
        self.stats.token_requests_received += 1;
        self.wake(now);
    }

    /// The next deadline at which this ring's timers must be handled.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.failed_to_receive() {
            return Some(Time::ZERO); // now: the owner gives the ring up
        }
        let a = self.sent_token.as_ref().map(|s| s.deadline);
        let b = self.held.as_ref().and_then(|h| h.deadline);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles expired timers: token retransmission, and passing a held token.
    pub(crate) fn handle_timeout(&mut self, now: Time, out: &mut Outboxes) {
        if let Some(s) = &mut self.sent_token {
            if s.deadline <= now {
                s.deadline = now + self.cfg.token_retransmit;
                let bytes = s.bytes.clone();
                self.stats.token_retransmits += 1;
                self.emit(Dest::Node(self.successor), bytes);
            }
        }
        if self.held.as_ref().and_then(|h| h.deadline).is_some_and(|d| d <= now) {
            if let Some(h) = self.held.take() {
                if h.token.seq < self.high_seq {
                    // A packet numbered above the token we hold: another
                    // token numbered it (a forged one: only in mode `none`).
                    // This one would number a packet twice: dropped, and the
                    // token loss forms the ring anew.
                    self.stats.bad_tokens += 1;
                } else {
                    self.visit(now, h.token, false, out);
                }
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next delivery, in order.
    pub(crate) fn poll_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.pop_front()
    }

    fn emit(&mut self, dest: Dest, bytes: Bytes) {
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.transmits.push_back(Transmit { dest, bytes });
    }

    pub(crate) fn is_member(&self, id: NodeId) -> bool {
        self.members.binary_search(&id).is_ok()
    }

    /// Handles a data packet of this ring (the caller checked the ring id).
    pub(crate) fn handle_packet(&mut self, raw: Bytes, packet: DataPacket) {
        if packet.ring_id != self.ring_id || !self.is_member(packet.sender) || self.frozen {
            self.stats.foreign += 1;
            return;
        }
        self.insert(raw, packet);
    }

    /// Inserts a packet of this ring that arrived through the next ring's
    /// recovery. Returns false if it was not for this ring.
    pub(crate) fn insert_recovered(&mut self, raw: Bytes) -> bool {
        match DataPacket::decode(raw.clone()) {
            Ok(p) if p.ring_id == self.ring_id && self.is_member(p.sender) => {
                self.insert(raw, p);
                true
            }
            _ => false,
        }
    }

    /// Packets this node holds numbered above `low`, as they travelled: what
    /// it contributes to recovery.
    pub(crate) fn packets_above(&self, low: u64) -> Vec<Bytes> {
        (low.max(self.store.base().saturating_sub(1)) + 1..=self.high_seq)
            .filter_map(|seq| self.store.get(seq).map(|s| s.raw.clone()))
            .collect()
    }

    /// Ends the ring under Extended Virtual Synchrony: raises the stable line
    /// to `max_stable` (reported by a member of this ring that knew it),
    /// delivers what may still be delivered in the regular configuration into
    /// the queue, and returns the rest, in order and skipping holes, for the
    /// transitional configuration.
    pub(crate) fn finish(&mut self, max_stable: u64) -> Vec<Delivery> {
        self.stable = self.stable.max(max_stable.min(self.my_aru));
        self.deliver();
        let regular = std::mem::take(&mut self.deliveries);
        // Past the first hole or the first safe message not known stable:
        // everything held, in order, in the transitional configuration.
        self.stable = self.high_seq;
        while self.deliver_seq <= self.high_seq {
            if self.store.get(self.deliver_seq).is_none() {
                // A hole no surviving member holds. A message with a
                // fragment in it fails reassembly (wrong message, or wrong
                // length at its last fragment) identically at every member.
                self.deliver_seq += 1;
                self.deliver_chunk = 0;
                continue;
            }
            self.my_aru = self.deliver_seq.max(self.my_aru);
            self.deliver();
        }
        self.partials.clear();
        let transitional = std::mem::take(&mut self.deliveries);
        self.deliveries = regular;
        transitional.into()
    }

    /// Whether sequence number `seq` (of a packet or a token) is within the
    /// window this daemon stores. Senders stay within `max_unstable` of the
    /// token's aru, which trails every member's stable line by at most a
    /// rotation: anything far beyond is bogus and must not grow the store.
    fn in_window(&self, seq: u64) -> bool {
        seq <= self.store.base().saturating_add(self.cfg.max_unstable.saturating_mul(4))
    }

    fn insert(&mut self, raw: Bytes, packet: DataPacket) {
        let seq = packet.seq;
        if !self.in_window(seq) {
            self.stats.out_of_window += 1;
            return;
        }
        // A packet above the token we passed proves the ring moved on.
        if self.sent_token.as_ref().is_some_and(|s| seq > s.seq) {
            self.sent_token = None;
        }
        if !self.store.insert(seq, Stored { raw, packet }) {
            self.stats.duplicate_packets += 1;
            return;
        }
        self.stats.packets_received += 1;
        self.high_seq = self.high_seq.max(seq);
        self.advance_aru();
        self.deliver();
    }

    fn advance_aru(&mut self) {
        while self.store.get(self.my_aru + 1).is_some() {
            self.my_aru += 1;
        }
    }

    /// The member that passes the token to this one.
    fn predecessor(&self) -> NodeId {
        let pos = self.members.binary_search(&self.id).unwrap_or(0);
        self.members[(pos + self.members.len() - 1) % self.members.len()]
    }

    /// Handles a token of this ring from `from` (the sender its link header
    /// names; `None` without a link layer). Returns whether it was accepted.
    pub(crate) fn handle_token(
        &mut self,
        now: Time,
        token: Token,
        from: Option<NodeId>,
        out: &mut Outboxes,
    ) -> bool {
        if token.ring_id != self.ring_id {
            self.stats.foreign += 1;
            return false;
        }
        if token.token_seq <= self.last_token_seq || self.held.is_some() {
            self.stats.stale_tokens += 1;
            return false;
        }
        // Only the predecessor passes us the token, and each holder adds one
        // to its sequence: a rotation adds the ring's size. Its `seq` is at
        // least every packet we hold (each was numbered from an earlier
        // token) and within the window; its aru is at most its seq (the
        // decoder checks). Anything else is forged or redirected, and would
        // make this daemon number packets twice or allocate without bound.
        let step = 4 * self.members.len() as u64;
        if from.is_some_and(|f| f != self.predecessor())
            || token.token_seq > self.last_token_seq.saturating_add(step)
            || token.seq < self.high_seq
            || !self.in_window(token.seq)
        {
            self.stats.bad_tokens += 1;
            return false;
        }
        self.last_token_seq = token.token_seq;
        self.stats.tokens_received += 1;
        self.sent_token = None;
        self.requested = false;
        self.visit(now, token, true, out);
        true
    }

    /// One token visit. `fresh` is false when re-using a token this node held.
    fn visit(&mut self, now: Time, mut token: Token, fresh: bool, out: &mut Outboxes) {
        let alone = self.members.len() == 1;
        if fresh {
            // Totem's stable rule: a packet is held by every member once the
            // token's aru has covered it on departure from here and on the
            // following arrival: between the two every member saw it and
            // would have lowered the aru had it been missing.
            self.stable = self.last_departure_aru.min(token.aru).min(self.my_aru).max(self.stable);
            if self.my_aru < token.seq && self.my_aru == self.visit_aru {
                self.stuck_visits = self.stuck_visits.saturating_add(1);
                if self.stuck_visits == FAIL_TO_RECEIVE {
                    self.stats.receive_failures += 1;
                }
            } else {
                self.stuck_visits = 0;
            }
            self.visit_aru = self.my_aru;
        }

        // 1. Answer retransmission requests.
        let retransmitted = self.answer_requests(&mut token);

        // 2. Flow control: how many new packets this visit may send.
        let frames_wanted = out.frames_needed(self.cfg.frame_budget(), self.cfg.packing);
        let others_fcc = token.fcc.saturating_sub(self.my_trc);
        let global_room = self.cfg.window.saturating_sub(others_fcc.saturating_add(retransmitted));
        let total_backlog = token.backlog.saturating_sub(self.my_backlog).saturating_add(frames_wanted);
        let fair_share = if total_backlog == 0 {
            self.cfg.window
        } else {
            u32::try_from(
                (u64::from(self.cfg.window) * u64::from(frames_wanted)).div_ceil(u64::from(total_backlog)),
            )
            .unwrap_or(u32::MAX)
            .max(1)
        };
        let store_room = token.aru.saturating_add(self.cfg.max_unstable).saturating_sub(token.seq);
        let allowed = self
            .cfg
            .personal_window
            .min(global_room)
            .min(fair_share)
            .min(frames_wanted)
            .min(u32::try_from(store_room).unwrap_or(u32::MAX));

        // 3. New packets, numbered after the token's seq: built in the
        //    block, their chunks kept as the packing made them (a packet of
        //    our own is never decoded).
        let mut new_packets = std::mem::take(&mut self.visit_packets);
        new_packets.clear();
        for _ in 0..allowed {
            if out.is_empty() {
                break;
            }
            let seq = token.seq + 1;
            let budget = self.cfg.frame_budget();
            let block = self.take_block(budget);
            let mut b = PacketBuilder::in_block(block, self.ring_id, seq, self.id, budget);
            let mut chunks = self.store.spare_chunks();
            out.fill(&mut b, self.cfg.packing, &mut chunks);
            if b.count() == 0 {
                self.tx_block = b.into_block();
                self.store.recycle(chunks);
                break;
            }
            let (raw, block) = b.finish_in_block();
            self.tx_block = block;
            let packet = DataPacket { ring_id: self.ring_id, seq, sender: self.id, chunks };
            debug_assert_eq!(DataPacket::decode(raw.clone()).as_ref(), Ok(&packet), "kept chunks differ");
            // A number is never used twice: if the slot is taken the token
            // is not the one this ring started (a protocol bug), so stop.
            if !self.store.insert(seq, Stored { raw: raw.clone(), packet }) {
                debug_assert!(false, "packet {seq} numbered twice in ring {}", self.ring_id);
                break;
            }
            token.seq = seq;
            self.high_seq = self.high_seq.max(seq);
            self.stats.packets_sent += 1;
            new_packets.push(raw);
        }
        self.advance_aru();
        let sent = u32::try_from(new_packets.len()).unwrap_or(u32::MAX);
        let this_visit = sent.saturating_add(retransmitted);
        token.fcc = others_fcc.saturating_add(this_visit);
        self.my_trc = this_visit;
        let backlog_left = out.frames_needed(self.cfg.frame_budget(), self.cfg.packing);
        token.backlog = token.backlog.saturating_sub(self.my_backlog).saturating_add(backlog_left);
        self.my_backlog = backlog_left;

        // 4. The aru rules (Totem): lower it to ours if we miss something;
        //    the member that lowered it may raise it again.
        if self.my_aru < token.aru || token.aru_id == self.id || token.aru_id == NodeId::NONE {
            token.aru = self.my_aru;
            token.aru_id = if token.aru == token.seq { NodeId::NONE } else { self.id };
        }

        // 5. Ask for what we miss. On an accelerated ring the previous
        //    holder's last packets may still be in flight behind the token, so
        //    only gaps a full rotation old are requested.
        let horizon = if self.cfg.accelerated { self.last_departure_seq.min(token.seq) } else { token.seq };
        self.request_missing(&mut token, horizon);
        if fresh {
            self.watch_receiving(now, horizon);
        }

        if alone {
            self.stable = self.my_aru;
        }
        self.last_departure_aru = token.aru;
        self.last_departure_seq = token.seq;
        self.deliver();

        // 6. Pass the token, or hold it if the ring is idle.
        let idle = new_packets.is_empty()
            && retransmitted == 0
            && token.rtr.is_empty()
            && token.aru == token.seq
            && token.backlog == 0
            && out.is_empty();
        if alone {
            // Nobody to send to: the packets are only stored.
            new_packets.clear();
            self.visit_packets = new_packets;
            let deadline = if out.is_empty() { None } else { Some(now) };
            self.held = Some(Held { token, deadline });
            return;
        }
        self.idle_seen = idle;
        if idle && self.members[0] == self.id && !self.cfg.token_hold.is_zero() && fresh {
            // Idle: hold, longer the longer the ring stays idle (no packet
            // numbered since the last hold); a member with something to send
            // asks for the token meanwhile.
            if token.seq != self.idle_seq {
                self.idle_holds = 0;
            }
            self.idle_seq = token.seq;
            let cap = self.cfg.token_idle_hold.min(self.cfg.token_retransmit / 2).max(self.cfg.token_hold);
            let hold = self.cfg.token_hold.saturating_mul(1 << self.idle_holds.min(16)).min(cap);
            self.idle_holds = self.idle_holds.saturating_add(1);
            self.held = Some(Held { token, deadline: Some(now + hold) });
            self.visit_packets = new_packets;
            return;
        }
        let tail = if self.cfg.accelerated {
            new_packets.len().min(self.cfg.accelerated_window as usize)
        } else {
            0
        };
        let split = new_packets.len() - tail;
        for raw in new_packets.drain(..split) {
            self.emit(Dest::All, raw);
        }
        token.token_seq = self.last_token_seq.max(token.token_seq).saturating_add(1);
        self.last_token_seq = token.token_seq;
        token.encode_into(&mut self.token_buf);
        let mut block = self.take_block(self.token_buf.len());
        block.extend_from_slice(&self.token_buf);
        let bytes = block.split().freeze();
        self.tx_block = block;
        self.sent_token = Some(SentToken {
            bytes: bytes.clone(),
            seq: token.seq,
            deadline: now + self.cfg.token_retransmit,
        });
        self.emit(Dest::Node(self.successor), bytes);
        for raw in new_packets.drain(..) {
            self.emit(Dest::All, raw);
        }
        self.visit_packets = new_packets;
    }

    /// The block to build in ([`crate::block`]), with room for `len`
    /// bytes: the current one, or a new one when it is short.
    fn take_block(&mut self, len: usize) -> BytesMut {
        crate::block::make_room(&mut self.tx_block, len, crate::block::BLOCK);
        std::mem::take(&mut self.tx_block)
    }

    /// An empty chunk vector for a received packet (recycled from the
    /// store's collected packets when one is spare).
    pub(crate) fn spare_chunks(&mut self) -> Vec<Chunk> {
        self.store.spare_chunks()
    }

    /// Counts token visits that find our aru stuck below what others sent.
    fn watch_receiving(&mut self, now: Time, horizon: u64) {
        if self.my_aru >= horizon {
            self.recv_visits = 0;
        } else if self.recv_visits > 0 && self.recv_aru == self.my_aru {
            self.recv_visits = self.recv_visits.saturating_add(1);
        } else {
            self.recv_aru = self.my_aru;
            self.recv_since = now;
            self.recv_visits = 1;
        }
    }

    /// The packet this member has been missing for longer than
    /// `fail_to_receive`, over several token visits, if any: the ring
    /// keeps going but some member's packets never reach us.
    pub(crate) fn failing_to_receive(&self, now: Time) -> Option<(u64, std::time::Duration)> {
        const VISITS: u32 = 8;
        let stuck = now.saturating_since(self.recv_since);
        (self.recv_visits >= VISITS && stuck >= self.cfg.fail_to_receive)
            .then_some((self.recv_aru + 1, stuck))
    }

    /// Retransmits requested packets this node holds and removes them from
    /// the token's list. Returns how many were sent. Work is bounded by the
    /// store's size and the window, whatever the ranges claim.
    fn answer_requests(&mut self, token: &mut Token) -> u32 {
        if token.rtr.is_empty() {
            return 0;
        }
        let base = self.store.base();
        let held_end = base + self.store.len() as u64; // one past the last slot
        let mut budget = self.cfg.window;
        let mut sent = 0u32;
        let mut left = RangeList::default();
        let mut resend: Vec<Bytes> = Vec::new();
        for r in std::mem::take(&mut token.rtr) {
            // Below the store: collected, so every member held it (stale).
            let mut seq = r.start.max(base).min(r.end());
            while seq < r.end().min(held_end) {
                match self.store.get(seq) {
                    Some(s) if budget > 0 => {
                        resend.push(s.raw.clone());
                        budget -= 1;
                        sent += 1;
                    }
                    _ => left.add(seq, seq + 1),
                }
                seq += 1;
            }
            left.add(seq.max(held_end).min(r.end()), r.end());
        }
        token.rtr = left.0;
        self.stats.packets_retransmitted += u64::from(sent);
        for raw in resend {
            self.emit(Dest::All, raw);
        }
        sent
    }

    /// Adds this node's missing packets up to `horizon` to the token's
    /// requests, keeping the list sorted, merged and within one frame.
    fn request_missing(&mut self, token: &mut Token, horizon: u64) {
        if horizon <= self.my_aru {
            return;
        }
        let max = self.cfg.max_rtr_ranges();
        let held_end = self.store.base() + self.store.len() as u64;
        let mut mine = RangeList::default();
        let mut seq = self.my_aru + 1;
        while seq <= horizon && seq < held_end && mine.0.len() < max {
            if !self.store.holds(seq) {
                mine.add(seq, seq + 1);
            }
            seq += 1;
        }
        if mine.0.len() < max {
            mine.add(seq.max(held_end), horizon + 1);
        }
        self.stats.retransmits_requested += mine.0.iter().map(|r| u64::from(r.len)).sum::<u64>();
        let mut all = RangeList::default();
        let mut theirs = std::mem::take(&mut token.rtr).into_iter().peekable();
        let mut ours = mine.0.into_iter().peekable();
        // Merge the two sorted lists.
        loop {
            let next = match (theirs.peek(), ours.peek()) {
                (Some(a), Some(b)) if a.start <= b.start => theirs.next(),
                (Some(_), Some(_)) | (None, Some(_)) => ours.next(),
                (Some(_), None) => theirs.next(),
                (None, None) => break,
            };
            if let Some(r) = next {
                all.add(r.start, r.end());
            }
        }
        all.0.truncate(max);
        token.rtr = all.0;
    }

    /// Delivers, in sequence order, every message that may be delivered: up
    /// to our aru, and safe messages only up to the stable line.
    fn deliver(&mut self) {
        while self.deliver_seq <= self.my_aru {
            let seq = self.deliver_seq;
            let Some(stored) = self.store.get(seq) else {
                unreachable!("packets up to my_aru are held");
            };
            let packet_len = stored.packet.chunks.len();
            while self.deliver_chunk < packet_len {
                let Some(stored) = self.store.get_mut(seq) else { unreachable!() };
                let origin = stored.packet.sender;
                let c = &mut stored.packet.chunks[self.deliver_chunk];
                if c.flags.last && c.service == Service::Safe && seq > self.stable {
                    return;
                }
                // A chunk is delivered once: its slices move out (the
                // packet stays whole in `raw` for retransmission).
                let c =
                    Chunk { groups: std::mem::take(&mut c.groups), data: std::mem::take(&mut c.data), ..*c };
                self.deliver_chunk += 1;
                self.take_chunk(origin, seq, c);
            }
            self.deliver_seq += 1;
            self.deliver_chunk = 0;
        }
        let collect = self.stable.min(self.deliver_seq - 1);
        self.store.collect(collect);
    }

    fn take_chunk(&mut self, origin: NodeId, ring_seq: u64, c: crate::wire::Chunk) {
        let id = MsgId { origin, seq: c.msg_seq };
        if c.flags == ChunkFlags::WHOLE {
            self.push_delivery(Delivery {
                id,
                service: c.service,
                groups: c.groups,
                payload: c.data,
                ring_id: self.ring_id,
                ring_seq,
            });
            return;
        }
        let at = self.partials.iter().position(|p| p.origin == origin);
        if c.flags.first {
            if let Some(i) = at {
                self.partials.swap_remove(i);
                self.stats.reassembly_errors += 1;
            }
            // The buffer is sized from the wire: never past the largest
            // message a daemon submits (a client message, or a recovered
            // packet of an old ring, which fits an MTU).
            let total_len = c.total_len as usize;
            if total_len > self.cfg.max_message.max(self.cfg.mtu) || total_len < c.data.len() {
                self.stats.reassembly_errors += 1;
                return;
            }
            // Carved out of the block (shared): no allocation per message,
            // and slices of the message cost no allocation either.
            let mut block = self.take_block(total_len);
            block.resize(total_len, 0);
            let mut buf = block.split_to(total_len);
            self.tx_block = block;
            buf.clear();
            buf.extend_from_slice(&c.data);
            self.partials.push(Partial {
                origin,
                msg_seq: c.msg_seq,
                service: c.service,
                groups: c.groups,
                total_len: c.total_len as usize,
                buf,
            });
            return;
        }
        let Some(i) = at else {
            self.stats.reassembly_errors += 1;
            return;
        };
        let p = &mut self.partials[i];
        if p.msg_seq != c.msg_seq || p.buf.len() + c.data.len() > p.total_len {
            self.partials.swap_remove(i);
            self.stats.reassembly_errors += 1;
            return;
        }
        p.buf.extend_from_slice(&c.data);
        if !c.flags.last {
            return;
        }
        let p = self.partials.swap_remove(i);
        if p.buf.len() != p.total_len {
            self.stats.reassembly_errors += 1;
            return;
        }
        let id = MsgId { origin, seq: p.msg_seq };
        self.push_delivery(Delivery {
            id,
            service: p.service,
            groups: p.groups,
            payload: p.buf.freeze(),
            ring_id: self.ring_id,
            ring_seq,
        });
    }

    fn push_delivery(&mut self, d: Delivery) {
        if !d.service.is_control() {
            self.stats.messages_delivered += 1;
        }
        self.deliveries.push_back(d);
    }
}

/// A sorted list of non-overlapping ranges, built in ascending order.
#[derive(Debug, Default)]
struct RangeList(Vec<RtrRange>);

impl RangeList {
    /// Adds `start..end` (ignored if empty), merging with the last range when
    /// they touch. Ranges must come in ascending order of `start`.
    fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            if start <= last.end() {
                let new_end = last.end().max(end);
                if let Ok(len) = u32::try_from(new_end - last.start) {
                    last.len = len;
                    return;
                }
            }
        }
        // A run longer than a u32 is split; such runs only come from bogus
        // tokens, and the list is truncated to one frame anyway.
        let mut at = start.max(self.0.last().map_or(0, |l| l.end()));
        while at < end {
            let len = u32::try_from(end - at).unwrap_or(u32::MAX);
            self.0.push(RtrRange { start: at, len });
            at += u64::from(len);
            if self.0.len() > 1 << 16 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
