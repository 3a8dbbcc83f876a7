//! The ring thread's socket I/O, behind one small interface with two
//! implementations: `portable` (a blocking std socket with read timeouts,
//! here) and `io_uring` (`crate::uring`). The daemon picks one at bind time
//! from `[daemon] backend`; `auto` tries io_uring and falls back.

use crate::config::BackendChoice;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use tracing::{info, warn};

/// Datagrams taken without waiting after the first one of a wait.
const DRAIN: usize = 256;

/// Socket I/O of the ring thread.
pub(crate) trait Backend: std::fmt::Debug {
    /// Waits at most `timeout` for datagrams and gives each one received to
    /// `on_datagram` (source, bytes). It may return early with none.
    fn wait(&mut self, timeout: Duration, on_datagram: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<()>;
    /// Sends, or queues until `flush_sends`, one datagram.
    fn send(&mut self, to: SocketAddr, bytes: &[u8]);
    /// Hands every queued send to the kernel (one submission on io_uring).
    fn flush_sends(&mut self) -> io::Result<()>;
    /// `(sent, send_errors)` so far.
    fn counters(&self) -> (u64, u64);
    /// The name the log shows.
    fn name(&self) -> &'static str;
}

/// Opens the backend `choice` asks for on the bound `socket`. `max_datagram`
/// is the largest datagram expected (larger ones may be truncated and are
/// then dropped).
pub(crate) fn open(
    choice: BackendChoice,
    socket: UdpSocket,
    max_datagram: usize,
) -> io::Result<Box<dyn Backend>> {
    match choice {
        BackendChoice::Portable => Ok(Box::new(Portable::new(socket))),
        BackendChoice::IoUring => Ok(uring(crate::uring::Uring::new(socket, max_datagram)?)),
        BackendChoice::Auto => {
            // Setup needs its own handle: on failure the socket goes to the
            // portable backend.
            let probe = socket.try_clone()?;
            match crate::uring::Uring::new(probe, max_datagram) {
                Ok(u) => Ok(uring(u)),
                Err(e) => {
                    warn!(error = %e, "io_uring cannot be set up here: using the portable backend");
                    Ok(Box::new(Portable::new(socket)))
                }
            }
        }
    }
}

fn uring(u: crate::uring::Uring) -> Box<dyn Backend> {
    info!(receive = u.receive_mode(), "io_uring set up");
    Box::new(u)
}

/// A blocking socket with read timeouts.
#[derive(Debug)]
pub(crate) struct Portable {
    socket: UdpSocket,
    buf: Vec<u8>,
    sent: u64,
    send_errors: u64,
}

impl Portable {
    pub(crate) fn new(socket: UdpSocket) -> Self {
        Self { socket, buf: vec![0u8; 65_536], sent: 0, send_errors: 0 }
    }
}

impl Backend for Portable {
    fn wait(&mut self, timeout: Duration, on_datagram: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<()> {
        if timeout.is_zero() {
            self.socket.set_nonblocking(true)?;
        } else {
            self.socket.set_read_timeout(Some(timeout))?;
        }
        let first = self.socket.recv_from(&mut self.buf);
        if timeout.is_zero() {
            self.socket.set_nonblocking(false)?;
        }
        match first {
            Ok((n, from)) => on_datagram(from, &self.buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(());
            }
            Err(e) => {
                warn!(error = %e, "receive failed");
                return Ok(());
            }
        }
        // Take whatever else is queued without waiting.
        self.socket.set_nonblocking(true)?;
        for _ in 0..DRAIN {
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, from)) => on_datagram(from, &self.buf[..n]),
                Err(_) => break,
            }
        }
        self.socket.set_nonblocking(false)
    }

    fn send(&mut self, to: SocketAddr, bytes: &[u8]) {
        match self.socket.send_to(bytes, to) {
            Ok(_) => self.sent += 1,
            Err(_) => self.send_errors += 1,
        }
    }

    fn flush_sends(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn counters(&self) -> (u64, u64) {
        (self.sent, self.send_errors)
    }

    fn name(&self) -> &'static str {
        "portable"
    }
}
