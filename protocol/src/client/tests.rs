//! Unit tests of the client session: every flow of PROTOCOL.md §6 driven
//! with scripted responses, and the byte-exact request frames.

use super::*;
use crate::consts::MAX_PLAINTEXT_SIZE;
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
        files: vec![FileSpec {
            name: "plain_1000.bin".into(),
            plain_len: 1000,
        }],
        identity,
        packets: PacketOptions::default(),
        retry: RetryPolicy::default(),
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
    /// The fake clock: every wait the session asks for passes at once.
    now: Instant,
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
            now: Instant::now(),
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
                Some(Action::Connect { delay }) if self.fail_connects > 0 => {
                    self.now += delay;
                    self.fail_connects -= 1;
                    self.s.handle_connection_lost(self.now);
                }
                Some(Action::Connect { delay }) => {
                    self.now += delay;
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
        self.s.handle_connection_lost(self.now);
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
            Event::FileFinished {
                file: 0,
                outcome: Outcome::Verified {
                    attempts: 1,
                    cksum: PLAIN_1000_CKSUM
                }
            },
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
fn lost_connections_and_server_errors_are_counted_apart() {
    let mut d = Driver::new(None);
    d.lose();
    d.reply(resp("response_2107.bin"));
    d.lose();
    assert!(d
        .events
        .iter()
        .any(|e| matches!(e, Event::ConnectionLost { retry: 1, .. })));
    assert!(d
        .events
        .iter()
        .any(|e| matches!(e, Event::ConnectionLost { retry: 2, .. })));
    assert!(d.events.contains(&Event::ServerError { retry: 1, of: 3 }));
    for _ in 0..3 {
        d.reply(resp("response_2107.bin"));
    }
    assert_eq!(
        d.outcome,
        Some(Outcome::ServerError {
            request: RequestKind::Register
        })
    );
}

/// The waits of the ConnectionLost events.
fn waits(d: &Driver) -> Vec<Duration> {
    d.events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectionLost { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect()
}

#[test]
fn refused_connections_back_off_until_retry_for() {
    let mut d = Driver {
        fail_connects: 1000,
        ..Driver::new(None)
    };
    let start = d.now;
    // The first connect already succeeded in `new`; lose it and let
    // every reconnect fail.
    d.lose();
    assert_eq!(
        d.outcome,
        Some(Outcome::ConnectionFailed {
            request: RequestKind::Register
        })
    );
    let waits = waits(&d);
    // Doubling from RETRY_DELAY up to MAX_BACKOFF, each shortened by at
    // most half (jitter).
    for (i, w) in waits.iter().enumerate() {
        let full = RETRY_DELAY.saturating_mul(1 << i.min(16)).min(MAX_BACKOFF);
        assert!(*w <= full && *w >= full / 2, "wait {i}: {w:?} for {full:?}");
    }
    // Not every wait is the same fraction: the jitter varies.
    let fractions: Vec<u128> = waits
        .iter()
        .enumerate()
        .map(|(i, w)| {
            w.as_micros() * 1000
                / RETRY_DELAY
                    .saturating_mul(1 << i.min(16))
                    .min(MAX_BACKOFF)
                    .as_micros()
        })
        .collect();
    assert!(fractions.windows(2).any(|w| w[0] != w[1]), "{fractions:?}");
    // Gave up once the next wait would pass retry_for, not before.
    let waited = d.now - start;
    assert!(waited <= DEFAULT_RETRY_FOR, "{waited:?}");
    assert!(waited + MAX_BACKOFF > DEFAULT_RETRY_FOR, "{waited:?}");
    assert_eq!(d.fail_connects, 1000 - waits.len());
}

#[test]
fn a_short_retry_for_still_retries_three_times() {
    let mut d = Driver::new(None);
    d.s = ClientSession::new(ClientConfig {
        retry: RetryPolicy {
            retry_for: Duration::from_millis(1),
            seed: 9,
        },
        ..config(None)
    })
    .unwrap();
    d.fail_connects = 1000;
    d.events.clear();
    d.pump();
    d.lose();
    assert_eq!(waits(&d).len(), MAX_ERROR_RETRIES as usize);
    assert!(matches!(d.outcome, Some(Outcome::ConnectionFailed { .. })));
}

#[test]
fn an_answer_ends_the_outage() {
    let mut d = Driver::new(None);
    d.fail_connects = 2;
    d.lose();
    assert_eq!(waits(&d).len(), 3);
    d.reply(resp("response_2100.bin"));
    d.events.clear();
    d.fail_connects = 1;
    d.lose();
    // Counting starts over at retry 1 and the shortest wait.
    let first = d.events.iter().find_map(|e| match e {
        Event::ConnectionLost { retry, delay, .. } => Some((*retry, *delay)),
        _ => None,
    });
    assert!(matches!(first, Some((1, w)) if w <= RETRY_DELAY));
}

#[test]
fn a_broken_verdict_is_asked_again_then_unknown() {
    // The connection breaks after 1029: the session sends 1029 again on
    // a new connection; a server that knows the upload answers 2104.
    let mut d = Driver::new(Some(vector_identity()));
    for r in ["response_2105.bin", "response_2103.bin"] {
        d.reply(resp(r));
    }
    d.take_sent();
    d.lose();
    assert_eq!(d.take_sent(), frames(&["request_1029.bin"]));
    d.reply(resp("response_2104.bin"));
    assert!(matches!(d.outcome, Some(Outcome::Verified { .. })));

    // One that does not (the upload belonged to the old connection)
    // answers 2107: that is not a failure of the file, only unknown.
    let mut d = Driver::new(Some(vector_identity()));
    for r in ["response_2105.bin", "response_2103.bin"] {
        d.reply(resp(r));
    }
    d.lose();
    for _ in 0..=MAX_ERROR_RETRIES {
        d.reply(resp("response_2107.bin"));
    }
    assert_eq!(
        d.outcome,
        Some(Outcome::OutcomeUnknown {
            attempts: 1,
            cksum: PLAIN_1000_CKSUM
        })
    );
    assert_eq!(
        Outcome::OutcomeUnknown {
            attempts: 1,
            cksum: 0
        }
        .name(),
        "outcome_unknown"
    );

    // And a server that is gone for good: unknown too.
    let mut d = Driver::new(Some(vector_identity()));
    for r in ["response_2105.bin", "response_2103.bin"] {
        d.reply(resp(r));
    }
    d.fail_connects = 1000;
    d.lose();
    assert!(matches!(d.outcome, Some(Outcome::OutcomeUnknown { .. })));
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
            files: vec![FileSpec {
                name: file.into(),
                plain_len: len,
            }],
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
            len: MAX_PLAINTEXT_SIZE + 1,
            revision: Revision::R2023c
        })
    );
    assert_eq!(with("alice", "a.bin", MAX_PLAINTEXT_SIZE), Ok(()));
}

