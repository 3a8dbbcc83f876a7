//! One client connection as its session thread holds it: the nonblocking
//! stream, the decoder of what the client sends, and the bounded queue of
//! encoded frames waiting to be written to it.

use super::auth::{Link, cert_name};
use super::{CLIENT_QUEUE, CLIENT_QUEUE_BYTES, HELLO_FRAME_MAX, Principal, SessionSlot, WRITE_TIMEOUT};
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
/// A connection that holds no input may always read this much, whatever
/// the global input budget says, so small requests are never starved.
const MIN_READ: usize = 4 << 10;
/// An emptied input buffer that grew past this is dropped, not kept at its
/// peak size for the connection's life.
const SHRINK_INPUT: usize = 64 << 10;

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
    /// Its place among the connections and its share of the input budget.
    slot: SessionSlot,
    pub(super) phase: Phase,
    /// What the client sent, cut into frames.
    pub(super) decoder: FrameDecoder<ClientFrame>,
    /// Where the frames of the input begin and end, as it passes.
    scan: Scan,
    /// The stream offset the end of the unfinished frame is reserved up to
    /// in the global input budget (reserved while it equals `scan.end`).
    reserved_end: u64,
    /// Most input the decoder held since it was last emptied.
    peak: usize,
    /// When the frame the decoder holds part of began.
    partial_since: Option<Instant>,
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
            slot,
            phase: Phase::Hello,
            decoder: FrameDecoder::new(limits),
            scan: Scan::default(),
            reserved_end: 0,
            peak: 0,
            partial_since: None,
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

    /// How many input bytes the connection may read now (0: wait until
    /// other connections release input):
    /// - before Hello, what is left of one Hello (`HELLO_FRAME_MAX`);
    /// - inside a frame whose length is known, the rest of it only once it
    ///   is reserved in the global budget (see [`Conn::settle`]), else 0;
    /// - between frames, what the global budget has room for but at least
    ///   `MIN_READ`, so small requests always pass;
    ///
    /// and never more than `connection_buffer` held.
    pub(super) fn room(&self) -> usize {
        let held = self.decoder.buffered();
        let counts = self.slot.counts();
        if self.phase == Phase::Hello {
            return (HELLO_FRAME_MAX + 4).saturating_sub(held);
        }
        let own = counts.caps().connection_buffer.saturating_sub(held);
        let extra = counts.budget_room().max(MIN_READ);
        let missing = self.scan.missing();
        if missing == 0 {
            own.min(extra)
        } else if self.reserved_end == self.scan.end {
            own.min(usize::try_from(missing).unwrap_or(usize::MAX).saturating_add(extra))
        } else {
            0
        }
    }

    /// The length the client's first frame announced, once its four bytes
    /// came.
    pub(super) fn first_len(&self) -> Option<usize> {
        self.scan.first.map(|l| l as usize)
    }

    /// Moves the connection to the authenticated clients; false when
    /// `max_clients` are connected.
    pub(super) fn promote(&mut self) -> bool {
        self.slot.promote()
    }

    /// Accounts for the input after frames were taken (`took`): the input
    /// held and, once the unfinished frame's length is known, the rest of
    /// it are counted against the global budget if it has room (the frame
    /// is then reserved and can always be finished), else only what is
    /// held (and [`Conn::room`] reads no more until it has room). Also
    /// notes when the unfinished frame began, and drops an emptied buffer
    /// that had grown large.
    pub(super) fn settle(&mut self, took: bool, now: Instant) {
        let held = self.decoder.buffered();
        self.peak = self.peak.max(held);
        if held == 0 {
            self.partial_since = None;
            if self.peak > SHRINK_INPUT && self.decoder.finish().is_ok() {
                self.decoder = FrameDecoder::new(*self.decoder.limits());
                self.peak = 0;
            }
        } else if took || self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
        let missing = usize::try_from(self.scan.missing()).unwrap_or(usize::MAX);
        let whole = held.saturating_add(missing);
        if missing > 0 && self.phase == Phase::Open && whole <= self.slot.counts().caps().connection_buffer {
            if self.reserved_end == self.scan.end {
                self.slot.charge(whole);
                return;
            }
            if self.slot.try_charge(whole) {
                self.reserved_end = self.scan.end;
                return;
            }
        }
        self.slot.charge(held);
    }

    /// Drops what the client sent and not yet decoded, and its share of the
    /// input budget: the session is ending and reads nothing more.
    pub(super) fn drop_input(&mut self) {
        self.decoder = FrameDecoder::new(*self.decoder.limits());
        self.peak = 0;
        self.partial_since = None;
        self.slot.charge(0);
    }

    /// A frame has been unfinished for `limit` (see [`Conn::settle`]).
    pub(super) fn frame_stuck(&self, now: Instant, limit: std::time::Duration) -> bool {
        self.partial_since.is_some_and(|t| now.saturating_duration_since(t) >= limit)
    }

    /// Reads once, at most `room` bytes (see [`Conn::room`]) into `buf`, and
    /// pushes what came into the decoder.
    pub(super) fn read(&mut self, buf: &mut [u8], room: usize) -> io::Result<Got> {
        if let Stream::Sniff(_) = self.stream {
            if let Some(got) = self.sniff()? {
                return Ok(got);
            }
        }
        let len = room.min(buf.len());
        let buf = &mut buf[..len];
        let mut input = Input { decoder: &mut self.decoder, scan: &mut self.scan };
        if let Stream::Tls(t) = &mut self.stream {
            return read_tls(t, &mut input, buf);
        }
        loop {
            return match self.stream.read(buf) {
                Ok(0) => Ok(Got::Eof),
                Ok(n) => {
                    input.push(&buf[..n]);
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

    /// Writes `frame` to a connection that was never adopted (over a cap)
    /// and closes it: best effort, one nonblocking write on a fresh socket
    /// (whose send buffer is empty). A TLS client sees the plain frame as a
    /// failed handshake.
    pub(super) fn refuse_unadopted(mut stream: Stream, frame: &[u8]) {
        let written = match &mut stream {
            Stream::Unix(s) => s.write(frame),
            Stream::Tcp(s) => s.write(frame),
            Stream::Sniff(s) => s.tcp.as_mut().map_or(Ok(0), |t| t.write(frame)),
            Stream::Tls(_) => Ok(0),
        };
        if written.is_ok() {
            // What the client already sent (its Hello) is read, so closing
            // sends FIN rather than a reset that could overtake the frame.
            let mut sink = [0u8; 512];
            for _ in 0..16 {
                let n = match &mut stream {
                    Stream::Unix(s) => s.read(&mut sink),
                    Stream::Tcp(s) => s.read(&mut sink),
                    Stream::Sniff(s) => s.tcp.as_mut().map_or(Ok(0), |t| t.read(&mut sink)),
                    Stream::Tls(_) => Ok(0),
                };
                if !matches!(n, Ok(n) if n > 0) {
                    break;
                }
            }
        }
        stream.shutdown(Shutdown::Both);
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

/// Where the client's frames begin and end: the length prefixes read as
/// the bytes pass to the decoder (which checks them), so the input budget
/// knows how much of the unfinished frame is still to come.
#[derive(Debug, Default)]
struct Scan {
    /// Bytes pushed so far.
    pos: u64,
    /// Where the frame being received ends; `pos` between frames.
    end: u64,
    /// The next length prefix, as far as it came.
    prefix: [u8; 4],
    seen: usize,
    /// The first frame's length.
    first: Option<u32>,
}

impl Scan {
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.pos < self.end {
                let n = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX).min(bytes.len());
                self.pos += n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (4 - self.seen).min(bytes.len());
            self.prefix[self.seen..self.seen + n].copy_from_slice(&bytes[..n]);
            self.seen += n;
            self.pos += n as u64;
            bytes = &bytes[n..];
            if self.seen == 4 {
                let len = u32::from_be_bytes(self.prefix);
                self.first.get_or_insert(len);
                self.end = self.pos + u64::from(len);
                self.seen = 0;
            }
        }
    }

    /// Bytes of the frame being received still to come (0 between frames
    /// or while its prefix is incomplete).
    fn missing(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }
}

/// The decoder, and the scan of the frames passing into it.
struct Input<'a> {
    decoder: &'a mut FrameDecoder<ClientFrame>,
    scan: &'a mut Scan,
}

impl Input<'_> {
    fn push(&mut self, bytes: &[u8]) {
        self.scan.push(bytes);
        self.decoder.push(bytes);
    }
}

/// Reads TLS records (at most about `buf.len()` bytes of them), decrypts
/// them and pushes the plaintext into the decoder, at most `buf.len()`
/// bytes of it; the rest waits in rustls (which bounds it) for the next read.
fn read_tls(t: &mut TlsStream, input: &mut Input<'_>, buf: &mut [u8]) -> io::Result<Got> {
    let mut total = 0;
    let mut pushed = 0;
    // Plaintext left from the last read first.
    if drain_plaintext(t, input, buf, &mut pushed)? {
        return Ok(Got::Eof);
    }
    if pushed >= buf.len() {
        return Ok(Got::More);
    }
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
        if drain_plaintext(t, input, buf, &mut pushed)? {
            break Got::Eof;
        }
        if total >= buf.len() || pushed >= buf.len() {
            break Got::More;
        }
    };
    if got == Got::Eof {
        // What came with the end (a last record) still counts.
        if let Err(e) = t.tls.process_new_packets() {
            return Ok(Got::TlsFailed(e.to_string()));
        }
        drain_plaintext(t, input, buf, &mut pushed)?;
        got = Got::Eof;
    }
    Ok(got)
}

