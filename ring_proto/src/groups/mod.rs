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

#[cfg(any(test, feature = "test-support"))]
#[cfg_attr(not(all(test, feature = "test-support")), allow(dead_code))]
mod harness;
#[cfg(test)]
mod key_tests;
mod msg;
#[cfg(any(test, feature = "test-support"))]
pub mod testkit;
#[cfg(test)]
mod tests;

pub use msg::{
    Body, GroupMsg, MSG_MAGIC, MSG_VERSION, StateEntry, StateGroup, StateKey, StateView, max_data_overhead,
};

use crate::Time;
use crate::ring::{ConfigKind, Configuration, Delivery, Event, ServerKey};
use crate::security::policy::{Action, Policy};
use crate::wire::{Groups, NodeId, RingId, Service};
use bytes::{Bytes, BytesMut};
use ringfence_crypto::aead::Nonce;
use ringfence_crypto::group::{DAEMON_NONCE_BIT, GroupKey, key_id_of};
use ringfence_crypto::kdf::{group_key, group_key_id};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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

impl ViewId {
    /// The 18-byte encoding (ring sequence, ring representative, counter;
    /// big-endian), as in the client protocol; the input of the view's key.
    pub fn to_bytes(self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[..8].copy_from_slice(&self.ring_id.seq.to_be_bytes());
        b[8..10].copy_from_slice(&self.ring_id.rep.0.to_be_bytes());
        b[10..].copy_from_slice(&self.counter.to_be_bytes());
        b
    }
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

/// How a group's payloads are protected (ARCHITECTURE.md section 7). Fixed
/// per group by the policy; a client states it when it joins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum GroupMode {
    /// Nothing beyond the links between daemons.
    #[default]
    None = 0,
    /// Closed VS group: members seal payloads under the view key the
    /// daemons derive and hand out with each view.
    IntegratedVs = 1,
    /// Open EVS group: members seal under the view key; daemons reseal a
    /// message sealed under an older key of the group before delivering it
    /// (the EVS fix), and seal non-members' messages.
    OptimizedEvs = 2,
    /// No client keys: local clients over the Unix socket, remote clients
    /// over TLS; daemons carry the data over encrypted links.
    ThreeStep = 3,
    /// Layered (closed VS group): the members agree on each view's key by
    /// TGDH among themselves (`ringfence_client`'s agreement engine); the
    /// daemons carry signed protocol messages and opaque payloads and hold
    /// no key of the group.
    LayeredTgdh = 4,
    /// Layered, by group Diffie-Hellman (IKA.2).
    LayeredGdh = 5,
    /// Layered, by Burmester-Desmedt.
    LayeredBd = 6,
    /// Layered, by STR.
    LayeredStr = 7,
    /// Layered, by centralized key distribution (the oldest member).
    LayeredCkd = 8,
}

impl GroupMode {
    /// Every mode.
    pub const ALL: [Self; 9] = [
        Self::None,
        Self::IntegratedVs,
        Self::OptimizedEvs,
        Self::ThreeStep,
        Self::LayeredTgdh,
        Self::LayeredGdh,
        Self::LayeredBd,
        Self::LayeredStr,
        Self::LayeredCkd,
    ];

    /// The mode's name in configs and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::IntegratedVs => "integrated-vs",
            Self::OptimizedEvs => "optimized-evs",
            Self::ThreeStep => "three-step",
            Self::LayeredTgdh => "layered-tgdh",
            Self::LayeredGdh => "layered-gdh",
            Self::LayeredBd => "layered-bd",
            Self::LayeredStr => "layered-str",
            Self::LayeredCkd => "layered-ckd",
        }
    }

    /// Whether the group's key is agreed by its members (a layered mode):
    /// the daemons hold no key of it and carry its payloads as they are.
    pub const fn layered(self) -> bool {
        matches!(
            self,
            Self::LayeredTgdh | Self::LayeredGdh | Self::LayeredBd | Self::LayeredStr | Self::LayeredCkd
        )
    }

    /// Whether members hold view keys the daemons derive.
    pub const fn keyed(self) -> bool {
        matches!(self, Self::IntegratedVs | Self::OptimizedEvs)
    }

    /// The group kind the mode implies, if it implies one.
    pub const fn kind(self) -> Option<GroupKind> {
        match self {
            Self::IntegratedVs => Some(GroupKind::Vs),
            Self::OptimizedEvs => Some(GroupKind::Open),
            m if m.layered() => Some(GroupKind::Vs),
            _ => None,
        }
    }

    /// The mode of wire value `b`.
    pub const fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::None),
            1 => Some(Self::IntegratedVs),
            2 => Some(Self::OptimizedEvs),
            3 => Some(Self::ThreeStep),
            4 => Some(Self::LayeredTgdh),
            5 => Some(Self::LayeredGdh),
            6 => Some(Self::LayeredBd),
            7 => Some(Self::LayeredStr),
            8 => Some(Self::LayeredCkd),
            _ => None,
        }
    }
}

impl fmt::Display for GroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GroupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            format!(
                "unknown group mode `{s}` (none, integrated-vs, optimized-evs, three-step, layered-tgdh, \
                 layered-gdh, layered-bd, layered-str, layered-ckd)"
            )
        })
    }
}

/// A view key as handed to a member: shared, zeroized when the last holder
/// drops it, and `Debug` shows only its id.
#[derive(Clone, Debug)]
pub struct ViewKey(pub Arc<GroupKey>);

impl ViewKey {
    /// The public key id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl PartialEq for ViewKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id() && self.0.secret() == other.0.secret()
    }
}

impl Eq for ViewKey {}

/// Why a message of an `optimized-evs` group could not be opened by its
/// receivers' daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyLoss {
    /// Its key expired: no message used it for the policy's `key_timeout`.
    TimeOut,
    /// Its key expired: more than `key_out` newer keys of the group.
    KeyOut,
    /// Its key was never known here (sealed in a view this daemon did not
    /// see, and no daemon of the ring brought it).
    Unknown,
    /// It did not open under the key its id names (forged or corrupted).
    Forged,
}

