//! The client protocol: framed, versioned messages between an application
//! (through the client library) and its local daemon, over a Unix domain
//! socket or TCP.
//!
//! This module is a sans-IO codec. It turns frames into bytes appended to a
//! caller-owned `Vec<u8>` and bytes (in whatever chunks the socket gave them)
//! into frames; it never reads, writes, sleeps or logs. Session state (which
//! frame may come when, the handshake, flush bookkeeping) belongs to the
//! daemon's session and to the client library. `docs/client-protocol.md`
//! documents every field.
//!
//! ```text
//!   client library                                daemon session
//!   ClientFrame::encode ─► Vec<u8> ── write ──► FrameDecoder<ClientFrame>
//!   FrameDecoder<DaemonFrame> ◄── read ── Vec<u8> ◄─ DaemonFrame::encode / encode_message
//! ```
//!
//! A frame is a `u32` big-endian length (of what follows), a frame type byte
//! and a body. Decoders are total: any bytes give a frame or a
//! [`ClientDecodeError`], never a panic, and bytes left inside a frame after
//! its last field are an error. Misuse by the caller when encoding (a name
//! too long, too many groups) is a [`ClientEncodeError`] and leaves the
//! output buffer as it was.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use ringfence_proto::Service;
//! use ringfence_proto::wire::Groups;
//! use ringfence_proto::wire::client::{ClientFrame, Frame, FrameDecoder, Limits, Multicast};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limits = Limits::default();
//!
//! // A session batches frames into one buffer and writes it once.
//! let mut out = Vec::new();
//! ClientFrame::Join { group: "chat".into() }.encode(&mut out, &limits)?;
//! let hello = Multicast {
//!     service: Service::Agreed,
//!     msg_type: 7,
//!     self_discard: false,
//!     sealed: false,
//!     groups: Groups::encode(&["chat"])?,
//!     payload: Bytes::from_static(b"hello"),
//! };
//! ClientFrame::Multicast(hello.clone()).encode(&mut out, &limits)?;
//!
//! // The other side feeds bytes in whatever chunks the socket returns.
//! let mut decoder = FrameDecoder::<ClientFrame>::new(limits);
//! decoder.push(&out[..3]);
//! assert_eq!(decoder.next_frame()?, None); // not a whole frame yet
//! decoder.push(&out[3..]);
//! assert_eq!(decoder.next_frame()?, Some(ClientFrame::Join { group: "chat".into() }));
//! assert_eq!(decoder.next_frame()?, Some(ClientFrame::Multicast(hello)));
//! assert_eq!(decoder.next_frame()?, None);
//! # Ok(())
//! # }
//! ```

use super::{DecodeError, Groups, Reader, Service};
pub use crate::groups::GroupMode;
use bytes::{Bytes, BytesMut};
use ringfence_crypto::aead::Key32;
use std::fmt;
use std::marker::PhantomData;

/// The four bytes every `Hello` body starts with: `RFCP`.
pub const CLIENT_MAGIC: [u8; 4] = *b"RFCP";
/// The newest client protocol version this code speaks.
pub const CLIENT_VERSION: u8 = 3;
/// The oldest client protocol version this code speaks.
pub const MIN_CLIENT_VERSION: u8 = 2;

/// Bytes before a frame's body: length (4) and frame type (1).
pub const FRAME_HEADER_LEN: usize = 5;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 32;
/// Longest client name in `Hello`, in bytes.
pub const MAX_CLIENT_NAME: usize = 32;
/// Longest private name (`#client#daemon`), in bytes.
pub const MAX_PRIVATE_NAME: usize = 64;
/// Longest human-readable text in `Refused`, `Error` and `Bye`, in bytes.
pub const MAX_TEXT: usize = 1024;
/// Longest authentication token, in bytes.
pub const MAX_TOKEN: usize = 4096;

/// Frame type of [`ClientFrame::Hello`].
pub const TYPE_HELLO: u8 = 0x01;
/// Frame type of [`ClientFrame::Join`].
pub const TYPE_JOIN: u8 = 0x02;
/// Frame type of [`ClientFrame::Leave`].
pub const TYPE_LEAVE: u8 = 0x03;
/// Frame type of [`ClientFrame::Multicast`].
pub const TYPE_MULTICAST: u8 = 0x04;
/// Frame type of [`ClientFrame::FlushOk`].
pub const TYPE_FLUSH_OK: u8 = 0x05;
/// Frame type of [`ClientFrame::Bye`].
pub const TYPE_CLIENT_BYE: u8 = 0x06;
/// Frame type of [`ClientFrame::JoinVs`].
pub const TYPE_JOIN_VS: u8 = 0x07;
/// `JoinMode` frame type (version 2).
pub const TYPE_JOIN_MODE: u8 = 0x08;
/// `Admin` frame type (version 3).
pub const TYPE_ADMIN: u8 = 0x09;
/// Frame type of [`DaemonFrame::Welcome`].
pub const TYPE_WELCOME: u8 = 0x81;
/// Frame type of [`DaemonFrame::Refused`].
pub const TYPE_REFUSED: u8 = 0x82;
/// Frame type of [`DaemonFrame::Message`].
pub const TYPE_MESSAGE: u8 = 0x83;
/// Frame type of [`DaemonFrame::Membership`].
pub const TYPE_MEMBERSHIP: u8 = 0x84;
/// Frame type of [`DaemonFrame::FlushRequest`].
pub const TYPE_FLUSH_REQUEST: u8 = 0x85;
/// Frame type of [`DaemonFrame::Error`].
pub const TYPE_ERROR: u8 = 0x86;
/// Frame type of [`DaemonFrame::Bye`].
pub const TYPE_DAEMON_BYE: u8 = 0x87;
/// `Undecipherable` frame type (version 2).
pub const TYPE_UNDECIPHERABLE: u8 = 0x88;
/// `AdminReply` frame type (version 3).
pub const TYPE_ADMIN_REPLY: u8 = 0x89;

const AUTH_PEER_CREDENTIALS: u8 = 0;
const AUTH_TOKEN: u8 = 1;
const AUTH_TLS: u8 = 2;

/// Why bytes from the peer are not a valid frame. Always the peer's fault;
/// the connection cannot continue after one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientDecodeError {
    /// The length prefix exceeds the configured maximum frame length.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The length the prefix announced.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The length prefix is zero: no room for the frame type.
    #[error("empty frame")]
    EmptyFrame,
    /// A frame type this code does not know, or one sent in the wrong direction.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// A `Hello` body does not start with [`CLIENT_MAGIC`].
    #[error("bad magic")]
    BadMagic,
    /// The frame ends before a field it must hold.
    #[error("truncated frame")]
    Truncated,
    /// Bytes left over in the frame after its last field.
    #[error("trailing bytes in frame")]
    TrailingBytes,
    /// A field holds a value outside its range; names the field.
    #[error("bad value in field {0}")]
    BadValue(&'static str),
    /// A length or count exceeds its limit; names the field.
    #[error("field {field} is {len}, over the limit of {max}")]
    LimitExceeded {
        /// The field.
        field: &'static str,
        /// Its length or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    UnexpectedEof {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
}

impl From<DecodeError> for ClientDecodeError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Truncated => Self::Truncated,
            DecodeError::TrailingBytes => Self::TrailingBytes,
            DecodeError::BadValue(field) => Self::BadValue(field),
            DecodeError::BadMagic => Self::BadMagic,
            DecodeError::UnsupportedVersion(_) => Self::BadValue("version"),
            DecodeError::UnknownKind => Self::BadValue("kind"),
        }
    }
}

