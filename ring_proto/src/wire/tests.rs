//! Property tests: round trips, and no byte string makes a decoder panic.

use super::*;
use proptest::prelude::*;

fn ring_id() -> impl Strategy<Value = RingId> {
    (any::<u16>(), any::<u64>()).prop_map(|(rep, seq)| RingId { seq, rep: NodeId(rep) })
}

fn service() -> impl Strategy<Value = Service> {
    (0u8..6).prop_map(|b| Service::from_u8(b).unwrap())
}

fn groups() -> impl Strategy<Value = Groups> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..4)
        .prop_map(|names| Groups::encode(&names).unwrap())
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (1u64.., service(), 0u8..3, groups(), proptest::collection::vec(any::<u8>(), 0..300), 0u32..100_000)
        .prop_map(|(msg_seq, service, kind, groups, data, extra)| {
            // kind 0: whole message, 1: first fragment, 2: middle or last fragment.
            let (flags, total_len, groups) = match kind {
                0 => (ChunkFlags::WHOLE, data.len() as u32, groups),
                1 => (ChunkFlags { first: true, last: false }, data.len() as u32 + 1 + extra, groups),
                _ => {
                    (ChunkFlags { first: false, last: extra % 2 == 0 }, data.len() as u32, Groups::default())
                }
            };
            Chunk { msg_seq, service, flags, total_len, groups, data: Bytes::from(data) }
        })
}

fn packet() -> impl Strategy<Value = DataPacket> {
    (ring_id(), 1u64.., any::<u16>(), proptest::collection::vec(chunk(), 1..8)).prop_map(
        |(ring_id, seq, sender, chunks)| DataPacket { ring_id, seq, sender: NodeId(sender), chunks },
    )
}

fn token() -> impl Strategy<Value = Token> {
    (
        ring_id(),
        any::<u64>(),
        0u64..1_000_000,
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec((1u64..1000, 1u32..50), 0..20),
    )
        .prop_map(|(ring_id, token_seq, seq, aru_id, fcc, backlog, gaps)| {
            let mut rtr = Vec::new();
            let mut at = 1u64;
            for (gap, len) in gaps {
                let start = at + gap;
                rtr.push(RtrRange { start, len });
                at = start + u64::from(len);
            }
            let seq = seq.max(at);
            Token { ring_id, token_seq, seq, aru: seq / 2, aru_id: NodeId(aru_id), fcc, backlog, rtr }
        })
}

proptest! {
    #[test]
    fn packet_round_trips(p in packet()) {
        let bytes = p.encode();
        prop_assert_eq!(Datagram::decode(bytes), Ok(Datagram::Data(p)));
    }

    #[test]
    fn token_round_trips(t in token()) {
        let bytes = Bytes::from(t.encode());
        prop_assert_eq!(bytes.len(), t.encoded_len());
        prop_assert_eq!(Datagram::decode(bytes), Ok(Datagram::Token(t)));
    }

    #[test]
    fn token_request_round_trips(sender in any::<u16>(), r in ring_id(), cut in 0usize..TokenRequest::LEN) {
        let t = TokenRequest { sender: NodeId(sender), ring_id: r };
        let bytes = t.encode();
        prop_assert_eq!(bytes.len(), TokenRequest::LEN);
        prop_assert_eq!(Datagram::decode(Bytes::from(bytes.clone())), Ok(Datagram::TokenRequest(t)));
        // Truncated or with a trailing byte: an error.
        prop_assert!(Datagram::decode(Bytes::copy_from_slice(&bytes[..cut])).is_err());
        let mut long = bytes;
        long.push(0);
        prop_assert!(Datagram::decode(Bytes::from(long)).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Datagram::decode(Bytes::from(b));
    }

    #[test]
    fn arbitrary_bytes_with_valid_header_never_panic(kind in 0u8..8, b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut v = vec![b'R', b'F', VERSION, kind];
        v.extend(b);
        let _ = Datagram::decode(Bytes::from(v));
    }

    #[test]
    fn mutated_packets_never_panic(p in packet(), at in any::<usize>(), xor in 1u8.., cut in any::<usize>()) {
        let mut v = p.encode().to_vec();
        let i = at % v.len();
        v[i] ^= xor;
        let _ = Datagram::decode(Bytes::from(v.clone()));
        v.truncate(cut % (v.len() + 1));
        let _ = Datagram::decode(Bytes::from(v));
    }

    #[test]
    fn truncated_packets_are_errors(p in packet(), cut in any::<usize>()) {
        let v = p.encode();
        let n = cut % v.len();
        prop_assert!(Datagram::decode(v.slice(..n)).is_err());
    }

    #[test]
    fn trailing_bytes_are_errors(t in token(), extra in 1usize..10) {
        let mut v = t.encode();
        v.extend(std::iter::repeat_n(0u8, extra));
        prop_assert_eq!(Datagram::decode(Bytes::from(v)), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn mutated_tokens_never_panic(t in token(), at in any::<usize>(), xor in 1u8..) {
        let mut v = t.encode();
        let i = at % v.len();
        v[i] ^= xor;
        let _ = Datagram::decode(Bytes::from(v));
    }
}

#[test]
fn header_errors_are_named() {
    assert_eq!(Datagram::decode(Bytes::from_static(b"RF")), Err(DecodeError::Truncated));
    assert_eq!(Datagram::decode(Bytes::from_static(b"XX\x01\x01")), Err(DecodeError::BadMagic));
    assert_eq!(Datagram::decode(Bytes::from_static(b"RF\x09\x01")), Err(DecodeError::UnsupportedVersion(9)));
    assert_eq!(Datagram::decode(Bytes::from_static(b"RF\x01\x77")), Err(DecodeError::UnknownKind));
}

#[test]
fn groups_iterate_in_order() {
    let g = Groups::encode(&["a", "bcd"]).unwrap();
    let names: Vec<&[u8]> = g.iter().collect();
    assert_eq!(names, vec![&b"a"[..], &b"bcd"[..]]);
    assert_eq!(Groups::none().iter().count(), 0);
    assert!(Groups::encode(&[""]).is_err());
}

fn ids() -> impl Strategy<Value = Vec<NodeId>> {
    proptest::collection::btree_set(1u16..40, 0..8).prop_map(|s| s.into_iter().map(NodeId).collect())
}

proptest! {
    /// A join round-trips; its suspects are a subset of its fails.
    #[test]
    fn join_round_trips(ring_id in ring_id(), round in any::<u64>(), procs in ids(), fails in ids(), pick in any::<u64>()) {
        let sender = NodeId(50);
        let mut procs = procs;
        procs.push(sender);
        let suspects: Vec<NodeId> =
            fails.iter().enumerate().filter(|(i, _)| pick >> (i % 64) & 1 == 1).map(|(_, f)| *f).collect();
        let j = Join { sender, ring_id, max_ring_seq: round, procs, fails, suspects };
        prop_assert_eq!(Join::decode(&j.encode()), Ok(j));
    }
}

#[test]
fn a_join_whose_suspects_are_not_failed_is_refused() {
    let j = Join {
        sender: NodeId(1),
        ring_id: RingId { seq: 3, rep: NodeId(1) },
        max_ring_seq: 3,
        procs: vec![NodeId(1), NodeId(2)],
        fails: vec![],
        suspects: vec![NodeId(2)],
    };
    assert_eq!(Join::decode(&j.encode()), Err(DecodeError::BadValue("suspects")));
}
