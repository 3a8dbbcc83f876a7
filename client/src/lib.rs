//! `ringfence-client`: the client library of ringfence.
//!
//! A client connects to its local daemon (Unix domain socket, or TCP),
//! introduces itself by name, joins light-weight groups and multicasts to
//! them with one of six services. Every daemon computes the same group views,
//! and every member receives a group's messages in the same total order.
//!
//! ```text
//!  Client::connect ──Hello──► daemon ──Welcome (private name)──► Client
//!  join / leave / multicast ──frames──► daemon ──► ring (total order)
//!  receive() / poll() ◄──Message / Membership frames◄── daemon
//! ```
//!
//! Over TCP, [`Client::connect_with`] runs TLS (rustls, `ring` provider)
//! and authenticates with a client certificate or a pre-shared token
//! ([`ConnectOptions`]); over the Unix socket the daemon reads the peer's
//! credentials from the kernel.
//!
//! The wire format is `ringfence_proto::wire::client` (documented in
//! `docs/client-protocol.md`). This crate does blocking I/O on one stream and
//! allocates nothing per received message in steady state: a
//! [`Message`]'s sender ([`Name`]), groups ([`GroupNames`]) and payload
//! are slices of the buffer it was read into.
//!
//! **Event loops.** [`Client::receive`] blocks; [`Client::poll`] never does.
//! The client is [`AsFd`]: register its socket with `poll(2)`, epoll or mio,
//! and when it is readable call [`Client::poll`] until it returns
//! `Ok(None)` (the library reads in batches, so one readable socket may hold
//! many events). With [`Client::set_exact_reads`] the library never reads
//! past the end of the current frame, so the socket is readable exactly when
//! an event waits (the C library uses this, as Spread's mailbox does). With
//! the `tokio` feature, `AsyncClient` receives with `.await`.
//!
//! ```no_run
//! use ringfence_client::{Address, Client, Event, Service};
//! let mut c = Client::connect(&Address::Unix("/tmp/ringfence/d0/client.sock".into()), "alice")?;
//! c.join("chat")?;
//! c.multicast(Service::Agreed, &["chat"], 0, b"hello")?;
//! loop {
//!     match c.receive()? {
//!         Event::Message(m) => println!("{}: {:?}", m.sender, m.payload),
//!         Event::Membership(v) => println!("{} now {:?}", v.group, v.members),
//!         _ => {}
//!     }
//! }
//! # Ok::<(), ringfence_client::ClientError>(())
//! ```

#[cfg(feature = "tokio")]
mod async_client;
pub mod layered;
#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;

use layered::{LayeredEvent, LayeredGroup, Transmit as LayeredTransmit};
pub use layered::{LayeredIdentity, PeerKeys};
use rand::SeedableRng;
use ringfence_crypto::aead::Nonce;
pub use ringfence_crypto::group::GroupKey;
pub use ringfence_proto::wire::Service;
pub use ringfence_proto::wire::client::{
    AdminRequest, GroupMode, GroupNames, GroupNamesIter, KeyLoss, Membership, Message, Name, ViewCause,
    ViewId, ViewKind,
};
use ringfence_proto::wire::client::{
    Auth, ByeReason, ClientDecodeError, ClientEncodeError, ClientFrame, DaemonFrame, ErrorCode, Frame,
    FrameDecoder, Hello, Limits, Multicast, RefuseCode, Welcome, encode_multicast,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, StreamOwned};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A Unix domain socket (local clients; authenticated by peer credentials).
    Unix(PathBuf),
    /// A TCP address (remote clients).
    Tcp(SocketAddr),
}

/// How to connect: TLS and credentials for TCP. The default (no TLS, no
/// token) suits the Unix socket only.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Run TLS over TCP (ignored for a Unix socket).
    pub tls: Option<TlsOptions>,
    /// A pre-shared token to authenticate with (sent inside TLS if `tls` is
    /// set; in the clear over plain TCP, which the daemon accepts only with
    /// `require_tls = false`). Never printed by `Debug`.
    pub token: Option<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.token.as_ref().map(|t| format!("<{} bytes>", t.len()));
        f.debug_struct("ConnectOptions").field("tls", &self.tls).field("token", &token).finish()
    }
}

/// TLS settings of a TCP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM CA certificate(s) the daemon's certificate must chain to.
    pub ca_cert: PathBuf,
    /// A PEM client certificate (chain) and its private key, to
    /// authenticate with (`Hello.auth = Tls`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name the daemon's certificate must carry (a DNS name or an IP
    /// address in its subject alternative names).
    pub server_name: String,
}

