//! UDP segmentation offload (GSO on send, GRO on receive) and batched
//! system calls, shared by the ring thread's two backends
//! (`crate::backend`, `crate::uring`).
//!
//! ```text
//!  Backend::send(to, bytes)   (one datagram, one shared `Bytes`)
//!          │  queued in a `SendQueue`, nothing copied
//!          ▼
//!  flush_sends: SendQueue::plan  ── per destination, runs of equal size
//!          │                         (the last one may be shorter)
//!          ▼
//!  one sendmsg per run: an iovec per datagram (adjacent ones merged),
//!  cmsg SOL_UDP/UDP_SEGMENT = the run's size when it has 2 or more
//!  ... the kernel cuts the run into datagrams (on the NIC, or in software)
//!
//!  receive (UDP_GRO on): one buffer of up to 64 KiB and a cmsg
//!  SOL_UDP/UDP_GRO = segment size ──► segments() ──► one datagram each
//! ```
//!
//! Linux rules a GSO send follows (`udp_send_skb`, `__ip_append_data`):
//! every segment but the last has the segment size, the last may be
//! shorter; at most 64 segments (`UDP_MAX_SEGMENTS` of older kernels); the
//! whole payload fits one IP datagram (under 64 KiB); segment plus headers
//! fit the route's MTU (else `EINVAL`); the device must checksum in
//! software or hardware (else `EIO`). A `msghdr` with several iovecs is
//! gathered into one buffer first, so segment boundaries need not match
//! iovec boundaries. A send that fails with `EIO` or `EINVAL` turns GSO off
//! for good and its datagrams are sent again one by one (as quinn-udp does).
//!
//! Besides the two backends this is the only module of the engine with
//! `unsafe` code (the `sendmmsg` and `recvmmsg` calls); control messages
//! are built and read as plain bytes, in safe code.

#![allow(unsafe_code)]

use bytes::Bytes;
use nix::sys::socket::{setsockopt, sockopt};
use socket2::SockAddr;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use tracing::info;

