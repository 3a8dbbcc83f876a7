//! The daemon core: one sans-IO object that is a whole ringfence daemon
//! short of its sockets, threads, clock and state file.
//!
//! A [`Server`] owns the daemon's [`Node`] (ordering, membership, link
//! security), its [`ClientGroups`] and the client-session protocol: it takes
//! decoded client requests, answers them, and encodes what the groups layer
//! tells clients, once per message for all its local receivers. The daemon
//! runtime (`ringfence-engine`), the groups harness and any other driver use
//! this one object, so a daemon-level bug replays without the runtime.
//!
//! ```text
//!   handle_connect / handle_client / handle_disconnect (now, client, ...)
//!        │                                                 ┌──► poll_client(): one encoded frame
//!        ▼                                                 │      + its recipients (+ close)
//!   ClientGroups ──submit──► Node ──events──► ClientGroups ┤
//!        ▲                    ▲  │                         └──► poll_event(): configurations,
//!        │                    │  └──► poll_persist(): ring sequence     alerts, dropped frames
//!   handle_timeout(now)   handle_datagram(now, bytes)   to make durable, then
//!                                                       poll_transmit(): datagrams
//! ```
//!
//! # Calling contract
//!
//! Time is monotonic and supplied by the caller with every input; nothing
//! inside reads a clock, a socket or a global RNG (the node's randomness is
//! the seed in its `SecurityConfig`).
//!
//! Inputs: [`Server::handle_datagram`], [`Server::handle_connect`],
//! [`Server::handle_client`], [`Server::handle_disconnect`],
//! [`Server::handle_timeout`] and [`Server::leave`]. Each input moves the
//! node's events through the groups layer and hands the groups' messages to
//! the node before it returns, so after any input the outputs are ready:
//!
//! 1. [`Server::poll_client`] until `None`: frames for local clients, in the
//!    order each client must receive them.
//! 2. [`Server::poll_event`] until `None`: for the log and the service
//!    manager.
//! 3. [`Server::poll_persist`]: a ring sequence the runtime must make
//!    durable, then confirm with [`Server::persisted`]. Until it does,
//!    [`Server::poll_transmit`] yields nothing (the persist gate: a restart
//!    never numbers a ring it already used).
//! 4. [`Server::poll_transmit`] until `None`: datagrams, sent in the order
//!    given.
//! 5. [`Server::poll_timeout`]: when to call [`Server::handle_timeout`]
//!    (calling it earlier is harmless: it acts only on what is due).
//!
//! A client's inputs come in its order: `handle_connect`, then
//! `handle_client` frames, then `handle_disconnect`. While
//! [`Server::backlogged`] is true the ring refuses messages; the runtime
//! should stop taking client requests (so the clients are slowed, not
//! buffered without limit) and call `handle_timeout` again soon.
//! The full contract is in `docs/protocol.md`, "The daemon core (Server)".

mod encode;

use crate::groups::{
    Cause, ClientEvent, ClientGroups, ClientId, FlushId, GroupKind, GroupsError, PrivateName, Refusal, Submit,
};
use crate::node::Alert;
use crate::ring::{ConfigKind, Configuration, Event, SubmitError, Transmit};
use crate::security::LinkMode;
use crate::security::policy::Policy;
use crate::wire::client::{
    self as cp, AdminRequest, ByeReason, ClientEncodeError, ClientFrame, DaemonFrame, ErrorCode, Limits,
    RefuseCode, ViewCause, ViewKind,
};
use crate::wire::{MsgId, NodeId, RingId, Service};
use crate::{Node, Time};
use bytes::{Bytes, BytesMut};
use encode::Encoder;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// How often the daemon asks its groups layer for its next deadline by
/// default (the question walks every group; the deadlines, key refresh and
/// old key expiry, are seconds apart).
pub const GROUPS_CHECK: Duration = Duration::from_millis(10);

