//! HMAC-SHA256, HKDF-SHA256 and the key hierarchy of ARCHITECTURE.md section 7.
//!
//! ```text
//!   K_s (server key, from TGDH, numbered by epoch)
//!    ├─ link_key(K_s, ring id, epoch)   = HKDF-SHA256      daemon-to-daemon links
//!    └─ group_key(K_s, group, view id)  = HMAC-SHA256      client group g, view i
//! ```
//!
//! Both derivations start with a fixed label naming the purpose and version
//! (`"ringfence link v1"`, `"ringfence group v1"`) and encode variable-length
//! inputs with a length prefix, so no two distinct inputs give the same
//! message and a link key can never equal a group key. The exact byte
//! layouts are given on each function; they are part of the protocol, and the
//! tests pin their outputs.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use crate::aead::{KEY_LEN, Key32};

/// Length of an HMAC-SHA256 output in bytes.
pub const HMAC_LEN: usize = 32;

/// The longest output HKDF-SHA256 can give: 255 blocks of 32 bytes (RFC 5869 section 2.3).
pub const HKDF_MAX_LEN: usize = 255 * HMAC_LEN;

/// Domain-separation label of [`link_key`].
pub const LINK_LABEL: &[u8] = b"ringfence link v1";

/// Domain-separation label of [`group_key`].
pub const GROUP_LABEL: &[u8] = b"ringfence group v1";

/// Domain-separation label of [`group_key_id`].
pub const GROUP_ID_LABEL: &[u8] = b"ringfence group key id v1";

/// Errors of the key-derivation helpers; all are caller misuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KdfError {
    /// HKDF-SHA256 was asked for more than [`HKDF_MAX_LEN`] bytes.
    #[error("HKDF-SHA256 output of {requested} bytes exceeds the maximum of {HKDF_MAX_LEN}")]
    OutputTooLong {
        /// The length asked for.
        requested: usize,
    },
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts` under `key`.
///
/// Passing the message in parts avoids building it in a buffer; the result
/// is the same as for the concatenated message.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; HMAC_LEN] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` (empty means no salt, which
/// RFC 5869 defines as a string of zeros), then expand with `info` to fill `out`.
///
/// Fails if `out` is longer than [`HKDF_MAX_LEN`].
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), KdfError> {
    hkdf_sha256_parts(ikm, salt, &[info], out)
}

/// [`hkdf_sha256`] with `info` given in parts.
fn hkdf_sha256_parts(ikm: &[u8], salt: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), KdfError> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand_multi_info(info, out)
        .map_err(|_| KdfError::OutputTooLong { requested: out.len() })
}

/// The daemon-to-daemon link key: `K_link = HKDF(K_s, ring id, epoch)`.
///
/// HKDF-SHA256 with `ikm = server_key`, an empty salt, and
///
/// ```text
///   info = "ringfence link v1" ‖ u64be(len(ring_id)) ‖ ring_id ‖ u64be(epoch)
/// ```
pub fn link_key(server_key: &Key32, ring_id: &[u8], epoch: u64) -> Key32 {
    let ring_len = (ring_id.len() as u64).to_be_bytes();
    let epoch = epoch.to_be_bytes();
    let mut out = [0; KEY_LEN];
    hkdf_sha256_parts(server_key.expose_secret(), &[], &[LINK_LABEL, &ring_len, ring_id, &epoch], &mut out)
        .expect("32 bytes is within the HKDF output limit");
    let key = Key32::from_bytes(out);
    out.zeroize();
    key
}

/// The key of client group `group` in view `view_id`: `K_g,i = HMAC(K_s, g ‖ view_id(g, i))`.
///
/// HMAC-SHA256 under `server_key` of
///
/// ```text
///   "ringfence group v1" ‖ u64be(len(group)) ‖ group ‖ u64be(len(view_id)) ‖ view_id
/// ```
///
/// `view_id` is the view's encoding (`ringfence_proto` uses 18 bytes: ring
/// sequence, ring representative, counter). The length prefixes make the
/// encoding injective: no two `(group, view_id)` pairs share a message.
pub fn group_key(server_key: &Key32, group: &[u8], view_id: &[u8]) -> Key32 {
    let mut out = group_mac(server_key, GROUP_LABEL, group, view_id);
    let key = Key32::from_bytes(out);
    out.zeroize();
    key
}

