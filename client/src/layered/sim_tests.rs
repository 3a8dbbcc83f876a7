//! Layered groups in the daemons' deterministic simulator (issue 12, item
//! 4): real daemon cores (`ringfence_proto::groups::testkit::Sim`: the
//! daemons' `Server`s with encrypted links, on a virtual clock, under
//! partitions, merges and crashes) carry five groups, one per layered
//! mode; simulated clients run the real [`LayeredGroup`] engines on the
//! client-protocol frames their daemon sends them, and answer flush
//! requests after a seeded delay, as `Client` does.
//!
//! Checked per seed (any breach is a violation, listed with the seed):
//! - every member that completes agreement for a view gets the view's
//!   epoch and the same key id and key as every other member of it;
//! - a sealed message is opened by every member it is delivered to, under
//!   the key of the view it is delivered in (sends made while agreeing are
//!   held and sent, sealed, once the key exists);
//! - members that moved together between two views opened the same
//!   messages in the first (virtual synchrony, seen through the keys);
//! - a member that left (leave, disconnect, its daemon's crash) opens no
//!   message of a later view;
//! - neither a layered key nor a payload's plaintext appears in any
//!   datagram between the daemons or any frame a daemon sent a client
//!   (the daemons hold ciphertext and signed protocol messages only);
//! - liveness: once the faults heal, every group reaches a secure view,
//!   the same at all its members, within [`LIVENESS`] of virtual time; it
//!   then carries one message of each member to all.
//!
//! CI runs a few seeds ([`layered_groups_survive_partitions_merges_and_crashes`]);
//! the long run is `RF_SEEDS=n RF_SEEDS_FROM=k cargo test --release -p
//! ringfence-client many_layered_seeds -- --ignored --nocapture`.

use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringfence_proto::Time;
use ringfence_proto::groups::testkit::{Sim, SimClient};
use ringfence_proto::security::policy::{Policy, Rule};
use ringfence_proto::wire::client::{DaemonFrame, Message, Multicast};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);
/// How often the simulated clients read their frames.
const TICK: Duration = Duration::from_micros(200);
/// The bound on the time from the last fault's end to a secure view of
/// every group.
const LIVENESS: Duration = Duration::from_secs(10);
/// Every application payload starts with it (the leak scan looks for it).
const MAGIC: &[u8; 8] = b"LyrPlain";

const MODES: [(&str, GroupMode); 5] = [
    ("l.tgdh", GroupMode::LayeredTgdh),
    ("l.gdh", GroupMode::LayeredGdh),
    ("l.bd", GroupMode::LayeredBd),
    ("l.str", GroupMode::LayeredStr),
    ("l.ckd", GroupMode::LayeredCkd),
];

fn policy() -> Policy {
    Policy::new(
        MODES.iter().map(|(g, mode)| Rule { pattern: (*g).into(), mode: *mode, ..Rule::default() }).collect(),
    )
}

/// A simulated client.
struct SimMember {
    at: SimClient,
    /// Its private name.
    name: String,
    secret: [u8; 32],
    /// Its engine per group joined.
    groups: BTreeMap<String, LayeredGroup>,
}

/// A member that left: its engine (with the keys it held) and the epoch
/// of the last view it was in.
struct Departed {
    group: String,
    last: u64,
    eng: LayeredGroup,
}

/// Finds any of the needles (the layered keys, [`MAGIC`]) in bytes: a
/// table of the needles' first two bytes, then a full compare.
struct Scanner {
    first: Vec<u64>,
    needles: Vec<Vec<u8>>,
    scanned: u64,
}

impl Scanner {
    fn new() -> Self {
        let mut s = Self { first: vec![0; 1024], needles: Vec::new(), scanned: 0 };
        s.add(MAGIC);
        s
    }

    fn add(&mut self, needle: &[u8]) {
        let i = usize::from(u16::from_be_bytes([needle[0], needle[1]]));
        self.first[i / 64] |= 1 << (i % 64);
        self.needles.push(needle.to_vec());
    }

