//! The invariant checks over the daemons' logs.
//!
//! The numbered checks follow the Extended Virtual Synchrony specification
//! (Moser, Amir, Melliar-Smith, Agarwal, "Extended virtual synchrony",
//! ICDCS 1994) as the issue lists them.

use super::{Sent, Violation};
use crate::ring::ConfigKind;
use crate::wire::{MsgId, NodeId, RingId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One line of a daemon's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Config { kind: ConfigKind, ring_id: RingId, members: Vec<NodeId> },
    Deliver { id: MsgId, ring_id: RingId, ring_seq: u64 },
}

/// Everything one incarnation of a daemon delivered, in order.
#[derive(Debug)]
pub(crate) struct Log {
    pub(crate) node: NodeId,
    pub(crate) incarnation: u32,
    pub(crate) entries: Vec<Entry>,
    pub(crate) crashed: bool,
    pub(crate) submitted: Vec<MsgId>,
    delivered: HashSet<MsgId>,
}

impl Log {
    pub(crate) fn new(node: NodeId, incarnation: u32) -> Self {
        Self {
            node,
            incarnation,
            entries: Vec::new(),
            crashed: false,
            submitted: Vec::new(),
            delivered: HashSet::new(),
        }
    }

    pub(crate) fn push_delivery(&mut self, id: MsgId, ring_id: RingId, ring_seq: u64) {
        self.delivered.insert(id);
        self.entries.push(Entry::Deliver { id, ring_id, ring_seq });
    }

    pub(crate) fn delivered(&self, id: MsgId) -> bool {
        self.delivered.contains(&id)
    }

    pub(crate) fn delivery_count(&self) -> usize {
        self.entries.iter().filter(|e| matches!(e, Entry::Deliver { .. })).count()
    }

    pub(crate) fn current_config(&self) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| matches!(e, Entry::Config { .. }))
    }

    /// Whether a message ordered in `ring` may be delivered now: in that
    /// ring's regular configuration, or in the transitional configuration
    /// that follows it (check 6: the transitional configuration comes before
    /// the messages delivered in it).
    pub(crate) fn in_its_configuration(&self, ring: RingId) -> bool {
        let mut configs = self.entries.iter().rev().filter_map(|e| match e {
            Entry::Config { kind, ring_id, .. } => Some((*kind, *ring_id)),
            Entry::Deliver { .. } => None,
        });
        match configs.next() {
            Some((ConfigKind::Regular, r)) => r == ring,
            Some((ConfigKind::Transitional, _)) => {
                matches!(configs.next(), Some((ConfigKind::Regular, r)) if r == ring)
            }
            None => false,
        }
    }

    fn deliveries(&self) -> impl Iterator<Item = MsgId> + '_ {
        self.entries.iter().filter_map(|e| match e {
            Entry::Deliver { id, .. } => Some(*id),
            Entry::Config { .. } => None,
        })
    }
}

/// A fixed ring without faults: every daemon delivers the same sequence, no
/// duplicates, per-origin FIFO without gaps, everything submitted.
pub(crate) fn fixed_ring(logs: &[Log], sent: &HashMap<MsgId, Sent>, v: &mut Vec<Violation>) {
    let reference: Vec<MsgId> = logs[0].deliveries().collect();
    for log in logs {
        let node = log.node;
        let seq: Vec<MsgId> = log.deliveries().collect();
        if node != logs[0].node {
            let n = seq.len().max(reference.len());
            if let Some(index) = (0..n).find(|&k| seq.get(k) != reference.get(k)) {
                v.push(Violation::Order {
                    node,
                    index,
                    expected: reference.get(index).copied(),
                    got: seq.get(index).copied(),
                });
            }
        }
        let mut seen = HashSet::with_capacity(seq.len());
        let mut next: HashMap<NodeId, u64> = HashMap::new();
        for &id in &seq {
            if !seen.insert(id) {
                v.push(Violation::Duplicate { node, id });
                continue;
            }
            let expected = next.entry(id.origin).or_insert(1);
            if id.seq != *expected {
                v.push(Violation::Fifo { node, id, expected_seq: *expected });
            }
            *expected = id.seq + 1;
        }
        let mut lost: Vec<MsgId> = sent.keys().filter(|id| !seen.contains(id)).copied().collect();
        lost.sort_unstable();
        v.extend(lost.into_iter().take(5).map(|id| Violation::Lost { node, id }));
    }
}

