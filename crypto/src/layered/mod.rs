//! The layered architecture's group key agreement: the five protocols of
//! Secure Spread (Amir et al., "Scaling Secure Group Communication Systems:
//! Beyond Peer-to-Peer", section 4.2) run by the *clients* of a group, so
//! that the daemons never learn the group key.
//!
//! One [`Agreement`] per member and group, for one [`Protocol`]:
//!
//! | protocol | group | rounds (join / leave) | paper |
//! |---|---|---|---|
//! | [`Protocol::Tgdh`] | X25519 | announce + sponsors / same | Kim, Perrig, Tsudik, TISSEC 2004 |
//! | [`Protocol::Gdh`]  | ristretto255 | upflow + final / one broadcast | IKA.2, Steiner, Tsudik, Waidner 1998/2000 |
//! | [`Protocol::Bd`]   | ristretto255 | two broadcasts, always | Burmester, Desmedt 1994 |
//! | [`Protocol::Str`]  | X25519 | share + tree / one broadcast | Kim, Perrig, Tsudik 2001 |
//! | [`Protocol::Ckd`]  | X25519 + AES-256-GCM | share + key / one broadcast | Secure Spread's CKD |
//!
//! It is sans-IO, like the rest of the crate: no clock, socket or global
//! RNG. The caller hands in membership views and delivered messages, and
//! polls messages to send and the key.
//!
//! ```text
//!   VS view ───────────► handle_view(View)  ──┐
//!   delivered message ─► handle_message(..) ──┼─► poll_transmit() ─► Transmit { dest, bytes }
//!                                             └─► key() ─► Some((epoch, &LayeredKey)) once agreed
//! ```
//!
//! # What the caller (the client agreement engine) must do
//!
//! - Run over a *virtual synchrony* group: every broadcast of a view is
//!   delivered to every member of that view, in the same (agreed) order, the
//!   sender's own copy included; a unicast ([`Dest::Member`]) is delivered
//!   only to its destination, in the same total order. Members that move
//!   together from one view to the next delivered the same messages in it.
//! - On every new view, call [`Agreement::handle_view`] at every member with
//!   the same [`View`]: a strictly increasing `epoch`, the members oldest
//!   first, and what changed ([`Change`]). A view arriving during a run
//!   abandons that run (a cascaded change) and starts one for the new view.
//! - Hand each delivered message to [`Agreement::handle_message`] with the
//!   sender's id and a [`KeyLookup`] of members' Ed25519 public keys, then
//!   send everything [`Agreement::poll_transmit`] returns.
//! - Hold the application's sends while [`Agreement::is_agreeing`]; deliver
//!   the secure view with the key when [`Agreement::key`] returns the view's
//!   epoch (every member reaches it at the same message of the agreed order).
//! - State a [`Change`] other than [`Change::Merge`] only when every member
//!   not in its `joined` list comes from the same previous view (the VS
//!   transitional set is the whole continuing membership); otherwise say
//!   `Merge`, which runs the protocol from scratch. Members listed in
//!   `joined` start afresh; everything else is decided from the view and
//!   each member's own state, which VS keeps alike among the members that
//!   move together.
//!
//! # Messages
//!
//! Every message is an [`envelope`](crate::envelope) signed by its sender:
//! `msg_type` = protocol code × 16 + message kind, `signer` = the member id,
//! `round` = the view's epoch, and the 16-byte context = 8 bytes naming the
//! group and protocol ‖ destination (`u32`, `0xffff_ffff` for everyone) ‖
//! the sender's sequence number in the epoch. The body is the protocol's;
//! every decoder is total. A message is refused, with a distinct
//! [`LayeredError`] variant, if it is malformed, for another epoch (stale or
//! future: both are refused, [`LayeredError::WrongEpoch`], never silently
//! dropped), from a member not in the view, signed by another key, a
//! replay of one already taken in this epoch, addressed to another member,
//! or breaks the protocol. A refused message changes nothing.
//!
//! # The key
//!
//! Each protocol ends with a group secret (a ristretto255 point, an X25519
//! node secret, or a key the CKD controller drew). The [`LayeredKey`] is
//! `HKDF-SHA256(ikm = secret, salt = "ringfence layered key v1",
//! info = protocol label ‖ group context ‖ epoch ‖ members)`: bound to the
//! protocol, the group, the epoch and the membership.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;

