//! Real daemons and clients: a daemon killed with SIGKILL under load. The
//! survivors' clients get a network membership change and keep delivering,
//! and a virtual-synchrony group keeps sending-view delivery across the
//! change: every message is delivered in the view it was sent in.

use ringfence_client::{Client, Event, Service, ViewCause, ViewId, ViewKind};
use std::time::{Duration, Instant};

mod common;

use common::{Cluster, backends, connect};

/// One member of the VS group, as the test drives it.
struct Member {
    client: Client,
    view: Option<(ViewId, usize)>,
    flushing: bool,
    sent: u64,
    delivered: u64,
    /// Messages delivered in a regular view of 2 members after the kill.
    after: u64,
    network_view: bool,
    transitional_first: bool,
    seen_transitional: bool,
}

fn encode_view(v: ViewId) -> String {
    format!("{}.{}.{}", v.ring_seq, v.ring_rep, v.counter)
}

/// One test body, both socket backends, one after the other.
#[test]
fn kill_under_load_keeps_delivering_and_sending_view_delivery() {
    for backend in backends() {
        kill_under_load_on(backend);
    }
}

fn kill_under_load_on(backend: &str) {
    let mut daemons = Cluster::start("fail", 3, backend);
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let mut client = connect(&daemons.socket(i), &format!("m{i}"));
            client.join_vs("vs").unwrap();
            Member {
                client,
                view: None,
                flushing: false,
                sent: 0,
                delivered: 0,
                after: 0,
                network_view: false,
                transitional_first: false,
                seen_transitional: false,
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut killed = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out: delivered {:?}",
            members.iter().map(|m| (m.delivered, m.after)).collect::<Vec<_>>()
        );
        // Kill d2 once everyone is in a 3-member view and traffic flows.
        if !killed && members.iter().all(|m| m.view.is_some_and(|(_, n)| n == 3) && m.delivered >= 100) {
            daemons.kill(2);
            drop(members.pop());
            killed = true;
        }
        for m in &mut members {
            while let Some(e) = m.client.poll().unwrap() {
                match e {
                    Event::Membership(v) if v.group == "vs" => {
                        if v.kind == ViewKind::Transitional {
                            m.seen_transitional = true;
                            continue;
                        }
                        if killed && v.members.len() == 2 && v.cause == ViewCause::Network {
                            m.network_view = true;
                            m.transitional_first = m.seen_transitional;
                        }
                        m.view = Some((v.view_id, v.members.len()));
                        m.flushing = false;
                    }
                    Event::FlushRequest { group, view_id } => {
                        m.client.flush_ok(&group, view_id).unwrap();
                        m.flushing = true;
                    }
                    Event::Message(msg) => {
                        let text = String::from_utf8_lossy(&msg.payload).into_owned();
                        let sent_in = text.split(' ').nth(1).unwrap().to_string();
                        let (now_view, n) = m.view.expect("a message before any view");
                        assert_eq!(
                            sent_in,
                            encode_view(now_view),
                            "message {text} delivered in another view"
                        );
                        m.delivered += 1;
                        if killed && n == 2 {
                            m.after += 1;
                        }
                    }
                    _ => {}
                }
            }
            if let Some((v, _)) = m.view {
                if !m.flushing && m.sent < 100_000 {
                    let text = format!("{} {}", m.sent, encode_view(v));
                    m.client.multicast(Service::Agreed, &["vs"], 0, text.as_bytes()).unwrap();
                    m.sent += 1;
                }
            }
        }
        if killed && members.iter().all(|m| m.network_view && m.after >= 200) {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for m in &members {
        assert!(m.transitional_first, "the network view came without the transitional signal first");
    }
}

/// A client that stops reading is disconnected with the stated reason once
/// its bounded queue is full; the daemon and the other clients go on.
#[test]
fn a_slow_consumer_is_disconnected_with_a_reason() {
    let cluster = Cluster::start("slow", 1, "auto");
    let mut slow = connect(&cluster.socket(0), "slow");
    let mut fast = connect(&cluster.socket(0), "fast");
    slow.join("g").unwrap();
    fast.join("g").unwrap();
    fast.set_self_discard(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    // Wait for the view, then send about 48 MiB while `slow` reads nothing.
    while !matches!(fast.poll().unwrap(), Some(Event::Membership(v)) if v.members.len() == 2) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    let payload = vec![7u8; 64 * 1024];
    for _ in 0..768 {
        fast.multicast(Service::Agreed, &["g"], 0, &payload).unwrap();
    }
    let reason = loop {
        assert!(Instant::now() < deadline, "the slow client was never disconnected");
        match slow.poll() {
            Ok(_) => std::thread::sleep(Duration::from_millis(2)),
            Err(ringfence_client::ClientError::Disconnected { reason, .. }) => break reason,
            Err(e) => panic!("unexpected error: {e}"),
        }
    };
    assert_eq!(reason, ringfence_proto::wire::client::ByeReason::SlowConsumer);
    // The daemon is still up: the other client still talks to it.
    fast.set_self_discard(false);
    fast.multicast(Service::Agreed, &["g"], 0, b"still here").unwrap();
    let got = common::receive_until(
        &mut fast,
        |e| matches!(e, Event::Message(m) if &m.payload[..] == b"still here"),
    );
    assert!(!got.is_empty());
}
