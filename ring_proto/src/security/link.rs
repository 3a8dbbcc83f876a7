//! Link sealing: the outer layer of every daemon-to-daemon datagram.
//!
//! ```text
//!  0      kind      u8   0xE0 plain, 0xE1 signed, 0xE2 sealed, 0xE3 authenticated
//!  1..9   digest    [u8; 8]  of the sender's security settings
//!  9..11  sender    u16  daemon id
//! 11..13  to        u16  the receiver's daemon id, or 0xFFFF: every daemon
//! 13..21  counter   u64  per sender; per key for sealed/authenticated
//! 21..29  key id    [u8; 8]  which link key (zero for plain and signed)
//! 29..    body      plain: the protocol datagram
//!                   signed: datagram ‖ Ed25519 signature (64) over header ‖ datagram
//!                   sealed: AES-256-GCM(datagram) ‖ tag (16), header as associated data
//!                   authenticated: datagram ‖ GMAC tag (16) over header ‖ datagram
//! ```
//!
//! The nonce of a sealed or authenticated datagram is `sender ‖ counter`
//! (the daemon id widened to 32 bits): a key is fresh for each ring and
//! epoch and the counter starts at zero and only goes up, so a nonce is never
//! used twice under one key. Signed datagrams count from
//! `incarnation << 32`, so a restarted daemon is not taken for a replayer.
//!
//! Every receiver keeps a sliding window of counters per sender (per key for
//! sealed datagrams): a datagram seen before, or older than the window, is a
//! replay and is dropped and counted.
//!
//! The header names the receiver (`to`): a datagram sealed or signed for one
//! daemon (a token, a commit token) and delivered to another is dropped and
//! counted (`Misdirected`) once it authenticates, although that receiver's
//! replay window has never seen its counter. A datagram for every daemon
//! (packets, joins, beacons) says so (`0xFFFF`). In mode `none` the field is
//! checked too, but nothing authenticates it.

use super::{LinkMode, SecurityStats};
use crate::wire::NodeId;
use bytes::{Bytes, BytesMut};
use ringfence_crypto::aead::{Aead, Backend, Key32, Nonce, TAG_LEN};
use ringfence_crypto::identity::{PublicIdentity, SecretIdentity};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Bytes of the outer header.
pub const HEADER: usize = 29;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE: usize = 64;
/// The most a datagram grows by (header and signature).
pub const OVERHEAD: usize = HEADER + SIGNATURE;

const PLAIN: u8 = 0xE0;
const SIGNED: u8 = 0xE1;
const SEALED: u8 = 0xE2;
const AUTHENTICATED: u8 = 0xE3;

/// Header offsets (see the module docs).
const TO: usize = 11;
const COUNTER: usize = 13;
const KEY_ID: usize = 21;

/// Link keys kept for receiving: the current one and a few before it, for
/// datagrams in flight across a rekey.
const KEYS_KEPT: usize = 4;
/// Width of the replay window, in counters.
const WINDOW: u64 = 1024;

/// Identifies a link key on the wire: the first 8 bytes of an HMAC of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &Key32) -> Self {
        let mac = ringfence_crypto::kdf::hmac_sha256(key.expose_secret(), &[b"ringfence key id v1"]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&mac[..8]);
        Self(id)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Counters seen from one sender: the highest and a bitmap of the `WINDOW`
/// below it.
#[derive(Clone, Debug, Default)]
struct Window {
    top: u64,
    seen: [u64; (WINDOW / 64) as usize],
    any: bool,
}