#[test]
fn largest_file_header_declares_max_content_size() {
    let mut d = Driver::new(Some(vector_identity()));
    d.s.files[0].plain_len = MAX_PLAINTEXT_SIZE;
    d.s.files[0].content_size = encrypted_len(MAX_PLAINTEXT_SIZE) as u32;
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

// ---------------------------------------------------------------------
// Every revision (§9) against its golden frames (fixtures/vectors/<rev>/),
// the 2024 packet forms, and the server quirks of §3 and §9.1 as scripted
// byte streams.

/// A file of a revision's vectors folder.
fn rev_vector(rev: Revision, name: &str) -> Vec<u8> {
    vector(&format!("{}/{name}", rev.name()))
}

/// The frame of a request kind in a revision's vectors (the file message
/// of 2024a/2024c is its two packets, one after the other).
fn rev_request(rev: Revision, kind: RequestKind) -> Vec<u8> {
    let code = rev.request_code(kind).expect("revision has the request");
    if kind == RequestKind::SendFile && rev.file_layout() == FileLayout::Packets {
        let mut both = rev_vector(rev, &format!("request_{code}_packet1.bin"));
        both.extend(rev_vector(rev, &format!("request_{code}_packet2.bin")));
        return both;
    }
    rev_vector(rev, &format!("request_{code}.bin"))
}

/// The decoded response of a kind in a revision's vectors.
fn rev_resp(rev: Revision, kind: ResponseKind) -> Response {
    let code = rev.response_code(kind).expect("revision has the response");
    let bytes = rev_vector(rev, &format!("response_{code}.bin"));
    let mut input = &bytes[..];
    let r = ResponseReader::new(rev).decode(&mut input);
    assert!(input.is_empty());
    r.expect("decodes").expect("complete")
}

/// A 2103/1603 of the vectors with another cksum.
fn rev_wrong_crc(rev: Revision) -> Response {
    match rev_resp(rev, ResponseKind::FileReceived) {
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

/// The packet options the vectors use: 512-byte split packets from 1
/// (1008 bytes of ciphertext in 512 + 496).
fn vector_packets() -> PacketOptions {
    PacketOptions {
        size: Some(512),
        ..PacketOptions::default()
    }
}

fn rev_driver(rev: Revision, identity: Option<Identity>, packets: PacketOptions) -> Driver {
    let mut d = Driver::new(None);
    d.s = ClientSession::new(ClientConfig {
        revision: rev,
        identity,
        packets,
        ..config(None)
    })
    .expect("config");
    d.sent.clear();
    d.events.clear();
    d.connects = 0;
    d.pump();
    d
}

#[test]
fn every_revisions_new_client_sends_exactly_its_vector_frames() {
    use RequestKind as Q;
    use ResponseKind as A;
    for rev in Revision::ALL {
        let mut d = rev_driver(rev, None, vector_packets());
        assert_eq!(d.take_sent(), [rev_request(rev, Q::Register)], "{rev}");
        d.reply(rev_resp(rev, A::Registered));
        assert_eq!(d.take_sent(), [rev_request(rev, Q::PublicKey)], "{rev}");
        d.reply(rev_resp(rev, A::KeyAccepted));
        assert_eq!(d.take_sent(), [rev_request(rev, Q::SendFile)], "{rev}");
        d.reply(rev_resp(rev, A::FileReceived));
        assert_eq!(d.take_sent(), [rev_request(rev, Q::CrcOk)], "{rev}");
        d.reply(rev_resp(rev, A::Ack));
        assert_eq!(
            d.outcome,
            Some(Outcome::Verified {
                attempts: 1,
                cksum: PLAIN_1000_CKSUM
            }),
            "{rev}"
        );
        assert_eq!(d.s.revision(), rev);
        assert_eq!(d.s.packet_plan().map(|p| p.total), rev_packets(rev));
    }
}

/// How many packets the vectors' file message has.
fn rev_packets(rev: Revision) -> Option<u16> {
    (rev.file_layout() == FileLayout::Packets).then_some(2)
}

#[test]
fn every_revisions_returning_client_resends_and_gives_up_with_its_vector_frames() {
    use RequestKind as Q;
    use ResponseKind as A;
    for rev in Revision::ALL {
        let mut d = rev_driver(rev, Some(vector_identity()), vector_packets());
        // 2022c has no reconnect: the saved key goes again in 1101, whose
        // vector frame is exactly that (alice's id, name and key).
        let (hello, welcome) = if rev == Revision::R2022c {
            (Q::PublicKey, A::KeyAccepted)
        } else {
            (Q::Reconnect, A::ReconnectAccepted)
        };
        assert_eq!(d.take_sent(), [rev_request(rev, hello)], "{rev}");
        d.reply(rev_resp(rev, welcome));
        assert!(d.events.contains(&Event::Reconnected {
            client_id: vector_identity().client_id
        }));
        for _ in 0..MAX_SENDS {
            d.reply(rev_wrong_crc(rev));
        }
        let file = rev_request(rev, Q::SendFile);
        let bad = rev_request(rev, Q::CrcBad);
        let mut expected = vec![file.clone(), bad.clone(), file.clone(), bad.clone()];
        expected.extend([file.clone(), bad, file, rev_request(rev, Q::CrcGiveUp)]);
        assert_eq!(d.take_sent(), expected, "{rev}");
        d.reply(rev_resp(rev, A::Ack));
        assert_eq!(
            d.outcome,
            Some(Outcome::CrcFailed {
                attempts: 4,
                server: !PLAIN_1000_CKSUM,
                local: PLAIN_1000_CKSUM
            }),
            "{rev}"
        );
        assert_eq!(d.key_pairs, 0, "{rev}: the saved key is used");
    }
}

#[test]
fn every_revisions_crc_bad_then_ok_verifies_on_the_second_send() {
    use RequestKind as Q;
    use ResponseKind as A;
    for rev in Revision::ALL {
        let mut d = rev_driver(rev, None, vector_packets());
        d.reply(rev_resp(rev, A::Registered));
        d.reply(rev_resp(rev, A::KeyAccepted));
        d.reply(rev_wrong_crc(rev));
        d.reply(rev_resp(rev, A::FileReceived));
        d.reply(rev_resp(rev, A::Ack));
        let sent = d.take_sent();
        assert_eq!(
            sent[2..],
            [
                rev_request(rev, Q::SendFile),
                rev_request(rev, Q::CrcBad),
                rev_request(rev, Q::SendFile),
                rev_request(rev, Q::CrcOk)
            ],
            "{rev}"
        );
        assert!(
            matches!(d.outcome, Some(Outcome::Verified { attempts: 2, .. })),
            "{rev}"
        );
    }
}

#[test]
fn a_2022c_key_resend_without_answer_registers_anew() {
    // A 2022c server closes without a word when it does not know us: the
    // first try and three retries, then a new registration.
    let rev = Revision::R2022c;
    let mut d = rev_driver(rev, Some(vector_identity()), PacketOptions::default());
    for _ in 0..=MAX_ERROR_RETRIES {
        d.lose();
    }
    assert!(d.events.contains(&Event::KeyResendRefused));
    assert_eq!(d.s.identity().map(|i| i.client_id), None);
    let mut expected = vec![rev_request(rev, RequestKind::PublicKey); 4];
    expected.push(rev_request(rev, RequestKind::Register));
    assert_eq!(d.take_sent(), expected);
    assert_eq!(d.connects, 5);
    // The name is taken (by our own old self): a refusal after a refused key.
    d.reply(rev_resp(rev, ResponseKind::RegistrationFailed));
    assert_eq!(
        d.outcome,
        Some(Outcome::RegistrationFailed {
            after_denied_reconnect: true
        })
    );
}

#[test]
fn a_2022c_key_resend_to_an_unreachable_server_is_a_connection_failure() {
    let rev = Revision::R2022c;
    let mut d = rev_driver(rev, Some(vector_identity()), PacketOptions::default());
    d.fail_connects = 1000;
    d.lose();
    assert_eq!(
        d.outcome,
        Some(Outcome::ConnectionFailed {
            request: RequestKind::PublicKey
        })
    );
    assert!(!d.events.contains(&Event::KeyResendRefused));
}

#[test]
fn a_2022c_key_resend_answered_otherwise_registers_anew() {
    let rev = Revision::R2022c;
    // Another client's id in the 2102.
    let mut d = rev_driver(rev, Some(vector_identity()), PacketOptions::default());
    let Response::KeyAccepted { encrypted_key, .. } = rev_resp(rev, ResponseKind::KeyAccepted)
    else {
        unreachable!()
    };
    d.reply(Response::KeyAccepted {
        client_id: ClientId([3; 16]),
        encrypted_key,
    });
    assert!(d.events.contains(&Event::KeyResendRefused));
    assert_eq!(
        d.take_sent().last(),
        Some(&rev_request(rev, RequestKind::Register))
    );
    // A 2101 (whatever a server meant by it) does the same.
    let mut d = rev_driver(rev, Some(vector_identity()), PacketOptions::default());
    d.reply(rev_resp(rev, ResponseKind::RegistrationFailed));
    assert!(d.events.contains(&Event::KeyResendRefused));
    assert_eq!(d.outcome, None);
}

#[test]
fn a_key_of_the_wrong_size_is_a_violation() {
    // A 2024 client handed the 16-byte key of the 2023c vectors.
    let mut d = rev_driver(Revision::R2024c, None, PacketOptions::default());
    d.reply(rev_resp(Revision::R2024c, ResponseKind::Registered));
    let Response::KeyAccepted {
        client_id,
        encrypted_key,
    } = resp("response_2102.bin")
    else {
        unreachable!()
    };
    d.reply(Response::KeyAccepted {
        client_id,
        encrypted_key,
    });
    assert_eq!(
        d.outcome,
        Some(Outcome::ProtocolViolation(Violation::KeySize {
            got: 16,
            expected: 32
        }))
    );
    // And the other way round.
    let mut d = rev_driver(
        Revision::R2023a,
        Some(vector_identity()),
        PacketOptions::default(),
    );
    let Response::ReconnectAccepted { encrypted_key, .. } =
        rev_resp(Revision::R2024a, ResponseKind::ReconnectAccepted)
    else {
        unreachable!()
    };
    d.reply(Response::ReconnectAccepted {
        client_id: vector_identity().client_id,
        encrypted_key,
    });
    assert_eq!(
        d.outcome,
        Some(Outcome::ProtocolViolation(Violation::KeySize {
            got: 32,
            expected: 16
        }))
    );
}

#[test]
fn packet_file_received_content_size_is_not_compared_but_single_is() {
    // 2024 servers echo the whole size, the last packet's or the plaintext's.
    for (rev, echoed, ok) in [
        (Revision::R2024a, 496, true),
        (Revision::R2024c, 1000, true),
        (Revision::R2023a, 496, false),
        (Revision::R2022c, 1000, false),
    ] {
        let mut d = rev_driver(rev, None, vector_packets());
        d.reply(rev_resp(rev, ResponseKind::Registered));
        d.reply(rev_resp(rev, ResponseKind::KeyAccepted));
        let Response::FileReceived {
            client_id,
            file_name,
            cksum,
            ..
        } = rev_resp(rev, ResponseKind::FileReceived)
        else {
            unreachable!()
        };
        d.reply(Response::FileReceived {
            client_id,
            content_size: echoed,
            file_name,
            cksum,
        });
        let violated = d.outcome == Some(Outcome::ProtocolViolation(Violation::BadEcho));
        assert_eq!(violated, !ok, "{rev}");
    }
}

/// The 2024 AES key of the vectors.
fn key_256() -> AesKey {
    AesKey::from_slice(&rev_vector(Revision::R2024c, "aes_key.bin")).unwrap()
}

/// Splits a 2024 packet stream into (fields, content) per packet,
/// checking each header.
fn parse_packets(rev: Revision, mut wire: &[u8]) -> Vec<(PacketHeaderFields, Vec<u8>)> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let code = u16::from_le_bytes([wire[17], wire[18]]);
        assert_eq!(Some(code), rev.request_code(RequestKind::SendFile));
        let payload = u32::from_le_bytes(wire[19..23].try_into().unwrap()) as usize;
        let p = &wire[23..23 + payload];
        let f = |at: usize| u32::from_le_bytes(p[at..at + 4].try_into().unwrap());
        let h = |at: usize| u16::from_le_bytes(p[at..at + 2].try_into().unwrap());
        assert_eq!(&p[12..12 + 15], b"plain_1000.bin\0");
        out.push((
            (f(0), f(4), h(8), h(10)),
            p[crate::revision::PACKET_PREFIX_LEN..].to_vec(),
        ));
        wire = &wire[23 + payload..];
    }
    out
}

/// content_size, orig_file_size, packet_number, total_packets.
type PacketHeaderFields = (u32, u32, u16, u16);

/// What a 2024 client with `packets` sends for plain_1000.bin (after the
/// vector 1602).
fn file_wire(rev: Revision, packets: PacketOptions) -> Vec<u8> {
    let mut d = rev_driver(rev, None, packets);
    d.reply(rev_resp(rev, ResponseKind::Registered));
    d.reply(rev_resp(rev, ResponseKind::KeyAccepted));
    d.take_sent().pop().expect("the file message")
}

#[test]
fn packet_variants_cut_and_encrypt_as_asked() {
    use crate::crypto::cbc_decrypt;
    let plain = vector("plain_1000.bin");
    let rev = Revision::R2024c;
    // Default: one packet, numbered 1 of 1, whole sizes, the whole ciphertext.
    let got = parse_packets(rev, &file_wire(rev, PacketOptions::default()));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, (1008, 1000, 1, 1));
    assert_eq!(got[0].1, rev_vector(rev, "cipher_1000.bin"));
    // Split, from 0, 256-byte pieces: 4 packets, the last 240 bytes.
    let opts = PacketOptions {
        size: Some(256),
        base: 0,
        ..PacketOptions::default()
    };
    let got = parse_packets(rev, &file_wire(rev, opts));
    let fields: Vec<_> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        fields,
        [
            (1008, 1000, 0, 4),
            (1008, 1000, 1, 4),
            (1008, 1000, 2, 4),
            (1008, 1000, 3, 4)
        ]
    );
    let joined: Vec<u8> = got.iter().flat_map(|g| g.1.clone()).collect();
    assert_eq!(joined, rev_vector(rev, "cipher_1000.bin"));
    assert_eq!(got[3].1.len(), 240);
    // Each, 400-byte plaintext pieces (416 on the wire, the last 200 -> 208),
    // whole-file sizes: content_size is the sum of the padded pieces.
    let opts = PacketOptions {
        size: Some(400),
        mode: Granularity::Each,
        ..PacketOptions::default()
    };
    let got = parse_packets(rev, &file_wire(rev, opts));
    let fields: Vec<_> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        fields,
        [(1040, 1000, 1, 3), (1040, 1000, 2, 3), (1040, 1000, 3, 3)]
    );
    let mut back = Vec::new();
    for (_, content) in &got {
        back.extend(cbc_decrypt(&key_256(), content).expect("each piece pads alone"));
    }
    assert_eq!(back, plain);
    // Each with per-packet fields.
    let opts = PacketOptions {
        size: Some(400),
        mode: Granularity::Each,
        fields: PacketFields::Packet,
        ..PacketOptions::default()
    };
    let got = parse_packets(rev, &file_wire(rev, opts));
    let fields: Vec<_> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        fields,
        [(416, 400, 1, 3), (416, 400, 2, 3), (208, 200, 3, 3)]
    );
}

