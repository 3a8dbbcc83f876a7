//! Unit tests of the token rules, driven by hand. The simulator covers the
//! protocol as a whole; these pin down single rules (Totem paper, section 3
//! "the total ordering protocol", as refined in Spread's accelerated ring).

use super::*;
use crate::Node;
use crate::wire::{PacketBuilder, RTR_RANGE_LEN, TOKEN_FIXED_LEN};

const RING: RingId = RingId { seq: 1, rep: NodeId(0) };

fn ids(n: u16) -> Vec<NodeId> {
    (0..n).map(NodeId).collect()
}

fn node(cfg: &Config, id: u16, n: u16) -> Node {
    Node::with_ring(cfg.clone(), NodeId(id), &ids(n), RING, Time::ZERO).unwrap()
}

fn plain() -> Config {
    Config { accelerated: false, token_hold: Duration::ZERO, ..Config::default() }
}

fn token(seq: u64, token_seq: u64) -> Token {
    Token { ring_id: RING, token_seq, seq, aru: 0, aru_id: NodeId(0), fcc: 0, backlog: 0, rtr: vec![] }
}

fn packet(seq: u64, sender: u16) -> Bytes {
    let mut b = PacketBuilder::new(RING, seq, NodeId(sender), 1400);
    b.push(seq, Service::Agreed, ChunkFlags::WHOLE, 1, &Groups::none(), b"x");
    b.finish()
}

fn drain(n: &mut Node) -> Vec<Transmit> {
    std::iter::from_fn(|| n.poll_transmit()).collect()
}

fn tokens(ts: &[Transmit]) -> Vec<Token> {
    ts.iter().filter_map(|t| Token::decode(&t.bytes).ok()).collect()
}

use std::time::Duration;

#[test]
fn token_fits_one_frame_however_many_packets_are_missing() {
    // Spread 4 crashed with "token too long for packet" at ~1,500 holes.
    let cfg = plain();
    let mut b = node(&cfg, 1, 2);
    for seq in (1..=3000).step_by(2) {
        b.handle_datagram(Time::ZERO, packet(seq, 0));
    }
    b.handle_datagram(Time::ZERO, Bytes::from(token(3000, 1).encode()));
    let out = drain(&mut b);
    let t = tokens(&out);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].rtr.len(), cfg.max_rtr_ranges());
    assert_eq!(t[0].rtr[0], RtrRange { start: 2, len: 1 });
    assert!(t[0].encoded_len() <= cfg.frame_budget());
    assert!(cfg.max_rtr_ranges() * RTR_RANGE_LEN + TOKEN_FIXED_LEN <= cfg.frame_budget());
}

#[test]
fn a_bogus_token_costs_bounded_work() {
    // At the window's edge, asking for every packet there is: one frame.
    let cfg = plain();
    let mut b = node(&cfg, 1, 2);
    let edge = 4 * cfg.max_unstable;
    let mut t = token(edge, 1);
    t.rtr = vec![RtrRange { start: 1, len: u32::try_from(edge).unwrap() }];
    b.handle_datagram(Time::ZERO, Bytes::from(t.encode()));
    let out = tokens(&drain(&mut b));
    assert_eq!(out.len(), 1);
    assert!(out[0].encoded_len() <= cfg.frame_budget());
    // Far beyond it: dropped and counted, nothing sent.
    let mut t = token(u64::MAX / 2, 3);
    t.rtr = vec![RtrRange { start: 1, len: u32::MAX }];
    b.handle_datagram(Time::ZERO, Bytes::from(t.encode()));
    assert!(drain(&mut b).is_empty());
    assert_eq!(b.stats().bad_tokens, 1);
}

