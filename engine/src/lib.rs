//! `ringfence-engine`: the daemon runtime.
//!
//! It owns what the sans-IO core must not: the configuration file, the UDP
//! sockets, real time and the state that survives a restart. It drives one
//! [`ringfence_proto::Node`] exactly as the simulator does.
//!
//! ```text
//!  UDP socket ──recv──► Node::handle_datagram ──► poll_transmit ──send──► peers
//!      ▲                    │ poll_timeout ──► read timeout / handle_timeout
//!      │                    ▼ poll_event
//!   peers              configurations (logged, persisted), deliveries
//! ```
//!
//! The ring thread's socket I/O runs on one of two backends chosen by
//! `[daemon] backend`: io_uring (batched sends, multishot receive into a
//! provided-buffer ring) or portable (poll(2), `recvmmsg`, `sendmmsg`);
//! `auto` tries io_uring and falls back. Both send runs of equal-size
//! datagrams as one UDP GSO send and cut GRO-coalesced receives apart where
//! the kernel offers it (`[daemon] gso`, `gro`). See `backend`, `uring` and
//! `udp`.

mod backend;
pub mod config;
mod daemon;
mod metrics;
mod notify;
mod policy_file;
mod session;
mod state;
mod udp;
mod uring;

pub use config::{
    BackendChoice, ClientCaps, ClientToken, Clients, ConfigError, CorePin, DaemonConfig, Endpoint, Multicast,
    Peer, Transport, endpoints, local_daemon,
};
pub use daemon::{Daemon, DaemonStats};
pub use uring::available as io_uring_available;
