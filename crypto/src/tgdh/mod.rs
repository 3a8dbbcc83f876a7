//! TGDH, tree-based group Diffie-Hellman (Kim, Perrig, Tsudik, "Tree-based
//! Group Key Agreement", ACM TISSEC 7(1), 2004) over X25519, as a sans-IO
//! state machine: one [`Tgdh`] per member (a daemon, named by a `u32`).
//!
//! Nothing here reads a clock, a socket or a global RNG. Randomness comes
//! from the caller's RNG; messages go out as [`Message`] values (with a total
//! [`Message::decode`]) and come back through [`Tgdh::handle`]. The caller
//! carries them on a totally ordered, reliable broadcast within one
//! configuration: every member gets every message of the configuration in
//! the same order, its own included, and a message sent after delivering
//! another is ordered after it (agreed order). The caller also signs them:
//! the `from` given to `handle` must be authenticated.
//!
//! ```text
//!   ring: new configuration ─► start(round, members) ─► [Announce]  ─► broadcast
//!   ring: delivery in order ─► handle(from, msg)      ─► [Keys]?    ─► broadcast
//!   ... until key() is Some((epoch, K_s))
//! ```
//!
//! # The key tree (paper section 3)
//!
//! A binary tree whose leaves are the members. Every node has a secret `k`
//! and a blinded key `BK = X25519(k, 9)`. A leaf's secret is 32 random bytes
//! of its member. An internal node's secret is
//!
//! ```text
//!   k = SHA-256("ringfence tgdh node v1" ‖ X25519(k_left, BK_right))
//! ```
//!
//! used as an X25519 scalar (clamped); `X25519(k_left, BK_right) =
//! X25519(k_right, BK_left)`, so a member under either child computes it from
//! its own side's secret and the other side's blinded key. The group key is
//! `SHA-256("ringfence tgdh group v1" ‖ k_root)` ([`GroupKey`]), numbered by
//! an epoch. Every member keeps the whole tree with every blinded key, and
//! the secrets of its own leaf-to-root path only; it computes the root from
//! its leaf in `height` X25519 operations.
//!
//! # A run
//!
//! Every membership change (join, leave, merge, partition, or all of them at
//! once, as one configuration change of the ring may remove and add members)
//! is one run, started by [`Tgdh::start`] with a round number and the new
//! member set. [`Tgdh::refresh`] is a run that keeps the members.
//!
//! 1. **Announce.** Every member broadcasts an [`Announce`]: the epoch and id
//!    of its last *completed* tree (`id = SHA-256("ringfence tgdh tree v1" ‖
//!    epoch ‖ tree)`, over structure and blinded keys) and its own leaf's
//!    blinded key. The member of lowest id among that tree's leaves that are
//!    in the new member set also sends the tree itself. A member alone in its
//!    tree (a newcomer) announces a fresh leaf key instead, as in the paper's
//!    join request. A run in progress is never announced: a member whose last
//!    run was cut short announces the tree before it.
//! 2. **Merge.** When every member's announcement is in, every member
//!    computes the same starting tree from the announcements alone. Members
//!    that announced the same tree id form a component, whose tree is the
//!    announced one *pruned to the members that announced it* (TGDH leave and
//!    partition, sections 4.2 and 4.4: a removed leaf's sibling takes its
//!    parent's place; every node that lost a leaf loses its blinded key). A
//!    member whose announcement does not fit (its tree was not sent, or its
//!    leaf or epoch differs from the sent tree) enters as a one-leaf tree with
//!    the leaf key it announced. The component trees are sorted by height,
//!    tallest first, ties by lowest member id, and each is inserted into the
//!    result so far (TGDH join and merge, sections 4.1 and 4.3): at the
//!    shallowest rightmost node where it does not increase the height, or at
//!    the root. The new node and its ancestors have no blinded key. The new
//!    epoch is one more than the largest epoch announced.
//! 3. **Refresh.** Fresh randomness must lie under every node whose key
//!    changes. These leaves pick new secrets, and the blinded keys on their
//!    paths are dropped: the sponsor (rightmost leaf) of each merged tree of
//!    several members whose root is still intact, up to that root (section
//!    4.3, first round); then, for each lowest node still without a blinded
//!    key, the paper's sponsor of the child that changed (the subtree a leave
//!    promoted, sections 4.2 and 4.4, or the insertion node of a join or
//!    merge, sections 4.1 and 4.3; the left one if both did), up to that
//!    child, unless that child is a newcomer's fresh leaf; then, if the root
//!    is still intact, the rightmost leaf up to the root. [`Tgdh::refresh`]
//!    refreshes one leaf, rotating with the epoch, up to the root (section
//!    4.5). So every run gives a new root key.
//! 4. **Sponsors.** The sponsor of a node is the rightmost leaf under it.
//!    After the merge and after each delivered [`Keys`], every member walks up
//!    its path computing the secrets it can (its child's secret and the
//!    sibling's blinded key). If the lowest node on its path whose blinded
//!    key is unknown (and not already sent) is one it can compute and it is
//!    that node's sponsor, it broadcasts a [`Keys`] with the blinded keys of
//!    all the nodes it computed that are not yet known, bottom-up. Each node's
//!    blinded key is sent once; the run is complete, at every member at the
//!    same message, when the root's blinded key is known; each member then
//!    checks that its root secret matches that blinded key.
//!
//! Messages per run: one [`Announce`] per member (about 80 bytes, plus 37
//! bytes per node for the one member per tree that sends the tree), then
//! [`Keys`] from the sponsors (45 bytes plus 40 per blinded key). A join
//! sends one `Keys` (the insertion sponsor's path), a leave one (the
//! sponsor's path), a refresh one and no announcements, a member alone none;
//! a partition or a merge sends at most one `Keys` per node that changed,
//! plus one per merged tree. Every `Keys` answers the message that made its
//! sender's node computable, so a run completes within `height + 1` rounds
//! of messages, announcements included (one for a member alone). A member does at most one X25519 operation per node of its
//! path that changed, plus one per blinded key it sends, plus one to check
//! the root: O(log n) in a balanced tree, and O(height) always.
//!
//! # Robustness
//!
//! After partitions, merges and cut-short runs, members that meet may hold
//! different trees; no member's tree is trusted to say who shares it. Only the
//! announcements of the run decide: a tree counts for exactly the members
//! that announce its id, so a member that holds an older tree, or none in
//! common with the others, is pruned out of their tree and enters on its own.
//! [`Tgdh::start`] aborts a run in progress (a cascaded membership change);
//! messages tagged with another round are ignored. [`Keys`] carries a digest
//! of the run's starting tree: a member that computed a different starting
//! tree (the callers passed different member sets) gets an error instead of
//! a wrong key.
//!
//! # What an observer sees
//!
//! Member ids, tree shapes, epochs, tree ids and blinded keys: all public, as
//! in the paper. Never a secret.
//!
//! # Security properties
//!
//! Against a passive adversary, under the computational Diffie-Hellman
//! assumption on X25519 (the paper's argument, with SHA-256 as the
//! key-derivation step): a member removed from the configuration cannot
//! compute later keys (every node on its former path loses its key, and a
//! refreshed leaf lies under every changed node); a newcomer cannot compute
//! earlier keys (its path consists of new nodes, and no old root survives:
//! each is refreshed or recomputed); a key says nothing about another (key
//! independence). The tests check the first two against everything a
//! process ever held, over random histories. As in TGDH, the secrets of
//! unchanged subtrees outlive a run, so a member whose state is stolen later
//! may expose recent keys it was a member for; the secrets it no longer
//! needs are zeroized when the next run completes. Active attacks by
//! outsiders are the ring's to stop (signed messages); members are trusted to
//! follow the protocol, though malformed or inconsistent messages are refused
//! with an error and a low-order blinded key fails the run rather than giving
//! a weak key.
//!
//! Secrets are [`StaticSecret`]s, zeroized on drop, and [`GroupKey`] is
//! zeroized on drop; no `Debug` output shows a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

