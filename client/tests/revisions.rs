//! The real binary speaking every revision (PROTOCOL.md §9) to a scripted
//! fake server answering with that revision's golden frames
//! (fixtures/vectors/<rev>/), the `--revision` / `SEALDROP_REVISION` and
//! `--packet-*` flags, the server quirks of §9.1, and a server that
//! speaks another revision.

mod common;

use std::process::{Command, Output};

use common::*;

const KEY: &str = "rsa1024_private_pkcs8.der";
const REVISIONS: [&str; 5] = ["2022c", "2023a", "2023c", "2024a", "2024c"];

fn is_2024(rev: &str) -> bool {
    rev.starts_with("2024")
}

/// Flags of a run against `server` sending plain_1000.bin as alice with
/// the vector key, plus `extra`.
fn run_rev(dir: &std::path::Path, server: &FakeServer, extra: &[&str]) -> Output {
    let key = vector_path(KEY).to_string_lossy().into_owned();
    let addr = server.addr();
    let mut args = vec![
        "--server",
        &addr,
        "--name",
        "alice",
        "--file",
        "plain_1000.bin",
        "--rsa-key",
        &key,
        "--timeout",
        "5",
        "--connect-timeout",
        "2",
    ];
    args.extend_from_slice(extra);
    run(dir, &args)
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// The request frames of a revision's vectors, by name.
fn rev_frames(rev: &str, names: &[String]) -> Vec<Vec<u8>> {
    names.iter().map(|n| rev_vector(rev, n)).collect()
}

/// Request file names of a new client's session in `rev`.
fn new_client_requests(rev: &str) -> Vec<String> {
    let r: sealdrop_protocol::Revision = rev.parse().unwrap();
    use sealdrop_protocol::RequestKind as Q;
    let c = |k| r.request_code(k).unwrap();
    let mut names = vec![
        format!("request_{}.bin", c(Q::Register)),
        format!("request_{}.bin", c(Q::PublicKey)),
    ];
    if is_2024(rev) {
        names.push(format!("request_{}_packet1.bin", c(Q::SendFile)));
        names.push(format!("request_{}_packet2.bin", c(Q::SendFile)));
    } else {
        names.push(format!("request_{}.bin", c(Q::SendFile)));
    }
    names.push(format!("request_{}.bin", c(Q::CrcOk)));
    names
}

#[test]
fn every_revision_sends_exactly_its_vector_frames() {
    for rev in REVISIONS {
        let dir = workdir();
        let server = FakeServer::start(move |f, _| rev_vector_reply(rev, 1, f));
        // The vectors cut 1008 bytes of ciphertext into 512 + 496.
        let mut extra = vec!["--revision", rev];
        if is_2024(rev) {
            extra.extend(["--packet-size", "512"]);
        }
        let o = run_rev(dir.path(), &server, &extra);
        assert_exit(&o, 0);
        let frames: Vec<Vec<u8>> = server.frames().into_iter().map(|f| f.bytes).collect();
        assert_eq!(frames, rev_frames(rev, &new_client_requests(rev)), "{rev}");
        let line = stdout(&o);
        let tail = if is_2024(rev) {
            format!("attempt 1, revision {rev}, 2 packets from 1, split)")
        } else {
            format!("attempt 1, revision {rev})")
        };
        assert!(
            line.starts_with("sent plain_1000.bin: 1000 bytes, cksum 493196554, verified (")
                && line.trim_end().ends_with(&tail),
            "{rev}: {line:?}"
        );
    }
}

#[test]
fn json_carries_the_revision_and_the_packets() {
    for rev in REVISIONS {
        let dir = workdir();
        let server = FakeServer::start(move |f, _| rev_vector_reply(rev, 0, f));
        let mut extra = vec!["--revision", rev, "--json"];
        if is_2024(rev) {
            extra.extend(["--packet-size", "256", "--packet-base", "0"]);
        }
        let o = run_rev(dir.path(), &server, &extra);
        assert_exit(&o, 0);
        let v = json(&o);
        assert_eq!(v["revision"], rev);
        assert_eq!(v["outcome"], "verified");
        if is_2024(rev) {
            assert_eq!(
                v["packets"],
                serde_json::json!({"count": 4, "size": 256, "base": 0, "mode": "split",
                                   "fields": "whole"}),
                "{rev}"
            );
            // 1008 bytes in 256-byte packets: 4 of them, numbered 0..3.
            let numbers: Vec<u16> = server
                .frames()
                .iter()
                .filter(|f| f.bytes.len() > 23 + 267 && f.code == server.codes()[2])
                .map(|f| u16::from_le_bytes([f.bytes[31], f.bytes[32]]))
                .collect();
            assert_eq!(numbers, [0, 1, 2, 3], "{rev}");
        } else {
            assert_eq!(v["packets"], serde_json::Value::Null, "{rev}");
        }
    }
}

#[test]
fn the_default_2024_upload_is_one_packet_of_the_whole_file() {
    let dir = workdir();
    let server = FakeServer::start(|f, _| rev_vector_reply("2024c", 1, f));
    let o = run_rev(dir.path(), &server, &["--revision", "2024c", "--json"]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["packets"]["count"], 1);
    let file: Vec<_> = server
        .frames()
        .into_iter()
        .filter(|f| f.code == 828)
        .collect();
    assert_eq!(file.len(), 1);
    let b = &file[0].bytes;
    // content_size 1008, orig 1000, packet 1 of 1, then the whole ciphertext.
    assert_eq!(b[23..35], [0xf0, 3, 0, 0, 0xe8, 3, 0, 0, 1, 0, 1, 0]);
    assert_eq!(b[23 + 267..], rev_vector("2024c", "cipher_1000.bin")[..]);
}

#[test]
fn the_revision_comes_from_the_environment_unless_a_flag_says_otherwise() {
    let dir = workdir();
    let server = FakeServer::start(|f, _| rev_vector_reply("2024c", 1, f));
    let key = vector_path(KEY).to_string_lossy().into_owned();
    let addr = server.addr();
    let args = [
        "--server",
        &addr,
        "--name",
        "alice",
        "--file",
        "plain_1000.bin",
        "--rsa-key",
        &key,
        "--timeout",
        "5",
        "--json",
        "--state-dir",
        ".",
    ];
    let with_env = |extra: &[&str]| {
        Command::new(BIN)
            .current_dir(dir.path())
            .args(args)
            .args(extra)
            .env_remove("RUST_LOG")
            .env("SEALDROP_REVISION", "2024c")
            .output()
            .unwrap()
    };
    let o = with_env(&[]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["revision"], "2024c");
    assert_eq!(server.codes()[0], 825);
    // The flag wins over the environment.
    std::fs::remove_file(dir.path().join("me.info")).unwrap();
    let server = FakeServer::start(|f, _| rev_vector_reply("2023a", 1, f));
    let o = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--server", &server.addr(), "--name", "alice"])
        .args(["--file", "plain_1000.bin", "--rsa-key", &key, "--json"])
        .args(["--revision", "2023a"])
        .env("SEALDROP_REVISION", "2024c")
        .output()
        .unwrap();
    assert_exit(&o, 0);
    assert_eq!(json(&o)["revision"], "2023a");
    assert_eq!(server.codes()[0], 1100);
}

#[test]
fn bad_revision_and_packet_flags_are_usage_errors() {
    let dir = workdir();
    let server = FakeServer::vectors();
    for (extra, needle) in [
        (
            &["--revision", "2025a"][..],
            "(one of 2022c, 2023a, 2023c, 2024a, 2024c)",
        ),
        (
            &["--packet-size", "1024"][..],
            "--packet-size applies to revisions 2024a and 2024c only",
        ),
        (
            &["--revision", "2022c", "--packet-mode", "each"][..],
            "--packet-mode applies to revisions 2024a and 2024c only",
        ),
        (
            &["--revision", "2024c", "--packet-size", "1000"][..],
            "multiple of 16",
        ),
        (
            &["--revision", "2024c", "--packet-size", "0"][..],
            "multiple of 16",
        ),
        (
            &["--revision", "2024c", "--packet-base", "2"][..],
            "--packet-base",
        ),
        (
            &["--revision", "2024c", "--packet-fields", "packet"][..],
            "per-packet size fields need each-mode packets",
        ),
    ] {
        let o = run_rev(dir.path(), &server, extra);
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(needle), "{extra:?}: {}", stderr(&o));
    }
    assert!(server.codes().is_empty(), "nothing sent");
}

