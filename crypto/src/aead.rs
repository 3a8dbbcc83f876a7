//! Authenticated encryption: AES-256-GCM with 96-bit nonces and 128-bit tags.
//!
//! One interface, [`Aead`], and two backends behind it: [`RingAesGcm`]
//! (`ring`'s `LessSafeKey`, the default) and [`RustCryptoAesGcm`] (the
//! RustCrypto `aes-gcm` crate). [`Backend`] picks one from the configuration
//! (`"ring"` or `"aes-gcm"`) and returns a `Box<dyn Aead>`; the two produce
//! identical bytes, and the tests seal with one and open with the other.
//!
//! The API works in the caller's buffer and never allocates per call. A link
//! frame is sealed where it is built, with its header as associated data:
//!
//! ```text
//!   buf: [ header (aad) | plaintext ]          seal_frame(nonce, buf, header_len)
//!   buf: [ header (aad) | ciphertext | tag ]   open_frame(nonce, buf, header_len) -> plaintext
//! ```
//!
//! Nonces follow the link rule of ARCHITECTURE.md section 7, "nonces that are
//! never reused": [`Nonce::new`] is the sender's 32-bit daemon id followed by
//! its 64-bit message counter, both big-endian. The key must change before a
//! counter wraps; this module does not track counters.
//!
//! Every failure, whatever its cause (wrong key, wrong nonce, altered
//! ciphertext, tag or associated data, a buffer too short to hold a tag), is
//! the one opaque [`AeadError`]. Tags are compared in constant time by both
//! backends. On a failed open the ciphertext region of the buffer is zeroed by
//! both backends, so no unauthenticated plaintext is left behind; a caller who
//! wants to try a second key must keep a copy.
//!
//! Key material: [`Key32`] is zeroized on drop and its `Debug` shows no bytes.
//! The RustCrypto backend zeroizes its AES key schedule and GHASH key on drop
//! (the crate's `zeroize` feature); `ring` makes no such promise for its key
//! schedule.

use std::fmt;
use std::str::FromStr;

use rand::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::kdf::ct_eq;

/// Length of a key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of a nonce in bytes (the 96-bit GCM nonce).
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag appended to every ciphertext, in bytes.
pub const TAG_LEN: usize = 16;

/// A 256-bit secret key, zeroized on drop.
///
/// `Debug` prints `Key32(..)`; equality is constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key32([u8; KEY_LEN]);

impl Key32 {
    /// Wraps 32 key bytes. The caller should zeroize its own copy.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Draws a fresh key from the caller's cryptographically secure RNG.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = Self([0; KEY_LEN]);
        rng.fill_bytes(&mut key.0);
        key
    }

    /// The key bytes. Named so that every place that reads a secret stands out.
    pub const fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32(..)")
    }
}

impl PartialEq for Key32 {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for Key32 {}

/// A 96-bit GCM nonce: sender id (4 bytes, big-endian) ‖ counter (8 bytes, big-endian).
///
/// A nonce must never be used twice under one key. With one daemon id per
/// sender and a counter that only goes up, [`Nonce::new`] guarantees that as
/// long as the key is replaced before the counter wraps.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    /// The link nonce: `sender_id` (daemon id) ‖ `counter`, both big-endian.
    pub fn new(sender_id: u32, counter: u64) -> Self {
        let mut bytes = [0; NONCE_LEN];
        bytes[..4].copy_from_slice(&sender_id.to_be_bytes());
        bytes[4..].copy_from_slice(&counter.to_be_bytes());
        Self(bytes)
    }

    /// A nonce from raw bytes (for test vectors and other layouts).
    pub const fn from_bytes(bytes: [u8; NONCE_LEN]) -> Self {
        Self(bytes)
    }

    /// The 12 nonce bytes.
    pub const fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }

    /// The first four bytes read as the sender id.
    pub fn sender_id(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// The last eight bytes read as the counter.
    pub fn counter(&self) -> u64 {
        let mut counter = [0; 8];
        counter.copy_from_slice(&self.0[4..]);
        u64::from_be_bytes(counter)
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nonce")
            .field("sender_id", &self.sender_id())
            .field("counter", &self.counter())
            .finish()
    }
}

/// The one error of this module: sealing or opening failed.
///
/// Deliberately opaque: a peer learns nothing from why an open failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD seal or open failed")]
pub struct AeadError;

