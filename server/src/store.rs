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
//! * Accepting fsyncs the temporary file, renames it over the final path,
//!   fsyncs the folder, then sets `Verified = 1`. Until the rename nothing
//!   earlier changes; if a later step fails the upload stays pending and a
//!   retried 1029 finishes the remaining steps.
//! * A pending upload outlives its connection (a verdict may come on a new
//!   one, §1): [`Store::orphan_uploads`] marks it, and
//!   [`DiskStore::expire_orphans`] deletes it after
//!   [`StoreConfig::orphan_ttl`]. At most [`StoreConfig::max_pending`]
//!   uploads are pending server-wide.
//! * At start-up, temporary files a crash left behind are deleted.
//!
//! Group commit ([`DiskStore::set_group_commit`], what the server runs):
//! database writes wait in one open transaction and accepted uploads wait
//! in a list until [`DiskStore::sync`], which the event loop calls once per
//! pass before it sends that pass's answers. One sync then serves every
//! connection of the pass. In [`SyncMode::Syncfs`]: a filesystem sync for
//! the accepted files' contents (skipped when an earlier one covered
//! them), the renames, the database commit (one WAL fsync), and one
//! filesystem sync for all renames and folders. In [`SyncMode::Fsync`]: each file fsynced (writeback
//! started for all first), renamed, each folder fsynced once, one WAL
//! fsync. Without group commit every call is durable before it returns
//! (tests, tools).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::AesKey;
use sealdrop_protocol::store::{
    ClientRecord, Store, StoreError, UploadId, UploadSummary, Verdict, VerdictOutcome,
};
use sealdrop_protocol::ClientId;

use crate::db::{Db, FileRow};
use crate::files::{self, PartFile};

/// Default [`StoreConfig::orphan_ttl`]: 120 s, the server's idle timeout
/// (as in the reference peer), so a client that reconnects for its verdict
/// within the time a connection may sit idle still finds its upload.
pub const DEFAULT_ORPHAN_TTL: Duration = Duration::from_secs(120);

/// Default [`StoreConfig::max_pending`]: 1024 uploads. A client has one or
/// two pending at a time; the cap bounds the disk space and memory that
/// clients which never send a verdict can tie up.
pub const DEFAULT_MAX_PENDING: usize = 1024;

/// How a group commit ([`DiskStore::sync`]) makes accepted files durable.
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
    /// How group commit syncs files. Default [`DEFAULT_SYNC_MODE`].
    pub sync_mode: SyncMode,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            orphan_ttl: DEFAULT_ORPHAN_TTL,
            max_pending: DEFAULT_MAX_PENDING,
            sync_mode: DEFAULT_SYNC_MODE,
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

/// A complete upload awaiting its verdict.
#[derive(Debug)]
struct Pending {
    client: ClientId,
    file_name: String,
    final_path: PathBuf,
    part: PartFile,
    summary: UploadSummary,
    /// When its connection closed (None while the connection lives).
    orphaned_at: Option<Instant>,
    /// Its content is durable once [`DiskStore::fs_syncs`] reaches this:
    /// the first filesystem sync begun after it was complete covers it.
    durable_at_sync: u64,
}

/// The server's storage: `<data dir>/defensive.db` and
/// `<data dir>/files/<client id hex>/<base name>` (§8).
#[derive(Debug)]
pub struct DiskStore {
    /// Held for the store's lifetime: one server per data directory.
    _lock: std::fs::File,
    data_dir: PathBuf,
    config: StoreConfig,
    db: Db,
    /// Pending uploads by id; ids only grow, so the first is the oldest.
    pending: BTreeMap<UploadId, Pending>,
    next_id: UploadId,
    /// Group commit on (see the module docs).
    group_commit: bool,
    /// Who the calls come from now ([`DiskStore::set_actor`]).
    actor: Actor,
    /// Accepted uploads waiting for [`DiskStore::sync`], with their actor.
    placing: Vec<(Actor, UploadId, Pending)>,
    /// The `files` folder, open for syncfs(2) (in [`SyncMode::Syncfs`]).
    /// Held for the store's lifetime, so the kernel reports every write
    /// error on the filesystem since the last sync through it.
    fs_handle: Option<std::fs::File>,
    /// Successful filesystem syncs so far.
    fs_syncs: u64,
}

/// Whom a change made under group commit belongs to: the event loop tags
/// its calls with a connection's serial number, so a sync that fails for
/// one file can say whose answer must not be sent.
pub type Actor = u64;

/// Accepted files synced together per step of [`DiskStore::sync`]: bounds
/// the file descriptors it holds open at once.
pub const SYNC_FILES_PER_STEP: usize = 64;