/// Why a frame cannot be encoded. Always the caller's misuse; the output
/// buffer is left as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientEncodeError {
    /// A field holds a value the protocol cannot carry; names the field.
    #[error("invalid value in field {0}")]
    Invalid(&'static str),
    /// A length or count exceeds its limit; names the field.
    #[error("field {field} is {len}, over the limit of {max}")]
    LimitExceeded {
        /// The field.
        field: &'static str,
        /// Its length or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The whole frame would exceed the configured maximum frame length.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The frame's length (type byte and body).
        len: usize,
        /// The configured maximum.
        max: u32,
    },
}

/// Configurable limits, enforced by both the encoder and the decoder.
///
/// Both ends should use the same values: the daemon announces its own in
/// [`Welcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest value of a frame's length prefix (type byte and body). Frames
    /// announcing more are rejected before any of their body is buffered.
    pub max_frame_len: u32,
    /// Largest message payload, in bytes.
    pub max_payload: u32,
    /// Most destination groups in one message.
    pub max_groups: u8,
    /// Most members listed in one membership frame.
    pub max_members: u16,
}

impl Limits {
    /// The defaults: 1 MiB payloads, 64 groups per message, 4096 members per
    /// view, frames up to 1 MiB + 64 KiB (payload plus the largest headers).
    pub const DEFAULT: Self = Self {
        max_frame_len: (1 << 20) + (64 << 10),
        max_payload: 1 << 20,
        max_groups: 64,
        max_members: 4096,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a client proves who it is in `Hello`.
///
/// On the wire: a kind byte, a `u16` length and that many bytes of data, so a
/// daemon can skip (and refuse) a kind it does not know.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Auth {
    /// Nothing sent: the daemon reads the peer's uid, gid and pid from the
    /// Unix socket (`SO_PEERCRED`). Kind 0.
    PeerCredentials,
    /// A bearer token (1..=[`MAX_TOKEN`] bytes), e.g. for TCP clients. Kind 1.
    Token(Bytes),
    /// Reserved: the client authenticates with its TLS certificate. Kind 2.
    Tls,
    /// A kind this code does not know; its data was skipped.
    Unknown(u8),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerCredentials => f.write_str("PeerCredentials"),
            // Never print a secret.
            Self::Token(t) => write!(f, "Token(<{} bytes>)", t.len()),
            Self::Tls => f.write_str("Tls"),
            Self::Unknown(k) => write!(f, "Unknown({k})"),
        }
    }
}

/// The client's first frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The oldest protocol version the client speaks (at least 1).
    pub min_version: u8,
    /// The newest protocol version the client speaks (at least `min_version`).
    pub max_version: u8,
    /// The client's chosen name: 1..=32 bytes of printable ASCII, no `#`.
    pub client_name: String,
    /// How the client authenticates.
    pub auth: Auth,
}

impl Hello {
    /// A `Hello` offering the versions this code speaks.
    pub fn new(client_name: impl Into<String>, auth: Auth) -> Self {
        Self {
            min_version: MIN_CLIENT_VERSION,
            max_version: CLIENT_VERSION,
            client_name: client_name.into(),
            auth,
        }
    }
}

/// The version both sides speak: the newest one in both
/// `[min_version, max_version]` and `[MIN_CLIENT_VERSION, CLIENT_VERSION]`,
/// or `None` (the daemon then answers [`RefuseCode::VersionMismatch`]).
pub fn negotiate_version(min_version: u8, max_version: u8) -> Option<u8> {
    let v = max_version.min(CLIENT_VERSION);
    (v >= min_version.max(MIN_CLIENT_VERSION)).then_some(v)
}

/// The daemon's acceptance of a `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The version chosen for the rest of the session.
    pub version: u8,
    /// The daemon's id in the cluster configuration.
    pub daemon_id: u16,
    /// The client's unique private name, e.g. `#alice#d1`.
    pub private_name: String,
    /// The daemon's [`Limits::max_frame_len`].
    pub max_frame_len: u32,
    /// The daemon's [`Limits::max_payload`].
    pub max_payload: u32,
    /// The daemon's [`Limits::max_groups`].
    pub max_groups: u8,
}

/// A multicast request from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Multicast {
    /// Delivery service; the control services are rejected.
    pub service: Service,
    /// Application-defined message type, carried unchanged.
    pub msg_type: u16,
    /// Do not deliver the message back to the sending client.
    pub self_discard: bool,
    /// The payload is sealed under the view key of the (one) destination
    /// group (`ringfence_crypto::group`).
    pub sealed: bool,
    /// Destination groups, 1..=[`Limits::max_groups`], kept encoded: when
    /// decoded, a slice of the frame (no allocation per message), which the
    /// daemon orders as it is.
    pub groups: Groups,
    /// The message; at most [`Limits::max_payload`] bytes.
    pub payload: Bytes,
}

/// A message delivered to a client.
///
/// When decoded, the sender, the groups and the payload are all slices of
/// the received frame: receiving a message allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender's private name.
    pub sender: Name,
    /// The destination groups the sender named, 1..=[`Limits::max_groups`].
    pub groups: GroupNames,
    /// Delivery service; the control services are rejected.
    pub service: Service,
    /// Application-defined message type.
    pub msg_type: u16,
    /// The payload is sealed under a view key of the (one) group.
    pub sealed: bool,
    /// The message; a slice of the received buffer when decoded.
    pub payload: Bytes,
}

/// A name in a received frame (a message's sender): a checked slice of
/// the frame, so decoding it allocates nothing. It reads as a `&str`
/// ([`as_str`](Self::as_str), `Deref`, `Display`) and compares with `str`,
/// `&str` and `String`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(Bytes);

impl Name {
    /// A name holding a copy of `s`.
    pub fn new(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A name of a `'static` string, with no copy.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// A slice of `buf` the caller checked to be UTF-8.
    fn from_checked(b: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&b).is_ok());
        Self(b)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Checked when made: a `Name` only ever holds UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// Hashes as the `str` it holds, so a `Name` finds `&str` keys of a map.
impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Self(Bytes::from(s.into_bytes()))
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.as_str().to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        other == self
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        other == self
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        other == self
    }
}

/// The destination groups of a received message: a checked slice of the
/// frame (in the encoding of [`Groups`]: a count, then each name's length
/// and bytes), so decoding it allocates nothing. Iterates the names as
/// `&str`; compares with arrays, slices and vectors of names.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GroupNames(Groups);

