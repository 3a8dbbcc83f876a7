//! The io_uring backend of the ring thread.
//!
//! - **Sends.** `send` queues a reference to the datagram (no copy: the
//!   same datagram to every peer is one buffer). `flush_sends` cuts the
//!   queue into runs per destination (`crate::udp::SendQueue`), puts each
//!   run into a boxed slot (message header, iovecs, address, `UDP_SEGMENT`
//!   control message, the datagrams' `Bytes`) and a `SendMsg` entry on the
//!   submission queue, and submits every entry of one flush with one
//!   `io_uring_enter`. A run of two or more is one GSO send. A slot returns
//!   to the free list only when its completion is reaped, so the kernel
//!   never sees freed or reused memory. A GSO send the kernel refuses
//!   (`EIO`, `EINVAL`) turns GSO off and its datagrams go again, one by
//!   one, in the same flush.
//! - **Receives.** One multishot `RecvMsg` per socket, all into one
//!   provided-buffer ring: the kernel picks a buffer per datagram and writes
//!   the source address, the header and the payload into it; the buffer goes
//!   back to the ring after the datagram was handed to the daemon. A
//!   multishot receive that ends (buffers ran out) is re-armed on its own
//!   socket. Where buffer rings or multishot receive are missing, a pool of
//!   single-shot `RecvMsg`s (`POOL` per socket) is used instead. With GRO
//!   on, each buffer holds 64 KiB and the receive's `UDP_GRO` control
//!   message says where to cut it into datagrams.
//! - **Sockets.** `sockets[0]` sends and receives; the others (a multicast
//!   group's socket) only receive.
//! - **Waiting.** `io_uring_enter` with a timeout (`EXT_ARG`): it returns at
//!   the first completion or when the timeout expires.
//!
//! This is the only module of the engine with `unsafe` code: every block
//! says why the memory it hands to the kernel outlives the operation.

#![allow(unsafe_code)]

use crate::backend::Backend;
use crate::udp::{
    self, Control, GSO_CONTROL, Offload, OffloadStats, RECV_CONTROL, SendQueue, SendScratch, Sent,
    empty_msghdr,
};
use bytes::Bytes;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::SockAddr;
use std::alloc::Layout;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Submission queue entries.
const SQ_ENTRIES: u32 = 256;
/// Completion queue entries (sends and receives of a busy visit).
const CQ_ENTRIES: u32 = 4096;
/// Send slots at most; past that a send waits for a completion.
const MAX_SENDS: usize = 4096;
/// Single-shot receives kept armed per socket in the fallback pool.
const POOL: usize = 32;
/// Buffer group id of the provided-buffer ring.
const BGID: u16 = 0x7266;
/// Bytes of provided buffers to aim for.
const RING_BYTES: usize = 4 << 20;
/// ... with GRO on (buffers of 64 KiB and headers: 128 of them).
const RING_BYTES_GRO: usize = 9 << 20;
/// How long `drop` waits for the kernel to finish with our memory.
const QUIESCE: Duration = Duration::from_secs(2);

/// What a completion belongs to: the top byte of its `user_data`; the
/// other bits are an index (send slot, socket of a multishot receive, pool
/// slot).
const KIND_SHIFT: u32 = 56;
const INDEX_MASK: u64 = (1 << KIND_SHIFT) - 1;
const K_SEND: u64 = 1;
const K_MULTI: u64 = 2;
const K_ONE: u64 = 3;
const K_CANCEL: u64 = 4;
const K_WAKE: u64 = 5;

const fn tag(kind: u64, index: usize) -> u64 {
    (kind << KIND_SHIFT) | index as u64
}

/// The index bits of a `user_data`.
const fn index_of(user_data: u64) -> usize {
    (user_data & INDEX_MASK) as usize
}

/// Room for any socket address the kernel writes (`sockaddr_storage`).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct NameBuf([u8; 128]);

const NAME_LEN: u32 = 128;

/// One send on its way out (one datagram, or a run of them cut by the
/// kernel): everything the kernel reads for it.
struct SendOp {
    msg: libc::msghdr,
    /// The datagrams' memory, adjacent ones merged. Never pushed to while
    /// the send is in flight, so its buffer does not move.
    iovs: Vec<libc::iovec>,
    addr: SockAddr,
    to: SocketAddr,
    /// `SOL_UDP`/`UDP_SEGMENT`, for a run of two or more.
    control: Control<GSO_CONTROL>,
    segmented: bool,
    /// The datagrams, shared (never written: the kernel only reads them,
    /// and a `Bytes` never moves its memory). Dropped when the send
    /// completes.
    bytes: Vec<Bytes>,
}

/// The ring thread's eventfd (`Backend::set_waker`): one `Read` of its
/// 8-byte counter kept armed, so a wake-up ends `enter` and resets the
/// counter without a system call of its own.
struct WakeRead {
    file: std::fs::File,
    /// Boxed: the kernel writes it while the read is armed.
    buf: Box<u64>,
    armed: bool,
}

