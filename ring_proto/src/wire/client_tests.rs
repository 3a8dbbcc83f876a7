//! Tests of the client protocol codec: round trips of every frame type,
//! chunking independence, totality on arbitrary bytes, limits, and
//! known-answer vectors.

use super::*;
use proptest::prelude::*;

const LIMITS: Limits = Limits::DEFAULT;

fn group() -> impl Strategy<Value = String> {
    // Any non-control characters (so no NUL), 1..=32 bytes of UTF-8.
    "\\PC{1,8}".prop_filter("at most 32 bytes", |s| s.len() <= MAX_GROUP_NAME)
}

fn private_name() -> impl Strategy<Value = String> {
    "#[!-\"$-~]{1,30}#[a-z0-9]{1,20}"
}

fn client_name() -> impl Strategy<Value = String> {
    "[!-\"$-~]{1,32}"
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn groups() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(group(), 1..6)
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn service() -> impl Strategy<Value = Service> {
    (0u8..6).prop_map(|b| Service::from_u8(b).unwrap())
}

fn view_id() -> impl Strategy<Value = ViewId> {
    (any::<u64>(), any::<u16>(), any::<u64>()).prop_map(|(ring_seq, ring_rep, counter)| ViewId {
        ring_seq,
        ring_rep,
        counter,
    })
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        Just(Auth::PeerCredentials),
        proptest::collection::vec(any::<u8>(), 1..200).prop_map(|t| Auth::Token(Bytes::from(t))),
        Just(Auth::Tls),
        (3u8..).prop_map(Auth::Unknown),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (1u8..4, 0u8..4, client_name(), auth()).prop_map(|(min_version, extra, client_name, auth)| {
            ClientFrame::Hello(Hello { min_version, max_version: min_version + extra, client_name, auth })
        }),
        group().prop_map(|group| ClientFrame::Join { group }),
        group().prop_map(|group| ClientFrame::JoinVs { group }),
        group().prop_map(|group| ClientFrame::Leave { group }),
        (group(), any::<bool>(), proptest::sample::select(GroupMode::ALL.to_vec()))
            .prop_map(|(group, vs, mode)| ClientFrame::JoinMode { group, vs, mode }),
        (service(), any::<u16>(), any::<(bool, bool)>(), groups(), payload()).prop_map(
            |(service, msg_type, (self_discard, sealed), groups, payload)| {
                let groups = crate::wire::Groups::encode(&groups).unwrap();
                ClientFrame::Multicast(Multicast { service, msg_type, self_discard, sealed, groups, payload })
            }
        ),
        (group(), view_id()).prop_map(|(group, view_id)| ClientFrame::FlushOk { group, view_id }),
        Just(ClientFrame::Bye),
        (any::<u32>(), 1u8..=4)
            .prop_map(|(tag, r)| ClientFrame::Admin { tag, request: AdminRequest::from_u8(r).unwrap() }),
    ]
}

