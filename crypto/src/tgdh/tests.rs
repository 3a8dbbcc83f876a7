//! White-box tests: the tree operations against the paper's rules, and
//! property tests of agreement and secrecy over random membership histories
//! (joins, leaves, partitions, merges, refreshes, runs cut short), checked
//! against everything each process ever knew.
//!
//! Section numbers refer to Kim, Perrig, Tsudik, "Tree-based Group Key
//! Agreement", ACM TISSEC 7(1), 2004. The paper is not in the project's
//! reference folder: the rules above each test are paraphrased, not quoted.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::*;

fn keep(members: &[u32]) -> BTreeSet<u32> {
    members.iter().copied().collect()
}

// Section 4.1 (join): the insertion node is the shallowest rightmost node
// where the join does not increase the height; if there is none (the tree is
// full), the root. A new internal node takes the insertion node's place with
// the new member as its right child; it and its ancestors lose their keys.
#[test]
fn join_inserts_at_the_shallowest_rightmost_node() {
    let tree = Tree::from_spec("((1 2) 3)");
    assert_eq!(tree.merged(&Tree::from_spec("4")).0.spec(), "((1 2) (3 4)?)?");
    let full = Tree::from_spec("((1 2) (3 4))");
    assert_eq!(full.merged(&Tree::from_spec("5")).0.spec(), "(((1 2) (3 4)) 5)?");
    let deep = Tree::from_spec("(((1 2) (3 4)) ((5 6) 7))");
    assert_eq!(deep.merged(&Tree::from_spec("8")).0.spec(), "(((1 2) (3 4)) ((5 6) (7 8)?)?)?");
}

// Section 4.3 (merge): the smaller tree goes in at the shallowest rightmost
// node of the larger where it does not increase the height; trees of the same
// height meet at a new root.
#[test]
fn merge_inserts_a_subtree_without_growing_the_tree() {
    let big = Tree::from_spec("(((1 2) (3 4)) 5)");
    let (merged, joined) = big.merged(&Tree::from_spec("(6 7)"));
    assert_eq!(merged.spec(), "(((1 2) (3 4)) (5 (6 7))?)?");
    assert_eq!(merged.node(joined).id, NodeId { first: 5, last: 7 });
    let same = Tree::from_spec("((1 2) 3)");
    assert_eq!(same.merged(&Tree::from_spec("((4 5) 6)")).0.spec(), "(((1 2) 3) ((4 5) 6))?");
}

// Sections 4.2 (leave) and 4.4 (partition): the sibling of a leaving member's
// node is promoted to its parent's place; every node on a leaving member's
// path loses its key, the rest keep theirs.
#[test]
fn prune_promotes_siblings_and_clears_changed_paths() {
    let tree = Tree::from_spec("((1 2) (3 4))");
    assert_eq!(tree.pruned(&keep(&[1, 2, 4])).unwrap().0.spec(), "((1 2) 4)?");
    let tree = Tree::from_spec("(((1 2) (3 4)) ((5 6) 7))");
    let (pruned, promoted) = tree.pruned(&keep(&[1, 3, 5, 6, 7])).unwrap();
    assert_eq!(pruned.spec(), "((1 3)? ((5 6) 7))?");
    assert_eq!(promoted, [NodeId { first: 1, last: 1 }, NodeId { first: 3, last: 3 }]);
    assert_eq!(tree.pruned(&keep(&[5, 6, 7])).unwrap().0.spec(), "((5 6) 7)");
    assert_eq!(tree.pruned(&keep(&[7])).unwrap().0.spec(), "7");
    assert!(tree.pruned(&keep(&[9])).is_none());
}

#[test]
fn node_ids_name_nodes_uniquely() {
    let tree = Tree::from_spec("(((1 2) (3 4)) ((5 6) 7))");
    let ids: BTreeSet<NodeId> = (0..tree.len()).map(|i| tree.node(i).id).collect();
    assert_eq!(ids.len(), tree.len());
    for i in 0..tree.len() {
        assert_eq!(tree.find(tree.node(i).id), Some(i));
        assert!(tree.is_ancestor_or_self(tree.root(), i));
    }
    let five = tree.find_leaf(5).unwrap();
    assert_eq!(tree.path(five).len(), 4);
    assert_eq!(tree.rightmost_leaf(tree.root()), tree.find_leaf(7).unwrap());
}

