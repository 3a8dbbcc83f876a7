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
//! This is the portable backend (blocking socket with a read timeout). The
//! io_uring backend, session threads and client connections join with the
//! daemon issue; see `docs/status.md`.

pub mod config;
mod daemon;
mod session;
mod state;

pub use config::{ConfigError, DaemonConfig, Peer, Transport};
pub use daemon::{Daemon, DaemonStats};
