//! End-to-end tests of the server over loopback: byte-exact golden
//! vectors, full client flows, restarts, concurrency and stalled peers on
//! an in-process server; SIGTERM and SIGINT draining with sd_notify,
//! `--check-config`, and the descriptors of a busy process on the real
//! `sealdrop-server` binary.

mod common;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use sealdrop_protocol::cksum::cksum;
use sealdrop_protocol::crypto::{cbc_encrypt, encrypted_len, CbcEncryptor, TestEntropy};
use sealdrop_protocol::message::encode_file_header;
use sealdrop_protocol::{ClientId, Request, Response};
use sealdrop_server::direct::direct_writers_in_use;

/// Sends a vector frame and reads exactly `reply_len` raw bytes.
fn exchange_raw(c: &mut Conn, frame: &[u8], reply_len: usize) -> Vec<u8> {
    c.send(frame);
    c.recv_raw(reply_len)
}

#[test]
fn vectors_are_answered_byte_for_byte_on_a_seeded_database() {
    let mut s = InProcess::start_prepared(|_| {}, seed_vector_client);
    let id = vector_client_id();
    let final_path = s.final_path(&id, "plain_1000.bin");
    let plain = vector("plain_1000.bin");

    let mut c = s.connect();
    // 1028 -> exactly response_2103; nothing at the final path before 1029.
    let r = exchange_raw(&mut c, &vector("request_1028.bin"), 286);
    assert_eq!(r, vector("response_2103.bin"), "2103 bytes");
    assert!(!final_path.exists(), "file at its final path before 1029");
    assert_eq!(
        s.part_files().len(),
        1,
        "upload awaits its verdict in a temp file"
    );
    // 1029 -> exactly response_2104, the stored file is plain_1000.bin.
    let r = exchange_raw(&mut c, &vector("request_1029.bin"), 23);
    assert_eq!(r, vector("response_2104.bin"), "2104 bytes after 1029");
    assert_eq!(fs::read(&final_path).unwrap(), plain);
    let row = s.file_row(&id, "plain_1000.bin").expect("files row");
    assert_eq!(row.verified, 1);
    assert_eq!(row.path_name, final_path.to_str().unwrap());

    // 1028 again, then 1031 (give up) -> exactly response_2104; the
    // verified file is untouched and the temporary file is gone.
    let r = exchange_raw(&mut c, &vector("request_1028.bin"), 286);
    assert_eq!(r, vector("response_2103.bin"));
    let r = exchange_raw(&mut c, &vector("request_1031.bin"), 23);
    assert_eq!(r, vector("response_2104.bin"), "2104 bytes after 1031");
    assert_eq!(fs::read(&final_path).unwrap(), plain);
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());

    // 1028, 1030 (no reply), 1028 again -> 2103, 1029 -> 2104.
    let r = exchange_raw(&mut c, &vector("request_1028.bin"), 286);
    assert_eq!(r, vector("response_2103.bin"));
    c.send(&vector("request_1030.bin"));
    c.expect_silence(Duration::from_millis(300));
    let r = exchange_raw(&mut c, &vector("request_1028.bin"), 286);
    assert_eq!(r, vector("response_2103.bin"), "2103 after 1030 + resend");
    let r = exchange_raw(&mut c, &vector("request_1029.bin"), 23);
    assert_eq!(r, vector("response_2104.bin"));
    assert_eq!(fs::read(&final_path).unwrap(), plain);

    // 1025 of the keyed name "alice" -> exactly response_2101.
    let r = exchange_raw(&mut c, &vector("request_1025.bin"), 7);
    assert_eq!(r, vector("response_2101.bin"), "2101 for a taken name");

    // 1027 -> 2105: the first 23 bytes are fixed, the rest decrypts with
    // the vector private key to a fresh 16-byte key that is now stored.
    let r = exchange_raw(&mut c, &vector("request_1027.bin"), 151);
    assert_eq!(
        r[..23],
        vector("response_2105.bin")[..23],
        "2105 header and id"
    );
    let key = vector_private_key()
        .decrypt_aes_key(&r[23..], &mut TestEntropy::new(5))
        .expect("2105 key decrypts with the vector key");
    let row = s.client_row("alice").unwrap();
    assert_eq!(
        row.aes_key.as_deref(),
        Some(key.as_bytes()),
        "AESKey is the last key sent"
    );
    assert!(
        row.last_seen.unwrap().as_str() > "2024-01-01T00:00:00Z",
        "LastSeen updated"
    );
    // This connection now uses the new key: the same plaintext under it
    // gives the same 2103 bytes.
    let frame = file_frame(&id, &fixed("plain_1000.bin"), &cbc_encrypt(&key, &plain));
    let r = exchange_raw(&mut c, &frame, 286);
    assert_eq!(r, vector("response_2103.bin"), "2103 under the 2105 key");
    // Give it up: 1031 -> 2104, the verified file stays as it was.
    let r = exchange_raw(&mut c, &vector("request_1031.bin"), 23);
    assert_eq!(r, vector("response_2104.bin"));
    assert_eq!(fs::read(&final_path).unwrap(), plain);
    assert!(s.part_files().is_empty());
    drop(c);

    // A fresh server does not know the id: request_1027 -> response_2106.
    let fresh = InProcess::start();
    let mut c = fresh.connect();
    let r = exchange_raw(&mut c, &vector("request_1027.bin"), 23);
    assert_eq!(
        r,
        vector("response_2106.bin"),
        "2106 bytes on a fresh server"
    );
    s.assert_alive();
}

