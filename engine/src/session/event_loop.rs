//! One session thread: a nonblocking event loop (`mio`) over many client
//! connections.
//!
//! Each turn of the loop:
//! 1. waits for readiness, a wake-up (the inbox has work), or a timeout;
//! 2. accepts new connections (thread 0, which owns the listeners, keeps
//!    every n-th and hands the others to its siblings round-robin);
//! 3. moves the inbox's frames into their connections' queues, disconnecting
//!    a client whose queue is over budget (slow consumer);
//! 4. writes every connection that has frames, many per `writev`;
//! 5. hands the requests it kept for lack of room to the ring thread, then
//!    reads and decodes the readable connections, one read each, round-robin,
//!    for as long as the ring's channel has room;
//! 6. every [`SWEEP`], closes connections past their Hello deadline or whose
//!    writes stalled;
//! 7. wakes the ring thread once if it handed it anything.
//!
//! A client's id tells where it lives: `serial << 24 | thread << 16 | slot`,
//! so a frame for it finds its connection by index, with no map lookup, and
//! an id is never used twice (a stale frame for a slot's earlier connection
//! is dropped).

use super::auth::authenticate;
use super::conn::{Conn, Got, Phase, Stream};
use super::{
    ClientOut, Counts, FRAME_TIMEOUT, HELLO_FRAME_MAX, HELLO_TIMEOUT, Outbox, Pool, SessionSlot, ToRing,
    ToSession, Waker, check_version,
};
use crate::config::Clients;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::{Events, Interest, Poll, Token};
use ringfence_proto::wire::client::{ByeReason, ClientFrame, DaemonFrame, Frame, Limits, RefuseCode};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// The token of the thread's `mio::Waker`.
pub(super) const WAKER: Token = Token(0);
/// The token of the Unix listener (thread 0).
const UNIX_LISTENER: Token = Token(1);
/// The token of the TCP listener (thread 0).
const TCP_LISTENER: Token = Token(2);
/// Connection `slot` has token `FIRST_CONN + slot`.
const FIRST_CONN: usize = 16;
/// Connections one thread can hold (the slot is 16 bits of the id).
const MAX_SLOTS: usize = 1 << 16;
/// Bytes taken from one connection in one read.
const READ_CHUNK: usize = 64 * 1024;
/// How often deadlines are checked.
const SWEEP: Duration = Duration::from_millis(250);
/// How soon to retry handing requests to the ring when its channel was full.
const RING_RETRY: Duration = Duration::from_micros(500);
/// How soon to retry reading connections that waited for the input budget.
const BUDGET_RETRY: Duration = Duration::from_millis(10);

/// The listening sockets, owned by session thread 0.
#[derive(Debug)]
pub(super) struct Listeners {
    unix: mio::net::UnixListener,
    tcp: Option<mio::net::TcpListener>,
}

impl Listeners {
    /// Binds the Unix socket at `path` (replacing a stale one, creating its
    /// directory) and, if asked, the TCP address.
    pub(super) fn bind(path: &Path, tcp: Option<SocketAddr>) -> io::Result<Self> {
        let tcp = match tcp {
            Some(addr) => {
                let l = mio::net::TcpListener::bind(addr).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot listen for TCP clients on {addr} (`client_tcp`): {e}; {}",
                            bind_hint(&e, "another process listens there, or set another `client_tcp`")
                        ),
                    )
                })?;
                info!(address = %addr, "listening for TCP clients");
                Some(l)
            }
            None => None,
        };
        // A socket file another process still accepts on is never taken
        // over; only a stale one (nobody listening) is replaced.
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{}: another daemon serves clients on this socket; stop it first, or set another \
                         `[paths] client_socket`",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot remove the stale client socket {}: {e}", path.display()),
                )
            })?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create {}, the client socket's directory: {e}", dir.display()),
                )
            })?;
        }
        let unix = mio::net::UnixListener::bind(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot listen for clients on {} (`[paths] client_socket`): {e}; make its directory \
                     writable by this user, or set another path",
                    path.display()
                ),
            )
        })?;
        info!(socket = %path.display(), "listening for clients");
        Ok(Self { unix, tcp })
    }
}