mod tree;
mod wire;

#[cfg(test)]
mod tests;

use tree::{Bk, NodeId, Shape, Tree};
use wire::Held;
pub use wire::{Announce, DecodeError, Keys, Message};

/// Most members a run, a tree or a message may hold.
pub const MAX_MEMBERS: usize = 1024;

const NODE_LABEL: &[u8] = b"ringfence tgdh node v1";
const GROUP_LABEL: &[u8] = b"ringfence tgdh group v1";
const TREE_LABEL: &[u8] = b"ringfence tgdh tree v1";
const BASE_LABEL: &[u8] = b"ringfence tgdh base v1";

/// The group key agreed by a run: 32 bytes, zeroized on drop, never shown by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct GroupKey([u8; 32]);

impl GroupKey {
    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GroupKey(..)")
    }
}

/// Errors of [`Tgdh`], by whose fault they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TgdhError {
    /// The caller misused the API; nothing changed.
    #[error("API misuse: {0}")]
    ApiMisuse(&'static str),
    /// A member sent a message that breaks the protocol; the message was ignored.
    #[error("member {from} misbehaved: {fault}")]
    Peer {
        /// The sender.
        from: u32,
        /// What was wrong.
        fault: PeerFault,
    },
    /// The keys received do not fit together (a member sent a wrong or a
    /// low-order blinded key); the run cannot complete and ignores further
    /// messages. Start a new run.
    #[error("run failed: {0}")]
    RunFailed(&'static str),
}

/// How a member's message broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFault {
    /// The sender is not a member of the run.
    #[error("the sender is not a member of the run")]
    NotAMember,
    /// The sender had already announced in this run, or announced after the merge.
    #[error("a second announcement")]
    DuplicateAnnounce,
    /// The announced epoch is the largest `u64`: no next epoch.
    #[error("an announced epoch with no successor")]
    EpochExhausted,
    /// Blinded keys arrived before every member had announced.
    #[error("blinded keys before all announcements")]
    EarlyKeys,
    /// The blinded keys were computed on another starting tree.
    #[error("blinded keys for another starting tree")]
    BaseMismatch,
    /// A blinded key names no node of the tree.
    #[error("a blinded key for a node not in the tree")]
    UnknownNode,
    /// A blinded key for a node whose blinded key is already known.
    #[error("a blinded key that is already known")]
    KnownNode,
    /// The blinded keys are not a path upward from a node above the sender's leaf.
    #[error("blinded keys not on the sender's path")]
    NotOnPath,
    /// A blinded key for a node whose children's blinded keys are not known yet.
    #[error("a blinded key before its children's")]
    MissingChild,
    /// A join's shared tree that is not the lowest old member's
    /// announcement of a tree holding every old member.
    #[error("not the speaker's announcement of the shared tree")]
    NotASharedTree,
}

