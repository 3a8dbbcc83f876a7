//! The JSON-lines trace: one line per event each daemon emitted.

use crate::Time;
use crate::ring::Delivery;
use crate::wire::{NodeId, RingId, Service};
use serde::Serialize;
use std::io::{self, Write};

/// One trace line. See `docs/protocol.md`, "Simulator trace format".
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TraceEvent<'a> {
    /// A message delivered by `node`.
    Delivery {
        /// The daemon that delivered.
        node: NodeId,
        /// Virtual time in nanoseconds.
        t_ns: u64,
        /// Origin daemon of the message.
        origin: NodeId,
        /// The origin's message counter.
        seq: u64,
        /// Service name.
        service: Service,
        /// Payload size in bytes.
        size: usize,
        /// The ring that ordered it.
        ring: RingId,
        /// Ring sequence number of the packet that completed it.
        ring_seq: u64,
        /// FNV-1a digest of the payload delivered.
        digest: u64,
    },
    /// A message submitted at `node` (what an outside checker compares
    /// deliveries with).
    Submit {
        /// The daemon it was submitted to.
        node: NodeId,
        /// Virtual time in nanoseconds.
        t_ns: u64,
        /// Its id: origin daemon and counter.
        origin: NodeId,
        /// The origin's message counter.
        seq: u64,
        /// Service name.
        service: Service,
        /// Payload size in bytes.
        size: usize,
        /// FNV-1a digest of the payload.
        digest: u64,
        /// The ring the daemon was in (installed) when it was submitted.
        ring: Option<RingId>,
    },
    /// A configuration installed by `node`.
    Configuration {
        /// The daemon that installed it.
        node: NodeId,
        /// Virtual time in nanoseconds.
        t_ns: u64,
        /// `regular` or `transitional`.
        config: crate::ring::ConfigKind,
        /// The ring id.
        ring: RingId,
        /// Members, ascending.
        members: &'a [NodeId],
    },
    /// The daemon crashed (lost all state).
    Crash {
        /// The daemon.
        node: NodeId,
        /// Virtual time in nanoseconds.
        t_ns: u64,
    },
    /// The daemon restarted with a new incarnation.
    Restart {
        /// The daemon.
        node: NodeId,
        /// Virtual time in nanoseconds.
        t_ns: u64,
        /// Incarnation number (0 for the first life).
        incarnation: u32,
    },
    /// A fault applied to the network or a daemon (the fault schedule).
    Fault {
        /// Virtual time in nanoseconds.
        t_ns: u64,
        /// What happened, e.g. `cut 1->2 for 5000 ms`, `partition [0, 0, 1]`,
        /// `heal`, `pause 2 for 800 ms`, `resume 2`.
        fault: String,
    },
    /// The daemon's membership state changed (`Node::describe`: phase,
    /// gather sets, quarantines, unheard daemons); one line per change.
    Membership {
        /// The daemon.
        node: NodeId,
        /// Virtual time in nanoseconds.
        t_ns: u64,
        /// The state in one line.
        state: String,
    },
    /// The run ended here: nothing follows.
    End {
        /// Virtual time in nanoseconds.
        t_ns: u64,
    },
}

impl TraceEvent<'_> {
    /// A delivery line for `d`, delivered by `node` at `t`; `digest` is
    /// its payload's.
    pub fn delivery(node: NodeId, t: Time, d: &Delivery, digest: u64) -> Self {
        TraceEvent::Delivery {
            node,
            t_ns: t.as_nanos(),
            origin: d.id.origin,
            seq: d.id.seq,
            service: d.service,
            size: d.payload.len(),
            ring: d.ring_id,
            ring_seq: d.ring_seq,
            digest,
        }
    }
}

/// Writes trace lines to any writer.
pub(crate) fn write_line<W: Write>(w: &mut W, ev: &TraceEvent<'_>) -> io::Result<()> {
    serde_json::to_writer(&mut *w, ev).map_err(io::Error::other)?;
    w.write_all(b"\n")
}
