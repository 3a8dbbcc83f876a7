//! Client sessions: a few session threads own every client connection (Unix
//! socket and TCP) and exchange work with the ring thread over bounded
//! channels (ARCHITECTURE section 6, "thread per core").
//!
//! There are `max(1, cores - 1)` session threads (at most
//! [`MAX_SESSION_THREADS`]), pinned to the cores the ring thread does not use.
//! Each runs one nonblocking event loop (`mio`) over many connections.
//! Session thread 0 also owns the listeners and hands accepted connections to
//! the session threads round-robin.
//!
//! TCP connections may run TLS (rustls `ServerConnection`, driven by the same
//! event loop: `read_tls`, `process_new_packets`, plaintext into the frame
//! decoder; frames copied into rustls and written with `write_tls`). Unix
//! sockets keep the zero-copy `writev` path. Who a client is, and which
//! `Hello.auth` kinds each transport accepts, is `auth`.
//!
//! ```text
//!           session thread k of N (one mio event loop, many connections)
//!  client ─frames─► read ─► FrameDecoder ─► Hello check ─► ToRing ──┐ bounded, shared by the
//!  client ─frames─► ...                                             │ session threads; one wake
//!                                                                   ▼ datagram per loop turn
//!                                                  ring thread (Daemon: Server)
//!                                                                   │ each frame encoded once
//!                                                                   │ into Bytes; the same Bytes
//!                                                                   │ for every local receiver
//!  client ◄─writev── queue per connection ◄── inbox ◄───────────────┘ bounded, one per session
//!                    (≤ 32 MiB, else Bye      (client id, Bytes)      thread; one mio::Waker
//!                     SlowConsumer)                                   wake per ring turn
//! ```
//!
//! Backpressure, never unbounded memory:
//! - A client that sends faster than the ring accepts: when the shared
//!   request channel is full, the session thread keeps the request it could
//!   not hand over and stops reading from its clients until there is room,
//!   so the kernel's socket buffers fill and the clients' writes block.
//!   Requests are never dropped. Deliveries keep flowing meanwhile.
//! - A client that reads slower than its groups deliver: its queue of
//!   encoded frames grows to [`CLIENT_QUEUE_BYTES`] (or [`CLIENT_QUEUE`]
//!   frames); past that the undelivered frames are dropped, the client gets
//!   `Bye { SlowConsumer }`, the ring thread is told (`ToRing::Gone`), and the
//!   daemon goes on. A client that accepts no byte for [`WRITE_TIMEOUT`] while
//!   data waits is closed.
//! - What clients send is bounded before it is buffered: before Hello a
//!   connection is read at most a Hello's worth ([`HELLO_FRAME_MAX`]), and a
//!   longer first frame is refused from its length prefix; after it, a
//!   connection holds at most `connection_buffer` of undecoded input and all
//!   of them at most `buffer_budget` (`[clients]`, [`ClientCaps`]). Once a
//!   frame's length is read, the rest of it is reserved in the global budget
//!   before more is read, so a begun frame can always be finished; one that
//!   does not fit waits in the client's socket. Between frames a connection
//!   may always read 4 KiB, so small requests pass a full budget. While the
//!   budget has no room for a largest frame, a frame unfinished for
//!   [`FRAME_TIMEOUT`] ends its session.
//! - Connections are capped by kind: unauthenticated TCP and Unix
//!   connections apart (`max_unauthenticated` each) and authenticated
//!   clients (`max_clients`), so idle connections of one kind never lock out
//!   another. Over a cap a connection gets `Refused { TooManyClients }`.
//!
//! The ring thread never waits on a session thread for long: a session
//! thread drains its inbox on every turn of its loop and never waits on the
//! ring, so the ring's blocking send on a full inbox (rare: the inbox is
//! large) always ends promptly, and the two cannot deadlock.

mod auth;
mod conn;
mod event_loop;

pub(crate) use event_loop::bind_hint;

use crate::config::{ClientCaps, Clients};
use bytes::Bytes;
use conn::Stream;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use event_loop::{SessionThread, Siblings};
use ringfence_proto::wire::client::{
    CLIENT_VERSION, ClientFrame, Hello, Limits, RefuseCode, negotiate_version,
};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tracing::{info, warn};

