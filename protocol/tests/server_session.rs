//! ServerSession against the golden frames of fixtures/vectors, with the
//! in-memory store: exact responses, every split point, every malformed
//! frame, storage rules, timeouts and backpressure.

use std::time::{Duration, Instant};

mod common;

use common::{alice_id, vector, with_alice};

use sealdrop_protocol::consts::*;
use sealdrop_protocol::crypto::{AesKey, RsaPrivateKey, TestEntropy};
use sealdrop_protocol::error::Refusal;
use sealdrop_protocol::memstore::MemoryStore;
use sealdrop_protocol::server::{CloseReason, ServerConfig, ServerSession};
use sealdrop_protocol::store::{Durability, QuotaExceeded, QuotaLimit, Store, StoreError};
use sealdrop_protocol::RequestKind;
use sealdrop_protocol::{ClientId, Response, ResponseDecoder, Revision};

type Session = ServerSession<<MemoryStore as Store>::Upload>;

/// A store holding the vector client "alice" after key exchange, with the
/// vector AES key as her last key.
fn alice_store() -> MemoryStore {
    with_alice(MemoryStore::new())
}

struct Harness {
    session: Session,
    store: MemoryStore,
    rng: TestEntropy,
    now: Instant,
}

impl Harness {
    fn new(store: MemoryStore) -> Self {
        Self::with_config(store, ServerConfig::default())
    }

    fn with_config(store: MemoryStore, config: ServerConfig) -> Self {
        let now = Instant::now();
        Harness {
            session: ServerSession::new(config, 1, now),
            store,
            rng: TestEntropy::new(7),
            now,
        }
    }

    /// Feeds bytes in pieces of `split` and returns what the session wrote.
    fn feed_split(&mut self, bytes: &[u8], split: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in bytes.chunks(split.max(1)) {
            let mut input = piece;
            while !input.is_empty() && self.session.wants_input() {
                self.session
                    .handle_input(&mut input, self.now, &mut self.store, &mut self.rng);
                out.extend_from_slice(self.session.pending_output());
                let n = self.session.pending_output().len();
                self.session.consume_output(n, self.now);
            }
        }
        let mut empty: &[u8] = &[];
        self.session
            .handle_input(&mut empty, self.now, &mut self.store, &mut self.rng);
        out.extend_from_slice(self.session.pending_output());
        let n = self.session.pending_output().len();
        self.session.consume_output(n, self.now);
        out
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.feed_split(bytes, bytes.len())
    }
}

fn decode_responses(bytes: &[u8]) -> Vec<Response> {
    let mut d = ResponseDecoder::new(Revision::R2023c);
    let mut input = bytes;
    let mut out = Vec::new();
    while let Some(r) = d.decode(&mut input).expect("server output decodes") {
        out.push(r);
    }
    assert!(input.is_empty());
    out
}

#[test]
fn request_1028_gives_exactly_response_2103() {
    let mut h = Harness::new(alice_store());
    assert_eq!(
        h.feed(&vector("request_1028.bin")),
        vector("response_2103.bin")
    );
    assert_eq!(h.store.pending_count(), 1);
}

#[test]
fn request_1029_stores_the_file_verified_and_gives_exactly_2104() {
    let mut h = Harness::new(alice_store());
    h.feed(&vector("request_1028.bin"));
    let key = (alice_id(), "plain_1000.bin".to_string());
    assert!(
        !h.store.files[&key].verified,
        "unconfirmed upload must not be verified"
    );
    assert!(
        h.store.files[&key].bytes.is_empty(),
        "unconfirmed bytes must not be at the final path"
    );
    assert_eq!(
        h.feed(&vector("request_1029.bin")),
        vector("response_2104.bin")
    );
    assert!(h.store.files[&key].verified);
    assert_eq!(h.store.files[&key].bytes, vector("plain_1000.bin"));
    assert_eq!(h.store.pending_count(), 0);
}

