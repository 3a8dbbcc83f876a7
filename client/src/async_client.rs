//! [`AsyncClient`]: a [`Client`] whose receive is a future, on tokio
//! (feature `tokio`).
//!
//! The socket is registered with the runtime's reactor ([`AsyncFd`]); a
//! receive reads only when the reactor says the socket is readable, and
//! drains what the library already holds first. Sending (join, leave,
//! multicast) goes through [`AsyncClient::client`]: those calls write at
//! once and wait only while the socket's send buffer is full, which is the
//! daemon's backpressure; a task that must never wait for it should send
//! from `tokio::task::spawn_blocking` or a thread of its own.

use crate::{Client, ClientError, Event};
use tokio::io::unix::AsyncFd;

/// A [`Client`] that receives with `.await`.
///
/// ```no_run
/// # async fn run() -> Result<(), ringfence_client::ClientError> {
/// use ringfence_client::{Address, AsyncClient, Client, Event, Service};
/// let c = Client::connect(&Address::Unix("/tmp/ringfence/d0/client.sock".into()), "alice")?;
/// let mut c = AsyncClient::new(c)?;
/// c.client().join("chat")?;
/// c.client().multicast(Service::Agreed, &["chat"], 0, b"hello")?;
/// while let Ok(e) = c.receive().await {
///     if let Event::Message(m) = e {
///         println!("{}: {:?}", m.sender, m.payload);
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncClient {
    inner: AsyncFd<Client>,
}

impl AsyncClient {
    /// Registers `client`'s socket with the current tokio runtime's
    /// reactor (call it inside a runtime with I/O enabled).
    pub fn new(client: Client) -> Result<Self, ClientError> {
        // SAFETY: a `Client` owns its socket from `connect` to drop and
        // never replaces it, so `as_raw_fd` names the same open socket for
        // as long as the `AsyncFd` holds the client.
        #[allow(unsafe_code)]
        let inner = unsafe { AsyncFd::register(client) }.map_err(|e| ClientError::Io(e.into_parts().1))?;
        Ok(Self { inner })
    }

    /// The next event: waits, without blocking the thread, until one
    /// arrives.
    pub async fn receive(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(e) = self.inner.get_mut().poll()? {
                return Ok(e);
            }
            let mut ready = self.inner.readable_mut().await?;
            match ready.get_inner_mut().poll()? {
                Some(e) => return Ok(e),
                // `poll` read until the socket said `WouldBlock`: only then
                // may the readiness be cleared.
                None => ready.clear_ready(),
            }
        }
    }

    /// The client, to join, leave, multicast and query.
    pub fn client(&mut self) -> &mut Client {
        self.inner.get_mut()
    }

    /// Deregisters the socket and gives the client back.
    pub fn into_inner(self) -> Client {
        self.inner.into_inner()
    }
}
