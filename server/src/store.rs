//! [`DiskStore`]: the server's [`Store`], over SQLite ([`crate::db`]) and
//! the filesystem ([`crate::files`]).
//!
//! It follows the reference peer's storage rules (peer README, "Verdicts";
//! PROTOCOL.md §6 "Storage"):
//!
//! * An upload is written to a temporary file in the client's folder and
//!   stays there, pending, after it completes. Nothing reaches the final
//!   path before the client accepts it (1029).
//! * A complete upload gets a `Verified = 0` row only if its name has no
//!   row yet; a verified file's row keeps `Verified = 1` until a new upload
//!   of the name is verified. Discarding an upload deletes its temporary
//!   file and keeps the row as it was, so a `Verified = 1` row always
//!   names the file a client confirmed, and a `Verified = 0` row never
//!   claims a file.
//! * Accepting syncs the temporary file, renames it over the final path,
//!   syncs the folder, then sets `Verified = 1`. Until the rename nothing
//!   earlier changes; if a later step fails the upload stays pending and a
//!   retried 1029 finishes the remaining steps.
//! * The uploads awaiting a verdict are one [`PendingSet`] (the rules of
//!   the protocol crate): a pending upload outlives its connection (a
//!   verdict may come on a new one, §1) and expires
//!   [`StoreConfig::orphan_ttl`] after its connection closed; at most
//!   [`StoreConfig::max_pending`] are pending server-wide and
//!   [`StoreConfig::max_pending_per_conn`] per connection.
//! * At start-up, temporary files a crash left behind are deleted.
//!
//! Durability is group commit, the [`Store`] contract: database writes
//! wait in one open transaction and accepted uploads wait in a list until
//! [`Store::commit`], which the event loop calls once per pass before that
//! pass's answers go out. One commit then serves every connection of the
//! pass. In [`SyncMode::Syncfs`]: a filesystem sync for the accepted
//! files' contents (skipped when an earlier one covered them), the
//! renames, the database commit (one WAL fsync), and one filesystem sync
//! for all renames and folders. In [`SyncMode::Fsync`]: each file fsynced
//! (writeback started for all first), renamed, each folder fsynced once,
//! one WAL fsync. Nothing is durable before its commit; dropping the
//! store without one rolls the uncommitted records back.
//!
//! The store reads no clock: every call carries the loop's time
//! ([`Ctx`]), and [`Store::housekeeping`] gives it the wall-clock time
//! that goes with it, from which LastSeen is written.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::AesKey;
use sealdrop_protocol::store::{
    ClientRecord, Commit, CommitRefusal, ConnId, Ctx, Deleted, Eviction, Forgotten, LiveUploads,
    Lookup, PendingEntry, PendingLimits, PendingSet, Quota, QuotaOverride, Readiness, Store,
    StoreError, UploadId, UploadSummary, Usage, Verdict, VerdictOutcome, Withdrawal,
};
use sealdrop_protocol::ClientId;

use crate::db::{utc_timestamp, Db, FileRow};
use crate::files::{self, PartFile};
use crate::pg::{DatabaseUrl, JobDone, PgError};
use crate::records::{PgRecords, Records};

pub use sealdrop_protocol::store::{
    DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_CONN, DEFAULT_ORPHAN_TTL,
};

/// How a group commit ([`Store::commit`]) makes accepted files durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// At most two syncfs(2) calls per batch, whatever its size: one for
    /// the files' contents (skipped when an earlier one already covered
    /// them), one after the renames for all folders. Cheapest by far when many
    /// clients confirm at once (each client has its own folder, and each
    /// folder fsync is a device flush), but it also waits for any other
    /// dirty data on the same filesystem, so the data directory is best on
    /// a filesystem of its own. Needs Linux 5.8 or later, which reports
    /// write errors through syncfs; older kernels get `Fsync`.
    Syncfs,
    /// fsync(2) of each accepted file (their writeback started together)
    /// and of each folder touched: touches nothing else on the
    /// filesystem, costs a flush per file and per folder.
    Fsync,
}

/// Default [`StoreConfig::sync_mode`].
pub const DEFAULT_SYNC_MODE: SyncMode = SyncMode::Syncfs;

/// Tunables of a [`DiskStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// How long a pending upload is kept after its connection closed
    /// without a verdict. Default [`DEFAULT_ORPHAN_TTL`] (120 s).
    pub orphan_ttl: Duration,
    /// Most uploads pending (complete, awaiting a verdict) server-wide. At
    /// the cap a new one first evicts the oldest orphaned upload, then the
    /// same client's oldest, and is refused if neither exists (never
    /// another client's live upload). Default [`DEFAULT_MAX_PENDING`]
    /// (1024); a value below 1 counts as 1.
    pub max_pending: usize,
    /// Most uploads one connection may hold pending; beyond it the
    /// connection's oldest is discarded. Default
    /// [`DEFAULT_MAX_PENDING_PER_CONN`] (16).
    pub max_pending_per_conn: usize,
    /// How group commit syncs files. Default [`DEFAULT_SYNC_MODE`].
    pub sync_mode: SyncMode,
    /// The most bytes and files a client may keep, unless it has a quota
    /// of its own. Default unlimited.
    pub quota: Quota,
    /// Where the records are: `sqlite:` (the default, `defensive.db` in the
    /// data directory), `sqlite:PATH`, or PostgreSQL, shared by several
    /// servers.
    pub database: DatabaseUrl,
    /// This server's name among the servers sharing the data directory
    /// (PostgreSQL only): its temporary files carry it, so each server
    /// cleans up only its own. `None`: the host name.
    pub server_id: Option<String>,
    /// PostgreSQL: how often the database and the stored files are
    /// measured for the metrics. Default [`crate::records::MEASURE_EVERY`]
    /// (15 s).
    pub measure_every: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            orphan_ttl: DEFAULT_ORPHAN_TTL,
            max_pending: DEFAULT_MAX_PENDING,
            max_pending_per_conn: DEFAULT_MAX_PENDING_PER_CONN,
            sync_mode: DEFAULT_SYNC_MODE,
            quota: Quota::UNLIMITED,
            database: DatabaseUrl::default(),
            server_id: None,
            measure_every: crate::records::MEASURE_EVERY,
        }
    }
}

/// How an upload ended, as `stats` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (1029) and stored.
    Verified,
    /// Thrown away at the client's word (1030 or 1031).
    Discarded,
    /// Refused for its client's quota.
    OverQuota,
    /// No verdict in time (its connection closed past `--orphan-ttl`), or
    /// discarded for room (the pending-upload caps).
    Expired,
    /// Cut short: its connection was lost, its padding was wrong, a write
    /// or the commit failed.
    Aborted,
    /// Withdrawn by an administrator (its client forgotten or its file
    /// deleted while it arrived or awaited a verdict).
    Withdrawn,
}

impl Outcome {
    /// Every outcome, in the order `stats` shows them.
    pub const ALL: [Outcome; 6] = [
        Outcome::Verified,
        Outcome::Discarded,
        Outcome::OverQuota,
        Outcome::Expired,
        Outcome::Aborted,
        Outcome::Withdrawn,
    ];

    /// Its name in `stats`, the JSON and the `counters` table.
    pub fn key(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::Discarded => "discarded",
            Outcome::OverQuota => "over_quota",
            Outcome::Expired => "expired",
            Outcome::Aborted => "aborted",
            Outcome::Withdrawn => "withdrawn",
        }
    }
}

/// Uploads that left those awaiting a verdict without one, counted for
/// the metrics until [`DiskStore::take_dropped_pending`] takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DroppedPending {
    /// No verdict within `--orphan-ttl` of its connection's close, or put
    /// out for room (the pending-upload caps): `expired` in `stats`.
    pub expired: u64,
    /// Withdrawn by an administrator: `withdrawn` in `stats`.
    pub withdrawn: u64,
}

/// Uploads counted by [`Outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcomes([u64; 6]);

impl Outcomes {
    /// The count of one outcome.
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome as usize]
    }

    fn add(&mut self, outcome: Outcome, n: u64) {
        let slot = &mut self.0[outcome as usize];
        *slot = slot.saturating_add(n);
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }

    /// `(key, count)` of every outcome.
    pub fn entries(&self) -> Vec<(&'static str, u64)> {
        Outcome::ALL
            .iter()
            .map(|o| (o.key(), self.get(*o)))
            .collect()
    }

    /// Counts read back from `(key, count)` pairs (unknown keys ignored).
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) -> Outcomes {
        let mut out = Outcomes::default();
        for (key, n) in entries {
            if let Some(o) = Outcome::ALL.iter().find(|o| o.key() == key) {
                out.add(*o, n);
            }
        }
        out
    }
}

impl StoreConfig {
    fn pending_limits(&self) -> PendingLimits {
        PendingLimits {
            max_total: self.max_pending,
            max_per_conn: self.max_pending_per_conn,
            orphan_ttl: self.orphan_ttl,
        }
    }
}

/// An upload being received ([`Store::Upload`] of [`DiskStore`]): whose it
/// is, where it will go, and its temporary file. Dropped without
/// [`Store::finish_upload`], it deletes its temporary file.
#[derive(Debug)]
pub struct DiskUpload {
    client: ClientId,
    file_name: String,
    final_path: PathBuf,
    part: PartFile,
    /// Set when an administrator withdraws it.
    mark: Withdrawal,
    /// When it began (the driver's clock).
    started: Instant,
}

impl DiskUpload {
    /// The uploading client.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// The file's base name.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// Plaintext bytes written so far.
    pub fn written(&self) -> u64 {
        self.part.written()
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        self.part.path()
    }
}

/// What the store keeps for a complete upload awaiting its verdict.
#[derive(Debug)]
pub struct PendingFile {
    final_path: PathBuf,
    part: PartFile,
    summary: UploadSummary,
    /// When its upload began: with PostgreSQL, a deletion of its name
    /// recorded after this withdraws it at its placing.
    started: Instant,
    /// Its content is durable once [`DiskStore::fs_syncs`] reaches this:
    /// the first filesystem sync begun after it was complete covers it.
    durable_at_sync: u64,
}

type Pending = PendingEntry<PendingFile>;

/// A commit between its start (files placed) and its database outcome.
#[derive(Debug)]
struct InFlight {
    batch: u64,
    /// Accepted uploads now at their final paths.
    placed: Vec<(UploadId, Pending)>,
    /// Counts the commit writes.
    flushed: Outcomes,
    /// Connections already known to have failed.
    failed: Vec<ConnId>,
    /// The loop's time when it started.
    started: Instant,
    /// Files and folders to delete once it succeeded.
    unlink: Vec<PathBuf>,
    remove_dirs: Vec<PathBuf>,
    /// PostgreSQL: for each write of the job, the connection it was for.
    conns: Vec<Option<ConnId>>,
    /// PostgreSQL: the index of `placed[0]`'s operation in the job (the
    /// placements follow the open batch's writes, in `placed`'s order).
    place_from: usize,
    /// Accepted uploads withdrawn by an administrator before the commit,
    /// and (PostgreSQL) those the database refused to keep.
    refused: Vec<CommitRefusal>,
}

/// The server's storage: `<data dir>/defensive.db` and
/// `<data dir>/files/<client id hex>/<base name>` (§8).
#[derive(Debug)]
pub struct DiskStore {
    /// Held for the store's lifetime: the data directory's lock
    /// ([`LOCK_FILE_NAME`]), and the SQLite database's
    /// ([`DB_LOCK_SUFFIX`]) or this server id's ([`SERVER_LOCK_PREFIX`]).
    _locks: Vec<std::fs::File>,
    data_dir: PathBuf,
    config: StoreConfig,
    db: Records,
    /// With PostgreSQL, the server id its temporary files carry.
    server_id: Option<String>,
    /// The open batch's number (PostgreSQL; always 0 with SQLite, which
    /// commits at once).
    batch_no: u64,
    /// The commit on its way to PostgreSQL.
    in_flight: Option<InFlight>,
    /// Bytes of stored files deleted after commits, not yet taken by the
    /// metrics.
    removed_bytes: u64,
    /// The only list of uploads awaiting a verdict.
    pending: PendingSet<PendingFile>,
    /// Accepted uploads waiting for the next commit.
    placing: Vec<(UploadId, Pending)>,
    /// The `files` folder, open for syncfs(2) (in [`SyncMode::Syncfs`]).
    /// Held for the store's lifetime, so the kernel reports every write
    /// error on the filesystem since the last sync through it.
    fs_handle: Option<std::fs::File>,
    /// Successful filesystem syncs so far.
    fs_syncs: u64,
    /// The loop's clock and the wall-clock time that went with it at the
    /// last [`Store::housekeeping`].
    wall_anchor: Option<(Instant, SystemTime)>,
    /// Uploads being received, for an administrator to withdraw.
    live: LiveUploads,
    /// Uploads by outcome since the store was opened.
    since_start: Outcomes,
    /// Counts not yet added to the `counters` table (at the next commit).
    unflushed: Outcomes,
    /// Stored files an administrator removed, deleted once the commit
    /// that removes their records succeeded; then their folders, if empty.
    unlink_after_commit: Vec<PathBuf>,
    remove_dirs_after_commit: Vec<PathBuf>,
    /// Connections whose accepted upload was withdrawn before the commit:
    /// the next commit refuses them with [`StoreError::Withdrawn`] (their
    /// held answers fail, and the refusal is answered and counted as one).
    fail_at_commit: Vec<CommitRefusal>,
    /// Uploads awaiting a verdict dropped without one, not yet taken by
    /// the metrics.
    dropped_pending: DroppedPending,
}

/// Accepted files synced together per step of a commit in
/// [`SyncMode::Fsync`]: bounds the file descriptors it holds open at once.
pub const SYNC_FILES_PER_STEP: usize = 64;

/// File in the data directory that a running server holds locked, so a
/// second server on the same directory refuses to start instead of
/// deleting the first one's uploads in progress.
pub const LOCK_FILE_NAME: &str = ".sealdrop.lock";