#[test]
fn tree_wire_form_round_trips() {
    let tree = Tree::from_spec("(((1 2) (3 4)) ((5 6) 7))");
    let msg = Message::Announce(Announce {
        round: 7,
        epoch: 3,
        tree_id: [9; 32],
        leaf: [8; 32],
        held: Held::Tree(tree.clone()),
    });
    let bytes = msg.to_bytes();
    assert_eq!(Message::decode(&bytes), Ok(msg));
    assert_eq!(bytes.len(), 1 + 8 + 8 + 32 + 32 + 1 + 2 + 7 * 37 + 6 * 33);
}

/// A completed run's key, for the secrecy check.
struct KeyRecord {
    members: BTreeSet<u32>,
    epoch: u64,
    key: [u8; 32],
    tree: Tree,
}

/// A run cut short: everyone gets the first `after` messages, then only
/// `extra_to` gets the next `extra` (EVS: members leaving a configuration
/// together need not have delivered the same last messages).
struct Cut {
    after: usize,
    extra: usize,
    extra_to: BTreeSet<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Start,
    Refresh,
}

#[derive(Debug, Default)]
struct Stats {
    messages: usize,
    keys_messages: usize,
    depth: usize,
    completed: bool,
}

/// Processes on a simulated totally ordered broadcast, with a record of every
/// secret each ever held and every key agreed.
struct World {
    rng: ChaCha8Rng,
    live: BTreeMap<u32, Tgdh>,
    knows: BTreeMap<u32, HashSet<[u8; 32]>>,
    keys: Vec<KeyRecord>,
    round: u64,
    next_id: u32,
}