/// `UDP_SEGMENT` of `linux/udp.h` (the `libc` crate has it only for some
/// targets): the GSO segment size, as a socket option and as a `SOL_UDP`
/// control message (a `u16`).
pub(crate) const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` of `linux/udp.h`: the socket option that lets the kernel
/// coalesce received datagrams, and the `SOL_UDP` control message that
/// gives their segment size (an `int`).
pub(crate) const UDP_GRO: libc::c_int = 104;
/// Segments of one GSO send at most (`UDP_MAX_SEGMENTS` before Linux 6.9).
pub(crate) const MAX_SEGMENTS: usize = 64;
/// Bytes of one GSO send at most: the largest UDP payload over IPv6 with
/// a bare header (65,535 - 40 - 8), which also fits IPv4 (65,507).
pub(crate) const MAX_GSO_BYTES: usize = 65_487;
/// Bytes a receive buffer holds with GRO on: the largest UDP payload, a
/// coalesced one included.
pub(crate) const GRO_BUFFER: usize = 65_535;
/// Datagrams (or GSO runs) in one `sendmmsg`, and receive slots of one
/// `recvmmsg`.
pub(crate) const MMSG_BATCH: usize = 32;

/// Bytes of a `size_t`, the kernel's `cmsg_len`.
const WORD: usize = std::mem::size_of::<usize>();

/// `CMSG_ALIGN`: control messages start at multiples of a `size_t`.
const fn cmsg_align(n: usize) -> usize {
    (n + WORD - 1) & !(WORD - 1)
}

/// `CMSG_LEN(0)`: a control message header as the kernel lays it out
/// (`struct cmsghdr`: a `size_t` length, an `int` level, an `int` type),
/// padded; the data follows it.
pub(crate) const CMSG_HDR: usize = cmsg_align(WORD + 2 * std::mem::size_of::<libc::c_int>());
/// `CMSG_SPACE(sizeof(u16))`: room for one `UDP_SEGMENT` message.
pub(crate) const GSO_CONTROL: usize = cmsg_align(CMSG_HDR + 2);
/// Room for the control messages of one receive (`UDP_GRO` takes
/// `CMSG_SPACE(sizeof(int))`; more in case the kernel adds one).
pub(crate) const RECV_CONTROL: usize = 64;

/// A control message buffer, aligned as `struct cmsghdr` wants.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
pub(crate) struct Control<const N: usize>(pub(crate) [u8; N]);

impl<const N: usize> Default for Control<N> {
    fn default() -> Self {
        Self([0; N])
    }
}

/// Which offloads to use (`[daemon] gso`, `gro`); after `enable`, which
/// the kernel accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Offload {
    /// Send runs of equal-size datagrams as one `sendmsg` (`UDP_SEGMENT`).
    pub(crate) gso: bool,
    /// Let the kernel hand over coalesced datagrams (`UDP_GRO`).
    pub(crate) gro: bool,
}

impl Offload {
    /// Both on (the default).
    #[cfg(test)]
    pub(crate) const ON: Self = Self { gso: true, gro: true };
    /// Both off: one datagram per send and per receive.
    pub(crate) const OFF: Self = Self { gso: false, gro: false };
}

/// Turns on what `want` asks for and the kernel offers, on `sockets`
/// (`sockets[0]` sends): GSO if the socket takes `UDP_SEGMENT` (set to 0,
/// which is the default and sends unsegmented unless a control message
/// says otherwise; older kernels refuse it with `ENOPROTOOPT`), GRO if
/// every socket takes `UDP_GRO` (Linux 5.0). Returns what is on.
pub(crate) fn enable(sockets: &[UdpSocket], want: Offload) -> Offload {
    let gso = want.gso && sockets.first().is_some_and(|s| setsockopt(s, sockopt::UdpGsoSegment, &0).is_ok());
    let mut gro = want.gro && !sockets.is_empty();
    if gro {
        gro = sockets.iter().all(|s| setsockopt(s, sockopt::UdpGroSegment, &true).is_ok());
        if !gro {
            // Some took it: turn it off again, so no socket hands over a
            // coalesced datagram the backend's buffers were not sized for.
            for s in sockets {
                let _ = setsockopt(s, sockopt::UdpGroSegment, &false);
            }
        }
    }
    if want.gso != gso || want.gro != gro {
        info!(gso, gro, "UDP segmentation offload: not offered by this kernel (in part); using plain sends");
    }
    Offload { gso, gro }
}

/// GSO and GRO counters of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OffloadStats {
    /// GSO is in use (asked for, offered, and no send refused it).
    pub(crate) gso: bool,
    /// GRO is on.
    pub(crate) gro: bool,
    /// Sends that carried a `UDP_SEGMENT` (two datagrams or more).
    pub(crate) gso_sends: u64,
    /// Datagrams those sends carried.
    pub(crate) gso_segments: u64,
    /// Receives that handed over a coalesced buffer (a `UDP_GRO` message).
    pub(crate) gro_receives: u64,
    /// Datagrams those receives carried.
    pub(crate) gro_segments: u64,
}

impl OffloadStats {
    /// Counts what [`deliver_segments`] did with one received buffer
    /// (`None`: one more in `oversize`).
    pub(crate) fn count(&mut self, r: Option<(u64, bool)>, oversize: &mut u64) {
        match r {
            Some((segments, true)) => {
                self.gro_receives += 1;
                self.gro_segments += segments;
            }
            Some((_, false)) => {}
            None => *oversize += 1,
        }
    }
}

/// Writes a `SOL_UDP`/`UDP_SEGMENT` control message for `segment` bytes
/// into `control`; returns the `msg_controllen` to give the kernel.
pub(crate) fn write_gso(control: &mut Control<GSO_CONTROL>, segment: u16) -> usize {
    let c = &mut control.0;
    c.fill(0);
    c[..WORD].copy_from_slice(&(CMSG_HDR + 2).to_ne_bytes());
    c[WORD..WORD + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    c[WORD + 4..WORD + 8].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
    c[CMSG_HDR..CMSG_HDR + 2].copy_from_slice(&segment.to_ne_bytes());
    GSO_CONTROL
}

/// The kernel's control messages of a receive did not parse (a length
/// that runs past the buffer, or a `UDP_GRO` size that is not positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed control message from the kernel")]
pub(crate) struct BadControl;

/// The GRO segment size in the control messages `control` of a receive
/// (`None`: no `UDP_GRO` message, the buffer is one datagram). Any bytes
/// give a value or an error, never a panic.
pub(crate) fn gro_segment(control: &[u8]) -> Result<Option<usize>, BadControl> {
    let mut at = 0usize;
    while let Some(hdr) = control.get(at..).and_then(|c| c.get(..CMSG_HDR)) {
        let word = |i: usize| hdr.get(i..i + 4).and_then(|b| b.try_into().ok()).map(i32::from_ne_bytes);
        let len = hdr.get(..WORD).and_then(|b| b.try_into().ok()).map_or(0, usize::from_ne_bytes);
        let (Some(level), Some(kind)) = (word(WORD), word(WORD + 4)) else { return Err(BadControl) };
        if len < CMSG_HDR || len > control.len() - at {
            return Err(BadControl);
        }
        if level == libc::SOL_UDP && kind == UDP_GRO {
            let data = &control[at + CMSG_HDR..at + len];
            let size = match data.len() {
                4.. => i64::from(i32::from_ne_bytes([data[0], data[1], data[2], data[3]])),
                2 | 3 => i64::from(u16::from_ne_bytes([data[0], data[1]])),
                _ => return Err(BadControl),
            };
            return match usize::try_from(size) {
                Ok(s) if s > 0 => Ok(Some(s)),
                _ => Err(BadControl),
            };
        }
        // `len <= control.len()`, so this cannot overflow.
        at += cmsg_align(len);
    }
    Ok(None)
}

/// The segment size 0, which cuts nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("GRO segment size 0")]
pub(crate) struct ZeroSegment;

/// The datagrams of one received buffer: `segment` bytes each, the last
/// one possibly shorter; with `segment` `None` the buffer is one datagram
/// (an empty buffer is one empty datagram either way). Any size and length
/// give datagrams or an error, never a panic.
pub(crate) fn segments(payload: &[u8], segment: Option<usize>) -> Result<Segments<'_>, ZeroSegment> {
    match segment {
        Some(0) => Err(ZeroSegment),
        Some(s) => Ok(Segments { rest: Some(payload), size: s }),
        None => Ok(Segments { rest: Some(payload), size: usize::MAX }),
    }
}

/// Iterator of [`segments`].
#[derive(Clone, Debug)]
pub(crate) struct Segments<'a> {
    rest: Option<&'a [u8]>,
    /// At least 1.
    size: usize,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        if rest.len() <= self.size {
            self.rest = None;
            Some(rest)
        } else {
            let (one, more) = rest.split_at(self.size);
            self.rest = Some(more);
            Some(one)
        }
    }
}

/// One `sendmsg`: the datagrams `order[start..end]` of a [`SendQueue`],
/// all to `to`; with two or more, cut by the kernel at `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Destination.
    pub(crate) to: SocketAddr,
    /// First position in `SendQueue::order`.
    pub(crate) start: usize,
    /// One past the last.
    pub(crate) end: usize,
    /// The first datagram's size: every one but the last has it.
    size: usize,
    /// Bytes of all of them.
    total: usize,
    /// The last one has `size` bytes: another of at most `size` may follow.
    open: bool,
}

