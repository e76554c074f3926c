//! The server's SQLite database, `<data dir>/defensive.db` (PROTOCOL.md §8).
//!
//! Tables exactly as §8 declares them (see [`CLIENTS_TABLE_SQL`] and
//! [`FILES_TABLE_SQL`]). A database made by the reference Python peer has
//! the same tables, perhaps with other declared types (`DATETIME`,
//! `BOOLEAN`) or extra `NOT NULL`s; it opens as it is, since only the
//! column names matter and the values are the same.
//!
//! Every acknowledged change must survive a crash, so the journal is WAL
//! with `synchronous=FULL`: each commit is fsynced before it returns.
//! `PRAGMA user_version` records the schema version ([`SCHEMA_VERSION`]);
//! [`Db::open`] migrates older versions step by step. Errors become
//! [`StoreError`]s naming the operation; they never contain key bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use std::cell::Cell;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior};
use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::AesKey;
use sealdrop_protocol::store::{ClientRecord, QuotaOverride, QuotaSetting, StoreError};
use sealdrop_protocol::ClientId;

/// The database's file name in the data directory (§8, revision 2023c).
pub const DB_FILE_NAME: &str = "defensive.db";

/// How long a statement waits for a lock another process holds (an
/// operator's `sqlite3` shell, a backup) before failing with "database is
/// locked". WAL lets readers and the writer proceed together, so only a
/// second writer or a checkpoint can block us, and only briefly. The server
/// runs one event loop, so a wait stalls every connection: two seconds
/// rides out a short lock without freezing the server for long; past it
/// the request gets 2107 and the client retries (§6).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The schema version this server writes into `PRAGMA user_version`.
/// Version 0 is a new database or one made by a peer that does not set
/// it (the Python peer); version 1 has the §8 tables; version 2 takes
/// 32-byte keys; version 3 adds the tables of quotas, file sizes and
/// cksums, and lifetime counters ([`QUOTAS_TABLE_SQL`],
/// [`FILE_META_TABLE_SQL`], [`COUNTERS_TABLE_SQL`]).
pub const SCHEMA_VERSION: i64 = 3;

/// Version 3: a client's own quota, set by an administrator. `MaxBytes`
/// and `MaxFiles` are NULL for the server's setting, -1 for unlimited,
/// else the limit.
pub const QUOTAS_TABLE_SQL: &str =
    "CREATE TABLE quotas(ID BLOB(16) PRIMARY KEY, MaxBytes INTEGER, MaxFiles INTEGER)";

/// Version 3: the size and cksum of each stored file, recorded when it
/// is accepted (files stored before have their size filled in at the
/// next start and no cksum). Beside §8's `files` table, which stays as
/// the protocol declares it.
pub const FILE_META_TABLE_SQL: &str = "CREATE TABLE file_meta(ID BLOB(16), FileName TEXT, Size INTEGER, Cksum INTEGER, PRIMARY KEY(ID, FileName))";

/// Version 3: counters over the database's life (uploads by outcome),
/// added to at each commit.
pub const COUNTERS_TABLE_SQL: &str =
    "CREATE TABLE counters(Name TEXT PRIMARY KEY, Value INTEGER NOT NULL)";

/// Statements kept prepared: every statement of this module fits, so the
/// per-request ones (touch, lookups) are never re-parsed.
const STATEMENT_CACHE_CAPACITY: usize = 32;

/// The `clients` table exactly as §8 declares it.
pub const CLIENTS_TABLE_SQL: &str = "CREATE TABLE clients(ID BLOB(16) PRIMARY KEY, Name TEXT UNIQUE, PublicKey BLOB(160), LastSeen TEXT, AESKey BLOB(16))";

/// The `files` table exactly as §8 declares it.
pub const FILES_TABLE_SQL: &str = "CREATE TABLE files(ID BLOB(16), FileName TEXT, PathName TEXT, Verified INTEGER, PRIMARY KEY(ID, FileName))";

/// Columns this server reads and writes, per table; a table missing one
/// is not a sealdrop table and the database is refused.
const REQUIRED_COLUMNS: [(&str, &[&str]); 2] = [
    (
        "clients",
        &["ID", "Name", "PublicKey", "LastSeen", "AESKey"],
    ),
    ("files", &["ID", "FileName", "PathName", "Verified"]),
];

/// One row of the `files` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// The owning client (`ID`).
    pub client: ClientId,
    /// The stored base name (`FileName`).
    pub file_name: String,
    /// The final path as text (`PathName`).
    pub path_name: String,
    /// Whether a 1029 confirmed the file now at `path_name` (`Verified`).
    pub verified: bool,
}

/// One row of `clients` as the administration commands show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    /// `ID`.
    pub id: ClientId,
    /// `Name`.
    pub name: String,
    /// `LastSeen` as stored (UTC ISO 8601 from this server).
    pub last_seen: Option<String>,
    /// Whether it completed key exchange (`PublicKey` is set).
    pub key_exchanged: bool,
}

/// What `file_meta` records for a stored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileMeta {
    /// Its size in bytes.
    pub size: Option<u64>,
    /// Its POSIX cksum, if it was accepted by a server that kept it.
    pub cksum: Option<u32>,
}

/// Where a group commit stands (see [`Db::set_batching`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// No uncommitted write.
    Idle,
    /// Writes wait in an open transaction for [`Db::commit_batch`].
    Open,
    /// A failed statement made SQLite roll the open transaction back
    /// (a full disk, an I/O error): the next commit must report failure.
    Lost,
}

/// An open `defensive.db`. All calls come from one thread.
pub struct Db {
    conn: Connection,
    /// Group commit on: writes wait for [`Db::commit_batch`].
    batching: bool,
    batch: Cell<Batch>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.conn.path())
            .finish()
    }
}

/// Creates the database file with mode 0600 if it does not exist: it
/// holds the AES keys (§8), and SQLite gives its -wal and -shm files the
/// same mode as the database.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::database(
            format!("create {}", path.display()),
            e,
        )),
    }
}

/// Maps a SQLite error to a [`StoreError`] naming the operation. SQLite's
/// messages name tables and constraints, never bound values, so no key
/// bytes can reach the log this way.
fn op_err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::database(op, e)
}

impl Db {
    /// Opens or creates `<data_dir>/defensive.db` (the folder must exist),
    /// sets WAL, `synchronous=FULL` and [`BUSY_TIMEOUT`], and migrates the
    /// schema to [`SCHEMA_VERSION`].
    pub fn open(data_dir: &Path) -> Result<Db, StoreError> {
        Db::open_path(&data_dir.join(DB_FILE_NAME))
    }

