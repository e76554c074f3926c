//! Group commit in the storage layer, the [`Store`] contract's
//! `uncommitted` / `commit`, in both sync modes: nothing a batch changes is
//! visible on disk or to another database reader before the commit, all
//! of it is after; a file that cannot be placed fails only its own
//! connection and stays pending for a retried verdict; a failed statement
//! inside a batch leaves the rest of the batch intact.

use std::fs;
use std::path::Path;
use std::time::{Instant, SystemTime};

use rusqlite::{Connection, OpenFlags};
use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::AesKey;
use sealdrop_protocol::store::{
    Commit, ConnId, Ctx, Store, UploadId, UploadSummary, Verdict, VerdictOutcome,
};
use sealdrop_protocol::ClientId;
use sealdrop_server::db::{utc_timestamp, Db};
use sealdrop_server::files;
use sealdrop_server::store::{DiskStore, StoreConfig, SyncMode, SYNC_FILES_PER_STEP};

const MODES: [SyncMode; 2] = [SyncMode::Syncfs, SyncMode::Fsync];

fn open(dir: &Path, mode: SyncMode) -> DiskStore {
    let config = StoreConfig {
        sync_mode: mode,
        ..StoreConfig::default()
    };
    let mut store = DiskStore::open(dir, config).unwrap();
    store.housekeeping(Instant::now(), SystemTime::now());
    store
}

/// A call from connection `conn`, now.
fn cx(conn: ConnId) -> Ctx {
    Ctx {
        conn,
        now: Instant::now(),
    }
}

fn sync(store: &mut DiskStore) -> Commit {
    let c = store.commit(Instant::now());
    assert!(c.error.is_none(), "{:?}", c.error);
    c
}

fn now_text() -> String {
    utc_timestamp(SystemTime::now())
}

fn id(n: u8) -> ClientId {
    ClientId([n; 16])
}

/// Registers and keys client `n` and commits, so later batches start clean.
fn keyed(store: &mut DiskStore, n: u8) {
    store
        .register_client(cx(1), &id(n), &format!("client{n}"), None)
        .unwrap();
    store
        .set_public_key(
            cx(1),
            &id(n),
            &[1; PUBLIC_KEY_LEN],
            &AesKey::from_bytes([2; 16]),
        )
        .unwrap();
    assert!(sync(store).failed.is_empty());
}

/// A complete upload of `data` as `name` from client `who`'s own
/// connection (1000 + who), awaiting its verdict.
fn upload(store: &mut DiskStore, who: u8, name: &str, data: &[u8]) -> UploadId {
    let conn = 1000 + u64::from(who);
    let mut up = store.begin_upload(cx(conn), &id(who), name, 16).unwrap();
    store.write_upload(&mut up, data).unwrap();
    let summary = UploadSummary {
        plain_len: data.len() as u64,
        cksum: 0,
    };
    store.finish_upload(cx(conn), up, &summary).unwrap();
    *store.pending_ids().last().unwrap()
}

/// A 1029 from connection `conn` (one that holds no upload of its own).
fn accept(store: &mut DiskStore, conn: ConnId, who: u8, name: &str) -> VerdictOutcome {
    store
        .apply_verdict(cx(conn), &id(who), name, Verdict::Accept)
        .unwrap()
}

