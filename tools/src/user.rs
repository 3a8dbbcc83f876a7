//! `ringfence user`: an interactive client, like Spread's spuser.
//!
//! Commands, one per line (a line editor with history on a terminal):
//! `j GROUP` join (with `--mode`, and `--vs` for a closed VS group),
//! `l GROUP` leave, `s GROUP[,GROUP...] TEXT` send (agreed) to one or more
//! groups, `S ...` send safe, `q` quit, `?` help. Everything that arrives is
//! printed as a line (`[chat] #alice#d0: hello`, `view chat: ...`); flush
//! requests of VS groups are answered at once. In keyed modes the client
//! library seals and opens payloads by itself; views show the mode and the
//! key id. In the layered modes (`layered-tgdh`, ...) the members agree on
//! each view's key among themselves, signing with `--identity` and checking
//! each other against `--keys`; a `secure view` line follows each view once
//! its key is agreed (epoch and key id, never the key), and lines sent
//! before it are held and sent then.
//!
//! At `q` or the end of its input, `user` sends itself a marker through the
//! ring and prints what arrives until the marker does, so a piped session
//! shows the deliveries of what it sent before it exits.
//!
//! The daemon is found by `--socket PATH`, `--tcp ADDR`, or `--config FILE`
//! (with `--daemon NAME` unless exactly one configured address is on this
//! machine).

use crate::connect_opts::ConnectOpts;
use clap::Args;
use ringfence_client::{
    Address, Client, Event, GroupMode, Membership, Message, Service, ViewCause, ViewKind,
};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The message type of the marker `user` sends itself before exiting.
const MARKER_TYPE: u16 = 0xFFFF;

/// Options of `ringfence user`.
#[derive(Args, Debug)]
pub(crate) struct UserArgs {
    /// The daemon's client socket.
    #[arg(long, conflicts_with_all = ["tcp", "config"])]
    socket: Option<PathBuf>,
    /// The daemon's TCP client address (`client_tcp`), with TLS or a token.
    #[arg(long, conflicts_with = "config")]
    tcp: Option<std::net::SocketAddr>,
    /// The cluster configuration: connect to the client socket of the
    /// daemon `--daemon` names there.
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --config: the daemon to connect to (may be left out when exactly
    /// one configured address is on this machine).
    #[arg(long, requires = "config")]
    daemon: Option<String>,
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
    /// Join closed virtual-synchrony groups (implied by `integrated-vs` and
    /// the layered modes).
    #[arg(long)]
    vs: bool,
    /// Layered modes: this client's secret key file (`ringfence keygen
    /// client NAME`, the name being `--name`).
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Layered modes: the directory of the members' public keys, one
    /// `NAME.pub` per client name.
    #[arg(long, value_name = "DIR")]
    keys: Option<PathBuf>,
}

const HELP: &str =
    "commands: j GROUP | l GROUP | s GROUP[,GROUP...] TEXT | S GROUP[,GROUP...] TEXT (safe) | q | ?";

/// Where to connect, from the options.
fn address(args: &UserArgs) -> Result<Address, String> {
    if let Some(t) = args.tcp {
        return Ok(Address::Tcp(t));
    }
    if let Some(s) = &args.socket {
        return Ok(Address::Unix(s.clone()));
    }
    let Some(config) = &args.config else {
        return Err("say which daemon: --socket PATH, --config FILE [--daemon NAME], or --tcp ADDR".into());
    };
    let name = match &args.daemon {
        Some(n) => n.clone(),
        None => ringfence_engine::local_daemon(config)?,
    };
    let endpoints = ringfence_engine::endpoints(config).map_err(|e| e.to_string())?;
    let e = endpoints.iter().find(|e| e.name == name).ok_or_else(|| {
        let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
        format!(
            "{}: no daemon named `{name}` in [[cluster.daemon]] (the names are: {})",
            config.display(),
            names.join(", ")
        )
    })?;
    Ok(Address::Unix(e.client_socket.clone()))
}

/// What a line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Join(&'a str),
    Leave(&'a str),
    Send(Service, Vec<&'a str>, &'a str),
    Quit,
    Help,
    Nothing,
    /// Not a command: what to say.
    Bad(String),
}

fn parse(line: &str) -> Command<'_> {
    let line = line.trim();
    let (cmd, rest) = line.split_once(char::is_whitespace).map_or((line, ""), |(c, r)| (c, r.trim_start()));
    let one_group = |what: &str| {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            Err(format!("{what} takes one group: {cmd} GROUP"))
        } else {
            Ok(rest)
        }
    };
    match cmd {
        "" => Command::Nothing,
        "j" => one_group("join").map_or_else(Command::Bad, Command::Join),
        "l" => one_group("leave").map_or_else(Command::Bad, Command::Leave),
        "s" | "S" => {
            let service = if cmd == "S" { Service::Safe } else { Service::Agreed };
            let Some((groups, text)) = rest.split_once(char::is_whitespace) else {
                return Command::Bad(format!("{cmd} needs groups and text: {cmd} GROUP[,GROUP...] TEXT"));
            };
            let groups: Vec<&str> = groups.split(',').collect();
            if groups.iter().any(|g| g.is_empty()) {
                return Command::Bad(format!(
                    "empty group name in `{}`",
                    rest.split_whitespace().next().unwrap_or("")
                ));
            }
            Command::Send(service, groups, text.trim_start())
        }
        "q" | "quit" | "exit" => Command::Quit,
        "?" | "h" | "help" => Command::Help,
        other => Command::Bad(format!("unknown command `{other}`")),
    }
}