    /// Whether any needle occurs in `b`.
    fn found(&mut self, b: &[u8]) -> bool {
        self.scanned += b.len() as u64;
        let (first, needles) = (&self.first, &self.needles);
        b.windows(2).enumerate().any(|(at, w)| {
            let i = usize::from(u16::from_be_bytes([w[0], w[1]]));
            first[i / 64] & (1 << (i % 64)) != 0 && needles.iter().any(|n| b[at..].starts_with(n))
        })
    }
}

/// Figures of one seed.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    /// Regular views handed to engines.
    views: u64,
    /// Distinct (group, epoch) secure views.
    secure_views: u64,
    /// Views that arrived during a run (cascaded changes).
    cascades: u64,
    /// Sealed messages opened.
    opened: u64,
    /// Sends held while agreeing.
    held: u64,
    /// Protocol messages or views refused (other than stale).
    refused: u64,
    /// Messages of an abandoned run.
    stale: u64,
    /// Messages tried under a departed member's keys (none may open).
    departed_checks: u64,
    /// Bytes of datagrams and frames scanned for keys and plaintext.
    scanned: u64,
    /// From the last fault's end to every group's secure view.
    to_secure: Duration,
}

struct Run {
    seed: u64,
    sim: Sim,
    rng: ChaCha8Rng,
    peers: PeerKeys,
    clients: Vec<SimMember>,
    departed: Vec<Departed>,
    next_client: u64,
    /// Flush answers due: (time, client index, group, view id).
    flushes: Vec<(Time, SimClient, String, ViewId)>,
    /// Each view's members, by (group, epoch).
    views: BTreeMap<(String, u64), Vec<String>>,
    /// Each secure view's key id and key, by (group, epoch).
    keys: BTreeMap<(String, u64), (u32, [u8; 32])>,
    /// Messages opened by (group, epoch, member), and the epoch the member
    /// went to next.
    opened: BTreeMap<(String, u64, String), BTreeSet<u64>>,
    next_epoch: BTreeMap<(String, u64, String), u64>,
    /// Messages already checked against the departed members.
    checked: BTreeSet<u64>,
    next_msg: u64,
    scanner: Scanner,
    violations: Vec<String>,
    /// Groups each client left (by private name).
    left: BTreeSet<(String, String)>,
    /// Whether a client may join a layered group again on the connection
    /// it left it on (`Client::join_with` refuses; see seed 884).
    rejoin: bool,
    /// Each member's views of each group, for a report.
    history: BTreeMap<(String, String), Vec<String>>,
    /// Sends the daemons refused, by reason.
    send_errors: BTreeMap<String, u64>,
    fig: Figures,
}

/// The key of the engine's secure view in force (test-only access).
fn key_of(eng: &LayeredGroup) -> Option<(u64, u32, [u8; 32])> {
    let (epoch, id) = eng.secure_epoch()?;
    let key = eng.keys.front()?;
    Some((epoch, id, *key.secret().expose_secret()))
}

impl Run {
    fn new(seed: u64, daemons: usize) -> Self {
        let sim = Sim::secure(daemons, seed, policy()).expect("the daemons form a ring");
        Self {
            seed,
            sim,
            rng: ChaCha8Rng::seed_from_u64(seed),
            peers: PeerKeys::new(),
            clients: Vec::new(),
            departed: Vec::new(),
            next_client: 1,
            flushes: Vec::new(),
            views: BTreeMap::new(),
            keys: BTreeMap::new(),
            opened: BTreeMap::new(),
            next_epoch: BTreeMap::new(),
            checked: BTreeSet::new(),
            next_msg: 1,
            scanner: Scanner::new(),
            violations: Vec::new(),
            send_errors: BTreeMap::new(),
            history: BTreeMap::new(),
            left: BTreeSet::new(),
            rejoin: false,
            fig: Figures::default(),
        }
    }

    fn violation(&mut self, what: String) {
        let now = self.sim.now();
        self.violations.push(format!("seed {} at {now:?}: {what}", self.seed));
    }