/// What to do about a failed `bind`: the address is not this machine's,
/// or it is taken (`taken` says what then).
pub(crate) fn bind_hint(e: &io::Error, taken: &str) -> String {
    match e.kind() {
        io::ErrorKind::AddrNotAvailable => {
            "this machine has no such address: run the daemon on the machine that has it, or fix the address"
                .into()
        }
        io::ErrorKind::AddrInUse => taken.into(),
        io::ErrorKind::PermissionDenied => "ports below 1024 need privileges: use a higher port".into(),
        _ => "check the address".into(),
    }
}

/// Every session thread's inbox, to hand connections over (thread 0) and to
/// give the ring thread a [`ClientOut`] for this thread's clients.
#[derive(Debug)]
pub(super) struct Siblings {
    outboxes: Vec<Arc<Outbox>>,
    /// This thread's index.
    me: usize,
    /// The thread the next accepted connection goes to.
    next: usize,
}

impl Siblings {
    /// The outboxes of all threads, as seen by thread `me`.
    pub(super) fn new(outboxes: &[Arc<Outbox>], me: usize) -> Self {
        Self { outboxes: outboxes.to_vec(), me, next: me }
    }

    /// The thread the next connection goes to, round-robin.
    fn next(&mut self) -> usize {
        let k = self.next;
        self.next = (k + 1) % self.outboxes.len();
        k
    }
}

/// What a session thread is started with.
#[derive(Debug)]
pub(super) struct Setup {
    /// The thread's index (part of its clients' ids).
    pub(super) index: u8,
    /// Its poller (its `mio::Waker` is registered with [`WAKER`]).
    pub(super) poll: Poll,
    /// Its inbox.
    pub(super) inbox: Receiver<ToSession>,
    /// Every thread's inbox.
    pub(super) siblings: Siblings,
    /// The listeners (thread 0 only).
    pub(super) listeners: Option<Listeners>,
    /// The requests channel to the ring thread.
    pub(super) to_ring: Sender<ToRing>,
    /// Wakes the ring thread.
    pub(super) waker: Waker,
    /// Frame limits.
    pub(super) limits: Limits,
    /// How TCP clients authenticate.
    pub(super) clients: Arc<Clients>,
    /// Failed authentications, over all threads.
    pub(super) auth_failures: Arc<AtomicU64>,
    /// Connections and their input, over all threads, with the caps.
    pub(super) counts: Arc<Counts>,
    /// Set when the daemon stops.
    pub(super) stop: Arc<AtomicBool>,
}

/// The thread's side of the requests channel: requests that found it full
/// wait here, in order, and nothing more is read from clients until they are
/// handed over. Only `Connect` and `Gone` can be added while it is not
/// empty, at most two per connection: it is bounded.
#[derive(Debug)]
struct RingLink {
    tx: Sender<ToRing>,
    backlog: VecDeque<ToRing>,
    waker: Waker,
    /// Requests were handed over since the last wake-up.
    wake: bool,
}

impl RingLink {
    /// Hands a request over, or keeps it (in order) if the channel is full.
    fn send(&mut self, req: ToRing) {
        if self.backlog.is_empty() {
            match self.tx.try_send(req) {
                Ok(()) => self.wake = true,
                Err(TrySendError::Full(req)) => self.backlog.push_back(req),
                // The ring thread is gone: the daemon is stopping.
                Err(TrySendError::Disconnected(_)) => {}
            }
        } else {
            self.backlog.push_back(req);
        }
    }

    /// Hands over what waits, as far as there is room.
    fn retry(&mut self) {
        while let Some(req) = self.backlog.pop_front() {
            match self.tx.try_send(req) {
                Ok(()) => self.wake = true,
                Err(TrySendError::Full(req)) => {
                    self.backlog.push_front(req);
                    // Make sure the ring thread is draining.
                    self.wake = true;
                    return;
                }
                Err(TrySendError::Disconnected(_)) => self.backlog.clear(),
            }
        }
    }

    /// Whether requests can be handed over now (nothing waits).
    fn has_room(&self) -> bool {
        self.backlog.is_empty()
    }

    /// One wake-up datagram for everything handed over this turn.
    fn wake_if_needed(&mut self) {
        if std::mem::take(&mut self.wake) {
            self.waker.wake();
        }
    }
}

/// Frames a session sends on its own.
#[derive(Debug)]
struct Canned {
    /// `Bye { SlowConsumer }`.
    slow: Bytes,
    /// `Bye { ClientBye }`, the answer to a client's `Bye`.
    goodbye: Bytes,
    /// `Refused { TooManyClients }` for TCP connections over
    /// `max_unauthenticated`.
    full_tcp: Bytes,
    /// `Refused { TooManyClients }` for Unix connections over
    /// `max_unauthenticated`.
    full_unix: Bytes,
    /// `Refused { TooManyClients }` for a Hello over `max_clients`.
    full_clients: Bytes,
}

