//! The administration commands on PostgreSQL (`sealdrop-server clients
//! ... --database postgres://…`): reads and changes made by the command
//! itself, over one blocking connection ([`super::worker::connect`]).
//!
//! Several servers may be using the database at once, on this machine or
//! others, so a change does not go through one server's loop as it does on
//! SQLite: [`crate::admin`] tells every server it can reach to withdraw the
//! uploads concerned, then makes the change here in one transaction, then
//! deletes files from the shared tree. Reads take one snapshot (a
//! `REPEATABLE READ`, `READ ONLY` transaction), so a listing is consistent
//! while servers commit beside it.
//!
//! The rows come back in the types the SQLite side uses ([`ClientRow`],
//! [`FileRow`], [`FileMeta`], [`QuotaOverride`]), so the commands format
//! both alike. Rows of the wrong shape (an id that is not 16 bytes) are
//! skipped with a warning, as `db.rs` does.

use postgres::{Client, GenericClient, IsolationLevel, Row};

use sealdrop_protocol::store::QuotaOverride;
use sealdrop_protocol::ClientId;

use super::schema::{schema_version, SCHEMA_VERSION, WITHDRAWALS_KEPT};
use super::url::PgUrl;
use super::worker::{connect, Settings};
use super::PgError;
use crate::db::{setting_from, setting_to, ClientRow, FileMeta, FileRow};

fn db_err(op: &'static str) -> impl Fn(postgres::Error) -> PgError {
    move |e| PgError::from_driver(op, &e)
}

/// Everything the read-only commands show, from one snapshot.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every client, by name (bytewise) then id, as on SQLite.
    pub clients: Vec<ClientRow>,
    /// Every file row by client id and name, with its size and cksum.
    pub files: Vec<(FileRow, FileMeta)>,
    /// The clients' own quotas (rows of `quotas`).
    pub quotas: Vec<(ClientId, QuotaOverride)>,
    /// The lifetime counters, by name.
    pub counters: Vec<(String, u64)>,
}

/// What [`forget`] did.
#[derive(Debug, Default)]
pub struct Forgotten {
    /// The client's name, if it had a record.
    pub name: Option<String>,
    /// Every file row of the client (verified or not), by name.
    pub rows: Vec<FileRow>,
}