/// What a [`Server`] needs besides its [`Node`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The daemon's name, as clients and operators read it in answers.
    pub name: String,
    /// Bounds of the client groups layer.
    pub groups: crate::groups::Limits,
    /// The client group access policy.
    pub policy: Arc<Policy>,
    /// Client protocol limits (announced in `Welcome`, enforced on encode).
    pub client_limits: Limits,
    /// Who may send operator requests: policy names (`unix:1000`,
    /// `cert:ops`, ...), a trailing `*` matching any rest.
    pub admins: Vec<String>,
    /// The ring sequence already durable (read from the state file at
    /// start): sending waits only for a higher one.
    pub persisted_ring_seq: u64,
    /// How often [`Server::poll_timeout`] asks the groups layer for its
    /// deadline anew ([`GROUPS_CHECK`]; zero: at every call, for harnesses
    /// that want exact timing).
    pub groups_check: Duration,
    /// Keep a copy of every node event and every client event for
    /// [`Server::poll_observed`] (simulators, harnesses, traces; off in a
    /// daemon).
    pub observe: bool,
}

impl ServerConfig {
    /// Defaults for a daemon named `name`: default limits, an open policy,
    /// no operators, nothing persisted yet, [`GROUPS_CHECK`], not observed.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            groups: crate::groups::Limits::default(),
            policy: Arc::new(Policy::default()),
            client_limits: Limits::default(),
            admins: Vec::new(),
            persisted_ring_seq: 0,
            groups_check: GROUPS_CHECK,
            observe: false,
        }
    }
}

/// `limits` with the payload bound lowered, if need be, so that every
/// client message fits a ring message of `max_message` bytes once the
/// groups layer wrapped it ([`crate::groups::max_data_overhead`]). The
/// daemon announces these in `Welcome` and its session threads enforce
/// them, so a client never sends what the ring would refuse.
pub fn fit_client_limits(limits: Limits, max_message: usize, groups: &crate::groups::Limits) -> Limits {
    let overhead = crate::groups::max_data_overhead(groups.max_name, groups.max_destinations);
    let fits = u32::try_from(max_message.saturating_sub(overhead)).unwrap_or(u32::MAX);
    Limits { max_payload: limits.max_payload.min(fits), ..limits }
}

/// Why the connection of the clients of a [`ClientOutput`] ends after its
/// frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The client was not admitted (`Refused`).
    Refused(RefuseCode),
    /// The daemon ends the session (`Bye`).
    Bye(ByeReason),
}

/// One encoded frame (length prefix included, as on the wire) for one or
/// more local clients: the same buffer for all of them.
#[derive(Debug)]
pub struct ClientOutput<'a> {
    /// The frame.
    pub frame: Bytes,
    /// Its recipients, in no particular order.
    pub to: &'a [ClientId],
    /// After writing the frame, close each recipient's connection.
    pub close: Option<Close>,
}

/// Something for the daemon's log or service manager.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A configuration was installed (also given to the groups layer).
    Configuration(Configuration),
    /// A warning of the node: membership trouble, security alerts.
    Alert(Alert),
    /// A frame for a client broke a client protocol limit and was dropped.
    Undeliverable {
        /// The client.
        client: ClientId,
        /// Why.
        error: ClientEncodeError,
    },
    /// The ring refused a message of the groups layer for another reason
    /// than backpressure; it was dropped.
    SubmitRefused(SubmitError),
}

/// A copy of what passed through the core, kept when
/// [`ServerConfig::observe`] is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// An event of the node, in its delivery order.
    Node(Event),
    /// An event the groups layer gave a local client (before encoding;
    /// events that have no frame, such as `Left`, too).
    Client(ClientId, ClientEvent),
    /// A message the node took for ordering: its id, service and the
    /// payload as the ring carries it (the groups layer's encoding), so a
    /// checker can tell every delivery from a phantom.
    Submitted {
        /// The message's id in the ring.
        id: MsgId,
        /// Its delivery service.
        service: Service,
        /// The ring payload.
        payload: Bytes,
    },
}