#[test]
fn help_documents_the_revision_and_packet_flags_and_their_defaults() {
    let dir = workdir();
    let o = run(dir.path(), &["--help"]);
    assert_exit(&o, 0);
    let help = stdout(&o);
    for needle in [
        "--revision <REV>",
        "SEALDROP_REVISION",
        "[default: 2023c]",
        "--packet-size <N>",
        "[default: the whole file in one packet",
        "--packet-base <0|1>",
        "[default: 1",
        "--packet-mode <MODE>",
        "[default: split]",
        "--packet-fields <FIELDS>",
        "[default: whole]",
        "65535 packets",
    ] {
        assert!(help.contains(needle), "{needle}");
    }
}

#[test]
fn a_server_speaking_another_revision_is_named_with_exit_8() {
    // (our revision, the server's, what the message must name)
    for (ours, theirs, named) in [
        ("2023c", "2024a", "2024a"),
        ("2024a", "2023c", "2023c"),
        ("2024c", "2023c", "2023c"),
    ] {
        let dir = workdir();
        let server = FakeServer::start(move |_, _| {
            let code = if is_2024(theirs) { 1600 } else { 2100 };
            Reply::Send(rev_vector(theirs, &format!("response_{code}.bin")))
        });
        let o = run_rev(dir.path(), &server, &["--revision", ours, "--json"]);
        assert_exit(&o, 8);
        let err = stderr(&o);
        assert!(
            err.contains(&format!("it seems to speak {named}"))
                && err.contains(&format!("run with --revision {named}")),
            "{ours}: {err}"
        );
        assert_eq!(json(&o)["outcome"], "protocol_error");
        assert_eq!(
            server.codes().len(),
            1,
            "{ours}: nothing after the first answer"
        );
    }
}

