//! What clients may cost a real daemon (issue 14, breaks 4 and 5): frames
//! before Hello are a few KB at most, undecoded input is bounded per
//! connection and over all of them, unauthenticated connections have caps of
//! their own, a connection over a cap is told `Refused { TooManyClients }`,
//! and a daemon whose secret key does not match its configured public key
//! does not start.
//!
//! Client sessions do not depend on the ring thread's socket backend, so
//! these run on the portable one only.

mod common;

use common::{Cluster, Pki, connect, connect_with, receive_until};
use ringfence_client::{Address, ClientError, Event, Service};
use ringfence_proto::wire::client::{
    Auth, ClientFrame, DaemonFrame, Frame, FrameDecoder, Hello, Limits, RefuseCode,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Connections that each send most of a 1 MiB frame (as in the issue).
const CONNECTIONS: usize = 300;
/// How much of its frame each sends.
const MOST: usize = 1000 << 10;
/// What the daemon's memory may grow by under that load.
const GROWTH_KB: u64 = 20 << 10;

/// The daemon's resident set (`VmRSS`), in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The first bytes of a Multicast frame announcing `len` bytes, followed by
/// filler up to `total` bytes.
fn big_frame_head(len: u32, total: usize) -> Vec<u8> {
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.push(0x04);
    bytes.resize(total, 7);
    bytes
}

/// Reads one daemon frame (or `None` at the end of the stream).
fn next_frame(s: &mut impl Read, decoder: &mut FrameDecoder<DaemonFrame>) -> Option<DaemonFrame> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(f) = decoder.next_frame().unwrap() {
            return Some(f);
        }
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A normal client joins a group and gets its own message back.
fn serves_a_normal_client(socket: &Path, name: &str) {
    let mut c = connect(socket, name);
    c.join("limits").unwrap();
    receive_until(&mut c, |e| matches!(e, Event::Membership(_)));
    c.multicast(Service::Agreed, &["limits"], 1, b"still served").unwrap();
    let got = receive_until(&mut c, |e| matches!(e, Event::Message(_)));
    assert!(matches!(got.last(), Some(Event::Message(m)) if &m.payload[..] == b"still served"));
}

#[test]
fn unauthenticated_connections_sending_big_frames_cost_the_daemon_little() {
    let c = Cluster::start_extra("limits-unauth", 1, "portable", "");
    // Up and warm: a client has been served.
    serves_a_normal_client(&c.socket(0), "warm");
    let pid = c.children[0].as_ref().unwrap().id();
    let base = rss_kb(pid);

    // A frame announced too large for a Hello is refused at once, with a
    // reason.
    let mut probe = TcpStream::connect(c.tcp(0)).unwrap();
    probe.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    probe.write_all(&big_frame_head(1 << 20, 5)).unwrap();
    match next_frame(&mut probe, &mut FrameDecoder::new(Limits::default())) {
        Some(DaemonFrame::Refused { code: RefuseCode::ProtocolViolation, text }) => {
            assert!(text.contains("1048576"), "{text}");
        }
        f => panic!("expected Refused {{ ProtocolViolation }}, got {f:?}"),
    }

    let head = big_frame_head(1 << 20, MOST);
    let mut conns = Vec::with_capacity(CONNECTIONS);
    let mut peak = base;
    for i in 0..CONNECTIONS {
        let mut s = TcpStream::connect(c.tcp(0)).unwrap();
        // The daemon stops reading after a few KB: a write it does not
        // take ends with its close, or after this (bounded).
        s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
        let _ = s.write_all(&head);
        conns.push(s);
        if i % 25 == 24 {
            peak = peak.max(rss_kb(pid));
        }
    }
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss_kb(pid));
    }
    eprintln!("daemon RSS: {base} KiB before, {peak} KiB at most with {CONNECTIONS} connections");
    assert!(peak < base + GROWTH_KB, "RSS grew from {base} KiB to {peak} KiB");
    drop(conns);
    serves_a_normal_client(&c.socket(0), "after");
}

