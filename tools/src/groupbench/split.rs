//! Partitions of daemons on loopback: iptables rules in a chain of this
//! process's own (`RFGB-<pid>`), jumped to from `INPUT` for packets coming
//! in on `lo`, dropping the UDP datagrams between the two sides' daemon
//! ports on 127.0.0.1 (every daemon sends from its own bound port). Nothing
//! else on the host is touched: only 127.0.0.1 to 127.0.0.1 datagrams with
//! both ports ours. A split is installed in one `iptables-restore --noflush`
//! call, a heal is one flush of the chain; dropping the [`Splitter`] removes
//! the jump and the chain, and a new one first removes chains left by
//! processes that no longer run (a run killed with SIGKILL).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// The chain's name prefix.
const PREFIX: &str = "RFGB-";

/// Runs `iptables -w ARGS`; an error says what it printed.
fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`iptables -w {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether partitions can be made here: root and a working `iptables`.
pub(crate) fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root (iptables needs root)".into());
    }
    iptables(&["-S", "INPUT"]).map_err(|e| format!("iptables does not work here: {e}"))
}

/// Removes the chains of `groupbench` runs whose process is gone.
fn remove_leftovers() {
    let Ok(out) = Command::new("iptables").args(["-w", "-S"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(chain) = line.strip_prefix("-N ") else { continue };
        let Some(pid) = chain.strip_prefix(PREFIX) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = iptables(&["-D", "INPUT", "-i", "lo", "-j", chain]);
            let _ = iptables(&["-F", chain]);
            let _ = iptables(&["-X", chain]);
        }
    }
}

/// This process's chain; removed (with its jump) when dropped.
pub(crate) struct Splitter {
    chain: String,
}

impl Splitter {
    /// Makes the (empty) chain and the jump to it.
    pub(crate) fn new() -> Result<Self, String> {
        available()?;
        remove_leftovers();
        let chain = format!("{PREFIX}{}", std::process::id());
        iptables(&["-N", &chain])?;
        let me = Self { chain };
        iptables(&["-I", "INPUT", "-i", "lo", "-j", &me.chain])?;
        Ok(me)
    }

    /// Drops every datagram between a port of `a` and a port of `b`, both
    /// ways, in one transaction.
    pub(crate) fn split(&self, a: &[u16], b: &[u16]) -> Result<(), String> {
        let mut rules = String::from("*filter\n");
        for (x, y) in a.iter().flat_map(|x| b.iter().map(move |y| (*x, *y))) {
            for (from, to) in [(x, y), (y, x)] {
                rules += &format!(
                    "-A {} -p udp -s 127.0.0.1 -d 127.0.0.1 --sport {from} --dport {to} -j DROP\n",
                    self.chain
                );
            }
        }
        rules += "COMMIT\n";
        let mut child = Command::new("iptables-restore")
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run iptables-restore: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())
            .map_err(|e| format!("iptables-restore: {e}"))?;
        let out = child.wait_with_output().map_err(|e| format!("iptables-restore: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("iptables-restore failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Removes every drop rule.
    pub(crate) fn heal(&self) -> Result<(), String> {
        iptables(&["-F", &self.chain])
    }
}

/// Removes chain `chain` and the jump to it.
pub(crate) fn remove(chain: &str) {
    let _ = iptables(&["-D", "INPUT", "-i", "lo", "-j", chain]);
    let _ = iptables(&["-F", chain]);
    let _ = iptables(&["-X", chain]);
}

impl Splitter {
    /// The chain's name.
    pub(crate) fn chain(&self) -> &str {
        &self.chain
    }
}

impl Drop for Splitter {
    fn drop(&mut self) {
        remove(&self.chain);
    }
}
