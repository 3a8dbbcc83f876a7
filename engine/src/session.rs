//! Client sessions: a listener thread accepts Unix-socket clients; per
//! client a reader thread decodes frames and hands requests to the ring
//! thread over one bounded channel, and a writer thread drains the client's
//! bounded queue of outgoing frames, writing them in batches.
//!
//! ```text
//!  client ──frames──► reader thread ──ToRing (bounded)──► ring thread
//!  client ◄─batches── writer thread ◄──Out (bounded, per client)── ring thread
//! ```
//!
//! Backpressure: a client that sends faster than the ring accepts fills the
//! shared channel and its reader blocks, so the kernel's socket buffer and
//! then the client are slowed. A client that reads slower than its groups
//! deliver fills its own queue: it is disconnected with the stated reason
//! `slow consumer`, and the daemon goes on.

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use ringfence_proto::wire::client::{
    Auth, ByeReason, CLIENT_VERSION, ClientFrame, DaemonFrame, Frame, FrameDecoder, Hello, Limits,
    RefuseCode, negotiate_version,
};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tracing::{debug, info, warn};

/// Frames waiting for one client before it counts as a slow consumer.
pub(crate) const CLIENT_QUEUE: usize = 1 << 18;
/// Payload bytes waiting for one client before it counts as a slow consumer.
pub(crate) const CLIENT_QUEUE_BYTES: usize = 32 << 20;
/// Requests from all clients waiting for the ring thread.
pub(crate) const RING_QUEUE: usize = 8192;

/// Who is at the other end of a client connection, as the kernel says.
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
    /// A remote address (no authentication yet: TLS and tokens are to come).
    Remote(SocketAddr),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local { uid, gid, pid } => write!(f, "uid={uid} gid={gid} pid={pid}"),
            Self::Remote(a) => write!(f, "tcp {a}"),
        }
    }
}

/// A request from a session to the ring thread.
#[derive(Debug)]
pub(crate) enum ToRing {
    /// A client said hello.
    Connect { id: u64, hello_name: String, principal: Principal, out: ClientOut },
    /// A client's request.
    Frame { id: u64, frame: ClientFrame },
    /// The connection ended.
    Gone { id: u64 },
}

/// The ring thread's handle on one client's writer.
#[derive(Debug, Clone)]
pub(crate) struct ClientOut {
    tx: Sender<DaemonFrame>,
    kicked: Arc<AtomicBool>,
    /// Payload bytes queued and not yet written.
    queued: Arc<AtomicUsize>,
}

fn payload_len(f: &DaemonFrame) -> usize {
    match f {
        DaemonFrame::Message(m) => m.payload.len(),
        _ => 0,
    }
}

impl ClientOut {
    /// Queues a frame; false if the client is too slow (it is then
    /// disconnected with that reason).
    pub(crate) fn send(&self, f: DaemonFrame) -> bool {
        let len = payload_len(&f);
        if self.queued.load(Ordering::Relaxed) + len > CLIENT_QUEUE_BYTES {
            self.kicked.store(true, Ordering::Relaxed);
            return false;
        }
        // Counted before it is queued, so the writer never subtracts first.
        self.queued.fetch_add(len, Ordering::Relaxed);
        match self.tx.try_send(f) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                self.kicked.store(true, Ordering::Relaxed);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Wakes the ring thread, which waits on its UDP socket: a one-byte datagram
/// from a socket whose address it knows.
#[derive(Debug)]
pub(crate) struct Waker {
    socket: UdpSocket,
    ring: SocketAddr,
}

impl Waker {
    pub(crate) fn new(ring: SocketAddr) -> io::Result<Self> {
        let bind: SocketAddr =
            if ring.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }.parse().map_err(io::Error::other)?;
        let socket = UdpSocket::bind(bind)?;
        let ring = if ring.ip().is_unspecified() { SocketAddr::new(bind.ip(), ring.port()) } else { ring };
        Ok(Self { socket, ring })
    }

    pub(crate) fn address(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) fn wake(&self) {
        let _ = self.socket.send_to(&[0], self.ring);
    }

    fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { socket: self.socket.try_clone()?, ring: self.ring })
    }
}

/// A client connection: a Unix or TCP stream.
pub(crate) trait Conn: Read + Write + Send + Sized + 'static {
    /// A second handle on the same connection (reader and writer threads).
    fn duplicate(&self) -> io::Result<Self>;
    /// Shuts down one or both directions.
    fn close(&self, how: Shutdown);
    /// Bounds how long one read or write may wait without progress.
    fn timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()>;
    /// Who is at the other end.
    fn principal(&self) -> io::Result<Principal>;
}

macro_rules! impl_conn {
    ($($t:ty),*) => {$(
        impl Conn for $t {
            fn duplicate(&self) -> io::Result<Self> {
                self.try_clone()
            }
            fn close(&self, how: Shutdown) {
                let _ = self.shutdown(how);
            }
            fn timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(read)?;
                self.set_write_timeout(write)
            }
            fn principal(&self) -> io::Result<Principal> {
                PeerOf::peer(self)
            }
        }
    )*};
}

