//! `ringfence demo`: a whole cluster on loopback, in one command.
//!
//! Starts 3 daemons as child processes, connects a client to each, joins a
//! group, exchanges messages in total order, kills one daemon (`SIGKILL`) so
//! the others see the network membership change, restarts it so they see the
//! merge, measures throughput, stops everything it started, and ends with a
//! line beginning `demo: ok`.

use crate::cluster::{LocalCluster, Spec};
use ringfence_client::{Address, Client, Event, Service, ViewCause, ViewKind};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const GROUP: &str = "demo";
const NAMES: [&str; 3] = ["alice", "bob", "carol"];
/// Every wait of the demo gives up after this long.
const WAIT: Duration = Duration::from_secs(20);

fn connect(socket: &Path, name: &str) -> Result<Client, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::connect(&Address::Unix(socket.to_path_buf()), name) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(format!("{name} cannot connect: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads events until `done` returns true; every event goes to `seen`.
fn until(c: &mut Client, what: &str, mut done: impl FnMut(&Event) -> bool) -> Result<Vec<Event>, String> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        match c.poll().map_err(|e| e.to_string())? {
            Some(e) => {
                let stop = done(&e);
                seen.push(e);
                if stop {
                    return Ok(seen);
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn full_view(e: &Event, n: usize) -> bool {
    matches!(e, Event::Membership(v) if v.group == GROUP && v.kind == ViewKind::Regular && v.members.len() == n)
}

fn print_view(who: &str, e: &Event) {
    if let Event::Membership(v) = e {
        println!("  {who} sees {:?} view of {} ({:?}): {:?}", v.kind, v.group, v.cause, v.members);
    }
}

fn run() -> Result<(), String> {
    println!("demo: starting 3 daemons on 127.0.0.1");
    let mut cluster = LocalCluster::start("demo", &Spec::new(3))?;
    let mut clients: Vec<Client> =
        (0..3).map(|i| connect(&cluster.socket(i), NAMES[i])).collect::<Result<_, _>>()?;
    for c in &mut clients {
        c.join(GROUP).map_err(|e| e.to_string())?;
    }
    println!("demo: 3 clients joined group `{GROUP}`");
    for (i, c) in clients.iter_mut().enumerate() {
        let seen = until(c, "the 3-member view", |e| full_view(e, 3))?;
        if let Some(e) = seen.last() {
            print_view(NAMES[i], e);
        }
    }

    // Total order: everyone sends, everyone receives the same sequence.
    for (i, c) in clients.iter_mut().enumerate() {
        for k in 0..3 {
            c.multicast(Service::Agreed, &[GROUP], 0, format!("{} says {k}", NAMES[i]).as_bytes())
                .map_err(|e| e.to_string())?;
        }
    }
    let mut orders = Vec::new();
    for c in &mut clients {
        let mut n = 0;
        let seen = until(c, "9 messages", |e| {
            n += usize::from(matches!(e, Event::Message(_)));
            n == 9
        })?;
        let order: Vec<String> = seen
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(String::from_utf8_lossy(&m.payload).into_owned()),
                _ => None,
            })
            .collect();
        orders.push(order);
    }
    if orders.iter().any(|o| *o != orders[0]) {
        return Err(format!("clients disagree on the order: {orders:?}"));
    }
    println!("demo: all 3 clients delivered the same 9 messages in the same order:");
    for m in &orders[0] {
        println!("  {m}");
    }

    // Kill a daemon: the others see the transitional signal, then a network view.
    println!("demo: kill -9 of daemon d2 (carol's)");
    cluster.kill(2);
    drop(clients.pop());
    for (i, c) in clients.iter_mut().enumerate() {
        let seen = until(
            c,
            "the network view without carol",
            |e| matches!(e, Event::Membership(v) if v.kind == ViewKind::Regular && v.cause == ViewCause::Network && v.members.len() == 2),
        )?;
        for e in seen.iter().filter(|e| matches!(e, Event::Membership(_))) {
            print_view(NAMES[i], e);
        }
    }

    // Restart it: the merge.
    println!("demo: restarting daemon d2");
    cluster.spawn(2)?;
    let mut carol = connect(&cluster.socket(2), NAMES[2])?;
    carol.join(GROUP).map_err(|e| e.to_string())?;
    for (i, c) in clients.iter_mut().enumerate() {
        let seen = until(c, "the merged view", |e| full_view(e, 3))?;
        for e in seen.iter().filter(|e| matches!(e, Event::Membership(_))) {
            print_view(NAMES[i], e);
        }
    }
    until(&mut carol, "carol's view", |e| full_view(e, 3))?;
    clients.push(carol);

    // Throughput: alice sends, bob and carol receive.
    const N: usize = 20_000;
    let payload = [0x55u8; 100];
    clients[0].set_self_discard(true);
    let start = Instant::now();
    let mut sent = 0;
    while sent < N {
        let batch = (N - sent).min(64);
        clients[0]
            .multicast_batch(Service::Agreed, &[GROUP], 1, std::iter::repeat_n(&payload[..], batch))
            .map_err(|e| e.to_string())?;
        sent += batch;
    }
    // Bob and carol read side by side: a client that stops reading is
    // disconnected as a slow consumer once its queue is full.
    let mut got = [0usize; 2];
    let deadline = Instant::now() + WAIT;
    while got.iter().any(|&n| n < N) {
        if Instant::now() > deadline {
            return Err(format!("timed out in the throughput run: received {got:?} of {N}"));
        }
        let mut idle = true;
        for (k, c) in clients.iter_mut().skip(1).enumerate() {
            while let Some(e) = c.poll().map_err(|e| e.to_string())? {
                idle = false;
                got[k] += usize::from(matches!(e, Event::Message(m) if m.msg_type == 1));
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "demo: {N} messages of 100 B from alice delivered to bob and carol in {:.3} s: {:.0} msgs/s",
        secs,
        N as f64 / secs
    );
    drop(clients);
    drop(cluster);
    println!("demo: stopped the 3 daemons");
    Ok(())
}

pub(crate) fn main() -> ExitCode {
    match run() {
        Ok(()) => {
            println!("demo: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("demo: failed: {e}");
            ExitCode::FAILURE
        }
    }
}
