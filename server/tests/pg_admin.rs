//! The administration commands (`clients`, `files`, `stats`, `verify`) of
//! the real binary on records in PostgreSQL (issue 17): populated through
//! two in-process servers on one throw-away cluster and one data
//! directory, then read and changed with `--database URL --data-dir DIR`,
//! with the servers running (changes made in the database by the command,
//! uploads in flight withdrawn through each server's control socket) and
//! stopped. Where PostgreSQL is not installed each test prints "skipped:
//! PostgreSQL not found (install postgresql)" and passes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use sealdrop_protocol::cksum::cksum;
use sealdrop_protocol::message::Response;
use sealdrop_server::config::Settings;
use sealdrop_server::files;
use sealdrop_server::inprocess::{self, Running};
use sealdrop_server::pg::DatabaseUrl;
use sealdrop_testkit::data::random_bytes;
use sealdrop_testkit::pg::PgCluster;
use sealdrop_testkit::util::{run_bounded, scrape_metric, wait_until};
use sealdrop_testkit::{Client, Conn, UploadStream};

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_sealdrop-server");

fn shared() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::start).as_ref()
}

/// A fresh database in the shared cluster: its URL.
fn fresh_db(cluster: &PgCluster) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    cluster.create_database(&format!("a{}", N.fetch_add(1, Ordering::Relaxed)))
}

/// `n` servers on one database and one data directory.
fn servers(url: &str, dir: &Path, n: usize) -> Vec<Running> {
    (0..n)
        .map(|i| {
            let mut s = Settings::with_defaults(SocketAddr::from(([127, 0, 0, 1], 0)), dir);
            s.store.database = DatabaseUrl::parse(url).unwrap();
            s.store.server_id = Some(format!("srv{i}"));
            inprocess::spawn(s).unwrap()
        })
        .collect()
}

fn query(cluster: &PgCluster, url: &str, sql: &str) -> String {
    let db = url.rsplit('/').next().unwrap();
    cluster.psql(db, sql).trim().to_owned()
}

/// A client that registered and exchanged keys through `addr`, with
/// `files` uploaded and verified.
fn client_with(addr: SocketAddr, name: &str, files: &[(&str, &[u8])]) -> Client {
    let mut client = Client::new(name);
    let mut c = client.connect(addr);
    client.register(&mut c);
    client.exchange_key(&mut c);
    for (file, data) in files {
        client.upload_verified(&mut c, file, data);
    }
    client
}

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

/// `sealdrop-server ARGS --database URL --data-dir DIR`, bounded to 60 s.
fn admin(url: &str, dir: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new(SERVER_BIN);
    cmd.args(args)
        .arg("--database")
        .arg(url)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("RUST_LOG")
        .env_remove("SEALDROP_DATABASE_URL");
    let ran = run_bounded(&mut cmd, Duration::from_secs(60));
    Out {
        code: ran.status.code().unwrap_or(-1),
        stdout: ran.stdout,
        stderr: ran.stderr,
    }
}

fn ok(url: &str, dir: &Path, args: &[&str]) -> Out {
    let out = admin(url, dir, args);
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    out
}

fn part_files(dir: &Path, client: &Client) -> Vec<String> {
    std::fs::read_dir(files::client_dir(dir, &client.id))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| files::is_part_name(n))
                .collect()
        })
        .unwrap_or_default()
}

const A: &[u8] = b"alice's first file";
const B: &[u8] = b"alice's second file, a little longer";
const C: &[u8] = b"bob's file";

/// Begins a 3 MiB upload of `big.bin` from `seed`'s bytes and sends its
/// first MiB; returns the stream and the bytes once a server holds a
/// temporary file for it.
fn upload_in_flight<'c>(
    client: &Client,
    conn: &'c mut Conn,
    dir: &Path,
    seed: u64,
) -> (UploadStream<'c>, Vec<u8>) {
    let data = random_bytes(seed, 3 << 20);
    let mut up = client
        .begin_upload(conn, "big.bin", data.len() as u64)
        .unwrap();
    up.write(&data[..1 << 20]).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !part_files(dir, client)
            .is_empty()),
        "the upload never started"
    );
    (up, data)
}

