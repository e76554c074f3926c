//! Crash safety of the real `sealdrop-server` binary: `kill -9` at several
//! points of an upload, then a restart on the same data directory. After
//! every crash: no partial bytes at a final path, an earlier verified
//! version intact and byte-identical, no `.part-*` left after the restart,
//! every Verified = 1 row naming an existing file with the confirmed
//! content, and the client registered before the crash reconnects (2105).

mod common;

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use sealdrop_protocol::cksum::cksum;
use sealdrop_protocol::Response;

/// After a restart: no temporary file, the database agrees with the disk,
/// and each file in `expect` has exactly that content (None: absent).
fn check_after_restart(s: &Server, client: &Client, expect: &HashMap<&str, Option<Vec<u8>>>) {
    assert!(
        s.part_files().is_empty(),
        "left after restart: {:?}",
        s.part_files()
    );
    let rows = s.assert_db_consistent();
    for (name, want) in expect {
        let path = s.final_path(&client.id, name);
        let row = rows
            .iter()
            .find(|r| r.id == client.id.0 && r.file_name == *name);
        match want {
            Some(data) => {
                let got = fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(
                    got == *data,
                    "{name}: stored content is not the verified version"
                );
                assert_eq!(row.map(|r| r.verified), Some(1), "{name}: row {row:?}");
            }
            None => {
                assert!(
                    !path.exists(),
                    "{name}: unconfirmed bytes at the final path"
                );
                if let Some(r) = row {
                    assert_eq!(r.verified, 0, "{name}: Verified = 1 without a file");
                }
            }
        }
    }
}

/// The registered client comes back after a restart.
fn reconnects(s: &Server, client: &mut Client) -> Conn {
    let mut c = s.connect();
    match client.reconnect(&mut c) {
        Response::ReconnectAccepted { client_id, .. } => assert_eq!(client_id, client.id),
        other => panic!("reconnect after the restart: {other:?}"),
    }
    c
}

/// Sends all of a 1028 frame but its last `keep` bytes.
fn send_but_last(c: &mut Conn, frame: &[u8], keep: usize) {
    c.send(&frame[..frame.len() - keep]);
}

#[test]
fn kill9_in_the_middle_of_the_content() {
    let mut s = Server::start(&[]);
    let (mut client, mut c) = Client::setup(s.addr(), &unique_name("mid"));
    let v1 = random_bytes(1, 200_000);
    client.upload_verified(&mut c, "doc", &v1);

    // A new version of "doc" and a new file, each cut off mid-content.
    let v2 = random_bytes(2, 4 << 20);
    let mut c2 = s.connect();
    send_but_last(&mut c2, &client.file_frame("doc", &v2), 2 << 20);
    let fresh = random_bytes(3, 4 << 20);
    let mut c3 = s.connect();
    send_but_last(&mut c3, &client.file_frame("fresh.bin", &fresh), 2 << 20);
    let written = || {
        let parts = s.part_files();
        parts.len() == 2
            && parts
                .iter()
                .all(|p| fs::metadata(p).map(|m| m.len() >= 1 << 20).unwrap_or(false))
    };
    assert!(
        wait_until(Duration::from_secs(30), written),
        "both uploads are being written: {:?}",
        s.part_files()
    );
    s.kill9();
    // Right after the crash, before any clean-up: the final paths hold
    // only confirmed bytes.
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    assert!(!s.final_path(&client.id, "fresh.bin").exists());
    drop((c, c2, c3));

    s.start_again();
    let expect = HashMap::from([("doc", Some(v1.clone())), ("fresh.bin", None)]);
    check_after_restart(&s, &client, &expect);
    assert!(
        s.file_row(&client.id, "fresh.bin").is_none(),
        "a cut upload left a row"
    );
    // The client reconnects and replaces the file for real.
    let mut c = reconnects(&s, &mut client);
    client.upload_verified(&mut c, "doc", &v2);
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v2);
}

