//! Which data directory a PostgreSQL database belongs to (issue 17).
//!
//! Servers on one database must share one data directory: the records
//! name files in it. A server started on another directory (the share not
//! mounted, a typo in `--data-dir`) would accept uploads the others
//! cannot see. So the directory carries an identity, a random token in
//! [`STORE_ID_FILE`] written once, and the database records the same
//! token (`sealdrop_schema.store_id`). At every start [`check`] compares
//! them and refuses a directory whose token is missing or different. A
//! new database with a new directory gets a new token in both; a
//! database without a token (made before this check) takes the
//! directory's token, or gives the directory a new one, at its next
//! start.

use std::io::Write;
use std::path::{Path, PathBuf};

use postgres::{Client, GenericClient};
use sealdrop_protocol::store::StoreError;

use super::schema::MIGRATION_LOCK_KEY;
use super::url::PgUrl;
use crate::files;

/// The file in the data directory holding its identity: 32 hex digits
/// and a newline.
pub const STORE_ID_FILE: &str = ".sealdrop-store-id";

/// The identity file of `data_dir`.
pub fn store_id_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_ID_FILE)
}

fn invalid(message: String) -> StoreError {
    StoreError::Invalid(message)
}

fn db_err(op: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |e| StoreError::database(op, e.to_string())
}

