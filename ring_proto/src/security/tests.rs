//! Key agreement and link sealing on the lab network (see [`super::lab`]).

use super::lab::{Lab, security};
use super::*;
use crate::ring::{Config, Event};
use crate::wire::{Groups, Service};
use crate::{Incarnation, Node};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn three_daemons_agree_on_a_server_key_and_seal_with_it() {
    let mut lab = Lab::new(3, LinkMode::Encrypt);
    assert!(lab.run(Time::ZERO + secs(5), Lab::all_keyed), "no common key by {}", lab.now);
    // The regular configuration reached the owner only with its key.
    for ev in &lab.events {
        assert!(ev.iter().any(|e| matches!(e, Event::Configuration(c) if c.members.len() == 3)));
    }
    // A client message goes sealed: its bytes never cross the wire.
    let secret = Bytes::from_static(b"a payload nobody may read on the wire");
    let now = lab.now;
    lab.nodes[0].as_mut().unwrap().submit(now, Service::Agreed, Groups::none(), secret.clone()).unwrap();
    let from = lab.wire.len();
    let delivered = |l: &Lab| {
        l.events.iter().all(|ev| ev.iter().any(|e| matches!(e, Event::Deliver(d) if d.payload == secret)))
    };
    assert!(lab.run(lab.now + Duration::from_millis(200), delivered));
    assert!(lab.wire[from..].iter().all(|d| !d.windows(secret.len()).any(|w| w == &secret[..])));
    assert!(lab.wire[from..].iter().any(|d| d[0] == 0xE2), "nothing sealed");
    for n in lab.nodes.iter().flatten() {
        let s = n.security_stats().unwrap();
        assert!(s.sealed > 0 && s.keys_agreed == 1 && s.auth_failures == 0 && s.replays == 0, "{s:?}");
    }
}

#[test]
fn a_crash_gives_the_survivors_a_new_key_the_crashed_daemon_never_had() {
    let mut lab = Lab::new(4, LinkMode::Encrypt);
    assert!(lab.run(Time::ZERO + secs(5), Lab::all_keyed));
    let old = lab.nodes[0].as_ref().unwrap().server_key().unwrap();
    let crashed = lab.nodes[3].as_ref().unwrap().server_key();
    lab.crash(3);
    assert!(lab.run(lab.now + secs(5), Lab::all_keyed), "no new key by {}", lab.now);
    let new = lab.nodes[0].as_ref().unwrap().server_key().unwrap();
    assert_ne!(new.2, old.2, "the link key changed");
    assert_ne!(Some(new), crashed);
    for n in lab.nodes.iter().flatten() {
        let s = n.security_stats().unwrap();
        assert!(s.keys_agreed >= 2 && s.last_agreement_ns.is_some(), "{s:?}");
    }
}

#[test]
fn authenticate_mode_agrees_and_sends_in_clear_with_tags() {
    let mut lab = Lab::new(3, LinkMode::Authenticate);
    assert!(lab.run(Time::ZERO + secs(5), Lab::all_keyed));
    let from = lab.wire.len();
    lab.run(lab.now + Duration::from_millis(20), |_| false);
    assert!(lab.wire[from..].iter().any(|d| d[0] == 0xE3));
    assert!(lab.wire[from..].iter().all(|d| d[0] != 0xE2));
}

#[test]
fn the_representative_refreshes_the_key_by_time_out() {
    let mut lab = Lab::new(3, LinkMode::Encrypt);
    // Rebuild the daemons with a 300 ms refresh.
    for i in 0..3u16 {
        let mut sec = security(LinkMode::Encrypt, 3, i);
        sec.refresh_after = Some(Duration::from_millis(300));
        let inc = Incarnation { ring_seq: 0, first_msg_seq: 1 };
        lab.nodes[usize::from(i)] =
            Node::with_security(Config::default(), NodeId(i), Time::ZERO, inc, sec).ok();
    }
    assert!(lab.run(Time::ZERO + secs(5), Lab::all_keyed));
    let first = lab.nodes[0].as_ref().unwrap().server_key().unwrap();
    let refreshed = |l: &Lab| {
        l.all_keyed() && l.nodes.iter().flatten().all(|n| n.server_key().is_some_and(|k| k.1 > first.1))
    };
    assert!(lab.run(lab.now + secs(2), refreshed), "no refresh by {}", lab.now);
    let second = lab.nodes[0].as_ref().unwrap().server_key().unwrap();
    assert_eq!(second.0, first.0, "same ring");
    assert_ne!(second.2, first.2, "a new link key");
    assert!(lab.nodes[0].as_ref().unwrap().security_stats().unwrap().refreshes >= 1);
}