/// What authentication needs: the configuration and the failure counter.
#[derive(Debug)]
struct Gate {
    clients: Arc<Clients>,
    failures: Arc<AtomicU64>,
}

impl Gate {
    /// Counts and logs one failure (never with a token's bytes).
    fn failed(&self, client: u64, peer: &str, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        warn!(client, peer, "client authentication failed: {why}");
    }
}

/// `Refused { TooManyClients }` naming the cap that was hit.
fn too_many(what: &str, limits: &Limits) -> Bytes {
    let text = format!("the daemon accepts no more connections: {what}");
    encode(&DaemonFrame::Refused { code: RefuseCode::TooManyClients, text }, limits)
}

/// Encodes a frame the session sends on its own (rare: no reuse needed).
fn encode(f: &DaemonFrame, limits: &Limits) -> Bytes {
    let mut out = Vec::new();
    if let Err(e) = f.encode(&mut out, limits) {
        // Our own frames are within the limits; a failure is our bug.
        error!(error = %e, "a session frame could not be encoded");
    }
    Bytes::from(out)
}

/// The connections of one thread, by slot, with the lists of those to read
/// and to write.
#[derive(Debug, Default)]
struct Conns {
    slots: Vec<Option<Conn>>,
    /// Slots free for new connections.
    free: Vec<usize>,
    /// Slots freed this turn (reused from the next one, so a slot in `ready`
    /// or `dirty` never names a newer connection in the same turn).
    freed: Vec<usize>,
    /// Connections that may have bytes to read or frames to decode.
    ready: VecDeque<usize>,
    /// Connections with frames to write, or closing.
    dirty: Vec<usize>,
    /// Connections with input to read that wait for the global input
    /// budget.
    starved: Vec<usize>,
}

impl Conns {
    /// The connection in `slot`, if any.
    fn get(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// The connection may have bytes to read: serve it (once in the list).
    fn mark_ready(&mut self, slot: usize) {
        if let Some(c) = self.get(slot) {
            c.readable = true;
            if !c.in_ready {
                c.in_ready = true;
                self.ready.push_back(slot);
            }
        }
    }

    /// The connection has frames to write or is closing (once in the list).
    fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.get(slot) {
            if !c.in_dirty {
                c.in_dirty = true;
                self.dirty.push(slot);
            }
        }
    }
}

/// Begins to end a session: the ring thread is told (if it knew the
/// client), nothing more is read or queued (what was read and not decoded
/// is dropped), and `last` (if any) replaces
/// the frames not yet begun. The connection closes once its queue is
/// written.
fn end(conn: &mut Conn, ring: &mut RingLink, last: Option<Bytes>, now: Instant) {
    if conn.phase == Phase::Open {
        ring.send(ToRing::Gone { id: conn.id });
    }
    conn.phase = Phase::Closing;
    conn.drop_input();
    if let Some(last) = last {
        conn.replace_queue(last, now);
    }
}

/// One session thread (see the module doc).
#[derive(Debug)]
pub(super) struct SessionThread {
    index: u8,
    poll: Poll,
    events: Events,
    inbox: Receiver<ToSession>,
    siblings: Siblings,
    listeners: Option<Listeners>,
    ring: RingLink,
    limits: Limits,
    gate: Gate,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    conns: Conns,
    /// Connections adopted so far (the high bits of their ids).
    serial: u64,
    /// Read space, reused.
    buf: Vec<u8>,
    canned: Canned,
    /// The time of this turn.
    now: Instant,
    /// When deadlines are next checked.
    sweep_at: Instant,
}

