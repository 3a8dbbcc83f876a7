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
//!
//! **Sponsored join and leave** (the paper's sections 4.1, 4.2 and 4.4:
//! only the sponsor does the work). When the view is an incremental change
//! of this member's last completed view (`Start::Leave`, `Start::Join`),
//! the members that held that view do not announce: they all hold the same
//! tree (virtual synchrony), so on a leave or partition each computes the
//! announcements alone ([`Tgdh::start_leave`]) and the sponsor's `Keys` is
//! the only message; on a join the lowest old member (the speaker) sends
//! its announcement with the tree (message kind [`KIND_SHARED`]), the
//! newcomers announce, and the others' announcements are read from the
//! tree ([`Tgdh::handle_shared_tree`]). The tree, sponsors and key are those
//! of the full run. Merges, first views and cascades (a run cut short) run
//! in full, as before.

use super::wire::DecodeError;
use super::{Change, Costs, Ctx, Dest, Fault, LayeredError, Start, Step, fault};
use crate::tgdh::{Message, PeerFault, Tgdh, TgdhError};

/// A TGDH message (it carries its own tag).
const KIND: u8 = 0;
/// The speaker's announcement of a sponsored join: the old members'
/// announcements are to be read from its tree.
const KIND_SHARED: u8 = 1;

pub(crate) fn decode(kind: u8, body: &[u8]) -> Result<Message, DecodeError> {
    if kind != KIND && kind != KIND_SHARED {
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
        let done = self.tgdh.is_done();
        let epoch = ctx.view.epoch;
        let members = &ctx.view.members;
        let (result, kind) = match start {
            Start::Refresh if done && self.tgdh.members() == sorted => {
                (self.tgdh.refresh(epoch, &mut ctx.rng), KIND)
            }
            Start::Leave { .. } if done => match self.tgdh.start_leave(epoch, members, &mut ctx.rng) {
                Err(TgdhError::ApiMisuse(_)) => (self.tgdh.start(epoch, members, &mut ctx.rng), KIND),
                r => (r, KIND),
            },
            Start::Join { .. } if done => match self.tgdh.start_join(epoch, members, &mut ctx.rng) {
                Err(TgdhError::ApiMisuse(_)) => (self.tgdh.start(epoch, members, &mut ctx.rng), KIND),
                r => (r, KIND_SHARED),
            },
            _ => (self.tgdh.start(epoch, members, &mut ctx.rng), KIND),
        };
        self.after(ctx, before, result, kind)
    }

    pub(crate) fn handle(&mut self, ctx: &mut Ctx<'_>, from: u32, kind: u8, body: &[u8]) -> Step {
        let msg = decode(kind, body)?;
        let before = self.tgdh.x25519_ops();
        let result = if kind == KIND_SHARED {
            // The old members of a join: everyone not listed as joined.
            let Change::Join { joined } = &ctx.view.change else {
                return Err(fault(from, Fault::Tgdh(PeerFault::NotASharedTree)));
            };
            let old: Vec<u32> = ctx.view.members.iter().copied().filter(|m| !joined.contains(m)).collect();
            self.tgdh.handle_shared_tree(from, &msg, &old, &mut ctx.rng)
        } else {
            self.tgdh.handle(from, &msg, &mut ctx.rng)
        };
        self.after(ctx, before, result, KIND)
    }

    /// Sends what TGDH returned and takes the key once the run is complete.
    fn after(
        &mut self,
        ctx: &mut Ctx<'_>,
        before: u64,
        result: Result<Vec<Message>, TgdhError>,
        kind: u8,
    ) -> Step {
        ctx.costs.exponentiations += self.tgdh.x25519_ops() - before;
        let msgs = result.map_err(|e| match e {
            TgdhError::Peer { from, fault: f } => fault(from, Fault::Tgdh(f)),
            TgdhError::RunFailed(why) => LayeredError::RunFailed(why),
            TgdhError::ApiMisuse(why) => LayeredError::ApiMisuse(why),
        })?;
        for msg in msgs {
            ctx.send(Dest::All, kind, msg.to_bytes());
        }
        Ok(self
            .tgdh
            .key()
            .filter(|_| self.tgdh.round().is_none())
            .map(|(_, key)| zeroize::Zeroizing::new(key.as_bytes().to_vec())))
    }
}