impl GroupNames {
    /// A list of copies of `names`. Errors if a name is empty, holds a NUL
    /// byte or is longer than [`MAX_GROUP_NAME`], or if there are more than
    /// 255 names (the frame encoder further checks
    /// [`Limits::max_groups`]).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Self, ClientEncodeError> {
        limit("groups", names.len(), u8::MAX.into())?;
        for n in names {
            let n = n.as_ref();
            if n.is_empty() || n.as_bytes().contains(&0) {
                return Err(ClientEncodeError::Invalid("group"));
            }
            limit("group", n.len(), MAX_GROUP_NAME)?;
        }
        Groups::encode(names.iter().map(|n| n.as_ref()).collect::<Vec<_>>().as_slice())
            .map(Self)
            .map_err(|_| ClientEncodeError::Invalid("groups"))
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.0.count()
    }

    /// Whether there are no names (never, in a decoded message).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names, in the sender's order.
    pub fn iter(&self) -> GroupNamesIter<'_> {
        let b = self.0.as_bytes();
        GroupNamesIter { rest: &b[1..], left: b[0] }
    }

    /// The first name.
    pub fn first(&self) -> Option<&str> {
        self.iter().next()
    }

    /// The `i`th name.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.iter().nth(i)
    }

    /// The name, if there is exactly one.
    pub fn single(&self) -> Option<&str> {
        if self.len() == 1 { self.first() } else { None }
    }

    /// Whether `name` is one of the names.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|g| g == name)
    }

    /// The names joined by `sep`.
    pub fn join(&self, sep: &str) -> String {
        self.iter().collect::<Vec<_>>().join(sep)
    }

    /// The names, as owned strings.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    /// The encoded list, as the ring carries it.
    pub fn as_groups(&self) -> &Groups {
        &self.0
    }
}

/// The names of a [`GroupNames`], as `&str`.
#[derive(Clone, Debug)]
pub struct GroupNamesIter<'a> {
    rest: &'a [u8],
    left: u8,
}

impl<'a> Iterator for GroupNamesIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Well-formed by construction (checked when decoded or made).
        let (&len, tail) = self.rest.split_first()?;
        let (name, rest) = tail.split_at_checked(len.into())?;
        self.rest = rest;
        Some(std::str::from_utf8(name).unwrap_or_default())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left.into(), Some(self.left.into()))
    }
}

impl ExactSizeIterator for GroupNamesIter<'_> {}

impl<'a> IntoIterator for &'a GroupNames {
    type Item = &'a str;
    type IntoIter = GroupNamesIter<'a>;
    fn into_iter(self) -> GroupNamesIter<'a> {
        self.iter()
    }
}

impl fmt::Debug for GroupNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<S: AsRef<str>> PartialEq<[S]> for GroupNames {
    fn eq(&self, other: &[S]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for GroupNames {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for GroupNames {
    fn eq(&self, other: &Vec<S>) -> bool {
        *self == other[..]
    }
}

/// Identifies a view of a group uniquely over time: the ring it was installed
/// in and a per-group counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViewId {
    /// Sequence of the ring that installed the view.
    pub ring_seq: u64,
    /// Representative of that ring.
    pub ring_rep: u16,
    /// The group's view counter.
    pub counter: u64,
}

/// What changed a group's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViewCause {
    /// A client joined.
    Join = 0,
    /// A client left.
    Leave = 1,
    /// A client disconnected.
    Disconnect = 2,
    /// The daemons' ring changed (partition or merge).
    Network = 3,
    /// The policy refreshed the group's key (same members, new view).
    Rekey = 4,
}

/// Whether a view is a regular or a transitional configuration (EVS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViewKind {
    /// A regular view.
    Regular = 0,
    /// The transitional signal that precedes a network-caused regular view.
    Transitional = 1,
}

/// A group membership notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The group.
    pub group: String,
    /// The view's id.
    pub view_id: ViewId,
    /// Regular or transitional.
    pub kind: ViewKind,
    /// What changed.
    pub cause: ViewCause,
    /// Private names of the members, at most [`Limits::max_members`].
    pub members: Vec<String>,
    /// The group's protection mode.
    pub mode: GroupMode,
    /// Keyed modes, regular views: the view key's id and the key (only
    /// members get it; `Debug` shows no key bytes).
    pub key: Option<(u32, Key32)>,
    /// Layered modes, a regular view caused by joins: the positions in
    /// `members` of the members that joined (ascending), every other member
    /// having held the group's previous view. Empty otherwise (and always
    /// for the other modes, whose frames do not carry the field): a
    /// newcomer needs it to take part in an incremental join.
    pub joined: Vec<u16>,
}

impl Membership {
    /// The private names of the members that joined ([`Membership::joined`]).
    pub fn joined_names(&self) -> impl Iterator<Item = &str> {
        self.joined.iter().filter_map(|&i| self.members.get(usize::from(i)).map(String::as_str))
    }
}

/// Why a message of an `optimized-evs` group could not be opened.
pub use crate::groups::KeyLoss;

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $val:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $var,)*
            /// A code this version does not name; kept so newer peers interoperate.
            Other(u16),
        }

        impl $name {
            /// The wire value.
            pub fn code(self) -> u16 {
                match self {
                    $(Self::$var => $val,)*
                    Self::Other(c) => c,
                }
            }

            /// Decodes a wire value; unknown values become `Other`.
            pub fn from_code(c: u16) -> Self {
                match c {
                    $($val => Self::$var,)*
                    c => Self::Other(c),
                }
            }
        }
    };
}

code_enum! {
    /// Why the daemon refused a `Hello`.
    RefuseCode {
        /// No protocol version in common.
        VersionMismatch = 1,
        /// The authentication kind is not supported (or not enabled).
        AuthUnsupported = 2,
        /// Authentication failed.
        AuthFailed = 3,
        /// Another client of this daemon uses the same name.
        NameInUse = 4,
        /// The daemon has as many clients as it accepts.
        TooManyClients = 5,
        /// The daemon is shutting down.
        ShuttingDown = 6,
        /// The first frame was not a `Hello`.
        ProtocolViolation = 7,
    }
}

fn key_loss_code(k: KeyLoss) -> u8 {
    match k {
        KeyLoss::TimeOut => 1,
        KeyLoss::KeyOut => 2,
        KeyLoss::Unknown => 3,
        KeyLoss::Forged => 4,
    }
}

fn key_loss_of(b: u8) -> Option<KeyLoss> {
    match b {
        1 => Some(KeyLoss::TimeOut),
        2 => Some(KeyLoss::KeyOut),
        3 => Some(KeyLoss::Unknown),
        4 => Some(KeyLoss::Forged),
        _ => None,
    }
}

code_enum! {
    /// Why the daemon rejected a request; the session continues.
    ErrorCode {
        /// The group (in `Leave` or `FlushOk`) does not have the client as a member.
        NotMember = 1,
        /// The client is already a member of the group it joins.
        AlreadyMember = 2,
        /// Access control denied the request.
        Denied = 3,
        /// The message exceeds the daemon's limits.
        TooLarge = 4,
        /// The daemon's queues are full; the message was not sent.
        Backlogged = 5,
        /// A `FlushOk` names a view that is not being flushed.
        StaleView = 6,
        /// The join states another mode than the policy gives the group.
        ModeMismatch = 7,
        /// Keyed groups: the payload is not sealed under the current view
        /// key, or a keyed group is not the message's only destination.
        WrongKey = 8,
        /// Keyed modes need link security with a server key.
        NoServerKey = 9,
        /// Three-step groups need a local socket or TLS.
        InsecureTransport = 10,
        /// The client is in as many groups as the daemon allows (128).
        TooManyGroups = 11,
        /// A VS group is flushing and the client acknowledged the flush: it
        /// sends again in the next view.
        Flushing = 12,
        /// The request is not valid: a reserved group name, or no or too
        /// many destination groups.
        BadRequest = 13,
    }
}

code_enum! {
    /// Why the daemon disconnects a client.
    ByeReason {
        /// The client said `Bye`.
        ClientBye = 1,
        /// The daemon is shutting down.
        Shutdown = 2,
        /// The client did not read its messages fast enough.
        SlowConsumer = 3,
        /// The client broke the protocol (a malformed or unexpected frame).
        ProtocolViolation = 4,
        /// The client's credentials expired or were revoked.
        AuthExpired = 5,
    }
}

