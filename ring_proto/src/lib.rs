//! `ringfence-proto`: the sans-IO protocol core of ringfence.
//!
//! This crate decides everything and performs no I/O. It holds the wire
//! formats, the token-ring ordering state machine and the deterministic
//! simulator that judges it. It has no sockets, threads, clocks, global RNG or
//! logging sinks: time comes in as a [`Time`] parameter, randomness from a
//! seeded RNG the caller owns, and bytes go in and out through method calls.
//!
//! ```text
//!   submit(msg) ──► pending queue ──► token visit: pack into frames ──► poll_transmit()
//!                                                                          │  (wire)
//!   poll_event() ◄── deliver agreed/safe ◄── order by seq ◄── handle_datagram(now, from, bytes)
//!   poll_timeout() / handle_timeout(now): token retransmission
//! ```
//!
//! What it is not: a runtime. The daemon (`ringfence-engine`) owns sockets and
//! real time and drives a [`Node`] exactly the way [`sim`] does.
//!
//! Modules:
//! - [`wire`]: every wire format, daemon to daemon and client to daemon;
//!   total decoders.
//! - [`ring`]: ordering within one ring (token rules, flow control, packing,
//!   delivery); [`Node`] adds membership and Extended Virtual Synchrony.
//! - [`groups`]: light-weight client groups over the ring.
//! - [`server`]: the daemon core, [`server::Server`]: node, client groups
//!   and client sessions in one object, driven by the daemon runtime and
//!   the harnesses alike.
//! - [`sim`]: the deterministic simulator, network model, invariant checker
//!   and trace writer.

#![forbid(unsafe_code)]

pub mod block;
pub mod groups;
mod node;
pub mod ring;
pub mod security;
pub mod server;
pub mod sim;
mod time;
pub mod wire;

pub use node::{Alert, Incarnation, MAX_RING_STEP, Node, Phase};
pub use time::Time;
pub use wire::{MsgId, NodeId, RingId, Service};
