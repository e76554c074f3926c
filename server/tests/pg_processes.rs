//! Several `sealdrop-server` processes on one PostgreSQL database and one
//! data directory (issue 17): what needs real processes, a server killed
//! with `kill -9` mid-upload while the others keep serving, and its
//! restart under the same `--server-id`; a process on another data
//! directory of the same database refused; one killed between the rename
//! of an upload and its commit. The in-process tests of the same
//! mode are in pg_servers.rs. Where PostgreSQL is not installed the test
//! prints "skipped: PostgreSQL not found (install postgresql)" and passes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use sealdrop_protocol::cksum::cksum;
use sealdrop_protocol::message::Response;
use sealdrop_server::files;
use sealdrop_testkit::pg::PgCluster;

/// How long a part file may take to appear or go.
const FS_WAIT: Duration = Duration::from_secs(20);

/// A server process on the shared database and data directory.
fn start(url: &str, data: &Path, id: &str) -> Server {
    Server::start_in(
        data,
        ServerOpts::args(&["--database", url, "--server-id", id]),
    )
}

/// A server process on `data` and the database `url` that must be refused
/// at start: exit 1, its log complete. Returned for its log.
fn refused_start(url: &str, data: &Path, id: &str) -> Server {
    let mut refused = Server::spawn_in(
        data,
        ServerOpts::args(&["--database", url, "--server-id", id]),
    );
    let exit = refused.wait_exit(Duration::from_secs(30));
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(1),
        "a server with id {id} on {} started\n{}",
        data.display(),
        refused.log_tail(20)
    );
    assert!(refused.wait_log_closed(Duration::from_secs(5)));
    refused
}

/// The temporary files in `dir` that belong to server `id`.
fn parts_of(dir: &Path, id: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|f| files::part_owner(&f.file_name().to_string_lossy()) == Some(Some(id)))
        .map(|f| f.path())
        .collect()
}

/// A client registered (and keyed) through `register_on`, then connected
/// and reconnected through `upload_on`.
fn client_on(name: &str, register_on: &Server, upload_on: &Server) -> (Client, Conn) {
    let mut client = Client::new(name);
    let mut c = client.connect(register_on.addr());
    client.register(&mut c);
    client.exchange_key(&mut c);
    drop(c);
    let mut c = client.connect(upload_on.addr());
    assert!(matches!(
        client.reconnect(&mut c),
        Response::ReconnectAccepted { .. }
    ));
    (client, c)
}

