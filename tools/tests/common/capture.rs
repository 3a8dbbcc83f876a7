//! An independent record of the bytes real daemons and clients put on the
//! wire, for tests that must show what crosses it (and what never does).
//!
//! ```text
//!  daemon j (A_j) ──► relay R_i ══ relay R_j ──► daemon i (A_i)
//!                          │  (UdpTap: recorded, then forwarded)
//!  client ──► TcpTap ──► daemon's client_tcp      (both directions recorded)
//! ```
//!
//! [`UdpTap`] stands between the daemons of a unicast cluster. Daemon `i`
//! binds its real address `A_i`; its config names every other daemon `j` by
//! `R_j`, a relay socket of the tap. A datagram daemon `j` sends to `R_i`
//! leaves the tap for `A_i` from `R_j`, so daemon `i` sees it come from `j`'s
//! configured address (daemons drop datagrams from any other source). Every
//! forwarded datagram is recorded before it is forwarded: whatever a daemon
//! received from another went through the record first.
//!
//! A tap may also play the attacker on the path: [`UdpTap::start_redirecting`]
//! sends a copy of chosen datagrams to a third daemon (from the sender's
//! relay, so with the sender's configured source address, as a spoofing
//! attacker would), and [`UdpTap::inject`] sends any bytes to a daemon as if
//! from another.
//!
//! [`TcpTap`] is a recording TCP proxy in front of a daemon's `client_tcp`.
//!
//! Both write into a [`Capture`], a shared handle tests query.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a tap thread blocks before it looks at its stop flag again.
const TICK: Duration = Duration::from_millis(50);
/// Room for any UDP datagram.
const MAX_DATAGRAM: usize = 65_536;

/// One daemon-to-daemon datagram, as the tap forwarded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Index of the sending daemon.
    pub from: usize,
    /// Index of the receiving daemon.
    pub to: usize,
    /// The datagram, whole.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Record {
    datagrams: Vec<Datagram>,
    /// One contiguous stream per direction of each proxied TCP connection.
    streams: Vec<Vec<u8>>,
}

/// Everything the taps writing into it recorded; clones share the record.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    record: Arc<Mutex<Record>>,
}

impl Capture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `needle` occurs in any recorded datagram or in any TCP
    /// stream (each direction of a connection searched as one contiguous
    /// stream, so a needle split across reads is still found).
    pub fn contains(&self, needle: &[u8]) -> bool {
        let r = self.record.lock().unwrap();
        r.datagrams.iter().any(|d| find(&d.bytes, needle)) || r.streams.iter().any(|s| find(s, needle))
    }

    /// How many datagrams were recorded.
    pub fn datagrams(&self) -> usize {
        self.record.lock().unwrap().datagrams.len()
    }

    /// The recorded datagrams' bytes, in total.
    pub fn datagram_bytes(&self) -> usize {
        self.record.lock().unwrap().datagrams.iter().map(|d| d.bytes.len()).sum()
    }

    /// The recorded TCP bytes, both directions of every connection.
    pub fn tcp_bytes(&self) -> usize {
        self.record.lock().unwrap().streams.iter().map(Vec::len).sum()
    }

    /// A copy of every recorded datagram, in the order forwarded.
    pub fn tcp_streams(&self) -> Vec<Vec<u8>> {
        self.record.lock().unwrap().streams.clone()
    }

    /// Every datagram recorded, in order.
    pub fn datagram_list(&self) -> Vec<Datagram> {
        self.record.lock().unwrap().datagrams.clone()
    }

    fn push_datagram(&self, d: Datagram) {
        self.record.lock().unwrap().datagrams.push(d);
    }

    /// A new, empty TCP stream; returns its index.
    fn open_stream(&self) -> usize {
        let mut r = self.record.lock().unwrap();
        r.streams.push(Vec::new());
        r.streams.len() - 1
    }

    fn append(&self, stream: usize, bytes: &[u8]) {
        self.record.lock().unwrap().streams[stream].extend_from_slice(bytes);
    }
}

