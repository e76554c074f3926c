//! The database worker: one thread, one PostgreSQL connection, batches of
//! operations in, results out.
//!
//! The event loop must never wait on the network, so it hands its
//! database work to this thread as [`Job`]s (one per pass, say) with
//! [`Worker::submit`], which never blocks: a full queue is refused with
//! [`PgError::QueueFull`]. The worker runs each job in one transaction,
//! sends a [`JobDone`] with one result per operation, and wakes the loop
//! through its `mio::Waker`; the loop collects results with
//! [`Worker::try_recv`].
//!
//! # One transaction per job, failures kept to their operation
//!
//! A job's writes commit together (one `COMMIT`, one WAL flush on the
//! database server), so an answer that waits for them can be released
//! once [`JobDone::commit`] is `Ok`. One failing operation (a name taken
//! on another server, a statement timeout) fails only itself: PostgreSQL
//! aborts the whole transaction on any error, so the worker rolls back
//! and runs the job again without the failed operation, whose error it
//! keeps. That replay costs nothing while nothing fails, where a
//! `SAVEPOINT`/`RELEASE` pair around every operation would cost two more
//! round trips each (see "Round trips" below).
//!
//! # Connection loss
//!
//! If the connection drops during a job, the job fails as a whole
//! ([`PgError::ConnectionLost`] for every operation and for `commit`): a
//! `COMMIT` whose reply never came may or may not have happened, so
//! nothing of it may be acknowledged. (Every write here is safe to retry:
//! the client's retry of the request finds either the row or nothing.) The
//! worker then reconnects, at once and then with a doubling back-off from
//! [`Settings::backoff_min`] to [`Settings::backoff_max`]; jobs that come
//! while it has no connection fail at once instead of queueing behind a
//! dead database. A connection found dead at the first statement of a job
//! (before anything of the job ran), as after a database restart while the
//! server was idle, is replaced and the job run once more.
//!
//! # Round trips
//!
//! Every operation is one prepared statement, so one round trip, except
//! `RegisterClient` with a client to replace (two: `DELETE`, `INSERT`),
//! `DeleteFile`/`DeleteClient` (two) and `PlaceVerified` (three: check,
//! mark verified, size and cksum with the `verified` counter). A job with more than one write
//! statement adds `BEGIN` and `COMMIT` (two round trips for the whole
//! job), and, when it updates clients' rows, one statement that locks
//! those rows in id order first (`begin_sql`); a job with
//! at most one write runs without them (one statement commits on its
//! own).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::{Client, GenericClient, Row, Statement};
use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::AesKey;
use sealdrop_protocol::store::{ClientRecord, Quota, QuotaOverride, Usage};
use sealdrop_protocol::ClientId;

use super::schema;
use super::url::{PgUrl, TlsMode};
use super::PgError;
use crate::db::FileRow;

/// Jobs submitted and not yet collected with [`Worker::try_recv`], at
/// most: the queue in front of the worker plus the results waiting for
/// the loop. Past it [`Worker::submit`] refuses with
/// [`PgError::QueueFull`] (the loop answers 2107 and the client retries)
/// rather than letting memory grow while the database is slow.
pub const QUEUE_CAPACITY: usize = 256;

/// Operations in one job, at most (an event-loop pass of 256 accepted
/// connections, each with a few requests, fits many times over).
pub const MAX_OPS_PER_JOB: usize = 4096;

/// How long making a connection may take (TCP, TLS, authentication),
/// unless the URL sets `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one statement may run on the database server
/// (`statement_timeout`): a lock held by an operator's session or a stuck
/// server fails the operation instead of stalling the worker for good.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long data sent to the database may stay unacknowledged before the
/// connection counts as dead (`TCP_USER_TIMEOUT`), and the TCP keepalive
/// idle time: a database host that vanished is noticed in seconds, not
/// after the kernel's default of about 15 minutes.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait before reconnecting again after a failed attempt.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// The longest wait between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The `application_name` the connection reports (pg_stat_activity),
/// unless the URL sets one.
pub const APPLICATION_NAME: &str = "sealdrop-server";

/// The worker's limits; [`Settings::default`] uses the constants above.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`QUEUE_CAPACITY`].
    pub queue_capacity: usize,
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`STATEMENT_TIMEOUT`].
    pub statement_timeout: Duration,
    /// See [`TCP_TIMEOUT`].
    pub tcp_timeout: Duration,
    /// See [`BACKOFF_MIN`].
    pub backoff_min: Duration,
    /// See [`BACKOFF_MAX`].
    pub backoff_max: Duration,
    /// See [`APPLICATION_NAME`].
    pub application_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue_capacity: QUEUE_CAPACITY,
            connect_timeout: CONNECT_TIMEOUT,
            statement_timeout: STATEMENT_TIMEOUT,
            tcp_timeout: TCP_TIMEOUT,
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            application_name: APPLICATION_NAME.to_owned(),
        }
    }
}

