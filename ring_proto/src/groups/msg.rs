//! The ring payload of group control and data messages.
//!
//! Every message the groups layer submits to the ring starts with the same
//! header; the destination groups travel in the chunk's [`Groups`] list, not
//! in the payload. The sending daemon is the delivery's origin
//! (`Delivery::id.origin`), so it is not repeated here: a daemon can only
//! speak for its own clients. `docs/groups.md` documents every field.
//!
//! ```text
//! 0  u8   magic 0x47 ('G')
//! 1  u8   version (3)
//! 2  u8   type: 1 data, 2 join, 3 leave, 4 disconnect, 5 flush-ok, 6 state, 7 rekey
//! 3  u8   sender name length n (0 for state, 1..=255 otherwise)
//! 4  n    sender client name (without the '#' and daemon suffix)
//!    ...  type-specific body
//! ```
//!
//! The decoder is total: any bytes give a value or a [`DecodeError`], never a
//! panic, and trailing bytes are an error (the data payload is the rest of
//! the message by definition).
//!
//! [`Groups`]: crate::wire::Groups

use super::{FlushId, GroupKind, GroupMode, KeyLoss, ViewId};
use crate::wire::{DecodeError, NodeId, Reader, RingId};
use bytes::Bytes;

/// First byte of every group message.
pub const MSG_MAGIC: u8 = 0x47;
/// The group message format version this code speaks.
/// (3: state messages carry each daemon's VS views and their peers.)
pub const MSG_VERSION: u8 = 3;

const T_DATA: u8 = 1;
const T_JOIN: u8 = 2;
const T_LEAVE: u8 = 3;
const T_DISCONNECT: u8 = 4;
const T_FLUSH_OK: u8 = 5;
const T_STATE: u8 = 6;
const T_REKEY: u8 = 7;

/// State flag: the group is a VS group.
const F_VS: u8 = 1;
/// State flag: the member holds an installed view of the group.
const F_IN_VIEW: u8 = 2;
/// State flags: the group's mode, four bits from this shift (modes 0 to 8).
const F_MODE_SHIFT: u8 = 2;
/// Data flag: do not deliver back to the sender.
const F_SELF_DISCARD: u8 = 1;
/// Data flag: the payload is sealed under a group view key.
const F_SEALED: u8 = 2;

/// A decoded group message (the payload of one ring message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMsg {
    /// The sending client's name on its daemon (empty for `State`).
    pub sender: Bytes,
    /// What the message says.
    pub body: Body,
}

/// The type-specific part of a [`GroupMsg`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A client multicast.
    Data {
        /// Do not deliver back to the sender.
        self_discard: bool,
        /// The payload is sealed under a view key of the (one) destination
        /// group (`ringfence_crypto::group`).
        sealed: bool,
        /// Application message type, passed through.
        msg_type: u16,
        /// For each VS destination: its index in the chunk's group list and
        /// the view the sender was in when it sent (sending-view delivery).
        views: Vec<(u8, ViewId)>,
        /// The application payload (a slice of the delivered buffer).
        payload: Bytes,
    },
    /// The sender joins the one group named in the chunk's list.
    Join {
        /// Open or VS; must match the group's kind.
        kind: GroupKind,
        /// Protection mode; must match the group's mode.
        mode: GroupMode,
    },
    /// The sender leaves the one group named in the chunk's list.
    Leave,
    /// The sender disconnected: it leaves every group.
    Disconnect,
    /// The sender has flushed the one group named in the chunk's list.
    FlushOk {
        /// The flush it answers.
        flush: FlushId,
    },
    /// A daemon's local group state, sent once per regular configuration.
    State {
        /// The ring this state is for; states of other rings are ignored.
        ring_id: RingId,
        /// This part's number (0..parts): a large state is split so every
        /// part fits a ring message.
        part: u16,
        /// How many parts the daemon's state has (at least 1).
        parts: u16,
        /// The daemon's clients and their groups.
        clients: Vec<StateEntry>,
        /// Recent view keys of its `optimized-evs` groups, so every daemon
        /// of the new ring can open messages sealed in views it was not in
        /// (the EVS fix). Sent only over encrypted links.
        keys: Vec<StateKey>,
        /// Keys of its `optimized-evs` groups that expired here, and why,
        /// so every daemon of the new ring reports their messages alike.
        expired: Vec<(Bytes, u32, KeyLoss)>,
        /// The views of its VS groups its clients hold, each with the
        /// daemons that went through the same configurations since it was
        /// installed (so every daemon of the new ring sees which holders of
        /// one view delivered the same messages in it).
        views: Vec<StateView>,
    },
    /// Asks for a new key for the one group named in the chunk's list (an
    /// artificial view change, cause `rekey`), if its view is still `view`.
    Rekey {
        /// The view whose key is due.
        view: ViewId,
    },
}

