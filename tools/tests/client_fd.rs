//! The client in an event loop, against a real daemon: its socket waits in
//! `poll(2)`, `Client::poll` is the non-blocking receive (drained until it
//! says `None`), exact reads leave every unread event in the socket, and
//! the tokio adapter receives with `.await`.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ringfence_client::{AsyncClient, Client, Event, Service};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

mod common;

use common::{Cluster, backends, connect, receive_until};

/// `poll(2)` on the client's socket for readability, at most `ms`.
fn readable(c: &Client, ms: u16) -> bool {
    let mut fds = [PollFd::new(c.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(ms)).unwrap() == 1
}

fn payloads(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(String::from_utf8_lossy(&m.payload).into_owned()),
            _ => None,
        })
        .collect()
}

/// Two clients in a group: `a` receives what `b` sends.
fn pair(cluster: &Cluster) -> (Client, Client) {
    let mut a = connect(&cluster.socket(0), "a");
    let mut b = connect(&cluster.socket(0), "b");
    a.join("g").unwrap();
    b.join("g").unwrap();
    for c in [&mut a, &mut b] {
        receive_until(c, |e| matches!(e, Event::Membership(v) if v.members.len() == 2));
    }
    (a, b)
}

#[test]
fn poll_on_the_socket_then_receive_without_blocking() {
    let cluster = Cluster::start("clientfd", 1, backends()[0]);
    let (mut a, mut b) = pair(&cluster);

    // Nothing waits: the non-blocking receive says so at once, and the
    // socket is not readable.
    let t = Instant::now();
    assert!(a.poll().unwrap().is_none());
    assert!(t.elapsed() < Duration::from_secs(1), "poll() blocked");
    assert!(!readable(&a, 0), "readable with nothing sent");

    // An event loop: wait on the socket, then drain the library.
    let sent: Vec<String> = (0..50).map(|k| format!("m{k}")).collect();
    b.multicast_batch(Service::Agreed, &["g"], 0, sent.iter().map(|s| s.as_bytes())).unwrap();
    let mut got = Vec::new();
    while payloads(&got).len() < sent.len() {
        assert!(readable(&a, 5000), "the socket never became readable; got {}", got.len());
        while let Some(e) = a.poll().unwrap() {
            got.push(e);
        }
    }
    assert_eq!(payloads(&got), sent);
    assert!(a.poll().unwrap().is_none());
    assert!(!readable(&a, 0), "readable after the last event");

    // Exact reads: every event not yet received is still in the socket, so
    // waiting on the socket before each receive never misses one.
    a.set_exact_reads(true);
    let sent: Vec<String> = (0..20).map(|k| format!("x{k}")).collect();
    b.multicast_batch(Service::Agreed, &["g"], 0, sent.iter().map(|s| s.as_bytes())).unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        assert!(readable(&a, 5000), "an event waits in the library, not in the socket; got {}", got.len());
        if let Some(e) = a.poll().unwrap() {
            got.push(e);
        }
    }
    assert_eq!(payloads(&got), sent);
    assert!(!readable(&a, 0), "readable after the last event");
}

#[test]
fn the_tokio_adapter_receives_with_await() {
    let cluster = Cluster::start("clientasync", 1, backends()[0]);
    let (a, mut b) = pair(&cluster);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().unwrap();
    let got = runtime.block_on(async move {
        let mut a = AsyncClient::new(a).unwrap();
        let sender = std::thread::spawn(move || {
            for k in 0..30 {
                b.multicast(Service::Agreed, &["g"], 0, format!("t{k}").as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            b
        });
        let mut got = Vec::new();
        while payloads(&got).len() < 30 {
            let e = tokio::time::timeout(Duration::from_secs(10), a.receive()).await;
            got.push(e.expect("no event within 10 s").unwrap());
        }
        // The client comes back out and still works.
        let mut a = a.into_inner();
        a.multicast(Service::Agreed, &["g"], 0, b"back").unwrap();
        let mut b = sender.join().unwrap();
        receive_until(&mut b, |e| matches!(e, Event::Message(m) if &m.payload[..] == b"back"));
        got
    });
    assert_eq!(payloads(&got), (0..30).map(|k| format!("t{k}")).collect::<Vec<_>>());
}
