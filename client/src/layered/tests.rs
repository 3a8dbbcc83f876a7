//! The engine over a fake VS group: one agreed-order queue per view; a
//! new view is installed at every member at once; messages still queued
//! from an earlier view may be delivered after it (to check they are
//! refused as stale and ignored).

use super::*;
use rand::SeedableRng;
use std::collections::BTreeMap;

const GROUP: &str = "room";

enum Frame {
    Protocol(Vec<u8>),
    Data { msg_type: u16, payload: Vec<u8> },
}

struct Member {
    eng: LayeredGroup,
    events: Vec<LayeredEvent>,
    opened: Vec<(String, Vec<u8>)>,
    failed: Vec<String>,
}

struct Fake {
    protocol: Protocol,
    peers: PeerKeys,
    ids: BTreeMap<String, SecretIdentity>,
    members: BTreeMap<String, Member>,
    /// The current view's members.
    view: Vec<String>,
    queue: VecDeque<(String, Frame)>,
    counter: u64,
    seed: u64,
    /// Name the joined members of a join view, as the daemons do (off: as
    /// daemons before they did).
    name_joins: bool,
}

fn name(n: &str) -> String {
    format!("#{n}#0")
}

impl Fake {
    fn new(protocol: Protocol, names: &[&str]) -> Self {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mut peers = PeerKeys::new();
        let mut ids = BTreeMap::new();
        for n in names {
            let id = SecretIdentity::generate(&mut rng);
            peers.insert(n, id.public());
            ids.insert(name(n), id);
        }
        Self {
            protocol,
            peers,
            ids,
            members: BTreeMap::new(),
            view: Vec::new(),
            queue: VecDeque::new(),
            counter: 0,
            seed: 10,
            name_joins: true,
        }
    }

    /// Installs a view of `names` (creating engines for newcomers).
    fn view(&mut self, names: &[&str], cause: ViewCause) -> u64 {
        self.counter += 1;
        let mut members: Vec<String> = names.iter().map(|n| name(n)).collect();
        members.sort();
        for m in &members {
            if !self.members.contains_key(m) {
                self.seed += 1;
                let secret = SecretIdentity::from_bytes(self.ids[m].expose_secret());
                let rng = Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(self.seed));
                let eng = LayeredGroup::new(self.protocol, GROUP, m, secret, rng).unwrap();
                self.members
                    .insert(m.clone(), Member { eng, events: vec![], opened: vec![], failed: vec![] });
            }
        }
        let view_id = ViewId { ring_seq: 4, ring_rep: 1, counter: self.counter };
        // As the daemons: a join view names its newcomers when every member
        // of the previous view stayed.
        let stayed = self.view.iter().all(|m| members.contains(m));
        let joined = if cause == ViewCause::Join && stayed && self.name_joins {
            (0..members.len() as u16).filter(|&i| !self.view.contains(&members[usize::from(i)])).collect()
        } else {
            Vec::new()
        };
        let v = Membership {
            group: GROUP.into(),
            view_id,
            kind: ViewKind::Regular,
            cause,
            members: members.clone(),
            mode: GroupMode::LayeredTgdh,
            key: None,
            joined,
        };
        self.view = members.clone();
        for m in &members {
            let member = self.members.get_mut(m).unwrap();
            member.eng.handle_view(&v, &mut self.peers);
        }
        self.collect();
        epoch_of(view_id).unwrap()
    }

    /// Moves every member's transmits and events out.
    fn collect(&mut self) {
        for (n, m) in &mut self.members {
            while let Some(t) = m.eng.poll_transmit() {
                let f = match t {
                    Transmit::Protocol(b) => Frame::Protocol(b),
                    Transmit::Data { msg_type, payload, .. } => Frame::Data { msg_type, payload },
                };
                self.queue.push_back((n.clone(), f));
            }
            while let Some(e) = m.eng.poll_event() {
                m.events.push(e);
            }
        }
    }

    /// Delivers the next queued frame to every member of the current view.
    fn deliver_one(&mut self) -> bool {
        let Some((from, f)) = self.queue.pop_front() else { return false };
        for n in self.view.clone() {
            let m = self.members.get_mut(&n).unwrap();
            match &f {
                Frame::Protocol(b) => m.eng.handle_protocol(&from, b, &self.peers),
                Frame::Data { msg_type, payload } => match m.eng.open(&from, *msg_type, payload) {
                    Ok(p) => m.opened.push((from.clone(), p)),
                    Err(e) => m.failed.push(e),
                },
            }
        }
        self.collect();
        true
    }

    fn run(&mut self) {
        while self.deliver_one() {}
    }

    fn m(&mut self, n: &str) -> &mut Member {
        self.members.get_mut(&name(n)).unwrap()
    }

    /// The secure views member `n` was handed: (epoch, key id).
    fn secure(&self, n: &str) -> Vec<(u64, u32)> {
        self.members[&name(n)]
            .events
            .iter()
            .filter_map(|e| match e {
                LayeredEvent::SecureView { epoch, key_id, .. } => Some((*epoch, *key_id)),
                LayeredEvent::Refused { .. } => None,
            })
            .collect()
    }

    fn refused(&self, n: &str) -> Vec<String> {
        self.members[&name(n)]
            .events
            .iter()
            .filter_map(|e| match e {
                LayeredEvent::Refused { reason, .. } => Some(reason.clone()),
                LayeredEvent::SecureView { .. } => None,
            })
            .collect()
    }
}