#[test]
fn a_server_killed_mid_upload_loses_only_its_own_upload_and_cleans_it_at_restart() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let db = "procs";
    let url = cluster.create_database(db);
    let (_tmp, data) = temp_data_dir();
    let mut s: Vec<Server> = (0..3)
        .map(|i| start(&url, &data, &format!("p{i}")))
        .collect();

    // Clients register on one server and upload through the next; every
    // file is verified before the kill.
    let mut stored: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for i in 0..6 {
        let (client, mut c) = client_on(&format!("before{i}"), &s[i % 3], &s[(i + 1) % 3]);
        let bytes = random_bytes(i as u64, 50_000 + i * 1000);
        client.upload_verified(&mut c, "before.bin", &bytes);
        stored.push((files::final_path(&data, &client.id, "before.bin"), bytes));
    }

    // An upload in flight through p0 (it must survive p2's restart) and
    // one through p2 (it dies with p2): half a file frame each.
    let (bystander, mut by_conn) = client_on("bystander", &s[1], &s[0]);
    let by_data = random_bytes(100, 1 << 20);
    let by_frame = bystander.file_frame("flight.bin", &by_data);
    by_conn.send(&by_frame[..by_frame.len() / 2]);
    let by_dir = files::client_dir(&data, &bystander.id);

    let (mut victim, mut victim_conn) = client_on("victim", &s[0], &s[2]);
    let victim_data = random_bytes(200, 1 << 20);
    let victim_frame = victim.file_frame("lost.bin", &victim_data);
    victim_conn.send(&victim_frame[..victim_frame.len() / 2]);
    let victim_dir = files::client_dir(&data, &victim.id);

    assert!(
        wait_until(FS_WAIT, || parts_of(&by_dir, "p0").len() == 1
            && parts_of(&victim_dir, "p2").len() == 1),
        "no temporary files of p0 and p2: {:?} {:?}\n{}",
        parts_of(&by_dir, "p0"),
        parts_of(&victim_dir, "p2"),
        s[2].log_tail(20)
    );
    let victim_part = parts_of(&victim_dir, "p2").remove(0);
    let by_part = parts_of(&by_dir, "p0").remove(0);

    s[2].signal("KILL");
    assert!(
        s[2].wait_exit(Duration::from_secs(10)).is_some(),
        "p2 did not die on SIGKILL"
    );
    drop(victim_conn);

    // The other two keep serving: new clients register and upload through
    // them while p2 is dead.
    for i in 0..4 {
        let (client, mut c) = client_on(&format!("during{i}"), &s[i % 2], &s[(i + 1) % 2]);
        let bytes = random_bytes(1000 + i as u64, 30_000);
        client.upload_verified(&mut c, "during.bin", &bytes);
        stored.push((files::final_path(&data, &client.id, "during.bin"), bytes));
    }
    // Nobody cleaned the dead server's temporary file, and nothing was
    // recorded for it.
    assert!(
        victim_part.exists(),
        "p2's temporary file went before p2 restarted"
    );
    assert_eq!(
        cluster
            .psql(
                db,
                "SELECT count(*) FROM files WHERE FileName IN ('lost.bin', 'flight.bin')"
            )
            .trim(),
        "0"
    );

    // p2 restarts under its id: its start-up clean-up removes its own
    // temporary file, and only that one.
    s[2].start_again();
    assert!(
        wait_until(FS_WAIT, || !victim_part.exists()),
        "p2's temporary file {} is still there after its restart\n{}",
        victim_part.display(),
        s[2].log_tail(20)
    );
    assert!(
        by_part.exists(),
        "p2's restart removed p0's upload in flight"
    );

    // The upload in flight through p0 completes.
    by_conn.send(&by_frame[by_frame.len() / 2..]);
    let r = by_conn.recv();
    bystander.check_received(&r, "flight.bin", by_data.len() as u64, cksum(&by_data));
    bystander.verify(&mut by_conn, "flight.bin");
    stored.push((
        files::final_path(&data, &bystander.id, "flight.bin"),
        by_data,
    ));
    drop(by_conn);

    // The victim uploads again through the restarted p2.
    let mut c = victim.connect(s[2].addr());
    assert!(matches!(
        victim.reconnect(&mut c),
        Response::ReconnectAccepted { .. }
    ));
    victim.upload_verified(&mut c, "lost.bin", &victim_data);
    stored.push((
        files::final_path(&data, &victim.id, "lost.bin"),
        victim_data,
    ));

    // Every verified file is intact on disk and recorded once; no
    // temporary file is left.
    for (path, bytes) in &stored {
        assert_eq!(
            &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            bytes,
            "{} differs",
            path.display()
        );
    }
    assert_eq!(
        cluster
            .psql(db, "SELECT count(*) FROM files WHERE Verified = 1")
            .trim(),
        stored.len().to_string()
    );
    for server in &mut s {
        server.assert_alive();
    }
    let mut leftover = Vec::new();
    for dir in std::fs::read_dir(files::files_root(&data))
        .unwrap()
        .flatten()
    {
        for id in ["p0", "p1", "p2"] {
            leftover.extend(parts_of(&dir.path(), id));
        }
    }
    assert!(leftover.is_empty(), "temporary files left: {leftover:?}");
    for server in &mut s {
        server.stop();
    }
}