use rand::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::envelope::{self, Envelope, Header, UnverifiedEnvelope};
use crate::identity::{PublicIdentity, SecretIdentity};

mod bd;
mod ckd;
mod gdh;
mod str_chain;
mod tgdh;
mod wire;

#[cfg(test)]
mod tests;

pub use wire::DecodeError;

/// Most members a view or a message may hold.
pub const MAX_MEMBERS: usize = crate::tgdh::MAX_MEMBERS;

/// The destination value meaning "every member of the view".
const BROADCAST: u32 = u32::MAX;

/// The five protocols of Secure Spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// Tree-based group Diffie-Hellman over X25519 (reuses [`crate::tgdh`]).
    Tgdh,
    /// Group Diffie-Hellman, IKA.2, over ristretto255.
    Gdh,
    /// Burmester-Desmedt over ristretto255.
    Bd,
    /// STR, the skinny tree, over X25519.
    Str,
    /// Centralized key distribution by the oldest member, over X25519 and AES-256-GCM.
    Ckd,
}

impl Protocol {
    /// All five, in the order of the paper's list.
    pub const ALL: [Self; 5] = [Self::Tgdh, Self::Gdh, Self::Bd, Self::Str, Self::Ckd];

    /// The code in the envelope's message type (high four bits).
    const fn code(self) -> u8 {
        match self {
            Self::Tgdh => 1,
            Self::Gdh => 2,
            Self::Bd => 3,
            Self::Str => 4,
            Self::Ckd => 5,
        }
    }

    /// The name, as in the modes `layered-tgdh` and so on.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tgdh => "tgdh",
            Self::Gdh => "gdh",
            Self::Bd => "bd",
            Self::Str => "str",
            Self::Ckd => "ckd",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What changed from the previous view, as the VS layer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Members joined; `joined` are new to the group and listed last in the
    /// view (TGDH: anywhere in it). The rest come from the previous view
    /// together.
    Join {
        /// The members that joined.
        joined: Vec<u32>,
    },
    /// Members left voluntarily (or were disconnected); the rest come from the previous view together.
    Leave {
        /// The members that left.
        left: Vec<u32>,
    },
    /// The network split the group; the members of this view come from the previous view together.
    Partition {
        /// The members on the other side.
        left: Vec<u32>,
    },
    /// Components of the group met again, or the members come from different
    /// previous views for any other reason; the first view of a group is one
    /// too. The protocol runs from scratch (TGDH merges its trees).
    Merge,
    /// The same members ask for a fresh key (a time-out or data-out policy).
    Refresh,
}

/// A membership view of the group: the input that starts a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The view's number; strictly increasing over the group's views. Every
    /// message of the run carries it and the key belongs to it.
    pub epoch: u64,
    /// The members, oldest first, without duplicates; the same list at every member.
    pub members: Vec<u32>,
    /// What changed.
    pub change: Change,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest {
    /// To every member of the view (the sender's own copy included).
    All,
    /// To one member only.
    Member(u32),
}

/// A signed message to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Everyone, or one member.
    pub dest: Dest,
    /// The signed envelope.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transmit").field("dest", &self.dest).field("len", &self.bytes.len()).finish()
    }
}

/// The group key of one view: 32 bytes, zeroized on drop, never shown by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct LayeredKey([u8; 32]);

impl LayeredKey {
    /// The key bytes. Named so that every place that reads a secret stands out.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for LayeredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LayeredKey(..)")
    }
}

