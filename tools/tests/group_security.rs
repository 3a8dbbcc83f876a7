//! Real daemons on loopback with client group security (the integrated
//! architecture of Amir, Kim, Nita-Rotaru, Schultz, Stanton and Tsudik,
//! "Secure group communication using robust contributory key agreement" /
//! "Scaling secure group communication systems: beyond peer-to-peer",
//! sections 4.3.2 and 4.3.3): the daemons derive each view's key
//! `K_g,i = HMAC(K_s, g || view id)` and hand it to the view's members.
//!
//! - `integrated-vs`: clients seal every payload under the view key; an
//!   independent capture of every daemon-to-daemon datagram and every
//!   client-to-daemon TCP byte holds no payload plaintext; a client that
//!   left keeps no key that opens the next view's messages.
//! - `optimized-evs` across a real partition and merge (`kill -STOP` /
//!   `kill -CONT` of a daemon): a message sealed in the view before the
//!   partition and delivered after the merge opens at every receiver,
//!   resealed by their daemons (the EVS fix, counted in `status.json`);
//!   where the policy's key-out or time-out expired the old key first, the
//!   receivers are told the message is undecipherable, with the sender and
//!   the reason.
//! - `three-step`: remote clients over TLS (a client certificate from the
//!   cluster CA, or a pre-shared token) exchange messages through the
//!   daemons' encrypted links; no plaintext crosses TCP or UDP; a client
//!   without a valid certificate or token, or on plain TCP, is refused with
//!   a clear error.
//! - Access control: a client the policy does not allow to join or send
//!   gets an error and the group never sees its message.

use ringfence_client::{Address, Client, ClientError, ConnectOptions, Event, GroupMode, Message, Service};
use ringfence_proto::wire::client::RefuseCode;
use std::time::{Duration, Instant};

mod common;

use common::capture::TcpTap;
use common::{Cluster, Pki, backends, connect, connect_token, connect_with, token_config, wait_for};

const MARKER: &[u8] = b"RFGROUP-PLAINTEXT-MARKER";

/// A client and every event it got, answering flush requests at once.
struct Member {
    c: Client,
    events: Vec<Event>,
}

impl Member {
    fn new(c: Client) -> Self {
        Self { c, events: Vec::new() }
    }

    /// Takes what has arrived.
    fn pump(&mut self) {
        while let Some(e) = self.c.poll().unwrap() {
            if let Event::FlushRequest { group, view_id } = &e {
                self.c.flush_ok(group, *view_id).unwrap();
            }
            self.events.push(e);
        }
    }

    /// Waits (at most 20 s) until an event matches.
    fn wait(&mut self, what: &str, mut f: impl FnMut(&Event) -> bool) {
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.pump();
            if self.events[seen..].iter().any(&mut f) {
                return;
            }
            seen = self.events.len();
            assert!(Instant::now() < deadline, "timed out waiting for {what}; events: {:#?}", self.events);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a regular view of `group` with `n` members.
    fn wait_view(&mut self, group: &str, n: usize) {
        self.wait(&format!("a view of {group} with {n} members"), |e| {
            matches!(e, Event::Membership(m) if m.group == group && m.members.len() == n
                && m.kind == ringfence_client::ViewKind::Regular)
        });
    }

    fn messages(&self, group: &str) -> Vec<&Message> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.groups.iter().any(|g| g == group) => Some(m),
                _ => None,
            })
            .collect()
    }
}

