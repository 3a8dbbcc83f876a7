//! Issue 7 (a): time from a join, a leave, a partition and a merge to the
//! new keyed view at every member (Amir et al., "Scaling Secure Group
//! Communication Systems: Beyond Peer-to-Peer", section 5.1, Figure 5),
//! with real daemons on loopback.
//!
//! Starts D `ringfence daemon` processes (encrypted links, `[ring]
//! timeouts` from `--timeouts`, default `default`, a `[[group]]` policy making `kv.*` `integrated-vs`), connects
//! N clients spread evenly over them (Unix sockets, all in this process,
//! polled without blocking; flush requests answered at once) and joins
//! them all to one group. Then, each REPEATS times:
//!
//! - **join**: one more client (on daemon 0) joins; from its `join_with`
//!   call until all N + 1 members hold the regular view of N + 1 members
//!   with its key;
//! - **leave**: that client leaves; until the N others hold the next keyed
//!   view of N;
//! - **partition**: `kill -STOP` of the last daemon; from the signal until
//!   every member on the other daemons holds the keyed network view without
//!   the stopped daemon's members (includes failure detection: the token
//!   timeout, then the consensus timeout);
//! - **merge**: `kill -CONT`; until all N members hold the merged keyed view.
//!
//! For partitions and merges it also reads the survivors' `status.json`
//! (`last_agreement_ns`: from the start of the daemons' membership change,
//! i.e. after detection, to the new server key).
//!
//! ```text
//! cargo build --release -p ringfence-tools
//! cargo run --release -p ringfence-bench --example keyed_views -- \
//!     [--bin PATH] [--daemons 3,5] [--sizes 10,50,100,200] [--repeats 5] [--mode integrated-vs] \
//!     [--timeouts default|low-latency]
//! ```
//!
//! `--bin` defaults to `ringfence` next to this example's target
//! directory (`<target>/release/ringfence`). Every daemon is killed and
//! reaped on exit; every wait is bounded (30 s).

use ringfence_client::{Address, Client, Event, GroupMode, ViewKind};
use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GROUP: &str = "kv.bench";
const LIMIT: Duration = Duration::from_secs(30);