/// The expensive operations a member did, for the cost tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Costs {
    /// X25519 operations and ristretto255 scalar multiplications ("exponentiations").
    pub exponentiations: u64,
    /// Scalar inversions modulo the group order (GDH factor-out).
    pub inversions: u64,
    /// Ed25519 signatures made.
    pub signatures: u64,
    /// Ed25519 signatures checked.
    pub verifications: u64,
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent (signed envelopes).
    pub bytes: u64,
}

impl std::ops::Sub for Costs {
    type Output = Self;

    fn sub(self, o: Self) -> Self {
        Self {
            exponentiations: self.exponentiations - o.exponentiations,
            inversions: self.inversions - o.inversions,
            signatures: self.signatures - o.signatures,
            verifications: self.verifications - o.verifications,
            messages: self.messages - o.messages,
            bytes: self.bytes - o.bytes,
        }
    }
}

/// Where the members' Ed25519 public keys come from (the policy's identities).
pub trait KeyLookup {
    /// The public key of `member`, if it has one.
    fn public_key(&self, member: u32) -> Option<PublicIdentity>;
}

impl KeyLookup for BTreeMap<u32, PublicIdentity> {
    fn public_key(&self, member: u32) -> Option<PublicIdentity> {
        self.get(&member).copied()
    }
}

impl<S: std::hash::BuildHasher> KeyLookup for HashMap<u32, PublicIdentity, S> {
    fn public_key(&self, member: u32) -> Option<PublicIdentity> {
        self.get(&member).copied()
    }
}

impl<F: Fn(u32) -> Option<PublicIdentity>> KeyLookup for F {
    fn public_key(&self, member: u32) -> Option<PublicIdentity> {
        self(member)
    }
}

/// Errors of [`Agreement`], each saying whose fault it is. A refused message
/// or view changes nothing, except [`LayeredError::RunFailed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayeredError {
    /// The caller misused the API (a bad view, an id out of range).
    #[error("API misuse: {0}")]
    ApiMisuse(&'static str),
    /// The bytes are not a message of this protocol (the peer's fault).
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
    /// The message belongs to another epoch than the current view's (a stale
    /// message after a cascaded change, or one from the future). Refused.
    #[error("message for epoch {got}, current epoch {current:?}")]
    WrongEpoch {
        /// The message's epoch.
        got: u64,
        /// The current view's epoch, if there is a view.
        current: Option<u64>,
    },
    /// The envelope's signer is not the member the transport says sent it.
    #[error("message from {from} signed as {signer}")]
    SenderMismatch {
        /// The sender the caller gave.
        from: u32,
        /// The signer named in the envelope.
        signer: u32,
    },
    /// The sender is not a member of the current view.
    #[error("member {from} is not in the view")]
    NotAMember {
        /// The sender.
        from: u32,
    },
    /// The key lookup has no public key for the sender.
    #[error("no public key for member {from}")]
    UnknownSigner {
        /// The sender.
        from: u32,
    },
    /// The signature does not verify under the sender's key.
    #[error("bad signature from member {from}")]
    BadSignature {
        /// The claimed sender.
        from: u32,
    },
    /// A message already taken in this epoch (same sender and sequence number).
    #[error("replay of message {seq} from member {from}")]
    Replay {
        /// The sender.
        from: u32,
        /// Its sequence number.
        seq: u32,
    },
    /// A unicast addressed to another member.
    #[error("message for member {to}, not for this member")]
    NotForMe {
        /// The addressee.
        to: u32,
    },
    /// A well-formed, authentic message that breaks the protocol.
    #[error("member {from} broke the protocol: {fault}")]
    Protocol {
        /// The sender.
        from: u32,
        /// What was wrong.
        fault: Fault,
    },
    /// The run cannot complete (inconsistent keys); it waits for the next view.
    #[error("run failed: {0}")]
    RunFailed(&'static str),
}

/// How an authentic message broke a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Fault {
    /// A message of a kind this member does not expect now (or a second one).
    #[error("unexpected message")]
    Unexpected,
    /// The sender has no role that sends this message now.
    #[error("wrong sender for this message")]
    WrongSender,
    /// The message lists other members, or another number of them, than the run.
    #[error("member list does not match the view")]
    WrongMembers,
    /// The message builds on another previous state than this member's.
    #[error("built on another previous state")]
    BaseMismatch,
    /// The message does not contain this member's own contribution as it sent it.
    #[error("own contribution missing or altered")]
    OwnValueMismatch,
    /// An encrypted key share does not open.
    #[error("key share does not decrypt")]
    Decrypt,
    /// A group element of low order or the identity where a key is needed.
    #[error("weak group element")]
    WeakElement,
    /// A TGDH message refused by the TGDH state machine.
    #[error("TGDH: {0}")]
    Tgdh(crate::tgdh::PeerFault),
}

