//! Monitoring: the counters, gauges and histograms served at
//! `GET /metrics` when `--metrics-listen` is given (Prometheus text format,
//! rendered by the `prometheus-client` crate; the HTTP side is
//! [`crate::metrics_http`]), and the one-line `STATUS=` systemd shows.
//!
//! Everything is fed from what the loop already sees, one call per event:
//! the session events that also go to the log and to the in-process
//! observer ([`Metrics::session_event`]), accepts, socket reads, the
//! commit at the end of each pass ([`Metrics::pass_ended`]) and the
//! orphans housekeeping expired. A verified upload counts once the commit
//! that made it durable succeeded, not when its 1029 arrived.
//!
//! The stored files' size is the recorded sizes of the verified files,
//! as the database adds them up (only when the endpoint is on): measured
//! at start, then every [`MEASURE_EVERY`] and after each commit that
//! carried an administrator's change (a `verify --repair` changes records
//! without a client's event). In between it moves at once by the size of
//! each file a commit placed (its size after the commit minus the size of
//! the file it replaced) and of the files an administrator deleted.
//! After start a measurement runs on a thread of its own, on a read-only
//! connection whose snapshot the loop took between two commits: the
//! result plus what the figure moved since that snapshot replaces the
//! figure, so a slow sum (seconds on a million files) never holds up the
//! loop, and nothing is counted twice. Nothing walks the tree. With
//! PostgreSQL the database worker measures instead
//! ([`LoopView::shared_sizes`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Registry as PollRegistry, Token};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use sealdrop_protocol::error::{DecodeError, Refusal, StoreError};
use sealdrop_protocol::server::{CloseReason, ServerEvent, VerdictKind};
use sealdrop_protocol::store::{Commit, Durability};
use sealdrop_protocol::{RequestKind, Revision};

use crate::db::Db;
use crate::files;
use crate::metrics_http::Endpoint;
use crate::pg::DatabaseUrl;

/// Prefix of every metric name.
pub const PREFIX: &str = "sealdrop";

/// How often the stored files' size is measured from the database (one
/// aggregate query over the file records; the same interval as
/// PostgreSQL's measurement).
pub const MEASURE_EVERY: Duration = crate::records::MEASURE_EVERY;

/// Buckets of `sealdrop_commit_duration_seconds`: 0.5 ms doubling to
/// about 4 s (a commit is one or two filesystem syncs).
fn commit_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 14)
}

/// Buckets of `sealdrop_upload_duration_seconds`: 10 ms, each four times
/// the last, to about 44 minutes (a 4 GiB file at the minimum rate takes
/// longer, and lands in +Inf).
fn upload_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 4.0, 10)
}

/// Why the server said no: the `reason` label of
/// `sealdrop_refusals_total`. A new reason is a variant here and an arm
/// in [`refusal_reason`] or [`close_refusal`]; every variant is exported
/// (at 0) from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// A configured or built-in limit: a file over `--max-file-size`, the
    /// store's cap on uploads awaiting a verdict.
    Limit,
    /// A client's quota (bytes or files kept).
    Quota,
    /// A frame that does not decode, or a 2024 packet that does not fit
    /// its upload (2107 and, for frames, a close).
    BadFrame,
    /// A connection closed for a timeout: header, idle, minimum upload
    /// rate, or a peer not reading its responses.
    Timeout,
    /// A well-formed request refused with 2107: unknown client, name
    /// mismatch, no key, bad padding, unusable name, nothing pending.
    Request,
    /// A 1025 answered with 2101 (name taken or unusable).
    Registration,
    /// A 1027 answered with 2106.
    Reconnect,
    /// An upload an administrator withdrew while it was in flight (its
    /// client forgotten, its file deleted): answered with the revision's
    /// error, a routine outcome rather than a failure.
    Withdrawn,
    /// The server could not do its part: a storage error, answers that
    /// could not be made durable, an RSA failure.
    ServerError,
}

impl RefusalReason {
    /// Every reason, in the order they are exported.
    pub const ALL: [RefusalReason; 9] = [
        RefusalReason::Limit,
        RefusalReason::Quota,
        RefusalReason::BadFrame,
        RefusalReason::Timeout,
        RefusalReason::Request,
        RefusalReason::Registration,
        RefusalReason::Reconnect,
        RefusalReason::Withdrawn,
        RefusalReason::ServerError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Limit => "limit",
            RefusalReason::Quota => "quota",
            RefusalReason::BadFrame => "bad_frame",
            RefusalReason::Timeout => "timeout",
            RefusalReason::Request => "request",
            RefusalReason::Registration => "registration",
            RefusalReason::Reconnect => "reconnect",
            RefusalReason::Withdrawn => "withdrawn",
            RefusalReason::ServerError => "server_error",
        }
    }
}

/// How an upload ended: the `outcome` label of `sealdrop_uploads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UploadOutcome {
    /// Confirmed by 1029 and durable.
    Verified,
    /// The client gave up after cksum mismatches (1031).
    CrcFailed,
    /// Refused with 2107 (or a close in 2022c) once its content was read.
    Refused,
    /// Its connection closed while the content was arriving.
    Abandoned,
    /// Received completely, but no verdict came within `--orphan-ttl`
    /// after its connection closed, or put out for room among the
    /// uploads awaiting a verdict (the per-connection and server caps).
    Expired,
    /// Withdrawn by an administrator (`clients forget`, `files delete`)
    /// while it arrived, awaited its verdict, or waited for the commit
    /// after its 1029.
    Withdrawn,
}

