//! The ring thread's socket I/O, behind one small interface with two
//! implementations: `portable` (poll(2) and plain socket calls, here) and
//! `io_uring` (`crate::uring`). The daemon picks one at bind time from
//! `[daemon] backend`; `auto` tries io_uring and falls back.
//!
//! A backend owns one or more bound UDP sockets:
//!
//! ```text
//!   sockets[0]  unicast (own address:port)  send + receive
//!   sockets[1..] e.g. multicast (group:port)       receive
//!        \______________ wait() ______________/
//!                         |
//!              on_datagram(source, bytes)
//! ```
//!
//! Every send, including a send to a multicast group, leaves from
//! `sockets[0]`. Sends queue until `flush_sends`; both backends then send
//! runs of equal-size datagrams to one destination as one GSO send and
//! cut coalesced receives (GRO) into datagrams (`crate::udp`), where the
//! kernel offers it and `[daemon] gso`/`gro` allow it.

use crate::config::BackendChoice;
use crate::udp::{self, Offload, OffloadStats, RecvBatch, SendQueue, SendScratch, Sent};
use bytes::Bytes;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::fs::File;
use std::io;
use std::io::Read as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;
use tracing::{info, warn};

/// Datagrams taken from one socket in one wait at most.
const DRAIN: usize = 256;

/// Datagrams queued at most before `send` flushes on its own.
pub(crate) const MAX_QUEUED: usize = 1024;

/// Sockets one backend receives on at most.
pub(crate) const MAX_SOCKETS: usize = 8;

/// Socket I/O of the ring thread.
pub(crate) trait Backend: std::fmt::Debug {
    /// Waits at most `timeout` for datagrams on any of the sockets and gives
    /// each one received to `on_datagram` (source, bytes). It may return
    /// early with none.
    fn wait(&mut self, timeout: Duration, on_datagram: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<()>;
    /// Sends, or queues until `flush_sends`, one datagram from `sockets[0]`.
    /// A queued send holds a reference to `bytes`, not a copy: the same
    /// datagram to every peer is one buffer.
    fn send(&mut self, to: SocketAddr, bytes: &Bytes);
    /// Hands every queued send to the kernel (one submission on io_uring).
    fn flush_sends(&mut self) -> io::Result<()>;
    /// `(sent, send_errors)` so far.
    fn counters(&self) -> (u64, u64);
    /// Datagrams received larger than the largest expected (truncated by
    /// the kernel, or over `max_datagram`), dropped unread, so far.
    fn oversize(&self) -> u64;
    /// Whether GSO and GRO are in use, and their counters so far.
    fn offload(&self) -> OffloadStats;
    /// The name the log shows.
    fn name(&self) -> &'static str;
    /// Also ends a `wait` when `fd` (an eventfd, `crate::session::Waker`)
    /// becomes readable; the backend reads it (resets it) each time.
    fn set_waker(&mut self, fd: OwnedFd) -> io::Result<()>;
}

/// Opens the backend `choice` asks for on the bound `sockets`: `sockets[0]`
/// sends and receives, the others (at most `MAX_SOCKETS` in all) only
/// receive. `max_datagram` is the largest datagram expected (larger ones
/// may be truncated and are then dropped). `offload` says whether GSO and
/// GRO may be used (each only where the kernel offers it).
pub(crate) fn open(
    choice: BackendChoice,
    sockets: Vec<UdpSocket>,
    max_datagram: usize,
    offload: Offload,
) -> io::Result<Box<dyn Backend>> {
    check_sockets(&sockets)?;
    let backend: Box<dyn Backend> = match choice {
        BackendChoice::Portable => Box::new(Portable::new(sockets, max_datagram, offload)?),
        BackendChoice::IoUring => uring(crate::uring::Uring::new(sockets, max_datagram, offload)?),
        BackendChoice::Auto => {
            // Setup needs its own handles: on failure the sockets go to the
            // portable backend.
            let probe = sockets.iter().map(UdpSocket::try_clone).collect::<io::Result<Vec<_>>>()?;
            match crate::uring::Uring::new(probe, max_datagram, offload) {
                Ok(u) => uring(u),
                Err(e) => {
                    warn!(error = %e, "io_uring cannot be set up here: using the portable backend");
                    Box::new(Portable::new(sockets, max_datagram, offload)?)
                }
            }
        }
    };
    let o = backend.offload();
    info!(backend = backend.name(), gso = o.gso, gro = o.gro, "UDP segmentation offload");
    Ok(backend)
}

/// Rejects an empty socket list or one longer than `MAX_SOCKETS` (the
/// caller's mistake).
pub(crate) fn check_sockets(sockets: &[UdpSocket]) -> io::Result<()> {
    if sockets.is_empty() || sockets.len() > MAX_SOCKETS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a backend needs 1 to {MAX_SOCKETS} sockets, not {}", sockets.len()),
        ));
    }
    Ok(())
}

