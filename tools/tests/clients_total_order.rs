//! Real daemons and clients on loopback: three clients on three daemons join
//! one group and send concurrently; every client sees every message, in the
//! same total order, and the membership views name all three. A client that
//! disconnects leaves the others a view with cause `disconnect`. Both socket
//! backends, unicast and IP multicast transports.

use ringfence_client::{Address, Client, ConnectOptions, Event, Service, ViewCause};

mod common;

use common::{Cluster, backends, connect, connect_with, receive_until, token_entry};

/// One test body, both socket backends, one after the other.
#[test]
fn three_senders_three_daemons_one_total_order() {
    for backend in backends() {
        total_order_on(backend, "unicast");
    }
}

/// The same over the IP multicast transport (a group on loopback): the ring
/// thread receives on two sockets, the unicast one and the group's.
#[test]
fn three_senders_one_total_order_over_ip_multicast() {
    for backend in backends() {
        total_order_on(backend, "multicast");
    }
}

fn total_order_on(backend: &str, transport: &str) {
    // TCP clients need a credential: a token (plain TCP is allowed without
    // `tls_cert`; `tls_auth.rs` tests TLS).
    let clients_section = format!("\n[clients]\n{}", token_entry("c2", "order-token"));
    let cluster = Cluster::start_with("order", 3, backend, transport, &clients_section);
    // Clients 0 and 1 over the Unix socket, client 2 over TCP with a token.
    let mut clients: Vec<Client> = (0..2).map(|i| connect(&cluster.socket(i), &format!("c{i}"))).collect();
    let tcp = format!("127.0.0.1:{}", cluster.tcp_ports[2]).parse().unwrap();
    let token = ConnectOptions { tls: None, token: Some("order-token".into()) };
    clients.push(connect_with(&Address::Tcp(tcp), "c2", &token));
    for c in &mut clients {
        c.join("g").unwrap();
    }
    // Wait until every client sees a view with all three members.
    for c in &mut clients {
        receive_until(c, |e| matches!(e, Event::Membership(v) if v.group == "g" && v.members.len() == 3));
    }
    const PER_SENDER: usize = 200;
    std::thread::scope(|s| {
        for (i, c) in clients.iter_mut().enumerate() {
            s.spawn(move || {
                for k in 0..PER_SENDER {
                    let service = if k % 5 == 0 { Service::Safe } else { Service::Agreed };
                    c.multicast(service, &["g"], 0, format!("{i}:{k}").as_bytes()).unwrap();
                }
            });
        }
    });
    let mut orders: Vec<Vec<String>> = Vec::new();
    for c in &mut clients {
        let mut n = 0;
        let events = receive_until(c, |e| {
            if matches!(e, Event::Message(_)) {
                n += 1;
            }
            n == 3 * PER_SENDER
        });
        let order: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(String::from_utf8_lossy(&m.payload).into_owned()),
                _ => None,
            })
            .collect();
        // Per-sender FIFO inside the total order.
        for i in 0..3 {
            let mine: Vec<&String> = order.iter().filter(|m| m.starts_with(&format!("{i}:"))).collect();
            let expected: Vec<String> = (0..PER_SENDER).map(|k| format!("{i}:{k}")).collect();
            assert_eq!(mine.len(), PER_SENDER);
            assert!(mine.iter().zip(&expected).all(|(a, b)| *a == b), "sender {i} out of order");
        }
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1], "clients 0 and 1 disagree on the order");
    assert_eq!(orders[0], orders[2], "clients 0 and 2 disagree on the order");

    // A client that disconnects: the others get a view with cause Disconnect.
    let gone = clients.pop().unwrap();
    let gone_name = gone.private_name().to_string();
    gone.disconnect().unwrap();
    for c in &mut clients {
        let events = receive_until(c, |e| matches!(e, Event::Membership(v) if v.members.len() == 2));
        let Some(Event::Membership(v)) = events.last() else { unreachable!() };
        assert_eq!(v.cause, ViewCause::Disconnect);
        assert!(!v.members.contains(&gone_name));
    }
}