/// One group's membership in a [`StateEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateGroup {
    /// The group.
    pub name: Bytes,
    /// Its kind.
    pub kind: GroupKind,
    /// Its mode.
    pub mode: GroupMode,
    /// The client holds an installed view of it.
    pub in_view: bool,
}

/// A view key carried in a [`Body::State`].
#[derive(Clone, PartialEq, Eq)]
pub struct StateKey {
    /// The group.
    pub group: Bytes,
    /// The view the key belongs to.
    pub view: ViewId,
    /// Its public id.
    pub key_id: u32,
    /// The secret.
    pub key: [u8; 32],
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateKey")
            .field("group", &self.group)
            .field("view", &self.view)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

/// A VS view held by a daemon's clients, in a [`Body::State`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateView {
    /// The group.
    pub group: Bytes,
    /// The view its local members hold.
    pub view: ViewId,
    /// The daemons that moved with this one through every configuration
    /// change since the view was installed (ascending, this one included):
    /// they delivered the same messages of the view.
    pub peers: Vec<NodeId>,
}

/// One client in a daemon's [`Body::State`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateEntry {
    /// The client's name on its daemon.
    pub name: Bytes,
    /// Groups the client is a member of.
    pub groups: Vec<StateGroup>,
}

/// The most a client message grows on its way into the ring: a data
/// message's header with a sender name of `max_name` bytes and a sending
/// view for each of `max_destinations` groups, and the daemon's seal of a
/// payload a client did not seal (`optimized-evs`). A client payload of at
/// most the ring's `max_message` less this always fits the ring.
pub const fn max_data_overhead(max_name: usize, max_destinations: usize) -> usize {
    let name = if max_name < 255 { max_name } else { 255 };
    let views = if max_destinations < 255 { max_destinations } else { 255 };
    // magic, version, type; name length and name; flags, type, view count;
    // per view its index and id.
    3 + 1 + name + 4 + views * 19 + ringfence_crypto::group::OVERHEAD
}

fn put_name(out: &mut Vec<u8>, name: &[u8]) {
    // Callers validate lengths; a longer name is cut rather than panicking.
    let n = name.len().min(255);
    out.push(n as u8);
    out.extend_from_slice(&name[..n]);
}

fn put_ring_id(out: &mut Vec<u8>, r: RingId) {
    out.extend_from_slice(&r.rep.0.to_be_bytes());
    out.extend_from_slice(&r.seq.to_be_bytes());
}

fn read_ring_id(r: &mut Reader<'_>) -> Result<RingId, DecodeError> {
    let rep = NodeId(r.u16()?);
    let seq = r.u64()?;
    Ok(RingId { seq, rep })
}

fn read_name(r: &mut Reader<'_>, buf: &Bytes, allow_empty: bool) -> Result<Bytes, DecodeError> {
    let n = r.u8()? as usize;
    if n == 0 && !allow_empty {
        return Err(DecodeError::BadValue("name"));
    }
    let start = r.pos();
    r.take(n)?;
    Ok(buf.slice(start..start + n))
}

fn put_view(out: &mut Vec<u8>, v: ViewId) {
    put_ring_id(out, v.ring_id);
    out.extend_from_slice(&v.counter.to_be_bytes());
}

fn read_view(r: &mut Reader<'_>) -> Result<ViewId, DecodeError> {
    let ring_id = read_ring_id(r)?;
    let counter = r.u64()?;
    Ok(ViewId { ring_id, counter })
}

fn read_mode(b: u8) -> Result<GroupMode, DecodeError> {
    GroupMode::from_u8(b).ok_or(DecodeError::BadValue("group mode"))
}

fn read_kind(b: u8) -> Result<GroupKind, DecodeError> {
    match b {
        0 => Ok(GroupKind::Open),
        1 => Ok(GroupKind::Vs),
        _ => Err(DecodeError::BadValue("group kind")),
    }
}

impl GroupMsg {
    /// The encoded length of a `Data` message (`None` for other kinds).
    pub fn data_len(&self) -> Option<usize> {
        match &self.body {
            Body::Data { views, payload, .. } => {
                Some(4 + self.sender.len().min(255) + 4 + views.len().min(255) * 19 + payload.len())
            }
            _ => None,
        }
    }

