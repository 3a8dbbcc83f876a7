use super::harness::{Who, World};
use super::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

fn ring_id() -> impl Strategy<Value = RingId> {
    (any::<u64>(), any::<u16>()).prop_map(|(seq, rep)| RingId { seq, rep: NodeId(rep) })
}

fn name() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 1..20).prop_map(Bytes::from)
}

fn body() -> impl Strategy<Value = Body> {
    let view = || (ring_id(), any::<u64>()).prop_map(|(ring_id, counter)| ViewId { ring_id, counter });
    let kind = prop_oneof![Just(GroupKind::Open), Just(GroupKind::Vs)];
    let mode = proptest::sample::select(GroupMode::ALL.to_vec());
    prop_oneof![
        (
            any::<(bool, bool)>(),
            any::<u16>(),
            proptest::collection::vec((any::<u8>(), view()), 0..4),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|((self_discard, sealed), msg_type, views, p)| Body::Data {
                self_discard,
                sealed,
                msg_type,
                views,
                payload: Bytes::from(p)
            }),
        (kind.clone(), mode.clone()).prop_map(|(kind, mode)| Body::Join { kind, mode }),
        view().prop_map(|view| Body::Rekey { view }),
        Just(Body::Leave),
        Just(Body::Disconnect),
        (ring_id(), any::<u64>())
            .prop_map(|(ring_id, seq)| Body::FlushOk { flush: FlushId { ring_id, seq } }),
        (
            ring_id(),
            proptest::collection::vec(
                (
                    name(),
                    proptest::collection::vec(
                        (name(), kind, mode, any::<bool>()).prop_map(|(name, kind, mode, in_view)| {
                            StateGroup { name, kind, mode, in_view }
                        }),
                        0..4
                    )
                )
                    .prop_map(|(name, groups)| StateEntry { name, groups }),
                0..4
            ),
            proptest::collection::vec(
                (name(), view(), any::<u32>(), any::<[u8; 32]>())
                    .prop_map(|(group, view, key_id, key)| StateKey { group, view, key_id, key }),
                0..3
            ),
            proptest::collection::vec(
                (name(), view(), proptest::collection::vec(any::<u16>(), 0..5)).prop_map(
                    |(group, view, peers)| StateView {
                        group,
                        view,
                        peers: peers.into_iter().map(NodeId).collect()
                    }
                ),
                0..3
            )
        )
            .prop_map(|(ring_id, clients, keys, views)| {
                let expired = keys.iter().map(|k| (k.group.clone(), k.key_id, KeyLoss::KeyOut)).collect();
                Body::State { ring_id, part: 0, parts: 1, clients, keys, expired, views }
            }),
    ]
}

proptest! {
    #[test]
    fn group_msg_round_trips(sender in name(), body in body()) {
        let sender = if matches!(body, Body::State { .. }) { Bytes::new() } else { sender };
        let m = GroupMsg { sender, body };
        prop_assert_eq!(GroupMsg::decode(&m.encode()), Ok(m.clone()));
        // Into a shared block, after whatever is there: the same bytes.
        let mut block = bytes::BytesMut::from(&b"earlier"[..]);
        let _ = block.split();
        let mut scratch = vec![1, 2, 3];
        m.encode_into(&mut scratch, &mut block);
        prop_assert_eq!(&block[..], &m.encode()[..]);
        if let Some(len) = m.data_len() {
            prop_assert_eq!(len, block.len());
        }
    }

    #[test]
    fn group_msg_decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = GroupMsg::decode(&Bytes::from(bytes));
    }

    #[test]
    fn group_msg_decode_of_mutated_is_total(body in body(), at in any::<usize>(), x in any::<u8>()) {
        let sender = if matches!(body, Body::State { .. }) { Bytes::new() } else { Bytes::from_static(b"a") };
        let mut b = GroupMsg { sender, body }.encode().to_vec();
        let i = at % b.len();
        b[i] ^= x;
        let _ = GroupMsg::decode(&Bytes::from(b.clone()));
        b.truncate(i);
        let _ = GroupMsg::decode(&Bytes::from(b));
    }
}