/// AES-256-GCM under one key: seal and open in the caller's buffer.
///
/// Implementors provide the two detached operations; the buffer-shaped
/// variants are built on them and never allocate (except that
/// [`seal_in_place`](Aead::seal_in_place) and [`seal_frame`](Aead::seal_frame)
/// grow the `Vec` by [`TAG_LEN`] if its capacity is short).
pub trait Aead: Send + Sync {
    /// Encrypts `in_out` in place and returns the tag, which authenticates `in_out` and `aad`.
    fn seal_detached(&self, nonce: &Nonce, aad: &[u8], in_out: &mut [u8])
    -> Result<[u8; TAG_LEN], AeadError>;

    /// Checks `tag` over `in_out` and `aad`, then decrypts `in_out` in place.
    ///
    /// On failure `in_out` is zeroed.
    fn open_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError>;

    /// Encrypts the whole of `buf` in place and appends the tag.
    fn seal_in_place(&self, nonce: &Nonce, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), AeadError> {
        let tag = self.seal_detached(nonce, aad, buf)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens `ciphertext ‖ tag` in place and returns the plaintext, a prefix of `buf`.
    ///
    /// On failure the ciphertext part of `buf` is zeroed.
    fn open_in_place<'a>(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], AeadError> {
        let text_len = buf.len().checked_sub(TAG_LEN).ok_or(AeadError)?;
        let (text, tag) = buf.split_at_mut(text_len);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| AeadError)?;
        self.open_detached(nonce, aad, text, tag)?;
        Ok(text)
    }

    /// Seals a frame built in `buf`: the first `aad_len` bytes stay in clear as
    /// associated data, the rest is encrypted, and the tag is appended.
    ///
    /// Fails if `aad_len > buf.len()`.
    fn seal_frame(&self, nonce: &Nonce, buf: &mut Vec<u8>, aad_len: usize) -> Result<(), AeadError> {
        if aad_len > buf.len() {
            return Err(AeadError);
        }
        let (aad, text) = buf.split_at_mut(aad_len);
        let tag = self.seal_detached(nonce, aad, text)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens a frame `aad ‖ ciphertext ‖ tag` in place, the first `aad_len`
    /// bytes being the associated data, and returns the plaintext.
    ///
    /// Fails if `buf` is shorter than `aad_len + TAG_LEN`. On failure the
    /// ciphertext part of `buf` is zeroed; the associated data is left alone.
    fn open_frame<'a>(
        &self,
        nonce: &Nonce,
        buf: &'a mut [u8],
        aad_len: usize,
    ) -> Result<&'a mut [u8], AeadError> {
        if aad_len > buf.len() {
            return Err(AeadError);
        }
        let (aad, sealed) = buf.split_at_mut(aad_len);
        self.open_in_place(nonce, aad, sealed)
    }
}

/// AES-256-GCM from `ring` (`LessSafeKey`): the default backend.
pub struct RingAesGcm {
    key: ring::aead::LessSafeKey,
}

impl RingAesGcm {
    /// Expands `key` for AES-256-GCM.
    pub fn new(key: &Key32) -> Self {
        // `UnboundKey::new` fails only when the key length does not match the
        // algorithm, and a `Key32` is always 32 bytes long.
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key.expose_secret())
            .expect("a Key32 is an AES-256 key");
        Self { key: ring::aead::LessSafeKey::new(unbound) }
    }
}

impl fmt::Debug for RingAesGcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RingAesGcm(..)")
    }
}

impl Aead for RingAesGcm {
    fn seal_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce.0);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), in_out)
            .map_err(|_| AeadError)?;
        tag.as_ref().try_into().map_err(|_| AeadError)
    }

    fn open_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce.0);
        let tag = ring::aead::Tag::from(*tag);
        let result = self
            .key
            .open_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), tag, in_out, 0..)
            .map(|_| ());
        if result.is_err() {
            // ring zeroes on a tag mismatch; do it for every failure.
            in_out.zeroize();
        }
        result.map_err(|_| AeadError)
    }
}

/// AES-256-GCM from the RustCrypto `aes-gcm` crate.
pub struct RustCryptoAesGcm {
    cipher: aes_gcm::Aes256Gcm,
}

impl RustCryptoAesGcm {
    /// Expands `key` for AES-256-GCM.
    pub fn new(key: &Key32) -> Self {
        use aes_gcm::KeyInit;
        Self { cipher: aes_gcm::Aes256Gcm::new(key.expose_secret().into()) }
    }
}