/// Waits until every member holds a regular view of `group` with `n`
/// members, pumping all of them (a VS view change waits for every member's
/// flush answer).
fn wait_views(m: &mut [Member], group: &str, n: usize) {
    let has = |x: &Member| {
        x.events.iter().rev().find_map(|e| match e {
            Event::Membership(v) if v.group == group && v.kind == ringfence_client::ViewKind::Regular => {
                Some(v.members.len())
            }
            _ => None,
        }) == Some(n)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        m.iter_mut().for_each(Member::pump);
        if m.iter().all(has) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for views of {group} with {n} members");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const IVS_POLICY: &str = r#"
[[group]]
pattern = "ivs.*"
mode = "integrated-vs"
"#;

#[test]
fn integrated_vs_seals_every_byte_and_a_leaver_cannot_read_on() {
    for backend in backends() {
        let names = ["m0", "m1", "m2"];
        let pki = Pki::new("ivs", &names, "bob-token-7f3a");
        // TLS, and plain TCP allowed for the token client refused below.
        let clients = pki.clients_section.replacen("[clients]\n", "[clients]\nrequire_tls = false\n", 1);
        let extra = format!("{IVS_POLICY}{clients}{}", token_config());
        let (cluster, tap) = Cluster::start_tapped_extra("ivs", 3, backend, "encrypt", &extra);
        let capture = tap.capture().clone();
        // Every client talks TLS through a recording proxy.
        let proxies: Vec<TcpTap> = (0..3).map(|i| TcpTap::start(cluster.tcp(i), capture.clone())).collect();
        let mut m: Vec<Member> = (0..3)
            .map(|i| {
                Member::new(connect_with(&Address::Tcp(proxies[i].address()), names[i], &pki.cert(names[i])))
            })
            .collect();
        for x in &mut m {
            x.c.join_with("ivs.room", true, GroupMode::IntegratedVs).unwrap();
        }
        wait_views(&mut m, "ivs.room", 3);
        for (i, x) in m.iter_mut().enumerate() {
            let mut p = MARKER.to_vec();
            p.extend_from_slice(format!("-{i}").as_bytes());
            x.c.multicast(Service::Agreed, &["ivs.room"], 1, &p).unwrap();
        }
        for x in &mut m {
            wait_for("three messages", Duration::from_secs(20), || {
                x.pump();
                (x.messages("ivs.room").len() == 3).then_some(())
            });
            for msg in x.messages("ivs.room") {
                assert!(msg.payload.starts_with(MARKER), "opened plaintext: {:?}", msg.payload);
            }
        }
        assert!(capture.datagrams() > 0 && capture.tcp_bytes() > 0, "the capture saw the traffic");
        assert!(!capture.contains(MARKER), "payload plaintext on the wire ({backend})");
        let key = m[0].c.view_key("ivs.room").unwrap().secret().expose_secret().to_vec();
        assert!(!capture.contains(&key), "the view key crossed a wire in clear ({backend})");
        // A client on plain TCP (a token, no TLS) gets no key: refused.
        let mut plain = Member::new(connect_token(&Address::Tcp(cluster.tcp(0)), "plain"));
        plain.c.join_with("ivs.room", true, GroupMode::IntegratedVs).unwrap();
        plain.wait(
            "a refusal",
            |e| matches!(e, Event::Error { text, .. } if text.contains("local socket or TLS")),
        );

        // m2 leaves; m1 takes the next view's messages sealed, as delivered.
        let left_key = m[2].c.view_key("ivs.room").map(|k| k.id()).unwrap();
        m[2].pump();
        let seen_before_leave = m[2].events.len();
        m[2].c.leave("ivs.room").unwrap();
        wait_views(&mut m[..2], "ivs.room", 2);
        m[1].c.set_raw_payloads(true);
        m[0].c.multicast(Service::Agreed, &["ivs.room"], 1, b"after the leave").unwrap();
        wait_for("the sealed message", Duration::from_secs(20), || {
            m[1].pump();
            m[1].messages("ivs.room").iter().any(|x| x.sealed).then_some(())
        });
        let sealed = m[1].messages("ivs.room").into_iter().find(|x| x.sealed).unwrap().clone();
        let sender = m[0].c.private_name().to_string();
        let held = m[1].c.view_key("ivs.room").unwrap();
        assert_ne!(held.id(), left_key, "a new view, a new key");
        assert_eq!(
            held.open(b"ivs.room", sender.as_bytes(), 1, &sealed.payload).unwrap(),
            b"after the leave"
        );
        let old = m[2].c.view_key("ivs.room").expect("the leaver's last key");
        assert_eq!(old.id(), left_key);
        assert!(old.open(b"ivs.room", sender.as_bytes(), 1, &sealed.payload).is_err());
        std::thread::sleep(Duration::from_millis(200));
        m[2].pump();
        // Nothing of the group reaches the leaver after its leave: no view,
        // no message, not even one it could not open.
        let after: Vec<&Event> = m[2].events[seen_before_leave..]
            .iter()
            .filter(|e| match e {
                Event::Membership(v) => v.group == "ivs.room",
                Event::Message(x) => x.groups.iter().any(|g| g == "ivs.room"),
                Event::Undecipherable { group, .. } => group == "ivs.room",
                _ => false,
            })
            .collect();
        assert!(after.is_empty(), "the leaver got {after:?}");
        drop(proxies);
        drop(cluster);
    }
}

const EVS_POLICY: &str = r#"
[[group]]
pattern = "evs.keep"
mode = "optimized-evs"
key_out = 8
key_timeout_s = 600

[[group]]
pattern = "evs.ko"
mode = "optimized-evs"
key_out = 1
key_timeout_s = 600

[[group]]
pattern = "evs.to"
mode = "optimized-evs"
key_out = 8
key_timeout_s = 2
"#;

fn counter(cluster: &Cluster, i: usize, key: &str) -> u64 {
    cluster.status(i).and_then(|s| s["groups"][key].as_u64()).unwrap_or(0)
}

#[test]
fn optimized_evs_across_a_partition_and_merge() {
    let backend = backends()[0];
    let cluster = Cluster::start_extra("evs", 3, backend, EVS_POLICY);
    let mut m: Vec<Member> =
        (0..3).map(|i| Member::new(connect(&cluster.socket(i), &format!("m{i}")))).collect();
    let groups = ["evs.keep", "evs.ko", "evs.to"];
    for x in &mut m {
        for g in groups {
            x.c.join_with(g, false, GroupMode::OptimizedEvs).unwrap();
        }
    }
    for x in &mut m {
        for g in groups {
            x.wait_view(g, 3);
        }
    }
    // Partition: daemon 2 stops; its client keeps sending under the keys of
    // the view it holds (the writes wait in the socket).
    cluster.signal(2, "STOP");
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m[0].wait_view("evs.keep", 2);
        for g in groups {
            let mut p = b"from m2 in the old view: ".to_vec();
            p.extend_from_slice(g.as_bytes());
            m[2].c.multicast(Service::Agreed, &[g], 9, &p).unwrap();
        }
        // Two more views of evs.ko on this side: its old key goes by key-out.
        let mut x = Member::new(connect(&cluster.socket(0), "extra"));
        x.c.join_with("evs.ko", false, GroupMode::OptimizedEvs).unwrap();
        m[0].wait_view("evs.ko", 3);
        x.c.leave("evs.ko").unwrap();
        m[0].wait_view("evs.ko", 2);
        // And evs.to's old key stays unused past its 2 s time-out.
        std::thread::sleep(
            Duration::from_millis(3000).saturating_sub(t0.elapsed()) + Duration::from_millis(500),
        );
    }));
    cluster.signal(2, "CONT");
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
    for x in m.iter_mut().take(2) {
        x.wait_view("evs.keep", 3);
    }
    let sender = m[2].c.private_name().to_string();
    for x in m.iter_mut().take(2) {
        wait_for("m2's evs.keep message, opened", Duration::from_secs(20), || {
            x.pump();
            x.messages("evs.keep").iter().any(|y| y.sender == sender).then_some(())
        });
        let got = x.messages("evs.keep").into_iter().find(|y| y.sender == sender).unwrap().clone();
        assert_eq!(&got.payload[..], b"from m2 in the old view: evs.keep");
        for (g, why) in [("evs.ko", "key-out"), ("evs.to", "time-out")] {
            x.wait(&format!("m2's {g} message reported undecipherable by {why}"), |e| {
                matches!(e, Event::Undecipherable { sender: s, group, reason, .. }
                    if *s == sender && group == g && reason.contains(why))
            });
            assert!(x.messages(g).iter().all(|y| y.sender != sender), "{g}: never delivered as a message");
        }
    }
    // The receivers' daemons resealed m2's message (the EVS fix).
    for i in 0..2 {
        wait_for("the EVS fix counted", Duration::from_secs(5), || {
            (counter(&cluster, i, "evs_fixes") >= 1).then_some(())
        });
        assert!(counter(&cluster, i, "undecipherable") >= 2);
    }
    // `ringfence monitor` shows each group's mode, key and EVS fixes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["monitor", "--config", cluster.configs[0].to_str().unwrap(), "--once"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("d0") && l.contains("evs.keep")).unwrap_or_default();
    assert!(line.contains("optimized-evs"), "monitor: {text}");
    let fixes: u64 = line.split_whitespace().nth(9).and_then(|x| x.parse().ok()).unwrap_or(0);
    assert!(fixes >= 1, "evs-fix column of {line:?}");
    assert!(text.contains("evs-fixes"), "monitor: {text}");
}

