//! The administration commands (`clients`, `files`, `stats`, `verify`) of
//! the real binary on a populated data directory, with the server stopped
//! (the command takes the lock and works directly) and running (changes go
//! through the control socket of an in-process server, whose loop applies
//! them); `clients show`, `files list` and `verify --repair` beside a
//! running server; a forget and a delete while an upload is in flight;
//! quotas at, just under and over each limit over the wire, and which
//! default quota the commands show; the control socket's limits.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

use sealdrop_protocol::cksum::Cksum;
use sealdrop_protocol::store::Quota;
use sealdrop_protocol::ServerEvent;

/// What one administration command did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// `sealdrop-server ARGS --data-dir DIR`, bounded to 30 s.
fn admin(data_dir: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new(SERVER_BIN);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_FDS");
    let ran = run_bounded(&mut cmd, Duration::from_secs(30));
    Out {
        code: ran.status.code().unwrap_or(-1),
        stdout: ran.stdout,
        stderr: ran.stderr,
    }
}

fn ok(data_dir: &Path, args: &[&str]) -> Out {
    let out = admin(data_dir, args);
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    out
}

fn cksum(data: &[u8]) -> u64 {
    let mut c = Cksum::new();
    c.update(data);
    u64::from(c.finish())
}

/// A client with a key and the given files uploaded and verified.
fn client_with(server: &impl TestServer, name: &str, files: &[(&str, &[u8])]) -> Client {
    let mut conn = server.connect();
    let mut client = Client::new(name);
    client.register(&mut conn);
    client.exchange_key(&mut conn);
    for (file, data) in files {
        client.upload_verified(&mut conn, file, data);
    }
    client
}

const A: &[u8] = b"alice's first file";
const B: &[u8] = b"alice's second, longer file ...";
const C: &[u8] = b"bob";

/// A data directory with alice (a.txt, b.txt) and bob (c.txt); the
/// in-process server still running.
fn populated() -> (InProcess, Client, Client) {
    let server = InProcess::start();
    let alice = client_with(&server, "alice", &[("a.txt", A), ("b.txt", B)]);
    let bob = client_with(&server, "bob", &[("c.txt", C)]);
    (server, alice, bob)
}

