//! The groups layer's deterministic multi-daemon harness, public for tests
//! of other crates (feature `test-support`; never in a daemon build).
//!
//! [`Sim`] wraps the harness the groups layer's own tests use: N daemon
//! cores ([`crate::server::Server`]) with encrypted links and the servers'
//! key agreement, on a virtual clock, over a seeded network with
//! partitions, merges and crashes. The caller plays the clients: it sends
//! client-protocol frames for them and reads, decoded, every frame their
//! daemon encoded for them, as a real client does. It answers their flush
//! requests itself ([`Sim::flush_ok`]).
//!
//! ```text
//!  caller (clients) ──join / multicast / flush_ok / leave──► Server (daemon d)
//!  Server ──encoded DaemonFrame──► capture ──take_frames(who)──► caller
//!  Server ◄──datagrams (seeded delay, partitions, crashes)──► Server
//!                       └──► capture ──take_datagrams()──► caller
//! ```
//!
//! The client crate's layered-group simulation (`ringfence_client`,
//! `layered/sim_tests.rs`) is the user: the key agreement engines of the
//! client library run there on top of the views and messages delivered
//! here, which keeps the crate layering (the client crate depends on this
//! one, not the other way round).

use super::harness::{Capture, World};
use super::{GroupMode, GroupsError};
use crate::Time;
use crate::security::policy::Policy;
use crate::wire::client::{DaemonFrame, FrameDecoder, Limits, Multicast, ViewId};
use bytes::Bytes;
use std::time::Duration;

/// A client in the simulation: its daemon's index and its client id there.
pub type SimClient = (usize, u64);

/// Daemons with their clients' sessions on a virtual clock. See the
/// [module documentation](self).
pub struct Sim {
    w: World,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("daemons", &self.w.servers.len()).field("now", &self.w.now).finish()
    }
}

fn who(c: SimClient) -> (usize, super::ClientId) {
    (c.0, super::ClientId(c.1))
}

impl Sim {
    /// `n` daemons with encrypted links under the client group `policy`,
    /// the network seeded by `seed`; returns once they form one ring and
    /// agree the server key (at most 2 s of virtual time), or `None`.
    pub fn secure(n: usize, seed: u64, policy: Policy) -> Option<Self> {
        let mut w = World::secure(n, seed, policy);
        w.capture = Some(Capture::default());
        w.run(Duration::from_secs(2));
        let formed = w.servers.iter().all(|x| x.node().ring().is_some_and(|r| r.1.len() == n))
            && w.servers.iter().all(|x| x.node().server_key().is_some());
        formed.then_some(Self { w })
    }

    /// The virtual time.
    pub fn now(&self) -> Time {
        self.w.now
    }

    /// Runs the daemons and the network for `d` of virtual time.
    pub fn run(&mut self, d: Duration) {
        self.w.run(d);
    }

    /// Client `c` of daemon `d` connects as `name` (a local, private
    /// connection); returns its private name.
    pub fn connect(&mut self, d: usize, c: u64, name: &str) -> String {
        let pn = self.w.try_connect_as(d, c, name, "").expect("connect");
        let who = (d, super::ClientId(c));
        self.w.log.entry(who).or_default();
        self.w.manual_flush.insert(who);
        pn.to_string()
    }

    /// The client joins `group` stating `mode`.
    pub fn join(&mut self, c: SimClient, group: &str, mode: GroupMode) -> Result<(), GroupsError> {
        self.w.join_mode(who(c), group, super::GroupKind::Vs, mode)
    }

    /// The client leaves `group`.
    pub fn leave(&mut self, c: SimClient, group: &str) -> Result<(), GroupsError> {
        self.w.leave(who(c), group)
    }

    /// The client's session ends.
    pub fn disconnect(&mut self, c: SimClient) {
        self.w.disconnect(who(c));
    }

    /// The client multicasts `m` as it is.
    pub fn multicast(&mut self, c: SimClient, m: Multicast) -> Result<(), GroupsError> {
        self.w.multicast_frame(who(c), m)
    }

    /// The client answers the flush request of `view_id` of `group`.
    pub fn flush_ok(&mut self, c: SimClient, group: &str, view_id: ViewId) -> Result<(), GroupsError> {
        self.w.flush_ok(who(c), group, view_id)
    }

    /// Splits the daemons: `labels[i]` is daemon i's side.
    pub fn partition(&mut self, labels: &[u8]) {
        self.w.partition(labels);
    }

    /// Every daemon reaches every other again.
    pub fn heal(&mut self) {
        self.w.heal();
    }

    /// Daemon `d` crashes: its clients are gone with it (take none of their
    /// frames any more).
    pub fn crash(&mut self, d: usize) {
        self.w.crash(d);
    }

    /// Daemon `d` restarts, with no clients (client ids may be reused).
    pub fn restart(&mut self, d: usize) {
        self.w.restart(d);
    }

    /// The frames daemon `c.0` encoded for client `c` since the last call,
    /// each with its decoding (`None`: not exactly one frame, a defect also
    /// listed by [`Sim::violations`]).
    pub fn take_frames(&mut self, c: SimClient) -> Vec<(Bytes, Option<DaemonFrame>)> {
        let Some(cap) = &mut self.w.capture else { return Vec::new() };
        let frames = cap.frames.remove(&who(c)).unwrap_or_default();
        frames
            .into_iter()
            .map(|f| {
                let mut d = FrameDecoder::<DaemonFrame>::new(Limits::default());
                d.push(&f);
                let frame = d.next_frame().ok().flatten();
                (f, frame)
            })
            .collect()
    }

    /// Forgets the frames kept for client `c` (a client gone with its daemon).
    pub fn drop_frames(&mut self, c: SimClient) {
        if let Some(cap) = &mut self.w.capture {
            cap.frames.remove(&who(c));
        }
    }

    /// The datagrams the daemons sent since the last call.
    pub fn take_datagrams(&mut self) -> Vec<Bytes> {
        self.w.capture.as_mut().map(|c| std::mem::take(&mut c.datagrams)).unwrap_or_default()
    }

    /// What the harness found wrong on the daemons' side (a frame that is
    /// not one frame, a view key where none belongs).
    pub fn violations(&self) -> &[String] {
        &self.w.violations
    }
}
