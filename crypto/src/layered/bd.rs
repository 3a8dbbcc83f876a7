//! Burmester-Desmedt ("A secure and efficient conference key distribution
//! system", EUROCRYPT 1994) over ristretto255, written additively: `g` is the
//! base point, `r·P` a scalar multiplication.
//!
//! The members sit on a ring in view order, `M_0 .. M_{n-1}`, indices mod `n`.
//!
//! ```text
//!   round 1  every M_i broadcasts  z_i = r_i·g                  (Z)
//!   round 2  every M_i broadcasts  X_i = r_i·(z_{i+1} − z_{i−1}) (X)
//!   key      K = n·r_i·z_{i−1} + (n−1)·X_i + (n−2)·X_{i+1} + … + 1·X_{i+n−2}
//!              = (r_0 r_1 + r_1 r_2 + … + r_{n−1} r_0)·g   at every member
//! ```
//!
//! The weighted sum is computed with point additions only (running partial
//! sums), so each member does three scalar multiplications per run whatever
//! the group size: `z_i`, `X_i` and `n·r_i·z_{i−1}`. The `X_i` of a run sum
//! to the identity; a member checks that before taking the key, which
//! catches a member that sent a wrong `X`. BD has no incremental operations:
//! every view (join, leave, merge, partition, refresh) runs both rounds with
//! fresh `r_i`, which is the paper's treatment. A member alone draws a
//! random secret and sends nothing.

use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use zeroize::Zeroizing;

use super::wire::{DecodeError, Reader, put_point};
use super::{Ctx, Dest, Fault, LayeredError, Secret, Step, fault};

const KIND_Z: u8 = 1;
const KIND_X: u8 = 2;

/// A BD message: one group element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    /// Round 1: `z_i = r_i·g`.
    Z(RistrettoPoint),
    /// Round 2: `X_i = r_i·(z_{i+1} − z_{i−1})`.
    X(RistrettoPoint),
}

impl Msg {
    pub(crate) fn decode(kind: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match kind {
            KIND_Z => Self::Z(r.point()?),
            KIND_X => Self::X(r.point()?),
            k => return Err(DecodeError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(msg)
    }

    fn encode(&self) -> (u8, Vec<u8>) {
        let mut out = Vec::with_capacity(32);
        let kind = match self {
            Self::Z(p) => {
                put_point(&mut out, p);
                KIND_Z
            }
            Self::X(p) => {
                put_point(&mut out, p);
                KIND_X
            }
        };
        (kind, out)
    }
}

#[derive(Clone, Default)]
pub(crate) struct BdCore {
    run: Option<Run>,
}

#[derive(Clone)]
struct Run {
    r: Zeroizing<Scalar>,
    z: Vec<Option<RistrettoPoint>>,
    x: Vec<Option<RistrettoPoint>>,
}

impl BdCore {
    pub(crate) fn start(&mut self, ctx: &mut Ctx<'_>) -> Step {
        self.run = None;
        let n = ctx.n();
        if n == 1 {
            return Ok(Some(random_secret(ctx)));
        }
        let r = random_scalar(ctx);
        ctx.costs.exponentiations += 1;
        let z = RistrettoPoint::mul_base(&r);
        let (kind, body) = Msg::Z(z).encode();
        ctx.send(Dest::All, kind, body);
        self.run = Some(Run { r, z: vec![None; n], x: vec![None; n] });
        Ok(None)
    }

    pub(crate) fn handle(&mut self, ctx: &mut Ctx<'_>, from: u32, kind: u8, body: &[u8]) -> Step {
        let msg = Msg::decode(kind, body)?;
        let run = self.run.as_mut().ok_or(fault(from, Fault::Unexpected))?;
        let n = ctx.n();
        let p = ctx.pos_of(from).ok_or(LayeredError::NotAMember { from })?;
        let me = ctx.pos();
        match msg {
            Msg::Z(z) => {
                if run.z[p].is_some() {
                    return Err(fault(from, Fault::Unexpected));
                }
                if z == RistrettoPoint::identity() {
                    return Err(fault(from, Fault::WeakElement));
                }
                run.z[p] = Some(z);
                if run.z.iter().all(Option::is_some) {
                    let next = run.z[(me + 1) % n].expect("all known");
                    let prev = run.z[(me + n - 1) % n].expect("all known");
                    ctx.costs.exponentiations += 1;
                    let x = *run.r * (next - prev);
                    let (kind, body) = Msg::X(x).encode();
                    ctx.send(Dest::All, kind, body);
                }
                Ok(None)
            }
            Msg::X(x) => {
                if run.x[p].is_some() || run.z.iter().any(Option::is_none) {
                    return Err(fault(from, Fault::Unexpected));
                }
                run.x[p] = Some(x);
                if run.x.iter().any(Option::is_none) {
                    return Ok(None);
                }
                let xs: Vec<RistrettoPoint> = run.x.iter().map(|x| x.expect("all known")).collect();
                let total: RistrettoPoint = xs.iter().sum();
                if total != RistrettoPoint::identity() {
                    self.run = None;
                    return Err(LayeredError::RunFailed("the BD round-2 values do not sum to the identity"));
                }
                let prev = run.z[(me + n - 1) % n].expect("all known");
                ctx.costs.exponentiations += 1;
                let mut key = (Scalar::from(n as u64) * *run.r) * prev;
                // Σ_{j=0}^{n-2} (n-1-j)·X_{me+j} = Σ_{k=1}^{n-1} S_k with S_k = Σ_{j<k} X_{me+j}.
                let mut partial = RistrettoPoint::identity();
                for j in 0..n - 1 {
                    partial += xs[(me + j) % n];
                    key += partial;
                }
                self.run = None;
                Ok(Some(Zeroizing::new(key.compress().to_bytes().to_vec())))
            }
        }
    }
}

/// A uniformly random non-zero scalar.
pub(crate) fn random_scalar(ctx: &mut Ctx<'_>) -> Zeroizing<Scalar> {
    loop {
        let mut wide = Zeroizing::new([0u8; 64]);
        ctx.rng.fill_bytes(wide.as_mut());
        let s = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide));
        if *s != Scalar::ZERO {
            return s;
        }
    }
}

/// 32 random bytes as the secret of a member alone.
pub(crate) fn random_secret(ctx: &mut Ctx<'_>) -> Secret {
    let mut secret = Zeroizing::new(vec![0u8; 32]);
    ctx.rng.fill_bytes(&mut secret);
    secret
}
