//! Key agreement and link sealing on a small perfect network.

use super::*;
use crate::ring::{Config, Dest, Event};
use crate::{Incarnation, Node, Phase};
use std::collections::VecDeque;

fn identity(i: u16) -> SecretIdentity {
    SecretIdentity::from_bytes(&[i as u8 + 1; 32])
}

fn security(mode: LinkMode, n: u16, me: u16) -> SecurityConfig {
    SecurityConfig {
        mode,
        identity: Some(Arc::new(identity(me))),
        peers: (0..n).map(|i| (NodeId(i), identity(i).public())).collect(),
        aead: Backend::Ring,
        refresh_after: None,
        refresh_bytes: None,
        seed: [me as u8; 32],
        incarnation: 1,
    }
}

/// Daemons on a lossless network that delivers in send order.
pub(super) struct Net {
    pub(super) nodes: Vec<Node>,
    pub(super) now: Time,
    queue: VecDeque<(usize, Bytes)>,
    pub(super) events: Vec<Vec<Event>>,
    /// Every datagram that crossed the wire.
    pub(super) wire: Vec<Bytes>,
}

impl Net {
    pub(super) fn new(n: u16, mode: LinkMode) -> Self {
        let nodes = (0..n)
            .map(|i| {
                let inc = Incarnation { ring_seq: 0, first_msg_seq: 1 };
                Node::with_security(Config::default(), NodeId(i), Time::ZERO, inc, security(mode, n, i))
                    .unwrap()
            })
            .collect();
        Self {
            nodes,
            now: Time::ZERO,
            queue: VecDeque::new(),
            events: vec![Vec::new(); n as usize],
            wire: Vec::new(),
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            self.wire.push(t.bytes.clone());
            match t.dest {
                Dest::All => {
                    for j in 0..self.nodes.len() {
                        if j != i {
                            self.queue.push_back((j, t.bytes.clone()));
                        }
                    }
                }
                Dest::Node(id) => self.queue.push_back((usize::from(id.0), t.bytes)),
            }
        }
        while let Some(e) = self.nodes[i].poll_event() {
            self.events[i].push(e);
        }
    }

    /// Runs until `until` (virtual time) or `done` holds.
    pub(super) fn run(&mut self, until: Time, mut done: impl FnMut(&Self) -> bool) -> bool {
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
        let mut steps = 0u64;
        while self.now < until {
            if done(self) {
                return true;
            }
            steps += 1;
            assert!(steps < 2_000_000, "too many steps");
            if let Some((to, bytes)) = self.queue.pop_front() {
                self.now = self.now + std::time::Duration::from_micros(5);
                self.nodes[to].handle_datagram(self.now, bytes);
                self.drain(to);
                continue;
            }
            let next = self.nodes.iter().filter_map(Node::poll_timeout).min().unwrap_or(until);
            self.now = self.now.max(next);
            for i in 0..self.nodes.len() {
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                    self.drain(i);
                }
            }
        }
        done(self)
    }

    pub(super) fn all_keyed(&self) -> bool {
        let keys: Vec<_> = self.nodes.iter().map(Node::server_key).collect();
        keys.iter().all(|k| k.is_some() && *k == keys[0])
            && self.nodes.iter().all(|n| {
                n.phase() == Phase::Operational && n.ring().is_some_and(|(_, m)| m.len() == self.nodes.len())
            })
    }
}

#[test]
fn three_daemons_agree_on_a_server_key_and_seal_with_it() {
    let mut net = Net::new(3, LinkMode::Encrypt);
    let ok = net.run(Time::ZERO + std::time::Duration::from_secs(5), Net::all_keyed);
    for n in &net.nodes {
        eprintln!("{:?} {:?} {:?} {:?}", n.id(), n.phase(), n.server_key(), n.security_stats());
    }
    assert!(ok, "no common key by {}", net.now);
    // The regular configuration reached the owner only with the key.
    for ev in &net.events {
        assert!(ev.iter().any(|e| matches!(e, Event::Configuration(c) if c.members.len() == 3)));
    }
    // Once every member holds the key, datagrams go sealed.
    let keyed_at = net.wire.len();
    net.run(net.now + std::time::Duration::from_millis(50), |_| false);
    assert!(net.nodes.iter().all(|n| n.security_stats().unwrap().sealed > 0));
    assert!(net.wire[keyed_at..].iter().any(|d| d[0] == 0xE2));
}

#[test]
#[ignore]
fn debug_sim_seed() {
    use crate::sim::{FaultKinds, SimConfig, run};
    let seed: u64 = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut cfg = SimConfig::with_faults(seed, 3);
    cfg.faults = FaultKinds::parse("crash").unwrap();
    cfg.fault_count = 1;
    cfg.security = Some(LinkMode::Encrypt);
    cfg.time_limit = std::time::Duration::from_secs(10);
    let t = std::time::Instant::now();
    let r = run(&cfg);
    eprintln!(
        "took {:?} end {} datagrams {} violations {:?}",
        t.elapsed(),
        r.end,
        r.datagrams,
        r.violations.iter().take(5).map(ToString::to_string).collect::<Vec<_>>()
    );
}
