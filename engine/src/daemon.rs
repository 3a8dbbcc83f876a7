//! The ring thread: the protocol core driven over one of the socket I/O
//! backends of `crate::backend` (io_uring or portable).

use crate::backend::{self, Backend};
use crate::config::{CorePin, DaemonConfig, Multicast, Transport};
use crate::session::{ClientOut, Encoder, RING_QUEUE, SessionConfig, Sessions, ToRing, Waker};
use crate::state::{Lock, State};
use bytes::Bytes;
use crossbeam_channel::{Receiver, bounded};
use ringfence_proto::groups::{
    Cause, ClientEvent, ClientGroups, ClientId, GroupKind, GroupsError, Refusal, Submit,
};
use ringfence_proto::ring::{ConfigKind, Dest, Event, SubmitError};
use ringfence_proto::security::{LinkMode, SecurityConfig};
use ringfence_proto::wire::client::{
    self as cp, AdminRequest, ByeReason, CLIENT_VERSION, ClientFrame, DaemonFrame, ErrorCode, Limits,
    RefuseCode, ViewCause, ViewKind,
};
use ringfence_proto::{Node, Time};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How often the ring thread asks the groups layer for its next deadline.
const GROUPS_CHECK: Duration = Duration::from_millis(10);

/// Socket buffer sizes asked of the kernel.
const SOCKET_BUFFER: usize = 4 << 20;
/// Longest sleep in one wait, so a stop request is seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// How often the daemon writes its status file for `ringfence monitor`.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// Counters of the runtime (the protocol's own are in `Node::stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DaemonStats {
    /// Datagrams from addresses that are not daemons of the cluster (dropped).
    pub unknown_sources: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Sends that failed (the datagram is lost; the protocol recovers).
    pub send_errors: u64,
    /// Datagrams received.
    pub received: u64,
    /// Datagrams larger than the MTU (dropped unread).
    pub oversize: u64,
    /// Bytes of the datagrams received.
    pub received_bytes: u64,
}

/// A running daemon: the protocol core, its socket and its clock.
#[derive(Debug)]
pub struct Daemon {
    cfg: DaemonConfig,
    node: Node,
    backend: Box<dyn Backend>,
    start: Instant,
    state: State,
    stats: DaemonStats,
    groups: ClientGroups,
    requests: Receiver<ToRing>,
    clients: HashMap<u64, ClientOut>,
    /// The session threads, woken once per turn when given frames.
    sessions: Sessions,
    /// Encodes frames for clients once, into buffers shared by receivers.
    encoder: Encoder,
    /// Sessions wake the ring thread through it while it is parked.
    waker: Waker,
    /// A group message the ring refused for backpressure, retried first.
    held: Option<Submit>,
    limits: Limits,
    status_at: Instant,
    /// The groups layer's next deadline, as last asked (`GROUPS_CHECK`).
    groups_due: Option<Time>,
    groups_checked: Instant,
    /// The multicast group `Dest::All` goes to (multicast transport).
    group: Option<SocketAddr>,
    /// Failed client authentications and TLS handshakes (session threads
    /// count them).
    auth_failures: Arc<AtomicU64>,
    /// One daemon per name and state directory (held until exit).
    _lock: Lock,
    /// The last metrics rendering (`[daemon] metrics`), if the endpoint runs.
    metrics: Option<Arc<Mutex<String>>>,
    /// Clients that may send operator requests (`[clients] admin`).
    admins: HashSet<u64>,
    /// Who may send operator requests: `[clients] admin`, or by default
    /// local clients of this user and root.
    admin_patterns: Vec<String>,
    /// An operator asked the daemon to stop (`ringfence ctl shutdown`).
    stop_requested: bool,
    /// The daemon left the ring (`ringfence ctl leave`, or stopping).
    left: bool,
    /// Systemd was told the daemon is ready (first regular configuration).
    ready: bool,
}

