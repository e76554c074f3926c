//! ServerSession in every revision, against each revision's golden frames
//! (fixtures/vectors/<revision>/) with the in-memory store: exact answers,
//! revision detection on an auto connection, the 2022c way of refusing
//! (close without a word), and the 2024 packet path in every variant a
//! public client sends (PROTOCOL.md §9.1): split or each, sizes of the
//! whole file or of the packet, numbered from 0 or 1, total first, one
//! packet, an empty file, an exactly full last packet; bad sequences get
//! the revision's error and leave nothing stored; any split of the byte
//! stream gives the same result. A quota refusal and an administrator's
//! withdrawal get the revision's error answer too. A 2024 upload refused
//! before its last packet gets exactly one answer: its later packets are
//! dropped unanswered, and the next upload is served.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use sealdrop_protocol::consts::*;
use sealdrop_protocol::crypto::{cbc_encrypt, AesKey, RsaPrivateKey, TestEntropy};
use sealdrop_protocol::decode::RevisionChoice;
use sealdrop_protocol::memstore::MemoryStore;
use sealdrop_protocol::message::{
    encode_packet_header, PacketHeader, Request, RequestKind, ResponseKind,
};
use sealdrop_protocol::server::{CloseReason, ServerConfig, ServerEvent, ServerSession};
use sealdrop_protocol::store::{ClientRecord, Ctx, Quota, Store};
use sealdrop_protocol::{ClientId, FixedName, Response, ResponseDecoder, Revision};

type Session = ServerSession<<MemoryStore as Store>::Upload>;