const ACL_POLICY: &str = r#"
[[group]]
pattern = "ops"
mode = "optimized-evs"
join = ["unix:*"]
send = ["unix:*"]
send_nonmember = []

[[group]]
pattern = "private.*"
join = ["unix:4294967294"]
"#;

#[test]
fn access_control_refuses_and_the_group_never_sees_it() {
    let backend = backends()[0];
    let cluster = Cluster::start_extra("acl", 2, backend, &format!("{ACL_POLICY}{}", token_config()));
    let mut a = Member::new(connect(&cluster.socket(0), "a"));
    let mut b = Member::new(connect(&cluster.socket(1), "b"));
    a.c.join_with("ops", false, GroupMode::OptimizedEvs).unwrap();
    b.c.join_with("ops", false, GroupMode::OptimizedEvs).unwrap();
    a.wait_view("ops", 2);
    // A TCP client (principal token:tester) may neither join nor send to ops.
    let mut t = Member::new(connect_token(&Address::Tcp(cluster.tcp(1)), "t"));
    t.c.join_with("ops", false, GroupMode::OptimizedEvs).unwrap();
    t.wait("a denial of the join", |e| matches!(e, Event::Error { text, .. } if text.contains("denied")));
    t.c.multicast(Service::Agreed, &["ops"], 0, b"intruder").unwrap();
    t.wait("a denial of the send", |e| matches!(e, Event::Error { text, .. } if text.contains("denied")));
    // A join stating the wrong mode, and a group nobody here may join.
    a.c.join_with("ops2", false, GroupMode::IntegratedVs).unwrap();
    a.wait("a mode mismatch", |e| matches!(e, Event::Error { text, .. } if text.contains("mode")));
    a.c.join_with("private.x", false, GroupMode::None).unwrap();
    a.wait("a denial of private.x", |e| matches!(e, Event::Error { text, .. } if text.contains("denied")));
    a.c.multicast(Service::Agreed, &["ops"], 0, b"member").unwrap();
    b.wait("the member's message", |e| matches!(e, Event::Message(m) if &m.payload[..] == b"member"));
    std::thread::sleep(Duration::from_millis(300));
    b.pump();
    assert!(b.messages("ops").iter().all(|m| &m.payload[..] != b"intruder"), "the group never saw it");
    wait_for("denials counted", Duration::from_secs(5), || {
        (counter(&cluster, 1, "denials") == 2 && counter(&cluster, 0, "denials") == 2).then_some(())
    });
}

