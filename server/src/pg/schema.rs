//! The PostgreSQL schema: the tables of PROTOCOL.md §8 in PostgreSQL
//! types, and a schema version row.
//!
//! | §8 (SQLite) | PostgreSQL |
//! |---|---|
//! | `clients.ID BLOB(16) PRIMARY KEY` | `bytea PRIMARY KEY` |
//! | `clients.Name TEXT UNIQUE` | `text UNIQUE` (the constraint decides a name race between servers) |
//! | `clients.PublicKey BLOB(160)` | `bytea` |
//! | `clients.LastSeen TEXT` (UTC ISO 8601) | `text`, the same `YYYY-MM-DDTHH:MM:SSZ` as `db.rs` writes |
//! | `clients.AESKey BLOB(16)` | `bytea` (16 or 32 bytes since version 2) |
//! | `files(ID, FileName, PathName, Verified INTEGER)` | `bytea, text, text, integer`, `PRIMARY KEY (ID, FileName)` |
//!
//! `sealdrop_schema(id = 1, version)` holds the schema version, which
//! counts as `PRAGMA user_version` does in `db.rs` (1: the §8 tables, 2:
//! 32-byte AES keys), so one number describes both back ends. Its column
//! `store_id` (added without a new version: older servers ignore it)
//! holds the identity of the data directory ([`super::identity`]). Unquoted
//! names fold to lower case in PostgreSQL (`clients.name`).
//!
//! [`migrate`] runs at start, in one transaction under an advisory lock,
//! so servers starting together on an empty database do not race to
//! create the tables; a database of a newer version is refused.

use postgres::{Client, GenericClient};

use super::url::PgUrl;
use super::worker::{connect, Settings};
use super::PgError;

/// The identity of the data directory the database belongs to
/// ([`super::identity`]).
pub const STORE_ID_COLUMN_SQL: &str =
    "ALTER TABLE sealdrop_schema ADD COLUMN IF NOT EXISTS store_id text";

/// The schema version this server creates and reads. Versions 1 to 3 are
/// `db::SCHEMA_VERSION`'s; version 4 is PostgreSQL's own
/// ([`WITHDRAWALS_TABLE_SQL`]).
pub const SCHEMA_VERSION: i32 = 4;

/// The version table: one row, `id` 1.
pub const VERSION_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS sealdrop_schema (id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)";

/// `clients` as §8 declares it, in PostgreSQL types.
pub const CLIENTS_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS clients (ID bytea PRIMARY KEY, Name text UNIQUE, PublicKey bytea, LastSeen text, AESKey bytea)";

/// `files` as §8 declares it, in PostgreSQL types.
pub const FILES_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS files (ID bytea, FileName text, PathName text, Verified integer, PRIMARY KEY (ID, FileName))";

/// Version 3: per-client quotas (as `db::QUOTAS_TABLE_SQL`).
pub const QUOTAS_TABLE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS quotas (ID bytea PRIMARY KEY, MaxBytes bigint, MaxFiles bigint)";

/// Version 3: each stored file's size and cksum (as
/// `db::FILE_META_TABLE_SQL`).
pub const FILE_META_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS file_meta (ID bytea, FileName text, Size bigint, Cksum bigint, PRIMARY KEY (ID, FileName))";

/// Version 3: lifetime counters (as `db::COUNTERS_TABLE_SQL`).
pub const COUNTERS_TABLE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS counters (Name text PRIMARY KEY, Value bigint NOT NULL)";

/// Version 4 (PostgreSQL only): names an administrator deleted, and
/// when (the database's clock). A server about to place an upload of that
/// name which began before the deletion refuses it, so a deletion reaches
/// the uploads of servers that its command could not tell (on other
/// machines). Rows older than [`WITHDRAWALS_KEPT`] are pruned by the
/// next deletion.
pub const WITHDRAWALS_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS withdrawals (ID bytea NOT NULL, FileName text NOT NULL, At timestamptz NOT NULL DEFAULT clock_timestamp()); \
     CREATE INDEX IF NOT EXISTS withdrawals_id ON withdrawals (ID, FileName)";

/// How long a deletion is remembered in `withdrawals`: seven days. Only
/// an upload still in flight that long after its name was deleted (on a
/// server the command could not tell) escapes it.
pub const WITHDRAWALS_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The advisory lock key [`migrate`] holds for its transaction ("sealdrop
/// schema" in hex-ish), so two servers starting at once migrate one
/// after the other.
pub const MIGRATION_LOCK_KEY: i64 = 0x5EA1_D209_5C4E_3A00;

/// Columns this server reads and writes, per table; a table missing one
/// is not a sealdrop table and the database is refused.
const REQUIRED_COLUMNS: [(&str, &[&str]); 2] = [
    (
        "clients",
        &["id", "name", "publickey", "lastseen", "aeskey"],
    ),
    ("files", &["id", "filename", "pathname", "verified"]),
];

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The version found.
    pub from: i32,
    /// The version now recorded ([`SCHEMA_VERSION`]).
    pub to: i32,
}

fn db_err(op: &'static str) -> impl Fn(postgres::Error) -> PgError {
    move |e| PgError::from_driver(op, &e)
}

/// The recorded schema version: 0 when the version table does not exist.
pub fn schema_version(c: &mut impl GenericClient) -> Result<i32, PgError> {
    let op = "read schema version";
    let exists: bool = c
        .query_one("SELECT to_regclass('sealdrop_schema') IS NOT NULL", &[])
        .map_err(db_err(op))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = c
        .query_opt("SELECT version FROM sealdrop_schema WHERE id = 1", &[])
        .map_err(db_err(op))?;
    Ok(row.map_or(0, |r| r.get(0)))
}