impl Window {
    /// Records `c`; false if it was seen already or is too old.
    fn accept(&mut self, c: u64) -> bool {
        if !self.any || c > self.top {
            let shift = if self.any { c - self.top } else { WINDOW };
            if shift >= WINDOW {
                self.seen = [0; (WINDOW / 64) as usize];
            } else {
                for _ in 0..shift {
                    // Clear the slots the window moves over.
                    self.top += 1;
                    let slot = self.top % WINDOW;
                    self.seen[(slot / 64) as usize] &= !(1 << (slot % 64));
                }
            }
            self.top = c;
            self.any = true;
            let slot = c % WINDOW;
            self.seen[(slot / 64) as usize] |= 1 << (slot % 64);
            return true;
        }
        if self.top - c >= WINDOW {
            return false;
        }
        let slot = c % WINDOW;
        let bit = 1 << (slot % 64);
        let word = &mut self.seen[(slot / 64) as usize];
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        true
    }
}

struct LinkKey {
    id: KeyId,
    aead: Box<dyn Aead>,
    /// Next counter this daemon seals with under this key: never reset,
    /// so a (key, nonce) pair is never used twice.
    counter: u64,
    /// Replay windows of this key, per sender.
    windows: HashMap<NodeId, Window>,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why an incoming datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Too short, or an unknown kind byte.
    Malformed,
    /// The sender's security settings differ from ours.
    SettingsMismatch,
    /// The claimed sender has no public key in our configuration.
    UnknownSender,
    /// A signature that does not verify.
    BadSignature,
    /// A sealed or authenticated datagram that fails its tag.
    AuthFailure,
    /// A key we do not hold (or no longer hold).
    UnknownKey,
    /// A counter seen before (or too old).
    Replay,
    /// Addressed to another daemon (a datagram redirected here).
    Misdirected,
}

/// One daemon's link layer: its identity, its peers' public keys, the link
/// keys it holds, counters and replay windows.
pub struct Link {
    me: NodeId,
    mode: LinkMode,
    digest: [u8; 8],
    identity: Option<Arc<SecretIdentity>>,
    peers: BTreeMap<NodeId, PublicIdentity>,
    backend: Backend,
    /// Receive keys, newest last.
    keys: Vec<LinkKey>,
    /// The key this daemon seals with, if any (an index into `keys` by id).
    send: Option<KeyId>,
    signed_counter: u64,
    /// Counter of blobs ([`Link::seal_blob`]): never reset, so a blob nonce
    /// is never reused under any key.
    blob_counter: u64,
    signed_windows: HashMap<NodeId, Window>,
    scratch: Vec<u8>,
    /// The free end of the block sealed datagrams are split off.
    tx_block: BytesMut,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("me", &self.me)
            .field("mode", &self.mode)
            .field("keys", &self.keys)
            .field("send", &self.send)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link layer for daemon `me`. `incarnation` numbers this life of the
    /// daemon (signed datagrams count from `incarnation << 32`).
    pub fn new(
        me: NodeId,
        mode: LinkMode,
        digest: [u8; 8],
        identity: Option<Arc<SecretIdentity>>,
        peers: BTreeMap<NodeId, PublicIdentity>,
        backend: Backend,
        incarnation: u32,
    ) -> Self {
        Self {
            me,
            mode,
            digest,
            identity,
            peers,
            backend,
            keys: Vec::new(),
            send: None,
            signed_counter: u64::from(incarnation) << 32,
            blob_counter: u64::from(incarnation) << 32,
            signed_windows: HashMap::new(),
            scratch: Vec::new(),
            tx_block: BytesMut::new(),
        }
    }

    /// Adds a link key for receiving (and, after [`Link::send_with`], for
    /// sending). Returns its id. The oldest is forgotten past `KEYS_KEPT`.
    pub fn add_key(&mut self, key: &Key32) -> KeyId {
        let id = KeyId::of(key);
        if self.keys.iter().all(|k| k.id != id) {
            if self.keys.len() == KEYS_KEPT {
                let old = self.keys.remove(0);
                if self.send == Some(old.id) {
                    self.send = None;
                }
            }
            self.keys.push(LinkKey { id, aead: self.backend.key(key), counter: 0, windows: HashMap::new() });
        }
        id
    }

