//! `ringfence user`: an interactive client, like Spread's spuser.
//!
//! Commands on standard input, one per line:
//! `j GROUP` join (with `--mode`, and `--vs` for a closed VS group),
//! `l GROUP` leave, `s GROUP TEXT` send (agreed), `S GROUP TEXT` send safe,
//! `q` quit. Everything that arrives is printed; flush requests of VS groups
//! are answered at once. In keyed modes the client library seals and opens
//! payloads by itself; views show the mode and the key id.

use crate::connect_opts::ConnectOpts;
use clap::Args;
use ringfence_client::{Address, Client, Event, GroupMode, Service};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// Options of `ringfence user`.
#[derive(Args, Debug)]
pub(crate) struct UserArgs {
    /// The daemon's client socket.
    #[arg(long, required_unless_present = "tcp", conflicts_with = "tcp")]
    socket: Option<PathBuf>,
    /// The daemon's TCP client address (`client_tcp`), with TLS or a token.
    #[arg(long)]
    tcp: Option<std::net::SocketAddr>,
    #[command(flatten)]
    connect: ConnectOpts,
    /// This client's name.
    #[arg(long, default_value = "user")]
    name: String,
    /// The protection mode stated when joining (`none`, `integrated-vs`,
    /// `optimized-evs`, `three-step`): must be the mode the daemons' policy
    /// gives the group.
    #[arg(long, default_value = "none")]
    mode: GroupMode,
    /// Join closed virtual-synchrony groups (implied by `integrated-vs`).
    #[arg(long)]
    vs: bool,
}

pub(crate) fn main(args: &UserArgs) -> ExitCode {
    let addr = args.tcp.map_or_else(|| Address::Unix(args.socket.clone().unwrap_or_default()), Address::Tcp);
    let mut c = match Client::connect_with(&addr, &args.name, &args.connect.options()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("user: {e}");
            return ExitCode::from(1);
        }
    };
    println!("connected as {}", c.private_name());
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        loop {
            match c.poll() {
                Ok(Some(ev)) => {
                    print_event(&ev);
                    if let Event::FlushRequest { group, view_id } = &ev {
                        if let Err(e) = c.flush_ok(group, *view_id) {
                            eprintln!("user: {e}");
                            return ExitCode::from(1);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("user: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        let line = match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut words = line.trim().splitn(3, ' ');
        let r = match (words.next(), words.next(), words.next()) {
            (Some("j"), Some(g), None) => c.join_with(g, args.vs, args.mode),
            (Some("l"), Some(g), None) => c.leave(g),
            (Some("s"), Some(g), Some(text)) => c.multicast(Service::Agreed, &[g], 0, text.as_bytes()),
            (Some("S"), Some(g), Some(text)) => c.multicast(Service::Safe, &[g], 0, text.as_bytes()),
            (Some("q"), None, None) => break,
            (Some(""), None, None) | (None, _, _) => Ok(()),
            _ => {
                println!("commands: j GROUP | l GROUP | s GROUP TEXT | S GROUP TEXT | q");
                Ok(())
            }
        };
        if let Err(e) = r {
            eprintln!("user: {e}");
            return ExitCode::from(1);
        }
    }
    let _ = c.disconnect();
    ExitCode::SUCCESS
}

fn print_event(ev: &Event) {
    match ev {
        Event::Message(m) => {
            println!(
                "message from {} to {:?} ({:?}): {}",
                m.sender,
                m.groups,
                m.service,
                String::from_utf8_lossy(&m.payload)
            );
        }
        Event::Membership(v) => {
            let key = v.key.as_ref().map_or(String::new(), |(id, _)| format!(", key {id:08x}"));
            println!(
                "view of {} {:?} ({:?}, {:?}, {}{key}): {:?}",
                v.group, v.view_id, v.kind, v.cause, v.mode, v.members
            );
        }
        Event::Undecipherable { sender, group, key_id, reason, .. } => {
            println!("undecipherable message from {sender} to {group} (key {key_id:08x}): {reason}");
        }
        Event::FlushRequest { group, .. } => println!("flush requested for {group}"),
        Event::Error { code, text } => println!("error {code:?}: {text}"),
        other => println!("{other:?}"),
    }
}