#[test]
fn every_subcommand_works_on_a_stopped_server() {
    let (mut server, alice, bob) = populated();
    server.stop();
    let dir = server.data_dir().to_path_buf();
    assert!(
        !dir.join("control.sock").exists(),
        "the socket goes with the server"
    );

    // clients list, text and JSON.
    let text = ok(&dir, &["clients", "list"]).stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID  ") && lines[0].contains("LAST SEEN"),
        "{text}"
    );
    let alice_line = lines.iter().find(|l| l.contains("alice")).unwrap();
    let col = lines[0].find("NAME").unwrap();
    assert_eq!(
        &alice_line[col..col + 5],
        "alice",
        "aligned columns:\n{text}"
    );
    let list = ok(&dir, &["clients", "list", "--json"]).json();
    let clients = list["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    let a = clients.iter().find(|c| c["name"] == "alice").unwrap();
    assert_eq!(a["id"], alice.id.to_hex());
    assert_eq!(a["key_exchanged"], true);
    assert_eq!(a["files"], 2);
    assert_eq!(a["bytes"], (A.len() + B.len()) as u64);
    assert!(a["last_seen"].as_str().unwrap().ends_with('Z'));

    // clients show by name and by id.
    let shown = ok(&dir, &["clients", "show", "alice", "--json"]).json();
    assert_eq!(shown["file_list"].as_array().unwrap().len(), 2);
    let by_id = ok(&dir, &["clients", "show", &bob.id.to_hex(), "--json"]).json();
    assert_eq!(by_id["name"], "bob");
    assert!(ok(&dir, &["clients", "show", "bob"])
        .stdout
        .contains("c.txt"));
    let missing = admin(&dir, &["clients", "show", "nobody"]);
    assert_eq!(missing.code, 3);
    assert!(
        missing.stderr.contains("no client \"nobody\""),
        "{missing:?}"
    );

    // files list: size, verified, path, cksum.
    let files = ok(&dir, &["files", "list", "--client", "alice", "--json"]).json();
    let files = files["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let b = files.iter().find(|f| f["name"] == "b.txt").unwrap();
    assert_eq!(b["size"], B.len() as u64);
    assert_eq!(b["verified"], true);
    assert_eq!(b["cksum"], cksum(B));
    assert_eq!(
        b["path"],
        server.final_path(&alice.id, "b.txt").display().to_string()
    );
    let all = ok(&dir, &["files", "list", "--json"]).json();
    assert_eq!(all["files"].as_array().unwrap().len(), 3);

    // stats over the database's life; no server, no "since start".
    let stats = ok(&dir, &["stats", "--json"]).json();
    assert_eq!(
        (&stats["clients"], &stats["files"], &stats["bytes"]),
        (
            &Value::from(2),
            &Value::from(3),
            &Value::from((A.len() + B.len() + C.len()) as u64)
        )
    );
    assert_eq!(stats["uploads"]["verified"], 3);
    assert_eq!(stats["server"], Value::Null);
    assert!(ok(&dir, &["stats"]).stdout.contains("uploads verified"));

    // verify: clean.
    let v = ok(&dir, &["verify", "--cksum", "--json"]).json();
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    assert_eq!(v["checked"]["cksums"], 3);

    // quota: set, shown, cleared.
    ok(
        &dir,
        &["clients", "quota", "alice", "--bytes", "1K", "--files", "5"],
    );
    let shown = ok(&dir, &["clients", "show", "alice", "--json"]).json();
    assert_eq!(shown["quota"]["bytes"], 1024);
    assert_eq!(shown["quota"]["files"], 5);
    ok(&dir, &["clients", "quota", "alice", "--files", "unlimited"]);
    let shown = ok(&dir, &["clients", "show", "alice", "--json"]).json();
    assert_eq!(
        (&shown["quota"]["bytes"], &shown["quota"]["files"]),
        (&Value::from(1024), &Value::Null)
    );
    ok(&dir, &["clients", "quota", "alice", "--clear"]);
    let shown = ok(&dir, &["clients", "show", "alice", "--json"]).json();
    assert_eq!(shown["own_quota"]["bytes"], "default");

    // files delete, then again: not found.
    let del = ok(&dir, &["files", "delete", "alice", "a.txt", "--json"]).json();
    assert_eq!(del["had_record"], true);
    assert!(!server.final_path(&alice.id, "a.txt").exists());
    assert!(server.file_row(&alice.id, "a.txt").is_none());
    assert_eq!(admin(&dir, &["files", "delete", "alice", "a.txt"]).code, 3);

    // forget without files: the name is free, the file stays under the id.
    let f = ok(&dir, &["clients", "forget", "alice", "--json"]).json();
    assert_eq!(f["files_kept"], serde_json::json!(["b.txt"]));
    assert!(server.final_path(&alice.id, "b.txt").exists());
    let files = ok(
        &dir,
        &["files", "list", "--client", &alice.id.to_hex(), "--json"],
    )
    .json();
    assert_eq!(files["files"][0]["client_name"], Value::Null);
    // forget with files: gone, folder too.
    let f = ok(&dir, &["clients", "forget", "bob", "--delete-files"]).stdout;
    assert!(f.contains("files deleted: c.txt"), "{f}");
    assert!(!server.client_dir(&bob.id).exists());
    assert_eq!(admin(&dir, &["clients", "forget", "bob"]).code, 3);
    let list = ok(&dir, &["clients", "list", "--json"]).json();
    assert_eq!(list["clients"].as_array().unwrap().len(), 0);

    // The server starts again on what the commands left, and alice's name
    // registers anew.
    server.start_again();
    let again = client_with(&server, "alice", &[]);
    assert_ne!(again.id, alice.id);
}

#[test]
fn verify_finds_each_kind_of_problem_and_repairs_only_what_it_is_told() {
    let (mut server, alice, _bob) = populated();
    server.stop();
    let dir = server.data_dir().to_path_buf();
    // A stored file removed by hand, a file nobody recorded, a leftover
    // temporary file, something that is not a client's folder, and a
    // stored file whose bytes changed (same size).
    fs::remove_file(server.final_path(&alice.id, "a.txt")).unwrap();
    fs::write(server.client_dir(&alice.id).join("stray.bin"), b"stray").unwrap();
    fs::write(
        server.client_dir(&alice.id).join(".part-0123456789abcdef"),
        b"cut",
    )
    .unwrap();
    fs::write(dir.join("files").join("junk"), b"?").unwrap();
    let mut changed = B.to_vec();
    changed[0] ^= 1;
    fs::write(server.final_path(&alice.id, "b.txt"), &changed).unwrap();

    let out = admin(&dir, &["verify", "--json"]);
    assert_eq!(out.code, 2, "{out:?}");
    let kinds = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap().to_owned())
            .collect();
        k.sort();
        k
    };
    let found = kinds(&out.json());
    assert_eq!(
        found,
        ["leftover", "leftover", "missing-file", "unrecorded-file"],
        "{out:?}"
    );
    // Nothing changed without --repair.
    assert!(server.file_row(&alice.id, "a.txt").is_some());
    assert!(server.client_dir(&alice.id).join("stray.bin").exists());
    // --cksum also finds the changed bytes.
    let out = admin(&dir, &["verify", "--cksum", "--json"]);
    assert!(kinds(&out.json()).contains(&"cksum-mismatch".to_string()));
    // Text output: one aligned line per problem and a summary.
    let text = admin(&dir, &["verify"]).stdout;
    assert!(
        text.contains("missing-file") && text.contains("4 problem(s)"),
        "{text}"
    );

    // Repair the records only.
    let out = admin(&dir, &["verify", "--repair", "rows", "--json"]);
    assert_eq!(out.code, 2);
    assert!(server.file_row(&alice.id, "a.txt").is_none());
    assert!(server.client_dir(&alice.id).join("stray.bin").exists());
    // Adopt the unrecorded file, delete the leftovers.
    let out = admin(&dir, &["verify", "--repair", "adopt", "--json"]);
    assert_eq!(out.code, 2);
    let row = server.file_row(&alice.id, "stray.bin").unwrap();
    assert_eq!(row.verified, 1);
    let files = ok(&dir, &["files", "list", "--json"]).json();
    let stray = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "stray.bin")
        .unwrap()
        .clone();
    assert_eq!(stray["cksum"], cksum(b"stray"));
    admin(&dir, &["verify", "--repair", "strays"]);
    assert!(!dir.join("files").join("junk").exists());
    assert!(server.part_files().is_empty());
    // Only the changed content is left, and only --cksum sees it.
    assert_eq!(admin(&dir, &["verify"]).code, 0);
    assert_eq!(admin(&dir, &["verify", "--cksum"]).code, 2);
    assert_eq!(admin(&dir, &["verify", "--repair", "strays,adopt"]).code, 1);
}