#[test]
fn decode_rejects_trailing_bytes_and_bad_headers() {
    let m = GroupMsg { sender: Bytes::from_static(b"c"), body: Body::Leave }.encode();
    let mut v = m.to_vec();
    v.push(0);
    assert_eq!(GroupMsg::decode(&Bytes::from(v)), Err(crate::wire::DecodeError::TrailingBytes));
    let mut v = m.to_vec();
    v[1] = 9;
    assert_eq!(GroupMsg::decode(&Bytes::from(v)), Err(crate::wire::DecodeError::UnsupportedVersion(9)));
}

#[test]
fn private_names_format_and_parse() {
    let p = PrivateName { daemon: NodeId(12), name: Bytes::from_static(b"alice") };
    assert_eq!(p.group_name(), b"#alice#12");
    assert_eq!(p.to_string(), "#alice#12");
    assert_eq!(PrivateName::parse(b"#alice#12"), Some(p));
    for bad in [&b"alice"[..], b"#alice", b"##1", b"#a#", b"#a#x", b"#a#70000", b"#a#b#1"] {
        assert_eq!(PrivateName::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn local_requests_are_checked() {
    let mut g =
        ClientGroups::with_limits(NodeId(1), Limits { max_groups_per_client: 2, ..Limits::default() });
    assert_eq!(g.connect(ClientId(1), b""), Err(GroupsError::BadName));
    assert_eq!(g.connect(ClientId(1), b"a#b"), Err(GroupsError::BadName));
    assert_eq!(g.connect(ClientId(1), &[b'x'; 33]), Err(GroupsError::BadName));
    assert!(g.connect(ClientId(1), b"a").is_ok());
    assert_eq!(g.connect(ClientId(2), b"a"), Err(GroupsError::DuplicateName));
    assert_eq!(g.connect(ClientId(1), b"b"), Err(GroupsError::DuplicateClient));
    assert_eq!(g.join(ClientId(9), b"g", GroupKind::Open), Err(GroupsError::UnknownClient));
    assert_eq!(g.join(ClientId(1), b"#a#1", GroupKind::Open), Err(GroupsError::BadName));
    assert!(g.join(ClientId(1), b"g", GroupKind::Open).is_ok());
    assert!(g.join(ClientId(1), b"h", GroupKind::Open).is_ok());
    assert_eq!(g.join(ClientId(1), b"i", GroupKind::Open), Err(GroupsError::TooManyGroups));
    assert_eq!(g.leave(ClientId(1), b"g"), Err(GroupsError::NotMember), "the join is not ordered yet");
    let flush = FlushId { ring_id: RingId { seq: 1, rep: NodeId(0) }, seq: 1 };
    assert_eq!(g.flush_ok(ClientId(1), b"g", flush), Err(GroupsError::NotMember));
    let none: [&[u8]; 0] = [];
    assert_eq!(
        g.multicast(ClientId(1), Service::Agreed, &none, 0, Bytes::new(), false, false),
        Err(GroupsError::BadDestinations)
    );
    assert!(
        g.multicast(ClientId(1), Service::Fifo, &[&b"g"[..], b"#b#2"], 0, Bytes::new(), false, false).is_ok()
    );
    assert!(g.disconnect(ClientId(1)).is_ok());
    assert_eq!(g.disconnect(ClientId(1)), Err(GroupsError::UnknownClient));
    assert_eq!(
        g.connect(ClientId(3), b"a"),
        Err(GroupsError::DuplicateName),
        "until the disconnect is ordered"
    );
    let n = std::iter::from_fn(|| g.poll_submit()).count();
    assert_eq!(n, 4);
}

/// Non-group payloads on the ring (e.g. other users of `Node`) are ignored.
#[test]
fn foreign_payloads_are_counted_and_ignored() {
    let mut w = World::with_ring(2, 1);
    w.run(5 * MS);
    w.servers[0]
        .node_mut()
        .submit(w.now, Service::Agreed, crate::wire::Groups::none(), Bytes::from_static(b"xyz"))
        .unwrap();
    w.run(20 * MS);
    assert_eq!(w.servers[1].groups().stats().undecodable, 1);
}

fn three_clients(w: &mut World, kind: GroupKind) -> [Who; 3] {
    let a = w.connect(0, 1, "a");
    let b = w.connect(1, 1, "b");
    let c = w.connect(2, 1, "c");
    for x in [a, b, c] {
        w.join(x, "g", kind).unwrap();
    }
    w.run(30 * MS);
    [a, b, c]
}

/// Section 5 of ARCHITECTURE.md: joins, leaves and disconnects are ordered
/// control messages, so every daemon computes the same views, each stating
/// its cause.
#[test]
fn views_agree_and_state_their_cause() {
    let mut w = World::with_ring(3, 1);
    w.run(5 * MS);
    let [a, b, c] = three_clients(&mut w, GroupKind::Open);
    let va = w.views_of(a, "g");
    let vc = w.views_of(c, "g");
    assert_eq!(va.last().unwrap().1.len(), 3);
    assert_eq!(va.last(), vc.last());
    assert!(va.iter().all(|v| v.2 == Cause::Join || v.2 == Cause::Network));
    w.leave(b, "g").unwrap();
    w.run(20 * MS);
    let last = w.views_of(a, "g").last().cloned().unwrap();
    assert_eq!(last.2, Cause::Leave);
    assert_eq!(last.1.len(), 2);
    assert!(w.log[&b].iter().any(|e| matches!(e, ClientEvent::Left { .. })));
    assert!(w.frames > 0, "the daemons spoke to their clients in frames");
    w.disconnect(c);
    w.run(20 * MS);
    let last = w.views_of(a, "g").last().cloned().unwrap();
    assert_eq!(last.2, Cause::Disconnect);
    assert_eq!(last.1, vec![PrivateName { daemon: NodeId(0), name: Bytes::from_static(b"a") }]);
    // The name is free again once the disconnect is ordered.
    assert!(w.try_connect_as(2, 5, "c", "").is_ok());
    assert_eq!(w.check(), Vec::<String>::new());
}

/// Several destinations: once per client; self-discard; private groups;
/// open groups accept non-members; every service is delivered in one order.
#[test]
fn multicast_semantics() {
    let mut w = World::with_ring(3, 2);
    w.run(5 * MS);
    let a = w.connect(0, 1, "a");
    let b = w.connect(1, 1, "b");
    let outsider = w.connect(2, 1, "o");
    for x in [a, b] {
        w.join(x, "g", GroupKind::Open).unwrap();
        w.join(x, "h", GroupKind::Open).unwrap();
    }
    w.run(30 * MS);
    let m1 = w.send(a, &["g", "h"], Service::Agreed, false).unwrap();
    let m2 = w.send(a, &["g"], Service::Safe, true).unwrap();
    let m3 = w.send(outsider, &["g"], Service::Unreliable, false).unwrap();
    let m4 = w.send(outsider, &["#b#1"], Service::Fifo, false).unwrap();
    w.run(30 * MS);
    assert_eq!(w.messages(a), vec![m1, m3]);
    assert_eq!(w.messages(b), vec![m1, m2, m3, m4]);
    assert_eq!(w.messages(outsider), Vec::<u64>::new());
    let services: Vec<Service> = w.log[&b]
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message { service, .. } => Some(*service),
            _ => None,
        })
        .collect();
    assert_eq!(services, vec![Service::Agreed, Service::Safe, Service::Unreliable, Service::Fifo]);
    assert_eq!(w.check(), Vec::<String>::new());
}

/// EVS (Moser et al. 1994, "Extended Virtual Synchrony"): a partition
/// gives, at every surviving member, the transitional signal first and then
/// a network view; the merge gives one merged view at every member.
#[test]
fn partition_then_merge() {
    let mut w = World::starting(3, 3);
    w.run(Duration::from_secs(2));
    assert!(w.servers.iter().all(|n| n.node().ring().is_some_and(|r| r.1.len() == 3)));
    let [a, b, c] = three_clients(&mut w, GroupKind::Open);
    let before = w.views_of(a, "g").len();
    w.partition(&[0, 0, 1]);
    w.run(Duration::from_secs(2));
    let va = w.views_of(a, "g");
    let last = va.last().unwrap();
    assert!(va.len() > before);
    assert_eq!(last.2, Cause::Network);
    assert_eq!(last.1.len(), 2, "c is gone: {last:?}");
    assert_eq!(w.views_of(b, "g").last(), Some(last));
    assert_eq!(w.views_of(c, "g").last().unwrap().1.len(), 1);
    let sig = w.log[&a].iter().position(
        |e| matches!(e, ClientEvent::Membership { kind: ConfigKind::Transitional, members, .. } if members.len() == 2),
    );
    let net = w.log[&a].iter().position(
        |e| matches!(e, ClientEvent::Membership { cause: Cause::Network, kind: ConfigKind::Regular, members, .. } if members.len() == 2),
    );
    assert!(sig.unwrap() < net.unwrap());
    // Both sides keep working.
    let m = w.send(c, &["g"], Service::Agreed, false).unwrap();
    w.run(20 * MS);
    assert!(w.messages(c).contains(&m) && !w.messages(a).contains(&m));
    w.heal();
    w.run(Duration::from_secs(3));
    let merged = w.views_of(a, "g").last().cloned().unwrap();
    assert_eq!(merged.1.len(), 3);
    assert_eq!(merged.2, Cause::Network);
    assert_eq!(w.views_of(c, "g").last(), Some(&merged));
    assert_eq!(w.check(), Vec::<String>::new());
}

/// VS (Birman; Spread's flush library): a change of a VS group asks every
/// member to flush; messages sent before a member's flush_ok are delivered
/// in the old view; the new view comes after every flush_ok.
#[test]
fn vs_flush_gives_sending_view_delivery() {
    let mut w = World::with_ring(3, 4);
    w.flush_delay = 5 * MS;
    w.run(5 * MS);
    let [a, b, _c] = three_clients(&mut w, GroupKind::Vs);
    let outsider = w.connect(2, 2, "o");
    assert_eq!(w.send(outsider, &["g"], Service::Agreed, false), Err(GroupsError::NotMember));
    let d = w.connect(1, 2, "d");
    w.join(d, "g", GroupKind::Vs).unwrap();
    // Send while the flush is going on.
    let mut sent = Vec::new();
    for _ in 0..20 {
        w.run(MS / 2);
        for x in [a, b] {
            match w.send(x, &["g"], Service::Agreed, false) {
                Ok(m) => sent.push(m),
                Err(e) => assert_eq!(e, GroupsError::Flushing),
            }
        }
    }
    w.run(30 * MS);
    assert!(w.log[&a].iter().any(|e| matches!(e, ClientEvent::FlushRequest { .. })));
    let last = w.views_of(a, "g").last().cloned().unwrap();
    assert_eq!((last.1.len(), last.2), (4, Cause::Join));
    assert!(!sent.is_empty());
    // Cascade: two changes in a row restart the flush.
    w.leave(b, "g").unwrap();
    w.run(MS);
    w.disconnect(d);
    w.run(40 * MS);
    assert_eq!(w.views_of(a, "g").last().unwrap().1.len(), 2);
    assert_eq!(w.join(outsider, "g", GroupKind::Open), Ok(()));
    w.run(20 * MS);
    assert!(
        w.log[&outsider]
            .iter()
            .any(|e| matches!(e, ClientEvent::JoinRefused { reason: Refusal::KindMismatch, .. }))
    );
    assert_eq!(w.check(), Vec::<String>::new());
}

/// VS, FIFO inside a view (the real-process symptom of issue 15: a member
/// delivered message 8858 then 8867 of one sender in one view while the
/// others delivered 8859-8866 there). A daemon is cut off while a flush
/// is pending, the sender's side delivers more messages of the view, the
/// flush does not end before the merge, and the sender goes on sending in
/// the same view in the merged ring. The cut-off member must not get those
/// later messages after its gap; and the members of each side end the old
/// view with a view of their side before the merged view (Birman's virtual
/// synchrony: members that move together from one view to the next
/// delivered the same messages in it).
#[test]
fn vs_member_cut_off_during_a_flush_gets_no_gap_after_the_merge() {
    let mut w = World::starting(3, 11);
    w.run(Duration::from_secs(2));
    assert!(w.servers.iter().all(|n| n.node().ring().is_some_and(|r| r.1.len() == 3)));
    let [a, b, x] = three_clients(&mut w, GroupKind::Vs);
    let common = w.views_of(x, "g").last().cloned().unwrap();
    assert_eq!(common.1.len(), 3);
    assert_eq!(w.views_of(a, "g").last(), Some(&common));
    // The flushes of the partition rings never end: nobody answers.
    w.hold_flushes = true;
    w.partition(&[0, 0, 1]);
    w.run(Duration::from_secs(2));
    assert!(w.servers[0].node().ring().is_some_and(|r| r.1.len() == 2), "a's side formed its ring");
    let gap: Vec<u64> = (0..5).map(|_| w.send(a, &["g"], Service::Agreed, false).unwrap()).collect();
    w.run(20 * MS);
    assert!(gap.iter().all(|m| w.messages(b).contains(m)), "b delivers a's messages in the old view");
    w.heal();
    w.run(Duration::from_secs(3));
    assert!(w.servers.iter().all(|n| n.node().ring().is_some_and(|r| r.1.len() == 3)), "merged");
    assert_eq!(w.views_of(x, "g").last(), Some(&common), "still the old view: its flush is pending");
    // Still in the old view (its flush pending): sent after the merge.
    let later = w.send(a, &["g"], Service::Agreed, false).unwrap();
    w.run(20 * MS);
    assert!(w.messages(a).contains(&later));
    assert!(!w.messages(x).contains(&later), "x missed a's messages {gap:?} in the view: no gap");
    w.hold_flushes = false;
    w.run(Duration::from_secs(1));
    // Each side ends the old view with a view of its own, then all merge.
    let xa = w.views_of(x, "g");
    let va = w.views_of(a, "g");
    let after = |v: &[(ViewId, Vec<PrivateName>, Cause)]| {
        let i = v.iter().position(|e| e.0 == common.0).unwrap();
        v[i + 1..].iter().map(|e| (e.1.len(), e.2)).collect::<Vec<_>>()
    };
    assert_eq!(after(&xa), vec![(1, Cause::Network), (3, Cause::Network)]);
    assert_eq!(after(&va), vec![(2, Cause::Network), (3, Cause::Network)]);
    assert_eq!(xa.last(), va.last());
    assert_eq!(w.views_of(b, "g").last(), va.last());
    assert_eq!(w.check(), Vec::<String>::new());
}

/// Many seeds: random joins, leaves, disconnects and sends to open and VS
/// groups, with a partition and a merge; every invariant of the checker.
#[test]
fn random_runs_with_partitions() {
    // messages, network views, transitional signals, flush requests, other views
    let mut totals = [0u64; 5];
    // RF_SEEDS=1500 runs more seeds by hand (1500 pass).
    for seed in 0..std::env::var("RF_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = 3 + (seed % 2) as usize;
        let mut w = World::starting(n, seed);
        w.run(Duration::from_millis(1200));
        let mut clients = Vec::new();
        for d in 0..n {
            for c in 0..3 {
                clients.push(w.connect(d, c, &format!("c{d}{c}")));
            }
        }
        let groups = ["g1", "g2", "v1"];
        let kind = |g: &str| if g.starts_with('v') { GroupKind::Vs } else { GroupKind::Open };
        let part_at = rng.random_range(100..400);
        let heal_at = part_at + rng.random_range(300..900);
        let mut labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..2)).collect();
        labels[0] = 0;
        labels[rng.random_range(1..n)] = 1;
        let mut next_id = 100;
        for step in 0..1400u32 {
            if step == part_at {
                w.partition(&labels);
            }
            if step == heal_at {
                w.heal();
            }
            let who = clients[rng.random_range(0..clients.len())];
            let g = groups[rng.random_range(0..groups.len())];
            let _ = match rng.random_range(0..100) {
                0..15 => w.join(who, g, kind(g)),
                15..20 => w.leave(who, g),
                20..22 => {
                    w.disconnect(who);
                    let i = clients.iter().position(|x| *x == who).unwrap();
                    next_id += 1;
                    clients[i] = w.connect(who.0, next_id, &format!("n{next_id}"));
                    Ok(())
                }
                22..30 => w.send(who, &["g1", "g2"], Service::Agreed, rng.random_bool(0.5)).map(|_| ()),
                _ => w.send(who, &[g], Service::Agreed, false).map(|_| ()),
            };
            w.run(MS);
        }
        w.heal();
        w.run(Duration::from_secs(3));
        let v = w.check();
        assert!(v.is_empty(), "seed {seed}: {v:#?}");
        for evs in w.log.values() {
            for e in evs {
                match e {
                    ClientEvent::Message { .. } => totals[0] += 1,
                    ClientEvent::Membership { cause: Cause::Network, kind: ConfigKind::Regular, .. } => {
                        totals[1] += 1
                    }
                    ClientEvent::Membership { kind: ConfigKind::Transitional, .. } => totals[2] += 1,
                    ClientEvent::FlushRequest { .. } => totals[3] += 1,
                    ClientEvent::Membership { .. } => totals[4] += 1,
                    _ => {}
                }
            }
        }
        // After the heal, every daemon agrees on every group's view.
        for g in groups {
            let first = w.servers[0].groups().view(g.as_bytes()).map(|(id, m)| (id, m.to_vec()));
            for d in 1..n {
                let here = w.servers[d].groups().view(g.as_bytes()).map(|(id, m)| (id, m.to_vec()));
                if let (Some(x), Some(y)) = (&first, &here) {
                    assert_eq!(x, y, "seed {seed} group {g}");
                }
            }
        }
    }
    eprintln!("random runs: {totals:?}");
    assert!(totals.iter().all(|&t| t > 20), "the workload exercised every path: {totals:?}");
}

