//! Fault schedules: partitions, merges, crashes, restarts, bursty and
//! asymmetric loss, one-way reachability. Drawn from the seed.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Which kinds of fault a run may contain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultKinds {
    /// Split the daemons into groups that cannot reach each other.
    pub partition: bool,
    /// Heal all partitions and one-way cuts.
    pub merge: bool,
    /// Kill a daemon (it loses all state).
    pub crash: bool,
    /// Restart a crashed daemon with a new incarnation.
    pub restart: bool,
    /// Bursts of heavy loss on some directed links.
    pub loss: bool,
    /// One-way reachability: A hears B, B does not hear A.
    pub oneway: bool,
    /// A lasting one-way cut (longer than every timeout), after the other
    /// faults healed: the daemons must keep delivering meanwhile.
    pub cut: bool,
    /// A daemon paused (SIGSTOP) for up to 2 s after the other faults
    /// healed: the others must stay together and keep delivering.
    pub pause: bool,
    /// Scheduling stalls: every daemon is paused for short spells (up to
    /// 100 ms) for a while; no membership change may follow.
    pub stall: bool,
    /// A lasting deaf daemon: every link into one daemon cut (4 to 7 s),
    /// while the others still hear it; the others must keep one ring and
    /// not re-form it at each of its beacons.
    pub deaf: bool,
}

impl FaultKinds {
    /// Every kind of the first phase. `all` on the command line is these
    /// and the lasting kinds (`cut`, `pause`, `stall`, [`Self::EVERY`]);
    /// the seed tests run in `cargo test` use these alone and the lasting
    /// kinds in tests of their own, to keep the suite short.
    pub const ALL: Self = Self {
        partition: true,
        merge: true,
        crash: true,
        restart: true,
        loss: true,
        oneway: true,
        cut: false,
        pause: false,
        stall: false,
        deaf: false,
    };

    /// Every kind, the lasting ones included (`all`).
    pub const EVERY: Self = Self { cut: true, pause: true, stall: true, deaf: true, ..Self::ALL };

    /// Parses a comma-separated list: `partition,merge,crash,restart,loss,oneway,
    /// cut,pause,stall,deaf` or `all`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut k = Self::default();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => k = Self::EVERY,
                "partition" => k.partition = true,
                "merge" => k.merge = true,
                "crash" => k.crash = true,
                "restart" => k.restart = true,
                "loss" => k.loss = true,
                "oneway" => k.oneway = true,
                "cut" => k.cut = true,
                "pause" => k.pause = true,
                "stall" => k.stall = true,
                "deaf" => k.deaf = true,
                other => {
                    return Err(format!(
                        "unknown fault kind `{other}` (partition, merge, crash, restart, loss, oneway, \
                         cut, pause, stall, deaf, all)"
                    ));
                }
            }
        }
        Ok(k)
    }

    /// Whether no kind is chosen.
    pub fn is_empty(self) -> bool {
        self == Self::default()
    }

    /// The lasting kinds (one of them runs after the heal).
    fn lasting_choices(self) -> Vec<LastingKind> {
        [
            (self.cut, LastingKind::Cut),
            (self.pause, LastingKind::Pause),
            (self.stall, LastingKind::Stall),
            (self.deaf, LastingKind::Deaf),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect()
    }

    fn choices(self) -> Vec<Kind> {
        let mut v = Vec::new();
        let pairs = [
            (self.partition, Kind::Partition),
            (self.merge, Kind::Merge),
            (self.crash, Kind::Crash),
            (self.restart, Kind::Restart),
            (self.loss, Kind::Loss),
            (self.oneway, Kind::OneWay),
        ];
        for (on, k) in pairs {
            if on {
                v.push(k);
            }
        }
        v
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Partition,
    Merge,
    Crash,
    Restart,
    Loss,
    OneWay,
}

/// A fault made concrete when it happens (which daemons it hits depends on
/// who is alive then).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Fault {
    Partition(Vec<usize>),
    Merge,
    Crash(usize),
    Restart(usize),
    Loss { links: Vec<(usize, usize)>, p: f64, until: Duration },
    OneWay(usize, usize),
}

/// Draws `count` fault times and kinds within `span`.
pub(crate) fn schedule(
    rng: &mut ChaCha8Rng,
    kinds: FaultKinds,
    count: usize,
    span: Duration,
) -> Vec<(Duration, Kind)> {
    let choices = kinds.choices();
    if choices.is_empty() {
        return Vec::new();
    }
    let mut v: Vec<(Duration, Kind)> = (0..count)
        .map(|_| {
            let at = Duration::from_nanos(rng.random_range(0..span.as_nanos() as u64));
            (at, choices[rng.random_range(0..choices.len())])
        })
        .collect();
    v.sort_by_key(|(t, _)| *t);
    v
}

