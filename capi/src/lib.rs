//! `libringfence`: the ringfence client as a C library whose API follows
//! Spread's `sp.h`, so a Spread application moves over by relinking and a
//! few small changes (`docs/c-api.md` lists them).
//!
//! This crate is a thin shell over [`ringfence_client::Client`]: it keeps
//! the open connections in a table by mailbox, turns client events into
//! Spread-shaped messages ([`mailbox`]), and copies them into the caller's
//! buffers. It builds `libringfence.so` and `libringfence.a`; the
//! declarations are in `capi/include/ringfence.h` (and `sp.h`, which
//! includes it).
//!
//! ```text
//!  C application                     libringfence                    daemon
//!  SP_connect(path, name) ──► Client::connect, exact reads ──Hello──►
//!  SP_join / SP_multicast ──► Client::join / multicast ──frames──►
//!  SP_receive ◄── Mailbox (Spread flags, membership body) ◄── Client::poll ◄──
//!  select()/poll() on the mailbox: it is the socket's file descriptor
//! ```
//!
//! A mailbox is the connection's socket descriptor, as in Spread, and the
//! library reads no further than the end of the message it decodes, so
//! `select(2)` on the mailbox says exactly whether `SP_receive` would find
//! a message. One thread may receive while others send: a blocked receive
//! waits in `poll(2)` without holding the connection's lock.

// The C ABI: raw pointers from the caller, `#[unsafe(no_mangle)]` exports.
// Every dereference is in an `unsafe` block whose contract is the function's
// documented `# Safety`.
#![allow(unsafe_code)]

pub mod mailbox;
pub mod spread;

use mailbox::{Delivery, Mailbox, VS_SETS_AT, service_of};
use ringfence_client::{Address, Client, ClientError, ConnectOptions};
use ringfence_proto::wire::client::{ClientEncodeError, RefuseCode};
use spread::*;
use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_int, c_uint};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A Spread mailbox: the connection's socket descriptor.
pub type MailboxId = c_int;

/// One group or member name slot of the C arrays.
pub type NameSlot = [c_char; MAX_GROUP_NAME];

/// `group_id`: identifies a view of a group uniquely over time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupId {
    /// Ring sequence (high, low 32 bits), ring representative, group view
    /// counter (high, low 32 bits).
    pub id: [i32; 5],
}

/// `vs_set_info`: one virtual-synchrony set of a membership message.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsSetInfo {
    /// Members in the set.
    pub num_members: c_uint,
    /// Offset of the first name in the membership body.
    pub members_offset: c_uint,
}

/// `membership_info`: what `SP_get_memb_info` extracts.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MembershipInfo {
    /// The view's id.
    pub gid: GroupId,
    /// The member that joined, left or disconnected (empty otherwise).
    pub changed_member: NameSlot,
    /// VS sets in the message.
    pub num_vs_sets: c_uint,
    /// This member's VS set.
    pub my_vs_set: VsSetInfo,
}

/// An open connection.
struct Session {
    inner: Mutex<Inner>,
}

struct Inner {
    client: Client,
    mailbox: Mailbox,
    /// Set once the connection failed: every later call says so.
    broken: Option<c_int>,
}

static SESSIONS: Mutex<BTreeMap<MailboxId, Arc<Session>>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn session(mbox: MailboxId) -> Result<Arc<Session>, c_int> {
    lock(&SESSIONS).get(&mbox).cloned().ok_or(ILLEGAL_SESSION)
}

/// The Spread code of a failed call on an open connection.
fn code_of(e: &ClientError) -> c_int {
    match e {
        ClientError::Invalid(ClientEncodeError::LimitExceeded { field: "payload", .. })
        | ClientError::Invalid(ClientEncodeError::FrameTooLarge { .. }) => MESSAGE_TOO_LONG,
        ClientError::Invalid(_) => ILLEGAL_GROUP,
        ClientError::Protocol(_) => NET_ERROR_ON_SESSION,
        _ => CONNECTION_CLOSED,
    }
}