/// Makes the records agree with the files after a crash.
///
/// A file at its final path was confirmed by its client (only an accept
/// places a file there), so a Verified = 0 row for it is left over from an
/// accept whose database update failed (a full disk, a crash between the
/// rename and the commit): mark it verified. The other way round, a
/// Verified = 1 row whose file is missing claims a file nobody can get
/// (group commit in syncfs mode commits a Verified = 1 just before the
/// filesystem sync that makes its rename durable, and a crash in between
/// keeps only the row; or the file was deleted by hand): set it back to
/// 0, which claims nothing.
fn repair_records(db: &Db, data_dir: &Path) -> Result<(), StoreError> {
    for f in db.files()? {
        let path = files::final_path(data_dir, &f.client, &f.file_name);
        if f.verified && !path.exists() {
            db.mark_unverified(&f.client, &f.file_name)?;
            log::warn!(
                "{} {:?}: marked verified but not at its final path (interrupted accept, or \
                 deleted by hand); marked unverified",
                f.client.to_hex(),
                f.file_name
            );
            continue;
        }
        if !f.verified && path.is_file() {
            db.mark_verified(&f.client, &f.file_name, path_text(&path)?)?;
            log::warn!(
                "{} {:?}: at its final path but not marked verified (interrupted accept); marked now",
                f.client.to_hex(),
                f.file_name
            );
        }
    }
    Ok(())
}

/// Records the size of every stored file that has none yet (files stored
/// before schema version 3, or marked verified by the start-up repair),
/// so quotas count them. One transaction.
fn record_missing_sizes(db: &mut Db, data_dir: &Path) -> Result<(), StoreError> {
    db.set_batching(true)?;
    let mut n = 0;
    for f in db.files()?.into_iter().filter(|f| f.verified) {
        if db.file_meta(&f.client, &f.file_name)?.size.is_some() {
            continue;
        }
        let path = files::final_path(data_dir, &f.client, &f.file_name);
        if let Ok(meta) = std::fs::metadata(&path) {
            db.record_file_meta(&f.client, &f.file_name, meta.len(), None)?;
            n += 1;
        }
    }
    db.set_batching(false)?;
    if n > 0 {
        log::info!("recorded the size of {n} stored file(s) for quotas");
    }
    Ok(())
}

/// Beside a SQLite database file `NAME`, the file `NAME` + this suffix
/// (`defensive.db.lock` for the default one) is held locked exclusively by
/// the server using it, so a second server on the same database is
/// refused even when the two have different data directories
/// (`--database sqlite:PATH`). A lock file of its own rather than a lock
/// on the database: SQLite locks the database file with fcntl(2), and
/// closing any descriptor of it would drop those locks.
pub const DB_LOCK_SUFFIX: &str = ".lock";

/// With PostgreSQL, each server holds `<data dir>/` + this prefix + its
/// server id + `.lock` locked exclusively for its whole life, taken before
/// its start-up clean-up and before it creates its control socket: a
/// second server started with the same `--server-id` on the same data
/// directory is refused instead of deleting the first one's uploads in
/// flight and replacing its control socket.
pub const SERVER_LOCK_PREFIX: &str = ".sealdrop.server.";

/// The lock file a server with id `id` holds in `data_dir`
/// ([`SERVER_LOCK_PREFIX`]).
pub fn server_lock_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join(format!("{SERVER_LOCK_PREFIX}{id}.lock"))
}

/// The lock file beside the SQLite database `db` ([`DB_LOCK_SUFFIX`]).
pub fn db_lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(DB_LOCK_SUFFIX);
    db.with_file_name(name)
}

/// The SQLite database file a configuration uses, if it uses SQLite.
pub fn sqlite_path(data_dir: &Path, config: &StoreConfig) -> Option<PathBuf> {
    match &config.database {
        DatabaseUrl::Sqlite(Some(path)) => Some(path.clone()),
        DatabaseUrl::Sqlite(None) => Some(data_dir.join(crate::db::DB_FILE_NAME)),
        DatabaseUrl::Postgres(_) => None,
    }
}

/// Whether a lock file is created when missing (a start) or only probed
/// when present (`--check-config`, which leaves the directory as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockUse {
    Hold,
    Probe,
}

/// Why a lock was not taken.
enum Busy {
    /// Another process holds it (exclusively, or shared when exclusive
    /// was asked).
    Held,
    /// The file cannot be opened or locked.
    Other(std::io::Error),
}

/// Opens `path` and locks it (shared or exclusive) without waiting.
/// `Ok(None)`: a probe of a file that does not exist (nobody holds it).
fn take_lock(path: &Path, shared: bool, how: LockUse) -> Result<Option<std::fs::File>, Busy> {
    // Readable too: on NFS a shared flock becomes a POSIX read lock,
    // which needs a descriptor open for reading.
    let file = match std::fs::OpenOptions::new()
        .create(how == LockUse::Hold)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if how == LockUse::Probe && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(Busy::Other(e)),
    };
    let locked = if shared {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match locked {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Busy::Held),
        Err(std::fs::TryLockError::Error(e)) => Err(Busy::Other(e)),
    }
}

/// Locks the data directory: exclusively for a server on SQLite (alone on
/// its directory), shared for servers on PostgreSQL (any number of them,
/// but never beside one on SQLite, which would delete their uploads in
/// flight as its own leftovers).
fn lock_data_dir(
    data_dir: &Path,
    shared: bool,
    how: LockUse,
) -> Result<Option<std::fs::File>, StoreError> {
    let path = data_dir.join(LOCK_FILE_NAME);
    match take_lock(&path, shared, how) {
        Ok(file) => Ok(file),
        Err(Busy::Held) if shared => Err(StoreError::Invalid(format!(
            "{} is in use by a sealdrop-server on SQLite (it holds {}); servers on \
             PostgreSQL share a data directory only with each other",
            data_dir.display(),
            path.display()
        ))),
        Err(Busy::Held) => {
            // Held shared: by servers on PostgreSQL.
            let by_pg = matches!(take_lock(&path, true, LockUse::Probe), Ok(Some(_)));
            Err(StoreError::Invalid(if by_pg {
                format!(
                    "{} is in use by sealdrop-servers on PostgreSQL (they hold {} shared); \
                     give this server their --database to run beside them",
                    data_dir.display(),
                    path.display()
                )
            } else {
                format!(
                    "{} is in use by another sealdrop-server (it holds {})",
                    data_dir.display(),
                    path.display()
                )
            }))
        }
        Err(Busy::Other(e)) => Err(io_err(&format!("lock {}", path.display()), e)),
    }
}

/// Locks the SQLite database `db` for this server alone
/// ([`DB_LOCK_SUFFIX`]).
fn lock_database(db: &Path, how: LockUse) -> Result<Option<std::fs::File>, StoreError> {
    let path = db_lock_path(db);
    match take_lock(&path, false, how) {
        Ok(file) => Ok(file),
        Err(Busy::Held) => Err(StoreError::Invalid(format!(
            "the database {} is in use by another sealdrop-server (it holds {}); two \
             servers cannot share one SQLite database (use PostgreSQL for that)",
            db.display(),
            path.display()
        ))),
        Err(Busy::Other(e)) => Err(io_err(&format!("lock {}", path.display()), e)),
    }
}

/// Locks this server's id on a data directory shared through PostgreSQL
/// ([`SERVER_LOCK_PREFIX`]).
fn lock_server_id(
    data_dir: &Path,
    id: &str,
    how: LockUse,
) -> Result<Option<std::fs::File>, StoreError> {
    let path = server_lock_path(data_dir, id);
    match take_lock(&path, false, how) {
        Ok(file) => Ok(file),
        Err(Busy::Held) => Err(StoreError::Invalid(format!(
            "server id {id:?} is in use by another sealdrop-server on {} (it holds {}); \
             give each server its own --server-id",
            data_dir.display(),
            path.display()
        ))),
        Err(Busy::Other(e)) => Err(io_err(&format!("lock {}", path.display()), e)),
    }
}

/// The locks a start takes, only probed (`--check-config`; creates no
/// file). An error says why a start with `config` on `data_dir` would be
/// refused because another server holds what it needs, one that stopping
/// a server of this same configuration would not free: servers on
/// PostgreSQL holding the directory for a configuration on SQLite (or the
/// other way round), or a server on another data directory holding the
/// SQLite database. `Ok(Some(note))`: a server of this configuration (on
/// this directory and database, or with this server id) runs now, as
/// when the check is the pre-flight of a restart; a start is refused only
/// until it stops.
pub fn check_locks(data_dir: &Path, config: &StoreConfig) -> Result<Option<String>, StoreError> {
    let running = |path: &Path| {
        format!(
            "a server with this configuration is running now (it holds {}); a start is \
             refused until it stops",
            path.display()
        )
    };
    let dir_lock = data_dir.join(LOCK_FILE_NAME);
    let Some(db) = sqlite_path(data_dir, config) else {
        // PostgreSQL: refused beside a server on SQLite.
        lock_data_dir(data_dir, true, LockUse::Probe)?;
        let Some(id) = &config.server_id else {
            return Ok(None);
        };
        let path = server_lock_path(data_dir, id);
        return match take_lock(&path, false, LockUse::Probe) {
            Ok(_) => Ok(None),
            Err(Busy::Held) => Ok(Some(running(&path))),
            Err(Busy::Other(e)) => Err(io_err(&format!("lock {}", path.display()), e)),
        };
    };
    match take_lock(&dir_lock, false, LockUse::Probe) {
        // Nobody on this directory: the database may still be another
        // directory's server's.
        Ok(_) => lock_database(&db, LockUse::Probe).map(|_| None),
        Err(Busy::Held) => {
            if matches!(take_lock(&dir_lock, true, LockUse::Probe), Ok(Some(_))) {
                // Held shared: servers on PostgreSQL (the error says so).
                lock_data_dir(data_dir, false, LockUse::Probe).map(|_| None)
            } else {
                Ok(Some(running(&dir_lock)))
            }
        }
        Err(Busy::Other(e)) => Err(io_err(&format!("lock {}", dir_lock.display()), e)),
    }
}

/// Maps a filesystem error to a [`StoreError`] naming the operation.
fn io_err(op: &str, e: std::io::Error) -> StoreError {
    StoreError::files(op, &e)
}

/// `path` as text for the `PathName` column (the data directory is checked
/// to be UTF-8 at open, client folders and base names are ASCII).
fn path_text(path: &Path) -> Result<&str, StoreError> {
    path.to_str()
        .ok_or_else(|| StoreError::Invalid(format!("path {} is not UTF-8", path.display())))
}

/// Refuses a name that is not a plain base name. The session sanitizes
/// names (§2); this is a second line so no name can leave the folder.
fn check_base_name(name: &str) -> Result<(), StoreError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b'\\' || b.is_ascii_control());
    if bad {
        return Err(StoreError::Invalid(format!(
            "begin upload: unusable file name {name:?}"
        )));
    }
    Ok(())
}

/// The `files` folder open for syncfs(2), in [`SyncMode::Syncfs`] on a
/// kernel that reports write errors through it.
fn fs_handle(data_dir: &Path, mode: SyncMode) -> Result<Option<std::fs::File>, StoreError> {
    Ok(match mode {
        SyncMode::Syncfs if files::syncfs_reports_errors() => Some(
            std::fs::File::open(files::files_root(data_dir))
                .map_err(|e| io_err("open files directory", e))?,
        ),
        SyncMode::Syncfs => {
            log::warn!(
                "this kernel does not report write errors through syncfs (Linux < 5.8): \
                 syncing each file instead"
            );
            None
        }
        SyncMode::Fsync => None,
    })
}

fn who(p: &Pending) -> String {
    format!("{} {:?}", p.client.to_hex(), p.file_name)
}

impl DiskStore {
    /// Opens the storage in `data_dir`, creating the folder, `files/` and
    /// `defensive.db` as needed, and deletes the temporary files of uploads
    /// a crash cut off (§6).
    pub fn open(data_dir: &Path, config: StoreConfig) -> Result<DiskStore, StoreError> {
        path_text(data_dir)?;
        files::ensure_dir(data_dir).map_err(|e| io_err("create data directory", e))?;
        let shared = config.database.is_postgres();
        let mut locks: Vec<std::fs::File> = lock_data_dir(data_dir, shared, LockUse::Hold)?
            .into_iter()
            .collect();
        if let Some(db) = sqlite_path(data_dir, &config) {
            locks.extend(lock_database(&db, LockUse::Hold)?);
        }
        if let DatabaseUrl::Postgres(url) = &config.database {
            let url = (**url).clone();
            return DiskStore::open_pg(data_dir, config, &url, locks);
        }
        files::ensure_dir(&files::files_root(data_dir))
            .map_err(|e| io_err("create files directory", e))?;
        let mut db = match &config.database {
            DatabaseUrl::Sqlite(Some(path)) => Db::open_path(path)?,
            _ => Db::open(data_dir)?,
        };
        let stored: std::collections::HashSet<(String, String)> = db
            .files()?
            .into_iter()
            .map(|f| (f.client.to_hex(), f.file_name))
            .collect();
        repair_records(&db, data_dir)?;
        record_missing_sizes(&mut db, data_dir)?;
        files::cleanup_leftovers(data_dir, |client, name| {
            stored.contains(&(client.to_owned(), name.to_owned()))
        })
        .map_err(|e| io_err("clean up leftover uploads", e))?;

        let fs_handle = fs_handle(data_dir, config.sync_mode)?;
        log::info!(
            "storage in {}: {} client(s), {} file record(s); confirmed files synced by {}",
            data_dir.display(),
            db.client_count()?,
            stored.len(),
            if fs_handle.is_some() {
                "syncfs"
            } else {
                "fsync"
            }
        );
        // Group commit: writes wait in one transaction for `commit`.
        db.set_batching(true)?;
        Ok(DiskStore::assemble(
            locks,
            data_dir,
            config,
            Records::Sqlite(db),
            fs_handle,
        ))
    }