#[test]
fn vector_session_of_a_new_client_matches_the_transcript_headers() {
    // request_1025 on a fresh server -> 2100 (random id), then the vector
    // 1026 cannot be used (it carries the vector id), so the rest of the
    // transcript is checked on a database where "alice" is unkeyed.
    let s = InProcess::start();
    let mut c = s.connect();
    let r = exchange_raw(&mut c, &vector("request_1025.bin"), 23);
    assert_eq!(r[..7], vector("response_2100.bin")[..7], "2100 header");
    assert_ne!(r[7..], [0u8; 16], "a real id is issued");

    let s2 = InProcess::start_prepared(
        |_| {},
        |d| {
            seed_vector_client(d);
            let db = rusqlite::Connection::open(d.join("defensive.db")).unwrap();
            db.execute("UPDATE clients SET PublicKey = NULL, AESKey = NULL", ())
                .unwrap();
        },
    );
    let mut c = s2.connect();
    let r = exchange_raw(&mut c, &vector("request_1026.bin"), 151);
    assert_eq!(
        r[..23],
        vector("response_2102.bin")[..23],
        "2102 header and id"
    );
    let key = vector_private_key()
        .decrypt_aes_key(&r[23..], &mut TestEntropy::new(6))
        .expect("2102 key decrypts");
    let plain = vector("plain_1000.bin");
    let id = vector_client_id();
    let frame = file_frame(&id, &fixed("plain_1000.bin"), &cbc_encrypt(&key, &plain));
    let r = exchange_raw(&mut c, &frame, 286);
    assert_eq!(r, vector("response_2103.bin"));
    let r = exchange_raw(&mut c, &vector("request_1029.bin"), 23);
    assert_eq!(r, vector("response_2104.bin"));
    assert_eq!(
        fs::read(s2.final_path(&id, "plain_1000.bin")).unwrap(),
        plain
    );
}

