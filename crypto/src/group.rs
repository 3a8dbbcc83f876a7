//! Client group payloads sealed under a view key `K_g,i`
//! (ARCHITECTURE.md section 7, the paper's integrated architecture).
//!
//! The daemons derive one key per group view ([`crate::kdf::group_key`]) with
//! a public 32-bit `Key_id` ([`crate::kdf::group_key_id`]) and hand both to
//! the view's members. A member seals each payload it sends to the group:
//!
//! ```text
//!   sealed = u32be(key_id) ‖ nonce (12) ‖ AES-256-GCM(K_g,i, nonce, aad, plaintext) ‖ tag (16)
//!   aad    = "rfg1" ‖ u8(len(group)) ‖ group ‖ u8(len(sender)) ‖ sender ‖ u16be(msg_type) ‖ u32be(key_id)
//! ```
//!
//! The key id and nonce travel in clear so a receiver (or a daemon doing the
//! EVS fix) knows which key opens the message. The group, the sender's
//! private name and the message type are bound as associated data: a sealed
//! payload moved to another group, claimed by another sender or given
//! another type does not open.
//!
//! Nonces are never reused under one key: a client uses its position in the
//! view's member list as the nonce's sender id (unique in the view, and a key
//! belongs to one view) and counts messages; a daemon resealing or sealing
//! for a non-member uses [`DAEMON_NONCE_BIT`] `|` its daemon id.

use crate::aead::{Aead, AeadError, KEY_LEN, Key32, NONCE_LEN, Nonce, RingAesGcm, TAG_LEN};
use std::fmt;

/// Clear header of a sealed payload: key id and nonce.
pub const HEADER_LEN: usize = 4 + NONCE_LEN;

/// Bytes a sealed payload adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Set in the nonce sender id of payloads a daemon seals; clients use ids
/// below it (their index in the view).
pub const DAEMON_NONCE_BIT: u32 = 0x8000_0000;

const AAD_LABEL: &[u8] = b"rfg1";

/// Why a sealed payload did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupOpenError {
    /// Shorter than a header and a tag.
    #[error("sealed payload too short")]
    Short,
    /// Sealed under another key (its key id differs).
    #[error("sealed under key {0:08x}, not this one")]
    OtherKey(u32),
    /// The tag did not verify (tampered, wrong group, sender or type).
    #[error("authentication failed")]
    Forged,
}

/// The key id a sealed payload names, if it is long enough to be one.
pub fn key_id_of(sealed: &[u8]) -> Option<u32> {
    (sealed.len() >= OVERHEAD).then(|| u32::from_be_bytes([sealed[0], sealed[1], sealed[2], sealed[3]]))
}

/// One group view's key and its id, with the AES key schedule ready.
/// Zeroized when dropped; `Debug` shows the id only.
pub struct GroupKey {
    id: u32,
    key: Key32,
    aead: RingAesGcm,
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupKey({:08x}, ..)", self.id)
    }
}

impl GroupKey {
    /// Wraps a view key and its id.
    pub fn new(id: u32, key: Key32) -> Self {
        let aead = RingAesGcm::new(&key);
        Self { id, key, aead }
    }

    /// Wraps key bytes received from a daemon.
    pub fn from_bytes(id: u32, bytes: [u8; KEY_LEN]) -> Self {
        Self::new(id, Key32::from_bytes(bytes))
    }

    /// The public key id.
    pub const fn id(&self) -> u32 {
        self.id
    }

    /// The secret, to hand to a member of the view. Never log it.
    pub const fn secret(&self) -> &Key32 {
        &self.key
    }

