//! `ringfence flood --mode` end to end (issue 7 (c)): 3 spawned daemons whose
//! policy gives the group a keyed mode; the client library seals every
//! payload at the sender and opens it at each receiver, so flood's header
//! (checked for per-sender FIFO and total order) is intact only if sealing
//! and opening worked; no message may be undecipherable.

use std::process::Command;
use std::time::Instant;

fn flood(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["flood", "--spawn", "3", "--messages", "1000", "--size", "200", "--json", "--timeout", "15"])
        .args(extra)
        .output()
        .expect("run ringfence flood");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "flood {extra:?} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("stdout is exactly one JSON object")
}

#[test]
fn flood_keyed_modes_deliver_everything_opened_in_order() {
    let started = Instant::now();
    for mode in ["integrated-vs", "optimized-evs"] {
        let v = flood(&["--mode", mode]);
        assert_eq!(v["mode"], mode, "{v}");
        assert_eq!(v["delivered"], 3000, "{v}");
        assert_eq!(v["undecipherable"], 0, "{v}");
        assert_eq!(v["order_ok"], true, "{v}");
        assert_eq!(v["total_order_ok"], true, "{v}");
        assert_eq!(v["ok"], true, "{v}");
    }
    assert!(started.elapsed().as_secs() < 20, "took {:?}", started.elapsed());
}
