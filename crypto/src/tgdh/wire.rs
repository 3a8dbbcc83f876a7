//! TGDH messages and their byte form.
//!
//! All integers are big-endian. A message is one tag byte and its body:
//!
//! ```text
//!   0x01 Announce  u64 round ‖ u64 epoch ‖ tree_id[32] ‖ leaf bk[32]
//!                  ‖ 0x00                    (holds a larger tree, does not send it)
//!                  ‖ 0x01 ‖ tree             (sends the tree it holds, see below)
//!                  ‖ 0x02                    (alone: the leaf key is fresh)
//!   0x02 Keys      u64 round ‖ base[32] ‖ u16 count (1..=1024)
//!                  ‖ count × (u32 first ‖ u32 last ‖ bk[32])
//!   tree           u16 leaf count (1..=1024), then 2 * count - 1 nodes in postorder:
//!                  0x00 ‖ u32 member ‖ bk[32]   a leaf
//!                  0x01 ‖ bk[32]                an internal node over the two subtrees before it
//! ```
//!
//! The decoder is total: any bytes give a message or a [`DecodeError`],
//! trailing bytes are refused, and sizes are bounded by
//! [`MAX_MEMBERS`], so a message never makes the decoder
//! allocate more than about 70 KiB. The encoding is canonical: a decoded
//! message encodes back to the same bytes.

use super::MAX_MEMBERS;
use super::tree::{BK_LEN, Bk, NodeId, Tree};

/// Errors of [`Message::decode`]: the bytes are not a TGDH message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end inside the message.
    #[error("message truncated")]
    Truncated,
    /// Bytes follow the end of the message.
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    /// A message, flag or node tag byte has no meaning.
    #[error("unknown tag {0:#04x}")]
    UnknownTag(u8),
    /// A count is zero or above its bound.
    #[error("{count} {what} is out of bounds")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The count read.
        count: usize,
    },
    /// A member has two leaves in an announced tree.
    #[error("member {0} appears twice in a tree")]
    DuplicateMember(u32),
    /// The nodes of an announced tree do not form one binary tree.
    #[error("the nodes do not form one binary tree")]
    BadTree,
}

/// Reads the byte form; every read checks the length.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    pub(crate) fn array(&mut self) -> Result<[u8; 32], DecodeError> {
        self.take()
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

const TAG_ANNOUNCE: u8 = 1;
const TAG_KEYS: u8 = 2;

/// A TGDH protocol message, broadcast to every member of the configuration.
///
/// The sender is not in the message: the ring's signed envelope names it, and
/// [`Tgdh::handle`](super::Tgdh::handle) takes it as `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A member's tree announcement, the first message of a run.
    Announce(Announce),
    /// Blinded keys a sponsor computed.
    Keys(Keys),
}

/// A member's tree announcement: which completed tree it holds, and the tree
/// itself if it is the member that speaks for it.
///
/// Carries `epoch`, the id of the sender's last completed tree (a hash of
/// its structure, its blinded keys and `epoch`), the sender's leaf blinded
/// key in it, and that tree with every blinded key if the sender is the
/// member of lowest id among the tree's leaves that are in the new
/// configuration. A member alone in its tree sends a fresh leaf key instead
/// (the paper's join request). No secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    pub(crate) round: u64,
    pub(crate) epoch: u64,
    pub(crate) tree_id: [u8; 32],
    pub(crate) leaf: Bk,
    pub(crate) held: Held,
}

/// What an announcing member says of its tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Held {
    /// A tree of several members, sent by another of them.
    Shared,
    /// A tree of several members, sent here.
    Tree(Tree),
    /// A tree of this member alone; the leaf key announced is fresh.
    Alone,
}

/// Blinded keys of nodes on the sender's path, bottom-up, each new in this run.
///
/// `base` is a digest of the run's starting tree, so that a member whose
/// view differs finds out instead of computing a wrong key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub(crate) round: u64,
    pub(crate) base: [u8; 32],
    pub(crate) keys: Vec<(NodeId, Bk)>,
}

impl Announce {
    /// The run this message belongs to.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Whether the announcement carries a whole tree (it may be large).
    pub fn has_tree(&self) -> bool {
        matches!(self.held, Held::Tree(_))
    }
}

impl Keys {
    /// The run this message belongs to.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Number of blinded keys carried.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no blinded key is carried (never so for a decoded message).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Message {
    /// The run this message belongs to.
    pub fn round(&self) -> u64 {
        match self {
            Self::Announce(a) => a.round,
            Self::Keys(k) => k.round,
        }
    }

    /// Appends the byte form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Announce(a) => {
                out.push(TAG_ANNOUNCE);
                out.extend_from_slice(&a.round.to_be_bytes());
                out.extend_from_slice(&a.epoch.to_be_bytes());
                out.extend_from_slice(&a.tree_id);
                out.extend_from_slice(&a.leaf);
                match &a.held {
                    Held::Shared => out.push(0),
                    Held::Tree(tree) => {
                        out.push(1);
                        tree.encode(out);
                    }
                    Held::Alone => out.push(2),
                }
            }
            Self::Keys(k) => {
                out.push(TAG_KEYS);
                out.extend_from_slice(&k.round.to_be_bytes());
                out.extend_from_slice(&k.base);
                out.extend_from_slice(&(k.keys.len() as u16).to_be_bytes());
                for (id, bk) in &k.keys {
                    out.extend_from_slice(&id.first.to_be_bytes());
                    out.extend_from_slice(&id.last.to_be_bytes());
                    out.extend_from_slice(bk);
                }
            }
        }
    }

    /// The byte form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Reads one message that fills `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let msg = match r.u8()? {
            TAG_ANNOUNCE => {
                let round = r.u64()?;
                let epoch = r.u64()?;
                let tree_id = r.array()?;
                let leaf = r.array()?;
                let held = match r.u8()? {
                    0 => Held::Shared,
                    1 => Held::Tree(Tree::decode(&mut r)?),
                    2 => Held::Alone,
                    tag => return Err(DecodeError::UnknownTag(tag)),
                };
                Self::Announce(Announce { round, epoch, tree_id, leaf, held })
            }
            TAG_KEYS => {
                let round = r.u64()?;
                let base = r.array()?;
                let count = usize::from(r.u16()?);
                if count == 0 || count > MAX_MEMBERS {
                    return Err(DecodeError::TooMany { what: "blinded keys", count });
                }
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    let id = NodeId { first: r.u32()?, last: r.u32()? };
                    let bk: [u8; BK_LEN] = r.array()?;
                    keys.push((id, bk));
                }
                Self::Keys(Keys { round, base, keys })
            }
            tag => return Err(DecodeError::UnknownTag(tag)),
        };
        r.finish()?;
        Ok(msg)
    }
}
