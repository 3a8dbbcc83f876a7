//! The ring thread: the daemon core ([`Server`]) driven over one of the
//! socket I/O backends of `crate::backend` (io_uring or portable). The
//! runtime owns the sockets, the threads, the clock and the state file;
//! every decision is the core's.

use crate::backend::{self, Backend};
use crate::config::{CorePin, DaemonConfig, Multicast, Transport};
use crate::session::{ClientOut, RING_QUEUE, SessionConfig, Sessions, ToRing, Waker};
use crate::state::{Lock, State};
use bytes::BytesMut;
use crossbeam_channel::{Receiver, bounded};
use ringfence_proto::groups::{ClientId, GroupsError, Limits as GroupLimits};
use ringfence_proto::ring::{ConfigKind, Configuration, Dest};
use ringfence_proto::security::{LinkMode, SecurityConfig};
use ringfence_proto::server::{Handled, Server, ServerConfig, ServerEvent, fit_client_limits};
use ringfence_proto::wire::client::{AdminRequest, Limits};
use ringfence_proto::{Node, Time};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Socket buffer sizes asked of the kernel.
const SOCKET_BUFFER: usize = 4 << 20;
/// Longest sleep in one wait, so a stop request is seen promptly.
/// Bytes of a block received datagrams are copied into.
const RX_BLOCK: usize = ringfence_proto::block::BLOCK;
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
    /// UDP GSO sends (each a run of 2 or more datagrams to one peer).
    pub gso_sends: u64,
    /// Datagrams those GSO sends carried.
    pub gso_segments: u64,
    /// Receives that handed over datagrams the kernel coalesced (UDP GRO).
    pub gro_receives: u64,
    /// Datagrams those receives carried.
    pub gro_segments: u64,
}

