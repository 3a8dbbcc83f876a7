//! A deterministic multi-daemon harness for the groups layer: N daemon
//! cores ([`Server`]: node, client groups, client sessions) on a virtual
//! clock, a seeded network with partitions, scripted clients that speak the
//! client protocol and answer flush requests after a seeded delay, and a
//! checker of the group invariants over every client's event stream.
//!
//! Clients talk to their daemon in client protocol frames, as a real
//! client does, and every frame a daemon encodes for them is decoded; the
//! checks read the groups layer's events as the core observed them before
//! encoding (they say more than the frames: a leave taking effect, why a
//! join was refused).

use super::*;
use crate::ring::{Config, Dest};
use crate::security::LinkMode;
use crate::server::{Handled, Observed, Server, ServerConfig};
use crate::wire::client::{self as cp, ClientFrame, DaemonFrame, FrameDecoder};
use crate::{Incarnation, Node};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// A client's handle in the harness: (daemon index, client id).
pub(super) type Who = (usize, ClientId);

pub(super) struct World {
    pub(super) now: Time,
    pub(super) servers: Vec<Server>,
    net: BinaryHeap<Reverse<(Time, u64, usize, Bytes)>>,
    order: u64,
    reach: Vec<Vec<bool>>,
    rng: ChaCha8Rng,
    /// Every event each client received, in order.
    pub(super) log: BTreeMap<Who, Vec<ClientEvent>>,
    /// Flush answers due: (time, order) -> (client, group, flush).
    actions: BTreeMap<(Time, u64), (Who, Bytes, FlushId)>,
    /// Longest delay before a client answers a flush request.
    pub(super) flush_delay: Duration,
    /// Clients hold their flush answers while set (they are sent, in
    /// order, once it is cleared).
    pub(super) hold_flushes: bool,
    cur_view: BTreeMap<(Who, Bytes), ViewId>,
    /// Message number -> its sender and the (VS group, view) it was sent in.
    sent_in: BTreeMap<u64, (Who, Bytes, ViewId)>,
    next_msg: u64,
    /// Groups joined as VS (the virtual synchrony check applies to them).
    vs_groups: BTreeSet<Bytes>,
    pub(super) violations: Vec<String>,
    /// Frames the daemons encoded for clients (each decoded once).
    pub(super) frames: u64,
    /// With link security and keyed groups: what the clients hold.
    pub(super) secure: Option<Secure>,
    /// Clients that answer their flush requests themselves
    /// ([`World::flush_ok`]); the harness does not answer for them.
    pub(super) manual_flush: BTreeSet<Who>,
    /// When set, every datagram and every encoded frame to a client is
    /// kept here until taken (the layered groups' harness reads them).
    pub(super) capture: Option<Capture>,
    /// Daemons crashed and not restarted (they take no input).
    down: Vec<bool>,
    /// Restarts so far (a restarted daemon's incarnation).
    restarts: u64,
}

/// What the daemons put on the wire and sent their clients, in order.
#[derive(Default)]
pub(super) struct Capture {
    /// Datagrams between daemons.
    pub(super) datagrams: Vec<Bytes>,
    /// Encoded frames from the daemons, by recipient.
    pub(super) frames: BTreeMap<Who, Vec<Bytes>>,
}

/// The clients' side of keyed groups in a secure world, and the key checks.
#[derive(Default)]
pub(super) struct Secure {
    /// Each client's private name.
    names: BTreeMap<Who, PrivateName>,
    /// The view key each client holds per group: key, its index in the
    /// view (nonce sender id), messages sealed.
    held: BTreeMap<(Who, Bytes), (Arc<GroupKey>, u32, u64)>,
    /// Every view key handed out: id and secret, by (group, view).
    view_keys: BTreeMap<(Bytes, ViewId), (u32, [u8; 32])>,
    /// Undecipherable reports by reason.
    pub(super) lost: BTreeMap<&'static str, u64>,
    /// Sealed messages opened by their receivers.
    pub(super) opened: u64,
    /// Every (key id and nonce) seen on a delivered message, and the
    /// message: one nonce under one key must never seal two messages.
    nonces: BTreeMap<[u8; 16], u64>,
    /// Groups in a layered mode: their keys are the members' own, so the
    /// harness opens none of their messages.
    layered: BTreeSet<Bytes>,
}

fn ids(n: usize) -> Vec<NodeId> {
    (0..n).map(|i| NodeId(i as u16)).collect()
}

