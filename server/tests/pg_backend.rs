//! The PostgreSQL pieces (issue 17) against a throw-away cluster
//! (`sealdrop_testkit::pg`): the schema and its migration, every worker
//! operation, a name race between two workers, a failed operation inside
//! a batch, a database restart and a killed connection, the queue bound,
//! and `--check-config`'s check. Where PostgreSQL is not installed each
//! test prints "skipped: PostgreSQL not found (install postgresql)" and
//! passes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use postgres::NoTls;
use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::AesKey;
use sealdrop_protocol::store::{ClientRecord, StoreError};
use sealdrop_protocol::ClientId;
use sealdrop_server::db::FileRow;
use sealdrop_server::pg::schema::{self, SCHEMA_VERSION};
use sealdrop_server::pg::worker::MAX_OPS_PER_JOB;
use sealdrop_server::pg::{DatabaseUrl, Job, JobDone, Op, PgError, PgUrl, Reply, Settings, Worker};
use sealdrop_testkit::pg::{PgCluster, PgOptions};
use sealdrop_testkit::util::wait_until;

const WAIT: Duration = Duration::from_secs(60);
const SEEN: &str = "2025-06-01T12:00:00Z";

/// One cluster for the tests that do not stop it; each test has its own
/// database in it.
fn shared() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::start).as_ref()
}

/// A fresh database in the shared cluster.
fn fresh_db(cluster: &PgCluster) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    cluster.create_database(&format!("t{}", N.fetch_add(1, Ordering::Relaxed)))
}

fn pg_url(url: &str) -> PgUrl {
    match DatabaseUrl::parse(url).unwrap() {
        DatabaseUrl::Postgres(p) => *p,
        other => panic!("not postgres: {other}"),
    }
}

/// A worker and the poll its waker wakes.
struct Harness {
    worker: Worker,
    poll: Poll,
}

const WAKE: Token = Token(7);

fn start(url: &str, settings: Settings) -> Harness {
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
    let worker = Worker::start(&pg_url(url), settings, waker).unwrap();
    Harness { worker, poll }
}

fn named(app: &str) -> Settings {
    Settings {
        application_name: app.into(),
        ..Settings::default()
    }
}

impl Harness {
    /// Waits for the waker, then collects one result.
    fn wait(&mut self) -> JobDone {
        let deadline = Instant::now() + WAIT;
        let mut events = Events::with_capacity(4);
        loop {
            if let Some(done) = self.worker.try_recv() {
                return done;
            }
            assert!(Instant::now() < deadline, "no result within {WAIT:?}");
            self.poll
                .poll(&mut events, Some(Duration::from_millis(500)))
                .unwrap();
        }
    }

    fn run(&mut self, ops: Vec<Op>) -> JobDone {
        self.worker.submit(Job { tag: 1, ops }).unwrap();
        self.wait()
    }

    /// Runs ops that must all succeed; returns their replies.
    fn ok(&mut self, ops: Vec<Op>) -> Vec<Reply> {
        let done = self.run(ops);
        assert!(done.commit.is_ok(), "{:?}", done.commit);
        done.results
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn client(&mut self, id: ClientId) -> Option<ClientRecord> {
        match self.ok(vec![Op::ClientById(id)]).pop() {
            Some(Reply::Client(c)) => c,
            other => panic!("{other:?}"),
        }
    }
}

fn register(id: ClientId, name: &str) -> Op {
    Op::RegisterClient {
        id,
        name: name.into(),
        replace: None,
        seen: SEEN.into(),
    }
}

fn set_last_key(id: ClientId, byte: u8) -> Op {
    Op::SetLastKey {
        id,
        aes_key: AesKey::from_bytes([byte; 16]),
    }
}

fn sql(url: &str) -> postgres::Client {
    postgres::Client::connect(url, NoTls).unwrap()
}

macro_rules! cluster_or_skip {
    () => {
        match shared() {
            Some(c) => c,
            None => {
                // Every test says it, not only the one that looked first.
                eprintln!("{}", sealdrop_testkit::pg::SKIP_MESSAGE);
                return;
            }
        }
    };
}

#[test]
fn schema_is_created_once_and_migrating_again_changes_nothing() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    let settings = Settings::default();
    // --check-config on an empty database changes nothing.
    let said = schema::check(&pg_url(&url), &settings).unwrap();
    assert!(said.contains("empty database"), "{said}");
    let mut c = sql(&url);
    assert!(schema::columns(&mut c, "clients").unwrap().is_empty());

