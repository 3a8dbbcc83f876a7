//! The daemon's TOML configuration. Errors name the file, the line and the
//! key.

use ringfence_crypto::aead::{Backend as AeadBackend, UnknownBackend};
use ringfence_crypto::identity::PublicIdentity;
use ringfence_proto::NodeId;
use ringfence_proto::ring::Config as RingConfig;
use ringfence_proto::security::LinkMode;
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// A configuration that cannot be used: where, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown, missing or mistyped.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The parser's message (it names the key).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}:{line}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The daemon name given on the command line is not in the cluster.
    #[error(
        "{path}: no daemon named `{name}` in [[cluster.daemon]] (the names are: {}); give `--name` one of them, or add a [[cluster.daemon]] entry for `{name}`",
        known.join(", ")
    )]
    UnknownDaemon {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The names the file has.
        known: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cluster: Cluster,
    #[serde(default)]
    ring: RingFile,
    #[serde(default)]
    paths: PathsFile,
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
    security: SecurityFile,
    /// `[[group]]`: the client group policy, in order.
    #[serde(default)]
    group: Vec<crate::policy_file::GroupRuleFile>,
    #[serde(default)]
    clients: ClientsFile,
}

/// `[clients]`: how TCP clients authenticate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    client_ca: Option<Spanned<String>>,
    require_tls: Option<Spanned<bool>>,
    max_clients: Option<Spanned<usize>>,
    max_unauthenticated: Option<Spanned<usize>>,
    connection_buffer: Option<Spanned<usize>>,
    buffer_budget: Option<Spanned<usize>>,
    admin: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    token: Vec<TokenFile>,
}

/// `[[clients.token]]`: one pre-shared token, by its SHA-256.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    name: Spanned<String>,
    sha256: Spanned<String>,
}

/// `[security]`: link security and this daemon's identity.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecurityFile {
    link_security: Option<Spanned<String>>,
    identity: Option<Spanned<String>>,
    aead: Option<Spanned<String>>,
    refresh_interval_s: Option<u64>,
    refresh_bytes: Option<u64>,
}

/// `[daemon]`: runtime choices of this process.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    backend: Option<Spanned<String>>,
    ring_core: Option<Spanned<toml::Value>>,
    metrics: Option<Spanned<String>>,
    // UDP segmentation offload (`crate::udp`).
    gso: Option<bool>,
    gro: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cluster {
    #[serde(default = "default_transport")]
    transport: Spanned<String>,
    multicast_group: Option<Spanned<String>>,
    multicast_interface: Option<Spanned<String>>,
    multicast_ttl: Option<Spanned<u32>>,
    multicast_loop: Option<bool>,
    daemon: Vec<DaemonFile>,
}

fn default_transport() -> Spanned<String> {
    Spanned::new(0..0, "unicast".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonFile {
    id: Spanned<u16>,
    name: Spanned<String>,
    address: Spanned<String>,
    client_tcp: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
    /// This daemon's metrics address, overriding `[daemon] metrics` (for
    /// several daemons on one machine).
    metrics: Option<Spanned<String>>,
}

/// `[ring]`: every field optional; defaults are the LAN defaults of
/// `ringfence_proto::ring::Config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RingFile {
    timeouts: Option<Spanned<String>>,
    mtu: Option<Spanned<usize>>,
    packing: Option<bool>,
    personal_window: Option<u32>,
    window: Option<u32>,
    accelerated: Option<bool>,
    accelerated_window: Option<u32>,
    max_unstable: Option<u64>,
    token_retransmit_ms: Option<u64>,
    token_hold_ms: Option<u64>,
    token_idle_hold_ms: Option<u64>,
    token_timeout_ms: Option<u64>,
    join_interval_ms: Option<u64>,
    consensus_timeout_ms: Option<u64>,
    merge_interval_ms: Option<u64>,
    fail_to_receive_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathsFile {
    state_dir: Option<String>,
    client_socket: Option<String>,
}

/// One daemon of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its id in the ring.
    pub id: NodeId,
    /// Its name (as given to `ringfence daemon --name`).
    pub name: String,
    /// Its UDP address for daemon-to-daemon traffic.
    pub address: SocketAddr,
    /// Its public identity (`public_key`), required unless
    /// `link_security = "none"`.
    pub public_key: Option<PublicIdentity>,
}

/// Link security settings (`[security]`).
#[derive(Clone, Debug)]
pub struct Security {
    /// What links protect (`link_security`, default `encrypt`).
    pub mode: LinkMode,
    /// This daemon's secret key file (`identity`, `{name}` expands).
    pub identity: Option<PathBuf>,
    /// AES-GCM implementation (`aead`: `ring`, the default, or `aes-gcm`).
    pub aead: AeadBackend,
    /// Refresh the server key after this long (`refresh_interval_s`,
    /// default 3600).
    pub refresh_after: Option<Duration>,
    /// Refresh after this many payload bytes (`refresh_bytes`, default 2^36).
    pub refresh_bytes: Option<u64>,
}

/// How a datagram for all daemons is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One datagram per other daemon.
    Unicast,
    /// One datagram to an IPv4 multicast group; tokens and other messages
    /// to one daemon stay unicast.
    Multicast(Multicast),
}

/// The IP multicast settings of `transport = "multicast"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Multicast {
    /// The group address and port every daemon joins (`multicast_group`).
    pub group: SocketAddrV4,
    /// The interface (by its address) to join on and send from
    /// (`multicast_interface`; default: this daemon's own address).
    pub interface: Ipv4Addr,
    /// Hops a datagram may take (`multicast_ttl`, default 1: the LAN).
    pub ttl: u32,
    /// Whether this host's other sockets see our datagrams
    /// (`multicast_loop`, default true: needed for several daemons on one host).
    pub r#loop: bool,
}

/// Which core the ring thread is pinned to (`[daemon] ring_core`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CorePin {
    /// `"auto"` (the default): core `daemon id mod cores`, so daemons sharing
    /// a host spread over its cores; session threads take the other cores.
    #[default]
    Auto,
    /// `"none"`: no pinning; the scheduler places the threads.
    None,
    /// A core index.
    Core(usize),
}

/// Which socket I/O backend the ring thread uses (`[daemon] backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring if it can be set up here, else portable (the default).
    #[default]
    Auto,
    /// io_uring only: the daemon fails to start if it cannot be set up.
    IoUring,
    /// Blocking sockets with read timeouts.
    Portable,
}

