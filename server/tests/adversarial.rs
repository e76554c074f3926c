//! Hostile peers against the server: an in-process one, except where the
//! check is about the process (its memory, its descriptors, a descriptor
//! limit of its own), which runs the real `sealdrop-server` binary.
//!
//! Every test checks the observable outcome of one hostile behaviour
//! (reply bytes, close, files on disk) AND that a well-behaved client on
//! another connection completes an upload while the hostile connection is
//! still open. Each ends with [`epilogue`]: the server is still alive,
//! serves another good client, no `.part-*` file is left once the hostile
//! connections are closed and the orphan TTL (1 s) has passed, and nothing
//! was written outside `DIR/files/<client id>/`.

mod common;

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use sealdrop_protocol::cksum::cksum;
use sealdrop_protocol::consts::MAX_CONTENT_SIZE;
use sealdrop_protocol::crypto::{cbc_encrypt, encrypted_len, AesKey};
use sealdrop_protocol::{ClientId, Request, Response};
use sealdrop_server::config::Settings;

/// Short limits so that timeouts show within a test's time (the server
/// process's flags; [`short_limits`] sets the same in-process).
const ARGS: &[&str] = &[
    "--header-timeout",
    "2",
    "--idle-timeout",
    "3",
    "--progress-window",
    "1",
    "--min-rate",
    "4096",
    "--orphan-ttl",
    "1",
];

/// Fixed payload_size of each request code but 1028 (§2).
const FIXED_SIZES: [(u16, u32); 6] = [
    (1025, 255),
    (1026, 415),
    (1027, 255),
    (1029, 255),
    (1030, 255),
    (1031, 255),
];

/// [`ARGS`] as settings.
fn short_limits(s: &mut Settings) {
    s.session.header_timeout = Duration::from_secs(2);
    s.session.idle_timeout = Duration::from_secs(3);
    s.session.progress_window = Duration::from_secs(1);
    // --min-rate 4096 over the 1 s window.
    s.session.min_progress_bytes = 4096;
    s.store.orphan_ttl = Duration::from_secs(1);
}

/// An in-process server with [`short_limits`].
fn server() -> InProcess {
    InProcess::start_with(short_limits)
}

/// The binary with [`ARGS`], for the checks of the process itself.
fn server_process() -> Server {
    Server::start(ARGS)
}

/// The checks every hostile test ends with (hostile connections must be
/// dropped before).
fn epilogue(s: &mut impl TestServer) {
    s.assert_alive();
    s.good_client(3000);
    s.assert_no_parts_within(Duration::from_secs(8));
    assert_nothing_outside_client_folders(s);
    s.assert_db_consistent();
    s.assert_alive();
}

/// Nothing but the database, the lock, the control socket and
/// `files/<32 hex>/<base name>` was written.
fn assert_nothing_outside_client_folders(s: &impl TestServer) {
    let data = s.data_dir();
    for p in walk(data) {
        let rel = p.strip_prefix(data).unwrap();
        let parts: Vec<&str> = rel.iter().map(|c| c.to_str().unwrap()).collect();
        let ok = match parts.as_slice() {
            [db] => {
                db.starts_with("defensive.db") || *db == ".sealdrop.lock" || *db == "control.sock"
            }
            ["files", hex, _name] => hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            _ => false,
        };
        assert!(ok, "unexpected file {}", p.display());
    }
    for e in fs::read_dir(s.tmp_dir()).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            name == "data" || name == "scratch",
            "unexpected entry {name:?} beside the data directory"
        );
    }
}

fn keyed(s: &impl TestServer) -> (Client, Conn) {
    Client::setup(s.addr(), &unique_name("k"))
}

/// Expects 2107 on a connection that stays open: a later 1027 of an
/// unknown id on it is still answered (2106).
fn expect_error_stays_open(c: &mut Conn) {
    match c.try_recv(Duration::from_secs(10)) {
        Ok(Response::GeneralError) => {}
        other => panic!("expected 2107, got {other:?}"),
    }
    assert_open(c);
}

fn assert_open(c: &mut Conn) {
    let id = ClientId([0x5a; 16]);
    c.request(
        &id,
        &Request::Reconnect {
            name: fixed("nobody"),
        },
    );
    match c.try_recv(Duration::from_secs(10)) {
        Ok(Response::ReconnectDenied { client_id }) => assert_eq!(client_id, id),
        other => panic!("connection not usable any more: {other:?}"),
    }
}