/// The token in `data_dir`'s identity file; `None` if there is none.
pub fn read_token(data_dir: &Path) -> Result<Option<String>, StoreError> {
    let path = store_id_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            if token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(Some(token.to_ascii_lowercase()))
            } else {
                Err(invalid(format!(
                    "{} does not hold a data directory identity (32 hex digits)",
                    path.display()
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(invalid(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Gives `data_dir` an identity file with a new token, durably, unless
/// one appeared meanwhile (then that one is read): written to a temporary
/// name and linked into place, so the file is never seen half written.
fn create_token(data_dir: &Path) -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| invalid(format!("getrandom: {e}")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = store_id_path(data_dir);
    let temp = data_dir.join(format!("{STORE_ID_FILE}.{token}"));
    let io = |what: &str, e: std::io::Error| invalid(format!("{what} {}: {e}", path.display()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| io("write", e))?;
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            files::sync_dir(data_dir).map_err(|e| io("sync the folder of", e))?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_token(data_dir)?.ok_or_else(|| invalid(format!("{} vanished", path.display())))
        }
        Err(e) => Err(io("create", e)),
    }
}

/// What a start does about the identity, from what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The directory's token is the database's.
    Same,
    /// The database has none: it takes the directory's (migration).
    Record(String),
    /// Neither has one: a new token for both.
    Create,
    /// Refused, and why.
    Refuse(String),
}

/// The decision for `data_dir` (holding `dir_token`) and the database
/// `url` (holding `db_token`, and recording `verified` stored files).
pub fn decide(
    url: &PgUrl,
    data_dir: &Path,
    dir_token: Option<String>,
    db_token: Option<String>,
    verified: i64,
) -> Decision {
    let path = store_id_path(data_dir);
    match (dir_token, db_token) {
        (Some(d), Some(b)) if d == b => Decision::Same,
        (Some(d), Some(b)) => Decision::Refuse(format!(
            "{} is not the data directory of the database {url}: its identity {} is {d}, the \
             database's is {b}. Servers on one database must share one data directory; check \
             that --data-dir names the shared directory and that it is mounted",
            data_dir.display(),
            path.display(),
        )),
        (None, Some(b)) => Decision::Refuse(format!(
            "{} has no {STORE_ID_FILE}, but the database {url} belongs to the data directory \
             with identity {b}: is the shared directory mounted at {}? (a server refuses to \
             store files where the other servers on its database cannot see them)",
            data_dir.display(),
            data_dir.display(),
        )),
        (Some(d), None) => Decision::Record(d),
        (None, None) => {
            // A database made before this check, with files recorded, and
            // a directory without them: not the directory to bind it to.
            let root = files::files_root(data_dir);
            let empty = std::fs::read_dir(&root).map_or(true, |mut d| d.next().is_none());
            if verified > 0 && empty {
                Decision::Refuse(format!(
                    "the database {url} records {verified} stored file(s), but {} has no \
                     {STORE_ID_FILE} and nothing in {}: is the shared directory mounted at {}?",
                    data_dir.display(),
                    root.display(),
                    data_dir.display()
                ))
            } else {
                Decision::Create
            }
        }
    }
}

fn verified_files(c: &mut impl GenericClient, op: &'static str) -> Result<i64, StoreError> {
    Ok(c.query_one(
        "SELECT count(*) FROM files WHERE COALESCE(Verified, 0) <> 0",
        &[],
    )
    .map_err(db_err(op))?
    .get(0))
}

/// Checks at start that `data_dir` is the data directory of the database
/// `url` (see the module's doc), recording the identity where it is
/// missing; refuses with a message naming both and what to check.
pub fn check(client: &mut Client, url: &PgUrl, data_dir: &Path) -> Result<(), StoreError> {
    let op = "check the data directory's identity";
    let mut tx = client.transaction().map_err(db_err(op))?;
    // Servers starting together on a new database and directory agree on
    // one token: the second waits here, then finds the first's (in the
    // database and, read only now, in the directory).
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .map_err(db_err(op))?;
    let dir_token = read_token(data_dir)?;
    let db_token: Option<String> = tx
        .query_opt("SELECT store_id FROM sealdrop_schema WHERE id = 1", &[])
        .map_err(db_err(op))?
        .and_then(|r| r.get(0));
    let verified = if dir_token.is_none() && db_token.is_none() {
        verified_files(&mut tx, op)?
    } else {
        0
    };
    let token = match decide(url, data_dir, dir_token, db_token, verified) {
        Decision::Same => return Ok(()),
        Decision::Refuse(why) => return Err(invalid(why)),
        Decision::Record(d) => {
            log::info!(
                "the database {url} had no data directory identity: recorded {}'s ({d})",
                data_dir.display()
            );
            d
        }
        Decision::Create => {
            let token = create_token(data_dir)?;
            log::info!(
                "data directory {} and the database {url} bound by a new identity ({token}, in {})",
                data_dir.display(),
                store_id_path(data_dir).display()
            );
            token
        }
    };
    tx.execute(
        "UPDATE sealdrop_schema SET store_id = $1 WHERE id = 1",
        &[&token],
    )
    .map_err(db_err(op))?;
    tx.commit().map_err(db_err(op))?;
    Ok(())
}

/// `--check-config`: what a start would do about the identity, changing
/// nothing. `Err`: the start would be refused; `Ok(Some(note))`: it
/// would record an identity; `Ok(None)`: nothing to do (or an empty
/// database, which the start sets up).
pub fn probe(url: &PgUrl, data_dir: &Path) -> Result<Option<String>, StoreError> {
    let op = "read the data directory's identity";
    let dir_token = read_token(data_dir)?;
    let mut client = super::worker::connect(url, &super::Settings::default())?;
    let mut tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .map_err(db_err(op))?;
    if super::schema::schema_version(&mut tx)? == 0 {
        return Ok(None);
    }
    let has_column = super::schema::columns(&mut tx, "sealdrop_schema")?
        .iter()
        .any(|c| c == "store_id");
    let db_token: Option<String> = if has_column {
        tx.query_opt("SELECT store_id FROM sealdrop_schema WHERE id = 1", &[])
            .map_err(db_err(op))?
            .and_then(|r| r.get(0))
    } else {
        None
    };
    let verified = if dir_token.is_none() && db_token.is_none() {
        verified_files(&mut tx, op)?
    } else {
        0
    };
    Ok(match decide(url, data_dir, dir_token, db_token, verified) {
        Decision::Same => None,
        Decision::Refuse(why) => return Err(invalid(why)),
        Decision::Record(d) => Some(format!(
            "the database has no data directory identity yet: a start records {}'s ({d})",
            data_dir.display()
        )),
        Decision::Create => Some(format!(
            "a start gives {} a new identity ({STORE_ID_FILE}) and records it in the database",
            data_dir.display()
        )),
    })
}