fn peer(from: u32, fault: PeerFault) -> TgdhError {
    TgdhError::Peer { from, fault }
}

/// A secret on the member's path in a completed tree.
#[derive(Clone)]
struct PathSecret {
    id: NodeId,
    bk: Bk,
    secret: StaticSecret,
}

/// The last completed run: tree, own path secrets, key.
#[derive(Clone)]
struct Completed {
    epoch: u64,
    tree: Tree,
    /// `tree_id(epoch, tree)`.
    id: [u8; 32],
    /// Leaf first, root last.
    path: Vec<PathSecret>,
    key: GroupKey,
}

impl Completed {
    fn new(epoch: u64, tree: Tree, path: Vec<PathSecret>) -> Self {
        let id = tree_id(epoch, &tree);
        let root = &path.last().expect("a path holds at least the leaf").secret;
        let key =
            GroupKey(Sha256::new().chain_update(GROUP_LABEL).chain_update(root.as_bytes()).finalize().into());
        Self { epoch, tree, id, path, key }
    }
}

/// A run in progress.
#[derive(Clone)]
struct Run {
    round: u64,
    /// Sorted.
    members: Vec<u32>,
    phase: Phase,
    /// The fresh leaf secret announced by a member alone in its tree.
    fresh_leaf: Option<StaticSecret>,
}

#[derive(Clone)]
enum Phase {
    /// Collecting every member's announcement.
    Announcing(BTreeMap<u32, Announce>),
    /// Computing the keys of the merged tree.
    Keying(Box<Keying>),
    /// The keys did not fit together; waiting for a new run.
    Failed,
}

/// The sponsor phase: the merged tree with the blinded keys known so far.
#[derive(Clone)]
struct Keying {
    epoch: u64,
    base: [u8; 32],
    tree: Tree,
    me_leaf: usize,
    /// By node index; only nodes on my path are ever `Some`.
    secrets: Vec<Option<StaticSecret>>,
    /// By node index: I broadcast this node's blinded key in this run.
    sent: Vec<bool>,
}

/// One member's TGDH state: its last completed tree and key, and the run in
/// progress, if any.
///
/// Driving it: on every new configuration call [`start`](Self::start) and
/// broadcast what it returns; hand every delivered TGDH message, in delivery
/// order and including one's own, to [`handle`](Self::handle) and broadcast
/// what it returns; [`key`](Self::key) is `Some` once the run is complete.
/// All members must call `start` with the same round and member set, and
/// [`refresh`](Self::refresh) at the same point of the message order.
///
/// ```
/// use std::collections::VecDeque;
/// use rand::SeedableRng;
/// use ringfence_crypto::tgdh::Tgdh;
///
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
/// let mut daemons = [Tgdh::new(1, &mut rng), Tgdh::new(2, &mut rng), Tgdh::new(3, &mut rng)];
/// // A totally ordered broadcast: one queue, each message delivered to all.
/// let mut ring = VecDeque::new();
/// for t in &mut daemons {
///     ring.extend(t.start(7, &[1, 2, 3], &mut rng)?.into_iter().map(|m| (t.me(), m)));
/// }
/// while let Some((from, msg)) = ring.pop_front() {
///     for t in &mut daemons {
///         ring.extend(t.handle(from, &msg, &mut rng)?.into_iter().map(|m| (t.me(), m)));
///     }
/// }
/// let (epoch, key) = daemons[0].key().expect("the run completed");
/// assert!(daemons.iter().all(|t| t.key().map(|(e, k)| (e, k.as_bytes())) == Some((epoch, key.as_bytes()))));
/// # Ok::<(), ringfence_crypto::tgdh::TgdhError>(())
/// ```
#[derive(Clone)]
pub struct Tgdh {
    me: u32,
    done: Completed,
    run: Option<Run>,
    ops: u64,
}

impl fmt::Debug for Tgdh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = self.run.as_ref().map(|run| match run.phase {
            Phase::Announcing(_) => (run.round, "announcing"),
            Phase::Keying(_) => (run.round, "keying"),
            Phase::Failed => (run.round, "failed"),
        });
        f.debug_struct("Tgdh")
            .field("me", &self.me)
            .field("epoch", &self.done.epoch)
            .field("members", &self.done.tree.leaf_count())
            .field("run", &phase)
            .field("x25519_ops", &self.ops)
            .finish_non_exhaustive()
    }
}

impl Tgdh {
    /// A member alone: a tree of one leaf with a fresh secret; its key is
    /// available at epoch 0.
    pub fn new(me: u32, rng: &mut impl RngCore) -> Self {
        let mut ops = 0;
        let secret = random_secret(rng);
        let bk = blind(&secret, &mut ops);
        let id = NodeId { first: me, last: me };
        let done = Completed::new(0, Tree::leaf(me, Some(bk)), vec![PathSecret { id, bk, secret }]);
        Self { me, done, run: None, ops }
    }

    /// This member's id.
    pub fn me(&self) -> u32 {
        self.me
    }