    /// [`Db::open`] for a database at any path.
    pub fn open_path(path: &Path) -> Result<Db, StoreError> {
        create_private(path)?;
        let conn = Connection::open(path).map_err(op_err("open"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(op_err("set busy timeout"))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(op_err("set journal_mode=WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!(
                "{}: journal_mode is {mode}, not WAL (filesystem without shared memory?)",
                path.display()
            );
        }
        // Per connection, not stored in the file: set on every open.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(op_err("set synchronous=FULL"))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        let mut db = Db::from_connection(conn);
        db.migrate()?;
        db.check_columns()?;
        log::debug!(
            "opened {} (schema version {SCHEMA_VERSION})",
            path.display()
        );
        Ok(db)
    }

    fn from_connection(conn: Connection) -> Db {
        Db {
            conn,
            batching: false,
            batch: Cell::new(Batch::Idle),
        }
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(op_err("read user_version"))
    }

    /// The journal mode in effect (`wal` normally).
    pub fn journal_mode(&self) -> Result<String, StoreError> {
        self.conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .map_err(op_err("read journal_mode"))
    }

    /// Checks an existing database without changing it (for
    /// `--check-config`, which may run beside a live server): opens it
    /// read-only, refuses a newer schema or missing columns. Returns a
    /// one-line description.
    pub fn check_read_only(path: &Path) -> Result<String, StoreError> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(op_err("open read-only"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(op_err("set busy timeout"))?;
        let db = Db::from_connection(conn);
        let version = db.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid(format!(
                "database: schema version {version} is newer than this server's {SCHEMA_VERSION}"
            )));
        }
        if version == 0 && db.columns("clients")?.is_empty() {
            return Ok("empty database; the tables will be created at start".into());
        }
        db.check_columns()?;
        Ok(format!(
            "schema version {version}, {} client(s)",
            db.client_count()?
        ))
    }

    /// Brings the schema from its recorded version to [`SCHEMA_VERSION`],
    /// one step per version, each in its own transaction with the new
    /// `user_version`. A database from a newer server is refused rather
    /// than misread.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let version = self.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid(format!(
                "database: schema version {version} is newer than this server's {SCHEMA_VERSION}"
            )));
        }
        if version < 1 {
            self.migrate_to_1()?;
            log::info!("database schema set up (version 0 -> 1)");
        }
        if version < 2 {
            self.migrate_to_2()?;
            log::info!("database schema migrated (version {} -> 2)", version.max(1));
        }
        if version < 3 {
            self.migrate_to_3()?;
            log::info!("database schema migrated (version {} -> 3)", version.max(2));
        }
        // Later versions: `if version < 4 { self.migrate_to_4()?; }` and so on.
        Ok(())
    }

    /// Version 2: `AESKey` may hold a 32-byte key (revisions 2024a/c,
    /// PROTOCOL.md §9) besides the 16-byte one. The column's declared type
    /// stays `BLOB(16)` (§8; SQLite does not enforce lengths), so no data
    /// changes: the new version number keeps an older server, which
    /// cannot read a 32-byte key, from opening the database.
    fn migrate_to_2(&mut self) -> Result<(), StoreError> {
        let op = "migrate schema to version 2";
        self.conn
            .pragma_update(None, "user_version", 2i64)
            .map_err(op_err(op))
    }

    /// Version 3: the tables of quotas, file sizes and cksums, and
    /// counters. §8's tables are untouched, so a database stays readable by
    /// any peer; the new version keeps an older server, which would not
    /// keep these tables up to date, from opening it.
    fn migrate_to_3(&mut self) -> Result<(), StoreError> {
        let op = "migrate schema to version 3";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(op_err(op))?;
        for sql in [QUOTAS_TABLE_SQL, FILE_META_TABLE_SQL, COUNTERS_TABLE_SQL] {
            let sql = sql.replacen("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1);
            tx.execute_batch(&sql).map_err(op_err(op))?;
        }
        tx.pragma_update(None, "user_version", 3i64)
            .map_err(op_err(op))?;
        tx.commit().map_err(op_err(op))
    }

    /// Version 1: the §8 tables. A database made by the Python peer already
    /// has them (it leaves user_version at 0); they are kept as they are.
    fn migrate_to_1(&mut self) -> Result<(), StoreError> {
        let op = "migrate schema to version 1";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(op_err(op))?;
        for sql in [CLIENTS_TABLE_SQL, FILES_TABLE_SQL] {
            let sql = sql.replacen("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1);
            tx.execute_batch(&sql).map_err(op_err(op))?;
        }
        tx.pragma_update(None, "user_version", 1i64)
            .map_err(op_err(op))?;
        tx.commit().map_err(op_err(op))
    }

    /// Refuses tables that lack a column this server uses.
    fn check_columns(&self) -> Result<(), StoreError> {
        for (table, required) in REQUIRED_COLUMNS {
            let present = self.columns(table)?;
            for column in required {
                if !present
                    .iter()
                    .any(|(name, _)| name.eq_ignore_ascii_case(column))
                {
                    return Err(StoreError::Invalid(format!(
                        "database: table {table} has no column {column}; not a sealdrop database"
                    )));
                }
            }
        }
        Ok(())
    }

    /// `(name, declared type)` of each column of `table`, in order.
    pub fn columns(&self, table: &str) -> Result<Vec<(String, String)>, StoreError> {
        let op = "read table columns";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, type FROM pragma_table_info(?1) ORDER BY cid")
            .map_err(op_err(op))?;
        let rows = stmt
            .query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(op_err(op))?;
        rows.collect::<Result<_, _>>().map_err(op_err(op))
    }

    /// The client with this id, if any.
    pub fn client_by_id(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        let op = "look up client by id";
        self.conn
            .prepare_cached("SELECT ID, Name, PublicKey, AESKey FROM clients WHERE ID = ?1")
            .map_err(op_err(op))?
            .query_row([&id.0[..]], client_from_row)
            .optional()
            .map_err(op_err(op))?
            .transpose()
            .map_err(|e| StoreError::database(op, e))
    }

    /// The client with this name, if any.
    pub fn client_by_name(&self, name: &str) -> Result<Option<ClientRecord>, StoreError> {
        let op = "look up client by name";
        self.conn
            .prepare_cached("SELECT ID, Name, PublicKey, AESKey FROM clients WHERE Name = ?1")
            .map_err(op_err(op))?
            .query_row([name], client_from_row)
            .optional()
            .map_err(op_err(op))?
            .transpose()
            .map_err(|e| StoreError::database(op, e))
    }

    /// Group commit. With batching on, writes are not committed one by one:
    /// they collect in one open transaction until [`Db::commit_batch`], so
    /// the requests of one event-loop pass share one WAL fsync. Whoever
    /// turns it on must not acknowledge a write before that commit
    /// succeeded. Off (the default), each write is committed and fsynced
    /// before it returns. Turning it off commits what is waiting.
    pub fn set_batching(&mut self, on: bool) -> Result<(), StoreError> {
        if !on {
            self.commit_batch()?;
        }
        self.batching = on;
        Ok(())
    }

    /// Whether writes wait for [`Db::commit_batch`] (or a failed batch
    /// waits to be reported).
    pub fn has_batch(&self) -> bool {
        self.batch.get() != Batch::Idle
    }

    /// Commits the writes made since the last commit (one fsync), or rolls
    /// them all back and fails if one of them or the commit failed. Does
    /// nothing when nothing waits.
    pub fn commit_batch(&self) -> Result<(), StoreError> {
        let state = self.batch.replace(Batch::Idle);
        let open = !self.conn.is_autocommit();
        if state == Batch::Lost {
            if open {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(StoreError::database(
                "commit",
                "a failed statement rolled back the changes awaiting commit",
            ));
        }
        if !open {
            return Ok(());
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(op_err("commit")(e));
        }
        Ok(())
    }

    /// Runs one write: inside the open batch when batching (opening it
    /// first), else committed on its own.
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        if self.batching && self.conn.is_autocommit() {
            if self.batch.get() == Batch::Open {
                // The transaction vanished under us (see below).
                self.batch.set(Batch::Lost);
            }
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(op_err(op))?;
            if self.batch.get() == Batch::Idle {
                self.batch.set(Batch::Open);
            }
        }
        let result = f(&self.conn);
        if self.batch.get() == Batch::Open && self.conn.is_autocommit() {
            // SQLite rolls a whole transaction back after some errors
            // (SQLITE_FULL, SQLITE_IOERR): the batch's earlier writes are gone.
            self.batch.set(Batch::Lost);
        }
        result.map_err(op_err(op))
    }

    /// Inserts a new client (no key yet, LastSeen `seen`, a
    /// [`utc_timestamp`]). If `replace` is
    /// given, that client is deleted first in the same transaction, but
    /// only if it has no public key (§3: only an unkeyed name is released);
    /// a keyed one stays and the insert then fails on the taken name.
    pub fn register_client(
        &self,
        id: &ClientId,
        name: &str,
        replace: Option<&ClientId>,
        seen: &str,
    ) -> Result<(), StoreError> {
        self.write("register client", |c| {
            // Atomic on its own: a transaction when none is open, else a
            // savepoint inside the batch.
            let (begin, done, undo) = if c.is_autocommit() {
                ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
            } else {
                (
                    "SAVEPOINT register",
                    "RELEASE register",
                    "ROLLBACK TO register; RELEASE register",
                )
            };
            c.execute_batch(begin)?;
            let result = (|| {
                if let Some(old) = replace {
                    let deleted = c
                        .prepare_cached("DELETE FROM clients WHERE ID = ?1 AND PublicKey IS NULL")?
                        .execute([&old.0[..]])?;
                    if deleted == 0 {
                        log::warn!(
                            "register: client {} to replace is gone or keyed",
                            old.to_hex()
                        );
                    }
                }
                c.prepare_cached("INSERT INTO clients (ID, Name, LastSeen) VALUES (?1, ?2, ?3)")?
                    .execute((&id.0[..], name, seen))?;
                Ok(())
            })();
            match result {
                Ok(()) => c.execute_batch(done),
                Err(e) => {
                    if !c.is_autocommit() {
                        let _ = c.execute_batch(undo);
                    }
                    Err(e)
                }
            }
        })
    }

    /// Stores the client's public key and the AES key of the 2102 as its
    /// last key, and sets LastSeen to `seen`. Fails for an unknown client.
    pub fn set_public_key(
        &self,
        id: &ClientId,
        public_key: &[u8; PUBLIC_KEY_LEN],
        aes_key: &AesKey,
        seen: &str,
    ) -> Result<(), StoreError> {
        let op = "store public key";
        let changed = self.write(op, |c| {
            c.prepare_cached(
                "UPDATE clients SET PublicKey = ?1, AESKey = ?2, LastSeen = ?3 WHERE ID = ?4",
            )?
            .execute((&public_key[..], aes_key.as_bytes(), seen, &id.0[..]))
        })?;
        expect_one_row(op, changed)
    }

    /// Stores the AES key of a 2105 as the client's last key. Fails for an
    /// unknown client.
    pub fn set_last_key(&self, id: &ClientId, aes_key: &AesKey) -> Result<(), StoreError> {
        let op = "store last key";
        let changed = self.write(op, |c| {
            c.prepare_cached("UPDATE clients SET AESKey = ?1 WHERE ID = ?2")?
                .execute((aes_key.as_bytes(), &id.0[..]))
        })?;
        expect_one_row(op, changed)
    }

    /// Sets LastSeen to `seen` (§6: on every request). One cached UPDATE; an
    /// unknown id changes nothing and is not an error. A second touch
    /// within the same second matches no row, so it writes nothing and
    /// costs no fsync.
    pub fn touch(&self, id: &ClientId, seen: &str) -> Result<(), StoreError> {
        self.write("update LastSeen", |c| {
            c.prepare_cached(
                "UPDATE clients SET LastSeen = ?1 WHERE ID = ?2 AND LastSeen IS NOT ?1",
            )?
            .execute((seen, &id.0[..]))
        })?;
        Ok(())
    }

    /// The client's LastSeen text, if the client exists and has one.
    pub fn last_seen(&self, id: &ClientId) -> Result<Option<String>, StoreError> {
        let op = "read LastSeen";
        let found: Option<Option<String>> = self
            .conn
            .prepare_cached("SELECT LastSeen FROM clients WHERE ID = ?1")
            .map_err(op_err(op))?
            .query_row([&id.0[..]], |row| row.get(0))
            .optional()
            .map_err(op_err(op))?;
        Ok(found.flatten())
    }

    /// Number of registered clients.
    pub fn client_count(&self) -> Result<u64, StoreError> {
        let op = "count clients";
        let count: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM clients")
            .map_err(op_err(op))?
            .query_row([], |row| row.get(0))
            .map_err(op_err(op))?;
        Ok(count.unsigned_abs())
    }

    /// Records a complete upload's name with Verified = 0, only if the
    /// name has no row yet: a verified file's row keeps Verified = 1 until
    /// a new upload of the name is verified (§6).
    pub fn add_unverified_file(
        &self,
        id: &ClientId,
        file_name: &str,
        path_name: &str,
    ) -> Result<(), StoreError> {
        self.write("record received file", |c| {
            c.prepare_cached(
                "INSERT OR IGNORE INTO files (ID, FileName, PathName, Verified) \
                 VALUES (?1, ?2, ?3, 0)",
            )?
            .execute((&id.0[..], file_name, path_name))
        })?;
        Ok(())
    }

    /// Records the file now at `path_name` as verified (1029), creating or
    /// replacing the name's row.
    pub fn mark_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        path_name: &str,
    ) -> Result<(), StoreError> {
        self.write("record verified file", |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO files (ID, FileName, PathName, Verified) \
                 VALUES (?1, ?2, ?3, 1)",
            )?
            .execute((&id.0[..], file_name, path_name))
        })?;
        Ok(())
    }

    /// Sets a file's row back to Verified = 0 (its file is missing).
    pub fn mark_unverified(&self, id: &ClientId, file_name: &str) -> Result<(), StoreError> {
        self.write("unmark missing file", |c| {
            c.prepare_cached("UPDATE files SET Verified = 0 WHERE ID = ?1 AND FileName = ?2")?
                .execute((&id.0[..], file_name))
        })?;
        Ok(())
    }

    /// The row of one client's file, if any.
    pub fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRow>, StoreError> {
        let op = "look up file";
        self.conn
            .prepare_cached(
                "SELECT ID, FileName, PathName, Verified FROM files \
                 WHERE ID = ?1 AND FileName = ?2",
            )
            .map_err(op_err(op))?
            .query_row((&id.0[..], file_name), file_from_row)
            .optional()
            .map_err(op_err(op))?
            .transpose()
            .map_err(|e| StoreError::database(op, e))
    }

    /// Every row of the `files` table, by client id and name.
    pub fn files(&self) -> Result<Vec<FileRow>, StoreError> {
        let op = "list files";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT ID, FileName, PathName, Verified FROM files ORDER BY ID, FileName",
            )
            .map_err(op_err(op))?;
        let rows = stmt.query_map([], file_from_row).map_err(op_err(op))?;
        let mut files = Vec::new();
        for row in rows {
            match row.map_err(op_err(op))? {
                Ok(file) => files.push(file),
                Err(e) => log::warn!("database: {op}: skipping a row: {e}"),
            }
        }
        Ok(files)
    }

    /// Opens `<data_dir>/defensive.db` read-only, for the administration
    /// commands that only look: no lock is taken, nothing is migrated or
    /// written, and a running server is not disturbed (WAL lets a reader
    /// beside the writer). A newer schema is refused; an older one reads
    /// as far as it goes (no quotas, sizes or counters before version 3).
    pub fn open_read_only(data_dir: &Path) -> Result<Db, StoreError> {
        Db::open_read_only_at(&data_dir.join(DB_FILE_NAME))
    }

    /// [`Db::open_read_only`] for the database file at `path`.
    pub fn open_read_only_at(path: &Path) -> Result<Db, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Invalid(format!(
                "no database at {} (has a server ever run on this data directory?)",
                path.display()
            )));
        }
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(op_err("open read-only"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(op_err("set busy timeout"))?;
        let db = Db::from_connection(conn);
        let version = db.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid(format!(
                "database: schema version {version} is newer than this program's {SCHEMA_VERSION}"
            )));
        }
        db.check_columns()?;
        Ok(db)
    }

    /// The recorded sizes of the verified files added up (what
    /// `sealdrop_files_size_bytes` shows; the same sum as PostgreSQL's).
    pub fn stored_bytes(&self) -> Result<u64, StoreError> {
        let op = "add up the stored files' sizes";
        if !self.has_table("file_meta")? {
            return Ok(0);
        }
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT coalesce(sum(m.Size), 0) FROM file_meta m \
                 JOIN files f ON f.ID = m.ID AND f.FileName = m.FileName \
                 WHERE f.Verified = 1",
            )
            .map_err(op_err(op))?
            .query_row([], |row| row.get(0))
            .map_err(op_err(op))?;
        Ok(n.unsigned_abs())
    }

    /// Whether the database has `table` (the version 3 tables are missing
    /// from an older database opened read-only).
    pub fn has_table(&self, table: &str) -> Result<bool, StoreError> {
        let op = "look up table";
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .map_err(op_err(op))?
            .query_row([table], |row| row.get(0))
            .map_err(op_err(op))?;
        Ok(n > 0)
    }

    /// Every client, by name.
    pub fn client_rows(&self) -> Result<Vec<ClientRow>, StoreError> {
        let op = "list clients";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT ID, Name, LastSeen, PublicKey IS NOT NULL FROM clients ORDER BY Name, ID",
            )
            .map_err(op_err(op))?;
        let rows = stmt
            .query_map([], |row| {
                let id = client_id_from(row.get_ref(0)?);
                let name = match row.get_ref(1)? {
                    ValueRef::Null => Ok(String::new()),
                    other => text_from(other, "Name"),
                };
                let last_seen = match row.get_ref(2)? {
                    ValueRef::Null => Ok(None),
                    other => text_from(other, "LastSeen").map(Some),
                };
                let keyed: bool = row.get(3)?;
                Ok((|| {
                    Ok::<_, BadValue>(ClientRow {
                        id: id?,
                        name: name?,
                        last_seen: last_seen?,
                        key_exchanged: keyed,
                    })
                })())
            })
            .map_err(op_err(op))?;
        let mut clients = Vec::new();
        for row in rows {
            match row.map_err(op_err(op))? {
                Ok(c) => clients.push(c),
                Err(e) => log::warn!("database: {op}: skipping a row: {e}"),
            }
        }
        Ok(clients)
    }

    /// The rows of one client's files, by name.
    pub fn files_of(&self, id: &ClientId) -> Result<Vec<FileRow>, StoreError> {
        let op = "list a client's files";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = ?1 ORDER BY FileName",
            )
            .map_err(op_err(op))?;
        let rows = stmt
            .query_map([&id.0[..]], file_from_row)
            .map_err(op_err(op))?;
        let mut files = Vec::new();
        for row in rows {
            match row.map_err(op_err(op))? {
                Ok(file) => files.push(file),
                Err(e) => log::warn!("database: {op}: skipping a row: {e}"),
            }
        }
        Ok(files)
    }

    /// The recorded size and cksum of a file (nothing before version 3).
    pub fn file_meta(&self, id: &ClientId, file_name: &str) -> Result<FileMeta, StoreError> {
        let op = "look up file size";
        if !self.has_table("file_meta")? {
            return Ok(FileMeta::default());
        }
        let found = self
            .conn
            .prepare_cached("SELECT Size, Cksum FROM file_meta WHERE ID = ?1 AND FileName = ?2")
            .map_err(op_err(op))?
            .query_row((&id.0[..], file_name), |row| {
                let size: Option<i64> = row.get(0)?;
                let cksum: Option<i64> = row.get(1)?;
                Ok(FileMeta {
                    size: size.and_then(|n| u64::try_from(n).ok()),
                    cksum: cksum.and_then(|n| u32::try_from(n).ok()),
                })
            })
            .optional()
            .map_err(op_err(op))?;
        Ok(found.unwrap_or_default())
    }

    /// Records a stored file's size and (if known) cksum.
    pub fn record_file_meta(
        &self,
        id: &ClientId,
        file_name: &str,
        size: u64,
        cksum: Option<u32>,
    ) -> Result<(), StoreError> {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.write("record file size", |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO file_meta (ID, FileName, Size, Cksum) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute((&id.0[..], file_name, size, cksum.map(i64::from)))
        })?;
        Ok(())
    }

    /// Deletes a file's row and its size record; whether it had a row.
    pub fn delete_file_row(&self, id: &ClientId, file_name: &str) -> Result<bool, StoreError> {
        self.write("delete file record", |c| {
            c.prepare_cached("DELETE FROM file_meta WHERE ID = ?1 AND FileName = ?2")?
                .execute((&id.0[..], file_name))?;
            c.prepare_cached("DELETE FROM files WHERE ID = ?1 AND FileName = ?2")?
                .execute((&id.0[..], file_name))
                .map(|n| n > 0)
        })
    }

    /// Deletes a client's row and its own quota; whether it had a row.
    pub fn delete_client(&self, id: &ClientId) -> Result<bool, StoreError> {
        self.write("delete client", |c| {
            c.prepare_cached("DELETE FROM quotas WHERE ID = ?1")?
                .execute([&id.0[..]])?;
            c.prepare_cached("DELETE FROM clients WHERE ID = ?1")?
                .execute([&id.0[..]])
                .map(|n| n > 0)
        })
    }

    /// A client's own quota (all [`QuotaSetting::Default`] without one).
    pub fn quota_override(&self, id: &ClientId) -> Result<QuotaOverride, StoreError> {
        let op = "look up quota";
        if !self.has_table("quotas")? {
            return Ok(QuotaOverride::default());
        }
        let found = self
            .conn
            .prepare_cached("SELECT MaxBytes, MaxFiles FROM quotas WHERE ID = ?1")
            .map_err(op_err(op))?
            .query_row([&id.0[..]], |row| {
                Ok(QuotaOverride {
                    bytes: setting_from(row.get(0)?),
                    files: setting_from(row.get(1)?),
                })
            })
            .optional()
            .map_err(op_err(op))?;
        Ok(found.unwrap_or_default())
    }

    /// Sets a client's own quota; all-default deletes it.
    pub fn set_quota(&self, id: &ClientId, quota: &QuotaOverride) -> Result<(), StoreError> {
        if quota.is_default() {
            self.write("clear quota", |c| {
                c.prepare_cached("DELETE FROM quotas WHERE ID = ?1")?
                    .execute([&id.0[..]])
            })?;
            return Ok(());
        }
        self.write("set quota", |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO quotas (ID, MaxBytes, MaxFiles) VALUES (?1, ?2, ?3)",
            )?
            .execute((&id.0[..], setting_to(quota.bytes), setting_to(quota.files)))
        })?;
        Ok(())
    }

    /// Adds to the lifetime counters.
    pub fn add_counters(&self, deltas: &[(&str, u64)]) -> Result<(), StoreError> {
        self.write("add to counters", |c| {
            for (name, delta) in deltas.iter().filter(|(_, d)| *d > 0) {
                let delta = i64::try_from(*delta).unwrap_or(i64::MAX);
                c.prepare_cached(
                    "INSERT INTO counters (Name, Value) VALUES (?1, ?2) \
                     ON CONFLICT(Name) DO UPDATE SET Value = Value + excluded.Value",
                )?
                .execute((*name, delta))?;
            }
            Ok(())
        })
    }

    /// The lifetime counters, by name (none before version 3).
    pub fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let op = "read counters";
        if !self.has_table("counters")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT Name, Value FROM counters ORDER BY Name")
            .map_err(op_err(op))?;
        let rows = stmt
            .query_map([], |row| {
                let value: i64 = row.get(1)?;
                Ok((row.get::<_, String>(0)?, value.unsigned_abs()))
            })
            .map_err(op_err(op))?;
        rows.collect::<Result<_, _>>().map_err(op_err(op))
    }

    /// Starts a read transaction, so the queries that follow see one
    /// state of the database (a server may commit meanwhile); ended by
    /// [`Db::end_snapshot`].
    pub fn begin_snapshot(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .map_err(op_err("begin read"))
    }

    /// [`Db::begin_snapshot`], with the snapshot taken now (a deferred
    /// transaction takes it at its first read): what later queries in it
    /// see is the database as it is at this call.
    pub fn begin_snapshot_now(&self) -> Result<(), StoreError> {
        self.begin_snapshot()?;
        if let Err(e) = self.has_table("files") {
            self.end_snapshot();
            return Err(e);
        }
        Ok(())
    }

    /// The database file, if it is one (not in memory).
    pub fn path(&self) -> Option<PathBuf> {
        self.conn
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    /// Ends [`Db::begin_snapshot`].
    pub fn end_snapshot(&self) {
        let _ = self.conn.execute_batch("COMMIT");
    }

    /// The underlying connection, for tests in this crate.
    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// A quota column's value: NULL the server's setting, -1 unlimited.
pub(crate) fn setting_from(value: Option<i64>) -> QuotaSetting {
    match value {
        None => QuotaSetting::Default,
        Some(n) if n < 0 => QuotaSetting::Unlimited,
        Some(n) => QuotaSetting::Max(n.unsigned_abs()),
    }
}

pub(crate) fn setting_to(setting: QuotaSetting) -> Option<i64> {
    match setting {
        QuotaSetting::Default => None,
        QuotaSetting::Unlimited => Some(-1),
        QuotaSetting::Max(n) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
    }
}

/// An UPDATE of one client must have found it.
fn expect_one_row(op: &str, changed: usize) -> Result<(), StoreError> {
    if changed == 0 {
        return Err(StoreError::database(op, "no such client"));
    }
    Ok(())
}

/// A stored value of the wrong shape (it names the column, never the
/// value's bytes).
#[derive(Debug)]
enum BadValue {
    /// A blob of the wrong length.
    Size {
        column: &'static str,
        len: usize,
        want: usize,
    },
    /// A value of the wrong SQLite type.
    Type {
        column: &'static str,
        found: rusqlite::types::Type,
        want: &'static str,
    },
    /// Text that is not UTF-8.
    NotUtf8 { column: &'static str },
}

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadValue::Size { column, len, want } => {
                write!(f, "{column} of {len} bytes, not {want}")
            }
            BadValue::Type {
                column,
                found,
                want,
            } => write!(f, "{column} is {found}, not {want}"),
            BadValue::NotUtf8 { column } => write!(f, "{column} is not UTF-8"),
        }
    }
}