impl UploadOutcome {
    /// Every outcome, in the order they are exported.
    pub const ALL: [UploadOutcome; 6] = [
        UploadOutcome::Verified,
        UploadOutcome::CrcFailed,
        UploadOutcome::Refused,
        UploadOutcome::Abandoned,
        UploadOutcome::Expired,
        UploadOutcome::Withdrawn,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadOutcome::Verified => "verified",
            UploadOutcome::CrcFailed => "crc_failed",
            UploadOutcome::Refused => "refused",
            UploadOutcome::Abandoned => "abandoned",
            UploadOutcome::Expired => "expired",
            UploadOutcome::Withdrawn => "withdrawn",
        }
    }
}

impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for UploadOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: UploadOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: RefusalReason,
}

/// The `store` label of the size gauges: which database and file tree
/// they measure ([`store_label`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StoreLabel {
    store: String,
}

/// The `store` label's value: 8 hex digits, the POSIX cksum of what names
/// the records. Servers that share a PostgreSQL database get the same
/// value (its hosts, ports and database name as the URL gives them; the
/// user and password are left out), and every SQLite server its own (the
/// machine's id and host name, and the database file's absolute path).
/// A dashboard takes one figure per store (`max by (store)`) and adds
/// the stores up.
pub fn store_label(database: &DatabaseUrl, sqlite_file: Option<&Path>) -> String {
    let identity = match database {
        DatabaseUrl::Postgres(url) => {
            let c = url.config();
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(name) => name.to_ascii_lowercase(),
                    postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect();
            let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
            format!(
                "postgres\n{}\n{}\n{}",
                hosts.join(","),
                ports.join(","),
                c.get_dbname().or(c.get_user()).unwrap_or("")
            )
        }
        DatabaseUrl::Sqlite(_) => {
            let read = |p: &str| {
                std::fs::read_to_string(p)
                    .map(|t| t.trim().to_owned())
                    .unwrap_or_default()
            };
            let file = sqlite_file
                .map(|f| f.canonicalize().unwrap_or_else(|_| f.to_path_buf()))
                .unwrap_or_default();
            format!(
                "sqlite\n{}\n{}\n{}",
                read("/etc/machine-id"),
                read("/proc/sys/kernel/hostname"),
                file.display()
            )
        }
    };
    format!(
        "{:08x}",
        sealdrop_protocol::cksum::cksum(identity.as_bytes())
    )
}

/// The reason a [`Refusal`] (a 2107 for a well-formed request) counts
/// under. A quota refusal counts as `quota` and an administrator's
/// withdrawal as `withdrawn` whichever stage refused the upload (its
/// header, its end, its 1029, or the commit after it); only the store's
/// other errors are `server_error`.
pub fn refusal_reason(refusal: &Refusal) -> RefusalReason {
    match refusal {
        Refusal::UnknownClient
        | Refusal::NameMismatch
        | Refusal::PublicKeyRefused(_)
        | Refusal::NoKey
        | Refusal::UnusableFileName
        | Refusal::UnusableVerdictName
        | Refusal::BadPadding(_)
        | Refusal::NothingPending => RefusalReason::Request,
        Refusal::Packet(_) => RefusalReason::BadFrame,
        Refusal::OverQuota(_) | Refusal::Store(StoreError::OverQuota(_)) => RefusalReason::Quota,
        Refusal::Store(StoreError::PendingFull { .. }) => RefusalReason::Limit,
        Refusal::Store(StoreError::Withdrawn { .. }) => RefusalReason::Withdrawn,
        Refusal::Store(_) | Refusal::KeyEncryption(_) | Refusal::NoFreeClientId => {
            RefusalReason::ServerError
        }
    }
}

/// The reason a session's close counts under, if it is a refusal (a
/// peer that closed, or a shutdown, is not).
pub fn close_refusal(reason: CloseReason) -> Option<RefusalReason> {
    match reason {
        CloseReason::Decode(DecodeError::ContentTooLarge { .. }) => Some(RefusalReason::Limit),
        CloseReason::Decode(DecodeError::Truncated) => None,
        CloseReason::Decode(_) => Some(RefusalReason::BadFrame),
        CloseReason::HeaderTimeout
        | CloseReason::IdleTimeout
        | CloseReason::TooSlow
        | CloseReason::WriteStalled => Some(RefusalReason::Timeout),
        CloseReason::NotDurable => Some(RefusalReason::ServerError),
        // Counted by its Refused event, with the store's reason.
        CloseReason::RefusedAtCommit => None,
        // 2022c's refusal without an answer was counted by its Refused event.
        CloseReason::PeerClosed
        | CloseReason::PeerClosedMidFrame
        | CloseReason::Local
        | CloseReason::NoErrorResponse => None,
    }
}

/// The metric handles (each a shared atomic the registry also holds).
struct Handles {
    connections_accepted: Counter,
    connections_open: Gauge,
    connections_max: Gauge,
    requests: Family<CodeLabel, Counter>,
    uploads: Family<OutcomeLabel, Counter>,
    uploads_in_flight: Gauge,
    uploads_awaiting_verdict: Gauge,
    received_bytes: Counter,
    stored_bytes: Counter,
    resends: Counter,
    refusals: Family<ReasonLabel, Counter>,
    commit_duration: Histogram,
    commit_failures: Counter,
    upload_duration: Histogram,
    database_size: Gauge,
    files_size: Gauge,
}