    /// A new client on daemon `d`, with a fresh identity its peers know.
    fn connect(&mut self, d: usize) {
        let id = self.next_client;
        self.next_client += 1;
        let name = format!("c{id}");
        let secret = SecretIdentity::generate(&mut self.rng);
        self.peers.insert(&name, secret.public());
        let private = self.sim.connect(d, id, &name);
        self.clients.push(SimMember {
            at: (d, id),
            name: private,
            secret: *secret.expose_secret(),
            groups: BTreeMap::new(),
        });
    }

    fn join(&mut self, i: usize, g: usize) {
        let (group, mode) = MODES[g];
        let c = &self.clients[i];
        if c.groups.contains_key(group) {
            return;
        }
        if !self.rejoin && self.left.contains(&(c.name.clone(), group.to_string())) {
            return; // as `Client::join_with`: a left layered group is rejoined on a new connection
        }
        let protocol = protocol_of(mode).expect("a layered mode");
        let secret = SecretIdentity::from_bytes(&c.secret);
        let rng = Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(self.rng.random()));
        let eng = LayeredGroup::new(protocol, group, &c.name, secret, rng).expect("engine");
        let at = c.at;
        if self.sim.join(at, group, mode).is_ok() {
            self.clients[i].groups.insert(group.to_string(), eng);
        }
    }

    /// Client `i` leaves group `group`: its engine is kept as departed.
    fn leave(&mut self, i: usize, group: &str) {
        let at = self.clients[i].at;
        if !self.clients[i].groups.contains_key(group) || self.sim.leave(at, group).is_err() {
            return; // not a member (yet): the join is on its way
        }
        let Some(mut eng) = self.clients[i].groups.remove(group) else { return };
        self.left.insert((self.clients[i].name.clone(), group.to_string()));
        eng.leave();
        self.depart(group.to_string(), eng);
    }

    fn depart(&mut self, group: String, eng: LayeredGroup) {
        if let Some(last) = eng.epoch {
            self.departed.push(Departed { group, last, eng });
        }
    }

    /// Client `i` is gone (disconnected, or with its daemon).
    fn remove(&mut self, i: usize, disconnect: bool) {
        let c = self.clients.swap_remove(i);
        if disconnect {
            self.sim.disconnect(c.at);
        }
        self.sim.drop_frames(c.at);
        self.flushes.retain(|f| f.1 != c.at);
        for (g, eng) in c.groups {
            self.depart(g, eng);
        }
    }

    /// A member sends a numbered message: sealed now, or held.
    fn send(&mut self, i: usize, group: &str) {
        let no = self.next_msg;
        self.next_msg += 1;
        let mut plain = MAGIC.to_vec();
        plain.extend_from_slice(&no.to_be_bytes());
        plain.extend_from_slice(&[0x5c; 24]);
        let at = self.clients[i].at;
        let Some(eng) = self.clients[i].groups.get_mut(group) else { return };
        let mut sealed = Vec::new();
        if eng.ready() && eng.seal_into(7, &plain, &mut sealed) == Ok(true) {
            let m = Multicast {
                service: Service::Agreed,
                msg_type: 7,
                self_discard: false,
                sealed: true,
                groups: ringfence_proto::wire::Groups::encode(&[group]).expect("a valid group name"),
                payload: sealed.into(),
            };
            if let Err(e) = self.sim.multicast(at, m) {
                *self.send_errors.entry(format!("application's: {e:?}")).or_default() += 1;
            }
        } else if eng.hold(Service::Agreed, 7, &plain).is_ok() {
            self.fig.held += 1;
        }
    }

    /// Sends what client `i`'s engine of `group` wants sent; takes its events.
    fn drive(&mut self, i: usize, group: &str) {
        let at = self.clients[i].at;
        let me = self.clients[i].name.clone();
        let Some(eng) = self.clients[i].groups.get_mut(group) else { return };
        let mut out = Vec::new();
        while let Some(t) = eng.poll_transmit() {
            out.push(match t {
                Transmit::Protocol(b) => (Service::Agreed, PROTOCOL_MSG_TYPE, false, b),
                Transmit::Data { service, msg_type, payload } => (service, msg_type, true, payload),
            });
        }
        let mut events = Vec::new();
        while let Some(e) = eng.poll_event() {
            events.push(e);
        }
        let key = key_of(eng);
        for (service, msg_type, sealed, payload) in out {
            let m = Multicast {
                service,
                msg_type,
                self_discard: false,
                sealed,
                groups: ringfence_proto::wire::Groups::encode(&[group]).expect("a valid group name"),
                payload: payload.into(),
            };
            if let Err(e) = self.sim.multicast(at, m) {
                *self.send_errors.entry(format!("engine's: {e:?}")).or_default() += 1;
            }
        }
        for e in events {
            match e {
                LayeredEvent::SecureView { epoch, key_id, members, .. } => {
                    let Some((e2, id2, key)) = key.filter(|k| k.0 == epoch) else {
                        self.violation(format!(
                            "{me} announced secure view {epoch} of {group} without its key"
                        ));
                        continue;
                    };
                    debug_assert_eq!((e2, id2), (epoch, key_id));
                    if !members.contains(&me) {
                        self.violation(format!("{me}: secure view {epoch} of {group} it is not in"));
                    }
                    if self.views.get(&(group.to_string(), epoch)) != Some(&members) {
                        self.violation(format!("{me}: secure view {epoch} of {group} with other members"));
                    }
                    match self.keys.get(&(group.to_string(), epoch)) {
                        Some(k) if *k != (key_id, key) => self.violation(format!(
                            "view {epoch} of {group}: {me} holds key {key_id:08x}, another member {:08x}",
                            k.0
                        )),
                        Some(_) => {}
                        None => {
                            if self.keys.values().any(|k| k.1 == key) {
                                self.violation(format!("view {epoch} of {group} reuses another view's key"));
                            }
                            self.keys.insert((group.to_string(), epoch), (key_id, key));
                            self.scanner.add(&key);
                            self.fig.secure_views += 1;
                        }
                    }
                }
                LayeredEvent::Refused { .. } => {}
            }
        }
    }

    /// Client `i` reads the frames its daemon sent it.
    fn read(&mut self, i: usize) {
        let at = self.clients[i].at;
        for (raw, frame) in self.sim.take_frames(at) {
            if self.scanner.found(&raw) {
                self.violation(format!("a frame to {at:?} carries a layered key or a plaintext"));
            }
            let Some(frame) = frame else { continue };
            match frame {
                DaemonFrame::Message(m) => self.message(i, m),
                DaemonFrame::Membership(m) => self.membership(i, &m),
                DaemonFrame::FlushRequest { group, view_id } => {
                    if let Some(eng) = self.clients[i].groups.get_mut(&group) {
                        eng.flush_request(view_id);
                    }
                    let d = self.rng.random_range(0..=2000);
                    self.flushes.push((self.sim.now() + Duration::from_micros(d), at, group, view_id));
                }
                _ => {}
            }
        }
    }

    fn membership(&mut self, i: usize, m: &Membership) {
        if m.kind != ViewKind::Regular {
            return;
        }
        let me = self.clients[i].name.clone();
        let Some(epoch) = epoch_of(m.view_id) else {
            return self.violation(format!("view id {:?} out of the epoch range", m.view_id));
        };
        match self.views.get(&(m.group.clone(), epoch)) {
            Some(v) if *v != m.members => {
                self.violation(format!("view {epoch} of {}: two memberships", m.group));
            }
            Some(_) => {}
            None => {
                self.views.insert((m.group.clone(), epoch), m.members.clone());
            }
        }
        let Some(eng) = self.clients[i].groups.get_mut(&m.group) else { return };
        if let Some(prev) = eng.epoch {
            self.next_epoch.insert((m.group.clone(), prev, me.clone()), epoch);
        }
        if eng.is_agreeing() {
            self.fig.cascades += 1;
        }
        let h = format!(
            "({}, {}) {:?} {:?} [{}]",
            epoch >> 32,
            epoch & 0xffff_ffff,
            m.cause,
            decide(eng.protocol(), eng.prev.as_deref(), m),
            m.members.join(" ")
        );
        self.history.entry((m.group.clone(), me.clone())).or_default().push(h);
        eng.handle_view(m, &mut self.peers);
        self.fig.views += 1;
        let g = m.group.clone();
        self.drive(i, &g);
    }

    fn message(&mut self, i: usize, m: Message) {
        let Some(g) = m.groups.single() else { return };
        let me = self.clients[i].name.clone();
        let Some(eng) = self.clients[i].groups.get_mut(g) else { return };
        if !m.sealed && m.msg_type == PROTOCOL_MSG_TYPE {
            eng.handle_protocol(&m.sender, &m.payload, &self.peers);
            return self.drive(i, g);
        }
        if !m.sealed {
            return self.violation(format!("{me} got an unsealed application message in {g}"));
        }
        let epoch = eng.epoch.unwrap_or(0);
        let current = key_of(eng).map(|k| k.1);
        match eng.open(&m.sender, m.msg_type, &m.payload) {
            Ok(plain) => {
                let Some(no) = plain.strip_prefix(MAGIC).and_then(|p| p.first_chunk::<8>()) else {
                    return self.violation(format!("{me} opened a message not sent by the test"));
                };
                let no = u64::from_be_bytes(*no);
                self.fig.opened += 1;
                if key_id_of(&m.payload) != current {
                    self.violation(format!(
                        "{me} got msg {no} in view {epoch} of {g} sealed under another view's key"
                    ));
                }
                self.opened.entry((g.to_string(), epoch, me)).or_default().insert(no);
                if self.checked.insert(no) {
                    for d in self.departed.iter().filter(|d| d.group == g && d.last < epoch) {
                        self.fig.departed_checks += 1;
                        if d.eng.open(&m.sender, m.msg_type, &m.payload).is_ok() {
                            let who = d.eng.me_name.clone();
                            return self.violation(format!(
                                "{who}, gone after view {}, opened msg {no} of view {epoch} of {g}",
                                d.last
                            ));
                        }
                    }
                }
            }
            Err(e) => self.violation(format!("{me} cannot open a message of view {epoch} of {g}: {e}")),
        }
    }

    /// One tick: the daemons run, clients read, due flush answers go.
    fn tick(&mut self) {
        self.sim.run(TICK);
        for d in self.sim.take_datagrams() {
            if self.scanner.found(&d) {
                self.violation("a datagram carries a layered key or a plaintext".into());
            }
        }
        for i in 0..self.clients.len() {
            self.read(i);
        }
        let now = self.sim.now();
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.flushes).into_iter().partition(|f| f.0 <= now);
        self.flushes = later;
        for (_, at, group, view_id) in due {
            let Some(i) = self.clients.iter().position(|c| c.at == at) else { continue };
            let me = self.clients[i].name.clone();
            if let Some(eng) = self.clients[i].groups.get_mut(&group) {
                let h = format!(
                    "flush_ok {:?} at epoch {:?}",
                    (view_id.ring_seq, view_id.counter),
                    eng.epoch.map(|x| (x >> 32, x & 0xffff_ffff))
                );
                eng.flush_ok(view_id);
                self.history.entry((group.clone(), me)).or_default().push(h);
            }
            let _ = self.sim.flush_ok(at, &group, view_id);
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.sim.now() + d;
        while self.sim.now() < end {
            self.tick();
        }
    }

    /// Whether every group with members is in a secure view, the same at
    /// all its members, whose members are exactly them.
    fn all_secure(&self) -> bool {
        MODES.iter().all(|(g, _)| {
            let members: BTreeSet<&String> =
                self.clients.iter().filter(|c| c.groups.contains_key(*g)).map(|c| &c.name).collect();
            let mut epochs = self.clients.iter().filter_map(|c| c.groups.get(*g)).map(|e| e.secure_epoch());
            let Some(Some(first)) = epochs.next() else { return members.is_empty() };
            epochs.all(|e| e == Some(first))
                && self
                    .views
                    .get(&(g.to_string(), first.0))
                    .is_some_and(|v| v.iter().collect::<BTreeSet<_>>() == members)
        })
    }

    /// What each group's members hold, for a report.
    fn state(&self) -> String {
        let mut out = format!("sends refused: {:?}\n", self.send_errors);
        for (g, _) in MODES {
            let members: Vec<&String> =
                self.clients.iter().filter(|c| c.groups.contains_key(g)).map(|c| &c.name).collect();
            out += &format!("{g}: clients {members:?}\n");
            for c in &self.clients {
                if let Some(e) = c.groups.get(g) {
                    let view = e.epoch.and_then(|x| self.views.get(&(g.to_string(), x)));
                    out += &format!(
                        "  {}: epoch {:?} {view:?} secure {:?} agreeing {} stats {:?}\n",
                        c.name,
                        e.epoch.map(|x| (x >> 32, x & 0xffff_ffff)),
                        e.secure_epoch().map(|x| (x.0 >> 32, x.0 & 0xffff_ffff)),
                        e.is_agreeing(),
                        e.stats()
                    );
                    for h in self.history.get(&(g.to_string(), c.name.clone())).into_iter().flatten() {
                        out += &format!("      {h}\n");
                    }
                }
            }
        }
        out
    }

    /// Members that moved together between two views opened the same
    /// messages in the first.
    fn check_sync(&mut self) {
        let mut seen: BTreeMap<(String, u64, u64), (String, &BTreeSet<u64>)> = BTreeMap::new();
        let mut bad = Vec::new();
        for ((g, e, who), next) in &self.next_epoch {
            let empty = BTreeSet::new();
            let got = self.opened.get(&(g.clone(), *e, who.clone())).unwrap_or(&empty);
            let _ = got;
            let got = self.opened.get(&(g.clone(), *e, who.clone()));
            let key = (g.clone(), *e, *next);
            match (seen.get(&key), got) {
                (Some((other, m)), Some(mine)) if *m != mine => bad.push(format!(
                    "vs: {who} and {other} opened different messages in view {e} of {g} (next {next})"
                )),
                (Some((other, m)), None) if !m.is_empty() => {
                    bad.push(format!("vs: {who} opened nothing in view {e} of {g}, {other} did"))
                }
                (None, Some(mine)) => {
                    seen.insert(key, (who.clone(), mine));
                }
                _ => {}
            }
        }
        for b in bad {
            self.violation(b);
        }
    }
}

