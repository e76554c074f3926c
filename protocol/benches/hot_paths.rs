//! Micro-benchmarks of the protocol crate's hot paths: everything a byte of
//! an upload passes through on either side (PROTOCOL.md §2, §4, §5).
//!
//! Run with `cargo bench -p sealdrop-protocol`; each benchmark reports its
//! throughput in bytes per second. The inputs are deterministic
//! ([`TestEntropy`]), so runs compare.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};

use sealdrop_protocol::cksum::Cksum;
use sealdrop_protocol::crypto::{
    cbc_encrypt, AesKey, AesKeySize, CbcDecryptor, CbcEncryptor, Entropy, TestEntropy,
};
use sealdrop_protocol::decode::{RequestDecoder, RequestEvent};
use sealdrop_protocol::memstore::MemoryStore;
use sealdrop_protocol::message::Response;
use sealdrop_protocol::message::{encode_file_header, Request, Revision};
use sealdrop_protocol::store::ClientRecord;
use sealdrop_protocol::{ClientId, FixedName, ResponseDecoder, ServerConfig, ServerSession};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Size of the 1028 streams fed to the decoder and the server session.
const STREAM_CONTENT: usize = 16 * MIB;
/// Pieces the 16 MiB streams arrive in: a small socket read, and the
/// server's own read size while content streams (1 MiB).
const PIECES: [usize; 2] = [64 * KIB, MIB];

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    TestEntropy::new(seed).fill_bytes(&mut v);
    v
}

fn bench_key() -> AesKey {
    let mut k = [0u8; 16];
    TestEntropy::new(7).fill_bytes(&mut k);
    AesKey::from_bytes(k)
}

/// Groups whose iteration moves megabytes: few samples, flat sampling, so
/// the whole file finishes in well under a minute.
fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// AES-128-CBC and AES-256-CBC (2024a/c, §9) through the streaming
/// encryptor and decryptor, one chunk per iteration as the client's and
/// server's loops call them (§4).
fn aes_cbc(c: &mut Criterion) {
    let key_256 = AesKey::generate_sized(&mut TestEntropy::new(8), AesKeySize::Aes256);
    for (name, key) in [("aes128cbc", bench_key()), ("aes256cbc", key_256)] {
        aes_cbc_group(c, name, &key);
    }
}