/// Streams `plain` through a packet sender in pieces of `chunk`, using the
/// in-place path wherever it is allowed, as the client binary does.
fn send_all(plan: PacketPlan, plain: &[u8], chunk: usize) -> (Vec<u8>, u32) {
    let rev = Revision::R2024a;
    let id = ClientId([5; 16]);
    let name = FixedName::new(b"f.bin").unwrap();
    let mut wire = Vec::new();
    crate::message::encode_packet_header(
        rev,
        &id,
        &plan.header(0),
        &name,
        plan.data_len(0),
        &mut wire,
    );
    let mut sender = FileSender::packets(&key_256(), rev, id, name, plan);
    for piece in plain.chunks(chunk) {
        let mut buf = piece.to_vec();
        if sender.push_in_place(&mut buf).unwrap() {
            wire.extend(buf);
        } else {
            sender.push(piece, &mut wire).unwrap();
        }
    }
    let cksum = sender.finish(&mut wire).unwrap();
    (wire, cksum)
}

#[test]
fn packet_streams_are_the_same_whatever_the_chunking() {
    use crate::crypto::cbc_encrypt;
    let plain: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    for mode in [Granularity::Split, Granularity::Each] {
        for (len, size) in [
            (0, 64),
            (1, 64),
            (16, 16), // each: exactly full last packet
            (47, 16), // split: 48 bytes, exactly full last packet
            (1000, 64),
            (5000, 1024),
            (5000, 4096),
            (5000, 8192), // one packet
        ] {
            let opts = PacketOptions {
                size: Some(size),
                mode,
                ..PacketOptions::default()
            };
            let plan = PacketPlan::new(len as u64, &opts).unwrap();
            let (reference, cksum) = send_all(plan.clone(), &plain[..len], len.max(1));
            assert_eq!(cksum, crate::cksum::cksum(&plain[..len]));
            for chunk in [1, 15, 16, 32, 64, 1000, 4096] {
                let (wire, c) = send_all(plan.clone(), &plain[..len], chunk);
                assert_eq!(
                    (&wire, c),
                    (&reference, cksum),
                    "{mode} {len}/{size} by {chunk}"
                );
            }
            // The content of the packets is the mode's ciphertext.
            let mut rest = &reference[..];
            let mut content = Vec::new();
            let mut count = 0u16;
            while !rest.is_empty() {
                let payload = u32::from_le_bytes(rest[19..23].try_into().unwrap()) as usize;
                let n = u16::from_le_bytes(rest[23 + 8..23 + 10].try_into().unwrap());
                assert_eq!(n, 1 + count);
                content.extend_from_slice(&rest[23 + 267..23 + payload]);
                assert_eq!(payload - 267, plan.data_len(count) as usize);
                rest = &rest[23 + payload..];
                count += 1;
            }
            assert_eq!(count, plan.total);
            let expected: Vec<u8> = match mode {
                Granularity::Split => cbc_encrypt(&key_256(), &plain[..len]),
                Granularity::Each => {
                    let pieces: Vec<&[u8]> = if len == 0 {
                        vec![&[]]
                    } else {
                        plain[..len].chunks(size as usize).collect()
                    };
                    pieces
                        .iter()
                        .flat_map(|p| cbc_encrypt(&key_256(), p))
                        .collect()
                }
            };
            assert_eq!(content, expected, "{mode} {len}/{size}");
        }
    }
}

