//! What a server session needs from storage: the [`Store`] contract.
//!
//! The session decides everything the protocol decides (which response,
//! which key, which upload a verdict applies to); a [`Store`] keeps
//! records, bytes and the uploads awaiting a verdict, and owns
//! durability. The server implements it over SQLite and the filesystem;
//! [`crate::memstore::MemoryStore`] implements it in memory for tests and
//! fuzzing.
//!
//! # Calls, time and connections
//!
//! Every call that changes something is told who it is for and when: a
//! [`Ctx`] carries the connection ([`ConnId`], the driver's serial number,
//! unique for the server's life) and the driver's clock. A store reads no
//! clock of its own; [`Store::housekeeping`] gives it the wall-clock time
//! that goes with the driver's monotonic one (for LastSeen).
//!
//! # Durability: one commit per pass
//!
//! A store may hold changes back and make them durable together
//! ([`Store::commit`], once per pass of the driver's loop), so one sync
//! serves every connection of the pass. While [`Store::uncommitted`] is
//! true, an answer the session produces may acknowledge a change that is
//! not durable yet: the session holds it (it is not in
//! [`crate::ServerSession::pending_output`]) until the driver hands it the
//! outcome of the next commit for its connection ([`Commit::outcome`]):
//! released when durable, replaced by a 2107 and a close when not. A store
//! that makes every change durable before returning simply never reports
//! itself uncommitted.
//!
//! # Stores that answer later
//!
//! A store whose records live across the network (several servers on one
//! database) cannot answer a read at once, and its commit takes a round
//! trip; the driver's loop must never wait for either. Such a store says
//! so through three calls, each with a default that suits a store that
//! answers at once (SQLite, memory), so those need not implement them:
//!
//! * [`Store::prepare`]: before deciding a request the session names the
//!   records it will read ([`Lookup`]). `Pending` parks the request (the
//!   session takes no more input) until the driver learns from
//!   [`Store::take_ready`] that the connection's reads arrived and calls
//!   [`crate::ServerSession::handle_store_ready`].
//! * [`Store::begin_commit`] starts the commit of the open batch and
//!   returns its [`Commit`] at once, or `None` when it is in flight; the
//!   driver then asks [`Store::poll_commit`] when the store wakes it.
//!   Changes made meanwhile go into the next batch, numbered by
//!   [`Store::batch`]: the session tags each held answer with the batch it
//!   waits for, so a commit releases exactly the answers it made durable
//!   ([`Commit::batch`]).
//!
//! # Uploads awaiting a verdict
//!
//! A complete upload stays pending until a verdict (1029/1030/1031) for
//! its client and name. The store keeps the only list of them
//! ([`PendingSet`], shared by both implementations): a verdict takes the
//! newest pending upload of its connection, else the newest of any
//! connection (§1: a client may use a new connection per step); when a
//! connection closes its uploads become orphans, deleted after a while
//! unless a verdict comes on another connection.
//!
//! # Quotas and administration
//!
//! A store keeps each client within its [`Quota`] (the most bytes and
//! files it may keep; [`Quota::check`] is the rule both stores apply):
//! [`Store::check_quota`] before content is stored, again with the exact
//! size when the upload completes ([`Store::finish_upload`]) and when it
//! is accepted ([`Store::apply_verdict`]), each refusal a
//! [`StoreError::OverQuota`]. An administrator's changes
//! ([`Store::forget_client`], [`Store::delete_file`], [`Store::set_quota`])
//! come through the same contract, between the driver's passes, and
//! commit with the pass: uploads of what they remove that are still
//! arriving or awaiting a verdict are withdrawn ([`LiveUploads`]), so they
//! end in a refusal and leave nothing stored.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::consts::PUBLIC_KEY_LEN;
use crate::crypto::AesKey;
pub use crate::error::{QuotaExceeded, QuotaLimit, StoreError};
use crate::wire::ClientId;

/// A connection as the store knows it: the driver's serial number for it,
/// unique for the life of the server.
pub type ConnId = u64;

/// Who a store call is for and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// The connection the call comes from.
    pub conn: ConnId,
    /// The driver's clock.
    pub now: Instant,
}

/// A registered client as the store keeps it (§8 `clients` table).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// The id issued in 2100.
    pub id: ClientId,
    /// The name it registered with.
    pub name: String,
    /// Its public key (SPKI DER), once it completed key exchange.
    pub public_key: Option<Box<[u8; PUBLIC_KEY_LEN]>>,
    /// The last AES key sent to it in 2102 or 2105 (§6 "keys").
    pub last_key: Option<AesKey>,
}

impl fmt::Debug for ClientRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("has_public_key", &self.public_key.is_some())
            .field("has_last_key", &self.last_key.is_some())
            .finish()
    }
}

