//! The daemon core's calling contract: fan-out as one buffer, the persist
//! gate, operators, leaving.

use super::*;
use crate::ring::{Config, Dest};
use crate::wire::Groups;
use crate::wire::client::{CLIENT_VERSION, FrameDecoder, Multicast};
use crate::{Incarnation, NodeId, RingId, Service};

/// Daemons on a lossless network with no delay; the runtime's part
/// (persisting, polling) done as the contract says.
struct Net {
    now: Time,
    servers: Vec<Server>,
    /// Frames each (daemon, client) received, decoded, and whether its
    /// connection was closed after them.
    got: BTreeMap<(usize, ClientId), (Vec<DaemonFrame>, bool)>,
    /// Every output polled: its frame buffer's address and recipient count.
    fanouts: Vec<(usize, usize)>,
    /// Ring sequences persisted, per daemon.
    durable: Vec<u64>,
    /// A daemon whose runtime never confirms a ring sequence.
    withhold: Option<usize>,
}

fn cfg(admins: &[&str]) -> ServerConfig {
    let mut c = ServerConfig::new("d");
    c.admins = admins.iter().map(ToString::to_string).collect();
    c.groups_check = Duration::ZERO;
    c
}

impl Net {
    fn with_ring(n: u16) -> Self {
        let ids: Vec<NodeId> = (0..n).map(NodeId).collect();
        let ring = RingId { seq: 1, rep: NodeId(0) };
        let servers = ids
            .iter()
            .map(|&id| {
                let node = Node::with_ring(Config::default(), id, &ids, ring, Time::ZERO).expect("node");
                let mut c = cfg(&["unix:0"]);
                c.persisted_ring_seq = 1;
                Server::new(node, c)
            })
            .collect();
        Self::of(servers)
    }

    fn of(servers: Vec<Server>) -> Self {
        let n = servers.len();
        Self {
            now: Time::ZERO,
            servers,
            got: BTreeMap::new(),
            fanouts: Vec::new(),
            durable: vec![0; n],
            withhold: None,
        }
    }

