//! `ringfence keygen daemon NAME`: a daemon's Ed25519 identity.
//!
//! Writes `NAME.key` (the secret, mode 0600: keep it on that daemon's machine
//! only) and `NAME.pub` (one line, `ringfence-daemon-pub v1 NAME HEX`) into
//! `--dir` (default: the current directory), refusing to overwrite either,
//! and prints the line to paste into the cluster config:
//! `public_key = "HEX"` under that daemon's `[[cluster.daemon]]`.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `ringfence keygen`.
#[derive(Args, Debug)]
pub(crate) struct KeygenArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// A daemon identity: NAME.key (secret) and NAME.pub.
    Daemon {
        /// The daemon's name, as in `[[cluster.daemon]] name`.
        name: String,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

pub(crate) fn main(args: &KeygenArgs) -> ExitCode {
    let What::Daemon { name, dir } = &args.what;
    match ringfence_crypto::identity::write_keypair(dir, name, &mut rand::rng()) {
        Ok((secret, public)) => {
            let entry = std::fs::read_to_string(&public)
                .ok()
                .and_then(|t| t.trim().parse::<ringfence_crypto::identity::PublicEntry>().ok());
            println!("secret key: {} (mode 0600; keep it on daemon {name}'s machine)", secret.display());
            println!("public key: {}", public.display());
            if let Some(e) = entry {
                println!("add under daemon {name}'s [[cluster.daemon]] in every daemon's config:");
                println!("public_key = \"{}\"", e.key);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keygen: {e}");
            ExitCode::from(1)
        }
    }
}
