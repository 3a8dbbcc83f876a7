//! The simulated network: seeded loss, duplication, reordering and delay.

use crate::Time;
use bytes::Bytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// How the simulated network treats datagrams. Probabilities are per copy.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    /// Probability that a datagram copy is lost (until the network heals).
    pub loss: f64,
    /// Probability that a datagram copy is delivered twice.
    pub dup: f64,
    /// Probability that a copy gets an extra delay, overtaking others.
    pub reorder: f64,
    /// Shortest one-way delay.
    pub min_delay: Duration,
    /// Longest one-way delay (without reordering).
    pub max_delay: Duration,
    /// Longest extra delay of a reordered copy.
    pub reorder_delay: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            min_delay: Duration::from_micros(20),
            max_delay: Duration::from_micros(120),
            reorder_delay: Duration::from_micros(500),
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Time,
    order: u64,
    to: usize,
    bytes: Bytes,
}

/// Datagrams in flight, delivered in time order (ties in send order).
#[derive(Debug)]
pub(crate) struct Network {
    cfg: NetConfig,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    /// Loss applies only while this is true.
    pub(crate) lossy: bool,
    /// `reachable[from][to]`: false drops every datagram on that path.
    pub(crate) reachable: Vec<Vec<bool>>,
    /// `burst[from][to]`: extra loss probability on that path until a time.
    pub(crate) burst: Vec<Vec<Option<(f64, Time)>>>,
}

impl Network {
    pub(crate) fn new(cfg: NetConfig, rng: ChaCha8Rng, nodes: usize) -> Self {
        Self {
            cfg,
            rng,
            queue: BinaryHeap::new(),
            order: 0,
            lossy: true,
            reachable: vec![vec![true; nodes]; nodes],
            burst: vec![vec![None; nodes]; nodes],
        }
    }

    fn delay(&mut self) -> Duration {
        let (lo, hi) = (self.cfg.min_delay.as_nanos() as u64, self.cfg.max_delay.as_nanos() as u64);
        let mut d = Duration::from_nanos(self.rng.random_range(lo..=hi.max(lo)));
        if self.cfg.reorder > 0.0 && self.rng.random_bool(self.cfg.reorder) {
            let extra = self.cfg.reorder_delay.as_nanos() as u64;
            d += Duration::from_nanos(self.rng.random_range(0..=extra));
        }
        d
    }

    /// Sends one copy from `from` to `to` at `now`, subject to the model.
    pub(crate) fn send(&mut self, now: Time, from: usize, to: usize, bytes: &Bytes) {
        if !self.reachable[from][to] {
            return;
        }
        if self.lossy && self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
            return;
        }
        if let Some((p, until)) = self.burst[from][to] {
            if now < until && self.rng.random_bool(p) {
                return;
            }
        }
        let copies = if self.cfg.dup > 0.0 && self.rng.random_bool(self.cfg.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = now + self.delay();
            self.order += 1;
            self.queue.push(Reverse(InFlight { at, order: self.order, to, bytes: bytes.clone() }));
        }
    }

    /// When the next datagram arrives.
    pub(crate) fn next_time(&self) -> Option<Time> {
        self.queue.peek().map(|Reverse(f)| f.at)
    }

    /// Heals every fault: full reachability, no burst loss, no base loss.
    pub(crate) fn heal(&mut self) {
        self.lossy = false;
        for row in &mut self.reachable {
            row.fill(true);
        }
        for row in &mut self.burst {
            row.fill(None);
        }
    }

    /// Takes the next datagram due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<(usize, Bytes)> {
        if self.next_time()? > now {
            return None;
        }
        self.queue.pop().map(|Reverse(f)| (f.to, f.bytes))
    }
}
