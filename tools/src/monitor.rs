//! `ringfence monitor --config FILE`: membership, ring and counters of
//! every daemon of the cluster, asked over the network.
//!
//! Each daemon answers a status query (client protocol v3, `Admin {
//! Status }`) over its `client_tcp` address, authenticated like any client
//! (TLS client certificate or token: the `--tls-*` and `--token` flags),
//! or without those flags over its client socket when that is on this
//! machine; its `[clients] admin` list says who may ask. One thread per daemon keeps a
//! connection and asks every `--interval-ms`; a daemon whose answer is
//! older than `--stale-ms`, or whose connection fails, shows as
//! unreachable with the age of its last answer.
//!
//! ```text
//!  poller d0 ──connect, Status, Status, ...──► d0   ┐
//!  poller d1 ──...──────────────────────────► d1   ├─► (name, answer, when) ─► screen / JSON lines
//!  poller d2 ──connection refused, retry────► d2   ┘
//! ```
//!
//! On a terminal the screen is redrawn in place (ratatui; `q` quits);
//! otherwise, or with `--once`, tables are printed; `--json` prints one
//! JSON object per round.

use crate::connect_opts::ConnectOpts;
use clap::Args;
use ringfence_client::{AdminRequest, Client};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Options of `ringfence monitor`.
#[derive(Args, Debug)]
pub(crate) struct MonitorArgs {
    /// The cluster configuration (TOML): every daemon in it is asked.
    #[arg(long)]
    config: PathBuf,
    /// Print once (after every daemon answered, or `--stale-ms`) and exit:
    /// status 0 if every daemon answered, 1 if one is unreachable.
    #[arg(long)]
    once: bool,
    /// Print one JSON object per round: every daemon's status, whether it
    /// is reachable and the age of its last answer.
    #[arg(long)]
    json: bool,
    /// How often each daemon is asked, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    interval_ms: u64,
    /// A daemon whose last answer is older than this (milliseconds) shows
    /// as unreachable.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    stale_ms: u64,
    #[command(flatten)]
    connect: ConnectOpts,
}

fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_u64).unwrap_or(0)
}

/// What one poller reports.
struct Answer {
    daemon: usize,
    at: Instant,
    result: Result<Value, String>,
}

/// What is known of one daemon.
struct Seen {
    /// When the monitor began asking it.
    since: Instant,
    status: Option<Value>,
    /// When it last answered.
    answered: Option<Instant>,
    /// The last failure, if it came after the last answer.
    error: Option<String>,
}

impl Seen {
    fn reachable(&self, now: Instant, stale: Duration) -> bool {
        self.error.is_none() && self.answered.is_some_and(|t| now.saturating_duration_since(t) <= stale)
    }
}

/// Starts one poller thread per daemon of `config`; returns the daemons'
/// names and the channel their answers come on. The pollers end when the
/// receiver is dropped (at their next answer).
fn start_pollers(
    config: &std::path::Path,
    connect: &ConnectOpts,
    interval: Duration,
) -> Result<(Vec<String>, mpsc::Receiver<Answer>), String> {
    let endpoints = ringfence_engine::endpoints(config).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let mut names = Vec::new();
    for (i, e) in endpoints.into_iter().enumerate() {
        names.push(e.name.clone());
        let tx = tx.clone();
        let target = crate::ctl::Target::of(&e, connect);
        std::thread::Builder::new()
            .name(format!("rf-monitor-{}", e.name))
            .spawn(move || poll_daemon(i, &target, interval, &tx))
            .map_err(|e| format!("cannot start a poller thread: {e}"))?;
    }
    Ok((names, rx))
}