/// The line printed for an event.
fn describe(ev: &Event) -> String {
    match ev {
        Event::Message(m) => message_line(m),
        Event::Membership(v) => view_line(v),
        Event::Undecipherable { sender, group, key_id, reason, .. } => {
            format!("[{group}] {sender}: (undecipherable under key {key_id:08x}: {reason})")
        }
        Event::FlushRequest { group, .. } => format!("view {group}: flush requested (answered)"),
        Event::SecureView { group, epoch, key_id, members } => format!(
            "secure view {group}: epoch {}.{}, key {key_id:08x}, {} member{}: {}",
            epoch >> 32,
            epoch & 0xffff_ffff,
            members.len(),
            if members.len() == 1 { "" } else { "s" },
            members.join(" ")
        ),
        Event::AgreementRefused { group, sender, reason } => {
            format!("[{group}] key agreement message from {sender} refused: {reason}")
        }
        Event::Error { code, text } => format!("error ({code:?}): {text}"),
        other => format!("{other:?}"),
    }
}

fn message_line(m: &Message) -> String {
    let service = match m.service {
        Service::Agreed => String::new(),
        s => format!(" ({})", s.name()),
    };
    format!("[{}] {}{service}: {}", m.groups.join(","), m.sender, String::from_utf8_lossy(&m.payload))
}

fn view_line(v: &Membership) -> String {
    let cause = match v.cause {
        ViewCause::Join => "join",
        ViewCause::Leave => "leave",
        ViewCause::Disconnect => "disconnect",
        ViewCause::Network => "network change",
        ViewCause::Rekey => "rekey",
    };
    if v.kind == ViewKind::Transitional {
        return format!("view {}: transitional ({cause}): {}", v.group, v.members.join(" "));
    }
    let key = v.key.as_ref().map_or(String::new(), |(id, _)| format!(", key {id:08x}"));
    let mode = if v.mode == GroupMode::None { String::new() } else { format!(", {}", v.mode) };
    format!(
        "view {}: {} member{} after {cause} (view {}.{}/{}{mode}{key}): {}",
        v.group,
        v.members.len(),
        if v.members.len() == 1 { "" } else { "s" },
        v.view_id.ring_rep,
        v.view_id.ring_seq,
        v.view_id.counter,
        v.members.join(" ")
    )
}

/// Reads command lines into `tx`: with a line editor (history, editing) on
/// a terminal, plain lines otherwise. Returns how to print while reading.
fn start_input(tx: mpsc::Sender<String>) -> Box<dyn FnMut(String) + Send> {
    let plain = |tx: mpsc::Sender<String>| {
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Box::new(|s: String| println!("{s}")) as Box<dyn FnMut(String) + Send>
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stdin())
        || !std::io::IsTerminal::is_terminal(&std::io::stdout())
    {
        return plain(tx);
    }
    let Ok(mut editor) = rustyline::DefaultEditor::new() else { return plain(tx) };
    let Ok(mut printer) = editor.create_external_printer() else { return plain(tx) };
    std::thread::spawn(move || {
        loop {
            match editor.readline("> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                // Ctrl-C, Ctrl-D: quit.
                Err(_) => {
                    let _ = tx.send("q".into());
                    break;
                }
            }
        }
    });
    Box::new(move |s: String| {
        let _ = rustyline::ExternalPrinter::print(&mut printer, format!("{s}\n"));
    })
}