fn daemon_frame() -> impl Strategy<Value = DaemonFrame> {
    prop_oneof![
        (1u8.., any::<u16>(), private_name(), any::<u32>(), any::<u32>(), any::<u8>()).prop_map(
            |(version, daemon_id, private_name, max_frame_len, max_payload, max_groups)| {
                DaemonFrame::Welcome(Welcome {
                    version,
                    daemon_id,
                    private_name,
                    max_frame_len,
                    max_payload,
                    max_groups,
                })
            }
        ),
        (any::<u16>(), text())
            .prop_map(|(c, text)| DaemonFrame::Refused { code: RefuseCode::from_code(c), text }),
        (private_name(), groups(), service(), any::<u16>(), any::<bool>(), payload()).prop_map(
            |(sender, groups, service, msg_type, sealed, payload)| {
                let (sender, groups) = (Name::from(sender), GroupNames::new(&groups).unwrap());
                DaemonFrame::Message(Message { sender, groups, service, msg_type, sealed, payload })
            }
        ),
        (
            group(),
            view_id(),
            any::<bool>(),
            0u8..5,
            proptest::collection::vec(private_name(), 0..20),
            proptest::sample::select(GroupMode::ALL.to_vec()),
            proptest::option::of((any::<u32>(), any::<[u8; 32]>())),
            any::<u32>()
        )
            .prop_map(|(group, view_id, transitional, cause, members, mode, key, picks)| {
                let kind = if transitional { ViewKind::Transitional } else { ViewKind::Regular };
                let cause = [
                    ViewCause::Join,
                    ViewCause::Leave,
                    ViewCause::Disconnect,
                    ViewCause::Network,
                    ViewCause::Rekey,
                ][cause as usize];
                let key = key.map(|(id, k)| (id, ringfence_crypto::aead::Key32::from_bytes(k)));
                // Layered modes: some members (bits of `picks`) joined.
                let joined = if mode.layered() {
                    (0..members.len() as u16).filter(|i| picks >> i & 1 == 1).collect()
                } else {
                    Vec::new()
                };
                DaemonFrame::Membership(Membership {
                    group,
                    view_id,
                    kind,
                    cause,
                    members,
                    mode,
                    key,
                    joined,
                })
            }),
        (
            private_name(),
            group(),
            any::<u16>(),
            any::<u32>(),
            proptest::sample::select(vec![
                KeyLoss::TimeOut,
                KeyLoss::KeyOut,
                KeyLoss::Unknown,
                KeyLoss::Forged
            ])
        )
            .prop_map(|(sender, group, msg_type, key_id, reason)| DaemonFrame::Undecipherable {
                sender,
                group,
                msg_type,
                key_id,
                reason
            }),
        (group(), view_id()).prop_map(|(group, view_id)| DaemonFrame::FlushRequest { group, view_id }),
        (any::<u16>(), text())
            .prop_map(|(c, text)| DaemonFrame::Error { code: ErrorCode::from_code(c), text }),
        (any::<u16>(), text())
            .prop_map(|(c, text)| DaemonFrame::Bye { reason: ByeReason::from_code(c), text }),
        (any::<u32>(), any::<bool>(), "\\PC{0,200}").prop_map(|(tag, ok, text)| DaemonFrame::AdminReply {
            tag,
            ok,
            text
        }),
    ]
}

fn encode_all<F: Frame>(frames: &[F]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out, &LIMITS).unwrap();
    }
    out
}

/// Feeds `bytes` cut at `cuts` (offsets, any order, any value) and collects
/// every frame and the first error, draining after each push.
fn run<F: Frame>(bytes: &[u8], cuts: &[usize]) -> (Vec<F>, Option<ClientDecodeError>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    let mut decoder = FrameDecoder::<F>::new(LIMITS);
    let mut frames = Vec::new();
    for w in points.windows(2) {
        decoder.push(&bytes[w[0]..w[1]]);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, decoder.finish().err())
}

fn round_trip<F: Frame + PartialEq + fmt::Debug>(f: &F) -> Result<(), TestCaseError> {
    let mut out = vec![0xAA]; // frames append after what is already there
    f.encode(&mut out, &LIMITS).unwrap();
    prop_assert_eq!(out[0], 0xAA);
    let frame = Bytes::from(out).slice(1..);
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    prop_assert_eq!(len, frame.len() - 4);
    prop_assert_eq!(&decode_frame::<F>(frame.clone(), &LIMITS)?, f);
    let (frames, err) = run::<F>(&frame, &[]);
    prop_assert_eq!(err, None);
    prop_assert_eq!(&frames[..], std::slice::from_ref(f));
    Ok(())
}

