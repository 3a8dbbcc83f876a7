//! Tests of the layered agreements: a deterministic in-memory VS driver,
//! random histories per protocol (property tests), every refusal by name,
//! decoders fed random bytes, and the operation counts of the docs.
//!
//! The driver is a virtual-synchrony group in one queue per component:
//! a broadcast is delivered to every member of the view at once, in queue
//! order, the sender included; a unicast only to its addressee; a new view
//! drops the undelivered messages of the old one for everyone (allowed by
//! VS: members that move together deliver the same set).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;

struct Group {
    members: Vec<u32>,
    epoch: u64,
    queue: VecDeque<(u32, Transmit)>,
    /// Members removed by the last view change: they must refuse the new run's messages.
    removed: Vec<u32>,
}

struct World {
    protocol: Protocol,
    rng: ChaCha20Rng,
    agreements: BTreeMap<u32, Agreement>,
    directory: BTreeMap<u32, PublicIdentity>,
    groups: Vec<Group>,
    next_id: u32,
    next_epoch: u64,
    /// Every agreed key: epoch, members, key.
    keys: Vec<(u64, Vec<u32>, [u8; 32])>,
    /// Re-deliver each message once and expect `Replay`.
    replay: bool,
    delivered: u64,
}

impl World {
    fn new(protocol: Protocol, seed: u64) -> Self {
        Self {
            protocol,
            rng: ChaCha20Rng::seed_from_u64(seed),
            agreements: BTreeMap::new(),
            directory: BTreeMap::new(),
            groups: Vec::new(),
            next_id: 1,
            next_epoch: 1,
            keys: Vec::new(),
            replay: false,
            delivered: 0,
        }
    }

    fn spawn(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut secret = [0; 32];
        self.rng.fill_bytes(&mut secret);
        let identity = SecretIdentity::from_bytes(&secret);
        self.directory.insert(id, identity.public());
        let rng = Box::new(ChaCha20Rng::seed_from_u64(self.rng.next_u64()));
        let agreement = Agreement::new(self.protocol, b"test group", id, identity, rng).unwrap();
        self.agreements.insert(id, agreement);
        id
    }

