//! Session threads in process: real sockets and threads, with the test in
//! the ring thread's place (it holds the receiving end of the requests
//! channel and answers through [`ClientOut`]).

use super::*;
use crossbeam_channel::RecvTimeoutError;
use ringfence_proto::wire::client::{
    Auth, ByeReason, ClientFrame, DaemonFrame, Frame, FrameDecoder, GroupNames, Limits, Message, RefuseCode,
    Welcome,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// Session threads on a fresh socket, and the ring's side of them.
struct Harness {
    sessions: Sessions,
    requests: Receiver<ToRing>,
    path: PathBuf,
    /// The TCP listener's address, if any.
    tcp: Option<SocketAddr>,
}

impl Harness {
    fn new(threads: usize, ring_queue: usize) -> Self {
        Self::with(threads, ring_queue, ClientCaps::default(), false)
    }

    /// Session threads with `caps`, and a TCP listener on loopback if `tcp`.
    fn with(threads: usize, ring_queue: usize, caps: ClientCaps, tcp: bool) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rf-session-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let path = dir.join("client.sock");
        let waker = Waker::new().unwrap();
        let (to_ring, requests) = bounded(ring_queue);
        let cfg = SessionConfig {
            unix: &path,
            tcp: tcp.then(|| {
                // A free port: bound, then released for the sessions to bind.
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
            }),
            clients: Arc::new(Clients { caps, ..Clients::default() }),
            auth_failures: Arc::new(AtomicU64::new(0)),
            to_ring,
            waker: &waker,
            limits: Limits::default(),
            ring_core: None,
        };
        let tcp = cfg.tcp;
        let sessions = Sessions::spawn(cfg, vec![None; threads]).unwrap();
        Self { sessions, requests, path, tcp }
    }

    fn connect(&self) -> TestClient {
        let s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        TestClient::new(Box::new(s))
    }

    fn connect_tcp(&self) -> TestClient {
        let s = std::net::TcpStream::connect(self.tcp.expect("a TCP listener")).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        TestClient::new(Box::new(s))
    }
}

impl TestClient {
    fn new(s: Box<dyn Duplex>) -> Self {
        Self { s, decoder: FrameDecoder::new(Limits::default()), buf: vec![0; 1 << 16] }
    }
}

impl Harness {
    fn request(&self) -> ToRing {
        self.requests.recv_timeout(WAIT).expect("no request from the sessions")
    }