impl TlsOptions {
    /// TLS to a daemon whose certificate chains to `ca_cert` and names
    /// `server_name`; no client certificate.
    pub fn new(ca_cert: impl Into<PathBuf>, server_name: impl Into<String>) -> Self {
        Self { ca_cert: ca_cert.into(), client_cert: None, server_name: server_name.into() }
    }

    /// Adds a client certificate and its key.
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The rustls client configuration (ring provider): the CA, and the
    /// client certificate if any.
    fn config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let setup = |what: &str, e: &dyn std::fmt::Display| ClientError::TlsSetup(format!("{what}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&self.ca_cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| setup(&format!("CA certificate {}", self.ca_cert.display()), &e))?;
        if cas.is_empty() {
            return Err(ClientError::TlsSetup(format!("no PEM certificate in {}", self.ca_cert.display())));
        }
        for ca in cas {
            roots.add(ca).map_err(|e| setup(&format!("CA certificate {}", self.ca_cert.display()), &e))?;
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| setup("TLS setup", &e))?
                .with_root_certificates(roots);
        Ok(match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| setup(&format!("client certificate {}", cert.display()), &e))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| setup(&format!("client key {}", key.display()), &e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| setup("client certificate", &e))?
            }
        })
    }
}

/// What the daemon tells the client.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message to a group this client is in (or to its private group).
    Message(Message),
    /// A new view of a group this client is in.
    Membership(Membership),
    /// A virtual-synchrony group is changing: answer with
    /// [`Client::flush_ok`] once done sending in the current view.
    FlushRequest {
        /// The group.
        group: String,
        /// The view being closed.
        view_id: ViewId,
    },
    /// A message of a keyed group that could not be opened: by the daemon
    /// (`optimized-evs`: its key expired or was never known there) or by
    /// this library (no key, or it does not open). Reported, never dropped.
    Undecipherable {
        /// The sender's private name.
        sender: String,
        /// The group.
        group: String,
        /// The application's message type.
        msg_type: u16,
        /// The key id the message named.
        key_id: u32,
        /// Why.
        reason: String,
    },
    /// A layered group's key is agreed for its current view: the members'
    /// sends are sealed under it from now on (those held meanwhile go out
    /// now). Follows the group's `Membership` event; every member gets it
    /// at the same place in the agreed order. The key is never handed out.
    SecureView {
        /// The group.
        group: String,
        /// The view's epoch (`ring_seq << 32 | counter` of its view id).
        epoch: u64,
        /// The key's public id.
        key_id: u32,
        /// The members' private names.
        members: Vec<String>,
    },
    /// A layered group's protocol message or view was refused (a bad
    /// signature, an unknown signer, a broken protocol run, ...).
    AgreementRefused {
        /// The group.
        group: String,
        /// The sender (empty for a view).
        sender: String,
        /// Why.
        reason: String,
    },
    /// A request was refused (not a member, denied, too large, ...).
    Error {
        /// Why.
        code: ErrorCode,
        /// Details.
        text: String,
    },
}

