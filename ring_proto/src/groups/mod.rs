//! Light-weight client groups over the daemon ring (sans-IO).
//!
//! One [`ClientGroups`] per daemon. Clients connect to their daemon, join
//! and leave named groups and multicast to them. Every join, leave,
//! disconnect and flush acknowledgement is one message ordered through the
//! ring, so every daemon applies the same changes in the same order and
//! computes the same views without any extra protocol. When daemon
//! membership changes, each daemon of the new ring sends its local group
//! state (one ordered `State` message) and every daemon merges the states
//! identically. `docs/groups.md` is the full description.
//!
//! ```text
//!  connect/join/leave/multicast/flush_ok/disconnect ──► poll_submit() ──► Node::submit
//!  Node::poll_event() ──► handle_event(now, &ev) ──► poll_client() ──► (client, ClientEvent)
//! ```
//!
//! # Calling contract
//!
//! Feed [`ClientGroups::handle_event`] every event of the daemon's
//! [`crate::Node`], in order, and nothing else. After any call, drain
//! [`ClientGroups::poll_submit`] into `Node::submit` in the order given
//! (a submission must not be dropped: on `Backlogged`, retry it later,
//! before any later one) and drain [`ClientGroups::poll_client`] to the
//! clients. Time is an input for symmetry with the other state machines;
//! the groups layer itself has no timers.
//!
//! # Views
//!
//! A view id is `(ring id, counter)`: the regular configuration in which the
//! view was installed and a counter of the views installed in that ring (over
//! all groups, starting at 1).
//! Ring ids are never reused, and every daemon of a ring computes the same
//! views in it, so a view id names one membership forever.

#[cfg(test)]
mod harness;
mod msg;
#[cfg(test)]
mod tests;

pub use msg::{Body, GroupMsg, MSG_MAGIC, MSG_VERSION, StateEntry};

use crate::Time;
use crate::ring::{ConfigKind, Configuration, Delivery, Event};
use crate::wire::{Groups, NodeId, RingId, Service};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

/// A daemon-local handle for a connected client, chosen by the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// A client's cluster-unique private name: its chosen name and its daemon,
/// written `#name#daemon`. It is also the name of the client's private
/// group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrivateName {
    /// The client's daemon.
    pub daemon: NodeId,
    /// The name the client chose (unique on its daemon).
    pub name: Bytes,
}

impl PrivateName {
    /// The private group name, `#name#daemon`.
    pub fn group_name(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.name.len() + 8);
        v.push(b'#');
        v.extend_from_slice(&self.name);
        v.push(b'#');
        v.extend_from_slice(self.daemon.0.to_string().as_bytes());
        v
    }

    /// Parses `#name#daemon`; `None` if it is not a private name.
    pub fn parse(group: &[u8]) -> Option<Self> {
        let rest = group.strip_prefix(b"#")?;
        let split = rest.iter().rposition(|&b| b == b'#')?;
        let (name, daemon) = (&rest[..split], &rest[split + 1..]);
        if name.is_empty() || name.contains(&b'#') || daemon.is_empty() || daemon.len() > 5 {
            return None;
        }
        let daemon: u16 = std::str::from_utf8(daemon).ok()?.parse().ok()?;
        Some(Self { daemon: NodeId(daemon), name: Bytes::copy_from_slice(name) })
    }
}

impl fmt::Display for PrivateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}#{}", String::from_utf8_lossy(&self.name), self.daemon)
    }
}

/// Identifies one view of one group: the ring it was installed in and a
/// counter of the views installed in that ring (1, 2, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViewId {
    /// The regular configuration the view was installed in.
    pub ring_id: RingId,
    /// Views installed in the ring so far, over all groups (1, 2, ...):
    /// unique within the ring even when a group is deleted and created
    /// again.
    pub counter: u64,
}

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ring_id, self.counter)
    }
}

/// Identifies one flush of a VS group: the ring and a counter of flushes
/// started in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlushId {
    /// The ring the flush started in.
    pub ring_id: RingId,
    /// Flushes started in that ring, over all groups (1, 2, ...).
    pub seq: u64,
}

