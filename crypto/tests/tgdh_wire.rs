//! The TGDH decoder is total: any bytes give a message or an error, never a
//! panic; trailing bytes are refused; sizes are bounded; and the encoding is
//! canonical (what decodes encodes back to the same bytes).

use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringfence_crypto::tgdh::{DecodeError, MAX_MEMBERS, Message, Tgdh};

/// Whatever `bytes` are, decoding does not panic, and a message that decodes
/// encodes back to exactly `bytes`.
fn check(bytes: &[u8]) -> Result<Message, DecodeError> {
    let decoded = Message::decode(bytes);
    if let Ok(msg) = &decoded {
        assert_eq!(msg.to_bytes(), bytes);
    }
    decoded
}

/// A valid announcement with a random tree of `leaves` leaves, built from the
/// wire format's description.
fn announce_bytes(rng: &mut ChaCha8Rng, leaves: usize) -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(&rng.next_u64().to_be_bytes());
    out.extend_from_slice(&rng.next_u64().to_be_bytes());
    let mut fixed = [0; 64];
    rng.fill_bytes(&mut fixed);
    out.extend_from_slice(&fixed);
    out.push(1);
    out.extend_from_slice(&(leaves as u16).to_be_bytes());
    let mut ids: Vec<u32> = (0..leaves as u32 * 3).collect();
    ids.shuffle(rng);
    let (mut placed, mut stack) = (0, 0);
    while placed < leaves || stack > 1 {
        let mut bk = [0; 32];
        rng.fill_bytes(&mut bk);
        if placed < leaves && (stack < 2 || rng.random_bool(0.5)) {
            out.push(0);
            out.extend_from_slice(&ids[placed].to_be_bytes());
            placed += 1;
            stack += 1;
        } else {
            out.push(1);
            stack -= 1;
        }
        out.extend_from_slice(&bk);
    }
    out
}

/// A valid keys message with `count` random entries.
fn keys_bytes(rng: &mut ChaCha8Rng, count: usize) -> Vec<u8> {
    let mut out = vec![2];
    out.extend_from_slice(&rng.next_u64().to_be_bytes());
    let mut base = [0; 32];
    rng.fill_bytes(&mut base);
    out.extend_from_slice(&base);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    for _ in 0..count {
        let mut entry = [0; 40];
        rng.fill_bytes(&mut entry);
        out.extend_from_slice(&entry);
    }
    out
}

/// Messages of a real run among three members.
fn real_messages() -> &'static [Vec<u8>] {
    static WIRE: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    WIRE.get_or_init(run_three)
}

fn run_three() -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut members: Vec<Tgdh> = (1..=3).map(|id| Tgdh::new(id, &mut rng)).collect();
    let mut queue: Vec<(u32, Message)> = Vec::new();
    for t in &mut members {
        queue.extend(t.start(1, &[1, 2, 3], &mut rng).unwrap().into_iter().map(|m| (t.me(), m)));
    }
    let mut wire = Vec::new();
    while !queue.is_empty() {
        let (from, msg) = queue.remove(0);
        for t in &mut members {
            queue.extend(t.handle(from, &msg, &mut rng).unwrap().into_iter().map(|m| (t.me(), m)));
        }
        wire.push(msg.to_bytes());
    }
    wire
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn tgdh_any_bytes_decode_or_fail(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = check(&bytes);
    }

    #[test]
    fn tgdh_any_body_after_a_valid_tag_decodes_or_fails(tag in 1..=2u8, body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![tag];
        bytes.extend(body);
        let _ = check(&bytes);
    }

    #[test]
    fn tgdh_valid_messages_round_trip_and_mutants_do_not_panic(
        seed in any::<u64>(),
        size in 1..64usize,
        keys in any::<bool>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let bytes = if keys { keys_bytes(&mut rng, size) } else { announce_bytes(&mut rng, size) };
        prop_assert!(check(&bytes).is_ok());
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert_eq!(check(&longer), Err(DecodeError::TrailingBytes(1)));
        prop_assert!(check(&bytes[..cut.index(bytes.len())]).is_err(), "a strict prefix decodes");
        let mut mutant = bytes.clone();
        for (at, x) in flips {
            let at = at.index(mutant.len());
            mutant[at] ^= x;
        }
        let _ = check(&mutant);
    }

    #[test]
    fn tgdh_real_messages_mutated(which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), x in 1..=255u8) {
        let wire = real_messages();
        let mut bytes = wire[which.index(wire.len())].clone();
        prop_assert!(check(&bytes).is_ok());
        let at = at.index(bytes.len());
        bytes[at] ^= x;
        let _ = check(&bytes);
    }
}