impl SessionThread {
    /// A session thread; its listeners (thread 0) are registered here.
    pub(super) fn new(s: Setup) -> io::Result<Self> {
        let Setup {
            index,
            poll,
            inbox,
            siblings,
            mut listeners,
            to_ring,
            waker,
            limits,
            clients,
            auth_failures,
            counts,
            stop,
        } = s;
        if let Some(l) = &mut listeners {
            poll.registry().register(&mut l.unix, UNIX_LISTENER, Interest::READABLE)?;
            if let Some(t) = &mut l.tcp {
                poll.registry().register(t, TCP_LISTENER, Interest::READABLE)?;
            }
        }
        let canned = Canned {
            slow: encode(
                &DaemonFrame::Bye {
                    reason: ByeReason::SlowConsumer,
                    text: "client read too slowly; queue full".into(),
                },
                &limits,
            ),
            goodbye: encode(
                &DaemonFrame::Bye { reason: ByeReason::ClientBye, text: "goodbye".into() },
                &limits,
            ),
            full_tcp: too_many(
                &format!(
                    "{} unauthenticated TCP connections (max_unauthenticated)",
                    counts.caps().max_unauthenticated
                ),
                &limits,
            ),
            full_unix: too_many(
                &format!(
                    "{} unauthenticated local connections (max_unauthenticated)",
                    counts.caps().max_unauthenticated
                ),
                &limits,
            ),
            full_clients: too_many(
                &format!("{} clients connected (max_clients)", counts.caps().max_clients),
                &limits,
            ),
        };
        let now = Instant::now();
        Ok(Self {
            index,
            poll,
            events: Events::with_capacity(1024),
            inbox,
            siblings,
            listeners,
            ring: RingLink { tx: to_ring, backlog: VecDeque::new(), waker, wake: false },
            limits,
            gate: Gate { clients, failures: auth_failures },
            counts,
            stop,
            conns: Conns::default(),
            serial: 0,
            buf: vec![0; READ_CHUNK],
            canned,
            now,
            sweep_at: now + SWEEP,
        })
    }

