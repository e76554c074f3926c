//! The client side of a session (PROTOCOL.md §6), as a sans-IO state machine.
//!
//! [`ClientSession`] decides every request and every reaction; a driver
//! owns the socket, the file, the clock and the operating system's random
//! generator. The driving contract, in the quinn-proto / rustls style:
//!
//! 1. Drain [`ClientSession::poll_event`] (things to tell the user) and
//!    carry out [`ClientSession::poll_action`] until it returns `None` or
//!    [`Action::Done`]:
//!    * [`Action::Connect`]: close the current connection (if any), wait
//!      `delay`, open a new one, then call
//!      [`handle_connected`](ClientSession::handle_connected) or, if that
//!      failed, [`handle_connection_lost`](ClientSession::handle_connection_lost).
//!    * [`Action::Send`]: write the bytes.
//!    * [`Action::SendFile`]: write [`FileUpload::header`], then stream the
//!      file through [`FileUpload::sender`] and write what it produces; then
//!      call [`handle_file_sent`](ClientSession::handle_file_sent) with the
//!      cksum [`FileSender::finish`] returned.
//!    * [`Action::GenerateKeyPair`]: make an RSA-1024 key pair with e = 17
//!      (or load a fixed one) and call
//!      [`handle_key_pair`](ClientSession::handle_key_pair).
//! 2. On `None`, read one response: feed it to
//!    [`handle_response`](ClientSession::handle_response), a frame that
//!    cannot be decoded to [`handle_decode_error`](ClientSession::handle_decode_error),
//!    and a closed, reset or timed-out connection (or a failed write) to
//!    [`handle_connection_lost`](ClientSession::handle_connection_lost).
//! 3. Repeat until [`Action::Done`] gives the [`Outcome`].
//!
//! When [`Event::KeyExchanged`] comes out, the driver persists
//! [`ClientSession::identity`] (`me.info`, `priv.key`, §7): only then does
//! the client hold a working key.
//!
//! Retries (§6): a 2107 or a lost connection makes the session reopen the
//! connection and send the same request again, at most
//! [`MAX_ERROR_RETRIES`] times per request; the count starts over after
//! every expected response. The session never panics on anything the
//! server sends: an unexpected response ends it with
//! [`Outcome::ProtocolViolation`].

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::cksum::Cksum;
use crate::consts::{
    CLIENT_NAME_MAX, ENCRYPTED_KEY_LEN, MAX_ERROR_RETRIES, MAX_PLAINTEXT_SIZE, MAX_SENDS,
};
use crate::crypto::{encrypted_len, AesKey, CbcEncryptor, CryptoError, Entropy, RsaPrivateKey};
use crate::error::DecodeError;
use crate::message::{encode_file_header, Request, RequestKind, Response, ResponseKind, Revision};
use crate::wire::{sanitize_file_name, ClientId, FixedName, NameError};

/// How long a driver waits before reopening a connection after a 2107 or a
/// lost connection: long enough not to hammer a struggling server, short
/// enough that three retries cost well under a second (the reference peer
/// uses the same 0.2 s).
pub const RETRY_DELAY: Duration = Duration::from_millis(200);

