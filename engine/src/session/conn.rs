//! One client connection as its session thread holds it: the nonblocking
//! stream, the decoder of what the client sends, and the bounded queue of
//! encoded frames waiting to be written to it.

use super::auth::{Link, cert_name};
use super::{CLIENT_QUEUE, CLIENT_QUEUE_BYTES, Principal, SessionSlot, WRITE_TIMEOUT};
use bytes::Bytes;
use mio::event::Source;
use mio::{Interest, Registry, Token};
use ringfence_proto::wire::client::{ClientFrame, FrameDecoder, Limits};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Instant;

/// Most frames handed to one `writev` (Linux's `IOV_MAX` is 1024).
const WRITEV_FRAMES: usize = 256;
/// An empty queue with room for more frames than this gives its memory back.
const SHRINK_ABOVE: usize = 4096;

/// A client's stream: a Unix socket (local), plain TCP, or TLS over TCP
/// (remote). A TCP connection to a daemon that speaks both starts as
/// [`Stream::Sniff`] until its first byte says which.
#[derive(Debug)]
pub(super) enum Stream {
    /// A local client.
    Unix(mio::net::UnixStream),
    /// A remote client over plain TCP.
    Tcp(mio::net::TcpStream),
    /// A remote client over TLS.
    Tls(Box<TlsStream>),
    /// A TCP connection whose first byte is not yet read: a TLS record
    /// (0x16, a handshake) makes it [`Stream::Tls`], anything else
    /// [`Stream::Tcp`]. Never seen outside [`Conn::read`].
    Sniff(Box<Sniff>),
}

/// A TLS server connection over a nonblocking TCP stream.
#[derive(Debug)]
pub(super) struct TlsStream {
    tcp: mio::net::TcpStream,
    tls: rustls::ServerConnection,
}

/// A TCP stream that may become TLS.
#[derive(Debug)]
pub(super) struct Sniff {
    /// Always `Some` outside [`Conn::read`] (taken to change the variant).
    tcp: Option<mio::net::TcpStream>,
    config: Arc<rustls::ServerConfig>,
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

impl Stream {
    /// A TLS server stream over `tcp`.
    pub(super) fn tls(tcp: mio::net::TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Self::Tls(Box::new(TlsStream { tcp, tls })))
    }

    /// A TCP stream that becomes TLS if the client starts a handshake.
    pub(super) fn sniff(tcp: mio::net::TcpStream, config: Arc<rustls::ServerConfig>) -> Self {
        Self::Sniff(Box::new(Sniff { tcp: Some(tcp), config }))
    }

    fn tcp(&self) -> Option<&mio::net::TcpStream> {
        match self {
            Self::Unix(_) => None,
            Self::Tcp(s) => Some(s),
            Self::Tls(t) => Some(&t.tcp),
            Self::Sniff(s) => s.tcp.as_ref(),
        }
    }

    /// What the transport says about the client: the kernel's peer
    /// credentials (`SO_PEERCRED`) for a Unix socket, the remote address
    /// for TCP, and for TLS the name of the verified client certificate.
    pub(super) fn link(&self) -> io::Result<Link> {
        match self {
            Self::Unix(s) => {
                let c = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
                    .map_err(io::Error::from)?;
                Ok(Link::Unix(Principal::Local { uid: c.uid(), gid: c.gid(), pid: c.pid() }))
            }
            Self::Tls(t) => {
                let addr = t.tcp.peer_addr()?;
                let cert = t.tls.peer_certificates().and_then(|c| c.first()).and_then(cert_name);
                Ok(Link::Tls { addr, cert })
            }
            Self::Tcp(_) | Self::Sniff(_) => {
                let tcp = self.tcp().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
                tcp.peer_addr().map(Link::Plain)
            }
        }
    }

    /// The peer's address, for logs.
    pub(super) fn peer(&self) -> String {
        match self.tcp() {
            Some(t) => t.peer_addr().map_or_else(|_| "tcp ?".into(), |a| a.to_string()),
            None => "unix socket".into(),
        }
    }

    /// TLS has bytes to send (handshake, alerts, encrypted frames).
    pub(super) fn wants_write(&self) -> bool {
        matches!(self, Self::Tls(t) if t.tls.wants_write())
    }

    /// Shuts down one or both directions (errors ignored: the peer may be
    /// gone). A TLS stream says `close_notify` first, best effort.
    fn shutdown(&mut self, how: Shutdown) {
        let _ = match self {
            Self::Unix(s) => s.shutdown(how),
            Self::Tls(t) => {
                t.tls.send_close_notify();
                let _ = t.tls.write_tls(&mut t.tcp);
                t.tcp.shutdown(how)
            }
            Self::Tcp(_) | Self::Sniff(_) => self.tcp().map_or(Ok(()), |t| t.shutdown(how)),
        };
    }