#[test]
fn authenticated_clients_sending_big_frames_stay_within_the_input_budget() {
    // A global input budget of 8 MiB (the default is 64 MiB).
    let budget_kb: u64 = 8 << 10;
    let extra = format!("\n[clients]\nbuffer_budget = {}\n", budget_kb << 10);
    let c = Cluster::start_extra("limits-auth", 1, "portable", &extra);
    serves_a_normal_client(&c.socket(0), "warm");
    let pid = c.children[0].as_ref().unwrap().id();
    let base = rss_kb(pid);

    let mut hello = Vec::new();
    let limits = Limits::default();
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut s = UnixStream::connect(c.socket(0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        hello.clear();
        ClientFrame::Hello(Hello::new(format!("big{i}"), Auth::PeerCredentials))
            .encode(&mut hello, &limits)
            .unwrap();
        s.write_all(&hello).unwrap();
        let welcome = next_frame(&mut s, &mut FrameDecoder::new(limits));
        assert!(matches!(welcome, Some(DaemonFrame::Welcome(_))), "client {i}: {welcome:?}");
        s.set_nonblocking(true).unwrap();
        conns.push((s, 0usize));
    }
    // Each sends as much of its frame as the daemon takes, for at most 3 s.
    let head = big_frame_head(1 << 20, MOST);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut peak = base;
    while Instant::now() < deadline && conns.iter().any(|(_, sent)| *sent < MOST) {
        for (s, sent) in &mut conns {
            if let Ok(n) = s.write(&head[*sent..]) {
                *sent += n;
            }
        }
        peak = peak.max(rss_kb(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent: usize = conns.iter().map(|(_, n)| n).sum();
    eprintln!("daemon RSS: {base} KiB before, {peak} KiB at most; clients wrote {} KiB in all", sent >> 10);
    let sent_kb = u64::try_from(sent >> 10).unwrap();
    assert!(sent_kb >= 2 * budget_kb, "the clients wrote only {sent_kb} KiB: not a test of the budget");
    assert!(peak < base + budget_kb + GROWTH_KB, "RSS grew from {base} KiB to {peak} KiB");
    // Small requests still pass while the budget is full.
    serves_a_normal_client(&c.socket(0), "during");
    drop(conns);
    // The allocator gives freed memory back to the system a little later:
    // wait up to 3 s for it.
    let waited = Instant::now();
    let mut after = rss_kb(pid);
    while after >= base + GROWTH_KB && waited.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        after = rss_kb(pid);
    }
    eprintln!("daemon RSS after the clients closed: {after} KiB ({:?} after)", waited.elapsed());
    assert!(after < base + GROWTH_KB, "RSS stayed at {after} KiB (from {base} KiB)");
    serves_a_normal_client(&c.socket(0), "after");
}

#[test]
fn largest_messages_pass_over_tls_within_the_budgets() {
    let pki = Pki::new("limits-tls", &["alice"], "limits-token-5d1e");
    let c = Cluster::start_with("limits-tls", 1, "portable", "unicast", &pki.clients_section);
    let mut alice = connect_with(&Address::Tcp(c.tcp(0)), "alice", &pki.cert("alice"));
    alice.join("big").unwrap();
    receive_until(&mut alice, |e| matches!(e, Event::Membership(_)));
    // Three payloads of about the largest size, back to back: each frame is
    // read in TLS records and reserved in the input budget once its length
    // is known. (Not 1 MiB exactly: the ring's largest message is 1 MiB
    // including the group header, and a larger one is dropped with a
    // warning, not an `Error`; a separate bug.)
    let payloads: Vec<Vec<u8>> = (0..3u8).map(|k| vec![k; 1_000_000]).collect();
    for p in &payloads {
        alice.multicast(Service::Agreed, &["big"], 2, p).unwrap();
    }
    let mut got = Vec::new();
    receive_until(&mut alice, |e| {
        if let Event::Message(m) = e {
            got.push(m.payload.to_vec());
        }
        got.len() == payloads.len()
    });
    assert!(got == payloads, "the messages came back changed");
}

#[test]
fn over_the_caps_connections_are_told_too_many_clients() {
    let extra = "\n[clients]\nmax_clients = 3\nmax_unauthenticated = 4\n";
    let c = Cluster::start_extra("limits-caps", 1, "portable", extra);
    // Up: one client connected (of 3), then gone.
    drop(connect(&c.socket(0), "probe"));
    // Idle TCP connections fill the unauthenticated TCP cap (they are
    // closed after the 5 s Hello deadline; the test is done before).
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(c.tcp(0)).unwrap()).collect();
    let mut over = TcpStream::connect(c.tcp(0)).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match next_frame(&mut over, &mut FrameDecoder::new(Limits::default())) {
        Some(DaemonFrame::Refused { code: RefuseCode::TooManyClients, text }) => {
            assert!(text.contains("max_unauthenticated"), "{text}");
        }
        f => panic!("expected Refused {{ TooManyClients }}, got {f:?}"),
    }
    // Local clients still connect, up to `max_clients`.
    let clients: Vec<_> = (0..3).map(|i| connect(&c.socket(0), &format!("local{i}"))).collect();
    match ringfence_client::Client::connect(&Address::Unix(c.socket(0)), "one-too-many") {
        Err(ClientError::Refused { code: RefuseCode::TooManyClients, text }) => {
            assert!(text.contains("max_clients"), "{text}");
        }
        Err(e) => panic!("expected Refused {{ TooManyClients }}, got {e}"),
        Ok(_) => panic!("a fourth client connected over max_clients = 3"),
    }
    drop(idle);
    drop(clients);
}

#[test]
fn a_secret_key_that_does_not_match_the_public_key_stops_the_daemon() {
    let mut c = Cluster::start_extra("limits-key", 1, "portable", "");
    c.kill(0);
    // d0's key file now holds another key pair's secret.
    let other = c.dir.join("other");
    common::keypair(&other, "d0");
    let key = c.dir.join("keys").join("d0.key");
    std::fs::copy(other.join("d0.key"), &key).unwrap();
    let _ = std::fs::remove_file(c.socket(0));
    let child = c.spawn(0, Stdio::piped());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon kept running with a mismatched key");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "exit {status}; {stderr}");
    for want in
        [key.to_str().unwrap(), "does not match", "cluster.daemon.public_key", "ringfence keygen daemon d0"]
    {
        assert!(stderr.contains(want), "`{want}` not in: {stderr}");
    }
    assert!(!c.socket(0).exists(), "no client socket was opened");
}