/// A client's saved credentials: what `me.info` holds (§7).
pub struct Identity {
    /// The name the client registered with.
    pub name: String,
    /// The id issued in 2100.
    pub client_id: ClientId,
    /// The client's RSA private key.
    pub key: RsaPrivateKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// What a session needs to start.
#[derive(Debug)]
pub struct ClientConfig {
    /// Protocol revision (§9).
    pub revision: Revision,
    /// The name to register with (1025), 1 to [`CLIENT_NAME_MAX`] printable
    /// ASCII characters (§7).
    pub name: String,
    /// The base name of the file, sent in 1028-1031 (§2).
    pub file_name: String,
    /// The file's plaintext length, at most [`MAX_PLAINTEXT_SIZE`].
    pub plain_len: u64,
    /// Saved credentials from `me.info`: present means reconnect (1027).
    pub identity: Option<Identity>,
}

/// Why a [`ClientConfig`] cannot start a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The client name is empty, longer than [`CLIENT_NAME_MAX`], or not
    /// printable ASCII (§7).
    BadName {
        /// Its length in bytes.
        len: usize,
    },
    /// The name in `me.info` does not fit a name field.
    BadSavedName(NameError),
    /// The file's base name is empty, `.`, `..`, longer than 254 bytes, or
    /// has control or non-ASCII bytes: a server would refuse it (§2).
    BadFileName,
    /// The file is larger than the protocol can carry (§2).
    FileTooLarge {
        /// The file's length.
        len: u64,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadName { len } => write!(
                f,
                "client name must be 1 to {CLIENT_NAME_MAX} printable ASCII characters \
                 (got {len} bytes)"
            ),
            ConfigError::BadSavedName(e) => write!(f, "name in me.info is unusable: {e}"),
            ConfigError::BadFileName => f.write_str(
                "file name must be 1 to 254 printable ASCII characters and not `.` or `..`",
            ),
            ConfigError::FileTooLarge { len } => write!(
                f,
                "file is {len} bytes; the protocol carries at most {MAX_PLAINTEXT_SIZE} bytes"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Checks a client name (§7: 1 to 100 characters; §3: printable ASCII,
/// else the server answers 2101) and builds its name field.
pub fn client_name_field(name: &str) -> Result<FixedName, ConfigError> {
    let bad = ConfigError::BadName { len: name.len() };
    let printable = name.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if name.is_empty() || name.len() > CLIENT_NAME_MAX || !printable {
        return Err(bad);
    }
    FixedName::new(name.as_bytes()).map_err(|_| bad)
}

/// Checks a file's base name the way a server will (§2) and builds its
/// name field.
pub fn file_name_field(file_name: &str) -> Result<FixedName, ConfigError> {
    if sanitize_file_name(file_name.as_bytes()) != Some(file_name) {
        return Err(ConfigError::BadFileName);
    }
    FixedName::new(file_name.as_bytes()).map_err(|_| ConfigError::BadFileName)
}

/// The next thing the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Close the current connection if any, wait `delay`, and open a new
    /// one; report with `handle_connected` or `handle_connection_lost`.
    Connect {
        /// Zero for the first connection, [`RETRY_DELAY`] for a retry.
        delay: Duration,
    },
    /// Write these request bytes (one or more complete frames).
    Send(Vec<u8>),
    /// Send the file (a 1028); report with `handle_file_sent`.
    SendFile(Box<FileUpload>),
    /// Generate (or load) an RSA key pair; report with `handle_key_pair`.
    GenerateKeyPair,
    /// The session is over. Returned again on every later poll.
    Done(Outcome),
}

/// One send of the file: a 1028 frame whose content the driver streams.
#[derive(Debug)]
pub struct FileUpload {
    /// Send number, 1 to [`MAX_SENDS`] (§6); a retry after 2107 or a lost
    /// connection keeps the number.
    pub attempt: u32,
    /// The 23-byte header and the 259-byte prefix (content_size, file_name).
    pub header: Vec<u8>,
    /// Plaintext length the header declares.
    pub plain_len: u64,
    /// Encrypted length the header declares (content_size).
    pub content_size: u32,
    /// Turns the plaintext into the content and computes its cksum.
    pub sender: FileSender,
}

/// Encrypts a file's plaintext (AES-128-CBC, zero IV, PKCS#7, §4) and
/// computes its cksum (§5) in one pass, checking that exactly the declared
/// number of bytes goes through.
pub struct FileSender {
    encryptor: CbcEncryptor,
    cksum: Cksum,
    declared: u64,
}

/// The file did not hold the number of bytes announced in the 1028 header:
/// it grew or shrank while being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSizeChanged {
    /// The length the header declared.
    pub declared: u64,
    /// The length seen so far (for growth: at least declared + 1).
    pub seen: u64,
}

impl fmt::Display for FileSizeChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "file changed size while being sent: {} bytes announced, {} read",
            self.declared, self.seen
        )
    }
}

impl std::error::Error for FileSizeChanged {}