/// Frames waiting for one client before it counts as a slow consumer.
pub(crate) const CLIENT_QUEUE: usize = 1 << 18;
/// Encoded bytes waiting for one client before it counts as a slow consumer.
pub(crate) const CLIENT_QUEUE_BYTES: usize = 32 << 20;
/// Requests from all clients waiting for the ring thread.
pub(crate) const RING_QUEUE: usize = 8192;
/// Items (frames for clients, adopted connections) waiting for one session
/// thread.
const SESSION_QUEUE: usize = 1 << 16;
/// Most session threads, whatever the number of cores.
pub(crate) const MAX_SESSION_THREADS: usize = 8;
/// A client must say Hello within this time of connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that accepts no byte for this long while data waits for it is
/// closed (it stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted before Hello: a Hello with the longest name and
/// token is about 4.2 KB. A longer length prefix is refused at once.
const HELLO_FRAME_MAX: usize = 8 << 10;
/// A frame still unfinished this long after it began, while the input
/// budget over all connections has no room for a largest frame, ends its
/// session (its sender holds memory others wait for).
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is at the other end of a client connection, once authenticated
/// (see `auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Principal {
    /// A local process, by its Unix peer credentials (`SO_PEERCRED`).
    Local {
        /// User id.
        uid: u32,
        /// Group id.
        gid: u32,
        /// Process id.
        pid: i32,
    },
    /// A remote client over plain TCP, not authenticated: only when the
    /// daemon configures no client authentication at all.
    Remote(SocketAddr),
    /// A TLS client with a client certificate verified against `client_ca`.
    Cert {
        /// The certificate's subject common name (else its first DNS name).
        cn: String,
    },
    /// A client that presented a configured token.
    Token {
        /// The token's name in `[[clients.token]]`.
        name: String,
        /// It came over TLS (else plain TCP, where `require_tls` is off).
        tls: bool,
    },
}

impl Principal {
    /// The name access policies use: `unix:<uid>`, `cert:<cn>`,
    /// `token:<name>`, or `tcp:<addr>` (unauthenticated plain TCP).
    pub(crate) fn policy_name(&self) -> String {
        match self {
            Self::Local { uid, .. } => format!("unix:{uid}"),
            Self::Remote(a) => format!("tcp:{a}"),
            Self::Cert { cn } => format!("cert:{cn}"),
            Self::Token { name, .. } => format!("token:{name}"),
        }
    }

    /// Whether nothing but the two ends can read the connection: the Unix
    /// socket or TLS. Group keys and three-step data go only to such clients.
    pub(crate) fn secure(&self) -> bool {
        match self {
            Self::Local { .. } | Self::Cert { .. } => true,
            Self::Token { tls, .. } => *tls,
            Self::Remote(_) => false,
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local { uid, gid, pid } => write!(f, "uid={uid} gid={gid} pid={pid}"),
            Self::Remote(a) => write!(f, "tcp {a}"),
            Self::Cert { cn } => write!(f, "certificate {cn}"),
            Self::Token { name, tls: true } => write!(f, "token {name} (TLS)"),
            Self::Token { name, tls: false } => write!(f, "token {name} (plain TCP)"),
        }
    }
}

/// A request from a session thread to the ring thread. The requests of one
/// client arrive in order: `Connect`, then `Frame`s, then `Gone`.
#[derive(Debug)]
pub(crate) enum ToRing {
    /// A client said hello.
    Connect {
        /// The client's id (unique for the daemon's lifetime).
        id: u64,
        /// The name the client asked for.
        hello_name: String,
        /// The protocol version both sides speak (`negotiate_version`).
        version: u8,
        /// Who the client is, authenticated.
        principal: Principal,
        /// Where its frames go.
        out: ClientOut,
    },
    /// A client's request.
    Frame {
        /// The client.
        id: u64,
        /// The request.
        frame: ClientFrame,
    },
    /// The session ended (the client left, failed, or was disconnected);
    /// nothing more is sent to it.
    Gone {
        /// The client.
        id: u64,
    },
}

