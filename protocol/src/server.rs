//! The server side of one connection: [`ServerSession`] (PROTOCOL.md §3, §6).
//!
//! Driving contract, for each connection:
//!
//! 1. Feed received bytes with [`ServerSession::handle_input`]. It takes
//!    what it can and leaves the rest in the slice: it stops early when its
//!    output is full (backpressure: stop reading the socket until
//!    [`ServerSession::wants_input`] is true again) or after
//!    [`MAX_REQUESTS_PER_CALL`] requests (call again).
//! 2. Write [`ServerSession::pending_output`] to the socket and report what
//!    was written with [`ServerSession::consume_output`].
//! 3. Once per pass of the loop, if the store has changes waiting
//!    ([`Store::uncommitted`]), call [`Store::commit`] and hand each
//!    session that [`ServerSession::holds_output`] its outcome with
//!    [`ServerSession::handle_commit`]. An answer produced while the store
//!    had uncommitted changes is held (not in `pending_output`) until
//!    then: released if durable, replaced by a 2107 and a close if not.
//!    With a store that answers later ("Stores that answer later" in
//!    [`crate::store`]): start commits with [`Store::begin_commit`], relay
//!    each finished one with [`ServerSession::handle_commit_of`], and call
//!    [`ServerSession::handle_store_ready`] for every connection
//!    [`Store::take_ready`] names (a parked request takes no input until
//!    then).
//! 4. Drain [`ServerSession::poll_event`] for logging.
//! 5. Arm a timer for [`ServerSession::poll_timeout`] and call
//!    [`ServerSession::handle_timeout`] when it passes (or early: it is
//!    idempotent).
//! 6. On end of stream call [`ServerSession::handle_eof`]. When
//!    [`ServerSession::is_finished`] is true, call
//!    [`ServerSession::close`] and drop the connection.
//!
//! Errors are [`SessionError`] values; [`answer_to`] is the one place that
//! decides which answer each gets on the wire.
//!
//! Time comes in as an argument and randomness through [`Entropy`], so the
//! session is deterministic under test.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::cksum::Cksum;
use crate::consts::*;
use crate::crypto::{AesKey, AesKeySize, CbcDecryptor, Entropy, RsaPublicKey};
use crate::decode::{RequestDecoder, RequestEvent, RevisionChoice};
use crate::error::{
    DecodeError, ReconnectError, Refusal, RegistrationError, SessionError, StoredKey,
};
use crate::message::{
    PacketHeader, Request, RequestHeader, RequestKind, Response, ResponseKind, Revision,
};
use crate::packets::{Granularity, PacketRun, PacketStep, Remainder};
use crate::store::{
    Commit, CommitRefusal, ConnId, Ctx, Durability, Lookup, Readiness, Store, UploadSummary,
    Verdict, VerdictOutcome,
};
use crate::wire::{sanitize_file_name, ClientId, FixedName};

/// Most complete requests handled in one [`ServerSession::handle_input`]
/// call, so one connection's pipelined burst cannot hog the event loop.
pub const MAX_REQUESTS_PER_CALL: usize = 64;
/// Most AES keys a connection remembers, one per client id it exchanged
/// keys for (§6 "keys"); a connection rarely needs more than one.
pub const MAX_CONNECTION_KEYS: usize = 4;
/// Content is decrypted and written in pieces of at most this size, which
/// bounds the session's scratch buffer whatever the driver feeds it.
pub const DECRYPT_PIECE: usize = 256 * 1024;

/// Limits and timeouts of a server connection. Every field has a default
/// chosen for a file drop on the open internet.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Protocol revision of the connection, fixed or detected from its
    /// first request (§9). Default: fixed 2023c.
    pub revision: RevisionChoice,
    /// Largest 1028 content_size accepted (encrypted bytes); larger ones
    /// are refused from the header alone. Default: the protocol's own
    /// limit, [`MAX_CONTENT_SIZE`] (about 4 GiB).
    pub max_content: u64,
    /// Time allowed from the first byte of a request to the end of its
    /// header and fixed payload. Default 10 s: a header is at most 438
    /// bytes, so only a stalled or hostile peer needs longer.
    pub header_timeout: Duration,
    /// Time a connection may sit between requests, or with a response the
    /// peer does not read. Default 120 s, as the reference server.
    pub idle_timeout: Duration,
    /// While file content streams, at least `min_progress_bytes` must
    /// arrive in every window of this length. Default 10 s.
    pub progress_window: Duration,
    /// Bytes required per `progress_window`. Default 64 KiB, i.e. a floor
    /// of 6.4 KiB/s: a client trickling a byte a second is closed.
    pub min_progress_bytes: u64,
    /// Output buffered for a peer that is not reading before the session
    /// stops taking input. Default 64 KiB (a few hundred responses).
    pub max_output: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            revision: RevisionChoice::default(),
            max_content: MAX_CONTENT_SIZE as u64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            progress_window: Duration::from_secs(10),
            min_progress_bytes: 64 * 1024,
            max_output: 64 * 1024,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A frame could not be decoded; 2107 was sent (§3).
    Decode(DecodeError),
    /// A request header did not complete within `header_timeout`.
    HeaderTimeout,
    /// No request within `idle_timeout`.
    IdleTimeout,
    /// File content arrived slower than the configured minimum rate.
    TooSlow,
    /// The peer did not read its responses within `idle_timeout`.
    WriteStalled,
    /// The peer closed between requests.
    PeerClosed,
    /// The peer closed in the middle of a request.
    PeerClosedMidFrame,
    /// The driver closed the connection (shutdown, I/O error).
    Local,
    /// A request was refused in a revision that has no error response
    /// (2022c, §9): closed without one, so the client reconnects and
    /// retries.
    NoErrorResponse,
    /// The store could not make durable what answers the session held
    /// acknowledged; they were replaced by a 2107
    /// ([`ServerSession::handle_commit`]).
    NotDurable,
    /// The store refused, when it committed, an upload the session had
    /// accepted (a shared database's last word: client forgotten, name
    /// deleted, quota): the refusal was answered and counted
    /// ([`Commit::refused`]).
    RefusedAtCommit,
}

/// A verdict as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictKind {
    /// 1029.
    CrcOk,
    /// 1030.
    CrcBad,
    /// 1031.
    CrcGiveUp,
}