#[test]
fn tgdh_sizes_are_bounded() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let ok = announce_bytes(&mut rng, MAX_MEMBERS);
    assert!(check(&ok).is_ok());
    assert!(ok.len() < 80 * 1024);
    // A tree of MAX_MEMBERS + 1 leaves: the count is refused before anything is read.
    let mut big = ok[..1 + 8 + 8 + 64 + 1].to_vec();
    big.extend_from_slice(&(MAX_MEMBERS as u16 + 1).to_be_bytes());
    assert_eq!(check(&big), Err(DecodeError::TooMany { what: "tree leaves", count: MAX_MEMBERS + 1 }));
    let mut empty_keys = keys_bytes(&mut rng, 1);
    empty_keys.truncate(1 + 8 + 32);
    empty_keys.extend_from_slice(&0u16.to_be_bytes());
    assert_eq!(check(&empty_keys), Err(DecodeError::TooMany { what: "blinded keys", count: 0 }));
    assert!(check(&keys_bytes(&mut rng, MAX_MEMBERS)).is_ok());
    assert!(check(&keys_bytes(&mut rng, MAX_MEMBERS + 1)).is_err());
}

#[test]
fn tgdh_malformed_trees_are_refused() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let good = announce_bytes(&mut rng, 3);
    let header = 1 + 8 + 8 + 64 + 1;
    // A duplicate member: make the second leaf's id equal the first's.
    let mut dup = good.clone();
    let leaf_at: Vec<usize> = {
        let (mut i, mut at) = (header + 2, Vec::new());
        while i < dup.len() {
            if dup[i] == 0 {
                at.push(i);
                i += 1 + 4 + 32;
            } else {
                i += 1 + 32;
            }
        }
        at
    };
    let first: [u8; 4] = dup[leaf_at[0] + 1..leaf_at[0] + 5].try_into().unwrap();
    dup[leaf_at[1] + 1..leaf_at[1] + 5].copy_from_slice(&first);
    assert_eq!(check(&dup), Err(DecodeError::DuplicateMember(u32::from_be_bytes(first))));
    // An internal node first: nothing to join.
    let mut bad = good[..header].to_vec();
    bad.extend_from_slice(&2u16.to_be_bytes());
    bad.push(1);
    bad.extend_from_slice(&[0; 32]);
    bad.extend_from_slice(&[0, 0, 0, 0, 1]);
    bad.extend_from_slice(&[0; 32]);
    bad.extend_from_slice(&[0, 0, 0, 0, 2]);
    bad.extend_from_slice(&[0; 32]);
    assert_eq!(check(&bad), Err(DecodeError::BadTree));
    // Two leaves and no internal node.
    let mut forest = good[..header].to_vec();
    forest.extend_from_slice(&2u16.to_be_bytes());
    for id in [1u32, 2, 3] {
        forest.push(0);
        forest.extend_from_slice(&id.to_be_bytes());
        forest.extend_from_slice(&[0; 32]);
    }
    assert_eq!(check(&forest), Err(DecodeError::BadTree));
    // Unknown tags.
    let mut flag = good.clone();
    flag[header - 1] = 3;
    assert_eq!(check(&flag), Err(DecodeError::UnknownTag(3)));
    let mut alone = good[..header].to_vec();
    alone[header - 1] = 2;
    assert!(check(&alone).is_ok());
    alone.push(0);
    assert_eq!(check(&alone), Err(DecodeError::TrailingBytes(1)));
    assert_eq!(check(&[3]), Err(DecodeError::UnknownTag(3)));
    assert_eq!(check(&[]), Err(DecodeError::Truncated));
}
