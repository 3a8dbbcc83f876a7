//! The checker of client histories: what every client saw (deliveries and
//! views, with the time it saw them) and what it sent, checked for the
//! guarantees the daemons give their clients.
//!
//! - **No phantoms**: a delivered message was sent by the client it names,
//!   with that per-sender counter, to that group.
//! - **No duplicates**: a client delivers a message at most once.
//! - **Total order**: any two messages delivered at two clients are
//!   delivered in the same relative order (every message is `agreed`).
//! - **FIFO without gaps in a view**: a sender's messages arrive in the
//!   order sent; between two view events of a group (regular or
//!   transitional) at a client, a sender's counter grows by exactly one.
//! - **Own messages back**: a client whose connection did not break got
//!   every message it sent.
//! - **Sending view** (VS groups): a message is delivered in the view it
//!   was sent in.
//! - **Same set** (VS groups): clients that move together from one regular
//!   view to the same next one delivered the same messages in it.
//! - **One view after healing**: the clients alive at the end share one
//!   regular view of each group, holding all of them.
//! - **Delivery gaps** (a figure, not a violation): per fault, the longest
//!   time a live client spent without a delivery, from the fault's start to
//!   the end of its window.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

/// A view id as the client sees it: ring sequence, ring representative,
/// the group's counter.
pub(crate) type Vid = (u64, u16, u64);

/// One thing a client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    /// A message: its group, its sender's private name, the sender's counter
    /// in that group and, for VS groups, the view it was sent in.
    Deliver { at: Duration, group: String, sender: String, seq: u64, sent_view: Option<Vid> },
    /// A view of a group.
    View { at: Duration, group: String, id: Vid, transitional: bool, cause: String, members: Vec<String> },
    /// Something the daemon or the library reported as wrong (an error
    /// frame, an undecipherable message, a payload this harness never
    /// wrote).
    Wrong { at: Duration, what: String },
}

impl Ev {
    fn at(&self) -> Duration {
        match self {
            Self::Deliver { at, .. } | Self::View { at, .. } | Self::Wrong { at, .. } => *at,
        }
    }
}

/// One connection of a client: from connect to the end of the run, or to
/// its daemon's death.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientLog {
    /// Its private name (as deliveries and views name it).
    pub(crate) name: String,
    /// The daemon it was connected to.
    pub(crate) daemon: usize,
    /// When it connected and when its log ends.
    pub(crate) start: Duration,
    pub(crate) end: Duration,
    /// Why the connection ended early (`None`: it lasted to the end).
    pub(crate) broken: Option<String>,
    /// Messages sent to each group: counters `0..n`.
    pub(crate) sent: BTreeMap<String, u64>,
    /// What it saw, in order.
    pub(crate) events: Vec<Ev>,
    /// `flush_ok` answers the daemon called stale (the view changed again
    /// before the answer arrived): a benign race, counted, not a violation.
    pub(crate) stale_flush_ok: u64,
}

/// A fault's window for the delivery-gap figure.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    /// The fault's name, as printed.
    pub(crate) name: String,
    pub(crate) start: Duration,
    pub(crate) end: Duration,
    /// Daemons whose clients cannot deliver during the fault (paused or
    /// killed): not measured.
    pub(crate) excluded: Vec<usize>,
}

/// The kinds of violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Phantom,
    Duplicate,
    TotalOrder,
    Fifo,
    GapInView,
    OwnMissing,
    SendingView,
    SameSet,
    FinalView,
    Reported,
    /// A fault's delivery gap over the bound asked for (not checked by
    /// [`check`]: the run applies its `--max-gap-ms`).
    DeliveryGap,
    /// A view change while no fault was in force and every client had been
    /// in one whole view for a while (a false suspicion): see
    /// [`spurious_changes`].
    SpuriousChange,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Phantom => "phantom",
            Self::Duplicate => "duplicate",
            Self::TotalOrder => "total-order",
            Self::Fifo => "fifo",
            Self::GapInView => "gap-in-view",
            Self::OwnMissing => "own-missing",
            Self::SendingView => "sending-view",
            Self::SameSet => "same-set",
            Self::FinalView => "final-view",
            Self::Reported => "reported-error",
            Self::DeliveryGap => "delivery-gap",
            Self::SpuriousChange => "spurious-change",
        })
    }
}

