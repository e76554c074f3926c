//! Received files on disk (PROTOCOL.md §6 "Storage", §8 "Server files").
//!
//! Layout: `<data dir>/files/<client id hex>/<base name>`. An upload is
//! written to a hidden temporary file `.part-<16 hex digits>` in the
//! client's folder (22 bytes, whatever the file name's length; with
//! PostgreSQL, where several servers share the tree,
//! `.part-<server id>-<16 hex digits>`, so each server knows its own) and reaches
//! its final path only when the client confirms it (1029), by one rename.
//! So an unconfirmed upload never replaces or damages an earlier verified
//! file of the same name, and its bytes never sit at the final path (§6).
//!
//! A [`PartFile`] deletes its temporary file when dropped unless it was
//! placed at its final path, so no code path (an error, an aborted upload,
//! a server stop) leaves a partial file behind. [`cleanup_leftovers`]
//! removes the ones a crash left.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sealdrop_protocol::ClientId;

use crate::direct::DirectWriter;

/// Name of the folder under the data directory that holds one folder per
/// client (§8).
pub const FILES_DIR: &str = "files";

/// Prefix of a temporary upload file. A leading dot hides it from `ls`.
pub const PART_PREFIX: &str = ".part-";

/// Random hex digits after [`PART_PREFIX`]: 64 random bits, so two uploads
/// never pick the same name in practice (and creation is exclusive anyway).
pub const PART_HEX_DIGITS: usize = 16;

/// Mode of the folders this module creates: received files are private to
/// the server's user.
pub const DIR_MODE: u32 = 0o700;

/// Mode of the temporary (and so of the stored) files: private to the
/// server's user.
pub const FILE_MODE: u32 = 0o600;

/// How many random names [`PartFile::create`] tries before giving up. A
/// collision needs 64 random bits to repeat, so more than one try means a
/// client stored a file whose name happens to look like a temporary one.
const CREATE_ATTEMPTS: usize = 8;

/// `<data dir>/files`.
pub fn files_root(data_dir: &Path) -> PathBuf {
    data_dir.join(FILES_DIR)
}

/// `<data dir>/files/<client id hex>`: the client's folder (§8).
pub fn client_dir(data_dir: &Path, id: &ClientId) -> PathBuf {
    files_root(data_dir).join(id.to_hex())
}

/// `<data dir>/files/<client id hex>/<base name>`: where a verified file
/// lives. `file_name` must already be a safe base name (§2).
pub fn final_path(data_dir: &Path, id: &ClientId, file_name: &str) -> PathBuf {
    client_dir(data_dir, id).join(file_name)
}

/// Whether `name` has the exact form of a temporary upload file:
/// [`PART_PREFIX`], optionally a server id and `-`, then
/// [`PART_HEX_DIGITS`] lower-case hex digits.
pub fn is_part_name(name: &str) -> bool {
    part_owner(name).is_some()
}

/// The server that owns a temporary upload file: `Some(None)` for one
/// without a server id (a server on SQLite, alone on its data directory),
/// `Some(Some(id))` for one of server `id`, `None` for a name that is not
/// a temporary file's.
pub fn part_owner(name: &str) -> Option<Option<&str>> {
    let rest = name.strip_prefix(PART_PREFIX)?;
    let is_hex = |hex: &str| {
        hex.len() == PART_HEX_DIGITS
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if is_hex(rest) {
        return Some(None);
    }
    let (id, hex) = rest.rsplit_once('-')?;
    (is_hex(hex) && check_server_id(id).is_ok()).then_some(Some(id))
}

/// Longest server id (`--server-id`): temporary file names stay well
/// under the 255-byte name limit of every file system.
pub const MAX_SERVER_ID_LEN: usize = 64;

/// A server id is 1 to [`MAX_SERVER_ID_LEN`] ASCII letters, digits, `.`
/// and `_` (no `-`, which ends it in a temporary file's name, and no `/`).
pub fn check_server_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SERVER_ID_LEN {
        return Err(format!(
            "a server id has 1 to {MAX_SERVER_ID_LEN} characters, not {}",
            id.len()
        ));
    }
    match id
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'_'))
    {
        Some(b) => Err(format!(
            "a server id may hold ASCII letters, digits, '.' and '_' only, not {:?}",
            char::from(b)
        )),
        None => Ok(()),
    }
}