impl Handles {
    /// Registers every metric; the size gauges carry `store`.
    fn register(registry: &mut Registry, store: &str) -> Handles {
        let store = StoreLabel {
            store: store.to_owned(),
        };
        let database_size = Family::<StoreLabel, Gauge>::default();
        let files_size = Family::<StoreLabel, Gauge>::default();
        let h = Handles {
            connections_accepted: Counter::default(),
            connections_open: Gauge::default(),
            connections_max: Gauge::default(),
            requests: Family::default(),
            uploads: Family::default(),
            uploads_in_flight: Gauge::default(),
            uploads_awaiting_verdict: Gauge::default(),
            received_bytes: Counter::default(),
            stored_bytes: Counter::default(),
            resends: Counter::default(),
            refusals: Family::default(),
            commit_duration: Histogram::new(commit_buckets()),
            commit_failures: Counter::default(),
            upload_duration: Histogram::new(upload_buckets()),
            database_size: database_size.get_or_create(&store).clone(),
            files_size: files_size.get_or_create(&store).clone(),
        };
        let r = registry;
        r.register(
            "connections_accepted",
            "Client connections accepted",
            h.connections_accepted.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open now",
            h.connections_open.clone(),
        );
        r.register(
            "connections_max",
            "The connection cap (--max-connections)",
            h.connections_max.clone(),
        );
        r.register(
            "requests",
            "Requests answered, by the request code as the client's revision numbers it",
            h.requests.clone(),
        );
        r.register(
            "uploads",
            "Uploads ended, by outcome (verified, crc_failed, refused, abandoned, expired, withdrawn)",
            h.uploads.clone(),
        );
        r.register(
            "uploads_in_flight",
            "Uploads whose content is being received now",
            h.uploads_in_flight.clone(),
        );
        r.register(
            "uploads_awaiting_verdict",
            "Uploads received completely and awaiting the client's verdict",
            h.uploads_awaiting_verdict.clone(),
        );
        r.register_with_unit(
            "received",
            "Bytes read from client connections",
            Unit::Bytes,
            h.received_bytes.clone(),
        );
        r.register_with_unit(
            "stored",
            "Bytes of verified files placed in the file tree",
            Unit::Bytes,
            h.stored_bytes.clone(),
        );
        r.register(
            "resends",
            "Resends asked for after a cksum mismatch (1030)",
            h.resends.clone(),
        );
        r.register(
            "refusals",
            "Requests refused and connections closed by the server, by reason",
            h.refusals.clone(),
        );
        r.register_with_unit(
            "commit_duration",
            "Time of each group commit (file and database syncs) that had changes",
            Unit::Seconds,
            h.commit_duration.clone(),
        );
        r.register(
            "commit_failures",
            "Group commits that failed (their answers became 2107)",
            h.commit_failures.clone(),
        );
        r.register_with_unit(
            "upload_duration",
            "Time of verified uploads from the first send's header to the 1029",
            Unit::Seconds,
            h.upload_duration.clone(),
        );
        r.register_with_unit(
            "database_size",
            "Size of the database (SQLite: defensive.db and its write-ahead log), by store",
            Unit::Bytes,
            database_size,
        );
        r.register_with_unit(
            "files_size",
            "Recorded size of the verified stored files, by store (servers sharing a database report the same)",
            Unit::Bytes,
            files_size,
        );
        // Every label value from the start, so rates and alerts see a 0
        // rather than no series.
        for outcome in UploadOutcome::ALL {
            let _ = h.uploads.get_or_create(&OutcomeLabel { outcome });
        }
        for reason in RefusalReason::ALL {
            let _ = h.refusals.get_or_create(&ReasonLabel { reason });
        }
        h
    }
}

/// A file a 1029 asked to place, settled by the pass's commit.
struct Placement {
    conn: u64,
    path: PathBuf,
    /// Size of the file at the path before the commit (0: none).
    before: u64,
    duration: Option<Duration>,
}

/// What the loop knows that the metrics show, read at each scrape.
#[derive(Debug, Clone, Copy)]
pub struct LoopView {
    /// Client connections open.
    pub open_connections: usize,
    /// Uploads awaiting a verdict (the store's count).
    pub awaiting_verdict: usize,
    /// With PostgreSQL: the database's bytes and every server's stored
    /// files' bytes, as last measured (they replace the local figures).
    pub shared_sizes: Option<(u64, u64)>,
}

/// The server's metrics and, with `--metrics-listen`, their endpoint.
pub struct Metrics {
    registry: Registry,
    h: Handles,
    data_dir: PathBuf,
    /// Connections (by serial) with an upload being received.
    in_flight: HashSet<u64>,
    /// Files placed by this pass's commit.
    placing: Vec<Placement>,
    /// Connections whose 1029 the last commit refused (their Refused
    /// event follows; the 1029 itself was counted at its Verdict).
    refused_at_commit: HashSet<u64>,
    verified: u64,
    endpoint: Option<Endpoint>,
    /// The database file (SQLite), for its size.
    db_path: Option<PathBuf>,
    /// Measuring the stored files from SQLite (`None`: the endpoint is
    /// off, or the records are in PostgreSQL).
    measure: Option<Measure>,
    /// The last `STATUS=` sent.
    status: String,
}

/// A measurement's answer: the connection back, and the sum.
type Measured = (Db, Result<u64, StoreError>);

/// The stored files' size, measured from SQLite off the loop.
struct Measure {
    /// The read-only connection, while no measurement is out.
    idle: Option<Db>,
    /// When the next measurement is due.
    next: Instant,
    /// The measurement out, if one is.
    out: Option<Outstanding>,
}