/// A running daemon: the daemon core, its sockets and its clock.
#[derive(Debug)]
pub struct Daemon {
    cfg: DaemonConfig,
    /// Node, client groups and client sessions: every decision.
    server: Server,
    backend: Box<dyn Backend>,
    /// The free rest of the block received datagrams are copied into (see
    /// `receive`).
    rx_block: BytesMut,
    start: Instant,
    state: State,
    stats: DaemonStats,
    requests: Receiver<ToRing>,
    /// Where each connected client's frames go.
    clients: HashMap<u64, ClientOut>,
    /// The session threads, woken once per turn when given frames.
    sessions: Sessions,
    /// Sessions wake the ring thread through it while it is parked.
    waker: Waker,
    status_at: Instant,
    /// The multicast group `Dest::All` goes to (multicast transport).
    group: Option<SocketAddr>,
    /// Failed client authentications and TLS handshakes (session threads
    /// count them).
    auth_failures: Arc<AtomicU64>,
    /// One daemon per name and state directory (held until exit).
    _lock: Lock,
    /// The last metrics rendering (`[daemon] metrics`), if the endpoint runs.
    metrics: Option<Arc<Mutex<String>>>,
    /// An operator asked the daemon to stop (`ringfence ctl shutdown`).
    stop_requested: bool,
    /// Systemd was told the daemon is ready (first regular configuration).
    ready: bool,
    /// The last membership state logged at debug level (`Node::describe`).
    described: String,
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
        // Payloads the ring can always carry once the groups layer wrapped
        // them: announced in Welcome, enforced by the session threads.
        let limits = fit_client_limits(Limits::default(), cfg.ring.max_message, &GroupLimits::default());
        let (to_ring, requests) = bounded::<ToRing>(RING_QUEUE);
        let offload = crate::udp::Offload { gso: cfg.gso, gro: cfg.gro };
        let mut backend = backend::open(cfg.backend, sockets, cfg.ring.mtu, offload)?;
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
        // Who may send operator requests: `[clients] admin`, or by default
        // local clients of this user and root.
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
        let mut core = ServerConfig::new(cfg.me.name.clone());
        core.policy = Arc::new(cfg.policy.clone());
        core.client_limits = limits;
        core.admins = admin_patterns;
        core.persisted_ring_seq = state.reserved;
        // Encrypted links (link mode `encrypt`) let state exchanges carry
        // `optimized-evs` view keys: the core reads the mode from the node.
        let server = Server::new(node, core);
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
            server,
            backend,
            rx_block: BytesMut::new(),
            start,
            state,
            stats: DaemonStats::default(),
            requests,
            clients: HashMap::new(),
            sessions,
            waker,
            status_at: Instant::now(),
            auth_failures,
            _lock: lock,
            metrics,
            stop_requested: false,
            ready: false,
            described: String::new(),
        })
    }

    /// The protocol core.
    pub fn node(&self) -> &Node {
        self.server.node()
    }

    /// The daemon core the runtime drives.
    pub fn server(&self) -> &Server {
        &self.server
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
            let next = self.server.poll_timeout(now);
            let wait = next.map_or(MAX_WAIT, |d| d.saturating_since(now)).min(MAX_WAIT);
            if wait.is_zero() {
                self.server.handle_timeout(now);
                continue;
            }
            // Parked: a session that hands over requests from here on
            // writes the eventfd; requests handed over before are seen here.
            self.waker.park();
            let wait =
                if !self.server.backlogged() && !self.requests.is_empty() { Duration::ZERO } else { wait };
            let Self { backend, server, stats, cfg, start, rx_block, .. } = self;
            let r = backend.wait(wait, &mut |from, bytes| {
                Self::receive(server, stats, cfg, rx_block, *start, from, bytes);
            });
            self.waker.unpark();
            r?;
            let now = self.now();
            if self.server.poll_timeout(now).is_some_and(|d| d <= now) {
                self.server.handle_timeout(now);
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

    /// Leaves the ring for good (see [`Server::leave`]): the leave goes
    /// out, every client gets `Bye { Shutdown }` saying `why`, and new
    /// clients other than operators are refused.
    fn leave_ring(&mut self, why: &str) {
        let now = self.now();
        if self.server.leave(now, why) {
            self.flush_ring();
            info!(daemon = %self.cfg.me.name, "left the ring: {why}");
        }
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
        let node = self.server.node();
        let ring = node.ring().map(|(id, members)| {
            serde_json::json!({
                "seq": id.seq,
                "rep": id.rep.0,
                "members": members.iter().map(|m| m.0).collect::<Vec<_>>(),
                "names": members.iter().map(|&m| self.name_of(m)).collect::<Vec<_>>(),
            })
        });
        let g = self.server.groups().stats();
        let mut list = self.server.groups().report();
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
            "phase": format!("{:?}", node.phase()),
            "operational": node.phase() == ringfence_proto::Phase::Operational,
            "ring": ring,
            "ring_size": node.ring().map_or(0, |(_, m)| m.len()),
            "clients": self.server.client_count(),
            "queues": {
                "ring_requests": self.requests.len(),
                "client_frames": self.sessions.queued(),
                "pending_messages": node.pending(),
            },
            "auth_failures": self.auth_failures.load(Ordering::Relaxed),
            "protocol": node.stats(),
            "security": node.security_stats(),
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
        server: &mut Server,
        stats: &mut DaemonStats,
        cfg: &DaemonConfig,
        block: &mut BytesMut,
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
        // Copied out of the backend's buffer into a shared block and handed
        // over as a buffer of its own, opened in place: no allocation per
        // datagram (one per block). What the ring keeps of a datagram
        // (until stable) keeps its block alive.
        ringfence_proto::block::make_room(block, bytes.len(), RX_BLOCK);
        block.extend_from_slice(bytes);
        server.handle_datagram_owned(now, block.split());
    }

    /// Takes client requests, sends what the core produced and delivers
    /// what it ordered.
    fn flush(&mut self) {
        // Requests from sessions, unless the ring is refusing messages
        // (then the bounded channel fills and the sessions block).
        while !self.server.backlogged() {
            let Ok(req) = self.requests.try_recv() else { break };
            self.request(req);
        }
        self.flush_ring();
    }

    /// Hands one session request to the core and logs what became of it.
    fn request(&mut self, req: ToRing) {
        let now = self.now();
        match req {
            ToRing::Connect { id, hello_name, version, principal, out } => {
                let who = principal.policy_name();
                // Its answer (Welcome, or Refused and a close) goes here.
                self.clients.insert(id, out);
                let secure = principal.secure();
                let r = self.server.handle_connect(now, ClientId(id), &hello_name, &who, secure, version);
                if let Ok(name) = r {
                    info!(client = id, name = %name, %principal, policy = %who, "client connected");
                }
            }
            ToRing::Gone { id } => {
                self.server.handle_disconnect(now, ClientId(id));
                self.clients.remove(&id);
            }
            ToRing::Frame { id, frame } => match self.server.handle_client(now, ClientId(id), frame) {
                Handled::Refused(
                    e @ (GroupsError::Denied | GroupsError::ModeMismatch | GroupsError::InsecureTransport),
                ) => info!(client = id, error = %e, "client request denied"),
                Handled::NotOperator(request) => {
                    info!(client = id, request = request.name(), "operator request denied");
                }
                Handled::Status { tag } => {
                    let text = self.status().to_string();
                    self.server.admin_reply(ClientId(id), tag, true, text);
                }
                Handled::Operator { request: AdminRequest::Rekey, ok: true } => {
                    info!(daemon = %self.cfg.me.name, client = id, "server key refresh asked by an operator");
                }
                Handled::Operator { request: AdminRequest::Leave, .. } => {
                    info!(daemon = %self.cfg.me.name, client = id, "leaving the ring: asked by an operator");
                    info!(daemon = %self.cfg.me.name, "left the ring: asked by an operator (`ringfence ctl leave`)");
                }
                Handled::Operator { request: AdminRequest::Shutdown, .. } => {
                    info!(daemon = %self.cfg.me.name, client = id, "shutting down: asked by an operator");
                    self.stop_requested = true;
                }
                _ => {}
            },
        }
    }

    /// Gives the core's outputs to the world: frames to the session
    /// threads (one shared buffer per frame, whatever the number of
    /// receivers), events to the log, the ring sequence to disk, datagrams
    /// to the sockets.
    fn flush_ring(&mut self) {
        let now = self.now();
        loop {
            // Clients whose session thread is gone (the daemon is stopping).
            let mut gone = Vec::new();
            while let Some(o) = self.server.poll_client() {
                for &id in o.to {
                    let Some(out) = self.clients.get(&id.0) else { continue };
                    if o.close.is_some() {
                        // A refusal or a goodbye: the session closes the
                        // connection once it is written.
                        out.send_last(o.frame.clone());
                        self.clients.remove(&id.0);
                    } else if !out.send(o.frame.clone()) {
                        gone.push(id);
                    }
                }
            }
            if gone.is_empty() {
                break;
            }
            for id in gone {
                warn!(client = id.0, "client session thread gone; disconnecting");
                self.clients.remove(&id.0);
                self.server.handle_disconnect(now, id);
            }
        }
        while let Some(ev) = self.server.poll_event() {
            match ev {
                ServerEvent::Configuration(c) => self.configuration(&c),
                ServerEvent::Alert(a) => {
                    warn!(daemon = %self.cfg.me.name, peer = %self.name_of(a.peer), "{}", a.text);
                }
                ServerEvent::Undeliverable { client, error } => {
                    warn!(client = client.0, error = %error, "a frame for a client could not be encoded; dropped");
                }
                ServerEvent::SubmitRefused(e) => warn!(error = %e, "group message refused by the ring"),
                _ => {}
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let d = self.server.node().describe();
            if d != self.described {
                tracing::debug!(daemon = %self.cfg.me.name, "membership: {d}");
                self.described = d;
            }
        }
        // One wake-up per session thread for all it was given this turn.
        self.sessions.wake();
        // The sequence of a ring this daemon numbered (announced in a
        // commit token) is on disk before any datagram leaves: a restart
        // never numbers a ring it already used. A sequence only claimed by
        // a datagram is not persisted. One write reserves the next
        // `RING_SEQ_RESERVE` sequences (no disk wait in most changes).
        if let Some(seq) = self.server.poll_persist() {
            match self.state.reserve_ring_seq(seq) {
                Ok(bound) => self.server.persisted(bound),
                Err(e) => {
                    warn!(error = %e, "could not persist the ring sequence; not sending");
                    return;
                }
            }
        }
        while let Some(t) = self.server.poll_transmit() {
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
        let o = self.backend.offload();
        (self.stats.gso_sends, self.stats.gso_segments) = (o.gso_sends, o.gso_segments);
        (self.stats.gro_receives, self.stats.gro_segments) = (o.gro_receives, o.gro_segments);
    }

    /// Logs a configuration; tells the service manager about regular ones
    /// (the first makes the daemon ready).
    fn configuration(&mut self, c: &Configuration) {
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