fn vector(dir: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../fixtures/vectors/{dir}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn alice() -> ClientId {
    ClientId(vector(".", "client_id.bin").try_into().unwrap())
}

/// The AES key of a revision's vectors.
fn key_of(rev: Revision) -> AesKey {
    let dir = if rev.aes_key_len() == 32 {
        rev.name()
    } else {
        "."
    };
    AesKey::from_slice(&vector(dir, "aes_key.bin")).unwrap()
}

/// A store holding "alice" after key exchange, with the revision's
/// vector key as her last key.
fn alice_store(rev: Revision) -> MemoryStore {
    let mut store = MemoryStore::new();
    let spki: [u8; PUBLIC_KEY_LEN] = vector(".", "rsa1024_public_spki.der").try_into().unwrap();
    store.clients.insert(
        alice(),
        ClientRecord {
            id: alice(),
            name: "alice".into(),
            public_key: Some(Box::new(spki)),
            last_key: Some(key_of(rev)),
        },
    );
    store
}

struct Harness {
    session: Session,
    store: MemoryStore,
    rng: TestEntropy,
    now: Instant,
}

impl Harness {
    fn new(choice: RevisionChoice, store: MemoryStore) -> Self {
        let config = ServerConfig {
            revision: choice,
            ..ServerConfig::default()
        };
        let now = Instant::now();
        Harness {
            session: ServerSession::new(config, 1, now),
            store,
            rng: TestEntropy::new(11),
            now,
        }
    }

    fn fixed(rev: Revision) -> Self {
        Self::new(RevisionChoice::Fixed(rev), alice_store(rev))
    }

    /// Feeds bytes in pieces of `split`; returns what the session wrote.
    fn feed_split(&mut self, bytes: &[u8], split: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in bytes.chunks(split.max(1)) {
            let mut input = piece;
            while !input.is_empty() && self.session.wants_input() {
                self.session
                    .handle_input(&mut input, self.now, &mut self.store, &mut self.rng);
                let n = self.session.pending_output().len();
                out.extend_from_slice(self.session.pending_output());
                self.session.consume_output(n, self.now);
            }
        }
        out
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.feed_split(bytes, bytes.len())
    }

    fn events(&mut self) -> Vec<ServerEvent> {
        std::iter::from_fn(|| self.session.poll_event()).collect()
    }

    fn stored(&self, name: &str) -> Option<(Vec<u8>, bool)> {
        self.store
            .files
            .get(&(alice(), name.to_owned()))
            .map(|f| (f.bytes.clone(), f.verified))
    }
}

fn code(rev: Revision, kind: RequestKind) -> u16 {
    rev.request_code(kind).unwrap()
}

/// The whole file message of a revision's vectors.
fn file_frames(rev: Revision) -> Vec<u8> {
    let c = code(rev, RequestKind::SendFile);
    if rev.file_layout() == sealdrop_protocol::revision::FileLayout::Packets {
        let mut v = vector(rev.name(), &format!("request_{c}_packet1.bin"));
        v.extend(vector(rev.name(), &format!("request_{c}_packet2.bin")));
        v
    } else {
        vector(rev.name(), &format!("request_{c}.bin"))
    }
}

fn response(rev: Revision, offset: u16) -> Vec<u8> {
    let c = rev.spec().response_base + offset;
    vector(rev.name(), &format!("response_{c}.bin"))
}

#[test]
fn every_revisions_file_and_verdicts_give_exactly_its_vector_answers() {
    for rev in Revision::ALL {
        let mut h = Harness::fixed(rev);
        assert_eq!(
            h.feed(&file_frames(rev)),
            response(rev, 3),
            "{rev} file received"
        );
        let ok = vector(
            rev.name(),
            &format!("request_{}.bin", code(rev, RequestKind::CrcOk)),
        );
        assert_eq!(h.feed(&ok), response(rev, 4), "{rev} ack");
        assert_eq!(
            h.stored("plain_1000.bin"),
            Some((vector(".", "plain_1000.bin"), true)),
            "{rev}"
        );
        // 1030 then the file again, then give up: nothing replaces it.
        let bad = vector(
            rev.name(),
            &format!("request_{}.bin", code(rev, RequestKind::CrcBad)),
        );
        let give_up = vector(
            rev.name(),
            &format!("request_{}.bin", code(rev, RequestKind::CrcGiveUp)),
        );
        assert_eq!(h.feed(&file_frames(rev)), response(rev, 3), "{rev}");
        assert!(h.feed(&bad).is_empty(), "{rev}: no answer to CRC bad");
        assert_eq!(h.feed(&file_frames(rev)), response(rev, 3), "{rev} resent");
        assert_eq!(h.feed(&give_up), response(rev, 4), "{rev} give up");
        assert_eq!(h.store.pending_count(), 0, "{rev}");
        assert_eq!(h.session.close_reason(), None, "{rev}");
    }
}

#[test]
fn key_exchange_and_reconnect_answer_in_the_revisions_codes_with_its_key_size() {
    let private = RsaPrivateKey::from_pkcs8_der(&vector(".", "rsa1024_private_pkcs8.der")).unwrap();
    for rev in Revision::ALL {
        let mut store = alice_store(rev);
        store.clients.get_mut(&alice()).unwrap().public_key = None;
        let mut h = Harness::new(RevisionChoice::Fixed(rev), store);
        let key_req = vector(
            rev.name(),
            &format!("request_{}.bin", code(rev, RequestKind::PublicKey)),
        );
        let out = h.feed(&key_req);
        assert_eq!(
            out[..23],
            response(rev, 2)[..23],
            "{rev} key response header"
        );
        let key = private
            .decrypt_aes_key(&out[23..151], &mut TestEntropy::new(5))
            .unwrap();
        assert_eq!(key.as_bytes().len(), rev.aes_key_len(), "{rev}");
        if let Some(c) = rev.request_code(RequestKind::Reconnect) {
            let out = h.feed(&vector(rev.name(), &format!("request_{c}.bin")));
            assert_eq!(out[..23], response(rev, 5)[..23], "{rev} reconnect header");
        }
    }
}

/// §9: a returning 2022c client has no reconnect; it sends its key again
/// and gets a fresh 2102.
#[test]
fn a_returning_2022c_client_sends_its_key_again() {
    let mut h = Harness::fixed(Revision::R2022c);
    let out = h.feed(&vector("2022c", "request_1101.bin"));
    assert_eq!(out[..23], response(Revision::R2022c, 2)[..23]);
    // Then its file under the new key works (the vector file is under the
    // old key, so here: a new connection using the stored last key).
    assert_eq!(h.session.close_reason(), None);
}

#[test]
fn auto_connections_take_the_revision_of_their_first_request() {
    let cases = [
        (Revision::R2023c, Revision::R2023c),
        (Revision::R2024a, Revision::R2023c),
        (Revision::R2023c, Revision::R2024a),
        (Revision::R2024a, Revision::R2024a),
    ];
    for rev in Revision::ALL {
        for (_, range_1025) in cases {
            let spoken = match rev {
                Revision::R2023c | Revision::R2024a => range_1025,
                other => other,
            };
            if spoken != rev {
                continue;
            }
            let mut h = Harness::new(RevisionChoice::Auto { range_1025 }, alice_store(rev));
            assert_eq!(
                h.feed(&file_frames(rev)),
                response(rev, 3),
                "{rev} via auto"
            );
            assert!(
                h.events()
                    .contains(&ServerEvent::RevisionDetected { revision: rev }),
                "{rev}"
            );
            assert_eq!(h.session.answer_revision(), rev);
        }
    }
}

#[test]
fn the_2022c_2023a_pair_is_told_apart_at_the_file_or_verdict() {
    for rev in [Revision::R2022c, Revision::R2023a] {
        // Undecided after a key exchange request: answered in 2022c terms.
        let mut store = alice_store(rev);
        store.clients.get_mut(&alice()).unwrap().public_key = None;
        let mut h = Harness::new(
            RevisionChoice::Auto {
                range_1025: Revision::R2023c,
            },
            store,
        );
        let out = h.feed(&vector(rev.name(), "request_1101.bin"));
        assert_eq!(out[..23], response(rev, 2)[..23]);
        assert!(h
            .events()
            .iter()
            .all(|e| !matches!(e, ServerEvent::RevisionDetected { .. })));
        // A fresh connection: the 1103 decides.
        let mut h = Harness::new(
            RevisionChoice::Auto {
                range_1025: Revision::R2023c,
            },
            alice_store(rev),
        );
        assert_eq!(h.feed(&file_frames(rev)), response(rev, 3), "{rev}");
        assert_eq!(h.session.answer_revision(), rev);
        // And a verdict alone decides too.
        let mut h = Harness::new(
            RevisionChoice::Auto {
                range_1025: Revision::R2023c,
            },
            alice_store(rev),
        );
        let ok = vector(rev.name(), "request_1104.bin");
        h.feed(&ok);
        assert_eq!(h.session.answer_revision(), rev);
    }
    // 1102 exists only in 2023a.
    let mut h = Harness::new(
        RevisionChoice::Auto {
            range_1025: Revision::R2023c,
        },
        alice_store(Revision::R2023a),
    );
    let out = h.feed(&vector("2023a", "request_1102.bin"));
    assert_eq!(out[..23], response(Revision::R2023a, 5)[..23]);
}

/// A connection's revision comes from its listener and its own bytes,
/// never from what the client spoke before (docs/protocol.md, "No
/// revision memory per client"): a client whose last key was a 2024a one
/// (32 bytes) reconnecting on an untagged listener is answered in 2023c
/// with a 16-byte key, on a `=2024a` listener in 2024a with a 32-byte
/// key, and back on the untagged one in 2023c again.
#[test]
fn the_revision_comes_from_the_listener_not_from_the_clients_history() {
    let private = RsaPrivateKey::from_pkcs8_der(&vector(".", "rsa1024_private_pkcs8.der")).unwrap();
    let mut store = alice_store(Revision::R2024a);
    for (range_1025, want) in [
        (Revision::R2023c, Revision::R2023c),
        (Revision::R2024a, Revision::R2024a),
        (Revision::R2023c, Revision::R2023c),
    ] {
        let last = store.clients[&alice()].last_key.clone().unwrap();
        let mut h = Harness::new(RevisionChoice::Auto { range_1025 }, store);
        let out = h.feed(&vector(".", "request_1027.bin"));
        assert_eq!(out[..23], response(want, 5)[..23], "{range_1025} listener");
        let key = private
            .decrypt_aes_key(&out[23..151], &mut TestEntropy::new(5))
            .unwrap();
        assert_eq!(key.as_bytes().len(), want.aes_key_len(), "{range_1025}");
        // Each time the client's last key was of the other size.
        assert_ne!(last.as_bytes().len(), key.as_bytes().len(), "{range_1025}");
        assert_eq!(h.session.answer_revision(), want);
        store = h.store;
    }
}

/// Panics unless `out` is the revision's error answer to an upload: 2107
/// (1607 in 2024a/c), or in 2022c, which has none, nothing and a close.
fn assert_error_answer(rev: Revision, h: &Harness, out: &[u8], what: &str) {
    if !rev.has_response(ResponseKind::GeneralError) {
        assert!(out.is_empty(), "{rev} {what}: {out:?}");
        assert_eq!(
            h.session.close_reason(),
            Some(CloseReason::NoErrorResponse),
            "{rev} {what}"
        );
    } else {
        assert_eq!(out, response(rev, 7), "{rev} {what}");
    }
}

/// An upload over the client's quota, and one whose client an
/// administrator forgets while its content arrives, end in the revision's
/// error answer in every revision (the 2024 packets included), with nothing
/// stored and no upload left open or pending.
#[test]
fn quota_refusals_and_withdrawals_get_every_revisions_error_answer() {
    for rev in Revision::ALL {
        let frames = file_frames(rev);

        // A quota of no files at all: refused, nothing written.
        let mut store = alice_store(rev);
        store.quota = Quota {
            max_bytes: None,
            max_files: Some(0),
        };
        let mut h = Harness::new(RevisionChoice::Fixed(rev), store);
        let out = h.feed(&frames);
        assert_error_answer(rev, &h, &out, "over quota");
        assert!(h.store.files.is_empty(), "{rev} over quota");
        assert_eq!(h.store.open_uploads, 0, "{rev} over quota");
        assert_eq!(h.store.pending_count(), 0, "{rev} over quota");

        // Forgotten ten bytes before the end of the content.
        let mut h = Harness::fixed(rev);
        let cut = frames.len() - 10;
        assert!(h.feed(&frames[..cut]).is_empty(), "{rev}");
        assert_eq!(h.store.open_uploads, 1, "{rev}");
        let cx = Ctx {
            conn: 0,
            now: h.now,
        };
        let done = h.store.forget_client(cx, &alice(), false).unwrap();
        assert_eq!(done.uploads_withdrawn, 1, "{rev}");
        let out = h.feed(&frames[cut..]);
        assert_error_answer(rev, &h, &out, "withdrawn");
        assert!(h.store.files.is_empty(), "{rev} withdrawn");
        assert_eq!(h.store.open_uploads, 0, "{rev} withdrawn");
        assert_eq!(h.store.pending_count(), 0, "{rev} withdrawn");
    }
}

/// 2022c has no 2107: a request the server cannot serve closes the
/// connection without a word; an undecided 2022c/2023a connection too.
#[test]
fn a_refused_2022c_request_closes_without_an_answer() {
    let mut h = Harness::new(RevisionChoice::Fixed(Revision::R2022c), MemoryStore::new());
    // 1104 from an unknown client.
    let out = h.feed(&vector("2022c", "request_1104.bin"));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.session.close_reason(), Some(CloseReason::NoErrorResponse));
    assert!(h.session.is_finished());
    // 2023a answers the same with 2107 and stays.
    let mut h = Harness::new(RevisionChoice::Fixed(Revision::R2023a), MemoryStore::new());
    let out = h.feed(&vector("2023a", "request_1104.bin"));
    assert_eq!(out, response(Revision::R2023a, 7));
    assert_eq!(h.session.close_reason(), None);
}