/// Identifies a complete upload awaiting its verdict (1029/1030/1031).
pub type UploadId = u64;

/// What the session tells the store about a complete, decrypted upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSummary {
    /// Plaintext bytes written.
    pub plain_len: u64,
    /// POSIX cksum of the plaintext (§5).
    pub cksum: u32,
}

/// The verdict a client gave on an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 1029: store the file under its name and mark it Verified.
    Accept,
    /// 1030 or 1031: throw the upload away.
    Discard,
}

/// What applying a verdict found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictOutcome {
    /// An upload awaiting a verdict was found and the verdict applied.
    Applied,
    /// As `Applied`, for an accepted upload that replaces the verified
    /// file the client kept under that name (§6 allows it; the log says it).
    Replaced,
    /// No upload of that name awaits a verdict for that client.
    NothingPending,
}

/// Whether the answers a connection produced before a commit may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Everything they acknowledge is durable: send them.
    Durable,
    /// Something they acknowledge is not: never send them (2107, close).
    Failed,
}

/// A record a request will read ([`Store::prepare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The client with this id.
    Id(&'a ClientId),
    /// The client with this name.
    Name(&'a str),
}

/// Whether a store can answer reads now ([`Store::prepare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The reads can be made now.
    Ready,
    /// A round trip is under way; [`Store::take_ready`] names the
    /// connection once it is back.
    Pending,
}

/// The result of one [`Store::commit`].
#[derive(Debug, Default)]
pub struct Commit {
    /// The batch it made durable (or failed): answers held for this batch
    /// or an earlier one are decided by it ([`Store::batch`]). Stores that
    /// commit at once leave it 0 and never open another batch.
    pub batch: u64,
    /// `Some`: the commit as a whole failed; nothing of the batch is
    /// durable and no held answer may go out.
    pub error: Option<StoreError>,
    /// Connections whose own change (an accepted upload) could not be made
    /// durable while the rest of the batch was.
    pub failed: Vec<ConnId>,
    /// Connections whose own change the store refused when it committed
    /// (a shared database that would not keep an accepted upload: its
    /// client was forgotten or its name deleted meanwhile, or it would
    /// pass the client's quota), with the refusal. Their answers fail as
    /// `failed` ones do, but the session answers with the refusal and
    /// counts it as one ([`Commit::refusal`]).
    pub refused: Vec<CommitRefusal>,
}

/// A connection's change that the store refused when it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRefusal {
    /// The connection that made it.
    pub conn: ConnId,
    /// The client it was for.
    pub client_id: ClientId,
    /// Why.
    pub error: StoreError,
}

impl Commit {
    /// Why the store refused `conn`'s change at this commit, if it did.
    pub fn refusal(&self, conn: ConnId) -> Option<&CommitRefusal> {
        self.refused.iter().find(|r| r.conn == conn)
    }

    /// The outcome for the answers `conn` holds.
    pub fn outcome(&self, conn: ConnId) -> Durability {
        if self.error.is_some() || self.failed.contains(&conn) || self.refusal(conn).is_some() {
            Durability::Failed
        } else {
            Durability::Durable
        }
    }
}

/// The most one client may keep: the bytes of its stored files added up,
/// and their number. `None` is unlimited (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Most bytes.
    pub max_bytes: Option<u64>,
    /// Most files.
    pub max_files: Option<u64>,
}

/// What a client keeps: its stored (verified) files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Number of files.
    pub files: u64,
    /// Their sizes added up.
    pub bytes: u64,
}

impl Quota {
    /// No limit at all.
    pub const UNLIMITED: Quota = Quota {
        max_bytes: None,
        max_files: None,
    };

    /// Whether either limit is set.
    pub fn is_limited(&self) -> bool {
        self.max_bytes.is_some() || self.max_files.is_some()
    }

    /// Whether a client that keeps `usage` may keep a file of `size`
    /// bytes more. `replaced` is the size of the stored file the new one
    /// replaces (same name), if any: a replacement counts the difference
    /// in bytes and no new file. Exactly at a limit is within it.
    pub fn check(
        &self,
        usage: Usage,
        replaced: Option<u64>,
        size: u64,
    ) -> Result<(), QuotaExceeded> {
        let files = usage.files + u64::from(replaced.is_none());
        let bytes = usage
            .bytes
            .saturating_sub(replaced.unwrap_or(0))
            .saturating_add(size);
        if let Some(max) = self.max_files {
            if files > max {
                return Err(QuotaExceeded {
                    limit: QuotaLimit::Files,
                    max,
                    would_be: files,
                });
            }
        }
        if let Some(max) = self.max_bytes {
            if bytes > max {
                return Err(QuotaExceeded {
                    limit: QuotaLimit::Bytes,
                    max,
                    would_be: bytes,
                });
            }
        }
        Ok(())
    }
}

