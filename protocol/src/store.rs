//! What a server session needs from storage, as a trait.
//!
//! The session decides everything the protocol decides (which response,
//! which key, which upload a verdict applies to); a [`Store`] only keeps
//! records and bytes. The server implements it over SQLite and the
//! filesystem; [`crate::memstore::MemoryStore`] implements it in memory
//! for tests and fuzzing. Every method may fail with a [`StoreError`],
//! which the session answers with 2107 while keeping the connection open
//! (§3: a database or disk error).

use std::fmt;

use crate::consts::PUBLIC_KEY_LEN;
use crate::crypto::AesKey;
use crate::wire::ClientId;

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
    /// No upload of that name awaits a verdict for that client.
    NothingPending,
}

/// A storage failure: a database or filesystem error, a full disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// What failed, for the log. Never contains key material or file content.
    pub message: String,
}

impl StoreError {
    /// An error with a message for the log.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

/// Storage behind a server session. Calls come from one thread; each call
/// is expected to finish quickly (the server runs one event loop).
pub trait Store {
    /// An upload being received: the server's temporary file.
    type Upload;

    /// The client with this id, if any.
    fn client_by_id(&mut self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError>;

    /// The client with this name, if any.
    fn client_by_name(&mut self, name: &str) -> Result<Option<ClientRecord>, StoreError>;

    /// Records a new client. If `replace` is given, that client (one that
    /// never sent a public key, §3) is deleted in the same transaction.
    fn register_client(
        &mut self,
        id: &ClientId,
        name: &str,
        replace: Option<&ClientId>,
    ) -> Result<(), StoreError>;

    /// Records the client's public key and the AES key sent in 2102.
    fn set_public_key(
        &mut self,
        id: &ClientId,
        public_key: &[u8; PUBLIC_KEY_LEN],
        aes_key: &AesKey,
    ) -> Result<(), StoreError>;

    /// Records the AES key sent in 2105 as the client's last key.
    fn set_last_key(&mut self, id: &ClientId, aes_key: &AesKey) -> Result<(), StoreError>;

    /// Updates LastSeen for a known client (§6: on every request).
    fn touch(&mut self, id: &ClientId) -> Result<(), StoreError>;

    /// Starts receiving `file_name` (already reduced to a safe base name)
    /// for a client. Nothing may appear at the final path yet (§6).
    fn begin_upload(
        &mut self,
        id: &ClientId,
        file_name: &str,
        content_size: u32,
    ) -> Result<Self::Upload, StoreError>;

    /// Appends decrypted bytes to an upload.
    fn write_upload(
        &mut self,
        upload: &mut Self::Upload,
        plaintext: &[u8],
    ) -> Result<(), StoreError>;

    /// The upload is complete and its padding checked: keep it awaiting a
    /// verdict and return its handle.
    fn finish_upload(
        &mut self,
        upload: Self::Upload,
        summary: &UploadSummary,
    ) -> Result<UploadId, StoreError>;

    /// Throws away an upload that did not complete (bad padding, a write
    /// error, a connection lost mid-file).
    fn abort_upload(&mut self, upload: Self::Upload);

    /// Applies a verdict to the client's upload of `file_name`: the one
    /// named by `prefer` (this connection's) when it is still pending,
    /// else the newest pending one of that name from any connection (§1:
    /// a client may use a new connection per step). Accepting makes the
    /// file durable at its final path and marks it Verified before the
    /// answer reaches the client: before returning, or, in a store that
    /// groups syncs (the server's group commit), before its driver
    /// releases the answer; nothing earlier is damaged if it fails.
    fn apply_verdict(
        &mut self,
        id: &ClientId,
        file_name: &str,
        prefer: Option<UploadId>,
        verdict: Verdict,
    ) -> Result<VerdictOutcome, StoreError>;

    /// Throws away one pending upload (a connection holding too many).
    fn discard_upload(&mut self, upload: UploadId);

    /// The connection that produced these pending uploads closed; the store
    /// keeps them for a while (a verdict may come on another connection)
    /// and then throws them away.
    fn orphan_uploads(&mut self, uploads: &[UploadId]);
}