/// Issue 14, break 2: a token with `seq = aru = 2^36` (ring id and token
/// sequence as a live token's) made the receiver number its next packet
/// 2^36 + 1 and size its store for it (6 TB). Tokens are held to the
/// window data packets are held to (Totem: no member sends beyond the
/// token's aru plus the window), so it is dropped and counted, and the ring
/// goes on with the real token.
#[test]
fn a_token_beyond_the_window_is_dropped_before_it_sizes_the_store() {
    let cfg = plain();
    let members = ids(3);
    let mut r = Ring::new(cfg.clone(), NodeId(1), &members, RING, Time::ZERO, false).unwrap();
    let mut out = Outboxes { user_allowed: true, ..Outboxes::default() };
    out.user.push(Pending {
        msg_seq: 1,
        service: Service::Agreed,
        groups: Groups::none(),
        payload: Bytes::from_static(b"m"),
        sent: 0,
    });
    let forged = Token { aru: 1 << 36, aru_id: NodeId::NONE, ..token(1 << 36, 1) };
    assert!(!r.handle_token(Time::ZERO, forged, Some(NodeId(0)), &mut out));
    assert_eq!((r.stats().bad_tokens, r.stored_packets()), (1, 0));
    assert!(r.poll_transmit().is_none());
    // The real token (same token sequence) is taken and used.
    assert!(r.handle_token(Time::ZERO, token(0, 1), Some(NodeId(0)), &mut out));
    assert_eq!((r.stats().packets_sent, r.stored_packets()), (1, 1));
}

/// Issue 14, break 1: the ring takes the token only from its predecessor
/// (members pass it in ascending id order, wrapping around), with a token
/// sequence at most a few rotations ahead, and never numbered below a
/// packet it holds.
#[test]
fn a_token_from_anyone_but_the_predecessor_is_dropped() {
    let cfg = plain();
    let members = ids(3);
    let mut r = Ring::new(cfg, NodeId(0), &members, RING, Time::ZERO, false).unwrap();
    let mut out = Outboxes::default();
    // Daemon 0's predecessor is 2: a token from 1 is a redirect.
    assert!(!r.handle_token(Time::ZERO, token(0, 1), Some(NodeId(1)), &mut out));
    // A token sequence far ahead of the last one (a forged one).
    assert!(!r.handle_token(Time::ZERO, token(0, 1 << 40), Some(NodeId(2)), &mut out));
    assert_eq!(r.stats().bad_tokens, 2);
    assert!(r.handle_token(Time::ZERO, token(0, 1), Some(NodeId(2)), &mut out));
    // A packet numbered 5 exists: a token saying 4 is not the ring's.
    let p = packet(5, 1);
    let decoded = DataPacket::decode(p.clone()).unwrap();
    r.handle_packet(p, decoded);
    assert!(!r.handle_token(Time::ZERO, token(4, 5), Some(NodeId(2)), &mut out));
    assert_eq!(r.stats().bad_tokens, 3);
    assert!(r.handle_token(Time::ZERO, token(5, 5), Some(NodeId(2)), &mut out));
}

/// A first fragment declaring a message larger than any a daemon submits
/// is dropped and counted before a buffer is sized from it.
#[test]
fn a_fragment_declaring_too_large_a_message_allocates_nothing() {
    let cfg = Config { max_message: 4096, ..plain() };
    let mut b = node(&cfg, 1, 2);
    let first = ChunkFlags { first: true, last: false };
    let mut p = PacketBuilder::new(RING, 1, NodeId(0), 1400);
    p.push(1, Service::Agreed, first, u32::MAX, &Groups::none(), b"head");
    b.handle_datagram(Time::ZERO, p.finish());
    let mut p = PacketBuilder::new(RING, 2, NodeId(0), 1400);
    p.push(2, Service::Agreed, first, 4000, &Groups::none(), b"head");
    b.handle_datagram(Time::ZERO, p.finish());
    let s = b.stats();
    assert_eq!((s.packets_received, s.reassembly_errors), (2, 1));
}

#[test]
fn stale_and_duplicate_tokens_are_dropped() {
    let cfg = plain();
    let mut b = node(&cfg, 1, 2);
    b.handle_datagram(Time::ZERO, Bytes::from(token(0, 5).encode()));
    assert_eq!(tokens(&drain(&mut b)).len(), 1);
    b.handle_datagram(Time::ZERO, Bytes::from(token(0, 5).encode()));
    b.handle_datagram(Time::ZERO, Bytes::from(token(0, 3).encode()));
    assert!(drain(&mut b).is_empty());
    assert_eq!(b.stats().stale_tokens, 2);
    assert_eq!(b.stats().tokens_received, 1);
}

