//! A tiny lossless network of secured daemons on a virtual clock, for
//! tests and for measuring how long key agreement takes (`ringfence-bench`'s
//! `keytime` example). Every hop takes [`Lab::hop`]; CPU time is not
//! modelled, so what it measures is the protocol's rounds.
//!
//! Each daemon is a daemon core ([`Server`], the object the daemon runtime
//! drives) with one client that joined the open group [`LAB_GROUP`];
//! [`Lab::multicast`] sends as that client, and [`Lab::received`] holds
//! what each client got. The node's events, every message a node took for
//! ordering and the alerts are kept for the tests.

use super::{LinkMode, SecurityConfig};
use crate::groups::{ClientEvent, ClientId};
use crate::ring::{Config, Dest, Event};
use crate::server::{Handled, Observed, Server, ServerConfig, ServerEvent};
use crate::wire::client::{ClientFrame, Multicast};
use crate::wire::{Groups, NodeId, Service};
use crate::{Alert, Incarnation, Node, Phase, Time};
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

/// The open group every lab client joins.
pub const LAB_GROUP: &[u8] = b"lab";

/// Each daemon's one client.
const CLIENT: ClientId = ClientId(1);

/// Secured daemons on a lossless network that delivers in send order.
#[derive(Debug)]
pub struct Lab {
    /// The daemons; `None` once crashed or gone.
    pub servers: Vec<Option<Server>>,
    /// Virtual time.
    pub now: Time,
    /// Time one datagram takes.
    pub hop: Duration,
    queue: VecDeque<(Time, usize, Bytes)>,
    /// Events each daemon's node produced.
    pub events: Vec<Vec<Event>>,
    /// Payloads each daemon's client received (multicasts to
    /// [`LAB_GROUP`]).
    pub received: Vec<Vec<Bytes>>,
    /// Alerts each daemon raised.
    pub alerts: Vec<Vec<Alert>>,
    /// Every ring payload a node took for ordering (the clients'
    /// multicasts as the groups layer wrapped them, and its own messages).
    pub submitted: Vec<Bytes>,
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
        let count = usize::from(n);
        let mut lab = Self {
            servers: (0..count).map(|_| None).collect(),
            now: Time::ZERO,
            hop: Duration::from_micros(50),
            queue: VecDeque::new(),
            events: vec![Vec::new(); count],
            received: vec![Vec::new(); count],
            alerts: vec![Vec::new(); count],
            submitted: Vec::new(),
            wire: Vec::new(),
            redirect: None,
            redirected: 0,
        };
        for i in 0..n {
            let inc = Incarnation { ring_seq: 0, first_msg_seq: 1 };
            let node =
                Node::with_security(Config::default(), NodeId(i), Time::ZERO, inc, security(mode, n, i));
            if let Ok(node) = node {
                lab.set_node(usize::from(i), node);
            }
        }
        lab
    }

    /// Daemon `i` becomes a core around `node` (a daemon started with other
    /// settings, or anew), with a new client in [`LAB_GROUP`].
    pub fn set_node(&mut self, i: usize, node: Node) {
        let mut cfg = ServerConfig::new(format!("lab{i}"));
        cfg.groups_check = Duration::ZERO;
        cfg.observe = true;
        let mut s = Server::new(node, cfg);
        let now = self.now;
        let joined =
            s.handle_connect(now, CLIENT, "client", "lab", true, crate::wire::client::CLIENT_VERSION).is_ok()
                && s.handle_client(now, CLIENT, ClientFrame::Join { group: "lab".into() }) == Handled::Done;
        debug_assert!(joined, "the lab client was refused");
        self.servers[i] = Some(s);
        self.drain(i);
    }

    /// Daemon `i`'s node, if it runs.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.servers[i].as_ref().map(Server::node)
    }

    /// The nodes of the running daemons.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.servers.iter().flatten().map(Server::node)
    }

    /// Daemon `i`'s client multicasts `payload` (agreed) to [`LAB_GROUP`].
    /// False if the daemon is gone, its ring refuses messages for now
    /// (backpressure), or the daemon refused the message.
    pub fn multicast(&mut self, i: usize, payload: Bytes) -> bool {
        let now = self.now;
        let Some(s) = self.servers[i].as_mut() else { return false };
        if s.backlogged() {
            return false;
        }
        let m = Multicast {
            service: Service::Agreed,
            msg_type: 0,
            self_discard: false,
            sealed: false,
            groups: Groups::encode(&[LAB_GROUP]).unwrap_or_default(),
            payload,
        };
        let done = s.handle_client(now, CLIENT, ClientFrame::Multicast(m)) == Handled::Done;
        self.drain(i);
        done
    }

    /// Whether every running daemon's groups layer shows every running
    /// daemon's client in [`LAB_GROUP`], with no state exchange under way:
    /// a multicast sent from now on reaches every client (one ordered before
    /// a client's join does not reach that client).
    pub fn joined(&self) -> bool {
        let live: Vec<NodeId> = self.nodes().map(Node::id).collect();
        self.servers.iter().flatten().all(|s| {
            !s.groups().exchanging()
                && s.groups().view(LAB_GROUP).is_some_and(|(_, members)| {
                    members.len() == live.len() && members.iter().all(|m| live.contains(&m.daemon))
                })
        })
    }

    /// Whether every running daemon's client received `payload`.
    pub fn everywhere(&self, payload: &[u8]) -> bool {
        self.servers
            .iter()
            .zip(&self.received)
            .filter(|(s, _)| s.is_some())
            .all(|(_, r)| r.iter().any(|p| p == payload))
    }

    /// Puts `bytes` on the wire to daemon `to` (an attacker's datagram),
    /// arriving one hop from now.
    pub fn inject(&mut self, to: usize, bytes: Bytes) {
        self.queue.push_back((self.now + self.hop, to, bytes));
    }

    /// Stops daemon `i` for good (its datagrams in flight still arrive).
    pub fn crash(&mut self, i: usize) {
        self.servers[i] = None;
    }

    /// Daemon `i` leaves cleanly ([`Server::leave`]): its leave goes on
    /// the wire, then it is gone.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(s) = self.servers[i].as_mut() {
            s.leave(now, "the lab asked");
            debug_assert_eq!(s.node().phase(), Phase::Left);
        }
        self.drain(i);
        self.servers[i] = None;
    }

    /// Takes daemon `i`'s outputs as a runtime would: client frames (the
    /// client's messages kept), events, the persist gate (made durable at
    /// once), datagrams.
    fn drain(&mut self, i: usize) {
        let n = self.servers.len();
        let Some(s) = self.servers[i].as_mut() else { return };
        while s.poll_client().is_some() {}
        while let Some(e) = s.poll_event() {
            if let ServerEvent::Alert(a) = e {
                self.alerts[i].push(a);
            }
        }
        while let Some(o) = s.poll_observed() {
            match o {
                Observed::Node(e) => self.events[i].push(e),
                Observed::Submitted { payload, .. } => self.submitted.push(payload),
                Observed::Client(_, ClientEvent::Message { payload, .. }) => self.received[i].push(payload),
                Observed::Client(..) => {}
            }
        }
        if let Some(seq) = s.poll_persist() {
            s.persisted(seq);
        }
        while let Some(t) = s.poll_transmit() {
            self.wire.push(t.bytes.clone());
            let at = self.now + self.hop;
            match t.dest {
                Dest::All => {
                    for j in 0..n {
                        if j != i {
                            self.queue.push_back((at, j, t.bytes.clone()));
                        }
                    }
                }
                // A daemon the lab does not have (a forged join may name
                // one): nowhere to go, as in the daemon.
                Dest::Node(id) if usize::from(id.0) >= n => {}
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
    }

    /// Runs until `until` (virtual time) or until `done` holds; returns
    /// whether it holds.
    pub fn run(&mut self, until: Time, mut done: impl FnMut(&Self) -> bool) -> bool {
        for i in 0..self.servers.len() {
            self.drain(i);
        }
        while self.now < until {
            if done(self) {
                return true;
            }
            let now = self.now;
            let next_datagram = self.queue.front().map(|(t, _, _)| *t);
            let next_timer = self.servers.iter_mut().flatten().filter_map(|s| s.poll_timeout(now)).min();
            let next = match (next_datagram, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => until,
            };
            self.now = self.now.max(next).min(until);
            let now = self.now;
            while self.queue.front().is_some_and(|(t, _, _)| *t <= now) {
                let Some((_, to, bytes)) = self.queue.pop_front() else { break };
                if let Some(s) = self.servers[to].as_mut() {
                    s.handle_datagram(now, bytes);
                    self.drain(to);
                }
            }
            for i in 0..self.servers.len() {
                let Some(s) = self.servers[i].as_mut() else { continue };
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
        let live: Vec<&Node> = self.nodes().collect();
        let Some(first) = live.first() else { return false };
        let Some((ring, _, kid)) = first.server_key() else { return false };
        live.iter().all(|n| {
            n.phase() == Phase::Operational
                && n.ring().is_some_and(|(r, m)| r == ring && m.len() == live.len())
                && n.server_key() == Some((ring, n.server_key().map_or(0, |k| k.1), kid))
        })
    }
}
