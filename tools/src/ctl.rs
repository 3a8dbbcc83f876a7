//! `ringfence ctl --config FILE status|leave|shutdown|rekey NAME`: operator
//! requests to one daemon, over its client socket (on its machine) or its
//! `client_tcp` address, authenticated like a client and allowed by the
//! daemon's `[clients] admin` list.
//!
//! - `status`: the daemon's status (phase, ring, members, clients, queues,
//!   counters) as JSON;
//! - `leave`: it leaves the ring cleanly (the others reform at once) and
//!   stays out, refusing clients, until restarted;
//! - `shutdown`: it tells its clients, leaves the ring and exits 0 (as on
//!   `SIGTERM`);
//! - `rekey`: the ring agrees on a new server key now.

use crate::connect_opts::ConnectOpts;
use clap::{Args, ValueEnum};
use ringfence_client::{Address, AdminRequest, Client, ConnectOptions};
use ringfence_engine::Endpoint;
use std::path::PathBuf;
use std::process::ExitCode;

/// What `ringfence ctl` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Action {
    /// Print the daemon's status (JSON).
    Status,
    /// Leave the ring cleanly and stay out until restarted.
    Leave,
    /// Tell the clients, leave the ring and exit 0.
    Shutdown,
    /// Agree on a new server key now.
    Rekey,
}

/// Options of `ringfence ctl`.
#[derive(Args, Debug)]
pub(crate) struct CtlArgs {
    /// The cluster configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// What to ask.
    #[arg(value_enum)]
    action: Action,
    /// The daemon's name in `[[cluster.daemon]]`.
    name: String,
    #[command(flatten)]
    connect: ConnectOpts,
}

/// How to reach one daemon as a client.
#[derive(Debug)]
pub(crate) struct Target {
    endpoint: Endpoint,
    remote: bool,
    options: ConnectOptions,
}

impl Target {
    /// Daemon `e`, reached with the TLS or token flags in `connect` when
    /// over TCP.
    pub(crate) fn of(e: &Endpoint, connect: &ConnectOpts) -> Self {
        Self { endpoint: e.clone(), remote: connect.remote(), options: connect.options() }
    }

    /// The daemon's `client_tcp` address when TLS or token flags were
    /// given, else its Unix socket if it is on this machine (looked at on
    /// every connect: a daemon started later is found).
    fn address(&self) -> Result<Address, String> {
        let e = &self.endpoint;
        let local = e.is_local();
        // Credentials for TCP were given: use it wherever the daemon has it.
        if let Some(tcp) = e.client_tcp.filter(|_| self.remote) {
            return Ok(Address::Tcp(tcp));
        }
        if e.client_socket.exists() && (local || e.client_tcp.is_none()) {
            return Ok(Address::Unix(e.client_socket.clone()));
        }
        match e.client_tcp {
            Some(tcp) if self.remote => Ok(Address::Tcp(tcp)),
            Some(tcp) if !local => Err(format!(
                "daemon `{}` is reached over TCP ({tcp}, `client_tcp`): give --tls-ca with --tls-cert/--tls-key, \
                 or --token",
                e.name
            )),
            _ if local => Err(format!(
                "daemon `{}` is not running on this machine: its client socket {} does not exist (start it with \
                 `ringfence daemon --config ... --name {}`)",
                e.name,
                e.client_socket.display(),
                e.name
            )),
            _ => Err(format!(
                "daemon `{}` runs on another machine ({}) and has no `client_tcp` address: give it one (and \
                 [clients] authentication), or run this on its machine",
                e.name, e.address
            )),
        }
    }

    /// Connects, as a client named after this process.
    pub(crate) fn connect(&self) -> Result<Client, String> {
        let address = self.address()?;
        let me = format!("ops-{}", std::process::id());
        Client::connect_with(&address, &me, &self.options).map_err(|e| {
            let hint = match address {
                Address::Unix(_) => "is the daemon running? (`ringfence daemon --config ... --name ...`)",
                Address::Tcp(_) => "is the daemon running, and does it accept this client?",
            };
            format!("daemon `{}`: {e}; {hint}", self.endpoint.name)
        })
    }
}

pub(crate) fn main(args: &CtlArgs) -> ExitCode {
    let endpoints = match ringfence_engine::endpoints(&args.config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ringfence ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(e) = endpoints.iter().find(|e| e.name == args.name) else {
        let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
        eprintln!(
            "ringfence ctl: {}: no daemon named `{}` in [[cluster.daemon]] (the names are: {})",
            args.config.display(),
            args.name,
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let request = match args.action {
        Action::Status => AdminRequest::Status,
        Action::Leave => AdminRequest::Leave,
        Action::Shutdown => AdminRequest::Shutdown,
        Action::Rekey => AdminRequest::Rekey,
    };
    let mut client = match Target::of(e, &args.connect).connect() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringfence ctl: {e}");
            return ExitCode::from(1);
        }
    };
    match client.admin(request) {
        Ok(r) if r.ok => {
            if request == AdminRequest::Status {
                match serde_json::from_str::<serde_json::Value>(&r.text) {
                    Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(r.text)),
                    Err(_) => println!("{}", r.text),
                }
            } else {
                println!("{}", r.text);
            }
            let _ = client.disconnect();
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("ringfence ctl: {} refused: {}", request.name(), r.text);
            ExitCode::from(1)
        }
        // A daemon that leaves or stops may close before its Bye arrives.
        Err(e) if matches!(request, AdminRequest::Leave | AdminRequest::Shutdown) => {
            eprintln!("ringfence ctl: daemon `{}` closed the connection: {e}", args.name);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringfence ctl: daemon `{}`: {e}", args.name);
            ExitCode::from(1)
        }
    }
}
