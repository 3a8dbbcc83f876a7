//! The numbers of the C API: sizes, service flags and error codes, with the
//! values Spread's `sp.h` gives them wherever Spread has the same notion, so
//! code that stored or compared them keeps working. `include/ringfence.h`
//! repeats every value; a test checks the two agree.

use std::ffi::{CStr, c_int};

/// Bytes of a group or private-name slot, terminating NUL included: a
/// private name (`#client#daemon`) has up to 64 bytes; padded to a multiple
/// of 4 so the integers of a membership body stay aligned. (Spread: 32.)
pub const MAX_GROUP_NAME: usize = 68;
/// Longest name a client may give itself in `SP_connect` (Spread: 10).
pub const MAX_PRIVATE_NAME: usize = 32;

/// Unreliable service.
pub const UNRELIABLE_MESS: c_int = 0x0000_0001;
/// Reliable service.
pub const RELIABLE_MESS: c_int = 0x0000_0002;
/// FIFO (per sender) service.
pub const FIFO_MESS: c_int = 0x0000_0004;
/// Causal service.
pub const CAUSAL_MESS: c_int = 0x0000_0008;
/// Agreed (total order) service.
pub const AGREED_MESS: c_int = 0x0000_0010;
/// Safe (total order, delivered once every daemon holds it) service.
pub const SAFE_MESS: c_int = 0x0000_0020;
/// Any data service.
pub const REGULAR_MESS: c_int = 0x0000_003f;
/// Do not deliver the message back to its sender.
pub const SELF_DISCARD: c_int = 0x0000_0040;
/// Membership: the view changed because a member joined.
pub const CAUSED_BY_JOIN: c_int = 0x0000_0100;
/// Membership: a member left (alone, without `REG_MEMB_MESS`: this
/// connection left the group).
pub const CAUSED_BY_LEAVE: c_int = 0x0000_0200;
/// Membership: a member disconnected.
pub const CAUSED_BY_DISCONNECT: c_int = 0x0000_0400;
/// Membership: the daemons' ring changed (partition, merge, crash).
pub const CAUSED_BY_NETWORK: c_int = 0x0000_0800;
/// A regular membership message.
pub const REG_MEMB_MESS: c_int = 0x0000_1000;
/// The transitional signal before a network-caused view (EVS).
pub const TRANSITION_MESS: c_int = 0x0000_2000;
/// Any membership message.
pub const MEMBERSHIP_MESS: c_int = 0x0000_3f00;
/// ringfence only: the view changed only its key (keyed groups).
pub const RF_CAUSED_BY_REKEY: c_int = 0x0000_4000;
/// A request the daemon refused, or a message that could not be opened.
pub const REJECT_MESS: c_int = 0x0040_0000;
/// Receive input flag: truncate what does not fit instead of failing.
pub const DROP_RECV: c_int = 0x0100_0000;

/// `SP_connect` succeeded.
pub const ACCEPT_SESSION: c_int = 1;
/// The daemon address (`spread_name`) cannot be understood.
pub const ILLEGAL_SPREAD: c_int = -1;
/// No daemon answers at that address.
pub const COULD_NOT_CONNECT: c_int = -2;
/// The daemon has as many clients as it accepts.
pub const REJECT_QUOTA: c_int = -3;
/// No name was given (not returned: the library makes one up).
pub const REJECT_NO_NAME: c_int = -4;
/// The name is not 1 to 32 printable ASCII bytes without `#`.
pub const REJECT_ILLEGAL_NAME: c_int = -5;
/// Another client of this daemon uses the name.
pub const REJECT_NOT_UNIQUE: c_int = -6;
/// No client protocol version in common.
pub const REJECT_VERSION: c_int = -7;
/// The connection is closed (by the daemon, or it broke).
pub const CONNECTION_CLOSED: c_int = -8;
/// The daemon refused the credentials.
pub const REJECT_AUTH: c_int = -9;
/// The mailbox is not an open connection.
pub const ILLEGAL_SESSION: c_int = -11;
/// The service flags name no service, or unknown bits.
pub const ILLEGAL_SERVICE: c_int = -12;
/// A bad argument (a null pointer, a negative length) or a body that is
/// not a membership message.
pub const ILLEGAL_MESSAGE: c_int = -13;
/// A group name that is empty, too long, not UTF-8 or not terminated.
pub const ILLEGAL_GROUP: c_int = -14;
/// The message body does not fit the buffer (or an array given to the
/// membership helpers is too short).
pub const BUFFER_TOO_SHORT: c_int = -15;
/// The message's groups (or members) do not fit the groups array.
pub const GROUPS_TOO_SHORT: c_int = -16;
/// The message exceeds the daemon's payload limit.
pub const MESSAGE_TOO_LONG: c_int = -17;
/// The daemon broke the protocol; the connection is closed.
pub const NET_ERROR_ON_SESSION: c_int = -18;

