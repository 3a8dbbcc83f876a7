//! A cluster of `ringfence daemon` child processes on 127.0.0.1, for
//! `ringfence demo` and `ringfence flood`: a generated config with free
//! ports, one log file per daemon, and every child killed and reaped on drop.
//! Optionally the config carries `[[group]]` policy rules, and each daemon a
//! TLS listener for TCP clients with a fresh CA and certificates.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// What the generated configuration says.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    /// Daemons `d0`, `d1`, ...
    pub(crate) daemons: usize,
    /// `[daemon] backend`.
    pub(crate) backend: String,
    /// `[cluster] transport` (`unicast` or `multicast`).
    pub(crate) transport: String,
    /// `[daemon] ring_core` (`auto`, `none` or a core index).
    pub(crate) ring_core: String,
    /// Extra lines of the `[ring]` section.
    pub(crate) ring: Vec<String>,
    /// `[security] link_security` (`encrypt`, `authenticate` or `none`);
    /// the secure modes get a fresh identity per daemon.
    pub(crate) link_security: String,
    /// Extra `[[group]]` tables (TOML, verbatim) of the client group policy.
    pub(crate) groups: String,
    /// Give every daemon a `client_tcp` listener with TLS and client
    /// certificates required (`[clients]`): a fresh CA in `<dir>/tls`, a
    /// server certificate per daemon (`d<i>`, for `localhost` and
    /// `127.0.0.1`) and a client certificate `client` (principal
    /// `cert:client`).
    pub(crate) client_tls: bool,
}

/// The files a TLS client of a [`Spec::client_tls`] cluster uses.
#[derive(Clone, Debug)]
pub(crate) struct ClientTls {
    /// The CA certificate the daemons' certificates chain to.
    pub(crate) ca_cert: PathBuf,
    /// The client certificate and its key.
    pub(crate) cert: PathBuf,
    /// The client certificate's private key.
    pub(crate) key: PathBuf,
    /// The name the daemons' certificates carry.
    pub(crate) server_name: String,
}

impl Spec {
    /// `n` daemons with every default.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            daemons: n,
            backend: "auto".into(),
            transport: "unicast".into(),
            ring_core: "auto".into(),
            ring: Vec::new(),
            link_security: "encrypt".into(),
            groups: String::new(),
            client_tls: false,
        }
    }
}

/// Daemons started by this process.
pub(crate) struct LocalCluster {
    pub(crate) dir: PathBuf,
    pub(crate) config: PathBuf,
    children: Vec<Option<Child>>,
    /// Each daemon's `client_tcp` address (with [`Spec::client_tls`]).
    pub(crate) tcp: Vec<SocketAddr>,
    /// What a TLS client needs (with [`Spec::client_tls`]).
    pub(crate) client_tls: Option<ClientTls>,
    /// Keep the directory (and the daemons' logs) when dropped.
    pub(crate) keep_dir: bool,
    /// Each daemon's UDP port on 127.0.0.1 (it sends from it too).
    pub(crate) ports: Vec<u16>,
}

/// `n` free UDP ports on 127.0.0.1 (free when asked; the daemons bind them
/// right after).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let socks = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free UDP port: {e}"))?;
    socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free UDP port: {e}"))
}

/// `n` free TCP ports on 127.0.0.1 (free when asked).
fn free_tcp_ports(n: usize) -> Result<Vec<u16>, String> {
    let socks = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free TCP port: {e}"))?;
    socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free TCP port: {e}"))
}

/// A fresh CA, a server certificate per daemon and one client certificate
/// in `dir` (the same code as `ringfence keygen ca` and `keygen cert`).
fn client_certs(dir: &std::path::Path, n: usize) -> Result<ClientTls, String> {
    crate::keygen::make_ca(dir)?;
    let san = ["localhost".to_string(), "127.0.0.1".to_string()];
    for i in 0..n {
        crate::keygen::make_cert(&format!("d{i}"), dir, dir, &san)?;
    }
    crate::keygen::make_cert("client", dir, dir, &[])?;
    Ok(ClientTls {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("client.crt"),
        key: dir.join("client.key"),
        server_name: "localhost".into(),
    })
}

/// Makes daemon `name`'s identity in `dir`; returns its public key (hex).
fn identity(dir: &std::path::Path, name: &str) -> Result<String, String> {
    let (_, public) = ringfence_crypto::identity::write_keypair(dir, name, &mut rand::rng())
        .map_err(|e| format!("cannot make {name}'s identity: {e}"))?;
    let entry = ringfence_crypto::identity::load_public(&public).map_err(|e| e.to_string())?;
    Ok(entry.key.to_string())
}