#[test]
fn a_packet_sender_refuses_a_file_that_changed_size() {
    let opts = PacketOptions {
        size: Some(16),
        mode: Granularity::Each,
        ..PacketOptions::default()
    };
    let plan = PacketPlan::new(40, &opts).unwrap();
    let mut s = FileSender::packets(
        &key_256(),
        Revision::R2024c,
        ClientId::ZERO,
        FixedName::new(b"f").unwrap(),
        plan.clone(),
    );
    let mut out = Vec::new();
    assert!(s.push(&[0; 41], &mut out).is_err());
    let mut s = FileSender::packets(
        &key_256(),
        Revision::R2024c,
        ClientId::ZERO,
        FixedName::new(b"f").unwrap(),
        plan,
    );
    s.push(&[0; 39], &mut out).unwrap();
    assert_eq!(
        s.finish(&mut out),
        Err(FileSizeChanged {
            declared: 40,
            seen: 39
        })
    );
}

#[test]
fn a_packet_size_too_small_for_65535_packets_is_raised_and_said() {
    let d = {
        let mut d = Driver::new(None);
        d.s = ClientSession::new(ClientConfig {
            revision: Revision::R2024c,
            files: vec![FileSpec {
                name: "plain_1000.bin".into(),
                plain_len: 100 << 20,
            }],
            packets: PacketOptions {
                size: Some(1024),
                ..PacketOptions::default()
            },
            ..config(None)
        })
        .unwrap();
        d.events.clear();
        d.pump();
        d
    };
    assert!(d.events.contains(&Event::PacketSizeRaised {
        requested: 1024,
        used: 1616
    }));
    let plan = d.s.packet_plan().unwrap();
    assert_eq!((plan.piece, plan.raised_from), (1616, Some(1024)));
}

