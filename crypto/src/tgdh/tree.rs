//! The key tree: a binary tree kept in one vector in postorder.
//!
//! Postorder (left subtree, right subtree, node) makes the root the last
//! element, keeps every subtree in a contiguous slice and gives one canonical
//! byte encoding per tree, which the tree id and the wire format use. Leaves
//! appear in left-to-right order.
//!
//! A node is named on the wire by [`NodeId`], the member ids of its leftmost
//! and rightmost leaves. Within one tree the name is unique: a leaf is
//! `(m, m)`, and distinct internal nodes cover distinct leaf ranges with
//! distinct endpoints (a node and its left child share the first leaf, never
//! the last).
//!
//! The tree operations are the ones of TGDH (Kim, Perrig, Tsudik, TISSEC
//! 2004, section 4): [`Tree::pruned`] removes leaves (leave and partition:
//! the sibling of a removed node takes its parent's place) and
//! [`Tree::merged`] inserts a tree at the shallowest rightmost node where it
//! does not increase the height, or at the root (join and merge). Both clear
//! the blinded key of every node whose set of leaves changed.

use std::collections::{BTreeSet, VecDeque};

use sha2::{Digest, Sha256};

use super::MAX_MEMBERS;
use super::wire::{DecodeError, Reader};

/// Length of a blinded key (an X25519 public key, the u-coordinate).
pub(crate) const BK_LEN: usize = 32;

/// A blinded key: `X25519(k, 9)` for the node secret `k`.
pub(crate) type Bk = [u8; BK_LEN];

/// Names a node by the member ids of its leftmost and rightmost leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct NodeId {
    /// Member id of the leftmost leaf under the node.
    pub(crate) first: u32,
    /// Member id of the rightmost leaf under the node.
    pub(crate) last: u32,
}

/// What a node is: a member's leaf or an internal node with two children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// The leaf of a member.
    Leaf(u32),
    /// An internal node; indices of its children in the tree's vector.
    Inner { left: usize, right: usize },
}

/// One node of a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) shape: Shape,
    /// The blinded key, `None` while it is unknown (to be computed in this run).
    pub(crate) bk: Option<Bk>,
    pub(crate) parent: Option<usize>,
    pub(crate) id: NodeId,
    /// Height of the subtree: 0 for a leaf.
    pub(crate) height: u32,
    /// Number of leaves of the subtree.
    pub(crate) leaves: u32,
}

/// A key tree: structure and the blinded keys known; never empty; no secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tree {
    /// Postorder: children before parents, the root last.
    nodes: Vec<Node>,
}

/// Appends a leaf to a vector being built in postorder.
fn push_leaf(nodes: &mut Vec<Node>, member: u32, bk: Option<Bk>) -> usize {
    nodes.push(Node {
        shape: Shape::Leaf(member),
        bk,
        parent: None,
        id: NodeId { first: member, last: member },
        height: 0,
        leaves: 1,
    });
    nodes.len() - 1
}

/// Appends an internal node over two subtrees already in the vector.
fn push_inner(nodes: &mut Vec<Node>, left: usize, right: usize, bk: Option<Bk>) -> usize {
    let i = nodes.len();
    let (l, r) = (&nodes[left], &nodes[right]);
    let node = Node {
        shape: Shape::Inner { left, right },
        bk,
        parent: None,
        id: NodeId { first: l.id.first, last: r.id.last },
        height: 1 + l.height.max(r.height),
        leaves: l.leaves + r.leaves,
    };
    nodes[left].parent = Some(i);
    nodes[right].parent = Some(i);
    nodes.push(node);
    i
}

impl Tree {
    /// A tree of one leaf.
    pub(crate) fn leaf(member: u32, bk: Option<Bk>) -> Self {
        let mut nodes = Vec::with_capacity(1);
        push_leaf(&mut nodes, member, bk);
        Self { nodes }
    }

