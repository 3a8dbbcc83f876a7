//! Group Diffie-Hellman, IKA.2 (Steiner, Tsudik, Waidner, "Key agreement in
//! dynamic peer groups", IEEE TPDS 11(8), 2000; the Cliques GDH of Secure
//! Spread) over ristretto255, written additively: `r·P` is an
//! "exponentiation".
//!
//! Members `M_0 .. M_{n−1}` in view order; the newest, `M_{n−1}`, is the
//! group controller. Every member keeps the last run's *partial keys*
//! `P_i = (Π_{j≠i} r_j)·g`, one per member; its key secret is `r_i·P_i =
//! (Π r_j)·g`, the same at every member.
//!
//! Full run (IKA.2: any view the state does not fit, a merge, a cascade):
//!
//! ```text
//!   upflow     M_0 → M_1 → … → M_{n−2}:   C_i = r_i·C_{i−1}  (unicast, Upflow)
//!   broadcast  M_{n−2} → all:             C = (r_0 … r_{n−2})·g  (Cumulative)
//!   factor-out every M_i, i < n−1 → M_{n−1}:  F_i = r_i⁻¹·C      (unicast, FactorOut)
//!   final      M_{n−1} → all:   P_i = r_{n−1}·F_i, and P_{n−1} = C   (Final)
//! ```
//!
//! Join (Cliques AKA join, the joiners listed last): the old controller
//! `M_s` picks `r̂`, sets `P_i ← r̂·P_i` for the old members but itself,
//! `r_s ← r_s·r̂`, and sends the list with `C = r_s·P_s` to the first
//! joiner (JoinUpflow). Each joiner raises every entry and `C` by its `r`,
//! appends the old `C` as its own partial, and passes the list on; the last
//! joiner, the new controller, raises the list by its `r` and broadcasts it
//! (Final). Leave, partition and refresh (Cliques AKA leave): the
//! controller (the last member of the new view) picks `r̂`, raises every
//! other remaining member's partial by it, multiplies its own `r` by it, and
//! broadcasts the list (Final): one message.
//!
//! Incremental runs carry a digest of the last completed state; a member
//! of that state refuses a Final built on another one
//! ([`Fault::BaseMismatch`]) instead of computing a wrong key.

use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use zeroize::Zeroizing;

use super::bd::random_scalar;
use super::wire::{DecodeError, Reader, put_count, put_point};
use super::{Ctx, Dest, Fault, LayeredError, Start, Step, fault};

const KIND_UPFLOW: u8 = 1;
const KIND_CUMULATIVE: u8 = 2;
const KIND_FACTOR_OUT: u8 = 3;
const KIND_FINAL: u8 = 4;
const KIND_JOIN_UPFLOW: u8 = 5;

/// A GDH message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    /// IKA.2 upflow: the cumulative value so far, to the next member.
    Upflow(RistrettoPoint),
    /// IKA.2: the cumulative value of all but the controller, to everyone.
    Cumulative(RistrettoPoint),
    /// IKA.2 factor-out: `r_i⁻¹·C`, to the controller.
    FactorOut(RistrettoPoint),
    /// The partial keys of every member, in view order, from the controller.
    Final {
        /// The digest of the state an incremental run builds on; zeros for a full run.
        base: [u8; 32],
        /// One per member.
        partials: Vec<RistrettoPoint>,
    },
    /// Join upflow: the partials of the members before the receiver, and the cumulative value.
    JoinUpflow {
        /// The digest of the old members' state.
        base: [u8; 32],
        /// One per member before the receiver, in view order.
        partials: Vec<RistrettoPoint>,
        /// The product of every contribution so far, times `g`.
        cumulative: RistrettoPoint,
    },
}

