//! What a daemon keeps across restarts: its incarnation number and the
//! highest ring sequence it has seen, so that message ids and ring ids are
//! never reused.

use ringfence_proto::Incarnation;
use std::io;
use std::path::{Path, PathBuf};

/// Ring sequences reserved by one write of the state file. A daemon that
/// forms or installs a ring must have its sequence on disk before sending
/// (a restart must never number a ring twice); writing a bound this far
/// ahead makes the next this-many membership changes free of disk waits.
/// Under heavy disk load one synced write took about 480 ms here, the
/// commit token waited behind it, and the other members gave up on the
/// representative (a partition of 3 daemons under load: 9 s without a
/// ring). A restart starts numbering above the bound, so ring sequences
/// jump by up to this much per restart, far below `MAX_RING_STEP`.
pub(crate) const RING_SEQ_RESERVE: u64 = 256;

/// The persisted state file.
#[derive(Debug)]
pub(crate) struct State {
    path: PathBuf,
    pub(crate) incarnation: u32,
    /// The ring sequence this incarnation starts above (the bound read at
    /// start).
    pub(crate) ring_seq: u64,
    /// The bound on disk: every ring sequence up to it may be used.
    pub(crate) reserved: u64,
}

impl State {
    /// Reads the state (absent: a first start), counts a new incarnation and
    /// writes it back before the daemon sends anything.
    pub(crate) fn start(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("state");
        let (mut incarnation, mut ring_seq) = (0u32, 0u64);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    let Some((k, v)) = line.split_once('=') else { continue };
                    match k.trim() {
                        "incarnation" => incarnation = v.trim().parse().unwrap_or(0),
                        "ring_seq" => ring_seq = v.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
                incarnation = incarnation.wrapping_add(1);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let s = Self { path, incarnation, ring_seq, reserved: ring_seq.saturating_add(RING_SEQ_RESERVE) };
        s.save()?;
        Ok(s)
    }

    /// What the protocol core needs from it.
    pub(crate) fn incarnation(&self) -> Incarnation {
        Incarnation { ring_seq: self.ring_seq, first_msg_seq: (u64::from(self.incarnation) << 32) | 1 }
    }

    /// Makes ring sequence `seq` usable: if it is above the bound on disk,
    /// writes a new bound `RING_SEQ_RESERVE` above it. Returns the bound.
    pub(crate) fn reserve_ring_seq(&mut self, seq: u64) -> io::Result<u64> {
        if seq > self.reserved {
            let before = self.reserved;
            self.reserved = seq.saturating_add(RING_SEQ_RESERVE);
            if let Err(e) = self.save() {
                self.reserved = before;
                return Err(e);
            }
        }
        Ok(self.reserved)
    }

    /// Writes the file durably: a temporary file, synced, renamed over the
    /// old one, and the directory synced.
    fn save(&self) -> io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("incarnation={}\nring_seq={}\n", self.incarnation, self.reserved).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// One daemon per name and state directory: an exclusive `flock` on
/// `<state_dir>/lock`, held for the life of the process (the kernel drops
/// it when the process dies, however it dies). The file holds the holder's
/// pid, for the message a second daemon gets.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl Lock {
    /// Takes the lock of daemon `name` in `dir` (created if missing), or
    /// says who holds it and what to do.
    pub(crate) fn take(dir: &Path, name: &str) -> io::Result<Self> {
        use nix::fcntl::{Flock, FlockArg};
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the state directory {} of daemon `{name}`: {e}; create it (writable by this \
                     user) or set `[paths] state_dir`",
                    dir.display()
                ),
            )
        })?;
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open the lock file {}: {e}", path.display()))
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut file) => {
                file.set_len(0)?;
                file.rewind()?;
                writeln!(file, "{}", std::process::id())?;
                Ok(Self { _file: file })
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let holder = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
                Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "daemon `{name}` is already running{holder}: it holds {}. One daemon per name and state \
                         directory; stop that one first (`ringfence ctl shutdown {name}` or SIGTERM), or run \
                         this one under another `--name`",
                        path.display()
                    ),
                ))
            }
            Err((_, e)) => Err(io::Error::other(format!("cannot lock {}: {e}", path.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One write reserves `RING_SEQ_RESERVE` sequences; a restart numbers
    /// above the bound on disk, never below a sequence it may have used.
    #[test]
    fn one_write_reserves_many_ring_sequences_and_a_restart_starts_above_them() {
        let dir = std::env::temp_dir().join(format!("ringfence-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = State::start(&dir).unwrap();
        assert_eq!((s.incarnation, s.ring_seq, s.reserved), (0, 0, RING_SEQ_RESERVE));
        let on_disk = || std::fs::read_to_string(dir.join("state")).unwrap();
        assert!(on_disk().contains(&format!("ring_seq={RING_SEQ_RESERVE}")));
        // Within the bound: nothing written.
        let before = std::fs::metadata(dir.join("state")).unwrap().modified().unwrap();
        assert_eq!(s.reserve_ring_seq(10).unwrap(), RING_SEQ_RESERVE);
        assert_eq!(std::fs::metadata(dir.join("state")).unwrap().modified().unwrap(), before);
        // Past it: a new bound that far above the sequence.
        assert_eq!(s.reserve_ring_seq(RING_SEQ_RESERVE + 5).unwrap(), 2 * RING_SEQ_RESERVE + 5);
        drop(s);
        let s = State::start(&dir).unwrap();
        assert_eq!(s.incarnation, 1);
        assert_eq!(s.ring_seq, 2 * RING_SEQ_RESERVE + 5, "a restart numbers above every usable sequence");
        assert_eq!(s.reserved, 3 * RING_SEQ_RESERVE + 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