/// A response frame: version, code, payload.
fn frame(version: u8, code: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![version];
    f.extend_from_slice(&code.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn quirky_2024_servers_are_survived() {
    let id = vector("client_id.bin");
    // Version byte 1 on every answer; the final 1604 says 16 bytes and is
    // followed by the 255-byte file name, or comes with no payload at all.
    let mut name = vec![0u8; 255];
    name[..14].copy_from_slice(b"plain_1000.bin");
    let mut long_ack = frame(1, 1604, &id);
    long_ack.extend_from_slice(&name);
    for ack in [long_ack, frame(1, 1604, &[])] {
        for rev in ["2024a", "2024c"] {
            let dir = workdir();
            let ack = ack.clone();
            let server = FakeServer::start(move |f, _| match rev_vector_reply(rev, 1, f) {
                Reply::Send(mut bytes) => {
                    bytes[0] = 1;
                    if bytes[1..3] == 1604u16.to_le_bytes() {
                        bytes = ack.clone();
                    }
                    Reply::Send(bytes)
                }
                other => other,
            });
            let o = run_rev(
                dir.path(),
                &server,
                &["--revision", rev, "--packet-size", "64"],
            );
            assert_exit(&o, 0);
            assert!(
                stdout(&o).contains(", 16 packets from 1, split)"),
                "{}",
                stdout(&o)
            );
        }
    }
}

#[test]
fn a_crc_bad_2024_upload_gets_no_answer_and_goes_again() {
    // 901 is not answered; the resend is all packets again.
    let dir = workdir();
    let server = FakeServer::start(|f, i| {
        let reply = rev_vector_reply("2024c", 0, f);
        match reply {
            Reply::Send(mut b) if f.code == 828 && i < 5 => {
                let n = b.len();
                b[n - 1] ^= 0xff; // wrong cksum on the first upload
                Reply::Send(b)
            }
            other => other,
        }
    });
    let o = run_rev(
        dir.path(),
        &server,
        &[
            "--revision",
            "2024c",
            "--packet-size",
            "400",
            "--packet-mode",
            "each",
            "--packet-fields",
            "packet",
            "--packet-base",
            "0",
            "--json",
        ],
    );
    assert_exit(&o, 0);
    let v = json(&o);
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["packets"]["mode"], "each");
    assert_eq!(v["packets"]["fields"], "packet");
    assert_eq!(
        server.codes(),
        [825, 826, 828, 828, 828, 901, 828, 828, 828, 900]
    );
}

#[test]
fn a_2022c_returning_client_sends_its_key_again_and_registers_anew_when_refused() {
    let dir = workdir();
    write_vector_me_info(dir.path());
    // Known: 1101 is exactly the vector frame, and 2102 lets us in.
    let server = FakeServer::start(|f, _| rev_vector_reply("2022c", 1, f));
    let o = run_rev(dir.path(), &server, &["--revision", "2022c"]);
    assert_exit(&o, 0);
    let frames = server.frames();
    assert_eq!(frames[0].bytes, rev_vector("2022c", "request_1101.bin"));
    assert_eq!(server.codes(), [1101, 1103, 1104]);
    // Unknown: a 2022c server closes without a word, four times; then a
    // new registration under the flag's name.
    let server = FakeServer::start(|f, _| match f.code {
        1101 if f.conn < 4 => Reply::SendAndClose(Vec::new()),
        _ => rev_vector_reply("2022c", 1, f),
    });
    let o = run_rev(dir.path(), &server, &["--revision", "2022c"]);
    assert_exit(&o, 0);
    assert!(
        stderr(&o)
            .contains("did not accept our saved key (1101 without 2102; 2022c has no reconnect)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        server.codes(),
        [1101, 1101, 1101, 1101, 1100, 1101, 1103, 1104]
    );
}

#[test]
fn a_returning_2024_client_reconnects_in_its_codes() {
    for (rev, reconnect) in [("2024a", 1027), ("2024c", 827), ("2023a", 1102)] {
        let dir = workdir();
        write_vector_me_info(dir.path());
        let server = FakeServer::start(move |f, _| rev_vector_reply(rev, 1, f));
        let o = run_rev(dir.path(), &server, &["--revision", rev]);
        assert_exit(&o, 0);
        let frames = server.frames();
        assert_eq!(
            frames[0].bytes,
            rev_vector(rev, &format!("request_{reconnect}.bin")),
            "{rev}"
        );
    }
}
