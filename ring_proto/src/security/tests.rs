//! Key agreement and link sealing on the lab network (see [`super::lab`]).

use super::lab::{Lab, security};
use super::*;
use crate::ring::{Config, Event};
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
    assert!(lab.run(lab.now + secs(1), Lab::joined), "the clients never all joined");
    let secret = Bytes::from_static(b"a payload nobody may read on the wire");
    let from = lab.wire.len();
    assert!(lab.multicast(0, secret.clone()));
    assert!(lab.run(lab.now + Duration::from_millis(200), |l| l.everywhere(&secret)));
    assert!(lab.wire[from..].iter().all(|d| !d.windows(secret.len()).any(|w| w == &secret[..])));
    assert!(lab.wire[from..].iter().any(|d| d[0] == 0xE2), "nothing sealed");
    for n in lab.nodes() {
        let s = n.security_stats().unwrap();
        assert!(s.sealed > 0 && s.keys_agreed == 1 && s.auth_failures == 0 && s.replays == 0, "{s:?}");
    }
}

#[test]
fn a_crash_gives_the_survivors_a_new_key_the_crashed_daemon_never_had() {
    let mut lab = Lab::new(4, LinkMode::Encrypt);
    assert!(lab.run(Time::ZERO + secs(5), Lab::all_keyed));
    let old = lab.node(0).unwrap().server_key().unwrap();
    let crashed = lab.node(3).unwrap().server_key();
    lab.crash(3);
    assert!(lab.run(lab.now + secs(5), Lab::all_keyed), "no new key by {}", lab.now);
    let new = lab.node(0).unwrap().server_key().unwrap();
    assert_ne!(new.2, old.2, "the link key changed");
    assert_ne!(Some(new), crashed);
    for n in lab.nodes() {
        let s = n.security_stats().unwrap();
        assert!(s.keys_agreed >= 2 && s.last_agreement_ns.is_some(), "{s:?}");
    }
}

/// A clean leave (`Node::leave`, a join naming the leaver failed) lets
/// the others form the next ring, with its key, well before the token
/// timeout that a crash costs; for any leaver (the representative, the
/// last member) and with or without link security.
#[test]
fn a_clean_leave_reforms_the_ring_before_the_token_timeout() {
    let timeout = Config::default().token_timeout;
    for mode in [LinkMode::Encrypt, LinkMode::None] {
        for (n, leaver) in [(3u16, 2usize), (3, 0), (5, 1), (5, 4)] {
            let mut lab = Lab::new(n, mode);
            let formed = |l: &Lab| if mode == LinkMode::None { one_ring(l) } else { l.all_keyed() };
            assert!(lab.run(Time::ZERO + secs(5), formed), "{mode:?}: no ring by {}", lab.now);
            // Traffic in flight, so the leaver may hold the token.
            for i in 0..usize::from(n) {
                assert!(lab.multicast(i, Bytes::from_static(b"m")));
            }
            lab.run(lab.now + Duration::from_millis(1), |_| false);
            let left_at = lab.now;
            lab.leave(leaver);
            assert!(lab.run(left_at + secs(5), formed), "{mode:?} n={n}: no new ring by {}", lab.now);
            let took = lab.now.saturating_since(left_at);
            eprintln!("{mode:?} n={n} leaver={leaver}: new ring after {took:?}");
            assert!(
                took < timeout / 2,
                "{mode:?} n={n} leaver={leaver}: the new ring took {took:?} (token timeout {timeout:?})"
            );
            let members = lab.nodes().next().unwrap().ring().unwrap().1.to_vec();
            assert!(!members.contains(&NodeId(leaver as u16)) && members.len() == usize::from(n) - 1);
        }
    }
    // A crash, for comparison, costs at least the token timeout.
    let mut lab = Lab::new(3, LinkMode::None);
    assert!(lab.run(Time::ZERO + secs(5), one_ring));
    let at = lab.now;
    lab.crash(2);
    assert!(lab.run(at + secs(5), one_ring));
    assert!(lab.now.saturating_since(at) >= timeout);
}