/// A daemon's state larger than a part is split over several ring messages;
/// the exchange waits for every part of every member and merges as one.
#[test]
fn large_states_go_in_parts() {
    let mut w = World::starting(3, 11);
    for s in &mut w.servers {
        s.groups_mut().limits.max_state_part = 48;
    }
    w.run(Duration::from_secs(2));
    let mut clients = Vec::new();
    for d in 0..3 {
        for c in 0..4 {
            let who = w.connect(d, c, &format!("c{d}{c}"));
            for g in ["alpha", "beta", "gamma"] {
                w.join(who, g, GroupKind::Open).unwrap();
            }
            clients.push(who);
        }
    }
    w.run(50 * MS);
    let exchanges = w.servers[0].groups().stats().exchanges;
    w.partition(&[0, 0, 1]);
    w.run(Duration::from_secs(2));
    w.heal();
    w.run(Duration::from_secs(3));
    assert!(
        w.servers[0].groups().stats().exchanges >= exchanges + 2,
        "the partition and the merge exchanged state"
    );
    for who in &clients {
        let last = w.views_of(*who, "beta").last().cloned().unwrap();
        assert_eq!((last.1.len(), last.2), (12, Cause::Network), "{who:?}");
    }
    let m = w.send(clients[0], &["gamma"], Service::Agreed, false).unwrap();
    w.run(20 * MS);
    assert!(clients.iter().all(|c| w.messages(*c).contains(&m)));
    assert_eq!(w.check(), Vec::<String>::new());
}