/// Work for one session thread.
#[derive(Debug)]
enum ToSession {
    /// An encoded frame (length prefix included) for a client.
    Frame {
        /// The client.
        id: u64,
        /// The frame, as on the wire; shared with other clients.
        bytes: Bytes,
    },
    /// The last frame for a client (a refusal): the session writes it, then
    /// closes the connection.
    Last {
        /// The client.
        id: u64,
        /// The frame, as on the wire.
        bytes: Bytes,
    },
    /// A connection accepted by session thread 0, handed over to this one.
    Adopt(Stream, SessionSlot),
}

/// One session thread's inbox, as the other threads see it.
#[derive(Debug)]
struct Outbox {
    tx: Sender<ToSession>,
    waker: mio::Waker,
    /// Items were queued since the last wake-up (see [`Sessions::wake`]).
    dirty: AtomicBool,
}

impl Outbox {
    /// Queues an item without waking the thread; false if the thread is gone.
    fn push(&self, item: ToSession) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => {
                // The session thread drains its inbox on every turn of its
                // loop and never waits on the ring: waiting here is short.
                let _ = self.waker.wake();
                if self.tx.send(item).is_err() {
                    return false;
                }
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
        self.dirty.store(true, Ordering::Relaxed);
        true
    }

    /// Wakes the thread if items were queued since the last wake-up.
    fn wake_if_dirty(&self) {
        if self.dirty.swap(false, Ordering::Relaxed) {
            let _ = self.waker.wake();
        }
    }
}

/// The ring thread's handle on one client: frames go to the client's session
/// thread, which writes them. Sending only queues; the ring thread wakes the
/// session threads once per turn with [`Sessions::wake`].
#[derive(Debug, Clone)]
pub(crate) struct ClientOut {
    id: u64,
    outbox: Arc<Outbox>,
}

impl ClientOut {
    /// Queues an encoded frame (see `ringfence_proto::server`); false if the client's
    /// session thread is gone. A client that reads too slowly is disconnected
    /// by its session thread, which then sends `ToRing::Gone`.
    pub(crate) fn send(&self, bytes: Bytes) -> bool {
        self.outbox.push(ToSession::Frame { id: self.id, bytes })
    }

    /// Queues the last frame for the client (a refusal); its session closes
    /// the connection once the frame is written.
    pub(crate) fn send_last(&self, bytes: Bytes) -> bool {
        self.outbox.push(ToSession::Last { id: self.id, bytes })
    }
}

/// What the session threads need to start.
#[derive(Debug)]
pub(crate) struct SessionConfig<'a> {
    /// The Unix socket for local clients.
    pub(crate) unix: &'a Path,
    /// The TCP address for remote clients, if any.
    pub(crate) tcp: Option<SocketAddr>,
    /// How TCP clients authenticate.
    pub(crate) clients: Arc<Clients>,
    /// Failed authentications and TLS handshakes, for the status file.
    pub(crate) auth_failures: Arc<AtomicU64>,
    /// Where requests go.
    pub(crate) to_ring: Sender<ToRing>,
    /// Wakes the ring thread (each session thread has a clone).
    pub(crate) waker: &'a Waker,
    /// Frame limits.
    pub(crate) limits: Limits,
    /// The index (in `core_affinity::get_core_ids()`) of the ring thread's
    /// core; `None` when the ring thread is not pinned, and then neither are
    /// the session threads.
    pub(crate) ring_core: Option<usize>,
}

/// The ring thread's side of the session threads.
#[derive(Debug)]
pub(crate) struct Sessions {
    outboxes: Vec<Arc<Outbox>>,
    stop: Arc<AtomicBool>,
    /// Connections and their input, over all session threads (for tests).
    #[cfg(test)]
    counts: Arc<Counts>,
}

