//! Real daemons: a virtual-synchrony group while one daemon is paused
//! (`kill -STOP` for 0.45-0.9 s, then `-CONT`) again and again under load, the
//! schedule that broke same-set and FIFO inside a view in issue 15. Each
//! member checks every message it gets against what its sender sent:
//! delivered in the view it was sent in, each sender's messages of a view
//! in order without a gap, its own all back, and members moving together
//! from one view to the next delivered the same messages in it.

use ringfence_client::{Client, Event, Service, ViewId, ViewKind};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

mod common;

use common::{Cluster, connect};

struct Member {
    client: Client,
    /// The regular view held (id, member count).
    view: Option<(ViewId, usize)>,
    flushing: bool,
    /// Next sequence number to send.
    sent: u64,
    /// What it sent per view: first and last sequence numbers.
    sent_in: BTreeMap<ViewId, (u64, u64)>,
    /// Regular views in order, each with the messages delivered in it
    /// ((sender, seq) in delivery order).
    views: Vec<(ViewId, Vec<(usize, u64)>)>,
}

/// Messages delivered in a view: (sender, sequence number).
type Delivered = BTreeSet<(usize, u64)>;

fn view_text(v: ViewId) -> String {
    format!("{}.{}.{}", v.ring_seq, v.ring_rep, v.counter)
}