    /// Begins a run for a new configuration of `members` (any order; must
    /// include this member; at most [`MAX_MEMBERS`]). `round` tags every
    /// message of the run; messages of other rounds are ignored. Aborts the
    /// run in progress, if any. Returns this member's announcement, to be
    /// broadcast.
    pub fn start(
        &mut self,
        round: u64,
        members: &[u32],
        rng: &mut impl RngCore,
    ) -> Result<Vec<Message>, TgdhError> {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        if members.binary_search(&self.me).is_err() {
            return Err(TgdhError::ApiMisuse("the member set does not include this member"));
        }
        if members.len() > MAX_MEMBERS {
            return Err(TgdhError::ApiMisuse("more than MAX_MEMBERS members"));
        }
        let done = &self.done;
        let (leaf, held, fresh_leaf) = if done.tree.leaf_count() == 1 {
            // Alone: a fresh leaf key, as in the paper's join request.
            let secret = random_secret(rng);
            (blind(&secret, &mut self.ops), Held::Alone, Some(secret))
        } else {
            // The lowest member of the new set in my tree sends the tree.
            let speaker =
                done.tree.leaves().map(|(_, m)| m).filter(|m| members.binary_search(m).is_ok()).min();
            let held = if speaker == Some(self.me) { Held::Tree(done.tree.clone()) } else { Held::Shared };
            (done.path[0].bk, held, None)
        };
        let announce = Announce { round, epoch: done.epoch, tree_id: done.id, leaf, held };
        self.run = Some(Run { round, members, phase: Phase::Announcing(BTreeMap::new()), fresh_leaf });
        Ok(vec![Message::Announce(announce)])
    }

    /// Begins a key refresh among the members of the last completed run (a
    /// policy refresh: time-out or data-out). One member, rotating with the
    /// epoch, picks a new leaf secret and broadcasts its path; the returned
    /// messages (empty for all the others) are to be broadcast. Fails if a
    /// run is in progress.
    pub fn refresh(&mut self, round: u64, rng: &mut impl RngCore) -> Result<Vec<Message>, TgdhError> {
        if self.run.is_some() {
            return Err(TgdhError::ApiMisuse("refresh while a run is in progress"));
        }
        let epoch = self.done.epoch.checked_add(1).ok_or(TgdhError::ApiMisuse("epoch exhausted"))?;
        let mut members: Vec<u32> = self.done.tree.leaves().map(|(_, m)| m).collect();
        members.sort_unstable();
        // Section 4.5: one member refreshes its leaf, rotating with the epoch.
        let mut tree = self.done.tree.clone();
        let leaves: Vec<usize> = tree.leaves().map(|(i, _)| i).collect();
        let leaf = leaves[(epoch % leaves.len() as u64) as usize];
        let root = tree.root();
        clear_paths(&mut tree, &[(leaf, root)]);
        let keying = Keying::new(self.me, round, epoch, tree, &[leaf], None, &self.done, rng);
        let phase = Phase::Keying(Box::new(keying));
        self.run = Some(Run { round, members, phase, fresh_leaf: None });
        self.progress()
    }

    /// Takes one delivered message of the configuration, in delivery order,
    /// own messages included. Returns the messages to broadcast (at most one).
    ///
    /// Messages of another round, or when no run is in progress, are ignored.
    /// An error leaves the state as it was, except [`TgdhError::RunFailed`].
    pub fn handle(
        &mut self,
        from: u32,
        msg: &Message,
        rng: &mut impl RngCore,
    ) -> Result<Vec<Message>, TgdhError> {
        let Some(run) = self.run.as_mut() else { return Ok(Vec::new()) };
        if msg.round() != run.round {
            return Ok(Vec::new());
        }
        if run.members.binary_search(&from).is_err() {
            return Err(peer(from, PeerFault::NotAMember));
        }
        match (msg, &mut run.phase) {
            (_, Phase::Failed) => Ok(Vec::new()),
            (Message::Announce(_), Phase::Keying(_)) => Err(peer(from, PeerFault::DuplicateAnnounce)),
            (Message::Keys(_), Phase::Announcing(_)) => Err(peer(from, PeerFault::EarlyKeys)),
            (Message::Announce(a), Phase::Announcing(got)) => {
                if got.contains_key(&from) {
                    return Err(peer(from, PeerFault::DuplicateAnnounce));
                }
                if a.epoch == u64::MAX {
                    return Err(peer(from, PeerFault::EpochExhausted));
                }
                got.insert(from, a.clone());
                if got.len() < run.members.len() {
                    return Ok(Vec::new());
                }
                self.key_merged(rng)
            }
            (Message::Keys(keys), Phase::Keying(keying)) => {
                keying.apply(from, keys)?;
                self.progress()
            }
        }
    }

    /// Every member's announcement is in: merges the trees and starts the
    /// sponsor phase.
    fn key_merged(&mut self, rng: &mut impl RngCore) -> Result<Vec<Message>, TgdhError> {
        let Some(run) = self.run.as_mut() else { return Ok(Vec::new()) };
        let Phase::Announcing(got) = &run.phase else { return Ok(Vec::new()) };
        let mut merged = merge(got);
        let refreshed = plan_refresh(&mut merged);
        let fresh = run.fresh_leaf.take();
        let (tree, epoch) = (merged.tree, merged.epoch);
        let keying = Keying::new(self.me, run.round, epoch, tree, &refreshed, fresh, &self.done, rng);
        run.phase = Phase::Keying(Box::new(keying));
        self.progress()
    }