/// A daemon's answer to an operator request ([`Client::admin`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminReply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// The status as a JSON object (a status request), or what was done
    /// or why not.
    pub text: String,
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection failed or broke.
    #[error("connection: {0}")]
    Io(io::Error),
    /// No connection could be made to the daemon's address.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The socket path or TCP address.
        address: String,
        /// Why.
        source: io::Error,
    },
    /// The TLS handshake failed (the daemon's certificate is not trusted,
    /// or the daemon rejected ours), or a TLS record was bad.
    #[error("TLS handshake with the daemon failed: {0}")]
    Tls(rustls::Error),
    /// The TLS options cannot be used (unreadable CA, certificate or key).
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// The options cannot be used on this address (e.g. plain TCP with no
    /// credential).
    #[error("cannot connect this way: {0}")]
    Options(String),
    /// The daemon refused the connection.
    #[error("refused by the daemon ({code:?}): {text}")]
    Refused {
        /// Why.
        code: RefuseCode,
        /// Details.
        text: String,
    },
    /// The daemon closed the session, saying why (e.g. a slow consumer).
    #[error("disconnected by the daemon ({reason:?}): {text}")]
    Disconnected {
        /// Why.
        reason: ByeReason,
        /// Details.
        text: String,
    },
    /// The daemon sent something that is not the protocol.
    #[error("protocol error from the daemon: {0}")]
    Protocol(#[from] ClientDecodeError),
    /// The call's arguments cannot be sent (name or payload too long, ...).
    #[error("invalid request: {0}")]
    Invalid(#[from] ClientEncodeError),
    /// The daemon closed the connection without a word.
    #[error("the daemon closed the connection")]
    Closed,
    /// A payload could not be sealed under the group's view key.
    #[error("sealing under the group key failed")]
    Crypto,
    /// A layered group cannot take the request (no client identity set,
    /// several destinations, too many sends held while agreeing, ...).
    #[error("layered group: {0}")]
    Layered(String),
}

impl Keys {
    /// Takes the key (if any) of a regular view of a group this client is in.
    fn learn(&mut self, me: &str, m: &Membership) {
        if m.kind != ViewKind::Regular {
            return;
        }
        let index = m.members.iter().position(|x| x == me).and_then(|i| u32::try_from(i).ok());
        let key = m.key.as_ref().map(|(id, k)| Arc::new(GroupKey::new(*id, k.clone())));
        self.groups.insert(m.group.clone(), ViewKeyState { mode: m.mode, key, index, sent: 0 });
    }
}

/// An I/O error, or the TLS error inside it (rustls reports those as
/// `InvalidData` I/O errors).
impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(t) => Self::Tls(t.clone()),
            None => Self::Io(e),
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.write_all(buf),
            Self::Tcp(s) => s.write_all(buf),
            Self::Tls(s) => s.write_all(buf).and_then(|()| s.flush()),
        }
    }

    /// Reads what is there without waiting: `WouldBlock` if nothing is.
    /// A plain socket is asked with `MSG_DONTWAIT` (no mode change); TLS
    /// switches its socket to non-blocking for the read.
    fn read_now(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, recv};
        match self {
            Self::Unix(s) => Ok(recv(s.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)?),
            Self::Tcp(s) => Ok(recv(s.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)?),
            Self::Tls(s) => {
                s.sock.set_nonblocking(true)?;
                let r = s.read(buf);
                s.sock.set_nonblocking(false)?;
                r
            }
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Unix(s) => s.as_fd(),
            Self::Tcp(s) => s.as_fd(),
            Self::Tls(s) => s.sock.as_fd(),
        }
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Self::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Self::Tls(s) => s.sock.shutdown(std::net::Shutdown::Both),
        }
    }
}

/// A connection to a daemon. Not thread-safe by itself; one per thread, or
/// wrap it in a mutex.
pub struct Client {
    stream: Stream,
    decoder: FrameDecoder<DaemonFrame>,
    limits: Limits,
    out: Vec<u8>,
    welcome: Welcome,
    buf: Vec<u8>,
    self_discard: bool,
    keys: Keys,
    /// Read no further than the end of the current frame.
    exact_reads: bool,
    /// The tag of the last operator request.
    admin_tag: u32,
    /// Boxed: most clients have no layered group.
    layered: Box<Layered>,
}

/// The layered groups of this client: one agreement engine each.
#[derive(Default)]
struct Layered {
    identity: Option<LayeredIdentity>,
    groups: HashMap<String, LayeredGroup>,
    /// Events the engines produced, handed out before the next frame's.
    pending: VecDeque<Event>,
}

/// The view keys this client holds, by group (keyed modes).
#[derive(Default)]
struct Keys {
    groups: HashMap<String, ViewKeyState>,
    /// Open received payloads (on by default; off to see them sealed).
    raw: bool,
}