    /// [`DiskStore::open`] with the records in PostgreSQL: connects and
    /// migrates at once (so a wrong password is a start-up error), cleans
    /// up this server's own leftovers only, and leaves the worker thread to
    /// [`DiskStore::attach`].
    fn open_pg(
        data_dir: &Path,
        config: StoreConfig,
        url: &crate::pg::PgUrl,
        mut locks: Vec<std::fs::File>,
    ) -> Result<DiskStore, StoreError> {
        let server_id = config
            .server_id
            .clone()
            .unwrap_or_else(files::default_server_id);
        files::check_server_id(&server_id)
            .map_err(|e| StoreError::Invalid(format!("server id {server_id:?}: {e}")))?;
        // Before the clean-up below and the control socket: a live server
        // with this id keeps its uploads in flight and its socket.
        locks.extend(lock_server_id(data_dir, &server_id, LockUse::Hold)?);
        let connected = crate::pg::Connected::open(url, crate::pg::Settings::default())?;
        // Before anything is created or cleaned up in the directory: it
        // must be the one the database's files are in (not, say, an empty
        // mount point).
        crate::pg::identity::check(
            &mut crate::pg::worker::connect(url, &crate::pg::Settings::default())?,
            url,
            data_dir,
        )?;
        files::ensure_dir(&files::files_root(data_dir))
            .map_err(|e| io_err("create files directory", e))?;
        let mut pg = PgRecords::new(connected);
        pg.set_measure_every(config.measure_every);
        // Only this server's temporary files, and only those that are not
        // a stored file a client happened to name that way.
        let candidates = std::cell::RefCell::new(Vec::new());
        files::cleanup_leftovers_of(data_dir, Some(&server_id), |client, name| {
            candidates
                .borrow_mut()
                .push((client.to_owned(), name.to_owned()));
            true
        })
        .map_err(|e| io_err("look for leftover uploads", e))?;
        let candidates = candidates.into_inner();
        let mut stored = std::collections::HashSet::new();
        if !candidates.is_empty() {
            let ops = candidates
                .iter()
                .filter_map(|(client, name)| {
                    let id = ClientId::from_hex(client)?;
                    Some(crate::pg::Op::File {
                        id,
                        file_name: name.clone(),
                    })
                })
                .collect();
            for r in pg.run_now(ops)? {
                if let Ok(crate::pg::Reply::File(Some(row))) = r {
                    stored.insert((row.client.to_hex(), row.file_name));
                }
            }
        }
        files::cleanup_leftovers_of(data_dir, Some(&server_id), |client, name| {
            stored.contains(&(client.to_owned(), name.to_owned()))
        })
        .map_err(|e| io_err("clean up leftover uploads", e))?;
        let clients = match pg.run_now(vec![crate::pg::Op::ClientCount])?.pop() {
            Some(Ok(crate::pg::Reply::Count(n))) => n,
            _ => 0,
        };
        let fs_handle = fs_handle(data_dir, config.sync_mode)?;
        log::info!(
            "storage in {} shared as server {server_id:?}, records in PostgreSQL ({url}): \
             {clients} client(s); confirmed files synced by {}",
            data_dir.display(),
            if fs_handle.is_some() {
                "syncfs"
            } else {
                "fsync"
            }
        );
        let mut store = DiskStore::assemble(
            locks,
            data_dir,
            config,
            Records::Pg(Box::new(pg)),
            fs_handle,
        );
        store.server_id = Some(server_id);
        Ok(store)
    }

    /// Hands the event loop's waker to the store: with PostgreSQL, starts
    /// the database worker, which wakes the loop when a job is done.
    /// Nothing to do with SQLite.
    pub fn attach(&mut self, waker: std::sync::Arc<mio::Waker>) -> Result<(), StoreError> {
        match self.db.pg() {
            Some(pg) => pg.attach(waker),
            None => Ok(()),
        }
    }

    /// This server's id among servers sharing the data directory
    /// (PostgreSQL only).
    pub fn server_id(&self) -> Option<&str> {
        self.server_id.as_deref()
    }

    fn assemble(
        locks: Vec<std::fs::File>,
        data_dir: &Path,
        config: StoreConfig,
        db: Records,
        fs_handle: Option<std::fs::File>,
    ) -> DiskStore {
        DiskStore {
            _locks: locks,
            data_dir: data_dir.to_path_buf(),
            pending: PendingSet::new(config.pending_limits()),
            config,
            db,
            server_id: None,
            batch_no: 0,
            in_flight: None,
            removed_bytes: 0,
            placing: Vec::new(),
            fs_handle,
            fs_syncs: 0,
            wall_anchor: None,
            live: LiveUploads::default(),
            since_start: Outcomes::default(),
            unflushed: Outcomes::default(),
            unlink_after_commit: Vec::new(),
            remove_dirs_after_commit: Vec::new(),
            fail_at_commit: Vec::new(),
            dropped_pending: DroppedPending::default(),
        }
    }

    /// Opens the storage for an administration command while no server
    /// runs: takes the data directory's lock (so no server starts
    /// meanwhile) and opens the database, but changes nothing else (no
    /// clean-up of leftovers, no repair of records), so a command changes
    /// exactly what it says. Files are synced file by file.
    pub fn open_for_admin(data_dir: &Path, config: StoreConfig) -> Result<DiskStore, StoreError> {
        path_text(data_dir)?;
        // The database the flags name (`--database sqlite:PATH`), as the
        // server opens it; never a stray defensive.db in the directory.
        let Some(db_path) = sqlite_path(data_dir, &config) else {
            return Err(StoreError::Invalid(
                "open_for_admin is for SQLite databases".into(),
            ));
        };
        if !db_path.is_file() {
            return Err(StoreError::Invalid(format!(
                "no database at {} (has a server ever run with this --data-dir and --database?)",
                db_path.display()
            )));
        }
        let mut locks: Vec<std::fs::File> = lock_data_dir(data_dir, false, LockUse::Hold)?
            .into_iter()
            .collect();
        locks.extend(lock_database(&db_path, LockUse::Hold)?);
        let mut db = Db::open_path(&db_path)?;
        db.set_batching(true)?;
        Ok(DiskStore {
            _locks: locks,
            data_dir: data_dir.to_path_buf(),
            pending: PendingSet::new(config.pending_limits()),
            config: StoreConfig {
                sync_mode: SyncMode::Fsync,
                ..config
            },
            db: Records::Sqlite(db),
            server_id: None,
            batch_no: 0,
            in_flight: None,
            removed_bytes: 0,
            placing: Vec::new(),
            fs_handle: None,
            fs_syncs: 0,
            wall_anchor: None,
            live: LiveUploads::default(),
            since_start: Outcomes::default(),
            unflushed: Outcomes::default(),
            unlink_after_commit: Vec::new(),
            remove_dirs_after_commit: Vec::new(),
            fail_at_commit: Vec::new(),
            dropped_pending: DroppedPending::default(),
        })
    }

    /// Uploads by outcome since the store was opened.
    pub fn outcomes_since_start(&self) -> Outcomes {
        self.since_start
    }

    /// Uploads being received now.
    pub fn uploads_in_flight(&mut self) -> usize {
        self.live.count()
    }

    fn count(&mut self, outcome: Outcome, n: u64) {
        self.since_start.add(outcome, n);
        self.unflushed.add(outcome, n);
    }

    /// The quota in effect for a client: its own, else the server's.
    pub fn quota_of(&self, id: &ClientId) -> Result<Quota, StoreError> {
        Ok(self.db.quota_override(id)?.apply(self.config.quota))
    }

    /// What a client keeps (its verified files, with the accepts of this
    /// pass not yet committed), and the size of its stored `file_name`.
    fn usage_of(&self, id: &ClientId, file_name: &str) -> Result<(Usage, Option<u64>), StoreError> {
        let mut sizes: std::collections::BTreeMap<String, u64> = Default::default();
        for f in self.db.files_of(id)?.into_iter().filter(|f| f.verified) {
            let size = match self.db.file_meta(id, &f.file_name)?.size {
                Some(size) => size,
                None => std::fs::metadata(files::final_path(&self.data_dir, id, &f.file_name))
                    .map_or(0, |m| m.len()),
            };
            sizes.insert(f.file_name, size);
        }
        for (_, p) in self.placing.iter().filter(|(_, p)| p.client == *id) {
            sizes.insert(p.file_name.clone(), p.data.summary.plain_len);
        }
        let usage = Usage {
            files: sizes.len() as u64,
            bytes: sizes.values().fold(0u64, |a, b| a.saturating_add(*b)),
        };
        Ok((usage, sizes.get(file_name).copied()))
    }

    /// [`Store::check_quota`]'s rule; a refusal is counted.
    fn quota_allows(
        &mut self,
        id: &ClientId,
        file_name: &str,
        size: u64,
    ) -> Result<(), StoreError> {
        let quota = self.quota_of(id)?;
        if !quota.is_limited() {
            return Ok(());
        }
        let (usage, replaced) = self.usage_of(id, file_name)?;
        quota.check(usage, replaced, size).map_err(|q| {
            self.count(Outcome::OverQuota, 1);
            StoreError::OverQuota(q)
        })
    }

    /// An administrator changed client `id` (forgot it, or deleted its
    /// `file_name`) in the shared database directly, from another process:
    /// this server withdraws its uploads of that client (and name) still
    /// arriving, awaiting a verdict or accepted in this pass, and reads the
    /// client's records again. How many uploads it withdrew.
    pub fn withdraw_changed(&mut self, id: &ClientId, file_name: Option<&str>) -> usize {
        if let Some(pg) = self.db.pg() {
            pg.forget_client(id);
        }
        let n = self.withdraw(id, file_name);
        log::info!(
            "administrator changed {}{}: {n} upload(s) withdrawn",
            id.to_hex(),
            file_name.map_or(String::new(), |f| format!(" {f:?}"))
        );
        n
    }

    /// An administrator changed client `id`'s quota in the shared
    /// database: its connections read it again at their next request.
    pub fn refresh_client(&mut self, id: &ClientId) {
        if let Some(pg) = self.db.pg() {
            pg.forget_client(id);
        }
    }

    /// Withdraws the client's uploads (of one name, if given) that are
    /// arriving, awaiting a verdict, or accepted in this pass; how many.
    fn withdraw(&mut self, id: &ClientId, file_name: Option<&str>) -> usize {
        let pending = self.pending.of_client(id, file_name);
        for uid in &pending {
            self.drop_pending(*uid, &"withdrawn by an administrator");
        }
        let mut placing = 0;
        for (uid, p) in std::mem::take(&mut self.placing) {
            if p.client == *id && file_name.is_none_or(|f| f == p.file_name) {
                self.fail_at_commit.push(CommitRefusal {
                    conn: p.conn,
                    client_id: p.client,
                    error: StoreError::Withdrawn {
                        why: "its client was forgotten or its file deleted",
                    },
                });
                let name = who(&p);
                if let Err(e) = p.data.part.discard() {
                    log::warn!(
                        "upload {uid} ({name}) withdrawn; cannot delete its temporary file: {e}"
                    );
                }
                placing += 1;
            } else {
                self.placing.push((uid, p));
            }
        }
        self.dropped_pending.withdrawn += pending.len() as u64;
        let arriving = self.live.withdraw(id, file_name);
        let n = pending.len() + placing + arriving;
        self.count(Outcome::Withdrawn, n as u64);
        n
    }

    /// Queues a stored file (and then its folder) for deletion after the
    /// commit that removes its record.
    fn unlink_later(&mut self, id: &ClientId, file_name: &str) {
        if check_base_name(file_name).is_ok() {
            self.unlink_after_commit
                .push(files::final_path(&self.data_dir, id, file_name));
        }
    }

    /// [`Store::commit`] in [`SyncMode::Syncfs`], first half: a
    /// filesystem sync for the contents unless an earlier one covered them
    /// all, then the renames (made durable by the sync that ends the
    /// commit). Returns the uploads now at their final paths.
    fn place_all_syncfs(
        &mut self,
        batch: Vec<(UploadId, Pending)>,
        now: Instant,
        failed: &mut Vec<ConnId>,
        rename: bool,
    ) -> Vec<(UploadId, Pending)> {
        if batch.is_empty() {
            return Vec::new();
        }
        if batch
            .iter()
            .any(|(_, p)| p.data.durable_at_sync > self.fs_syncs)
        {
            if let Err(e) = self.sync_filesystem() {
                // Pages whose writeback failed may be lost and are not
                // reported twice: no complete upload can be trusted.
                log::error!(
                    "filesystem sync: {e}; discarding {} accepted and {} pending upload(s)",
                    batch.len(),
                    self.pending.len()
                );
                failed.extend(batch.iter().map(|(_, p)| p.conn));
                let ids = self.pending.ids();
                self.count(Outcome::Aborted, (ids.len() + batch.len()) as u64);
                for uid in ids {
                    self.drop_pending(uid, &"a filesystem sync failed");
                }
                return Vec::new();
            }
        }
        let mut renamed = Vec::with_capacity(batch.len());
        for (uid, mut p) in batch {
            p.data.part.mark_synced();
            if !rename {
                renamed.push((uid, p));
                continue;
            }
            match p.data.part.rename_to(&p.data.final_path) {
                Ok(()) => renamed.push((uid, p)),
                Err(e) => self.unplaced(uid, p, &e, now, failed),
            }
        }
        renamed
    }

    /// One syncfs(2) of the data directory's filesystem.
    fn sync_filesystem(&mut self) -> std::io::Result<()> {
        let Some(handle) = self.fs_handle.as_ref() else {
            return Err(std::io::Error::other("no filesystem handle"));
        };
        files::sync_filesystem(handle)?;
        self.fs_syncs += 1;
        Ok(())
    }