/// Something that happened, for the log. Carries no key material and no
/// file content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// 2100 sent.
    Registered {
        /// The new id.
        client_id: ClientId,
        /// The name.
        name: String,
        /// An earlier record of that name that had no key was released.
        replaced: bool,
    },
    /// 2101 sent.
    RegistrationFailed {
        /// The name asked for, lossily decoded.
        name: String,
        /// Why.
        reason: RegistrationError,
    },
    /// 2102 sent.
    KeyAccepted {
        /// The client.
        client_id: ClientId,
    },
    /// 2105 sent.
    Reconnected {
        /// The client.
        client_id: ClientId,
    },
    /// 2106 sent.
    ReconnectDenied {
        /// The id of the refused 1027.
        client_id: ClientId,
        /// Why.
        reason: ReconnectError,
    },
    /// A 1028 began streaming.
    UploadStarted {
        /// The client.
        client_id: ClientId,
        /// The stored base name (or the raw text, lossily, if refused).
        file_name: String,
        /// Encrypted size.
        content_size: u32,
        /// 1 for a first send, more after 1030s.
        attempt: u32,
    },
    /// A 1028 was received completely and answered with 2103.
    UploadReceived {
        /// The client.
        client_id: ClientId,
        /// The stored base name.
        file_name: String,
        /// Plaintext bytes.
        bytes: u64,
        /// POSIX cksum of the plaintext.
        cksum: u32,
        /// Which send this was.
        attempt: u32,
        /// Time from the 1028 header to its last byte.
        duration: Duration,
    },
    /// A verdict was applied (or found nothing to apply to).
    Verdict {
        /// The client.
        client_id: ClientId,
        /// The base name.
        file_name: String,
        /// Which verdict.
        verdict: VerdictKind,
        /// Whether an upload awaiting a verdict was found.
        applied: bool,
        /// Whether the accepted upload replaces a verified file of that
        /// name.
        replaced: bool,
        /// Sends of this file on this connection so far.
        attempts: u32,
        /// Plaintext bytes and cksum of the last send, if this connection
        /// received it.
        last: Option<UploadSummary>,
        /// Time from the first send's header on this connection to the
        /// verdict; for an upload received on another connection, from
        /// its header ([`crate::store::Store::pending_since`]).
        duration: Option<Duration>,
    },
    /// A well-formed request was answered with 2107; the connection stays.
    Refused {
        /// The request.
        kind: RequestKind,
        /// Its client id.
        client_id: ClientId,
        /// Why.
        reason: Refusal,
    },
    /// The connection's revision was detected from its requests (§9).
    RevisionDetected {
        /// The revision it speaks.
        revision: Revision,
    },
    /// The session is closing.
    Closing(CloseReason),
}

/// What the session does about a [`SessionError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Send a response of this kind; the connection stays.
    Send(ResponseKind),
    /// Send a response of this kind, then close.
    SendAndClose(ResponseKind),
    /// Close without a word (the peer is gone).
    Close,
}

/// The one place that decides the wire answer to every error (§3, §9):
/// 2101 for a refused registration, 2106 for a refused reconnect, 2107 for
/// a refused request (the connection stays), 2107 and a close when framing
/// is lost or held answers could not be made durable, and only a close
/// when the stream ended inside a frame. In the 2024 revisions these are
/// 1601, 1606 and 1607. A revision without the response (2022c has no
/// 2105-2107) closes the connection without a word instead: its clients
/// reconnect and retry.
pub fn answer_to(error: &SessionError, rev: Revision) -> Answer {
    let answer = match error {
        SessionError::Registration(_) => Answer::Send(ResponseKind::RegistrationFailed),
        SessionError::Reconnect(_) => Answer::Send(ResponseKind::ReconnectDenied),
        SessionError::Refused(_) => Answer::Send(ResponseKind::GeneralError),
        SessionError::Decode(DecodeError::Truncated) => Answer::Close,
        SessionError::Decode(_) | SessionError::NotDurable => {
            Answer::SendAndClose(ResponseKind::GeneralError)
        }
    };
    match answer {
        Answer::Send(kind) | Answer::SendAndClose(kind) if !rev.has_response(kind) => Answer::Close,
        other => other,
    }
}

/// Where a file message's decrypted content goes.
struct Sink<U> {
    upload: U,
    /// The key, to start a fresh decryptor for each separately encrypted
    /// 2024 packet.
    key: AesKey,
    decryptor: CbcDecryptor,
    cksum: Cksum,
    /// The key is the client's stored last key, not one this connection
    /// exchanged (§6 "keys").
    stored_key: bool,
}

/// What happens to the content of the 1028 being received.
enum Content<U> {
    /// Decrypted into the store (boxed: the decryptor's key schedule is
    /// large, and most connections never upload).
    Storing(Box<Sink<U>>),
    /// Read and dropped; the request is refused with this once complete.
    Dropping(Refusal),
}

/// The upload being received: one file message, or the packets of one
/// 2024 upload.
struct Incoming<U> {
    client_id: ClientId,
    /// The file_name field of the (first) message, echoed in 2103/1603.
    file_name: FixedName,
    base: String,
    /// content_size of the latest message, echoed in 2103/1603.
    content_size: u32,
    started: Instant,
    attempt: u32,
    content: Content<U>,
    /// The 2024 packet sequence, in a packet layout.
    packets: Option<PacketRun>,
    /// The packets still to come if the upload is refused at the current
    /// one (none after its last packet, or for a single file message).
    rest: Option<Remainder>,
}

/// Stands for "no request" in [`ServerSession::fail`] for the errors that
/// belong to the connection, not to a request (a frame that does not
/// decode, answers that could not be made durable): only the answer and
/// the close come of them, never an event naming a request.
const NO_REQUEST: RequestHeader = RequestHeader {
    client_id: ClientId::ZERO,
    version: PROTOCOL_VERSION,
    kind: RequestKind::Register,
    payload_size: 0,
};

/// A file message's header and prefix, as the decoder handed them over.
struct FileMessage {
    header: RequestHeader,
    content_size: u32,
    file_name: FixedName,
    data_len: u32,
}

/// Why a complete 1028 could not be kept.
enum FinishError {
    BadPadding,
    Store(crate::store::StoreError),
}

/// File names a session keeps `Attempts` for at once: more than the
/// uploads one connection may have awaiting a verdict
/// ([`crate::store::DEFAULT_MAX_PENDING_PER_CONN`]), so each of those
/// keeps its count and start; past it the oldest name's record goes.
pub const TRACKED_FILE_NAMES: usize = 4 * crate::store::DEFAULT_MAX_PENDING_PER_CONN;

