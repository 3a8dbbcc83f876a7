//! Centralized key distribution (CKD, Secure Spread's fifth protocol): the
//! oldest member of the view, the controller, draws the group secret and
//! sends it to every other member under a pairwise key.
//!
//! Every member holds one X25519 *share* for the life of its [`Agreement`]
//! (`s_m`, public `S_m`). The pairwise key of controller `c` and member `m`
//! is
//!
//! ```text
//!   K_cm = HKDF-SHA256(X25519(s_c, S_m), "ringfence layered ckd pairwise v1", c ‖ S_c ‖ m ‖ S_m)
//! ```
//!
//! which the controller keeps for as long as it lives (the paper's two-party
//! channels, set up once per member). A run:
//!
//! ```text
//!   joiners (Change::Join)   → controller:  Share(S_m)                   unicast
//!   controller → all:  Request(members whose share it lacks)    only if it lacks any
//!   each requested m → controller:  Share(S_m)                            unicast
//!   controller → all:  KeyDist(S_c, [m, AES-256-GCM(K_cm, nonce = c ‖ epoch,
//!                       aad = label ‖ epoch ‖ m, K)] for every m ≠ c)
//! ```
//!
//! `K` is 32 fresh random bytes every run, so a leaving member cannot learn
//! the next key and a joining one cannot learn the last. A leave, partition
//! or refresh is one message (KeyDist); a join is the joiners' Shares and
//! the KeyDist; a new controller (the old one left) asks everyone for their
//! share first, and so does a controller meeting members from outside its
//! last completed view (a merge), whose shares it may not know. The nonce is unique per pairwise key because epochs
//! increase and the controller sends one KeyDist per epoch.
//!
//! [`Agreement`]: super::Agreement

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::wire::{DecodeError, Reader, put_count};
use super::{Change, Costs, Ctx, Dest, Fault, LayeredError, Step, fault};
use crate::aead::{Aead, Key32, Nonce, RingAesGcm, TAG_LEN};

const KIND_SHARE: u8 = 1;
const KIND_REQUEST: u8 = 2;
const KIND_KEY_DIST: u8 = 3;
const PAIRWISE_LABEL: &[u8] = b"ringfence layered ckd pairwise v1";
const AAD_LABEL: &[u8] = b"ringfence layered ckd v1";
/// A sealed group secret: 32 bytes of ciphertext and the tag.
const SEALED_LEN: usize = 32 + TAG_LEN;

type Pk = [u8; 32];

/// A CKD message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    /// A member's share public key, to the controller.
    Share(Pk),
    /// The members whose share the controller needs.
    Request(Vec<u32>),
    /// The group secret sealed for each member.
    KeyDist {
        /// The controller's share public key.
        controller: Pk,
        /// One per member but the controller, in view order.
        entries: Vec<(u32, [u8; SEALED_LEN])>,
    },
}