/// One violation, with a description naming the clients and messages.
#[derive(Clone, Debug)]
pub(crate) struct Violation {
    pub(crate) kind: Kind,
    pub(crate) text: String,
}

/// The longest delivery gap of one fault window.
#[derive(Clone, Debug)]
pub(crate) struct Gap {
    pub(crate) fault: String,
    /// The gap and the client it was seen at (`None`: no client was
    /// measured).
    pub(crate) longest: Option<(Duration, String)>,
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    pub(crate) violations: Vec<Violation>,
    pub(crate) gaps: Vec<Gap>,
    pub(crate) deliveries: u64,
    pub(crate) sent: u64,
    pub(crate) views: u64,
    pub(crate) stale_flush_ok: u64,
}

impl Report {
    /// Violations per kind.
    pub(crate) fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut m = BTreeMap::new();
        for v in &self.violations {
            *m.entry(v.kind).or_insert(0) += 1;
        }
        m
    }

    /// Adds a violation.
    pub(crate) fn add(&mut self, kind: Kind, text: String) {
        self.violations.push(Violation { kind, text });
    }
}

/// A message's identity: group, sender, counter.
type MsgId<'a> = (&'a str, &'a str, u64);

/// Checks `clients`; `vs_groups` are the closed virtual-synchrony groups;
/// `windows` the faults to measure delivery gaps in.
pub(crate) fn check(clients: &[ClientLog], vs_groups: &[&str], windows: &[Window]) -> Report {
    let mut r = Report::default();
    let by_name: HashMap<&str, &ClientLog> = clients.iter().map(|c| (c.name.as_str(), c)).collect();
    for c in clients {
        r.sent += c.sent.values().sum::<u64>();
        r.stale_flush_ok += c.stale_flush_ok;
        per_client(c, &by_name, vs_groups, &mut r);
    }
    total_order(clients, &mut r);
    same_set(clients, vs_groups, &mut r);
    final_view(clients, &mut r);
    r.gaps = windows.iter().map(|w| gap(clients, w)).collect();
    r
}

/// View changes inside `quiet` intervals (no fault in force, the cluster
/// whole again): each is a membership change no fault caused, one per
/// client and interval.
pub(crate) fn spurious_changes(clients: &[ClientLog], quiet: &[(Duration, Duration)], r: &mut Report) {
    for c in clients {
        for &(from, to) in quiet {
            let hit = c.events.iter().find_map(|e| match e {
                Ev::View { at, group, cause, .. } if (from..to).contains(at) => Some((*at, group, cause)),
                _ => None,
            });
            if let Some((at, group, cause)) = hit {
                r.add(
                    Kind::SpuriousChange,
                    format!(
                        "{} saw a view of {group} ({cause}) at {} ms, with no fault in force ({} to {} ms)",
                        c.name,
                        at.as_millis(),
                        from.as_millis(),
                        to.as_millis()
                    ),
                );
            }
        }
    }
}