/// Why a client was not admitted by [`Server::handle_connect`] (it was sent
/// `Refused`, with its connection to be closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The daemon left the ring; only operators get in.
    #[error("the daemon has left the ring")]
    Left,
    /// The groups layer refused the name or the client.
    #[error(transparent)]
    Groups(#[from] GroupsError),
}

/// What became of a client request given to [`Server::handle_client`]. The
/// client's answer, if any, is already queued for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// Carried out (or not a request: `Hello`, `Bye`), or from a client that
    /// is not connected (ignored).
    Done,
    /// A group request the groups layer refused; the client got `Error`.
    Refused(GroupsError),
    /// An operator request from a client that is no operator; it got
    /// `Error { Denied }`.
    NotOperator(AdminRequest),
    /// An operator request carried out and answered: `Rekey` (`ok`: a
    /// refresh was asked), `Leave` (the daemon left the ring) or `Shutdown`
    /// (the runtime should stop: [`Server::leave`], drain, exit).
    Operator {
        /// The request.
        request: AdminRequest,
        /// Whether it succeeded.
        ok: bool,
    },
    /// An operator's status request: the runtime, which holds the status,
    /// answers with [`Server::admin_reply`].
    Status {
        /// The request's tag.
        tag: u32,
    },
}

/// A connected client.
#[derive(Clone, Copy, Debug)]
struct Client {
    /// It may send operator requests.
    admin: bool,
}

/// A frame queued for clients: its recipients are the next `count` in
/// `Server::recipients`.
#[derive(Debug)]
struct Queued {
    frame: Bytes,
    count: usize,
    close: Option<Close>,
}

/// One daemon: node, client groups and client sessions (see the module
/// docs for the calling contract).
#[derive(Debug)]
pub struct Server {
    node: Node,
    groups: ClientGroups,
    cfg: ServerConfig,
    clients: BTreeMap<ClientId, Client>,
    /// A group message the ring refused for backpressure, retried first.
    held: Option<Submit>,
    encoder: Encoder,
    out: VecDeque<Queued>,
    recipients: VecDeque<ClientId>,
    /// The recipients of the frame last polled (lent to the caller).
    polled: Vec<ClientId>,
    events: VecDeque<ServerEvent>,
    observed: VecDeque<Observed>,
    /// The highest ring sequence the runtime confirmed durable.
    persisted: u64,
    /// The groups layer's next deadline, as last asked, and when.
    groups_due: Option<Time>,
    groups_asked: Option<Time>,
    /// [`Server::leave`] was called.
    left: bool,
}

impl Server {
    /// A daemon core around `node` (fresh from `Node::new`,
    /// `Node::with_security` or `Node::with_ring`). Its groups layer shares
    /// `optimized-evs` view keys in state exchanges only when the node's
    /// links are encrypted.
    pub fn new(node: Node, mut cfg: ServerConfig) -> Self {
        cfg.client_limits = fit_client_limits(cfg.client_limits, node.config().max_message, &cfg.groups);
        let share_keys = node.security_stats().is_some_and(|s| s.mode == LinkMode::Encrypt);
        let groups = ClientGroups::with_policy(node.id(), cfg.groups.clone(), cfg.policy.clone(), share_keys);
        Self {
            node,
            groups,
            encoder: Encoder::new(cfg.client_limits),
            persisted: cfg.persisted_ring_seq,
            cfg,
            clients: BTreeMap::new(),
            held: None,
            out: VecDeque::new(),
            recipients: VecDeque::new(),
            polled: Vec::new(),
            events: VecDeque::new(),
            observed: VecDeque::new(),
            groups_due: None,
            groups_asked: None,
            left: false,
        }
    }

    /// The protocol node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node, the server given up (to drive the node alone).
    pub fn into_node(self) -> Node {
        self.node
    }

