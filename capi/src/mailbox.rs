//! What a mailbox has to deliver, in Spread's terms: client events turned
//! into [`Delivery`] records (service flags, sender, groups, message type,
//! body), membership bodies laid out for `SP_get_memb_info`, and the
//! bookkeeping Spread's semantics need on top of ringfence's events (the
//! member that changed, this member's VS set). No sockets here: the FFI
//! layer feeds events in.
//!
//! A membership body, in the receiver's byte order (docs/c-api.md):
//!
//! ```text
//! 0   group_id            5 x int32: ring_seq (high, low), ring_rep, counter (high, low)
//! 20  num_vs_sets         uint32
//! 24  my_vs_set_offset    uint32: where this member's VS set starts
//! 28  VS sets, each:      uint32 num_members, then num_members names of MAX_GROUP_NAME bytes
//! ```

use crate::spread::*;
use ringfence_client::{Event, Membership, Service, ViewCause, ViewId, ViewKind};
use std::collections::{HashMap, VecDeque};
use std::ffi::c_int;

/// Bytes of a `group_id`.
pub const GROUP_ID_LEN: usize = 20;
/// Offset of the first VS set in a membership body.
pub const VS_SETS_AT: usize = GROUP_ID_LEN + 8;
/// What `SP_poll` counts for a message header (as Spread's does).
const HEADER_LEN: usize = 48;

/// One message for `SP_receive`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Service flags (`AGREED_MESS`, `REG_MEMB_MESS | CAUSED_BY_JOIN`, ...).
    pub service: c_int,
    /// The sender's private name, or the group of a membership message.
    pub sender: String,
    /// The destination groups, or the members of a membership message.
    pub groups: Vec<String>,
    /// The application's type, or this member's index among the members.
    pub mess_type: i16,
    /// The payload, or the membership body.
    pub body: Vec<u8>,
}

impl Delivery {
    /// The size `SP_poll` reports: a header, the group names and the body.
    pub fn size(&self) -> usize {
        HEADER_LEN + self.groups.len() * MAX_GROUP_NAME + self.body.len()
    }
}

/// The Spread flag of a service.
pub fn service_flag(s: Service) -> c_int {
    match s {
        Service::Unreliable => UNRELIABLE_MESS,
        Service::Reliable => RELIABLE_MESS,
        Service::Fifo => FIFO_MESS,
        Service::Causal => CAUSAL_MESS,
        Service::Agreed => AGREED_MESS,
        Service::Safe => SAFE_MESS,
        _ => REGULAR_MESS,
    }
}

/// The service that `flags` asks for (the strongest one named) and whether
/// it asks for self-discard; `None` if no service is named or bits other
/// than the services and `SELF_DISCARD` are set.
pub fn service_of(flags: c_int) -> Option<(Service, bool)> {
    if flags & !(REGULAR_MESS | SELF_DISCARD) != 0 {
        return None;
    }
    let service = [
        (SAFE_MESS, Service::Safe),
        (AGREED_MESS, Service::Agreed),
        (CAUSAL_MESS, Service::Causal),
        (FIFO_MESS, Service::Fifo),
        (RELIABLE_MESS, Service::Reliable),
        (UNRELIABLE_MESS, Service::Unreliable),
    ]
    .into_iter()
    .find(|(bit, _)| flags & bit != 0)?
    .1;
    Some((service, flags & SELF_DISCARD != 0))
}

/// A session's deliveries and what it remembers to make them.
#[derive(Debug)]
pub struct Mailbox {
    /// This connection's private name.
    me: String,
    /// `SP_connect`'s `group_membership`: deliver membership messages.
    membership: bool,
    /// The members of the last regular view of each group this connection is in.
    views: HashMap<String, Vec<String>>,
    queue: VecDeque<Delivery>,
}

impl Mailbox {
    /// An empty mailbox for the connection named `me`.
    pub fn new(me: &str, membership: bool) -> Self {
        Self { me: me.to_string(), membership, views: HashMap::new(), queue: VecDeque::new() }
    }

    /// The next delivery, if one is ready.
    pub fn pop(&mut self) -> Option<Delivery> {
        self.queue.pop_front()
    }

    /// The next delivery, left in place.
    pub fn peek(&self) -> Option<&Delivery> {
        self.queue.front()
    }

    /// Puts back a delivery the caller could not take (a short buffer).
    pub fn unpop(&mut self, d: Delivery) {
        self.queue.push_front(d);
    }

    /// The application left `group`: the next view of the group it sees
    /// (after joining again) starts afresh. (The daemon sends the leaver no
    /// view of its own leave, so there is no self-leave message.)
    pub fn left(&mut self, group: &str) {
        self.views.remove(group);
    }

