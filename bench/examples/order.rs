//! Orders 20,000 messages of 100 B on 3 daemons once (for callgrind).
fn main() {
    let setup = ringfence_bench::Setup::with(true, true);
    let c = ringfence_bench::run(&setup, &ringfence_bench::Load::new(20_000, 100)).unwrap();
    println!("{c:?}");
}