impl World {
    /// `n` daemons already in one ring.
    pub(super) fn with_ring(n: usize, seed: u64) -> Self {
        let ids = ids(n);
        let ring_id = RingId { seq: 1, rep: ids[0] };
        let nodes = ids
            .iter()
            .map(|&id| {
                Node::with_ring(Config::default(), id, &ids, ring_id, Time::ZERO).expect("valid config")
            })
            .collect();
        Self::build(nodes, seed)
    }

    /// `n` daemons starting alone; they form a ring within a second.
    pub(super) fn starting(n: usize, seed: u64) -> Self {
        let nodes = ids(n)
            .into_iter()
            .map(|id| {
                Node::new(Config::default(), id, Time::ZERO, Incarnation::default()).expect("valid config")
            })
            .collect();
        Self::build(nodes, seed)
    }

    /// `n` daemons with encrypted links and the servers' key agreement,
    /// starting alone, under the client group `policy`; they form a ring
    /// and agree a key within a second or two.
    pub(super) fn secure(n: usize, seed: u64, policy: Policy) -> Self {
        let policy = Arc::new(policy);
        let nodes = ids(n)
            .into_iter()
            .map(|id| {
                let mut sec = crate::security::lab::security(LinkMode::Encrypt, n as u16, id.0);
                sec.policy_digest = policy.digest();
                sec.seed[1] = seed as u8;
                Node::with_security(Config::default(), id, Time::ZERO, Incarnation::default(), sec)
                    .expect("valid config")
            })
            .collect();
        let mut w = Self::build_with(nodes, policy, seed);
        w.secure = Some(Secure::default());
        w
    }

    fn build(nodes: Vec<Node>, seed: u64) -> Self {
        Self::build_with(nodes, Arc::new(Policy::default()), seed)
    }

    /// Each node in a daemon core; the groups layer's deadlines asked at
    /// every step (exact timing), every event observed for the checks.
    fn build_with(nodes: Vec<Node>, policy: Arc<Policy>, seed: u64) -> Self {
        let n = nodes.len();
        let servers = nodes
            .into_iter()
            .map(|node| {
                let mut cfg = ServerConfig::new(format!("d{}", node.id().0));
                cfg.policy = policy.clone();
                cfg.groups_check = Duration::ZERO;
                cfg.observe = true;
                Server::new(node, cfg)
            })
            .collect();
        let mut w = Self {
            now: Time::ZERO,
            servers,
            net: BinaryHeap::new(),
            order: 0,
            reach: vec![vec![true; n]; n],
            rng: ChaCha8Rng::seed_from_u64(seed),
            log: BTreeMap::new(),
            actions: BTreeMap::new(),
            flush_delay: Duration::from_millis(2),
            hold_flushes: false,
            cur_view: BTreeMap::new(),
            sent_in: BTreeMap::new(),
            next_msg: 1,
            vs_groups: BTreeSet::new(),
            violations: Vec::new(),
            frames: 0,
            secure: None,
            manual_flush: BTreeSet::new(),
            capture: None,
            down: vec![false; n],
            restarts: 0,
        };
        for i in 0..n {
            w.drain(i);
        }
        w
    }

    /// Splits the daemons: `labels[i]` is daemon i's side.
    pub(super) fn partition(&mut self, labels: &[u8]) {
        for (a, row) in self.reach.iter_mut().enumerate() {
            for (b, r) in row.iter_mut().enumerate() {
                *r = labels[a] == labels[b];
            }
        }
    }

    pub(super) fn heal(&mut self) {
        for row in &mut self.reach {
            row.fill(true);
        }
    }

    pub(super) fn connect(&mut self, d: usize, c: u64, name: &str) -> Who {
        self.connect_as(d, c, name, "")
    }

    pub(super) fn connect_as(&mut self, d: usize, c: u64, name: &str, principal: &str) -> Who {
        let pn = self.try_connect_as(d, c, name, principal).expect("connect");
        self.log.entry((d, ClientId(c))).or_default();
        if let Some(s) = &mut self.secure {
            s.names.insert((d, ClientId(c)), pn);
        }
        (d, ClientId(c))
    }