    /// Seals from now on with key `id` (which must have been added); `None`
    /// goes back to signing.
    pub fn send_with(&mut self, id: Option<KeyId>) {
        self.send = id.filter(|id| self.keys.iter().any(|k| k.id == *id));
    }

    /// The key sealed with, if any.
    pub fn sending_with(&self) -> Option<KeyId> {
        self.send
    }

    /// Seals `body` with key `id` as a standalone blob (for recovered
    /// packets carried through a new ring): `key id ‖ counter ‖ ciphertext ‖
    /// tag`, or `None` if the key is unknown.
    pub fn seal_blob(&mut self, id: KeyId, body: &[u8]) -> Option<Bytes> {
        let key = self.keys.iter().find(|k| k.id == id)?;
        let counter = self.blob_counter;
        self.blob_counter += 1;
        let mut buf = Vec::with_capacity(16 + body.len() + TAG_LEN);
        buf.extend_from_slice(&id.0);
        buf.extend_from_slice(&counter.to_be_bytes());
        buf.extend_from_slice(body);
        key.aead.seal_frame(&Nonce::new(u32::from(self.me.0) | 0x8000_0000, counter), &mut buf, 16).ok()?;
        Some(Bytes::from(buf))
    }

    /// Opens a blob of [`Link::seal_blob`] sealed by `sender`.
    pub fn open_blob(&self, sender: NodeId, blob: &[u8]) -> Option<Bytes> {
        if blob.len() < 16 + TAG_LEN {
            return None;
        }
        let id = KeyId(blob[..8].try_into().ok()?);
        let counter = u64::from_be_bytes(blob[8..16].try_into().ok()?);
        let key = self.keys.iter().find(|k| k.id == id)?;
        let mut buf = blob.to_vec();
        let nonce = Nonce::new(u32::from(sender.0) | 0x8000_0000, counter);
        let n = key.aead.open_frame(&nonce, &mut buf, 16).ok()?.len();
        Some(Bytes::copy_from_slice(&buf[16..16 + n]))
    }

    fn header(&self, out: &mut BytesMut, kind: u8, to: NodeId, counter: u64, key: KeyId) {
        write_header(out, kind, &self.digest, self.me, to, counter, key);
    }
}