impl KeyLoss {
    /// A short name for logs and clients.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TimeOut => "key expired by time-out",
            Self::KeyOut => "key expired by key-out",
            Self::Unknown => "key unknown to the daemon",
            Self::Forged => "does not open under its key",
        }
    }
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
    /// The policy refreshed the group's key (time-out or data-out): same
    /// members, new view id and key.
    Rekey,
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
    /// The group exists with another protection mode.
    ModeMismatch,
    /// The mode needs view keys and the daemons have no server key (link
    /// security `none`).
    NoServerKey,
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
        /// The payload is sealed under a view key of the (one) destination
        /// group: its key id says which.
        sealed: bool,
        /// The payload, shared by every local receiver.
        payload: Bytes,
    },
    /// A message of an `optimized-evs` group this daemon could not open to
    /// reseal under the current key: reported, never silently dropped.
    Undecipherable {
        /// The sending client.
        sender: PrivateName,
        /// The group.
        group: Bytes,
        /// The application's message type.
        msg_type: u16,
        /// The key id the message named.
        key_id: u32,
        /// Why.
        reason: KeyLoss,
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
        /// The group's protection mode.
        mode: GroupMode,
        /// Keyed modes, regular views: the view's key (a transitional signal
        /// keeps the key of the view in force and carries none).
        key: Option<ViewKey>,
        /// A regular view caused by joins: the members that joined, the
        /// others being those of the group's previous view (which they all
        /// held); empty for any other cause and for transitional signals.
        /// A newcomer learns from it which members are new (layered
        /// groups' incremental joins).
        joined: Arc<[PrivateName]>,
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
    /// A daemon's state in an exchange is split into ring messages of about
    /// this many bytes (default 256 KiB; the ring's largest message is
    /// 1 MiB by default).
    pub max_state_part: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_name: 32,
            max_groups_per_client: 128,
            max_members: 1024,
            max_clients: 4096,
            max_destinations: 64,
            max_state_part: 256 * 1024,
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
    /// The access-control policy does not allow it.
    #[error("denied by the access-control policy")]
    Denied,
    /// The mode stated at join is not the mode the policy gives the group.
    #[error("the group's mode differs from the one asked for")]
    ModeMismatch,
    /// The group's mode needs view keys and the daemons have no server key.
    #[error("keyed group modes need link security with a server key")]
    NoServerKey,
    /// A message to a keyed or three-step group must have that group as
    /// its only destination.
    #[error("a message to a keyed or three-step group must have it as its only destination")]
    KeyedMultiDestination,
    /// `integrated-vs`: the payload is not sealed under the current view's
    /// key.
    #[error("the payload is not sealed under the current view key")]
    WrongKey,
    /// Keyed and three-step groups: the client's connection is plain TCP.
    #[error("keyed and three-step groups need a local socket or TLS")]
    InsecureTransport,
    /// The payload is over the limit the daemon announced (it would not
    /// fit a ring message).
    #[error("payload over the daemon's limit")]
    TooLarge,
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
    /// Requests refused by the access-control policy (or a mode mismatch).
    pub denials: u64,
    /// View keys derived (one HMAC pair each).
    pub keys_derived: u64,
    /// `optimized-evs`: messages resealed under the current key (EVS fix).
    pub evs_fixes: u64,
    /// `optimized-evs`: non-members' (or unsealed) messages sealed here.
    pub sealed_for_clients: u64,
    /// `optimized-evs`: messages reported undecipherable to clients.
    pub undecipherable: u64,
    /// Artificial view changes for a new key (policy time-out, data-out).
    pub rekeys: u64,
}

/// One local client's membership of one group.
#[derive(Clone, Debug)]
struct Membership {
    kind: GroupKind,
    mode: GroupMode,
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
    /// Who the client authenticated as (policy principal).
    principal: String,
    /// Its connection is private (Unix socket or TLS).
    secure: bool,
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
    mode: GroupMode,
    members: Arc<[PrivateName]>,
    /// Local clients holding this view.
    local: Vec<ClientId>,
    /// Keyed modes: the view's key.
    key: Option<Arc<GroupKey>>,
    /// The epoch of the server key it was derived from.
    key_epoch: Option<u64>,
    /// Messages this daemon sealed under `key` (nonce counter).
    sealed: u64,
    /// `optimized-evs`: older keys of the group, oldest first.
    old: VecDeque<OldKey>,
    /// `optimized-evs`: ids of keys that expired, and why (bounded).
    expired: VecDeque<(u32, KeyLoss)>,
    installed_at: Time,
    /// A rekey by time was asked for this view.
    rekey_asked: bool,
    /// EVS fixes done for this group (since it was last created here).
    evs_fixes: u64,
    /// Messages of this group reported undecipherable.
    undecipherable: u64,
    /// VS: the daemons that went through the same configurations as this
    /// one since the view was installed, as of the current ring: they
    /// delivered the same messages of the view. A message sent in the view
    /// is delivered here only if its daemon is one of them (a daemon that
    /// was cut off in the meantime delivered others: its next messages
    /// would leave a gap here).
    peers: BTreeSet<NodeId>,
    /// `peers` narrowed by the transitional configurations since the
    /// current ring (it becomes `peers` at the next regular one).
    peers_next: BTreeSet<NodeId>,
    /// VS: a view of the members that moved together from an earlier view
    /// (installed to end that view before a merged one).
    side: bool,
}

/// An older key of an `optimized-evs` group.
#[derive(Debug)]
struct OldKey {
    view: ViewId,
    key: Arc<GroupKey>,
    /// When a message last used it (or when it stopped being current).
    last_used: Time,
}

/// Most expired key ids remembered per group (to name the reason).
const EXPIRED_KEPT: usize = 32;

/// Most keys (about 80 bytes each) and expired ids one daemon's state
/// message carries: it must fit the ring's largest message. Keys beyond it
/// (the oldest of groups met last) are not shared; their messages are
/// reported undecipherable on daemons that never held them.
const STATE_KEYS_MAX: usize = 4096;

/// A deleted `optimized-evs` group's keys: when, old keys, expired ids.
type Buried = (Time, VecDeque<OldKey>, VecDeque<(u32, KeyLoss)>);

/// Most deleted `optimized-evs` groups whose keys are kept (`bury`).
const GRAVEYARD_KEPT: usize = 1024;

impl View {
    fn empty(id: ViewId, kind: GroupKind, mode: GroupMode) -> Self {
        Self {
            id,
            kind,
            mode,
            members: Arc::from(Vec::new()),
            local: Vec::new(),
            key: None,
            key_epoch: None,
            sealed: 0,
            old: VecDeque::new(),
            expired: VecDeque::new(),
            installed_at: Time::ZERO,
            rekey_asked: false,
            evs_fixes: 0,
            undecipherable: 0,
            peers: BTreeSet::new(),
            peers_next: BTreeSet::new(),
            side: false,
        }
    }
}

/// Splits a daemon's state into parts of about `budget` encoded bytes each
/// (at least one part; an entry larger than the budget gets a part alone).
fn state_parts(ring_id: RingId, state: StateOf, budget: usize) -> Vec<Body> {
    type Part = (Vec<StateEntry>, Vec<StateKey>, Vec<(Bytes, u32, KeyLoss)>, Vec<StateView>, usize);
    let (clients, keys, expired, views) = state;
    let empty = || -> Part { (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0) };
    let mut parts: Vec<Part> = vec![empty()];
    // The part the next entry of `size` bytes goes to.
    let room = |parts: &mut Vec<Part>, size: usize| -> usize {
        let used = parts.last().map_or(0, |p| p.4);
        if used > 0 && used + size > budget {
            parts.push(empty());
        }
        let i = parts.len() - 1;
        parts[i].4 += size;
        i
    };
    for c in clients {
        let size = 2 + c.name.len() + c.groups.iter().map(|g| 2 + g.name.len()).sum::<usize>();
        let i = room(&mut parts, size);
        parts[i].0.push(c);
    }
    for k in keys {
        let i = room(&mut parts, 56 + k.group.len());
        parts[i].1.push(k);
    }
    for x in expired {
        let i = room(&mut parts, 6 + x.0.len());
        parts[i].2.push(x);
    }
    for v in views {
        let i = room(&mut parts, 23 + v.group.len() + 2 * v.peers.len());
        parts[i].3.push(v);
    }
    // Part numbers are u16: 65535 parts of the default 256 KiB is 16 GiB.
    parts.truncate(usize::from(u16::MAX));
    let n = parts.len() as u16;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, (clients, keys, expired, views, _))| Body::State {
            ring_id,
            part: i as u16,
            parts: n,
            clients,
            keys,
            expired,
            views,
        })
        .collect()
}