/// A forgotten client's upload of `big.bin` left nothing: no temporary
/// file, no file, no rows.
fn assert_nothing_kept(cluster: &PgCluster, url: &str, dir: &Path, client: &Client) {
    assert!(
        wait_until(Duration::from_secs(5), || part_files(dir, client)
            .is_empty()),
        "a temporary file stayed"
    );
    assert!(!files::final_path(dir, &client.id, "big.bin").exists());
    assert_eq!(query(cluster, url, "SELECT count(*) FROM files"), "0");
    assert_eq!(query(cluster, url, "SELECT count(*) FROM clients"), "0");
}

#[test]
fn the_commands_read_and_change_the_records_beside_two_running_servers() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = servers(&url, dir, 2);
    let alice = client_with(s[0].addr(), "alice", &[("a.txt", A), ("b.txt", B)]);
    let mut bob = client_with(s[1].addr(), "bob", &[("c.txt", C)]);

    // Reading: the same formats as on SQLite.
    let list = ok(&url, dir, &["clients", "list"]).stdout;
    assert!(list.starts_with("ID "), "{list}");
    assert!(
        list.contains(&alice.id.to_hex()) && list.contains("bob"),
        "{list}"
    );
    let list = ok(&url, dir, &["clients", "list", "--json"]).json();
    let clients = list["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    assert_eq!(clients[0]["name"], "alice");
    assert_eq!(clients[0]["files"], 2);
    assert_eq!(clients[0]["bytes"], A.len() + B.len());
    assert_eq!(clients[0]["key_exchanged"], true);
    assert_eq!(clients[1]["name"], "bob");
    let show = ok(&url, dir, &["clients", "show", "alice", "--json"]).json();
    assert_eq!(show["id"], alice.id.to_hex());
    let file_list = show["file_list"].as_array().unwrap();
    assert_eq!(file_list.len(), 2);
    assert_eq!(file_list[0]["name"], "a.txt");
    assert_eq!(file_list[0]["cksum"], cksum(A));
    assert_eq!(file_list[0]["size"], A.len());
    assert_eq!(
        file_list[0]["path"],
        files::final_path(dir, &alice.id, "a.txt").to_str().unwrap()
    );
    assert!(ok(&url, dir, &["clients", "show", "bob"])
        .stdout
        .contains("c.txt"));
    assert_eq!(admin(&url, dir, &["clients", "show", "nobody"]).code, 3);
    let all = ok(&url, dir, &["files", "list", "--json"]).json();
    assert_eq!(all["files"].as_array().unwrap().len(), 3);
    let bobs = ok(&url, dir, &["files", "list", "--client", "bob", "--json"]).json();
    assert_eq!(bobs["files"].as_array().unwrap().len(), 1);
    assert_eq!(bobs["files"][0]["client_name"], "bob");
    let stats = ok(&url, dir, &["stats", "--json"]).json();
    assert_eq!(stats["clients"], 2);
    assert_eq!(stats["files"], 3);
    assert_eq!(stats["bytes"], A.len() + B.len() + C.len());
    assert_eq!(stats["server"]["servers"], 2);
    assert_eq!(stats["server"]["uploads"]["verified"], 3);
    assert!(ok(&url, dir, &["stats"]).stdout.contains("servers"));
    let verify = ok(&url, dir, &["verify", "--cksum", "--json"]).json();
    assert_eq!(verify["server_running"], true);
    assert_eq!(verify["checked"]["cksums"], 3);

    // A quota, then an upload over it refused, even on a connection that
    // read bob's records before the change (the servers were told).
    let mut c = bob.connect(s[0].addr());
    bob.reconnect(&mut c);
    let q = ok(
        &url,
        dir,
        &["clients", "quota", "bob", "--bytes", "20", "--json"],
    )
    .json();
    assert_eq!(q["quota"]["bytes"], 20);
    assert_eq!(q["own"]["bytes"], "20");
    assert_eq!(q["servers_told"], 2);
    assert_eq!(
        query(cluster, &url, "SELECT MaxBytes FROM quotas"),
        "20",
        "the quota is in the database"
    );
    bob.send_file(&mut c, "big.txt", b"bytes over bob's twenty-byte quota");
    c.expect(2107);
    assert_eq!(
        admin(&url, dir, &["clients", "quota", "nobody", "--files", "1"]).code,
        3
    );

    // Deleting a file: its record, its size and its stored file.
    let del = ok(&url, dir, &["files", "delete", "alice", "b.txt", "--json"]).json();
    assert_eq!(del["had_record"], true);
    assert_eq!(del["servers_told"], 2);
    assert!(!files::final_path(dir, &alice.id, "b.txt").exists());
    assert_eq!(
        query(
            cluster,
            &url,
            "SELECT count(*) FROM file_meta WHERE FileName = 'b.txt'"
        ),
        "0"
    );
    assert_eq!(
        admin(&url, dir, &["files", "delete", "alice", "b.txt"]).code,
        3
    );

    // Forgetting with --delete-files: rows, files and folder go, and the
    // name is free on every server.
    let out = ok(&url, dir, &["clients", "forget", "alice", "--delete-files"]).stdout;
    assert!(out.contains("files deleted: a.txt"), "{out}");
    assert!(out.contains("servers told: 2"), "{out}");
    assert!(!files::client_dir(dir, &alice.id).exists());
    assert_eq!(
        query(
            cluster,
            &url,
            &format!(
                "SELECT count(*) FROM files WHERE ID = '\\x{}'",
                alice.id.to_hex()
            )
        ),
        "0"
    );
    assert_eq!(admin(&url, dir, &["clients", "forget", "alice"]).code, 3);
    for server in &s {
        let mut again = Client::new("alice");
        let mut c = again.connect(server.addr());
        assert!(matches!(
            again.register_reply(&mut c),
            Response::Registered { .. }
        ));
        // Free again for the next server.
        ok(&url, dir, &["clients", "forget", "alice"]);
    }

    // Forgetting without: the files stay under the id.
    let out = ok(&url, dir, &["clients", "forget", "bob", "--json"]).json();
    assert_eq!(out["files_kept"], serde_json::json!(["c.txt"]));
    assert_eq!(out["name"], "bob");
    let kept = ok(&url, dir, &["files", "list", "--json"]).json();
    assert_eq!(kept["files"].as_array().unwrap().len(), 1);
    assert_eq!(kept["files"][0]["client_name"], Value::Null);
    assert!(ok(&url, dir, &["files", "list"])
        .stdout
        .contains("(forgotten)"));
    let by_id = ok(&url, dir, &["files", "list", "--client", &bob.id.to_hex()]).stdout;
    assert!(by_id.contains("c.txt"), "{by_id}");

    // verify with findings: an unrecorded file and a missing one; each
    // repair takes, and the servers' uploads in progress are not touched.
    let stray = files::client_dir(dir, &bob.id).join("stray.bin");
    std::fs::write(&stray, b"nobody recorded me").unwrap();
    std::fs::remove_file(files::final_path(dir, &bob.id, "c.txt")).unwrap();
    let found = admin(&url, dir, &["verify", "--json"]);
    assert_eq!(found.code, 2, "{found:?}");
    let kinds: Vec<String> = found.json()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["unrecorded-file", "missing-file"], "{found:?}");
    let fixed = admin(&url, dir, &["verify", "--repair", "rows,strays", "--json"]);
    assert_eq!(fixed.code, 2, "{fixed:?}");
    assert!(fixed.json()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["repaired"] == true));
    assert!(!stray.exists());
    assert_eq!(query(cluster, &url, "SELECT count(*) FROM files"), "0");
    // bob's folder, emptied by the repairs and of no record now, went too.
    assert!(!files::client_dir(dir, &bob.id).exists());
    ok(&url, dir, &["verify"]);

    // adopt: a file put in a client's folder becomes a verified record.
    std::fs::create_dir(files::client_dir(dir, &bob.id)).unwrap();
    std::fs::write(files::final_path(dir, &bob.id, "found.txt"), C).unwrap();
    assert_eq!(admin(&url, dir, &["verify", "--repair", "adopt"]).code, 2);
    let adopted = ok(&url, dir, &["files", "list", "--json"]).json();
    assert_eq!(adopted["files"][0]["name"], "found.txt");
    assert_eq!(adopted["files"][0]["verified"], true);
    assert_eq!(adopted["files"][0]["cksum"], cksum(C));
    ok(&url, dir, &["verify", "--cksum"]);
}