impl FileSender {
    fn new(key: &AesKey, declared: u64) -> Self {
        FileSender {
            encryptor: CbcEncryptor::new(key),
            cksum: Cksum::new(),
            declared,
        }
    }

    /// Encrypts the next piece of plaintext, appending ciphertext to `out`.
    /// Refuses bytes beyond the declared length (the file grew).
    pub fn push(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), FileSizeChanged> {
        let seen = self.cksum.len() + plain.len() as u64;
        if seen > self.declared {
            return Err(FileSizeChanged {
                declared: self.declared,
                seen,
            });
        }
        self.cksum.update(plain);
        self.encryptor.update(plain, out);
        Ok(())
    }

    /// Like [`FileSender::push`], but encrypts `buf` in place (no copy)
    /// and returns `Ok(true)`, when it holds whole blocks and nothing is
    /// carried over from earlier input; otherwise returns `Ok(false)` and
    /// leaves `buf` alone, so the caller uses `push`.
    pub fn push_in_place(&mut self, buf: &mut [u8]) -> Result<bool, FileSizeChanged> {
        let seen = self.cksum.len() + buf.len() as u64;
        if seen > self.declared {
            return Err(FileSizeChanged {
                declared: self.declared,
                seen,
            });
        }
        if !self.encryptor.can_update_in_place(buf.len()) {
            return Ok(false);
        }
        self.cksum.update(buf);
        Ok(self.encryptor.update_in_place(buf))
    }

    /// Plaintext bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.declared - self.cksum.len()
    }

    /// Appends the last (padded) block to `out` and returns the cksum of
    /// the plaintext. Refuses a short file (it shrank).
    pub fn finish(self, out: &mut Vec<u8>) -> Result<u32, FileSizeChanged> {
        if self.cksum.len() != self.declared {
            return Err(FileSizeChanged {
                declared: self.declared,
                seen: self.cksum.len(),
            });
        }
        self.encryptor.finish(out);
        Ok(self.cksum.finish())
    }
}

impl fmt::Debug for FileSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSender")
            .field("declared", &self.declared)
            .field("done", &self.cksum.len())
            .finish_non_exhaustive()
    }
}

/// Something to tell the user; the session works the same whether or not
/// anyone listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// 2100: the server issued an id.
    Registered {
        /// The new id.
        client_id: ClientId,
    },
    /// 2102: the key exchange succeeded; persist [`ClientSession::identity`] now (§7).
    KeyExchanged {
        /// The client's id.
        client_id: ClientId,
    },
    /// 2105: the server knows us and sent a new AES key.
    Reconnected {
        /// The client's id.
        client_id: ClientId,
    },
    /// 2106: the server does not know us; registering as a new client.
    ReconnectDenied,
    /// A send of the file begins.
    AttemptStarted {
        /// Send number, 1 to `of`.
        attempt: u32,
        /// [`MAX_SENDS`].
        of: u32,
    },
    /// 2107 "server responded with an error": retrying the same request.
    ServerError {
        /// Retry number, 1 to `of`.
        retry: u32,
        /// [`MAX_ERROR_RETRIES`].
        of: u32,
    },
    /// The connection failed, closed or timed out: reconnecting to retry.
    ConnectionLost {
        /// Retry number, 1 to `of`.
        retry: u32,
        /// [`MAX_ERROR_RETRIES`].
        of: u32,
    },
    /// A 2104 arrived while awaiting the 2103 of a resend and was skipped
    /// (§3: some servers answer 1030).
    StrayAckSkipped,
    /// The server's cksum differs from ours.
    CrcMismatch {
        /// Send number.
        attempt: u32,
        /// The server's value (2103).
        server: u32,
        /// Ours.
        local: u32,
    },
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2104 after 1029: the file is stored and verified.
    Verified {
        /// Sends it took (1 to [`MAX_SENDS`]).
        attempts: u32,
        /// The agreed cksum.
        cksum: u32,
    },
    /// Four mismatches; 1031 was sent and acknowledged (§6).
    CrcFailed {
        /// Sends made ([`MAX_SENDS`]).
        attempts: u32,
        /// The server's last cksum.
        server: u32,
        /// Ours.
        local: u32,
    },
    /// 2101: the server refused the registration.
    RegistrationFailed {
        /// True if we registered because the server denied a reconnect (2106).
        after_denied_reconnect: bool,
    },
    /// 2107 on the first try and on every retry of one request.
    ServerError {
        /// The request the server kept refusing.
        request: RequestKind,
    },
    /// The connection failed on the first try and on every retry of one
    /// request (the last failure was a connection problem, not a 2107).
    ConnectionFailed {
        /// The request that could not get through.
        request: RequestKind,
    },
    /// The server broke the protocol.
    ProtocolViolation(Violation),
}

