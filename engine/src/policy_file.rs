//! `[[group]]` sections of the daemon configuration: the client group
//! policy (`ringfence_proto::security::policy`). Errors name the file, line
//! and key, like the rest of the configuration.

use crate::config::ConfigError;
use ringfence_proto::groups::GroupMode;
use ringfence_proto::security::LinkMode;
use ringfence_proto::security::policy::{Policy, Rule};
use serde::Deserialize;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// One `[[group]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupRuleFile {
    pattern: Spanned<String>,
    mode: Option<Spanned<String>>,
    join: Option<Vec<String>>,
    send: Option<Vec<String>>,
    send_nonmember: Option<Vec<String>>,
    key_timeout_s: Option<Spanned<u64>>,
    key_out: Option<Spanned<u64>>,
    rekey_interval_s: Option<u64>,
    rekey_bytes: Option<u64>,
}

fn valid_pattern(p: &str) -> bool {
    let body = p.strip_suffix('*').unwrap_or(p);
    !body.contains('*') && !p.is_empty()
}

/// Builds the policy from the `[[group]]` tables, checking each value; keyed
/// and three-step modes need `link_security = "encrypt"` (their keys and
/// data ride the links).
pub(crate) fn policy(
    rules: &[GroupRuleFile],
    link: LinkMode,
    invalid: &dyn Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<Policy, ConfigError> {
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let pattern = r.pattern.get_ref();
        if !valid_pattern(pattern) || pattern.len() > 33 {
            return Err(invalid(
                r.pattern.span(),
                "group.pattern",
                format!("`{pattern}` is not a group pattern (a name, `*`, or a prefix ending in `*`)"),
            ));
        }
        let mode = match &r.mode {
            None => GroupMode::None,
            Some(m) => {
                let mode: GroupMode =
                    m.get_ref().parse().map_err(|e: String| invalid(m.span(), "group.mode", e))?;
                // Layered groups' payloads are sealed by their members under
                // keys no daemon holds: they need no link encryption.
                if mode != GroupMode::None && !mode.layered() && link != LinkMode::Encrypt {
                    return Err(invalid(
                        m.span(),
                        "group.mode",
                        format!("mode `{mode}` needs `security.link_security = \"encrypt\"`"),
                    ));
                }
                mode
            }
        };
        let lists =
            [("group.join", &r.join), ("group.send", &r.send), ("group.send_nonmember", &r.send_nonmember)];
        for (key, list) in lists {
            if let Some(bad) = list.iter().flatten().find(|p| !valid_pattern(p)) {
                return Err(invalid(
                    r.pattern.span(),
                    key,
                    format!("`{bad}` is not a principal pattern (`*`, a name, or a prefix ending in `*`)"),
                ));
            }
        }
        let d = Rule::default();
        let key_out = match &r.key_out {
            None => d.key_out,
            Some(k) if (1..=1024).contains(k.get_ref()) => *k.get_ref() as usize,
            Some(k) => return Err(invalid(k.span(), "group.key_out", "must be 1 to 1024".into())),
        };
        let key_timeout = match &r.key_timeout_s {
            None => d.key_timeout,
            Some(t) if *t.get_ref() >= 1 => Duration::from_secs(*t.get_ref()),
            Some(t) => return Err(invalid(t.span(), "group.key_timeout_s", "must be at least 1".into())),
        };
        out.push(Rule {
            pattern: pattern.clone(),
            mode,
            join: r.join.clone().unwrap_or(d.join),
            send: r.send.clone().unwrap_or(d.send),
            // Closed groups refuse non-members anyway; open ones allow
            // whoever the rule names (default: whoever may send).
            send_nonmember: r.send_nonmember.clone().or_else(|| r.send.clone()).unwrap_or(d.send_nonmember),
            key_timeout,
            key_out,
            rekey_interval: r.rekey_interval_s.filter(|&s| s > 0).map(Duration::from_secs),
            rekey_bytes: r.rekey_bytes.filter(|&b| b > 0),
        });
    }
    Ok(Policy::new(out))
}