/// A 16-byte `ID` blob.
fn client_id_from(value: ValueRef<'_>) -> Result<ClientId, BadValue> {
    match value {
        ValueRef::Blob(b) => b.try_into().map(ClientId).map_err(|_| BadValue::Size {
            column: "ID",
            len: b.len(),
            want: 16,
        }),
        other => Err(BadValue::Type {
            column: "ID",
            found: other.data_type(),
            want: "a blob",
        }),
    }
}

/// Text, also accepting a blob holding UTF-8 (some peers bind bytes).
fn text_from(value: ValueRef<'_>, column: &'static str) -> Result<String, BadValue> {
    match value {
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            String::from_utf8(t.to_vec()).map_err(|_| BadValue::NotUtf8 { column })
        }
        other => Err(BadValue::Type {
            column,
            found: other.data_type(),
            want: "text",
        }),
    }
}

/// `ID, Name, PublicKey, AESKey` to a record. The outer error is SQLite's,
/// the inner one a malformed value (which names the column, never its
/// bytes).
fn client_from_row(row: &Row<'_>) -> rusqlite::Result<Result<ClientRecord, BadValue>> {
    let id = client_id_from(row.get_ref(0)?);
    let name = text_from(row.get_ref(1)?, "Name");
    let public_key = match row.get_ref(2)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => <[u8; PUBLIC_KEY_LEN]>::try_from(b)
            .map(|k| Some(Box::new(k)))
            .map_err(|_| BadValue::Size {
                column: "PublicKey",
                len: b.len(),
                want: PUBLIC_KEY_LEN,
            }),
        other => Err(BadValue::Type {
            column: "PublicKey",
            found: other.data_type(),
            want: "a blob",
        }),
    };
    let last_key = match row.get_ref(3)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => AesKey::from_slice(b).map(Some).ok_or(BadValue::Size {
            column: "AESKey",
            len: b.len(),
            want: 16,
        }),
        other => Err(BadValue::Type {
            column: "AESKey",
            found: other.data_type(),
            want: "a blob",
        }),
    };
    Ok((|| {
        Ok(ClientRecord {
            id: id?,
            name: name?,
            public_key: public_key?,
            last_key: last_key?,
        })
    })())
}