/// The default server id: the host name, with every character a server id
/// may not hold (`-`, say) replaced by `_`, cut to [`MAX_SERVER_ID_LEN`].
pub fn default_server_id() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut id: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_SERVER_ID_LEN)
        .collect();
    if id.is_empty() {
        id.push_str("localhost");
    }
    id
}

/// Creates `dir` (and missing parents, mode [`DIR_MODE`]) if it does not
/// exist, then fsyncs its parent so the new folder survives a crash.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// fsyncs a folder, so that a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes every temporary upload file (`.part-` + 16 hex digits) under
/// `<data dir>/files/*/`: at start-up they are uploads a crash or a stop
/// cut off before their verdict, so never confirmed (§6). A file for which
/// `is_stored(client_hex, file_name)` is true is kept: it is a stored file
/// a client happened to give such a name. Logs how many were removed and
/// returns that count. A missing `files` folder counts as none.
pub fn cleanup_leftovers(
    data_dir: &Path,
    is_stored: impl Fn(&str, &str) -> bool,
) -> io::Result<usize> {
    cleanup_leftovers_of(data_dir, None, is_stored)
}

/// [`cleanup_leftovers`] for a server among several on one data directory
/// (`owner`, its server id): only its own temporary files go, and those
/// without a server id (left by a server on SQLite, which cannot be running
/// beside it: see the data directory lock). Another server's uploads in
/// flight are never touched. `owner` `None`: every temporary file.
pub fn cleanup_leftovers_of(
    data_dir: &Path,
    owner: Option<&str>,
    is_stored: impl Fn(&str, &str) -> bool,
) -> io::Result<usize> {
    let root = files_root(data_dir);
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let client = entry.file_name().to_string_lossy().into_owned();
            removed += cleanup_client_dir(&entry.path(), &client, owner, &is_stored);
        }
    }
    if removed > 0 {
        log::info!(
            "removed {removed} unconfirmed upload(s) left by the last run in {}",
            root.display()
        );
    } else {
        log::debug!("no unconfirmed uploads left in {}", root.display());
    }
    Ok(removed)
}

/// Removes the leftover temporary files of one client folder; a failure
/// is logged and skipped, so one bad entry does not stop the server.
fn cleanup_client_dir(
    dir: &Path,
    client: &str,
    owner: Option<&str>,
    is_stored: &impl Fn(&str, &str) -> bool,
) -> usize {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            log::warn!("cannot list {} for leftovers: {e}", dir.display());
            return 0;
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        let mine = match (part_owner(name), owner) {
            (None, _) => false,
            (Some(_), None) | (Some(None), Some(_)) => true,
            (Some(Some(theirs)), Some(me)) => theirs == me,
        };
        if !is_file || !mine || is_stored(client, name) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => log::warn!("cannot remove leftover {}: {e}", entry.path().display()),
        }
    }
    removed
}

