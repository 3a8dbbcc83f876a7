//! The daemon core's frame encoder: every frame for a client is encoded once
//! into a reference-counted buffer ([`Bytes`], length prefix included, as on
//! the wire) that the session threads write as it is.
//!
//! A delivered message goes to every local member of its groups; the groups
//! layer yields it once per member, in a row. The encoder remembers the last
//! message it encoded and hands out the same buffer again for the same
//! message, so a fan-out to many clients costs one encoding.
//!
//! `Message` frames of up to [`SMALL_FRAME`] bytes are written one after
//! another into a shared block of [`BLOCK`] bytes and split off it, so in
//! steady state a message costs no allocation (one per block). The price: a
//! slow client's queued frame keeps its whole block alive, at most
//! `BLOCK / frame length` times the frame's own size. Larger frames get a
//! buffer of their own.

use crate::Service;
use crate::groups::PrivateName;
use crate::wire::Groups;
use crate::wire::client::{ClientEncodeError, DaemonFrame, FRAME_HEADER_LEN, Frame, Limits, encode_message};
use bytes::{Bytes, BytesMut};
use std::fmt::Write as _;

/// Bytes of a block that small `Message` frames share.
const BLOCK: usize = 64 * 1024;
/// The largest frame written into a shared block.
const SMALL_FRAME: usize = BLOCK / 16;
/// What [`encode_message`] may reserve beyond the frame's exact length.
const SLACK: usize = 128;

/// The last message encoded, and what identifies it.
#[derive(Debug)]
struct LastMessage {
    sender: PrivateName,
    groups: Groups,
    service: Service,
    msg_type: u16,
    sealed: bool,
    /// Held, so its address cannot be reused by another payload while
    /// remembered.
    payload: Bytes,
    frame: Bytes,
}

impl LastMessage {
    /// Whether this is the message with these parts.
    fn is(
        &self,
        sender: &PrivateName,
        groups: &Groups,
        service: Service,
        msg_type: u16,
        payload: &Bytes,
    ) -> bool {
        self.payload.as_ptr() == payload.as_ptr()
            && self.payload.len() == payload.len()
            && self.service == service
            && self.msg_type == msg_type
            && self.sender == *sender
            && self.groups == *groups
    }
}

/// Encodes frames for clients into shared buffers (see the module doc).
#[derive(Debug)]
pub(super) struct Encoder {
    limits: Limits,
    /// Encoding space, reused.
    scratch: Vec<u8>,
    /// The sender's private name as text, reused.
    sender: String,
    /// The free rest of the block small frames are split off.
    block: BytesMut,
    last: Option<LastMessage>,
}

impl Encoder {
    /// An encoder enforcing `limits`.
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            limits,
            scratch: Vec::with_capacity(64 * 1024),
            sender: String::new(),
            block: BytesMut::new(),
            last: None,
        }
    }

    /// Encodes any frame; an error if it breaks a limit.
    pub(super) fn frame(&mut self, f: &DaemonFrame) -> Result<Bytes, ClientEncodeError> {
        self.scratch.clear();
        f.encode(&mut self.scratch, &self.limits)?;
        Ok(Bytes::copy_from_slice(&self.scratch))
    }

    /// Encodes a `Message` frame, or returns the buffer of the previous call
    /// if it was for the same message (same payload buffer, sender, groups,
    /// service and type). An error if it breaks a limit.
    pub(super) fn message(
        &mut self,
        sender: &PrivateName,
        groups: &Groups,
        service: Service,
        msg_type: u16,
        sealed: bool,
        payload: &Bytes,
    ) -> Result<Bytes, ClientEncodeError> {
        if let Some(last) = &self.last {
            if last.sealed == sealed && last.is(sender, groups, service, msg_type, payload) {
                return Ok(last.frame.clone());
            }
        }
        // The same sender as last time: its name is already written.
        if self.last.as_ref().is_none_or(|l| l.sender != *sender) {
            self.sender.clear();
            let _ = write!(self.sender, "{sender}");
        }
        // Written once and shared by every receiver: a small frame into the
        // shared block, a large one into a buffer of exactly its size. Were
        // the size wrong, the frame would still be right, in a buffer a
        // little larger.
        let len = message_len(&self.sender, groups, payload.len());
        // Group names went through the client decoder (UTF-8); a name of
        // another kind is written as its lossy text, rather than refused.
        let names = groups
            .iter()
            .map(|g| std::str::from_utf8(g).map_or_else(|_| String::from_utf8_lossy(g), Into::into));
        let (l, s) = (&self.limits, &self.sender);
        let frame = if len <= SMALL_FRAME {
            crate::block::make_room(&mut self.block, len + SLACK, BLOCK);
            let r = encode_message(&mut self.block, l, s, names, service, msg_type, sealed, payload);
            r.map(|()| self.block.split().freeze())
        } else {
            let mut out = Vec::with_capacity(len + SLACK);
            let r = encode_message(&mut out, l, s, names, service, msg_type, sealed, payload);
            r.map(|()| Bytes::from(out))
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                self.last = None;
                return Err(e);
            }
        };
        self.last = Some(LastMessage {
            sender: sender.clone(),
            groups: groups.clone(),
            service,
            msg_type,
            sealed,
            payload: payload.clone(),
            frame: frame.clone(),
        });
        Ok(frame)
    }
}

