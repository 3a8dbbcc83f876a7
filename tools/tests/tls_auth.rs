//! Client authentication over TCP with real processes on loopback
//! (docs/security.md, "Client authentication"; docs/client-protocol.md
//! section 2.2): a daemon with `[clients] tls_cert`, `client_ca` and a token;
//! certificates made by `ringfence keygen ca` / `keygen cert`.
//!
//! - a client with a certificate from the cluster CA connects over TLS and
//!   exchanges messages with a Unix-socket client, and no plaintext crosses
//!   TCP (a recording proxy sits between it and the daemon);
//! - no certificate and no token: refused, "no valid client certificate";
//! - a certificate from another CA: the TLS handshake fails;
//! - a token over TLS: accepted; a wrong token: refused, "unknown token";
//! - plain TCP under `require_tls`: refused, "requires TLS";
//! - `auth_failures` in status.json counts the four failures.

use ringfence_client::{Address, Client, ClientError, ConnectOptions, Event, Service, TlsOptions};
use ringfence_proto::wire::client::RefuseCode;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::capture::{Capture, TcpTap};
use common::{Cluster, Pki, connect, connect_with, receive_until};

/// A payload no TLS record may show in the clear.
const MARKER: &str = "PLAINTEXT-MARKER-5e1f0c";
/// The answer's marker.
const REPLY: &str = "REPLY-MARKER-a93d77";
const TOKEN: &str = "bob-secret-token-0042";

/// The daemon's `auth_failures` once it reaches `want` (status.json is
/// written every 500 ms), or what it was after 10 s.
fn auth_failures(state: &Path, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(state.join("status.json")) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            last = v["auth_failures"].as_u64().expect("auth_failures in status.json");
            if last >= want {
                // One more status period: nothing else may be counted.
                std::thread::sleep(Duration::from_millis(600));
                let text = std::fs::read_to_string(state.join("status.json")).unwrap();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                return v["auth_failures"].as_u64().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    last
}

#[test]
fn tcp_clients_authenticate_with_certificates_or_tokens() {
    let started = Instant::now();
    // The cluster's CA (server certificate "daemons", client "alice") and
    // another CA that signed "mallory".
    let pki = Pki::new("tls", &["alice"], TOKEN);
    let other = Pki::new("tls-other", &["mallory"], TOKEN);
    let clients = pki.clients_section.clone();
    let cluster = Cluster::start_with("tls", 1, "portable", "unicast", &clients);
    let tcp: SocketAddr = format!("127.0.0.1:{}", cluster.tcp_ports[0]).parse().unwrap();
    let proxy = TcpTap::start(tcp, Capture::new());
    let via_proxy = Address::Tcp(proxy.address());

    // A Unix-socket client and a TLS client with a CA-signed certificate
    // exchange messages; the TLS one goes through the recording proxy.
    let mut unix = connect(&cluster.socket(0), "ursula");
    unix.join("chat").unwrap();
    let alice_opts = ConnectOptions { tls: Some(pki.tls(Some("alice"))), token: None };
    let mut alice = connect_with(&via_proxy, "alice", &alice_opts);
    assert!(alice.is_tls());
    alice.join("chat").unwrap();
    receive_until(
        &mut unix,
        |e| matches!(e, Event::Membership(v) if v.group == "chat" && v.members.len() == 2),
    );
    receive_until(
        &mut alice,
        |e| matches!(e, Event::Membership(v) if v.group == "chat" && v.members.len() == 2),
    );
    alice.multicast(Service::Agreed, &["chat"], 0, MARKER.as_bytes()).unwrap();
    let got = receive_until(
        &mut unix,
        |e| matches!(e, Event::Message(m) if m.payload.as_ref() == MARKER.as_bytes()),
    );
    let Some(Event::Message(m)) = got.last() else { unreachable!() };
    assert!(m.sender.starts_with("#alice#"), "{}", m.sender);
    unix.multicast(Service::Agreed, &["chat"], 0, REPLY.as_bytes()).unwrap();
    // `poll` (nonblocking) over TLS.
    receive_until(&mut alice, |e| matches!(e, Event::Message(m) if m.payload.as_ref() == REPLY.as_bytes()));
    alice.disconnect().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    {
        let seen = proxy.capture();
        assert!(seen.tcp_bytes() > 1000, "the proxy saw the TLS session ({} bytes)", seen.tcp_bytes());
        for stream in seen.tcp_streams().iter().filter(|s| !s.is_empty()) {
            assert_eq!(stream[0], 0x16, "a TLS handshake record first, both ways");
        }
        assert!(!seen.contains(MARKER.as_bytes()), "the payload crossed TCP in the clear");
        assert!(!seen.contains(REPLY.as_bytes()), "the reply crossed TCP in the clear");
        assert!(!seen.contains(b"ursula") && !seen.contains(b"chat"), "names crossed TCP in the clear");
    }

    let tcp_addr = Address::Tcp(tcp);
    // 1. TLS without a certificate or a token.
    let bare = ConnectOptions { tls: Some(pki.tls(None)), token: None };
    match Client::connect_with(&tcp_addr, "nobody", &bare) {
        Err(ClientError::Refused { code: RefuseCode::AuthFailed, text }) => {
            assert_eq!(text, "no valid client certificate");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // 2. A certificate from another CA: the handshake fails.
    let foreign = ConnectOptions {
        tls: Some(TlsOptions { ca_cert: pki.dir.join("ca").join("ca.crt"), ..other.tls(Some("mallory")) }),
        token: None,
    };
    match Client::connect_with(&tcp_addr, "mallory", &foreign) {
        Err(e @ ClientError::Tls(_)) => assert!(e.to_string().contains("TLS handshake"), "{e}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    // 3. A token over TLS, right and wrong.
    let bob = ConnectOptions { tls: Some(pki.tls(None)), token: Some(TOKEN.into()) };
    let c = Client::connect_with(&tcp_addr, "bob", &bob).expect("a valid token is accepted");
    assert!(c.private_name().starts_with("#bob#"));
    c.disconnect().unwrap();
    let wrong = ConnectOptions { tls: Some(pki.tls(None)), token: Some("guess".into()) };
    match Client::connect_with(&tcp_addr, "eve", &wrong) {
        Err(ClientError::Refused { code: RefuseCode::AuthFailed, text }) => assert_eq!(text, "unknown token"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // 4. Plain TCP (even with the right token) under require_tls.
    let plain = ConnectOptions { tls: None, token: Some(TOKEN.into()) };
    match Client::connect_with(&tcp_addr, "plain", &plain) {
        Err(ClientError::Refused { code: RefuseCode::AuthUnsupported, text }) => {
            assert!(text.contains("requires TLS"), "{text}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Plain TCP with nothing: the library refuses before connecting.
    let e = Client::connect(&tcp_addr, "none").unwrap_err();
    assert!(matches!(e, ClientError::Options(_)), "{e}");

    assert_eq!(auth_failures(&cluster.dir.join("d0"), 4), 4, "four failures counted");
    // The Unix client is still served.
    unix.multicast(Service::Agreed, &["chat"], 0, b"still here").unwrap();
    receive_until(&mut unix, |e| matches!(e, Event::Message(m) if m.payload.as_ref() == b"still here"));
    drop(proxy);
    drop(cluster);
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}