/// An implausible first request on an auto connection is answered as
/// 2023c: 2107 and close.
#[test]
fn an_implausible_first_request_is_refused_as_2023c() {
    let mut frame = vector("2024c", "request_825.bin");
    frame[19..23].copy_from_slice(&254u32.to_le_bytes());
    let mut h = Harness::new(
        RevisionChoice::Auto {
            range_1025: Revision::R2023c,
        },
        MemoryStore::new(),
    );
    let out = h.feed(&frame);
    assert_eq!(out, vector(".", "response_2107.bin"));
    assert!(matches!(
        h.session.close_reason(),
        Some(CloseReason::Decode(_))
    ));
}

// ---------------------------------------------------------------------------
// The 2024 packet path
// ---------------------------------------------------------------------------

/// How a simulated public 2024 client cuts a file (§9.1).
#[derive(Debug, Clone, Copy)]
struct Variant {
    /// Encrypt each plaintext piece on its own (else split one ciphertext).
    each: bool,
    /// content_size / orig_file_size of the packet (else of the whole file).
    per_packet_sizes: bool,
    /// First packet number.
    base: u16,
    /// total_packets travels first.
    swapped: bool,
    /// Piece size: ciphertext bytes (split) or plaintext bytes (each).
    piece: usize,
}

/// The packets of `plain` as the variant's client sends them.
fn packets(rev: Revision, key: &AesKey, name: &str, plain: &[u8], v: Variant) -> Vec<u8> {
    let name = FixedName::new(name.as_bytes()).unwrap();
    let mut pieces: Vec<(Vec<u8>, usize)> = Vec::new(); // (wire bytes, plaintext len)
    if v.each {
        let chunks: Vec<&[u8]> = if plain.is_empty() {
            vec![&[][..]]
        } else {
            plain.chunks(v.piece).collect()
        };
        for c in chunks {
            pieces.push((cbc_encrypt(key, c), c.len()));
        }
    } else {
        let cipher = cbc_encrypt(key, plain);
        for c in cipher.chunks(v.piece) {
            pieces.push((c.to_vec(), 0));
        }
    }
    let total = pieces.len() as u16;
    let whole_cipher: usize = pieces.iter().map(|(w, _)| w.len()).sum();
    let mut out = Vec::new();
    for (i, (wire, plain_len)) in pieces.iter().enumerate() {
        let number = v.base + i as u16;
        let (content_size, orig_size) = if v.per_packet_sizes && v.each {
            (wire.len() as u32, *plain_len as u32)
        } else if v.per_packet_sizes {
            (wire.len() as u32, wire.len() as u32)
        } else {
            (whole_cipher as u32, plain.len() as u32)
        };
        let (first, second) = if v.swapped {
            (total, number)
        } else {
            (number, total)
        };
        let p = PacketHeader {
            content_size,
            orig_size,
            first,
            second,
        };
        encode_packet_header(rev, &alice(), &p, &name, wire.len() as u32, &mut out);
        out.extend_from_slice(wire);
    }
    out
}