#[test]
fn request_1031_gives_exactly_2104_and_stores_nothing() {
    let mut h = Harness::new(alice_store());
    h.feed(&vector("request_1028.bin"));
    assert_eq!(
        h.feed(&vector("request_1031.bin")),
        vector("response_2104.bin")
    );
    let key = (alice_id(), "plain_1000.bin".to_string());
    assert!(h.store.files[&key].bytes.is_empty());
    assert_eq!(h.store.pending_count(), 0);
}

#[test]
fn request_1030_gets_no_response_and_a_resend_can_be_verified() {
    let mut h = Harness::new(alice_store());
    h.feed(&vector("request_1028.bin"));
    assert_eq!(h.feed(&vector("request_1030.bin")), b"");
    assert_eq!(h.store.pending_count(), 0);
    assert_eq!(
        h.feed(&vector("request_1028.bin")),
        vector("response_2103.bin")
    );
    assert_eq!(
        h.feed(&vector("request_1029.bin")),
        vector("response_2104.bin")
    );
    let key = (alice_id(), "plain_1000.bin".to_string());
    assert_eq!(h.store.files[&key].bytes, vector("plain_1000.bin"));
}

#[test]
fn taken_name_gives_exactly_2101() {
    let mut h = Harness::new(alice_store());
    assert_eq!(
        h.feed(&vector("request_1025.bin")),
        vector("response_2101.bin")
    );
}

#[test]
fn unknown_id_reconnect_gives_exactly_2106() {
    let mut h = Harness::new(MemoryStore::new());
    assert_eq!(
        h.feed(&vector("request_1027.bin")),
        vector("response_2106.bin")
    );
}

#[test]
fn reconnect_gives_2105_with_a_key_the_client_can_decrypt() {
    let mut h = Harness::new(alice_store());
    let out = h.feed(&vector("request_1027.bin"));
    assert_eq!(&out[..23], &vector("response_2105.bin")[..23]);
    let Response::ReconnectAccepted { encrypted_key, .. } = &decode_responses(&out)[0] else {
        panic!("expected 2105");
    };
    let private = RsaPrivateKey::from_der(&vector("rsa1024_private_pkcs8.der")).unwrap();
    let key = private
        .decrypt_aes_key(&encrypted_key[..], &mut TestEntropy::new(1))
        .unwrap();
    assert_eq!(h.store.clients[&alice_id()].last_key.as_ref(), Some(&key));
}

/// Replaces the client id of a request frame.
fn with_id(mut frame: Vec<u8>, id: &ClientId) -> Vec<u8> {
    frame[..16].copy_from_slice(&id.0);
    frame
}

#[test]
fn new_client_registers_exchanges_keys_and_uploads_on_one_connection() {
    let mut h = Harness::new(MemoryStore::new());
    let out = decode_responses(&h.feed(&vector("request_1025.bin")));
    let [Response::Registered { client_id }] = &out[..] else {
        panic!("expected 2100, got {out:?}");
    };
    // UUIDv4 version and variant bits (§ vectors README: ids look like UUIDs).
    assert_eq!(client_id.0[6] >> 4, 4);
    assert_eq!(client_id.0[8] >> 6, 2);
    let out = decode_responses(&h.feed(&with_id(vector("request_1026.bin"), client_id)));
    let [Response::KeyAccepted { encrypted_key, .. }] = &out[..] else {
        panic!("expected 2102, got {out:?}");
    };
    let private = RsaPrivateKey::from_der(&vector("rsa1024_private_pkcs8.der")).unwrap();
    let aes = private
        .decrypt_aes_key(&encrypted_key[..], &mut TestEntropy::new(1))
        .unwrap();
    // Re-encrypt plain_1000 under the issued key and send it.
    let mut frame = vector("request_1028.bin")[..23 + 259].to_vec();
    frame[..16].copy_from_slice(&client_id.0);
    frame.extend(sealdrop_protocol::crypto::cbc_encrypt(
        &aes,
        &vector("plain_1000.bin"),
    ));
    let out = decode_responses(&h.feed(&frame));
    let [Response::FileReceived { cksum, .. }] = &out[..] else {
        panic!("expected 2103, got {out:?}");
    };
    assert_eq!(*cksum, 493196554);
    let out = decode_responses(&h.feed(&with_id(vector("request_1029.bin"), client_id)));
    assert_eq!(
        out,
        [Response::Ack {
            client_id: *client_id
        }]
    );
}

