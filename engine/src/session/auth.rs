//! Client authentication: which `Hello.auth` kinds a connection may use and
//! who the client then is ([`Principal`]).
//!
//! ```text
//!  Unix socket ── PeerCredentials ──► SO_PEERCRED ─────────────► Local { uid, .. }
//!  TLS ────────── Tls ──────────────► verified client cert CN ──► Cert { cn }
//!  TLS / TCP* ─── Token ────────────► SHA-256, constant time ───► Token { name }
//!  TCP* ───────── PeerCredentials ──► only with no auth configured ► Remote(addr)
//!                                      (* plain TCP only if require_tls = false)
//! ```
//!
//! The rules are pure functions of the connection ([`Link`]), the `Hello`
//! and the configuration ([`Clients`]), so they are tested without sockets.

use super::Principal;
use crate::config::Clients;
use ringfence_proto::wire::client::{Auth, RefuseCode};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// What the transport says about a connection, before `Hello.auth` is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    /// A Unix socket, with the kernel's peer credentials.
    Unix(Principal),
    /// Plain TCP.
    Plain(SocketAddr),
    /// TLS over TCP, with the name of the verified client certificate, if
    /// the client presented one (an unverifiable one fails the handshake).
    Tls {
        /// The peer's address.
        addr: SocketAddr,
        /// The certificate's subject CN (else its first DNS name).
        cert: Option<String>,
    },
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix {p}"),
            Self::Plain(a) => write!(f, "tcp {a}"),
            Self::Tls { addr, .. } => write!(f, "tls {addr}"),
        }
    }
}

/// A refusal: the code and the text the client sees.
pub(crate) type Refusal = (RefuseCode, String);

/// Decides who the client is, or why it is refused. Never looks at a
/// token's bytes except to hash them; never puts them in a text.
pub(crate) fn authenticate(auth: &Auth, link: &Link, clients: &Clients) -> Result<Principal, Refusal> {
    let unsupported = |text: &str| Err((RefuseCode::AuthUnsupported, text.to_string()));
    if matches!(link, Link::Plain(_)) && clients.require_tls {
        return unsupported("this daemon requires TLS for TCP clients");
    }
    match (auth, link) {
        (Auth::PeerCredentials, Link::Unix(p)) => Ok(p.clone()),
        (Auth::PeerCredentials, Link::Plain(addr)) if clients.open_tcp() => Ok(Principal::Remote(*addr)),
        (Auth::PeerCredentials, _) => {
            unsupported("peer credentials work on the Unix socket only; use a client certificate or a token")
        }
        (Auth::Tls, Link::Tls { cert: Some(cn), .. }) => Ok(Principal::Cert { cn: cn.clone() }),
        (Auth::Tls, Link::Tls { cert: None, .. }) => {
            Err((RefuseCode::AuthFailed, "no valid client certificate".into()))
        }
        (Auth::Tls, _) => unsupported("certificate authentication needs a TLS connection"),
        (Auth::Token(_), Link::Unix(_)) => unsupported("on the Unix socket, use peer credentials"),
        (Auth::Token(token), _) => match find_token(token, clients) {
            Some(name) => Ok(Principal::Token { name, tls: matches!(link, Link::Tls { .. }) }),
            None => Err((RefuseCode::AuthFailed, "unknown token".into())),
        },
        _ => unsupported("unknown authentication kind"),
    }
}

/// The name of the configured token whose SHA-256 is the token's, compared
/// in constant time against every entry (no early exit).
fn find_token(token: &[u8], clients: &Clients) -> Option<String> {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut found = None;
    for t in &clients.tokens {
        if bool::from(t.sha256.ct_eq(digest.as_ref())) {
            found = Some(t.name.clone());
        }
    }
    found
}

/// The name a verified client certificate stands for: its subject's common
/// name, else its first DNS subject alternative name. `None` if the
/// certificate cannot be parsed or names nothing.
pub(crate) fn cert_name(der: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    common_name(cert.subject())
        .or_else(|| cert.valid_dns_names().next().map(str::to_string))
        .filter(|n| !n.is_empty())
}

/// The first common name (OID 2.5.4.3) in a DER `Name`'s contents (the
/// `RDNSequence` without its outer `SEQUENCE` header). Total: malformed
/// input gives `None`.
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        // RelativeDistinguishedName ::= SET OF AttributeTypeAndValue
        let (tag, mut set, rest) = der_item(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, rest) = der_item(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (tag, oid, value) = der_item(atv)?;
            if tag != 0x06 || oid != CN {
                continue;
            }
            let (tag, text, _) = der_item(value)?;
            // UTF8String, PrintableString, T61String, IA5String.
            return match tag {
                0x0c | 0x13 | 0x14 | 0x16 => std::str::from_utf8(text).ok().map(str::to_string),
                _ => None,
            };
        }
    }
    None
}