/// A connection to the database of `url`, for a command: refuses a
/// database without sealdrop's tables or of a newer schema.
pub fn open(url: &PgUrl) -> Result<Client, PgError> {
    let mut client = connect(url, &Settings::default())?;
    let version = schema_version(&mut client)?;
    if version == 0 {
        return Err(PgError::Invalid(
            "the database has no sealdrop tables (has a server ever run on it?)".into(),
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(PgError::Invalid(format!(
            "database: schema version {version} is newer than this program's {SCHEMA_VERSION}"
        )));
    }
    Ok(client)
}

fn id_from(bytes: &[u8]) -> Option<ClientId> {
    match <[u8; 16]>::try_from(bytes) {
        Ok(id) => Some(ClientId(id)),
        Err(_) => {
            log::warn!(
                "database: skipping a row whose ID has {} bytes, not 16",
                bytes.len()
            );
            None
        }
    }
}

fn file_row(row: &Row) -> Option<FileRow> {
    Some(FileRow {
        client: id_from(row.get::<_, &[u8]>(0))?,
        file_name: row.get(1),
        path_name: row.get::<_, Option<String>>(2).unwrap_or_default(),
        verified: row.get::<_, Option<i32>>(3).unwrap_or(0) != 0,
    })
}

fn meta_from(size: Option<i64>, cksum: Option<i64>) -> FileMeta {
    FileMeta {
        size: size.map(i64::unsigned_abs),
        cksum: cksum.and_then(|c| u32::try_from(c).ok()),
    }
}

/// Reads everything the commands show, in one read-only snapshot.
pub fn snapshot(client: &mut Client) -> Result<Snapshot, PgError> {
    let op = "read the records";
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(db_err(op))?;
    let clients = tx
        .query(
            "SELECT ID, Name, LastSeen, PublicKey IS NOT NULL FROM clients \
             ORDER BY Name COLLATE \"C\", ID",
            &[],
        )
        .map_err(db_err("list clients"))?
        .iter()
        .filter_map(|r| {
            Some(ClientRow {
                id: id_from(r.get::<_, &[u8]>(0))?,
                name: r.get::<_, Option<String>>(1).unwrap_or_default(),
                last_seen: r.get(2),
                key_exchanged: r.get(3),
            })
        })
        .collect();
    let files = tx
        .query(
            "SELECT f.ID, f.FileName, f.PathName, f.Verified, m.Size, m.Cksum FROM files f \
             LEFT JOIN file_meta m ON m.ID = f.ID AND m.FileName = f.FileName \
             ORDER BY f.ID, f.FileName COLLATE \"C\"",
            &[],
        )
        .map_err(db_err("list files"))?
        .iter()
        .filter_map(|r| Some((file_row(r)?, meta_from(r.get(4), r.get(5)))))
        .collect();
    let quotas = tx
        .query("SELECT ID, MaxBytes, MaxFiles FROM quotas ORDER BY ID", &[])
        .map_err(db_err("list quotas"))?
        .iter()
        .filter_map(|r| {
            let own = QuotaOverride {
                bytes: setting_from(r.get(1)),
                files: setting_from(r.get(2)),
            };
            Some((id_from(r.get::<_, &[u8]>(0))?, own))
        })
        .collect();
    let counters = tx
        .query("SELECT Name, Value FROM counters ORDER BY Name", &[])
        .map_err(db_err("read counters"))?
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1).unsigned_abs()))
        .collect();
    tx.commit().map_err(db_err(op))?;
    Ok(Snapshot {
        clients,
        files,
        quotas,
        counters,
    })
}

/// The id of the client named `name`, if there is one.
pub fn client_by_name(client: &mut Client, name: &str) -> Result<Option<ClientId>, PgError> {
    let row = client
        .query_opt("SELECT ID FROM clients WHERE Name = $1", &[&name])
        .map_err(db_err("look up client by name"))?;
    Ok(row.and_then(|r| id_from(r.get::<_, &[u8]>(0))))
}

/// Whether client `id` has a record or file rows (a forgotten client's
/// files are still reached by its id).
pub fn client_exists(client: &mut Client, id: &ClientId) -> Result<bool, PgError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM clients WHERE ID = $1) \
                 OR EXISTS (SELECT 1 FROM files WHERE ID = $1)",
            &[&&id.0[..]],
        )
        .map_err(db_err("look up client"))?;
    Ok(row.get(0))
}

/// The row of one file.
pub fn file(client: &mut Client, id: &ClientId, name: &str) -> Result<Option<FileRow>, PgError> {
    let row = client
        .query_opt(
            "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = $1 AND FileName = $2",
            &[&&id.0[..], &name],
        )
        .map_err(db_err("look up file"))?;
    Ok(row.as_ref().and_then(file_row))
}