/// One database operation. The names follow the `Store` trait and
/// `db.rs`; `seen` is a LastSeen text (`db::utc_timestamp`).
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// Read: the client with this id ([`Reply::Client`]).
    ClientById(ClientId),
    /// Read: the client with this name ([`Reply::Client`]).
    ClientByName(String),
    /// Read: the number of clients ([`Reply::Count`]).
    ClientCount,
    /// Read: one file's row ([`Reply::File`]).
    File {
        /// The owner.
        id: ClientId,
        /// The stored base name.
        file_name: String,
    },
    /// Write: a new client without keys. `replace`, a client that never
    /// sent a public key, is deleted in the same transaction (§3). Fails
    /// with [`PgError::NameTaken`] when the name is another client's, on
    /// any server.
    RegisterClient {
        /// The new id.
        id: ClientId,
        /// The name.
        name: String,
        /// An unkeyed client of that name to delete first.
        replace: Option<ClientId>,
        /// LastSeen.
        seen: String,
    },
    /// Write: the public key and the AES key of a 2102, and LastSeen.
    SetPublicKey {
        /// The client.
        id: ClientId,
        /// Its public key (SPKI DER).
        public_key: Box<[u8; PUBLIC_KEY_LEN]>,
        /// The AES key sent.
        aes_key: AesKey,
        /// LastSeen.
        seen: String,
    },
    /// Write: the AES key of a 2105 (or a retiring one) as the last key.
    SetLastKey {
        /// The client.
        id: ClientId,
        /// The key.
        aes_key: AesKey,
    },
    /// Write: LastSeen (no change, and no WAL, when it already says so).
    Touch {
        /// The client (unknown: nothing happens, not an error).
        id: ClientId,
        /// LastSeen.
        seen: String,
    },
    /// Write: a complete upload's row with Verified = 0, unless the name
    /// has a row already.
    AddUnverifiedFile {
        /// The owner.
        id: ClientId,
        /// The base name.
        file_name: String,
        /// The final path as text.
        path_name: String,
    },
    /// Write: the file now at `path_name` is verified (1029).
    MarkVerified {
        /// The owner.
        id: ClientId,
        /// The base name.
        file_name: String,
        /// The final path as text.
        path_name: String,
    },
    /// Write: a file's row back to Verified = 0 (its file is missing).
    MarkUnverified {
        /// The owner.
        id: ClientId,
        /// The base name.
        file_name: String,
    },
    /// Write: delete one file's row.
    DeleteFile {
        /// The owner.
        id: ClientId,
        /// The base name.
        file_name: String,
    },
    /// Write: delete a client's row and its own quota (its files' rows
    /// stay, as in `db.rs`).
    DeleteClient(ClientId),
    /// Read: a client's files with their recorded sizes
    /// ([`Reply::Files`]).
    FilesOf(ClientId),
    /// Read: a client's own quota ([`Reply::Quota`]).
    QuotaOf(ClientId),
    /// Write: a stored file's size and (if known) cksum.
    RecordFileMeta {
        /// The owner.
        id: ClientId,
        /// The base name.
        file_name: String,
        /// Its size.
        size: u64,
        /// Its cksum, if known.
        cksum: Option<u32>,
    },
    /// Write: a client's own quota; all-default deletes it.
    SetQuota {
        /// The client.
        id: ClientId,
        /// The override.
        quota: QuotaOverride,
    },
    /// Write: add to the lifetime counters (name, delta).
    AddCounters(Vec<(String, u64)>),
    /// Read: the database's size on disk and the stored files' bytes
    /// (verified files' recorded sizes), for the metrics
    /// ([`Reply::Sizes`]).
    Sizes,
    /// Write, and a file system change: an accepted upload, its content
    /// synced at `from`, is renamed over its final path `to` (its folder
    /// then fsynced), and recorded as verified with its size and cksum.
    /// The database decides first, under a lock on the client's row
    /// (`FOR NO KEY UPDATE`, held to the end of the transaction): the
    /// client must still exist (not forgotten), its name must not have
    /// been deleted by an administrator since the upload began
    /// (`withdrawals`), and the client's files in the database, other
    /// servers' uploads included, plus this one must fit its quota.
    /// Otherwise the operation is refused ([`PgError::Withdrawn`],
    /// [`PgError::OverQuota`]) and nothing is placed. Two servers placing
    /// the same client's files therefore take turns, and the one that
    /// commits last is also the one whose file is at the final path: the
    /// database decides, the records always describe the file. A `from`
    /// already gone with `to` present is a rename an earlier round of the
    /// same job made (the job is replayed after a failed operation), not
    /// an error. A placement that succeeds also adds one to the `verified`
    /// lifetime counter, in the same statement as its size; a refused or
    /// failed one adds nothing.
    PlaceVerified {
        /// The owner.
        id: ClientId,
        /// The base name.
        file_name: String,
        /// The synced temporary file.
        from: std::path::PathBuf,
        /// The final path.
        to: std::path::PathBuf,
        /// Its size.
        size: u64,
        /// Its cksum.
        cksum: u32,
        /// When its upload began (the loop's clock, which is the real
        /// one): a deletion of its name after that withdraws it.
        started: Instant,
        /// The server's quota, for a client without its own.
        quota: Quota,
    },
}

impl Op {
    /// The operation's name, as errors and logs say it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::ClientById(_) => "look up client by id",
            Op::ClientByName(_) => "look up client by name",
            Op::ClientCount => "count clients",
            Op::File { .. } => "look up file",
            Op::RegisterClient { .. } => "register client",
            Op::SetPublicKey { .. } => "store public key",
            Op::SetLastKey { .. } => "store last key",
            Op::Touch { .. } => "update LastSeen",
            Op::AddUnverifiedFile { .. } => "record received file",
            Op::MarkVerified { .. } => "record verified file",
            Op::MarkUnverified { .. } => "unmark missing file",
            Op::DeleteFile { .. } => "delete file",
            Op::DeleteClient(_) => "delete client",
            Op::FilesOf(_) => "list a client's files",
            Op::QuotaOf(_) => "look up quota",
            Op::RecordFileMeta { .. } => "record file size",
            Op::SetQuota { .. } => "set quota",
            Op::AddCounters(_) => "add to counters",
            Op::PlaceVerified { .. } => "place and record verified file",
            Op::Sizes => "measure database and files",
        }
    }

    /// The client whose `clients` row this operation locks for update
    /// (an `UPDATE` or `DELETE` of it, or [`Op::PlaceVerified`]'s lock).
    fn locks_client(&self) -> Option<&ClientId> {
        match self {
            Op::SetPublicKey { id, .. }
            | Op::SetLastKey { id, .. }
            | Op::Touch { id, .. }
            | Op::DeleteClient(id)
            | Op::PlaceVerified { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Statements that change something (0 for a read).
    fn write_statements(&self) -> usize {
        match self {
            Op::ClientById(_)
            | Op::ClientByName(_)
            | Op::ClientCount
            | Op::File { .. }
            | Op::FilesOf(_)
            | Op::QuotaOf(_)
            | Op::Sizes => 0,
            Op::RegisterClient {
                replace: Some(_), ..
            }
            | Op::DeleteFile { .. }
            | Op::DeleteClient(_) => 2,
            Op::PlaceVerified { .. } => 3,
            Op::AddCounters(deltas) => deltas.iter().filter(|(_, d)| *d > 0).count(),
            _ => 1,
        }
    }
}

/// Ids and names only: never a key.
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::ClientById(id)
            | Op::SetPublicKey { id, .. }
            | Op::SetLastKey { id, .. }
            | Op::Touch { id, .. }
            | Op::DeleteClient(id)
            | Op::FilesOf(id)
            | Op::QuotaOf(id)
            | Op::SetQuota { id, .. } => write!(f, "{}({})", self.name(), id.to_hex()),
            Op::AddCounters(deltas) => write!(f, "{}({deltas:?})", self.name()),
            Op::ClientByName(name) | Op::RegisterClient { name, .. } => {
                write!(f, "{}({name:?})", self.name())
            }
            Op::ClientCount | Op::Sizes => f.write_str(self.name()),
            Op::File { id, file_name }
            | Op::AddUnverifiedFile { id, file_name, .. }
            | Op::MarkVerified { id, file_name, .. }
            | Op::MarkUnverified { id, file_name }
            | Op::DeleteFile { id, file_name }
            | Op::RecordFileMeta { id, file_name, .. }
            | Op::PlaceVerified { id, file_name, .. } => {
                write!(f, "{}({} {file_name:?})", self.name(), id.to_hex())
            }
        }
    }
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `ClientById`, `ClientByName`.
    Client(Option<ClientRecord>),
    /// `File`.
    File(Option<FileRow>),
    /// `ClientCount`.
    Count(u64),
    /// `FilesOf`: each file's row and its recorded size.
    Files(Vec<(FileRow, Option<u64>)>),
    /// `QuotaOf`.
    Quota(QuotaOverride),
    /// `Sizes`: the database's bytes, the stored files' bytes.
    Sizes(u64, u64),
    /// A write: the rows it changed (0 for a `Touch` that found LastSeen
    /// already right or an unknown id, for a delete of nothing, ...).
    Written(u64),
}

