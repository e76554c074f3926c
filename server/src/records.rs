//! Where [`crate::store::DiskStore`] keeps its records: SQLite in the data
//! directory ([`Db`], one server), or PostgreSQL shared by several servers
//! ([`PgRecords`]).
//!
//! Both answer the same calls. SQLite answers reads at once and keeps
//! writes in an open transaction until the store's commit. PostgreSQL is
//! across the network, and the event loop never waits for it:
//!
//! * Reads come from a cache that [`PgRecords::prepare`] fills before the
//!   session decides a request (the [`Store::prepare`] contract): for a
//!   client id its record, its files with their sizes and its own quota;
//!   for a name the record of that name. A connection's reads stay fresh
//!   for it until it closes (the contract allows that); a read nobody
//!   prepared sees no record. The one read of that kind the session makes
//!   is the check that a freshly drawn client id is unused, which the
//!   database's primary key backs anyway.
//! * Writes go into the open batch and into the cache at once, so the
//!   connection that made them reads them back. The store's commit sends
//!   the batch to the worker as one job (one transaction); each write
//!   remembers the connection it was made for, so a write the database
//!   refuses (a name another server registered a moment earlier) fails
//!   only that connection's answers.
//!
//! [`Store::prepare`]: sealdrop_protocol::store::Store::prepare

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::AesKey;
use sealdrop_protocol::store::{
    ClientRecord, ConnId, Lookup, QuotaOverride, Readiness, StoreError,
};
use sealdrop_protocol::ClientId;

use crate::db::{Db, FileMeta, FileRow};
use crate::pg::{Connected, Job, JobDone, Op, PgError, Reply, Worker};

/// Records a connection keeps fresh in the PostgreSQL cache, at most;
/// past it its oldest is dropped (read again if asked for). A session
/// needs one (its client id, or the name it registers); the cap bounds
/// what a connection that registers name after name can make the cache
/// hold.
pub const MAX_FRESH_PER_CONN: usize = 4;

/// Job tags at or above this are reads; below it, commits (the batch
/// number).
const READ_TAG: u64 = 1 << 63;

/// The tag of the metrics' size measurement ([`PgRecords::measure`]).
const SIZES_TAG: u64 = u64::MAX;

/// How often a server on PostgreSQL measures the database and the stored
/// files for its metrics (`sealdrop_database_size_bytes`,
/// `sealdrop_files_size_bytes`): two aggregate queries, so not at every
/// scrape.
pub const MEASURE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// The records of one server.
#[derive(Debug)]
pub enum Records {
    /// `defensive.db` (or `--database sqlite:PATH`).
    Sqlite(Db),
    /// PostgreSQL (`--database postgres://…`).
    Pg(Box<PgRecords>),
}

/// What a connection keeps fresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Id(ClientId),
    Name(String),
}

impl From<&Lookup<'_>> for Key {
    fn from(lookup: &Lookup<'_>) -> Key {
        match lookup {
            Lookup::Id(id) => Key::Id(**id),
            Lookup::Name(name) => Key::Name((*name).to_owned()),
        }
    }
}

/// A read's outcome in the cache.
#[derive(Debug, Clone)]
enum Loaded<T> {
    /// Arrived (or written here since).
    Ok(T),
    /// The read failed: reads of it fail until a connection prepares it
    /// again.
    Failed(String),
}

/// A client as read for an id lookup.
#[derive(Debug, Clone, Default)]
struct View {
    record: Option<ClientRecord>,
    /// Its files: row and recorded size.
    files: BTreeMap<String, (FileRow, Option<u64>)>,
    quota: QuotaOverride,
}

/// A cache entry with the number of connections keeping it fresh.
#[derive(Debug)]
struct Entry<T> {
    value: Loaded<T>,
    refs: usize,
}

/// A read job on its way.
#[derive(Debug)]
struct Awaiting {
    conn: ConnId,
    keys: Vec<Key>,
}

/// PostgreSQL records: the worker, the read cache and the open batch.
pub struct PgRecords {
    /// Made at open; handed to the worker thread by [`PgRecords::attach`].
    connected: Option<Connected>,
    worker: Option<Worker>,
    views: HashMap<ClientId, Entry<View>>,
    names: HashMap<String, Entry<Option<ClientRecord>>>,
    /// Per connection, the keys it keeps fresh (oldest first).
    fresh: HashMap<ConnId, Vec<Key>>,
    awaiting: HashMap<u64, Awaiting>,
    next_read: u64,
    ready: Vec<ConnId>,
    /// The open batch: each write with the connection it was made for.
    batch: Vec<(Option<ConnId>, Op)>,
    /// The batch being committed, for replaying onto reads that arrive
    /// meanwhile.
    in_flight: Vec<Op>,
    /// A finished commit job, until the store collects it.
    finished: Option<JobDone>,
    /// The last measurement: the database's bytes and the stored files'.
    sizes: Option<(u64, u64)>,
    /// When the next measurement is due; `None` while one is out.
    next_measure: Option<std::time::Instant>,
    /// [`MEASURE_EVERY`] unless set otherwise.
    measure_every: std::time::Duration,
}