/// One limit of a client's own quota, set by an administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaSetting {
    /// The server's setting applies.
    #[default]
    Default,
    /// No limit for this client, whatever the server's setting.
    Unlimited,
    /// This limit for this client.
    Max(u64),
}

impl QuotaSetting {
    fn apply(self, default: Option<u64>) -> Option<u64> {
        match self {
            QuotaSetting::Default => default,
            QuotaSetting::Unlimited => None,
            QuotaSetting::Max(n) => Some(n),
        }
    }
}

impl fmt::Display for QuotaSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaSetting::Default => f.write_str("default"),
            QuotaSetting::Unlimited => f.write_str("unlimited"),
            QuotaSetting::Max(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for QuotaSetting {
    type Err = String;

    /// `default`, `unlimited`, or a number.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "default" => Ok(QuotaSetting::Default),
            "unlimited" => Ok(QuotaSetting::Unlimited),
            n => n
                .parse()
                .map(QuotaSetting::Max)
                .map_err(|_| format!("'{text}' is not a number, 'unlimited' or 'default'")),
        }
    }
}

/// A client's own quota: each limit the server's, none, or its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaOverride {
    /// The bytes limit.
    pub bytes: QuotaSetting,
    /// The files limit.
    pub files: QuotaSetting,
}

impl QuotaOverride {
    /// The quota in effect for a client with this override on a server
    /// whose setting is `default`.
    pub fn apply(&self, default: Quota) -> Quota {
        Quota {
            max_bytes: self.bytes.apply(default.max_bytes),
            max_files: self.files.apply(default.max_files),
        }
    }

    /// Whether both limits are the server's (no override at all).
    pub fn is_default(&self) -> bool {
        *self == QuotaOverride::default()
    }
}

/// What [`Store::forget_client`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forgotten {
    /// The name the client had (now free), if it still had a record.
    pub name: Option<String>,
    /// Its stored files (base names) deleted with it.
    pub files_deleted: Vec<String>,
    /// Its stored files kept (without `delete_files`).
    pub files_kept: Vec<String>,
    /// Its uploads withdrawn: still arriving or awaiting a verdict.
    pub uploads_withdrawn: usize,
}

/// What [`Store::delete_file`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deleted {
    /// The file had a record (and, if verified, a stored file).
    pub had_record: bool,
    /// Uploads of the name withdrawn: still arriving or awaiting a verdict.
    pub uploads_withdrawn: usize,
}

/// The mark of an upload being received: set when an administrator
/// withdraws it ([`LiveUploads::withdraw`]). The store checks it on every
/// write and when the upload completes.
#[derive(Debug, Clone)]
pub struct Withdrawal(Arc<AtomicBool>);

