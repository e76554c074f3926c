//! Unit tests of the client session: every flow of PROTOCOL.md §6 driven
//! with scripted responses, and the byte-exact request frames.

use super::*;
use crate::crypto::TestEntropy;
use crate::decode::ResponseDecoder;

/// Golden vectors (fixtures/vectors/ORIGIN.md).
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vectors/");
/// cksum of plain_1000.bin (vectors README).
const PLAIN_1000_CKSUM: u32 = 493_196_554;

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}{name}")).expect("vector file")
}

fn resp(name: &str) -> Response {
    let bytes = vector(name);
    let mut input = &bytes[..];
    let r = ResponseDecoder::new(Revision::R2023c).decode(&mut input);
    assert!(input.is_empty());
    r.expect("decodes").expect("complete")
}

/// response_2103.bin with another cksum.
fn wrong_crc() -> Response {
    match resp("response_2103.bin") {
        Response::FileReceived {
            client_id,
            content_size,
            file_name,
            cksum,
        } => Response::FileReceived {
            client_id,
            content_size,
            file_name,
            cksum: !cksum,
        },
        _ => unreachable!(),
    }
}

fn fixed_key() -> RsaPrivateKey {
    RsaPrivateKey::from_der(&vector("rsa1024_private_pkcs8.der")).expect("key")
}

fn vector_identity() -> Identity {
    let id: [u8; 16] = vector("client_id.bin").try_into().expect("16 bytes");
    Identity {
        name: "alice".into(),
        client_id: ClientId(id),
        key: fixed_key(),
    }
}

fn config(identity: Option<Identity>) -> ClientConfig {
    ClientConfig {
        revision: Revision::R2023c,
        name: "alice".into(),
        file_name: "plain_1000.bin".into(),
        plain_len: 1000,
        identity,
    }
}

/// An in-memory driver: records every frame, answers nothing itself.
struct Driver {
    s: ClientSession,
    rng: TestEntropy,
    plain: Vec<u8>,
    sent: Vec<Vec<u8>>,
    connects: usize,
    key_pairs: usize,
    fail_connects: usize,
    events: Vec<Event>,
    outcome: Option<Outcome>,
}

impl Driver {
    fn new(identity: Option<Identity>) -> Driver {
        let mut d = Driver {
            s: ClientSession::new(config(identity)).expect("config"),
            rng: TestEntropy::new(7),
            plain: vector("plain_1000.bin"),
            sent: Vec::new(),
            connects: 0,
            key_pairs: 0,
            fail_connects: 0,
            events: Vec::new(),
            outcome: None,
        };
        d.pump();
        d
    }

    /// Carries out actions until the session awaits a response or is done.
    fn pump(&mut self) {
        loop {
            self.events
                .extend(std::iter::from_fn(|| self.s.poll_event()));
            match self.s.poll_action() {
                None => return,
                Some(Action::Done(o)) => {
                    self.outcome = Some(o);
                    return;
                }
                Some(Action::Connect { .. }) if self.fail_connects > 0 => {
                    self.fail_connects -= 1;
                    self.s.handle_connection_lost();
                }
                Some(Action::Connect { .. }) => {
                    self.connects += 1;
                    self.s.handle_connected();
                }
                Some(Action::Send(frame)) => self.sent.push(frame),
                Some(Action::SendFile(up)) => self.stream(up),
                Some(Action::GenerateKeyPair) => {
                    self.key_pairs += 1;
                    self.s.handle_key_pair(fixed_key()).expect("key pair");
                }
            }
        }
    }

    fn stream(&mut self, up: Box<FileUpload>) {
        let FileUpload { header, sender, .. } = *up;
        let mut frame = header;
        let mut sender = sender;
        for chunk in self.plain.chunks(333) {
            sender.push(chunk, &mut frame).expect("declared size");
        }
        let cksum = sender.finish(&mut frame).expect("declared size");
        self.sent.push(frame);
        self.s.handle_file_sent(cksum);
    }

    fn reply(&mut self, r: Response) {
        self.s.handle_response(r, &mut self.rng);
        self.pump();
    }

    fn lose(&mut self) {
        self.s.handle_connection_lost();
        self.pump();
    }

    fn take_sent(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.sent)
    }
}

fn frames(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| vector(n)).collect()
}