/// A validated configuration for one daemon.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// This daemon.
    pub me: Peer,
    /// Every daemon of the cluster, this one included, by id.
    pub peers: Vec<Peer>,
    /// Transport.
    pub transport: Transport,
    /// Protocol tunables.
    pub ring: RingConfig,
    /// Where the daemon keeps what must survive a restart (its incarnation
    /// and highest ring sequence).
    pub state_dir: PathBuf,
    /// The Unix socket local clients connect to (default
    /// `<state_dir>/client.sock`).
    pub client_socket: PathBuf,
    /// A TCP address remote clients connect to (none by default). How they
    /// authenticate is [`Clients`]; without a `[clients]` section they are
    /// not authenticated at all (trusted networks only).
    pub client_tcp: Option<SocketAddr>,
    /// The ring thread's socket I/O backend (`[daemon] backend`).
    pub backend: BackendChoice,
    /// Where the ring thread runs (`[daemon] ring_core`).
    pub ring_core: CorePin,
    /// The OpenMetrics/Prometheus endpoint (`[daemon] metrics`, e.g.
    /// `"127.0.0.1:9464"`); off when absent.
    pub metrics: Option<SocketAddr>,
    /// Send runs of equal-size datagrams to one peer as one UDP GSO send
    /// (`[daemon] gso`, default true; used only where the kernel offers it).
    pub gso: bool,
    /// Let the kernel coalesce received datagrams (UDP GRO) and cut them
    /// apart in the backend (`[daemon] gro`, default true; likewise).
    pub gro: bool,
    /// Link security.
    pub security: Security,
    /// The client group policy (`[[group]]`): modes, access control, key
    /// refresh and expiry per group pattern.
    pub policy: ringfence_proto::security::policy::Policy,
    /// Client authentication over TCP (`[clients]`).
    pub clients: Clients,
}

/// How TCP clients authenticate (`[clients]`). Unix-socket clients are
/// always identified by their peer credentials.
#[derive(Clone, Debug, Default)]
pub struct Clients {
    /// The TLS server side of the TCP listener (`tls_cert`, `tls_key` and,
    /// if set, `client_ca` to verify client certificates), loaded and
    /// checked at startup; `None`: plain TCP only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether a client certificate can be verified (`client_ca` is set).
    pub verifies_certs: bool,
    /// Plain (non-TLS) TCP connections are refused (`require_tls`, default
    /// true when `tls_cert` is set).
    pub require_tls: bool,
    /// The pre-shared tokens (`[[clients.token]]`).
    pub tokens: Vec<ClientToken>,
    /// How many connections, and how much of their input, the daemon holds.
    pub caps: ClientCaps,
    /// Who may send operator requests (`ringfence ctl`, `monitor`): the
    /// principals and patterns of `[clients] admin` (as in `[[group]]`
    /// lists: `unix:0`, `cert:ops-*`, `token:monitor`, `*`). Empty (the
    /// default): local clients of the daemon's own user and root.
    pub admin: Vec<String>,
}

/// What client connections may cost (`[clients]` `max_clients`,
/// `max_unauthenticated`, `connection_buffer`, `buffer_budget`). A
/// connection over a cap gets `Refused { TooManyClients }` and is closed;
/// input is read only while it fits both buffer budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientCaps {
    /// Most authenticated clients at once (`max_clients`, default and most
    /// 4096).
    pub max_clients: usize,
    /// Most connections that have not said Hello yet, counted separately
    /// for TCP and for the Unix socket, so neither can lock out the other
    /// or the authenticated clients (`max_unauthenticated`, default 1024).
    pub max_unauthenticated: usize,
    /// Most undecoded input bytes one connection holds: one largest frame
    /// and the read that completes it (`connection_buffer`, default 2 MiB;
    /// at least the largest frame, 1 MiB + 64 KiB, plus its 4-byte prefix).
    pub connection_buffer: usize,
    /// Most undecoded input bytes all connections hold together
    /// (`buffer_budget`, default 64 MiB; at least `connection_buffer`).
    pub buffer_budget: usize,
}

impl ClientCaps {
    /// The LAN defaults.
    pub const DEFAULT: Self = Self {
        max_clients: 4096,
        max_unauthenticated: 1024,
        connection_buffer: 2 << 20,
        buffer_budget: 64 << 20,
    };
}

impl Default for ClientCaps {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Clients {
    /// Whether TCP clients need no authentication at all: no TLS, no token
    /// configured (a trusted network; the daemon warns at startup).
    pub fn open_tcp(&self) -> bool {
        self.tls.is_none() && self.tokens.is_empty() && !self.require_tls
    }
}

/// One pre-shared client token: a name and the SHA-256 of the token. The
/// token itself is never stored or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientToken {
    /// The client's name in policies (`token:<name>`).
    pub name: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientToken").field("name", &self.name).finish_non_exhaustive()
    }
}

fn line_of(text: &str, span: Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

/// Where one daemon of a cluster can be reached by clients and operators,
/// read from the cluster file without loading any key or certificate (what
/// `ringfence monitor` and `ringfence ctl` need, on any machine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: NodeId,
    /// Its UDP address for daemon-to-daemon traffic.
    pub address: SocketAddr,
    /// Its TCP client address (`client_tcp`), if any.
    pub client_tcp: Option<SocketAddr>,
    /// Its Unix client socket (`[paths] client_socket`, expanded), valid on
    /// its own machine.
    pub client_socket: PathBuf,
    /// Its state directory (`[paths] state_dir`, expanded).
    pub state_dir: PathBuf,
}

impl Endpoint {
    /// Whether its UDP address is one of this machine's: a loopback
    /// address, or one an interface has (no socket is bound to find out).
    pub fn is_local(&self) -> bool {
        let ip = self.address.ip();
        ip.is_loopback()
            || nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
                addrs.any(|a| {
                    a.address.as_ref().is_some_and(|s| {
                        s.as_sockaddr_in().is_some_and(|v4| std::net::IpAddr::V4(v4.ip()) == ip)
                            || s.as_sockaddr_in6().is_some_and(|v6| std::net::IpAddr::V6(v6.ip()) == ip)
                    })
                })
            })
    }
}

