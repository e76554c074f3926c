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
//! 3. Drain [`ServerSession::poll_event`] for logging.
//! 4. Arm a timer for [`ServerSession::poll_timeout`] and call
//!    [`ServerSession::handle_timeout`] when it passes (or early: it is
//!    idempotent).
//! 5. On end of stream call [`ServerSession::handle_eof`]. When
//!    [`ServerSession::is_finished`] is true, call
//!    [`ServerSession::close`] and drop the connection.
//!
//! Time comes in as an argument and randomness through [`Entropy`], so the
//! session is deterministic under test.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::cksum::Cksum;
use crate::consts::*;
use crate::crypto::{AesKey, CbcDecryptor, Entropy, RsaPublicKey};
use crate::decode::{RequestDecoder, RequestEvent};
use crate::error::DecodeError;
use crate::message::{Request, RequestHeader, RequestKind, Response, Revision};
use crate::store::{Store, UploadId, UploadSummary, Verdict, VerdictOutcome};
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
    /// Protocol revision the request codes are read in (§9).
    pub revision: Revision,
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
    /// Complete uploads one connection may hold awaiting a verdict; beyond
    /// it the oldest is discarded. Default 16.
    pub max_pending_uploads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            revision: Revision::R2023c,
            max_content: MAX_CONTENT_SIZE as u64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            progress_window: Duration::from_secs(10),
            min_progress_bytes: 64 * 1024,
            max_output: 64 * 1024,
            max_pending_uploads: 16,
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
    /// The driver could not make durable what answers already written by
    /// the session acknowledged; they were replaced by a 2107
    /// ([`ServerSession::retract_output`]).
    NotDurable,
}

/// Why a 1028 whose padding is wrong after decryption is refused.
const BAD_PADDING: &str = "bad PKCS#7 padding after decryption (wrong key?)";

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
        reason: &'static str,
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
        reason: &'static str,
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
        /// Sends of this file on this connection so far.
        attempts: u32,
        /// Plaintext bytes and cksum of the last send, if this connection
        /// received it.
        last: Option<UploadSummary>,
        /// Time from the first send's header to the verdict.
        duration: Option<Duration>,
    },
    /// A well-formed request was answered with 2107; the connection stays.
    Refused {
        /// The request.
        kind: RequestKind,
        /// Its client id.
        client_id: ClientId,
        /// Why, for the log.
        reason: String,
    },
    /// The session is closing.
    Closing(CloseReason),
}

struct Sink<U> {
    upload: U,
    decryptor: CbcDecryptor,
    cksum: Cksum,
    /// The key is the client's stored last key, not one this connection
    /// exchanged (§6 "keys").
    stored_key: bool,
}

/// The 1028 being received.
struct Incoming<U> {
    client_id: ClientId,
    file_name: FixedName,
    base: String,
    content_size: u32,
    started: Instant,
    attempt: u32,
    /// `Err(reason)`: the content is read and dropped, then 2107 is sent.
    sink: Result<Sink<U>, String>,
}

struct Pending {
    client_id: ClientId,
    base: String,
    upload: UploadId,
}

/// Sends of one file name on this connection, to report attempt numbers.
struct Attempts {
    client_id: ClientId,
    base: String,
    count: u32,
    /// When the first send began.
    started: Instant,
    /// Size and cksum of the last complete send.
    last: Option<UploadSummary>,
}

/// The server side of one connection. See the module docs for how to drive it.
pub struct ServerSession<U> {
    config: ServerConfig,
    decoder: RequestDecoder,
    out: Vec<u8>,
    out_pos: usize,
    events: VecDeque<ServerEvent>,
    keys: Vec<(ClientId, AesKey)>,
    incoming: Option<Incoming<U>>,
    pending: Vec<Pending>,
    attempts: Option<Attempts>,
    scratch: Vec<u8>,
    closing: Option<CloseReason>,
    closed: bool,
    last_activity: Instant,
    frame_started: Option<Instant>,
    progress_deadline: Instant,
    window_bytes: u64,
}