#[test]
fn a_client_forgotten_while_it_uploads_through_another_server_gets_2107_and_nothing_is_stored() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = servers(&url, dir, 2);
    let mut client = client_with(s[0].addr(), "uploader", &[]);
    let mut conn = client.connect(s[1].addr());
    client.reconnect(&mut conn);
    let (mut up, data) = upload_in_flight(&client, &mut conn, dir, 7);
    let out = ok(&url, dir, &["clients", "forget", "uploader", "--json"]).json();
    assert_eq!(out["uploads_withdrawn"], 1, "{out}");
    assert_eq!(out["servers_told"], 2, "{out}");
    up.write(&data[1 << 20..]).unwrap();
    up.finish().unwrap();
    conn.expect(2107);
    assert_nothing_kept(cluster, &url, dir, &client);
    let stats = ok(&url, dir, &["stats", "--json"]).json();
    assert_eq!(stats["server"]["uploads"]["withdrawn"], 1);
    assert_eq!(stats["server"]["uploads"]["verified"], 0);
}

#[test]
fn the_commands_work_with_the_servers_stopped() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = servers(&url, dir, 2);
    let alice = client_with(s[0].addr(), "alice", &[("a.txt", A)]);
    let bob = client_with(s[1].addr(), "bob", &[("c.txt", C)]);
    for server in s {
        server.stop().unwrap();
    }
    // A stale socket (a server killed with -9): nobody accepts on it.
    drop(std::os::unix::net::UnixListener::bind(dir.join("control.gone.sock")).unwrap());
    // A temporary file of an upload cut off.
    let part = files::client_dir(dir, &bob.id).join(".part-srv1-0123456789abcdef");
    std::fs::write(&part, b"half").unwrap();

    let list = ok(&url, dir, &["clients", "list", "--json"]).json();
    assert_eq!(list["clients"].as_array().unwrap().len(), 2);
    let stats = ok(&url, dir, &["stats", "--json"]).json();
    assert_eq!(stats["server"], Value::Null);
    assert_eq!(stats["files"], 2);
    assert_eq!(stats["uploads"]["verified"], 2);
    ok(
        &url,
        dir,
        &["clients", "quota", "alice", "--files", "unlimited"],
    );
    let show = ok(&url, dir, &["clients", "show", "alice", "--json"]).json();
    assert_eq!(show["own_quota"]["files"], "unlimited");

    let found = admin(&url, dir, &["verify", "--json"]);
    assert_eq!(found.code, 2, "{found:?}");
    let v = found.json();
    assert_eq!(v["server_running"], false);
    assert_eq!(v["findings"][0]["kind"], "leftover");
    assert_eq!(admin(&url, dir, &["verify", "--repair", "strays"]).code, 2);
    assert!(!part.exists());

    let del = ok(&url, dir, &["files", "delete", "bob", "c.txt", "--json"]).json();
    assert_eq!(del["servers_told"], 0);
    assert!(!files::final_path(dir, &bob.id, "c.txt").exists());
    let out = ok(&url, dir, &["clients", "forget", &alice.id.to_hex()]).stdout;
    assert!(out.contains("files kept (under its id): a.txt"), "{out}");
    assert!(out.contains("servers told: 0"), "{out}");
    assert_eq!(
        query(cluster, &url, "SELECT string_agg(Name, ',') FROM clients"),
        "bob"
    );
    ok(&url, dir, &["verify"]);

    // Servers started again see the changes.
    let s = servers(&url, dir, 1);
    let mut again = Client::new("alice");
    let mut c = again.connect(s[0].addr());
    assert!(matches!(
        again.register_reply(&mut c),
        Response::Registered { .. }
    ));
}

