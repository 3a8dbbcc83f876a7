//! Issue 7 (b): rekeying N client groups after a daemon membership change,
//! integrated against layered (Amir et al., "Scaling Secure Group
//! Communication Systems: Beyond Peer-to-Peer", section 5.1, Figure 6:
//! groups of 13 clients).
//!
//! - **Integrated, in-process and sans-IO.** One daemon's groups layer
//!   (`ClientGroups` of daemon 0, encrypted links, a policy making every
//!   `bench.*` group keyed) holds N groups of 13 clients spread evenly over
//!   D daemons (3 or 5). A new ring forms with the same daemons: the new
//!   server key and the regular configuration come in, then the D `State`
//!   messages of the exchange (the other daemons' states are encoded before
//!   the clock starts: that is their work). Timed: from the regular
//!   configuration to every local member holding its new keyed view, which
//!   is the exchange (`State` decoding, `complete_exchange`) and N
//!   `install`s (N key derivations, view bookkeeping, the membership events).
//!   `optimized-evs` groups are installed in `complete_exchange` itself;
//!   `integrated-vs` groups first ask their members to flush, so their
//!   figure adds this daemon's work on the flush answers (the local
//!   clients' `flush_ok` calls and the 13 N ordered `FlushOk` deliveries),
//!   without the ring rounds that carry them.
//! - **Bare derivation.** N × (`group_key` + `group_key_id`), two
//!   HMAC-SHA256 each.
//! - **Layered baseline, computation only.** Per group, a TGDH run among the
//!   group's 13 clients (`ringfence_crypto::tgdh`, X25519), all 13
//!   members' computations in this one process: the merge of the members
//!   on one daemon back with the rest after a partition (with 3 daemons
//!   9 + 4 members, with 5 daemons 10 + 3), messages encoded and decoded,
//!   no network. Timed per group and multiplied by N. The paper's layered
//!   figure also includes each agreement's network rounds; this does not.
//!
//! `cargo run --profile bench -p ringfence-bench --example rekey [-- REPEATS [N,N,...]]`
//!
//! Prints markdown tables (medians and maxima over REPEATS runs, default 7).

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ringfence_crypto::aead::Key32;
use ringfence_crypto::kdf::{group_key, group_key_id};
use ringfence_crypto::tgdh::{Message, Tgdh};
use ringfence_proto::groups::{
    Body, ClientEvent, ClientGroups, ClientId, GroupKind, GroupMode, GroupMsg, Limits, StateEntry,
    StateGroup, ViewId,
};
use ringfence_proto::ring::{ConfigKind, Configuration, Delivery, Event, ServerKey};
use ringfence_proto::security::policy::{Policy, Rule};
use ringfence_proto::wire::Groups;
use ringfence_proto::{MsgId, NodeId, RingId, Service, Time};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clients per group (the paper's Figure 6).
const GROUP_SIZE: usize = 13;

fn group_name(i: usize) -> Bytes {
    Bytes::from(format!("bench.{i:05}"))
}

/// Client `j` of group `i` lives on daemon `j % daemons`.
fn client_name(i: usize, j: usize) -> Bytes {
    Bytes::from(format!("c{i}x{j}"))
}

/// One daemon's groups layer with N groups, driven through ring changes.
struct Daemon0 {
    groups: ClientGroups,
    daemons: usize,
    n: usize,
    mode: GroupMode,
    ring_seq: u64,
    msg_seq: u64,
    /// Local clients: (group index, client id).
    local: Vec<(usize, ClientId)>,
}

fn delivery(origin: usize, seq: u64, ring_id: RingId, groups: Groups, payload: Bytes) -> Delivery {
    Delivery {
        id: MsgId { origin: NodeId(origin as u16), seq },
        service: Service::Agreed,
        groups,
        payload,
        ring_id,
        ring_seq: seq,
    }
}

impl Daemon0 {
    fn new(daemons: usize, n: usize, mode: GroupMode) -> Self {
        let policy = Policy::new(vec![Rule { pattern: "bench.*".into(), mode, ..Rule::default() }]);
        let limits = Limits {
            max_clients: n * GROUP_SIZE + 16,
            max_members: 64,
            max_groups_per_client: 4,
            ..Limits::default()
        };
        let groups = ClientGroups::with_policy(NodeId(0), limits, Arc::new(policy), true);
        let mut d = Self { groups, daemons, n, mode, ring_seq: 0, msg_seq: 0, local: Vec::new() };
        d.setup();
        d
    }

    fn kind(&self) -> GroupKind {
        self.mode.kind().unwrap_or(GroupKind::Open)
    }

    fn ring_id(&self) -> RingId {
        RingId { seq: self.ring_seq, rep: NodeId(0) }
    }

    fn next_seq(&mut self) -> u64 {
        self.msg_seq += 1;
        self.msg_seq
    }

    fn config(&self, kind: ConfigKind) -> Event {
        let members = (0..self.daemons).map(|i| NodeId(i as u16)).collect();
        Event::Configuration(Configuration { kind, ring_id: self.ring_id(), members })
    }

    fn server_key(&self) -> Event {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&self.ring_seq.to_be_bytes());
        Event::ServerKey(ServerKey {
            ring_id: self.ring_id(),
            epoch: self.ring_seq << 16,
            key: Key32::from_bytes(k),
        })
    }

    /// Daemon `d`'s `State` for the current ring (d > 0), encoded.
    fn remote_state(&self, d: usize, in_view: bool) -> Bytes {
        let (kind, mode) = (self.kind(), self.mode);
        let clients = (0..self.n)
            .flat_map(|i| {
                (0..GROUP_SIZE).filter(move |j| j % self.daemons == d).map(move |j| StateEntry {
                    name: client_name(i, j),
                    groups: vec![StateGroup { name: group_name(i), kind, mode, in_view }],
                })
            })
            .collect();
        let body = Body::State {
            ring_id: self.ring_id(),
            part: 0,
            parts: 1,
            clients,
            keys: Vec::new(),
            expired: Vec::new(),
            views: Vec::new(),
        };
        GroupMsg { sender: Bytes::new(), body }.encode()
    }

    fn drain_clients(&mut self) -> (usize, Vec<(Bytes, ClientId, ringfence_proto::groups::FlushId)>) {
        let (mut keyed, mut flushes) = (0, Vec::new());
        while let Some((c, ev)) = self.groups.poll_client() {
            match ev {
                ClientEvent::Membership { kind: ConfigKind::Regular, key: Some(_), .. } => keyed += 1,
                ClientEvent::FlushRequest { group, flush } => flushes.push((group, c, flush)),
                _ => {}
            }
        }
        (keyed, flushes)
    }

    /// Connects the local clients and joins them (ordered in a transitional
    /// configuration, so they only take local effect), then forms the first
    /// ring, whose exchange installs every group's first view.
    fn setup(&mut self) {
        let now = Time::ZERO;
        self.ring_seq = 1;
        let (kind, mode) = (self.kind(), self.mode);
        for i in 0..self.n {
            for j in (0..GROUP_SIZE).filter(|j| j % self.daemons == 0) {
                let c = ClientId((i * GROUP_SIZE + j) as u64);
                self.groups.connect(c, &client_name(i, j)).expect("connect");
                self.groups.join_mode(c, &group_name(i), kind, mode).expect("join");
                self.local.push((i, c));
            }
        }
        self.groups.handle_event(now, &self.server_key());
        self.groups.handle_event(now, &self.config(ConfigKind::Transitional));
        let mut joins = Vec::new();
        while let Some(s) = self.groups.poll_submit() {
            joins.push(s);
        }
        for s in joins {
            let seq = self.next_seq();
            let d = delivery(0, seq, self.ring_id(), s.groups, s.payload);
            self.groups.handle_event(now, &Event::Deliver(d));
        }
        let states: Vec<Bytes> = (1..self.daemons).map(|d| self.remote_state(d, false)).collect();
        let largest = states.iter().map(Bytes::len).max().unwrap_or(0);
        eprintln!("({} daemons, {} groups: a remote State message is {largest} bytes)", self.daemons, self.n);
        let (keyed, _) = self.change(states);
        assert_eq!(keyed, self.local.len(), "first views");
    }

    /// A new ring of the same daemons; returns the timings (exchange,
    /// flush) and checks every local client got its keyed view.
    fn rekey(&mut self) -> (Duration, Duration) {
        let now = Time::ZERO;
        self.groups.handle_event(now, &self.config(ConfigKind::Transitional));
        while self.groups.poll_client().is_some() {}
        self.ring_seq += 1;
        let states: Vec<Bytes> = (1..self.daemons).map(|d| self.remote_state(d, true)).collect();
        let before = self.groups.stats().keys_derived;
        let t0 = Instant::now();
        let (mut keyed, flushes) = self.change(states);
        let exchange = t0.elapsed();
        let mut flush = Duration::ZERO;
        if !flushes.is_empty() {
            // Integrated VS: the local members answer at once; every member's
            // answer comes back in order (the remote ones encoded untimed).
            let t1 = Instant::now();
            let mut ids = BTreeMap::new();
            for (g, c, id) in &flushes {
                self.groups.flush_ok(*c, g, *id).expect("flush_ok");
                ids.insert(g.clone(), *id);
            }
            let mut local_oks = VecDeque::new();
            while let Some(s) = self.groups.poll_submit() {
                local_oks.push_back(s);
            }
            flush += t1.elapsed();
            let mut oks = Vec::with_capacity(self.n * GROUP_SIZE);
            for i in 0..self.n {
                let g = group_name(i);
                let flush = ids[&g];
                let groups = Groups::encode(&[&g[..]]).expect("group name");
                for j in 0..GROUP_SIZE {
                    let d = j % self.daemons;
                    let payload = if d == 0 {
                        local_oks.pop_front().expect("a local flush answer").payload
                    } else {
                        GroupMsg { sender: client_name(i, j), body: Body::FlushOk { flush } }.encode()
                    };
                    let seq = self.next_seq();
                    oks.push(Event::Deliver(delivery(d, seq, self.ring_id(), groups.clone(), payload)));
                }
            }
            let t2 = Instant::now();
            for ev in &oks {
                self.groups.handle_event(now, ev);
            }
            keyed += self.drain_clients().0;
            flush += t2.elapsed();
        }
        assert_eq!(keyed, self.local.len(), "every local member got a keyed view");
        assert_eq!(self.groups.stats().keys_derived - before, self.n as u64, "one key per group");
        (exchange, flush)
    }

    /// Server key, regular configuration, then every daemon's `State` (own
    /// first); drains the client events.
    fn change(
        &mut self,
        remote: Vec<Bytes>,
    ) -> (usize, Vec<(Bytes, ClientId, ringfence_proto::groups::FlushId)>) {
        let now = Time::ZERO;
        let ring_id = self.ring_id();
        self.groups.handle_event(now, &self.server_key());
        self.groups.handle_event(now, &self.config(ConfigKind::Regular));
        let own = self.groups.poll_submit().expect("own state");
        if self.ring_seq == 2 {
            eprintln!(
                "({} daemons, {} groups, {}: daemon 0's State message is {} bytes)",
                self.daemons,
                self.n,
                self.mode.name(),
                own.payload.len()
            );
        }
        let seq = self.next_seq();
        self.groups.handle_event(now, &Event::Deliver(delivery(0, seq, ring_id, own.groups, own.payload)));
        for (d, payload) in remote.into_iter().enumerate() {
            let seq = self.next_seq();
            self.groups
                .handle_event(now, &Event::Deliver(delivery(d + 1, seq, ring_id, Groups::none(), payload)));
        }
        assert!(!self.groups.exchanging(), "exchange complete");
        self.drain_clients()
    }
}

