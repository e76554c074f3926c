//! One flipped byte in the encrypted content of a 1028, between an
//! in-test client and an in-process server (a proxy thread on
//! 127.0.0.1 rewrites the byte on its way). The server must never store
//! the damaged content as verified: it answers 2103 with the cksum of
//! what it decrypted (the client sees the mismatch, sends 1030 and sends
//! again) or 2107 when the flip breaks the padding. The client's own
//! decryption of the flipped ciphertext predicts which, and the cksum.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use sealdrop_protocol::cksum::cksum;
use sealdrop_protocol::crypto::{cbc_decrypt, cbc_encrypt};
use sealdrop_protocol::Response;

/// Which 1028s the proxy damages, and how.
#[derive(Clone, Copy, Debug, Default)]
struct Plan {
    /// Offset into the encrypted content, and the XOR mask.
    flip: Option<(usize, u8)>,
    /// How many of the next 1028s to damage (`u32::MAX`: every one).
    sends: u32,
}

#[derive(Default)]
struct Shared {
    plan: Plan,
    /// 1028s seen and 1028s damaged so far.
    files_seen: u32,
    files_flipped: u32,
}

/// A proxy for one connection: client -> proxy -> server. It parses the
/// client's request stream (23-byte headers; a 1028's 259-byte prefix and
/// its content) and flips one content byte as `Plan` says; everything
/// else, and the server's replies, pass unchanged.
struct Proxy {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

const HEADER: usize = 23;
const FILE_PREFIX: usize = 259;
/// Bound on every proxy read and write, so no thread outlives a test.
const PROXY_TIMEOUT: Duration = Duration::from_secs(60);

impl Proxy {
    fn start(server: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let sh = Arc::clone(&shared);
        thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let client = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return;
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            };
            client.set_nonblocking(false).unwrap();
            let upstream = TcpStream::connect(server).unwrap();
            for s in [&client, &upstream] {
                s.set_read_timeout(Some(PROXY_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(PROXY_TIMEOUT)).unwrap();
                let _ = s.set_nodelay(true);
            }
            let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            thread::spawn(move || pump_plain(u2, c2));
            pump_requests(client, upstream, &sh);
        });
        Proxy { addr, shared }
    }

    fn set(&self, plan: Plan) {
        self.shared.lock().unwrap().plan = plan;
    }

    fn counts(&self) -> (u32, u32) {
        let s = self.shared.lock().unwrap();
        (s.files_seen, s.files_flipped)
    }
}