/// What an operator asks a daemon (`ClientFrame::Admin`, version 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdminRequest {
    /// The daemon's status: phase, ring, members, clients, every counter,
    /// as one JSON object (`ringfence monitor`, `ringfence ctl status`).
    Status = 1,
    /// Leave the ring cleanly and stay out: the other daemons reform
    /// without waiting for the token timeout; clients are disconnected and
    /// new ones refused until the daemon is restarted.
    Leave = 2,
    /// Stop the daemon: clients are told (`Bye { Shutdown }`), the daemon
    /// leaves the ring cleanly and exits with status 0 (as on `SIGTERM`).
    Shutdown = 3,
    /// Agree on a new server key now (a TGDH refresh), as the
    /// `refresh_interval_s` policy would.
    Rekey = 4,
}

impl AdminRequest {
    /// The request for a wire value, if it is one.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Status),
            2 => Some(Self::Leave),
            3 => Some(Self::Shutdown),
            4 => Some(Self::Rekey),
            _ => None,
        }
    }

    /// The name `ringfence ctl` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Leave => "leave",
            Self::Shutdown => "shutdown",
            Self::Rekey => "rekey",
        }
    }
}

/// A frame a client sends to its daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// The first frame: version range, name, authentication.
    Hello(Hello),
    /// Join a group.
    Join {
        /// The group.
        group: String,
    },
    /// Join a closed virtual-synchrony group (members only may send; view
    /// changes go through a flush, giving sending-view delivery).
    JoinVs {
        /// The group.
        group: String,
    },
    /// Join a group stating its kind and protection mode (version 2).
    JoinMode {
        /// The group.
        group: String,
        /// Open (`false`) or closed virtual synchrony (`true`).
        vs: bool,
        /// The mode the client expects the policy to give the group.
        mode: GroupMode,
    },
    /// Leave a group.
    Leave {
        /// The group.
        group: String,
    },
    /// Send a message to one or more groups.
    Multicast(Multicast),
    /// Acknowledge a `FlushRequest`: the client sends nothing more in that view.
    FlushOk {
        /// The group being flushed.
        group: String,
        /// The view the request named.
        view_id: ViewId,
    },
    /// The client is leaving; the daemon answers `Bye` and closes.
    Bye,
    /// An operator's request (version 3); answered by
    /// [`DaemonFrame::AdminReply`] with the same `tag`. Only clients the
    /// daemon's `[clients] admin` list names may send it; others get
    /// `Error { Denied }`.
    Admin {
        /// Chosen by the client; echoed in the reply.
        tag: u32,
        /// What is asked.
        request: AdminRequest,
    },
}

/// A frame a daemon sends to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonFrame {
    /// The handshake succeeded.
    Welcome(Welcome),
    /// The handshake failed; the daemon closes the connection.
    Refused {
        /// Why.
        code: RefuseCode,
        /// Human-readable detail, at most [`MAX_TEXT`] bytes.
        text: String,
    },
    /// A delivered message.
    Message(Message),
    /// A membership change of a group the client belongs to.
    Membership(Membership),
    /// A virtually synchronous group asks the client to stop sending in a view.
    FlushRequest {
        /// The group.
        group: String,
        /// The view ending.
        view_id: ViewId,
    },
    /// An `optimized-evs` message the daemon could not open to reseal under
    /// the current key (version 2).
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
        reason: KeyLoss,
    },
    /// A request failed; the session continues.
    Error {
        /// Why.
        code: ErrorCode,
        /// Human-readable detail, at most [`MAX_TEXT`] bytes.
        text: String,
    },
    /// The daemon disconnects the client; nothing follows.
    Bye {
        /// Why.
        reason: ByeReason,
        /// Human-readable detail, at most [`MAX_TEXT`] bytes.
        text: String,
    },
    /// The answer to [`ClientFrame::Admin`] (version 3).
    AdminReply {
        /// The request's tag.
        tag: u32,
        /// Whether the request was carried out.
        ok: bool,
        /// A status request: the status as a JSON object; otherwise what
        /// was done, or why not. At most [`Limits::max_payload`] bytes.
        text: String,
    },
}

/// A frame type of one direction of the protocol: [`ClientFrame`] or
/// [`DaemonFrame`].
pub trait Frame: Sized {
    /// Decodes a frame from its type byte and body. Total: never panics;
    /// payloads are slices of `body`.
    fn decode(frame_type: u8, body: Bytes, limits: &Limits) -> Result<Self, ClientDecodeError>;

    /// Appends the frame, length prefix included, to `out`. On error `out`
    /// is left unchanged.
    fn encode(&self, out: &mut Vec<u8>, limits: &Limits) -> Result<(), ClientEncodeError>;
}

/// Decodes exactly one complete frame (length prefix included) from `buf`.
pub fn decode_frame<F: Frame>(buf: Bytes, limits: &Limits) -> Result<F, ClientDecodeError> {
    let mut r = Reader::new(&buf, 0);
    let len = r.u32()?;
    if len == 0 {
        return Err(ClientDecodeError::EmptyFrame);
    }
    if len > limits.max_frame_len {
        return Err(ClientDecodeError::FrameTooLarge { len, max: limits.max_frame_len });
    }
    let frame_type = r.u8()?;
    let body_len = len as usize - 1;
    match r.remaining().cmp(&body_len) {
        std::cmp::Ordering::Less => Err(ClientDecodeError::Truncated),
        std::cmp::Ordering::Greater => Err(ClientDecodeError::TrailingBytes),
        std::cmp::Ordering::Equal => F::decode(frame_type, buf.slice(FRAME_HEADER_LEN..), limits),
    }
}

/// Turns a byte stream, pushed in arbitrary chunks, into frames.
///
/// Call [`push`](Self::push) with the bytes read, then
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. Each length
/// prefix is checked as soon as its four bytes arrive, and a frame longer
/// than [`Limits::max_frame_len`] is rejected before its body is buffered:
/// the buffer then holds at most the complete frames not yet taken, one
/// partial frame and the latest chunk. After an error the decoder keeps
/// returning it; close the connection. The frames returned, and the error,
/// do not depend on how the stream was cut into chunks.
///
/// Frames are split off one shared buffer, so decoded payloads are slices of
/// it, not copies.
#[derive(Debug)]
pub struct FrameDecoder<F> {
    buf: BytesMut,
    /// Offset in `buf` of the first frame whose length prefix is not checked yet.
    scan: usize,
    limits: Limits,
    failed: Option<ClientDecodeError>,
    frame: PhantomData<fn() -> F>,
}