impl Outcome {
    /// True for [`Outcome::Verified`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Verified { .. })
    }

    /// A stable snake_case name for scripts (`--json`).
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Verified { .. } => "verified",
            Outcome::CrcFailed { .. } => "crc_failed",
            Outcome::RegistrationFailed { .. } => "registration_failed",
            Outcome::ServerError { .. } => "server_error",
            Outcome::ConnectionFailed { .. } => "network_error",
            Outcome::ProtocolViolation(_) => "protocol_error",
        }
    }
}

/// A response the protocol does not allow at that point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A response of the wrong kind for the request sent.
    Unexpected {
        /// What the session was waiting for.
        awaiting: &'static str,
        /// What came.
        got: ResponseKind,
    },
    /// A response carrying another client's id.
    WrongClientId {
        /// The response.
        response: ResponseKind,
    },
    /// A 2103 whose content_size or file name is not the one we sent.
    BadEcho,
    /// The AES key of a 2102/2105 does not decrypt with our private key.
    UndecryptableKey,
    /// A frame that cannot be decoded.
    Undecodable(DecodeError),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Unexpected { awaiting, got } => {
                write!(f, "unexpected response {got:?} while awaiting {awaiting}")
            }
            Violation::WrongClientId { response } => {
                write!(f, "response {response:?} carries another client's id")
            }
            Violation::BadEcho => f.write_str("2103 does not echo our content_size and file name"),
            Violation::UndecryptableKey => {
                f.write_str("the AES key does not decrypt with our private key")
            }
            Violation::Undecodable(e) => write!(f, "undecodable response: {e}"),
        }
    }
}

/// A key pair the session cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairError(pub CryptoError);

impl fmt::Display for KeyPairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unusable RSA key: {}", self.0)
    }
}

impl std::error::Error for KeyPairError {}

/// What the session awaits; each state names its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 1025 sent: 2100 or 2101.
    Registered,
    /// 2100 received: the driver's key pair.
    KeyPair,
    /// 1026 sent: 2102.
    KeyAccepted,
    /// 1027 sent: 2105 or 2106.
    Reconnect,
    /// 1028 handed to the driver: `handle_file_sent`.
    FileSent { attempt: u32 },
    /// 1028 sent: 2103 (one stray 2104 skipped if `stray_ok`).
    FileReceived {
        attempt: u32,
        local: u32,
        stray_ok: bool,
    },
    /// 1029 sent: 2104.
    CrcOkAck { attempt: u32, cksum: u32 },
    /// 1031 sent: 2104.
    GiveUpAck {
        attempt: u32,
        server: u32,
        local: u32,
    },
    /// Finished.
    Done,
}

impl Expect {
    /// The request this state waits on the answer of (retried as a whole).
    fn request(self) -> RequestKind {
        match self {
            Expect::Registered => RequestKind::Register,
            Expect::KeyPair | Expect::KeyAccepted => RequestKind::PublicKey,
            Expect::Reconnect => RequestKind::Reconnect,
            Expect::FileSent { .. } | Expect::FileReceived { .. } => RequestKind::SendFile,
            Expect::CrcOkAck { .. } => RequestKind::CrcOk,
            Expect::GiveUpAck { .. } | Expect::Done => RequestKind::CrcGiveUp,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Expect::Registered => "2100/2101 after 1025",
            Expect::KeyPair => "a key pair (no response)",
            Expect::KeyAccepted => "2102 after 1026",
            Expect::Reconnect => "2105/2106 after 1027",
            Expect::FileSent { .. } => "the end of the 1028 upload",
            Expect::FileReceived { .. } => "2103 after 1028",
            Expect::CrcOkAck { .. } => "2104 after 1029",
            Expect::GiveUpAck { .. } => "2104 after 1031",
            Expect::Done => "nothing",
        }
    }
}

