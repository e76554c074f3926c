//! The logic of the fuzz targets under `fuzz/`, kept in the crate so the
//! targets are a few lines each and a stable `#[test]` can replay the
//! committed corpus without a nightly toolchain (rustls `internal::fuzzing`).
//!
//! Each function panics only when an invariant of the crate is broken;
//! any input a peer could send must pass through it cleanly.

use std::time::{Duration, Instant};

use crate::consts::*;
use crate::crypto::{AesKey, TestEntropy};
use crate::decode::{RequestDecoder, RequestEvent, ResponseDecoder, RevisionChoice};
use crate::error::{QuotaExceeded, QuotaLimit, StoreError};
use crate::memstore::MemoryStore;
use crate::message::{encode_file_header, encode_packet_header, Request, Response, Revision};
use crate::server::{ServerConfig, ServerSession};
use crate::store::{ClientRecord, Durability, Store};
use crate::wire::{sanitize_file_name, ClientId};

/// Splits fuzz input into a list of split sizes (from the first byte) and
/// the stream itself, so targets explore arbitrary arrival patterns.
fn splits(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (vec![1], data);
    };
    let count = (n as usize % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    let mut v: Vec<usize> = sizes.iter().map(|&b| b as usize + 1).collect();
    if v.is_empty() {
        v.push(stream.len().max(1));
    }
    (v, stream)
}

/// The revision a fuzz input speaks, from bits 3 and up of its first byte
/// (bits 0-2 are the split count of [`splits`]), so every target covers
/// every revision's decoders and sessions. 0 is 2023c, so inputs from
/// before the other revisions keep their meaning.
fn choice_of(data: &[u8]) -> RevisionChoice {
    let n = usize::from(data.first().copied().unwrap_or(0) >> 3);
    match n % 7 {
        0 => RevisionChoice::Fixed(Revision::R2023c),
        1 => RevisionChoice::Fixed(Revision::R2022c),
        2 => RevisionChoice::Fixed(Revision::R2023a),
        3 => RevisionChoice::Fixed(Revision::R2024a),
        4 => RevisionChoice::Fixed(Revision::R2024c),
        5 => RevisionChoice::Auto {
            range_1025: Revision::R2023c,
        },
        _ => RevisionChoice::Auto {
            range_1025: Revision::R2024a,
        },
    }
}

/// A fixed revision for the targets that need one (a response stream).
fn revision_of(data: &[u8]) -> Revision {
    match choice_of(data) {
        RevisionChoice::Fixed(rev) => rev,
        RevisionChoice::Auto { range_1025 } => range_1025,
    }
}

/// Cuts `stream` into pieces whose sizes cycle through `sizes`.
fn pieces<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

/// A summary of what a request decoder produced, to compare feeds.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Request(Box<Request>),
    Start(u32, Vec<u8>),
    Data(usize),
    End,
    Error(crate::error::DecodeError),
}

fn run_request_decoder(choice: RevisionChoice, chunks: &[&[u8]]) -> Vec<Seen> {
    let mut d = RequestDecoder::with_choice(choice, MAX_CONTENT_SIZE as u64);
    let mut seen = Vec::new();
    let mut data_total = 0usize;
    'outer: for chunk in chunks {
        let mut input = *chunk;
        loop {
            match d.decode(&mut input) {
                Ok(None) => break,
                Ok(Some(RequestEvent::Request(_, r))) => seen.push(Seen::Request(Box::new(r))),
                Ok(Some(RequestEvent::FileStart {
                    content_size,
                    file_name,
                    data_len,
                    packet,
                    ..
                })) => {
                    assert!(content_size > 0);
                    match packet {
                        // A single message carries exactly its content.
                        None => assert!(content_size % 16 == 0 && data_len == content_size),
                        Some(_) => assert!(data_len > 0),
                    }
                    seen.push(Seen::Start(content_size, file_name.raw().to_vec()))
                }
                Ok(Some(RequestEvent::FileData(bytes))) => {
                    assert!(!bytes.is_empty());
                    data_total += bytes.len();
                }
                Ok(Some(RequestEvent::FileEnd)) => {
                    seen.push(Seen::Data(data_total));
                    data_total = 0;
                    seen.push(Seen::End)
                }
                Err(e) => {
                    seen.push(Seen::Error(e));
                    // Sticky: the same error again.
                    assert_eq!(d.decode(&mut &b"x"[..]), Err(e));
                    break 'outer;
                }
            }
        }
        assert!(
            input.is_empty(),
            "a decoder takes all input unless it fails"
        );
    }
    if data_total > 0 {
        seen.push(Seen::Data(data_total));
    }
    seen
}