    /// The client groups layer.
    pub fn groups(&self) -> &ClientGroups {
        &self.groups
    }

    /// The node, to act on it past the server (tests that inject what a
    /// groups layer would not send).
    #[cfg(test)]
    pub(crate) fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// The groups layer, to change its limits (tests).
    #[cfg(test)]
    pub(crate) fn groups_mut(&mut self) -> &mut ClientGroups {
        &mut self.groups
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// [`Server::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The ring refuses messages for now (a group message waits): take no
    /// more client requests until it clears, and call
    /// [`Server::handle_timeout`] again soon.
    pub fn backlogged(&self) -> bool {
        self.held.is_some()
    }

    /// A datagram from another daemon (the runtime checked its source is a
    /// daemon of the cluster).
    pub fn handle_datagram(&mut self, now: Time, bytes: Bytes) {
        self.node.handle_datagram(now, bytes);
        self.pump(now);
    }

    /// As [`Server::handle_datagram`], for a datagram in a buffer of its
    /// own (the runtime's receive path): opened in place, and what is kept
    /// of it (chunks, delivered payloads) are slices of this buffer.
    pub fn handle_datagram_owned(&mut self, now: Time, buf: BytesMut) {
        self.node.handle_datagram_owned(now, buf);
        self.pump(now);
    }

    /// Acts on every deadline that is due at `now` (the groups layer's and
    /// the node's) and retries a message the ring refused.
    pub fn handle_timeout(&mut self, now: Time) {
        self.ask_groups(now);
        if self.groups_due.is_some_and(|d| d <= now) {
            self.groups.handle_timeout(now);
            self.groups_due = self.groups.poll_timeout();
            self.groups_asked = Some(now);
        }
        if self.node.poll_timeout().is_some_and(|d| d <= now) {
            self.node.handle_timeout(now);
        }
        self.pump(now);
    }

    /// When [`Server::handle_timeout`] is next due. The groups layer's
    /// deadline is asked anew at most every [`ServerConfig::groups_check`]
    /// of `now`.
    pub fn poll_timeout(&mut self, now: Time) -> Option<Time> {
        self.ask_groups(now);
        match (self.node.poll_timeout(), self.groups_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn ask_groups(&mut self, now: Time) {
        if self.groups_asked.is_none_or(|t| now.saturating_since(t) >= self.cfg.groups_check) {
            self.groups_asked = Some(now);
            self.groups_due = self.groups.poll_timeout();
        }
    }

    /// A client said hello as `name`, authenticated as `principal` (its
    /// policy name: `unix:<uid>`, `cert:<cn>`, `token:<name>`, `tcp:<addr>`);
    /// `secure`: the connection is private to it and this daemon (Unix
    /// socket, TLS); `version`: what its `Hello` negotiated
    /// (`wire::client::negotiate_version`), stated in its `Welcome` (a
    /// client offering only older versions must see one of them). It gets
    /// `Welcome`, or `Refused` and a close.
    pub fn handle_connect(
        &mut self,
        now: Time,
        id: ClientId,
        name: &str,
        principal: &str,
        secure: bool,
        version: u8,
    ) -> Result<PrivateName, ConnectError> {
        let admin = self.cfg.admins.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => principal.starts_with(prefix),
            None => p == principal,
        });
        // After a leave only operators get in (status, shutdown).
        if self.left && !admin {
            let refused = DaemonFrame::Refused {
                code: RefuseCode::ShuttingDown,
                text: format!(
                    "daemon `{}` has left the ring (`ringfence ctl leave` or stopping); restart it to rejoin, \
                     or connect to another daemon",
                    self.cfg.name
                ),
            };
            self.send_frame(id, &refused, Some(Close::Refused(RefuseCode::ShuttingDown)));
            return Err(ConnectError::Left);
        }
        let r = match self.groups.connect_secure(id, name.as_bytes(), principal, secure) {
            Ok(pn) => {
                let l = self.cfg.client_limits;
                let welcome = cp::Welcome {
                    version,
                    daemon_id: self.node.id().0,
                    private_name: pn.to_string(),
                    max_frame_len: l.max_frame_len,
                    max_payload: l.max_payload,
                    max_groups: l.max_groups,
                };
                self.send_frame(id, &DaemonFrame::Welcome(welcome), None);
                self.clients.insert(id, Client { admin });
                Ok(pn)
            }
            Err(e) => {
                let code = match e {
                    GroupsError::DuplicateName => RefuseCode::NameInUse,
                    GroupsError::TooManyClients => RefuseCode::TooManyClients,
                    _ => RefuseCode::ProtocolViolation,
                };
                let refused = DaemonFrame::Refused { code, text: e.to_string() };
                self.send_frame(id, &refused, Some(Close::Refused(code)));
                Err(ConnectError::Groups(e))
            }
        };
        self.pump(now);
        r
    }

    /// The client's session ended (it left, failed, or was disconnected);
    /// nothing more is sent to it. Its disconnect is ordered.
    pub fn handle_disconnect(&mut self, now: Time, id: ClientId) {
        let _ = self.groups.disconnect(id);
        self.clients.remove(&id);
        self.pump(now);
    }

    /// A request of client `id`; its answer (an error, an operator reply)
    /// is queued for it, and what became of it returned for the log.
    pub fn handle_client(&mut self, now: Time, id: ClientId, frame: ClientFrame) -> Handled {
        let handled = match frame {
            ClientFrame::Admin { tag, request } => self.admin(now, id, tag, request),
            frame => self.request(id, frame),
        };
        self.pump(now);
        handled
    }

    fn request(&mut self, c: ClientId, frame: ClientFrame) -> Handled {
        let r = match frame {
            ClientFrame::Join { group } => self.groups.join(c, group.as_bytes(), GroupKind::Open),
            ClientFrame::JoinVs { group } => self.groups.join(c, group.as_bytes(), GroupKind::Vs),
            ClientFrame::JoinMode { group, vs, mode } => {
                let kind = if vs { GroupKind::Vs } else { GroupKind::Open };
                self.groups.join_mode(c, group.as_bytes(), kind, mode)
            }
            ClientFrame::Leave { group } => self.groups.leave(c, group.as_bytes()),
            ClientFrame::Multicast(m) if m.payload.len() > self.cfg.client_limits.max_payload as usize => {
                // Past what `Welcome` announced: the ring could refuse it.
                let text = format!(
                    "a payload of {} bytes is over this daemon's limit of {} bytes (announced in Welcome)",
                    m.payload.len(),
                    self.cfg.client_limits.max_payload
                );
                if self.clients.contains_key(&c) {
                    self.send_frame(c, &DaemonFrame::Error { code: ErrorCode::BadRequest, text }, None);
                }
                return Handled::Refused(GroupsError::TooLarge);
            }
            ClientFrame::Multicast(m) if m.groups.encoded_len() > self.node.config().max_group_list() => {
                let text = format!(
                    "the destination list takes {} bytes, over the {} bytes a ring frame has room for \
                     (name fewer groups, or shorter ones)",
                    m.groups.encoded_len(),
                    self.node.config().max_group_list()
                );
                if self.clients.contains_key(&c) {
                    self.send_frame(c, &DaemonFrame::Error { code: ErrorCode::BadRequest, text }, None);
                }
                return Handled::Refused(GroupsError::BadDestinations);
            }
            ClientFrame::Multicast(m) => self.groups.multicast_to(
                c,
                m.service,
                m.groups,
                m.msg_type,
                m.payload,
                m.self_discard,
                m.sealed,
            ),
            ClientFrame::FlushOk { group, view_id } => {
                let flush = FlushId {
                    ring_id: RingId { seq: view_id.ring_seq, rep: NodeId(view_id.ring_rep) },
                    seq: view_id.counter,
                };
                self.groups.flush_ok(c, group.as_bytes(), flush)
            }
            ClientFrame::Hello(_) | ClientFrame::Bye | ClientFrame::Admin { .. } => Ok(()),
        };
        let Err(e) = r else { return Handled::Done };
        let code = match e {
            GroupsError::NotMember => ErrorCode::NotMember,
            GroupsError::AlreadyMember => ErrorCode::AlreadyMember,
            GroupsError::Denied => ErrorCode::Denied,
            GroupsError::ModeMismatch => ErrorCode::ModeMismatch,
            GroupsError::NoServerKey => ErrorCode::NoServerKey,
            GroupsError::WrongKey | GroupsError::KeyedMultiDestination => ErrorCode::WrongKey,
            GroupsError::InsecureTransport => ErrorCode::InsecureTransport,
            GroupsError::NoFlush => ErrorCode::StaleView,
            GroupsError::TooManyGroups => ErrorCode::TooManyGroups,
            GroupsError::Flushing => ErrorCode::Flushing,
            // Names and destination lists the decoder let through but the
            // groups do not take; the connect-time errors cannot come from
            // a request.
            _ => ErrorCode::BadRequest,
        };
        if self.clients.contains_key(&c) {
            self.send_frame(c, &DaemonFrame::Error { code, text: e.to_string() }, None);
        }
        Handled::Refused(e)
    }

    /// Carries out an operator's request from client `id` and answers it
    /// (the status is the runtime's to give).
    fn admin(&mut self, now: Time, id: ClientId, tag: u32, request: AdminRequest) -> Handled {
        let Some(client) = self.clients.get(&id) else { return Handled::Done };
        if !client.admin {
            let error = DaemonFrame::Error {
                code: ErrorCode::Denied,
                text: format!(
                    "`{}` is for operators: this client is not in `[clients] admin` of daemon `{}` (default: \
                     local clients of the daemon's user and root)",
                    request.name(),
                    self.cfg.name
                ),
            };
            self.send_frame(id, &error, None);
            return Handled::NotOperator(request);
        }
        let name = &self.cfg.name;
        let (ok, text) = match request {
            AdminRequest::Status => return Handled::Status { tag },
            AdminRequest::Rekey => match self.node.request_refresh(now) {
                Ok(()) => (true, format!("daemon `{name}` asked the ring for a new server key")),
                Err(why) => (false, format!("daemon `{name}` cannot rekey now: {why}")),
            },
            AdminRequest::Leave => (true, format!("daemon `{name}` left the ring; restart it to rejoin")),
            AdminRequest::Shutdown => (true, format!("daemon `{name}` is leaving the ring and stopping")),
        };
        self.admin_reply(id, tag, ok, text);
        if request == AdminRequest::Leave {
            self.leave(now, "asked by an operator (`ringfence ctl leave`)");
        }
        Handled::Operator { request, ok }
    }

    /// Answers an operator request of client `id` (the status, see
    /// [`Handled::Status`]).
    pub fn admin_reply(&mut self, id: ClientId, tag: u32, ok: bool, text: String) {
        if self.clients.contains_key(&id) {
            self.send_frame(id, &DaemonFrame::AdminReply { tag, ok, text }, None);
        }
    }

    /// Leaves the ring for good (see [`Node::leave`]): what the node still
    /// delivers reaches the clients, then every client gets
    /// `Bye { Shutdown }` saying `why` and a close, and from then on only
    /// operators may connect. Drain the outputs after it (the leave's
    /// datagrams among them). False if it had already left.
    pub fn leave(&mut self, now: Time, why: &str) -> bool {
        if self.left {
            return false;
        }
        self.left = true;
        self.node.leave(now);
        self.pump(now);
        let bye = DaemonFrame::Bye {
            reason: ByeReason::Shutdown,
            text: format!("daemon `{}` left the ring: {why}", self.cfg.name),
        };
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        match self.encoder.frame(&bye) {
            Ok(frame) if !ids.is_empty() => {
                self.recipients.extend(ids.iter().copied());
                self.out.push_back(Queued {
                    frame,
                    count: ids.len(),
                    close: Some(Close::Bye(ByeReason::Shutdown)),
                });
            }
            Ok(_) => {}
            Err(error) => {
                for &client in &ids {
                    self.events.push_back(ServerEvent::Undeliverable { client, error: error.clone() });
                }
            }
        }
        for id in ids {
            let _ = self.groups.disconnect(id);
        }
        self.clients.clear();
        true
    }

    /// The next frame for local clients (see [`ClientOutput`]).
    pub fn poll_client(&mut self) -> Option<ClientOutput<'_>> {
        let q = self.out.pop_front()?;
        self.polled.clear();
        self.polled.extend(self.recipients.drain(..q.count));
        Some(ClientOutput { frame: q.frame, to: &self.polled, close: q.close })
    }