#[test]
fn new_client_frames_match_vectors() {
    let mut d = Driver::new(None);
    assert_eq!(d.take_sent(), frames(&["request_1025.bin"]));
    d.reply(resp("response_2100.bin"));
    assert_eq!(d.key_pairs, 1);
    assert_eq!(d.take_sent(), frames(&["request_1026.bin"]));
    d.reply(resp("response_2102.bin"));
    assert_eq!(d.take_sent(), frames(&["request_1028.bin"]));
    d.reply(resp("response_2103.bin"));
    assert_eq!(d.take_sent(), frames(&["request_1029.bin"]));
    d.reply(resp("response_2104.bin"));
    assert_eq!(
        d.outcome,
        Some(Outcome::Verified {
            attempts: 1,
            cksum: PLAIN_1000_CKSUM
        })
    );
    assert_eq!(d.connects, 1);
    let id = ClientId(vector("client_id.bin").try_into().unwrap());
    assert_eq!(
        d.events,
        vec![
            Event::Registered { client_id: id },
            Event::KeyExchanged { client_id: id },
            Event::AttemptStarted { attempt: 1, of: 4 },
        ]
    );
    let identity = d.s.identity().expect("identity after 2102");
    assert_eq!((identity.name.as_str(), identity.client_id), ("alice", id));
    assert_eq!(
        identity.key.to_pkcs8_der(),
        vector("rsa1024_private_pkcs8.der")
    );
    assert_eq!(d.s.local_cksum(), Some(PLAIN_1000_CKSUM));
}

#[test]
fn returning_client_sends_1027_then_1028() {
    let mut d = Driver::new(Some(vector_identity()));
    assert_eq!(d.take_sent(), frames(&["request_1027.bin"]));
    d.reply(resp("response_2105.bin"));
    assert_eq!(d.take_sent(), frames(&["request_1028.bin"]));
    assert_eq!(d.key_pairs, 0);
    d.reply(resp("response_2103.bin"));
    d.reply(resp("response_2104.bin"));
    assert!(d.outcome.as_ref().is_some_and(Outcome::is_success));
    assert!(d.events.contains(&Event::Reconnected {
        client_id: vector_identity().client_id
    }));
}

#[test]
fn four_mismatches_end_with_1031() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    for _ in 1..MAX_SENDS {
        d.reply(wrong_crc());
    }
    d.reply(wrong_crc());
    let expected = frames(&[
        "request_1027.bin",
        "request_1028.bin",
        "request_1030.bin",
        "request_1028.bin",
        "request_1030.bin",
        "request_1028.bin",
        "request_1030.bin",
        "request_1028.bin",
        "request_1031.bin",
    ]);
    assert_eq!(d.take_sent(), expected);
    assert_eq!(d.outcome, None, "1031 awaits its 2104");
    d.reply(resp("response_2104.bin"));
    assert_eq!(
        d.outcome,
        Some(Outcome::CrcFailed {
            attempts: 4,
            server: !PLAIN_1000_CKSUM,
            local: PLAIN_1000_CKSUM
        })
    );
    assert_eq!(d.s.attempts(), 4);
    let mismatches = d
        .events
        .iter()
        .filter(|e| matches!(e, Event::CrcMismatch { .. }));
    assert_eq!(mismatches.count(), 4);
}

#[test]
fn mismatch_then_match_verifies_on_second_send() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    d.reply(wrong_crc());
    d.reply(resp("response_2103.bin"));
    d.reply(resp("response_2104.bin"));
    assert_eq!(
        d.outcome,
        Some(Outcome::Verified {
            attempts: 2,
            cksum: PLAIN_1000_CKSUM
        })
    );
    let sent = d.take_sent();
    assert_eq!(sent.last(), Some(&vector("request_1029.bin")));
}

#[test]
fn stray_2104_after_1030_is_skipped() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    d.reply(wrong_crc());
    d.take_sent();
    d.reply(resp("response_2104.bin"));
    assert!(d.take_sent().is_empty());
    assert!(d.events.contains(&Event::StrayAckSkipped));
    d.reply(resp("response_2103.bin"));
    assert_eq!(d.take_sent(), frames(&["request_1029.bin"]));
    d.reply(resp("response_2104.bin"));
    assert!(d.outcome.as_ref().is_some_and(Outcome::is_success));
}