/// Phantoms, duplicates, FIFO, gaps in a view, sending view, own messages.
fn per_client(c: &ClientLog, by_name: &HashMap<&str, &ClientLog>, vs_groups: &[&str], r: &mut Report) {
    let mut seen: HashSet<MsgId<'_>> = HashSet::new();
    // Per group: the number of view events so far (a segment), and the
    // current regular view.
    let mut segment: HashMap<&str, u64> = HashMap::new();
    let mut regular: HashMap<&str, Vid> = HashMap::new();
    // Per (group, sender): the last counter and the segment it came in.
    let mut last: HashMap<(&str, &str), (u64, u64)> = HashMap::new();
    let mut own: HashMap<&str, HashSet<u64>> = HashMap::new();
    for e in &c.events {
        match e {
            Ev::View { group, id, transitional, .. } => {
                r.views += 1;
                *segment.entry(group).or_insert(0) += 1;
                if !transitional {
                    regular.insert(group, *id);
                }
            }
            Ev::Wrong { what, .. } => r.add(Kind::Reported, format!("client {}: {what}", c.name)),
            Ev::Deliver { group, sender, seq, sent_view, at } => {
                r.deliveries += 1;
                let id = (group.as_str(), sender.as_str(), *seq);
                let sent = by_name.get(sender.as_str()).and_then(|s| s.sent.get(group)).copied().unwrap_or(0);
                if *seq >= sent {
                    r.add(
                        Kind::Phantom,
                        format!(
                            "client {} at {at:?} delivered {group}/{sender}#{seq}, but {sender} sent {sent} there",
                            c.name
                        ),
                    );
                }
                if !seen.insert(id) {
                    r.add(
                        Kind::Duplicate,
                        format!("client {} delivered {group}/{sender}#{seq} twice", c.name),
                    );
                    continue;
                }
                if sender == &c.name {
                    own.entry(group).or_default().insert(*seq);
                }
                let seg = segment.get(group.as_str()).copied().unwrap_or(0);
                if let Some(&(prev, prev_seg)) = last.get(&(group.as_str(), sender.as_str())) {
                    if *seq < prev {
                        r.add(
                            Kind::Fifo,
                            format!("client {} delivered {group}/{sender}#{seq} after #{prev}", c.name),
                        );
                    } else if prev_seg == seg && *seq != prev + 1 {
                        r.add(
                            Kind::GapInView,
                            format!(
                                "client {} delivered {group}/{sender}#{seq} after #{prev} in one view ({:?})",
                                c.name,
                                regular.get(group.as_str())
                            ),
                        );
                    }
                }
                last.insert((group, sender), (*seq, seg));
                if vs_groups.contains(&group.as_str()) {
                    let now = regular.get(group.as_str()).copied();
                    if sent_view.is_none() || *sent_view != now {
                        r.add(
                            Kind::SendingView,
                            format!(
                                "client {} delivered {group}/{sender}#{seq} sent in view {sent_view:?} in view {now:?}",
                                c.name
                            ),
                        );
                    }
                }
            }
        }
    }
    if c.broken.is_none() {
        for (group, &n) in &c.sent {
            let got = own.get(group.as_str());
            let missing: Vec<u64> = (0..n).filter(|s| !got.is_some_and(|g| g.contains(s))).collect();
            if !missing.is_empty() {
                r.add(
                    Kind::OwnMissing,
                    format!(
                        "client {} never got {} of its {n} messages to {group} back (first #{}, last #{})",
                        c.name,
                        missing.len(),
                        missing[0],
                        missing[missing.len() - 1]
                    ),
                );
            }
        }
    }
}

/// The messages a client delivered, in order.
fn order(c: &ClientLog) -> Vec<MsgId<'_>> {
    c.events
        .iter()
        .filter_map(|e| match e {
            Ev::Deliver { group, sender, seq, .. } => Some((group.as_str(), sender.as_str(), *seq)),
            _ => None,
        })
        .collect()
}