fn variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for each in [false, true] {
        for per_packet_sizes in [false, true] {
            // Split pieces with per-packet sizes are not a form anyone sends
            // (§9.1: per-packet sizes come with padded pieces).
            if per_packet_sizes && !each {
                continue;
            }
            for base in [0, 1] {
                for swapped in [false, true] {
                    for piece in [1024, 4000, 4096] {
                        if !each && piece % 16 != 0 {
                            continue;
                        }
                        v.push(Variant {
                            each,
                            per_packet_sizes,
                            base,
                            swapped,
                            piece,
                        });
                    }
                }
            }
        }
    }
    v
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// One upload in the given variant; the session's answer and what it stored.
fn run_upload(rev: Revision, v: Variant, plain: &[u8], split: usize) -> (Vec<u8>, Harness) {
    let mut h = Harness::fixed(rev);
    let frames = packets(rev, &key_of(rev), "f.bin", plain, v);
    let out = h.feed_split(&frames, split);
    (out, h)
}

fn file_received(rev: Revision, bytes: &[u8]) -> (u32, u32) {
    let mut d = ResponseDecoder::new(rev);
    let mut input = bytes;
    match d.decode(&mut input).unwrap() {
        Some(Response::FileReceived {
            client_id,
            cksum,
            content_size,
            file_name,
        }) => {
            assert_eq!(client_id, alice());
            assert_eq!(file_name.text(), b"f.bin");
            assert!(input.is_empty(), "one answer only");
            (cksum, content_size)
        }
        other => panic!("{rev}: expected file received, got {other:?}"),
    }
}