#[test]
fn new_client_full_flow_then_returning_client_after_restart() {
    let _heavy = heavy();
    let mut s = InProcess::start();
    let scratch = s.scratch();
    let files = [
        ("empty.bin", 0u64),
        ("hundred_k.bin", 100_000),
        ("fifty_m.bin", 50 * 1024 * 1024),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        write_random_file(&scratch.join(name), 100 + i as u64, *len);
    }
    let mut c = s.connect();
    let mut client = Client::with_generated_key(&unique_name("full"), 42);
    client.register(&mut c);
    client.exchange_key(&mut c);
    let t = Instant::now();
    for (name, _) in &files {
        client.upload_path_verified(&mut c, name, &scratch.join(name));
    }
    eprintln!("three uploads took {:?}", t.elapsed());
    drop(c);
    for (name, _) in &files {
        assert_same_file(&scratch.join(name), &s.final_path(&client.id, name));
        let row = s.file_row(&client.id, name).expect("files row");
        assert_eq!(row.verified, 1, "{name}");
    }
    let row = s.client_row(&client.name).expect("clients row");
    assert_eq!(row.id, client.id.0);
    assert_eq!(row.public_key.as_deref(), Some(&client.spki[..]));
    assert!(row.last_seen.is_some());
    s.assert_db_consistent();
    assert!(s.part_files().is_empty());

    // Restart: the returning client reconnects (2105) and uploads again.
    s.restart();
    let mut c = s.connect();
    match client.reconnect(&mut c) {
        Response::ReconnectAccepted { .. } => {}
        other => panic!("reconnect after restart: {other:?}"),
    }
    let data = random_bytes(77, 12345);
    client.upload_verified(&mut c, "after_restart.bin", &data);
    assert_eq!(
        fs::read(s.final_path(&client.id, "after_restart.bin")).unwrap(),
        data
    );
    for (name, _) in &files {
        assert_same_file(&scratch.join(name), &s.final_path(&client.id, name));
    }
    assert_eq!(
        s.assert_db_consistent()
            .iter()
            .filter(|r| r.verified == 1)
            .count(),
        4
    );
}

#[test]
fn client_using_a_new_connection_per_step_succeeds() {
    let s = InProcess::start();
    let (mut client, c) = Client::setup(s.addr(), &unique_name("steps"));
    drop(c);
    // 1027 on one connection.
    let mut c1 = s.connect();
    assert!(matches!(
        client.reconnect(&mut c1),
        Response::ReconnectAccepted { .. }
    ));
    drop(c1);
    // 1028 on a second: no key exchanged here, so the client's last key.
    let data = random_bytes(3, 70_000);
    let mut c2 = s.connect();
    client.send_file(&mut c2, "steps.bin", &data);
    let r = c2.recv();
    client.check_received(&r, "steps.bin", data.len() as u64, cksum(&data));
    drop(c2);
    // 1029 on a third.
    let mut c3 = s.connect();
    client.verify(&mut c3, "steps.bin");
    assert_eq!(
        fs::read(s.final_path(&client.id, "steps.bin")).unwrap(),
        data
    );
    assert_eq!(s.file_row(&client.id, "steps.bin").unwrap().verified, 1);
    assert!(s.part_files().is_empty());
}

/// A process of its own: the check counts the server's descriptors.
#[test]
fn thousand_open_connections_while_a_real_upload_completes() {
    let _heavy = heavy();
    let mut s = Server::start(&[]);
    let (client, mut up) = Client::setup(s.addr(), &unique_name("busy"));
    let mut idle: Vec<Conn> = (0..1000).map(|_| s.connect()).collect();
    assert!(
        s.wait_log("(1001 open)", Duration::from_secs(20)),
        "server did not report 1001 open connections"
    );
    let data = random_bytes(11, 4 << 20);
    client.upload_verified(&mut up, "while_busy.bin", &data);
    assert_eq!(
        fs::read(s.final_path(&client.id, "while_busy.bin")).unwrap(),
        data
    );
    // Every other held connection now does a reconnect; the rest stay idle.
    let req = request_frame(
        &client.id,
        &Request::Reconnect {
            name: client.name_field(),
        },
    );
    for c in idle.iter_mut().step_by(2) {
        c.send(&req);
    }
    for c in idle.iter_mut().step_by(2) {
        match c.recv() {
            Response::ReconnectAccepted { client_id, .. } => assert_eq!(client_id, client.id),
            other => panic!("1027 on a held connection: {other:?}"),
        }
    }
    // The idle ones are still open and served.
    for c in idle.iter_mut().skip(1).step_by(100) {
        c.send(&req);
        c.expect(2105);
    }
    let fds_busy = s.fd_count();
    assert!(fds_busy > 1000, "server holds {fds_busy} descriptors");
    drop(idle);
    drop(up);
    assert!(
        wait_until(Duration::from_secs(15), || s.fd_count() < 100),
        "descriptors not released: {}",
        s.fd_count()
    );
    s.assert_alive();
    s.good_client(1000);
}

