//! Layered groups on real daemons (issue 12; the paper's section 4.2,
//! Secure Spread): the clients of a group in a `layered-*` mode agree on
//! each view's key among themselves, the daemons carry signed protocol
//! messages and ciphertext only.
//!
//! Three daemons on loopback, links *unencrypted* (`link_security =
//! "none"`, which layered groups do not need) behind a UDP tap, so the tap
//! sees everything the daemons exchange in clear. Per protocol, three
//! clients on three daemons join, agree, exchange messages; one leaves, a
//! fourth joins (sending before its key is agreed: the send is held); every
//! member of the final view opens every message of it. No plaintext
//! payload crosses between the daemons, while a `none` group's message in
//! the same cluster does (the positive control), and `status.json` shows
//! the mode and no key.

use ringfence_client::{Client, Event, GroupMode, LayeredIdentity, Service};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{Cluster, backends, connect};

const POLICY: &str = r#"
[[group]]
pattern = "lay.tgdh"
mode = "layered-tgdh"

[[group]]
pattern = "lay.ckd"
mode = "layered-ckd"

[[group]]
pattern = "lay.gdh"
mode = "layered-gdh"

[[group]]
pattern = "lay.bd"
mode = "layered-bd"

[[group]]
pattern = "lay.str"
mode = "layered-str"
"#;

/// Runs `body` once per socket backend, side by side.
fn on_every_backend(body: fn(&str)) {
    std::thread::scope(|s| {
        for backend in backends() {
            s.spawn(move || body(backend));
        }
    });
}

/// A client and everything it received.
struct Member {
    name: &'static str,
    c: Client,
    events: Vec<Event>,
}

impl Member {
    fn new(cluster: &Cluster, daemon: usize, name: &'static str, keys: &Path) -> Self {
        let mut c = connect(&cluster.socket(daemon), name);
        let id = LayeredIdentity::load(keys.join(format!("{name}.key")), keys).unwrap();
        c.set_layered_identity(id);
        Self { name, c, events: Vec::new() }
    }

    fn private(&self) -> String {
        self.c.private_name().to_string()
    }

    /// The last secure view of `group`: (epoch, key id, members).
    fn secure(&self, group: &str) -> Option<(u64, u32, Vec<String>)> {
        self.events.iter().rev().find_map(|e| match e {
            Event::SecureView { group: g, epoch, key_id, members } if g == group => {
                Some((*epoch, *key_id, members.clone()))
            }
            _ => None,
        })
    }

    /// The payloads of `group` opened since event `from`, with their senders.
    fn opened(&self, group: &str, from: usize) -> Vec<(String, Vec<u8>)> {
        self.events[from..]
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.groups == [group] => Some((m.sender.to_string(), m.payload.to_vec())),
                _ => None,
            })
            .collect()
    }
}

