//! systemd readiness (`Type=notify`): a datagram to `$NOTIFY_SOCKET`, as
//! `sd_notify(3)` sends it. Without that variable (not started by
//! systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;
use tracing::debug;

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=...`) to the service
/// manager, if there is one. Failures are logged at debug level and
/// otherwise ignored: readiness is a courtesy, not a condition of running.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = notify_to(&path, state) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Sends `state` to the notify socket `path` (a file, or `@name` for an
/// abstract socket).
fn notify_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<usize> {
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (Linux): `@` stands for the leading NUL.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), std::path::Path::new(path))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn readiness_reaches_the_notify_socket() {
        let dir = std::env::temp_dir().join(format!("rf-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        // An abstract socket, as systemd usually gives.
        use std::os::linux::net::SocketAddrExt;
        let name = format!("rf-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        super::notify_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