    let mut h = start(&url, settings.clone());
    assert_eq!(schema::schema_version(&mut c).unwrap(), SCHEMA_VERSION);
    assert_eq!(
        schema::columns(&mut c, "clients").unwrap(),
        ["id", "name", "publickey", "lastseen", "aeskey"]
    );
    assert_eq!(
        schema::columns(&mut c, "files").unwrap(),
        ["id", "filename", "pathname", "verified"]
    );
    let types: Vec<(String, String)> = c
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_name IN ('clients', 'files') ORDER BY table_name, ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want = [
        ("id", "bytea"),
        ("name", "text"),
        ("publickey", "bytea"),
        ("lastseen", "text"),
        ("aeskey", "bytea"),
        ("id", "bytea"),
        ("filename", "text"),
        ("pathname", "text"),
        ("verified", "integer"),
    ];
    let got: Vec<(&str, &str)> = types
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(got, want);

    let id = ClientId([1; 16]);
    h.ok(vec![register(id, "kept")]);
    // A second start (a second server, a restart) migrates nothing and
    // keeps the rows.
    let again = schema::migrate(&mut c).unwrap();
    assert_eq!((again.from, again.to), (SCHEMA_VERSION, SCHEMA_VERSION));
    let h2 = start(&url, settings.clone());
    drop(h2);
    assert_eq!(h.client(id).unwrap().name, "kept");
    let rows: i64 = c
        .query_one("SELECT count(*) FROM sealdrop_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let said = schema::check(&pg_url(&url), &settings).unwrap();
    assert!(
        said.contains(&format!("schema version {SCHEMA_VERSION}, 1 client(s)")),
        "{said}"
    );
}

#[test]
fn servers_starting_together_on_an_empty_database_all_succeed() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = sql(&url);
                schema::migrate(&mut c).map(|m| m.from)
            })
        })
        .collect();
    let froms: Vec<i32> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    // The advisory lock serialises them: exactly one created the tables.
    assert_eq!(froms.iter().filter(|&&f| f == 0).count(), 1, "{froms:?}");
    assert_eq!(
        froms.iter().filter(|&&f| f == SCHEMA_VERSION).count(),
        3,
        "{froms:?}"
    );
}

/// Servers starting together on a new database and one new data directory
/// agree on one identity: held at the advisory lock until all four wait
/// there, each then reads the directory's token and the database's.
#[test]
fn servers_starting_together_on_a_new_database_and_directory_agree_on_one_identity() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    schema::migrate(&mut sql(&url)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gate = sql(&url);
    gate.execute(
        "SELECT pg_advisory_lock($1)",
        &[&schema::MIGRATION_LOCK_KEY],
    )
    .unwrap();
    let pg_url = match DatabaseUrl::parse(&url).unwrap() {
        DatabaseUrl::Postgres(u) => *u,
        DatabaseUrl::Sqlite(_) => unreachable!(),
    };
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, dir) = (pg_url.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || {
                let mut c =
                    sealdrop_server::pg::worker::connect(&url, &Settings::default()).unwrap();
                sealdrop_server::pg::identity::check(&mut c, &url, &dir)
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(20), || {
        let waiting: i64 = gate
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .unwrap()
            .get(0);
        waiting == 4
    }));
    gate.execute(
        "SELECT pg_advisory_unlock($1)",
        &[&schema::MIGRATION_LOCK_KEY],
    )
    .unwrap();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let token = sealdrop_server::pg::identity::read_token(dir.path())
        .unwrap()
        .unwrap();
    let recorded: Option<String> = gate
        .query_one("SELECT store_id FROM sealdrop_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(recorded, Some(token));
    // No temporary file of the losers is left.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [".sealdrop-store-id"]);
}