#[test]
fn hundred_concurrent_clients_each_upload_one_mib() {
    let _heavy = heavy();
    let s = InProcess::start();
    let addr = s.addr();
    let handles: Vec<_> = (0..100u64)
        .map(|i| {
            thread::spawn(move || {
                let (client, mut c) = Client::setup(addr, &format!("conc-{i}"));
                let data = random_bytes(1000 + i, 1 << 20);
                client.upload_verified(&mut c, &format!("file-{i}.bin"), &data);
                (client.id, data)
            })
        })
        .collect();
    let results = join_all(handles, Duration::from_secs(150));
    for (i, (id, data)) in results.iter().enumerate() {
        let stored = fs::read(s.final_path(id, &format!("file-{i}.bin"))).unwrap();
        assert!(stored == *data, "client {i}: stored file differs");
    }
    let rows = s.assert_db_consistent();
    assert_eq!(rows.iter().filter(|r| r.verified == 1).count(), 100);
    assert!(s.part_files().is_empty());
}

/// A process of its own: the check counts the server's descriptors.
#[test]
fn two_hundred_stalled_half_headers_are_closed_by_the_header_timeout() {
    let _heavy = heavy();
    let s = Server::start(&["--header-timeout", "1"]);
    let half = &header(&ClientId([7; 16]), 3, 1027, 255)[..11];
    let mut stalled: Vec<Conn> = (0..200)
        .map(|_| {
            let mut c = s.connect();
            c.send(half);
            c
        })
        .collect();
    // A real client completes meanwhile.
    s.good_client(64 * 1024);
    let deadline = Instant::now() + Duration::from_secs(8);
    for (i, c) in stalled.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.wait_closed(left) {
            Ok(bytes) => assert!(bytes.is_empty(), "conn {i}: got {bytes:?} before close"),
            Err(_) => panic!("stalled connection {i} still open 8 s after a 1 s header timeout"),
        }
    }
    assert!(wait_until(Duration::from_secs(5), || s.fd_count() < 50));
}