impl std::fmt::Debug for PgRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRecords")
            .field("worker", &self.worker)
            .field("cached_clients", &self.views.len())
            .field("cached_names", &self.names.len())
            .field("open_writes", &self.batch.len())
            .finish()
    }
}

fn unprepared<'a, T>(value: &'a Loaded<T>, op: &'static str) -> Result<&'a T, StoreError> {
    match value {
        Loaded::Ok(v) => Ok(v),
        Loaded::Failed(why) => Err(StoreError::database(op, why.clone())),
    }
}

impl PgRecords {
    /// Records over a connection made at start-up; reads and commits wait
    /// for [`PgRecords::attach`].
    pub fn new(connected: Connected) -> PgRecords {
        PgRecords {
            connected: Some(connected),
            worker: None,
            views: HashMap::new(),
            names: HashMap::new(),
            fresh: HashMap::new(),
            awaiting: HashMap::new(),
            next_read: 0,
            ready: Vec::new(),
            batch: Vec::new(),
            in_flight: Vec::new(),
            finished: None,
            sizes: None,
            next_measure: Some(std::time::Instant::now()),
            measure_every: MEASURE_EVERY,
        }
    }

    /// Records with no database behind them: every read submitted fails
    /// at once. For the cache's unit tests.
    #[cfg(test)]
    fn detached() -> PgRecords {
        PgRecords {
            connected: None,
            worker: None,
            views: HashMap::new(),
            names: HashMap::new(),
            fresh: HashMap::new(),
            awaiting: HashMap::new(),
            next_read: 0,
            ready: Vec::new(),
            batch: Vec::new(),
            in_flight: Vec::new(),
            finished: None,
            sizes: None,
            next_measure: Some(std::time::Instant::now()),
            measure_every: MEASURE_EVERY,
        }
    }

    /// How often [`PgRecords::measure`] measures (default
    /// [`MEASURE_EVERY`]).
    pub fn set_measure_every(&mut self, every: std::time::Duration) {
        self.measure_every = every;
    }

    /// Starts the worker thread, which wakes the loop through `waker`
    /// after every job.
    pub fn attach(&mut self, waker: Arc<mio::Waker>) -> Result<(), StoreError> {
        if let Some(connected) = self.connected.take() {
            self.worker = Some(connected.spawn(waker).map_err(StoreError::from)?);
        }
        Ok(())
    }

    /// Runs a job on the start-up connection, before [`PgRecords::attach`]
    /// (start-up reads: counts, the clean-up's checks).
    pub fn run_now(&mut self, ops: Vec<Op>) -> Result<Vec<Result<Reply, PgError>>, StoreError> {
        let connected = self.connected.as_mut().ok_or_else(|| {
            StoreError::database("database", "the worker runs already; no direct queries")
        })?;
        let done = connected.run_now(&Job { tag: 0, ops });
        done.commit.map_err(StoreError::from)?;
        Ok(done.results)
    }