/// Bare derivation of N view keys.
fn derive(n: usize) -> Duration {
    let server = Key32::from_bytes([7; 32]);
    let names: Vec<Bytes> = (0..n).map(group_name).collect();
    let view = ViewId { ring_id: RingId { seq: 2, rep: NodeId(0) }, counter: 1 }.to_bytes();
    let t = Instant::now();
    let mut acc = 0u32;
    for g in &names {
        acc ^= group_key_id(&server, g, &view);
        acc ^= u32::from(group_key(&server, g, &view).expose_secret()[0]);
    }
    let e = t.elapsed();
    std::hint::black_box(acc);
    e
}

/// A layered group: 13 members' TGDH states, split in two components after
/// a partition (`apart` members on the partitioned daemon), ready to merge.
fn layered_group(apart: usize, rng: &mut ChaCha8Rng) -> Vec<Tgdh> {
    let all: Vec<u32> = (1..=GROUP_SIZE as u32).collect();
    let mut members: Vec<Tgdh> = all.iter().map(|&m| Tgdh::new(m, rng)).collect();
    run(&mut members, &all, 1, rng);
    let (big, small) = all.split_at(GROUP_SIZE - apart);
    let mut round = 1;
    for part in [big, small] {
        round += 1;
        let mut sub: Vec<Tgdh> = members.iter().filter(|t| part.contains(&t.me())).cloned().collect();
        run(&mut sub, part, round, rng);
        for t in sub {
            let i = members.iter().position(|x| x.me() == t.me()).expect("member");
            members[i] = t;
        }
    }
    members
}