#[test]
fn only_one_stray_2104_is_skipped() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    d.reply(wrong_crc());
    d.reply(resp("response_2104.bin"));
    d.reply(resp("response_2104.bin"));
    assert!(matches!(
        d.outcome,
        Some(Outcome::ProtocolViolation(Violation::Unexpected {
            got: ResponseKind::Ack,
            ..
        }))
    ));
}

#[test]
fn stray_2104_on_first_send_is_a_violation() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    d.reply(resp("response_2104.bin"));
    assert!(matches!(d.outcome, Some(Outcome::ProtocolViolation(_))));
}

#[test]
fn registration_failed_ends_the_session() {
    let mut d = Driver::new(None);
    d.reply(resp("response_2101.bin"));
    assert_eq!(
        d.outcome,
        Some(Outcome::RegistrationFailed {
            after_denied_reconnect: false
        })
    );
    assert_eq!(d.s.attempts(), 0);
    // Sticky: later input changes nothing.
    d.reply(resp("response_2100.bin"));
    d.lose();
    assert!(matches!(d.s.poll_action(), Some(Action::Done(_))));
}

#[test]
fn reconnect_denied_registers_anew_with_new_key_pair() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2106.bin"));
    assert!(d.events.contains(&Event::ReconnectDenied));
    assert_eq!(d.s.identity().map(|i| i.client_id), None);
    assert_eq!(
        d.take_sent(),
        frames(&["request_1027.bin", "request_1025.bin"])
    );
    d.reply(resp("response_2100.bin"));
    assert_eq!(d.key_pairs, 1, "a new key pair after 2106");
    assert_eq!(d.take_sent(), frames(&["request_1026.bin"]));
    d.reply(resp("response_2102.bin"));
    assert_eq!(d.take_sent(), frames(&["request_1028.bin"]));
    assert!(d.s.identity().is_some());
}

#[test]
fn reconnect_denied_then_name_taken_is_a_refusal() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2106.bin"));
    d.reply(resp("response_2101.bin"));
    assert_eq!(
        d.outcome,
        Some(Outcome::RegistrationFailed {
            after_denied_reconnect: true
        })
    );
}

#[test]
fn server_error_three_retries_then_success() {
    let mut d = Driver::new(None);
    for retry in 1..=MAX_ERROR_RETRIES {
        d.reply(resp("response_2107.bin"));
        assert!(d.events.contains(&Event::ServerError { retry, of: 3 }));
    }
    assert_eq!(d.connects, 4, "each retry on a new connection");
    assert_eq!(d.take_sent(), frames(&["request_1025.bin"; 4]));
    d.reply(resp("response_2100.bin"));
    assert_eq!(d.take_sent(), frames(&["request_1026.bin"]));
    assert_eq!(d.outcome, None);
}

#[test]
fn server_error_four_times_fails() {
    let mut d = Driver::new(None);
    for _ in 0..=MAX_ERROR_RETRIES {
        d.reply(resp("response_2107.bin"));
    }
    assert_eq!(
        d.outcome,
        Some(Outcome::ServerError {
            request: RequestKind::Register
        })
    );
    assert_eq!(d.take_sent().len(), 4);
}

#[test]
fn retry_budget_starts_over_after_each_answer() {
    let mut d = Driver::new(None);
    for _ in 0..MAX_ERROR_RETRIES {
        d.reply(resp("response_2107.bin"));
    }
    d.reply(resp("response_2100.bin"));
    for _ in 0..MAX_ERROR_RETRIES {
        d.reply(resp("response_2107.bin"));
    }
    d.reply(resp("response_2102.bin"));
    assert_eq!(d.outcome, None);
    assert_eq!(d.sent.last(), Some(&vector("request_1028.bin")));
}

#[test]
fn server_error_on_file_resends_same_attempt() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    d.take_sent();
    d.reply(resp("response_2107.bin"));
    assert_eq!(d.take_sent(), frames(&["request_1028.bin"]));
    assert_eq!(d.s.attempts(), 1);
    d.reply(resp("response_2103.bin"));
    d.reply(resp("response_2104.bin"));
    assert_eq!(
        d.outcome,
        Some(Outcome::Verified {
            attempts: 1,
            cksum: PLAIN_1000_CKSUM
        })
    );
}