/// Sends `text` from `n` as the client does: sealed if ready, else held.
fn send(f: &mut Fake, n: &str, text: &[u8]) -> bool {
    let m = f.m(n);
    let mut buf = Vec::new();
    let sealed = m.eng.ready() && m.eng.seal_into(7, text, &mut buf).unwrap();
    if sealed {
        f.queue.push_back((name(n), Frame::Data { msg_type: 7, payload: buf }));
    } else {
        f.m(n).eng.hold(Service::Agreed, 7, text).unwrap();
    }
    sealed
}

#[test]
fn sends_are_held_while_agreeing_then_sealed_and_opened_by_every_member() {
    for protocol in Protocol::ALL {
        let mut f = Fake::new(protocol, &["a", "b", "c"]);
        let epoch = f.view(&["a", "b", "c"], ViewCause::Join);
        // No key yet: the send is held, nothing of it is queued.
        assert!(!send(&mut f, "a", b"early bird"), "{protocol}");
        assert!(f.m("a").eng.is_agreeing(), "{protocol}");
        assert!(!f.queue.iter().any(|(_, fr)| matches!(fr, Frame::Data { .. })), "{protocol}");
        f.run();
        let key = f.secure("a");
        assert_eq!(key.len(), 1, "{protocol}: one secure view");
        assert_eq!(key[0].0, epoch, "{protocol}: the view's epoch is handed over");
        for n in ["b", "c"] {
            assert_eq!(f.secure(n), key, "{protocol}: {n} holds the same epoch and key id");
        }
        // The held message went out sealed under the new key, and every
        // member (the sender included) opened it.
        for n in ["a", "b", "c"] {
            assert_eq!(f.m(n).opened, vec![(name("a"), b"early bird".to_vec())], "{protocol} {n}");
            assert!(f.m(n).failed.is_empty(), "{protocol} {n}");
        }
        // Once keyed, a send is sealed at once; the wire bytes are not the text.
        let mut buf = Vec::new();
        assert!(f.m("b").eng.ready());
        assert!(f.m("b").eng.seal_into(7, b"in the clear?", &mut buf).unwrap());
        assert_eq!(key_id_of(&buf), Some(key[0].1));
        assert!(!buf.windows(13).any(|w| w == b"in the clear?"));
        assert_eq!(f.m("c").eng.open(&name("b"), 7, &buf).unwrap(), b"in the clear?");
        // Bound to the sender and the message type.
        assert!(f.m("c").eng.open(&name("a"), 7, &buf).is_err());
        assert!(f.m("c").eng.open(&name("b"), 8, &buf).is_err());
    }
}