/// One DER item: its tag, its contents and what follows it.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientToken;
    use bytes::Bytes;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn clients(require_tls: bool) -> Clients {
        let sha256: [u8; 32] =
            ring::digest::digest(&ring::digest::SHA256, b"s3cret").as_ref().try_into().unwrap();
        Clients {
            tls: None,
            verifies_certs: true,
            require_tls,
            tokens: vec![ClientToken { name: "bob".into(), sha256 }],
            caps: crate::config::ClientCaps::default(),
            admin: Vec::new(),
        }
    }

    fn code(r: Result<Principal, Refusal>) -> Option<RefuseCode> {
        r.err().map(|(c, _)| c)
    }

    #[test]
    fn each_kind_needs_its_transport() {
        let local = Principal::Local { uid: 1, gid: 2, pid: 3 };
        let c = clients(false);
        assert_eq!(authenticate(&Auth::PeerCredentials, &Link::Unix(local.clone()), &c), Ok(local.clone()));
        assert_eq!(
            code(authenticate(&Auth::PeerCredentials, &Link::Plain(addr()), &c)),
            Some(RefuseCode::AuthUnsupported)
        );
        let tls = Link::Tls { addr: addr(), cert: Some("alice".into()) };
        assert_eq!(authenticate(&Auth::Tls, &tls, &c), Ok(Principal::Cert { cn: "alice".into() }));
        let bare = Link::Tls { addr: addr(), cert: None };
        let r = authenticate(&Auth::Tls, &bare, &c);
        assert_eq!(r, Err((RefuseCode::AuthFailed, "no valid client certificate".into())));
        assert_eq!(
            code(authenticate(&Auth::Tls, &Link::Plain(addr()), &c)),
            Some(RefuseCode::AuthUnsupported)
        );
        assert_eq!(
            code(authenticate(&Auth::Tls, &Link::Unix(local.clone()), &c)),
            Some(RefuseCode::AuthUnsupported)
        );
        let token = Auth::Token(Bytes::from_static(b"s3cret"));
        assert_eq!(code(authenticate(&token, &Link::Unix(local), &c)), Some(RefuseCode::AuthUnsupported));
    }

    #[test]
    fn tokens_are_checked_by_hash() {
        let good = Auth::Token(Bytes::from_static(b"s3cret"));
        let bad = Auth::Token(Bytes::from_static(b"s3creT"));
        let tls = Link::Tls { addr: addr(), cert: None };
        for c in [clients(false), clients(true)] {
            assert_eq!(authenticate(&good, &tls, &c), Ok(Principal::Token { name: "bob".into(), tls: true }));
            assert_eq!(authenticate(&bad, &tls, &c), Err((RefuseCode::AuthFailed, "unknown token".into())));
        }
        // Over plain TCP only when TLS is not required.
        assert_eq!(
            authenticate(&good, &Link::Plain(addr()), &clients(false)),
            Ok(Principal::Token { name: "bob".into(), tls: false })
        );
        let r = authenticate(&good, &Link::Plain(addr()), &clients(true));
        assert_eq!(r, Err((RefuseCode::AuthUnsupported, "this daemon requires TLS for TCP clients".into())));
    }

    #[test]
    fn plain_tcp_is_open_only_without_any_auth_configured() {
        let open = Clients::default();
        let r = authenticate(&Auth::PeerCredentials, &Link::Plain(addr()), &open);
        assert_eq!(r, Ok(Principal::Remote(addr())));
        assert_eq!(r.unwrap().policy_name(), "tcp:127.0.0.1:9");
    }

    #[test]
    fn policy_names() {
        assert_eq!(Principal::Local { uid: 7, gid: 0, pid: 1 }.policy_name(), "unix:7");
        assert_eq!(Principal::Cert { cn: "a".into() }.policy_name(), "cert:a");
        assert_eq!(Principal::Token { name: "b".into(), tls: false }.policy_name(), "token:b");
        assert!(!Principal::Token { name: "b".into(), tls: false }.secure());
        assert!(Principal::Token { name: "b".into(), tls: true }.secure());
    }

    #[test]
    fn common_names_are_found_and_bad_der_is_refused() {
        // SET { SEQ { OID 2.5.4.6 (C), PrintableString "FR" } },
        // SET { SEQ { OID 2.5.4.3 (CN), UTF8String "alice" } }
        let name = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02, b'F', b'R', 0x31, 0x0e, 0x30,
            0x0c, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x05, b'a', b'l', b'i', b'c', b'e',
        ];
        assert_eq!(common_name(&name).as_deref(), Some("alice"));
        assert_eq!(common_name(&name[..13]), None);
        for cut in 0..name.len() {
            let _ = common_name(&name[..cut]);
        }
        assert_eq!(common_name(&[0x31, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[]), None);
    }
}
