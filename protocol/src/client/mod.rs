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
//!
//! Revisions (§9): the session speaks the one in
//! [`ClientConfig::revision`]: its request codes, its response range (read
//! with [`ResponseReader`], which also tolerates the server quirks of
//! §9.1 and names the revision a server seems to speak when it answers in
//! another range), its AES key size (a key of the wrong size is a
//! violation), and its file message:
//!
//! * 2022c has no reconnect: a returning client sends its saved name and
//!   public key again (1101) and takes the new key from 2102; if that
//!   fails (any other answer, or no answer on the first try and three
//!   retries, as a 2022c server closes without a word on errors) it
//!   registers anew, as after a denied reconnect (but a server that cannot
//!   be reached at all is a connection failure). Its 1103 and 1104-1106
//!   repeat the client id (the encoders do that).
//! * 2024a/2024c send the file as packets ([`PacketPlan`], from
//!   [`ClientConfig::packets`]); [`FileUpload::header`] is the first
//!   packet's header and [`FileSender`] writes the others between the
//!   pieces, so the driver streams the file exactly as for one message.
//!   The 1603's content_size is not compared (2024 servers echo the
//!   whole size, the last packet's, or the plaintext's, §9.1).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::consts::{
    CLIENT_NAME_MAX, ENCRYPTED_KEY_LEN, MAX_CONTENT_SIZE, MAX_ERROR_RETRIES, MAX_SENDS,
};
use crate::crypto::{encrypted_len, AesKey, CryptoError, Entropy, RsaPrivateKey};
use crate::error::DecodeError;
use crate::message::{encode_file_header, Request, RequestKind, Response, ResponseKind, Revision};
use crate::revision::FileLayout;
use crate::wire::{sanitize_file_name, ClientId, FixedName, NameError};

mod plan;
mod reader;
mod sender;
mod sniff;

pub use plan::{
    Granularity, PacketFields, PacketOptions, PacketOptionsError, PacketPlan, MAX_PACKETS,
};
pub use reader::{revisions_with_response, ResponseError, ResponseReader};
pub use sender::{FileSender, FileSizeChanged};
pub use sniff::{sniff, ForeignService, Sniff, SNIFF_LEN};

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
    /// The files to send, in order, all in this one session (one
    /// registration or reconnect). At least one.
    pub files: Vec<FileSpec>,
    /// Saved credentials from `me.info`: present means reconnect (1027),
    /// or in 2022c the key sent again (1101).
    pub identity: Option<Identity>,
    /// How 2024a/2024c cut the file into packets; ignored by the other
    /// revisions. The default sends the whole file as one packet.
    pub packets: PacketOptions,
    /// How long connection failures are waited out.
    pub retry: RetryPolicy,
}

/// One file of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// The name the server stores it under, sent in 1028-1031 (§2).
    pub name: String,
    /// The file's plaintext length, at most [`max_plain_len`] of the
    /// revision (and packet options).
    pub plain_len: u64,
}

/// How connection failures (refused, reset, closed, timed out) are
/// retried: at least [`MAX_ERROR_RETRIES`] times (§6), and beyond that
/// until `retry_for` has passed since the first failure of the outage,
/// waiting [`RETRY_DELAY`], then twice as long each time up to
/// [`MAX_BACKOFF`], each wait shortened by a random part of up to half
/// (jitter, so that many clients cut off by one server restart do not
/// come back in step). Answers of 2107 are retried 3 times,
/// [`RETRY_DELAY`] apart, as §6 says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The longest outage waited out.
    pub retry_for: Duration,
    /// Seeds the jitter (a driver takes it from the OS's random source;
    /// tests fix it).
    pub seed: u64,
}

/// Default [`RetryPolicy::retry_for`]: long enough to wait out a server
/// restart under systemd (`RestartSec=2` plus start-up) several times
/// over, short enough that a script learns of a dead server within a
/// minute.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);

/// The longest single wait between connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_for: DEFAULT_RETRY_FOR,
            seed: 0x5ea1_d409,
        }
    }
}