struct Cluster {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Cluster {
    fn start(bin: &Path, n: usize, mode: GroupMode, timeouts: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("ringfence-keyed-views-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).map_err(|e| e.to_string())?;
        let socks: Vec<UdpSocket> = (0..n)
            .map(|_| UdpSocket::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let ports: Vec<u16> = socks
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        drop(socks);
        let mut text = String::from("[cluster]\ntransport = \"unicast\"\n");
        for (i, p) in ports.iter().enumerate() {
            let (_, public) =
                ringfence_crypto::identity::write_keypair(&keys, &format!("d{i}"), &mut rand::rng())
                    .map_err(|e| e.to_string())?;
            let key = ringfence_crypto::identity::load_public(&public).map_err(|e| e.to_string())?.key;
            let _ = write!(
                text,
                "\n[[cluster.daemon]]\nid = {i}\nname = \"d{i}\"\naddress = \"127.0.0.1:{p}\"\npublic_key = \"{key}\"\n"
            );
        }
        let _ = write!(
            text,
            "\n[ring]\ntimeouts = \"{timeouts}\"\n\n[security]\nlink_security = \"encrypt\"\nidentity = \"{}/{{name}}.key\"\n\n[paths]\nstate_dir = \"{}/{{name}}\"\n\n[[group]]\npattern = \"kv.*\"\nmode = \"{}\"\n",
            keys.display(),
            dir.display(),
            mode.name()
        );
        let config = dir.join("cluster.toml");
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let mut c = Self { dir, children: Vec::new() };
        for i in 0..n {
            let log = std::fs::File::create(c.dir.join(format!("d{i}.log"))).map_err(|e| e.to_string())?;
            let child = Command::new(bin)
                .args(["daemon", "--config"])
                .arg(&config)
                .args(["--name", &format!("d{i}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            c.children.push(child);
        }
        Ok(c)
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("d{i}")).join("client.sock")
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.children[i].id().to_string();
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(&pid).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {pid}");
    }

    /// `last_agreement_ns` of daemon `i`'s status file, if any.
    fn agreement_ns(&self, i: usize) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir.join(format!("d{i}")).join("status.json")).ok()?;
        let at = text.find("\"last_agreement_ns\":")? + "\"last_agreement_ns\":".len();
        text[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }

    fn keys_agreed(&self, i: usize) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir.join(format!("d{i}")).join("status.json")).ok()?;
        let at = text.find("\"keys_agreed\":")? + "\"keys_agreed\":".len();
        text[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill").arg("-CONT").arg(c.id().to_string()).status();
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client and the last regular keyed view it holds of the group.
struct Member {
    c: Client,
    daemon: usize,
    /// The client that joins and leaves.
    extra: bool,
    /// Members and whether the view came with a key.
    view: Option<(usize, bool)>,
    /// Regular views received.
    views: u64,
}

impl Member {
    fn connect(socket: &Path, name: &str, daemon: usize) -> Result<Self, String> {
        let deadline = Instant::now() + LIMIT;
        loop {
            match Client::connect(&Address::Unix(socket.to_path_buf()), name) {
                Ok(c) => return Ok(Self { c, daemon, extra: false, view: None, views: 0 }),
                Err(e) if Instant::now() > deadline => return Err(format!("connect {name}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Takes what arrived; answers flush requests at once. Whether
    /// anything came.
    fn pump(&mut self) -> bool {
        let mut any = false;
        while let Ok(Some(e)) = self.c.poll() {
            any = true;
            match e {
                Event::FlushRequest { group, view_id } => {
                    let _ = self.c.flush_ok(&group, view_id);
                }
                Event::Membership(m) if m.group == GROUP && m.kind == ViewKind::Regular => {
                    self.view = Some((m.members.len(), m.key.is_some()));
                    self.views += 1;
                }
                _ => {}
            }
        }
        any
    }

    fn holds(&self, n: usize, keyed: bool) -> bool {
        self.view == Some((n, keyed))
    }
}

/// Pumps the members until every member selected by `who` holds a view of
/// `n` members (with a key if `keyed`) received after `t0`; the time it
/// took from `t0`.
fn wait_all(
    m: &mut [Member],
    who: impl Fn(&Member) -> bool,
    n: usize,
    keyed: bool,
    t0: Instant,
) -> Result<Duration, String> {
    let base: Vec<u64> = m.iter().map(|x| x.views).collect();
    let done = |m: &[Member]| {
        m.iter().zip(&base).filter(|(x, _)| who(x)).all(|(x, b)| x.views > *b && x.holds(n, keyed))
    };
    loop {
        let mut any = false;
        for x in m.iter_mut().filter(|x| who(x)) {
            any |= x.pump();
        }
        if done(m) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > LIMIT {
            let short = m.iter().filter(|x| who(x) && !x.holds(n, keyed)).count();
            return Err(format!("{short} members without a keyed view of {n} after {LIMIT:?}"));
        }
        if !any {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn stats(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    v.sort_by(f64::total_cmp);
    format!("{:.1} ({:.1})", v[v.len() / 2], v[v.len() - 1])
}

struct Row {
    daemons: usize,
    size: usize,
    join: Vec<f64>,
    leave: Vec<f64>,
    partition: Vec<f64>,
    partition_agree: Vec<f64>,
    merge: Vec<f64>,
    merge_agree: Vec<f64>,
}

fn measure(
    bin: &Path,
    daemons: usize,
    size: usize,
    repeats: usize,
    mode: GroupMode,
    timeouts: &str,
) -> Result<Row, String> {
    let cluster = Cluster::start(bin, daemons, mode, timeouts)?;
    let vs = mode == GroupMode::IntegratedVs;
    let keyed = mode.keyed();
    let mut m = Vec::new();
    for i in 0..size {
        let d = i % daemons;
        m.push(Member::connect(&cluster.socket(d), &format!("m{i}"), d)?);
    }
    // Wait for the ring's key before joining (keyed joins wait for it anyway).
    let t = Instant::now();
    while (0..daemons).any(|i| cluster.keys_agreed(i).unwrap_or(0) == 0) {
        if t.elapsed() > LIMIT {
            return Err("no server key".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for x in &mut m {
        x.c.join_with(GROUP, vs, mode).map_err(|e| e.to_string())?;
    }
    wait_all(&mut m, |_| true, size, keyed, Instant::now())?;
    let mut row = Row {
        daemons,
        size,
        join: vec![],
        leave: vec![],
        partition: vec![],
        partition_agree: vec![],
        merge: vec![],
        merge_agree: vec![],
    };
    let mut x = Member::connect(&cluster.socket(0), "extra", 0)?;
    x.extra = true;
    m.push(x);
    let extra = m.len() - 1;
    let last = daemons - 1;
    let on_last = (0..size).filter(|i| i % daemons == last).count();
    for r in 0..repeats {
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        m[extra].c.join_with(GROUP, vs, mode).map_err(|e| e.to_string())?;
        row.join.push(wait_all(&mut m, |_| true, size + 1, keyed, t0)?.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        m[extra].c.leave(GROUP).map_err(|e| e.to_string())?;
        row.leave.push(wait_all(&mut m, |x| !x.extra, size, keyed, t0)?.as_secs_f64() * 1e3);
        m[extra].pump();
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        cluster.signal(last, "STOP");
        let rest = |x: &Member| x.daemon != last && !x.extra;
        row.partition.push(wait_all(&mut m, rest, size - on_last, keyed, t0)?.as_secs_f64() * 1e3);
        // The status file is rewritten every 500 ms.
        std::thread::sleep(Duration::from_millis(600));
        if let Some(ns) = cluster.agreement_ns(0) {
            row.partition_agree.push(ns as f64 / 1e6);
        }
        let t0 = Instant::now();
        cluster.signal(last, "CONT");
        row.merge.push(wait_all(&mut m, |x| !x.extra, size, keyed, t0)?.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(600));
        if let Some(ns) = cluster.agreement_ns(0) {
            row.merge_agree.push(ns as f64 / 1e6);
        }
        eprintln!(
            "{daemons} daemons, {size} members, run {r}: join {:.1} leave {:.1} partition {:.1} merge {:.1} ms",
            row.join[r], row.leave[r], row.partition[r], row.merge[r]
        );
    }
    Ok(row)
}

fn list(s: &str) -> Vec<usize> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let exe = std::env::current_exe().unwrap_or_default();
    // <target>/release/examples/keyed_views -> <target>/release/ringfence
    let mut bin = exe.parent().and_then(Path::parent).map(|p| p.join("ringfence")).unwrap_or_default();
    let (mut daemons, mut sizes, mut repeats) = (vec![3, 5], vec![10, 50, 100, 200], 5);
    let mut mode = GroupMode::IntegratedVs;
    let mut timeouts = String::from("default");
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--bin" => bin = PathBuf::from(v),
            "--daemons" => daemons = list(&v),
            "--sizes" => sizes = list(&v),
            "--repeats" => repeats = v.parse().unwrap_or(5),
            "--timeouts" => timeouts = v,
            "--mode" => {
                mode = if v == "optimized-evs" { GroupMode::OptimizedEvs } else { GroupMode::IntegratedVs }
            }
            _ => {
                eprintln!("unknown argument {a}");
                std::process::exit(2);
            }
        }
    }
    println!("mode {}, timeouts {timeouts}; medians (max) in ms over {repeats} runs", mode.name());
    println!(
        "| daemons | members | join | leave | partition (from STOP) | partition: change start → server key | merge (from CONT) | merge: change start → server key |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &d in &daemons {
        for &s in &sizes {
            match measure(&bin, d, s, repeats, mode, &timeouts) {
                Ok(mut r) => println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.daemons,
                    r.size,
                    stats(&mut r.join),
                    stats(&mut r.leave),
                    stats(&mut r.partition),
                    stats(&mut r.partition_agree),
                    stats(&mut r.merge),
                    stats(&mut r.merge_agree)
                ),
                Err(e) => println!("| {d} | {s} | failed: {e} |||||| "),
            }
        }
    }
}
