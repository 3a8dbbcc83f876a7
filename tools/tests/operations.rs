//! Operations on real processes (issue 13): the monitor marks a killed
//! daemon unreachable, a second daemon of the same name is refused while
//! the first keeps serving, `SIGTERM` makes the others reform at once, and
//! the metrics endpoint's counters move under `ringfence flood`.

mod common;

use common::{LoggedDaemon, connect, keypair, receive_until, wait_for};
use ringfence_client::{Event, Service, ViewCause, ViewKind};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A cluster file of `n` daemons (`d0`..) on free loopback ports with
/// encrypted links, `daemon_extra(i)` added to daemon `i`'s entry and
/// `extra` at the end; the daemons are not started.
struct Setup {
    dir: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new(tag: &str, n: usize, daemon_extra: impl Fn(usize) -> String, extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringfence-ops-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keys = dir.join("keys");
        let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let mut text = "[daemon]\nbackend = \"portable\"\n\n[cluster]\ntransport = \"unicast\"\n".to_string();
        for (i, s) in socks.iter().enumerate() {
            let key = keypair(&keys, &format!("d{i}"));
            text += &format!(
                "\n[[cluster.daemon]]\nid = {i}\nname = \"d{i}\"\naddress = \"{}\"\npublic_key = \"{key}\"\n{}",
                s.local_addr().unwrap(),
                daemon_extra(i)
            );
        }
        drop(socks);
        text += &format!(
            "\n[security]\nidentity = \"{}/{{name}}.key\"\n\n[paths]\nstate_dir = \"{}/{{name}}\"\n{extra}",
            keys.display(),
            dir.display()
        );
        let config = dir.join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        Self { dir, config }
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("d{i}")).join("client.sock")
    }

    fn start(&self, n: usize) -> Vec<LoggedDaemon> {
        (0..n).map(|i| LoggedDaemon::start(&self.config, &format!("d{i}"))).collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ringfence() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringfence"))
}