struct ViewKeyState {
    mode: GroupMode,
    key: Option<Arc<GroupKey>>,
    /// This client's index in the view: the sender id of its nonces;
    /// `None` (no sealing) once it left, or if it is not in the list.
    index: Option<u32>,
    /// Messages sealed under `key` so far: the nonce counter.
    sent: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("private_name", &self.welcome.private_name).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and introduces this client as `name` (1 to 32 printable
    /// ASCII bytes) with the default options: local clients are
    /// authenticated by their Unix peer credentials. For TCP, see
    /// [`Client::connect_with`].
    pub fn connect(addr: &Address, name: &str) -> Result<Self, ClientError> {
        Self::connect_with(addr, name, &ConnectOptions::default())
    }

    /// Connects with `opts`: TLS over TCP if asked, and authentication by
    /// token (if given), else by client certificate (TLS), else by Unix
    /// peer credentials. Plain TCP needs a token. A refusal is
    /// [`ClientError::Refused`] with the daemon's text; a failed TLS
    /// handshake is [`ClientError::Tls`].
    pub fn connect_with(addr: &Address, name: &str, opts: &ConnectOptions) -> Result<Self, ClientError> {
        let (stream, auth) = open(addr, opts)?;
        let limits = Limits::default();
        let mut c = Self {
            stream,
            decoder: FrameDecoder::new(limits),
            limits,
            out: Vec::with_capacity(64 * 1024),
            welcome: Welcome {
                version: 0,
                daemon_id: 0,
                private_name: String::new(),
                max_frame_len: 0,
                max_payload: 0,
                max_groups: 0,
            },
            buf: vec![0u8; 64 * 1024],
            self_discard: false,
            keys: Keys::default(),
            exact_reads: false,
            admin_tag: 0,
            layered: Box::default(),
        };
        if let Err(e) = c.send(&ClientFrame::Hello(Hello::new(name, auth))) {
            // A daemon that rejected our certificate after the handshake
            // may have closed already: its alert says why.
            return Err(match c.next_frame(true) {
                Err(t @ ClientError::Tls(_)) => t,
                _ => e,
            });
        }
        match c.next_frame(true)? {
            Some(DaemonFrame::Welcome(w)) => c.welcome = w,
            Some(DaemonFrame::Refused { code, text }) => return Err(ClientError::Refused { code, text }),
            Some(DaemonFrame::Bye { reason, text }) => {
                return Err(ClientError::Disconnected { reason, text });
            }
            _ => return Err(ClientError::Closed),
        }
        Ok(c)
    }

    /// Whether the connection runs TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The name the daemon gave this client; messages to it reach only this
    /// client (its private group).
    pub fn private_name(&self) -> &str {
        &self.welcome.private_name
    }

    /// The id of the daemon this client is connected to.
    pub fn daemon_id(&self) -> u16 {
        self.welcome.daemon_id
    }

    fn send(&mut self, f: &ClientFrame) -> Result<(), ClientError> {
        self.out.clear();
        f.encode(&mut self.out, &self.limits)?;
        self.stream.write_all(&self.out)?;
        Ok(())
    }

    /// With `true`, the library never reads past the end of the frame it is
    /// decoding (two reads per event instead of one per batch), so the
    /// socket is readable exactly when the next event has not been read yet:
    /// an event loop may wait for readability after every event, as Spread
    /// applications do with their mailbox. Plain sockets only: over TLS the
    /// TLS layer reads whole records, so drain [`Client::poll`] as usual.
    /// Off by default.
    pub fn set_exact_reads(&mut self, on: bool) {
        self.exact_reads = on;
    }

    /// Says goodbye (best effort) and shuts the connection down in both
    /// directions, keeping the client: a thread blocked in
    /// [`Client::receive`] or in `poll(2)` on the socket wakes and sees the
    /// connection closed. The socket itself is closed when the client is
    /// dropped. [`Client::disconnect`] is the same for a client used by one
    /// thread.
    pub fn close(&mut self) -> Result<(), ClientError> {
        let bye = self.send(&ClientFrame::Bye);
        self.stream.shutdown()?;
        bye
    }

    /// With `true`, this client's own messages (sent with
    /// [`Client::multicast`] and [`Client::multicast_batch`]) are not
    /// delivered back to it. Off by default.
    pub fn set_self_discard(&mut self, on: bool) {
        self.self_discard = on;
    }

    /// Joins a group.
    pub fn join(&mut self, group: &str) -> Result<(), ClientError> {
        self.send(&ClientFrame::Join { group: group.to_string() })
    }

    /// Joins a closed virtual-synchrony group: only members may send to it,
    /// and every view change goes through a flush ([`Event::FlushRequest`],
    /// answered with [`Client::flush_ok`]), so every message is delivered in
    /// the view it was sent in.
    pub fn join_vs(&mut self, group: &str) -> Result<(), ClientError> {
        self.send(&ClientFrame::JoinVs { group: group.to_string() })
    }

    /// Joins a group stating its protection mode, which must be the mode
    /// the daemons' policy gives it (else [`Event::Error`] with
    /// `ModeMismatch`). `vs` asks for a closed virtual-synchrony group;
    /// `integrated-vs` is always VS and `optimized-evs` always open. In keyed
    /// modes each view arrives with its key, and this client seals what it
    /// sends to the group and opens what it receives, by itself.
    ///
    /// In a layered mode (`layered-tgdh`, ...) the group is VS and its
    /// members agree on each view's key among themselves
    /// ([`layered`](crate::layered)); this needs
    /// [`Client::set_layered_identity`] first. Each view then arrives as a
    /// `Membership` event and, once the key is agreed, an
    /// [`Event::SecureView`]; sends made before it are held and sent then.
    ///
    /// A layered group this connection left cannot be joined again on it
    /// (`ClientError::Layered`; connect again): the daemons may resolve the
    /// leave and the new join in one view, in which the other members take
    /// the new engine for the old one (found by the simulator, seed 884;
    /// docs/security.md, "Layered groups, end to end").
    pub fn join_with(&mut self, group: &str, vs: bool, mode: GroupMode) -> Result<(), ClientError> {
        if self.layered.groups.get(group).is_some_and(LayeredGroup::has_left) {
            return Err(ClientError::Layered(format!(
                "this connection left layered group {group}: connect again to rejoin it"
            )));
        }
        if let Some(protocol) = layered::protocol_of(mode) {
            let identity = self.layered.identity.as_ref().ok_or_else(|| {
                ClientError::Layered(format!(
                    "mode {mode} needs a client identity (Client::set_layered_identity; `--identity` and \
                     `--keys` in the tools)"
                ))
            })?;
            let secret =
                ringfence_crypto::identity::SecretIdentity::from_bytes(identity.secret.expose_secret());
            let rng = Box::new(rand_chacha::ChaCha20Rng::from_os_rng());
            let engine = LayeredGroup::new(protocol, group, &self.welcome.private_name, secret, rng)
                .map_err(|e| ClientError::Layered(e.to_string()))?;
            self.layered.groups.insert(group.to_string(), engine);
        }
        self.send(&ClientFrame::JoinMode { group: group.to_string(), vs, mode })
    }

    /// Leaves a group. The last view's key is kept (messages of that view
    /// may still arrive until the leave is ordered) and dropped, zeroized,
    /// when the client joins the group again or disconnects; it never opens
    /// a later view's messages.
    pub fn leave(&mut self, group: &str) -> Result<(), ClientError> {
        if let Some(k) = self.keys.groups.get_mut(group) {
            k.index = None; // opens what is still on its way, seals nothing more
        }
        if let Some(l) = self.layered.groups.get_mut(group) {
            l.leave();
        }
        self.send(&ClientFrame::Leave { group: group.to_string() })
    }

    /// The key of the view of `group` this client holds (keyed modes). Its
    /// `Debug` shows only the key id.
    pub fn view_key(&self, group: &str) -> Option<&GroupKey> {
        self.keys.groups.get(group)?.key.as_deref()
    }

    /// Sets this client's identity for layered groups: its signing key and
    /// the public keys of the clients it may meet in them (by client name).
    pub fn set_layered_identity(&mut self, identity: LayeredIdentity) {
        self.layered.identity = Some(identity);
    }

    /// The epoch and key id of a layered group's secure view in force
    /// (`None` while its key is being agreed, or for another group).
    pub fn layered_view(&self, group: &str) -> Option<(u64, u32)> {
        self.layered.groups.get(group)?.secure_epoch()
    }

    /// A layered group's engine counters.
    pub fn layered_stats(&self, group: &str) -> Option<layered::LayeredStats> {
        self.layered.groups.get(group).map(LayeredGroup::stats)
    }

    /// With `true`, payloads of keyed groups are handed over sealed, as the
    /// daemon delivered them (for tools and tests); off by default.
    pub fn set_raw_payloads(&mut self, on: bool) {
        self.keys.raw = on;
    }

    /// Multicasts `payload` to one or more groups (a group need not be joined
    /// to send to it, unless it is a closed virtual-synchrony group).
    pub fn multicast(
        &mut self,
        service: Service,
        groups: &[&str],
        msg_type: u16,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        self.multicast_batch(service, groups, msg_type, std::iter::once(payload))
    }

    /// Multicasts many messages with one write (the daemon reads them as one
    /// batch).
    pub fn multicast_batch<'a>(
        &mut self,
        service: Service,
        groups: &[&str],
        msg_type: u16,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), ClientError> {
        self.out.clear();
        if groups.iter().any(|g| self.layered.groups.contains_key(*g)) {
            return self.multicast_layered(service, groups, msg_type, payloads);
        }
        // A keyed group this client holds a key of: seal under it (a
        // message to a keyed group has that group as its only destination).
        let mut key = match groups {
            [g] => self.keys.groups.get_mut(*g).filter(|k| k.mode.keyed() && k.key.is_some()),
            _ => None,
        };
        let sender = self.welcome.private_name.as_bytes();
        let mut sealed_buf = Vec::new();
        for p in payloads {
            let (sealed, body) = match key.as_deref_mut() {
                Some(ViewKeyState { key: Some(k), index: Some(index), sent, .. }) => {
                    let nonce = Nonce::new(*index, *sent);
                    *sent += 1;
                    sealed_buf.clear();
                    k.seal_into(&nonce, groups[0].as_bytes(), sender, msg_type, p, &mut sealed_buf)
                        .map_err(|_| ClientError::Crypto)?;
                    (true, &sealed_buf[..])
                }
                _ => (false, p),
            };
            encode_multicast(
                &mut self.out,
                &self.limits,
                service,
                msg_type,
                self.self_discard,
                sealed,
                groups.iter().copied(),
                body,
            )?;
        }
        self.stream.write_all(&self.out)?;
        Ok(())
    }