#[test]
fn a_cascaded_view_restarts_the_run_and_stale_messages_are_ignored() {
    for protocol in Protocol::ALL {
        let mut f = Fake::new(protocol, &["a", "b", "c", "d"]);
        let e1 = f.view(&["a", "b", "c"], ViewCause::Join);
        f.run();
        let first = f.secure("a");
        assert_eq!(first.len(), 1, "{protocol}");
        // d joins; the run starts, and after one message b leaves.
        let e2 = f.view(&["a", "b", "c", "d"], ViewCause::Join);
        assert!(f.deliver_one(), "{protocol}: the join's run sends something");
        assert!(!send(&mut f, "c", b"during the cascade"), "{protocol}: held while agreeing");
        assert!(!f.queue.is_empty(), "{protocol}: the first run still has messages on their way");
        let e3 = f.view(&["a", "c", "d"], ViewCause::Leave);
        assert!(e1 < e2 && e2 < e3);
        // The old run's messages still queued are delivered after the new
        // view: refused as stale, counted, not reported.
        f.run();
        for n in ["a", "c", "d"] {
            let keys = f.secure(n);
            let last = *keys.last().unwrap();
            assert_eq!(last.0, e3, "{protocol} {n}: the key of the last view");
            assert!(!keys.iter().any(|k| k.0 == e2), "{protocol} {n}: no key for the abandoned view");
            assert_eq!(last, *f.secure("a").last().unwrap(), "{protocol} {n}");
            assert!(f.refused(n).is_empty(), "{protocol} {n}: {:?}", f.refused(n));
            assert_eq!(f.m(n).opened, vec![(name("c"), b"during the cascade".to_vec())], "{protocol} {n}");
        }
        assert_ne!(f.secure("a").last().unwrap().1, first[0].1, "{protocol}: a new key");
        let stale: u64 = ["a", "c", "d"].iter().map(|n| f.m(n).eng.stats().stale).sum();
        assert!(stale > 0, "{protocol}: the abandoned run's messages were refused as stale");
        // b, gone, holds no key of the new view: it cannot open its messages.
        let mut buf = Vec::new();
        assert!(f.m("d").eng.seal_into(1, b"after b left", &mut buf).unwrap());
        assert!(f.m("b").eng.open(&name("d"), 1, &buf).is_err(), "{protocol}");
        assert_eq!(f.m("a").eng.open(&name("d"), 1, &buf).unwrap(), b"after b left");
    }
}

#[test]
fn a_flush_holds_sends_and_drops_the_ending_views_protocol_messages() {
    let mut f = Fake::new(Protocol::Tgdh, &["a", "b"]);
    f.view(&["a", "b"], ViewCause::Join);
    f.run();
    assert!(f.m("a").eng.ready());
    // An answer to a request this view did not get changes nothing.
    let flush = ViewId { ring_seq: 4, ring_rep: 1, counter: 77 };
    f.m("a").eng.flush_ok(flush);
    assert!(f.m("a").eng.ready());
    // The application answers a flush: nothing more is sent in this view.
    f.m("a").eng.flush_request(flush);
    f.m("a").eng.flush_ok(flush);
    assert!(!f.m("a").eng.ready());
    assert!(!send(&mut f, "a", b"next view please"));
    assert!(f.queue.is_empty());
    let e = f.view(&["a", "b"], ViewCause::Rekey);
    f.run();
    assert_eq!(f.secure("b").last().unwrap().0, e);
    assert_eq!(f.m("b").opened, vec![(name("a"), b"next view please".to_vec())]);
}

#[test]
fn forged_and_unknown_signers_are_refused_and_reported() {
    let mut f = Fake::new(Protocol::Ckd, &["a", "b"]);
    f.view(&["a", "b"], ViewCause::Join);
    // Replace b's public key: its messages no longer verify at a.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(99);
    let forged = SecretIdentity::generate(&mut rng).public();
    let real = f.peers.known("b").unwrap();
    f.peers.insert("b", forged);
    f.run();
    assert!(f.secure("a").is_empty());
    assert!(f.refused("a").iter().any(|r| r.contains("bad signature from member")), "{:?}", f.refused("a"));
    // With the right key the next view agrees.
    f.peers.insert("b", real);
    let e = f.view(&["a", "b"], ViewCause::Rekey);
    f.run();
    assert_eq!(f.secure("a").last().unwrap().0, e);
    assert_eq!(f.secure("a").last(), f.secure("b").last());
    // Garbage and a message for someone else.
    let before = f.m("a").eng.stats();
    f.m("a").eng.handle_protocol(&name("b"), b"xy", &PeerKeys::new());
    assert_eq!(f.m("a").eng.stats().refused, before.refused + 1);
    let before = f.m("a").eng.stats();
    f.m("a").eng.handle_protocol(&name("b"), &[0, 0, 0, 1, 9, 9], &PeerKeys::new());
    assert_eq!(f.m("a").eng.stats().skipped, before.skipped + 1);
}

