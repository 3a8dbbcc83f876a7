//! The hosts: one network namespace per daemon (`<prefix>-h<i>`), each with
//! a veth pair to a bridge in a namespace of its own (`<prefix>-br`), at
//! `10.213.0.<i+1>/24`. Faults are iptables rules in the receiving host's
//! namespace (INPUT chain: unicast and multicast alike), so a cut is one
//! direction of one pair of hosts; loss is a random-drop rule. The daemons
//! run in their hosts with `ip netns exec`; everything made here is removed
//! when dropped.

use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Runs a command; an error names it and says what it printed.
fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process can build the hosts: root, `ip` and `iptables`
/// present, and a network namespace can be made. `Err` says why not.
pub(crate) fn available() -> Result<(), String> {
    let id = Command::new("id").arg("-u").output().map_err(|e| format!("cannot run `id -u`: {e}"))?;
    if String::from_utf8_lossy(&id.stdout).trim() != "0" {
        return Err("not root (network namespaces need root)".into());
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!("`{tool}` is missing (Debian: apt-get install iproute2 iptables)"));
        }
    }
    let probe = format!("rfns-{}-probe", std::process::id());
    run(&["ip", "netns", "add", &probe])?;
    let rules = run(&["ip", "netns", "exec", &probe, "iptables", "-w", "-S"]);
    run(&["ip", "netns", "del", &probe])?;
    rules.map_err(|e| format!("iptables does not work in a namespace: {e}"))
}

/// Deletes namespaces `rfns-<pid>-*` left by processes that no longer run.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("rfns-") else { continue };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// The hosts of one run; removed when dropped.
pub(crate) struct Net {
    prefix: String,
    hosts: usize,
}

impl Net {
    /// Makes `hosts` hosts on one bridge under `prefix` (`rfns-<pid>-<tag>`).
    pub(crate) fn create(tag: &str, hosts: usize) -> Result<Self, String> {
        remove_leftovers();
        let mut net = Self { prefix: format!("rfns-{}-{tag}", std::process::id()), hosts: 0 };
        let br = net.bridge_ns();
        run(&["ip", "netns", "add", &br])?;
        run(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        run(&["ip", "-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let ns = net.host(i);
            run(&["ip", "netns", "add", &ns])?;
            net.hosts = i + 1;
            let port = format!("p{i}");
            run(&[
                "ip", "link", "add", &port, "netns", &br, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            run(&["ip", "-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            let cidr = format!("{}/24", Self::addr(i));
            run(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// Host `i`'s namespace.
    pub(crate) fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// Host `i`'s address.
    pub(crate) fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, 0, u8::try_from(i + 1).expect("at most 254 hosts"))
    }

    fn iptables(&self, host: usize, rule: &[&str]) -> Result<(), String> {
        let ns = self.host(host);
        let mut args = vec!["ip", "netns", "exec", &ns, "iptables", "-w"];
        args.extend_from_slice(rule);
        run(&args)
    }

    /// Drops every IPv4 datagram from host `from` at host `to`.
    pub(crate) fn cut(&self, from: usize, to: usize) -> Result<(), String> {
        let src = Self::addr(from).to_string();
        self.iptables(to, &["-A", "INPUT", "-s", &src, "-j", "DROP"])
    }

    /// Drops `percent` % of the IPv4 datagrams every host receives.
    pub(crate) fn loss(&self, percent: u32) -> Result<(), String> {
        let p = format!("{:.4}", f64::from(percent) / 100.0);
        for h in 0..self.hosts {
            self.iptables(
                h,
                &["-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"],
            )?;
        }
        Ok(())
    }

    /// Removes every cut and every loss.
    pub(crate) fn heal(&self) -> Result<(), String> {
        for h in 0..self.hosts {
            self.iptables(h, &["-F", "INPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = run(&["ip", "netns", "del", &self.host(i)]);
        }
        let _ = run(&["ip", "netns", "del", &self.bridge_ns()]);
    }
}

/// The daemons, one per host, started with `ip netns exec` (which runs the
/// daemon in place: the child is the daemon); killed (and continued, if
/// stopped) and reaped when dropped. Each one's standard error goes to
/// `<dir>/d<i>.log`, appended across restarts.
pub(crate) struct Daemons {
    bin: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    hosts: Vec<String>,
    children: Vec<Option<Child>>,
}

impl Daemons {
    /// Starts daemon `d<i>` of `config` in `hosts[i]`, for every `i`.
    pub(crate) fn start(
        bin: PathBuf,
        config: PathBuf,
        dir: PathBuf,
        hosts: Vec<String>,
    ) -> Result<Self, String> {
        let n = hosts.len();
        let mut d = Self { bin, config, dir, hosts, children: (0..n).map(|_| None).collect() };
        for i in 0..n {
            d.spawn(i)?;
        }
        Ok(d)
    }

    /// Starts (or restarts) daemon `i`.
    pub(crate) fn spawn(&mut self, i: usize) -> Result<(), String> {
        let log_path = self.dir.join(format!("d{i}.log"));
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i]])
            .arg(&self.bin)
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .args(["--name", &format!("d{i}")])
            .env("RINGFENCE_LOG", std::env::var("RINGFENCE_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start daemon d{i} in {}: {e}", self.hosts[i]))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// `kill -9` of daemon `i`, reaped.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to daemon `i`.
    pub(crate) fn signal(&self, i: usize, signal: &str) -> Result<(), String> {
        let pid = self.children[i].as_ref().ok_or_else(|| format!("daemon d{i} is not running"))?.id();
        run(&["kill", &format!("-{signal}"), &pid.to_string()])
    }

    /// Daemons that exited by themselves: `(index, status)`.
    pub(crate) fn exited(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(child) = c {
                if let Ok(Some(status)) = child.try_wait() {
                    out.push((i, status.to_string()));
                    *c = None;
                }
            }
        }
        out
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            let _ = self.signal(i, "CONT");
            self.kill(i);
        }
    }
}
