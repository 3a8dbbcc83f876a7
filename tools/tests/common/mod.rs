//! What the real-process tests share: a cluster of `ringfence daemon`
//! children on 127.0.0.1 with free ports and a temporary state directory,
//! killed and reaped when dropped, and client helpers with bounded waits.

#![allow(dead_code, unreachable_pub)] // each test file uses a part; `pub` within the test crate

pub mod capture;

use capture::{Capture, UdpTap};
use ringfence_client::{Address, Client, ConnectOptions, Event, TlsOptions};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
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
    /// Daemon `i`'s config file (one file for all, unless tapped).
    pub configs: Vec<PathBuf>,
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
        Self::start_full(tag, n, backend, transport, "encrypt", None, "")
    }

    /// As `start` (unicast, encrypted links) with `extra` appended to the
    /// config (e.g. `[[group]]` policy tables).
    pub fn start_extra(tag: &str, n: usize, backend: &str, extra: &str) -> Self {
        Self::start_full(tag, n, backend, "unicast", "encrypt", None, extra)
    }

    /// As `start_tapped`, with `extra` appended to every config.
    pub fn start_tapped_extra(
        tag: &str,
        n: usize,
        backend: &str,
        link_security: &str,
        extra: &str,
    ) -> (Self, UdpTap) {
        let tap = UdpTap::start(n, Capture::new());
        let c = Self::start_full(tag, n, backend, "unicast", link_security, Some(&tap), extra);
        (c, tap)
    }

    /// As `start` (unicast) with `link_security` as given, every
    /// daemon-to-daemon datagram going through a [`UdpTap`] recording into
    /// a new [`Capture`]: daemon `i` binds `tap.daemon(i)` and its own
    /// config file names every other daemon `j` by `tap.relay(j)`. The
    /// config files differ in nothing else.
    pub fn start_tapped(tag: &str, n: usize, backend: &str, link_security: &str) -> (Self, UdpTap) {
        let tap = UdpTap::start(n, Capture::new());
        let c = Self::start_full(tag, n, backend, "unicast", link_security, Some(&tap), "");
        (c, tap)
    }

    /// As `start_tapped_extra`, through a tap the test made (e.g. one that
    /// redirects datagrams: [`UdpTap::start_redirecting`]).
    pub fn start_on_tap(tag: &str, backend: &str, link_security: &str, tap: &UdpTap, extra: &str) -> Self {
        Self::start_full(tag, tap.daemon_count(), backend, "unicast", link_security, Some(tap), extra)
    }

    /// Daemon `i`'s persisted state file (`incarnation=..`, `ring_seq=..`).
    pub fn state_file(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("d{i}")).join("state")).unwrap_or_default()
    }

    /// As `start_on`, with `extra` TOML appended to the config (e.g. a
    /// `[clients]` section).
    pub fn start_with(tag: &str, n: usize, backend: &str, transport: &str, extra: &str) -> Self {
        Self::start_full(tag, n, backend, transport, "encrypt", None, extra)
    }

    fn start_full(
        tag: &str,
        n: usize,
        backend: &str,
        transport: &str,
        link_security: &str,
        tap: Option<&UdpTap>,
        extra: &str,
    ) -> Self {
        let dir = std::env::temp_dir()
            .join(format!("ringfence-{tag}-{}-{backend}-{transport}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let addresses = match tap {
            Some(t) => (0..n).map(|i| t.daemon(i)).collect(),
            None => free_udp(n),
        };
        let tcp: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let group_port = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp_ports: Vec<u16> = tcp.iter().map(|s| s.local_addr().unwrap().port()).collect();
        let group_port = group_port.local_addr().unwrap().port();
        drop(tcp);
        let mut head =
            format!("[daemon]\nbackend = \"{backend}\"\n\n[cluster]\ntransport = \"{transport}\"\n");
        if transport == "multicast" {
            let pid = std::process::id();
            head += &format!(
                "multicast_group = \"239.255.{}.{}:{group_port}\"\nmulticast_interface = \"127.0.0.1\"\nmulticast_ttl = 0\n",
                pid % 251,
                1 + (pid / 251) % 253
            );
        }
        // An identity per daemon (used unless `link_security` is `none`).
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let public: Vec<String> = (0..n).map(|i| keypair(&keys, &format!("d{i}"))).collect();
        let tail = format!(
            "\n[security]\nlink_security = \"{link_security}\"\nidentity = \"{}/{{name}}.key\"\n\n[paths]\nstate_dir = \"{}/{{name}}\"\n",
            keys.display(),
            dir.display()
        );
        // Daemon `me`'s config file: with a tap, the others at their relays.
        let write = |me: Option<usize>, file: &str| {
            let mut text = head.clone();
            for (i, key) in public.iter().enumerate() {
                let address = match (tap, me) {
                    (Some(t), Some(me)) if me != i => t.relay(i),
                    _ => addresses[i],
                };
                text += &format!(
                    "\n[[cluster.daemon]]\nid = {i}\nname = \"d{i}\"\naddress = \"{address}\"\nclient_tcp = \"127.0.0.1:{}\"\npublic_key = \"{key}\"\n",
                    tcp_ports[i]
                );
            }
            text += &tail;
            text += extra;
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap();
            path
        };
        let configs = match tap {
            Some(_) => (0..n).map(|i| write(Some(i), &format!("d{i}.toml"))).collect(),
            None => vec![write(None, "cluster.toml"); n],
        };
        let mut c = Self { dir, configs, tcp_ports, children: (0..n).map(|_| None).collect() };
        for i in 0..n {
            c.spawn(i, Stdio::null());
        }
        c
    }

    /// Starts (or restarts) daemon `i` with its standard error going to `stderr`.
    pub fn spawn(&mut self, i: usize, stderr: Stdio) -> &mut Child {
        let child = Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["daemon", "--config", self.configs[i].to_str().unwrap(), "--name", &format!("d{i}")])
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

    /// Daemon `i`'s TCP client address.
    pub fn tcp(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tcp_ports[i]))
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to daemon `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.children[i].as_ref().expect("daemon running").id();
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
        assert!(ok.success(), "kill -{signal} {pid}");
    }

    /// Daemon `i`'s `status.json` (rewritten every 500 ms), if readable.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join(format!("d{i}")).join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
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

/// `n` loopback UDP addresses, free a moment ago.
fn free_udp(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    socks.iter().map(|s| s.local_addr().unwrap()).collect()
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
/// The pre-shared token of plain-TCP test clients (principal `token:tester`;
/// configs get it from [`token_config`]).
pub const TEST_TOKEN: &str = "ringfence-test-token-31f6";

/// The `[[clients.token]]` table for [`TEST_TOKEN`].
pub fn token_config() -> String {
    token_entry("tester", TEST_TOKEN)
}

/// Connects over plain TCP with [`TEST_TOKEN`], retrying for up to 10 s.
pub fn connect_token(addr: &Address, name: &str) -> Client {
    connect_with(addr, name, &ConnectOptions { tls: None, token: Some(TEST_TOKEN.into()) })
}

/// Runs `ringfence keygen ...`.
pub fn keygen(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringfence")).arg("keygen").args(args).output().unwrap();
    assert!(out.status.success(), "keygen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn token_entry(name: &str, token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("\n[[clients.token]]\nname = \"{name}\"\nsha256 = \"{hex}\"\n")
}

/// A CA, a server certificate for every daemon (127.0.0.1, localhost) and
/// client certificates for `clients`, made by `ringfence keygen`; the
/// `[clients]` section for them (with token `bob` = `token`); and client
/// options for a certificate (`Some(name)`) or none.
pub struct Pki {
    pub dir: PathBuf,
    pub clients_section: String,
}

impl Pki {
    pub fn new(tag: &str, clients: &[&str], token: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringfence-{tag}-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let (ca, certs) = (dir.join("ca"), dir.join("certs"));
        keygen(&["ca", "--dir", &s(&ca)]);
        for name in std::iter::once(&"daemons").chain(clients) {
            keygen(&[
                "cert",
                name,
                "--ca-dir",
                &s(&ca),
                "--dir",
                &s(&certs),
                "--san",
                "127.0.0.1",
                "--san",
                "localhost",
            ]);
        }
        let clients_section = format!(
            "\n[clients]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n{}",
            s(&certs.join("daemons.crt")),
            s(&certs.join("daemons.key")),
            s(&ca.join("ca.crt")),
            token_entry("bob", token)
        );
        Self { dir, clients_section }
    }

    pub fn tls(&self, cert: Option<&str>) -> TlsOptions {
        let certs = self.dir.join("certs");
        TlsOptions {
            ca_cert: self.dir.join("ca").join("ca.crt"),
            client_cert: cert.map(|c| (certs.join(format!("{c}.crt")), certs.join(format!("{c}.key")))),
            server_name: "localhost".into(),
        }
    }

    pub fn cert(&self, name: &str) -> ConnectOptions {
        ConnectOptions { tls: Some(self.tls(Some(name))), token: None }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 10 ms until it gives a value; panics after `limit`,
/// naming `what`.
pub fn wait_for<T>(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
