//! Daemon identities: Ed25519 key pairs kept in files.
//!
//! Each daemon has a [`SecretIdentity`] in a key file readable only by its
//! owner, and the cluster configuration lists every daemon's
//! [`PublicIdentity`] (ARCHITECTURE.md section 7: "a file per daemon; public
//! keys in the cluster config"). [`write_keypair`] creates both files:
//!
//! ```text
//!   NAME.key (mode 0600)              NAME.pub (mode 0644)
//!   ringfence-daemon-key v1           ringfence-daemon-pub v1 NAME <64 hex digits>
//!   name: NAME
//!   secret: <64 hex digits>
//!   public: <64 hex digits>
//! ```
//!
//! The `.pub` line is what an operator pastes into the cluster configuration;
//! [`PublicEntry`] parses and prints it. Keys are lowercase hex when printed
//! (either case is accepted). Names are 1 to 64 characters from
//! `[A-Za-z0-9._-]`, so they are safe as file names and as config tokens.
//!
//! Loading refuses a secret file that group or others may access (like
//! OpenSSH, "permissions too open"), refuses to overwrite an existing key,
//! names the file and line of any parse error, and checks that the stored
//! public key matches the secret one.
//!
//! Signatures are Ed25519 (RFC 8032) with canonical `S` required; public keys
//! of small order ("weak" keys, which verify signatures on almost any message)
//! are refused when parsed, so a [`PublicIdentity`] is never weak.
//!
//! Randomness comes from the caller's RNG: the 32-byte seed is filled with
//! `rand::CryptoRng` and handed to `SigningKey::from_bytes`, so this crate does
//! not depend on the `rand_core` version of `ed25519-dalek`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::ed25519::signature::{MultipartSigner, MultipartVerifier};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use rand::CryptoRng;
use zeroize::Zeroizing;

/// Length of a public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of a secret key (the Ed25519 seed) in bytes.
pub const SECRET_KEY_LEN: usize = 32;
/// Length of a signature in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Longest daemon name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// First line of a secret key file.
pub const KEY_FILE_HEADER: &str = "ringfence-daemon-key v1";
/// First two tokens of a public key line.
pub const PUB_LINE_TAG: &str = "ringfence-daemon-pub v1";

/// Largest key file we read; real ones are under 200 bytes.
const MAX_FILE_LEN: u64 = 4096;

/// A daemon's Ed25519 signing key. Zeroized on drop; `Debug` shows only the public key.
pub struct SecretIdentity {
    key: SigningKey,
}

impl SecretIdentity {
    /// A fresh identity from the caller's cryptographically secure RNG.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; SECRET_KEY_LEN]);
        rng.fill_bytes(seed.as_mut());
        Self::from_bytes(&seed)
    }

    /// The identity with this 32-byte secret (the RFC 8032 private key).
    pub fn from_bytes(secret: &[u8; SECRET_KEY_LEN]) -> Self {
        Self { key: SigningKey::from_bytes(secret) }
    }

    /// The secret bytes, for writing a key file. Named so that every place that reads a secret stands out.
    pub fn expose_secret(&self) -> &[u8; SECRET_KEY_LEN] {
        self.key.as_bytes()
    }

    /// The matching public identity.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity(self.key.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.sign_parts(&[message])
    }

    /// Signs the concatenation of `parts` without building it in a buffer.
    pub fn sign_parts(&self, parts: &[&[u8]]) -> [u8; SIGNATURE_LEN] {
        self.key.multipart_sign(parts).to_bytes()
    }
}

impl fmt::Debug for SecretIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretIdentity").field("public", &self.public()).finish_non_exhaustive()
    }
}

/// A daemon's Ed25519 public key: printed and parsed as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicIdentity(VerifyingKey);

impl PublicIdentity {
    /// The public key with these bytes; refuses bytes that are not a point on
    /// the curve and points of small order.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<Self, ParseError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| ParseError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(ParseError::InvalidPublicKey);
        }
        Ok(Self(key))
    }

    /// The 32 bytes of the key.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        self.0.as_bytes()
    }

    /// Checks `signature` on `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> Result<(), BadSignature> {
        self.verify_parts(&[message], signature)
    }

    /// Checks `signature` on the concatenation of `parts`.
    pub fn verify_parts(&self, parts: &[&[u8]], signature: &[u8; SIGNATURE_LEN]) -> Result<(), BadSignature> {
        self.0.multipart_verify(parts, &Signature::from_bytes(signature)).map_err(|_| BadSignature)
    }
}