/// Request decoder: any split of a stream gives the same events as one
/// feed; content totals match content_size; errors are sticky.
pub fn request_decoder(data: &[u8]) {
    let choice = choice_of(data);
    let (sizes, stream) = splits(data);
    let whole = run_request_decoder(choice, &[stream]);
    let split = run_request_decoder(choice, &pieces(stream, &sizes));
    assert_eq!(whole, split);
}

/// Response decoder: split-independent, and every decoded response
/// re-encodes to exactly the bytes it came from (version byte aside).
pub fn response_decoder(data: &[u8]) {
    let rev = revision_of(data);
    let (sizes, stream) = splits(data);
    let run = |chunks: &[&[u8]]| {
        let mut d = ResponseDecoder::new(rev);
        let mut out = Vec::new();
        for chunk in chunks {
            let mut input = *chunk;
            match d.decode_all(&mut input, &mut out) {
                Ok(()) => assert!(input.is_empty()),
                Err(e) => {
                    out.push(Err(e));
                    break;
                }
            }
        }
        out
    };
    let whole = run(&[stream]);
    assert_eq!(whole, run(&pieces(stream, &sizes)));
    let mut offset = 0;
    for r in whole.iter().flatten() {
        let mut bytes = Vec::new();
        r.encode(rev, &mut bytes);
        let original = &stream[offset..offset + bytes.len()];
        assert_eq!(original[1..], bytes[1..], "re-encoding differs");
        offset += bytes.len();
    }
}

impl ResponseDecoder {
    fn decode_all(
        &mut self,
        input: &mut &[u8],
        out: &mut Vec<Result<Response, crate::error::DecodeError>>,
    ) -> Result<(), crate::error::DecodeError> {
        while let Some(r) = self.decode(input)? {
            out.push(Ok(r));
        }
        Ok(())
    }
}

/// Request round trip: every complete non-file request decoded from the
/// stream re-encodes to exactly its input bytes (version byte aside).
pub fn request_roundtrip(data: &[u8]) {
    let mut d = RequestDecoder::with_choice(choice_of(data), MAX_CONTENT_SIZE as u64);
    let mut input = data;
    let mut offset = 0;
    while let Ok(Some(event)) = d.decode(&mut input) {
        // Read after the event: its request may have decided the revision.
        let rev = d.revision();
        let mut bytes = Vec::new();
        let mut payload_size_differs = false;
        let len = match event {
            RequestEvent::Request(h, r) => {
                r.encode(rev, &h.client_id, &mut bytes);
                bytes.len()
            }
            RequestEvent::FileStart {
                header,
                file_name,
                data_len,
                packet: Some(p),
                ..
            } => {
                encode_packet_header(rev, &header.client_id, &p, &file_name, data_len, &mut bytes);
                bytes.len()
            }
            RequestEvent::FileStart {
                header,
                content_size,
                file_name,
                ..
            } => {
                encode_file_header(rev, &header.client_id, content_size, &file_name, &mut bytes);
                // The 2022c client that declares 275 and sends the content after.
                payload_size_differs = header.payload_size as usize == rev.file_prefix_len();
                bytes.len()
            }
            RequestEvent::FileData(d) => {
                bytes.extend_from_slice(d);
                d.len()
            }
            RequestEvent::FileEnd => 0,
        };
        let original = &data[offset..offset + len];
        if payload_size_differs {
            assert_eq!(original[..16], bytes[..16]);
            assert_eq!(original[17..19], bytes[17..19]);
            assert_eq!(original[23..], bytes[23..]);
        } else if len >= REQUEST_HEADER_LEN {
            assert_eq!(original[..16], bytes[..16]);
            assert_eq!(original[17..], bytes[17..]);
        } else {
            assert_eq!(original, &bytes[..]);
        }
        offset += len;
    }
}