/// What a [`DiskStore::sync`] left undone for some actors while the rest
/// of the batch became durable.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Actors whose accepted upload could not be made durable (the upload
    /// is pending again, orphaned, so a retried 1029 can finish it).
    pub failed: Vec<Actor>,
}

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

fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join(LOCK_FILE_NAME);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err("open the lock file", e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::new(format!(
            "{} is in use by another sealdrop-server (it holds {})",
            data_dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock the data directory", e)),
    }
}

/// Maps a filesystem error to a [`StoreError`] naming the operation.
fn io_err(op: &str, e: std::io::Error) -> StoreError {
    StoreError::new(format!("files: {op}: {e}"))
}

/// `path` as text for the `PathName` column (the data directory is checked
/// to be UTF-8 at open, client folders and base names are ASCII).
fn path_text(path: &Path) -> Result<&str, StoreError> {
    path.to_str()
        .ok_or_else(|| StoreError::new(format!("path {} is not UTF-8", path.display())))
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
        return Err(StoreError::new(format!(
            "begin upload: unusable file name {name:?}"
        )));
    }
    Ok(())
}

impl DiskStore {
    /// Opens the storage in `data_dir`, creating the folder, `files/` and
    /// `defensive.db` as needed, and deletes the temporary files of uploads
    /// a crash cut off (§6).
    pub fn open(data_dir: &Path, config: StoreConfig) -> Result<DiskStore, StoreError> {
        path_text(data_dir)?;
        files::ensure_dir(data_dir).map_err(|e| io_err("create data directory", e))?;
        let lock = lock_data_dir(data_dir)?;
        files::ensure_dir(&files::files_root(data_dir))
            .map_err(|e| io_err("create files directory", e))?;
        let db = Db::open(data_dir)?;
        let stored: std::collections::HashSet<(String, String)> = db
            .files()?
            .into_iter()
            .map(|f| (f.client.to_hex(), f.file_name))
            .collect();
        repair_records(&db, data_dir)?;
        files::cleanup_leftovers(data_dir, |client, name| {
            stored.contains(&(client.to_owned(), name.to_owned()))
        })
        .map_err(|e| io_err("clean up leftover uploads", e))?;

        let fs_handle = match config.sync_mode {
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
        };
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
        Ok(DiskStore {
            _lock: lock,
            data_dir: data_dir.to_path_buf(),
            config,
            db,
            pending: BTreeMap::new(),
            next_id: 1,
            group_commit: false,
            actor: 0,
            placing: Vec::new(),
            fs_handle,
            fs_syncs: 0,
        })
    }

    /// Turns group commit on or off (see the module docs). Turning it off
    /// syncs what waits first.
    ///
    /// In [`SyncMode::Syncfs`] a [`DiskStore::sync`] commits (one WAL
    /// fsync) and, only if it placed files, then syncs the filesystem once
    /// for the renames and folders. The Verified = 1 of a file may so be
    /// durable a moment before its rename; a crash in between leaves a
    /// Verified = 1 row without its file, which [`DiskStore::open`] sets
    /// back to 0 (see `repair_records`). Passes that only change the
    /// database never sync the filesystem, so other uploads' dirty pages
    /// (and other writers on the same filesystem) do not slow them.
    /// (Measured: with every pass ending in one filesystem sync instead,
    /// and the WAL not fsynced, 32 clients made 1154 and 1087 sessions/s
    /// against 1147 and 862 this way, but 1000 clients uploading 1 MiB each
    /// took 12.9 s instead of 3.6 s, the syncs writing out every upload
    /// still arriving.)
    pub fn set_group_commit(&mut self, on: bool) -> Result<SyncReport, StoreError> {
        let report = if on {
            SyncReport::default()
        } else {
            self.sync()?
        };
        self.db.set_batching(on)?;
        self.group_commit = on;
        Ok(report)
    }

    /// Tags the calls that follow with `actor` (group commit).
    pub fn set_actor(&mut self, actor: Actor) {
        self.actor = actor;
    }

    /// Whether changes wait for [`DiskStore::sync`].
    pub fn has_unsynced(&self) -> bool {
        self.db.has_batch() || !self.placing.is_empty()
    }