impl Withdrawal {
    /// Whether the upload was withdrawn.
    pub fn is_withdrawn(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The uploads being received, by client and name, so that forgetting a
/// client or deleting a file can withdraw those still arriving. Entries
/// go away with their upload (weak references, pruned as new ones come).
#[derive(Debug, Default)]
pub struct LiveUploads {
    entries: Vec<(ClientId, String, Weak<AtomicBool>)>,
    prune_at: usize,
}

impl LiveUploads {
    /// Records an upload beginning; its mark.
    pub fn register(&mut self, client: ClientId, file_name: &str) -> Withdrawal {
        if self.entries.len() >= self.prune_at {
            self.entries.retain(|(_, _, w)| w.strong_count() > 0);
            self.prune_at = (self.entries.len() * 2).max(64);
        }
        let mark = Arc::new(AtomicBool::new(false));
        self.entries
            .push((client, file_name.to_owned(), Arc::downgrade(&mark)));
        Withdrawal(mark)
    }

    /// Uploads being received now.
    pub fn count(&mut self) -> usize {
        self.entries.retain(|(_, _, w)| w.strong_count() > 0);
        self.entries.len()
    }

    /// Marks the client's uploads (of `file_name` only, if given) being
    /// received as withdrawn; how many.
    pub fn withdraw(&mut self, client: &ClientId, file_name: Option<&str>) -> usize {
        let mut n = 0;
        self.entries.retain(|(c, name, w)| {
            let Some(mark) = w.upgrade() else {
                return false;
            };
            if c == client && file_name.is_none_or(|f| f == name) {
                if !mark.swap(true, Ordering::Relaxed) {
                    n += 1;
                }
                return false;
            }
            true
        });
        n
    }
}

/// Storage behind server sessions. Calls come from one thread; each call
/// is expected to finish quickly (the server runs one event loop).
pub trait Store {
    /// An upload being received (the server's temporary file).
    type Upload;

    /// The client with this id, if any.
    fn client_by_id(&mut self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError>;

    /// The client with this name, if any.
    fn client_by_name(&mut self, name: &str) -> Result<Option<ClientRecord>, StoreError>;

    /// Records a new client. If `replace` is given, that client (one that
    /// never sent a public key, §3) is deleted in the same transaction.
    fn register_client(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        name: &str,
        replace: Option<&ClientId>,
    ) -> Result<(), StoreError>;

    /// Records the client's public key and the AES key sent in 2102.
    fn set_public_key(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        public_key: &[u8; PUBLIC_KEY_LEN],
        aes_key: &AesKey,
    ) -> Result<(), StoreError>;

    /// Records the AES key sent in 2105 (or a fresh one that retires the
    /// old) as the client's last key.
    fn set_last_key(&mut self, cx: Ctx, id: &ClientId, aes_key: &AesKey) -> Result<(), StoreError>;

    /// Updates LastSeen for a known client (§6: on every request).
    fn touch(&mut self, cx: Ctx, id: &ClientId) -> Result<(), StoreError>;

    /// Starts receiving `file_name` (already reduced to a safe base name)
    /// for a client. Nothing may appear at the final path yet (§6).
    fn begin_upload(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        file_name: &str,
        content_size: u32,
    ) -> Result<Self::Upload, StoreError>;

    /// Whether keeping a file of `size` bytes as `file_name` (new, or
    /// replacing the stored file of that name) keeps the client within its
    /// quota: [`StoreError::OverQuota`] if not, and the refusal is counted.
    /// The session asks before any content is stored, with the smallest
    /// size the content can decrypt to; the store asks again with the
    /// exact size in [`Store::finish_upload`] and [`Store::apply_verdict`].
    fn check_quota(&mut self, id: &ClientId, file_name: &str, size: u64) -> Result<(), StoreError>;

    /// Appends decrypted bytes to an upload. Fails with
    /// [`StoreError::Withdrawn`] once an administrator removed its client
    /// or file.
    fn write_upload(
        &mut self,
        upload: &mut Self::Upload,
        plaintext: &[u8],
    ) -> Result<(), StoreError>;

    /// The upload is complete and its padding checked: keep it pending,
    /// awaiting a verdict, for `cx.conn`. May discard older pending
    /// uploads to stay within the store's caps (the connection's own
    /// oldest, orphans); fails if only other clients' live uploads hold
    /// the slots, if keeping it would exceed the client's quota
    /// ([`StoreError::OverQuota`]), or if it was withdrawn. On failure
    /// nothing of it is kept.
    fn finish_upload(
        &mut self,
        cx: Ctx,
        upload: Self::Upload,
        summary: &UploadSummary,
    ) -> Result<(), StoreError>;

    /// Throws away an upload that did not complete (bad padding, a write
    /// error, a connection lost mid-file).
    fn abort_upload(&mut self, upload: Self::Upload);

    /// Applies a verdict to the client's pending upload of `file_name`:
    /// the newest of `cx.conn`'s, else the newest of any connection.
    /// Accepting places the file at its final path and marks it Verified;
    /// the answer that says so must wait for the commit that makes it
    /// durable ([`Store::uncommitted`]). Nothing earlier is damaged if it
    /// fails. An accept that would take the client over its quota (other
    /// uploads were accepted meanwhile) fails with
    /// [`StoreError::OverQuota`] and the upload is discarded.
    fn apply_verdict(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        file_name: &str,
        verdict: Verdict,
    ) -> Result<VerdictOutcome, StoreError>;

    /// When the upload a verdict of `file_name` by `id` on `cx.conn`
    /// would take ([`Store::apply_verdict`]'s choice) began: the
    /// driver's clock at its 1028 header. The session times a verdict by
    /// it when it has no record of the file's sends (the upload came on
    /// another connection). Default: not known.
    fn pending_since(&self, _cx: Ctx, _id: &ClientId, _file_name: &str) -> Option<Instant> {
        None
    }

    /// Whether `conn` has uploads awaiting a verdict.
    fn has_pending(&self, conn: ConnId) -> bool;

    /// `cx.conn` closed: its pending uploads become orphans, kept for a
    /// while (a verdict may come on another connection), then deleted.
    fn connection_closed(&mut self, cx: Ctx);

    /// Whether changes made since the last [`Store::commit`] are not
    /// durable yet: answers produced now must wait for its outcome.
    fn uncommitted(&self) -> bool;

    /// Makes every change since the last commit durable, at once; says
    /// for which connections that failed. Called by the driver once per
    /// pass while [`Store::uncommitted`] is true.
    fn commit(&mut self, now: Instant) -> Commit;

    /// Makes the records `lookups` names readable without waiting, for
    /// the request `cx.conn` is about to decide. `Pending` means a round
    /// trip is under way: the session parks the request until
    /// [`Store::take_ready`] names `cx.conn`. A store may treat records it
    /// read for the same connection as fresh. The default: always ready.
    fn prepare(&mut self, cx: Ctx, lookups: &[Lookup<'_>]) -> Readiness {
        let _ = (cx, lookups);
        Readiness::Ready
    }

    /// Connections whose [`Store::prepare`] reads arrived since the last
    /// call. The default: none (a store that is always ready).
    fn take_ready(&mut self) -> Vec<ConnId> {
        Vec::new()
    }

    /// The batch that changes made now belong to; a [`Commit`] with this
    /// number or a later one decides them. The default: 0 (a store that
    /// commits at once).
    fn batch(&self) -> u64 {
        0
    }

    /// Starts committing the open batch: its [`Commit`] at once, or `None`
    /// when it is in flight (then [`Store::poll_commit`] gives it later,
    /// and the store wakes the driver). Not called again while one is in
    /// flight. The default commits at once ([`Store::commit`]).
    fn begin_commit(&mut self, now: Instant) -> Option<Commit> {
        Some(self.commit(now))
    }

    /// The commit in flight, once it finished. The default: none.
    fn poll_commit(&mut self) -> Option<Commit> {
        None
    }

    /// Periodic work at `now` (the driver's clock, with `wall` the
    /// wall-clock time that goes with it): orphans past their time are
    /// deleted.
    fn housekeeping(&mut self, now: Instant, wall: SystemTime);

    /// An administrator forgets a client: its record and its own quota go
    /// (its name is free again), its uploads still arriving or awaiting a
    /// verdict are withdrawn (they end in a refusal), and with
    /// `delete_files` its stored files and their records go too; without
    /// it they stay, recorded under its id. Durable at the next commit.
    /// [`StoreError::NotFound`] if neither a record nor files of the id
    /// exist.
    fn forget_client(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        delete_files: bool,
    ) -> Result<Forgotten, StoreError>;

    /// An administrator deletes a client's file: its record and stored
    /// file go, and its uploads of that name still arriving or awaiting a
    /// verdict are withdrawn (a 1029 for one then finds nothing pending).
    /// Durable at the next commit. [`StoreError::NotFound`] if there was
    /// nothing of that name.
    fn delete_file(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        file_name: &str,
    ) -> Result<Deleted, StoreError>;

    /// An administrator sets a client's own quota (all
    /// [`QuotaSetting::Default`] removes it). Applies to the next check;
    /// durable at the next commit. [`StoreError::NotFound`] for an unknown
    /// client.
    fn set_quota(&mut self, cx: Ctx, id: &ClientId, quota: QuotaOverride)
        -> Result<(), StoreError>;
}

/// A pending upload in a [`PendingSet`].
#[derive(Debug)]
pub struct PendingEntry<T> {
    /// Whose it is.
    pub client: ClientId,
    /// Its base name.
    pub file_name: String,
    /// The connection that sent it.
    pub conn: ConnId,
    /// Since when its connection is closed (`None` while it lives).
    pub orphaned_at: Option<Instant>,
    /// What the store keeps for it (its temporary file, its bytes).
    pub data: T,
}

/// Limits of a [`PendingSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Most uploads pending at once, server-wide (at least 1).
    pub max_total: usize,
    /// Most uploads one connection may hold pending; beyond it its oldest
    /// is discarded (at least 1).
    pub max_per_conn: usize,
    /// How long an orphan waits for a verdict from another connection.
    pub orphan_ttl: Duration,
}

/// Default [`PendingLimits::max_total`]: 1024 uploads. A client has one or
/// two pending at a time; the cap bounds the disk space and memory that
/// clients which never send a verdict can tie up.
pub const DEFAULT_MAX_PENDING: usize = 1024;

/// Default [`PendingLimits::max_per_conn`]: 16 uploads.
pub const DEFAULT_MAX_PENDING_PER_CONN: usize = 16;

/// Default [`PendingLimits::orphan_ttl`]: 120 s, the server's idle timeout
/// (as in the reference peer), so a client that reconnects for its
/// verdict within the time a connection may sit idle still finds its
/// upload.
pub const DEFAULT_ORPHAN_TTL: Duration = Duration::from_secs(120);

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            max_total: DEFAULT_MAX_PENDING,
            max_per_conn: DEFAULT_MAX_PENDING_PER_CONN,
            orphan_ttl: DEFAULT_ORPHAN_TTL,
        }
    }
}

