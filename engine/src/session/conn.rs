//! One client connection as its session thread holds it: the nonblocking
//! stream, the decoder of what the client sends, and the bounded queue of
//! encoded frames waiting to be written to it.

use super::{CLIENT_QUEUE, CLIENT_QUEUE_BYTES, Principal, SessionSlot, WRITE_TIMEOUT};
use bytes::Bytes;
use mio::event::Source;
use mio::{Interest, Registry, Token};
use ringfence_proto::wire::client::{ClientFrame, FrameDecoder, Limits};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::time::Instant;

/// Most frames handed to one `writev` (Linux's `IOV_MAX` is 1024).
const WRITEV_FRAMES: usize = 256;
/// An empty queue with room for more frames than this gives its memory back.
const SHRINK_ABOVE: usize = 4096;

/// A client's stream: a Unix socket (local) or TCP (remote).
#[derive(Debug)]
pub(super) enum Stream {
    /// A local client.
    Unix(mio::net::UnixStream),
    /// A remote client.
    Tcp(mio::net::TcpStream),
}

impl Stream {
    /// Whether the client is local (Unix socket).
    pub(super) fn is_unix(&self) -> bool {
        matches!(self, Self::Unix(_))
    }

    /// Who is at the other end: the peer's credentials from the kernel
    /// (`SO_PEERCRED`) for a Unix socket, the remote address for TCP.
    pub(super) fn principal(&self) -> io::Result<Principal> {
        match self {
            Self::Unix(s) => {
                let c = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
                    .map_err(io::Error::from)?;
                Ok(Principal::Local { uid: c.uid(), gid: c.gid(), pid: c.pid() })
            }
            Self::Tcp(s) => s.peer_addr().map(Principal::Remote),
        }
    }

    /// Shuts down one or both directions (errors ignored: the peer may be gone).
    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Self::Unix(s) => s.shutdown(how),
            Self::Tcp(s) => s.shutdown(how),
        };
    }

    /// One nonblocking read.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }

    /// One nonblocking `writev`.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write_vectored(bufs),
            Self::Tcp(s) => s.write_vectored(bufs),
        }
    }
}

/// Registers whichever stream it is.
impl Source for Stream {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.register(registry, token, interests),
            Self::Tcp(s) => s.register(registry, token, interests),
        }
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.reregister(registry, token, interests),
            Self::Tcp(s) => s.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.deregister(registry),
            Self::Tcp(s) => s.deregister(registry),
        }
    }
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Connected; the client has not said Hello yet.
    Hello,
    /// The ring thread knows the client (`ToRing::Connect` sent).
    Open,
    /// Ending: nothing more is read or queued; what is queued is written,
    /// then the connection is closed.
    Closing,
}

/// What one read brought.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Got {
    /// Bytes were pushed into the decoder; the socket may have more.
    More,
    /// Bytes (maybe none) were pushed; the socket is drained for now.
    Drained,
    /// The client closed its end.
    Eof,
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Overflow;

/// One client connection (see the module doc).
#[derive(Debug)]
pub(super) struct Conn {
    /// The client's id (see `event_loop` for its layout).
    pub(super) id: u64,
    stream: Stream,
    /// Counts this connection against `MAX_SESSIONS` while it lives.
    _slot: SessionSlot,
    pub(super) phase: Phase,
    /// What the client sent, cut into frames.
    pub(super) decoder: FrameDecoder<ClientFrame>,
    /// When the client must have said Hello.
    pub(super) hello_by: Instant,
    /// Encoded frames waiting to be written, oldest first.
    out: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    written: usize,
    /// Bytes in `out` not yet written.
    queued: usize,
    /// While frames wait: when the connection last accepted bytes, or when
    /// the first of them was queued.
    progress_at: Option<Instant>,
    /// The socket may have bytes to read (readiness is edge-triggered).
    pub(super) readable: bool,
    /// In the session thread's list of connections to read.
    pub(super) in_ready: bool,
    /// In the session thread's list of connections to write.
    pub(super) in_dirty: bool,
}

impl Conn {
    /// A new connection, which must say Hello by `hello_by`.
    pub(super) fn new(id: u64, stream: Stream, slot: SessionSlot, limits: Limits, hello_by: Instant) -> Self {
        Self {
            id,
            stream,
            _slot: slot,
            phase: Phase::Hello,
            decoder: FrameDecoder::new(limits),
            hello_by,
            out: VecDeque::new(),
            written: 0,
            queued: 0,
            progress_at: None,
            readable: true,
            in_ready: false,
            in_dirty: false,
        }
    }

