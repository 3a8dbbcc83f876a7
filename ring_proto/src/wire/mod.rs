//! Wire formats: daemon to daemon (this module) and client to daemon
//! ([`client`]).
//!
//! Every datagram starts with the same four-byte header: the magic `RF`
//! (`0x52 0x46`), the format version ([`VERSION`]) and a kind byte. All
//! integers are big-endian. Every decoder is total: any byte string gives a
//! value or a [`DecodeError`], never a panic, and trailing bytes are an error.
//! `docs/protocol.md` documents every field.

pub mod client;
mod codec;
mod membership;
mod packet;
mod token;

pub use codec::{DecodeError, Reader};
pub use membership::{Beacon, CommitToken, ENTRY_EMPTY, ENTRY_FRESH, Join, MAX_NODES, OldRing, RingIndex};
pub use packet::{CHUNK_OVERHEAD, Chunk, ChunkFlags, DataPacket, Groups, PACKET_OVERHEAD, PacketBuilder};
pub use token::{RTR_RANGE_LEN, RtrRange, TOKEN_FIXED_LEN, Token, TokenRequest};

use bytes::Bytes;
use std::fmt;

/// The two magic bytes every datagram starts with.
pub const MAGIC: [u8; 2] = *b"RF";
/// The wire format version this code speaks.
pub const VERSION: u8 = 1;
/// Length of the common header (magic, version, kind).
pub const HEADER_LEN: usize = 4;

/// Kind byte of a data packet.
pub const KIND_DATA: u8 = 1;
/// Kind byte of a token.
pub const KIND_TOKEN: u8 = 2;
/// Kind byte of a join message.
pub const KIND_JOIN: u8 = 3;
/// Kind byte of a commit token.
pub const KIND_COMMIT: u8 = 4;
/// Kind byte of a merge beacon.
pub const KIND_BEACON: u8 = 5;
/// Kind byte of a token request.
pub const KIND_TOKEN_REQUEST: u8 = 6;
/// An answer to a beacon from a daemon we could not hear ([`Beacon`] with
/// `echo` set): "I hear you".
pub const KIND_BEACON_ECHO: u8 = 7;

/// Identifies a daemon in the cluster configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct NodeId(pub u16);

impl NodeId {
    /// The value that means "no daemon" on the wire (`aru_id` unset).
    pub const NONE: Self = Self(u16::MAX);
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one ring (one regular configuration): its representative and a
/// sequence number that only grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RingId {
    /// Ring sequence; compared first.
    pub seq: u64,
    /// The representative daemon that formed the ring.
    pub rep: NodeId,
}

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.rep, self.seq)
    }
}

/// The unique id of a message: its origin daemon and that daemon's message
/// counter (1, 2, 3, ... in submission order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct MsgId {
    /// The daemon that submitted the message.
    pub origin: NodeId,
    /// The origin's message counter.
    pub seq: u64,
}

/// Delivery service of a message.
///
/// The ring gives every service total order; `Safe` additionally waits until
/// every member holds the message. The weaker services are distinguished by
/// the client layer (they cost the same on the ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Service {
    /// No reliability asked for.
    Unreliable = 0,
    /// Reliable, no order asked for.
    Reliable = 1,
    /// Per-sender order.
    Fifo = 2,
    /// Causal order.
    Causal = 3,
    /// Total order.
    Agreed = 4,
    /// Total order, delivered only once every member holds the message.
    Safe = 5,
    /// Membership control: a packet of an old ring, carried through the new
    /// ring during recovery. Never delivered to clients.
    Recovered = 0x80,
    /// Membership control: the sender has sent all its recovery packets.
    /// Never delivered to clients.
    RecoveryDone = 0x81,
    /// Security control: a signed message of the servers' key agreement.
    /// Never delivered to clients.
    KeyAgreement = 0x82,
}

impl Service {
    /// Decodes the service byte.
    pub fn from_u8(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            0 => Self::Unreliable,
            1 => Self::Reliable,
            2 => Self::Fifo,
            3 => Self::Causal,
            4 => Self::Agreed,
            5 => Self::Safe,
            0x80 => Self::Recovered,
            0x81 => Self::RecoveryDone,
            0x82 => Self::KeyAgreement,
            _ => return Err(DecodeError::BadValue("service")),
        })
    }

    /// Lower-case name, as used in traces and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unreliable => "unreliable",
            Self::Reliable => "reliable",
            Self::Fifo => "fifo",
            Self::Causal => "causal",
            Self::Agreed => "agreed",
            Self::Safe => "safe",
            Self::Recovered => "recovered",
            Self::RecoveryDone => "recovery-done",
            Self::KeyAgreement => "key-agreement",
        }
    }

    /// Whether this is a membership control service, never delivered to
    /// clients.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Recovered | Self::RecoveryDone | Self::KeyAgreement)
    }
}

/// Any decoded daemon datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// A data packet.
    Data(DataPacket),
    /// The token.
    Token(Token),
    /// A join message.
    Join(Join),
    /// A commit token.
    Commit(CommitToken),
    /// A merge beacon.
    Beacon(Beacon),
    /// A token request.
    TokenRequest(TokenRequest),
}

impl Datagram {
    /// Decodes any datagram. Total: never panics.
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        match peek_kind(&buf)? {
            KIND_DATA => DataPacket::decode(buf).map(Self::Data),
            KIND_TOKEN => Token::decode(&buf).map(Self::Token),
            KIND_JOIN => Join::decode(&buf).map(Self::Join),
            KIND_COMMIT => CommitToken::decode(&buf).map(Self::Commit),
            KIND_BEACON | KIND_BEACON_ECHO => Beacon::decode(&buf).map(Self::Beacon),
            KIND_TOKEN_REQUEST => TokenRequest::decode(&buf).map(Self::TokenRequest),
            _ => Err(DecodeError::UnknownKind),
        }
    }
}

/// Checks the common header and returns the kind byte.
pub fn peek_kind(buf: &[u8]) -> Result<u8, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    if buf[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if buf[2] != VERSION {
        return Err(DecodeError::UnsupportedVersion(buf[2]));
    }
    Ok(buf[3])
}

pub(crate) fn put_header(out: &mut Vec<u8>, kind: u8) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
}

pub(crate) fn put_ring_id(out: &mut Vec<u8>, id: RingId) {
    out.extend_from_slice(&id.rep.0.to_be_bytes());
    out.extend_from_slice(&id.seq.to_be_bytes());
}

pub(crate) fn read_ring_id(r: &mut Reader<'_>) -> Result<RingId, DecodeError> {
    let rep = NodeId(r.u16()?);
    let seq = r.u64()?;
    Ok(RingId { seq, rep })
}

/// Encodes a datagram that is only a sender and a ring (beacon, token
/// request).
pub(crate) fn encode_sender_ring(kind: u8, sender: NodeId, ring_id: RingId) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 2 + 10);
    put_header(&mut out, kind);
    out.extend_from_slice(&sender.0.to_be_bytes());
    put_ring_id(&mut out, ring_id);
    out
}

/// Decodes a datagram of `kind` that is only a sender and a ring. Total.
pub(crate) fn decode_sender_ring(buf: &[u8], kind: u8) -> Result<(NodeId, RingId), DecodeError> {
    if peek_kind(buf)? != kind {
        return Err(DecodeError::UnknownKind);
    }
    let mut r = Reader::new(buf, HEADER_LEN);
    let sender = NodeId(r.u16()?);
    let ring_id = read_ring_id(&mut r)?;
    r.finish()?;
    Ok((sender, ring_id))
}

#[cfg(test)]
mod tests;
