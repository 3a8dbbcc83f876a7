//! The layered architecture's client agreement engine (issue 12; the paper's
//! section 4.2, Secure Spread): the members of a group in a `layered-*` mode
//! agree on each VS view's key among themselves with one of the five
//! protocols of `ringfence_crypto::layered`, so the daemons carry signed
//! protocol messages and ciphertext only, and hold no key of the group.
//!
//! Sans-IO: [`LayeredGroup`] takes the group's regular VS views, its
//! delivered messages and the application's sends, and gives back frames to
//! send and events. [`crate::Client`] drives one per layered group; the unit
//! tests drive several over a fake VS group.
//!
//! ```text
//!  Membership (regular) ──► handle_view ──┐            ┌─► poll_transmit ─► Protocol / Data frames
//!  protocol message ─────► handle_protocol┼─ Agreement ┤
//!  application send ─────► seal_into/hold ┘            └─► poll_event ─► SecureView { epoch, key_id }
//!  sealed message ───────► open
//! ```
//!
//! **Messages.** A protocol message is an ordinary group message, agreed
//! service, never self-discarded, *not* sealed, with message type
//! [`PROTOCOL_MSG_TYPE`]; its payload is the destination member id (`u32`,
//! big-endian, `0xffff_ffff` for everyone) and the signed envelope. Every
//! application message of a layered group is sealed (AES-256-GCM, the
//! integrated modes' format, `ringfence_crypto::group`), so the `sealed`
//! flag tells the two apart; an unsealed message that is not a protocol
//! message is reported, never handed over as protected.
//!
//! **Views.** Member ids are the first four bytes of
//! `HMAC-SHA256("ringfence layered member id v1", private name)`; the
//! members are listed as the daemons list them (ascending private names);
//! the epoch is `ring_seq << 32 | counter` of the view id (both below
//! 2^32, else the view is refused), strictly increasing at every member.
//! The change is computed from the member's previous view, identically at
//! every member: `Leave` (cause leave or disconnect) or `Partition` (cause
//! network) when the view only lost members, `Refresh` for a rekey with the
//! same members, `Join` in `layered-tgdh` when the daemons name the members
//! that joined ([`Membership::joined`]: a view caused by joins only, the
//! others all from the previous view; the sponsored join), `Merge`
//! otherwise, joins in the other four protocols included (they need the
//! newcomers listed last in the previous order, which a newcomer cannot
//! know, so their joins run from scratch).
//!
//! **Sends.** While a run is in progress, once this member answered a flush
//! (the view is ending), or before the first key, the application's sends
//! are held (at most [`MAX_HELD`] messages) and sent, sealed under the next
//! key, when it is agreed. A new view during a run restarts it (a cascaded
//! change); the old run's messages are refused as `WrongEpoch` and ignored.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringfence_crypto::aead::Nonce;
use ringfence_crypto::group::{GroupKey, key_id_of};
use ringfence_crypto::identity::{IdentityError, PublicIdentity, SecretIdentity};
use ringfence_crypto::kdf::hmac_sha256;
use ringfence_crypto::layered::{Agreement, Change, Dest, LayeredError, Protocol, View};
use ringfence_proto::wire::Service;
use ringfence_proto::wire::client::{GroupMode, Membership, ViewCause, ViewId, ViewKind};

/// The message type of the agreement's protocol messages (sent unsealed).
pub const PROTOCOL_MSG_TYPE: u16 = 0xFFF0;
/// The most application messages held per group while a key is agreed.
pub const MAX_HELD: usize = 4096;
/// Keys of earlier views kept to open messages still on their way.
const OLD_KEYS: usize = 2;
const BROADCAST: u32 = u32::MAX;