    /// Begins a run for a leave or a partition without announcements
    /// (sections 4.2 and 4.4: only the sponsor sends): every member of
    /// `members` holds this member's last completed tree, as the caller
    /// guarantees (virtual synchrony: they all completed the same run and
    /// delivered the same messages since), so each computes alone what
    /// their announcements would have said, and the run goes on as
    /// [`start`](Self::start)'s would after them: the tree pruned to
    /// `members`, the sponsor's refreshed path, the same key. A member whose
    /// tree differs is told by the sponsor's [`Keys`] (`BaseMismatch`).
    ///
    /// `members` must be a proper subset of the last completed run's
    /// members, including this one, with no run in progress (else
    /// [`TgdhError::ApiMisuse`], nothing changed: use `start`).
    pub fn start_leave(
        &mut self,
        round: u64,
        members: &[u32],
        rng: &mut impl RngCore,
    ) -> Result<Vec<Message>, TgdhError> {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        let old = self.members();
        if self.run.is_some()
            || members.binary_search(&self.me).is_err()
            || members.len() >= old.len()
            || members.iter().any(|m| old.binary_search(m).is_err())
        {
            return Err(TgdhError::ApiMisuse("a leave keeps some members of the last completed run"));
        }
        let got = shared_announcements(round, self.done.epoch, &self.done.tree, self.done.id, &members, None)
            .ok_or(TgdhError::ApiMisuse("a member without a leaf key in the last completed tree"))?;
        self.run = Some(Run { round, members, phase: Phase::Announcing(got), fresh_leaf: None });
        self.key_merged(rng)
    }

    /// Begins a run for a join (section 4.1) in which the members of the
    /// last completed run do not announce: only the lowest of them (the
    /// speaker) sends its announcement with the tree, which every member,
    /// newcomers included, hands to [`handle_shared_tree`](Self::handle_shared_tree);
    /// the newcomers announce as in [`start`](Self::start). The run then
    /// goes on as `start`'s would (the same tree, sponsors and key).
    ///
    /// `members` must include every member of the last completed run (at
    /// least two: a member alone announces a fresh leaf instead) and at
    /// least one more, with no run in progress (else
    /// [`TgdhError::ApiMisuse`], nothing changed). Returns the speaker's
    /// announcement (nothing for the others), to be broadcast.
    pub fn start_join(
        &mut self,
        round: u64,
        members: &[u32],
        _rng: &mut impl RngCore,
    ) -> Result<Vec<Message>, TgdhError> {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        let old = self.members();
        if self.run.is_some()
            || old.len() < 2
            || members.len() <= old.len()
            || members.len() > MAX_MEMBERS
            || old.iter().any(|m| members.binary_search(m).is_err())
        {
            return Err(TgdhError::ApiMisuse("a join keeps every member of the last completed run"));
        }
        let done = &self.done;
        let speaking = old.first() == Some(&self.me);
        let out = speaking.then(|| {
            Message::Announce(Announce {
                round,
                epoch: done.epoch,
                tree_id: done.id,
                leaf: done.path[0].bk,
                held: Held::Tree(done.tree.clone()),
            })
        });
        self.run = Some(Run { round, members, phase: Phase::Announcing(BTreeMap::new()), fresh_leaf: None });
        Ok(out.into_iter().collect())
    }

    /// Takes the speaker's announcement of a join started by
    /// [`start_join`](Self::start_join): `shared_by` are the members of the
    /// last completed run (the speaker is the lowest), who do not announce;
    /// their announcements are read from the tree it carries. Otherwise as
    /// [`handle`](Self::handle).
    pub fn handle_shared_tree(
        &mut self,
        from: u32,
        msg: &Message,
        shared_by: &[u32],
        rng: &mut impl RngCore,
    ) -> Result<Vec<Message>, TgdhError> {
        let Some(run) = self.run.as_mut() else { return Ok(Vec::new()) };
        if msg.round() != run.round {
            return Ok(Vec::new());
        }
        let Phase::Announcing(got) = &mut run.phase else { return self.handle(from, msg, rng) };
        let Message::Announce(a) = msg else { return Err(peer(from, PeerFault::NotASharedTree)) };
        let Held::Tree(tree) = &a.held else { return Err(peer(from, PeerFault::NotASharedTree)) };
        let mut shared: Vec<u32> = shared_by.to_vec();
        shared.sort_unstable();
        shared.dedup();
        if shared.first() != Some(&from)
            || shared.iter().any(|m| run.members.binary_search(m).is_err())
            || tree_id(a.epoch, tree) != a.tree_id
        {
            return Err(peer(from, PeerFault::NotASharedTree));
        }
        let Some(others) = shared_announcements(a.round, a.epoch, tree, a.tree_id, &shared[1..], Some(from))
        else {
            return Err(peer(from, PeerFault::NotASharedTree));
        };
        for (m, other) in others {
            got.entry(m).or_insert(other);
        }
        self.handle(from, msg, rng)
    }

    /// The epoch and key of the last run, once it is complete; `None` while
    /// a run is in progress.
    pub fn key(&self) -> Option<(u64, &GroupKey)> {
        self.run.is_none().then_some((self.done.epoch, &self.done.key))
    }