    /// Makes `lookups` fresh for `conn`: `Pending` while a read is on its
    /// way ([`PgRecords::take_ready`] names `conn` when it is back).
    pub fn prepare(&mut self, conn: ConnId, lookups: &[Lookup<'_>]) -> Readiness {
        let keys: Vec<Key> = lookups
            .iter()
            .map(Key::from)
            .filter(|k| !self.is_fresh(conn, k))
            .collect();
        if keys.is_empty() {
            return Readiness::Ready;
        }
        let mut ops = Vec::new();
        for key in &keys {
            match key {
                Key::Id(id) => {
                    ops.push(Op::ClientById(*id));
                    ops.push(Op::FilesOf(*id));
                    ops.push(Op::QuotaOf(*id));
                }
                Key::Name(name) => ops.push(Op::ClientByName(name.clone())),
            }
        }
        let tag = READ_TAG | self.next_read;
        self.next_read = (self.next_read + 1) % (READ_TAG - 1);
        let submitted = match &self.worker {
            Some(worker) => worker.submit(Job { tag, ops }),
            None => Err(PgError::WorkerGone),
        };
        match submitted {
            Ok(()) => {
                self.awaiting.insert(tag, Awaiting { conn, keys });
            }
            Err(e) => {
                // Answered at the next pass: its reads fail (2107).
                log::warn!("conn#{conn}: database read not queued: {e}");
                let why = e.to_string();
                for key in keys {
                    self.store_failed(conn, key, &why);
                }
                self.ready.push(conn);
            }
        }
        Readiness::Pending
    }

    fn is_fresh(&self, conn: ConnId, key: &Key) -> bool {
        let listed = self.fresh.get(&conn).is_some_and(|keys| keys.contains(key));
        listed
            && match key {
                Key::Id(id) => self
                    .views
                    .get(id)
                    .is_some_and(|e| matches!(e.value, Loaded::Ok(_))),
                Key::Name(name) => self
                    .names
                    .get(name)
                    .is_some_and(|e| matches!(e.value, Loaded::Ok(_))),
            }
    }

    /// Lists `key` as fresh for `conn` (one more reference), dropping its
    /// oldest past [`MAX_FRESH_PER_CONN`].
    fn hold(&mut self, conn: ConnId, key: &Key) {
        let keys = self.fresh.entry(conn).or_default();
        if keys.contains(key) {
            return;
        }
        keys.push(key.clone());
        let dropped = if keys.len() > MAX_FRESH_PER_CONN {
            Some(keys.remove(0))
        } else {
            None
        };
        match key {
            Key::Id(id) => {
                if let Some(e) = self.views.get_mut(id) {
                    e.refs += 1;
                }
            }
            Key::Name(name) => {
                if let Some(e) = self.names.get_mut(name) {
                    e.refs += 1;
                }
            }
        }
        if let Some(old) = dropped {
            self.release(&old);
        }
    }

    fn release(&mut self, key: &Key) {
        match key {
            Key::Id(id) => {
                if let Some(e) = self.views.get_mut(id) {
                    e.refs = e.refs.saturating_sub(1);
                    if e.refs == 0 {
                        self.views.remove(id);
                    }
                }
            }
            Key::Name(name) => {
                if let Some(e) = self.names.get_mut(name) {
                    e.refs = e.refs.saturating_sub(1);
                    if e.refs == 0 {
                        self.names.remove(name);
                    }
                }
            }
        }
    }

    fn store_failed(&mut self, conn: ConnId, key: Key, why: &str) {
        match &key {
            Key::Id(id) => {
                self.views
                    .entry(*id)
                    .or_insert(Entry {
                        value: Loaded::Failed(String::new()),
                        refs: 0,
                    })
                    .value = Loaded::Failed(why.to_owned());
            }
            Key::Name(name) => {
                self.names
                    .entry(name.clone())
                    .or_insert(Entry {
                        value: Loaded::Failed(String::new()),
                        refs: 0,
                    })
                    .value = Loaded::Failed(why.to_owned());
            }
        }
        self.hold(conn, &key);
    }

    /// A connection closed: what it kept fresh may go.
    pub fn connection_closed(&mut self, conn: ConnId) {
        for key in self.fresh.remove(&conn).unwrap_or_default() {
            self.release(&key);
        }
        self.awaiting.retain(|_, a| a.conn != conn);
        self.ready.retain(|c| *c != conn);
    }

    /// Collects what the worker finished: reads into the cache (their
    /// connections become ready), a commit kept for
    /// [`PgRecords::take_commit`].
    pub fn collect(&mut self) {
        loop {
            let Some(done) = self.worker.as_ref().and_then(Worker::try_recv) else {
                return;
            };
            if done.tag == SIZES_TAG {
                self.sizes_arrived(done);
            } else if done.tag >= READ_TAG {
                self.read_arrived(done);
            } else {
                self.finished = Some(done);
            }
        }
    }

    /// Sends the metrics' measurement if it is due at `now`
    /// ([`MEASURE_EVERY`]).
    pub fn measure(&mut self, now: std::time::Instant) {
        if self.next_measure.is_none_or(|at| now < at) {
            return;
        }
        let Some(worker) = &self.worker else {
            return;
        };
        let job = Job {
            tag: SIZES_TAG,
            ops: vec![Op::Sizes],
        };
        self.next_measure = match worker.submit(job) {
            Ok(()) => None,
            Err(_) => Some(now + self.measure_every),
        };
    }

    fn sizes_arrived(&mut self, done: JobDone) {
        if let Some(Ok(Reply::Sizes(db, files))) = done.results.into_iter().next() {
            self.sizes = Some((db, files));
        }
        self.next_measure = Some(std::time::Instant::now() + self.measure_every);
    }

    /// The last measurement of the database's and the stored files' bytes.
    pub fn sizes(&self) -> Option<(u64, u64)> {
        self.sizes
    }

    fn read_arrived(&mut self, done: JobDone) {
        let Some(Awaiting { conn, keys }) = self.awaiting.remove(&done.tag) else {
            return; // its connection closed meanwhile
        };
        let mut results = done.results.into_iter();
        for key in keys {
            match &key {
                Key::Id(id) => {
                    let record = results.next();
                    let files = results.next();
                    let quota = results.next();
                    let view = match (record, files, quota) {
                        (
                            Some(Ok(Reply::Client(record))),
                            Some(Ok(Reply::Files(files))),
                            Some(Ok(Reply::Quota(quota))),
                        ) => Ok(View {
                            record,
                            files: files
                                .into_iter()
                                .map(|(row, size)| (row.file_name.clone(), (row, size)))
                                .collect(),
                            quota,
                        }),
                        (a, b, c) => Err(first_error([a, b, c])),
                    };
                    match view {
                        Ok(view) => {
                            let refs = self.views.get(id).map_or(0, |e| e.refs);
                            self.views.insert(
                                *id,
                                Entry {
                                    value: Loaded::Ok(view),
                                    refs,
                                },
                            );
                            self.hold(conn, &key);
                        }
                        Err(why) => self.store_failed(conn, key.clone(), &why),
                    }
                }
                Key::Name(name) => match results.next() {
                    Some(Ok(Reply::Client(record))) => {
                        let refs = self.names.get(name).map_or(0, |e| e.refs);
                        self.names.insert(
                            name.clone(),
                            Entry {
                                value: Loaded::Ok(record),
                                refs,
                            },
                        );
                        self.hold(conn, &key);
                    }
                    other => {
                        let why = first_error([other]);
                        self.store_failed(conn, key.clone(), &why);
                    }
                },
            }
        }
        // Writes not in the database yet (or on their way) stay visible.
        let pending: Vec<Op> = self
            .in_flight
            .iter()
            .cloned()
            .chain(self.batch.iter().map(|(_, op)| op.clone()))
            .collect();
        for op in &pending {
            self.apply(None, op);
        }
        self.ready.push(conn);
    }

    /// Connections whose reads arrived.
    pub fn take_ready(&mut self) -> Vec<ConnId> {
        self.collect();
        std::mem::take(&mut self.ready)
    }

    /// Whether writes wait for a commit.
    pub fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Sends the open batch (with `extra` writes after it) to the worker
    /// as the commit of batch `tag`; returns for each write the connection
    /// it was made for.
    pub fn submit_commit(
        &mut self,
        tag: u64,
        extra: Vec<(Option<ConnId>, Op)>,
    ) -> Result<Vec<Option<ConnId>>, StoreError> {
        for (conn, op) in &extra {
            self.apply(*conn, op);
        }
        let mut all = std::mem::take(&mut self.batch);
        all.extend(extra);
        let (conns, ops): (Vec<Option<ConnId>>, Vec<Op>) = all.into_iter().unzip();
        self.in_flight = ops.clone();
        let worker = self.worker.as_ref().ok_or(PgError::WorkerGone)?;
        worker.submit(Job { tag, ops }).map_err(StoreError::from)?;
        Ok(conns)
    }

    /// The commit job, once finished.
    pub fn take_commit(&mut self) -> Option<JobDone> {
        self.collect();
        let done = self.finished.take()?;
        self.in_flight.clear();
        Some(done)
    }

    /// Waits up to `timeout` for the commit job (at exit).
    pub fn wait_commit(&mut self, timeout: std::time::Duration) -> Option<JobDone> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(done) = self.take_commit() {
                return Some(done);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let done = self.worker.as_ref()?.recv_timeout(left)?;
            if done.tag == SIZES_TAG {
                self.sizes_arrived(done);
            } else if done.tag >= READ_TAG {
                self.read_arrived(done);
            } else {
                self.in_flight.clear();
                return Some(done);
            }
        }
    }