#[test]
fn three_processes_serve_200_concurrent_clients_and_give_a_raced_name_to_one() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let db = "crowd";
    let url = cluster.create_database(db);
    let (_tmp, data) = temp_data_dir();
    let mut s: Vec<Server> = (0..3)
        .map(|i| start(&url, &data, &format!("c{i}")))
        .collect();
    let addrs: std::sync::Arc<Vec<std::net::SocketAddr>> =
        std::sync::Arc::new(s.iter().map(|server| server.addr()).collect());

    // 200 clients at once, each registering through one process and
    // uploading through the next.
    const CLIENTS: usize = 200;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addrs, barrier) = (addrs.clone(), barrier.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let mut client = Client::new(&format!("crowd{i:03}"));
                    let mut first = client.connect(addrs[i % 3]);
                    let mut second = client.connect(addrs[(i + 1) % 3]);
                    barrier.wait();
                    client.register(&mut first);
                    client.exchange_key(&mut first);
                    client.reconnect(&mut second);
                    let bytes = random_bytes(i as u64, 1000 + i);
                    client.upload_verified(&mut second, "crowd.bin", &bytes);
                    (client.id, bytes)
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        let (id, bytes) = t.join().unwrap();
        let stored = std::fs::read(files::final_path(&data, &id, "crowd.bin")).unwrap();
        assert_eq!(stored, bytes);
    }
    let verified = cluster.psql(db, "SELECT count(*) FROM files WHERE Verified = 1");
    assert_eq!(verified.trim(), CLIENTS.to_string());

    // One name registered through all three processes at once, ten times:
    // one keyed client holds it each time.
    for round in 0..10 {
        let name = format!("raced{round}");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let racers: Vec<_> = (0..3)
            .map(|i| {
                let (addrs, barrier, name) = (addrs.clone(), barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    let mut client = Client::new(&name);
                    let mut c = client.connect(addrs[i]);
                    barrier.wait();
                    client.try_register(&mut c).is_ok() && client.try_exchange_key(&mut c).is_ok()
                })
            })
            .collect();
        let won = racers
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum::<usize>();
        assert_eq!(won, 1, "round {round}");
        let holders = cluster.psql(
            db,
            &format!(
                "SELECT count(*) FROM clients WHERE Name = '{name}' AND PublicKey IS NOT NULL"
            ),
        );
        assert_eq!(holders.trim(), "1", "round {round}");
    }
    for server in &mut s {
        assert!(server.is_alive(), "a server process ended");
    }
}

#[test]
fn a_second_server_with_a_live_servers_id_is_refused_and_leaves_its_upload_alone() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let url = cluster.create_database("dupid");
    let (_tmp, data) = temp_data_dir();
    let mut first = start(&url, &data, "twin");
    let socket = data.join("control.twin.sock");
    assert!(socket.exists(), "no {}", socket.display());

    // An upload in flight through the first: half a file frame.
    let (client, mut conn) = client_on("inflight", &first, &first);
    let bytes = random_bytes(7, 1 << 20);
    let frame = client.file_frame("flight.bin", &bytes);
    conn.send(&frame[..frame.len() / 2]);
    let dir = files::client_dir(&data, &client.id);
    assert!(
        wait_until(FS_WAIT, || parts_of(&dir, "twin").len() == 1),
        "no temporary file of the first server\n{}",
        first.log_tail(20)
    );
    let part = parts_of(&dir, "twin").remove(0);

    // --check-config with the same id passes (it may be the pre-flight
    // of this server's restart) but says that a start is refused now.
    let checked = check_config_with(&data, &["--database", &url, "--server-id", "twin"]);
    assert_eq!(checked.status.code(), Some(0), "{checked:?}");
    assert!(
        checked.stdout.contains(&format!(
            "note: a server with this configuration is running now (it holds {}); \
             a start is refused until it stops",
            data.join(".sealdrop.server.twin.lock").display()
        )),
        "{checked:?}"
    );

    // The second with the same id: refused, naming the id, before any
    // clean-up or socket of its own.
    let second = refused_start(&url, &data, "twin");
    assert!(
        second.log_contains("server id \"twin\" is in use by another sealdrop-server"),
        "{}",
        second.log_tail(20)
    );
    assert!(
        part.exists(),
        "the refused server deleted the upload in flight"
    );
    assert!(
        socket.exists(),
        "the refused server removed the control socket"
    );

    // The first's upload completes.
    conn.send(&frame[frame.len() / 2..]);
    let r = conn.recv();
    client.check_received(&r, "flight.bin", bytes.len() as u64, cksum(&bytes));
    client.verify(&mut conn, "flight.bin");
    assert_eq!(
        std::fs::read(files::final_path(&data, &client.id, "flight.bin")).unwrap(),
        bytes
    );

    // A server with another id starts beside it, and the first still
    // answers on its control socket.
    let mut other = start(&url, &data, "other");
    let stats = admin_on(&data, &url, &["stats", "--server-id", "twin"]);
    assert!(stats.status.success(), "{stats:?}");
    other.assert_alive();
    first.assert_alive();
    other.stop();
    first.stop();
}