/// The protocol a layered mode runs, `None` for the other modes.
pub fn protocol_of(mode: GroupMode) -> Option<Protocol> {
    match mode {
        GroupMode::LayeredTgdh => Some(Protocol::Tgdh),
        GroupMode::LayeredGdh => Some(Protocol::Gdh),
        GroupMode::LayeredBd => Some(Protocol::Bd),
        GroupMode::LayeredStr => Some(Protocol::Str),
        GroupMode::LayeredCkd => Some(Protocol::Ckd),
        _ => None,
    }
}

/// The member id of a private name in every layered group.
pub fn member_id(private_name: &str) -> u32 {
    let h = hmac_sha256(b"ringfence layered member id v1", &[private_name.as_bytes()]);
    let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if id == BROADCAST { id - 1 } else { id }
}

/// The client name in a private name `#name#daemon`.
pub fn client_name(private_name: &str) -> Option<&str> {
    let rest = private_name.strip_prefix('#')?;
    let split = rest.rfind('#')?;
    Some(&rest[..split]).filter(|n| !n.is_empty())
}

/// The epoch of a view: `ring_seq << 32 | counter`, if both fit.
pub fn epoch_of(id: ViewId) -> Option<u64> {
    (id.ring_seq < 1 << 32 && id.counter < 1 << 32).then_some(id.ring_seq << 32 | id.counter)
}

/// The members' Ed25519 public keys, by client name (the name a client
/// connects with): given one by one, or read from a directory of
/// `NAME.pub` files (`ringfence keygen client NAME`), where a name not
/// yet known is looked up when a view names it.
#[derive(Clone, Default)]
pub struct PeerKeys {
    keys: HashMap<String, PublicIdentity>,
    dir: Option<PathBuf>,
}

impl fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerKeys").field("known", &self.keys.len()).field("dir", &self.dir).finish()
    }
}

impl PeerKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `NAME.pub` of `dir`, each naming `NAME` (a file naming
    /// another client is refused); names not yet there are looked up later.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let dir = dir.as_ref();
        let mut keys = Self { keys: HashMap::new(), dir: Some(dir.to_path_buf()) };
        let entries =
            std::fs::read_dir(dir).map_err(|source| IdentityError::Io { path: dir.into(), source })?;
        for e in entries {
            let path = e.map_err(|source| IdentityError::Io { path: dir.into(), source })?.path();
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            if path.extension().is_some_and(|x| x == "pub") {
                let entry = ringfence_crypto::identity::load_public(&path)?;
                if entry.name == name {
                    keys.keys.insert(entry.name, entry.key);
                }
            }
        }
        Ok(keys)
    }

    /// Adds (or replaces) the key of client `name`.
    pub fn insert(&mut self, name: &str, key: PublicIdentity) {
        self.keys.insert(name.to_string(), key);
    }

    /// The key of client `name`, reading `name.pub` from the directory if
    /// it is not known yet.
    pub fn get(&mut self, name: &str) -> Option<PublicIdentity> {
        if let Some(k) = self.keys.get(name) {
            return Some(*k);
        }
        let dir = self.dir.as_ref()?;
        if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
            return None;
        }
        let entry = ringfence_crypto::identity::load_public(dir.join(format!("{name}.pub"))).ok()?;
        (entry.name == name).then(|| {
            self.keys.insert(entry.name, entry.key);
            entry.key
        })
    }

    fn known(&self, name: &str) -> Option<PublicIdentity> {
        self.keys.get(name).copied()
    }
}

/// A client's identity in layered groups: its Ed25519 signing key (every
/// protocol message it sends is signed with it) and the public keys of the
/// clients it may meet in them.
pub struct LayeredIdentity {
    pub(crate) secret: SecretIdentity,
    pub(crate) peers: PeerKeys,
}

impl fmt::Debug for LayeredIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayeredIdentity")
            .field("public", &self.secret.public())
            .field("peers", &self.peers)
            .finish()
    }
}

impl LayeredIdentity {
    /// An identity from its parts.
    pub fn new(secret: SecretIdentity, peers: PeerKeys) -> Self {
        Self { secret, peers }
    }