/// Sends of one file name on this connection, to report attempt numbers
/// and time the upload to its verdict.
struct Attempts {
    client_id: ClientId,
    base: String,
    count: u32,
    /// When the first send began.
    started: Instant,
    /// Size and cksum of the last complete send.
    last: Option<UploadSummary>,
}

/// Where the session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking requests.
    Open,
    /// No more input; the last output is being written.
    Closing(CloseReason),
    /// [`ServerSession::close`] released everything.
    Closed(CloseReason),
}

/// Responses not yet written. Bytes from the first hold on wait for a
/// commit.
#[derive(Debug, Default)]
struct Output {
    buf: Vec<u8>,
    pos: usize,
    /// Answers waiting for a commit, in order: where each run starts (an
    /// index into `buf`; it ends where the next starts) and the store
    /// batch it waits for ([`Store::batch`]).
    held: VecDeque<(usize, u64)>,
}

impl Output {
    /// Where the held answers start (the end of what may be written).
    fn held_start(&self) -> usize {
        self.held.front().map_or(self.buf.len(), |h| h.0)
    }

    /// What may be written now.
    fn released(&self) -> &[u8] {
        &self.buf[self.pos..self.held_start()]
    }

    /// Every byte not yet written, held ones included.
    fn unsent(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.held_start());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            for h in &mut self.held {
                h.0 = 0;
            }
        } else if self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            for h in &mut self.held {
                h.0 -= self.pos;
            }
            self.pos = 0;
        }
    }

    /// Holds everything from `mark` (an earlier `buf.len()`) on for
    /// `batch`.
    fn hold_from(&mut self, mark: usize, batch: u64) {
        match self.held.back() {
            Some(&(_, b)) if b >= batch => {}
            Some(&(start, _)) => self.held.push_back((mark.max(start), batch)),
            None => self.held.push_back((mark.max(self.pos), batch)),
        }
    }

    /// Releases the answers held for `batch` or an earlier one.
    fn release_through(&mut self, batch: u64) {
        while self.held.front().is_some_and(|h| h.1 <= batch) {
            self.held.pop_front();
        }
    }

    /// Drops the held answers.
    fn withdraw(&mut self) {
        if let Some(&(h, _)) = self.held.front() {
            self.buf.truncate(h);
        }
        self.held.clear();
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.held.clear();
    }
}

/// A request whose records the store is still fetching
/// ([`Store::prepare`]); decided when they arrive.
enum Parked {
    Request(RequestHeader, Request),
    File(FileMessage, Option<PacketHeader>),
}

/// The server side of one connection. See the module docs for how to drive it.
pub struct ServerSession<U> {
    config: ServerConfig,
    conn: ConnId,
    decoder: RequestDecoder,
    out: Output,
    events: VecDeque<ServerEvent>,
    keys: Vec<(ClientId, AesKey)>,
    incoming: Option<Incoming<U>>,
    /// One record per file name sent and not yet given its final verdict
    /// (several can await theirs at once), oldest first, at most
    /// [`TRACKED_FILE_NAMES`].
    attempts: VecDeque<Attempts>,
    scratch: Vec<u8>,
    phase: Phase,
    last_activity: Instant,
    frame_started: Option<Instant>,
    progress_deadline: Instant,
    window_bytes: u64,
    /// A request waiting for the store's reads.
    parked: Option<Parked>,
    /// A 2024 upload refused before its last packet, and its client: its
    /// packets still to come are read and dropped without an answer (one
    /// answer per upload, [`crate::packets::Remainder`]).
    leftover: Option<(ClientId, Remainder)>,
}

impl<U> ServerSession<U> {
    /// A session for connection `conn` (the driver's serial number for it,
    /// which the store sees in every call) accepted at `now`.
    pub fn new(config: ServerConfig, conn: ConnId, now: Instant) -> Self {
        ServerSession {
            decoder: RequestDecoder::with_choice(config.revision, config.max_content),
            config,
            conn,
            out: Output::default(),
            events: VecDeque::new(),
            keys: Vec::new(),
            incoming: None,
            attempts: VecDeque::new(),
            scratch: Vec::new(),
            phase: Phase::Open,
            last_activity: now,
            frame_started: None,
            progress_deadline: now,
            window_bytes: 0,
            parked: None,
            leftover: None,
        }
    }

    /// The connection this session serves, as the store knows it.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Takes bytes from `input` (see the module docs). Bytes left in
    /// `input` must be offered again later.
    pub fn handle_input<S: Store<Upload = U>>(
        &mut self,
        input: &mut &[u8],
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) {
        let mut requests = 0;
        let before = input.len();
        while self.wants_input() && requests < MAX_REQUESTS_PER_CALL {
            let mark = self.out.buf.len();
            let decided = self.decoder.is_decided();
            match self.decoder.decode(input) {
                Ok(None) => break,
                Ok(Some(event)) => {
                    if !decided && self.decoder.is_decided() {
                        self.events.push_back(ServerEvent::RevisionDetected {
                            revision: self.decoder.revision(),
                        });
                    }
                    if self.on_event(event, now, store, rng) {
                        requests += 1;
                    }
                }
                Err(e) => {
                    self.fail(&NO_REQUEST, &[], SessionError::Decode(e), store);
                }
            }
            if store.uncommitted() && self.out.buf.len() > mark {
                self.out.hold_from(mark, store.batch());
            }
        }
        let taken = (before - input.len()) as u64;
        self.update_timers(now, taken);
    }

    /// The store's reads for the parked request arrived ([`Store::take_ready`]
    /// named this connection): decides it. Input is taken again after.
    pub fn handle_store_ready<S: Store<Upload = U>>(
        &mut self,
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) {
        let Some(parked) = self.parked.take() else {
            return;
        };
        if self.phase != Phase::Open {
            return;
        }
        let mark = self.out.buf.len();
        match parked {
            Parked::Request(header, request) => {
                if self.dispatch_request(header, request, now, store, rng) {
                    self.request_done(now);
                }
            }
            Parked::File(message, packet) => self.dispatch_file(message, packet, now, store),
        }
        if store.uncommitted() && self.out.buf.len() > mark {
            self.out.hold_from(mark, store.batch());
        }
    }

    /// True while a request waits for the store's reads.
    pub fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// The peer closed its side of the connection.
    pub fn handle_eof<S: Store<Upload = U>>(&mut self, store: &mut S) {
        let reason = match self.decoder.finish() {
            Ok(()) => CloseReason::PeerClosed,
            Err(_) => CloseReason::PeerClosedMidFrame,
        };
        // What is already answered is still written: a client that
        // half-closes after its last request gets its replies.
        self.start_close(reason, store);
    }

