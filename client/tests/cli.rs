//! The real binary against a scripted fake server answering with the
//! golden vector frames (fixtures/vectors).

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const KEY: &str = "rsa1024_private_pkcs8.der";
const VECTOR_ID: &str = "e5144c734123490e92fe9c54052b3a46";

/// Flags of a run against `server` sending plain_1000.bin as alice.
fn flags(server: &str) -> Vec<String> {
    let key = vector_path(KEY).to_string_lossy().into_owned();
    [
        "--server",
        server,
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_with(dir: &std::path::Path, server: &str, extra: &[&str]) -> std::process::Output {
    let mut args = flags(server);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(dir, &args)
}

fn frames_of(server: &FakeServer) -> Vec<Vec<u8>> {
    server.frames().into_iter().map(|f| f.bytes).collect()
}

fn assert_exit(o: &std::process::Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

#[test]
fn new_client_sends_exactly_the_vector_frames() {
    let dir = workdir();
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
    let expected: Vec<Vec<u8>> = [
        "request_1025.bin",
        "request_1026.bin",
        "request_1028.bin",
        "request_1029.bin",
    ]
    .iter()
    .map(|n| vector(n))
    .collect();
    assert_eq!(frames_of(&server), expected);
    let line = stdout(&o);
    assert!(
        line.starts_with("sent plain_1000.bin: 1000 bytes, cksum 493196554, verified (")
            && line.trim_end().ends_with(" s, attempt 1, revision 2023c)"),
        "{line:?}"
    );
}

#[test]
fn new_client_writes_me_info_and_priv_key_like_the_originals() {
    let dir = workdir();
    let state = dir.path().join("state");
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &["--state-dir", "state"]);
    assert_exit(&o, 0);
    let b64 = base64(&vector(KEY));
    let me = fs::read_to_string(state.join("me.info")).unwrap();
    assert_eq!(me, format!("alice\n{VECTOR_ID}\n{b64}\n"));
    assert_eq!(
        fs::read_to_string(state.join("priv.key")).unwrap(),
        format!("{b64}\n")
    );
    #[cfg(unix)]
    for f in ["me.info", "priv.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(state.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn me_info_is_not_written_before_key_exchange() {
    let dir = workdir();
    let server = FakeServer::start(|f, _| match f.code {
        1026 => Reply::Send(vector("response_2107.bin")),
        c => vector_reply(c),
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 6);
    assert!(!dir.path().join("me.info").exists());
    assert!(!dir.path().join("priv.key").exists());
}

#[test]
fn returning_client_sends_1027_then_1028() {
    let dir = workdir();
    write_vector_me_info(dir.path());
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
    let expected: Vec<Vec<u8>> = ["request_1027.bin", "request_1028.bin", "request_1029.bin"]
        .iter()
        .map(|n| vector(n))
        .collect();
    assert_eq!(frames_of(&server), expected);
}

#[test]
fn reads_wrapped_pkcs1_me_info_with_uppercase_hex() {
    let dir = workdir();
    let b64 = base64(&vector("rsa1024_private_pkcs1.der"));
    let wrapped: Vec<String> = b64
        .as_bytes()
        .chunks(72)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let text = format!(
        "alice\r\n{}\r\n{}\r\n",
        VECTOR_ID.to_uppercase(),
        wrapped.join("\r\n")
    );
    fs::write(dir.path().join("me.info"), text).unwrap();
    let server = FakeServer::vectors();
    // No --rsa-key: the key must come from me.info.
    let o = run(
        dir.path(),
        &[
            "--server",
            &server.addr(),
            "--name",
            "alice",
            "--file",
            "plain_1000.bin",
            "--timeout",
            "5",
        ],
    );
    assert_exit(&o, 0);
    assert_eq!(server.frames()[0].bytes, vector("request_1027.bin"));
    assert_eq!(server.frames()[1].bytes, vector("request_1028.bin"));
}

#[test]
fn reconnect_denied_registers_anew_and_rewrites_me_info() {
    let dir = workdir();
    fs::write(
        dir.path().join("me.info"),
        format!("alice\n{VECTOR_ID}\n{}\n", base64(&vector(KEY))),
    )
    .unwrap();
    let server = FakeServer::start(|f, _| match f.code {
        1027 => Reply::Send(vector("response_2106.bin")),
        c => vector_reply(c),
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
    assert_eq!(server.codes(), [1027, 1025, 1026, 1028, 1029]);
    assert_eq!(server.frames()[1].bytes, vector("request_1025.bin"));
    assert!(stderr(&o).contains("reconnect denied (2106): registering as a new client"));
}

#[test]
fn transfer_info_with_crlf_is_read_from_the_working_directory() {
    let dir = workdir();
    let server = FakeServer::vectors();
    fs::write(
        dir.path().join("transfer.info"),
        format!("{}\r\nalice\r\nplain_1000.bin\r\n", server.addr()),
    )
    .unwrap();
    let key = vector_path(KEY).to_string_lossy().into_owned();
    let o = run(dir.path(), &["--rsa-key", &key, "--timeout", "5"]);
    assert_exit(&o, 0);
    assert_eq!(server.frames()[0].bytes, vector("request_1025.bin"));
}

#[test]
fn transfer_info_with_a_bom_and_stray_blanks_is_read() {
    let dir = workdir();
    let server = FakeServer::vectors();
    fs::write(
        dir.path().join("transfer.info"),
        format!(
            "\u{feff}  {} \t\r\n\talice  \r\n plain_1000.bin \r\n\r\n  \r\n",
            server.addr()
        ),
    )
    .unwrap();
    let key = vector_path(KEY).to_string_lossy().into_owned();
    let o = run(dir.path(), &["--rsa-key", &key, "--timeout", "5"]);
    assert_exit(&o, 0);
    // The exact vector frames: the name and the file name without blanks.
    assert_eq!(server.frames()[0].bytes, vector("request_1025.bin"));
    assert_eq!(server.frames()[2].bytes, vector("request_1028.bin"));
}

#[test]
fn transfer_info_faults_are_named_by_line_and_column() {
    let dir = workdir();
    for (text, says) in [
        (
            "127.0.0.1:1357\nali\tce\nplain_1000.bin\n",
            "transfer.info is malformed: line 2 (client name) holds a tab at column 4: 'ali\\tce'",
        ),
        (
            "127.0.0.1:1357\n\nplain_1000.bin\n",
            "transfer.info is malformed: line 2 (client name) is empty",
        ),
        (
            "127.0.0.1:1357\ralice\rplain_1000.bin\r",
            "transfer.info is malformed: line 1 (HOST:PORT) holds a carriage return",
        ),
        (
            "127.0.0.1:1357\ncaf\u{e9}\nplain_1000.bin\n",
            "('\u{e9}' at column 4 is not printable ASCII); fix line 2 of transfer.info",
        ),
    ] {
        fs::write(dir.path().join("transfer.info"), text).unwrap();
        let o = run(dir.path(), &[]);
        assert_exit(&o, 2);
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{text:?}: {err}");
    }
}

#[test]
fn flags_override_transfer_info() {
    let dir = workdir();
    let server = FakeServer::vectors();
    fs::write(
        dir.path().join("transfer.info"),
        "127.0.0.1:1\nbob\nmissing.bin\n",
    )
    .unwrap();
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
}

#[test]
fn file_is_sent_under_its_base_name() {
    let dir = workdir();
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::rename(
        dir.path().join("plain_1000.bin"),
        dir.path().join("sub/plain_1000.bin"),
    )
    .unwrap();
    let server = FakeServer::vectors();
    let mut args = flags(&server.addr());
    args[5] = "sub/plain_1000.bin".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(dir.path(), &args);
    assert_exit(&o, 0);
    assert_eq!(server.frames()[2].bytes, vector("request_1028.bin"));
}

#[test]
fn refused_connection_exits_3_with_one_clear_line() {
    let dir = workdir();
    let addr = format!("127.0.0.1:{}", closed_port());
    let o = run_with(dir.path(), &addr, &["--quiet", "--retry-for", "1"]);
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("could not connect to {addr}: connection refused"))
            && err.contains("is the server running"),
        "{err}"
    );
}

#[test]
fn registration_failed_exits_4() {
    let dir = workdir();
    let server = FakeServer::start(|f, _| match f.code {
        1025 => Reply::Send(vector("response_2101.bin")),
        c => vector_reply(c),
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 4);
    assert!(
        stderr(&o).contains("refused to register 'alice' (2101)"),
        "{}",
        stderr(&o)
    );
    // The per-server state folder this run created holds nothing, so it
    // is gone again; the per-user folder above it stays.
    let state = dir.path().join("xdg-state").join("sealdrop");
    assert!(state.is_dir());
    let left: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn four_wrong_cksums_exit_5_after_four_sends_and_one_1031() {
    let dir = workdir();
    let server = FakeServer::start(|f, _| match f.code {
        1028 => Reply::Send(wrong_crc_2103()),
        c => vector_reply(c),
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 5);
    let codes = server.codes();
    assert_eq!(codes.iter().filter(|&&c| c == 1028).count(), 4);
    assert_eq!(codes.iter().filter(|&&c| c == 1030).count(), 3);
    assert_eq!(codes.iter().filter(|&&c| c == 1031).count(), 1);
    assert_eq!(codes.last(), Some(&1031));
    let frames = server.frames();
    assert_eq!(frames[3].bytes, vector("request_1030.bin"));
    assert_eq!(frames.last().unwrap().bytes, vector("request_1031.bin"));
}

#[test]
fn one_wrong_cksum_then_success_after_a_resend() {
    let dir = workdir();
    let mut bad = 1;
    let server = FakeServer::start(move |f, _| match f.code {
        1028 if bad > 0 => {
            bad -= 1;
            Reply::Send(wrong_crc_2103())
        }
        c => vector_reply(c),
    });
    let o = run_with(dir.path(), &server.addr(), &["--json"]);
    assert_exit(&o, 0);
    assert_eq!(server.codes(), [1025, 1026, 1028, 1030, 1028, 1029]);
    assert_eq!(json(&o)["attempts"], 2);
}

#[test]
fn stray_2104_after_1030_is_skipped() {
    let dir = workdir();
    let mut bad = 1;
    let server = FakeServer::start(move |f, _| match f.code {
        1028 if bad > 0 => {
            bad -= 1;
            Reply::Send(wrong_crc_2103())
        }
        1030 => Reply::Send(vector("response_2104.bin")),
        c => vector_reply(c),
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
}

#[test]
fn server_error_three_times_then_success() {
    let dir = workdir();
    let server = FakeServer::start(|f, i| match i {
        0..=2 => Reply::Send(vector("response_2107.bin")),
        _ => vector_reply(f.code),
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
    assert_eq!(server.codes(), [1025, 1025, 1025, 1025, 1026, 1028, 1029]);
    assert_eq!(
        stderr(&o).matches("server responded with an error").count(),
        3,
        "{}",
        stderr(&o)
    );
}

#[test]
fn server_error_four_times_exits_6() {
    let dir = workdir();
    let server = FakeServer::start(|_, _| Reply::Send(vector("response_2107.bin")));
    let o = run_with(dir.path(), &server.addr(), &["--json"]);
    assert_exit(&o, 6);
    assert_eq!(server.codes(), [1025; 4]);
    let v = json(&o);
    assert_eq!(v["outcome"], "server_error");
    assert_eq!(v["client_id"], serde_json::Value::Null);
}

#[test]
fn server_closing_after_every_response_still_succeeds() {
    let dir = workdir();
    let server = FakeServer::start(|f, _| match vector_reply(f.code) {
        Reply::Send(b) => Reply::SendAndClose(b),
        other => other,
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
    let conns: Vec<usize> = server.frames().iter().map(|f| f.conn).collect();
    assert_eq!(conns, [0, 1, 2, 3]);
}

#[test]
fn silent_server_times_out_with_exit_3() {
    let dir = workdir();
    // Answers the registration, then never again: a stuck server.
    let server = FakeServer::start(|f, _| match f.code {
        1025 => vector_reply(f.code),
        _ => Reply::Hang,
    });
    let started = Instant::now();
    let o = run_with(dir.path(), &server.addr(), &["--timeout", "0.3"]);
    assert_exit(&o, 3);
    assert!(started.elapsed() < Duration::from_secs(15));
    let err = stderr(&o);
    assert!(err.contains("no answer from"), "{err}");
    assert!(err.contains("overloaded or stuck"), "{err}");
    assert!(!err.contains("another protocol"), "{err}");
    // The notes and the last line count what happens: 3 retries 0.2 s
    // apart, not --retry-for.
    for retry in 1..=3 {
        assert!(
            err.contains(&format!(
                "no answer within 0.3 s to request 1026; retry {retry} of 3 in 0.2 s"
            )),
            "{err}"
        );
    }
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains("(on the first try and on 3 retries)"),
        "{err}"
    );
    assert!(!err.contains("giving up in 0 s"), "{err}");
    assert!(!err.contains("retried for"), "{err}");
}

#[test]
fn a_server_that_never_sends_a_byte_may_speak_another_protocol() {
    let dir = workdir();
    let server = FakeServer::start(|_, _| Reply::Hang);
    let o = run_with(dir.path(), &server.addr(), &["--timeout", "0.3", "--quiet"]);
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{} accepted the connection but sent nothing within 0.3 s",
            server.addr()
        )) && err.contains("not a single byte")
            && err.contains("is it a sealdrop server?")
            && err.contains("another protocol")
            && err.contains("check the port in --server"),
        "{err}"
    );
    assert!(!err.contains("overloaded"), "{err}");
}

#[test]
fn undecodable_response_exits_8() {
    let dir = workdir();
    // A 2100 whose payload_size is not 16: a sealdrop code, broken framing.
    let server = FakeServer::start(|_, _| Reply::Send(vec![3, 0x34, 0x08, 0x99, 0, 0, 0]));
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 8);
    assert!(stderr(&o).contains("broke the protocol"), "{}", stderr(&o));
}

/// A service of another protocol on 127.0.0.1: it writes `banner` as soon
/// as it accepts (SSH, SMTP), or, with `after_request`, once it has read
/// what the client sent (HTTP, TLS); then it closes the connection. The
/// counter is the number of connections accepted.
fn foreign_server(
    banner: &'static [u8],
    after_request: bool,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            if after_request {
                let _ = stream.read(&mut [0; 4096]);
            }
            let _ = stream.write_all(banner);
            // Read what else comes until the client closes (no reset).
            let _ = std::io::copy(&mut stream, &mut std::io::sink());
        }
    });
    (port, accepted)
}

#[test]
fn a_port_answering_http_is_named_at_once_with_exit_8() {
    let dir = workdir();
    let (port, accepted) = foreign_server(b"HTTP/1.1 400 Bad Request\r\n\r\n", true);
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let o = run_with(dir.path(), &addr, &["--json"]);
    assert_exit(&o, 8);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no timeout waited"
    );
    let err = stderr(&o);
    let line = format!(
        "sealdrop-client: {addr} is not a sealdrop server: it answered \
         'HTTP/1.1 400 Bad Request' (HTTP); check the port in --server"
    );
    assert_eq!(err, format!("{line}\n"), "one line, no retry notes");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no retries"
    );
    let v = json(&o);
    assert_eq!(v["outcome"], "protocol_error");
    assert_eq!(v["error"], line.strip_prefix("sealdrop-client: ").unwrap());
}

#[test]
fn ssh_and_tls_answers_are_named_too() {
    let dir = workdir();
    for (banner, after_request, shown) in [
        (
            &b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"[..],
            false,
            "'SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13' (SSH)",
        ),
        (
            &[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x32][..],
            true,
            "'15 03 01 00 02 02 32' (TLS alert)",
        ),
        (
            &[3, 0x99, 0x99, 0, 0, 0, 0][..],
            true,
            "'03 99 99 00 00 00 00'; check",
        ),
    ] {
        let (port, accepted) = foreign_server(banner, after_request);
        let o = run_with(dir.path(), &format!("127.0.0.1:{port}"), &[]);
        assert_exit(&o, 8);
        let err = stderr(&o);
        assert!(
            err.contains("is not a sealdrop server: it answered ") && err.contains(shown),
            "{err}"
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

#[test]
fn an_unresolvable_host_fails_at_once_with_exit_3() {
    let dir = workdir();
    let o = run_with(dir.path(), "nosuch.invalid:1357", &["--json"]);
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "no retry notes: {err}");
    assert!(
        err.starts_with("sealdrop-client: cannot resolve host 'nosuch.invalid' (DNS): ")
            && err.contains("check the host name in --server"),
        "{err}"
    );
    assert!(!err.contains("port") && !err.contains("tries"), "{err}");
    assert_eq!(json(&o)["outcome"], "network_error");

    // From transfer.info, the hint names its line.
    fs::write(
        dir.path().join("transfer.info"),
        "nosuch.invalid:1357\nalice\nplain_1000.bin\n",
    )
    .unwrap();
    let o = run(dir.path(), &["--quiet"]);
    assert_exit(&o, 3);
    assert!(
        stderr(&o).contains("check the host name in line 1 of transfer.info"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unreadable_file_exits_7_before_connecting() {
    let dir = workdir();
    let server = FakeServer::vectors();
    let mut args = flags(&server.addr());
    args[5] = "no-such-file.bin".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(dir.path(), &args);
    assert_exit(&o, 7);
    assert!(
        stderr(&o).contains("cannot read 'no-such-file.bin': not found; check the path"),
        "{}",
        stderr(&o)
    );
    // Given as an argument rather than with --file: the same, and the
    // message does not point at a flag that was not used.
    let mut args = flags(&server.addr());
    args.drain(4..6);
    args.push("no-such-file.bin".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(dir.path(), &args);
    assert_exit(&o, 7);
    let err = stderr(&o);
    assert!(
        err.contains("cannot read 'no-such-file.bin': not found; check the path"),
        "{err}"
    );
    assert!(!err.contains("--file"), "{err}");
    assert!(server.frames().is_empty());
}

#[test]
fn unwritable_state_dir_exits_7() {
    let dir = workdir();
    // A non-empty folder where priv.key goes: the rename over it fails
    // (file permissions would not stop a test running as root).
    fs::create_dir_all(dir.path().join("state/priv.key/x")).unwrap();
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &["--state-dir", "state"]);
    assert_exit(&o, 7);
    assert!(
        stderr(&o).contains("could not save priv.key and me.info"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn too_large_file_is_refused_before_anything_is_sent() {
    let dir = workdir();
    let big = fs::File::create(dir.path().join("huge.bin")).unwrap();
    big.set_len(4_294_967_024).unwrap(); // sparse: MAX_PLAINTEXT_SIZE + 1
    let server = FakeServer::vectors();
    let mut args = flags(&server.addr());
    args[5] = "huge.bin".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(dir.path(), &args);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("at most 4294967023 bytes"),
        "{}",
        stderr(&o)
    );
    assert!(server.frames().is_empty());
}

#[test]
fn bad_flags_exit_2() {
    let dir = workdir();
    for args in [
        vec!["--bogus"],
        vec!["--timeout", "0"],
        vec!["--timeout", "abc"],
        vec![
            "--server",
            "no-port",
            "--name",
            "alice",
            "--file",
            "plain_1000.bin",
        ],
        vec![
            "--server",
            "127.0.0.1:1357",
            "--name",
            "",
            "--file",
            "plain_1000.bin",
        ],
        vec![
            "--server",
            "127.0.0.1:1357",
            "--name",
            &"n".repeat(101),
            "--file",
            "plain_1000.bin",
        ],
        vec![
            "--server",
            "127.0.0.1:1357",
            "--name",
            "alice",
            "--file",
            "/",
        ],
        vec!["--name", "alice"], // no transfer.info for the rest
    ] {
        let o = run(dir.path(), &args);
        assert_exit(&o, 2);
        assert_eq!(stderr(&o).lines().count(), 1, "{args:?}: {}", stderr(&o));
    }
    // A value from a closed set: the one line lists the set.
    for (args, values) in [
        (
            ["--revision", "2099"],
            "(one of 2022c, 2023a, 2023c, 2024a, 2024c)",
        ),
        (["--packet-mode", "zz"], "(one of split, each)"),
    ] {
        let o = run(dir.path(), &args);
        assert_exit(&o, 2);
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(values), "{args:?}: {err}");
    }
}

#[test]
fn unusable_rsa_key_exits_2() {
    let dir = workdir();
    fs::write(dir.path().join("bad.der"), b"not a key").unwrap();
    let server = FakeServer::vectors();
    let o = run(
        dir.path(),
        &[
            "--server",
            &server.addr(),
            "--name",
            "alice",
            "--file",
            "plain_1000.bin",
            "--rsa-key",
            "bad.der",
        ],
    );
    assert_exit(&o, 2);
    assert!(server.frames().is_empty());
}

#[test]
fn malformed_me_info_exits_2() {
    let dir = workdir();
    fs::write(dir.path().join("me.info"), "alice\nnot-hex\nAAAA\n").unwrap();
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("me.info' is malformed"), "{err}");
    // Deleting it locks the name out (2101 on the next run): never advised.
    assert!(!err.contains("delete"), "{err}");
    assert!(
        err.contains("Restore it from a backup")
            && err.contains("--state-dir")
            && err.contains("sealdrop-server clients forget NAME"),
        "{err}"
    );
    assert!(server.codes().is_empty(), "nothing sent");
}

#[test]
fn help_documents_flags_and_exit_codes() {
    let dir = workdir();
    let o = run(dir.path(), &["--help"]);
    assert_exit(&o, 0);
    let help = stdout(&o);
    for needle in [
        "--server",
        "--name",
        "--file",
        "--state-dir",
        "--connect-timeout",
        "--timeout",
        "--quiet",
        "--json",
        "Exit codes:",
        "example",
    ] {
        assert!(help.contains(needle), "{needle}");
    }
    for code in 2..=9 {
        assert!(help.contains(&format!("\n  {code}  ")), "exit code {code}");
    }
    assert!(!help.contains("rsa-key"), "help names no hidden flag");
    assert!(!help.contains("print-"), "the generators are for packagers");
}

#[test]
fn completions_and_man_page_are_generated_from_the_flags() {
    let dir = workdir();
    let flags = [
        "server",
        "name",
        "file",
        "state-dir",
        "connect-timeout",
        "timeout",
        "quiet",
        "json",
        "revision",
        "packet-size",
        "packet-base",
        "packet-mode",
        "packet-fields",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let o = run(dir.path(), &["--print-completions", shell]);
        assert_exit(&o, 0);
        let script = stdout(&o);
        for flag in flags {
            let as_written = match shell {
                "fish" => format!("-l {flag}"),
                _ => format!("--{flag}"),
            };
            assert!(script.contains(&as_written), "{shell}: {flag}");
        }
        assert!(script.contains("sealdrop-client"), "{shell}");
        for not in ["rsa-key", "print-completions", "print-man"] {
            assert!(!script.contains(not), "{shell} offers {not}");
        }
        if shell == "bash"
            && std::process::Command::new("bash")
                .arg("-c")
                .arg("true")
                .output()
                .is_ok()
        {
            // The script parses.
            let checked = std::process::Command::new("bash")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(checked.status.success(), "{}", stderr(&checked));
        }
    }
    assert!(stdout(&run(dir.path(), &["--print-completions", "zsh"]))
        .starts_with("#compdef sealdrop-client"));

    let o = run(dir.path(), &["--print-man"]);
    assert_exit(&o, 0);
    let man = stdout(&o);
    assert!(man.contains(".TH sealdrop-client 1 "), "{man}");
    for flag in flags {
        let roff = format!("\\fB\\-\\-{}\\fR", flag.replace('-', "\\-"));
        assert!(man.contains(&roff), "{roff}");
    }
    for section in ["EXIT CODES", "REVISIONS AND PACKETS", "EXAMPLES"] {
        assert!(
            man.contains(&format!(".SH \"{section}\"\n.nf\n")),
            "{section}"
        );
    }
    assert!(man.contains("outcome_unknown (9)"), "{man}");
    assert!(!man.contains("rsa"), "{man}");

    let o = run(dir.path(), &["--print-completions", "tcsh"]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("unknown shell 'tcsh'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn json_output_on_success_and_failure() {
    let dir = workdir();
    let server = FakeServer::vectors();
    // One state folder for both servers (the default is one per server).
    let o = run_with(dir.path(), &server.addr(), &["--json", "--state-dir", "."]);
    assert_exit(&o, 0);
    let v = json(&o);
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["file"], "plain_1000.bin");
    assert_eq!(v["bytes"], 1000);
    assert_eq!(v["cksum"], 493196554);
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["client_id"], VECTOR_ID);
    assert_eq!(v["outcome"], "verified");
    assert!(v["seconds"].as_f64().unwrap() >= 0.0);

    let o = run_with(
        dir.path(),
        &format!("127.0.0.1:{}", closed_port()),
        &["--json", "--state-dir", ".", "--retry-for", "1"],
    );
    assert_exit(&o, 3);
    let v = json(&o);
    assert_eq!(v["outcome"], "network_error");
    let err = stderr(&o);
    let last = err.lines().last().unwrap();
    let message = last.strip_prefix("sealdrop-client: ").unwrap();
    assert!(message.starts_with("could not connect"), "{message}");
    assert_eq!(v["error"], message, "the failure line, without the program");
    assert_eq!(
        v["client_id"], VECTOR_ID,
        "from the me.info of the first run"
    );
    assert_eq!(v["cksum"], serde_json::Value::Null);

    let o = run(dir.path(), &["--json", "--bogus"]);
    assert_exit(&o, 2);
    let v = json(&o);
    assert_eq!(v["outcome"], "usage_error");
    assert!(v["error"].as_str().unwrap().contains("--bogus"), "{v}");
}

#[test]
fn stderr_of_a_non_terminal_has_no_control_characters() {
    let dir = workdir();
    let server = FakeServer::start(|f, i| match (f.code, i) {
        (_, 0) => Reply::Send(vector("response_2107.bin")),
        (1028, _) => Reply::Send(wrong_crc_2103()),
        (c, _) => vector_reply(c),
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 5);
    let odd_name = "evil\u{1b}[31m.bin";
    fs::write(dir.path().join(odd_name), b"x").unwrap();
    let o2 = run(
        dir.path(),
        &[
            "--server",
            &server.addr(),
            "--name",
            "alice",
            "--file",
            odd_name,
        ],
    );
    assert_exit(&o2, 2);
    for out in [&o, &o2] {
        let err = &out.stderr;
        assert!(!err.is_empty());
        assert!(
            err.iter()
                .all(|&b| b == b'\n' || (0x20..0x7f).contains(&b) || b >= 0x80),
            "{}",
            stderr(out)
        );
    }
}

#[test]
fn file_that_changes_size_before_it_is_sent_exits_7() {
    let dir = workdir();
    let path = dir.path().join("plain_1000.bin");
    let server = FakeServer::start(move |f, _| {
        if f.code == 1026 {
            fs::write(&path, b"shorter now").unwrap();
        }
        vector_reply(f.code)
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 7);
    assert!(stderr(&o).contains("changed size"), "{}", stderr(&o));
    assert!(!server.codes().contains(&1028));
}

#[test]
fn several_files_go_in_one_session_and_each_is_reported() {
    let dir = workdir();
    std::fs::copy(dir.path().join("plain_1000.bin"), dir.path().join("b.bin")).unwrap();
    // The vectors' answers, the 2103 echoing whichever name was sent.
    let server = FakeServer::start(|f, _| match f.code {
        1028 => {
            let mut r = vector("response_2103.bin");
            r[7 + 20..7 + 20 + 255].copy_from_slice(&f.bytes[23 + 4..23 + 4 + 255]);
            Reply::Send(r)
        }
        c => vector_reply(c),
    });
    let mut args = flags(&server.addr());
    args.extend(["b.bin", "--json", "--state-dir", "."].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(dir.path(), &args);
    assert_exit(&o, 0);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Positional files first, then --file.
    let files: Vec<&str> = lines.iter().map(|v| v["file"].as_str().unwrap()).collect();
    assert_eq!(files, ["b.bin", "plain_1000.bin"]);
    assert!(lines.iter().all(|v| v["outcome"] == "verified"));
    // One registration, then 1028 + 1029 per file, all on one connection.
    assert_eq!(server.codes(), [1025, 1026, 1028, 1029, 1028, 1029]);
    assert!(server.frames().iter().all(|f| f.conn == 0));
}

#[test]
fn a_missing_second_file_stops_the_run_before_any_traffic() {
    let dir = workdir();
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &["missing.bin"]);
    assert_exit(&o, 7);
    assert!(stderr(&o).contains("missing.bin"), "{}", stderr(&o));
    assert!(server.codes().is_empty());
}

#[test]
fn a_folder_is_refused_with_a_clear_message() {
    let dir = workdir();
    std::fs::create_dir(dir.path().join("photos")).unwrap();
    let server = FakeServer::vectors();
    let o = run(
        dir.path(),
        &["--server", &server.addr(), "--name", "alice", "photos"],
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("is a folder"), "{}", stderr(&o));
    assert!(server.codes().is_empty());
}

#[test]
fn as_renames_and_a_non_ascii_name_says_which_byte() {
    let dir = workdir();
    std::fs::copy(
        dir.path().join("plain_1000.bin"),
        dir.path().join("caf\u{e9}.bin"),
    )
    .unwrap();
    let server = FakeServer::vectors();
    let key = vector_path(KEY).to_string_lossy().into_owned();
    let base = [
        "--server",
        &server.addr(),
        "--name",
        "alice",
        "--rsa-key",
        &key,
    ];
    let o = run(dir.path(), &[&base[..], &["caf\u{e9}.bin"]].concat());
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("0xC3 0xA9 at offset 3") && err.contains("--as"),
        "{err}"
    );
    assert!(server.codes().is_empty());
    // --as stores it under the vector's name, which the fake server echoes.
    let o = run(
        dir.path(),
        &[&base[..], &["caf\u{e9}.bin", "--as", "plain_1000.bin"]].concat(),
    );
    assert_exit(&o, 0);
    // --as with two files is a usage error.
    let o = run(dir.path(), &[&base[..], &["a", "b", "--as", "x"]].concat());
    assert_exit(&o, 2);
}

#[test]
fn standard_input_is_sent_under_the_as_name() {
    use std::io::Write;
    let dir = workdir();
    let server = FakeServer::vectors();
    let key = vector_path(KEY).to_string_lossy().into_owned();
    let plain = std::fs::read(dir.path().join("plain_1000.bin")).unwrap();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "--server",
            &server.addr(),
            "--name",
            "alice",
            "--rsa-key",
            &key,
        ])
        .args(["-", "--as", "plain_1000.bin", "--json", "--state-dir", "."])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A pipe: the client must spool it to learn the size.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&plain).unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert_exit(&o, 0);
    assert_eq!(json(&o)["bytes"], 1000);
    assert_eq!(json(&o)["cksum"], 493196554);
    // `-` without --as has no name.
    let o = run(
        dir.path(),
        &["--server", &server.addr(), "--name", "alice", "-"],
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--as"), "{}", stderr(&o));
}

#[test]
fn an_unusable_state_folder_fails_before_any_traffic() {
    let dir = workdir();
    // A file where the state folder should be.
    std::fs::write(dir.path().join("state"), b"").unwrap();
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &["--state-dir", "state/sub"]);
    assert_exit(&o, 7);
    let err = stderr(&o);
    assert!(err.contains("nothing was sent"), "{err}");
    assert!(
        !err.contains("delete"),
        "never advise deleting state: {err}"
    );
    assert!(
        server.codes().is_empty(),
        "no registration: the name stays free"
    );
}

#[test]
fn flag_runs_keep_their_identity_per_user_and_server() {
    let dir = workdir();
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
    let port = server.addr().rsplit_once(':').unwrap().1.to_string();
    let state = dir
        .path()
        .join("xdg-state/sealdrop")
        .join(format!("127.0.0.1_{port}"));
    assert!(state.join("me.info").is_file());
    assert!(
        !dir.path().join("me.info").exists(),
        "not in the working folder"
    );
    // From another folder, the same client reconnects (1027).
    let other = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("plain_1000.bin"),
        other.path().join("plain_1000.bin"),
    )
    .unwrap();
    let o = Command::new(BIN)
        .current_dir(other.path())
        .args(flags(&server.addr()))
        .env("XDG_STATE_HOME", dir.path().join("xdg-state"))
        .env_remove("SEALDROP_STATE_DIR")
        .output()
        .unwrap();
    assert_exit(&o, 0);
    assert_eq!(server.codes().iter().filter(|c| **c == 1027).count(), 1);
}

#[test]
fn transfer_info_runs_keep_me_info_beside_it() {
    let dir = workdir();
    let server = FakeServer::vectors();
    std::fs::write(
        dir.path().join("transfer.info"),
        format!("{}\nalice\nplain_1000.bin\n", server.addr()),
    )
    .unwrap();
    let key = vector_path(KEY).to_string_lossy().into_owned();
    let o = run(dir.path(), &["--rsa-key", &key]);
    assert_exit(&o, 0);
    assert!(dir.path().join("me.info").is_file());
    assert!(!dir.path().join("xdg-state").exists());
}

#[test]
fn connection_failures_are_retried_for_retry_for() {
    // A server that answered once, then closes every connection at once,
    // as one restarting might.
    let dir = workdir();
    let server = FakeServer::start(|f, i| match i {
        0 => vector_reply(f.code),
        _ => Reply::SendAndClose(Vec::new()),
    });
    let o = run_with(dir.path(), &server.addr(), &["--retry-for", "5", "--quiet"]);
    assert_exit(&o, 3);
    // The old fixed policy made 4 tries; waits doubling from 0.2 s within
    // 5 s make at least 5.
    let conns = server.frames().len();
    assert!(conns >= 5, "{conns} connections");
    assert!(stderr(&o).contains("--retry-for"), "{}", stderr(&o));
}

#[test]
fn sending_a_name_again_says_it_replaced_the_earlier_copy() {
    let dir = workdir();
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &["--state-dir", "."]);
    assert_exit(&o, 0);
    assert!(
        stderr(&o).contains("replaces the stored copy"),
        "{}",
        stderr(&o)
    );
    let o = run_with(dir.path(), &server.addr(), &["--state-dir", "."]);
    assert_exit(&o, 0);
    let err = stderr(&o);
    assert!(
        err.contains("'plain_1000.bin' replaced the copy this client sent on"),
        "{err}"
    );
    assert!(!err.contains("shown once"), "{err}");
    let log = fs::read_to_string(dir.path().join("sent.log")).unwrap();
    assert_eq!(log.lines().count(), 2);
    assert!(
        log.lines()
            .all(|l| l.ends_with(" 493196554 plain_1000.bin")),
        "{log}"
    );
}

#[test]
fn a_name_other_than_the_saved_clients_is_refused_before_any_traffic() {
    let dir = workdir();
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
    let before = server.codes().len();
    // The per-server folder now holds alice; --name bob must not send as her.
    let mut args = flags(&server.addr());
    let at = args.iter().position(|a| a == "alice").unwrap();
    args[at] = "bob".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(dir.path(), &args);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("holds the client 'alice'")
            && err.contains("--name is 'bob'")
            && err.contains("nothing was sent")
            && err.contains("--state-dir DIR"),
        "{err}"
    );
    assert!(!err.contains("delete"), "{err}");
    assert_eq!(server.codes().len(), before, "no connection for bob");
}

#[test]
fn transfer_info_naming_another_client_uses_me_info_and_says_so() {
    let dir = workdir();
    write_vector_me_info(dir.path());
    let server = FakeServer::vectors();
    std::fs::write(
        dir.path().join("transfer.info"),
        format!("{}\nbob\nplain_1000.bin\n", server.addr()),
    )
    .unwrap();
    let o = run(dir.path(), &[]);
    assert_exit(&o, 0);
    assert_eq!(server.codes().first(), Some(&1027), "reconnects as alice");
    let err = stderr(&o);
    assert!(
        err.contains("is the client 'alice' and line 2 of transfer.info says 'bob'")
            && err.contains("sending as 'alice'"),
        "{err}"
    );
}

#[test]
fn a_refused_name_points_at_the_folder_of_the_same_port_that_holds_it() {
    let dir = workdir();
    // The first 1025 registers alice; any later one is refused (2101), as
    // a real server refuses a name it holds for another key.
    let mut registrations = 0;
    let server = FakeServer::start(move |f, _| match f.code {
        1025 => {
            registrations += 1;
            match registrations {
                1 => vector_reply(1025),
                _ => Reply::Send(vector("response_2101.bin")),
            }
        }
        c => vector_reply(c),
    });
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
    // The same server typed as localhost: another per-server folder, no
    // me.info there, a registration the server refuses.
    let localhost = format!("localhost:{}", server.port);
    let o = run_with(dir.path(), &localhost, &[]);
    assert_exit(&o, 4);
    let kept = dir
        .path()
        .join("xdg-state/sealdrop")
        .join(format!("127.0.0.1_{}", server.port));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "A client named 'alice' is kept in '{}'",
            kept.display()
        )) && err.contains(&format!("run with --state-dir '{}'", kept.display())),
        "{err}"
    );
    // And that folder works for this spelling of the host.
    let kept = kept.to_string_lossy().into_owned();
    let o = run_with(dir.path(), &localhost, &["--state-dir", &kept]);
    assert_exit(&o, 0);
}