/// Another process's view of the database: only what is committed.
fn reader(dir: &Path) -> Connection {
    Connection::open_with_flags(dir.join("defensive.db"), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// Verified as another reader sees it, if the row exists.
fn committed_verified(dir: &Path, who: u8, name: &str) -> Option<i64> {
    reader(dir)
        .query_row(
            "SELECT Verified FROM files WHERE ID = ?1 AND FileName = ?2",
            (&id(who).0[..], name),
            |r| r.get(0),
        )
        .ok()
}

fn committed_clients(dir: &Path) -> i64 {
    reader(dir)
        .query_row("SELECT COUNT(*) FROM clients", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn an_accepted_upload_is_placed_and_committed_only_by_the_sync() {
    for mode in MODES {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = open(dir, mode);
        keyed(&mut store, 1);
        let uid = upload(&mut store, 1, "a.txt", b"first version");
        sync(&mut store);
        assert_eq!(accept(&mut store, 42, 1, "a.txt"), VerdictOutcome::Applied);
        let path = files::final_path(dir, &id(1), "a.txt");
        assert!(!path.exists(), "{mode:?}: placed before the sync");
        assert_eq!(committed_verified(dir, 1, "a.txt"), Some(0), "{mode:?}");
        assert!(store.uncommitted());
        let report = sync(&mut store);
        assert!(report.failed.is_empty(), "{mode:?}: {report:?}");
        assert!(!store.uncommitted());
        assert_eq!(fs::read(&path).unwrap(), b"first version", "{mode:?}");
        assert_eq!(committed_verified(dir, 1, "a.txt"), Some(1), "{mode:?}");
        assert!(!store.is_pending(uid));
        let leftovers: Vec<_> = fs::read_dir(files::client_dir(dir, &id(1)))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| files::is_part_name(&n.to_string_lossy()))
            .collect();
        assert!(leftovers.is_empty(), "{mode:?}: {leftovers:?}");
    }
}

#[test]
fn database_writes_of_a_batch_are_invisible_until_the_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = open(dir, SyncMode::Syncfs);
    store.register_client(cx(1), &id(1), "one", None).unwrap();
    store.register_client(cx(2), &id(2), "two", None).unwrap();
    // The batch sees its own writes...
    assert!(store.client_by_name("two").unwrap().is_some());
    // ...another reader does not.
    assert_eq!(committed_clients(dir), 0);
    sync(&mut store);
    assert_eq!(committed_clients(dir), 2);
    // Dropped before its commit, a batch is gone.
    store.register_client(cx(3), &id(3), "three", None).unwrap();
    drop(store);
    assert_eq!(committed_clients(dir), 2);
}

#[test]
fn more_files_than_one_step_are_all_placed_by_one_sync() {
    let count = SYNC_FILES_PER_STEP + 6;
    for mode in MODES {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = open(dir, mode);
        for n in 0..count {
            keyed(&mut store, n as u8);
            upload(&mut store, n as u8, "f.bin", &[n as u8; 100]);
        }
        sync(&mut store);
        for n in 0..count {
            assert_eq!(
                accept(&mut store, 100 + n as u64, n as u8, "f.bin"),
                VerdictOutcome::Applied
            );
        }
        let report = sync(&mut store);
        assert!(report.failed.is_empty(), "{mode:?}: {report:?}");
        for n in 0..count {
            let path = files::final_path(dir, &id(n as u8), "f.bin");
            assert_eq!(fs::read(&path).unwrap(), vec![n as u8; 100], "{mode:?}");
            assert_eq!(committed_verified(dir, n as u8, "f.bin"), Some(1));
        }
        assert_eq!(store.pending_count(), 0);
    }
}

#[test]
fn a_file_that_cannot_be_placed_fails_only_its_actor_and_stays_pending() {
    for mode in MODES {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = open(dir, mode);
        keyed(&mut store, 1);
        keyed(&mut store, 2);
        let blocked = upload(&mut store, 1, "x", b"blocked bytes");
        upload(&mut store, 2, "y", b"fine bytes");
        sync(&mut store);
        // A non-empty folder where client 1's file must go: the rename fails.
        let in_the_way = files::final_path(dir, &id(1), "x");
        fs::create_dir(&in_the_way).unwrap();
        fs::write(in_the_way.join("keep"), b"k").unwrap();
        accept(&mut store, 11, 1, "x");
        accept(&mut store, 22, 2, "y");
        store
            .set_last_key(cx(33), &id(2), &AesKey::from_bytes([9; 16]))
            .unwrap();
        let report = sync(&mut store);
        assert_eq!(report.failed, vec![11], "{mode:?}");
        // The rest of the batch is durable.
        assert_eq!(
            fs::read(files::final_path(dir, &id(2), "y")).unwrap(),
            b"fine bytes"
        );
        assert_eq!(committed_verified(dir, 2, "y"), Some(1));
        assert_eq!(committed_verified(dir, 1, "x"), Some(0));
        assert!(in_the_way.join("keep").exists());
        // The failed one waits for a retried 1029, which succeeds once the
        // way is clear.
        assert!(store.is_pending(blocked), "{mode:?}");
        fs::remove_dir_all(&in_the_way).unwrap();
        assert_eq!(accept(&mut store, 44, 1, "x"), VerdictOutcome::Applied);
        assert!(sync(&mut store).failed.is_empty());
        assert_eq!(fs::read(&in_the_way).unwrap(), b"blocked bytes");
        assert_eq!(committed_verified(dir, 1, "x"), Some(1));
    }
}

#[test]
fn a_failed_statement_inside_a_batch_keeps_the_rest_of_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = Db::open(tmp.path()).unwrap();
    db.set_batching(true).unwrap();
    let seen = now_text();
    db.register_client(&id(1), "taken", None, &seen).unwrap();
    // Same name: refused, and only this statement is undone.
    assert!(db.register_client(&id(2), "taken", None, &seen).is_err());
    // A replacement that must not happen (client 1 is keyed by then):
    // the DELETE and the INSERT are undone together.
    db.set_public_key(
        &id(1),
        &[3; PUBLIC_KEY_LEN],
        &AesKey::from_bytes([4; 16]),
        &seen,
    )
    .unwrap();
    assert!(db
        .register_client(&id(5), "taken", Some(&id(1)), &seen)
        .is_err());
    db.register_client(&id(6), "other", None, &seen).unwrap();
    assert!(db.has_batch());
    db.commit_batch().unwrap();
    assert!(!db.has_batch());
    assert_eq!(committed_clients(tmp.path()), 2);
    let kept = db.client_by_id(&id(1)).unwrap().unwrap();
    assert_eq!(kept.name, "taken");
    assert!(kept.public_key.is_some());
    assert!(db.client_by_id(&id(2)).unwrap().is_none());
    assert!(db.client_by_id(&id(5)).unwrap().is_none());
    // Nothing waiting: a commit does nothing.
    db.commit_batch().unwrap();
}

#[test]
fn a_verified_row_whose_file_is_missing_is_set_back_to_0_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let mut store = open(dir, SyncMode::Syncfs);
        keyed(&mut store, 1);
        upload(&mut store, 1, "kept", b"kept bytes");
        upload(&mut store, 1, "lost", b"lost bytes");
        accept(&mut store, 2, 1, "kept");
        accept(&mut store, 2, 1, "lost");
        assert!(sync(&mut store).failed.is_empty());
    }
    // A crash inside the flush that carried both the rename and the
    // Verified = 1 kept only the row (here: the file is removed).
    fs::remove_file(files::final_path(dir, &id(1), "lost")).unwrap();
    let store = open(dir, SyncMode::Syncfs);
    assert_eq!(committed_verified(dir, 1, "lost"), Some(0));
    assert_eq!(committed_verified(dir, 1, "kept"), Some(1));
    assert_eq!(store.verified_files().unwrap().len(), 1);
}