enum Fault {
    Partition(Vec<u8>),
    Heal,
    Crash(usize),
    Restart(usize),
}

/// One seed: 3 or 4 daemons, two clients each, five layered groups; random
/// joins, leaves, reconnects and sends, two partitions and their merges,
/// and on odd seeds a daemon crash and its restart; then the faults heal and
/// every group must reach a secure view. Returns the violations and figures.
fn layered_run(seed: u64) -> (Vec<String>, Figures) {
    layered_run_with(seed, false)
}

fn layered_run_with(seed: u64, rejoin: bool) -> (Vec<String>, Figures) {
    let daemons = 3 + (seed % 2) as usize;
    let mut r = Run::new(seed, daemons);
    r.rejoin = rejoin;
    for d in 0..daemons {
        for _ in 0..2 {
            r.connect(d);
        }
    }
    // Every group starts with two or three members.
    for g in 0..MODES.len() {
        for _ in 0..3 {
            let i = r.rng.random_range(0..r.clients.len());
            r.join(i, g);
        }
    }
    // Two partitions (each healed by a merge), the second on other sides;
    // on odd seeds a daemon crash and its restart, anywhere among them.
    let mut faults: BTreeMap<u32, Fault> = BTreeMap::new();
    let mut at = 0;
    for round in 0..2 {
        at += r.rng.random_range(40..200u32);
        let mut labels: Vec<u8> = (0..daemons).map(|_| r.rng.random_range(0..2)).collect();
        labels[0] = 0;
        labels[r.rng.random_range(1..daemons)] = 1;
        faults.insert(at, Fault::Partition(labels));
        at += r.rng.random_range(20..200);
        if round == 0 {
            faults.insert(at, Fault::Heal);
        }
    }
    if seed % 2 == 1 {
        let at = r.rng.random_range(20..at) | 1;
        let d = r.rng.random_range(1..daemons);
        faults.insert(at, Fault::Crash(d));
        faults.insert(at + r.rng.random_range(20..250), Fault::Restart(d));
    }
    // The workload stops when the second partition heals (below), so the
    // time to a secure view is measured from the end of the faults.
    let steps = at;
    let mut crashed = None;
    for step in 0..steps {
        match faults.remove(&step) {
            Some(Fault::Partition(labels)) => r.sim.partition(&labels),
            Some(Fault::Heal) => r.sim.heal(),
            Some(Fault::Crash(d)) => {
                r.sim.crash(d);
                crashed = Some(d);
                while let Some(i) = r.clients.iter().position(|c| c.at.0 == d) {
                    r.remove(i, false);
                }
            }
            Some(Fault::Restart(d)) => {
                r.sim.restart(d);
                crashed = None;
                r.connect(d);
                r.connect(d);
            }
            None => {}
        }
        let live: Vec<usize> = (0..r.clients.len()).filter(|&i| Some(r.clients[i].at.0) != crashed).collect();
        if !live.is_empty() {
            let i = live[r.rng.random_range(0..live.len())];
            let g = r.rng.random_range(0..MODES.len());
            match r.rng.random_range(0..100) {
                0..8 => r.join(i, g),
                8..11 => r.leave(i, MODES[g].0),
                11..12 => {
                    let d = r.clients[i].at.0;
                    r.remove(i, true);
                    r.connect(d);
                }
                12..45 => r.send(i, MODES[g].0),
                _ => {}
            }
        }
        r.run_for(MS);
    }
    // The faults end: one network, every daemon up (a restart not due yet
    // happens now).
    r.sim.heal();
    if let Some(d) = crashed {
        r.sim.restart(d);
    }
    let healed = r.sim.now();
    let mut secure_at = None;
    while r.sim.now() < healed + LIVENESS {
        r.run_for(MS);
        if r.all_secure() {
            secure_at = Some(r.sim.now());
            break;
        }
    }
    match secure_at {
        Some(t) => r.fig.to_secure = t.saturating_since(healed),
        None => {
            let state = r.state();
            r.violation(format!(
                "no secure view of every group {LIVENESS:?} after the faults healed:\n{state}"
            ));
        }
    }
    // Every member sends once more; every member opens all of it.
    let first_final = r.next_msg;
    for i in 0..r.clients.len() {
        for (g, _) in MODES {
            r.send(i, g);
        }
    }
    r.run_for(50 * MS);
    for c in &r.clients {
        for g in c.groups.keys() {
            let senders = r.clients.iter().filter(|x| x.groups.contains_key(g)).count();
            let new = r
                .opened
                .iter()
                .filter(|((g2, _, who), _)| g2 == g && *who == c.name)
                .map(|(_, s)| s.range(first_final..).count())
                .sum::<usize>();
            if secure_at.is_some() && new != senders {
                r.violations.push(format!(
                    "seed {seed}: {} opened {new} of the {senders} final messages of {g}",
                    c.name
                ));
            }
        }
    }
    r.check_sync();
    for v in r.sim.violations() {
        r.violations.push(format!("seed {seed}: daemons: {v}"));
    }
    for c in &r.clients {
        for eng in c.groups.values() {
            r.fig.refused += eng.stats().refused;
            r.fig.stale += eng.stats().stale;
        }
    }
    r.fig.scanned = r.scanner.scanned;
    if !r.violations.is_empty() && std::env::var_os("RF_TRACE").is_some() {
        println!("seed {seed}, state at the end:\n{}", r.state());
    }
    (r.violations, r.fig)
}