#[test]
fn the_token_is_resent_until_the_ring_moves_on() {
    let cfg = plain();
    let mut b = node(&cfg, 1, 3);
    b.handle_datagram(Time::ZERO, Bytes::from(token(0, 1).encode()));
    let first = drain(&mut b);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].dest, Dest::Node(NodeId(2)));
    let deadline = b.poll_timeout().unwrap();
    assert_eq!(deadline, Time::ZERO + cfg.token_retransmit);
    b.handle_timeout(deadline);
    let again = drain(&mut b);
    assert_eq!(again, first);
    // A packet numbered above the token we passed proves a successor got it.
    b.handle_datagram(deadline, packet(1, 2));
    // Only the token-loss deadline is left.
    assert_eq!(b.poll_timeout(), Some(Time::ZERO + cfg.token_timeout));
    assert_eq!(b.stats().token_retransmits, 1);
}

#[test]
fn packing_puts_many_messages_in_one_frame() {
    for (packing, frames) in [(true, 3), (false, 30)] {
        let cfg = Config { packing, ..plain() };
        let mut a = node(&cfg, 0, 2);
        for _ in 0..30 {
            a.submit(Time::ZERO, Service::Agreed, Groups::none(), Bytes::from(vec![7u8; 100])).unwrap();
        }
        a.handle_timeout(Time::ZERO);
        let out = drain(&mut a);
        let data: Vec<_> = out.iter().filter(|t| t.dest == Dest::All).collect();
        assert_eq!(data.len(), frames, "packing {packing}");
        assert!(data.iter().all(|t| t.bytes.len() <= cfg.frame_budget()));
    }
}

#[test]
fn accelerated_ring_passes_the_token_before_its_last_packets() {
    let cfg = Config { token_hold: Duration::ZERO, ..Config::default() };
    let mut a = node(&cfg, 0, 2);
    for _ in 0..40 {
        a.submit(Time::ZERO, Service::Agreed, Groups::none(), Bytes::from(vec![1u8; 1000])).unwrap();
    }
    a.handle_timeout(Time::ZERO);
    let out = drain(&mut a);
    let at = out.iter().position(|t| t.dest == Dest::Node(NodeId(1))).unwrap();
    assert_eq!(out.len() - at - 1, cfg.accelerated_window as usize);
    assert_eq!(at, out.len() - 1 - cfg.accelerated_window as usize);
}

#[test]
fn safe_messages_wait_for_the_token_to_show_every_member_holds_them() {
    let cfg = plain();
    let mut a = node(&cfg, 0, 2);
    let mut b = node(&cfg, 1, 2);
    a.submit(Time::ZERO, Service::Safe, Groups::none(), Bytes::from_static(b"s")).unwrap();
    a.handle_timeout(Time::ZERO);
    let mut delivered_b = 0;
    let mut delivered_a = 0;
    let mut now = Time::ZERO;
    // Pass datagrams back and forth; count when each side delivers.
    for round in 0..6 {
        now = now + Duration::from_micros(100);
        for t in drain(&mut a) {
            b.handle_datagram(now, t.bytes);
        }
        for t in drain(&mut b) {
            a.handle_datagram(now, t.bytes);
        }
        while let Some(e) = a.poll_event() {
            if matches!(e, Event::Deliver(_)) {
                delivered_a += 1;
                assert!(b.holds(RING, 1), "round {round}: a delivered a safe message b lacks");
            }
        }
        while let Some(e) = b.poll_event() {
            if matches!(e, Event::Deliver(_)) {
                delivered_b += 1;
            }
        }
        if round == 0 {
            // b holds the packet but has not seen the token cover it twice.
            assert_eq!(delivered_b, 0);
        }
    }
    assert_eq!((delivered_a, delivered_b), (1, 1));
}

#[test]
fn submit_refuses_when_the_queue_is_full_or_the_message_too_large() {
    let cfg = Config { max_pending_messages: 2, ..plain() };
    let mut a = node(&cfg, 0, 2);
    let m = || Bytes::from_static(b"m");
    assert!(a.submit(Time::ZERO, Service::Agreed, Groups::none(), m()).is_ok());
    assert!(a.submit(Time::ZERO, Service::Agreed, Groups::none(), m()).is_ok());
    assert_eq!(a.submit(Time::ZERO, Service::Agreed, Groups::none(), m()), Err(SubmitError::Backlogged));
    let big = Bytes::from(vec![0u8; cfg.max_message + 1]);
    assert_eq!(
        a.submit(Time::ZERO, Service::Agreed, Groups::none(), big),
        Err(SubmitError::TooLarge(cfg.max_message + 1))
    );
}

