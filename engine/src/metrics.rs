//! The metrics endpoint (`[daemon] metrics = "127.0.0.1:9464"`, off by
//! default): the counters `ringfence monitor` shows, in the OpenMetrics
//! text format (which Prometheus scrapes), over plain HTTP.
//!
//! ```text
//!  ring thread ── every 500 ms: status JSON ──render──► snapshot (Arc<Mutex<String>>)
//!  metrics thread: accept ── read request head ── write snapshot ── close
//! ```
//!
//! The ring thread renders; the metrics thread only copies the last
//! rendering out, so a slow or hostile scraper never touches the ring
//! thread. One connection at a time, 2 s to send its request line.

use serde_json::Value;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// One metric: its name (without `ringfence_`), its type, help text and
/// where its value is in the status JSON.
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    path: &'static [&'static str],
}

const fn counter(name: &'static str, help: &'static str, path: &'static [&'static str]) -> Metric {
    Metric { name, kind: "counter", help, path }
}

const fn gauge(name: &'static str, help: &'static str, path: &'static [&'static str]) -> Metric {
    Metric { name, kind: "gauge", help, path }
}

/// Every metric but the labelled families (rejections, info).
const METRICS: &[Metric] = &[
    gauge("clients", "Clients connected to this daemon.", &["clients"]),
    gauge("ring_members", "Daemons in this daemon's current ring.", &["ring_size"]),
    gauge("operational", "1 when a ring is installed and messages flow, else 0.", &["operational"]),
    counter(
        "messages_submitted",
        "Messages this daemon's clients submitted to the ring.",
        &["protocol", "messages_submitted"],
    ),
    counter(
        "messages_delivered",
        "Messages delivered in total order by the ring.",
        &["protocol", "messages_delivered"],
    ),
    counter(
        "group_messages_delivered",
        "Messages handed to local client groups.",
        &["groups", "messages_delivered"],
    ),
    counter("packets_sent", "New data packets this daemon sent.", &["protocol", "packets_sent"]),
    counter(
        "packets_received",
        "Data packets received for the first time.",
        &["protocol", "packets_received"],
    ),
    counter(
        "packets_retransmitted",
        "Packets this daemon retransmitted on request.",
        &["protocol", "packets_retransmitted"],
    ),
    counter(
        "retransmits_requested",
        "Packets this daemon asked to be retransmitted.",
        &["protocol", "retransmits_requested"],
    ),
    counter(
        "token_rotations",
        "Tokens accepted by this daemon (one per rotation of the ring).",
        &["protocol", "tokens_received"],
    ),
    counter(
        "token_retransmits",
        "Tokens resent because the ring showed no progress.",
        &["protocol", "token_retransmits"],
    ),
    counter(
        "stalls",
        "Timers that fired over half a token timeout late (this daemon was paused or starved).",
        &["protocol", "stalls"],
    ),
    counter(
        "late_timers",
        "Timers that fired over half a token retransmission late (failure deadline excused once).",
        &["protocol", "late_timers"],
    ),
    counter("datagrams_sent", "Datagrams sent to other daemons.", &["runtime", "sent"]),
    counter("datagrams_received", "Datagrams received from the network.", &["runtime", "received"]),
    counter(
        "bytes_sent",
        "Protocol bytes sent to other daemons (without IP/UDP headers).",
        &["protocol", "bytes_sent"],
    ),
    counter(
        "bytes_received",
        "Bytes received from the network (without IP/UDP headers).",
        &["runtime", "received_bytes"],
    ),
    counter("send_errors", "Datagram sends that failed.", &["runtime", "send_errors"]),
    counter(
        "gso_sends",
        "UDP GSO sends (a run of datagrams to one peer in one send).",
        &["runtime", "gso_sends"],
    ),
    counter("gso_segments", "Datagrams sent in UDP GSO sends.", &["runtime", "gso_segments"]),
    counter(
        "gro_receives",
        "Receives of datagrams the kernel coalesced (UDP GRO).",
        &["runtime", "gro_receives"],
    ),
    counter("gro_segments", "Datagrams received coalesced (UDP GRO).", &["runtime", "gro_segments"]),
    counter("rings_installed", "Regular configurations (rings) installed.", &["protocol", "rings_installed"]),
    counter(
        "membership_changes",
        "Times this daemon left a ring or a ring attempt to gather anew.",
        &["protocol", "membership_changes"],
    ),
    gauge(
        "key_epoch",
        "Epoch of the server key in use (ring sequence << 16 | refreshes).",
        &["security", "epoch"],
    ),
    counter("keys_agreed", "Server keys agreed (TGDH runs completed).", &["security", "keys_agreed"]),
    counter(
        "key_refreshes",
        "Server key refreshes asked for (policy or `ringfence ctl rekey`).",
        &["security", "refreshes"],
    ),
    counter("group_views_installed", "Client group views installed.", &["groups", "views_installed"]),
    counter("group_keys_derived", "Client group view keys derived.", &["groups", "keys_derived"]),
    counter("policy_denials", "Client requests the group policy denied.", &["groups", "denials"]),
    counter("client_auth_failures", "Failed client authentications and TLS handshakes.", &["auth_failures"]),
    gauge(
        "client_queue_frames",
        "Frames queued for clients in the session threads' inboxes.",
        &["queues", "client_frames"],
    ),
    gauge(
        "ring_queue_requests",
        "Client requests waiting for the ring thread.",
        &["queues", "ring_requests"],
    ),
    gauge(
        "pending_messages",
        "Client messages waiting to be sent by the ring.",
        &["queues", "pending_messages"],
    ),
];

