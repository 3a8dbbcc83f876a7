//! Server security: daemon identities, the server key agreed by TGDH, and
//! link sealing of every datagram between daemons.
//!
//! ```text
//!  regular configuration installed ──► TGDH over signed ring messages (agreed order)
//!        │  (clients do not see it yet)          │ last message delivered: K_s, epoch
//!        ▼                                       ▼
//!  datagrams signed (Ed25519)          K_link = HKDF(K_s, ring id, epoch) added for receiving;
//!                                      the regular configuration goes to the clients
//!                                               │ the last message is stable (every member holds it)
//!                                               ▼
//!                                      datagrams sealed with K_link (AES-256-GCM)
//! ```
//!
//! A cascaded membership change starts a new run: the old one is dropped
//! with its ring. The representative asks for a refresh when the key is
//! older than the time-out or has carried more than the data-out; a refresh
//! runs over the same ring, and the old key stays in use until the new one
//! is stable. While a new ring has no key, recovered packets of an old ring
//! travel sealed under that old ring's key, so no payload crosses the wire
//! in clear (`encrypt`) or unauthenticated.
//!
//! [`link`] is the outer layer; this module holds the settings, the
//! counters and the [`Agreement`] driver.

#[cfg(test)]
mod adversary_tests;
pub mod lab;
pub mod link;
pub mod policy;

use crate::Time;
use crate::wire::{NodeId, RingId};
use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ringfence_crypto::aead::{Backend, Key32};
use ringfence_crypto::envelope::{Envelope, UnverifiedEnvelope};
use ringfence_crypto::identity::{PublicIdentity, SecretIdentity};
use ringfence_crypto::tgdh::{Message as TgdhMessage, Tgdh};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use link::{KeyId, Link, Reject};

/// What the links between daemons protect (`link_security`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// Every datagram encrypted and authenticated (AES-256-GCM).
    #[default]
    Encrypt,
    /// Every datagram authenticated (GMAC), sent in clear.
    Authenticate,
    /// Nothing: no identities, no key agreement, plain datagrams.
    None,
}

impl LinkMode {
    /// The config and log name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Authenticate => "authenticate",
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for LinkMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "encrypt" => Ok(Self::Encrypt),
            "authenticate" => Ok(Self::Authenticate),
            "none" => Ok(Self::None),
            other => {
                Err(format!("`{other}` is not a link mode (use \"encrypt\", \"authenticate\" or \"none\")"))
            }
        }
    }
}

/// One daemon's security settings.
#[derive(Clone)]
pub struct SecurityConfig {
    /// What links protect.
    pub mode: LinkMode,
    /// This daemon's identity (required unless the mode is `none`).
    pub identity: Option<Arc<SecretIdentity>>,
    /// Every daemon's public identity, this one's included.
    pub peers: BTreeMap<NodeId, PublicIdentity>,
    /// The AES-GCM implementation.
    pub aead: Backend,
    /// Refresh the server key after this long (time-out).
    pub refresh_after: Option<Duration>,
    /// Refresh the server key after the ring carried this many payload
    /// bytes under it (data-out).
    pub refresh_bytes: Option<u64>,
    /// Seed of the key agreement's randomness (the runtime draws it from
    /// the operating system; the simulator from its seed).
    pub seed: [u8; 32],
    /// This life of the daemon (see [`link`]).
    pub incarnation: u32,
    /// Digest of the client group policy ([`policy::Policy::digest`]):
    /// daemons with different policies refuse each other like daemons with
    /// different modes.
    pub policy_digest: [u8; 32],
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("mode", &self.mode)
            .field("peers", &self.peers.len())
            .field("aead", &self.aead)
            .field("refresh_after", &self.refresh_after)
            .field("refresh_bytes", &self.refresh_bytes)
            .finish_non_exhaustive()
    }
}

impl SecurityConfig {
    /// The digest daemons compare before they talk: the mode, every
    /// daemon's public key and the client group policy. Two daemons configured differently refuse each
    /// other's datagrams (and say so), never fall back to a weaker mode.
    pub fn digest(&self) -> [u8; 8] {
        let mut parts: Vec<Vec<u8>> = vec![self.mode.name().as_bytes().to_vec()];
        for (id, key) in &self.peers {
            let mut p = id.0.to_be_bytes().to_vec();
            p.extend_from_slice(key.as_bytes());
            parts.push(p);
        }
        parts.push(self.policy_digest.to_vec());
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let mac = ringfence_crypto::kdf::hmac_sha256(b"ringfence security settings v1", &refs);
        let mut d = [0u8; 8];
        d.copy_from_slice(&mac[..8]);
        d
    }
}