impl fmt::Debug for RustCryptoAesGcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RustCryptoAesGcm(..)")
    }
}

impl Aead for RustCryptoAesGcm {
    fn seal_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        use aes_gcm::AeadInOut;
        let tag = self
            .cipher
            .encrypt_inout_detached((&nonce.0).into(), aad, in_out.into())
            .map_err(|_| AeadError)?;
        Ok(tag.into())
    }

    fn open_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        use aes_gcm::AeadInOut;
        let result =
            self.cipher.decrypt_inout_detached((&nonce.0).into(), aad, (&mut *in_out).into(), tag.into());
        if result.is_err() {
            // aes-gcm checks the tag before decrypting and leaves the
            // ciphertext alone; zero it so both backends behave alike.
            in_out.zeroize();
        }
        result.map_err(|_| AeadError)
    }
}

/// Which AES-256-GCM implementation to use; chosen in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// `ring` (`"ring"`), the default.
    #[default]
    Ring,
    /// The RustCrypto `aes-gcm` crate (`"aes-gcm"`).
    RustCrypto,
}

impl Backend {
    /// Every backend, for tests and benches that run once per backend.
    pub const ALL: [Self; 2] = [Self::Ring, Self::RustCrypto];

    /// Expands `key` with this backend.
    pub fn key(self, key: &Key32) -> Box<dyn Aead> {
        match self {
            Self::Ring => Box::new(RingAesGcm::new(key)),
            Self::RustCrypto => Box::new(RustCryptoAesGcm::new(key)),
        }
    }

    /// The configuration name: `"ring"` or `"aes-gcm"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ring => "ring",
            Self::RustCrypto => "aes-gcm",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A configuration named an AEAD backend that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown AEAD backend {name:?}: expected \"ring\" or \"aes-gcm\"")]