    /// Reads the secret key file `identity` (mode 0600) and the public
    /// keys of `keys_dir`.
    pub fn load(identity: impl AsRef<Path>, keys_dir: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let secret = ringfence_crypto::identity::load_secret(identity)?;
        Ok(Self { secret, peers: PeerKeys::from_dir(keys_dir)? })
    }

    /// The public half of the signing key.
    pub fn public(&self) -> PublicIdentity {
        self.secret.public()
    }
}

/// A frame the engine wants sent to its group.
#[derive(Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A protocol message: agreed, unsealed, [`PROTOCOL_MSG_TYPE`], never
    /// self-discarded.
    Protocol(Vec<u8>),
    /// A held application message, now sealed under the view's key.
    Data {
        /// The service the application asked for.
        service: Service,
        /// The application's message type.
        msg_type: u16,
        /// The sealed payload.
        payload: Vec<u8>,
    },
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protocol(b) => write!(f, "Protocol({} bytes)", b.len()),
            Self::Data { service, msg_type, payload } => {
                write!(f, "Data({service:?}, type {msg_type}, {} bytes)", payload.len())
            }
        }
    }
}

/// The engine's news for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayeredEvent {
    /// The view's key is agreed at this member (and at every member, at the
    /// same message of the agreed order): sends are sealed under it now.
    SecureView {
        /// The group.
        group: String,
        /// The view's epoch (`ring_seq << 32 | counter` of its view id).
        epoch: u64,
        /// The key's public id (the first four bytes of every payload
        /// sealed under it). The key itself is never handed out.
        key_id: u32,
        /// The members, as the view lists them.
        members: Vec<String>,
    },
    /// A protocol message or a view was refused (other than a stale
    /// message of an abandoned run, which is counted only).
    Refused {
        /// The group.
        group: String,
        /// The sender (empty for a refused view).
        sender: String,
        /// Why.
        reason: String,
    },
}

/// Why an application send was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// [`MAX_HELD`] messages already wait for the key.
    #[error("{0} messages already wait for the group key")]
    HeldFull(usize),
    /// This client left the group.
    #[error("this client left the group")]
    Left,
    /// Sealing failed.
    #[error("sealing under the layered key failed")]
    Crypto,
}

/// Counters of one group's engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayeredStats {
    /// Views handed to the agreement.
    pub views: u64,
    /// Keys agreed (secure views).
    pub keys: u64,
    /// Protocol messages taken.
    pub protocol_messages: u64,
    /// Messages of an abandoned run (`WrongEpoch`), ignored.
    pub stale: u64,
    /// Other refused messages (reported as [`LayeredEvent::Refused`]).
    pub refused: u64,
    /// Protocol messages addressed to another member, skipped unread.
    pub skipped: u64,
    /// Application messages held while agreeing.
    pub held: u64,
}

struct Sealer {
    epoch: u64,
    key: Arc<GroupKey>,
    sent: u64,
}

struct Held {
    service: Service,
    msg_type: u16,
    payload: Vec<u8>,
}

/// The agreement engine of one layered group at one member. See the
/// [module documentation](self).
///
/// Calling contract: hand in every regular view of the group
/// ([`handle_view`](Self::handle_view)), every protocol message
/// ([`handle_protocol`](Self::handle_protocol)), in delivery order; call
/// [`flush_ok`](Self::flush_ok) when the application answers the group's
/// flush request, [`leave`](Self::leave) when it leaves. After each call,
/// drain [`poll_transmit`](Self::poll_transmit) (send each frame to the
/// group, in order) and [`poll_event`](Self::poll_event).
pub struct LayeredGroup {
    group: String,
    me_name: String,
    me: u32,
    agreement: Agreement,
    prev: Option<Vec<String>>,
    names: HashMap<u32, String>,
    members: Vec<String>,
    epoch: Option<u64>,
    index: Option<u32>,
    flushing: bool,
    /// The flush requests of the current view.
    flush_asked: Vec<ViewId>,
    left: bool,
    sealer: Option<Sealer>,
    keys: VecDeque<Arc<GroupKey>>,
    held: VecDeque<Held>,
    out: VecDeque<Transmit>,
    events: VecDeque<LayeredEvent>,
    stats: LayeredStats,
}