impl Daemon {
    /// Binds the daemon's socket and starts its protocol core (gathering).
    ///
    /// First it takes the lock of its name and state directory: a second
    /// daemon of the same name fails here, before it touches a socket.
    /// Every error names the address, path or key it concerns.
    pub fn bind(cfg: DaemonConfig) -> io::Result<Self> {
        let lock = Lock::take(&cfg.state_dir, &cfg.me.name)?;
        let addr = cfg.me.address;
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // No SO_REUSEADDR on the unicast socket: another process on this
        // address and port is an error, never a silent share.
        // Best effort: the kernel may cap these.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        // We hold the name's lock, so a port still in use is most likely
        // our own previous life: an io_uring instance is torn down by the
        // kernel after its process exited, and keeps the socket bound for
        // a moment. Wait for it briefly before calling the port taken.
        let mut bound = socket.bind(&addr.into());
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while bound.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::AddrInUse)
            && std::time::Instant::now() < give_up
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
            bound = socket.bind(&addr.into());
        }
        bound.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot bind UDP {addr}, the `address` of daemon `{name}` in [[cluster.daemon]]: {e}; {}",
                    crate::session::bind_hint(
                        &e,
                        "another process uses this port: stop it, or give the daemon another port"
                    ),
                    name = cfg.me.name,
                ),
            )
        })?;
        let mut sockets = vec![];
        if let Transport::Multicast(m) = cfg.transport {
            // Sends (to the group too) leave from the unicast socket, so a
            // datagram's source is the sender's configured address.
            let context = |e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "IP multicast group {} on interface {} (`cluster.multicast_group`, \
                         `multicast_interface`): {e}; check that the interface has this address and \
                         allows multicast",
                        m.group, m.interface
                    ),
                )
            };
            socket.set_multicast_if_v4(&m.interface).map_err(context)?;
            socket.set_multicast_ttl_v4(m.ttl).map_err(context)?;
            socket.set_multicast_loop_v4(m.r#loop).map_err(context)?;
            sockets.push(socket.into());
            sockets.push(multicast_socket(&m).map_err(context)?);
            info!(group = %m.group, interface = %m.interface, ttl = m.ttl, "IP multicast transport");
        } else {
            sockets.push(socket.into());
        }
        let state = State::start(&cfg.state_dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot read or write {}: {e}; the state directory (`[paths] state_dir`) must be writable \
                     by this user",
                    cfg.state_dir.join("state").display()
                ),
            )
        })?;
        let start = Instant::now();
        let security = security_config(&cfg, state.incarnation)?;
        let node =
            Node::with_security(cfg.ring.clone(), cfg.me.id, Time::ZERO, state.incarnation(), security)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let limits = Limits::default();
        let (to_ring, requests) = bounded::<ToRing>(RING_QUEUE);
        let mut backend = backend::open(cfg.backend, sockets, cfg.ring.mtu)?;
        let waker = Waker::new()?;
        backend.set_waker(waker.fd()?)?;
        let cores = core_affinity::get_core_ids().map_or(0, |c| c.len());
        let auth_failures = Arc::new(AtomicU64::new(0));
        if let Some(tcp) = cfg.client_tcp {
            let c = &cfg.clients;
            if c.open_tcp() {
                warn!(address = %tcp, "TCP clients are not authenticated (no [clients] section): trusted networks only");
            } else {
                info!(
                    address = %tcp,
                    tls = c.tls.is_some(),
                    client_certificates = c.verifies_certs,
                    require_tls = c.require_tls,
                    tokens = c.tokens.len(),
                    "TCP client authentication"
                );
            }
        }
        let sessions = Sessions::start(SessionConfig {
            unix: &cfg.client_socket,
            tcp: cfg.client_tcp,
            clients: Arc::new(cfg.clients.clone()),
            auth_failures: Arc::clone(&auth_failures),
            to_ring,
            waker: &waker,
            limits,
            ring_core: ring_core(cfg.ring_core, cfg.me.id.0, cores),
        })?;
        let metrics = match cfg.metrics {
            None => None,
            Some(addr) => {
                let snapshot = Arc::new(Mutex::new(String::new()));
                crate::metrics::serve(addr, Arc::clone(&snapshot))?;
                Some(snapshot)
            }
        };
        let admin_patterns = if cfg.clients.admin.is_empty() {
            let uid = nix::unistd::geteuid().as_raw();
            let mut v = vec![format!("unix:{uid}")];
            if uid != 0 {
                v.push("unix:0".into());
            }
            v
        } else {
            cfg.clients.admin.clone()
        };
        let groups = ClientGroups::with_policy(
            cfg.me.id,
            ringfence_proto::groups::Limits::default(),
            Arc::new(cfg.policy.clone()),
            cfg.security.mode == LinkMode::Encrypt,
        );
        info!(
            daemon = %cfg.me.name,
            id = cfg.me.id.0,
            address = %addr,
            incarnation = state.incarnation,
            backend = backend.name(),
            "daemon started"
        );
        Ok(Self {
            group: match cfg.transport {
                Transport::Multicast(m) => Some(SocketAddr::V4(m.group)),
                Transport::Unicast => None,
            },
            cfg,
            node,
            backend,
            start,
            state,
            stats: DaemonStats::default(),
            groups,
            requests,
            clients: HashMap::new(),
            sessions,
            encoder: Encoder::new(limits),
            waker,
            held: None,
            limits,
            status_at: Instant::now(),
            groups_due: None,
            groups_checked: Instant::now(),
            auth_failures,
            _lock: lock,
            metrics,
            admins: HashSet::new(),
            admin_patterns,
            stop_requested: false,
            left: false,
            ready: false,
        })
    }

    /// The protocol core.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Runtime counters.
    pub fn stats(&self) -> &DaemonStats {
        &self.stats
    }

    fn now(&self) -> Time {
        Time::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Runs until `stop` is set.
    ///
    /// Then it stops cleanly: its clients get `Bye { Shutdown }`, it leaves
    /// the ring (the others reform at once, see [`Node::leave`]) and the
    /// session threads get a moment to write what is queued.
    pub fn run(&mut self, stop: &Arc<AtomicBool>) -> io::Result<()> {
        self.pin();
        // Status and metrics are there from the start, not 500 ms later.
        self.write_status();
        while !stop.load(Ordering::Relaxed) && !self.stop_requested {
            self.flush();
            if self.status_at.elapsed() >= STATUS_INTERVAL {
                self.status_at = Instant::now();
                self.write_status();
            }
            let now = self.now();
            // The groups' deadlines (key refresh by time, old key expiry)
            // are seconds apart: asked for every 10 ms, not per batch (the
            // question walks every group).
            if self.groups_checked.elapsed() >= GROUPS_CHECK {
                self.groups_checked = Instant::now();
                self.groups_due = self.groups.poll_timeout();
            }
            if self.groups_due.is_some_and(|d| d <= now) {
                self.groups.handle_timeout(now);
                self.groups_due = self.groups.poll_timeout();
                continue;
            }
            let next = match (self.node.poll_timeout(), self.groups_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = next.map_or(MAX_WAIT, |d| d.saturating_since(now)).min(MAX_WAIT);
            if wait.is_zero() {
                self.node.handle_timeout(now);
                continue;
            }
            // Parked: a session that hands over requests from here on
            // writes the eventfd; requests handed over before are seen here.
            self.waker.park();
            let wait = if self.held.is_none() && !self.requests.is_empty() { Duration::ZERO } else { wait };
            let Self { backend, node, stats, cfg, start, .. } = self;
            let r =
                backend.wait(wait, &mut |from, bytes| Self::receive(node, stats, cfg, *start, from, bytes));
            self.waker.unpark();
            r?;
            let now = self.now();
            if self.node.poll_timeout().is_some_and(|d| d <= now) {
                self.node.handle_timeout(now);
            }
        }
        self.stop();
        Ok(())
    }

    /// The end of [`Daemon::run`]: clients told, ring left, queues given a
    /// moment (at most 200 ms) to reach the clients.
    fn stop(&mut self) {
        crate::notify::notify("STOPPING=1");
        info!(daemon = %self.cfg.me.name, clients = self.clients.len(), "daemon stopping: leaving the ring");
        // Requests already queued (an admin reply among them) go first.
        self.flush();
        self.leave_ring("the daemon is shutting down");
        self.write_status();
        let deadline = Instant::now() + Duration::from_millis(200);
        while self.sessions.queued() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        info!(daemon = %self.cfg.me.name, "daemon stopped");
    }

    /// Leaves the ring for good: the leave goes out, every client gets
    /// `Bye { Shutdown }` saying `why`, and new clients are refused.
    fn leave_ring(&mut self, why: &str) {
        if self.left {
            return;
        }
        self.left = true;
        let now = self.now();
        self.node.leave(now);
        self.flush_ring();
        let bye = DaemonFrame::Bye {
            reason: ByeReason::Shutdown,
            text: format!("daemon `{}` left the ring: {why}", self.cfg.me.name),
        };
        if let Some(b) = self.encoder.frame(&bye) {
            for out in self.clients.values() {
                out.send_last(b.clone());
            }
        }
        for id in self.clients.keys().copied().collect::<Vec<_>>() {
            let _ = self.groups.disconnect(ClientId(id));
        }
        self.clients.clear();
        self.admins.clear();
        self.sessions.wake();
        info!(daemon = %self.cfg.me.name, "left the ring: {why}");
    }

    /// Pins the calling thread (the ring thread) to the core `[daemon]
    /// ring_core` names.
    fn pin(&self) {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let Some(want) = ring_core(self.cfg.ring_core, self.cfg.me.id.0, cores.len()) else { return };
        match cores.get(want) {
            Some(&core) if core_affinity::set_for_current(core) => {
                info!(core = core.id, "ring thread pinned");
            }
            _ => {
                warn!(core = want, available = cores.len(), "could not pin the ring thread; running unpinned")
            }
        }
    }

    /// The name of daemon `id` in the config (its number if unknown).
    fn name_of(&self, id: ringfence_proto::NodeId) -> String {
        self.cfg.peers.iter().find(|p| p.id == id).map_or_else(|| id.0.to_string(), |p| p.name.clone())
    }

    /// Writes `<state_dir>/status.json` and renders the metrics.
    fn write_status(&self) {
        let status = self.status();
        if let Some(m) = &self.metrics {
            let text = crate::metrics::render(&status);
            if let Ok(mut s) = m.lock() {
                *s = text;
            }
        }
        let path = self.cfg.state_dir.join("status.json");
        let tmp = self.cfg.state_dir.join("status.json.tmp");
        if std::fs::write(&tmp, status.to_string()).and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
            warn!(path = %path.display(), "could not write the status file");
        }
    }

    /// The daemon's status, as the status query (`ringfence monitor`,
    /// `ringfence ctl status`) and `status.json` give it: membership phase,
    /// ring, members (ids and names), clients, queues and every counter.
    pub fn status(&self) -> serde_json::Value {
        let ring = self.node.ring().map(|(id, members)| {
            serde_json::json!({
                "seq": id.seq,
                "rep": id.rep.0,
                "members": members.iter().map(|m| m.0).collect::<Vec<_>>(),
                "names": members.iter().map(|&m| self.name_of(m)).collect::<Vec<_>>(),
            })
        });
        let g = self.groups.stats();
        let mut list = self.groups.report();
        let groups_total = list.len();
        // A reply is one frame: the busiest daemons list their first 200 groups.
        list.truncate(200);
        serde_json::json!({
            "daemon": self.cfg.me.name,
            "id": self.cfg.me.id.0,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "backend": self.backend.name(),
            "address": self.cfg.me.address.to_string(),
            "incarnation": self.state.incarnation,
            "uptime_ms": u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
            "phase": format!("{:?}", self.node.phase()),
            "operational": self.node.phase() == ringfence_proto::Phase::Operational,
            "ring": ring,
            "ring_size": self.node.ring().map_or(0, |(_, m)| m.len()),
            "clients": self.clients.len(),
            "queues": {
                "ring_requests": self.requests.len(),
                "client_frames": self.sessions.queued(),
                "pending_messages": self.node.pending(),
            },
            "auth_failures": self.auth_failures.load(Ordering::Relaxed),
            "protocol": self.node.stats(),
            "security": self.node.security_stats(),
            "runtime": self.stats,
            "groups": {
                "messages_delivered": g.messages_delivered,
                "views_installed": g.views_installed,
                "malformed": g.malformed,
                "denials": g.denials,
                "keys_derived": g.keys_derived,
                "evs_fixes": g.evs_fixes,
                "sealed_for_clients": g.sealed_for_clients,
                "undecipherable": g.undecipherable,
                "rekeys": g.rekeys,
                "count": groups_total,
                "list": list,
            },
        })
    }

    fn receive(
        node: &mut Node,
        stats: &mut DaemonStats,
        cfg: &DaemonConfig,
        start: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        stats.received += 1;
        stats.received_bytes += bytes.len() as u64;
        if from == cfg.me.address {
            return; // our own multicast datagram, looped back
        }
        if !cfg.peers.iter().any(|p| p.address == from) {
            stats.unknown_sources += 1;
            return;
        }
        let now = Time::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        node.handle_datagram(now, Bytes::copy_from_slice(bytes));
    }

    /// Takes client requests, hands group messages to the ring, sends what
    /// the core produced and delivers what it ordered.
    fn flush(&mut self) {
        let now = self.now();
        // Requests from sessions, unless the ring is refusing messages
        // (then the bounded channel fills and the sessions block).
        // (Bounded by the channel's capacity: sessions block when it is full.)
        while self.held.is_none() {
            let Ok(req) = self.requests.try_recv() else { break };
            self.request(req);
            self.submit(now);
        }
        self.submit(now);
        self.flush_ring();
    }

    fn submit(&mut self, now: Time) {
        loop {
            let Some(s) = self.held.take().or_else(|| self.groups.poll_submit()) else { return };
            match self.node.submit(now, s.service, s.groups.clone(), s.payload.clone()) {
                Ok(_) => {}
                Err(SubmitError::Backlogged) => {
                    self.held = Some(s);
                    return;
                }
                Err(e) => warn!(error = %e, "group message refused by the ring"),
            }
        }
    }

    fn request(&mut self, req: ToRing) {
        match req {
            ToRing::Connect { id, hello_name, principal, out } => {
                let who = principal.policy_name();
                let admin = self.admin_patterns.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => who.starts_with(prefix),
                    None => *p == who,
                });
                // After a leave only operators get in (status, shutdown).
                if self.left && !admin {
                    let refused = DaemonFrame::Refused {
                        code: RefuseCode::ShuttingDown,
                        text: format!(
                            "daemon `{}` has left the ring (`ringfence ctl leave` or stopping); restart it to \
                             rejoin, or connect to another daemon",
                            self.cfg.me.name
                        ),
                    };
                    if let Some(b) = self.encoder.frame(&refused) {
                        out.send_last(b);
                    }
                    return;
                }
                match self.groups.connect_secure(
                    ClientId(id),
                    hello_name.as_bytes(),
                    &who,
                    principal.secure(),
                ) {
                    Ok(name) => {
                        // The groups layer will take the principal for its
                        // access policy; for now it is logged.
                        let policy = principal.policy_name();
                        info!(client = id, name = %name, %principal, policy = %policy, "client connected");
                        let welcome = cp::Welcome {
                            version: CLIENT_VERSION,
                            daemon_id: self.cfg.me.id.0,
                            private_name: name.to_string(),
                            max_frame_len: self.limits.max_frame_len,
                            max_payload: self.limits.max_payload,
                            max_groups: self.limits.max_groups,
                        };
                        if let Some(b) = self.encoder.frame(&DaemonFrame::Welcome(welcome)) {
                            out.send(b);
                        }
                        self.clients.insert(id, out);
                        if admin {
                            self.admins.insert(id);
                        }
                    }
                    Err(e) => {
                        let code = match e {
                            GroupsError::DuplicateName => RefuseCode::NameInUse,
                            GroupsError::TooManyClients => RefuseCode::TooManyClients,
                            _ => RefuseCode::ProtocolViolation,
                        };
                        let refused = DaemonFrame::Refused { code, text: e.to_string() };
                        if let Some(b) = self.encoder.frame(&refused) {
                            out.send_last(b);
                        }
                    }
                }
            }
            ToRing::Gone { id } => {
                let _ = self.groups.disconnect(ClientId(id));
                self.clients.remove(&id);
                self.admins.remove(&id);
            }
            ToRing::Frame { id, frame: ClientFrame::Admin { tag, request } } => self.admin(id, tag, request),
            ToRing::Frame { id, frame } => {
                let c = ClientId(id);
                let r = match frame {
                    ClientFrame::Join { group } => self.groups.join(c, group.as_bytes(), GroupKind::Open),
                    ClientFrame::JoinVs { group } => self.groups.join(c, group.as_bytes(), GroupKind::Vs),
                    ClientFrame::JoinMode { group, vs, mode } => {
                        let kind = if vs { GroupKind::Vs } else { GroupKind::Open };
                        self.groups.join_mode(c, group.as_bytes(), kind, mode)
                    }
                    ClientFrame::Leave { group } => self.groups.leave(c, group.as_bytes()),
                    ClientFrame::Multicast(m) => self.groups.multicast(
                        c,
                        m.service,
                        &m.groups,
                        m.msg_type,
                        m.payload,
                        m.self_discard,
                        m.sealed,
                    ),
                    ClientFrame::FlushOk { group, .. } => self.groups.flush_ok(c, group.as_bytes()),
                    ClientFrame::Hello(_) | ClientFrame::Bye | ClientFrame::Admin { .. } => Ok(()),
                };
                if let Err(e) = r {
                    let code = match e {
                        GroupsError::NotMember => ErrorCode::NotMember,
                        GroupsError::AlreadyMember => ErrorCode::AlreadyMember,
                        GroupsError::Denied => ErrorCode::Denied,
                        GroupsError::ModeMismatch => ErrorCode::ModeMismatch,
                        GroupsError::NoServerKey => ErrorCode::NoServerKey,
                        GroupsError::WrongKey | GroupsError::KeyedMultiDestination => ErrorCode::WrongKey,
                        GroupsError::InsecureTransport => ErrorCode::InsecureTransport,
                        GroupsError::NoFlush => ErrorCode::StaleView,
                        GroupsError::TooManyGroups => ErrorCode::TooManyGroups,
                        GroupsError::Flushing => ErrorCode::Flushing,
                        // Names and destination lists the decoder let through
                        // but the groups do not take; the connect-time errors
                        // cannot come from a request.
                        _ => ErrorCode::BadRequest,
                    };
                    if matches!(
                        e,
                        GroupsError::Denied | GroupsError::ModeMismatch | GroupsError::InsecureTransport
                    ) {
                        info!(client = id, error = %e, "client request denied");
                    }
                    if let Some(out) = self.clients.get(&id) {
                        let error = DaemonFrame::Error { code, text: e.to_string() };
                        if let Some(b) = self.encoder.frame(&error) {
                            out.send(b);
                        }
                    }
                }
            }
        }
    }

    /// Carries out an operator's request from client `id` and answers it.
    fn admin(&mut self, id: u64, tag: u32, request: AdminRequest) {
        let Some(out) = self.clients.get(&id).cloned() else { return };
        if !self.admins.contains(&id) {
            info!(client = id, request = request.name(), "operator request denied");
            let error = DaemonFrame::Error {
                code: ErrorCode::Denied,
                text: format!(
                    "`{}` is for operators: this client is not in `[clients] admin` of daemon `{}` (default: \
                     local clients of the daemon's user and root)",
                    request.name(),
                    self.cfg.me.name
                ),
            };
            if let Some(b) = self.encoder.frame(&error) {
                out.send(b);
            }
            return;
        }
        let now = self.now();
        let (ok, text) = match request {
            AdminRequest::Status => (true, self.status().to_string()),
            AdminRequest::Rekey => match self.node.request_refresh(now) {
                Ok(()) => {
                    info!(daemon = %self.cfg.me.name, client = id, "server key refresh asked by an operator");
                    (true, format!("daemon `{}` asked the ring for a new server key", self.cfg.me.name))
                }
                Err(why) => (false, format!("daemon `{}` cannot rekey now: {why}", self.cfg.me.name)),
            },
            AdminRequest::Leave => {
                info!(daemon = %self.cfg.me.name, client = id, "leaving the ring: asked by an operator");
                (true, format!("daemon `{}` left the ring; restart it to rejoin", self.cfg.me.name))
            }
            AdminRequest::Shutdown => {
                info!(daemon = %self.cfg.me.name, client = id, "shutting down: asked by an operator");
                self.stop_requested = true;
                (true, format!("daemon `{}` is leaving the ring and stopping", self.cfg.me.name))
            }
        };
        let reply = DaemonFrame::AdminReply { tag, ok, text };
        if let Some(b) = self.encoder.frame(&reply) {
            out.send(b);
        }
        if request == AdminRequest::Leave {
            self.leave_ring("asked by an operator (`ringfence ctl leave`)");
        }
    }

    /// Gives a client event to its session thread, encoded: a message once
    /// for all the local clients it goes to in a row (one shared buffer). A
    /// client whose queue is full is disconnected by its session thread,
    /// which says why and sends `ToRing::Gone`.
    fn deliver_to_client(&mut self, id: ClientId, ev: ClientEvent) {
        let Some(out) = self.clients.get(&id.0) else { return };
        let frame = match ev {
            ClientEvent::Message { sender, groups, service, msg_type, sealed, payload } => {
                let Some(b) = self.encoder.message(&sender, &groups, service, msg_type, sealed, &payload)
                else {
                    return;
                };
                if !out.send(b) {
                    self.session_gone(id);
                }
                return;
            }
            ClientEvent::Membership { group, view_id, members, cause, kind, mode, key } => {
                DaemonFrame::Membership(cp::Membership {
                    group: String::from_utf8_lossy(&group).into_owned(),
                    view_id: cp::ViewId {
                        ring_seq: view_id.ring_id.seq,
                        ring_rep: view_id.ring_id.rep.0,
                        counter: view_id.counter,
                    },
                    kind: match kind {
                        ConfigKind::Regular => ViewKind::Regular,
                        ConfigKind::Transitional => ViewKind::Transitional,
                    },
                    cause: match cause {
                        Cause::Join => ViewCause::Join,
                        Cause::Leave => ViewCause::Leave,
                        Cause::Disconnect => ViewCause::Disconnect,
                        Cause::Network => ViewCause::Network,
                        Cause::Rekey => ViewCause::Rekey,
                    },
                    members: members.iter().map(ToString::to_string).collect(),
                    mode,
                    key: key.map(|k| (k.id(), k.0.secret().clone())),
                })
            }
            ClientEvent::Undecipherable { sender, group, msg_type, key_id, reason } => {
                DaemonFrame::Undecipherable {
                    sender: sender.to_string(),
                    group: String::from_utf8_lossy(&group).into_owned(),
                    msg_type,
                    key_id,
                    reason,
                }
            }
            ClientEvent::FlushRequest { group, flush } => DaemonFrame::FlushRequest {
                group: String::from_utf8_lossy(&group).into_owned(),
                view_id: cp::ViewId {
                    ring_seq: flush.ring_id.seq,
                    ring_rep: flush.ring_id.rep.0,
                    counter: flush.seq,
                },
            },
            ClientEvent::JoinRefused { group, reason } => DaemonFrame::Error {
                code: match reason {
                    Refusal::ModeMismatch => ErrorCode::ModeMismatch,
                    Refusal::NoServerKey => ErrorCode::NoServerKey,
                    _ => ErrorCode::Denied,
                },
                text: format!("join {} refused: {reason:?}", String::from_utf8_lossy(&group)),
            },
            ClientEvent::Left { .. } => return,
        };
        let Some(b) = self.encoder.frame(&frame) else { return };
        if !out.send(b) {
            self.session_gone(id);
        }
    }

    /// The client's session thread is gone (the daemon is stopping): forget
    /// the client.
    fn session_gone(&mut self, id: ClientId) {
        warn!(client = id.0, "client session thread gone; disconnecting");
        self.clients.remove(&id.0);
        let _ = self.groups.disconnect(id);
    }

    /// Sends what the core produced and logs what it delivered.
    fn flush_ring(&mut self) {
        let now = self.now();
        while let Some(ev) = self.node.poll_event() {
            self.groups.handle_event(now, &ev);
            if let Event::Configuration(c) = ev {
                let names: Vec<String> = c.members.iter().map(|&m| self.name_of(m)).collect();
                let members = names.join(", ");
                let kind = match c.kind {
                    ConfigKind::Regular => "regular",
                    ConfigKind::Transitional => "transitional",
                };
                info!(daemon = %self.cfg.me.name, ring = %c.ring_id, members = %format!("[{members}]"), "{kind} configuration");
                if c.kind == ConfigKind::Regular {
                    let status = format!("STATUS=ring {} of [{members}]", c.ring_id);
                    if self.ready {
                        crate::notify::notify(&status);
                    } else {
                        self.ready = true;
                        crate::notify::notify(&format!("READY=1\n{status}"));
                    }
                }
            }
        }
        while let Some(a) = self.node.poll_alert() {
            warn!(daemon = %self.cfg.me.name, peer = %self.name_of(a.peer), "{}", a.text);
        }
        while let Some((id, ev)) = self.groups.poll_client() {
            self.deliver_to_client(id, ev);
        }
        // One wake-up per session thread for all it was given this turn.
        self.sessions.wake();
        // Group control produced by the events (state exchange, views).
        self.submit(now);
        // The sequence of a ring this daemon numbered (announced in a
        // commit token) is on disk before any datagram leaves: a restart
        // never numbers a ring it already used. A sequence only claimed by
        // a datagram is not persisted.
        let seq = self.node.ring_seq_to_persist();
        if seq > self.state.ring_seq {
            if let Err(e) = self.state.set_ring_seq(seq) {
                warn!(error = %e, "could not persist the ring sequence; not sending");
                return;
            }
        }
        while let Some(t) = self.node.poll_transmit() {
            match t.dest {
                Dest::All => match self.group {
                    Some(group) => self.backend.send(group, &t.bytes),
                    None => {
                        for p in &self.cfg.peers {
                            if p.id != self.cfg.me.id {
                                self.backend.send(p.address, &t.bytes);
                            }
                        }
                    }
                },
                Dest::Node(id) => {
                    if let Some(p) = self.cfg.peers.iter().find(|p| p.id == id) {
                        self.backend.send(p.address, &t.bytes);
                    }
                }
            }
        }
        // One submission for the whole visit on io_uring.
        if let Err(e) = self.backend.flush_sends() {
            warn!(error = %e, backend = self.backend.name(), "sends failed");
        }
        (self.stats.sent, self.stats.send_errors) = self.backend.counters();
        self.stats.oversize = self.backend.oversize();
    }
}