#[test]
fn foreign_and_garbage_datagrams_are_counted_and_dropped() {
    let cfg = plain();
    let mut b = node(&cfg, 1, 2);
    let mut other = token(0, 1);
    other.ring_id = RingId { seq: 9, rep: NodeId(0) };
    b.handle_datagram(Time::ZERO, Bytes::from(other.encode()));
    b.handle_datagram(Time::ZERO, Bytes::from_static(b"garbage"));
    b.handle_datagram(Time::ZERO, packet(1, 7));
    b.handle_datagram(Time::ZERO, packet(1_000_000, 0));
    assert!(drain(&mut b).is_empty());
    let s = b.stats();
    assert_eq!((s.foreign, s.bad_datagrams, s.out_of_window, s.packets_received), (2, 1, 1, 0));
}

#[test]
fn config_errors_name_the_field() {
    let bad = Config { mtu: 100, ..Config::default() };
    assert_eq!(bad.validate().unwrap_err().field, "mtu");
    // The smallest MTU the message names works; one byte less does not.
    let reason = bad.validate().unwrap_err().reason;
    let least: usize = reason.split(' ').nth(3).unwrap().parse().unwrap();
    assert!(Config { mtu: least, ..Config::default() }.validate().is_ok(), "{reason}");
    assert!(Config { mtu: least - 1, ..Config::default() }.validate().is_err(), "{reason}");
    assert_eq!(Config::default().frame_budget(), 1379);
    let bad = Config { window: 1, ..Config::default() };
    assert_eq!(bad.validate().unwrap_err().field, "window");
}

/// Review finding: a copy of the second-rotation commit token reaching the
/// representative during recovery restarted the new ring's token (seq 0),
/// which lost the ring (and could number a packet twice). The copy is
/// delivered again to the representative once its new ring is running but
/// recovery is not over; the ring must form once and stay.
#[test]
fn a_duplicated_commit_token_does_not_restart_the_ring() {
    for n in 2..=3 {
        duplicated_commit_token(n);
    }
}

fn duplicated_commit_token(n: u16) {
    use crate::wire::Datagram;
    use crate::{Incarnation, Phase};
    let cfg = Config::default();
    let inc = Incarnation { ring_seq: 0, first_msg_seq: 1 };
    let mut nodes: Vec<Node> =
        (0..n).map(|i| Node::new(cfg.clone(), NodeId(i), Time::ZERO, inc).unwrap()).collect();
    let mut queue: Vec<(usize, Bytes)> = Vec::new();
    let mut saved: Option<Bytes> = None;
    let mut injected = false;
    for step in 0..3000u64 {
        let now = Time::ZERO + Duration::from_millis(step);
        if step == 50 {
            for nd in &mut nodes {
                nd.submit(now, Service::Agreed, Groups::none(), Bytes::from_static(b"m")).unwrap();
            }
        }
        for nd in &mut nodes {
            if nd.poll_timeout().is_some_and(|t| t <= now) {
                nd.handle_timeout(now);
            }
        }
        for (to, b) in std::mem::take(&mut queue) {
            if let Ok(Datagram::Commit(c)) = Datagram::decode(b.clone()) {
                if to == 0 && c.rotation == 2 && saved.is_none() {
                    saved = Some(b.clone());
                }
            }
            nodes[to].handle_datagram(now, b);
        }
        if !injected && nodes[0].phase() == Phase::Recovery && nodes[0].stats().packets_sent > 0 {
            if let Some(b) = saved.clone() {
                nodes[0].handle_datagram(now, b);
                injected = true;
            }
        }
        for i in 0..nodes.len() {
            while let Some(t) = nodes[i].poll_transmit() {
                match t.dest {
                    Dest::All => {
                        queue.extend((0..nodes.len()).filter(|&j| j != i).map(|j| (j, t.bytes.clone())))
                    }
                    Dest::Node(id) => queue.push((usize::from(id.0), t.bytes.clone())),
                }
            }
            while nodes[i].poll_event().is_some() {}
        }
    }
    assert!(injected, "{n} nodes: the copy was never delivered during recovery");
    for node in &nodes {
        assert_eq!(node.phase(), Phase::Operational);
        let s = node.stats();
        assert_eq!((s.rings_installed, s.bad_datagrams), (1, 0), "{n} nodes, node {}: {s:?}", node.id());
    }
}