impl World {
    fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            live: BTreeMap::new(),
            knows: BTreeMap::new(),
            keys: Vec::new(),
            round: 0,
            next_id: 1,
        }
    }

    fn spawn(&mut self) -> u32 {
        let id = self.next_id * 10 + 3;
        self.next_id += 1;
        self.live.insert(id, Tgdh::new(id, &mut self.rng));
        self.learn(id);
        id
    }

    fn learn(&mut self, id: u32) {
        let secrets = self.live[&id].secrets();
        self.knows.entry(id).or_default().extend(secrets);
    }

    /// Runs one round among `members`; `eves` are states of processes outside
    /// it that see every message (broadcasts are public).
    fn run(&mut self, members: &[u32], kind: Kind, cut: Option<Cut>, eves: Vec<Tgdh>) -> Stats {
        self.round += 1;
        let round = self.round;
        let mut stats = Stats::default();
        let mut queue = Vec::new();
        for &m in members {
            let t = self.live.get_mut(&m).unwrap();
            let out = match kind {
                Kind::Start => t.start(round, members, &mut self.rng).unwrap(),
                Kind::Refresh => t.refresh(round, &mut self.rng).unwrap(),
            };
            self.learn(m);
            queue.extend(out.into_iter().map(|msg| (m, msg, 1)));
        }
        queue.shuffle(&mut self.rng);
        let mut queue = VecDeque::from(queue);
        let mut wire = Vec::new();
        while let Some((from, msg, depth)) = queue.pop_front() {
            let msg = Message::decode(&msg.to_bytes()).expect("own messages decode");
            if let Some(cut) = cut.as_ref().filter(|cut| wire.len() == cut.after) {
                // The configuration breaks: a few members deliver a few more.
                let rest = std::iter::once((from, msg)).chain(queue.drain(..).map(|(f, m, _)| (f, m)));
                for (from, msg) in rest.take(cut.extra) {
                    for &m in &cut.extra_to {
                        let _ = self.live.get_mut(&m).unwrap().handle(from, &msg, &mut self.rng).unwrap();
                        self.learn(m);
                    }
                }
                return stats;
            }
            stats.messages += 1;
            stats.depth = stats.depth.max(depth);
            if matches!(msg, Message::Keys(_)) {
                stats.keys_messages += 1;
            }
            let mut out = Vec::new();
            for &m in members {
                let sent = self.live.get_mut(&m).unwrap().handle(from, &msg, &mut self.rng).unwrap();
                self.learn(m);
                out.extend(sent.into_iter().map(|s| (m, s, depth + 1)));
            }
            out.shuffle(&mut self.rng);
            queue.extend(out);
            wire.push((from, msg));
        }
        // Agreement: every member has the same epoch and key, and the same tree.
        let first = &self.live[&members[0]];
        let (epoch, key) = first.key().expect("the run completed");
        let (key, tree) = (*key.as_bytes(), first.done.tree.clone());
        for m in members {
            let t = &self.live[m];
            let (e, k) = t.key().unwrap_or_else(|| panic!("member {m} did not complete: {t:?}"));
            assert_eq!((e, k.as_bytes()), (epoch, &key), "member {m} disagrees");
            assert_eq!(t.done.tree, tree);
            assert_eq!(t.members(), keep(members).into_iter().collect::<Vec<_>>());
        }
        assert!(self.keys.iter().all(|r| r.key != key), "a key repeats");
        self.keys.push(KeyRecord { members: keep(members), epoch, key, tree });
        // Whoever is outside saw everything and still has no key.
        for mut eve in eves {
            let me = eve.me();
            let mut all = members.to_vec();
            all.push(me);
            let mut own = VecDeque::from_iter(
                eve.start(round, &all, &mut self.rng).unwrap().into_iter().map(|m| (me, m)),
            );
            let mut feed = wire.clone().into_iter();
            while let Some((from, msg)) = own.pop_front().or_else(|| feed.next()) {
                let sent = eve.handle(from, &msg, &mut self.rng).unwrap_or_default();
                own.extend(sent.into_iter().map(|m| (me, m)));
            }
            assert!(eve.key().is_none_or(|(_, k)| k.as_bytes() != &key), "an outsider got the key");
            self.knows.entry(me).or_default().extend(eve.secrets());
        }
        stats.completed = true;
        stats
    }

    /// No process computes, from every secret it ever held and the blinded
    /// keys of the tree, the key of a configuration it was not in: a node is
    /// known if its blinded key is that of a known secret or a child is known.
    fn check_secrecy(&self) {
        for (x, secrets) in &self.knows {
            let bks: HashSet<[u8; 32]> =
                secrets.iter().map(|s| PublicKey::from(&StaticSecret::from(*s)).to_bytes()).collect();
            let keys: HashSet<[u8; 32]> = secrets
                .iter()
                .map(|s| Sha256::new().chain_update(GROUP_LABEL).chain_update(s).finalize().into())
                .collect();
            for r in self.keys.iter().filter(|r| !r.members.contains(x)) {
                assert!(!keys.contains(&r.key), "{x} knows the key of epoch {} of {:?}", r.epoch, r.members);
                let mut known = vec![false; r.tree.len()];
                for i in 0..r.tree.len() {
                    let node = r.tree.node(i);
                    known[i] = node.bk.is_some_and(|bk| bks.contains(&bk))
                        || matches!(node.shape, Shape::Inner { left, right } if known[left] || known[right]);
                }
                assert!(!known[r.tree.root()], "{x} can compute epoch {} of {:?}", r.epoch, r.members);
            }
        }
    }
}

#[test]
fn world_join_leave_refresh() {
    let mut w = World::new(1);
    let ids: Vec<u32> = (0..5).map(|_| w.spawn()).collect();
    let s = w.run(&ids, Kind::Start, None, vec![]);
    assert!(s.completed);
    let mut six = ids.clone();
    six.push(w.spawn());
    let s = w.run(&six, Kind::Start, None, vec![]);
    assert_eq!(s.keys_messages, 1, "a join takes one sponsor message");
    let gone = w.live.remove(&six[2]).unwrap();
    six.remove(2);
    let s = w.run(&six, Kind::Start, None, vec![gone]);
    assert_eq!(s.keys_messages, 1, "a leave takes one sponsor message");
    let s = w.run(&six, Kind::Refresh, None, vec![]);
    assert_eq!((s.messages, s.keys_messages), (1, 1), "a refresh is one message");
    w.check_secrecy();
}