#[test]
fn a_version_1_database_migrates_and_a_newer_or_foreign_one_is_refused() {
    let cluster = cluster_or_skip!();
    // Version 1: the tables and a row, from an older server.
    let url = fresh_db(cluster);
    let mut c = sql(&url);
    c.batch_execute(&format!(
        "{}; {}; {}; INSERT INTO sealdrop_schema VALUES (1, 1);",
        schema::VERSION_TABLE_SQL,
        schema::CLIENTS_TABLE_SQL,
        schema::FILES_TABLE_SQL
    ))
    .unwrap();
    c.execute(
        "INSERT INTO clients VALUES ($1, 'old', NULL, $2, $3)",
        &[&&[3u8; 16][..], &SEEN, &&[5u8; 16][..]],
    )
    .unwrap();
    let mut h = start(&url, Settings::default());
    assert_eq!(
        schema::schema_version(&mut c).unwrap(),
        schema::SCHEMA_VERSION
    );
    // Version 3's tables came with the migration.
    for table in ["quotas", "file_meta", "counters"] {
        assert!(
            !schema::columns(&mut c, table).unwrap().is_empty(),
            "{table}"
        );
    }
    let old = h.client(ClientId([3; 16])).unwrap();
    assert_eq!(old.last_key, Some(AesKey::from_bytes([5; 16])));
    drop(h);

    // Newer: refused by the start and by the check, and left alone.
    c.execute(
        "UPDATE sealdrop_schema SET version = $1",
        &[&(SCHEMA_VERSION + 1)],
    )
    .unwrap();
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
    let err = Worker::start(&pg_url(&url), Settings::default(), waker).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    let err = schema::check(&pg_url(&url), &Settings::default()).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    assert_eq!(schema::schema_version(&mut c).unwrap(), SCHEMA_VERSION + 1);

    // Foreign tables of the same names: refused, not adopted.
    let url = fresh_db(cluster);
    sql(&url)
        .batch_execute("CREATE TABLE clients (ID bytea, Whatever text)")
        .unwrap();
    let err = schema::migrate(&mut sql(&url)).unwrap_err();
    assert!(err.to_string().contains("no column name"), "{err}");
    // Nothing of the failed migration stayed (one transaction).
    assert_eq!(schema::schema_version(&mut sql(&url)).unwrap(), 0);
}