/// VS after a merge: the holders of the group's views (`holders`) split
/// by what they delivered, from each daemon's view and peers (`held`).
/// Holders of one view whose daemons came through different
/// configurations delivered different messages in it: then every set of
/// holders that moved together (ascending by view and peers) is returned,
/// to be given a view of its own before the merged one. Empty when no
/// view is held by two such sets (the merged view may follow at once).
fn sides(
    holders: &BTreeSet<PrivateName>,
    held: Option<&BTreeMap<NodeId, (ViewId, Vec<NodeId>)>>,
) -> Vec<BTreeSet<PrivateName>> {
    let mut classes: BTreeMap<(Option<ViewId>, Vec<NodeId>), BTreeSet<PrivateName>> = BTreeMap::new();
    for m in holders {
        // A daemon that reported no view of it: a set of its own.
        let key = held
            .and_then(|h| h.get(&m.daemon))
            .map_or_else(|| (None, vec![m.daemon]), |(v, p)| (Some(*v), p.clone()));
        classes.entry(key).or_default().insert(m.clone());
    }
    let mut per_view: BTreeMap<ViewId, usize> = BTreeMap::new();
    for (view, _) in classes.keys() {
        if let Some(v) = view {
            *per_view.entry(*v).or_default() += 1;
        }
    }
    if per_view.values().all(|&n| n < 2) {
        return Vec::new();
    }
    classes.into_values().collect()
}

/// Drops the old keys of `v` no message used for `timeout`.
fn expire_old(v: &mut View, now: Time, timeout: Duration) {
    while let Some(i) = v.old.iter().position(|o| now.saturating_since(o.last_used) > timeout) {
        if let Some(o) = v.old.remove(i) {
            remember_expired(v, o.key.id(), KeyLoss::TimeOut);
        }
    }
}

fn remember_expired(v: &mut View, id: u32, why: KeyLoss) {
    if v.expired.len() == EXPIRED_KEPT {
        v.expired.pop_front();
    }
    v.expired.push_back((id, why));
}

/// What `ringfence monitor` shows of one group on this daemon.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupReport {
    /// The group.
    pub name: String,
    /// Its mode.
    pub mode: &'static str,
    /// The view in force here.
    pub view: String,
    /// Members of the view (all daemons).
    pub members: usize,
    /// Members connected here.
    pub local: usize,
    /// The current key's id (keyed modes).
    pub key_id: Option<String>,
    /// The server key epoch the view key was derived from.
    pub key_epoch: Option<u64>,
    /// Older keys kept (`optimized-evs`).
    pub old_keys: usize,
    /// EVS fixes done here.
    pub evs_fixes: u64,
    /// Messages reported undecipherable here.
    pub undecipherable: u64,
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
    mode: GroupMode,
    /// Payload bytes delivered in the current view (data-out rekey).
    bytes: u64,
    /// Members after every ordered change.
    target: BTreeSet<PrivateName>,
    /// Members of the last view installed in this ring (for a VS group
    /// after a merge: the members that held some view).
    view: BTreeSet<PrivateName>,
    flush: Option<Flush>,
    /// VS after a merge: holders of one view came through different
    /// configurations (so delivered different messages in it). Once the
    /// flush ends, each of these sets (holders that moved together) gets a
    /// view of its own, then a second flush leads to the merged view.
    sides: Vec<BTreeSet<PrivateName>>,
}

/// One daemon's state in an exchange: clients, shared keys, expired keys.
type StateOf = (Vec<StateEntry>, Vec<StateKey>, Vec<(Bytes, u32, KeyLoss)>, Vec<StateView>);

/// A daemon's state as its parts arrive.
#[derive(Debug)]
struct PartialState {
    parts: u16,
    got: BTreeSet<u16>,
    state: StateOf,
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
    Exchange { members: Vec<NodeId>, states: BTreeMap<NodeId, PartialState>, held: Vec<Delivery> },
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
    policy: Arc<Policy>,
    /// Send view keys in state exchanges (links are encrypted).
    share_keys: bool,
    /// The server key in force (from `Event::ServerKey`), with the epoch.
    server: Option<ServerKey>,
    /// Members of the current ring (its representative asks for rekeys).
    ring_members: Vec<NodeId>,
    /// Keys brought by the last state exchange, per group, for the views
    /// about to be installed.
    incoming_keys: BTreeMap<Bytes, Vec<(ViewId, Arc<GroupKey>)>>,
    /// Keys that expired at some daemon of the last state exchange.
    incoming_expired: BTreeMap<Bytes, Vec<(u32, KeyLoss)>>,
    /// `optimized-evs` groups that ceased to exist here: when, their keys
    /// and expired key ids (see `bury`).
    graveyard: BTreeMap<Bytes, Buried>,
    now: Time,
    /// A message's local receivers while it is delivered: kept, so
    /// delivering allocates nothing.
    receivers: Vec<ClientId>,
    /// The free rest of the block data messages are encoded into.
    block: BytesMut,
    /// A data message's header while it is encoded.
    scratch: Vec<u8>,
}