/// The encoded length of a `Message` frame (length prefix included):
/// header, sender, service, type, groups, payload.
fn message_len(sender: &str, groups: &Groups, payload: usize) -> usize {
    let groups_len: usize = groups.iter().map(|g| 1 + g.len()).sum();
    FRAME_HEADER_LEN + (1 + sender.len()) + 1 + 1 + 2 + (1 + groups_len) + (4 + payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use crate::wire::client::{FrameDecoder, GroupNames, Message};

    fn name(n: &str) -> PrivateName {
        PrivateName { daemon: NodeId(1), name: Bytes::copy_from_slice(n.as_bytes()) }
    }

    fn decode(b: &Bytes) -> DaemonFrame {
        let mut d = FrameDecoder::<DaemonFrame>::new(Limits::default());
        d.push(b);
        let f = d.next_frame().unwrap().unwrap();
        assert!(d.next_frame().unwrap().is_none());
        f
    }

    #[test]
    fn a_message_encodes_as_the_frame_the_client_decodes() {
        let mut e = Encoder::new(Limits::default());
        let groups = Groups::encode(&["a", "b"]).unwrap();
        let payload = Bytes::from_static(b"hello");
        let b = e.message(&name("x"), &groups, Service::Agreed, 7, false, &payload).unwrap();
        let want = DaemonFrame::Message(Message {
            sealed: false,
            sender: name("x").to_string().into(),
            groups: GroupNames::new(&["a", "b"]).unwrap(),
            service: Service::Agreed,
            msg_type: 7,
            payload,
        });
        assert_eq!(decode(&b), want);
        assert_eq!(e.frame(&want).unwrap(), b);
    }

    #[test]
    fn a_message_frame_is_allocated_at_its_exact_size() {
        let groups = Groups::encode(&["alpha", "b"]).unwrap();
        let payload = vec![5u8; 1000];
        let mut want = Vec::new();
        encode_message(
            &mut want,
            &Limits::default(),
            "#sender#1",
            ["alpha", "b"],
            Service::Fifo,
            1,
            false,
            &payload,
        )
        .unwrap();
        assert_eq!(message_len("#sender#1", &groups, payload.len()), want.len());
        let mut e = Encoder::new(Limits::default());
        let b = e.message(&name("sender"), &groups, Service::Fifo, 1, false, &Bytes::from(payload)).unwrap();
        assert_eq!(&b[..], &want[..]);
    }

    #[test]
    fn the_same_message_for_several_clients_shares_one_buffer() {
        let mut e = Encoder::new(Limits::default());
        let groups = Groups::encode(&["g"]).unwrap();
        let payload = Bytes::from(vec![1u8; 100]);
        let a = e.message(&name("x"), &groups, Service::Agreed, 0, false, &payload).unwrap();
        let b = e.message(&name("x"), &groups, Service::Agreed, 0, false, &payload.clone()).unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "a fan-out must not encode again");
        // Equal bytes in another buffer are another message.
        let copy = Bytes::from(payload.to_vec());
        let c = e.message(&name("x"), &groups, Service::Agreed, 0, false, &copy).unwrap();
        assert_ne!(a.as_ptr(), c.as_ptr());
        assert_eq!(a, c);
        // Same payload buffer, another sender or type: encoded again.
        let d = e.message(&name("y"), &groups, Service::Agreed, 0, false, &copy).unwrap();
        assert_ne!(d, c);
        let f = e.message(&name("y"), &groups, Service::Agreed, 1, false, &copy).unwrap();
        assert_ne!(f, d);
    }

    #[test]
    fn a_frame_over_the_limits_is_dropped() {
        let limits = Limits { max_payload: 4, ..Limits::default() };
        let mut e = Encoder::new(limits);
        let groups = Groups::encode(&["g"]).unwrap();
        assert!(
            e.message(&name("x"), &groups, Service::Agreed, 0, false, &Bytes::from_static(b"12345")).is_err()
        );
        assert!(
            e.message(&name("x"), &groups, Service::Agreed, 0, false, &Bytes::from_static(b"1234")).is_ok()
        );
    }
}