    /// Installs a view in component `g` (dropping its undelivered messages).
    fn install(&mut self, g: usize, members: Vec<u32>, change: Change) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let old: BTreeSet<u32> = self.groups[g].members.iter().copied().collect();
        let group = &mut self.groups[g];
        group.removed = old.iter().copied().filter(|m| !members.contains(m)).collect();
        group.members = members.clone();
        group.epoch = epoch;
        group.queue.clear();
        for &m in &members {
            let a = self.agreements.get_mut(&m).unwrap();
            a.handle_view(View { epoch, members: members.clone(), change: change.clone() }).unwrap();
            while let Some(t) = a.poll_transmit() {
                group.queue.push_back((m, t));
            }
        }
    }

    fn new_group(&mut self, members: Vec<u32>) -> usize {
        self.groups.push(Group {
            members: Vec::new(),
            epoch: 0,
            queue: VecDeque::new(),
            removed: Vec::new(),
        });
        let g = self.groups.len() - 1;
        self.install(g, members, Change::Merge);
        g
    }

    /// Delivers up to `limit` messages of component `g`; returns whether its queue is empty.
    fn deliver(&mut self, g: usize, limit: usize) -> bool {
        for _ in 0..limit {
            let Some((from, t)) = self.groups[g].queue.pop_front() else { return true };
            self.delivered += 1;
            let group = &self.groups[g];
            let to: Vec<u32> = match t.dest {
                Dest::All => group.members.clone(),
                Dest::Member(m) => {
                    assert!(group.members.contains(&m), "a unicast to a member of the view");
                    vec![m]
                }
            };
            for &m in &group.removed {
                // A removed member gets nothing more; fed the new run's messages anyway, it refuses them.
                let a = self.agreements.get_mut(&m).unwrap();
                let before = a.key().map(|(e, k)| (e, k.clone()));
                let err = a.handle_message(from, &t.bytes, &self.directory).unwrap_err();
                assert!(matches!(err, LayeredError::WrongEpoch { .. }), "removed member {m}: {err:?}");
                assert_eq!(a.key().map(|(e, k)| (e, k.clone())), before);
            }
            for m in to {
                let a = self.agreements.get_mut(&m).unwrap();
                a.handle_message(from, &t.bytes, &self.directory).unwrap_or_else(|e| {
                    panic!("{} member {m} refused a message from {from}: {e}", self.protocol)
                });
                if self.replay {
                    let err = a.handle_message(from, &t.bytes, &self.directory).unwrap_err();
                    assert!(matches!(err, LayeredError::Replay { from: f, .. } if f == from), "{err:?}");
                }
                while let Some(out) = a.poll_transmit() {
                    self.groups[g].queue.push_back((m, out));
                }
            }
        }
        self.groups[g].queue.is_empty()
    }

    /// Delivers everything of component `g` and checks the run's key.
    fn settle(&mut self, g: usize) {
        assert!(self.deliver(g, usize::MAX));
        self.check(g);
    }

    /// Every member of component `g` holds the same key for its epoch, and it
    /// differs from every key agreed before, which every member ever removed
    /// or not yet joined could hold.
    fn check(&mut self, g: usize) {
        let group = &self.groups[g];
        let first = self.agreements[&group.members[0]].key().map(|(e, k)| (e, *k.expose_secret()));
        let (epoch, key) =
            first.unwrap_or_else(|| panic!("{}: no key for epoch {}", self.protocol, group.epoch));
        assert_eq!(epoch, group.epoch);
        for m in &group.members {
            let a = &self.agreements[m];
            assert!(!a.is_agreeing());
            assert_eq!(a.key().map(|(e, k)| (e, *k.expose_secret())), Some((epoch, key)), "member {m}");
        }
        for (e, members, k) in &self.keys {
            assert_ne!(
                *k, key,
                "{}: epoch {epoch} repeats the key of epoch {e} ({members:?})",
                self.protocol
            );
        }
        for (m, a) in &self.agreements {
            if !group.members.contains(m) {
                assert_ne!(a.key().map(|(_, k)| *k.expose_secret()), Some(key), "outsider {m} holds the key");
            }
        }
        self.keys.push((epoch, group.members.clone(), key));
        self.groups[g].removed.clear();
    }

    fn is_keyed(&self, g: usize) -> bool {
        let group = &self.groups[g];
        group.members.iter().all(|m| self.agreements[m].key().is_some_and(|(e, _)| e == group.epoch))
    }
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    /// `n` new members join component 0.
    Join(usize),
    /// The members of component 0 picked by the mask leave (never all).
    Leave(u32),
    /// Component 0 splits: the members picked by the mask go to a new component.
    Partition(u32),
    /// Two components merge (a fresh one of `n` members is formed if there is only one).
    Merge(usize),
    /// Component 0 refreshes its key.
    Refresh,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..=3).prop_map(Op::Join),
        3 => any::<u32>().prop_map(Op::Leave),
        2 => any::<u32>().prop_map(Op::Partition),
        2 => (1usize..=3).prop_map(Op::Merge),
        1 => Just(Op::Refresh),
    ]
}

/// The members of `members` picked by `mask` (bit i for position i mod 32),
/// never all of them; `None` if that leaves nothing picked.
fn pick(members: &[u32], mask: u32) -> Option<Vec<u32>> {
    let picked: Vec<u32> =
        members.iter().enumerate().filter(|(i, _)| mask >> (i % 32) & 1 == 1).map(|(_, &m)| m).collect();
    (!picked.is_empty() && picked.len() < members.len()).then_some(picked)
}

const MAX_GROUP: usize = 12;