#[test]
fn a_literal_tilde_in_state_dir_is_refused_not_made_a_folder() {
    let dir = workdir();
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &["--state-dir=~/.sealdrop"]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("--state-dir '~/.sealdrop' starts with a literal ~")
            && err.contains("--state-dir ~/.sealdrop (with a space)")
            && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(!dir.path().join("~").exists(), "no folder named ~");
    assert!(server.codes().is_empty());
}

/// A port that accepts connections and, on each, reads what comes and
/// never answers (as `python3 -m http.server` does with a request that has
/// no line end) or, with `close`, closes at once without a byte. Counts
/// the connections.
fn mute_port(close: bool) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&conns);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            if close {
                drop(stream);
                continue;
            }
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    (addr, conns)
}

#[test]
fn a_port_that_reads_and_never_answers_gets_one_retry_and_a_plain_message() {
    let dir = workdir();
    let (addr, conns) = mute_port(false);
    let started = Instant::now();
    let o = run_with(dir.path(), &addr, &["--timeout", "0.5"]);
    assert_exit(&o, 3);
    // The first try and one retry: 2 connections (it was 4, each waiting
    // --timeout, before).
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{addr} accepted the connection but sent nothing within 0.5 s in reply to request \
             1025; a sealdrop server answers at once: trying once more"
        )),
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("on the first try and on one retry")
            && last.contains("is it a sealdrop server?")
            && last.contains("check the port in --server"),
        "{err}"
    );
    assert!(!err.contains("giving up in"), "{err}");
}