#[test]
fn lost_connection_counts_as_a_retry() {
    let mut d = Driver::new(None);
    d.lose();
    d.reply(resp("response_2107.bin"));
    d.lose();
    assert!(d
        .events
        .contains(&Event::ConnectionLost { retry: 1, of: 3 }));
    assert!(d.events.contains(&Event::ServerError { retry: 2, of: 3 }));
    assert_eq!(d.outcome, None);
    d.lose();
    assert_eq!(
        d.outcome,
        Some(Outcome::ConnectionFailed {
            request: RequestKind::Register
        })
    );
}

#[test]
fn refused_connections_give_connection_failed() {
    let mut d = Driver {
        fail_connects: 10,
        ..Driver::new(None)
    };
    // The first connect already succeeded in `new`; lose it and let
    // every reconnect fail.
    d.lose();
    assert_eq!(
        d.outcome,
        Some(Outcome::ConnectionFailed {
            request: RequestKind::Register
        })
    );
    assert_eq!(d.fail_connects, 10 - 3);
}

#[test]
fn closed_after_each_answer_still_succeeds() {
    // A server that closes after every response (§6 "peers differ").
    let mut d = Driver::new(None);
    for r in [
        "response_2100.bin",
        "response_2102.bin",
        "response_2103.bin",
    ] {
        d.reply(resp(r));
        d.lose();
    }
    d.reply(resp("response_2104.bin"));
    assert!(d.outcome.as_ref().is_some_and(Outcome::is_success));
    assert_eq!(d.connects, 4);
}

#[test]
fn bad_echo_is_a_violation() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    let Response::FileReceived {
        client_id, cksum, ..
    } = resp("response_2103.bin")
    else {
        unreachable!()
    };
    d.reply(Response::FileReceived {
        client_id,
        content_size: 1008,
        file_name: FixedName::new(b"other.bin").unwrap(),
        cksum,
    });
    assert_eq!(
        d.outcome,
        Some(Outcome::ProtocolViolation(Violation::BadEcho))
    );
}

#[test]
fn echo_ignores_bytes_after_nul() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    let mut frame = vector("response_2103.bin");
    frame[7 + 16 + 4 + 200] = b'x'; // inside the padding of file_name
    let r = ResponseDecoder::new(Revision::R2023c)
        .decode(&mut &frame[..])
        .unwrap()
        .unwrap();
    d.reply(r);
    assert_eq!(d.take_sent().last(), Some(&vector("request_1029.bin")));
}

#[test]
fn wrong_id_in_2102_is_a_violation() {
    let mut d = Driver::new(None);
    d.reply(resp("response_2100.bin"));
    let Response::KeyAccepted { encrypted_key, .. } = resp("response_2102.bin") else {
        unreachable!()
    };
    d.reply(Response::KeyAccepted {
        client_id: ClientId([9; 16]),
        encrypted_key,
    });
    assert!(matches!(
        d.outcome,
        Some(Outcome::ProtocolViolation(Violation::WrongClientId { .. }))
    ));
    assert!(d.s.identity().is_none(), "no identity to save");
}

#[test]
fn undecryptable_key_is_a_violation() {
    let mut d = Driver::new(Some(vector_identity()));
    d.reply(Response::ReconnectAccepted {
        client_id: vector_identity().client_id,
        encrypted_key: Box::new([0x55; ENCRYPTED_KEY_LEN]),
    });
    assert_eq!(
        d.outcome,
        Some(Outcome::ProtocolViolation(Violation::UndecryptableKey))
    );
}

#[test]
fn undecodable_frame_is_a_violation() {
    let mut d = Driver::new(None);
    d.s.handle_decode_error(DecodeError::UnknownCode { code: 9 });
    d.pump();
    assert_eq!(
        d.outcome.as_ref().map(Outcome::name),
        Some("protocol_error")
    );
}

#[test]
fn any_response_in_any_state_never_panics() {
    let all = [
        "response_2100.bin",
        "response_2101.bin",
        "response_2102.bin",
        "response_2103.bin",
        "response_2104.bin",
        "response_2105.bin",
        "response_2106.bin",
        "response_2107.bin",
    ];
    for identity in [false, true] {
        for first in all {
            for second in all {
                for third in all {
                    let mut d = Driver::new(identity.then(vector_identity));
                    d.reply(resp(first));
                    d.reply(resp(second));
                    d.reply(wrong_crc());
                    d.reply(resp(third));
                    d.lose();
                }
            }
        }
    }
}