/// File-name sanitiser: the result is a plain printable base name.
pub fn sanitizer(data: &[u8]) {
    if let Some(name) = sanitize_file_name(data) {
        assert!(!name.is_empty() && name != "." && name != "..");
        assert!(!name.contains('/') && !name.contains('\\'));
        assert!(name.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        assert!(data.ends_with(name.as_bytes()));
    }
}

/// The fuzz client: the vector id with a known last key, so file uploads
/// and verdicts reach deep paths.
/// A store knowing the vector client, with the vector AES key of the
/// size `rev` uses as its last key (so the vectors' file messages decrypt).
fn seeded_store(rev: Revision) -> MemoryStore {
    let mut store = MemoryStore::new();
    let id = ClientId(FUZZ_CLIENT_ID);
    let key = if rev.aes_key_len() == 32 {
        AesKey::from_slice(FUZZ_AES_KEY_256)
    } else {
        Some(AesKey::from_bytes(FUZZ_AES_KEY))
    };
    store.clients.insert(
        id,
        ClientRecord {
            id,
            name: "alice".into(),
            public_key: Some(Box::new(*FUZZ_PUBLIC_KEY)),
            last_key: key,
        },
    );
    store
}

/// The 256-bit key of the 2024 vectors (fixtures/vectors/2024c/).
pub const FUZZ_AES_KEY_256: &[u8] = include_bytes!("../../fixtures/vectors/2024c/aes_key.bin");

/// Client id known to the fuzzed server: the one of fixtures/vectors.
pub const FUZZ_CLIENT_ID: [u8; 16] = [
    0xe5, 0x14, 0x4c, 0x73, 0x41, 0x23, 0x49, 0x0e, 0x92, 0xfe, 0x9c, 0x54, 0x05, 0x2b, 0x3a, 0x46,
];
/// Its public key: the SPKI of fixtures/vectors.
pub const FUZZ_PUBLIC_KEY: &[u8; PUBLIC_KEY_LEN] =
    include_bytes!("../../fixtures/vectors/rsa1024_public_spki.der");
/// Its last AES key: the one of fixtures/vectors.
pub const FUZZ_AES_KEY: [u8; 16] = [
    0xc9, 0x3d, 0x7e, 0xc7, 0xef, 0x13, 0xe9, 0x2f, 0x28, 0x55, 0x47, 0xfc, 0x8d, 0x56, 0x62, 0x51,
];

/// Server session on an arbitrary byte stream with arbitrary split points
/// and clock steps, starting at `start` (the caller's clock: this crate
/// reads none): never panics, output is always a valid response stream,
/// output and uploads stay bounded, closing releases everything. The
/// store runs in group commit, and some passes end in a failed commit, in
/// whatever state the session is: held answers never come out, a 2107
/// and a close do ([`ServerSession::handle_commit`]). With the store that
/// answers later, some commits refuse the connection's accepted upload as
/// a shared database may (quota, deleted name): the held answers are
/// withdrawn and the session closes ([`ServerSession::handle_commit_of`]).
pub fn server_session(data: &[u8], start: Instant) {
    let choice = choice_of(data);
    let (sizes, stream) = splits(data);
    let config = ServerConfig {
        revision: choice,
        max_output: 4096,
        ..ServerConfig::default()
    };
    let mut now = start;
    let mut session = ServerSession::new(config, 1, now);
    let mut store = seeded_store(revision_of(data));
    store.group_commit = true;
    // Every third input runs against a store that answers later (reads
    // park requests, commits finish in later passes).
    let remote = data.len().is_multiple_of(3);
    store.remote = remote;
    let mut rng = TestEntropy::new(data.len() as u64);
    for (i, piece) in pieces(stream, &sizes).into_iter().enumerate() {
        let mut input = piece;
        let mut rounds = 0;
        while !input.is_empty() && session.wants_input() && rounds < 1000 {
            session.handle_input(&mut input, now, &mut store, &mut rng);
            assert!(session.pending_output().len() <= 4096 + 512);
            let pick = sizes[(i * 31 + rounds) % sizes.len()];
            if remote {
                // Round trips finish at the input's whim.
                if pick % 2 == 0 || session.is_parked() {
                    store.deliver_reads();
                    for _ in store.take_ready() {
                        session.handle_store_ready(now, &mut store, &mut rng);
                    }
                }
                if store.commit_in_flight() && pick % 3 != 0 {
                    store.fail_commit = pick % 13 == 5;
                    if pick % 11 == 4 {
                        // As a shared database may: an accepted upload
                        // refused when its commit places it.
                        store.refuse_commit_for = vec![(session.conn(), refusal(pick))];
                    }
                    store.finish_commit(now);
                }
                if let Some(commit) = store.poll_commit() {
                    let refused =
                        commit.refusal(session.conn()).is_some() && session.holds_output();
                    session.handle_commit_of(&commit, &mut store);
                    if refused {
                        assert!(!session.holds_output(), "a refusal withdraws what was held");
                        assert!(!session.wants_input(), "a refusal at the commit closes");
                    }
                }
                if store.uncommitted() && !store.commit_in_flight() {
                    if let Some(commit) = store.begin_commit(now) {
                        session.handle_commit_of(&commit, &mut store);
                    }
                }
            } else if store.uncommitted() {
                store.fail_commit = pick % 13 == 5;
                let held = session.holds_output();
                let commit = store.commit(now);
                let outcome = commit.outcome(session.conn());
                session.handle_commit(outcome, &mut store);
                assert!(!session.holds_output());
                if held && outcome == Durability::Failed {
                    assert!(!session.wants_input());
                }
            }
            // Whole frames in the connection's revision, every time.
            let mut responses = ResponseDecoder::new(session.answer_revision());
            let mut out = session.pending_output();
            while responses
                .decode(&mut out)
                .expect("server writes valid responses")
                .is_some()
            {}
            assert!(out.is_empty(), "the server writes whole responses");
            let n = session.pending_output().len();
            session.consume_output(n, now);
            rounds += 1;
        }
        assert!(store.open_uploads <= 1);
        now += Duration::from_millis(sizes[i % sizes.len()] as u64 * 50);
        session.handle_timeout(now, &mut store);
        while session.poll_event().is_some() {}
    }
    session.handle_eof(&mut store);
    if remote {
        store.fail_commit = false;
        store.finish_commit(now);
        if let Some(commit) = store.poll_commit() {
            session.handle_commit_of(&commit, &mut store);
        }
        if let Some(commit) = store.begin_commit(now) {
            session.handle_commit_of(&commit, &mut store);
        }
        store.finish_commit(now);
        if let Some(commit) = store.poll_commit() {
            session.handle_commit_of(&commit, &mut store);
        }
        assert!(!session.holds_output(), "every batch was decided");
    } else {
        let commit = store.commit(now);
        session.handle_commit(commit.outcome(session.conn()), &mut store);
    }
    session.close(now, &mut store);
    assert_eq!(
        store.open_uploads, 0,
        "closing releases the upload in progress"
    );
    assert!(store.pending_count() == store.orphan_count());
}

/// A refusal a shared store may give at its commit ([`crate::store::Commit::refused`]).
fn refusal(pick: usize) -> StoreError {
    if pick.is_multiple_of(2) {
        StoreError::Withdrawn {
            why: "the file was deleted",
        }
    } else {
        StoreError::OverQuota(QuotaExceeded {
            limit: QuotaLimit::Files,
            max: 1,
            would_be: 2,
        })
    }
}

/// The vector private key, parsed once.
fn fuzz_private_key() -> crate::crypto::RsaPrivateKey {
    static KEY: std::sync::OnceLock<crate::crypto::RsaPrivateKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        crate::crypto::RsaPrivateKey::from_der(include_bytes!(
            "../../fixtures/vectors/rsa1024_private_pkcs8.der"
        ))
        .expect("the vector key parses")
    })
    .clone()
}