/// Receives one datagram (bounded).
fn recv_datagram(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

/// Streams a 1028 of `total` plaintext bytes (generated on the fly) at
/// about `rate` bytes per second, stopping quietly when the server cuts
/// the connection. Returns the plaintext cksum and length if everything
/// was sent.
fn trickle_upload(
    c: &mut Conn,
    client: &Client,
    name: &str,
    total: u64,
    rate: u64,
    seed: u64,
    sent: &AtomicU64,
) -> Option<u32> {
    let mut head = Vec::new();
    encode_file_header(
        REV,
        &client.id,
        encrypted_len(total) as u32,
        &fixed(name),
        &mut head,
    );
    c.try_send(&head).ok()?;
    let mut enc = CbcEncryptor::new(client.key());
    let mut ck = sealdrop_protocol::cksum::Cksum::new();
    let mut rng = TestEntropy::new(seed);
    let piece = 32 * 1024u64;
    let start = Instant::now();
    let mut done = 0u64;
    let mut plain = vec![0u8; piece as usize];
    let mut out = Vec::new();
    while done < total {
        let n = piece.min(total - done) as usize;
        sealdrop_protocol::crypto::Entropy::fill_bytes(&mut rng, &mut plain[..n]);
        ck.update(&plain[..n]);
        out.clear();
        enc.update(&plain[..n], &mut out);
        c.try_send(&out).ok()?;
        done += n as u64;
        sent.store(done, Ordering::SeqCst);
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    out.clear();
    enc.finish(&mut out);
    c.try_send(&out).ok()?;
    Some(ck.finish())
}

fn content_of(seed: u64, len: u64) -> Vec<u8> {
    random_bytes(seed, len as usize)
}

#[test]
fn sigterm_drains_uploads_notifies_systemd_and_exits_zero() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    let opts = ServerOpts::args(&[
        "--drain-timeout",
        "3",
        "--min-rate",
        "1024",
        "--progress-window",
        "1",
    ])
    .env("NOTIFY_SOCKET", sock_path.to_str().unwrap());
    let mut s = Server::spawn_with(opts, |_| {});

    // READY=1 comes once the port accepts connections: connect right away
    // to the address its STATUS names.
    let ready = recv_datagram(&notify, Duration::from_secs(20)).expect("READY=1 datagram");
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "first datagram: {ready:?}"
    );
    let addr: SocketAddr = ready
        .lines()
        .find_map(parse_listening)
        .expect("STATUS names the address");
    TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .expect("port accepts connections once READY=1 is sent");
    assert_eq!(s.wait_listening(), addr);

    let (client, c_big) = Client::setup(addr, &unique_name("drain"));
    let client = Arc::new(client);
    // A 50 MB upload trickled at ~500 KB/s (far above --min-rate, and slow
    // enough for a debug build to keep up): it cannot finish within the
    // 3 s drain.
    let big_sent = Arc::new(AtomicU64::new(0));
    let big_reply = Arc::new(AtomicBool::new(false));
    let big = {
        let (client, sent, got) = (client.clone(), big_sent.clone(), big_reply.clone());
        let mut c = c_big;
        thread::spawn(move || {
            let total = 50 * 1024 * 1024;
            let ck = trickle_upload(&mut c, &client, "big.bin", total, 500_000, 9, &sent);
            if let Some(ck) = ck {
                if let Ok(r) = c.try_recv(Duration::from_secs(10)) {
                    client.check_received(&r, "big.bin", total, ck);
                    got.store(true, Ordering::SeqCst);
                    client.send_verdict(&mut c, 1029, "big.bin");
                    return c.try_recv(Duration::from_secs(10)).ok();
                }
            }
            None
        })
    };
    // A 300 KB upload at ~200 KB/s, started with the big one: it ends
    // during the drain, gets its 2103, and its 1029 is still served.
    let small_len = 300_000u64;
    let small = {
        let client = client.clone();
        let mut c = Conn::connect(addr);
        // This connection never exchanged a key: the client's last key.
        thread::spawn(move || {
            let sent = AtomicU64::new(0);
            let ck = trickle_upload(&mut c, &client, "small.bin", small_len, 200_000, 10, &sent)
                .expect("small upload sent in full");
            let r = c.recv();
            client.check_received(&r, "small.bin", small_len, ck);
            client.verify(&mut c, "small.bin");
        })
    };
    assert!(wait_until(Duration::from_secs(20), || big_sent
        .load(Ordering::SeqCst)
        > 300_000));
    let sigterm_at = Instant::now();
    s.signal("TERM");
    // STATUS= updates (connections, uploads) may come first.
    let stopping = std::iter::from_fn(|| recv_datagram(&notify, Duration::from_secs(10)))
        .find(|d| d.lines().any(|l| l == "STOPPING=1"));
    assert!(stopping.is_some(), "no STOPPING=1 datagram");
    // No new connections once draining.
    assert!(
        wait_until(Duration::from_secs(3), || TcpStream::connect_timeout(
            &addr,
            Duration::from_millis(200)
        )
        .is_err()),
        "still accepting after SIGTERM"
    );
    let status = s
        .wait_exit(Duration::from_secs(8))
        .expect("server exits after the drain deadline");
    let took = sigterm_at.elapsed();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        s.log_tail(30)
    );
    assert!(
        took < Duration::from_secs(6),
        "drain took {took:?} with --drain-timeout 3"
    );
    join_all(vec![small], Duration::from_secs(20));
    let big_result = join_all(vec![big], Duration::from_secs(30)).pop().unwrap();

    let small_path = s.final_path(&client.id, "small.bin");
    assert_eq!(fs::read(&small_path).unwrap(), content_of(10, small_len));
    let big_path = s.final_path(&client.id, "big.bin");
    match big_result {
        Some(Response::Ack { .. }) => {
            assert_eq!(fs::metadata(&big_path).unwrap().len(), 50 * 1024 * 1024)
        }
        _ => assert!(
            !big_path.exists(),
            "unconfirmed upload at its final path (2103 seen: {})",
            big_reply.load(Ordering::SeqCst)
        ),
    }
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    assert!(s.log_contains("shut down cleanly"));
}