impl Batch {
    /// Datagrams in it.
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// The `UDP_SEGMENT` size, for a batch of two or more.
    pub(crate) fn segment(&self) -> Option<u16> {
        if self.len() > 1 { u16::try_from(self.size).ok() } else { None }
    }
}

/// Datagrams queued until the next flush, and their plan: grouped by
/// destination (in the order each destination first appears, and in
/// the order given within one), cut into [`Batch`]es. Holds references
/// to the datagrams, never copies: the datagram every peer gets is one
/// buffer.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    queued: Vec<(SocketAddr, Bytes)>,
    /// Indices into `queued`, grouped by destination.
    order: Vec<usize>,
    batches: Vec<Batch>,
    dests: Vec<SocketAddr>,
}

impl SendQueue {
    /// Queues one datagram (a reference to it).
    pub(crate) fn push(&mut self, to: SocketAddr, bytes: &Bytes) {
        self.queued.push((to, bytes.clone()));
    }

    /// Datagrams queued.
    pub(crate) fn len(&self) -> usize {
        self.queued.len()
    }

    /// Nothing queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Forgets everything queued (the references are dropped).
    pub(crate) fn clear(&mut self) {
        self.queued.clear();
        self.order.clear();
        self.batches.clear();
        self.dests.clear();
    }

    /// Cuts what is queued into batches of at most `max_segments`
    /// datagrams (1: one datagram per send) and `MAX_GSO_BYTES`: per
    /// destination, a run of datagrams of one size, closed by a shorter
    /// one, a larger one, the limits, or an empty one (never segmented).
    pub(crate) fn plan(&mut self, max_segments: usize) {
        let Self { queued, order, batches, dests } = self;
        order.clear();
        batches.clear();
        dests.clear();
        for (to, _) in queued.iter() {
            if !dests.contains(to) {
                dests.push(*to);
            }
        }
        for &d in dests.iter() {
            for (i, (to, bytes)) in queued.iter().enumerate() {
                if *to != d {
                    continue;
                }
                let len = bytes.len();
                let here = order.len();
                match batches.last_mut() {
                    Some(b)
                        if b.to == d
                            && b.end == here
                            && b.open
                            && len > 0
                            && len <= b.size
                            && b.size <= usize::from(u16::MAX)
                            && b.len() < max_segments
                            && b.total + len <= MAX_GSO_BYTES =>
                    {
                        b.end += 1;
                        b.total += len;
                        b.open = len == b.size;
                    }
                    _ => batches.push(Batch {
                        to: d,
                        start: here,
                        end: here + 1,
                        size: len,
                        total: len,
                        open: len > 0,
                    }),
                }
                order.push(i);
            }
        }
    }

    /// The batches of the last `plan`.
    pub(crate) fn batches(&self) -> &[Batch] {
        &self.batches
    }

    /// The datagrams of `b`, in order.
    pub(crate) fn datagrams(&self, b: &Batch) -> impl Iterator<Item = &Bytes> + '_ {
        self.order.get(b.start..b.end).unwrap_or_default().iter().map(|&i| &self.queued[i].1)
    }

    /// Replaces the batches from `first` on by one batch per datagram (GSO
    /// was refused: what was not sent yet goes unsegmented).
    pub(crate) fn unsegment_from(&mut self, first: usize) {
        let Some(start) = self.batches.get(first).map(|b| b.start) else { return };
        self.batches.truncate(first);
        for k in start..self.order.len() {
            let (to, bytes) = &self.queued[self.order[k]];
            let len = bytes.len();
            self.batches.push(Batch { to: *to, start: k, end: k + 1, size: len, total: len, open: false });
        }
    }
}

/// The iovecs of batch `b` of `queue` into `iovs` (cleared first): one
/// per datagram, merged with the previous one when the datagram starts
/// where that one ends (consecutive datagrams split off one block).
pub(crate) fn iovecs(queue: &SendQueue, b: &Batch, iovs: &mut Vec<libc::iovec>) {
    iovs.clear();
    for bytes in queue.datagrams(b) {
        let base = bytes.as_ptr();
        if let Some(last) = iovs.last_mut() {
            if last.iov_base.cast::<u8>().cast_const().wrapping_add(last.iov_len) == base {
                last.iov_len += bytes.len();
                continue;
            }
        }
        // The kernel only reads through it (a send).
        iovs.push(libc::iovec { iov_base: base.cast_mut().cast(), iov_len: bytes.len() });
    }
}

