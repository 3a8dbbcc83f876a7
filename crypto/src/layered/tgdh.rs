//! TGDH for a client group: the daemons' [`crate::tgdh::Tgdh`] state machine,
//! reused as it is, under the layered agreement's signing, epochs and key
//! derivation.
//!
//! The server TGDH already fits a VS client group: it needs a totally
//! ordered broadcast within one view (VS agreed delivery), starts a run for
//! every new member set with one announcement per member, merges and prunes
//! trees from those announcements (join, leave, merge and partition alike,
//! robust to cascades), and refreshes one leaf for a refresh. The view's
//! epoch is its round. Its group key (SHA-256 of the root secret) is the
//! secret hashed into the [`LayeredKey`](super::LayeredKey).

use super::wire::DecodeError;
use super::{Costs, Ctx, Dest, Fault, LayeredError, Start, Step, fault};
use crate::tgdh::{Message, Tgdh, TgdhError};

/// The only message kind: the TGDH message carries its own tag.
const KIND: u8 = 0;

pub(crate) fn decode(kind: u8, body: &[u8]) -> Result<Message, DecodeError> {
    if kind != KIND {
        return Err(DecodeError::UnknownKind(kind));
    }
    Message::decode(body).map_err(DecodeError::Tgdh)
}

#[derive(Clone)]
pub(crate) struct TgdhCore {
    tgdh: Tgdh,
}

impl TgdhCore {
    pub(crate) fn new(me: u32, rng: &mut dyn rand::CryptoRng, costs: &mut Costs) -> Self {
        let tgdh = Tgdh::new(me, &mut { rng });
        costs.exponentiations += tgdh.x25519_ops();
        Self { tgdh }
    }

    pub(crate) fn start(&mut self, ctx: &mut Ctx<'_>, start: &Start) -> Step {
        let before = self.tgdh.x25519_ops();
        let mut sorted = ctx.view.members.clone();
        sorted.sort_unstable();
        let refresh = *start == Start::Refresh && self.tgdh.is_done() && self.tgdh.members() == sorted;
        let epoch = ctx.view.epoch;
        let result = if refresh {
            self.tgdh.refresh(epoch, &mut ctx.rng)
        } else {
            self.tgdh.start(epoch, &ctx.view.members, &mut ctx.rng)
        };
        self.after(ctx, before, result)
    }

    pub(crate) fn handle(&mut self, ctx: &mut Ctx<'_>, from: u32, kind: u8, body: &[u8]) -> Step {
        let msg = decode(kind, body)?;
        let before = self.tgdh.x25519_ops();
        let result = self.tgdh.handle(from, &msg, &mut ctx.rng);
        self.after(ctx, before, result)
    }

    /// Sends what TGDH returned and takes the key once the run is complete.
    fn after(&mut self, ctx: &mut Ctx<'_>, before: u64, result: Result<Vec<Message>, TgdhError>) -> Step {
        ctx.costs.exponentiations += self.tgdh.x25519_ops() - before;
        let msgs = result.map_err(|e| match e {
            TgdhError::Peer { from, fault: f } => fault(from, Fault::Tgdh(f)),
            TgdhError::RunFailed(why) => LayeredError::RunFailed(why),
            TgdhError::ApiMisuse(why) => LayeredError::ApiMisuse(why),
        })?;
        for msg in msgs {
            ctx.send(Dest::All, KIND, msg.to_bytes());
        }
        Ok(self
            .tgdh
            .key()
            .filter(|_| self.tgdh.round().is_none())
            .map(|(_, key)| zeroize::Zeroizing::new(key.as_bytes().to_vec())))
    }
}