impl Msg {
    pub(crate) fn decode(kind: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match kind {
            KIND_SHARE => Self::Share(r.array()?),
            KIND_REQUEST => {
                let n = r.count(1)?;
                Self::Request((0..n).map(|_| r.u32()).collect::<Result<_, _>>()?)
            }
            KIND_KEY_DIST => {
                let controller = r.array()?;
                let n = r.count(0)?;
                let entries =
                    (0..n).map(|_| Ok((r.u32()?, r.array()?))).collect::<Result<_, DecodeError>>()?;
                Self::KeyDist { controller, entries }
            }
            k => return Err(DecodeError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(msg)
    }

    pub(crate) fn encode(&self) -> (u8, Vec<u8>) {
        let mut out = Vec::new();
        let kind = match self {
            Self::Share(pk) => {
                out.extend_from_slice(pk);
                KIND_SHARE
            }
            Self::Request(members) => {
                put_count(&mut out, members.len());
                members.iter().for_each(|m| out.extend_from_slice(&m.to_be_bytes()));
                KIND_REQUEST
            }
            Self::KeyDist { controller, entries } => {
                out.extend_from_slice(controller);
                put_count(&mut out, entries.len());
                for (m, sealed) in entries {
                    out.extend_from_slice(&m.to_be_bytes());
                    out.extend_from_slice(sealed);
                }
                KIND_KEY_DIST
            }
        };
        (kind, out)
    }
}

#[derive(Clone)]
pub(crate) struct CkdCore {
    share: StaticSecret,
    share_pk: Pk,
    /// As a controller: each member's share and our pairwise key.
    downward: BTreeMap<u32, (Pk, Zeroizing<[u8; 32]>)>,
    /// As a member: the pairwise key with a controller's share.
    upward: BTreeMap<(u32, Pk), Zeroizing<[u8; 32]>>,
    /// The members of the last completed run: a controller trusts its cached
    /// pairwise keys only for them (a member from elsewhere may hold a new share).
    last: BTreeSet<u32>,
    run: Option<Run>,
}

#[derive(Clone, Default)]
struct Run {
    /// Controller: the members whose Share it still waits for.
    waiting: BTreeSet<u32>,
    /// Controller: the members it asked.
    requested: BTreeSet<u32>,
    /// Member: whether the controller's Request came.
    got_request: bool,
    /// Controller: the secret it sent, until its KeyDist comes back.
    secret: Option<Zeroizing<Vec<u8>>>,
}

impl CkdCore {
    pub(crate) fn new(_me: u32, rng: &mut dyn rand::CryptoRng, costs: &mut Costs) -> Self {
        let mut bytes = [0; 32];
        rng.fill_bytes(&mut bytes);
        let share = StaticSecret::from(bytes);
        bytes.zeroize();
        costs.exponentiations += 1;
        let share_pk = PublicKey::from(&share).to_bytes();
        Self {
            share,
            share_pk,
            downward: BTreeMap::new(),
            upward: BTreeMap::new(),
            last: BTreeSet::new(),
            run: None,
        }
    }

    pub(crate) fn start(&mut self, ctx: &mut Ctx<'_>) -> Step {
        self.run = None;
        if ctx.n() == 1 {
            self.last = ctx.view.members.iter().copied().collect();
            return Ok(Some(super::bd::random_secret(ctx)));
        }
        let controller = ctx.view.members[0];
        let joined: BTreeSet<u32> = match &ctx.view.change {
            Change::Join { joined } => joined.iter().copied().filter(|&m| m != controller).collect(),
            _ => BTreeSet::new(),
        };
        let mut run = Run::default();
        if ctx.me == controller {
            let cached = |m: &u32| self.last.contains(m) && self.downward.contains_key(m);
            let lacking: Vec<u32> =
                ctx.view.members[1..].iter().copied().filter(|m| !joined.contains(m) && !cached(m)).collect();
            run.waiting = joined.iter().chain(&lacking).copied().collect();
            if !lacking.is_empty() {
                let (kind, body) = Msg::Request(lacking.clone()).encode();
                ctx.send(Dest::All, kind, body);
            }
            run.requested = lacking.into_iter().collect();
            if run.waiting.is_empty() {
                self.distribute(ctx, &mut run)?;
            }
        } else if joined.contains(&ctx.me) {
            let (kind, body) = Msg::Share(self.share_pk).encode();
            ctx.send(Dest::Member(controller), kind, body);
        }
        self.run = Some(run);
        Ok(None)
    }

    pub(crate) fn handle(&mut self, ctx: &mut Ctx<'_>, from: u32, kind: u8, body: &[u8]) -> Step {
        let msg = Msg::decode(kind, body)?;
        let controller = ctx.view.members[0];
        let mut run = self.run.clone().ok_or(fault(from, Fault::Unexpected))?;
        match msg {
            Msg::Share(pk) => {
                if ctx.me != controller || !run.waiting.contains(&from) {
                    return Err(fault(from, Fault::Unexpected));
                }
                ctx.costs.exponentiations += 1;
                let shared = self.share.diffie_hellman(&PublicKey::from(pk));
                if !shared.was_contributory() {
                    return Err(fault(from, Fault::WeakElement));
                }
                let key = pairwise(shared.as_bytes(), controller, &self.share_pk, from, &pk);
                self.downward.insert(from, (pk, key));
                run.waiting.remove(&from);
                if run.waiting.is_empty() {
                    self.distribute(ctx, &mut run)?;
                }
                self.run = Some(run);
                Ok(None)
            }
            Msg::Request(members) => {
                if from != controller {
                    return Err(fault(from, Fault::WrongSender));
                }
                if run.got_request || members.iter().any(|m| *m == controller || ctx.pos_of(*m).is_none()) {
                    return Err(fault(from, Fault::Unexpected));
                }
                run.got_request = true;
                if ctx.me != controller && members.contains(&ctx.me) {
                    let (kind, body) = Msg::Share(self.share_pk).encode();
                    ctx.send(Dest::Member(controller), kind, body);
                }
                self.run = Some(run);
                Ok(None)
            }
            Msg::KeyDist { controller: controller_pk, entries } => {
                if from != controller {
                    return Err(fault(from, Fault::WrongSender));
                }
                if entries.len() + 1 != ctx.n()
                    || entries.iter().zip(&ctx.view.members[1..]).any(|((m, _), v)| m != v)
                {
                    return Err(fault(from, Fault::WrongMembers));
                }
                if ctx.me == controller {
                    let secret = run.secret.take().ok_or(fault(from, Fault::Unexpected))?;
                    self.run = None;
                    self.last = ctx.view.members.iter().copied().collect();
                    return Ok(Some(secret));
                }
                let sealed = &entries[ctx.pos() - 1].1;
                let key = match self.upward.get(&(controller, controller_pk)) {
                    Some(key) => key.clone(),
                    None => {
                        ctx.costs.exponentiations += 1;
                        let shared = self.share.diffie_hellman(&PublicKey::from(controller_pk));
                        if !shared.was_contributory() {
                            return Err(fault(from, Fault::WeakElement));
                        }
                        pairwise(shared.as_bytes(), controller, &controller_pk, ctx.me, &self.share_pk)
                    }
                };
                let mut buf = Zeroizing::new(sealed.to_vec());
                let aad = aad(ctx.view.epoch, ctx.me);
                let nonce = Nonce::new(controller, ctx.view.epoch);
                let opened = RingAesGcm::new(&Key32::from_bytes(*key))
                    .open_in_place(&nonce, &aad, &mut buf)
                    .map_err(|_| fault(from, Fault::Decrypt))?;
                let secret = Zeroizing::new(opened.to_vec());
                self.upward.insert((controller, controller_pk), key);
                self.run = None;
                self.last = ctx.view.members.iter().copied().collect();
                Ok(Some(secret))
            }
        }
    }

    /// The controller draws the secret and seals it for every member.
    fn distribute(&self, ctx: &mut Ctx<'_>, run: &mut Run) -> Result<(), LayeredError> {
        let secret = super::bd::random_secret(ctx);
        let mut entries = Vec::with_capacity(ctx.n() - 1);
        let nonce = Nonce::new(ctx.me, ctx.view.epoch);
        for &m in &ctx.view.members[1..] {
            let (_, key) =
                self.downward.get(&m).ok_or(LayeredError::RunFailed("no pairwise key for a member"))?;
            let mut buf = secret.to_vec();
            RingAesGcm::new(&Key32::from_bytes(**key))
                .seal_in_place(&nonce, &aad(ctx.view.epoch, m), &mut buf)
                .map_err(|_| LayeredError::RunFailed("sealing failed"))?;
            let sealed: [u8; SEALED_LEN] = buf.as_slice().try_into().expect("32 bytes and a tag");
            entries.push((m, sealed));
        }
        let (kind, body) = Msg::KeyDist { controller: self.share_pk, entries }.encode();
        ctx.send(Dest::All, kind, body);
        run.secret = Some(secret);
        Ok(())
    }
}

fn pairwise(shared: &[u8; 32], c: u32, c_pk: &Pk, m: u32, m_pk: &Pk) -> Zeroizing<[u8; 32]> {
    let mut info = Vec::with_capacity(72);
    info.extend_from_slice(&c.to_be_bytes());
    info.extend_from_slice(c_pk);
    info.extend_from_slice(&m.to_be_bytes());
    info.extend_from_slice(m_pk);
    let mut key = Zeroizing::new([0; 32]);
    crate::kdf::hkdf_sha256(shared, PAIRWISE_LABEL, &info, key.as_mut())
        .expect("32 bytes is a valid HKDF length");
    key
}

fn aad(epoch: u64, member: u32) -> Vec<u8> {
    [AAD_LABEL, &epoch.to_be_bytes(), &member.to_be_bytes()].concat()
}
