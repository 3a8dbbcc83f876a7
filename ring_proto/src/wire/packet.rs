//! Data packets: a header and one or more packed message chunks.

use super::{DecodeError, HEADER_LEN, KIND_DATA, NodeId, Reader, RingId, Service, peek_kind, read_ring_id};
use bytes::{Bytes, BytesMut};

/// Bytes of a data packet before its first chunk: common header (4), ring id
/// (10), seq (8), sender (2), flags (1), chunk count (2).
pub const PACKET_OVERHEAD: usize = HEADER_LEN + 10 + 8 + 2 + 1 + 2;

/// Fixed bytes of a chunk header: message seq (8), service (1), flags (1),
/// data length (2). A first chunk adds its groups (1 + names) and a first
/// chunk of a fragmented message adds the total length (4).
pub const CHUNK_OVERHEAD: usize = 8 + 1 + 1 + 2;

/// Where a chunk sits in its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkFlags {
    /// The chunk starts its message.
    pub first: bool,
    /// The chunk ends its message.
    pub last: bool,
}

impl ChunkFlags {
    /// A whole, unfragmented message.
    pub const WHOLE: Self = Self { first: true, last: true };

    fn to_u8(self) -> u8 {
        u8::from(self.first) | (u8::from(self.last) << 1)
    }

    fn from_u8(b: u8) -> Result<Self, DecodeError> {
        if b & !0b11 != 0 {
            return Err(DecodeError::BadValue("chunk flags"));
        }
        Ok(Self { first: b & 1 != 0, last: b & 2 != 0 })
    }
}

/// The encoded list of destination group names of a message: a count byte,
/// then for each name a length byte (1..=255) and the name's bytes.
///
/// Kept encoded (a slice of the packet) so decoding allocates nothing per
/// message.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Groups(Bytes);

impl Groups {
    /// No groups.
    pub fn none() -> Self {
        Self(Bytes::from_static(&[0]))
    }

    /// Encodes a list of names. Errors if there are more than 255 names or a
    /// name is empty or longer than 255 bytes (the caller's misuse).
    pub fn encode<N: AsRef<[u8]>>(names: &[N]) -> Result<Self, DecodeError> {
        let count = u8::try_from(names.len()).map_err(|_| DecodeError::BadValue("group count"))?;
        let mut out = vec![count];
        for n in names {
            let n = n.as_ref();
            let len = u8::try_from(n.len()).map_err(|_| DecodeError::BadValue("group name"))?;
            if len == 0 {
                return Err(DecodeError::BadValue("group name"));
            }
            out.push(len);
            out.extend_from_slice(n);
        }
        Ok(Self(Bytes::from(out)))
    }

    /// A list already checked to be in this encoding (count, then each
    /// name as a length of 1..=255 and its bytes): a decoder's slice.
    pub(crate) fn from_checked(encoded: Bytes) -> Self {
        debug_assert!(Self::check(&encoded));
        Self(encoded)
    }

    /// Whether `b` is a well-formed list (debug checks).
    fn check(b: &[u8]) -> bool {
        let Some((&count, mut rest)) = b.split_first() else { return false };
        for _ in 0..count {
            let Some((&len, tail)) = rest.split_first() else { return false };
            if len == 0 || tail.len() < len as usize {
                return false;
            }
            rest = &tail[len as usize..];
        }
        rest.is_empty()
    }

    /// Number of names.
    pub fn count(&self) -> usize {
        usize::from(self.as_bytes()[0])
    }

    /// The encoded bytes (count, then names).
    pub fn as_bytes(&self) -> &[u8] {
        if self.0.is_empty() { &[0] } else { &self.0 }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Iterates over the names.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let b = self.as_bytes();
        let mut pos = 1;
        (0..b[0]).map(move |_| {
            let len = b[pos] as usize;
            let name = &b[pos + 1..pos + 1 + len];
            pos += 1 + len;
            name
        })
    }

    /// Reads and validates a group list, returning it as a slice of `buf`.
    fn read(r: &mut Reader<'_>, buf: &Bytes) -> Result<Self, DecodeError> {
        let start = r.pos();
        let count = r.u8()?;
        for _ in 0..count {
            let len = r.u8()?;
            if len == 0 {
                return Err(DecodeError::BadValue("group name"));
            }
            r.take(len as usize)?;
        }
        Ok(Self(buf.slice(start..r.pos())))
    }
}

