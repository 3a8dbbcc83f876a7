//! The C library against real daemons: `tests/c/sp_total_order.c`, a
//! Spread-style program, is compiled with the machine's C compiler (`cc`,
//! or `$CC`) against `capi/include/sp.h` and linked to the
//! `libringfence.so` cargo built for this test. Two copies of it, on two
//! daemons of a 3-daemon cluster, join one group, multicast at the same
//! time and receive: both print the same total order, which a Rust client
//! on the third daemon sees too. The program also checks membership
//! messages and the error cases (short buffers, bad arguments).

use ringfence_client::Event;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Cluster, backends, connect, receive_until};

/// Messages each C client sends.
const COUNT: usize = 100;

/// The directory holding `libringfence.so`: cargo builds it (the
/// `ringfence-capi` dev-dependency) next to this test's executable.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    assert!(
        deps.join("libringfence.so").exists(),
        "libringfence.so is not in {}: build it with `cargo build -p ringfence-capi`",
        deps.display()
    );
    deps
}

/// Compiles `tests/c/NAME.c` into `out`, linked to libringfence.
fn compile(name: &str, out: &Path) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = manifest.join("tests/c").join(format!("{name}.c"));
    let include = manifest.join("../capi/include");
    let lib = library_dir();
    let exe = out.join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let result = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&source)
        .arg("-I")
        .arg(&include)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lringfence")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (set CC to another): {e}"));
    assert!(
        result.status.success(),
        "{cc} failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    exe
}

/// Waits for `child` at most `limit`; kills it if it takes longer.
fn finish(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish in {limit:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_c_test_program_joins_multicasts_and_receives_in_total_order_against_a_real_3_daemon_cluster() {
    let backend = backends()[0];
    let cluster = Cluster::start("capi", 3, backend);
    let exe = compile("sp_total_order", &cluster.dir);

    // A Rust client on the third daemon watches the group.
    let mut watcher = connect(&cluster.socket(2), "watcher");
    watcher.join("order").unwrap();
    receive_until(&mut watcher, |e| matches!(e, Event::Membership(v) if v.group == "order"));

    // The daemons may still be forming the ring: the C clients retry
    // nothing, so wait until each socket accepts a client.
    for i in 0..2 {
        connect(&cluster.socket(i), "probe").disconnect().unwrap();
    }
    let start = |i: usize, name: &str| {
        Command::new(&exe)
            .arg(cluster.socket(i))
            .args([name, "order", "3", &COUNT.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(0, "ca"), start(1, "cb"));

    let mut order = Vec::new();
    receive_until(&mut watcher, |e| {
        if let Event::Message(m) = e {
            order.push(format!("msg {}", String::from_utf8_lossy(&m.payload)));
        }
        order.len() == 2 * COUNT
    });

    let mut printed = Vec::new();
    for (child, name) in [(a, "ca"), (b, "cb")] {
        let out = finish(child, Duration::from_secs(30), name);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{name} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(lines[0].starts_with(&format!("connected #{name}#")), "{name}: {}", lines[0]);
        assert!(lines.contains(&"errors ok"), "{name} skipped the error checks");
        assert!(
            lines.iter().any(|l| l.starts_with("view order 3 members")),
            "{name} never saw the 3-member view:\n{stdout}"
        );
        assert_eq!(lines.last(), Some(&"done"), "{name} did not leave and disconnect cleanly");
        let msgs: Vec<String> =
            lines.iter().filter(|l| l.starts_with("msg ")).map(|l| l.to_string()).collect();
        assert_eq!(msgs.len(), 2 * COUNT, "{name} received {} messages", msgs.len());
        // Per-sender FIFO inside the total order.
        for sender in ["ca", "cb"] {
            let mine: Vec<&String> =
                msgs.iter().filter(|m| m.starts_with(&format!("msg {sender}:"))).collect();
            let want: Vec<String> = (0..COUNT).map(|k| format!("msg {sender}:{k}")).collect();
            assert!(mine.iter().copied().eq(want.iter()), "{name} saw {sender}'s messages out of order");
        }
        printed.push(msgs);
    }
    assert_eq!(printed[0], printed[1], "the two C clients disagree on the order");
    assert_eq!(printed[0], order, "the C clients and the Rust client disagree on the order");
}