fn uring(u: crate::uring::Uring) -> Box<dyn Backend> {
    info!(receive = u.receive_mode(), "io_uring set up");
    Box::new(u)
}

/// poll(2) over every socket, then nonblocking batched receives
/// (`recvmmsg` with `MSG_DONTWAIT`); sends queue until `flush_sends`, which
/// hands them over in batched `sendmmsg` calls, runs of one size to one
/// destination as one GSO message each (see `crate::udp`). The sockets
/// themselves stay blocking, so a flush blocks while the send buffer is
/// full, as a plain `send_to` does.
#[derive(Debug)]
pub(crate) struct Portable {
    sockets: Vec<UdpSocket>,
    /// The ring thread's eventfd (`set_waker`), polled beside the sockets.
    waker: Option<File>,
    rx: RecvBatch,
    queue: SendQueue,
    scratch: SendScratch,
    offload: OffloadStats,
    max_datagram: usize,
    sent: u64,
    send_errors: u64,
    oversize: u64,
}

impl Portable {
    /// The portable backend on `sockets` (see `open`), with the offloads
    /// of `want` the kernel offers.
    pub(crate) fn new(sockets: Vec<UdpSocket>, max_datagram: usize, want: Offload) -> io::Result<Self> {
        check_sockets(&sockets)?;
        let on = udp::enable(&sockets, want);
        let slot = if on.gro { udp::GRO_BUFFER } else { max_datagram.clamp(64, udp::GRO_BUFFER) + 1 };
        Ok(Self {
            sockets,
            waker: None,
            rx: RecvBatch::new(slot),
            queue: SendQueue::default(),
            scratch: SendScratch::default(),
            offload: OffloadStats { gso: on.gso, gro: on.gro, ..OffloadStats::default() },
            max_datagram,
            sent: 0,
            send_errors: 0,
            oversize: 0,
        })
    }
}

/// Takes up to `DRAIN` queued datagrams from `socket` without waiting, in
/// batches; cuts coalesced ones (GRO) apart; counts in `oversize` (and
/// drops) those over `max_datagram`.
fn drain(
    socket: &UdpSocket,
    rx: &mut RecvBatch,
    max_datagram: usize,
    oversize: &mut u64,
    offload: &mut OffloadStats,
    on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
) {
    let mut taken = 0;
    while taken < DRAIN {
        let n = match rx.recv(socket) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "receive failed");
                return;
            }
        };
        taken += n;
        for k in 0..n {
            let Some(r) = rx.get(k) else { continue };
            let Some(from) = r.from else { continue };
            if r.truncated || r.control_truncated {
                *oversize += 1; // larger than any datagram we send
                continue;
            }
            offload.count(
                udp::deliver_segments(from, r.payload, r.control, max_datagram, on_datagram),
                oversize,
            );
        }
        if n < udp::MMSG_BATCH {
            return; // the queue is empty
        }
    }
}