#[test]
fn a_port_that_closes_at_once_gets_one_retry_and_a_plain_message() {
    let dir = workdir();
    let (addr, conns) = mute_port(true);
    let o = run_with(dir.path(), &addr, &["--retry-for", "5", "--json"]);
    assert_exit(&o, 3);
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
    let err = stderr(&o);
    let last = err.lines().last().unwrap();
    assert!(
        last.contains(&format!(
            "{addr} accepted the connection but closed it without sending a byte"
        )) && last.contains("on the first try and on one retry")
            && last.contains("is it a sealdrop server?")
            && last.contains("check the port in --server"),
        "{err}"
    );
    assert_eq!(json(&o)["outcome"], "network_error");
}

// ---- The real server ----

/// The `sealdrop-server` of this build (same target folder and profile),
/// brought up to date by cargo once per test process.
fn server_bin() -> &'static std::path::Path {
    static SERVER: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let client = std::path::Path::new(BIN);
        let profile_dir = client.parent().expect("client binary's folder");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "--quiet", "-p", "sealdrop-server", "--bin"])
            .arg("sealdrop-server")
            .arg("--target-dir")
            .arg(profile_dir.parent().expect("target folder"))
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let built = cargo.output().expect("run cargo build");
        assert!(
            built.status.success(),
            "cargo build -p sealdrop-server: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let bin = profile_dir.join("sealdrop-server");
        assert!(bin.is_file(), "{}", bin.display());
        bin
    })
}