#[test]
fn changes_go_through_the_running_servers_control_socket() {
    let (server, alice, mut bob) = populated();
    let dir = server.data_dir().to_path_buf();
    let socket = dir.join("control.sock");
    let mode = fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Reading works beside the running server.
    let list = ok(&dir, &["clients", "list", "--json"]).json();
    assert_eq!(list["clients"].as_array().unwrap().len(), 2);
    let stats = ok(&dir, &["stats", "--json"]).json();
    assert_eq!(stats["server"]["uploads"]["verified"], 3);
    assert_eq!(stats["server"]["connections"], 0);
    // The server holds the lock: only its loop can apply these.
    ok(&dir, &["clients", "quota", "bob", "--files", "1"]);
    ok(&dir, &["files", "delete", "alice", "b.txt"]);
    assert!(!server.final_path(&alice.id, "b.txt").exists());
    ok(&dir, &["clients", "forget", "alice", "--delete-files"]);
    assert!(!server.client_dir(&alice.id).exists());
    assert_eq!(admin(&dir, &["clients", "forget", "alice"]).code, 3);
    // The name is free at once; bob's own quota applies at once.
    client_with(&server, "alice", &[("new", b"n")]);
    let mut conn = server.connect();
    bob.reconnect(&mut conn);
    bob.send_file(&mut conn, "second.txt", b"over the quota");
    conn.expect(2107);
    // verify sees a consistent directory while the server runs.
    assert_eq!(admin(&dir, &["verify", "--cksum"]).code, 0);
    let stats = ok(&dir, &["stats", "--json"]).json();
    assert_eq!(stats["server"]["uploads"]["over_quota"], 1);
    assert_eq!(stats["server"]["uploads"]["withdrawn"], 0);
    // The lifetime counts are written with the pass's commit.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ok(&dir, &["stats", "--json"]).json()["uploads"]["over_quota"] != 1 {
        assert!(Instant::now() < deadline, "lifetime count never written");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_forgotten_while_it_uploads_gets_2107_and_nothing_is_stored() {
    let server = InProcess::start();
    let mut conn = server.connect();
    let mut client = Client::new("uploader");
    client.register(&mut conn);
    client.exchange_key(&mut conn);
    let data = random_bytes(7, 3 << 20);
    let mut up = upload_in_flight(&server, &client, &mut conn, "big.bin", &data);
    let out = ok(
        server.data_dir(),
        &["clients", "forget", "uploader", "--json"],
    );
    assert_eq!(out.json()["uploads_withdrawn"], 1);
    up.write(&data[1 << 20..]).unwrap();
    up.finish().unwrap();
    conn.expect(2107);
    // Nothing of it is kept, the connection still works, the server too.
    server.assert_no_parts_within(Duration::from_secs(5));
    assert!(!server.final_path(&client.id, "big.bin").exists());
    assert!(server.file_row(&client.id, "big.bin").is_none());
    client.send_verdict(&mut conn, 1029, "big.bin");
    conn.expect(2107);
    server.good_client(1000);
    let stats = ok(server.data_dir(), &["stats", "--json"]).json();
    assert_eq!(stats["server"]["uploads"]["withdrawn"], 1);
    assert_eq!(stats["server"]["uploads"]["aborted"], 0);
}

#[test]
fn a_file_deleted_while_its_replacement_awaits_1029_ends_with_2107_and_nothing_stored() {
    let server = InProcess::start();
    let mut again = client_with(&server, "alice", &[("report.txt", b"version one")]);
    let mut conn = server.connect();
    again.reconnect(&mut conn);
    let alice = &again;
    again.send_file(&mut conn, "report.txt", b"version two");
    let r = conn.expect(2103);
    again.check_received(&r, "report.txt", 11, cksum(b"version two") as u32);
    ok(
        server.data_dir(),
        &["files", "delete", "alice", "report.txt"],
    );
    again.send_verdict(&mut conn, 1029, "report.txt");
    conn.expect(2107);
    assert!(!server.final_path(&alice.id, "report.txt").exists());
    assert!(server.file_row(&alice.id, "report.txt").is_none());
    server.assert_no_parts_within(Duration::from_secs(5));
    // The client may send it again.
    again.upload_verified(&mut conn, "report.txt", b"version three");
    assert_eq!(
        fs::read(server.final_path(&alice.id, "report.txt")).unwrap(),
        b"version three"
    );
}

fn quota_server(quota: Quota) -> InProcess {
    InProcess::start_with(|s| s.store.quota = quota)
}

/// Uploads `data` as `name` and answers 1029 if the server said 2103:
/// whether it was stored.
fn try_upload(client: &Client, conn: &mut Conn, name: &str, data: &[u8]) -> bool {
    client.send_file(conn, name, data);
    match code_of(&conn.recv()) {
        2103 => {
            client.verify(conn, name);
            true
        }
        2107 => false,
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn the_bytes_quota_takes_uploads_at_and_under_the_limit_and_refuses_them_over_it() {
    let server = quota_server(Quota {
        max_bytes: Some(1000),
        max_files: None,
    });
    let mut conn = server.connect();
    let mut c = Client::new("q");
    c.register(&mut conn);
    c.exchange_key(&mut conn);
    assert!(try_upload(&c, &mut conn, "a", &[1; 600]));
    assert!(try_upload(&c, &mut conn, "b", &[2; 399]), "just under");
    assert!(!try_upload(&c, &mut conn, "c", &[3; 2]), "over by one");
    assert!(try_upload(&c, &mut conn, "c", &[3; 1]), "at the limit");
    assert!(!try_upload(&c, &mut conn, "d", &[4; 1]), "full");
    // A replacement counts its difference: a's 600 bytes by 600, by 601.
    assert!(try_upload(&c, &mut conn, "a", &[5; 600]));
    assert!(!try_upload(&c, &mut conn, "a", &[6; 601]));
    assert_eq!(fs::read(server.final_path(&c.id, "a")).unwrap(), [5; 600]);
    // Far over: refused at the header, before any content is stored.
    assert!(!try_upload(&c, &mut conn, "big", &[7; 100_000]));
    assert!(server.saw_session(|e| matches!(
        e,
        ServerEvent::Refused { reason, .. } if reason.to_string().contains("over quota")
    )));
    let stats = ok(server.data_dir(), &["stats", "--json"]).json();
    assert_eq!(stats["server"]["uploads"]["over_quota"], 4);
    assert_eq!(stats["bytes"], 1000);
}

#[test]
fn the_files_quota_takes_files_up_to_the_limit_and_replacements_beyond_it() {
    let server = quota_server(Quota {
        max_bytes: None,
        max_files: Some(2),
    });
    let mut conn = server.connect();
    let mut c = Client::new("f");
    c.register(&mut conn);
    c.exchange_key(&mut conn);
    assert!(try_upload(&c, &mut conn, "one", b"1"), "under");
    assert!(try_upload(&c, &mut conn, "two", b"2"), "at");
    assert!(!try_upload(&c, &mut conn, "three", b"3"), "over");
    assert!(try_upload(&c, &mut conn, "two", b"22"), "a replacement");
    assert!(!server.final_path(&c.id, "three").exists());
    // An administrator raises this client's limit; it applies at once.
    ok(
        server.data_dir(),
        &["clients", "quota", "f", "--files", "3"],
    );
    assert!(try_upload(&c, &mut conn, "three", b"3"));
}

#[test]
fn the_control_socket_refuses_long_lines_and_bad_requests_and_caps_its_connections() {
    let server = InProcess::start();
    let socket = server.data_dir().join("control.sock");
    let ask = |line: &[u8]| -> Value {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(line).unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    };
    let a = ask(b"{\"op\":\"launch\"}\n");
    assert_eq!(a["ok"], false);
    assert!(a["error"].as_str().unwrap().contains("unknown request"));
    assert_eq!(ask(b"not json\n")["ok"], false);
    let long = vec![b'x'; 10_000];
    let a = ask(&long);
    assert!(a["error"].as_str().unwrap().contains("longer than"), "{a}");
    assert_eq!(ask(b"{\"op\":\"ping\"}\n")["ok"], true);
    // Silent control connections beyond the cap are closed at once and do
    // not hold up a client's upload.
    let idle: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let mut extra = UnixStream::connect(&socket).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut extra, &mut buf).unwrap(), 0);
    let started = Instant::now();
    server.good_client(200_000);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);
}