impl_conn!(UnixStream, TcpStream);

/// How each kind of connection names its peer.
trait PeerOf {
    fn peer(&self) -> io::Result<Principal>;
}

impl PeerOf for UnixStream {
    fn peer(&self) -> io::Result<Principal> {
        let c = nix::sys::socket::getsockopt(self, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(io::Error::from)?;
        Ok(Principal::Local { uid: c.uid(), gid: c.gid(), pid: c.pid() })
    }
}

impl PeerOf for TcpStream {
    fn peer(&self) -> io::Result<Principal> {
        self.peer_addr().map(Principal::Remote)
    }
}

/// A client must say Hello within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A write to a client that makes no progress for this long ends the
/// session (the client stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most client connections at once (handshaking or not); more are closed at
/// once.
const MAX_SESSIONS: usize = 4096;

/// What every session of a listener shares.
#[derive(Clone)]
struct Ctx {
    to_ring: Sender<ToRing>,
    waker: Arc<Waker>,
    limits: Limits,
    /// Sessions open now, over all listeners.
    sessions: Arc<AtomicUsize>,
    /// Unix socket (peer credentials) or TCP.
    unix: bool,
}

/// Counts one session while it lives.
struct SessionSlot(Arc<AtomicUsize>);

impl SessionSlot {
    fn take(sessions: &Arc<AtomicUsize>) -> Option<Self> {
        if sessions.fetch_add(1, Ordering::AcqRel) >= MAX_SESSIONS {
            sessions.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(Arc::clone(sessions)))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts a listener thread for TCP clients on `addr`.
pub(crate) fn listen_tcp(
    addr: SocketAddr,
    to_ring: Sender<ToRing>,
    waker: &Waker,
    limits: Limits,
    sessions: &Arc<AtomicUsize>,
) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    info!(address = %addr, "listening for TCP clients");
    let ctx = Ctx {
        to_ring,
        waker: Arc::new(waker.try_clone()?),
        limits,
        sessions: Arc::clone(sessions),
        unix: false,
    };
    // Ids of TCP sessions live in the upper half, apart from Unix ones.
    let next_id = AtomicU64::new(1 << 62);
    std::thread::Builder::new().name("rf-tcp-listener".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            let _ = stream.set_nodelay(true);
            spawn_session(next_id.fetch_add(1, Ordering::Relaxed), stream, &ctx);
        }
    })?;
    Ok(())
}

fn spawn_session<S: Conn>(id: u64, stream: S, ctx: &Ctx) {
    let Some(slot) = SessionSlot::take(&ctx.sessions) else {
        warn!(client = id, "too many client connections; closing a new one");
        stream.close(Shutdown::Both);
        return;
    };
    let ctx = ctx.clone();
    let _ = std::thread::Builder::new().name(format!("rf-client-{id}")).spawn(move || {
        serve(id, stream, &ctx);
        drop(slot);
    });
}

/// Starts the listener thread on `path`.
pub(crate) fn listen(
    path: &Path,
    to_ring: Sender<ToRing>,
    waker: &Waker,
    limits: Limits,
    sessions: &Arc<AtomicUsize>,
) -> io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    info!(socket = %path.display(), "listening for clients");
    let ctx = Ctx {
        to_ring,
        waker: Arc::new(waker.try_clone()?),
        limits,
        sessions: Arc::clone(sessions),
        unix: true,
    };
    let next_id = AtomicU64::new(1);
    std::thread::Builder::new().name("rf-listener".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => spawn_session(next_id.fetch_add(1, Ordering::Relaxed), stream, &ctx),
                Err(e) => warn!(error = %e, "accept failed"),
            }
        }
    })?;
    Ok(())
}

/// Checks a Hello: a version both sides speak, and an authentication this
/// listener accepts (Unix peer credentials on the Unix socket; on TCP, until
/// TLS and tokens land, only the same marker, which proves nothing: TCP is for
/// trusted networks). Returns why it is refused, if it is.
fn check_hello(h: &Hello, unix: bool) -> Option<(RefuseCode, String)> {
    if negotiate_version(h.min_version, h.max_version).is_none() {
        let text = format!(
            "versions {}..={} not spoken; this daemon speaks {}",
            h.min_version, h.max_version, CLIENT_VERSION
        );
        return Some((RefuseCode::VersionMismatch, text));
    }
    match (&h.auth, unix) {
        (Auth::PeerCredentials, _) => None,
        (Auth::Token(_), _) => {
            Some((RefuseCode::AuthUnsupported, "token authentication is not available yet".into()))
        }
        (Auth::Tls, _) => Some((RefuseCode::AuthUnsupported, "TLS is not available yet".into())),
        _ => Some((RefuseCode::AuthUnsupported, "unknown authentication kind".into())),
    }
}