/// A real server on 127.0.0.1:`port` with its data in `data`, killed
/// when dropped.
struct RealServer {
    child: std::process::Child,
}

impl RealServer {
    fn start(port: u16, data: &std::path::Path) -> RealServer {
        let log = fs::File::create(data.with_extension("log")).unwrap();
        let child = Command::new(server_bin())
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sealdrop-server");
        let mut server = RealServer { child };
        let until = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                server.child.try_wait().unwrap().is_none(),
                "sealdrop-server exited: {}",
                fs::read_to_string(data.with_extension("log")).unwrap_or_default()
            );
            assert!(Instant::now() < until, "sealdrop-server not listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A proxy on 127.0.0.1 to `server` that forwards everything, except
/// that when the server's 2104 comes it cuts both connections instead of
/// passing it on: the client's 1029 reached the server, its answer never
/// reaches the client.
fn cutting_proxy(server: u16) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", server)) else {
                continue;
            };
            let (mut c_in, mut u_out) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut u_out);
                let _ = u_out.shutdown(Shutdown::Write);
            });
            let (mut u_in, mut c_out) = (upstream, client);
            std::thread::spawn(move || loop {
                let mut header = [0u8; 7];
                if u_in.read_exact(&mut header).is_err() {
                    let _ = c_out.shutdown(Shutdown::Both);
                    return;
                }
                let code = u16::from_le_bytes([header[1], header[2]]);
                let size = u32::from_le_bytes(header[3..7].try_into().unwrap()) as usize;
                let mut payload = vec![0u8; size.min(1 << 20)];
                if u_in.read_exact(&mut payload).is_err() {
                    let _ = c_out.shutdown(Shutdown::Both);
                    return;
                }
                if code == 2104 {
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = u_in.shutdown(Shutdown::Both);
                    return;
                }
                if c_out.write_all(&header).is_err() || c_out.write_all(&payload).is_err() {
                    return;
                }
            });
        }
    });
    addr
}