#[test]
fn check_config_accepts_a_good_setup_and_refuses_unusable_data_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("data");
    let ran = check_config(&good);
    assert!(ran.status.success(), "good config refused: {}", ran.stderr);
    assert!(
        ran.stdout.contains("configuration ok"),
        "stdout: {}",
        ran.stdout
    );

    // A data "directory" that is a regular file.
    let file = tmp.path().join("regular-file");
    fs::write(&file, b"not a directory").unwrap();
    // A folder under /proc, which nobody can create.
    let proc_dir = std::path::PathBuf::from("/proc/sealdrop-no-such-dir/data");
    // A folder under a regular file.
    let under_file = file.join("sub");
    // A defensive.db that is not a database.
    let bad_db = tmp.path().join("bad-db");
    fs::create_dir_all(&bad_db).unwrap();
    fs::write(bad_db.join("defensive.db"), vec![0x42; 4096]).unwrap();
    for dir in [&file, &proc_dir, &under_file, &bad_db] {
        let ran = check_config(dir);
        assert!(!ran.status.success(), "{} accepted", dir.display());
        assert_eq!(ran.status.code(), Some(1), "{}", dir.display());
        let msg = ran.stderr.to_lowercase();
        assert!(
            msg.contains("data directory")
                && msg.contains(&dir.display().to_string().to_lowercase()),
            "unclear message for {}: {}",
            dir.display(),
            ran.stderr
        );
        assert!(!ran.stdout.contains("configuration ok"));
    }
    assert_eq!(
        fs::read(&file).unwrap(),
        b"not a directory",
        "file left alone"
    );
}

#[test]
fn check_config_refuses_bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        vec!["--max-connections", "0"],
        vec!["--max-file-size", "5G"],
        vec!["--header-timeout", "0"],
    ] {
        let ran = run_bounded(
            Command::new(SERVER_BIN)
                .arg("--check-config")
                .arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--data-dir")
                .arg(tmp.path())
                .args(&bad),
            Duration::from_secs(20),
        );
        assert!(!ran.status.success(), "{bad:?} accepted");
        assert!(!ran.stderr.trim().is_empty(), "{bad:?}: no message");
    }
}

#[test]
fn aes_key_of_a_connection_is_not_disturbed_by_another_session() {
    // §6: two sessions of one client at once must not disturb each other.
    let s = InProcess::start();
    let (mut client, mut a) = Client::setup(s.addr(), &unique_name("two"));
    let key_a = client.key().clone();
    let mut b = s.connect();
    assert!(matches!(
        client.reconnect(&mut b),
        Response::ReconnectAccepted { .. }
    ));
    assert_ne!(
        client.key().as_bytes(),
        key_a.as_bytes(),
        "2105 brings a fresh key"
    );
    // Connection A still uses its own key.
    let data_a = random_bytes(21, 5000);
    let frame = file_frame(&client.id, &fixed("a.bin"), &cbc_encrypt(&key_a, &data_a));
    a.send(&frame);
    let r = a.recv();
    client.check_received(&r, "a.bin", 5000, cksum(&data_a));
    client.verify(&mut a, "a.bin");
    // Connection B uses the 2105 key.
    let data_b = random_bytes(22, 6000);
    client.upload_verified(&mut b, "b.bin", &data_b);
    // A fresh connection uses the last key (B's).
    let mut c = s.connect();
    let data_c = random_bytes(23, 7000);
    client.upload_verified(&mut c, "c.bin", &data_c);
    assert_eq!(fs::read(s.final_path(&client.id, "a.bin")).unwrap(), data_a);
    assert_eq!(fs::read(s.final_path(&client.id, "b.bin")).unwrap(), data_b);
    assert_eq!(fs::read(s.final_path(&client.id, "c.bin")).unwrap(), data_c);
}