/// One single-shot receive of the fallback pool.
struct RecvOne {
    /// Index of the socket it receives on.
    socket: usize,
    msg: libc::msghdr,
    iov: libc::iovec,
    name: NameBuf,
    control: Control<RECV_CONTROL>,
    buf: Vec<u8>,
    armed: bool,
}

/// Page-aligned memory from the global allocator that the kernel may use.
struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Region {
    fn new(size: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(size.max(1), 4096).map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Self { ptr, layout })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The owner of a region
        // the kernel may still write (`Uring::drop` when the kernel did not
        // finish in time) forgets it instead of dropping it.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A provided-buffer ring: `n` entries (`struct io_uring_buf`: u64 addr,
/// u32 len, u16 bid, u16 resv, the first entry's resv being the tail) and
/// `n` buffers of `buf_len` bytes.
struct BufRing {
    entries: Region,
    bufs: Region,
    n: u16,
    buf_len: usize,
    tail: u16,
    registered: bool,
}

impl BufRing {
    fn new(n: u16, buf_len: usize) -> io::Result<Self> {
        debug_assert!(n.is_power_of_two());
        debug_assert_eq!(std::mem::size_of::<types::BufRingEntry>(), 16);
        let entries = Region::new(usize::from(n) * 16)?;
        let bufs = Region::new(usize::from(n) * buf_len)?;
        let mut r = Self { entries, bufs, n, buf_len, tail: 0, registered: false };
        for bid in 0..n {
            r.put(bid);
        }
        Ok(r)
    }

    /// Writes buffer `bid` at the tail (not yet visible to the kernel).
    fn put(&mut self, bid: u16) {
        assert!(bid < self.n);
        let slot = usize::from(self.tail & (self.n - 1));
        let buf_len = u32::try_from(self.buf_len).unwrap_or(u32::MAX);
        // SAFETY: `slot < n`, so the 16-byte entry is inside `entries`. The
        // kernel reads only the entries between its head and the published
        // tail; this one is past the tail (each buffer id is in the ring at
        // most once and there are as many entries as buffers). Only addr,
        // len and bid are written, never `resv` (the tail, for entry 0),
        // and through raw pointers, so no reference covers memory the
        // kernel reads concurrently. `bid < n`, so the address is inside
        // `bufs`.
        unsafe {
            let e = self.entries.ptr.as_ptr().add(slot * 16);
            let addr = self.bufs.ptr.as_ptr().add(usize::from(bid) * self.buf_len) as u64;
            e.cast::<u64>().write(addr);
            e.add(8).cast::<u32>().write(buf_len);
            e.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every `put` buffer visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail is the u16 at offset 14 of the page-aligned first
        // entry, which lives as long as `self`; the kernel reads it with
        // acquire ordering, we write it with release ordering, and nothing
        // else writes it.
        let tail = unsafe { AtomicU16::from_ptr(self.entries.ptr.as_ptr().add(14).cast::<u16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, which a completion handed to us.
    fn get(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.n {
            return None;
        }
        // SAFETY: `bid < n` and `len <= buf_len`, so the range is inside
        // `bufs`. The kernel handed this buffer to us in a completion and
        // does not write it again until `put` gives it back, which the
        // borrow of `self` here orders after this slice's last use.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.bufs.ptr.as_ptr().add(usize::from(bid) * self.buf_len),
                len.min(self.buf_len),
            )
        })
    }
}

/// The multishot receive of one socket.
struct MultiArm {
    /// Boxed: the kernel reads it while the receive is armed.
    msg: Box<libc::msghdr>,
    armed: bool,
}

enum Recv {
    /// Multishot receives (one per socket, same index) into one buffer ring.
    /// `received`: some datagram arrived (multishot works here); `refused`:
    /// the kernel refused multishot receive, switch to the pool once no
    /// receive is armed.
    Multi { bufs: BufRing, arms: Vec<MultiArm>, received: bool, refused: bool },
    /// Single-shot receives (kernels without buffer rings or multishot).
    #[expect(clippy::vec_box, reason = "the kernel holds pointers into each slot: its address must not move")]
    Pool(Vec<Box<RecvOne>>),
    /// After a failed shutdown: nothing (the memory was leaked on purpose).
    Gone,
}

/// A completion kept for the next `wait`.
#[derive(Clone, Copy)]
struct Done {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// The io_uring backend.
pub(crate) struct Uring {
    // Declared first: dropped before the memory below.
    ring: IoUring,
    /// `sockets[0]` sends and receives, the others only receive.
    sockets: Vec<UdpSocket>,
    /// Boxed: in-flight slots must keep their address when the vector grows.
    #[expect(
        clippy::vec_box,
        reason = "the kernel holds pointers into each slot: its address must not move"
    )]
    sends: Vec<Box<SendOp>>,
    free_sends: Vec<usize>,
    sends_in_flight: usize,
    recv: Recv,
    /// The eventfd read, if a waker was set.
    wake: Option<WakeRead>,
    /// Entries `arm` is about to push (kept to reuse its allocation).
    arming: Vec<squeue::Entry>,
    ready: Vec<Done>,
    /// Datagrams `send` queued for the next flush.
    queue: SendQueue,
    /// Datagrams of GSO sends the kernel refused, to send again one by one.
    retry: Vec<(SocketAddr, Bytes)>,
    offload: OffloadStats,
    /// A GSO send succeeded: the path segments.
    gso_confirmed: bool,
    /// Headers of the first GSO send, made with a plain `sendmsg`.
    scratch: SendScratch,
    max_datagram: usize,
    sent: u64,
    send_errors: u64,
    truncated: u64,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recv = match &self.recv {
            Recv::Multi { .. } => "multishot",
            Recv::Pool(_) => "pool",
            Recv::Gone => "gone",
        };
        f.debug_struct("Uring")
            .field("sockets", &self.sockets)
            .field("recv", &recv)
            .field("sends_in_flight", &self.sends_in_flight)
            .finish_non_exhaustive()
    }
}