/// One piece of a message inside a data packet: a whole message, or one
/// fragment of a message larger than a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The origin's message counter; the origin is the packet's sender.
    pub msg_seq: u64,
    /// Delivery service.
    pub service: Service,
    /// Position in the message.
    pub flags: ChunkFlags,
    /// Total message length; present on the wire only for the first chunk of a
    /// fragmented message, otherwise the chunk's own length.
    pub total_len: u32,
    /// Destination groups; carried by the first chunk only (empty otherwise).
    pub groups: Groups,
    /// The chunk's payload bytes.
    pub data: Bytes,
}

impl Chunk {
    /// The chunk [`DataPacket::decode`] gives for one written by
    /// [`PacketBuilder::push`] with these arguments and `data`'s bytes: a
    /// sender keeps these for its own packet instead of decoding it.
    pub fn as_pushed(
        msg_seq: u64,
        service: Service,
        flags: ChunkFlags,
        total_len: u32,
        groups: &Groups,
        data: Bytes,
    ) -> Self {
        let total_len = if flags.first && !flags.last { total_len } else { data.len() as u32 };
        let groups = if flags.first { groups.clone() } else { Groups::default() };
        Self { msg_seq, service, flags, total_len, groups, data }
    }
}

/// A data packet: ring id, ring sequence number, sender and chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPacket {
    /// The ring the packet was sent in.
    pub ring_id: RingId,
    /// Sequence number in the ring's total order (1, 2, ...).
    pub seq: u64,
    /// The daemon that assigned `seq`, and origin of every chunk.
    pub sender: NodeId,
    /// The packed chunks, in the sender's order.
    pub chunks: Vec<Chunk>,
}

impl DataPacket {
    /// Decodes a data packet; chunk payloads are slices of `buf`. Total.
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        Self::decode_into(buf, Vec::new())
    }

    /// As [`DataPacket::decode`], with the chunks in `chunks` (cleared
    /// first): a receiver that recycles the vectors of the packets it
    /// dropped allocates nothing per packet.
    pub fn decode_into(buf: Bytes, mut chunks: Vec<Chunk>) -> Result<Self, DecodeError> {
        chunks.clear();
        if peek_kind(&buf)? != KIND_DATA {
            return Err(DecodeError::UnknownKind);
        }
        let mut r = Reader::new(&buf, HEADER_LEN);
        let ring_id = read_ring_id(&mut r)?;
        let seq = r.u64()?;
        if seq == 0 {
            return Err(DecodeError::BadValue("seq"));
        }
        let sender = NodeId(r.u16()?);
        if r.u8()? != 0 {
            return Err(DecodeError::BadValue("packet flags"));
        }
        let count = r.u16()?;
        if count == 0 {
            return Err(DecodeError::BadValue("chunk count"));
        }
        // Each chunk takes at least CHUNK_OVERHEAD bytes: bound the allocation.
        if count as usize > r.remaining() / CHUNK_OVERHEAD {
            return Err(DecodeError::Truncated);
        }
        chunks.reserve(count as usize);
        for _ in 0..count {
            let msg_seq = r.u64()?;
            if msg_seq == 0 {
                return Err(DecodeError::BadValue("message seq"));
            }
            let service = Service::from_u8(r.u8()?)?;
            let flags = ChunkFlags::from_u8(r.u8()?)?;
            let declared_total = if flags.first && !flags.last { Some(r.u32()?) } else { None };
            let groups = if flags.first { Groups::read(&mut r, &buf)? } else { Groups::default() };
            let len = r.u16()? as usize;
            let start = r.pos();
            r.take(len)?;
            let data = buf.slice(start..start + len);
            let total_len = match declared_total {
                Some(t) if (t as usize) <= len => {
                    return Err(DecodeError::BadValue("total length"));
                }
                Some(t) => t,
                None => len as u32,
            };
            chunks.push(Chunk { msg_seq, service, flags, total_len, groups, data });
        }
        r.finish()?;
        Ok(Self { ring_id, seq, sender, chunks })
    }

    /// Encodes the packet. Used by tests and tools; the ring builds packets
    /// with [`PacketBuilder`].
    pub fn encode(&self) -> Bytes {
        let mut b = PacketBuilder::new(self.ring_id, self.seq, self.sender, usize::MAX);
        for c in &self.chunks {
            b.push(c.msg_seq, c.service, c.flags, c.total_len, &c.groups, &c.data);
        }
        b.finish()
    }
}