impl<F: Frame> FrameDecoder<F> {
    /// An empty decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { buf: BytesMut::new(), scan: 0, limits, failed: None, frame: PhantomData }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Appends bytes received from the peer. A bad length prefix stops the
    /// stream at once: the complete frames before it are kept, nothing from
    /// it on is, and [`next_frame`](Self::next_frame) reports the error once
    /// those frames are taken. Bytes pushed after that are ignored.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= self.scan + 4 {
            let p = &self.buf[self.scan..];
            let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            let bad = if len == 0 {
                Some(ClientDecodeError::EmptyFrame)
            } else if len > self.limits.max_frame_len {
                Some(ClientDecodeError::FrameTooLarge { len, max: self.limits.max_frame_len })
            } else {
                None
            };
            if let Some(e) = bad {
                // Every frame before `scan` is complete: keep those only.
                self.buf.truncate(self.scan);
                self.failed = Some(e);
                return;
            }
            self.scan += 4 + len as usize;
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the
    /// error that ended the stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<F>, ClientDecodeError> {
        if self.buf.len() >= 4 {
            // `push` checked this prefix: 1 <= len <= max_frame_len.
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() >= 4 + len {
                let frame = self.buf.split_to(4 + len).freeze();
                self.scan = self.scan.saturating_sub(4 + len);
                let frame_type = frame[4];
                return match F::decode(frame_type, frame.slice(FRAME_HEADER_LEN..), &self.limits) {
                    Ok(f) => Ok(Some(f)),
                    Err(e) => {
                        self.buf = BytesMut::new();
                        self.scan = 0;
                        self.failed = Some(e.clone());
                        Err(e)
                    }
                };
            }
        }
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes still missing before the next frame is whole: the rest of its
    /// length prefix, or of its body; 0 when a whole frame (or an error) is
    /// ready for [`next_frame`](Self::next_frame). A reader that reads at
    /// most this many bytes never takes a byte of the following frame off
    /// the socket, so the socket's readiness says whether a frame waits.
    pub fn missing(&self) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        let Some(p) = self.buf.get(..4) else {
            return 4 - self.buf.len();
        };
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        (4 + len).saturating_sub(self.buf.len())
    }

    /// Call when the peer closed the stream: an error if the decoder failed
    /// or the stream stopped inside a frame.
    pub fn finish(&self) -> Result<(), ClientDecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ClientDecodeError::UnexpectedEof { buffered: self.buf.len() })
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding

/// Writes one frame: length placeholder, type, body from `body`, then the
/// length. Restores `out` if `body` or the frame length check fails.
fn put_frame<O: FrameBuf + ?Sized>(
    out: &mut O,
    limits: &Limits,
    frame_type: u8,
    body: impl FnOnce(&mut O) -> Result<(), ClientEncodeError>,
) -> Result<(), ClientEncodeError> {
    let start = out.len();
    out.put_bytes(&[0, 0, 0, 0, frame_type]);
    let result = body(out).and_then(|()| {
        let len = out.len() - start - 4;
        match u32::try_from(len) {
            Ok(l) if l <= limits.max_frame_len => {
                out[start..start + 4].copy_from_slice(&l.to_be_bytes());
                Ok(())
            }
            _ => Err(ClientEncodeError::FrameTooLarge { len, max: limits.max_frame_len }),
        }
    });
    if result.is_err() {
        out.cut(start);
    }
    result
}

/// A growable byte buffer the frame encoders append to: a `Vec<u8>`, or a
/// `BytesMut` that frames are split off and shared from.
pub trait FrameBuf: std::ops::DerefMut<Target = [u8]> {
    /// Appends one byte.
    fn put_byte(&mut self, b: u8);
    /// Appends bytes.
    fn put_bytes(&mut self, b: &[u8]);
    /// Cuts the buffer back to `len` bytes.
    fn cut(&mut self, len: usize);
    /// Makes room for `n` more bytes.
    fn room(&mut self, n: usize);
}