    /// Runs until the daemon stops.
    pub(super) fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = if !self.ring.has_room() {
                RING_RETRY
            } else if !self.conns.ready.is_empty() || !self.conns.dirty.is_empty() {
                Duration::ZERO
            } else if !self.conns.starved.is_empty() {
                BUDGET_RETRY.min(self.sweep_at.saturating_duration_since(Instant::now()))
            } else {
                self.sweep_at.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!(error = %e, thread = self.index, "session thread cannot poll; stopping");
                    return;
                }
            }
            self.now = Instant::now();
            self.handle_events();
            self.drain_inbox();
            self.flush_dirty();
            self.ring.retry();
            self.unstarve();
            self.read_ready();
            // Frames the reads queued (refusals, goodbyes).
            self.flush_dirty();
            if self.now >= self.sweep_at {
                self.sweep_at = self.now + SWEEP;
                self.sweep();
            }
            self.ring.wake_if_needed();
            self.conns.free.append(&mut self.conns.freed);
        }
        for slot in 0..self.conns.slots.len() {
            self.close_now(slot);
        }
        self.ring.wake_if_needed();
    }

    /// Notes what the poller reported: connections to read or write,
    /// listeners to accept from.
    fn handle_events(&mut self) {
        let mut accept_unix = false;
        let mut accept_tcp = false;
        for ev in &self.events {
            match ev.token() {
                // The inbox is drained on every turn anyway.
                WAKER => {}
                UNIX_LISTENER => accept_unix = true,
                TCP_LISTENER => accept_tcp = true,
                Token(t) if t >= FIRST_CONN => {
                    let slot = t - FIRST_CONN;
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.conns.mark_ready(slot);
                    }
                    if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                        self.conns.mark_dirty(slot);
                    }
                }
                Token(_) => {}
            }
        }
        if accept_unix {
            self.accept(false);
        }
        if accept_tcp {
            self.accept(true);
        }
    }

    /// Accepts every pending connection of one listener.
    fn accept(&mut self, tcp: bool) {
        loop {
            let Some(l) = &self.listeners else { return };
            let accepted = if tcp {
                let Some(t) = &l.tcp else { return };
                t.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    // TLS or not is told by the first byte, so a plain
                    // client gets a clear refusal rather than a TLS alert.
                    match &self.gate.clients.tls {
                        None => Stream::Tcp(s),
                        Some(tls) => Stream::sniff(s, Arc::clone(tls)),
                    }
                })
            } else {
                l.unix.accept().map(|(s, _)| Stream::Unix(s))
            };
            match accepted {
                Ok(stream) => self.hand_over(stream, tcp),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    /// Gives a new connection to the next thread, round-robin (this one if
    /// that thread's inbox is full). A connection over its pool's cap is sent `Refused { TooManyClients }`
    /// and closed at once.
    fn hand_over(&mut self, stream: Stream, tcp: bool) {
        let pool = if tcp { Pool::PendingTcp } else { Pool::PendingUnix };
        let Some(slot) = SessionSlot::take(&self.counts, pool) else {
            warn!(peer = %stream.peer(), "too many unauthenticated connections; refusing a new one");
            let frame = if tcp { &self.canned.full_tcp } else { &self.canned.full_unix };
            Conn::refuse_unadopted(stream, frame);
            return;
        };
        let k = self.siblings.next();
        if k == self.siblings.me {
            return self.adopt(stream, slot);
        }
        let target = &self.siblings.outboxes[k];
        match target.tx.try_send(ToSession::Adopt(stream, slot)) {
            Ok(()) => {
                let _ = target.waker.wake();
            }
            Err(TrySendError::Full(ToSession::Adopt(stream, slot)))
            | Err(TrySendError::Disconnected(ToSession::Adopt(stream, slot))) => self.adopt(stream, slot),
            Err(_) => {}
        }
    }

    /// Takes a connection into this thread's loop.
    fn adopt(&mut self, mut stream: Stream, session: SessionSlot) {
        let slot = match self.conns.free.pop() {
            Some(s) => s,
            None if self.conns.slots.len() < MAX_SLOTS => {
                self.conns.slots.push(None);
                self.conns.slots.len() - 1
            }
            None => {
                warn!(thread = self.index, "session thread full; closing a new connection");
                return;
            }
        };
        self.serial += 1;
        let id = (self.serial << 24) | (u64::from(self.index) << 16) | slot as u64;
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(FIRST_CONN + slot), interest) {
            warn!(error = %e, "cannot watch a new connection; closing it");
            self.conns.free.push(slot);
            return;
        }
        debug!(client = id, thread = self.index, "connection accepted");
        self.conns.slots[slot] = Some(Conn::new(id, stream, session, self.limits, self.now + HELLO_TIMEOUT));
        // It may have sent Hello already.
        self.conns.mark_ready(slot);
    }

    /// Moves the ring thread's frames into their connections' queues.
    fn drain_inbox(&mut self) {
        // Bounded, so a busy ring cannot starve the rest of the loop.
        for _ in 0..super::SESSION_QUEUE {
            let Ok(item) = self.inbox.try_recv() else { return };
            match item {
                ToSession::Frame { id, bytes } => self.deliver(id, bytes, false),
                ToSession::Last { id, bytes } => self.deliver(id, bytes, true),
                ToSession::Adopt(stream, session) => self.adopt(stream, session),
            }
        }
    }

    /// Queues a frame for client `id`; a client over its budget is
    /// disconnected with `Bye { SlowConsumer }`.
    fn deliver(&mut self, id: u64, bytes: Bytes, last: bool) {
        let slot = (id & 0xffff) as usize;
        let now = self.now;
        let Some(conn) = self.conns.get(slot) else { return };
        // A frame for an earlier connection of the slot, or one ending.
        if conn.id != id || conn.phase == Phase::Closing {
            return;
        }
        if conn.enqueue(bytes, now).is_err() {
            warn!(client = id, queued = conn.queued(), "slow consumer: disconnecting");
            end(conn, &mut self.ring, Some(self.canned.slow.clone()), now);
        } else if last {
            end(conn, &mut self.ring, None, now);
        }
        self.conns.mark_dirty(slot);
    }

    /// Writes every connection with frames; closes those done closing or
    /// failed.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.conns.dirty);
        for &slot in &dirty {
            let Some(conn) = self.conns.get(slot) else { continue };
            conn.in_dirty = false;
            match conn.flush(self.now) {
                Ok(()) if conn.phase == Phase::Closing && conn.drained() => self.close_now(slot),
                Ok(()) => {}
                Err(e) => {
                    debug!(client = conn.id, error = %e, "write failed; closing");
                    self.close_now(slot);
                }
            }
        }
        dirty.clear();
        if self.conns.dirty.is_empty() {
            self.conns.dirty = dirty;
        }
    }

    /// Reads and decodes the connections that may have something, one read
    /// each, round-robin, while the ring's channel has room.
    fn read_ready(&mut self) {
        for _ in 0..self.conns.ready.len() {
            if !self.ring.has_room() {
                return;
            }
            let Some(slot) = self.conns.ready.pop_front() else { return };
            let Some(conn) = self.conns.slots.get_mut(slot).and_then(Option::as_mut) else { continue };
            let outcome = serve(
                conn,
                &mut self.ring,
                &mut self.buf,
                &self.canned,
                &self.siblings,
                &self.gate,
                self.now,
            );
            // A TLS handshake message or alert to send.
            let closing = conn.phase == Phase::Closing || conn.wants_write();
            match outcome {
                Served::Again => self.conns.ready.push_back(slot),
                Served::Done => conn.in_ready = false,
                Served::Starved => {
                    conn.in_ready = false;
                    self.conns.starved.push(slot);
                }
                Served::Failed => {
                    self.close_now(slot);
                    continue;
                }
            }
            if closing {
                self.conns.mark_dirty(slot);
            }
        }
    }

    /// Closes at once: the socket is shut, the ring thread told (if it knew
    /// the client), the slot freed.
    fn close_now(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.slots.get_mut(slot).and_then(Option::take) else { return };
        let _ = self.poll.registry().deregister(conn.stream());
        if conn.phase == Phase::Open {
            self.ring.send(ToRing::Gone { id: conn.id });
        }
        conn.shut();
        self.conns.freed.push(slot);
    }

    /// Serves again the connections that waited for the input budget, once
    /// it has room.
    fn unstarve(&mut self) {
        if self.conns.starved.is_empty() || self.counts.budget_room() == 0 {
            return;
        }
        for slot in std::mem::take(&mut self.conns.starved) {
            self.conns.mark_ready(slot);
        }
    }

    /// Closes connections that did not say Hello in time, or whose client
    /// stopped reading; while the input budget has no room for a largest
    /// frame, ends those whose frame has been unfinished for
    /// [`FRAME_TIMEOUT`] (their senders hold memory others wait for) unless
    /// this thread is not reading because the ring is busy (then it is not
    /// their fault).
    fn sweep(&mut self) {
        let now = self.now;
        let budget_full =
            self.ring.has_room() && self.counts.budget_room() < self.counts.caps().connection_buffer;
        for slot in 0..self.conns.slots.len() {
            let Some(conn) = self.conns.get(slot) else { continue };
            if budget_full && conn.phase == Phase::Open && conn.frame_stuck(now, FRAME_TIMEOUT) {
                warn!(
                    client = conn.id,
                    held = conn.decoder.buffered(),
                    "client input budget full and this client's frame unfinished for 5 s; closing"
                );
                let bye = DaemonFrame::Bye {
                    reason: ByeReason::ProtocolViolation,
                    text: "a frame unfinished for 5 s while the daemon's client input budget is full".into(),
                };
                let bytes = encode(&bye, conn.decoder.limits());
                end(conn, &mut self.ring, Some(bytes), now);
                self.conns.mark_dirty(slot);
            } else if conn.phase == Phase::Hello && now >= conn.hello_by {
                debug!(client = conn.id, "no Hello in time; closing");
                self.close_now(slot);
            } else if conn.stalled(now) {
                info!(client = conn.id, queued = conn.queued(), "client accepted nothing for 5 s; closing");
                self.close_now(slot);
            }
        }
    }
}

