//! What the real-process tests share: a cluster of `ringfence daemon`
//! children on 127.0.0.1 with free ports and a temporary state directory,
//! killed and reaped when dropped, and client helpers with bounded waits.

#![allow(dead_code, unreachable_pub)] // each test file uses a part; `pub` within the test crate

use ringfence_client::{Address, Client, ConnectOptions, Event};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Makes the daemon identity `name` in `dir` (created if missing); returns
/// its public key in hex, as `public_key` takes it.
pub fn keypair(dir: &Path, name: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let (_, public) = ringfence_crypto::identity::write_keypair(dir, name, &mut rand::rng()).unwrap();
    ringfence_crypto::identity::load_public(&public).unwrap().key.to_string()
}

/// A `ringfence daemon` child (log level `info`) with its standard error
/// collected line by line; killed and reaped when dropped.
pub struct LoggedDaemon {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl LoggedDaemon {
    /// Starts daemon `name` of `config`.
    pub fn start(config: &Path, name: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["daemon", "--config", config.to_str().unwrap(), "--name", name])
            .env("RINGFENCE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }
}

impl Drop for LoggedDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[daemon] backend` values every real-process test runs on: one test
/// body, both socket backends. Where the kernel refuses io_uring (a seccomp
/// policy, an old kernel) only the portable one runs, and the test says so
/// loudly on standard error.
pub fn backends() -> Vec<&'static str> {
    if ringfence_engine::io_uring_available() {
        vec!["io_uring", "portable"]
    } else {
        eprintln!("WARNING: io_uring cannot be set up here; testing the portable backend only");
        vec!["portable"]
    }
}

/// Daemons started by a test; all are killed and reaped when dropped.
pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tcp_ports: Vec<u16>,
    pub children: Vec<Option<Child>>,
}

impl Cluster {
    /// Writes a config for `n` daemons (`d0`, `d1`, ...) on `backend`, each
    /// with a Unix client socket and a TCP client port, and starts them.
    pub fn start(tag: &str, n: usize, backend: &str) -> Self {
        Self::start_on(tag, n, backend, "unicast")
    }

    /// As `start`, over `transport` (`unicast` or `multicast`: an IP
    /// multicast group of this test's own on loopback, TTL 0).
    pub fn start_on(tag: &str, n: usize, backend: &str, transport: &str) -> Self {
        Self::start_with(tag, n, backend, transport, "")
    }

    /// As `start_on`, with `extra` TOML appended to the config (e.g. a
    /// `[clients]` section).
    pub fn start_with(tag: &str, n: usize, backend: &str, transport: &str, extra: &str) -> Self {
        let dir = std::env::temp_dir()
            .join(format!("ringfence-{tag}-{}-{backend}-{transport}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let udp: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let tcp: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let group_port = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ports: Vec<u16> = udp.iter().map(|s| s.local_addr().unwrap().port()).collect();
        let tcp_ports: Vec<u16> = tcp.iter().map(|s| s.local_addr().unwrap().port()).collect();
        let group_port = group_port.local_addr().unwrap().port();
        drop((udp, tcp));
        let mut text =
            format!("[daemon]\nbackend = \"{backend}\"\n\n[cluster]\ntransport = \"{transport}\"\n");
        if transport == "multicast" {
            let pid = std::process::id();
            text += &format!(
                "multicast_group = \"239.255.{}.{}:{group_port}\"\nmulticast_interface = \"127.0.0.1\"\nmulticast_ttl = 0\n",
                pid % 251,
                1 + (pid / 251) % 253
            );
        }
        // Link security on (the default, `encrypt`): an identity per daemon.
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        for (i, p) in ports.iter().enumerate() {
            let key = keypair(&keys, &format!("d{i}"));
            text += &format!(
                "\n[[cluster.daemon]]\nid = {i}\nname = \"d{i}\"\naddress = \"127.0.0.1:{p}\"\nclient_tcp = \"127.0.0.1:{}\"\npublic_key = \"{key}\"\n",
                tcp_ports[i]
            );
        }
        text += &format!("\n[security]\nidentity = \"{}/{{name}}.key\"\n", keys.display());
        text += &format!("\n[paths]\nstate_dir = \"{}/{{name}}\"\n", dir.display());
        text += extra;
        let config = dir.join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        let mut c = Self { dir, config, tcp_ports, children: (0..n).map(|_| None).collect() };
        for i in 0..n {
            c.spawn(i, Stdio::null());
        }
        c
    }

    /// Starts (or restarts) daemon `i` with its standard error going to `stderr`.
    pub fn spawn(&mut self, i: usize, stderr: Stdio) -> &mut Child {
        let child = Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["daemon", "--config", self.config.to_str().unwrap(), "--name", &format!("d{i}")])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.children[i].insert(child)
    }

    /// `kill -9` of daemon `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Daemon `i`'s Unix client socket.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("d{i}")).join("client.sock")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to a daemon's Unix socket, retrying for up to 10 s while it
/// starts.
pub fn connect(socket: &Path, name: &str) -> Client {
    connect_to(&Address::Unix(socket.to_path_buf()), name)
}

/// Connects to any address, retrying for up to 10 s.
pub fn connect_to(addr: &Address, name: &str) -> Client {
    connect_with(addr, name, &ConnectOptions::default())
}

/// Connects with options (TLS, token), retrying for up to 10 s.
pub fn connect_with(addr: &Address, name: &str, opts: &ConnectOptions) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect_with(addr, name, opts) {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect to {addr:?}: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Receives until `stop` says so, at most 20 s; returns every event.
pub fn receive_until(c: &mut Client, mut stop: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "timed out; got {} events, last {:?}", got.len(), got.last());
        match c.poll().unwrap() {
            Some(e) => {
                let done = stop(&e);
                got.push(e);
                if done {
                    return got;
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// A `[[clients.token]]` entry for `token`, named `name`.
pub fn token_entry(name: &str, token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("\n[[clients.token]]\nname = \"{name}\"\nsha256 = \"{hex}\"\n")
}