#[test]
fn the_binary_serves_the_control_socket_and_removes_it_at_exit() {
    let mut server = Server::start(&[]);
    let alice = client_with(&server, "alice", &[("a", b"a")]);
    let dir = server.data_dir().to_path_buf();
    assert!(dir.join("control.sock").exists());
    ok(&dir, &["clients", "forget", "alice", "--delete-files"]);
    assert!(server.wait_log("administrator: client", Duration::from_secs(5)));
    assert!(!server.final_path(&alice.id, "a").exists());
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).is_some());
    assert!(!dir.join("control.sock").exists());
    // Stopped: the same command now works directly (and finds nothing).
    assert_eq!(admin(&dir, &["clients", "forget", "alice"]).code, 3);
}

#[test]
fn the_quota_shown_is_the_running_servers_else_the_commands_flags_else_not_known() {
    let mut server = Server::start(&["--quota-bytes", "1M", "--quota-files", "3"]);
    let alice = client_with(&server, "alice", &[("a", b"a")]);
    let dir = server.data_dir().to_path_buf();

    // Running: the server says its --quota-*, whatever the command's flags.
    let shown = ok(&dir, &["clients", "show", "alice", "--json"]).json();
    assert_eq!(shown["quota"]["bytes"], 1 << 20, "{shown}");
    assert_eq!(shown["quota"]["files"], 3, "{shown}");
    assert_eq!(shown["default_quota"]["from"], "server");
    let text = ok(&dir, &["clients", "show", "alice"]).stdout;
    assert!(text.contains("3 (server's default)"), "{text}");
    assert!(text.contains("the running server's"), "{text}");
    let list = ok(&dir, &["clients", "list", "--json", "--quota-files", "9"]).json();
    assert_eq!(list["clients"][0]["quota"]["files"], 3, "{list}");
    assert_eq!(list["default_quota"]["files"], 3);
    // A limit of its own replaces one default, the other stays the server's.
    let set = ok(
        &dir,
        &["clients", "quota", "alice", "--files", "5", "--json"],
    )
    .json();
    assert_eq!(
        (&set["quota"]["bytes"], &set["quota"]["files"]),
        (&Value::from(1 << 20), &Value::from(5)),
        "{set}"
    );

    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).is_some());
    // Stopped, no flags: the default is not known, and said so.
    let shown = ok(&dir, &["clients", "show", &alice.id.to_hex(), "--json"]).json();
    assert_eq!(shown["quota"]["bytes"], "unknown", "{shown}");
    assert_eq!(shown["quota"]["files"], 5, "its own limit is known");
    assert_eq!(shown["default_quota"]["from"], "unknown");
    let text = ok(&dir, &["clients", "show", "alice"]).stdout;
    assert!(text.contains("not known (server's default)"), "{text}");
    assert!(text.contains("no server answers"), "{text}");
    // Stopped, flags after the subcommand: those are the default shown.
    let shown = ok(
        &dir,
        &["clients", "show", "alice", "--quota-bytes", "2K", "--json"],
    )
    .json();
    assert_eq!(shown["quota"]["bytes"], 2048, "{shown}");
    assert_eq!(shown["default_quota"]["from"], "flags");
    assert_eq!(shown["default_quota"]["files"], Value::Null, "unlimited");
    let set = ok(&dir, &["clients", "quota", "alice", "--clear", "--json"]).json();
    assert_eq!(set["quota"]["files"], "unknown", "{set}");
    // The flags are in the subcommands' help.
    let help = ok(&dir, &["clients", "show", "--help"]).stdout;
    assert!(
        help.contains("--quota-bytes") && help.contains("--quota-files"),
        "{help}"
    );
}

