//! Time from a daemon membership change to a new server key, in the
//! deterministic lab network (`ringfence_proto::security::lab`): every hop
//! takes 50 µs and CPU time is not modelled, so the figures are the
//! protocol's own (rounds of the ring and of TGDH), not this machine's.
//!
//! For N daemons: (a) formation from N singletons (a merge of N one-leaf
//! trees), (b) a crash of one daemon: from the crash, and from the start of
//! the membership change (after the token loss is detected) to the key.
//!
//! `cargo run --release -p ringfence-bench --example keytime`

use ringfence_proto::Time;
use ringfence_proto::security::LinkMode;
use ringfence_proto::security::lab::Lab;
use std::time::Duration;

fn agreement_ms(lab: &Lab, run_only: bool) -> f64 {
    lab.nodes()
        .filter_map(|n| {
            n.security_stats().and_then(|s| if run_only { s.last_run_ns } else { s.last_agreement_ns })
        })
        .max()
        .map_or(f64::NAN, |ns| ns as f64 / 1e6)
}

fn main() {
    println!(
        "| daemons | formation: to key (ms) | crash: from crash to key (ms) | crash: change start to key (ms) \
         | crash: ring installed to key (ms) | datagrams signed at formation |"
    );
    println!("|---|---|---|---|---|---|");
    for n in [3u16, 5, 8, 16, 32, 64] {
        let mut lab = Lab::new(n, LinkMode::Encrypt);
        let wall = std::time::Instant::now();
        let limit = Time::ZERO + Duration::from_secs(30);
        assert!(lab.run(limit, Lab::all_keyed), "{n} daemons: no key by {}", lab.now);
        let formed = lab.now.as_nanos() as f64 / 1e6;
        let signed: u64 = lab.nodes().map(|x| x.security_stats().map_or(0, |s| s.signed)).sum();
        // Let the ring settle, then crash the last daemon.
        lab.run(lab.now + Duration::from_millis(100), |_| false);
        let before = lab.node(0).and_then(|x| x.server_key());
        lab.crash(usize::from(n) - 1);
        let crash_at = lab.now;
        let rekeyed = |l: &Lab| l.all_keyed() && l.node(0).and_then(|x| x.server_key()) != before;
        assert!(lab.run(lab.now + Duration::from_secs(30), rekeyed), "{n} daemons: no new key");
        let after_crash = lab.now.saturating_since(crash_at).as_secs_f64() * 1e3;
        println!(
            "| {n} | {formed:.2} | {after_crash:.2} | {:.2} | {:.2} | {signed} |",
            agreement_ms(&lab, false),
            agreement_ms(&lab, true)
        );
        eprintln!("({n} daemons simulated in {:.1} s of CPU)", wall.elapsed().as_secs_f64());
    }
}
