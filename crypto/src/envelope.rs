//! Signed envelopes: a body signed by a daemon, bound to a ring, a round and a message type.
//!
//! Every TGDH protocol message travels in one (ARCHITECTURE.md section 7:
//! "every protocol message signed"). The signature covers a domain-separation
//! label and every header field, so a signature made for one ring, round or
//! message type does not verify in another.
//!
//! Wire layout, all integers big-endian:
//!
//! ```text
//!   offset  size  field
//!        0     1  version      = 1
//!        1     1  msg_type     opaque to this module
//!        2     4  signer       daemon id (u32)
//!        6    16  ring         opaque 16-byte context chosen by the caller (the ring id)
//!       22     8  round        u64
//!       30     4  body_len     u32
//!       34     n  body
//!     34+n    64  signature    Ed25519 over  "ringfence envelope v1" ‖ bytes[0 .. 34+n]
//! ```
//!
//! [`Envelope::seal`] (a new buffer) and [`Envelope::seal_into`] (appended to
//! the caller's) build envelopes.
//!
//! Verification by type: bytes from the wire decode only into an
//! [`UnverifiedEnvelope`], which shows the header (so the caller can look up
//! the signer's key and check ring and round) but not the body. Only
//! [`UnverifiedEnvelope::verify`] yields a [`VerifiedEnvelope`], and only that
//! exposes the body.
//!
//! The decoder is total: any byte string gives an envelope or a
//! [`DecodeError`], never a panic; bytes after the signature are refused.

use std::fmt;

use crate::identity::{PublicIdentity, SIGNATURE_LEN, SecretIdentity};

/// The only wire version this module reads and writes.
pub const VERSION: u8 = 1;
/// Length of the ring context in bytes.
pub const RING_LEN: usize = 16;
/// Length of the fixed header (version to body_len) in bytes.
pub const HEADER_LEN: usize = 1 + 1 + 4 + RING_LEN + 8 + 4;
/// Bytes an envelope adds to its body: header and signature.
pub const OVERHEAD: usize = HEADER_LEN + SIGNATURE_LEN;
/// Domain-separation label prepended to the signed bytes.
pub const SIGNING_LABEL: &[u8] = b"ringfence envelope v1";

/// The header fields of an envelope, all of them covered by the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The message type, opaque to this module.
    pub msg_type: u8,
    /// The daemon id of the signer.
    pub signer: u32,
    /// The context the message belongs to (the ring id), opaque to this module.
    pub ring: [u8; RING_LEN],
    /// The protocol round.
    pub round: u64,
}

/// Builds signed envelopes; decoding starts at [`UnverifiedEnvelope::decode`].
#[derive(Debug)]
pub struct Envelope(());

impl Envelope {
    /// Signs `body` as daemon `signer` for `ring`, `round` and `msg_type`,
    /// and returns the envelope in a new buffer.
    ///
    /// # Panics
    ///
    /// If `body` is longer than `u32::MAX` bytes (a caller bug);
    /// [`Envelope::seal_into`] returns an error instead.
    pub fn seal(
        identity: &SecretIdentity,
        signer: u32,
        ring: [u8; RING_LEN],
        round: u64,
        msg_type: u8,
        body: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(OVERHEAD + body.len());
        Self::seal_into(identity, &Header { msg_type, signer, ring, round }, body, &mut out)
            .expect("envelope body longer than u32::MAX bytes");
        out
    }

    /// Signs `body` under `header` with `identity` and appends the envelope to `out`.
    ///
    /// `out` is not cleared, so an envelope can follow a frame header in the
    /// same buffer. Fails only if the body is longer than `u32::MAX` bytes.
    pub fn seal_into(
        identity: &SecretIdentity,
        header: &Header,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let body_len = body_len_field(body.len())?;
        out.reserve(OVERHEAD + body.len());
        let start = out.len();
        out.push(VERSION);
        out.push(header.msg_type);
        out.extend_from_slice(&header.signer.to_be_bytes());
        out.extend_from_slice(&header.ring);
        out.extend_from_slice(&header.round.to_be_bytes());
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(body);
        let signature = identity.sign_parts(&[SIGNING_LABEL, &out[start..]]);
        out.extend_from_slice(&signature);
        Ok(())
    }
}