    /// Appends the encoded message to `out`, as [`GroupMsg::encode`] gives
    /// it; `scratch` is working space for the header (the payload is
    /// copied once, straight into `out`).
    pub fn encode_into(&self, scratch: &mut Vec<u8>, out: &mut bytes::BytesMut) {
        scratch.clear();
        self.write(scratch, false);
        out.extend_from_slice(scratch);
        if let Body::Data { payload, .. } = &self.body {
            out.extend_from_slice(payload);
        }
    }

    /// Encodes the message. For `Data` the payload is copied once, after
    /// the header, into the returned buffer.
    pub fn encode(&self) -> Bytes {
        // Data: the exact size, so the payload is copied once and the
        // buffer never grows.
        let body = match &self.body {
            Body::Data { views, payload, .. } => 4 + views.len().min(255) * 19 + payload.len(),
            _ => 16,
        };
        let mut out = Vec::with_capacity(4 + self.sender.len().min(255) + body);
        self.write(&mut out, true);
        Bytes::from(out)
    }

    /// Appends the encoded message to `out`; a data message's payload only
    /// if `payload`.
    fn write(&self, out: &mut Vec<u8>, payload_too: bool) {
        out.push(MSG_MAGIC);
        out.push(MSG_VERSION);
        out.push(match &self.body {
            Body::Data { .. } => T_DATA,
            Body::Join { .. } => T_JOIN,
            Body::Leave => T_LEAVE,
            Body::Disconnect => T_DISCONNECT,
            Body::FlushOk { .. } => T_FLUSH_OK,
            Body::State { .. } => T_STATE,
            Body::Rekey { .. } => T_REKEY,
        });
        put_name(out, &self.sender);
        match &self.body {
            Body::Data { self_discard, sealed, msg_type, views, payload } => {
                let mut f = if *self_discard { F_SELF_DISCARD } else { 0 };
                if *sealed {
                    f |= F_SEALED;
                }
                out.push(f);
                out.extend_from_slice(&msg_type.to_be_bytes());
                let k = views.len().min(255);
                out.push(k as u8);
                for (idx, v) in &views[..k] {
                    out.push(*idx);
                    put_view(out, *v);
                }
                if payload_too {
                    out.extend_from_slice(payload);
                }
            }
            Body::Join { kind, mode } => {
                out.push(*kind as u8);
                out.push(*mode as u8);
            }
            Body::Rekey { view } => put_view(out, *view),
            Body::Leave | Body::Disconnect => {}
            Body::FlushOk { flush } => {
                put_ring_id(out, flush.ring_id);
                out.extend_from_slice(&flush.seq.to_be_bytes());
            }
            Body::State { ring_id, part, parts, clients, keys, expired, views } => {
                put_ring_id(out, *ring_id);
                out.extend_from_slice(&part.to_be_bytes());
                out.extend_from_slice(&parts.to_be_bytes());
                let c = clients.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(c as u16).to_be_bytes());
                for e in &clients[..c] {
                    put_name(out, &e.name);
                    let g = e.groups.len().min(255);
                    out.push(g as u8);
                    for sg in &e.groups[..g] {
                        put_name(out, &sg.name);
                        let mut f = (sg.mode as u8) << F_MODE_SHIFT;
                        if sg.kind == GroupKind::Vs {
                            f |= F_VS;
                        }
                        if sg.in_view {
                            f |= F_IN_VIEW;
                        }
                        out.push(f);
                    }
                }
                let k = keys.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(k as u16).to_be_bytes());
                for key in &keys[..k] {
                    put_name(out, &key.group);
                    put_view(out, key.view);
                    out.extend_from_slice(&key.key_id.to_be_bytes());
                    out.extend_from_slice(&key.key);
                }
                let x = expired.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(x as u16).to_be_bytes());
                for (group, id, why) in &expired[..x] {
                    put_name(out, group);
                    out.extend_from_slice(&id.to_be_bytes());
                    out.push(if *why == KeyLoss::TimeOut { 1 } else { 2 });
                }
                let n = views.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for sv in &views[..n] {
                    put_name(out, &sv.group);
                    put_view(out, sv.view);
                    let p = sv.peers.len().min(usize::from(u16::MAX));
                    out.extend_from_slice(&(p as u16).to_be_bytes());
                    for id in &sv.peers[..p] {
                        out.extend_from_slice(&id.0.to_be_bytes());
                    }
                }
            }
        }
    }

    /// Decodes a message; names and the data payload are slices of `buf`.
    /// Total: never panics.
    pub fn decode(buf: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf, 0);
        if r.u8()? != MSG_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let v = r.u8()?;
        if v != MSG_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let t = r.u8()?;
        let sender = read_name(&mut r, buf, t == T_STATE || t == T_REKEY)?;
        if t == T_STATE && !sender.is_empty() {
            return Err(DecodeError::BadValue("state sender"));
        }
        let body = match t {
            T_DATA => {
                let flags = r.u8()?;
                if flags & !(F_SELF_DISCARD | F_SEALED) != 0 {
                    return Err(DecodeError::BadValue("data flags"));
                }
                let msg_type = r.u16()?;
                let k = r.u8()?;
                let mut views = Vec::with_capacity(usize::from(k).min(r.remaining() / 19));
                for _ in 0..k {
                    let idx = r.u8()?;
                    views.push((idx, read_view(&mut r)?));
                }
                let payload = buf.slice(r.pos()..);
                return Ok(Self {
                    sender,
                    body: Body::Data {
                        self_discard: flags & F_SELF_DISCARD != 0,
                        sealed: flags & F_SEALED != 0,
                        msg_type,
                        views,
                        payload,
                    },
                });
            }
            T_JOIN => {
                let kind = read_kind(r.u8()?)?;
                Body::Join { kind, mode: read_mode(r.u8()?)? }
            }
            T_REKEY => Body::Rekey { view: read_view(&mut r)? },
            T_LEAVE => Body::Leave,
            T_DISCONNECT => Body::Disconnect,
            T_FLUSH_OK => {
                let ring_id = read_ring_id(&mut r)?;
                let seq = r.u64()?;
                Body::FlushOk { flush: FlushId { ring_id, seq } }
            }
            T_STATE => {
                let ring_id = read_ring_id(&mut r)?;
                let part = r.u16()?;
                let parts = r.u16()?;
                if part >= parts {
                    return Err(DecodeError::BadValue("state part"));
                }
                let c = r.u16()?;
                let mut clients = Vec::with_capacity(usize::from(c).min(r.remaining() / 2));
                for _ in 0..c {
                    let name = read_name(&mut r, buf, false)?;
                    let g = r.u8()?;
                    let mut groups = Vec::with_capacity(usize::from(g).min(r.remaining() / 3));
                    for _ in 0..g {
                        let gname = read_name(&mut r, buf, false)?;
                        let f = r.u8()?;
                        if f >> (F_MODE_SHIFT + 4) != 0 {
                            return Err(DecodeError::BadValue("state flags"));
                        }
                        let kind = if f & F_VS != 0 { GroupKind::Vs } else { GroupKind::Open };
                        let mode = read_mode((f >> F_MODE_SHIFT) & 0x0f)?;
                        groups.push(StateGroup { name: gname, kind, mode, in_view: f & F_IN_VIEW != 0 });
                    }
                    clients.push(StateEntry { name, groups });
                }
                let k = r.u16()?;
                let mut keys = Vec::with_capacity(usize::from(k).min(r.remaining() / 55));
                for _ in 0..k {
                    let group = read_name(&mut r, buf, false)?;
                    let view = read_view(&mut r)?;
                    let key_id = r.u32()?;
                    let mut key = [0u8; 32];
                    key.copy_from_slice(r.take(32)?);
                    keys.push(StateKey { group, view, key_id, key });
                }
                let x = r.u16()?;
                let mut expired = Vec::with_capacity(usize::from(x).min(r.remaining() / 7));
                for _ in 0..x {
                    let group = read_name(&mut r, buf, false)?;
                    let id = r.u32()?;
                    let why = match r.u8()? {
                        1 => KeyLoss::TimeOut,
                        2 => KeyLoss::KeyOut,
                        _ => return Err(DecodeError::BadValue("expiry reason")),
                    };
                    expired.push((group, id, why));
                }
                let n = r.u16()?;
                let mut views = Vec::with_capacity(usize::from(n).min(r.remaining() / 22));
                for _ in 0..n {
                    let group = read_name(&mut r, buf, false)?;
                    let view = read_view(&mut r)?;
                    let p = r.u16()?;
                    let mut peers = Vec::with_capacity(usize::from(p).min(r.remaining() / 2));
                    for _ in 0..p {
                        peers.push(NodeId(r.u16()?));
                    }
                    views.push(StateView { group, view, peers });
                }
                Body::State { ring_id, part, parts, clients, keys, expired, views }
            }
            _ => return Err(DecodeError::UnknownKind),
        };
        r.finish()?;
        Ok(Self { sender, body })
    }
}
