//! The byte form shared by the protocols' message bodies, and its errors.
//!
//! Every integer is big-endian. Lists are a `u16` count (bounded by
//! [`MAX_MEMBERS`]) followed by the items. Group elements are 32 bytes:
//! X25519 u-coordinates or compressed ristretto255 points; a ristretto255
//! encoding that does not decompress is refused here. Every decoder reads
//! exactly its bytes: a short body gives [`DecodeError::Truncated`], extra
//! bytes [`DecodeError::TrailingBytes`].

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};

use super::MAX_MEMBERS;
use crate::envelope;

/// The bytes are not a message of this protocol (always the sender's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The signed envelope around the body is malformed.
    #[error("envelope: {0}")]
    Envelope(envelope::DecodeError),
    /// The envelope's message type names another protocol.
    #[error("message of protocol code {0}, not this agreement's")]
    WrongProtocol(u8),
    /// The envelope's context names another group.
    #[error("message for another group")]
    WrongGroup,
    /// The body ends inside a field.
    #[error("body truncated")]
    Truncated,
    /// Bytes after the end of the body.
    #[error("{0} bytes after the end of the body")]
    TrailingBytes(usize),
    /// A message kind this protocol does not have.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A list count of zero where one is needed, or above [`MAX_MEMBERS`].
    #[error("list of {0} items is out of bounds")]
    BadCount(usize),
    /// 32 bytes that are not a ristretto255 point encoding.
    #[error("not a ristretto255 point")]
    BadPoint,
    /// A flag byte with no meaning.
    #[error("unknown flag {0}")]
    BadFlag(u8),
    /// The TGDH message inside is malformed.
    #[error("TGDH: {0}")]
    Tgdh(crate::tgdh::DecodeError),
}

/// A cursor over a body whose reads fail instead of panicking.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A list count in `min..=MAX_MEMBERS`.
    pub(crate) fn count(&mut self, min: usize) -> Result<usize, DecodeError> {
        let n = usize::from(u16::from_be_bytes(self.array()?));
        if n < min || n > MAX_MEMBERS {
            return Err(DecodeError::BadCount(n));
        }
        // Refuse counts the remaining bytes cannot hold before allocating for them.
        if n > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    /// A compressed ristretto255 point that decompresses (the identity included).
    pub(crate) fn point(&mut self) -> Result<RistrettoPoint, DecodeError> {
        CompressedRistretto(self.array()?).decompress().ok_or(DecodeError::BadPoint)
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Writes a list count (callers bound lists by [`MAX_MEMBERS`]).
pub(crate) fn put_count(out: &mut Vec<u8>, n: usize) {
    debug_assert!(n <= MAX_MEMBERS);
    out.extend_from_slice(&(n as u16).to_be_bytes());
}

pub(crate) fn put_point(out: &mut Vec<u8>, p: &RistrettoPoint) {
    out.extend_from_slice(p.compress().as_bytes());
}