proptest! {
    #[test]
    fn client_frames_round_trip(f in client_frame()) {
        round_trip(&f)?;
    }

    #[test]
    fn daemon_frames_round_trip(f in daemon_frame()) {
        round_trip(&f)?;
    }

    #[test]
    fn chunking_does_not_change_client_frames(
        frames in proptest::collection::vec(client_frame(), 0..10),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        let bytes = encode_all(&frames);
        prop_assert_eq!(run::<ClientFrame>(&bytes, &cuts), (frames, None));
    }

    #[test]
    fn chunking_does_not_change_daemon_frames(
        frames in proptest::collection::vec(daemon_frame(), 0..10),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        let bytes = encode_all(&frames);
        // Byte-at-a-time too.
        let every: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(run::<DaemonFrame>(&bytes, &every), (frames.clone(), None));
        prop_assert_eq!(run::<DaemonFrame>(&bytes, &cuts), (frames, None));
    }

    /// A reader that takes at most `missing()` bytes at a time (the client
    /// library's exact reads) gets every frame, and has a whole frame ready
    /// exactly when it has read up to a frame boundary.
    #[test]
    fn reading_what_is_missing_stops_at_frame_boundaries(
        frames in proptest::collection::vec(daemon_frame(), 1..8),
        short in proptest::collection::vec(any::<bool>(), 0..40),
    ) {
        let bytes = encode_all(&frames);
        let mut boundaries = Vec::new();
        let mut at = 0;
        for f in &frames {
            let mut one = Vec::new();
            f.encode(&mut one, &LIMITS).unwrap();
            at += one.len();
            boundaries.push(at);
        }
        let mut d = FrameDecoder::<DaemonFrame>::new(LIMITS);
        let (mut read, mut got, mut short) = (0, Vec::new(), short.into_iter());
        while read < bytes.len() {
            let missing = d.missing();
            prop_assert!(missing > 0, "a frame is whole at {read}");
            // Sometimes the socket gives less than asked for.
            let n = if short.next() == Some(true) { missing.div_ceil(2) } else { missing };
            d.push(&bytes[read..read + n]);
            read += n;
            prop_assert_eq!(d.missing() == 0, boundaries.contains(&read));
            if let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(d.missing(), 4);
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_ignore_chunking(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        prop_assert_eq!(run::<ClientFrame>(&bytes, &cuts), run::<ClientFrame>(&bytes, &[]));
        prop_assert_eq!(run::<DaemonFrame>(&bytes, &cuts), run::<DaemonFrame>(&bytes, &[]));
        let _ = decode_frame::<ClientFrame>(Bytes::from(bytes.clone()), &LIMITS);
        let _ = decode_frame::<DaemonFrame>(Bytes::from(bytes), &LIMITS);
    }

    #[test]
    fn arbitrary_bodies_never_panic(frame_type in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let body = Bytes::from(body);
        let _ = ClientFrame::decode(frame_type, body.clone(), &LIMITS);
        let _ = DaemonFrame::decode(frame_type, body, &LIMITS);
    }

    #[test]
    fn mutated_streams_never_panic_and_ignore_chunking(
        c in proptest::collection::vec(client_frame(), 1..5),
        d in proptest::collection::vec(daemon_frame(), 1..5),
        at in any::<usize>(),
        xor in 1u8..,
        cut in any::<usize>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        for mut v in [encode_all(&c), encode_all(&d)] {
            let i = at % v.len();
            v[i] ^= xor;
            prop_assert_eq!(run::<ClientFrame>(&v, &cuts), run::<ClientFrame>(&v, &[]));
            prop_assert_eq!(run::<DaemonFrame>(&v, &cuts), run::<DaemonFrame>(&v, &[]));
            v.truncate(cut % (v.len() + 1));
            prop_assert_eq!(run::<ClientFrame>(&v, &cuts), run::<ClientFrame>(&v, &[]));
            prop_assert_eq!(run::<DaemonFrame>(&v, &cuts), run::<DaemonFrame>(&v, &[]));
        }
    }

    #[test]
    fn truncated_frames_are_errors(f in daemon_frame(), cut in any::<usize>()) {
        let v = encode_all(std::slice::from_ref(&f));
        let n = cut % v.len();
        prop_assert!(decode_frame::<DaemonFrame>(Bytes::copy_from_slice(&v[..n]), &LIMITS).is_err());
        // A stream that stops inside the frame yields nothing and says so on finish.
        let (frames, err) = run::<DaemonFrame>(&v[..n], &[]);
        prop_assert!(frames.is_empty());
        prop_assert_eq!(err, (n > 0).then_some(ClientDecodeError::UnexpectedEof { buffered: n }));
    }

    #[test]
    fn shortened_bodies_are_errors(f in client_frame(), cut in 1usize..50) {
        // Drop the last `cut` body bytes and fix the length prefix: a field
        // must come up short.
        let mut v = encode_all(std::slice::from_ref(&f));
        let body = v.len() - FRAME_HEADER_LEN;
        prop_assume!(body > 0);
        let cut = cut.min(body);
        v.truncate(v.len() - cut);
        let len = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&len.to_be_bytes());
        prop_assert!(decode_frame::<ClientFrame>(Bytes::from(v), &LIMITS).is_err());
    }

    #[test]
    fn trailing_bytes_in_a_frame_are_errors(f in client_frame(), extra in proptest::collection::vec(any::<u8>(), 1..10)) {
        let mut v = encode_all(std::slice::from_ref(&f));
        v.extend_from_slice(&extra);
        let len = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&len.to_be_bytes());
        let (frames, err) = run::<ClientFrame>(&v, &[]);
        prop_assert!(frames.is_empty());
        prop_assert_eq!(err, Some(ClientDecodeError::TrailingBytes));
    }

    #[test]
    fn oversize_frames_are_rejected_without_buffering(
        valid in proptest::collection::vec(daemon_frame(), 0..4),
        over in 1u32..,
        junk in proptest::collection::vec(any::<u8>(), 0..2000),
        chunk in 1usize..700,
    ) {
        let max = 1000u32;
        let limits = Limits { max_frame_len: max, ..LIMITS };
        let mut stream = Vec::new();
        for f in &valid {
            // Frames that fit go first; they must still come out.
            let mut one = Vec::new();
            if f.encode(&mut one, &limits).is_ok() {
                stream.extend_from_slice(&one);
            }
        }
        let good = stream.len();
        let len = max.saturating_add(over);
        stream.extend_from_slice(&len.to_be_bytes());
        stream.extend_from_slice(&junk);
        let mut decoder = FrameDecoder::<DaemonFrame>::new(limits);
        for piece in stream.chunks(chunk) {
            decoder.push(piece);
            // The valid frames, and of the oversize one at most a partial
            // length prefix: none of its body.
            prop_assert!(decoder.buffered() <= good + 3);
        }
        prop_assert!(decoder.buffered() <= good);
        let mut n = 0;
        let err = loop {
            match decoder.next_frame() {
                Ok(Some(_)) => n += 1,
                Ok(None) => prop_assert!(false, "no error"),
                Err(e) => break e,
            }
        };
        prop_assert_eq!(err, ClientDecodeError::FrameTooLarge { len, max });
        prop_assert_eq!(n, good_frames(&stream[..good]));
        prop_assert_eq!(decoder.buffered(), 0);
        decoder.push(&[0; 100]);
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert_eq!(decoder.next_frame(), Err(ClientDecodeError::FrameTooLarge { len, max }));
    }
}