impl FrameBuf for Vec<u8> {
    fn put_byte(&mut self, b: u8) {
        self.push(b);
    }
    fn put_bytes(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn cut(&mut self, len: usize) {
        self.truncate(len);
    }
    fn room(&mut self, n: usize) {
        self.reserve(n);
    }
}

impl FrameBuf for bytes::BytesMut {
    fn put_byte(&mut self, b: u8) {
        self.extend_from_slice(&[b]);
    }
    fn put_bytes(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn cut(&mut self, len: usize) {
        self.truncate(len);
    }
    fn room(&mut self, n: usize) {
        self.reserve(n);
    }
}

fn limit(field: &'static str, len: usize, max: usize) -> Result<(), ClientEncodeError> {
    if len > max { Err(ClientEncodeError::LimitExceeded { field, len, max }) } else { Ok(()) }
}

fn put_group<O: FrameBuf + ?Sized>(
    out: &mut O,
    field: &'static str,
    name: &str,
) -> Result<(), ClientEncodeError> {
    if name.is_empty() || name.as_bytes().contains(&0) {
        return Err(ClientEncodeError::Invalid(field));
    }
    limit(field, name.len(), MAX_GROUP_NAME)?;
    out.put_byte(name.len() as u8);
    out.put_bytes(name.as_bytes());
    Ok(())
}

/// Writes a name of printable ASCII (`0x21..=0x7e`), optionally without `#`.
fn put_ascii_name<O: FrameBuf + ?Sized>(
    out: &mut O,
    field: &'static str,
    name: &str,
    max: usize,
    allow_hash: bool,
) -> Result<(), ClientEncodeError> {
    if !is_ascii_name(name.as_bytes(), allow_hash) {
        return Err(ClientEncodeError::Invalid(field));
    }
    limit(field, name.len(), max)?;
    out.put_byte(name.len() as u8);
    out.put_bytes(name.as_bytes());
    Ok(())
}

fn put_text(out: &mut Vec<u8>, text: &str) -> Result<(), ClientEncodeError> {
    limit("text", text.len(), MAX_TEXT)?;
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn put_view_id(out: &mut Vec<u8>, v: ViewId) {
    out.extend_from_slice(&v.ring_seq.to_be_bytes());
    out.extend_from_slice(&v.ring_rep.to_be_bytes());
    out.extend_from_slice(&v.counter.to_be_bytes());
}

fn put_service<O: FrameBuf + ?Sized>(out: &mut O, service: Service) -> Result<(), ClientEncodeError> {
    if service.is_control() {
        return Err(ClientEncodeError::Invalid("service"));
    }
    out.put_byte(service as u8);
    Ok(())
}

/// Writes the group count and names, counting as it goes.
fn put_groups<G: AsRef<str>, O: FrameBuf + ?Sized>(
    out: &mut O,
    limits: &Limits,
    groups: impl IntoIterator<Item = G>,
) -> Result<(), ClientEncodeError> {
    let at = out.len();
    out.put_byte(0);
    let mut count = 0usize;
    for g in groups {
        count += 1;
        limit("groups", count, limits.max_groups.into())?;
        put_group(out, "group", g.as_ref())?;
    }
    if count == 0 {
        return Err(ClientEncodeError::Invalid("groups"));
    }
    out[at] = count as u8;
    Ok(())
}

fn put_payload<O: FrameBuf + ?Sized>(
    out: &mut O,
    limits: &Limits,
    payload: &[u8],
) -> Result<(), ClientEncodeError> {
    limit("payload", payload.len(), limits.max_payload as usize)?;
    out.put_bytes(&(payload.len() as u32).to_be_bytes());
    out.put_bytes(payload);
    Ok(())
}

/// Appends a `Message` frame built from borrowed parts, with no allocation
/// besides growing `out` (a `Vec<u8>`, or the `BytesMut` the daemon splits
/// frames off): the daemon's fan-out path. The bytes are the same
/// as those of [`DaemonFrame::Message`].
// One argument per frame field: the borrowed-parts encoder of the hot path.
#[allow(clippy::too_many_arguments)]
pub fn encode_message<G: AsRef<str>, O: FrameBuf + ?Sized>(
    out: &mut O,
    limits: &Limits,
    sender: &str,
    groups: impl IntoIterator<Item = G>,
    service: Service,
    msg_type: u16,
    sealed: bool,
    payload: &[u8],
) -> Result<(), ClientEncodeError> {
    out.room(FRAME_HEADER_LEN + 1 + sender.len() + 5 + payload.len() + 64);
    put_frame(out, limits, TYPE_MESSAGE, |out| {
        put_ascii_name(out, "sender", sender, MAX_PRIVATE_NAME, true)?;
        put_service(out, service)?;
        out.put_byte(u8::from(sealed));
        out.put_bytes(&msg_type.to_be_bytes());
        put_groups(out, limits, groups)?;
        put_payload(out, limits, payload)
    })
}

/// Appends a `Multicast` frame built from borrowed parts, with no allocation
/// besides growing `out`: the client library's send path. The bytes are the
/// same as those of [`ClientFrame::Multicast`].
// One argument per frame field: the borrowed-parts encoder of the hot path.
#[allow(clippy::too_many_arguments)]
pub fn encode_multicast<G: AsRef<str>>(
    out: &mut Vec<u8>,
    limits: &Limits,
    service: Service,
    msg_type: u16,
    self_discard: bool,
    sealed: bool,
    groups: impl IntoIterator<Item = G>,
    payload: &[u8],
) -> Result<(), ClientEncodeError> {
    out.reserve(FRAME_HEADER_LEN + 4 + 4 + payload.len() + 64);
    put_frame(out, limits, TYPE_MULTICAST, |out| {
        put_service(out, service)?;
        out.push(u8::from(self_discard) | (u8::from(sealed) << 1));
        out.extend_from_slice(&msg_type.to_be_bytes());
        put_groups(out, limits, groups)?;
        put_payload(out, limits, payload)
    })
}

fn put_auth(out: &mut Vec<u8>, auth: &Auth) -> Result<(), ClientEncodeError> {
    let (kind, data): (u8, &[u8]) = match auth {
        Auth::PeerCredentials => (AUTH_PEER_CREDENTIALS, &[]),
        Auth::Token(t) => {
            if t.is_empty() {
                return Err(ClientEncodeError::Invalid("token"));
            }
            limit("token", t.len(), MAX_TOKEN)?;
            (AUTH_TOKEN, t)
        }
        Auth::Tls => (AUTH_TLS, &[]),
        Auth::Unknown(k) if *k > AUTH_TLS => (*k, &[]),
        Auth::Unknown(_) => return Err(ClientEncodeError::Invalid("auth")),
    };
    out.push(kind);
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
}

impl Frame for ClientFrame {
    fn decode(frame_type: u8, body: Bytes, limits: &Limits) -> Result<Self, ClientDecodeError> {
        let mut r = Reader::new(&body, 0);
        let frame = match frame_type {
            TYPE_HELLO => {
                if r.take(4)? != CLIENT_MAGIC {
                    return Err(ClientDecodeError::BadMagic);
                }
                let min_version = r.u8()?;
                let max_version = r.u8()?;
                if min_version == 0 || min_version > max_version {
                    return Err(ClientDecodeError::BadValue("version range"));
                }
                let client_name = read_ascii_name(&mut r, "client_name", MAX_CLIENT_NAME, false)?;
                let auth = read_auth(&mut r, &body)?;
                Self::Hello(Hello { min_version, max_version, client_name, auth })
            }
            TYPE_JOIN => Self::Join { group: read_group(&mut r)? },
            TYPE_JOIN_VS => Self::JoinVs { group: read_group(&mut r)? },
            TYPE_JOIN_MODE => {
                let group = read_group(&mut r)?;
                let vs = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(ClientDecodeError::BadValue("kind")),
                };
                let mode = GroupMode::from_u8(r.u8()?).ok_or(ClientDecodeError::BadValue("mode"))?;
                Self::JoinMode { group, vs, mode }
            }
            TYPE_LEAVE => Self::Leave { group: read_group(&mut r)? },
            TYPE_MULTICAST => {
                let service = read_service(&mut r)?;
                let flags = r.u8()?;
                if flags > 3 {
                    return Err(ClientDecodeError::BadValue("flags"));
                }
                let (self_discard, sealed) = (flags & 1 != 0, flags & 2 != 0);
                let msg_type = r.u16()?;
                let groups = read_group_list(&mut r, &body, limits)?;
                let payload = read_payload(&mut r, &body, limits)?;
                Self::Multicast(Multicast { service, msg_type, self_discard, sealed, groups, payload })
            }
            TYPE_FLUSH_OK => Self::FlushOk { group: read_group(&mut r)?, view_id: read_view_id(&mut r)? },
            TYPE_CLIENT_BYE => Self::Bye,
            TYPE_ADMIN => Self::Admin {
                tag: r.u32()?,
                request: AdminRequest::from_u8(r.u8()?).ok_or(ClientDecodeError::BadValue("request"))?,
            },
            t => return Err(ClientDecodeError::UnknownFrameType(t)),
        };
        r.finish()?;
        Ok(frame)
    }

    fn encode(&self, out: &mut Vec<u8>, limits: &Limits) -> Result<(), ClientEncodeError> {
        match self {
            Self::Hello(h) => put_frame(out, limits, TYPE_HELLO, |out| {
                if h.min_version == 0 || h.min_version > h.max_version {
                    return Err(ClientEncodeError::Invalid("version range"));
                }
                out.extend_from_slice(&CLIENT_MAGIC);
                out.push(h.min_version);
                out.push(h.max_version);
                put_ascii_name(out, "client_name", &h.client_name, MAX_CLIENT_NAME, false)?;
                put_auth(out, &h.auth)
            }),
            Self::Join { group } => put_frame(out, limits, TYPE_JOIN, |out| put_group(out, "group", group)),
            Self::JoinVs { group } => {
                put_frame(out, limits, TYPE_JOIN_VS, |out| put_group(out, "group", group))
            }
            Self::Leave { group } => put_frame(out, limits, TYPE_LEAVE, |out| put_group(out, "group", group)),
            Self::JoinMode { group, vs, mode } => put_frame(out, limits, TYPE_JOIN_MODE, |out| {
                put_group(out, "group", group)?;
                out.push(u8::from(*vs));
                out.push(*mode as u8);
                Ok(())
            }),
            Self::Multicast(m) => encode_multicast(
                out,
                limits,
                m.service,
                m.msg_type,
                m.self_discard,
                m.sealed,
                // A name that is not UTF-8 (only a hand-built list can hold
                // one) is refused as empty.
                m.groups.iter().map(|g| std::str::from_utf8(g).unwrap_or("")),
                &m.payload,
            ),
            Self::FlushOk { group, view_id } => put_frame(out, limits, TYPE_FLUSH_OK, |out| {
                put_group(out, "group", group)?;
                put_view_id(out, *view_id);
                Ok(())
            }),
            Self::Bye => put_frame(out, limits, TYPE_CLIENT_BYE, |_| Ok(())),
            Self::Admin { tag, request } => put_frame(out, limits, TYPE_ADMIN, |out| {
                out.extend_from_slice(&tag.to_be_bytes());
                out.push(*request as u8);
                Ok(())
            }),
        }
    }
}

impl Frame for DaemonFrame {
    fn decode(frame_type: u8, body: Bytes, limits: &Limits) -> Result<Self, ClientDecodeError> {
        let mut r = Reader::new(&body, 0);
        let frame = match frame_type {
            TYPE_WELCOME => {
                let version = r.u8()?;
                if version == 0 {
                    return Err(ClientDecodeError::BadValue("version"));
                }
                let daemon_id = r.u16()?;
                let private_name = read_ascii_name(&mut r, "private_name", MAX_PRIVATE_NAME, true)?;
                let max_frame_len = r.u32()?;
                let max_payload = r.u32()?;
                let max_groups = r.u8()?;
                Self::Welcome(Welcome {
                    version,
                    daemon_id,
                    private_name,
                    max_frame_len,
                    max_payload,
                    max_groups,
                })
            }
            TYPE_REFUSED => Self::Refused { code: RefuseCode::from_code(r.u16()?), text: read_text(&mut r)? },
            TYPE_MESSAGE => {
                let sender = read_name(&mut r, &body, "sender", MAX_PRIVATE_NAME)?;
                let service = read_service(&mut r)?;
                let sealed = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(ClientDecodeError::BadValue("flags")),
                };
                let msg_type = r.u16()?;
                let groups = GroupNames(read_group_list(&mut r, &body, limits)?);
                let payload = read_payload(&mut r, &body, limits)?;
                Self::Message(Message { sender, groups, service, msg_type, sealed, payload })
            }
            TYPE_MEMBERSHIP => {
                let group = read_group(&mut r)?;
                let view_id = read_view_id(&mut r)?;
                let kind = match r.u8()? {
                    0 => ViewKind::Regular,
                    1 => ViewKind::Transitional,
                    _ => return Err(ClientDecodeError::BadValue("kind")),
                };
                let cause = match r.u8()? {
                    0 => ViewCause::Join,
                    1 => ViewCause::Leave,
                    2 => ViewCause::Disconnect,
                    3 => ViewCause::Network,
                    4 => ViewCause::Rekey,
                    _ => return Err(ClientDecodeError::BadValue("cause")),
                };
                let count = r.u16()? as usize;
                if count > limits.max_members.into() {
                    return Err(ClientDecodeError::LimitExceeded {
                        field: "members",
                        len: count,
                        max: limits.max_members.into(),
                    });
                }
                // Each member takes at least 2 bytes: bound the allocation by the frame.
                let mut members = Vec::with_capacity(count.min(r.remaining() / 2));
                for _ in 0..count {
                    members.push(read_ascii_name(&mut r, "member", MAX_PRIVATE_NAME, true)?);
                }
                let mode = GroupMode::from_u8(r.u8()?).ok_or(ClientDecodeError::BadValue("mode"))?;
                let key = match r.u8()? {
                    0 => None,
                    1 => {
                        let id = r.u32()?;
                        let bytes: [u8; 32] =
                            r.take(32)?.try_into().map_err(|_| ClientDecodeError::Truncated)?;
                        Some((id, Key32::from_bytes(bytes)))
                    }
                    _ => return Err(ClientDecodeError::BadValue("key")),
                };
                let mut joined = Vec::new();
                if mode.layered() {
                    let count = usize::from(r.u16()?);
                    if count > members.len() {
                        return Err(ClientDecodeError::BadValue("joined"));
                    }
                    joined.reserve(count);
                    for _ in 0..count {
                        let i = r.u16()?;
                        if usize::from(i) >= members.len() || joined.last().is_some_and(|&l| l >= i) {
                            return Err(ClientDecodeError::BadValue("joined"));
                        }
                        joined.push(i);
                    }
                }
                Self::Membership(Membership { group, view_id, kind, cause, members, mode, key, joined })
            }
            TYPE_FLUSH_REQUEST => {
                Self::FlushRequest { group: read_group(&mut r)?, view_id: read_view_id(&mut r)? }
            }
            TYPE_ERROR => Self::Error { code: ErrorCode::from_code(r.u16()?), text: read_text(&mut r)? },
            TYPE_UNDECIPHERABLE => Self::Undecipherable {
                sender: read_ascii_name(&mut r, "sender", MAX_PRIVATE_NAME, true)?,
                group: read_group(&mut r)?,
                msg_type: r.u16()?,
                key_id: r.u32()?,
                reason: key_loss_of(r.u8()?).ok_or(ClientDecodeError::BadValue("reason"))?,
            },
            TYPE_DAEMON_BYE => Self::Bye { reason: ByeReason::from_code(r.u16()?), text: read_text(&mut r)? },
            TYPE_ADMIN_REPLY => {
                let tag = r.u32()?;
                let ok = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(ClientDecodeError::BadValue("ok")),
                };
                let len = r.u32()? as usize;
                if len > limits.max_payload as usize {
                    return Err(ClientDecodeError::LimitExceeded {
                        field: "text",
                        len,
                        max: limits.max_payload as usize,
                    });
                }
                let text = String::from_utf8(r.take(len)?.to_vec())
                    .map_err(|_| ClientDecodeError::BadValue("text"))?;
                Self::AdminReply { tag, ok, text }
            }
            t => return Err(ClientDecodeError::UnknownFrameType(t)),
        };
        r.finish()?;
        Ok(frame)
    }