/// Why a request is being retried.
#[derive(Debug, Clone, Copy)]
enum RetryCause {
    ServerError,
    ConnectionLost,
}

/// The sans-IO client state machine (PROTOCOL.md §6). See the module
/// documentation for the driving contract.
pub struct ClientSession {
    rev: Revision,
    name: String,
    name_field: FixedName,
    file_name: FixedName,
    plain_len: u64,
    content_size: u32,
    /// Saved or newly completed credentials.
    identity: Option<Identity>,
    /// Id issued by 2100, before key exchange completes.
    new_id: ClientId,
    /// Key pair from the driver, before 2102 arrives.
    new_key: Option<RsaPrivateKey>,
    aes: Option<AesKey>,
    expect: Expect,
    link_up: bool,
    retries: u32,
    denied: bool,
    /// Name field of the saved identity, for 1027.
    reconnect_name: Option<FixedName>,
    finished_attempts: u32,
    local_cksum: Option<u32>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    outcome: Option<Outcome>,
}

impl fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSession")
            .field("expect", &self.expect)
            .field("client_id", &self.client_id())
            .field("link_up", &self.link_up)
            .field("retries", &self.retries)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// Checks the configuration and starts a session: its first action is
    /// [`Action::Connect`]. With an identity it reconnects (1027), without
    /// one it registers (1025).
    pub fn new(config: ClientConfig) -> Result<Self, ConfigError> {
        let name_field = client_name_field(&config.name)?;
        let file_name = file_name_field(&config.file_name)?;
        if config.plain_len > MAX_PLAINTEXT_SIZE {
            return Err(ConfigError::FileTooLarge {
                len: config.plain_len,
            });
        }
        let reconnect_name = match &config.identity {
            Some(id) => {
                Some(FixedName::new(id.name.as_bytes()).map_err(ConfigError::BadSavedName)?)
            }
            None => None,
        };
        let expect = match config.identity {
            Some(_) => Expect::Reconnect,
            None => Expect::Registered,
        };
        let content_size = encrypted_len(config.plain_len) as u32;
        let mut actions = VecDeque::new();
        actions.push_back(Action::Connect {
            delay: Duration::ZERO,
        });
        Ok(ClientSession {
            rev: config.revision,
            name: config.name,
            name_field,
            file_name,
            plain_len: config.plain_len,
            content_size,
            identity: config.identity,
            new_id: ClientId::ZERO,
            new_key: None,
            aes: None,
            expect,
            link_up: false,
            retries: 0,
            denied: false,
            reconnect_name,
            finished_attempts: 0,
            local_cksum: None,
            actions,
            events: VecDeque::new(),
            outcome: None,
        })
    }

    /// The next action for the driver; `None` means "read a response".
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(outcome) = &self.outcome {
            if self.actions.is_empty() {
                return Some(Action::Done(outcome.clone()));
            }
        }
        self.actions.pop_front()
    }

    /// The next event for the user, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The outcome, once the session is over.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// The client id: the saved one, or the one issued by 2100.
    pub fn client_id(&self) -> Option<ClientId> {
        match &self.identity {
            Some(id) => Some(id.client_id),
            None if self.new_id != ClientId::ZERO => Some(self.new_id),
            None => None,
        }
    }

    /// The credentials to persist after [`Event::KeyExchanged`] (or the
    /// saved ones a reconnect uses).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Sends of the file started so far (0 to [`MAX_SENDS`]).
    pub fn attempts(&self) -> u32 {
        match self.expect {
            Expect::FileSent { attempt }
            | Expect::FileReceived { attempt, .. }
            | Expect::CrcOkAck { attempt, .. }
            | Expect::GiveUpAck { attempt, .. } => attempt,
            _ => self.finished_attempts,
        }
    }

    /// The cksum of the last complete send of the file, if any.
    pub fn local_cksum(&self) -> Option<u32> {
        self.local_cksum
    }

    /// The plaintext length the session announces.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    /// The connection asked for by [`Action::Connect`] is open: the
    /// pending request goes out on it.
    pub fn handle_connected(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        self.link_up = true;
        self.send_current();
    }

    /// The connection could not be opened, was closed or reset by the
    /// server, timed out, or a write failed. Counts as one retry of the
    /// pending request (§6).
    pub fn handle_connection_lost(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        self.retry(RetryCause::ConnectionLost);
    }

    /// The driver finished streaming the file of the last
    /// [`Action::SendFile`]; `cksum` is what [`FileSender::finish`] gave.
    pub fn handle_file_sent(&mut self, cksum: u32) {
        if let Expect::FileSent { attempt } = self.expect {
            self.local_cksum = Some(cksum);
            self.expect = Expect::FileReceived {
                attempt,
                local: cksum,
                stray_ok: attempt > 1,
            };
        }
    }

    /// The key pair asked for by [`Action::GenerateKeyPair`]. Fails if its
    /// public key does not encode to the 160 bytes of §4 (e.g. e = 65537);
    /// the session then still awaits a usable key pair.
    pub fn handle_key_pair(&mut self, key: RsaPrivateKey) -> Result<(), KeyPairError> {
        if self.expect != Expect::KeyPair {
            return Ok(());
        }
        key.public_key().to_spki_der().map_err(KeyPairError)?;
        self.new_key = Some(key);
        self.expect = Expect::KeyAccepted;
        if self.link_up {
            self.send_current();
        }
        Ok(())
    }

    /// A response arrived. `rng` blinds the RSA decryption of 2102/2105.
    pub fn handle_response(&mut self, response: Response, rng: &mut dyn Entropy) {
        if self.outcome.is_some() {
            return;
        }
        if response == Response::GeneralError && self.expect != Expect::KeyPair {
            return self.retry(RetryCause::ServerError);
        }
        match self.expect {
            Expect::Registered => self.on_register_reply(response),
            Expect::KeyAccepted => self.on_key_reply(response, rng),
            Expect::Reconnect => self.on_reconnect_reply(response, rng),
            Expect::FileReceived {
                attempt,
                local,
                stray_ok,
            } => self.on_file_reply(response, attempt, local, stray_ok),
            Expect::CrcOkAck { attempt, cksum } => {
                self.on_verdict_ack(response, || Outcome::Verified {
                    attempts: attempt,
                    cksum,
                })
            }
            Expect::GiveUpAck {
                attempt,
                server,
                local,
            } => self.on_verdict_ack(response, || Outcome::CrcFailed {
                attempts: attempt,
                server,
                local,
            }),
            Expect::KeyPair | Expect::FileSent { .. } | Expect::Done => {
                self.unexpected(response.kind())
            }
        }
    }

    /// The response stream could not be decoded; framing is lost.
    pub fn handle_decode_error(&mut self, error: DecodeError) {
        if self.outcome.is_none() {
            self.violation(Violation::Undecodable(error));
        }
    }

    fn on_register_reply(&mut self, response: Response) {
        match response {
            Response::Registered { client_id } => {
                self.retries = 0;
                self.new_id = client_id;
                self.events.push_back(Event::Registered { client_id });
                self.expect = Expect::KeyPair;
                self.actions.push_back(Action::GenerateKeyPair);
            }
            Response::RegistrationFailed => self.finish(Outcome::RegistrationFailed {
                after_denied_reconnect: self.denied,
            }),
            other => self.unexpected(other.kind()),
        }
    }

    fn on_key_reply(&mut self, response: Response, rng: &mut dyn Entropy) {
        let Response::KeyAccepted {
            client_id,
            encrypted_key,
        } = response
        else {
            return self.unexpected(response.kind());
        };
        if client_id != self.new_id {
            return self.violation(Violation::WrongClientId {
                response: ResponseKind::KeyAccepted,
            });
        }
        let Some(key) = self.new_key.take() else {
            return self.unexpected(ResponseKind::KeyAccepted);
        };
        let Some(aes) = decrypt(&key, &encrypted_key, rng) else {
            return self.violation(Violation::UndecryptableKey);
        };
        self.identity = Some(Identity {
            name: self.name.clone(),
            client_id,
            key,
        });
        self.events.push_back(Event::KeyExchanged { client_id });
        self.start_upload(aes);
    }

    fn on_reconnect_reply(&mut self, response: Response, rng: &mut dyn Entropy) {
        let Some(identity) = &self.identity else {
            return self.unexpected(response.kind());
        };
        match response {
            Response::ReconnectAccepted {
                client_id,
                encrypted_key,
            } => {
                if client_id != identity.client_id {
                    return self.violation(Violation::WrongClientId {
                        response: ResponseKind::ReconnectAccepted,
                    });
                }
                let Some(aes) = decrypt(&identity.key, &encrypted_key, rng) else {
                    return self.violation(Violation::UndecryptableKey);
                };
                self.events.push_back(Event::Reconnected { client_id });
                self.start_upload(aes);
            }
            // §6: register as a new client, with a new key pair. The
            // connection stays; if the server closed it, the retry path
            // reopens it.
            Response::ReconnectDenied { .. } => {
                self.retries = 0;
                self.identity = None;
                self.denied = true;
                self.events.push_back(Event::ReconnectDenied);
                self.expect = Expect::Registered;
                self.send_current();
            }
            other => self.unexpected(other.kind()),
        }
    }

    fn on_file_reply(&mut self, response: Response, attempt: u32, local: u32, stray_ok: bool) {
        let (client_id, content_size, file_name, cksum) = match response {
            Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum,
            } => (client_id, content_size, file_name, cksum),
            // §3: some servers answer 1030 with 2104; skip one.
            Response::Ack { .. } if stray_ok => {
                self.events.push_back(Event::StrayAckSkipped);
                self.expect = Expect::FileReceived {
                    attempt,
                    local,
                    stray_ok: false,
                };
                return;
            }
            other => return self.unexpected(other.kind()),
        };
        if Some(client_id) != self.client_id() {
            return self.violation(Violation::WrongClientId {
                response: ResponseKind::FileReceived,
            });
        }
        // §1: the text before the NUL is the name; padding is ignored.
        if content_size != self.content_size || file_name.text() != self.file_name.text() {
            return self.violation(Violation::BadEcho);
        }
        self.retries = 0;
        if cksum == local {
            self.expect = Expect::CrcOkAck { attempt, cksum };
        } else {
            self.events.push_back(Event::CrcMismatch {
                attempt,
                server: cksum,
                local,
            });
            if attempt < MAX_SENDS {
                return self.resend(attempt + 1);
            }
            self.expect = Expect::GiveUpAck {
                attempt,
                server: cksum,
                local,
            };
        }
        self.send_current();
    }

    fn on_verdict_ack(&mut self, response: Response, outcome: impl FnOnce() -> Outcome) {
        // The id in 2104 is not checked: the verdict is ours whatever a
        // server echoes there, and no action depends on it.
        match response {
            Response::Ack { .. } => self.finish(outcome()),
            other => self.unexpected(other.kind()),
        }
    }

    /// §6 CRC mismatch: 1030 (no response) and the file again at once.
    fn resend(&mut self, attempt: u32) {
        let mut frame = Vec::new();
        let file_name = self.file_name.clone();
        Request::CrcBad { file_name }.encode(self.rev, &self.current_id(), &mut frame);
        self.actions.push_back(Action::Send(frame));
        self.expect = Expect::FileSent { attempt };
        self.send_current();
    }

    fn start_upload(&mut self, aes: AesKey) {
        self.retries = 0;
        self.aes = Some(aes);
        self.expect = Expect::FileSent { attempt: 1 };
        self.send_current();
    }

    /// Queues the request the current state awaits the answer of.
    fn send_current(&mut self) {
        let id = self.current_id();
        let mut frame = Vec::new();
        let request = match self.expect {
            Expect::Registered => Request::Register {
                name: self.name_field.clone(),
            },
            Expect::Reconnect => match &self.reconnect_name {
                Some(name) => Request::Reconnect { name: name.clone() },
                None => return,
            },
            Expect::KeyAccepted => match self.public_key_request() {
                Some(r) => r,
                None => return,
            },
            Expect::FileSent { attempt } | Expect::FileReceived { attempt, .. } => {
                return self.queue_file(attempt)
            }
            Expect::CrcOkAck { .. } => Request::CrcOk {
                file_name: self.file_name.clone(),
            },
            Expect::GiveUpAck { .. } => Request::CrcGiveUp {
                file_name: self.file_name.clone(),
            },
            Expect::KeyPair | Expect::Done => return,
        };
        request.encode(self.rev, &id, &mut frame);
        self.actions.push_back(Action::Send(frame));
    }

    fn public_key_request(&self) -> Option<Request> {
        let der = self.new_key.as_ref()?.public_key().to_spki_der().ok()?;
        Some(Request::PublicKey {
            name: self.name_field.clone(),
            public_key: Box::new(der),
        })
    }

    fn queue_file(&mut self, attempt: u32) {
        let Some(aes) = &self.aes else { return };
        self.expect = Expect::FileSent { attempt };
        let mut header = Vec::new();
        encode_file_header(
            self.rev,
            &self.current_id(),
            self.content_size,
            &self.file_name,
            &mut header,
        );
        let sender = FileSender::new(aes, self.plain_len);
        self.events.push_back(Event::AttemptStarted {
            attempt,
            of: MAX_SENDS,
        });
        self.actions
            .push_back(Action::SendFile(Box::new(FileUpload {
                attempt,
                header,
                plain_len: self.plain_len,
                content_size: self.content_size,
                sender,
            })));
    }

    /// The id requests carry: zero in 1025 (§1), else ours.
    fn current_id(&self) -> ClientId {
        match (self.expect, &self.identity) {
            (Expect::Registered, _) => ClientId::ZERO,
            (_, Some(identity)) => identity.client_id,
            (_, None) => self.new_id,
        }
    }

    /// §6: reopen the connection and send the same request again, up to
    /// [`MAX_ERROR_RETRIES`] times.
    fn retry(&mut self, cause: RetryCause) {
        self.link_up = false;
        // Frames queued for the old connection are void; a pending key
        // pair request is not about the connection.
        self.actions
            .retain(|a| matches!(a, Action::GenerateKeyPair));
        if self.retries >= MAX_ERROR_RETRIES {
            let request = self.expect.request();
            return self.finish(match cause {
                RetryCause::ServerError => Outcome::ServerError { request },
                RetryCause::ConnectionLost => Outcome::ConnectionFailed { request },
            });
        }
        self.retries += 1;
        let (retry, of) = (self.retries, MAX_ERROR_RETRIES);
        self.events.push_back(match cause {
            RetryCause::ServerError => Event::ServerError { retry, of },
            RetryCause::ConnectionLost => Event::ConnectionLost { retry, of },
        });
        if let Expect::FileReceived { attempt, .. } = self.expect {
            self.expect = Expect::FileSent { attempt };
        }
        self.actions
            .push_back(Action::Connect { delay: RETRY_DELAY });
    }

    fn unexpected(&mut self, got: ResponseKind) {
        let awaiting = self.expect.describe();
        self.violation(Violation::Unexpected { awaiting, got });
    }

    fn violation(&mut self, v: Violation) {
        self.finish(Outcome::ProtocolViolation(v));
    }

    fn finish(&mut self, outcome: Outcome) {
        self.finished_attempts = self.attempts();
        self.expect = Expect::Done;
        self.actions.clear();
        self.outcome = Some(outcome);
    }
}

/// Decrypts the AES key of a 2102/2105 (§4).
fn decrypt(
    key: &RsaPrivateKey,
    encrypted: &[u8; ENCRYPTED_KEY_LEN],
    rng: &mut dyn Entropy,
) -> Option<AesKey> {
    key.decrypt_aes_key(encrypted, rng).ok()
}

#[cfg(test)]
mod tests;
