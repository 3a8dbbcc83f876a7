//! The client group policy: per group-name pattern, the protection mode,
//! who may join, send as a member and send as a non-member, and how the
//! group's keys are refreshed and expire. Every daemon of a cluster must hold
//! the same policy: its [`Policy::digest`] is part of the security settings
//! digest daemons compare before they form a ring
//! ([`crate::security::SecurityConfig::digest`]).
//!
//! Principals are the names the daemon gives an authenticated client:
//! `unix:<uid>` (Unix socket, peer credentials), `cert:<common name>` (TLS
//! client certificate), `token:<name>` (pre-shared token), `tcp:<address>`
//! (plain TCP, only where the daemon allows it). A principal pattern is
//! `*` (anyone), an exact name, or a prefix ending in `*` (`unix:*`,
//! `cert:ops-*`). Group patterns work alike (`*`, `chat`, `secret.*`).
//! The first rule whose pattern matches a group applies; a group that no
//! rule matches gets [`Rule::default`]: mode `none`, anyone may join and send.

use crate::groups::GroupMode;
use std::time::Duration;

/// One rule of the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Group name pattern.
    pub pattern: String,
    /// The mode every group matching `pattern` has; a join stating another
    /// mode is refused.
    pub mode: GroupMode,
    /// Who may join.
    pub join: Vec<String>,
    /// Who may send to the group as a member.
    pub send: Vec<String>,
    /// Who may send to the group without being a member (open groups only;
    /// closed VS groups refuse every non-member).
    pub send_nonmember: Vec<String>,
    /// `optimized-evs`: an old key no message used for this long expires
    /// (time-out).
    pub key_timeout: Duration,
    /// `optimized-evs`: most old keys kept per group besides the current one
    /// (key-out); older ones expire.
    pub key_out: usize,
    /// Keyed modes: a view older than this gets a new key (an artificial
    /// view change with cause `rekey`); `None`: never by time.
    pub rekey_interval: Option<Duration>,
    /// Keyed modes: a view whose messages carried this many payload bytes
    /// gets a new key; `None`: never by volume.
    pub rekey_bytes: Option<u64>,
}

impl Default for Rule {
    fn default() -> Self {
        Self {
            pattern: "*".into(),
            mode: GroupMode::None,
            join: vec!["*".into()],
            send: vec!["*".into()],
            send_nonmember: vec!["*".into()],
            key_timeout: Duration::from_secs(60),
            key_out: 4,
            rekey_interval: None,
            rekey_bytes: None,
        }
    }
}

/// Whether `name` matches `pattern` (`*`, exact, or `prefix*`).
pub fn matches(pattern: &str, name: &[u8]) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix.as_bytes()),
        None => pattern.as_bytes() == name,
    }
}

fn allows(list: &[String], principal: &str) -> bool {
    list.iter().any(|p| matches(p, principal.as_bytes()))
}

/// What a client asks to do, for [`Policy::allows`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Join the group.
    Join,
    /// Send to the group as a member.
    Send,
    /// Send to the group without being a member.
    SendNonMember,
}

/// The rules, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
    fallback: Rule,
}

impl Policy {
    /// A policy of `rules`, tried in order.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules, fallback: Rule::default() }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule that applies to `group`.
    pub fn rule(&self, group: &[u8]) -> &Rule {
        self.rules.iter().find(|r| matches(&r.pattern, group)).unwrap_or(&self.fallback)
    }

    /// Whether `principal` may do `action` on `group`.
    pub fn allows(&self, principal: &str, action: Action, group: &[u8]) -> bool {
        let r = self.rule(group);
        match action {
            Action::Join => allows(&r.join, principal),
            Action::Send => allows(&r.send, principal),
            Action::SendNonMember => allows(&r.send_nonmember, principal),
        }
    }

    /// A digest of every rule, in order (compared between daemons).
    pub fn digest(&self) -> [u8; 32] {
        let mut enc = Vec::new();
        let put = |enc: &mut Vec<u8>, b: &[u8]| {
            enc.extend_from_slice(&(b.len() as u64).to_be_bytes());
            enc.extend_from_slice(b);
        };
        for r in &self.rules {
            put(&mut enc, r.pattern.as_bytes());
            put(&mut enc, r.mode.name().as_bytes());
            for list in [&r.join, &r.send, &r.send_nonmember] {
                enc.extend_from_slice(&(list.len() as u64).to_be_bytes());
                for p in list {
                    put(&mut enc, p.as_bytes());
                }
            }
            enc.extend_from_slice(&(r.key_timeout.as_millis() as u64).to_be_bytes());
            enc.extend_from_slice(&(r.key_out as u64).to_be_bytes());
            enc.extend_from_slice(&r.rekey_interval.map_or(0, |d| d.as_millis() as u64 + 1).to_be_bytes());
            enc.extend_from_slice(&r.rekey_bytes.map_or(0, |b| b.saturating_add(1)).to_be_bytes());
        }
        ringfence_crypto::kdf::hmac_sha256(b"ringfence group policy v1", &[&enc])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, mode: GroupMode, join: &[&str]) -> Rule {
        Rule {
            pattern: pattern.into(),
            mode,
            join: join.iter().map(|s| s.to_string()).collect(),
            send: vec!["unix:*".into()],
            send_nonmember: vec![],
            ..Rule::default()
        }
    }

    #[test]
    fn first_matching_rule_applies_and_patterns_match() {
        let p = Policy::new(vec![
            rule("secret.*", GroupMode::IntegratedVs, &["cert:alice", "unix:1000"]),
            rule("*", GroupMode::OptimizedEvs, &["*"]),
        ]);
        assert_eq!(p.rule(b"secret.plans").mode, GroupMode::IntegratedVs);
        assert_eq!(p.rule(b"chat").mode, GroupMode::OptimizedEvs);
        assert!(p.allows("cert:alice", Action::Join, b"secret.x"));
        assert!(!p.allows("cert:bob", Action::Join, b"secret.x"));
        assert!(p.allows("cert:bob", Action::Join, b"chat"));
        assert!(p.allows("unix:0", Action::Send, b"chat"));
        assert!(!p.allows("cert:bob", Action::Send, b"chat"));
        assert!(!p.allows("unix:0", Action::SendNonMember, b"chat"));
        assert_eq!(Policy::default().rule(b"x").mode, GroupMode::None);
        assert!(Policy::default().allows("", Action::SendNonMember, b"x"));
    }

    #[test]
    fn the_digest_covers_every_field() {
        let base = Policy::new(vec![rule("a*", GroupMode::IntegratedVs, &["*"])]);
        let d = base.digest();
        assert_eq!(d, base.clone().digest());
        let mut variants = Vec::new();
        let mut r = base.rules[0].clone();
        r.pattern = "b*".into();
        variants.push(r);
        let mut r = base.rules[0].clone();
        r.mode = GroupMode::ThreeStep;
        variants.push(r);
        let mut r = base.rules[0].clone();
        r.send_nonmember = vec!["*".into()];
        variants.push(r);
        let mut r = base.rules[0].clone();
        r.key_out = 5;
        variants.push(r);
        let mut r = base.rules[0].clone();
        r.rekey_bytes = Some(0);
        variants.push(r);
        for v in variants {
            assert_ne!(Policy::new(vec![v]).digest(), d);
        }
        assert_ne!(Policy::default().digest(), d);
    }
}