    /// One nonblocking read of a plain stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
            Self::Tls(_) | Self::Sniff(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// One nonblocking `writev` on a plain stream.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write_vectored(bufs),
            Self::Tcp(s) => s.write_vectored(bufs),
            // Nothing is written before the first byte is read.
            Self::Sniff(_) => Err(io::ErrorKind::WouldBlock.into()),
            Self::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn source(&mut self) -> io::Result<&mut dyn Source> {
        Ok(match self {
            Self::Unix(s) => s,
            Self::Tcp(s) => s,
            Self::Tls(t) => &mut t.tcp,
            Self::Sniff(s) => s.tcp.as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?,
        })
    }
}

/// Registers whichever stream it is.
impl Source for Stream {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        self.source()?.register(registry, token, interests)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        self.source()?.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.source()?.deregister(registry)
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
    /// The TLS layer failed (bad handshake, bad record): its alert is
    /// queued; write it, then close.
    TlsFailed(String),
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
        if let Stream::Sniff(_) = self.stream {
            if let Some(got) = self.sniff()? {
                return Ok(got);
            }
        }
        if let Stream::Tls(t) = &mut self.stream {
            return read_tls(t, &mut self.decoder, buf);
        }
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

    /// Peeks at a sniffed stream's first byte and makes it TLS or plain
    /// TCP. `Some` when there is nothing to read yet.
    fn sniff(&mut self) -> io::Result<Option<Got>> {
        let Stream::Sniff(s) = &mut self.stream else { return Ok(None) };
        let Some(tcp) = &s.tcp else { return Err(io::ErrorKind::NotConnected.into()) };
        let mut first = [0u8; 1];
        let tls = loop {
            match tcp.peek(&mut first) {
                Ok(0) => return Ok(Some(Got::Eof)),
                Ok(_) => break first[0] == TLS_HANDSHAKE,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(Got::Drained)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let tcp = s.tcp.take().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        // The same socket (and its poller registration) in another variant.
        self.stream = if tls { Stream::tls(tcp, Arc::clone(&s.config))? } else { Stream::Tcp(tcp) };
        Ok(None)
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
        if let Stream::Tls(_) = self.stream {
            return self.flush_tls(now);
        }
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
        self.written_all();
        Ok(())
    }

    /// Everything queued is written.
    fn written_all(&mut self) {
        self.progress_at = None;
        // A client that once fell far behind does not keep its peak queue.
        if self.out.capacity() > SHRINK_ABOVE {
            self.out = VecDeque::new();
        }
    }

    /// Writes what is queued through TLS: frames are copied into rustls
    /// (as far as its buffer takes them), encrypted, and written until the
    /// socket would block.
    fn flush_tls(&mut self, now: Instant) -> io::Result<()> {
        let Stream::Tls(t) = &mut self.stream else { return Ok(()) };
        loop {
            while let Some(f) = self.out.front() {
                let n = t.tls.writer().write(&f[self.written..])?;
                if n == 0 {
                    break;
                }
                self.queued -= n;
                self.written += n;
                if self.written == f.len() {
                    self.written = 0;
                    self.out.pop_front();
                }
            }
            if !t.tls.wants_write() {
                break;
            }
            match t.tls.write_tls(&mut t.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => self.progress_at = Some(now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.written_all();
        Ok(())
    }

    /// Nothing is left to write: no frame queued, no TLS bytes pending.
    pub(super) fn drained(&self) -> bool {
        self.queued == 0 && !self.stream.wants_write()
    }

    /// The stream has bytes to write that no frame accounts for (a TLS
    /// handshake message or alert).
    pub(super) fn wants_write(&self) -> bool {
        self.stream.wants_write()
    }

    /// Frames wait and the client has accepted no byte for
    /// [`WRITE_TIMEOUT`].
    pub(super) fn stalled(&self, now: Instant) -> bool {
        self.progress_at.is_some_and(|t| now.saturating_duration_since(t) >= WRITE_TIMEOUT)
    }

    /// Ends the connection: no more writes; the socket closes when the
    /// connection is dropped.
    pub(super) fn shut(&mut self) {
        self.stream.shutdown(Shutdown::Both);
    }
}

/// Reads TLS records (at most about `buf.len()` bytes of them), decrypts
/// them and pushes the plaintext into the decoder.
fn read_tls(t: &mut TlsStream, decoder: &mut FrameDecoder<ClientFrame>, buf: &mut [u8]) -> io::Result<Got> {
    let mut total = 0;
    let mut got = loop {
        match t.tls.read_tls(&mut t.tcp) {
            Ok(0) => break Got::Eof,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Got::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        // Decrypting each read keeps rustls's buffer from filling up.
        if let Err(e) = t.tls.process_new_packets() {
            return Ok(Got::TlsFailed(e.to_string()));
        }
        if drain_plaintext(t, decoder, buf)? {
            break Got::Eof;
        }
        if total >= buf.len() {
            break Got::More;
        }
    };
    if got == Got::Eof {
        // What came with the end (a last record) still counts.
        if let Err(e) = t.tls.process_new_packets() {
            return Ok(Got::TlsFailed(e.to_string()));
        }
        drain_plaintext(t, decoder, buf)?;
        got = Got::Eof;
    }
    Ok(got)
}

/// Moves decrypted bytes into the decoder; true if the peer closed the
/// TLS session (`close_notify`, or the socket's end).
fn drain_plaintext(
    t: &mut TlsStream,
    decoder: &mut FrameDecoder<ClientFrame>,
    buf: &mut [u8],
) -> io::Result<bool> {
    loop {
        match t.tls.reader().read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
            Err(e) => return Err(e),
        }
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