    /// A client says hello to daemon `d`; a `tcp:` principal is a plain TCP
    /// connection (not private to the client and its daemon).
    pub(super) fn try_connect_as(
        &mut self,
        d: usize,
        c: u64,
        name: &str,
        principal: &str,
    ) -> Result<PrivateName, crate::server::ConnectError> {
        let secure = !principal.starts_with("tcp:");
        let r = self.servers[d].handle_connect(
            self.now,
            ClientId(c),
            name,
            principal,
            secure,
            cp::CLIENT_VERSION,
        );
        self.drain(d);
        r
    }

    /// Client `who` sends `frame`; a request the groups layer refused is the
    /// error (the client was also sent an `Error` frame).
    fn request(&mut self, who: Who, frame: ClientFrame) -> Result<(), GroupsError> {
        let h = self.servers[who.0].handle_client(self.now, who.1, frame);
        self.drain(who.0);
        match h {
            Handled::Refused(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Joins stating a mode (secure worlds).
    pub(super) fn join_mode(
        &mut self,
        who: Who,
        g: &str,
        kind: GroupKind,
        mode: GroupMode,
    ) -> Result<(), GroupsError> {
        let kind = mode.kind().unwrap_or(kind);
        if let (true, Some(s)) = (mode.layered(), &mut self.secure) {
            s.layered.insert(Bytes::copy_from_slice(g.as_bytes()));
        }
        if kind == GroupKind::Vs {
            self.vs_groups.insert(Bytes::copy_from_slice(g.as_bytes()));
        }
        self.request(who, ClientFrame::JoinMode { group: g.into(), vs: kind == GroupKind::Vs, mode })
    }

    pub(super) fn join(&mut self, who: Who, g: &str, kind: GroupKind) -> Result<(), GroupsError> {
        if kind == GroupKind::Vs {
            self.vs_groups.insert(Bytes::copy_from_slice(g.as_bytes()));
        }
        let group = g.into();
        match kind {
            GroupKind::Open => self.request(who, ClientFrame::Join { group }),
            GroupKind::Vs => self.request(who, ClientFrame::JoinVs { group }),
        }
    }

    pub(super) fn leave(&mut self, who: Who, g: &str) -> Result<(), GroupsError> {
        // The key stays until the leave takes effect (`Left`): messages of
        // the view may still arrive.
        self.request(who, ClientFrame::Leave { group: g.into() })
    }

    /// The client's session ends.
    pub(super) fn disconnect(&mut self, who: Who) {
        self.servers[who.0].handle_disconnect(self.now, who.1);
        self.drain(who.0);
    }

    /// Client `who` multicasts `payload` as it is (sealed or not by the
    /// caller).
    pub(super) fn multicast(
        &mut self,
        who: Who,
        service: Service,
        groups: &[&[u8]],
        payload: Bytes,
        sealed: bool,
    ) -> Result<(), GroupsError> {
        let m = cp::Multicast {
            service,
            msg_type: 7,
            self_discard: false,
            sealed,
            groups: Groups::encode(groups).unwrap_or_default(),
            payload,
        };
        self.request(who, ClientFrame::Multicast(m))
    }

    /// Client `who` sends the multicast `m` as it is.
    pub(super) fn multicast_frame(&mut self, who: Who, m: cp::Multicast) -> Result<(), GroupsError> {
        self.request(who, ClientFrame::Multicast(m))
    }

    /// Client `who` answers the flush request of `view_id` of `g` (clients
    /// in [`World::manual_flush`]).
    pub(super) fn flush_ok(&mut self, who: Who, g: &str, view_id: cp::ViewId) -> Result<(), GroupsError> {
        self.request(who, ClientFrame::FlushOk { group: g.into(), view_id })
    }

    /// Daemon `d` crashes: it takes no more input and nothing reaches or
    /// leaves it; its clients are gone with it.
    pub(super) fn crash(&mut self, d: usize) {
        self.down[d] = true;
        self.net.retain(|Reverse(x)| x.2 != d);
    }

    /// Daemon `d` restarts after a crash, in a secure world: a new core
    /// (a new incarnation, rings numbered above every ring seen) with no
    /// clients, starting alone.
    pub(super) fn restart(&mut self, d: usize) {
        let n = self.servers.len();
        self.restarts += 1;
        let id = NodeId(d as u16);
        let ring_seq =
            self.servers.iter().filter_map(|s| s.node().ring()).map(|r| r.0.seq).max().unwrap_or(0);
        let inc = Incarnation { ring_seq: ring_seq + 1, first_msg_seq: self.restarts << 40 };
        let policy = self.servers[d].config().policy.clone();
        let mut sec = crate::security::lab::security(LinkMode::Encrypt, n as u16, id.0);
        sec.policy_digest = policy.digest();
        sec.seed[1] = self.restarts as u8;
        sec.seed[2] = 0x5a;
        sec.incarnation = 1 + self.restarts as u32;
        let node = Node::with_security(Config::default(), id, self.now, inc, sec).expect("valid config");
        let mut cfg = ServerConfig::new(format!("d{d}"));
        cfg.policy = policy;
        cfg.groups_check = Duration::ZERO;
        cfg.observe = true;
        self.servers[d] = Server::new(node, cfg);
        self.down[d] = false;
        self.drain(d);
    }

    /// Sends a numbered message; returns its number.
    pub(super) fn send(
        &mut self,
        who: Who,
        groups: &[&str],
        service: Service,
        self_discard: bool,
    ) -> Result<u64, GroupsError> {
        let no = self.next_msg;
        let mut p = no.to_be_bytes().to_vec();
        p.extend_from_slice(&[0xab; 24]);
        let names: Vec<&[u8]> = groups.iter().map(|g| g.as_bytes()).collect();
        let (mut p, mut sealed) = (p, false);
        if let (Some(s), [g]) = (&mut self.secure, groups) {
            let me = s.names.get(&who).map(ToString::to_string).unwrap_or_default();
            if let Some((k, index, sent)) = s.held.get_mut(&(who, Bytes::copy_from_slice(g.as_bytes()))) {
                let nonce = Nonce::new(*index, *sent);
                *sent += 1;
                p = k.seal(&nonce, g.as_bytes(), me.as_bytes(), 7, &p).expect("seal");
                sealed = true;
            }
        }
        let m = cp::Multicast {
            service,
            msg_type: 7,
            self_discard,
            sealed,
            groups: Groups::encode(&names).unwrap_or_default(),
            payload: Bytes::from(p),
        };
        let h = self.servers[who.0].handle_client(self.now, who.1, ClientFrame::Multicast(m));
        if let Handled::Refused(e) = h {
            self.drain(who.0);
            return Err(e);
        }
        self.next_msg += 1;
        if let [g] = groups {
            let g = Bytes::copy_from_slice(g.as_bytes());
            let vs = self.servers[who.0].groups().views.get(&g).is_some_and(|v| v.kind == GroupKind::Vs);
            if let (true, Some(v)) = (vs, self.cur_view.get(&(who, g.clone()))) {
                self.sent_in.insert(no, (who, g, *v));
            }
        }
        self.drain(who.0);
        Ok(no)
    }

    /// Orders a group message from daemon `d` as its groups layer would
    /// have submitted it, bypassing that layer's checks (a message sent
    /// before a change and ordered after it).
    #[cfg(test)]
    pub(super) fn inject(&mut self, d: usize, group: &str, msg: GroupMsg) {
        let groups = Groups::encode(&[group.as_bytes()]).expect("group");
        self.servers[d].node_mut().submit(self.now, Service::Agreed, groups, msg.encode()).expect("submit");
        self.drain(d);
    }

    fn transmit(&mut self, from: usize, dest: Dest, bytes: Bytes) {
        let n = self.servers.len();
        if self.down[from] {
            return;
        }
        let targets: Vec<usize> = match dest {
            Dest::All => (0..n).filter(|&j| j != from).collect(),
            Dest::Node(id) => vec![usize::from(id.0)],
        };
        if let Some(c) = &mut self.capture {
            c.datagrams.push(bytes.clone());
        }
        for to in targets {
            if to >= n || !self.reach[from][to] || self.down[to] {
                continue;
            }
            let at = self.now + Duration::from_micros(self.rng.random_range(20..=120));
            self.order += 1;
            self.net.push(Reverse((at, self.order, to, bytes.clone())));
        }
    }

    /// Takes daemon `i`'s outputs, as its runtime would: frames to the
    /// clients (each decoded), the ring sequence made durable at once,
    /// datagrams to the network.
    fn drain(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let limits = s.config().client_limits;
        while let Some(o) = s.poll_client() {
            let mut d = FrameDecoder::<DaemonFrame>::new(limits);
            d.push(&o.frame);
            if !matches!(d.next_frame(), Ok(Some(_))) || !matches!(d.next_frame(), Ok(None)) {
                self.violations.push(format!("daemon {i}: a frame for {:?} is not one frame", o.to));
            }
            self.frames += 1;
            if let Some(c) = &mut self.capture {
                for to in o.to {
                    c.frames.entry((i, *to)).or_default().push(o.frame.clone());
                }
            }
        }
        while s.poll_event().is_some() {}
        let mut observed = Vec::new();
        while let Some(o) = s.poll_observed() {
            if let Observed::Client(c, ev) = o {
                observed.push((c, ev));
            }
        }
        if let Some(seq) = s.poll_persist() {
            s.persisted(seq);
        }
        while let Some(t) = self.servers[i].poll_transmit() {
            self.transmit(i, t.dest, t.bytes);
        }
        for (c, ev) in observed {
            self.record((i, c), ev);
        }
    }

    /// A secure world's client: checks and takes view keys, opens sealed
    /// messages (the logged event carries the plaintext).
    fn keys(&mut self, who: Who, ev: &mut ClientEvent) {
        let Some(s) = &mut self.secure else { return };
        match ev {
            ClientEvent::Membership {
                group, view_id, members, kind: ConfigKind::Regular, mode, key, ..
            } => {
                let Some(key) = key else {
                    if mode.keyed() {
                        self.violations
                            .push(format!("{who:?}: keyed view {view_id} of {group:?} without a key"));
                    }
                    return;
                };
                let Some(me) = s.names.get(&who) else { return };
                let Some(index) = members.iter().position(|m| m == me) else {
                    self.violations.push(format!("{who:?} got the key of view {view_id} it is not in"));
                    return;
                };
                let k = (key.id(), *key.0.secret().expose_secret());
                match s.view_keys.get(&(group.clone(), *view_id)) {
                    Some(prev) if *prev != k => {
                        self.violations.push(format!("view {view_id} of {group:?}: two keys"));
                    }
                    Some(_) => {}
                    None => {
                        if s.view_keys.values().any(|x| x.1 == k.1) {
                            self.violations
                                .push(format!("view {view_id} of {group:?} reuses another view's key"));
                        }
                        s.view_keys.insert((group.clone(), *view_id), k);
                    }
                }
                s.held.insert((who, group.clone()), (key.0.clone(), index as u32, 0));
            }
            ClientEvent::Left { group } => {
                s.held.remove(&(who, group.clone()));
            }
            ClientEvent::Message { sender, groups, msg_type, sealed: true, payload, .. } => {
                let g = groups.iter().next().map(Bytes::copy_from_slice).unwrap_or_default();
                if s.layered.contains(&g) {
                    return;
                }
                let opened = s
                    .held
                    .get(&(who, g.clone()))
                    .map(|(k, _, _)| k.open(&g, sender.to_string().as_bytes(), *msg_type, payload));
                let header: Option<[u8; 16]> = payload.get(..16).and_then(|h| h.try_into().ok());
                match opened {
                    Some(Ok(p)) => {
                        let no = p.get(..8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
                        if let (Some(h), Some(no)) = (header, no) {
                            if *s.nonces.entry(h).or_insert(no) != no {
                                self.violations.push(format!("nonce reused under key {:02x?}", &h[..4]));
                            }
                        }
                        *payload = Bytes::from(p);
                        s.opened += 1;
                    }
                    other => {
                        let id = ringfence_crypto::group::key_id_of(payload);
                        self.violations.push(format!(
                            "{who:?} cannot open a message of {g:?} sealed under {id:x?}: {other:?}"
                        ));
                    }
                }
            }
            ClientEvent::Undecipherable { reason, .. } => {
                *s.lost.entry(reason.name()).or_default() += 1;
                if *reason == KeyLoss::Forged {
                    self.violations.push(format!("{who:?}: a message did not open at its daemon"));
                }
            }
            _ => {}
        }
    }

    fn record(&mut self, who: Who, mut ev: ClientEvent) {
        self.keys(who, &mut ev);
        match &ev {
            ClientEvent::Membership { group, view_id, kind: ConfigKind::Regular, .. } => {
                self.cur_view.insert((who, group.clone()), *view_id);
            }
            ClientEvent::Left { group } => {
                self.cur_view.remove(&(who, group.clone()));
            }
            ClientEvent::FlushRequest { .. } if self.manual_flush.contains(&who) => {}
            ClientEvent::FlushRequest { group, flush } => {
                let d = self.rng.random_range(0..=self.flush_delay.as_micros() as u64);
                self.order += 1;
                self.actions
                    .insert((self.now + Duration::from_micros(d), self.order), (who, group.clone(), *flush));
            }
            ClientEvent::Message { payload, .. } => {
                let no = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                if let Some((_, g, v)) = self.sent_in.get(&no) {
                    let here = self.cur_view.get(&(who, g.clone()));
                    if here != Some(v) {
                        self.violations.push(format!(
                            "sending view: {who:?} got msg {no} (sent in {v}) in view {here:?}"
                        ));
                    }
                }
            }
            _ => {}
        }
        self.log.entry(who).or_default().push(ev);
    }

    /// Runs the world for `d` of virtual time.
    pub(super) fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let mut next = self.net.peek().map(|Reverse(x)| x.0);
            let mut consider = |t: Option<Time>| {
                if let Some(t) = t {
                    next = Some(next.map_or(t, |n: Time| n.min(t)));
                }
            };
            let now = self.now;
            for (s, _) in self.servers.iter_mut().zip(&self.down).filter(|x| !*x.1) {
                consider(s.poll_timeout(now));
            }
            if !self.hold_flushes {
                consider(self.actions.keys().next().map(|k| k.0));
            }
            if self.servers.iter().zip(&self.down).any(|(s, down)| !down && s.backlogged()) {
                consider(Some(self.now + Duration::from_millis(1)));
            }
            let Some(next) = next.filter(|&t| t <= end) else {
                self.now = end;
                return;
            };
            self.now = self.now.max(next);
            let now = self.now;
            while self.net.peek().is_some_and(|Reverse(x)| x.0 <= now) {
                let Some(Reverse((_, _, to, bytes))) = self.net.pop() else { break };
                self.servers[to].handle_datagram(now, bytes);
                self.drain(to);
            }
            for i in 0..self.servers.len() {
                if !self.down[i] && self.servers[i].poll_timeout(now).is_some_and(|t| t <= now) {
                    self.servers[i].handle_timeout(now);
                    self.drain(i);
                }
            }
            while let Some(e) = self.actions.first_entry().filter(|_| !self.hold_flushes) {
                if e.key().0 > now {
                    break;
                }
                let (who, g, flush) = e.remove();
                if self.down[who.0] {
                    continue;
                }
                // The client may have left or been asked again since.
                let view_id = cp::ViewId {
                    ring_seq: flush.ring_id.seq,
                    ring_rep: flush.ring_id.rep.0,
                    counter: flush.seq,
                };
                let _ = self.request(
                    who,
                    ClientFrame::FlushOk { group: String::from_utf8_lossy(&g).into(), view_id },
                );
            }
            for i in 0..self.servers.len() {
                if !self.down[i] && self.servers[i].backlogged() {
                    self.servers[i].handle_timeout(now);
                    self.drain(i);
                }
            }
        }
    }

    /// The regular views a client saw of `g`: (view id, members, cause).
    pub(super) fn views_of(&self, who: Who, g: &str) -> Vec<(ViewId, Vec<PrivateName>, Cause)> {
        self.log[&who]
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Membership {
                    group, view_id, members, cause, kind: ConfigKind::Regular, ..
                } if group == g.as_bytes() => Some((*view_id, members.to_vec(), *cause)),
                _ => None,
            })
            .collect()
    }

