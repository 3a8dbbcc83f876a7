//! Criterion benchmarks of the ring core over the in-memory network of
//! `ringfence-bench`.
//!
//! - `ordering`: ordered messages per second (each delivered by all 3
//!   daemons) for 100 B and 1000 B agreed messages from one sender, packing on
//!   and off, accelerated ring on, plus accelerated off at 100 B.
//! - `queue_depth`: the same ring with the client's send queue kept at the
//!   configured maximum versus 256 messages, packing off (where the core's
//!   backlog estimate walks the whole queue on each token visit).
//!
//! Before measuring, the wire efficiency (payload bytes over wire bytes with
//! 28 bytes of IP/UDP header per datagram) is printed once for 100 B and
//! 1000 B with packing on and off.
//!
//! Run with `cargo bench -p ringfence-bench`.

use criterion::{Criterion, SamplingMode, Throughput, criterion_main};
use ringfence_bench::{Counts, Load, Setup, run};
use std::hint::black_box;
use std::time::Duration;

/// Messages ordered per iteration: about 50 full token rotations at 100 B
/// with packing, 600 without.
const MESSAGES: u64 = 20_000;

fn drive(setup: &Setup, load: &Load) -> Counts {
    match run(setup, load) {
        Ok(c) => c,
        Err(e) => panic!("{setup:?} {load:?}: {e}"),
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn print_wire_efficiency() {
    println!("wire efficiency, 3 daemons, {MESSAGES} agreed messages from daemon 0, MTU 1500:");
    println!("  size     packing  datagrams  wire bytes  payload bytes  efficiency");
    for size in [100, 1000] {
        for packing in [true, false] {
            let c = drive(&Setup::with(packing, true), &Load::new(MESSAGES, size));
            println!(
                "  {size:>4} B   {:>7}  {:>9}  {:>10}  {:>13}  {:>10.4}",
                on_off(packing),
                c.datagrams,
                c.wire_bytes,
                c.payload_bytes,
                c.wire_efficiency()
            );
        }
    }
}

fn ordering(c: &mut Criterion) {
    print_wire_efficiency();
    let mut g = c.benchmark_group("ordering");
    g.throughput(Throughput::Elements(MESSAGES));
    // Iterations take milliseconds: equal-sized samples, fewer of them.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(20);
    let cases =
        [(100, true, true), (100, false, true), (1000, true, true), (1000, false, true), (100, true, false)];
    for (size, packing, accelerated) in cases {
        let setup = Setup::with(packing, accelerated);
        let load = Load::new(MESSAGES, size);
        let name = format!("{size}B/packing-{}/accel-{}", on_off(packing), on_off(accelerated));
        g.bench_function(name, |b| b.iter(|| drive(black_box(&setup), &load)));
    }
    g.finish();
}

fn queue_depth(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue_depth");
    g.throughput(Throughput::Elements(MESSAGES));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(20);
    let setup = Setup::with(false, true);
    for depth in [setup.ring.max_pending_messages, 256] {
        let load = Load { queue_depth: depth, ..Load::new(MESSAGES, 100) };
        let name = format!("100B/packing-off/depth-{depth}");
        g.bench_function(name, |b| b.iter(|| drive(black_box(&setup), &load)));
    }
    g.finish();
}

/// Runs every group; command-line options override these defaults.
fn benches() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    ordering(&mut c);
    queue_depth(&mut c);
}

criterion_main!(benches);