struct Outstanding {
    answer: mpsc::Receiver<Measured>,
    /// What the running figure moved since the measurement's snapshot.
    moved: i64,
    /// Another measurement was asked for meanwhile (an administrator's
    /// change after the snapshot).
    again: bool,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("endpoint", &self.endpoint.as_ref().map(Endpoint::addr))
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for a server with data in `data_dir` and its records in the
    /// SQLite file `db_path` (`None`: PostgreSQL), its size gauges
    /// labelled `store` ([`store_label`]); with `listen`, the
    /// endpoint is bound and registered with `poll`, and the stored files'
    /// size is measured once (a read-only connection is kept for the
    /// later measurements).
    pub fn new(
        data_dir: &Path,
        db_path: Option<&Path>,
        store: &str,
        max_connections: usize,
        listen: Option<SocketAddr>,
        poll: &PollRegistry,
    ) -> io::Result<Metrics> {
        let mut registry = Registry::with_prefix(PREFIX);
        let h = Handles::register(&mut registry, store);
        h.connections_max.set(gauge_value(max_connections as u64));
        let endpoint = match listen {
            Some(addr) => {
                let endpoint = Endpoint::bind(addr, poll)?;
                log::info!(
                    "metrics at http://{}/metrics (Prometheus text format)",
                    endpoint.addr()
                );
                Some(endpoint)
            }
            None => None,
        };
        let measure = endpoint
            .as_ref()
            .and(db_path)
            .and_then(|path| start_measuring(path, &h.files_size));
        Ok(Metrics {
            registry,
            h,
            data_dir: data_dir.to_path_buf(),
            in_flight: HashSet::new(),
            placing: Vec::new(),
            refused_at_commit: HashSet::new(),
            verified: 0,
            measure,
            endpoint,
            db_path: db_path.map(Path::to_path_buf),
            status: String::new(),
        })
    }