#[test]
fn forget_with_delete_files_leaves_no_folder_and_verify_reports_and_removes_empty_ones() {
    let (mut server, alice, bob) = populated();
    let dir = server.data_dir().to_path_buf();
    let alice_dir = server.client_dir(&alice.id);

    // Running: alice forgotten with her files kept, then each deleted by
    // id (the last delete takes her folder: see the test below). An
    // empty folder of no client, made by hand: verify says so.
    ok(&dir, &["clients", "forget", "alice"]);
    ok(&dir, &["files", "delete", &alice.id.to_hex(), "a.txt"]);
    ok(&dir, &["files", "delete", &alice.id.to_hex(), "b.txt"]);
    fs::create_dir_all(&alice_dir).unwrap();
    let out = admin(&dir, &["verify", "--json"]);
    assert_eq!(out.code, 2, "{out:?}");
    let v = out.json();
    let found = v["findings"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{v}");
    assert_eq!(found[0]["kind"], "empty-folder");
    assert_eq!(found[0]["client"], alice.id.to_hex());
    assert_eq!(found[0]["path"], alice_dir.display().to_string());
    assert!(alice_dir.is_dir(), "nothing changed without --repair");
    let out = admin(&dir, &["verify", "--repair", "strays", "--json"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.json()["findings"][0]["repaired"], true);
    assert!(!alice_dir.exists());
    assert_eq!(admin(&dir, &["verify"]).code, 0);

    // Stopped: a leftover temporary file in bob's folder goes with his
    // files, and the folder with them.
    server.stop();
    let bob_dir = server.client_dir(&bob.id);
    fs::write(bob_dir.join(".part-0123456789abcdef"), b"cut").unwrap();
    let f = ok(&dir, &["clients", "forget", "bob", "--delete-files"]).stdout;
    assert!(f.contains("files deleted: c.txt"), "{f}");
    assert!(
        !bob_dir.exists(),
        "{:?}",
        fs::read_dir(&bob_dir).map(|d| d.count())
    );

    // Stopped: a folder of no client holding only a leftover is emptied
    // and removed by one --repair strays.
    fs::create_dir(&alice_dir).unwrap();
    fs::write(alice_dir.join(".part-00000000000000aa"), b"cut").unwrap();
    let out = admin(&dir, &["verify", "--repair", "strays", "--json"]);
    assert_eq!(out.code, 2, "{out:?}");
    let mut kinds = kinds_repaired(&out.json());
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("empty-folder".to_owned(), true),
            ("leftover".to_owned(), true)
        ]
    );
    assert!(!alice_dir.exists());
    assert_eq!(admin(&dir, &["verify"]).code, 0);
}

/// `v` without the keys that say whether a server answered.
fn without_server_keys(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("quota");
        o.remove("default_quota");
    }
    v
}

#[test]
fn clients_show_and_files_list_beside_a_running_server_read_what_it_stored() {
    let (mut server, alice, bob) = populated();
    let dir = server.data_dir().to_path_buf();

    // clients show, by name and by id, while the server runs.
    let shown = ok(&dir, &["clients", "show", "alice", "--json"]).json();
    assert_eq!(shown["id"], alice.id.to_hex());
    assert_eq!(shown["key_exchanged"], true);
    assert_eq!(shown["files"], 2);
    assert_eq!(shown["bytes"], (A.len() + B.len()) as u64);
    assert_eq!(shown["default_quota"]["from"], "server");
    let mut listed: Vec<(String, u64, u64)> = shown["file_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                f["size"].as_u64().unwrap(),
                f["cksum"].as_u64().unwrap(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("a.txt".to_owned(), A.len() as u64, cksum(A)),
            ("b.txt".to_owned(), B.len() as u64, cksum(B))
        ]
    );
    let by_id = ok(&dir, &["clients", "show", &bob.id.to_hex()]).stdout;
    assert!(by_id.contains("bob") && by_id.contains("c.txt"), "{by_id}");

    // files list: every record, one client's by name and by id.
    let all = ok(&dir, &["files", "list", "--json"]).json();
    assert_eq!(all["files"].as_array().unwrap().len(), 3);
    let bobs = ok(&dir, &["files", "list", "--client", "bob", "--json"]).json();
    let c = &bobs["files"][0];
    assert_eq!(bobs["files"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&c["name"], &c["size"], &c["verified"], &c["cksum"]),
        (
            &Value::from("c.txt"),
            &Value::from(C.len() as u64),
            &Value::from(true),
            &Value::from(cksum(C))
        )
    );
    assert_eq!(
        c["path"],
        server.final_path(&bob.id, "c.txt").display().to_string()
    );
    assert_eq!(
        ok(
            &dir,
            &["files", "list", "--client", &bob.id.to_hex(), "--json"]
        )
        .json(),
        bobs
    );

    // A file stored meanwhile is seen at once (the server committed it).
    let mut conn = server.connect();
    let mut bob = bob;
    bob.reconnect(&mut conn);
    bob.upload_verified(&mut conn, "d.txt", b"dd");
    let bobs = ok(&dir, &["files", "list", "--client", "bob", "--json"]).json();
    assert_eq!(bobs["files"].as_array().unwrap().len(), 2, "{bobs}");
    assert_eq!(
        ok(&dir, &["clients", "show", "bob", "--json"]).json()["files"],
        2
    );
    drop(conn);

    // The same as the commands read with the server stopped.
    let running_files = ok(&dir, &["files", "list", "--json"]).json();
    let running_show = ok(&dir, &["clients", "show", "alice", "--json"]).json();
    server.stop();
    assert_eq!(ok(&dir, &["files", "list", "--json"]).json(), running_files);
    assert_eq!(
        without_server_keys(ok(&dir, &["clients", "show", "alice", "--json"]).json()),
        without_server_keys(running_show)
    );
}