/// How a member enters a run, decided from the view and its own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// From scratch (a merge, a cascade, a first view, or a state that does not fit).
    Full,
    /// This member is listed as joined: it holds no usable state.
    Newcomer,
    /// Members appended to the last completed view, listed last.
    Join {
        /// How many members the last completed view had (they come first).
        old: usize,
    },
    /// Members removed from the last completed view, order kept.
    Leave {
        /// The members of the last completed view.
        old: Vec<u32>,
    },
    /// Same members as the last completed view.
    Refresh,
}

/// What a protocol core sees of the agreement while it handles an input.
pub(crate) struct Ctx<'a> {
    pub(crate) me: u32,
    pub(crate) view: &'a View,
    pub(crate) rng: &'a mut dyn CryptoRng,
    pub(crate) costs: &'a mut Costs,
    /// Messages to sign and send: destination, kind, body.
    pub(crate) out: Outbox,
    /// Digest of the last completed state of this agreement, for incremental runs.
    pub(crate) base: [u8; 32],
}

impl Ctx<'_> {
    pub(crate) fn send(&mut self, dest: Dest, kind: u8, body: Vec<u8>) {
        self.out.push((dest, kind, body));
    }

    /// My position in the view.
    pub(crate) fn pos(&self) -> usize {
        self.view.members.iter().position(|&m| m == self.me).expect("the view includes this member")
    }

    pub(crate) fn n(&self) -> usize {
        self.view.members.len()
    }

    pub(crate) fn pos_of(&self, member: u32) -> Option<usize> {
        self.view.members.iter().position(|&m| m == member)
    }
}

/// Messages a core sent, to be signed: destination, kind, body.
pub(crate) type Outbox = Vec<(Dest, u8, Vec<u8>)>;

/// A run's result: the group secret, to be hashed into the key.
pub(crate) type Secret = Zeroizing<Vec<u8>>;

/// A core's result for one input: `Some(secret)` when the run completed.
pub(crate) type Step = Result<Option<Secret>, LayeredError>;

pub(crate) fn fault(from: u32, fault: Fault) -> LayeredError {
    LayeredError::Protocol { from, fault }
}

/// The protocol state machines.
#[derive(Clone)]
enum Core {
    Tgdh(Box<tgdh::TgdhCore>),
    Gdh(gdh::GdhCore),
    Bd(bd::BdCore),
    Str(str_chain::StrCore),
    Ckd(ckd::CkdCore),
}

impl Core {
    fn start(&mut self, ctx: &mut Ctx<'_>, start: &Start) -> Step {
        match self {
            Self::Tgdh(c) => c.start(ctx, start),
            Self::Gdh(c) => c.start(ctx, start),
            Self::Bd(c) => c.start(ctx),
            Self::Str(c) => c.start(ctx, start),
            Self::Ckd(c) => c.start(ctx),
        }
    }