/// What an error code means, for `SP_error` and `rf_error_text`.
pub fn error_text(code: c_int) -> &'static CStr {
    match code {
        ACCEPT_SESSION => c"the session was accepted",
        ILLEGAL_SPREAD => {
            c"illegal daemon address: give a Unix socket path, a daemon name (default socket), PORT@HOST or HOST:PORT"
        }
        COULD_NOT_CONNECT => c"could not connect: is the daemon running, and is this its client socket?",
        REJECT_QUOTA => c"the daemon refused: it has as many clients as it accepts",
        REJECT_NO_NAME => c"no client name was given",
        REJECT_ILLEGAL_NAME => c"illegal client name: 1 to 32 printable ASCII characters, no '#'",
        REJECT_NOT_UNIQUE => c"another client of this daemon already uses this name",
        REJECT_VERSION => c"the daemon speaks no client protocol version this library speaks",
        CONNECTION_CLOSED => c"the connection to the daemon is closed",
        REJECT_AUTH => c"the daemon refused the credentials (over TCP set RINGFENCE_TOKEN)",
        ILLEGAL_SESSION => c"illegal mailbox: not an open connection",
        ILLEGAL_SERVICE => c"illegal service flags",
        ILLEGAL_MESSAGE => c"illegal message or argument",
        ILLEGAL_GROUP => c"illegal group name: 1 to 32 bytes of UTF-8 (private names up to 64), NUL-terminated",
        BUFFER_TOO_SHORT => c"the buffer is too short: the message is kept, -endian_mismatch is its length",
        GROUPS_TOO_SHORT => c"the groups array is too short: the message is kept, -num_groups is the count",
        MESSAGE_TOO_LONG => c"the message exceeds the daemon's payload limit",
        NET_ERROR_ON_SESSION => c"the daemon broke the protocol; the connection is closed",
        _ => c"unknown error code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `#define NAME value` of the header that names a constant of
    /// this module has the same value, and the header defines all of them.
    #[test]
    fn the_header_agrees() {
        let header = include_str!("../include/ringfence.h");
        let ours: &[(&str, i64)] = &[
            ("MAX_GROUP_NAME", MAX_GROUP_NAME as i64),
            ("MAX_PRIVATE_NAME", MAX_PRIVATE_NAME as i64),
            ("UNRELIABLE_MESS", UNRELIABLE_MESS.into()),
            ("RELIABLE_MESS", RELIABLE_MESS.into()),
            ("FIFO_MESS", FIFO_MESS.into()),
            ("CAUSAL_MESS", CAUSAL_MESS.into()),
            ("AGREED_MESS", AGREED_MESS.into()),
            ("SAFE_MESS", SAFE_MESS.into()),
            ("REGULAR_MESS", REGULAR_MESS.into()),
            ("SELF_DISCARD", SELF_DISCARD.into()),
            ("CAUSED_BY_JOIN", CAUSED_BY_JOIN.into()),
            ("CAUSED_BY_LEAVE", CAUSED_BY_LEAVE.into()),
            ("CAUSED_BY_DISCONNECT", CAUSED_BY_DISCONNECT.into()),
            ("CAUSED_BY_NETWORK", CAUSED_BY_NETWORK.into()),
            ("REG_MEMB_MESS", REG_MEMB_MESS.into()),
            ("TRANSITION_MESS", TRANSITION_MESS.into()),
            ("MEMBERSHIP_MESS", MEMBERSHIP_MESS.into()),
            ("RF_CAUSED_BY_REKEY", RF_CAUSED_BY_REKEY.into()),
            ("REJECT_MESS", REJECT_MESS.into()),
            ("DROP_RECV", DROP_RECV.into()),
            ("ACCEPT_SESSION", ACCEPT_SESSION.into()),
            ("ILLEGAL_SPREAD", ILLEGAL_SPREAD.into()),
            ("COULD_NOT_CONNECT", COULD_NOT_CONNECT.into()),
            ("REJECT_QUOTA", REJECT_QUOTA.into()),
            ("REJECT_NO_NAME", REJECT_NO_NAME.into()),
            ("REJECT_ILLEGAL_NAME", REJECT_ILLEGAL_NAME.into()),
            ("REJECT_NOT_UNIQUE", REJECT_NOT_UNIQUE.into()),
            ("REJECT_VERSION", REJECT_VERSION.into()),
            ("CONNECTION_CLOSED", CONNECTION_CLOSED.into()),
            ("REJECT_AUTH", REJECT_AUTH.into()),
            ("ILLEGAL_SESSION", ILLEGAL_SESSION.into()),
            ("ILLEGAL_SERVICE", ILLEGAL_SERVICE.into()),
            ("ILLEGAL_MESSAGE", ILLEGAL_MESSAGE.into()),
            ("ILLEGAL_GROUP", ILLEGAL_GROUP.into()),
            ("BUFFER_TOO_SHORT", BUFFER_TOO_SHORT.into()),
            ("GROUPS_TOO_SHORT", GROUPS_TOO_SHORT.into()),
            ("MESSAGE_TOO_LONG", MESSAGE_TOO_LONG.into()),
            ("NET_ERROR_ON_SESSION", NET_ERROR_ON_SESSION.into()),
        ];
        let mut defined = std::collections::HashMap::new();
        for line in header.lines() {
            let mut words = line.split_whitespace();
            if let (Some("#define"), Some(name), Some(value), None) =
                (words.next(), words.next(), words.next(), words.next())
            {
                let v = match value.strip_prefix("0x") {
                    Some(hex) => i64::from_str_radix(hex, 16),
                    None => value.parse(),
                };
                if let Ok(v) = v {
                    defined.insert(name, v);
                }
            }
        }
        for (name, value) in ours {
            assert_eq!(defined.get(name), Some(value), "{name} in include/ringfence.h");
        }
        assert_eq!(defined.len(), ours.len(), "the header defines numbers this module does not");
    }

    #[test]
    fn every_code_has_a_text() {
        for code in
            [ACCEPT_SESSION, ILLEGAL_SPREAD, COULD_NOT_CONNECT, BUFFER_TOO_SHORT, NET_ERROR_ON_SESSION]
        {
            assert_ne!(error_text(code), c"unknown error code");
        }
        assert_eq!(error_text(-99), c"unknown error code");
    }
}