/// Makes a fault concrete given who is alive (`alive[i]`).
pub(crate) fn realise(rng: &mut ChaCha8Rng, kind: Kind, alive: &[bool], now: Duration) -> Option<Fault> {
    let n = alive.len();
    let live: Vec<usize> = (0..n).filter(|&i| alive[i]).collect();
    let dead: Vec<usize> = (0..n).filter(|&i| !alive[i]).collect();
    Some(match kind {
        Kind::Partition => {
            // Each daemon gets a group label among 2 or 3 groups.
            let groups = rng.random_range(2..=3usize);
            let mut labels: Vec<usize> = (0..n).map(|_| rng.random_range(0..groups)).collect();
            // Make sure at least two groups are used.
            if labels.iter().all(|&l| l == labels[0]) && n > 1 {
                labels[rng.random_range(0..n)] = (labels[0] + 1) % groups;
            }
            Fault::Partition(labels)
        }
        Kind::Merge => Fault::Merge,
        Kind::Crash => {
            if live.len() <= 1 {
                return None;
            }
            Fault::Crash(live[rng.random_range(0..live.len())])
        }
        Kind::Restart => {
            if dead.is_empty() {
                return None;
            }
            Fault::Restart(dead[rng.random_range(0..dead.len())])
        }
        Kind::Loss => {
            let mut links: Vec<(usize, usize)> =
                (0..n).flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b))).collect();
            links.shuffle(rng);
            links.truncate(rng.random_range(1..=links.len().max(1)));
            let p = rng.random_range(0.3..0.9);
            let until = now + Duration::from_millis(rng.random_range(20..400));
            Fault::Loss { links, p, until }
        }
        Kind::OneWay => {
            if n < 2 {
                return None;
            }
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            Fault::OneWay(a, b)
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LastingKind {
    Cut,
    Pause,
    Stall,
    Deaf,
}

/// The fault of the second phase of a run: it starts once the other faults
/// healed and the ring settled, and lasts longer than any timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lasting {
    /// Datagrams from `from` to `to` are dropped for `len`.
    Cut { from: usize, to: usize, len: Duration },
    /// Daemon `node` runs nothing for `len` (datagrams wait in its socket).
    Pause { node: usize, len: Duration },
    /// Short pauses of every daemon, `(node, start offset, length)`, over
    /// `len`.
    Stall { spells: Vec<(usize, Duration, Duration)>, len: Duration },
    /// Datagrams to `node` from every other daemon are dropped for `len`.
    Deaf { node: usize, len: Duration },
}

impl Lasting {
    /// How long the fault lasts.
    pub(crate) fn len(&self) -> Duration {
        match self {
            Self::Cut { len, .. }
            | Self::Pause { len, .. }
            | Self::Stall { len, .. }
            | Self::Deaf { len, .. } => *len,
        }
    }
}

/// Draws the lasting fault of a run, if its kinds ask for one.
pub(crate) fn lasting(rng: &mut ChaCha8Rng, kinds: FaultKinds, nodes: usize) -> Option<Lasting> {
    let choices = kinds.lasting_choices();
    if choices.is_empty() || nodes < 2 {
        return None;
    }
    Some(match choices[rng.random_range(0..choices.len())] {
        LastingKind::Cut => {
            let from = rng.random_range(0..nodes);
            let to = (from + rng.random_range(1..nodes)) % nodes;
            Lasting::Cut { from, to, len: Duration::from_millis(rng.random_range(4000..7000)) }
        }
        LastingKind::Pause => Lasting::Pause {
            node: rng.random_range(0..nodes),
            len: Duration::from_millis(rng.random_range(300..=2000)),
        },
        LastingKind::Stall => {
            let len = Duration::from_millis(3000);
            let mut spells = Vec::new();
            for node in 0..nodes {
                let mut at = Duration::from_millis(rng.random_range(0..200));
                while at < len {
                    let spell = Duration::from_millis(rng.random_range(5..=100));
                    spells.push((node, at, spell));
                    at += spell + Duration::from_millis(rng.random_range(50..300));
                }
            }
            spells.sort_by_key(|s| s.1);
            Lasting::Stall { spells, len }
        }
        LastingKind::Deaf => Lasting::Deaf {
            node: rng.random_range(0..nodes),
            len: Duration::from_millis(rng.random_range(4000..7000)),
        },
    })
}
