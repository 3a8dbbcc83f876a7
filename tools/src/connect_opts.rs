//! How a command-line client connects over TCP: TLS and credentials
//! (`--tls-ca`, `--tls-cert`, `--tls-key`, `--tls-server-name`, `--token`),
//! shared by `ringfence user` and `ringfence flood`.

use clap::Args;
use ringfence_client::{ConnectOptions, TlsOptions};
use std::path::PathBuf;

/// Client connection flags (TCP clients; the Unix socket needs none).
#[derive(Args, Debug, Default)]
pub(crate) struct ConnectOpts {
    /// TLS: the CA certificate (PEM) the daemon's certificate must chain to.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// TLS: this client's certificate (PEM), to authenticate as `cert:<CN>`.
    #[arg(long, value_name = "PEM", requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS: the name the daemon's certificate must carry.
    #[arg(long, default_value = "localhost")]
    tls_server_name: String,
    /// A pre-shared token to authenticate with (`token:<name>`). It shows in
    /// the process list: prefer TLS client certificates on shared hosts.
    #[arg(long)]
    token: Option<String>,
}

impl ConnectOpts {
    /// Whether these flags are for a TCP connection (TLS or a token).
    pub(crate) fn remote(&self) -> bool {
        self.tls_ca.is_some() || self.token.is_some()
    }

    /// The client library's options.
    pub(crate) fn options(&self) -> ConnectOptions {
        let tls = self.tls_ca.as_ref().map(|ca| TlsOptions {
            ca_cert: ca.clone(),
            client_cert: self.tls_cert.clone().zip(self.tls_key.clone()),
            server_name: self.tls_server_name.clone(),
        });
        ConnectOptions { tls, token: self.token.clone() }
    }
}
