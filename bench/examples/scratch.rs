//! scratch
use ringfence_bench::*;
fn main() {
    for (packing, accel, size) in
        [(true, true, 100), (false, true, 100), (true, true, 1000), (false, true, 1000), (true, false, 100)]
    {
        for depth in [usize::MAX, 256] {
            let load = Load { queue_depth: depth, ..Load::new(20_000, size) };
            let setup = Setup::with(packing, accel);
            run(&setup, &load).unwrap();
            let t = std::time::Instant::now();
            let mut c = None;
            for _ in 0..5 {
                c = Some(run(&setup, &load).unwrap());
            }
            let el = t.elapsed() / 5;
            let c = c.unwrap();
            println!(
                "p{packing} a{accel} {size}B depth {depth}: {:?}/iter, {:.0} msg/s, eff {:.4}, vt {:?}",
                el,
                20_000.0 / el.as_secs_f64(),
                c.wire_efficiency(),
                c.virtual_time
            );
        }
    }
}