/// A zeroed `msghdr`.
pub(crate) fn empty_msghdr() -> libc::msghdr {
    // SAFETY: `msghdr` is a plain C struct of integers and raw pointers, for
    // which all-zero bytes are a valid value (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// A zeroed `mmsghdr`.
fn empty_mmsghdr() -> libc::mmsghdr {
    // SAFETY: as `empty_msghdr`, plus an integer.
    unsafe { std::mem::zeroed() }
}

/// What one `sendmmsg` sent.
#[derive(Debug)]
pub(crate) enum Sent {
    /// The first `n` batches (at least one) went out.
    Batches(usize),
    /// The first batch failed with this error; nothing was sent.
    Failed(io::Error),
}

/// Headers of `sendmmsg` calls, kept so a flush allocates nothing once
/// they have grown.
#[derive(Debug, Default)]
pub(crate) struct SendScratch {
    iovs: Vec<libc::iovec>,
    /// Where each batch's iovecs start in `iovs`, and how many.
    spans: Vec<(usize, usize)>,
    addrs: Vec<SockAddr>,
    controls: Vec<Control<GSO_CONTROL>>,
    hdrs: Vec<libc::mmsghdr>,
    one: Vec<libc::iovec>,
}

/// Sends batches `first..` of `queue` (at most `max` and `MMSG_BATCH` of
/// them) in one `sendmmsg` on `socket` (blocking: it waits while the send
/// buffer is full). Interrupted calls are retried.
pub(crate) fn send_batches(
    socket: &UdpSocket,
    queue: &SendQueue,
    first: usize,
    max: usize,
    s: &mut SendScratch,
) -> Sent {
    let batches = queue.batches().get(first..).unwrap_or_default();
    let batches = &batches[..batches.len().min(max).min(MMSG_BATCH)];
    if batches.is_empty() {
        return Sent::Batches(0);
    }
    s.iovs.clear();
    s.spans.clear();
    s.addrs.clear();
    s.controls.clear();
    for b in batches {
        iovecs(queue, b, &mut s.one);
        s.spans.push((s.iovs.len(), s.one.len()));
        s.iovs.extend_from_slice(&s.one);
        s.addrs.push(SockAddr::from(b.to));
        let mut c = Control::default();
        if let Some(size) = b.segment() {
            write_gso(&mut c, size);
        }
        s.controls.push(c);
    }
    // Every vector is complete: the pointers below stay valid until the
    // call returns (nothing is pushed to them meanwhile).
    s.hdrs.clear();
    for (k, b) in batches.iter().enumerate() {
        let (at, n) = s.spans[k];
        let mut h = empty_mmsghdr();
        h.msg_hdr.msg_name = s.addrs[k].as_ptr().cast_mut().cast();
        h.msg_hdr.msg_namelen = s.addrs[k].len();
        h.msg_hdr.msg_iov = s.iovs[at..at + n].as_ptr().cast_mut();
        h.msg_hdr.msg_iovlen = n as _;
        if b.segment().is_some() {
            h.msg_hdr.msg_control = s.controls[k].0.as_ptr().cast_mut().cast();
            h.msg_hdr.msg_controllen = GSO_CONTROL as _;
        }
        s.hdrs.push(h);
    }
    loop {
        // SAFETY: `hdrs` holds `hdrs.len()` initialised headers; each
        // points to its address in `addrs`, its iovecs in `iovs` and its
        // control message in `controls`, all alive and unmoved until this
        // call returns; the iovecs point into `Bytes` that `queue` holds.
        // The kernel only reads them (it writes `msg_len` in `hdrs`).
        let r = unsafe {
            libc::sendmmsg(socket.as_raw_fd(), s.hdrs.as_mut_ptr(), s.hdrs.len() as libc::c_uint, 0)
        };
        if r > 0 {
            return Sent::Batches(r as usize);
        }
        let e = if r == 0 { io::Error::from(io::ErrorKind::WriteZero) } else { io::Error::last_os_error() };
        if e.kind() != io::ErrorKind::Interrupted {
            return Sent::Failed(e);
        }
    }
}

/// Whether a failed GSO send means the path cannot segment (`EIO`: no
/// checksum offload; `EINVAL`: segment over the MTU, or no GSO at all).
pub(crate) fn refuses_gso(errno: i32) -> bool {
    errno == libc::EIO || errno == libc::EINVAL
}

/// One received datagram (or coalesced buffer) of a [`RecvBatch`].
#[derive(Debug)]
pub(crate) struct Received<'a> {
    /// The source.
    pub(crate) from: Option<SocketAddr>,
    /// The payload (up to the buffer's size).
    pub(crate) payload: &'a [u8],
    /// Larger than the buffer: the kernel cut it.
    pub(crate) truncated: bool,
    /// The control messages (`UDP_GRO`).
    pub(crate) control: &'a [u8],
    /// The control messages did not fit.
    pub(crate) control_truncated: bool,
}

/// Buffers of `recvmmsg`: `MMSG_BATCH` slots of `slot` bytes each.
#[derive(Debug)]
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    slot: usize,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control<RECV_CONTROL>>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Filled by the last `recv`.
    got: usize,
}

impl RecvBatch {
    /// Slots of `slot` bytes (at least 1).
    pub(crate) fn new(slot: usize) -> Self {
        let slot = slot.max(1);
        Self {
            bufs: vec![0; slot * MMSG_BATCH],
            slot,
            // SAFETY: `sockaddr_storage` is plain integers; all-zero is valid.
            names: vec![unsafe { std::mem::zeroed() }; MMSG_BATCH],
            controls: vec![Control::default(); MMSG_BATCH],
            iovs: Vec::with_capacity(MMSG_BATCH),
            hdrs: Vec::with_capacity(MMSG_BATCH),
            got: 0,
        }
    }