/// The Spread code of a failed connect.
fn connect_code(e: &ClientError) -> c_int {
    match e {
        ClientError::Io(_) => COULD_NOT_CONNECT,
        ClientError::Refused { code, .. } => match code {
            RefuseCode::VersionMismatch => REJECT_VERSION,
            RefuseCode::AuthUnsupported | RefuseCode::AuthFailed => REJECT_AUTH,
            RefuseCode::NameInUse => REJECT_NOT_UNIQUE,
            RefuseCode::TooManyClients => REJECT_QUOTA,
            _ => CONNECTION_CLOSED,
        },
        ClientError::Invalid(_) => REJECT_ILLEGAL_NAME,
        ClientError::Options(_) => REJECT_AUTH,
        _ => CONNECTION_CLOSED,
    }
}

/// Where `spread_name` says the daemon is: a path (has a `/`), `PORT@HOST`,
/// `HOST:PORT`, or a daemon name whose socket is at the default place,
/// `$TMPDIR/ringfence/NAME/client.sock`.
fn address(spread_name: &str) -> Option<Address> {
    use std::net::ToSocketAddrs;
    if spread_name.is_empty() {
        return None;
    }
    if spread_name.contains('/') {
        return Some(Address::Unix(PathBuf::from(spread_name)));
    }
    let tcp = match spread_name.split_once('@') {
        Some((port, host)) => Some(format!("{host}:{port}")),
        None => spread_name.contains(':').then(|| spread_name.to_string()),
    };
    match tcp {
        Some(t) => t.to_socket_addrs().ok()?.next().map(Address::Tcp),
        None => {
            Some(Address::Unix(std::env::temp_dir().join("ringfence").join(spread_name).join("client.sock")))
        }
    }
}

/// Reads a C string without a length bound beyond its NUL, refusing one
/// longer than `max`.
///
/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn c_str_unbounded<'a>(p: *const c_char, max: usize) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the contract says `p` is NUL-terminated.
    let s = unsafe { CStr::from_ptr(p) }.to_str().ok()?;
    (s.len() <= max).then_some(s)
}

/// Copies `s` into a name slot, truncated to `MAX_GROUP_NAME - 1` bytes and
/// NUL-terminated.
///
/// # Safety
/// `dst` is null or writable for `MAX_GROUP_NAME` bytes.
unsafe fn put_name(dst: *mut c_char, s: &str) {
    if dst.is_null() {
        return;
    }
    let n = s.len().min(MAX_GROUP_NAME - 1);
    // SAFETY: `n + 1 <= MAX_GROUP_NAME` bytes are written.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), dst, n);
        *dst.add(n) = 0;
    }
}

/// A name for a client that gave none: `p<pid>x<n>`.
fn made_up_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("p{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Connects to the daemon at `spread_name` as `private_name` and opens a
/// mailbox (Spread's `SP_connect`).
///
/// `spread_name`: a Unix socket path (contains `/`), a daemon name (its
/// socket at the default `$TMPDIR/ringfence/NAME/client.sock`), or
/// `PORT@HOST` / `HOST:PORT` for TCP with the token in `RINGFENCE_TOKEN`.
/// `private_name`: 1 to 32 printable ASCII bytes without `#`; null or empty
/// makes one up. `priority` is ignored, as in Spread. `group_membership`
/// zero: no membership messages. On success `*mbox` is the mailbox and
/// `private_group` holds the private name (`#name#daemon`); returns
/// `ACCEPT_SESSION`, else a negative error code.
///
/// # Safety
/// `spread_name` and `private_name` are null or NUL-terminated strings;
/// `mbox` is null or writable; `private_group` is null or writable for
/// `MAX_GROUP_NAME` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_connect(
    spread_name: *const c_char,
    private_name: *const c_char,
    priority: c_int,
    group_membership: c_int,
    mbox: *mut MailboxId,
    private_group: *mut c_char,
) -> c_int {
    let _ = priority;
    if mbox.is_null() {
        return ILLEGAL_MESSAGE;
    }
    // SAFETY: the contract of this function.
    let Some(addr) = (unsafe { c_str_unbounded(spread_name, 4096) }).and_then(address) else {
        return ILLEGAL_SPREAD;
    };
    let name = if private_name.is_null() {
        made_up_name()
    } else {
        // SAFETY: the contract of this function.
        match unsafe { c_str_unbounded(private_name, MAX_PRIVATE_NAME) } {
            Some("") => made_up_name(),
            Some(n) => n.to_string(),
            None => return REJECT_ILLEGAL_NAME,
        }
    };
    let token = match addr {
        Address::Tcp(_) => std::env::var("RINGFENCE_TOKEN").ok(),
        Address::Unix(_) => None,
    };
    let mut client = match Client::connect_with(&addr, &name, &ConnectOptions { tls: None, token }) {
        Ok(c) => c,
        Err(e) => return connect_code(&e),
    };
    client.set_exact_reads(true);
    let id = client.as_raw_fd();
    let me = client.private_name().to_string();
    let s = Session {
        inner: Mutex::new(Inner { client, mailbox: Mailbox::new(&me, group_membership != 0), broken: None }),
    };
    lock(&SESSIONS).insert(id, Arc::new(s));
    // SAFETY: the contract of this function.
    unsafe {
        *mbox = id;
        put_name(private_group, &me);
    }
    ACCEPT_SESSION
}