mod bounds {
    //! Property tests: whatever numbers tokens, packets and membership
    //! messages carry (valid ones mixed with arbitrary ones), nothing
    //! panics, the store stays within the window, and ring sequences move
    //! by a bounded step per datagram (issue 14).

    use super::*;
    use crate::wire::{Beacon, Join};
    use proptest::prelude::*;

    /// A number from the wire: mostly near the ring's real numbers, at
    /// times anything at all.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 0u64..3000, 1 => any::<u64>(), 1 => Just(u64::MAX), 1 => Just(1u64 << 36)]
    }

    /// A token field: a small step above the receiver's own number (what a
    /// live token carries), or any number.
    #[derive(Clone, Copy, Debug)]
    enum Field {
        Near(u64),
        Any(u64),
    }

    impl Field {
        fn at(self, own: u64) -> u64 {
            match self {
                Self::Near(d) => own.saturating_add(d),
                Self::Any(n) => n,
            }
        }
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![3 => (0u64..40).prop_map(Field::Near), 2 => number().prop_map(Field::Any)]
    }

    #[derive(Clone, Debug)]
    enum Input {
        /// `aru: None` is `aru = seq` (an idle ring's token).
        Token {
            token_seq: Field,
            seq: Field,
            aru: Option<Field>,
            from: u16,
            rtr: Option<(u64, u32)>,
        },
        Packet {
            seq: Field,
            sender: u16,
            first_of: Option<u32>,
        },
        Timeout,
    }

    fn input() -> impl Strategy<Value = Input> {
        let from = prop_oneof![3 => Just(0u16), 1 => 0u16..4];
        let rtr = proptest::option::of((1u64..3000, 1u32..5000));
        prop_oneof![
            3 => (field(), field(), proptest::option::of(field()), from, rtr)
                .prop_map(|(token_seq, seq, aru, from, rtr)| Input::Token { token_seq, seq, aru, from, rtr }),
            2 => (field(), 0u16..3, proptest::option::of(any::<u32>()))
                .prop_map(|(seq, sender, first_of)| Input::Packet { seq, sender, first_of }),
            1 => Just(Input::Timeout),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_tokens_and_packets_keep_the_store_in_the_window(inputs in proptest::collection::vec(input(), 1..80)) {
            let cfg = plain();
            let members = ids(3);
            let mut r = Ring::new(cfg.clone(), NodeId(1), &members, RING, Time::ZERO, false).unwrap();
            let mut out = Outboxes { user_allowed: true, ..Outboxes::default() };
            let mut now = Time::ZERO;
            for (k, input) in inputs.into_iter().enumerate() {
                now = now + Duration::from_millis(1);
                out.user.push(Pending {
                    msg_seq: k as u64 + 1,
                    service: Service::Agreed,
                    groups: Groups::none(),
                    payload: Bytes::from_static(b"m"),
                    sent: 0,
                });
                match input {
                    Input::Token { token_seq, seq, aru, from, rtr } => {
                        let seq = seq.at(r.high_seq);
                        let aru = aru.map_or(seq, |a| a.at(r.my_aru).min(seq));
                        let token_seq = token_seq.at(r.last_token_seq);
                        let mut t = Token { aru, aru_id: NodeId::NONE, ..token(seq, token_seq) };
                        if let Some((start, len)) = rtr.filter(|(s, l)| s + u64::from(*l) <= seq.saturating_add(1)) {
                            t.rtr = vec![RtrRange { start, len }];
                        }
                        // Through the decoder, as from the wire.
                        if let Ok(t) = Token::decode(&t.encode()) {
                            r.handle_token(now, t, Some(NodeId(from)), &mut out);
                        }
                    }
                    Input::Packet { seq, sender, first_of } => {
                        let seq = seq.at(r.high_seq);
                        let mut b = PacketBuilder::new(RING, seq.max(1), NodeId(sender), 1400);
                        match first_of {
                            Some(total) => b.push(seq.max(1), Service::Agreed, ChunkFlags { first: true, last: false }, total.max(5), &Groups::none(), b"part"),
                            None => b.push(seq.max(1), Service::Agreed, ChunkFlags::WHOLE, 1, &Groups::none(), b"x"),
                        }
                        let raw = b.finish();
                        if let Ok(p) = DataPacket::decode(raw.clone()) {
                            r.handle_packet(raw, p);
                        }
                    }
                    Input::Timeout => r.handle_timeout(now + cfg.token_retransmit, &mut out),
                }
                while r.poll_transmit().is_some() {}
                while r.poll_delivery().is_some() {}
                // New packets go at most `max_unstable` past a token's aru,
                // itself at most its seq, within the window.
                prop_assert!(r.stored_packets() as u64 <= 5 * cfg.max_unstable + 1, "{}", r.stored_packets());
                prop_assert!(r.partials.iter().all(|p| p.buf.capacity() <= cfg.max_message.max(cfg.mtu)));
            }
        }

        #[test]
        fn ring_sequences_from_datagrams_move_a_bounded_step(
            msgs in proptest::collection::vec((0u8..3, number(), 0u16..4), 1..40),
        ) {
            let cfg = Config::default();
            let start = 7;
            let inc = crate::Incarnation { ring_seq: start, first_msg_seq: 1 };
            let mut n = Node::new(cfg.clone(), NodeId(0), Time::ZERO, inc).unwrap();
            let mut now = Time::ZERO;
            for (k, (kind, seq, sender)) in msgs.iter().copied().enumerate() {
                now = now + Duration::from_millis(3);
                let sender = NodeId(sender);
                let ring_id = RingId { seq, rep: sender };
                let bytes = match kind {
                    0 => Join { sender, ring_id, max_ring_seq: seq, procs: ids(4), fails: vec![], suspects: vec![] }.encode(),
                    1 => Beacon { sender, ring_id, echo: false }.encode(),
                    _ => packet_of(ring_id, sender),
                };
                n.handle_datagram(now, Bytes::from(bytes));
                if let Some(t) = n.poll_timeout().filter(|t| *t <= now) {
                    n.handle_timeout(t);
                }
                while n.poll_transmit().is_some() {}
                while n.poll_event().is_some() {}
                let bound = start + (k as u64 + 1) * (crate::MAX_RING_STEP + 1) + 1;
                prop_assert!(n.max_ring_seq() <= bound, "{} > {bound}", n.max_ring_seq());
                prop_assert!(n.ring_seq_to_persist() <= n.max_ring_seq());
            }
        }
    }

    fn packet_of(ring_id: RingId, sender: NodeId) -> Vec<u8> {
        let mut b = PacketBuilder::new(ring_id, 1, sender, 1400);
        b.push(1, Service::Agreed, ChunkFlags::WHOLE, 1, &Groups::none(), b"x");
        b.finish().to_vec()
    }
}

