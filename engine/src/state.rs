//! What a daemon keeps across restarts: its incarnation number and the
//! highest ring sequence it has seen, so that message ids and ring ids are
//! never reused.

use ringfence_proto::Incarnation;
use std::io;
use std::path::{Path, PathBuf};

/// The persisted state file.
#[derive(Debug)]
pub(crate) struct State {
    path: PathBuf,
    pub(crate) incarnation: u32,
    pub(crate) ring_seq: u64,
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
        let s = Self { path, incarnation, ring_seq };
        s.save()?;
        Ok(s)
    }

    /// What the protocol core needs from it.
    pub(crate) fn incarnation(&self) -> Incarnation {
        Incarnation { ring_seq: self.ring_seq, first_msg_seq: (u64::from(self.incarnation) << 32) | 1 }
    }

    /// Records a higher ring sequence.
    pub(crate) fn set_ring_seq(&mut self, seq: u64) -> io::Result<()> {
        if seq > self.ring_seq {
            self.ring_seq = seq;
            self.save()?;
        }
        Ok(())
    }

    /// Writes the file durably: a temporary file, synced, renamed over the
    /// old one, and the directory synced.
    fn save(&self) -> io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("incarnation={}\nring_seq={}\n", self.incarnation, self.ring_seq).as_bytes())?;
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