/// Keeps asking one daemon for its status, reconnecting after a failure.
fn poll_daemon(daemon: usize, target: &crate::ctl::Target, interval: Duration, tx: &mpsc::Sender<Answer>) {
    let mut client: Option<Client> = None;
    loop {
        let started = Instant::now();
        let result = (|| {
            if client.is_none() {
                client = Some(target.connect()?);
            }
            let c = client.as_mut().ok_or("not connected")?;
            let reply = c.admin(AdminRequest::Status).map_err(|e| e.to_string())?;
            if !reply.ok {
                return Err(reply.text);
            }
            serde_json::from_str::<Value>(&reply.text).map_err(|e| format!("status is not JSON: {e}"))
        })();
        if result.is_err() {
            client = None;
        }
        if tx.send(Answer { daemon, at: Instant::now(), result }).is_err() {
            return;
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

pub(crate) fn main(args: &MonitorArgs) -> ExitCode {
    let interval = Duration::from_millis(args.interval_ms);
    let stale = Duration::from_millis(args.stale_ms);
    let (names, rx) = match start_pollers(&args.config, &args.connect, interval) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ringfence monitor: {e}");
            return ExitCode::from(2);
        }
    };
    let now = Instant::now();
    let mut seen: Vec<Seen> =
        names.iter().map(|_| Seen { since: now, status: None, answered: None, error: None }).collect();
    let started = Instant::now();
    let take = |seen: &mut Vec<Seen>, a: Answer| match a.result {
        Ok(v) => {
            let s = &mut seen[a.daemon];
            s.status = Some(v);
            s.answered = Some(a.at);
            s.error = None;
        }
        Err(e) => seen[a.daemon].error = Some(e),
    };
    if args.once {
        // Every daemon answered or failed, or the stale time passed.
        let deadline = started + stale;
        let mut heard = vec![false; names.len()];
        while heard.iter().any(|h| !h) {
            let Ok(a) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else { break };
            heard[a.daemon] = true;
            take(&mut seen, a);
        }
        let now = Instant::now();
        if args.json {
            println!("{}", round_json(&names, &seen, now, stale));
        } else {
            for line in report(&names, &seen, now, stale) {
                println!("{line}");
            }
        }
        return if seen.iter().all(|s| s.reachable(now, stale)) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if tty && !args.json {
        return screen(&names, &mut seen, &rx, interval, stale, take);
    }
    let mut next = Instant::now() + interval;
    loop {
        while let Ok(a) = rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            take(&mut seen, a);
        }
        next += interval;
        let now = Instant::now();
        if args.json {
            println!("{}", round_json(&names, &seen, now, stale));
        } else {
            for line in report(&names, &seen, now, stale) {
                println!("{line}");
            }
            println!();
        }
    }
}

/// The full-screen view: redrawn every `interval`, `q` or Esc quits.
fn screen(
    names: &[String],
    seen: &mut Vec<Seen>,
    rx: &mpsc::Receiver<Answer>,
    interval: Duration,
    stale: Duration,
    take: impl Fn(&mut Vec<Seen>, Answer),
) -> ExitCode {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    use ratatui::text::Line;
    use ratatui::widgets::{Block, Paragraph};
    let mut terminal = ratatui::init();
    let mut scroll: u16 = 0;
    let result = loop {
        while let Ok(a) = rx.try_recv() {
            take(seen, a);
        }
        let now = Instant::now();
        let lines: Vec<Line<'_>> = report(names, seen, now, stale).into_iter().map(Line::from).collect();
        let drawn = terminal.draw(|f| {
            let title = format!(
                " ringfence monitor: {} daemons, every {} ms; q quits, arrows scroll ",
                names.len(),
                interval.as_millis()
            );
            f.render_widget(
                Paragraph::new(lines).block(Block::bordered().title(title)).scroll((scroll, 0)),
                f.area(),
            );
        });
        if let Err(e) = drawn {
            break Err(e);
        }
        match event::poll(interval) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) => match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => break Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => break Ok(()),
                    KeyCode::Down => scroll = scroll.saturating_add(1),
                    KeyCode::Up => scroll = scroll.saturating_sub(1),
                    _ => {}
                },
                Ok(_) => {}
                Err(e) => break Err(e),
            },
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    };
    ratatui::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfence monitor: terminal: {e}");
            ExitCode::from(1)
        }
    }
}

/// Age of an instant, for people.
fn age(now: Instant, t: Option<Instant>) -> String {
    t.map_or("never".into(), |t| format!("{:.1}s ago", now.saturating_duration_since(t).as_secs_f64()))
}