fn run_seeds(seeds: std::ops::Range<u64>) -> (Vec<String>, Vec<Figures>) {
    let mut all = Vec::new();
    let mut figs = Vec::new();
    for seed in seeds {
        let (v, f) = layered_run(seed);
        all.extend(v);
        figs.push(f);
    }
    (all, figs)
}

/// A few seeds in CI: no violation, and the workload exercises what it
/// claims (secure views, cascades, held sends, messages opened).
#[test]
fn layered_groups_survive_partitions_merges_and_crashes() {
    let (v, figs) = run_seeds(0..6);
    assert!(v.is_empty(), "{}", v.join("\n"));
    let sum = |f: fn(&Figures) -> u64| figs.iter().map(f).sum::<u64>();
    assert!(sum(|f| f.secure_views) > 40, "{figs:?}");
    assert!(sum(|f| f.opened) > 100, "{figs:?}");
    assert!(sum(|f| f.held) > 0, "{figs:?}");
    assert!(sum(|f| f.cascades) > 0, "{figs:?}");
    assert!(sum(|f| f.departed_checks) > 0, "{figs:?}");
    assert!(sum(|f| f.scanned) > 1 << 20, "{figs:?}");
}

/// The leak scan finds what it looks for (positive control).
#[test]
fn the_scanner_finds_keys_and_plaintext() {
    let mut s = Scanner::new();
    let key = [0x42u8; 32];
    assert!(!s.found(&[0x42; 31]));
    s.add(&key);
    let mut b = vec![7u8; 100];
    b[50..82].copy_from_slice(&key);
    assert!(s.found(&b));
    assert!(s.found(b"..LyrPlain.."));
    assert!(!s.found(b"LyrPlai"));
}