    /// Index of the root.
    pub(crate) fn root(&self) -> usize {
        self.nodes.len() - 1
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The node at index `i`.
    pub(crate) fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Sets or clears the blinded key of node `i`.
    pub(crate) fn set_bk(&mut self, i: usize, bk: Option<Bk>) {
        self.nodes[i].bk = bk;
    }

    /// Height of the whole tree.
    pub(crate) fn height(&self) -> u32 {
        self.nodes[self.root()].height
    }

    /// Number of leaves (members).
    pub(crate) fn leaf_count(&self) -> usize {
        self.nodes[self.root()].leaves as usize
    }

    /// `(index, member)` of every leaf, left to right.
    pub(crate) fn leaves(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.nodes.iter().enumerate().filter_map(|(i, n)| match n.shape {
            Shape::Leaf(m) => Some((i, m)),
            Shape::Inner { .. } => None,
        })
    }

    /// Index of `member`'s leaf.
    pub(crate) fn find_leaf(&self, member: u32) -> Option<usize> {
        self.find(NodeId { first: member, last: member })
    }

    /// Index of the node named `id`.
    pub(crate) fn find(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The other child of `i`'s parent.
    pub(crate) fn sibling(&self, i: usize) -> Option<usize> {
        let p = self.nodes[i].parent?;
        match self.nodes[p].shape {
            Shape::Inner { left, right } => Some(if left == i { right } else { left }),
            Shape::Leaf(_) => None,
        }
    }

    /// Index of the rightmost leaf under `i`: the sponsor of `i`.
    pub(crate) fn rightmost_leaf(&self, mut i: usize) -> usize {
        while let Shape::Inner { right, .. } = self.nodes[i].shape {
            i = right;
        }
        i
    }

    /// Whether `anc` is `i` or one of its ancestors.
    pub(crate) fn is_ancestor_or_self(&self, anc: usize, i: usize) -> bool {
        // Postorder: the subtree of `anc` is the slice ending at `anc`.
        let size = 2 * self.nodes[anc].leaves as usize - 1;
        i <= anc && i + size > anc
    }

    /// Indices from `i` up to the root, `i` first.
    pub(crate) fn path(&self, mut i: usize) -> Vec<usize> {
        let mut path = vec![i];
        while let Some(p) = self.nodes[i].parent {
            path.push(p);
            i = p;
        }
        path
    }

    /// This tree without the leaves of members not in `keep` (TGDH leave and
    /// partition, sections 4.2 and 4.4): when a leaf goes, its sibling subtree
    /// takes the place of their parent. A node keeps its blinded key only if
    /// it keeps all its leaves. Also returns the ids of the promoted subtrees,
    /// whose rightmost leaves are the paper's sponsors. `None` if no leaf is kept.
    pub(crate) fn pruned(&self, keep: &BTreeSet<u32>) -> Option<(Self, Vec<NodeId>)> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut promoted = Vec::new();
        self.copy_pruned(self.root(), keep, &mut out, &mut promoted)?;
        Some((Self { nodes: out }, promoted))
    }

    fn copy_pruned(
        &self,
        i: usize,
        keep: &BTreeSet<u32>,
        out: &mut Vec<Node>,
        promoted: &mut Vec<NodeId>,
    ) -> Option<usize> {
        let node = &self.nodes[i];
        match node.shape {
            Shape::Leaf(m) => keep.contains(&m).then(|| push_leaf(out, m, node.bk)),
            Shape::Inner { left, right } => {
                let l = self.copy_pruned(left, keep, out, promoted);
                let r = self.copy_pruned(right, keep, out, promoted);
                match (l, r) {
                    (Some(l), Some(r)) => {
                        let unchanged = out[l].leaves + out[r].leaves == node.leaves;
                        Some(push_inner(out, l, r, if unchanged { node.bk } else { None }))
                    }
                    (Some(x), None) | (None, Some(x)) => {
                        promoted.push(out[x].id);
                        Some(x)
                    }
                    (None, None) => None,
                }
            }
        }
    }

    /// The node where a tree of height `h` is inserted (TGDH join and merge,
    /// section 4.1 and 4.3): the shallowest node, rightmost among the
    /// shallowest, where inserting does not increase the height of this tree;
    /// the root if there is none.
    pub(crate) fn insertion_point(&self, h: u32) -> usize {
        let total = self.height();
        let mut queue = VecDeque::from([(self.root(), 0u32)]);
        while let Some((i, depth)) = queue.pop_front() {
            let node = &self.nodes[i];
            if depth + 1 + node.height.max(h) <= total {
                return i;
            }
            if let Shape::Inner { left, right } = node.shape {
                // Right before left: each level is visited right to left.
                if depth + 2 <= total {
                    queue.push_back((right, depth + 1));
                    queue.push_back((left, depth + 1));
                }
            }
        }
        self.root()
    }

    /// This tree with `other` inserted at [`Tree::insertion_point`]: a new
    /// internal node takes the insertion node's place, with the insertion node
    /// as its left child and `other` as its right child. The new node and its
    /// ancestors lose their blinded keys. Returns the tree and the index of
    /// the new node.
    pub(crate) fn merged(&self, other: &Self) -> (Self, usize) {
        let at = self.insertion_point(other.height());
        let mut out = Vec::with_capacity(self.nodes.len() + other.nodes.len() + 1);
        let mut joined = 0;
        self.copy_grafted(self.root(), at, other, &mut out, &mut joined);
        (Self { nodes: out }, joined)
    }

    fn copy_grafted(
        &self,
        i: usize,
        at: usize,
        other: &Self,
        out: &mut Vec<Node>,
        joined: &mut usize,
    ) -> usize {
        if i == at {
            let l = self.copy_subtree(i, out);
            let r = other.copy_subtree(other.root(), out);
            *joined = push_inner(out, l, r, None);
            return *joined;
        }
        let node = &self.nodes[i];
        match node.shape {
            Shape::Leaf(m) => push_leaf(out, m, node.bk),
            Shape::Inner { left, right } => {
                let l = self.copy_grafted(left, at, other, out, joined);
                let r = self.copy_grafted(right, at, other, out, joined);
                let bk = if self.is_ancestor_or_self(i, at) { None } else { node.bk };
                push_inner(out, l, r, bk)
            }
        }
    }

    /// Appends the subtree of `i` unchanged; returns its new root index.
    fn copy_subtree(&self, i: usize, out: &mut Vec<Node>) -> usize {
        let node = &self.nodes[i];
        match node.shape {
            Shape::Leaf(m) => push_leaf(out, m, node.bk),
            Shape::Inner { left, right } => {
                let l = self.copy_subtree(left, out);
                let r = self.copy_subtree(right, out);
                push_inner(out, l, r, node.bk)
            }
        }
    }

    /// The wire form of a complete tree:
    ///
    /// ```text
    ///   u16 leaf count, then 2 * count - 1 nodes in postorder, each
    ///   0x00 ‖ u32 member ‖ bk[32]      a leaf
    ///   0x01 ‖ bk[32]                   an internal node (its children precede it)
    /// ```
    ///
    /// An unknown blinded key (never in a tree that is sent) is written as zeros.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.leaf_count() as u16).to_be_bytes());
        for node in &self.nodes {
            match node.shape {
                Shape::Leaf(m) => {
                    out.push(0);
                    out.extend_from_slice(&m.to_be_bytes());
                }
                Shape::Inner { .. } => out.push(1),
            }
            out.extend_from_slice(&node.bk.unwrap_or([0; BK_LEN]));
        }
    }