/// Every daemon of the cluster file `path`, by id, with where clients
/// reach it. Errors name the file, line and key.
pub fn endpoints(path: &Path) -> Result<Vec<Endpoint>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    let file: File = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        line: e.span().map_or(1, |s| line_of(&text, s)),
        message: e.message().to_string(),
    })?;
    let invalid = |span: Range<usize>, key: &str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line: line_of(&text, span),
        key: key.to_string(),
        message,
    };
    let mut out = Vec::new();
    for d in &file.cluster.daemon {
        let name = d.name.get_ref().clone();
        let address: SocketAddr = d.address.get_ref().parse().map_err(|e| {
            invalid(d.address.span(), "cluster.daemon.address", format!("not an IP:port address: {e}"))
        })?;
        let client_tcp = match &d.client_tcp {
            None => None,
            Some(a) => Some(a.get_ref().parse().map_err(|e| {
                invalid(a.span(), "cluster.daemon.client_tcp", format!("not an IP:port address: {e}"))
            })?),
        };
        let state_dir = file.paths.state_dir.as_deref().map_or_else(
            || std::env::temp_dir().join("ringfence").join(&name),
            |s| PathBuf::from(s.replace("{name}", &name)),
        );
        let client_socket = file
            .paths
            .client_socket
            .as_deref()
            .map_or_else(|| state_dir.join("client.sock"), |s| PathBuf::from(s.replace("{name}", &name)));
        out.push(Endpoint {
            name,
            id: NodeId(*d.id.get_ref()),
            address,
            client_tcp,
            client_socket,
            state_dir,
        });
    }
    if out.is_empty() {
        return Err(invalid(0..0, "cluster.daemon", "no [[cluster.daemon]] entry".into()));
    }
    out.sort_by_key(|e| e.id);
    Ok(out)
}

/// The one daemon of `path` whose address is on this machine, for
/// `--name` left out. An error (naming the candidates) when none or
/// several are.
pub fn local_daemon(path: &Path) -> Result<String, String> {
    let all = endpoints(path).map_err(|e| e.to_string())?;
    let local: Vec<&Endpoint> = all.iter().filter(|e| e.is_local()).collect();
    let list = |v: &[&Endpoint]| {
        v.iter().map(|e| format!("{} ({})", e.name, e.address)).collect::<Vec<_>>().join(", ")
    };
    match local.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => Err(format!(
            "{}: no [[cluster.daemon]] address is on this machine ({}); give `--name`, or fix the addresses",
            path.display(),
            list(&all.iter().collect::<Vec<_>>())
        )),
        many => Err(format!(
            "{}: {} daemons' addresses are on this machine ({}): say which one with `--name`",
            path.display(),
            many.len(),
            list(many)
        )),
    }
}

impl DaemonConfig {
    /// Reads `path` and selects the daemon called `name`.
    pub fn load(path: &Path, name: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Self::parse(path, &text, name)
    }

    /// Parses configuration text (`path` is only used in errors).
    pub fn parse(path: &Path, text: &str, name: &str) -> Result<Self, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: e.span().map_or(1, |s| line_of(text, s)),
            message: e.message().to_string(),
        })?;
        let invalid = |span: Range<usize>, key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, span),
            key: key.to_string(),
            message,
        };
        let c = &file.cluster;
        let transport = match c.transport.get_ref().as_str() {
            "unicast" => {
                if let Some(g) = &c.multicast_group {
                    return Err(invalid(
                        g.span(),
                        "cluster.multicast_group",
                        "set, but `cluster.transport` is \"unicast\"".into(),
                    ));
                }
                Transport::Unicast
            }
            "multicast" => {
                let group = c.multicast_group.as_ref().ok_or_else(|| {
                    invalid(
                        c.transport.span(),
                        "cluster.multicast_group",
                        "missing: transport \"multicast\" needs a group such as \"239.255.42.1:4810\"".into(),
                    )
                })?;
                let addr: SocketAddrV4 = group.get_ref().parse().map_err(|e| {
                    invalid(group.span(), "cluster.multicast_group", format!("not an IPv4 address:port: {e}"))
                })?;
                if !addr.ip().is_multicast() {
                    return Err(invalid(
                        group.span(),
                        "cluster.multicast_group",
                        format!("{} is not an IPv4 multicast address (224.0.0.0/4)", addr.ip()),
                    ));
                }
                let interface = match &c.multicast_interface {
                    None => None,
                    Some(i) => Some(i.get_ref().parse::<Ipv4Addr>().map_err(|e| {
                        invalid(i.span(), "cluster.multicast_interface", format!("not an IPv4 address: {e}"))
                    })?),
                };
                let ttl = c.multicast_ttl.as_ref().map_or(Ok(1), |t| {
                    if *t.get_ref() > 255 {
                        Err(invalid(t.span(), "cluster.multicast_ttl", "must be 0 to 255".into()))
                    } else {
                        Ok(*t.get_ref())
                    }
                })?;
                // The interface defaults to the daemon's own address, known below.
                Transport::Multicast(Multicast {
                    group: addr,
                    interface: interface.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    ttl,
                    r#loop: c.multicast_loop.unwrap_or(true),
                })
            }
            other => {
                return Err(invalid(
                    c.transport.span(),
                    "cluster.transport",
                    format!("`{other}` is not a transport (use \"unicast\" or \"multicast\")"),
                ));
            }
        };
        let mut peers: Vec<Peer> = Vec::new();
        for d in &file.cluster.daemon {
            let id = NodeId(*d.id.get_ref());
            if id == NodeId::NONE {
                return Err(invalid(d.id.span(), "cluster.daemon.id", "65535 is reserved".into()));
            }
            if peers.iter().any(|p| p.id == id) {
                return Err(invalid(d.id.span(), "cluster.daemon.id", format!("id {id} appears twice")));
            }
            let n = d.name.get_ref();
            if n.is_empty() || n.len() > 32 || peers.iter().any(|p| &p.name == n) {
                return Err(invalid(
                    d.name.span(),
                    "cluster.daemon.name",
                    format!("`{n}` must be 1 to 32 bytes and unique"),
                ));
            }
            let address: SocketAddr = d.address.get_ref().parse().map_err(|e| {
                invalid(d.address.span(), "cluster.daemon.address", format!("not an IP:port address: {e}"))
            })?;
            if peers.iter().any(|p| p.address == address) {
                return Err(invalid(
                    d.address.span(),
                    "cluster.daemon.address",
                    format!("{address} appears twice"),
                ));
            }
            let public_key = match &d.public_key {
                None => None,
                Some(k) => Some(k.get_ref().parse::<PublicIdentity>().map_err(|e| {
                    invalid(k.span(), "cluster.daemon.public_key", format!("not a public key: {e}"))
                })?),
            };
            peers.push(Peer { id, name: n.clone(), address, public_key });
        }
        peers.sort_by_key(|p| p.id);
        let me =
            peers.iter().find(|p| p.name == name).cloned().ok_or_else(|| ConfigError::UnknownDaemon {
                path: path.to_path_buf(),
                name: name.to_string(),
                known: peers.iter().map(|p| p.name.clone()).collect(),
            })?;
        if let Some(t) = file.ring.timeouts.as_ref().filter(|t| RingConfig::profile(t.get_ref()).is_none()) {
            return Err(invalid(
                t.span(),
                "ring.timeouts",
                format!("unknown timeout profile {:?}: use \"default\" or \"low-latency\"", t.get_ref()),
            ));
        }
        let ring = ring_config(&file.ring);
        if let Err(e) = ring.validate() {
            let span = file.ring.mtu.as_ref().filter(|_| e.field == "mtu").map_or(0..0, Spanned::span);
            return Err(invalid(span, &format!("ring.{}", e.field), e.reason.to_string()));
        }
        let state_dir = file.paths.state_dir.as_deref().map_or_else(
            || std::env::temp_dir().join("ringfence").join(&me.name),
            |s| PathBuf::from(s.replace("{name}", &me.name)),
        );
        let client_socket = file
            .paths
            .client_socket
            .as_deref()
            .map_or_else(|| state_dir.join("client.sock"), |s| PathBuf::from(s.replace("{name}", &me.name)));
        let mine = file.cluster.daemon.iter().find(|d| d.name.get_ref() == name);
        let client_tcp = match mine.and_then(|d| d.client_tcp.as_ref()) {
            None => None,
            Some(a) => Some(a.get_ref().parse().map_err(|e| {
                invalid(a.span(), "cluster.daemon.client_tcp", format!("not an IP:port address: {e}"))
            })?),
        };
        let backend = match file.daemon.backend.as_ref() {
            None => BackendChoice::Auto,
            Some(b) => match b.get_ref().as_str() {
                "auto" => BackendChoice::Auto,
                "io_uring" => BackendChoice::IoUring,
                "portable" => BackendChoice::Portable,
                other => {
                    return Err(invalid(
                        b.span(),
                        "daemon.backend",
                        format!("`{other}` is not a backend (use \"auto\", \"io_uring\" or \"portable\")"),
                    ));
                }
            },
        };
        let mut transport = transport;
        if let Transport::Multicast(m) = &mut transport {
            if m.interface.is_unspecified() {
                match me.address {
                    SocketAddr::V4(a) => m.interface = *a.ip(),
                    SocketAddr::V6(_) => {
                        return Err(invalid(
                            c.transport.span(),
                            "cluster.transport",
                            "multicast needs IPv4 daemon addresses (or set `multicast_interface`)".into(),
                        ));
                    }
                }
            }
        }
        let ring_core = match file.daemon.ring_core.as_ref() {
            None => CorePin::Auto,
            Some(v) => match v.get_ref() {
                toml::Value::String(s) if s == "auto" => CorePin::Auto,
                toml::Value::String(s) if s == "none" => CorePin::None,
                toml::Value::Integer(n) if (0..=4095).contains(n) => {
                    CorePin::Core(usize::try_from(*n).unwrap_or(0))
                }
                other => {
                    return Err(invalid(
                        v.span(),
                        "daemon.ring_core",
                        format!("`{other}` is not a core (use \"auto\", \"none\" or a core index)"),
                    ));
                }
            },
        };
        let (metrics, metrics_key) = match mine.and_then(|d| d.metrics.as_ref()) {
            Some(m) => (Some(m), "cluster.daemon.metrics"),
            None => (file.daemon.metrics.as_ref(), "daemon.metrics"),
        };
        let metrics = match metrics {
            None => None,
            Some(m) => Some(m.get_ref().parse::<SocketAddr>().map_err(|e| {
                invalid(
                    m.span(),
                    metrics_key,
                    format!("not an IP:port address ({e}); for example \"127.0.0.1:9464\""),
                )
            })?),
        };
        let security = security(&file, &peers, &me, &invalid)?;
        let policy = crate::policy_file::policy(&file.group, security.mode, &invalid)?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let clients = clients(&file.clients, base, &me.name, &invalid)?;
        Ok(Self {
            me,
            peers,
            transport,
            ring,
            state_dir,
            client_socket,
            client_tcp,
            backend,
            ring_core,
            metrics,
            gso: file.daemon.gso.unwrap_or(true),
            gro: file.daemon.gro.unwrap_or(true),
            security,
            policy,
            clients,
        })
    }
}