/// A packet numbered above the token the representative holds (forged, in
/// mode `none`: no other token exists) would have it number that slot
/// twice when the hold ends. The held token is dropped and counted
/// instead, and the ring is formed anew after the token timeout.
#[test]
fn a_packet_above_a_held_token_retires_the_token() {
    let cfg = Config { token_hold: Duration::from_millis(1), ..plain() };
    let mut a = node(&cfg, 0, 2);
    a.handle_timeout(Time::ZERO); // the ring's first token, passed to 1
    assert_eq!(tokens(&drain(&mut a)).len(), 1);
    a.handle_datagram(Time::ZERO, Bytes::from(token(0, 2).encode())); // back, idle: held
    assert!(tokens(&drain(&mut a)).is_empty());
    a.handle_datagram(Time::ZERO, packet(1, 1));
    a.submit(Time::ZERO, Service::Agreed, Groups::none(), Bytes::from_static(b"m")).unwrap();
    a.handle_timeout(Time::ZERO + Duration::from_millis(2));
    assert!(tokens(&drain(&mut a)).is_empty());
    assert_eq!(a.stats().bad_tokens, 1);
    // Timers fire on time (the token deadline is put off once by the read
    // grace, a late one by a retransmission interval).
    let later = Time::ZERO + cfg.token_timeout + Duration::from_millis(3) + cfg.token_retransmit / 10;
    while let Some(t) = a.poll_timeout().filter(|&t| t <= later && a.phase() != crate::Phase::Gather) {
        a.handle_timeout(t);
        drain(&mut a);
    }
    assert_eq!(a.phase(), crate::Phase::Gather);
}