impl Sessions {
    /// Binds the listeners (errors are returned here, not in a thread) and
    /// starts the session threads, one per core the ring thread leaves (see
    /// [`plan_threads`]).
    pub(crate) fn start(cfg: SessionConfig<'_>) -> io::Result<Self> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let count = if cores.is_empty() {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            cores.len()
        };
        let plan =
            plan_threads(count, cfg.ring_core).into_iter().map(|c| c.and_then(|i| cores.get(i).copied()));
        Self::spawn(cfg, plan.collect())
    }

    /// Binds the listeners and starts one session thread per entry of
    /// `plan`, pinned to its core if it names one.
    fn spawn(cfg: SessionConfig<'_>, plan: Vec<Option<core_affinity::CoreId>>) -> io::Result<Self> {
        let listeners = event_loop::Listeners::bind(cfg.unix, cfg.tcp)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::new(cfg.clients.caps));
        let mut polls = Vec::with_capacity(plan.len());
        let mut outboxes = Vec::with_capacity(plan.len());
        let mut inboxes = Vec::with_capacity(plan.len());
        for _ in &plan {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), event_loop::WAKER)?;
            let (tx, rx): (Sender<ToSession>, Receiver<ToSession>) = bounded(SESSION_QUEUE);
            polls.push(poll);
            outboxes.push(Arc::new(Outbox { tx, waker, dirty: AtomicBool::new(false) }));
            inboxes.push(rx);
        }
        // Stops the threads already started if a later one fails to start.
        let this = Self {
            outboxes,
            stop,
            #[cfg(test)]
            counts: Arc::clone(&counts),
        };
        let mut listeners = Some(listeners);
        for (k, ((poll, rx), core)) in polls.into_iter().zip(inboxes).zip(plan).enumerate() {
            let thread = SessionThread::new(event_loop::Setup {
                index: u8::try_from(k).unwrap_or(u8::MAX),
                poll,
                inbox: rx,
                siblings: Siblings::new(&this.outboxes, k),
                listeners: if k == 0 { listeners.take() } else { None },
                to_ring: cfg.to_ring.clone(),
                waker: cfg.waker.try_clone()?,
                limits: cfg.limits,
                clients: Arc::clone(&cfg.clients),
                auth_failures: Arc::clone(&cfg.auth_failures),
                counts: Arc::clone(&counts),
                stop: Arc::clone(&this.stop),
            })?;
            std::thread::Builder::new().name(format!("rf-session-{k}")).spawn(move || {
                pin(k, core);
                thread.run();
            })?;
        }
        info!(threads = this.outboxes.len(), "session threads started");
        Ok(this)
    }

    /// Frames and connections queued for the session threads, not yet taken.
    pub(crate) fn queued(&self) -> usize {
        self.outboxes.iter().map(|o| o.tx.len()).sum()
    }

    /// Wakes every session thread that was given work since the last call:
    /// one wake-up per thread per turn of the ring thread, not per frame.
    pub(crate) fn wake(&self) {
        for o in &self.outboxes {
            o.wake_if_dirty();
        }
    }
}

impl Drop for Sessions {
    /// Stops the session threads; they close their connections.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for o in &self.outboxes {
            let _ = o.waker.wake();
        }
    }
}

/// How many session threads to run on `cores` cores, and the core index of
/// each (`None`: not pinned). With the ring thread pinned to `ring_core` and
/// at least two cores, the session threads take the other cores in turn.
fn plan_threads(cores: usize, ring_core: Option<usize>) -> Vec<Option<usize>> {
    let threads = cores.saturating_sub(1).clamp(1, MAX_SESSION_THREADS);
    let others: Vec<usize> = match ring_core {
        Some(r) if cores >= 2 => (0..cores).filter(|&i| i != r).collect(),
        _ => vec![],
    };
    (0..threads).map(|k| (!others.is_empty()).then(|| others[k % others.len()])).collect()
}

/// Pins the calling session thread to `core`, if there is one; a failure is
/// logged and the thread runs unpinned.
fn pin(thread: usize, core: Option<core_affinity::CoreId>) {
    let Some(core) = core else { return };
    if core_affinity::set_for_current(core) {
        info!(thread, core = core.id, "session thread pinned");
    } else {
        warn!(thread, core = core.id, "could not pin a session thread; running unpinned");
    }
}

/// Which count a connection holds a place in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pool {
    /// A TCP connection that has not said Hello (`max_unauthenticated`).
    PendingTcp,
    /// A Unix-socket connection that has not said Hello
    /// (`max_unauthenticated`, counted apart from TCP).
    PendingUnix,
    /// An authenticated client (`max_clients`).
    Clients,
}