    /// A send to a layered group: sealed under its key, or held until the
    /// key is agreed.
    fn multicast_layered<'a>(
        &mut self,
        service: Service,
        groups: &[&str],
        msg_type: u16,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), ClientError> {
        let [group] = groups else {
            return Err(ClientError::Layered(
                "a message to a layered group has that group as its only destination".into(),
            ));
        };
        let engine = self.layered.groups.get_mut(*group).expect("checked by the caller");
        let mut sealed_buf = Vec::new();
        for p in payloads {
            sealed_buf.clear();
            let sealed = engine.ready()
                && engine
                    .seal_into(msg_type, p, &mut sealed_buf)
                    .map_err(|e| ClientError::Layered(e.to_string()))?;
            if !sealed {
                engine.hold(service, msg_type, p).map_err(|e| ClientError::Layered(e.to_string()))?;
                continue;
            }
            encode_multicast(
                &mut self.out,
                &self.limits,
                service,
                msg_type,
                self.self_discard,
                true,
                groups.iter().copied(),
                &sealed_buf,
            )?;
        }
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
        }
        Ok(())
    }

    /// Sends what the layered engine of `group` wants sent and moves its
    /// events to the pending queue.
    fn drive_layered(&mut self, group: &str) -> Result<(), ClientError> {
        let Some(engine) = self.layered.groups.get_mut(group) else { return Ok(()) };
        self.out.clear();
        while let Some(t) = engine.poll_transmit() {
            let (service, msg_type, self_discard, sealed, payload) = match &t {
                LayeredTransmit::Protocol(b) => {
                    (Service::Agreed, layered::PROTOCOL_MSG_TYPE, false, false, b)
                }
                LayeredTransmit::Data { service, msg_type, payload } => {
                    (*service, *msg_type, self.self_discard, true, payload)
                }
            };
            encode_multicast(
                &mut self.out,
                &self.limits,
                service,
                msg_type,
                self_discard,
                sealed,
                [group],
                payload,
            )?;
        }
        while let Some(e) = engine.poll_event() {
            self.layered.pending.push_back(match e {
                LayeredEvent::SecureView { group, epoch, key_id, members } => {
                    Event::SecureView { group, epoch, key_id, members }
                }
                LayeredEvent::Refused { group, sender, reason } => {
                    Event::AgreementRefused { group, sender, reason }
                }
            });
        }
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
        }
        Ok(())
    }

    /// Multicasts with every option: self-discard keeps the message from
    /// being delivered back to this client.
    pub fn multicast_with(&mut self, m: Multicast) -> Result<(), ClientError> {
        self.send(&ClientFrame::Multicast(m))
    }

    /// Acknowledges a flush request of a virtual-synchrony group.
    pub fn flush_ok(&mut self, group: &str, view_id: ViewId) -> Result<(), ClientError> {
        if let Some(l) = self.layered.groups.get_mut(group) {
            l.flush_ok(view_id);
        }
        self.send(&ClientFrame::FlushOk { group: group.to_string(), view_id })
    }

    /// Waits for the next event.
    pub fn receive(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(e) = self.next_event(true)? {
                return Ok(e);
            }
        }
    }

    /// The next event if one is ready, without waiting: the non-blocking
    /// receive. `Ok(None)` means the socket had nothing more to read, so an
    /// event loop may wait for the socket ([`AsFd`]) to become readable;
    /// while this returns events, keep calling it (events read in one batch
    /// wait in the library, where `poll(2)` cannot see them).
    pub fn poll(&mut self) -> Result<Option<Event>, ClientError> {
        self.next_event(false)
    }

    /// Sends an operator request (`ringfence ctl`, `ringfence monitor`) and
    /// waits for its answer. Meant for a connection of its own: events that
    /// arrive meanwhile are dropped. A client the daemon does not count as
    /// an operator (`[clients] admin`) gets `ok: false` with the reason.
    pub fn admin(&mut self, request: AdminRequest) -> Result<AdminReply, ClientError> {
        if self.welcome.version < 3 {
            return Err(ClientError::Options(format!(
                "the daemon speaks client protocol version {}, which has no operator requests (version 3 \
                 has): upgrade it",
                self.welcome.version
            )));
        }
        self.admin_tag = self.admin_tag.wrapping_add(1);
        let tag = self.admin_tag;
        self.send(&ClientFrame::Admin { tag, request })?;
        loop {
            match self.next_frame(true)? {
                Some(DaemonFrame::AdminReply { tag: t, ok, text }) if t == tag => {
                    return Ok(AdminReply { ok, text });
                }
                Some(DaemonFrame::Error { code: ErrorCode::Denied, text }) => {
                    return Ok(AdminReply { ok: false, text });
                }
                Some(DaemonFrame::Bye { reason, text }) => {
                    return Err(ClientError::Disconnected { reason, text });
                }
                _ => {}
            }
        }
    }

    /// Says goodbye and closes the connection.
    pub fn disconnect(mut self) -> Result<(), ClientError> {
        self.send(&ClientFrame::Bye)
    }

    fn next_event(&mut self, block: bool) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(e) = self.layered.pending.pop_front() {
                return Ok(Some(e));
            }
            let frame = self.next_frame(block)?;
            // A layered group's protocol message is the engine's, not the application's.
            if let Some(DaemonFrame::Message(m)) = &frame {
                if let Some(g) = m.groups.single() {
                    if !m.sealed && m.msg_type == layered::PROTOCOL_MSG_TYPE && !self.keys.raw {
                        if let Some(l) = self.layered.groups.get_mut(g) {
                            let peers = &self.layered.identity.as_ref().expect("set before joining").peers;
                            l.handle_protocol(&m.sender, &m.payload, peers);
                            self.drive_layered(g)?;
                            continue;
                        }
                    }
                }
            }
            if let Some(DaemonFrame::Membership(m)) = &frame {
                if let Some(l) = self.layered.groups.get_mut(&m.group) {
                    let peers = &mut self.layered.identity.as_mut().expect("set before joining").peers;
                    l.handle_view(m, peers);
                    let g = m.group.clone();
                    self.drive_layered(&g)?;
                }
            }
            return self.event_of(frame);
        }
    }

    fn event_of(&mut self, frame: Option<DaemonFrame>) -> Result<Option<Event>, ClientError> {
        Ok(match frame {
            None => None,
            Some(DaemonFrame::Message(m)) => Some(self.open(m)),
            Some(DaemonFrame::Membership(m)) => {
                self.keys.learn(&self.welcome.private_name, &m);
                Some(Event::Membership(m))
            }
            Some(DaemonFrame::Undecipherable { sender, group, msg_type, key_id, reason }) => {
                Some(Event::Undecipherable {
                    sender,
                    group,
                    msg_type,
                    key_id,
                    reason: reason.name().to_string(),
                })
            }
            Some(DaemonFrame::FlushRequest { group, view_id }) => {
                if let Some(l) = self.layered.groups.get_mut(&group) {
                    l.flush_request(view_id);
                }
                Some(Event::FlushRequest { group, view_id })
            }
            Some(DaemonFrame::Error { code, text }) => Some(Event::Error { code, text }),
            Some(DaemonFrame::Bye { reason, text }) => {
                return Err(ClientError::Disconnected { reason, text });
            }
            // An answer to an operator request nobody waits for.
            Some(DaemonFrame::AdminReply { .. }) => None,
            Some(DaemonFrame::Welcome(_) | DaemonFrame::Refused { .. }) => {
                return Err(ClientError::Protocol(ClientDecodeError::BadValue(
                    "frame type after the handshake",
                )));
            }
        })
    }

    /// Opens a sealed message of a keyed group under the view key held.
    fn open(&self, mut m: Message) -> Event {
        if self.keys.raw {
            return Event::Message(m);
        }
        let undecipherable = |m: &Message, key_id: u32, reason: String| Event::Undecipherable {
            sender: m.sender.to_string(),
            group: m.groups.first().unwrap_or_default().to_string(),
            msg_type: m.msg_type,
            key_id,
            reason,
        };
        let single = m.groups.single();
        if let Some(l) = single.and_then(|g| self.layered.groups.get(g)) {
            let opened = if m.sealed {
                l.open(&m.sender, m.msg_type, &m.payload)
            } else {
                Err("not sealed, in a layered group".into())
            };
            return match opened {
                Ok(plain) => {
                    m.payload = plain.into();
                    m.sealed = false;
                    Event::Message(m)
                }
                Err(reason) => {
                    undecipherable(&m, ringfence_crypto::group::key_id_of(&m.payload).unwrap_or(0), reason)
                }
            };
        }
        let keys = single.and_then(|g| self.keys.groups.get(g));
        if !m.sealed {
            // Every message of a keyed group comes sealed; one that does not
            // was not made by the daemons' rules: never hand it over as if
            // it had been protected.
            if !keys.is_some_and(|k| k.mode.keyed()) {
                return Event::Message(m);
            }
            return undecipherable(&m, 0, "not sealed, in a keyed group".into());
        }
        let key_id = ringfence_crypto::group::key_id_of(&m.payload).unwrap_or(0);
        let opened = match (single, keys.and_then(|k| k.key.as_ref())) {
            (Some(g), Some(k)) => {
                k.open(g.as_bytes(), m.sender.as_bytes(), m.msg_type, &m.payload).map_err(|e| e.to_string())
            }
            _ => Err("this client holds no key of the group".to_string()),
        };
        match opened {
            Ok(plain) => {
                m.payload = plain.into();
                m.sealed = false;
                Event::Message(m)
            }
            Err(reason) => undecipherable(&m, key_id, reason),
        }
    }

    fn next_frame(&mut self, block: bool) -> Result<Option<DaemonFrame>, ClientError> {
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                return Ok(Some(f));
            }
            let want = if self.exact_reads && !self.is_tls() {
                self.decoder.missing().clamp(1, self.buf.len())
            } else {
                self.buf.len()
            };
            let buf = &mut self.buf[..want];
            let r = if block { self.stream.read(buf) } else { self.stream.read_now(buf) };
            match r {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.decoder.push(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The socket to the daemon (for TLS, the TCP socket under it), to wait on
/// with `poll(2)`, epoll or mio. Read and write it only through the client.
impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.fd()
    }
}