#[test]
fn packet_options_and_sizes_are_checked_per_revision() {
    let with = |rev: Revision, len: u64, packets: PacketOptions| {
        ClientSession::new(ClientConfig {
            revision: rev,
            files: vec![FileSpec {
                name: "plain_1000.bin".into(),
                plain_len: len,
            }],
            packets,
            ..config(None)
        })
        .map(|_| ())
    };
    let d = PacketOptions::default();
    assert_eq!(
        with(
            Revision::R2024a,
            5,
            PacketOptions {
                size: Some(100),
                ..d
            }
        ),
        Err(ConfigError::BadPackets(PacketOptionsError::Size {
            size: 100
        }))
    );
    // The other revisions ignore packet options.
    assert_eq!(
        with(
            Revision::R2023c,
            5,
            PacketOptions {
                size: Some(100),
                ..d
            }
        ),
        Ok(())
    );
    // 2022c's longer prefix leaves 16 bytes less room.
    let max_2022c = max_plain_len(Revision::R2022c);
    assert_eq!(max_2022c, MAX_PLAINTEXT_SIZE - 16);
    assert_eq!(with(Revision::R2022c, max_2022c, d), Ok(()));
    assert_eq!(
        with(Revision::R2022c, max_2022c + 1, d),
        Err(ConfigError::FileTooLarge {
            len: max_2022c + 1,
            revision: Revision::R2022c
        })
    );
    assert_eq!(with(Revision::R2024c, MAX_PLAINTEXT_SIZE, d), Ok(()));
    let each = PacketOptions {
        size: Some(1 << 20),
        mode: Granularity::Each,
        ..d
    };
    assert!(matches!(
        with(Revision::R2024c, MAX_PLAINTEXT_SIZE, each),
        Err(ConfigError::FileTooLarge { .. })
    ));
}

