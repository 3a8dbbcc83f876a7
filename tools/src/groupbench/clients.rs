//! The benchmark's clients: a few worker threads, each polling its share of
//! the connections without blocking (and waiting in `poll(2)` when none
//! has anything), answering flush requests at once and
//! reporting every view and secure view with the instant it was read.
//!
//! ```text
//! coordinator ──Cmd──► worker k (clients i with i % threads == k) ──poll──► daemons
//!      ▲                    │
//!      └────── Report ──────┘  (client, instant, regular view | secure view | problem)
//! ```
//!
//! A secure view is a layered group's `Event::SecureView` or an integrated
//! group's keyed regular `Membership`; both carry what the coordinator needs
//! to check that every member of a view holds the same key (the view's
//! epoch or id, and a fingerprint of the key: the layered key id, which is
//! an HMAC of the key, or a hash of the integrated key with its id).

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ringfence_client::{Client, Event, GroupMode, ViewKind};
use ringfence_proto::wire::client::ErrorCode;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a worker is asked to do with one of its clients.
pub(crate) enum Cmd {
    /// Take over a connected client.
    Add(usize, Box<Client>),
    /// Join a group in a mode (closed VS for `integrated-vs` and layered).
    Join(usize, String, GroupMode),
    /// Leave a group.
    Leave(usize, String),
    /// Say goodbye and close every client.
    DropAll,
}

/// What a worker saw.
pub(crate) struct Report {
    pub(crate) client: usize,
    pub(crate) at: Instant,
    pub(crate) seen: Seen,
}

/// One observation.
pub(crate) enum Seen {
    /// A regular view of a group (keyed or not).
    View { group: String, members: BTreeSet<String> },
    /// A secure view: the members hold the view's key.
    Secure { group: String, view: String, key: u64, members: BTreeSet<String> },
    /// The daemon refused one of the client's sends because it had already
    /// answered the group's flush (`ErrorCode::Flushing`): a layered
    /// engine's protocol message racing the end of a view. Counted, not a
    /// failure: the next view restarts the agreement, and the event still
    /// has to end with every member holding one key.
    RefusedWhileFlushing,
    /// Something that must not happen in a run (a refused agreement, an
    /// undecipherable message, an error from the daemon, a lost connection).
    Problem(String),
}

/// Whether an `Error` event is the harmless answer to a late `flush_ok`
/// (joins in quick succession restart a flush; the daemon then finds no
/// request outstanding for one of the answers).
fn stale_flush_ok(text: &str) -> bool {
    text == "no flush requested" || text.contains("stale") || text.contains("no flush")
}

/// The worker threads and the channel their reports arrive on.
pub(crate) struct Workers {
    cmds: Vec<Sender<Cmd>>,
    threads: Vec<JoinHandle<()>>,
    pub(crate) reports: Receiver<Report>,
}