    /// Receives what is queued on `socket`, up to `MMSG_BATCH` datagrams,
    /// without waiting: how many (0 when none is queued). Interrupted
    /// calls are retried.
    pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.got = 0;
        self.iovs.clear();
        self.hdrs.clear();
        for chunk in self.bufs.chunks_exact_mut(self.slot) {
            self.iovs.push(libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: chunk.len() });
        }
        for k in 0..MMSG_BATCH {
            let mut h = empty_mmsghdr();
            h.msg_hdr.msg_name = (&raw mut self.names[k]).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &raw mut self.iovs[k];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.controls[k].0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = RECV_CONTROL as _;
            self.hdrs.push(h);
        }
        loop {
            // SAFETY: `hdrs` holds `MMSG_BATCH` headers, each pointing to
            // its own name, iovec (a `slot`-byte part of `bufs`) and control
            // buffer, all owned by `self`, alive and unmoved during the call
            // (no vector is pushed to meanwhile: `iovs` and `hdrs` were
            // filled above within their capacity).
            let r = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    MMSG_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                self.got = r as usize;
                return Ok(self.got);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        }
    }

    /// Datagram `k` of the last `recv` (`k` below what it returned).
    pub(crate) fn get(&self, k: usize) -> Option<Received<'_>> {
        if k >= self.got {
            return None;
        }
        let h = &self.hdrs[k].msg_hdr;
        let n = self.hdrs[k].msg_len as usize;
        let name_len = (h.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `names[k]` is a `sockaddr_storage` (plain bytes, no
        // padding that matters to a reader of bytes) of which the kernel
        // wrote `msg_namelen` bytes.
        let name = unsafe { std::slice::from_raw_parts((&raw const self.names[k]).cast::<u8>(), name_len) };
        let control_len = h.msg_controllen.min(RECV_CONTROL);
        let buf = &self.bufs[k * self.slot..(k + 1) * self.slot];
        Some(Received {
            from: parse_name(name),
            payload: &buf[..n.min(self.slot)],
            truncated: h.msg_flags & libc::MSG_TRUNC != 0 || n > self.slot,
            control: &self.controls[k].0[..control_len],
            control_truncated: h.msg_flags & libc::MSG_CTRUNC != 0,
        })
    }
}

/// A socket address as the kernel wrote it (`sockaddr_in` or `sockaddr_in6`).
pub(crate) fn parse_name(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flowinfo = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope)))
        }
        _ => None,
    }
}