    /// The next deadline at which [`ServerSession::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed(_) => return None,
            // Flushing a last response.
            Phase::Closing(_) => return Some(self.last_activity + self.config.idle_timeout),
            Phase::Open => {}
        }
        if self.output_blocked() {
            // A peer not reading.
            return Some(self.last_activity + self.config.idle_timeout);
        }
        if self.decoder.in_content() {
            return Some(self.progress_deadline);
        }
        if let Some(start) = self.frame_started {
            return Some(start + self.config.header_timeout);
        }
        Some(self.last_activity + self.config.idle_timeout)
    }

    /// Applies any deadline that has passed. Idempotent.
    pub fn handle_timeout<S: Store<Upload = U>>(&mut self, now: Instant, store: &mut S) {
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        if matches!(self.phase, Phase::Closing(_)) {
            self.out.clear();
            return;
        }
        let reason = if self.output_blocked() {
            CloseReason::WriteStalled
        } else if self.decoder.in_content() {
            CloseReason::TooSlow
        } else if self.frame_started.is_some() {
            CloseReason::HeaderTimeout
        } else {
            CloseReason::IdleTimeout
        };
        self.start_close(reason, store);
        self.out.clear();
    }

    /// Bytes that may be written to the peer now (answers held for a
    /// commit are not among them).
    pub fn pending_output(&self) -> &[u8] {
        self.out.released()
    }

    /// Reports that `n` bytes of [`ServerSession::pending_output`] were written.
    pub fn consume_output(&mut self, n: usize, now: Instant) {
        self.out.consume(n);
        if n > 0 {
            self.last_activity = now;
        }
    }

    /// True while answers wait for the outcome of the store's next commit
    /// ([`ServerSession::handle_commit`]).
    pub fn holds_output(&self) -> bool {
        !self.out.held.is_empty()
    }

    /// A commit finished ([`Store::begin_commit`], [`Store::poll_commit`]):
    /// the answers held for its batch or an earlier one are released if it
    /// made this connection's changes durable; if not, every held answer
    /// is withdrawn, replaced by a 2107, and the session closes (as
    /// [`ServerSession::handle_commit`]). Answers held for a later batch
    /// wait for their own commit.
    pub fn handle_commit_of<S: Store<Upload = U>>(&mut self, commit: &Commit, store: &mut S) {
        if self.out.held.is_empty() {
            return;
        }
        if let Some(refusal) = commit.refusal(self.conn) {
            self.refused_at_commit(refusal, store);
            return;
        }
        match commit.outcome(self.conn) {
            Durability::Durable => self.out.release_through(commit.batch),
            Durability::Failed => self.handle_commit(Durability::Failed, store),
        }
    }

    /// The store refused this connection's accepted upload when it
    /// committed ([`Commit::refused`]): the held answers are withdrawn,
    /// the refusal is answered as the 1029's (2107, or a close in a
    /// revision without it) and counted as a refusal, and the session
    /// closes, since answers held after it may have assumed the upload
    /// kept.
    fn refused_at_commit<S: Store<Upload = U>>(&mut self, refusal: &CommitRefusal, store: &mut S) {
        self.out.withdraw();
        let header = RequestHeader {
            client_id: refusal.client_id,
            kind: RequestKind::CrcOk,
            ..NO_REQUEST
        };
        let error = SessionError::Refused(refusal.error.clone().into());
        self.fail(&header, &[], error, store);
        self.start_close(CloseReason::RefusedAtCommit, store);
    }

    /// The outcome of the commit the held answers waited for: released
    /// when durable; when not, they are withdrawn and replaced by a 2107,
    /// and the session closes (its own view of what it sent, a key or an
    /// upload awaiting its verdict, may be wrong; the client's retry
    /// starts over on a new connection).
    pub fn handle_commit<S: Store<Upload = U>>(&mut self, outcome: Durability, store: &mut S) {
        if self.out.held.is_empty() {
            return;
        }
        match outcome {
            Durability::Durable => self.out.held.clear(),
            Durability::Failed => {
                self.out.withdraw();
                self.fail(&NO_REQUEST, &[], SessionError::NotDurable, store);
            }
        }
    }

    /// Whether the session takes more input now (false while closing or
    /// while its output is full).
    pub fn wants_input(&self) -> bool {
        self.phase == Phase::Open && !self.output_blocked() && self.parked.is_none()
    }

    /// True once the session is closing and its last output is written:
    /// the driver closes the socket.
    pub fn is_finished(&self) -> bool {
        self.phase != Phase::Open && self.out.unsent() == 0
    }

    /// Why the session is closing, if it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.phase {
            Phase::Closing(reason) | Phase::Closed(reason) => Some(reason),
            Phase::Open => None,
        }
    }

    /// Whether output, held or not, is still to be written.
    pub fn has_unsent_output(&self) -> bool {
        self.out.unsent() > 0
    }

    /// Encrypted bytes of the current 1028 still to come, if one is
    /// streaming: lets the driver size its reads so they do not run far
    /// past the content into requests it may have to hold back.
    pub fn content_remaining(&self) -> Option<u32> {
        self.decoder.content_remaining()
    }

    /// True when no request is partly received.
    pub fn is_idle(&self) -> bool {
        self.decoder.is_between_frames() && self.incoming.is_none() && self.parked.is_none()
    }

    /// The next event for the log.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Releases everything the session holds in the store: an upload in
    /// progress is thrown away, and the store is told the connection
    /// closed (its uploads awaiting a verdict become orphans). Call once
    /// before dropping the session; later calls do nothing.
    pub fn close<S: Store<Upload = U>>(&mut self, now: Instant, store: &mut S) {
        let reason = match self.phase {
            Phase::Closed(_) => return,
            Phase::Closing(reason) => reason,
            Phase::Open => {
                self.events
                    .push_back(ServerEvent::Closing(CloseReason::Local));
                CloseReason::Local
            }
        };
        self.phase = Phase::Closed(reason);
        self.abort_incoming(store);
        store.connection_closed(Ctx {
            conn: self.conn,
            now,
        });
    }

    fn output_blocked(&self) -> bool {
        self.out.unsent() >= self.config.max_output
    }

    fn ctx(&self, now: Instant) -> Ctx {
        Ctx {
            conn: self.conn,
            now,
        }
    }

    fn start_close<S: Store<Upload = U>>(&mut self, reason: CloseReason, store: &mut S) {
        if self.phase != Phase::Open {
            return;
        }
        self.phase = Phase::Closing(reason);
        self.events.push_back(ServerEvent::Closing(reason));
        self.parked = None;
        self.abort_incoming(store);
    }

    fn abort_incoming<S: Store<Upload = U>>(&mut self, store: &mut S) {
        if let Some(inc) = self.incoming.take() {
            if let Content::Storing(sink) = inc.content {
                store.abort_upload(sink.upload);
            }
        }
    }

    /// After input was taken: counts content progress, and starts the
    /// header deadline when a new request is partly received. Completed
    /// requests reset the timers in [`Self::request_done`], so a client
    /// pipelining whole requests never runs into the header deadline.
    fn update_timers(&mut self, now: Instant, taken: u64) {
        if self.decoder.in_content() {
            self.window_bytes += taken;
            if self.window_bytes >= self.config.min_progress_bytes {
                self.window_bytes = 0;
                self.progress_deadline = now + self.config.progress_window;
            }
        } else if !self.decoder.is_between_frames() && self.frame_started.is_none() {
            self.frame_started = Some(now);
        }
    }

    /// A request completed at `now`: the idle clock restarts from it and
    /// the next partial request gets a fresh header deadline.
    fn request_done(&mut self, now: Instant) {
        self.frame_started = None;
        self.last_activity = now;
    }

    fn send(&mut self, response: Response) {
        response.encode(self.answer_revision(), &mut self.out.buf);
    }

    /// The revision answers are written in. While 2022c and 2023a are not
    /// told apart yet this is 2022c: its responses (2100-2104) are 2023a's
    /// too, and it has no error response, so an error closes the
    /// connection as both revisions' clients survive.
    pub fn answer_revision(&self) -> Revision {
        if self.decoder.is_decided() {
            self.decoder.revision()
        } else {
            Revision::R2022c
        }
    }

    /// A fresh AES key of the size the connection's revision uses.
    fn new_key(&self, rng: &mut dyn Entropy) -> AesKey {
        let size = AesKeySize::from_len(self.answer_revision().aes_key_len())
            .unwrap_or(AesKeySize::Aes128);
        AesKey::generate_sized(rng, size)
    }

    /// Reports an error and answers it as [`answer_to`] decides.
    /// `request_name` is the 1025's name field (for the log).
    fn fail<S: Store<Upload = U>>(
        &mut self,
        header: &RequestHeader,
        request_name: &[u8],
        error: SessionError,
        store: &mut S,
    ) {
        let answer = answer_to(&error, self.answer_revision());
        let close = match error {
            SessionError::Registration(reason) => {
                self.events.push_back(ServerEvent::RegistrationFailed {
                    name: String::from_utf8_lossy(request_name).into_owned(),
                    reason,
                });
                None
            }
            SessionError::Reconnect(reason) => {
                self.events.push_back(ServerEvent::ReconnectDenied {
                    client_id: header.client_id,
                    reason,
                });
                None
            }
            // The Verdict event already tells the log.
            SessionError::Refused(Refusal::NothingPending) => None,
            SessionError::Refused(reason) => {
                self.events.push_back(ServerEvent::Refused {
                    kind: header.kind,
                    client_id: header.client_id,
                    reason,
                });
                None
            }
            SessionError::Decode(e) => Some(CloseReason::Decode(e)),
            SessionError::NotDurable => Some(CloseReason::NotDurable),
        };
        let (kind, close) = match answer {
            Answer::Send(kind) | Answer::SendAndClose(kind) => (Some(kind), close),
            // The revision has no such response: say nothing, close.
            Answer::Close => (None, close.or(Some(CloseReason::NoErrorResponse))),
        };
        match kind {
            Some(ResponseKind::RegistrationFailed) => self.send(Response::RegistrationFailed),
            Some(ResponseKind::ReconnectDenied) => self.send(Response::ReconnectDenied {
                client_id: header.client_id,
            }),
            Some(_) => self.send(Response::GeneralError),
            None => {}
        }
        if let Some(reason) = close {
            self.start_close(reason, store);
        }
    }

    /// Handles one decoder event; true when it completed a request.
    fn on_event<S: Store<Upload = U>>(
        &mut self,
        event: RequestEvent<'_>,
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) -> bool {
        match event {
            RequestEvent::Request(header, request) => {
                // Any other request ends a refused upload's dropping.
                self.leftover = None;
                let done = self.dispatch_request(header, request, now, store, rng);
                if done {
                    self.request_done(now);
                }
                done
            }
            RequestEvent::FileStart {
                header,
                content_size,
                file_name,
                data_len,
                packet,
            } => {
                // The header deadline is over; the first progress window starts.
                self.frame_started = None;
                self.window_bytes = 0;
                self.progress_deadline = now + self.config.progress_window;
                if let Some(p) = &packet {
                    if self.drops_leftover(&header.client_id, p) {
                        // Its content is read and dropped (nothing is
                        // incoming), its end answers nothing.
                        return false;
                    }
                }
                self.leftover = None;
                let message = FileMessage {
                    header,
                    content_size,
                    file_name,
                    data_len,
                };
                self.dispatch_file(message, packet, now, store);
                false
            }
            RequestEvent::FileData(data) => {
                self.on_file_data(data, store);
                false
            }
            RequestEvent::FileEnd => {
                self.on_file_end(now, store, rng);
                self.request_done(now);
                true
            }
        }
    }

    /// Whether packet `p` from `client_id` continues the refused upload
    /// whose packets are being dropped: then it is dropped too, and the
    /// dropping ends with it if it is that upload's last packet. Anything
    /// else ends the dropping.
    fn drops_leftover(&mut self, client_id: &ClientId, p: &PacketHeader) -> bool {
        let Some((id, rest)) = self.leftover.take() else {
            return false;
        };
        if id != *client_id {
            return false;
        }
        match rest.continues(p) {
            Some(last) => {
                if !last {
                    self.leftover = Some((id, rest));
                }
                true
            }
            None => false,
        }
    }

    /// Decides a request, or parks it while the store fetches what it
    /// reads ([`Store::prepare`]); true when decided.
    fn dispatch_request<S: Store<Upload = U>>(
        &mut self,
        header: RequestHeader,
        request: Request,
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) -> bool {
        let name = match &request {
            Request::Register { name } => name.printable(),
            _ => None,
        };
        let lookups: &[Lookup<'_>] = match (&request, name) {
            (Request::Register { .. }, Some(name)) => &[Lookup::Name(name)],
            (Request::Register { .. }, None) => &[],
            _ => &[Lookup::Id(&header.client_id)],
        };
        if store.prepare(self.ctx(now), lookups) == Readiness::Pending {
            self.parked = Some(Parked::Request(header, request));
            return false;
        }
        self.on_request(header, request, now, store, rng);
        true
    }

    /// Starts a file message, or parks it while the store fetches the
    /// client's record.
    fn dispatch_file<S: Store<Upload = U>>(
        &mut self,
        message: FileMessage,
        packet: Option<PacketHeader>,
        now: Instant,
        store: &mut S,
    ) {
        let lookups = [Lookup::Id(&message.header.client_id)];
        if store.prepare(self.ctx(now), &lookups) == Readiness::Pending {
            self.parked = Some(Parked::File(message, packet));
            return;
        }
        match packet {
            None => self.on_file_start(message, now, store),
            Some(p) => self.on_packet_start(message, p, now, store),
        }
    }

    fn on_request<S: Store<Upload = U>>(
        &mut self,
        header: RequestHeader,
        request: Request,
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) {
        let result = match &request {
            Request::Register { name } => self.on_register(name, now, store, rng),
            Request::PublicKey { name, public_key } => {
                self.on_public_key(&header, name, public_key, now, store, rng)
            }
            Request::Reconnect { name } => self.on_reconnect(&header, name, now, store, rng),
            Request::CrcOk { file_name } => {
                self.on_verdict(&header, file_name, VerdictKind::CrcOk, now, store)
            }
            Request::CrcBad { file_name } => {
                self.on_verdict(&header, file_name, VerdictKind::CrcBad, now, store)
            }
            Request::CrcGiveUp { file_name } => {
                self.on_verdict(&header, file_name, VerdictKind::CrcGiveUp, now, store)
            }
        };
        if let Err(error) = result {
            let name: &[u8] = match &request {
                Request::Register { name } => name.text(),
                _ => &[],
            };
            self.fail(&header, name, error, store);
        }
    }

    /// 1025 (§3 2100/2101).
    fn on_register<S: Store<Upload = U>>(
        &mut self,
        name: &FixedName,
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) -> Result<(), SessionError> {
        let Some(text) = name.printable() else {
            return Err(SessionError::Registration(RegistrationError::NameUnusable));
        };
        let replace = match store.client_by_name(text)? {
            Some(rec) if rec.public_key.is_some() => {
                return Err(SessionError::Registration(RegistrationError::NameTaken));
            }
            Some(rec) => Some(rec.id),
            None => None,
        };
        let id = new_client_id(store, rng)?;
        store.register_client(self.ctx(now), &id, text, replace.as_ref())?;
        self.events.push_back(ServerEvent::Registered {
            client_id: id,
            name: text.to_owned(),
            replaced: replace.is_some(),
        });
        self.send(Response::Registered { client_id: id });
        Ok(())
    }

    /// 1026 (§3 2102, §4).
    fn on_public_key<S: Store<Upload = U>>(
        &mut self,
        header: &RequestHeader,
        name: &FixedName,
        public_key: &[u8; PUBLIC_KEY_LEN],
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) -> Result<(), SessionError> {
        let id = header.client_id;
        let cx = self.ctx(now);
        let rec = store.client_by_id(&id)?.ok_or(Refusal::UnknownClient)?;
        store.touch(cx, &id)?;
        if rec.name.as_bytes() != name.text() {
            return Err(Refusal::NameMismatch.into());
        }
        let key = RsaPublicKey::from_spki_der(public_key).map_err(Refusal::PublicKeyRefused)?;
        let aes = self.new_key(rng);
        let encrypted = key
            .encrypt_aes_key(&aes, rng)
            .map_err(Refusal::KeyEncryption)?;
        store.set_public_key(cx, &id, public_key, &aes)?;
        self.remember_key(id, aes);
        self.events
            .push_back(ServerEvent::KeyAccepted { client_id: id });
        self.send(Response::KeyAccepted {
            client_id: id,
            encrypted_key: Box::new(encrypted),
        });
        Ok(())
    }

    /// 1027 (§3 2105/2106).
    fn on_reconnect<S: Store<Upload = U>>(
        &mut self,
        header: &RequestHeader,
        name: &FixedName,
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) -> Result<(), SessionError> {
        let id = header.client_id;
        let cx = self.ctx(now);
        let deny = |reason| Err(SessionError::Reconnect(reason));
        let Some(rec) = store.client_by_id(&id)? else {
            return deny(ReconnectError::UnknownClient);
        };
        store.touch(cx, &id)?;
        if rec.name.as_bytes() != name.text() {
            return deny(ReconnectError::NameMismatch);
        }
        let Some(spki) = rec.public_key.as_deref() else {
            return deny(ReconnectError::NoPublicKey);
        };
        let Ok(key) = RsaPublicKey::from_spki_der(spki) else {
            return deny(ReconnectError::StoredKeyUnusable);
        };
        let aes = self.new_key(rng);
        let encrypted = key
            .encrypt_aes_key(&aes, rng)
            .map_err(Refusal::KeyEncryption)?;
        store.set_last_key(cx, &id, &aes)?;
        self.remember_key(id, aes);
        self.events
            .push_back(ServerEvent::Reconnected { client_id: id });
        self.send(Response::ReconnectAccepted {
            client_id: id,
            encrypted_key: Box::new(encrypted),
        });
        Ok(())
    }

    fn remember_key(&mut self, id: ClientId, key: AesKey) {
        self.keys.retain(|(k, _)| *k != id);
        if self.keys.len() >= MAX_CONNECTION_KEYS {
            self.keys.remove(0);
        }
        self.keys.push((id, key));
    }

    /// A single file message (1028, 1103): decide whether its content is
    /// stored or dropped.
    fn on_file_start<S: Store<Upload = U>>(&mut self, m: FileMessage, now: Instant, store: &mut S) {
        self.start_upload(m, Ok(None), None, now, store);
    }

    /// Starts receiving an upload (a single message, or a 2024 upload's
    /// first packet) into the store, or sets it up to be dropped.
    fn start_upload<S: Store<Upload = U>>(
        &mut self,
        m: FileMessage,
        packets: Result<Option<PacketRun>, Refusal>,
        rest: Option<Remainder>,
        now: Instant,
        store: &mut S,
    ) {
        let id = m.header.client_id;
        let base = sanitize_file_name(m.file_name.text()).map(str::to_owned);
        let attempt = self.count_attempt(id, base.as_deref().unwrap_or(""), now);
        // The store sizes its writes by the whole upload.
        let whole = match &packets {
            Ok(Some(run)) if run.granularity == Granularity::Each => {
                u32::try_from(u64::from(m.data_len) * u64::from(run.total)).unwrap_or(u32::MAX)
            }
            _ => m.content_size,
        };
        // The least plaintext the content can decrypt to (PKCS#7 adds 1 to
        // 16 bytes per ciphertext): what the quota is checked against
        // before anything is stored.
        let ciphertexts = match &packets {
            Ok(Some(run)) if run.granularity == Granularity::Each => u64::from(run.total),
            _ => 1,
        };
        let least = u64::from(whole).saturating_sub(AES_BLOCK_LEN as u64 * ciphertexts);
        let (content, packets) = match packets {
            Err(refusal) => (Content::Dropping(refusal), None),
            Ok(run) => match self.open_sink(id, base.as_deref(), whole, least, now, store) {
                Ok(sink) => (Content::Storing(Box::new(sink)), run),
                Err(refusal) => (Content::Dropping(refusal), run),
            },
        };
        let shown = base
            .clone()
            .unwrap_or_else(|| String::from_utf8_lossy(m.file_name.text()).into_owned());
        self.events.push_back(ServerEvent::UploadStarted {
            client_id: id,
            file_name: shown.clone(),
            content_size: m.content_size,
            attempt,
        });
        self.incoming = Some(Incoming {
            client_id: id,
            file_name: m.file_name,
            base: shown,
            content_size: m.content_size,
            started: now,
            attempt,
            content,
            packets,
            rest,
        });
    }

    /// A 2024 packet (§9, [`crate::packets`]): the first of an upload, the
    /// next one, or one that does not fit (refused once its bytes are
    /// read, and the partial upload dropped). Each notes what would be
    /// left of its upload to drop unanswered if the upload is refused at
    /// it (`rest`: nothing at the last packet).
    fn on_packet_start<S: Store<Upload = U>>(
        &mut self,
        m: FileMessage,
        p: PacketHeader,
        now: Instant,
        store: &mut S,
    ) {
        let first_rest = Remainder::of_first(&p).after(&p);
        let Some(inc) = self.incoming.as_mut() else {
            let run = PacketRun::start(&p, m.data_len)
                .map(Some)
                .map_err(Refusal::Packet);
            return self.start_upload(m, run, first_rest, now, store);
        };
        let same_file = inc.client_id == m.header.client_id && inc.file_name == m.file_name;
        let rest = inc
            .packets
            .as_ref()
            .map_or(first_rest, |run| Remainder::of_run(run).after(&p));
        let step = match inc.packets.as_mut() {
            Some(run) => run.next(&p, m.data_len, same_file),
            // A refused first packet left nothing to continue.
            None => Ok(PacketStep::Restart),
        };
        match step {
            Ok(PacketStep::Next { .. }) => {
                inc.content_size = m.content_size;
                inc.rest = rest;
            }
            Ok(PacketStep::Restart) => {
                self.abort_incoming(store);
                let run = PacketRun::start(&p, m.data_len)
                    .map(Some)
                    .map_err(Refusal::Packet);
                self.start_upload(m, run, first_rest, now, store);
            }
            Err(e) => {
                let failed =
                    std::mem::replace(&mut inc.content, Content::Dropping(Refusal::Packet(e)));
                if let Content::Storing(sink) = failed {
                    store.abort_upload(sink.upload);
                }
                inc.packets = None;
                inc.client_id = m.header.client_id;
                inc.rest = rest;
            }
        }
    }

    fn open_sink<S: Store<Upload = U>>(
        &mut self,
        id: ClientId,
        base: Option<&str>,
        content_size: u32,
        least_plain: u64,
        now: Instant,
        store: &mut S,
    ) -> Result<Sink<U>, Refusal> {
        let cx = self.ctx(now);
        let rec = store.client_by_id(&id)?.ok_or(Refusal::UnknownClient)?;
        store.touch(cx, &id)?;
        let own = self
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, key)| key.clone());
        let stored_key = own.is_none();
        let key = own.or(rec.last_key).ok_or(Refusal::NoKey)?;
        let base = base.ok_or(Refusal::UnusableFileName)?;
        store.check_quota(&id, base, least_plain)?;
        let upload = store.begin_upload(cx, &id, base, content_size)?;
        Ok(Sink {
            upload,
            decryptor: CbcDecryptor::new(&key),
            key,
            cksum: Cksum::new(),
            stored_key,
        })
    }

    fn count_attempt(&mut self, id: ClientId, base: &str, now: Instant) -> u32 {
        if let Some(a) = self.attempts_of(id, base) {
            a.count += 1;
            return a.count;
        }
        if self.attempts.len() >= TRACKED_FILE_NAMES {
            self.attempts.pop_front();
        }
        self.attempts.push_back(Attempts {
            client_id: id,
            base: base.to_owned(),
            count: 1,
            started: now,
            last: None,
        });
        1
    }

    /// The record of sends of `base` by `id`, if there is one.
    fn attempts_of(&mut self, id: ClientId, base: &str) -> Option<&mut Attempts> {
        self.attempts
            .iter_mut()
            .find(|a| a.client_id == id && a.base == base)
    }

    fn on_file_data<S: Store<Upload = U>>(&mut self, data: &[u8], store: &mut S) {
        let Some(inc) = self.incoming.as_mut() else {
            return;
        };
        let Content::Storing(sink) = &mut inc.content else {
            return;
        };
        for piece in data.chunks(DECRYPT_PIECE) {
            self.scratch.clear();
            sink.decryptor.update(piece, &mut self.scratch);
            sink.cksum.update(&self.scratch);
            if let Err(e) = store.write_upload(&mut sink.upload, &self.scratch) {
                let failed = std::mem::replace(&mut inc.content, Content::Dropping(e.into()));
                if let Content::Storing(sink) = failed {
                    store.abort_upload(sink.upload);
                }
                return;
            }
        }
    }

    /// The last content byte of a file message arrived. A single message,
    /// or the last packet of an upload: check padding, answer 2103 or an
    /// error. An earlier packet: check its own padding if it was encrypted
    /// on its own, and wait for the next.
    fn on_file_end<S: Store<Upload = U>>(
        &mut self,
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) {
        let Some(mut inc) = self.incoming.take() else {
            return;
        };
        // Refused now, a 2024 upload before its last packet leaves packets
        // to drop; answered or continued, none.
        self.leftover = inc.rest.take().map(|rest| (inc.client_id, rest));
        let header = RequestHeader {
            client_id: inc.client_id,
            version: PROTOCOL_VERSION,
            kind: RequestKind::SendFile,
            payload_size: inc.content_size,
        };
        let mut sink = match inc.content {
            Content::Storing(sink) => sink,
            Content::Dropping(refusal) => {
                self.scratch = Vec::new();
                return self.fail(&header, &[], refusal.into(), store);
            }
        };
        let each = inc
            .packets
            .as_ref()
            .is_some_and(|r| r.granularity == Granularity::Each);
        let complete = inc.packets.as_ref().is_none_or(PacketRun::is_complete);
        // A single message, a split upload's end, or every separately
        // encrypted packet: the padding is checked now.
        let piece = if each || complete {
            self.finish_piece(&mut sink, store)
        } else {
            Ok(())
        };
        let result = piece.map(|()| {
            complete.then(|| UploadSummary {
                plain_len: sink.cksum.len(),
                cksum: sink.cksum.clone().finish(),
            })
        });
        match result {
            Ok(None) => {
                // More packets to come.
                self.leftover = None;
                inc.content = Content::Storing(sink);
                self.incoming = Some(inc);
            }
            Ok(Some(summary)) => {
                self.leftover = None;
                self.scratch = Vec::new();
                if let Err(e) = store.finish_upload(self.ctx(now), sink.upload, &summary) {
                    return self.fail(&header, &[], e.into(), store);
                }
                if let Some(a) = self.attempts_of(inc.client_id, &inc.base) {
                    a.last = Some(summary);
                }
                self.events.push_back(ServerEvent::UploadReceived {
                    client_id: inc.client_id,
                    file_name: inc.base,
                    bytes: summary.plain_len,
                    cksum: summary.cksum,
                    attempt: inc.attempt,
                    duration: now.saturating_duration_since(inc.started),
                });
                self.send(Response::FileReceived {
                    client_id: inc.client_id,
                    content_size: inc.content_size,
                    file_name: inc.file_name,
                    cksum: summary.cksum,
                });
            }
            Err(FinishError::BadPadding) => {
                self.scratch = Vec::new();
                let stored_key = sink.stored_key;
                store.abort_upload(sink.upload);
                let key = if stored_key {
                    // Anyone can send a file under a client's id, and the
                    // answer (2103 or an error) tells whether the padding
                    // was right: a padding oracle on the stored key.
                    // Retiring the key after one failure leaves one query
                    // per key; the client gets a fresh one with its next
                    // reconnect.
                    let fresh = self.new_key(rng);
                    match store.set_last_key(self.ctx(now), &inc.client_id, &fresh) {
                        Ok(()) => StoredKey::Retired,
                        Err(_) => StoredKey::RetireFailed,
                    }
                } else {
                    StoredKey::NotUsed
                };
                self.fail(&header, &[], Refusal::BadPadding(key).into(), store);
            }
            Err(FinishError::Store(e)) => {
                self.scratch = Vec::new();
                store.abort_upload(sink.upload);
                self.fail(&header, &[], e.into(), store);
            }
        }
    }

    /// Ends one ciphertext: checks and strips its padding, writes the
    /// rest, and readies a fresh decryptor (zero IV) for the next
    /// separately encrypted packet.
    fn finish_piece<S: Store<Upload = U>>(
        &mut self,
        sink: &mut Sink<U>,
        store: &mut S,
    ) -> Result<(), FinishError> {
        let decryptor = std::mem::replace(&mut sink.decryptor, CbcDecryptor::new(&sink.key));
        self.scratch.clear();
        if decryptor.finish(&mut self.scratch).is_err() {
            return Err(FinishError::BadPadding);
        }
        sink.cksum.update(&self.scratch);
        store
            .write_upload(&mut sink.upload, &self.scratch)
            .map_err(FinishError::Store)
    }

    /// 1029, 1030, 1031 (§3, §6).
    fn on_verdict<S: Store<Upload = U>>(
        &mut self,
        header: &RequestHeader,
        file_name: &FixedName,
        kind: VerdictKind,
        now: Instant,
        store: &mut S,
    ) -> Result<(), SessionError> {
        let id = header.client_id;
        let cx = self.ctx(now);
        store.client_by_id(&id)?.ok_or(Refusal::UnknownClient)?;
        store.touch(cx, &id)?;
        let base = sanitize_file_name(file_name.text()).ok_or(Refusal::UnusableVerdictName)?;
        let verdict = match kind {
            VerdictKind::CrcOk => Verdict::Accept,
            _ => Verdict::Discard,
        };
        let (attempts, last, duration) = match self.attempts_of(id, base) {
            Some(a) => (
                a.count,
                a.last,
                Some(now.saturating_duration_since(a.started)),
            ),
            // Sent on another connection: timed from that send's header,
            // as the store knows it.
            None => (
                0,
                None,
                store
                    .pending_since(cx, &id, base)
                    .map(|t| now.saturating_duration_since(t)),
            ),
        };
        let outcome = store.apply_verdict(cx, &id, base, verdict)?;
        let applied = outcome != VerdictOutcome::NothingPending;
        let replaced = outcome == VerdictOutcome::Replaced;
        if kind != VerdictKind::CrcBad {
            // This file's sends are over; other files' records stay
            // (their uploads may still await a verdict).
            self.attempts
                .retain(|a| !(a.client_id == id && a.base == base));
        }
        self.events.push_back(ServerEvent::Verdict {
            client_id: id,
            file_name: base.to_owned(),
            verdict: kind,
            applied,
            replaced,
            attempts,
            last,
            duration,
        });
        match (kind, applied) {
            // §3: 1030 gets no response.
            (VerdictKind::CrcBad, _) => Ok(()),
            (_, true) => {
                self.send(Response::Ack { client_id: id });
                Ok(())
            }
            (_, false) => Err(Refusal::NothingPending.into()),
        }
    }
}

impl From<crate::store::StoreError> for FinishError {
    fn from(e: crate::store::StoreError) -> Self {
        FinishError::Store(e)
    }
}

/// A fresh random id with the UUIDv4 version and variant bits, unused in
/// the store.
fn new_client_id<S: Store>(store: &mut S, rng: &mut dyn Entropy) -> Result<ClientId, SessionError> {
    for _ in 0..8 {
        let mut id = [0u8; CLIENT_ID_LEN];
        rng.fill_bytes(&mut id);
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        let id = ClientId(id);
        if id != ClientId::ZERO && store.client_by_id(&id)?.is_none() {
            return Ok(id);
        }
    }
    Err(Refusal::NoFreeClientId.into())
}
