//! PostgreSQL for the records, so several servers can share one database
//! (issue 17). The store uses them through [`crate::records::PgRecords`]
//! when `--database` is a `postgres://` URL ([`crate::store::DiskStore`]),
//! and the administration commands through [`admin`]. The pieces:
//!
//! * [`url`]: `--database URL` parsing (`sqlite:`, `sqlite:PATH`,
//!   `postgres://…`), the password from the environment, a `Display` that
//!   never shows it.
//! * [`schema`]: the §8 tables in PostgreSQL types, created and migrated
//!   at start in one transaction, with a schema version row; a database
//!   of a newer version is refused. [`schema::check`] is what
//!   `--check-config` needs.
//! * [`worker`]: a thread that owns one connection and runs batches of
//!   operations ([`Job`]s), each batch in one transaction, answering per
//!   operation through a channel and waking the event loop through a
//!   `mio::Waker`. The loop never waits on the network.
//!
//! Errors are [`PgError`]s; they convert into the protocol's
//! [`StoreError`]. None of them, and no log line of this module, carries
//! key material or a password: keys travel only as bound `bytea`
//! parameters, and messages name operations, client ids and SQLSTATE
//! codes.

pub mod admin;
pub mod identity;
pub mod schema;
pub mod url;
pub mod worker;

use std::fmt;

use sealdrop_protocol::store::StoreError;

pub use url::{DatabaseUrl, PgUrl, TlsMode, UrlError};
pub use worker::{Connected, Job, JobDone, Op, Reply, Settings, Worker};

/// What went wrong with a PostgreSQL operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgError {
    /// `register client`: the name belongs to another client (the unique
    /// constraint on `Name` decided, in the database, for every server).
    NameTaken,
    /// `register client`: the id belongs to another client.
    IdTaken,
    /// An update of a client found no row with that id.
    NoSuchClient {
        /// The operation.
        op: &'static str,
    },
    /// The connection to the database was lost (or could not be made)
    /// before the batch committed: none of its writes is known to be
    /// durable. The worker reconnects on its own.
    ConnectionLost {
        /// What the driver said.
        detail: String,
    },
    /// The worker's queue holds [`worker::QUEUE_CAPACITY`] jobs already
    /// (the database is slower than the load): the job was not queued.
    QueueFull {
        /// The queue's capacity.
        cap: usize,
    },
    /// A job with more operations than [`worker::MAX_OPS_PER_JOB`].
    JobTooLarge {
        /// Operations in the job.
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// The worker thread is gone (it panicked or was shut down).
    WorkerGone,
    /// Any other database error.
    Database {
        /// The operation ("look up client by id", "commit", ...).
        op: &'static str,
        /// The SQLSTATE code, if the server sent one.
        code: Option<String>,
        /// The server's or driver's message (names tables and
        /// constraints, never bound values).
        detail: String,
    },
    /// Data failed a consistency check: a value of the wrong shape, a
    /// schema this program does not know.
    Invalid(String),
    /// `place and record verified file`: the database refused the upload
    /// after its content arrived: an administrator forgot its client or
    /// deleted its name while it was in flight (on a server the command
    /// could not reach). Nothing was placed or recorded.
    Withdrawn {
        /// What was removed.
        why: &'static str,
    },
    /// `place and record verified file`: with what the client keeps in
    /// the database now (uploads through other servers included), the
    /// upload would pass its quota. Nothing was placed or recorded.
    OverQuota(sealdrop_protocol::store::QuotaExceeded),
}

impl PgError {
    /// Whether the batch as a whole may have been lost (the caller must
    /// withdraw every answer that waited for it).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, PgError::ConnectionLost { .. })
    }

    /// Maps a driver error of `op`: a closed connection, a unique
    /// violation on `clients`, or another database error.
    pub(crate) fn from_driver(op: &'static str, e: &postgres::Error) -> PgError {
        if e.is_closed() {
            return PgError::ConnectionLost {
                detail: e.to_string(),
            };
        }
        match e.as_db_error() {
            Some(db) => {
                if *db.code() == postgres::error::SqlState::UNIQUE_VIOLATION
                    && db.table() == Some("clients")
                {
                    return if db.constraint() == Some("clients_pkey") {
                        PgError::IdTaken
                    } else {
                        PgError::NameTaken
                    };
                }
                let code = db.code().code();
                // Class 08 (connection exception) and 57P0x (the server
                // shuts down or terminated us): the session is gone.
                if code.starts_with("08") || code.starts_with("57P0") {
                    return PgError::ConnectionLost {
                        detail: format!("{}: {}", code, db.message()),
                    };
                }
                PgError::Database {
                    op,
                    code: Some(code.to_owned()),
                    // Only the primary message: `detail` of a unique
                    // violation quotes the conflicting value.
                    detail: db.message().to_owned(),
                }
            }
            None => {
                // No error from the server: the driver's own (I/O, a
                // socket closed under us, TLS, a type mismatch). Its
                // message is the kind; the cause says what happened.
                let source = std::error::Error::source(e);
                let io = source.is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
                let detail = match source {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                };
                if io {
                    PgError::ConnectionLost { detail }
                } else {
                    PgError::Database {
                        op,
                        code: None,
                        detail,
                    }
                }
            }
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::NameTaken => f.write_str("register client: the name is taken"),
            PgError::IdTaken => f.write_str("register client: the id is taken"),
            PgError::NoSuchClient { op } => write!(f, "{op}: no such client"),
            // Also a connection never made (a wrong port, PostgreSQL down
            // at start): "lost" alone would mislead there.
            PgError::ConnectionLost { detail } => {
                write!(f, "no connection to PostgreSQL (lost or refused): {detail}")
            }
            PgError::QueueFull { cap } => write!(
                f,
                "{cap} database jobs are queued already (the database is behind); job refused"
            ),
            PgError::JobTooLarge { ops, max } => {
                write!(f, "a database job of {ops} operations (at most {max})")
            }
            PgError::WorkerGone => f.write_str("the database worker has stopped"),
            PgError::Database {
                op,
                code: Some(code),
                detail,
            } => write!(f, "{op}: {detail} (SQLSTATE {code})"),
            PgError::Database {
                op,
                code: None,
                detail,
            } => write!(f, "{op}: {detail}"),
            PgError::Invalid(message) => f.write_str(message),
            PgError::Withdrawn { why } => {
                write!(f, "place and record verified file: withdrawn ({why})")
            }
            PgError::OverQuota(q) => write!(f, "place and record verified file: {q}"),
        }
    }
}

impl std::error::Error for PgError {}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::NoSuchClient { op } => StoreError::NotFound {
                op,
                what: "no such client",
            },
            PgError::Invalid(message) => StoreError::Invalid(format!("database: {message}")),
            PgError::Database {
                op,
                code: Some(code),
                detail,
            } => StoreError::database(op, format!("{detail} (SQLSTATE {code})")),
            PgError::Database {
                op,
                code: None,
                detail,
            } => StoreError::database(op, detail),
            PgError::NameTaken => StoreError::database("register client", "the name is taken"),
            PgError::IdTaken => StoreError::database("register client", "the id is taken"),
            PgError::Withdrawn { why } => StoreError::Withdrawn { why },
            PgError::OverQuota(q) => StoreError::OverQuota(q),
            other => StoreError::database("postgres", other),
        }
    }
}