/// Runs one history: each step is an operation and, optionally, a cut after
/// that many deliveries, after which the next operation's view cascades on
/// the unfinished run.
fn history(protocol: Protocol, seed: u64, initial: usize, steps: &[(Op, Option<usize>)], replay: bool) {
    let mut w = World::new(protocol, seed);
    w.replay = replay;
    let members = (0..initial).map(|_| w.spawn()).collect();
    let g = w.new_group(members);
    w.settle(g);
    for (op, cut) in steps {
        let touched: Vec<usize> = match op {
            Op::Join(n) if w.groups[0].members.len() + n <= MAX_GROUP => {
                let joined: Vec<u32> = (0..*n).map(|_| w.spawn()).collect();
                let mut members = w.groups[0].members.clone();
                members.extend(&joined);
                w.install(0, members, Change::Join { joined });
                vec![0]
            }
            Op::Leave(mask) => {
                let members = w.groups[0].members.clone();
                let Some(left) = pick(&members, *mask) else { continue };
                let kept = members.iter().copied().filter(|m| !left.contains(m)).collect();
                w.install(0, kept, Change::Leave { left });
                vec![0]
            }
            Op::Partition(mask) if w.groups.len() == 1 => {
                let members = w.groups[0].members.clone();
                let Some(away) = pick(&members, *mask) else { continue };
                let kept: Vec<u32> = members.iter().copied().filter(|m| !away.contains(m)).collect();
                w.groups.push(Group {
                    members: away.clone(),
                    epoch: 0,
                    queue: VecDeque::new(),
                    removed: Vec::new(),
                });
                w.install(0, kept.clone(), Change::Partition { left: away.clone() });
                w.install(1, away, Change::Partition { left: kept });
                vec![0, 1]
            }
            Op::Merge(n) => {
                if w.groups.len() == 1 {
                    if w.groups[0].members.len() + n > MAX_GROUP {
                        continue;
                    }
                    let fresh = (0..*n).map(|_| w.spawn()).collect();
                    let g = w.new_group(fresh);
                    w.settle(g);
                }
                let other = w.groups.pop().expect("two components");
                let mut members = w.groups[0].members.clone();
                members.extend(&other.members);
                members.sort_unstable();
                w.install(0, members, Change::Merge);
                vec![0]
            }
            Op::Refresh => {
                let members = w.groups[0].members.clone();
                w.install(0, members, Change::Refresh);
                vec![0]
            }
            _ => continue,
        };
        for g in touched {
            match cut {
                Some(k) if !w.deliver(g, *k) => {}
                _ => {
                    assert!(w.deliver(g, usize::MAX));
                    assert!(w.is_keyed(g), "{protocol}: component {g} not keyed after its run");
                    w.check(g);
                }
            }
        }
    }
    // Whatever is still running completes.
    for g in 0..w.groups.len() {
        if !w.keys.iter().any(|(e, _, _)| *e == w.groups[g].epoch) {
            w.settle(g);
        }
    }
}

fn steps() -> impl Strategy<Value = Vec<(Op, Option<usize>)>> {
    proptest::collection::vec((op(), proptest::option::weighted(0.2, 0usize..6)), 1..7)
}

/// Cases per protocol: 64, or `RINGFENCE_LAYERED_CASES` for a long run by hand.
fn history_cases() -> u32 {
    std::env::var("RINGFENCE_LAYERED_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

macro_rules! histories {
    ($name:ident, $protocol:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: history_cases(), ..ProptestConfig::default() })]
            /// After any history of joins, leaves, merges, partitions,
            /// refreshes and cascades, delivered as VS allows, every member
            /// of a view holds the same key, no key repeats, removed members
            /// refuse the new run's messages and never hold a later key, and
            /// newcomers never hold an earlier one (paper section 4.1:
            /// backward and forward secrecy, key independence).
            #[test]
            fn $name(seed in any::<u64>(), initial in 1usize..5, steps in steps(), replay in any::<bool>()) {
                history($protocol, seed, initial, &steps, replay);
            }
        }
    };
}

histories!(tgdh_histories, Protocol::Tgdh);
histories!(gdh_histories, Protocol::Gdh);
histories!(bd_histories, Protocol::Bd);
histories!(str_histories, Protocol::Str);
histories!(ckd_histories, Protocol::Ckd);

/// A few fixed histories, one per protocol, that exercise every operation.
#[test]
fn every_operation_every_protocol() {
    let steps = [
        (Op::Join(1), None),
        (Op::Join(3), None),
        (Op::Leave(0b10), None),
        (Op::Leave(0b1), None),
        (Op::Refresh, None),
        (Op::Partition(0b101), None),
        (Op::Merge(1), None),
        (Op::Merge(2), None),
        (Op::Join(2), Some(1)),
        (Op::Leave(0b100), Some(0)),
        (Op::Refresh, None),
    ];
    for protocol in Protocol::ALL {
        history(protocol, 7, 3, &steps, true);
    }
}

/// Messages sent by every member so far.
fn messages_sent(w: &World) -> u64 {
    w.agreements.values().map(|a| a.costs().messages).sum()
}