impl AsRawFd for Client {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.fd().as_raw_fd()
    }
}

/// Opens the stream `opts` asks for (the TLS handshake included) and picks
/// the authentication `Hello` carries.
fn open(addr: &Address, opts: &ConnectOptions) -> Result<(Stream, Auth), ClientError> {
    let token = opts.token.as_ref().map(|t| Auth::Token(bytes::Bytes::from(t.clone().into_bytes())));
    match addr {
        Address::Unix(p) => {
            let s = UnixStream::connect(p)
                .map_err(|source| ClientError::Connect { address: p.display().to_string(), source })?;
            Ok((Stream::Unix(s), token.unwrap_or(Auth::PeerCredentials)))
        }
        Address::Tcp(a) => {
            let s = TcpStream::connect(a)
                .map_err(|source| ClientError::Connect { address: a.to_string(), source })?;
            s.set_nodelay(true)?;
            let Some(tls) = &opts.tls else {
                let auth = token.ok_or_else(|| {
                    ClientError::Options(
                        "a TCP connection needs TLS (a client certificate) or a token".into(),
                    )
                })?;
                return Ok((Stream::Tcp(s), auth));
            };
            // Without a client certificate, `Tls` makes the daemon refuse
            // with a clear text.
            let auth = token.unwrap_or(Auth::Tls);
            let name = ServerName::try_from(tls.server_name.clone())
                .map_err(|e| ClientError::TlsSetup(format!("server name `{}`: {e}", tls.server_name)))?;
            let conn = ClientConnection::new(Arc::new(tls.config()?), name).map_err(ClientError::Tls)?;
            let mut stream = StreamOwned::new(conn, s);
            while stream.conn.is_handshaking() {
                stream.conn.complete_io(&mut stream.sock)?;
            }
            Ok((Stream::Tls(Box::new(stream)), auth))
        }
    }
}