/// A batch of operations run in one transaction. `tag` is the caller's,
/// returned in [`JobDone::tag`].
#[derive(Debug, Clone)]
pub struct Job {
    /// The caller's mark for the job (a pass number, say).
    pub tag: u64,
    /// The operations, run in order.
    pub ops: Vec<Op>,
}

/// The outcome of a [`Job`].
#[derive(Debug)]
pub struct JobDone {
    /// The job's tag.
    pub tag: u64,
    /// One result per operation, in order. When `commit` failed, every
    /// one of them is that error: nothing the job read or wrote may be
    /// relied on.
    pub results: Vec<Result<Reply, PgError>>,
    /// `Ok`: every write whose result is `Ok` is durable on the database.
    pub commit: Result<(), PgError>,
}

impl JobDone {
    /// The outcome of `job` as [`run_on`] left it: a failure of the whole
    /// job is every operation's error too.
    fn of(job: &Job, outcome: Result<Vec<Result<Reply, PgError>>, JobFailure>) -> JobDone {
        match outcome {
            Ok(results) => JobDone {
                tag: job.tag,
                results,
                commit: Ok(()),
            },
            Err((e, _)) => JobDone {
                tag: job.tag,
                results: job.ops.iter().map(|_| Err(e.clone())).collect(),
                commit: Err(e),
            },
        }
    }
}

/// The prepared statements, made again on every new connection.
struct Statements {
    client_by_id: Statement,
    client_by_name: Statement,
    client_count: Statement,
    file: Statement,
    delete_unkeyed: Statement,
    insert_client: Statement,
    set_public_key: Statement,
    set_last_key: Statement,
    touch: Statement,
    add_unverified: Statement,
    mark_verified: Statement,
    mark_unverified: Statement,
    delete_file: Statement,
    delete_file_meta: Statement,
    delete_client: Statement,
    delete_quota: Statement,
    files_of: Statement,
    quota_of: Statement,
    record_file_meta: Statement,
    place_meta_and_count: Statement,
    set_quota: Statement,
    add_counter: Statement,
    place_check: Statement,
    sizes: Statement,
}

impl Statements {
    fn prepare(c: &mut Client) -> Result<Statements, PgError> {
        let mut p = |sql: &str| {
            c.prepare(sql)
                .map_err(|e| PgError::from_driver("prepare statements", &e))
        };
        Ok(Statements {
            client_by_id: p("SELECT ID, Name, PublicKey, AESKey FROM clients WHERE ID = $1")?,
            client_by_name: p("SELECT ID, Name, PublicKey, AESKey FROM clients WHERE Name = $1")?,
            client_count: p("SELECT count(*) FROM clients")?,
            file: p("SELECT ID, FileName, PathName, Verified FROM files \
                     WHERE ID = $1 AND FileName = $2")?,
            delete_unkeyed: p("DELETE FROM clients WHERE ID = $1 AND PublicKey IS NULL")?,
            insert_client: p("INSERT INTO clients (ID, Name, LastSeen) VALUES ($1, $2, $3)")?,
            set_public_key: p(
                "UPDATE clients SET PublicKey = $1, AESKey = $2, LastSeen = $3 WHERE ID = $4",
            )?,
            set_last_key: p("UPDATE clients SET AESKey = $1 WHERE ID = $2")?,
            touch: p("UPDATE clients SET LastSeen = $1 \
                      WHERE ID = $2 AND LastSeen IS DISTINCT FROM $1")?,
            // Only for a client that still exists: one an administrator
            // forgot meanwhile (on a server the command could not tell)
            // leaves no row behind.
            add_unverified: p("INSERT INTO files (ID, FileName, PathName, Verified) \
                               SELECT $1, $2, $3, 0 WHERE EXISTS \
                               (SELECT 1 FROM clients WHERE ID = $1 FOR KEY SHARE) \
                               ON CONFLICT (ID, FileName) DO NOTHING")?,
            mark_verified: p("INSERT INTO files (ID, FileName, PathName, Verified) \
                              VALUES ($1, $2, $3, 1) ON CONFLICT (ID, FileName) \
                              DO UPDATE SET PathName = EXCLUDED.PathName, Verified = 1")?,
            mark_unverified: p("UPDATE files SET Verified = 0 WHERE ID = $1 AND FileName = $2")?,
            delete_file: p("DELETE FROM files WHERE ID = $1 AND FileName = $2")?,
            delete_file_meta: p("DELETE FROM file_meta WHERE ID = $1 AND FileName = $2")?,
            delete_client: p("DELETE FROM clients WHERE ID = $1")?,
            delete_quota: p("DELETE FROM quotas WHERE ID = $1")?,
            files_of: p("SELECT f.ID, f.FileName, f.PathName, f.Verified, m.Size FROM files f \
                         LEFT JOIN file_meta m ON m.ID = f.ID AND m.FileName = f.FileName \
                         WHERE f.ID = $1 ORDER BY f.FileName")?,
            quota_of: p("SELECT MaxBytes, MaxFiles FROM quotas WHERE ID = $1")?,
            record_file_meta: p("INSERT INTO file_meta (ID, FileName, Size, Cksum) \
                                 VALUES ($1, $2, $3, $4) ON CONFLICT (ID, FileName) \
                                 DO UPDATE SET Size = EXCLUDED.Size, Cksum = EXCLUDED.Cksum")?,
            // record_file_meta, and the lifetime counter of verified
            // uploads by one: in the statement (and so the transaction)
            // that completes a placement, never for one refused or failed.
            place_meta_and_count: p("WITH counted AS (INSERT INTO counters (Name, Value) \
                                     VALUES ($5, 1) ON CONFLICT (Name) \
                                     DO UPDATE SET Value = counters.Value + 1) \
                                     INSERT INTO file_meta (ID, FileName, Size, Cksum) \
                                     VALUES ($1, $2, $3, $4) ON CONFLICT (ID, FileName) \
                                     DO UPDATE SET Size = EXCLUDED.Size, Cksum = EXCLUDED.Cksum")?,
            set_quota: p("INSERT INTO quotas (ID, MaxBytes, MaxFiles) VALUES ($1, $2, $3) \
                          ON CONFLICT (ID) DO UPDATE \
                          SET MaxBytes = EXCLUDED.MaxBytes, MaxFiles = EXCLUDED.MaxFiles")?,
            place_check: p(PLACE_CHECK_SQL)?,
            sizes: p("SELECT pg_database_size(current_database()), \
                      (SELECT coalesce(sum(m.Size), 0)::bigint FROM file_meta m \
                       JOIN files f ON f.ID = m.ID AND f.FileName = m.FileName \
                       WHERE f.Verified = 1)")?,
            add_counter: p("INSERT INTO counters (Name, Value) VALUES ($1, $2) \
                            ON CONFLICT (Name) DO UPDATE SET Value = counters.Value + EXCLUDED.Value")?,
        })
    }
}

