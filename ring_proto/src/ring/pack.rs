//! Packing client messages into frames, and reassembling fragments.

use crate::wire::{Chunk, ChunkFlags, Groups, NodeId, PacketBuilder, Service};
use bytes::Bytes;
use std::collections::VecDeque;

/// A fragment is only started in a partly filled frame if at least this many
/// payload bytes fit; otherwise the message starts in the next frame.
const MIN_FRAGMENT: usize = 64;

/// A submitted message waiting to be sent.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) msg_seq: u64,
    pub(crate) service: Service,
    pub(crate) groups: Groups,
    pub(crate) payload: Bytes,
    /// Payload bytes already sent in earlier fragments.
    pub(crate) sent: usize,
}

/// The queue of messages waiting for the token.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Pending>,
    bytes: usize,
}

impl Outbox {
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn push(&mut self, p: Pending) {
        self.bytes += p.payload.len() - p.sent;
        self.queue.push_back(p);
    }

    /// Estimated number of frames the queue needs.
    pub(crate) fn frames_needed(&self, budget: usize, packing: bool) -> u32 {
        // Constant time: this runs on every token visit whatever the queue's
        // length.
        let est = if packing {
            // Chunk headers of about 16 bytes per message.
            (self.bytes + 16 * self.queue.len()).div_ceil(budget.max(1))
        } else {
            // One frame per message, plus the extra frames of large ones.
            self.queue.len() + self.bytes / budget.max(1)
        };
        u32::try_from(est).unwrap_or(u32::MAX)
    }

    /// Fills `b` from the front of the queue, adding to `chunks` what the
    /// packet will decode to (slices of the payloads, not of the packet);
    /// returns the number of payload bytes packed.
    pub(crate) fn fill(&mut self, b: &mut PacketBuilder, packing: bool, chunks: &mut Vec<Chunk>) -> usize {
        let mut packed = 0;
        while let Some(m) = self.queue.front_mut() {
            let first = m.sent == 0;
            let rest = m.payload.len() - m.sent;
            let whole = ChunkFlags { first, last: true };
            let whole_len = PacketBuilder::chunk_header_len(whole, &m.groups) + rest;
            if rest <= u16::MAX as usize && whole_len <= b.remaining() {
                let total = m.payload.len() as u32;
                b.push(m.msg_seq, m.service, whole, total, &m.groups, &m.payload[m.sent..]);
                let data = m.payload.slice(m.sent..);
                chunks.push(Chunk::as_pushed(m.msg_seq, m.service, whole, total, &m.groups, data));
                packed += rest;
                self.bytes -= rest;
                self.queue.pop_front();
                if packing {
                    continue;
                }
                break;
            }
            let part = ChunkFlags { first, last: false };
            let room = b
                .remaining()
                .saturating_sub(PacketBuilder::chunk_header_len(part, &m.groups))
                .min(u16::MAX as usize)
                .min(rest.saturating_sub(1));
            if b.count() > 0 && (room < MIN_FRAGMENT || whole_len <= b.budget_of_empty()) {
                // Start the message in a fresh frame instead.
                break;
            }
            if room == 0 {
                break;
            }
            let (total, data) = (m.payload.len() as u32, m.payload.slice(m.sent..m.sent + room));
            b.push(m.msg_seq, m.service, part, total, &m.groups, &data);
            chunks.push(Chunk::as_pushed(m.msg_seq, m.service, part, total, &m.groups, data));
            m.sent += room;
            packed += room;
            self.bytes -= room;
            break;
        }
        packed
    }
}

/// A message being reassembled from fragments.
#[derive(Debug)]
pub(crate) struct Partial {
    pub(crate) origin: NodeId,
    pub(crate) msg_seq: u64,
    pub(crate) service: Service,
    pub(crate) groups: Groups,
    pub(crate) total_len: usize,
    /// Room for `total_len` bytes, carved out of the ring's block.
    pub(crate) buf: bytes::BytesMut,
}

/// The two send queues: membership control first, then client messages
/// (only once the ring is installed).
#[derive(Debug, Default)]
pub(crate) struct Outboxes {
    pub(crate) ctl: Outbox,
    pub(crate) user: Outbox,
    /// Client messages may be sent (the ring is installed).
    pub(crate) user_allowed: bool,
}

impl Outboxes {
    pub(crate) fn is_empty(&self) -> bool {
        self.ctl.is_empty() && (!self.user_allowed || self.user.is_empty())
    }

    pub(crate) fn frames_needed(&self, budget: usize, packing: bool) -> u32 {
        let user = if self.user_allowed { self.user.frames_needed(budget, packing) } else { 0 };
        self.ctl.frames_needed(budget, packing).saturating_add(user)
    }

    /// Fills a packet: control messages first; client messages only after
    /// every control message is out.
    pub(crate) fn fill(&mut self, b: &mut PacketBuilder, packing: bool, chunks: &mut Vec<Chunk>) -> usize {
        let mut n = self.ctl.fill(b, packing, chunks);
        if self.ctl.is_empty() && self.user_allowed && (packing || b.count() == 0) {
            n += self.user.fill(b, packing, chunks);
        }
        n
    }
}

impl Outbox {
    /// Makes a message that was partly sent in a ring that is over start
    /// again from its first fragment in the next ring.
    pub(crate) fn restart_partial(&mut self) {
        if let Some(m) = self.queue.front_mut() {
            self.bytes += m.sent;
            m.sent = 0;
        }
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}