/// Polls every member (answering flush requests) until `done` holds, at
/// most 30 s. Nothing refused or undecipherable may arrive meanwhile.
fn pump(members: &mut [&mut Member], what: &str, mut done: impl FnMut(&[&mut Member]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut idle = true;
        for m in members.iter_mut() {
            while let Some(e) = m.c.poll().unwrap() {
                idle = false;
                match &e {
                    Event::FlushRequest { group, view_id } => m.c.flush_ok(group, *view_id).unwrap(),
                    Event::Undecipherable { .. } | Event::AgreementRefused { .. } => {
                        panic!("{}: {e:?}", m.name)
                    }
                    Event::Error { text, .. } if text != "no flush requested" => panic!("{}: {e:?}", m.name),
                    _ => {}
                }
                m.events.push(e);
            }
        }
        if done(members) {
            return;
        }
        let last: Vec<_> = members.iter().map(|m| (m.name, m.events.last().cloned())).collect();
        assert!(Instant::now() < deadline, "{what}: timed out; last events {last:#?}");
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Every member holds a secure view of `group` with exactly `names`, and
/// all hold the same epoch and key id; returns them.
fn agreed(members: &[&mut Member], group: &str, names: &BTreeSet<String>) -> Option<(u64, u32)> {
    let views: Vec<_> = members.iter().map(|m| m.secure(group)).collect::<Option<_>>()?;
    let first = (views[0].0, views[0].1);
    let same = views
        .iter()
        .all(|(e, k, ms)| (*e, *k) == first && ms.iter().cloned().collect::<BTreeSet<_>>() == *names);
    same.then_some(first)
}

/// `status.json` of every daemon shows `group` with its mode and no key
/// (what `ringfence monitor` prints).
fn daemon_knows_mode_not_key(cluster: &Cluster, group: &str, mode: GroupMode) {
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = cluster.status(i).unwrap_or(Value::Null);
            let list = s["groups"]["list"].as_array().cloned().unwrap_or_default();
            if let Some(g) = list.iter().find(|g| g["name"] == group && g["members"] == 3) {
                assert_eq!(g["mode"], mode.name(), "d{i}: {g}");
                assert!(g["key_id"].is_null(), "d{i} holds a key of a layered group: {g}");
                break;
            }
            assert!(Instant::now() < deadline, "d{i}: {group} with 3 members not in status: {s:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn scenario(cluster: &Cluster, keys: &Path, mode: GroupMode, mark: &str) {
    let group = format!("lay.{}", &mode.name()["layered-".len()..]);
    let group = group.as_str();
    let mut a = Member::new(cluster, 0, "alice", keys);
    let mut b = Member::new(cluster, 1, "bob", keys);
    let mut c = Member::new(cluster, 2, "carol", keys);
    for m in [&mut a, &mut b, &mut c] {
        m.c.join_with(group, true, mode).unwrap();
    }
    let three: BTreeSet<String> = [&a, &b, &c].iter().map(|m| m.private()).collect();
    pump(&mut [&mut a, &mut b, &mut c], "first key", |ms| agreed(ms, group, &three).is_some());
    let (e1, k1) = agreed(&[&mut a, &mut b, &mut c], group, &three).unwrap();
    daemon_knows_mode_not_key(cluster, group, mode);

    // Everyone sends; everyone opens everything, in one order.
    let start: Vec<usize> = [&a, &b, &c].iter().map(|m| m.events.len()).collect();
    for m in [&mut a, &mut b, &mut c] {
        let text = format!("{mark}-first-from-{}", m.name);
        m.c.multicast(Service::Agreed, &[group], 3, text.as_bytes()).unwrap();
    }
    pump(&mut [&mut a, &mut b, &mut c], "first messages", |ms| {
        ms.iter().zip(&start).all(|(m, s)| m.opened(group, *s).len() == 3)
    });
    let orders: Vec<_> = [&a, &b, &c].iter().zip(&start).map(|(m, s)| m.opened(group, *s)).collect();
    assert!(orders.iter().all(|o| *o == orders[0]), "{mode}: one order: {orders:?}");
    let texts: BTreeSet<Vec<u8>> = orders[0].iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(texts.len(), 3, "{mode}");

    // Bob leaves; Dave joins on bob's daemon and sends at once: held until
    // the key of his first view is agreed, then sent sealed under it.
    b.c.leave(group).unwrap();
    let mut d = Member::new(cluster, 1, "dave", keys);
    d.c.join_with(group, true, mode).unwrap();
    let held = format!("{mark}-held-from-dave");
    d.c.multicast(Service::Agreed, &[group], 3, held.as_bytes()).unwrap();
    let last: BTreeSet<String> = [&a, &c, &d].iter().map(|m| m.private()).collect();
    let start: Vec<usize> = [&a, &c, &d].iter().map(|m| m.events.len()).collect();
    pump(&mut [&mut a, &mut c, &mut d], "key after leave and join", |ms| agreed(ms, group, &last).is_some());
    let (e2, k2) = agreed(&[&mut a, &mut c, &mut d], group, &last).unwrap();
    assert!(e2 > e1, "{mode}: epochs grow");
    assert_ne!(k2, k1, "{mode}: a new key");
    // Every member of the final view opens every message of it.
    for m in [&mut a, &mut c, &mut d] {
        let text = format!("{mark}-final-from-{}", m.name);
        m.c.multicast(Service::Agreed, &[group], 3, text.as_bytes()).unwrap();
    }
    pump(&mut [&mut a, &mut c, &mut d], "final messages", |ms| {
        ms.iter().zip(&start).all(|(m, s)| m.opened(group, *s).len() == 4)
    });
    let want: BTreeMap<String, Vec<u8>> = [(&a, "alice"), (&c, "carol"), (&d, "dave")]
        .iter()
        .map(|(m, n)| (m.private(), format!("{mark}-final-from-{n}").into_bytes()))
        .collect();
    for (m, s) in [&a, &c, &d].iter().zip(&start) {
        let got = m.opened(group, *s);
        assert!(got.contains(&(d.private(), held.clone().into_bytes())), "{mode} {}: {got:?}", m.name);
        for (sender, text) in &want {
            assert!(got.contains(&(sender.clone(), text.clone())), "{mode} {}: {got:?}", m.name);
        }
        // The held message was sent in the final view, after its key.
        assert_eq!(m.secure(group).unwrap().0, e2);
    }
}

#[test]
fn layered_groups_agree_exchange_and_survive_a_leave_and_a_join_with_only_ciphertext_on_the_wire() {
    on_every_backend(layered_on);
}

fn layered_on(backend: &str) {
    let (cluster, tap) = Cluster::start_tapped_extra("layered", 3, backend, "none", POLICY);
    let keys = cluster.dir.join("client-keys");
    std::fs::create_dir_all(&keys).unwrap();
    for n in ["alice", "bob", "carol", "dave"] {
        ringfence_crypto::identity::write_keypair(&keys, n, &mut rand::rng()).unwrap();
    }
    let modes = [
        GroupMode::LayeredTgdh,
        GroupMode::LayeredCkd,
        GroupMode::LayeredGdh,
        GroupMode::LayeredBd,
        GroupMode::LayeredStr,
    ];
    let marks: Vec<String> = modes.iter().map(|m| format!("RFLAYERED-PLAINTEXT-{}", m.name())).collect();
    for (mode, mark) in modes.iter().zip(&marks) {
        scenario(&cluster, &keys, *mode, mark);
    }

    // Positive control: a `none` group's message crosses the tap in clear.
    let control = b"RFLAYERED-CONTROL-PLAINTEXT";
    let mut x = connect(&cluster.socket(0), "xavier");
    let mut y = connect(&cluster.socket(2), "yvonne");
    x.join("plain").unwrap();
    y.join("plain").unwrap();
    common::receive_until(&mut x, |e| matches!(e, Event::Membership(v) if v.members.len() == 2));
    x.multicast(Service::Agreed, &["plain"], 0, control).unwrap();
    common::receive_until(&mut y, |e| matches!(e, Event::Message(m) if m.payload[..] == control[..]));
    let udp = tap.capture();
    assert!(udp.contains(control), "the control message is in none of {} datagrams", udp.datagrams());
    // ... and no layered payload did, though every one crossed daemons.
    for mark in &marks {
        assert!(
            !udp.contains(mark.as_bytes()),
            "{mark} crossed the wire in clear ({} datagrams)",
            udp.datagrams()
        );
    }
}