    /// Appends `plaintext` sealed for `group`, as `sender`, with `msg_type`
    /// to `out`. `nonce` must never have been used with this key.
    pub fn seal_into(
        &self,
        nonce: &Nonce,
        group: &[u8],
        sender: &[u8],
        msg_type: u16,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AeadError> {
        let aad = aad(group, sender, msg_type, self.id)?;
        let start = out.len();
        out.reserve(OVERHEAD + plaintext.len());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(nonce.as_bytes());
        out.extend_from_slice(plaintext);
        let tag = self.aead.seal_detached(nonce, &aad, &mut out[start + HEADER_LEN..])?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// `plaintext` sealed, in a new buffer.
    pub fn seal(
        &self,
        nonce: &Nonce,
        group: &[u8],
        sender: &[u8],
        msg_type: u16,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, AeadError> {
        let mut out = Vec::new();
        self.seal_into(nonce, group, sender, msg_type, plaintext, &mut out)?;
        Ok(out)
    }

    /// Opens a payload sealed under this key for `group` by `sender` with
    /// `msg_type`; returns the plaintext.
    pub fn open(
        &self,
        group: &[u8],
        sender: &[u8],
        msg_type: u16,
        sealed: &[u8],
    ) -> Result<Vec<u8>, GroupOpenError> {
        let id = key_id_of(sealed).ok_or(GroupOpenError::Short)?;
        if id != self.id {
            return Err(GroupOpenError::OtherKey(id));
        }
        let aad = aad(group, sender, msg_type, id).map_err(|_| GroupOpenError::Forged)?;
        let nonce: [u8; NONCE_LEN] = sealed[4..HEADER_LEN].try_into().map_err(|_| GroupOpenError::Short)?;
        let body = &sealed[HEADER_LEN..];
        let (text, tag) = body.split_at(body.len() - TAG_LEN);
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| GroupOpenError::Short)?;
        let mut plain = text.to_vec();
        self.aead
            .open_detached(&Nonce::from_bytes(nonce), &aad, &mut plain, tag)
            .map_err(|_| GroupOpenError::Forged)?;
        Ok(plain)
    }
}

/// The associated data; names longer than 255 bytes cannot be encoded.
fn aad(group: &[u8], sender: &[u8], msg_type: u16, key_id: u32) -> Result<Vec<u8>, AeadError> {
    let (Ok(gl), Ok(sl)) = (u8::try_from(group.len()), u8::try_from(sender.len())) else {
        return Err(AeadError);
    };
    let mut a = Vec::with_capacity(AAD_LABEL.len() + 8 + group.len() + sender.len());
    a.extend_from_slice(AAD_LABEL);
    a.push(gl);
    a.extend_from_slice(group);
    a.push(sl);
    a.extend_from_slice(sender);
    a.extend_from_slice(&msg_type.to_be_bytes());
    a.extend_from_slice(&key_id.to_be_bytes());
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(id: u32, b: u8) -> GroupKey {
        GroupKey::from_bytes(id, [b; KEY_LEN])
    }

    #[test]
    fn sealed_payloads_open_only_with_their_context() {
        let k = key(7, 1);
        let n = Nonce::new(3, 1);
        let s = k.seal(&n, b"chat", b"#a#1", 5, b"hello").unwrap();
        assert_eq!(s.len(), 5 + OVERHEAD);
        assert_eq!(key_id_of(&s), Some(7));
        assert!(!s.windows(5).any(|w| w == b"hello"));
        assert_eq!(k.open(b"chat", b"#a#1", 5, &s).unwrap(), b"hello");
        assert_eq!(k.open(b"chan", b"#a#1", 5, &s), Err(GroupOpenError::Forged));
        assert_eq!(k.open(b"chat", b"#b#1", 5, &s), Err(GroupOpenError::Forged));
        assert_eq!(k.open(b"chat", b"#a#1", 6, &s), Err(GroupOpenError::Forged));
        assert_eq!(key(8, 1).open(b"chat", b"#a#1", 5, &s), Err(GroupOpenError::OtherKey(7)));
        assert_eq!(key(7, 2).open(b"chat", b"#a#1", 5, &s), Err(GroupOpenError::Forged));
        assert_eq!(k.open(b"chat", b"#a#1", 5, &s[..OVERHEAD - 1]), Err(GroupOpenError::Short));
        assert!(format!("{k:?}").contains("00000007"));
        assert!(!format!("{k:?}").contains("0101"));
    }

    proptest! {
        /// Opening is total: any bytes give a plaintext or an error, and a
        /// flipped bit never opens.
        #[test]
        fn open_is_total_and_tamper_evident(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                            flip in any::<usize>()) {
            let k = key(1, 9);
            let _ = k.open(b"g", b"s", 0, &bytes);
            let mut s = k.seal(&Nonce::new(0, 0), b"g", b"s", 0, &bytes).unwrap();
            let i = flip % s.len();
            s[i] ^= 1;
            prop_assert!(k.open(b"g", b"s", 0, &s).is_err());
        }
    }
}