const TS_POLICY: &str = r#"
[[group]]
pattern = "ts.*"
mode = "three-step"
"#;

#[test]
fn three_step_with_remote_tls_clients() {
    let pki = Pki::new("ts", &["alice"], "bob-token-7f3a");
    let extra = format!("{TS_POLICY}{}", pki.clients_section);
    let (cluster, tap) = Cluster::start_tapped_extra("ts", 2, backends()[0], "encrypt", &extra);
    let capture = tap.capture().clone();
    let proxies: Vec<TcpTap> = (0..2).map(|i| TcpTap::start(cluster.tcp(i), capture.clone())).collect();
    let tls = |cert: Option<&str>| pki.tls(cert);
    let alice_opts = pki.cert("alice");
    let bob_opts = ConnectOptions { tls: Some(tls(None)), token: Some("bob-token-7f3a".into()) };
    let mut m = vec![
        Member::new(connect_with(&Address::Tcp(proxies[0].address()), "alice", &alice_opts)),
        Member::new(connect_with(&Address::Tcp(proxies[1].address()), "bob", &bob_opts)),
    ];
    for x in &mut m {
        x.c.join_with("ts.room", false, GroupMode::ThreeStep).unwrap();
    }
    wait_views(&mut m, "ts.room", 2);
    for x in &mut m {
        x.c.multicast(Service::Agreed, &["ts.room"], 3, MARKER).unwrap();
    }
    for x in &mut m {
        wait_for("both messages", Duration::from_secs(20), || {
            x.pump();
            (x.messages("ts.room").iter().filter(|y| &y.payload[..] == MARKER).count() == 2).then_some(())
        });
    }
    assert!(capture.datagrams() > 0 && capture.tcp_bytes() > 1000, "the capture saw the traffic");
    assert!(!capture.contains(MARKER), "payload plaintext crossed TCP or UDP");
    assert!(!capture.contains(b"ts.room"), "the group name crossed TCP in the clear");

    // Refused, each with a clear error.
    let tcp = Address::Tcp(cluster.tcp(0));
    let refused = |opts: &ConnectOptions| match Client::connect_with(&tcp, "eve", opts) {
        Err(ClientError::Refused { code, text }) => (code, text),
        Err(e) => (RefuseCode::Other(0), e.to_string()),
        Ok(_) => panic!("eve was let in"),
    };
    let (code, text) = refused(&ConnectOptions { tls: Some(tls(None)), token: None });
    assert_eq!((code, text.as_str()), (RefuseCode::AuthFailed, "no valid client certificate"));
    let (code, text) = refused(&ConnectOptions { tls: Some(tls(None)), token: Some("guess".into()) });
    assert_eq!(code, RefuseCode::AuthFailed, "{text}");
    assert!(text.contains("token"), "{text}");
    let (_, text) = refused(&ConnectOptions { tls: None, token: Some("bob-token-7f3a".into()) });
    assert!(text.contains("requires TLS"), "plain TCP: {text}");
    wait_for("auth failures counted", Duration::from_secs(5), || {
        (cluster.status(0).and_then(|s| s["auth_failures"].as_u64()) == Some(3)).then_some(())
    });
    drop(proxies);
}