/// `sealdrop-server --check-config --data-dir DATA ARGS`, bounded.
fn check_config_with(data: &Path, args: &[&str]) -> sealdrop_testkit::util::Ran {
    run_bounded(
        std::process::Command::new(SERVER_BIN)
            .args(["--check-config", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(args)
            .env_remove("SEALDROP_DATABASE_URL")
            .env_remove("PGPASSWORD")
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET"),
        Duration::from_secs(30),
    )
}

#[test]
fn check_config_connects_to_postgresql_and_says_what_a_start_would_do() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let url = cluster.create_database("checked");
    let (_tmp, data) = temp_data_dir();

    // A good URL on an empty database: ok, the tables come at start.
    let empty = check_config_with(&data, &["--database", &url]);
    assert_eq!(empty.status.code(), Some(0), "{empty:?}");
    assert!(
        empty.stdout.starts_with("configuration ok")
            && empty
                .stdout
                .contains("empty database; the tables will be created at start"),
        "{empty:?}"
    );

    // With a server running on it: ok, with the schema version.
    let mut server = start(&url, &data, "chk0");
    let good = check_config_with(&data, &["--database", &url, "--server-id", "chk1"]);
    assert_eq!(good.status.code(), Some(0), "{good:?}");
    assert!(
        good.stdout.starts_with("configuration ok")
            && good.stdout.contains("schema version 4")
            && good.stdout.contains("server id chk1"),
        "{good:?}"
    );

    // A wrong password: exit 1, the reason, and never the password.
    cluster.create_password_user("pwuser", "right-secret");
    let port = cluster.port();
    let wrong = format!("postgres://pwuser:wrong-secret@127.0.0.1:{port}/checked");
    let out = check_config_with(&data, &["--database", &wrong, "--server-id", "chk1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot use the database postgres://pwuser:***@127.0.0.1")
            && out.stderr.contains("password authentication failed"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("wrong-secret"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    // No server listening there: exit 1, naming the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("postgres://sealdrop@127.0.0.1:{closed}/checked");
    let out = check_config_with(&data, &["--database", &gone, "--server-id", "chk1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "cannot use the database postgres://sealdrop@127.0.0.1:{closed}/checked: \
             no connection to PostgreSQL (lost or refused)"
        )) && out.stderr.contains("Connection refused"),
        "{out:?}"
    );

    // Without --database (SQLite) on the directory the servers on
    // PostgreSQL hold: a start would be refused, and so is the check.
    let sqlite = check_config_with(&data, &[]);
    assert_eq!(sqlite.status.code(), Some(1), "{sqlite:?}");
    assert!(
        sqlite
            .stderr
            .contains("is in use by sealdrop-servers on PostgreSQL"),
        "{sqlite:?}"
    );
    server.assert_alive();
    server.stop();
}

/// Issue 17, a data directory that is not the shared one (the share not
/// mounted, a wrong `--data-dir`): the first start on a new database
/// binds it and its directory by a token in `.sealdrop-store-id`; a
/// server on another directory with the same database is refused (even
/// with a live server's id) and creates nothing there; a database without
/// a token (made before the check) takes its directory's at the next
/// start, but not an empty directory's while it records stored files.
#[test]
fn a_server_on_another_data_directory_of_the_same_database_is_refused_and_stores_nothing() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let db = "twodirs";
    let url = cluster.create_database(db);
    let token_of_db = || {
        cluster
            .psql(db, "SELECT COALESCE(store_id, 'none') FROM sealdrop_schema")
            .trim()
            .to_owned()
    };
    let (_tmp, data) = temp_data_dir();
    let mut first = start(&url, &data, "a");
    let token = std::fs::read_to_string(data.join(".sealdrop-store-id")).unwrap();
    assert_eq!(token.trim().len(), 32, "{token:?}");
    assert_eq!(token_of_db(), token.trim());
    let (client, mut conn) = client_on("shared", &first, &first);
    client.upload_verified(&mut conn, "small.txt", b"on the share");

    // An empty directory (an unmounted mount point), with a live
    // server's id and with another.
    let other = tempfile::tempdir().unwrap();
    let checked = check_config_with(other.path(), &["--database", &url, "--server-id", "b"]);
    assert_eq!(checked.status.code(), Some(1), "{checked:?}");
    assert!(
        checked
            .stderr
            .contains("has no .sealdrop-store-id, but the database"),
        "{checked:?}"
    );
    let checked = check_config_with(&data, &["--database", &url, "--server-id", "b"]);
    assert_eq!(checked.status.code(), Some(0), "{checked:?}");
    for id in ["a", "b"] {
        let refused = refused_start(&url, other.path(), id);
        let expected = format!(
            "{} has no .sealdrop-store-id, but the database",
            other.path().display()
        );
        assert!(
            refused.log_contains(&expected)
                && refused.log_contains("is the shared directory mounted"),
            "{}",
            refused.log_tail(20)
        );
        let left: Vec<String> = std::fs::read_dir(other.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "the refused server created {left:?}");
    }
    // Another directory's identity.
    std::fs::write(
        other.path().join(".sealdrop-store-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let refused = refused_start(&url, other.path(), "b");
    assert!(
        refused.log_contains("is not the data directory of the database")
            && refused.log_contains("0123456789abcdef0123456789abcdef")
            && refused.log_contains(token.trim()),
        "{}",
        refused.log_tail(20)
    );
    assert!(!other.path().join("files").exists());
    // The administration commands refuse that directory too: there every
    // file would look missing, and `--repair rows` drop its record.
    let repair = admin_on(other.path(), &url, &["verify", "--repair", "rows"]);
    assert_eq!(repair.status.code(), Some(1), "{repair:?}");
    assert!(
        repair
            .stderr
            .contains("is not the data directory of the database"),
        "{repair:?}"
    );
    assert_eq!(cluster.psql(db, "SELECT count(*) FROM files").trim(), "1");
    // The share still holds the file and its record; nothing else.
    assert_eq!(
        std::fs::read(files::final_path(&data, &client.id, "small.txt")).unwrap(),
        b"on the share"
    );
    first.assert_alive();
    first.stop();

    // A database from before the check: no token recorded. A server on
    // an empty directory is still refused (the database records a
    // stored file), and the shared directory's token is taken.
    cluster.psql(db, "UPDATE sealdrop_schema SET store_id = NULL");
    let empty = tempfile::tempdir().unwrap();
    let refused = refused_start(&url, empty.path(), "b");
    assert!(
        refused.log_contains("records 1 stored file(s)"),
        "{}",
        refused.log_tail(20)
    );
    assert_eq!(token_of_db(), "none");
    first.start_again();
    assert!(
        first.log_contains("had no data directory identity: recorded"),
        "{}",
        first.log_tail(20)
    );
    assert_eq!(token_of_db(), token.trim());
    first.stop();
}

/// `sealdrop-server ARGS --data-dir DATA --database URL`, bounded.
fn admin_on(data: &Path, url: &str, args: &[&str]) -> sealdrop_testkit::util::Ran {
    run_bounded(
        std::process::Command::new(SERVER_BIN)
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .args(["--database", url])
            .env_remove("SEALDROP_DATABASE_URL"),
        Duration::from_secs(30),
    )
}

/// Issue 17, gap B: `kill -9` after the worker renamed a new version of a
/// file over its final path and before its COMMIT (held there by a
/// session locking the `verified` counter, which the placing statement
/// updates right after the rename). The client was not answered; the tree
/// has the new version, the record the old one. `verify` reports it,
/// `--repair mismatched` drops the record and keeps the file, and the
/// client's resend after the restart is stored and recorded.
#[test]
fn a_server_killed_between_its_rename_and_its_commit_leaves_a_mismatch_verify_settles() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    const OLD: &[u8] = b"version one.";
    const NEW: &[u8] = b"version two, longer.";
    let db = "killwindow";
    let url = cluster.create_database(db);
    let (_tmp, data) = temp_data_dir();
    let mut m1 = start(&url, &data, "m1");
    let (mut client, mut c) = client_on("racer", &m1, &m1);
    client.upload_verified(&mut c, "r.txt", OLD);
    let path = files::final_path(&data, &client.id, "r.txt");
    let meta = || {
        cluster
            .psql(
                db,
                "SELECT COALESCE(string_agg(f.Verified || ':' || m.Size || ':' || m.Cksum, ','), \
                 'none') FROM files f JOIN file_meta m USING (ID, FileName) \
                 WHERE f.FileName = 'r.txt'",
            )
            .trim()
            .to_owned()
    };
    assert_eq!(meta(), format!("1:12:{}", cksum(OLD)));

    let pg_url = match sealdrop_server::pg::DatabaseUrl::parse(&url).unwrap() {
        sealdrop_server::pg::DatabaseUrl::Postgres(u) => *u,
        sealdrop_server::pg::DatabaseUrl::Sqlite(_) => unreachable!(),
    };
    let mut holder = sealdrop_server::pg::admin::open(&pg_url).unwrap();
    let mut hold = holder.transaction().unwrap();
    hold.query(
        "SELECT 1 FROM counters WHERE Name = 'verified' FOR UPDATE",
        &[],
    )
    .unwrap();
    client.send_file(&mut c, "r.txt", NEW);
    let r = c.recv();
    client.check_received(&r, "r.txt", NEW.len() as u64, cksum(NEW));
    client.send_verdict(&mut c, 1029, "r.txt");
    assert!(
        wait_until(FS_WAIT, || std::fs::read(&path).is_ok_and(|b| b == NEW)),
        "the new version was not renamed into place\n{}",
        m1.log_tail(20)
    );
    m1.kill9();
    drop(hold);
    drop(holder);
    // The window's state: new file, old record.
    assert!(
        wait_until(FS_WAIT, || meta() == format!("1:12:{}", cksum(OLD))),
        "{}",
        meta()
    );
    assert_eq!(std::fs::read(&path).unwrap(), NEW);

    let out = admin_on(&data, &url, &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["findings"][0]["kind"], "size-mismatch", "{out:?}");
    assert_eq!(
        v["findings"][0]["detail"], "20 bytes, recorded 12",
        "{out:?}"
    );
    let out = admin_on(&data, &url, &["verify", "--repair", "mismatched", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["findings"][0]["repaired"], true, "{out:?}");
    assert_eq!(meta(), "none");
    assert_eq!(std::fs::read(&path).unwrap(), NEW);

    // The client, told nothing (outcome unknown), sends again after the
    // restart: stored and recorded; nothing left for verify.
    m1.start_again();
    let mut c = client.connect(m1.addr());
    assert!(matches!(
        client.reconnect(&mut c),
        Response::ReconnectAccepted { .. }
    ));
    client.upload_verified(&mut c, "r.txt", NEW);
    assert_eq!(meta(), format!("1:20:{}", cksum(NEW)));
    let out = admin_on(&data, &url, &["verify", "--cksum"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    m1.stop();
}