/// Hands the datagrams of one received buffer to `on_datagram`, cut at
/// the GRO segment size its control messages give. Returns `(datagrams
/// handed over, coalesced)`, or `None` when the buffer cannot be trusted
/// (truncated, a malformed control message, a datagram over
/// `max_datagram`): then nothing is handed over and the caller counts it
/// as oversize.
pub(crate) fn deliver_segments(
    from: SocketAddr,
    payload: &[u8],
    control: &[u8],
    max_datagram: usize,
    on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
) -> Option<(u64, bool)> {
    let segment = gro_segment(control).ok()?;
    let coalesced = segment.is_some_and(|s| payload.len() > s);
    let parts = segments(payload, segment).ok()?;
    // The first datagram is the largest (every one but the last is cut at
    // the segment size).
    if parts.clone().next().is_some_and(|d| d.len() > max_datagram) {
        return None;
    }
    let mut n = 0;
    for d in parts {
        on_datagram(from, d);
        n += 1;
    }
    Some((n, coalesced))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_gso_control_message_is_what_the_c_macros_build() {
        let mut c = Control::default();
        let len = write_gso(&mut c, 1_234);
        // SAFETY: the macros only compute sizes and offsets; the header
        // read is inside `c`, which is aligned for it.
        unsafe {
            assert_eq!(len, libc::CMSG_SPACE(2) as usize);
            assert_eq!(CMSG_HDR, libc::CMSG_LEN(0) as usize);
            let hdr = c.0.as_ptr().cast::<libc::cmsghdr>();
            assert_eq!((*hdr).cmsg_len, libc::CMSG_LEN(2) as usize);
            assert_eq!((*hdr).cmsg_level, libc::SOL_UDP);
            assert_eq!((*hdr).cmsg_type, UDP_SEGMENT);
            let data = libc::CMSG_DATA(hdr);
            assert_eq!(data.cast_const().offset_from(c.0.as_ptr()), CMSG_HDR as isize);
            assert_eq!(data.cast::<u16>().read_unaligned(), 1_234);
        }
    }

    /// A control buffer as the kernel writes it for a coalesced receive.
    fn gro_control(size: i32) -> Vec<u8> {
        let mut v = vec![0u8; cmsg_align(CMSG_HDR + 4)];
        v[..WORD].copy_from_slice(&(CMSG_HDR + 4).to_ne_bytes());
        v[WORD..WORD + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        v[WORD + 4..WORD + 8].copy_from_slice(&UDP_GRO.to_ne_bytes());
        v[CMSG_HDR..CMSG_HDR + 4].copy_from_slice(&size.to_ne_bytes());
        v
    }

    #[test]
    fn gro_segment_reads_the_kernels_message_and_skips_others() {
        assert_eq!(gro_segment(&[]), Ok(None));
        assert_eq!(gro_segment(&gro_control(1_400)), Ok(Some(1_400)));
        assert_eq!(gro_segment(&gro_control(0)), Err(BadControl));
        assert_eq!(gro_segment(&gro_control(-5)), Err(BadControl));
        // Another message first (IP_TOS, one byte of data), then GRO.
        let mut other = vec![0u8; cmsg_align(CMSG_HDR + 1)];
        other[..WORD].copy_from_slice(&(CMSG_HDR + 1).to_ne_bytes());
        other[WORD..WORD + 4].copy_from_slice(&libc::IPPROTO_IP.to_ne_bytes());
        other[WORD + 4..WORD + 8].copy_from_slice(&libc::IP_TOS.to_ne_bytes());
        assert_eq!(gro_segment(&other), Ok(None));
        let both = [other.clone(), gro_control(512)].concat();
        assert_eq!(gro_segment(&both), Ok(Some(512)));
        // A length past the end, or shorter than a header.
        let mut long = gro_control(512);
        long[..WORD].copy_from_slice(&999usize.to_ne_bytes());
        assert_eq!(gro_segment(&long), Err(BadControl));
        let mut short = gro_control(512);
        short[..WORD].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(gro_segment(&short), Err(BadControl));
        // A trailing part shorter than a header is ignored.
        assert_eq!(gro_segment(&[other, vec![1, 2, 3]].concat()), Ok(None));
    }

    #[test]
    fn gro_segment_is_total_on_any_bytes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for round in 0..100_000 {
            let n = rng.random_range(0..80usize);
            let mut v: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            // Often a plausible header, so the walk goes past the first one.
            if round % 2 == 0 && n >= CMSG_HDR {
                let len = rng.random_range(0..=n + 4);
                v[..WORD].copy_from_slice(&len.to_ne_bytes());
                if round % 4 == 0 {
                    v[WORD..WORD + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
                    v[WORD + 4..WORD + 8].copy_from_slice(&UDP_GRO.to_ne_bytes());
                }
            }
            if let Ok(Some(s)) = gro_segment(&v) {
                assert!(s > 0);
            }
        }
    }

    #[test]
    fn segments_cut_every_size_and_length_or_refuse_size_zero() {
        let data: Vec<u8> = (0..3_000u32).map(|i| (i % 251) as u8).collect();
        for len in (0..=600).chain([1_399, 1_400, 1_401, 2_999, 3_000]) {
            let payload = &data[..len];
            assert_eq!(segments(payload, Some(0)).err(), Some(ZeroSegment));
            let whole: Vec<&[u8]> = segments(payload, None).unwrap().collect();
            assert_eq!(whole, vec![payload]);
            for size in (1..=700).chain([1_400, 2_999, 3_000, 3_001, usize::MAX]) {
                let parts: Vec<&[u8]> = segments(payload, Some(size)).unwrap().collect();
                assert_eq!(parts.concat(), payload, "len {len} size {size}");
                assert_eq!(parts.len(), len.div_ceil(size).max(1), "len {len} size {size}");
                let (last, rest) = parts.split_last().unwrap();
                assert!(
                    rest.iter().all(|p| p.len() == size)
                        && last.len() <= size
                        && (len == 0 || !last.is_empty())
                );
            }
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// `(destination port, sizes)` of every batch.
    fn plan(items: &[(u16, usize)], max: usize) -> Vec<(u16, Vec<usize>, Option<u16>)> {
        let mut q = SendQueue::default();
        for &(port, len) in items {
            q.push(addr(port), &Bytes::from(vec![0u8; len]));
        }
        q.plan(max);
        let out = q
            .batches()
            .iter()
            .map(|b| (b.to.port(), q.datagrams(b).map(Bytes::len).collect(), b.segment()))
            .collect();
        // Every datagram exactly once.
        let mut seen: Vec<usize> = q.order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..items.len()).collect::<Vec<_>>());
        out
    }

    #[test]
    fn the_plan_groups_by_destination_and_cuts_runs_of_one_size() {
        // A visit: 3 full frames to two peers, interleaved, then a token to one.
        let visit = [(1, 1400), (2, 1400), (1, 1400), (2, 1400), (1, 1000), (2, 1000), (2, 80)];
        assert_eq!(
            plan(&visit, 64),
            vec![
                (1, vec![1400, 1400, 1000], Some(1400)),
                (2, vec![1400, 1400, 1000], Some(1400)),
                (2, vec![80], None)
            ]
        );
        // GSO off: one datagram per batch, order per destination kept.
        assert_eq!(plan(&visit, 1).len(), 7);
        assert_eq!(
            plan(&visit, 1).iter().map(|b| (b.0, b.1[0])).collect::<Vec<_>>(),
            vec![(1, 1400), (1, 1400), (1, 1000), (2, 1400), (2, 1400), (2, 1000), (2, 80)]
        );
        // A larger one starts a new run; so does anything after a short one.
        assert_eq!(
            plan(&[(1, 100), (1, 200), (1, 200), (1, 50), (1, 50)], 64),
            vec![(1, vec![100], None), (1, vec![200, 200, 50], Some(200)), (1, vec![50], None)]
        );
        // Empty datagrams are never segmented.
        assert_eq!(
            plan(&[(1, 0), (1, 0), (1, 10)], 64),
            vec![(1, vec![0], None), (1, vec![0], None), (1, vec![10], None)]
        );
        // At most `max` segments and MAX_GSO_BYTES.
        let many: Vec<(u16, usize)> = (0..100).map(|_| (1, 100)).collect();
        let p = plan(&many, 64);
        assert_eq!(p.iter().map(|b| b.1.len()).collect::<Vec<_>>(), vec![64, 36]);
        let big: Vec<(u16, usize)> = (0..100).map(|_| (1, 1500)).collect();
        let p = plan(&big, 64);
        assert!(p.iter().all(|b| b.1.iter().sum::<usize>() <= MAX_GSO_BYTES));
        assert_eq!(p[0].1.len(), MAX_GSO_BYTES / 1500);
        // Over u16: alone.
        assert_eq!(plan(&[(1, 70_000), (1, 70_000)], 64).len(), 2);
    }

    #[test]
    fn the_plan_is_total_on_random_queues() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for _ in 0..2_000 {
            let n = rng.random_range(0..120usize);
            let items: Vec<(u16, usize)> = (0..n)
                .map(|_| {
                    let len = match rng.random_range(0..4) {
                        0 => 1400,
                        1 => rng.random_range(0..1400),
                        2 => rng.random_range(0..3000),
                        _ => 0,
                    };
                    (rng.random_range(1..4), len)
                })
                .collect();
            let max = rng.random_range(1..=MAX_SEGMENTS);
            for (_, sizes, seg) in plan(&items, max) {
                assert!(sizes.len() <= max && sizes.iter().sum::<usize>() <= MAX_GSO_BYTES.max(sizes[0]));
                match seg {
                    None => assert_eq!(sizes.len(), 1),
                    Some(s) => {
                        let (last, rest) = sizes.split_last().unwrap();
                        assert!(
                            rest.iter().all(|&l| l == usize::from(s)) && *last <= usize::from(s) && *last > 0
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn adjacent_datagrams_share_an_iovec() {
        let mut block = bytes::BytesMut::with_capacity(4096);
        block.extend_from_slice(&[1; 100]);
        let a = block.split().freeze();
        block.extend_from_slice(&[2; 100]);
        let b = block.split().freeze();
        let apart = Bytes::from(vec![3u8; 100]);
        let mut q = SendQueue::default();
        for d in [&a, &b, &apart] {
            q.push(addr(1), d);
        }
        q.plan(64);
        let mut iovs = Vec::new();
        iovecs(&q, &q.batches()[0], &mut iovs);
        assert_eq!(iovs.iter().map(|v| v.iov_len).collect::<Vec<_>>(), vec![200, 100]);
        assert_eq!(iovs[0].iov_base.cast_const(), a.as_ptr().cast());
    }

    #[test]
    fn unsegment_from_leaves_the_earlier_batches() {
        let mut q = SendQueue::default();
        for (port, len) in [(1, 100), (1, 100), (2, 100), (2, 100), (2, 50)] {
            q.push(addr(port), &Bytes::from(vec![0u8; len]));
        }
        q.plan(64);
        assert_eq!(q.batches().len(), 2);
        q.unsegment_from(1);
        let sizes: Vec<(u16, usize)> = q.batches().iter().map(|b| (b.to.port(), b.len())).collect();
        assert_eq!(sizes, vec![(1, 2), (2, 1), (2, 1), (2, 1)]);
        assert!(q.batches()[1..].iter().all(|b| b.segment().is_none()));
    }

    #[test]
    fn names_parse() {
        let v4: SocketAddr = "127.0.0.2:4801".parse().unwrap();
        let s = SockAddr::from(v4);
        // SAFETY: `as_ptr` points at `len` initialised bytes of `s`.
        let bytes = unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() as usize) };
        assert_eq!(parse_name(bytes), Some(v4));
        let v6: SocketAddr = "[::1]:4801".parse().unwrap();
        let s = SockAddr::from(v6);
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() as usize) };
        assert_eq!(parse_name(bytes), Some(v6));
        assert_eq!(parse_name(&[0, 0]), None);
    }

    /// A backend under test: its name and how to open it.
    type Open = (&'static str, fn(Vec<UdpSocket>, Offload) -> Box<dyn crate::backend::Backend>);

    const BACKENDS: [Open; 3] = [
        ("portable", |s, o| Box::new(crate::backend::Portable::new(s, 1500, o).unwrap())),
        ("io_uring multishot", |s, o| {
            Box::new(crate::uring::Uring::with_receive(s, 1500, false, o).unwrap())
        }),
        ("io_uring pool", |s, o| Box::new(crate::uring::Uring::with_receive(s, 1500, true, o).unwrap())),
    ];

    /// A loopback socket with a receive buffer large enough for a round.
    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(1 << 20);
        s
    }

    /// Datagrams of one round as the ring sends them in a visit: full
    /// frames split off one block (as the link seals them), one from a
    /// buffer of its own, a shorter last frame and a token; each tagged
    /// with its round and index.
    fn round(r: u8) -> Vec<Bytes> {
        let mut block = bytes::BytesMut::with_capacity(64 << 10);
        let mut out = Vec::new();
        let tagged =
            |len: usize, i: u8| -> Vec<u8> { (0..len).map(|k| (k as u8) ^ r.wrapping_mul(31) ^ i).collect() };
        for i in 0..20u8 {
            block.extend_from_slice(&tagged(1400, i));
            out.push(block.split().freeze());
        }
        out.push(Bytes::from(tagged(1400, 20)));
        for i in 21..30u8 {
            block.extend_from_slice(&tagged(1400, i));
            out.push(block.split().freeze());
        }
        out.push(Bytes::from(tagged(900, 30)));
        out.push(Bytes::from(tagged(80, 31)));
        out
    }

    /// Waits (at most 10 s) until `n` datagrams arrived at `b`.
    fn collect(b: &mut dyn crate::backend::Backend, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(std::time::Instant::now() < deadline, "{} of {n} datagrams after 10 s", got.len());
            b.wait(std::time::Duration::from_millis(20), &mut |from, bytes| got.push((from, bytes.to_vec())))
                .unwrap();
        }
        got
    }

    /// One sender, two receivers, each datagram one shared buffer sent
    /// to both: every datagram arrives intact and in order at both; with
    /// GSO the sender sent runs, with GRO (and GSO) the receivers got
    /// them coalesced.
    fn gso_batch(tx: Open, rx: Open, offload: Offload) {
        let what = format!("{} to {}, {offload:?}", tx.0, rx.0);
        let a = socket();
        let a_addr = a.local_addr().unwrap();
        let (r1, r2) = (socket(), socket());
        let dests = [r1.local_addr().unwrap(), r2.local_addr().unwrap()];
        let mut sender = (tx.1)(vec![a], offload);
        let mut receivers = [(rx.1)(vec![r1], offload), (rx.1)(vec![r2], offload)];
        let mut sent = 0;
        for r in 0..4u8 {
            let datagrams = round(r);
            for d in &datagrams {
                for to in dests {
                    sender.send(to, d);
                }
            }
            sender.flush_sends().unwrap();
            sent += 2 * datagrams.len() as u64;
            for b in &mut receivers {
                let got = collect(&mut **b, datagrams.len());
                assert_eq!(got.len(), datagrams.len(), "{what}");
                for (k, (from, bytes)) in got.iter().enumerate() {
                    assert_eq!(*from, a_addr, "{what}");
                    assert_eq!(bytes[..], datagrams[k][..], "{what}: round {r}, datagram {k}");
                }
            }
        }
        assert_eq!(sender.counters(), (sent, 0), "{what}");
        let o = sender.offload();
        assert_eq!(o.gso, offload.gso, "{what}: loopback offers GSO");
        if offload.gso {
            // Per round and receiver: 30 full frames and the shorter one
            // (one run of 31 of at most 46), and the token alone.
            assert_eq!((o.gso_sends, o.gso_segments), (8, 8 * 31), "{what}");
        } else {
            assert_eq!((o.gso_sends, o.gso_segments), (0, 0), "{what}");
        }
        for b in &receivers {
            let o = b.offload();
            assert_eq!(o.gro, offload.gro, "{what}: loopback offers GRO");
            if offload.gso && offload.gro {
                assert!(o.gro_receives >= 4 && o.gro_segments >= 4 * 31, "{what}: {o:?}");
            } else {
                assert_eq!((o.gro_receives, o.gro_segments), (0, 0), "{what}");
            }
            assert_eq!(b.oversize(), 0, "{what}");
        }
    }

    #[test]
    fn gso_batches_arrive_intact_between_every_pair_of_backends() {
        let half = [Offload { gso: true, gro: false }, Offload { gso: false, gro: true }];
        for offload in [Offload::ON, Offload::OFF].into_iter().chain(half) {
            for tx in BACKENDS {
                for rx in BACKENDS {
                    gso_batch(tx, rx, offload);
                }
            }
        }
    }

    /// Makes the kernel refuse `s`'s GSO sends: `SO_NO_CHECK` (no UDP
    /// checksum) makes `udp_send_skb` fail a segmented send with `EINVAL`,
    /// as a device without checksum offload fails it with `EIO`.
    fn refuse_gso(s: &UdpSocket) {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a pointer to an `int` of the length given.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
    }

    fn refusing_socket() -> UdpSocket {
        let s = socket();
        refuse_gso(&s);
        s
    }

    #[test]
    fn a_gso_send_refused_after_gso_worked_is_resent_one_by_one() {
        for tx in BACKENDS {
            let a = socket();
            let handle = a.try_clone().unwrap();
            let from = a.local_addr().unwrap();
            let r = socket();
            let to = r.local_addr().unwrap();
            let mut sender = (tx.1)(vec![a], Offload::ON);
            let mut receiver = (BACKENDS[0].1)(vec![r], Offload::ON);
            let first = round(0);
            for d in &first {
                sender.send(to, d);
            }
            sender.flush_sends().unwrap();
            let want: Vec<(SocketAddr, Vec<u8>)> = first.iter().map(|d| (from, d.to_vec())).collect();
            assert_eq!(collect(&mut *receiver, first.len()), want, "{}", tx.0);
            assert_eq!(sender.offload().gso_sends, 1, "{}", tx.0);
            // The path stops segmenting (a route change, say).
            refuse_gso(&handle);
            let second = round(1);
            for d in &second {
                sender.send(to, d);
            }
            sender.flush_sends().unwrap();
            let mut got = collect(&mut *receiver, second.len());
            let mut want: Vec<(SocketAddr, Vec<u8>)> = second.iter().map(|d| (from, d.to_vec())).collect();
            if tx.0 == "portable" {
                assert_eq!(got, want, "{}: in order", tx.0);
            }
            // io_uring learns of the refusal at the completion, after the
            // token went: the run comes after it.
            got.sort();
            want.sort();
            assert_eq!(got, want, "{}: every datagram once", tx.0);
            let o = sender.offload();
            assert!(!o.gso, "{}: GSO turned off", tx.0);
            assert_eq!((o.gso_sends, o.gso_segments), (1, 31), "{}", tx.0);
            assert_eq!(sender.counters(), (64, 0), "{}", tx.0);
        }
    }

    #[test]
    fn a_refused_gso_send_falls_back_to_plain_sends_and_loses_nothing() {
        for tx in BACKENDS {
            let a = refusing_socket();
            let from = a.local_addr().unwrap();
            let r = socket();
            let to = r.local_addr().unwrap();
            let mut sender = (tx.1)(vec![a], Offload::ON);
            let mut receiver = (BACKENDS[0].1)(vec![r], Offload::ON);
            assert!(sender.offload().gso, "{}: the probe accepts it", tx.0);
            for n in 0..2u8 {
                let datagrams = round(n);
                for d in &datagrams {
                    sender.send(to, d);
                }
                sender.flush_sends().unwrap();
                let got = collect(&mut *receiver, datagrams.len());
                let want: Vec<(SocketAddr, Vec<u8>)> = datagrams.iter().map(|d| (from, d.to_vec())).collect();
                assert_eq!(got, want, "{}: round {n}", tx.0);
            }
            let o = sender.offload();
            assert!(!o.gso, "{}: GSO turned off", tx.0);
            assert_eq!((o.gso_sends, o.gso_segments), (0, 0), "{}", tx.0);
            assert_eq!(sender.counters(), (2 * 32, 0), "{}", tx.0);
        }
    }
}