impl Msg {
    pub(crate) fn decode(kind: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match kind {
            KIND_UPFLOW => Self::Upflow(r.point()?),
            KIND_CUMULATIVE => Self::Cumulative(r.point()?),
            KIND_FACTOR_OUT => Self::FactorOut(r.point()?),
            KIND_FINAL => {
                let base = r.array()?;
                let n = r.count(1)?;
                let partials = (0..n).map(|_| r.point()).collect::<Result<_, _>>()?;
                Self::Final { base, partials }
            }
            KIND_JOIN_UPFLOW => {
                let base = r.array()?;
                let n = r.count(1)?;
                let partials = (0..n).map(|_| r.point()).collect::<Result<_, _>>()?;
                let cumulative = r.point()?;
                Self::JoinUpflow { base, partials, cumulative }
            }
            k => return Err(DecodeError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(msg)
    }

    pub(crate) fn encode(&self) -> (u8, Vec<u8>) {
        let mut out = Vec::new();
        let kind = match self {
            Self::Upflow(p) => {
                put_point(&mut out, p);
                KIND_UPFLOW
            }
            Self::Cumulative(p) => {
                put_point(&mut out, p);
                KIND_CUMULATIVE
            }
            Self::FactorOut(p) => {
                put_point(&mut out, p);
                KIND_FACTOR_OUT
            }
            Self::Final { base, partials } => {
                out.extend_from_slice(base);
                put_count(&mut out, partials.len());
                partials.iter().for_each(|p| put_point(&mut out, p));
                KIND_FINAL
            }
            Self::JoinUpflow { base, partials, cumulative } => {
                out.extend_from_slice(base);
                put_count(&mut out, partials.len());
                partials.iter().for_each(|p| put_point(&mut out, p));
                put_point(&mut out, cumulative);
                KIND_JOIN_UPFLOW
            }
        };
        (kind, out)
    }
}

#[derive(Clone, Default)]
pub(crate) struct GdhCore {
    done: Option<Done>,
    run: Option<Run>,
}

/// The last completed run: members, own contribution, everyone's partial key.
#[derive(Clone)]
struct Done {
    members: Vec<u32>,
    r: Zeroizing<Scalar>,
    partials: Vec<RistrettoPoint>,
}

#[derive(Clone)]
struct Run {
    r: Zeroizing<Scalar>,
    phase: Phase,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// A newcomer after the first member: an IKA.2 upflow or cumulative value, or a join upflow, comes next.
    Newcomer,
    /// IKA.2, a member between the first and the controller: waiting for the upflow.
    Upflow,
    /// IKA.2: waiting for the cumulative broadcast to factor out.
    Cumulative,
    /// IKA.2 controller: collecting the cumulative value and the factor-outs.
    Collect { cumulative: Option<RistrettoPoint>, factors: Vec<Option<RistrettoPoint>> },
    /// Waiting for the controller's final broadcast; `Some(base)` if the run builds on a known state.
    Final { base: Option<[u8; 32]> },
}

impl GdhCore {
    pub(crate) fn start(&mut self, ctx: &mut Ctx<'_>, start: &Start) -> Step {
        self.run = None;
        let (n, p) = (ctx.n(), ctx.pos());
        if n == 1 {
            let r = random_scalar(ctx);
            let partials = vec![RistrettoPoint::mul_base(&Scalar::ONE)];
            return Ok(Some(self.complete(ctx, r, partials)));
        }
        let incremental = match start {
            Start::Join { old } => Some(Some(*old)),
            Start::Leave { .. } | Start::Refresh => Some(None),
            Start::Full | Start::Newcomer => None,
        };
        if let (Some(mode), Some(done)) = (incremental, &self.done) {
            let done = done.clone();
            return match mode {
                Some(old) => self.start_join(ctx, old, done),
                None => self.start_leave(ctx, done),
            };
        }
        let r = random_scalar(ctx);
        let phase = if p == 0 {
            ctx.costs.exponentiations += 1;
            let c = RistrettoPoint::mul_base(&r);
            let (kind, body) = if n == 2 { Msg::Cumulative(c) } else { Msg::Upflow(c) }.encode();
            let dest = if n == 2 { Dest::All } else { Dest::Member(ctx.view.members[1]) };
            ctx.send(dest, kind, body);
            Phase::Cumulative
        } else if *start == Start::Newcomer {
            Phase::Newcomer
        } else if p == n - 1 {
            Phase::Collect { cumulative: None, factors: vec![None; n - 1] }
        } else {
            Phase::Upflow
        };
        self.run = Some(Run { r, phase });
        Ok(None)
    }

    /// The old controller starts the join upflow; the other old members wait.
    fn start_join(&mut self, ctx: &mut Ctx<'_>, old: usize, done: Done) -> Step {
        let p = ctx.pos();
        if p + 1 != old {
            self.run = Some(Run { r: done.r, phase: Phase::Final { base: Some(ctx.base) } });
            return Ok(None);
        }
        let hat = random_scalar(ctx);
        let r = Zeroizing::new(*done.r * *hat);
        let mut partials = Vec::with_capacity(old);
        for (i, partial) in done.partials.iter().enumerate() {
            partials.push(if i == p { *partial } else { *hat * partial });
        }
        let cumulative = *r * done.partials[p];
        ctx.costs.exponentiations += old as u64;
        let (kind, body) = Msg::JoinUpflow { base: ctx.base, partials, cumulative }.encode();
        ctx.send(Dest::Member(ctx.view.members[old]), kind, body);
        self.run = Some(Run { r, phase: Phase::Final { base: Some(ctx.base) } });
        Ok(None)
    }

    /// The controller of the smaller (or same) view refreshes its share and broadcasts.
    fn start_leave(&mut self, ctx: &mut Ctx<'_>, done: Done) -> Step {
        let (n, p) = (ctx.n(), ctx.pos());
        if p + 1 != n {
            self.run = Some(Run { r: done.r, phase: Phase::Final { base: Some(ctx.base) } });
            return Ok(None);
        }
        let hat = random_scalar(ctx);
        let r = Zeroizing::new(*done.r * *hat);
        let mut partials = Vec::with_capacity(n);
        for &m in &ctx.view.members {
            let Some(i) = done.members.iter().position(|&d| d == m) else {
                return Err(LayeredError::RunFailed("a member of the view has no partial key"));
            };
            partials.push(if m == ctx.me { done.partials[i] } else { *hat * done.partials[i] });
        }
        ctx.costs.exponentiations += n as u64 - 1;
        let (kind, body) = Msg::Final { base: ctx.base, partials }.encode();
        ctx.send(Dest::All, kind, body);
        self.run = Some(Run { r, phase: Phase::Final { base: Some(ctx.base) } });
        Ok(None)
    }

    pub(crate) fn handle(&mut self, ctx: &mut Ctx<'_>, from: u32, kind: u8, body: &[u8]) -> Step {
        let msg = Msg::decode(kind, body)?;
        let run = self.run.as_mut().ok_or(fault(from, Fault::Unexpected))?;
        let (n, p) = (ctx.n(), ctx.pos());
        let q = ctx.pos_of(from).ok_or(LayeredError::NotAMember { from })?;
        let pred = p.checked_sub(1).map(|i| ctx.view.members[i]);
        let weak = |pt: &RistrettoPoint| *pt == RistrettoPoint::identity();
        match (msg, &mut run.phase) {
            (Msg::Upflow(c), Phase::Upflow | Phase::Newcomer) if p < n - 1 => {
                if Some(from) != pred {
                    return Err(fault(from, Fault::WrongSender));
                }
                if weak(&c) {
                    return Err(fault(from, Fault::WeakElement));
                }
                ctx.costs.exponentiations += 1;
                let c = *run.r * c;
                let (dest, msg) = if p == n - 2 {
                    (Dest::All, Msg::Cumulative(c))
                } else {
                    (Dest::Member(ctx.view.members[p + 1]), Msg::Upflow(c))
                };
                let (kind, body) = msg.encode();
                ctx.send(dest, kind, body);
                run.phase = Phase::Cumulative;
                Ok(None)
            }
            (Msg::Cumulative(c), phase) => {
                if q + 2 != n {
                    return Err(fault(from, Fault::WrongSender));
                }
                if weak(&c) {
                    return Err(fault(from, Fault::WeakElement));
                }
                match phase {
                    Phase::Cumulative => {
                        ctx.costs.inversions += 1;
                        ctx.costs.exponentiations += 1;
                        let f = run.r.invert() * c;
                        let (kind, body) = Msg::FactorOut(f).encode();
                        ctx.send(Dest::Member(ctx.view.members[n - 1]), kind, body);
                        run.phase = Phase::Final { base: None };
                        Ok(None)
                    }
                    Phase::Newcomer if p == n - 1 => {
                        run.phase = Phase::Collect { cumulative: Some(c), factors: vec![None; n - 1] };
                        Ok(None)
                    }
                    Phase::Collect { cumulative: cumulative @ None, .. } => {
                        *cumulative = Some(c);
                        self.try_final(ctx);
                        Ok(None)
                    }
                    _ => Err(fault(from, Fault::Unexpected)),
                }
            }
            (Msg::FactorOut(f), Phase::Collect { factors, .. }) => {
                if q + 1 >= n {
                    return Err(fault(from, Fault::WrongSender));
                }
                if factors[q].is_some() {
                    return Err(fault(from, Fault::Unexpected));
                }
                if weak(&f) {
                    return Err(fault(from, Fault::WeakElement));
                }
                factors[q] = Some(f);
                self.try_final(ctx);
                Ok(None)
            }
            (Msg::JoinUpflow { base, partials, cumulative }, Phase::Newcomer) => {
                if Some(from) != pred {
                    return Err(fault(from, Fault::WrongSender));
                }
                if partials.len() != p {
                    return Err(fault(from, Fault::WrongMembers));
                }
                if weak(&cumulative) || partials.iter().any(weak) {
                    return Err(fault(from, Fault::WeakElement));
                }
                let r = *run.r;
                let mut raised: Vec<RistrettoPoint> = partials.iter().map(|pt| r * pt).collect();
                raised.push(cumulative);
                ctx.costs.exponentiations += p as u64;
                let msg = if p == n - 1 {
                    Msg::Final { base, partials: raised }
                } else {
                    ctx.costs.exponentiations += 1;
                    Msg::JoinUpflow { base, partials: raised, cumulative: r * cumulative }
                };
                let dest = if p == n - 1 { Dest::All } else { Dest::Member(ctx.view.members[p + 1]) };
                let (kind, body) = msg.encode();
                ctx.send(dest, kind, body);
                run.phase = Phase::Final { base: None };
                Ok(None)
            }
            (Msg::Final { base, partials }, Phase::Final { base: expected }) => {
                if q + 1 != n {
                    return Err(fault(from, Fault::WrongSender));
                }
                if partials.len() != n {
                    return Err(fault(from, Fault::WrongMembers));
                }
                if partials.iter().any(weak) {
                    return Err(fault(from, Fault::WeakElement));
                }
                if expected.is_some_and(|b| b != base) {
                    return Err(fault(from, Fault::BaseMismatch));
                }
                let run = self.run.take().expect("matched above");
                Ok(Some(self.complete(ctx, run.r, partials)))
            }
            _ => Err(fault(from, Fault::Unexpected)),
        }
    }

    /// The IKA.2 controller, once it holds the cumulative value and every factor-out, sends the final list.
    fn try_final(&mut self, ctx: &mut Ctx<'_>) {
        let Some(run) = self.run.as_mut() else { return };
        let Phase::Collect { cumulative: Some(c), factors } = &run.phase else { return };
        if factors.iter().any(Option::is_none) {
            return;
        }
        let mut partials: Vec<RistrettoPoint> =
            factors.iter().map(|f| *run.r * f.expect("all known")).collect();
        partials.push(*c);
        ctx.costs.exponentiations += partials.len() as u64 - 1;
        let (kind, body) = Msg::Final { base: [0; 32], partials }.encode();
        ctx.send(Dest::All, kind, body);
        run.phase = Phase::Final { base: None };
    }

    /// Takes the key `r·P_me` and keeps the state for the next incremental run.
    fn complete(
        &mut self,
        ctx: &mut Ctx<'_>,
        r: Zeroizing<Scalar>,
        partials: Vec<RistrettoPoint>,
    ) -> super::Secret {
        ctx.costs.exponentiations += 1;
        let key = *r * partials[ctx.pos()];
        self.done = Some(Done { members: ctx.view.members.clone(), r, partials });
        Zeroizing::new(key.compress().to_bytes().to_vec())
    }
}