    /// Drains every output of every daemon until nothing moves.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.servers.len() {
                let s = &mut self.servers[i];
                while let Some(o) = s.poll_client() {
                    self.fanouts.push((o.frame.as_ptr() as usize, o.to.len()));
                    for &c in o.to {
                        let mut d = FrameDecoder::<DaemonFrame>::new(Limits::default());
                        d.push(&o.frame);
                        let f = d.next_frame().expect("decodes").expect("one frame");
                        let e = self.got.entry((i, c)).or_default();
                        e.0.push(f);
                        e.1 |= o.close.is_some();
                    }
                }
                while s.poll_event().is_some() {}
                if let Some(seq) = s.poll_persist().filter(|_| self.withhold != Some(i)) {
                    self.durable[i] = seq;
                    s.persisted(seq);
                }
                let mut sent = Vec::new();
                while let Some(t) = s.poll_transmit() {
                    sent.push(t);
                }
                for t in sent {
                    moved = true;
                    for j in 0..self.servers.len() {
                        let to_j = match t.dest {
                            Dest::All => j != i,
                            Dest::Node(id) => usize::from(id.0) == j,
                        };
                        if to_j {
                            self.servers[j].handle_datagram(self.now, t.bytes.clone());
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs for `d` of virtual time.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.settle();
            let now = self.now;
            let next = self.servers.iter_mut().filter_map(|s| s.poll_timeout(now)).min();
            let Some(next) = next.filter(|&t| t <= end) else {
                self.now = end;
                return;
            };
            self.now = self.now.max(next);
            for s in &mut self.servers {
                s.handle_timeout(self.now);
            }
        }
    }

    fn connect(
        &mut self,
        d: usize,
        c: u64,
        name: &str,
        principal: &str,
    ) -> Result<PrivateName, ConnectError> {
        let now = self.now;
        let r = self.servers[d].handle_connect(now, ClientId(c), name, principal, true, CLIENT_VERSION);
        self.settle();
        r
    }

    fn request(&mut self, d: usize, c: u64, frame: ClientFrame) -> Handled {
        let now = self.now;
        let h = self.servers[d].handle_client(now, ClientId(c), frame);
        self.settle();
        h
    }

    fn frames(&self, d: usize, c: u64) -> &[DaemonFrame] {
        self.got.get(&(d, ClientId(c))).map_or(&[], |x| &x.0[..])
    }

    fn closed(&self, d: usize, c: u64) -> bool {
        self.got.get(&(d, ClientId(c))).is_some_and(|x| x.1)
    }
}

fn multicast(group: &str, payload: &'static [u8]) -> ClientFrame {
    ClientFrame::Multicast(Multicast {
        service: Service::Agreed,
        msg_type: 1,
        self_discard: false,
        sealed: false,
        groups: crate::wire::Groups::encode(&[group]).unwrap(),
        payload: Bytes::from_static(payload),
    })
}

const MS: Duration = Duration::from_millis(1);

/// ARCHITECTURE section 6: "a delivered message fans out as one
/// reference-counted buffer, never a copy per client".
#[test]
fn a_message_reaches_every_local_member_as_one_buffer() {
    let mut n = Net::with_ring(2);
    for c in 1..=3 {
        n.connect(0, c, &format!("c{c}"), "unix:1000").expect("connect");
        assert_eq!(n.request(0, c, ClientFrame::Join { group: "g".into() }), Handled::Done);
    }
    n.connect(1, 9, "far", "unix:1000").expect("connect");
    n.request(1, 9, ClientFrame::Join { group: "g".into() });
    n.run(30 * MS);
    n.fanouts.clear();
    assert_eq!(n.request(1, 9, multicast("g", b"hello")), Handled::Done);
    n.run(10 * MS);
    let at0: Vec<&(usize, usize)> = n.fanouts.iter().filter(|f| f.1 == 3).collect();
    assert_eq!(at0.len(), 1, "one frame for the three local members: {:?}", n.fanouts);
    for c in 1..=3 {
        let m =
            n.frames(0, c).iter().filter(|f| matches!(f, DaemonFrame::Message(m) if m.payload == "hello"));
        assert_eq!(m.count(), 1);
    }
}

/// A request the groups layer refuses is answered with `Error` and
/// reported to the caller.
#[test]
fn a_refused_request_is_answered_and_reported() {
    let mut n = Net::with_ring(1);
    n.connect(0, 1, "a", "unix:1000").expect("connect");
    let h = n.request(0, 1, ClientFrame::Leave { group: "nope".into() });
    assert_eq!(h, Handled::Refused(GroupsError::NotMember));
    assert!(matches!(n.frames(0, 1).last(), Some(DaemonFrame::Error { code: ErrorCode::NotMember, .. })));
    // A second client of the same name is refused and closed.
    assert_eq!(n.connect(0, 2, "a", "unix:1000"), Err(ConnectError::Groups(GroupsError::DuplicateName)));
    assert!(matches!(n.frames(0, 2), [DaemonFrame::Refused { code: RefuseCode::NameInUse, .. }]));
    assert!(n.closed(0, 2));
}

/// Operator requests: only `[clients] admin` principals; the status is
/// the runtime's to answer.
#[test]
fn operator_requests_need_an_operator() {
    let mut n = Net::with_ring(1);
    n.connect(0, 1, "user", "unix:1000").expect("connect");
    n.connect(0, 2, "root", "unix:0").expect("connect");
    let h = n.request(0, 1, ClientFrame::Admin { tag: 5, request: AdminRequest::Status });
    assert_eq!(h, Handled::NotOperator(AdminRequest::Status));
    assert!(matches!(n.frames(0, 1).last(), Some(DaemonFrame::Error { code: ErrorCode::Denied, .. })));
    let h = n.request(0, 2, ClientFrame::Admin { tag: 6, request: AdminRequest::Status });
    assert_eq!(h, Handled::Status { tag: 6 });
    n.servers[0].admin_reply(ClientId(2), 6, true, "{}".into());
    n.settle();
    assert!(matches!(n.frames(0, 2).last(), Some(DaemonFrame::AdminReply { tag: 6, ok: true, .. })));
    // No link security: no server key to refresh.
    let h = n.request(0, 2, ClientFrame::Admin { tag: 7, request: AdminRequest::Rekey });
    assert_eq!(h, Handled::Operator { request: AdminRequest::Rekey, ok: false });
}

/// A leave says goodbye to every client, in one buffer, and closes them;
/// afterwards only operators are admitted.
#[test]
fn leaving_says_goodbye_and_admits_only_operators() {
    let mut n = Net::with_ring(2);
    n.connect(0, 1, "a", "unix:1000").expect("connect");
    n.connect(0, 2, "b", "unix:1000").expect("connect");
    n.connect(0, 3, "op", "unix:0").expect("connect");
    n.fanouts.clear();
    let h = n.request(0, 3, ClientFrame::Admin { tag: 1, request: AdminRequest::Leave });
    assert_eq!(h, Handled::Operator { request: AdminRequest::Leave, ok: true });
    assert!(n.servers[0].has_left());
    assert_eq!(n.servers[0].client_count(), 0);
    assert!(n.fanouts.iter().any(|f| f.1 == 3), "one Bye for all three: {:?}", n.fanouts);
    for c in 1..=3 {
        assert!(matches!(n.frames(0, c).last(), Some(DaemonFrame::Bye { reason: ByeReason::Shutdown, .. })));
        assert!(n.closed(0, c));
    }
    assert_eq!(n.connect(0, 4, "late", "unix:1000"), Err(ConnectError::Left));
    assert!(matches!(n.frames(0, 4), [DaemonFrame::Refused { code: RefuseCode::ShuttingDown, .. }]));
    assert!(n.connect(0, 5, "op2", "unix:0").is_ok());
    assert!(!n.servers[0].leave(n.now, "again"), "a second leave does nothing");
}

/// docs/protocol.md, "The daemon core (Server)": nothing is sent once the
/// node numbered a ring whose sequence the runtime has not confirmed
/// durable; what waited goes out once it is.
#[test]
fn nothing_is_sent_before_the_ring_sequence_is_persisted() {
    let servers = (0..3)
        .map(|i| {
            let node =
                Node::new(Config::default(), NodeId(i), Time::ZERO, Incarnation::default()).expect("node");
            Server::new(node, cfg(&[]))
        })
        .collect();
    let mut n = Net::of(servers);
    n.withhold = Some(0);
    n.run(300 * MS);
    let s = &mut n.servers[0];
    let seq = s.poll_persist().expect("daemon 0 numbered a ring");
    assert!(s.poll_transmit().is_none(), "the gate is shut");
    assert_eq!(n.durable[0], 0);
    // No other daemon installed a ring with it.
    assert!(n.servers[1..].iter().all(|s| s.node().ring().is_none_or(|r| !r.1.contains(&NodeId(0)))));
    n.withhold = None;
    n.run(Duration::from_secs(3));
    assert!(n.durable[0] >= seq);
    assert!(n.servers.iter().all(|s| s.node().ring().is_some_and(|r| r.1.len() == 3)));
}

/// A payload as large as `Welcome` announces fits the ring once wrapped
/// (before, a 1 MiB payload passed the client limit and the ring refused
/// it, so it was dropped with only a log line); one byte more is answered
/// with an error.
#[test]
fn the_announced_payload_limit_fits_the_ring() {
    let mut n = Net::with_ring(2);
    let name = "c".repeat(crate::groups::Limits::default().max_name);
    n.connect(0, 1, &name, "unix:1000").expect("connect");
    n.connect(1, 2, "far", "unix:1000").expect("connect");
    n.request(1, 2, ClientFrame::Join { group: "g".into() });
    n.run(30 * MS);
    let Some(DaemonFrame::Welcome(w)) = n.frames(0, 1).first() else { panic!("no welcome") };
    let max = w.max_payload as usize;
    assert!(max < Config::default().max_message, "{max}");
    assert_eq!(n.servers[0].config().client_limits.max_payload as usize, max);
    let big = |len: usize| {
        ClientFrame::Multicast(Multicast {
            service: Service::Agreed,
            msg_type: 1,
            self_discard: false,
            sealed: false,
            groups: Groups::encode(&["g"]).unwrap(),
            payload: Bytes::from(vec![7u8; len]),
        })
    };
    assert_eq!(n.request(0, 1, big(max)), Handled::Done);
    n.run(200 * MS);
    let got =
        n.frames(1, 2).iter().filter(|f| matches!(f, DaemonFrame::Message(m) if m.payload.len() == max));
    assert_eq!(got.count(), 1, "the largest payload was delivered");
    assert_eq!(n.request(0, 1, big(max + 1)), Handled::Refused(GroupsError::TooLarge));
    assert!(matches!(n.frames(0, 1).last(), Some(DaemonFrame::Error { code: ErrorCode::BadRequest, .. })));
}

/// A destination list too long to ride in a frame (64 groups of 32-byte
/// names: 2 KiB) is refused with an error. Before, the node took it and
/// could never send it: the daemon's every later message waited behind it
/// for good.
#[test]
fn a_destination_list_longer_than_a_frame_is_refused_and_the_ring_goes_on() {
    let mut n = Net::with_ring(2);
    n.connect(0, 1, "a", "unix:1000").expect("connect");
    n.connect(1, 2, "far", "unix:1000").expect("connect");
    n.request(1, 2, ClientFrame::Join { group: "g".into() });
    n.run(30 * MS);
    let to = |groups: Vec<String>| {
        let groups = Groups::encode(&groups).unwrap();
        ClientFrame::Multicast(Multicast {
            service: Service::Agreed,
            msg_type: 1,
            self_discard: false,
            sealed: false,
            groups,
            payload: Bytes::from_static(b"x"),
        })
    };
    let long: Vec<String> = (0..63).map(|i| format!("{i:0>32}")).chain(["g".to_owned()]).collect();
    assert_eq!(n.request(0, 1, to(long)), Handled::Refused(GroupsError::BadDestinations));
    assert!(matches!(n.frames(0, 1).last(), Some(DaemonFrame::Error { code: ErrorCode::BadRequest, .. })));
    // The node refuses such a list from any caller.
    let groups = Groups::encode(&vec![[b'n'; 32]; 64]).expect("encodes");
    let r = n.servers[0].node_mut().submit(n.now, Service::Agreed, groups, Bytes::from_static(b"x"));
    assert!(matches!(r, Err(SubmitError::GroupListTooLong(_))), "{r:?}");
    // And the daemon's next message goes through.
    assert_eq!(n.request(0, 1, to(vec!["g".into()])), Handled::Done);
    n.run(30 * MS);
    assert!(n.frames(1, 2).iter().any(|f| matches!(f, DaemonFrame::Message(m) if m.payload == "x")));
}

/// `Welcome` states the version the client's `Hello` negotiated: a client
/// offering only version 2 must not be told 3 (it would close the
/// connection, as the protocol says of a version outside its range).
#[test]
fn the_welcome_states_the_negotiated_version() {
    let mut n = Net::with_ring(1);
    let now = n.now;
    n.servers[0].handle_connect(now, ClientId(1), "old", "unix:0", true, 2).expect("connects");
    n.servers[0].handle_connect(now, ClientId(2), "new", "unix:0", true, CLIENT_VERSION).expect("connects");
    n.settle();
    let version = |c| match n.frames(0, c).first() {
        Some(DaemonFrame::Welcome(w)) => w.version,
        other => panic!("no welcome: {other:?}"),
    };
    assert_eq!(version(1), 2);
    assert_eq!(version(2), CLIENT_VERSION);
}
