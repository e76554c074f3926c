//! [`MemoryStore`]: a [`Store`] held in memory, for pair tests, fuzzing and
//! anything else that needs a server without a disk. It follows the same
//! rules as the server's disk store (PROTOCOL.md §6 "storage"), with the
//! same list of uploads awaiting a verdict ([`PendingSet`]).
//!
//! By default every change is final at once (never [`Store::uncommitted`]).
//! With [`MemoryStore::group_commit`] on it behaves like the server's
//! store: changes wait for [`Store::commit`], and a failed commit
//! ([`MemoryStore::fail_commit`]) puts the records back as they were at
//! the last commit and the accepted uploads back among the pending ones.
//!
//! With [`MemoryStore::remote`] on as well it behaves like a store across
//! the network (several servers on one database): reads are ready only
//! after a round trip the test completes with
//! [`MemoryStore::deliver_reads`], and commits finish only when the test
//! says so with [`MemoryStore::finish_commit`] (see "Stores that answer
//! later" in [`crate::store`]).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use crate::consts::PUBLIC_KEY_LEN;
use crate::crypto::AesKey;
use crate::store::*;
use crate::wire::ClientId;

/// A stored file of the memory store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// The content.
    pub bytes: Vec<u8>,
    /// Whether a 1029 confirmed it.
    pub verified: bool,
}

/// An upload being received into memory. Tests send small files only.
#[derive(Debug)]
pub struct MemoryUpload {
    client_id: ClientId,
    file_name: String,
    bytes: Vec<u8>,
    mark: Withdrawal,
}

/// Records as they were at the last commit, and what the batch accepted.
#[derive(Debug)]
struct Batch {
    clients: BTreeMap<ClientId, ClientRecord>,
    files: BTreeMap<(ClientId, String), StoredFile>,
    quotas: BTreeMap<ClientId, QuotaOverride>,
    accepted: Vec<(UploadId, PendingEntry<Vec<u8>>)>,
}

/// Records, files and pending uploads in memory. Set `fail_writes` to make
/// every upload write fail (a full disk), `fail_db` to make every record
/// operation fail (a broken database).
#[derive(Debug)]
pub struct MemoryStore {
    /// Clients by id.
    pub clients: BTreeMap<ClientId, ClientRecord>,
    /// Files by (client, base name): the final paths.
    pub files: BTreeMap<(ClientId, String), StoredFile>,
    pending: PendingSet<Vec<u8>>,
    /// Uploads begun and not yet finished or aborted.
    pub open_uploads: usize,
    /// Make `write_upload` fail.
    pub fail_writes: bool,
    /// Make record operations fail.
    pub fail_db: bool,
    /// Number of `touch` calls (LastSeen updates).
    pub touches: u64,
    /// Changes wait for [`Store::commit`] (as in the server).
    pub group_commit: bool,
    /// Make the next commits fail as a whole.
    pub fail_commit: bool,
    /// Make the next commit fail for these connections only (their
    /// accepted uploads are not stored).
    pub fail_commit_for: Vec<ConnId>,
    /// Make the next commit refuse these connections' accepted uploads
    /// with this error, as a shared database does ([`Commit::refused`]):
    /// not stored, and discarded.
    pub refuse_commit_for: Vec<(ConnId, StoreError)>,
    /// Commits made (successful or not).
    pub commits: u64,
    batch: Option<Batch>,
    /// Wall-clock time last given by [`Store::housekeeping`].
    pub wall: Option<SystemTime>,
    /// Reads need a round trip and commits finish later (needs
    /// `group_commit`).
    pub remote: bool,
    /// Number of the open batch (remote mode).
    batch_no: u64,
    /// The batch being committed and its number.
    in_flight: Option<(u64, Batch)>,
    /// A finished commit not yet polled.
    finished: Option<Commit>,
    /// The batch after a failed one failed too (it was built on it).
    poisoned: bool,
    /// Reads asked for and not delivered: by connection.
    awaiting: Vec<(ConnId, Vec<LookupKey>)>,
    /// Reads delivered: the connection may read these now.
    fresh: std::collections::BTreeSet<(ConnId, LookupKey)>,
    ready: Vec<ConnId>,
    /// Round trips made for reads.
    pub read_trips: u64,
    /// The quota of every client without one of its own (unlimited by
    /// default).
    pub quota: Quota,
    /// Clients' own quotas.
    pub quotas: BTreeMap<ClientId, QuotaOverride>,
    /// Uploads refused for a quota.
    pub quota_refusals: u64,
    live: LiveUploads,
}

