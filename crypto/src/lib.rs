//! `ringfence-crypto`: the cryptography of ringfence, all sans-IO.
//!
//! What it is: authenticated encryption (AES-256-GCM from `ring` or from the
//! RustCrypto `aes-gcm` crate behind one interface), HMAC-SHA256 and HKDF
//! helpers, Ed25519 daemon identities kept in files, signed envelopes bound to
//! a ring, a round and a message type, TGDH (tree-based group
//! Diffie-Hellman over X25519) as a state machine, and the layered
//! architecture's client-side group key agreements ([`layered`]: TGDH, GDH,
//! BD, STR and CKD under one signed, epoch-bound interface).
//!
//! What it is not: a protocol driver. Nothing here reads a clock, a socket or
//! a global RNG; randomness comes from the caller's RNG and messages go in and
//! out as bytes. `ringfence-proto`'s security layer decides when to run TGDH
//! and what to seal.
//!
//! ```text
//!   identity (Ed25519) ─ signs ─► envelope(ring, round, type, body)
//!   TGDH over X25519 ──────────► server key K_s (epoch)
//!   K_s ─ HKDF(ring, epoch) ───► K_link ─► AEAD seal/open of frames
//!   K_s ─ HMAC(group, view) ───► K_g,i  (client group keys)
//!
//!   layered: VS view + signed messages ─► Agreement (TGDH|GDH|BD|STR|CKD) ─► key per view
//! ```

#![forbid(unsafe_code)]

pub mod aead;
pub mod envelope;
pub mod group;
pub mod identity;
pub mod kdf;
pub mod layered;
pub mod tgdh;