fn good_frames(stream: &[u8]) -> usize {
    run::<DaemonFrame>(stream, &[]).0.len()
}

// ---------------------------------------------------------------------------
// Known answers

#[test]
fn hello_known_answer() {
    let mut out = Vec::new();
    ClientFrame::Hello(Hello::new("alice", Auth::PeerCredentials)).encode(&mut out, &LIMITS).unwrap();
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x00, 0x00, 0x00, 0x10,     // length: 16 bytes follow
        0x01,                       // frame type: Hello
        b'R', b'F', b'C', b'P',     // magic
        0x02, 0x03,                 // min_version, max_version
        0x05, b'a', b'l', b'i', b'c', b'e', // client_name
        0x00, 0x00, 0x00,           // auth: kind 0 (peer credentials), length 0
    ];
    assert_eq!(out, expected);
    assert_eq!(
        decode_frame::<ClientFrame>(Bytes::from(out), &LIMITS),
        Ok(ClientFrame::Hello(Hello {
            min_version: 2,
            max_version: 3,
            client_name: "alice".into(),
            auth: Auth::PeerCredentials
        }))
    );
}

#[test]
fn message_known_answer() {
    let m = Message {
        sender: "#alice#d1".into(),
        groups: GroupNames::new(&["chat"]).unwrap(),
        service: Service::Agreed,
        msg_type: 0x0102,
        sealed: false,
        payload: Bytes::from_static(b"hi"),
    };
    let mut out = Vec::new();
    DaemonFrame::Message(m.clone()).encode(&mut out, &LIMITS).unwrap();
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x00, 0x00, 0x00, 0x1b,     // length: 27 bytes follow
        0x83,                       // frame type: Message
        0x09, b'#', b'a', b'l', b'i', b'c', b'e', b'#', b'd', b'1', // sender
        0x04,                       // service: agreed
        0x00,                       // flags: not sealed
        0x01, 0x02,                 // msg_type
        0x01,                       // group count
        0x04, b'c', b'h', b'a', b't', // group
        0x00, 0x00, 0x00, 0x02,     // payload length
        b'h', b'i',                 // payload
    ];
    assert_eq!(out, expected);
    // The borrowed-parts encoder writes the same bytes.
    let mut direct = Vec::new();
    encode_message(&mut direct, &LIMITS, "#alice#d1", ["chat"], Service::Agreed, 0x0102, false, b"hi")
        .unwrap();
    assert_eq!(direct, expected);
    // The decoded payload is a slice of the received buffer, not a copy.
    let buf = Bytes::from(out);
    let Ok(DaemonFrame::Message(got)) = decode_frame::<DaemonFrame>(buf.clone(), &LIMITS) else {
        panic!("not a message");
    };
    assert_eq!(got, m);
    // The sender, the groups and the payload are slices of the received
    // buffer, not copies.
    assert_eq!(got.payload.as_ptr(), buf[buf.len() - 2..].as_ptr());
    assert_eq!(got.sender.as_ptr(), buf[6..].as_ptr());
    assert_eq!(got.groups.first().unwrap().as_ptr(), buf[21..].as_ptr());
    assert_eq!(got.sender, "#alice#d1");
    assert_eq!(got.groups, ["chat"]);
    assert_eq!(
        format!("{} {:?} {:?}", got.sender, got.sender, got.groups),
        "#alice#d1 \"#alice#d1\" [\"chat\"]"
    );
}