    /// Whether no run is in progress (the last one completed).
    pub fn is_done(&self) -> bool {
        self.run.is_none()
    }

    /// The epoch of the last completed run.
    pub fn epoch(&self) -> u64 {
        self.done.epoch
    }

    /// The round of the run in progress.
    pub fn round(&self) -> Option<u64> {
        self.run.as_ref().map(|run| run.round)
    }

    /// The members of the last completed run, sorted.
    pub fn members(&self) -> Vec<u32> {
        let mut members: Vec<u32> = self.done.tree.leaves().map(|(_, m)| m).collect();
        members.sort_unstable();
        members
    }

    /// Height of the last completed tree (0 for one member).
    pub fn height(&self) -> u32 {
        self.done.tree.height()
    }

    /// X25519 operations (Diffie-Hellman and blinding) done by this member so far.
    pub fn x25519_ops(&self) -> u64 {
        self.ops
    }

    /// After a change to the run: complete it, or send what this member
    /// sponsors.
    fn progress(&mut self) -> Result<Vec<Message>, TgdhError> {
        let Some(run) = self.run.as_mut() else { return Ok(Vec::new()) };
        let Phase::Keying(keying) = &mut run.phase else { return Ok(Vec::new()) };
        let result = if keying.tree.node(keying.tree.root()).bk.is_some() {
            keying.finish(&mut self.ops).map(|done| {
                self.done = done;
                self.run = None;
                Vec::new()
            })
        } else {
            keying.advance(run.round, &mut self.ops).map(|msg| msg.into_iter().collect())
        };
        if result.is_err() {
            if let Some(run) = self.run.as_mut() {
                run.phase = Phase::Failed;
            }
        }
        result
    }

    /// Every secret this member holds, for the white-box tests.
    #[cfg(test)]
    fn secrets(&self) -> Vec<[u8; 32]> {
        let mut out: Vec<[u8; 32]> = self.done.path.iter().map(|p| p.secret.to_bytes()).collect();
        if let Some(Run { phase: Phase::Keying(k), .. }) = &self.run {
            out.extend(k.secrets.iter().flatten().map(StaticSecret::to_bytes));
        }
        out
    }
}

impl Keying {
    /// The sponsor phase of a run starting from `tree`, whose unknown blinded
    /// keys are cleared and whose `refreshed` leaves pick new secrets. Takes
    /// over this member's secrets that are still valid, or `fresh`, the leaf
    /// secret it announced alone.
    #[allow(clippy::too_many_arguments)]
    fn new(
        me: u32,
        round: u64,
        epoch: u64,
        tree: Tree,
        refreshed: &[usize],
        fresh: Option<StaticSecret>,
        done: &Completed,
        rng: &mut impl RngCore,
    ) -> Self {
        let mut hash = Sha256::new();
        hash.update(BASE_LABEL);
        hash.update(round.to_be_bytes());
        hash.update(epoch.to_be_bytes());
        tree.digest(&mut hash);
        let base = hash.finalize().into();

        let me_leaf = tree.find_leaf(me).expect("every member has a leaf in the merged tree");
        let mut secrets = vec![None; tree.len()];
        if refreshed.contains(&me_leaf) {
            secrets[me_leaf] = Some(random_secret(rng));
        } else if let Some(fresh) = fresh {
            secrets[me_leaf] = Some(fresh);
        } else {
            // Nodes whose blinded key is still known have not changed: keep their secrets.
            for i in tree.path(me_leaf) {
                let node = tree.node(i);
                let Some(bk) = node.bk else { break };
                let kept = done.path.iter().find(|p| p.id == node.id && p.bk == bk);
                let Some(p) = kept else { break };
                secrets[i] = Some(p.secret.clone());
            }
        }
        let sent = vec![false; tree.len()];
        Self { epoch, base, tree, me_leaf, secrets, sent }
    }

    /// Computes every secret of my path that the known blinded keys allow.
    fn walk(&mut self, ops: &mut u64) -> Result<Vec<usize>, TgdhError> {
        let path = self.tree.path(self.me_leaf);
        for pair in path.windows(2) {
            let (child, parent) = (pair[0], pair[1]);
            if self.secrets[parent].is_some() {
                continue;
            }
            let sibling = self.tree.sibling(child).expect("a child has a sibling");
            let (Some(bk), Some(k)) = (self.tree.node(sibling).bk, &self.secrets[child]) else { break };
            self.secrets[parent] = Some(node_secret(k, &bk, ops)?);
        }
        Ok(path)
    }