    /// One step of a commit in [`SyncMode::Fsync`]: starts writeback of
    /// every file, fsyncs each, renames each, fsyncs each folder once.
    /// Returns the uploads now at their final paths; the others are
    /// pending again (orphaned) and their connections reported failed.
    fn place_step(
        &mut self,
        mut step: Vec<(UploadId, Pending)>,
        now: Instant,
        failed: &mut Vec<ConnId>,
        rename: bool,
    ) -> Vec<(UploadId, Pending)> {
        let mut unplaced: Vec<(UploadId, Pending, std::io::Error)> = Vec::new();
        for (_, p) in step.iter_mut() {
            let _ = p.data.part.start_sync(); // an error shows again in sync()
        }
        let mut synced = Vec::with_capacity(step.len());
        for (uid, mut p) in step {
            let final_path = p.data.final_path.clone();
            match p.data.part.sync().and_then(|()| {
                if rename {
                    p.data.part.rename_to(&final_path)
                } else {
                    Ok(())
                }
            }) {
                Ok(()) => synced.push((uid, p)),
                Err(e) => unplaced.push((uid, p, e)),
            }
        }
        if !rename {
            for (uid, p, e) in unplaced {
                self.unplaced(uid, p, &e, now, failed);
            }
            return synced;
        }
        let mut dirs: Vec<PathBuf> = synced
            .iter()
            .filter_map(|(_, p)| p.data.final_path.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        let bad_dirs: Vec<(PathBuf, std::io::Error)> = dirs
            .into_iter()
            .filter_map(|d| files::sync_dir(&d).err().map(|e| (d, e)))
            .collect();
        for (_, p) in &synced {
            let bad = bad_dirs
                .iter()
                .find(|(d, _)| p.data.final_path.parent() == Some(d.as_path()));
            if let Some((_, e)) = bad {
                // Renamed, but the rename may not survive a crash: its
                // answer is not sent. It stays recorded as verified (its
                // client confirmed it; the old file, if the rename is
                // lost, was verified too).
                log::warn!("accept {}: folder fsync: {e}", who(p));
                failed.push(p.conn);
            }
        }
        for (uid, p, e) in unplaced {
            self.unplaced(uid, p, &e, now, failed);
        }
        synced
    }

    /// An accepted upload that could not be placed: its connection's
    /// answer is not sent, and it is pending again (orphaned) for a
    /// retried 1029.
    fn unplaced(
        &mut self,
        uid: UploadId,
        p: Pending,
        e: &std::io::Error,
        now: Instant,
        failed: &mut Vec<ConnId>,
    ) {
        log::warn!("accept {}: {e}; pending again for a retried 1029", who(&p));
        failed.push(p.conn);
        self.pending.restore(uid, p, now);
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The configuration in effect.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The SQLite database, for read-only helpers (LastSeen, file rows);
    /// `None` on PostgreSQL.
    pub fn db(&self) -> Option<&Db> {
        self.db.sqlite()
    }

    /// The records, wherever they are.
    pub fn records(&self) -> &Records {
        &self.db
    }

    /// With PostgreSQL, the last measurement of the database's bytes and
    /// the stored files' bytes (all servers'), for the metrics.
    pub fn shared_sizes(&self) -> Option<(u64, u64)> {
        self.db.pg_ref().and_then(PgRecords::sizes)
    }

    /// Bytes of stored files an administrator's removals deleted since the
    /// last call (the metrics' running files figure goes down by them).
    pub fn take_removed_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.removed_bytes)
    }

    /// Uploads awaiting a verdict that were dropped without one (expired,
    /// put out for room, withdrawn) since the last call: the metrics count
    /// them, as nothing a connection sees does.
    pub fn take_dropped_pending(&mut self) -> DroppedPending {
        std::mem::take(&mut self.dropped_pending)
    }

    /// Number of registered clients (SQLite only; PostgreSQL: an error).
    pub fn client_count(&self) -> Result<u64, StoreError> {
        self.sqlite("count clients")?.client_count()
    }

    fn sqlite(&self, op: &'static str) -> Result<&Db, StoreError> {
        self.db
            .sqlite()
            .ok_or_else(|| StoreError::database(op, "not available with PostgreSQL records (yet)"))
    }

    /// Number of uploads awaiting a verdict.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Whether this upload is still awaiting a verdict.
    pub fn is_pending(&self, upload: UploadId) -> bool {
        self.pending.contains(upload)
    }

    /// The ids of the uploads awaiting a verdict, oldest first.
    pub fn pending_ids(&self) -> Vec<UploadId> {
        self.pending.ids()
    }

    /// Every `files` row as (client, name, final path, Verified).
    pub fn files(&self) -> Result<Vec<(ClientId, String, PathBuf, bool)>, StoreError> {
        Ok(self
            .sqlite("list files")?
            .files()?
            .into_iter()
            .map(row_tuple)
            .collect())
    }

    /// The `files` rows with Verified = 1, as (client, name, final path,
    /// true): the files clients confirmed, which survive restarts (§8).
    pub fn verified_files(&self) -> Result<Vec<(ClientId, String, PathBuf, bool)>, StoreError> {
        let mut files = self.files()?;
        files.retain(|f| f.3);
        Ok(files)
    }

    /// Deletes the orphaned uploads whose connection closed at least
    /// [`StoreConfig::orphan_ttl`] before `now` (part of
    /// [`Store::housekeeping`]).
    pub fn expire_orphans(&mut self, now: Instant) {
        for id in self.pending.expired(now) {
            self.drop_pending(id, &Eviction::Expired);
            self.count(Outcome::Expired, 1);
            self.dropped_pending.expired += 1;
        }
    }

    /// When the next orphaned upload expires, if any is orphaned.
    pub fn next_orphan_deadline(&self) -> Option<Instant> {
        self.pending.next_expiry()
    }

    /// LastSeen text for the loop's time `now`, from the wall-clock time
    /// the last [`Store::housekeeping`] paired with the loop's clock (the
    /// epoch before the first).
    fn seen(&self, now: Instant) -> String {
        let wall = match self.wall_anchor {
            Some((at, wall)) if now >= at => wall + (now - at),
            Some((at, wall)) => wall - (at - now),
            None => SystemTime::UNIX_EPOCH,
        };
        utc_timestamp(wall)
    }

    /// Removes a pending upload and deletes its temporary file. One that
    /// an accept already placed at its final path stays there (its client
    /// confirmed it).
    fn drop_pending(&mut self, uid: UploadId, why: &dyn std::fmt::Display) {
        let Some(p) = self.pending.remove(uid) else {
            return;
        };
        let who = who(&p);
        if p.data.part.is_placed() {
            // Only an accepted (client-confirmed) upload is ever placed, so
            // its record must say Verified; the update that failed during
            // the accept is tried once more (and again at the next start).
            let summary = p.data.summary;
            let marked = path_text(&p.data.final_path)
                .and_then(|path| self.db.mark_verified(None, &p.client, &p.file_name, path))
                .and_then(|()| {
                    self.db.record_file_meta(
                        None,
                        &p.client,
                        &p.file_name,
                        summary.plain_len,
                        Some(summary.cksum),
                    )
                });
            match marked {
                Ok(()) => log::info!("upload {uid} ({who}) {why}; already at its final path, now marked verified"),
                Err(e) => log::warn!("upload {uid} ({who}) {why}; at its final path, marking it verified failed: {e}"),
            }
            return;
        }
        match p.data.part.discard() {
            Ok(()) => log::debug!("upload {uid} ({who}) discarded: {why}"),
            Err(e) => {
                log::warn!("upload {uid} ({who}) {why}; cannot delete its temporary file: {e}")
            }
        }
    }
}

/// A [`FileRow`] as the tuple the helpers return.
fn row_tuple(f: FileRow) -> (ClientId, String, PathBuf, bool) {
    (
        f.client,
        f.file_name,
        PathBuf::from(f.path_name),
        f.verified,
    )
}

impl Store for DiskStore {
    type Upload = DiskUpload;

    fn client_by_id(&mut self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        self.db.client_by_id(id)
    }

    fn client_by_name(&mut self, name: &str) -> Result<Option<ClientRecord>, StoreError> {
        self.db.client_by_name(name)
    }

    fn register_client(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        name: &str,
        replace: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        let seen = self.seen(cx.now);
        self.db.register_client(cx.conn, id, name, replace, &seen)?;
        match replace {
            Some(old) => log::debug!(
                "registered {name:?} as {} (replacing unkeyed {})",
                id.to_hex(),
                old.to_hex()
            ),
            None => log::debug!("registered {name:?} as {}", id.to_hex()),
        }
        Ok(())
    }

    fn set_public_key(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        public_key: &[u8; PUBLIC_KEY_LEN],
        aes_key: &AesKey,
    ) -> Result<(), StoreError> {
        let seen = self.seen(cx.now);
        self.db
            .set_public_key(cx.conn, id, public_key, aes_key, &seen)?;
        log::debug!("client {}: public key and AES key stored", id.to_hex());
        Ok(())
    }

    fn set_last_key(&mut self, cx: Ctx, id: &ClientId, aes_key: &AesKey) -> Result<(), StoreError> {
        self.db.set_last_key(cx.conn, id, aes_key)?;
        log::debug!("client {}: last AES key stored", id.to_hex());
        Ok(())
    }

    fn touch(&mut self, cx: Ctx, id: &ClientId) -> Result<(), StoreError> {
        let seen = self.seen(cx.now);
        self.db.touch(id, &seen)
    }

    fn begin_upload(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        file_name: &str,
        content_size: u32,
    ) -> Result<DiskUpload, StoreError> {
        check_base_name(file_name)?;
        let dir = files::client_dir(&self.data_dir, id);
        files::ensure_dir(&dir).map_err(|e| io_err("create client folder", e))?;
        let mut part = PartFile::create_owned(&dir, self.server_id.as_deref())
            .map_err(|e| io_err("create temporary file", e))?;
        let direct =
            u64::from(content_size) >= crate::direct::DIRECT_MIN_SIZE && part.use_direct_io();
        log::debug!(
            "upload of {file_name:?} for {} ({content_size} encrypted bytes) into {}{}",
            id.to_hex(),
            part.path().display(),
            if direct { " (O_DIRECT)" } else { "" }
        );
        Ok(DiskUpload {
            client: *id,
            file_name: file_name.to_owned(),
            final_path: dir.join(file_name),
            part,
            mark: self.live.register(*id, file_name),
            started: cx.now,
        })
    }

    fn check_quota(&mut self, id: &ClientId, file_name: &str, size: u64) -> Result<(), StoreError> {
        self.quota_allows(id, file_name, size)
    }

    fn write_upload(
        &mut self,
        upload: &mut DiskUpload,
        plaintext: &[u8],
    ) -> Result<(), StoreError> {
        if upload.mark.is_withdrawn() {
            return Err(StoreError::Withdrawn {
                why: "its client was forgotten or its file deleted",
            });
        }
        upload.part.write(plaintext).map_err(|e| {
            log::warn!("write to upload of {:?}: {e}", upload.file_name);
            io_err("write upload", e)
        })
    }

    fn finish_upload(
        &mut self,
        cx: Ctx,
        mut upload: DiskUpload,
        summary: &UploadSummary,
    ) -> Result<(), StoreError> {
        // On any error below `upload` is dropped and its file deleted:
        // an upload cut short leaves no file and no row.
        let kept = self.keep_upload(cx, &mut upload, summary);
        match &kept {
            Err(StoreError::OverQuota(_)) => {} // counted by the check
            Err(StoreError::Withdrawn { .. }) => {
                // Counted when withdrawn; its client's folder goes if
                // this was all that was left in it.
                if let Some(dir) = upload.final_path.parent() {
                    let dir = dir.to_path_buf();
                    drop(upload);
                    let _ = std::fs::remove_dir(dir);
                }
                return kept;
            }
            Err(_) => self.count(Outcome::Aborted, 1),
            Ok(()) => {}
        }
        kept?;
        let DiskUpload {
            client,
            file_name,
            final_path,
            part,
            mark: _,
            started,
        } = upload;
        let name = file_name.clone();
        let uid = self.pending.insert(
            cx.conn,
            client,
            file_name,
            PendingFile {
                final_path,
                part,
                summary: *summary,
                started,
                durable_at_sync: self.fs_syncs + 1,
            },
        );
        log::debug!(
            "upload {uid} of {name:?} for {} complete: {} bytes, awaiting verdict",
            client.to_hex(),
            summary.plain_len
        );
        Ok(())
    }

    fn abort_upload(&mut self, upload: DiskUpload) {
        let withdrawn = upload.mark.is_withdrawn();
        if !withdrawn {
            self.count(Outcome::Aborted, 1);
        }
        log::debug!(
            "upload of {:?} for {} aborted after {} bytes",
            upload.file_name,
            upload.client.to_hex(),
            upload.part.written()
        );
        let folder = upload.final_path.parent().map(Path::to_path_buf);
        if let Err(e) = upload.part.discard() {
            log::warn!("cannot delete an aborted upload's temporary file: {e}");
        }
        if let (true, Some(folder)) = (withdrawn, folder) {
            // A forgotten client's folder goes once its last upload did.
            let _ = std::fs::remove_dir(folder);
        }
    }

    fn apply_verdict(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        file_name: &str,
        verdict: Verdict,
    ) -> Result<VerdictOutcome, StoreError> {
        let Some(uid) = self.pending.select(cx.conn, id, file_name) else {
            return Ok(VerdictOutcome::NothingPending);
        };
        match verdict {
            Verdict::Accept => {
                let size = self
                    .pending
                    .get(uid)
                    .map_or(0, |p| p.data.summary.plain_len);
                if let Err(e) = self.quota_allows(id, file_name, size) {
                    // Other uploads were accepted since this one arrived.
                    self.drop_pending(uid, &"over quota at its accept");
                    return Err(e);
                }
                let mut p = self.pending.remove(uid).ok_or(StoreError::NotFound {
                    op: "accept upload",
                    what: "not pending",
                })?;
                // The answer goes to the connection that accepted it.
                p.conn = cx.conn;
                let replaces = self.db.file(id, file_name)?.is_some_and(|f| f.verified)
                    || self
                        .placing
                        .iter()
                        .any(|(_, q)| q.client == *id && q.file_name == file_name);
                self.placing.push((uid, p));
                if replaces {
                    return Ok(VerdictOutcome::Replaced);
                }
            }
            Verdict::Discard => {
                self.drop_pending(uid, &"the client rejected it");
                self.count(Outcome::Discarded, 1);
            }
        }
        Ok(VerdictOutcome::Applied)
    }