    /// Where the endpoint listens, if it is on.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().map(Endpoint::addr)
    }

    /// A client connection was accepted.
    pub fn connection_accepted(&self) {
        self.h.connections_accepted.inc();
    }

    /// `n` bytes were read from a client connection.
    pub fn received(&self, n: usize) {
        self.h.received_bytes.inc_by(n as u64);
    }

    /// Uploads awaiting a verdict that the store dropped without one:
    /// `expired` (no verdict within `--orphan-ttl`, or put out for room)
    /// and `withdrawn` by an administrator. No connection sees these.
    pub fn pending_dropped(&self, expired: u64, withdrawn: u64) {
        if expired > 0 {
            self.upload_ended(UploadOutcome::Expired, expired);
        }
        if withdrawn > 0 {
            self.upload_ended(UploadOutcome::Withdrawn, withdrawn);
        }
    }

    /// Counts what a session reported for connection `conn` (its serial),
    /// which speaks `revision` (for the request codes).
    pub fn session_event(&mut self, conn: u64, revision: Revision, event: &ServerEvent) {
        let request = |kind| self.request(revision, kind);
        match event {
            ServerEvent::Registered { .. } => request(RequestKind::Register),
            ServerEvent::RegistrationFailed { .. } => {
                request(RequestKind::Register);
                self.refused(RefusalReason::Registration);
            }
            ServerEvent::KeyAccepted { .. } => request(RequestKind::PublicKey),
            ServerEvent::Reconnected { .. } => request(RequestKind::Reconnect),
            ServerEvent::ReconnectDenied { .. } => {
                request(RequestKind::Reconnect);
                self.refused(RefusalReason::Reconnect);
            }
            ServerEvent::UploadStarted { .. } => {
                self.in_flight.insert(conn);
            }
            ServerEvent::UploadReceived { .. } => {
                request(RequestKind::SendFile);
                self.in_flight.remove(&conn);
            }
            ServerEvent::Verdict {
                client_id,
                file_name,
                verdict,
                applied,
                duration,
                ..
            } => {
                let kind = match *verdict {
                    VerdictKind::CrcOk => RequestKind::CrcOk,
                    VerdictKind::CrcBad => RequestKind::CrcBad,
                    VerdictKind::CrcGiveUp => RequestKind::CrcGiveUp,
                };
                request(kind);
                match (*verdict, *applied) {
                    (VerdictKind::CrcBad, _) => {
                        self.h.resends.inc();
                    }
                    (VerdictKind::CrcOk, true) => {
                        let path = files::final_path(&self.data_dir, client_id, file_name);
                        self.placing.push(Placement {
                            conn,
                            before: file_size(&path),
                            path,
                            duration: *duration,
                        });
                    }
                    (VerdictKind::CrcGiveUp, true) => {
                        self.upload_ended(UploadOutcome::CrcFailed, 1);
                    }
                    // 2107: no upload of that name awaits a verdict.
                    (_, false) => self.refused(RefusalReason::Request),
                }
            }
            ServerEvent::Refused { kind, reason, .. } => {
                // A 1029 the commit refused was counted at its Verdict.
                let at_commit = *kind == RequestKind::CrcOk && self.refused_at_commit.remove(&conn);
                if !at_commit {
                    self.request(revision, *kind);
                }
                let why = refusal_reason(reason);
                self.refused(why);
                // An upload an administrator withdrew ends as withdrawn
                // (its answer still counts as a refusal, reason withdrawn).
                let ended = if why == RefusalReason::Withdrawn {
                    UploadOutcome::Withdrawn
                } else {
                    UploadOutcome::Refused
                };
                if *kind == RequestKind::SendFile {
                    self.in_flight.remove(&conn);
                    self.upload_ended(ended, 1);
                } else if *kind == RequestKind::CrcOk
                    && matches!(why, RefusalReason::Quota | RefusalReason::Withdrawn)
                {
                    // The upload awaiting this 1029 is discarded with it.
                    self.upload_ended(ended, 1);
                }
            }
            ServerEvent::RevisionDetected { .. } => {}
            ServerEvent::Closing(reason) => {
                if let Some(why) = close_refusal(*reason) {
                    self.refused(why);
                }
                if self.in_flight.remove(&conn) {
                    self.upload_ended(UploadOutcome::Abandoned, 1);
                }
            }
        }
    }

    /// The end of a loop pass: the commit it ran (if the store had
    /// changes) and how long that took. Settles the files placed by it:
    /// a durable one counts as verified, and the file tree's size moves
    /// by what is on the disk now.
    pub fn pass_ended(&mut self, commit: Option<&Commit>, took: Duration) {
        self.refused_at_commit.clear();
        if let Some(c) = commit {
            self.h.commit_duration.observe(took.as_secs_f64());
            if c.error.is_some() {
                self.h.commit_failures.inc();
            }
        }
        if self.placing.is_empty() {
            return;
        }
        let mut seen = HashSet::new();
        for p in std::mem::take(&mut self.placing) {
            let after = file_size(&p.path);
            if seen.insert(p.path.clone()) {
                self.files_moved(gauge_value(after) - gauge_value(p.before));
            }
            let durable = commit.map_or(Durability::Durable, |c| c.outcome(p.conn));
            if commit.is_some_and(|c| c.refusal(p.conn).is_some()) {
                self.refused_at_commit.insert(p.conn);
            }
            if durable == Durability::Durable {
                self.verified += 1;
                self.upload_ended(UploadOutcome::Verified, 1);
                self.h.stored_bytes.inc_by(after);
                if let Some(d) = p.duration {
                    self.h.upload_duration.observe(d.as_secs_f64());
                }
            }
        }
    }

    /// `STATUS=` for systemd: what is going on, in one line. `None` when
    /// it is the same as the last one returned.
    pub fn status_update(&mut self, open_connections: usize, draining: bool) -> Option<&str> {
        let line = format!(
            "{}{open_connections} connection{} open, {} upload{} in flight, {} verified since start",
            if draining { "draining: " } else { "" },
            plural(open_connections),
            self.in_flight.len(),
            plural(self.in_flight.len()),
            self.verified,
        );
        if line == self.status {
            return None;
        }
        self.status = line;
        Some(&self.status)
    }

    /// Uploads verified since start.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// Stored files were deleted (an administrator's removal): the running
    /// files figure goes down by their bytes.
    pub fn files_removed(&mut self, bytes: u64) {
        if bytes > 0 {
            self.files_moved(-gauge_value(bytes));
        }
    }

    /// Measures the stored files from SQLite when due, between commits
    /// (`quiet`: no commit pending, none in flight), and takes the answer
    /// of the measurement out. Called once per loop pass.
    pub fn measure(&mut self, now: Instant, quiet: bool) {
        let Some(m) = self.measure.as_mut() else {
            return;
        };
        if let Some(out) = m.out.as_ref() {
            let (db, result) = match out.answer.try_recv() {
                Ok(answer) => answer,
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    log::warn!("metrics: the measuring thread ended; the files figure is no longer measured");
                    self.measure = None;
                    return;
                }
            };
            m.idle = Some(db);
            m.next = if out.again { now } else { now + MEASURE_EVERY };
            match result {
                Ok(bytes) => {
                    self.h
                        .files_size
                        .set(gauge_value(bytes).saturating_add(out.moved));
                }
                Err(e) => log::warn!("metrics: cannot measure the stored files: {e}"),
            }
            m.out = None;
        }
        if !quiet || now < m.next {
            return;
        }
        let Some(db) = m.idle.take() else {
            return;
        };
        if let Err(e) = db.begin_snapshot_now() {
            log::warn!("metrics: cannot measure the stored files: {e}");
            m.idle = Some(db);
            m.next = now + MEASURE_EVERY;
            return;
        }
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("sealdrop-measure".into())
            .spawn(move || {
                let result = db.stored_bytes();
                db.end_snapshot();
                let _ = tx.send((db, result));
            });
        match spawned {
            Ok(_) => {
                m.out = Some(Outstanding {
                    answer: rx,
                    moved: 0,
                    again: false,
                })
            }
            Err(e) => {
                log::warn!("metrics: cannot start the measuring thread: {e}; the files figure is no longer measured");
                self.measure = None;
            }
        }
    }

    /// An administrator's change was committed: measure again as soon as
    /// possible.
    pub fn measure_soon(&mut self) {
        if let Some(m) = self.measure.as_mut() {
            match m.out.as_mut() {
                Some(out) => out.again = true,
                None => m.next = Instant::now(),
            }
        }
    }

    /// The running files figure moves by `delta` bytes.
    fn files_moved(&mut self, delta: i64) {
        self.h.files_size.inc_by(delta);
        if let Some(out) = self.measure.as_mut().and_then(|m| m.out.as_mut()) {
            out.moved = out.moved.saturating_add(delta);
        }
    }

    /// Uploads whose content is being received now.
    pub fn uploads_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Every metric in the Prometheus text format (version 0.0.4), with
    /// the gauges read now.
    pub fn render(&self, view: LoopView) -> String {
        let h = &self.h;
        h.connections_open
            .set(gauge_value(view.open_connections as u64));
        h.uploads_in_flight
            .set(gauge_value(self.in_flight.len() as u64));
        h.uploads_awaiting_verdict
            .set(gauge_value(view.awaiting_verdict as u64));
        match view.shared_sizes {
            Some((db, files)) => {
                h.database_size.set(gauge_value(db));
                h.files_size.set(gauge_value(files));
            }
            None => {
                let size = self.db_path.as_deref().map_or(0, database_size);
                h.database_size.set(gauge_value(size));
            }
        }
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Whether a poll token belongs to the endpoint.
    pub fn owns(&self, token: Token) -> bool {
        self.endpoint.is_some() && crate::metrics_http::owns(token)
    }

    /// A poll event for the endpoint.
    pub fn on_event(&mut self, token: Token, event: &Event) {
        if let Some(endpoint) = self.endpoint.as_mut() {
            endpoint.on_event(token, event);
        }
    }

    /// Accepts and serves scrapers, and drops those past their deadline.
    /// Called once per loop pass.
    pub fn serve(&mut self, poll: &PollRegistry, now: Instant, view: LoopView) {
        let Some(mut endpoint) = self.endpoint.take() else {
            return;
        };
        endpoint.serve(poll, now, &mut || self.render(view));
        self.endpoint = Some(endpoint);
    }

    /// When the endpoint next needs the loop (a scraper's deadline, or
    /// connections still to accept).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.endpoint.as_ref().and_then(Endpoint::next_deadline)
    }

    fn request(&self, revision: Revision, kind: RequestKind) {
        let code = revision
            .request_code(kind)
            .or_else(|| Revision::R2023c.request_code(kind))
            .unwrap_or(0);
        self.h.requests.get_or_create(&CodeLabel { code }).inc();
    }

    fn refused(&self, reason: RefusalReason) {
        self.h.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    fn upload_ended(&self, outcome: UploadOutcome, n: u64) {
        self.h
            .uploads
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(n);
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The size of the regular file at `path`; 0 if there is none.
fn file_size(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map_or(0, |m| m.len())
}

/// The SQLite database file and its write-ahead log.
fn database_size(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    file_size(db) + file_size(Path::new(&wal))
}

/// The first measurement of the stored files, made at once (start-up),
/// and the read-only connection kept for the next ones; `None` (and a
/// warning) if the database cannot be read.
fn start_measuring(db_path: &Path, files_size: &Gauge) -> Option<Measure> {
    let measured = Db::open_read_only_at(db_path).and_then(|db| {
        let bytes = db.stored_bytes()?;
        Ok((db, bytes))
    });
    match measured {
        Ok((db, bytes)) => {
            files_size.set(gauge_value(bytes));
            Some(Measure {
                idle: Some(db),
                next: Instant::now() + MEASURE_EVERY,
                out: None,
            })
        }
        Err(e) => {
            log::warn!("metrics: cannot measure the stored files: {e}");
            None
        }
    }
}

/// The per-metric map of a rendered page: sample name (with labels) to
/// value; for tests and tools that read a scrape.
pub fn parse_samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealdrop_protocol::ClientId;

    fn metrics(dir: &Path) -> Metrics {
        let poll = mio::Poll::new().unwrap();
        Metrics::new(dir, None, "0000abcd", 100, None, poll.registry()).unwrap()
    }

    const VIEW: LoopView = LoopView {
        open_connections: 3,
        awaiting_verdict: 1,
        shared_sizes: None,
    };

    #[test]
    fn a_fresh_page_has_every_family_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let page = metrics(dir.path()).render(VIEW);
        let s = parse_samples(&page);
        assert_eq!(s["sealdrop_connections_open"], 3.0);
        assert_eq!(s["sealdrop_connections_max"], 100.0);
        assert_eq!(s["sealdrop_uploads_awaiting_verdict"], 1.0);
        assert_eq!(s["sealdrop_received_bytes_total"], 0.0);
        for outcome in UploadOutcome::ALL {
            let key = format!("sealdrop_uploads_total{{outcome=\"{}\"}}", outcome.as_str());
            assert_eq!(s.get(&key), Some(&0.0), "{key}");
        }
        for reason in RefusalReason::ALL {
            let key = format!("sealdrop_refusals_total{{reason=\"{}\"}}", reason.as_str());
            assert_eq!(s.get(&key), Some(&0.0), "{key}");
        }
        assert_eq!(s["sealdrop_commit_duration_seconds_count"], 0.0);
        assert!(page.contains("# TYPE sealdrop_upload_duration_seconds histogram"));
        // A family without label values yet has no series.
        assert!(!page.contains("sealdrop_requests_total"));
        println!("{page}");
    }

    #[test]
    fn session_events_move_the_counters_they_stand_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = metrics(dir.path());
        let id = ClientId([7; 16]);
        let rev = Revision::R2024c;
        m.session_event(
            1,
            rev,
            &ServerEvent::UploadStarted {
                client_id: id,
                file_name: "a".into(),
                content_size: 16,
                attempt: 1,
            },
        );
        assert_eq!(m.uploads_in_flight(), 1);
        m.session_event(1, rev, &ServerEvent::Closing(CloseReason::TooSlow));
        assert_eq!(m.uploads_in_flight(), 0);
        m.session_event(
            2,
            rev,
            &ServerEvent::Verdict {
                client_id: id,
                file_name: "a".into(),
                verdict: VerdictKind::CrcBad,
                applied: true,
                replaced: false,
                attempts: 1,
                last: None,
                duration: None,
            },
        );
        let s = parse_samples(&m.render(VIEW));
        assert_eq!(s["sealdrop_uploads_total{outcome=\"abandoned\"}"], 1.0);
        assert_eq!(s["sealdrop_refusals_total{reason=\"timeout\"}"], 1.0);
        assert_eq!(s["sealdrop_resends_total"], 1.0);
        // 2024c numbers 1030 as 901.
        assert_eq!(s["sealdrop_requests_total{code=\"901\"}"], 1.0);
    }

    #[test]
    fn a_verified_upload_counts_once_its_commit_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = metrics(dir.path());
        let id = ClientId([9; 16]);
        let verdict = |_conn: u64| ServerEvent::Verdict {
            client_id: id,
            file_name: "f".into(),
            verdict: VerdictKind::CrcOk,
            applied: true,
            replaced: false,
            attempts: 1,
            last: None,
            duration: Some(Duration::from_millis(20)),
        };
        let path = files::final_path(dir.path(), &id, "f");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // The commit failed: nothing counts.
        m.session_event(4, Revision::R2023c, &verdict(4));
        let failed = Commit {
            error: Some(StoreError::Invalid("disk gone".into())),
            failed: Vec::new(),
            ..Commit::default()
        };
        m.pass_ended(Some(&failed), Duration::from_millis(3));
        assert_eq!(m.verified(), 0);
        // The retried 1029's commit placed 10 bytes.
        m.session_event(4, Revision::R2023c, &verdict(4));
        std::fs::write(&path, b"0123456789").unwrap();
        let ok = Commit {
            error: None,
            failed: Vec::new(),
            ..Commit::default()
        };
        m.pass_ended(Some(&ok), Duration::from_millis(2));
        assert_eq!(m.verified(), 1);
        let s = parse_samples(&m.render(VIEW));
        assert_eq!(s["sealdrop_uploads_total{outcome=\"verified\"}"], 1.0);
        assert_eq!(s["sealdrop_stored_bytes_total"], 10.0);
        assert_eq!(s["sealdrop_files_size_bytes{store=\"0000abcd\"}"], 10.0);
        assert_eq!(s["sealdrop_commit_duration_seconds_count"], 2.0);
        assert_eq!(s["sealdrop_commit_failures_total"], 1.0);
        assert_eq!(s["sealdrop_upload_duration_seconds_count"], 1.0);
        assert_eq!(s["sealdrop_requests_total{code=\"1029\"}"], 2.0);
        // A replacement of 4 bytes moves the tree's size by -6.
        m.session_event(5, Revision::R2023c, &verdict(5));
        std::fs::write(&path, b"abcd").unwrap();
        m.pass_ended(Some(&ok), Duration::from_millis(2));
        let s = parse_samples(&m.render(VIEW));
        assert_eq!(s["sealdrop_files_size_bytes{store=\"0000abcd\"}"], 4.0);
        assert_eq!(s["sealdrop_stored_bytes_total"], 14.0);
    }

    #[test]
    fn withdrawals_and_quotas_have_their_own_reasons_at_every_stage() {
        use sealdrop_protocol::error::{QuotaExceeded, QuotaLimit};
        let quota = QuotaExceeded {
            limit: QuotaLimit::Files,
            max: 1,
            would_be: 2,
        };
        let withdrawn = StoreError::Withdrawn { why: "forgotten" };
        // As the session builds them: from a store error (at the header,
        // the end, the 1029, the commit) and wrapped as it is.
        assert_eq!(
            refusal_reason(&StoreError::OverQuota(quota).into()),
            RefusalReason::Quota
        );
        assert_eq!(
            refusal_reason(&Refusal::Store(StoreError::OverQuota(quota))),
            RefusalReason::Quota
        );
        assert_eq!(
            refusal_reason(&withdrawn.clone().into()),
            RefusalReason::Withdrawn
        );
        assert_eq!(
            refusal_reason(&Refusal::Store(StoreError::Invalid("disk".into()))),
            RefusalReason::ServerError
        );
        // Refused at the commit: counted by the Refused event, not the close.
        assert_eq!(close_refusal(CloseReason::RefusedAtCommit), None);
        let dir = tempfile::tempdir().unwrap();
        let mut m = metrics(dir.path());
        m.session_event(
            3,
            Revision::R2023c,
            &ServerEvent::Refused {
                kind: RequestKind::CrcOk,
                client_id: ClientId([1; 16]),
                reason: withdrawn.into(),
            },
        );
        let s = parse_samples(&m.render(VIEW));
        assert_eq!(s["sealdrop_refusals_total{reason=\"withdrawn\"}"], 1.0);
        assert_eq!(s["sealdrop_refusals_total{reason=\"server_error\"}"], 0.0);
    }

    #[test]
    fn a_measurement_counts_what_moved_after_its_snapshot_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let record = |name: &str, size: u64| {
            let id = ClientId([3; 16]);
            db.mark_verified(&id, name, "p").unwrap();
            db.record_file_meta(&id, name, size, None).unwrap();
        };
        record("a", 100);
        let poll = mio::Poll::new().unwrap();
        let path = db.path().unwrap();
        let any = "127.0.0.1:0".parse().unwrap();
        let mut m = Metrics::new(
            dir.path(),
            Some(&path),
            "0000abcd",
            10,
            Some(any),
            poll.registry(),
        )
        .unwrap();
        let files = |m: &Metrics| {
            parse_samples(&m.render(VIEW))["sealdrop_files_size_bytes{store=\"0000abcd\"}"]
        };
        assert_eq!(files(&m), 100.0);
        // A measurement starts (its snapshot: 100 bytes recorded)...
        m.measure_soon();
        m.measure(Instant::now(), true);
        assert!(m.measure.as_ref().unwrap().out.is_some());
        // ...then a commit records 200 more, which the running figure
        // counts, and an administrator's deletion takes 30 off.
        record("b", 200);
        m.files_moved(200);
        m.files_removed(30);
        let end = Instant::now() + Duration::from_secs(20);
        while m.measure.as_ref().unwrap().out.is_some() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
            m.measure(Instant::now(), false);
        }
        // 100 measured + 200 - 30 moved since: the 200 not counted twice.
        assert_eq!(files(&m), 270.0);
        // The next measurement sees the 300 recorded (the 30 were a file
        // without a record in this test).
        m.measure_soon();
        m.measure(Instant::now(), true);
        while m.measure.as_ref().unwrap().out.is_some() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
            m.measure(Instant::now(), false);
        }
        assert_eq!(files(&m), 300.0);
    }

    #[test]
    fn servers_on_one_database_share_a_store_label_and_others_do_not() {
        let pg = |url: &str| store_label(&DatabaseUrl::parse(url).unwrap(), None);
        let shared = pg("postgres://a:secret@db.example:5432/sealdrop");
        assert_eq!(shared.len(), 8);
        assert!(shared.bytes().all(|b| b.is_ascii_hexdigit()));
        // Another user or password, the host's case: the same database.
        assert_eq!(pg("postgres://b:other@DB.example:5432/sealdrop"), shared);
        assert_ne!(pg("postgres://a@db.example:5432/other"), shared);
        assert_ne!(pg("postgres://a@db2.example:5432/sealdrop"), shared);
        // SQLite: one store per database file (on this machine).
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one.db"), dir.path().join("two.db"));
        let sqlite = DatabaseUrl::default();
        let a = store_label(&sqlite, Some(&one));
        assert_eq!(store_label(&sqlite, Some(&one)), a);
        assert_ne!(store_label(&sqlite, Some(&two)), a);
        assert_ne!(a, shared);
    }

    #[test]
    fn a_1029_refused_counts_its_upload_as_refused_or_withdrawn_and_its_request_once() {
        use sealdrop_protocol::error::{QuotaExceeded, QuotaLimit};
        use sealdrop_protocol::store::CommitRefusal;
        let dir = tempfile::tempdir().unwrap();
        let mut m = metrics(dir.path());
        let id = ClientId([4; 16]);
        let rev = Revision::R2023c;
        // Accepted, then refused by its commit (withdrawn meanwhile).
        m.session_event(
            5,
            rev,
            &ServerEvent::Verdict {
                client_id: id,
                file_name: "w".into(),
                verdict: VerdictKind::CrcOk,
                applied: true,
                replaced: false,
                attempts: 1,
                last: None,
                duration: None,
            },
        );
        let withdrawn = StoreError::Withdrawn { why: "forgotten" };
        let commit = Commit {
            refused: vec![CommitRefusal {
                conn: 5,
                client_id: id,
                error: withdrawn.clone(),
            }],
            ..Commit::default()
        };
        m.pass_ended(Some(&commit), Duration::from_millis(1));
        let refused = |reason: Refusal| ServerEvent::Refused {
            kind: RequestKind::CrcOk,
            client_id: id,
            reason,
        };
        m.session_event(5, rev, &refused(withdrawn.into()));
        m.session_event(5, rev, &ServerEvent::Closing(CloseReason::RefusedAtCommit));
        // Over quota at its 1029 (two uploads that each fitted).
        let quota = QuotaExceeded {
            limit: QuotaLimit::Files,
            max: 1,
            would_be: 2,
        };
        m.session_event(6, rev, &refused(Refusal::OverQuota(quota)));
        // A 1029 for nothing pending: no upload ended.
        m.session_event(7, rev, &refused(Refusal::UnknownClient));
        let s = parse_samples(&m.render(VIEW));
        assert_eq!(s["sealdrop_requests_total{code=\"1029\"}"], 3.0);
        assert_eq!(s["sealdrop_uploads_total{outcome=\"refused\"}"], 1.0);
        assert_eq!(s["sealdrop_uploads_total{outcome=\"withdrawn\"}"], 1.0);
        assert_eq!(s["sealdrop_uploads_total{outcome=\"verified\"}"], 0.0);
        assert_eq!(s["sealdrop_refusals_total{reason=\"withdrawn\"}"], 1.0);
        assert_eq!(s["sealdrop_refusals_total{reason=\"quota\"}"], 1.0);
        assert_eq!(s["sealdrop_refusals_total{reason=\"request\"}"], 1.0);
        assert_eq!(s["sealdrop_refusals_total{reason=\"server_error\"}"], 0.0);
    }

    #[test]
    fn the_status_line_changes_only_when_something_did() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = metrics(dir.path());
        assert_eq!(
            m.status_update(1, false),
            Some("1 connection open, 0 uploads in flight, 0 verified since start")
        );
        assert_eq!(m.status_update(1, false), None);
        assert_eq!(
            m.status_update(2, true),
            Some("draining: 2 connections open, 0 uploads in flight, 0 verified since start")
        );
    }
}