/// One round as JSON: per daemon its name, reachability, the age of its
/// last answer (ms), the last error and its last status.
fn round_json(names: &[String], seen: &[Seen], now: Instant, stale: Duration) -> Value {
    let daemons: Vec<Value> = names
        .iter()
        .zip(seen)
        .map(|(name, s)| {
            serde_json::json!({
                "daemon": name,
                "reachable": s.reachable(now, stale),
                "age_ms": s.answered.map(|t| u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)),
                "error": s.error,
                "status": s.status,
            })
        })
        .collect();
    serde_json::json!({ "daemons": daemons })
}

/// The tables: membership and traffic, link security, rejected datagrams,
/// client groups. An unreachable daemon's row says so, with its last
/// answer's age and why; its last known counters are not shown as current.
fn report(names: &[String], seen: &[Seen], now: Instant, stale: Duration) -> Vec<String> {
    let mut out = vec![format!(
        "{:<10} {:<12} {:<10} {:<20} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "daemon",
        "phase",
        "ring",
        "members",
        "clients",
        "delivered",
        "sent pkts",
        "retrans",
        "tok-rtx",
        "bad"
    )];
    let mut security = Vec::new();
    let mut rejected = Vec::new();
    let mut groups = Vec::new();
    let reachable: BTreeMap<&str, bool> =
        names.iter().zip(seen).map(|(n, s)| (n.as_str(), s.reachable(now, stale))).collect();
    for (name, s) in names.iter().zip(seen) {
        let Some(v) = s.status.as_ref().filter(|_| reachable[name.as_str()]) else {
            if s.answered.is_none() && s.error.is_none() && now.saturating_duration_since(s.since) <= stale {
                out.push(format!("{name:<10} (asking...)"));
                continue;
            }
            let why = s.error.as_deref().unwrap_or("no answer");
            out.push(format!("{name:<10} UNREACHABLE  last answer {}: {why}", age(now, s.answered)));
            continue;
        };
        let ring = v.get("ring").filter(|r| !r.is_null());
        let ring_id = ring.map_or("-".to_string(), |r| format!("{}.{}", num(r, &["rep"]), num(r, &["seq"])));
        let members = ring
            .and_then(|r| r.get("names"))
            .and_then(Value::as_array)
            .map_or("-".to_string(), |m| m.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "));
        out.push(format!(
            "{:<10} {:<12} {:<10} {:<20} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
            name,
            v.get("phase").and_then(Value::as_str).unwrap_or("?"),
            ring_id,
            members,
            num(v, &["clients"]),
            num(v, &["protocol", "messages_delivered"]),
            num(v, &["protocol", "packets_sent"]),
            num(v, &["protocol", "packets_retransmitted"]),
            num(v, &["protocol", "token_retransmits"]),
            num(v, &["protocol", "bad_datagrams"]),
        ));
        security.push(security_row(name, v));
        rejected.push(rejection_row(name, v));
        groups.extend(group_rows(name, v));
    }
    if !security.is_empty() {
        out.push(String::new());
        out.push(format!(
            "{:<10} {:<12} {:>16} {:<16} {:>9} {:>9} {:>9} {:>8} {:>6} {:>6} {:>6} {:>8}",
            "daemon",
            "link",
            "epoch",
            "link key",
            "rekeyed",
            "agreement",
            "sealed",
            "signed",
            "auth",
            "sig",
            "replay",
            "mismatch"
        ));
        out.extend(security);
    }
    if !rejected.is_empty() {
        let columns: Vec<&str> = REJECTIONS.iter().map(|(c, _)| *c).collect();
        out.push(String::new());
        out.push(format!("{:<10} {}", "rejected", columns.join(" ")));
        out.extend(rejected);
    }
    if !groups.is_empty() {
        out.push(String::new());
        out.push(format!(
            "{:<10} {:<20} {:<14} {:<16} {:>7} {:>6} {:>9} {:>16} {:>4} {:>8} {:>7}",
            "daemon",
            "group",
            "mode",
            "view",
            "members",
            "local",
            "key id",
            "key epoch",
            "old",
            "evs-fix",
            "undeci"
        ));
        out.extend(groups);
    }
    out
}

/// One line of the security table: link mode, server key epoch, link key,
/// time since the last rekey, how long the last agreement took, and the
/// counters of datagrams sealed, signed and rejected (authentication
/// failures, bad signatures, replays, settings mismatches).
fn security_row(name: &str, v: &Value) -> String {
    let s = v.get("security").filter(|s| !s.is_null());
    let Some(s) = s else { return format!("{name:<10} (no link security layer)") };
    let mode = s.get("mode").and_then(Value::as_str).unwrap_or("?");
    let key = s.get("link_key").and_then(Value::as_str).unwrap_or("-");
    let uptime_ms = num(v, &["uptime_ms"]);
    let rekeyed = s.get("rekeyed_at_ns").and_then(Value::as_u64).map_or("-".to_string(), |ns| {
        format!("{:.1}s ago", uptime_ms.saturating_sub(ns / 1_000_000) as f64 / 1e3)
    });
    let agreement = s
        .get("last_agreement_ns")
        .and_then(Value::as_u64)
        .map_or("-".to_string(), |ns| format!("{:.1}ms", ns as f64 / 1e6));
    format!(
        "{:<10} {:<12} {:>16} {:<16} {:>9} {:>9} {:>9} {:>8} {:>6} {:>6} {:>6} {:>8}",
        name,
        mode,
        format!("{:#x}", num(s, &["epoch"])),
        key,
        rekeyed,
        agreement,
        num(s, &["sealed"]),
        num(s, &["signed"]),
        num(s, &["auth_failures"]),
        num(s, &["bad_signature"]),
        num(s, &["replays"]),
        num(s, &["settings_mismatch"]),
    )
}

/// Every reason a daemon drops a datagram, with the column it is shown
/// under: the path of its counter in `status.json`.
const REJECTIONS: &[(&str, &[&str])] = &[
    ("oversize", &["runtime", "oversize"]),
    ("unknown-src", &["runtime", "unknown_sources"]),
    ("malformed", &["security", "malformed"]),
    ("settings", &["security", "settings_mismatch"]),
    ("unknown-sender", &["security", "unknown_sender"]),
    ("bad-sig", &["security", "bad_signature"]),
    ("auth-fail", &["security", "auth_failures"]),
    ("unknown-key", &["security", "unknown_key"]),
    ("replay", &["security", "replays"]),
    ("misdirected", &["security", "misdirected"]),
    ("undecodable", &["protocol", "bad_datagrams"]),
    ("bad-token", &["protocol", "bad_tokens"]),
    ("out-of-window", &["protocol", "out_of_window"]),
    ("seq-bounded", &["protocol", "ring_seq_bounded"]),
];

/// One line of the rejection table: every counter of dropped datagrams,
/// by reason, from the socket (`runtime`), the link layer (`security`)
/// and the protocol (`protocol`), in the columns of `REJECTIONS`.
fn rejection_row(name: &str, v: &Value) -> String {
    let mut row = format!("{name:<10}");
    for (column, path) in REJECTIONS {
        row += &format!(" {:>width$}", num(v, path), width = column.len());
    }
    row
}

/// The client group lines of one daemon: a summary (policy denials, client
/// authentication failures, view keys derived, EVS fixes, messages reported
/// undecipherable, rekeys), then one line per group with its mode, view,
/// key id and the server key epoch it came from, old keys kept and counts.
fn group_rows(name: &str, v: &Value) -> Vec<String> {
    let g = &v["groups"];
    let mut rows = vec![format!(
        "{name:<10} {:<20} denials {} auth-failures {} keys {} evs-fixes {} undecipherable {} rekeys {}",
        "(all groups)",
        num(g, &["denials"]),
        num(v, &["auth_failures"]),
        num(g, &["keys_derived"]),
        num(g, &["evs_fixes"]),
        num(g, &["undecipherable"]),
        num(g, &["rekeys"]),
    )];
    for x in g.get("list").and_then(Value::as_array).into_iter().flatten() {
        let text = |k: &str| x.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        rows.push(format!(
            "{name:<10} {:<20} {:<14} {:<16} {:>7} {:>6} {:>9} {:>16} {:>4} {:>8} {:>7}",
            text("name"),
            text("mode"),
            text("view"),
            num(x, &["members"]),
            num(x, &["local"]),
            text("key_id"),
            x.get("key_epoch").and_then(Value::as_u64).map_or("-".to_string(), |e| format!("{e:#x}")),
            num(x, &["old_keys"]),
            num(x, &["evs_fixes"]),
            num(x, &["undecipherable"]),
        ));
    }
    rows
}