/// Says goodbye and closes the mailbox (Spread's `SP_disconnect`). A thread
/// blocked in `SP_receive` on it returns `CONNECTION_CLOSED`. Returns 0, or
/// `ILLEGAL_SESSION`.
#[unsafe(no_mangle)]
pub extern "C" fn SP_disconnect(mbox: MailboxId) -> c_int {
    let Some(s) = lock(&SESSIONS).remove(&mbox) else {
        return ILLEGAL_SESSION;
    };
    let mut inner = lock(&s.inner);
    let _ = inner.client.close();
    inner.broken = Some(CONNECTION_CLOSED);
    0
}

/// Runs `f` on an open connection, marking it broken if the connection fails.
fn with_session(mbox: MailboxId, f: impl FnOnce(&mut Inner) -> Result<c_int, ClientError>) -> c_int {
    let s = match session(mbox) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut inner = lock(&s.inner);
    if let Some(code) = inner.broken {
        return code;
    }
    match f(&mut inner) {
        Ok(n) => n,
        Err(e) => {
            let code = code_of(&e);
            if matches!(code, CONNECTION_CLOSED | NET_ERROR_ON_SESSION) {
                inner.broken = Some(code);
            }
            code
        }
    }
}

/// A group name argument: 1 to 32 bytes of UTF-8.
///
/// # Safety
/// `group` is null or a NUL-terminated string.
unsafe fn group_arg<'a>(group: *const c_char) -> Option<&'a str> {
    // SAFETY: the caller's contract.
    unsafe { c_str_unbounded(group, MAX_GROUP_NAME - 1) }.filter(|g| !g.is_empty())
}

/// Joins `group` (Spread's `SP_join`). Returns 0, or `ILLEGAL_GROUP`,
/// `ILLEGAL_SESSION`, `CONNECTION_CLOSED`. A refusal by the daemon (access
/// control) arrives later as a `REJECT_MESS` message.
///
/// # Safety
/// `group` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_join(mbox: MailboxId, group: *const c_char) -> c_int {
    // SAFETY: the contract of this function.
    let Some(group) = (unsafe { group_arg(group) }) else {
        return ILLEGAL_GROUP;
    };
    with_session(mbox, |s| {
        s.client.join(group)?;
        Ok(0)
    })
}

/// Leaves `group` (Spread's `SP_leave`). Messages of the group ordered
/// before the leave still arrive; no self-leave message follows (the
/// daemon sends none, docs/c-api.md). Returns 0, or `ILLEGAL_GROUP`,
/// `ILLEGAL_SESSION`, `CONNECTION_CLOSED`.
///
/// # Safety
/// `group` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_leave(mbox: MailboxId, group: *const c_char) -> c_int {
    // SAFETY: the contract of this function.
    let Some(group) = (unsafe { group_arg(group) }) else {
        return ILLEGAL_GROUP;
    };
    with_session(mbox, |s| {
        s.client.leave(group)?;
        s.mailbox.left(group);
        Ok(0)
    })
}