/// `[clients]`: certificates and keys are read and checked here, so a bad
/// file stops the daemon at startup with the key that names it.
fn clients(
    f: &ClientsFile,
    base: &Path,
    name: &str,
    invalid: &dyn Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<Clients, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let file = |s: &Spanned<String>| base.join(s.get_ref().replace("{name}", name));
    let certs = |s: &Spanned<String>, key: &str| -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let path = file(s);
        let certs =
            CertificateDer::pem_file_iter(&path).and_then(Iterator::collect::<Result<Vec<_>, _>>).map_err(
                |e| invalid(s.span(), key, format!("cannot read certificates from {}: {e}", path.display())),
            )?;
        if certs.is_empty() {
            return Err(invalid(s.span(), key, format!("no PEM certificate in {}", path.display())));
        }
        Ok(certs)
    };
    let mut tokens: Vec<ClientToken> = Vec::new();
    for t in &f.token {
        let name = t.name.get_ref();
        if name.is_empty() || name.len() > 32 || !name.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(invalid(
                t.name.span(),
                "clients.token.name",
                format!("`{name}` must be 1 to 32 printable ASCII bytes"),
            ));
        }
        if tokens.iter().any(|x| &x.name == name) {
            return Err(invalid(t.name.span(), "clients.token.name", format!("`{name}` appears twice")));
        }
        let sha256 = parse_sha256(t.sha256.get_ref()).ok_or_else(|| {
            invalid(
                t.sha256.span(),
                "clients.token.sha256",
                "must be 64 hex digits, the SHA-256 of the token (e.g. `printf %s TOKEN | sha256sum`)".into(),
            )
        })?;
        tokens.push(ClientToken { name: name.clone(), sha256 });
    }
    let tls = match (&f.tls_cert, &f.tls_key) {
        (None, None) => None,
        (Some(c), None) => {
            return Err(invalid(
                c.span(),
                "clients.tls_key",
                "missing: `tls_cert` needs its private key".into(),
            ));
        }
        (None, Some(k)) => {
            return Err(invalid(
                k.span(),
                "clients.tls_cert",
                "missing: `tls_key` needs its certificate".into(),
            ));
        }
        (Some(c), Some(k)) => {
            let chain = certs(c, "clients.tls_cert")?;
            let key_path = file(k);
            let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
                invalid(
                    k.span(),
                    "clients.tls_key",
                    format!("cannot read a private key from {}: {e}", key_path.display()),
                )
            })?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid(c.span(), "clients.tls_cert", format!("TLS setup: {e}")))?;
            let builder = match &f.client_ca {
                None => builder.with_no_client_auth(),
                Some(ca) => {
                    let mut roots = rustls::RootCertStore::empty();
                    for cert in certs(ca, "clients.client_ca")? {
                        roots.add(cert).map_err(|e| {
                            invalid(
                                ca.span(),
                                "clients.client_ca",
                                format!("not a usable CA certificate: {e}"),
                            )
                        })?;
                    }
                    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| invalid(ca.span(), "clients.client_ca", format!("{e}")))?;
                    builder.with_client_cert_verifier(verifier)
                }
            };
            let config = builder.with_single_cert(chain, key).map_err(|e| {
                invalid(k.span(), "clients.tls_key", format!("does not fit `tls_cert`, or unusable: {e}"))
            })?;
            Some(Arc::new(config))
        }
    };
    if tls.is_none() {
        if let Some(ca) = &f.client_ca {
            return Err(invalid(
                ca.span(),
                "clients.client_ca",
                "set, but `tls_cert` is not: no TLS to verify in".into(),
            ));
        }
    }
    let require_tls = match &f.require_tls {
        None => tls.is_some(),
        Some(r) if *r.get_ref() && tls.is_none() => {
            return Err(invalid(
                r.span(),
                "clients.require_tls",
                "true, but `tls_cert` and `tls_key` are not set".into(),
            ));
        }
        Some(r) => *r.get_ref(),
    };
    let caps = caps(f, invalid)?;
    let admin = match &f.admin {
        None => Vec::new(),
        Some(list) => {
            for p in list.get_ref() {
                let star = p.find('*');
                if p.is_empty() || star.is_some_and(|i| i + 1 != p.len()) {
                    return Err(invalid(
                        list.span(),
                        "clients.admin",
                        format!(
                            "`{p}` is not a principal or a prefix ending in `*` (e.g. \"unix:0\", \"cert:ops-*\")"
                        ),
                    ));
                }
            }
            list.get_ref().clone()
        }
    };
    Ok(Clients {
        verifies_certs: tls.is_some() && f.client_ca.is_some(),
        tls,
        require_tls,
        tokens,
        caps,
        admin,
    })
}

