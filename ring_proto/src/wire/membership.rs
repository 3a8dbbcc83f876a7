//! Membership messages: join, commit token and merge beacon.

use super::{
    DecodeError, HEADER_LEN, KIND_BEACON, KIND_BEACON_ECHO, KIND_COMMIT, KIND_JOIN, NodeId, Reader, RingId,
    decode_sender_ring, encode_sender_ring, peek_kind, put_header, put_ring_id, read_ring_id,
};

/// Most daemons a membership message may name.
pub const MAX_NODES: usize = 1024;

fn put_ids(out: &mut Vec<u8>, ids: &[NodeId]) {
    out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        out.extend_from_slice(&id.0.to_be_bytes());
    }
}

/// Reads a count-prefixed list of ids, which must be strictly ascending and
/// not contain [`NodeId::NONE`].
fn read_ids(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<NodeId>, DecodeError> {
    let n = r.u16()? as usize;
    if n > MAX_NODES || n > r.remaining() / 2 {
        return Err(DecodeError::BadValue(field));
    }
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = NodeId(r.u16()?);
        if id == NodeId::NONE || ids.last().is_some_and(|&l| l >= id) {
            return Err(DecodeError::BadValue(field));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// A join message: what its sender believes the next ring should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// The sender.
    pub sender: NodeId,
    /// The sender's current (last installed) ring.
    pub ring_id: RingId,
    /// Highest ring sequence number the sender has seen.
    pub max_ring_seq: u64,
    /// Daemons the sender wants in the ring, ascending.
    pub procs: Vec<NodeId>,
    /// Daemons the sender leaves out of the ring it proposes, ascending:
    /// its suspects and those the accusations it learned take out.
    pub fails: Vec<NodeId>,
    /// Daemons the sender itself cannot hear (its direct suspicions, a
    /// subset of `fails`), ascending. Only these count as accusations:
    /// what a daemon merely learned from others is never passed on as its
    /// own (docs/protocol.md 8.3).
    pub suspects: Vec<NodeId>,
}

impl Join {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + 26 + 2 * (self.procs.len() + self.fails.len() + self.suspects.len()),
        );
        put_header(&mut out, KIND_JOIN);
        out.extend_from_slice(&self.sender.0.to_be_bytes());
        put_ring_id(&mut out, self.ring_id);
        out.extend_from_slice(&self.max_ring_seq.to_be_bytes());
        put_ids(&mut out, &self.procs);
        put_ids(&mut out, &self.fails);
        put_ids(&mut out, &self.suspects);
        out
    }

    /// Decodes a join. Total.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if peek_kind(buf)? != KIND_JOIN {
            return Err(DecodeError::UnknownKind);
        }
        let mut r = Reader::new(buf, HEADER_LEN);
        let sender = NodeId(r.u16()?);
        let ring_id = read_ring_id(&mut r)?;
        let max_ring_seq = r.u64()?;
        let procs = read_ids(&mut r, "procs")?;
        let fails = read_ids(&mut r, "fails")?;
        let suspects = read_ids(&mut r, "suspects")?;
        r.finish()?;
        if sender == NodeId::NONE || procs.binary_search(&sender).is_err() {
            return Err(DecodeError::BadValue("sender"));
        }
        if suspects.iter().any(|s| fails.binary_search(s).is_err()) {
            return Err(DecodeError::BadValue("suspects"));
        }
        Ok(Self { sender, ring_id, max_ring_seq, procs, fails, suspects })
    }
}

/// A merge beacon: the representative of a ring announces it, so that
/// partitions that heal while idle find each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beacon {
    /// The sender.
    pub sender: NodeId,
    /// The sender's ring.
    pub ring_id: RingId,
    /// An echo: sent to one daemon whose beacon (or packet) the sender
    /// heard although it could not hear that daemon before; it proves the
    /// link works both ways (kind [`KIND_BEACON_ECHO`]).
    pub echo: bool,
}

impl Beacon {
    /// Encoded length.
    pub const LEN: usize = HEADER_LEN + 2 + 10;

    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        encode_sender_ring(if self.echo { KIND_BEACON_ECHO } else { KIND_BEACON }, self.sender, self.ring_id)
    }

    /// Decodes a beacon or an echo. Total.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let echo = peek_kind(buf)? == KIND_BEACON_ECHO;
        let (sender, ring_id) = decode_sender_ring(buf, if echo { KIND_BEACON_ECHO } else { KIND_BEACON })?;
        Ok(Self { sender, ring_id, echo })
    }
}