impl fmt::Display for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(self.as_bytes()))
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({self})")
    }
}

impl FromStr for PublicIdentity {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(&from_hex32(s)?)
    }
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature verification failed")]
pub struct BadSignature;

/// One line of a `.pub` file or of the cluster configuration:
/// `ringfence-daemon-pub v1 NAME <64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicEntry {
    /// The daemon's name.
    pub name: String,
    /// The daemon's public key.
    pub key: PublicIdentity,
}

impl fmt::Display for PublicEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUB_LINE_TAG} {} {}", self.name, self.key)
    }
}

impl FromStr for PublicEntry {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tokens = s.split_whitespace();
        let (Some("ringfence-daemon-pub"), Some("v1")) = (tokens.next(), tokens.next()) else {
            return Err(ParseError::BadHeader);
        };
        let name = tokens.next().ok_or(ParseError::MissingField("name"))?;
        check_name(name)?;
        let key = tokens.next().ok_or(ParseError::MissingField("key"))?.parse()?;
        if tokens.next().is_some() {
            return Err(ParseError::TrailingData);
        }
        Ok(Self { name: name.into(), key })
    }
}

/// The contents of a secret key file.
#[derive(Debug)]
pub struct KeyFile {
    /// The daemon's name, as written in the file.
    pub name: String,
    /// The daemon's signing key.
    pub secret: SecretIdentity,
}

/// What is wrong with the text of a key, a key file or a public key line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The line is not the expected header (`ringfence-daemon-key v1` or `ringfence-daemon-pub v1`).
    #[error("expected \"{KEY_FILE_HEADER}\" or \"{PUB_LINE_TAG} NAME KEY\"")]
    BadHeader,
    /// An expected field is missing or out of order.
    #[error("expected the {0} field")]
    MissingField(&'static str),
    /// A key is not exactly 64 hex digits.
    #[error("a key must be 64 hex digits")]
    BadHex,
    /// The bytes are not a valid Ed25519 public key, or are one of small order.
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey,
    /// A daemon name is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("a daemon name is 1 to {MAX_NAME_LEN} characters from [A-Za-z0-9._-]")]
    BadName,
    /// The `public:` line does not match the secret key.
    #[error("the public key does not match the secret key")]
    PublicMismatch,
    /// There is text after the last expected field or line.
    #[error("unexpected text after the last field")]
    TrailingData,
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
}

/// Errors of reading and writing key files. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The operating system refused to read or write a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A key file already exists; keys are never overwritten.
    #[error("{}: already exists; refusing to overwrite a key file", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A secret key file may be read or written by group or others.
    #[error(
        "{}: secret key file has mode {mode:03o}, open to group or others; run `chmod 600` on it",
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file is longer than any real key file.
    #[error("{}: longer than {MAX_FILE_LEN} bytes; not a key file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A key file is malformed.
    #[error("{}:{line}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
        /// What is wrong with it.
        source: ParseError,
    },
    /// The caller asked for a key named outside `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid daemon name {name:?}: {}", ParseError::BadName)]
    BadName {
        /// The name given.
        name: String,
    },
    /// The caller gave a key path that ends in `.pub`, which would collide with the public file.
    #[error("{}: a secret key path must not end in .pub", path.display())]
    PubPath {
        /// The path given.
        path: PathBuf,
    },
}

/// Generates a key pair named `name` and writes the secret file (mode 0600)
/// and the public file; returns their paths `(secret, public)`.
///
/// If `path` is an existing directory the files are `path/NAME.key` and
/// `path/NAME.pub`; otherwise `path` is the secret file and the public file is
/// `path` with its extension replaced by `.pub`. Refuses to overwrite either.
pub fn write_keypair<R: CryptoRng + ?Sized>(
    path: impl AsRef<Path>,
    name: &str,
    rng: &mut R,
) -> Result<(PathBuf, PathBuf), IdentityError> {
    let path = path.as_ref();
    if check_name(name).is_err() {
        return Err(IdentityError::BadName { name: name.into() });
    }
    let (secret_path, public_path) = if path.is_dir() {
        (path.join(format!("{name}.key")), path.join(format!("{name}.pub")))
    } else {
        if path.extension().is_some_and(|ext| ext == "pub") {
            return Err(IdentityError::PubPath { path: path.into() });
        }
        (path.into(), path.with_extension("pub"))
    };
    for existing in [&secret_path, &public_path] {
        if fs::symlink_metadata(existing).is_ok() {
            return Err(IdentityError::Exists { path: existing.clone() });
        }
    }

    let secret = SecretIdentity::generate(rng);
    let public = PublicEntry { name: name.into(), key: secret.public() };
    let secret_text = Zeroizing::new(format!(
        "{KEY_FILE_HEADER}\nname: {name}\nsecret: {}\npublic: {}\n",
        Zeroizing::new(to_hex(secret.expose_secret())).as_str(),
        public.key,
    ));

    write_new(&secret_path, 0o600, secret_text.as_bytes())?;
    if let Err(err) = write_new(&public_path, 0o644, format!("{public}\n").as_bytes()) {
        // We created the secret file a moment ago; do not leave half a pair behind.
        let _ = fs::remove_file(&secret_path);
        return Err(err);
    }
    Ok((secret_path, public_path))
}

