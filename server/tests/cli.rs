//! The command line of the real `sealdrop-server` binary, as an operator
//! or a script meets it: `--log-level` values, `--check-config` and the
//! port file, exit statuses of bad flags, SIGHUP, the connection numbers
//! and upload lines of the log, the generated completions and man page,
//! and `make install`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use sealdrop_protocol::cksum::cksum;
use sealdrop_protocol::{Response, Revision};

/// What a finished command did (a [`Ran`] that failure messages can show).
#[derive(Debug)]
struct Out {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, bounded to `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Out {
    let Ran {
        status,
        stdout,
        stderr,
    } = run_bounded(cmd, timeout);
    Out {
        status,
        stdout,
        stderr,
    }
}

/// `sealdrop-server ARGS` run in `cwd`, outside systemd and without
/// `RUST_LOG`, bounded to 20 s.
fn server_in(cwd: &Path, args: &[&str]) -> Out {
    run(bare(cwd).args(args), Duration::from_secs(20))
}

/// The binary, in `cwd`, with none of the environment that changes what
/// it does (systemd's variables, `RUST_LOG`).
fn bare(cwd: &Path) -> Command {
    let mut cmd = Command::new(SERVER_BIN);
    cmd.current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM");
    cmd
}

// ---------------------------------------------------------------------------
// 1. --log-level, RUST_LOG, and --check-config with the port file
// ---------------------------------------------------------------------------

/// A data directory the server cannot use: a folder under a regular file.
fn unusable_data_dir(tmp: &Path) -> PathBuf {
    let file = tmp.join("regular-file");
    fs::write(&file, b"not a directory").unwrap();
    file.join("data")
}

#[test]
fn unknown_log_levels_are_refused_even_by_check_config() {
    let tmp = tempfile::tempdir().unwrap();
    for level in ["loud", "warnings", "verbose", "off"] {
        let ran = server_in(
            tmp.path(),
            &[
                "--log-level",
                level,
                "--check-config",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                "data",
            ],
        );
        assert_eq!(ran.status.code(), Some(1), "--log-level {level:?}: {ran:?}");
        assert!(
            ran.stderr
                .contains(&format!("invalid value '{level}' for '--log-level"))
                && ran
                    .stderr
                    .contains("[possible values: error, warn, info, debug, trace]"),
            "unclear message for {level:?}: {}",
            ran.stderr
        );
        assert!(!ran.stdout.contains("configuration ok"), "{}", ran.stdout);
    }
}

#[test]
fn log_level_warning_is_journalds_name_for_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let data = unusable_data_dir(tmp.path());
    for level in ["warning", "WARNING", "warn", "Warn"] {
        let ran = server_in(
            tmp.path(),
            &[
                "--log-level",
                level,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
            ],
        );
        assert_eq!(ran.status.code(), Some(1), "{level}: {ran:?}");
        // The fatal error is shown; info lines are filtered out.
        assert!(
            ran.stderr.contains("ERROR") && ran.stderr.contains("cannot use data directory"),
            "--log-level {level} hid the start-up error: {:?}",
            ran.stderr
        );
        assert!(!ran.stderr.contains(" INFO "), "{level}: {}", ran.stderr);
    }
    let ran = server_in(
        tmp.path(),
        &[
            "--log-level",
            "warning",
            "--check-config",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "data",
        ],
    );
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.starts_with("configuration ok"), "{}", ran.stdout);
}

#[test]
fn rust_log_overrides_log_level_but_never_hides_a_fatal_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = unusable_data_dir(tmp.path());
    let args = [
        "--log-level",
        "error",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    // RUST_LOG=debug wins over --log-level error: the debug line about the
    // open-file limit shows.
    let ran = run(
        bare(tmp.path()).args(args).env("RUST_LOG", "debug"),
        Duration::from_secs(20),
    );
    assert_eq!(ran.status.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("DEBUG"), "{}", ran.stderr);
    // A RUST_LOG that lets nothing through (off, or a module name that is
    // no module) still shows why the server did not start.
    for filter in ["off", "loud"] {
        let ran = run(
            bare(tmp.path()).args(args).env("RUST_LOG", filter),
            Duration::from_secs(20),
        );
        assert_eq!(ran.status.code(), Some(1), "RUST_LOG={filter}: {ran:?}");
        assert!(
            ran.stderr
                .contains("sealdrop-server: error: cannot use data directory"),
            "RUST_LOG={filter} hid the start-up error: {:?}",
            ran.stderr
        );
    }
}

#[test]
fn check_config_without_listen_needs_a_usable_port_file() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec!["--check-config", "--data-dir", "data"];
        args.extend_from_slice(extra);
        server_in(tmp.path(), &args)
    };
    // Missing.
    let ran = check(&[]);
    assert_eq!(ran.status.code(), Some(1), "missing port.info: {ran:?}");
    assert!(
        ran.stderr.contains("cannot read port.info") && ran.stderr.contains("--listen"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stdout.contains("configuration ok"));
    // Not a port.
    for bad in ["banana\n", "0\n", "70000\n", ""] {
        fs::write(tmp.path().join("port.info"), bad).unwrap();
        let ran = check(&[]);
        assert_eq!(ran.status.code(), Some(1), "port.info {bad:?}: {ran:?}");
        assert!(
            ran.stderr.contains("port.info does not hold a port number"),
            "{}",
            ran.stderr
        );
    }
    // --listen makes the port file irrelevant.
    let ran = check(&["--listen", "127.0.0.1:0"]);
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    // A good one (a port free right now).
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fs::write(tmp.path().join("port.info"), format!("{port}\n")).unwrap();
    let ran = check(&[]);
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert!(
        ran.stdout
            .starts_with(&format!("configuration ok: listen 0.0.0.0:{port}, ")),
        "{}",
        ran.stdout
    );
}

// ---------------------------------------------------------------------------
// 3. Exit status of bad flags
// ---------------------------------------------------------------------------

#[test]
fn bad_flags_exit_1_as_the_help_says() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        vec!["--bogus"],
        vec!["--max-connections", "many"],
        vec!["--sync-mode", "fast"],
        vec!["--listen", "nonsense"],
        vec!["--max-file-size", "1Q"],
        vec!["stray-argument"],
        vec!["--data-dir"],
    ] {
        let ran = server_in(tmp.path(), &bad);
        assert_eq!(ran.status.code(), Some(1), "{bad:?}: {ran:?}");
        assert!(
            ran.stderr.starts_with("error: ")
                && ran.stderr.contains("For more information, try '--help'."),
            "{bad:?}: {}",
            ran.stderr
        );
    }
    let help = server_in(tmp.path(), &["--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    assert!(
        help.stdout
            .contains("1 on a start-up error (bad flags or values, bad configuration"),
        "{}",
        help.stdout
    );
    let version = server_in(tmp.path(), &["--version"]);
    assert_eq!(version.status.code(), Some(0), "{version:?}");
    assert!(version.stdout.starts_with("sealdrop-server "));
}

// ---------------------------------------------------------------------------
// 2. SIGHUP
// ---------------------------------------------------------------------------

#[test]
fn sighup_is_logged_and_ignored() {
    let mut s = Server::start(&[]);
    s.good_client(10_000);
    s.signal("HUP");
    assert!(
        s.wait_log("SIGHUP received", Duration::from_secs(10)),
        "no log line for SIGHUP:\n{}",
        s.recent()
    );
    std::thread::sleep(Duration::from_millis(200));
    s.assert_alive();
    // Still serving, not draining.
    s.good_client(20_000);
    assert!(!s.log_contains("draining"), "{}", s.recent());
    // A second one is handled the same way.
    s.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || {
        s.log_lines()
            .iter()
            .filter(|l| l.contains("SIGHUP received"))
            .count()
            == 2
    }));
    s.assert_alive();
    s.stop();
}

/// True once the process runs Rust code: the standard library's start-up
/// (before `main`) catches SIGSEGV for its stack overflow message and
/// ignores SIGPIPE, which `/proc/PID/status` shows.
fn runtime_started(pid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    const SIGSEGV: u64 = 1 << (11 - 1);
    const SIGPIPE: u64 = 1 << (13 - 1);
    mask("SigCgt:") & SIGSEGV != 0 || mask("SigIgn:") & SIGPIPE != 0
}

/// True once the process catches SIGHUP (`SigCgt` of `/proc/PID/status`).
fn catches_sighup(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let v = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(v.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & 1 != 0)
}

/// SIGHUP to `pid` at once (`kill` as a command takes a millisecond or
/// more to start, longer than the server's start-up).
#[allow(unsafe_code)] // kill(2) has no safe wrapper in std.
fn sighup_now(pid: u32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

#[test]
fn sighup_during_start_up_is_logged_and_ignored() {
    let mut during_start_up = 0;
    for round in 0..5 {
        let mut s = Server::spawn_with(ServerOpts::default(), |_| {});
        let pid = s.pid();
        // Polled without a pause: start-up takes a few milliseconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !runtime_started(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the process did not start"
            );
        }
        // In main, before the database is open and the loop handles
        // signals: as soon as SIGHUP is caught, or 5 ms after the runtime
        // started (main follows it within microseconds; a server that
        // catches SIGHUP only in its event loop is still opening the
        // database then: that takes 7-55 ms in a debug build).
        let main_by = std::time::Instant::now() + Duration::from_millis(5);
        while !catches_sighup(pid) && std::time::Instant::now() < main_by {}
        sighup_now(pid);
        if let Some(st) = s.wait_exit(Duration::from_millis(100)) {
            panic!("round {round}: the server ended ({st}):\n{}", s.recent());
        }
        s.wait_listening();
        assert!(
            s.wait_log("SIGHUP received", Duration::from_secs(10)),
            "round {round}: no log line for SIGHUP:\n{}",
            s.recent()
        );
        if s.log_contains("SIGHUP received during start-up: ignored") {
            during_start_up += 1;
        }
        s.assert_alive();
        s.good_client(5_000);
        assert!(!s.log_contains("draining"), "{}", s.recent());
        s.stop();
    }
    // The signal came before the loop was set up at least once.
    assert!(during_start_up > 0, "every SIGHUP came after start-up");
}

#[test]
fn a_bad_database_url_is_named_once_and_never_echoes_its_password() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    // --check-config, and an administration command: exit 1, the flag
    // named once.
    let check = [
        "--check-config",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ];
    let stats = ["--data-dir", data, "stats"];
    for args in [&check[..], &stats[..]] {
        for url in [
            "mysql://u:topsecret@h/db",
            "postgres://u:topsecret@h/db?sslmode=require&sslcert=/etc/c.pem",
        ] {
            let out = server_in(tmp.path(), &[args, &["--database", url]].concat());
            assert_eq!(out.status.code(), Some(1), "{args:?} {url}: {out:?}");
            assert_eq!(
                out.stderr.matches("--database").count(),
                1,
                "{args:?} {url}: {out:?}"
            );
            assert!(!out.stderr.contains("topsecret"), "{out:?}");
        }
    }
}

/// An administration command against a PostgreSQL server that does not
/// answer: exit 1 with the command's own message, once, and no password.
#[test]
fn an_admin_command_against_an_unreachable_postgresql_says_so_once() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://u:topsecret@127.0.0.1:{port}/db");
    let out = server_in(
        tmp.path(),
        &["--data-dir", ".", "stats", "--database", &url],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .starts_with("sealdrop-server: error: PostgreSQL: no connection to PostgreSQL"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(!out.stderr.contains("topsecret"), "{out:?}");
}

// ---------------------------------------------------------------------------
// 3b. One SQLite database, one server
// ---------------------------------------------------------------------------

#[test]
fn a_second_server_on_the_same_sqlite_database_is_refused_whatever_its_data_directory() {
    // The first server: its database is defensive.db in its data directory.
    let mut first = Server::start(&[]);
    let client = first.good_client(10_000);
    let db = first.data_dir().join("defensive.db");
    let db_arg = format!("sqlite:{}", db.display());

    // --check-config for the second says a start would be refused.
    let (other_tmp, other_data) = temp_data_dir();
    let checked = server_in(
        other_tmp.path(),
        &[
            "--check-config",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            other_data.to_str().unwrap(),
            "--database",
            &db_arg,
        ],
    );
    assert_eq!(checked.status.code(), Some(1), "{checked:?}");
    assert!(
        checked
            .stderr
            .contains(&format!("the database {} is in use", db.display())),
        "{checked:?}"
    );

    // The second, on another data directory but the first's database:
    // refused at start, naming the database.
    let mut second = Server::spawn_with(ServerOpts::args(&["--database", &db_arg]), |_| {});
    let exit = second.wait_exit(Duration::from_secs(20));
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(1),
        "a second server on {} started\n{}",
        db.display(),
        second.log_tail(20)
    );
    assert!(
        second.wait_log_closed(Duration::from_secs(5)),
        "the second server's log did not end"
    );
    assert!(
        second.log_contains(&format!(
            "the database {} is in use by another sealdrop-server",
            db.display()
        )),
        "{}",
        second.log_tail(20)
    );
    // It changed nothing of the first's: the file stays verified.
    let row = first
        .file_row(&client.id, "good.bin")
        .expect("the first's row");
    assert_eq!(row.verified, 1, "{row:?}");
    first.assert_alive();
    first.stop();

    // With the first stopped, the second may use the database.
    second.start_again();
    second.assert_alive();
}

// ---------------------------------------------------------------------------
// 4. Connection numbers and in-flight uploads in the log
// ---------------------------------------------------------------------------

#[test]
fn connections_are_numbered_for_the_process_life_and_upload_starts_are_logged() {
    let mut s = Server::start(&[]);
    for _ in 0..3 {
        s.good_client(5_000);
    }
    assert!(
        s.wait_log("conn#3 ", Duration::from_secs(10))
            && wait_until(Duration::from_secs(10), || {
                s.log_lines()
                    .iter()
                    .filter(|l| l.contains(": closed: "))
                    .count()
                    == 3
            }),
        "{}",
        s.recent()
    );
    let lines = s.log_lines();
    let connected: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(": connected ("))
        .collect();
    assert_eq!(connected.len(), 3, "{lines:#?}");
    for (i, line) in connected.iter().enumerate() {
        assert!(
            line.contains(&format!("INFO  conn#{} 127.0.0.1:", i + 1)),
            "connection {} is not conn#{}: {line}",
            i + 1,
            i + 1
        );
    }
    // Each upload's start is an info line, before its 2103.
    for n in 1..=3 {
        let start = lines
            .iter()
            .position(|l| {
                l.contains(" INFO ")
                    && l.contains(&format!("conn#{n} "))
                    && l.contains(": 1028 upload started client=")
                    && l.contains("file=\"good.bin\" encrypted_bytes=5008 attempt=1")
            })
            .unwrap_or_else(|| panic!("no upload start line for conn#{n}: {lines:#?}"));
        let received = lines
            .iter()
            .position(|l| l.contains(&format!("conn#{n} ")) && l.contains("1028 received"))
            .expect("a received line");
        assert!(start < received, "{lines:#?}");
    }
    s.stop();
}

/// The log lines of the current run that contain every one of `parts`.
fn lines_with(s: &Server, parts: &[&str]) -> Vec<String> {
    s.log_lines()
        .into_iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect()
}

/// Alice's upload of `name` (received, 2103), awaiting its verdict.
fn received(client: &Client, c: &mut Conn, name: &str, data: &[u8]) {
    client.send_file(c, name, data);
    let r = c.recv();
    client.check_received(&r, name, data.len() as u64, cksum(data));
}

#[test]
fn an_upload_whose_commit_failed_is_never_logged_as_verified() {
    let mut s = Server::start(&[]);
    let (alice, mut a) = Client::setup(s.addr(), &unique_name("blocked"));
    let data = random_bytes(61, 20_000);
    received(&alice, &mut a, "report.pdf", &data);
    // A folder where the file must go: the group commit cannot place it.
    let in_the_way = s.final_path(&alice.id, "report.pdf");
    fs::create_dir(&in_the_way).unwrap();
    fs::write(in_the_way.join("keep"), b"k").unwrap();
    alice.send_verdict(&mut a, 1029, "report.pdf");
    match a.try_recv(Duration::from_secs(20)) {
        Ok(Response::GeneralError) => {}
        other => panic!("expected 2107, got {other:?}\n{}", s.recent()),
    }
    a.expect_closed(Duration::from_secs(10));
    let who = format!("client={}", alice.id);
    assert!(
        wait_until(Duration::from_secs(10), || {
            !lines_with(
                &s,
                &[&who, "file=\"report.pdf\"", "outcome=commit-failed(2107)"],
            )
            .is_empty()
        }),
        "no commit-failed line:\n{}",
        s.recent()
    );
    let failed = lines_with(&s, &[&who, "outcome=commit-failed(2107)"]);
    assert!(
        failed[0].contains(" WARN ")
            && failed[0].contains("bytes=20000 ")
            && failed[0].contains(&format!("cksum={} ", cksum(&data))),
        "{failed:?}"
    );
    assert!(
        lines_with(&s, &[&who, "outcome=verified"]).is_empty(),
        "a file that was not kept is logged as verified:\n{}",
        s.recent()
    );
    assert_eq!(s.file_row(&alice.id, "report.pdf").unwrap().verified, 0);
    // Once the way is clear, the retried 1029 keeps it, and only now the
    // log says verified.
    fs::remove_dir_all(&in_the_way).unwrap();
    let mut a = s.connect();
    alice.verify(&mut a, "report.pdf");
    assert!(
        s.wait_log("outcome=verified", Duration::from_secs(10)),
        "{}",
        s.recent()
    );
    let verified = lines_with(&s, &[&who, "file=\"report.pdf\"", "outcome=verified"]);
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert!(verified[0].ends_with("outcome=verified"), "{verified:?}");
    assert_eq!(
        fs::read(s.final_path(&alice.id, "report.pdf")).unwrap(),
        data
    );
    s.stop();
}

#[test]
fn a_replacing_upload_is_logged_as_replacing_the_earlier_file() {
    let mut s = Server::start(&[]);
    let (alice, mut a) = Client::setup(s.addr(), &unique_name("replacer"));
    let (bob, mut b) = Client::setup(s.addr(), &unique_name("beside"));
    alice.upload_verified(&mut a, "doc.txt", b"first version");
    // Another client's file of the same name replaces nothing of alice's.
    bob.upload_verified(&mut b, "doc.txt", b"bob's own");
    alice.upload_verified(&mut a, "doc.txt", b"second version");
    alice.upload_verified(&mut a, "other.txt", b"a new name");
    // The upload lines of a client's file, once there are `n` of them.
    let line = |client: &Client, name: &str, n: usize| {
        let who = format!("client={}", client.id);
        let file = format!("file={name:?}");
        let mut lines = Vec::new();
        assert!(
            wait_until(Duration::from_secs(10), || {
                lines = lines_with(&s, &[&who, &file, " outcome="]);
                lines.len() >= n
            }),
            "fewer than {n} upload lines for {name}:\n{}",
            s.recent()
        );
        lines
    };
    let alice_doc = line(&alice, "doc.txt", 2);
    let ends: Vec<&str> = alice_doc
        .iter()
        .map(|l| &l[l.find(" outcome=").unwrap()..])
        .collect();
    assert_eq!(
        ends,
        [
            " outcome=verified",
            " outcome=verified replaced=earlier-file"
        ],
        "{alice_doc:#?}"
    );
    assert!(alice_doc[1].contains("bytes=14 "), "{alice_doc:?}");
    for (client, name) in [(&bob, "doc.txt"), (&alice, "other.txt")] {
        let lines = line(client, name, 1);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].ends_with(" outcome=verified"), "{lines:?}");
    }
    assert_eq!(
        fs::read(s.final_path(&alice.id, "doc.txt")).unwrap(),
        b"second version"
    );
    s.stop();
}

/// A client of revision `rev`, registered and keyed on a new connection.
fn keyed_in(s: &Server, rev: Revision, name: &str) -> (Client, Conn) {
    let mut client = Client::new(&unique_name(name)).in_revision(rev);
    let mut c = client.connect(s.addr());
    client.register(&mut c);
    client.exchange_key(&mut c);
    (client, c)
}

#[test]
fn log_lines_show_the_code_the_connections_revision_sent() {
    let mut s = Server::start(&[]);
    for (rev, key_accepted, error) in [
        (Revision::R2023c, 2102, 2107),
        (Revision::R2024c, 1602, 1607),
    ] {
        let (client, mut c) = keyed_in(&s, rev, "codes");
        // A 1029 with nothing awaiting a verdict.
        client.send_verdict(&mut c, 1029, "never-sent.txt");
        c.expect(error);
        let who = format!("client={}", client.id);
        let wanted = [
            format!("key accepted for {} ({key_accepted})", client.id),
            format!("{who} file=\"never-sent.txt\""),
        ];
        assert!(
            wait_until(Duration::from_secs(10), || {
                s.log_contains(&wanted[0]) && s.log_contains(&wanted[1])
            }),
            "{rev}: {wanted:?} not logged:\n{}",
            s.recent()
        );
        let verdict = lines_with(&s, &[&who, "file=\"never-sent.txt\""]);
        assert!(
            verdict[0].ends_with(&format!(" outcome=nothing-pending({error})")),
            "{rev}: {verdict:?}"
        );
        // A verdict of an unknown client is refused with the same code.
        let mut stranger = Client::new(&unique_name("stranger")).in_revision(rev);
        let mut d = stranger.connect(s.addr());
        stranger.send_verdict(&mut d, 1029, "x.txt");
        d.expect(error);
        let refused = format!("CrcOk from {} refused ({error}): ", stranger.id);
        // And its 1027 is denied with the revision's code.
        let denied_code = error - 1;
        assert!(matches!(
            stranger.try_reconnect(&mut d),
            Ok(Response::ReconnectDenied { .. })
        ));
        let denied = format!("reconnect denied for {} ({denied_code}): ", stranger.id);
        for line in [&refused, &denied] {
            assert!(
                s.wait_log(line, Duration::from_secs(10)),
                "{rev}: no {line:?}:\n{}",
                s.recent()
            );
        }
    }
    s.stop();
}

#[test]
fn a_file_over_max_file_size_is_logged_as_over_the_limit() {
    let mut s = Server::start(&["--max-file-size", "1K"]);
    for (rev, error) in [(Revision::R2023c, 2107), (Revision::R2024c, 1607)] {
        let (client, mut c) = keyed_in(&s, rev, "big");
        client.send_file(&mut c, "big.bin", &random_bytes(62, 2000));
        c.expect(error);
        c.expect_closed(Duration::from_secs(10));
        // 2000 plaintext bytes are 2016 encrypted; 1 KiB allows 1040.
        let over = format!(
            "closed: file over the size limit (--max-file-size): 2016 encrypted bytes \
             declared, at most 1040 accepted ({error} sent)"
        );
        assert!(
            s.wait_log(&over, Duration::from_secs(10)),
            "{rev}: no {over:?}:\n{}",
            s.recent()
        );
        assert!(!s.log_contains("undecodable"), "{}", s.recent());
        assert!(s.file_row(&client.id, "big.bin").is_none());
    }
    s.stop();
}

// ---------------------------------------------------------------------------
// 5. Completions, man page, make install
// ---------------------------------------------------------------------------

#[test]
fn completions_and_man_page_are_generated_from_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let bash = server_in(tmp.path(), &["--print-completions", "bash"]);
    assert_eq!(bash.status.code(), Some(0), "{bash:?}");
    assert!(
        bash.stdout.contains("sealdrop-server")
            && bash.stdout.contains("--data-dir")
            && bash.stdout.contains("--log-level")
            && bash.stdout.contains("syncfs fsync"),
        "{}",
        bash.stdout
    );
    let zsh = server_in(tmp.path(), &["--print-completions", "zsh"]);
    assert!(
        zsh.stdout.starts_with("#compdef sealdrop-server"),
        "{zsh:?}"
    );
    assert!(zsh.stdout.contains("--max-file-size"));
    let fish = server_in(tmp.path(), &["--print-completions", "fish"]);
    assert!(
        fish.stdout.contains(
            "complete -c sealdrop-server -n \"__fish_sealdrop_server_needs_command\" -l data-dir"
        ),
        "{fish:?}"
    );
    for out in [&bash.stdout, &zsh.stdout, &fish.stdout] {
        assert!(!out.contains("print-completions") && !out.contains("print-man"));
    }
    let man = server_in(tmp.path(), &["--print-man"]);
    assert_eq!(man.status.code(), Some(0), "{man:?}");
    assert!(man.stdout.starts_with(".ie"), "{}", man.stdout);
    assert!(
        man.stdout.contains(".TH sealdrop-server 8 "),
        "{}",
        man.stdout
    );
    assert!(man.stdout.contains("data\\-dir"), "{}", man.stdout);
    for section in ["ENVIRONMENT", "SIGNALS", "EXIT STATUS", "EXAMPLE"] {
        assert!(
            man.stdout.contains(&format!(".SH \"{section}\"\n.nf\n")),
            "{section}: {}",
            man.stdout
        );
    }
    assert!(man.stdout.contains("SIGHUP is logged and ignored"));
    assert!(!man.stdout.contains("print\\-man"));
    // The generators are for packagers, not in the help.
    let help = server_in(tmp.path(), &["--help"]);
    assert!(!help.stdout.contains("print-"), "{}", help.stdout);
    let tcsh = server_in(tmp.path(), &["--print-completions", "tcsh"]);
    assert_eq!(tcsh.status.code(), Some(1), "{tcsh:?}");
    let missing = tmp.path().join("no-such-dir");
    let pages = server_in(
        tmp.path(),
        &["--write-man-pages", missing.to_str().unwrap()],
    );
    assert_eq!(pages.status.code(), Some(1), "{pages:?}");
    assert!(
        pages
            .stderr
            .starts_with("sealdrop-server: error: --write-man-pages: ")
            && pages.stderr.contains("no-such-dir/sealdrop-server.8"),
        "{pages:?}"
    );
}

/// What bash completes for the command line `words` (the last word is the
/// one being completed) with the completion script `script` loaded, as
/// bash calls the function `complete -F` named for `program`.
fn bash_completes(tmp: &Path, script: &str, program: &str, words: &[&str]) -> Vec<String> {
    let file = tmp.join(format!("{program}.bash"));
    fs::write(&file, script).unwrap();
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 {
        quoted[cword - 1].clone()
    } else {
        "''".into()
    };
    let driver = format!(
        r#"source "$1" || exit 3
spec=$(complete -p {program}) || exit 4
fn=$(printf '%s\n' "$spec" | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
[ -n "$fn" ] || exit 5
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
COMPREPLY=()
"$fn" {program} {cur} {prev}
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        words = quoted.join(" "),
        cur = quoted[cword],
    );
    let out = run(
        Command::new("bash")
            .arg("--norc")
            .arg("--noprofile")
            .arg("-c")
            .arg(&driver)
            .arg("completion-test")
            .arg(&file),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "bash for {words:?}: {out:?}");
    out.stdout.lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_the_servers_subcommands_and_their_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let script = server_in(tmp.path(), &["--print-completions", "bash"]);
    assert_eq!(script.status.code(), Some(0), "{script:?}");
    let complete =
        |words: &[&str]| bash_completes(tmp.path(), &script.stdout, "sealdrop-server", words);
    assert_eq!(complete(&["sealdrop-server", "cl"]), ["clients"]);
    let has = |got: Vec<String>, want: &[&str]| {
        for w in want {
            assert!(got.iter().any(|g| g == w), "{w} not in {got:?}");
        }
        got
    };
    let clients = has(
        complete(&["sealdrop-server", "clients", ""]),
        &["list", "show", "forget", "quota"],
    );
    assert!(!clients.iter().any(|c| c == "verify"), "{clients:?}");
    has(
        complete(&["sealdrop-server", "files", ""]),
        &["list", "delete"],
    );
    has(
        complete(&["sealdrop-server", "clients", "forget", "--"]),
        &["--delete-files", "--data-dir", "--json"],
    );
    has(
        complete(&["sealdrop-server", "--data-dir", "/tmp", "verify", "--"]),
        &["--cksum", "--repair"],
    );
    has(complete(&["sealdrop-server", "--sync"]), &["--sync-mode"]);
}

#[test]
fn bash_completes_the_clients_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let client = client_bin();
    let script = run(
        Command::new(&client)
            .current_dir(tmp.path())
            .args(["--print-completions", "bash"]),
        Duration::from_secs(20),
    );
    assert_eq!(script.status.code(), Some(0), "{script:?}");
    let complete =
        |words: &[&str]| bash_completes(tmp.path(), &script.stdout, "sealdrop-client", words);
    assert_eq!(complete(&["sealdrop-client", "--state"]), ["--state-dir"]);
    let flags = complete(&["sealdrop-client", "report.pdf", "--"]);
    for want in ["--server", "--name", "--json", "--retry-for"] {
        assert!(flags.iter().any(|f| f == want), "{want} not in {flags:?}");
    }
    // The revisions by name, not file names.
    assert_eq!(
        complete(&["sealdrop-client", "--revision", "2024"]),
        ["2024a", "2024c"]
    );
}

/// The repository root (the Makefile's folder).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `make ARGS` in the repository root, outside any outer make's jobserver.
fn make(args: &[&str]) -> Option<Out> {
    if Command::new("make").arg("--version").output().is_err() {
        eprintln!("make install test skipped: make is not installed");
        return None;
    }
    Some(run(
        Command::new("make")
            .arg("--no-print-directory")
            .arg("-C")
            .arg(repo_root())
            .args(args)
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL"),
        Duration::from_secs(60),
    ))
}

/// Every file under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A folder standing in for `target/release`: the server under test and
/// the real client, built beside it (cargo builds only this package's
/// binaries for its tests, so the client is brought up to date here).
fn build_dir(tmp: &Path) -> PathBuf {
    let build = tmp.join("build");
    fs::create_dir_all(&build).unwrap();
    std::os::unix::fs::symlink(SERVER_BIN, build.join("sealdrop-server")).unwrap();
    std::os::unix::fs::symlink(client_bin(), build.join("sealdrop-client")).unwrap();
    build
}

/// The `sealdrop-client` of this build (same target folder and profile as
/// the server under test), built or brought up to date by cargo.
fn client_bin() -> PathBuf {
    let server = Path::new(SERVER_BIN);
    let profile_dir = server.parent().unwrap();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(repo_root())
        .args(["build", "--quiet", "-p", "sealdrop-client", "--target-dir"])
        .arg(profile_dir.parent().unwrap());
    if profile_dir.file_name() == Some("release".as_ref()) {
        cargo.arg("--release");
    }
    let built = run(&mut cargo, Duration::from_secs(600));
    assert!(
        built.status.success(),
        "cargo build -p sealdrop-client: {built:?}"
    );
    let client = profile_dir.join("sealdrop-client");
    assert!(client.is_file(), "{}", client.display());
    client
}

/// The pages a roff man page refers to: each `sealdrop...(N)` in it (with
/// roff's `\-` for a hyphen), as (name, section).
fn man_references(roff: &str) -> Vec<(String, String)> {
    let text = roff.replace("\\-", "-");
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("sealdrop") {
        let tail = &rest[at..];
        let name_len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
            .unwrap_or(tail.len());
        let (name, after) = tail.split_at(name_len);
        let mut chars = after.chars();
        if let (Some('('), Some(section), Some(')')) = (chars.next(), chars.next(), chars.next()) {
            if section.is_ascii_digit() {
                found.push((name.to_owned(), section.to_string()));
            }
        }
        rest = &tail[name_len..];
    }
    found
}

#[test]
fn make_install_lays_out_a_packagers_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let build = build_dir(tmp.path());
    let dest = tmp.path().join("dest");
    let Some(ran) = make(&[
        "install",
        &format!("DESTDIR={}", dest.display()),
        "PREFIX=/usr",
        &format!("BUILD_DIR={}", build.display()),
    ]) else {
        return;
    };
    assert!(ran.status.success(), "make install failed: {ran:?}");
    assert_eq!(
        tree(&dest),
        [
            "usr/bin/sealdrop-client",
            "usr/bin/sealdrop-server",
            "usr/lib/systemd/system/sealdrop-server-2024a.socket",
            "usr/lib/systemd/system/sealdrop-server.service",
            "usr/lib/systemd/system/sealdrop-server.socket",
            "usr/share/bash-completion/completions/sealdrop-client",
            "usr/share/bash-completion/completions/sealdrop-server",
            "usr/share/fish/vendor_completions.d/sealdrop-client.fish",
            "usr/share/fish/vendor_completions.d/sealdrop-server.fish",
            "usr/share/man/man1/sealdrop-client.1",
            "usr/share/man/man8/sealdrop-server-clients-forget.8",
            "usr/share/man/man8/sealdrop-server-clients-list.8",
            "usr/share/man/man8/sealdrop-server-clients-quota.8",
            "usr/share/man/man8/sealdrop-server-clients-show.8",
            "usr/share/man/man8/sealdrop-server-clients.8",
            "usr/share/man/man8/sealdrop-server-files-delete.8",
            "usr/share/man/man8/sealdrop-server-files-list.8",
            "usr/share/man/man8/sealdrop-server-files.8",
            "usr/share/man/man8/sealdrop-server-stats.8",
            "usr/share/man/man8/sealdrop-server-verify.8",
            "usr/share/man/man8/sealdrop-server.8",
            "usr/share/zsh/site-functions/_sealdrop-client",
            "usr/share/zsh/site-functions/_sealdrop-server",
        ]
    );
    let usr = dest.join("usr");
    assert_eq!(
        fs::read(usr.join("bin/sealdrop-server")).unwrap(),
        fs::read(SERVER_BIN).unwrap()
    );
    assert_eq!(
        fs::read(usr.join("bin/sealdrop-client")).unwrap(),
        fs::read(build.join("sealdrop-client")).unwrap()
    );
    assert_eq!(mode(&usr.join("bin/sealdrop-server")), 0o755);
    assert_eq!(mode(&usr.join("bin/sealdrop-client")), 0o755);
    // The units name the installed binary.
    let unit = fs::read_to_string(usr.join("lib/systemd/system/sealdrop-server.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/sealdrop-server --data-dir /var/lib/sealdrop"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    for socket in ["sealdrop-server.socket", "sealdrop-server-2024a.socket"] {
        assert_eq!(
            fs::read(usr.join("lib/systemd/system").join(socket)).unwrap(),
            fs::read(repo_root().join("server/systemd").join(socket)).unwrap()
        );
    }
    // Completions and the man pages are each binary's own output.
    let server = |args: &[&str]| server_in(tmp.path(), args).stdout;
    let client_bin = build.join("sealdrop-client");
    let client = |args: &[&str]| {
        let out = run(
            Command::new(&client_bin).current_dir(tmp.path()).args(args),
            Duration::from_secs(20),
        );
        assert!(out.status.success(), "sealdrop-client {args:?}: {out:?}");
        out.stdout
    };
    for (path, generated) in [
        (
            "share/bash-completion/completions/sealdrop-server",
            server(&["--print-completions", "bash"]),
        ),
        (
            "share/zsh/site-functions/_sealdrop-server",
            server(&["--print-completions", "zsh"]),
        ),
        (
            "share/fish/vendor_completions.d/sealdrop-server.fish",
            server(&["--print-completions", "fish"]),
        ),
        ("share/man/man8/sealdrop-server.8", server(&["--print-man"])),
        (
            "share/bash-completion/completions/sealdrop-client",
            client(&["--print-completions", "bash"]),
        ),
        (
            "share/zsh/site-functions/_sealdrop-client",
            client(&["--print-completions", "zsh"]),
        ),
        (
            "share/fish/vendor_completions.d/sealdrop-client.fish",
            client(&["--print-completions", "fish"]),
        ),
        ("share/man/man1/sealdrop-client.1", client(&["--print-man"])),
    ] {
        assert!(generated.contains("sealdrop"), "{path}: {generated}");
        assert_eq!(
            fs::read_to_string(usr.join(path)).unwrap(),
            generated,
            "{path}"
        );
        assert_eq!(mode(&usr.join(path)), 0o644, "{path}");
    }
    // The subcommands' pages are the server's own output too.
    let written = tmp.path().join("man-pages");
    fs::create_dir(&written).unwrap();
    let listed = server(&["--write-man-pages", written.to_str().unwrap()]);
    assert_eq!(listed.lines().count(), 11, "{listed}");
    for page in tree(&written) {
        let installed = usr.join("share/man/man8").join(&page);
        assert_eq!(
            fs::read(&installed).unwrap(),
            fs::read(written.join(&page)).unwrap(),
            "{page}"
        );
        assert_eq!(mode(&installed), 0o644, "{page}");
    }
    // Every page a page refers to is installed.
    let man = usr.join("share/man");
    let mut referred = 0;
    for page in tree(&man) {
        let text = fs::read_to_string(man.join(&page)).unwrap();
        for (name, section) in man_references(&text) {
            let file = format!("man{section}/{name}.{section}");
            assert!(
                man.join(&file).is_file(),
                "{page} refers to {name}({section}), which is not installed"
            );
            referred += 1;
        }
    }
    assert!(referred >= 10, "{referred} references");

    // The default PREFIX is /usr/local, where the units already point.
    let dest = tmp.path().join("dest-default");
    let ran = make(&[
        "install",
        &format!("DESTDIR={}", dest.display()),
        &format!("BUILD_DIR={}", build.display()),
    ])
    .unwrap();
    assert!(ran.status.success(), "{ran:?}");
    let local = dest.join("usr/local");
    assert!(local.join("bin/sealdrop-server").is_file());
    assert!(local.join("share/man/man8/sealdrop-server.8").is_file());
    assert!(local.join("share/man/man1/sealdrop-client.1").is_file());
    assert_eq!(
        fs::read(local.join("lib/systemd/system/sealdrop-server.service")).unwrap(),
        fs::read(repo_root().join("server/systemd/sealdrop-server.service")).unwrap()
    );
}

#[test]
fn make_install_without_a_build_says_what_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let dest = tmp.path().join("dest");
    let Some(ran) = make(&[
        "install",
        &format!("DESTDIR={}", dest.display()),
        &format!("BUILD_DIR={}", empty.display()),
    ]) else {
        return;
    };
    assert!(!ran.status.success(), "{ran:?}");
    assert!(
        ran.stderr.contains("sealdrop-server not found") && ran.stderr.contains("make release"),
        "{}",
        ran.stderr
    );
    assert!(!dest.exists(), "nothing is installed from a missing build");
}