/// What kind of group: open (EVS) or closed with virtual synchrony.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum GroupKind {
    /// Anyone may send; views change at once (Extended Virtual Synchrony).
    Open = 0,
    /// Only members may send; views change after a flush (Virtual
    /// Synchrony, sending-view delivery).
    Vs = 1,
}

/// Why a view changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A client joined.
    Join,
    /// A client left.
    Leave,
    /// A client disconnected.
    Disconnect,
    /// Daemon membership changed (partition, merge, crash).
    Network,
}

/// Why a join was refused when it was ordered (every daemon refuses it
/// alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The group has [`Limits::max_members`] members.
    GroupFull,
    /// The group exists with the other kind.
    KindMismatch,
}

/// What a local client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A message to a group the client is in (once, even if it is in several
    /// of the destinations), or to its private group.
    Message {
        /// The sending client.
        sender: PrivateName,
        /// Every destination of the message, as sent.
        groups: Groups,
        /// The service it was sent with.
        service: Service,
        /// The application's message type.
        msg_type: u16,
        /// The payload, shared by every local receiver.
        payload: Bytes,
    },
    /// A view (regular), or the transitional signal that precedes a network
    /// view (transitional: `view_id` is the view in force, `members` those
    /// of it still reachable).
    Membership {
        /// The group.
        group: Bytes,
        /// The view id (see [`ViewId`]).
        view_id: ViewId,
        /// Members, ascending; shared by every local member.
        members: Arc<[PrivateName]>,
        /// Why it changed.
        cause: Cause,
        /// Regular view or transitional signal.
        kind: ConfigKind,
    },
    /// VS group: the view is about to change; send what must be delivered in
    /// the current view, then call [`ClientGroups::flush_ok`].
    FlushRequest {
        /// The group.
        group: Bytes,
        /// The flush.
        flush: FlushId,
    },
    /// The client's leave of `group` took effect; no more messages of it.
    Left {
        /// The group.
        group: Bytes,
    },
    /// A join was refused when it was ordered.
    JoinRefused {
        /// The group.
        group: Bytes,
        /// Why.
        reason: Refusal,
    },
}

/// Bounds that keep memory finite. Exceeding one is an error, never a
/// panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest client or group name in bytes (default 32).
    pub max_name: usize,
    /// Most groups one client may be in, pending joins included (default 128).
    pub max_groups_per_client: usize,
    /// Most members of one group (default 1024); checked when the join is
    /// ordered.
    pub max_members: usize,
    /// Most clients connected to this daemon (default 4096).
    pub max_clients: usize,
    /// Most destination groups of one message (default 64).
    pub max_destinations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_name: 32,
            max_groups_per_client: 128,
            max_members: 1024,
            max_clients: 4096,
            max_destinations: 64,
        }
    }
}

/// A client request the daemon refuses at once (the caller's misuse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupsError {
    /// No connected client has this handle.
    #[error("unknown client")]
    UnknownClient,
    /// The handle is already connected.
    #[error("client handle already in use")]
    DuplicateClient,
    /// Another client of this daemon uses the name.
    #[error("name already in use on this daemon")]
    DuplicateName,
    /// Empty, too long, or contains `#` (group names may not start with it).
    #[error("bad name")]
    BadName,
    /// [`Limits::max_clients`] reached.
    #[error("too many clients")]
    TooManyClients,
    /// [`Limits::max_groups_per_client`] reached.
    #[error("too many groups")]
    TooManyGroups,
    /// No destination, or more than [`Limits::max_destinations`].
    #[error("bad destination count")]
    BadDestinations,
    /// Already a member of the group.
    #[error("already a member")]
    AlreadyMember,
    /// Not a member (leave, flush, or a send to a closed VS group).
    #[error("not a member")]
    NotMember,
    /// VS group: the client acknowledged a flush and must wait for the new
    /// view before sending.
    #[error("flushing: wait for the new view")]
    Flushing,
    /// `flush_ok` without an outstanding flush request.
    #[error("no flush requested")]
    NoFlush,
}

/// A message for the daemon to pass to `Node::submit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submit {
    /// Ring service: the client's service for data, `Agreed` for control.
    pub service: Service,
    /// Destination groups (the chunk's list).
    pub groups: Groups,
    /// The encoded [`GroupMsg`].
    pub payload: Bytes,
}

