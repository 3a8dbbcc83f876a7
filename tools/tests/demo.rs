//! `ringfence demo` runs end to end: three daemons, total order, a kill -9
//! with the network membership change, a restart with the merge, a
//! throughput run, and everything it started stopped.

use std::process::Command;

#[test]
fn demo_ends_with_ok() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringfence")).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.lines().last().is_some_and(|l| l.starts_with("demo: ok")), "{text}");
    assert!(text.contains("Transitional view of demo (Network)"), "{text}");
    assert!(text.contains("same 9 messages in the same order"), "{text}");
}