    /// A commit failed: nothing read or written since may be trusted;
    /// every connection reads again.
    pub fn forget_cache(&mut self) {
        self.views.clear();
        self.names.clear();
        self.fresh.clear();
        self.in_flight.clear();
    }

    /// Drops what the cache holds of client `id` (an administrator changed
    /// it in the database directly): every connection reads it again.
    pub fn forget_client(&mut self, id: &ClientId) {
        self.views.remove(id);
        let names: Vec<String> = self
            .names
            .iter()
            .filter(|(_, e)| match &e.value {
                Loaded::Ok(Some(record)) => record.id == *id,
                _ => false,
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in &names {
            self.names.remove(name);
        }
        for keys in self.fresh.values_mut() {
            keys.retain(|k| match k {
                Key::Id(other) => other != id,
                Key::Name(n) => !names.contains(n),
            });
        }
    }

    /// A write: into the open batch for `conn`, and into the cache.
    fn write(&mut self, conn: Option<ConnId>, op: Op) {
        self.apply(conn, &op);
        self.batch.push((conn, op));
    }

    /// What a write changes in the cache (`conn`: who made it, so a new
    /// client's record stays fresh for its connection).
    fn apply(&mut self, conn: Option<ConnId>, op: &Op) {
        match op {
            Op::RegisterClient {
                id, name, replace, ..
            } => {
                let record = ClientRecord {
                    id: *id,
                    name: name.clone(),
                    public_key: None,
                    last_key: None,
                };
                if let Some(old) = replace {
                    self.update_record(old, |r| *r = None);
                }
                if let Some(e) = self.names.get_mut(name) {
                    e.value = Loaded::Ok(Some(record.clone()));
                }
                if let Some(conn) = conn {
                    if !self.views.contains_key(id) {
                        self.views.insert(
                            *id,
                            Entry {
                                value: Loaded::Ok(View {
                                    record: Some(record),
                                    ..View::default()
                                }),
                                refs: 0,
                            },
                        );
                    }
                    self.hold(conn, &Key::Id(*id));
                }
            }
            Op::SetPublicKey {
                id,
                public_key,
                aes_key,
                ..
            } => {
                let (pk, key) = (public_key.clone(), aes_key.clone());
                self.update_record(id, |r| {
                    if let Some(r) = r {
                        r.public_key = Some(pk.clone());
                        r.last_key = Some(key.clone());
                    }
                });
            }
            Op::SetLastKey { id, aes_key } => {
                let key = aes_key.clone();
                self.update_record(id, |r| {
                    if let Some(r) = r {
                        r.last_key = Some(key.clone());
                    }
                });
            }
            Op::DeleteClient(id) => {
                self.update_record(id, |r| *r = None);
                if let Some(Entry {
                    value: Loaded::Ok(view),
                    ..
                }) = self.views.get_mut(id)
                {
                    view.quota = QuotaOverride::default();
                }
            }
            Op::AddUnverifiedFile {
                id,
                file_name,
                path_name,
            } => self.update_view(id, |v| {
                v.files.entry(file_name.clone()).or_insert((
                    FileRow {
                        client: *id,
                        file_name: file_name.clone(),
                        path_name: path_name.clone(),
                        verified: false,
                    },
                    None,
                ));
            }),
            Op::MarkVerified {
                id,
                file_name,
                path_name,
            } => self.update_view(id, |v| {
                let entry = v.files.entry(file_name.clone()).or_insert((
                    FileRow {
                        client: *id,
                        file_name: file_name.clone(),
                        path_name: path_name.clone(),
                        verified: true,
                    },
                    None,
                ));
                entry.0.path_name.clone_from(path_name);
                entry.0.verified = true;
            }),
            Op::PlaceVerified {
                id,
                file_name,
                to,
                size,
                ..
            } => self.update_view(id, |v| {
                let row = FileRow {
                    client: *id,
                    file_name: file_name.clone(),
                    path_name: to.to_string_lossy().into_owned(),
                    verified: true,
                };
                v.files.insert(file_name.clone(), (row, Some(*size)));
            }),
            Op::MarkUnverified { id, file_name } => self.update_view(id, |v| {
                if let Some(f) = v.files.get_mut(file_name) {
                    f.0.verified = false;
                }
            }),
            Op::RecordFileMeta {
                id,
                file_name,
                size,
                ..
            } => self.update_view(id, |v| {
                if let Some(f) = v.files.get_mut(file_name) {
                    f.1 = Some(*size);
                }
            }),
            Op::DeleteFile { id, file_name } => self.update_view(id, |v| {
                v.files.remove(file_name);
            }),
            Op::SetQuota { id, quota } => self.update_view(id, |v| v.quota = *quota),
            _ => {}
        }
    }

    /// Changes the cached record of `id`, wherever it is cached.
    fn update_record(&mut self, id: &ClientId, change: impl Fn(&mut Option<ClientRecord>)) {
        if let Some(Entry {
            value: Loaded::Ok(view),
            ..
        }) = self.views.get_mut(id)
        {
            change(&mut view.record);
        }
        for e in self.names.values_mut() {
            if let Loaded::Ok(record) = &mut e.value {
                if record.as_ref().is_some_and(|r| r.id == *id) {
                    change(record);
                }
            }
        }
    }

    fn update_view(&mut self, id: &ClientId, change: impl FnOnce(&mut View)) {
        if let Some(Entry {
            value: Loaded::Ok(view),
            ..
        }) = self.views.get_mut(id)
        {
            change(view);
        }
    }

    fn view(&self, id: &ClientId, op: &'static str) -> Result<Option<&View>, StoreError> {
        match self.views.get(id) {
            None => Ok(None),
            Some(e) => unprepared(&e.value, op).map(Some),
        }
    }
}

/// The first error among a read's results, as text.
fn first_error<const N: usize>(results: [Option<Result<Reply, PgError>>; N]) -> String {
    for r in results {
        match r {
            Some(Err(e)) => return e.to_string(),
            None => return "a reply is missing".to_owned(),
            Some(Ok(_)) => {}
        }
    }
    "a reply of the wrong kind".to_owned()
}

impl Records {
    /// The SQLite database, if that is where the records are.
    pub fn sqlite(&self) -> Option<&Db> {
        match self {
            Records::Sqlite(db) => Some(db),
            Records::Pg(_) => None,
        }
    }

    /// The PostgreSQL records, if that is where they are.
    pub fn pg(&mut self) -> Option<&mut PgRecords> {
        match self {
            Records::Sqlite(_) => None,
            Records::Pg(pg) => Some(pg),
        }
    }

    /// The PostgreSQL records, if that is where they are (to read).
    pub fn pg_ref(&self) -> Option<&PgRecords> {
        match self {
            Records::Sqlite(_) => None,
            Records::Pg(pg) => Some(pg),
        }
    }

    /// Whether the records are shared with other servers.
    pub fn is_shared(&self) -> bool {
        matches!(self, Records::Pg(_))
    }

    /// The client with this id.
    pub fn client_by_id(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        match self {
            Records::Sqlite(db) => db.client_by_id(id),
            Records::Pg(pg) => Ok(pg
                .view(id, "look up client by id")?
                .and_then(|v| v.record.clone())),
        }
    }

    /// The client with this name.
    pub fn client_by_name(&self, name: &str) -> Result<Option<ClientRecord>, StoreError> {
        match self {
            Records::Sqlite(db) => db.client_by_name(name),
            Records::Pg(pg) => match pg.names.get(name) {
                None => Ok(None),
                Some(e) => Ok(unprepared(&e.value, "look up client by name")?.clone()),
            },
        }
    }

    /// One file's row.
    pub fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRow>, StoreError> {
        match self {
            Records::Sqlite(db) => db.file(id, file_name),
            Records::Pg(pg) => Ok(pg
                .view(id, "look up file")?
                .and_then(|v| v.files.get(file_name))
                .map(|f| f.0.clone())),
        }
    }

    /// A client's file rows.
    pub fn files_of(&self, id: &ClientId) -> Result<Vec<FileRow>, StoreError> {
        match self {
            Records::Sqlite(db) => db.files_of(id),
            Records::Pg(pg) => Ok(pg
                .view(id, "list a client's files")?
                .map(|v| v.files.values().map(|f| f.0.clone()).collect())
                .unwrap_or_default()),
        }
    }

    /// A file's recorded size (and cksum, from SQLite).
    pub fn file_meta(&self, id: &ClientId, file_name: &str) -> Result<FileMeta, StoreError> {
        match self {
            Records::Sqlite(db) => db.file_meta(id, file_name),
            Records::Pg(pg) => Ok(FileMeta {
                size: pg
                    .view(id, "look up file size")?
                    .and_then(|v| v.files.get(file_name))
                    .and_then(|f| f.1),
                cksum: None,
            }),
        }
    }

    /// A client's own quota.
    pub fn quota_override(&self, id: &ClientId) -> Result<QuotaOverride, StoreError> {
        match self {
            Records::Sqlite(db) => db.quota_override(id),
            Records::Pg(pg) => Ok(pg
                .view(id, "look up quota")?
                .map(|v| v.quota)
                .unwrap_or_default()),
        }
    }

    /// A new client (see [`Db::register_client`]).
    pub fn register_client(
        &mut self,
        conn: ConnId,
        id: &ClientId,
        name: &str,
        replace: Option<&ClientId>,
        seen: &str,
    ) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.register_client(id, name, replace, seen),
            Records::Pg(pg) => {
                pg.write(
                    Some(conn),
                    Op::RegisterClient {
                        id: *id,
                        name: name.to_owned(),
                        replace: replace.copied(),
                        seen: seen.to_owned(),
                    },
                );
                Ok(())
            }
        }
    }