/// Why a pending upload left the set without a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its connection holds more than [`PendingLimits::max_per_conn`].
    ConnectionFull,
    /// The server-wide cap was reached.
    ServerFull,
    /// No verdict within [`PendingLimits::orphan_ttl`] of its connection's close.
    Expired,
}

impl fmt::Display for Eviction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Eviction::ConnectionFull => "its connection holds too many",
            Eviction::ServerFull => "pending-upload cap reached",
            Eviction::Expired => "no verdict within the orphan timeout",
        })
    }
}

/// The uploads awaiting a verdict, with the rules both stores follow: which
/// upload a verdict takes, which is discarded at a cap, when orphans
/// expire. Ids only grow, so the first entry is the oldest.
#[derive(Debug)]
pub struct PendingSet<T> {
    entries: BTreeMap<UploadId, PendingEntry<T>>,
    next_id: UploadId,
    limits: PendingLimits,
}

impl<T> PendingSet<T> {
    /// An empty set.
    pub fn new(limits: PendingLimits) -> Self {
        PendingSet {
            entries: BTreeMap::new(),
            next_id: 1,
            limits,
        }
    }

    /// The limits in effect.
    pub fn limits(&self) -> &PendingLimits {
        &self.limits
    }

    /// Number of pending uploads.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `id` is pending.
    pub fn contains(&self, id: UploadId) -> bool {
        self.entries.contains_key(&id)
    }

