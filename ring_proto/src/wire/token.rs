//! The token: the right to send, and the ring's shared ordering state.

use super::{
    DecodeError, HEADER_LEN, KIND_TOKEN, KIND_TOKEN_REQUEST, NodeId, Reader, RingId, decode_sender_ring,
    encode_sender_ring, peek_kind, put_header, put_ring_id, read_ring_id,
};

/// Bytes of a token without retransmission requests: header (4), ring id
/// (10), token seq (8), seq (8), aru (8), aru id (2), fcc (4), backlog (4),
/// request count (2).
pub const TOKEN_FIXED_LEN: usize = HEADER_LEN + 10 + 8 + 8 + 8 + 2 + 4 + 4 + 2;

/// Bytes of one retransmission request range: start (8), length (4).
pub const RTR_RANGE_LEN: usize = 12;

/// A run of consecutive missing packets: `start .. start + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtrRange {
    /// First missing sequence number.
    pub start: u64,
    /// Number of consecutive missing packets (at least 1).
    pub len: u32,
}

impl RtrRange {
    /// One past the last sequence number.
    pub fn end(self) -> u64 {
        self.start + u64::from(self.len)
    }
}

/// The token. Field meanings follow the Totem single-ring protocol; see
/// `docs/protocol.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// The ring this token belongs to.
    pub ring_id: RingId,
    /// Incremented by every holder before passing it on; a token whose
    /// `token_seq` is not above the last one seen is stale or a duplicate.
    pub token_seq: u64,
    /// Highest packet sequence number assigned in the ring.
    pub seq: u64,
    /// All-received-up-to: a lower bound on every member's local aru.
    pub aru: u64,
    /// The member that last lowered `aru`, or [`NodeId::NONE`].
    pub aru_id: NodeId,
    /// Flow-control count: packets sent during the last rotation.
    pub fcc: u32,
    /// Sum of the members' reported backlogs (packets waiting to be sent).
    pub backlog: u32,
    /// Retransmission requests, ascending, not overlapping.
    pub rtr: Vec<RtrRange>,
}

impl Token {
    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        TOKEN_FIXED_LEN + self.rtr.len() * RTR_RANGE_LEN
    }

    /// Encodes the token into `out` (cleared first).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(self.encoded_len());
        put_header(out, KIND_TOKEN);
        put_ring_id(out, self.ring_id);
        out.extend_from_slice(&self.token_seq.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.aru.to_be_bytes());
        out.extend_from_slice(&self.aru_id.0.to_be_bytes());
        out.extend_from_slice(&self.fcc.to_be_bytes());
        out.extend_from_slice(&self.backlog.to_be_bytes());
        let n = u16::try_from(self.rtr.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for r in self.rtr.iter().take(n as usize) {
            out.extend_from_slice(&r.start.to_be_bytes());
            out.extend_from_slice(&r.len.to_be_bytes());
        }
    }

    /// Encodes the token into a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes a token. Total.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if peek_kind(buf)? != KIND_TOKEN {
            return Err(DecodeError::UnknownKind);
        }
        let mut r = Reader::new(buf, HEADER_LEN);
        let ring_id = read_ring_id(&mut r)?;
        let token_seq = r.u64()?;
        let seq = r.u64()?;
        let aru = r.u64()?;
        if aru > seq {
            return Err(DecodeError::BadValue("aru"));
        }
        let aru_id = NodeId(r.u16()?);
        let fcc = r.u32()?;
        let backlog = r.u32()?;
        let n = r.u16()? as usize;
        if n > r.remaining() / RTR_RANGE_LEN {
            return Err(DecodeError::Truncated);
        }
        let mut rtr = Vec::with_capacity(n);
        let mut floor = 0u64;
        for _ in 0..n {
            let start = r.u64()?;
            let len = r.u32()?;
            let end = start.checked_add(u64::from(len));
            match end {
                Some(end) if len > 0 && start >= 1 && start >= floor && end <= seq.saturating_add(1) => {
                    floor = end;
                }
                _ => return Err(DecodeError::BadValue("retransmission request")),
            }
            rtr.push(RtrRange { start, len });
        }
        r.finish()?;
        Ok(Self { ring_id, token_seq, seq, aru, aru_id, fcc, backlog, rtr })
    }
}

/// A token request: a member with messages to send while the ring idles
/// asks the representative, who holds the idle token, to pass it now
/// instead of at the end of its hold (issue 16, the latency path). Sent to
/// the representative only, sealed like the ring's own packets. Losing one
/// costs at most the hold; a request the representative cannot use (it does
/// not hold the token) is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The member asking.
    pub sender: NodeId,
    /// The ring whose token it asks for.
    pub ring_id: RingId,
}

impl TokenRequest {
    /// Encoded length.
    pub const LEN: usize = HEADER_LEN + 2 + 10;

    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        encode_sender_ring(KIND_TOKEN_REQUEST, self.sender, self.ring_id)
    }

    /// Decodes a request. Total.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let (sender, ring_id) = decode_sender_ring(buf, KIND_TOKEN_REQUEST)?;
        Ok(Self { sender, ring_id })
    }
}
