//! `ringfence monitor --config FILE`: membership, ring and per-daemon
//! counters of every daemon of the cluster that runs on this machine, read
//! from the status file each daemon writes every 500 ms
//! (`<state_dir>/status.json`).

use clap::Args;
use ringfence_engine::DaemonConfig;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `ringfence monitor`.
#[derive(Args, Debug)]
pub(crate) struct MonitorArgs {
    /// The cluster configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Print once and exit (default: refresh every second).
    #[arg(long)]
    once: bool,
    /// Print the raw status objects as JSON lines.
    #[arg(long)]
    json: bool,
}

fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_u64).unwrap_or(0)
}

pub(crate) fn main(args: &MonitorArgs) -> ExitCode {
    // Any daemon name loads the cluster; then each daemon's own state dir.
    let first = std::fs::read_to_string(&args.config)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("cluster")?.get("daemon")?.as_array()?.first()?.get("name")?.as_str().map(str::to_string)
        });
    let Some(first) = first else {
        eprintln!("monitor: {}: no [[cluster.daemon]] with a name", args.config.display());
        return ExitCode::from(2);
    };
    let cluster = match DaemonConfig::load(&args.config, &first) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("monitor: {e}");
            return ExitCode::from(2);
        }
    };
    let dirs: Vec<(String, PathBuf)> = cluster
        .peers
        .iter()
        .filter_map(|p| DaemonConfig::load(&args.config, &p.name).ok().map(|c| (p.name.clone(), c.state_dir)))
        .collect();
    loop {
        if !args.json {
            println!(
                "{:<10} {:<12} {:<10} {:<14} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
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
            );
        }
        let mut security = Vec::new();
        let mut rejected = Vec::new();
        let mut groups = Vec::new();
        for (name, dir) in &dirs {
            let path = dir.join("status.json");
            let Some(v) =
                std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok())
            else {
                if !args.json {
                    println!("{name:<10} (no status at {})", path.display());
                }
                continue;
            };
            if args.json {
                println!("{v}");
                continue;
            }
            let ring = v.get("ring").filter(|r| !r.is_null());
            let ring_id =
                ring.map_or("-".to_string(), |r| format!("{}.{}", num(r, &["rep"]), num(r, &["seq"])));
            let members = ring
                .and_then(|r| r.get("members"))
                .map_or("-".to_string(), |m| m.to_string().replace(',', " "));
            println!(
                "{:<10} {:<12} {:<10} {:<14} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
                name,
                v.get("phase").and_then(Value::as_str).unwrap_or("?"),
                ring_id,
                members,
                num(&v, &["clients"]),
                num(&v, &["protocol", "messages_delivered"]),
                num(&v, &["protocol", "packets_sent"]),
                num(&v, &["protocol", "packets_retransmitted"]),
                num(&v, &["protocol", "token_retransmits"]),
                num(&v, &["protocol", "bad_datagrams"]),
            );
            security.push(security_row(name, &v));
            rejected.push(rejection_row(name, &v));
            groups.extend(group_rows(name, &v));
        }
        if !args.json && !security.is_empty() {
            println!(
                "\n{:<10} {:<12} {:>16} {:<16} {:>9} {:>9} {:>9} {:>8} {:>6} {:>6} {:>6} {:>8}",
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
            );
            for row in &security {
                println!("{row}");
            }
        }
        if !args.json && !rejected.is_empty() {
            let columns: Vec<&str> = REJECTIONS.iter().map(|(c, _)| *c).collect();
            println!("\n{:<10} {}", "rejected", columns.join(" "));
            for row in &rejected {
                println!("{row}");
            }
        }
        if !args.json && !groups.is_empty() {
            println!(
                "\n{:<10} {:<20} {:<14} {:<16} {:>7} {:>6} {:>9} {:>16} {:>4} {:>8} {:>7}",
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
            );
            for row in &groups {
                println!("{row}");
            }
        }
        if args.once {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_secs(1));
        println!();
    }
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