    /// Message numbers a client received, in order.
    pub(super) fn messages(&self, who: Who) -> Vec<u64> {
        self.log[&who]
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message { payload, .. } => {
                    Some(u64::from_be_bytes(payload[..8].try_into().expect("8 bytes")))
                }
                _ => None,
            })
            .collect()
    }

    /// Checks the invariants over every client's events; returns what broke.
    pub(super) fn check(&self) -> Vec<String> {
        let mut v = self.violations.clone();
        // 1. One view id names one membership, on every daemon.
        let mut views: BTreeMap<(Bytes, ViewId), Vec<PrivateName>> = BTreeMap::new();
        // 5. VS: members moving together between two views delivered the
        // same messages in the first.
        let mut sync: BTreeMap<(Bytes, ViewId, ViewId), (Who, BTreeSet<u64>)> = BTreeMap::new();
        // 6. VS, per group: what each client received of each sender in
        // each view (checked against what the sender sent in it, below).
        let mut got: BTreeMap<(Who, Bytes, ViewId, Who), Vec<u64>> = BTreeMap::new();
        for (who, evs) in &self.log {
            let mut last: BTreeMap<Bytes, ViewId> = BTreeMap::new();
            let mut signalled: BTreeSet<Bytes> = BTreeSet::new();
            let mut in_view: BTreeMap<Bytes, BTreeSet<u64>> = BTreeMap::new();
            for e in evs {
                match e {
                    ClientEvent::Membership { group, view_id, members, cause, kind, .. } => {
                        if *kind == ConfigKind::Transitional {
                            signalled.insert(group.clone());
                            continue;
                        }
                        let prev = views.entry((group.clone(), *view_id)).or_insert_with(|| members.to_vec());
                        if prev[..] != members[..] {
                            v.push(format!(
                                "view {view_id} of {group:?} has two memberships: {who:?} {members:?} vs {prev:?}"
                            ));
                        }
                        if let Some(p) = last.get(group) {
                            // 2. View ids only grow at a client.
                            if p >= view_id {
                                v.push(format!("{who:?}: view {view_id} of {group:?} after {p}"));
                            }
                            // 4. A network view is preceded by the transitional signal.
                            if *cause == Cause::Network && !signalled.contains(group) {
                                v.push(format!(
                                    "{who:?}: network view {view_id} without transitional signal"
                                ));
                            }
                            if let Some(msgs) =
                                in_view.remove(group).filter(|_| self.vs_groups.contains(group))
                            {
                                let key = (group.clone(), *p, *view_id);
                                match sync.get(&key) {
                                    Some((other, m)) if *m != msgs => v.push(format!(
                                        "vs: {who:?} and {other:?} delivered different messages in {p} of {group:?}: {:?} vs {:?} (next {view_id})", msgs.symmetric_difference(m).collect::<Vec<_>>(), (msgs.len(), m.len())
                                    )),
                                    Some(_) => {}
                                    None => {
                                        sync.insert(key, (*who, msgs));
                                    }
                                }
                            }
                        }
                        signalled.remove(group);
                        last.insert(group.clone(), *view_id);
                        in_view.insert(group.clone(), BTreeSet::new());
                    }
                    ClientEvent::Left { group } => {
                        last.remove(group);
                        in_view.remove(group);
                        signalled.remove(group);
                    }
                    ClientEvent::Message { groups, payload, .. } => {
                        let no = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                        for g in groups.iter() {
                            if let Some(s) = in_view.get_mut(g) {
                                s.insert(no);
                            }
                        }
                        if let Some((from, g, view)) = self.sent_in.get(&no) {
                            got.entry((*who, g.clone(), *view, *from)).or_default().push(no);
                        }
                    }
                    _ => {}
                }
            }
        }
        // 6. FIFO without gaps inside a view: what a client received of one
        // sender in one view of a VS group is, in order, a prefix of what
        // that sender sent in it.
        let mut sent: BTreeMap<(Bytes, ViewId, Who), Vec<u64>> = BTreeMap::new();
        for (no, (from, g, view)) in &self.sent_in {
            sent.entry((g.clone(), *view, *from)).or_default().push(*no);
        }
        for ((who, g, view, from), msgs) in &got {
            let all = sent.get(&(g.clone(), *view, *from)).map_or(&[][..], |s| &s[..]);
            if all.get(..msgs.len()) != Some(&msgs[..]) {
                let at = msgs.iter().zip(all).position(|(a, b)| a != b).unwrap_or(all.len());
                v.push(format!(
                    "fifo: {who:?} got {from:?}'s messages of view {view} of {g:?} with a gap: {:?} where {:?} were sent",
                    &msgs[at..msgs.len().min(at + 3)],
                    &all[at.min(all.len())..all.len().min(at + 3)]
                ));
            }
        }
        // 3. Every client sees messages in one total order.
        let seqs: Vec<(Who, Vec<u64>)> = self.log.keys().map(|w| (*w, self.messages(*w))).collect();
        for (i, (a, sa)) in seqs.iter().enumerate() {
            let pos: BTreeMap<u64, usize> = sa.iter().enumerate().map(|(i, m)| (*m, i)).collect();
            if pos.len() != sa.len() {
                v.push(format!("{a:?} received a message twice"));
            }
            for (b, sb) in &seqs[i + 1..] {
                let mut last = None;
                for m in sb {
                    if let Some(&p) = pos.get(m) {
                        if last.is_some_and(|l| l > p) {
                            v.push(format!("order: {a:?} and {b:?} disagree at msg {m}"));
                            break;
                        }
                        last = Some(p);
                    }
                }
            }
        }
        v
    }
}