/// A file checked and laid out for the revision.
#[derive(Debug, Clone)]
struct PreparedFile {
    name: FixedName,
    plain_len: u64,
    content_size: u32,
    packets: Option<PacketPlan>,
}

/// Checks that `rev` (with `packets`) can carry `file`, as
/// [`ClientSession::new`] does for each file; lets a driver name the
/// file that cannot go before it starts.
pub fn check_file(
    rev: Revision,
    file: &FileSpec,
    packets: &PacketOptions,
) -> Result<(), ConfigError> {
    prepare_file(rev, file, packets).map(drop)
}

fn prepare_file(
    rev: Revision,
    file: &FileSpec,
    options: &PacketOptions,
) -> Result<PreparedFile, ConfigError> {
    let name = file_name_field(&file.name)?;
    let too_large = ConfigError::FileTooLarge {
        len: file.plain_len,
        revision: rev,
    };
    if file.plain_len > max_plain_len(rev) {
        return Err(too_large);
    }
    let (packets, content_size) = match rev.file_layout() {
        FileLayout::Single => (None, encrypted_len(file.plain_len) as u32),
        FileLayout::Packets => {
            let plan = PacketPlan::new(file.plain_len, options)
                .map_err(|e| e.map_or(too_large, ConfigError::BadPackets))?;
            // Fits: PacketPlan::new checks it against MAX_CONTENT_SIZE.
            let content_size = plan.content_len as u32;
            (Some(plan), content_size)
        }
    };
    Ok(PreparedFile {
        name,
        plain_len: file.plain_len,
        content_size,
        packets,
    })
}

/// The largest content_size a single-message revision can declare: the
/// payload_size field (u32) holds the prefix too, so 2022c's 275-byte
/// prefix leaves 16 bytes less than the 259 of 2023a/2023c (§2, §9).
pub fn max_content_size(rev: Revision) -> u32 {
    let room = (u32::MAX - rev.file_prefix_len() as u32) / 16 * 16;
    room.min(MAX_CONTENT_SIZE)
}