/// Counters; all only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Delivered payloads that are not group messages (ignored).
    pub undecodable: u64,
    /// Group messages that break the rules (wrong group count, unknown
    /// sender); ignored.
    pub malformed: u64,
    /// Client messages handed out.
    pub messages_delivered: u64,
    /// Regular views installed (over all groups).
    pub views_installed: u64,
    /// State exchanges completed.
    pub exchanges: u64,
}

/// One local client's membership of one group.
#[derive(Clone, Debug)]
struct Membership {
    kind: GroupKind,
    /// The client holds an installed view of the group.
    in_view: bool,
    /// The flush the client was last asked for.
    flush: Option<FlushId>,
    /// The client acknowledged a flush: no sending until the next view.
    flushed: bool,
}

#[derive(Debug)]
struct Local {
    name: PrivateName,
    connected: bool,
    /// Groups the client is in, as ordered (the daemon's authoritative
    /// record, sent in `State`).
    groups: BTreeMap<Bytes, Membership>,
    pending_joins: usize,
}

/// The view last announced to this daemon's clients of a group.
#[derive(Debug)]
struct View {
    id: ViewId,
    kind: GroupKind,
    members: Arc<[PrivateName]>,
    /// Local clients holding this view.
    local: Vec<ClientId>,
}

#[derive(Debug)]
struct Flush {
    id: FlushId,
    waiting: BTreeSet<PrivateName>,
    cause: Cause,
}

/// Replicated state of one group (identical on every daemon of a ring).
#[derive(Debug)]
struct Group {
    kind: GroupKind,
    /// Members after every ordered change.
    target: BTreeSet<PrivateName>,
    /// Members of the last view installed in this ring (for a VS group
    /// after a merge: the members that held some view).
    view: BTreeSet<PrivateName>,
    flush: Option<Flush>,
}

#[derive(Debug)]
enum Phase {
    /// No ring yet.
    Idle,
    /// In a ring, group state agreed.
    Operating,
    /// A transitional configuration: only local effects are applied.
    Transitional,
    /// A new ring: waiting for every member's state; other messages wait.
    Exchange { members: Vec<NodeId>, states: BTreeMap<NodeId, Vec<StateEntry>>, held: Vec<Delivery> },
}

/// One daemon's client groups. See the module docs for the calling
/// contract.
#[derive(Debug)]
pub struct ClientGroups {
    daemon: NodeId,
    limits: Limits,
    clients: BTreeMap<ClientId, Local>,
    names: BTreeMap<Bytes, ClientId>,
    groups: BTreeMap<Bytes, Group>,
    views: BTreeMap<Bytes, View>,
    phase: Phase,
    ring_id: Option<RingId>,
    flush_seq: u64,
    view_seq: u64,
    submits: VecDeque<Submit>,
    out: VecDeque<(ClientId, ClientEvent)>,
    stats: GroupStats,
}

fn one_group(groups: &Groups) -> Option<Bytes> {
    let mut it = groups.iter();
    let g = it.next()?;
    if it.next().is_some() {
        return None;
    }
    Some(Bytes::copy_from_slice(g))
}

impl ClientGroups {
    /// The groups layer of daemon `daemon`, with default [`Limits`].
    pub fn new(daemon: NodeId) -> Self {
        Self::with_limits(daemon, Limits::default())
    }

