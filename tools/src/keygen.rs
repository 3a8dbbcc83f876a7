//! `ringfence keygen`: keys and certificates.
//!
//! `ringfence keygen daemon NAME`: a daemon's Ed25519 identity. Writes `NAME.key` (the secret, mode 0600: keep it on that daemon's machine
//! only) and `NAME.pub` (one line, `ringfence-daemon-pub v1 NAME HEX`) into
//! `--dir` (default: the current directory), refusing to overwrite either,
//! and prints the line to paste into the cluster config:
//! `public_key = "HEX"` under that daemon's `[[cluster.daemon]]`.
//!
//! `ringfence keygen client NAME`: a client's Ed25519 identity for layered
//! groups, in the same two files (`NAME.key`, `NAME.pub`); the client
//! signs its key agreement messages with it (`ringfence user --identity`)
//! and the members find its public key as `NAME.pub` in their `--keys`
//! directory.
//!
//! `ringfence keygen ca --dir D`: a certificate authority for client
//! authentication (TLS): `ca.crt` and `ca.key` (mode 0600; keep it
//! offline). `ringfence keygen cert NAME --ca-dir D --dir OUT [--san ...]`:
//! `NAME.crt` and `NAME.key` (0600), signed by that CA, CN = NAME, usable as
//! a daemon's server certificate (`[clients] tls_cert`) and as a client
//! certificate (principal `cert:NAME`). ECDSA P-256 keys (rcgen, `ring`).
//! Nothing is overwritten.

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The subject CN of every CA `keygen ca` makes (the issuer's name in the
/// certificates it signs; a certificate from another CA fails on its
/// signature).
const CA_NAME: &str = "ringfence client CA";

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
    /// A client identity for layered groups: NAME.key (secret) and NAME.pub
    /// (the same format as a daemon's; NAME is the client's name). Give
    /// the client its .key (`--identity`) and every member the .pub files
    /// (`--keys DIR`).
    Client {
        /// The client's name, as it connects (`--name`).
        name: String,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// A certificate authority for TLS clients and daemons: ca.crt, ca.key.
    Ca {
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// A certificate signed by the CA: NAME.crt, NAME.key (CN = NAME).
    Cert {
        /// The subject common name: a client's `cert:NAME` principal, or a
        /// daemon's name.
        name: String,
        /// The directory holding ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// A subject alternative name (DNS name or IP address) clients
        /// check when this is a daemon's certificate; repeatable.
        #[arg(long)]
        san: Vec<String>,
    },
}

pub(crate) fn main(args: &KeygenArgs) -> ExitCode {
    let (name, dir) = match &args.what {
        What::Daemon { name, dir } => (name, dir),
        What::Client { name, dir } => {
            return match ringfence_crypto::identity::write_keypair(dir, name, &mut rand::rng()) {
                Ok((secret, public)) => {
                    println!(
                        "secret key: {} (mode 0600; give it to client {name}: --identity)",
                        secret.display()
                    );
                    println!(
                        "public key: {} (copy it into every member's --keys directory)",
                        public.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("keygen: {e}");
                    ExitCode::from(1)
                }
            };
        }
        What::Ca { dir } => return report(make_ca(dir)),
        What::Cert { name, ca_dir, dir, san } => return report(make_cert(name, ca_dir, dir, san)),
    };
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

/// Prints what was written, or the error.
fn report(r: Result<Vec<PathBuf>, String>) -> ExitCode {
    match r {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keygen: {e}");
            ExitCode::from(1)
        }
    }
}

/// Validity from January 1st of last year for `years` years.
fn validity(p: &mut CertificateParams, years: i32) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let year = 1970 + i32::try_from(now / 31_556_952).unwrap_or(0);
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

/// The CA's parameters: the same every time, so the CA can sign later
/// from its key alone (rcgen without a certificate parser).
fn ca_params() -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// Writes a new CA (`ca.crt`, `ca.key`) into `dir`; also used by `flood
/// --remote-tls` for its spawned cluster.
pub(crate) fn make_ca(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let key = KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
    let mut params = ca_params()?;
    validity(&mut params, 20);
    let cert = params.self_signed(&key).map_err(|e| format!("CA certificate: {e}"))?;
    let (crt, secret) = (dir.join("ca.crt"), dir.join("ca.key"));
    refuse_existing(&[&crt, &secret])?;
    write_new(&secret, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&crt, cert.pem().as_bytes(), 0o644)?;
    Ok(vec![crt, secret])
}

/// Writes `NAME.crt` and `NAME.key` into `dir`, signed by the CA in
/// `ca_dir`, with subject alternative names `san`.
pub(crate) fn make_cert(
    name: &str,
    ca_dir: &Path,
    dir: &Path,
    san: &[String],
) -> Result<Vec<PathBuf>, String> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(format!("`{name}` cannot name a file"));
    }
    let ca_key_path = ca_dir.join("ca.key");
    let ca_pem =
        std::fs::read_to_string(&ca_key_path).map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_pem).map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(san.to_vec()).map_err(|e| format!("--san: {e}"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 5);
    let key = KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| format!("certificate: {e}"))?;
    let (crt, secret) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    refuse_existing(&[&crt, &secret])?;
    write_new(&secret, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&crt, cert.pem().as_bytes(), 0o644)?;
    Ok(vec![crt, secret])
}

/// An error naming the first of `files` that exists (nothing is written).
fn refuse_existing(files: &[&Path]) -> Result<(), String> {
    match files.iter().find(|f| f.exists()) {
        Some(f) => Err(format!("{} exists; not overwriting", f.display())),
        None => Ok(()),
    }
}

/// Writes a new file with `mode` (the directory is created); an existing
/// file is an error, never overwritten.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| format!("{}: {e}", path.display()))
}