#[test]
fn verify_repairs_beside_a_running_server_through_it_and_spares_uploads_in_progress() {
    let (server, alice, bob) = populated();
    let dir = server.data_dir().to_path_buf();
    // A stored file removed by hand, a file nobody recorded, something
    // that is not a client's folder.
    fs::remove_file(server.final_path(&alice.id, "a.txt")).unwrap();
    fs::write(server.client_dir(&alice.id).join("stray.bin"), b"stray").unwrap();
    fs::write(dir.join("files").join("junk"), b"?").unwrap();
    // An upload in progress: its temporary file is not a finding.
    let mut conn = server.connect();
    let mut up_client = bob;
    up_client.reconnect(&mut conn);
    let data = random_bytes(9, 2 << 20);
    let mut up = upload_in_flight(&server, &up_client, &mut conn, "big.bin", &data);

    let out = admin(&dir, &["verify", "--json"]);
    assert_eq!(out.code, 2, "{out:?}");
    let v = out.json();
    assert_eq!(v["server_running"], true);
    assert_eq!(v["checked"]["uploads_in_progress"], 1, "{v}");
    let mut kinds: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["leftover", "missing-file", "unrecorded-file"],
        "{v}"
    );

    // Adopt the stray through the server, drop the row of the missing
    // file, delete the junk: all repaired, the upload untouched.
    let out = admin(&dir, &["verify", "--repair", "rows,adopt", "--json"]);
    assert_eq!(out.code, 2, "{out:?}");
    let repaired = kinds_repaired(&out.json());
    assert!(
        repaired.contains(&("missing-file".into(), true)),
        "{repaired:?}"
    );
    assert!(
        repaired.contains(&("unrecorded-file".into(), true)),
        "{repaired:?}"
    );
    assert!(server.file_row(&alice.id, "a.txt").is_none());
    assert_eq!(server.file_row(&alice.id, "stray.bin").unwrap().verified, 1);
    let out = admin(&dir, &["verify", "--repair", "strays", "--json"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.json()["findings"][0]["repaired"], true);
    assert!(!dir.join("files").join("junk").exists());
    assert_eq!(server.part_files().len(), 1, "the upload in progress stays");

    // The running server knows the adopted file (it counts for alice) and
    // the upload completes.
    let shown = ok(&dir, &["clients", "show", "alice", "--json"]).json();
    assert_eq!(shown["files"], 2);
    assert_eq!(shown["bytes"], (B.len() + 5) as u64);
    up.write(&data[1 << 20..]).unwrap();
    up.finish().unwrap();
    let r = conn.expect(2103);
    up_client.check_received(&r, "big.bin", data.len() as u64, cksum(&data) as u32);
    up_client.send_verdict(&mut conn, 1029, "big.bin");
    conn.expect(2104);
    let v = ok(&dir, &["verify", "--cksum", "--json"]).json();
    assert_eq!(v["findings"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["checked"]["cksums"], 4);
}

/// `stats --json` until `ready` says yes (10 s at most).
fn stats_when(dir: &Path, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = ok(dir, &["stats", "--json"]).json();
        if ready(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "never came: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stats_counts_discarded_expired_and_aborted_uploads_exactly_and_metrics_by_their_names() {
    let mut server = InProcess::start_with(|s| {
        s.store.orphan_ttl = Duration::from_secs(1);
        s.store.max_pending_per_conn = 1;
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let dir = server.data_dir().to_path_buf();
    let mut conn = server.connect();
    let mut c = Client::new("counted");
    c.register(&mut conn);
    c.exchange_key(&mut conn);

    // Discarded twice: a 1030 (the client sends it again), then a 1031.
    c.send_file(&mut conn, "d", b"content");
    conn.expect(2103);
    c.send_verdict(&mut conn, 1030, "d");
    c.send_file(&mut conn, "d", b"content");
    conn.expect(2103);
    c.send_verdict(&mut conn, 1031, "d");
    conn.expect(2104);
    // Expired for room: one upload may await a verdict per connection, so
    // r2 puts r1 out; r2 is then kept.
    c.send_file(&mut conn, "r1", b"one");
    conn.expect(2103);
    c.send_file(&mut conn, "r2", b"two");
    conn.expect(2103);
    c.verify(&mut conn, "r2");
    // Expired without a verdict: its connection closed, --orphan-ttl
    // passed.
    let mut orphan = server.connect();
    c.reconnect(&mut orphan);
    c.send_file(&mut orphan, "o", b"orphan");
    orphan.expect(2103);
    drop(orphan);
    // Aborted: the connection lost in the middle of the content.
    let mut cut = server.connect();
    c.reconnect(&mut cut);
    let data = random_bytes(3, 2 << 20);
    let up = upload_in_flight(&server, &c, &mut cut, "cut.bin", &data);
    drop(up);
    drop(cut);

    let want = serde_json::json!({
        "verified": 1, "discarded": 2, "over_quota": 0,
        "expired": 2, "aborted": 1, "withdrawn": 0,
    });
    let stats = stats_when(&dir, |s| s["server"]["uploads"] == want);
    assert_eq!(stats["files"], 1);
    assert!(server.final_path(&c.id, "r2").exists());
    let metrics = server.metrics_addr().unwrap();
    let m = |sample: &str| scrape_metric(metrics, sample);
    let outcome = |o: &str| m(&format!("sealdrop_uploads_total{{outcome=\"{o}\"}}"));
    // The same uploads as the metrics name them (docs/operations.md,
    // "stats and the metrics").
    assert_eq!(outcome("verified"), 1.0);
    assert_eq!(m("sealdrop_resends_total"), 1.0, "the 1030");
    assert_eq!(outcome("crc_failed"), 1.0, "the 1031");
    // The orphan and the upload put out for room, as in `stats`.
    assert_eq!(outcome("expired"), 2.0);
    assert_eq!(outcome("abandoned"), 1.0);
    assert_eq!(outcome("refused"), 0.0);
    // The lifetime counts reach the database with a commit (at the latest
    // at shutdown).
    server.stop();
    let stats = ok(&dir, &["stats", "--json"]).json();
    assert_eq!(stats["uploads"], want, "{stats}");
}

/// Each finding of a `verify --json` answer: its kind and whether it was
/// repaired.
fn kinds_repaired(v: &Value) -> Vec<(String, bool)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["repaired"] == true,
            )
        })
        .collect()
}

