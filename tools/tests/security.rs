//! Real daemons on loopback under link security: what the daemons refuse,
//! and that they say so and count it.
//!
//! - Encrypted links carry client messages sealed under the key the ring
//!   agreed by TGDH (Kim, Perrig and Tsudik, "Tree-based Group Key
//!   Agreement", ACM TISSEC 7(1), 2004): every member derives the same link
//!   key, and nothing fails on the way.
//! - A daemon whose secret key is not the one the cluster config names for
//!   it cannot join the ring nor deliver to its clients: its signed
//!   datagrams fail verification.
//! - A captured sealed datagram, replayed, or with one bit flipped in the
//!   ciphertext, the counter or the key id, is dropped and counted: AES-GCM
//!   opening fails if the ciphertext or the associated data (the header) was
//!   altered (RFC 5116, section 2.2), and a counter seen before is a replay
//!   (the sliding window of RFC 4303, section 3.4.3).
//! - Two daemons with different `link_security` settings refuse each other
//!   on both sides, never falling back to the weaker mode.
//!
//! Each test body runs on every socket backend (`common::backends`), the
//! backends side by side.

use ringfence_client::{Client, Event, Service};
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{Cluster, LoggedDaemon as Daemon, backends, connect, keypair, receive_until};

/// Outer header of a daemon datagram (`ring_proto::security::link`).
const HEADER: usize = 29;
/// Kind byte of a sealed datagram.
const SEALED: u8 = 0xE2;
/// AES-GCM tag bytes.
const TAG: usize = 16;
/// How long a test watches for something that must not happen.
const WATCH: Duration = Duration::from_secs(5);

/// Log queries of the tests below.
trait Logged {
    fn has_line(&self, needles: &[&str]) -> bool;
    fn wait_line(&self, needles: &[&str]);
    fn configurations(&self) -> Vec<Vec<u16>>;
}

impl Logged for Daemon {
    fn has_line(&self, needles: &[&str]) -> bool {
        self.log.lock().unwrap().iter().any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// Waits (at most 20 s) for a log line containing every one of `needles`.
    fn wait_line(&self, needles: &[&str]) {
        wait_until(&format!("a log line with {needles:?}"), Duration::from_secs(20), || {
            self.has_line(needles).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}; log: {:#?}", self.log.lock().unwrap()));
    }

    /// Every membership logged: the members of each `... configuration` line.
    fn configurations(&self) -> Vec<Vec<u16>> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("configuration"))
            .filter_map(|l| members(l))
            .collect()
    }
}

/// The `members=[..]` field of a log line.
fn members(line: &str) -> Option<Vec<u16>> {
    let rest = &line[line.find("members=[")? + "members=[".len()..];
    let list = &rest[..rest.find(']')?];
    Some(list.split(',').filter_map(|m| m.trim().trim_start_matches('d').parse().ok()).collect())
}

/// A test's directory (config, keys, state) and its daemons; the daemons
/// are killed before the directory is removed.
struct Scene {
    dir: PathBuf,
    daemons: Vec<Daemon>,
}

impl Scene {
    fn new(tag: &str, backend: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringfence-sec-{tag}-{}-{backend}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, daemons: Vec::new() }
    }