#[test]
fn the_answer_to_1029_cut_off_by_a_proxy_is_outcome_unknown_with_exit_9() {
    let dir = workdir();
    let data = dir.path().join("srv");
    let port = closed_port();
    let _server = RealServer::start(port, &data);
    let proxy = cutting_proxy(port);
    let o = run_with(dir.path(), &proxy, &["--retry-for", "1", "--json"]);
    assert_exit(&o, 9);
    let j = json(&o);
    assert_eq!(j["outcome"], "outcome_unknown");
    let error = j["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("'plain_1000.bin' was sent whole")
            && error.contains("the server's answer (2104) did not arrive")
            && error.contains("whether the server kept the file is not known")
            && error.contains("resending is safe"),
        "{error}"
    );
    assert!(!error.contains("most likely"), "{error}");
    assert!(stderr(&o).contains(&error), "{}", stderr(&o));
}

#[test]
fn a_real_server_restarted_on_its_port_is_waited_out_with_retry_for() {
    let dir = workdir();
    let data = dir.path().join("srv");
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = RealServer::start(port, &data);
    let o = run_with(dir.path(), &addr, &[]);
    assert_exit(&o, 0);
    // The server stops; the client starts and retries; the server comes back.
    server.stop();
    let mut args = flags(&addr);
    args.extend(["--retry-for", "60"].map(String::from));
    let client = Command::new(BIN)
        .current_dir(dir.path())
        .args(&args)
        .env_remove("RUST_LOG")
        .env_remove("SEALDROP_REVISION")
        .env_remove("SEALDROP_STATE_DIR")
        .env("XDG_STATE_HOME", dir.path().join("xdg-state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _server = RealServer::start(port, &data);
    let o = client.wait_with_output().unwrap();
    assert_exit(&o, 0);
    let err = stderr(&o);
    assert!(
        err.contains("connection problem: connection refused; retry 1 in"),
        "{err}"
    );
    assert!(
        stdout(&o).starts_with("sent plain_1000.bin: 1000 bytes"),
        "{}",
        stdout(&o)
    );
    // One client throughout: the second run reconnected with the saved key.
    let ids: Vec<_> = fs::read_dir(data.join("files")).unwrap().collect();
    assert_eq!(ids.len(), 1);
}

/// A server answering from the vectors, the 2103 echoing whichever file
/// name was sent; 1028s of `refused` get 2107.
fn echoing_server(refused: &'static str) -> FakeServer {
    FakeServer::start(move |f, _| match f.code {
        1028 => {
            let name = &f.bytes[23 + 4..23 + 4 + 255];
            if name.starts_with(refused.as_bytes()) && name[refused.len()] == 0 {
                return Reply::Send(vector("response_2107.bin"));
            }
            let mut r = vector("response_2103.bin");
            r[7 + 20..7 + 20 + 255].copy_from_slice(name);
            Reply::Send(r)
        }
        c => vector_reply(c),
    })
}

#[test]
fn two_file_flags_send_both_files() {
    let dir = workdir();
    std::fs::copy(dir.path().join("plain_1000.bin"), dir.path().join("b.bin")).unwrap();
    let server = echoing_server("none");
    // flags() gives --file plain_1000.bin; a second --file adds b.bin.
    let o = run_with(dir.path(), &server.addr(), &["--file", "b.bin"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("sent plain_1000.bin: 1000 bytes") && out.contains("sent b.bin: 1000 bytes"),
        "{out}"
    );
    assert_eq!(server.codes(), [1025, 1026, 1028, 1029, 1028, 1029]);
}

#[test]
fn a_failed_file_among_several_is_named_on_its_line() {
    let dir = workdir();
    for f in ["b.bin", "c.bin"] {
        std::fs::copy(dir.path().join("plain_1000.bin"), dir.path().join(f)).unwrap();
    }
    let server = echoing_server("b.bin");
    let o = run_with(dir.path(), &server.addr(), &["b.bin", "c.bin"]);
    assert_exit(&o, 6);
    let err = stderr(&o);
    assert!(
        err.lines().any(|l| l
            .starts_with("sealdrop-client: b.bin: server responded with an error (2107) to 1028")),
        "{err}"
    );
    let out = stdout(&o);
    assert!(
        out.contains("sent plain_1000.bin") && out.contains("sent c.bin"),
        "{out}"
    );
}

#[test]
fn not_sent_lines_follow_the_failure_that_ended_the_run() {
    let dir = workdir();
    for f in ["b.bin", "c.bin"] {
        std::fs::copy(dir.path().join("plain_1000.bin"), dir.path().join(f)).unwrap();
    }
    let server = FakeServer::start(|f, _| match f.code {
        1025 => Reply::Send(vector("response_2101.bin")),
        c => vector_reply(c),
    });
    let o = run_with(dir.path(), &server.addr(), &["b.bin", "c.bin", "--json"]);
    assert_exit(&o, 4);
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("sealdrop-client: b.bin: server refused to register 'alice'"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("sealdrop-client: c.bin: not sent"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("sealdrop-client: plain_1000.bin: not sent"),
        "{err}"
    );
    let out = stdout(&o);
    let outcomes: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["file"].as_str().unwrap().to_string(),
                v["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("b.bin".into(), "registration_failed".into()),
            ("c.bin".into(), "not_sent".into()),
            ("plain_1000.bin".into(), "not_sent".into()),
        ]
    );
}

#[test]
fn an_old_me_info_in_the_working_folder_is_used_with_a_note_saying_where_to_move_it() {
    let dir = workdir();
    write_vector_me_info(dir.path());
    let server = FakeServer::vectors();
    let o = run_with(dir.path(), &server.addr(), &[]);
    assert_exit(&o, 0);
    assert_eq!(
        server.codes().first(),
        Some(&1027),
        "the old client reconnects"
    );
    let default = dir
        .path()
        .join("xdg-state/sealdrop")
        .join(format!("127.0.0.1_{}", server.port));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "using me.info in the current folder (the old default); move it and priv.key to \
             '{}' (or pass --state-dir .)",
            default.display()
        )),
        "{err}"
    );
    assert!(!default.join("me.info").exists(), "nothing written there");
}
