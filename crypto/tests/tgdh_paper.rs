//! TGDH through its public API, one scenario per test, each labelled with the
//! section of Kim, Perrig, Tsudik, "Tree-based Group Key Agreement" (ACM
//! TISSEC 7(1), 2004) it checks, run on a simulated totally ordered
//! broadcast. The paper is not in the project's reference folder: the rules
//! above each test are paraphrased, not quoted. The trees in the comments are
//! the ones the merge rule builds from fresh members, which join in id order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use ringfence_crypto::tgdh::{Message, PeerFault, Tgdh, TgdhError};

/// Daemons on a simulated totally ordered broadcast: one message at a time,
/// delivered to every member of the configuration, the sender included;
/// messages sent in answer go to the back of the queue in random order.
struct Ring {
    rng: ChaCha8Rng,
    daemons: BTreeMap<u32, Tgdh>,
    round: u64,
}

/// What one run put on the wire.
#[derive(Debug, Default)]
struct Run {
    round: u64,
    /// `(sender, message)` in delivery order.
    wire: Vec<(u32, Message)>,
    /// Causal depth of the last message; announcements are 1.
    depth: usize,
    /// X25519 operations of each member during the run.
    ops: BTreeMap<u32, u64>,
    /// Messages sent but not delivered when the run was cut.
    pending: Vec<(u32, Message)>,
}

impl Run {
    fn keys_senders(&self) -> Vec<u32> {
        self.wire.iter().filter(|(_, m)| matches!(m, Message::Keys(_))).map(|(f, _)| *f).collect()
    }

    fn announcements(&self) -> usize {
        self.wire.iter().filter(|(_, m)| matches!(m, Message::Announce(_))).count()
    }

    /// Announcements that carry a tree.
    fn trees(&self) -> usize {
        self.wire.iter().filter(|(_, m)| matches!(m, Message::Announce(a) if a.has_tree())).count()
    }

    fn max_ops(&self) -> u64 {
        self.ops.values().copied().max().unwrap_or(0)
    }
}

impl Ring {
    fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), daemons: BTreeMap::new(), round: 0 }
    }

    fn add(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            let t = Tgdh::new(id, &mut self.rng);
            assert_eq!(t.key().map(|(e, _)| e), Some(0), "alone, a member has a key at epoch 0");
            self.daemons.insert(id, t);
        }
    }

    fn key(&self, id: u32) -> (u64, [u8; 32]) {
        let (epoch, key) = self.daemons[&id].key().expect("a completed run");
        (epoch, *key.as_bytes())
    }

    /// A new configuration of `members`, run to completion.
    fn start(&mut self, members: &[u32]) -> Run {
        let (round, first) = self.begin(members);
        self.deliver(members, round, first, usize::MAX)
    }

    /// Starts a run at `members`: its round and their announcements, not yet delivered.
    fn begin(&mut self, members: &[u32]) -> (u64, Vec<(u32, Message)>) {
        self.round += 1;
        let mut first = Vec::new();
        for &m in members {
            let out = self.daemons.get_mut(&m).unwrap().start(self.round, members, &mut self.rng).unwrap();
            first.extend(out.into_iter().map(|msg| (m, msg)));
        }
        (self.round, first)
    }

    /// A policy refresh among `members`, run to completion.
    fn refresh(&mut self, members: &[u32]) -> Run {
        self.round += 1;
        let round = self.round;
        let mut first = Vec::new();
        for &m in members {
            let out = self.daemons.get_mut(&m).unwrap().refresh(round, &mut self.rng).unwrap();
            first.extend(out.into_iter().map(|msg| (m, msg)));
        }
        self.deliver(members, round, first, usize::MAX)
    }

    /// Delivers up to `limit` messages in total order, starting with `first`;
    /// with no limit, checks that the run completes in agreement. Messages
    /// not delivered are left in `Run::pending`.
    fn deliver(&mut self, members: &[u32], round: u64, mut first: Vec<(u32, Message)>, limit: usize) -> Run {
        let before: BTreeMap<u32, u64> =
            members.iter().map(|&m| (m, self.daemons[&m].x25519_ops())).collect();
        first.shuffle(&mut self.rng);
        let mut queue: VecDeque<(u32, Message, usize)> = first.into_iter().map(|(f, m)| (f, m, 1)).collect();
        let mut run = Run { round, ..Run::default() };
        while let Some((from, msg, depth)) = queue.pop_front() {
            if run.wire.len() == limit {
                run.pending =
                    std::iter::once((from, msg)).chain(queue.drain(..).map(|(f, m, _)| (f, m))).collect();
                break;
            }
            let bytes = msg.to_bytes();
            let msg = Message::decode(&bytes).expect("a message decodes");
            assert_eq!(msg.to_bytes(), bytes);
            let mut out = Vec::new();
            for &m in members {
                let sent = self.daemons.get_mut(&m).unwrap().handle(from, &msg, &mut self.rng).unwrap();
                out.extend(sent.into_iter().map(|s| (m, s, depth + 1)));
            }
            out.shuffle(&mut self.rng);
            queue.extend(out);
            run.depth = run.depth.max(depth);
            run.wire.push((from, msg));
        }
        run.ops = members.iter().map(|&m| (m, self.daemons[&m].x25519_ops() - before[&m])).collect();
        if limit == usize::MAX {
            let expected = self.key(members[0]);
            for &m in members {
                assert_eq!(self.key(m), expected, "member {m} disagrees");
                let mut sorted = members.to_vec();
                sorted.sort_unstable();
                assert_eq!(self.daemons[&m].members(), sorted);
            }
        }
        run
    }

    /// A state that is not in the run (a departed member's, or anyone's) sees
    /// every message of it, as broadcasts are public, runs the protocol as if
    /// it belonged, and still does not get the key.
    fn eavesdrop(&mut self, mut eve: Tgdh, members: &[u32], run: &Run) {
        let me = eve.me();
        let mut all = members.to_vec();
        all.push(me);
        let mut own: VecDeque<(u32, Message)> =
            eve.start(run.round, &all, &mut self.rng).unwrap().into_iter().map(|m| (me, m)).collect();
        let mut wire = run.wire.iter().cloned();
        while let Some((from, msg)) = own.pop_front().or_else(|| wire.next()) {
            let sent = eve.handle(from, &msg, &mut self.rng).unwrap_or_default();
            own.extend(sent.into_iter().map(|m| (me, m)));
        }
        let key = self.key(members[0]).1;
        assert!(eve.key().is_none_or(|(_, k)| k.as_bytes() != &key), "an outsider got the key");
    }
}