/// Opens a connection as `url` says (TLS only when it asks), with the
/// worker's timeouts, and sets `statement_timeout` for the session.
pub fn connect(url: &PgUrl, settings: &Settings) -> Result<Client, PgError> {
    let mut config = url.config().clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(settings.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name(&settings.application_name);
    }
    config
        .tcp_user_timeout(settings.tcp_timeout)
        .keepalives(true)
        .keepalives_idle(settings.tcp_timeout);
    let lost = |e: postgres::Error| PgError::from_driver("connect", &e);
    let mut client = match url.tls() {
        TlsMode::Disable => config.connect(postgres::NoTls).map_err(lost)?,
        mode => config.connect(tls_connector(url, mode)?).map_err(lost)?,
    };
    let ms = settings.statement_timeout.as_millis();
    client
        .batch_execute(&format!("SET statement_timeout = {ms}"))
        .map_err(|e| PgError::from_driver("set statement_timeout", &e))?;
    Ok(client)
}

/// The OpenSSL connector for a TLS mode: no certificate check for
/// `prefer`/`require`; the chain for `verify-ca`; chain and host name for
/// `verify-full` (the connector's default).
fn tls_connector(
    url: &PgUrl,
    mode: TlsMode,
) -> Result<postgres_openssl::MakeTlsConnector, PgError> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let tls_err = |e: openssl::error::ErrorStack| PgError::Database {
        op: "set up TLS",
        code: None,
        detail: e.to_string(),
    };
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err)?;
    let verify = matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull);
    if verify {
        if let Some(ca) = url.root_cert() {
            builder.set_ca_file(ca).map_err(|e| PgError::Database {
                op: "read sslrootcert",
                code: None,
                detail: format!("{}: {e}", ca.display()),
            })?;
        }
        builder.set_verify(SslVerifyMode::PEER);
    } else {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = postgres_openssl::MakeTlsConnector::new(builder.build());
    if mode != TlsMode::VerifyFull {
        connector.set_callback(|cfg, _host| {
            cfg.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

/// A live connection and its statements.
struct Conn {
    client: Client,
    stmts: Statements,
}

impl Conn {
    fn open(url: &PgUrl, settings: &Settings) -> Result<Conn, PgError> {
        let mut client = connect(url, settings)?;
        let stmts = Statements::prepare(&mut client)?;
        Ok(Conn { client, stmts })
    }
}

/// The handle the event loop keeps: submit jobs, collect results.
/// Dropping it stops the worker after the job it is running.
pub struct Worker {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<JobDone>,
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("in_flight", &self.in_flight())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// A worker's connection, made and migrated, before its thread runs:
/// [`Connected::open`] at start-up (so a wrong password or a newer schema
/// is a start-up error), [`Connected::spawn`] once the event loop has its
/// `mio::Waker`.
pub struct Connected {
    url: PgUrl,
    settings: Settings,
    conn: Conn,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected").field("url", &self.url).finish()
    }
}

impl Connected {
    /// Connects, migrates the schema ([`schema::migrate`]) and prepares
    /// the statements.
    pub fn open(url: &PgUrl, settings: Settings) -> Result<Connected, PgError> {
        let mut client = connect(url, &settings)?;
        schema::migrate(&mut client)?;
        let stmts = Statements::prepare(&mut client)?;
        Ok(Connected {
            url: url.clone(),
            settings,
            conn: Conn { client, stmts },
        })
    }

    /// Runs a job here, on the caller's thread (start-up work before the
    /// thread exists: the records' repair, an administration command).
    pub fn run_now(&mut self, job: &Job) -> JobDone {
        JobDone::of(job, run_on(&mut self.conn, &job.ops))
    }

    /// Starts the thread; `waker` is woken after every finished job.
    pub fn spawn(self, waker: Arc<mio::Waker>) -> Result<Worker, PgError> {
        let Connected {
            url,
            settings,
            conn,
        } = self;
        let capacity = settings.queue_capacity.max(1);
        // Never full in practice: `in_flight` admits at most `capacity`.
        let (job_tx, job_rx) = mpsc::sync_channel(capacity);
        let (done_tx, done_rx) = mpsc::channel();
        let mut state = Thread {
            url,
            settings,
            conn: Some(conn),
            next_attempt: Instant::now(),
            backoff: Duration::ZERO,
            last_error: None,
        };
        let thread = std::thread::Builder::new()
            .name("sealdrop-pg".into())
            .spawn(move || state.run(job_rx, done_tx, waker))
            .map_err(|e| PgError::Database {
                op: "start database worker",
                code: None,
                detail: e.to_string(),
            })?;
        Ok(Worker {
            jobs: Some(job_tx),
            done: done_rx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            capacity,
            thread: Some(thread),
        })
    }
}

impl Worker {
    /// Connects, migrates the schema ([`schema::migrate`]), prepares the
    /// statements and starts the thread. Errors here are start-up errors
    /// (a wrong password, a database of a newer schema). `waker` is woken
    /// after every finished job.
    pub fn start(
        url: &PgUrl,
        settings: Settings,
        waker: Arc<mio::Waker>,
    ) -> Result<Worker, PgError> {
        Connected::open(url, settings)?.spawn(waker)
    }

    /// Queues a job without blocking. Refused when [`Settings::queue_capacity`]
    /// jobs are submitted and not yet collected ([`PgError::QueueFull`]),
    /// when it has more than [`MAX_OPS_PER_JOB`] operations, or when the
    /// worker is gone.
    pub fn submit(&self, job: Job) -> Result<(), PgError> {
        if job.ops.len() > MAX_OPS_PER_JOB {
            return Err(PgError::JobTooLarge {
                ops: job.ops.len(),
                max: MAX_OPS_PER_JOB,
            });
        }
        let jobs = self.jobs.as_ref().ok_or(PgError::WorkerGone)?;
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return Err(PgError::QueueFull { cap: self.capacity });
        }
        match jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    TrySendError::Full(_) => PgError::QueueFull { cap: self.capacity },
                    TrySendError::Disconnected(_) => PgError::WorkerGone,
                })
            }
        }
    }

    /// A finished job, if one is waiting (call it until `None` after the
    /// waker fired).
    pub fn try_recv(&self) -> Option<JobDone> {
        let done = self.done.try_recv().ok()?;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        Some(done)
    }

    /// Waits up to `timeout` for a finished job (for tests and shutdown;
    /// the event loop uses the waker and [`Worker::try_recv`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<JobDone> {
        let done = self.done.recv_timeout(timeout).ok()?;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        Some(done)
    }

    /// Jobs submitted and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The queue's capacity ([`Settings::queue_capacity`]).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after its current job
        // (bounded by the statement timeout).
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the database worker thread panicked");
            }
        }
    }
}

