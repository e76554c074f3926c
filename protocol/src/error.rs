//! Errors of the decoders and the server session, as small enums whose
//! variants say what happened. Which wire answer each one gets is decided
//! in one place, [`crate::server::answer_to`]; this module depends on no
//! other module of the crate but crypto's error type.

use std::fmt;

use crate::crypto::CryptoError;
use crate::packets::PacketError;

/// A frame that cannot be decoded. Framing is lost after any of these, so
/// the server answers 2107 and closes (§3), except for [`Truncated`]
/// where the peer is already gone.
///
/// [`Truncated`]: DecodeError::Truncated
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The header carries a code this revision does not have.
    UnknownCode {
        /// The code received.
        code: u16,
    },
    /// payload_size is not the one the code requires (§2 table).
    BadPayloadSize {
        /// The code received.
        code: u16,
        /// The payload_size received.
        got: u32,
        /// The payload_size that code requires.
        expected: u32,
    },
    /// A 1028 whose content_size is zero, not a multiple of 16, or not
    /// payload_size - 259 (§2).
    BadContentSize {
        /// content_size as received (0 if the payload is too short to hold it).
        content_size: u32,
        /// payload_size as received.
        payload_size: u32,
    },
    /// A 1028 larger than the receiver is configured to accept.
    ContentTooLarge {
        /// content_size as declared by the header.
        content_size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A 255-byte string field with no NUL (§1).
    NameWithoutNul,
    /// A 2022c payload whose repeated client id differs from the header's.
    IdMismatch,
    /// The stream ended in the middle of a frame.
    Truncated,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownCode { code } => write!(f, "unknown code {code}"),
            DecodeError::BadPayloadSize {
                code,
                got,
                expected,
            } => write!(
                f,
                "code {code} with payload_size {got}, the protocol requires {expected}"
            ),
            DecodeError::BadContentSize {
                content_size,
                payload_size,
            } => write!(
                f,
                "file with content_size {content_size} and payload_size {payload_size}: \
                 content_size must be a non-zero multiple of 16 equal to payload_size - 259"
            ),
            DecodeError::ContentTooLarge {
                content_size,
                limit,
            } => write!(
                f,
                "file of {content_size} encrypted bytes exceeds the limit of {limit}"
            ),
            DecodeError::NameWithoutNul => f.write_str("name field without a NUL terminator"),
            DecodeError::IdMismatch => {
                f.write_str("client id in the payload differs from the header's")
            }
            DecodeError::Truncated => f.write_str("stream ended inside a frame"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a 1025 was refused with 2101.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationError {
    /// The name is empty or not printable ASCII.
    NameUnusable,
    /// A client that completed key exchange holds the name (§3).
    NameTaken,
}

impl fmt::Display for RegistrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegistrationError::NameUnusable => "name is empty or not printable ASCII",
            RegistrationError::NameTaken => "name belongs to a client with a key",
        })
    }
}

/// Why a 1027 was refused with 2106.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectError {
    /// No client has that id.
    UnknownClient,
    /// The name is not the one registered for the id.
    NameMismatch,
    /// The client never completed key exchange.
    NoPublicKey,
    /// The stored public key no longer parses.
    StoredKeyUnusable,
}

impl fmt::Display for ReconnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReconnectError::UnknownClient => "unknown client id",
            ReconnectError::NameMismatch => "name does not match the registered one",
            ReconnectError::NoPublicKey => "client never sent a public key",
            ReconnectError::StoredKeyUnusable => "stored public key is unusable",
        })
    }
}

/// What became of the stored key after a 1028 under it failed its padding
/// check (the padding-oracle defence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKey {
    /// The key was this connection's own (exchanged on it): kept.
    NotUsed,
    /// The stored key was replaced by a random one.
    Retired,
    /// Replacing it failed (a storage error).
    RetireFailed,
}

/// Why a well-formed request was refused with 2107 while the connection
/// stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No client has the header's id.
    UnknownClient,
    /// The name is not the one registered for the id.
    NameMismatch,
    /// The 1026 public key is not a usable RSA-1024 key.
    PublicKeyRefused(CryptoError),
    /// Encrypting the AES key for the client failed.
    KeyEncryption(CryptoError),
    /// No AES key was ever exchanged for the client.
    NoKey,
    /// The 1028 file name is empty, `.`, `..` or has control or non-ASCII
    /// bytes.
    UnusableFileName,
    /// The verdict's file name cannot be a stored name.
    UnusableVerdictName,
    /// The content's PKCS#7 padding is wrong after decryption (a wrong
    /// key, or a probe for a padding oracle).
    BadPadding(StoredKey),
    /// A verdict (1029, 1031) found no upload awaiting it.
    NothingPending,
    /// A 2024 packet that does not fit its upload (order, total, name,
    /// sizes); the partial upload is dropped.
    Packet(PacketError),
    /// Eight random ids in a row were taken.
    NoFreeClientId,
    /// The upload would take the client over its quota (the most bytes
    /// or files one client may keep); nothing of it is stored.
    OverQuota(QuotaExceeded),
    /// Storage failed.
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    /// A store's quota refusal becomes [`Refusal::OverQuota`]; every
    /// other storage error [`Refusal::Store`].
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::OverQuota(q) => Refusal::OverQuota(q),
            e => Refusal::Store(e),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BAD_PADDING: &str = "bad PKCS#7 padding after decryption (wrong key?)";
        match self {
            Refusal::UnknownClient => f.write_str("unknown client id"),
            Refusal::NameMismatch => f.write_str("name does not match the registered one"),
            Refusal::PublicKeyRefused(e) => write!(f, "public key refused: {e}"),
            Refusal::KeyEncryption(e) => write!(f, "RSA encryption failed: {e}"),
            Refusal::NoKey => f.write_str("no key exchanged for this client"),
            Refusal::UnusableFileName => {
                f.write_str("file name is empty, '.', '..' or has control or non-ASCII bytes")
            }
            Refusal::UnusableVerdictName => f.write_str("unusable file name"),
            Refusal::BadPadding(StoredKey::NotUsed) => f.write_str(BAD_PADDING),
            Refusal::BadPadding(StoredKey::Retired) => {
                write!(
                    f,
                    "{BAD_PADDING} under the stored key; the stored key was retired"
                )
            }
            Refusal::BadPadding(StoredKey::RetireFailed) => write!(
                f,
                "{BAD_PADDING} under the stored key; retiring the stored key failed"
            ),
            Refusal::NothingPending => f.write_str("no upload of that name awaits a verdict"),
            Refusal::Packet(e) => write!(f, "file packet refused: {e}"),
            Refusal::NoFreeClientId => f.write_str("could not draw an unused client id"),
            Refusal::OverQuota(q) => q.fmt(f),
            Refusal::Store(e) => e.fmt(f),
        }
    }
}