fn refuse_newer(version: i32) -> Result<(), PgError> {
    if version > SCHEMA_VERSION {
        return Err(PgError::Invalid(format!(
            "database: schema version {version} is newer than this server's {SCHEMA_VERSION}"
        )));
    }
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction: takes
/// [`MIGRATION_LOCK_KEY`], reads the version, refuses a newer one,
/// creates what is missing (tables made by hand are kept as they are),
/// checks the columns and records the version. Running it again changes
/// nothing.
pub fn migrate(client: &mut Client) -> Result<Migrated, PgError> {
    let op = "migrate schema";
    let mut tx = client.transaction().map_err(db_err(op))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .map_err(db_err(op))?;
    let from = schema_version(&mut tx)?;
    refuse_newer(from)?;
    if from < 1 {
        for sql in [VERSION_TABLE_SQL, CLIENTS_TABLE_SQL, FILES_TABLE_SQL] {
            tx.batch_execute(sql).map_err(db_err(op))?;
        }
    }
    // Version 2 (32-byte AES keys) changes no table: bytea takes any
    // length. Version 3 adds the tables of quotas, file sizes and
    // counters beside §8's.
    if from < 3 {
        for sql in [QUOTAS_TABLE_SQL, FILE_META_TABLE_SQL, COUNTERS_TABLE_SQL] {
            tx.batch_execute(sql).map_err(db_err(op))?;
        }
    }
    if from < 4 {
        tx.batch_execute(WITHDRAWALS_TABLE_SQL)
            .map_err(db_err(op))?;
    }
    // The data directory's identity (`identity.rs`): a column servers of
    // this version fill and older ones ignore, so no new version.
    if !columns(&mut tx, "sealdrop_schema")?
        .iter()
        .any(|c| c == "store_id")
    {
        tx.batch_execute(STORE_ID_COLUMN_SQL).map_err(db_err(op))?;
    }
    check_columns(&mut tx)?;
    if from < SCHEMA_VERSION {
        tx.execute(
            "INSERT INTO sealdrop_schema (id, version) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
            &[&SCHEMA_VERSION],
        )
        .map_err(db_err(op))?;
    }
    tx.commit().map_err(db_err("commit schema"))?;
    if from < SCHEMA_VERSION {
        log::info!("PostgreSQL schema migrated (version {from} -> {SCHEMA_VERSION})");
    }
    Ok(Migrated {
        from,
        to: SCHEMA_VERSION,
    })
}

/// Column names of `table` in the connection's current schema, lower
/// case, in order (empty if there is no such table).
pub fn columns(c: &mut impl GenericClient, table: &str) -> Result<Vec<String>, PgError> {
    let rows = c
        .query(
            "SELECT lower(column_name::text) FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .map_err(db_err("read table columns"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn check_columns(c: &mut impl GenericClient) -> Result<(), PgError> {
    for (table, required) in REQUIRED_COLUMNS {
        let present = columns(c, table)?;
        for column in required {
            if !present.iter().any(|p| p == column) {
                return Err(PgError::Invalid(format!(
                    "database: table {table} has no column {column}; not a sealdrop database"
                )));
            }
        }
    }
    Ok(())
}

/// `--check-config` for a PostgreSQL URL: connects, reads the schema
/// version and changes nothing (a live server may be using the
/// database). Refuses a newer schema or tables without our columns.
/// Returns a one-line description.
pub fn check(url: &PgUrl, settings: &Settings) -> Result<String, PgError> {
    let mut client = connect(url, settings)?;
    let mut tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .map_err(db_err("check database"))?;
    let server: String = tx
        .query_one("SHOW server_version", &[])
        .map_err(db_err("check database"))?
        .get(0);
    let version = schema_version(&mut tx)?;
    refuse_newer(version)?;
    if version == 0 && columns(&mut tx, "clients")?.is_empty() {
        return Ok(format!(
            "PostgreSQL {server}: empty database; the tables will be created at start"
        ));
    }
    check_columns(&mut tx)?;
    let clients: i64 = tx
        .query_one("SELECT count(*) FROM clients", &[])
        .map_err(db_err("count clients"))?
        .get(0);
    Ok(format!(
        "PostgreSQL {server}: schema version {version}, {clients} client(s)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_continue_the_sqlite_schema() {
        // Versions up to SQLite's mean the same tables; PostgreSQL's own
        // come after.
        assert_eq!(crate::db::SCHEMA_VERSION, 3);
        assert_eq!(SCHEMA_VERSION, 4);
    }

    #[test]
    fn tables_mirror_section_8() {
        // Same columns, same order, same keys as db.rs's §8 text.
        for (pg, sqlite) in [
            (CLIENTS_TABLE_SQL, crate::db::CLIENTS_TABLE_SQL),
            (FILES_TABLE_SQL, crate::db::FILES_TABLE_SQL),
        ] {
            let norm = |s: &str| {
                s.replace("IF NOT EXISTS ", "")
                    .replace("BLOB(16)", "bytea")
                    .replace("BLOB(160)", "bytea")
                    .replace("TEXT", "text")
                    .replace("INTEGER", "integer")
                    .replace(' ', "")
            };
            assert_eq!(norm(pg), norm(sqlite));
        }
    }
}