/// The worker thread's state.
struct Thread {
    url: PgUrl,
    settings: Settings,
    conn: Option<Conn>,
    /// When to try connecting again (while `conn` is `None`).
    next_attempt: Instant,
    backoff: Duration,
    /// Why the last attempt failed (said to jobs refused meanwhile).
    last_error: Option<String>,
}

impl Thread {
    fn run(&mut self, jobs: Receiver<Job>, done: mpsc::Sender<JobDone>, waker: Arc<mio::Waker>) {
        loop {
            let job = if self.conn.is_some() {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                let wait = self.next_attempt.saturating_duration_since(Instant::now());
                match jobs.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        self.reconnect();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            if self.conn.is_none() && Instant::now() >= self.next_attempt {
                self.reconnect();
            }
            let outcome = self.run_job(&job);
            if done.send(outcome).is_err() {
                return;
            }
            if let Err(e) = waker.wake() {
                log::error!("database worker: cannot wake the event loop: {e}");
            }
        }
    }

    /// One connection attempt; on failure the next waits twice as long.
    fn reconnect(&mut self) {
        match Conn::open(&self.url, &self.settings) {
            Ok(conn) => {
                log::info!("connected to PostgreSQL again ({})", self.url);
                self.conn = Some(conn);
                self.backoff = Duration::ZERO;
                self.last_error = None;
            }
            Err(e) => {
                self.backoff = (self.backoff * 2)
                    .max(self.settings.backoff_min)
                    .min(self.settings.backoff_max);
                self.next_attempt = Instant::now() + self.backoff;
                log::warn!(
                    "cannot reconnect to PostgreSQL: {e}; next attempt in {} ms",
                    self.backoff.as_millis()
                );
                self.last_error = Some(e.to_string());
            }
        }
    }

    /// Marks the connection dead: the next job (or the idle timer) makes
    /// a new one at once.
    fn lose_connection(&mut self, why: &PgError) {
        log::warn!("{why}; reconnecting");
        self.conn = None;
        self.next_attempt = Instant::now();
        self.last_error = Some(why.to_string());
    }

    fn run_job(&mut self, job: &Job) -> JobDone {
        let mut outcome = match self.conn.as_mut() {
            Some(conn) => run_on(conn, &job.ops),
            None => Err((
                PgError::ConnectionLost {
                    detail: format!(
                        "database unavailable ({}); retrying",
                        self.last_error.as_deref().unwrap_or("not connected")
                    ),
                },
                false,
            )),
        };
        if let Err((e, before_anything)) = &outcome {
            if e.is_connection_lost() && self.conn.is_some() {
                let e = e.clone();
                let retry = *before_anything;
                self.lose_connection(&e);
                if retry {
                    // Dead before the job did anything (the database
                    // restarted while we were idle): one fresh connection,
                    // one more try.
                    self.reconnect();
                    if let Some(conn) = self.conn.as_mut() {
                        outcome = run_on(conn, &job.ops);
                        if let Err((e, _)) = &outcome {
                            if e.is_connection_lost() {
                                let e = e.clone();
                                self.lose_connection(&e);
                            }
                        }
                    }
                }
            }
        }
        JobDone::of(job, outcome)
    }
}

/// What can end a job as a whole: the error, and whether it came before
/// any statement of the job reached the database with effect (the first
/// statement was `BEGIN` or a read), so running the job again is safe.
type JobFailure = (PgError, bool);

/// Runs a job's operations: in one transaction if more than one statement
/// writes, else each on its own. An operation whose statement fails is
/// taken out and the job run again without it (its error kept), so the
/// others still commit; a lost connection or a failed `COMMIT` fails the
/// job as a whole.
fn run_on(conn: &mut Conn, ops: &[Op]) -> Result<Vec<Result<Reply, PgError>>, JobFailure> {
    let transactional = ops.iter().map(Op::write_statements).sum::<usize>() > 1;
    let mut failed: Vec<Option<PgError>> = vec![None; ops.len()];
    // Each round takes out at least one operation, so this ends.
    for round in 0..=ops.len() {
        let first_round = round == 0;
        let mut results = Vec::with_capacity(ops.len());
        let mut replay = false;
        if transactional {
            // BEGIN, and the clients' rows locked in order, in one round
            // trip.
            if let Err(e) = conn.client.batch_execute(&begin_sql(ops, &failed)) {
                let e = PgError::from_driver("begin", &e);
                let _ = conn.client.batch_execute("ROLLBACK");
                return Err((e, first_round));
            }
            for (i, op) in ops.iter().enumerate() {
                if let Some(e) = &failed[i] {
                    results.push(Err(e.clone()));
                    continue;
                }
                match run_op(&mut conn.client, &conn.stmts, op) {
                    Ok(r) => results.push(r),
                    Err(e) if e.is_connection_lost() => return Err((e, false)),
                    Err(e) => {
                        // The server aborted the transaction: roll back
                        // and run the rest again.
                        log::debug!("{op:?} failed: {e}; running its batch again without it");
                        failed[i] = Some(e);
                        replay = true;
                        break;
                    }
                }
            }
            if replay {
                conn.client
                    .batch_execute("ROLLBACK")
                    .map_err(|e| (PgError::from_driver("rollback", &e), false))?;
                continue;
            }
            conn.client
                .batch_execute("COMMIT")
                .map_err(|e| (PgError::from_driver("commit", &e), false))?;
            return Ok(results);
        }
        for (i, op) in ops.iter().enumerate() {
            match run_op(&mut conn.client, &conn.stmts, op) {
                Ok(r) => results.push(r),
                Err(e) if e.is_connection_lost() => {
                    // Safe to rerun only if nothing before it ran and it
                    // is itself a read.
                    let harmless = i == 0 && op.write_statements() == 0;
                    return Err((e, first_round && harmless));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        return Ok(results);
    }
    // Unreachable in practice: every round fails one more operation.
    Ok(failed
        .into_iter()
        .map(|e| Err(e.unwrap_or(PgError::Invalid("operation not run".into()))))
        .collect())
}

/// `BEGIN`, then a statement that locks, in the order of their ids, the
/// `clients` rows the job's operations will update (not those of
/// operations already failed), sent together as one simple query: every
/// server takes the rows in that one order, so two servers' jobs touching
/// the same clients wait for each other instead of deadlocking (which
/// PostgreSQL would end after a second by failing one of them). It is
/// also the lock [`Op::PlaceVerified`]'s check relies on: taken before the
/// check's statement starts, so the check sees every placement and
/// deletion that committed before it. The ids are written as `bytea` hex
/// literals, which are hex digits only.
fn begin_sql(ops: &[Op], failed: &[Option<PgError>]) -> String {
    let mut ids: Vec<&ClientId> = ops
        .iter()
        .zip(failed)
        .filter(|(_, f)| f.is_none())
        .filter_map(|(op, _)| op.locks_client())
        .collect();
    if ids.is_empty() {
        return "BEGIN".to_owned();
    }
    ids.sort_unstable_by_key(|id| id.0);
    ids.dedup();
    let list: Vec<String> = ids
        .iter()
        .map(|id| format!("'\\x{}'::bytea", id.to_hex()))
        .collect();
    format!(
        "BEGIN; SELECT 1 FROM clients WHERE ID IN ({}) ORDER BY ID FOR NO KEY UPDATE",
        list.join(", ")
    )
}

/// Runs one operation. `Ok(Err(..))`: the statement ran but its outcome
/// is a refusal that leaves the transaction usable (an update of an
/// unknown client, a malformed row); `Err`: the statement itself failed
/// (the server aborted the transaction, or the connection is gone).
fn run_op(
    c: &mut impl GenericClient,
    s: &Statements,
    op: &Op,
) -> Result<Result<Reply, PgError>, PgError> {
    let name = op.name();
    let err = |e: postgres::Error| PgError::from_driver(name, &e);
    let written = |n: u64| Ok(Ok(Reply::Written(n)));
    let one_client = |n: u64| {
        if n == 0 {
            Ok(Err(PgError::NoSuchClient { op: name }))
        } else {
            Ok(Ok(Reply::Written(n)))
        }
    };
    match op {
        Op::ClientById(id) => {
            let row = c.query_opt(&s.client_by_id, &[&&id.0[..]]).map_err(err)?;
            Ok(row
                .map(|r| client_from_row(&r))
                .transpose()
                .map(Reply::Client))
        }
        Op::ClientByName(name) => {
            let row = c.query_opt(&s.client_by_name, &[name]).map_err(err)?;
            Ok(row
                .map(|r| client_from_row(&r))
                .transpose()
                .map(Reply::Client))
        }
        Op::ClientCount => {
            let n: i64 = c.query_one(&s.client_count, &[]).map_err(err)?.get(0);
            Ok(Ok(Reply::Count(n.unsigned_abs())))
        }
        Op::File { id, file_name } => {
            let row = c
                .query_opt(&s.file, &[&&id.0[..], file_name])
                .map_err(err)?;
            Ok(row.map(|r| file_from_row(&r)).transpose().map(Reply::File))
        }
        Op::RegisterClient {
            id,
            name,
            replace,
            seen,
        } => {
            if let Some(old) = replace {
                let deleted = c.execute(&s.delete_unkeyed, &[&&old.0[..]]).map_err(err)?;
                if deleted == 0 {
                    log::warn!(
                        "register: client {} to replace is gone or keyed",
                        old.to_hex()
                    );
                }
            }
            let n = c
                .execute(&s.insert_client, &[&&id.0[..], name, seen])
                .map_err(err)?;
            written(n)
        }
        Op::SetPublicKey {
            id,
            public_key,
            aes_key,
            seen,
        } => {
            let n = c
                .execute(
                    &s.set_public_key,
                    &[&&public_key[..], &aes_key.as_bytes(), seen, &&id.0[..]],
                )
                .map_err(err)?;
            one_client(n)
        }
        Op::SetLastKey { id, aes_key } => {
            let n = c
                .execute(&s.set_last_key, &[&aes_key.as_bytes(), &&id.0[..]])
                .map_err(err)?;
            one_client(n)
        }
        Op::Touch { id, seen } => {
            let n = c.execute(&s.touch, &[seen, &&id.0[..]]).map_err(err)?;
            written(n)
        }
        Op::AddUnverifiedFile {
            id,
            file_name,
            path_name,
        } => {
            let n = c
                .execute(&s.add_unverified, &[&&id.0[..], file_name, path_name])
                .map_err(err)?;
            written(n)
        }
        Op::MarkVerified {
            id,
            file_name,
            path_name,
        } => {
            let n = c
                .execute(&s.mark_verified, &[&&id.0[..], file_name, path_name])
                .map_err(err)?;
            written(n)
        }
        Op::MarkUnverified { id, file_name } => {
            let n = c
                .execute(&s.mark_unverified, &[&&id.0[..], file_name])
                .map_err(err)?;
            written(n)
        }
        Op::DeleteFile { id, file_name } => {
            c.execute(&s.delete_file_meta, &[&&id.0[..], file_name])
                .map_err(err)?;
            let n = c
                .execute(&s.delete_file, &[&&id.0[..], file_name])
                .map_err(err)?;
            written(n)
        }
        Op::DeleteClient(id) => {
            c.execute(&s.delete_quota, &[&&id.0[..]]).map_err(err)?;
            let n = c.execute(&s.delete_client, &[&&id.0[..]]).map_err(err)?;
            written(n)
        }
        Op::FilesOf(id) => {
            let rows = c.query(&s.files_of, &[&&id.0[..]]).map_err(err)?;
            let mut files = Vec::with_capacity(rows.len());
            for row in &rows {
                let file = match file_from_row(row) {
                    Ok(file) => file,
                    Err(e) => return Ok(Err(e)),
                };
                let size = match get::<Option<i64>>(row, "file_meta", 4, "Size") {
                    Ok(size) => size.and_then(|n| u64::try_from(n).ok()),
                    Err(e) => return Ok(Err(e)),
                };
                files.push((file, size));
            }
            Ok(Ok(Reply::Files(files)))
        }
        Op::QuotaOf(id) => {
            let row = c.query_opt(&s.quota_of, &[&&id.0[..]]).map_err(err)?;
            let quota = match row {
                None => QuotaOverride::default(),
                Some(row) => {
                    let bytes: Option<i64> = match get(&row, "quotas", 0, "MaxBytes") {
                        Ok(v) => v,
                        Err(e) => return Ok(Err(e)),
                    };
                    let files: Option<i64> = match get(&row, "quotas", 1, "MaxFiles") {
                        Ok(v) => v,
                        Err(e) => return Ok(Err(e)),
                    };
                    QuotaOverride {
                        bytes: crate::db::setting_from(bytes),
                        files: crate::db::setting_from(files),
                    }
                }
            };
            Ok(Ok(Reply::Quota(quota)))
        }
        Op::RecordFileMeta {
            id,
            file_name,
            size,
            cksum,
        } => {
            let size = i64::try_from(*size).unwrap_or(i64::MAX);
            let cksum = cksum.map(i64::from);
            let n = c
                .execute(&s.record_file_meta, &[&&id.0[..], file_name, &size, &cksum])
                .map_err(err)?;
            written(n)
        }
        Op::SetQuota { id, quota } => {
            let n = if quota.is_default() {
                c.execute(&s.delete_quota, &[&&id.0[..]]).map_err(err)?
            } else {
                let bytes = crate::db::setting_to(quota.bytes);
                let files = crate::db::setting_to(quota.files);
                c.execute(&s.set_quota, &[&&id.0[..], &bytes, &files])
                    .map_err(err)?
            };
            written(n)
        }
        Op::PlaceVerified {
            id,
            file_name,
            from,
            to,
            size,
            cksum,
            started,
            quota,
        } => {
            // The client's row is locked already: a job with a placement
            // is a transaction, and it began with begin_sql's lock.
            let key = &id.0[..];
            let age_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            let row = c
                .query_one(&s.place_check, &[&key, file_name, &age_ms])
                .map_err(err)?;
            let check = match PlaceCheck::from_row(&row) {
                Ok(check) => check,
                Err(e) => return Ok(Err(e)),
            };
            if let Err(refused) = check.decide(*quota, *size) {
                return Ok(Err(refused));
            }
            if let Err(e) = place(from, to) {
                return Ok(Err(PgError::Invalid(format!(
                    "place {}: {e}",
                    to.display()
                ))));
            }
            let path = to.to_string_lossy();
            c.execute(&s.mark_verified, &[&key, file_name, &path.as_ref()])
                .map_err(err)?;
            let size = i64::try_from(*size).unwrap_or(i64::MAX);
            let n = c
                .execute(
                    &s.place_meta_and_count,
                    &[
                        &key,
                        file_name,
                        &size,
                        &i64::from(*cksum),
                        &crate::store::Outcome::Verified.key(),
                    ],
                )
                .map_err(err)?;
            written(n)
        }
        Op::Sizes => {
            let row = c.query_one(&s.sizes, &[]).map_err(err)?;
            let (db, files): (i64, i64) = (row.get(0), row.get(1));
            Ok(Ok(Reply::Sizes(db.unsigned_abs(), files.unsigned_abs())))
        }
        Op::AddCounters(deltas) => {
            let mut n = 0;
            for (name, delta) in deltas.iter().filter(|(_, d)| *d > 0) {
                let delta = i64::try_from(*delta).unwrap_or(i64::MAX);
                n += c.execute(&s.add_counter, &[name, &delta]).map_err(err)?;
            }
            written(n)
        }
    }
}

/// What [`Op::PlaceVerified`] asks the database before it places an
/// upload of client `$1` named `$2` that began `$3` milliseconds ago: does
/// the client still exist, was the name deleted since (`withdrawals`),
/// the client's own quota, and
/// what it keeps (verified files: the others' number and bytes, and the
/// size of the one this upload replaces).
const PLACE_CHECK_SQL: &str = "SELECT \
    EXISTS (SELECT 1 FROM clients c WHERE c.ID = $1), \
    EXISTS (SELECT 1 FROM withdrawals w WHERE w.ID = $1 AND w.FileName = $2 \
            AND w.At > clock_timestamp() - $3::bigint * interval '1 millisecond'), \
    (SELECT q.MaxBytes FROM quotas q WHERE q.ID = $1), \
    (SELECT q.MaxFiles FROM quotas q WHERE q.ID = $1), \
    (SELECT count(*) FROM files f WHERE f.ID = $1 AND f.Verified <> 0 AND f.FileName <> $2), \
    (SELECT coalesce(sum(m.Size), 0)::bigint FROM files f JOIN file_meta m \
       ON m.ID = f.ID AND m.FileName = f.FileName \
       WHERE f.ID = $1 AND f.Verified <> 0 AND f.FileName <> $2), \
    (SELECT coalesce(m.Size, 0) FROM files f LEFT JOIN file_meta m \
       ON m.ID = f.ID AND m.FileName = f.FileName \
       WHERE f.ID = $1 AND f.FileName = $2 AND f.Verified <> 0)";

/// The answer to [`PLACE_CHECK_SQL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlaceCheck {
    /// The client has a record (an administrator may have forgotten it).
    client: bool,
    /// An administrator deleted the name after the upload began.
    withdrawn: bool,
    /// The client's own quota.
    own: QuotaOverride,
    /// Its other verified files.
    others: Usage,
    /// The size of the verified file of this name, if there is one.
    replaced: Option<u64>,
}

impl PlaceCheck {
    fn from_row(row: &Row) -> Result<PlaceCheck, PgError> {
        let t = "files";
        let count: i64 = get(row, t, 4, "count")?;
        let bytes: i64 = get(row, t, 5, "Size")?;
        let replaced: Option<i64> = get(row, t, 6, "Size")?;
        Ok(PlaceCheck {
            client: get(row, "clients", 0, "ID")?,
            withdrawn: get(row, "withdrawals", 1, "At")?,
            own: QuotaOverride {
                bytes: crate::db::setting_from(get(row, "quotas", 2, "MaxBytes")?),
                files: crate::db::setting_from(get(row, "quotas", 3, "MaxFiles")?),
            },
            others: Usage {
                files: count.unsigned_abs(),
                bytes: bytes.unsigned_abs(),
            },
            replaced: replaced.map(i64::unsigned_abs),
        })
    }

    /// Whether an upload of `size` bytes may be placed on a server whose
    /// quota is `server`: the same rule as the store's check at the
    /// upload's start and at its 1029 ([`Quota::check`]).
    fn decide(&self, server: Quota, size: u64) -> Result<(), PgError> {
        if !self.client {
            return Err(PgError::Withdrawn {
                why: "the client was forgotten",
            });
        }
        if self.withdrawn {
            return Err(PgError::Withdrawn {
                why: "its name was deleted while it was in flight",
            });
        }
        let usage = Usage {
            files: self.others.files + u64::from(self.replaced.is_some()),
            bytes: self.others.bytes.saturating_add(self.replaced.unwrap_or(0)),
        };
        self.own
            .apply(server)
            .check(usage, self.replaced, size)
            .map_err(PgError::OverQuota)
    }
}

/// Renames `from` over `to` and fsyncs the folder; a rename an earlier
/// round made (`from` gone, `to` there) counts as done.
fn place(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !from.exists() && to.exists() => {}
        Err(e) => return Err(e),
    }
    match to.parent() {
        Some(dir) => crate::files::sync_dir(dir),
        None => Ok(()),
    }
}

/// A stored value of the wrong shape: names the column, never the bytes.
fn bad(table: &str, column: &str, what: impl std::fmt::Display) -> PgError {
    PgError::Invalid(format!("{table}.{column}: {what}"))
}

fn get<'a, T: postgres::types::FromSql<'a>>(
    row: &'a Row,
    table: &str,
    i: usize,
    column: &str,
) -> Result<T, PgError> {
    row.try_get(i).map_err(|e| bad(table, column, e))
}

fn client_id(row: &Row, table: &str) -> Result<ClientId, PgError> {
    let id: &[u8] = get(row, table, 0, "ID")?;
    id.try_into()
        .map(ClientId)
        .map_err(|_| bad(table, "ID", format_args!("{} bytes, not 16", id.len())))
}

/// `ID, Name, PublicKey, AESKey` to a record.
fn client_from_row(row: &Row) -> Result<ClientRecord, PgError> {
    let t = "clients";
    let id = client_id(row, t)?;
    let name: String = get(row, t, 1, "Name")?;
    let public_key = match get::<Option<&[u8]>>(row, t, 2, "PublicKey")? {
        None => None,
        Some(b) => Some(Box::new(<[u8; PUBLIC_KEY_LEN]>::try_from(b).map_err(
            |_| {
                bad(
                    t,
                    "PublicKey",
                    format_args!("{} bytes, not {PUBLIC_KEY_LEN}", b.len()),
                )
            },
        )?)),
    };
    let last_key = match get::<Option<&[u8]>>(row, t, 3, "AESKey")? {
        None => None,
        Some(b) => Some(
            AesKey::from_slice(b)
                .ok_or_else(|| bad(t, "AESKey", format_args!("{} bytes, not 16 or 32", b.len())))?,
        ),
    };
    Ok(ClientRecord {
        id,
        name,
        public_key,
        last_key,
    })
}

/// `ID, FileName, PathName, Verified` to a [`FileRow`].
fn file_from_row(row: &Row) -> Result<FileRow, PgError> {
    let t = "files";
    Ok(FileRow {
        client: client_id(row, t)?,
        file_name: get(row, t, 1, "FileName")?,
        path_name: get::<Option<String>>(row, t, 2, "PathName")?.unwrap_or_default(),
        verified: get::<Option<i32>>(row, t, 3, "Verified")?.is_some_and(|v| v != 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_use_the_named_limits() {
        let s = Settings::default();
        assert_eq!(s.queue_capacity, QUEUE_CAPACITY);
        assert_eq!(s.connect_timeout, CONNECT_TIMEOUT);
        assert_eq!(s.statement_timeout, STATEMENT_TIMEOUT);
        assert_eq!(s.tcp_timeout, TCP_TIMEOUT);
        assert_eq!((s.backoff_min, s.backoff_max), (BACKOFF_MIN, BACKOFF_MAX));
        assert_eq!(s.application_name, APPLICATION_NAME);
    }

    #[test]
    fn debug_of_an_op_shows_ids_and_names_never_keys() {
        let op = Op::SetPublicKey {
            id: ClientId([0xab; 16]),
            public_key: Box::new([0x5c; PUBLIC_KEY_LEN]),
            aes_key: AesKey::from_bytes([0xee; 16]),
            seen: "2025-01-01T00:00:00Z".into(),
        };
        let shown = format!("{op:?}");
        assert_eq!(shown, format!("store public key({})", "ab".repeat(16)));
        let op = Op::SetLastKey {
            id: ClientId([1; 16]),
            aes_key: AesKey::from_bytes([0xee; 16]),
        };
        assert!(!format!("{op:?}").contains("ee"), "{op:?}");
    }

    #[test]
    fn the_database_check_before_placing_follows_the_quota_rule() {
        let check = |replaced| PlaceCheck {
            client: true,
            withdrawn: false,
            own: QuotaOverride::default(),
            others: Usage {
                files: 2,
                bytes: 10,
            },
            replaced,
        };
        let server = Quota {
            max_bytes: Some(16),
            max_files: Some(3),
        };
        // A third file of 6 bytes fits exactly; 7 does not.
        assert_eq!(check(None).decide(server, 6), Ok(()));
        assert!(matches!(
            check(None).decide(server, 7),
            Err(PgError::OverQuota(q)) if q.would_be == 17 && q.max == 16
        ));
        // Replacing a 4-byte file: its bytes are given back, no new file.
        assert_eq!(check(Some(4)).decide(server, 6), Ok(()));
        let full = Quota {
            max_bytes: None,
            max_files: Some(2),
        };
        assert!(matches!(
            check(None).decide(full, 1),
            Err(PgError::OverQuota(q)) if q.would_be == 3
        ));
        // Two others and the one replaced make three files, no more.
        let three = Quota {
            max_bytes: None,
            max_files: Some(3),
        };
        assert_eq!(check(Some(1)).decide(three, 100), Ok(()));
        assert!(check(Some(1)).decide(full, 100).is_err());
        // The client's own quota wins over the server's.
        let mut own = check(None);
        own.own.files = sealdrop_protocol::store::QuotaSetting::Unlimited;
        assert_eq!(own.decide(full, 1), Ok(()));
        // A deletion after the start withdraws it, whatever the quota.
        let mut gone = check(None);
        gone.withdrawn = true;
        assert!(matches!(
            gone.decide(Quota::default(), 0),
            Err(PgError::Withdrawn { why }) if why.contains("deleted")
        ));
        let mut forgotten = check(None);
        forgotten.client = false;
        assert!(matches!(
            forgotten.decide(Quota::default(), 0),
            Err(PgError::Withdrawn { why }) if why.contains("forgotten")
        ));
    }

    #[test]
    fn placing_twice_is_placing_once_and_a_missing_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join(".part-x"), dir.path().join("f"));
        std::fs::write(&from, b"new").unwrap();
        std::fs::write(&to, b"old").unwrap();
        place(&from, &to).unwrap();
        // The replayed round finds its rename made.
        place(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"new");
        let gone = dir.path().join("nothing");
        assert!(place(&gone, &dir.path().join("g")).is_err());
    }

    #[test]
    fn only_jobs_with_several_write_statements_need_a_transaction() {
        let id = ClientId([1; 16]);
        let reg = |replace| Op::RegisterClient {
            id,
            name: "n".into(),
            replace,
            seen: String::new(),
        };
        assert_eq!(Op::ClientById(id).write_statements(), 0);
        assert_eq!(reg(None).write_statements(), 1);
        assert_eq!(reg(Some(id)).write_statements(), 2);
        assert_eq!(
            Op::Touch {
                id,
                seen: String::new()
            }
            .write_statements(),
            1
        );
    }
}