/// `Verified` as stored by any peer: an integer (a Python bool is 0 or 1),
/// or text such as `"1"`/`"true"` in a `BOOLEAN` column.
fn verified_from(value: ValueRef<'_>) -> bool {
    match value {
        ValueRef::Integer(n) => n != 0,
        ValueRef::Real(x) => x != 0.0,
        ValueRef::Text(t) => matches!(
            std::str::from_utf8(t).map(str::trim),
            Ok("1" | "true" | "TRUE" | "True")
        ),
        ValueRef::Null | ValueRef::Blob(_) => false,
    }
}

/// `ID, FileName, PathName, Verified` to a [`FileRow`].
fn file_from_row(row: &Row<'_>) -> rusqlite::Result<Result<FileRow, BadValue>> {
    let client = client_id_from(row.get_ref(0)?);
    let file_name = text_from(row.get_ref(1)?, "FileName");
    let path_name = match row.get_ref(2)? {
        ValueRef::Null => Ok(String::new()),
        other => text_from(other, "PathName"),
    };
    let verified = verified_from(row.get_ref(3)?);
    Ok((|| {
        Ok(FileRow {
            client: client?,
            file_name: file_name?,
            path_name: path_name?,
            verified,
        })
    })())
}

/// The current time as LastSeen text (§8), for tests: the store is told
/// the time by its caller.
#[cfg(test)]
pub fn now_utc() -> String {
    utc_timestamp(SystemTime::now())
}