const REKEY_POLICY: &str = r#"
[[group]]
pattern = "rk.*"
mode = "optimized-evs"
rekey_interval_s = 1
"#;

/// The policy's time-out refreshes the key of a live group: a view with
/// cause `rekey`, same members, a new key, at every member (the ring's
/// representative orders it from its timer).
#[test]
fn keys_are_refreshed_by_time_on_real_daemons() {
    let cluster = Cluster::start_extra("rekey", 2, backends()[0], REKEY_POLICY);
    let mut m: Vec<Member> =
        (0..2).map(|i| Member::new(connect(&cluster.socket(i), &format!("m{i}")))).collect();
    for x in &mut m {
        x.c.join_with("rk.g", false, GroupMode::OptimizedEvs).unwrap();
    }
    wait_views(&mut m, "rk.g", 2);
    let before = m[0].c.view_key("rk.g").map(|k| k.id()).unwrap();
    let is_rekey = |e: &Event| {
        matches!(e, Event::Membership(v) if v.group == "rk.g"
            && v.cause == ringfence_client::ViewCause::Rekey && v.members.len() == 2)
    };
    for x in &mut m {
        x.wait("a rekey view", is_rekey);
    }
    // The first rekey view of each member: same view, same new key.
    let first = |x: &Member| {
        x.events.iter().find(|e| is_rekey(e)).and_then(|e| match e {
            Event::Membership(v) => Some((v.view_id, v.key.as_ref().map(|k| k.0))),
            _ => None,
        })
    };
    let (a, b) = (first(&m[0]).unwrap(), first(&m[1]).unwrap());
    assert_eq!(a, b, "the same view and key at every member");
    assert!(a.1.is_some(), "the rekey view carries a key");
    assert_ne!(a.1, Some(before), "a new key");
}