/// Client session against a hostile server: the input's first byte picks
/// a new or returning client, the rest is the server's byte stream.
/// Never panics, never loops: once the stream is exhausted (every further
/// read sees a closed connection) the session ends within a bounded
/// number of steps, and only a real 2104 after 1029 counts as verified.
pub fn client_session(data: &[u8], start: Instant) {
    use crate::client::{Action, ClientConfig, ClientSession, Identity, Outcome, ResponseReader};
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    // Bit 0: a returning client; bits 1-3: the revision (0 is 2023c, so
    // older inputs keep their meaning).
    let rev = match (mode >> 1) % 5 {
        0 => Revision::R2023c,
        1 => Revision::R2022c,
        2 => Revision::R2023a,
        3 => Revision::R2024a,
        _ => Revision::R2024c,
    };
    let crc_ok = rev
        .request_code(crate::message::RequestKind::CrcOk)
        .expect("every revision has CRC ok");
    let identity = (mode & 1 == 1).then(|| Identity {
        name: "alice".into(),
        client_id: ClientId(FUZZ_CLIENT_ID),
        key: fuzz_private_key(),
    });
    let content = [0x42u8; 100];
    let Ok(mut session) = ClientSession::new(ClientConfig {
        revision: rev,
        name: "alice".into(),
        files: vec![crate::client::FileSpec {
            name: "f.bin".into(),
            plain_len: content.len() as u64,
        }],
        identity,
        packets: Default::default(),
        retry: Default::default(),
    }) else {
        return;
    };
    let mut rng = TestEntropy::new(5);
    // The client's own tolerant reader, as its driver uses it.
    let mut decoder = ResponseReader::new(rev);
    let mut input = stream;
    let mut sent_1029 = false;
    // A fake clock: every wait the session asks for passes at once.
    let mut now = start;
    for _ in 0..10_000 {
        match session.poll_action() {
            Some(Action::Connect { delay }) => {
                now += delay;
                session.handle_connected()
            }
            Some(Action::Send(bytes)) => {
                sent_1029 |= bytes.len() >= 19 && bytes[17..19] == crc_ok.to_le_bytes();
            }
            Some(Action::SendFile(upload)) => {
                let mut upload = *upload;
                let mut out = Vec::new();
                upload
                    .sender
                    .push(&content, &mut out)
                    .expect("declared size");
                let cksum = upload.sender.finish(&mut out).expect("declared size");
                session.handle_file_sent(cksum);
            }
            Some(Action::GenerateKeyPair) => {
                session
                    .handle_key_pair(fuzz_private_key())
                    .expect("vector key fits");
            }
            Some(Action::Done(outcome)) => {
                if matches!(outcome, Outcome::Verified { .. }) {
                    assert!(sent_1029, "verified without a 1029");
                }
                return;
            }
            None => match decoder.decode(&mut input) {
                Ok(Some(r)) => session.handle_response(r, &mut rng),
                Ok(None) => session.handle_connection_lost(now),
                Err(e) => {
                    session.handle_response_error(e);
                    decoder = ResponseReader::new(rev);
                    input = &[];
                }
            },
        }
        while session.poll_event().is_some() {}
    }
    panic!("client session did not finish");
}