#[test]
fn every_split_point_gives_the_same_output() {
    let frames = [
        "request_1028.bin",
        "request_1029.bin",
        "request_1027.bin",
        "request_1025.bin",
    ];
    let stream: Vec<u8> = frames.iter().flat_map(|f| vector(f)).collect();
    let mut whole = Harness::new(alice_store());
    let expected = whole.feed(&stream);
    // 2103, 2104, 2105 (random key part), 2101
    assert_eq!(decode_responses(&expected).len(), 4);
    for split in [1, 2, 3, 7, 16, 22, 23, 24, 100, 255, 1289, 1290, 1291] {
        let mut h = Harness::new(alice_store());
        let got = h.feed_split(&stream, split);
        assert_eq!(got.len(), expected.len(), "split {split}");
        // Compare all but the random OAEP block of the 2105.
        let at = 286 + 23 + 23;
        assert_eq!(got[..at], expected[..at], "split {split}");
        assert_eq!(got[at + 128..], expected[at + 128..], "split {split}");
    }
    for cut in 1..vector("request_1028.bin").len() {
        let frame = vector("request_1028.bin");
        let mut h = Harness::new(alice_store());
        let mut out = h.feed(&frame[..cut]);
        out.extend(h.feed(&frame[cut..]));
        assert_eq!(out, vector("response_2103.bin"), "cut at {cut}");
    }
}

fn assert_error_and_close(frame: &[u8]) {
    let mut h = Harness::new(alice_store());
    assert_eq!(h.feed(frame), vector("response_2107.bin"));
    assert!(matches!(
        h.session.close_reason(),
        Some(CloseReason::Decode(_))
    ));
    assert!(h.session.is_finished());
    // Nothing more is read once framing is lost.
    assert!(!h.session.wants_input());
}

#[test]
fn malformed_vectors_get_2107_and_close() {
    for f in [
        "bad_1025_huge_payload.bin",
        "bad_1025_name_no_nul.bin",
        "bad_1028_size_mismatch.bin",
        "bad_1026_spki_e65537.bin",
    ] {
        assert_error_and_close(&vector(f));
    }
}