/// An owned [`Lookup`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum LookupKey {
    Id(ClientId),
    Name(String),
}

impl From<&Lookup<'_>> for LookupKey {
    fn from(l: &Lookup<'_>) -> Self {
        match l {
            Lookup::Id(id) => LookupKey::Id(**id),
            Lookup::Name(n) => LookupKey::Name((*n).to_owned()),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_limits(PendingLimits::default())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with these caps on pending uploads.
    pub fn with_limits(limits: PendingLimits) -> Self {
        MemoryStore {
            clients: BTreeMap::new(),
            files: BTreeMap::new(),
            pending: PendingSet::new(limits),
            open_uploads: 0,
            fail_writes: false,
            fail_db: false,
            touches: 0,
            group_commit: false,
            fail_commit: false,
            fail_commit_for: Vec::new(),
            refuse_commit_for: Vec::new(),
            commits: 0,
            batch: None,
            wall: None,
            remote: false,
            batch_no: 1,
            in_flight: None,
            finished: None,
            poisoned: false,
            awaiting: Vec::new(),
            fresh: std::collections::BTreeSet::new(),
            ready: Vec::new(),
            read_trips: 0,
            quota: Quota::UNLIMITED,
            quotas: BTreeMap::new(),
            quota_refusals: 0,
            live: LiveUploads::default(),
        }
    }

    /// A store that answers later ([`MemoryStore::remote`], with group
    /// commit).
    pub fn remote() -> Self {
        MemoryStore {
            group_commit: true,
            remote: true,
            ..Self::default()
        }
    }

    /// Completes every read round trip under way: the connections become
    /// ready ([`Store::take_ready`]).
    pub fn deliver_reads(&mut self) {
        for (conn, keys) in std::mem::take(&mut self.awaiting) {
            self.read_trips += 1;
            for k in keys {
                self.fresh.insert((conn, k));
            }
            if !self.ready.contains(&conn) {
                self.ready.push(conn);
            }
        }
    }

    /// Whether a read round trip is under way.
    pub fn reads_awaited(&self) -> bool {
        !self.awaiting.is_empty()
    }

    /// Whether a commit is in flight.
    pub fn commit_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Finishes the commit in flight (as [`Store::commit`] would have,
    /// `fail_commit` and `fail_commit_for` included); [`Store::poll_commit`]
    /// then returns it.
    pub fn finish_commit(&mut self, now: Instant) {
        let Some((no, batch)) = self.in_flight.take() else {
            return;
        };
        let later = self.batch.take();
        self.batch = Some(batch);
        let fail = self.fail_commit || self.poisoned;
        self.poisoned = false;
        let saved = std::mem::replace(&mut self.fail_commit, fail);
        let mut commit = self.commit(now);
        self.fail_commit = saved;
        commit.batch = no;
        if commit.error.is_some() && later.is_some() {
            // The open batch was built on the failed one.
            self.poisoned = true;
        }
        // The later batch keeps its own snapshot of what it may undo only
        // if this one held; after a failure its records are already gone.
        self.batch = later;
        self.finished = Some(commit);
    }

    /// What `id` keeps: its verified files.
    pub fn usage(&self, id: &ClientId) -> Usage {
        let mut usage = Usage::default();
        for ((_, _), f) in self
            .files
            .range((*id, String::new())..)
            .take_while(|((c, _), _)| c == id)
        {
            if f.verified {
                usage.files += 1;
                usage.bytes += f.bytes.len() as u64;
            }
        }
        usage
    }

    /// [`Store::check_quota`]'s rule, on what the store holds now.
    fn quota_allows(
        &mut self,
        id: &ClientId,
        file_name: &str,
        size: u64,
    ) -> Result<(), StoreError> {
        let quota = self
            .quotas
            .get(id)
            .copied()
            .unwrap_or_default()
            .apply(self.quota);
        if !quota.is_limited() {
            return Ok(());
        }
        let replaced = self
            .files
            .get(&(*id, file_name.to_owned()))
            .filter(|f| f.verified)
            .map(|f| f.bytes.len() as u64);
        quota.check(self.usage(id), replaced, size).map_err(|q| {
            self.quota_refusals += 1;
            StoreError::OverQuota(q)
        })
    }

    /// Withdraws the client's uploads (of one name, if given) still
    /// arriving or awaiting a verdict; how many.
    fn withdraw(&mut self, id: &ClientId, file_name: Option<&str>) -> usize {
        let pending = self.pending.of_client(id, file_name);
        for uid in &pending {
            self.pending.remove(*uid);
        }
        pending.len() + self.live.withdraw(id, file_name)
    }

    /// Uploads awaiting a verdict.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Pending uploads whose connection closed.
    pub fn orphan_count(&self) -> usize {
        self.pending
            .iter()
            .filter(|(_, p)| p.orphaned_at.is_some())
            .count()
    }

    fn db(&self) -> Result<(), StoreError> {
        if self.fail_db {
            Err(StoreError::database(
                "any",
                "database unavailable (injected)",
            ))
        } else {
            Ok(())
        }
    }

    /// Opens a batch before a change under group commit.
    fn change(&mut self) {
        if self.group_commit && self.batch.is_none() {
            self.batch = Some(Batch {
                clients: self.clients.clone(),
                files: self.files.clone(),
                quotas: self.quotas.clone(),
                accepted: Vec::new(),
            });
        }
    }

    fn client_mut(&mut self, id: &ClientId) -> Result<&mut ClientRecord, StoreError> {
        self.db()?;
        self.change();
        self.clients.get_mut(id).ok_or(StoreError::NotFound {
            op: "update client",
            what: "no such client",
        })
    }
}

impl Store for MemoryStore {
    type Upload = MemoryUpload;

    fn client_by_id(&mut self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        self.db()?;
        Ok(self.clients.get(id).cloned())
    }

    fn client_by_name(&mut self, name: &str) -> Result<Option<ClientRecord>, StoreError> {
        self.db()?;
        Ok(self.clients.values().find(|c| c.name == name).cloned())
    }

    fn register_client(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        name: &str,
        replace: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        self.db()?;
        let taken = self
            .clients
            .values()
            .any(|c| c.name == name && Some(&c.id) != replace);
        if taken || self.clients.contains_key(id) {
            return Err(StoreError::database(
                "register client",
                "UNIQUE constraint failed",
            ));
        }
        self.change();
        if let Some(old) = replace {
            self.clients.remove(old);
        }
        self.clients.insert(
            *id,
            ClientRecord {
                id: *id,
                name: name.to_owned(),
                public_key: None,
                last_key: None,
            },
        );
        Ok(())
    }

    fn set_public_key(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        public_key: &[u8; PUBLIC_KEY_LEN],
        aes_key: &AesKey,
    ) -> Result<(), StoreError> {
        let c = self.client_mut(id)?;
        c.public_key = Some(Box::new(*public_key));
        c.last_key = Some(aes_key.clone());
        Ok(())
    }

    fn set_last_key(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        aes_key: &AesKey,
    ) -> Result<(), StoreError> {
        self.client_mut(id)?.last_key = Some(aes_key.clone());
        Ok(())
    }

    fn touch(&mut self, _cx: Ctx, id: &ClientId) -> Result<(), StoreError> {
        self.client_mut(id)?;
        self.touches += 1;
        Ok(())
    }

    fn begin_upload(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        file_name: &str,
        _content_size: u32,
    ) -> Result<MemoryUpload, StoreError> {
        self.db()?;
        self.open_uploads += 1;
        Ok(MemoryUpload {
            client_id: *id,
            file_name: file_name.to_owned(),
            bytes: Vec::new(),
            mark: self.live.register(*id, file_name),
        })
    }

    fn check_quota(&mut self, id: &ClientId, file_name: &str, size: u64) -> Result<(), StoreError> {
        self.db()?;
        self.quota_allows(id, file_name, size)
    }

    fn write_upload(
        &mut self,
        upload: &mut MemoryUpload,
        plaintext: &[u8],
    ) -> Result<(), StoreError> {
        if upload.mark.is_withdrawn() {
            return Err(StoreError::Withdrawn {
                why: "its client or file was removed",
            });
        }
        if self.fail_writes {
            return Err(StoreError::Files {
                op: "write upload".into(),
                kind: std::io::ErrorKind::StorageFull,
                detail: "No space left on device (injected)".into(),
            });
        }
        upload.bytes.extend_from_slice(plaintext);
        Ok(())
    }

    fn finish_upload(
        &mut self,
        cx: Ctx,
        upload: MemoryUpload,
        _summary: &UploadSummary,
    ) -> Result<(), StoreError> {
        self.open_uploads -= 1;
        self.db()?;
        if upload.mark.is_withdrawn() {
            return Err(StoreError::Withdrawn {
                why: "its client or file was removed",
            });
        }
        self.quota_allows(
            &upload.client_id,
            &upload.file_name,
            upload.bytes.len() as u64,
        )?;
        for (victim, _) in self.pending.make_room(cx.conn, &upload.client_id)? {
            self.pending.remove(victim);
        }
        self.change();
        let key = (upload.client_id, upload.file_name.clone());
        self.files.entry(key).or_insert_with(|| StoredFile {
            bytes: Vec::new(),
            verified: false,
        });
        self.pending
            .insert(cx.conn, upload.client_id, upload.file_name, upload.bytes);
        Ok(())
    }

    fn abort_upload(&mut self, _upload: MemoryUpload) {
        self.open_uploads -= 1;
    }

    fn apply_verdict(
        &mut self,
        cx: Ctx,
        id: &ClientId,
        file_name: &str,
        verdict: Verdict,
    ) -> Result<VerdictOutcome, StoreError> {
        self.db()?;
        let Some(uid) = self.pending.select(cx.conn, id, file_name) else {
            return Ok(VerdictOutcome::NothingPending);
        };
        let p = self.pending.remove(uid).expect("selected from the set");
        let mut outcome = VerdictOutcome::Applied;
        if verdict == Verdict::Accept {
            self.quota_allows(id, file_name, p.data.len() as u64)?;
            self.change();
            let key = (*id, file_name.to_owned());
            if self.files.get(&key).is_some_and(|f| f.verified) {
                outcome = VerdictOutcome::Replaced;
            }
            self.files.insert(
                (*id, file_name.to_owned()),
                StoredFile {
                    bytes: p.data.clone(),
                    verified: true,
                },
            );
            if let Some(batch) = self.batch.as_mut() {
                batch.accepted.push((uid, p));
            }
        }
        Ok(outcome)
    }

    fn has_pending(&self, conn: ConnId) -> bool {
        self.pending.has_conn(conn)
    }

    fn connection_closed(&mut self, cx: Ctx) {
        self.pending.orphan(cx.conn, cx.now);
    }

    fn uncommitted(&self) -> bool {
        self.batch.is_some()
    }

    fn commit(&mut self, now: Instant) -> Commit {
        let Some(batch) = self.batch.take() else {
            return Commit::default();
        };
        self.commits += 1;
        if self.fail_commit {
            self.clients = batch.clients;
            self.files = batch.files;
            self.quotas = batch.quotas;
            for (uid, p) in batch.accepted {
                self.pending.restore(uid, p, now);
            }
            return Commit {
                batch: 0,
                error: Some(StoreError::database("commit", "disk I/O error (injected)")),
                failed: Vec::new(),
                refused: Vec::new(),
            };
        }
        let failed = std::mem::take(&mut self.fail_commit_for);
        let refuse = std::mem::take(&mut self.refuse_commit_for);
        let mut refused = Vec::new();
        for (uid, p) in batch.accepted {
            let refusal = refuse.iter().find(|(c, _)| *c == p.conn);
            if let Some((_, error)) = refusal {
                let key = (p.client, p.file_name.clone());
                match batch.files.get(&key) {
                    Some(old) => self.files.insert(key, old.clone()),
                    None => self.files.remove(&key),
                };
                refused.push(CommitRefusal {
                    conn: p.conn,
                    client_id: p.client,
                    error: error.clone(),
                });
                continue;
            }
            if failed.contains(&p.conn) {
                // Not placed: the old file (if any) stays, the upload
                // waits for a retried 1029.
                let key = (p.client, p.file_name.clone());
                match batch.files.get(&key) {
                    Some(old) => self.files.insert(key, old.clone()),
                    None => self.files.remove(&key),
                };
                self.pending.restore(uid, p, now);
            }
        }
        Commit {
            batch: 0,
            error: None,
            failed,
            refused,
        }
    }

    fn prepare(&mut self, cx: Ctx, lookups: &[Lookup<'_>]) -> Readiness {
        if !self.remote {
            return Readiness::Ready;
        }
        let keys: Vec<LookupKey> = lookups
            .iter()
            .map(LookupKey::from)
            .filter(|k| !self.fresh.contains(&(cx.conn, k.clone())))
            .collect();
        if keys.is_empty() {
            return Readiness::Ready;
        }
        self.awaiting.push((cx.conn, keys));
        Readiness::Pending
    }

    fn take_ready(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.ready)
    }

    fn batch(&self) -> u64 {
        if self.remote {
            self.batch_no
        } else {
            0
        }
    }

    fn begin_commit(&mut self, now: Instant) -> Option<Commit> {
        if !self.remote {
            return Some(self.commit(now));
        }
        let Some(batch) = self.batch.take() else {
            // Nothing to make durable: done at once.
            return Some(Commit {
                batch: self.batch_no - 1,
                ..Commit::default()
            });
        };
        self.in_flight = Some((self.batch_no, batch));
        self.batch_no += 1;
        None
    }

    fn poll_commit(&mut self) -> Option<Commit> {
        self.finished.take()
    }

    fn housekeeping(&mut self, now: Instant, wall: SystemTime) {
        self.wall = Some(wall);
        for uid in self.pending.expired(now) {
            self.pending.remove(uid);
        }
    }

    fn forget_client(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        delete_files: bool,
    ) -> Result<Forgotten, StoreError> {
        self.db()?;
        let names: Vec<(String, bool)> = self
            .files
            .iter()
            .filter(|((c, _), _)| c == id)
            .map(|((_, n), f)| (n.clone(), f.verified))
            .collect();
        if !self.clients.contains_key(id) && names.is_empty() {
            return Err(StoreError::NotFound {
                op: "forget client",
                what: "no such client",
            });
        }
        self.change();
        let uploads_withdrawn = self.withdraw(id, None);
        let name = self.clients.remove(id).map(|c| c.name);
        self.quotas.remove(id);
        let stored = names.into_iter().filter(|(_, v)| *v).map(|(n, _)| n);
        let mut done = Forgotten {
            name,
            uploads_withdrawn,
            ..Forgotten::default()
        };
        if delete_files {
            self.files.retain(|(c, _), _| c != id);
            done.files_deleted = stored.collect();
        } else {
            done.files_kept = stored.collect();
        }
        Ok(done)
    }

    fn delete_file(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        file_name: &str,
    ) -> Result<Deleted, StoreError> {
        self.db()?;
        self.change();
        let uploads_withdrawn = self.withdraw(id, Some(file_name));
        let had_record = self.files.remove(&(*id, file_name.to_owned())).is_some();
        if !had_record && uploads_withdrawn == 0 {
            return Err(StoreError::NotFound {
                op: "delete file",
                what: "no such file",
            });
        }
        Ok(Deleted {
            had_record,
            uploads_withdrawn,
        })
    }

    fn set_quota(
        &mut self,
        _cx: Ctx,
        id: &ClientId,
        quota: QuotaOverride,
    ) -> Result<(), StoreError> {
        self.client_mut(id)?;
        if quota.is_default() {
            self.quotas.remove(id);
        } else {
            self.quotas.insert(*id, quota);
        }
        Ok(())
    }
}