#[test]
fn the_largest_2022c_file_declares_a_payload_size_that_fits() {
    let mut d = rev_driver(
        Revision::R2022c,
        Some(vector_identity()),
        PacketOptions::default(),
    );
    d.s.files[0].plain_len = max_plain_len(Revision::R2022c);
    d.s.files[0].content_size = max_content_size(Revision::R2022c);
    d.s.handle_response(
        rev_resp(Revision::R2022c, ResponseKind::KeyAccepted),
        &mut d.rng,
    );
    let up = std::iter::from_fn(|| d.s.poll_action())
        .find_map(|a| match a {
            Action::SendFile(u) => Some(u),
            _ => None,
        })
        .expect("file action");
    let payload = u32::from_le_bytes(up.header[19..23].try_into().unwrap());
    assert_eq!(
        u64::from(payload),
        275 + u64::from(max_content_size(Revision::R2022c))
    );
    assert!(u32::MAX - payload < 16);
}

// --- Server quirks, as byte streams read by the ResponseReader.

impl Driver {
    /// Feeds a server's byte stream through the client's reader until the
    /// session is over or the bytes run out; returns the bytes not read.
    fn stream_from(&mut self, reader: &mut ResponseReader, mut bytes: &[u8]) -> usize {
        while self.outcome.is_none() {
            match reader.decode(&mut bytes) {
                Ok(Some(r)) => self.reply(r),
                Ok(None) => break,
                Err(e) => {
                    self.s.handle_response_error(e);
                    self.pump();
                }
            }
        }
        bytes.len()
    }
}

