//! The clients: one thread per daemon, connected over the daemon's Unix
//! socket (a file, reachable from outside the daemon's namespace), in the
//! open group [`OPEN`] and the closed VS group [`VS`], sending `agreed`
//! messages to both at a bounded rate and logging everything it sees. When
//! its daemon dies the connection's log ends (`broken`) and the thread
//! connects again, as a new client, once the daemon is back.

use super::check::{ClientLog, Ev, Vid};
use ringfence_client::{Address, Client, ClientError, Event, Service, ViewKind};
use ringfence_proto::wire::client::ErrorCode;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The open group (EVS, open: anyone may send).
pub(crate) const OPEN: &str = "open";
/// The closed virtual-synchrony group (flush on every view change).
pub(crate) const VS: &str = "vs";

/// The run's phase, shared with every client thread.
pub(crate) const RUN: u8 = 0;
/// Stop sending, keep receiving.
pub(crate) const DRAIN: u8 = 1;
/// Return the logs.
pub(crate) const STOP: u8 = 2;

/// At most this many own messages not yet back before a client waits: the
/// sender's own flow control, so that it never blocks on a full socket.
const WINDOW: u64 = 2000;

/// What one client thread does.
pub(crate) struct Spec {
    /// Its daemon.
    pub(crate) daemon: usize,
    /// The daemon's Unix client socket.
    pub(crate) socket: PathBuf,
    /// Messages per second, over both groups.
    pub(crate) rate: f64,
    /// The number of clients: a view of both groups with that many members
    /// is whole.
    pub(crate) members: usize,
}

/// Shared with the thread: the phase, and how many client threads have no
/// own message outstanding (for the drain).
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) phase: AtomicU8,
    pub(crate) settled: AtomicUsize,
    /// How many client threads are connected with a whole view of both
    /// groups (see [`Spec::members`]).
    pub(crate) whole: AtomicUsize,
}

/// Keeps one thread's contribution to a shared count up to date.
struct Flag<'a> {
    count: &'a AtomicUsize,
    on: bool,
}

impl Flag<'_> {
    fn set(&mut self, on: bool) {
        if on != self.on {
            if on {
                self.count.fetch_add(1, Ordering::SeqCst);
            } else {
                self.count.fetch_sub(1, Ordering::SeqCst);
            }
            self.on = on;
        }
    }
}

fn vid(v: ringfence_client::ViewId) -> Vid {
    (v.ring_seq, v.ring_rep, v.counter)
}

fn encode(v: Option<Vid>) -> String {
    v.map_or_else(|| "-".into(), |(s, r, c)| format!("{s}.{r}.{c}"))
}

fn decode(text: &str) -> Option<(u64, Option<Vid>)> {
    let (seq, view) = text.split_once(' ')?;
    let seq = seq.parse().ok()?;
    if view == "-" {
        return Some((seq, None));
    }
    let mut it = view.split('.');
    let v = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    it.next().is_none().then_some((seq, Some(v)))
}

/// One connection and what it logged.
struct Conn {
    client: Client,
    log: ClientLog,
    /// The current VS view, when not flushing (sending allowed).
    vs_view: Option<Vid>,
    /// Own messages delivered back.
    back: u64,
    /// The member count of the last regular view of each group.
    sizes: [usize; 2],
    connected: Instant,
}

impl Conn {
    fn sent_total(&self) -> u64 {
        self.log.sent.values().sum()
    }

    fn record(&mut self, e: Event, at: Duration) -> Result<(), ClientError> {
        match e {
            Event::Message(m) => {
                let group = m.groups.first().unwrap_or_default().to_string();
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                match decode(&text) {
                    Some((seq, sent_view)) if m.groups.len() == 1 => {
                        if m.sender == self.log.name {
                            self.back += 1;
                        }
                        let sender = m.sender.to_string();
                        self.log.events.push(Ev::Deliver { at, group, sender, seq, sent_view });
                    }
                    _ => self.log.events.push(Ev::Wrong {
                        at,
                        what: format!(
                            "a message this harness never wrote: {:?} from {} to {:?}",
                            text, m.sender, m.groups
                        ),
                    }),
                }
            }
            Event::Membership(v) => {
                let transitional = v.kind == ViewKind::Transitional;
                if !transitional {
                    if v.group == VS {
                        self.vs_view = Some(vid(v.view_id));
                        self.sizes[1] = v.members.len();
                    } else if v.group == OPEN {
                        self.sizes[0] = v.members.len();
                    }
                }
                self.log.events.push(Ev::View {
                    at,
                    group: v.group,
                    id: vid(v.view_id),
                    transitional,
                    cause: format!("{:?}", v.cause),
                    members: v.members,
                });
            }
            Event::FlushRequest { group, view_id } => {
                if group == VS {
                    self.vs_view = None;
                }
                self.client.flush_ok(&group, view_id)?;
            }
            Event::Undecipherable { sender, group, reason, .. } => self.log.events.push(Ev::Wrong {
                at,
                what: format!("undecipherable message from {sender} to {group}: {reason}"),
            }),
            Event::Error { code: ErrorCode::StaleView, .. } => self.log.stale_flush_ok += 1,
            Event::Error { code, text } => {
                self.log.events.push(Ev::Wrong { at, what: format!("daemon error {code:?}: {text}") });
            }
            other => self.log.events.push(Ev::Wrong { at, what: format!("unexpected event {other:?}") }),
        }
        Ok(())
    }

