//! STR, the skinny tree (Kim, Perrig, Tsudik, "Communication-efficient group
//! key agreement", IFIP SEC 2001), over X25519.
//!
//! The members `M_0 .. M_{n−1}` in view order are the leaves of a chain:
//! `M_0` at the bottom, each internal node `i` joining node `i−1` with leaf
//! `M_i`. Every leaf has a secret `r_i` and a blinded key `br_i = X25519(r_i,
//! 9)`; node secrets are
//!
//! ```text
//!   k_0 = r_0,   k_i = SHA-256("ringfence layered str node v1" ‖ X25519(r_i, BK_{i−1}))
//!                    = SHA-256("ringfence layered str node v1" ‖ X25519(k_{i−1}, br_i))
//! ```
//!
//! with `BK_i = X25519(k_i, 9)`, and the group secret is `k_{n−1}`. `M_p`
//! computes it from its `r_p`, `BK_{p−1}` and the leaf keys above it:
//! `n − p` X25519 operations.
//!
//! Messages: `Share` (a member's `br_i`, broadcast) and `Tree` (every
//! `br_i` and `BK_i` of the new chain, broadcast by the sponsor).
//!
//! - **Full run** (merge, cascade, first view): every member draws `r_i` and
//!   broadcasts its Share; `M_0` then computes the chain and sends the Tree.
//! - **Join** (joiners listed last): each joiner broadcasts a Share; the
//!   sponsor, the old top member, refreshes its `r` and sends the Tree.
//! - **Leave / partition**: the sponsor, the member just below the lowest
//!   leaving one (or the new bottom member), refreshes its `r` and sends
//!   the Tree at once: one message.
//! - **Refresh**: the top member refreshes its `r` and sends the Tree.
//!
//! An incremental Tree carries a digest of the state it builds on, checked
//! by the old members ([`Fault::BaseMismatch`]).

use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::wire::{DecodeError, Reader, put_count};
use super::{Change, Ctx, Dest, Fault, LayeredError, Start, Step, fault};

const KIND_SHARE: u8 = 1;
const KIND_TREE: u8 = 2;
const NODE_LABEL: &[u8] = b"ringfence layered str node v1";

type Bk = [u8; 32];

/// An STR message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    /// A member's leaf blinded key.
    Share(Bk),
    /// The whole chain's public keys, from the sponsor.
    Tree {
        /// The digest of the state an incremental run builds on; zeros for a full run.
        base: [u8; 32],
        /// Leaf blinded keys, one per member in view order.
        brs: Vec<Bk>,
        /// Internal blinded keys `BK_0 .. BK_{n−2}`.
        bks: Vec<Bk>,
    },
}