/// `t` as UTC ISO 8601, `YYYY-MM-DDTHH:MM:SSZ` (whole seconds; a time
/// before 1970 prints as the epoch).
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn open_temp() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        (dir, db)
    }

    fn table_sql(db: &Db, table: &str) -> String {
        db.connection()
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |row| row.get(0),
            )
            .unwrap()
    }

    fn pk(byte: u8) -> [u8; PUBLIC_KEY_LEN] {
        [byte; PUBLIC_KEY_LEN]
    }

    #[test]
    fn schema_matches_protocol_section_8_exactly() {
        let (_dir, db) = open_temp();
        assert_eq!(table_sql(&db, "clients"), CLIENTS_TABLE_SQL);
        assert_eq!(table_sql(&db, "files"), FILES_TABLE_SQL);
        let clients = db.columns("clients").unwrap();
        let expected = [
            ("ID", "BLOB(16)"),
            ("Name", "TEXT"),
            ("PublicKey", "BLOB(160)"),
            ("LastSeen", "TEXT"),
            ("AESKey", "BLOB(16)"),
        ];
        let got: Vec<(&str, &str)> = clients
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        assert_eq!(got, expected);
        let files = db.columns("files").unwrap();
        let got: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("ID", "BLOB(16)"),
                ("FileName", "TEXT"),
                ("PathName", "TEXT"),
                ("Verified", "INTEGER")
            ]
        );
    }

    #[test]
    fn new_database_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let _db = Db::open(tmp.path()).unwrap();
        let mode = std::fs::metadata(tmp.path().join(DB_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn journal_is_wal_and_sync_is_full() {
        let (_dir, db) = open_temp();
        assert_eq!(db.journal_mode().unwrap(), "wal");
        let sync: i64 = db
            .connection()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL is 2");
        let timeout: i64 = db
            .connection()
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        assert_eq!(timeout, BUSY_TIMEOUT.as_millis() as i64);
    }

    #[test]
    fn new_database_gets_current_schema_version() {
        let (_dir, db) = open_temp();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Db::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Db::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    /// A version 1 database (sealdrop before the 2024 revisions) migrates
    /// in place to version 2: its rows are untouched, and the AESKey column
    /// then takes 32-byte keys too.
    #[test]
    fn a_version_1_database_migrates_in_place_and_keeps_16_and_32_byte_keys() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.execute_batch(&format!("{CLIENTS_TABLE_SQL}; {FILES_TABLE_SQL};"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1i64).unwrap();
        conn.execute(
            "INSERT INTO clients VALUES (?1, 'old', ?2, '2025-01-01T00:00:00Z', ?3)",
            (&[1u8; 16][..], &pk(1)[..], &[5u8; 16][..]),
        )
        .unwrap();
        drop(conn);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let old = db.client_by_name("old").unwrap().unwrap();
        assert_eq!(old.last_key, Some(AesKey::from_bytes([5; 16])));
        let key256 = AesKey::from_slice(&[6u8; 32]).unwrap();
        db.register_client(&ClientId([2; 16]), "new", None, &now_utc())
            .unwrap();
        db.set_public_key(&ClientId([2; 16]), &pk(2), &key256, &now_utc())
            .unwrap();
        let new = db.client_by_name("new").unwrap().unwrap();
        assert_eq!(new.last_key, Some(key256));
        // The schema text is still §8's.
        let sql: String = db
            .connection()
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'clients'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(sql, CLIENTS_TABLE_SQL);
    }

    /// A version 2 database gains the quota, file size and counter tables
    /// (empty) and keeps §8's tables and rows as they were.
    #[test]
    fn a_version_2_database_migrates_to_3_with_empty_new_tables() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.execute_batch(&format!("{CLIENTS_TABLE_SQL}; {FILES_TABLE_SQL};"))
            .unwrap();
        conn.pragma_update(None, "user_version", 2i64).unwrap();
        conn.execute(
            "INSERT INTO files VALUES (?1, 'a', '/x/a', 1)",
            [&[1u8; 16][..]],
        )
        .unwrap();
        drop(conn);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.schema_version().unwrap(), 3);
        assert_eq!(table_sql(&db, "quotas"), QUOTAS_TABLE_SQL);
        assert_eq!(table_sql(&db, "file_meta"), FILE_META_TABLE_SQL);
        assert_eq!(table_sql(&db, "counters"), COUNTERS_TABLE_SQL);
        assert_eq!(table_sql(&db, "files"), FILES_TABLE_SQL);
        assert_eq!(db.files().unwrap().len(), 1);
        assert!(db.counters().unwrap().is_empty());
    }

    #[test]
    fn quotas_sizes_and_counters_round_trip() {
        let (_dir, db) = open_temp();
        let id = ClientId([3; 16]);
        assert!(db.quota_override(&id).unwrap().is_default());
        let own = QuotaOverride {
            bytes: QuotaSetting::Unlimited,
            files: QuotaSetting::Max(7),
        };
        db.set_quota(&id, &own).unwrap();
        assert_eq!(db.quota_override(&id).unwrap(), own);
        db.set_quota(&id, &QuotaOverride::default()).unwrap();
        assert!(db.quota_override(&id).unwrap().is_default());

        db.mark_verified(&id, "f", "/p/f").unwrap();
        db.record_file_meta(&id, "f", 1234, Some(99)).unwrap();
        assert_eq!(
            db.file_meta(&id, "f").unwrap(),
            FileMeta {
                size: Some(1234),
                cksum: Some(99)
            }
        );
        assert!(db.delete_file_row(&id, "f").unwrap());
        assert!(!db.delete_file_row(&id, "f").unwrap());
        assert_eq!(db.file_meta(&id, "f").unwrap(), FileMeta::default());

        db.add_counters(&[("verified", 2), ("aborted", 0)]).unwrap();
        db.add_counters(&[("verified", 3), ("expired", 1)]).unwrap();
        assert_eq!(
            db.counters().unwrap(),
            [("expired".to_string(), 1), ("verified".to_string(), 5)]
        );
    }

    #[test]
    fn a_read_only_view_of_a_version_2_database_has_no_quotas_sizes_or_counters() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.execute_batch(&format!("{CLIENTS_TABLE_SQL}; {FILES_TABLE_SQL};"))
            .unwrap();
        conn.pragma_update(None, "user_version", 2i64).unwrap();
        conn.execute(
            "INSERT INTO clients (ID, Name, LastSeen) VALUES (?1, 'zoe', '2025-01-01T00:00:00Z')",
            [&[4u8; 16][..]],
        )
        .unwrap();
        drop(conn);
        let db = Db::open_read_only(dir.path()).unwrap();
        assert_eq!(db.schema_version().unwrap(), 2, "nothing migrated");
        let clients = db.client_rows().unwrap();
        assert_eq!(clients.len(), 1);
        assert!(!clients[0].key_exchanged);
        assert!(db.quota_override(&ClientId([4; 16])).unwrap().is_default());
        assert!(db.counters().unwrap().is_empty());
        assert!(Db::open_read_only(&dir.path().join("nowhere")).is_err());
    }

    #[test]
    fn foreign_tables_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.execute_batch("CREATE TABLE clients(ID BLOB, Whatever TEXT);")
            .unwrap();
        drop(conn);
        let err = Db::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no column Name"), "{err}");
    }

    #[test]
    fn opens_a_python_peer_database_with_old_declared_types() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.execute_batch(
            "CREATE TABLE clients (ID BLOB(16) PRIMARY KEY, Name TEXT NOT NULL UNIQUE,
                 PublicKey BLOB(160), LastSeen DATETIME, AESKey BLOB(16));
             CREATE TABLE files (ID BLOB(16) NOT NULL, FileName TEXT NOT NULL,
                 PathName TEXT NOT NULL, Verified BOOLEAN NOT NULL DEFAULT 0,
                 PRIMARY KEY (ID, FileName));",
        )
        .unwrap();
        let id = [7u8; 16];
        conn.execute(
            "INSERT INTO clients VALUES (?1, 'alice', ?2, '2024-05-01T10:00:00Z', ?3)",
            (&id[..], &pk(1)[..], &[9u8; 16][..]),
        )
        .unwrap();
        conn.execute(
            "INSERT INTO files VALUES (?1, 'a.txt', './files/x/a.txt', 1)",
            [&id[..]],
        )
        .unwrap();
        drop(conn);

        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let client = db.client_by_name("alice").unwrap().unwrap();
        assert_eq!(client.id, ClientId(id));
        assert_eq!(client.public_key.as_deref(), Some(&pk(1)));
        assert_eq!(client.last_key, Some(AesKey::from_bytes([9; 16])));
        assert_eq!(
            db.last_seen(&ClientId(id)).unwrap().as_deref(),
            Some("2024-05-01T10:00:00Z")
        );
        let files = db.files().unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].verified);
        // And it stays writable with the new code.
        db.touch(&ClientId(id), &now_utc()).unwrap();
        db.add_unverified_file(&ClientId(id), "b.txt", "./files/x/b.txt")
            .unwrap();
        assert!(!db.file(&ClientId(id), "b.txt").unwrap().unwrap().verified);
    }

    #[test]
    fn clients_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = ClientId([1; 16]);
        {
            let db = Db::open(dir.path()).unwrap();
            db.register_client(&id, "bob", None, &now_utc()).unwrap();
            db.set_public_key(&id, &pk(2), &AesKey::from_bytes([3; 16]), &now_utc())
                .unwrap();
            db.mark_verified(&id, "f", "/x/f").unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        let client = db.client_by_id(&id).unwrap().unwrap();
        assert_eq!(client.name, "bob");
        assert_eq!(client.public_key.as_deref(), Some(&pk(2)));
        assert_eq!(client.last_key, Some(AesKey::from_bytes([3; 16])));
        assert_eq!(db.client_count().unwrap(), 1);
        assert!(db.file(&id, "f").unwrap().unwrap().verified);
    }

    #[test]
    fn register_with_replace_swaps_unkeyed_client_atomically() {
        let (_dir, db) = open_temp();
        let old = ClientId([1; 16]);
        let new = ClientId([2; 16]);
        db.register_client(&old, "carol", None, &now_utc()).unwrap();
        db.register_client(&new, "carol", Some(&old), &now_utc())
            .unwrap();
        assert!(db.client_by_id(&old).unwrap().is_none());
        assert_eq!(db.client_by_name("carol").unwrap().unwrap().id, new);
        assert_eq!(db.client_count().unwrap(), 1);
    }

    #[test]
    fn register_never_replaces_a_keyed_client() {
        let (_dir, db) = open_temp();
        let old = ClientId([1; 16]);
        db.register_client(&old, "dave", None, &now_utc()).unwrap();
        db.set_public_key(&old, &pk(5), &AesKey::from_bytes([5; 16]), &now_utc())
            .unwrap();
        let err = db
            .register_client(&ClientId([2; 16]), "dave", Some(&old), &now_utc())
            .unwrap_err();
        assert!(err.to_string().contains("register client"), "{err}");
        assert_eq!(db.client_by_name("dave").unwrap().unwrap().id, old);
        assert!(db.client_by_id(&ClientId([2; 16])).unwrap().is_none());
    }

    #[test]
    fn duplicate_name_fails_without_replace() {
        let (_dir, db) = open_temp();
        db.register_client(&ClientId([1; 16]), "erin", None, &now_utc())
            .unwrap();
        assert!(db
            .register_client(&ClientId([2; 16]), "erin", None, &now_utc())
            .is_err());
        assert_eq!(db.client_count().unwrap(), 1);
    }

    #[test]
    fn keys_and_last_seen_are_recorded() {
        let (_dir, db) = open_temp();
        let id = ClientId([4; 16]);
        db.register_client(&id, "frank", None, &now_utc()).unwrap();
        let fresh = db.client_by_id(&id).unwrap().unwrap();
        assert!(fresh.public_key.is_none() && fresh.last_key.is_none());
        db.set_public_key(&id, &pk(6), &AesKey::from_bytes([6; 16]), &now_utc())
            .unwrap();
        db.set_last_key(&id, &AesKey::from_bytes([7; 16])).unwrap();
        let client = db.client_by_id(&id).unwrap().unwrap();
        assert_eq!(client.public_key.as_deref(), Some(&pk(6)));
        assert_eq!(client.last_key, Some(AesKey::from_bytes([7; 16])));

        db.connection()
            .execute("UPDATE clients SET LastSeen = '2000-01-01T00:00:00Z'", [])
            .unwrap();
        db.touch(&id, &now_utc()).unwrap();
        let seen = db.last_seen(&id).unwrap().unwrap();
        assert_ne!(seen, "2000-01-01T00:00:00Z");
        assert_eq!(seen.len(), 20);
        assert!(seen.ends_with('Z') && seen.as_bytes()[10] == b'T', "{seen}");
    }

    #[test]
    fn repeated_touch_within_a_second_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let id = ClientId([4; 16]);
        db.register_client(&id, "hank", None, &now_utc()).unwrap();
        let wal = dir.path().join(format!("{DB_FILE_NAME}-wal"));
        // Retry if a second boundary falls between the two touches.
        for _ in 0..3 {
            db.touch(&id, &now_utc()).unwrap();
            let stamp = now_utc();
            let size = fs::metadata(&wal).unwrap().len();
            db.touch(&id, &now_utc()).unwrap();
            let unchanged = db.connection().changes() == 0;
            if now_utc() == stamp {
                assert!(unchanged);
                assert_eq!(fs::metadata(&wal).unwrap().len(), size);
                return;
            }
        }
        panic!("three second boundaries in a row");
    }

    #[test]
    fn key_updates_for_unknown_client_fail_but_touch_does_not() {
        let (_dir, db) = open_temp();
        let id = ClientId([9; 16]);
        let key = AesKey::from_bytes([1; 16]);
        assert!(db.set_public_key(&id, &pk(1), &key, &now_utc()).is_err());
        assert!(db.set_last_key(&id, &key).is_err());
        db.touch(&id, &now_utc()).unwrap();
    }

    #[test]
    fn errors_name_the_operation_and_never_the_key() {
        let (_dir, db) = open_temp();
        let err = db
            .set_last_key(&ClientId([9; 16]), &AesKey::from_bytes([0xEE; 16]))
            .unwrap_err();
        assert!(err.to_string().contains("store last key"), "{err}");
        assert!(!err.to_string().to_lowercase().contains("ee"), "{err}");
    }

    #[test]
    fn unverified_insert_never_downgrades_a_verified_row() {
        let (_dir, db) = open_temp();
        let id = ClientId([1; 16]);
        db.add_unverified_file(&id, "f", "/p/f").unwrap();
        assert!(!db.file(&id, "f").unwrap().unwrap().verified);
        db.mark_verified(&id, "f", "/p/f").unwrap();
        db.add_unverified_file(&id, "f", "/p/f").unwrap();
        let row = db.file(&id, "f").unwrap().unwrap();
        assert!(row.verified);
        assert_eq!(row.path_name, "/p/f");
        assert_eq!(db.files().unwrap().len(), 1);
    }

    #[test]
    fn malformed_client_row_is_an_error_not_a_panic() {
        let (_dir, db) = open_temp();
        db.connection()
            .execute(
                "INSERT INTO clients (ID, Name, AESKey) VALUES (?1, 'gina', x'0102')",
                [&[5u8; 16][..]],
            )
            .unwrap();
        let err = db.client_by_name("gina").unwrap_err();
        assert!(err.to_string().contains("AESKey of 2 bytes"), "{err}");
    }

    #[test]
    fn verified_accepts_every_peer_encoding() {
        assert!(verified_from(ValueRef::Integer(1)));
        assert!(!verified_from(ValueRef::Integer(0)));
        assert!(verified_from(ValueRef::Text(b"true")));
        assert!(verified_from(ValueRef::Text(b"1")));
        assert!(!verified_from(ValueRef::Text(b"0")));
        assert!(!verified_from(ValueRef::Null));
    }

    #[test]
    fn timestamps_are_utc_iso_8601() {
        let at = |s: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(
            utc_timestamp(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }
}