    /// Takes an event from the daemon; queues what it gives the application.
    pub fn push(&mut self, e: Event) {
        let d = match e {
            Event::Message(m) => Delivery {
                service: service_flag(m.service),
                sender: m.sender.to_string(),
                groups: m.groups.to_vec(),
                mess_type: m.msg_type as i16,
                body: m.payload.to_vec(),
            },
            Event::Membership(v) => match self.membership_delivery(v) {
                Some(d) => d,
                None => return,
            },
            Event::Error { code, text } => Delivery {
                service: REJECT_MESS,
                sender: String::new(),
                groups: Vec::new(),
                mess_type: code.code() as i16,
                body: text.into_bytes(),
            },
            Event::Undecipherable { sender, group, msg_type, reason, .. } => Delivery {
                service: REJECT_MESS,
                sender,
                groups: vec![group],
                mess_type: msg_type as i16,
                body: reason.into_bytes(),
            },
            // Flush requests come only to closed VS groups, which the C API
            // does not join.
            _ => return,
        };
        self.queue.push_back(d);
    }

    fn membership_delivery(&mut self, v: Membership) -> Option<Delivery> {
        if v.kind == ViewKind::Transitional {
            return self.membership.then(|| Delivery {
                service: TRANSITION_MESS,
                sender: v.group,
                groups: Vec::new(),
                mess_type: -1,
                body: body(Some(v.view_id), &[]),
            });
        }
        let before = self.views.get(&v.group).map(Vec::as_slice);
        let not_in = |list: &[String], of: &[String]| -> Vec<String> {
            of.iter().filter(|m| !list.contains(m)).cloned().collect()
        };
        let (cause, sets) = match v.cause {
            ViewCause::Join => (
                CAUSED_BY_JOIN,
                vec![before.map_or_else(|| vec![self.me.clone()], |b| not_in(b, &v.members))],
            ),
            ViewCause::Leave => (CAUSED_BY_LEAVE, vec![not_in(&v.members, before.unwrap_or(&[]))]),
            ViewCause::Disconnect => (CAUSED_BY_DISCONNECT, vec![not_in(&v.members, before.unwrap_or(&[]))]),
            ViewCause::Network => {
                // The members that were with this one before stay together;
                // the others came from elsewhere (one set, however many
                // partitions they came from).
                let (mine, others): (Vec<String>, Vec<String>) = v
                    .members
                    .iter()
                    .cloned()
                    .partition(|m| *m == self.me || before.is_none_or(|b| b.contains(m)));
                let mut sets = vec![mine];
                if !others.is_empty() {
                    sets.push(others);
                }
                (CAUSED_BY_NETWORK, sets)
            }
            _ => (RF_CAUSED_BY_REKEY, vec![v.members.clone()]),
        };
        self.views.insert(v.group.clone(), v.members.clone());
        if !self.membership {
            return None;
        }
        let me_at = v.members.iter().position(|m| *m == self.me);
        Some(Delivery {
            service: REG_MEMB_MESS | cause,
            mess_type: me_at.map_or(-1, |i| i16::try_from(i).unwrap_or(i16::MAX)),
            body: body(Some(v.view_id), &sets),
            sender: v.group,
            groups: v.members,
        })
    }
}

/// The five `int32`s of a `group_id`.
pub fn group_id(v: ViewId) -> [i32; 5] {
    let (seq, counter) = (v.ring_seq, v.counter);
    [(seq >> 32) as i32, seq as i32, i32::from(v.ring_rep), (counter >> 32) as i32, counter as i32]
}