#[test]
fn different_settings_are_refused_and_counted_on_both_sides() {
    let mut lab = Lab::new(2, LinkMode::Encrypt);
    let inc = Incarnation { ring_seq: 0, first_msg_seq: 1 };
    let plain = security(LinkMode::None, 2, 1);
    lab.nodes[1] = Node::with_security(Config::default(), NodeId(1), Time::ZERO, inc, plain).ok();
    lab.run(Time::ZERO + secs(2), |_| false);
    for n in lab.nodes.iter().flatten() {
        assert_eq!(n.ring().map(|(_, m)| m.len()), Some(1), "never one ring");
        assert!(n.security_stats().unwrap().settings_mismatch > 0);
    }
    let alert = lab.nodes[0].as_mut().unwrap().poll_alert().unwrap();
    assert!(alert.text.contains("security settings"), "{alert:?}");
}

#[test]
fn a_daemon_with_a_foreign_identity_is_refused() {
    let mut lab = Lab::new(3, LinkMode::Encrypt);
    // Daemon 2 runs with a key that is not the one the others know.
    let mut impostor = security(LinkMode::Encrypt, 3, 2);
    let other = super::lab::identity(77);
    impostor.peers.insert(NodeId(2), other.public());
    impostor.identity = Some(Arc::new(other));
    let inc = Incarnation { ring_seq: 0, first_msg_seq: 1 };
    lab.nodes[2] = Node::with_security(Config::default(), NodeId(2), Time::ZERO, inc, impostor).ok();
    let pair = |l: &Lab| {
        (0..2).all(|i| {
            l.nodes[i]
                .as_ref()
                .is_some_and(|n| n.server_key().is_some() && n.ring().is_some_and(|(_, m)| m.len() == 2))
        })
    };
    assert!(lab.run(Time::ZERO + secs(5), pair), "daemons 0 and 1 formed no keyed ring");
    lab.run(lab.now + secs(1), |_| false);
    for i in 0..2 {
        let n = lab.nodes[i].as_ref().unwrap();
        assert_eq!(n.ring().unwrap().1, &[NodeId(0), NodeId(1)]);
        assert!(
            n.security_stats().unwrap().settings_mismatch + n.security_stats().unwrap().bad_signature > 0
        );
    }
}

#[test]
fn a_replayed_or_flipped_datagram_is_dropped_and_counted() {
    let mut lab = Lab::new(3, LinkMode::Encrypt);
    assert!(lab.run(Time::ZERO + secs(5), Lab::all_keyed));
    lab.run(lab.now + Duration::from_millis(20), |_| false);
    let sealed = lab.wire.iter().rev().find(|d| d[0] == 0xE2 && d[9..11] == [0, 0]).unwrap().clone();
    let n1 = lab.nodes[1].as_mut().unwrap();
    let before = n1.security_stats().unwrap().clone();
    // Twice: the first copy may be news to daemon 1 (a token for another),
    // the second is a replay either way.
    n1.handle_datagram(lab.now, sealed.clone());
    n1.handle_datagram(lab.now, sealed.clone());
    let mut flipped = sealed.to_vec();
    let last = flipped.len() - 20;
    flipped[last] ^= 1;
    n1.handle_datagram(lab.now, Bytes::from(flipped));
    let mut header = sealed.to_vec();
    header[12] ^= 0x80; // the counter, associated data
    n1.handle_datagram(lab.now, Bytes::from(header));
    let after = n1.security_stats().unwrap();
    assert!(after.replays > before.replays, "{after:?}");
    assert_eq!(after.auth_failures, before.auth_failures + 2);
}