/// The public 32-bit `Key_id` of [`group_key`]`(server_key, group, view_id)`:
/// the first four bytes (big-endian) of HMAC-SHA256 under `server_key` of
///
/// ```text
///   "ringfence group key id v1" ‖ u64be(len(group)) ‖ group ‖ u64be(len(view_id)) ‖ view_id
/// ```
///
/// Every daemon holding the server key computes the same id; to anyone else
/// it is a random number that says nothing about the key (a separate label,
/// so the id is not a prefix of the key).
pub fn group_key_id(server_key: &Key32, group: &[u8], view_id: &[u8]) -> u32 {
    let out = group_mac(server_key, GROUP_ID_LABEL, group, view_id);
    u32::from_be_bytes([out[0], out[1], out[2], out[3]])
}

fn group_mac(server_key: &Key32, label: &[u8], group: &[u8], view_id: &[u8]) -> [u8; HMAC_LEN] {
    let group_len = (group.len() as u64).to_be_bytes();
    let view_len = (view_id.len() as u64).to_be_bytes();
    hmac_sha256(server_key.expose_secret(), &[label, &group_len, group, &view_len, view_id])
}

/// Compares two byte strings in time that depends only on their lengths.
///
/// Lengths are not secret: unequal lengths return `false` at once.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        // The barrier keeps the optimiser from turning the loop into an early exit.
        diff = std::hint::black_box(diff | (x ^ y));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 4231, "Identifiers and Test Vectors for HMAC-SHA-224, HMAC-SHA-256,
    /// HMAC-SHA-384, and HMAC-SHA-512", section 4: test cases 1, 2, 6 and 7
    /// (the HMAC-SHA-256 lines).
    #[test]
    fn hmac_sha256_rfc4231() {
        let cases: [(Vec<u8>, &[u8], &str); 4] = [
            (vec![0x0b; 20], b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. \
                  The key needs to be hashed before being used by the HMAC algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(hex(&hmac_sha256(&key, &[data])), expected);
            // The same message in parts gives the same MAC.
            let (a, b) = data.split_at(data.len() / 3);
            assert_eq!(hex(&hmac_sha256(&key, &[a, &[], b])), expected);
        }
    }

    /// RFC 5869, "HMAC-based Extract-and-Expand Key Derivation Function (HKDF)",
    /// appendix A.1 (test case 1: basic test case with SHA-256) and A.3 (test
    /// case 3: zero-length salt and info).
    #[test]
    fn hkdf_sha256_rfc5869() {
        let ikm = [0x0b; 22];
        let mut okm = [0; 42];
        hkdf_sha256(&ikm, &unhex("000102030405060708090a0b0c"), &unhex("f0f1f2f3f4f5f6f7f8f9"), &mut okm)
            .unwrap();
        assert_eq!(
            hex(&okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );

        hkdf_sha256(&ikm, &[], &[], &mut okm).unwrap();
        assert_eq!(
            hex(&okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }

    #[test]
    fn hkdf_output_limit() {
        let mut max = vec![0; HKDF_MAX_LEN];
        assert_eq!(hkdf_sha256(b"ikm", b"", b"", &mut max), Ok(()));
        let mut too_long = vec![0; HKDF_MAX_LEN + 1];
        assert_eq!(
            hkdf_sha256(b"ikm", b"", b"", &mut too_long),
            Err(KdfError::OutputTooLong { requested: HKDF_MAX_LEN + 1 })
        );
    }

    /// The derivations are protocol: every daemon must compute the same keys.
    /// The expected outputs were computed independently with Python's `hmac`
    /// and `hashlib` from the byte layouts written in the function docs.
    #[test]
    fn derivations_are_pinned() {
        let server_key = Key32::from_bytes(std::array::from_fn(|i| i as u8));

        let link = link_key(&server_key, b"ring-0001", 7);
        let mut expected = [0; KEY_LEN];
        let info = [LINK_LABEL, &9u64.to_be_bytes(), b"ring-0001", &7u64.to_be_bytes()].concat();
        hkdf_sha256(server_key.expose_secret(), &[], &info, &mut expected).unwrap();
        assert_eq!(link.expose_secret(), &expected);
        assert_eq!(hex(link.expose_secret()), LINK_KAT);

        let group = group_key(&server_key, b"chat", &42u64.to_be_bytes());
        let msg =
            [GROUP_LABEL, &4u64.to_be_bytes(), b"chat", &8u64.to_be_bytes(), &42u64.to_be_bytes()].concat();
        assert_eq!(group.expose_secret(), &hmac_sha256(server_key.expose_secret(), &[&msg]));
        assert_eq!(hex(group.expose_secret()), GROUP_KAT);
        let id = group_key_id(&server_key, b"chat", &42u64.to_be_bytes());
        let msg = [GROUP_ID_LABEL, &4u64.to_be_bytes(), b"chat", &8u64.to_be_bytes(), &42u64.to_be_bytes()]
            .concat();
        assert_eq!(id.to_be_bytes(), hmac_sha256(server_key.expose_secret(), &[&msg])[..4]);
        assert_eq!(id, GROUP_ID_KAT);
    }

    const LINK_KAT: &str = "b2d68025fc3ab8b73d668b34c283aa51bfcee7064e708b0cf814ba59330f7279";
    const GROUP_ID_KAT: u32 = 0x7e04_a754;
    const GROUP_KAT: &str = "c5f028ea9a29e69c44e76d5962f564af56f7d1ea41476f91bc739ff8647a1804";

    /// Without the length prefix, ("ab", v) and ("a", v') could share a message
    /// when the view bytes are chosen to match; with it they cannot.
    #[test]
    fn group_encoding_is_injective() {
        let k = Key32::from_bytes([5; KEY_LEN]);
        assert_ne!(group_key(&k, b"ab", b""), group_key(&k, b"a", b"b"));
        assert_ne!(group_key(&k, b"", b"\x01"), group_key(&k, b"\0", b"\x01"));
        assert_ne!(group_key(&k, b"g", b"\x01"), group_key(&k, b"g", b"\x02"));
        assert_ne!(group_key(&k, b"g", b"\x01"), group_key(&Key32::from_bytes([6; KEY_LEN]), b"g", b"\x01"));
        assert_ne!(group_key_id(&k, b"g", b"\x01"), group_key_id(&k, b"g", b"\x02"));
    }

    #[test]
    fn ct_eq_agrees_with_eq() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(&[0x80], &[0]));
    }

    proptest! {
        #[test]
        fn hmac_parts_equal_concatenation(
            key in proptest::collection::vec(any::<u8>(), 0..100),
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..70), 0..5),
        ) {
            let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(hmac_sha256(&key, &slices), hmac_sha256(&key, &[&parts.concat()]));
        }

        /// Distinct (group, view) pairs give distinct keys, and a link key never
        /// equals a group key for the same inputs (domain separation).
        #[test]
        fn distinct_inputs_distinct_keys(
            key in any::<[u8; KEY_LEN]>(),
            inputs in proptest::collection::hash_set(
                (proptest::collection::vec(any::<u8>(), 0..12), 0u64..4),
                1..40,
            ),
        ) {
            let server_key = Key32::from_bytes(key);
            let mut seen = HashSet::new();
            for (name, view) in &inputs {
                let group = group_key(&server_key, name, &view.to_be_bytes());
                let link = link_key(&server_key, name, *view);
                prop_assert_ne!(&group, &link);
                prop_assert!(seen.insert(*group.expose_secret()), "group key collision");
                prop_assert!(seen.insert(*link.expose_secret()), "link key collision");
            }
        }

        #[test]
        fn ct_eq_matches(a in proptest::collection::vec(any::<u8>(), 0..40), b in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(ct_eq(&a, &b), a == b);
            prop_assert!(ct_eq(&a, &a.clone()));
        }
    }
}