/// Writes the outer header (see the module docs).
fn write_header(
    out: &mut BytesMut,
    kind: u8,
    digest: &[u8; 8],
    me: NodeId,
    to: NodeId,
    counter: u64,
    key: KeyId,
) {
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(digest);
    out.extend_from_slice(&me.0.to_be_bytes());
    out.extend_from_slice(&to.0.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(&key.0);
}

impl Link {
    /// Wraps an outgoing protocol datagram for daemon `to` (`None`: for
    /// every daemon): sealed with the link key if `keyed` (it is for the
    /// members of the keyed ring only) and there is one, else signed.
    ///
    /// The result is split off a block the link keeps: no allocation per
    /// datagram (see [`Link::seal_into`]).
    pub fn seal(
        &mut self,
        datagram: &[u8],
        to: Option<NodeId>,
        keyed: bool,
        stats: &mut SecurityStats,
    ) -> Bytes {
        let mut block = std::mem::take(&mut self.tx_block);
        crate::block::make_room(&mut block, OVERHEAD + datagram.len(), crate::block::BLOCK);
        self.seal_into(datagram, to, keyed, stats, &mut block);
        let sealed = block.split().freeze();
        self.tx_block = block;
        sealed
    }

    /// As [`Link::seal`], appending the wrapped datagram to `out`, a
    /// buffer the caller lends (the datagram is copied once, then sealed
    /// in place; the caller keeps its plain datagram, e.g. for
    /// retransmission). `out` grows if its free room is short of the
    /// datagram and [`OVERHEAD`].
    pub fn seal_into(
        &mut self,
        datagram: &[u8],
        to: Option<NodeId>,
        keyed: bool,
        stats: &mut SecurityStats,
        out: &mut BytesMut,
    ) {
        let to = to.unwrap_or(NodeId::NONE);
        let start = out.len();
        out.reserve(OVERHEAD + datagram.len());
        if self.mode == LinkMode::None {
            self.header(out, PLAIN, to, 0, KeyId([0; 8]));
            out.extend_from_slice(datagram);
            return;
        }
        let (digest, me, mode) = (self.digest, self.me, self.mode);
        if let Some(id) = self.send.filter(|_| keyed) {
            if let Some(key) = self.keys.iter_mut().find(|k| k.id == id) {
                let counter = key.counter;
                key.counter += 1;
                let nonce = Nonce::new(u32::from(me.0), counter);
                let kind = if mode == LinkMode::Encrypt { SEALED } else { AUTHENTICATED };
                write_header(out, kind, &digest, me, to, counter, id);
                out.extend_from_slice(datagram);
                let tag = if kind == SEALED {
                    let (header, body) = out[start..].split_at_mut(HEADER);
                    key.aead.seal_detached(&nonce, header, body)
                } else {
                    // Everything is associated data; nothing is encrypted.
                    key.aead.seal_detached(&nonce, &out[start..], &mut [])
                };
                if let Ok(tag) = tag {
                    out.extend_from_slice(&tag);
                    stats.sealed += 1;
                    return;
                }
                out.truncate(start);
            }
        }
        let counter = self.signed_counter;
        self.signed_counter += 1;
        self.header(out, SIGNED, to, counter, KeyId([0; 8]));
        out.extend_from_slice(datagram);
        if let Some(identity) = &self.identity {
            let sig = identity.sign(&out[start..]);
            out.extend_from_slice(&sig);
        }
        stats.signed += 1;
    }

    /// Unwraps an incoming datagram: its sender, the protocol datagram and
    /// the link key it was sealed with (if sealed), or why it was dropped.
    /// A sealed datagram is opened in place if `bytes` is not shared, else
    /// in a copy.
    pub fn open(&mut self, bytes: Bytes) -> Result<(NodeId, Bytes, Option<KeyId>), Reject> {
        self.open_received(Received::Shared(bytes))
    }

    /// As [`Link::open`], for a datagram in a buffer of its own: a sealed
    /// one is opened in place, and the protocol datagram returned is a
    /// slice of the same buffer.
    pub fn open_owned(&mut self, buf: BytesMut) -> Result<(NodeId, Bytes, Option<KeyId>), Reject> {
        self.open_received(Received::Owned(buf))
    }

    pub(crate) fn open_received(
        &mut self,
        received: Received,
    ) -> Result<(NodeId, Bytes, Option<KeyId>), Reject> {
        let bytes: &[u8] = match &received {
            Received::Shared(b) => b,
            Received::Owned(b) => b,
        };
        if bytes.len() < HEADER {
            return Err(Reject::Malformed);
        }
        let kind = bytes[0];
        if bytes[1..9] != self.digest {
            return Err(Reject::SettingsMismatch);
        }
        let sender = NodeId(u16::from_be_bytes([bytes[9], bytes[10]]));
        let to = NodeId(u16::from_be_bytes([bytes[TO], bytes[TO + 1]]));
        let counter = u64::from_be_bytes(bytes[COUNTER..KEY_ID].try_into().map_err(|_| Reject::Malformed)?);
        let key_id = KeyId(bytes[KEY_ID..HEADER].try_into().map_err(|_| Reject::Malformed)?);
        // Checked once the datagram authenticates (a forged `to` is an
        // authentication failure); a misdirected one moves no window.
        let misdirected = to != self.me && to != NodeId::NONE;
        let len = bytes.len();
        if kind == SEALED && self.mode == LinkMode::Encrypt {
            return self.open_sealed(received.into_mut(), sender, counter, key_id, misdirected);
        }
        let bytes = received.freeze();
        match (kind, self.mode) {
            (PLAIN, LinkMode::None) if misdirected => Err(Reject::Misdirected),
            (PLAIN, LinkMode::None) => Ok((sender, bytes.slice(HEADER..), None)),
            (SIGNED, LinkMode::Encrypt | LinkMode::Authenticate) => {
                let Some(public) = self.peers.get(&sender) else { return Err(Reject::UnknownSender) };
                if bytes.len() < HEADER + SIGNATURE {
                    return Err(Reject::Malformed);
                }
                let (signed, sig) = bytes.split_at(bytes.len() - SIGNATURE);
                let sig: &[u8; SIGNATURE] = sig.try_into().map_err(|_| Reject::Malformed)?;
                if public.verify(signed, sig).is_err() {
                    return Err(Reject::BadSignature);
                }
                if misdirected {
                    return Err(Reject::Misdirected);
                }
                if !self.signed_windows.entry(sender).or_default().accept(counter) {
                    return Err(Reject::Replay);
                }
                Ok((sender, bytes.slice(HEADER..bytes.len() - SIGNATURE), None))
            }
            (AUTHENTICATED, LinkMode::Authenticate) => {
                if !self.peers.contains_key(&sender) {
                    return Err(Reject::UnknownSender);
                }
                let Some(key) = self.keys.iter_mut().find(|k| k.id == key_id) else {
                    return Err(Reject::UnknownKey);
                };
                let nonce = Nonce::new(u32::from(sender.0), counter);
                if bytes.len() < HEADER + TAG_LEN {
                    return Err(Reject::Malformed);
                }
                let plain = {
                    let (text, tag) = bytes.split_at(len - TAG_LEN);
                    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| Reject::Malformed)?;
                    self.scratch.clear();
                    key.aead
                        .open_detached(&nonce, text, &mut self.scratch, tag)
                        .map_err(|_| Reject::AuthFailure)?;
                    bytes.slice(HEADER..len - TAG_LEN)
                };
                if misdirected {
                    return Err(Reject::Misdirected);
                }
                // Only after the tag checked: a forged counter moves no window.
                if !key.windows.entry(sender).or_default().accept(counter) {
                    return Err(Reject::Replay);
                }
                Ok((sender, plain, Some(key_id)))
            }
            (PLAIN | SIGNED | SEALED | AUTHENTICATED, _) => Err(Reject::SettingsMismatch),
            _ => Err(Reject::Malformed),
        }
    }

    /// Opens a sealed datagram (mode `encrypt`) in place: the protocol
    /// datagram returned is a slice of `buf`.
    fn open_sealed(
        &mut self,
        mut buf: BytesMut,
        sender: NodeId,
        counter: u64,
        key_id: KeyId,
        misdirected: bool,
    ) -> Result<(NodeId, Bytes, Option<KeyId>), Reject> {
        if !self.peers.contains_key(&sender) {
            return Err(Reject::UnknownSender);
        }
        let Some(key) = self.keys.iter_mut().find(|k| k.id == key_id) else {
            return Err(Reject::UnknownKey);
        };
        let nonce = Nonce::new(u32::from(sender.0), counter);
        if buf.len() < HEADER + TAG_LEN {
            return Err(Reject::Malformed);
        }
        let n = key.aead.open_frame(&nonce, &mut buf, HEADER).map_err(|_| Reject::AuthFailure)?.len();
        if misdirected {
            return Err(Reject::Misdirected);
        }
        // Only after the tag checked: a forged counter moves no window.
        if !key.windows.entry(sender).or_default().accept(counter) {
            return Err(Reject::Replay);
        }
        buf.truncate(HEADER + n);
        // Moves the start; splitting would share (and allocate) instead.
        bytes::Buf::advance(&mut buf, HEADER);
        Ok((sender, buf.freeze(), Some(key_id)))
    }
}

