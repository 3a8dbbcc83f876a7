//! Real daemons and clients: a daemon killed with SIGKILL under load. The
//! survivors' clients get a network membership change and keep delivering,
//! and a virtual-synchrony group keeps sending-view delivery across the
//! change: every message is delivered in the view it was sent in.

use ringfence_client::{Address, Client, Event, Service, ViewCause, ViewId, ViewKind};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemons(Vec<Option<Child>>);

impl Daemons {
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.0[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for i in 0..self.0.len() {
            self.kill(i);
        }
    }
}

fn setup(dir: &Path, n: usize, backend: &str) -> (Daemons, Vec<PathBuf>) {
    let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = socks.iter().map(|s| s.local_addr().unwrap().port()).collect();
    drop(socks);
    let mut text = String::from("[cluster]\n");
    for (i, p) in ports.iter().enumerate() {
        text += &format!("\n[[cluster.daemon]]\nid = {i}\nname = \"d{i}\"\naddress = \"127.0.0.1:{p}\"\n");
    }
    text += &format!("\n[paths]\nstate_dir = \"{}/{{name}}\"\n", dir.display());
    text += &format!("\n[daemon]\nbackend = \"{backend}\"\n");
    let config = dir.join("cluster.toml");
    std::fs::write(&config, text).unwrap();
    let children = (0..n)
        .map(|i| {
            Some(
                Command::new(env!("CARGO_BIN_EXE_ringfence"))
                    .args(["daemon", "--config", config.to_str().unwrap(), "--name", &format!("d{i}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let sockets = (0..n).map(|i| dir.join(format!("d{i}")).join("client.sock")).collect();
    (Daemons(children), sockets)
}

fn connect(socket: &Path, name: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(&Address::Unix(socket.to_path_buf()), name) {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

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

/// The `[daemon] backend` values every real-process test runs on.
const BACKENDS: [&str; 2] = ["io_uring", "portable"];

/// One test body, both socket backends, one after the other.
#[test]
fn kill_under_load_keeps_delivering_and_sending_view_delivery() {
    for backend in BACKENDS {
        kill_under_load_on(backend);
    }
}

fn kill_under_load_on(backend: &str) {
    let dir = std::env::temp_dir().join(format!("ringfence-fail-{}-{backend}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut daemons, sockets) = setup(&dir, 3, backend);
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let mut client = connect(&sockets[i], &format!("m{i}"));
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
    let _ = std::fs::remove_dir_all(&dir);
}
