//! [`MemoryStore`]: a [`Store`] held in memory, for pair tests, fuzzing and
//! anything else that needs a server without a disk. It follows the same
//! rules as the server's disk store (PROTOCOL.md §6 "storage").

use std::collections::BTreeMap;

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
}

#[derive(Debug)]
struct PendingUpload {
    upload: MemoryUpload,
    orphaned: bool,
}

/// Records, files and pending uploads in memory. Set `fail_writes` to make
/// every upload write fail (a full disk), `fail_db` to make every record
/// operation fail (a broken database).
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Clients by id.
    pub clients: BTreeMap<ClientId, ClientRecord>,
    /// Files by (client, base name): the final paths.
    pub files: BTreeMap<(ClientId, String), StoredFile>,
    pending: BTreeMap<UploadId, PendingUpload>,
    next_upload: UploadId,
    /// Uploads begun and not yet finished or aborted.
    pub open_uploads: usize,
    /// Make `write_upload` fail.
    pub fail_writes: bool,
    /// Make record operations fail.
    pub fail_db: bool,
    /// Number of `touch` calls (LastSeen updates).
    pub touches: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uploads awaiting a verdict.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Pending uploads whose connection closed.
    pub fn orphan_count(&self) -> usize {
        self.pending.values().filter(|p| p.orphaned).count()
    }

    fn db(&self) -> Result<(), StoreError> {
        if self.fail_db {
            Err(StoreError::new("database unavailable (injected)"))
        } else {
            Ok(())
        }
    }

    fn client_mut(&mut self, id: &ClientId) -> Result<&mut ClientRecord, StoreError> {
        self.db()?;
        self.clients
            .get_mut(id)
            .ok_or_else(|| StoreError::new("no such client"))
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
        id: &ClientId,
        name: &str,
        replace: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        self.db()?;
        if let Some(old) = replace {
            self.clients.remove(old);
        }
        if self.clients.values().any(|c| c.name == name) || self.clients.contains_key(id) {
            return Err(StoreError::new("UNIQUE constraint failed"));
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
        id: &ClientId,
        public_key: &[u8; PUBLIC_KEY_LEN],
        aes_key: &AesKey,
    ) -> Result<(), StoreError> {
        let c = self.client_mut(id)?;
        c.public_key = Some(Box::new(*public_key));
        c.last_key = Some(aes_key.clone());
        Ok(())
    }

    fn set_last_key(&mut self, id: &ClientId, aes_key: &AesKey) -> Result<(), StoreError> {
        self.client_mut(id)?.last_key = Some(aes_key.clone());
        Ok(())
    }

    fn touch(&mut self, id: &ClientId) -> Result<(), StoreError> {
        self.client_mut(id)?;
        self.touches += 1;
        Ok(())
    }

    fn begin_upload(
        &mut self,
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
        })
    }

    fn write_upload(
        &mut self,
        upload: &mut MemoryUpload,
        plaintext: &[u8],
    ) -> Result<(), StoreError> {
        if self.fail_writes {
            return Err(StoreError::new("No space left on device (injected)"));
        }
        upload.bytes.extend_from_slice(plaintext);
        Ok(())
    }

    fn finish_upload(
        &mut self,
        upload: MemoryUpload,
        _summary: &UploadSummary,
    ) -> Result<UploadId, StoreError> {
        self.open_uploads -= 1;
        self.db()?;
        self.next_upload += 1;
        let key = (upload.client_id, upload.file_name.clone());
        self.files.entry(key).or_insert_with(|| StoredFile {
            bytes: Vec::new(),
            verified: false,
        });
        self.pending.insert(
            self.next_upload,
            PendingUpload {
                upload,
                orphaned: false,
            },
        );
        Ok(self.next_upload)
    }

    fn abort_upload(&mut self, _upload: MemoryUpload) {
        self.open_uploads -= 1;
    }

    fn apply_verdict(
        &mut self,
        id: &ClientId,
        file_name: &str,
        prefer: Option<UploadId>,
        verdict: Verdict,
    ) -> Result<VerdictOutcome, StoreError> {
        self.db()?;
        let matches =
            |p: &PendingUpload| p.upload.client_id == *id && p.upload.file_name == file_name;
        let chosen = prefer
            .filter(|u| self.pending.get(u).is_some_and(matches))
            .or_else(|| {
                self.pending
                    .iter()
                    .rev()
                    .find(|(_, p)| matches(p))
                    .map(|(k, _)| *k)
            });
        let Some(key) = chosen else {
            return Ok(VerdictOutcome::NothingPending);
        };
        let p = self.pending.remove(&key).expect("chosen from the map");
        if verdict == Verdict::Accept {
            self.files.insert(
                (*id, file_name.to_owned()),
                StoredFile {
                    bytes: p.upload.bytes,
                    verified: true,
                },
            );
        }
        Ok(VerdictOutcome::Applied)
    }

    fn discard_upload(&mut self, upload: UploadId) {
        self.pending.remove(&upload);
    }

    fn orphan_uploads(&mut self, uploads: &[UploadId]) {
        for u in uploads {
            if let Some(p) = self.pending.get_mut(u) {
                p.orphaned = true;
            }
        }
    }
}