/// `Name` and `GroupNames` read as `&str` and refuse what a frame cannot carry.
#[test]
fn names_and_group_lists() {
    let g = GroupNames::new(&["a", "bé", "c"]).unwrap();
    assert_eq!(g.len(), 3);
    assert_eq!(g.iter().collect::<Vec<_>>(), ["a", "bé", "c"]);
    assert_eq!((g.first(), g.get(1), g.get(3), g.single()), (Some("a"), Some("bé"), None, None));
    assert!(g.contains("c") && !g.contains("b"));
    assert_eq!(g.join(","), "a,bé,c");
    assert_eq!(g, vec!["a".to_string(), "bé".into(), "c".into()]);
    assert_eq!(GroupNames::new(&["x"]).unwrap().single(), Some("x"));
    assert!(GroupNames::new(&[""]).is_err());
    assert!(GroupNames::new(&["a\0"]).is_err());
    assert!(GroupNames::new(&["x".repeat(MAX_GROUP_NAME + 1)]).is_err());
    assert!(GroupNames::default().is_empty());
    let n = Name::from("#a#d0");
    let mut map = std::collections::HashMap::new();
    map.insert(n.clone(), 1);
    assert_eq!(map.get("#a#d0"), Some(&1), "hashes as its str");
    let owned = String::from("#a#d0");
    assert_eq!(n, "#a#d0");
    assert_eq!("#a#d0", n);
    assert_eq!(n, owned);
    assert_eq!(owned, n);
    assert!(n.starts_with("#a"));
    assert_eq!(String::from(n), "#a#d0");
}

/// The daemon's hot path: a decoded `Multicast`'s groups are a slice of the
/// frame (no allocation), in the ring's `Groups` encoding; a name that is
/// not UTF-8 is refused.
#[test]
fn multicast_groups_decode_as_a_slice_of_the_frame() {
    let m = Multicast {
        service: Service::Agreed,
        msg_type: 1,
        self_discard: false,
        sealed: false,
        groups: crate::wire::Groups::encode(&["chat", "news"]).unwrap(),
        payload: Bytes::from_static(b"hi"),
    };
    let mut out = Vec::new();
    ClientFrame::Multicast(m.clone()).encode(&mut out, &LIMITS).unwrap();
    let buf = Bytes::from(out.clone());
    let Ok(ClientFrame::Multicast(got)) = decode_frame::<ClientFrame>(buf.clone(), &LIMITS) else {
        panic!("not a multicast");
    };
    assert_eq!(got, m);
    assert!(buf.as_ptr_range().contains(&got.groups.as_bytes().as_ptr()));
    assert_eq!(got.groups.iter().collect::<Vec<_>>(), [&b"chat"[..], &b"news"[..]]);
    // 0xff in place of 'c': not UTF-8.
    let at = out.windows(4).position(|w| w == b"chat").unwrap();
    out[at] = 0xff;
    assert_eq!(
        decode_frame::<ClientFrame>(Bytes::from(out), &LIMITS),
        Err(ClientDecodeError::BadValue("group"))
    );
}