    /// The keys of a 2102.
    pub fn set_public_key(
        &mut self,
        conn: ConnId,
        id: &ClientId,
        public_key: &[u8; PUBLIC_KEY_LEN],
        aes_key: &AesKey,
        seen: &str,
    ) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.set_public_key(id, public_key, aes_key, seen),
            Records::Pg(pg) => {
                pg.write(
                    Some(conn),
                    Op::SetPublicKey {
                        id: *id,
                        public_key: Box::new(*public_key),
                        aes_key: aes_key.clone(),
                        seen: seen.to_owned(),
                    },
                );
                Ok(())
            }
        }
    }

    /// The key of a 2105.
    pub fn set_last_key(
        &mut self,
        conn: ConnId,
        id: &ClientId,
        aes_key: &AesKey,
    ) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.set_last_key(id, aes_key),
            Records::Pg(pg) => {
                pg.write(
                    Some(conn),
                    Op::SetLastKey {
                        id: *id,
                        aes_key: aes_key.clone(),
                    },
                );
                Ok(())
            }
        }
    }

    /// LastSeen.
    pub fn touch(&mut self, id: &ClientId, seen: &str) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.touch(id, seen),
            Records::Pg(pg) => {
                // Once per client and second and batch: LastSeen has
                // one-second resolution, and each write is a round trip.
                let same = |op: &(Option<ConnId>, Op)| matches!(&op.1, Op::Touch { id: i, seen: t } if i == id && t == seen);
                if pg.batch.iter().any(same) {
                    return Ok(());
                }
                // Not for a connection: LastSeen failing fails nobody.
                pg.write(
                    None,
                    Op::Touch {
                        id: *id,
                        seen: seen.to_owned(),
                    },
                );
                Ok(())
            }
        }
    }

    /// A complete upload's Verified = 0 row, unless the name has one.
    pub fn add_unverified_file(
        &mut self,
        id: &ClientId,
        file_name: &str,
        path_name: &str,
    ) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.add_unverified_file(id, file_name, path_name),
            Records::Pg(pg) => {
                pg.write(
                    None,
                    Op::AddUnverifiedFile {
                        id: *id,
                        file_name: file_name.to_owned(),
                        path_name: path_name.to_owned(),
                    },
                );
                Ok(())
            }
        }
    }

    /// The file at `path_name` is verified; for PostgreSQL, `conn`'s
    /// answer depends on it.
    pub fn mark_verified(
        &mut self,
        conn: Option<ConnId>,
        id: &ClientId,
        file_name: &str,
        path_name: &str,
    ) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.mark_verified(id, file_name, path_name),
            Records::Pg(pg) => {
                pg.write(conn, mark_verified_op(id, file_name, path_name));
                Ok(())
            }
        }
    }

    /// A file's row back to Verified = 0.
    pub fn mark_unverified(&mut self, id: &ClientId, file_name: &str) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.mark_unverified(id, file_name),
            Records::Pg(pg) => {
                pg.write(
                    None,
                    Op::MarkUnverified {
                        id: *id,
                        file_name: file_name.to_owned(),
                    },
                );
                Ok(())
            }
        }
    }

    /// A stored file's size and cksum.
    pub fn record_file_meta(
        &mut self,
        conn: Option<ConnId>,
        id: &ClientId,
        file_name: &str,
        size: u64,
        cksum: Option<u32>,
    ) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.record_file_meta(id, file_name, size, cksum),
            Records::Pg(pg) => {
                pg.write(conn, file_meta_op(id, file_name, size, cksum));
                Ok(())
            }
        }
    }

    /// Deletes a file's row (and size); whether it had one.
    pub fn delete_file_row(&mut self, id: &ClientId, file_name: &str) -> Result<bool, StoreError> {
        match self {
            Records::Sqlite(db) => db.delete_file_row(id, file_name),
            Records::Pg(pg) => {
                let had = pg
                    .view(id, "delete file record")?
                    .is_some_and(|v| v.files.contains_key(file_name));
                pg.write(
                    None,
                    Op::DeleteFile {
                        id: *id,
                        file_name: file_name.to_owned(),
                    },
                );
                Ok(had)
            }
        }
    }

    /// Deletes a client's row and own quota; whether it had a row.
    pub fn delete_client(&mut self, id: &ClientId) -> Result<bool, StoreError> {
        match self {
            Records::Sqlite(db) => db.delete_client(id),
            Records::Pg(pg) => {
                let had = pg
                    .view(id, "delete client")?
                    .is_some_and(|v| v.record.is_some());
                pg.write(None, Op::DeleteClient(*id));
                Ok(had)
            }
        }
    }

    /// A client's own quota.
    pub fn set_quota(&mut self, id: &ClientId, quota: &QuotaOverride) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.set_quota(id, quota),
            Records::Pg(pg) => {
                pg.write(
                    None,
                    Op::SetQuota {
                        id: *id,
                        quota: *quota,
                    },
                );
                Ok(())
            }
        }
    }

    /// Adds to the lifetime counters.
    pub fn add_counters(&mut self, deltas: &[(&str, u64)]) -> Result<(), StoreError> {
        match self {
            Records::Sqlite(db) => db.add_counters(deltas),
            Records::Pg(pg) => {
                if deltas.iter().any(|(_, d)| *d > 0) {
                    pg.write(
                        None,
                        Op::AddCounters(
                            deltas.iter().map(|(n, d)| ((*n).to_owned(), *d)).collect(),
                        ),
                    );
                }
                Ok(())
            }
        }
    }

    /// Whether writes wait for a commit.
    pub fn has_batch(&self) -> bool {
        match self {
            Records::Sqlite(db) => db.has_batch(),
            Records::Pg(pg) => pg.has_batch(),
        }
    }
}