/// Moves decrypted bytes into the decoder until `pushed` reaches
/// `buf.len()`; true if the peer closed the TLS session (`close_notify`,
/// or the socket's end).
fn drain_plaintext(
    t: &mut TlsStream,
    input: &mut Input<'_>,
    buf: &mut [u8],
    pushed: &mut usize,
) -> io::Result<bool> {
    while *pushed < buf.len() {
        let room = buf.len() - *pushed;
        match t.tls.reader().read(&mut buf[..room]) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                input.push(&buf[..n]);
                *pushed += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn pair() -> (Conn, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let counts = Arc::new(super::super::Counts::new(crate::config::ClientCaps::default()));
        let slot = SessionSlot::take(&counts, super::super::Pool::PendingUnix).unwrap();
        let now = Instant::now();
        let conn =
            Conn::new(1, Stream::Unix(mio::net::UnixStream::from_std(a)), slot, Limits::default(), now);
        (conn, b)
    }

    #[test]
    fn the_scan_finds_frame_ends_however_the_stream_is_cut() {
        let mut stream = Vec::new();
        for len in [1u32, 300, 70_000, 5] {
            stream.extend_from_slice(&len.to_be_bytes());
            stream.resize(stream.len() + len as usize, 0xab);
        }
        // Half of the next prefix, then nothing.
        stream.extend_from_slice(&[0, 0]);
        for cut in [1usize, 3, 7, 4096, stream.len()] {
            let mut scan = Scan::default();
            let mut missing_at_70k = None;
            for (i, chunk) in stream.chunks(cut).enumerate() {
                scan.push(chunk);
                let pushed = (i * cut + chunk.len()) as u64;
                assert_eq!(scan.pos, pushed);
                // Inside the third frame (its body starts at 4+1+4+300+4).
                if (313..313 + 70_000).contains(&pushed) {
                    missing_at_70k = Some(scan.missing() + pushed);
                }
            }
            assert_eq!(scan.first, Some(1));
            assert_eq!(scan.missing(), 0, "between frames (an incomplete prefix)");
            assert_eq!(scan.seen, 2);
            if let Some(end) = missing_at_70k {
                assert_eq!(end, 313 + 70_000, "cut {cut}");
            }
        }
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
