//! `ringfence flood` end to end: it spawns 3 daemons, floods 2000 messages
//! from one sender, and every one of the 3 receivers gets all of them in
//! one total order.

use std::process::Command;
use std::time::Instant;

#[test]
fn flood_three_spawned_daemons_json() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["flood", "--spawn", "3", "--messages", "2000", "--size", "100", "--json", "--timeout", "30"])
        .output()
        .expect("run ringfence flood");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "flood failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("stdout is exactly one JSON object");
    assert_eq!(v["delivered"], 6000, "{v}");
    assert_eq!(v["order_ok"], true, "{v}");
    assert_eq!(v["total_order_ok"], true, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    for key in ["msgs_per_sec", "mbytes_per_sec", "p50_us", "p99_us", "p999_us"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} missing or not positive: {v}");
    }
    assert!(started.elapsed().as_secs() < 30);
}

#[test]
fn flood_rejects_payloads_below_the_header() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["flood", "--size", "8", "--json"])
        .output()
        .expect("run ringfence flood");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("16-byte header"));
}
