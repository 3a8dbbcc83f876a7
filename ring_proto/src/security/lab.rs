//! A tiny lossless network of secured daemons on a virtual clock, for
//! tests and for measuring how long key agreement takes (`ringfence-bench`'s
//! `keytime` example). Every hop takes [`Lab::hop`]; CPU time is not
//! modelled, so what it measures is the protocol's rounds.

use super::{LinkMode, SecurityConfig};
use crate::ring::{Config, Dest, Event};
use crate::wire::NodeId;
use crate::{Incarnation, Node, Phase, Time};
use bytes::Bytes;
use ringfence_crypto::aead::Backend;
use ringfence_crypto::identity::SecretIdentity;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Daemon `i`'s identity in the lab (fixed, for repeatable runs).
pub fn identity(i: u16) -> SecretIdentity {
    let mut b = [0u8; 32];
    b[..2].copy_from_slice(&i.to_be_bytes());
    b[2] = 0x1a;
    SecretIdentity::from_bytes(&b)
}

/// Daemon `me`'s security settings among `n` lab daemons.
pub fn security(mode: LinkMode, n: u16, me: u16) -> SecurityConfig {
    SecurityConfig {
        mode,
        identity: Some(Arc::new(identity(me))),
        peers: (0..n).map(|i| (NodeId(i), identity(i).public())).collect(),
        aead: Backend::Ring,
        refresh_after: None,
        refresh_bytes: None,
        seed: [me as u8; 32],
        incarnation: 1,
        policy_digest: crate::security::policy::Policy::default().digest(),
    }
}

/// Secured daemons on a lossless network that delivers in send order.
#[derive(Debug)]
pub struct Lab {
    /// The daemons; `None` once crashed.
    pub nodes: Vec<Option<Node>>,
    /// Virtual time.
    pub now: Time,
    /// Time one datagram takes.
    pub hop: Duration,
    queue: VecDeque<(Time, usize, Bytes)>,
    /// Events each daemon produced.
    pub events: Vec<Vec<Event>>,
    /// Every datagram that crossed the wire.
    pub wire: Vec<Bytes>,
    /// An attacker on the path: each datagram daemon `from` sends to daemon
    /// `to` is also delivered, at the same time, to `also` (with `from`'s
    /// source, as a spoofing attacker would).
    pub redirect: Option<Redirect>,
    /// Datagrams delivered by `redirect`.
    pub redirected: u64,
}

/// See [`Lab::redirect`].
#[derive(Clone, Copy, Debug)]
pub struct Redirect {
    /// The sender whose datagrams are copied.
    pub from: usize,
    /// The receiver they are addressed to.
    pub to: usize,
    /// Where the copies go.
    pub also: usize,
}

impl Lab {
    /// `n` daemons (ids 0..n), all starting now, with link mode `mode`.
    pub fn new(n: u16, mode: LinkMode) -> Self {
        let nodes = (0..n)
            .map(|i| {
                let inc = Incarnation { ring_seq: 0, first_msg_seq: 1 };
                Node::with_security(Config::default(), NodeId(i), Time::ZERO, inc, security(mode, n, i)).ok()
            })
            .collect();
        Self {
            nodes,
            now: Time::ZERO,
            hop: Duration::from_micros(50),
            queue: VecDeque::new(),
            events: vec![Vec::new(); usize::from(n)],
            wire: Vec::new(),
            redirect: None,
            redirected: 0,
        }
    }

    /// Puts `bytes` on the wire to daemon `to` (an attacker's datagram),
    /// arriving one hop from now.
    pub fn inject(&mut self, to: usize, bytes: Bytes) {
        self.queue.push_back((self.now + self.hop, to, bytes));
    }

    /// Stops daemon `i` for good (its datagrams in flight still arrive).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Daemon `i` leaves cleanly ([`Node::leave`]): its leave goes on the
    /// wire, then it is gone.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(n) = self.nodes[i].as_mut() {
            n.leave(now);
            debug_assert_eq!(n.phase(), Phase::Left);
        }
        self.drain(i);
        self.nodes[i] = None;
    }

    fn drain(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else { return };
        while let Some(t) = node.poll_transmit() {
            self.wire.push(t.bytes.clone());
            let at = self.now + self.hop;
            match t.dest {
                Dest::All => {
                    for j in 0..self.events.len() {
                        if j != i {
                            self.queue.push_back((at, j, t.bytes.clone()));
                        }
                    }
                }
                // A daemon the lab does not have (a forged join may name
                // one): nowhere to go, as in the daemon.
                Dest::Node(id) if usize::from(id.0) >= self.events.len() => {}
                Dest::Node(id) => {
                    let to = usize::from(id.0);
                    if let Some(r) = self.redirect.filter(|r| r.from == i && r.to == to) {
                        self.queue.push_back((at, r.also, t.bytes.clone()));
                        self.redirected += 1;
                    }
                    self.queue.push_back((at, to, t.bytes));
                }
            }
        }
        while let Some(e) = node.poll_event() {
            self.events[i].push(e);
        }
    }

    /// Runs until `until` (virtual time) or until `done` holds; returns
    /// whether it holds.
    pub fn run(&mut self, until: Time, mut done: impl FnMut(&Self) -> bool) -> bool {
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
        while self.now < until {
            if done(self) {
                return true;
            }
            let next_datagram = self.queue.front().map(|(t, _, _)| *t);
            let next_timer = self.nodes.iter().flatten().filter_map(Node::poll_timeout).min();
            let next = match (next_datagram, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => until,
            };
            self.now = self.now.max(next).min(until);
            while self.queue.front().is_some_and(|(t, _, _)| *t <= self.now) {
                let Some((_, to, bytes)) = self.queue.pop_front() else { break };
                if let Some(n) = self.nodes[to].as_mut() {
                    n.handle_datagram(self.now, bytes);
                    self.drain(to);
                }
            }
            for i in 0..self.nodes.len() {
                let due = self.nodes[i].as_ref().and_then(Node::poll_timeout).is_some_and(|t| t <= self.now);
                if due {
                    if let Some(n) = self.nodes[i].as_mut() {
                        n.handle_timeout(self.now);
                    }
                    self.drain(i);
                }
            }
        }
        done(self)
    }

    /// Whether every live daemon is operational in one ring of all live
    /// daemons and holds that ring's server key, the same everywhere.
    pub fn all_keyed(&self) -> bool {
        let live: Vec<&Node> = self.nodes.iter().flatten().collect();
        let Some(first) = live.first() else { return false };
        let Some((ring, _, kid)) = first.server_key() else { return false };
        live.iter().all(|n| {
            n.phase() == Phase::Operational
                && n.ring().is_some_and(|(r, m)| r == ring && m.len() == live.len())
                && n.server_key() == Some((ring, n.server_key().map_or(0, |k| k.1), kid))
        })
    }
}