impl Workers {
    /// Starts `n` workers (at least one).
    pub(crate) fn start(n: usize) -> Self {
        let (report_tx, reports) = mpsc::channel();
        let mut cmds = Vec::new();
        let mut threads = Vec::new();
        for k in 0..n.max(1) {
            let (tx, rx) = mpsc::channel();
            let out = report_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("groupbench-{k}"))
                .spawn(move || work(&rx, &out))
                .expect("cannot start a worker thread");
            cmds.push(tx);
            threads.push(t);
        }
        Self { cmds, threads, reports }
    }

    fn to(&self, client: usize) -> &Sender<Cmd> {
        &self.cmds[client % self.cmds.len()]
    }

    /// Hands client `id` to its worker.
    pub(crate) fn add(&self, id: usize, c: Client) {
        let _ = self.to(id).send(Cmd::Add(id, Box::new(c)));
    }

    /// Client `id` joins `group` in `mode`.
    pub(crate) fn join(&self, id: usize, group: &str, mode: GroupMode) {
        let _ = self.to(id).send(Cmd::Join(id, group.to_string(), mode));
    }

    /// Client `id` leaves `group`.
    pub(crate) fn leave(&self, id: usize, group: &str) {
        let _ = self.to(id).send(Cmd::Leave(id, group.to_string()));
    }

    /// Every worker closes its clients.
    pub(crate) fn drop_all(&self) {
        for c in &self.cmds {
            let _ = c.send(Cmd::DropAll);
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.cmds.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A fingerprint of an integrated view key: equal keys give equal values.
fn fingerprint(key_id: u32, key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    key_id.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// One worker's loop: commands, then a sweep over its clients; a short
/// sleep when neither brought anything. Ends when the coordinator hangs up.
fn work(cmds: &Receiver<Cmd>, out: &Sender<Report>) {
    let mut clients: Vec<(usize, Client)> = Vec::new();
    loop {
        let mut idle = true;
        loop {
            match cmds.try_recv() {
                Ok(cmd) => {
                    idle = false;
                    command(&mut clients, cmd, out);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    for (_, c) in clients.drain(..) {
                        let _ = c.disconnect();
                    }
                    return;
                }
            }
        }
        let mut dead = Vec::new();
        for (slot, (id, c)) in clients.iter_mut().enumerate() {
            loop {
                match c.poll() {
                    Ok(Some(e)) => {
                        idle = false;
                        if let Some(seen) = handle(c, e) {
                            let _ = out.send(Report { client: *id, at: Instant::now(), seen });
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let seen = Seen::Problem(format!("connection lost: {e}"));
                        let _ = out.send(Report { client: *id, at: Instant::now(), seen });
                        dead.push(slot);
                        break;
                    }
                }
            }
        }
        for slot in dead.into_iter().rev() {
            clients.swap_remove(slot);
        }
        if idle {
            wait_readable(&clients);
        }
    }
}

/// Waits until one of `clients` has something to read, at most 1 ms (the
/// coordinator's commands are looked at in between).
fn wait_readable(clients: &[(usize, Client)]) {
    if clients.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
        return;
    }
    let mut fds: Vec<PollFd<'_>> =
        clients.iter().map(|(_, c)| PollFd::new(c.as_fd(), PollFlags::POLLIN)).collect();
    let _ = poll(&mut fds, PollTimeout::from(1u8));
}

fn command(clients: &mut Vec<(usize, Client)>, cmd: Cmd, out: &Sender<Report>) {
    let problem = |id: usize, text: String| {
        let _ = out.send(Report { client: id, at: Instant::now(), seen: Seen::Problem(text) });
    };
    match cmd {
        Cmd::Add(id, c) => clients.push((id, *c)),
        Cmd::Join(id, group, mode) => {
            if let Some((_, c)) = clients.iter_mut().find(|(i, _)| *i == id) {
                let vs = mode == GroupMode::IntegratedVs || mode.layered();
                if let Err(e) = c.join_with(&group, vs, mode) {
                    problem(id, format!("join {group}: {e}"));
                }
            }
        }
        Cmd::Leave(id, group) => {
            if let Some((_, c)) = clients.iter_mut().find(|(i, _)| *i == id) {
                if let Err(e) = c.leave(&group) {
                    problem(id, format!("leave {group}: {e}"));
                }
            }
        }
        Cmd::DropAll => {
            for (_, c) in clients.drain(..) {
                let _ = c.disconnect();
            }
        }
    }
}

/// What an event means for the benchmark; answers flush requests.
fn handle(c: &mut Client, e: Event) -> Option<Seen> {
    match e {
        Event::FlushRequest { group, view_id } => {
            // An answer to a flush the daemon already finished is refused
            // harmlessly (below); anything else is a problem.
            c.flush_ok(&group, view_id).err().map(|e| Seen::Problem(format!("flush_ok {group}: {e}")))
        }
        Event::Membership(v) if v.kind == ViewKind::Regular => {
            let members: BTreeSet<String> = v.members.iter().cloned().collect();
            match &v.key {
                Some((id, key)) if v.mode.keyed() => Some(Seen::Secure {
                    view: format!("{:?}", v.view_id),
                    key: fingerprint(*id, key.expose_secret()),
                    group: v.group,
                    members,
                }),
                _ => Some(Seen::View { group: v.group, members }),
            }
        }
        Event::SecureView { group, epoch, key_id, members } => Some(Seen::Secure {
            group,
            view: epoch.to_string(),
            key: u64::from(key_id),
            members: members.into_iter().collect(),
        }),
        Event::AgreementRefused { group, sender, reason } => {
            Some(Seen::Problem(format!("agreement refused in {group} (sender {sender:?}): {reason}")))
        }
        Event::Undecipherable { group, reason, .. } => {
            Some(Seen::Problem(format!("undecipherable message in {group}: {reason}")))
        }
        Event::Error { text, .. } if stale_flush_ok(&text) => None,
        Event::Error { code: ErrorCode::Flushing, .. } => Some(Seen::RefusedWhileFlushing),
        Event::Error { code, text } => Some(Seen::Problem(format!("daemon error {code:?}: {text}"))),
        _ => None,
    }
}

/// The coordinator's record of what every client saw last, per group.
#[derive(Default)]
pub(crate) struct Book {
    /// The latest secure view per (client, group).
    secure: HashMap<(usize, String), Secure>,
    /// The latest regular view per (client, group): when, and its members.
    views: HashMap<(usize, String), (Instant, BTreeSet<String>)>,
    /// Problems per client, not yet claimed.
    problems: Vec<(usize, String)>,
    /// [`Seen::RefusedWhileFlushing`] reports, over the whole run.
    pub(crate) refused_while_flushing: u64,
}

struct Secure {
    at: Instant,
    view: String,
    key: u64,
    members: BTreeSet<String>,
}

/// The members of one group that must end up together in one secure view.
pub(crate) struct Side {
    pub(crate) group: String,
    pub(crate) clients: Vec<usize>,
    pub(crate) names: BTreeSet<String>,
}

/// When an event completed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Done {
    /// The last member's new secure view.
    pub(crate) last_secure: Instant,
    /// The longest, over the sides, from the side's first new regular view
    /// (at any of its members) to its last member's secure view: the key
    /// agreement and its delivery, without the daemons' membership change.
    pub(crate) agreement: Duration,
    /// Members checked (each holding its side's one key).
    pub(crate) members: usize,
}

impl Book {
    /// Records a report.
    pub(crate) fn absorb(&mut self, r: Report) {
        match r.seen {
            Seen::View { group, members } => {
                self.views.insert((r.client, group), (r.at, members));
            }
            Seen::Secure { group, view, key, members } => {
                // A layered secure view follows its view (keep the view's
                // time); an integrated one is the view itself.
                let k = (r.client, group.clone());
                if self.views.get(&k).is_none_or(|(_, m)| *m != members) {
                    self.views.insert(k, (r.at, members.clone()));
                }
                self.secure.insert((r.client, group), Secure { at: r.at, view, key, members });
            }
            Seen::RefusedWhileFlushing => self.refused_while_flushing += 1,
            Seen::Problem(p) => self.problems.push((r.client, p)),
        }
    }

    /// Forgets what the clients saw (between trials); keeps the run's
    /// counter.
    pub(crate) fn clear(&mut self) {
        *self = Self { refused_while_flushing: self.refused_while_flushing, ..Self::default() };
    }

    /// `Some` once every side's members all hold one secure view (the same
    /// view and key) of exactly the side's members, read at or after `t0`.
    fn check(&self, sides: &[Side], t0: Instant) -> Option<Done> {
        let mut last = t0;
        let mut agreement = Duration::ZERO;
        for side in sides {
            let mut agreed: Option<(&str, u64)> = None;
            let mut side_first: Option<Instant> = None;
            let mut side_last = t0;
            for &c in &side.clients {
                let s = self.secure.get(&(c, side.group.clone()))?;
                if s.at < t0 || s.members != side.names {
                    return None;
                }
                match agreed {
                    None => agreed = Some((&s.view, s.key)),
                    Some(a) if a != (s.view.as_str(), s.key) => return None,
                    Some(_) => {}
                }
                side_last = side_last.max(s.at);
                if let Some((at, m)) = self.views.get(&(c, side.group.clone())) {
                    if *at >= t0 && *m == side.names {
                        side_first = Some(side_first.map_or(*at, |f| f.min(*at)));
                    }
                }
            }
            last = last.max(side_last);
            agreement = agreement.max(side_last - side_first.unwrap_or(side_last));
        }
        Some(Done { last_secure: last, agreement, members: sides.iter().map(|s| s.clients.len()).sum() })
    }

    /// Why `sides` are not done yet (for a timeout's message).
    fn lagging(&self, sides: &[Side], t0: Instant) -> String {
        let mut out = Vec::new();
        for side in sides {
            let mut keys = BTreeSet::new();
            let mut missing = 0;
            let viewed = side
                .clients
                .iter()
                .filter(|&&c| {
                    self.views
                        .get(&(c, side.group.clone()))
                        .is_some_and(|(at, m)| *at >= t0 && *m == side.names)
                })
                .count();
            for &c in &side.clients {
                match self.secure.get(&(c, side.group.clone())) {
                    Some(s) if s.at >= t0 && s.members == side.names => {
                        keys.insert((s.view.clone(), s.key));
                    }
                    _ => missing += 1,
                }
            }
            // The regular views the members hold: (members, read after the cause) -> how many.
            let mut held: BTreeMap<(usize, bool), usize> = BTreeMap::new();
            for &c in &side.clients {
                if let Some((at, m)) = self.views.get(&(c, side.group.clone())) {
                    *held.entry((m.len(), *at >= t0)).or_default() += 1;
                }
            }
            let held: Vec<String> = held
                .iter()
                .map(|((n, after), count)| {
                    format!("{count} in a view of {n}{}", if *after { "" } else { " from before the cause" })
                })
                .collect();
            out.push(format!(
                "{}: {missing} of {} members without the expected secure view, {} distinct keys among the rest, \
                 {viewed} with the expected regular view (regular views held: {})",
                side.group,
                side.clients.len(),
                keys.len(),
                if held.is_empty() { "none".to_string() } else { held.join(", ") }
            ));
        }
        out.join("; ")
    }

    /// Waits (at most `limit`) until [`Book::check`] holds, reading reports.
    /// A problem reported by any client fails the wait.
    pub(crate) fn wait(
        &mut self,
        reports: &Receiver<Report>,
        sides: &[Side],
        t0: Instant,
        limit: Duration,
    ) -> Result<Done, String> {
        let deadline = Instant::now() + limit;
        loop {
            let ours = |c: &usize| sides.iter().any(|s| s.clients.contains(c));
            if let Some((c, p)) = self.problems.iter().find(|(c, _)| ours(c)) {
                return Err(format!("client {c}: {p}"));
            }
            if let Some(d) = self.check(sides, t0) {
                return Ok(d);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("timed out after {limit:?}: {}", self.lagging(sides, t0)));
            }
            match reports.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
                Ok(r) => {
                    self.absorb(r);
                    while let Ok(r) = reports.try_recv() {
                        self.absorb(r);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err("the workers stopped".into()),
            }
        }
    }
}