/// The receive socket of the multicast transport: bound to the group's port
/// (shared with other daemons of this host), joined on the interface.
fn multicast_socket(m: &Multicast) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    socket.bind(&SocketAddr::V4(m.group).into())?;
    socket.join_multicast_v4(m.group.ip(), &m.interface)?;
    Ok(socket.into())
}

/// The protocol core's security settings from the daemon's config: the
/// identity file read, every peer's public key, a fresh seed from the
/// operating system.
fn security_config(cfg: &DaemonConfig, incarnation: u32) -> io::Result<SecurityConfig> {
    let s = &cfg.security;
    let identity = match (&s.identity, s.mode) {
        (_, LinkMode::None) | (None, _) => None,
        (Some(path), _) => {
            let id = ringfence_crypto::identity::load_secret(path).map_err(|e| {
                let hint = match &e {
                    ringfence_crypto::identity::IdentityError::Io { source, .. }
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        format!(
                            "; make it with `ringfence keygen daemon {name} --dir {}` and put the `public_key` \
                             line it prints under `{name}`'s [[cluster.daemon]] in every daemon's config (or \
                             point `security.identity` at the key file)",
                            path.parent().map_or_else(|| ".".into(), |d| d.display().to_string()),
                            name = cfg.me.name
                        )
                    }
                    _ => String::new(),
                };
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("secret key of daemon `{}` (`security.identity`): {e}{hint}", cfg.me.name),
                )
            })?;
            if cfg.me.public_key.as_ref().is_some_and(|k| *k != id.public()) {
                // The other daemons would reject every datagram it sends:
                // it could accept clients but never join a ring.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: this secret key (`security.identity`) does not match `cluster.daemon.public_key` \
                         of daemon `{name}`; the other daemons would reject its datagrams. Use the key \
                         file that belongs to `{name}`, or make a new pair with `ringfence keygen daemon \
                         {name}` and put the `public_key` line it prints under `{name}`'s [[cluster.daemon]] \
                         in every daemon's config",
                        path.display(),
                        name = cfg.me.name,
                    ),
                ));
            }
            Some(Arc::new(id))
        }
    };
    let peers = cfg.peers.iter().filter_map(|p| Some((p.id, p.public_key?))).collect();
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    Ok(SecurityConfig {
        mode: s.mode,
        identity,
        peers,
        aead: s.aead,
        refresh_after: s.refresh_after,
        refresh_bytes: s.refresh_bytes,
        seed,
        incarnation,
        policy_digest: cfg.policy.digest(),
    })
}

/// The index (in `core_affinity::get_core_ids()`) of the core the ring thread
/// of daemon `id` is pinned to under `pin`, on a machine with `cores` cores;
/// `None` when it is not pinned. The session threads take the other cores.
pub(crate) fn ring_core(pin: CorePin, id: u16, cores: usize) -> Option<usize> {
    match pin {
        CorePin::None => None,
        CorePin::Core(i) => Some(i),
        CorePin::Auto if cores < 2 => None,
        CorePin::Auto => Some(usize::from(id) % cores),
    }
}