#[test]
fn deleting_a_forgotten_clients_last_file_removes_its_folder_running_and_stopped() {
    let (mut server, alice, bob) = populated();
    let carol = client_with(&server, "carol", &[("d.txt", C)]);
    let dir = server.data_dir().to_path_buf();
    let (alice_dir, bob_dir, carol_dir) = (
        server.client_dir(&alice.id),
        server.client_dir(&bob.id),
        server.client_dir(&carol.id),
    );

    // Running: alice forgotten with her files kept; her folder stays
    // while a file is in it and goes with her last one.
    ok(&dir, &["clients", "forget", "alice"]);
    ok(&dir, &["files", "delete", &alice.id.to_hex(), "a.txt"]);
    assert!(alice_dir.join("b.txt").is_file());
    ok(&dir, &["files", "delete", &alice.id.to_hex(), "b.txt"]);
    assert!(!alice_dir.exists(), "alice's empty folder left");
    // A client still known keeps its folder, empty or not.
    ok(&dir, &["files", "delete", "carol", "d.txt"]);
    assert!(carol_dir.is_dir(), "carol is still a client");
    assert_eq!(admin(&dir, &["verify"]).code, 0);

    // Stopped: bob forgotten with his file kept, then the file deleted:
    // the folder goes with it; carol, forgotten with nothing kept, loses
    // her empty folder at once.
    server.stop();
    ok(&dir, &["clients", "forget", "bob"]);
    assert!(bob_dir.join("c.txt").is_file());
    ok(&dir, &["files", "delete", &bob.id.to_hex(), "c.txt"]);
    assert!(!bob_dir.exists(), "bob's empty folder left");
    ok(&dir, &["clients", "forget", "carol"]);
    assert!(!carol_dir.exists(), "carol's empty folder left");
    assert_eq!(admin(&dir, &["verify"]).code, 0);
}

/// Every administration command uses the database `--database sqlite:PATH`
/// names, as the server does, with the server running and stopped; the
/// data directory holds no defensive.db of its own.
#[test]
fn every_command_uses_the_sqlite_database_the_flags_name_running_and_stopped() {
    let elsewhere = tempfile::tempdir().unwrap();
    let db = elsewhere.path().join("records.db");
    let url = format!("sqlite:{}", db.display());
    let mut server = Server::start(&["--database", &url]);
    let alice = client_with(&server, "alice", &[("a.txt", A)]);
    let _bob = client_with(&server, "bob", &[("c.txt", C)]);
    let dir = server.data_dir().to_path_buf();
    assert!(db.is_file());
    assert!(!dir.join("defensive.db").exists());
    let with = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.push("--database".into());
        v.push(url.clone());
        v
    };
    let run = |args: &[&str]| {
        let v = with(args);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        admin(&dir, &v)
    };
    let check_reads = |running: bool| {
        let stats = run(&["stats", "--json"]);
        assert_eq!(stats.code, 0, "{stats:?}");
        let stats = stats.json();
        assert_eq!(stats["clients"], 2, "{stats}");
        assert_eq!(stats["files"], 2, "{stats}");
        assert_eq!(stats["server"].is_null(), !running, "{stats}");
        let list = run(&["clients", "list", "--json"]);
        assert_eq!(list.code, 0, "{list:?}");
        assert!(list.stdout.contains("alice"), "{list:?}");
        let files = run(&["files", "list", "--client", "alice", "--json"]);
        assert_eq!(files.code, 0, "{files:?}");
        assert_eq!(files.json()["files"][0]["cksum"], cksum(A), "{files:?}");
        let show = run(&["clients", "show", "bob"]);
        assert_eq!(show.code, 0, "{show:?}");
        let verify = run(&["verify", "--cksum", "--json"]);
        assert_eq!(verify.code, 0, "{verify:?}");
        assert_eq!(verify.json()["server_running"], running, "{verify:?}");
        assert_eq!(verify.json()["checked"]["records"], 2, "{verify:?}");
    };
    check_reads(true);
    let quota = run(&["clients", "quota", "bob", "--files", "5", "--json"]);
    assert_eq!(quota.code, 0, "{quota:?}");
    server.stop();
    check_reads(false);
    // Changes, applied directly to that database (no server runs).
    let quota = run(&["clients", "quota", "alice", "--bytes", "1000", "--json"]);
    assert_eq!(quota.code, 0, "{quota:?}");
    let delete = run(&["files", "delete", "bob", "c.txt"]);
    assert_eq!(delete.code, 0, "{delete:?}");
    let forget = run(&["clients", "forget", "alice", "--delete-files"]);
    assert_eq!(forget.code, 0, "{forget:?}");
    assert!(!server.final_path(&alice.id, "a.txt").exists());
    let stats = run(&["stats", "--json"]).json();
    assert_eq!(stats["clients"], 1, "{stats}");
    assert_eq!(stats["files"], 0, "{stats}");
    let shown = run(&["clients", "show", "bob", "--json"]).json();
    assert_eq!(shown["own_quota"]["files"], "5", "{shown}");
    assert!(!dir.join("defensive.db").exists());
    // The server sees the changes at its next start.
    server.start_again();
    let list = run(&["clients", "list", "--json"]);
    assert!(
        !list.stdout.contains("alice") && list.stdout.contains("bob"),
        "{list:?}"
    );
}

