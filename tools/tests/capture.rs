//! The wire capture of `common::capture` sees what crosses the wire, so a
//! test that finds nothing in it has shown something.
//!
//! - Positive control: with `link_security = "none"` a client's message is
//!   found in the daemon-to-daemon datagrams, and in the client's TCP
//!   stream through the recording proxy.
//! - With `link_security = "encrypt"` the same message reaches a client on
//!   another daemon, yet it is in none of the datagrams the daemons
//!   exchanged: they carry it sealed under the ring's link key (AES-GCM,
//!   RFC 5116, keyed by TGDH: Kim, Perrig and Tsudik, ACM TISSEC 7(1), 2004).
//!
//! Each test body runs on every socket backend (`common::backends`), the
//! backends side by side.

use ringfence_client::{Address, Client, Event, Service};
use serde_json::Value;
use std::time::{Duration, Instant};

mod common;

use common::capture::{Capture, TcpTap};
use common::{Cluster, backends, connect, connect_token, receive_until, token_config};

/// The plaintext no datagram of an encrypted ring may contain.
const MARKER: &[u8] = b"RFCAPTURE-PLAINTEXT-MARKER";
/// The group the clients share.
const GROUP: &str = "capture";

/// Runs `body` once per socket backend, side by side.
fn on_every_backend(body: fn(&str)) {
    std::thread::scope(|s| {
        for backend in backends() {
            s.spawn(move || body(backend));
        }
    });
}

/// Both clients join `GROUP` and wait (at most 20 s each) for the view
/// with both of them.
fn join_both(sender: &mut Client, receiver: &mut Client) {
    for c in [&mut *sender, &mut *receiver] {
        c.join(GROUP).unwrap();
    }
    for c in [sender, receiver] {
        receive_until(c, |e| matches!(e, Event::Membership(v) if v.group == GROUP && v.members.len() == 2));
    }
}

/// `sender` multicasts a message carrying `MARKER`; waits (at most 20 s)
/// until `receiver` delivers it.
fn send_marker(sender: &mut Client, receiver: &mut Client) {
    let payload = [b"before ".as_slice(), MARKER, b" after"].concat();
    sender.multicast(Service::Agreed, &[GROUP], 0, &payload).unwrap();
    receive_until(receiver, |e| matches!(e, Event::Message(m) if m.payload[..] == payload[..]));
}

/// Waits (at most 20 s) until every daemon's status file shows one ring of
/// all of them, with no datagram dropped for its source address and no
/// peer refused for its security settings: per-daemon configs that differ
/// in peer addresses only are one cluster to the daemons.
fn wait_whole_ring(cluster: &Cluster, n: usize) {
    let all: Vec<u64> = (0..n as u64).collect();
    for i in 0..n {
        let path = cluster.dir.join(format!("d{i}")).join("status.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s: Option<Value> =
                std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok());
            if let Some(s) = &s {
                assert_eq!(s["runtime"]["unknown_sources"], 0, "d{i}: {s:#}");
                assert_eq!(s["security"]["settings_mismatch"].as_u64().unwrap_or(0), 0, "d{i}: {s:#}");
                let members: Vec<u64> = s["ring"]["members"]
                    .as_array()
                    .map_or_else(Vec::new, |m| m.iter().filter_map(Value::as_u64).collect());
                if members == all {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "d{i}: no ring of all {n}; last status: {s:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Positive control: unprotected links carry the client's message as
/// sent, and the tap finds it; so does the TCP proxy in front of the
/// sender's daemon.
#[test]
fn the_tap_sees_plaintext_on_unprotected_links() {
    on_every_backend(plaintext_on);
}

fn plaintext_on(backend: &str) {
    let (cluster, tap) = Cluster::start_tapped_extra("cap-none", 3, backend, "none", &token_config());
    let proxy = TcpTap::start(cluster.tcp(0), Capture::new());
    let mut sender = connect_token(&Address::Tcp(proxy.address()), "sender");
    let mut receiver = connect(&cluster.socket(2), "receiver");
    join_both(&mut sender, &mut receiver);
    send_marker(&mut sender, &mut receiver);
    wait_whole_ring(&cluster, 3);

    let udp = tap.capture();
    assert!(udp.datagrams() > 0, "the tap forwarded nothing");
    assert!(udp.contains(MARKER), "the marker is in none of {} datagrams", udp.datagrams());
    let tcp = proxy.capture();
    assert!(tcp.tcp_bytes() > 0, "the proxy recorded nothing");
    assert!(tcp.contains(MARKER), "the marker is not in the {} TCP bytes", tcp.tcp_bytes());
}

/// Encrypted links: the message is delivered on another daemon, so it
/// crossed the tap, but no datagram contains it.
#[test]
fn encrypted_links_carry_no_payload_plaintext() {
    on_every_backend(encrypted_on);
}

fn encrypted_on(backend: &str) {
    let (cluster, tap) = Cluster::start_tapped("cap-encrypt", 3, backend, "encrypt");
    let mut sender = connect(&cluster.socket(0), "sender");
    let mut receiver = connect(&cluster.socket(2), "receiver");
    join_both(&mut sender, &mut receiver);
    send_marker(&mut sender, &mut receiver);
    wait_whole_ring(&cluster, 3);

    let udp = tap.capture();
    assert!(udp.datagrams() > 0, "the tap forwarded nothing");
    assert!(
        !udp.contains(MARKER),
        "the marker crossed the wire in plaintext ({} datagrams captured)",
        udp.datagrams()
    );
}
