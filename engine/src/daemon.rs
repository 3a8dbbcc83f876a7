//! The ring thread on the portable backend.

use crate::config::DaemonConfig;
use crate::state::State;
use bytes::Bytes;
use ringfence_proto::ring::{ConfigKind, Dest, Event};
use ringfence_proto::{Node, NodeId, Time};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Socket buffer sizes asked of the kernel.
const SOCKET_BUFFER: usize = 4 << 20;
/// Longest sleep in one wait, so a stop request is seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// Counters of the runtime (the protocol's own are in `Node::stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// Datagrams from addresses that are not daemons of the cluster (dropped).
    pub unknown_sources: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Sends that failed (the datagram is lost; the protocol recovers).
    pub send_errors: u64,
    /// Datagrams received.
    pub received: u64,
}

/// A running daemon: the protocol core, its socket and its clock.
#[derive(Debug)]
pub struct Daemon {
    cfg: DaemonConfig,
    node: Node,
    socket: UdpSocket,
    start: Instant,
    state: State,
    stats: DaemonStats,
    buf: Vec<u8>,
}

impl Daemon {
    /// Binds the daemon's socket and starts its protocol core (gathering).
    pub fn bind(cfg: DaemonConfig) -> io::Result<Self> {
        let addr = cfg.me.address;
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        // Best effort: the kernel may cap these.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        socket.bind(&addr.into())?;
        let socket: UdpSocket = socket.into();
        let state = State::start(&cfg.state_dir)?;
        let start = Instant::now();
        let node = Node::new(cfg.ring.clone(), cfg.me.id, Time::ZERO, state.incarnation())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        info!(
            daemon = %cfg.me.name,
            id = cfg.me.id.0,
            address = %addr,
            incarnation = state.incarnation,
            backend = "portable",
            "daemon started"
        );
        Ok(Self { cfg, node, socket, start, state, stats: DaemonStats::default(), buf: vec![0u8; 65_536] })
    }

    /// The protocol core.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Runtime counters.
    pub fn stats(&self) -> &DaemonStats {
        &self.stats
    }

    fn now(&self) -> Time {
        Time::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn peer_of(&self, from: SocketAddr) -> Option<NodeId> {
        self.cfg.peers.iter().find(|p| p.address == from).map(|p| p.id)
    }

    /// Runs until `stop` is set.
    pub fn run(&mut self, stop: &Arc<AtomicBool>) -> io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            self.flush();
            let now = self.now();
            let wait = self.node.poll_timeout().map_or(MAX_WAIT, |d| d.saturating_since(now)).min(MAX_WAIT);
            if wait.is_zero() {
                self.node.handle_timeout(now);
                continue;
            }
            self.socket.set_read_timeout(Some(wait))?;
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, from)) => self.receive(n, from),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => warn!(error = %e, "receive failed"),
            }
            // Take whatever else is queued without waiting.
            self.socket.set_nonblocking(true)?;
            for _ in 0..256 {
                match self.socket.recv_from(&mut self.buf) {
                    Ok((n, from)) => self.receive(n, from),
                    Err(_) => break,
                }
            }
            self.socket.set_nonblocking(false)?;
            let now = self.now();
            if self.node.poll_timeout().is_some_and(|d| d <= now) {
                self.node.handle_timeout(now);
            }
        }
        info!(daemon = %self.cfg.me.name, "daemon stopped");
        Ok(())
    }

    fn receive(&mut self, n: usize, from: SocketAddr) {
        self.stats.received += 1;
        if self.peer_of(from).is_none() {
            self.stats.unknown_sources += 1;
            return;
        }
        let now = self.now();
        self.node.handle_datagram(now, Bytes::copy_from_slice(&self.buf[..n]));
    }

    /// Sends what the core produced and logs what it delivered.
    fn flush(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            match t.dest {
                Dest::All => {
                    for p in &self.cfg.peers {
                        if p.id != self.cfg.me.id {
                            Self::send(&self.socket, &mut self.stats, &t.bytes, p.address);
                        }
                    }
                }
                Dest::Node(id) => {
                    if let Some(p) = self.cfg.peers.iter().find(|p| p.id == id) {
                        Self::send(&self.socket, &mut self.stats, &t.bytes, p.address);
                    }
                }
            }
        }
        while let Some(ev) = self.node.poll_event() {
            if let Event::Configuration(c) = ev {
                let members: Vec<u16> = c.members.iter().map(|m| m.0).collect();
                let kind = match c.kind {
                    ConfigKind::Regular => "regular",
                    ConfigKind::Transitional => "transitional",
                };
                info!(daemon = %self.cfg.me.name, ring = %c.ring_id, ?members, "{kind} configuration");
                if let Err(e) = self.state.set_ring_seq(c.ring_id.seq.max(self.node.max_ring_seq())) {
                    warn!(error = %e, "could not persist the ring sequence");
                }
            }
        }
    }

    fn send(socket: &UdpSocket, stats: &mut DaemonStats, bytes: &[u8], to: SocketAddr) {
        match socket.send_to(bytes, to) {
            Ok(_) => stats.sent += 1,
            Err(_) => stats.send_errors += 1,
        }
    }
}