/// Datagrams dropped, by reason: (label, status JSON path).
const REJECTIONS: &[(&str, &[&str])] = &[
    ("unknown_source", &["runtime", "unknown_sources"]),
    ("oversize", &["runtime", "oversize"]),
    ("undecodable", &["protocol", "bad_datagrams"]),
    ("foreign_ring", &["protocol", "foreign"]),
    ("out_of_window", &["protocol", "out_of_window"]),
    ("duplicate", &["protocol", "duplicate_packets"]),
    ("stale_token", &["protocol", "stale_tokens"]),
    ("bad_token", &["protocol", "bad_tokens"]),
    ("malformed", &["security", "malformed"]),
    ("settings_mismatch", &["security", "settings_mismatch"]),
    ("unknown_sender", &["security", "unknown_sender"]),
    ("bad_signature", &["security", "bad_signature"]),
    ("auth_failure", &["security", "auth_failures"]),
    ("unknown_key", &["security", "unknown_key"]),
    ("replay", &["security", "replays"]),
    ("misdirected", &["security", "misdirected"]),
];

fn number(v: &Value, path: &[&str]) -> Option<f64> {
    let x = path.iter().try_fold(v, |v, k| v.get(k))?;
    x.as_f64().or_else(|| x.as_bool().map(|b| f64::from(u8::from(b))))
}

/// Renders a daemon's status (as `Daemon::status` builds it) in the
/// OpenMetrics text format, ending with `# EOF`.
pub(crate) fn render(status: &Value) -> String {
    let daemon = status.get("daemon").and_then(Value::as_str).unwrap_or("?");
    let label = format!("daemon=\"{}\"", escape(daemon));
    let mut out = String::with_capacity(8 << 10);
    let _ = writeln!(
        out,
        "# TYPE ringfence_info gauge\n# HELP ringfence_info This daemon: its name, id and backend."
    );
    let _ = writeln!(
        out,
        "ringfence_info{{{label},id=\"{}\",backend=\"{}\",incarnation=\"{}\"}} 1",
        number(status, &["id"]).unwrap_or(0.0),
        escape(status.get("backend").and_then(Value::as_str).unwrap_or("?")),
        number(status, &["incarnation"]).unwrap_or(0.0),
    );
    for m in METRICS {
        let Some(v) = number(status, m.path) else { continue };
        let name = format!("ringfence_{}", m.name);
        let _ = writeln!(out, "# TYPE {name} {}\n# HELP {name} {}", m.kind, m.help);
        let suffix = if m.kind == "counter" { "_total" } else { "" };
        let _ = writeln!(out, "{name}{suffix}{{{label}}} {v}");
    }
    let _ = writeln!(
        out,
        "# TYPE ringfence_datagrams_rejected counter\n# HELP ringfence_datagrams_rejected Datagrams dropped, by reason."
    );
    for (reason, path) in REJECTIONS {
        if let Some(v) = number(status, path) {
            let _ = writeln!(out, "ringfence_datagrams_rejected_total{{{label},reason=\"{reason}\"}} {v}");
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Binds the endpoint and starts its thread, serving `snapshot`.
pub(crate) fn serve(addr: SocketAddr, snapshot: Arc<Mutex<String>>) -> io::Result<()> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen for metrics on {addr} (`[daemon] metrics`): {e}; {}",
                crate::session::bind_hint(&e, "another process listens there: choose another port")
            ),
        )
    })?;
    info!(address = %addr, "metrics endpoint (OpenMetrics) listening");
    std::thread::Builder::new().name("rf-metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(c) => {
                    if let Err(e) = answer(c, &snapshot) {
                        warn!(error = %e, "metrics request failed");
                    }
                }
                Err(e) => warn!(error = %e, "metrics endpoint: accept failed"),
            }
        }
    })?;
    Ok(())
}

/// Reads one request head and answers it: the metrics for `GET /metrics`
/// (or `/`), 404 for other paths, 405 for other methods.
fn answer(mut c: TcpStream, snapshot: &Mutex<String>) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 << 10 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => {
            let text = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
            if text.is_empty() {
                ("503 Service Unavailable", "text/plain", "the daemon is starting\n".to_string())
            } else {
                ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
            }
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "metrics are at /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".to_string()),
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        reply.push_str(&body);
    }
    c.write_all(reply.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_rendered_with_its_daemon() {
        let status = serde_json::json!({
            "daemon": "d\"0", "id": 3, "backend": "portable", "incarnation": 2, "clients": 4,
            "ring_size": 3, "operational": true,
            "protocol": { "messages_delivered": 10, "tokens_received": 7, "bad_datagrams": 1 },
            "security": { "epoch": 65536, "replays": 2 },
            "runtime": { "sent": 5 },
        });
        let text = render(&status);
        assert!(text.contains("ringfence_messages_delivered_total{daemon=\"d\\\"0\"} 10"), "{text}");
        assert!(text.contains("ringfence_token_rotations_total{daemon=\"d\\\"0\"} 7"), "{text}");
        assert!(text.contains("ringfence_operational{daemon=\"d\\\"0\"} 1"), "{text}");
        assert!(
            text.contains("reason=\"replay\"} 2") && text.contains("reason=\"undecodable\"} 1"),
            "{text}"
        );
        assert!(text.contains("ringfence_key_epoch{daemon=\"d\\\"0\"} 65536"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name.trim_end_matches("_total");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }
}