/// LastSeen of `name`, after setting it to an old value through a
/// writable connection of our own.
fn age_last_seen(s: &InProcess, name: &str) {
    let db = rusqlite::Connection::open(s.data_dir().join("defensive.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let n = db
        .execute(
            "UPDATE clients SET LastSeen = '2000-01-01T00:00:00Z' WHERE Name = ?1",
            [name],
        )
        .unwrap();
    assert_eq!(n, 1);
}

fn assert_fresh_last_seen(s: &InProcess, name: &str, what: &str) {
    let fresh = |v: &str| v != "2000-01-01T00:00:00Z";
    assert!(
        wait_until(Duration::from_secs(5), || s
            .client_row(name)
            .and_then(|r| r.last_seen)
            .is_some_and(|v| fresh(&v))),
        "LastSeen not updated by {what}"
    );
    let v = s.client_row(name).unwrap().last_seen.unwrap();
    let b = v.as_bytes();
    let shape_ok = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit());
    assert!(
        shape_ok,
        "LastSeen {v:?} is not UTC ISO 8601 YYYY-MM-DDTHH:MM:SSZ"
    );
}

#[test]
fn last_seen_is_updated_on_every_request_of_a_known_client() {
    let s = InProcess::start();
    let (mut client, mut c) = Client::setup(s.addr(), &unique_name("seen"));
    let name = client.name.clone();
    assert_fresh_last_seen(&s, &name, "1025/1026");

    age_last_seen(&s, &name);
    client.exchange_key(&mut c);
    assert_fresh_last_seen(&s, &name, "1026 (new key)");

    age_last_seen(&s, &name);
    assert!(matches!(
        client.reconnect(&mut c),
        Response::ReconnectAccepted { .. }
    ));
    assert_fresh_last_seen(&s, &name, "1027");

    age_last_seen(&s, &name);
    client.send_file(&mut c, "s.bin", b"seen");
    c.expect(2103);
    assert_fresh_last_seen(&s, &name, "1028");

    age_last_seen(&s, &name);
    client.send_verdict(&mut c, 1030, "s.bin");
    assert_fresh_last_seen(&s, &name, "1030");

    client.send_file(&mut c, "s.bin", b"seen");
    c.expect(2103);
    age_last_seen(&s, &name);
    client.verify(&mut c, "s.bin");
    assert_fresh_last_seen(&s, &name, "1029");

    client.send_file(&mut c, "t.bin", b"seen");
    c.expect(2103);
    age_last_seen(&s, &name);
    client.send_verdict(&mut c, 1031, "t.bin");
    c.expect(2104);
    assert_fresh_last_seen(&s, &name, "1031");

    // A refused request of a known client counts too.
    age_last_seen(&s, &name);
    client.send_verdict(&mut c, 1029, "never.bin");
    c.expect(2107);
    assert_fresh_last_seen(&s, &name, "a refused 1029");
}

#[test]
fn sigint_also_drains_and_exits_zero() {
    let mut s = Server::start(&["--drain-timeout", "5"]);
    let (client, mut c) = Client::setup(s.addr(), &unique_name("int"));
    let idle = s.connect();
    client.send_file(&mut c, "pending.bin", b"awaiting its verdict");
    c.expect(2103);
    s.signal("INT");
    // The idle connection is closed at once; the one awaiting a verdict
    // is still served.
    let mut idle = idle;
    idle.expect_closed(Duration::from_secs(5));
    client.verify(&mut c, "pending.bin");
    let st = s
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGINT");
    assert!(st.success(), "{st}");
    assert_eq!(
        fs::read(s.final_path(&client.id, "pending.bin")).unwrap(),
        b"awaiting its verdict"
    );
    assert!(s.part_files().is_empty());
}

#[test]
fn check_config_refuses_a_port_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let ran = run_bounded(
        Command::new(SERVER_BIN)
            .arg("--check-config")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .env_remove("LISTEN_FDS"),
        Duration::from_secs(20),
    );
    assert_eq!(ran.status.code(), Some(1), "port {addr} in use accepted");
    assert!(
        ran.stderr.contains(&addr.to_string()),
        "unclear message: {}",
        ran.stderr
    );
}