/// Security counters of one daemon (shown by `ringfence monitor`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SecurityStats {
    /// Link mode.
    pub mode: LinkMode,
    /// Datagrams sent sealed (or authenticated) under a link key.
    pub sealed: u64,
    /// Datagrams sent signed (no link key yet).
    pub signed: u64,
    /// Dropped: too short or unknown kind.
    pub malformed: u64,
    /// Dropped: the sender's security settings differ from ours.
    pub settings_mismatch: u64,
    /// Dropped: a sender without a public key in the configuration.
    pub unknown_sender: u64,
    /// Dropped: a signature that does not verify.
    pub bad_signature: u64,
    /// Dropped: a sealed datagram whose tag does not verify.
    pub auth_failures: u64,
    /// Dropped: a key this daemon does not hold.
    pub unknown_key: u64,
    /// Dropped: seen before.
    pub replays: u64,
    /// Dropped: authentic, but addressed to another daemon (redirected).
    pub misdirected: u64,
    /// Recovered packets of an old ring this daemon could not open (not of
    /// its old ring, or under a key it lacks).
    pub recovered_unopened: u64,
    /// Datagrams not sent (and recovered packets not carried) because
    /// they could not be sealed; recovery or retransmission covers them.
    pub dropped_unsealable: u64,
    /// Key agreement runs given up (failed or past their deadline).
    pub agreements_abandoned: u64,
    /// Key agreement messages rejected (bad envelope or out of place).
    pub bad_agreement_messages: u64,
    /// Key agreements completed (server keys installed).
    pub keys_agreed: u64,
    /// Refreshes started by policy.
    pub refreshes: u64,
    /// Epoch of the current server key (0: none yet).
    pub epoch: u64,
    /// Id of the link key sealed with.
    pub link_key: Option<String>,
    /// When the current server key was agreed (ns of the node's clock).
    pub rekeyed_at_ns: Option<u64>,
    /// Time from the start of the last membership change (token loss,
    /// join or merge detected) to its server key, in ns.
    pub last_agreement_ns: Option<u64>,
    /// Of that, the key agreement alone: from the new ring's installation
    /// to its server key, in ns.
    pub last_run_ns: Option<u64>,
}

impl SecurityStats {
    /// Counts a rejected datagram.
    pub fn count(&mut self, r: Reject) {
        let c = match r {
            Reject::Malformed => &mut self.malformed,
            Reject::SettingsMismatch => &mut self.settings_mismatch,
            Reject::UnknownSender => &mut self.unknown_sender,
            Reject::BadSignature => &mut self.bad_signature,
            Reject::AuthFailure => &mut self.auth_failures,
            Reject::UnknownKey => &mut self.unknown_key,
            Reject::Replay => &mut self.replays,
            Reject::Misdirected => &mut self.misdirected,
        };
        *c += 1;
    }
}

/// Message types of the envelopes the agreement sends.
const T_TGDH: u8 = 1;
const T_REFRESH: u8 = 2;
/// "I hold link key `kid`": a key is used once every member said so.
const T_CHECK: u8 = 3;

/// A completed agreement: the server key and where it became known.
#[derive(Debug)]
pub struct ServerKey {
    /// The ring it was agreed in.
    pub ring_id: RingId,
    /// Its epoch: `ring seq << 16 | refreshes in that ring`, the same at
    /// every member.
    pub epoch: u64,
    /// The secret.
    pub key: Key32,
    /// The link key derived from it.
    pub link: KeyId,
}

/// What the node must do after the agreement handled a message.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Envelopes to submit to the ring, in order.
    pub send: Vec<Bytes>,
    /// A new server key was agreed.
    pub agreed: bool,
    /// A member said it holds a link key.
    pub holds: Option<KeyId>,
}

/// The servers agreement engine: runs TGDH among the members of the
/// current ring over signed, totally ordered ring messages.
pub struct Agreement {
    me: NodeId,
    identity: Arc<SecretIdentity>,
    peers: BTreeMap<NodeId, PublicIdentity>,
    tgdh: Tgdh,
    rng: ChaCha20Rng,
    /// The ring and round of the run in progress.
    run: Option<(RingId, u64)>,
    refreshes_in_ring: u64,
    key: Option<ServerKey>,
}

impl std::fmt::Debug for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agreement").field("me", &self.me).field("run", &self.run).finish_non_exhaustive()
    }
}

fn ring_bytes(r: RingId) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&r.seq.to_be_bytes());
    b[8..10].copy_from_slice(&r.rep.0.to_be_bytes());
    b
}