/// The secrecy check itself: an outsider holding one member's leaf secret
/// can compute the key.
#[test]
#[should_panic(expected = "can compute")]
fn secrecy_check_catches_a_leaked_secret() {
    let mut w = World::new(9);
    let ids: Vec<u32> = (0..4).map(|_| w.spawn()).collect();
    w.run(&ids, Kind::Start, None, vec![]);
    let outsider = w.spawn();
    let leaked = w.live[&ids[2]].secrets()[0];
    w.knows.get_mut(&outsider).unwrap().insert(leaked);
    w.check_secrecy();
}

#[test]
fn cut_runs_then_clean_start() {
    for seed in 0..40 {
        let mut w = World::new(seed);
        let ids: Vec<u32> = (0..6).map(|_| w.spawn()).collect();
        w.run(&ids, Kind::Start, None, vec![]);
        let (a, b) = ids.split_at(2);
        let cut = Cut { after: seed as usize % 5, extra: 2, extra_to: keep(&b[..2]) };
        w.run(b, Kind::Start, Some(cut), vec![]);
        w.run(a, Kind::Start, None, vec![]);
        w.run(b, Kind::Start, None, vec![]);
        w.run(&ids, Kind::Start, None, vec![]);
        w.check_secrecy();
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A new process joins configuration `.0`.
    Join(usize),
    /// Member `.1` of configuration `.0` leaves for good.
    Leave(usize, usize),
    /// Configuration `.0` splits by the bits of `.1`.
    Split(usize, u32),
    /// Two configurations merge.
    Merge(usize, usize),
    /// Two configurations merge while member `.2` of the first leaves for good.
    MergeLeave(usize, usize, usize),
    /// A policy refresh in configuration `.0`.
    Refresh(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<usize>().prop_map(Op::Join),
        (any::<usize>(), any::<usize>()).prop_map(|(c, w)| Op::Leave(c, w)),
        (any::<usize>(), any::<u32>()).prop_map(|(c, m)| Op::Split(c, m)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Merge(a, b)),
        (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(a, b, w)| Op::MergeLeave(a, b, w)),
        any::<usize>().prop_map(Op::Refresh),
    ]
}

/// A configuration of the simulated ring; `dirty` if its last run was cut short.
struct Config {
    members: Vec<u32>,
    dirty: bool,
}

const MAX_PROCESSES: u32 = 14;

impl World {
    fn states(&self, ids: &[u32]) -> Vec<Tgdh> {
        ids.iter().map(|id| self.live[id].clone()).collect()
    }

    /// Runs a new configuration; the first run of an operation may be cut.
    fn configure(
        &mut self,
        configs: &mut Vec<Config>,
        members: Vec<u32>,
        cut: &mut Option<Cut>,
        eves: Vec<Tgdh>,
    ) {
        let cut = cut
            .take()
            .map(|c| Cut { extra_to: c.extra_to.intersection(&keep(&members)).copied().collect(), ..c });
        let stats = self.run(&members, Kind::Start, cut, eves);
        let height = self.live[&members[0]].height() as usize;
        if stats.completed {
            assert!(stats.depth <= height.max(1) + 1, "{stats:?} for height {height}");
        }
        configs.push(Config { members, dirty: !stats.completed });
    }

    fn apply(&mut self, configs: &mut Vec<Config>, op: Op, cut: Option<(usize, usize, u32)>) {
        let pick = |i: usize, n: usize| i % n;
        let mut cut = cut.map(|(after, extra, mask)| Cut {
            after: after % 12,
            extra,
            extra_to: self
                .live
                .keys()
                .enumerate()
                .filter(|(i, _)| mask >> (i % 32) & 1 == 1)
                .map(|(_, &m)| m)
                .collect(),
        });
        match op {
            Op::Join(c) if self.next_id <= MAX_PROCESSES => {
                let mut cfg = configs.remove(pick(c, configs.len()));
                cfg.members.push(self.spawn());
                self.configure(configs, cfg.members, &mut cut, vec![]);
            }
            Op::Leave(c, w) => {
                let c = pick(c, configs.len());
                if configs[c].members.len() < 2 {
                    return;
                }
                let mut cfg = configs.remove(c);
                let gone = cfg.members.remove(pick(w, cfg.members.len()));
                let eve = self.live.remove(&gone).unwrap();
                self.configure(configs, cfg.members, &mut cut, vec![eve]);
            }
            Op::Split(c, mask) => {
                let c = pick(c, configs.len());
                if configs[c].members.len() < 2 {
                    return;
                }
                let cfg = configs.remove(c);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for (i, &m) in cfg.members.iter().enumerate() {
                    if mask >> (i % 32) & 1 == 1 { a.push(m) } else { b.push(m) }
                }
                if a.is_empty() || b.is_empty() {
                    (a, b) = (cfg.members[..1].to_vec(), cfg.members[1..].to_vec());
                }
                let (eves_a, eves_b) = (self.states(&b), self.states(&a));
                self.configure(configs, a, &mut cut, eves_a);
                self.configure(configs, b, &mut cut, eves_b);
            }
            Op::Merge(a, b) | Op::MergeLeave(a, b, _) if configs.len() >= 2 => {
                let a = pick(a, configs.len());
                let b = pick(b, configs.len() - 1);
                let first = configs.remove(a);
                let second = configs.remove(b);
                let mut members = first.members.clone();
                let mut eves = vec![];
                if let Op::MergeLeave(_, _, w) = op {
                    if members.len() >= 2 {
                        let gone = members.remove(pick(w, members.len()));
                        eves.push(self.live.remove(&gone).unwrap());
                    }
                }
                members.extend(&second.members);
                self.configure(configs, members, &mut cut, eves);
            }
            Op::Refresh(c) => {
                let c = pick(c, configs.len());
                if configs[c].dirty {
                    let cfg = configs.remove(c);
                    self.configure(configs, cfg.members, &mut cut, vec![]);
                } else {
                    let stats = self.run(&configs[c].members.clone(), Kind::Refresh, cut, vec![]);
                    configs[c].dirty = !stats.completed;
                }
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Architecture section 8: every member derives the same key after any
    /// sequence of operations; removed members and newcomers cannot.
    #[test]
    fn random_histories_agree_and_keep_secrets(
        seed in any::<u64>(),
        size in 1..9usize,
        steps in prop::collection::vec((op(), prop::option::weighted(0.3, (any::<usize>(), 0..4usize, any::<u32>()))), 1..14),
    ) {
        let mut world = World::new(seed);
        let first: Vec<u32> = (0..size).map(|_| world.spawn()).collect();
        let mut configs = Vec::new();
        world.configure(&mut configs, first, &mut None, vec![]);
        for (op, cut) in steps {
            world.apply(&mut configs, op, cut);
        }
        for cfg in configs.iter_mut().filter(|c| c.dirty) {
            let stats = world.run(&cfg.members, Kind::Start, None, vec![]);
            prop_assert!(stats.completed);
            cfg.dirty = false;
        }
        world.check_secrecy();
    }
}

/// Keys of epochs and members with `Debug` never show secret bytes.
#[test]
fn debug_output_has_no_secrets() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let t = Tgdh::new(4, &mut rng);
    let key = t.key().unwrap().1;
    let shown = format!("{t:?} {key:?}");
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!shown.contains(&hex) && !shown.contains(&format!("{:?}", key.as_bytes())));
    for secret in t.secrets() {
        assert!(!shown.contains(&format!("{secret:?}")));
    }
    assert_eq!(format!("{key:?}"), "GroupKey(..)");
}