    fn handle(&mut self, ctx: &mut Ctx<'_>, from: u32, kind: u8, body: &[u8]) -> Step {
        match self {
            Self::Tgdh(c) => c.handle(ctx, from, kind, body),
            Self::Gdh(c) => c.handle(ctx, from, kind, body),
            Self::Bd(c) => c.handle(ctx, from, kind, body),
            Self::Str(c) => c.handle(ctx, from, kind, body),
            Self::Ckd(c) => c.handle(ctx, from, kind, body),
        }
    }
}

/// The last view whose run completed.
#[derive(Clone)]
struct Done {
    epoch: u64,
    members: Vec<u32>,
    key: LayeredKey,
    base: [u8; 32],
}

/// One member's layered key agreement for one group.
///
/// Polling contract: after each [`handle_view`](Self::handle_view) or
/// [`handle_message`](Self::handle_message), drain
/// [`poll_transmit`](Self::poll_transmit) and send each message as its
/// [`Dest`] says; then [`key`](Self::key) tells whether the view's key is
/// agreed. See the [module documentation](self) for what the caller owes.
///
/// ```
/// use std::collections::{BTreeMap, VecDeque};
/// use rand::SeedableRng;
/// use ringfence_crypto::identity::SecretIdentity;
/// use ringfence_crypto::layered::{Agreement, Change, Dest, Protocol, View};
///
/// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
/// let ids: Vec<SecretIdentity> = (0..3).map(|_| SecretIdentity::generate(&mut rng)).collect();
/// let keys: BTreeMap<u32, _> = (0..3).map(|m| (m as u32, ids[m].public())).collect();
/// let mut members: Vec<Agreement> = ids.into_iter().enumerate().map(|(m, id)| {
///     let seeded = rand_chacha::ChaCha20Rng::seed_from_u64(100 + m as u64);
///     Agreement::new(Protocol::Gdh, b"chat", m as u32, id, Box::new(seeded)).unwrap()
/// }).collect();
/// let view = View { epoch: 1, members: vec![0, 1, 2], change: Change::Merge };
/// // A virtual-synchrony group in one queue: broadcasts go to all, unicasts to one.
/// let mut wire = VecDeque::new();
/// for a in &mut members {
///     a.handle_view(view.clone())?;
///     while let Some(t) = a.poll_transmit() { wire.push_back((a.me(), t)); }
/// }
/// while let Some((from, t)) = wire.pop_front() {
///     for a in &mut members {
///         if t.dest == Dest::All || t.dest == Dest::Member(a.me()) {
///             a.handle_message(from, &t.bytes, &keys)?;
///             while let Some(out) = a.poll_transmit() { wire.push_back((a.me(), out)); }
///         }
///     }
/// }
/// let (epoch, key) = members[0].key().expect("agreed");
/// assert_eq!(epoch, 1);
/// assert!(members.iter().all(|a| a.key().map(|(_, k)| k) == Some(key)));
/// # Ok::<(), ringfence_crypto::layered::LayeredError>(())
/// ```
pub struct Agreement {
    protocol: Protocol,
    me: u32,
    identity: SecretIdentity,
    rng: Box<dyn CryptoRng + Send>,
    /// Names the group and protocol in every signature and key.
    context: [u8; 8],
    view: Option<View>,
    done: Option<Done>,
    agreeing: bool,
    next_seq: u32,
    /// (sender, sequence) taken in the current epoch.
    seen: HashSet<(u32, u32)>,
    transmits: VecDeque<Transmit>,
    costs: Costs,
    core: Core,
}

impl fmt::Debug for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agreement")
            .field("protocol", &self.protocol)
            .field("me", &self.me)
            .field("epoch", &self.view.as_ref().map(|v| v.epoch))
            .field("keyed_epoch", &self.done.as_ref().map(|d| d.epoch))
            .field("agreeing", &self.agreeing)
            .field("costs", &self.costs)
            .finish_non_exhaustive()
    }
}