/// The largest file a revision carries in one message: one byte less
/// than [`max_content_size`], as PKCS#7 adds 1 to 16 bytes. In 2024a/2024c
/// the whole content must fit the same u32 field, so each-mode packets,
/// which add up to 16 bytes per packet, carry somewhat less
/// ([`PacketPlan::new`] checks).
pub fn max_plain_len(rev: Revision) -> u64 {
    u64::from(max_content_size(rev)) - 1
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
    /// No file to send.
    NoFiles,
    /// The file is larger than the revision can carry (§2, §9).
    FileTooLarge {
        /// The file's length.
        len: u64,
        /// The revision.
        revision: Revision,
    },
    /// 2024a/2024c packet options that cannot work.
    BadPackets(PacketOptionsError),
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
            ConfigError::NoFiles => f.write_str("no file to send"),
            ConfigError::BadFileName => f.write_str(
                "file name must be 1 to 254 printable ASCII characters and not `.` or `..`",
            ),
            ConfigError::FileTooLarge { len, revision } => write!(
                f,
                "file is {len} bytes; revision {revision} carries at most {} bytes{}",
                max_plain_len(*revision),
                if revision.file_layout() == FileLayout::Packets {
                    " (less with each-mode packets, which add up to 16 bytes per packet)"
                } else {
                    ""
                }
            ),
            ConfigError::BadPackets(e) => e.fmt(f),
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

/// One send of the file: a file message (1028, 1103, or a 2024 upload in
/// packets) whose content the driver streams.
#[derive(Debug)]
pub struct FileUpload {
    /// Which file of [`ClientConfig::files`] (from 0).
    pub file: usize,
    /// Send number, 1 to [`MAX_SENDS`] (§6); a retry after 2107 or a lost
    /// connection keeps the number.
    pub attempt: u32,
    /// Everything before the first content byte: the 23-byte header and
    /// the prefix of the message (content_size, file_name; in 2022c the id
    /// first), or in 2024a/2024c the first packet's header and prefix.
    pub header: Vec<u8>,
    /// Plaintext length the header declares.
    pub plain_len: u64,
    /// The content_size field: the encrypted length of the file (in each
    /// mode, of all its padded packets).
    pub content_size: u32,
    /// 2024a/2024c: how the file is cut into packets.
    pub packets: Option<PacketPlan>,
    /// Turns the plaintext into what follows the header (ciphertext, and
    /// the headers of later packets) and computes its cksum.
    pub sender: FileSender,
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
    /// 2022c: the server did not answer our saved public key (1101) with
    /// a usable 2102; registering as a new client.
    KeyResendRefused,
    /// The file needs more than 65,535 packets of the size asked for; it
    /// goes in packets of `used` bytes, the smallest multiple of 16 that
    /// fits.
    PacketSizeRaised {
        /// The size asked for.
        requested: u32,
        /// The size used.
        used: u64,
    },
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
    /// The connection failed, closed or timed out: reconnecting to retry
    /// after `delay` ([`RetryPolicy`]).
    ConnectionLost {
        /// Retry number in this outage, from 1.
        retry: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// Time left of [`RetryPolicy::retry_for`] after that wait (zero
        /// while the [`MAX_ERROR_RETRIES`] retries §6 promises run past it).
        left: Duration,
    },
    /// A file of [`ClientConfig::files`] is done, well or not; the session
    /// goes on with the next one unless the outcome ends it. Comes for
    /// every file that was started, the last one included.
    FileFinished {
        /// Which file (from 0).
        file: usize,
        /// How it ended.
        outcome: Outcome,
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
    /// The connection broke after 1029 went out and before its 2104
    /// came, and 1029 sent again on new connections got no 2104 either:
    /// the server may have verified and kept the file, and the protocol
    /// has no request that asks. Sending the file again settles it (a same-name upload replaces the
    /// stored copy once verified, §6).
    OutcomeUnknown {
        /// Sends made.
        attempts: u32,
        /// The cksum both sides agreed on.
        cksum: u32,
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
            Outcome::OutcomeUnknown { .. } => "outcome_unknown",
            Outcome::ProtocolViolation(_) => "protocol_error",
        }
    }

    /// True if the outcome is about one file and the session can go on
    /// with the next: the file's verdict, a 2107 the server kept giving
    /// to one of the file's requests, or an unknown verdict. A refused
    /// registration, a lost server or a protocol violation end the session.
    pub fn is_per_file(&self) -> bool {
        match self {
            Outcome::Verified { .. }
            | Outcome::CrcFailed { .. }
            | Outcome::OutcomeUnknown { .. } => true,
            Outcome::ServerError { request } => matches!(
                request,
                RequestKind::SendFile | RequestKind::CrcOk | RequestKind::CrcGiveUp
            ),
            _ => false,
        }
    }
}

/// A response the protocol does not allow at that point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A response of the wrong kind for the request sent.
    Unexpected {
        /// What the session was waiting for, in the revision's codes.
        awaiting: String,
        /// What came.
        got: ResponseKind,
        /// Its code.
        code: u16,
    },
    /// A response code of another revision's numbering (§9): the server
    /// speaks another revision.
    ForeignRevision {
        /// The code received.
        code: u16,
        /// The revision we speak.
        ours: Revision,
        /// The revisions that have that code, the likeliest first.
        theirs: Vec<Revision>,
    },
    /// An AES key of the wrong size for the revision (16 bytes in 2022c,
    /// 2023a, 2023c; 32 in 2024a, 2024c).
    KeySize {
        /// Its length.
        got: usize,
        /// The revision's.
        expected: usize,
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
            Violation::Unexpected {
                awaiting,
                got,
                code,
            } => {
                write!(
                    f,
                    "unexpected response {code} ({}) while awaiting {awaiting}",
                    kind_label(*got)
                )
            }
            Violation::ForeignRevision { code, ours, theirs } => {
                let names: Vec<&str> = theirs.iter().map(|r| r.name()).collect();
                write!(
                    f,
                    "the server answered {code}, a code of revision {} and not of {ours}: \
                     it seems to speak {}",
                    names.join(" or "),
                    names.first().copied().unwrap_or("another revision")
                )
            }
            Violation::KeySize { got, expected } => write!(
                f,
                "the server sent a {}-bit AES key; this revision uses {}-bit keys",
                got * 8,
                expected * 8
            ),
            Violation::WrongClientId { response } => {
                write!(f, "response {response:?} carries another client's id")
            }
            Violation::BadEcho => {
                f.write_str("the file-received answer does not echo our content_size and file name")
            }
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
    /// 2022c returning client, 1101 with the saved key sent: 2102.
    KeyResend,
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
            Expect::KeyPair | Expect::KeyAccepted | Expect::KeyResend => RequestKind::PublicKey,
            Expect::Reconnect => RequestKind::Reconnect,
            Expect::FileSent { .. } | Expect::FileReceived { .. } => RequestKind::SendFile,
            Expect::CrcOkAck { .. } => RequestKind::CrcOk,
            Expect::GiveUpAck { .. } | Expect::Done => RequestKind::CrcGiveUp,
        }
    }

    /// What the state awaits, in the revision's codes: "2100/2101 after 1025".
    fn describe(self, rev: Revision) -> String {
        use RequestKind as Q;
        use ResponseKind as A;
        let req = |k| rev.request_code(k).unwrap_or(0);
        let resp = |k| rev.response_code(k).unwrap_or(0);
        match self {
            Expect::Registered => format!(
                "{}/{} after {}",
                resp(A::Registered),
                resp(A::RegistrationFailed),
                req(Q::Register)
            ),
            Expect::KeyPair => "a key pair (no response)".into(),
            Expect::KeyAccepted | Expect::KeyResend => {
                format!("{} after {}", resp(A::KeyAccepted), req(Q::PublicKey))
            }
            Expect::Reconnect => format!(
                "{}/{} after {}",
                resp(A::ReconnectAccepted),
                resp(A::ReconnectDenied),
                req(Q::Reconnect)
            ),
            Expect::FileSent { .. } => format!("the end of the {} upload", req(Q::SendFile)),
            Expect::FileReceived { .. } => {
                format!("{} after {}", resp(A::FileReceived), req(Q::SendFile))
            }
            Expect::CrcOkAck { .. } => format!("{} after {}", resp(A::Ack), req(Q::CrcOk)),
            Expect::GiveUpAck { .. } => format!("{} after {}", resp(A::Ack), req(Q::CrcGiveUp)),
            Expect::Done => "nothing".into(),
        }
    }
}