    fn encode(&self, out: &mut Vec<u8>, limits: &Limits) -> Result<(), ClientEncodeError> {
        match self {
            Self::Welcome(w) => put_frame(out, limits, TYPE_WELCOME, |out| {
                if w.version == 0 {
                    return Err(ClientEncodeError::Invalid("version"));
                }
                out.push(w.version);
                out.extend_from_slice(&w.daemon_id.to_be_bytes());
                put_ascii_name(out, "private_name", &w.private_name, MAX_PRIVATE_NAME, true)?;
                out.extend_from_slice(&w.max_frame_len.to_be_bytes());
                out.extend_from_slice(&w.max_payload.to_be_bytes());
                out.push(w.max_groups);
                Ok(())
            }),
            Self::Refused { code, text } => put_frame(out, limits, TYPE_REFUSED, |out| {
                out.extend_from_slice(&code.code().to_be_bytes());
                put_text(out, text)
            }),
            Self::Message(m) => encode_message(
                out,
                limits,
                &m.sender,
                m.groups.iter(),
                m.service,
                m.msg_type,
                m.sealed,
                &m.payload,
            ),
            Self::Undecipherable { sender, group, msg_type, key_id, reason } => {
                put_frame(out, limits, TYPE_UNDECIPHERABLE, |out| {
                    put_ascii_name(out, "sender", sender, MAX_PRIVATE_NAME, true)?;
                    put_group(out, "group", group)?;
                    out.extend_from_slice(&msg_type.to_be_bytes());
                    out.extend_from_slice(&key_id.to_be_bytes());
                    out.push(key_loss_code(*reason));
                    Ok(())
                })
            }
            Self::Membership(m) => put_frame(out, limits, TYPE_MEMBERSHIP, |out| {
                put_group(out, "group", &m.group)?;
                put_view_id(out, m.view_id);
                out.push(m.kind as u8);
                out.push(m.cause as u8);
                limit("members", m.members.len(), limits.max_members.into())?;
                out.extend_from_slice(&(m.members.len() as u16).to_be_bytes());
                for name in &m.members {
                    put_ascii_name(out, "member", name, MAX_PRIVATE_NAME, true)?;
                }
                out.push(m.mode as u8);
                match &m.key {
                    None => out.push(0),
                    Some((id, key)) => {
                        out.push(1);
                        out.extend_from_slice(&id.to_be_bytes());
                        out.extend_from_slice(key.expose_secret());
                    }
                }
                let ascending = m.joined.windows(2).all(|w| w[0] < w[1]);
                let inside = m.joined.iter().all(|&i| usize::from(i) < m.members.len());
                if !ascending || !inside || (!m.mode.layered() && !m.joined.is_empty()) {
                    return Err(ClientEncodeError::Invalid("joined"));
                }
                if m.mode.layered() {
                    // At most `members.len()` entries, which fit a u16 (checked above).
                    out.extend_from_slice(&(m.joined.len() as u16).to_be_bytes());
                    for i in &m.joined {
                        out.extend_from_slice(&i.to_be_bytes());
                    }
                }
                Ok(())
            }),
            Self::FlushRequest { group, view_id } => put_frame(out, limits, TYPE_FLUSH_REQUEST, |out| {
                put_group(out, "group", group)?;
                put_view_id(out, *view_id);
                Ok(())
            }),
            Self::Error { code, text } => put_frame(out, limits, TYPE_ERROR, |out| {
                out.extend_from_slice(&code.code().to_be_bytes());
                put_text(out, text)
            }),
            Self::Bye { reason, text } => put_frame(out, limits, TYPE_DAEMON_BYE, |out| {
                out.extend_from_slice(&reason.code().to_be_bytes());
                put_text(out, text)
            }),
            Self::AdminReply { tag, ok, text } => put_frame(out, limits, TYPE_ADMIN_REPLY, |out| {
                limit("text", text.len(), limits.max_payload as usize)?;
                out.extend_from_slice(&tag.to_be_bytes());
                out.push(u8::from(*ok));
                out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
                Ok(())
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding helpers

fn is_ascii_name(b: &[u8], allow_hash: bool) -> bool {
    !b.is_empty() && b.iter().all(|&c| (0x21..=0x7e).contains(&c) && (allow_hash || c != b'#'))
}

/// Takes a length-prefixed name of printable ASCII (`#` only if
/// `allow_hash`), at most `max` bytes.
fn take_ascii_name<'a>(
    r: &mut Reader<'a>,
    field: &'static str,
    max: usize,
    allow_hash: bool,
) -> Result<&'a [u8], ClientDecodeError> {
    let len = r.u8()? as usize;
    if len > max {
        return Err(ClientDecodeError::LimitExceeded { field, len, max });
    }
    let b = r.take(len)?;
    if !is_ascii_name(b, allow_hash) {
        return Err(ClientDecodeError::BadValue(field));
    }
    Ok(b)
}

fn read_ascii_name(
    r: &mut Reader<'_>,
    field: &'static str,
    max: usize,
    allow_hash: bool,
) -> Result<String, ClientDecodeError> {
    let b = take_ascii_name(r, field, max, allow_hash)?;
    String::from_utf8(b.to_vec()).map_err(|_| ClientDecodeError::BadValue(field))
}

/// Reads a private name (printable ASCII, `#` allowed) as
/// [`read_ascii_name`] does, returning it as a slice of `body`.
fn read_name(
    r: &mut Reader<'_>,
    body: &Bytes,
    field: &'static str,
    max: usize,
) -> Result<Name, ClientDecodeError> {
    let len = take_ascii_name(r, field, max, true)?.len();
    let end = r.pos();
    Ok(Name::from_checked(body.slice(end - len..end)))
}

fn read_group(r: &mut Reader<'_>) -> Result<String, ClientDecodeError> {
    let len = r.u8()? as usize;
    if len > MAX_GROUP_NAME {
        return Err(ClientDecodeError::LimitExceeded { field: "group", len, max: MAX_GROUP_NAME });
    }
    let b = r.take(len)?;
    if b.is_empty() || b.contains(&0) {
        return Err(ClientDecodeError::BadValue("group"));
    }
    String::from_utf8(b.to_vec()).map_err(|_| ClientDecodeError::BadValue("group"))
}

/// A destination list's count: 1..=[`Limits::max_groups`].
fn read_group_count(r: &mut Reader<'_>, limits: &Limits) -> Result<u8, ClientDecodeError> {
    let count = r.u8()?;
    if count == 0 {
        return Err(ClientDecodeError::BadValue("groups"));
    }
    if count > limits.max_groups {
        return Err(ClientDecodeError::LimitExceeded {
            field: "groups",
            len: count.into(),
            max: limits.max_groups.into(),
        });
    }
    Ok(count)
}

/// Reads and checks a destination list (a count of
/// 1..=[`Limits::max_groups`], then names as [`read_group`] checks them),
/// returning it as a slice of `body` (the same encoding as [`Groups`]): no
/// allocation.
fn read_group_list(r: &mut Reader<'_>, body: &Bytes, limits: &Limits) -> Result<Groups, ClientDecodeError> {
    let start = r.pos();
    let count = read_group_count(r, limits)?;
    for _ in 0..count {
        let len = r.u8()? as usize;
        if len > MAX_GROUP_NAME {
            return Err(ClientDecodeError::LimitExceeded { field: "group", len, max: MAX_GROUP_NAME });
        }
        let b = r.take(len)?;
        if b.is_empty() || b.contains(&0) || std::str::from_utf8(b).is_err() {
            return Err(ClientDecodeError::BadValue("group"));
        }
    }
    Ok(Groups::from_checked(body.slice(start..r.pos())))
}

fn read_text(r: &mut Reader<'_>) -> Result<String, ClientDecodeError> {
    let len = r.u16()? as usize;
    if len > MAX_TEXT {
        return Err(ClientDecodeError::LimitExceeded { field: "text", len, max: MAX_TEXT });
    }
    String::from_utf8(r.take(len)?.to_vec()).map_err(|_| ClientDecodeError::BadValue("text"))
}

fn read_view_id(r: &mut Reader<'_>) -> Result<ViewId, ClientDecodeError> {
    Ok(ViewId { ring_seq: r.u64()?, ring_rep: r.u16()?, counter: r.u64()? })
}

fn read_service(r: &mut Reader<'_>) -> Result<Service, ClientDecodeError> {
    let service = Service::from_u8(r.u8()?)?;
    if service.is_control() {
        return Err(ClientDecodeError::BadValue("service"));
    }
    Ok(service)
}

fn read_payload(r: &mut Reader<'_>, body: &Bytes, limits: &Limits) -> Result<Bytes, ClientDecodeError> {
    let len = r.u32()? as usize;
    if len > limits.max_payload as usize {
        return Err(ClientDecodeError::LimitExceeded {
            field: "payload",
            len,
            max: limits.max_payload as usize,
        });
    }
    let start = r.pos();
    r.take(len)?;
    Ok(body.slice(start..start + len))
}

fn read_auth(r: &mut Reader<'_>, body: &Bytes) -> Result<Auth, ClientDecodeError> {
    let kind = r.u8()?;
    let len = r.u16()? as usize;
    let start = r.pos();
    r.take(len)?;
    match kind {
        AUTH_PEER_CREDENTIALS | AUTH_TLS if len != 0 => Err(ClientDecodeError::BadValue("auth")),
        AUTH_PEER_CREDENTIALS => Ok(Auth::PeerCredentials),
        AUTH_TLS => Ok(Auth::Tls),
        AUTH_TOKEN if len == 0 => Err(ClientDecodeError::BadValue("token")),
        AUTH_TOKEN if len > MAX_TOKEN => {
            Err(ClientDecodeError::LimitExceeded { field: "token", len, max: MAX_TOKEN })
        }
        AUTH_TOKEN => Ok(Auth::Token(body.slice(start..start + len))),
        k => Ok(Auth::Unknown(k)),
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