type ConfigKey = (ConfigKind, RingId, Vec<NodeId>);

/// The EVS checks over logs of runs with faults.
pub(crate) fn evs(logs: &[Log], v: &mut Vec<Violation>) {
    // 1. One ring id, one membership.
    let mut rings: HashMap<RingId, &Vec<NodeId>> = HashMap::new();
    for log in logs {
        for e in &log.entries {
            if let Entry::Config { kind: ConfigKind::Regular, ring_id, members } = e {
                if let Some(m) = rings.insert(*ring_id, members) {
                    if m != members && !v.contains(&Violation::RingConflict { ring: *ring_id }) {
                        v.push(Violation::RingConflict { ring: *ring_id });
                    }
                }
            }
        }
    }
    // 2. Same configuration and same successor: same messages in it.
    let mut segments: HashMap<(ConfigKey, ConfigKey), (NodeId, HashSet<MsgId>)> = HashMap::new();
    for log in logs {
        let mut current: Option<ConfigKey> = None;
        let mut set: HashSet<MsgId> = HashSet::new();
        for e in &log.entries {
            match e {
                Entry::Config { kind, ring_id, members } => {
                    let key = (*kind, *ring_id, members.clone());
                    if let Some(prev) = current.take() {
                        let (ring, kind) = (prev.1, prev.0);
                        let s = std::mem::take(&mut set);
                        match segments.get(&(prev.clone(), key.clone())) {
                            Some((other, theirs)) if *theirs != s => {
                                v.push(Violation::SetMismatch { a: *other, b: log.node, ring, kind });
                            }
                            Some(_) => {}
                            None => {
                                segments.insert((prev, key.clone()), (log.node, s));
                            }
                        }
                    }
                    current = Some(key);
                }
                Entry::Deliver { id, .. } => {
                    set.insert(*id);
                }
            }
        }
    }
    // 3. No two daemons deliver two messages in different orders; 7. no
    // duplicates, and every daemon places a message at the same point of
    // the same ring.
    let mut place: HashMap<MsgId, (RingId, u64)> = HashMap::new();
    let mut positions: Vec<HashMap<MsgId, usize>> = Vec::with_capacity(logs.len());
    for log in logs {
        let mut pos = HashMap::new();
        for (i, e) in log.entries.iter().enumerate() {
            if let Entry::Deliver { id, ring_id, ring_seq } = e {
                if pos.insert(*id, i).is_some() {
                    v.push(Violation::Duplicate { node: log.node, id: *id });
                }
                match place.get(id) {
                    Some(p) if *p != (*ring_id, *ring_seq) => v.push(Violation::OrderedTwice { id: *id }),
                    Some(_) => {}
                    None => {
                        place.insert(*id, (*ring_id, *ring_seq));
                    }
                }
            }
        }
        positions.push(pos);
    }
    // Per-origin FIFO within each log.
    for log in logs {
        let mut last: HashMap<NodeId, u64> = HashMap::new();
        for id in log.deliveries() {
            let l = last.entry(id.origin).or_insert(0);
            if id.seq <= *l {
                v.push(Violation::Fifo { node: log.node, id, expected_seq: *l + 1 });
            }
            *l = id.seq;
        }
    }
    // Pairwise order: the global order is (ring, ring_seq, then within a
    // packet); sort each log's deliveries by it and compare adjacent pairs
    // of each log against every other log's positions.
    for (a, log) in logs.iter().enumerate() {
        let seq: Vec<MsgId> = log.deliveries().collect();
        for (b, other) in positions.iter().enumerate() {
            if a == b {
                continue;
            }
            let mut prev: Option<(MsgId, usize)> = None;
            for id in &seq {
                let Some(&p) = other.get(id) else { continue };
                if let Some((pid, pp)) = prev {
                    if p < pp {
                        v.push(Violation::Reordered {
                            a: log.node,
                            b: logs[b].node,
                            first: pid,
                            second: *id,
                        });
                        break;
                    }
                }
                prev = Some((*id, p));
            }
        }
    }
    structure(logs, v);
    // 4. A daemon delivers its own messages unless it crashes.
    for log in logs.iter().filter(|l| !l.crashed) {
        for id in &log.submitted {
            if !log.delivered(*id) {
                v.push(Violation::SelfDelivery { node: log.node, id: *id });
                break;
            }
        }
    }
}

