//! Issue 14 ("Adversarial input"), breaks 1 to 3, on real daemons: an
//! attacker on the path between them, played by the test's UDP tap
//! (`common::capture`), which forwards every datagram between the daemons
//! and can copy, forge and inject datagrams with a daemon's configured
//! source address (loopback cannot be spoofed without raw sockets; the tap's
//! relays are the addresses the daemons know each other by).
//!
//! 1. `encrypt`: every small datagram daemon 1 sends to daemon 2 (its
//!    tokens) is also sent to daemon 0 during a flood from three senders.
//!    Before the fix daemon 0 took the copies for its own tokens and
//!    agreed messages were lost with no membership change. Now the link
//!    header names the receiver (and the ring takes a token only from its
//!    predecessor, as in Totem's ring order): every copy is dropped and
//!    counted at daemon 0, every message is delivered, the ring never
//!    changes, and `ringfence monitor` shows the count.
//! 2. `none`: a forged token with `seq = aru = 2^36` (ring id, sender and
//!    token sequence from a live token) made the receiver allocate 6 TB and
//!    abort. Now a token is held to the window the ring stores: dropped and
//!    counted, the daemon stays up and the ring goes on delivering.
//! 3. `none`: a forged Join with `max_ring_seq = u64::MAX` wedged every
//!    daemon (the next ring sequence wrapped), for good (it was
//!    persisted). Now a round is taken as at most `MAX_RING_STEP` above
//!    what a daemon knows and only rings it formed or installed are
//!    persisted: the cluster delivers again within seconds, and after a
//!    restart of every daemon the state files hold a sane sequence and the
//!    ring forms and delivers.
//!
//! Each test body runs on every socket backend (`common::backends`), the
//! backends side by side.

use ringfence_client::{Client, Event, Service};
use ringfence_proto::MAX_RING_STEP;
use ringfence_proto::wire::{Datagram as Wire, Join, NodeId, RingId, Token};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::capture::{Capture, UdpTap};
use common::{Cluster, backends, connect, receive_until, wait_for};

/// Bytes of the link header (`ring_proto::security::link`).
const HEADER: usize = 29;
/// Where the header names the receiver.
const TO: std::ops::Range<usize> = 11..13;
/// Datagrams smaller than this between two daemons of a keyed ring are
/// tokens (a sealed token is 95 bytes plus 12 per retransmission request;
/// a packet with a 100-byte message is well over 200).
const SMALL: usize = 160;
/// The group every test client joins.
const GROUP: &str = "adv";

/// Runs `body` once per socket backend, side by side.
fn on_every_backend(body: fn(&str)) {
    std::thread::scope(|s| {
        for backend in backends() {
            s.spawn(move || body(backend));
        }
    });
}

/// A counter of daemon `i`'s status (`section.name`), 0 if absent.
fn counter(s: &Value, section: &str, name: &str) -> u64 {
    s[section][name].as_u64().unwrap_or(0)
}

/// The ring `(seq, rep)` a daemon's status shows, if it is operational in
/// a ring of all `n` daemons (keyed, unless `keyed` is false).
fn whole_ring(s: &Value, n: u64, keyed: bool) -> Option<(u64, u64)> {
    let members: Vec<u64> = s["ring"]["members"].as_array()?.iter().filter_map(Value::as_u64).collect();
    let ready = s["phase"] == "Operational"
        && members == (0..n).collect::<Vec<_>>()
        && (!keyed || s["security"]["link_key"].is_string());
    ready.then(|| (s["ring"]["seq"].as_u64().unwrap_or(0), s["ring"]["rep"].as_u64().unwrap_or(0)))
}

/// The ring every daemon shows, if they all show the same whole ring.
fn one_ring(cluster: &Cluster, n: usize, keyed: bool) -> Option<(u64, u64)> {
    let rings: Vec<(u64, u64)> =
        (0..n).map(|i| whole_ring(&cluster.status(i)?, n as u64, keyed)).collect::<Option<_>>()?;
    rings.iter().all(|r| *r == rings[0]).then_some(rings[0])
}