impl Backend for Portable {
    fn wait(&mut self, timeout: Duration, on_datagram: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<()> {
        let Self { sockets, waker, rx, max_datagram, oversize, offload, .. } = self;
        let n = sockets.len();
        // A fixed array (no allocation per wait): the sockets, then the
        // waker if any; entries past those repeat the last socket and are
        // not passed to poll.
        let mut fds: [PollFd<'_>; MAX_SOCKETS + 1] = std::array::from_fn(|i| match (i == n, &*waker) {
            (true, Some(w)) => PollFd::new(w.as_fd(), PollFlags::POLLIN),
            _ => PollFd::new(sockets[i.min(n - 1)].as_fd(), PollFlags::POLLIN),
        });
        let polled = n + usize::from(waker.is_some());
        // Whole milliseconds, rounded down: never longer than `timeout`.
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds[..polled], ms) {
            Ok(0) | Err(Errno::EINTR) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        // Any event (readable, or an error to collect) means: try to receive.
        let ready: [bool; MAX_SOCKETS + 1] =
            std::array::from_fn(|i| i < polled && fds[i].any().unwrap_or(true));
        if ready[n] {
            if let Some(w) = waker {
                let mut b = [0u8; 8];
                let _ = w.read(&mut b); // resets the counter; EAGAIN if raced
            }
        }
        for (socket, _) in sockets.iter().zip(ready).filter(|(_, r)| *r) {
            drain(socket, rx, *max_datagram, oversize, offload, on_datagram);
        }
        Ok(())
    }

    fn send(&mut self, to: SocketAddr, bytes: &Bytes) {
        self.queue.push(to, bytes);
        if self.queue.len() >= MAX_QUEUED {
            let _ = self.flush_sends();
        }
    }

    fn flush_sends(&mut self) -> io::Result<()> {
        if self.queue.is_empty() {
            return Ok(());
        }
        self.queue.plan(if self.offload.gso { udp::MAX_SEGMENTS } else { 1 });
        let mut next = 0;
        while next < self.queue.batches().len() {
            match udp::send_batches(&self.sockets[0], &self.queue, next, udp::MMSG_BATCH, &mut self.scratch) {
                Sent::Batches(k) => {
                    for b in &self.queue.batches()[next..next + k] {
                        self.sent += b.len() as u64;
                        if b.segment().is_some() {
                            self.offload.gso_sends += 1;
                            self.offload.gso_segments += b.len() as u64;
                        }
                    }
                    next += k;
                }
                Sent::Failed(e) => {
                    let b = self.queue.batches()[next];
                    if b.segment().is_some() && e.raw_os_error().is_some_and(udp::refuses_gso) {
                        // This path cannot segment: plain sends from now on,
                        // this batch and the rest included.
                        warn!(error = %e, "UDP GSO send refused; sending without segmentation offload");
                        self.offload.gso = false;
                        self.queue.unsegment_from(next);
                    } else {
                        self.send_errors += b.len() as u64;
                        next += 1;
                    }
                }
            }
        }
        self.queue.clear();
        Ok(())
    }

    fn counters(&self) -> (u64, u64) {
        (self.sent, self.send_errors)
    }

    fn oversize(&self) -> u64 {
        self.oversize
    }

    fn offload(&self) -> OffloadStats {
        self.offload
    }

    fn name(&self) -> &'static str {
        "portable"
    }

    fn set_waker(&mut self, fd: OwnedFd) -> io::Result<()> {
        self.waker = Some(File::from(fd));
        Ok(())
    }
}