    /// Reads a tree in the form of [`Tree::encode`]: 1 to [`MAX_MEMBERS`]
    /// leaves with distinct members, every blinded key present.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = usize::from(r.u16()?);
        if count == 0 || count > MAX_MEMBERS {
            return Err(DecodeError::TooMany { what: "tree leaves", count });
        }
        let total = 2 * count - 1;
        let mut nodes = Vec::with_capacity(total);
        let mut stack = Vec::new();
        let mut members = BTreeSet::new();
        for _ in 0..total {
            let i = match r.u8()? {
                0 => {
                    let m = r.u32()?;
                    if !members.insert(m) {
                        return Err(DecodeError::DuplicateMember(m));
                    }
                    push_leaf(&mut nodes, m, Some(r.array()?))
                }
                1 => {
                    let bk = r.array()?;
                    let (Some(right), Some(left)) = (stack.pop(), stack.pop()) else {
                        return Err(DecodeError::BadTree);
                    };
                    push_inner(&mut nodes, left, right, Some(bk))
                }
                tag => return Err(DecodeError::UnknownTag(tag)),
            };
            stack.push(i);
        }
        if stack.len() != 1 {
            return Err(DecodeError::BadTree);
        }
        Ok(Self { nodes })
    }

    /// Feeds the structure and the known blinded keys to `hash`, marking
    /// unknown ones, so that two trees hash alike only if they are equal.
    pub(crate) fn digest(&self, hash: &mut Sha256) {
        hash.update((self.nodes.len() as u64).to_be_bytes());
        for node in &self.nodes {
            match node.shape {
                Shape::Leaf(m) => {
                    hash.update([0]);
                    hash.update(m.to_be_bytes());
                }
                Shape::Inner { .. } => hash.update([1]),
            }
            match &node.bk {
                Some(bk) => {
                    hash.update([1]);
                    hash.update(bk);
                }
                None => hash.update([0]),
            }
        }
    }
}