    /// Makes every change since the last sync durable (group commit):
    /// accepted files are fsynced, renamed to their final paths and their
    /// folders fsynced, then the database commits once, marking them
    /// Verified. `Err`: the database commit failed, so none of the
    /// batch's database changes happened and no answer of the batch may
    /// be sent; the accepted uploads are pending again (orphaned; those
    /// already renamed are marked Verified when a retried 1029 or their
    /// expiry comes, or at the next start). `Ok` with failed actors: those
    /// actors' accepted uploads (and only they) are not stored;
    /// everything else is durable.
    pub fn sync(&mut self) -> Result<SyncReport, StoreError> {
        let mut report = SyncReport::default();
        if !self.has_unsynced() {
            return Ok(report);
        }
        let mut placing = std::mem::take(&mut self.placing);
        let mut placed = Vec::new();
        if self.fs_handle.is_some() {
            placed = self.place_all_syncfs(std::mem::take(&mut placing), &mut report);
        }
        while !placing.is_empty() {
            let rest = placing.split_off(placing.len().min(SYNC_FILES_PER_STEP));
            let step = std::mem::replace(&mut placing, rest);
            placed.extend(self.place_step(step, &mut report));
        }
        let mut marking = Ok(());
        for (_, p) in &placed {
            marking = path_text(&p.final_path)
                .and_then(|t| self.db.mark_verified(&p.client, &p.file_name, t));
            if marking.is_err() {
                break;
            }
        }
        let mut committed = marking.and_then(|()| self.db.commit_batch());
        if committed.is_ok() && self.fs_handle.is_some() && !placed.is_empty() {
            // One flush for every rename and folder of the pass.
            committed = self
                .sync_filesystem()
                .map_err(|e| io_err("filesystem sync", e));
        }
        if let Err(e) = committed {
            // Also rolls back whatever the failed mark left open.
            let _ = self.db.commit_batch();
            log::warn!(
                "group commit failed: {e}; {} accepted upload(s) pending again",
                placed.len()
            );
            let now = Instant::now();
            for (uid, mut p) in placed {
                p.orphaned_at = Some(now);
                self.pending.insert(uid, p);
            }
            return Err(e);
        }
        for (_, p) in &placed {
            log::debug!(
                "stored {} {:?}: {} bytes, cksum {}, verified",
                p.client.to_hex(),
                p.file_name,
                p.summary.plain_len,
                p.summary.cksum
            );
        }
        Ok(report)
    }