impl Uring {
    /// Sets up io_uring on `sockets` (`sockets[0]` sends and receives, the
    /// others only receive); `max_datagram` is the largest datagram expected
    /// (a larger one is dropped); GSO and GRO are used as `offload`
    /// allows and the kernel offers.
    pub(crate) fn new(sockets: Vec<UdpSocket>, max_datagram: usize, offload: Offload) -> io::Result<Self> {
        Self::with_receive(sockets, max_datagram, false, offload)
    }

    /// As `new`; `pool` forces the single-shot receive pool.
    pub(crate) fn with_receive(
        sockets: Vec<UdpSocket>,
        max_datagram: usize,
        pool: bool,
        offload: Offload,
    ) -> io::Result<Self> {
        crate::backend::check_sockets(&sockets)?;
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_coop_taskrun()
            .build(SQ_ENTRIES)
            .or_else(|_| IoUring::builder().setup_cqsize(CQ_ENTRIES).build(SQ_ENTRIES))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without EXT_ARG (kernel < 5.11)",
            ));
        }
        if !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "io_uring without NODROP (kernel < 5.5)"));
        }
        let max_datagram = max_datagram.clamp(64, 65_535);
        let on = udp::enable(&sockets, offload);
        let mut me = Self {
            ring,
            sockets,
            sends: Vec::new(),
            free_sends: Vec::new(),
            sends_in_flight: 0,
            recv: Recv::Gone,
            wake: None,
            arming: Vec::new(),
            ready: Vec::new(),
            queue: SendQueue::default(),
            retry: Vec::new(),
            offload: OffloadStats { gso: on.gso, gro: on.gro, ..OffloadStats::default() },
            gso_confirmed: false,
            scratch: SendScratch::default(),
            max_datagram,
            sent: 0,
            send_errors: 0,
            truncated: 0,
        };
        me.recv = if pool {
            me.pool()
        } else {
            match me.buffer_ring() {
                Ok(r) => r,
                Err(e) => {
                    info!(error = %e, "io_uring: no provided-buffer ring, using single-shot receives");
                    me.pool()
                }
            }
        };
        me.arm()?;
        me.submit()?;
        Ok(me)
    }

    /// The receive mode in use (`multishot` or `pool`).
    pub(crate) fn receive_mode(&self) -> &'static str {
        match self.recv {
            Recv::Multi { .. } => "multishot",
            Recv::Pool(_) => "pool",
            Recv::Gone => "none",
        }
    }

    /// Payload bytes a receive buffer holds: the largest datagram, or
    /// with GRO the largest coalesced one.
    fn payload_room(&self) -> usize {
        if self.offload.gro { udp::GRO_BUFFER } else { self.max_datagram }
    }

    fn buffer_ring(&mut self) -> io::Result<Recv> {
        // What the kernel writes: `io_uring_recvmsg_out`, the name, the
        // control messages, the payload.
        let buf_len = (16 + NAME_LEN as usize + RECV_CONTROL + self.payload_room()).next_multiple_of(64);
        let aim = if self.offload.gro { RING_BYTES_GRO } else { RING_BYTES };
        let n = (aim / buf_len).clamp(64, 4096);
        let n = u16::try_from(1usize << n.ilog2()).unwrap_or(4096);
        let mut bufs = BufRing::new(n, buf_len)?;
        // SAFETY: the entries are page-aligned and `n` entries long; they
        // live in `self.recv` until `Uring::drop` unregisters the ring (or
        // leaks them when the kernel may still use them).
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                bufs.entries.ptr.as_ptr() as u64,
                n,
                BGID,
                0,
            )?
        };
        bufs.registered = true;
        bufs.publish();
        let arms = (0..self.sockets.len())
            .map(|_| {
                let mut msg = Box::new(empty_msghdr());
                msg.msg_namelen = NAME_LEN;
                msg.msg_controllen = RECV_CONTROL as _;
                MultiArm { msg, armed: false }
            })
            .collect();
        Ok(Recv::Multi { bufs, arms, received: false, refused: false })
    }

    fn pool(&self) -> Recv {
        Recv::Pool(
            (0..POOL * self.sockets.len())
                .map(|i| {
                    Box::new(RecvOne {
                        socket: i / POOL,
                        msg: empty_msghdr(),
                        iov: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
                        name: NameBuf([0; 128]),
                        control: Control::default(),
                        buf: vec![0u8; self.payload_room() + 1],
                        armed: false,
                    })
                })
                .collect(),
        )
    }

    /// Puts an entry on the submission queue, submitting first if it is full.
    ///
    /// # Safety
    ///
    /// Every buffer the entry points to must stay valid and untouched until
    /// its completion is reaped.
    unsafe fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller's promise.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Submits the queue (no wait), riding out transient errors.
    fn submit(&mut self) -> io::Result<()> {
        for _ in 0..64 {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {
                    self.reap();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Arms whatever receive is not armed, on every socket.
    fn arm(&mut self) -> io::Result<()> {
        let Self { sockets, recv, arming, wake, .. } = self;
        let fd = |i: usize| types::Fd(sockets[i].as_raw_fd());
        // Reused: no allocation once it has grown to `POOL * sockets`.
        let mut sqes = std::mem::take(arming);
        sqes.clear();
        match recv {
            Recv::Multi { arms, refused: false, .. } => {
                for (i, a) in arms.iter_mut().enumerate().filter(|(_, a)| !a.armed) {
                    a.armed = true;
                    sqes.push(
                        opcode::RecvMsgMulti::new(fd(i), &raw const *a.msg, BGID)
                            .build()
                            .user_data(tag(K_MULTI, i)),
                    );
                }
            }
            Recv::Pool(slots) => {
                for (i, s) in slots.iter_mut().enumerate().filter(|(_, s)| !s.armed) {
                    let s = &mut **s;
                    s.armed = true;
                    s.iov = libc::iovec { iov_base: s.buf.as_mut_ptr().cast(), iov_len: s.buf.len() };
                    s.msg = empty_msghdr();
                    s.msg.msg_name = (&raw mut s.name).cast();
                    s.msg.msg_namelen = NAME_LEN;
                    s.msg.msg_iov = &raw mut s.iov;
                    s.msg.msg_iovlen = 1;
                    s.msg.msg_control = s.control.0.as_mut_ptr().cast();
                    s.msg.msg_controllen = RECV_CONTROL as _;
                    sqes.push(
                        opcode::RecvMsg::new(fd(s.socket), &raw mut s.msg).build().user_data(tag(K_ONE, i)),
                    );
                }
            }
            _ => {}
        }
        if let Some(w) = wake.as_mut().filter(|w| !w.armed) {
            w.armed = true;
            sqes.push(
                opcode::Read::new(types::Fd(w.file.as_raw_fd()), (&raw mut *w.buf).cast::<u8>(), 8)
                    .build()
                    .user_data(tag(K_WAKE, 0)),
            );
        }
        let mut result = Ok(());
        for (k, sqe) in sqes.iter().enumerate() {
            // SAFETY: each socket's multishot header is boxed in
            // `self.recv` and the pool's slots are boxed there too; none is
            // moved, changed or freed while armed: a header or slot is
            // rewritten only after its final completion (`armed` false),
            // `switch_to_pool` drops the headers only when none is armed,
            // and `Uring::drop` waits for the final completions (or leaks
            // the memory). The sockets live in `self.sockets` as long. The
            // eventfd read's buffer is boxed in `self.wake` and likewise
            // kept until its completion (or leaked by `drop`).
            if let Err(e) = unsafe { self.push(sqe) } {
                // Not queued: nothing refers to these; arm them next time.
                for sqe in &sqes[k..] {
                    self.disarm(sqe.get_user_data());
                }
                result = Err(e);
                break;
            }
        }
        self.arming = sqes;
        result
    }

    /// Marks the receive `user_data` names as not armed.
    fn disarm(&mut self, user_data: u64) {
        let index = index_of(user_data);
        match (&mut self.recv, user_data >> KIND_SHIFT) {
            (Recv::Multi { arms, .. }, K_MULTI) => {
                if let Some(a) = arms.get_mut(index) {
                    a.armed = false;
                }
            }
            (Recv::Pool(slots), K_ONE) => {
                if let Some(s) = slots.get_mut(index) {
                    s.armed = false;
                }
            }
            (_, K_WAKE) => {
                if let Some(w) = &mut self.wake {
                    w.armed = false;
                }
            }
            _ => {}
        }
    }

    /// Takes every completion: send slots go back to the free list, receive
    /// completions wait in `ready` for the next `wait`.
    fn reap(&mut self) {
        let Self {
            ring,
            sends,
            free_sends,
            sends_in_flight,
            ready,
            sent,
            send_errors,
            wake,
            retry,
            offload,
            ..
        } = self;
        for cqe in ring.completion() {
            let user_data = cqe.user_data();
            match user_data >> KIND_SHIFT {
                K_SEND => {
                    let i = index_of(user_data);
                    free_sends.push(i);
                    *sends_in_flight -= 1;
                    // The kernel is done with it: let the buffers go.
                    let Some(op) = sends.get_mut(i) else { continue };
                    let n = op.bytes.len() as u64;
                    let r = cqe.result();
                    if r >= 0 {
                        *sent += n;
                        if op.segmented {
                            offload.gso_sends += 1;
                            offload.gso_segments += n;
                        }
                    } else if op.segmented && udp::refuses_gso(-r) {
                        // This path cannot segment: plain sends from now
                        // on, and these datagrams again, one by one.
                        if offload.gso {
                            warn!(
                                error = %io::Error::from_raw_os_error(-r),
                                "UDP GSO send refused; sending without segmentation offload"
                            );
                            offload.gso = false;
                        }
                        let to = op.to;
                        retry.extend(op.bytes.drain(..).map(|b| (to, b)));
                    } else {
                        *send_errors += n;
                    }
                    op.bytes.clear();
                }
                K_CANCEL => {}
                K_WAKE => {
                    // Read (or failed): re-armed by the next `arm`.
                    if let Some(w) = wake {
                        w.armed = false;
                    }
                }
                _ => ready.push(Done { user_data, result: cqe.result(), flags: cqe.flags() }),
            }
        }
    }

    /// Hands the receive completions in `ready` to `on_datagram`, recycles
    /// their buffers and re-arms what ended.
    fn deliver(&mut self, on_datagram: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<()> {
        let mut ready = std::mem::take(&mut self.ready);
        for d in ready.drain(..) {
            let index = index_of(d.user_data);
            match (&mut self.recv, d.user_data >> KIND_SHIFT) {
                (Recv::Multi { bufs, arms, received, refused }, K_MULTI) if index < arms.len() => {
                    let MultiArm { msg, armed } = &mut arms[index];
                    if !cqueue::more(d.flags) {
                        *armed = false;
                    }
                    if d.result < 0 {
                        if d.result == -libc::EINVAL && !*received {
                            *refused = true; // no multishot receive here
                        } else if d.result != -libc::ENOBUFS {
                            warn!(error = %io::Error::from_raw_os_error(-d.result), "io_uring: receive failed");
                        }
                        continue;
                    }
                    *received = true;
                    let Some(bid) = cqueue::buffer_select(d.flags) else { continue };
                    if let Some(data) = bufs.get(bid, d.result as usize) {
                        match types::RecvMsgOut::parse(data, msg) {
                            Ok(out)
                                if !out.is_payload_truncated()
                                    && !out.is_name_data_truncated()
                                    && !out.is_control_data_truncated() =>
                            {
                                if let Some(from) = udp::parse_name(out.name_data()) {
                                    let r = udp::deliver_segments(
                                        from,
                                        out.payload_data(),
                                        out.control_data(),
                                        self.max_datagram,
                                        on_datagram,
                                    );
                                    self.offload.count(r, &mut self.truncated);
                                }
                            }
                            _ => self.truncated += 1,
                        }
                    }
                    bufs.put(bid);
                }
                (Recv::Pool(slots), K_ONE) if index < slots.len() => {
                    let s = &mut *slots[index];
                    s.armed = false;
                    if d.result < 0 {
                        if d.result != -libc::EINTR {
                            warn!(error = %io::Error::from_raw_os_error(-d.result), "io_uring: receive failed");
                        }
                        continue;
                    }
                    let n = (d.result as usize).min(s.buf.len());
                    if s.msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
                        self.truncated += 1;
                        continue;
                    }
                    let name_len = (s.msg.msg_namelen as usize).min(s.name.0.len());
                    let control_len = s.msg.msg_controllen.min(RECV_CONTROL);
                    if let Some(from) = udp::parse_name(&s.name.0[..name_len]) {
                        let r = udp::deliver_segments(
                            from,
                            &s.buf[..n],
                            &s.control.0[..control_len],
                            self.max_datagram,
                            on_datagram,
                        );
                        self.offload.count(r, &mut self.truncated);
                    }
                }
                _ => {}
            }
        }
        self.ready = ready;
        let mut to_pool = false;
        if let Recv::Multi { bufs, arms, refused, .. } = &self.recv {
            bufs.publish();
            // Switch only once every socket's multishot receive has ended.
            to_pool = *refused && arms.iter().all(|a| !a.armed);
        }
        if to_pool {
            self.switch_to_pool();
        }
        self.arm()
    }

    /// The kernel refused multishot receive: unregister the buffer ring and
    /// use the single-shot pool. Called only when no multishot receive is
    /// armed.
    fn switch_to_pool(&mut self) {
        info!("io_uring: multishot receive unsupported, using single-shot receives");
        let old = std::mem::replace(&mut self.recv, Recv::Gone);
        if let Recv::Multi { bufs, arms, .. } = old {
            debug_assert!(arms.iter().all(|a| !a.armed));
            // Every multishot receive has ended (its last completion came
            // without MORE), so the kernel no longer writes the buffers.
            if self.ring.submitter().unregister_buf_ring(BGID).is_err() {
                std::mem::forget(bufs); // the kernel may still read the entries
                std::mem::forget(arms);
            }
        }
        self.recv = self.pool();
    }

    fn anything_in_flight(&self) -> bool {
        self.sends_in_flight > 0
            || self.wake.as_ref().is_some_and(|w| w.armed)
            || match &self.recv {
                Recv::Multi { arms, .. } => arms.iter().any(|a| a.armed),
                Recv::Pool(slots) => slots.iter().any(|s| s.armed),
                Recv::Gone => false,
            }
    }

    /// Sends batch `k` of the planned queue, the first GSO send, with a
    /// plain `sendmsg` after what was queued before it (so a refusal is
    /// known at once and nothing is reordered): on success GSO is
    /// confirmed; if the kernel refuses to segment, GSO is turned off and
    /// batches `k..` become one datagram each. Returns whether batch `k`
    /// was dealt with (sent, or lost to another error).
    fn first_gso_send(&mut self, k: usize) -> bool {
        if !self.ring.submission().is_empty() && self.submit().is_err() {
            return false; // sent through the ring instead, like the rest
        }
        let b = self.queue.batches()[k];
        let n = b.len() as u64;
        match udp::send_batches(&self.sockets[0], &self.queue, k, 1, &mut self.scratch) {
            Sent::Batches(_) => {
                self.gso_confirmed = true;
                self.sent += n;
                self.offload.gso_sends += 1;
                self.offload.gso_segments += n;
                true
            }
            Sent::Failed(e) if e.raw_os_error().is_some_and(udp::refuses_gso) => {
                warn!(error = %e, "UDP GSO send refused; sending without segmentation offload");
                self.offload.gso = false;
                self.queue.unsegment_from(k);
                false
            }
            Sent::Failed(_) => {
                self.send_errors += n;
                true
            }
        }
    }

    /// Puts batch `k` of the planned queue into a free send slot and its
    /// `SendMsg` on the submission queue (a send error counted if it
    /// cannot be queued).
    fn push_send(&mut self, k: usize) {
        let b = self.queue.batches()[k];
        let index = loop {
            if let Some(i) = self.free_sends.pop() {
                break i;
            }
            if self.sends.len() < MAX_SENDS {
                self.sends.push(Box::new(SendOp {
                    msg: empty_msghdr(),
                    iovs: Vec::new(),
                    addr: SockAddr::from(b.to),
                    to: b.to,
                    control: Control::default(),
                    segmented: false,
                    bytes: Vec::new(),
                }));
                break self.sends.len() - 1;
            }
            // Every slot is in flight: wait for one.
            if self.enter(Duration::from_millis(100)).and_then(|()| self.submit()).is_err() {
                self.send_errors += b.len() as u64;
                return;
            }
            self.reap();
        };
        let op = &mut *self.sends[index];
        op.bytes.clear();
        op.bytes.extend(self.queue.datagrams(&b).cloned());
        udp::iovecs(&self.queue, &b, &mut op.iovs);
        op.addr = SockAddr::from(b.to);
        op.to = b.to;
        op.msg = empty_msghdr();
        op.msg.msg_name = op.addr.as_ptr().cast_mut().cast();
        op.msg.msg_namelen = op.addr.len();
        op.msg.msg_iov = op.iovs.as_mut_ptr();
        op.msg.msg_iovlen = op.iovs.len() as _;
        op.segmented = false;
        if let Some(size) = b.segment() {
            op.segmented = true;
            op.msg.msg_controllen = udp::write_gso(&mut op.control, size) as _;
            op.msg.msg_control = op.control.0.as_mut_ptr().cast();
        }
        let sqe = opcode::SendMsg::new(types::Fd(self.sockets[0].as_raw_fd()), &raw const op.msg)
            .build()
            .user_data(tag(K_SEND, index));
        self.sends_in_flight += 1;
        // SAFETY: the slot is boxed in `self.sends` (its address does not
        // change when the vector grows) and it is neither on the free list
        // nor written again until its completion is reaped in `reap`; the
        // header, address and control message it points to are inside it,
        // its iovecs are in its own `Vec`, not pushed to until then (so
        // their buffer does not move), and they point into the `Bytes` it
        // holds (shared memory that does not move and is freed only once
        // every holder dropped it). `Uring::drop` waits for in-flight
        // sends (or leaks the slots).
        if unsafe { self.push(&sqe) }.is_err() {
            // Not queued: nothing refers to the slot.
            self.sends_in_flight -= 1;
            self.sends[index].bytes.clear();
            self.free_sends.push(index);
            self.send_errors += b.len() as u64;
        }
    }

    /// Waits for completions at most `timeout`.
    fn enter(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Backend for Uring {
    fn wait(&mut self, timeout: Duration, on_datagram: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<()> {
        if self.wake.as_ref().is_some_and(|w| !w.armed) {
            self.arm()?;
            self.submit()?;
        }
        self.reap();
        if self.ready.is_empty() && !timeout.is_zero() {
            self.enter(timeout)?;
            self.reap();
        }
        self.deliver(on_datagram)?;
        // Re-armed receives go to the kernel now, not at the next flush.
        if self.ring.submission().is_empty() { Ok(()) } else { self.submit() }
    }

    fn send(&mut self, to: SocketAddr, bytes: &Bytes) {
        self.queue.push(to, bytes);
        if self.queue.len() >= crate::backend::MAX_QUEUED {
            let _ = self.flush_sends();
        }
    }

    fn flush_sends(&mut self) -> io::Result<()> {
        // A second round sends again, one by one, what a refused GSO send
        // carried (GSO is off by then, so there is no third).
        for _ in 0..2 {
            if !self.queue.is_empty() {
                self.queue.plan(if self.offload.gso { udp::MAX_SEGMENTS } else { 1 });
                // `first_gso_send` may cut the rest into more batches.
                let mut k = 0;
                while k < self.queue.batches().len() {
                    let first_gso = !self.gso_confirmed && self.queue.batches()[k].segment().is_some();
                    if !(first_gso && self.first_gso_send(k)) {
                        self.push_send(k);
                    }
                    k += 1;
                }
                self.queue.clear();
            }
            if !self.ring.submission().is_empty() {
                self.submit()?;
            }
            // UDP sends mostly complete inline: take their completions now.
            self.reap();
            if self.retry.is_empty() {
                break;
            }
            for (to, bytes) in std::mem::take(&mut self.retry) {
                self.queue.push(to, &bytes);
            }
        }
        Ok(())
    }

    fn counters(&self) -> (u64, u64) {
        (self.sent, self.send_errors)
    }

    fn oversize(&self) -> u64 {
        self.truncated
    }

    fn offload(&self) -> OffloadStats {
        self.offload
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn set_waker(&mut self, fd: std::os::fd::OwnedFd) -> io::Result<()> {
        if self.wake.as_ref().is_some_and(|w| w.armed) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "io_uring: a waker is already set"));
        }
        self.wake = Some(WakeRead { file: std::fs::File::from(fd), buf: Box::new(0), armed: false });
        self.arm()?;
        self.submit()
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Cancel the receives on every socket, then wait until the kernel
        // has finished with every buffer we lent it.
        let cancels: Vec<u64> = match &self.recv {
            Recv::Multi { arms, .. } => {
                arms.iter().enumerate().filter(|(_, a)| a.armed).map(|(i, _)| tag(K_MULTI, i)).collect()
            }
            Recv::Pool(slots) => {
                slots.iter().enumerate().filter(|(_, s)| s.armed).map(|(i, _)| tag(K_ONE, i)).collect()
            }
            _ => Vec::new(),
        };
        let cancels: Vec<u64> = cancels
            .into_iter()
            .chain(self.wake.as_ref().filter(|w| w.armed).map(|_| tag(K_WAKE, 0)))
            .collect();
        for target in cancels {
            let sqe = opcode::AsyncCancel::new(target).build().user_data(tag(K_CANCEL, 0));
            // SAFETY: a cancel request points to no memory.
            let _ = unsafe { self.push(&sqe) };
        }
        let deadline = Instant::now() + QUIESCE;
        let _ = self.submit();
        while self.anything_in_flight() && Instant::now() < deadline {
            let _ = self.enter(Duration::from_millis(50));
            self.reap();
            for d in std::mem::take(&mut self.ready) {
                if !cqueue::more(d.flags) {
                    self.disarm(d.user_data);
                }
            }
        }
        if self.anything_in_flight() {
            warn!("io_uring: operations still in flight at shutdown; leaking their buffers");
            std::mem::forget(std::mem::take(&mut self.sends));
            std::mem::forget(std::mem::replace(&mut self.recv, Recv::Gone));
            std::mem::forget(self.wake.take());
            return;
        }
        if let Recv::Multi { bufs, .. } = &self.recv {
            if bufs.registered && self.ring.submitter().unregister_buf_ring(BGID).is_err() {
                // The kernel may still read the entries until the ring goes.
                std::mem::forget(std::mem::replace(&mut self.recv, Recv::Gone));
            }
        }
        if self.truncated > 0 {
            debug!(truncated = self.truncated, "io_uring: datagrams too large were dropped");
        }
    }
}

/// Whether this kernel (and its seccomp policy) lets a process set up the
/// io_uring backend: a UDP socket on loopback is opened on it and dropped.
pub fn available() -> bool {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| Uring::new(vec![s], 2048, Offload::OFF)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(pool: bool, offload: Offload) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a_addr = a.local_addr().unwrap();
        let mut u = Uring::with_receive(vec![a], 1500, pool, offload).unwrap();
        assert_eq!(u.receive_mode(), if pool { "pool" } else { "multishot" });
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b_addr = b.local_addr().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        // Sends of one flush: all arrive, in order (loopback keeps it);
        // with GSO as two segmented sends, cut by the kernel for a socket
        // without GRO.
        for i in 0..100u32 {
            u.send(b_addr, &Bytes::copy_from_slice(&i.to_be_bytes()));
        }
        u.flush_sends().unwrap();
        let mut buf = [0u8; 64];
        for i in 0..100u32 {
            let (n, from) = b.recv_from(&mut buf).unwrap_or_else(|e| panic!("datagram {i}: {e}"));
            assert_eq!((from, &buf[..n]), (a_addr, &i.to_be_bytes()[..]));
        }
        assert_eq!(u.counters(), (100, 0));
        let o = u.offload();
        if o.gso {
            assert_eq!((o.gso_sends, o.gso_segments), (2, 100));
        } else {
            assert_eq!((o.gso_sends, o.gso_segments), (0, 0));
        }

        // Receives, more than the pool and than one wait, with the source,
        // in rounds (the test socket's receive buffer is the default).
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        for round in 0..20u32 {
            for i in round * 100..round * 100 + 100 {
                b.send_to(&i.to_be_bytes(), a_addr).unwrap();
            }
            if round == 19 {
                b.send_to(&[7u8; 1500], a_addr).unwrap();
                b.send_to(&[8u8; 4000], a_addr).unwrap(); // too large: dropped
                b.send_to(b"end", a_addr).unwrap();
            }
            let want = if round == 19 { 2002 } else { (round as usize + 1) * 100 };
            while got.len() < want {
                assert!(Instant::now() < deadline, "got {} datagrams", got.len());
                u.wait(Duration::from_millis(50), &mut |from, bytes| {
                    assert_eq!(from, b_addr);
                    got.push(bytes.to_vec());
                })
                .unwrap();
            }
        }
        assert_eq!(got.last().unwrap(), b"end");
        assert_eq!(got.len(), 2002, "one datagram too large, the rest all arrive");
        for (i, g) in got.iter().take(2000).enumerate() {
            assert_eq!(g[..], (i as u32).to_be_bytes());
        }
        assert_eq!(got[2000], vec![7u8; 1500]);
        assert_eq!(u.oversize(), 1);

        // A wait with nothing to receive returns after about its timeout.
        let t = Instant::now();
        u.wait(Duration::from_millis(30), &mut |_, _| panic!("nothing was sent")).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(25) && t.elapsed() < Duration::from_secs(2));
        drop(u);
    }

    #[test]
    fn multishot_receive_and_batched_sends() {
        exchange(false, Offload::ON);
        exchange(false, Offload::OFF);
    }

    #[test]
    fn single_shot_pool_receive_and_batched_sends() {
        exchange(true, Offload::ON);
        exchange(true, Offload::OFF);
    }

    /// `body` on io_uring with multishot receive (`pool` false) or the
    /// single-shot pool, with GSO and GRO on, then off.
    fn uring(pool: bool, body: impl Fn(&dyn Fn(Vec<UdpSocket>) -> Box<dyn Backend>)) {
        for offload in [Offload::ON, Offload::OFF] {
            body(&|s| {
                let u = Uring::with_receive(s, 1500, pool, offload).unwrap();
                assert_eq!(u.receive_mode(), if pool { "pool" } else { "multishot" });
                Box::new(u)
            });
        }
    }

    #[test]
    fn multishot_receive_on_two_sockets() {
        uring(false, |open| crate::backend::tests::two_sockets(open));
    }

    #[test]
    fn single_shot_pool_receive_on_two_sockets() {
        uring(true, |open| crate::backend::tests::two_sockets(open));
    }

    #[test]
    fn multishot_waker_ends_a_wait() {
        uring(false, |open| crate::backend::tests::waker(open));
    }

    #[test]
    fn single_shot_pool_waker_ends_a_wait() {
        uring(true, |open| crate::backend::tests::waker(open));
    }

    #[test]
    fn multishot_receive_counts_oversize_datagrams() {
        uring(false, |open| crate::backend::tests::oversize(open));
    }

    #[test]
    fn single_shot_pool_counts_oversize_datagrams() {
        uring(true, |open| crate::backend::tests::oversize(open));
    }

    #[test]
    fn multishot_multicast_on_loopback() {
        uring(false, |open| crate::backend::tests::multicast(open));
    }

    #[test]
    fn single_shot_pool_multicast_on_loopback() {
        uring(true, |open| crate::backend::tests::multicast(open));
    }
}