    fn pending_since(&self, cx: Ctx, id: &ClientId, file_name: &str) -> Option<Instant> {
        let uid = self.pending.select(cx.conn, id, file_name)?;
        self.pending.get(uid).map(|p| p.data.started)
    }

    fn has_pending(&self, conn: ConnId) -> bool {
        self.pending.has_conn(conn)
    }

    fn connection_closed(&mut self, cx: Ctx) {
        if let Some(pg) = self.db.pg() {
            pg.connection_closed(cx.conn);
        }
        let n = self.pending.orphan(cx.conn, cx.now);
        if n > 0 {
            log::debug!("{n} upload(s) orphaned: their connection closed");
        }
    }

    /// Counts alone do not make the store uncommitted (no answer waits
    /// for them, and no write of their own may stall the loop on a locked
    /// database): they go with the next commit, or when the store is
    /// dropped.
    fn uncommitted(&self) -> bool {
        self.db.has_batch()
            || !self.placing.is_empty()
            || !self.unlink_after_commit.is_empty()
            || !self.fail_at_commit.is_empty()
    }

    /// Makes every change since the last commit durable: accepted files
    /// are synced, renamed to their final paths and their folders synced,
    /// then the database commits once, marking them Verified. `error`: the
    /// database commit failed, so none of the batch's database changes
    /// happened and no answer of the batch may be sent; the accepted
    /// uploads are pending again (orphaned; those already renamed are
    /// marked Verified when a retried 1029 or their expiry comes, or at
    /// the next start). `failed` connections: their accepted uploads (and
    /// only they) are not stored; everything else is durable.
    fn commit(&mut self, now: Instant) -> Commit {
        if self.db.is_shared() {
            // At exit (and for administration): what is in flight, then
            // the open batch, each waited for.
            if self.in_flight.is_some() {
                let c = self.wait_commit();
                if c.error.is_some() {
                    return c;
                }
            }
            if !self.uncommitted() {
                return Commit {
                    batch: self.batch_no.saturating_sub(1),
                    ..Commit::default()
                };
            }
            return match self.begin_commit(now) {
                Some(c) => c,
                None => self.wait_commit(),
            };
        }
        if !self.uncommitted() {
            return Commit::default();
        }
        let flight = self.start_commit(now, true);
        let mut marking = Ok(());
        for (_, p) in &flight.placed {
            let s = p.data.summary;
            marking = path_text(&p.data.final_path)
                .and_then(|t| self.db.mark_verified(None, &p.client, &p.file_name, t))
                .and_then(|()| {
                    self.db.record_file_meta(
                        None,
                        &p.client,
                        &p.file_name,
                        s.plain_len,
                        Some(s.cksum),
                    )
                });
            if marking.is_err() {
                break;
            }
        }
        let mut counts = flight.flushed;
        counts.add(Outcome::Verified, flight.placed.len() as u64);
        let sqlite = |db: &Records| db.sqlite().map_or(Ok(()), Db::commit_batch);
        let committed = marking
            .and_then(|()| self.db.add_counters(&counts.entries()))
            .and_then(|()| sqlite(&self.db));
        if committed.is_err() {
            // Also rolls back whatever the failed mark left open.
            let _ = sqlite(&self.db);
        }
        self.finish_commit(flight, committed)
    }

    fn prepare(&mut self, cx: Ctx, lookups: &[Lookup<'_>]) -> Readiness {
        match self.db.pg() {
            Some(pg) => pg.prepare(cx.conn, lookups),
            None => Readiness::Ready,
        }
    }

    fn take_ready(&mut self) -> Vec<ConnId> {
        self.db.pg().map(PgRecords::take_ready).unwrap_or_default()
    }

    fn batch(&self) -> u64 {
        self.batch_no
    }

    /// With PostgreSQL: places the accepted files as [`Store::commit`]
    /// does, then sends the open batch with their records to the worker
    /// and returns; [`Store::poll_commit`] finishes it.
    fn begin_commit(&mut self, now: Instant) -> Option<Commit> {
        if !self.db.is_shared() {
            return Some(self.commit(now));
        }
        if self.in_flight.is_some() {
            return None;
        }
        if !self.uncommitted() {
            return Some(Commit {
                batch: self.batch_no.saturating_sub(1),
                ..Commit::default()
            });
        }
        let mut flight = self.start_commit(now, false);
        self.batch_no += 1;
        let mut extra = Vec::new();
        for (_, p) in &flight.placed {
            let s = p.data.summary;
            extra.push((
                Some(p.conn),
                crate::pg::Op::PlaceVerified {
                    id: p.client,
                    file_name: p.file_name.clone(),
                    from: p.data.part.path().to_path_buf(),
                    to: p.data.final_path.clone(),
                    size: s.plain_len,
                    cksum: s.cksum,
                    started: p.data.started,
                    quota: self.config.quota,
                },
            ));
        }
        // Verified uploads are counted by each placement's own statement
        // (Op::PlaceVerified), so one the database refuses, or whose
        // write fails, is not counted.
        let counts = flight.flushed;
        if !counts.is_zero() {
            let deltas = counts
                .entries()
                .into_iter()
                .map(|(n, d)| (n.to_owned(), d))
                .collect();
            extra.push((None, crate::pg::Op::AddCounters(deltas)));
        }
        let extra_len = extra.len();
        let submitted = match self.db.pg() {
            Some(pg) => pg.submit_commit(flight.batch, extra),
            None => Err(StoreError::database("commit", "no database")),
        };
        match submitted {
            Ok(conns) => {
                flight.place_from = conns.len() - extra_len;
                flight.conns = conns;
                self.in_flight = Some(flight);
                None
            }
            Err(e) => Some(self.finish_commit(flight, Err(e))),
        }
    }

    fn poll_commit(&mut self) -> Option<Commit> {
        self.in_flight.as_ref()?;
        let done = self.db.pg()?.take_commit()?;
        let flight = self.in_flight.take()?;
        Some(self.finish_pg(flight, done))
    }

    fn housekeeping(&mut self, now: Instant, wall: SystemTime) {
        self.wall_anchor = Some((now, wall));
        self.expire_orphans(now);
        if let Some(pg) = self.db.pg() {
            pg.measure(now);
        }
    }

    fn forget_client(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        delete_files: bool,
    ) -> Result<Forgotten, StoreError> {
        let record = self.db.client_by_id(id)?;
        let rows = self.db.files_of(id)?;
        if record.is_none() && rows.is_empty() {
            return Err(StoreError::NotFound {
                op: "forget client",
                what: "no such client",
            });
        }
        let uploads_withdrawn = self.withdraw(id, None);
        self.db.delete_client(id)?;
        let mut done = Forgotten {
            name: record.map(|r| r.name),
            uploads_withdrawn,
            ..Forgotten::default()
        };
        for f in rows {
            if delete_files {
                self.db.delete_file_row(id, &f.file_name)?;
                self.unlink_later(id, &f.file_name);
                if f.verified {
                    done.files_deleted.push(f.file_name);
                }
            } else if f.verified {
                done.files_kept.push(f.file_name);
            }
        }
        if delete_files || done.files_kept.is_empty() {
            // Its folder goes after the commit if nothing is left in it
            // (no file kept, no leftover): an id without a record.
            self.remove_dirs_after_commit
                .push(files::client_dir(&self.data_dir, id));
        }
        log::info!(
            "administrator: client {} ({}) forgotten; {} file(s) deleted, {} kept, {} upload(s) withdrawn",
            id.to_hex(),
            done.name.as_deref().unwrap_or("no record"),
            done.files_deleted.len(),
            done.files_kept.len(),
            done.uploads_withdrawn
        );
        Ok(done)
    }

    fn delete_file(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        file_name: &str,
    ) -> Result<Deleted, StoreError> {
        let uploads_withdrawn = self.withdraw(id, Some(file_name));
        let had_record = self.db.delete_file_row(id, file_name)?;
        if !had_record && uploads_withdrawn == 0 {
            return Err(StoreError::NotFound {
                op: "delete file",
                what: "no such file",
            });
        }
        if had_record {
            self.unlink_later(id, file_name);
            if self.db.client_by_id(id)?.is_none() && self.db.files_of(id)?.is_empty() {
                // A forgotten client's last file: its folder goes after
                // the commit too, if nothing else is left in it.
                self.remove_dirs_after_commit
                    .push(files::client_dir(&self.data_dir, id));
            }
        }
        log::info!(
            "administrator: file {:?} of {} deleted; {uploads_withdrawn} upload(s) withdrawn",
            file_name,
            id.to_hex()
        );
        Ok(Deleted {
            had_record,
            uploads_withdrawn,
        })
    }

    fn set_quota(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        quota: QuotaOverride,
    ) -> Result<(), StoreError> {
        if self.db.client_by_id(id)?.is_none() {
            return Err(StoreError::NotFound {
                op: "set quota",
                what: "no such client",
            });
        }
        self.db.set_quota(id, &quota)?;
        log::info!(
            "administrator: quota of {} set to bytes={} files={}",
            id.to_hex(),
            quota.bytes,
            quota.files
        );
        Ok(())
    }
}

impl DiskStore {
    /// A commit's first half: the accepted files placed at their final
    /// paths (synced, renamed), and what the batch takes with it.
    /// With `rename` false (PostgreSQL) the files are only synced: the
    /// database worker renames them under its lock
    /// ([`crate::pg::Op::PlaceVerified`]).
    fn start_commit(&mut self, now: Instant, rename: bool) -> InFlight {
        let refused = std::mem::take(&mut self.fail_at_commit);
        let mut failed = Vec::new();
        let mut placing = std::mem::take(&mut self.placing);
        let mut placed = Vec::new();
        if self.fs_handle.is_some() {
            placed = self.place_all_syncfs(std::mem::take(&mut placing), now, &mut failed, rename);
        }
        while !placing.is_empty() {
            let rest = placing.split_off(placing.len().min(SYNC_FILES_PER_STEP));
            let step = std::mem::replace(&mut placing, rest);
            placed.extend(self.place_step(step, now, &mut failed, rename));
        }
        InFlight {
            batch: self.batch_no,
            started: now,
            placed,
            flushed: std::mem::take(&mut self.unflushed),
            failed,
            unlink: std::mem::take(&mut self.unlink_after_commit),
            remove_dirs: std::mem::take(&mut self.remove_dirs_after_commit),
            conns: Vec::new(),
            place_from: 0,
            refused,
        }
    }

    /// A commit's second half, once the database said `committed`: the
    /// filesystem sync that makes the renames durable (syncfs mode), then
    /// either the removals it carried, or, on failure, every accepted
    /// upload pending again and its counts kept for the next commit.
    fn finish_commit(&mut self, flight: InFlight, committed: Result<(), StoreError>) -> Commit {
        let InFlight {
            batch,
            started,
            placed,
            flushed,
            failed,
            unlink,
            remove_dirs,
            conns: _,
            place_from: _,
            refused,
        } = flight;
        let mut committed = committed;
        if committed.is_ok()
            && self.fs_handle.is_some()
            && !placed.is_empty()
            && !self.db.is_shared()
        {
            // One flush for every rename and folder of the pass (with
            // PostgreSQL the worker synced each folder after its rename).
            committed = self
                .sync_filesystem()
                .map_err(|e| io_err("filesystem sync", e));
        }
        if let Err(e) = committed {
            log::warn!(
                "group commit failed: {e}; {} accepted upload(s) pending again",
                placed.len()
            );
            for (uid, p) in placed {
                self.pending.restore(uid, p, started);
            }
            // Counted again at the next commit; files an administrator
            // removed stay with their records.
            for o in Outcome::ALL {
                self.unflushed.add(o, flushed.get(o));
            }
            if let Some(pg) = self.db.pg() {
                pg.forget_cache();
            }
            return Commit {
                batch,
                error: Some(e),
                failed,
                refused,
            };
        }
        self.since_start.add(Outcome::Verified, placed.len() as u64);
        self.removed_bytes += unlink_files(unlink, remove_dirs);
        for (_, p) in &placed {
            log::debug!(
                "stored {}: {} bytes, cksum {}, verified",
                who(p),
                p.data.summary.plain_len,
                p.data.summary.cksum
            );
        }
        Commit {
            batch,
            error: None,
            failed,
            refused,
        }
    }

    /// A PostgreSQL commit job came back: a failed write fails the
    /// connection it was made for (a name another server took meanwhile);
    /// an accepted upload whose record failed is pending again.
    fn finish_pg(&mut self, mut flight: InFlight, done: JobDone) -> Commit {
        if let Err(e) = done.commit {
            return self.finish_commit(flight, Err(e.into()));
        }
        self.drop_refused_placements(&mut flight, &done);
        let mut unrecorded: Vec<(ClientId, String)> = Vec::new();
        for (i, result) in done.results.iter().enumerate() {
            let Err(e) = result else { continue };
            if matches!(e, PgError::Withdrawn { .. } | PgError::OverQuota(_)) {
                continue; // answered by drop_refused_placements
            }
            let conn = flight.conns.get(i).copied().flatten();
            match conn {
                Some(conn) => {
                    log::warn!("conn#{conn}: database write failed: {e}; its answer becomes 2107");
                    flight.failed.push(conn);
                }
                None => log::warn!("database write failed: {e}"),
            }
        }
        if !flight.failed.is_empty() {
            let failed = flight.failed.clone();
            let (bad, good): (Vec<_>, Vec<_>) = std::mem::take(&mut flight.placed)
                .into_iter()
                .partition(|(_, p)| failed.contains(&p.conn));
            flight.placed = good;
            for (uid, p) in bad {
                unrecorded.push((p.client, p.file_name.clone()));
                self.pending.restore(uid, p, flight.started);
            }
        }
        if !unrecorded.is_empty() {
            log::warn!(
                "{} accepted upload(s) not recorded: pending again for a retried 1029",
                unrecorded.len()
            );
        }
        for (_, p) in &mut flight.placed {
            p.data.part.placed_elsewhere();
        }
        self.finish_commit(flight, Ok(()))
    }