/// After `leave` a node is inert: nothing goes out but the leave itself.
#[test]
fn a_node_that_left_sends_and_delivers_nothing() {
    let mut lab = Lab::new(3, LinkMode::Encrypt);
    assert!(lab.run(Time::ZERO + secs(5), Lab::all_keyed));
    let now = lab.now;
    let mut node = lab.servers[1].take().unwrap().into_node();
    node.leave(now);
    assert_eq!(node.phase(), crate::Phase::Left);
    let sent: Vec<_> = std::iter::from_fn(|| node.poll_transmit()).collect();
    assert_eq!(sent.len(), 2, "the leave goes twice");
    node.leave(now); // a second call does nothing
    assert!(node.poll_transmit().is_none());
    for b in lab.wire.clone() {
        node.handle_datagram(now, b);
    }
    node.handle_timeout(now + secs(10));
    assert!(node.poll_transmit().is_none() && node.poll_event().is_none() && node.poll_timeout().is_none());
    assert!(node.request_refresh(now).is_err());
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
        let node = Node::with_security(Config::default(), NodeId(i), Time::ZERO, inc, sec).unwrap();
        lab.set_node(usize::from(i), node);
    }
    assert!(lab.run(Time::ZERO + secs(5), Lab::all_keyed));
    let first = lab.node(0).unwrap().server_key().unwrap();
    let refreshed =
        |l: &Lab| l.all_keyed() && l.nodes().all(|n| n.server_key().is_some_and(|k| k.1 > first.1));
    assert!(lab.run(lab.now + secs(2), refreshed), "no refresh by {}", lab.now);
    let second = lab.node(0).unwrap().server_key().unwrap();
    assert_eq!(second.0, first.0, "same ring");
    assert_ne!(second.2, first.2, "a new link key");
    assert!(lab.node(0).unwrap().security_stats().unwrap().refreshes >= 1);
}