fn encrypted_frame(client: &Client, name_field: &[u8], data: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let ct = cbc_encrypt(client.key(), data);
    f.extend_from_slice(&header(&client.id, 3, 1028, 259 + ct.len() as u32));
    f.extend_from_slice(&(ct.len() as u32).to_le_bytes());
    f.extend_from_slice(&raw_field(name_field));
    f.extend_from_slice(&ct);
    f
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

#[test]
fn truncated_header_then_close_gets_no_reply() {
    let mut s = server();
    let mut c = s.connect();
    c.send(&vector("bad_short_header.bin"));
    s.good_client(5000);
    c.shutdown_write();
    let got = c.expect_closed(Duration::from_secs(5));
    assert!(got.is_empty(), "reply to a truncated header: {got:?}");
    drop(c);
    epilogue(&mut s);
}

#[test]
fn truncated_payload_then_close_gets_no_reply() {
    let mut s = server();
    let mut c = s.connect();
    let frame = vector("request_1025.bin");
    c.send(&frame[..100]);
    s.good_client(5000);
    c.shutdown_write();
    let got = c.expect_closed(Duration::from_secs(5));
    assert!(got.is_empty(), "reply to a truncated 1025: {got:?}");
    drop(c);
    epilogue(&mut s);
}

#[test]
fn half_header_stall_is_closed_by_the_header_timeout() {
    let mut s = server();
    let mut c = s.connect();
    c.send(&header(&ClientId::ZERO, 3, 1025, 255)[..12]);
    let t = Instant::now();
    s.good_client(5000);
    let got = c.expect_closed(Duration::from_secs(8));
    assert!(got.is_empty(), "{got:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "closed before the 2 s header timeout"
    );
    drop(c);
    epilogue(&mut s);
}

#[test]
fn header_sent_one_byte_at_a_time_slowly_is_closed() {
    let mut s = server();
    let c = s.connect();
    let mut writer = c.stream.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut frame = header(&ClientId::ZERO, 3, 1025, 255);
            frame.extend_from_slice(&raw_field(b"slowloris"));
            for b in frame {
                if stop.load(Ordering::SeqCst) || writer.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let mut c = c;
    s.good_client(5000);
    let got = c.expect_closed(Duration::from_secs(8));
    stop.store(true, Ordering::SeqCst);
    assert!(got.is_empty(), "a slowloris header got {got:?}");
    join_all(vec![t], Duration::from_secs(10));
    drop(c);
    epilogue(&mut s);
}

#[test]
fn oversize_payload_size_for_every_code_gets_2107_and_close() {
    let mut s = server();
    let id = ClientId([1; 16]);
    let mut conns = Vec::new();
    let mut sizes: Vec<(u16, u32)> = FIXED_SIZES.iter().map(|&(c, n)| (c, n + 1)).collect();
    sizes.extend([
        (1026, 417),
        (1025, 256 + 255),
        (1028, 259 + 16 + 1),
        (1028, 259 + 8),
    ]);
    for (code, size) in sizes {
        let mut c = s.connect();
        // The header alone must be enough to refuse it (§2).
        c.send(&header(&id, 3, code, size));
        conns.push((code, size, c));
    }
    s.good_client(5000);
    for (code, size, mut c) in conns {
        eprintln!("code {code} payload_size {size}");
        c.expect_error_then_close();
    }
    epilogue(&mut s);
}

#[test]
fn undersize_payload_size_for_every_code_gets_2107_and_close() {
    let mut s = server();
    let id = ClientId([2; 16]);
    let mut conns = Vec::new();
    let mut sizes: Vec<(u16, u32)> = FIXED_SIZES.iter().map(|&(c, n)| (c, n - 1)).collect();
    sizes.extend(FIXED_SIZES.iter().map(|&(c, _)| (c, 0)));
    sizes.extend([
        (1026, 255),
        (1028, 0),
        (1028, 258),
        (1028, 259),
        (1028, 259 + 15),
    ]);
    for (code, size) in sizes {
        let mut c = s.connect();
        c.send(&header(&id, 3, code, size));
        conns.push((code, size, c));
    }
    s.good_client(5000);
    for (code, size, mut c) in conns {
        eprintln!("code {code} payload_size {size}");
        c.expect_error_then_close();
    }
    epilogue(&mut s);
}

#[test]
fn payload_size_all_ones_for_every_code_gets_2107_and_close() {
    let mut s = server();
    let mut conns = Vec::new();
    let mut c = s.connect();
    c.send(&vector("bad_1025_huge_payload.bin"));
    conns.push(c);
    for code in [1025u16, 1026, 1027, 1028, 1029, 1030, 1031] {
        let mut c = s.connect();
        c.send(&header(&ClientId([3; 16]), 3, code, u32::MAX));
        conns.push(c);
    }
    s.good_client(5000);
    for mut c in conns {
        c.expect_error_then_close();
    }
    epilogue(&mut s);
}

/// Codes no revision has (PROTOCOL.md §9: 825-828 and 900-902 are 2024c,
/// 1100-1106 2022c/2023a) open no connection's revision: 2107 and close.
#[test]
fn unknown_codes_get_2107_and_close() {
    let mut s = server();
    let mut conns = Vec::new();
    for code in [
        0u16, 1, 824, 829, 903, 1024, 1032, 1099, 1107, 2100, 2107, 65535,
    ] {
        let mut c = s.connect();
        let mut f = header(&ClientId([4; 16]), 3, code, 255);
        f.extend_from_slice(&raw_field(b"x"));
        c.send(&f);
        conns.push(c);
    }
    s.good_client(5000);
    for mut c in conns {
        c.expect_error_then_close();
    }
    epilogue(&mut s);
}

#[test]
fn string_fields_without_nul_get_2107_and_close() {
    let mut s = server();
    let (client, mut keeper) = keyed(&s);
    let no_nul = [b'A'; 255];
    let mut frames = vec![vector("bad_1025_name_no_nul.bin")];
    for code in [1027u16, 1029, 1030, 1031] {
        let mut f = header(&client.id, 3, code, 255);
        f.extend_from_slice(&no_nul);
        frames.push(f);
    }
    let mut f = header(&client.id, 3, 1026, 415);
    f.extend_from_slice(&no_nul);
    f.extend_from_slice(&client.spki);
    frames.push(f);
    let mut f = header(&client.id, 3, 1028, 259 + 16);
    f.extend_from_slice(&16u32.to_le_bytes());
    f.extend_from_slice(&no_nul);
    f.extend_from_slice(&cbc_encrypt(client.key(), b"0123456789")[..16]);
    frames.push(f);
    let mut conns = Vec::new();
    for f in &frames {
        let mut c = s.connect();
        c.send(f);
        conns.push(c);
    }
    s.good_client(5000);
    for mut c in conns {
        c.expect_error_then_close();
    }
    // The keyed client's own connection is unaffected.
    client.upload_verified(&mut keeper, "after.bin", b"fine");
    drop(keeper);
    epilogue(&mut s);
}

#[test]
fn size_mismatch_and_unaligned_content_get_2107_and_close() {
    let mut s = server();
    let (client, _keeper) = keyed(&s);
    let mut frames = vec![vector("bad_1028_size_mismatch.bin")];
    // content_size agrees with payload_size but is not a multiple of 16.
    let mut f = header(&client.id, 3, 1028, 259 + 1000);
    f.extend_from_slice(&1000u32.to_le_bytes());
    f.extend_from_slice(&raw_field(b"odd.bin"));
    f.extend_from_slice(&[0u8; 1000]);
    frames.push(f);
    // content_size disagrees (smaller, larger, zero) with payload_size.
    for claimed in [16u32, 64, 0, u32::MAX] {
        let mut f = header(&client.id, 3, 1028, 259 + 32);
        f.extend_from_slice(&claimed.to_le_bytes());
        f.extend_from_slice(&raw_field(b"liar.bin"));
        f.extend_from_slice(&cbc_encrypt(client.key(), &[7u8; 20]));
        frames.push(f);
    }
    let mut conns = Vec::new();
    for f in &frames {
        let mut c = s.connect();
        c.send(f);
        conns.push(c);
    }
    s.good_client(5000);
    for mut c in conns {
        c.expect_error_then_close();
    }
    assert!(!s.client_dir(&client.id).join("odd.bin").exists());
    assert!(!s.client_dir(&client.id).join("liar.bin").exists());
    drop(_keeper);
    epilogue(&mut s);
}

#[test]
fn random_garbage_gets_2107_and_close() {
    let mut s = server();
    let mut c1 = s.connect();
    c1.send(&random_bytes(0xbad, 64 * 1024)[..]);
    // Garbage after a valid request: the request is answered first.
    let mut c2 = s.connect();
    c2.request(
        &ClientId([9; 16]),
        &Request::Reconnect {
            name: fixed("ghost"),
        },
    );
    c2.send(&header(&ClientId([9; 16]), 3, 9999, 4));
    s.good_client(5000);
    c1.expect_error_then_close();
    c2.expect(2106);
    c2.expect_error_then_close();
    drop((c1, c2));
    epilogue(&mut s);
}

#[test]
fn file_over_max_file_size_is_refused_from_its_header() {
    let mut s = InProcess::start_with(|s| {
        short_limits(s);
        // --max-file-size 1M
        s.session.max_content = encrypted_len(1 << 20);
    });
    let (client, mut c) = keyed(&s);
    // 2 MiB of content announced; only the header and prefix are sent.
    let mut f = header(&client.id, 3, 1028, 259 + (2 << 20));
    f.extend_from_slice(&(2u32 << 20).to_le_bytes());
    f.extend_from_slice(&raw_field(b"too_big.bin"));
    c.send(&f);
    s.good_client(200_000);
    c.expect_error_then_close();
    // Exactly at the limit is fine.
    let (client2, mut c2) = keyed(&s);
    let data = random_bytes(5, 1 << 20);
    client2.upload_verified(&mut c2, "limit.bin", &data);
    assert_eq!(
        fs::read(s.final_path(&client2.id, "limit.bin")).unwrap(),
        data
    );
    drop((c, c2));
    epilogue(&mut s);
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

#[test]
fn client_names_with_control_characters_get_2101_and_stay_open() {
    let mut s = server();
    let mut c = s.connect();
    for name in [
        &b"al\x07ice"[..],
        b"tab\tname",
        b"new\nline",
        b"cr\rname",
        b"\x1b[31mred",
        b"del\x7f",
        b"\x01",
    ] {
        c.request(
            &ClientId::ZERO,
            &Request::Register {
                name: fixed_bytes(name),
            },
        );
        assert_eq!(c.recv(), Response::RegistrationFailed, "{name:?}");
    }
    s.good_client(5000);
    // Same connection: a valid name still registers.
    let mut ok = Client::new(&unique_name("after-bad-names"));
    ok.register(&mut c);
    assert_eq!(
        client_rows(s.data_dir()).len(),
        2,
        "no row for a refused name"
    );
    drop(c);
    epilogue(&mut s);
}

#[test]
fn non_ascii_and_empty_client_names_get_2101() {
    let mut s = server();
    let mut c = s.connect();
    for name in ["é", "名前", "naïve", "\u{202e}evil"] {
        c.request(&ClientId::ZERO, &Request::Register { name: fixed(name) });
        assert_eq!(c.recv(), Response::RegistrationFailed, "{name:?}");
    }
    for raw in [&[0x80u8][..], &[0xff, 0xfe], &[b'a', 0xc0]] {
        c.request(
            &ClientId::ZERO,
            &Request::Register {
                name: fixed_bytes(raw),
            },
        );
        assert_eq!(c.recv(), Response::RegistrationFailed, "{raw:?}");
    }
    // An empty name: the field is all NUL.
    let mut f = header(&ClientId::ZERO, 3, 1025, 255);
    f.extend_from_slice(&[0u8; 255]);
    c.send(&f);
    assert_eq!(c.recv(), Response::RegistrationFailed, "empty name");
    s.good_client(5000);
    // The longest legal name (254 bytes) registers.
    let mut long = Client::new(&"n".repeat(254));
    long.register(&mut c);
    drop(c);
    epilogue(&mut s);
}

#[test]
fn file_names_with_paths_are_stored_under_their_base_name() {
    let mut s = server();
    let (client, mut c) = keyed(&s);
    let cases: &[(&[u8], &str)] = &[
        (b"sub/dir/a.txt", "a.txt"),
        (b"C:\\Users\\bob\\b.txt", "b.txt"),
        (b"../../../../../../../tmp/c.txt", "c.txt"),
        (b"/etc/d.txt", "d.txt"),
        (b"..\\..\\..\\e.txt", "e.txt"),
        (b"./f.txt", "f.txt"),
        (b"x/../.hidden", ".hidden"),
        (b"mixed/sep\\g.txt", "g.txt"),
    ];
    for (i, (raw, base)) in cases.iter().enumerate() {
        let data = random_bytes(i as u64, 1000 + i);
        c.send(&encrypted_frame(&client, raw, &data));
        match c.recv() {
            Response::FileReceived {
                file_name,
                cksum: ck,
                ..
            } => {
                assert_eq!(
                    file_name.raw(),
                    &raw_field(raw),
                    "2103 echoes the field as received"
                );
                assert_eq!(ck, cksum(&data));
            }
            other => panic!("{raw:?}: {other:?}"),
        }
        // The verdict may name the file the same way.
        let mut v = header(&client.id, 3, 1029, 255);
        v.extend_from_slice(&raw_field(raw));
        c.send(&v);
        c.expect(2104);
        assert_eq!(
            fs::read(s.final_path(&client.id, base)).unwrap(),
            data,
            "{raw:?}"
        );
        let row = s
            .file_row(&client.id, base)
            .expect("row under the base name");
        assert_eq!(row.verified, 1);
    }
    s.good_client(5000);
    let mut names: Vec<String> = fs::read_dir(s.client_dir(&client.id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<&str> = cases.iter().map(|c| c.1).collect();
    want.sort();
    assert_eq!(names, want);
    // "../../../tmp/c.txt" did not escape the client folder.
    if let Ok(outside) = fs::read(Path::new("/tmp/c.txt")) {
        assert_ne!(outside, random_bytes(2, 1002), "a file escaped to /tmp");
    }
    drop(c);
    epilogue(&mut s);
}

#[test]
fn unusable_file_names_get_2107_after_the_content_and_stay_open() {
    let mut s = server();
    let (client, mut c) = keyed(&s);
    let bad: &[&[u8]] = &[
        b"..",
        b".",
        b"dir/..",
        b"dir\\..",
        b"a/",
        b"C:\\dir\\",
        b"",
        b"a\nb.txt",
        b"tab\tname",
        b"del\x7f",
        "é.txt".as_bytes(),
        &[0xff, b'x'],
    ];
    for raw in bad {
        c.send(&encrypted_frame(&client, raw, &random_bytes(1, 5000)));
        expect_error_stays_open(&mut c);
    }
    s.good_client(5000);
    // The same connection still uploads.
    client.upload_verified(&mut c, "fine.txt", b"fine");
    let names: Vec<_> = fs::read_dir(s.client_dir(&client.id))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["fine.txt"]);
    assert_eq!(
        s.file_rows().iter().filter(|r| r.id == client.id.0).count(),
        1
    );
    drop(c);
    epilogue(&mut s);
}

// ---------------------------------------------------------------------------
// Keys and order
// ---------------------------------------------------------------------------

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = body.len();
    if n < 128 {
        v.push(n as u8);
    } else if n < 256 {
        v.extend([0x81, n as u8]);
    } else {
        v.push(0x82);
        v.extend((n as u16).to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

fn der_uint(b: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    if b[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(b);
    tlv(0x02, &body)
}

/// SubjectPublicKeyInfo DER of an RSA key (n, e).
fn spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let alg = tlv(
        0x30,
        &[
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    let rsa = tlv(0x30, &[der_uint(n), der_uint(e)].concat());
    let bits = tlv(0x03, &[&[0u8][..], &rsa].concat());
    tlv(0x30, &[alg, bits].concat())
}

#[test]
fn public_keys_that_are_not_usable_keys_get_2107_and_stay_open() {
    let mut s = server();
    let mut c = s.connect();
    let mut client = Client::new(&unique_name("badkey"));
    client.register(&mut c);
    let good = vector_spki();
    let n = &good[29..157];
    assert_eq!(
        spki(n, &[17]),
        good,
        "the DER helper reproduces the vector SPKI"
    );
    // A well-formed SPKI of a 1016-bit modulus with e = 257: exactly 160 bytes.
    let mut n1016 = n[..127].to_vec();
    n1016[126] |= 1;
    let small = spki(&n1016, &[1, 1]);
    assert_eq!(small.len(), 160);
    let mut wrong_alg = good;
    wrong_alg[15] = 0x05; // sha1WithRSAEncryption instead of rsaEncryption
    let mut pkcs1 = vector("rsa1024_public_pkcs1.der");
    pkcs1.resize(160, 0);
    let mut even = good;
    even[156] &= 0xfe; // even modulus
    let mut e_one = good;
    e_one[159] = 1;
    let keys: Vec<(&str, Vec<u8>)> = vec![
        ("zeros", vec![0u8; 160]),
        ("random", random_bytes(77, 160)),
        ("1016-bit modulus", small),
        ("wrong algorithm", wrong_alg.to_vec()),
        ("PKCS#1 padded", pkcs1),
        ("even modulus", even.to_vec()),
        ("e = 1", e_one.to_vec()),
    ];
    for (what, key) in &keys {
        let mut f = header(&client.id, 3, 1026, 415);
        f.extend_from_slice(&raw_field(client.name.as_bytes()));
        f.extend_from_slice(key);
        c.send(&f);
        eprintln!("{what}");
        expect_error_stays_open(&mut c);
    }
    s.good_client(5000);
    assert!(s.client_row(&client.name).unwrap().public_key.is_none());
    // The same connection then completes key exchange with a real key.
    client.exchange_key(&mut c);
    client.upload_verified(&mut c, "k.bin", b"key accepted at last");
    drop(c);
    epilogue(&mut s);
}

#[test]
fn golden_bad_key_frames_are_refused() {
    // "alice" registered but never sent a key.
    let mut s = InProcess::start_prepared(short_limits, |d| {
        seed_client(d, &vector_client_id(), "alice", &[], &[]);
        let db = rusqlite::Connection::open(d.join("defensive.db")).unwrap();
        db.execute("UPDATE clients SET PublicKey = NULL, AESKey = NULL", ())
            .unwrap();
    });
    // 160 zero bytes as the key: 2107, the connection stays.
    let mut c = s.connect();
    c.send(&vector("bad_1026_not_a_key.bin"));
    assert_eq!(c.recv_raw(7), vector("response_2107.bin"));
    // The 162-byte SPKI (payload_size 417): 2107 and close.
    let mut c2 = s.connect();
    c2.send(&vector("bad_1026_spki_e65537.bin"));
    s.good_client(5000);
    c2.expect_error_then_close();
    // The first connection still works: the real 1026 -> 2102.
    c.send(&vector("request_1026.bin"));
    let r = c.recv_raw(151);
    assert_eq!(r[..23], vector("response_2102.bin")[..23]);
    drop((c, c2));
    epilogue(&mut s);
}

#[test]
fn requests_from_an_unknown_id_get_2107_and_stay_open() {
    let mut s = server();
    let mut ghost = Client::new("ghost");
    ghost.id = ClientId([0x66; 16]);
    ghost.aes = Some(AesKey::from_bytes([9; 16]));
    let mut c = s.connect();
    c.request(
        &ghost.id,
        &Request::PublicKey {
            name: fixed("ghost"),
            public_key: Box::new(vector_spki()),
        },
    );
    expect_error_stays_open(&mut c);
    // 1028: the content is read to its end, then 2107.
    ghost.send_file(&mut c, "ghost.bin", &random_bytes(8, 100_000));
    expect_error_stays_open(&mut c);
    for code in [1029u16, 1030, 1031] {
        ghost.send_verdict(&mut c, code, "ghost.bin");
        expect_error_stays_open(&mut c);
    }
    // 1027 of an unknown id: 2106 echoing it.
    c.request(
        &ghost.id,
        &Request::Reconnect {
            name: fixed("ghost"),
        },
    );
    assert_eq!(
        c.recv(),
        Response::ReconnectDenied {
            client_id: ghost.id
        }
    );
    s.good_client(5000);
    // The connection can still register.
    Client::new(&unique_name("late")).register(&mut c);
    assert!(!s.client_dir(&ghost.id).exists());
    drop(c);
    epilogue(&mut s);
}

#[test]
fn file_before_key_exchange_is_drained_then_refused() {
    let mut s = server();
    let mut c = s.connect();
    let mut client = Client::new(&unique_name("nokey"));
    client.register(&mut c);
    client.aes = Some(AesKey::from_bytes([3; 16]));
    client.send_file(&mut c, "early.bin", &random_bytes(4, 64 * 1024));
    expect_error_stays_open(&mut c);
    s.good_client(5000);
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    // The connection goes on: key exchange, then the upload works.
    client.exchange_key(&mut c);
    let data = random_bytes(4, 64 * 1024);
    client.upload_verified(&mut c, "early.bin", &data);
    assert_eq!(
        fs::read(s.final_path(&client.id, "early.bin")).unwrap(),
        data
    );
    drop(c);
    epilogue(&mut s);
}

#[test]
fn mismatched_names_in_1026_and_1027_are_refused() {
    let mut s = server();
    let mut c = s.connect();
    let mut client = Client::new(&unique_name("owner"));
    client.register(&mut c);
    // 1026 with another name: 2107, connection open.
    c.request(
        &client.id,
        &Request::PublicKey {
            name: fixed("someone-else"),
            public_key: Box::new(client.spki),
        },
    );
    expect_error_stays_open(&mut c);
    // 1027 of a client that never sent a key: 2106.
    assert_eq!(
        client.reconnect(&mut c),
        Response::ReconnectDenied {
            client_id: client.id
        }
    );
    client.exchange_key(&mut c);
    // 1027 with the right id but another name: 2106.
    c.request(
        &client.id,
        &Request::Reconnect {
            name: fixed("someone-else"),
        },
    );
    assert_eq!(
        c.recv(),
        Response::ReconnectDenied {
            client_id: client.id
        }
    );
    s.good_client(5000);
    assert!(matches!(
        client.reconnect(&mut c),
        Response::ReconnectAccepted { .. }
    ));
    drop(c);
    epilogue(&mut s);
}

#[test]
fn second_register_on_the_same_connection() {
    let mut s = server();
    let mut c = s.connect();
    let name = unique_name("twice");
    let mut first = Client::new(&name);
    let id1 = first.register(&mut c);
    // Same unkeyed name again: released, a fresh id (§3).
    let mut second = Client::new(&name);
    let id2 = second.register(&mut c);
    assert_ne!(id1, id2);
    // The released id is unknown now.
    c.request(
        &id1,
        &Request::PublicKey {
            name: fixed(&name),
            public_key: Box::new(vector_spki()),
        },
    );
    expect_error_stays_open(&mut c);
    second.exchange_key(&mut c);
    // Now the name is keyed: 2101.
    assert_eq!(
        Client::new(&name).register_reply(&mut c),
        Response::RegistrationFailed
    );
    // Another name on the same connection registers.
    Client::new(&unique_name("other")).register(&mut c);
    s.good_client(5000);
    second.upload_verified(&mut c, "mine.bin", b"second owns the name");
    assert_eq!(
        client_rows(s.data_dir())
            .iter()
            .filter(|r| r.name == name)
            .count(),
        1
    );
    drop(c);
    epilogue(&mut s);
}

#[test]
fn verdicts_for_files_never_sent_get_2107_and_stay_open() {
    let mut s = server();
    let (client, mut c) = keyed(&s);
    client.send_verdict(&mut c, 1029, "never.bin");
    expect_error_stays_open(&mut c);
    client.send_verdict(&mut c, 1031, "never.bin");
    expect_error_stays_open(&mut c);
    // A verdict naming a refused file name.
    client.send_verdict(&mut c, 1029, "..");
    expect_error_stays_open(&mut c);
    s.good_client(5000);
    client.upload_verified(&mut c, "real.bin", b"real");
    // A second 1029 for the same, already verified upload: nothing pending.
    client.send_verdict(&mut c, 1029, "real.bin");
    expect_error_stays_open(&mut c);
    assert!(!s.final_path(&client.id, "never.bin").exists());
    assert!(s.file_row(&client.id, "never.bin").is_none());
    drop(c);
    epilogue(&mut s);
}

#[test]
fn bad_padding_gets_2107_and_stays_open() {
    let mut s = server();
    let (mut client, mut c) = keyed(&s);
    // CBC prefix property: dropping the padding block of a longer
    // encryption leaves a ciphertext whose last plaintext block is
    // chosen, here with invalid PKCS#7 padding (deterministically).
    for last in [&[0u8][..], &[17u8], &[3, 3, 2], &[16u8; 15]] {
        let mut plain = vec![0x41u8; 32];
        plain[32 - last.len()..].copy_from_slice(last);
        let ct = cbc_encrypt(client.key(), &plain);
        let bad = &ct[..32];
        c.send(&file_frame(&client.id, &fixed("pad.bin"), bad));
        expect_error_stays_open(&mut c);
    }
    s.good_client(5000);
    assert!(!s.final_path(&client.id, "pad.bin").exists());
    assert!(s.file_row(&client.id, "pad.bin").is_none());
    // Same connection: a reconnect and a good upload.
    assert!(matches!(
        client.reconnect(&mut c),
        Response::ReconnectAccepted { .. }
    ));
    client.upload_verified(&mut c, "pad.bin", b"padded properly");
    drop(c);
    epilogue(&mut s);
}

// ---------------------------------------------------------------------------
// Uploads cut, stalled, slow
// ---------------------------------------------------------------------------

/// Sends the header, prefix and the first `sent` bytes of a 1028 of
/// `total` plaintext bytes.
fn partial_upload(client: &Client, c: &mut Conn, name: &str, total: usize, sent: usize) {
    let frame = client.file_frame(name, &random_bytes(99, total));
    c.send(&frame[..23 + 259 + sent]);
}

#[test]
fn upload_cut_halfway_leaves_nothing_and_keeps_the_verified_version() {
    let mut s = server();
    let (client, mut c) = keyed(&s);
    let v1 = random_bytes(1, 10_000);
    client.upload_verified(&mut c, "doc", &v1);
    let mut cut = s.connect();
    partial_upload(&client, &mut cut, "doc", 1 << 20, 1 << 19);
    let mut cut2 = s.connect();
    partial_upload(&client, &mut cut2, "fresh.bin", 1 << 20, 1 << 19);
    assert!(
        wait_until(Duration::from_secs(10), || s
            .part_files()
            .iter()
            .filter(|p| fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
            .count()
            == 2),
        "the cut uploads are being written to temporary files"
    );
    s.good_client(5000);
    drop(cut);
    drop(cut2);
    s.assert_no_parts_within(Duration::from_secs(3));
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    assert!(!s.final_path(&client.id, "fresh.bin").exists());
    assert!(
        s.file_row(&client.id, "fresh.bin").is_none(),
        "a cut upload leaves no row"
    );
    assert_eq!(s.file_row(&client.id, "doc").unwrap().verified, 1);
    drop(c);
    epilogue(&mut s);
}

#[test]
fn upload_stalled_halfway_is_closed_by_the_minimum_rate() {
    let mut s = server();
    let (client, mut c) = keyed(&s);
    let mut stall = s.connect();
    partial_upload(&client, &mut stall, "stall.bin", 1 << 20, 300_000);
    s.good_client(5000);
    let got = stall.expect_closed(Duration::from_secs(6));
    assert!(got.is_empty(), "{got:?}");
    s.assert_no_parts_within(Duration::from_secs(3));
    assert!(!s.final_path(&client.id, "stall.bin").exists());
    client.upload_verified(&mut c, "after.bin", b"still fine");
    drop((c, stall));
    epilogue(&mut s);
}

#[test]
fn claimed_4_gib_upload_followed_by_silence_is_closed() {
    let mut s = server();
    let (client, _keep) = keyed(&s);
    let mut c = s.connect();
    let mut f = header(&client.id, 3, 1028, MAX_CONTENT_SIZE + 259);
    f.extend_from_slice(&MAX_CONTENT_SIZE.to_le_bytes());
    f.extend_from_slice(&raw_field(b"huge.bin"));
    f.extend_from_slice(&cbc_encrypt(client.key(), &[1u8; 100]));
    c.send(&f);
    s.good_client(5000);
    let got = c.expect_closed(Duration::from_secs(6));
    assert!(got.is_empty(), "{got:?}");
    s.assert_no_parts_within(Duration::from_secs(3));
    drop((c, _keep));
    epilogue(&mut s);
}

#[test]
fn content_trickled_a_byte_at_a_time_is_closed() {
    let mut s = server();
    let (client, _keep) = keyed(&s);
    let c = s.connect();
    let mut writer = c.stream.try_clone().unwrap();
    let frame = client.file_frame("trickle.bin", &random_bytes(3, 100_000));
    let sent = Arc::new(AtomicUsize::new(0));
    let t = {
        let sent = sent.clone();
        thread::spawn(move || {
            if writer.write_all(&frame[..282]).is_err() {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            for b in &frame[282..] {
                if Instant::now() > deadline || writer.write_all(&[*b]).is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut c = c;
    s.good_client(5000);
    let got = c.expect_closed(Duration::from_secs(6));
    assert!(got.is_empty());
    assert!(sent.load(Ordering::SeqCst) < 100_000);
    join_all(vec![t], Duration::from_secs(15));
    drop((c, _keep));
    epilogue(&mut s);
}

#[test]
fn many_idle_connections_are_closed_by_the_idle_timeout() {
    let mut s = server();
    let t = Instant::now();
    let mut silent: Vec<Conn> = (0..100).map(|_| s.connect()).collect();
    // Some after a complete request.
    let mut served: Vec<Conn> = (0..20)
        .map(|i| {
            let mut c = s.connect();
            c.request(
                &ClientId([i; 16]),
                &Request::Reconnect {
                    name: fixed("idle"),
                },
            );
            c.expect(2106);
            c
        })
        .collect();
    s.good_client(5000);
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in silent.iter_mut().chain(served.iter_mut()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = c.wait_closed(left).expect("idle connection closed");
        assert!(got.is_empty());
    }
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "closed before the 3 s idle timeout"
    );
    drop((silent, served));
    epilogue(&mut s);
}

#[test]
fn connection_cap_held_by_idle_peers_frees_up_by_the_idle_timeout() {
    let mut s = InProcess::start_with(|s| {
        short_limits(s);
        s.max_connections = 20;
    });
    let holders: Vec<Conn> = (0..20).map(|_| s.connect()).collect();
    assert!(s.wait_open(20, Duration::from_secs(5)));
    // A good client waits in the backlog until the idle holders time out
    // (3 s), then it is served.
    let t = Instant::now();
    s.good_client(5000);
    let waited = t.elapsed();
    // The cap was reached and held: the good client's connection (the
    // 21st) was accepted only once a holder had been closed.
    assert!(s.connected() > 20, "{} accepted", s.connected());
    assert_eq!(s.peak_open(), 20, "more than the cap open at once");
    assert!(
        waited >= Duration::from_secs(1),
        "served at once past the cap ({waited:?})"
    );
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    drop(holders);
    epilogue(&mut s);
}

/// A process of its own: the check is the server's resident memory.
#[test]
fn pipelined_reconnects_never_read_keep_memory_bounded() {
    let mut s = server_process();
    let rss_before = s.rss_kib();
    // A flooder with a tiny receive buffer that never reads its replies.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr().into()).unwrap();
    let stream: TcpStream = sock.into();
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut c = Conn::from_stream(stream);
    let mut batch = Vec::new();
    for i in 0..100u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        batch.extend(request_frame(
            &ClientId(id),
            &Request::Reconnect {
                name: fixed("flood"),
            },
        ));
    }
    let done = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, max_rss, pid) = (done.clone(), max_rss.clone(), s.pid());
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let kib: usize = st
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                max_rss.fetch_max(kib, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let start = Instant::now();
    let mut frames = 0usize;
    while start.elapsed() < Duration::from_secs(3) {
        if c.try_send(&batch).is_err() {
            break; // the server stopped reading: backpressure
        }
        frames += 100;
    }
    // Other clients are served meanwhile.
    s.good_client(20_000);
    done.store(true, Ordering::SeqCst);
    join_all(vec![sampler], Duration::from_secs(5));
    let peak = max_rss.load(Ordering::SeqCst);
    eprintln!("sent {frames} pipelined 1027s; server RSS {rss_before} KiB -> peak {peak} KiB");
    assert!(frames >= 2000, "only {frames} frames sent");
    assert!(peak < 64 * 1024, "server RSS peaked at {peak} KiB");
    // The flooder is cut off (not reading: write stalled; or idle).
    c.stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    match c.wait_closed(Duration::from_secs(20)) {
        Ok(bytes) => eprintln!("flooder closed after {} reply bytes", bytes.len()),
        Err(_) => panic!("flooder never closed"),
    }
    drop(c);
    epilogue(&mut s);
}

#[test]
fn pipelined_requests_read_concurrently_are_all_answered_in_order() {
    let mut s = server();
    let c = s.connect();
    let mut writer = c.stream.try_clone().unwrap();
    let n = 3000u32;
    let t = thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..n {
            let mut id = [0xeeu8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            all.extend(request_frame(
                &ClientId(id),
                &Request::Reconnect { name: fixed("p") },
            ));
        }
        writer.write_all(&all).unwrap();
    });
    let mut c = c;
    s.good_client(5000);
    for i in 0..n {
        match c.recv() {
            Response::ReconnectDenied { client_id } => {
                assert_eq!(client_id.0[..4], i.to_le_bytes(), "reply {i} out of order")
            }
            other => panic!("reply {i}: {other:?}"),
        }
    }
    join_all(vec![t], Duration::from_secs(30));
    drop(c);
    epilogue(&mut s);
}

#[test]
fn same_name_uploaded_on_two_connections_at_once_never_mixes() {
    let mut s = server();
    let (mut client, mut a) = keyed(&s);
    let key_a = client.key().clone();
    let mut b = s.connect();
    assert!(matches!(
        client.reconnect(&mut b),
        Response::ReconnectAccepted { .. }
    ));
    let key_b = client.key().clone();
    let data_a = random_bytes(0xa, 300_000);
    let data_b = random_bytes(0xb, 300_016);
    let frame_a = file_frame(
        &client.id,
        &fixed("same.bin"),
        &cbc_encrypt(&key_a, &data_a),
    );
    let frame_b = file_frame(
        &client.id,
        &fixed("same.bin"),
        &cbc_encrypt(&key_b, &data_b),
    );
    // Interleave the two uploads in 16 KiB pieces.
    let (mut pa, mut pb) = (0, 0);
    while pa < frame_a.len() || pb < frame_b.len() {
        let na = (frame_a.len() - pa).min(16 * 1024);
        a.send(&frame_a[pa..pa + na]);
        pa += na;
        let nb = (frame_b.len() - pb).min(16 * 1024);
        b.send(&frame_b[pb..pb + nb]);
        pb += nb;
    }
    let ra = a.recv();
    let rb = b.recv();
    client.check_received(&ra, "same.bin", data_a.len() as u64, cksum(&data_a));
    client.check_received(&rb, "same.bin", data_b.len() as u64, cksum(&data_b));
    s.good_client(5000);
    client.verify(&mut a, "same.bin");
    client.verify(&mut b, "same.bin");
    let stored = fs::read(s.final_path(&client.id, "same.bin")).unwrap();
    assert!(
        stored == data_a || stored == data_b,
        "stored file is a mix of both uploads"
    );
    let rows: Vec<_> = s
        .file_rows()
        .into_iter()
        .filter(|r| r.id == client.id.0)
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].verified, 1);
    assert_eq!(
        fs::read_dir(s.client_dir(&client.id)).unwrap().count(),
        1,
        "exactly one file in the client folder"
    );
    drop((a, b));
    epilogue(&mut s);
}

/// A process of its own: the check counts the server's descriptors.
#[test]
fn connect_and_reset_storm_leaves_the_server_serving() {
    let mut s = server_process();
    let addr = s.addr();
    let storm = thread::spawn(move || {
        for i in 0..1000u32 {
            let Ok(st) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
                continue;
            };
            match i % 4 {
                0 => {}
                1 => {
                    let _ = socket2::SockRef::from(&st).set_linger(Some(Duration::ZERO));
                }
                2 => {
                    let _ = (&st).write_all(&header(&ClientId::ZERO, 3, 1025, 255)[..7]);
                    let _ = socket2::SockRef::from(&st).set_linger(Some(Duration::ZERO));
                }
                _ => {
                    let _ = (&st).write_all(&vector("request_1027.bin"));
                    let _ = socket2::SockRef::from(&st).set_linger(Some(Duration::ZERO));
                }
            }
            drop(st);
        }
    });
    s.good_client(50_000);
    join_all(vec![storm], Duration::from_secs(60));
    s.good_client(50_000);
    assert!(
        wait_until(Duration::from_secs(10), || s.fd_count() < 50),
        "descriptors leaked: {}",
        s.fd_count()
    );
    epilogue(&mut s);
}

#[test]
fn many_uploads_without_a_verdict_are_bounded_and_expire() {
    let mut s = server();
    let (client, mut c) = keyed(&s);
    for i in 0..20 {
        client.send_file(&mut c, &format!("p{i}.bin"), &random_bytes(i, 2000));
        c.expect(2103);
    }
    // A connection keeps at most 16 uploads awaiting a verdict.
    assert_eq!(s.part_files().len(), 16, "{:?}", s.part_files());
    client.send_verdict(&mut c, 1029, "p0.bin");
    expect_error_stays_open(&mut c);
    client.verify(&mut c, "p19.bin");
    s.good_client(5000);
    drop(c);
    // Orphaned by the close, they expire after --orphan-ttl 1.
    s.assert_no_parts_within(Duration::from_secs(6));
    assert_eq!(
        fs::read(s.final_path(&client.id, "p19.bin")).unwrap(),
        random_bytes(19, 2000)
    );
    epilogue(&mut s);
}

#[test]
fn half_closed_client_still_gets_its_reply() {
    let mut s = server();
    let mut c = s.connect();
    c.send(&vector("request_1027.bin"));
    c.shutdown_write();
    s.good_client(5000);
    let got = c.expect_closed(Duration::from_secs(5));
    assert_eq!(
        got,
        vector("response_2106.bin"),
        "reply lost after a half-close"
    );
    drop(c);
    epilogue(&mut s);
}

#[test]
fn any_version_byte_is_accepted_and_three_is_sent() {
    let mut s = server();
    let mut c = s.connect();
    for (i, version) in [0u8, 1, 2, 4, 255].into_iter().enumerate() {
        let mut f = header(&ClientId::ZERO, version, 1025, 255);
        f.extend_from_slice(&raw_field(
            format!("v{version}-{i}-{}", std::process::id()).as_bytes(),
        ));
        c.send(&f);
        let r = c.recv_raw(23);
        assert_eq!(r[..7], [3, 0x34, 0x08, 16, 0, 0, 0], "version {version}");
    }
    s.good_client(5000);
    drop(c);
    epilogue(&mut s);
}

#[test]
fn a_session_sent_one_byte_per_write_works() {
    let mut s = server();
    let mut c = s.connect();
    let mut client = Client::new(&unique_name("bytewise"));
    let bytewise = |c: &mut Conn, f: &[u8]| {
        for b in f {
            c.send(std::slice::from_ref(b));
        }
    };
    bytewise(
        &mut c,
        &request_frame(
            &ClientId::ZERO,
            &Request::Register {
                name: client.name_field(),
            },
        ),
    );
    client.id = match c.recv() {
        Response::Registered { client_id } => client_id,
        other => panic!("{other:?}"),
    };
    let mut other = s.connect();
    client.exchange_key(&mut other);
    let data = random_bytes(6, 3000);
    bytewise(&mut c, &client.file_frame("bytes.bin", &data));
    let r = c.recv();
    client.check_received(&r, "bytes.bin", 3000, cksum(&data));
    s.good_client(5000);
    let mut v = Vec::new();
    Request::CrcOk {
        file_name: fixed("bytes.bin"),
    }
    .encode(REV, &client.id, &mut v);
    bytewise(&mut c, &v);
    c.expect(2104);
    assert_eq!(
        fs::read(s.final_path(&client.id, "bytes.bin")).unwrap(),
        data
    );
    drop((c, other));
    epilogue(&mut s);
}

// ---------------------------------------------------------------------------
// Odd but legal input, storage trouble, resource exhaustion
// ---------------------------------------------------------------------------

#[test]
fn bytes_after_the_nul_are_ignored_but_echoed() {
    let mut s = server();
    let mut c = s.connect();
    let name = unique_name("nul");
    let mut field = raw_field(name.as_bytes());
    field[name.len() + 1..name.len() + 6].copy_from_slice(b"junk!");
    let mut f = header(&ClientId::ZERO, 3, 1025, 255);
    f.extend_from_slice(&field);
    c.send(&f);
    let mut client = Client::new(&name);
    client.id = match c.recv() {
        Response::Registered { client_id } => client_id,
        other => panic!("{other:?}"),
    };
    assert!(
        s.client_row(&name).is_some(),
        "registered under the text before the NUL"
    );
    client.exchange_key(&mut c);
    let mut fname = raw_field(b"f.txt");
    fname[200..208].copy_from_slice(b"trailing");
    let data = random_bytes(31, 999);
    let mut frame = encrypted_frame(&client, b"f.txt", &data);
    frame[23 + 4..23 + 4 + 255].copy_from_slice(&fname);
    c.send(&frame);
    match c.recv() {
        Response::FileReceived { file_name, .. } => {
            assert_eq!(
                file_name.raw(),
                &fname,
                "2103 echoes all 255 bytes as received"
            )
        }
        other => panic!("{other:?}"),
    }
    let mut v = header(&client.id, 3, 1029, 255);
    let mut vname = raw_field(b"f.txt");
    vname[100] = b'z';
    v.extend_from_slice(&vname);
    c.send(&v);
    c.expect(2104);
    s.good_client(5000);
    assert_eq!(fs::read(s.final_path(&client.id, "f.txt")).unwrap(), data);
    drop(c);
    epilogue(&mut s);
}

#[test]
fn sql_metacharacters_and_long_names_are_just_text() {
    let mut s = server();
    let name = "Robert'); DROP TABLE clients;--";
    let (client, mut c) = Client::setup(s.addr(), name);
    let files = [
        "x'; DELETE FROM files;--.txt".to_string(),
        "%_*?[]{}\"`$(id).txt".to_string(),
        "f".repeat(254),
    ];
    for (i, f) in files.iter().enumerate() {
        let data = random_bytes(40 + i as u64, 500);
        client.upload_verified(&mut c, f, &data);
        assert_eq!(fs::read(s.final_path(&client.id, f)).unwrap(), data);
    }
    s.good_client(5000);
    assert_eq!(s.client_row(name).unwrap().id, client.id.0);
    assert_eq!(client_rows(s.data_dir()).len(), 2);
    assert_eq!(s.file_rows().len(), 4);
    drop(c);
    epilogue(&mut s);
}

#[test]
fn orphaned_upload_is_verifiable_within_the_ttl_and_gone_after() {
    let mut s = server();
    let (client, mut c) = keyed(&s);
    client.send_file(&mut c, "quick.bin", b"verified from another connection");
    c.expect(2103);
    client.send_file(&mut c, "late.bin", b"never verified");
    c.expect(2103);
    drop(c);
    let mut c2 = s.connect();
    client.verify(&mut c2, "quick.bin");
    // The other one expires after --orphan-ttl 1.
    s.assert_no_parts_within(Duration::from_secs(6));
    client.send_verdict(&mut c2, 1029, "late.bin");
    expect_error_stays_open(&mut c2);
    s.good_client(5000);
    assert!(!s.final_path(&client.id, "late.bin").exists());
    assert_eq!(
        fs::read(s.final_path(&client.id, "quick.bin")).unwrap(),
        b"verified from another connection"
    );
    drop(c2);
    epilogue(&mut s);
}

#[test]
fn storage_error_gets_2107_and_the_connection_stays() {
    let mut s = server();
    let (client, mut c) = keyed(&s);
    // The client's folder cannot be created: a regular file is in the way.
    let folder = s.client_dir(&client.id);
    fs::write(&folder, b"in the way").unwrap();
    client.send_file(&mut c, "blocked.bin", &random_bytes(1, 50_000));
    expect_error_stays_open(&mut c);
    s.good_client(5000);
    fs::remove_file(&folder).unwrap();
    client.upload_verified(&mut c, "blocked.bin", b"now it works");
    drop(c);
    epilogue(&mut s);
}

#[test]
fn locked_database_gets_2107_and_a_retried_request_succeeds() {
    // Each locked statement stalls the single event loop for the 2 s busy
    // timeout, so the short --idle-timeout of the other tests is not used.
    let mut s = InProcess::start_with(|s| s.store.orphan_ttl = Duration::from_secs(1));
    let (client, mut c) = keyed(&s);
    let v1 = random_bytes(50, 4000);
    client.upload_verified(&mut c, "doc", &v1);
    let v2 = random_bytes(51, 5000);
    client.send_file(&mut c, "doc", &v2);
    c.expect(2103);
    let lock = rusqlite::Connection::open(s.data_dir().join("defensive.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // A registration needs a write: 2107 once the server's busy timeout passes.
    let mut other = s.connect();
    let mut newcomer = Client::new(&unique_name("locked"));
    assert_eq!(newcomer.register_reply(&mut other), Response::GeneralError);
    // The verdict cannot be recorded either.
    client.send_verdict(&mut c, 1029, "doc");
    assert_eq!(c.recv(), Response::GeneralError);
    lock.execute_batch("ROLLBACK").unwrap();
    // Both connections stay usable, and the retries succeed.
    newcomer.register(&mut other);
    client.verify(&mut c, "doc");
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v2);
    assert_eq!(s.file_row(&client.id, "doc").unwrap().verified, 1);
    s.good_client(5000);
    drop((c, other));
    epilogue(&mut s);
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A process of its own: its own descriptor limit, its CPU time, and the
/// log line of a failed accept (no event reports one).
#[test]
fn descriptor_exhaustion_neither_crashes_nor_spins() {
    let opts = ServerOpts {
        fd_limit: Some(64),
        ..ServerOpts::args(ARGS)
    };
    let mut s = Server::start_with(opts);
    let hostile: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)).unwrap())
        .collect();
    assert!(
        s.wait_log("cannot accept", Duration::from_secs(5)),
        "descriptors never ran out:\n{}",
        s.log_tail(10)
    );
    // Out of descriptors with connections waiting: the loop must not spin.
    let before = cpu_ticks(s.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(s.pid()) - before;
    assert!(
        used < 60,
        "server burnt {used} ticks in 2 s while out of descriptors"
    );
    s.assert_alive();
    drop(hostile);
    // Once the hostile connections are gone, service resumes.
    s.good_client(5000);
    epilogue(&mut s);
}

/// A process of its own: its own descriptor limit, and the log lines of
/// the cap and of failed accepts.
#[test]
fn connection_cap_below_the_descriptor_limit_keeps_uploads_working() {
    let opts = ServerOpts {
        fd_limit: Some(64),
        ..ServerOpts::args(&[&["--max-connections", "30"][..], ARGS].concat())
    };
    let mut s = Server::start_with(opts);
    let (client, mut c) = keyed(&s);
    let hostile: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)).unwrap())
        .collect();
    assert!(s.wait_log("connection cap of 30 reached", Duration::from_secs(5)));
    // The held connection still gets descriptors for its files.
    let data = random_bytes(60, 200_000);
    client.upload_verified(&mut c, "held.bin", &data);
    assert_eq!(
        fs::read(s.final_path(&client.id, "held.bin")).unwrap(),
        data
    );
    assert!(
        !s.log_contains("cannot accept"),
        "descriptors ran out despite the cap"
    );
    drop(hostile);
    drop(c);
    epilogue(&mut s);
}

#[test]
fn half_closed_pipelining_client_gets_every_reply() {
    // A client pipelines requests, half-closes its sending side (it has
    // nothing more to say) and reads the replies through a small receive
    // window. End of the request stream is not "nobody will read": every
    // request must still be answered before the server closes. (Long
    // header timeout: see pipelining_client_is_not_cut_off_by_the_header_timeout.)
    let mut s = InProcess::start_with(|s| {
        s.session.header_timeout = Duration::from_secs(60);
        s.store.orphan_ttl = Duration::from_secs(1);
    });
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr().into()).unwrap();
    let stream: TcpStream = sock.into();
    let mut writer = stream.try_clone().unwrap();
    let mut c = Conn::from_stream(stream);
    let n = 20_000u32;
    let t = thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..n {
            let mut id = [0x77u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            all.extend(request_frame(
                &ClientId(id),
                &Request::Reconnect { name: fixed("hc") },
            ));
        }
        writer.write_all(&all).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    s.good_client(5000);
    let mut got = 0u32;
    loop {
        match c.try_recv(Duration::from_secs(10)) {
            Ok(Response::ReconnectDenied { client_id }) => {
                assert_eq!(
                    client_id.0[..4],
                    got.to_le_bytes(),
                    "reply {got} out of order"
                );
                got += 1;
            }
            Ok(other) => panic!("reply {got}: {other:?}"),
            Err(RecvError::Closed) => break,
            Err(e) => panic!("after {got} replies: {e:?}"),
        }
    }
    join_all(vec![t], Duration::from_secs(20));
    assert_eq!(got, n, "replies lost after the client half-closed");
    drop(c);
    epilogue(&mut s);
}

#[test]
fn pipelining_client_is_not_cut_off_by_the_header_timeout() {
    // Every request arrives complete within milliseconds, but the client
    // keeps a pipeline going, so the server's reads usually end inside a
    // frame. The header timeout (1 s here) must run from the first byte
    // of the request being received, not from the first partial frame
    // seen since the stream was last between frames.
    let mut s = InProcess::start_with(|s| {
        s.session.header_timeout = Duration::from_secs(1);
        s.store.orphan_ttl = Duration::from_secs(1);
    });
    let c = s.connect();
    let mut writer = c.stream.try_clone().unwrap();
    let mut all = Vec::new();
    let n = 1300u32;
    for i in 0..n {
        let mut id = [0x88u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        all.extend(request_frame(
            &ClientId(id),
            &Request::Reconnect {
                name: fixed("pipe"),
            },
        ));
    }
    let t = thread::spawn(move || {
        // 1001-byte writes every 10 ms: coprime with the 278-byte frame, so
        // a write ends exactly between frames only every 278 writes (~3 s).
        for chunk in all.chunks(1001) {
            if writer.write_all(chunk).is_err() {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    });
    let mut c = c;
    let mut got = 0u32;
    while got < n {
        match c.try_recv(Duration::from_secs(10)) {
            Ok(Response::ReconnectDenied { client_id }) => {
                assert_eq!(client_id.0[..4], got.to_le_bytes());
                got += 1;
            }
            other => panic!("after {got} of {n} replies: {other:?}\n{}", s.recent()),
        }
    }
    assert!(join_all(vec![t], Duration::from_secs(30))[0]);
    s.good_client(5000);
    drop(c);
    epilogue(&mut s);
}

#[test]
fn flood_of_unverified_uploads_does_not_evict_another_clients_upload() {
    // A well-behaved client has a complete upload awaiting its 1029. A
    // hostile client then leaves more than the server-wide cap of pending
    // uploads (1024) on 66 connections of 16 each (the per-connection cap)
    // and never sends a verdict. The victim's 1029 must still succeed:
    // one client's junk must not throw away another client's upload.
    let mut s = server();
    let (victim, mut vc) = keyed(&s);
    let data = random_bytes(90, 20_000);
    victim.send_file(&mut vc, "victim.bin", &data);
    let r = vc.recv();
    victim.check_received(&r, "victim.bin", data.len() as u64, cksum(&data));

    let (hostile, _hc) = keyed(&s);
    let mut conns = Vec::new();
    for i in 0..66 {
        let mut c = s.connect();
        let mut burst = Vec::new();
        for k in 0..16 {
            burst.extend(hostile.file_frame(&format!("junk-{i}-{k}"), b"x"));
        }
        c.send(&burst);
        conns.push(c);
    }
    for c in conns.iter_mut() {
        for _ in 0..16 {
            c.expect(2103);
        }
    }
    victim.send_verdict(&mut vc, 1029, "victim.bin");
    let r = vc.recv();
    assert_eq!(
        r,
        Response::Ack {
            client_id: victim.id
        },
        "the victim's upload was evicted by another client's unverified uploads"
    );
    assert_eq!(
        fs::read(s.final_path(&victim.id, "victim.bin")).unwrap(),
        data
    );
    s.good_client(5000);
    drop((vc, _hc, conns));
    epilogue(&mut s);
}