#[test]
fn a_database_without_sealdrop_tables_is_an_error() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let tmp = tempfile::tempdir().unwrap();
    let out = admin(&url, tmp.path(), &["clients", "list", "--json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no sealdrop tables"), "{out:?}");
    assert!(out.json()["error"].is_string());
}

#[test]
fn a_file_deleted_while_its_replacement_awaits_1029_on_another_server_ends_with_2107() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = servers(&url, dir, 2);
    let mut alice = client_with(s[0].addr(), "alice", &[("report.txt", b"version one")]);
    let mut c = alice.connect(s[1].addr());
    alice.reconnect(&mut c);
    alice.send_file(&mut c, "report.txt", b"version two");
    c.expect(2103);
    let del = ok(
        &url,
        dir,
        &["files", "delete", "alice", "report.txt", "--json"],
    )
    .json();
    assert_eq!(del["had_record"], true);
    assert_eq!(del["uploads_withdrawn"], 1, "{del}");
    alice.send_verdict(&mut c, 1029, "report.txt");
    c.expect(2107);
    assert!(!files::final_path(dir, &alice.id, "report.txt").exists());
    assert_eq!(query(cluster, &url, "SELECT count(*) FROM files"), "0");
    // The client may send it again, through either server.
    alice.upload_verified(&mut c, "report.txt", b"version three");
    assert_eq!(
        std::fs::read(files::final_path(dir, &alice.id, "report.txt")).unwrap(),
        b"version three"
    );
    assert_eq!(
        query(
            cluster,
            &url,
            "SELECT count(*) FROM files WHERE Verified = 1"
        ),
        "1"
    );
}

