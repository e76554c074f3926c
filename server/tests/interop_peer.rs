//! Interoperability with the Python reference peer's CLIENT
//! (`shared/peer/sealdrop_peer.py client ...`, exit 0 = verified) against
//! our server, in-process.
//!
//! Skipped unless `SEALDROP_INTEROP=1`; also skipped (with a message) when
//! python3 or PyCryptodome is missing. The peer is found through
//! `SEALDROP_PEER`, else `../shared/peer/sealdrop_peer.py` beside the
//! workspace. Every test name starts with `interop_`, so
//! `cargo test --workspace interop` (`make interop`) selects them.

mod common;

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use sealdrop_protocol::{ClientId, ServerEvent};

type TestResult = Result<(), Box<dyn Error>>;

/// Runs the peer client once; returns its output (bounded in time).
fn run_client(peer: &Path, s: &InProcess, name: &str, file: &Path, state: &Path) -> Ran {
    run_bounded(
        Command::new("python3")
            .arg(peer)
            .arg("client")
            .arg("--server")
            .arg(s.addr().to_string())
            .arg("--name")
            .arg(name)
            .arg("--file")
            .arg(file)
            .arg("--state")
            .arg(state)
            .arg("--timeout")
            .arg("60"),
        Duration::from_secs(240),
    )
}

/// Runs the peer client and requires exit 0 ("verified").
fn send_ok(peer: &Path, s: &InProcess, name: &str, file: &Path, state: &Path) -> Ran {
    let ran = run_client(peer, s, name, file, state);
    assert!(
        ran.status.success(),
        "peer client failed ({}) sending {}:\nstdout: {}\nstderr: {}\n{}",
        ran.status,
        file.display(),
        ran.stdout,
        ran.stderr,
        s.recent()
    );
    assert!(ran.stdout.contains("verified"), "stdout: {}", ran.stdout);
    ran
}

/// The client id the peer saved in `me.info` (line 2, hex).
fn saved_id(state: &Path) -> ClientId {
    let text = fs::read_to_string(state.join("me.info")).expect("me.info written");
    let line = text.lines().nth(1).expect("me.info line 2");
    ClientId::from_hex(line.trim()).expect("hex client id")
}

/// Whether the server accepted a 1027 (2105) since it started.
fn reconnected(s: &InProcess) -> bool {
    s.saw_session(|e| matches!(e, ServerEvent::Reconnected { .. }))
}

/// The stored file is byte-identical and its row says Verified.
fn assert_stored(s: &InProcess, id: &ClientId, file: &Path) {
    let name = file.file_name().unwrap().to_str().unwrap();
    assert_same_file(file, &s.final_path(id, name));
    assert_eq!(s.file_row(id, name).map(|r| r.verified), Some(1), "{name}");
}

#[test]
fn interop_peer_new_client_then_returning_client() -> TestResult {
    let Some(peer) = peer() else { return Ok(()) };
    let mut s = InProcess::start();
    let scratch = s.scratch();
    let state = scratch.join("state");
    let first = scratch.join("first.bin");
    write_random_file(&first, 1, 100_000);
    let name = unique_name("py");

    // New client: 1025, 1026, 1028, 1029.
    send_ok(&peer, &s, &name, &first, &state);
    let id = saved_id(&state);
    assert_stored(&s, &id, &first);
    let row = s.client_row(&name).expect("clients row");
    assert_eq!(row.id, id.0);
    assert_eq!(row.public_key.map(|k| k.len()), Some(160));
    assert!(!reconnected(&s));

    // Returning client, same state: 1027 -> 2105, then the upload.
    let second = scratch.join("second.bin");
    write_random_file(&second, 2, 30_000);
    send_ok(&peer, &s, &name, &second, &state);
    assert!(reconnected(&s), "the second run reconnected");
    assert_eq!(saved_id(&state), id, "same identity");
    assert_stored(&s, &id, &second);

    // Returning client after a server restart.
    s.restart();
    let third = scratch.join("third.bin");
    write_random_file(&third, 3, 4096);
    send_ok(&peer, &s, &name, &third, &state);
    assert!(reconnected(&s));
    assert_eq!(saved_id(&state), id);
    for f in [&first, &second, &third] {
        assert_stored(&s, &id, f);
    }
    assert_eq!(client_rows(s.data_dir()).len(), 1);
    Ok(())
}

#[test]
fn interop_peer_sends_empty_100k_and_50m_files() -> TestResult {
    let Some(peer) = peer() else { return Ok(()) };
    let s = InProcess::start();
    let scratch = s.scratch();
    let state = scratch.join("state");
    let name = unique_name("sizes");
    let files = [
        ("empty.bin", 0u64),
        ("k100.bin", 100_000),
        ("m50.bin", 50 << 20),
    ];
    for (i, (file, len)) in files.iter().enumerate() {
        let path = scratch.join(file);
        write_random_file(&path, 10 + i as u64, *len);
        send_ok(&peer, &s, &name, &path, &state);
        assert_stored(&s, &saved_id(&state), &path);
    }
    assert!(s.part_files().is_empty());
    s.assert_db_consistent();
    Ok(())
}

/// Child processes killed (if still running) when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[test]
fn interop_peer_clients_run_concurrently() -> TestResult {
    let Some(peer) = peer() else { return Ok(()) };
    let s = InProcess::start();
    let scratch = s.scratch();
    let runs: Vec<(String, PathBuf, PathBuf)> = (0..4)
        .map(|i| {
            let file = scratch.join(format!("c{i}.bin"));
            write_random_file(&file, 20 + i, 200_000 + i * 1000);
            (unique_name("conc"), file, scratch.join(format!("state{i}")))
        })
        .collect();
    let mut children = Children(
        runs.iter()
            .map(|(name, file, state)| {
                Command::new("python3")
                    .arg(&peer)
                    .args(["client", "--server", &s.addr().to_string(), "--name", name])
                    .arg("--file")
                    .arg(file)
                    .arg("--state")
                    .arg(state)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn peer client")
            })
            .collect(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for child in children.0.iter_mut() {
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if std::time::Instant::now() > deadline {
                panic!("peer client did not finish in time"); // Children kills the rest
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "peer client exited {status}");
    }
    for (_, file, state) in &runs {
        assert_stored(&s, &saved_id(state), file);
    }
    Ok(())
}
