//! Allocations per message on the whole path, sender client to every
//! receiving client: 3 real daemons (`ringfence_engine::Daemon`, ring thread
//! and session threads) and 4 clients (1 sender on d0, 1 receiver per
//! daemon) in this one process, over loopback UDP and Unix sockets, with a
//! counting global allocator. After a warm-up (every receiver holds the
//! 3-member view and has received a first burst), the counters are reset,
//! N agreed messages are sent (`multicast_batch`, 64 per write) and every
//! receiver takes all N; the counts over that window, divided by N, are
//! printed. They include everything the daemons and clients do meanwhile
//! (token rotations, status files), so they are an upper bound of the
//! per-message cost.
//!
//! ```text
//! cargo run --release -p ringfence-bench --example alloc_count -- [SIZE] [N] [none|encrypt]
//! ```
//!
//! With `ALLOC_TRACE=K` in the environment, every K-th allocation in the
//! window also records its backtrace; the sites (the first frames in
//! ringfence code) are printed on stderr by count, to find each allocation.

use ringfence_client::{Address, Client, Event, Service};
use ringfence_engine::{Daemon, DaemonConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The system allocator, counting calls and bytes.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
/// Sample every this many allocations (0: off).
static TRACE_EVERY: AtomicUsize = AtomicUsize::new(0);
static TRACES: Mutex<Vec<Backtrace>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread is inside the sampler (its own allocations are not sampled).
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

/// Records a backtrace for every `TRACE_EVERY`-th call.
fn sample(count: u64) {
    let every = TRACE_EVERY.load(Ordering::Relaxed) as u64;
    if every == 0 || count % every != 0 || IN_TRACE.with(Cell::get) {
        return;
    }
    IN_TRACE.with(|t| t.set(true));
    let bt = Backtrace::force_capture();
    if let Ok(mut v) = TRACES.lock() {
        v.push(bt);
    }
    IN_TRACE.with(|t| t.set(false));
}

/// Prints the sampled allocation sites by count: the first frames of each
/// backtrace that are ringfence code.
fn print_traces() {
    IN_TRACE.with(|t| t.set(true));
    let traces = std::mem::take(&mut *TRACES.lock().expect("traces"));
    let mut sites: HashMap<String, usize> = HashMap::new();
    for bt in &traces {
        let text = bt.to_string();
        let frames: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("at ") && l.contains("ring"))
            .filter(|l| !l.contains("alloc_count::"))
            .take(4)
            .collect();
        *sites.entry(frames.join(" <- ")).or_default() += 1;
    }
    let mut sites: Vec<_> = sites.into_iter().collect();
    sites.sort_by_key(|s| std::cmp::Reverse(s.1));
    eprintln!("{} sampled allocations", traces.len());
    for (site, n) in sites.iter().take(40) {
        eprintln!("{n:6}  {site}");
    }
}

// SAFETY: every call is forwarded unchanged to `System`.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let n = ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        sample(n);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let n = REALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        sample(n);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let link = args.get(3).cloned().unwrap_or_else(|| "encrypt".into());
    let dir = std::env::temp_dir().join(format!("ringfence-alloc-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("keys")).expect("temp dir");
    let mut cfg = String::from("[daemon]\nring_core = \"none\"\n[cluster]\ntransport = \"unicast\"\n");
    for i in 0..3 {
        let _ = write!(
            cfg,
            "[[cluster.daemon]]\nid = {i}\nname = \"d{i}\"\naddress = \"127.0.0.1:{}\"\n",
            free_port()
        );
        if link != "none" {
            let (_, public) = ringfence_crypto::identity::write_keypair(
                dir.join("keys"),
                &format!("d{i}"),
                &mut rand::rng(),
            )
            .expect("identity");
            let key = ringfence_crypto::identity::load_public(&public).expect("public key").key;
            let _ = writeln!(cfg, "public_key = \"{key}\"");
        }
    }
    let _ = write!(
        cfg,
        "[paths]\nstate_dir = \"{}/{{name}}\"\n[security]\nlink_security = \"{link}\"\n",
        dir.display()
    );
    if link != "none" {
        let _ = writeln!(cfg, "identity = \"{}/keys/{{name}}.key\"", dir.display());
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, cfg).expect("config");
    let stop = Arc::new(AtomicBool::new(false));
    let mut daemons = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..3 {
        let c = DaemonConfig::load(&path, &format!("d{i}")).expect("config loads");
        sockets.push(c.client_socket.clone());
        let stop = Arc::clone(&stop);
        daemons.push(std::thread::spawn(move || {
            Daemon::bind(c).expect("daemon binds").run(&stop).expect("daemon runs");
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut receivers: Vec<Client> = (0..3)
        .map(|i| Client::connect(&Address::Unix(sockets[i].clone()), &format!("r{i}")).expect("connect"))
        .collect();
    for r in &mut receivers {
        r.join("flood").expect("join");
    }
    // Until every receiver sees a 3-member view.
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in &mut receivers {
        loop {
            assert!(Instant::now() < deadline, "no 3-member view in 30 s");
            if let Event::Membership(m) = r.receive().expect("receive") {
                if m.members.len() == 3 {
                    break;
                }
            }
        }
    }
    let mut sender = Client::connect(&Address::Unix(sockets[0].clone()), "s").expect("connect");
    let payload = vec![7u8; size];
    let warm = 20_000.min(n);
    let handles: Vec<_> = receivers
        .into_iter()
        .map(|mut r| {
            std::thread::spawn(move || {
                let mut got = 0;
                while got < warm + n {
                    if let Event::Message(_) = r.receive().expect("receive") {
                        got += 1;
                    }
                }
                r
            })
        })
        .collect();
    let send = |sender: &mut Client, count: usize| {
        let mut left = count;
        while left > 0 {
            let k = left.min(64);
            sender
                .multicast_batch(Service::Agreed, &["flood"], 0, std::iter::repeat_n(&payload[..], k))
                .expect("multicast");
            left -= k;
        }
    };
    send(&mut sender, warm);
    std::thread::sleep(Duration::from_millis(500));
    let (a0, r0, b0) =
        (ALLOCS.load(Ordering::Relaxed), REALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    let trace: usize = std::env::var("ALLOC_TRACE").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    TRACE_EVERY.store(trace, Ordering::Relaxed);
    let t = Instant::now();
    send(&mut sender, n);
    for h in handles {
        let _ = h.join().expect("receiver");
    }
    let elapsed = t.elapsed();
    let (a1, r1, b1) =
        (ALLOCS.load(Ordering::Relaxed), REALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    TRACE_EVERY.store(0, Ordering::Relaxed);
    if trace > 0 {
        print_traces();
    }
    let per = |x: u64| x as f64 / n as f64;
    println!(
        "{{\"size\":{size},\"messages\":{n},\"link_security\":\"{link}\",\"allocs_per_msg\":{:.2},\"reallocs_per_msg\":{:.2},\"alloc_bytes_per_msg\":{:.0},\"elapsed_s\":{:.2}}}",
        per(a1 - a0),
        per(r1 - r0),
        per(b1 - b0),
        elapsed.as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    drop(sender);
    for d in daemons {
        let _ = d.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