    /// The sponsor rule: if the lowest node of my path whose blinded key is
    /// unknown and unsent is one I can compute and sponsor, send the blinded
    /// keys of all the nodes I can compute from there up.
    fn advance(&mut self, round: u64, ops: &mut u64) -> Result<Option<Message>, TgdhError> {
        let path = self.walk(ops)?;
        let unsent: Vec<usize> = path
            .into_iter()
            .take_while(|&i| self.secrets[i].is_some())
            .filter(|&i| self.tree.node(i).bk.is_none() && !self.sent[i])
            .collect();
        let Some(&lowest) = unsent.first() else { return Ok(None) };
        if self.tree.rightmost_leaf(lowest) != self.me_leaf {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(unsent.len());
        for i in unsent {
            let secret = self.secrets[i].as_ref().expect("taken while known");
            keys.push((self.tree.node(i).id, blind(secret, ops)));
            self.sent[i] = true;
        }
        Ok(Some(Message::Keys(Keys { round, base: self.base, keys })))
    }

    /// Checks and records a sponsor's blinded keys.
    fn apply(&mut self, from: u32, keys: &Keys) -> Result<(), TgdhError> {
        let fault = |fault| peer(from, fault);
        if keys.base != self.base {
            return Err(fault(PeerFault::BaseMismatch));
        }
        let from_leaf = self.tree.find_leaf(from).ok_or(fault(PeerFault::NotAMember))?;
        let mut nodes = Vec::with_capacity(keys.keys.len());
        for (id, _) in &keys.keys {
            let i = self.tree.find(*id).ok_or(fault(PeerFault::UnknownNode))?;
            if self.tree.node(i).bk.is_some() {
                return Err(fault(PeerFault::KnownNode));
            }
            match nodes.last() {
                None => {
                    if !self.tree.is_ancestor_or_self(i, from_leaf) {
                        return Err(fault(PeerFault::NotOnPath));
                    }
                    if let Shape::Inner { left, right } = self.tree.node(i).shape {
                        if self.tree.node(left).bk.is_none() || self.tree.node(right).bk.is_none() {
                            return Err(fault(PeerFault::MissingChild));
                        }
                    }
                }
                Some(&below) => {
                    if self.tree.node(below).parent != Some(i) {
                        return Err(fault(PeerFault::NotOnPath));
                    }
                    let sibling = self.tree.sibling(below).expect("a child has a sibling");
                    if self.tree.node(sibling).bk.is_none() {
                        return Err(fault(PeerFault::MissingChild));
                    }
                }
            }
            nodes.push(i);
        }
        if nodes.is_empty() {
            return Err(fault(PeerFault::NotOnPath));
        }
        for (&i, (_, bk)) in nodes.iter().zip(&keys.keys) {
            self.tree.set_bk(i, Some(*bk));
        }
        Ok(())
    }

    /// Completes the run once the root's blinded key is known: computes the
    /// root secret and checks it against that blinded key.
    fn finish(&mut self, ops: &mut u64) -> Result<Completed, TgdhError> {
        let path = self.walk(ops)?;
        let root = self.tree.root();
        let Some(root_secret) = &self.secrets[root] else {
            return Err(TgdhError::RunFailed("the root is known but this member cannot compute it"));
        };
        if !self.sent[root] && Some(blind(root_secret, ops)) != self.tree.node(root).bk {
            return Err(TgdhError::RunFailed("the root secret does not match the root's blinded key"));
        }
        let path = path
            .into_iter()
            .map(|i| {
                let node = self.tree.node(i);
                let secret = self.secrets[i].clone().expect("the whole path is known");
                PathSecret { id: node.id, bk: node.bk.expect("a complete tree"), secret }
            })
            .collect();
        Ok(Completed::new(self.epoch, self.tree.clone(), path))
    }
}

/// The starting point of a run, which every member computes alike from the
/// announcements.
struct Merged {
    tree: Tree,
    epoch: u64,
    /// Roots of the merged trees of several members.
    roots: Vec<NodeId>,
    /// Subtrees whose rightmost leaves are the paper's sponsors: those a
    /// leave promoted, and the insertion nodes of joins and merges.
    changed: BTreeSet<NodeId>,
    /// Leaves of members alone in their trees, whose keys are fresh.
    fresh: BTreeSet<NodeId>,
}

/// Merges the trees announced (section 4.3), each pruned to the members that
/// announced it (section 4.4); a member that does not fit enters alone.
fn merge(got: &BTreeMap<u32, Announce>) -> Merged {
    let epoch = got.values().map(|a| a.epoch).max().expect("at least one member") + 1;
    let mut parts = Vec::new();
    let (mut changed, mut fresh) = (BTreeSet::new(), BTreeSet::new());
    let mut by_tree: BTreeMap<[u8; 32], Vec<u32>> = BTreeMap::new();
    for (&m, a) in got {
        if a.held == Held::Alone {
            parts.push(Tree::leaf(m, Some(a.leaf)));
            fresh.insert(NodeId { first: m, last: m });
        } else {
            by_tree.entry(a.tree_id).or_default().push(m);
        }
    }
    for (id, members) in by_tree {
        let sent = members.iter().find_map(|m| match &got[m].held {
            Held::Tree(t) if tree_id(got[m].epoch, t) == id => Some((got[m].epoch, t)),
            _ => None,
        });
        let mut kept = BTreeSet::new();
        for m in members {
            let a = &got[&m];
            let fits = sent.is_some_and(|(epoch, t)| {
                a.epoch == epoch && t.find_leaf(m).is_some_and(|i| t.node(i).bk == Some(a.leaf))
            });
            if fits {
                kept.insert(m);
            } else {
                parts.push(Tree::leaf(m, Some(a.leaf)));
            }
        }
        if let Some((t, promoted)) = sent.and_then(|(_, t)| t.pruned(&kept)) {
            changed.extend(promoted);
            parts.push(t);
        }
    }
    let roots = parts.iter().filter(|t| t.leaf_count() > 1).map(|t| t.node(t.root()).id).collect();
    let lowest = |t: &Tree| t.leaves().map(|(_, m)| m).min();
    parts.sort_by_key(|t| (std::cmp::Reverse(t.height()), lowest(t)));
    let mut parts = parts.into_iter();
    let mut tree = parts.next().expect("at least one member");
    for part in parts {
        let (merged, joined) = tree.merged(&part);
        if let Shape::Inner { left, .. } = merged.node(joined).shape {
            changed.insert(merged.node(left).id);
        }
        tree = merged;
    }
    Merged { tree, epoch, roots, changed, fresh }
}

/// Picks the leaves to refresh so that fresh randomness lies under every
/// node whose key changes, clears the blinded keys on their paths, and
/// returns them:
///
/// 1. the sponsor (rightmost leaf) of every merged tree of several members
///    whose root is still intact (section 4.3, step 1);
/// 2. for every lowest node still without a blinded key, the sponsor of the
///    child that changed: the subtree a leave promoted (sections 4.2, 4.4) or
///    the insertion node of a join or merge (sections 4.1, 4.3), the left one
///    if both did; none if that child is the fresh leaf of a member alone;
/// 3. if the root is still intact and not fresh, one leaf up to the root.
fn plan_refresh(m: &mut Merged) -> Vec<usize> {
    let tree = &mut m.tree;
    let intact = |tree: &Tree, id: &NodeId| tree.find(*id).filter(|&i| tree.node(i).bk.is_some());
    let roots: Vec<(usize, usize)> =
        m.roots.iter().filter_map(|id| intact(tree, id)).map(|i| (tree.rightmost_leaf(i), i)).collect();
    clear_paths(tree, &roots);
    let lowest: Vec<(usize, usize)> = (0..tree.len())
        .filter_map(|i| match tree.node(i).shape {
            Shape::Inner { left, right }
                if tree.node(i).bk.is_none()
                    && tree.node(left).bk.is_some()
                    && tree.node(right).bk.is_some() =>
            {
                let changed = |c: usize| m.changed.contains(&tree.node(c).id);
                let child = if changed(right) && !changed(left) { right } else { left };
                (!m.fresh.contains(&tree.node(child).id)).then(|| (tree.rightmost_leaf(child), child))
            }
            _ => None,
        })
        .collect();
    clear_paths(tree, &lowest);
    let root = tree.root();
    let mut plan: Vec<usize> = roots.iter().chain(&lowest).map(|&(leaf, _)| leaf).collect();
    if tree.node(root).bk.is_some() && !m.fresh.contains(&tree.node(root).id) {
        let leaf = tree.rightmost_leaf(root);
        clear_paths(tree, &[(leaf, root)]);
        plan.push(leaf);
    }
    plan
}

/// The announcements `members`, who all hold `tree` (completed at `epoch`,
/// id `id`), would send: each its leaf's blinded key, the lowest of them
/// (unless `speaker`, another member, sends it) with the tree. `None` if a
/// member has no leaf key in the tree.
fn shared_announcements(
    round: u64,
    epoch: u64,
    tree: &Tree,
    id: [u8; 32],
    members: &[u32],
    speaker: Option<u32>,
) -> Option<BTreeMap<u32, Announce>> {
    let lowest = members.iter().min().copied();
    members
        .iter()
        .map(|&m| {
            let leaf = tree.find_leaf(m).and_then(|i| tree.node(i).bk)?;
            let held =
                if speaker.is_none() && Some(m) == lowest { Held::Tree(tree.clone()) } else { Held::Shared };
            Some((m, Announce { round, epoch, tree_id: id, leaf, held }))
        })
        .collect()
}

/// Clears the blinded keys from each `(leaf, top)` pair's leaf up to `top`.
fn clear_paths(tree: &mut Tree, paths: &[(usize, usize)]) {
    for &(leaf, top) in paths {
        for i in tree.path(leaf) {
            tree.set_bk(i, None);
            if i == top {
                break;
            }
        }
    }
}

/// `SHA-256("ringfence tgdh tree v1" ‖ epoch ‖ tree)`.
fn tree_id(epoch: u64, tree: &Tree) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(TREE_LABEL);
    hash.update(epoch.to_be_bytes());
    tree.digest(&mut hash);
    hash.finalize().into()
}

/// 32 random bytes as a leaf secret.
fn random_secret(rng: &mut impl RngCore) -> StaticSecret {
    let mut bytes = [0; 32];
    rng.fill_bytes(&mut bytes);
    let secret = StaticSecret::from(bytes);
    bytes.zeroize();
    secret
}

/// The blinded key `X25519(k, 9)`.
fn blind(secret: &StaticSecret, ops: &mut u64) -> Bk {
    *ops += 1;
    PublicKey::from(secret).to_bytes()
}

/// The parent's secret from one child's secret and the other's blinded key.
fn node_secret(secret: &StaticSecret, other: &Bk, ops: &mut u64) -> Result<StaticSecret, TgdhError> {
    *ops += 1;
    let shared = secret.diffie_hellman(&PublicKey::from(*other));
    if !shared.was_contributory() {
        return Err(TgdhError::RunFailed("a blinded key of low order"));
    }
    let mut bytes: [u8; 32] =
        Sha256::new().chain_update(NODE_LABEL).chain_update(shared.as_bytes()).finalize().into();
    let secret = StaticSecret::from(bytes);
    bytes.zeroize();
    Ok(secret)
}