fn range(ids: std::ops::RangeInclusive<u32>) -> Vec<u32> {
    ids.collect()
}

// Section 4.1 (join): the newcomer sends a fresh blinded key; the sponsor,
// the rightmost leaf of the insertion node's subtree, refreshes its key share,
// computes the keys and blinded keys of its path and broadcasts the blinded
// keys. ((1 2) (3 4)) is full, so 5 joins at the root and 4 is the sponsor.
#[test]
fn tgdh_join_takes_one_message_from_the_insertion_sponsor() {
    let mut ring = Ring::new(1);
    ring.add(1..=5);
    ring.start(&range(1..=4));
    let old = ring.key(1);
    let run = ring.start(&range(1..=5));
    assert_eq!(run.announcements(), 5);
    assert_eq!(run.keys_senders(), [4]);
    assert_eq!(run.depth, 2, "announce, then the sponsor's path");
    let new = ring.key(5);
    assert_eq!(new.0, old.0 + 1);
    assert_ne!(new.1, old.1);
}

// Section 4.2 (leave): the sibling of the leaving member's node replaces its
// parent; the sponsor, the rightmost leaf of the sibling's subtree, refreshes
// and broadcasts its path. In (((1 2) (3 4)) 5), 3 leaves; 4 moves up and
// sponsors. The departed member, fed every message, gets nothing.
#[test]
fn tgdh_leave_takes_one_message_from_the_sibling_sponsor() {
    let mut ring = Ring::new(2);
    ring.add(1..=5);
    ring.start(&range(1..=5));
    let departed = ring.daemons.remove(&3).unwrap();
    let members = [1, 2, 4, 5];
    let run = ring.start(&members);
    assert_eq!(run.keys_senders(), [4]);
    ring.eavesdrop(departed, &members, &run);
}

// Section 4.3 (merge): the sponsor of each tree refreshes and broadcasts its
// tree; every member merges the trees, each smaller one into the larger at
// the shallowest rightmost node; sponsors then compute the new nodes. Three
// trees formed apart merge in one run.
#[test]
fn tgdh_merge_of_three_trees() {
    let mut ring = Ring::new(3);
    ring.add(1..=9);
    for part in [range(1..=3), range(4..=5), range(6..=9)] {
        ring.start(&part);
    }
    let before: BTreeSet<[u8; 32]> = [1, 4, 6].iter().map(|&m| ring.key(m).1).collect();
    let all = range(1..=9);
    let run = ring.start(&all);
    assert!(!before.contains(&ring.key(1).1));
    let height = ring.daemons[&1].height() as usize;
    assert!(run.depth <= height + 1, "depth {} for height {height}", run.depth);
    // One member per tree sends it: the lowest one.
    assert_eq!(run.trees(), 3);
}