/// `n` servers on `url` and `dir` whose control sockets are in `apart`,
/// where the administration commands do not look: as servers on other
/// machines are to a command (a Unix socket does not cross machines).
fn servers_out_of_reach(url: &str, dir: &Path, apart: &Path, n: usize) -> Vec<Running> {
    (0..n)
        .map(|i| {
            let mut s = Settings::with_defaults(SocketAddr::from(([127, 0, 0, 1], 0)), dir);
            s.store.database = DatabaseUrl::parse(url).unwrap();
            s.store.server_id = Some(format!("far{i}"));
            s.control_socket = Some(apart.join(format!("far{i}.sock")));
            inprocess::spawn(s).unwrap()
        })
        .collect()
}

#[test]
fn a_file_deleted_while_a_server_out_of_reach_holds_its_replacement_is_not_placed_again() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let (tmp, apart) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = tmp.path();
    let far = servers_out_of_reach(&url, dir, apart.path(), 1);
    let mut alice = client_with(far[0].addr(), "alice", &[("report.txt", b"version one")]);
    let mut c = alice.connect(far[0].addr());
    alice.reconnect(&mut c);
    alice.send_file(&mut c, "report.txt", b"version two");
    c.expect(2103);
    let del = ok(
        &url,
        dir,
        &["files", "delete", "alice", "report.txt", "--json"],
    )
    .json();
    assert_eq!(del["had_record"], true);
    assert_eq!(del["servers_told"], 0, "{del}");
    assert_eq!(del["uploads_withdrawn"], 0, "{del}");
    // The server was not told; the database refuses the placing.
    alice.send_verdict(&mut c, 1029, "report.txt");
    c.expect(2107);
    assert!(!files::final_path(dir, &alice.id, "report.txt").exists());
    assert!(
        wait_until(Duration::from_secs(5), || part_files(dir, &alice)
            .is_empty()),
        "a temporary file stayed"
    );
    assert_eq!(query(cluster, &url, "SELECT count(*) FROM files"), "0");
    assert_eq!(query(cluster, &url, "SELECT count(*) FROM file_meta"), "0");
    // The refusal came with the commit, so the connection closes after
    // its 2107 (as after any failed commit); an upload begun after the
    // deletion, on a new connection, is kept.
    let mut c = alice.connect(far[0].addr());
    alice.reconnect(&mut c);
    alice.upload_verified(&mut c, "report.txt", b"version three");
    assert_eq!(
        std::fs::read(files::final_path(dir, &alice.id, "report.txt")).unwrap(),
        b"version three"
    );
    assert_eq!(
        query(
            cluster,
            &url,
            "SELECT count(*) FROM files WHERE Verified = 1"
        ),
        "1"
    );
    let stats = ok(&url, dir, &["stats", "--json"]).json();
    assert_eq!(stats["uploads"]["withdrawn"], 1, "{stats}");
}