impl<U> ServerSession<U> {
    /// A session for a connection accepted at `now`.
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        ServerSession {
            decoder: RequestDecoder::new(config.revision, config.max_content),
            config,
            out: Vec::new(),
            out_pos: 0,
            events: VecDeque::new(),
            keys: Vec::new(),
            incoming: None,
            pending: Vec::new(),
            attempts: None,
            scratch: Vec::new(),
            closing: None,
            closed: false,
            last_activity: now,
            frame_started: None,
            progress_deadline: now,
            window_bytes: 0,
        }
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
            match self.decoder.decode(input) {
                Ok(None) => break,
                Ok(Some(event)) => {
                    if self.on_event(event, now, store, rng) {
                        requests += 1;
                    }
                }
                Err(e) => {
                    self.send(Response::GeneralError);
                    self.start_close(CloseReason::Decode(e), store);
                }
            }
        }
        let taken = (before - input.len()) as u64;
        self.update_timers(now, taken);
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
        if self.closed {
            return None;
        }
        if self.closing.is_some() || self.output_blocked() {
            // Flushing a last response, or a peer not reading.
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
        if self.closing.is_some() {
            self.out.clear();
            self.out_pos = 0;
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
        self.out_pos = 0;
    }

    /// Bytes waiting to be written to the peer.
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// Reports that `n` bytes of [`ServerSession::pending_output`] were written.
    pub fn consume_output(&mut self, n: usize, now: Instant) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        if n > 0 {
            self.last_activity = now;
        }
    }

    /// Replaces every byte of [`ServerSession::pending_output`] after the
    /// first `keep` with a single 2107 and closes the session once that is
    /// written (§3: a database or disk error).
    ///
    /// For a driver that holds answers back until the storage changes they
    /// acknowledge are synced (group commit): when the sync fails, the
    /// held answers must never reach the client. The session's own view of
    /// what it sent (a key, an upload awaiting its verdict) is then wrong,
    /// so it only closes; the client's retry starts over on a new
    /// connection.
    pub fn retract_output<S: Store<Upload = U>>(&mut self, keep: usize, store: &mut S) {
        let keep = keep.min(self.pending_output().len());
        self.out.truncate(self.out_pos + keep);
        self.send(Response::GeneralError);
        self.start_close(CloseReason::NotDurable, store);
    }

    /// Whether the session takes more input now (false while closing or
    /// while its output is full).
    pub fn wants_input(&self) -> bool {
        self.closing.is_none() && !self.output_blocked()
    }

    /// True once the session is closing and its last output is written:
    /// the driver closes the socket.
    pub fn is_finished(&self) -> bool {
        self.closing.is_some() && self.pending_output().is_empty()
    }

    /// Why the session is closing, if it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closing
    }

    /// True while this connection holds complete uploads awaiting a verdict.
    pub fn awaiting_verdict(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Encrypted bytes of the current 1028 still to come, if one is
    /// streaming: lets the driver size its reads so they do not run far
    /// past the content into requests it may have to hold back.
    pub fn content_remaining(&self) -> Option<u32> {
        self.decoder.content_remaining()
    }

    /// True when no request is partly received.
    pub fn is_idle(&self) -> bool {
        self.decoder.is_between_frames() && self.incoming.is_none()
    }

    /// The next event for the log.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Releases everything the session holds in the store: an upload in
    /// progress is thrown away, uploads awaiting a verdict are handed over
    /// as orphans. Call once before dropping the session; later calls do
    /// nothing.
    pub fn close<S: Store<Upload = U>>(&mut self, store: &mut S) {
        if self.closed {
            return;
        }
        if self.closing.is_none() {
            self.closing = Some(CloseReason::Local);
            self.events
                .push_back(ServerEvent::Closing(CloseReason::Local));
        }
        self.closed = true;
        if let Some(inc) = self.incoming.take() {
            if let Ok(sink) = inc.sink {
                store.abort_upload(sink.upload);
            }
        }
        let ids: Vec<UploadId> = self.pending.drain(..).map(|p| p.upload).collect();
        if !ids.is_empty() {
            store.orphan_uploads(&ids);
        }
    }

    fn output_blocked(&self) -> bool {
        self.pending_output().len() >= self.config.max_output
    }

    fn start_close<S: Store<Upload = U>>(&mut self, reason: CloseReason, store: &mut S) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(reason);
        self.events.push_back(ServerEvent::Closing(reason));
        if let Some(inc) = self.incoming.take() {
            if let Ok(sink) = inc.sink {
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
        response.encode(self.config.revision, &mut self.out);
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
                self.on_request(header, request, now, store, rng);
                self.request_done(now);
                true
            }
            RequestEvent::FileStart {
                header,
                content_size,
                file_name,
            } => {
                // The header deadline is over; the first progress window starts.
                self.frame_started = None;
                self.window_bytes = 0;
                self.progress_deadline = now + self.config.progress_window;
                self.on_file_start(header, content_size, file_name, now, store);
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

    fn refuse(&mut self, header: &RequestHeader, reason: impl Into<String>) {
        self.events.push_back(ServerEvent::Refused {
            kind: header.kind,
            client_id: header.client_id,
            reason: reason.into(),
        });
        self.send(Response::GeneralError);
    }

    fn on_request<S: Store<Upload = U>>(
        &mut self,
        header: RequestHeader,
        request: Request,
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) {
        let result = match request {
            Request::Register { name } => self.on_register(&name, store, rng),
            Request::PublicKey { name, public_key } => {
                self.on_public_key(&header, &name, &public_key, store, rng)
            }
            Request::Reconnect { name } => self.on_reconnect(&header, &name, store, rng),
            Request::CrcOk { file_name } => {
                self.on_verdict(&header, &file_name, VerdictKind::CrcOk, now, store)
            }
            Request::CrcBad { file_name } => {
                self.on_verdict(&header, &file_name, VerdictKind::CrcBad, now, store)
            }
            Request::CrcGiveUp { file_name } => {
                self.on_verdict(&header, &file_name, VerdictKind::CrcGiveUp, now, store)
            }
        };
        if let Err(reason) = result {
            self.refuse(&header, reason);
        }
    }

    /// 1025 (§3 2100/2101).
    fn on_register<S: Store<Upload = U>>(
        &mut self,
        name: &FixedName,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) -> Result<(), String> {
        let Some(text) = name.printable() else {
            return self.registration_failed(name, "name is empty or not printable ASCII");
        };
        let existing = store.client_by_name(text).map_err(|e| e.message)?;
        let replace = match &existing {
            Some(rec) if rec.public_key.is_some() => {
                return self.registration_failed(name, "name belongs to a client with a key");
            }
            Some(rec) => Some(rec.id),
            None => None,
        };
        let id = new_client_id(store, rng)?;
        store
            .register_client(&id, text, replace.as_ref())
            .map_err(|e| e.message)?;
        self.events.push_back(ServerEvent::Registered {
            client_id: id,
            name: text.to_owned(),
            replaced: replace.is_some(),
        });
        self.send(Response::Registered { client_id: id });
        Ok(())
    }

    fn registration_failed(
        &mut self,
        name: &FixedName,
        reason: &'static str,
    ) -> Result<(), String> {
        self.events.push_back(ServerEvent::RegistrationFailed {
            name: String::from_utf8_lossy(name.text()).into_owned(),
            reason,
        });
        self.send(Response::RegistrationFailed);
        Ok(())
    }

    /// 1026 (§3 2102, §4).
    fn on_public_key<S: Store<Upload = U>>(
        &mut self,
        header: &RequestHeader,
        name: &FixedName,
        public_key: &[u8; PUBLIC_KEY_LEN],
        store: &mut S,
        rng: &mut dyn Entropy,
    ) -> Result<(), String> {
        let id = header.client_id;
        let rec = store
            .client_by_id(&id)
            .map_err(|e| e.message)?
            .ok_or("unknown client id")?;
        store.touch(&id).map_err(|e| e.message)?;
        if rec.name.as_bytes() != name.text() {
            return Err("name does not match the registered one".into());
        }
        let key = RsaPublicKey::from_spki_der(public_key)
            .map_err(|e| format!("public key refused: {e}"))?;
        let aes = AesKey::generate(rng);
        let encrypted = key
            .encrypt_aes_key(&aes, rng)
            .map_err(|e| format!("RSA encryption failed: {e}"))?;
        store
            .set_public_key(&id, public_key, &aes)
            .map_err(|e| e.message)?;
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
        store: &mut S,
        rng: &mut dyn Entropy,
    ) -> Result<(), String> {
        let id = header.client_id;
        let rec = store.client_by_id(&id).map_err(|e| e.message)?;
        let deny = |this: &mut Self, reason| {
            this.events.push_back(ServerEvent::ReconnectDenied {
                client_id: id,
                reason,
            });
            this.send(Response::ReconnectDenied { client_id: id });
            Ok(())
        };
        let Some(rec) = rec else {
            return deny(self, "unknown client id");
        };
        store.touch(&id).map_err(|e| e.message)?;
        if rec.name.as_bytes() != name.text() {
            return deny(self, "name does not match the registered one");
        }
        let Some(spki) = rec.public_key.as_deref() else {
            return deny(self, "client never sent a public key");
        };
        let Ok(key) = RsaPublicKey::from_spki_der(spki) else {
            return deny(self, "stored public key is unusable");
        };
        let aes = AesKey::generate(rng);
        let encrypted = key
            .encrypt_aes_key(&aes, rng)
            .map_err(|e| format!("RSA encryption failed: {e}"))?;
        store.set_last_key(&id, &aes).map_err(|e| e.message)?;
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

    /// 1028 header: decide whether the content is stored or dropped.
    fn on_file_start<S: Store<Upload = U>>(
        &mut self,
        header: RequestHeader,
        content_size: u32,
        file_name: FixedName,
        now: Instant,
        store: &mut S,
    ) {
        let id = header.client_id;
        let base = sanitize_file_name(file_name.text()).map(str::to_owned);
        let attempt = self.count_attempt(id, base.as_deref().unwrap_or(""), now);
        let sink = self.open_sink(id, base.as_deref(), content_size, store);
        let shown = base
            .clone()
            .unwrap_or_else(|| String::from_utf8_lossy(file_name.text()).into_owned());
        self.events.push_back(ServerEvent::UploadStarted {
            client_id: id,
            file_name: shown.clone(),
            content_size,
            attempt,
        });
        self.incoming = Some(Incoming {
            client_id: id,
            file_name,
            base: shown,
            content_size,
            started: now,
            attempt,
            sink,
        });
    }

    fn open_sink<S: Store<Upload = U>>(
        &mut self,
        id: ClientId,
        base: Option<&str>,
        content_size: u32,
        store: &mut S,
    ) -> Result<Sink<U>, String> {
        let rec = store
            .client_by_id(&id)
            .map_err(|e| e.message)?
            .ok_or("unknown client id")?;
        store.touch(&id).map_err(|e| e.message)?;
        let own = self
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, key)| key.clone());
        let stored_key = own.is_none();
        let key = own
            .or(rec.last_key)
            .ok_or("no key exchanged for this client")?;
        let base = base.ok_or("file name is empty, '.', '..' or has control or non-ASCII bytes")?;
        let upload = store
            .begin_upload(&id, base, content_size)
            .map_err(|e| e.message)?;
        Ok(Sink {
            upload,
            decryptor: CbcDecryptor::new(&key),
            cksum: Cksum::new(),
            stored_key,
        })
    }

    fn count_attempt(&mut self, id: ClientId, base: &str, now: Instant) -> u32 {
        match &mut self.attempts {
            Some(a) if a.client_id == id && a.base == base => {
                a.count += 1;
                a.count
            }
            _ => {
                self.attempts = Some(Attempts {
                    client_id: id,
                    base: base.to_owned(),
                    count: 1,
                    started: now,
                    last: None,
                });
                1
            }
        }
    }

    fn on_file_data<S: Store<Upload = U>>(&mut self, data: &[u8], store: &mut S) {
        let Some(inc) = self.incoming.as_mut() else {
            return;
        };
        let Ok(sink) = inc.sink.as_mut() else {
            return;
        };
        for piece in data.chunks(DECRYPT_PIECE) {
            self.scratch.clear();
            sink.decryptor.update(piece, &mut self.scratch);
            sink.cksum.update(&self.scratch);
            if let Err(e) = store.write_upload(&mut sink.upload, &self.scratch) {
                if let Ok(sink) = std::mem::replace(&mut inc.sink, Err(e.message)) {
                    store.abort_upload(sink.upload);
                }
                return;
            }
        }
    }

    /// The last content byte arrived: check padding, answer 2103 or 2107.
    fn on_file_end<S: Store<Upload = U>>(
        &mut self,
        now: Instant,
        store: &mut S,
        rng: &mut dyn Entropy,
    ) {
        let Some(inc) = self.incoming.take() else {
            return;
        };
        // The scratch buffer is only needed while content streams; an idle
        // connection keeps no large buffer.
        self.scratch = Vec::new();
        let header = RequestHeader {
            client_id: inc.client_id,
            version: PROTOCOL_VERSION,
            kind: RequestKind::SendFile,
            payload_size: inc.content_size + FILE_PREFIX_LEN as u32,
        };
        let sink = match inc.sink {
            Ok(sink) => sink,
            Err(reason) => return self.refuse(&header, reason),
        };
        let stored_key = sink.stored_key;
        match self.finish_sink(sink, store) {
            Err(reason) if stored_key && reason == BAD_PADDING => {
                // Anyone can send a 1028 under a client's id, and the
                // answer (2103 or 2107) tells whether the padding was
                // right: a padding oracle on the stored key. Retiring the
                // key after one failure leaves one query per key; the
                // client gets a fresh one with its next 1027.
                let retired = store.set_last_key(&inc.client_id, &AesKey::generate(rng));
                let note = match retired {
                    Ok(()) => "; the stored key was retired",
                    Err(_) => "; retiring the stored key failed",
                };
                self.refuse(&header, format!("{BAD_PADDING} under the stored key{note}"))
            }
            Ok((upload, summary)) => {
                self.keep_pending(inc.client_id, &inc.base, upload, store);
                if let Some(a) = self.attempts.as_mut() {
                    if a.client_id == inc.client_id && a.base == inc.base {
                        a.last = Some(summary);
                    }
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
            Err(reason) => self.refuse(&header, reason),
        }
    }

    fn finish_sink<S: Store<Upload = U>>(
        &mut self,
        mut sink: Sink<U>,
        store: &mut S,
    ) -> Result<(UploadId, UploadSummary), String> {
        if sink.decryptor.finish(&mut self.scratch).is_err() {
            store.abort_upload(sink.upload);
            return Err(BAD_PADDING.into());
        }
        sink.cksum.update(&self.scratch);
        if let Err(e) = store.write_upload(&mut sink.upload, &self.scratch) {
            store.abort_upload(sink.upload);
            return Err(e.message);
        }
        let summary = UploadSummary {
            plain_len: sink.cksum.len(),
            cksum: sink.cksum.finish(),
        };
        let id = store
            .finish_upload(sink.upload, &summary)
            .map_err(|e| e.message)?;
        Ok((id, summary))
    }

    fn keep_pending<S: Store<Upload = U>>(
        &mut self,
        client_id: ClientId,
        base: &str,
        upload: UploadId,
        store: &mut S,
    ) {
        if self.pending.len() >= self.config.max_pending_uploads.max(1) {
            let old = self.pending.remove(0);
            store.discard_upload(old.upload);
        }
        self.pending.push(Pending {
            client_id,
            base: base.to_owned(),
            upload,
        });
    }

    /// 1029, 1030, 1031 (§3, §6).
    fn on_verdict<S: Store<Upload = U>>(
        &mut self,
        header: &RequestHeader,
        file_name: &FixedName,
        kind: VerdictKind,
        now: Instant,
        store: &mut S,
    ) -> Result<(), String> {
        let id = header.client_id;
        store
            .client_by_id(&id)
            .map_err(|e| e.message)?
            .ok_or("unknown client id")?;
        store.touch(&id).map_err(|e| e.message)?;
        let base = sanitize_file_name(file_name.text()).ok_or("unusable file name")?;
        let mine = self
            .pending
            .iter()
            .rposition(|p| p.client_id == id && p.base == base);
        let prefer = mine.map(|i| self.pending[i].upload);
        let verdict = match kind {
            VerdictKind::CrcOk => Verdict::Accept,
            _ => Verdict::Discard,
        };
        let outcome = store
            .apply_verdict(&id, base, prefer, verdict)
            .map_err(|e| e.message)?;
        if let Some(i) = mine {
            self.pending.remove(i);
        }
        let applied = outcome == VerdictOutcome::Applied;
        let (attempts, last, duration) = match &self.attempts {
            Some(a) if a.client_id == id && a.base == base => (
                a.count,
                a.last,
                Some(now.saturating_duration_since(a.started)),
            ),
            _ => (0, None, None),
        };
        if kind != VerdictKind::CrcBad {
            self.attempts = None;
        }
        self.events.push_back(ServerEvent::Verdict {
            client_id: id,
            file_name: base.to_owned(),
            verdict: kind,
            applied,
            attempts,
            last,
            duration,
        });
        match (kind, applied) {
            // §3: 1030 gets no response.
            (VerdictKind::CrcBad, _) => {}
            (_, true) => self.send(Response::Ack { client_id: id }),
            (_, false) => self.send(Response::GeneralError),
        }
        Ok(())
    }
}

/// A fresh random id with the UUIDv4 version and variant bits, unused in
/// the store.
fn new_client_id<S: Store>(store: &mut S, rng: &mut dyn Entropy) -> Result<ClientId, String> {
    for _ in 0..8 {
        let mut id = [0u8; CLIENT_ID_LEN];
        rng.fill_bytes(&mut id);
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        let id = ClientId(id);
        if id != ClientId::ZERO && store.client_by_id(&id).map_err(|e| e.message)?.is_none() {
            return Ok(id);
        }
    }
    Err("could not draw an unused client id".into())
}