/// Everything a server session can meet that is not the answer a request
/// asked for. [`crate::server::answer_to`] maps each to its wire answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// 1025 refused: 2101.
    Registration(RegistrationError),
    /// 1027 refused: 2106.
    Reconnect(ReconnectError),
    /// A request refused: 2107, the connection stays.
    Refused(Refusal),
    /// A frame that cannot be decoded: 2107 and close (framing is lost),
    /// or only close if the stream ended inside it.
    Decode(DecodeError),
    /// Answers already produced acknowledged changes the store could not
    /// make durable: they are withdrawn, 2107 and close.
    NotDurable,
}

impl From<Refusal> for SessionError {
    fn from(r: Refusal) -> Self {
        SessionError::Refused(r)
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        SessionError::Refused(e.into())
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Registration(e) => e.fmt(f),
            SessionError::Reconnect(e) => e.fmt(f),
            SessionError::Refused(e) => e.fmt(f),
            SessionError::Decode(e) => e.fmt(f),
            SessionError::NotDurable => f.write_str("storage could not make the answers durable"),
        }
    }
}

impl std::error::Error for SessionError {}

/// A storage failure. The session answers it with 2107 and keeps the
/// connection (§3: a database or disk error). No variant carries key
/// material or file content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A database operation failed.
    Database {
        /// The operation ("register client", "commit", ...).
        op: String,
        /// The engine's message (names tables and constraints, never
        /// bound values).
        detail: String,
    },
    /// A filesystem operation failed.
    Files {
        /// The operation ("write upload", `accept <client> <name>`, ...).
        op: String,
        /// The kind of the I/O error.
        kind: std::io::ErrorKind,
        /// The I/O error as the system describes it.
        detail: String,
    },
    /// The record the operation needs does not exist.
    NotFound {
        /// The operation.
        op: &'static str,
        /// What is missing ("no such client", "not pending").
        what: &'static str,
    },
    /// Every slot for uploads awaiting a verdict holds a live upload of
    /// another client (the server-wide cap).
    PendingFull {
        /// The cap.
        cap: usize,
    },
    /// Data failed a consistency check (a path that is not UTF-8, a size
    /// that disagrees, a name that could leave its folder, a schema this
    /// program does not know, a data directory in use).
    Invalid(String),
    /// Keeping the upload would take its client over its quota.
    OverQuota(QuotaExceeded),
    /// An administrator removed what the operation works on while it was
    /// in progress (the client was forgotten, the file deleted).
    Withdrawn {
        /// What was removed ("the client was forgotten", ...).
        why: &'static str,
    },
}

/// Which of a client's quota limits an upload would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaLimit {
    /// The most bytes the client's stored files may add up to.
    Bytes,
    /// The most files the client may keep.
    Files,
}

/// An upload that would take its client over a quota limit: what the
/// client would keep with it, and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// The limit exceeded.
    pub limit: QuotaLimit,
    /// Its value.
    pub max: u64,
    /// What the client would keep (bytes or files) with the upload.
    pub would_be: u64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.limit {
            QuotaLimit::Bytes => "bytes",
            QuotaLimit::Files => "files",
        };
        write!(
            f,
            "over quota: the client would keep {} {what}, its limit is {}",
            self.would_be, self.max
        )
    }
}

impl StoreError {
    /// A database failure of `op`.
    pub fn database(op: impl Into<String>, detail: impl fmt::Display) -> StoreError {
        StoreError::Database {
            op: op.into(),
            detail: detail.to_string(),
        }
    }

    /// A filesystem failure of `op`.
    pub fn files(op: impl Into<String>, e: &std::io::Error) -> StoreError {
        StoreError::Files {
            op: op.into(),
            kind: e.kind(),
            detail: e.to_string(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Database { op, detail } => write!(f, "database: {op}: {detail}"),
            StoreError::Files { op, detail, .. } => write!(f, "files: {op}: {detail}"),
            StoreError::NotFound { op, what } => write!(f, "{op}: {what}"),
            StoreError::PendingFull { cap } => write!(
                f,
                "{cap} uploads of other clients await a verdict (server-wide limit)"
            ),
            StoreError::Invalid(message) => f.write_str(message),
            StoreError::OverQuota(q) => q.fmt(f),
            StoreError::Withdrawn { why } => write!(f, "withdrawn by an administrator: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}
