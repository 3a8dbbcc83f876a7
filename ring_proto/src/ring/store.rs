//! The packet store: received packets by sequence number, from the oldest
//! not yet garbage-collected.

use crate::wire::{Chunk, DataPacket};
use bytes::Bytes;
use std::collections::VecDeque;

/// Chunk vectors of collected packets kept for new ones, at most.
const SPARE: usize = 1024;

/// A packet held for delivery and retransmission.
#[derive(Debug)]
pub(crate) struct Stored {
    /// The packet as it travelled, for retransmission.
    pub(crate) raw: Bytes,
    /// The decoded packet; chunk payloads are slices of `raw`.
    pub(crate) packet: DataPacket,
}

/// Packets `base ..` by sequence number; `None` marks a hole.
#[derive(Debug)]
pub(crate) struct Store {
    /// Sequence number of `slots[0]`; everything below was collected.
    base: u64,
    slots: VecDeque<Option<Stored>>,
    /// Emptied chunk vectors of collected packets, for the next packets
    /// built or received: no allocation per packet in steady state.
    spare: Vec<Vec<Chunk>>,
}

impl Store {
    pub(crate) fn new() -> Self {
        Self { base: 1, slots: VecDeque::new(), spare: Vec::new() }
    }

    /// An empty chunk vector, recycled if one is spare.
    pub(crate) fn spare_chunks(&mut self) -> Vec<Chunk> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps `chunks`' allocation for a later packet.
    pub(crate) fn recycle(&mut self, mut chunks: Vec<Chunk>) {
        if self.spare.len() < SPARE && chunks.capacity() > 0 {
            chunks.clear();
            self.spare.push(chunks);
        }
    }

    /// Lowest sequence number not yet collected.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Whether the packet was received (collected packets count: they were
    /// received by every member before collection).
    pub(crate) fn holds(&self, seq: u64) -> bool {
        seq < self.base || self.get(seq).is_some()
    }

    pub(crate) fn get(&self, seq: u64) -> Option<&Stored> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get(i)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut Stored> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)?.as_mut()
    }

    /// Inserts a packet; false if it was already held or collected.
    pub(crate) fn insert(&mut self, seq: u64, s: Stored) -> bool {
        let Some(i) = seq.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()) else {
            return false;
        };
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        let slot = &mut self.slots[i];
        if slot.is_some() {
            return false;
        }
        *slot = Some(s);
        true
    }

    /// Drops every packet with sequence number `<= upto`.
    pub(crate) fn collect(&mut self, upto: u64) {
        while self.base <= upto {
            let Some(slot) = self.slots.pop_front() else {
                self.base = upto + 1;
                return;
            };
            if let Some(s) = slot {
                self.recycle(s.packet.chunks);
            }
            self.base += 1;
        }
    }

    /// Number of slots in use (held packets and holes).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}
