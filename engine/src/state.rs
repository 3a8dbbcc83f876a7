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