#[test]
fn a_client_forgotten_while_it_uploads_through_a_server_out_of_reach_keeps_nothing() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let (tmp, apart) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = tmp.path();
    let far = servers_out_of_reach(&url, dir, apart.path(), 1);
    let mut client = client_with(far[0].addr(), "uploader", &[]);
    let mut conn = client.connect(far[0].addr());
    client.reconnect(&mut conn);
    let (mut up, data) = upload_in_flight(&client, &mut conn, dir, 8);
    let out = ok(&url, dir, &["clients", "forget", "uploader", "--json"]).json();
    assert_eq!(out["servers_told"], 0, "{out}");
    assert_eq!(out["uploads_withdrawn"], 0, "{out}");
    up.write(&data[1 << 20..]).unwrap();
    up.finish().unwrap();
    // The server, not told, has the upload whole and asks for a verdict;
    // the database refuses to place it.
    conn.expect(2103);
    client.send_verdict(&mut conn, 1029, "big.bin");
    conn.expect(2107);
    assert_nothing_kept(cluster, &url, dir, &client);
}

#[test]
fn two_servers_accepting_one_clients_uploads_at_once_keep_it_within_its_quota() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s: Vec<Running> = (0..2)
        .map(|i| {
            let mut s = Settings::with_defaults(SocketAddr::from(([127, 0, 0, 1], 0)), dir);
            s.store.database = DatabaseUrl::parse(&url).unwrap();
            s.store.server_id = Some(format!("q{i}"));
            s.store.quota.max_files = Some(2);
            s.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            inprocess::spawn(s).unwrap()
        })
        .collect();
    let mut alice = client_with(s[0].addr(), "alice", &[("kept.txt", b"one")]);
    // One connection to each server (each reconnect gives its own AES
    // key, so each sends at once); each reads one file kept of two.
    let mut a = alice.connect(s[0].addr());
    alice.reconnect(&mut a);
    alice.send_file(&mut a, "a.txt", b"through the first");
    a.expect(2103);
    let mut b = alice.connect(s[1].addr());
    alice.reconnect(&mut b);
    alice.send_file(&mut b, "b.txt", b"through the second");
    b.expect(2103);
    alice.send_verdict(&mut a, 1029, "a.txt");
    a.expect(2104);
    // The second server read one file kept; the database counts two.
    alice.send_verdict(&mut b, 1029, "b.txt");
    b.expect(2107);
    // Counted as a quota refusal, not as a server error.
    let metrics = s[1].metrics_addr().unwrap();
    let refusals = |reason: &str| {
        scrape_metric(
            metrics,
            &format!("sealdrop_refusals_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refusals("quota"), 1.0);
    assert_eq!(refusals("server_error"), 0.0);
    // The upload ended refused, and its 1029 counts once (at its verdict,
    // not again at the commit's refusal).
    assert_eq!(
        scrape_metric(metrics, "sealdrop_uploads_total{outcome=\"refused\"}"),
        1.0
    );
    assert_eq!(
        scrape_metric(metrics, "sealdrop_requests_total{code=\"1029\"}"),
        1.0
    );
    assert!(files::final_path(dir, &alice.id, "a.txt").exists());
    assert!(!files::final_path(dir, &alice.id, "b.txt").exists());
    assert_eq!(
        query(
            cluster,
            &url,
            "SELECT string_agg(FileName, ',' ORDER BY FileName) FROM files WHERE Verified = 1"
        ),
        "a.txt,kept.txt"
    );
    // Replacing a kept file needs no new room, through either server
    // (on a new connection: the refusal came with the commit).
    let mut b = alice.connect(s[1].addr());
    alice.reconnect(&mut b);
    alice.upload_verified(&mut b, "a.txt", b"replaced through the second");
    let stats = ok(&url, dir, &["stats", "--json"]).json();
    assert_eq!(stats["uploads"]["over_quota"], 1, "{stats}");
    // Verified: kept.txt, a.txt and its replacement; not b.txt, which
    // was refused at its placing.
    assert_eq!(stats["uploads"]["verified"], 3, "{stats}");
    assert_eq!(
        query(
            cluster,
            &url,
            "SELECT Value FROM counters WHERE Name = 'verified'"
        ),
        "3"
    );
}

/// An accept cut off between the worker's rename and its COMMIT leaves the
/// new version of a file on the shared tree and the record of the old one
/// (verified, old size and cksum). Here made by hand: plain `verify` sees
/// the size, `--repair mismatched` drops the record (not while its values
/// changed since they were read) and keeps the file, `adopt` records it as
/// it is, and the client's resend is stored as usual.
#[test]
fn a_record_describing_another_version_of_its_file_is_dropped_by_repair_mismatched() {
    let Some(cluster) = shared() else { return };
    const OLD: &[u8] = b"version one.";
    const NEW: &[u8] = b"version two, longer.";
    let url = fresh_db(cluster);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = servers(&url, dir, 2);
    let alice = client_with(s[0].addr(), "alice", &[("r.txt", OLD)]);
    let path = files::final_path(dir, &alice.id, "r.txt");
    std::fs::write(&path, NEW).unwrap();
    let row = || {
        query(
            cluster,
            &url,
            "SELECT f.Verified || ':' || m.Size || ':' || m.Cksum FROM files f \
             JOIN file_meta m USING (ID, FileName) WHERE f.FileName = 'r.txt'",
        )
    };
    assert_eq!(row(), format!("1:12:{}", cksum(OLD)));

    let out = admin(&url, dir, &["verify", "--json"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        out.json()["findings"][0]["kind"],
        "size-mismatch",
        "{out:?}"
    );
    assert_eq!(out.json()["server_running"], true, "{out:?}");
    // Values the record no longer holds: nothing is dropped.
    let mut db = sealdrop_server::pg::admin::open(&match DatabaseUrl::parse(&url).unwrap() {
        DatabaseUrl::Postgres(u) => *u,
        DatabaseUrl::Sqlite(_) => unreachable!(),
    })
    .unwrap();
    let stale = sealdrop_server::db::FileMeta {
        size: Some(20),
        cksum: Some(cksum(NEW)),
    };
    assert!(
        !sealdrop_server::pg::admin::drop_if_recorded(&mut db, &alice.id, "r.txt", stale).unwrap()
    );
    assert_eq!(row(), format!("1:12:{}", cksum(OLD)));

    let out = admin(&url, dir, &["verify", "--repair", "mismatched", "--json"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.json()["findings"][0]["repaired"], true, "{out:?}");
    assert_eq!(row(), "");
    assert_eq!(std::fs::read(&path).unwrap(), NEW);
    let out = admin(&url, dir, &["verify", "--json"]);
    assert_eq!(
        out.json()["findings"][0]["kind"],
        "unrecorded-file",
        "{out:?}"
    );
    let out = admin(&url, dir, &["verify", "--repair", "adopt", "--json"]);
    assert_eq!(out.json()["findings"][0]["repaired"], true, "{out:?}");
    assert_eq!(row(), format!("1:20:{}", cksum(NEW)));
    ok(&url, dir, &["verify", "--cksum"]);

    // The client, told "outcome unknown", sends again through the other
    // server: stored as usual.
    let mut c = alice.connect(s[1].addr());
    alice.upload_verified(&mut c, "r.txt", NEW);
    assert_eq!(row(), format!("1:20:{}", cksum(NEW)));
    ok(&url, dir, &["verify", "--cksum"]);
}