    /// PostgreSQL refused to place some accepted uploads (an
    /// administrator forgot the client or deleted the name while they were
    /// in flight, or the client's files through every server would pass
    /// its quota): their temporary files go, their connections' answers
    /// become the revision's error, and what this server had read of
    /// those clients is read again.
    fn drop_refused_placements(&mut self, flight: &mut InFlight, done: &JobDone) {
        let placed = std::mem::take(&mut flight.placed);
        for (i, (uid, p)) in placed.into_iter().enumerate() {
            let refusal = match done.results.get(flight.place_from + i) {
                Some(Err(e @ (PgError::Withdrawn { .. } | PgError::OverQuota(_)))) => e.clone(),
                _ => {
                    flight.placed.push((uid, p));
                    continue;
                }
            };
            let outcome = match refusal {
                PgError::OverQuota(_) => Outcome::OverQuota,
                _ => Outcome::Withdrawn,
            };
            log::info!(
                "conn#{}: upload {uid} ({}) not kept: {refusal}",
                p.conn,
                who(&p)
            );
            self.count(outcome, 1);
            flight.refused.push(CommitRefusal {
                conn: p.conn,
                client_id: p.client,
                error: refusal.into(),
            });
            if let Some(pg) = self.db.pg() {
                pg.forget_client(&p.client);
            }
            if let Err(e) = p.data.part.discard() {
                log::warn!("upload {uid}: cannot delete its temporary file: {e}");
            }
        }
    }

    /// Waits for the PostgreSQL commit in flight (at exit), at most
    /// [`EXIT_COMMIT_WAIT`].
    fn wait_commit(&mut self) -> Commit {
        let Some(flight) = self.in_flight.take() else {
            return Commit::default();
        };
        let done = self.db.pg().and_then(|pg| pg.wait_commit(EXIT_COMMIT_WAIT));
        match done {
            Some(done) => self.finish_pg(flight, done),
            None => self.finish_commit(
                flight,
                Err(StoreError::database(
                    "commit",
                    format!("no answer from the database in {EXIT_COMMIT_WAIT:?}"),
                )),
            ),
        }
    }
}

/// The longest the server waits at exit for its last commit to PostgreSQL
/// (twice the worker's statement timeout).
pub const EXIT_COMMIT_WAIT: Duration = Duration::from_secs(20);

/// After a successful commit: the files an administrator removed, then
/// their folders if empty (an upload may still be arriving there). The
/// bytes deleted.
fn unlink_files(unlink: Vec<PathBuf>, remove_dirs: Vec<PathBuf>) -> u64 {
    let mut bytes = 0;
    for path in unlink {
        let size = std::fs::symlink_metadata(&path).map_or(0, |m| m.len());
        match std::fs::remove_file(&path) {
            Ok(()) => {
                bytes += size;
                log::info!("deleted {}", path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot delete {}: {e}", path.display()),
        }
    }
    for dir in remove_dirs {
        let _ = std::fs::remove_dir(&dir);
    }
    bytes
}

impl Drop for DiskStore {
    /// Counts not written yet are written, unless uncommitted records wait
    /// (dropping the store rolls those back).
    fn drop(&mut self) {
        if self.db.is_shared() {
            if self.in_flight.is_some() || self.uncommitted() {
                let c = self.commit(Instant::now());
                if let Some(e) = c.error {
                    log::warn!("last commit to PostgreSQL at exit failed: {e}");
                }
            }
            if !self.unflushed.is_zero() {
                self.write_counts();
                let _ = self.commit(Instant::now());
            }
            return;
        }
        if !self.db.has_batch() && !self.unflushed.is_zero() {
            self.write_counts();
            let _ = self.db.sqlite().map(Db::commit_batch);
        }
    }
}

impl DiskStore {
    /// Puts the counts not yet written into the open batch (the next
    /// commit writes them); kept for later if that fails.
    fn write_counts(&mut self) {
        if self.unflushed.is_zero() {
            return;
        }
        let counts = std::mem::take(&mut self.unflushed);
        if let Err(e) = self.db.add_counters(&counts.entries()) {
            log::debug!("counters not written yet: {e}");
            for o in Outcome::ALL {
                self.unflushed.add(o, counts.get(o));
            }
        }
    }

    /// `verify --repair rows`: deletes the record of a file marked verified
    /// whose file is missing, if it still is; whether it did.
    pub fn repair_drop_row(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        file_name: &str,
    ) -> Result<bool, StoreError> {
        let Some(row) = self.db.file(id, file_name)? else {
            return Ok(false);
        };
        if !row.verified || files::final_path(&self.data_dir, id, file_name).exists() {
            return Ok(false);
        }
        self.delete_file(cx, id, file_name)?;
        Ok(true)
    }

    /// `verify --repair strays`: deletes a file in a client's folder that
    /// no verified record claims, or a leftover temporary file (never
    /// while `running`: it may be an upload in progress); whether it did.
    pub fn repair_delete_stray(
        &mut self,
        id: &ClientId,
        file_name: &str,
        running: bool,
    ) -> Result<bool, StoreError> {
        check_base_name(file_name)?;
        if files::is_part_name(file_name) {
            if running {
                return Ok(false);
            }
        } else if self.db.file(id, file_name)?.is_some_and(|r| r.verified) {
            return Ok(false);
        }
        let path = files::client_dir(&self.data_dir, id).join(file_name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                log::info!("administrator: deleted unrecorded {}", path.display());
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("delete an unrecorded file", e)),
        }
    }

    /// `verify --repair mismatched`: drops the record (and size and cksum)
    /// of a verified file whose file on disk has another size or cksum,
    /// if the record still holds the `recorded` values the command saw (a
    /// new accept of the name since then has replaced them: nothing to
    /// do), and keeps the file, now unrecorded (for `adopt` or `strays`).
    /// Such a record is left by an accept cut off between its rename and
    /// its commit, whose client was told the outcome is unknown and sends
    /// again. Whether it did.
    pub fn repair_drop_mismatched(
        &mut self,
        id: &ClientId,
        file_name: &str,
        recorded: crate::db::FileMeta,
    ) -> Result<bool, StoreError> {
        check_base_name(file_name)?;
        if files::is_part_name(file_name)
            || !self.db.file(id, file_name)?.is_some_and(|r| r.verified)
            || self.db.file_meta(id, file_name)? != recorded
        {
            return Ok(false);
        }
        let path = files::final_path(&self.data_dir, id, file_name);
        if !path.is_file() {
            return Ok(false);
        }
        self.db.delete_file_row(id, file_name)?;
        log::warn!(
            "administrator: dropped the record of {} (size {:?}, cksum {:?}), which does not \
             describe the file; the file stays, unrecorded",
            path.display(),
            recorded.size,
            recorded.cksum
        );
        Ok(true)
    }

    /// `verify --repair adopt`: records a file at its final path that no
    /// verified record claims as verified, with the size and cksum the
    /// command read from it (if its size still matches); whether it did.
    pub fn repair_adopt(
        &mut self,
        id: &ClientId,
        file_name: &str,
        size: u64,
        cksum: u32,
    ) -> Result<bool, StoreError> {
        check_base_name(file_name)?;
        if files::is_part_name(file_name)
            || self.db.file(id, file_name)?.is_some_and(|r| r.verified)
        {
            return Ok(false);
        }
        let path = files::final_path(&self.data_dir, id, file_name);
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size) {
            return Ok(false);
        }
        self.db
            .mark_verified(None, id, file_name, path_text(&path)?)?;
        self.db
            .record_file_meta(None, id, file_name, size, Some(cksum))?;
        log::info!("administrator: recorded {} as verified", path.display());
        Ok(true)
    }

    /// The checks of [`Store::finish_upload`] before the upload is kept:
    /// complete, not withdrawn, within its client's quota, room among the
    /// pending uploads, and its record.
    fn keep_upload(
        &mut self,
        cx: Ctx,
        upload: &mut DiskUpload,
        summary: &UploadSummary,
    ) -> Result<(), StoreError> {
        upload
            .part
            .close()
            .map_err(|e| io_err("finish upload", e))?;
        if upload.part.written() != summary.plain_len {
            return Err(StoreError::Invalid(format!(
                "finish upload: {} bytes written but {} reported",
                upload.part.written(),
                summary.plain_len
            )));
        }
        if upload.mark.is_withdrawn() {
            return Err(StoreError::Withdrawn {
                why: "its client was forgotten or its file deleted",
            });
        }
        self.quota_allows(&upload.client, &upload.file_name, summary.plain_len)?;
        let path = path_text(&upload.final_path)?.to_owned();
        for (victim, why) in self.pending.make_room(cx.conn, &upload.client)? {
            if why == Eviction::ServerFull {
                log::warn!(
                    "{} uploads await a verdict: discarding upload {victim}",
                    self.config.max_pending.max(1)
                );
            }
            self.drop_pending(victim, &why);
            self.count(Outcome::Expired, 1);
            self.dropped_pending.expired += 1;
        }
        self.db
            .add_unverified_file(&upload.client, &upload.file_name, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const ALICE: ClientId = ClientId([0xa1; 16]);
    const BOB: ClientId = ClientId([0xb0; 16]);
    /// The connection most calls come from.
    const CONN: ConnId = 1;

    fn cx(conn: ConnId) -> Ctx {
        Ctx {
            conn,
            now: Instant::now(),
        }
    }

    fn open(dir: &Path) -> DiskStore {
        open_with(dir, StoreConfig::default())
    }

    fn open_with(dir: &Path, config: StoreConfig) -> DiskStore {
        let mut store = DiskStore::open(dir, config).unwrap();
        store.housekeeping(Instant::now(), SystemTime::now());
        store
    }

    /// Commits and expects every connection's changes durable.
    fn commit(store: &mut DiskStore) {
        let c = store.commit(Instant::now());
        assert!(c.error.is_none() && c.failed.is_empty(), "{c:?}");
    }

    fn keyed(store: &mut DiskStore, id: &ClientId, name: &str) {
        store.register_client(cx(CONN), id, name, None).unwrap();
        store
            .set_public_key(
                cx(CONN),
                id,
                &[1; PUBLIC_KEY_LEN],
                &AesKey::from_bytes([2; 16]),
            )
            .unwrap();
        commit(store);
    }

    fn summary(data: &[u8]) -> UploadSummary {
        UploadSummary {
            plain_len: data.len() as u64,
            cksum: 0,
        }
    }

    /// A complete upload of `data` as `name` on `conn`, awaiting its
    /// verdict; its id.
    fn upload_on(
        store: &mut DiskStore,
        conn: ConnId,
        id: &ClientId,
        name: &str,
        data: &[u8],
    ) -> UploadId {
        let mut up = store.begin_upload(cx(conn), id, name, 16).unwrap();
        for chunk in data.chunks(7) {
            store.write_upload(&mut up, chunk).unwrap();
        }
        store.finish_upload(cx(conn), up, &summary(data)).unwrap();
        commit(store);
        *store.pending_ids().last().unwrap()
    }

    fn upload(store: &mut DiskStore, id: &ClientId, name: &str, data: &[u8]) -> UploadId {
        upload_on(store, CONN, id, name, data)
    }

    fn client_folder(store: &DiskStore, id: &ClientId) -> PathBuf {
        files::client_dir(store.data_dir(), id)
    }

    /// Names in the client's folder, sorted.
    fn listing(store: &DiskStore, id: &ClientId) -> Vec<String> {
        let Ok(entries) = fs::read_dir(client_folder(store, id)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn temp_files(store: &DiskStore, id: &ClientId) -> usize {
        listing(store, id)
            .iter()
            .filter(|n| files::is_part_name(n))
            .count()
    }

    fn row(store: &DiskStore, id: &ClientId, name: &str) -> Option<FileRow> {
        store.db().unwrap().file(id, name).unwrap()
    }

    fn verdict(store: &mut DiskStore, conn: ConnId, name: &str, v: Verdict) -> VerdictOutcome {
        let outcome = store.apply_verdict(cx(conn), &ALICE, name, v).unwrap();
        commit(store);
        outcome
    }

    fn accept(store: &mut DiskStore, id: &ClientId, name: &str) -> VerdictOutcome {
        let outcome = store
            .apply_verdict(cx(CONN), id, name, Verdict::Accept)
            .unwrap();
        commit(store);
        outcome
    }

    #[test]
    fn default_config_is_120_s_1024_uploads_and_16_per_connection() {
        let config = StoreConfig::default();
        assert_eq!(config.orphan_ttl, Duration::from_secs(120));
        assert_eq!(config.max_pending, 1024);
        assert_eq!(config.max_pending_per_conn, 16);
    }

    #[test]
    fn open_creates_data_dir_files_dir_and_database() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let store = open(&data);
        assert!(data.join("files").is_dir());
        assert!(data.join(crate::db::DB_FILE_NAME).is_file());
        assert_eq!(store.db().unwrap().journal_mode().unwrap(), "wal");
        assert_eq!(store.client_count().unwrap(), 0);
    }

    #[test]
    fn clients_and_verified_files_persist_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut store = open(tmp.path());
            keyed(&mut store, &ALICE, "alice");
            upload(&mut store, &ALICE, "a.txt", b"persistent bytes");
            assert_eq!(accept(&mut store, &ALICE, "a.txt"), VerdictOutcome::Applied);
        }
        let mut store = open(tmp.path());
        let alice = store.client_by_name("alice").unwrap().unwrap();
        assert_eq!(alice.id, ALICE);
        assert!(alice.public_key.is_some());
        assert_eq!(alice.last_key, Some(AesKey::from_bytes([2; 16])));
        let verified = store.verified_files().unwrap();
        let path = files::final_path(tmp.path(), &ALICE, "a.txt");
        assert_eq!(verified, [(ALICE, "a.txt".to_owned(), path.clone(), true)]);
        assert_eq!(fs::read(path).unwrap(), b"persistent bytes");
    }

    #[test]
    fn changes_wait_for_the_commit_and_are_lost_without_it() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut store = open(tmp.path());
            assert!(!store.uncommitted());
            store
                .register_client(cx(CONN), &ALICE, "alice", None)
                .unwrap();
            assert!(store.uncommitted());
            commit(&mut store);
            assert!(!store.uncommitted());
            store.register_client(cx(CONN), &BOB, "bob", None).unwrap();
            // Dropped without a commit: nothing acknowledged, nothing kept.
        }
        let mut store = open(tmp.path());
        assert!(store.client_by_name("alice").unwrap().is_some());
        assert!(store.client_by_name("bob").unwrap().is_none());
    }