#[test]
fn every_operation_round_trips_and_wakes_the_loop() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    let mut h = start(&url, Settings::default());
    let (a, b) = (ClientId([0xa1; 16]), ClientId([0xb2; 16]));
    let pk = Box::new([0x42u8; PUBLIC_KEY_LEN]);
    let key256 = AesKey::from_slice(&[9u8; 32]).unwrap();

    let replies = h.ok(vec![
        register(a, "alice"),
        Op::SetPublicKey {
            id: a,
            public_key: pk.clone(),
            aes_key: AesKey::from_bytes([7; 16]),
            seen: SEEN.into(),
        },
        register(b, "bob"),
        Op::ClientCount,
    ]);
    assert_eq!(replies[0], Reply::Written(1));
    assert_eq!(replies[1], Reply::Written(1));
    assert_eq!(replies[3], Reply::Count(2));

    let alice = h.client(a).unwrap();
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.public_key.as_deref(), Some(&*pk));
    assert_eq!(alice.last_key, Some(AesKey::from_bytes([7; 16])));
    let replies = h.ok(vec![
        Op::ClientByName("bob".into()),
        Op::ClientByName("nobody".into()),
        Op::ClientById(ClientId([0; 16])),
    ]);
    match &replies[0] {
        Reply::Client(Some(bob)) => {
            assert_eq!(bob.id, b);
            assert!(bob.public_key.is_none() && bob.last_key.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(replies[1], Reply::Client(None));
    assert_eq!(replies[2], Reply::Client(None));

    // A 32-byte key (2024 revisions), then LastSeen.
    h.ok(vec![Op::SetLastKey {
        id: a,
        aes_key: key256.clone(),
    }]);
    assert_eq!(h.client(a).unwrap().last_key, Some(key256));
    let mut c = sql(&url);
    let seen = |c: &mut postgres::Client| -> String {
        c.query_one("SELECT LastSeen FROM clients WHERE ID = $1", &[&&a.0[..]])
            .unwrap()
            .get(0)
    };
    assert_eq!(seen(&mut c), SEEN);
    let later = "2025-06-01T12:00:05Z";
    let replies = h.ok(vec![
        Op::Touch {
            id: a,
            seen: later.into(),
        },
        Op::Touch {
            id: a,
            seen: later.into(),
        },
        Op::Touch {
            id: ClientId([0xee; 16]),
            seen: later.into(),
        },
    ]);
    // The second touch of the same second and an unknown id write nothing.
    assert_eq!(
        replies,
        [Reply::Written(1), Reply::Written(0), Reply::Written(0)]
    );
    assert_eq!(seen(&mut c), later);

    // Files: unverified, never downgrading a verified row; verified;
    // unmarked; deleted.
    let file = |h: &mut Harness, name: &str| -> Option<FileRow> {
        match h
            .ok(vec![Op::File {
                id: a,
                file_name: name.into(),
            }])
            .pop()
        {
            Some(Reply::File(f)) => f,
            other => panic!("{other:?}"),
        }
    };
    h.ok(vec![Op::AddUnverifiedFile {
        id: a,
        file_name: "f.txt".into(),
        path_name: "/d/f.txt".into(),
    }]);
    let row = file(&mut h, "f.txt").unwrap();
    assert_eq!(
        (row.client, row.path_name.as_str(), row.verified),
        (a, "/d/f.txt", false)
    );
    h.ok(vec![Op::MarkVerified {
        id: a,
        file_name: "f.txt".into(),
        path_name: "/e/f.txt".into(),
    }]);
    let row = file(&mut h, "f.txt").unwrap();
    assert_eq!((row.path_name.as_str(), row.verified), ("/e/f.txt", true));
    let replies = h.ok(vec![Op::AddUnverifiedFile {
        id: a,
        file_name: "f.txt".into(),
        path_name: "/d/f.txt".into(),
    }]);
    assert_eq!(replies, [Reply::Written(0)]);
    assert!(file(&mut h, "f.txt").unwrap().verified);
    h.ok(vec![Op::MarkUnverified {
        id: a,
        file_name: "f.txt".into(),
    }]);
    assert!(!file(&mut h, "f.txt").unwrap().verified);
    let replies = h.ok(vec![
        Op::DeleteFile {
            id: a,
            file_name: "f.txt".into(),
        },
        Op::DeleteFile {
            id: a,
            file_name: "f.txt".into(),
        },
    ]);
    assert_eq!(replies, [Reply::Written(1), Reply::Written(0)]);
    assert!(file(&mut h, "f.txt").is_none());

    // Registration replacing an unkeyed client; never a keyed one.
    let b2 = ClientId([0xb3; 16]);
    h.ok(vec![Op::RegisterClient {
        id: b2,
        name: "bob".into(),
        replace: Some(b),
        seen: SEEN.into(),
    }]);
    assert!(h.client(b).is_none());
    assert_eq!(h.client(b2).unwrap().name, "bob");
    let done = h.run(vec![Op::RegisterClient {
        id: ClientId([0xa2; 16]),
        name: "alice".into(),
        replace: Some(a),
        seen: SEEN.into(),
    }]);
    assert_eq!(done.results[0], Err(PgError::NameTaken));
    assert_eq!(h.client(a).unwrap().name, "alice", "keyed client kept");

    // Updates of an unknown client fail; deleting a client works.
    let done = h.run(vec![set_last_key(ClientId([0xcc; 16]), 1)]);
    assert_eq!(
        done.results[0],
        Err(PgError::NoSuchClient {
            op: "store last key"
        })
    );
    let replies = h.ok(vec![Op::DeleteClient(b2), Op::ClientCount]);
    assert_eq!(replies, [Reply::Written(1), Reply::Count(1)]);
}

#[test]
fn a_name_registered_through_one_worker_is_taken_for_the_other() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    let mut one = start(&url, named("server-1"));
    let mut two = start(&url, named("server-2"));
    for round in 0u8..20 {
        let name = format!("racer{round}");
        let id1 = ClientId([round; 16]);
        let mut id2 = id1;
        id2.0[0] = 0xff;
        // Both submitted before either is collected: the two
        // transactions run at the same time on two connections.
        one.worker
            .submit(Job {
                tag: 1,
                ops: vec![register(id1, &name), Op::ClientCount],
            })
            .unwrap();
        two.worker
            .submit(Job {
                tag: 2,
                ops: vec![register(id2, &name), Op::ClientCount],
            })
            .unwrap();
        let (r1, r2) = (one.wait(), two.wait());
        let wins: Vec<ClientId> = [(&r1, id1), (&r2, id2)]
            .iter()
            .filter(|(r, _)| r.results[0].is_ok())
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(wins.len(), 1, "round {round}: {r1:?} {r2:?}");
        for r in [&r1, &r2] {
            assert!(r.commit.is_ok());
            if let Err(e) = &r.results[0] {
                assert_eq!(*e, PgError::NameTaken);
                // The loser's error maps to a storage error naming the cause.
                let store: StoreError = e.clone().into();
                assert!(store.to_string().contains("name is taken"), "{store}");
            }
        }
        let holder = match one.ok(vec![Op::ClientByName(name.clone())]).pop() {
            Some(Reply::Client(Some(c))) => c.id,
            other => panic!("{other:?}"),
        };
        assert_eq!(holder, wins[0]);
    }
}

#[test]
fn a_failed_operation_leaves_the_rest_of_its_batch_committed() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    let mut h = start(&url, Settings::default());
    // A trigger that refuses one path, so a statement fails inside the
    // database the way an unexpected error would (not by a rule we check).
    sql(&url)
        .batch_execute(
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.PathName = '/boom' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON files \
             FOR EACH ROW EXECUTE FUNCTION refuse_boom();",
        )
        .unwrap();
    let (a, b, c) = (ClientId([1; 16]), ClientId([2; 16]), ClientId([3; 16]));
    let file = |name: &str, path: &str| Op::MarkVerified {
        id: a,
        file_name: name.into(),
        path_name: path.into(),
    };
    let done = h.run(vec![
        register(a, "ann"),
        register(b, "ann"),
        file("one", "/ok1"),
        file("two", "/boom"),
        register(c, "cid"),
        set_last_key(a, 4),
        file("three", "/ok3"),
        Op::ClientCount,
    ]);
    assert!(done.commit.is_ok(), "{:?}", done.commit);
    let r = &done.results;
    assert_eq!(r[0], Ok(Reply::Written(1)));
    assert_eq!(r[1], Err(PgError::NameTaken));
    assert_eq!(r[2], Ok(Reply::Written(1)));
    match &r[3] {
        Err(PgError::Database { op, code, detail }) => {
            assert_eq!(*op, "record verified file");
            assert_eq!(code.as_deref(), Some("P0001"));
            assert!(detail.contains("refused by the test"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r[4], Ok(Reply::Written(1)));
    assert_eq!(r[5], Ok(Reply::Written(1)));
    assert_eq!(r[6], Ok(Reply::Written(1)));
    assert_eq!(r[7], Ok(Reply::Count(2)));

    // And it is all in the database, seen from another connection.
    let mut db = sql(&url);
    let names: Vec<String> = db
        .query("SELECT Name FROM clients ORDER BY Name", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["ann", "cid"]);
    let files: Vec<String> = db
        .query("SELECT FileName FROM files ORDER BY FileName", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(files, ["one", "three"]);
    assert_eq!(
        h.client(a).unwrap().last_key,
        Some(AesKey::from_bytes([4; 16]))
    );
}

/// The pid of the worker's backend, once it waits on a lock.
fn backend_waiting_on_lock(db: &mut postgres::Client, app: &str) -> i32 {
    let mut pid = None;
    assert!(
        wait_until(WAIT, || {
            pid = db
                .query_opt(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&app],
                )
                .unwrap()
                .map(|r| r.get(0));
            pid.is_some()
        }),
        "the worker never waited on the lock"
    );
    pid.unwrap()
}

#[test]
fn a_killed_connection_fails_its_batch_and_the_worker_reconnects() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    let mut h = start(&url, named("victim"));
    let (a, b) = (ClientId([1; 16]), ClientId([2; 16]));
    let verified = || Op::MarkVerified {
        id: a,
        file_name: "f".into(),
        path_name: "/f".into(),
    };
    h.ok(vec![register(a, "a"), verified()]);
    // Another session holds a's file row: the worker's batch stops there,
    // after its first write (a wait in the job's BEGIN, where it locks
    // client rows, would be before anything and the job run again).
    let mut locker = sql(&url);
    let mut tx = locker.transaction().unwrap();
    tx.execute("SELECT 1 FROM files WHERE ID = $1 FOR UPDATE", &[&&a.0[..]])
        .unwrap();
    h.worker
        .submit(Job {
            tag: 9,
            ops: vec![register(b, "b"), verified()],
        })
        .unwrap();
    let mut admin = sql(&url);
    let pid = backend_waiting_on_lock(&mut admin, "victim");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let done = h.wait();
    assert_eq!(done.tag, 9);
    assert!(
        done.commit.as_ref().is_err_and(PgError::is_connection_lost),
        "{:?}",
        done.commit
    );
    assert!(done
        .results
        .iter()
        .all(|r| r.as_ref().is_err_and(PgError::is_connection_lost)));
    tx.rollback().unwrap();
    // Nothing of the failed batch is there, and the next job works on a
    // new connection.
    assert!(h.client(b).is_none());
    h.ok(vec![register(b, "b")]);
    assert_eq!(h.client(b).unwrap().name, "b");
}

#[test]
fn the_worker_survives_a_database_restart_and_an_outage() {
    // Its own cluster: the others keep theirs running.
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let url = cluster.create_database("restart");
    let settings = Settings {
        backoff_max: Duration::from_millis(500),
        ..named("restarted")
    };
    let mut h = start(&url, settings);
    let (a, b, c) = (ClientId([1; 16]), ClientId([2; 16]), ClientId([3; 16]));
    h.ok(vec![register(a, "before")]);

    // Restart while idle: the dead connection is noticed at the next
    // job's first statement and replaced before anything of it ran.
    cluster.restart();
    let replies = h.ok(vec![register(b, "after"), set_last_key(a, 2)]);
    assert_eq!(replies, [Reply::Written(1), Reply::Written(1)]);
    assert_eq!(h.client(a).unwrap().name, "before");

    // Down: jobs fail at once (no queueing behind a dead database).
    cluster.stop();
    let started = Instant::now();
    let done = h.run(vec![register(c, "during")]);
    assert!(
        done.commit.as_ref().is_err_and(PgError::is_connection_lost),
        "{:?}",
        done.commit
    );
    let done = h.run(vec![Op::ClientCount]);
    assert!(done.commit.is_err(), "{:?}", done.commit);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "failing took {:?}",
        started.elapsed()
    );
    // Up again: the worker reconnects by itself (back-off at most 500 ms).
    cluster.start_again();
    let mut last = None;
    let back = wait_until(WAIT, || {
        let done = h.run(vec![Op::ClientCount]);
        let ok = done.commit.is_ok();
        last = Some(done);
        ok
    });
    assert!(back, "no reconnection: {last:?}");
    assert_eq!(h.ok(vec![Op::ClientCount]), [Reply::Count(2)]);
    assert!(h.client(c).is_none());
}

#[test]
fn a_full_queue_refuses_jobs_until_results_are_collected() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    let cap = 4;
    let mut h = start(
        &url,
        Settings {
            queue_capacity: cap,
            ..named("queue")
        },
    );
    assert_eq!(h.worker.capacity(), cap);
    let a = ClientId([1; 16]);
    h.ok(vec![register(a, "a")]);
    let mut locker = sql(&url);
    let mut tx = locker.transaction().unwrap();
    tx.execute(
        "SELECT 1 FROM clients WHERE ID = $1 FOR UPDATE",
        &[&&a.0[..]],
    )
    .unwrap();
    for i in 0..cap {
        h.worker
            .submit(Job {
                tag: i as u64,
                ops: vec![set_last_key(a, i as u8)],
            })
            .unwrap();
    }
    backend_waiting_on_lock(&mut sql(&url), "queue");
    assert_eq!(h.worker.in_flight(), cap);
    let refused = h.worker.submit(Job {
        tag: 99,
        ops: vec![Op::ClientCount],
    });
    assert_eq!(refused, Err(PgError::QueueFull { cap }));
    assert!(refused.unwrap_err().to_string().contains("queued"));
    tx.rollback().unwrap();
    let tags: Vec<u64> = (0..cap).map(|_| h.wait().tag).collect();
    assert_eq!(tags, (0..cap as u64).collect::<Vec<_>>(), "in order");
    assert_eq!(h.worker.in_flight(), 0);
    assert_eq!(h.ok(vec![Op::ClientCount]), [Reply::Count(1)]);
    assert_eq!(
        h.client(a).unwrap().last_key,
        Some(AesKey::from_bytes([cap as u8 - 1; 16]))
    );

    // A job past the size limit is refused before it is queued.
    let big = Job {
        tag: 0,
        ops: vec![Op::ClientCount; MAX_OPS_PER_JOB + 1],
    };
    assert_eq!(
        h.worker.submit(big),
        Err(PgError::JobTooLarge {
            ops: MAX_OPS_PER_JOB + 1,
            max: MAX_OPS_PER_JOB
        })
    );
}