#[test]
fn vs_group_keeps_same_set_and_fifo_while_a_daemon_is_paused() {
    // `RINGFENCE_VS_DAEMONS=5` runs the five daemons by hand.
    let n: usize = std::env::var("RINGFENCE_VS_DAEMONS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let paused = n - 1;
    let daemons = Cluster::start("vspause", n, "auto");
    let mut members: Vec<Member> = (0..n)
        .map(|i| {
            let mut client = connect(&daemons.socket(i), &format!("m{i}"));
            client.join_vs("vs").unwrap();
            Member {
                client,
                view: None,
                flushing: false,
                sent: 0,
                sent_in: BTreeMap::new(),
                views: Vec::new(),
            }
        })
        .collect();
    let mut violations = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Pause schedule, once traffic flows: pauses 1.5 s apart, from 0.45 s
    // (as in issue 15) to 0.9 s, around the time the others take to form a
    // ring without the paused daemon: a merge may come before a flush ends.
    let mut pauses: Vec<(Instant, Instant)> = Vec::new();
    let mut stopped = false;
    let mut sending = true;
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out: {:?}",
            members.iter().map(|m| m.view).collect::<Vec<_>>()
        );
        let now = Instant::now();
        if pauses.is_empty()
            && members.iter().all(|m| m.view.is_some_and(|(_, k)| k == n))
            && members.iter().all(|m| m.views.last().is_some_and(|v| v.1.len() >= 100))
        {
            pauses = [450, 500, 550, 600, 650, 700, 800, 900]
                .iter()
                .zip(0u64..)
                .map(|(ms, k)| {
                    let at = now + Duration::from_millis(1500 * k);
                    (at, at + Duration::from_millis(*ms))
                })
                .collect();
        }
        let paused_now = pauses.iter().any(|(a, b)| now >= *a && now < *b);
        if paused_now && !stopped {
            daemons.signal(paused, "STOP");
            stopped = true;
        } else if !paused_now && stopped {
            daemons.signal(paused, "CONT");
            stopped = false;
        }
        let done_pausing = pauses.last().is_some_and(|(_, end)| now > *end + Duration::from_secs(2));
        if done_pausing {
            sending = false;
        }
        for (i, m) in members.iter_mut().enumerate() {
            if stopped && i == paused {
                continue; // its daemon cannot answer
            }
            while let Some(e) = m.client.poll().unwrap() {
                match e {
                    Event::Membership(v) if v.group == "vs" && v.kind == ViewKind::Regular => {
                        m.view = Some((v.view_id, v.members.len()));
                        m.views.push((v.view_id, Vec::new()));
                        m.flushing = false;
                    }
                    Event::FlushRequest { group, view_id } => {
                        m.client.flush_ok(&group, view_id).unwrap();
                        m.flushing = true;
                    }
                    Event::Message(msg) => {
                        let text = String::from_utf8_lossy(&msg.payload).into_owned();
                        let mut f = text.split(' ');
                        let from: usize = f.next().unwrap().parse().unwrap();
                        let seq: u64 = f.next().unwrap().parse().unwrap();
                        let sent_in = f.next().unwrap().to_string();
                        let Some((here, _)) = m.view else {
                            violations.push(format!("m{i}: message {text} before any view"));
                            continue;
                        };
                        if sent_in != view_text(here) {
                            violations.push(format!("m{i}: message {text} delivered in {}", view_text(here)));
                        }
                        if let Some(v) = m.views.last_mut() {
                            v.1.push((from, seq));
                        }
                    }
                    _ => {}
                }
            }
            if let (true, false, Some((v, _))) = (sending, m.flushing, m.view) {
                let text = format!("{i} {} {}", m.sent, view_text(v));
                m.client.multicast(Service::Agreed, &["vs"], 0, text.as_bytes()).unwrap();
                let e = m.sent_in.entry(v).or_insert((m.sent, m.sent));
                e.1 = m.sent;
                m.sent += 1;
            }
        }
        // Done: everyone in one view of all members, every own message back.
        let own_back = |i: usize, m: &Member| {
            m.views.iter().flat_map(|v| v.1.iter()).filter(|(from, _)| *from == i).count() as u64 == m.sent
        };
        let same_view = members.iter().all(|m| m.view.is_some_and(|(_, k)| k == n))
            && members.iter().all(|m| m.view.map(|v| v.0) == members[0].view.map(|v| v.0));
        if !sending && same_view && members.iter().enumerate().all(|(i, m)| own_back(i, m)) {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    // FIFO without gaps inside a view; own messages all back in their view.
    for (i, m) in members.iter().enumerate() {
        for (view, got) in &m.views {
            let mut by_sender: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
            for (from, seq) in got {
                by_sender.entry(*from).or_default().push(*seq);
            }
            for (from, seqs) in &by_sender {
                let Some(&(first, last)) = members[*from].sent_in.get(view) else {
                    violations.push(format!("m{i}: m{from} sent nothing in {}", view_text(*view)));
                    continue;
                };
                let expected: Vec<u64> = (first..=last).take(seqs.len()).collect();
                if *seqs != expected {
                    let at = seqs.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(0);
                    violations.push(format!(
                        "m{i}: m{from}'s messages in {} with a gap: got {:?} where {:?} were sent",
                        view_text(*view),
                        &seqs[at..seqs.len().min(at + 3)],
                        &expected[at..expected.len().min(at + 3)]
                    ));
                }
                if *from == i && seqs.len() as u64 != last - first + 1 {
                    violations.push(format!(
                        "m{i}: {} of its {} messages of {} back",
                        seqs.len(),
                        last - first + 1,
                        view_text(*view)
                    ));
                }
            }
        }
    }
    // Same set: members going from one view to the same next view.
    // (view, next view) -> the first member seen moving so, and what it
    // delivered in the first.
    let mut moved: BTreeMap<(ViewId, ViewId), (usize, Delivered)> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        for w in m.views.windows(2) {
            let set: Delivered = w[0].1.iter().copied().collect();
            match moved.get(&(w[0].0, w[1].0)) {
                Some((j, other)) if *other != set => violations.push(format!(
                    "m{i} and m{j} moved from {} to {} having delivered {} and {} messages ({} differ)",
                    view_text(w[0].0),
                    view_text(w[1].0),
                    set.len(),
                    other.len(),
                    set.symmetric_difference(other).count()
                )),
                Some(_) => {}
                None => {
                    moved.insert((w[0].0, w[1].0), (i, set));
                }
            }
        }
    }
    let views = members.iter().map(|m| m.views.len()).collect::<Vec<_>>();
    let delivered =
        members.iter().map(|m| m.views.iter().map(|v| v.1.len()).sum::<usize>()).collect::<Vec<_>>();
    eprintln!(
        "views {views:?}, delivered {delivered:?}, sent {:?}",
        members.iter().map(|m| m.sent).collect::<Vec<_>>()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(views.iter().all(|&n| n > 3), "the pauses changed the views: {views:?}");
}