/// What the members coming from one old ring reported in the commit token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OldRing {
    /// The old ring.
    pub ring_id: RingId,
    /// Lowest aru among the new ring's members from that old ring: every one
    /// of them holds every packet up to here.
    pub low_aru: u64,
    /// Highest stable line among them: every member of the old ring held
    /// every packet up to here.
    pub max_stable: u64,
}

/// A member's entry in the commit token: index into `rings`, or one of the
/// two markers below.
pub type RingIndex = u8;
/// Entry not filled in yet (first rotation).
pub const ENTRY_EMPTY: RingIndex = 0xFE;
/// The member comes from no ring (it just started).
pub const ENTRY_FRESH: RingIndex = 0xFF;

/// The commit token: forms a new ring out of an agreed membership. It goes
/// round twice: the first rotation collects each member's old-ring state,
/// the second tells everyone the result and starts recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitToken {
    /// The new ring.
    pub ring_id: RingId,
    /// Incremented at every hop; duplicates are recognised by it.
    pub token_seq: u64,
    /// 1 or 2.
    pub rotation: u8,
    /// Members of the new ring, ascending.
    pub members: Vec<NodeId>,
    /// Per member (same order): its old ring's index in `rings`, or a marker.
    pub entries: Vec<RingIndex>,
    /// Old rings of the members.
    pub rings: Vec<OldRing>,
}

impl CommitToken {
    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + 10 + 8 + 1 + 2 + 3 * self.members.len() + 1 + 26 * self.rings.len()
    }

    /// Encodes the token.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        put_header(&mut out, KIND_COMMIT);
        put_ring_id(&mut out, self.ring_id);
        out.extend_from_slice(&self.token_seq.to_be_bytes());
        out.push(self.rotation);
        out.extend_from_slice(&(self.members.len() as u16).to_be_bytes());
        for (m, e) in self.members.iter().zip(&self.entries) {
            out.extend_from_slice(&m.0.to_be_bytes());
            out.push(*e);
        }
        out.push(self.rings.len() as u8);
        for r in &self.rings {
            put_ring_id(&mut out, r.ring_id);
            out.extend_from_slice(&r.low_aru.to_be_bytes());
            out.extend_from_slice(&r.max_stable.to_be_bytes());
        }
        out
    }

    /// Decodes a commit token. Total.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if peek_kind(buf)? != KIND_COMMIT {
            return Err(DecodeError::UnknownKind);
        }
        let mut r = Reader::new(buf, HEADER_LEN);
        let ring_id = read_ring_id(&mut r)?;
        let token_seq = r.u64()?;
        let rotation = r.u8()?;
        if rotation != 1 && rotation != 2 {
            return Err(DecodeError::BadValue("rotation"));
        }
        let n = r.u16()? as usize;
        if n == 0 || n > MAX_NODES || n > r.remaining() / 3 {
            return Err(DecodeError::BadValue("members"));
        }
        let mut members = Vec::with_capacity(n);
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let id = NodeId(r.u16()?);
            if id == NodeId::NONE || members.last().is_some_and(|&l| l >= id) {
                return Err(DecodeError::BadValue("members"));
            }
            members.push(id);
            entries.push(r.u8()?);
        }
        let k = r.u8()? as usize;
        if k > r.remaining() / 26 {
            return Err(DecodeError::Truncated);
        }
        let mut rings = Vec::with_capacity(k);
        for _ in 0..k {
            let ring_id = read_ring_id(&mut r)?;
            let low_aru = r.u64()?;
            let max_stable = r.u64()?;
            rings.push(OldRing { ring_id, low_aru, max_stable });
        }
        r.finish()?;
        if entries.iter().any(|&e| e != ENTRY_EMPTY && e != ENTRY_FRESH && e as usize >= k) {
            return Err(DecodeError::BadValue("entries"));
        }
        if rotation == 2 && entries.contains(&ENTRY_EMPTY) {
            return Err(DecodeError::BadValue("entries"));
        }
        if !members.contains(&ring_id.rep) {
            return Err(DecodeError::BadValue("ring id"));
        }
        Ok(Self { ring_id, token_seq, rotation, members, entries, rings })
    }
}