impl Agreement {
    /// The engine of daemon `me`.
    pub fn new(
        me: NodeId,
        identity: Arc<SecretIdentity>,
        peers: BTreeMap<NodeId, PublicIdentity>,
        seed: [u8; 32],
    ) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let tgdh = Tgdh::new(u32::from(me.0), &mut rng);
        Self { me, identity, peers, tgdh, rng, run: None, refreshes_in_ring: 0, key: None }
    }

    /// The server key, once agreed in the current ring.
    pub fn key(&self) -> Option<&ServerKey> {
        self.key.as_ref()
    }

    /// Whether a run is in progress.
    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    fn envelope(&self, ring: RingId, round: u64, kind: u8, body: &[u8]) -> Bytes {
        Bytes::from(Envelope::seal(&self.identity, u32::from(self.me.0), ring_bytes(ring), round, kind, body))
    }

    /// A new ring of `members` is installed: start a run (dropping any in
    /// progress). The key of the previous ring is no longer this ring's key.
    pub fn start(&mut self, ring: RingId, members: &[NodeId]) -> Outcome {
        let round = ring.seq << 16;
        self.run = Some((ring, round));
        self.refreshes_in_ring = 0;
        self.key = None;
        let ids: Vec<u32> = members.iter().map(|m| u32::from(m.0)).collect();
        // `start` only fails for a member set without this daemon or too
        // large, which the ring never installs: then no key, no delivery.
        let msgs = self.tgdh.start(round, &ids, &mut self.rng).unwrap_or_default();
        Outcome { send: self.envelopes(ring, round, &msgs), ..Outcome::default() }
    }

    fn envelopes(&self, ring: RingId, round: u64, msgs: &[TgdhMessage]) -> Vec<Bytes> {
        msgs.iter()
            .map(|m| {
                let mut body = Vec::new();
                m.encode(&mut body);
                self.envelope(ring, round, T_TGDH, &body)
            })
            .collect()
    }

    /// The envelope saying this daemon holds link key `kid` of `ring`.
    pub fn check(&self, ring: RingId, kid: KeyId) -> Bytes {
        self.envelope(ring, 0, T_CHECK, &kid.0)
    }

    /// The envelope asking the ring for a refresh (sent by the representative).
    pub fn refresh_request(&self, ring: RingId) -> Bytes {
        self.envelope(ring, self.refreshes_in_ring + 1, T_REFRESH, &[])
    }

    /// A key-agreement message delivered by the ring `ring` (in agreed
    /// order), sent by `origin`.
    pub fn handle(&mut self, ring: RingId, origin: NodeId, payload: &[u8]) -> Result<Outcome, &'static str> {
        let env = UnverifiedEnvelope::decode(payload).map_err(|_| "malformed envelope")?;
        if env.header().signer != u32::from(origin.0) {
            return Err("envelope signer is not the message's origin");
        }
        if env.header().ring != ring_bytes(ring) {
            return Err("envelope of another ring");
        }
        let key = self.peers.get(&origin).ok_or("signer without a public key")?;
        let env = env.verify(key).map_err(|_| "bad envelope signature")?;
        match env.header().msg_type {
            T_CHECK => {
                let kid = KeyId(env.body().try_into().map_err(|_| "malformed key check")?);
                Ok(Outcome { holds: Some(kid), ..Outcome::default() })
            }
            T_REFRESH => {
                if self.run.is_some() || self.key.as_ref().is_none_or(|k| k.ring_id != ring) {
                    return Ok(Outcome::default()); // one refresh at a time
                }
                self.refreshes_in_ring += 1;
                let round = (ring.seq << 16) | (self.refreshes_in_ring & 0xffff);
                let msgs = self.tgdh.refresh(round, &mut self.rng).map_err(|_| "refresh refused")?;
                self.run = Some((ring, round));
                Ok(Outcome { send: self.envelopes(ring, round, &msgs), ..Outcome::default() })
            }
            T_TGDH => {
                let Some((run_ring, round)) = self.run else { return Ok(Outcome::default()) };
                if run_ring != ring || env.header().round != round {
                    return Ok(Outcome::default()); // a stale run's message
                }
                let msg = TgdhMessage::decode(env.body()).map_err(|_| "malformed TGDH message")?;
                let out =
                    self.tgdh.handle(u32::from(origin.0), &msg, &mut self.rng).map_err(|_| "TGDH refused")?;
                let mut outcome = Outcome { send: self.envelopes(ring, round, &out), ..Outcome::default() };
                if let (true, Some((_, k))) = (self.tgdh.is_done(), self.tgdh.key()) {
                    // The epoch is the run's round: the same at every member.
                    let key = Key32::from_bytes(*k.as_bytes());
                    let link_key = ringfence_crypto::kdf::link_key(&key, &ring_bytes(ring), round);
                    self.key =
                        Some(ServerKey { ring_id: ring, epoch: round, link: KeyId::of(&link_key), key });
                    self.run = None;
                    outcome.agreed = true;
                }
                Ok(outcome)
            }
            _ => Err("unknown agreement message type"),
        }
    }

    /// The link key of the current server key.
    pub fn link_key(&self) -> Option<Key32> {
        let k = self.key.as_ref()?;
        Some(ringfence_crypto::kdf::link_key(&k.key, &ring_bytes(k.ring_id), k.epoch))
    }
}

/// When the representative should ask for a refresh.
pub fn refresh_due(cfg: &SecurityConfig, agreed_at: Time, now: Time, bytes: u64) -> bool {
    cfg.refresh_after.is_some_and(|d| now.saturating_since(agreed_at) >= d)
        || cfg.refresh_bytes.is_some_and(|b| bytes >= b)
}

#[cfg(test)]
mod tests;