/// Connections and their undecoded input over all session threads, against
/// the caps of `[clients]` (see [`ClientCaps`]).
#[derive(Debug)]
pub(super) struct Counts {
    caps: ClientCaps,
    pending_tcp: AtomicUsize,
    pending_unix: AtomicUsize,
    clients: AtomicUsize,
    /// Undecoded input bytes held by every connection.
    buffered: AtomicUsize,
}

impl Counts {
    pub(super) fn new(caps: ClientCaps) -> Self {
        Self {
            caps,
            pending_tcp: AtomicUsize::new(0),
            pending_unix: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
        }
    }

    /// The caps counted against.
    pub(super) fn caps(&self) -> &ClientCaps {
        &self.caps
    }

    fn pool(&self, pool: Pool) -> (&AtomicUsize, usize) {
        match pool {
            Pool::PendingTcp => (&self.pending_tcp, self.caps.max_unauthenticated),
            Pool::PendingUnix => (&self.pending_unix, self.caps.max_unauthenticated),
            Pool::Clients => (&self.clients, self.caps.max_clients),
        }
    }

    /// Takes a place in `pool`; false when it is full.
    fn enter(&self, pool: Pool) -> bool {
        let (n, cap) = self.pool(pool);
        if n.fetch_add(1, Ordering::AcqRel) >= cap {
            n.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn leave(&self, pool: Pool) {
        self.pool(pool).0.fetch_sub(1, Ordering::AcqRel);
    }

    /// Undecoded input bytes held by all connections.
    pub(super) fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Bytes the global budget still has room for.
    pub(super) fn budget_room(&self) -> usize {
        self.caps.buffer_budget.saturating_sub(self.buffered())
    }
}

/// One connection's place in [`Counts`] and its share of the input budget,
/// given back when the connection is dropped.
#[derive(Debug)]
pub(super) struct SessionSlot {
    counts: Arc<Counts>,
    pool: Pool,
    /// Input bytes this connection holds, as counted in `Counts::buffered`.
    charged: usize,
}

impl SessionSlot {
    /// A place in `pool`, or `None` when the pool is at its cap.
    pub(super) fn take(counts: &Arc<Counts>, pool: Pool) -> Option<Self> {
        counts.enter(pool).then(|| Self { counts: Arc::clone(counts), pool, charged: 0 })
    }

    /// Moves the connection to the authenticated clients; false (and no
    /// change) when `max_clients` are connected.
    pub(super) fn promote(&mut self) -> bool {
        if self.pool == Pool::Clients {
            return true;
        }
        if !self.counts.enter(Pool::Clients) {
            return false;
        }
        self.counts.leave(self.pool);
        self.pool = Pool::Clients;
        true
    }

    /// The counts this place is in.
    pub(super) fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Records that the connection now holds `bytes` of undecoded input.
    pub(super) fn charge(&mut self, bytes: usize) {
        if bytes > self.charged {
            self.counts.buffered.fetch_add(bytes - self.charged, Ordering::Relaxed);
        } else {
            self.counts.buffered.fetch_sub(self.charged - bytes, Ordering::Relaxed);
        }
        self.charged = bytes;
    }
}

impl SessionSlot {
    /// Records that the connection now holds or reserves `bytes`, if the
    /// global budget has room for the increase; false (and no change) if
    /// not.
    pub(super) fn try_charge(&mut self, bytes: usize) -> bool {
        let add = bytes.saturating_sub(self.charged);
        let budget = self.counts.caps.buffer_budget;
        let ok = self
            .counts
            .buffered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                let b = b.checked_add(add)?;
                (b <= budget).then_some(b)
            })
            .is_ok();
        if ok {
            // Only an increase was added; a decrease is applied here.
            let charged = self.charged.max(bytes);
            self.charged = charged;
            self.charge(bytes);
        }
        ok
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.charge(0);
        self.counts.leave(self.pool);
    }
}

/// Wakes the ring thread: an eventfd its backend waits on beside the UDP
/// sockets, written only while the ring thread is parked (about to wait or
/// waiting), so a busy ring thread costs its sessions no system call.
///
/// The ring thread calls [`Waker::park`] before it waits and
/// [`Waker::unpark`] after; it waits only if `park` returned true (nothing
/// was handed over meanwhile: the caller checks its queue between the two).
/// A session hands its requests over first and then calls [`Waker::wake`],
/// which writes the eventfd only if it is the one that cleared `parked`.
/// The backend reads the eventfd whenever it reports it readable, so a
/// write that lands after the ring thread stopped waiting costs one early
/// return of the next wait, never a busy loop.
#[derive(Debug, Clone)]
pub(crate) struct Waker {
    inner: Arc<WakerInner>,
}