#[test]
fn file_sender_refuses_a_file_that_changed_size() {
    let key = AesKey::from_bytes([1; 16]);
    let mut out = Vec::new();
    let mut grew = FileSender::new(&key, 4);
    grew.push(b"abc", &mut out).unwrap();
    assert_eq!(grew.remaining(), 1);
    assert_eq!(
        grew.push(b"de", &mut out),
        Err(FileSizeChanged {
            declared: 4,
            seen: 5
        })
    );
    let mut shrank = FileSender::new(&key, 4);
    shrank.push(b"abc", &mut out).unwrap();
    assert_eq!(
        shrank.finish(&mut out),
        Err(FileSizeChanged {
            declared: 4,
            seen: 3
        })
    );
}

#[test]
fn empty_file_is_one_padding_block() {
    let key = AesKey::from_bytes(vector("aes_key.bin").try_into().unwrap());
    let mut out = Vec::new();
    let cksum = FileSender::new(&key, 0).finish(&mut out).unwrap();
    assert_eq!(cksum, 4_294_967_295);
    assert_eq!(out, vector("cipher_0.bin"));
}

#[test]
fn config_is_checked() {
    let with = |name: &str, file: &str, len: u64| {
        ClientSession::new(ClientConfig {
            name: name.into(),
            file_name: file.into(),
            plain_len: len,
            ..config(None)
        })
        .map(|_| ())
    };
    assert_eq!(with("alice", "a.bin", 0), Ok(()));
    assert_eq!(with(&"a".repeat(100), "a.bin", 0), Ok(()));
    assert_eq!(
        with(&"a".repeat(101), "a.bin", 0),
        Err(ConfigError::BadName { len: 101 })
    );
    assert_eq!(with("", "a.bin", 0), Err(ConfigError::BadName { len: 0 }));
    assert_eq!(
        with("al\tice", "a.bin", 0),
        Err(ConfigError::BadName { len: 6 })
    );
    for bad in ["", ".", "..", "a/b", "a\\b", "a\nb", "é"] {
        assert_eq!(
            with("alice", bad, 0),
            Err(ConfigError::BadFileName),
            "{bad:?}"
        );
    }
    assert_eq!(
        with("alice", "a.bin", MAX_PLAINTEXT_SIZE + 1),
        Err(ConfigError::FileTooLarge {
            len: MAX_PLAINTEXT_SIZE + 1
        })
    );
    assert_eq!(with("alice", "a.bin", MAX_PLAINTEXT_SIZE), Ok(()));
}

#[test]
fn largest_file_header_declares_max_content_size() {
    let mut d = Driver::new(Some(vector_identity()));
    d.s.plain_len = MAX_PLAINTEXT_SIZE;
    d.s.content_size = encrypted_len(MAX_PLAINTEXT_SIZE) as u32;
    d.s.handle_response(resp("response_2105.bin"), &mut d.rng);
    let mut up = None;
    while let Some(a) = d.s.poll_action() {
        if let Action::SendFile(u) = a {
            up = Some(u);
            break;
        }
    }
    let up = up.expect("file action");
    assert_eq!(up.content_size, crate::consts::MAX_CONTENT_SIZE);
    let payload = u32::from_le_bytes(up.header[19..23].try_into().unwrap());
    assert_eq!(payload, u32::MAX - (u32::MAX - 259) % 16);
}

#[test]
fn debug_output_has_no_key_material() {
    let mut d = Driver::new(Some(vector_identity()));
    d.s.handle_response(resp("response_2105.bin"), &mut d.rng);
    let key_hex = "c93d7ec7";
    let key_list = format!("{:?}", &vector("aes_key.bin")[..4]);
    let key_list = key_list.trim_end_matches(']');
    let mut text = format!("{:?} {:?}", d.s, vector_identity());
    while let Some(a) = d.s.poll_action() {
        text.push_str(&format!("{a:?}"));
        if matches!(a, Action::Done(_)) {
            break;
        }
    }
    assert!(text.contains("FileSender"));
    assert!(
        !text.contains(key_hex) && !text.contains(key_list),
        "{text}"
    );
    assert!(!text.to_lowercase().contains("privatekey {"), "{text}");
}