/// TGDH's join and leave are sponsored (Kim, Perrig, Tsudik, sections 4.1,
/// 4.2, 4.4): on a leave only the sponsor sends (its refreshed path's
/// blinded keys), on a partition only the sponsors of the nodes that
/// changed; on a join the lowest old member sends
/// the tree, each newcomer announces, and the sponsor sends its path; no
/// other member says anything. A merge still runs in full (every member
/// announces).
#[test]
fn tgdh_join_and_leave_are_sponsored() {
    let mut w = World::new(Protocol::Tgdh, 11);
    let ids: Vec<u32> = (0..16).map(|_| w.spawn()).collect();
    let g = w.new_group(ids.clone());
    w.settle(g);
    // Leave: one message, the sponsor's.
    let kept: Vec<u32> = ids.iter().copied().filter(|&m| m != ids[5]).collect();
    let before = messages_sent(&w);
    w.install(g, kept.clone(), Change::Leave { left: vec![ids[5]] });
    w.settle(g);
    assert_eq!(messages_sent(&w) - before, 1, "a leave");
    // Partition of two members: the sponsors of the nodes that changed
    // (one per promoted subtree, at most one more up to the root).
    let side: Vec<u32> = kept.iter().copied().filter(|&m| m != ids[0] && m != ids[9]).collect();
    let before = messages_sent(&w);
    w.install(g, side.clone(), Change::Partition { left: vec![ids[0], ids[9]] });
    w.settle(g);
    let sent = messages_sent(&w) - before;
    assert!((1..=3).contains(&sent), "a partition sent {sent} messages");
    // Join of one: the speaker's tree, the newcomer's announcement, the
    // sponsor's keys.
    let joined = vec![w.spawn()];
    let members = [side.clone(), joined.clone()].concat();
    let before = messages_sent(&w);
    w.install(g, members.clone(), Change::Join { joined: joined.clone() });
    w.settle(g);
    assert_eq!(messages_sent(&w) - before, 3, "a join");
    // Join of two: each newcomer enters on its own, with its sponsors.
    let joined = vec![w.spawn(), w.spawn()];
    let members = [members, joined.clone()].concat();
    let before = messages_sent(&w);
    w.install(g, members.clone(), Change::Join { joined: joined.clone() });
    w.settle(g);
    let sent = messages_sent(&w) - before;
    assert!(sent <= 1 + 2 + 5, "a join of two sent {sent} messages");
    // A merge: every member announces.
    let before = messages_sent(&w);
    w.install(g, members.clone(), Change::Merge);
    w.settle(g);
    assert!(messages_sent(&w) - before > members.len() as u64, "a merge runs in full");
}

/// A sponsored join's shared-tree message (kind 1) is refused by name in
/// any other run, and nothing changes: the run still completes.
#[test]
fn tgdh_shared_tree_outside_a_join_is_refused() {
    let mut w = World::new(Protocol::Tgdh, 12);
    let ids: Vec<u32> = (0..4).map(|_| w.spawn()).collect();
    let g = w.new_group(ids.clone());
    w.settle(g);
    w.install(g, ids.clone(), Change::Merge);
    let epoch = w.groups[g].epoch;
    // A well-formed TGDH announcement of this run, sent as a shared tree.
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut t = crate::tgdh::Tgdh::new(ids[0], &mut rng);
    let body = t.start(epoch, &ids, &mut rng).unwrap().remove(0).to_bytes();
    let sender = SecretIdentity::from_bytes(w.agreements[&ids[0]].identity.expose_secret());
    let shared = forge(&w.agreements[&ids[0]], &sender, epoch, u32::MAX, 90, 1, &body);
    let dir = w.directory.clone();
    let a = w.agreements.get_mut(&ids[1]).unwrap();
    assert_eq!(
        a.handle_message(ids[0], &shared, &dir),
        Err(fault(ids[0], Fault::Tgdh(crate::tgdh::PeerFault::NotASharedTree)))
    );
    w.settle(g);
}

/// The views a member sees decide its start: the incremental operations
/// only when its last completed view fits, otherwise from scratch.
#[test]
fn start_kinds() {
    let mut w = World::new(Protocol::Gdh, 1);
    let ids: Vec<u32> = (0..3).map(|_| w.spawn()).collect();
    let g = w.new_group(ids.clone());
    let a = &w.agreements[&ids[0]];
    assert_eq!(a.start_kind(&View { epoch: 9, members: ids.clone(), change: Change::Refresh }), Start::Full);
    w.settle(g);
    let a = &w.agreements[&ids[0]];
    let view = |members: &[u32], change| View { epoch: 9, members: members.to_vec(), change };
    assert_eq!(a.start_kind(&view(&ids, Change::Refresh)), Start::Refresh);
    assert_eq!(a.start_kind(&view(&ids, Change::Merge)), Start::Full);
    assert_eq!(
        a.start_kind(&view(&[ids[0], ids[1], ids[2], 9], Change::Join { joined: vec![9] })),
        Start::Join { old: 3 }
    );
    assert_eq!(
        a.start_kind(&view(&[9, ids[0], ids[1], ids[2]], Change::Join { joined: vec![9] })),
        Start::Full
    );
    assert_eq!(
        a.start_kind(&view(&[ids[0], ids[2]], Change::Leave { left: vec![ids[1]] })),
        Start::Leave { old: ids.clone() }
    );
    assert_eq!(a.start_kind(&view(&[ids[0], ids[2]], Change::Leave { left: vec![7] })), Start::Full);
    assert_eq!(a.start_kind(&view(&[ids[2], ids[0]], Change::Partition { left: vec![ids[1]] })), Start::Full);
    let newcomer = &w.agreements[&ids[1]];
    assert_eq!(newcomer.start_kind(&view(&ids, Change::Join { joined: vec![ids[1]] })), Start::Newcomer);
}