/// Multicasts `mess` to one group (Spread's `SP_multicast`); see
/// [`SP_multigroup_multicast`].
///
/// # Safety
/// `group` is null or a NUL-terminated string; `mess` is readable for
/// `mess_len` bytes (or null with `mess_len` 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_multicast(
    mbox: MailboxId,
    service_type: c_int,
    group: *const c_char,
    mess_type: i16,
    mess_len: c_int,
    mess: *const c_char,
) -> c_int {
    // SAFETY: the contract of this function.
    let Some(group) = (unsafe { c_str_unbounded(group, MAX_GROUP_NAME - 1) }) else {
        return ILLEGAL_GROUP;
    };
    // SAFETY: the contract of this function.
    unsafe { multicast(mbox, service_type, &[group], mess_type, mess_len, mess) }
}

/// Multicasts `mess` to `num_groups` groups (Spread's
/// `SP_multigroup_multicast`). `service_type`: one of the service flags
/// (the strongest wins if several are set), optionally `SELF_DISCARD`.
/// Returns `mess_len`, or `ILLEGAL_SERVICE`, `ILLEGAL_GROUP`,
/// `ILLEGAL_MESSAGE`, `MESSAGE_TOO_LONG`, `ILLEGAL_SESSION`,
/// `CONNECTION_CLOSED`. Waits while the daemon's flow control holds the
/// connection back.
///
/// # Safety
/// `groups` is readable for `num_groups` slots of `MAX_GROUP_NAME` bytes;
/// `mess` is readable for `mess_len` bytes (or null with `mess_len` 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_multigroup_multicast(
    mbox: MailboxId,
    service_type: c_int,
    num_groups: c_int,
    groups: *const NameSlot,
    mess_type: i16,
    mess_len: c_int,
    mess: *const c_char,
) -> c_int {
    let Ok(n) = usize::try_from(num_groups) else {
        return ILLEGAL_GROUP;
    };
    if groups.is_null() || n == 0 {
        return ILLEGAL_GROUP;
    }
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: slot `i < num_groups` of the caller's array.
        let slot = unsafe { &*groups.add(i) };
        // SAFETY: a slot is `MAX_GROUP_NAME` initialised bytes.
        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(slot.as_ptr().cast(), MAX_GROUP_NAME) };
        let Some(len) = bytes.iter().position(|&b| b == 0) else {
            return ILLEGAL_GROUP;
        };
        let Ok(name) = std::str::from_utf8(&bytes[..len]) else {
            return ILLEGAL_GROUP;
        };
        names.push(name);
    }
    // SAFETY: the contract of this function.
    unsafe { multicast(mbox, service_type, &names, mess_type, mess_len, mess) }
}

/// # Safety
/// `mess` is readable for `mess_len` bytes (or null with `mess_len` 0).
unsafe fn multicast(
    mbox: MailboxId,
    service_type: c_int,
    groups: &[&str],
    mess_type: i16,
    mess_len: c_int,
    mess: *const c_char,
) -> c_int {
    let Some((service, self_discard)) = service_of(service_type) else {
        return ILLEGAL_SERVICE;
    };
    if groups.iter().any(|g| g.is_empty()) {
        return ILLEGAL_GROUP;
    }
    let payload: &[u8] = match usize::try_from(mess_len) {
        Ok(0) => &[],
        Ok(_) if mess.is_null() => return ILLEGAL_MESSAGE,
        // SAFETY: the caller's contract.
        Ok(n) => unsafe { std::slice::from_raw_parts(mess.cast(), n) },
        Err(_) => return ILLEGAL_MESSAGE,
    };
    with_session(mbox, |s| {
        s.client.set_self_discard(self_discard);
        s.client.multicast(service, groups, mess_type as u16, payload)?;
        Ok(mess_len)
    })
}