/// The body length as the u32 of the wire.
fn body_len_field(len: usize) -> Result<u32, SealError> {
    u32::try_from(len).map_err(|_| SealError::BodyTooLarge { len })
}

/// An envelope decoded from the wire whose signature has not been checked.
///
/// Shows the header, so the caller can find the signer's key and check the
/// context, but not the body.
#[derive(Clone, Copy)]
pub struct UnverifiedEnvelope<'a> {
    header: Header,
    /// Header and body: the bytes the signature covers after the label.
    signed: &'a [u8],
    body: &'a [u8],
    signature: &'a [u8; SIGNATURE_LEN],
}

impl<'a> UnverifiedEnvelope<'a> {
    /// Decodes exactly one envelope from `bytes`. Never panics.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let truncated = |needed| DecodeError::Truncated { len: bytes.len(), needed };
        let short = truncated(OVERHEAD);
        let mut r = Reader(bytes);
        let [version] = *r.array().ok_or(short)?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let [msg_type] = *r.array().ok_or(short)?;
        let signer = u32::from_be_bytes(*r.array().ok_or(short)?);
        let ring = *r.array().ok_or(short)?;
        let round = u64::from_be_bytes(*r.array().ok_or(short)?);
        let body_len = u32::from_be_bytes(*r.array().ok_or(short)?);

        let body_len = usize::try_from(body_len).unwrap_or(usize::MAX);
        let needed = OVERHEAD.saturating_add(body_len);
        let body = r.bytes(body_len).ok_or(truncated(needed))?;
        // `r.0` is a suffix of `bytes`, so this cannot underflow.
        let signed = &bytes[..bytes.len() - r.0.len()];
        let signature = r.array().ok_or(truncated(needed))?;
        if !r.0.is_empty() {
            return Err(DecodeError::TrailingBytes { extra: r.0.len() });
        }

        let header = Header { msg_type, signer, ring, round };
        Ok(Self { header, signed, body, signature })
    }

    /// Checks the signature with the signer's key; only then is the body available.
    pub fn verify(&self, key: &PublicIdentity) -> Result<VerifiedEnvelope<'a>, EnvelopeError> {
        key.verify_parts(&[SIGNING_LABEL, self.signed], self.signature)
            .map_err(|_| EnvelopeError::BadSignature)?;
        Ok(VerifiedEnvelope { header: self.header, body: self.body })
    }

    /// All header fields (signer, ring, round, message type).
    pub const fn header(&self) -> &Header {
        &self.header
    }

    /// The length of the (still hidden) body.
    pub const fn body_len(&self) -> usize {
        self.body.len()
    }
}

impl fmt::Debug for UnverifiedEnvelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedEnvelope")
            .field("header", &self.header)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// An envelope whose signature verified against the signer's key.
#[derive(Clone, Copy)]
pub struct VerifiedEnvelope<'a> {
    header: Header,
    body: &'a [u8],
}

impl<'a> VerifiedEnvelope<'a> {
    /// All header fields (signer, ring, round, message type).
    pub const fn header(&self) -> &Header {
        &self.header
    }

    /// The signed body.
    pub const fn body(&self) -> &'a [u8] {
        self.body
    }
}

impl fmt::Debug for VerifiedEnvelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedEnvelope")
            .field("header", &self.header)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// The bytes are not an envelope (the peer's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the header, body and signature need.
    #[error("envelope truncated: {len} bytes, {needed} needed")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes needed (at least).
        needed: usize,
    },
    /// A version this module does not know.
    #[error("unknown envelope version {0}")]
    UnknownVersion(u8),
    /// Bytes after the signature.
    #[error("{extra} bytes after the envelope signature")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// A decoded envelope failed verification (the peer's fault, or the wrong key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The signature does not verify under the given key.
    #[error("envelope signature does not verify")]
    BadSignature,
}

/// The caller asked for an envelope that cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The body is longer than the u32 length field allows.
    #[error("envelope body of {len} bytes exceeds u32::MAX")]
    BodyTooLarge {
        /// The body length given.
        len: usize,
    },
}