    /// Starts daemon `name` of `config`; returns its index in `daemons`.
    fn start(&mut self, config: &Path, name: &str) -> usize {
        self.daemons.push(Daemon::start(config, name));
        self.daemons.len() - 1
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("client.sock")
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.daemons.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Loopback addresses free a moment ago.
fn free_addresses(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    socks.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// Writes `dir/file`: daemons `d0`, `d1`, ... at `addresses` with
/// `public_keys`, `security` as the `[security]` section, state under
/// `dir/<name>`.
fn write_config(
    dir: &Path,
    file: &str,
    backend: &str,
    addresses: &[SocketAddr],
    public_keys: &[String],
    security: &str,
) -> PathBuf {
    let mut text = format!("[daemon]\nbackend = \"{backend}\"\n\n[cluster]\ntransport = \"unicast\"\n");
    for (i, (address, key)) in addresses.iter().zip(public_keys).enumerate() {
        text += &format!(
            "\n[[cluster.daemon]]\nid = {i}\nname = \"d{i}\"\naddress = \"{address}\"\npublic_key = \"{key}\"\n"
        );
    }
    text += &format!("\n[security]\n{security}\n");
    text += &format!("\n[paths]\nstate_dir = \"{}/{{name}}\"\n", dir.display());
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// The `[security]` section of a secure mode with identities in `keys`.
fn secure(mode: &str, keys: &Path) -> String {
    format!("link_security = \"{mode}\"\nidentity = \"{}/{{name}}.key\"", keys.display())
}

/// Calls `f` every 50 ms until it gives a value, for at most `limit`.
fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `<state_dir>/status.json` of a daemon (rewritten every 500 ms), if
/// written yet.
fn status(state_dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(state_dir.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// A counter of the status's `security` object (0 when absent).
fn sec(s: &Value, field: &str) -> u64 {
    s["security"][field].as_u64().unwrap_or(0)
}

/// The members of the status's ring (empty before the first).
fn ring_members(s: &Value) -> Vec<u64> {
    s["ring"]["members"].as_array().map_or_else(Vec::new, |m| m.iter().filter_map(Value::as_u64).collect())
}

/// Whether the daemon is keyed: a server key agreed and a link key sealed with.
fn keyed(s: &Value) -> bool {
    sec(s, "keys_agreed") >= 1 && s["security"]["link_key"].is_string()
}

/// Waits (at most 20 s) until the status of the daemon at `state_dir`
/// satisfies `ok`; returns it.
fn wait_status(state_dir: &Path, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    wait_until(what, Duration::from_secs(20), || {
        let s = status(state_dir)?;
        let done = ok(&s);
        last = Some(s.clone());
        done.then_some(s)
    })
    .unwrap_or_else(|e| panic!("{}: {e}; last status: {last:#?}", state_dir.display()))
}

/// Waits (at most 20 s) until `c` sees a view of `group` with `n` members.
fn wait_view(c: &mut Client, group: &str, n: usize) {
    receive_until(c, |e| matches!(e, Event::Membership(v) if v.group == group && v.members.len() == n));
}

/// The payloads of the messages among `events`.
fn payloads(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(String::from_utf8_lossy(&m.payload).into_owned()),
            _ => None,
        })
        .collect()
}

/// Receives until `n` messages arrived (at most 20 s), then watches for
/// `quiet` more: returns every message payload seen.
fn receive_messages(c: &mut Client, n: usize, quiet: Duration) -> Vec<String> {
    let mut got = 0;
    let mut all = payloads(&receive_until(c, |e| {
        got += usize::from(matches!(e, Event::Message(_)));
        got == n
    }));
    let until = Instant::now() + quiet;
    while Instant::now() < until {
        match c.poll().unwrap() {
            Some(Event::Message(m)) => all.push(String::from_utf8_lossy(&m.payload).into_owned()),
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    all
}

/// Runs `body` once per socket backend, side by side.
fn on_every_backend(body: fn(&str)) {
    std::thread::scope(|s| {
        for backend in backends() {
            s.spawn(move || body(backend));
        }
    });
}

/// TGDH (Kim, Perrig, Tsudik 2004, section 4: every member computes the
/// same group key): three daemons agree on one server key, derive the same
/// link key and seal every datagram of the ring with it once agreed; clients
/// on two daemons exchange messages over those links, and no datagram fails
/// authentication, signature, replay or settings checks.
#[test]
fn encrypted_links_carry_messages_sealed() {
    on_every_backend(encrypted_links_on);
}

fn encrypted_links_on(backend: &str) {
    let cluster = Cluster::start("sec-sealed", 3, backend);
    let mut clients: Vec<Client> = (0..2).map(|i| connect(&cluster.socket(i), &format!("c{i}"))).collect();
    for c in &mut clients {
        c.join("g").unwrap();
    }
    for c in &mut clients {
        wait_view(c, "g", 2);
    }
    const PER_SENDER: usize = 50;
    for (i, c) in clients.iter_mut().enumerate() {
        for k in 0..PER_SENDER {
            c.multicast(Service::Agreed, &["g"], 0, format!("{i}:{k}").as_bytes()).unwrap();
        }
    }
    let mut orders = Vec::new();
    for c in &mut clients {
        let got = receive_messages(c, 2 * PER_SENDER, Duration::from_millis(200));
        assert_eq!(got.len(), 2 * PER_SENDER, "{got:?}");
        for i in 0..2 {
            let mine: Vec<&String> = got.iter().filter(|m| m.starts_with(&format!("{i}:"))).collect();
            let expected: Vec<String> = (0..PER_SENDER).map(|k| format!("{i}:{k}")).collect();
            assert!(mine.iter().copied().eq(expected.iter()), "sender {i}: {mine:?}");
        }
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1], "the two clients disagree on the order");

    // Every daemon is keyed with the same link key and has sealed; the
    // status files are rewritten every 500 ms, so wait for one that says so.
    let dirs: Vec<PathBuf> = (0..3).map(|i| cluster.dir.join(format!("d{i}"))).collect();
    let mut last = Vec::new();
    wait_until("three keyed daemons with one link key", Duration::from_secs(20), || {
        last = dirs.iter().map(|d| status(d)).collect::<Option<Vec<Value>>>()?;
        let key = &last[0]["security"]["link_key"];
        (last.iter().all(|s| keyed(s) && sec(s, "sealed") > 0 && s["security"]["link_key"] == *key))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; statuses: {last:#?}"));
    for (i, s) in last.iter().enumerate() {
        assert_eq!(s["security"]["mode"], "encrypt", "d{i}");
        assert_eq!(s["security"]["epoch"], last[0]["security"]["epoch"], "d{i}: another epoch");
        for counter in ["auth_failures", "bad_signature", "replays", "settings_mismatch", "unknown_sender"] {
            assert_eq!(sec(s, counter), 0, "d{i}: {counter}; status: {s:#}");
        }
    }
}

/// A daemon is who its signature says (TGDH over authenticated channels:
/// Kim, Perrig, Tsudik 2004, section 3, every protocol message is signed by
/// its sender). `d2` runs with a secret key other than the one the config
/// names for it: `d0` and `d1` refuse its datagrams (bad signature), form a
/// ring without it, and a client on `d2` never reaches a client on `d0`.
#[test]
fn an_unknown_identity_cannot_join_or_deliver() {
    on_every_backend(unknown_identity_on);
}

fn unknown_identity_on(backend: &str) {
    let mut scene = Scene::new("rogue", backend);
    let keys = scene.dir.join("keys");
    let rogue = scene.dir.join("rogue");
    let public: Vec<String> = (0..3).map(|i| keypair(&keys, &format!("d{i}"))).collect();
    // Another key pair for `d2`, named only in d2's own config (a daemon
    // whose key does not match its own config does not start at all:
    // tools/tests/client_limits.rs); d0 and d1 name the first one.
    let rogue_public = keypair(&rogue, "d2");
    let addresses = free_addresses(3);
    let config =
        write_config(&scene.dir, "cluster.toml", backend, &addresses, &public, &secure("encrypt", &keys));
    let rogue_keys = [public[0].clone(), public[1].clone(), rogue_public];
    let rogue_config =
        write_config(&scene.dir, "rogue.toml", backend, &addresses, &rogue_keys, &secure("encrypt", &rogue));
    let d0 = scene.start(&config, "d0");
    let d1 = scene.start(&config, "d1");
    scene.start(&rogue_config, "d2");

    for name in ["d0", "d1"] {
        wait_status(&scene.dir.join(name), "a keyed ring [0, 1]", |s| ring_members(s) == [0, 1] && keyed(s));
    }
    let mut c0 = connect(&scene.socket("d0"), "c0");
    let mut c1 = connect(&scene.socket("d1"), "c1");
    let mut c2 = connect(&scene.socket("d2"), "c2");
    let rogue_name = c2.private_name().to_string();
    c0.join("g").unwrap();
    c1.join("g").unwrap();
    c2.join("g").unwrap();
    wait_view(&mut c0, "g", 2);
    // d1's client reaches d0's: delivery works, for the members.
    c1.multicast(Service::Agreed, &["g"], 0, b"from d1").unwrap();
    receive_until(&mut c0, |e| matches!(e, Event::Message(m) if &m.payload[..] == b"from d1"));

    // For WATCH: d2's client keeps sending; d0's client never hears of it,
    // and the ring of d0 and d1 never takes d2 in (d2 may key a ring of its
    // own).
    let until = Instant::now() + WATCH;
    let mut sent = 0;
    let mut next_send = Instant::now();
    while Instant::now() < until {
        if Instant::now() >= next_send {
            c2.multicast(Service::Agreed, &["g"], 0, format!("from d2: {sent}").as_bytes()).unwrap();
            sent += 1;
            next_send += Duration::from_millis(200);
        }
        while let Some(e) = c0.poll().unwrap() {
            match e {
                Event::Message(m) => {
                    assert_ne!(m.sender, rogue_name, "a message of d2's client reached d0: {m:?}");
                    assert!(!m.payload.starts_with(b"from d2"), "{m:?}");
                }
                Event::Membership(v) => {
                    assert!(!v.members.contains(&rogue_name), "d2's client in a view: {v:?}")
                }
                _ => {}
            }
        }
        // d2's own events are drained so its session is never slow.
        while c2.poll().unwrap().is_some() {}
        for name in ["d0", "d1"] {
            if let Some(s) = status(&scene.dir.join(name)) {
                assert!(!ring_members(&s).contains(&2), "{name} took d2 in: {s:#}");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (d, name) in [(d0, "d0"), (d1, "d1")] {
        let logged = scene.daemons[d].configurations();
        assert!(logged.iter().all(|m| !m.contains(&2)), "{name} installed a ring with d2: {logged:?}");
        // Its settings digest covers the public keys, so d2 is refused
        // before its signatures are checked.
        let s = wait_status(&scene.dir.join(name), "settings mismatches counted", |s| {
            sec(s, "settings_mismatch") > 0
        });
        assert_eq!(sec(&s, "auth_failures"), 0, "{name}: {s:#}");
    }
    scene.daemons[d0].wait_line(&["refusing daemon 2: its security settings", "public keys"]);
    scene.daemons[d1].wait_line(&["refusing daemon 2: its security settings", "public keys"]);
}

/// Datagrams received on the test's socket, which plays daemon `d2`.
struct Tap {
    socket: Arc<UdpSocket>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    fn bind() -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (socket, got, stop) = (Arc::clone(&socket), Arc::clone(&got), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = socket.recv_from(&mut buf) {
                        got.lock().unwrap().push(buf[..n].to_vec());
                    }
                }
            })
        };
        Self { socket, got, stop, reader: Some(reader) }
    }

    fn received(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// The first sealed datagram of daemon `sender` received after the
    /// first `from`.
    fn sealed_from(&self, from: usize, sender: u16) -> Option<Vec<u8>> {
        let got = self.got.lock().unwrap();
        got.iter()
            .skip(from)
            .find(|d| d.len() > HEADER + TAG && d[0] == SEALED && d[9..11] == sender.to_be_bytes())
            .cloned()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// AES-GCM authenticated decryption fails if the ciphertext or the
/// associated data was altered (RFC 5116, section 2.2); a counter already
/// seen is a replay (RFC 4303, section 3.4.3, the sliding window). The test
/// plays the configured daemon `d2`: it taps a sealed datagram of `d0`
/// (sent to every configured daemon) and sends it to `d1` as is, with a
/// ciphertext bit flipped, with a counter bit flipped (the header is
/// associated data) and with a key id bit flipped. Each is dropped and
/// counted, and the clients then still get every message exactly once.
#[test]
fn a_flipped_or_replayed_packet_is_rejected_and_counted() {
    on_every_backend(flipped_or_replayed_on);
}

fn flipped_or_replayed_on(backend: &str) {
    let mut scene = Scene::new("tamper", backend);
    let keys = scene.dir.join("keys");
    let public: Vec<String> = (0..3).map(|i| keypair(&keys, &format!("d{i}"))).collect();
    let tap = Tap::bind();
    let mut addresses = free_addresses(2);
    addresses.push(tap.socket.local_addr().unwrap());
    let config =
        write_config(&scene.dir, "cluster.toml", backend, &addresses, &public, &secure("encrypt", &keys));
    let d0 = scene.start(&config, "d0");
    let d1 = scene.start(&config, "d1");
    let (dir0, dir1) = (scene.dir.join("d0"), scene.dir.join("d1"));
    for dir in [&dir0, &dir1] {
        wait_status(dir, "a keyed ring [0, 1]", |s| ring_members(s) == [0, 1] && keyed(s));
    }

    let mut c0 = connect(&scene.socket("d0"), "c0");
    let mut c1 = connect(&scene.socket("d1"), "c1");
    c0.join("g").unwrap();
    c1.join("g").unwrap();
    wait_view(&mut c0, "g", 2);
    wait_view(&mut c1, "g", 2);
    // A sealed datagram of d0 carrying a client message, as d2 receives it.
    let mark = tap.received();
    c0.multicast(Service::Agreed, &["g"], 0, b"before").unwrap();
    for c in [&mut c0, &mut c1] {
        assert_eq!(receive_messages(c, 1, Duration::ZERO), ["before"]);
    }
    let captured = wait_until("a sealed datagram of d0 on the tap", Duration::from_secs(10), || {
        tap.sealed_from(mark, 0)
    })
    .unwrap_or_else(|e| panic!("{e}; got {} datagrams", tap.received()));

    let before = wait_status(&dir1, "a status", |_| true);
    let send = |bytes: &[u8]| {
        tap.socket.send_to(bytes, addresses[1]).unwrap();
    };
    // (a) The exact bytes again: a replay.
    send(&captured);
    let s = wait_status(&dir1, "a replay counted", |s| sec(s, "replays") > sec(&before, "replays"));
    assert_eq!(sec(&s, "auth_failures"), sec(&before, "auth_failures"), "{s:#}");
    // (b) One bit of the ciphertext flipped.
    let mut flipped = captured.clone();
    flipped[HEADER] ^= 0x01;
    send(&flipped);
    let s = wait_status(&dir1, "a ciphertext flip counted", |s| {
        sec(s, "auth_failures") > sec(&before, "auth_failures")
    });
    // (c) One bit of the counter flipped: the header is associated data
    // (and the counter is in the nonce).
    let mut flipped = captured.clone();
    flipped[20] ^= 0x01;
    send(&flipped);
    wait_status(&dir1, "a counter flip counted", |x| sec(x, "auth_failures") > sec(&s, "auth_failures"));
    // (d) One bit of the key id flipped: a key d1 does not hold.
    let mut flipped = captured.clone();
    flipped[21] ^= 0x01;
    send(&flipped);
    let s =
        wait_status(&dir1, "an unknown key counted", |x| sec(x, "unknown_key") > sec(&before, "unknown_key"));
    assert_eq!(sec(&s, "replays"), sec(&before, "replays") + 1, "{s:#}");
    assert_eq!(sec(&s, "auth_failures"), sec(&before, "auth_failures") + 2, "{s:#}");
    scene.daemons[d1].wait_line(&["dropped a replayed datagram from daemon 0"]);
    scene.daemons[d1].wait_line(&["dropped a datagram from daemon 0: authentication failed"]);
    // d0 was not attacked: it counted nothing.
    let s0 = status(&dir0).unwrap();
    for counter in ["auth_failures", "replays", "bad_signature", "settings_mismatch"] {
        assert_eq!(sec(&s0, counter), 0, "d0: {counter}; status: {s0:#}");
    }
    assert!(!scene.daemons[d0].has_line(&["authentication failed"]));

    // The ring still carries messages both ways, each exactly once (the
    // replayed "before" is not delivered again).
    const N: usize = 100;
    for k in 0..N {
        c0.multicast(Service::Agreed, &["g"], 0, format!("0:{k}").as_bytes()).unwrap();
        c1.multicast(Service::Agreed, &["g"], 0, format!("1:{k}").as_bytes()).unwrap();
    }
    let got0 = receive_messages(&mut c0, 2 * N, Duration::from_millis(300));
    let got1 = receive_messages(&mut c1, 2 * N, Duration::from_millis(300));
    for (name, got) in [("c0", &got0), ("c1", &got1)] {
        let mut sorted = got.clone();
        sorted.sort();
        let mut expected: Vec<String> =
            (0..2).flat_map(|i| (0..N).map(move |k| format!("{i}:{k}"))).collect();
        expected.sort();
        assert_eq!(sorted, expected, "{name}: not every message exactly once");
    }
    assert_eq!(got0, got1, "the two clients disagree on the order");
    let s1 = status(&dir1).unwrap();
    assert_eq!(ring_members(&s1), [0, 1], "{s1:#}");
}

/// The settings digest covers `link_security` and every public key: two
/// daemons configured differently refuse each other's datagrams, both
/// ways, rather than fall back to the weaker mode. `d0` runs `encrypt`,
/// `d1` runs `none`; each stays alone in its own ring.
#[test]
fn different_security_settings_are_refused_on_both_sides() {
    on_every_backend(different_settings_on);
}

fn different_settings_on(backend: &str) {
    let mut scene = Scene::new("settings", backend);
    let keys = scene.dir.join("keys");
    let public: Vec<String> = (0..2).map(|i| keypair(&keys, &format!("d{i}"))).collect();
    let addresses = free_addresses(2);
    let encrypt =
        write_config(&scene.dir, "encrypt.toml", backend, &addresses, &public, &secure("encrypt", &keys));
    let none =
        write_config(&scene.dir, "none.toml", backend, &addresses, &public, "link_security = \"none\"");
    let d0 = scene.start(&encrypt, "d0");
    let d1 = scene.start(&none, "d1");
    let (dir0, dir1) = (scene.dir.join("d0"), scene.dir.join("d1"));
    wait_status(&dir0, "a keyed ring [0]", |s| ring_members(s) == [0] && keyed(s));
    wait_status(&dir1, "a ring [1]", |s| ring_members(s) == [1]);

    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        for (dir, other) in [(&dir0, 1), (&dir1, 0)] {
            if let Some(s) = status(dir) {
                assert!(!ring_members(&s).contains(&other), "a ring with both: {s:#}");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (d, dir, other, mode) in [(d0, &dir0, 1, "encrypt"), (d1, &dir1, 0, "none")] {
        let daemon = &scene.daemons[d];
        let logged = daemon.configurations();
        assert!(
            logged.iter().all(|m| !m.contains(&other)),
            "{dir:?} installed a ring with d{other}: {logged:?}"
        );
        let s = wait_status(dir, "settings mismatches counted", |s| sec(s, "settings_mismatch") > 0);
        assert_eq!(s["security"]["mode"], mode, "{s:#}");
        for counter in ["bad_signature", "auth_failures", "malformed"] {
            assert_eq!(sec(&s, counter), 0, "{counter}: {s:#}");
        }
        let refusal = format!("refusing daemon {other}: its security settings");
        daemon.wait_line(&[&refusal, &format!("(link_security = {mode})")]);
    }
}