/// Takes the next delivery of `s`, waiting for one if `block`; `Ok(None)`
/// only when not blocking and none is ready.
fn next_delivery(s: &Session, block: bool) -> Result<Option<Delivery>, c_int> {
    loop {
        {
            let mut inner = lock(&s.inner);
            if let Some(d) = inner.mailbox.pop() {
                return Ok(Some(d));
            }
            if let Some(code) = inner.broken {
                return Err(code);
            }
            loop {
                match inner.client.poll() {
                    Ok(Some(e)) => {
                        inner.mailbox.push(e);
                        if let Some(d) = inner.mailbox.pop() {
                            return Ok(Some(d));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let code = match e {
                            ClientError::Protocol(_) => NET_ERROR_ON_SESSION,
                            _ => CONNECTION_CLOSED,
                        };
                        inner.broken = Some(code);
                        return Err(code);
                    }
                }
            }
            if !block {
                return Ok(None);
            }
        }
        // Wait for the socket without holding the lock, so other threads
        // can send meanwhile. Exact reads: readable means a message waits.
        wait_readable(s);
    }
}

/// Waits until the session's socket is readable (or closed).
fn wait_readable(s: &Session) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let fd = {
        let inner = lock(&s.inner);
        match inner.client.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(_) => return,
        }
    };
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::NONE);
}

/// The number of bytes of the next message if one waits (its header,
/// groups and body, as Spread counts them), 0 if `SP_receive` would block,
/// or a negative error code (Spread's `SP_poll`).
#[unsafe(no_mangle)]
pub extern "C" fn SP_poll(mbox: MailboxId) -> c_int {
    let s = match session(mbox) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match next_delivery(&s, false) {
        Ok(Some(d)) => {
            let size = c_int::try_from(d.size()).unwrap_or(c_int::MAX);
            lock(&s.inner).mailbox.unpop(d);
            size
        }
        Ok(None) => 0,
        Err(code) => code,
    }
}

/// Receives the next message or membership message, waiting for one
/// (Spread's `SP_receive`).
///
/// A data message: `*service_type` its service flag, `sender` the sender's
/// private name, `groups` its destination groups, `*mess_type` the
/// sender's type, `mess` the body; returns the body's length.
/// A membership message: `REG_MEMB_MESS` with a `CAUSED_BY_*` flag (or
/// `TRANSITION_MESS`), `sender` the group, `groups` the members' private names,
/// `*mess_type` this member's index among them, and `mess` the body that
/// `SP_get_memb_info` reads. A request the daemon refused: `REJECT_MESS`,
/// `*mess_type` the daemon's error code, `mess` its text.
/// `*endian_mismatch` is always 0 on success: ringfence does not carry the
/// sender's byte order.
///
/// If the groups or the body do not fit, returns `GROUPS_TOO_SHORT` (with
/// `*num_groups` = -count) or `BUFFER_TOO_SHORT` (with `*endian_mismatch`
/// = -length), sets `*service_type` and `*mess_type`, and keeps the
/// message for the next call; with `DROP_RECV` set in `*service_type` on
/// input, it delivers what fits, drops the rest and returns the same code.
///
/// # Safety
/// `service_type`, `num_groups`, `mess_type` and `endian_mismatch` are
/// writable (`*service_type` readable); `sender` is writable for
/// `MAX_GROUP_NAME` bytes; `groups` for `max_groups` slots; `mess` for
/// `max_mess_len` bytes. `groups` and `mess` may be null when their size
/// is 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_receive(
    mbox: MailboxId,
    service_type: *mut c_int,
    sender: *mut c_char,
    max_groups: c_int,
    num_groups: *mut c_int,
    groups: *mut NameSlot,
    mess_type: *mut i16,
    endian_mismatch: *mut c_int,
    max_mess_len: c_int,
    mess: *mut c_char,
) -> c_int {
    if service_type.is_null() || num_groups.is_null() || mess_type.is_null() || endian_mismatch.is_null() {
        return ILLEGAL_MESSAGE;
    }
    let max_groups = usize::try_from(max_groups).unwrap_or(0);
    let max_len = usize::try_from(max_mess_len).unwrap_or(0);
    if (max_groups > 0 && groups.is_null()) || (max_len > 0 && mess.is_null()) {
        return ILLEGAL_MESSAGE;
    }
    // SAFETY: checked non-null; readable by the contract.
    let drop_recv = unsafe { *service_type } & DROP_RECV != 0;
    let s = match session(mbox) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let d = match next_delivery(&s, true) {
        Ok(Some(d)) => d,
        Ok(None) => return CONNECTION_CLOSED,
        Err(code) => return code,
    };
    let groups_short = d.groups.len() > max_groups;
    let body_short = d.body.len() > max_len;
    let count = |n: usize| -c_int::try_from(n).unwrap_or(c_int::MAX);
    // SAFETY: the output pointers are writable by the contract, and no
    // more than `max_groups` slots and `max_len` bytes are written.
    unsafe {
        *service_type = d.service;
        *mess_type = d.mess_type;
        *num_groups = if groups_short { count(d.groups.len()) } else { 0 };
        *endian_mismatch = if body_short { count(d.body.len()) } else { 0 };
        let short = if groups_short { GROUPS_TOO_SHORT } else { BUFFER_TOO_SHORT };
        if (groups_short || body_short) && !drop_recv {
            put_name(sender, "");
            lock(&s.inner).mailbox.unpop(d);
            return short;
        }
        put_name(sender, &d.sender);
        let n = d.groups.len().min(max_groups);
        for (i, g) in d.groups.iter().take(n).enumerate() {
            put_name((*groups.add(i)).as_mut_ptr(), g);
        }
        if !groups_short {
            *num_groups = c_int::try_from(n).unwrap_or(c_int::MAX);
        }
        let len = d.body.len().min(max_len);
        if len > 0 {
            std::ptr::copy_nonoverlapping(d.body.as_ptr().cast::<c_char>(), mess, len);
        }
        if groups_short || body_short {
            return short;
        }
        c_int::try_from(len).unwrap_or(c_int::MAX)
    }
}