    /// The next event for the log.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next copy of a node or client event ([`ServerConfig::observe`]).
    pub fn poll_observed(&mut self) -> Option<Observed> {
        self.observed.pop_front()
    }

    /// The ring sequence to make durable before anything more is sent, if
    /// the runtime has not confirmed it yet (the highest sequence of a ring
    /// this daemon numbered or installed, see
    /// [`Node::ring_seq_to_persist`]). Confirm with [`Server::persisted`].
    pub fn poll_persist(&self) -> Option<u64> {
        let seq = self.node.ring_seq_to_persist();
        (seq > self.persisted).then_some(seq)
    }

    /// The runtime made ring sequence `seq` durable.
    pub fn persisted(&mut self, seq: u64) {
        self.persisted = self.persisted.max(seq);
    }

    /// The next datagram to send; nothing while a ring sequence waits to
    /// be persisted ([`Server::poll_persist`]).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.poll_persist().is_some() {
            return None;
        }
        self.node.poll_transmit()
    }

    /// Moves what the node produced through the groups layer to the
    /// clients, and what the groups layer produced to the node.
    fn pump(&mut self, now: Time) {
        while let Some(ev) = self.node.poll_event() {
            self.groups.handle_event(now, &ev);
            if self.cfg.observe {
                self.observed.push_back(Observed::Node(ev.clone()));
            }
            if let Event::Configuration(c) = ev {
                self.events.push_back(ServerEvent::Configuration(c));
            }
        }
        while let Some(a) = self.node.poll_alert() {
            self.events.push_back(ServerEvent::Alert(a));
        }
        while let Some((id, ev)) = self.groups.poll_client() {
            if self.cfg.observe {
                self.observed.push_back(Observed::Client(id, ev.clone()));
            }
            self.deliver(id, ev);
        }
        self.submit(now);
    }

    /// Hands the groups' messages to the node, in order; one the ring
    /// refuses for backpressure waits, first in line.
    fn submit(&mut self, now: Time) {
        loop {
            let Some(s) = self.held.take().or_else(|| self.groups.poll_submit()) else { return };
            // Asked first, so the message moves into the node whole (a
            // clone of a fresh buffer would allocate its shared count).
            if self.node.backlogged_for(s.payload.len()) {
                self.held = Some(s);
                return;
            }
            let copy = self.cfg.observe.then(|| s.payload.clone());
            match self.node.submit(now, s.service, s.groups, s.payload) {
                Ok(id) => {
                    if let Some(payload) = copy {
                        self.observed.push_back(Observed::Submitted { id, service: s.service, payload });
                    }
                }
                Err(e) => self.events.push_back(ServerEvent::SubmitRefused(e)),
            }
        }
    }

    /// Queues a frame for one client.
    fn send_frame(&mut self, id: ClientId, frame: &DaemonFrame, close: Option<Close>) {
        match self.encoder.frame(frame) {
            Ok(frame) => self.push(id, frame, close),
            Err(error) => self.events.push_back(ServerEvent::Undeliverable { client: id, error }),
        }
    }

    /// Queues `frame` for `id`: with the previous frame's recipients if it
    /// is the same buffer (a message's fan-out), else as a new frame.
    fn push(&mut self, id: ClientId, frame: Bytes, close: Option<Close>) {
        if let Some(last) = self.out.back_mut() {
            if close.is_none() && last.close.is_none() && last.frame.as_ptr() == frame.as_ptr() {
                last.count += 1;
                self.recipients.push_back(id);
                return;
            }
        }
        self.recipients.push_back(id);
        self.out.push_back(Queued { frame, count: 1, close });
    }

    /// Encodes a client event for its client (connected ones only): a
    /// message once for all the local clients it goes to in a row.
    fn deliver(&mut self, id: ClientId, ev: ClientEvent) {
        if !self.clients.contains_key(&id) {
            return;
        }
        let frame = match ev {
            ClientEvent::Message { sender, groups, service, msg_type, sealed, payload } => {
                match self.encoder.message(&sender, &groups, service, msg_type, sealed, &payload) {
                    Ok(b) => self.push(id, b, None),
                    Err(error) => self.events.push_back(ServerEvent::Undeliverable { client: id, error }),
                }
                return;
            }
            ClientEvent::Membership { group, view_id, members, cause, kind, mode, key, joined } => {
                // Positions of the joined members in `members` (both ascending).
                let joined = if mode.layered() {
                    joined.iter().filter_map(|j| members.binary_search(j).ok()).map(|i| i as u16).collect()
                } else {
                    Vec::new()
                };
                DaemonFrame::Membership(cp::Membership {
                    group: String::from_utf8_lossy(&group).into_owned(),
                    view_id: cp::ViewId {
                        ring_seq: view_id.ring_id.seq,
                        ring_rep: view_id.ring_id.rep.0,
                        counter: view_id.counter,
                    },
                    kind: match kind {
                        ConfigKind::Regular => ViewKind::Regular,
                        ConfigKind::Transitional => ViewKind::Transitional,
                    },
                    cause: match cause {
                        Cause::Join => ViewCause::Join,
                        Cause::Leave => ViewCause::Leave,
                        Cause::Disconnect => ViewCause::Disconnect,
                        Cause::Network => ViewCause::Network,
                        Cause::Rekey => ViewCause::Rekey,
                    },
                    members: members.iter().map(ToString::to_string).collect(),
                    mode,
                    key: key.map(|k| (k.id(), k.0.secret().clone())),
                    joined,
                })
            }
            ClientEvent::Undecipherable { sender, group, msg_type, key_id, reason } => {
                DaemonFrame::Undecipherable {
                    sender: sender.to_string(),
                    group: String::from_utf8_lossy(&group).into_owned(),
                    msg_type,
                    key_id,
                    reason,
                }
            }
            ClientEvent::FlushRequest { group, flush } => DaemonFrame::FlushRequest {
                group: String::from_utf8_lossy(&group).into_owned(),
                view_id: cp::ViewId {
                    ring_seq: flush.ring_id.seq,
                    ring_rep: flush.ring_id.rep.0,
                    counter: flush.seq,
                },
            },
            ClientEvent::JoinRefused { group, reason } => DaemonFrame::Error {
                code: match reason {
                    Refusal::ModeMismatch => ErrorCode::ModeMismatch,
                    Refusal::NoServerKey => ErrorCode::NoServerKey,
                    _ => ErrorCode::Denied,
                },
                text: format!("join {} refused: {reason:?}", String::from_utf8_lossy(&group)),
            },
            ClientEvent::Left { .. } => return,
        };
        self.send_frame(id, &frame, None);
    }
}

#[cfg(test)]
mod tests;