/// Bytes of a block that encoded data messages share.
const DATA_BLOCK: usize = crate::block::BLOCK;
/// The largest encoded data message written into a shared block.
const DATA_SHARED: usize = DATA_BLOCK / 4;

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
        Self::with_policy(daemon, limits, Arc::new(Policy::default()), false)
    }

    /// The groups layer of daemon `daemon` with the given limits and
    /// client group policy. `share_keys`: the daemons' links are encrypted,
    /// so state exchanges may carry `optimized-evs` view keys.
    pub fn with_policy(daemon: NodeId, limits: Limits, policy: Arc<Policy>, share_keys: bool) -> Self {
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
            policy,
            share_keys,
            server: None,
            ring_members: Vec::new(),
            incoming_keys: BTreeMap::new(),
            incoming_expired: BTreeMap::new(),
            graveyard: BTreeMap::new(),
            now: Time::ZERO,
            receivers: Vec::new(),
            block: BytesMut::new(),
            scratch: Vec::new(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Every group with a view on this daemon, for the monitor.
    pub fn report(&self) -> Vec<GroupReport> {
        self.views
            .iter()
            .map(|(name, v)| GroupReport {
                name: String::from_utf8_lossy(name).into_owned(),
                mode: v.mode.name(),
                view: v.id.to_string(),
                members: v.members.len(),
                local: v.local.len(),
                key_id: v.key.as_ref().map(|k| format!("{:08x}", k.id())),
                key_epoch: v.key_epoch,
                old_keys: v.old.len(),
                evs_fixes: v.evs_fixes,
                undecipherable: v.undecipherable,
            })
            .collect()
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
        let msg = GroupMsg { sender, body };
        let payload = match msg.data_len() {
            // Data up to DATA_SHARED bytes: split off a shared block, so a
            // message allocates nothing in steady state. The block lives
            // until the ring has sent every message in it.
            Some(len) if len <= DATA_SHARED => {
                crate::block::make_room(&mut self.block, len, DATA_BLOCK);
                msg.encode_into(&mut self.scratch, &mut self.block);
                self.block.split().freeze()
            }
            _ => msg.encode(),
        };
        self.submits.push_back(Submit { service, groups, payload });
    }

    /// Connects a client under `name` with an empty principal (which only
    /// the policy pattern `*` matches); see [`ClientGroups::connect_as`].
    pub fn connect(&mut self, client: ClientId, name: &[u8]) -> Result<PrivateName, GroupsError> {
        self.connect_as(client, name, "")
    }

    /// Connects a client under `name`, authenticated as `principal` (see
    /// [`crate::security::policy`]); returns its private name. Local only:
    /// nothing is ordered until it joins a group.
    pub fn connect_as(
        &mut self,
        client: ClientId,
        name: &[u8],
        principal: &str,
    ) -> Result<PrivateName, GroupsError> {
        self.connect_secure(client, name, principal, !principal.starts_with("tcp:"))
    }

    /// As [`ClientGroups::connect_as`], saying whether the connection is
    /// private to the client and this daemon (the Unix socket, TLS): only
    /// such clients may join or send to keyed and three-step groups (their
    /// keys and data would otherwise cross a network in clear).
    pub fn connect_secure(
        &mut self,
        client: ClientId,
        name: &[u8],
        principal: &str,
        secure: bool,
    ) -> Result<PrivateName, GroupsError> {
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
            Local {
                name: pn.clone(),
                principal: principal.to_owned(),
                secure,
                connected: true,
                groups: BTreeMap::new(),
                pending_joins: 0,
            },
        );
        Ok(pn)
    }

    /// Asks to join `group` (created by its first join, with that kind) in
    /// mode `none`.
    pub fn join(&mut self, client: ClientId, group: &[u8], kind: GroupKind) -> Result<(), GroupsError> {
        self.join_mode(client, group, kind, GroupMode::None)
    }

    /// Asks to join `group` with `kind`, stating its protection `mode`: it
    /// must be the mode the policy gives the group, and the policy must let
    /// the client join. Keyed modes fix the kind (`integrated-vs` is VS,
    /// `optimized-evs` open).
    pub fn join_mode(
        &mut self,
        client: ClientId,
        group: &[u8],
        kind: GroupKind,
        mode: GroupMode,
    ) -> Result<(), GroupsError> {
        if !self.valid_name(group) {
            return Err(GroupsError::BadName);
        }
        let kind = mode.kind().unwrap_or(kind);
        let rule_mode = self.policy.rule(group).mode;
        let l = self.client(client)?;
        let (principal, secure) = (l.principal.clone(), l.secure);
        let principal = principal.as_str();
        if rule_mode != mode {
            self.stats.denials += 1;
            return Err(GroupsError::ModeMismatch);
        }
        if !self.policy.allows(principal, Action::Join, group) {
            self.stats.denials += 1;
            return Err(GroupsError::Denied);
        }
        if (mode == GroupMode::ThreeStep || mode.keyed()) && !secure {
            self.stats.denials += 1;
            return Err(GroupsError::InsecureTransport);
        }
        // Keys come with encrypted links (the ordered join is refused
        // should a ring have no server key after all).
        if mode.keyed() && !self.share_keys && self.server.is_none() {
            return Err(GroupsError::NoServerKey);
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
        self.push(Service::Agreed, groups, sender, Body::Join { kind, mode });
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
    /// flushing. `sealed`: the client sealed the payload under a view key of
    /// the (then only) destination group. The policy must let the client
    /// send to every destination (as a member or as a non-member). Every
    /// service rides the ring in total order; see `docs/groups.md`.
    #[allow(clippy::too_many_arguments)]
    pub fn multicast<N: AsRef<[u8]>>(
        &mut self,
        client: ClientId,
        service: Service,
        groups: &[N],
        msg_type: u16,
        payload: Bytes,
        self_discard: bool,
        sealed: bool,
    ) -> Result<(), GroupsError> {
        if groups.is_empty() || groups.len() > self.limits.max_destinations {
            return Err(GroupsError::BadDestinations);
        }
        let groups = Groups::encode(groups).map_err(|_| GroupsError::BadName)?;
        self.multicast_to(client, service, groups, msg_type, payload, self_discard, sealed)
    }

    /// As [`ClientGroups::multicast`], with the destinations already
    /// encoded (as a decoded client frame holds them): they are ordered as
    /// they are, with no copy.
    #[allow(clippy::too_many_arguments)]
    pub fn multicast_to(
        &mut self,
        client: ClientId,
        service: Service,
        groups: Groups,
        msg_type: u16,
        payload: Bytes,
        self_discard: bool,
        sealed: bool,
    ) -> Result<(), GroupsError> {
        if service.is_control() {
            return Err(GroupsError::BadDestinations);
        }
        let count = groups.count();
        if count == 0 || count > self.limits.max_destinations {
            return Err(GroupsError::BadDestinations);
        }
        let max_name = self.limits.max_name;
        let l = self.clients.get(&client).filter(|l| l.connected).ok_or(GroupsError::UnknownClient)?;
        let mut views = Vec::new();
        let mut keyed = None;
        let mut denied = None;
        for (i, g) in groups.iter().enumerate() {
            if PrivateName::parse(g).is_some() {
                continue;
            }
            if g.is_empty() || g.len() > max_name || g.contains(&b'#') {
                return Err(GroupsError::BadName);
            }
            let member = l.groups.get(g);
            let action = if member.is_some() { Action::Send } else { Action::SendNonMember };
            let rule = self.policy.rule(g);
            if !self.policy.allows(&l.principal, action, g) {
                denied = Some(GroupsError::Denied);
            } else if (rule.mode == GroupMode::ThreeStep || rule.mode.keyed()) && !l.secure {
                denied = Some(GroupsError::InsecureTransport);
            } else if rule.mode == GroupMode::ThreeStep && count > 1 {
                // Nor may a three-step message also go to groups whose
                // members may be on plain TCP.
                denied = Some(GroupsError::KeyedMultiDestination);
            }
            if rule.mode.keyed() {
                keyed = Some((g, rule.mode, member.is_some()));
            }
            let vs = match member {
                Some(m) => m.kind == GroupKind::Vs,
                None => self.groups.get(g).is_some_and(|x| x.kind == GroupKind::Vs),
            };
            if !vs {
                continue;
            }
            let m = member.filter(|m| m.in_view).ok_or(GroupsError::NotMember)?;
            if m.flushed {
                return Err(GroupsError::Flushing);
            }
            let v = self.views.get(g).ok_or(GroupsError::NotMember)?;
            views.push((i as u8, v.id));
        }
        if let Some(e) = denied {
            self.stats.denials += 1;
            return Err(e);
        }
        let sender = l.name.name.clone();
        let sender_pn = l.name.clone();
        let (mut payload, mut sealed) = (payload, sealed);
        if let Some((g, mode, _member)) = keyed {
            if count != 1 {
                return Err(GroupsError::KeyedMultiDestination);
            }
            let current = self.views.get(g).and_then(|v| v.key.as_ref()).map(|k| k.id());
            match mode {
                GroupMode::IntegratedVs => {
                    if !sealed || key_id_of(&payload).is_none() || key_id_of(&payload) != current {
                        return Err(GroupsError::WrongKey);
                    }
                }
                _ => {
                    // optimized-evs: seal what the client did not (a
                    // non-member has no key), and reseal what it sealed
                    // under an older key, once here rather than at every
                    // receiving daemon.
                    let g = Bytes::copy_from_slice(g);
                    let fixed = if sealed {
                        // A key this daemon cannot open any more (expired)
                        // would be undecipherable everywhere: tell the
                        // sender instead of ordering it.
                        self.evs_fix(&g, &sender_pn, msg_type, &payload).map_err(|_| GroupsError::WrongKey)?
                    } else {
                        self.seal_for(&g, &sender_pn, msg_type, &payload)
                    };
                    if let Some(p) = fixed {
                        payload = p;
                        sealed = true;
                    }
                }
            }
        }
        self.push(service, groups, sender, Body::Data { self_discard, sealed, msg_type, views, payload });
        Ok(())
    }

    /// Seals `payload` for `group` under the group's current key, as this
    /// daemon (non-members' messages, unsealed messages of `optimized-evs`).
    fn seal_for(
        &mut self,
        group: &Bytes,
        sender: &PrivateName,
        msg_type: u16,
        payload: &[u8],
    ) -> Option<Bytes> {
        let daemon = self.daemon;
        let v = self.views.get_mut(group)?;
        let key = v.key.as_ref()?;
        let nonce = Nonce::new(DAEMON_NONCE_BIT | u32::from(daemon.0), v.sealed);
        let sealed = key.seal(&nonce, group, sender.to_string().as_bytes(), msg_type, payload).ok()?;
        v.sealed += 1;
        self.stats.sealed_for_clients += 1;
        Some(Bytes::from(sealed))
    }

    /// The EVS fix: a payload of `group` sealed under a key that is not the
    /// current one is opened with the old key and resealed under the
    /// current one. `Ok(None)`: it is under the current key already.
    fn evs_fix(
        &mut self,
        group: &Bytes,
        sender: &PrivateName,
        msg_type: u16,
        payload: &[u8],
    ) -> Result<Option<Bytes>, (u32, KeyLoss)> {
        let now = self.now;
        let daemon = self.daemon;
        let timeout = self.policy.rule(group).key_timeout;
        let Some(kid) = key_id_of(payload) else { return Err((0, KeyLoss::Forged)) };
        let Some(v) = self.views.get_mut(group) else { return Err((kid, KeyLoss::Unknown)) };
        let Some(current) = v.key.clone() else { return Err((kid, KeyLoss::Unknown)) };
        if current.id() == kid {
            return Ok(None);
        }
        expire_old(v, now, timeout);
        let Some(old) = v.old.iter_mut().find(|o| o.key.id() == kid) else {
            let reason = v.expired.iter().find(|e| e.0 == kid).map_or(KeyLoss::Unknown, |e| e.1);
            return Err((kid, reason));
        };
        let sender_name = sender.to_string();
        let plain = old
            .key
            .open(group, sender_name.as_bytes(), msg_type, payload)
            .map_err(|_| (kid, KeyLoss::Forged))?;
        old.last_used = now;
        let nonce = Nonce::new(DAEMON_NONCE_BIT | u32::from(daemon.0), v.sealed);
        let resealed = current
            .seal(&nonce, group, sender_name.as_bytes(), msg_type, &plain)
            .map_err(|_| (kid, KeyLoss::Forged))?;
        v.sealed += 1;
        v.evs_fixes += 1;
        self.stats.evs_fixes += 1;
        Ok(Some(Bytes::from(resealed)))
    }

    /// VS group: the client has sent what belongs to the current view, in
    /// answer to the flush request `flush`. An answer to a request that a
    /// later one replaced (a network change restarts a flush) is refused
    /// with [`GroupsError::NoFlush`] and changes nothing: taken as the
    /// answer to the new request, it would stop the client's sends while
    /// the client, which has not seen that request yet, still sends.
    pub fn flush_ok(&mut self, client: ClientId, group: &[u8], flush: FlushId) -> Result<(), GroupsError> {
        let l = self.client(client)?;
        let m = l.groups.get_mut(group).ok_or(GroupsError::NotMember)?;
        if m.flush != Some(flush) {
            return Err(GroupsError::NoFlush);
        }
        m.flush = None;
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
    pub fn handle_event(&mut self, now: Time, ev: &Event) {
        self.now = self.now.max(now);
        match ev {
            Event::ServerKey(k) => self.server = Some(k.clone()),
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
                if let Body::State { ring_id, part, parts, clients, keys, expired, views } = msg.body {
                    if Some(ring_id) == self.ring_id && members.contains(&d.id.origin) {
                        let st = states.entry(d.id.origin).or_insert_with(|| PartialState {
                            parts,
                            got: BTreeSet::new(),
                            state: (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
                        });
                        if st.parts == parts && st.got.insert(part) {
                            st.state.0.extend(clients);
                            st.state.1.extend(keys);
                            st.state.2.extend(expired);
                            st.state.3.extend(views);
                        }
                        let done = |s: &PartialState| s.got.len() == usize::from(s.parts);
                        if states.len() == members.len() && states.values().all(done) {
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
        // EVS: the daemons of one transitional configuration delivered the
        // same messages; those of another one may have delivered others.
        let me = self.daemon;
        for v in self.views.values_mut() {
            v.peers_next.retain(|d| *d == me || c.members.contains(d));
        }
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
                        mode: v.mode,
                        key: None,
                        joined: Arc::from([]),
                    },
                ));
            }
        }
        for (cl, ev) in signals {
            self.emit(cl, ev);
        }
        // Signalled already: the view that follows needs no second signal.
        for v in self.views.values_mut() {
            v.side = false;
        }
    }

    fn on_regular(&mut self, c: &Configuration) {
        for d in self.take_held() {
            self.apply_local(&d);
        }
        self.ring_id = Some(c.ring_id);
        self.ring_members = c.members.clone();
        self.flush_seq = 0;
        self.view_seq = 0;
        let me = self.daemon;
        let mut views = Vec::new();
        for (g, v) in &mut self.views {
            v.peers_next.retain(|d| *d == me || c.members.contains(d));
            v.peers = v.peers_next.clone();
            if v.kind == GroupKind::Vs && !v.local.is_empty() {
                let peers = v.peers.iter().copied().collect();
                views.push(StateView { group: g.clone(), view: v.id, peers });
            }
        }
        let clients = self
            .clients
            .values()
            .map(|l| StateEntry {
                name: l.name.name.clone(),
                groups: l
                    .groups
                    .iter()
                    .map(|(g, m)| StateGroup {
                        name: g.clone(),
                        kind: m.kind,
                        mode: m.mode,
                        in_view: m.in_view,
                    })
                    .collect(),
            })
            .collect();
        let mut keys = Vec::new();
        let mut expired = Vec::new();
        if self.share_keys {
            for (g, v) in &self.views {
                if v.mode != GroupMode::OptimizedEvs {
                    continue;
                }
                let current = v.key.iter().map(|k| (v.id, k));
                for &(id, why) in v.expired.iter().take(STATE_KEYS_MAX.saturating_sub(expired.len())) {
                    expired.push((g.clone(), id, why));
                }
                // Newest first, within the state message's key budget.
                for (view, k) in current.chain(v.old.iter().rev().map(|o| (o.view, &o.key))) {
                    if keys.len() >= STATE_KEYS_MAX {
                        break;
                    }
                    keys.push(StateKey {
                        group: g.clone(),
                        view,
                        key_id: k.id(),
                        key: *k.secret().expose_secret(),
                    });
                }
            }
        }
        self.phase =
            Phase::Exchange { members: c.members.clone(), states: BTreeMap::new(), held: Vec::new() };
        let state = (clients, keys, expired, views);
        for body in state_parts(c.ring_id, state, self.limits.max_state_part) {
            self.push(Service::Agreed, Groups::none(), Bytes::new(), body);
        }
    }

    fn complete_exchange(&mut self) {
        let Phase::Exchange { states, held, .. } = std::mem::replace(&mut self.phase, Phase::Operating)
        else {
            return;
        };
        self.stats.exchanges += 1;
        let mut groups: BTreeMap<Bytes, Group> = BTreeMap::new();
        self.incoming_keys.clear();
        self.incoming_expired.clear();
        // VS: per group, the view each daemon's members hold and the
        // daemons it moved with since.
        let mut holding: BTreeMap<Bytes, BTreeMap<NodeId, (ViewId, Vec<NodeId>)>> = BTreeMap::new();
        for (daemon, PartialState { state: (entries, keys, expired, views), .. }) in states {
            for sv in views {
                holding.entry(sv.group).or_default().insert(daemon, (sv.view, sv.peers));
            }
            for e in entries {
                let m = PrivateName { daemon, name: e.name };
                for sg in e.groups {
                    let grp = groups.entry(sg.name).or_insert_with(|| Group {
                        kind: sg.kind,
                        mode: sg.mode,
                        bytes: 0,
                        target: BTreeSet::new(),
                        view: BTreeSet::new(),
                        flush: None,
                        sides: Vec::new(),
                    });
                    if sg.kind == GroupKind::Vs {
                        grp.kind = GroupKind::Vs;
                    }
                    // Partitions cannot disagree on a mode (one policy);
                    // should they, the highest wins everywhere alike.
                    grp.mode = grp.mode.max(sg.mode);
                    grp.target.insert(m.clone());
                    if sg.in_view {
                        grp.view.insert(m.clone());
                    }
                }
            }
            for k in keys {
                let key = Arc::new(GroupKey::from_bytes(k.key_id, k.key));
                self.incoming_keys.entry(k.group).or_default().push((k.view, key));
            }
            for (g, id, why) in expired {
                self.incoming_expired.entry(g).or_default().push((id, why));
            }
        }
        // Local records follow the merged kind and mode.
        for l in self.clients.values_mut() {
            for (g, m) in &mut l.groups {
                if let Some(grp) = groups.get(g) {
                    m.kind = grp.kind;
                    m.mode = grp.mode;
                }
            }
        }
        for (g, grp) in &mut groups {
            if grp.kind == GroupKind::Vs {
                grp.sides = sides(&grp.view, holding.get(g));
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
        let gone: Vec<Bytes> = self.views.keys().filter(|g| !self.groups.contains_key(*g)).cloned().collect();
        for g in gone {
            self.bury(&g);
        }
        self.incoming_keys.clear();
        self.incoming_expired.clear();
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

    /// Installs the group's target membership as a new view; keyed modes
    /// derive the view's key from the server key (every daemon alike).
    fn install(&mut self, g: &Bytes, cause: Cause) {
        let Some(ring_id) = self.ring_id else { return };
        let Some(grp) = self.groups.get_mut(g) else { return };
        if !grp.sides.is_empty() {
            self.install_sides(g, cause);
            return;
        }
        self.view_seq += 1;
        grp.flush = None;
        grp.view = grp.target.clone();
        grp.bytes = 0;
        let id = ViewId { ring_id, counter: self.view_seq };
        let (kind, mode) = (grp.kind, grp.mode);
        self.stats.views_installed += 1;
        if grp.target.is_empty() {
            self.groups.remove(g);
            self.bury(g);
            return;
        }
        let members: Arc<[PrivateName]> = grp.target.iter().cloned().collect();
        let key = self.view_key(g, id, mode);
        let local = self.enter_view_here(g, &members);
        // A view of the members that moved together ends here: its holders
        // get the transitional signal before the merged (network) view.
        if let Some(prev) = self.views.get(g).filter(|p| p.side) {
            let signal = ClientEvent::Membership {
                group: g.clone(),
                view_id: prev.id,
                members: prev.members.clone(),
                cause: Cause::Network,
                kind: ConfigKind::Transitional,
                mode,
                key: None,
                joined: Arc::from([]),
            };
            for c in prev.local.clone() {
                self.emit(c, signal.clone());
            }
        }
        let joined: Arc<[PrivateName]> = match (cause, self.views.get(g)) {
            // Only when every member of the previous view stayed (a leave
            // resolved in the same flush makes it a plain change).
            // (Both lists ascending.)
            (Cause::Join, Some(prev)) if prev.members.iter().all(|m| members.binary_search(m).is_ok()) => {
                members.iter().filter(|m| prev.members.binary_search(m).is_err()).cloned().collect()
            }
            _ => Arc::from([]),
        };
        for &c in &local {
            self.emit(
                c,
                ClientEvent::Membership {
                    group: g.clone(),
                    view_id: id,
                    members: members.clone(),
                    cause,
                    kind: ConfigKind::Regular,
                    mode,
                    key: key.clone().map(ViewKey),
                    joined: joined.clone(),
                },
            );
        }
        let now = self.now;
        let mut view = View {
            id,
            kind,
            mode,
            members,
            local,
            key_epoch: key.as_ref().and(self.server.as_ref()).map(|s| s.epoch),
            key,
            sealed: 0,
            old: VecDeque::new(),
            expired: VecDeque::new(),
            installed_at: now,
            rekey_asked: false,
            evs_fixes: 0,
            undecipherable: 0,
            peers: self.ring_members.iter().copied().collect(),
            peers_next: self.ring_members.iter().copied().collect(),
            side: false,
        };
        let prev = self.views.remove(g).or_else(|| {
            // A group created again: the keys of its earlier life.
            self.graveyard.remove(g).map(|(_, old, expired)| View {
                old,
                expired,
                ..View::empty(id, kind, mode)
            })
        });
        if let Some(prev) = prev {
            view.evs_fixes = prev.evs_fixes;
            view.undecipherable = prev.undecipherable;
            if mode == GroupMode::OptimizedEvs {
                view.old = prev.old;
                view.expired = prev.expired;
                if let Some(k) = prev.key {
                    view.old.push_back(OldKey { view: prev.id, key: k, last_used: now });
                }
            }
        }
        if mode == GroupMode::OptimizedEvs {
            let rule = self.policy.rule(g);
            let (timeout, key_out) = (rule.key_timeout, rule.key_out);
            for (id, why) in self.incoming_expired.remove(g).unwrap_or_default() {
                let live = view.key.as_ref().is_some_and(|c| c.id() == id);
                if !live && !view.expired.iter().any(|e| e.0 == id) {
                    remember_expired(&mut view, id, why);
                    view.old.retain(|o| o.key.id() != id);
                }
            }
            for (vid, k) in self.incoming_keys.remove(g).unwrap_or_default() {
                // A key this daemon let expire stays expired: expiry is
                // what the policy configured, whatever other daemons kept.
                let known = view.key.as_ref().is_some_and(|c| c.id() == k.id())
                    || view.old.iter().any(|o| o.key.id() == k.id())
                    || view.expired.iter().any(|e| e.0 == k.id());
                if !known {
                    view.old.push_back(OldKey { view: vid, key: k, last_used: now });
                }
            }
            view.old.make_contiguous().sort_by_key(|o| o.view);
            expire_old(&mut view, now, timeout);
            while view.old.len() > key_out {
                if let Some(o) = view.old.pop_front() {
                    remember_expired(&mut view, o.key.id(), KeyLoss::KeyOut);
                }
            }
        }
        self.views.insert(g.clone(), view);
    }

    /// Keyed modes: the key of view `id` of `g`, derived from the server key
    /// (every daemon alike).
    /// The local clients among `members`, each marked as in the new view
    /// of `g` (no flush done or pending).
    fn enter_view_here(&mut self, g: &Bytes, members: &[PrivateName]) -> Vec<ClientId> {
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
        local
    }

    fn view_key(&mut self, g: &Bytes, id: ViewId, mode: GroupMode) -> Option<Arc<GroupKey>> {
        let server = self.server.as_ref().filter(|_| mode.keyed())?;
        let vb = id.to_bytes();
        let k = GroupKey::new(group_key_id(&server.key, g, &vb), group_key(&server.key, g, &vb));
        self.stats.keys_derived += 1;
        Some(Arc::new(k))
    }

    /// VS after a merge, once the first flush ended: every set of holders
    /// that moved together gets a view of its own (ids in the sets' order,
    /// alike on every daemon; this daemon shows the one of its members),
    /// then the second flush, among all of them, leads to the merged view.
    /// So members that go from one view to the next together delivered
    /// the same messages in it, whatever the partition did.
    fn install_sides(&mut self, g: &Bytes, cause: Cause) {
        let Some(ring_id) = self.ring_id else { return };
        let Some(grp) = self.groups.get_mut(g) else { return };
        let sides = std::mem::take(&mut grp.sides);
        grp.flush = None;
        let mode = grp.mode;
        let mut stay = BTreeSet::new();
        let mut mine = None;
        for side in sides {
            let members: BTreeSet<PrivateName> = side.intersection(&grp.target).cloned().collect();
            if members.is_empty() {
                continue;
            }
            self.view_seq += 1;
            self.stats.views_installed += 1;
            let id = ViewId { ring_id, counter: self.view_seq };
            if members.iter().any(|m| m.daemon == self.daemon) {
                mine = Some((id, members.iter().cloned().collect::<Arc<[PrivateName]>>()));
            }
            stay.extend(members);
        }
        grp.view = stay.clone();
        if let Some((id, members)) = mine {
            let key = self.view_key(g, id, mode);
            let local = self.enter_view_here(g, &members);
            for &c in &local {
                let ev = ClientEvent::Membership {
                    group: g.clone(),
                    view_id: id,
                    members: members.clone(),
                    cause: Cause::Network,
                    kind: ConfigKind::Regular,
                    mode,
                    key: key.clone().map(ViewKey),
                    joined: Arc::from([]),
                };
                self.emit(c, ev);
            }
            let ring: BTreeSet<NodeId> = self.ring_members.iter().copied().collect();
            let prev = self.views.remove(g);
            let view = View {
                members,
                local,
                key_epoch: key.as_ref().and(self.server.as_ref()).map(|s| s.epoch),
                key,
                installed_at: self.now,
                evs_fixes: prev.as_ref().map_or(0, |p| p.evs_fixes),
                undecipherable: prev.as_ref().map_or(0, |p| p.undecipherable),
                peers: ring.clone(),
                peers_next: ring,
                side: true,
                ..View::empty(id, GroupKind::Vs, mode)
            };
            self.views.insert(g.clone(), view);
        }
        self.start_flush(g, stay, cause);
    }

    /// `g` no longer exists here: an `optimized-evs` group's keys are kept
    /// a while (its key time-out, bounded in count) in case it is created
    /// again and a message sealed in its earlier life arrives.
    fn bury(&mut self, g: &Bytes) {
        let Some(v) = self.views.remove(g) else { return };
        if v.mode != GroupMode::OptimizedEvs {
            return;
        }
        let mut old = v.old;
        if let Some(k) = v.key {
            old.push_back(OldKey { view: v.id, key: k, last_used: self.now });
        }
        if self.graveyard.len() >= GRAVEYARD_KEPT {
            if let Some(oldest) = self.graveyard.iter().min_by_key(|(_, x)| x.0).map(|(k, _)| k.clone()) {
                self.graveyard.remove(&oldest);
            }
        }
        self.graveyard.insert(g.clone(), (self.now, old, v.expired));
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
            Body::Data { self_discard, sealed, msg_type, views, payload } => {
                let len = payload.len() as u64;
                self.deliver(d, &sender, self_discard, sealed, msg_type, &views, payload);
                self.count_data_out(&d.groups, len);
            }
            Body::Rekey { view } => {
                let Some(g) = one_group(&d.groups) else {
                    self.stats.malformed += 1;
                    return;
                };
                let current = self.views.get(&g).is_some_and(|v| v.id == view);
                let idle = self.groups.get(&g).is_some_and(|grp| grp.flush.is_none());
                if current && idle {
                    self.stats.rekeys += 1;
                    self.changed(&g, Cause::Rekey);
                }
            }
            Body::Join { kind, mode } => {
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
                let no_key = mode.keyed() && self.server.is_none();
                let grp = self.groups.entry(g.clone()).or_insert_with(|| Group {
                    kind,
                    mode,
                    bytes: 0,
                    target: BTreeSet::new(),
                    view: BTreeSet::new(),
                    flush: None,
                    sides: Vec::new(),
                });
                let refusal = if grp.kind != kind {
                    Some(Refusal::KindMismatch)
                } else if grp.mode != mode {
                    Some(Refusal::ModeMismatch)
                } else if no_key {
                    Some(Refusal::NoServerKey)
                } else if grp.target.len() >= max {
                    Some(Refusal::GroupFull)
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    if grp.target.is_empty() {
                        self.groups.remove(&g);
                    }
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
                            Membership { kind, mode, in_view: false, flush: None, flushed: false },
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
            Body::Data { self_discard, sealed, msg_type, views, payload } => {
                self.deliver(d, &sender, self_discard, sealed, msg_type, &views, payload);
            }
            Body::Join { kind, mode } => {
                let (Some(c), Some(g)) = (local, one_group(&d.groups)) else { return };
                if let Some(l) = self.clients.get_mut(&c) {
                    l.pending_joins = l.pending_joins.saturating_sub(1);
                    l.groups.entry(g).or_insert(Membership {
                        kind,
                        mode,
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
            Body::FlushOk { .. } | Body::State { .. } | Body::Rekey { .. } => {}
        }
    }

    /// Data-out: every daemon counts the payload bytes of each keyed group
    /// at the same place in the order, so all start the rekey alike.
    fn count_data_out(&mut self, dests: &Groups, len: u64) {
        let mut due = Vec::new();
        for g in dests.iter() {
            let Some(grp) = self.groups.get_mut(g) else { continue };
            if !grp.mode.keyed() {
                continue;
            }
            let Some(limit) = self.policy.rule(g).rekey_bytes else { continue };
            grp.bytes = grp.bytes.saturating_add(len);
            if grp.bytes >= limit && grp.flush.is_none() {
                grp.bytes = 0;
                due.push(Bytes::copy_from_slice(g));
            }
        }
        for g in due {
            self.stats.rekeys += 1;
            self.changed(&g, Cause::Rekey);
        }
    }

    /// When [`ClientGroups::handle_timeout`] is next due: a view key's
    /// refresh by time, or an old key's expiry.
    pub fn poll_timeout(&self) -> Option<Time> {
        let rep = self.ring_members.first() == Some(&self.daemon) && matches!(self.phase, Phase::Operating);
        let mut t: Option<Time> = None;
        for (g, v) in &self.views {
            let rule = self.policy.rule(g);
            let mut consider = |x: Time| t = Some(t.map_or(x, |t| t.min(x)));
            if let Some(iv) = rule.rekey_interval.filter(|_| rep && v.mode.keyed() && !v.rekey_asked) {
                consider(v.installed_at + iv);
            }
            if let Some(o) = v.old.iter().map(|o| o.last_used).min() {
                consider(o + rule.key_timeout + Duration::from_millis(1));
            }
        }
        for (g, (_, old, _)) in &self.graveyard {
            if let Some(o) = old.iter().map(|o| o.last_used).min() {
                let x = o + self.policy.rule(g).key_timeout + Duration::from_millis(1);
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        }
        t
    }

    /// Refreshes view keys whose time is up (the ring's representative
    /// asks, in order, for every daemon) and drops old keys that expired.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        let now = self.now;
        let rep = self.ring_members.first() == Some(&self.daemon) && matches!(self.phase, Phase::Operating);
        let policy = &self.policy;
        self.graveyard.retain(|g, (_, old, _)| {
            let timeout = policy.rule(g).key_timeout;
            old.retain(|o| now.saturating_since(o.last_used) <= timeout);
            !old.is_empty()
        });
        let mut due = Vec::new();
        for (g, v) in &mut self.views {
            let rule = self.policy.rule(g);
            expire_old(v, now, rule.key_timeout);
            if let Some(iv) = rule.rekey_interval {
                if rep && v.mode.keyed() && !v.rekey_asked && now >= v.installed_at + iv {
                    v.rekey_asked = true;
                    due.push((g.clone(), v.id));
                }
            }
        }
        for (g, view) in due {
            if let Ok(groups) = Groups::encode(&[&g[..]]) {
                self.push(Service::Agreed, groups, Bytes::new(), Body::Rekey { view });
            }
        }
    }

    /// Hands a data message to every local receiver once. A message of an
    /// `optimized-evs` group sealed under an older key is resealed under
    /// the current one first (or reported undecipherable).
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        d: &Delivery,
        sender: &PrivateName,
        self_discard: bool,
        sealed: bool,
        msg_type: u16,
        views: &[(u8, ViewId)],
        payload: Bytes,
    ) {
        let mut to = std::mem::take(&mut self.receivers);
        to.clear();
        self.deliver_to(&mut to, d, sender, self_discard, sealed, msg_type, views, payload);
        self.receivers = to;
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_to(
        &mut self,
        to: &mut Vec<ClientId>,
        d: &Delivery,
        sender: &PrivateName,
        self_discard: bool,
        sealed: bool,
        msg_type: u16,
        views: &[(u8, ViewId)],
        payload: Bytes,
    ) {
        let mut evs_group = None;
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
                // ... and only from a daemon that delivered the same
                // messages of it (FIFO without gaps inside a view).
                if !v.peers.contains(&sender.daemon) {
                    continue;
                }
            }
            if v.mode == GroupMode::OptimizedEvs && !v.local.is_empty() && d.groups.iter().nth(1).is_none() {
                evs_group = Some(Bytes::copy_from_slice(g));
            }
            to.extend_from_slice(&v.local);
        }
        let mut payload = payload;
        let mut sealed = sealed;
        if let Some(g) = evs_group {
            let fixed = if sealed {
                self.evs_fix(&g, sender, msg_type, &payload)
            } else {
                Ok(self.seal_for(&g, sender, msg_type, &payload))
            };
            match fixed {
                Ok(Some(p)) => {
                    payload = p;
                    sealed = true;
                }
                Ok(None) => {}
                Err((key_id, reason)) => {
                    if let Some(v) = self.views.get_mut(&g) {
                        v.undecipherable += 1;
                    }
                    for &c in to.iter() {
                        if self_discard && self.clients.get(&c).is_some_and(|l| &l.name == sender) {
                            continue;
                        }
                        self.stats.undecipherable += 1;
                        let ev = ClientEvent::Undecipherable {
                            sender: sender.clone(),
                            group: g.clone(),
                            msg_type,
                            key_id,
                            reason,
                        };
                        self.emit(c, ev);
                    }
                    return;
                }
            }
        }
        to.sort_unstable();
        to.dedup();
        for &c in to.iter() {
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
                    sealed,
                    payload: payload.clone(),
                },
            );
        }
    }
}