/// Whether two group ids name the same view: 1 or 0.
#[unsafe(no_mangle)]
pub extern "C" fn SP_equal_group_ids(g1: GroupId, g2: GroupId) -> c_int {
    c_int::from(g1 == g2)
}

/// Reads the `int32` at `at` of a membership body.
///
/// # Safety
/// `mess` is readable for `at + 4` bytes.
unsafe fn u32_at(mess: *const c_char, at: usize) -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(mess.add(at).cast::<u8>(), b.as_mut_ptr(), 4) };
    u32::from_ne_bytes(b)
}

/// Fills `memb_info` from a membership message's body and service type
/// (Spread's `SP_get_memb_info`): the group id, the member that changed
/// (join, leave, disconnect), the number of VS sets and this member's set.
/// Returns 1, or `ILLEGAL_MESSAGE` if `service_type` is not a membership
/// message.
///
/// # Safety
/// `memb_mess` is the body `SP_receive` returned with `service_type`;
/// `memb_info` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_get_memb_info(
    memb_mess: *const c_char,
    service_type: c_int,
    memb_info: *mut MembershipInfo,
) -> c_int {
    if memb_mess.is_null()
        || memb_info.is_null()
        || service_type & MEMBERSHIP_MESS == 0
        || service_type & REJECT_MESS != 0
    {
        return ILLEGAL_MESSAGE;
    }
    // SAFETY: a membership body holds its header, and the VS sets its
    // header announces (the layout of `mailbox`).
    unsafe {
        let mut gid = GroupId { id: [0; 5] };
        for (i, x) in gid.id.iter_mut().enumerate() {
            *x = u32_at(memb_mess, i * 4) as i32;
        }
        let num_vs_sets = u32_at(memb_mess, 20);
        let my_at = u32_at(memb_mess, 24) as usize;
        let mut changed_member = [0 as c_char; MAX_GROUP_NAME];
        let changes = CAUSED_BY_JOIN | CAUSED_BY_LEAVE | CAUSED_BY_DISCONNECT;
        if service_type & REG_MEMB_MESS != 0 && service_type & changes != 0 && num_vs_sets > 0 {
            let first = memb_mess.add(VS_SETS_AT + 4);
            std::ptr::copy_nonoverlapping(first, changed_member.as_mut_ptr(), MAX_GROUP_NAME);
        }
        let my_vs_set = if num_vs_sets > 0 {
            VsSetInfo { num_members: u32_at(memb_mess, my_at), members_offset: (my_at + 4) as c_uint }
        } else {
            VsSetInfo { num_members: 0, members_offset: 0 }
        };
        *memb_info = MembershipInfo { gid, changed_member, num_vs_sets, my_vs_set };
    }
    1
}

