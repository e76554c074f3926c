//! The real binary against the reference Python peer
//! (`shared/peer/sealdrop_peer.py`, PyCryptodome): 2023c in depth, then
//! every revision of PROTOCOL.md §9 (register, reconnect or 2022c's key
//! resend, CRC bad, give up) and every 2024 packet variant, each checked
//! against the file the peer stored. Skipped unless `SEALDROP_INTEROP=1`
//! (set by `make interop`), since it needs python3 with pycryptodome.

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The reference peer, beside the workspace (`/work/shared/peer` when the
/// workspace is `/work/main`); `SEALDROP_PEER` overrides.
fn peer_script() -> PathBuf {
    match std::env::var_os("SEALDROP_PEER") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peer/sealdrop_peer.py"),
    }
}

/// How long the peer may take to start listening.
const PEER_START: Duration = Duration::from_secs(15);

/// How long the peer may take to log a request it has already answered.
const LOG_SETTLE: Duration = Duration::from_secs(2);

fn enabled(test: &str) -> bool {
    let on = std::env::var("SEALDROP_INTEROP").is_ok_and(|v| v == "1");
    if !on {
        eprintln!(
            "skipping {test}: set SEALDROP_INTEROP=1 (make interop) to run against the Python peer"
        );
    }
    on
}

/// A running peer server; killed (by its pid) when dropped.
struct Peer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Peer {
    /// Starts `sealdrop_peer.py server` on a free port with `extra` flags.
    fn start(extra: &[&str]) -> Peer {
        for _ in 0..5 {
            if let Some(peer) = Peer::try_start(extra) {
                return peer;
            }
        }
        panic!("the Python peer did not start; is pycryptodome installed?");
    }