impl fmt::Debug for LayeredGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayeredGroup")
            .field("group", &self.group)
            .field("me", &self.me_name)
            .field("protocol", &self.agreement.protocol())
            .field("epoch", &self.epoch)
            .field("keyed_epoch", &self.sealer.as_ref().map(|s| s.epoch))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl LayeredGroup {
    /// The engine of `group` for the member named `me` (its private name),
    /// running `protocol`, signing with `identity`, drawing randomness from
    /// `rng` (a CSPRNG; seeded by the caller in tests).
    pub fn new(
        protocol: Protocol,
        group: &str,
        me: &str,
        identity: SecretIdentity,
        rng: Box<dyn rand::CryptoRng + Send>,
    ) -> Result<Self, LayeredError> {
        let id = member_id(me);
        let agreement = Agreement::new(protocol, group.as_bytes(), id, identity, rng)?;
        Ok(Self {
            group: group.to_string(),
            me_name: me.to_string(),
            me: id,
            agreement,
            prev: None,
            names: HashMap::new(),
            members: Vec::new(),
            epoch: None,
            index: None,
            flushing: false,
            flush_asked: Vec::new(),
            left: false,
            sealer: None,
            keys: VecDeque::new(),
            held: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: LayeredStats::default(),
        })
    }

    /// The protocol run.
    pub fn protocol(&self) -> Protocol {
        self.agreement.protocol()
    }

    /// The epoch and key id of the secure view in force, if its key is agreed.
    pub fn secure_epoch(&self) -> Option<(u64, u32)> {
        self.sealer.as_ref().filter(|s| Some(s.epoch) == self.epoch).map(|s| (s.epoch, s.key.id()))
    }

    /// Whether a run is in progress.
    pub fn is_agreeing(&self) -> bool {
        self.agreement.is_agreeing()
    }

    /// The counters.
    pub fn stats(&self) -> LayeredStats {
        self.stats
    }

    /// The next frame to send to the group.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<LayeredEvent> {
        self.events.pop_front()
    }

    /// The daemon asks this member to stop sending in the current view
    /// (`FlushRequest`; its `view_id` names the flush).
    pub fn flush_request(&mut self, flush: ViewId) {
        self.flush_asked.push(flush);
    }

    /// This member answered the flush request `flush`: the view is ending,
    /// so nothing more is sent in it (protocol messages of a run that goes
    /// on are dropped: the next view restarts it; sends are held). An
    /// answer to a request of a view already replaced (a network change
    /// does not wait for flush answers) changes nothing: it must not
    /// silence the next view's run.
    pub fn flush_ok(&mut self, flush: ViewId) {
        if self.flush_asked.contains(&flush) {
            self.flushing = true;
        }
    }

    /// Whether this member left ([`leave`](Self::leave)).
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// This member left: it seals nothing more (it still opens what is on
    /// its way) and its held sends are dropped.
    pub fn leave(&mut self) {
        self.left = true;
        self.held.clear();
        self.out.clear();
    }

    /// A view of the group. Transitional signals change nothing; a regular
    /// view starts a run (restarting one in progress).
    pub fn handle_view(&mut self, m: &Membership, peers: &mut PeerKeys) {
        if m.kind != ViewKind::Regular || self.left {
            return;
        }
        let Some(epoch) = epoch_of(m.view_id) else {
            return self.refuse_view("view id out of the epoch range");
        };
        let Some(index) = m.members.iter().position(|n| *n == self.me_name) else {
            return; // not a view this member is in (it left meanwhile)
        };
        let ids: Vec<u32> = m.members.iter().map(|n| member_id(n)).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return self.refuse_view("two members' ids collide");
        }
        for n in &m.members {
            // Read keys of new names now, so a run never waits on a file.
            if let Some(c) = client_name(n) {
                let _ = peers.get(c);
            }
        }
        let change = decide(self.agreement.protocol(), self.prev.as_deref(), m);
        let view = View { epoch, members: ids.clone(), change };
        self.stats.views += 1;
        self.prev = Some(m.members.clone());
        self.members = m.members.clone();
        self.names = ids.into_iter().zip(m.members.iter().cloned()).collect();
        self.epoch = Some(epoch);
        self.index = u32::try_from(index).ok();
        self.flushing = false;
        self.flush_asked.clear();
        if let Err(e) = self.agreement.handle_view(view) {
            return self.refuse_view(&e.to_string());
        }
        self.after_step();
    }

    fn refuse_view(&mut self, reason: &str) {
        self.stats.refused += 1;
        self.events.push_back(LayeredEvent::Refused {
            group: self.group.clone(),
            sender: String::new(),
            reason: format!("view refused: {reason}"),
        });
    }

    /// A delivered protocol message (unsealed, [`PROTOCOL_MSG_TYPE`]).
    pub fn handle_protocol(&mut self, sender: &str, payload: &[u8], peers: &PeerKeys) {
        if self.left {
            return;
        }
        let Some((dest, envelope)) = payload.split_first_chunk::<4>() else {
            return self.refuse(sender, "protocol message shorter than its destination".into());
        };
        let dest = u32::from_be_bytes(*dest);
        if dest != BROADCAST && dest != self.me {
            self.stats.skipped += 1;
            return;
        }
        let names = &self.names;
        let lookup = |id: u32| names.get(&id).and_then(|n| client_name(n)).and_then(|c| peers.known(c));
        match self.agreement.handle_message(member_id(sender), envelope, &lookup) {
            Ok(()) => {
                self.stats.protocol_messages += 1;
                self.after_step();
            }
            Err(LayeredError::WrongEpoch { .. }) => self.stats.stale += 1,
            Err(e) => {
                self.refuse(sender, e.to_string());
                // A failed run may still have something to say.
                self.after_step();
            }
        }
    }

    fn refuse(&mut self, sender: &str, reason: String) {
        self.stats.refused += 1;
        self.events.push_back(LayeredEvent::Refused {
            group: self.group.clone(),
            sender: sender.to_string(),
            reason,
        });
    }

    /// Sends what the agreement produced and takes a completed key.
    fn after_step(&mut self) {
        while let Some(t) = self.agreement.poll_transmit() {
            if self.flushing {
                continue; // the view is ending: the next one restarts the run
            }
            let dest = match t.dest {
                Dest::All => BROADCAST,
                Dest::Member(m) => m,
            };
            let mut bytes = Vec::with_capacity(4 + t.bytes.len());
            bytes.extend_from_slice(&dest.to_be_bytes());
            bytes.extend_from_slice(&t.bytes);
            self.out.push_back(Transmit::Protocol(bytes));
        }
        let Some((epoch, key)) = self.agreement.key() else { return };
        if self.sealer.as_ref().is_some_and(|s| s.epoch == epoch) {
            return;
        }
        let h = hmac_sha256(key.expose_secret(), &[b"ringfence layered key id v1", &epoch.to_be_bytes()]);
        let key_id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let key = Arc::new(GroupKey::from_bytes(key_id, *key.expose_secret()));
        self.keys.push_front(key.clone());
        self.keys.truncate(OLD_KEYS + 1);
        self.sealer = Some(Sealer { epoch, key, sent: 0 });
        self.stats.keys += 1;
        self.events.push_back(LayeredEvent::SecureView {
            group: self.group.clone(),
            epoch,
            key_id,
            members: self.members.clone(),
        });
        if !self.flushing {
            self.release();
        }
    }

    /// Seals the held sends under the new key.
    fn release(&mut self) {
        let mut buf = Vec::new();
        while let Some(h) = self.held.pop_front() {
            buf.clear();
            match self.seal_into(h.msg_type, &h.payload, &mut buf) {
                Ok(true) => self.out.push_back(Transmit::Data {
                    service: h.service,
                    msg_type: h.msg_type,
                    payload: std::mem::take(&mut buf),
                }),
                _ => {
                    self.held.push_front(h);
                    return;
                }
            }
        }
    }

    /// Whether an application send can be sealed now (else it is held).
    pub fn ready(&self) -> bool {
        !self.left && !self.flushing && self.held.is_empty() && self.secure_epoch().is_some()
    }

    /// Appends `payload` sealed under the view's key to `out` and returns
    /// `true`, or returns `false` (nothing appended) if there is no key to
    /// seal with now: hold it instead ([`hold`](Self::hold)).
    pub fn seal_into(&mut self, msg_type: u16, payload: &[u8], out: &mut Vec<u8>) -> Result<bool, SendError> {
        if self.left {
            return Err(SendError::Left);
        }
        let epoch = self.epoch;
        let (Some(index), Some(s)) = (self.index, self.sealer.as_mut().filter(|s| Some(s.epoch) == epoch))
        else {
            return Ok(false);
        };
        if self.flushing {
            return Ok(false);
        }
        let nonce = Nonce::new(index, s.sent);
        s.sent += 1;
        s.key
            .seal_into(&nonce, self.group.as_bytes(), self.me_name.as_bytes(), msg_type, payload, out)
            .map_err(|_| SendError::Crypto)?;
        Ok(true)
    }

    /// Holds an application send until the next key is agreed.
    pub fn hold(&mut self, service: Service, msg_type: u16, payload: &[u8]) -> Result<(), SendError> {
        if self.left {
            return Err(SendError::Left);
        }
        if self.held.len() >= MAX_HELD {
            return Err(SendError::HeldFull(self.held.len()));
        }
        self.stats.held += 1;
        self.held.push_back(Held { service, msg_type, payload: payload.to_vec() });
        Ok(())
    }

    /// Opens a sealed application message under the key it names (the
    /// current view's, or one of the last two).
    pub fn open(&self, sender: &str, msg_type: u16, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let id = key_id_of(sealed).ok_or("too short to be sealed")?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id() == id)
            .ok_or_else(|| format!("no layered key {id:08x} held (not agreed here, or too old)"))?;
        key.open(self.group.as_bytes(), sender.as_bytes(), msg_type, sealed).map_err(|e| e.to_string())
    }
}

/// The change from `prev` (this member's previous view) to the view `m`,
/// decided alike at every member (module documentation).
fn decide(protocol: Protocol, prev: Option<&[String]>, m: &Membership) -> Change {
    let (members, cause) = (&m.members, m.cause);
    if protocol == Protocol::Tgdh && cause == ViewCause::Join && !m.joined.is_empty() {
        // The daemons name the newcomers (the others held the previous
        // view): an incremental join, decided alike by the newcomers, who
        // have no previous view, and the old members.
        return Change::Join { joined: m.joined_names().map(member_id).collect() };
    }
    let Some(prev) = prev else { return Change::Merge };
    let all_stayed = members.iter().all(|m| prev.contains(m));
    let left: Vec<u32> = prev.iter().filter(|p| !members.contains(p)).map(|p| member_id(p)).collect();
    match cause {
        ViewCause::Leave | ViewCause::Disconnect if all_stayed && !left.is_empty() => Change::Leave { left },
        ViewCause::Network if all_stayed && !left.is_empty() => Change::Partition { left },
        ViewCause::Rekey if all_stayed && left.is_empty() => Change::Refresh,
        _ => Change::Merge,
    }
}

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