/// Regression (found by `many_layered_seeds`, seed 884): a client leaves a
/// layered group and joins it again, on the same connection, before its
/// leave took effect; the daemons resolve the leave and the join in one
/// view, in which the client is listed as before, so the other members
/// take its new engine for the old one (CKD's controller seals the key to
/// its old share; GDH, STR and CKD run an incremental change it cannot
/// follow) and it never gets the key. `Client::join_with` now refuses the
/// rejoin on that connection (a new connection rejoins); the simulated
/// clients do the same, and the seed passes.
#[test]
fn seed_884_rejoin_on_the_connection_that_left_is_refused() {
    let (v, _) = layered_run(884);
    assert!(v.is_empty(), "{}", v.join("\n"));
}

/// The hazard behind seed 884, kept as evidence for the daemons' side
/// (their views could report the leave and the rejoin as two changes):
/// allowed to rejoin on the same connection, the member is left without
/// the key.
#[test]
#[ignore = "shows the daemons' coalesced leave and rejoin (seed 884); the client library refuses the rejoin"]
fn seed_884_with_a_rejoin_on_the_same_connection_loses_the_key() {
    let (v, _) = layered_run_with(884, true);
    assert!(v.iter().any(|v| v.contains("cannot open")), "{v:#?}");
}

/// The long run, by hand: `RF_SEEDS` seeds from `RF_SEEDS_FROM` (default
/// 200 from 0); prints the figures (docs/security.md).
#[test]
#[ignore = "long: run by hand"]
fn many_layered_seeds() {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let n = var("RF_SEEDS").unwrap_or(200);
    let from = var("RF_SEEDS_FROM").unwrap_or(0);
    let (v, figs) = run_seeds(from..from + n);
    let times: Vec<Duration> = figs.iter().map(|f| f.to_secure).collect();
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    let max = times.iter().max().copied().unwrap_or_default();
    let sum = |f: fn(&Figures) -> u64| figs.iter().map(f).sum::<u64>();
    println!(
        "layered seeds {from}..{}: violations {}, secure views {}, cascades {}, opened {}, held {}, \
         refused {}, stale {}, departed checks {}, scanned {} MB; time to secure view after the faults heal: mean {mean:?}, max {max:?}",
        from + n,
        v.len(),
        sum(|f| f.secure_views),
        sum(|f| f.cascades),
        sum(|f| f.opened),
        sum(|f| f.held),
        sum(|f| f.refused),
        sum(|f| f.stale),
        sum(|f| f.departed_checks),
        sum(|f| f.scanned) >> 20,
    );
    assert!(v.is_empty(), "{}", v.join("\n"));
}