#[test]
fn kill9_after_2103_before_1029() {
    let mut s = Server::start(&[]);
    let (mut client, mut c) = Client::setup(s.addr(), &unique_name("await"));
    let v1 = random_bytes(4, 150_000);
    client.upload_verified(&mut c, "doc", &v1);
    // Complete uploads awaiting their verdict: a new version and a new name.
    let v2 = random_bytes(5, 1 << 20);
    client.send_file(&mut c, "doc", &v2);
    let r = c.recv();
    client.check_received(&r, "doc", v2.len() as u64, cksum(&v2));
    let fresh = random_bytes(6, 300_000);
    client.send_file(&mut c, "fresh.bin", &fresh);
    let r = c.recv();
    client.check_received(&r, "fresh.bin", fresh.len() as u64, cksum(&fresh));
    assert_eq!(s.part_files().len(), 2);
    s.kill9();
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    assert!(!s.final_path(&client.id, "fresh.bin").exists());
    drop(c);

    s.start_again();
    let expect = HashMap::from([("doc", Some(v1.clone())), ("fresh.bin", None)]);
    check_after_restart(&s, &client, &expect);
    // The uploads died with the process: a late 1029 finds nothing.
    let mut c = reconnects(&s, &mut client);
    client.send_verdict(&mut c, 1029, "doc");
    assert_eq!(c.recv(), Response::GeneralError);
    client.send_verdict(&mut c, 1029, "fresh.bin");
    assert_eq!(c.recv(), Response::GeneralError);
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    // Sending again works.
    client.upload_verified(&mut c, "fresh.bin", &fresh);
    check_after_restart(
        &s,
        &client,
        &HashMap::from([("doc", Some(v1)), ("fresh.bin", Some(fresh))]),
    );
}

#[test]
fn kill9_right_after_2104_keeps_the_confirmed_file() {
    let mut s = Server::start(&[]);
    let (mut client, mut c) = Client::setup(s.addr(), &unique_name("acked"));
    let a = random_bytes(7, 500_000);
    let b = random_bytes(8, 0);
    client.upload_verified(&mut c, "a.bin", &a);
    client.upload_verified(&mut c, "empty.bin", &b);
    // The 2104 of this one is the last thing before the crash.
    let a2 = random_bytes(9, 70_000);
    client.upload_verified(&mut c, "a.bin", &a2);
    s.kill9();
    drop(c);
    s.start_again();
    let expect = HashMap::from([("a.bin", Some(a2)), ("empty.bin", Some(b))]);
    check_after_restart(&s, &client, &expect);
    reconnects(&s, &mut client);
}

/// Version `i` of the file the replacing client keeps sending.
fn version(i: i64) -> Vec<u8> {
    random_bytes(1000 + i as u64, 40_000 + 16 * i as usize)
}