// ---------------------------------------------------------------------------
// Limits and misuse

fn multicast(groups: Vec<String>, payload: Bytes) -> ClientFrame {
    ClientFrame::Multicast(Multicast {
        service: Service::Safe,
        msg_type: 0,
        self_discard: true,
        sealed: false,
        groups: crate::wire::Groups::encode(&groups).unwrap(),
        payload,
    })
}

#[test]
fn encoder_limits_name_the_field_and_leave_the_buffer() {
    let mut out = vec![1, 2, 3];
    let limits = Limits { max_payload: 10, max_groups: 2, max_members: 1, ..LIMITS };
    let cases: Vec<(ClientFrame, ClientEncodeError)> = vec![
        (
            multicast(vec!["a".into(); 3], Bytes::new()),
            ClientEncodeError::LimitExceeded { field: "groups", len: 3, max: 2 },
        ),
        (multicast(vec![], Bytes::new()), ClientEncodeError::Invalid("groups")),
        (
            multicast(vec!["a".into()], Bytes::from(vec![0; 11])),
            ClientEncodeError::LimitExceeded { field: "payload", len: 11, max: 10 },
        ),
        (
            ClientFrame::Join { group: "g".repeat(33) },
            ClientEncodeError::LimitExceeded { field: "group", len: 33, max: 32 },
        ),
        (ClientFrame::Join { group: String::new() }, ClientEncodeError::Invalid("group")),
        (ClientFrame::Leave { group: "a\0b".into() }, ClientEncodeError::Invalid("group")),
        (ClientFrame::Hello(Hello::new("al ice", Auth::Tls)), ClientEncodeError::Invalid("client_name")),
        (ClientFrame::Hello(Hello::new("#alice", Auth::Tls)), ClientEncodeError::Invalid("client_name")),
        (
            ClientFrame::Hello(Hello::new("a".repeat(33), Auth::Tls)),
            ClientEncodeError::LimitExceeded { field: "client_name", len: 33, max: 32 },
        ),
        (
            ClientFrame::Hello(Hello::new("alice", Auth::Token(Bytes::new()))),
            ClientEncodeError::Invalid("token"),
        ),
        (ClientFrame::Hello(Hello::new("alice", Auth::Unknown(1))), ClientEncodeError::Invalid("auth")),
        (
            ClientFrame::Multicast(Multicast {
                service: Service::Recovered,
                msg_type: 0,
                self_discard: false,
                sealed: false,
                groups: crate::wire::Groups::encode(&["a"]).unwrap(),
                payload: Bytes::new(),
            }),
            ClientEncodeError::Invalid("service"),
        ),
    ];
    for (frame, err) in cases {
        assert_eq!(frame.encode(&mut out, &limits), Err(err), "{frame:?}");
        assert_eq!(out, [1, 2, 3]);
    }
    let members = DaemonFrame::Membership(Membership {
        group: "g".into(),
        view_id: ViewId { ring_seq: 1, ring_rep: 0, counter: 1 },
        kind: ViewKind::Regular,
        cause: ViewCause::Join,
        members: vec!["#a#d".into(), "#b#d".into()],
        mode: GroupMode::None,
        key: None,
        joined: Vec::new(),
    });
    assert_eq!(
        members.encode(&mut out, &limits),
        Err(ClientEncodeError::LimitExceeded { field: "members", len: 2, max: 1 })
    );
    let small = Limits { max_frame_len: 8, ..LIMITS };
    assert_eq!(
        multicast(vec!["a".into()], Bytes::new()).encode(&mut out, &small),
        Err(ClientEncodeError::FrameTooLarge { len: 12, max: 8 })
    );
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn decoder_limits_name_the_field() {
    let mut out = Vec::new();
    multicast(vec!["a".into(), "b".into(), "c".into()], Bytes::from(vec![7; 20]))
        .encode(&mut out, &LIMITS)
        .unwrap();
    let buf = Bytes::from(out);
    let few_groups = Limits { max_groups: 2, ..LIMITS };
    assert_eq!(
        decode_frame::<ClientFrame>(buf.clone(), &few_groups),
        Err(ClientDecodeError::LimitExceeded { field: "groups", len: 3, max: 2 })
    );
    let small_payload = Limits { max_payload: 19, ..LIMITS };
    assert_eq!(
        decode_frame::<ClientFrame>(buf, &small_payload),
        Err(ClientDecodeError::LimitExceeded { field: "payload", len: 20, max: 19 })
    );

    let mut out = Vec::new();
    DaemonFrame::Membership(Membership {
        group: "g".into(),
        view_id: ViewId { ring_seq: 1, ring_rep: 0, counter: 1 },
        kind: ViewKind::Transitional,
        cause: ViewCause::Network,
        members: vec!["#a#d".into(), "#b#d".into()],
        mode: GroupMode::None,
        key: None,
        joined: Vec::new(),
    })
    .encode(&mut out, &LIMITS)
    .unwrap();
    assert_eq!(
        decode_frame::<DaemonFrame>(Bytes::from(out), &Limits { max_members: 1, ..LIMITS }),
        Err(ClientDecodeError::LimitExceeded { field: "members", len: 2, max: 1 })
    );
}

#[test]
fn bad_values_are_named() {
    let frame = |t: u8, body: &[u8]| {
        let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(t);
        v.extend_from_slice(body);
        Bytes::from(v)
    };
    let c = |b: Bytes| decode_frame::<ClientFrame>(b, &LIMITS);
    let d = |b: Bytes| decode_frame::<DaemonFrame>(b, &LIMITS);
    assert_eq!(c(frame(TYPE_HELLO, b"RFCX\x01\x01\x01a\x00\x00\x00")), Err(ClientDecodeError::BadMagic));
    assert_eq!(
        c(frame(TYPE_HELLO, b"RFCP\x02\x01\x01a\x00\x00\x00")),
        Err(ClientDecodeError::BadValue("version range"))
    );
    assert_eq!(
        c(frame(TYPE_HELLO, b"RFCP\x01\x01\x01#\x00\x00\x00")),
        Err(ClientDecodeError::BadValue("client_name"))
    );
    assert_eq!(
        c(frame(TYPE_HELLO, b"RFCP\x01\x01\x01a\x00\x00\x01x")),
        Err(ClientDecodeError::BadValue("auth"))
    );
    assert_eq!(
        c(frame(TYPE_HELLO, b"RFCP\x01\x01\x01a\x01\x00\x00")),
        Err(ClientDecodeError::BadValue("token"))
    );
    // An unknown auth kind is skipped, so the daemon can refuse it politely.
    assert_eq!(
        c(frame(TYPE_HELLO, b"RFCP\x01\x02\x01a\x09\x00\x02xy")),
        Ok(ClientFrame::Hello(Hello {
            min_version: 1,
            max_version: 2,
            client_name: "a".into(),
            auth: Auth::Unknown(9)
        }))
    );
    assert_eq!(c(frame(TYPE_JOIN, b"\x00")), Err(ClientDecodeError::BadValue("group")));
    assert_eq!(c(frame(TYPE_JOIN, b"\x02a\x00")), Err(ClientDecodeError::BadValue("group")));
    assert_eq!(c(frame(TYPE_JOIN, b"\x01\xff")), Err(ClientDecodeError::BadValue("group")));
    assert_eq!(
        c(frame(TYPE_MULTICAST, b"\x80\x00\x00\x00\x01\x01a\x00\x00\x00\x00")),
        Err(ClientDecodeError::BadValue("service"))
    );
    assert_eq!(
        c(frame(TYPE_MULTICAST, b"\x04\x04\x00\x00\x01\x01a\x00\x00\x00\x00")),
        Err(ClientDecodeError::BadValue("flags"))
    );
    assert_eq!(
        c(frame(TYPE_MULTICAST, b"\x04\x00\x00\x00\x00\x00\x00\x00\x00")),
        Err(ClientDecodeError::BadValue("groups"))
    );
    assert_eq!(c(frame(TYPE_CLIENT_BYE, b"\x00")), Err(ClientDecodeError::TrailingBytes));
    // A daemon frame sent to the daemon, and the reverse.
    assert_eq!(c(frame(TYPE_WELCOME, b"")), Err(ClientDecodeError::UnknownFrameType(TYPE_WELCOME)));
    assert_eq!(d(frame(TYPE_JOIN, b"\x01a")), Err(ClientDecodeError::UnknownFrameType(TYPE_JOIN)));
    assert_eq!(d(frame(TYPE_ERROR, b"\x00\x01\x00\x01\xff")), Err(ClientDecodeError::BadValue("text")));
    assert_eq!(d(frame(TYPE_ERROR, b"\x00\x01\x00")), Err(ClientDecodeError::Truncated));
    assert_eq!(d(Bytes::from_static(&[0, 0, 0, 0])), Err(ClientDecodeError::EmptyFrame));
    assert_eq!(
        run::<DaemonFrame>(&[0, 0, 0, 0, 9, 9, 9], &[2]),
        (vec![], Some(ClientDecodeError::EmptyFrame))
    );
}

#[test]
fn unknown_codes_are_kept() {
    assert_eq!(ErrorCode::from_code(5), ErrorCode::Backlogged);
    assert_eq!(ErrorCode::from_code(999), ErrorCode::Other(999));
    assert_eq!(ByeReason::SlowConsumer.code(), 3);
    assert_eq!(RefuseCode::from_code(RefuseCode::VersionMismatch.code()), RefuseCode::VersionMismatch);
}

#[test]
fn version_negotiation_picks_the_newest_common_version() {
    assert_eq!(negotiate_version(1, 1), None, "version 1 is retired");
    assert_eq!(negotiate_version(1, 2), Some(2));
    assert_eq!(negotiate_version(1, 9), Some(CLIENT_VERSION));
    assert_eq!(negotiate_version(3, 9), Some(3));
    assert_eq!(negotiate_version(4, 9), None);
    assert_eq!(negotiate_version(0, 0), None);
}

#[test]
fn admin_frames_are_checked() {
    // A request code outside 1..=4 is refused, not guessed at.
    let mut out = Vec::new();
    ClientFrame::Admin { tag: 7, request: AdminRequest::Rekey }.encode(&mut out, &LIMITS).unwrap();
    assert_eq!(out, [0, 0, 0, 6, TYPE_ADMIN, 0, 0, 0, 7, 4]);
    *out.last_mut().unwrap() = 9;
    assert_eq!(
        decode_frame::<ClientFrame>(Bytes::from(out), &LIMITS),
        Err(ClientDecodeError::BadValue("request"))
    );
    // A reply whose text is not UTF-8 or longer than a payload is refused.
    let mut out = Vec::new();
    DaemonFrame::AdminReply { tag: 1, ok: true, text: "ab".into() }.encode(&mut out, &LIMITS).unwrap();
    let mut bad = out.clone();
    *bad.last_mut().unwrap() = 0xff;
    assert_eq!(
        decode_frame::<DaemonFrame>(Bytes::from(bad), &LIMITS),
        Err(ClientDecodeError::BadValue("text"))
    );
    let long =
        DaemonFrame::AdminReply { tag: 1, ok: true, text: "x".repeat(LIMITS.max_payload as usize + 1) };
    assert!(long.encode(&mut Vec::new(), &LIMITS).is_err());
}

#[test]
fn tokens_are_not_printed() {
    let shown = format!("{:?}", Hello::new("alice", Auth::Token(Bytes::from_static(b"s3cret"))));
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("6 bytes"), "{shown}");
}

#[test]
fn a_batch_decodes_from_one_buffer() {
    // A session appends many frames to one buffer and writes it once; the
    // payloads of the decoded frames all point into the one received buffer.
    let mut out = Vec::new();
    for i in 0..100u16 {
        encode_message(&mut out, &LIMITS, "#a#d", ["g"], Service::Fifo, i, false, &i.to_be_bytes()).unwrap();
    }
    let (frames, err) = run::<DaemonFrame>(&out, &[]);
    assert_eq!(err, None);
    assert_eq!(frames.len(), 100);
    for (i, f) in frames.iter().enumerate() {
        let DaemonFrame::Message(m) = f else { panic!("not a message") };
        assert_eq!(m.msg_type as usize, i);
        assert_eq!(&m.payload[..], &(i as u16).to_be_bytes());
    }
}