/// "registered", "file received" and so on, for messages.
fn kind_label(kind: ResponseKind) -> &'static str {
    match kind {
        ResponseKind::Registered => "registered",
        ResponseKind::RegistrationFailed => "registration failed",
        ResponseKind::KeyAccepted => "public key accepted",
        ResponseKind::FileReceived => "file received",
        ResponseKind::Ack => "acknowledged",
        ResponseKind::ReconnectAccepted => "reconnect accepted",
        ResponseKind::ReconnectDenied => "reconnect denied",
        ResponseKind::GeneralError => "general server error",
    }
}

/// Why a request is being retried.
#[derive(Debug, Clone, Copy)]
enum RetryCause {
    ServerError,
    /// The server sent nothing in time on an open connection.
    NoAnswer,
    /// When the driver saw it.
    ConnectionLost(Instant),
}

/// The sans-IO client state machine (PROTOCOL.md §6). See the module
/// documentation for the driving contract.
pub struct ClientSession {
    rev: Revision,
    name: String,
    name_field: FixedName,
    /// The files, checked and laid out; `current` is being sent.
    files: Vec<PreparedFile>,
    current: usize,
    /// Saved or newly completed credentials.
    identity: Option<Identity>,
    /// Id issued by 2100, before key exchange completes.
    new_id: ClientId,
    /// Key pair from the driver, before 2102 arrives.
    new_key: Option<RsaPrivateKey>,
    aes: Option<AesKey>,
    expect: Expect,
    link_up: bool,
    /// 2107 retries of the pending request.
    retries: u32,
    /// Connection retries in the current outage, and when it began.
    conn_retries: u32,
    outage_since: Option<Instant>,
    /// The connection broke after 1029 went out: a failure to confirm
    /// it later is an unknown outcome, not a failure.
    verdict_in_doubt: bool,
    retry: RetryPolicy,
    /// Jitter generator state (xorshift64*), from [`RetryPolicy::seed`].
    jitter: u64,
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
        let rev = config.revision;
        if config.files.is_empty() {
            return Err(ConfigError::NoFiles);
        }
        let files = config
            .files
            .iter()
            .map(|f| prepare_file(rev, f, &config.packets))
            .collect::<Result<Vec<_>, _>>()?;
        let reconnect_name = match &config.identity {
            Some(id) => {
                Some(FixedName::new(id.name.as_bytes()).map_err(ConfigError::BadSavedName)?)
            }
            None => None,
        };
        let expect = match config.identity {
            Some(_) if rev.request_code(RequestKind::Reconnect).is_some() => Expect::Reconnect,
            Some(_) => Expect::KeyResend,
            None => Expect::Registered,
        };
        let mut actions = VecDeque::new();
        actions.push_back(Action::Connect {
            delay: Duration::ZERO,
        });
        let mut session = ClientSession {
            rev: config.revision,
            name: config.name,
            name_field,
            files,
            current: 0,
            identity: config.identity,
            new_id: ClientId::ZERO,
            new_key: None,
            aes: None,
            expect,
            link_up: false,
            retries: 0,
            conn_retries: 0,
            outage_since: None,
            verdict_in_doubt: false,
            retry: config.retry,
            // xorshift needs a non-zero state.
            jitter: config.retry.seed | 1,
            denied: false,
            reconnect_name,
            finished_attempts: 0,
            local_cksum: None,
            actions,
            events: VecDeque::new(),
            outcome: None,
        };
        session.note_packet_size();
        Ok(session)
    }

    /// The file being sent.
    fn file(&self) -> &PreparedFile {
        &self.files[self.current]
    }

    /// Tells the user when the current file's packets had to grow.
    fn note_packet_size(&mut self) {
        if let Some(plan) = &self.file().packets {
            if let Some(requested) = plan.raised_from {
                let used = plan.piece;
                self.events
                    .push_back(Event::PacketSizeRaised { requested, used });
            }
        }
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
        self.file().plain_len
    }

    /// The revision the session speaks.
    pub fn revision(&self) -> Revision {
        self.rev
    }

    /// 2024a/2024c: how the file is cut into packets.
    pub fn packet_plan(&self) -> Option<&PacketPlan> {
        self.file().packets.as_ref()
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
    pub fn handle_connection_lost(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        self.retry(RetryCause::ConnectionLost(now));
    }

    /// The connection is up but the server sent nothing within the
    /// driver's timeout: a stuck server, not a restarting one, so this
    /// is retried [`MAX_ERROR_RETRIES`] times [`RETRY_DELAY`] apart like a
    /// 2107 (§6), not for the whole [`RetryPolicy::retry_for`].
    pub fn handle_no_answer(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        self.retry(RetryCause::NoAnswer);
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
            Expect::KeyResend => self.on_key_resend_reply(response, rng),
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

    /// What [`ResponseReader`] could not read: an undecodable frame, or a
    /// code of another revision (the server speaks another revision).
    pub fn handle_response_error(&mut self, error: ResponseError) {
        if self.outcome.is_some() {
            return;
        }
        match error {
            ResponseError::Decode(e) => self.handle_decode_error(e),
            ResponseError::ForeignRevision { code } => self.violation(Violation::ForeignRevision {
                code,
                ours: self.rev,
                theirs: revisions_with_response(self.rev, code),
            }),
        }
    }

    fn on_register_reply(&mut self, response: Response) {
        match response {
            Response::Registered { client_id } => {
                self.progressed();
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
        let aes = match self.decrypt(&key, &encrypted_key, rng) {
            Ok(aes) => aes,
            Err(v) => return self.violation(v),
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
                let aes = match self.decrypt(&identity.key, &encrypted_key, rng) {
                    Ok(aes) => aes,
                    Err(v) => return self.violation(v),
                };
                self.events.push_back(Event::Reconnected { client_id });
                self.start_upload(aes);
            }
            // §6: register as a new client, with a new key pair. The
            // connection stays; if the server closed it, the retry path
            // reopens it.
            Response::ReconnectDenied { .. } => {
                self.progressed();
                self.identity = None;
                self.denied = true;
                self.events.push_back(Event::ReconnectDenied);
                self.expect = Expect::Registered;
                self.send_current();
            }
            other => self.unexpected(other.kind()),
        }
    }

    /// 2022c returning client: 2102 to the saved key means the server
    /// knows us; anything else means registering anew.
    fn on_key_resend_reply(&mut self, response: Response, rng: &mut dyn Entropy) {
        let Some(identity) = &self.identity else {
            return self.unexpected(response.kind());
        };
        let aes = match response {
            Response::KeyAccepted {
                client_id,
                encrypted_key,
            } if client_id == identity.client_id => {
                self.decrypt(&identity.key, &encrypted_key, rng).ok()
            }
            _ => None,
        };
        match aes {
            Some(aes) => {
                let client_id = identity.client_id;
                self.events.push_back(Event::Reconnected { client_id });
                self.start_upload(aes);
            }
            None => self.register_anew(),
        }
    }

    /// 2022c: the saved key got no usable 2102: register as a new client,
    /// on a new connection (a 2022c server closes on errors).
    fn register_anew(&mut self) {
        self.progressed();
        self.identity = None;
        self.denied = true;
        self.events.push_back(Event::KeyResendRefused);
        self.expect = Expect::Registered;
        self.link_up = false;
        self.actions.clear();
        self.actions
            .push_back(Action::Connect { delay: RETRY_DELAY });
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
        // 2024 servers echo the whole size, the last packet's or the
        // plaintext's (§9.1): only the single-message revisions compare it.
        let file = self.file();
        let size_ok = file.packets.is_some() || content_size == file.content_size;
        if !size_ok || file_name.text() != file.name.text() {
            return self.violation(Violation::BadEcho);
        }
        self.progressed();
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
        let file_name = self.file().name.clone();
        Request::CrcBad { file_name }.encode(self.rev, &self.current_id(), &mut frame);
        self.actions.push_back(Action::Send(frame));
        self.expect = Expect::FileSent { attempt };
        self.send_current();
    }

    fn start_upload(&mut self, aes: AesKey) {
        self.progressed();
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
            Expect::KeyResend => match self.saved_key_request() {
                Some(r) => r,
                None => return,
            },
            Expect::FileSent { attempt } | Expect::FileReceived { attempt, .. } => {
                return self.queue_file(attempt)
            }
            Expect::CrcOkAck { .. } => Request::CrcOk {
                file_name: self.file().name.clone(),
            },
            Expect::GiveUpAck { .. } => Request::CrcGiveUp {
                file_name: self.file().name.clone(),
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

    /// 2022c returning client: the saved name and public key (1101).
    fn saved_key_request(&self) -> Option<Request> {
        let identity = self.identity.as_ref()?;
        let der = identity.key.public_key().to_spki_der().ok()?;
        Some(Request::PublicKey {
            name: self.reconnect_name.clone()?,
            public_key: Box::new(der),
        })
    }

    fn queue_file(&mut self, attempt: u32) {
        let Some(aes) = &self.aes else { return };
        self.expect = Expect::FileSent { attempt };
        let id = self.current_id();
        let file = &self.files[self.current];
        let mut header = Vec::new();
        let sender = match &file.packets {
            None => {
                encode_file_header(self.rev, &id, file.content_size, &file.name, &mut header);
                FileSender::new(aes, file.plain_len)
            }
            Some(plan) => {
                crate::message::encode_packet_header(
                    self.rev,
                    &id,
                    &plan.header(0),
                    &file.name,
                    plan.data_len(0),
                    &mut header,
                );
                FileSender::packets(aes, self.rev, id, file.name.clone(), plan.clone())
            }
        };
        let upload = FileUpload {
            file: self.current,
            attempt,
            header,
            plain_len: file.plain_len,
            content_size: file.content_size,
            packets: file.packets.clone(),
            sender,
        };
        self.events.push_back(Event::AttemptStarted {
            attempt,
            of: MAX_SENDS,
        });
        self.actions.push_back(Action::SendFile(Box::new(upload)));
    }

    /// The id requests carry: zero in 1025 (§1), else ours.
    fn current_id(&self) -> ClientId {
        match (self.expect, &self.identity) {
            (Expect::Registered, _) => ClientId::ZERO,
            (_, Some(identity)) => identity.client_id,
            (_, None) => self.new_id,
        }
    }

    /// An expected response arrived: the retry counts start over.
    fn progressed(&mut self) {
        self.retries = 0;
        self.conn_retries = 0;
        self.outage_since = None;
    }

    /// The next wait after a connection failure ([`RetryPolicy`]), or
    /// `None` when the outage has lasted long enough.
    fn backoff(&mut self, now: Instant) -> Option<(Duration, Duration)> {
        let since = *self.outage_since.get_or_insert(now);
        let doublings = self.conn_retries.min(16);
        let full = RETRY_DELAY.saturating_mul(1 << doublings).min(MAX_BACKOFF);
        // xorshift64*: jitter needs spread, not secrecy.
        self.jitter ^= self.jitter >> 12;
        self.jitter ^= self.jitter << 25;
        self.jitter ^= self.jitter >> 27;
        let r = self.jitter.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        let fraction = r as f64 / (1u64 << 53) as f64;
        let delay = full.mul_f64(1.0 - fraction / 2.0);
        let spent = now.saturating_duration_since(since) + delay;
        if self.conn_retries >= MAX_ERROR_RETRIES && spent > self.retry.retry_for {
            return None;
        }
        Some((delay, self.retry.retry_for.saturating_sub(spent)))
    }

    /// §6: reopen the connection and send the same request again: after
    /// a 2107 up to [`MAX_ERROR_RETRIES`] times, after a connection
    /// failure as [`RetryPolicy`] says.
    fn retry(&mut self, cause: RetryCause) {
        let was_up = self.link_up;
        self.link_up = false;
        // Frames queued for the old connection are void; a pending key
        // pair request is not about the connection.
        self.actions
            .retain(|a| matches!(a, Action::GenerateKeyPair));
        // The verdict went out and the connection broke before its
        // answer: the server may have kept the file. Sending 1029 again on
        // a new connection is the only way to ask (servers that record the
        // upload by client and name answer 2104); if that does not settle
        // it, the outcome is unknown rather than a failure.
        if let (RetryCause::ConnectionLost(_) | RetryCause::NoAnswer, Expect::CrcOkAck { .. }) =
            (cause, self.expect)
        {
            self.verdict_in_doubt = true;
        }
        let next = match cause {
            RetryCause::ServerError if self.retries < MAX_ERROR_RETRIES => {
                self.retries += 1;
                let (retry, of) = (self.retries, MAX_ERROR_RETRIES);
                self.events.push_back(Event::ServerError { retry, of });
                Some(RETRY_DELAY)
            }
            // 2022c: a server that takes the 1101 and closes without a word,
            // the first time and on three retries, does not know us.
            RetryCause::ConnectionLost(_)
                if self.expect == Expect::KeyResend
                    && was_up
                    && self.conn_retries >= MAX_ERROR_RETRIES =>
            {
                return self.register_anew();
            }
            RetryCause::ConnectionLost(now) => self.backoff(now).map(|(delay, left)| {
                self.conn_retries += 1;
                let retry = self.conn_retries;
                self.events
                    .push_back(Event::ConnectionLost { retry, delay, left });
                delay
            }),
            RetryCause::NoAnswer if self.retries < MAX_ERROR_RETRIES => {
                self.retries += 1;
                let retry = self.retries;
                self.events.push_back(Event::ConnectionLost {
                    retry,
                    delay: RETRY_DELAY,
                    left: Duration::ZERO,
                });
                Some(RETRY_DELAY)
            }
            RetryCause::ServerError | RetryCause::NoAnswer => None,
        };
        let Some(delay) = next else {
            // 2022c: a server that took the 1101 and closed (or answered
            // an error) each time does not know us. One that could not be
            // reached at all is a network failure like any other.
            if self.expect == Expect::KeyResend && was_up {
                return self.register_anew();
            }
            if let (true, Expect::CrcOkAck { attempt, cksum }) =
                (self.verdict_in_doubt, self.expect)
            {
                return self.finish(Outcome::OutcomeUnknown {
                    attempts: attempt,
                    cksum,
                });
            }
            let request = self.expect.request();
            return self.finish(match cause {
                RetryCause::ServerError => Outcome::ServerError { request },
                RetryCause::ConnectionLost(_) | RetryCause::NoAnswer => {
                    Outcome::ConnectionFailed { request }
                }
            });
        };
        if let Expect::FileReceived { attempt, .. } = self.expect {
            self.expect = Expect::FileSent { attempt };
        }
        self.actions.push_back(Action::Connect { delay });
    }

    fn unexpected(&mut self, got: ResponseKind) {
        let awaiting = self.expect.describe(self.rev);
        let code = self.rev.spec().response_base + got as u16;
        self.violation(Violation::Unexpected {
            awaiting,
            got,
            code,
        });
    }

    /// Decrypts the AES key of a 2102/2105 (§4) and checks its size (§9).
    fn decrypt(
        &self,
        key: &RsaPrivateKey,
        encrypted: &[u8; ENCRYPTED_KEY_LEN],
        rng: &mut dyn Entropy,
    ) -> Result<AesKey, Violation> {
        let aes = key
            .decrypt_aes_key(encrypted, rng)
            .map_err(|_| Violation::UndecryptableKey)?;
        let expected = self.rev.aes_key_len();
        if aes.as_bytes().len() != expected {
            return Err(Violation::KeySize {
                got: aes.as_bytes().len(),
                expected,
            });
        }
        Ok(aes)
    }

    fn violation(&mut self, v: Violation) {
        self.finish(Outcome::ProtocolViolation(v));
    }

    /// Ends the current file, or the session: a per-file outcome moves
    /// on to the next file, if any, on the same connection when it is up.
    fn finish(&mut self, outcome: Outcome) {
        self.finished_attempts = self.attempts();
        let started = !matches!(
            self.expect,
            Expect::Registered
                | Expect::KeyPair
                | Expect::KeyAccepted
                | Expect::Reconnect
                | Expect::KeyResend
        );
        if started {
            self.events.push_back(Event::FileFinished {
                file: self.current,
                outcome: outcome.clone(),
            });
        }
        if started && outcome.is_per_file() && self.current + 1 < self.files.len() {
            self.current += 1;
            self.progressed();
            self.verdict_in_doubt = false;
            self.local_cksum = None;
            self.finished_attempts = 0;
            self.note_packet_size();
            self.expect = Expect::FileSent { attempt: 1 };
            if self.link_up {
                self.send_current();
            } else {
                self.actions.clear();
                self.actions
                    .push_back(Action::Connect { delay: RETRY_DELAY });
            }
            return;
        }
        self.expect = Expect::Done;
        self.actions.clear();
        self.outcome = Some(outcome);
    }
}

#[cfg(test)]
mod tests;