/// A membership body: the view's group id and the VS sets, this member's
/// first (the layout in the module's doc).
fn body(view: Option<ViewId>, sets: &[Vec<String>]) -> Vec<u8> {
    let mut out = Vec::new();
    for x in view.map_or([0; 5], group_id) {
        out.extend_from_slice(&x.to_ne_bytes());
    }
    let count = u32::try_from(sets.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_ne_bytes());
    out.extend_from_slice(&(VS_SETS_AT as u32).to_ne_bytes());
    for set in sets {
        out.extend_from_slice(&u32::try_from(set.len()).unwrap_or(u32::MAX).to_ne_bytes());
        for name in set {
            let mut slot = [0u8; MAX_GROUP_NAME];
            let n = name.len().min(MAX_GROUP_NAME - 1);
            slot[..n].copy_from_slice(&name.as_bytes()[..n]);
            out.extend_from_slice(&slot);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfence_client::GroupMode;

    fn view(counter: u64, cause: ViewCause, members: &[&str]) -> Event {
        Event::Membership(Membership {
            group: "g".into(),
            view_id: ViewId { ring_seq: 7, ring_rep: 2, counter },
            kind: ViewKind::Regular,
            cause,
            members: members.iter().map(|m| m.to_string()).collect(),
            mode: GroupMode::None,
            key: None,
            joined: Vec::new(),
        })
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn names(b: &[u8], at: usize) -> Vec<String> {
        let n = u32_at(b, at) as usize;
        (0..n)
            .map(|i| {
                let slot = &b[at + 4 + i * MAX_GROUP_NAME..at + 4 + (i + 1) * MAX_GROUP_NAME];
                String::from_utf8(slot.split(|&c| c == 0).next().unwrap().to_vec()).unwrap()
            })
            .collect()
    }

    #[test]
    fn services_map_both_ways() {
        for s in [
            Service::Unreliable,
            Service::Reliable,
            Service::Fifo,
            Service::Causal,
            Service::Agreed,
            Service::Safe,
        ] {
            assert_eq!(service_of(service_flag(s)), Some((s, false)));
            assert_eq!(service_of(service_flag(s) | SELF_DISCARD), Some((s, true)));
        }
        assert_eq!(service_of(FIFO_MESS | SAFE_MESS), Some((Service::Safe, false)), "the strongest wins");
        assert_eq!(service_of(0), None);
        assert_eq!(service_of(SELF_DISCARD), None);
        assert_eq!(service_of(AGREED_MESS | REG_MEMB_MESS), None);
    }

    /// Join, join, disconnect, network: the causes, the member that changed,
    /// this member's index, and the VS sets.
    #[test]
    fn membership_messages_say_who_changed() {
        let mut mb = Mailbox::new("#a#d0", true);
        mb.push(view(1, ViewCause::Join, &["#a#d0"]));
        let d = mb.pop().unwrap();
        assert_eq!(d.service, REG_MEMB_MESS | CAUSED_BY_JOIN);
        assert_eq!((d.sender.as_str(), d.groups.clone(), d.mess_type), ("g", vec!["#a#d0".to_string()], 0));
        let gid: Vec<i32> =
            (0..5).map(|i| i32::from_ne_bytes(d.body[i * 4..i * 4 + 4].try_into().unwrap())).collect();
        assert_eq!(gid, [0, 7, 2, 0, 1]);
        assert_eq!((u32_at(&d.body, 20), u32_at(&d.body, 24)), (1, VS_SETS_AT as u32));
        assert_eq!(names(&d.body, VS_SETS_AT), ["#a#d0"], "own join: the joiner is this member");

        mb.push(view(2, ViewCause::Join, &["#a#d0", "#b#d1"]));
        let d = mb.pop().unwrap();
        assert_eq!(names(&d.body, VS_SETS_AT), ["#b#d1"]);
        mb.push(view(3, ViewCause::Join, &["#c#d2", "#a#d0", "#b#d1"]));
        assert_eq!(mb.pop().unwrap().mess_type, 1, "index of this member");

        mb.push(view(4, ViewCause::Disconnect, &["#a#d0", "#b#d1"]));
        let d = mb.pop().unwrap();
        assert_eq!(d.service, REG_MEMB_MESS | CAUSED_BY_DISCONNECT);
        assert_eq!(names(&d.body, VS_SETS_AT), ["#c#d2"]);

        mb.push(view(5, ViewCause::Network, &["#a#d0", "#b#d1", "#x#d3"]));
        let d = mb.pop().unwrap();
        assert_eq!(d.service, REG_MEMB_MESS | CAUSED_BY_NETWORK);
        assert_eq!(u32_at(&d.body, 20), 2);
        assert_eq!(names(&d.body, VS_SETS_AT), ["#a#d0", "#b#d1"]);
        assert_eq!(names(&d.body, VS_SETS_AT + 4 + 2 * MAX_GROUP_NAME), ["#x#d3"]);
        assert_eq!(mb.pop(), None);
    }

    /// Messages keep their service, sender, groups and type; a refusal
    /// becomes a `REJECT_MESS`. After a leave and a new join, the first
    /// view names this member as the one that joined. Without membership
    /// messages, views are followed but not delivered.
    #[test]
    fn messages_refusals_and_rejoins() {
        let mut mb = Mailbox::new("#a#d0", true);
        mb.push(Event::Message(ringfence_client::Message {
            sender: "#b#d1".into(),
            groups: ringfence_client::GroupNames::new(&["g", "h"]).unwrap(),
            service: Service::Safe,
            msg_type: 0xfffe,
            sealed: false,
            payload: bytes_of(b"x"),
        }));
        let d = mb.pop().unwrap();
        assert_eq!((d.service, d.sender.as_str(), d.groups.len(), d.mess_type), (SAFE_MESS, "#b#d1", 2, -2));
        assert_eq!(d.body, b"x");
        mb.push(Event::Error { code: ringfence_proto::wire::client::ErrorCode::Denied, text: "no".into() });
        let d = mb.pop().unwrap();
        assert_eq!((d.service, d.mess_type, d.body.as_slice()), (REJECT_MESS, 3, &b"no"[..]));

        mb.push(view(1, ViewCause::Join, &["#b#d1", "#a#d0"]));
        mb.pop().unwrap();
        mb.left("g");
        mb.push(view(5, ViewCause::Join, &["#b#d1", "#a#d0"]));
        let d = mb.pop().unwrap();
        assert_eq!(names(&d.body, VS_SETS_AT), ["#a#d0"]);

        let mut quiet = Mailbox::new("#a#d0", false);
        quiet.push(view(1, ViewCause::Join, &["#a#d0"]));
        quiet.push(view(2, ViewCause::Join, &["#a#d0", "#b#d1"]));
        assert_eq!(quiet.pop(), None);
        assert_eq!(quiet.views["g"].len(), 2);
    }

    fn bytes_of(b: &'static [u8]) -> bytes::Bytes {
        bytes::Bytes::from_static(b)
    }
}