    /// [`DiskStore::sync`] in [`SyncMode::Syncfs`], first half: a
    /// filesystem sync for the contents unless an earlier one covered them
    /// all, then the renames (made durable by the sync that ends
    /// [`DiskStore::sync`]). Returns the uploads now at their final paths.
    fn place_all_syncfs(
        &mut self,
        batch: Vec<(Actor, UploadId, Pending)>,
        report: &mut SyncReport,
    ) -> Vec<(UploadId, Pending)> {
        if batch.is_empty() {
            return Vec::new();
        }
        if batch
            .iter()
            .any(|(_, _, p)| p.durable_at_sync > self.fs_syncs)
        {
            if let Err(e) = self.sync_filesystem() {
                // Pages whose writeback failed may be lost and are not
                // reported twice: no complete upload can be trusted.
                log::error!(
                    "filesystem sync: {e}; discarding {} accepted and {} pending upload(s)",
                    batch.len(),
                    self.pending.len()
                );
                report
                    .failed
                    .extend(batch.iter().map(|(actor, _, _)| *actor));
                let all: Vec<UploadId> = self.pending.keys().copied().collect();
                for uid in all {
                    self.drop_pending(uid, "a filesystem sync failed");
                }
                return Vec::new();
            }
        }
        let now = Instant::now();
        let mut renamed = Vec::with_capacity(batch.len());
        for (actor, uid, mut p) in batch {
            p.part.mark_synced();
            match p.part.rename_to(&p.final_path) {
                Ok(()) => renamed.push((actor, uid, p)),
                Err(e) => self.unplaced(actor, uid, p, &e, now, report),
            }
        }
        renamed.into_iter().map(|(_, uid, p)| (uid, p)).collect()
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

    /// One step of [`DiskStore::sync`]: starts writeback of every file,
    /// fsyncs each, renames each, fsyncs each folder once. Returns the
    /// uploads now at their final paths; the others are pending again
    /// (orphaned) and their actors are reported failed.
    fn place_step(
        &mut self,
        mut step: Vec<(Actor, UploadId, Pending)>,
        report: &mut SyncReport,
    ) -> Vec<(UploadId, Pending)> {
        let mut failed: Vec<(Actor, UploadId, Pending, std::io::Error)> = Vec::new();
        for (_, _, p) in step.iter_mut() {
            let _ = p.part.start_sync(); // an error shows again in sync()
        }
        let mut synced = Vec::with_capacity(step.len());
        for (actor, uid, mut p) in step {
            match p.part.sync().and_then(|()| p.part.rename_to(&p.final_path)) {
                Ok(()) => synced.push((actor, uid, p)),
                Err(e) => failed.push((actor, uid, p, e)),
            }
        }
        let mut dirs: Vec<PathBuf> = synced
            .iter()
            .filter_map(|(_, _, p)| p.final_path.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        let bad_dirs: Vec<(PathBuf, std::io::Error)> = dirs
            .into_iter()
            .filter_map(|d| files::sync_dir(&d).err().map(|e| (d, e)))
            .collect();
        let mut placed = Vec::with_capacity(synced.len());
        for (actor, uid, p) in synced {
            let bad = bad_dirs
                .iter()
                .find(|(d, _)| p.final_path.parent() == Some(d.as_path()));
            if let Some((_, e)) = bad {
                // Renamed, but the rename may not survive a crash: its
                // answer is not sent. It stays recorded as verified (its
                // client confirmed it; the old file, if the rename is
                // lost, was verified too).
                log::warn!(
                    "accept {} {:?}: folder fsync: {e}",
                    p.client.to_hex(),
                    p.file_name
                );
                report.failed.push(actor);
            }
            placed.push((uid, p));
        }
        let now = Instant::now();
        for (actor, uid, p, e) in failed {
            self.unplaced(actor, uid, p, &e, now, report);
        }
        placed
    }

    /// An accepted upload that could not be placed: its actor's answer is
    /// not sent, and it is pending again (orphaned) for a retried 1029.
    fn unplaced(
        &mut self,
        actor: Actor,
        uid: UploadId,
        mut p: Pending,
        e: &std::io::Error,
        now: Instant,
        report: &mut SyncReport,
    ) {
        log::warn!(
            "accept {} {:?}: {e}; pending again for a retried 1029",
            p.client.to_hex(),
            p.file_name
        );
        report.failed.push(actor);
        p.orphaned_at = Some(now);
        self.pending.insert(uid, p);
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The configuration in effect.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The database, for read-only helpers (LastSeen, file rows).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Number of registered clients.
    pub fn client_count(&self) -> Result<u64, StoreError> {
        self.db.client_count()
    }

    /// Number of uploads awaiting a verdict.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Whether this upload is still awaiting a verdict.
    pub fn is_pending(&self, upload: UploadId) -> bool {
        self.pending.contains_key(&upload)
    }

    /// Every `files` row as (client, name, final path, Verified).
    pub fn files(&self) -> Result<Vec<(ClientId, String, PathBuf, bool)>, StoreError> {
        Ok(self.db.files()?.into_iter().map(row_tuple).collect())
    }

    /// The `files` rows with Verified = 1, as (client, name, final path,
    /// true): the files clients confirmed, which survive restarts (§8).
    pub fn verified_files(&self) -> Result<Vec<(ClientId, String, PathBuf, bool)>, StoreError> {
        let mut files = self.files()?;
        files.retain(|f| f.3);
        Ok(files)
    }

    /// Deletes the orphaned uploads whose connection closed at least
    /// [`StoreConfig::orphan_ttl`] before `now`. Call it from the event
    /// loop's timer (see [`DiskStore::next_orphan_deadline`]).
    pub fn expire_orphans(&mut self, now: Instant) {
        let ttl = self.config.orphan_ttl;
        let expired: Vec<UploadId> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.orphaned_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= ttl)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.drop_pending(id, "no verdict within the orphan timeout");
        }
    }

    /// When the next orphaned upload expires, if any is orphaned.
    pub fn next_orphan_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|p| p.orphaned_at)
            .min()
            .map(|t| t + self.config.orphan_ttl)
    }

    /// The pending upload a verdict applies to: `prefer` if it is pending
    /// for this client and name, else the newest such one.
    fn select_pending(
        &self,
        id: &ClientId,
        name: &str,
        prefer: Option<UploadId>,
    ) -> Option<UploadId> {
        let matches = |p: &Pending| p.client == *id && p.file_name == name;
        if let Some(want) = prefer {
            if self.pending.get(&want).is_some_and(matches) {
                return Some(want);
            }
        }
        self.pending
            .iter()
            .rev()
            .find(|(_, p)| matches(p))
            .map(|(&uid, _)| uid)
    }

    /// 1029: places the upload at its final path, then marks it verified.
    /// On an error the upload stays pending; a retry resumes after the
    /// last step that succeeded.
    fn accept(&mut self, uid: UploadId) -> Result<(), StoreError> {
        if self.group_commit {
            let Some(p) = self.pending.remove(&uid) else {
                return Err(StoreError::new("accept upload: not pending"));
            };
            self.placing.push((self.actor, uid, p));
            return Ok(());
        }
        let Some(p) = self.pending.get_mut(&uid) else {
            return Err(StoreError::new("accept upload: not pending"));
        };
        let who = format!("{} {:?}", p.client.to_hex(), p.file_name);
        if let Err(e) = p.part.place(&p.final_path) {
            log::warn!("accept {who}: {e} (placed: {})", p.part.is_placed());
            return Err(io_err(&format!("accept {who}"), e));
        }
        self.db
            .mark_verified(&p.client, &p.file_name, path_text(&p.final_path)?)?;
        log::debug!(
            "stored {who}: {} bytes, cksum {}, verified",
            p.summary.plain_len,
            p.summary.cksum
        );
        self.pending.remove(&uid);
        Ok(())
    }

    /// Removes a pending upload and deletes its temporary file. One that
    /// an accept already placed at its final path stays there (its client
    /// confirmed it).
    fn drop_pending(&mut self, uid: UploadId, why: &str) {
        let Some(p) = self.pending.remove(&uid) else {
            return;
        };
        let who = format!("{} {:?}", p.client.to_hex(), p.file_name);
        if p.part.is_placed() {
            // Only an accepted (client-confirmed) upload is ever placed, so
            // its record must say Verified; the update that failed during
            // the accept is tried once more (and again at the next start).
            let marked = path_text(&p.final_path)
                .and_then(|path| self.db.mark_verified(&p.client, &p.file_name, path));
            match marked {
                Ok(()) => log::info!("upload {uid} ({who}) {why}; already at its final path, now marked verified"),
                Err(e) => log::warn!("upload {uid} ({who}) {why}; at its final path, marking it verified failed: {e}"),
            }
            return;
        }
        match p.part.discard() {
            Ok(()) => log::debug!("upload {uid} ({who}) discarded: {why}"),
            Err(e) => {
                log::warn!("upload {uid} ({who}) {why}; cannot delete its temporary file: {e}")
            }
        }
    }

    /// Discards the oldest pending uploads beyond [`StoreConfig::max_pending`].
    /// Makes room for one more pending upload of `client` under the
    /// server-wide cap, without ever evicting a live upload of another
    /// client: first the oldest orphaned upload (its connection is gone),
    /// then the client's own oldest. If neither exists the new upload is
    /// refused (2107), so a flood of unverified uploads only costs its
    /// sender.
    fn make_room(&mut self, client: &ClientId) -> Result<(), StoreError> {
        let cap = self.config.max_pending.max(1);
        while self.pending.len() >= cap {
            let orphan = self
                .pending
                .iter()
                .find(|(_, p)| p.orphaned_at.is_some())
                .map(|(k, _)| *k);
            let own = || {
                self.pending
                    .iter()
                    .find(|(_, p)| p.client == *client)
                    .map(|(k, _)| *k)
            };
            let Some(victim) = orphan.or_else(own) else {
                return Err(StoreError::new(format!(
                    "{cap} uploads of other clients await a verdict (server-wide limit)"
                )));
            };
            log::warn!("{cap} uploads await a verdict: discarding upload {victim}");
            self.drop_pending(victim, "pending-upload cap reached");
        }
        Ok(())
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
        id: &ClientId,
        name: &str,
        replace: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        self.db.register_client(id, name, replace)?;
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
        id: &ClientId,
        public_key: &[u8; PUBLIC_KEY_LEN],
        aes_key: &AesKey,
    ) -> Result<(), StoreError> {
        self.db.set_public_key(id, public_key, aes_key)?;
        log::debug!("client {}: public key and AES key stored", id.to_hex());
        Ok(())
    }

    fn set_last_key(&mut self, id: &ClientId, aes_key: &AesKey) -> Result<(), StoreError> {
        self.db.set_last_key(id, aes_key)?;
        log::debug!("client {}: last AES key stored", id.to_hex());
        Ok(())
    }

    fn touch(&mut self, id: &ClientId) -> Result<(), StoreError> {
        self.db.touch(id)
    }

    fn begin_upload(
        &mut self,
        id: &ClientId,
        file_name: &str,
        content_size: u32,
    ) -> Result<DiskUpload, StoreError> {
        check_base_name(file_name)?;
        let dir = files::client_dir(&self.data_dir, id);
        files::ensure_dir(&dir).map_err(|e| io_err("create client folder", e))?;
        let mut part = PartFile::create(&dir).map_err(|e| io_err("create temporary file", e))?;
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
        })
    }

    fn write_upload(
        &mut self,
        upload: &mut DiskUpload,
        plaintext: &[u8],
    ) -> Result<(), StoreError> {
        upload.part.write(plaintext).map_err(|e| {
            log::warn!("write to upload of {:?}: {e}", upload.file_name);
            io_err("write upload", e)
        })
    }

    fn finish_upload(
        &mut self,
        mut upload: DiskUpload,
        summary: &UploadSummary,
    ) -> Result<UploadId, StoreError> {
        // On any error below `upload` is dropped and its file deleted:
        // an upload cut short leaves no file and no row.
        upload
            .part
            .close()
            .map_err(|e| io_err("finish upload", e))?;
        if upload.part.written() != summary.plain_len {
            return Err(StoreError::new(format!(
                "finish upload: {} bytes written but {} reported",
                upload.part.written(),
                summary.plain_len
            )));
        }
        let path = path_text(&upload.final_path)?;
        self.make_room(&upload.client)?;
        self.db
            .add_unverified_file(&upload.client, &upload.file_name, path)?;
        let uid = self.next_id;
        self.next_id += 1;
        log::debug!(
            "upload {uid} of {:?} for {} complete: {} bytes, awaiting verdict",
            upload.file_name,
            upload.client.to_hex(),
            summary.plain_len
        );
        let DiskUpload {
            client,
            file_name,
            final_path,
            part,
        } = upload;
        self.pending.insert(
            uid,
            Pending {
                client,
                file_name,
                final_path,
                part,
                summary: *summary,
                orphaned_at: None,
                durable_at_sync: self.fs_syncs + 1,
            },
        );
        Ok(uid)
    }

    fn abort_upload(&mut self, upload: DiskUpload) {
        log::debug!(
            "upload of {:?} for {} aborted after {} bytes",
            upload.file_name,
            upload.client.to_hex(),
            upload.part.written()
        );
        if let Err(e) = upload.part.discard() {
            log::warn!("cannot delete an aborted upload's temporary file: {e}");
        }
    }

    fn apply_verdict(
        &mut self,
        id: &ClientId,
        file_name: &str,
        prefer: Option<UploadId>,
        verdict: Verdict,
    ) -> Result<VerdictOutcome, StoreError> {
        let Some(uid) = self.select_pending(id, file_name, prefer) else {
            return Ok(VerdictOutcome::NothingPending);
        };
        match verdict {
            Verdict::Accept => self.accept(uid)?,
            Verdict::Discard => self.drop_pending(uid, "the client rejected it"),
        }
        Ok(VerdictOutcome::Applied)
    }

    fn discard_upload(&mut self, upload: UploadId) {
        self.drop_pending(upload, "its connection holds too many");
    }

    fn orphan_uploads(&mut self, uploads: &[UploadId]) {
        let now = Instant::now();
        for uid in uploads {
            if let Some(p) = self.pending.get_mut(uid) {
                p.orphaned_at.get_or_insert(now);
                log::debug!("upload {uid} orphaned: its connection closed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const ALICE: ClientId = ClientId([0xa1; 16]);
    const BOB: ClientId = ClientId([0xb0; 16]);

    fn open(dir: &Path) -> DiskStore {
        DiskStore::open(dir, StoreConfig::default()).unwrap()
    }

    fn keyed(store: &mut DiskStore, id: &ClientId, name: &str) {
        store.register_client(id, name, None).unwrap();
        store
            .set_public_key(id, &[1; PUBLIC_KEY_LEN], &AesKey::from_bytes([2; 16]))
            .unwrap();
    }

    fn summary(data: &[u8]) -> UploadSummary {
        UploadSummary {
            plain_len: data.len() as u64,
            cksum: 0,
        }
    }

    /// A complete upload of `data` as `name`, awaiting its verdict.
    fn upload(store: &mut DiskStore, id: &ClientId, name: &str, data: &[u8]) -> UploadId {
        let mut up = store.begin_upload(id, name, 16).unwrap();
        for chunk in data.chunks(7) {
            store.write_upload(&mut up, chunk).unwrap();
        }
        store.finish_upload(up, &summary(data)).unwrap()
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
        store.db().file(id, name).unwrap()
    }

    fn accept(store: &mut DiskStore, id: &ClientId, name: &str) -> VerdictOutcome {
        store
            .apply_verdict(id, name, None, Verdict::Accept)
            .unwrap()
    }

    #[test]
    fn default_config_is_120_s_and_1024_uploads() {
        let config = StoreConfig::default();
        assert_eq!(config.orphan_ttl, Duration::from_secs(120));
        assert_eq!(config.max_pending, 1024);
    }

    #[test]
    fn open_creates_data_dir_files_dir_and_database() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let store = open(&data);
        assert!(data.join("files").is_dir());
        assert!(data.join(crate::db::DB_FILE_NAME).is_file());
        assert_eq!(store.db().journal_mode().unwrap(), "wal");
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
    fn register_with_replace_releases_the_unkeyed_name() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        store.register_client(&ALICE, "shared", None).unwrap();
        store.register_client(&BOB, "shared", Some(&ALICE)).unwrap();
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
            .set_last_key(&ALICE, &AesKey::from_bytes([3; 16]))
            .unwrap();
        let rec = store.client_by_id(&ALICE).unwrap().unwrap();
        assert_eq!(rec.last_key, Some(AesKey::from_bytes([3; 16])));
        store
            .db()
            .connection()
            .execute("UPDATE clients SET LastSeen = 'long ago'", [])
            .unwrap();
        store.touch(&ALICE).unwrap();
        let seen = store.db().last_seen(&ALICE).unwrap().unwrap();
        assert!(seen.ends_with('Z'), "{seen}");
    }

    #[test]
    fn accept_moves_bytes_to_final_path_and_sets_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let uid = upload(&mut store, &ALICE, "big.bin", &data);
        let outcome = store
            .apply_verdict(&ALICE, "big.bin", Some(uid), Verdict::Accept)
            .unwrap();
        assert_eq!(outcome, VerdictOutcome::Applied);
        let path = files::final_path(tmp.path(), &ALICE, "big.bin");
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
        let mut up = store.begin_upload(&ALICE, "f.txt", 16).unwrap();
        let path = files::final_path(tmp.path(), &ALICE, "f.txt");
        store.write_upload(&mut up, b"half").unwrap();
        assert!(!path.exists());
        let uid = store.finish_upload(up, &summary(b"half")).unwrap();
        assert!(store.is_pending(uid));
        assert!(!path.exists());
        assert_eq!(temp_files(&store, &ALICE), 1);
        // The first upload of a name gets a Verified = 0 row.
        assert!(!row(&store, &ALICE, "f.txt").unwrap().verified);
        // 1030 / 1031: gone, and still nothing at the final path.
        let outcome = store
            .apply_verdict(&ALICE, "f.txt", Some(uid), Verdict::Discard)
            .unwrap();
        assert_eq!(outcome, VerdictOutcome::Applied);
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
        store
            .apply_verdict(&ALICE, "doc", Some(uid), Verdict::Discard)
            .unwrap();
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
        accept(&mut store, &ALICE, "doc");
        upload(&mut store, &ALICE, "doc", b"version two");
        accept(&mut store, &ALICE, "doc");
        let path = files::final_path(tmp.path(), &ALICE, "doc");
        assert_eq!(fs::read(path).unwrap(), b"version two");
        assert_eq!(store.files().unwrap().len(), 1);
        assert_eq!(listing(&store, &ALICE), ["doc"]);
    }

    #[test]
    fn verdict_takes_preferred_upload_when_pending() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let first = upload(&mut store, &ALICE, "f", b"first");
        let second = upload(&mut store, &ALICE, "f", b"second");
        store
            .apply_verdict(&ALICE, "f", Some(first), Verdict::Accept)
            .unwrap();
        let path = files::final_path(tmp.path(), &ALICE, "f");
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert!(store.is_pending(second));
    }

    #[test]
    fn verdict_takes_newest_upload_without_a_usable_preference() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        keyed(&mut store, &BOB, "bob");
        let first = upload(&mut store, &ALICE, "f", b"first");
        let second = upload(&mut store, &ALICE, "f", b"second");
        let other_name = upload(&mut store, &ALICE, "g", b"other name");
        let other_client = upload(&mut store, &BOB, "f", b"other client");
        // A preference for another name or client does not apply.
        for prefer in [None, Some(other_name), Some(other_client), Some(999)] {
            let uid = upload(&mut store, &ALICE, "f", b"newest");
            store
                .apply_verdict(&ALICE, "f", prefer, Verdict::Discard)
                .unwrap();
            assert!(!store.is_pending(uid), "{prefer:?}");
        }
        store
            .apply_verdict(&ALICE, "f", None, Verdict::Accept)
            .unwrap();
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
        for verdict in [Verdict::Accept, Verdict::Discard] {
            let outcome = store.apply_verdict(&ALICE, "f", None, verdict).unwrap();
            assert_eq!(outcome, VerdictOutcome::NothingPending);
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
        let orphan = upload(&mut store, &ALICE, "o", b"orphan");
        let live = upload(&mut store, &ALICE, "l", b"live");
        assert_eq!(store.next_orphan_deadline(), None);
        let before = Instant::now();
        store.orphan_uploads(&[orphan, 12345]);
        let deadline = store.next_orphan_deadline().unwrap();
        assert!(deadline >= before + DEFAULT_ORPHAN_TTL);
        store.expire_orphans(Instant::now());
        assert!(store.is_pending(orphan));
        // A verdict may still come on a new connection before expiry.
        store.expire_orphans(deadline - Duration::from_millis(1));
        assert!(store.is_pending(orphan));
        store.expire_orphans(deadline + Duration::from_secs(3600));
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
        let uid = upload(&mut store, &ALICE, "f", b"from the old connection");
        store.orphan_uploads(&[uid]);
        assert_eq!(accept(&mut store, &ALICE, "f"), VerdictOutcome::Applied);
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
        let mut store = DiskStore::open(tmp.path(), config).unwrap();
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
    fn second_store_on_the_same_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = open(tmp.path());
        let err = DiskStore::open(tmp.path(), StoreConfig::default()).unwrap_err();
        assert!(
            err.message.contains("in use by another sealdrop-server"),
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
        let mut store = DiskStore::open(dir, config).unwrap();
        keyed(&mut store, &ALICE, "alice");
        keyed(&mut store, &BOB, "bob");
        store
    }

    #[test]
    fn pending_cap_never_evicts_another_clients_live_upload() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = alice_and_bob_with_two_pending(tmp.path());
        let victim = upload(&mut store, &ALICE, "report", b"alice's");
        let flood: Vec<UploadId> = (0..5)
            .map(|i| upload(&mut store, &BOB, &format!("f{i}"), b"x"))
            .collect();
        assert!(
            store.is_pending(victim),
            "bob's flood evicted alice's upload"
        );
        assert!(store.is_pending(flood[4]) && !store.is_pending(flood[3]));
        // Full of live uploads of others: alice's next one is refused...
        store.discard_upload(flood[4]);
        let _ = upload(&mut store, &BOB, "g", b"y");
        let mut up = store.begin_upload(&ALICE, "second", 16).unwrap();
        store.write_upload(&mut up, b"z").unwrap();
        assert!(
            store.finish_upload(up, &summary(b"z")).is_ok(),
            "own oldest goes first"
        );
        assert!(!store.is_pending(victim));
        // ...unless an orphan can go.
        let mut up = store.begin_upload(&BOB, "h", 16).unwrap();
        store.write_upload(&mut up, b"z").unwrap();
        let bobs: Vec<UploadId> = store.pending.keys().copied().collect();
        store.orphan_uploads(&bobs[..1]);
        assert!(store.finish_upload(up, &summary(b"z")).is_ok());
        assert!(!store.is_pending(bobs[0]));
    }

    #[test]
    fn pending_cap_refuses_when_only_other_clients_live_uploads_remain() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = alice_and_bob_with_two_pending(tmp.path());
        upload(&mut store, &BOB, "a", b"x");
        upload(&mut store, &BOB, "b", b"x");
        let mut up = store.begin_upload(&ALICE, "report", 16).unwrap();
        store.write_upload(&mut up, b"z").unwrap();
        let err = store.finish_upload(up, &summary(b"z")).unwrap_err();
        assert!(err.message.contains("server-wide limit"), "{err}");
        assert_eq!(store.pending_count(), 2);
        assert_eq!(temp_files(&store, &ALICE), 0);
    }

    #[test]
    fn discard_upload_deletes_its_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let uid = upload(&mut store, &ALICE, "f", b"x");
        store.discard_upload(uid);
        store.discard_upload(uid);
        assert!(!store.is_pending(uid));
        assert_eq!(temp_files(&store, &ALICE), 0);
    }

    #[test]
    fn aborted_upload_leaves_no_file_and_no_row() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        let mut up = store.begin_upload(&ALICE, "cut", 32).unwrap();
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
        let mut up = store.begin_upload(&ALICE, "cut", 32).unwrap();
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
        let mut up = store.begin_upload(&ALICE, "doc", 16).unwrap();
        let temp = up.temp_path().to_path_buf();
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        up.part = PartFile::from_parts(temp.clone(), full);
        let err = store.write_upload(&mut up, &[0; 8192]).unwrap_err();
        assert!(err.message.contains("write upload"), "{err}");
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
        let mut up = store.begin_upload(&ALICE, "f", 16).unwrap();
        store.write_upload(&mut up, b"abc").unwrap();
        let wrong = UploadSummary {
            plain_len: 4,
            cksum: 0,
        };
        assert!(store.finish_upload(up, &wrong).is_err());
        assert_eq!(store.pending_count(), 0);
        assert!(listing(&store, &ALICE).is_empty());
        assert!(row(&store, &ALICE, "f").is_none());
    }

    #[test]
    fn failed_accept_keeps_upload_pending_and_old_file_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        keyed(&mut store, &ALICE, "alice");
        upload(&mut store, &ALICE, "doc", b"old");
        accept(&mut store, &ALICE, "doc");
        let uid = upload(&mut store, &ALICE, "doc", b"new");
        // Make the fsync/rename fail: the temporary file vanished.
        let temp = store.pending[&uid].part.path().to_path_buf();
        fs::rename(&temp, tmp.path().join("aside")).unwrap();
        assert!(accept_err(&mut store, "doc").contains("accept"));
        assert!(store.is_pending(uid));
        let path = files::final_path(tmp.path(), &ALICE, "doc");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(row(&store, &ALICE, "doc").unwrap().verified);
        // Once the file is back, a retried 1029 succeeds.
        fs::rename(tmp.path().join("aside"), &temp).unwrap();
        assert_eq!(accept(&mut store, &ALICE, "doc"), VerdictOutcome::Applied);
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    fn accept_err(store: &mut DiskStore, name: &str) -> String {
        store
            .apply_verdict(&ALICE, name, None, Verdict::Accept)
            .unwrap_err()
            .message
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
            assert!(store.begin_upload(&ALICE, name, 16).is_err(), "{name:?}");
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
}