#[cfg(test)]
impl Tree {
    /// A tree from a nested spec like `"((1 2) 3)"`, every blinded key set to
    /// a distinct dummy value; a `?` after a node leaves its blinded key unknown.
    pub(crate) fn from_spec(spec: &str) -> Self {
        fn node(s: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut Vec<Node>) -> usize {
            while s.peek() == Some(&' ') {
                s.next();
            }
            let i = if s.peek() == Some(&'(') {
                s.next();
                let l = node(s, out);
                let r = node(s, out);
                while s.peek() == Some(&' ') {
                    s.next();
                }
                assert_eq!(s.next(), Some(')'));
                push_inner(out, l, r, None)
            } else {
                let mut digits = String::new();
                while let Some(c) = s.peek().filter(|c| c.is_ascii_digit()) {
                    digits.push(*c);
                    s.next();
                }
                push_leaf(out, digits.parse().expect("a member id"), None)
            };
            if s.peek() == Some(&'?') {
                s.next();
            } else {
                let mut bk = [0; BK_LEN];
                bk[..4].copy_from_slice(&(i as u32 + 1).to_be_bytes());
                bk[4..12].copy_from_slice(&u64::from(out[i].id.first).to_be_bytes());
                bk[12..20].copy_from_slice(&u64::from(out[i].id.last).to_be_bytes());
                out[i].bk = Some(bk);
            }
            i
        }
        let mut out = Vec::new();
        let mut chars = spec.chars().peekable();
        node(&mut chars, &mut out);
        assert_eq!(chars.next(), None, "trailing input in {spec}");
        Self { nodes: out }
    }

    /// The nested spec of this tree, `?` marking unknown blinded keys.
    pub(crate) fn spec(&self) -> String {
        fn node(t: &Tree, i: usize, out: &mut String) {
            match t.nodes[i].shape {
                Shape::Leaf(m) => out.push_str(&m.to_string()),
                Shape::Inner { left, right } => {
                    out.push('(');
                    node(t, left, out);
                    out.push(' ');
                    node(t, right, out);
                    out.push(')');
                }
            }
            if t.nodes[i].bk.is_none() {
                out.push('?');
            }
        }
        let mut out = String::new();
        node(self, self.root(), &mut out);
        out
    }
}