#[test]
fn different_settings_are_refused_and_counted_on_both_sides() {
    let mut lab = Lab::new(2, LinkMode::Encrypt);
    let inc = Incarnation { ring_seq: 0, first_msg_seq: 1 };
    let plain = security(LinkMode::None, 2, 1);
    lab.set_node(1, Node::with_security(Config::default(), NodeId(1), Time::ZERO, inc, plain).unwrap());
    lab.run(Time::ZERO + secs(2), |_| false);
    for n in lab.nodes() {
        assert_eq!(n.ring().map(|(_, m)| m.len()), Some(1), "never one ring");
        assert!(n.security_stats().unwrap().settings_mismatch > 0);
    }
    let alert = lab.alerts[0].first().unwrap();
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
    lab.set_node(2, Node::with_security(Config::default(), NodeId(2), Time::ZERO, inc, impostor).unwrap());
    let pair = |l: &Lab| {
        (0..2).all(|i| {
            l.node(i).is_some_and(|n| n.server_key().is_some() && n.ring().is_some_and(|(_, m)| m.len() == 2))
        })
    };
    assert!(lab.run(Time::ZERO + secs(5), pair), "daemons 0 and 1 formed no keyed ring");
    lab.run(lab.now + secs(1), |_| false);
    for i in 0..2 {
        let n = lab.node(i).unwrap();
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
    let n1 = lab.servers[1].as_mut().unwrap();
    let before = n1.node().security_stats().unwrap().clone();
    // Twice: the first copy may be news to daemon 1 (a token for another),
    // the second is a replay either way.
    n1.handle_datagram(lab.now, sealed.clone());
    n1.handle_datagram(lab.now, sealed.clone());
    let mut flipped = sealed.to_vec();
    let last = flipped.len() - 20;
    flipped[last] ^= 1;
    n1.handle_datagram(lab.now, Bytes::from(flipped));
    let mut header = sealed.to_vec();
    header[14] ^= 0x80; // the counter, associated data
    n1.handle_datagram(lab.now, Bytes::from(header));
    let after = n1.node().security_stats().unwrap();
    assert!(after.replays > before.replays, "{after:?}");
    assert_eq!(after.auth_failures, before.auth_failures + 2);
}

/// Whether every live daemon is operational in one ring of all of them.
fn one_ring(l: &Lab) -> bool {
    let live = l.nodes().count();
    l.nodes()
        .all(|n| n.phase() == crate::Phase::Operational && n.ring().is_some_and(|(_, m)| m.len() == live))
}

/// Daemon `from`'s link layer as an attacker without keys would build it
/// in mode `none` (the header's fields are public).
fn plain_link(from: u16, n: u16) -> Link {
    let digest = security(LinkMode::None, n, from).digest();
    Link::new(NodeId(from), LinkMode::None, digest, None, Default::default(), Default::default(), 0)
}

/// Issue 14, break 3: a Join claiming round `u64::MAX` made every daemon's
/// next ring sequence wrap (`+ 1`), so no ring could ever form, and the
/// value was persisted. A round is taken as at most `MAX_RING_STEP` above
/// what a daemon knows: the forged join costs one membership change, the
/// new ring is numbered a bounded step higher, and only the sequence of a
/// ring a daemon formed or installed is offered for persisting.
#[test]
fn a_forged_join_of_the_last_round_wedges_nothing() {
    use crate::wire::Join;
    let mut lab = Lab::new(3, LinkMode::None);
    assert!(lab.run(Time::ZERO + secs(5), one_ring), "no ring by {}", lab.now);
    let before = lab.node(0).unwrap().ring().unwrap().0;
    let join = Join {
        sender: NodeId(1),
        ring_id: before,
        max_ring_seq: u64::MAX,
        procs: (0..3).map(NodeId).collect(),
        fails: Vec::new(),
        suspects: Vec::new(),
    };
    let forged = plain_link(1, 3).seal(&join.encode(), None, false, &mut SecurityStats::default());
    for to in [0, 2] {
        lab.inject(to, forged.clone());
    }
    let moved = |l: &Lab| one_ring(l) && l.node(0).unwrap().ring().unwrap().0 != before;
    assert!(lab.run(lab.now + secs(2), moved), "no new ring by {}", lab.now);
    let limit = before.seq + crate::MAX_RING_STEP + 8;
    for n in lab.nodes() {
        let (ring, _) = n.ring().unwrap();
        assert!(ring.seq > before.seq && ring.seq <= limit, "{ring}");
        assert!(n.max_ring_seq() <= limit && n.ring_seq_to_persist() <= limit);
    }
    assert!(lab.nodes().map(|n| n.stats().ring_seq_bounded).sum::<u64>() >= 2);
    // And the ring delivers (once every client's join is ordered: a
    // message ordered before a client's join does not reach it).
    assert!(lab.run(lab.now + secs(1), Lab::joined), "the clients never all joined");
    let m = Bytes::from_static(b"after the forged join");
    assert!(lab.multicast(2, m.clone()));
    assert!(lab.run(lab.now + secs(1), |l| l.everywhere(&m)));
}

/// Issue 14, break 1, in the lab: every datagram daemon 1 sends to daemon
/// 2 alone (its tokens) is also delivered to daemon 0 at the same moment
/// (an attacker re-sending it with daemon 1's source). The link header
/// names daemon 2 as the receiver, so daemon 0 drops each copy and counts
/// it; the ring never loses a message nor changes its membership.
#[test]
fn redirected_tokens_are_refused_and_nothing_is_lost() {
    for mode in [LinkMode::Encrypt, LinkMode::Authenticate, LinkMode::None] {
        let mut lab = Lab::new(3, mode);
        let ready = if mode == LinkMode::None { one_ring } else { Lab::all_keyed };
        assert!(lab.run(Time::ZERO + secs(5), |l| ready(l) && l.joined()), "{mode:?}");
        lab.redirect = Some(super::lab::Redirect { from: 1, to: 2, also: 0 });
        let changes = lab.node(0).unwrap().stats().membership_changes;
        let mut sent = 0usize;
        for round in 0..200u32 {
            for i in 0..3 {
                sent += usize::from(lab.multicast(i, Bytes::from(format!("m{i}-{round}"))));
            }
            lab.run(lab.now + Duration::from_micros(300), |_| false);
        }
        let all = |l: &Lab| l.received.iter().all(|r| r.len() == sent);
        let delivered = lab.run(lab.now + secs(2), all);
        lab.run(lab.now + Duration::from_millis(10), |_| false); // the last copies arrive
        let n0 = lab.node(0).unwrap();
        assert_eq!(n0.stats().membership_changes, changes, "{mode:?}");
        assert!(delivered, "{mode:?}: not every message delivered everywhere");
        assert!(lab.redirected > 50, "{mode:?}: {}", lab.redirected);
        assert_eq!(n0.security_stats().unwrap().misdirected, lab.redirected, "{mode:?}");
    }
}

/// Found by the adversary harness (`adversary_tests`, issue 14): in mode
/// `none`, a forged token for a young ring claiming 4 packets that were
/// never sent made every member ask for them forever while the token
/// kept circulating: the ring stayed operational and delivered nothing,
/// for good. Totem's "fail to receive" rule ends it: after
/// `FAIL_TO_RECEIVE` visits with the same packets missing and none
/// arriving, the ring is formed anew, and delivers.
#[test]
fn a_token_claiming_packets_never_sent_stops_delivery_only_for_a_while() {
    let mut lab = Lab::new(3, LinkMode::None);
    assert!(lab.run(Time::ZERO + secs(5), |l| one_ring(l) && l.joined()));
    let n2 = lab.node(2).unwrap();
    let ring_id = n2.ring().unwrap().0;
    // The young ring carried only the groups layer's joins and states (all
    // delivered): claim four packets past them.
    let high = (1..).take_while(|&s| n2.holds(ring_id, s)).last().unwrap_or(0);
    // And the token went round while they settled: forge the next one
    // after the last seen on the wire, until daemon 2 takes one (it refuses
    // one while it holds the token, or one it already passed).
    let mut link = plain_link(1, 3);
    for _ in 0..200 {
        if lab.node(2).unwrap().stats().retransmits_requested > 0 {
            break;
        }
        let last = lab
            .wire
            .iter()
            .filter_map(|d| crate::wire::Token::decode(d.get(super::link::HEADER..)?).ok())
            .filter(|t| t.ring_id == ring_id)
            .map(|t| t.token_seq)
            .max()
            .unwrap_or(0);
        let t = crate::wire::Token {
            ring_id,
            token_seq: last + 1,
            seq: high + 4,
            aru: high + 4,
            aru_id: NodeId::NONE,
            fcc: 0,
            backlog: 0,
            rtr: Vec::new(),
        };
        lab.inject(2, link.seal(&t.encode(), Some(NodeId(2)), false, &mut SecurityStats::default()));
        lab.run(lab.now + Duration::from_micros(500), |_| false);
    }
    assert!(lab.node(2).unwrap().stats().retransmits_requested > 0, "no forged token taken");
    lab.run(lab.now + Duration::from_millis(10), |_| false);
    let m = Bytes::from_static(b"after the token that claimed too much");
    assert!(lab.multicast(0, m.clone()));
    assert!(lab.run(lab.now + secs(5), |l| l.everywhere(&m)), "not delivered by {}", lab.now);
    let failures: u64 = lab.nodes().map(|n| n.stats().receive_failures).sum();
    assert!(failures > 0);
}
