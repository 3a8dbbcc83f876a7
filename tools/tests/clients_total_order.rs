//! Real daemons and clients on loopback: three clients on three daemons join
//! one group and send concurrently; every client sees every message, in the
//! same total order, and the membership views name all three. A client that
//! disconnects leaves the others a view with cause `disconnect`.

use ringfence_client::{Address, Client, Event, Service, ViewCause};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `n` daemons; returns them, their client sockets and TCP ports.
fn setup(dir: &Path, n: usize, backend: &str) -> (Daemons, Vec<PathBuf>, Vec<u16>) {
    let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = socks.iter().map(|s| s.local_addr().unwrap().port()).collect();
    drop(socks);
    let tcps: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let tcp_ports: Vec<u16> = tcps.iter().map(|s| s.local_addr().unwrap().port()).collect();
    drop(tcps);
    let mut text = String::from("[cluster]\n");
    for (i, p) in ports.iter().enumerate() {
        text += &format!(
            "\n[[cluster.daemon]]\nid = {i}\nname = \"d{i}\"\naddress = \"127.0.0.1:{p}\"\nclient_tcp = \"127.0.0.1:{}\"\n",
            tcp_ports[i]
        );
    }
    text += &format!("\n[paths]\nstate_dir = \"{}/{{name}}\"\n", dir.display());
    text += &format!("\n[daemon]\nbackend = \"{backend}\"\n");
    let config = dir.join("cluster.toml");
    std::fs::write(&config, text).unwrap();
    let children = (0..n)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_ringfence"))
                .args(["daemon", "--config", config.to_str().unwrap(), "--name", &format!("d{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let sockets = (0..n).map(|i| dir.join(format!("d{i}")).join("client.sock")).collect();
    (Daemons(children), sockets, tcp_ports)
}

fn connect(socket: &Path, name: &str) -> Client {
    connect_to(&Address::Unix(socket.to_path_buf()), name)
}

fn connect_to(addr: &Address, name: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(addr, name) {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect to {addr:?}: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Receives until `pred` says stop, at most 20 s.
fn receive_until(c: &mut Client, mut pred: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "timed out; got {} events: {:?}", got.len(), got.last());
        match c.poll().unwrap() {
            Some(e) => {
                let stop = pred(&e);
                got.push(e);
                if stop {
                    return got;
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// The `[daemon] backend` values every real-process test runs on.
const BACKENDS: [&str; 2] = ["io_uring", "portable"];

/// One test body, both socket backends, one after the other.
#[test]
fn three_senders_three_daemons_one_total_order() {
    for backend in BACKENDS {
        total_order_on(backend);
    }
}

fn total_order_on(backend: &str) {
    let dir = std::env::temp_dir().join(format!("ringfence-order-{}-{backend}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_daemons, sockets, tcp_ports) = setup(&dir, 3, backend);
    // Clients 0 and 1 over the Unix socket, client 2 over TCP.
    let mut clients: Vec<Client> = (0..2).map(|i| connect(&sockets[i], &format!("c{i}"))).collect();
    clients.push(connect_to(&Address::Tcp(format!("127.0.0.1:{}", tcp_ports[2]).parse().unwrap()), "c2"));
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
    let _ = std::fs::remove_dir_all(&dir);
}