/// What serving one connection's reads came to.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// More may be readable or decodable: serve it again next turn.
    Again,
    /// Nothing more until the next readiness event.
    Done,
    /// The connection failed: close it now.
    Failed,
    /// Input waits but the global input budget is full: serve it again
    /// once other connections release input.
    Starved,
}

/// Decodes what is buffered, reads once, decodes again; stops while the
/// ring's channel is full (the client is then slowed by its socket buffer).
fn serve(
    conn: &mut Conn,
    ring: &mut RingLink,
    buf: &mut [u8],
    canned: &Canned,
    siblings: &Siblings,
    gate: &Gate,
    now: Instant,
) -> Served {
    for round in 0..2 {
        let mut took = false;
        loop {
            if conn.phase == Phase::Closing {
                return Served::Done;
            }
            if !ring.has_room() {
                conn.settle(took, now);
                return Served::Again;
            }
            if conn.phase == Phase::Hello {
                if let Some(len) = conn.first_len().filter(|&l| l > HELLO_FRAME_MAX) {
                    debug!(client = conn.id, len, "oversized first frame; refusing");
                    let f = DaemonFrame::Refused {
                        code: RefuseCode::ProtocolViolation,
                        text: format!(
                            "a first frame of {len} bytes; before Welcome frames are at most {HELLO_FRAME_MAX} bytes"
                        ),
                    };
                    let bytes = encode(&f, conn.decoder.limits());
                    end(conn, ring, Some(bytes), now);
                    conn.settle(took, now);
                    return Served::Done;
                }
            }
            match conn.decoder.next_frame() {
                Ok(Some(frame)) => {
                    took = true;
                    handle_frame(conn, frame, ring, canned, siblings, gate, now);
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(client = conn.id, error = %e, "bad frame; closing");
                    let bye = DaemonFrame::Bye {
                        reason: ByeReason::ProtocolViolation,
                        text: format!("malformed frame: {e}"),
                    };
                    end(conn, ring, Some(encode(&bye, conn.decoder.limits())), now);
                    conn.settle(took, now);
                    return Served::Done;
                }
            }
        }
        conn.settle(took, now);
        if round == 1 || !conn.readable {
            break;
        }
        let room = conn.room();
        if room == 0 {
            return Served::Starved;
        }
        match conn.read(buf, room) {
            Ok(Got::More) => {}
            Ok(Got::Drained) => conn.readable = false,
            Ok(Got::Eof) => {
                conn.readable = false;
                end(conn, ring, None, now);
                return Served::Done;
            }
            Ok(Got::TlsFailed(why)) => {
                conn.readable = false;
                let peer = conn.stream().peer();
                gate.failed(conn.id, &peer, &format!("TLS: {why}"));
                // The alert rustls queued is written, then the connection closes.
                end(conn, ring, None, now);
                return Served::Done;
            }
            Err(e) => {
                debug!(client = conn.id, error = %e, "read failed; closing");
                return Served::Failed;
            }
        }
    }
    if conn.readable { Served::Again } else { Served::Done }
}