// Section 4.4 (partition): every leaving member's sibling subtree is
// promoted; the sponsors compute as far up the tree as they can and
// broadcast, round after round, until every member computes the key. Three
// of eight members go at once.
#[test]
fn tgdh_partition_of_several_leaves() {
    let mut ring = Ring::new(4);
    ring.add(1..=8);
    ring.start(&range(1..=8));
    let gone: Vec<Tgdh> = [2, 5, 7].iter().map(|m| ring.daemons.remove(m).unwrap()).collect();
    let members = [1, 3, 4, 6, 8];
    let run = ring.start(&members);
    assert!(run.depth <= ring.daemons[&1].height() as usize + 1);
    for eve in gone {
        ring.eavesdrop(eve, &members, &run);
    }
}

// Sections 4.3 and 4.4 together: in a group communication system one
// configuration change may remove members and add others.
#[test]
fn tgdh_partition_and_merge_in_one_change() {
    let mut ring = Ring::new(5);
    ring.add(1..=8);
    ring.start(&range(1..=6));
    ring.start(&range(7..=8));
    let members = [1, 2, 4, 7, 8];
    let gone: Vec<Tgdh> = [3, 5, 6].iter().map(|m| ring.daemons[m].clone()).collect();
    let run = ring.start(&members);
    for eve in gone {
        ring.eavesdrop(eve, &members, &run);
    }
}

// Section 4.5 (key refresh): a sponsor refreshes its key share and broadcasts
// the blinded keys of its path; one message, no announcements, and here the
// sponsor rotates with the epoch.
#[test]
fn tgdh_refresh_is_one_message_from_a_rotating_sponsor() {
    let mut ring = Ring::new(6);
    ring.add(1..=4);
    ring.start(&range(1..=4));
    let mut sponsors = BTreeSet::new();
    let mut keys = BTreeSet::from([ring.key(1).1]);
    for _ in 0..4 {
        let run = ring.refresh(&range(1..=4));
        assert_eq!(run.wire.len(), 1);
        sponsors.extend(run.keys_senders());
        assert!(keys.insert(ring.key(1).1), "a refresh gives a new key");
    }
    assert_eq!(sponsors.len(), 4);
    // Refresh is refused while a run is in progress.
    let t = ring.daemons.get_mut(&1).unwrap();
    t.start(99, &[1, 2], &mut ring.rng).unwrap();
    assert!(matches!(t.refresh(100, &mut ring.rng), Err(TgdhError::ApiMisuse(_))));
}

// Cascaded membership change (Amir et al., section 4.3.1: the set of servers
// may change again while the key agreement runs): a new start aborts the run
// in progress, whatever each member had got; the aborted run's late messages
// are ignored.
#[test]
fn tgdh_cascaded_start_aborts_a_run() {
    for cut in 0..8 {
        let mut ring = Ring::new(7 + cut as u64);
        ring.add(1..=6);
        ring.start(&range(1..=6));
        let members = range(1..=4);
        let (round, first) = ring.begin(&members);
        let aborted = ring.deliver(&members, round, first, cut);
        let run = ring.start(&[1, 2, 3]);
        assert!(run.round > aborted.round);
        for (from, msg) in aborted.wire.iter().filter(|(f, _)| *f <= 3) {
            let t = ring.daemons.get_mut(&1).unwrap();
            assert_eq!(t.handle(*from, msg, &mut ring.rng), Ok(vec![]));
        }
        assert!(ring.daemons[&1].key().is_some());
    }
}

// Robustness: members that meet may hold different trees. {1, 2, 3} agree;
// a partition leaves {1} alone and {2, 3} rekey; then they merge. Member 1
// still holds the old three-member tree, which no one else announces.
#[test]
fn tgdh_members_with_different_trees_merge() {
    let mut ring = Ring::new(8);
    ring.add(1..=3);
    ring.start(&[1, 2, 3]);
    ring.start(&[2, 3]);
    let run = ring.start(&[1, 2, 3]);
    // 1 sends the old tree of three and 2 the tree of two; 1 is pruned out of
    // the latter, and 2 and 3 out of the former.
    assert_eq!(run.trees(), 2);
    // A run cut short: everyone has the announcements, and member 2 alone
    // also the sponsor's keys, so 2 completes and 1 and 3 do not. Then a
    // newcomer joins all three.
    let (round, first) = ring.begin(&[1, 2, 3]);
    let cut = ring.deliver(&[1, 2, 3], round, first, 3);
    assert!(!cut.pending.is_empty());
    ring.deliver(&[2], round, cut.pending, 1);
    assert!(ring.daemons[&2].key().is_some() && ring.daemons[&1].key().is_none());
    ring.add([4]);
    let run = ring.start(&[1, 2, 3, 4]);
    // 1 sends the tree it shares with 3. 2 alone completed the cut run, but
    // the lowest member of its tree is 1, so no one sends it: 2 enters alone,
    // with its leaf key from that tree. 4 is new.
    assert_eq!(run.trees(), 1);
}