#[test]
fn the_change_is_decided_alike_at_every_member() {
    let v = |xs: &[&str]| xs.iter().map(|x| name(x)).collect::<Vec<_>>();
    let (ab, abc) = (v(&["a", "b"]), v(&["a", "b", "c"]));
    let view = |members: &[String], cause, joined: Vec<u16>| Membership {
        group: GROUP.into(),
        view_id: ViewId { ring_seq: 1, ring_rep: 0, counter: 1 },
        kind: ViewKind::Regular,
        cause,
        members: members.to_vec(),
        mode: GroupMode::LayeredTgdh,
        key: None,
        joined,
    };
    let d = |prev, members: &[String], cause| decide(Protocol::Gdh, prev, &view(members, cause, Vec::new()));
    assert_eq!(d(None, &ab, ViewCause::Join), Change::Merge);
    assert_eq!(d(Some(&ab), &abc, ViewCause::Join), Change::Merge);
    assert_eq!(d(Some(&abc), &ab, ViewCause::Leave), Change::Leave { left: vec![member_id(&name("c"))] });
    assert_eq!(
        d(Some(&abc), &ab, ViewCause::Disconnect),
        Change::Leave { left: vec![member_id(&name("c"))] }
    );
    assert_eq!(
        d(Some(&abc), &ab, ViewCause::Network),
        Change::Partition { left: vec![member_id(&name("c"))] }
    );
    assert_eq!(d(Some(&ab), &ab, ViewCause::Rekey), Change::Refresh);
    // A leave and a join resolved in one view: from scratch.
    assert_eq!(d(Some(&ab), &v(&["a", "c"]), ViewCause::Leave), Change::Merge);
    assert_eq!(d(Some(&ab), &abc, ViewCause::Network), Change::Merge);
    // A join the daemons name (c, position 2): TGDH's incremental join at
    // the newcomer and the old members alike; the other protocols and an
    // unnamed join run from scratch.
    let named = view(&abc, ViewCause::Join, vec![2]);
    let join = Change::Join { joined: vec![member_id(&name("c"))] };
    assert_eq!(decide(Protocol::Tgdh, None, &named), join);
    assert_eq!(decide(Protocol::Tgdh, Some(&ab), &named), join);
    for p in [Protocol::Gdh, Protocol::Bd, Protocol::Str, Protocol::Ckd] {
        assert_eq!(decide(p, Some(&ab), &named), Change::Merge, "{p}");
        assert_eq!(decide(p, None, &named), Change::Merge, "{p}");
    }
    assert_eq!(decide(Protocol::Tgdh, Some(&ab), &view(&abc, ViewCause::Join, vec![])), Change::Merge);
}

/// TGDH's sponsored join through the engine: with the newcomer named by
/// the daemons, only the speaker (the lowest old member), the newcomer and
/// the sponsor send, every member agrees one key, and the newcomer cannot
/// open what was sealed before it joined; without the name the same join
/// runs in full (every member announces).
#[test]
fn a_named_join_in_tgdh_is_sponsored() {
    let mut sent = Vec::new();
    for name_joins in [true, false] {
        let mut f = Fake::new(Protocol::Tgdh, &["a", "b", "c", "d", "e"]);
        f.name_joins = name_joins;
        f.view(&["a", "b", "c", "d"], ViewCause::Join);
        f.run();
        let mut before = Vec::new();
        assert!(f.m("b").eng.seal_into(7, b"sealed before e", &mut before).unwrap());
        let epoch = f.view(&["a", "b", "c", "d", "e"], ViewCause::Join);
        let mut frames = 0;
        while let Some((_, fr)) = f.queue.front() {
            if matches!(fr, Frame::Protocol(_)) {
                frames += 1;
            }
            f.deliver_one();
        }
        let key = *f.secure("a").last().unwrap();
        assert_eq!(key.0, epoch, "{name_joins}");
        for n in ["b", "c", "d", "e"] {
            assert_eq!(*f.secure(n).last().unwrap(), key, "{name_joins}: {n} holds the same key");
            assert!(f.refused(n).is_empty(), "{name_joins} {n}: {:?}", f.refused(n));
        }
        assert!(f.m("e").eng.open(&name("b"), 7, &before).is_err(), "backward secrecy");
        sent.push(frames);
    }
    assert!(sent[0] < sent[1], "the sponsored join sends fewer messages: {sent:?}");
    assert!(sent[0] <= 3, "speaker, newcomer, sponsor: {sent:?}");
}

#[test]
fn ids_names_and_epochs() {
    assert_eq!(client_name("#alice#3"), Some("alice"));
    assert_eq!(client_name("#a#b#3"), Some("a#b"));
    assert_eq!(client_name("alice"), None);
    assert_eq!(client_name("##3"), None);
    assert_ne!(member_id("#a#0"), member_id("#a#1"));
    assert_eq!(epoch_of(ViewId { ring_seq: 8, ring_rep: 2, counter: 5 }), Some(8 << 32 | 5));
    assert_eq!(epoch_of(ViewId { ring_seq: 1 << 32, ring_rep: 2, counter: 5 }), None);
    assert_eq!(protocol_of(GroupMode::LayeredStr), Some(Protocol::Str));
    assert_eq!(protocol_of(GroupMode::IntegratedVs), None);
}