/// A message built by hand: signed by `signer` with its agreement's context.
fn forge(
    a: &Agreement,
    identity: &SecretIdentity,
    epoch: u64,
    dest: u32,
    seq: u32,
    kind: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut ring = [0; 16];
    ring[..8].copy_from_slice(&a.context);
    ring[8..12].copy_from_slice(&dest.to_be_bytes());
    ring[12..].copy_from_slice(&seq.to_be_bytes());
    Envelope::seal(identity, a.me, ring, epoch, a.protocol.code() << 4 | kind, body)
}

/// Every refusal has its own variant, and a refused message changes nothing:
/// the run still completes afterwards (paper section 4.1: protocol messages
/// signed, tied to one protocol execution).
#[test]
fn bad_messages_are_refused_by_name() {
    for protocol in Protocol::ALL {
        let mut w = World::new(protocol, 3);
        let ids: Vec<u32> = (0..3).map(|_| w.spawn()).collect();
        let g = w.new_group(ids.clone());
        w.settle(g);
        // The next run: a refresh whose first message we take apart.
        w.install(g, ids.clone(), Change::Merge);
        let (from, first) = w.groups[g].queue.front().cloned().expect("a full run sends something");
        let to = match first.dest {
            Dest::All => *ids.iter().find(|&&m| m != from).unwrap(),
            Dest::Member(m) => m,
        };
        let other = *ids.iter().find(|&&m| m != from && m != to).unwrap();
        let dir = w.directory.clone();
        let epoch = w.groups[g].epoch;
        let bytes = first.bytes.clone();
        let a = w.agreements.get_mut(&to).unwrap();

        let mut flipped = bytes.clone();
        let at = flipped.len() - 70;
        flipped[at] ^= 1;
        assert_eq!(
            a.handle_message(from, &flipped, &dir),
            Err(LayeredError::BadSignature { from }),
            "{protocol}"
        );
        let mut bad_sig = bytes.clone();
        *bad_sig.last_mut().unwrap() ^= 0x80;
        assert_eq!(a.handle_message(from, &bad_sig, &dir), Err(LayeredError::BadSignature { from }));
        let err = a.handle_message(from, &bytes[..bytes.len() - 1], &dir).unwrap_err();
        assert!(matches!(err, LayeredError::Malformed(DecodeError::Envelope(_))), "{err:?}");
        assert_eq!(
            a.handle_message(other, &bytes, &dir),
            Err(LayeredError::SenderMismatch { from: other, signer: from })
        );
        let empty: BTreeMap<u32, PublicIdentity> = BTreeMap::new();
        assert_eq!(a.handle_message(from, &bytes, &empty), Err(LayeredError::UnknownSigner { from }));

        // An outsider with a key in the directory, signing correctly.
        let outsider = SecretIdentity::from_bytes(&[0x55; 32]);
        let mut dir2 = dir.clone();
        dir2.insert(99, outsider.public());
        let mut ring = [0; 16];
        ring[..8].copy_from_slice(&a.context);
        ring[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let forged = Envelope::seal(&outsider, 99, ring, epoch, protocol.code() << 4 | 1, &[0; 32]);
        assert_eq!(a.handle_message(99, &forged, &dir2), Err(LayeredError::NotAMember { from: 99 }));

        // Another epoch, another group, another protocol, another addressee, a bad body.
        let sender = w.agreements[&from].identity.expose_secret().to_owned();
        let sender = SecretIdentity::from_bytes(&sender);
        let a_from = &w.agreements[&from];
        let stale = forge(a_from, &sender, epoch - 1, u32::MAX, 0, 1, &[0; 32]);
        let future = forge(a_from, &sender, epoch + 1, u32::MAX, 0, 1, &[0; 32]);
        let unicast_other =
            forge(a_from, &sender, epoch, other, 77, first.bytes[1] & 0x0f, &bytes[34..bytes.len() - 64]);
        let garbage = forge(a_from, &sender, epoch, u32::MAX, 78, first.bytes[1] & 0x0f, &[1, 2, 3]);
        let unknown_kind = forge(a_from, &sender, epoch, u32::MAX, 79, 15, &[0; 32]);
        let mut wrong_protocol = forge(a_from, &sender, epoch, u32::MAX, 80, 1, &[0; 32]);
        wrong_protocol[1] = (protocol.code() % 5 + 1) << 4 | 1;
        let a = w.agreements.get_mut(&to).unwrap();
        assert_eq!(
            a.handle_message(from, &stale, &dir),
            Err(LayeredError::WrongEpoch { got: epoch - 1, current: Some(epoch) })
        );
        assert_eq!(
            a.handle_message(from, &future, &dir),
            Err(LayeredError::WrongEpoch { got: epoch + 1, current: Some(epoch) })
        );
        let mut other_group_now =
            forge(w.agreements.get(&from).unwrap(), &sender, epoch, u32::MAX, 81, 1, &[0; 32]);
        other_group_now[6] ^= 1;
        let a = w.agreements.get_mut(&to).unwrap();
        assert_eq!(a.handle_message(from, &other_group_now, &dir), Err(DecodeError::WrongGroup.into()));
        assert_eq!(
            a.handle_message(from, &wrong_protocol, &dir),
            Err(DecodeError::WrongProtocol(protocol.code() % 5 + 1).into())
        );
        assert_eq!(a.handle_message(from, &unicast_other, &dir), Err(LayeredError::NotForMe { to: other }));
        let err = a.handle_message(from, &garbage, &dir).unwrap_err();
        assert!(matches!(err, LayeredError::Malformed(_)), "{protocol}: {err:?}");
        let err = a.handle_message(from, &unknown_kind, &dir).unwrap_err();
        assert!(
            matches!(err, LayeredError::Malformed(DecodeError::UnknownKind(15) | DecodeError::Tgdh(_))),
            "{protocol}: {err:?}"
        );

        // Replay: the same message twice.
        w.replay = true;
        w.settle(g);
        let a = w.agreements.get_mut(&to).unwrap();
        let err = a.handle_message(from, &bytes, &dir).unwrap_err();
        assert!(matches!(err, LayeredError::Replay { from: f, seq: 0 } if f == from), "{protocol}: {err:?}");
    }
}

/// A valid message at the wrong moment is a protocol fault, and a refused
/// one can still be taken later: nothing changed.
#[test]
fn out_of_turn_messages_are_protocol_faults() {
    for protocol in [Protocol::Gdh, Protocol::Bd, Protocol::Str, Protocol::Ckd] {
        let mut w = World::new(protocol, 5);
        let ids: Vec<u32> = (0..3).map(|_| w.spawn()).collect();
        let g = w.new_group(ids.clone());
        w.settle(g);
        // After the run, a message of the run again (new sequence number) is out of turn.
        let last = *ids.last().unwrap();
        let sender = SecretIdentity::from_bytes(w.agreements[&last].identity.expose_secret());
        let epoch = w.groups[g].epoch;
        let msg = forge(&w.agreements[&last], &sender, epoch, u32::MAX, 500, 1, &[0; 32]);
        let dir = w.directory.clone();
        let a = w.agreements.get_mut(&ids[0]).unwrap();
        let err = a.handle_message(last, &msg, &dir).unwrap_err();
        assert!(matches!(err, LayeredError::Protocol { from, .. } if from == last), "{protocol}: {err:?}");
    }
}

/// BD: the identity as a contribution is refused, and a second Z from the
/// same member too; the first one then still counts.
#[test]
fn bd_weak_and_duplicate_contributions() {
    let mut w = World::new(Protocol::Bd, 9);
    let ids: Vec<u32> = (0..3).map(|_| w.spawn()).collect();
    let g = w.new_group(ids.clone());
    let (from, first) = w.groups[g].queue.pop_front().unwrap();
    let dir = w.directory.clone();
    let epoch = w.groups[g].epoch;
    let sender = SecretIdentity::from_bytes(w.agreements[&from].identity.expose_secret());
    let body = first.bytes[34..first.bytes.len() - 64].to_vec();
    let again = forge(&w.agreements[&from], &sender, epoch, u32::MAX, 9, 1, &body);
    let identity_point = forge(&w.agreements[&from], &sender, epoch, u32::MAX, 10, 1, &[0; 32]);
    for &m in &ids {
        let a = w.agreements.get_mut(&m).unwrap();
        assert_eq!(a.handle_message(from, &identity_point, &dir), Err(fault(from, Fault::WeakElement)));
        a.handle_message(from, &first.bytes, &dir).unwrap();
        assert_eq!(a.handle_message(from, &again, &dir), Err(fault(from, Fault::Unexpected)));
        while let Some(t) = a.poll_transmit() {
            w.groups[g].queue.push_back((m, t));
        }
    }
    w.settle(g);
}

/// The group keys are 32 bytes, `Debug` shows none of them, nor does the agreement's.
#[test]
fn debug_shows_no_key() {
    for protocol in Protocol::ALL {
        let mut w = World::new(protocol, 11);
        let ids: Vec<u32> = (0..2).map(|_| w.spawn()).collect();
        let g = w.new_group(ids.clone());
        w.settle(g);
        let a = &w.agreements[&ids[0]];
        let (_, key) = a.key().unwrap();
        let hex: String = key.expose_secret().iter().map(|b| format!("{b:02x}")).collect();
        let dec: String = format!("{:?}", key.expose_secret());
        for shown in [format!("{key:?}"), format!("{a:?}"), format!("{a:#?}")] {
            assert!(!shown.contains(&hex) && !shown.contains(&dec[1..20]), "{shown}");
        }
        assert_eq!(format!("{key:?}"), "LayeredKey(..)");
    }
}

/// The caller's mistakes are refused as API misuse.
#[test]
fn api_misuse() {
    let id = SecretIdentity::from_bytes(&[1; 32]);
    let rng = || Box::new(ChaCha20Rng::seed_from_u64(1));
    assert!(matches!(
        Agreement::new(Protocol::Bd, b"g", u32::MAX, id, rng()),
        Err(LayeredError::ApiMisuse(_))
    ));
    let mut a = Agreement::new(Protocol::Bd, b"g", 1, SecretIdentity::from_bytes(&[1; 32]), rng()).unwrap();
    let bad = [
        View { epoch: 1, members: vec![], change: Change::Merge },
        View { epoch: 1, members: vec![2, 3], change: Change::Merge },
        View { epoch: 1, members: vec![1, 2, 2], change: Change::Merge },
        View { epoch: 1, members: vec![1, u32::MAX], change: Change::Merge },
    ];
    for view in bad {
        assert!(matches!(a.handle_view(view), Err(LayeredError::ApiMisuse(_))));
    }
    a.handle_view(View { epoch: 5, members: vec![1], change: Change::Merge }).unwrap();
    assert_eq!(a.key().map(|(e, _)| e), Some(5));
    let again = View { epoch: 5, members: vec![1], change: Change::Refresh };
    assert!(matches!(a.handle_view(again), Err(LayeredError::ApiMisuse(_))));
    assert_eq!(
        a.handle_message(1, &[], &BTreeMap::new()),
        Err(DecodeError::Envelope(envelope::DecodeError::Truncated { len: 0, needed: envelope::OVERHEAD })
            .into())
    );
}

/// Each member's operations for one join or leave in a group of `n`.
fn run_costs(protocol: Protocol, n: usize, op: &str) -> Vec<Costs> {
    let mut w = World::new(protocol, 13);
    let ids: Vec<u32> = (0..n).map(|_| w.spawn()).collect();
    let g = w.new_group(ids.clone());
    w.settle(g);
    let (members, change) = if op == "join" {
        let j = w.spawn();
        ([ids.clone(), vec![j]].concat(), Change::Join { joined: vec![j] })
    } else {
        let left = ids[n / 2];
        (ids.iter().copied().filter(|&m| m != left).collect(), Change::Leave { left: vec![left] })
    };
    let before: Vec<Costs> = members.iter().map(|m| w.agreements[m].costs()).collect();
    w.install(g, members.clone(), change);
    w.settle(g);
    members.iter().zip(before).map(|(m, b)| w.agreements[m].costs() - b).collect()
}

#[test]
fn operation_counts() {
    let n = 8;
    // BD: three scalar multiplications per member, two broadcasts each, whatever the change.
    for c in run_costs(Protocol::Bd, n, "leave") {
        assert_eq!((c.exponentiations, c.messages, c.signatures), (3, 2, 2));
        assert_eq!(c.verifications, 2 * (n as u64 - 1));
    }
    // GDH leave: the controller raises n-2 partials and takes its key; the others one multiplication.
    let gdh = run_costs(Protocol::Gdh, n, "leave");
    assert_eq!(gdh.last().unwrap().exponentiations, n as u64 - 1);
    assert!(gdh[..n - 2].iter().all(|c| c.exponentiations == 1 && c.messages == 0));
    // CKD leave: one message, no Diffie-Hellman at all (pairwise keys are cached).
    let ckd = run_costs(Protocol::Ckd, n, "leave");
    assert_eq!(ckd.iter().map(|c| c.messages).sum::<u64>(), 1);
    assert!(ckd.iter().all(|c| c.exponentiations == 0));
    // STR leave: one message, from the sponsor.
    let str_leave = run_costs(Protocol::Str, n, "leave");
    assert_eq!(str_leave.iter().map(|c| c.messages).sum::<u64>(), 1);
    // GDH join: two messages (the upflow to the newcomer, its final broadcast).
    let gdh_join = run_costs(Protocol::Gdh, n, "join");
    assert_eq!(gdh_join.iter().map(|c| c.messages).sum::<u64>(), 2);
    // CKD join: the newcomer's share and the key distribution; one Diffie-Hellman on each side.
    let ckd_join = run_costs(Protocol::Ckd, n, "join");
    assert_eq!(ckd_join.iter().map(|c| c.messages).sum::<u64>(), 2);
    assert_eq!((ckd_join[0].exponentiations, ckd_join[n].exponentiations), (1, 1));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every body decoder is total: random bytes give a value or an error, never a panic.
    #[test]
    fn decoders_are_total(kind in 0u8..8, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = gdh::Msg::decode(kind, &bytes);
        let _ = bd::Msg::decode(kind, &bytes);
        let _ = str_chain::Msg::decode(kind, &bytes);
        let _ = ckd::Msg::decode(kind, &bytes);
        let _ = tgdh::decode(kind, &bytes);
    }

    /// Plausible lengths: a list header with a random count, then random points.
    #[test]
    fn decoders_are_total_near_valid(kind in 1u8..6, count in 0u16..8, tail in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = vec![0; 32];
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(&tail);
        let _ = gdh::Msg::decode(kind, &bytes);
        let _ = str_chain::Msg::decode(kind, &bytes);
        let _ = ckd::Msg::decode(kind, &bytes);
        let _ = ckd::Msg::decode(kind, &bytes[32..]);
    }

    /// The whole input path is total too: random bytes, or a real message with
    /// one byte changed, are refused with an error and change nothing.
    #[test]
    fn handle_message_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300), at in any::<usize>(), xor in 1u8..) {
        for protocol in Protocol::ALL {
            let mut w = World::new(protocol, 17);
            let ids: Vec<u32> = (0..2).map(|_| w.spawn()).collect();
            let g = w.new_group(ids.clone());
            let (from, first) = w.groups[g].queue.front().cloned().unwrap();
            let dir = w.directory.clone();
            let a = w.agreements.get_mut(&ids[1]).unwrap();
            prop_assert!(a.handle_message(from, &bytes, &dir).is_err());
            let mut changed = first.bytes.clone();
            let i = at % changed.len();
            changed[i] ^= xor;
            prop_assert!(a.handle_message(from, &changed, &dir).is_err());
            w.settle(g);
        }
    }

    /// Body round trips: what a member sends decodes to the same message.
    #[test]
    fn round_trips(points in proptest::collection::vec(any::<[u8; 32]>(), 1..6), ids in proptest::collection::vec(any::<u32>(), 1..6)) {
        let pts: Vec<curve25519_dalek::RistrettoPoint> = points.iter().map(|b| {
            curve25519_dalek::RistrettoPoint::from_uniform_bytes(&[*b, *b].concat().try_into().unwrap())
        }).collect();
        for msg in [
            gdh::Msg::Upflow(pts[0]),
            gdh::Msg::Final { base: points[0], partials: pts.clone() },
            gdh::Msg::JoinUpflow { base: points[0], partials: pts.clone(), cumulative: pts[0] },
        ] {
            let (kind, body) = msg.encode();
            prop_assert_eq!(gdh::Msg::decode(kind, &body).unwrap(), msg);
        }
        let tree = str_chain::Msg::Tree { base: points[0], brs: points.clone(), bks: points[1..].to_vec() };
        let (kind, body) = tree.encode();
        prop_assert_eq!(str_chain::Msg::decode(kind, &body).unwrap(), tree);
        let req = ckd::Msg::Request(ids.clone());
        let (kind, body) = req.encode();
        prop_assert_eq!(ckd::Msg::decode(kind, &body).unwrap(), req);
        let dist = ckd::Msg::KeyDist { controller: points[0], entries: ids.iter().map(|&m| (m, [m as u8; 48])).collect() };
        let (kind, body) = dist.encode();
        prop_assert_eq!(ckd::Msg::decode(kind, &body).unwrap(), dist);
    }
}