#[test]
fn malformed_rows_are_errors_not_panics() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    let mut h = start(&url, Settings::default());
    sql(&url)
        .execute(
            "INSERT INTO clients (ID, Name, AESKey) VALUES ($1, 'gina', '\\x0102'::bytea), \
             ('\\x01'::bytea, 'short', NULL)",
            &[&&[5u8; 16][..]],
        )
        .unwrap();
    let done = h.run(vec![
        Op::ClientByName("gina".into()),
        Op::ClientByName("short".into()),
        Op::ClientCount,
    ]);
    assert!(done.commit.is_ok());
    let err = done.results[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("AESKey: 2 bytes"), "{err}");
    let err = done.results[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("ID: 1 bytes"), "{err}");
    assert_eq!(done.results[2], Ok(Reply::Count(2)));
}

#[test]
fn a_wrong_database_or_user_is_a_clear_start_up_error() {
    let cluster = cluster_or_skip!();
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
    let url = pg_url(&cluster.url("no_such_database"));
    let err = Worker::start(&url, Settings::default(), waker).unwrap_err();
    assert!(err.to_string().contains("no_such_database"), "{err}");
    assert!(!err.is_connection_lost(), "{err:?}");
    // Nothing listens on this port: unreachable, reported as such, fast.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = pg_url(&format!("postgres://u:secret@127.0.0.1:{closed}/x"));
    let err = schema::check(&url, &Settings::default()).unwrap_err();
    assert!(err.is_connection_lost(), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn tls_is_used_when_the_url_asks_and_verify_modes_check_the_certificate() {
    if find_openssl_tool().is_none() {
        eprintln!("skipped: the openssl tool is not installed (it makes the test certificate)");
        return;
    }
    // Its own cluster: TCP without TLS is refused there (hostssl only).
    let Some(cluster) = PgCluster::start_with(PgOptions {
        tls_only: true,
        ..PgOptions::default()
    }) else {
        return;
    };
    cluster.create_database("tls");
    let port = cluster.port();
    let ca = cluster.certificate();
    let url =
        |host: &str, query: &str| pg_url(&format!("postgres://sealdrop@{host}:{port}/tls{query}"));
    let s = Settings::default();
    let check = |url: PgUrl| schema::check(&url, &s);

    let err = check(url("127.0.0.1", "")).unwrap_err();
    assert!(err.to_string().contains("no encryption"), "{err}");
    let said = check(url("127.0.0.1", "?sslmode=require")).unwrap();
    assert!(said.contains("empty database"), "{said}");
    let said = check(url("127.0.0.1", "?sslmode=prefer")).unwrap();
    assert!(said.contains("empty database"), "{said}");
    let verify = |mode: &str, host: &str| {
        check(url(
            host,
            &format!("?sslmode={mode}&sslrootcert={}", ca.display()),
        ))
    };
    verify("verify-full", "localhost").unwrap();
    // The certificate names localhost, not 127.0.0.1: only verify-full
    // minds.
    verify("verify-ca", "127.0.0.1").unwrap();
    let err = verify("verify-full", "127.0.0.1").unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // Without our authority (the system's only) the certificate fails.
    let err = check(url("localhost", "?sslmode=verify-full")).unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    // A worker over TLS, end to end.
    let mut h = start(
        &format!("postgres://sealdrop@127.0.0.1:{port}/tls?sslmode=require"),
        named("tls-worker"),
    );
    let id = ClientId([1; 16]);
    h.ok(vec![register(id, "over-tls")]);
    assert_eq!(h.client(id).unwrap().name, "over-tls");
    let encrypted = cluster.psql(
        "tls",
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'tls-worker'",
    );
    assert_eq!(encrypted.trim(), "t");
}

fn find_openssl_tool() -> Option<()> {
    std::process::Command::new("openssl")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| ())
}

#[test]
fn two_workers_updating_the_same_clients_in_opposite_orders_wait_instead_of_deadlocking() {
    let cluster = cluster_or_skip!();
    let url = fresh_db(cluster);
    let (x, y) = (ClientId([0x10; 16]), ClientId([0x20; 16]));
    let mut a = start(&url, named("a"));
    let mut b = start(&url, named("b"));
    a.ok(vec![register(x, "x"), register(y, "y")]);
    let touch = |id, seen: &str| Op::Touch {
        id,
        seen: seen.into(),
    };
    for round in 0..3 {
        // A third session holds both rows, so both jobs start waiting on
        // their first row and are released together: taken in the jobs'
        // own orders (x then y, y then x), that is a deadlock every time.
        let mut holder = sql(&url);
        let mut tx = holder.transaction().unwrap();
        tx.execute(
            "SELECT 1 FROM clients WHERE ID = ANY($1) FOR UPDATE",
            &[&vec![&x.0[..], &y.0[..]]],
        )
        .unwrap();
        let (sa, sb) = (format!("a{round}"), format!("b{round}"));
        a.worker
            .submit(Job {
                tag: 1,
                ops: vec![touch(x, &sa), touch(y, &sa)],
            })
            .unwrap();
        b.worker
            .submit(Job {
                tag: 2,
                ops: vec![touch(y, &sb), touch(x, &sb)],
            })
            .unwrap();
        // Both are waiting on the holder (seen from pg_stat_activity).
        let mut watcher = sql(&url);
        assert!(
            wait_until(Duration::from_secs(10), || {
                let waiting: i64 = watcher
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE application_name IN ('a', 'b') AND wait_event_type = 'Lock'",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                waiting == 2
            }),
            "the jobs never waited on the held rows"
        );
        tx.commit().unwrap();
        for h in [&mut a, &mut b] {
            let done = h.wait();
            assert!(done.commit.is_ok(), "round {round}: {:?}", done.commit);
            for r in &done.results {
                assert_eq!(
                    r,
                    &Ok(Reply::Written(1)),
                    "round {round}: {:?}",
                    done.results
                );
            }
        }
    }
}