fn aes_cbc_group(c: &mut Criterion, name: &str, key: &AesKey) {
    let mut group = c.benchmark_group(name);
    configure(&mut group);
    for chunk in [256 * KIB, MIB] {
        let plain = random_bytes(chunk, 1);
        let mut out = Vec::with_capacity(chunk + 16);
        group.throughput(Throughput::Bytes(chunk as u64));
        group.bench_with_input(BenchmarkId::new("encrypt", chunk), &plain, |b, plain| {
            let mut enc = CbcEncryptor::new(key);
            b.iter(|| {
                out.clear();
                enc.update(black_box(plain), &mut out);
                black_box(out.len())
            })
        });
        // Any whole blocks decrypt; the padding is only checked in finish().
        let cipher = random_bytes(chunk, 2);
        group.bench_with_input(BenchmarkId::new("decrypt", chunk), &cipher, |b, cipher| {
            let mut dec = CbcDecryptor::new(key);
            b.iter(|| {
                out.clear();
                dec.update(black_box(cipher), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// POSIX cksum over 1 MiB (§5), length bytes and complement included.
fn cksum(c: &mut Criterion) {
    let data = random_bytes(MIB, 3);
    let mut group = c.benchmark_group("cksum");
    configure(&mut group);
    group.throughput(Throughput::Bytes(MIB as u64));
    group.bench_function("1MiB", |b| {
        b.iter(|| {
            let mut ck = Cksum::new();
            ck.update(black_box(&data));
            black_box(ck.finish())
        })
    });
    group.finish();
}

fn file_name() -> FixedName {
    FixedName::new(b"bench.bin").expect("valid name")
}

/// Decodes a whole 1028 stream fed in `piece`-sized reads; returns the
/// content bytes seen.
fn decode_stream(stream: &[u8], piece: usize) -> usize {
    let mut dec = RequestDecoder::new(Revision::R2023c, u64::MAX);
    let mut content = 0;
    for mut input in stream.chunks(piece) {
        while let Some(event) = dec.decode(&mut input).expect("valid stream") {
            if let RequestEvent::FileData(d) = event {
                content += d.len();
            }
        }
    }
    content
}

/// RequestDecoder on a 1028 with 16 MiB of content (§2): header checks,
/// then the content handed out as borrowed slices.
fn request_decoder(c: &mut Criterion) {
    let id = ClientId([5; 16]);
    let mut stream = Vec::new();
    encode_file_header(
        Revision::R2023c,
        &id,
        STREAM_CONTENT as u32,
        &file_name(),
        &mut stream,
    );
    stream.extend_from_slice(&random_bytes(STREAM_CONTENT, 4));
    assert_eq!(decode_stream(&stream, MIB), STREAM_CONTENT);

    let mut group = c.benchmark_group("request_decoder_1028_16MiB");
    configure(&mut group);
    group.throughput(Throughput::Bytes(stream.len() as u64));
    for piece in PIECES {
        group.bench_with_input(BenchmarkId::new("piece", piece), &piece, |b, &piece| {
            b.iter(|| black_box(decode_stream(black_box(&stream), piece)))
        });
    }
    group.finish();
}

/// A store holding one client with a last key, so a 1028 on a fresh
/// connection is accepted without RSA (§6 "keys").
fn seeded_store(id: ClientId, key: &AesKey) -> MemoryStore {
    let mut store = MemoryStore::new();
    store.clients.insert(
        id,
        ClientRecord {
            id,
            name: "bench".into(),
            public_key: Some(Box::new([0u8; 160])),
            last_key: Some(key.clone()),
        },
    );
    store
}

/// Runs one connection over `stream` in `piece`-sized reads; returns the
/// bytes the session wrote back.
fn serve(stream: &[u8], piece: usize, store: &mut MemoryStore, rng: &mut TestEntropy) -> Vec<u8> {
    let now = Instant::now();
    let mut session = ServerSession::new(ServerConfig::default(), 1, now);
    let mut written = Vec::new();
    for mut input in stream.chunks(piece) {
        while !input.is_empty() {
            session.handle_input(&mut input, now, store, rng);
            let out = session.pending_output();
            written.extend_from_slice(out);
            let n = out.len();
            session.consume_output(n, now);
            while session.poll_event().is_some() {}
        }
    }
    session.handle_eof(store);
    session.close(now, store);
    written
}

/// ServerSession + MemoryStore receiving a 16 MiB upload and its 1029:
/// decode, decrypt, cksum, store, 2103 and 2104 (§3, §6).
fn server_session(c: &mut Criterion) {
    let id = ClientId([6; 16]);
    let key = bench_key();
    let plain = random_bytes(STREAM_CONTENT - 1, 5);
    let cipher = cbc_encrypt(&key, &plain);
    let mut stream = Vec::new();
    encode_file_header(
        Revision::R2023c,
        &id,
        cipher.len() as u32,
        &file_name(),
        &mut stream,
    );
    stream.extend_from_slice(&cipher);
    Request::CrcOk {
        file_name: file_name(),
    }
    .encode(Revision::R2023c, &id, &mut stream);

    let mut store = seeded_store(id, &key);
    let mut rng = TestEntropy::new(9);
    check_responses(&serve(&stream, MIB, &mut store, &mut rng), &plain);

    let mut group = c.benchmark_group("server_session_upload_16MiB");
    configure(&mut group);
    group.throughput(Throughput::Bytes(stream.len() as u64));
    for piece in PIECES {
        group.bench_with_input(BenchmarkId::new("piece", piece), &piece, |b, &piece| {
            b.iter(|| black_box(serve(black_box(&stream), piece, &mut store, &mut rng).len()))
        });
    }
    group.finish();
}

/// The session answered 2103 with the right cksum, then 2104.
fn check_responses(mut written: &[u8], plain: &[u8]) {
    let mut dec = ResponseDecoder::new(Revision::R2023c);
    let mut ck = Cksum::new();
    ck.update(plain);
    let want = ck.finish();
    match dec.decode(&mut written) {
        Ok(Some(Response::FileReceived { cksum, .. })) => assert_eq!(cksum, want),
        other => panic!("expected 2103, got {other:?}"),
    }
    assert!(matches!(
        dec.decode(&mut written),
        Ok(Some(Response::Ack { .. }))
    ));
}

criterion_group!(benches, aes_cbc, cksum, request_decoder, server_session);
criterion_main!(benches);