// Messages tagged with another round are ignored, as are all messages when no
// run is in progress.
#[test]
fn tgdh_stale_round_messages_are_ignored() {
    let mut ring = Ring::new(9);
    ring.add(1..=3);
    let old = ring.start(&[1, 2, 3]);
    let key = ring.key(2);
    for (from, msg) in &old.wire {
        assert_eq!(ring.daemons.get_mut(&2).unwrap().handle(*from, msg, &mut ring.rng), Ok(vec![]));
    }
    let (round, _announcements) = ring.begin(&[1, 2, 3]);
    assert_eq!(ring.daemons[&2].round(), Some(round));
    for (from, msg) in &old.wire {
        assert_eq!(ring.daemons.get_mut(&2).unwrap().handle(*from, msg, &mut ring.rng), Ok(vec![]));
    }
    assert!(ring.daemons[&2].key().is_none());
    assert_eq!(ring.daemons[&2].epoch(), key.0);
}

// Errors say whose fault they are: the caller's misuse, a peer's message, or
// a run whose keys do not fit together. Three fresh members build ((1 2) 3);
// 2 sponsors (1 2) and, as 3's fresh leaf key is known, the root too.
#[test]
fn tgdh_errors_name_the_culprit() {
    let mut ring = Ring::new(10);
    ring.add(1..=3);
    let rng = &mut ring.rng;
    let mut ds: Vec<Tgdh> = (1..=3).map(|m| ring.daemons[&m].clone()).collect();
    assert!(matches!(ds[0].start(1, &[2, 3], rng), Err(TgdhError::ApiMisuse(_))));
    let ann: Vec<Message> = ds.iter_mut().map(|t| t.start(1, &[1, 2, 3], rng).unwrap().remove(0)).collect();
    let announced = ds.clone();
    assert_eq!(ds[0].handle(4, &ann[0], rng), Err(TgdhError::Peer { from: 4, fault: PeerFault::NotAMember }));
    let mut keys = Vec::new();
    for t in &mut ds {
        for (from, a) in (1..).zip(&ann) {
            keys.extend(t.handle(from, a, rng).unwrap().into_iter().map(|k| (t.me(), k)));
        }
    }
    let dup = ds[0].handle(1, &ann[0], rng);
    assert_eq!(dup, Err(TgdhError::Peer { from: 1, fault: PeerFault::DuplicateAnnounce }));
    let [(2, k)] = &keys[..] else { panic!("one message, from 2: {keys:?}") };
    // Keys before the announcements are in.
    let early = announced[2].clone().handle(2, k, rng);
    assert_eq!(early, Err(TgdhError::Peer { from: 2, fault: PeerFault::EarlyKeys }));
    let mut ready = announced[2].clone();
    for (from, a) in (1..).zip(&ann) {
        ready.handle(from, a, rng).unwrap();
    }
    // Keys computed on another starting tree (byte 9 starts the base digest).
    let mut bytes = k.to_bytes();
    bytes[9] ^= 1;
    let wrong_base = Message::decode(&bytes).unwrap();
    let err = ready.clone().handle(2, &wrong_base, rng);
    assert_eq!(err, Err(TgdhError::Peer { from: 2, fault: PeerFault::BaseMismatch }));
    // Keys for a node above someone else's leaf.
    let err = ready.clone().handle(3, k, rng);
    assert_eq!(err, Err(TgdhError::Peer { from: 3, fault: PeerFault::NotOnPath }));
    // A wrong root blinded key (the last 32 bytes) fails the run.
    let mut bytes = k.to_bytes();
    *bytes.last_mut().unwrap() ^= 1;
    let wrong_root = Message::decode(&bytes).unwrap();
    let mut failed = ready.clone();
    assert!(matches!(failed.handle(2, &wrong_root, rng), Err(TgdhError::RunFailed(_))));
    assert!(failed.key().is_none());
    assert_eq!(failed.handle(2, k, rng), Ok(vec![]), "a failed run ignores messages");
    // The right keys complete the run.
    assert_eq!(ready.handle(2, k, rng), Ok(vec![]));
    ds[0].handle(2, k, rng).unwrap();
    assert_eq!(ready.key().unwrap().1.as_bytes(), ds[0].key().unwrap().1.as_bytes());
}