#[test]
fn every_packet_variant_stores_the_file_byte_for_byte() {
    let sizes = [
        0usize, 1, 15, 16, 1000, 1008, 1024, 4000, 4096, 10_000, 16_384,
    ];
    for rev in [Revision::R2024a, Revision::R2024c] {
        for v in variants() {
            for &len in &sizes {
                let plain = sample(len);
                let (out, mut h) = run_upload(rev, v, &plain, 1 << 20);
                let (cksum, _) = file_received(rev, &out);
                assert_eq!(
                    cksum,
                    sealdrop_protocol::cksum::cksum(&plain),
                    "{rev} {v:?} {len}"
                );
                let ok = Request::CrcOk {
                    file_name: FixedName::new(b"f.bin").unwrap(),
                };
                let mut frame = Vec::new();
                ok.encode(rev, &alice(), &mut frame);
                assert_eq!(h.feed(&frame)[..7], response(rev, 4)[..7]);
                assert_eq!(
                    h.stored("f.bin"),
                    Some((plain.clone(), true)),
                    "{rev} {v:?} {len}"
                );
            }
        }
    }
}

#[test]
fn the_answer_echoes_the_last_packets_content_size() {
    let v = Variant {
        each: true,
        per_packet_sizes: true,
        base: 1,
        swapped: false,
        piece: 1024,
    };
    let plain = sample(2500);
    let (out, _) = run_upload(Revision::R2024c, v, &plain, 1 << 20);
    let (_, content_size) = file_received(Revision::R2024c, &out);
    assert_eq!(
        content_size, 464,
        "last piece: 452 plaintext bytes, 464 on the wire"
    );
}