/// Acts on one frame from a client: the handshake here, requests to the
/// ring thread.
fn handle_frame(
    conn: &mut Conn,
    frame: ClientFrame,
    ring: &mut RingLink,
    canned: &Canned,
    siblings: &Siblings,
    gate: &Gate,
    now: Instant,
) {
    let refuse = |conn: &mut Conn, ring: &mut RingLink, code, text| {
        let f = DaemonFrame::Refused { code, text };
        let bytes = encode(&f, conn.decoder.limits());
        end(conn, ring, Some(bytes), now);
    };
    match (conn.phase, frame) {
        (Phase::Closing, _) => {}
        (Phase::Hello, ClientFrame::Bye) => end(conn, ring, None, now),
        (Phase::Hello, ClientFrame::Hello(h)) => {
            let version = match check_version(&h) {
                Ok(v) => v,
                Err((code, text)) => {
                    info!(client = conn.id, ?code, "client refused: {text}");
                    return refuse(conn, ring, code, text);
                }
            };
            // Unix peer credentials and certificates come from the kernel
            // and the TLS handshake, not from the client's say-so.
            let link = match conn.stream().link() {
                Ok(l) => l,
                Err(e) => {
                    let text = format!("cannot read the peer's credentials: {e}");
                    return refuse(conn, ring, RefuseCode::AuthFailed, text);
                }
            };
            let principal = match authenticate(&h.auth, &link, &gate.clients) {
                Ok(p) => p,
                Err((code, text)) => {
                    gate.failed(conn.id, &link.to_string(), &text);
                    return refuse(conn, ring, code, text);
                }
            };
            if !conn.promote() {
                info!(client = conn.id, "client refused: max_clients connected");
                end(conn, ring, Some(canned.full_clients.clone()), now);
                return;
            }
            conn.phase = Phase::Open;
            let out = ClientOut { id: conn.id, outbox: Arc::clone(&siblings.outboxes[siblings.me]) };
            ring.send(ToRing::Connect { id: conn.id, hello_name: h.client_name, version, principal, out });
        }
        (Phase::Hello, _) => {
            refuse(conn, ring, RefuseCode::ProtocolViolation, "the first frame must be Hello".into());
        }
        (Phase::Open, ClientFrame::Bye) => end(conn, ring, Some(canned.goodbye.clone()), now),
        (Phase::Open, ClientFrame::Hello(_)) => {
            debug!(client = conn.id, "a second Hello; closing");
            let bye = DaemonFrame::Bye {
                reason: ByeReason::ProtocolViolation,
                text: "Hello again: a session says Hello once".into(),
            };
            end(conn, ring, Some(encode(&bye, conn.decoder.limits())), now);
        }
        (Phase::Open, frame) => ring.send(ToRing::Frame { id: conn.id, frame }),
    }
}