/// Waits (at most 20 s) until every daemon shows the same whole ring;
/// returns it.
fn wait_whole_ring(cluster: &Cluster, n: usize, keyed: bool) -> (u64, u64) {
    wait_for("one ring of every daemon", Duration::from_secs(20), || one_ring(cluster, n, keyed))
}

/// A client on each daemon, all in `GROUP`, each having seen the view of
/// all of them.
fn clients(cluster: &Cluster, n: usize) -> Vec<Client> {
    let mut cs: Vec<Client> = (0..n).map(|i| connect(&cluster.socket(i), &format!("c{i}"))).collect();
    for c in &mut cs {
        c.join(GROUP).unwrap();
    }
    for c in &mut cs {
        receive_until(c, |e| matches!(e, Event::Membership(v) if v.group == GROUP && v.members.len() == n));
    }
    cs
}

/// `from` multicasts `text`; every client in `to` delivers it (at most
/// 20 s each).
fn exchange(cs: &mut [Client], from: usize, text: &str) {
    cs[from].multicast(Service::Agreed, &[GROUP], 0, text.as_bytes()).unwrap();
    for c in cs {
        receive_until(c, |e| matches!(e, Event::Message(m) if m.payload[..] == *text.as_bytes()));
    }
}

/// Break 1: token redirect in `encrypt` during a flood from three senders.
#[test]
fn redirected_tokens_lose_no_message_and_are_counted() {
    on_every_backend(redirect_on);
}