/// Builds a data packet chunk by chunk into one buffer: a buffer of its
/// own ([`PacketBuilder::new`]), or the free end of a block the caller
/// lends and gets back, packets being split off it
/// ([`PacketBuilder::in_block`], [`PacketBuilder::finish_in_block`]): a
/// sender that keeps one block allocates nothing per packet.
#[derive(Debug)]
pub struct PacketBuilder {
    out: BytesMut,
    count: u16,
    budget: usize,
}

impl PacketBuilder {
    /// Starts a packet that may grow to `budget` bytes.
    pub fn new(ring_id: RingId, seq: u64, sender: NodeId, budget: usize) -> Self {
        Self::in_block(BytesMut::with_capacity(budget.min(64 * 1024)), ring_id, seq, sender, budget)
    }

    /// Starts a packet at the start of `block`'s free room (whatever
    /// `block` holds is dropped); give the block back with
    /// [`PacketBuilder::finish_in_block`] or [`PacketBuilder::into_block`].
    /// The block grows (a new allocation) if the packet outgrows its room.
    pub fn in_block(mut block: BytesMut, ring_id: RingId, seq: u64, sender: NodeId, budget: usize) -> Self {
        block.clear();
        block.extend_from_slice(&super::MAGIC);
        block.extend_from_slice(&[super::VERSION, KIND_DATA]);
        block.extend_from_slice(&ring_id.rep.0.to_be_bytes());
        block.extend_from_slice(&ring_id.seq.to_be_bytes());
        block.extend_from_slice(&seq.to_be_bytes());
        block.extend_from_slice(&sender.0.to_be_bytes());
        // Flags, then the chunk count (written by `finish`).
        block.extend_from_slice(&[0, 0, 0]);
        debug_assert_eq!(block.len(), PACKET_OVERHEAD);
        Self { out: block, count: 0, budget }
    }

    /// Header bytes a chunk with these properties needs besides its data.
    pub fn chunk_header_len(flags: ChunkFlags, groups: &Groups) -> usize {
        CHUNK_OVERHEAD
            + if flags.first { groups.encoded_len() } else { 0 }
            + if flags.first && !flags.last { 4 } else { 0 }
    }

    /// Bytes still free under the budget.
    pub fn remaining(&self) -> usize {
        self.budget.saturating_sub(self.out.len())
    }

    /// Bytes free for chunks in an empty packet under the same budget.
    pub fn budget_of_empty(&self) -> usize {
        self.budget.saturating_sub(PACKET_OVERHEAD)
    }

    /// Number of chunks so far.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Appends a chunk. The caller keeps within the budget, `data` under
    /// 64 KiB and the count under 65,536.
    pub fn push(
        &mut self,
        msg_seq: u64,
        service: Service,
        flags: ChunkFlags,
        total_len: u32,
        groups: &Groups,
        data: &[u8],
    ) {
        debug_assert!(data.len() <= u16::MAX as usize && self.count < u16::MAX);
        self.out.extend_from_slice(&msg_seq.to_be_bytes());
        self.out.extend_from_slice(&[service as u8, flags.to_u8()]);
        if flags.first && !flags.last {
            self.out.extend_from_slice(&total_len.to_be_bytes());
        }
        if flags.first {
            self.out.extend_from_slice(groups.as_bytes());
        }
        self.out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        self.out.extend_from_slice(data);
        self.count += 1;
    }

    /// Writes the chunk count and returns the packet.
    pub fn finish(self) -> Bytes {
        self.finish_in_block().0
    }

    /// Writes the chunk count and returns the packet, split off the block,
    /// and the block's free rest.
    pub fn finish_in_block(mut self) -> (Bytes, BytesMut) {
        let at = PACKET_OVERHEAD - 2;
        self.out[at..at + 2].copy_from_slice(&self.count.to_be_bytes());
        let packet = self.out.split().freeze();
        (packet, self.out)
    }

    /// Drops the packet and returns the block (for a packet that got no
    /// chunk).
    pub fn into_block(mut self) -> BytesMut {
        self.out.clear();
        self.out
    }
}