#[test]
fn state_parts_cover_the_state_within_the_budget() {
    let ring_id = RingId { seq: 3, rep: NodeId(1) };
    let entry = |i: u8| StateEntry {
        name: Bytes::from(vec![b'a' + i; 5]),
        groups: vec![StateGroup {
            name: Bytes::from_static(b"group"),
            kind: GroupKind::Open,
            mode: GroupMode::None,
            in_view: true,
        }],
    };
    let clients: Vec<StateEntry> = (0..6).map(entry).collect();
    let expired = vec![(Bytes::from_static(b"g"), 7, KeyLoss::KeyOut)];
    let views: Vec<StateView> = (0..3)
        .map(|i| StateView {
            group: Bytes::from_static(b"vs"),
            view: ViewId { ring_id, counter: i },
            peers: vec![NodeId(1), NodeId(2)],
        })
        .collect();
    let state = (clients.clone(), Vec::new(), expired.clone(), views.clone());
    let parts = super::state_parts(ring_id, state, 40);
    assert!(parts.len() >= 4, "{}", parts.len());
    let (mut got_c, mut got_x, mut got_v) = (Vec::new(), Vec::new(), Vec::new());
    for (i, p) in parts.iter().enumerate() {
        let Body::State { ring_id: r, part, parts: n, clients, expired, views, .. } = p else {
            panic!("not a state")
        };
        assert_eq!((*r, usize::from(*part), usize::from(*n)), (ring_id, i, parts.len()));
        assert!(GroupMsg { sender: Bytes::new(), body: p.clone() }.encode().len() < 40 + 40);
        got_c.extend(clients.iter().cloned());
        got_x.extend(expired.iter().cloned());
        got_v.extend(views.iter().cloned());
    }
    assert_eq!((got_c, got_x, got_v), (clients, expired, views));
    let one = super::state_parts(ring_id, (Vec::new(), Vec::new(), Vec::new(), Vec::new()), 40);
    assert!(matches!(&one[..], [Body::State { part: 0, parts: 1, .. }]));
}