/// Forgets client `id` in one transaction: its record and own quota, and
/// with `delete_files` its file rows (with their sizes and cksums). `None`
/// (nothing changed) when it has neither a record nor file rows.
pub fn forget(
    client: &mut Client,
    id: &ClientId,
    delete_files: bool,
) -> Result<Option<Forgotten>, PgError> {
    let op = "forget client";
    let key = &id.0[..];
    let mut tx = client.transaction().map_err(db_err(op))?;
    let name: Option<Option<String>> = tx
        .query_opt("SELECT Name FROM clients WHERE ID = $1 FOR UPDATE", &[&key])
        .map_err(db_err(op))?
        .map(|r| r.get(0));
    let rows: Vec<FileRow> = tx
        .query(
            "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = $1 \
             ORDER BY FileName COLLATE \"C\" FOR UPDATE",
            &[&key],
        )
        .map_err(db_err(op))?
        .iter()
        .filter_map(file_row)
        .collect();
    if name.is_none() && rows.is_empty() {
        return Ok(None);
    }
    let mut statements = vec![
        "DELETE FROM quotas WHERE ID = $1",
        "DELETE FROM clients WHERE ID = $1",
    ];
    if delete_files {
        statements.push("DELETE FROM file_meta WHERE ID = $1");
        statements.push("DELETE FROM files WHERE ID = $1");
    }
    for sql in statements {
        tx.execute(sql, &[&key]).map_err(db_err(op))?;
    }
    tx.commit().map_err(db_err("commit"))?;
    Ok(Some(Forgotten {
        name: name.map(Option::unwrap_or_default),
        rows,
    }))
}

/// Deletes one file's row (and size and cksum) in one transaction;
/// whether it had a row. Without `only_if_verified` (`files delete`) the
/// deletion is also recorded in `withdrawals`, so every server refuses
/// to place an upload of that name that began before it, told or not.
/// With `only_if_verified`, a row not marked verified is kept (`verify
/// --repair rows`: a record without its file, not a deletion).
pub fn delete_file(
    client: &mut Client,
    id: &ClientId,
    name: &str,
    only_if_verified: bool,
) -> Result<bool, PgError> {
    let op = "delete file record";
    let mut tx = client.transaction().map_err(db_err(op))?;
    // The servers lock the client's row while they place one of its
    // uploads: a placement either committed before (and its row is deleted
    // here) or comes after and finds the withdrawal.
    tx.query_opt(
        "SELECT 1 FROM clients WHERE ID = $1 FOR NO KEY UPDATE",
        &[&&id.0[..]],
    )
    .map_err(db_err(op))?;
    if !only_if_verified {
        let kept = f64::from(u32::try_from(WITHDRAWALS_KEPT.as_secs()).unwrap_or(u32::MAX));
        tx.execute(
            "DELETE FROM withdrawals WHERE At < clock_timestamp() - $1 * interval '1 second'",
            &[&kept],
        )
        .map_err(db_err(op))?;
        tx.execute(
            "INSERT INTO withdrawals (ID, FileName) VALUES ($1, $2)",
            &[&&id.0[..], &name],
        )
        .map_err(db_err(op))?;
    }
    let cond = if only_if_verified {
        " AND Verified <> 0"
    } else {
        ""
    };
    let n = tx
        .execute(
            &format!("DELETE FROM files WHERE ID = $1 AND FileName = $2{cond}"),
            &[&&id.0[..], &name],
        )
        .map_err(db_err(op))?;
    if n > 0 || !only_if_verified {
        tx.execute(
            "DELETE FROM file_meta WHERE ID = $1 AND FileName = $2",
            &[&&id.0[..], &name],
        )
        .map_err(db_err(op))?;
    }
    tx.commit().map_err(db_err("commit"))?;
    Ok(n > 0)
}

/// Sets client `id`'s own quota (all defaults: the row goes); false
/// (nothing changed) if the client has no record.
pub fn set_quota(client: &mut Client, id: &ClientId, own: QuotaOverride) -> Result<bool, PgError> {
    let op = "set quota";
    let key = &id.0[..];
    let mut tx = client.transaction().map_err(db_err(op))?;
    let exists = tx
        .query_opt("SELECT 1 FROM clients WHERE ID = $1 FOR UPDATE", &[&key])
        .map_err(db_err(op))?
        .is_some();
    if !exists {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO quotas (ID, MaxBytes, MaxFiles) VALUES ($1, $2, $3) \
         ON CONFLICT (ID) DO UPDATE SET MaxBytes = EXCLUDED.MaxBytes, MaxFiles = EXCLUDED.MaxFiles",
        &[&key, &setting_to(own.bytes), &setting_to(own.files)],
    )
    .map_err(db_err(op))?;
    tx.commit().map_err(db_err("commit"))?;
    Ok(true)
}