/// EVS structure of the configurations each daemon shows, whatever keys
/// were or were not agreed: an incarnation starts with a regular
/// configuration; every configuration holds the daemon showing it; a
/// transitional configuration follows a regular one (never another
/// transitional one), holds only members of it, and is followed by the
/// regular configuration it names, which contains it; two regular
/// configurations are never adjacent. And a transitional configuration is
/// the same set at every daemon moving together: every member of it that
/// shows the same regular configurations before and after shows the same
/// transitional one between them.
pub(crate) fn structure(logs: &[Log], v: &mut Vec<Violation>) {
    // (regular before, ring after, daemon) -> the transitional set between.
    let mut moves: BTreeMap<(RingId, RingId, NodeId), Vec<NodeId>> = BTreeMap::new();
    for log in logs {
        let node = log.node;
        let mut bad = |ring: RingId, what: &'static str| {
            let x = Violation::Structure { node, ring, what };
            if !v.contains(&x) {
                v.push(x);
            }
        };
        let configs: Vec<(ConfigKind, RingId, &Vec<NodeId>)> = log
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Config { kind, ring_id, members } => Some((*kind, *ring_id, members)),
                Entry::Deliver { .. } => None,
            })
            .collect();
        let mut regular: Option<(RingId, &Vec<NodeId>)> = None;
        for (i, &(kind, ring, members)) in configs.iter().enumerate() {
            if !members.contains(&node) {
                bad(ring, "the configuration does not hold the daemon showing it");
            }
            let prev = i.checked_sub(1).map(|p| configs[p].0);
            match kind {
                ConfigKind::Regular => {
                    if prev == Some(ConfigKind::Regular) {
                        bad(ring, "a regular configuration follows another without a transitional one");
                    }
                    regular = Some((ring, members));
                }
                ConfigKind::Transitional => {
                    let Some((from, from_members)) = regular.filter(|_| prev == Some(ConfigKind::Regular))
                    else {
                        bad(
                            ring,
                            if prev.is_none() {
                                "an incarnation starts with a transitional configuration"
                            } else {
                                "a transitional configuration does not follow a regular one"
                            },
                        );
                        continue;
                    };
                    if !members.iter().all(|m| from_members.contains(m)) {
                        bad(
                            ring,
                            "a transitional configuration holds daemons outside the regular one before it",
                        );
                    }
                    match configs.get(i + 1) {
                        Some(&(ConfigKind::Regular, next, next_members)) => {
                            if next != ring {
                                bad(
                                    ring,
                                    "a transitional configuration precedes a regular one of another ring",
                                );
                            }
                            if !members.iter().all(|m| next_members.contains(m)) {
                                bad(
                                    ring,
                                    "a transitional configuration is not within the regular one after it",
                                );
                            }
                            moves.insert((from, next, node), members.clone());
                        }
                        Some(&(ConfigKind::Transitional, ..)) => {
                            bad(ring, "a transitional configuration follows a transitional one");
                        }
                        // The daemon crashed, or the run ended, before the
                        // next regular configuration.
                        None => {}
                    }
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (&(from, to, node), members) in &moves {
        for &m in members {
            if moves.get(&(from, to, m)).is_some_and(|theirs| theirs != members)
                && seen.insert((to, node.min(m)))
            {
                v.push(Violation::Structure {
                    node,
                    ring: to,
                    what: "daemons moving together show different transitional configurations",
                });
            }
        }
    }
}