/// Runs `ringfence ctl --config C ACTION NAME`; (exit code, stdout, stderr).
fn ctl(config: &Path, action: &str, name: &str) -> (i32, String, String) {
    let out = ringfence().args(["ctl", "--config", config.to_str().unwrap(), action, name]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until every daemon of `setup` answers a status query with a ring
/// of all of them; on a timeout, says what each daemon logged.
fn wait_for_ring(setup: &Setup, daemons: &mut [LoggedDaemon]) {
    let n = daemons.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let formed = (0..n).all(|i| {
            let (code, out, _) = ctl(&setup.config, "status", &format!("d{i}"));
            code == 0
                && serde_json::from_str::<serde_json::Value>(&out)
                    .is_ok_and(|v| v["ring_size"] == n && v["phase"] == "Operational")
        });
        if formed {
            return;
        }
        if Instant::now() > deadline {
            let mut why = String::new();
            for (i, d) in daemons.iter_mut().enumerate() {
                let log = d.log.lock().unwrap();
                let tail = log[log.len().saturating_sub(8)..].join("\n");
                why += &format!("\n--- d{i} ({:?}):\n{tail}", d.child.try_wait());
            }
            panic!("no ring of {n} daemons in 20 s:{why}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn monitor_marks_a_killed_daemon_unreachable_within_2_s() {
    let setup = Setup::new("monitor", 3, |_| String::new(), "");
    let mut daemons = setup.start(3);
    wait_for_ring(&setup, &mut daemons);
    // `ctl status` answers over the client socket, with names.
    let (code, out, err) = ctl(&setup.config, "status", "d1");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["daemon"], "d1");
    assert_eq!(v["ring"]["names"], serde_json::json!(["d0", "d1", "d2"]));

    let mut monitor = Reaped(
        ringfence()
            .args(["monitor", "--config", setup.config.to_str().unwrap(), "--json", "--interval-ms", "100"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel::<(Instant, serde_json::Value)>();
    let stdout = monitor.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send((Instant::now(), v)).is_err() {
                    return;
                }
            }
        }
    });
    let reachable = |v: &serde_json::Value, i: usize| v["daemons"][i]["reachable"] == true;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("monitor output");
        if (0..3).all(|i| reachable(&v, i)) {
            assert_eq!(v["daemons"][2]["status"]["ring_size"], 3);
            break;
        }
    }
    let _ = daemons[2].child.kill();
    let killed = Instant::now();
    let _ = daemons[2].child.wait();
    let marked = loop {
        let (at, v) = rx.recv_timeout(Duration::from_secs(5)).expect("monitor output after the kill");
        if !reachable(&v, 2) {
            assert!(reachable(&v, 0) && reachable(&v, 1), "{v}");
            let d2 = &v["daemons"][2];
            assert!(d2["error"].as_str().is_some_and(|e| e.contains("d2")) || d2["age_ms"].is_u64(), "{d2}");
            break at.saturating_duration_since(killed);
        }
    };
    eprintln!("monitor marked the killed daemon unreachable after {marked:?}");
    assert!(marked < Duration::from_secs(2), "took {marked:?}");
    // `--once` says so in its exit status and its table.
    let out =
        ringfence().args(["monitor", "--config", setup.config.to_str().unwrap(), "--once"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.lines().any(|l| l.starts_with("d2") && l.contains("UNREACHABLE")), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("d0") && l.contains("UNREACHABLE")), "{text}");
    // A daemon that stops answering (SIGSTOP: its socket still accepts)
    // is marked once its last answer is older than 1.5 s.
    while rx.try_recv().is_ok() {}
    let pid = daemons[1].child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    let marked = loop {
        let (at, v) = rx.recv_timeout(Duration::from_secs(5)).expect("monitor output after SIGSTOP");
        if !reachable(&v, 1) {
            assert!(v["daemons"][1]["age_ms"].as_u64().is_some_and(|a| a >= 1000), "{v}");
            break at.saturating_duration_since(stopped);
        }
    };
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    eprintln!("monitor marked the paused daemon unreachable after {marked:?}");
    assert!(marked < Duration::from_secs(2), "took {marked:?}");
}

#[test]
fn a_second_daemon_of_the_same_name_is_refused_and_the_first_keeps_serving() {
    let setup = Setup::new("twice", 2, |_| String::new(), "");
    let mut daemons = setup.start(2);
    wait_for_ring(&setup, &mut daemons);
    let mut alice = connect(&setup.socket(0), "alice");
    alice.join("g").unwrap();
    receive_until(&mut alice, |e| matches!(e, Event::Membership(_)));

    let second = ringfence()
        .args(["daemon", "--config", setup.config.to_str().unwrap(), "--name", "d0"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(err.contains("daemon `d0` is already running") && err.contains("lock"), "{err}");
    // The socket file is the first daemon's still: it serves old and new clients.
    assert!(setup.socket(0).exists());
    let mut bob = connect(&setup.socket(0), "bob");
    bob.join("g").unwrap();
    receive_until(&mut bob, |e| matches!(e, Event::Membership(_)));
    alice.multicast(Service::Agreed, &["g"], 0, b"still here").unwrap();
    for c in [&mut alice, &mut bob] {
        receive_until(c, |e| matches!(e, Event::Message(m) if &m.payload[..] == b"still here"));
    }
}

#[test]
fn sigterm_makes_the_others_reform_well_under_the_token_timeout() {
    // A long token timeout makes the difference plain: a crash costs 3 s.
    let setup = Setup::new("sigterm", 3, |_| String::new(), "\n[ring]\ntoken_timeout_ms = 3000\n");
    let mut daemons = setup.start(3);
    wait_for_ring(&setup, &mut daemons);
    let mut alice = connect(&setup.socket(0), "alice");
    let mut carol = connect(&setup.socket(2), "carol");
    alice.join("g").unwrap();
    carol.join("g").unwrap();
    receive_until(&mut alice, |e| matches!(e, Event::Membership(v) if v.members.len() == 2));

    let pid = daemons[2].child.id();
    let sent = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    // alice's daemon installs the ring without d2: her view of g loses carol.
    let events = receive_until(
        &mut alice,
        |e| matches!(e, Event::Membership(v) if v.kind == ViewKind::Regular && v.cause == ViewCause::Network),
    );
    let took = sent.elapsed();
    eprintln!("new membership {took:?} after SIGTERM (token timeout 3 s)");
    assert!(took < Duration::from_millis(1000), "took {took:?}; events {events:?}");
    let Some(Event::Membership(v)) = events.last() else { unreachable!() };
    assert_eq!(v.members.len(), 1);
    // carol was told why; d2 exited 0 and logged the signal and the leave.
    let bye = loop {
        match carol.receive() {
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    assert!(bye.contains("left the ring") || bye.contains("closed"), "{bye}");
    let status = wait_for("d2 to exit", Duration::from_secs(5), || daemons[2].child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    let log = daemons[2].log.lock().unwrap().join("\n");
    assert!(log.contains("signal received") && log.contains("daemon stopped"), "{log}");
    // The others' log names the members.
    let log0 = daemons[0].log.lock().unwrap().join("\n");
    assert!(log0.contains("members=[d0, d1]"), "{log0}");
}

/// One scrape: the metrics text.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("application/openmetrics-text") && text.ends_with("# EOF\n"), "{text}");
    text
}

/// The value of the sample `name{daemon="d0"...}`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn the_metrics_endpoint_is_scraped_and_its_counters_move_under_flood() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let setup = Setup::new(
        "metrics",
        3,
        |i| if i == 0 { format!("metrics = \"{port}\"\n") } else { String::new() },
        "",
    );
    let mut daemons = setup.start(3);
    wait_for_ring(&setup, &mut daemons);
    let before = wait_for("a first rendering", Duration::from_secs(5), || {
        let t = scrape(port);
        (t.contains("ringfence_ring_members{daemon=\"d0\"} 3")).then_some(t)
    });
    let messages = 20_000.0;
    let flood = ringfence()
        .args(["flood", "--config", setup.config.to_str().unwrap(), "--messages", "20000", "--size", "100"])
        .args(["--timeout", "60"])
        .output()
        .unwrap();
    assert!(flood.status.success(), "{}", String::from_utf8_lossy(&flood.stderr));
    // The endpoint renders every 500 ms.
    let after = wait_for("counters after the flood", Duration::from_secs(5), || {
        let t = scrape(port);
        (sample(&t, "ringfence_messages_delivered_total")
            - sample(&before, "ringfence_messages_delivered_total")
            >= messages)
            .then_some(t)
    });
    for name in [
        "ringfence_bytes_sent_total",
        "ringfence_bytes_received_total",
        "ringfence_token_rotations_total",
        "ringfence_packets_sent_total",
        "ringfence_group_messages_delivered_total",
    ] {
        assert!(sample(&after, name) > sample(&before, name), "{name} did not move:\n{after}");
    }
    assert_eq!(sample(&after, "ringfence_operational"), 1.0);
    assert!(
        after.contains("ringfence_datagrams_rejected_total{daemon=\"d0\",reason=\"replay\"} 0"),
        "{after}"
    );
    // Other paths and methods are answered, not served metrics.
    let mut s = TcpStream::connect(port).unwrap();
    s.write_all(b"GET /other HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
}

#[test]
fn user_prints_readable_lines_sends_to_several_groups_and_waits_for_its_deliveries() {
    let setup = Setup::new("user", 2, |_| String::new(), "");
    let mut daemons = setup.start(2);
    wait_for_ring(&setup, &mut daemons);
    let mut bob = connect(&setup.socket(1), "bob");
    bob.join("other").unwrap();
    receive_until(&mut bob, |e| matches!(e, Event::Membership(_)));
    // Piped input: the socket comes from --config/--daemon; the output ends
    // only once what it sent came back.
    let mut user = ringfence()
        .args(["user", "--config", setup.config.to_str().unwrap(), "--daemon", "d0", "--name", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    user.stdin.take().unwrap().write_all(b"j chat\ns other,chat hello both\nx\ns chat\n").unwrap();
    let out = user.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("connected to daemon 0 as #alice#0"), "{text}");
    assert!(text.contains("view chat: 1 member after join (view 0."), "{text}");
    assert!(text.contains("[other,chat] #alice#0: hello both"), "{text}");
    assert!(text.contains("unknown command `x`") && text.contains("s needs groups and text"), "{text}");
    assert!(!text.contains("ViewId {"), "no debug output: {text}");
    receive_until(&mut bob, |e| matches!(e, Event::Message(m) if &m.payload[..] == b"hello both"));

    // A socket that is not there: the error names the path and the fix.
    let out = ringfence()
        .args(["user", "--socket", "/nonexistent/ringfence.sock"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot connect to /nonexistent/ringfence.sock")
            && err.contains("is the daemon running"),
        "{err}"
    );
    // An unknown daemon name lists the names.
    let out = ringfence()
        .args(["user", "--config", setup.config.to_str().unwrap(), "--daemon", "d9"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no daemon named `d9`") && err.contains("d0, d1"), "{err}");
}

#[test]
fn startup_errors_name_their_subject_and_the_fix() {
    let setup = Setup::new("errors", 2, |_| String::new(), "");
    let run = |args: &[&str]| {
        let out = ringfence().args(args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let config = setup.config.to_str().unwrap();
    // No such daemon: the names and the fix.
    let err = run(&["daemon", "--config", config, "--name", "d9"]);
    assert!(err.contains("no daemon named `d9`") && err.contains("the names are: d0, d1"), "{err}");
    // Both addresses are local: --name cannot be left out.
    let err = run(&["daemon", "--config", config]);
    assert!(err.contains("2 daemons' addresses are on this machine") && err.contains("--name"), "{err}");
    // An address this machine does not have.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let first =
        text.lines().find_map(|l| l.strip_prefix("address = ")).unwrap().trim_matches('"').to_string();
    let port = first.rsplit(':').next().unwrap();
    let foreign = setup.dir.join("foreign.toml");
    std::fs::write(&foreign, text.replacen(&first, &format!("192.0.2.7:{port}"), 1)).unwrap();
    let err = run(&["daemon", "--config", foreign.to_str().unwrap(), "--name", "d0"]);
    assert!(
        err.contains(&format!("cannot bind UDP 192.0.2.7:{port}"))
            && err.contains("`address` of daemon `d0`")
            && err.contains("this machine has no such address"),
        "{err}"
    );
    // A missing key file: its path and the keygen command.
    std::fs::remove_file(setup.dir.join("keys").join("d1.key")).unwrap();
    let err = run(&["daemon", "--config", config, "--name", "d1"]);
    assert!(err.contains("d1.key") && err.contains("ringfence keygen daemon d1"), "{err}");
    // A key that does not match the configured public key is fatal.
    std::fs::copy(setup.dir.join("keys").join("d0.key"), setup.dir.join("keys").join("d1.key")).unwrap();
    let err = run(&["daemon", "--config", config, "--name", "d1"]);
    assert!(err.contains("does not match `cluster.daemon.public_key`") && err.contains("keygen"), "{err}");
}

#[test]
fn ctl_rekeys_leaves_and_shuts_down() {
    let setup = Setup::new("ctl", 3, |_| String::new(), "");
    let mut daemons = setup.start(3);
    wait_for_ring(&setup, &mut daemons);
    let status = |name: &str| {
        let (code, out, err) = ctl(&setup.config, "status", name);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    // rekey: a new server key epoch, same ring.
    let before = status("d0");
    let (code, out, err) = ctl(&setup.config, "rekey", "d1");
    assert_eq!(code, 0, "{out}{err}");
    wait_for("a new epoch", Duration::from_secs(5), || {
        let v = status("d0");
        (v["security"]["epoch"].as_u64() > before["security"]["epoch"].as_u64()).then_some(())
    });
    assert_eq!(status("d0")["ring"]["seq"], before["ring"]["seq"]);
    // leave: the others reform without d2; d2 stays up, out of the ring,
    // answering operators (other clients are refused; this test's clients
    // all run as the daemon's user, an operator by default).
    let mut carol = connect(&setup.socket(2), "carol");
    let (code, out, err) = ctl(&setup.config, "leave", "d2");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("left the ring"), "{out}");
    wait_for("a ring of d0 and d1", Duration::from_secs(2), || {
        (status("d0")["ring"]["names"] == serde_json::json!(["d0", "d1"])).then_some(())
    });
    assert_eq!(status("d2")["phase"], "Left");
    let bye = loop {
        if let Err(e) = carol.receive() {
            break e.to_string();
        }
    };
    assert!(bye.contains("left the ring"), "{bye}");
    // shutdown: d2 exits 0.
    let (code, out, err) = ctl(&setup.config, "shutdown", "d2");
    assert_eq!(code, 0, "{out}{err}");
    let exit = wait_for("d2 to exit", Duration::from_secs(5), || daemons[2].child.try_wait().unwrap());
    assert!(exit.success());
    // An unknown daemon: the names.
    let (code, _, err) = ctl(&setup.config, "status", "d9");
    assert_eq!(code, 2);
    assert!(err.contains("no daemon named `d9`") && err.contains("d0, d1, d2"), "{err}");
}

#[test]
fn monitor_and_ctl_ask_over_tcp_authenticated_like_clients() {
    let ports: Vec<u16> =
        (0..2).map(|_| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let extra = format!(
        "\n[clients]\nadmin = [\"token:ops\"]\n{}{}",
        common::token_entry("ops", "ops-secret-1"),
        common::token_entry("guest", "guest-secret-2")
    );
    let setup = Setup::new("tcp", 2, |i| format!("client_tcp = \"127.0.0.1:{}\"\n", ports[i]), &extra);
    let mut daemons = setup.start(2);
    let config = setup.config.to_str().unwrap();
    let over_tcp = |token: &str, args: &[&str]| {
        ringfence().args(args).args(["--config", config, "--token", token]).output().unwrap()
    };
    let ring = wait_for("a ring, seen over TCP", Duration::from_secs(20), || {
        let out = over_tcp("ops-secret-1", &["monitor", "--once", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let both =
            (0..2).all(|i| v["daemons"][i]["status"]["ring"]["names"] == serde_json::json!(["d0", "d1"]));
        (out.status.success() && both).then_some(v)
    });
    assert_eq!(ring["daemons"][1]["reachable"], true);
    // A client that authenticates but is not an operator is told why.
    let out = over_tcp("guest-secret-2", &["ctl", "status", "d0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("for operators") && err.contains("[clients] admin"), "{err}");
    // A wrong token is refused at the door.
    let out = over_tcp("nope", &["ctl", "status", "d0"]);
    assert_eq!(out.status.code(), Some(1));
    // Killed: unreachable, over TCP too.
    let _ = daemons[1].child.kill();
    let _ = daemons[1].child.wait();
    let out = over_tcp("ops-secret-1", &["monitor", "--once"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.lines().any(|l| l.starts_with("d1") && l.contains("UNREACHABLE")), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("d0") && l.contains("UNREACHABLE")), "{text}");
}