    #[test]
    fn last_seen_is_the_wall_time_paired_with_the_loops_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = DiskStore::open(tmp.path(), StoreConfig::default()).unwrap();
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        store.housekeeping(t0, wall);
        let later = Ctx {
            conn: CONN,
            now: t0 + Duration::from_secs(61),
        };
        store.register_client(later, &ALICE, "alice", None).unwrap();
        commit(&mut store);
        let seen = store.db().unwrap().last_seen(&ALICE).unwrap().unwrap();
        assert_eq!(seen, "2023-11-14T22:14:21Z");
    }

    #[test]
    fn register_with_replace_releases_the_unkeyed_name() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        store
            .register_client(cx(CONN), &ALICE, "shared", None)
            .unwrap();
        store
            .register_client(cx(CONN), &BOB, "shared", Some(&ALICE))
            .unwrap();
        commit(&mut store);
        assert!(store.client_by_id(&ALICE).unwrap().is_none());
        assert_eq!(store.client_by_name("shared").unwrap().unwrap().id, BOB);
        assert_eq!(store.client_count().unwrap(), 1);
    }

    #[test]
    fn keys_and_touch_update_the_client_row() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        store
            .set_last_key(cx(CONN), &ALICE, &AesKey::from_bytes([3; 16]))
            .unwrap();
        commit(&mut store);
        let rec = store.client_by_id(&ALICE).unwrap().unwrap();
        assert_eq!(rec.last_key, Some(AesKey::from_bytes([3; 16])));
        store
            .db()
            .unwrap()
            .connection()
            .execute("UPDATE clients SET LastSeen = 'long ago'", [])
            .unwrap();
        store.touch(cx(CONN), &ALICE).unwrap();
        commit(&mut store);
        let seen = store.db().unwrap().last_seen(&ALICE).unwrap().unwrap();
        assert!(seen.ends_with('Z'), "{seen}");
    }

    #[test]
    fn accept_moves_bytes_to_final_path_and_sets_verified_at_the_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let uid = upload(&mut store, &ALICE, "big.bin", &data);
        let outcome = store
            .apply_verdict(cx(CONN), &ALICE, "big.bin", Verdict::Accept)
            .unwrap();
        assert_eq!(outcome, VerdictOutcome::Applied);
        let path = files::final_path(tmp.path(), &ALICE, "big.bin");
        assert!(store.uncommitted());
        assert!(!path.exists(), "nothing placed before the commit");
        commit(&mut store);
        assert_eq!(fs::read(&path).unwrap(), data);
        let row = row(&store, &ALICE, "big.bin").unwrap();
        assert!(row.verified);
        assert_eq!(row.path_name, path.to_str().unwrap());
        assert_eq!(listing(&store, &ALICE), ["big.bin"]);
        assert!(!store.is_pending(uid));
        assert_eq!(
            accept(&mut store, &ALICE, "big.bin"),
            VerdictOutcome::NothingPending
        );
    }

    #[test]
    fn unconfirmed_upload_never_appears_at_final_path() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let mut up = store.begin_upload(cx(CONN), &ALICE, "f.txt", 16).unwrap();
        let path = files::final_path(tmp.path(), &ALICE, "f.txt");
        store.write_upload(&mut up, b"half").unwrap();
        assert!(!path.exists());
        store
            .finish_upload(cx(CONN), up, &summary(b"half"))
            .unwrap();
        commit(&mut store);
        let uid = store.pending_ids()[0];
        assert!(!path.exists());
        assert_eq!(temp_files(&store, &ALICE), 1);
        // The first upload of a name gets a Verified = 0 row.
        assert!(!row(&store, &ALICE, "f.txt").unwrap().verified);
        // 1030 / 1031: gone, and still nothing at the final path.
        let outcome = verdict(&mut store, CONN, "f.txt", Verdict::Discard);
        assert_eq!(outcome, VerdictOutcome::Applied);
        assert!(!store.is_pending(uid));
        assert!(!path.exists());
        assert!(listing(&store, &ALICE).is_empty());
        assert!(!row(&store, &ALICE, "f.txt").unwrap().verified);
    }

    #[test]
    fn discard_leaves_earlier_verified_file_byte_identical() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "doc", b"version one");
        accept(&mut store, &ALICE, "doc");
        let uid = upload(&mut store, &ALICE, "doc", b"version two, corrupted");
        let path = files::final_path(tmp.path(), &ALICE, "doc");
        assert_eq!(fs::read(&path).unwrap(), b"version one");
        assert!(
            row(&store, &ALICE, "doc").unwrap().verified,
            "stays verified"
        );
        verdict(&mut store, CONN, "doc", Verdict::Discard);
        assert!(!store.is_pending(uid));
        assert_eq!(fs::read(&path).unwrap(), b"version one");
        assert!(row(&store, &ALICE, "doc").unwrap().verified);
        assert_eq!(listing(&store, &ALICE), ["doc"]);
    }

    #[test]
    fn new_upload_replaces_stored_file_once_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "doc", b"version one");
        assert_eq!(accept(&mut store, &ALICE, "doc"), VerdictOutcome::Applied);
        upload(&mut store, &ALICE, "doc", b"version two");
        // The log says it replaced a file.
        assert_eq!(accept(&mut store, &ALICE, "doc"), VerdictOutcome::Replaced);
        let path = files::final_path(tmp.path(), &ALICE, "doc");
        assert_eq!(fs::read(path).unwrap(), b"version two");
        assert_eq!(store.files().unwrap().len(), 1);
        assert_eq!(listing(&store, &ALICE), ["doc"]);
    }

    #[test]
    fn verdict_takes_its_connections_upload_first() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let first = upload_on(&mut store, 1, &ALICE, "f", b"first");
        let second = upload_on(&mut store, 2, &ALICE, "f", b"second");
        verdict(&mut store, 1, "f", Verdict::Accept);
        let path = files::final_path(tmp.path(), &ALICE, "f");
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert!(!store.is_pending(first));
        assert!(store.is_pending(second));
    }

    #[test]
    fn verdict_takes_newest_upload_of_any_connection_without_one_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        keyed(&mut store, &BOB, "bob");
        let first = upload_on(&mut store, 1, &ALICE, "f", b"first");
        let second = upload_on(&mut store, 2, &ALICE, "f", b"second");
        let other_name = upload_on(&mut store, 3, &ALICE, "g", b"other name");
        let other_client = upload_on(&mut store, 3, &BOB, "f", b"other client");
        // Connection 3 holds nothing of alice's "f": the newest goes.
        for _ in 0..3 {
            let uid = upload_on(&mut store, 4, &ALICE, "f", b"newest");
            verdict(&mut store, 3, "f", Verdict::Discard);
            assert!(!store.is_pending(uid));
        }
        verdict(&mut store, 3, "f", Verdict::Accept);
        let path = files::final_path(tmp.path(), &ALICE, "f");
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert!(!store.is_pending(second));
        assert!(store.is_pending(first));
        assert!(store.is_pending(other_name) && store.is_pending(other_client));
    }

    #[test]
    fn verdict_without_pending_upload_finds_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        keyed(&mut store, &BOB, "bob");
        upload(&mut store, &BOB, "f", b"bob's");
        for v in [Verdict::Accept, Verdict::Discard] {
            assert_eq!(
                verdict(&mut store, CONN, "f", v),
                VerdictOutcome::NothingPending
            );
        }
        assert_eq!(store.pending_count(), 1);
    }

    #[test]
    fn leftovers_are_cleaned_at_open_but_stored_files_kept() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut store = open(tmp.path());
            keyed(&mut store, &ALICE, "alice");
            // A stored file whose name looks like a temporary one.
            upload(&mut store, &ALICE, ".part-0123456789abcdef", b"real file");
            accept(&mut store, &ALICE, ".part-0123456789abcdef");
            upload(&mut store, &ALICE, "kept", b"kept");
            accept(&mut store, &ALICE, "kept");
        }
        let folder = files::client_dir(tmp.path(), &ALICE);
        fs::write(folder.join(".part-00000000deadbeef"), b"crash").unwrap();
        let other = files::client_dir(tmp.path(), &BOB);
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join(".part-feedfacefeedface"), b"crash").unwrap();
        let store = open(tmp.path());
        assert_eq!(listing(&store, &ALICE), [".part-0123456789abcdef", "kept"]);
        assert!(listing(&store, &BOB).is_empty());
    }

    #[test]
    fn orphaned_upload_expires_after_ttl_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let orphan = upload_on(&mut store, 1, &ALICE, "o", b"orphan");
        let live = upload_on(&mut store, 2, &ALICE, "l", b"live");
        assert_eq!(store.next_orphan_deadline(), None);
        assert!(store.has_pending(1));
        let closed_at = Instant::now();
        store.connection_closed(Ctx {
            conn: 1,
            now: closed_at,
        });
        assert!(!store.has_pending(1) && store.has_pending(2));
        let deadline = store.next_orphan_deadline().unwrap();
        assert_eq!(deadline, closed_at + DEFAULT_ORPHAN_TTL);
        store.housekeeping(closed_at, SystemTime::now());
        assert!(store.is_pending(orphan));
        // A verdict may still come on a new connection before expiry.
        store.housekeeping(deadline - Duration::from_millis(1), SystemTime::now());
        assert!(store.is_pending(orphan));
        store.housekeeping(deadline + Duration::from_secs(3600), SystemTime::now());
        assert!(!store.is_pending(orphan));
        assert!(
            store.is_pending(live),
            "a live connection's upload never expires"
        );
        assert_eq!(temp_files(&store, &ALICE), 1);
        assert_eq!(store.next_orphan_deadline(), None);
    }

    #[test]
    fn orphaned_upload_can_still_be_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload_on(&mut store, 1, &ALICE, "f", b"from the old connection");
        store.connection_closed(cx(1));
        assert_eq!(
            verdict(&mut store, 2, "f", Verdict::Accept),
            VerdictOutcome::Applied
        );
        let path = files::final_path(tmp.path(), &ALICE, "f");
        assert_eq!(fs::read(path).unwrap(), b"from the old connection");
    }

    #[test]
    fn max_pending_discards_the_oldest() {
        let tmp = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            max_pending: 3,
            ..StoreConfig::default()
        };
        let mut store = open_with(tmp.path(), config);
        keyed(&mut store, &ALICE, "alice");
        let ids: Vec<UploadId> = (0..5)
            .map(|i| upload(&mut store, &ALICE, &format!("f{i}"), b"x"))
            .collect();
        assert_eq!(store.pending_count(), 3);
        assert!(!store.is_pending(ids[0]) && !store.is_pending(ids[1]));
        assert!(ids[2..].iter().all(|&id| store.is_pending(id)));
        assert_eq!(temp_files(&store, &ALICE), 3);
    }

    #[test]
    fn a_connection_over_its_cap_loses_its_oldest_and_only_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            max_pending_per_conn: 2,
            ..StoreConfig::default()
        };
        let mut store = open_with(tmp.path(), config);
        keyed(&mut store, &ALICE, "alice");
        let other = upload_on(&mut store, 2, &ALICE, "x", b"x");
        let ids: Vec<UploadId> = (0..3)
            .map(|i| upload_on(&mut store, 1, &ALICE, &format!("f{i}"), b"x"))
            .collect();
        assert!(!store.is_pending(ids[0]));
        assert!(store.is_pending(ids[1]) && store.is_pending(ids[2]));
        assert!(store.is_pending(other));
        assert_eq!(temp_files(&store, &ALICE), 3);
    }

    #[test]
    fn second_store_on_the_same_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = open(tmp.path());
        let err = DiskStore::open(tmp.path(), StoreConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("in use by another sealdrop-server"),
            "{err}"
        );
        drop(first);
        open(tmp.path());
    }

    /// A store for keyed alice and bob with a server-wide cap of two
    /// pending uploads.
    fn alice_and_bob_with_two_pending(dir: &Path) -> DiskStore {
        let config = StoreConfig {
            max_pending: 2,
            ..StoreConfig::default()
        };
        let mut store = open_with(dir, config);
        keyed(&mut store, &ALICE, "alice");
        keyed(&mut store, &BOB, "bob");
        store
    }

    #[test]
    fn pending_cap_never_evicts_another_clients_live_upload() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = alice_and_bob_with_two_pending(tmp.path());
        let victim = upload_on(&mut store, 1, &ALICE, "report", b"alice's");
        let flood: Vec<UploadId> = (0..5)
            .map(|i| upload_on(&mut store, 2, &BOB, &format!("f{i}"), b"x"))
            .collect();
        assert!(
            store.is_pending(victim),
            "bob's flood evicted alice's upload"
        );
        assert!(store.is_pending(flood[4]) && !store.is_pending(flood[3]));
        // Full of live uploads of others and her own: her own oldest goes.
        let second = upload_on(&mut store, 1, &ALICE, "second", b"z");
        assert!(store.is_pending(second), "own oldest goes first");
        assert!(!store.is_pending(victim));
        // Bob's connection closes: an orphan can go.
        store.connection_closed(cx(2));
        let mut up = store.begin_upload(cx(3), &BOB, "h", 16).unwrap();
        store.write_upload(&mut up, b"z").unwrap();
        assert!(store.finish_upload(cx(3), up, &summary(b"z")).is_ok());
        assert!(!store.is_pending(flood[4]));
    }

    #[test]
    fn pending_cap_refuses_when_only_other_clients_live_uploads_remain() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = alice_and_bob_with_two_pending(tmp.path());
        upload_on(&mut store, 2, &BOB, "a", b"x");
        upload_on(&mut store, 2, &BOB, "b", b"x");
        let mut up = store.begin_upload(cx(1), &ALICE, "report", 16).unwrap();
        store.write_upload(&mut up, b"z").unwrap();
        let err = store.finish_upload(cx(1), up, &summary(b"z")).unwrap_err();
        assert_eq!(err, StoreError::PendingFull { cap: 2 });
        assert!(err.to_string().contains("server-wide limit"), "{err}");
        assert_eq!(store.pending_count(), 2);
        assert_eq!(temp_files(&store, &ALICE), 0);
    }

    #[test]
    fn aborted_upload_leaves_no_file_and_no_row() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let mut up = store.begin_upload(cx(CONN), &ALICE, "cut", 32).unwrap();
        store.write_upload(&mut up, b"partial").unwrap();
        let temp = up.temp_path().to_path_buf();
        assert!(temp.exists());
        store.abort_upload(up);
        assert!(!temp.exists());
        assert!(row(&store, &ALICE, "cut").is_none());
        assert!(listing(&store, &ALICE).is_empty());
    }

    #[test]
    fn dropped_upload_deletes_its_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let mut up = store.begin_upload(cx(CONN), &ALICE, "cut", 32).unwrap();
        store.write_upload(&mut up, b"partial").unwrap();
        let temp = up.temp_path().to_path_buf();
        drop(up);
        assert!(!temp.exists());
    }

    #[test]
    fn write_error_returns_store_error_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "doc", b"verified");
        accept(&mut store, &ALICE, "doc");
        // Swap the temporary file's handle for /dev/full: ENOSPC on write.
        let mut up = store.begin_upload(cx(CONN), &ALICE, "doc", 16).unwrap();
        let temp = up.temp_path().to_path_buf();
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        up.part = PartFile::from_parts(temp.clone(), full);
        let err = store.write_upload(&mut up, &[0; 8192]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Files { op, .. } if op == "write upload"),
            "{err}"
        );
        assert!(store.write_upload(&mut up, b"more").is_err());
        store.abort_upload(up);
        assert!(!temp.exists());
        let path = files::final_path(tmp.path(), &ALICE, "doc");
        assert_eq!(fs::read(path).unwrap(), b"verified");
        assert_eq!(listing(&store, &ALICE), ["doc"]);
    }

    #[test]
    fn failed_finish_deletes_the_upload() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let mut up = store.begin_upload(cx(CONN), &ALICE, "f", 16).unwrap();
        store.write_upload(&mut up, b"abc").unwrap();
        let wrong = UploadSummary {
            plain_len: 4,
            cksum: 0,
        };
        assert!(store.finish_upload(cx(CONN), up, &wrong).is_err());
        assert_eq!(store.pending_count(), 0);
        assert!(listing(&store, &ALICE).is_empty());
        assert!(row(&store, &ALICE, "f").is_none());
    }

    #[test]
    fn failed_accept_fails_only_its_connection_and_a_retried_1029_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "doc", b"old");
        accept(&mut store, &ALICE, "doc");
        let uid = upload(&mut store, &ALICE, "doc", b"new");
        // Make the sync/rename fail: the temporary file vanished.
        let temp = store
            .pending
            .get(uid)
            .unwrap()
            .data
            .part
            .path()
            .to_path_buf();
        fs::rename(&temp, tmp.path().join("aside")).unwrap();
        store
            .apply_verdict(cx(7), &ALICE, "doc", Verdict::Accept)
            .unwrap();
        store.touch(cx(8), &ALICE).unwrap();
        let c = store.commit(Instant::now());
        assert!(c.error.is_none());
        assert_eq!(c.failed, [7]);
        assert_eq!(c.outcome(8), sealdrop_protocol::store::Durability::Durable);
        assert!(store.is_pending(uid));
        let path = files::final_path(tmp.path(), &ALICE, "doc");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(row(&store, &ALICE, "doc").unwrap().verified);
        // Once the file is back, a retried 1029 succeeds (replacing "old").
        fs::rename(tmp.path().join("aside"), &temp).unwrap();
        assert_eq!(accept(&mut store, &ALICE, "doc"), VerdictOutcome::Replaced);
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn dropping_the_store_deletes_pending_uploads() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "f", b"never confirmed");
        let folder = client_folder(&store, &ALICE);
        drop(store);
        assert_eq!(fs::read_dir(folder).unwrap().count(), 0);
    }

    #[test]
    fn begin_upload_refuses_names_that_leave_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        for name in ["", ".", "..", "../x", "a/b", "a\\b", "a\nb"] {
            assert!(
                store.begin_upload(cx(CONN), &ALICE, name, 16).is_err(),
                "{name:?}"
            );
        }
        assert!(!client_folder(&store, &ALICE).exists());
    }

    #[test]
    fn client_folder_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "f", b"x");
        let mode = fs::metadata(client_folder(&store, &ALICE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    fn counters_in_db(store: &DiskStore) -> Outcomes {
        let rows = store.db().unwrap().counters().unwrap();
        Outcomes::from_entries(rows.iter().map(|(k, n)| (k.as_str(), *n)))
    }

    #[test]
    fn forgetting_with_files_removes_records_and_files_at_the_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        keyed(&mut store, &BOB, "bob");
        upload(&mut store, &ALICE, "a", b"aaa");
        accept(&mut store, &ALICE, "a");
        upload(&mut store, &ALICE, "pending", b"p");
        let path = files::final_path(tmp.path(), &ALICE, "a");
        let done = store.forget_client(cx(0), &ALICE, true).unwrap();
        assert_eq!(done.name.as_deref(), Some("alice"));
        assert_eq!(done.files_deleted, ["a"]);
        assert_eq!(done.uploads_withdrawn, 1);
        // Nothing is deleted before the commit.
        assert!(path.exists());
        assert!(store.uncommitted());
        commit(&mut store);
        assert!(!path.exists());
        assert!(!client_folder(&store, &ALICE).exists());
        assert!(store.db().unwrap().client_by_id(&ALICE).unwrap().is_none());
        assert!(store.db().unwrap().files_of(&ALICE).unwrap().is_empty());
        assert!(store.db().unwrap().client_by_id(&BOB).unwrap().is_some());
        assert_eq!(store.outcomes_since_start().get(Outcome::Withdrawn), 1);
        assert_eq!(counters_in_db(&store).get(Outcome::Withdrawn), 1);
    }

    #[test]
    fn an_accept_withdrawn_before_its_commit_is_refused_as_withdrawn_not_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload_on(&mut store, 5, &ALICE, "f", b"data");
        store
            .apply_verdict(cx(5), &ALICE, "f", Verdict::Accept)
            .unwrap();
        // forget in the same pass, before the commit that would place it.
        let done = store.forget_client(cx(0), &ALICE, false).unwrap();
        assert_eq!(done.uploads_withdrawn, 1);
        let c = store.commit(Instant::now());
        assert!(c.error.is_none() && c.failed.is_empty(), "{c:?}");
        let refusal = c.refusal(5).expect("refused at the commit");
        assert!(
            matches!(refusal.error, StoreError::Withdrawn { .. }),
            "{refusal:?}"
        );
        assert_eq!(c.outcome(5), sealdrop_protocol::store::Durability::Failed);
        assert!(!files::final_path(tmp.path(), &ALICE, "f").exists());
    }

    #[test]
    fn forgetting_without_files_frees_the_name_and_keeps_the_files_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "a", b"aaa");
        accept(&mut store, &ALICE, "a");
        let done = store.forget_client(cx(0), &ALICE, false).unwrap();
        assert_eq!(done.files_kept, ["a"]);
        commit(&mut store);
        assert!(store
            .db()
            .unwrap()
            .client_by_name("alice")
            .unwrap()
            .is_none());
        assert_eq!(store.db().unwrap().files_of(&ALICE).unwrap().len(), 1);
        assert!(files::final_path(tmp.path(), &ALICE, "a").exists());
        // The same name registers again under a new id.
        keyed(&mut store, &BOB, "alice");
        // The files left under the old id can still be deleted.
        store.delete_file(cx(0), &ALICE, "a").unwrap();
        commit(&mut store);
        assert!(!files::final_path(tmp.path(), &ALICE, "a").exists());
        assert!(matches!(
            store.forget_client(cx(0), &ALICE, true),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn deleting_a_file_whose_replacement_awaits_its_verdict_removes_both() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "doc", b"one");
        accept(&mut store, &ALICE, "doc");
        upload(&mut store, &ALICE, "doc", b"two");
        assert_eq!(temp_files(&store, &ALICE), 1);
        let done = store.delete_file(cx(0), &ALICE, "doc").unwrap();
        assert!(done.had_record);
        assert_eq!(done.uploads_withdrawn, 1);
        commit(&mut store);
        assert_eq!(listing(&store, &ALICE), Vec::<String>::new());
        assert!(row(&store, &ALICE, "doc").is_none());
        assert_eq!(
            accept(&mut store, &ALICE, "doc"),
            VerdictOutcome::NothingPending
        );
    }

    #[test]
    fn an_upload_arriving_when_its_client_is_forgotten_is_refused_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let mut up = store.begin_upload(cx(CONN), &ALICE, "f", 32).unwrap();
        store.write_upload(&mut up, b"first half").unwrap();
        store.forget_client(cx(0), &ALICE, true).unwrap();
        commit(&mut store);
        let err = store.write_upload(&mut up, b"second half").unwrap_err();
        assert!(matches!(err, StoreError::Withdrawn { .. }), "{err:?}");
        store.abort_upload(up);
        assert!(!client_folder(&store, &ALICE).exists());
        assert_eq!(store.pending_count(), 0);
        assert_eq!(store.outcomes_since_start().get(Outcome::Aborted), 0);
        assert_eq!(store.outcomes_since_start().get(Outcome::Withdrawn), 1);
    }

    #[test]
    fn quotas_count_recorded_sizes_and_a_clients_own_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            quota: Quota {
                max_bytes: Some(10),
                max_files: None,
            },
            ..StoreConfig::default()
        };
        let mut store = open_with(tmp.path(), config);
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "a", b"123456");
        accept(&mut store, &ALICE, "a");
        assert_eq!(
            store.db().unwrap().file_meta(&ALICE, "a").unwrap().size,
            Some(6)
        );
        store.check_quota(&ALICE, "b", 4).unwrap();
        let err = store.check_quota(&ALICE, "b", 5).unwrap_err();
        assert!(matches!(err, StoreError::OverQuota(_)), "{err:?}");
        // A replacement of a: its 6 bytes do not count.
        store.check_quota(&ALICE, "a", 10).unwrap();
        // An upload that fitted when it arrived but not at its end.
        let mut up = store.begin_upload(cx(CONN), &ALICE, "c", 16).unwrap();
        store.write_upload(&mut up, b"12345").unwrap();
        let err = store
            .finish_upload(cx(CONN), up, &summary(b"12345"))
            .unwrap_err();
        assert!(matches!(err, StoreError::OverQuota(_)), "{err:?}");
        assert_eq!(temp_files(&store, &ALICE), 0);
        let own = QuotaOverride {
            bytes: sealdrop_protocol::store::QuotaSetting::Max(11),
            ..QuotaOverride::default()
        };
        store.set_quota(cx(0), &ALICE, own).unwrap();
        commit(&mut store);
        store.check_quota(&ALICE, "b", 5).unwrap();
        assert_eq!(store.outcomes_since_start().get(Outcome::OverQuota), 2);
        assert_eq!(counters_in_db(&store).get(Outcome::OverQuota), 2);
        assert_eq!(counters_in_db(&store).get(Outcome::Verified), 1);
        assert!(matches!(
            store.set_quota(cx(0), &BOB, own),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn files_stored_before_sizes_were_kept_get_theirs_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut store = open(tmp.path());
            keyed(&mut store, &ALICE, "alice");
            upload(&mut store, &ALICE, "old", b"1234");
            accept(&mut store, &ALICE, "old");
            store.db().unwrap().delete_file_row(&ALICE, "old").unwrap();
            store
                .db()
                .unwrap()
                .mark_verified(&ALICE, "old", "somewhere")
                .unwrap();
            commit(&mut store);
            assert_eq!(
                store.db().unwrap().file_meta(&ALICE, "old").unwrap().size,
                None
            );
        }
        let store = open(tmp.path());
        let meta = store.db().unwrap().file_meta(&ALICE, "old").unwrap();
        assert_eq!((meta.size, meta.cksum), (Some(4), None));
    }

    #[test]
    fn an_administrators_store_changes_nothing_at_open_and_excludes_a_server() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut store = open(tmp.path());
            keyed(&mut store, &ALICE, "alice");
        }
        let leftover = client_folder_path(tmp.path()).join(".part-0123456789abcdef");
        fs::write(&leftover, b"x").unwrap();
        let admin = DiskStore::open_for_admin(tmp.path(), StoreConfig::default()).unwrap();
        assert!(leftover.exists(), "no clean-up at an administrator's open");
        assert!(DiskStore::open(tmp.path(), StoreConfig::default()).is_err());
        drop(admin);
        assert!(
            DiskStore::open_for_admin(&tmp.path().join("none"), StoreConfig::default()).is_err()
        );
    }

    fn client_folder_path(data: &Path) -> PathBuf {
        let dir = files::client_dir(data, &ALICE);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