    /// The groups layer of daemon `daemon` with the given limits.
    pub fn with_limits(daemon: NodeId, limits: Limits) -> Self {
        Self {
            daemon,
            limits,
            clients: BTreeMap::new(),
            names: BTreeMap::new(),
            groups: BTreeMap::new(),
            views: BTreeMap::new(),
            phase: Phase::Idle,
            ring_id: None,
            flush_seq: 0,
            view_seq: 0,
            submits: VecDeque::new(),
            out: VecDeque::new(),
            stats: GroupStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// The next message to submit to the ring.
    pub fn poll_submit(&mut self) -> Option<Submit> {
        self.submits.pop_front()
    }

    /// The next event for a local client.
    pub fn poll_client(&mut self) -> Option<(ClientId, ClientEvent)> {
        self.out.pop_front()
    }

    /// Members of the last view of `group` announced on this daemon.
    pub fn view(&self, group: &[u8]) -> Option<(ViewId, &[PrivateName])> {
        self.views.get(group).map(|v| (v.id, &v.members[..]))
    }

    /// Whether the groups layer is exchanging state after a configuration
    /// change (messages wait until it ends).
    pub fn exchanging(&self) -> bool {
        matches!(self.phase, Phase::Exchange { .. })
    }

    fn valid_name(&self, n: &[u8]) -> bool {
        !n.is_empty() && n.len() <= self.limits.max_name && !n.contains(&b'#')
    }

    fn client(&mut self, c: ClientId) -> Result<&mut Local, GroupsError> {
        self.clients.get_mut(&c).filter(|l| l.connected).ok_or(GroupsError::UnknownClient)
    }

    fn push(&mut self, service: Service, groups: Groups, sender: Bytes, body: Body) {
        let payload = GroupMsg { sender, body }.encode();
        self.submits.push_back(Submit { service, groups, payload });
    }

    /// Connects a client under `name`; returns its private name. Local only:
    /// nothing is ordered until it joins a group.
    pub fn connect(&mut self, client: ClientId, name: &[u8]) -> Result<PrivateName, GroupsError> {
        if !self.valid_name(name) {
            return Err(GroupsError::BadName);
        }
        if self.clients.contains_key(&client) {
            return Err(GroupsError::DuplicateClient);
        }
        if self.names.contains_key(name) {
            return Err(GroupsError::DuplicateName);
        }
        if self.clients.len() >= self.limits.max_clients {
            return Err(GroupsError::TooManyClients);
        }
        let name = Bytes::copy_from_slice(name);
        let pn = PrivateName { daemon: self.daemon, name: name.clone() };
        self.names.insert(name, client);
        self.clients.insert(
            client,
            Local { name: pn.clone(), connected: true, groups: BTreeMap::new(), pending_joins: 0 },
        );
        Ok(pn)
    }

    /// Asks to join `group` (created by its first join, with that kind).
    pub fn join(&mut self, client: ClientId, group: &[u8], kind: GroupKind) -> Result<(), GroupsError> {
        if !self.valid_name(group) {
            return Err(GroupsError::BadName);
        }
        let cap = self.limits.max_groups_per_client;
        let l = self.client(client)?;
        if l.groups.contains_key(group) {
            return Err(GroupsError::AlreadyMember);
        }
        if l.groups.len() + l.pending_joins >= cap {
            return Err(GroupsError::TooManyGroups);
        }
        l.pending_joins += 1;
        let sender = l.name.name.clone();
        let groups = Groups::encode(&[group]).map_err(|_| GroupsError::BadName)?;
        self.push(Service::Agreed, groups, sender, Body::Join { kind });
        Ok(())
    }

    /// Asks to leave `group`.
    pub fn leave(&mut self, client: ClientId, group: &[u8]) -> Result<(), GroupsError> {
        let l = self.client(client)?;
        if !l.groups.contains_key(group) {
            return Err(GroupsError::NotMember);
        }
        let sender = l.name.name.clone();
        let groups = Groups::encode(&[group]).map_err(|_| GroupsError::BadName)?;
        self.push(Service::Agreed, groups, sender, Body::Leave);
        Ok(())
    }

    /// Multicasts `payload` to `groups` (group names or private names).
    /// VS groups are closed: the sender must hold a view of each and not be
    /// flushing. Every service rides the ring in total order; see
    /// `docs/groups.md`.
    pub fn multicast<N: AsRef<[u8]>>(
        &mut self,
        client: ClientId,
        service: Service,
        groups: &[N],
        msg_type: u16,
        payload: Bytes,
        self_discard: bool,
    ) -> Result<(), GroupsError> {
        if service.is_control() {
            return Err(GroupsError::BadDestinations);
        }
        if groups.is_empty() || groups.len() > self.limits.max_destinations {
            return Err(GroupsError::BadDestinations);
        }
        let max_name = self.limits.max_name;
        let l = self.clients.get(&client).filter(|l| l.connected).ok_or(GroupsError::UnknownClient)?;
        let mut views = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let g = g.as_ref();
            if PrivateName::parse(g).is_some() {
                continue;
            }
            if g.is_empty() || g.len() > max_name || g.contains(&b'#') {
                return Err(GroupsError::BadName);
            }
            let vs = match l.groups.get(g) {
                Some(m) => m.kind == GroupKind::Vs,
                None => self.groups.get(g).is_some_and(|x| x.kind == GroupKind::Vs),
            };
            if !vs {
                continue;
            }
            let m = l.groups.get(g).filter(|m| m.in_view).ok_or(GroupsError::NotMember)?;
            if m.flushed {
                return Err(GroupsError::Flushing);
            }
            let v = self.views.get(g).ok_or(GroupsError::NotMember)?;
            views.push((i as u8, v.id));
        }
        let sender = l.name.name.clone();
        let groups = Groups::encode(groups).map_err(|_| GroupsError::BadName)?;
        self.push(service, groups, sender, Body::Data { self_discard, msg_type, views, payload });
        Ok(())
    }

    /// VS group: the client has sent what belongs to the current view.
    pub fn flush_ok(&mut self, client: ClientId, group: &[u8]) -> Result<(), GroupsError> {
        let l = self.client(client)?;
        let m = l.groups.get_mut(group).ok_or(GroupsError::NotMember)?;
        let flush = m.flush.take().ok_or(GroupsError::NoFlush)?;
        m.flushed = true;
        let sender = l.name.name.clone();
        let groups = Groups::encode(&[group]).map_err(|_| GroupsError::BadName)?;
        self.push(Service::Agreed, groups, sender, Body::FlushOk { flush });
        Ok(())
    }

    /// The client is gone: it leaves every group once the disconnect is
    /// ordered, and gets no more events. Its name stays taken until then.
    pub fn disconnect(&mut self, client: ClientId) -> Result<(), GroupsError> {
        let l = self.client(client)?;
        l.connected = false;
        let sender = l.name.name.clone();
        self.push(Service::Agreed, Groups::none(), sender, Body::Disconnect);
        Ok(())
    }

    fn emit(&mut self, c: ClientId, ev: ClientEvent) {
        if self.clients.get(&c).is_some_and(|l| l.connected) {
            self.out.push_back((c, ev));
        }
    }

    fn local_id(&self, m: &PrivateName) -> Option<ClientId> {
        if m.daemon != self.daemon {
            return None;
        }
        self.names.get(&m.name).copied()
    }

    /// Handles one event of this daemon's `Node`, in order.
    pub fn handle_event(&mut self, _now: Time, ev: &Event) {
        match ev {
            Event::Configuration(c) => match c.kind {
                ConfigKind::Transitional => self.on_transitional(c),
                ConfigKind::Regular => self.on_regular(c),
            },
            Event::Deliver(d) => self.on_delivery(d),
        }
    }

    fn on_delivery(&mut self, d: &Delivery) {
        match &mut self.phase {
            Phase::Idle => {}
            Phase::Operating => self.apply(d),
            Phase::Transitional => self.apply_local(d),
            Phase::Exchange { members, states, held } => {
                let Ok(msg) = GroupMsg::decode(&d.payload) else {
                    self.stats.undecodable += 1;
                    return;
                };
                if let Body::State { ring_id, clients } = msg.body {
                    if Some(ring_id) == self.ring_id && members.contains(&d.id.origin) {
                        states.entry(d.id.origin).or_insert(clients);
                        if states.len() == members.len() {
                            self.complete_exchange();
                        }
                    }
                } else {
                    held.push(d.clone());
                }
            }
        }
    }

    fn take_held(&mut self) -> Vec<Delivery> {
        match std::mem::replace(&mut self.phase, Phase::Transitional) {
            Phase::Exchange { held, .. } => held,
            _ => Vec::new(),
        }
    }

    fn on_transitional(&mut self, c: &Configuration) {
        // An interrupted exchange: what waited takes its local effect only
        // (the next exchange carries it in the states).
        for d in self.take_held() {
            self.apply_local(&d);
        }
        self.phase = Phase::Transitional;
        for g in self.groups.values_mut() {
            g.flush = None;
        }
        for l in self.clients.values_mut() {
            for m in l.groups.values_mut() {
                m.flush = None;
            }
        }
        let mut signals = Vec::new();
        for (name, v) in &self.views {
            if v.local.is_empty() {
                continue;
            }
            let members: Arc<[PrivateName]> =
                v.members.iter().filter(|m| c.members.contains(&m.daemon)).cloned().collect();
            for &cl in &v.local {
                signals.push((
                    cl,
                    ClientEvent::Membership {
                        group: name.clone(),
                        view_id: v.id,
                        members: members.clone(),
                        cause: Cause::Network,
                        kind: ConfigKind::Transitional,
                    },
                ));
            }
        }
        for (cl, ev) in signals {
            self.emit(cl, ev);
        }
    }

    fn on_regular(&mut self, c: &Configuration) {
        for d in self.take_held() {
            self.apply_local(&d);
        }
        self.ring_id = Some(c.ring_id);
        self.flush_seq = 0;
        self.view_seq = 0;
        let clients = self
            .clients
            .values()
            .map(|l| StateEntry {
                name: l.name.name.clone(),
                groups: l.groups.iter().map(|(g, m)| (g.clone(), m.kind, m.in_view)).collect(),
            })
            .collect();
        self.phase =
            Phase::Exchange { members: c.members.clone(), states: BTreeMap::new(), held: Vec::new() };
        self.push(Service::Agreed, Groups::none(), Bytes::new(), Body::State { ring_id: c.ring_id, clients });
    }

    fn complete_exchange(&mut self) {
        let Phase::Exchange { states, held, .. } = std::mem::replace(&mut self.phase, Phase::Operating)
        else {
            return;
        };
        self.stats.exchanges += 1;
        let mut groups: BTreeMap<Bytes, Group> = BTreeMap::new();
        for (daemon, entries) in states {
            for e in entries {
                let m = PrivateName { daemon, name: e.name };
                for (g, kind, in_view) in e.groups {
                    let grp = groups.entry(g).or_insert_with(|| Group {
                        kind,
                        target: BTreeSet::new(),
                        view: BTreeSet::new(),
                        flush: None,
                    });
                    if kind == GroupKind::Vs {
                        grp.kind = GroupKind::Vs;
                    }
                    grp.target.insert(m.clone());
                    if in_view {
                        grp.view.insert(m.clone());
                    }
                }
            }
        }
        // Local records follow the merged kind.
        for l in self.clients.values_mut() {
            for (g, m) in &mut l.groups {
                if let Some(grp) = groups.get(g) {
                    m.kind = grp.kind;
                }
            }
        }
        self.groups = groups;
        let names: Vec<Bytes> = self.groups.keys().cloned().collect();
        for g in names {
            let Some(grp) = self.groups.get(&g) else { continue };
            match grp.kind {
                GroupKind::Open => self.install(&g, Cause::Network),
                GroupKind::Vs => {
                    let waiting = grp.view.clone();
                    self.start_flush(&g, waiting, Cause::Network);
                }
            }
        }
        // Views of groups that no longer exist here.
        let groups = &self.groups;
        self.views.retain(|g, _| groups.contains_key(g));
        for d in held {
            self.apply(&d);
        }
    }

    fn start_flush(&mut self, g: &Bytes, waiting: BTreeSet<PrivateName>, cause: Cause) {
        if waiting.is_empty() {
            self.install(g, cause);
            return;
        }
        let Some(ring_id) = self.ring_id else { return };
        self.flush_seq += 1;
        let id = FlushId { ring_id, seq: self.flush_seq };
        let Some(grp) = self.groups.get_mut(g) else { return };
        let cause = match &grp.flush {
            Some(f) if f.cause == Cause::Network => Cause::Network,
            _ => cause,
        };
        let local: Vec<PrivateName> = waiting.iter().filter(|m| m.daemon == self.daemon).cloned().collect();
        grp.flush = Some(Flush { id, waiting, cause });
        for m in local {
            let Some(c) = self.local_id(&m) else { continue };
            if let Some(mb) = self.clients.get_mut(&c).and_then(|l| l.groups.get_mut(g)) {
                mb.flush = Some(id);
            }
            self.emit(c, ClientEvent::FlushRequest { group: g.clone(), flush: id });
        }
    }

    /// Installs the group's target membership as a new view.
    fn install(&mut self, g: &Bytes, cause: Cause) {
        let Some(ring_id) = self.ring_id else { return };
        let Some(grp) = self.groups.get_mut(g) else { return };
        self.view_seq += 1;
        grp.flush = None;
        grp.view = grp.target.clone();
        let id = ViewId { ring_id, counter: self.view_seq };
        let kind = grp.kind;
        self.stats.views_installed += 1;
        if grp.target.is_empty() {
            self.groups.remove(g);
            self.views.remove(g);
            return;
        }
        let members: Arc<[PrivateName]> = grp.target.iter().cloned().collect();
        let mut local = Vec::new();
        for m in members.iter().filter(|m| m.daemon == self.daemon) {
            let Some(c) = self.local_id(m) else { continue };
            if let Some(mb) = self.clients.get_mut(&c).and_then(|l| l.groups.get_mut(g)) {
                mb.in_view = true;
                mb.flushed = false;
                mb.flush = None;
            }
            local.push(c);
        }
        for &c in &local {
            self.emit(
                c,
                ClientEvent::Membership {
                    group: g.clone(),
                    view_id: id,
                    members: members.clone(),
                    cause,
                    kind: ConfigKind::Regular,
                },
            );
        }
        self.views.insert(g.clone(), View { id, kind, members, local });
    }

    /// A membership change of `g` was ordered (its target already changed).
    fn changed(&mut self, g: &Bytes, cause: Cause) {
        let Some(grp) = self.groups.get(g) else { return };
        match grp.kind {
            GroupKind::Open => self.install(g, cause),
            GroupKind::Vs => {
                let waiting = grp.view.intersection(&grp.target).cloned().collect();
                self.start_flush(g, waiting, cause);
            }
        }
    }

    /// Drops a local client's membership of `g` (leave or disconnect).
    fn drop_local(&mut self, c: ClientId, g: &Bytes) {
        if let Some(l) = self.clients.get_mut(&c) {
            l.groups.remove(g);
        }
        if let Some(v) = self.views.get_mut(g) {
            v.local.retain(|&x| x != c);
        }
    }

    fn remove_client(&mut self, c: ClientId) {
        let Some(l) = self.clients.remove(&c) else { return };
        self.names.remove(&l.name.name);
        for g in l.groups.keys() {
            if let Some(v) = self.views.get_mut(g) {
                v.local.retain(|&x| x != c);
            }
        }
    }

    fn decode(&mut self, d: &Delivery) -> Option<(PrivateName, Body)> {
        let Ok(msg) = GroupMsg::decode(&d.payload) else {
            self.stats.undecodable += 1;
            return None;
        };
        Some((PrivateName { daemon: d.id.origin, name: msg.sender }, msg.body))
    }

    /// Applies an ordered message to the agreed state (phase Operating).
    fn apply(&mut self, d: &Delivery) {
        let Some((sender, body)) = self.decode(d) else { return };
        let local = self.local_id(&sender);
        match body {
            Body::Data { self_discard, msg_type, views, payload } => {
                self.deliver(d, &sender, self_discard, msg_type, &views, payload);
            }
            Body::Join { kind } => {
                let Some(g) = one_group(&d.groups) else {
                    self.stats.malformed += 1;
                    return;
                };
                if let Some(c) = local {
                    if let Some(l) = self.clients.get_mut(&c) {
                        l.pending_joins = l.pending_joins.saturating_sub(1);
                    }
                }
                let max = self.limits.max_members;
                let grp = self.groups.entry(g.clone()).or_insert_with(|| Group {
                    kind,
                    target: BTreeSet::new(),
                    view: BTreeSet::new(),
                    flush: None,
                });
                let refusal = if grp.kind != kind {
                    Some(Refusal::KindMismatch)
                } else if grp.target.len() >= max {
                    Some(Refusal::GroupFull)
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    if let Some(c) = local {
                        self.emit(c, ClientEvent::JoinRefused { group: g, reason });
                    }
                    return;
                }
                if !grp.target.insert(sender) {
                    return;
                }
                if let Some(c) = local {
                    if let Some(l) = self.clients.get_mut(&c) {
                        l.groups.insert(
                            g.clone(),
                            Membership { kind, in_view: false, flush: None, flushed: false },
                        );
                    }
                }
                self.changed(&g, Cause::Join);
            }
            Body::Leave => {
                let Some(g) = one_group(&d.groups) else {
                    self.stats.malformed += 1;
                    return;
                };
                if !self.groups.get_mut(&g).is_some_and(|grp| grp.target.remove(&sender)) {
                    return;
                }
                if let Some(c) = local {
                    self.drop_local(c, &g);
                    self.emit(c, ClientEvent::Left { group: g.clone() });
                }
                self.changed(&g, Cause::Leave);
            }
            Body::Disconnect => {
                let mut left = Vec::new();
                for (g, grp) in &mut self.groups {
                    if grp.target.remove(&sender) {
                        left.push(g.clone());
                    }
                }
                if let Some(c) = local {
                    self.remove_client(c);
                }
                for g in left {
                    self.changed(&g, Cause::Disconnect);
                }
            }
            Body::FlushOk { flush } => {
                let Some(g) = one_group(&d.groups) else {
                    self.stats.malformed += 1;
                    return;
                };
                let Some(grp) = self.groups.get_mut(&g) else { return };
                let Some(f) = grp.flush.as_mut().filter(|f| f.id == flush) else { return };
                f.waiting.remove(&sender);
                if f.waiting.is_empty() {
                    let cause = f.cause;
                    self.install(&g, cause);
                }
            }
            Body::State { .. } => {} // of an exchange already complete
        }
    }

    /// Applies a message delivered outside an agreed state (transitional
    /// configuration, interrupted exchange): data reaches the local holders
    /// of the current views; only this daemon's clients' own changes are
    /// recorded, for the next state exchange.
    fn apply_local(&mut self, d: &Delivery) {
        let Some((sender, body)) = self.decode(d) else { return };
        let local = self.local_id(&sender);
        match body {
            Body::Data { self_discard, msg_type, views, payload } => {
                self.deliver(d, &sender, self_discard, msg_type, &views, payload);
            }
            Body::Join { kind } => {
                let (Some(c), Some(g)) = (local, one_group(&d.groups)) else { return };
                if let Some(l) = self.clients.get_mut(&c) {
                    l.pending_joins = l.pending_joins.saturating_sub(1);
                    l.groups.entry(g).or_insert(Membership {
                        kind,
                        in_view: false,
                        flush: None,
                        flushed: false,
                    });
                }
            }
            Body::Leave => {
                let (Some(c), Some(g)) = (local, one_group(&d.groups)) else { return };
                if self.clients.get(&c).is_some_and(|l| l.groups.contains_key(&g)) {
                    self.drop_local(c, &g);
                    self.emit(c, ClientEvent::Left { group: g });
                }
            }
            Body::Disconnect => {
                if let Some(c) = local {
                    self.remove_client(c);
                }
            }
            Body::FlushOk { .. } | Body::State { .. } => {}
        }
    }

    /// Hands a data message to every local receiver once.
    fn deliver(
        &mut self,
        d: &Delivery,
        sender: &PrivateName,
        self_discard: bool,
        msg_type: u16,
        views: &[(u8, ViewId)],
        payload: Bytes,
    ) {
        let mut to: Vec<ClientId> = Vec::new();
        for (i, g) in d.groups.iter().enumerate() {
            if let Some(p) = PrivateName::parse(g) {
                if let Some(c) = self.local_id(&p) {
                    to.push(c);
                }
                continue;
            }
            let Some(v) = self.views.get(g) else { continue };
            if v.kind == GroupKind::Vs {
                // Sending-view delivery: only in the view it was sent in.
                let sent_in = views.iter().find(|(idx, _)| usize::from(*idx) == i).map(|x| x.1);
                if sent_in != Some(v.id) {
                    continue;
                }
            }
            to.extend_from_slice(&v.local);
        }
        to.sort_unstable();
        to.dedup();
        for c in to {
            if self_discard && self.clients.get(&c).is_some_and(|l| &l.name == sender) {
                continue;
            }
            self.stats.messages_delivered += 1;
            self.emit(
                c,
                ClientEvent::Message {
                    sender: sender.clone(),
                    groups: d.groups.clone(),
                    service: d.service,
                    msg_type,
                    payload: payload.clone(),
                },
            );
        }
    }
}