#[test]
fn kill9_at_arbitrary_points_of_repeated_replacements() {
    let mut s = Server::start(&[]);
    let (mut client, c) = Client::setup(s.addr(), &unique_name("repl"));
    let mut conn = Some(c);
    let mut confirmed: Option<i64> = None;
    let mut next = 0i64;
    for (round, delay_ms) in [120u64, 350, 600, 900].into_iter().enumerate() {
        let acked = Arc::new(AtomicI64::new(-1));
        let sent_ok = Arc::new(AtomicI64::new(-1));
        let worker = {
            let (acked, sent_ok) = (acked.clone(), sent_ok.clone());
            let mut c = conn.take().unwrap();
            let id = client.id;
            let key = client.key().clone();
            let name = client.name.clone();
            let first = next;
            thread::spawn(move || {
                let mut me = Client::new(&name);
                me.id = id;
                me.aes = Some(key);
                for i in first..first + 10_000 {
                    let data = version(i);
                    if c.try_send(&me.file_frame("v.bin", &data)).is_err() {
                        return;
                    }
                    match c.try_recv(Duration::from_secs(20)) {
                        Ok(r) => me.check_received(&r, "v.bin", data.len() as u64, cksum(&data)),
                        Err(_) => return,
                    }
                    sent_ok.store(i, Ordering::SeqCst);
                    me.send_verdict(&mut c, 1029, "v.bin");
                    match c.try_recv(Duration::from_secs(20)) {
                        Ok(Response::Ack { .. }) => acked.store(i, Ordering::SeqCst),
                        Ok(other) => panic!("1029 of version {i}: {other:?}"),
                        Err(_) => return,
                    }
                }
            })
        };
        thread::sleep(Duration::from_millis(delay_ms));
        s.kill9();
        join_all(vec![worker], Duration::from_secs(30));
        let (a, v) = (acked.load(Ordering::SeqCst), sent_ok.load(Ordering::SeqCst));
        eprintln!("round {round}: killed after {delay_ms} ms, last acked {a}, last 1029 sent {v}");
        s.start_again();
        assert!(
            s.part_files().is_empty(),
            "round {round}: {:?}",
            s.part_files()
        );
        s.assert_db_consistent();
        let path = s.final_path(&client.id, "v.bin");
        // Acknowledged versions are durable; a 1029 without its 2104 may
        // or may not have been applied; nothing else may be there.
        let mut allowed: Vec<Option<i64>> = vec![if a >= 0 { Some(a) } else { confirmed }];
        if v > a {
            allowed.push(Some(v));
        }
        let found = match fs::read(&path) {
            Err(_) => None,
            Ok(bytes) => Some(
                allowed
                    .iter()
                    .flatten()
                    .copied()
                    .find(|i| version(*i) == bytes)
                    .unwrap_or_else(|| panic!("round {round}: v.bin is none of {allowed:?}")),
            ),
        };
        assert!(
            allowed.contains(&found),
            "round {round}: found {found:?}, allowed {allowed:?}"
        );
        if found.is_some() {
            assert_eq!(s.file_row(&client.id, "v.bin").unwrap().verified, 1);
        }
        confirmed = found;
        next = v.max(a).max(next) + 1;
        conn = Some(reconnects(&s, &mut client));
    }
    assert!(confirmed.is_some(), "no version was ever confirmed");
}

#[test]
fn sigterm_with_uploads_awaiting_a_verdict_leaves_no_temporary_file() {
    let mut s = Server::start(&["--drain-timeout", "1"]);
    let (mut client, mut c) = Client::setup(s.addr(), &unique_name("term"));
    let v1 = random_bytes(11, 10_000);
    client.upload_verified(&mut c, "doc", &v1);
    let v2 = random_bytes(12, 20_000);
    client.send_file(&mut c, "doc", &v2);
    c.expect(2103);
    s.stop();
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    drop(c);
    s.start_again();
    check_after_restart(&s, &client, &HashMap::from([("doc", Some(v1))]));
    reconnects(&s, &mut client);
}

#[test]
fn stored_file_named_like_a_temporary_file_survives_a_restart() {
    let mut s = Server::start(&[]);
    let (mut client, mut c) = Client::setup(s.addr(), &unique_name("sneaky"));
    let name = ".part-0123456789abcdef";
    let data = random_bytes(70, 3000);
    client.upload_verified(&mut c, name, &data);
    drop(c);
    s.kill9();
    s.start_again();
    // The start-up clean-up removes crash leftovers, not a confirmed file.
    assert_eq!(fs::read(s.final_path(&client.id, name)).unwrap(), data);
    assert_eq!(s.file_row(&client.id, name).unwrap().verified, 1);
    let mut c = reconnects(&s, &mut client);
    client.upload_verified(&mut c, "plain.bin", b"plain");
    let parts: Vec<_> = s
        .part_files()
        .into_iter()
        .filter(|p| p.file_name().unwrap() != name)
        .collect();
    assert!(parts.is_empty(), "{parts:?}");
}