/// A host whose timers always fire late (over half a retransmission
/// interval): the token deadline is excused once, to read what waits, and
/// the lost token is still detected soon after.
#[test]
fn timers_that_always_fire_late_still_detect_a_lost_token() {
    let cfg = plain();
    let mut a = node(&cfg, 0, 2);
    a.handle_timeout(Time::ZERO); // the ring's first token, passed to 1 and lost
    drain(&mut a);
    let late = cfg.token_retransmit;
    let mut now = Time::ZERO;
    while a.phase() != crate::Phase::Gather {
        now = a.poll_timeout().expect("a deadline") + late;
        assert!(now < Time::ZERO + cfg.token_timeout + 4 * late, "token loss not detected by {now:?}");
        a.handle_timeout(now);
        drain(&mut a);
    }
    assert_eq!(a.stats().late_timers, 1);
    assert!(now > Time::ZERO + cfg.token_timeout + late, "the late deadline was not excused");
}

/// Simulator seed 7909: a daemon stalled across its token deadline wakes a
/// hair past it with the token waiting in its socket, and its runtime hands
/// over the timer first. The deadline is put off once by a read grace, the
/// token is read, and the ring goes on; without a token the loss is still
/// detected, one grace later.
#[test]
fn a_token_waiting_at_the_deadline_is_read_before_the_token_is_timed_out() {
    let cfg = plain();
    let deadline = Time::ZERO + cfg.token_timeout;
    let grace = cfg.token_retransmit / 10;
    for token_waits in [true, false] {
        let mut a = node(&cfg, 0, 2);
        a.handle_timeout(Time::ZERO); // the ring's first token, passed to 1
        drain(&mut a);
        while let Some(t) = a.poll_timeout().filter(|&t| t < deadline) {
            a.handle_timeout(t); // retransmissions, on time
            drain(&mut a);
        }
        let woke = deadline + Duration::from_micros(800);
        a.handle_timeout(woke);
        drain(&mut a);
        assert_eq!(a.phase(), crate::Phase::Operational, "the token was timed out before it was read");
        if token_waits {
            a.handle_datagram(woke, Bytes::from(token(0, 2).encode()));
            drain(&mut a);
        }
        let after = woke + grace;
        while let Some(t) = a.poll_timeout().filter(|&t| t <= after) {
            a.handle_timeout(t);
            drain(&mut a);
        }
        let want = if token_waits { crate::Phase::Operational } else { crate::Phase::Gather };
        assert_eq!(a.phase(), want, "token waiting: {token_waits}");
    }
}

/// Simulator seed 2367: daemons outside our ring that gather in a round
/// older than our ring would wait for our agreement until their consensus
/// timeout. An operational daemon answers such a stale join with its
/// ring's beacon, sent to the joiner alone, and does not leave its ring;
/// a stale join of a member gets no answer.
#[test]
fn an_outsiders_stale_join_is_answered_with_our_rings_beacon() {
    use crate::wire::{Beacon, Join};
    let cfg = plain();
    let mut a = node(&cfg, 0, 2);
    a.handle_timeout(Time::ZERO);
    drain(&mut a);
    let stale = |sender: u16| {
        let sender = NodeId(sender);
        let ring_id = RingId { seq: 0, rep: sender };
        Bytes::from(
            Join { sender, ring_id, max_ring_seq: 0, procs: ids(5), fails: vec![], suspects: vec![] }
                .encode(),
        )
    };
    let now = Time::ZERO + Duration::from_millis(1);
    a.handle_datagram(now, stale(4));
    let out = drain(&mut a);
    let beacons: Vec<_> =
        out.iter().filter_map(|t| Beacon::decode(&t.bytes).ok().map(|b| (t.dest, b))).collect();
    assert_eq!(beacons.len(), 1, "{out:?}");
    assert_eq!(beacons[0].0, Dest::Node(NodeId(4)));
    assert_eq!(beacons[0].1.ring_id, RING);
    assert_eq!(a.phase(), crate::Phase::Operational);
    a.handle_datagram(now, stale(1));
    assert!(drain(&mut a).iter().all(|t| Beacon::decode(&t.bytes).is_err()));
    assert_eq!(a.phase(), crate::Phase::Operational);
}