/// One client's reader (this thread) and writer (a thread it starts).
fn serve<S: Conn>(id: u64, stream: S, ctx: &Ctx) {
    let (to_ring, waker, limits) = (&ctx.to_ring, &ctx.waker, ctx.limits);
    let Ok(mut write_half) = stream.duplicate() else { return };
    // The client must say Hello soon; a write that makes no progress for
    // WRITE_TIMEOUT means the client stopped reading.
    if stream.timeouts(Some(HELLO_TIMEOUT), Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let mut read_half = stream;
    let mut decoder: FrameDecoder<ClientFrame> = FrameDecoder::new(limits);
    let mut buf = vec![0u8; 64 * 1024];
    let (tx, rx) = bounded::<DaemonFrame>(CLIENT_QUEUE);
    let kicked = Arc::new(AtomicBool::new(false));
    let queued = Arc::new(AtomicUsize::new(0));
    let out = ClientOut { tx, kicked: Arc::clone(&kicked), queued: Arc::clone(&queued) };
    let writer_kicked = Arc::clone(&kicked);
    let writer = std::thread::Builder::new()
        .name(format!("rf-client-{id}-w"))
        .spawn(move || write_loop(&mut write_half, &rx, &limits, &writer_kicked, &queued));
    let mut said_hello = false;
    let mut pending_out = Some(out);
    // Requests handed to the ring since the last wake-up.
    let mut unwoken = false;
    'read: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(ClientFrame::Hello(h))) if !said_hello => {
                    let Some(out) = pending_out.take() else { break 'read };
                    if let Some((code, text)) = check_hello(&h, ctx.unix) {
                        info!(client = id, ?code, "client refused: {text}");
                        out.send(DaemonFrame::Refused { code, text });
                        break 'read;
                    }
                    // Unix peer credentials come from the kernel, not the client.
                    let principal = match read_half.principal() {
                        Ok(p) => p,
                        Err(e) => {
                            out.send(DaemonFrame::Refused {
                                code: RefuseCode::AuthFailed,
                                text: format!("cannot read the peer's credentials: {e}"),
                            });
                            break 'read;
                        }
                    };
                    said_hello = true;
                    // From now on the client may be idle as long as it likes.
                    if read_half.timeouts(None, Some(WRITE_TIMEOUT)).is_err() {
                        break 'read;
                    }
                    let connect = ToRing::Connect { id, hello_name: h.client_name, principal, out };
                    if to_ring.send(connect).is_err() {
                        break 'read;
                    }
                    waker.wake();
                }
                Ok(Some(ClientFrame::Bye)) => break 'read,
                Ok(Some(frame)) if said_hello => match to_ring.try_send(ToRing::Frame { id, frame }) {
                    Ok(()) => unwoken = true,
                    Err(TrySendError::Full(req)) => {
                        // The ring is behind: make sure it is awake, then
                        // block (backpressure on this client).
                        waker.wake();
                        if to_ring.send(req).is_err() {
                            break 'read;
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => break 'read,
                },
                Ok(Some(_)) => {
                    if let Some(out) = pending_out.take() {
                        out.send(DaemonFrame::Refused {
                            code: RefuseCode::ProtocolViolation,
                            text: "the first frame must be Hello".into(),
                        });
                    }
                    break 'read;
                }
                Ok(None) => {
                    // One wake-up for everything one read brought.
                    if std::mem::take(&mut unwoken) {
                        waker.wake();
                    }
                    break;
                }
                Err(e) => {
                    debug!(client = id, error = %e, "bad frame; closing");
                    break 'read;
                }
            }
            if kicked.load(Ordering::Relaxed) {
                break 'read;
            }
        }
        match read_half.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if said_hello {
        let _ = to_ring.send(ToRing::Gone { id });
    }
    waker.wake();
    // Dropping the last sender lets the writer finish what is queued (a
    // Refused, a Bye) and close the connection.
    drop(pending_out);
    read_half.close(Shutdown::Read);
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

fn write_loop<S: Conn>(
    stream: &mut S,
    rx: &Receiver<DaemonFrame>,
    limits: &Limits,
    kicked: &AtomicBool,
    queued: &AtomicUsize,
) {
    let mut out: Vec<u8> = Vec::with_capacity(256 * 1024);
    while let Ok(first) = rx.recv() {
        out.clear();
        let mut taken = payload_len(&first);
        let _ = first.encode(&mut out, limits);
        // Batch whatever else is queued into the same write.
        while out.len() < 256 * 1024 {
            let Ok(f) = rx.try_recv() else { break };
            taken += payload_len(&f);
            let _ = f.encode(&mut out, limits);
        }
        queued.fetch_sub(taken, Ordering::Relaxed);
        if stream.write_all(&out).is_err() {
            // Gone, or no progress for WRITE_TIMEOUT: end the session (the
            // reader sees the connection close).
            stream.close(Shutdown::Both);
            return;
        }
        if kicked.load(Ordering::Relaxed) {
            break;
        }
    }
    if kicked.load(Ordering::Relaxed) {
        out.clear();
        let bye = DaemonFrame::Bye {
            reason: ByeReason::SlowConsumer,
            text: "client read too slowly; queue full".into(),
        };
        if bye.encode(&mut out, limits).is_ok() {
            let _ = stream.write_all(&out);
        }
    }
    stream.close(Shutdown::Both);
}