/// The client's own quota (defaults without a row).
pub fn quota_of(client: &mut impl GenericClient, id: &ClientId) -> Result<QuotaOverride, PgError> {
    let row = client
        .query_opt(
            "SELECT MaxBytes, MaxFiles FROM quotas WHERE ID = $1",
            &[&&id.0[..]],
        )
        .map_err(db_err("look up quota"))?;
    Ok(row.map_or_else(QuotaOverride::default, |r| QuotaOverride {
        bytes: setting_from(r.get(0)),
        files: setting_from(r.get(1)),
    }))
}

/// `verify --repair adopt`: records a file as verified at `path_name` with
/// its size and cksum, unless a verified row claims it already; whether
/// it did.
pub fn adopt(
    client: &mut Client,
    id: &ClientId,
    name: &str,
    path_name: &str,
    size: u64,
    cksum: u32,
) -> Result<bool, PgError> {
    let op = "adopt a file";
    let key = &id.0[..];
    let mut tx = client.transaction().map_err(db_err(op))?;
    let n = tx
        .execute(
            "INSERT INTO files (ID, FileName, PathName, Verified) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (ID, FileName) DO UPDATE SET PathName = EXCLUDED.PathName, Verified = 1 \
             WHERE COALESCE(files.Verified, 0) = 0",
            &[&key, &name, &path_name],
        )
        .map_err(db_err(op))?;
    if n == 0 {
        return Ok(false);
    }
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO file_meta (ID, FileName, Size, Cksum) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (ID, FileName) DO UPDATE SET Size = EXCLUDED.Size, Cksum = EXCLUDED.Cksum",
        &[&key, &name, &size, &i64::from(cksum)],
    )
    .map_err(db_err(op))?;
    tx.commit().map_err(db_err("commit"))?;
    Ok(true)
}

/// `verify --repair mismatched`: deletes the verified row of file `name`
/// (and its size and cksum) if its size and cksum are still `recorded`,
/// under the client's row lock, which a server placing an upload of that
/// client holds from before its rename until its commit: so no placement
/// is half done meanwhile, and one that committed since the command read
/// the records has changed them (nothing is deleted). The file is left
/// alone. Whether it deleted the row.
pub fn drop_if_recorded(
    client: &mut Client,
    id: &ClientId,
    name: &str,
    recorded: crate::db::FileMeta,
) -> Result<bool, PgError> {
    let op = "drop a mismatched record";
    let key = &id.0[..];
    let mut tx = client.transaction().map_err(db_err(op))?;
    tx.query_opt(
        "SELECT 1 FROM clients WHERE ID = $1 FOR NO KEY UPDATE",
        &[&key],
    )
    .map_err(db_err(op))?;
    let size = recorded.size.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    let cksum = recorded.cksum.map(i64::from);
    let n = tx
        .execute(
            "DELETE FROM files f WHERE f.ID = $1 AND f.FileName = $2 \
             AND COALESCE(f.Verified, 0) <> 0 \
             AND (SELECT m.Size FROM file_meta m WHERE m.ID = $1 AND m.FileName = $2) \
                 IS NOT DISTINCT FROM $3::bigint \
             AND (SELECT m.Cksum FROM file_meta m WHERE m.ID = $1 AND m.FileName = $2) \
                 IS NOT DISTINCT FROM $4::bigint",
            &[&key, &name, &size, &cksum],
        )
        .map_err(db_err(op))?;
    if n == 0 {
        return Ok(false);
    }
    tx.execute(
        "DELETE FROM file_meta WHERE ID = $1 AND FileName = $2",
        &[&key, &name],
    )
    .map_err(db_err(op))?;
    tx.commit().map_err(db_err("commit"))?;
    Ok(true)
}