/// `[clients]` caps and budgets, checked against each other and the frame
/// limit.
fn caps(
    f: &ClientsFile,
    invalid: &dyn Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<ClientCaps, ConfigError> {
    let d = ClientCaps::DEFAULT;
    let value = |v: &Option<Spanned<usize>>, key: &str, default: usize| match v {
        Some(v) if *v.get_ref() == 0 => Err(invalid(v.span(), key, "must be at least 1".into())),
        Some(v) => Ok(*v.get_ref()),
        None => Ok(default),
    };
    let caps = ClientCaps {
        max_clients: value(&f.max_clients, "clients.max_clients", d.max_clients)?,
        max_unauthenticated: value(
            &f.max_unauthenticated,
            "clients.max_unauthenticated",
            d.max_unauthenticated,
        )?,
        connection_buffer: value(&f.connection_buffer, "clients.connection_buffer", d.connection_buffer)?,
        buffer_budget: value(&f.buffer_budget, "clients.buffer_budget", d.buffer_budget)?,
    };
    let most = ringfence_proto::groups::Limits::default().max_clients;
    if caps.max_clients > most {
        let span = f.max_clients.as_ref().map_or(0..0, Spanned::span);
        return Err(invalid(
            span,
            "clients.max_clients",
            format!("{} is more than a daemon's groups track ({most})", caps.max_clients),
        ));
    }
    let frame = ringfence_proto::wire::client::Limits::DEFAULT.max_frame_len as usize + 4;
    if caps.connection_buffer < frame {
        let span = f.connection_buffer.as_ref().map_or(0..0, Spanned::span);
        return Err(invalid(
            span,
            "clients.connection_buffer",
            format!(
                "{} bytes cannot hold the largest frame ({frame} bytes with its prefix)",
                caps.connection_buffer
            ),
        ));
    }
    if caps.buffer_budget < caps.connection_buffer {
        let span = f.buffer_budget.as_ref().or(f.connection_buffer.as_ref()).map_or(0..0, Spanned::span);
        return Err(invalid(
            span,
            "clients.buffer_budget",
            format!(
                "{} bytes is less than `connection_buffer` ({} bytes): one connection could not finish a frame",
                caps.buffer_budget, caps.connection_buffer
            ),
        ));
    }
    Ok(caps)
}

/// 64 hex digits as 32 bytes.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *o = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

fn security(
    file: &File,
    peers: &[Peer],
    me: &Peer,
    invalid: &dyn Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<Security, ConfigError> {
    let f = &file.security;
    let mode = match &f.link_security {
        None => LinkMode::Encrypt,
        Some(m) => m.get_ref().parse().map_err(|e| invalid(m.span(), "security.link_security", e))?,
    };
    let aead = match &f.aead {
        None => AeadBackend::Ring,
        Some(a) => a.get_ref().parse().map_err(|e: UnknownBackend| {
            invalid(a.span(), "security.aead", format!("{e} (use \"ring\" or \"aes-gcm\")"))
        })?,
    };
    let identity = f.identity.as_ref().map(|i| PathBuf::from(i.get_ref().replace("{name}", &me.name)));
    if mode != LinkMode::None {
        let span = f.link_security.as_ref().map_or(0..0, Spanned::span);
        if identity.is_none() {
            return Err(invalid(
                span,
                "security.identity",
                format!(
                    "missing: link_security \"{}\" needs this daemon's secret key file \
                     (make one with `ringfence keygen daemon {}`), or set link_security = \"none\"",
                    mode.name(),
                    me.name
                ),
            ));
        }
        if let Some((p, d)) = peers
            .iter()
            .filter(|p| p.public_key.is_none())
            .filter_map(|p| file.cluster.daemon.iter().find(|d| *d.name.get_ref() == p.name).map(|d| (p, d)))
            .next()
        {
            return Err(invalid(
                d.name.span(),
                "cluster.daemon.public_key",
                format!(
                    "missing for daemon `{}`: link_security \"{}\" needs every daemon's public key",
                    p.name,
                    mode.name()
                ),
            ));
        }
    }
    Ok(Security {
        mode,
        identity,
        aead,
        refresh_after: Some(Duration::from_secs(f.refresh_interval_s.unwrap_or(3600).max(1))),
        refresh_bytes: Some(f.refresh_bytes.unwrap_or(1 << 36).max(1 << 20)),
    })
}

fn ring_config(f: &RingFile) -> RingConfig {
    let d = f.timeouts.as_ref().and_then(|t| RingConfig::profile(t.get_ref())).unwrap_or_default();
    let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
    RingConfig {
        mtu: f.mtu.as_ref().map_or(d.mtu, |m| *m.get_ref()),
        packing: f.packing.unwrap_or(d.packing),
        personal_window: f.personal_window.unwrap_or(d.personal_window),
        window: f.window.unwrap_or(d.window),
        accelerated: f.accelerated.unwrap_or(d.accelerated),
        accelerated_window: f.accelerated_window.unwrap_or(d.accelerated_window),
        max_unstable: f.max_unstable.unwrap_or(d.max_unstable),
        token_retransmit: ms(f.token_retransmit_ms, d.token_retransmit),
        token_hold: ms(f.token_hold_ms, d.token_hold),
        token_idle_hold: ms(f.token_idle_hold_ms, d.token_idle_hold),
        token_timeout: ms(f.token_timeout_ms, d.token_timeout),
        join_interval: ms(f.join_interval_ms, d.join_interval),
        consensus_timeout: ms(f.consensus_timeout_ms, d.consensus_timeout),
        merge_interval: ms(f.merge_interval_ms, d.merge_interval),
        fail_to_receive: ms(f.fail_to_receive_ms, d.fail_to_receive),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
transport = "unicast"

[[cluster.daemon]]
id = 0
name = "a"
address = "127.0.0.1:4800"

[[cluster.daemon]]
id = 1
name = "b"
address = "127.0.0.1:4801"

[ring]
token_timeout_ms = 500

[security]
link_security = "none"
"#;

    #[test]
    fn a_good_file_loads() {
        let c = DaemonConfig::parse(Path::new("x.toml"), GOOD, "b").unwrap();
        assert_eq!(c.me.id, NodeId(1));
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.ring.token_timeout, Duration::from_millis(500));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = GOOD.replace("127.0.0.1:4801", "127.0.0.1:99999");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:13: key `cluster.daemon.address`"), "{e}");

        let bad = GOOD.replace("token_timeout_ms", "token_timout_ms");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:16:") && e.contains("token_timout_ms"), "{e}");

        let bad = GOOD.replace("id = 1", "id = 0");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:11: key `cluster.daemon.id`"), "{e}");

        let e = DaemonConfig::parse(Path::new("x.toml"), GOOD, "zz").unwrap_err().to_string();
        assert!(e.contains("no daemon named `zz`"), "{e}");

        let bad = GOOD.replace("token_timeout_ms = 500", "token_timeout_ms = 1");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.contains("ring.token_timeout"), "{e}");

        let bad = format!("{GOOD}\n[daemon]\nbackend = \"epoll\"\n");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:22: key `daemon.backend`") && e.contains("epoll"), "{e}");

        let bad = format!("{GOOD}\n[daemon]\nbackend = 3\n");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:22:") && e.contains("string"), "{e}");
    }

    #[test]
    fn the_low_latency_profile_sets_the_timeouts_and_keys_still_override() {
        let text = GOOD.replace("[ring]\n", "[ring]\ntimeouts = \"low-latency\"\n");
        let c = DaemonConfig::parse(Path::new("x.toml"), &text, "a").unwrap();
        let low = RingConfig::low_latency();
        assert_eq!(c.ring.token_timeout, Duration::from_millis(500), "an explicit key wins");
        assert_eq!(c.ring.consensus_timeout, low.consensus_timeout);
        assert_eq!(c.ring.fail_to_receive, low.fail_to_receive);
        assert!(low.consensus_timeout < RingConfig::default().consensus_timeout);

        let bad = GOOD.replace("[ring]\n", "[ring]\ntimeouts = \"fast\"\n");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:16: key `ring.timeouts`") && e.contains("low-latency"), "{e}");
    }

    #[test]
    fn gso_and_gro_are_on_unless_turned_off() {
        let c = DaemonConfig::parse(Path::new("x.toml"), GOOD, "a").unwrap();
        assert!(c.gso && c.gro);
        let file = format!("{GOOD}\n[daemon]\ngso = false\n");
        let c = DaemonConfig::parse(Path::new("x.toml"), &file, "a").unwrap();
        assert!(!c.gso && c.gro);
        let file = format!("{GOOD}\n[daemon]\ngso = true\ngro = false\n");
        let c = DaemonConfig::parse(Path::new("x.toml"), &file, "a").unwrap();
        assert!(c.gso && !c.gro);
        let file = format!("{GOOD}\n[daemon]\ngso = \"no\"\n");
        let e = DaemonConfig::parse(Path::new("x.toml"), &file, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:22:") && e.contains("boolean"), "{e}");
    }

    #[test]
    fn the_backend_is_chosen_by_config() {
        let c = DaemonConfig::parse(Path::new("x.toml"), GOOD, "a").unwrap();
        assert_eq!(c.backend, BackendChoice::Auto);
        for (text, want) in [
            ("auto", BackendChoice::Auto),
            ("io_uring", BackendChoice::IoUring),
            ("portable", BackendChoice::Portable),
        ] {
            let file = format!("{GOOD}\n[daemon]\nbackend = \"{text}\"\n");
            let c = DaemonConfig::parse(Path::new("x.toml"), &file, "a").unwrap();
            assert_eq!(c.backend, want);
        }
    }

    #[test]
    fn multicast_transport_and_its_errors() {
        let mc = GOOD.replace(
            "transport = \"unicast\"",
            "transport = \"multicast\"\nmulticast_group = \"239.255.42.1:4810\"\nmulticast_ttl = 0",
        );
        let c = DaemonConfig::parse(Path::new("x.toml"), &mc, "a").unwrap();
        let Transport::Multicast(m) = c.transport else { panic!("not multicast: {:?}", c.transport) };
        assert_eq!(m.group, "239.255.42.1:4810".parse().unwrap());
        assert_eq!(m.interface, Ipv4Addr::LOCALHOST, "defaults to the daemon's own address");
        assert_eq!((m.ttl, m.r#loop), (0, true));

        let bad = mc.replace("239.255.42.1:4810", "10.0.0.1:4810");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:4: key `cluster.multicast_group`") && e.contains("multicast"), "{e}");

        let bad = mc.replace("multicast_group = \"239.255.42.1:4810\"\n", "");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:3: key `cluster.multicast_group`") && e.contains("missing"), "{e}");

        let bad = mc.replace("multicast_ttl = 0", "multicast_ttl = 300");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:5: key `cluster.multicast_ttl`"), "{e}");

        let bad = GOOD.replace("transport = \"unicast\"", "transport = \"broadcast\"");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:3: key `cluster.transport`") && e.contains("broadcast"), "{e}");
    }

    #[test]
    fn metrics_are_off_by_default_and_per_daemon_addresses_win() {
        let c = DaemonConfig::parse(Path::new("x.toml"), GOOD, "a").unwrap();
        assert_eq!(c.metrics, None);
        let file = format!("{GOOD}\n[daemon]\nmetrics = \"127.0.0.1:9464\"\n");
        let c = DaemonConfig::parse(Path::new("x.toml"), &file, "a").unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        let file = file.replace("name = \"b\"\n", "name = \"b\"\nmetrics = \"127.0.0.1:9465\"\n");
        let c = DaemonConfig::parse(Path::new("x.toml"), &file, "b").unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9465".parse().unwrap()));
        let bad = format!("{GOOD}\n[daemon]\nmetrics = \"9464\"\n");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:22: key `daemon.metrics`") && e.contains("127.0.0.1:9464"), "{e}");
    }

    #[test]
    fn admin_principals_are_patterns() {
        let file = format!("{GOOD}\n[clients]\nadmin = [\"unix:0\", \"cert:ops-*\"]\n");
        let c = DaemonConfig::parse(Path::new("x.toml"), &file, "a").unwrap();
        assert_eq!(c.clients.admin, ["unix:0", "cert:ops-*"]);
        let bad = format!("{GOOD}\n[clients]\nadmin = [\"cert:*ops\"]\n");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.contains("key `clients.admin`") && e.contains("cert:*ops"), "{e}");
    }

    #[test]
    fn an_unknown_name_lists_the_names() {
        let e = DaemonConfig::parse(Path::new("x.toml"), GOOD, "d9").unwrap_err().to_string();
        assert!(e.contains("`d9`") && e.contains("the names are: a, b") && e.contains("--name"), "{e}");
    }

    #[test]
    fn endpoints_need_no_keys() {
        let dir = std::env::temp_dir().join(format!("rf-endpoints-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let text = GOOD.replace("name = \"b\"\n", "name = \"b\"\nclient_tcp = \"127.0.0.1:4900\"\n")
            + "[paths]\nstate_dir = \"/run/rf/{name}\"\n";
        std::fs::write(&path, text).unwrap();
        let e = endpoints(&path).unwrap();
        assert_eq!(e.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(e[1].client_tcp, Some("127.0.0.1:4900".parse().unwrap()));
        assert_eq!(e[0].client_socket, Path::new("/run/rf/a/client.sock"));
        // Both addresses are on this machine: `--name` cannot be left out.
        let err = local_daemon(&path).unwrap_err();
        assert!(err.contains("2 daemons") && err.contains("--name"), "{err}");
        std::fs::write(&path, GOOD.replace("127.0.0.1:4801", "192.0.2.1:4801")).unwrap();
        assert_eq!(local_daemon(&path).unwrap(), "a");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_ring_core_is_chosen_by_config() {
        let c = DaemonConfig::parse(Path::new("x.toml"), GOOD, "a").unwrap();
        assert_eq!(c.ring_core, CorePin::Auto);
        for (text, want) in
            [("\"auto\"", CorePin::Auto), ("\"none\"", CorePin::None), ("3", CorePin::Core(3))]
        {
            let file = format!("{GOOD}\n[daemon]\nring_core = {text}\n");
            assert_eq!(DaemonConfig::parse(Path::new("x.toml"), &file, "a").unwrap().ring_core, want);
        }
        let bad = format!("{GOOD}\n[daemon]\nring_core = \"fast\"\n");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:22: key `daemon.ring_core`"), "{e}");
    }

    #[test]
    fn link_security_defaults_to_encrypt_and_needs_keys() {
        let secure = GOOD.replace("link_security = \"none\"", "");
        let e = DaemonConfig::parse(Path::new("x.toml"), &secure, "a").unwrap_err().to_string();
        assert!(e.contains("key `security.identity`") && e.contains("ringfence keygen daemon a"), "{e}");

        let secure = GOOD.replace("link_security = \"none\"", "identity = \"/keys/{name}.key\"");
        let e = DaemonConfig::parse(Path::new("x.toml"), &secure, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:7: key `cluster.daemon.public_key`") && e.contains("`a`"), "{e}");

        let key = "ringfence-daemon-pub";
        let with_keys = secure
            .replace("name = \"a\"", &format!("name = \"a\"\npublic_key = \"{}\"", "ab".repeat(32)))
            .replace("name = \"b\"", &format!("name = \"b\"\npublic_key = \"{key}\""));
        let e = DaemonConfig::parse(Path::new("x.toml"), &with_keys, "a").unwrap_err().to_string();
        assert!(e.contains("key `cluster.daemon.public_key`") && e.contains("not a public key"), "{e}");

        let bad = GOOD.replace("link_security = \"none\"", "link_security = \"plaintext\"");
        let e = DaemonConfig::parse(Path::new("x.toml"), &bad, "a").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:19: key `security.link_security`") && e.contains("plaintext"), "{e}");

        let c = DaemonConfig::parse(Path::new("x.toml"), GOOD, "a").unwrap();
        assert_eq!(c.security.mode, LinkMode::None);
    }

    #[test]
    fn client_caps_default_and_are_checked() {
        let parse = |extra: &str| {
            let text = format!("{GOOD}\n[clients]\n{extra}");
            DaemonConfig::parse(Path::new("x.toml"), &text, "a").map(|c| c.clients.caps)
        };
        assert_eq!(parse("").unwrap(), ClientCaps::DEFAULT);
        let c = parse("max_clients = 3\nmax_unauthenticated = 4\nbuffer_budget = 8388608\n").unwrap();
        assert_eq!(
            c,
            ClientCaps {
                max_clients: 3,
                max_unauthenticated: 4,
                buffer_budget: 8 << 20,
                ..ClientCaps::DEFAULT
            }
        );
        let e = parse("max_unauthenticated = 0\n").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml:22: key `clients.max_unauthenticated`") && e.contains("at least 1"),
            "{e}"
        );
        let e = parse("max_clients = 5000\n").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:22: key `clients.max_clients`") && e.contains("4096"), "{e}");
        let e = parse("\nconnection_buffer = 65536\n").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml:23: key `clients.connection_buffer`") && e.contains("largest frame"),
            "{e}"
        );
        let e = parse("buffer_budget = 1048576\n").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml:22: key `clients.buffer_budget`") && e.contains("connection_buffer"),
            "{e}"
        );
    }

    #[test]
    fn client_auth_errors_name_file_line_and_key() {
        let parse = |extra: &str| {
            let text = format!("{GOOD}\n[clients]\n{extra}");
            DaemonConfig::parse(Path::new("/nowhere/x.toml"), &text, "a").map(|c| c.clients)
        };
        let err = |extra: &str| parse(extra).unwrap_err().to_string();
        // Lines: GOOD ends on line 20, then a blank line and `[clients]`.
        let e = err("tls_cert = \"d.crt\"\n");
        assert!(e.starts_with("/nowhere/x.toml:22: key `clients.tls_key`") && e.contains("missing"), "{e}");
        let e = err("tls_key = \"d.key\"\n");
        assert!(e.starts_with("/nowhere/x.toml:22: key `clients.tls_cert`"), "{e}");
        // Paths are relative to the config file's directory.
        let e = err("tls_cert = \"d.crt\"\ntls_key = \"d.key\"\n");
        assert!(
            e.starts_with("/nowhere/x.toml:22: key `clients.tls_cert`") && e.contains("/nowhere/d.crt"),
            "{e}"
        );
        let e = err("client_ca = \"ca.crt\"\n");
        assert!(
            e.starts_with("/nowhere/x.toml:22: key `clients.client_ca`") && e.contains("tls_cert"),
            "{e}"
        );
        let e = err("require_tls = true\n");
        assert!(e.starts_with("/nowhere/x.toml:22: key `clients.require_tls`"), "{e}");
        let e = err("[[clients.token]]\nname = \"bob\"\nsha256 = \"abc\"\n");
        assert!(
            e.starts_with("/nowhere/x.toml:24: key `clients.token.sha256`") && e.contains("64 hex"),
            "{e}"
        );
        let hex = "0f".repeat(32);
        let two = format!("[[clients.token]]\nname = \"bob\"\nsha256 = \"{hex}\"\n").repeat(2);
        let e = err(&two);
        assert!(e.starts_with("/nowhere/x.toml:26: key `clients.token.name`") && e.contains("twice"), "{e}");
        let e = err("[[clients.token]]\nname = \"b b\"\nsha256 = \"{hex}\"\n");
        assert!(e.contains("key `clients.token.name`"), "{e}");
        let e = err("tls = true\n");
        assert!(e.starts_with("/nowhere/x.toml:22:") && e.contains("tls"), "{e}");

        // A file that is not PEM.
        let dir = std::env::temp_dir().join(format!("rf-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("junk.crt"), "not a certificate").unwrap();
        let text = format!("{GOOD}\n[clients]\ntls_cert = \"junk.crt\"\ntls_key = \"junk.crt\"\n");
        let e = DaemonConfig::parse(&dir.join("x.toml"), &text, "a").unwrap_err().to_string();
        assert!(e.contains(":22: key `clients.tls_cert`") && e.contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);

        // Tokens alone: plain TCP allowed, TLS not required.
        let c = parse(&format!("[[clients.token]]\nname = \"bob\"\nsha256 = \"{hex}\"\n")).unwrap();
        assert_eq!((c.require_tls, c.tokens.len(), c.open_tcp()), (false, 1, false));
        assert_eq!(c.tokens[0].sha256, [0x0f; 32]);
        assert!(!format!("{:?}", c.tokens[0]).contains("0f"), "Debug hides the hash");
        // No section: TCP is open (trusted networks).
        assert!(DaemonConfig::parse(Path::new("x.toml"), GOOD, "a").unwrap().clients.open_tcp());
    }

    #[test]
    fn the_group_policy_is_read_and_checked() {
        use ringfence_proto::groups::GroupMode;
        use ringfence_proto::security::policy::Action;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut text = std::fs::read_to_string(dir.join("secure-groups.toml")).unwrap();
        for i in 0..3u8 {
            let key =
                ringfence_crypto::identity::SecretIdentity::from_bytes(&[i + 1; 32]).public().to_string();
            text = text.replace(&format!("REPLACE-with-the-output-of-ringfence-keygen-daemon-d{i}"), &key);
        }
        let c = DaemonConfig::parse(Path::new("secure-groups.toml"), &text, "d1").unwrap();
        let p = &c.policy;
        assert_eq!(p.rules().len(), 3);
        assert_eq!(p.rule(b"trading.eu").mode, GroupMode::IntegratedVs);
        assert_eq!(p.rule(b"trading.eu").rekey_interval, Some(Duration::from_secs(3600)));
        assert_eq!(p.rule(b"telemetry.cpu").key_out, 4);
        assert_eq!(p.rule(b"ops.x").mode, GroupMode::ThreeStep);
        assert_eq!(p.rule(b"other").mode, GroupMode::None);
        assert!(p.allows("cert:desk-7", Action::Join, b"trading.eu"));
        assert!(!p.allows("token:bob", Action::Join, b"trading.eu"));
        assert!(p.allows("unix:0", Action::SendNonMember, b"telemetry.cpu"));

        // Errors name the file, line and key.
        let err = |extra: &str| {
            let text = format!("{GOOD}{extra}");
            DaemonConfig::parse(Path::new("/p.toml"), &text, "a").unwrap_err().to_string()
        };
        let e = err("\n[[group]]\npattern = \"a*b\"\n");
        assert!(e.contains("key `group.pattern`") && e.contains("a*b"), "{e}");
        let e = err("\n[[group]]\npattern = \"a\"\nmode = \"secret\"\n");
        assert!(e.contains("key `group.mode`") && e.contains("unknown group mode"), "{e}");
        let e = err("\n[[group]]\npattern = \"a\"\nmode = \"integrated-vs\"\n");
        assert!(e.starts_with("/p.toml:23: key `group.mode`") && e.contains("encrypt"), "{e}");
        let e = err("\n[[group]]\npattern = \"a\"\nkey_out = 0\n");
        assert!(e.contains("key `group.key_out`"), "{e}");
        let e = err("\n[[group]]\npattern = \"a\"\njoin = [\"x*y\"]\n");
        assert!(e.contains("key `group.join`"), "{e}");
        let e = err("\n[[group]]\npattern = \"a\"\ncolour = 1\n");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn the_example_configs_say_what_they_mean() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let local = DaemonConfig::load(&dir.join("local3.toml"), "d1").unwrap();
        assert_eq!((local.peers.len(), local.security.mode), (3, LinkMode::None));
        // The LAN example needs real keys first, and says where.
        let e = DaemonConfig::load(&dir.join("lan3.toml"), "alpha").unwrap_err().to_string();
        assert!(e.contains("lan3.toml:") && e.contains("cluster.daemon.public_key"), "{e}");
        // The TLS example needs its certificates first (`{name}` expands,
        // relative to the file's directory).
        let e = DaemonConfig::load(&dir.join("tls3.toml"), "d1").unwrap_err().to_string();
        assert!(e.contains("key `clients.tls_cert`") && e.contains("examples/certs/d1.crt"), "{e}");
    }
}