impl Agreement {
    /// A member `me` of `group` (any name; it is bound into every signature
    /// and key) running `protocol`, signing with `identity`, drawing
    /// randomness from `rng` (seeded by the caller; a CSPRNG in production).
    ///
    /// `me` must not be `0xffff_ffff` (the broadcast address).
    pub fn new(
        protocol: Protocol,
        group: &[u8],
        me: u32,
        identity: SecretIdentity,
        mut rng: Box<dyn CryptoRng + Send>,
    ) -> Result<Self, LayeredError> {
        if me == BROADCAST {
            return Err(LayeredError::ApiMisuse("member id 0xffff_ffff is reserved"));
        }
        let digest = Sha256::new()
            .chain_update(b"ringfence layered group v1")
            .chain_update([protocol.code()])
            .chain_update(group)
            .finalize();
        let mut context = [0; 8];
        context.copy_from_slice(&digest[..8]);
        let mut costs = Costs::default();
        let core = match protocol {
            Protocol::Tgdh => Core::Tgdh(Box::new(tgdh::TgdhCore::new(me, &mut *rng, &mut costs))),
            Protocol::Gdh => Core::Gdh(gdh::GdhCore::default()),
            Protocol::Bd => Core::Bd(bd::BdCore::default()),
            Protocol::Str => Core::Str(str_chain::StrCore::default()),
            Protocol::Ckd => Core::Ckd(ckd::CkdCore::new(me, &mut *rng, &mut costs)),
        };
        Ok(Self {
            protocol,
            me,
            identity,
            rng,
            context,
            view: None,
            done: None,
            agreeing: false,
            next_seq: 0,
            seen: HashSet::new(),
            transmits: VecDeque::new(),
            costs,
            core,
        })
    }

    /// This member's id.
    pub fn me(&self) -> u32 {
        self.me
    }

    /// The protocol run.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The current view, if any.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// Whether a run is in progress (the application's sends must wait).
    pub fn is_agreeing(&self) -> bool {
        self.agreeing
    }

    /// The key of the current view and its epoch, once agreed; `None` while
    /// agreeing or before the first view.
    pub fn key(&self) -> Option<(u64, &LayeredKey)> {
        let done = self.done.as_ref()?;
        (!self.agreeing && self.view.as_ref().map(|v| v.epoch) == Some(done.epoch))
            .then_some((done.epoch, &done.key))
    }

