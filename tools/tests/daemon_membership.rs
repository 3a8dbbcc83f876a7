//! Real daemons on loopback: they form one ring, a daemon killed with
//! SIGKILL leaves a transitional then a regular configuration without it at
//! the survivors, and a restarted daemon merges back (EVS on real sockets).
//! One test body, both socket backends (io_uring and portable), side by side.

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn free_ports(n: usize) -> Vec<u16> {
    let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    socks.iter().map(|s| s.local_addr().unwrap().port()).collect()
}

mod common;

use common::{LoggedDaemon as Daemon, backends};

/// A cluster config with link security `authenticate` (the other suites run
/// the default, `encrypt`): an identity per daemon under `dir/keys`.
fn write_config(dir: &Path, ports: &[u16], backend: &str) -> std::path::PathBuf {
    let mut text = String::from("[cluster]\ntransport = \"unicast\"\n");
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for (i, p) in ports.iter().enumerate() {
        let name = format!("d{i}");
        let public = keys.join(format!("{name}.pub"));
        let key = if public.exists() {
            ringfence_crypto::identity::load_public(&public).unwrap().key.to_string()
        } else {
            common::keypair(&keys, &name)
        };
        text += &format!(
            "\n[[cluster.daemon]]\nid = {i}\nname = \"{name}\"\naddress = \"127.0.0.1:{p}\"\npublic_key = \"{key}\"\n"
        );
    }
    text += &format!(
        "\n[security]\nlink_security = \"authenticate\"\nidentity = \"{}/{{name}}.key\"\n",
        keys.display()
    );
    text += &format!("\n[paths]\nstate_dir = \"{}/{{name}}\"\n", dir.display());
    text += &format!("\n[daemon]\nbackend = \"{backend}\"\n");
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path, name: &str) -> Daemon {
    Daemon::start(config, name)
}

/// Waits (at most 20 s) until a log line at or after `from` contains every
/// one of `needles`; returns its index.
fn wait_for(d: &Daemon, from: usize, needles: &[&str]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let log = d.log.lock().unwrap();
            if let Some(i) = log.iter().skip(from).position(|l| needles.iter().all(|n| l.contains(n))) {
                return from + i;
            }
        }
        assert!(Instant::now() < deadline, "no log line with {needles:?}; log: {:#?}", d.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_len(d: &Daemon) -> usize {
    d.log.lock().unwrap().len()
}

#[test]
fn kill_and_restart_give_evs_configurations() {
    std::thread::scope(|s| {
        for backend in backends() {
            s.spawn(move || kill_and_restart(backend));
        }
    });
}

fn kill_and_restart(backend: &str) {
    let dir = std::env::temp_dir().join(format!("ringfence-test-{}-{backend}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, &free_ports(3), backend);
    let mut daemons: Vec<Option<Daemon>> = (0..3).map(|i| Some(start(&config, &format!("d{i}")))).collect();

    // One ring of all three, on the backend asked for.
    let started = format!("backend=\"{backend}\"");
    for d in daemons.iter().flatten() {
        wait_for(d, 0, &["daemon started", &started]);
        wait_for(d, 0, &["regular configuration", "members=[d0, d1, d2]"]);
    }

    // A local client is identified by its Unix peer credentials, read from
    // the kernel (this test process).
    let client_socket = dir.join("d0").join("client.sock");
    let client = common::connect(&client_socket, "probe");
    let uid = format!(
        "uid={}",
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap()
    );
    let pid = format!("pid={}", std::process::id());
    wait_for(daemons[0].as_ref().unwrap(), 0, &["client connected", &uid, &pid]);
    drop(client);

    // kill -9 of d2: the survivors see a transitional configuration, then a
    // regular one without it.
    let marks: Vec<usize> = daemons.iter().flatten().map(log_len).collect();
    drop(daemons[2].take());
    for (i, d) in daemons.iter().flatten().enumerate() {
        let t = wait_for(d, marks[i], &["transitional configuration", "members=[d0, d1]"]);
        wait_for(d, t, &["regular configuration", "members=[d0, d1]"]);
    }

    // Restart: the merge brings it back, with a new incarnation.
    let marks: Vec<usize> = daemons.iter().flatten().map(log_len).collect();
    daemons[2] = Some(start(&config, "d2"));
    let d2 = daemons[2].as_ref().unwrap();
    wait_for(d2, 0, &["daemon started", "incarnation=1"]);
    for (i, d) in daemons.iter().take(2).flatten().enumerate() {
        wait_for(d, marks[i], &["regular configuration", "members=[d0, d1, d2]"]);
    }
    wait_for(d2, 0, &["regular configuration", "members=[d0, d1, d2]"]);

    // `ringfence monitor` (each daemon asked over its client socket) shows
    // the three in one ring.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["monitor", "--config", config.to_str().unwrap(), "--once", "--json"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let round: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let daemons = round["daemons"].as_array().cloned().unwrap_or_default();
        if daemons.len() == 3
            && daemons.iter().all(|d| {
                d["reachable"] == true
                    && d["status"]["ring"]["members"] == serde_json::json!([0, 1, 2])
                    && d["status"]["phase"] == "Operational"
            })
        {
            assert!(out.status.success());
            break;
        }
        assert!(Instant::now() < deadline, "monitor never showed one ring: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemons);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_names_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("ringfence-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[cluster]\n\n[[cluster.daemon]]\nid = 0\nname = \"d0\"\naddress = \"nowhere\"\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["daemon", "--config", path.to_str().unwrap(), "--name", "d0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("bad.toml:6: key `cluster.daemon.address`"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