/// Test bodies every backend runs (see the `tests` modules here and in
/// `crate::uring`).
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::Instant;

    /// Waits until `n` datagrams arrived (or more, from the last wait),
    /// failing after 10 s.
    fn collect(b: &mut dyn Backend, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(Instant::now() < deadline, "{} of {n} datagrams after 10 s", got.len());
            b.wait(Duration::from_millis(50), &mut |from, bytes| got.push((from, bytes.to_vec()))).unwrap();
        }
        got
    }

    /// Two receive sockets: datagrams to either arrive, in order per socket;
    /// a datagram on the second alone ends a wait; sends leave from the
    /// first; an idle wait lasts about its timeout.
    pub(crate) fn two_sockets(open: &dyn Fn(Vec<UdpSocket>) -> Box<dyn Backend>) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut u = open(vec![a, b]);
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c_addr = c.local_addr().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        // Sends stay on sockets[0].
        u.send(c_addr, &Bytes::from_static(b"hello"));
        u.flush_sends().unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!((from, &buf[..n]), (a_addr, &b"hello"[..]));
        assert_eq!(u.counters(), (1, 0));

        // Interleaved to both sockets, in rounds (default receive buffers):
        // even numbers go to `a`, odd ones to `b`.
        let mut got: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        for round in 0..10u32 {
            for i in round * 100..round * 100 + 100 {
                c.send_to(&i.to_be_bytes(), if i % 2 == 0 { a_addr } else { b_addr }).unwrap();
            }
            for (from, bytes) in collect(&mut *u, 100) {
                assert_eq!(from, c_addr);
                let v = u32::from_be_bytes(bytes[..].try_into().expect("4 bytes"));
                got[(v % 2) as usize].push(v);
            }
        }
        assert_eq!(got[0], (0..1000).step_by(2).collect::<Vec<u32>>());
        assert_eq!(got[1], (1..1000).step_by(2).collect::<Vec<u32>>());

        // A datagram on the second socket alone ends a long wait early.
        c.send_to(b"to b", b_addr).unwrap();
        let t = Instant::now();
        let mut seen = Vec::new();
        while seen.is_empty() && t.elapsed() < Duration::from_secs(5) {
            u.wait(Duration::from_secs(5), &mut |from, bytes| seen.push((from, bytes.to_vec()))).unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(2), "the wait missed the second socket");
        assert_eq!(seen, vec![(c_addr, b"to b".to_vec())]);

        // An idle wait lasts about its timeout; a zero one returns at once.
        let t = Instant::now();
        u.wait(Duration::from_millis(30), &mut |_, _| panic!("nothing was sent")).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(25) && t.elapsed() < Duration::from_secs(2));
        let t = Instant::now();
        u.wait(Duration::ZERO, &mut |_, _| panic!("nothing was sent")).unwrap();
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    /// A UDP socket with the multicast options of a sender on loopback.
    fn multicast_sender() -> io::Result<Socket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
        s.set_multicast_ttl_v4(0)?;
        s.set_multicast_loop_v4(true)?;
        Ok(s)
    }

    /// IP multicast over loopback, as the daemon's multicast transport uses
    /// it: `sockets[0]` is unicast and sends to the group, `sockets[1]` is
    /// bound to the group and joined. Skipped where the join fails.
    pub(crate) fn multicast(open: &dyn Fn(Vec<UdpSocket>) -> Box<dyn Backend>) {
        let id = std::process::id();
        let group = Ipv4Addr::new(239, 255, (id >> 8) as u8, id as u8);
        let setup = || -> io::Result<(UdpSocket, UdpSocket, UdpSocket)> {
            let m = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            m.set_reuse_address(true)?;
            m.bind(&SocketAddr::from(SocketAddrV4::new(group, 0)).into())?;
            m.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)?;
            Ok((multicast_sender()?.into(), m.into(), multicast_sender()?.into()))
        };
        let (a, m, c) = match setup() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipping the multicast test: cannot join {group} on loopback: {e}");
                return;
            }
        };
        let to = m.local_addr().unwrap();
        let (a_addr, c_addr) = (a.local_addr().unwrap(), c.local_addr().unwrap());
        let mut u = open(vec![a, m]);

        // Our own send to the group loops back; another sender's arrives.
        u.send(to, &Bytes::from_static(b"from a"));
        u.flush_sends().unwrap();
        c.send_to(b"from c", to).unwrap();
        let mut got = collect(&mut *u, 2);
        got.sort();
        let mut want = vec![(a_addr, b"from a".to_vec()), (c_addr, b"from c".to_vec())];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(u.counters(), (1, 0));

        // A run of equal-size datagrams to the group (one GSO send where
        // it is on) comes back whole and in order.
        let run: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; if i == 3 { 50 } else { 100 }])).collect();
        for d in &run {
            u.send(to, d);
        }
        u.flush_sends().unwrap();
        let got = collect(&mut *u, run.len());
        assert_eq!(got, run.iter().map(|d| (a_addr, d.to_vec())).collect::<Vec<_>>());
        assert_eq!(u.counters(), (5, 0));
    }

    /// A datagram larger than the backend's maximum (1500 here) is dropped
    /// unread and counted; the next one arrives.
    pub(crate) fn oversize(open: &dyn Fn(Vec<UdpSocket>) -> Box<dyn Backend>) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = a.local_addr().unwrap();
        let mut u = open(vec![a]);
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(&[7u8; 4000], to).unwrap();
        c.send_to(b"small", to).unwrap();
        let got = collect(&mut *u, 1);
        assert_eq!(got, [(c.local_addr().unwrap(), b"small".to_vec())]);
        assert_eq!(u.oversize(), 1);
    }

    /// The ring thread's waker: a wake while parked ends a long wait early
    /// (and is read, so the next wait lasts its timeout again); a wake while
    /// not parked writes nothing; datagrams still arrive.
    pub(crate) fn waker(open: &dyn Fn(Vec<UdpSocket>) -> Box<dyn Backend>) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = a.local_addr().unwrap();
        let mut u = open(vec![a]);
        let w = crate::session::Waker::new().unwrap();
        u.set_waker(w.fd().unwrap()).unwrap();
        for _ in 0..3 {
            w.park();
            let w2 = w.clone();
            let t = Instant::now();
            let h = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                w2.wake();
            });
            u.wait(Duration::from_secs(5), &mut |_, _| panic!("nothing was sent")).unwrap();
            w.unpark();
            h.join().unwrap();
            assert!(t.elapsed() < Duration::from_secs(2), "the wake did not end the wait");
        }
        assert_eq!(w.writes(), 3);
        // Read: an idle wait lasts its timeout.
        let t = Instant::now();
        u.wait(Duration::from_millis(30), &mut |_, _| panic!("nothing was sent")).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(25), "the eventfd was not reset");
        w.wake(); // not parked: no write
        assert_eq!(w.writes(), 3);
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"after", to).unwrap();
        assert_eq!(collect(&mut *u, 1), [(c.local_addr().unwrap(), b"after".to_vec())]);
    }

    /// The portable backend with GSO and GRO on, then off.
    fn portable(body: impl Fn(&dyn Fn(Vec<UdpSocket>) -> Box<dyn Backend>)) {
        for offload in [Offload::ON, Offload::OFF] {
            body(&|s| Box::new(Portable::new(s, 1500, offload).unwrap()));
        }
    }

    #[test]
    fn portable_waker_ends_a_wait() {
        portable(|open| waker(open));
    }

    #[test]
    fn portable_counts_oversize_datagrams() {
        portable(|open| oversize(open));
    }

    #[test]
    fn portable_receives_on_two_sockets() {
        portable(|open| two_sockets(open));
    }

    #[test]
    fn portable_multicast_on_loopback() {
        portable(|open| multicast(open));
    }

    #[test]
    fn open_rejects_no_sockets_and_too_many() {
        for choice in [BackendChoice::Portable, BackendChoice::IoUring, BackendChoice::Auto] {
            let e = open(choice, Vec::new(), 1500, Offload::ON).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            let many = (0..=MAX_SOCKETS).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
            assert_eq!(
                open(choice, many, 1500, Offload::ON).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }

    #[test]
    fn auto_opens_on_two_sockets() {
        two_sockets(&|s| open(BackendChoice::Auto, s, 1500, Offload::ON).unwrap());
    }
}