/// `MarkVerified` for a placed file.
pub fn mark_verified_op(id: &ClientId, file_name: &str, path_name: &str) -> Op {
    Op::MarkVerified {
        id: *id,
        file_name: file_name.to_owned(),
        path_name: path_name.to_owned(),
    }
}

/// `RecordFileMeta` for a placed file.
pub fn file_meta_op(id: &ClientId, file_name: &str, size: u64, cksum: Option<u32>) -> Op {
    Op::RecordFileMeta {
        id: *id,
        file_name: file_name.to_owned(),
        size,
        cksum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: ClientId = ClientId([0xa1; 16]);
    const CONN: ConnId = 7;

    fn record(id: ClientId, name: &str) -> ClientRecord {
        ClientRecord {
            id,
            name: name.to_owned(),
            public_key: None,
            last_key: None,
        }
    }

    /// `records` as if the reads for `keys` of `conn` went out as `tag`
    /// and came back with `results`.
    fn arrive(pg: &mut PgRecords, conn: ConnId, keys: Vec<Key>, results: Vec<Reply>) {
        let tag = READ_TAG | 99;
        pg.awaiting.insert(tag, Awaiting { conn, keys });
        pg.read_arrived(JobDone {
            tag,
            results: results.into_iter().map(Ok).collect(),
            commit: Ok(()),
        });
    }

    fn alice_arrives(pg: &mut PgRecords, conn: ConnId) {
        arrive(
            pg,
            conn,
            vec![Key::Id(ALICE)],
            vec![
                Reply::Client(Some(record(ALICE, "alice"))),
                Reply::Files(Vec::new()),
                Reply::Quota(QuotaOverride::default()),
            ],
        );
    }

    #[test]
    fn reads_stay_fresh_for_their_connection_only() {
        let mut pg = PgRecords::detached();
        alice_arrives(&mut pg, CONN);
        assert_eq!(pg.take_ready(), vec![CONN]);
        assert_eq!(pg.prepare(CONN, &[Lookup::Id(&ALICE)]), Readiness::Ready);
        let records = Records::Pg(Box::new(pg));
        assert_eq!(
            records.client_by_id(&ALICE).unwrap().map(|r| r.name),
            Some("alice".to_owned())
        );
        let Records::Pg(mut pg) = records else {
            unreachable!()
        };
        // Another connection reads again (here: no database, so it fails,
        // and its reads of alice fail until it prepares again).
        assert_eq!(
            pg.prepare(CONN + 1, &[Lookup::Id(&ALICE)]),
            Readiness::Pending
        );
        assert_eq!(pg.take_ready(), vec![CONN + 1]);
        let records = Records::Pg(pg);
        assert!(records.client_by_id(&ALICE).is_err());
    }

    #[test]
    fn a_closed_connection_releases_what_only_it_read() {
        let mut pg = PgRecords::detached();
        alice_arrives(&mut pg, CONN);
        alice_arrives(&mut pg, CONN + 1);
        pg.connection_closed(CONN);
        assert!(pg.views.contains_key(&ALICE));
        pg.connection_closed(CONN + 1);
        assert!(pg.views.is_empty() && pg.fresh.is_empty());
    }

    #[test]
    fn a_connection_keeps_at_most_its_cap_of_records() {
        let mut pg = PgRecords::detached();
        for i in 0..MAX_FRESH_PER_CONN + 3 {
            let name = format!("n{i}");
            arrive(
                &mut pg,
                CONN,
                vec![Key::Name(name)],
                vec![Reply::Client(None)],
            );
        }
        assert_eq!(pg.fresh[&CONN].len(), MAX_FRESH_PER_CONN);
        assert_eq!(pg.names.len(), MAX_FRESH_PER_CONN);
        assert!(!pg.names.contains_key("n0"));
    }

    #[test]
    fn own_writes_show_at_once_and_survive_a_read_that_arrives_after_them() {
        let mut records = Records::Pg(Box::new(PgRecords::detached()));
        let Records::Pg(pg) = &mut records else {
            unreachable!()
        };
        arrive(
            pg,
            CONN,
            vec![Key::Name("bob".into())],
            vec![Reply::Client(None)],
        );
        let bob = ClientId([0xb0; 16]);
        records
            .register_client(CONN, &bob, "bob", None, "2025-01-01T00:00:00Z")
            .unwrap();
        assert_eq!(
            records.client_by_name("bob").unwrap().map(|r| r.id),
            Some(bob)
        );
        assert!(records.client_by_id(&bob).unwrap().is_some());
        let key = AesKey::from_bytes([3; 16]);
        records
            .set_public_key(
                CONN,
                &bob,
                &[1; PUBLIC_KEY_LEN],
                &key,
                "2025-01-01T00:00:00Z",
            )
            .unwrap();
        // A read of bob by another connection comes back from before the
        // commit: the open batch is replayed onto it.
        let Records::Pg(pg) = &mut records else {
            unreachable!()
        };
        arrive(
            pg,
            CONN + 1,
            vec![Key::Id(bob)],
            vec![
                Reply::Client(Some(record(bob, "bob"))),
                Reply::Files(Vec::new()),
                Reply::Quota(QuotaOverride::default()),
            ],
        );
        let seen = records.client_by_id(&bob).unwrap().unwrap();
        assert!(seen.public_key.is_some() && seen.last_key.is_some());
        assert!(records.has_batch());
    }

    #[test]
    fn last_seen_is_written_once_per_client_and_second_in_a_batch() {
        let mut records = Records::Pg(Box::new(PgRecords::detached()));
        for _ in 0..3 {
            records.touch(&ALICE, "2025-01-01T00:00:00Z").unwrap();
        }
        records.touch(&ALICE, "2025-01-01T00:00:01Z").unwrap();
        let Records::Pg(pg) = &records else {
            unreachable!()
        };
        assert_eq!(pg.batch.len(), 2);
    }

    #[test]
    fn an_administrators_change_drops_the_client_from_the_cache() {
        let mut pg = PgRecords::detached();
        alice_arrives(&mut pg, CONN);
        arrive(
            &mut pg,
            CONN,
            vec![Key::Name("alice".into())],
            vec![Reply::Client(Some(record(ALICE, "alice")))],
        );
        pg.forget_client(&ALICE);
        assert!(pg.views.is_empty() && pg.names.is_empty());
        assert_eq!(pg.prepare(CONN, &[Lookup::Id(&ALICE)]), Readiness::Pending);
    }
}