    /// The entry of `id`.
    pub fn get(&self, id: UploadId) -> Option<&PendingEntry<T>> {
        self.entries.get(&id)
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (UploadId, &PendingEntry<T>)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// Whether `conn` holds pending uploads.
    pub fn has_conn(&self, conn: ConnId) -> bool {
        self.entries
            .values()
            .any(|p| p.conn == conn && p.orphaned_at.is_none())
    }

    /// The uploads to discard so that one more of `client` on `conn` fits:
    /// the connection's oldest beyond its cap, then (server-wide) the
    /// oldest orphan, else the client's own oldest. `Err` if only other
    /// clients' live uploads hold the slots. Nothing is removed here:
    /// call [`PendingSet::remove`] on each returned id.
    pub fn make_room(
        &self,
        conn: ConnId,
        client: &ClientId,
    ) -> Result<Vec<(UploadId, Eviction)>, StoreError> {
        let mut victims: Vec<(UploadId, Eviction)> = Vec::new();
        let chosen = |victims: &Vec<(UploadId, Eviction)>, id: &UploadId| {
            victims.iter().any(|(v, _)| v == id)
        };
        let per_conn = self.limits.max_per_conn.max(1);
        let own: Vec<UploadId> = self
            .entries
            .iter()
            .filter(|(_, p)| p.conn == conn && p.orphaned_at.is_none())
            .map(|(k, _)| *k)
            .collect();
        if own.len() >= per_conn {
            victims.extend(
                own[..=own.len() - per_conn]
                    .iter()
                    .map(|&k| (k, Eviction::ConnectionFull)),
            );
        }
        let cap = self.limits.max_total.max(1);
        while self.entries.len() - victims.len() >= cap {
            let orphan = self
                .entries
                .iter()
                .find(|(k, p)| p.orphaned_at.is_some() && !chosen(&victims, k))
                .map(|(k, _)| *k);
            let same_client = || {
                self.entries
                    .iter()
                    .find(|(k, p)| p.client == *client && !chosen(&victims, k))
                    .map(|(k, _)| *k)
            };
            match orphan.or_else(same_client) {
                Some(victim) => victims.push((victim, Eviction::ServerFull)),
                None => return Err(StoreError::PendingFull { cap }),
            }
        }
        Ok(victims)
    }

    /// Adds a complete upload for `conn` (after [`PendingSet::make_room`]).
    pub fn insert(
        &mut self,
        conn: ConnId,
        client: ClientId,
        file_name: String,
        data: T,
    ) -> UploadId {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            PendingEntry {
                client,
                file_name,
                conn,
                orphaned_at: None,
                data,
            },
        );
        id
    }

    /// Puts back an entry taken out with [`PendingSet::remove`] (an accept
    /// that could not be completed), as an orphan since `now` so it
    /// expires unless a retried verdict comes.
    pub fn restore(&mut self, id: UploadId, mut entry: PendingEntry<T>, now: Instant) {
        entry.orphaned_at.get_or_insert(now);
        self.entries.insert(id, entry);
    }