impl LocalCluster {
    /// Writes the configuration into a fresh directory under the system's
    /// temporary directory (`tag` names it) and starts every daemon.
    pub(crate) fn start(tag: &str, spec: &Spec) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("ringfence-{tag}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let n = spec.daemons;
        let ports = free_ports(n + 1)?;
        let mut text = format!("[daemon]\nbackend = \"{}\"\n", spec.backend);
        match spec.ring_core.parse::<usize>() {
            Ok(core) => {
                let _ = writeln!(text, "ring_core = {core}");
            }
            Err(_) => {
                let _ = writeln!(text, "ring_core = \"{}\"", spec.ring_core);
            }
        }
        let _ = write!(text, "\n[cluster]\ntransport = \"{}\"\n", spec.transport);
        if spec.transport == "multicast" {
            // A group of our own (from the process id and the clock) on a
            // port that was free: concurrent clusters on this host do not
            // share it. TTL 0: nothing leaves the host.
            let pid = std::process::id();
            let _ = write!(
                text,
                "multicast_group = \"239.255.{}.{}:{}\"\nmulticast_interface = \"127.0.0.1\"\nmulticast_ttl = 0\n",
                pid % 251,
                1 + nanos % 253,
                ports[n]
            );
        }
        let keys = dir.join("keys");
        let secure = spec.link_security != "none";
        if secure {
            std::fs::create_dir_all(&keys).map_err(|e| format!("{}: {e}", keys.display()))?;
        }
        let tcp: Vec<SocketAddr> = if spec.client_tls {
            free_tcp_ports(n)?.into_iter().map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect()
        } else {
            Vec::new()
        };
        let tls_dir = dir.join("tls");
        let client_tls = if spec.client_tls { Some(client_certs(&tls_dir, n)?) } else { None };
        for (i, p) in ports[..n].iter().enumerate() {
            let _ = write!(
                text,
                "\n[[cluster.daemon]]\nid = {i}\nname = \"d{i}\"\naddress = \"127.0.0.1:{p}\"\n"
            );
            if let Some(a) = tcp.get(i) {
                let _ = writeln!(text, "client_tcp = \"{a}\"");
            }
            if secure {
                let key = identity(&keys, &format!("d{i}"))?;
                let _ = writeln!(text, "public_key = \"{key}\"");
            }
        }
        let _ = write!(text, "\n[security]\nlink_security = \"{}\"\n", spec.link_security);
        if secure {
            let _ = writeln!(text, "identity = \"{}/{{name}}.key\"", keys.display());
        }
        if client_tls.is_some() {
            let t = tls_dir.display();
            let _ = write!(
                text,
                "\n[clients]\ntls_cert = \"{t}/{{name}}.crt\"\ntls_key = \"{t}/{{name}}.key\"\nclient_ca = \"{t}/ca.crt\"\nrequire_tls = true\n"
            );
        }
        text += "\n[ring]\n";
        for line in &spec.ring {
            let _ = writeln!(text, "{line}");
        }
        let _ = write!(text, "\n[paths]\nstate_dir = \"{}/{{name}}\"\n", dir.display());
        text += &spec.groups;
        let config = dir.join("cluster.toml");
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        let mut me = Self {
            dir,
            config,
            children: (0..n).map(|_| None).collect(),
            tcp,
            client_tls,
            keep_dir: false,
            ports: ports[..n].to_vec(),
        };
        for i in 0..n {
            me.spawn(i)?;
        }
        Ok(me)
    }

    /// Starts (or restarts) daemon `i`; its standard error goes to
    /// `<dir>/d<i>.log` (appended across restarts).
    pub(crate) fn spawn(&mut self, i: usize) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let log_path = self.dir.join(format!("d{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(exe)
            .args(["daemon", "--config"])
            .arg(&self.config)
            .args(["--name", &format!("d{i}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start daemon d{i}: {e}"))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// `kill -9` of daemon `i`, reaped.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process ids of the running daemons.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Daemon `i`'s Unix client socket.
    pub(crate) fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("d{i}")).join("client.sock")
    }

    /// Every daemon's Unix client socket.
    pub(crate) fn sockets(&self) -> Vec<PathBuf> {
        (0..self.children.len()).map(|i| self.socket(i)).collect()
    }

    /// CPU time (user and system) the running daemons have used so far, in
    /// seconds, from `/proc` (Linux; in USER_HZ = 100 ticks).
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        let mut s = 0.0;
        for c in self.children.iter().flatten() {
            s += process_cpu_seconds(&c.id().to_string())?;
        }
        Some(s)
    }

    /// Fails (and keeps the logs) if a daemon has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(Ok(Some(status))) = c.as_mut().map(Child::try_wait) {
                self.keep_dir = true;
                return Err(format!("daemon d{i} exited ({status})"));
            }
        }
        Ok(())
    }
}

/// CPU time (user and system) of process `pid` (`self`: this one) so far,
/// in seconds, from `/proc/<pid>/stat` (Linux; in USER_HZ = 100 ticks).
pub(crate) fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime
    // and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        if self.keep_dir {
            eprintln!("daemon logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