/// A random temporary file name: [`PART_PREFIX`], `owner` and `-` if
/// given, then 16 hex digits.
fn random_part_name(owner: Option<&str>) -> io::Result<String> {
    let mut bytes = [0u8; PART_HEX_DIGITS / 2];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
    let mut name = String::with_capacity(PART_PREFIX.len() + PART_HEX_DIGITS + 65);
    name.push_str(PART_PREFIX);
    if let Some(owner) = owner {
        name.push_str(owner);
        name.push('-');
    }
    for b in bytes {
        name.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        name.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    Ok(name)
}

/// While an upload is written, every this many bytes are handed to the
/// kernel's writeback at once (sync_file_range, SYNC_FILE_RANGE_WRITE), so
/// the disk works while the rest arrives and the fsync before 2104 finds
/// little left to do (measured: 0.5 s of a 1 GiB upload's 2.7 s was that
/// final fsync). It also keeps dirty pages from piling up.
pub const WRITEBACK_CHUNK: u64 = 8 << 20;

/// Starts asynchronous writeback of a range; a hint, so failure is ignored.
#[allow(unsafe_code)] // sync_file_range(2) has no safe wrapper in std.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor belongs to `file`, which outlives the call;
    // no memory is passed to the kernel.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        log::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

/// Writes every dirty page and inode of the filesystem that `handle` is
/// on to the disk and waits (syncfs(2)): one call makes many files and
/// folders durable at once, where fsync would take one device flush per
/// file and per folder. Linux reports writeback errors through it only
/// since 5.8 (see [`syncfs_reports_errors`]).
#[allow(unsafe_code)] // syncfs(2) has no safe wrapper in std.
pub fn sync_filesystem(handle: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `handle`, which outlives the call;
    // no memory is passed to the kernel.
    let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the running kernel reports writeback errors through syncfs(2)
/// (Linux 5.8 and later); before that it returned 0 even when writing a
/// file failed, so it cannot prove anything durable.
pub fn syncfs_reports_errors() -> bool {
    let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    kernel_at_least(&release, 5, 8)
}

/// Whether a kernel release string ("6.1.0-13-amd64") is at least
/// `major.minor`.
fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// A temporary upload file. Bytes are appended with [`PartFile::write`];
/// [`PartFile::place`] makes it durable at its final path. Dropped before
/// that, it deletes its file.
///
/// Its life is a `State`: `Writing` (the start), then `Closed`,
/// `Syncing` and `Synced` on the way to `Placed`; a failed write leads to
/// `Failed` for good, and a deletion to `Removed`.
#[derive(Debug)]
pub struct PartFile {
    /// The temporary file's path.
    path: PathBuf,
    /// Bytes written so far.
    written: u64,
    /// Where the file is in its life, with what that state needs.
    state: State,
}

/// The states of a [`PartFile`]. Each holds only what it needs: a
/// descriptor only while one is in use, a direct writer only while bytes
/// are appended. So a failed upload cannot be synced or renamed, a direct
/// writer cannot outlive the writing, and only synced content can be
/// renamed over a stored file.
#[derive(Debug)]
enum State {
    /// Open for appends; the state a new upload starts in.
    Writing {
        /// The (buffered) descriptor; a direct upload's tail goes through
        /// it at the end.
        file: File,
        /// How appended bytes reach the file.
        appends: Appends,
    },
    /// A write failed: the content has a hole for good, so every later
    /// write, close and sync fails. The temporary file is still there.
    Failed,
    /// Writing ended and no descriptor is held (a pending upload); the
    /// content may still be only in the page cache.
    Closed,
    /// [`PartFile::start_sync`] started writeback of the complete content;
    /// the descriptor is kept for the fsync.
    Syncing {
        /// A descriptor of the complete file.
        file: File,
    },
    /// The content is on the disk (fsynced, or the filesystem synced,
    /// after the last write); no descriptor.
    Synced,
    /// Renamed to its final path: nothing to delete any more.
    Placed,
    /// Deleted, or a deletion was tried: nothing to delete any more.
    Removed,
}

/// How a `Writing` [`PartFile`] appends.
#[derive(Debug)]
enum Appends {
    /// Through the page cache; the bytes before `queued` were handed to
    /// the kernel's writeback by [`start_writeback`].
    Buffered {
        /// Bytes handed to writeback so far.
        queued: u64,
    },
    /// Through O_DIRECT, chosen by [`PartFile::use_direct_io`].
    Direct(DirectWriter),
}

impl Appends {
    /// Ends appending: writes what a direct writer still holds (its tail
    /// through `file`). Returns how many bytes were already handed to
    /// writeback (none of a direct upload's: it bypassed the page cache).
    fn finish(self, file: &File) -> io::Result<u64> {
        match self {
            Appends::Buffered { queued } => Ok(queued),
            Appends::Direct(direct) => direct.finish(file).map(|()| 0),
        }
    }
}

/// The error of every write, close and sync after a failed write.
fn earlier_write_failed() -> io::Error {
    io::Error::other("an earlier write to this upload failed")
}

impl PartFile {
    /// Creates a new, empty temporary file in `dir` (which must exist),
    /// mode [`FILE_MODE`], never overwriting an existing file.
    pub fn create(dir: &Path) -> io::Result<PartFile> {
        PartFile::create_owned(dir, None)
    }

    /// [`PartFile::create`] for server `owner` (its id in the name).
    pub fn create_owned(dir: &Path, owner: Option<&str>) -> io::Result<PartFile> {
        let mut last_error = None;
        for _ in 0..CREATE_ATTEMPTS {
            let path = dir.join(random_part_name(owner)?);
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path);
            match opened {
                Ok(file) => return Ok(PartFile::from_parts(path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free temporary file name")))
    }

    /// Wraps an open file that lives at `path` (tests use it to write into
    /// `/dev/full`).
    pub(crate) fn from_parts(path: PathBuf, file: File) -> PartFile {
        PartFile {
            path,
            written: 0,
            state: State::Writing {
                file,
                appends: Appends::Buffered { queued: 0 },
            },
        }
    }

    /// The temporary file's path (its final path once placed is the
    /// caller's business).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether [`PartFile::place`] renamed it to its final path.
    pub fn is_placed(&self) -> bool {
        matches!(self.state, State::Placed)
    }

    /// Switches a new, empty upload to O_DIRECT appends (a large upload:
    /// see [`crate::direct`]). Returns whether it did; when the
    /// filesystem refuses or too many direct uploads run, writes stay
    /// buffered. Only an upload still writing, with nothing written, can
    /// switch.
    pub fn use_direct_io(&mut self) -> bool {
        if let State::Writing { appends, .. } = &mut self.state {
            if matches!(appends, Appends::Buffered { .. }) && self.written == 0 {
                if let Some(direct) = DirectWriter::open(&self.path) {
                    *appends = Appends::Direct(direct);
                }
            }
        }
        matches!(
            self.state,
            State::Writing {
                appends: Appends::Direct(_),
                ..
            }
        )
    }

    /// Appends `data`, straight to the file (callers pass large chunks).
    /// After a failed write every later write and [`PartFile::close`]
    /// fail too, since the content has a hole. Once writing ended
    /// ([`PartFile::close`], [`PartFile::start_sync`], [`PartFile::sync`],
    /// [`PartFile::mark_synced`]) a write fails and changes nothing.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let written = match &mut self.state {
            State::Failed => return Err(earlier_write_failed()),
            State::Writing { file, appends } => {
                let written = self.written + data.len() as u64;
                let appended = match appends {
                    Appends::Direct(direct) => direct.write(data),
                    Appends::Buffered { queued } => file.write_all(data).map(|()| {
                        if written - *queued >= WRITEBACK_CHUNK {
                            start_writeback(file, *queued, written - *queued);
                            *queued = written;
                        }
                    }),
                };
                if let Err(e) = appended {
                    self.state = State::Failed;
                    return Err(e);
                }
                written
            }
            State::Closed
            | State::Syncing { .. }
            | State::Synced
            | State::Placed
            | State::Removed => return Err(io::Error::other("upload already closed")),
        };
        self.written = written;
        Ok(())
    }

    /// Ends writing and closes the file handle (a pending upload holds no
    /// descriptor). Fails if an earlier write failed, or if a direct
    /// upload's last bytes cannot be written (the upload then fails for
    /// good). Closing a closed, synced or placed upload does nothing.
    pub fn close(&mut self) -> io::Result<()> {
        let (state, result) = match self.take_state() {
            State::Writing { file, appends } => match appends.finish(&file) {
                Ok(queued) => {
                    // The rest goes to the disk while the client sends its
                    // verdict, so the sync that places the file finds little
                    // left to write.
                    if self.written > queued {
                        start_writeback(&file, queued, self.written - queued);
                    }
                    (State::Closed, Ok(()))
                }
                Err(_) => (State::Failed, Err(earlier_write_failed())),
            },
            State::Failed => (State::Failed, Err(earlier_write_failed())),
            State::Syncing { .. } | State::Closed => (State::Closed, Ok(())),
            same @ (State::Synced | State::Placed | State::Removed) => (same, Ok(())),
        };
        self.state = state;
        result
    }

    /// Makes the content durable at `final_path` (§6, 1029): fsync the
    /// temporary file, rename it over `final_path`, fsync the folder.
    /// Until the rename succeeds nothing at `final_path` changes. If the
    /// folder fsync fails after the rename, [`PartFile::is_placed`] is true
    /// and calling `place` again only repeats the folder fsync.
    ///
    /// The same steps one at a time, for placing many files with shared
    /// syncs: [`PartFile::start_sync`], [`PartFile::sync`],
    /// [`PartFile::rename_to`], then [`sync_dir`] on the folder.
    pub fn place(&mut self, final_path: &Path) -> io::Result<()> {
        if !self.is_placed() {
            self.sync()?;
            self.rename_to(final_path)?;
        }
        match final_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
            _ => sync_dir(Path::new(".")),
        }
    }

    /// Ends writing, opens the complete file again (if closed) and starts
    /// writing all of it to the disk without waiting. Starting many files'
    /// writeback before fsyncing any lets one filesystem journal commit
    /// cover them all, instead of one commit per file.
    pub fn start_sync(&mut self) -> io::Result<()> {
        let (state, result) = match self.take_state() {
            State::Writing { file, appends } => match appends.finish(&file) {
                Ok(queued) => {
                    if self.written > queued {
                        start_writeback(&file, queued, self.written - queued);
                    }
                    (State::Syncing { file }, Ok(()))
                }
                Err(e) => (State::Failed, Err(e)),
            },
            // Closing handed everything to writeback already.
            State::Closed => match File::open(&self.path) {
                Ok(file) => (State::Syncing { file }, Ok(())),
                Err(e) => (State::Closed, Err(e)),
            },
            State::Failed => (State::Failed, Err(earlier_write_failed())),
            same @ (State::Syncing { .. } | State::Synced | State::Placed) => (same, Ok(())),
            State::Removed => (State::Removed, Err(already_removed())),
        };
        self.state = state;
        result
    }

    /// Ends writing and waits until the content is on the disk (fsync),
    /// then closes the file handle. If the fsync fails the upload is
    /// closed, not synced, and `sync` may be tried again.
    pub fn sync(&mut self) -> io::Result<()> {
        let (state, result) = match self.take_state() {
            State::Writing { file, appends } => match appends.finish(&file) {
                Ok(_) => fsync(&file),
                Err(e) => (State::Failed, Err(e)),
            },
            State::Syncing { file } => fsync(&file),
            State::Closed => match File::open(&self.path) {
                Ok(file) => fsync(&file),
                Err(e) => (State::Closed, Err(e)),
            },
            State::Failed => (State::Failed, Err(earlier_write_failed())),
            same @ (State::Synced | State::Placed) => (same, Ok(())),
            State::Removed => (State::Removed, Err(already_removed())),
        };
        self.state = state;
        result
    }

    /// Records that the content is on the disk because the whole
    /// filesystem was synced ([`sync_filesystem`]) after the last write.
    /// Does nothing to a failed upload, nor to a direct one still writing
    /// (its last bytes are in its buffer, not in the file).
    pub fn mark_synced(&mut self) {
        match self.state {
            State::Writing {
                appends: Appends::Buffered { .. },
                ..
            }
            | State::Closed
            | State::Syncing { .. } => self.state = State::Synced,
            State::Writing {
                appends: Appends::Direct(_),
                ..
            }
            | State::Failed
            | State::Synced
            | State::Placed
            | State::Removed => {}
        }
    }

    /// Renames the synced file over `final_path`; durable once the folder
    /// is synced ([`sync_dir`]). Refused before [`PartFile::sync`], so
    /// unsynced bytes can never replace a stored file.
    pub fn rename_to(&mut self, final_path: &Path) -> io::Result<()> {
        match self.state {
            State::Placed => Ok(()),
            State::Synced => {
                fs::rename(&self.path, final_path)?;
                self.state = State::Placed;
                Ok(())
            }
            State::Writing { .. }
            | State::Failed
            | State::Closed
            | State::Syncing { .. }
            | State::Removed => Err(io::Error::other("rename before the content was synced")),
        }
    }

    /// The synced file was renamed over its final path by someone else
    /// (the database worker, under its lock): it is placed now, and no
    /// longer this object's to delete. Only a synced file can have been.
    pub fn placed_elsewhere(&mut self) {
        if matches!(self.state, State::Synced) {
            self.state = State::Placed;
        }
    }

    /// Whether the content is on the disk (synced) and not yet placed.
    pub fn is_synced(&self) -> bool {
        matches!(self.state, State::Synced)
    }

    /// Deletes the temporary file now (a drop does the same, but logs
    /// instead of returning the error). A placed file is left alone.
    pub fn discard(mut self) -> io::Result<()> {
        self.remove()
    }

    /// Deletes the temporary file unless placed; a missing file is fine.
    /// Tried once: a drop after a failed discard does not retry.
    fn remove(&mut self) -> io::Result<()> {
        if matches!(self.state, State::Placed | State::Removed) {
            return Ok(());
        }
        self.state = State::Removed; // closes any descriptor first
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Takes the state out for a transition, leaving `Closed` until the
    /// caller stores the next one.
    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Closed)
    }
}

/// fsyncs a complete upload's file: `Synced` on success, else `Closed`
/// (the descriptor is dropped either way, and a later sync opens the file
/// again).
fn fsync(file: &File) -> (State, io::Result<()>) {
    match file.sync_all() {
        Ok(()) => (State::Synced, Ok(())),
        Err(e) => (State::Closed, Err(e)),
    }
}

/// The error of syncing an upload whose file was deleted (unreachable from
/// outside: only a drop follows a deletion).
fn already_removed() -> io::Error {
    io::Error::other("upload already deleted")
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            log::warn!("cannot remove temporary file {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn kernel_release_comparison() {
        assert!(kernel_at_least("5.8.0", 5, 8));
        assert!(kernel_at_least("6.18.44-fc-v1045\n", 5, 8));
        assert!(kernel_at_least("5.10.0-13-amd64", 5, 8));
        assert!(!kernel_at_least("5.4.0-150-generic", 5, 8));
        assert!(!kernel_at_least("4.19.0", 5, 8));
        assert!(!kernel_at_least("garbage", 5, 8));
        assert!(!kernel_at_least("", 5, 8));
    }

    #[test]
    fn filesystem_sync_succeeds_on_a_temp_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        part.write(b"abc").unwrap();
        part.close().unwrap();
        sync_filesystem(&File::open(tmp.path()).unwrap()).unwrap();
        part.mark_synced();
        let target = tmp.path().join("f");
        part.rename_to(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"abc");
    }

    #[test]
    fn direct_io_upload_places_byte_exact_content() {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let tmp = tempfile::tempdir_in(target).unwrap();
        let data: Vec<u8> = (0..(3 << 20) + 777)
            .map(|i: usize| (i % 251) as u8)
            .collect();
        let mut part = PartFile::create(tmp.path()).unwrap();
        let direct = part.use_direct_io();
        eprintln!("O_DIRECT in use: {direct}");
        for piece in data.chunks(1_000_003) {
            part.write(piece).unwrap();
        }
        assert_eq!(part.written(), data.len() as u64);
        part.close().unwrap();
        let target = tmp.path().join("big.bin");
        part.place(&target).unwrap();
        assert!(fs::read(&target).unwrap() == data);
    }

    #[test]
    fn rename_before_sync_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        part.write(b"abc").unwrap();
        let target = tmp.path().join("f");
        assert!(part.rename_to(&target).is_err());
        assert!(!target.exists());
        part.sync().unwrap();
        part.rename_to(&target).unwrap();
        assert!(part.is_placed());
    }

    /// The group-commit path (start_sync of every file, then sync and
    /// rename of each), from an upload still writing and from a closed one.
    #[test]
    fn start_sync_then_sync_then_rename_places_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        for close_first in [false, true] {
            let mut part = PartFile::create(tmp.path()).unwrap();
            part.write(b"abc").unwrap();
            if close_first {
                part.close().unwrap();
            }
            part.start_sync().unwrap();
            part.start_sync().unwrap();
            // Writing ended, and the content is not yet known durable.
            assert!(part.write(b"d").is_err());
            let target = tmp.path().join(format!("f{close_first}"));
            assert!(part.rename_to(&target).is_err());
            part.sync().unwrap();
            part.rename_to(&target).unwrap();
            assert!(part.is_placed());
            assert_eq!(part.written(), 3);
            assert_eq!(fs::read(&target).unwrap(), b"abc");
        }
        assert_eq!(names_in(tmp.path()), ["ffalse", "ftrue"]);
    }

    #[test]
    fn write_after_close_is_refused_and_close_is_repeatable() {
        let tmp = tempfile::tempdir().unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        part.write(b"abc").unwrap();
        part.close().unwrap();
        assert!(part.write(b"d").is_err());
        part.close().unwrap();
        assert_eq!(part.written(), 3);
        part.sync().unwrap();
        assert!(part.write(b"d").is_err());
        assert_eq!(fs::read(part.path()).unwrap(), b"abc");
    }

    #[test]
    fn failed_upload_is_never_marked_synced_or_renamed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(".part-00000000000000fe");
        fs::write(&path, b"").unwrap();
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut part = PartFile::from_parts(path.clone(), full);
        assert!(part.write(&[0u8; 4096]).is_err());
        assert!(part.start_sync().is_err());
        assert!(part.sync().is_err());
        part.mark_synced();
        let target = tmp.path().join("final");
        assert!(part.rename_to(&target).is_err());
        assert!(!part.is_placed());
        assert!(!target.exists());
        part.discard().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn discarding_a_placed_file_leaves_it_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        part.write(b"kept").unwrap();
        let target = tmp.path().join("kept.txt");
        part.place(&target).unwrap();
        part.discard().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"kept");
        assert_eq!(names_in(tmp.path()), ["kept.txt"]);
    }

    #[test]
    fn part_names_are_22_bytes_of_prefix_and_lower_hex() {
        let name = random_part_name(None).unwrap();
        assert_eq!(name.len(), 22);
        assert!(is_part_name(&name), "{name}");
        assert!(is_part_name(".part-0123456789abcdef"));
        assert!(!is_part_name(".part-0123456789ABCDEF"));
        assert!(!is_part_name(".part-0123456789abcde"));
        assert!(!is_part_name(".part-0123456789abcdef0"));
        assert!(!is_part_name("part-0123456789abcdef"));
        assert!(!is_part_name(".part-0123456789abcdeg"));
    }

    #[test]
    fn layout_is_files_client_hex_name() {
        let id = ClientId([0xab; 16]);
        let path = final_path(Path::new("/data"), &id, "a.txt");
        assert_eq!(
            path,
            Path::new("/data/files/abababababababababababababababab/a.txt")
        );
    }

    #[test]
    fn ensure_dir_creates_private_folders() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("files").join("c1");
        ensure_dir(&dir).unwrap();
        ensure_dir(&dir).unwrap();
        for d in [tmp.path().join("files"), dir] {
            let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, DIR_MODE, "{}", d.display());
        }
    }

    #[test]
    fn placed_part_file_moves_bytes_to_final_path() {
        let tmp = tempfile::tempdir().unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        assert!(is_part_name(
            part.path().file_name().unwrap().to_str().unwrap()
        ));
        part.write(b"hello ").unwrap();
        part.write(b"world").unwrap();
        assert_eq!(part.written(), 11);
        part.close().unwrap();
        let temp_path = part.path().to_path_buf();
        let target = tmp.path().join("greeting.txt");
        part.place(&target).unwrap();
        assert!(part.is_placed());
        drop(part);
        assert_eq!(fs::read(&target).unwrap(), b"hello world");
        assert!(!temp_path.exists());
        assert_eq!(names_in(tmp.path()), ["greeting.txt"]);
    }

    #[test]
    fn place_without_close_works_and_is_repeatable() {
        let tmp = tempfile::tempdir().unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        part.write(b"x").unwrap();
        let target = tmp.path().join("x");
        part.place(&target).unwrap();
        part.place(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"x");
    }

    #[test]
    fn place_replaces_an_existing_file_in_one_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("f");
        fs::write(&target, b"old").unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        part.write(b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"old");
        part.place(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn failed_place_leaves_final_path_and_temp_file_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        part.write(b"data").unwrap();
        part.close().unwrap();
        // A final path in a folder that does not exist: the rename fails.
        let target = tmp.path().join("missing").join("f");
        assert!(part.place(&target).is_err());
        assert!(!part.is_placed());
        assert_eq!(fs::read(part.path()).unwrap(), b"data");
        let temp_path = part.path().to_path_buf();
        drop(part);
        assert!(!temp_path.exists());
    }

    #[test]
    fn dropped_part_file_deletes_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        part.write(b"partial").unwrap();
        let path = part.path().to_path_buf();
        assert!(path.exists());
        drop(part);
        assert!(!path.exists());
        assert!(names_in(tmp.path()).is_empty());
    }

    #[test]
    fn discarded_part_file_is_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut part = PartFile::create(tmp.path()).unwrap();
        part.write(b"partial").unwrap();
        part.close().unwrap();
        let path = part.path().to_path_buf();
        part.discard().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn write_error_is_sticky_and_drop_still_deletes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(".part-00000000000000ff");
        fs::write(&path, b"").unwrap();
        // /dev/full fails every write with ENOSPC, even for root.
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut part = PartFile::from_parts(path.clone(), full);
        let err = part.write(&[0u8; 4096]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC expected, got {err}");
        assert!(part.write(b"more").is_err());
        assert!(part.close().is_err());
        assert!(part.place(&tmp.path().join("final")).is_err());
        assert!(!tmp.path().join("final").exists());
        drop(part);
        assert!(!path.exists());
    }

    #[test]
    fn part_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let part = PartFile::create(tmp.path()).unwrap();
        let mode = fs::metadata(part.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
    }

    #[test]
    fn cleanup_removes_only_temporary_files_not_stored_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let a = files_root(tmp.path()).join("aa");
        let b = files_root(tmp.path()).join("bb");
        ensure_dir(&a).unwrap();
        ensure_dir(&b).unwrap();
        fs::write(a.join(".part-0000000000000001"), b"1").unwrap();
        fs::write(a.join(".part-0000000000000002"), b"2").unwrap();
        fs::write(a.join("kept.txt"), b"k").unwrap();
        fs::write(a.join(".part-notmine"), b"n").unwrap();
        fs::write(b.join(".part-00000000000000aa"), b"stored").unwrap();
        fs::write(b.join(".part-00000000000000bb"), b"3").unwrap();
        fs::create_dir(b.join(".part-00000000000000cc")).unwrap();
        let is_stored = |c: &str, n: &str| c == "bb" && n == ".part-00000000000000aa";
        assert_eq!(cleanup_leftovers(tmp.path(), is_stored).unwrap(), 3);
        assert_eq!(names_in(&a), [".part-notmine", "kept.txt"]);
        assert_eq!(
            names_in(&b),
            [".part-00000000000000aa", ".part-00000000000000cc"]
        );
        assert_eq!(cleanup_leftovers(tmp.path(), is_stored).unwrap(), 0);
    }

    #[test]
    fn servers_sharing_a_tree_clean_up_only_their_own_temporary_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(FILES_DIR).join("ab".repeat(16));
        ensure_dir(&dir).unwrap();
        let a = PartFile::create_owned(&dir, Some("alpha")).unwrap();
        let b = PartFile::create_owned(&dir, Some("beta")).unwrap();
        let legacy = PartFile::create(&dir).unwrap();
        let name = |p: &PartFile| p.path().file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(part_owner(&name(&a)), Some(Some("alpha")));
        assert_eq!(part_owner(&name(&legacy)), Some(None));
        let paths = (
            a.path().to_owned(),
            b.path().to_owned(),
            legacy.path().to_owned(),
        );
        // Left on disk as a crash would leave them.
        std::mem::forget(a);
        std::mem::forget(b);
        std::mem::forget(legacy);
        let (a, b, legacy) = paths;
        let removed = cleanup_leftovers_of(tmp.path(), Some("alpha"), |_, _| false).unwrap();
        assert_eq!(removed, 2);
        assert!(!a.exists() && !legacy.exists());
        assert!(b.exists(), "another server's upload in flight must stay");
        assert_eq!(cleanup_leftovers(tmp.path(), |_, _| false).unwrap(), 1);
        assert!(!b.exists());
    }

    #[test]
    fn server_ids_are_short_and_plain() {
        assert!(check_server_id("web1.example_org").is_ok());
        assert!(check_server_id("").is_err());
        assert!(check_server_id("a-b").is_err());
        assert!(check_server_id("a/b").is_err());
        assert!(check_server_id(&"x".repeat(MAX_SERVER_ID_LEN + 1)).is_err());
        assert!(check_server_id(&default_server_id()).is_ok());
        assert_eq!(part_owner(".part-a-b-0123456789abcdef"), None);
        assert_eq!(part_owner(".part--0123456789abcdef"), None);
    }

    #[test]
    fn cleanup_without_files_folder_finds_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(cleanup_leftovers(tmp.path(), |_, _| false).unwrap(), 0);
    }
}