pub struct UnknownBackend {
    /// The name as written in the configuration.
    pub name: String,
}

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|backend| backend.name() == s)
            .ok_or_else(|| UnknownBackend { name: s.into() })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn key_from_hex(s: &str) -> Key32 {
        Key32::from_bytes(unhex(s).try_into().expect("32 bytes"))
    }

    fn nonce_from_hex(s: &str) -> Nonce {
        Nonce::from_bytes(unhex(s).try_into().expect("12 bytes"))
    }

    /// One known-answer vector: key, nonce, aad, plaintext, ciphertext, tag (hex).
    struct Vector {
        name: &'static str,
        key: &'static str,
        nonce: &'static str,
        aad: &'static str,
        plaintext: &'static str,
        ciphertext: &'static str,
        tag: &'static str,
    }

    /// AES-256 test cases 13 to 16 of D. McGrew and J. Viega, "The Galois/Counter
    /// Mode of Operation (GCM)", submission to NIST, revised 2005, Appendix B
    /// ("AES Test Vectors"); the same cases appear in the GCM test vectors that
    /// NIST publishes with SP 800-38D. Case 16 is the one with associated data
    /// and a plaintext that ends in a partial block.
    const MCGREW_VIEGA: [Vector; 4] = [
        Vector {
            name: "test case 13",
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            plaintext: "",
            ciphertext: "",
            tag: "530f8afbc74536b9a963b4f1c4cb738b",
        },
        Vector {
            name: "test case 14",
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            plaintext: "00000000000000000000000000000000",
            ciphertext: "cea7403d4d606b6e074ec5d3baf39d18",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        },
        Vector {
            name: "test case 15",
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "",
            plaintext: "d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72
                        1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b391aafd255",
            ciphertext: "522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa
                         8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662898015ad",
            tag: "b094dac5d93471bdec1a502270e3cc6c",
        },
        Vector {
            name: "test case 16",
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            plaintext: "d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72
                        1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b39",
            ciphertext: "522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa
                         8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
    ];

    #[test]
    fn known_answers_on_every_backend() {
        for backend in Backend::ALL {
            for v in &MCGREW_VIEGA {
                let aead = backend.key(&key_from_hex(v.key));
                let nonce = nonce_from_hex(v.nonce);
                let aad = unhex(v.aad);
                let plaintext = unhex(v.plaintext);
                let mut expected = unhex(v.ciphertext);
                expected.extend_from_slice(&unhex(v.tag));

                let mut buf = plaintext.clone();
                aead.seal_in_place(&nonce, &aad, &mut buf).unwrap();
                assert_eq!(buf, expected, "{backend}: seal, {}", v.name);

                let opened = aead.open_in_place(&nonce, &aad, &mut buf).unwrap();
                assert_eq!(opened, &plaintext[..], "{backend}: open, {}", v.name);
            }
        }
    }

    #[test]
    fn nonce_is_sender_then_counter_big_endian() {
        let nonce = Nonce::new(0x0102_0304, 0x0506_0708_090a_0b0c);
        assert_eq!(nonce.as_bytes(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(nonce.sender_id(), 0x0102_0304);
        assert_eq!(nonce.counter(), 0x0506_0708_090a_0b0c);
        assert_eq!(format!("{nonce:?}"), "Nonce { sender_id: 16909060, counter: 361984551142689548 }");
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = Key32::from_bytes([0xab; KEY_LEN]);
        assert_eq!(format!("{key:?}"), "Key32(..)");
        assert_eq!(format!("{:?}", RingAesGcm::new(&key)), "RingAesGcm(..)");
        assert_eq!(format!("{:?}", RustCryptoAesGcm::new(&key)), "RustCryptoAesGcm(..)");
    }

    #[test]
    fn backend_names_round_trip() {
        for backend in Backend::ALL {
            assert_eq!(backend.to_string().parse::<Backend>(), Ok(backend));
        }
        assert_eq!("ring".parse(), Ok(Backend::Ring));
        assert_eq!("aes-gcm".parse(), Ok(Backend::RustCrypto));
        assert_eq!(Backend::default(), Backend::Ring);
        let err = "blowfish".parse::<Backend>().unwrap_err();
        assert_eq!(err.name, "blowfish");
        assert!(err.to_string().contains("\"ring\""));
    }

    /// Every single bit flip in ciphertext, tag or associated data is refused.
    #[test]
    fn any_bit_flip_fails() {
        let key = Key32::from_bytes([7; KEY_LEN]);
        let nonce = Nonce::new(3, 99);
        let aad = b"ring 7 frame header";
        let plaintext = b"a message that spans more than one AES block";
        for sealer in Backend::ALL {
            let mut sealed = plaintext.to_vec();
            sealer.key(&key).seal_in_place(&nonce, aad, &mut sealed).unwrap();
            for opener in Backend::ALL {
                let aead = opener.key(&key);
                for bit in 0..sealed.len() * 8 {
                    let mut buf = sealed.clone();
                    buf[bit / 8] ^= 1 << (bit % 8);
                    assert_eq!(
                        aead.open_in_place(&nonce, aad, &mut buf),
                        Err(AeadError),
                        "{opener}: bit {bit}"
                    );
                }
                for bit in 0..aad.len() * 8 {
                    let mut bad_aad = aad.to_vec();
                    bad_aad[bit / 8] ^= 1 << (bit % 8);
                    let mut buf = sealed.clone();
                    assert_eq!(aead.open_in_place(&nonce, &bad_aad, &mut buf), Err(AeadError));
                }
                let mut buf = sealed.clone();
                assert_eq!(aead.open_in_place(&nonce, aad, &mut buf).unwrap(), plaintext);
            }
        }
    }

    #[test]
    fn wrong_nonce_or_key_fails_and_zeroes() {
        let key = Key32::from_bytes([1; KEY_LEN]);
        let nonce = Nonce::new(1, 1);
        for backend in Backend::ALL {
            let aead = backend.key(&key);
            let mut sealed = b"secret".to_vec();
            aead.seal_in_place(&nonce, b"", &mut sealed).unwrap();
            for wrong in [Nonce::new(1, 2), Nonce::new(2, 1), Nonce::new(1, 1 << 32)] {
                let mut buf = sealed.clone();
                assert_eq!(aead.open_in_place(&wrong, b"", &mut buf), Err(AeadError), "{backend}");
                assert_eq!(&buf[..6], &[0; 6], "{backend}: no unauthenticated plaintext left");
            }
            let other = backend.key(&Key32::from_bytes([2; KEY_LEN]));
            let mut buf = sealed.clone();
            assert_eq!(other.open_in_place(&nonce, b"", &mut buf), Err(AeadError), "{backend}");
        }
    }

    #[test]
    fn short_buffers_fail() {
        let key = Key32::from_bytes([1; KEY_LEN]);
        let nonce = Nonce::new(1, 1);
        for backend in Backend::ALL {
            let aead = backend.key(&key);
            for len in 0..TAG_LEN {
                let mut buf = vec![0; len];
                assert_eq!(aead.open_in_place(&nonce, b"", &mut buf), Err(AeadError));
                assert_eq!(aead.open_frame(&nonce, &mut buf, 0), Err(AeadError));
            }
            let mut buf = vec![0; 20];
            assert_eq!(aead.open_frame(&nonce, &mut buf, 5), Err(AeadError));
            assert_eq!(aead.open_frame(&nonce, &mut buf, 21), Err(AeadError));
            let mut frame = vec![0; 4];
            assert_eq!(aead.seal_frame(&nonce, &mut frame, 5), Err(AeadError));
        }
    }

    #[test]
    fn frame_keeps_header_in_clear_and_binds_it() {
        let key = Key32::from_bytes([9; KEY_LEN]);
        let nonce = Nonce::new(4, 5);
        for backend in Backend::ALL {
            let aead = backend.key(&key);
            let mut frame = b"HDR:".to_vec();
            frame.extend_from_slice(b"payload");
            aead.seal_frame(&nonce, &mut frame, 4).unwrap();
            assert_eq!(&frame[..4], b"HDR:");
            assert_eq!(frame.len(), 4 + 7 + TAG_LEN);

            // The same bytes open with the header passed as aad.
            let mut copy = frame[4..].to_vec();
            assert_eq!(aead.open_in_place(&nonce, b"HDR:", &mut copy).unwrap(), b"payload");

            let mut tampered = frame.clone();
            tampered[0] ^= 1;
            assert_eq!(aead.open_frame(&nonce, &mut tampered, 4), Err(AeadError));
            assert_eq!(&tampered[..4], b"IDR:", "the header is not zeroed");

            assert_eq!(aead.open_frame(&nonce, &mut frame, 4).unwrap(), b"payload");
        }
    }

    #[test]
    fn seal_does_not_reallocate_with_spare_capacity() {
        let aead = Backend::Ring.key(&Key32::from_bytes([3; KEY_LEN]));
        let mut buf = Vec::with_capacity(1500);
        buf.extend_from_slice(&[0x55; 1400]);
        let before = buf.as_ptr();
        aead.seal_frame(&Nonce::new(1, 1), &mut buf, 40).unwrap();
        assert_eq!(buf.as_ptr(), before);
    }

    fn arb_key() -> impl Strategy<Value = Key32> {
        any::<[u8; KEY_LEN]>().prop_map(Key32::from_bytes)
    }

    proptest! {
        /// Seal with one backend, open with the other: the outputs are identical bytes.
        #[test]
        fn cross_backend(
            key in arb_key(),
            sender in any::<u32>(),
            counter in any::<u64>(),
            aad in proptest::collection::vec(any::<u8>(), 0..64),
            plaintext in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let nonce = Nonce::new(sender, counter);
            let ring = Backend::Ring.key(&key);
            let rust_crypto = Backend::RustCrypto.key(&key);

            let mut by_ring = plaintext.clone();
            ring.seal_in_place(&nonce, &aad, &mut by_ring).unwrap();
            let mut by_rust_crypto = plaintext.clone();
            rust_crypto.seal_in_place(&nonce, &aad, &mut by_rust_crypto).unwrap();
            prop_assert_eq!(&by_ring, &by_rust_crypto);
            prop_assert_eq!(by_ring.len(), plaintext.len() + TAG_LEN);

            prop_assert_eq!(rust_crypto.open_in_place(&nonce, &aad, &mut by_ring).unwrap(), &plaintext[..]);
            prop_assert_eq!(ring.open_in_place(&nonce, &aad, &mut by_rust_crypto).unwrap(), &plaintext[..]);
        }

        /// A random bit flip anywhere in ciphertext ‖ tag is refused by both backends.
        #[test]
        fn random_flip_fails(
            key in arb_key(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..300),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let nonce = Nonce::new(1, 2);
            let mut sealed = plaintext;
            Backend::Ring.key(&key).seal_in_place(&nonce, b"aad", &mut sealed).unwrap();
            let at = flip.index(sealed.len());
            sealed[at] ^= 1 << bit;
            for backend in Backend::ALL {
                let mut buf = sealed.clone();
                prop_assert_eq!(backend.key(&key).open_in_place(&nonce, b"aad", &mut buf), Err(AeadError));
            }
        }
    }
}
