//! A tiny lossless network of secured daemons on a virtual clock, for
//! tests and for measuring how long key agreement takes (`ringfence-bench`'s
//! `keytime` example). Every hop takes [`Lab::hop`]; CPU time is not
//! modelled, so what it measures is the protocol's rounds.
//!
//! Each daemon is the daemons' own core ([`Server`]: node, client groups,
//! client sessions) with one client, which sends what [`Lab::submit`] is
//! given to the group [`LAB_GROUP`]. The node's events (the groups layer's
//! own messages among them) are kept in [`Lab::events`].

use super::{LinkMode, SecurityConfig};
use crate::groups::{Body, ClientId, GroupMsg};
use crate::node::Alert;
use crate::ring::{Config, Dest, Event};
use crate::server::{Observed, Server, ServerConfig, ServerEvent};
use crate::wire::client::{ClientFrame, Multicast};
use crate::wire::{MsgId, NodeId, Service};
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

/// The group the lab's clients send to (no client is a member).
pub const LAB_GROUP: &str = "lab";
/// The client of every lab daemon.
const LAB_CLIENT: ClientId = ClientId(1);

/// A lab daemon's core around `node`, with its client connected.
fn server(node: Node) -> Server {
    let name = format!("d{}", node.id().0);
    let cfg = ServerConfig { groups_check: Duration::ZERO, observe: true, ..ServerConfig::new(name) };
    let mut s = Server::new(node, cfg);
    let _ = s.handle_connect(Time::ZERO, LAB_CLIENT, "lab", "unix:0", true);
    s
}

/// The client payload a delivered ring message carries, if it is a client
/// multicast (not one of the groups layer's own messages).
pub fn client_payload(e: &Event) -> Option<Bytes> {
    let Event::Deliver(d) = e else { return None };
    match GroupMsg::decode(&d.payload) {
        Ok(GroupMsg { body: Body::Data { payload, .. }, .. }) => Some(payload),
        _ => None,
    }
}

/// Secured daemons on a lossless network that delivers in send order.
#[derive(Debug)]
pub struct Lab {
    /// The daemons; `None` once crashed.
    nodes: Vec<Option<Server>>,
    /// Alerts each daemon raised.
    pub alerts: Vec<Vec<Alert>>,
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
                Node::with_security(Config::default(), NodeId(i), Time::ZERO, inc, security(mode, n, i))
                    .ok()
                    .map(server)
            })
            .collect();
        Self {
            nodes,
            alerts: vec![Vec::new(); usize::from(n)],
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

    /// Daemon `i`'s node, unless it crashed.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes[i].as_ref().map(Server::node)
    }

    /// The nodes of the live daemons.
    pub fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten().map(Server::node)
    }

    /// Daemon `i` runs `node` from now on (another incarnation, other
    /// settings).
    pub fn replace(&mut self, i: usize, node: Node) {
        self.nodes[i] = Some(server(node));
    }

    /// Takes daemon `i`'s node out of the lab, to drive it by hand.
    pub fn take(&mut self, i: usize) -> Option<Node> {
        self.nodes[i].take().map(Server::into_node)
    }

    /// Daemon `i`'s client sends `payload` (agreed) to [`LAB_GROUP`];
    /// false if the daemon is down or its ring is backlogged.
    pub fn submit(&mut self, i: usize, payload: Bytes) -> bool {
        let now = self.now;
        let Some(s) = self.nodes[i].as_mut().filter(|s| !s.backlogged()) else { return false };
        let m = Multicast {
            service: Service::Agreed,
            msg_type: 0,
            self_discard: false,
            sealed: false,
            groups: crate::wire::Groups::encode(&[LAB_GROUP]).expect("a valid name"),
            payload,
        };
        s.handle_client(now, LAB_CLIENT, ClientFrame::Multicast(m));
        self.drain(i);
        true
    }

    /// The client payloads daemon `i` delivered, with their ids, in order.
    pub fn delivered(&self, i: usize) -> impl Iterator<Item = (MsgId, Bytes)> + '_ {
        self.events[i].iter().filter_map(|e| match e {
            Event::Deliver(d) => client_payload(e).map(|p| (d.id, p)),
            _ => None,
        })
    }

    /// Whether every daemon (crashed ones included) delivered `payload`.
    pub fn delivered_everywhere(&self, payload: &[u8]) -> bool {
        (0..self.events.len()).all(|i| self.delivered(i).any(|(_, p)| p == payload))
    }

    /// Daemon `i` hands `bytes` to its node now, as from the network.
    pub fn receive(&mut self, i: usize, bytes: Bytes) {
        let now = self.now;
        if let Some(s) = self.nodes[i].as_mut() {
            s.handle_datagram(now, bytes);
        }
        self.drain(i);
    }

    /// Stops daemon `i` for good (its datagrams in flight still arrive).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Daemon `i` leaves cleanly ([`Server::leave`]): its leave goes on the
    /// wire, then it is gone.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(n) = self.nodes[i].as_mut() {
            n.leave(now, "the lab's leave");
            debug_assert_eq!(n.node().phase(), Phase::Left);
        }
        self.drain(i);
        self.nodes[i] = None;
    }

    fn drain(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else { return };
        while node.poll_client().is_some() {}
        while let Some(e) = node.poll_event() {
            if let ServerEvent::Alert(a) = e {
                self.alerts[i].push(a);
            }
        }
        if let Some(seq) = node.poll_persist() {
            node.persisted(seq);
        }
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
        while let Some(o) = node.poll_observed() {
            if let Observed::Node(e) = o {
                self.events[i].push(e);
            }
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
            let now = self.now;
            let next_timer = self.nodes.iter_mut().flatten().filter_map(|s| s.poll_timeout(now)).min();
            let next = match (next_datagram, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => until,
            };
            self.now = self.now.max(next).min(until);
            while self.queue.front().is_some_and(|(t, _, _)| *t <= self.now) {
                let Some((_, to, bytes)) = self.queue.pop_front() else { break };
                self.receive(to, bytes);
            }
            for i in 0..self.nodes.len() {
                let now = self.now;
                let Some(s) = self.nodes[i].as_mut() else { continue };
                if s.poll_timeout(now).is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                    self.drain(i);
                }
            }
        }
        done(self)
    }

    /// Whether every live daemon is operational in one ring of all live
    /// daemons and holds that ring's server key, the same everywhere.
    pub fn all_keyed(&self) -> bool {
        let live: Vec<&Node> = self.live().collect();
        let Some(first) = live.first() else { return false };
        let Some((ring, _, kid)) = first.server_key() else { return false };
        live.iter().all(|n| {
            n.phase() == Phase::Operational
                && n.ring().is_some_and(|(r, m)| r == ring && m.len() == live.len())
                && n.server_key() == Some((ring, n.server_key().map_or(0, |k| k.1), kid))
        })
    }
}
