//! Real daemons in network namespaces under faults: the short version of
//! `scripts/netns-faults.sh` (docs/operations.md, "Fault tests on a real
//! network"). Each scenario runs `ringfence netfault`, which starts the
//! daemons in namespaces of its own (encrypted links), loads an open and a
//! VS group from a client on every daemon, applies the faults, checks every
//! client's history and removes what it made.
//!
//! Needs root, `ip` and `iptables` (.ci/run installs them when missing);
//! elsewhere the test says why it skipped and passes. `RINGFENCE_NETNS=0`
//! skips it. The scenarios known to fail today (issue 15: lasting one-way
//! cuts, pauses) run only with `RINGFENCE_NETNS_KNOWN_FAILING=1`, which also
//! makes the VS group's known gaps (issue 15 item 2) fail the test instead
//! of being reported.

use std::process::Command;

/// One run: daemons, transport, faults and extra options.
struct Scenario {
    daemons: usize,
    transport: &'static str,
    faults: &'static str,
    extra: &'static [&'static str],
}

/// What passes today: partitions, loss, kill -9 and restart.
const PASSING: &[Scenario] = &[
    Scenario { daemons: 3, transport: "unicast", faults: "partition=2,loss=1,kill=1", extra: &[] },
    Scenario { daemons: 5, transport: "multicast", faults: "partition=2,loss=1,kill=1", extra: &[] },
];

/// Known to fail until issue 15 items 1 and 3 are fixed: one-way cuts in
/// both directions of the token, and pauses.
const KNOWN_FAILING: &[Scenario] = &[
    Scenario {
        daemons: 3,
        transport: "unicast",
        faults: "oneway-token=1,oneway-against=1",
        extra: &["--oneway-secs", "6", "--max-gap-ms", "2000"],
    },
    Scenario {
        daemons: 5,
        transport: "multicast",
        faults: "pause=3",
        extra: &["--pause-ms", "450", "--max-gap-ms", "3000"],
    },
];

/// The `key=value` fields of the `result` line.
fn field<'a>(result: &'a str, key: &str) -> &'a str {
    result
        .split_whitespace()
        .find_map(|f| f.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no `{key}` in the result line: {result}"))
}

/// Whether a `violation` line is one of the VS group's known gaps.
fn known_vs_gap(line: &str) -> bool {
    line.starts_with("violation same-set: vs:")
        || (["violation gap-in-view:", "violation fifo:", "violation sending-view:"]
            .iter()
            .any(|k| line.starts_with(k))
            && line.contains(" vs/"))
}

#[test]
fn known_vs_gaps_are_told_apart_from_other_violations() {
    assert!(known_vs_gap("violation same-set: vs: a and b moved from view (1, 0, 1) to (2, 0, 2) together"));
    assert!(known_vs_gap("violation gap-in-view: client a delivered vs/b#9 after #7 in one view"));
    assert!(!known_vs_gap("violation gap-in-view: client a delivered open/b#9 after #7 in one view"));
    assert!(!known_vs_gap(
        "violation total-order: clients a and b delivered vs/b#1 and vs/b#2 in opposite orders"
    ));
    assert!(!known_vs_gap("violation own-missing: client a never got 3 of its 9 messages to vs back"));
}

#[test]
fn daemons_in_network_namespaces_survive_faults_with_clean_histories() {
    if std::env::var("RINGFENCE_NETNS").is_ok_and(|v| v == "0") {
        eprintln!("SKIPPED: RINGFENCE_NETNS=0");
        return;
    }
    let mut scenarios: Vec<&Scenario> = PASSING.iter().collect();
    let strict = std::env::var("RINGFENCE_NETNS_KNOWN_FAILING").is_ok_and(|v| v == "1");
    if strict {
        scenarios.extend(KNOWN_FAILING);
    } else {
        eprintln!(
            "note: the scenarios known to fail today (one-way cuts, pauses) are off; RINGFENCE_NETNS_KNOWN_FAILING=1 runs them"
        );
    }
    for s in scenarios {
        let daemons = s.daemons.to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["netfault", "--daemons", &daemons, "--transport", s.transport, "--faults", s.faults])
            .args(["--hold-secs", "1.5", "--settle-secs", "2.5", "--rate", "300"])
            .args(s.extra)
            .output()
            .expect("cannot run ringfence netfault");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(line) = stdout.lines().find(|l| l.starts_with("netfault: SKIPPED")) {
            eprintln!("SKIPPED: the real-network fault test cannot run here: {line}");
            return;
        }
        let what = format!("{} daemons, {}, faults {}", s.daemons, s.transport, s.faults);
        let result = stdout
            .lines()
            .find(|l| l.starts_with("result "))
            .unwrap_or_else(|| panic!("{what}: no result line\nstdout:\n{stdout}\nstderr:\n{stderr}"));
        eprintln!("{what}:\n{stdout}");
        // Without RINGFENCE_NETNS_KNOWN_FAILING=1, the VS group's known gaps
        // (issue 15 item 2: same set, FIFO and sending view across a flush
        // under partitions) are reported, not failed on; every other
        // violation fails.
        let violations: Vec<&str> = stdout.lines().filter(|l| l.starts_with("violation ")).collect();
        let unexpected: Vec<&&str> = violations.iter().filter(|v| strict || !known_vs_gap(v)).collect();
        if !violations.is_empty() && unexpected.is_empty() {
            eprintln!("{what}: KNOWN (issue 15 item 2), not failed on: {violations:#?}");
        }
        assert!(unexpected.is_empty(), "{what}: violations {unexpected:#?}\n{stdout}\nstderr:\n{stderr}");
        assert!(
            field(result, "violations") == "0" || !violations.is_empty(),
            "{what}: violations counted but none printed: {result}"
        );
        let faults: usize =
            s.faults.split(',').map(|f| f.split_once('=').unwrap().1.parse::<usize>().unwrap()).sum();
        assert_eq!(field(result, "faults"), faults.to_string(), "{what}: {result}");
        assert_eq!(stdout.lines().filter(|l| l.starts_with("fault ")).count(), faults, "{what}");
        for key in ["sent", "deliveries", "views"] {
            let n: u64 = field(result, key).parse().unwrap();
            assert!(n > 0, "{what}: {key}=0 in {result}");
        }
    }
}