/// Any two messages two clients both delivered come in the same order.
fn total_order(clients: &[ClientLog], r: &mut Report) {
    let orders: Vec<Vec<MsgId<'_>>> = clients.iter().map(order).collect();
    for (a, oa) in orders.iter().enumerate() {
        let pos: HashMap<MsgId<'_>, usize> = oa.iter().enumerate().map(|(i, m)| (*m, i)).collect();
        for (b, ob) in orders.iter().enumerate().skip(a + 1) {
            let mut prev: Option<(usize, MsgId<'_>)> = None;
            for m in ob {
                let Some(&p) = pos.get(m) else { continue };
                if let Some((q, pm)) = prev {
                    if p < q {
                        r.add(
                            Kind::TotalOrder,
                            format!(
                                "clients {} and {} delivered {}/{}#{} and {}/{}#{} in opposite orders",
                                clients[a].name, clients[b].name, pm.0, pm.1, pm.2, m.0, m.1, m.2
                            ),
                        );
                        break; // one per pair
                    }
                }
                prev = Some((p, *m));
            }
        }
    }
}

/// Per client and VS group: the regular views in order, each with the
/// messages delivered while it was the current one.
fn vs_views<'a>(c: &'a ClientLog, group: &str) -> Vec<(Vid, HashSet<MsgId<'a>>)> {
    let mut out: Vec<(Vid, HashSet<MsgId<'a>>)> = Vec::new();
    for e in &c.events {
        match e {
            Ev::View { group: g, id, transitional: false, .. } if g == group => {
                out.push((*id, HashSet::new()))
            }
            Ev::Deliver { group: g, sender, seq, .. } if g == group => {
                if let Some((_, set)) = out.last_mut() {
                    set.insert((g.as_str(), sender.as_str(), *seq));
                }
            }
            _ => {}
        }
    }
    out
}

/// Clients that move from one VS view to the same next one delivered the
/// same messages in it.
fn same_set(clients: &[ClientLog], vs_groups: &[&str], r: &mut Report) {
    for group in vs_groups {
        // (view, next view) -> the first client seen there and its set.
        let mut moves: HashMap<(Vid, Vid), (&str, HashSet<MsgId<'_>>)> = HashMap::new();
        for c in clients {
            let views = vs_views(c, group);
            for w in views.windows(2) {
                let key = (w[0].0, w[1].0);
                match moves.get(&key) {
                    None => {
                        moves.insert(key, (c.name.as_str(), w[0].1.clone()));
                    }
                    Some((other, set)) if *set != w[0].1 => {
                        // How many, and the first few by sender and counter.
                        let show = |a: &HashSet<MsgId<'_>>, b: &HashSet<MsgId<'_>>| {
                            let mut d: Vec<_> = a.difference(b).map(|m| (m.1, m.2)).collect();
                            d.sort_unstable();
                            let first: Vec<String> =
                                d.iter().take(4).map(|(s, q)| format!("{s}#{q}")).collect();
                            format!(
                                "{} ({}{})",
                                d.len(),
                                first.join(" "),
                                if d.len() > 4 { " ..." } else { "" }
                            )
                        };
                        r.add(
                            Kind::SameSet,
                            format!(
                                "{group}: {other} and {} moved from view {:?} to {:?} together, but {other} delivered {} messages there that {} did not, and {} {} that {other} did not",
                                c.name,
                                key.0,
                                key.1,
                                show(set, &w[0].1),
                                c.name,
                                c.name,
                                show(&w[0].1, set)
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// The clients alive at the end share one regular view of each group they
/// are in, and it holds exactly them.
fn final_view(clients: &[ClientLog], r: &mut Report) {
    let alive: Vec<&ClientLog> = clients.iter().filter(|c| c.broken.is_none()).collect();
    let names: Vec<&str> = {
        let mut v: Vec<&str> = alive.iter().map(|c| c.name.as_str()).collect();
        v.sort_unstable();
        v
    };
    let mut groups: Vec<&str> = alive
        .iter()
        .flat_map(|c| c.events.iter())
        .filter_map(|e| match e {
            Ev::View { group, .. } => Some(group.as_str()),
            _ => None,
        })
        .collect();
    groups.sort_unstable();
    groups.dedup();
    for group in groups {
        let mut first: Option<(&str, Vid)> = None;
        for c in &alive {
            let last = c.events.iter().rev().find_map(|e| match e {
                Ev::View { group: g, id, transitional: false, members, .. } if g == group => {
                    Some((id, members))
                }
                _ => None,
            });
            let Some((id, members)) = last else {
                r.add(Kind::FinalView, format!("{group}: client {} has no view of it at the end", c.name));
                continue;
            };
            let mut m: Vec<&str> = members.iter().map(String::as_str).collect();
            m.sort_unstable();
            if m != names {
                r.add(
                    Kind::FinalView,
                    format!(
                        "{group}: client {} ends in view {id:?} of {m:?}, not of the live clients {names:?}",
                        c.name
                    ),
                );
            }
            match first {
                None => first = Some((&c.name, *id)),
                Some((other, oid)) if oid != *id => r.add(
                    Kind::FinalView,
                    format!("{group}: client {} ends in view {id:?}, client {other} in {oid:?}", c.name),
                ),
                Some(_) => {}
            }
        }
    }
}

/// The longest time a measured client went without a delivery in `w`.
fn gap(clients: &[ClientLog], w: &Window) -> Gap {
    let mut longest: Option<(Duration, String)> = None;
    for c in clients {
        // Measured: lived through the whole window, on a daemon the fault
        // leaves running.
        if w.excluded.contains(&c.daemon) || c.start > w.start || c.end < w.end {
            continue;
        }
        let mut prev = w.start;
        let mut worst = Duration::ZERO;
        for e in &c.events {
            let at = e.at();
            if !matches!(e, Ev::Deliver { .. }) || at < w.start {
                continue;
            }
            if at > w.end {
                break;
            }
            worst = worst.max(at - prev);
            prev = at;
        }
        worst = worst.max(w.end - prev);
        if longest.as_ref().is_none_or(|(l, _)| worst > *l) {
            longest = Some((worst, c.name.clone()));
        }
    }
    Gap { fault: w.name.clone(), longest }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn view(at: u64, group: &str, id: Vid, members: &[&str]) -> Ev {
        Ev::View {
            at: ms(at),
            group: group.into(),
            id,
            transitional: false,
            cause: "join".into(),
            members: members.iter().map(|m| (*m).to_string()).collect(),
        }
    }

    fn trans(at: u64, group: &str, id: Vid) -> Ev {
        Ev::View {
            at: ms(at),
            group: group.into(),
            id,
            transitional: true,
            cause: "network".into(),
            members: vec![],
        }
    }

    fn msg(at: u64, group: &str, sender: &str, seq: u64, sent_view: Option<Vid>) -> Ev {
        Ev::Deliver { at: ms(at), group: group.into(), sender: sender.into(), seq, sent_view }
    }

    fn client(name: &str, sent: &[(&str, u64)], events: Vec<Ev>) -> ClientLog {
        ClientLog {
            name: name.into(),
            daemon: 0,
            start: ms(0),
            end: ms(10_000),
            broken: None,
            sent: sent.iter().map(|(g, n)| ((*g).to_string(), *n)).collect(),
            events,
            stale_flush_ok: 0,
        }
    }

    const V1: Vid = (1, 0, 1);
    const V2: Vid = (2, 0, 2);

    /// Two clients `a` and `b` in group `g`, each sending two messages,
    /// both delivering all four in the same order: clean.
    fn good() -> Vec<ClientLog> {
        let events = || {
            vec![
                view(0, "g", V1, &["a", "b"]),
                msg(10, "g", "a", 0, None),
                msg(20, "g", "b", 0, None),
                msg(30, "g", "a", 1, None),
                msg(40, "g", "b", 1, None),
            ]
        };
        vec![client("a", &[("g", 2)], events()), client("b", &[("g", 2)], events())]
    }

    fn kinds(r: &Report) -> Vec<Kind> {
        r.counts().into_keys().collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let r = check(&good(), &[], &[]);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.deliveries, r.sent, r.views), (8, 4, 2));
    }

    #[test]
    fn phantoms_and_duplicates_are_caught() {
        let mut h = good();
        h[0].events.push(msg(50, "g", "b", 7, None)); // b sent 0..2
        h[1].events.push(msg(50, "g", "nobody", 0, None));
        h[1].events.push(msg(60, "g", "a", 1, None));
        let r = check(&h, &[], &[]);
        let c = r.counts();
        assert_eq!(c.get(&Kind::Phantom), Some(&2), "{:?}", r.violations);
        assert_eq!(c.get(&Kind::Duplicate), Some(&1), "{:?}", r.violations);
    }

    #[test]
    fn opposite_orders_at_two_clients_are_caught() {
        let mut h = good();
        h[1].events.swap(2, 3); // b: b#0 before a#0 ... a#0 at position 2
        let r = check(&h, &[], &[]);
        assert_eq!(kinds(&r), vec![Kind::TotalOrder], "{:?}", r.violations);
    }

    #[test]
    fn fifo_breaks_and_gaps_inside_a_view_are_caught_but_not_gaps_across_views() {
        // a delivers b#1 before b#0: FIFO (b#0 is then below the last).
        let mut h = good();
        h[0].events.swap(2, 4);
        let r = check(&h, &[], &[]);
        assert!(r.counts().contains_key(&Kind::Fifo), "{:?}", r.violations);
        // b#0 missing at a inside a view, with b#1 delivered: a gap only
        // if no view event separates them.
        let events =
            vec![view(0, "g", V1, &["a", "b"]), msg(10, "g", "b", 0, None), msg(20, "g", "b", 2, None)];
        let r = check(&[client("a", &[], events), client("b", &[("g", 3)], vec![])], &[], &[]);
        assert_eq!(r.counts().get(&Kind::GapInView), Some(&1), "{:?}", r.violations);
        let events = vec![
            view(0, "g", V1, &["a", "b"]),
            msg(10, "g", "b", 0, None),
            trans(15, "g", V1),
            msg(20, "g", "b", 2, None),
        ];
        let r = check(&[client("a", &[], events), client("b", &[("g", 3)], vec![])], &[], &[]);
        let c = r.counts();
        assert!(!c.contains_key(&Kind::GapInView) && !c.contains_key(&Kind::Fifo), "{:?}", r.violations);
    }

    #[test]
    fn own_messages_missing_are_caught_unless_the_connection_broke() {
        let mut h = good();
        h[0].sent.insert("g".into(), 3);
        let r = check(&h, &[], &[]);
        assert_eq!(kinds(&r), vec![Kind::OwnMissing]);
        assert!(r.violations[0].text.contains("1 of its 3"), "{}", r.violations[0].text);
        h[0].broken = Some("connection: broken pipe".into());
        let r = check(&h, &[], &[]);
        // Not missing any more; the final view now lacks the dead client.
        assert_eq!(kinds(&r), vec![Kind::FinalView], "{:?}", r.violations);
    }

    #[test]
    fn vs_sending_view_and_same_set_are_checked() {
        let events = |extra: bool| {
            let mut v = vec![view(0, "vs", V1, &["a", "b"]), msg(10, "vs", "a", 0, Some(V1))];
            if extra {
                v.push(msg(20, "vs", "a", 1, Some(V1)));
            }
            v.push(view(30, "vs", V2, &["a", "b"]));
            v
        };
        let ok = [client("a", &[("vs", 1)], events(false)), client("b", &[], events(false))];
        let r = check(&ok, &["vs"], &[]);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // a delivered a#1 in V1, b did not, and both moved to V2.
        let bad = [client("a", &[("vs", 2)], events(true)), client("b", &[], events(false))];
        let r = check(&bad, &["vs"], &[]);
        assert_eq!(kinds(&r), vec![Kind::SameSet], "{:?}", r.violations);
        // A message sent in V1 and delivered in V2.
        let mut late = events(false);
        late.push(msg(40, "vs", "a", 1, Some(V1)));
        let r = check(&[client("a", &[("vs", 2)], late), client("b", &[], events(false))], &["vs"], &[]);
        assert_eq!(kinds(&r), vec![Kind::SendingView], "{:?}", r.violations);
    }

    #[test]
    fn a_split_final_view_is_caught() {
        let mut h = good();
        h[1].events.push(view(50, "g", V2, &["b"]));
        let r = check(&h, &[], &[]);
        assert_eq!(r.counts().get(&Kind::FinalView), Some(&2), "{:?}", r.violations);
    }

    #[test]
    fn wrong_events_are_reported() {
        let mut h = good();
        h[0].events.push(Ev::Wrong { at: ms(5), what: "error NotMember".into() });
        assert_eq!(kinds(&check(&h, &[], &[])), vec![Kind::Reported]);
    }

    #[test]
    fn a_view_change_in_a_quiet_interval_is_a_spurious_change() {
        let clients = good();
        let mut r = Report::default();
        spurious_changes(&clients, &[(ms(1000), ms(2000))], &mut r);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        let first_view = clients[0].events.iter().find(|e| matches!(e, Ev::View { .. })).unwrap().at();
        spurious_changes(&clients, &[(first_view, first_view + ms(1))], &mut r);
        assert!(kinds(&r).contains(&Kind::SpuriousChange), "{:?}", r.violations);
    }

    #[test]
    fn the_delivery_gap_is_the_longest_silence_in_the_window() {
        let h = good();
        let w = |excluded: Vec<usize>| Window { name: "cut".into(), start: ms(5), end: ms(100), excluded };
        let r = check(&h, &[], &[w(vec![])]);
        // Deliveries at 10, 20, 30, 40: the longest silence is 40 -> 100.
        let (g, _) = r.gaps[0].longest.clone().unwrap();
        assert_eq!(g, ms(60));
        let r = check(&h, &[], &[w(vec![0])]);
        assert!(r.gaps[0].longest.is_none());
    }
}