fn header(id: &ClientId, code: u16, size: u32) -> Vec<u8> {
    let mut h = id.0.to_vec();
    h.push(3);
    h.extend_from_slice(&code.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h
}

#[test]
fn unknown_codes_and_wrong_sizes_for_every_code_get_2107_and_close() {
    for code in [0u16, 1024, 1032, 2100, 65535] {
        assert_error_and_close(&header(&alice_id(), code, 255));
    }
    for code in [1025u16, 1027, 1029, 1030, 1031] {
        for size in [0, 254, 256, 415, u32::MAX] {
            assert_error_and_close(&header(&alice_id(), code, size));
        }
    }
    for size in [0, 255, 414, 416, u32::MAX] {
        assert_error_and_close(&header(&alice_id(), 1026, size));
    }
    for size in [0, 258, 259, 260, 259 + 15, u32::MAX] {
        assert_error_and_close(&header(&alice_id(), 1028, size));
    }
}

#[test]
fn short_header_then_eof_closes_without_reply() {
    let mut h = Harness::new(alice_store());
    assert_eq!(h.feed(&vector("bad_short_header.bin")), b"");
    h.session.handle_eof(&mut h.store);
    assert_eq!(
        h.session.close_reason(),
        Some(CloseReason::PeerClosedMidFrame)
    );
    assert!(h.session.is_finished());
}

#[test]
fn zero_key_gets_2107_and_the_connection_stays_open() {
    let mut h = Harness::new(alice_store());
    assert_eq!(
        h.feed(&vector("bad_1026_not_a_key.bin")),
        vector("response_2107.bin")
    );
    assert!(h.session.wants_input());
    assert_eq!(h.feed(&vector("request_1027.bin")).len(), 151);
}

#[test]
fn file_from_unknown_client_is_drained_then_refused_and_connection_stays() {
    let mut h = Harness::new(MemoryStore::new());
    assert_eq!(
        h.feed(&vector("request_1028.bin")),
        vector("response_2107.bin")
    );
    assert!(h.session.wants_input());
    assert_eq!(h.store.open_uploads, 0);
    assert_eq!(
        h.feed(&vector("request_1027.bin")),
        vector("response_2106.bin")
    );
}

#[test]
fn requests_out_of_order_get_2107() {
    // Verdict with nothing pending, 1026 from an unknown id, a file before
    // any key exchange.
    let mut h = Harness::new(alice_store());
    assert_eq!(
        h.feed(&vector("request_1029.bin")),
        vector("response_2107.bin")
    );
    assert_eq!(
        h.feed(&vector("request_1031.bin")),
        vector("response_2107.bin")
    );
    let mut h = Harness::new(MemoryStore::new());
    assert_eq!(
        h.feed(&vector("request_1026.bin")),
        vector("response_2107.bin")
    );
    let mut store = alice_store();
    store.clients.get_mut(&alice_id()).unwrap().last_key = None;
    let mut h = Harness::new(store);
    assert_eq!(
        h.feed(&vector("request_1028.bin")),
        vector("response_2107.bin")
    );
}

#[test]
fn bad_padding_gets_2107_and_keeps_nothing() {
    let mut frame = vector("request_1028.bin");
    *frame.last_mut().unwrap() ^= 0x55;
    let mut h = Harness::new(alice_store());
    assert_eq!(h.feed(&frame), vector("response_2107.bin"));
    assert_eq!(h.store.pending_count(), 0);
    assert_eq!(h.store.open_uploads, 0);
    assert!(h.session.wants_input());
}

#[test]
fn disk_full_gets_2107_and_an_earlier_verified_file_is_intact() {
    let mut h = Harness::new(alice_store());
    h.feed(&vector("request_1028.bin"));
    h.feed(&vector("request_1029.bin"));
    h.store.fail_writes = true;
    assert_eq!(
        h.feed(&vector("request_1028.bin")),
        vector("response_2107.bin")
    );
    h.store.fail_writes = false;
    let key = (alice_id(), "plain_1000.bin".to_string());
    assert!(h.store.files[&key].verified);
    assert_eq!(h.store.files[&key].bytes, vector("plain_1000.bin"));
    assert_eq!(h.store.open_uploads, 0);
}

#[test]
fn database_error_gets_2107_and_the_connection_stays() {
    let mut h = Harness::new(alice_store());
    h.store.fail_db = true;
    assert_eq!(
        h.feed(&vector("request_1027.bin")),
        vector("response_2107.bin")
    );
    h.store.fail_db = false;
    assert_eq!(h.feed(&vector("request_1027.bin")).len(), 151);
}

#[test]
fn unconfirmed_upload_never_replaces_a_verified_file() {
    let mut h = Harness::new(alice_store());
    h.feed(&vector("request_1028.bin"));
    h.feed(&vector("request_1029.bin"));
    // A second upload of the same name, different content, then 1031.
    let aes = AesKey::from_slice(&vector("aes_key.bin")).unwrap();
    let mut frame = vector("request_1028.bin")[..23 + 259].to_vec();
    frame.extend(sealdrop_protocol::crypto::cbc_encrypt(&aes, &[b'x'; 1000]));
    h.feed(&frame);
    h.feed(&vector("request_1031.bin"));
    // And one more that is simply abandoned by closing the connection.
    h.feed(&frame);
    h.session.close(h.now, &mut h.store);
    let key = (alice_id(), "plain_1000.bin".to_string());
    assert_eq!(h.store.files[&key].bytes, vector("plain_1000.bin"));
    assert!(h.store.files[&key].verified);
    assert_eq!(h.store.orphan_count(), 1);
}

#[test]
fn upload_cut_short_by_eof_is_aborted() {
    let frame = vector("request_1028.bin");
    let mut h = Harness::new(alice_store());
    h.feed(&frame[..600]);
    assert_eq!(h.store.open_uploads, 1);
    h.session.handle_eof(&mut h.store);
    h.session.close(h.now, &mut h.store);
    assert_eq!(h.store.open_uploads, 0);
    assert_eq!(h.store.pending_count(), 0);
}

#[test]
fn unkeyed_name_is_released_to_a_new_registration() {
    let mut store = alice_store();
    store.clients.get_mut(&alice_id()).unwrap().public_key = None;
    let mut h = Harness::new(store);
    let out = decode_responses(&h.feed(&vector("request_1025.bin")));
    let [Response::Registered { client_id }] = &out[..] else {
        panic!("expected 2100, got {out:?}");
    };
    assert_ne!(*client_id, alice_id());
    assert!(!h.store.clients.contains_key(&alice_id()));
}

#[test]
fn file_names_are_reduced_to_base_names_and_bad_ones_refused() {
    let aes = AesKey::from_slice(&vector("aes_key.bin")).unwrap();
    let content = sealdrop_protocol::crypto::cbc_encrypt(&aes, b"hello");
    let frame_for = |name: &[u8]| {
        let mut f = header(&alice_id(), 1028, (259 + content.len()) as u32);
        f.extend_from_slice(&(content.len() as u32).to_le_bytes());
        let mut field = [0u8; NAME_LEN];
        field[..name.len()].copy_from_slice(name);
        f.extend_from_slice(&field);
        f.extend_from_slice(&content);
        f
    };
    let mut h = Harness::new(alice_store());
    let out = decode_responses(&h.feed(&frame_for(b"..\\..\\windows\\evil.txt")));
    assert!(matches!(out[..], [Response::FileReceived { .. }]));
    assert!(h
        .store
        .files
        .contains_key(&(alice_id(), "evil.txt".to_string())));
    for bad in [
        &b"../.."[..],
        b"a/",
        b"",
        b"tab\tname",
        b"bell\x07",
        "é".as_bytes(),
    ] {
        let out = h.feed(&frame_for(bad));
        assert_eq!(out, vector("response_2107.bin"), "name {bad:?}");
        assert!(h.session.wants_input());
    }
}

#[test]
fn half_header_times_out() {
    let mut h = Harness::new(alice_store());
    h.feed(&vector("request_1027.bin")[..10]);
    let deadline = h.session.poll_timeout().unwrap();
    assert_eq!(deadline, h.now + Duration::from_secs(10));
    h.session
        .handle_timeout(deadline - Duration::from_millis(1), &mut h.store);
    assert!(h.session.close_reason().is_none());
    h.session.handle_timeout(deadline, &mut h.store);
    assert_eq!(h.session.close_reason(), Some(CloseReason::HeaderTimeout));
}

#[test]
fn idle_connection_times_out() {
    let mut h = Harness::new(alice_store());
    let deadline = h.session.poll_timeout().unwrap();
    assert_eq!(deadline, h.now + Duration::from_secs(120));
    h.session.handle_timeout(deadline, &mut h.store);
    assert_eq!(h.session.close_reason(), Some(CloseReason::IdleTimeout));
}

#[test]
fn trickling_upload_is_closed_as_too_slow() {
    let frame = vector("request_1028.bin");
    let config = ServerConfig {
        min_progress_bytes: 512,
        ..ServerConfig::default()
    };
    let mut h = Harness::with_config(alice_store(), config);
    h.feed(&frame[..300]);
    // One byte a second: never 512 bytes in a 10 s window.
    for i in 0..30 {
        h.now += Duration::from_secs(1);
        h.feed(&frame[300 + i..301 + i]);
        h.session.handle_timeout(h.now, &mut h.store);
    }
    assert_eq!(h.session.close_reason(), Some(CloseReason::TooSlow));
    h.session.close(h.now, &mut h.store);
    assert_eq!(h.store.open_uploads, 0);
}

#[test]
fn fast_enough_upload_is_not_closed() {
    let frame = vector("request_1028.bin");
    let config = ServerConfig {
        min_progress_bytes: 100,
        ..ServerConfig::default()
    };
    let mut h = Harness::with_config(alice_store(), config);
    let mut out = h.feed(&frame[..300]);
    for piece in frame[300..].chunks(101) {
        h.now += Duration::from_secs(5);
        out.extend(h.feed(piece));
        h.session.handle_timeout(h.now, &mut h.store);
        assert_eq!(h.session.close_reason(), None);
    }
    assert_eq!(out, vector("response_2103.bin"));
}

#[test]
fn peer_that_never_reads_is_backpressured_not_buffered() {
    let config = ServerConfig {
        max_output: 1024,
        ..ServerConfig::default()
    };
    let now = Instant::now();
    let mut session: Session = ServerSession::new(config, 1, now);
    let mut store = alice_store();
    let mut rng = TestEntropy::new(3);
    let burst: Vec<u8> = (0..1000).flat_map(|_| vector("request_1025.bin")).collect();
    let mut input = &burst[..];
    for _ in 0..100 {
        session.handle_input(&mut input, now, &mut store, &mut rng);
    }
    assert!(!session.wants_input());
    assert!(session.pending_output().len() < 1024 + 16);
    assert!(
        !input.is_empty(),
        "input must be left for later, not buffered"
    );
    // The stalled writer is closed after the idle timeout.
    session.handle_timeout(now + Duration::from_secs(120), &mut store);
    assert_eq!(session.close_reason(), Some(CloseReason::WriteStalled));
}

#[test]
fn last_seen_is_touched_on_requests_from_known_clients() {
    let mut h = Harness::new(alice_store());
    h.feed(&vector("request_1027.bin"));
    h.feed(&vector("request_1028.bin"));
    h.feed(&vector("request_1029.bin"));
    assert!(h.store.touches >= 3);
}

#[test]
fn pipelined_requests_restart_the_header_deadline() {
    // Each read ends inside a frame, but every read also completes one:
    // the client is making progress and must not hit the header deadline.
    let frame = vector("request_1027.bin");
    let mut h = Harness::new(alice_store());
    h.feed(&frame[..10]);
    for _ in 0..100 {
        h.now += Duration::from_secs(3);
        let mut piece = frame[10..].to_vec();
        piece.extend_from_slice(&frame[..10]);
        assert_eq!(h.feed(&piece).len(), 151);
        h.session.handle_timeout(h.now, &mut h.store);
        assert_eq!(h.session.close_reason(), None);
    }
}

#[test]
fn bad_padding_under_the_stored_key_retires_it() {
    // The padding oracle: anyone can send a 1028 under a known id on a
    // connection that exchanged no key. One wrong padding retires the
    // stored key, so the good frame under the old key now fails too.
    let mut frame = vector("request_1028.bin");
    *frame.last_mut().unwrap() ^= 0x55;
    let mut h = Harness::new(alice_store());
    assert_eq!(h.feed(&frame), vector("response_2107.bin"));
    let old = AesKey::from_slice(&vector("aes_key.bin"));
    assert_ne!(h.store.clients[&alice_id()].last_key, old);
    let mut other = Harness::new(h.store);
    assert_eq!(
        other.feed(&vector("request_1028.bin")),
        vector("response_2107.bin")
    );
}

#[test]
fn bad_padding_under_the_connections_own_key_keeps_the_stored_key() {
    let mut h = Harness::new(alice_store());
    let out = decode_responses(&h.feed(&vector("request_1027.bin")));
    let [Response::ReconnectAccepted { .. }] = &out[..] else {
        panic!("expected 2105, got {out:?}");
    };
    let stored = h.store.clients[&alice_id()].last_key.clone();
    // The vector frame is encrypted under the vector key, not this
    // connection's new key: its padding fails, but no oracle is possible.
    let out = h.feed(&vector("request_1028.bin"));
    assert_eq!(out, vector("response_2107.bin"));
    assert_eq!(h.store.clients[&alice_id()].last_key, stored);
}

/// The group-commit contract: an answer produced while the store has
/// uncommitted changes is held until the commit's outcome; a durable
/// commit releases it, a failed one withdraws it for one 2107 and a close,
/// and what was released before stays.
#[test]
fn held_answers_wait_for_the_commit_and_a_failed_commit_turns_them_into_one_2107() {
    let mut store = alice_store();
    store.group_commit = true;
    let mut h = Harness::new(store);
    let mut input = &vector("request_1028.bin")[..];
    h.session
        .handle_input(&mut input, h.now, &mut h.store, &mut h.rng);
    assert!(input.is_empty());
    assert!(h.store.uncommitted());
    assert!(h.session.holds_output());
    assert!(h.session.pending_output().is_empty(), "2103 held");
    assert!(!h.session.is_finished());
    let commit = h.store.commit(h.now);
    h.session
        .handle_commit(commit.outcome(h.session.conn()), &mut h.store);
    assert!(!h.session.holds_output());
    assert_eq!(h.session.pending_output(), &vector("response_2103.bin")[..]);
    // The 1029 accepts; its commit fails: the 2104 never comes out.
    let mut input = &vector("request_1029.bin")[..];
    h.session
        .handle_input(&mut input, h.now, &mut h.store, &mut h.rng);
    assert_eq!(h.session.pending_output(), &vector("response_2103.bin")[..]);
    h.store.fail_commit = true;
    let commit = h.store.commit(h.now);
    assert_eq!(commit.outcome(h.session.conn()), Durability::Failed);
    h.session
        .handle_commit(commit.outcome(h.session.conn()), &mut h.store);
    let mut expected = vector("response_2103.bin");
    let mut error = Vec::new();
    Response::GeneralError.encode(Revision::R2023c, &mut error);
    expected.extend_from_slice(&error);
    assert_eq!(h.session.pending_output(), &expected[..]);
    assert_eq!(h.session.close_reason(), Some(CloseReason::NotDurable));
    assert!(!h.session.wants_input());
    assert!(!h.session.is_finished(), "the 2107 is still to be written");
    let n = h.session.pending_output().len();
    h.session.consume_output(n, h.now);
    assert!(h.session.is_finished());
    // Nothing the withdrawn answer claimed is stored; the upload waits
    // (orphaned) for a retried 1029.
    let key = (alice_id(), "plain_1000.bin".to_string());
    assert!(!h.store.files[&key].verified);
    assert_eq!(h.store.pending_count(), 1);
}

/// A shared database may refuse an accepted upload when it commits (its
/// client forgotten, its name deleted, its quota passed through other
/// servers): the 2104 never comes out, the 1029 is answered 2107 and
/// counted as a refusal with the store's reason, the session closes, and
/// nothing is stored or left pending.
#[test]
fn an_upload_the_store_refuses_at_its_commit_is_answered_as_a_refusal_and_discarded() {
    let mut store = alice_store();
    store.group_commit = true;
    let mut h = Harness::new(store);
    let mut input = &vector("request_1028.bin")[..];
    h.session
        .handle_input(&mut input, h.now, &mut h.store, &mut h.rng);
    let commit = h.store.commit(h.now);
    h.session.handle_commit_of(&commit, &mut h.store);
    let n = h.session.pending_output().len();
    h.session.consume_output(n, h.now);
    while h.session.poll_event().is_some() {}
    let mut input = &vector("request_1029.bin")[..];
    h.session
        .handle_input(&mut input, h.now, &mut h.store, &mut h.rng);
    assert!(h.session.holds_output(), "2104 held");
    let quota = QuotaExceeded {
        limit: QuotaLimit::Files,
        max: 1,
        would_be: 2,
    };
    h.store.refuse_commit_for = vec![(h.session.conn(), StoreError::OverQuota(quota))];
    let commit = h.store.commit(h.now);
    assert_eq!(commit.outcome(h.session.conn()), Durability::Failed);
    h.session.handle_commit_of(&commit, &mut h.store);
    let mut error = Vec::new();
    Response::GeneralError.encode(Revision::R2023c, &mut error);
    assert_eq!(h.session.pending_output(), &error[..]);
    assert_eq!(h.session.close_reason(), Some(CloseReason::RefusedAtCommit));
    let mut refusals = Vec::new();
    while let Some(e) = h.session.poll_event() {
        if let sealdrop_protocol::ServerEvent::Refused {
            kind,
            client_id,
            reason,
        } = e
        {
            refusals.push((kind, client_id, reason));
        }
    }
    assert_eq!(
        refusals,
        [(RequestKind::CrcOk, alice_id(), Refusal::OverQuota(quota))]
    );
    let key = (alice_id(), "plain_1000.bin".to_string());
    assert!(h.store.files.get(&key).is_none_or(|f| !f.verified));
    assert_eq!(h.store.pending_count(), 0, "discarded, not pending again");
}

#[test]
fn a_commit_that_fails_for_another_connection_releases_this_ones_answers() {
    let mut store = alice_store();
    store.group_commit = true;
    let mut h = Harness::new(store);
    h.store.fail_commit_for = vec![h.session.conn() + 1];
    let mut input = &vector("request_1027.bin")[..];
    h.session
        .handle_input(&mut input, h.now, &mut h.store, &mut h.rng);
    assert!(h.session.holds_output());
    let commit = h.store.commit(h.now);
    h.session
        .handle_commit(commit.outcome(h.session.conn()), &mut h.store);
    let out = decode_responses(h.session.pending_output());
    assert!(
        matches!(&out[..], [Response::ReconnectAccepted { .. }]),
        "{out:?}"
    );
    assert_eq!(h.session.close_reason(), None);
}

#[test]
fn answers_made_while_nothing_waits_for_a_commit_go_out_at_once() {
    let mut store = alice_store();
    store.group_commit = true;
    let mut h = Harness::new(store);
    // A malformed frame changes nothing in the store.
    let mut input: &[u8] = &[0u8; 23];
    h.session
        .handle_input(&mut input, h.now, &mut h.store, &mut h.rng);
    assert!(!h.store.uncommitted());
    assert!(!h.session.holds_output());
    let mut error = Vec::new();
    Response::GeneralError.encode(Revision::R2023c, &mut error);
    assert_eq!(h.session.pending_output(), &error[..]);
}

/// The `replaced` flag of every verdict event so far.
fn verdicts_replaced(h: &mut Harness) -> Vec<bool> {
    let mut out = Vec::new();
    while let Some(e) = h.session.poll_event() {
        if let sealdrop_protocol::ServerEvent::Verdict { replaced, .. } = e {
            out.push(replaced);
        }
    }
    out
}

#[test]
fn a_second_verified_upload_of_a_name_is_reported_as_a_replacement() {
    let mut h = Harness::new(alice_store());
    h.feed(&vector("request_1028.bin"));
    h.feed(&vector("request_1029.bin"));
    assert_eq!(verdicts_replaced(&mut h), [false]);
    h.feed(&vector("request_1028.bin"));
    assert_eq!(
        h.feed(&vector("request_1029.bin")),
        vector("response_2104.bin")
    );
    assert_eq!(verdicts_replaced(&mut h), [true]);
}