    /// Connects a client and takes its `Connect`: (client, id, out).
    fn hello(&self, name: &str) -> (TestClient, u64, ClientOut) {
        let mut c = self.connect();
        c.send(&ClientFrame::Hello(Hello::new(name, Auth::PeerCredentials)));
        match self.request() {
            ToRing::Connect { id, hello_name, version, principal, out } => {
                assert_eq!(hello_name, name);
                assert_eq!(version, ringfence_proto::wire::client::CLIENT_VERSION);
                assert!(
                    matches!(principal, Principal::Local { pid, .. } if pid == std::process::id() as i32)
                );
                (c, id, out)
            }
            r => panic!("expected Connect, got {r:?}"),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn encode(f: &DaemonFrame) -> Bytes {
    let mut out = Vec::new();
    f.encode(&mut out, &Limits::default()).unwrap();
    Bytes::from(out)
}

fn welcome(name: &str) -> DaemonFrame {
    DaemonFrame::Welcome(Welcome {
        version: CLIENT_VERSION,
        daemon_id: 1,
        private_name: format!("#{name}#1"),
        max_frame_len: 1 << 20,
        max_payload: 1 << 20,
        max_groups: 8,
    })
}

/// A stream a test client talks over (Unix or TCP).
trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// A raw client: frames out, frames in.
struct TestClient {
    s: Box<dyn Duplex>,
    decoder: FrameDecoder<DaemonFrame>,
    buf: Vec<u8>,
}

impl TestClient {
    fn send(&mut self, f: &ClientFrame) {
        let mut out = Vec::new();
        f.encode(&mut out, &Limits::default()).unwrap();
        self.s.write_all(&out).unwrap();
    }

    /// The next frame, or `None` once the daemon closed the connection.
    fn next(&mut self) -> Option<DaemonFrame> {
        loop {
            if let Some(f) = self.decoder.next_frame().unwrap() {
                return Some(f);
            }
            match self.s.read(&mut self.buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

#[test]
fn connections_are_spread_over_the_session_threads_round_robin() {
    let h = Harness::new(3, RING_QUEUE);
    let mut clients = vec![];
    let mut threads = vec![];
    for i in 0..6 {
        let name = format!("c{i}");
        let (c, id, out) = h.hello(&name);
        threads.push((id >> 16) & 0xff);
        assert!(out.send(encode(&welcome(&name))));
        clients.push((c, name));
    }
    h.sessions.wake();
    assert_eq!(threads, vec![0, 1, 2, 0, 1, 2]);
    for (c, name) in &mut clients {
        assert_eq!(c.next(), Some(welcome(name)));
    }
}

/// The ring hears the version the client's `Hello` negotiated (for its
/// `Welcome`): a client offering only version 2 gets 2.
#[test]
fn the_negotiated_version_reaches_the_ring() {
    let h = Harness::new(1, RING_QUEUE);
    let mut c = h.connect();
    let mut hello = Hello::new("old", Auth::PeerCredentials);
    hello.max_version = 2;
    c.send(&ClientFrame::Hello(hello));
    match h.request() {
        ToRing::Connect { version, .. } => assert_eq!(version, 2),
        _ => panic!("expected a Connect"),
    }
}

#[test]
fn one_buffer_reaches_every_client_on_every_thread() {
    let h = Harness::new(2, RING_QUEUE);
    let mut clients: Vec<_> = (0..4).map(|i| h.hello(&format!("c{i}"))).collect();
    let msg = DaemonFrame::Message(Message {
        sealed: false,
        sender: "#c0#1".into(),
        groups: GroupNames::new(&["g"]).unwrap(),
        service: ringfence_proto::Service::Agreed,
        msg_type: 3,
        payload: Bytes::from_static(b"to everyone"),
    });
    let bytes = encode(&msg);
    for (_, _, out) in &clients {
        assert!(out.send(bytes.clone()));
    }
    h.sessions.wake();
    for (c, _, _) in &mut clients {
        assert_eq!(c.next(), Some(msg.clone()));
    }
}

#[test]
fn a_full_ring_queue_slows_the_client_and_drops_nothing() {
    let h = Harness::new(1, 4);
    let (mut c, id, _out) = h.hello("fast");
    let mut batch = Vec::new();
    for i in 0..2000 {
        ClientFrame::Join { group: format!("g{i}") }.encode(&mut batch, &Limits::default()).unwrap();
    }
    c.s.write_all(&batch).unwrap();
    // The ring does not drain: its queue fills and stays full.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(h.requests.len(), 4);
    for i in 0..2000 {
        match h.request() {
            ToRing::Frame { id: from, frame: ClientFrame::Join { group } } => {
                assert_eq!(from, id);
                assert_eq!(group, format!("g{i}"), "requests in order, none lost");
            }
            r => panic!("unexpected {r:?}"),
        }
    }
    assert!(matches!(h.requests.recv_timeout(Duration::from_millis(50)), Err(RecvTimeoutError::Timeout)));
}

#[test]
fn a_slow_reader_gets_bye_slow_consumer_and_the_ring_hears_gone() {
    let h = Harness::new(1, RING_QUEUE);
    let (mut slow, id, out) = h.hello("slow");
    let (mut other, _, other_out) = h.hello("other");
    let frame = encode(&DaemonFrame::Message(Message {
        sealed: false,
        sender: "#x#1".into(),
        groups: GroupNames::new(&["g"]).unwrap(),
        service: ringfence_proto::Service::Agreed,
        msg_type: 0,
        payload: Bytes::from(vec![7u8; 64 * 1024]),
    }));
    let deadline = Instant::now() + WAIT;
    let mut sent = 0;
    let gone = loop {
        assert!(Instant::now() < deadline, "never disconnected");
        if sent < 2 * CLIENT_QUEUE_BYTES / frame.len() {
            assert!(out.send(frame.clone()));
            sent += 1;
            h.sessions.wake();
        }
        match h.requests.try_recv() {
            Ok(ToRing::Gone { id: g }) => break g,
            Ok(r) => panic!("unexpected {r:?}"),
            Err(_) if sent % 64 == 0 => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => {}
        }
    };
    assert_eq!(gone, id);
    // The daemon goes on: the other client is served.
    assert!(other_out.send(encode(&welcome("other"))));
    h.sessions.wake();
    assert_eq!(other.next(), Some(welcome("other")));
    // The slow client reads whole messages, then the reason, then the end.
    let mut messages = 0;
    let reason = loop {
        match slow.next() {
            Some(DaemonFrame::Message(_)) => messages += 1,
            Some(DaemonFrame::Bye { reason, .. }) => break reason,
            f => panic!("unexpected {f:?}"),
        }
    };
    assert_eq!(reason, ByeReason::SlowConsumer);
    assert!(messages > 0);
    assert_eq!(slow.next(), None);
}

#[test]
fn bye_is_answered_and_the_ring_hears_gone() {
    let h = Harness::new(1, RING_QUEUE);
    let (mut c, id, _out) = h.hello("leaving");
    c.send(&ClientFrame::Bye);
    assert!(matches!(c.next(), Some(DaemonFrame::Bye { reason: ByeReason::ClientBye, .. })));
    assert_eq!(c.next(), None);
    assert!(matches!(h.request(), ToRing::Gone { id: g } if g == id));
}

#[test]
fn a_malformed_frame_ends_the_session_with_a_reason() {
    let h = Harness::new(1, RING_QUEUE);
    let (mut c, id, _out) = h.hello("bad");
    // Type 0x81 travels from daemon to client only.
    c.s.write_all(&[0, 0, 0, 1, 0x81]).unwrap();
    assert!(matches!(c.next(), Some(DaemonFrame::Bye { reason: ByeReason::ProtocolViolation, .. })));
    assert_eq!(c.next(), None);
    assert!(matches!(h.request(), ToRing::Gone { id: g } if g == id));
}

#[test]
fn the_first_frame_must_be_hello() {
    let h = Harness::new(1, RING_QUEUE);
    let mut c = h.connect();
    c.send(&ClientFrame::Join { group: "g".into() });
    assert!(matches!(c.next(), Some(DaemonFrame::Refused { code: RefuseCode::ProtocolViolation, .. })));
    assert_eq!(c.next(), None);
    // The ring never heard of it.
    assert!(matches!(h.requests.recv_timeout(Duration::from_millis(50)), Err(RecvTimeoutError::Timeout)));
}

#[test]
fn a_refusal_from_the_ring_closes_the_connection() {
    let h = Harness::new(1, RING_QUEUE);
    let (mut c, id, out) = h.hello("dup");
    let refused = DaemonFrame::Refused { code: RefuseCode::NameInUse, text: "taken".into() };
    assert!(out.send_last(encode(&refused)));
    h.sessions.wake();
    assert_eq!(c.next(), Some(refused));
    assert_eq!(c.next(), None);
    assert!(matches!(h.request(), ToRing::Gone { id: g } if g == id));
    // A frame for the closed client is dropped, not misdelivered.
    assert!(out.send(encode(&welcome("dup"))));
    h.sessions.wake();
    let (mut next, _, next_out) = h.hello("next");
    assert!(next_out.send(encode(&welcome("next"))));
    h.sessions.wake();
    assert_eq!(next.next(), Some(welcome("next")));
}

#[test]
fn a_client_that_never_says_hello_is_closed_after_the_hello_timeout() {
    let h = Harness::new(1, RING_QUEUE);
    let t0 = Instant::now();
    let mut c = h.connect();
    assert_eq!(c.next(), None);
    let waited = t0.elapsed();
    assert!(waited >= HELLO_TIMEOUT, "closed after {waited:?}");
    assert!(waited < HELLO_TIMEOUT + Duration::from_secs(2), "closed after {waited:?}");
    assert!(h.requests.try_recv().is_err(), "the ring never heard of it");
}

#[test]
fn a_second_hello_is_a_protocol_violation() {
    let h = Harness::new(1, RING_QUEUE);
    let (mut c, id, _out) = h.hello("twice");
    c.send(&ClientFrame::Hello(Hello::new("twice", Auth::PeerCredentials)));
    assert!(matches!(c.next(), Some(DaemonFrame::Bye { reason: ByeReason::ProtocolViolation, .. })));
    assert_eq!(c.next(), None);
    assert!(matches!(h.request(), ToRing::Gone { id: g } if g == id));
}

#[test]
fn an_oversized_first_frame_is_refused_before_its_body_is_buffered() {
    let h = Harness::with(1, RING_QUEUE, ClientCaps::default(), true);
    for tcp in [false, true] {
        let mut c = if tcp { h.connect_tcp() } else { h.connect() };
        // Most of a 1 MiB frame announced, 64 KiB of it sent.
        let mut bytes = (1u32 << 20).to_be_bytes().to_vec();
        bytes.push(0x04);
        bytes.resize(64 << 10, 7);
        let _ = c.s.write_all(&bytes);
        match c.next() {
            Some(DaemonFrame::Refused { code: RefuseCode::ProtocolViolation, text }) => {
                assert!(text.contains("1048576 bytes") && text.contains("8192"), "{text}");
            }
            f => panic!("expected Refused, got {f:?}"),
        }
        assert_eq!(c.next(), None);
    }
    // Nothing reached the ring; no input is held.
    assert!(h.requests.try_recv().is_err());
    assert_eq!(h.sessions.counts.buffered(), 0);
}

#[test]
fn over_a_cap_a_connection_gets_too_many_clients() {
    let caps = ClientCaps { max_clients: 1, max_unauthenticated: 2, ..ClientCaps::default() };
    let h = Harness::with(1, RING_QUEUE, caps, true);
    // Two idle TCP connections fill the unauthenticated TCP pool.
    let idle: Vec<TestClient> = (0..2).map(|_| h.connect_tcp()).collect();
    let mut third = h.connect_tcp();
    match third.next() {
        Some(DaemonFrame::Refused { code: RefuseCode::TooManyClients, text }) => {
            assert!(text.contains("max_unauthenticated"), "{text}");
        }
        f => panic!("expected Refused {{ TooManyClients }}, got {f:?}"),
    }
    assert_eq!(third.next(), None);
    // A local client still connects: its pool is its own.
    let (mut local, _, out) = h.hello("local");
    assert!(out.send(encode(&welcome("local"))));
    h.sessions.wake();
    assert_eq!(local.next(), Some(welcome("local")));
    // A second Hello over `max_clients` is refused the same way.
    let mut late = h.connect();
    late.send(&ClientFrame::Hello(Hello::new("late", Auth::PeerCredentials)));
    match late.next() {
        Some(DaemonFrame::Refused { code: RefuseCode::TooManyClients, text }) => {
            assert!(text.contains("max_clients"), "{text}");
        }
        f => panic!("expected Refused {{ TooManyClients }}, got {f:?}"),
    }
    assert_eq!(late.next(), None);
    drop(idle);
}

#[test]
fn the_input_budget_holds_a_second_big_frame_until_the_first_is_done() {
    let frame_max = Limits::default().max_frame_len as usize + 4;
    let caps = ClientCaps { connection_buffer: frame_max, buffer_budget: frame_max, ..ClientCaps::default() };
    let h = Harness::with(1, RING_QUEUE, caps, false);
    let (mut a, id_a, _) = h.hello("a");
    let (mut b, id_b, _) = h.hello("b");
    let big = |byte: u8| {
        let mut out = Vec::new();
        let m = ClientFrame::Multicast(ringfence_proto::wire::client::Multicast {
            service: ringfence_proto::Service::Agreed,
            groups: ringfence_proto::wire::Groups::encode(&["g"]).unwrap(),
            msg_type: 0,
            payload: Bytes::from(vec![byte; 1 << 20]),
            self_discard: false,
            sealed: false,
        });
        m.encode(&mut out, &Limits::default()).unwrap();
        out
    };
    let (fa, fb) = (big(1), big(2));
    // `a` sends all but its last byte: it holds nearly the whole budget.
    a.s.write_all(&fa[..fa.len() - 1]).unwrap();
    let deadline = Instant::now() + WAIT;
    while h.sessions.counts.buffered() < fa.len() - 1 {
        assert!(Instant::now() < deadline, "a's frame never buffered");
        std::thread::sleep(Duration::from_millis(5));
    }
    // `b` sends a whole frame: it waits in its socket, not in memory.
    let writer = std::thread::spawn(move || {
        b.s.write_all(&fb).unwrap();
        b
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(h.sessions.counts.buffered() <= caps.buffer_budget + 4096, "{}", h.sessions.counts.buffered());
    assert!(h.requests.try_recv().is_err(), "no frame is complete yet");
    // `a` finishes: its frame goes to the ring, then `b`'s.
    a.s.write_all(&fa[fa.len() - 1..]).unwrap();
    for (want, byte) in [(id_a, 1u8), (id_b, 2)] {
        match h.request() {
            ToRing::Frame { id, frame: ClientFrame::Multicast(m) } => {
                assert_eq!(id, want);
                assert!(m.payload.len() == 1 << 20 && m.payload.iter().all(|&x| x == byte));
            }
            r => panic!("unexpected {r:?}; a got {:?}", a.next()),
        }
    }
    let _b = writer.join().unwrap();
    // Both frames taken: no input is held.
    let deadline = Instant::now() + WAIT;
    while h.sessions.counts.buffered() != 0 {
        assert!(Instant::now() < deadline, "input still held: {}", h.sessions.counts.buffered());
        std::thread::sleep(Duration::from_millis(5));
    }
}