pub(crate) fn main(args: &UserArgs) -> ExitCode {
    let addr = match address(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ringfence user: {e}");
            return ExitCode::from(2);
        }
    };
    let mut c = match Client::connect_with(&addr, &args.name, &args.connect.options()) {
        Ok(c) => c,
        Err(e) => {
            let hint = match &addr {
                Address::Unix(_) => {
                    "; is the daemon running? (`ringfence daemon --config FILE --name NAME`; its socket is `[paths] client_socket`, by default <state_dir>/client.sock)"
                }
                Address::Tcp(_) => {
                    "; is the daemon's `client_tcp` listening, and do --tls-*/--token match its [clients]?"
                }
            };
            eprintln!("ringfence user: {e}{hint}");
            return ExitCode::from(1);
        }
    };
    if args.mode.layered() {
        let (Some(identity), Some(keys)) = (&args.identity, &args.keys) else {
            eprintln!(
                "ringfence user: --mode {} needs --identity FILE and --keys DIR (`ringfence keygen client NAME`)",
                args.mode
            );
            return ExitCode::from(2);
        };
        match ringfence_client::LayeredIdentity::load(identity, keys) {
            Ok(id) => c.set_layered_identity(id),
            Err(e) => {
                eprintln!("ringfence user: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let (tx, rx) = mpsc::channel::<String>();
    let mut print = start_input(tx);
    print(format!("connected to daemon {} as {}; {HELP}", c.daemon_id(), c.private_name()));
    let me = c.private_name().to_string();
    let mut marker_at: Option<Instant> = None;
    loop {
        loop {
            match c.poll() {
                Ok(Some(ev)) => {
                    if let Event::Message(m) = &ev {
                        if m.msg_type == MARKER_TYPE && m.sender == me {
                            let _ = c.disconnect();
                            return ExitCode::SUCCESS;
                        }
                    }
                    print(describe(&ev));
                    if let Event::FlushRequest { group, view_id } = &ev {
                        if let Err(e) = c.flush_ok(group, *view_id) {
                            eprintln!("ringfence user: {e}");
                            return ExitCode::from(1);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("ringfence user: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        if let Some(t) = marker_at {
            if t.elapsed() > Duration::from_secs(5) {
                eprintln!("ringfence user: the daemon did not order the exit marker within 5 s; exiting");
                return ExitCode::from(1);
            }
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let line = match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => "q".into(),
        };
        let r = match parse(&line) {
            Command::Join(g) => c.join_with(g, args.vs, args.mode),
            Command::Leave(g) => c.leave(g),
            Command::Send(service, groups, text) => c.multicast(service, &groups, 0, text.as_bytes()),
            Command::Quit => {
                // Deliveries ordered before the marker are printed first.
                marker_at = Some(Instant::now());
                c.multicast(Service::Agreed, &[me.as_str()], MARKER_TYPE, b"")
            }
            Command::Help => {
                print(HELP.into());
                Ok(())
            }
            Command::Nothing => Ok(()),
            Command::Bad(why) => {
                print(format!("{why}; {HELP}"));
                Ok(())
            }
        };
        if let Err(e) = r {
            eprintln!("ringfence user: {e}");
            return ExitCode::from(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed_and_bad_ones_explained() {
        assert_eq!(parse("j chat"), Command::Join("chat"));
        assert_eq!(parse("  l chat "), Command::Leave("chat"));
        assert_eq!(parse("s chat hello world"), Command::Send(Service::Agreed, vec!["chat"], "hello world"));
        assert_eq!(parse("S a,b x"), Command::Send(Service::Safe, vec!["a", "b"], "x"));
        assert_eq!(parse("q"), Command::Quit);
        assert_eq!(parse(""), Command::Nothing);
        assert!(matches!(parse("s chat"), Command::Bad(w) if w.contains("GROUP[,GROUP...] TEXT")));
        assert!(matches!(parse("s a,,b x"), Command::Bad(w) if w.contains("empty group")));
        assert!(matches!(parse("j a b"), Command::Bad(w) if w.contains("one group")));
        assert!(matches!(parse("x"), Command::Bad(w) if w.contains("unknown command `x`")));
    }
}