/// One TGDH run among `members` over a totally ordered broadcast, every
/// message encoded and decoded; returns the X25519 operations done.
fn run(members: &mut [Tgdh], ids: &[u32], round: u64, rng: &mut ChaCha8Rng) -> u64 {
    let ops0: u64 = members.iter().map(Tgdh::x25519_ops).sum();
    let mut queue = VecDeque::new();
    for t in members.iter_mut() {
        let out = t.start(round, ids, rng).expect("start");
        queue.extend(out.into_iter().map(|m| (t.me(), m.to_bytes())));
    }
    while let Some((from, bytes)) = queue.pop_front() {
        for t in members.iter_mut() {
            let msg = Message::decode(&bytes).expect("decode");
            let out = t.handle(from, &msg, rng).expect("handle");
            queue.extend(out.into_iter().map(|m| (t.me(), m.to_bytes())));
        }
    }
    let key = members[0].key().map(|(e, k)| (e, *k.as_bytes()));
    assert!(key.is_some() && members.iter().all(|t| t.key().map(|(e, k)| (e, *k.as_bytes())) == key));
    members.iter().map(Tgdh::x25519_ops).sum::<u64>() - ops0
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let repeats: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(7);
    let ns: Vec<usize> = match std::env::args().nth(2) {
        Some(list) => list.split(',').filter_map(|x| x.parse().ok()).collect(),
        None => vec![1, 10, 100, 1000, 10_000],
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    // Layered: one group's merge, timed many times.
    let mut layered = BTreeMap::new();
    for daemons in [3usize, 5] {
        let apart = GROUP_SIZE.div_ceil(daemons) - usize::from(daemons == 3);
        let base = layered_group(apart, &mut rng);
        let ids: Vec<u32> = (1..=GROUP_SIZE as u32).collect();
        let mut times = Vec::new();
        let mut ops = 0;
        for _ in 0..200 {
            let mut g = base.clone();
            let t = Instant::now();
            ops = run(&mut g, &ids, 100, &mut rng);
            times.push(t.elapsed());
        }
        let max = *times.iter().max().expect("times");
        let med = median(&mut times);
        eprintln!(
            "layered, {daemons} daemons: merge {}+{apart} -> 13, {ops} X25519 ops, median {} ms, max {} ms per group",
            GROUP_SIZE - apart,
            ms(med),
            ms(max)
        );
        layered.insert(daemons, (med, ops, apart));
    }

    println!(
        "| daemons | groups N | mode | exchange + installs, median (max) ms | + flush answers, median (max) ms | total per group µs | bare derivation ms | layered TGDH CPU ms (N × per group) | layered / integrated |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for daemons in [3usize, 5] {
        for &n in &ns {
            let mut bare: Vec<Duration> = (0..repeats).map(|_| derive(n)).collect();
            let bare = median(&mut bare);
            for mode in [GroupMode::OptimizedEvs, GroupMode::IntegratedVs] {
                let built = Instant::now();
                let mut d = Daemon0::new(daemons, n, mode);
                let setup = built.elapsed();
                let (mut ex, mut fl, mut tot) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..repeats {
                    let (e, f) = d.rekey();
                    ex.push(e);
                    fl.push(f);
                    tot.push(e + f);
                }
                let (ex_max, fl_max) = (*ex.iter().max().expect("ex"), *fl.iter().max().expect("fl"));
                let (ex, fl, tot) = (median(&mut ex), median(&mut fl), median(&mut tot));
                let (per_group, _, _) = layered[&daemons];
                let layered_total = per_group * n as u32;
                let flush = if mode == GroupMode::IntegratedVs {
                    format!("{} ({})", ms(fl), ms(fl_max))
                } else {
                    "—".into()
                };
                println!(
                    "| {daemons} | {n} | {} | {} ({}) | {flush} | {:.2} | {} | {} | {:.0}× |",
                    mode.name(),
                    ms(ex),
                    ms(ex_max),
                    tot.as_secs_f64() * 1e6 / n as f64,
                    ms(bare),
                    ms(layered_total),
                    layered_total.as_secs_f64() / tot.as_secs_f64()
                );
                eprintln!(
                    "({daemons} daemons, {n} groups, {}: setup {:.1} s)",
                    mode.name(),
                    setup.as_secs_f64()
                );
            }
        }
    }
}