    /// The upload a verdict of `conn` on `client`'s `file_name` applies
    /// to: the connection's newest, else the newest of any connection.
    pub fn select(&self, conn: ConnId, client: &ClientId, file_name: &str) -> Option<UploadId> {
        let matches = |p: &PendingEntry<T>| p.client == *client && p.file_name == file_name;
        let newest = |own: bool| {
            self.entries
                .iter()
                .rev()
                .find(|(_, p)| matches(p) && (!own || (p.conn == conn && p.orphaned_at.is_none())))
                .map(|(k, _)| *k)
        };
        newest(true).or_else(|| newest(false))
    }

    /// Takes an entry out.
    pub fn remove(&mut self, id: UploadId) -> Option<PendingEntry<T>> {
        self.entries.remove(&id)
    }

    /// Marks `conn`'s uploads orphaned at `now`.
    pub fn orphan(&mut self, conn: ConnId, now: Instant) -> usize {
        let mut n = 0;
        for p in self.entries.values_mut() {
            if p.conn == conn && p.orphaned_at.is_none() {
                p.orphaned_at = Some(now);
                n += 1;
            }
        }
        n
    }

    /// The orphans whose time ran out at `now`, oldest first (not removed).
    pub fn expired(&self, now: Instant) -> Vec<UploadId> {
        let ttl = self.limits.orphan_ttl;
        self.entries
            .iter()
            .filter(|(_, p)| {
                p.orphaned_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= ttl)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// When the next orphan expires, if any is orphaned.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|p| p.orphaned_at)
            .min()
            .map(|t| t + self.limits.orphan_ttl)
    }

    /// Ids of the client's entries (of `file_name` only, if given),
    /// oldest first.
    pub fn of_client(&self, client: &ClientId, file_name: Option<&str>) -> Vec<UploadId> {
        self.entries
            .iter()
            .filter(|(_, p)| p.client == *client && file_name.is_none_or(|f| f == p.file_name))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Ids of every entry, oldest first.
    pub fn ids(&self) -> Vec<UploadId> {
        self.entries.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: ClientId = ClientId([0xa1; 16]);
    const BOB: ClientId = ClientId([0xb0; 16]);

    fn set(max_total: usize, max_per_conn: usize) -> PendingSet<()> {
        PendingSet::new(PendingLimits {
            max_total,
            max_per_conn,
            orphan_ttl: Duration::from_secs(10),
        })
    }

    fn add(
        s: &mut PendingSet<()>,
        conn: ConnId,
        client: ClientId,
        name: &str,
    ) -> Result<UploadId, StoreError> {
        for (victim, _) in s.make_room(conn, &client)? {
            s.remove(victim);
        }
        Ok(s.insert(conn, client, name.into(), ()))
    }

    #[test]
    fn a_verdict_takes_its_connections_newest_else_the_newest_of_any() {
        let mut s = set(100, 100);
        let other_old = add(&mut s, 2, ALICE, "f").unwrap();
        let mine = add(&mut s, 1, ALICE, "f").unwrap();
        let other_new = add(&mut s, 2, ALICE, "f").unwrap();
        add(&mut s, 1, BOB, "f").unwrap();
        add(&mut s, 1, ALICE, "g").unwrap();
        assert_eq!(s.select(1, &ALICE, "f"), Some(mine));
        assert_eq!(s.select(3, &ALICE, "f"), Some(other_new));
        s.remove(other_new);
        assert_eq!(s.select(3, &ALICE, "f"), Some(mine));
        s.orphan(1, Instant::now());
        s.remove(mine);
        assert_eq!(s.select(1, &ALICE, "f"), Some(other_old));
        assert_eq!(s.select(1, &ALICE, "h"), None);
    }

    #[test]
    fn a_connection_over_its_cap_loses_its_own_oldest() {
        let mut s = set(100, 2);
        let a = add(&mut s, 1, ALICE, "a").unwrap();
        let b = add(&mut s, 1, ALICE, "b").unwrap();
        let other = add(&mut s, 2, ALICE, "x").unwrap();
        let c = add(&mut s, 1, ALICE, "c").unwrap();
        assert!(!s.contains(a) && s.contains(b) && s.contains(c) && s.contains(other));
    }

    #[test]
    fn the_server_cap_takes_orphans_then_the_clients_own_and_never_another_clients_live_upload() {
        let mut s = set(2, 100);
        let alices = add(&mut s, 1, ALICE, "report").unwrap();
        let bob1 = add(&mut s, 2, BOB, "a").unwrap();
        let bob2 = add(&mut s, 2, BOB, "b").unwrap();
        assert!(s.contains(alices) && !s.contains(bob1) && s.contains(bob2));
        // Only bob's live upload and alice's own: alice's goes first.
        let alice2 = add(&mut s, 1, ALICE, "second").unwrap();
        assert!(!s.contains(alices) && s.contains(alice2));
        // Full of another client's live uploads: refused.
        let mut full = set(1, 100);
        add(&mut full, 2, BOB, "a").unwrap();
        assert_eq!(
            add(&mut full, 1, ALICE, "x").unwrap_err(),
            StoreError::PendingFull { cap: 1 }
        );
        // An orphan may go.
        full.orphan(2, Instant::now());
        add(&mut full, 1, ALICE, "x").unwrap();
    }

    #[test]
    fn orphans_expire_after_their_ttl_only() {
        let mut s = set(100, 100);
        let t0 = Instant::now();
        let orphan = add(&mut s, 1, ALICE, "o").unwrap();
        add(&mut s, 2, ALICE, "live").unwrap();
        assert_eq!(s.next_expiry(), None);
        assert_eq!(s.orphan(1, t0), 1);
        assert_eq!(s.next_expiry(), Some(t0 + Duration::from_secs(10)));
        assert!(s.expired(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(s.expired(t0 + Duration::from_secs(10)), [orphan]);
        assert!(s.has_conn(2) && !s.has_conn(1));
    }

    #[test]
    fn quota_checks_are_exact_at_the_limit_and_count_a_replacement_by_its_difference() {
        let q = Quota {
            max_bytes: Some(100),
            max_files: Some(2),
        };
        let usage = Usage {
            files: 1,
            bytes: 60,
        };
        assert_eq!(q.check(usage, None, 40), Ok(()));
        let over = q.check(usage, None, 41).unwrap_err();
        assert_eq!(
            (over.limit, over.max, over.would_be),
            (QuotaLimit::Bytes, 100, 101)
        );
        // Replacing the 60-byte file: only the new size counts.
        assert_eq!(q.check(usage, Some(60), 100), Ok(()));
        assert!(q.check(usage, Some(60), 101).is_err());
        // A third file is one too many; a replacement is not a new file.
        let full = Usage {
            files: 2,
            bytes: 10,
        };
        assert_eq!(q.check(full, None, 1).unwrap_err().limit, QuotaLimit::Files);
        assert_eq!(q.check(full, Some(5), 1), Ok(()));
        assert_eq!(Quota::UNLIMITED.check(full, None, u64::MAX), Ok(()));
    }

    #[test]
    fn a_quota_override_replaces_each_limit_on_its_own() {
        let server = Quota {
            max_bytes: Some(10),
            max_files: Some(3),
        };
        let own = QuotaOverride {
            bytes: QuotaSetting::Max(99),
            files: QuotaSetting::Unlimited,
        };
        assert_eq!(
            own.apply(server),
            Quota {
                max_bytes: Some(99),
                max_files: None
            }
        );
        assert_eq!(QuotaOverride::default().apply(server), server);
        for text in ["default", "unlimited", "42"] {
            assert_eq!(text.parse::<QuotaSetting>().unwrap().to_string(), text);
        }
        assert!("-1".parse::<QuotaSetting>().is_err());
    }

    #[test]
    fn withdrawing_marks_only_the_matching_live_uploads() {
        let mut live = LiveUploads::default();
        let a = live.register(ALICE, "a");
        let b = live.register(ALICE, "b");
        let bob = live.register(BOB, "a");
        let gone = live.register(ALICE, "a");
        drop(gone);
        assert_eq!(live.withdraw(&ALICE, Some("a")), 1);
        assert!(a.is_withdrawn() && !b.is_withdrawn() && !bob.is_withdrawn());
        assert_eq!(live.withdraw(&ALICE, None), 1);
        assert!(b.is_withdrawn() && !bob.is_withdrawn());
        assert_eq!(live.withdraw(&ALICE, None), 0);
    }

    #[test]
    fn a_commit_fails_everyone_on_error_and_only_the_named_otherwise() {
        let partial = Commit {
            error: None,
            failed: vec![3],
            ..Commit::default()
        };
        assert_eq!(partial.outcome(3), Durability::Failed);
        assert_eq!(partial.outcome(4), Durability::Durable);
        let refused = Commit {
            refused: vec![CommitRefusal {
                conn: 5,
                client_id: ALICE,
                error: StoreError::Withdrawn { why: "test" },
            }],
            ..Commit::default()
        };
        assert_eq!(refused.outcome(5), Durability::Failed);
        assert_eq!(refused.outcome(3), Durability::Durable);
        assert_eq!(refused.refusal(5).map(|r| r.client_id), Some(ALICE));
        let total = Commit {
            error: Some(StoreError::Invalid("x".into())),
            failed: vec![],
            ..Commit::default()
        };
        assert_eq!(total.outcome(4), Durability::Failed);
    }
}