#[derive(Debug)]
struct WakerInner {
    fd: nix::sys::eventfd::EventFd,
    parked: AtomicBool,
    /// Writes to the eventfd so far (counted for tests and the benchmark
    /// notes).
    writes: AtomicU64,
}

impl Waker {
    /// A fresh waker (nonblocking eventfd, counter 0, not parked).
    pub(crate) fn new() -> io::Result<Self> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Self {
            inner: Arc::new(WakerInner { fd, parked: AtomicBool::new(false), writes: AtomicU64::new(0) }),
        })
    }

    /// A second descriptor of the eventfd, for the ring thread's backend
    /// to wait on and read.
    pub(crate) fn fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.inner.fd.as_fd().try_clone_to_owned()
    }

    /// Ring thread: about to wait. Check the request queue after this and
    /// wait only if it is empty.
    pub(crate) fn park(&self) {
        self.inner.parked.store(true, Ordering::SeqCst);
    }

    /// Ring thread: done waiting (or not waiting after all).
    pub(crate) fn unpark(&self) {
        self.inner.parked.store(false, Ordering::SeqCst);
    }

    /// Session: requests were handed over; wake the ring thread if it is
    /// parked.
    pub(crate) fn wake(&self) {
        if self.inner.parked.swap(false, Ordering::SeqCst) {
            self.inner.writes.fetch_add(1, Ordering::Relaxed);
            let _ = self.inner.fd.write(1);
        }
    }

    /// Eventfd writes so far.
    #[cfg(test)]
    pub(crate) fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// A second handle on the same waker.
    fn try_clone(&self) -> io::Result<Self> {
        Ok(self.clone())
    }
}

/// Checks a Hello's version range against ours (authentication is
/// `auth::authenticate`): the version both speak, or why it is refused.
fn check_version(h: &Hello) -> Result<u8, (RefuseCode, String)> {
    negotiate_version(h.min_version, h.max_version).ok_or_else(|| {
        let text = format!(
            "versions {}..={} not spoken; this daemon speaks {}",
            h.min_version, h.max_version, CLIENT_VERSION
        );
        (RefuseCode::VersionMismatch, text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfence_proto::wire::client::Auth;

    #[test]
    fn one_core_runs_one_unpinned_session_thread() {
        assert_eq!(plan_threads(1, None), vec![None]);
        assert_eq!(plan_threads(1, Some(0)), vec![None]);
        assert_eq!(plan_threads(0, None), vec![None]);
    }

    #[test]
    fn session_threads_take_the_cores_the_ring_thread_leaves() {
        assert_eq!(plan_threads(2, Some(0)), vec![Some(1)]);
        assert_eq!(plan_threads(2, Some(1)), vec![Some(0)]);
        assert_eq!(plan_threads(4, Some(1)), vec![Some(0), Some(2), Some(3)]);
        // An unpinned ring thread: unpinned session threads.
        assert_eq!(plan_threads(4, None), vec![None, None, None]);
        // A ring core out of range leaves every core to the sessions.
        assert_eq!(plan_threads(3, Some(7)), vec![Some(0), Some(1)]);
    }

    #[test]
    fn session_threads_are_capped() {
        let plan = plan_threads(64, Some(0));
        assert_eq!(plan.len(), MAX_SESSION_THREADS);
        assert!(plan.iter().all(|c| c.is_some_and(|c| c != 0)));
    }

    #[test]
    fn hello_checks_the_version() {
        assert_eq!(check_version(&Hello::new("a", Auth::PeerCredentials)), Ok(CLIENT_VERSION));
        let mut old = Hello::new("a", Auth::PeerCredentials);
        old.min_version = CLIENT_VERSION + 1;
        old.max_version = CLIENT_VERSION + 1;
        assert_eq!(check_version(&old).map_err(|(c, _)| c), Err(RefuseCode::VersionMismatch));
    }
}

#[cfg(test)]
mod loop_tests;