/// What an accept cut off between its rename and its commit leaves: the
/// new version of a file at its final path, the record still describing
/// the old one (verified, old size and cksum). Plain `verify` sees the
/// size; `--repair mismatched` drops the record and keeps the file, which
/// the next run reports unrecorded and `adopt` records as it is now. With
/// the server stopped (directly) and running (through its socket), and a
/// request whose recorded values are no longer the record's changes
/// nothing.
#[test]
fn a_record_describing_another_version_of_its_file_is_dropped_by_repair_mismatched_and_the_file_adopted(
) {
    const OLD: &[u8] = b"version one.";
    const NEW: &[u8] = b"version two, longer.";
    let mut server = InProcess::start();
    let alice = client_with(&server, "alice", &[("r.txt", OLD), ("s.txt", OLD)]);
    let dir = server.data_dir().to_path_buf();
    let finding = |v: &Value, name: &str| -> Value {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    for running in [false, true] {
        let name = if running { "s.txt" } else { "r.txt" };
        if !running {
            server.stop();
        }
        // The rename of the new version happened, its commit did not.
        fs::write(server.final_path(&alice.id, name), NEW).unwrap();
        let out = admin(&dir, &["verify", "--json"]);
        assert_eq!(out.code, 2, "{out:?}");
        let f = finding(&out.json(), name);
        assert_eq!(f["kind"], "size-mismatch", "{out:?}");
        assert_eq!(f["detail"], "20 bytes, recorded 12", "{out:?}");
        assert_eq!(out.json()["server_running"], running, "{out:?}");
        // The other repairs leave it alone.
        let out = admin(
            &dir,
            &["verify", "--cksum", "--repair", "rows,adopt", "--json"],
        );
        assert_eq!(
            kinds_repaired(&out.json()),
            [("size-mismatch".into(), false)]
        );
        assert_eq!(server.file_row(&alice.id, name).unwrap().verified, 1);
        let out = admin(&dir, &["verify", "--repair", "mismatched", "--json"]);
        assert_eq!(out.code, 2, "{out:?}");
        assert_eq!(
            kinds_repaired(&out.json()),
            [("size-mismatch".into(), true)]
        );
        assert!(server.file_row(&alice.id, name).is_none());
        assert_eq!(fs::read(server.final_path(&alice.id, name)).unwrap(), NEW);
        let out = admin(&dir, &["verify", "--json"]);
        let f = finding(&out.json(), name);
        assert_eq!(f["kind"], "unrecorded-file", "{out:?}");
        assert_eq!(f["detail"], "no record", "{out:?}");
        let out = admin(&dir, &["verify", "--repair", "adopt", "--json"]);
        assert_eq!(
            kinds_repaired(&out.json()),
            [("unrecorded-file".into(), true)]
        );
        assert_eq!(admin(&dir, &["verify", "--cksum"]).code, 0);
        let files = ok(&dir, &["files", "list", "--json"]).json();
        let row = files["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()
            .clone();
        assert_eq!(
            (row["size"].clone(), row["cksum"].clone()),
            (20.into(), cksum(NEW).into())
        );
        if !running {
            server.start_again();
        }
    }
    // The same size, other bytes: only --cksum sees it, and the repair
    // takes it too.
    let mut same_size = NEW.to_vec();
    same_size[0] ^= 1;
    fs::write(server.final_path(&alice.id, "r.txt"), &same_size).unwrap();
    assert_eq!(admin(&dir, &["verify"]).code, 0);
    // A request whose recorded values the record no longer holds (a new
    // accept replaced them) changes nothing.
    let socket = dir.join("control.sock");
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let stale = serde_json::json!({"op": "repair", "action": "drop-mismatched",
        "client": alice.id.to_hex(), "file": "r.txt",
        "recorded_size": 12, "recorded_cksum": cksum(OLD)});
    s.write_all(format!("{stale}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["result"]["repaired"], false, "{answer}");
    assert!(server.file_row(&alice.id, "r.txt").is_some());
    let out = admin(
        &dir,
        &["verify", "--cksum", "--repair", "mismatched", "--json"],
    );
    assert_eq!(
        kinds_repaired(&out.json()),
        [("cksum-mismatch".into(), true)]
    );
    assert!(server.file_row(&alice.id, "r.txt").is_none());
    assert!(server.final_path(&alice.id, "r.txt").exists());
}

/// Begins an upload of `data` as `name` and sends its first MiB, then
/// waits (bounded) until the server has begun storing it: an upload in
/// flight, its temporary file on disk.
fn upload_in_flight<'c>(
    server: &InProcess,
    client: &Client,
    conn: &'c mut Conn,
    name: &str,
    data: &[u8],
) -> UploadStream<'c> {
    let mut up = client.begin_upload(conn, name, data.len() as u64).unwrap();
    up.write(&data[..1 << 20]).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !server.part_files().is_empty()),
        "the upload never started"
    );
    up
}