/// Reads a secret key file: its name and its signing key.
pub fn read_key_file(path: impl AsRef<Path>) -> Result<KeyFile, IdentityError> {
    let path = path.as_ref();
    let io_err = |source| IdentityError::Io { path: path.into(), source };
    let file = File::open(path).map_err(io_err)?;
    // Check the file we opened, not the path, so a swap in between changes nothing.
    let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions { path: path.into(), mode });
    }
    let text = read_text(file, path)?;
    parse_key_file(&text).map_err(|(line, source)| IdentityError::Parse { path: path.into(), line, source })
}

/// Reads a secret key file and returns its signing key.
pub fn load_secret(path: impl AsRef<Path>) -> Result<SecretIdentity, IdentityError> {
    read_key_file(path).map(|file| file.secret)
}

/// Reads a `.pub` file: one `ringfence-daemon-pub v1 NAME KEY` line.
pub fn load_public(path: impl AsRef<Path>) -> Result<PublicEntry, IdentityError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| IdentityError::Io { path: path.into(), source })?;
    let text = read_text(file, path)?;
    let parse_err = |line, source| IdentityError::Parse { path: path.into(), line, source };
    let mut lines = text.lines().enumerate().map(|(i, line)| (i + 1, line));
    let entry = lines.next().map_or(Err(ParseError::BadHeader), |(_, line)| line.parse());
    let entry = entry.map_err(|source| parse_err(1, source))?;
    if let Some((line, _)) = lines.find(|(_, line)| !line.trim().is_empty()) {
        return Err(parse_err(line, ParseError::TrailingData));
    }
    Ok(entry)
}

/// Creates `path`, which must not exist, with permission bits `mode`, and writes `contents`.
fn write_new(path: &Path, mode: u32, contents: &[u8]) -> Result<(), IdentityError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                IdentityError::Exists { path: path.into() }
            } else {
                IdentityError::Io { path: path.into(), source }
            }
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| IdentityError::Io { path: path.into(), source })
}

/// Reads at most [`MAX_FILE_LEN`] bytes of UTF-8 text; the buffer is zeroized on drop.
fn read_text(file: File, path: &Path) -> Result<Zeroizing<String>, IdentityError> {
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| IdentityError::Io { path: path.into(), source })?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(IdentityError::TooLarge { path: path.into() });
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(err) => {
            let line = 1 + bytes[..err.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
            Err(IdentityError::Parse { path: path.into(), line, source: ParseError::NotText })
        }
    }
}

/// Parses the text of a secret key file; an error comes with its line number.
fn parse_key_file(text: &str) -> Result<KeyFile, (usize, ParseError)> {
    let mut lines = text.lines().enumerate().map(|(i, line)| (i + 1, line));
    let mut field = |prefix: &'static str, name: &'static str| match lines.next() {
        Some((n, line)) => {
            line.strip_prefix(prefix).map(|value| (n, value)).ok_or((n, ParseError::MissingField(name)))
        }
        None => Err((text.lines().count() + 1, ParseError::MissingField(name))),
    };

    match field(KEY_FILE_HEADER, "header") {
        Ok((_, "")) => {}
        Ok((n, _)) | Err((n, _)) => return Err((n, ParseError::BadHeader)),
    }
    let (n, name) = field("name: ", "name")?;
    check_name(name).map_err(|err| (n, err))?;
    let (n, secret) = field("secret: ", "secret")?;
    let secret = Zeroizing::new(from_hex32(secret).map_err(|err| (n, err))?);
    let secret = SecretIdentity::from_bytes(&secret);
    let (n, public) = field("public: ", "public")?;
    let public: PublicIdentity = public.parse().map_err(|err| (n, err))?;
    if public != secret.public() {
        return Err((n, ParseError::PublicMismatch));
    }
    if let Some((n, _)) = lines.find(|(_, line)| !line.trim().is_empty()) {
        return Err((n, ParseError::TrailingData));
    }
    Ok(KeyFile { name: name.into(), secret })
}