/// Whether `needle` occurs in `haystack` (the empty needle always does).
fn find(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A stop flag and the thread that watches it; dropping sets the flag and
/// joins the thread (which looks at the flag at least every `TICK`).
#[derive(Debug)]
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        Self { stop, thread: Some(std::thread::spawn(move || f(flag))) }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A recording relay between the daemons of a unicast cluster (see the
/// module doc); stops when dropped.
#[derive(Debug)]
pub struct UdpTap {
    daemons: Vec<SocketAddr>,
    relays: Vec<SocketAddr>,
    /// The relay sockets again, for [`UdpTap::inject`].
    senders: Vec<UdpSocket>,
    capture: Capture,
    _worker: Worker,
}

/// Picks, for a datagram the tap forwards, a third daemon to send a copy
/// to (see [`UdpTap::start_redirecting`]).
pub type Redirect = Box<dyn FnMut(&Datagram) -> Option<usize> + Send>;

impl UdpTap {
    /// Binds `n` relay sockets on 127.0.0.1, picks `n` free loopback
    /// addresses for the daemons (each daemon binds its own) and starts
    /// relaying, recording into `capture`.
    pub fn start(n: usize, capture: Capture) -> Self {
        Self::start_redirecting(n, capture, Box::new(|_| None))
    }

    /// As `start`; besides, each datagram for which `redirect` names a
    /// daemon is also sent there, from the sender's relay (after the
    /// original).
    pub fn start_redirecting(n: usize, capture: Capture, mut redirect: Redirect) -> Self {
        let sockets: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let relays = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        // Picked while the relays are bound, so none is a relay's port.
        let daemons: Vec<SocketAddr> = {
            let free: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
            free.iter().map(|s| s.local_addr().unwrap()).collect()
        };
        let (addresses, record) = (daemons.clone(), capture.clone());
        let senders = sockets.iter().map(|s| s.try_clone().unwrap()).collect();
        let worker = Worker::spawn(move |stop| relay(&sockets, &addresses, &record, &mut *redirect, &stop));
        Self { daemons, relays, senders, capture, _worker: worker }
    }

    /// Sends `bytes` to daemon `to` from daemon `from`'s relay: `to` takes
    /// it for a datagram of `from` (a forged one, if the test made it).
    pub fn inject(&self, from: usize, to: usize, bytes: &[u8]) {
        self.senders[from].send_to(bytes, self.daemons[to]).unwrap();
    }

    /// How many daemons the tap stands between.
    pub fn daemon_count(&self) -> usize {
        self.daemons.len()
    }

    /// Daemon `i`'s real address (`A_i`, in its own config entry).
    pub fn daemon(&self, i: usize) -> SocketAddr {
        self.daemons[i]
    }

    /// Daemon `i`'s relay address (`R_i`, its address in the other
    /// daemons' configs).
    pub fn relay(&self, i: usize) -> SocketAddr {
        self.relays[i]
    }

    /// What the tap recorded.
    pub fn capture(&self) -> &Capture {
        &self.capture
    }
}

/// The relay loop: a datagram at `sockets[to]` from `daemons[from]` is
/// recorded, then sent to `daemons[to]` from `sockets[from]` (and to the
/// daemon `redirect` names, if any). Datagrams from anywhere else are
/// dropped.
fn relay(
    sockets: &[UdpSocket],
    daemons: &[SocketAddr],
    capture: &Capture,
    redirect: &mut (dyn FnMut(&Datagram) -> Option<usize> + Send),
    stop: &AtomicBool,
) {
    for s in sockets {
        s.set_nonblocking(true).unwrap();
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let tick = PollTimeout::try_from(TICK).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<PollFd<'_>> =
            sockets.iter().map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect();
        if poll(&mut fds, tick).unwrap_or(0) == 0 {
            continue;
        }
        for (to, socket) in sockets.iter().enumerate() {
            // Drain: errors (an ICMP unreachable reported late) end the turn.
            while let Ok((n, source)) = socket.recv_from(&mut buf) {
                let Some(from) = daemons.iter().position(|a| *a == source) else { continue };
                let d = Datagram { from, to, bytes: buf[..n].to_vec() };
                let also = redirect(&d);
                capture.push_datagram(d);
                // Lost if the receiver is not up yet; the protocol recovers.
                let _ = sockets[from].send_to(&buf[..n], daemons[to]);
                if let Some(also) = also {
                    let _ = sockets[from].send_to(&buf[..n], daemons[also]);
                }
            }
        }
    }
}

/// A recording TCP proxy on 127.0.0.1 in front of `target`; stops (and
/// closes every proxied connection) when dropped.
#[derive(Debug)]
pub struct TcpTap {
    address: SocketAddr,
    capture: Capture,
    _worker: Worker,
}

impl TcpTap {
    /// Listens on 127.0.0.1 (a free port) and proxies every connection to
    /// `target`, recording both directions into `capture`.
    pub fn start(target: SocketAddr, capture: Capture) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let record = capture.clone();
        let worker = Worker::spawn(move |stop| accept(&listener, target, &record, &stop));
        Self { address, capture, _worker: worker }
    }

    /// Where clients connect instead of the daemon.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What the tap recorded.
    pub fn capture(&self) -> &Capture {
        &self.capture
    }
}

/// Accepts until `stop`; each connection gets two pumps, joined before
/// this returns.
fn accept(listener: &TcpListener, target: SocketAddr, capture: &Capture, stop: &Arc<AtomicBool>) {
    listener.set_nonblocking(true).unwrap();
    let mut pumps = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => panic!("tcp tap: accept: {e}"),
        };
        client.set_nonblocking(false).unwrap();
        let Ok(daemon) = TcpStream::connect(target) else {
            continue; // the daemon is not listening: the client sees the close
        };
        for (from, to) in [(&client, &daemon), (&daemon, &client)] {
            let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
            let (stream, capture, stop) = (capture.open_stream(), capture.clone(), Arc::clone(stop));
            pumps.push(std::thread::spawn(move || pump(from, to, stream, &capture, &stop)));
        }
    }
    for p in pumps {
        let _ = p.join();
    }
}

/// Copies `from` to `to`, recording into `stream`. At the end of `from`'s
/// stream it passes the end on (shuts `to` for writing); on an error or
/// `stop` it closes both sockets, so the other pump of the pair ends too.
fn pump(mut from: TcpStream, mut to: TcpStream, stream: usize, capture: &Capture, stop: &AtomicBool) {
    from.set_read_timeout(Some(TICK)).unwrap();
    to.set_write_timeout(Some(TICK)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                capture.append(stream, &buf[..n]);
                if !write_all(&mut to, &buf[..n], stop) {
                    break;
                }
            }
            Err(e) if timed_out(&e) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Writes all of `bytes` unless an error or `stop` comes first; says
/// whether it did.
fn write_all(to: &mut TcpStream, mut bytes: &[u8], stop: &AtomicBool) -> bool {
    while !bytes.is_empty() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match to.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if timed_out(&e) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Whether `e` is a socket timeout (or an interrupted call): try again.
fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}