/// Three nodes on one virtual clock over a perfect, zero-delay network:
/// runs until `until`, jumping to the earliest timer; returns every
/// datagram sent, with its time and sender.
fn run_ring(nodes: &mut [Node], now: &mut Time, until: Time) -> Vec<(Time, u16, Transmit)> {
    let mut sent = Vec::new();
    loop {
        let mut moved = false;
        for i in 0..nodes.len() {
            while let Some(t) = nodes[i].poll_transmit() {
                moved = true;
                for (j, n) in nodes.iter_mut().enumerate() {
                    let to_j = match t.dest {
                        Dest::All => j != i,
                        Dest::Node(d) => usize::from(d.0) == j,
                    };
                    if to_j {
                        n.handle_datagram(*now, t.bytes.clone());
                    }
                }
                sent.push((*now, i as u16, t));
            }
        }
        if moved {
            continue;
        }
        let Some(next) = nodes.iter().filter_map(Node::poll_timeout).min() else { break };
        if next > until {
            break;
        }
        *now = (*now).max(next);
        for n in nodes.iter_mut() {
            if n.poll_timeout().is_some_and(|d| d <= *now) {
                n.handle_timeout(*now);
            }
        }
    }
    *now = until;
    sent
}

/// Issue 16, the latency path: an idle ring's representative holds the
/// token longer and longer (up to `token_idle_hold`), so an idle cluster
/// passes it about 100 times a second, not 1,000; a message submitted at
/// another daemon asks the representative for the token and is sent at
/// once instead of after the hold.
#[test]
fn idle_hold_grows_and_a_token_request_ends_it() {
    let cfg = Config {
        token_hold: Duration::from_millis(1),
        token_idle_hold: Duration::from_millis(8),
        ..Config::default()
    };
    let mut nodes: Vec<Node> = (0..3).map(|i| node(&cfg, i, 3)).collect();
    let mut now = Time::ZERO;
    // One idle second: tokens passed by the representative.
    let sent = run_ring(&mut nodes, &mut now, Time::ZERO + Duration::from_secs(1));
    let rotations = sent.iter().filter(|(_, from, t)| *from == 0 && Token::decode(&t.bytes).is_ok()).count();
    assert!((100..=140).contains(&rotations), "{rotations} rotations in an idle second (hold up to 8 ms)");
    // The representative holds the token now; daemon 2 has a message.
    assert!(nodes[0].poll_timeout().is_some());
    let t0 = now;
    nodes[2].submit(now, Service::Agreed, Groups::none(), Bytes::from_static(b"m")).unwrap();
    let sent = run_ring(&mut nodes, &mut now, t0 + Duration::from_millis(20));
    let requests: Vec<_> = sent.iter().filter(|(_, _, t)| TokenRequest::decode(&t.bytes).is_ok()).collect();
    assert_eq!(requests.len(), 1, "one token request");
    assert_eq!((requests[0].1, requests[0].2.dest), (2, Dest::Node(NodeId(0))));
    // The message's packet leaves at once (zero-delay network: at t0).
    let data = sent
        .iter()
        .find(|(_, from, t)| *from == 2 && DataPacket::decode(t.bytes.clone()).is_ok())
        .expect("daemon 2 sent its packet");
    assert_eq!(data.0, t0, "sent at once, not after the hold");
    assert_eq!(nodes[0].stats().token_requests_received, 1);
    for n in &mut nodes {
        let delivered = std::iter::from_fn(|| n.poll_event())
            .filter(|e| matches!(e, crate::ring::Event::Deliver(_)))
            .count();
        assert_eq!(delivered, 1);
    }
    // Idle again: no more requests.
    let until = now + Duration::from_secs(1);
    let sent = run_ring(&mut nodes, &mut now, until);
    assert!(sent.iter().all(|(_, _, t)| TokenRequest::decode(&t.bytes).is_err()), "no request when idle");
}