/// Checks a daemon name: 1 to [`MAX_NAME_LEN`] characters from `[A-Za-z0-9._-]`.
fn check_name(name: &str) -> Result<(), ParseError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid { Ok(()) } else { Err(ParseError::BadName) }
}

/// Lowercase hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Exactly 64 hex digits (either case) to 32 bytes.
fn from_hex32(s: &str) -> Result<[u8; 32], ParseError> {
    let digits = s.as_bytes();
    if digits.len() != 64 {
        return Err(ParseError::BadHex);
    }
    let nibble = |c: u8| char::from(c).to_digit(16).ok_or(ParseError::BadHex);
    let mut out = [0; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        // `to_digit(16)` is below 16, so the cast is lossless.
        *byte = ((nibble(pair[0])? << 4) | nibble(pair[1])?) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("ringfence-identity-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    /// RFC 8032, "Edwards-Curve Digital Signature Algorithm (EdDSA)", section
    /// 7.1, TEST 1 (empty message) and TEST 2 (one byte).
    #[test]
    fn ed25519_rfc8032_vectors() {
        let cases = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                &b""[..],
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                &[0x72][..],
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        for (secret, public, message, signature) in cases {
            let secret = SecretIdentity::from_bytes(&from_hex32(secret).unwrap());
            assert_eq!(secret.public().to_string(), public);
            let sig = secret.sign(message);
            assert_eq!(to_hex(&sig), signature);
            assert_eq!(secret.public().verify(message, &sig), Ok(()));
            let (a, b) = message.split_at(message.len() / 2);
            assert_eq!(secret.sign_parts(&[a, b]), sig);
            assert_eq!(secret.public().verify_parts(&[a, &[], b], &sig), Ok(()));
            assert_eq!(secret.public().verify(b"other", &sig), Err(BadSignature));
        }
    }

    #[test]
    fn generation_is_deterministic_in_the_rng() {
        let a = SecretIdentity::generate(&mut rng(1));
        let b = SecretIdentity::generate(&mut rng(1));
        let c = SecretIdentity::generate(&mut rng(2));
        assert_eq!(a.public(), b.public());
        assert_ne!(a.public(), c.public());
    }

    #[test]
    fn debug_shows_no_secret() {
        let secret = SecretIdentity::from_bytes(&[0x11; 32]);
        let shown = format!("{secret:?}");
        assert!(shown.starts_with("SecretIdentity { public: PublicIdentity("), "{shown}");
        assert!(!shown.contains(&to_hex(&[0x11; 32])));
        let file = KeyFile { name: "d1".into(), secret };
        assert!(!format!("{file:?}").contains("1111111111"));
    }

    #[test]
    fn public_identity_parsing() {
        let public = SecretIdentity::generate(&mut rng(3)).public();
        let hex = public.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(hex.parse(), Ok(public));
        assert_eq!(hex.to_uppercase().parse(), Ok(public));
        assert_eq!(hex[..62].parse::<PublicIdentity>(), Err(ParseError::BadHex));
        assert_eq!(format!("{hex}00").parse::<PublicIdentity>(), Err(ParseError::BadHex));
        assert_eq!(format!("{}zz", &hex[..62]).parse::<PublicIdentity>(), Err(ParseError::BadHex));
        assert_eq!(format!("{}é", &hex[..62]).parse::<PublicIdentity>(), Err(ParseError::BadHex));
        // The identity point (small order) is refused.
        let identity_point = format!("01{}", "00".repeat(31));
        assert_eq!(identity_point.parse::<PublicIdentity>(), Err(ParseError::InvalidPublicKey));
    }

    #[test]
    fn public_entry_line() {
        let public = SecretIdentity::generate(&mut rng(4)).public();
        let entry = PublicEntry { name: "daemon-1".into(), key: public };
        let line = entry.to_string();
        assert_eq!(line, format!("ringfence-daemon-pub v1 daemon-1 {public}"));
        assert_eq!(line.parse(), Ok(entry.clone()));
        assert_eq!(format!("  {line}  ").parse(), Ok(entry));
        assert_eq!(format!("{line} extra").parse::<PublicEntry>(), Err(ParseError::TrailingData));
        assert_eq!("ringfence-daemon-pub v2 d k".parse::<PublicEntry>(), Err(ParseError::BadHeader));
        assert_eq!("ringfence-daemon-pub v1".parse::<PublicEntry>(), Err(ParseError::MissingField("name")));
        assert_eq!("ringfence-daemon-pub v1 d".parse::<PublicEntry>(), Err(ParseError::MissingField("key")));
        assert_eq!(
            format!("ringfence-daemon-pub v1 d/x {public}").parse::<PublicEntry>(),
            Err(ParseError::BadName)
        );
    }

    #[test]
    fn names() {
        for good in ["a", "daemon-1", "d.example_2", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a b", "a/b", "..\u{0}", "né", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert_eq!(check_name(bad), Err(ParseError::BadName), "{bad:?}");
        }
    }

    #[test]
    fn write_then_load_in_a_directory() {
        let dir = TempDir::new();
        let (secret_path, public_path) = write_keypair(&dir.0, "daemon-1", &mut rng(5)).unwrap();
        assert_eq!(secret_path, dir.0.join("daemon-1.key"));
        assert_eq!(public_path, dir.0.join("daemon-1.pub"));
        assert_eq!(fs::metadata(&secret_path).unwrap().permissions().mode() & 0o777, 0o600);

        let file = read_key_file(&secret_path).unwrap();
        assert_eq!(file.name, "daemon-1");
        let entry = load_public(&public_path).unwrap();
        assert_eq!(entry.name, "daemon-1");
        assert_eq!(entry.key, file.secret.public());
        assert_eq!(load_secret(&secret_path).unwrap().public(), entry.key);

        let text = fs::read_to_string(&secret_path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], KEY_FILE_HEADER);
        assert_eq!(lines[1], "name: daemon-1");
        assert_eq!(lines[2], format!("secret: {}", to_hex(file.secret.expose_secret())));
        assert_eq!(lines[3], format!("public: {}", entry.key));
        assert_eq!(fs::read_to_string(&public_path).unwrap(), format!("{entry}\n"));
    }

    #[test]
    fn write_to_a_file_path() {
        let dir = TempDir::new();
        let (secret_path, public_path) = write_keypair(dir.0.join("node.key"), "node", &mut rng(6)).unwrap();
        assert_eq!(public_path, dir.0.join("node.pub"));
        assert_eq!(load_secret(&secret_path).unwrap().public(), load_public(&public_path).unwrap().key);
        assert!(matches!(
            write_keypair(dir.0.join("x.pub"), "x", &mut rng(6)),
            Err(IdentityError::PubPath { .. })
        ));
        assert!(matches!(write_keypair(&dir.0, "bad name", &mut rng(6)), Err(IdentityError::BadName { .. })));
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = TempDir::new();
        let (secret_path, public_path) = write_keypair(&dir.0, "d", &mut rng(7)).unwrap();
        let before = fs::read(&secret_path).unwrap();
        let err = write_keypair(&dir.0, "d", &mut rng(8)).unwrap_err();
        assert!(matches!(&err, IdentityError::Exists { path } if *path == secret_path), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"));
        assert_eq!(fs::read(&secret_path).unwrap(), before);

        // Only the public file exists: still refused, and no secret file is left behind.
        fs::remove_file(&secret_path).unwrap();
        let err = write_keypair(&dir.0, "d", &mut rng(8)).unwrap_err();
        assert!(matches!(&err, IdentityError::Exists { path } if *path == public_path), "{err}");
        assert!(!secret_path.exists());
    }

    #[test]
    fn refuses_an_open_secret_file() {
        let dir = TempDir::new();
        let (secret_path, _) = write_keypair(&dir.0, "d", &mut rng(9)).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&secret_path, fs::Permissions::from_mode(mode)).unwrap();
            let err = load_secret(&secret_path).unwrap_err();
            assert!(matches!(err, IdentityError::Permissions { mode: m, .. } if m == mode), "{err}");
            let message = err.to_string();
            assert!(message.contains(&secret_path.display().to_string()) && message.contains("chmod 600"));
        }
        fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(load_secret(&secret_path).is_ok());
    }

    /// Writes `text` as a 0600 key file and returns the error of loading it.
    fn load_text(dir: &TempDir, text: &[u8]) -> IdentityError {
        let path = dir.0.join("k.key");
        let _ = fs::remove_file(&path);
        write_new(&path, 0o600, text).unwrap();
        load_secret(&path).unwrap_err()
    }

    fn parse_error_at(err: &IdentityError) -> (usize, ParseError) {
        match err {
            IdentityError::Parse { line, source, .. } => (*line, *source),
            other => panic!("expected a parse error, got {other}"),
        }
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let dir = TempDir::new();
        let secret = SecretIdentity::from_bytes(&[3; 32]);
        let secret_hex = to_hex(secret.expose_secret());
        let public_hex = secret.public().to_string();
        let other_public = SecretIdentity::from_bytes(&[4; 32]).public().to_string();
        let good = format!("{KEY_FILE_HEADER}\nname: d\nsecret: {secret_hex}\npublic: {public_hex}\n");

        let cases: Vec<(String, (usize, ParseError))> = vec![
            (String::new(), (1, ParseError::BadHeader)),
            ("ringfence-daemon-key v2\n".into(), (1, ParseError::BadHeader)),
            (format!("{KEY_FILE_HEADER} extra\n"), (1, ParseError::BadHeader)),
            (format!("{KEY_FILE_HEADER}\n"), (2, ParseError::MissingField("name"))),
            (format!("{KEY_FILE_HEADER}\nname: a b\n"), (2, ParseError::BadName)),
            (
                format!("{KEY_FILE_HEADER}\nname: d\npublic: {public_hex}\n"),
                (3, ParseError::MissingField("secret")),
            ),
            (format!("{KEY_FILE_HEADER}\nname: d\nsecret: {}\n", &secret_hex[1..]), (3, ParseError::BadHex)),
            (
                format!("{KEY_FILE_HEADER}\nname: d\nsecret: {secret_hex}\n"),
                (4, ParseError::MissingField("public")),
            ),
            (
                format!("{KEY_FILE_HEADER}\nname: d\nsecret: {secret_hex}\npublic: {other_public}\n"),
                (4, ParseError::PublicMismatch),
            ),
            (format!("{good}\nmore\n"), (6, ParseError::TrailingData)),
        ];
        for (text, expected) in cases {
            let err = load_text(&dir, text.as_bytes());
            assert_eq!(parse_error_at(&err), expected, "{text:?}");
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("{}:{}: ", dir.0.join("k.key").display(), expected.0)),
                "{message}"
            );
            assert!(!message.contains(&secret_hex), "errors never show the secret");
        }

        let err = load_text(&dir, b"ringfence-daemon-key v1\nname: \xff\n");
        assert_eq!(parse_error_at(&err), (2, ParseError::NotText));
        assert!(matches!(load_text(&dir, &[b'a'; 5000]), IdentityError::TooLarge { .. }));

        // The good text with a blank line at the end loads.
        let path = dir.0.join("k.key");
        fs::remove_file(&path).unwrap();
        write_new(&path, 0o600, format!("{good}\n").as_bytes()).unwrap();
        assert_eq!(load_secret(&path).unwrap().public(), secret.public());

        let missing = dir.0.join("missing.key");
        assert!(matches!(load_secret(&missing), Err(IdentityError::Io { path, .. }) if path == missing));
    }

    #[test]
    fn public_file_errors() {
        let dir = TempDir::new();
        let path = dir.0.join("d.pub");
        let public = SecretIdentity::from_bytes(&[5; 32]).public();
        write_new(&path, 0o644, format!("{PUB_LINE_TAG} d {public}\n\nsecond line\n").as_bytes()).unwrap();
        let err = load_public(&path).unwrap_err();
        assert_eq!(parse_error_at(&err), (3, ParseError::TrailingData));
    }

    proptest! {
        #[test]
        fn hex_round_trip(bytes in any::<[u8; 32]>()) {
            prop_assert_eq!(from_hex32(&to_hex(&bytes)), Ok(bytes));
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,120}") {
            let _ = text.parse::<PublicIdentity>();
            let _ = text.parse::<PublicEntry>();
            let _ = parse_key_file(&text);
        }

        #[test]
        fn sign_verify_round_trip(seed in any::<[u8; 32]>(), message in proptest::collection::vec(any::<u8>(), 0..200)) {
            let secret = SecretIdentity::from_bytes(&seed);
            let mut sig = secret.sign(&message);
            prop_assert_eq!(secret.public().verify(&message, &sig), Ok(()));
            sig[0] ^= 1;
            prop_assert_eq!(secret.public().verify(&message, &sig), Err(BadSignature));
        }
    }
}
