//! Ring configuration, with LAN defaults.

use crate::wire::{CHUNK_OVERHEAD, PACKET_OVERHEAD, RTR_RANGE_LEN, TOKEN_FIXED_LEN};
use std::time::Duration;

/// IPv4 header bytes, reserved out of the MTU.
pub const IP_HEADER: usize = 20;
/// UDP header bytes, reserved out of the MTU.
pub const UDP_HEADER: usize = 8;
/// Bytes reserved for link security (the outer header of
/// `security::link` and, before a link key exists, an Ed25519 signature),
/// so that turning encryption on never changes how messages are packed.
pub const SECURITY_OVERHEAD: usize = crate::security::link::OVERHEAD;

/// Tunables of the ordering protocol. Every field has a LAN default
/// ([`Config::default`]); `docs/protocol.md` explains each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Link MTU in bytes (default 1500). The frame budget is the MTU minus
    /// IP, UDP and security overhead.
    pub mtu: usize,
    /// Pack several client messages into one frame (default on). Off: one
    /// message or fragment per frame; kept to measure what packing buys.
    pub packing: bool,
    /// Most new packets one member sends per token visit (default 32).
    pub personal_window: u32,
    /// Most packets, new and retransmitted, all members together send per
    /// token rotation (default 160).
    pub window: u32,
    /// Accelerated ring: the holder passes the token before sending the last
    /// `accelerated_window` packets of its visit (default on).
    pub accelerated: bool,
    /// Packets sent after the token in accelerated mode (default 16).
    pub accelerated_window: u32,
    /// Most packets that may be outstanding beyond the token's aru; bounds
    /// every member's packet store (default 1024).
    pub max_unstable: u64,
    /// Resend the token if no sign that the ring moved on arrives within this
    /// time after passing it (default 20 ms).
    pub token_retransmit: Duration,
    /// When the ring is idle, the representative holds the token this long
    /// before passing it, instead of spinning (default 1 ms; zero disables).
    pub token_hold: Duration,
    /// While the ring stays idle the representative doubles its hold on
    /// every idle rotation, up to this (default 10 ms; the hold used is never
    /// below `token_hold` nor above half of `token_retransmit`): an idle
    /// cluster passes the token about 100 times a second instead of 1,000.
    /// A member with something to send asks for the token (a token
    /// request) instead of waiting out the hold.
    pub token_idle_hold: Duration,
    /// Declare the token lost, and gather a new membership, after this long
    /// without it (default 300 ms). Also bounds the commit and recovery
    /// phases.
    pub token_timeout: Duration,
    /// Resend the join message this often while gathering (default 40 ms).
    pub join_interval: Duration,
    /// Give up waiting for members that do not agree after this long and
    /// count them failed (default 200 ms).
    pub consensus_timeout: Duration,
    /// The representative announces its ring this often, so that healed
    /// partitions find each other even when idle (default 200 ms).
    pub merge_interval: Duration,
    /// A daemon counted failed is ignored for at least this long, doubling on
    /// each repeat up to `quarantine_max`, so that one-way reachability does
    /// not make the membership loop (default 400 ms).
    pub quarantine_min: Duration,
    /// Upper bound of the quarantine (default 3.2 s).
    pub quarantine_max: Duration,
    /// A member that has missed the same packet for this long while the
    /// token kept coming (its retransmission requests go unanswered: a
    /// one-way cut from some member) starts a membership change, which
    /// leaves out the member it cannot hear (default 400 ms; Corosync's
    /// `fail_recv_const`).
    pub fail_to_receive: Duration,
    /// Largest client message accepted by `submit` (default 1 MiB).
    pub max_message: usize,
    /// Most messages waiting to be sent; `submit` refuses more (default 8192).
    pub max_pending_messages: usize,
    /// Most payload bytes waiting to be sent; `submit` refuses more
    /// (default 16 MiB).
    pub max_pending_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mtu: 1500,
            packing: true,
            personal_window: 32,
            window: 160,
            accelerated: true,
            accelerated_window: 16,
            max_unstable: 1024,
            token_retransmit: Duration::from_millis(20),
            token_hold: Duration::from_millis(1),
            token_idle_hold: Duration::from_millis(10),
            token_timeout: Duration::from_millis(300),
            join_interval: Duration::from_millis(40),
            consensus_timeout: Duration::from_millis(200),
            merge_interval: Duration::from_millis(200),
            quarantine_min: Duration::from_millis(400),
            quarantine_max: Duration::from_millis(3200),
            fail_to_receive: Duration::from_millis(400),
            max_message: 1 << 20,
            max_pending_messages: 8192,
            max_pending_bytes: 16 << 20,
        }
    }
}