    /// The stream, to register with the poller or ask for credentials.
    pub(super) fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Bytes queued and not yet written.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Reads once into `buf` and pushes what came into the decoder.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<Got> {
        loop {
            return match self.stream.read(buf) {
                Ok(0) => Ok(Got::Eof),
                Ok(n) => {
                    self.decoder.push(&buf[..n]);
                    // A short read drained the socket: a new arrival is a
                    // new readiness edge.
                    Ok(if n < buf.len() { Got::Drained } else { Got::More })
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Got::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Queues an encoded frame; [`Overflow`] if the client already has
    /// [`CLIENT_QUEUE_BYTES`] or [`CLIENT_QUEUE`] frames waiting (a slow
    /// consumer).
    pub(super) fn enqueue(&mut self, frame: Bytes, now: Instant) -> Result<(), Overflow> {
        if self.queued + frame.len() > CLIENT_QUEUE_BYTES || self.out.len() >= CLIENT_QUEUE {
            return Err(Overflow);
        }
        if self.out.is_empty() {
            self.progress_at = Some(now);
        }
        self.queued += frame.len();
        self.out.push_back(frame);
        Ok(())
    }

    /// Drops every frame not yet begun (the front one may be half written:
    /// it is finished, so the stream stays framed), then queues `last`.
    pub(super) fn replace_queue(&mut self, last: Bytes, now: Instant) {
        let keep = usize::from(self.written > 0);
        for f in self.out.drain(keep..) {
            self.queued -= f.len();
        }
        // Within the budget: at most one frame is left.
        self.queued += last.len();
        if self.out.is_empty() {
            self.progress_at = Some(now);
        }
        self.out.push_back(last);
    }

    /// Writes what is queued, many frames per `writev`, until the socket
    /// would block or the queue is empty. An error means the connection is
    /// gone.
    pub(super) fn flush(&mut self, now: Instant) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); WRITEV_FRAMES];
            let mut n = 0;
            for (i, f) in self.out.iter().take(WRITEV_FRAMES).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &f[self.written..] } else { f });
                n += 1;
            }
            match self.stream.write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut done) => {
                    self.queued -= done;
                    self.progress_at = Some(now);
                    while done > 0 {
                        let left = self.out[0].len() - self.written;
                        if done < left {
                            self.written += done;
                            break;
                        }
                        done -= left;
                        self.written = 0;
                        self.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.progress_at = None;
        // A client that once fell far behind does not keep its peak queue.
        if self.out.capacity() > SHRINK_ABOVE {
            self.out = VecDeque::new();
        }
        Ok(())
    }

    /// Frames wait and the client has accepted no byte for
    /// [`WRITE_TIMEOUT`].
    pub(super) fn stalled(&self, now: Instant) -> bool {
        self.progress_at.is_some_and(|t| now.saturating_duration_since(t) >= WRITE_TIMEOUT)
    }

    /// Ends the connection: no more writes; the socket closes when the
    /// connection is dropped.
    pub(super) fn shut(&self) {
        self.stream.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn pair() -> (Conn, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let slot = SessionSlot::take(&Arc::new(AtomicUsize::new(0))).unwrap();
        let now = Instant::now();
        let conn =
            Conn::new(1, Stream::Unix(mio::net::UnixStream::from_std(a)), slot, Limits::default(), now);
        (conn, b)
    }

    #[test]
    fn frames_are_written_in_order_with_few_writes() {
        let (mut c, mut peer) = pair();
        let now = Instant::now();
        let frames: Vec<Bytes> = (0..1000u32).map(|i| Bytes::from(i.to_be_bytes().to_vec())).collect();
        for f in &frames {
            c.enqueue(f.clone(), now).unwrap();
        }
        assert_eq!(c.queued(), 4000);
        c.flush(now).unwrap();
        assert_eq!(c.queued(), 0);
        assert!(!c.stalled(now + WRITE_TIMEOUT));
        let mut got = vec![0u8; 4000];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, frames.concat());
    }

    #[test]
    fn a_client_that_stops_reading_overflows_and_stalls() {
        let (mut c, mut peer) = pair();
        let t0 = Instant::now();
        let frame = Bytes::from(vec![9u8; 64 * 1024]);
        let mut overflowed = false;
        for _ in 0..(CLIENT_QUEUE_BYTES / frame.len() + 64) {
            c.flush(t0).unwrap();
            if c.enqueue(frame.clone(), t0) == Err(Overflow) {
                overflowed = true;
                break;
            }
        }
        assert!(overflowed);
        assert!(c.queued() <= CLIENT_QUEUE_BYTES);
        assert!(!c.stalled(t0 + Duration::from_secs(1)));
        assert!(c.stalled(t0 + WRITE_TIMEOUT));
        // The queue is replaced by one last frame; the half-written frame
        // at its front is finished first, so the stream stays framed.
        c.replace_queue(Bytes::from_static(b"bye"), t0);
        assert!(c.queued() <= frame.len() + 3);
        peer.set_nonblocking(true).unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let mut tail = Vec::new();
        for _ in 0..10_000 {
            c.flush(t0).unwrap();
            let done = c.queued() == 0;
            loop {
                match peer.read(&mut buf) {
                    Ok(n) => {
                        total += n;
                        tail.extend_from_slice(&buf[..n]);
                        tail.drain(..tail.len().saturating_sub(8));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            if done {
                break;
            }
        }
        assert_eq!(c.queued(), 0);
        assert_eq!(total % frame.len(), 3, "whole frames, then the last one");
        assert!(tail.ends_with(b"bye"));
    }
}