    /// The expensive operations done so far.
    pub fn costs(&self) -> Costs {
        self.costs
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Takes a new view and starts its run, abandoning the run in progress
    /// (a cascaded change). Messages of earlier epochs are refused from now on.
    pub fn handle_view(&mut self, view: View) -> Result<(), LayeredError> {
        check_view(&view, self.me)?;
        if let Some(current) = &self.view {
            if view.epoch <= current.epoch {
                return Err(LayeredError::ApiMisuse("view epochs must increase"));
            }
        }
        let start = self.start_kind(&view);
        self.view = Some(view);
        self.seen.clear();
        self.next_seq = 0;
        self.transmits.clear();
        self.agreeing = true;
        let view = self.view.take().expect("just set");
        let base = self.done.as_ref().map_or([0; 32], |d| d.base);
        let mut ctx = Ctx {
            me: self.me,
            view: &view,
            rng: &mut *self.rng,
            costs: &mut self.costs,
            out: Vec::new(),
            base,
        };
        let step = self.core.start(&mut ctx, &start);
        let out = std::mem::take(&mut ctx.out);
        let result = (step, out);
        self.view = Some(view);
        self.finish(result)
    }

    /// Takes one delivered message (own broadcasts included), checks it,
    /// and advances the run. A refused message changes nothing.
    pub fn handle_message(
        &mut self,
        from: u32,
        bytes: &[u8],
        keys: &(impl KeyLookup + ?Sized),
    ) -> Result<(), LayeredError> {
        let envelope = UnverifiedEnvelope::decode(bytes).map_err(DecodeError::Envelope)?;
        let header = *envelope.header();
        if header.msg_type >> 4 != self.protocol.code() {
            return Err(DecodeError::WrongProtocol(header.msg_type >> 4).into());
        }
        let current = self.view.as_ref().map(|v| v.epoch);
        if current != Some(header.round) {
            return Err(LayeredError::WrongEpoch { got: header.round, current });
        }
        if header.ring[..8] != self.context {
            return Err(DecodeError::WrongGroup.into());
        }
        if header.signer != from {
            return Err(LayeredError::SenderMismatch { from, signer: header.signer });
        }
        let view = self.view.take().expect("checked above");
        let result = self.take_message(&view, &header, &envelope, keys);
        self.view = Some(view);
        let result = result?;
        self.finish(result)
    }

    fn take_message(
        &mut self,
        view: &View,
        header: &Header,
        envelope: &UnverifiedEnvelope<'_>,
        keys: &(impl KeyLookup + ?Sized),
    ) -> Result<(Step, Outbox), LayeredError> {
        let from = header.signer;
        if !view.members.contains(&from) {
            return Err(LayeredError::NotAMember { from });
        }
        let key = keys.public_key(from).ok_or(LayeredError::UnknownSigner { from })?;
        self.costs.verifications += 1;
        let verified = envelope.verify(&key).map_err(|_| LayeredError::BadSignature { from })?;
        let to = u32::from_be_bytes(header.ring[8..12].try_into().expect("4 bytes"));
        let seq = u32::from_be_bytes(header.ring[12..16].try_into().expect("4 bytes"));
        if self.seen.contains(&(from, seq)) {
            return Err(LayeredError::Replay { from, seq });
        }
        if to != BROADCAST && to != self.me {
            return Err(LayeredError::NotForMe { to });
        }
        let kind = header.msg_type & 0x0f;
        if !self.agreeing {
            // The run completed: every later message of the epoch is out of turn.
            return Err(fault(from, Fault::Unexpected));
        }
        let base = self.done.as_ref().map_or([0; 32], |d| d.base);
        let mut ctx =
            Ctx { me: self.me, view, rng: &mut *self.rng, costs: &mut self.costs, out: Vec::new(), base };
        let step = self.core.handle(&mut ctx, from, kind, verified.body());
        let out = std::mem::take(&mut ctx.out);
        // A refused message changes nothing, so it may come again; a taken one may not.
        if matches!(step, Ok(_) | Err(LayeredError::RunFailed(_))) {
            self.seen.insert((from, seq));
        }
        Ok((step, out))
    }

    /// Signs what the core sent and records a completed run.
    fn finish(&mut self, (step, out): (Step, Outbox)) -> Result<(), LayeredError> {
        let view = self.view.as_ref().expect("a view is set");
        for (dest, kind, body) in out {
            let to = match dest {
                Dest::All => BROADCAST,
                Dest::Member(m) => m,
            };
            let mut ring = [0; envelope::RING_LEN];
            ring[..8].copy_from_slice(&self.context);
            ring[8..12].copy_from_slice(&to.to_be_bytes());
            ring[12..].copy_from_slice(&self.next_seq.to_be_bytes());
            self.next_seq += 1;
            let header = Header {
                msg_type: self.protocol.code() << 4 | kind,
                signer: self.me,
                ring,
                round: view.epoch,
            };
            let mut bytes = Vec::new();
            Envelope::seal_into(&self.identity, &header, &body, &mut bytes)
                .map_err(|_| LayeredError::ApiMisuse("message too large"))?;
            self.costs.signatures += 1;
            self.costs.messages += 1;
            self.costs.bytes += bytes.len() as u64;
            self.transmits.push_back(Transmit { dest, bytes });
        }
        match step {
            Ok(Some(secret)) => {
                let key = derive_key(self.protocol, &self.context, view, &secret);
                let base = Sha256::new()
                    .chain_update(b"ringfence layered base v1")
                    .chain_update(view.epoch.to_be_bytes())
                    .chain_update(key.expose_secret())
                    .finalize()
                    .into();
                self.done = Some(Done { epoch: view.epoch, members: view.members.clone(), key, base });
                self.agreeing = false;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// How this member enters the run of `view`, from its own state.
    fn start_kind(&self, view: &View) -> Start {
        // The previous view's run completed (no cascade pending)?
        let done = match (&self.done, &self.view) {
            (Some(done), Some(prev)) if done.epoch == prev.epoch => done,
            _ => {
                return match &view.change {
                    Change::Join { joined } if joined.contains(&self.me) => Start::Newcomer,
                    _ => Start::Full,
                };
            }
        };
        match &view.change {
            Change::Join { joined } if joined.contains(&self.me) => Start::Newcomer,
            Change::Join { joined } => {
                let old = done.members.len();
                let fits = if self.protocol == Protocol::Tgdh {
                    // TGDH places members by its tree, not by their order in
                    // the view: the old members and the joined ones, in any order.
                    let mut expect: Vec<u32> = done.members.iter().chain(joined).copied().collect();
                    let mut got = view.members.clone();
                    expect.sort_unstable();
                    got.sort_unstable();
                    !joined.is_empty() && !joined.iter().any(|j| done.members.contains(j)) && expect == got
                } else {
                    !joined.is_empty()
                        && view.members.len() == old + joined.len()
                        && view.members[..old] == done.members[..]
                        && view.members[old..] == joined[..]
                };
                if fits { Start::Join { old } } else { Start::Full }
            }
            Change::Leave { left } | Change::Partition { left } => {
                let kept: Vec<u32> = done.members.iter().copied().filter(|m| !left.contains(m)).collect();
                let fits =
                    !left.is_empty() && left.iter().all(|m| done.members.contains(m)) && kept == view.members;
                if fits { Start::Leave { old: done.members.clone() } } else { Start::Full }
            }
            Change::Refresh if view.members == done.members => Start::Refresh,
            Change::Refresh | Change::Merge => Start::Full,
        }
    }
}

/// A view must be non-empty, hold this member once, no duplicates, at most [`MAX_MEMBERS`].
fn check_view(view: &View, me: u32) -> Result<(), LayeredError> {
    if view.members.is_empty() || view.members.len() > MAX_MEMBERS {
        return Err(LayeredError::ApiMisuse("a view has 1 to MAX_MEMBERS members"));
    }
    if !view.members.contains(&me) {
        return Err(LayeredError::ApiMisuse("the view does not include this member"));
    }
    let mut sorted = view.members.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) || sorted.last() == Some(&BROADCAST) {
        return Err(LayeredError::ApiMisuse("duplicate or reserved member id in the view"));
    }
    Ok(())
}

/// `HKDF-SHA256(secret, "ringfence layered key v1", label ‖ context ‖ epoch ‖ n ‖ members)`.
fn derive_key(protocol: Protocol, context: &[u8; 8], view: &View, secret: &[u8]) -> LayeredKey {
    let mut info = Vec::with_capacity(32 + 4 * view.members.len());
    info.extend_from_slice(b"ringfence layered ");
    info.extend_from_slice(protocol.name().as_bytes());
    info.extend_from_slice(context);
    info.extend_from_slice(&view.epoch.to_be_bytes());
    info.extend_from_slice(&(view.members.len() as u32).to_be_bytes());
    for m in &view.members {
        info.extend_from_slice(&m.to_be_bytes());
    }
    let mut key = [0; 32];
    crate::kdf::hkdf_sha256(secret, b"ringfence layered key v1", &info, &mut key)
        .expect("32 bytes is a valid HKDF length");
    let out = LayeredKey(key);
    key.zeroize();
    out
}