/// A response frame: version, code, payload.
fn frame(version: u8, code: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![version];
    f.extend_from_slice(&code.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// A vector response of `rev` with version byte 1.
fn version_1(rev: Revision, kind: ResponseKind) -> Vec<u8> {
    let code = rev.response_code(kind).unwrap();
    let mut f = rev_vector(rev, &format!("response_{code}.bin"));
    f[0] = 1;
    f
}

#[test]
fn quirky_2024_server_version_1_empty_ack_and_overlong_final_ack() {
    let rev = Revision::R2024c;
    let id = vector_identity().client_id;
    // Version 1 everywhere; a 1604 whose header says 16 bytes, followed by
    // the 255-byte file name: read nothing after it.
    let mut ack = frame(1, 1604, &id.0);
    let mut name = vec![0u8; 255];
    name[..14].copy_from_slice(b"plain_1000.bin");
    ack.extend_from_slice(&name);
    let mut d = rev_driver(rev, Some(vector_identity()), vector_packets());
    let mut reader = ResponseReader::new(rev);
    let mut stream = version_1(rev, ResponseKind::ReconnectAccepted);
    stream.extend(version_1(rev, ResponseKind::FileReceived));
    stream.extend(&ack);
    assert_eq!(
        d.stream_from(&mut reader, &stream),
        255,
        "the extra 255 bytes stay unread"
    );
    assert!(
        matches!(d.outcome, Some(Outcome::Verified { attempts: 1, .. })),
        "{:?}",
        d.outcome
    );
    // An empty 1604, and a mismatch first: the 901 gets no answer.
    let mut d = rev_driver(rev, Some(vector_identity()), vector_packets());
    let mut reader = ResponseReader::new(rev);
    let mut wrong = version_1(rev, ResponseKind::FileReceived);
    let n = wrong.len();
    wrong[n - 1] ^= 0xff;
    let mut stream = version_1(rev, ResponseKind::ReconnectAccepted);
    stream.extend(wrong);
    stream.extend(version_1(rev, ResponseKind::FileReceived));
    stream.extend(frame(1, 1604, &[]));
    assert_eq!(d.stream_from(&mut reader, &stream), 0);
    assert!(
        matches!(d.outcome, Some(Outcome::Verified { attempts: 2, .. })),
        "{:?}",
        d.outcome
    );
    let sent: Vec<u16> = d
        .take_sent()
        .iter()
        .map(|f| u16::from_le_bytes([f[17], f[18]]))
        .collect();
    assert_eq!(sent, [827, 828, 901, 828, 900]);
}

#[test]
fn quirky_2022c_server_empty_2104_and_stray_2104_after_1105() {
    let rev = Revision::R2022c;
    let mut d = rev_driver(rev, Some(vector_identity()), PacketOptions::default());
    let mut reader = ResponseReader::new(rev);
    let mut wrong = version_1(rev, ResponseKind::FileReceived);
    let n = wrong.len();
    wrong[n - 1] ^= 0xff;
    let mut stream = version_1(rev, ResponseKind::KeyAccepted);
    stream.extend(wrong);
    stream.extend(frame(3, 2104, &[])); // a stray, empty ack to 1105
    stream.extend(version_1(rev, ResponseKind::FileReceived));
    stream.extend(frame(3, 2104, &[]));
    assert_eq!(d.stream_from(&mut reader, &stream), 0);
    assert!(
        matches!(d.outcome, Some(Outcome::Verified { attempts: 2, .. })),
        "{:?}",
        d.outcome
    );
    assert!(d.events.contains(&Event::StrayAckSkipped));
}

#[test]
fn a_server_closing_after_every_response_still_verifies_in_every_revision() {
    for rev in Revision::ALL {
        let mut d = rev_driver(rev, None, vector_packets());
        for kind in [
            ResponseKind::Registered,
            ResponseKind::KeyAccepted,
            ResponseKind::FileReceived,
        ] {
            d.reply(rev_resp(rev, kind));
            d.lose();
        }
        d.reply(rev_resp(rev, ResponseKind::Ack));
        assert!(d.outcome.as_ref().is_some_and(Outcome::is_success), "{rev}");
        assert_eq!(d.connects, 4, "{rev}");
        // The request cut off by each close went again on the new connection.
        let codes: Vec<u16> = d
            .take_sent()
            .iter()
            .map(|f| u16::from_le_bytes([f[17], f[18]]))
            .collect();
        let c = |k| rev.request_code(k).unwrap();
        use RequestKind as Q;
        assert_eq!(
            codes,
            [
                c(Q::Register),
                c(Q::PublicKey),
                c(Q::PublicKey),
                c(Q::SendFile),
                c(Q::SendFile),
                c(Q::CrcOk),
                c(Q::CrcOk)
            ],
            "{rev}"
        );
    }
}

#[test]
fn a_server_of_another_revision_is_named() {
    // (our revision, the server's frame, the revision it seems to speak)
    let cases = [
        (Revision::R2023c, Revision::R2024a, "2024a"),
        (Revision::R2024a, Revision::R2023c, "2023c"),
        (Revision::R2024c, Revision::R2023c, "2023c"),
        (Revision::R2023a, Revision::R2024c, "2024c"),
        (Revision::R2022c, Revision::R2024a, "2024c"),
    ];
    for (ours, theirs, named) in cases {
        let mut d = rev_driver(ours, None, PacketOptions::default());
        let mut reader = ResponseReader::new(ours);
        let code = theirs.response_code(ResponseKind::Registered).unwrap();
        let bytes = rev_vector(theirs, &format!("response_{code}.bin"));
        d.stream_from(&mut reader, &bytes);
        let Some(Outcome::ProtocolViolation(v)) = &d.outcome else {
            panic!("{ours}: {:?}", d.outcome)
        };
        assert!(
            matches!(v, Violation::ForeignRevision { code: c, ours: o, .. } if *c == code && *o == ours),
            "{v:?}"
        );
        let text = v.to_string();
        assert!(
            text.contains(&format!("seems to speak {named}")),
            "{ours}: {text}"
        );
        assert_eq!(
            d.outcome.as_ref().map(Outcome::name),
            Some("protocol_error")
        );
    }
}

#[test]
fn unexpected_responses_are_described_in_the_revisions_codes() {
    let rev = Revision::R2024c;
    let mut d = rev_driver(rev, None, PacketOptions::default());
    d.reply(rev_resp(rev, ResponseKind::Ack));
    let Some(Outcome::ProtocolViolation(v)) = &d.outcome else {
        panic!("{:?}", d.outcome)
    };
    assert_eq!(
        v.to_string(),
        "unexpected response 1604 (acknowledged) while awaiting 1600/1601 after 825"
    );
}

/// A 2103 for `name` with `cksum`, as the vector's client would get it.
fn file_received(name: &str, cksum: u32) -> Response {
    match resp("response_2103.bin") {
        Response::FileReceived {
            client_id,
            content_size,
            ..
        } => Response::FileReceived {
            client_id,
            content_size,
            file_name: FixedName::new(name.as_bytes()).unwrap(),
            cksum,
        },
        _ => unreachable!(),
    }
}

fn two_files(identity: Option<Identity>) -> Driver {
    let mut d = Driver::new(None);
    d.s = ClientSession::new(ClientConfig {
        files: ["a.bin", "b.bin"]
            .map(|name| FileSpec {
                name: name.into(),
                plain_len: 1000,
            })
            .to_vec(),
        ..config(identity)
    })
    .unwrap();
    d.take_sent();
    d.events.clear();
    d.connects = 0;
    d.pump();
    d
}

fn finished(d: &Driver) -> Vec<(usize, &'static str)> {
    d.events
        .iter()
        .filter_map(|e| match e {
            Event::FileFinished { file, outcome } => Some((*file, outcome.name())),
            _ => None,
        })
        .collect()
}

#[test]
fn several_files_go_in_one_session_on_one_connection() {
    let mut d = two_files(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    d.reply(file_received("a.bin", PLAIN_1000_CKSUM));
    d.reply(resp("response_2104.bin"));
    assert_eq!(d.outcome, None);
    d.reply(file_received("b.bin", PLAIN_1000_CKSUM));
    d.reply(resp("response_2104.bin"));
    assert!(matches!(d.outcome, Some(Outcome::Verified { .. })));
    assert_eq!(finished(&d), [(0, "verified"), (1, "verified")]);
    // One reconnect (1027), then for each file 1028 and 1029; one connection.
    let rev = Revision::R2023c;
    let codes: Vec<u16> = d
        .take_sent()
        .iter()
        .map(|f| u16::from_le_bytes([f[17], f[18]]))
        .collect();
    let code = |k| rev.request_code(k).unwrap();
    use RequestKind as Q;
    assert_eq!(
        codes,
        [
            code(Q::Reconnect),
            code(Q::SendFile),
            code(Q::CrcOk),
            code(Q::SendFile),
            code(Q::CrcOk)
        ]
    );
    assert_eq!(d.connects, 1);
}

#[test]
fn a_failed_file_does_not_stop_the_next_but_a_refusal_stops_all() {
    // File a fails its cksum four times; file b still goes and verifies.
    let mut d = two_files(Some(vector_identity()));
    d.reply(resp("response_2105.bin"));
    for _ in 0..MAX_SENDS {
        d.reply(file_received("a.bin", 1));
    }
    d.reply(resp("response_2104.bin"));
    assert_eq!(d.outcome, None);
    // The server closed after the 2104: b goes on a new connection.
    d.lose();
    d.reply(file_received("b.bin", PLAIN_1000_CKSUM));
    d.reply(resp("response_2104.bin"));
    assert_eq!(finished(&d), [(0, "crc_failed"), (1, "verified")]);
    assert_eq!(d.connects, 2);

    // A refused registration ends the session before any file.
    let mut d = two_files(None);
    d.reply(resp("response_2101.bin"));
    assert!(matches!(
        d.outcome,
        Some(Outcome::RegistrationFailed { .. })
    ));
    assert_eq!(finished(&d), []);
}

#[test]
fn every_file_is_checked_before_the_session_starts() {
    let files = vec![
        FileSpec {
            name: "ok.bin".into(),
            plain_len: 1,
        },
        FileSpec {
            name: "caf\u{e9}.bin".into(),
            plain_len: 1,
        },
    ];
    let r = ClientSession::new(ClientConfig {
        files,
        ..config(None)
    });
    assert_eq!(r.err(), Some(ConfigError::BadFileName));
    let r = ClientSession::new(ClientConfig {
        files: vec![],
        ..config(None)
    });
    assert_eq!(r.err(), Some(ConfigError::NoFiles));
}

#[test]
fn a_silent_server_gets_three_retries_not_the_whole_retry_for() {
    let mut d = Driver::new(None);
    for _ in 0..MAX_ERROR_RETRIES {
        d.s.handle_no_answer();
        d.pump();
        assert_eq!(d.outcome, None);
    }
    d.s.handle_no_answer();
    d.pump();
    assert_eq!(
        d.outcome,
        Some(Outcome::ConnectionFailed {
            request: RequestKind::Register
        })
    );
    assert!(waits(&d).iter().all(|w| *w == RETRY_DELAY));
}