    /// Sends what is due at `rate` since connecting, at most 50 at a time,
    /// alternating the groups (the VS group only in a view, not during a
    /// flush).
    fn send_due(&mut self, rate: f64) -> Result<(), ClientError> {
        let due = (self.connected.elapsed().as_secs_f64() * rate) as u64;
        let mut budget = due.saturating_sub(self.sent_total()).min(50);
        while budget > 0 && self.sent_total() - self.back < WINDOW {
            budget -= 1;
            let total = self.sent_total();
            let (group, view) = match self.vs_view {
                Some(v) if total % 2 == 1 => (VS, Some(v)),
                _ => (OPEN, None),
            };
            let seq = self.log.sent.get(group).copied().unwrap_or(0);
            let text = format!("{seq} {}", encode(view));
            self.client.multicast(Service::Agreed, &[group], 0, text.as_bytes())?;
            self.log.sent.insert(group.to_string(), seq + 1);
        }
        Ok(())
    }
}

/// Runs one client thread until the phase is [`STOP`]; returns the logs of
/// every connection it made, in order. Times are from `t0`.
pub(crate) fn run(spec: &Spec, shared: &Arc<Shared>, t0: Instant) -> Vec<ClientLog> {
    let mut logs = Vec::new();
    let mut conn: Option<Conn> = None;
    let mut incarnation = 0u32;
    let mut settled = Flag { count: &shared.settled, on: false };
    let mut whole = Flag { count: &shared.whole, on: false };
    loop {
        let phase = shared.phase.load(Ordering::SeqCst);
        if phase == STOP {
            if let Some(mut c) = conn.take() {
                c.log.end = t0.elapsed();
                logs.push(c.log);
            }
            settled.set(false);
            whole.set(false);
            return logs;
        }
        let Some(c) = conn.as_mut() else {
            settled.set(false);
            whole.set(false);
            let name = format!("n{}i{incarnation}", spec.daemon);
            match Client::connect(&Address::Unix(spec.socket.clone()), &name) {
                Ok(mut client) => {
                    incarnation += 1;
                    let joined = client.join(OPEN).and_then(|()| client.join_vs(VS));
                    let log = ClientLog {
                        name: client.private_name().to_string(),
                        daemon: spec.daemon,
                        start: t0.elapsed(),
                        ..ClientLog::default()
                    };
                    let mut c = Conn {
                        client,
                        log,
                        vs_view: None,
                        back: 0,
                        sizes: [0; 2],
                        connected: Instant::now(),
                    };
                    if let Err(e) = joined {
                        c.log.broken = Some(format!("join: {e}"));
                        c.log.end = t0.elapsed();
                        logs.push(c.log);
                    } else {
                        conn = Some(c);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
            continue;
        };
        let step = (|| -> Result<(), ClientError> {
            for _ in 0..1000 {
                match c.client.poll()? {
                    Some(e) => c.record(e, t0.elapsed())?,
                    None => break,
                }
            }
            if phase == RUN {
                c.send_due(spec.rate)?;
            }
            Ok(())
        })();
        if let Err(e) = step {
            let mut c = conn.take().expect("connected");
            c.log.broken = Some(e.to_string());
            c.log.end = t0.elapsed();
            logs.push(c.log);
            continue;
        }
        settled.set(phase == DRAIN && c.back == c.sent_total());
        whole.set(c.sizes == [spec.members; 2]);
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        assert_eq!(decode(&format!("7 {}", encode(Some((3, 1, 9))))), Some((7, Some((3, 1, 9)))));
        assert_eq!(decode(&format!("0 {}", encode(None))), Some((0, None)));
        assert_eq!(decode("x -"), None);
        assert_eq!(decode("1 2.3"), None);
        assert_eq!(decode("1 2.3.4.5"), None);
    }
}
