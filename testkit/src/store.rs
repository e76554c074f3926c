//! A read-only view of a server's data directory as PROTOCOL.md §8 lays
//! it out: `defensive.db` (tables `clients` and `files`) and
//! `files/<client id hex>/<base name>`, plus the `.part-*` temporary files
//! of uploads in progress. And a seeder for a database another
//! implementation (or an operator) left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use sealdrop_protocol::ClientId;

use crate::util::wait_until;
use crate::vectors::{vector, vector_client_id};

/// The database file in a data directory.
pub const DB_FILE: &str = "defensive.db";

/// A `files` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub id: Vec<u8>,
    pub file_name: String,
    pub path_name: String,
    pub verified: i64,
}

/// A `clients` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    pub id: Vec<u8>,
    pub name: String,
    pub public_key: Option<Vec<u8>>,
    pub last_seen: Option<String>,
    pub aes_key: Option<Vec<u8>>,
}

/// A server's data directory, read without disturbing the server.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: &Path) -> DataDir {
        DataDir {
            root: root.to_path_buf(),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `DIR/files`.
    pub fn files_root(&self) -> PathBuf {
        self.root.join("files")
    }

    /// `DIR/files/<id hex>`.
    pub fn client_dir(&self, id: &ClientId) -> PathBuf {
        self.files_root().join(id.to_hex())
    }

    /// `DIR/files/<id hex>/<name>`.
    pub fn final_path(&self, id: &ClientId, name: &str) -> PathBuf {
        self.client_dir(id).join(name)
    }

    /// Every `.part-*` file anywhere under the data directory.
    pub fn part_files(&self) -> Vec<PathBuf> {
        walk(&self.root)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".part-"))
            })
            .collect()
    }

    /// Waits (bounded) until no `.part-*` file is left.
    pub fn wait_no_parts(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.part_files().is_empty())
    }

    /// A read-only connection to `defensive.db`.
    pub fn db(&self) -> Connection {
        open_db_read_only(&self.root)
    }

    /// All `files` rows, by file name.
    pub fn file_rows(&self) -> Vec<FileRow> {
        let c = self.db();
        let mut st = c
            .prepare("SELECT ID, FileName, PathName, Verified FROM files ORDER BY FileName")
            .unwrap();
        st.query_map([], |r| {
            Ok(FileRow {
                id: r.get(0)?,
                file_name: r.get(1)?,
                path_name: r.get(2)?,
                verified: r.get(3)?,
            })
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    }

    /// The `files` row of one client's name.
    pub fn file_row(&self, id: &ClientId, name: &str) -> Option<FileRow> {
        self.file_rows()
            .into_iter()
            .find(|r| r.id == id.0 && r.file_name == name)
    }

    /// All `clients` rows.
    pub fn client_rows(&self) -> Vec<ClientRow> {
        let c = self.db();
        let mut st = c
            .prepare("SELECT ID, Name, PublicKey, LastSeen, AESKey FROM clients")
            .unwrap();
        st.query_map([], |r| {
            Ok(ClientRow {
                id: r.get(0)?,
                name: r.get(1)?,
                public_key: r.get(2)?,
                last_seen: r.get(3)?,
                aes_key: r.get(4)?,
            })
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    }

    /// The `clients` row with this name.
    pub fn client_row(&self, name: &str) -> Option<ClientRow> {
        self.client_rows().into_iter().find(|r| r.name == name)
    }

    /// Panics unless every Verified = 1 row's PathName exists under the
    /// client's folder; returns the rows.
    pub fn assert_db_consistent(&self) -> Vec<FileRow> {
        let rows = self.file_rows();
        for r in &rows {
            if r.verified == 1 {
                let p = Path::new(&r.path_name);
                assert!(p.is_file(), "Verified=1 row names a missing file: {r:?}");
                let id = ClientId(r.id.clone().try_into().expect("16-byte id"));
                assert_eq!(p, self.final_path(&id, &r.file_name), "PathName: {r:?}");
            }
        }
        rows
    }
}

/// A read-only connection to `DIR/defensive.db`.
pub fn open_db_read_only(data: &Path) -> Connection {
    let c = Connection::open_with_flags(
        data.join(DB_FILE),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open defensive.db read-only");
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// All `clients` rows of the data directory `data`.
pub fn client_rows(data: &Path) -> Vec<ClientRow> {
    DataDir::new(data).client_rows()
}

/// Every regular file under `dir`, recursively, sorted (missing dir:
/// none).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Creates `DIR/defensive.db` with the §8 tables and one client row, as
/// another implementation (or an operator) would have left it.
pub fn seed_client(data: &Path, id: &ClientId, name: &str, spki: &[u8], aes: &[u8]) {
    let c = Connection::open(data.join(DB_FILE)).expect("create db");
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS clients(ID BLOB(16) PRIMARY KEY, Name TEXT UNIQUE, PublicKey BLOB(160), LastSeen TEXT, AESKey BLOB(16));
         CREATE TABLE IF NOT EXISTS files(ID BLOB(16), FileName TEXT, PathName TEXT, Verified INTEGER, PRIMARY KEY(ID, FileName));",
    )
    .unwrap();
    c.execute(
        "INSERT INTO clients (ID, Name, PublicKey, LastSeen, AESKey) VALUES (?1, ?2, ?3, ?4, ?5)",
        (&id.0[..], name, spki, "2024-01-01T00:00:00Z", aes),
    )
    .unwrap();
}

/// Seeds the golden-vector client "alice" (id, key and AES key of the
/// vectors).
pub fn seed_vector_client(data: &Path) {
    seed_client(
        data,
        &vector_client_id(),
        "alice",
        &vector("rsa1024_public_spki.der"),
        &vector("aes_key.bin"),
    );
}
