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
//! 1  u8   version (1)
//! 2  u8   type: 1 data, 2 join, 3 leave, 4 disconnect, 5 flush-ok, 6 state
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

use super::{FlushId, GroupKind, ViewId};
use crate::wire::{DecodeError, NodeId, Reader, RingId};
use bytes::Bytes;

/// First byte of every group message.
pub const MSG_MAGIC: u8 = 0x47;
/// The group message format version this code speaks.
pub const MSG_VERSION: u8 = 1;

const T_DATA: u8 = 1;
const T_JOIN: u8 = 2;
const T_LEAVE: u8 = 3;
const T_DISCONNECT: u8 = 4;
const T_FLUSH_OK: u8 = 5;
const T_STATE: u8 = 6;

/// State flag: the group is a VS group.
const F_VS: u8 = 1;
/// State flag: the member holds an installed view of the group.
const F_IN_VIEW: u8 = 2;
/// Data flag: do not deliver back to the sender.
const F_SELF_DISCARD: u8 = 1;

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
        /// The daemon's clients and their groups.
        clients: Vec<StateEntry>,
    },
}

/// One client in a daemon's [`Body::State`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateEntry {
    /// The client's name on its daemon.
    pub name: Bytes,
    /// Groups the client is a member of: name, kind, and whether the client
    /// holds an installed view of it.
    pub groups: Vec<(Bytes, GroupKind, bool)>,
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

fn read_kind(b: u8) -> Result<GroupKind, DecodeError> {
    match b {
        0 => Ok(GroupKind::Open),
        1 => Ok(GroupKind::Vs),
        _ => Err(DecodeError::BadValue("group kind")),
    }
}

impl GroupMsg {
    /// Encodes the message. For `Data` the payload is copied once, after
    /// the header, into the returned buffer.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16 + self.sender.len());
        out.push(MSG_MAGIC);
        out.push(MSG_VERSION);
        out.push(match &self.body {
            Body::Data { .. } => T_DATA,
            Body::Join { .. } => T_JOIN,
            Body::Leave => T_LEAVE,
            Body::Disconnect => T_DISCONNECT,
            Body::FlushOk { .. } => T_FLUSH_OK,
            Body::State { .. } => T_STATE,
        });
        put_name(&mut out, &self.sender);
        match &self.body {
            Body::Data { self_discard, msg_type, views, payload } => {
                out.reserve(4 + views.len() * 19 + payload.len());
                out.push(if *self_discard { F_SELF_DISCARD } else { 0 });
                out.extend_from_slice(&msg_type.to_be_bytes());
                let k = views.len().min(255);
                out.push(k as u8);
                for (idx, v) in &views[..k] {
                    out.push(*idx);
                    put_ring_id(&mut out, v.ring_id);
                    out.extend_from_slice(&v.counter.to_be_bytes());
                }
                out.extend_from_slice(payload);
            }
            Body::Join { kind } => out.push(*kind as u8),
            Body::Leave | Body::Disconnect => {}
            Body::FlushOk { flush } => {
                put_ring_id(&mut out, flush.ring_id);
                out.extend_from_slice(&flush.seq.to_be_bytes());
            }
            Body::State { ring_id, clients } => {
                put_ring_id(&mut out, *ring_id);
                let c = clients.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(c as u16).to_be_bytes());
                for e in &clients[..c] {
                    put_name(&mut out, &e.name);
                    let g = e.groups.len().min(255);
                    out.push(g as u8);
                    for (name, kind, in_view) in &e.groups[..g] {
                        put_name(&mut out, name);
                        let mut f = 0;
                        if *kind == GroupKind::Vs {
                            f |= F_VS;
                        }
                        if *in_view {
                            f |= F_IN_VIEW;
                        }
                        out.push(f);
                    }
                }
            }
        }
        Bytes::from(out)
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
        let sender = read_name(&mut r, buf, t == T_STATE)?;
        if t == T_STATE && !sender.is_empty() {
            return Err(DecodeError::BadValue("state sender"));
        }
        let body = match t {
            T_DATA => {
                let flags = r.u8()?;
                if flags & !F_SELF_DISCARD != 0 {
                    return Err(DecodeError::BadValue("data flags"));
                }
                let msg_type = r.u16()?;
                let k = r.u8()?;
                let mut views = Vec::with_capacity(usize::from(k).min(r.remaining() / 19));
                for _ in 0..k {
                    let idx = r.u8()?;
                    let ring_id = read_ring_id(&mut r)?;
                    let counter = r.u64()?;
                    views.push((idx, ViewId { ring_id, counter }));
                }
                let payload = buf.slice(r.pos()..);
                return Ok(Self {
                    sender,
                    body: Body::Data { self_discard: flags & F_SELF_DISCARD != 0, msg_type, views, payload },
                });
            }
            T_JOIN => Body::Join { kind: read_kind(r.u8()?)? },
            T_LEAVE => Body::Leave,
            T_DISCONNECT => Body::Disconnect,
            T_FLUSH_OK => {
                let ring_id = read_ring_id(&mut r)?;
                let seq = r.u64()?;
                Body::FlushOk { flush: FlushId { ring_id, seq } }
            }
            T_STATE => {
                let ring_id = read_ring_id(&mut r)?;
                let c = r.u16()?;
                let mut clients = Vec::with_capacity(usize::from(c).min(r.remaining() / 2));
                for _ in 0..c {
                    let name = read_name(&mut r, buf, false)?;
                    let g = r.u8()?;
                    let mut groups = Vec::with_capacity(usize::from(g).min(r.remaining() / 3));
                    for _ in 0..g {
                        let gname = read_name(&mut r, buf, false)?;
                        let f = r.u8()?;
                        if f & !(F_VS | F_IN_VIEW) != 0 {
                            return Err(DecodeError::BadValue("state flags"));
                        }
                        let kind = if f & F_VS != 0 { GroupKind::Vs } else { GroupKind::Open };
                        groups.push((gname, kind, f & F_IN_VIEW != 0));
                    }
                    clients.push(StateEntry { name, groups });
                }
                Body::State { ring_id, clients }
            }
            _ => return Err(DecodeError::UnknownKind),
        };
        r.finish()?;
        Ok(Self { sender, body })
    }
}