impl Config {
    /// The low-latency timeout profile (`[ring] timeouts = "low-latency"`):
    /// for a LAN whose daemons are not starved of CPU, it finds a failed
    /// daemon or a partition about six times sooner than the defaults
    /// (token timeout 40 ms, consensus 30 ms: a new keyed view 78 ms after a
    /// partition on loopback, against 520 ms). A daemon that stalls longer
    /// than the token timeout (a loaded machine, a VM pause) is taken out of
    /// the ring, and merged back when it runs again. docs/operations.md,
    /// "Timeout profiles", tells when to choose it.
    pub fn low_latency() -> Self {
        Self {
            token_retransmit: Duration::from_millis(5),
            token_timeout: Duration::from_millis(40),
            join_interval: Duration::from_millis(6),
            consensus_timeout: Duration::from_millis(30),
            merge_interval: Duration::from_millis(100),
            quarantine_min: Duration::from_millis(200),
            quarantine_max: Duration::from_millis(1600),
            fail_to_receive: Duration::from_millis(80),
            ..Self::default()
        }
    }

    /// The timeout profile named `name`: `default` or `low-latency`.
    pub fn profile(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::default()),
            "low-latency" => Some(Self::low_latency()),
            _ => None,
        }
    }
}

/// A configuration value that cannot work; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid ring config: {field}: {reason}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Why it cannot work.
    pub reason: &'static str,
}

impl Config {
    /// Bytes available to one data packet on the wire (the frame budget).
    pub fn frame_budget(&self) -> usize {
        self.mtu.saturating_sub(IP_HEADER + UDP_HEADER + SECURITY_OVERHEAD)
    }

    /// Longest encoded destination list (`Groups`) a message may carry:
    /// the list rides in its first chunk, which must fit one frame with
    /// room for some payload. A longer one could never be sent.
    pub fn max_group_list(&self) -> usize {
        // The first chunk of a fragmented message: header, list, total
        // length, and at least 64 payload bytes.
        self.frame_budget().saturating_sub(PACKET_OVERHEAD + CHUNK_OVERHEAD + 4 + 64)
    }

    /// Most retransmission ranges a token may carry so it always fits one
    /// frame, however many packets are missing.
    pub fn max_rtr_ranges(&self) -> usize {
        self.frame_budget().saturating_sub(TOKEN_FIXED_LEN) / RTR_RANGE_LEN
    }

    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason| Err(ConfigError { field, reason });
        // Room for the packet header, a chunk header with a full group list
        // and at least 64 payload bytes.
        if self.frame_budget() < PACKET_OVERHEAD + 16 + 256 + 64 || self.mtu > 65_507 {
            return err("mtu", "must be between 484 and 65507 bytes");
        }
        if self.personal_window == 0 {
            return err("personal_window", "must be at least 1");
        }
        if self.window < self.personal_window {
            return err("window", "must be at least personal_window");
        }
        if self.accelerated && self.accelerated_window > self.personal_window {
            return err("accelerated_window", "must not exceed personal_window");
        }
        if self.max_unstable < u64::from(self.window) {
            return err("max_unstable", "must be at least window");
        }
        if self.token_retransmit.is_zero() {
            return err("token_retransmit", "must be positive");
        }
        if self.token_hold >= self.token_retransmit {
            return err("token_hold", "must be shorter than token_retransmit");
        }
        if self.token_timeout < 2 * self.token_retransmit {
            return err("token_timeout", "must be at least twice token_retransmit");
        }
        if self.join_interval.is_zero() || self.consensus_timeout <= self.join_interval {
            return err("consensus_timeout", "must exceed join_interval, which must be positive");
        }
        if self.merge_interval.is_zero() {
            return err("merge_interval", "must be positive");
        }
        if self.fail_to_receive < self.token_retransmit {
            return err("fail_to_receive", "must be at least token_retransmit");
        }
        if self.quarantine_max < self.quarantine_min {
            return err("quarantine_max", "must be at least quarantine_min");
        }
        if self.max_message == 0 || self.max_message > u32::MAX as usize {
            return err("max_message", "must be between 1 byte and 4 GiB");
        }
        if self.max_pending_messages == 0 || self.max_pending_bytes < self.max_message {
            return err("max_pending_bytes", "must hold at least one largest message");
        }
        Ok(())
    }
}