/// A balanced tree of 64 (the merge rule builds it from 64 fresh members).
fn sixty_four(seed: u64) -> Ring {
    let mut ring = Ring::new(seed);
    ring.add(1..=64);
    ring.start(&range(1..=64));
    assert_eq!(ring.daemons[&1].height(), 6);
    ring
}

// Section 5 (cost): a join or a leave costs the sponsor about 2h X25519
// operations (new key share, then a secret and a blinded key per level) and
// every other member at most one per changed node of its path plus one to
// check the root; with h = log2(64) = 6 before the join, 7 after.
#[test]
fn tgdh_join_and_leave_cost_log_n_x25519_ops_in_a_balanced_tree_of_64() {
    let mut ring = sixty_four(11);
    ring.add([65]);
    let join = ring.start(&range(1..=65));
    let join_sponsor = join.keys_senders()[0];
    let departed = ring.daemons.remove(&30).unwrap();
    let members: Vec<u32> = (1..=65).filter(|&m| m != 30).collect();
    let leave = ring.start(&members);
    let leave_sponsor = leave.keys_senders()[0];
    for (name, run, sponsor) in [("join", &join, join_sponsor), ("leave", &leave, leave_sponsor)] {
        let others: Vec<u64> = run.ops.iter().filter(|(m, _)| **m != sponsor).map(|(_, o)| *o).collect();
        let mean = others.iter().sum::<u64>() as f64 / others.len() as f64;
        eprintln!(
            "{name} in a tree of 64: sponsor {} X25519 ops, others max {} mean {mean:.2}; {} keys message(s)",
            run.ops[&sponsor],
            others.iter().max().unwrap(),
            run.keys_senders().len()
        );
        assert_eq!(run.keys_senders().len(), 1);
        assert!(run.ops[&sponsor] <= 2 * 7 + 1, "{name}: sponsor {}", run.ops[&sponsor]);
        assert!(*others.iter().max().unwrap() <= 7 + 1, "{name}: {others:?}");
        // The sponsor's path changes; a member shares the top k levels of it
        // with probability 2^-k, so the mean stays near 4 whatever n is.
        assert!(mean <= 5.0, "{name}: mean {mean}");
    }
    ring.eavesdrop(departed, &members, &leave);
    let refresh = ring.refresh(&members);
    eprintln!("refresh in a tree of 65: max {} X25519 ops", refresh.max_ops());
    assert!(refresh.max_ops() <= 2 * 8 + 1);
}

// Sections 4.3 and 4.4 at scale: 64 members split into four, rekey apart,
// merge back in one run, then lose eight and gain three in one change; each
// run completes within height + 1 message rounds.
#[test]
fn tgdh_sixty_four_members_partition_and_merge_in_bounded_rounds() {
    let mut ring = sixty_four(12);
    let mut all = range(1..=64);
    all.shuffle(&mut ring.rng);
    let quarters: Vec<Vec<u32>> = all.chunks(16).map(<[u32]>::to_vec).collect();
    for q in &quarters {
        let run = ring.start(q);
        let height = ring.daemons[&q[0]].height() as usize;
        assert!(run.depth <= height + 1, "partition: depth {} height {height}", run.depth);
    }
    let run = ring.start(&range(1..=64));
    let height = ring.daemons[&1].height() as usize;
    eprintln!(
        "merge of 4 trees of 16: {} messages, depth {}, height {height}, max {} X25519 ops",
        run.wire.len(),
        run.depth,
        run.max_ops()
    );
    assert!(run.depth <= height + 1);
    ring.add(65..=67);
    let gone: BTreeSet<u32> = all[..8].iter().copied().collect();
    let members: Vec<u32> = (1..=67).filter(|m| !gone.contains(m)).collect();
    let run = ring.start(&members);
    let height = ring.daemons[&1].height() as usize;
    eprintln!(
        "8 leave and 3 join among 64: {} messages, depth {}, height {height}, max {} X25519 ops",
        run.wire.len(),
        run.depth,
        run.max_ops()
    );
    assert!(run.depth <= height + 1);
    assert!(run.max_ops() <= 4 * (height as u64 + 1));
}