/// Lists the VS sets of a membership body (Spread's `SP_get_vs_sets_info`)
/// into `vs_sets`, and sets `*my_vs_set_index` to this member's set.
/// Returns the number of sets, or `BUFFER_TOO_SHORT` if `num_vs_sets` is
/// fewer (nothing is written then).
///
/// # Safety
/// `memb_mess` is a membership body from `SP_receive`; `vs_sets` is
/// writable for `num_vs_sets` entries; `my_vs_set_index` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_get_vs_sets_info(
    memb_mess: *const c_char,
    vs_sets: *mut VsSetInfo,
    num_vs_sets: c_int,
    my_vs_set_index: *mut c_uint,
) -> c_int {
    if memb_mess.is_null() || my_vs_set_index.is_null() {
        return ILLEGAL_MESSAGE;
    }
    // SAFETY: the body's layout (module `mailbox`) and the contract.
    unsafe {
        let total = u32_at(memb_mess, 20) as usize;
        if usize::try_from(num_vs_sets).unwrap_or(0) < total || (total > 0 && vs_sets.is_null()) {
            return BUFFER_TOO_SHORT;
        }
        let mut at = VS_SETS_AT;
        for i in 0..total {
            let n = u32_at(memb_mess, at);
            *vs_sets.add(i) = VsSetInfo { num_members: n, members_offset: (at + 4) as c_uint };
            at += 4 + n as usize * MAX_GROUP_NAME;
        }
        // This member's set is always the first.
        *my_vs_set_index = 0;
        c_int::try_from(total).unwrap_or(c_int::MAX)
    }
}

/// Copies the members of one VS set into `member_names` (Spread's
/// `SP_get_vs_set_members`). Returns their number, or `BUFFER_TOO_SHORT`
/// if `member_names_count` is fewer (nothing is written then).
///
/// # Safety
/// `memb_mess` is a membership body from `SP_receive` and `vs_set` one of
/// its sets; `member_names` is writable for `member_names_count` slots.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_get_vs_set_members(
    memb_mess: *const c_char,
    vs_set: *const VsSetInfo,
    member_names: *mut NameSlot,
    member_names_count: c_int,
) -> c_int {
    if memb_mess.is_null() || vs_set.is_null() {
        return ILLEGAL_MESSAGE;
    }
    // SAFETY: the contract: `vs_set` describes names inside `memb_mess`.
    unsafe {
        let set = *vs_set;
        let n = set.num_members as usize;
        if usize::try_from(member_names_count).unwrap_or(0) < n || (n > 0 && member_names.is_null()) {
            return BUFFER_TOO_SHORT;
        }
        let from = memb_mess.add(set.members_offset as usize);
        std::ptr::copy_nonoverlapping(from, member_names.cast::<c_char>(), n * MAX_GROUP_NAME);
        c_int::try_from(n).unwrap_or(c_int::MAX)
    }
}

/// Prints what `error` means to standard output, as Spread's `SP_error`.
#[unsafe(no_mangle)]
pub extern "C" fn SP_error(error: c_int) {
    println!("ringfence error {error}: {}", error_text(error).to_string_lossy());
}

/// What `error` means, as a static NUL-terminated string (ringfence only).
#[unsafe(no_mangle)]
pub extern "C" fn rf_error_text(error: c_int) -> *const c_char {
    error_text(error).as_ptr()
}

/// This library's version (the ringfence release); returns 1.
///
/// # Safety
/// Each pointer is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SP_version(major: *mut c_int, minor: *mut c_int, patch: *mut c_int) -> c_int {
    let part = |s: &str| s.parse::<c_int>().unwrap_or(0);
    let values = [
        part(env!("CARGO_PKG_VERSION_MAJOR")),
        part(env!("CARGO_PKG_VERSION_MINOR")),
        part(env!("CARGO_PKG_VERSION_PATCH")),
    ];
    for (p, v) in [major, minor, patch].into_iter().zip(values) {
        if !p.is_null() {
            // SAFETY: the contract of this function.
            unsafe { *p = v };
        }
    }
    1
}