/// A received datagram as the caller hands it over.
pub(crate) enum Received {
    /// Possibly shared: opened in place only if it turns out not to be.
    Shared(Bytes),
    /// The caller's alone.
    Owned(BytesMut),
}

impl Received {
    /// The buffer to open in place (a copy if it is shared).
    fn into_mut(self) -> BytesMut {
        match self {
            Self::Shared(b) => b.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..])),
            Self::Owned(b) => b,
        }
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Shared(b) => b,
            Self::Owned(b) => b,
        }
    }

    /// The buffer, shared.
    pub(crate) fn freeze(self) -> Bytes {
        match self {
            Self::Shared(b) => b,
            Self::Owned(b) => b.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_window_takes_each_counter_once() {
        let mut w = Window::default();
        assert!(w.accept(5));
        assert!(!w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(4000));
        assert!(!w.accept(5), "older than the window");
        assert!(w.accept(3999));
        assert!(w.accept(4000 - WINDOW + 1));
        assert!(!w.accept(4000 - WINDOW));
        assert!(w.accept(10_000));
        assert!(!w.accept(10_000));
    }
}

#[cfg(test)]
mod destination_tests {
    //! Destination binding: the header names the receiver, so a datagram
    //! redirected to another daemon is dropped and counted, in every mode
    //! and for every kind of datagram (plain, signed, sealed,
    //! authenticated), while one for every daemon opens anywhere.

    use super::*;
    use ringfence_crypto::identity::SecretIdentity;

    fn links(mode: LinkMode, n: u16) -> Vec<Link> {
        let secrets: Vec<Arc<SecretIdentity>> =
            (0..n).map(|i| Arc::new(SecretIdentity::from_bytes(&[i as u8 + 1; 32]))).collect();
        let peers: BTreeMap<NodeId, PublicIdentity> =
            (0..n).map(|i| (NodeId(i), secrets[usize::from(i)].public())).collect();
        (0..n)
            .map(|i| {
                let identity = (mode != LinkMode::None).then(|| secrets[usize::from(i)].clone());
                Link::new(NodeId(i), mode, [7; 8], identity, peers.clone(), Backend::Ring, 0)
            })
            .collect()
    }

    /// Daemon 1 sends to daemon 2 (`Some(2)`) or to all; daemons 0 and 2
    /// open it. Returns what each of them made of it.
    fn redirect(mode: LinkMode, keyed: bool, to: Option<NodeId>) -> [Result<Vec<u8>, Reject>; 2] {
        let mut l = links(mode, 3);
        if keyed {
            let key = Key32::from_bytes([9; 32]);
            for link in &mut l {
                let id = link.add_key(&key);
                link.send_with(Some(id));
            }
        }
        let mut stats = SecurityStats::default();
        let sealed = l[1].seal(b"token of ring 7", to, keyed, &mut stats);
        assert_eq!(stats.sealed + stats.signed, u64::from(mode != LinkMode::None));
        [0, 2].map(|r| {
            l[r].open(sealed.clone()).map(|(from, body, _)| {
                assert_eq!(from, NodeId(1));
                body.to_vec()
            })
        })
    }

    /// The receive path's owned buffer opens as the shared one does, in
    /// every mode; sealed, in place: the body is a slice of that buffer.
    #[test]
    fn an_owned_datagram_opens_as_a_shared_one_and_in_place() {
        for (mode, keyed) in [
            (LinkMode::None, false),
            (LinkMode::Encrypt, false),
            (LinkMode::Encrypt, true),
            (LinkMode::Authenticate, true),
        ] {
            let mut l = links(mode, 2);
            if keyed {
                let key = Key32::from_bytes([9; 32]);
                for link in &mut l {
                    let id = link.add_key(&key);
                    link.send_with(Some(id));
                }
            }
            let mut stats = SecurityStats::default();
            let a = l[0].seal(b"packet one", None, keyed, &mut stats);
            let b = l[0].seal(b"packet two", None, keyed, &mut stats);
            let shared = l[1].open(a).unwrap();
            assert_eq!((shared.0, &shared.1[..]), (NodeId(0), &b"packet one"[..]), "{mode:?}");
            // In a block, after another datagram, as the runtime does.
            let mut block = BytesMut::with_capacity(4096);
            block.extend_from_slice(b"other datagram");
            let _other = block.split().freeze();
            block.extend_from_slice(&b);
            let owned = block.split();
            let range = owned.as_ptr() as usize..owned.as_ptr() as usize + owned.len();
            let (from, body, key) = l[1].open_owned(owned).unwrap();
            assert_eq!((from, &body[..], key.is_some()), (NodeId(0), &b"packet two"[..], keyed), "{mode:?}");
            assert!(range.contains(&(body.as_ptr() as usize)), "{mode:?}: a slice of the buffer handed over");
            // A replay of the same datagram, owned, is refused as before.
            let again = l[0].seal(b"x", None, keyed, &mut stats);
            assert!(l[1].open_owned(BytesMut::from(&again[..])).is_ok());
            if mode != LinkMode::None {
                assert_eq!(
                    l[1].open_owned(BytesMut::from(&again[..])).unwrap_err(),
                    Reject::Replay,
                    "{mode:?}"
                );
            }
        }
    }

    #[test]
    fn a_datagram_for_one_daemon_is_refused_by_another_in_every_mode() {
        for (mode, keyed) in [
            (LinkMode::None, false),
            (LinkMode::Encrypt, false),
            (LinkMode::Encrypt, true),
            (LinkMode::Authenticate, false),
            (LinkMode::Authenticate, true),
        ] {
            let [at0, at2] = redirect(mode, keyed, Some(NodeId(2)));
            assert_eq!(at0, Err(Reject::Misdirected), "{mode:?} keyed {keyed}");
            assert_eq!(at2.as_deref(), Ok(&b"token of ring 7"[..]), "{mode:?} keyed {keyed}");
            let [at0, at2] = redirect(mode, keyed, None);
            assert!(at0.is_ok() && at2.is_ok(), "{mode:?} keyed {keyed}: for every daemon");
        }
    }

    #[test]
    fn a_forged_receiver_fails_authentication_and_moves_no_window() {
        for keyed in [false, true] {
            let mut l = links(LinkMode::Encrypt, 3);
            if keyed {
                let key = Key32::from_bytes([9; 32]);
                for link in &mut l {
                    let id = link.add_key(&key);
                    link.send_with(Some(id));
                }
            }
            let sealed = l[1].seal(b"token", Some(NodeId(2)), keyed, &mut SecurityStats::default());
            // Rewritten to name daemon 0: the header is signed or
            // associated data, so the change is caught.
            let mut forged = sealed.to_vec();
            forged[TO..TO + 2].copy_from_slice(&0u16.to_be_bytes());
            let expected = if keyed { Reject::AuthFailure } else { Reject::BadSignature };
            assert_eq!(l[0].open(Bytes::from(forged)).unwrap_err(), expected);
            // The misdirected original did not consume its counter at
            // daemon 0; the right receiver still takes it once.
            assert_eq!(l[0].open(sealed.clone()).unwrap_err(), Reject::Misdirected);
            assert!(l[2].open(sealed.clone()).is_ok());
            assert_eq!(l[2].open(sealed).unwrap_err(), Reject::Replay);
        }
    }

    #[test]
    fn every_rejection_reason_is_counted_under_its_own_name() {
        let mut stats = SecurityStats::default();
        for r in [
            Reject::Malformed,
            Reject::SettingsMismatch,
            Reject::UnknownSender,
            Reject::BadSignature,
            Reject::AuthFailure,
            Reject::UnknownKey,
            Reject::Replay,
            Reject::Misdirected,
        ] {
            stats.count(r);
        }
        let s = serde_json::to_value(&stats).unwrap();
        for name in [
            "malformed",
            "settings_mismatch",
            "unknown_sender",
            "bad_signature",
            "auth_failures",
            "unknown_key",
            "replays",
            "misdirected",
        ] {
            assert_eq!(s[name], 1, "{name}: {s}");
        }
    }
}