/// A bad sequence: the revision's error once the offending packet is read,
/// and no other answer: the packets after it that continue the upload are
/// dropped unanswered (a public client reads one answer per upload).
/// Nothing is stored or pending, and the connection then serves a good
/// upload with exactly its answer.
#[test]
fn bad_packet_sequences_get_1607_and_leave_nothing() {
    let rev = Revision::R2024c;
    let key = key_of(rev);
    let plain = sample(3000);
    let v = Variant {
        each: false,
        per_packet_sizes: false,
        base: 1,
        swapped: false,
        piece: 1024,
    };
    let good = packets(rev, &key, "f.bin", &plain, v);
    // Split the good stream into its three frames.
    let mut frames = Vec::new();
    let mut rest = &good[..];
    while !rest.is_empty() {
        let len = 23 + u32::from_le_bytes(rest[19..23].try_into().unwrap()) as usize;
        frames.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    assert_eq!(frames.len(), 3);
    let error = response(rev, 7);
    let set_u16 = |f: &mut Vec<u8>, at: usize, v: u16| {
        f[23 + at..23 + at + 2].copy_from_slice(&v.to_le_bytes());
    };
    let mut dup = frames.clone();
    dup.insert(2, frames[1].clone());
    let mut skip = frames.clone();
    skip.remove(1);
    let mut past_total = frames.clone();
    set_u16(&mut past_total[2], 8, 4);
    let mut total_changed = frames.clone();
    set_u16(&mut total_changed[1], 10, 4);
    let mut name_changed = frames.clone();
    name_changed[1][23 + 12] = b'g';
    let mut bad_first = frames.clone();
    set_u16(&mut bad_first[0], 8, 2);
    let mut short = frames.clone();
    let keep = short[2].len() - 16;
    short[2].truncate(keep);
    let short_len = (short[2].len() - 23) as u32;
    short[2][19..23].copy_from_slice(&short_len.to_le_bytes());
    let cases: [(&str, Vec<Vec<u8>>, usize); 7] = [
        ("duplicate", dup, 2),
        ("missing", skip, 1),
        ("number past total", past_total, 2),
        ("total changes", total_changed, 1),
        ("name changes", name_changed, 1),
        ("first numbered 2", bad_first, 0),
        ("sizes disagree", short, 2),
    ];
    for (what, frames, bad_at) in cases {
        let mut h = Harness::fixed(rev);
        for (i, f) in frames.iter().enumerate() {
            let o = h.feed(f);
            match i.cmp(&bad_at) {
                std::cmp::Ordering::Less => {
                    assert!(o.is_empty(), "{what}: answer before the bad packet")
                }
                std::cmp::Ordering::Equal => {
                    assert_eq!(o, error, "{what}: one error at the bad packet")
                }
                std::cmp::Ordering::Greater => {
                    assert!(o.is_empty(), "{what}: packet {i} answered: {o:?}")
                }
            }
        }
        assert_eq!(h.store.pending_count(), 0, "{what}");
        assert_eq!(h.store.open_uploads, 0, "{what}");
        assert_eq!(h.stored("f.bin"), None, "{what}");
        assert_eq!(h.session.close_reason(), None, "{what}");
        // The connection still serves a good upload, with exactly its
        // answer.
        file_received(rev, &h.feed(&good));
        assert_eq!(h.store.pending_count(), 1, "{what}");
    }
}

/// The frames of a packet stream, one by one.
fn frames_of(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let len = 23 + u32::from_le_bytes(rest[19..23].try_into().unwrap()) as usize;
        frames.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    frames
}

/// An upload refused at its first packet (over quota, a file name it
/// cannot use, a client it does not know, bad padding in a separately
/// encrypted packet) while more packets follow, in every way a public
/// client numbers and cuts them: one error answer at the first packet,
/// the rest dropped unanswered, and the next upload is served with exactly
/// its answer, whether it follows the refused upload's last packet or
/// starts right after its first.
#[test]
fn an_upload_refused_at_its_first_packet_gets_one_answer() {
    let plain = sample(5000);
    for rev in [Revision::R2024a, Revision::R2024c] {
        let key = key_of(rev);
        let error = response(rev, 7);
        for v in variants() {
            let good = packets(rev, &key, "f.bin", &plain, v);
            let bad_name = frames_of(&packets(rev, &key, "..", &plain, v));
            assert!(bad_name.len() > 1, "{v:?}");
            let mut stranger = bad_name.clone();
            for f in &mut stranger {
                f[..16].copy_from_slice(&[0x5a; 16]);
            }
            let mut bad_padding = frames_of(&good);
            let first = bad_padding[0].len() - 1;
            bad_padding[0][first] ^= 0x55;
            let mut cases = vec![
                ("over quota", frames_of(&good)),
                ("unusable name", bad_name),
                ("unknown client", stranger),
            ];
            if v.each {
                cases.push(("bad padding", bad_padding));
            }
            for (what, frames) in cases {
                let fresh = |store_quota: bool| {
                    let mut h = Harness::fixed(rev);
                    if store_quota {
                        h.store.quota = Quota {
                            max_bytes: None,
                            max_files: Some(0),
                        };
                    }
                    h
                };
                let quota = what == "over quota";
                let lift = |h: &mut Harness| {
                    h.store.quota = Quota::UNLIMITED;
                    // The refused padding retired the stored key: the
                    // client's next reconnect brings the key it uses.
                    h.store.clients.get_mut(&alice()).unwrap().last_key = Some(key.clone());
                };
                // All its packets, then a good upload.
                let mut h = fresh(quota);
                assert_eq!(h.feed(&frames[0]), error, "{rev} {v:?} {what}");
                for (i, f) in frames.iter().enumerate().skip(1) {
                    let o = h.feed(f);
                    assert!(o.is_empty(), "{rev} {v:?} {what}: packet {i}: {o:?}");
                }
                assert_eq!(h.store.open_uploads, 0, "{rev} {v:?} {what}");
                lift(&mut h);
                file_received(rev, &h.feed(&good));
                assert_eq!(h.store.pending_count(), 1, "{rev} {v:?} {what}");
                // Its first packet only, then a good upload right away.
                let mut h = fresh(quota);
                assert_eq!(h.feed(&frames[0]), error, "{rev} {v:?} {what}");
                lift(&mut h);
                file_received(rev, &h.feed(&good));
                assert_eq!(h.store.pending_count(), 1, "{rev} {v:?} {what}");
                assert_eq!(h.session.close_reason(), None, "{rev} {v:?} {what}");
            }
        }
    }
}

/// While a refused upload's packets are dropped, the limits that hold for
/// any packet still hold: a client that stops inside a dropped packet is
/// closed for slowness, one that stops between them by the idle timeout;
/// another request, or a packet from another client, ends the dropping
/// and is answered as usual.
#[test]
fn dropping_a_refused_uploads_packets_keeps_every_limit() {
    let rev = Revision::R2024c;
    let v = Variant {
        each: false,
        per_packet_sizes: false,
        base: 1,
        swapped: false,
        piece: 1024,
    };
    let plain = sample(5000);
    let frames = frames_of(&packets(rev, &key_of(rev), "..", &plain, v));
    let error = response(rev, 7);
    let refused = || {
        let mut h = Harness::fixed(rev);
        assert_eq!(h.feed(&frames[0]), error);
        h
    };
    // Inside a dropped packet.
    let mut h = refused();
    assert!(h.feed(&frames[1][..500]).is_empty());
    assert!(!h.session.is_idle());
    h.now += Duration::from_secs(11);
    h.session.handle_timeout(h.now, &mut h.store);
    assert_eq!(h.session.close_reason(), Some(CloseReason::TooSlow));
    // Between dropped packets.
    let mut h = refused();
    assert!(h.feed(&frames[1]).is_empty());
    h.now += Duration::from_secs(121);
    h.session.handle_timeout(h.now, &mut h.store);
    assert_eq!(h.session.close_reason(), Some(CloseReason::IdleTimeout));
    // A verdict in the middle is answered (nothing pending: an error), and
    // the refused upload's next packet is then a bad first packet.
    let mut h = refused();
    assert!(h.feed(&frames[1]).is_empty());
    let mut verdict = Vec::new();
    Request::CrcOk {
        file_name: FixedName::new(b"f.bin").unwrap(),
    }
    .encode(rev, &alice(), &mut verdict);
    assert_eq!(h.feed(&verdict), error);
    assert_eq!(h.feed(&frames[2]), error);
    // A packet from another client is its own upload.
    let mut h = refused();
    let mut other = frames[1].clone();
    other[..16].copy_from_slice(&[0x5a; 16]);
    assert_eq!(h.feed(&other), error);
    assert_eq!(h.session.close_reason(), None);
}

/// A client that stops in the middle of an upload: nothing is kept.
#[test]
fn a_2024_client_that_stops_mid_packet_or_between_packets_leaves_nothing() {
    let rev = Revision::R2024a;
    let v = Variant {
        each: true,
        per_packet_sizes: false,
        base: 1,
        swapped: false,
        piece: 1024,
    };
    let frames = packets(rev, &key_of(rev), "f.bin", &sample(5000), v);
    for cut in [1500, 1024 + 16 + 23 + 267] {
        let mut h = Harness::fixed(rev);
        assert!(h.feed(&frames[..cut]).is_empty());
        assert_eq!(h.store.open_uploads, 1);
        assert!(!h.session.is_idle());
        h.session.handle_eof(&mut h.store);
        h.session.close(h.now, &mut h.store);
        assert_eq!(h.store.open_uploads, 0);
        assert_eq!(h.store.pending_count(), 0);
        assert_eq!(h.stored("f.bin"), None);
    }
    // Idle between packets: the idle timeout closes it, nothing kept.
    let mut h = Harness::fixed(rev);
    let first_len = 23 + 267 + 1040;
    h.feed(&frames[..first_len]);
    h.now += Duration::from_secs(121);
    h.session.handle_timeout(h.now, &mut h.store);
    assert_eq!(h.session.close_reason(), Some(CloseReason::IdleTimeout));
    h.session.close(h.now, &mut h.store);
    assert_eq!(h.store.open_uploads, 0);
}

#[test]
fn bad_padding_in_a_separately_encrypted_packet_is_refused() {
    let rev = Revision::R2024c;
    let v = Variant {
        each: true,
        per_packet_sizes: false,
        base: 1,
        swapped: false,
        piece: 1024,
    };
    let mut frames = packets(rev, &key_of(rev), "f.bin", &sample(3000), v);
    // Corrupt the last byte of the first packet's ciphertext.
    let first_len = 23 + 267 + 1040;
    frames[first_len - 1] ^= 0x55;
    let mut h = Harness::fixed(rev);
    let out = h.feed(&frames[..first_len]);
    assert_eq!(out, response(rev, 7));
    assert_eq!(h.store.open_uploads, 0);
    // The stored key was used: it is retired.
    assert_ne!(h.store.clients[&alice()].last_key, Some(key_of(rev)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any split of the byte stream gives the same answer and file.
    #[test]
    fn any_split_of_a_packet_stream_gives_the_same_result(
        len in 0usize..6000,
        split in 1usize..3000,
        each in any::<bool>(),
        base in 0u16..2,
        swapped in any::<bool>(),
    ) {
        let v = Variant { each, per_packet_sizes: false, base, swapped, piece: 1024 };
        let plain = sample(len);
        let (whole, _) = run_upload(Revision::R2024c, v, &plain, 1 << 20);
        let (pieces, h) = run_upload(Revision::R2024c, v, &plain, split);
        prop_assert_eq!(&whole, &pieces);
        prop_assert_eq!(h.store.pending_count(), 1);
    }
}