/// A cursor over wire bytes whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next `N` bytes, if there are that many.
    fn array<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        let (head, rest) = self.0.split_first_chunk()?;
        self.0 = rest;
        Some(head)
    }

    /// The next `n` bytes, if there are that many.
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn identity(seed: u8) -> SecretIdentity {
        SecretIdentity::from_bytes(&[seed; 32])
    }

    fn header() -> Header {
        Header { msg_type: 3, signer: 0x0a0b_0c0d, ring: *b"ring-0123456789a", round: 0x1122_3344_5566_7788 }
    }

    fn sealed(identity: &SecretIdentity, header: &Header, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Envelope::seal_into(identity, header, body, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let id = identity(1);
        let bytes = sealed(&id, &header(), b"blinded key");
        assert_eq!(bytes.len(), OVERHEAD + 11);

        let envelope = UnverifiedEnvelope::decode(&bytes).unwrap();
        assert_eq!(envelope.header(), &header());
        assert_eq!(
            (envelope.header().signer, envelope.header().round, envelope.header().msg_type),
            (0x0a0b_0c0d, 0x1122_3344_5566_7788, 3)
        );
        assert_eq!(&envelope.header().ring, b"ring-0123456789a");
        assert_eq!(envelope.body_len(), 11);

        let verified = envelope.verify(&id.public()).unwrap();
        assert_eq!(verified.body(), b"blinded key");
        assert_eq!(verified.header(), &header());
        assert_eq!(
            (verified.header().signer, verified.header().round, verified.header().msg_type),
            (0x0a0b_0c0d, 0x1122_3344_5566_7788, 3)
        );
        assert_eq!(&verified.header().ring, b"ring-0123456789a");

        assert_eq!(envelope.verify(&identity(2).public()).unwrap_err(), EnvelopeError::BadSignature);
        assert!(!format!("{envelope:?} {verified:?}").contains("blinded"), "Debug shows no body");
    }

    #[test]
    fn empty_body() {
        let id = identity(1);
        let bytes = sealed(&id, &header(), b"");
        assert_eq!(bytes.len(), OVERHEAD);
        assert_eq!(UnverifiedEnvelope::decode(&bytes).unwrap().verify(&id.public()).unwrap().body(), b"");
    }

    /// The layout written in the module doc, byte by byte.
    #[test]
    fn wire_layout() {
        let id = identity(1);
        let bytes = sealed(&id, &header(), b"xy");
        assert_eq!(bytes[0], VERSION);
        assert_eq!(bytes[1], 3);
        assert_eq!(&bytes[2..6], &[0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(&bytes[6..22], b"ring-0123456789a");
        assert_eq!(&bytes[22..30], &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        assert_eq!(&bytes[30..34], &[0, 0, 0, 2]);
        assert_eq!(&bytes[34..36], b"xy");
        let message = [SIGNING_LABEL, &bytes[..36]].concat();
        assert_eq!(&bytes[36..], &id.sign(&message));
    }

    /// An envelope signed with the RFC 8032 section 7.1 TEST 1 key. The expected
    /// bytes were produced independently with Python's `cryptography` package
    /// (`Ed25519PrivateKey.sign` over "ringfence envelope v1" ‖ header ‖ body),
    /// so this pins the layout and the signed bytes.
    #[test]
    fn known_answer() {
        let secret: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
            0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
        ];
        let bytes = sealed(&SecretIdentity::from_bytes(&secret), &header(), b"body");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, ENVELOPE_KAT);
    }

    const ENVELOPE_KAT: &str = concat!(
        "01030a0b0c0d72696e672d3031323334353637383961112233445566778800000004",
        "626f6479",
        "8c625f1535b3c99fc9ab2bf1a4a32c5c21adcdc3bd863fa3811103122ddd65df",
        "055a961b3e8c87fe6a6e80aafc7b11a9670789fb065cfc2b18737a3690e2bc0c",
    );

    #[test]
    fn seal_appends() {
        let id = identity(1);
        let mut out = b"frame header".to_vec();
        Envelope::seal_into(&id, &header(), b"body", &mut out).unwrap();
        assert_eq!(&out[..12], b"frame header");
        let verified = UnverifiedEnvelope::decode(&out[12..]).unwrap().verify(&id.public()).unwrap();
        assert_eq!(verified.body(), b"body");
        assert_eq!(body_len_field(usize::MAX), Err(SealError::BodyTooLarge { len: usize::MAX }));
        assert_eq!(body_len_field(u32::MAX as usize), Ok(u32::MAX));

        let h = header();
        let vec = Envelope::seal(&id, h.signer, h.ring, h.round, h.msg_type, b"body");
        assert_eq!(vec, &out[12..]);
    }

    /// Flipping any single bit anywhere makes decode or verify fail.
    #[test]
    fn any_bit_flip_fails() {
        let id = identity(1);
        let bytes = sealed(&id, &header(), b"some body bytes");
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let accepted = UnverifiedEnvelope::decode(&bad).ok().and_then(|e| e.verify(&id.public()).ok());
            assert!(accepted.is_none(), "bit {bit} flipped and still accepted");
        }
    }

    /// A signature made for one ring, round, type, signer or body does not verify on another.
    #[test]
    fn signature_is_bound_to_every_field() {
        let id = identity(1);
        let base = header();
        let body = b"body".as_slice();
        let mut variants = vec![
            (Header { ring: *b"ring-other-00000", ..base }, body),
            (Header { round: base.round + 1, ..base }, body),
            (Header { msg_type: base.msg_type + 1, ..base }, body),
            (Header { signer: base.signer + 1, ..base }, body),
            (base, b"bodz".as_slice()),
        ];
        let original = sealed(&id, &base, body);
        let signature = &original[original.len() - SIGNATURE_LEN..];
        for (header, body) in variants.drain(..) {
            let mut moved = sealed(&id, &header, body);
            let at = moved.len() - SIGNATURE_LEN;
            moved[at..].copy_from_slice(signature);
            let envelope = UnverifiedEnvelope::decode(&moved).unwrap();
            assert_eq!(envelope.verify(&id.public()).unwrap_err(), EnvelopeError::BadSignature, "{header:?}");
        }
    }

    /// The label matters: a plain signature over header ‖ body is not an envelope signature.
    #[test]
    fn signature_needs_the_label() {
        let id = identity(1);
        let mut bytes = sealed(&id, &header(), b"body");
        let at = bytes.len() - SIGNATURE_LEN;
        let plain = id.sign(&bytes[..at]);
        bytes[at..].copy_from_slice(&plain);
        let envelope = UnverifiedEnvelope::decode(&bytes).unwrap();
        assert_eq!(envelope.verify(&id.public()).unwrap_err(), EnvelopeError::BadSignature);
    }

    #[test]
    fn decode_errors() {
        let bytes = sealed(&identity(1), &header(), b"body");
        for len in 0..bytes.len() {
            let needed = if len < HEADER_LEN { OVERHEAD } else { OVERHEAD + 4 };
            assert_eq!(
                UnverifiedEnvelope::decode(&bytes[..len]).unwrap_err(),
                DecodeError::Truncated { len, needed },
                "length {len}"
            );
        }
        let mut long = bytes.clone();
        long.extend_from_slice(&[0, 0]);
        assert_eq!(UnverifiedEnvelope::decode(&long).unwrap_err(), DecodeError::TrailingBytes { extra: 2 });
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(UnverifiedEnvelope::decode(&v2).unwrap_err(), DecodeError::UnknownVersion(2));
        let mut huge = bytes;
        huge[30..34].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(UnverifiedEnvelope::decode(&huge), Err(DecodeError::Truncated { .. })));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = UnverifiedEnvelope::decode(&bytes);
        }

        /// Arbitrary bytes behind a plausible header: still total.
        #[test]
        fn decode_never_panics_near_valid(
            body_len in any::<u32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut bytes = vec![VERSION, 0];
            bytes.extend_from_slice(&[0; 4 + RING_LEN + 8]);
            bytes.extend_from_slice(&(body_len % 256).to_be_bytes());
            bytes.extend_from_slice(&tail);
            let _ = UnverifiedEnvelope::decode(&bytes);
        }

        #[test]
        fn round_trip_any(
            seed in any::<[u8; 32]>(),
            msg_type in any::<u8>(),
            signer in any::<u32>(),
            ring in any::<[u8; RING_LEN]>(),
            round in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let id = SecretIdentity::from_bytes(&seed);
            let header = Header { msg_type, signer, ring, round };
            let bytes = sealed(&id, &header, &body);
            let envelope = UnverifiedEnvelope::decode(&bytes).unwrap();
            prop_assert_eq!(envelope.header(), &header);
            let verified = envelope.verify(&id.public()).unwrap();
            prop_assert_eq!(verified.body(), &body[..]);
        }
    }
}
