//! Cost of one join and one leave for each layered key agreement protocol,
//! at group sizes 2, 8, 32 and 100 (issue 12; the paper's layered baseline,
//! "Scaling Secure Group Communication Systems", section 5.1).
//!
//! All members run in this one process over an in-memory virtual-synchrony
//! group (one queue: broadcasts to every member in order, unicasts to one),
//! so the time is the *sum* of every member's computation for the run,
//! signatures and their checks included, with no network. The counts come
//! from each member's [`Costs`]: exponentiations (X25519 operations and
//! ristretto255 scalar multiplications), signatures, verifications,
//! messages and bytes; "rounds" is the longest causal chain of messages.
//!
//! The join adds one member (listed last, as the newest); the leave removes
//! the member in the middle of the view (never the oldest or newest, so
//! neither the CKD nor the GDH controller).
//!
//! `cargo bench -p ringfence-crypto --bench layered [-- REPEATS]`
//!
//! Prints a markdown table: the median time over REPEATS runs (default 5)
//! and the counts (identical in every run).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ringfence_crypto::identity::{PublicIdentity, SecretIdentity};
use ringfence_crypto::layered::{Agreement, Change, Costs, Dest, Protocol, Transmit, View};

struct Group {
    rng: ChaCha20Rng,
    agreements: BTreeMap<u32, Agreement>,
    directory: BTreeMap<u32, PublicIdentity>,
    members: Vec<u32>,
    next_id: u32,
    epoch: u64,
}

/// What one run cost, summed over the members.
#[derive(Default)]
struct Run {
    time: Duration,
    costs: Costs,
    max_exp: u64,
    rounds: u32,
}

impl Group {
    fn new(protocol: Protocol, n: usize, seed: u64) -> Self {
        let mut g = Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            agreements: BTreeMap::new(),
            directory: BTreeMap::new(),
            members: Vec::new(),
            next_id: 1,
            epoch: 0,
        };
        let members = (0..n).map(|_| g.spawn(protocol)).collect();
        g.view(members, Change::Merge);
        g
    }

    fn spawn(&mut self, protocol: Protocol) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut secret = [0; 32];
        self.rng.fill_bytes(&mut secret);
        let identity = SecretIdentity::from_bytes(&secret);
        self.directory.insert(id, identity.public());
        let rng = Box::new(ChaCha20Rng::seed_from_u64(self.rng.next_u64()));
        self.agreements.insert(id, Agreement::new(protocol, b"bench", id, identity, rng).unwrap());
        id
    }

    /// Installs a view and runs it to completion; returns its cost.
    fn view(&mut self, members: Vec<u32>, change: Change) -> Run {
        self.epoch += 1;
        let before: Vec<Costs> = members.iter().map(|m| self.agreements[m].costs()).collect();
        let start = Instant::now();
        let mut queue: VecDeque<(u32, u32, Transmit)> = VecDeque::new();
        let view = View { epoch: self.epoch, members: members.clone(), change };
        for m in &members {
            let a = self.agreements.get_mut(m).unwrap();
            a.handle_view(view.clone()).unwrap();
            while let Some(t) = a.poll_transmit() {
                queue.push_back((*m, 1, t));
            }
        }
        let mut rounds = 0;
        while let Some((from, round, t)) = queue.pop_front() {
            rounds = rounds.max(round);
            let to = match t.dest {
                Dest::All => members.clone(),
                Dest::Member(m) => vec![m],
            };
            for m in to {
                let a = self.agreements.get_mut(&m).unwrap();
                a.handle_message(from, &t.bytes, &self.directory).unwrap();
                while let Some(out) = a.poll_transmit() {
                    queue.push_back((m, round + 1, out));
                }
            }
        }
        let time = start.elapsed();
        let key = self.agreements[&members[0]].key().map(|(e, k)| (e, k.clone()));
        assert_eq!(key.as_ref().map(|(e, _)| *e), Some(self.epoch));
        assert!(members.iter().all(|m| self.agreements[m].key().map(|(e, k)| (e, k.clone())) == key));
        self.members = members.clone();
        let mut run = Run { time, rounds, ..Run::default() };
        for (m, b) in members.iter().zip(before) {
            let c = self.agreements[m].costs() - b;
            run.max_exp = run.max_exp.max(c.exponentiations);
            run.costs.exponentiations += c.exponentiations;
            run.costs.inversions += c.inversions;
            run.costs.signatures += c.signatures;
            run.costs.verifications += c.verifications;
            run.costs.messages += c.messages;
            run.costs.bytes += c.bytes;
        }
        run
    }
}

fn measure(protocol: Protocol, n: usize, op: &str, repeats: usize) -> Run {
    let mut runs = Vec::with_capacity(repeats);
    for r in 0..repeats {
        let mut g = Group::new(protocol, n, 1000 + r as u64);
        let run = if op == "join" {
            let j = g.spawn(protocol);
            let members = [g.members.clone(), vec![j]].concat();
            g.view(members, Change::Join { joined: vec![j] })
        } else {
            let left = g.members[g.members.len() / 2];
            let members = g.members.iter().copied().filter(|&m| m != left).collect();
            g.view(members, Change::Leave { left: vec![left] })
        };
        runs.push(run);
    }
    runs.sort_by_key(|r| r.time);
    runs.swap_remove(repeats / 2)
}

fn main() {
    // `cargo bench` passes `--bench`; take the first numeric argument as REPEATS.
    let repeats = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    println!(
        "| protocol | op | n | time (ms, all members) | exps total | exps max member | inversions | signatures | verifications | messages | bytes | rounds |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for protocol in Protocol::ALL {
        for op in ["join", "leave"] {
            for n in [2, 8, 32, 100] {
                let r = measure(protocol, n, op, repeats);
                println!(
                    "| {protocol} | {op} | {n} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.time.as_secs_f64() * 1e3,
                    r.costs.exponentiations,
                    r.max_exp,
                    r.costs.inversions,
                    r.costs.signatures,
                    r.costs.verifications,
                    r.costs.messages,
                    r.costs.bytes,
                    r.rounds,
                );
            }
        }
    }
}