impl Msg {
    pub(crate) fn decode(kind: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match kind {
            KIND_SHARE => Self::Share(r.array()?),
            KIND_TREE => {
                let base = r.array()?;
                let n = r.count(1)?;
                let brs = (0..n).map(|_| r.array()).collect::<Result<_, _>>()?;
                let m = r.count(0)?;
                let bks = (0..m).map(|_| r.array()).collect::<Result<_, _>>()?;
                Self::Tree { base, brs, bks }
            }
            k => return Err(DecodeError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(msg)
    }

    pub(crate) fn encode(&self) -> (u8, Vec<u8>) {
        let mut out = Vec::new();
        let kind = match self {
            Self::Share(br) => {
                out.extend_from_slice(br);
                KIND_SHARE
            }
            Self::Tree { base, brs, bks } => {
                out.extend_from_slice(base);
                put_count(&mut out, brs.len());
                brs.iter().for_each(|b| out.extend_from_slice(b));
                put_count(&mut out, bks.len());
                bks.iter().for_each(|b| out.extend_from_slice(b));
                KIND_TREE
            }
        };
        (kind, out)
    }
}

#[derive(Clone, Default)]
pub(crate) struct StrCore {
    done: Option<Done>,
    run: Option<Run>,
}

/// The last completed chain and this member's leaf secret in it.
#[derive(Clone)]
struct Done {
    members: Vec<u32>,
    r: StaticSecret,
    brs: Vec<Bk>,
    bks: Vec<Bk>,
}

#[derive(Clone)]
struct Run {
    /// This member's leaf secret for the run.
    r: StaticSecret,
    /// Shares received in this run, by position.
    shares: Vec<Option<Bk>>,
    role: Role,
    /// The sponsor's own result, so it need not recompute it from its Tree.
    top: Option<StaticSecret>,
}

#[derive(Clone)]
enum Role {
    /// Full run or newcomer: collecting Shares; `M_0` sends the Tree once all are in.
    Collect,
    /// The join sponsor: waits for the joiners' Shares (positions `old..`).
    JoinSponsor { old: usize },
    /// An old member of an incremental run: waits for the Tree built on `base`;
    /// Shares may come from positions `joiners_from..`.
    Wait { base: [u8; 32], joiners_from: usize },
}

impl StrCore {
    pub(crate) fn start(&mut self, ctx: &mut Ctx<'_>, start: &Start) -> Step {
        self.run = None;
        let (n, p) = (ctx.n(), ctx.pos());
        let r = random_secret(ctx);
        if n == 1 {
            let br = blind(&r, ctx);
            let secret = Zeroizing::new(r.to_bytes().to_vec());
            self.done = Some(Done { members: ctx.view.members.clone(), r, brs: vec![br], bks: Vec::new() });
            return Ok(Some(secret));
        }
        let shares = vec![None; n];
        let incremental = matches!(start, Start::Join { .. } | Start::Leave { .. } | Start::Refresh);
        let Some(done) = self.done.clone().filter(|_| incremental) else {
            let br = blind(&r, ctx);
            let (kind, body) = Msg::Share(br).encode();
            ctx.send(Dest::All, kind, body);
            self.run = Some(Run { r, shares, role: Role::Collect, top: None });
            return Ok(None);
        };
        let wait = |joiners_from| Role::Wait { base: ctx.base, joiners_from };
        match start {
            Start::Join { old } if p + 1 == *old => {
                self.run = Some(Run { r, shares, role: Role::JoinSponsor { old: *old }, top: None });
                Ok(None)
            }
            Start::Join { old } => {
                self.run = Some(Run { r: done.r, shares, role: wait(*old), top: None });
                Ok(None)
            }
            Start::Leave { old } => {
                let lowest = old.iter().position(|m| !ctx.view.members.contains(m)).unwrap_or(0);
                let sponsor = if lowest == 0 { 0 } else { lowest - 1 };
                if p != sponsor {
                    self.run = Some(Run { r: done.r, shares, role: wait(n), top: None });
                    return Ok(None);
                }
                let mut brs = Vec::with_capacity(n);
                for m in &ctx.view.members {
                    let i = done
                        .members
                        .iter()
                        .position(|d| d == m)
                        .ok_or(LayeredError::RunFailed("no leaf key"))?;
                    brs.push(done.brs[i]);
                }
                brs[p] = blind(&r, ctx);
                let run = Self::sponsor(ctx, ctx.base, r, brs, &done.bks[..p])?;
                self.run = Some(run);
                Ok(None)
            }
            _ => {
                // Refresh: the top member renews its leaf.
                if p + 1 != n {
                    self.run = Some(Run { r: done.r, shares, role: wait(n), top: None });
                    return Ok(None);
                }
                let mut brs = done.brs.clone();
                brs[p] = blind(&r, ctx);
                let run = Self::sponsor(ctx, ctx.base, r, brs, &done.bks[..p])?;
                self.run = Some(run);
                Ok(None)
            }
        }
    }

    /// Climbs from the sponsor's position `s` with its fresh `r`, sends the Tree.
    fn sponsor(
        ctx: &mut Ctx<'_>,
        base: [u8; 32],
        r: StaticSecret,
        brs: Vec<Bk>,
        below: &[Bk],
    ) -> Result<Run, LayeredError> {
        let (n, s) = (ctx.n(), ctx.pos());
        let mut k = if s == 0 {
            r.clone()
        } else {
            node(&r, &below[s - 1], ctx).ok_or(LayeredError::RunFailed("weak key"))?
        };
        let mut bks = below.to_vec();
        for br in &brs[s + 1..n] {
            bks.push(blind(&k, ctx));
            k = node(&k, br, ctx).ok_or(LayeredError::RunFailed("weak key"))?;
        }
        let (kind, body) = Msg::Tree { base, brs, bks }.encode();
        ctx.send(Dest::All, kind, body);
        let role = Role::Wait { base, joiners_from: n };
        Ok(Run { r, shares: vec![None; n], role, top: Some(k) })
    }

    pub(crate) fn handle(&mut self, ctx: &mut Ctx<'_>, from: u32, kind: u8, body: &[u8]) -> Step {
        let msg = Msg::decode(kind, body)?;
        let run = self.run.as_ref().ok_or(fault(from, Fault::Unexpected))?;
        let (n, p) = (ctx.n(), ctx.pos());
        let q = ctx.pos_of(from).ok_or(LayeredError::NotAMember { from })?;
        match msg {
            Msg::Share(br) => {
                let allowed = match run.role {
                    Role::Collect => true,
                    Role::JoinSponsor { old } | Role::Wait { joiners_from: old, .. } => q >= old,
                };
                if !allowed || run.shares[q].is_some() {
                    return Err(fault(from, Fault::Unexpected));
                }
                let mut run = run.clone();
                run.shares[q] = Some(br);
                let complete = |from: usize| run.shares[from..].iter().all(Option::is_some);
                match run.role {
                    Role::Collect if p == 0 && complete(0) => {
                        let brs: Vec<Bk> = run.shares.iter().map(|s| s.expect("all in")).collect();
                        run = Self::sponsor(ctx, [0; 32], run.r.clone(), brs, &[])?;
                    }
                    Role::JoinSponsor { old } if complete(old) => {
                        let done = self.done.as_ref().ok_or(LayeredError::RunFailed("no previous chain"))?;
                        let mut brs = done.brs.clone();
                        brs[p] = blind(&run.r, ctx);
                        brs.extend(run.shares[old..].iter().map(|s| s.expect("all in")));
                        let below = done.bks[..p].to_vec();
                        run = Self::sponsor(ctx, ctx.base, run.r.clone(), brs, &below)?;
                    }
                    _ => {}
                }
                self.run = Some(run);
                Ok(None)
            }
            Msg::Tree { base, brs, bks } => {
                if brs.len() != n || bks.len() + 1 != n {
                    return Err(fault(from, Fault::WrongMembers));
                }
                match &run.role {
                    Role::Wait { base: expected, .. } => {
                        if *expected != base && *expected != [0; 32] {
                            return Err(fault(from, Fault::BaseMismatch));
                        }
                    }
                    Role::Collect => {
                        let all_in = run.shares.iter().all(Option::is_some);
                        let sponsor = if all_in {
                            Some(0)
                        } else if let Change::Join { joined } = &ctx.view.change {
                            joined.first().and_then(|&j| ctx.pos_of(j)).and_then(|i| i.checked_sub(1))
                        } else {
                            None
                        };
                        if sponsor != Some(q) {
                            return Err(fault(from, Fault::WrongSender));
                        }
                        if run.shares.iter().zip(&brs).any(|(s, b)| s.is_some_and(|s| s != *b)) {
                            return Err(fault(from, Fault::WrongMembers));
                        }
                    }
                    Role::JoinSponsor { .. } => return Err(fault(from, Fault::Unexpected)),
                }
                if brs[p] != PublicKey::from(&run.r).to_bytes() {
                    return Err(fault(from, Fault::OwnValueMismatch));
                }
                let top = match &run.top {
                    Some(top) => top.clone(),
                    None => {
                        let mut k = if p == 0 {
                            run.r.clone()
                        } else {
                            node(&run.r, &bks[p - 1], ctx).ok_or(fault(from, Fault::WeakElement))?
                        };
                        for br in &brs[p + 1..] {
                            k = node(&k, br, ctx).ok_or(fault(from, Fault::WeakElement))?;
                        }
                        k
                    }
                };
                let run = self.run.take().expect("checked above");
                self.done = Some(Done { members: ctx.view.members.clone(), r: run.r, brs, bks });
                Ok(Some(Zeroizing::new(top.to_bytes().to_vec())))
            }
        }
    }
}

fn random_secret(ctx: &mut Ctx<'_>) -> StaticSecret {
    let mut bytes = [0; 32];
    ctx.rng.fill_bytes(&mut bytes);
    let secret = StaticSecret::from(bytes);
    bytes.zeroize();
    secret
}

fn blind(k: &StaticSecret, ctx: &mut Ctx<'_>) -> Bk {
    ctx.costs.exponentiations += 1;
    PublicKey::from(k).to_bytes()
}

/// The parent secret from one side's secret and the other side's blinded
/// key; `None` if the blinded key is of low order.
fn node(k: &StaticSecret, other: &Bk, ctx: &mut Ctx<'_>) -> Option<StaticSecret> {
    ctx.costs.exponentiations += 1;
    let shared = k.diffie_hellman(&PublicKey::from(*other));
    if !shared.was_contributory() {
        return None;
    }
    let mut bytes: [u8; 32] =
        Sha256::new().chain_update(NODE_LABEL).chain_update(shared.as_bytes()).finalize().into();
    let secret = StaticSecret::from(bytes);
    bytes.zeroize();
    Some(secret)
}