fn redirect_on(backend: &str) {
    let active = Arc::new(AtomicBool::new(false));
    let copies = Arc::new(AtomicU64::new(0));
    let (on, count) = (Arc::clone(&active), Arc::clone(&copies));
    let tap = UdpTap::start_redirecting(
        3,
        Capture::new(),
        Box::new(move |d| {
            let copy = on.load(Ordering::Relaxed) && d.from == 1 && d.to == 2 && d.bytes.len() < SMALL;
            copy.then(|| {
                count.fetch_add(1, Ordering::Relaxed);
                0
            })
        }),
    );
    let cluster = Cluster::start_on_tap("adv-redirect", backend, "encrypt", &tap, "");
    let mut cs = clients(&cluster, 3);
    let ring = wait_whole_ring(&cluster, 3, true);

    // About 3,000 messages/s from three senders, as the attack was found.
    const PER_SENDER: usize = 1500;
    active.store(true, Ordering::Relaxed);
    std::thread::scope(|s| {
        for (i, c) in cs.iter_mut().enumerate() {
            s.spawn(move || flood(c, i, PER_SENDER, 3));
        }
    });
    active.store(false, Ordering::Relaxed);

    let copies = copies.load(Ordering::Relaxed);
    assert!(copies > 100, "{backend}: only {copies} datagrams redirected");
    // Every copy is dropped at daemon 0 and counted: misdirected (a token
    // for daemon 2) or a replay (a datagram for every daemon, which daemon
    // 0 had from daemon 1 already).
    let s0 = wait_for("daemon 0 to count every redirected copy", Duration::from_secs(5), || {
        let s = cluster.status(0)?;
        let dropped = counter(&s, "security", "misdirected") + counter(&s, "security", "replays");
        (dropped >= copies).then_some(s)
    });
    let misdirected = counter(&s0, "security", "misdirected");
    assert!(misdirected > 0, "{backend}: {s0:#}");
    assert_eq!(misdirected + counter(&s0, "security", "replays"), copies, "{backend}: {s0:#}");
    // The ring never changed.
    for i in 0..3 {
        let s = cluster.status(i).unwrap();
        assert_eq!(whole_ring(&s, 3, true), Some(ring), "{backend}: d{i} left the ring: {s:#}");
    }
    // `ringfence monitor` shows the rejections by reason.
    let out = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["monitor", "--config", cluster.configs[0].to_str().unwrap(), "--once"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut table = text.lines().skip_while(|l| !l.starts_with("rejected"));
    let heading = table.next().unwrap_or_else(|| panic!("no rejection table: {text}"));
    let row = table.find(|l| l.starts_with("d0 ")).unwrap_or_else(|| panic!("{text}"));
    let column = heading.split_whitespace().position(|c| c == "misdirected").unwrap();
    let shown: u64 = row.split_whitespace().nth(column).and_then(|v| v.parse().ok()).unwrap();
    assert!(shown >= misdirected, "monitor shows {shown} misdirected: {text}");
}

/// Client `me` sends `per_sender` messages of 100 bytes in bursts of 10
/// every 10 ms while receiving; returns once it has delivered every
/// message of all `senders`, each sender's in its order.
fn flood(c: &mut Client, me: usize, per_sender: usize, senders: usize) {
    let mut next = vec![0usize; senders];
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tick = Instant::now();
    while next.iter().sum::<usize>() < per_sender * senders {
        assert!(Instant::now() < deadline, "client {me}: delivered only {next:?}");
        if sent < per_sender && Instant::now() >= tick {
            for _ in 0..10.min(per_sender - sent) {
                let mut payload = format!("{me}:{sent}:").into_bytes();
                payload.resize(100, b'.');
                c.multicast(Service::Agreed, &[GROUP], 0, &payload).unwrap();
                sent += 1;
            }
            tick += Duration::from_millis(10);
        }
        match c.poll().unwrap() {
            Some(Event::Message(m)) => {
                let text = String::from_utf8_lossy(&m.payload);
                let mut parts = text.split(':');
                let from: usize = parts.next().unwrap().parse().unwrap();
                let k: usize = parts.next().unwrap().parse().unwrap();
                assert_eq!(k, next[from], "client {me}: sender {from}'s messages out of order or lost");
                next[from] += 1;
            }
            Some(Event::Membership(v)) => panic!("client {me}: a view change during the flood: {v:?}"),
            Some(_) => {}
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// Waits for a token daemon 1 passed to daemon 2 (mode `none`: the
/// datagram is the link header and the token in clear); returns the whole
/// datagram and the token.
fn live_token(tap: &UdpTap) -> (Vec<u8>, Token) {
    wait_for("a token from daemon 1 to daemon 2", Duration::from_secs(10), || {
        tap.capture().datagram_list().into_iter().rev().filter(|d| d.from == 1 && d.to == 2).find_map(|d| {
            let token = Token::decode(d.bytes.get(HEADER..)?).ok()?;
            Some((d.bytes, token))
        })
    })
}

/// Break 2: a forged token in `none`.
#[test]
fn a_forged_token_beyond_the_window_crashes_nothing() {
    on_every_backend(forged_token_on);
}

fn forged_token_on(backend: &str) {
    let tap = UdpTap::start(3, Capture::new());
    let mut cluster = Cluster::start_on_tap("adv-token", backend, "none", &tap, "");
    let mut cs = clients(&cluster, 3);
    wait_whole_ring(&cluster, 3, false);
    exchange(&mut cs, 0, "before the forged tokens");

    // The live token's header (daemon 1 to daemon 2) and ring id; token
    // sequences from the live one to several rotations ahead, so one of
    // them is news to daemon 2 whatever the ring did meanwhile.
    let (datagram, live) = live_token(&tap);
    for ahead in 0..=30 {
        let forged = Token { token_seq: live.token_seq + ahead, seq: 1 << 36, aru: 1 << 36, ..live.clone() };
        let mut bytes = datagram[..HEADER].to_vec();
        bytes.extend_from_slice(&forged.encode());
        tap.inject(1, 2, &bytes);
    }
    // The ring goes on delivering, to and from the attacked daemon, and
    // every daemon is still up.
    exchange(&mut cs, 2, "after the forged tokens, from d2");
    exchange(&mut cs, 0, "after the forged tokens, from d0");
    for (i, child) in cluster.children.iter_mut().enumerate() {
        let exited = child.as_mut().unwrap().try_wait().unwrap();
        assert!(exited.is_none(), "{backend}: daemon {i} exited: {exited:?}");
    }
    // The forged tokens were dropped and counted.
    wait_for("daemon 2 to count the bad tokens", Duration::from_secs(5), || {
        cluster.status(2).filter(|s| counter(s, "protocol", "bad_tokens") > 0)
    });
}

/// Break 3: a forged Join with `max_ring_seq = u64::MAX` in `none`.
#[test]
fn a_forged_join_of_the_last_round_wedges_nothing_and_persists_nothing() {
    on_every_backend(forged_join_on);
}

fn forged_join_on(backend: &str) {
    let tap = UdpTap::start(3, Capture::new());
    let mut cluster = Cluster::start_on_tap("adv-join", backend, "none", &tap, "");
    let mut cs = clients(&cluster, 3);
    let (seq, rep) = wait_whole_ring(&cluster, 3, false);

    // Daemon 1's join, for every daemon, claiming the last round there is.
    let (datagram, _) = live_token(&tap);
    let join = Join {
        sender: NodeId(1),
        ring_id: RingId { seq, rep: NodeId(rep as u16) },
        max_ring_seq: u64::MAX,
        procs: (0..3).map(NodeId).collect(),
        fails: Vec::new(),
        suspects: Vec::new(),
    };
    let mut forged = datagram[..HEADER].to_vec();
    forged[TO].copy_from_slice(&u16::MAX.to_be_bytes());
    forged.extend_from_slice(&join.encode());
    assert!(matches!(Wire::decode(forged[HEADER..].to_vec().into()), Ok(Wire::Join(_))));
    for to in [0, 2] {
        tap.inject(1, to, &forged);
    }
    // Within a few seconds: one ring of all again, numbered a bounded step
    // higher, and delivering.
    // One step of at most MAX_RING_STEP per forged datagram (two went out:
    // a daemon that already climbed with the other's joins climbs again).
    let limit = seq + 2 * MAX_RING_STEP + 1000;
    let started = Instant::now();
    let (after, _) = wait_for("a new ring of every daemon", Duration::from_secs(5), || {
        one_ring(&cluster, 3, false).filter(|r| r.0 > seq)
    });
    assert!(after <= limit, "{backend}: ring sequence {after} after the forged join (was {seq})");
    exchange(&mut cs, 1, "after the forged join");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{backend}: delivering again took {took:?}");
    let bounded: u64 =
        (0..3).filter_map(|i| cluster.status(i)).map(|s| counter(&s, "protocol", "ring_seq_bounded")).sum();
    assert!(bounded >= 2, "{backend}: the forged round was not bounded at daemons 0 and 2");

    // Every daemon restarted: the persisted ring sequence is that of a ring
    // they formed or installed, and they form a ring and deliver again.
    drop(cs);
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        let state = cluster.state_file(i);
        let persisted: u64 = state
            .lines()
            .find_map(|l| l.strip_prefix("ring_seq="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{backend}: d{i}: no ring_seq in {state:?}"));
        assert!(persisted <= limit, "{backend}: d{i} persisted {persisted} (ring was {seq})");
        let _ = std::fs::remove_file(cluster.dir.join(format!("d{i}")).join("status.json"));
        cluster.spawn(i, Stdio::null());
    }
    let (again, _) = wait_whole_ring(&cluster, 3, false);
    assert!(again > after && again <= limit + 1000, "{backend}: ring {again} after the restart");
    let mut cs = clients(&cluster, 3);
    exchange(&mut cs, 2, "after the restart");
}