#[test]
fn check_config_on_the_data_dir_of_a_running_server_does_not_disturb_it() {
    // An operator validates the configuration (a pre-flight check before
    // a restart, ExecStartPre=...) while the server runs. The check must
    // not touch the running server's uploads in progress.
    let s = InProcess::start();
    let (client, mut c) = Client::setup(s.addr(), &unique_name("preflight"));
    let data = random_bytes(80, 50_000);
    client.send_file(&mut c, "inflight.bin", &data);
    let r = c.recv();
    client.check_received(&r, "inflight.bin", data.len() as u64, cksum(&data));
    assert_eq!(s.part_files().len(), 1);
    let ran = check_config(s.data_dir());
    assert!(ran.status.success(), "{}", ran.stderr);
    // It says a start now would be refused (the server holds the lock).
    assert!(
        ran.stdout
            .contains("note: a server with this configuration is running now"),
        "{}",
        ran.stdout
    );
    // The same check with the running server's own port (as
    // ExecStartPre runs it): the port is taken by that server, which is
    // what a pre-flight check expects to find, so a note and exit 0.
    let own_port = run_bounded(
        Command::new(SERVER_BIN)
            .arg("--check-config")
            .arg("--listen")
            .arg(s.addr().to_string())
            .arg("--data-dir")
            .arg(s.data_dir())
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET"),
        Duration::from_secs(20),
    );
    assert!(own_port.status.success(), "{}", own_port.stderr);
    assert!(
        own_port
            .stdout
            .contains(&format!("note: cannot listen on {}: ", s.addr()))
            && own_port
                .stdout
                .contains("in use by the running server, as expected while it runs"),
        "{}",
        own_port.stdout
    );
    assert_eq!(
        s.part_files().len(),
        1,
        "--check-config deleted a running upload's file"
    );
    client.verify(&mut c, "inflight.bin");
    assert_eq!(
        fs::read(s.final_path(&client.id, "inflight.bin")).unwrap(),
        data
    );
}

/// Uploads of at least 16 MiB are written with O_DIRECT where the data
/// directory's filesystem allows it (see server/src/direct.rs), buffered
/// otherwise. Either way: two 40 MiB uploads at once and one whose length
/// is not a multiple of the 4 KiB alignment are stored byte for byte, and
/// one cut off halfway leaves no temporary file and its earlier verified
/// version intact.
#[test]
fn large_uploads_are_stored_byte_exact_and_a_cut_one_leaves_nothing() {
    let _heavy = heavy();
    let mut s = InProcess::start();
    let addr = s.addr();
    let sizes = [40 << 20, (17 << 20) + 4097];
    // How many uploads were written with O_DIRECT at once, at most.
    let direct = Arc::new(AtomicUsize::new(0));
    let uploading = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (direct, uploading) = (direct.clone(), uploading.clone());
        thread::spawn(move || {
            while uploading.load(Ordering::SeqCst) {
                direct.fetch_max(direct_writers_in_use(), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let handles: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            thread::spawn(move || {
                let (client, mut c) = Client::setup(addr, &format!("large-{i}"));
                let data = random_bytes(70 + i as u64, len);
                client.upload_verified(&mut c, "large.bin", &data);
                (client, data)
            })
        })
        .collect();
    let results = join_all(handles, Duration::from_secs(120));
    uploading.store(false, Ordering::SeqCst);
    join_all(vec![sampler], Duration::from_secs(5));
    for (client, data) in &results {
        let stored = fs::read(s.final_path(&client.id, "large.bin")).unwrap();
        assert!(stored == *data, "stored file differs");
    }
    eprintln!("O_DIRECT used: {}", direct.load(Ordering::SeqCst) > 0);
    // A new version cut off after half its content.
    let (client, _) = &results[0];
    let mut c = s.connect();
    let v2 = random_bytes(79, 24 << 20);
    let frame = client.file_frame("large.bin", &v2);
    c.send(&frame[..frame.len() / 2]);
    thread::sleep(Duration::from_millis(300));
    drop(c);
    assert!(
        wait_until(Duration::from_secs(10), || s.part_files().is_empty()),
        "{:?}",
        s.part_files()
    );
    let stored = fs::read(s.final_path(&client.id, "large.bin")).unwrap();
    assert!(stored == results[0].1, "the verified version changed");
    s.assert_db_consistent();
    s.assert_alive();
}