/// Server -> client: bytes as they are.
fn pump_plain(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Where the client's stream is.
enum At {
    /// Inside a header (bytes so far).
    Header(Vec<u8>),
    /// Inside a payload that passes unchanged.
    Skip(usize),
    /// Inside a 1028's prefix, then `content` bytes of content.
    Prefix { left: usize, content: usize },
    /// Inside a 1028's content.
    Content {
        pos: usize,
        len: usize,
        flip: Option<(usize, u8)>,
    },
}

/// Client -> server, flipping one content byte of the planned 1028s.
fn pump_requests(mut from: TcpStream, mut to: TcpStream, shared: &Mutex<Shared>) {
    let mut at = At::Header(Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    'read: loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let mut i = 0;
        while i < chunk.len() {
            let rest = chunk.len() - i;
            match &mut at {
                At::Header(h) => {
                    let take = (HEADER - h.len()).min(rest);
                    h.extend_from_slice(&chunk[i..i + take]);
                    i += take;
                    if h.len() == HEADER {
                        let code = u16::from_le_bytes([h[17], h[18]]);
                        let size = u32::from_le_bytes([h[19], h[20], h[21], h[22]]) as usize;
                        at = if code == 1028 && size >= FILE_PREFIX {
                            At::Prefix {
                                left: FILE_PREFIX,
                                content: size - FILE_PREFIX,
                            }
                        } else if size == 0 {
                            At::Header(Vec::new())
                        } else {
                            At::Skip(size)
                        };
                    }
                }
                At::Skip(left) => {
                    let take = (*left).min(rest);
                    i += take;
                    *left -= take;
                    if *left == 0 {
                        at = At::Header(Vec::new());
                    }
                }
                At::Prefix { left, content } => {
                    let take = (*left).min(rest);
                    i += take;
                    *left -= take;
                    if *left == 0 {
                        let mut s = shared.lock().unwrap();
                        s.files_seen += 1;
                        let flip = if s.plan.sends > 0 && s.plan.flip.is_some() {
                            if s.plan.sends != u32::MAX {
                                s.plan.sends -= 1;
                            }
                            s.files_flipped += 1;
                            s.plan.flip
                        } else {
                            None
                        };
                        at = if *content == 0 {
                            At::Header(Vec::new())
                        } else {
                            At::Content {
                                pos: 0,
                                len: *content,
                                flip,
                            }
                        };
                    }
                }
                At::Content { pos, len, flip } => {
                    let take = (*len - *pos).min(rest);
                    if let Some((off, mask)) = *flip {
                        if off >= *pos && off < *pos + take {
                            chunk[i + off - *pos] ^= mask;
                        }
                    }
                    i += take;
                    *pos += take;
                    if *pos == *len {
                        at = At::Header(Vec::new());
                    }
                }
            }
        }
        if to.write_all(chunk).is_err() {
            break 'read;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Plaintext size of every flipped upload: 64 KiB, so 4097 cipher blocks
/// (the last one all padding).
const LEN: usize = 64 * 1024;
const CONTENT: usize = LEN + 16;
const BLOCKS: usize = CONTENT / 16;

/// What the server must answer to a damaged 1028, predicted by decrypting
/// the damaged ciphertext ourselves: `Some(cksum)` of the plaintext it
/// yields (a 2103 with that cksum), or None (bad padding: 2107).
fn predict(client: &Client, ct: &[u8], off: usize, mask: u8) -> Option<(u32, usize)> {
    let mut bad = ct.to_vec();
    bad[off] ^= mask;
    cbc_decrypt(client.key(), &bad)
        .ok()
        .map(|p| (cksum(&p), p.len()))
}

/// After a damaged send: nothing new at the final path, the row as before.
fn assert_untouched(s: &InProcess, client: &Client, name: &str, before: &Option<Vec<u8>>) {
    let got = std::fs::read(s.final_path(&client.id, name)).ok();
    assert!(
        got == *before,
        "{name}: the final path changed after a damaged send"
    );
    let row = s.file_row(&client.id, name);
    match before {
        Some(_) => assert_eq!(row.map(|r| r.verified), Some(1), "{name}"),
        None => assert!(row.is_none_or(|r| r.verified == 0), "{name}"),
    }
}

/// After the good resend: stored, verified, byte-identical, no leftovers.
fn assert_stored(s: &InProcess, client: &Client, name: &str, data: &[u8]) {
    let got = std::fs::read(s.final_path(&client.id, name)).unwrap();
    assert!(got == data, "{name}: stored bytes differ from the original");
    assert_eq!(s.file_row(&client.id, name).unwrap().verified, 1, "{name}");
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    s.assert_db_consistent();
}

/// The content offsets flipped: both ends of the first block, the middle,
/// the blocks just before the padding block, the padding block itself,
/// and 50 offsets spread over the whole content.
fn offsets() -> Vec<(usize, u8)> {
    let last = (BLOCKS - 1) * 16;
    let mut v = vec![
        (0, 0x01),
        (7, 0x80),
        (15, 0xff),
        (16, 0x01),
        (CONTENT / 2, 0x01),
        (CONTENT / 2 + 9, 0x5a),
        ((BLOCKS - 3) * 16 + 15, 0x01),
        // Byte 15 of the block before the padding block flips the last
        // padding byte: 0x10 ^ 0x01 = 0x11 is no padding...
        (last - 1, 0x01),
        // ...but 0x10 ^ 0x11 = 0x01 is a valid one-byte padding: the
        // plaintext decrypts 15 bytes longer, with a garbled block.
        (last - 1, 0x11),
        (last - 16, 0x04),
        (last, 0x01),
        (last + 7, 0x40),
        (last + 15, 0x01),
        (last + 15, 0xff),
    ];
    for i in 0..50 {
        let off = i * (CONTENT - 1) / 49;
        v.push((off, 1u8 << (i % 8)));
    }
    v
}

#[test]
fn one_flipped_byte_is_caught_and_the_clean_resend_is_stored() {
    let _g = heavy();
    let mut s = InProcess::start();
    let proxy = Proxy::start(s.addr());
    let (client, mut c) = Client::setup(proxy.addr, &unique_name("flip"));
    let mut same: Option<Vec<u8>> = None;
    let (mut mismatches, mut refusals) = (0, 0);
    let t = Instant::now();
    let runs = offsets();
    for (run, &(off, mask)) in runs.iter().enumerate() {
        // Every other run replaces one file; the others are new names.
        let name = if run % 2 == 0 {
            "same.bin".to_string()
        } else {
            format!("new-{run}.bin")
        };
        let before = if run % 2 == 0 { same.clone() } else { None };
        let data = random_bytes(7000 + run as u64, LEN);
        let ct = cbc_encrypt(client.key(), &data);
        assert_eq!(ct.len(), CONTENT);
        let frame = file_frame(&client.id, &fixed(&name), &ct);
        let expected = predict(&client, &ct, off, mask);

        proxy.set(Plan {
            flip: Some((off, mask)),
            sends: 1,
        });
        c.send(&frame);
        let r = c.try_recv(Duration::from_secs(20));
        match (expected, &r) {
            (Some((ck, _)), Ok(Response::FileReceived { cksum: got, .. })) => {
                assert_eq!(*got, ck, "run {run} (offset {off}): 2103 cksum");
                assert_ne!(*got, cksum(&data), "run {run}: the flip went unnoticed");
                mismatches += 1;
                assert_untouched(&s, &client, &name, &before);
                // CRC mismatch: 1030 (no reply) and the file again.
                client.send_verdict(&mut c, 1030, &name);
            }
            (None, Ok(Response::GeneralError)) => {
                refusals += 1;
                assert_untouched(&s, &client, &name, &before);
                assert!(s.part_files().is_empty(), "{:?}", s.part_files());
                // 2107: the client retries the same request.
            }
            (want, got) => panic!(
                "run {run}: flip {mask:#04x} at content offset {off} (block {} of {BLOCKS}): \
                 expected {}, got {got:?}",
                off / 16,
                match want {
                    Some((ck, n)) => format!("2103 with cksum {ck} ({n} bytes)"),
                    None => "2107 (bad padding)".to_string(),
                }
            ),
        }
        c.send(&frame);
        let r = c.recv();
        client.check_received(&r, &name, LEN as u64, cksum(&data));
        assert_untouched(&s, &client, &name, &before);
        client.verify(&mut c, &name);
        assert_stored(&s, &client, &name, &data);
        if run % 2 == 0 {
            same = Some(data);
        }
    }
    let (seen, flipped) = proxy.counts();
    assert_eq!(flipped as usize, runs.len());
    assert_eq!(seen as usize, 2 * runs.len());
    eprintln!(
        "{} runs in {:?}: {mismatches} cksum mismatches, {refusals} padding refusals",
        runs.len(),
        t.elapsed()
    );
    // The padding block's flips (and the padding byte's) are the refusals.
    assert!(
        refusals >= 5 && mismatches >= 50,
        "{refusals} / {mismatches}"
    );
    s.good_client(5000);
    s.assert_alive();
}

/// Sends `data` as `name` through a proxy that damages every send: four
/// sends, each answered 2103 with a wrong cksum, then 1031 -> 2104.
fn give_up_after_four(c: &mut Conn, client: &Client, name: &str, data: &[u8]) {
    let frame = client.file_frame(name, data);
    for send in 1..=4 {
        c.send(&frame);
        match c.recv() {
            Response::FileReceived { cksum: got, .. } => {
                assert_ne!(got, cksum(data), "send {send}: damage went unnoticed")
            }
            other => panic!("send {send}: {other:?}"),
        }
        if send < 4 {
            client.send_verdict(c, 1030, name);
        }
    }
    client.send_verdict(c, 1031, name);
    match c.recv() {
        Response::Ack { client_id } => assert_eq!(client_id, client.id),
        other => panic!("1031: {other:?}"),
    }
}

#[test]
fn damage_on_every_send_ends_with_1031_and_nothing_verified() {
    let _g = heavy();
    let mut s = InProcess::start();
    let proxy = Proxy::start(s.addr());
    let (client, mut c) = Client::setup(proxy.addr, &unique_name("always"));
    let old = random_bytes(1, 10_000);
    client.upload_verified(&mut c, "kept.bin", &old);

    proxy.set(Plan {
        flip: Some((CONTENT / 3, 0x20)),
        sends: u32::MAX,
    });
    // A new name and a new version of a verified file.
    let fresh = random_bytes(2, LEN);
    give_up_after_four(&mut c, &client, "fresh.bin", &fresh);
    let v2 = random_bytes(3, LEN);
    give_up_after_four(&mut c, &client, "kept.bin", &v2);
    assert_eq!(proxy.counts(), (9, 8), "1028s seen, damaged");
    assert!(!s.final_path(&client.id, "fresh.bin").exists());
    assert!(s
        .file_row(&client.id, "fresh.bin")
        .is_none_or(|r| r.verified == 0));
    assert_eq!(
        std::fs::read(s.final_path(&client.id, "kept.bin")).unwrap(),
        old
    );
    assert_eq!(s.file_row(&client.id, "kept.bin").unwrap().verified, 1);
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    s.assert_db_consistent();

    // Damage in the padding block on every send: 2107 each time (unless
    // the garbled block happens to end in valid padding: then 2103 with a
    // wrong cksum); the client's 3 retries change nothing.
    let off = CONTENT - 5;
    proxy.set(Plan {
        flip: Some((off, 0x01)),
        sends: u32::MAX,
    });
    let data = random_bytes(4, LEN);
    let ct = cbc_encrypt(client.key(), &data);
    let expected = predict(&client, &ct, off, 0x01);
    let frame = file_frame(&client.id, &fixed("pad.bin"), &ct);
    for send in 1..=4 {
        c.send(&frame);
        match (expected, c.recv()) {
            (None, Response::GeneralError) => {}
            (Some((ck, _)), Response::FileReceived { cksum: got, .. }) => {
                assert_eq!(got, ck);
                client.send_verdict(&mut c, 1030, "pad.bin");
            }
            (want, got) => panic!("send {send}: expected {want:?}, got {got:?}"),
        }
    }
    assert!(!s.final_path(&client.id, "pad.bin").exists());
    assert!(s
        .file_row(&client.id, "pad.bin")
        .is_none_or(|r| r.verified == 0));
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());

    // The damage stops: the same connection stores the file.
    proxy.set(Plan::default());
    client.upload_verified(&mut c, "pad.bin", &data);
    assert_stored(&s, &client, "pad.bin", &data);
    s.good_client(5000);
    s.assert_alive();
}