    fn try_start(extra: &[&str]) -> Option<Peer> {
        let dir = tempfile::tempdir().unwrap();
        let port = closed_port();
        let log = File::create(dir.path().join("server.log")).unwrap();
        let mut child = Command::new("python3")
            .arg(peer_script())
            .args(["server", "--port", &port.to_string(), "--dir"])
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3");
        let started = Instant::now();
        while started.elapsed() < PEER_START {
            if fs::read_to_string(dir.path().join("server.log"))
                .unwrap_or_default()
                .contains("listening on")
            {
                return Some(Peer { child, port, dir });
            }
            if child.try_wait().ok().flatten().is_some() {
                return None; // e.g. the port was taken meanwhile
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Log lines of requests with this code (answered with `answer`).
    /// The peer may log a request just after its answer reached us, so
    /// this waits briefly for the line of a client's last request.
    fn count(&self, code: u16, answer: Option<u16>) -> usize {
        let started = Instant::now();
        loop {
            let n = self.count_now(code, answer);
            if n > 0 || started.elapsed() > LOG_SETTLE {
                return n;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn count_now(&self, code: u16, answer: Option<u16>) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(&format!(" {code} size=")))
            .filter(|l| answer.is_none_or(|a| l.contains(&format!("-> {a}"))))
            .count()
    }

    fn stored(&self, client_id: &str, name: &str) -> PathBuf {
        self.dir.path().join("files").join(client_id).join(name)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), no dependency needed.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs our client in `dir` against `peer`, state in `dir/state`.
fn ours(dir: &Path, peer: &Peer, name: &str, file: &str) -> Output {
    run(
        dir,
        &[
            "--server",
            &peer.addr(),
            "--name",
            name,
            "--file",
            file,
            "--state-dir",
            "state",
            "--json",
            "--timeout",
            "60",
        ],
    )
}

/// Runs the peer's client with `--state DIR`.
fn theirs(state: &Path, peer: &Peer, name: &str, file: &Path) -> Output {
    Command::new("python3")
        .arg(peer_script())
        .args(["client", "--server", &peer.addr(), "--name", name, "--file"])
        .arg(file)
        .arg("--state")
        .arg(state)
        .output()
        .expect("python3")
}

fn check(o: &Output, code: i32) -> serde_json::Value {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    json(o)
}

fn id_of(v: &serde_json::Value) -> String {
    v["client_id"].as_str().expect("client id").to_string()
}

#[test]
fn register_then_reconnect_and_files_arrive_intact() {
    if !enabled("register_then_reconnect_and_files_arrive_intact") {
        return;
    }
    let peer = Peer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("f100k.bin", 100_000),
        ("empty.bin", 0),
        ("f50m.bin", 50 << 20),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        fs::write(dir.path().join(name), pseudo_random(*len, i as u64 + 1)).unwrap();
    }
    let v = check(&ours(dir.path(), &peer, "alice", "f100k.bin"), 0);
    let id = id_of(&v);
    assert_eq!(
        (peer.count(1025, Some(2100)), peer.count(1026, Some(2102))),
        (1, 1)
    );
    assert!(dir.path().join("state/me.info").exists());
    for (name, _) in &files[1..] {
        let v = check(&ours(dir.path(), &peer, "alice", name), 0);
        assert_eq!(id_of(&v), id);
    }
    assert_eq!(peer.count(1027, Some(2105)), 2, "{}", peer.log());
    assert_eq!(peer.count(1025, None), 1);
    for (name, _) in &files {
        let sent = fs::read(dir.path().join(name)).unwrap();
        let stored = fs::read(peer.stored(&id, name)).unwrap();
        assert!(sent == stored, "{name} differs");
    }
}

#[test]
fn corrupt_crc_once_succeeds_after_one_resend() {
    if !enabled("corrupt_crc_once_succeeds_after_one_resend") {
        return;
    }
    let peer = Peer::start(&["--corrupt-crc", "1"]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.bin"), pseudo_random(12_345, 9)).unwrap();
    let v = check(&ours(dir.path(), &peer, "carol", "a.bin"), 0);
    assert_eq!(v["attempts"], 2);
    assert_eq!((peer.count(1028, None), peer.count(1030, None)), (2, 1));
    assert_eq!(
        fs::read(peer.stored(&id_of(&v), "a.bin")).unwrap(),
        pseudo_random(12_345, 9)
    );
}

#[test]
fn corrupt_crc_four_times_exits_5_after_four_sends() {
    if !enabled("corrupt_crc_four_times_exits_5_after_four_sends") {
        return;
    }
    let peer = Peer::start(&["--corrupt-crc", "4"]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.bin"), pseudo_random(5000, 3)).unwrap();
    let v = check(&ours(dir.path(), &peer, "dave", "a.bin"), 5);
    assert_eq!(v["outcome"], "crc_failed");
    assert_eq!(v["attempts"], 4);
    assert_eq!(peer.count(1028, None), 4);
    assert_eq!(peer.count(1030, None), 3);
    assert_eq!(peer.count(1031, Some(2104)), 1);
    assert!(!peer.stored(&id_of(&v), "a.bin").exists());
}

#[test]
fn three_server_errors_are_retried_to_success() {
    if !enabled("three_server_errors_are_retried_to_success") {
        return;
    }
    let peer = Peer::start(&["--error-first", "3"]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.bin"), b"hello").unwrap();
    let o = ours(dir.path(), &peer, "erin", "a.bin");
    check(&o, 0);
    assert_eq!(
        stderr(&o).matches("server responded with an error").count(),
        3
    );
}

#[test]
fn four_server_errors_exit_6() {
    if !enabled("four_server_errors_exit_6") {
        return;
    }
    let peer = Peer::start(&["--error-first", "4"]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.bin"), b"hello").unwrap();
    let v = check(&ours(dir.path(), &peer, "frank", "a.bin"), 6);
    assert_eq!(v["outcome"], "server_error");
}

#[test]
fn taken_name_exits_4_and_fresh_server_means_register_anew() {
    if !enabled("taken_name_exits_4_and_fresh_server_means_register_anew") {
        return;
    }
    let peer = Peer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.bin"), b"abc").unwrap();
    check(&ours(dir.path(), &peer, "gina", "a.bin"), 0);
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("a.bin"), b"abc").unwrap();
    let v = check(&ours(other.path(), &peer, "gina", "a.bin"), 4);
    assert_eq!(v["outcome"], "registration_failed");
    assert!(!other.path().join("state/me.info").exists());
    drop(peer);

    let fresh = Peer::start(&[]);
    let o = ours(dir.path(), &fresh, "gina", "a.bin");
    let v = check(&o, 0);
    assert_eq!(fresh.count(1027, Some(2106)), 1);
    assert!(stderr(&o).contains("reconnect denied (2106)"));
    let me = fs::read_to_string(dir.path().join("state/me.info")).unwrap();
    assert_eq!(
        me.lines().nth(1),
        Some(id_of(&v).as_str()),
        "me.info has the new id"
    );
}

#[test]
fn peer_client_reconnects_with_our_state_files() {
    if !enabled("peer_client_reconnects_with_our_state_files") {
        return;
    }
    let peer = Peer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.bin"), pseudo_random(777, 5)).unwrap();
    let v = check(&ours(dir.path(), &peer, "hugo", "a.bin"), 0);
    let o = theirs(
        &dir.path().join("state"),
        &peer,
        "hugo",
        &dir.path().join("a.bin"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(peer.count(1027, Some(2105)), 1, "{}", peer.log());
    assert_eq!(
        peer.count(1025, None),
        1,
        "the peer client did not register again"
    );
    assert!(peer.stored(&id_of(&v), "a.bin").exists());
}

#[test]
fn our_client_reconnects_with_peer_state_files() {
    if !enabled("our_client_reconnects_with_peer_state_files") {
        return;
    }
    let peer = Peer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::write(dir.path().join("b.bin"), pseudo_random(4242, 6)).unwrap();
    let o = theirs(&state, &peer, "iris", &dir.path().join("b.bin"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let me = fs::read_to_string(state.join("me.info")).unwrap();
    let their_id = me.lines().nth(1).unwrap().trim().to_lowercase();
    let v = check(&ours(dir.path(), &peer, "iris", "b.bin"), 0);
    assert_eq!(id_of(&v), their_id);
    assert_eq!(peer.count(1027, Some(2105)), 1, "{}", peer.log());
    assert_eq!(peer.count(1025, None), 1);
}

// ---------------------------------------------------------------------
// Every revision (PROTOCOL.md §9): our client against the peer server,
// which detects the revision per connection (`--range-1025 2024a` makes
// 1025-1031 mean 2024a), in every revision and every packet variant.

const REVISIONS: [&str; 5] = ["2022c", "2023a", "2023c", "2024a", "2024c"];

/// The peer's flags for serving `rev` (auto detection, with 1025-1031
/// tagged 2024a for 2024a).
fn peer_flags(rev: &str) -> Vec<&'static str> {
    if rev == "2024a" {
        vec!["--range-1025", "2024a"]
    } else {
        vec![]
    }
}

/// Runs our client with `--revision rev` and `extra` flags.
fn ours_rev(dir: &Path, peer: &Peer, name: &str, file: &str, rev: &str, extra: &[&str]) -> Output {
    let addr = peer.addr();
    let mut args = vec![
        "--server",
        &addr,
        "--name",
        name,
        "--file",
        file,
        "--state-dir",
        "state",
        "--json",
        "--timeout",
        "60",
        "--revision",
        rev,
    ];
    args.extend_from_slice(extra);
    run(dir, &args)
}

/// The request code of `kind` in `rev`.
fn code(rev: &str, kind: sealdrop_protocol::RequestKind) -> u16 {
    let r: sealdrop_protocol::Revision = rev.parse().unwrap();
    r.request_code(kind).unwrap()
}

fn response(rev: &str, kind: sealdrop_protocol::ResponseKind) -> u16 {
    let r: sealdrop_protocol::Revision = rev.parse().unwrap();
    r.response_code(kind).unwrap()
}

#[test]
fn every_revision_registers_uploads_and_comes_back_to_the_peer() {
    if !enabled("every_revision_registers_uploads_and_comes_back_to_the_peer") {
        return;
    }
    use sealdrop_protocol::{RequestKind as Q, ResponseKind as A};
    for rev in REVISIONS {
        let peer = Peer::start(&peer_flags(rev));
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("f100k.bin", 100_000),
            ("empty.bin", 0),
            ("f3m.bin", 3 << 20),
        ];
        for (i, (name, len)) in files.iter().enumerate() {
            fs::write(dir.path().join(name), pseudo_random(*len, i as u64 + 11)).unwrap();
        }
        let v = check(
            &ours_rev(dir.path(), &peer, "alice", "f100k.bin", rev, &[]),
            0,
        );
        assert_eq!(v["revision"], rev);
        let id = id_of(&v);
        assert_eq!(
            peer.count(code(rev, Q::Register), Some(response(rev, A::Registered))),
            1,
            "{rev}: {}",
            peer.log()
        );
        // The returning client: reconnect, or in 2022c its key again.
        for (name, _) in &files[1..] {
            let v = check(&ours_rev(dir.path(), &peer, "alice", name, rev, &[]), 0);
            assert_eq!(id_of(&v), id, "{rev}: the same client");
        }
        let (hello, welcome) = if rev == "2022c" {
            (Q::PublicKey, A::KeyAccepted)
        } else {
            (Q::Reconnect, A::ReconnectAccepted)
        };
        let expected = if rev == "2022c" { 3 } else { 2 };
        assert_eq!(
            peer.count(code(rev, hello), Some(response(rev, welcome))),
            expected,
            "{rev}: {}",
            peer.log()
        );
        assert_eq!(peer.count_now(code(rev, Q::Register), None), 1, "{rev}");
        for (name, _) in &files {
            let sent = fs::read(dir.path().join(name)).unwrap();
            let stored = fs::read(peer.stored(&id, name)).unwrap();
            assert!(sent == stored, "{rev}: {name} differs");
        }
    }
}

#[test]
fn every_revision_resends_after_a_corrupt_crc_and_gives_up_after_four() {
    if !enabled("every_revision_resends_after_a_corrupt_crc_and_gives_up_after_four") {
        return;
    }
    use sealdrop_protocol::RequestKind as Q;
    for rev in REVISIONS {
        let mut flags = peer_flags(rev);
        flags.extend(["--corrupt-crc", "1"]);
        let peer = Peer::start(&flags);
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.bin"), pseudo_random(12_345, 9)).unwrap();
        let v = check(&ours_rev(dir.path(), &peer, "carol", "a.bin", rev, &[]), 0);
        assert_eq!(v["attempts"], 2, "{rev}");
        assert_eq!(peer.count(code(rev, Q::CrcBad), None), 1, "{rev}");
        assert_eq!(
            fs::read(peer.stored(&id_of(&v), "a.bin")).unwrap(),
            pseudo_random(12_345, 9),
            "{rev}"
        );

        let mut flags = peer_flags(rev);
        flags.extend(["--corrupt-crc", "4"]);
        let peer = Peer::start(&flags);
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.bin"), pseudo_random(5000, 3)).unwrap();
        let v = check(&ours_rev(dir.path(), &peer, "dave", "a.bin", rev, &[]), 5);
        assert_eq!(v["outcome"], "crc_failed", "{rev}");
        assert_eq!(peer.count(code(rev, Q::CrcGiveUp), None), 1, "{rev}");
        assert!(!peer.stored(&id_of(&v), "a.bin").exists(), "{rev}");
    }
}

#[test]
fn a_2022c_client_unknown_to_the_peer_registers_anew() {
    if !enabled("a_2022c_client_unknown_to_the_peer_registers_anew") {
        return;
    }
    let peer = Peer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.bin"), b"abc").unwrap();
    let first = check(
        &ours_rev(dir.path(), &peer, "gina", "a.bin", "2022c", &[]),
        0,
    );
    drop(peer);
    // A fresh peer never saw gina: it closes on the saved key's 1101.
    let fresh = Peer::start(&[]);
    let o = ours_rev(dir.path(), &fresh, "gina", "a.bin", "2022c", &[]);
    let v = check(&o, 0);
    assert!(
        stderr(&o).contains("did not accept our saved key"),
        "{}",
        stderr(&o)
    );
    assert_ne!(id_of(&v), id_of(&first), "a new id");
    assert_eq!(fresh.count(1100, Some(2100)), 1, "{}", fresh.log());
    assert_eq!(fs::read(fresh.stored(&id_of(&v), "a.bin")).unwrap(), b"abc");
}

/// One packet variant: flags, and what the peer must log for a file of
/// `len` bytes: `in {count} {mode} packets from {base}`.
struct Variant {
    flags: &'static [&'static str],
    len: usize,
    count: u32,
    mode: &'static str,
    base: u16,
}

/// The packet forms public 2024 clients send (PROTOCOL.md §9.1), our
/// default, and the edge cases.
const VARIANTS: [Variant; 14] = [
    // Default: one packet of the whole file.
    Variant {
        flags: &[],
        len: 100_000,
        count: 1,
        mode: "split",
        base: 1,
    },
    Variant {
        flags: &[],
        len: 0,
        count: 1,
        mode: "split",
        base: 1,
    },
    // Split 1 KiB and 8 KiB pieces of one ciphertext (the last short).
    Variant {
        flags: &["--packet-size", "1024"],
        len: 100_000,
        count: 98,
        mode: "split",
        base: 1,
    },
    Variant {
        flags: &["--packet-size", "8192"],
        len: 100_000,
        count: 13,
        mode: "split",
        base: 1,
    },
    // Split, exactly full last packet (2047 -> 2048 bytes), and an empty file.
    Variant {
        flags: &["--packet-size", "1024"],
        len: 2047,
        count: 2,
        mode: "split",
        base: 1,
    },
    Variant {
        flags: &["--packet-size", "1024"],
        len: 0,
        count: 1,
        mode: "split",
        base: 1,
    },
    // Numbered from 0.
    Variant {
        flags: &["--packet-size", "1024", "--packet-base", "0"],
        len: 5000,
        count: 5,
        mode: "split",
        base: 0,
    },
    // Each: 4096-byte pieces padded alone, whole-file sizes.
    Variant {
        flags: &["--packet-size", "4096", "--packet-mode", "each"],
        len: 100_000,
        count: 25,
        mode: "each",
        base: 1,
    },
    // Each, exactly full last piece.
    Variant {
        flags: &["--packet-size", "4096", "--packet-mode", "each"],
        len: 8192,
        count: 2,
        mode: "each",
        base: 1,
    },
    // Each, 4,000-byte pieces with per-packet sizes.
    Variant {
        flags: &[
            "--packet-size",
            "4000",
            "--packet-mode",
            "each",
            "--packet-fields",
            "packet",
        ],
        len: 100_000,
        count: 25,
        mode: "each",
        base: 1,
    },
    // Each, 1 KiB from 0 with per-packet sizes.
    Variant {
        flags: &[
            "--packet-size",
            "1024",
            "--packet-mode",
            "each",
            "--packet-fields",
            "packet",
            "--packet-base",
            "0",
        ],
        len: 10_000,
        count: 10,
        mode: "each",
        base: 0,
    },
    // Each, 1 MiB pieces.
    Variant {
        flags: &["--packet-size", "1048576", "--packet-mode", "each"],
        len: 3 << 20,
        count: 3,
        mode: "each",
        base: 1,
    },
    // Each, empty file: one padding block.
    Variant {
        flags: &["--packet-size", "4096", "--packet-mode", "each"],
        len: 0,
        count: 1,
        mode: "each",
        base: 1,
    },
    // 16-byte packets of a 1 MiB + 1 file would be 65,537: raised to 32.
    Variant {
        flags: &["--packet-size", "16"],
        len: 1_048_577,
        count: 32_769,
        mode: "split",
        base: 1,
    },
];

fn every_packet_variant_to_the_peer(rev: &str) {
    let peer = Peer::start(&peer_flags(rev));
    let dir = tempfile::tempdir().unwrap();
    for (i, v) in VARIANTS.iter().enumerate() {
        let name = format!("v{i}.bin");
        let data = pseudo_random(v.len, 100 + i as u64);
        fs::write(dir.path().join(&name), &data).unwrap();
        let o = ours_rev(dir.path(), &peer, "kate", &name, rev, v.flags);
        let json = check(&o, 0);
        assert_eq!(json["packets"]["count"], v.count, "{rev} {:?}", v.flags);
        assert_eq!(json["packets"]["base"], v.base, "{rev} {:?}", v.flags);
        assert_eq!(json["packets"]["mode"], v.mode, "{rev} {:?}", v.flags);
        let stored = fs::read(peer.stored(&id_of(&json), &name)).unwrap();
        assert!(stored == data, "{rev} {:?}: stored file differs", v.flags);
        // One packet is one ciphertext: the peer calls that split whatever we call it.
        let peer_mode = if v.count == 1 { "split" } else { v.mode };
        let seen = format!(
            "'{name}' {} bytes in {} {peer_mode} packets from {}",
            v.len, v.count, v.base
        );
        assert!(
            peer.log().contains(&seen),
            "{rev}: no `{seen}` in\n{}",
            peer.log()
        );
        if v.count == 32_769 {
            assert!(
                stderr(&o).contains("packets of 16 bytes would be more than 65535"),
                "{}",
                stderr(&o)
            );
        }
    }
}

#[test]
fn every_packet_variant_reaches_a_2024a_peer_intact() {
    if !enabled("every_packet_variant_reaches_a_2024a_peer_intact") {
        return;
    }
    every_packet_variant_to_the_peer("2024a");
}

#[test]
fn every_packet_variant_reaches_a_2024c_peer_intact() {
    if !enabled("every_packet_variant_reaches_a_2024c_peer_intact") {
        return;
    }
    every_packet_variant_to_the_peer("2024c");
}
