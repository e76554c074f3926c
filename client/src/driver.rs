//! The blocking driver of `ClientSession`: carries out its actions on a
//! `std::net` socket and the file, feeds it the responses, and turns its
//! outcome into a report (see the driving contract in
//! `sealdrop_protocol::client`).

use std::io;
use std::time::Duration;

use std::path::PathBuf;

use sealdrop_protocol::client::{
    check_file, max_plain_len, Action, ClientConfig, Event, FileSpec, Outcome, RetryPolicy,
    Violation,
};
use sealdrop_protocol::consts::{MAX_ERROR_RETRIES, MAX_SENDS};
use sealdrop_protocol::crypto::RsaPrivateKey;
use sealdrop_protocol::{ClientSession, FileUpload, RequestKind, ResponseKind, Revision};

use crate::config::{FileArg, Settings, Source as ConfigSource, StateDirOrigin};
use crate::entropy::OsEntropy;
use crate::identity::{self, LoadError};
use crate::net::{describe, is_timeout, ConnectError, Endpoint, Link, ReadError};
use crate::progress::Progress;
use crate::report::{quoted, Done, FailKind, Failure, Report};
use crate::sent_log;
use crate::upload::{self, SendError, Source};

/// The last network error, for the final message.
struct NetError {
    /// True if opening the connection failed.
    connecting: bool,
    error: io::Error,
    /// No answer in time on an open connection.
    stuck: bool,
    /// A connection that was accepted and then timed out or was closed
    /// before a single byte came, in a run that never heard a byte: not
    /// what a sealdrop server does (it answers every request at once), so
    /// one retry only ([`MAX_UNANSWERED`]).
    unanswered: bool,
}

/// Connections accepted but never answered (see [`NetError::unanswered`])
/// before the run gives up: the first try and one retry.
const MAX_UNANSWERED: u32 = 2;

/// One file of the run: its name and length, opened when its turn comes
/// (standard input is read at the start).
struct Input {
    arg: FileArg,
    len: u64,
    source: Option<Source>,
}

/// How the run ended, for the exit code: every file's result is printed
/// as it comes.
pub enum Ended {
    /// Every file verified.
    AllVerified,
    /// Some file failed: the first failure's kind decides the exit code.
    Failed(FailKind),
}

/// One run: the session plus everything it needs from the outside.
pub struct Job<'a> {
    settings: &'a Settings,
    report: &'a Report,
    session: ClientSession,
    inputs: Vec<Input>,
    /// The file being sent (index into `inputs`).
    current: usize,
    /// The first failed file's kind.
    first_failure: Option<FailKind>,
    /// Files whose result was printed.
    reported: usize,
    endpoint: Endpoint,
    link: Option<Link>,
    rng: OsEntropy,
    fixed_key: Option<RsaPrivateKey>,
    progress: Progress,
    last_error: Option<NetError>,
    /// Connections opened so far: the `conn#N` of the debug log.
    conns: u32,
    /// True once any byte came from the server, on any connection.
    heard: bool,
    /// Connections accepted and never answered so far (while `heard` is false).
    unanswered: u32,
    /// The code of the last request sent, for messages.
    last_request: u16,
    /// When the current run of failed connections began (reset by an answer).
    outage_since: Option<std::time::Instant>,
    /// A failure found while carrying out an action, ending the run.
    abort: Option<Failure>,
    /// This run created the state folder (it did not exist before): if
    /// the run ends with nothing saved in it, it is removed again.
    made_state_dir: bool,
}

impl<'a> Job<'a> {
    /// Checks every file and the state folder, loads the state and the
    /// fixed key, and checks that the protocol can carry each file, all
    /// before anything is sent.
    pub fn prepare(
        settings: &'a Settings,
        report: &'a Report,
        quiet: bool,
    ) -> Result<Self, Failure> {
        let rev = settings.revision;
        let mut inputs = Vec::with_capacity(settings.files.len());
        for arg in &settings.files {
            inputs.push(open_input(arg, settings)?);
        }
        let specs: Vec<FileSpec> = inputs
            .iter()
            .map(|i| FileSpec {
                name: i.arg.name.clone(),
                plain_len: i.len,
            })
            .collect();
        for (input, spec) in inputs.iter().zip(&specs) {
            check_file(rev, spec, &settings.packets).map_err(|e| {
                let file = quoted(&input.arg.path.to_string_lossy());
                Failure::usage(format!("cannot send {file}: {e}"))
            })?;
        }
        if let Some(first) = inputs.first() {
            report.set_file(&first.arg.path);
            report.update(|s| s.bytes = Some(first.len));
        }
        let fixed_key = settings
            .rsa_key
            .as_deref()
            .map(load_fixed_key)
            .transpose()?;
        let made_state_dir = !settings.state_dir.exists();
        prepare_state_dir(settings, report)?;
        let identity = identity::load(&settings.state_dir).map_err(load_failure)?;
        if let Some(id) = &identity {
            check_saved_name(settings, report, &id.name)?;
        }
        if let Some(id) = &identity {
            report.update(|s| s.client_id = Some(id.client_id));
        }
        let session = ClientSession::new(ClientConfig {
            revision: rev,
            name: settings.name.clone(),
            files: specs,
            identity,
            packets: settings.packets,
            retry: RetryPolicy {
                retry_for: settings.retry_for,
                seed: jitter_seed(),
            },
        })
        .map_err(|e| Failure::usage(format!("cannot start: {e}")))?;
        report.update(|s| s.packets = session.packet_plan().cloned());
        Ok(Job {
            settings,
            report,
            session,
            inputs,
            current: 0,
            first_failure: None,
            reported: 0,
            endpoint: Endpoint {
                host: settings.host.clone(),
                port: settings.port,
                connect_timeout: settings.connect_timeout,
                timeout: settings.timeout,
                revision: settings.revision,
            },
            link: None,
            rng: OsEntropy,
            fixed_key,
            progress: Progress::new(quiet),
            last_error: None,
            conns: 0,
            heard: false,
            unanswered: 0,
            last_request: 0,
            outage_since: None,
            abort: None,
            made_state_dir,
        })
    }

    /// Runs the session to its end, printing each file's result as it
    /// comes. A failure that ends the run before or between files is
    /// printed too, then the files not sent yet are reported as not sent.
    pub fn run(&mut self) -> Result<Ended, Failure> {
        let ended = self.run_to_end();
        if self.made_state_dir {
            // Only an empty folder goes (a refused registration, say), so
            // a failed first run leaves no trace; remove_dir refuses a
            // folder that holds anything.
            let _ = std::fs::remove_dir(&self.settings.state_dir);
        }
        ended
    }

    fn run_to_end(&mut self) -> Result<Ended, Failure> {
        match self.run_session() {
            Ok(()) => {
                let unsent = self.reported;
                if unsent < self.inputs.len() {
                    let kind = self.first_failure.unwrap_or(FailKind::Network);
                    self.report_unsent(unsent, kind);
                }
                Ok(match self.first_failure {
                    None => Ended::AllVerified,
                    Some(kind) => Ended::Failed(kind),
                })
            }
            Err(failure) => {
                // The failure that ended the run first, then the files it
                // left unsent.
                let failure = self.named(self.current, failure);
                self.report.file_failure(&failure);
                let kind = *self.first_failure.get_or_insert(failure.kind);
                self.report_unsent(self.current + 1, failure.kind);
                Ok(Ended::Failed(kind))
            }
        }
    }

    /// In a run of several files, a failure's line starts with the file it
    /// is about (as given), so each line says which file it reports.
    fn named(&self, file: usize, failure: Failure) -> Failure {
        if self.inputs.len() < 2 {
            return failure;
        }
        let path = self.inputs[file].arg.path.to_string_lossy();
        Failure::new(failure.kind, format!("{path}: {}", failure.message))
    }

    fn run_session(&mut self) -> Result<(), Failure> {
        loop {
            self.drain_events()?;
            if let Some(failure) = self.abort.take() {
                if let Some(link) = self.link.take() {
                    link.close();
                }
                return Err(failure);
            }
            let Some(action) = self.session.poll_action() else {
                self.receive()?;
                continue;
            };
            match action {
                Action::Connect { delay } => self.connect(delay)?,
                Action::Send(frame) => self.send(&frame),
                Action::SendFile(upload) => self.send_file(upload)?,
                Action::GenerateKeyPair => self.key_pair()?,
                Action::Done(outcome) => {
                    if let Some(link) = self.link.take() {
                        link.close();
                    }
                    // A file's outcome came as FileFinished; one that
                    // ends the session before a file started did not.
                    if self.reported <= self.current && !outcome.is_per_file() {
                        return Err(self.failure(&outcome));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// The files from `from` on, after a failure that ended the run:
    /// "not sent".
    fn report_unsent(&mut self, from: usize, kind: FailKind) {
        let later: Vec<PathBuf> = self
            .inputs
            .iter()
            .skip(from)
            .map(|i| i.arg.path.clone())
            .collect();
        if !later.is_empty() {
            self.report.not_sent(&later, kind);
        }
    }

    /// Says whether this upload replaced one this client sent before
    /// (sent.log), or, on the first upload from this state folder, that a
    /// name sent again replaces the stored file; then records it.
    fn note_replacement(&self, name: &str, cksum: u32) {
        let dir = &self.settings.state_dir;
        match sent_log::previous(dir, name) {
            sent_log::Previous::SentAt(secs) => self.report.note(&format!(
                "{} replaced the copy this client sent on {} (the server keeps the newest)",
                quoted(name),
                sent_log::utc(secs)
            )),
            sent_log::Previous::NoLog => self.report.note(
                "note: the server keeps one file per name: sending a name again replaces \
                 the stored copy once the new one is verified (shown once; later runs say \
                 when they replace a file they sent)",
            ),
            sent_log::Previous::NotSent => {}
        }
        if let Err(e) = sent_log::record(dir, name, cksum) {
            self.report.note(&format!(
                "could not update {}: {}",
                sent_log::SENT_LOG,
                describe(&e)
            ));
        }
    }

    /// Makes file `file` the one the report describes.
    fn select(&mut self, file: usize) {
        self.current = file;
        let input = &self.inputs[file];
        self.report.set_file(&input.arg.path);
        let plan = self.session.packet_plan().cloned();
        self.report.update(|s| {
            s.bytes = Some(input.len);
            s.cksum = None;
            s.attempts = 0;
            s.packets = plan;
        });
    }

    /// A file is done: its line (or JSON object) now.
    fn file_finished(&mut self, file: usize, outcome: &Outcome) {
        self.reported = file + 1;
        self.report.update(|s| s.attempts = self.session.attempts());
        if file != self.current {
            // It ended before its first byte went (a lost server between
            // two files): describe it, not the previous one.
            self.select(file);
        }
        let input = &self.inputs[file];
        match outcome {
            Outcome::Verified { attempts, cksum } => {
                let done = Done {
                    file_name: input.arg.name.clone(),
                    bytes: input.len,
                    cksum: *cksum,
                    attempts: *attempts,
                    revision: self.settings.revision,
                    packets: self.session.packet_plan().cloned(),
                };
                self.note_replacement(&done.file_name, done.cksum);
                self.report.file_success(&done);
            }
            other => {
                let failure = self.named(file, self.failure_of(file, other));
                self.first_failure.get_or_insert(failure.kind);
                self.report.file_failure(&failure);
            }
        }
    }

    fn drain_events(&mut self) -> Result<(), Failure> {
        while let Some(event) = self.session.poll_event() {
            self.on_event(event)?;
        }
        Ok(())
    }

    fn on_event(&mut self, event: Event) -> Result<(), Failure> {
        let report = self.report;
        let rev = self.settings.revision;
        match event {
            Event::Registered { client_id } | Event::Reconnected { client_id } => {
                report.update(|s| s.client_id = Some(client_id));
            }
            Event::KeyExchanged { .. } => self.save_identity()?,
            Event::ReconnectDenied => {
                report.update(|s| s.client_id = None);
                report.note(&format!(
                    "reconnect denied ({}): registering as a new client",
                    response_code(rev, ResponseKind::ReconnectDenied)
                ));
            }
            Event::AttemptStarted { attempt, .. } => report.update(|s| s.attempts = attempt),
            Event::ServerError { retry, of } => report.note(&format!(
                "server responded with an error ({}); retrying ({retry} of {of})",
                response_code(rev, ResponseKind::GeneralError)
            )),
            Event::ConnectionLost { retry, delay, left } => {
                let s = self.settings;
                let wait = delay.as_secs_f64();
                match &self.last_error {
                    Some(e) if e.unanswered => report.note(&format!(
                        "{} accepted the connection but {} in reply to request {}; a sealdrop \
                         server answers at once: trying once more in {wait:.1} s",
                        s.server,
                        unanswered_what(e, s.timeout),
                        self.last_request
                    )),
                    Some(e) if e.stuck => report.note(&format!(
                        "no answer within {} s to request {}; retry {retry} of \
                         {MAX_ERROR_RETRIES} in {wait:.1} s",
                        s.timeout.as_secs_f64(),
                        self.last_request
                    )),
                    e => {
                        let why = e.as_ref().map_or("lost".into(), |e| describe(&e.error));
                        let until = if left.is_zero() {
                            format!(
                                "--retry-for {:.0} s has passed; at least {MAX_ERROR_RETRIES} \
                                 retries are made",
                                s.retry_for.as_secs_f64()
                            )
                        } else {
                            format!(
                                "giving up in {:.0} s, --retry-for",
                                (delay + left).as_secs_f64()
                            )
                        };
                        report.note(&format!(
                            "connection problem: {why}; retry {retry} in {wait:.1} s ({until})"
                        ));
                    }
                }
            }
            Event::CrcMismatch {
                attempt,
                server,
                local,
            } => report.note(&format!(
                "cksum mismatch: server {server}, ours {local} (attempt {attempt} of {MAX_SENDS})"
            )),
            Event::KeyResendRefused => {
                report.update(|s| s.client_id = None);
                report.note(&format!(
                    "the server did not accept our saved key ({} without {}; {rev} has no \
                     reconnect): registering as a new client",
                    request_code(rev, RequestKind::PublicKey),
                    response_code(rev, ResponseKind::KeyAccepted)
                ));
            }
            Event::PacketSizeRaised { requested, used } => report.note(&format!(
                "packets of {requested} bytes would be more than 65535: sending packets of \
                 {used} bytes"
            )),
            Event::StrayAckSkipped => {}
            Event::FileFinished { file, outcome } => self.file_finished(file, &outcome),
        }
        Ok(())
    }

    /// §7: me.info is written once the client holds a working key.
    fn save_identity(&mut self) -> Result<(), Failure> {
        let Some(identity) = self.session.identity() else {
            return Ok(());
        };
        identity::save(&self.settings.state_dir, identity).map_err(|e| {
            Failure::local(format!(
                "registered as {} (name {}) but could not save {} and {} in {}: {}; the server \
                 now holds that name for a key this client lost. Fix the folder, then run \
                 with another --name, or ask the server's operator to free the name \
                 (sealdrop-server clients forget NAME)",
                identity.client_id,
                quoted(&identity.name),
                identity::PRIV_KEY,
                identity::ME_INFO,
                quoted(&self.settings.state_dir.to_string_lossy()),
                describe(&e)
            ))
        })
    }

    /// Opens a connection. A host name that does not resolve ends the run
    /// at once (exit 3): a retry a moment later asks the same resolver.
    fn connect(&mut self, delay: Duration) -> Result<(), Failure> {
        if let Some(link) = self.link.take() {
            link.close();
        }
        std::thread::sleep(delay);
        self.conns += 1;
        log::debug!("conn#{} connecting to {}", self.conns, self.settings.server);
        match self.endpoint.connect() {
            Ok(link) => {
                log::debug!("conn#{} open", self.conns);
                self.link = Some(link);
                self.session.handle_connected();
            }
            Err(ConnectError::Resolve(e)) => {
                log::debug!("conn#{} failed: {e}", self.conns);
                return Err(Failure::new(
                    FailKind::Network,
                    format!(
                        "{e}; check the host name in {}",
                        self.settings.server_source.hint("server", 1)
                    ),
                ));
            }
            Err(ConnectError::Connect(error)) => self.lost(error, true),
        }
        Ok(())
    }

    fn send(&mut self, frame: &[u8]) {
        let Some(link) = &mut self.link else {
            return self.lost(io::ErrorKind::NotConnected.into(), false);
        };
        let code = frame
            .get(17..19)
            .map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
        log::debug!("conn#{} -> {code} ({} bytes)", self.conns, frame.len());
        self.last_request = code;
        if let Err(e) = link.write_all(frame) {
            self.lost(e, false);
        }
    }

    fn send_file(&mut self, upload: Box<FileUpload>) -> Result<(), Failure> {
        if upload.file != self.current || self.inputs[upload.file].source.is_none() {
            self.select(upload.file);
            self.open_current()?;
        }
        let Some(link) = &mut self.link else {
            self.lost(io::ErrorKind::NotConnected.into(), false);
            return Ok(());
        };
        log::debug!(
            "conn#{} -> {} file {} attempt {}, content_size {}{}",
            self.conns,
            request_code(self.settings.revision, RequestKind::SendFile),
            upload.file + 1,
            upload.attempt,
            upload.content_size,
            upload
                .packets
                .as_ref()
                .map_or(String::new(), |p| format!(", {}", p.summary()))
        );
        self.last_request = request_code(self.settings.revision, RequestKind::SendFile);
        let input = &mut self.inputs[self.current];
        let Some(source) = input.source.as_mut() else {
            return Err(Failure::local("internal: the file is not open"));
        };
        match upload::send_file(link, source, upload, &mut self.progress) {
            Ok(cksum) => {
                self.report.update(|s| s.cksum = Some(cksum));
                self.session.handle_file_sent(cksum);
                Ok(())
            }
            Err(SendError::Net(e)) => {
                self.progress.clear();
                self.lost(e, false);
                Ok(())
            }
            Err(SendError::Local(why)) => {
                self.progress.clear();
                let file = quoted(&input.arg.path.to_string_lossy());
                Err(Failure::local(format!(
                    "cannot send {file}: {why}; send it again once nothing writes to it"
                )))
            }
        }
    }

    /// Opens the current file (the one before it is closed) and checks it
    /// still has the length the session declared.
    fn open_current(&mut self) -> Result<(), Failure> {
        for (i, input) in self.inputs.iter_mut().enumerate() {
            if i != self.current && !input.arg.is_stdin() {
                input.source = None;
            }
        }
        let input = &mut self.inputs[self.current];
        if input.source.is_some() {
            return Ok(());
        }
        let file = quoted(&input.arg.path.to_string_lossy());
        let source = Source::open(&input.arg.path)
            .map_err(|e| Failure::local(format!("cannot read {file}: {}", describe(&e))))?;
        if source.len != input.len {
            return Err(Failure::local(format!(
                "cannot send {file}: it changed size from {} to {} bytes after the run \
                 started; send it again once nothing writes to it",
                input.len, source.len
            )));
        }
        input.source = Some(source);
        Ok(())
    }

    /// Reads one response. A peer whose first bytes are not this
    /// protocol ends the run at once (exit 8): another service holds the
    /// port, and asking it again changes nothing.
    fn receive(&mut self) -> Result<(), Failure> {
        let Some(link) = &mut self.link else {
            self.lost(io::ErrorKind::NotConnected.into(), false);
            return Ok(());
        };
        // After the last byte of the file: the server decrypts and checks it.
        self.progress.verifying();
        let read = link.read_response();
        self.heard |= link.received() > 0;
        self.progress.clear();
        match read {
            Ok(response) => {
                self.outage_since = None;
                let code = response_code(self.settings.revision, response.kind());
                log::debug!("conn#{} <- {code}", self.conns);
                self.session.handle_response(response, &mut self.rng)
            }
            Err(ReadError::NotSealdrop(service)) => {
                log::debug!("conn#{} <- not this protocol: {service:?}", self.conns);
                let s = self.settings;
                let what = service
                    .protocol
                    .map_or(String::new(), |p| format!(" ({p})"));
                return Err(Failure::new(
                    FailKind::Protocol,
                    format!(
                        "{} is not a sealdrop server: it answered {}{what}; check the port in {}",
                        s.server,
                        quoted(&service.shown),
                        s.server_source.hint("server", 1)
                    ),
                ));
            }
            Err(ReadError::Decode(e)) => self.session.handle_response_error(e),
            Err(ReadError::Io(e)) => self.lost(e, false),
        }
        Ok(())
    }

    fn lost(&mut self, error: io::Error, connecting: bool) {
        log::debug!("conn#{} failed: {error}", self.conns);
        if let Some(link) = self.link.take() {
            link.close();
        }
        self.outage_since
            .get_or_insert_with(std::time::Instant::now);
        let stuck = !connecting && is_timeout(&error);
        // A revision without 2107 (2022c) closes without a word where the
        // others answer an error: there a close is an answer.
        let closes_on_error = !self
            .settings
            .revision
            .has_response(ResponseKind::GeneralError);
        let closed = is_closed(&error) && !closes_on_error;
        let unanswered = !self.heard && !connecting && (stuck || closed);
        let error = NetError {
            connecting,
            error,
            stuck,
            unanswered,
        };
        if unanswered {
            self.unanswered += 1;
            if self.unanswered >= MAX_UNANSWERED {
                self.abort = Some(self.unanswered_failure(&error));
                self.last_error = Some(error);
                return;
            }
        }
        self.last_error = Some(error);
        if stuck || unanswered {
            self.session.handle_no_answer();
        } else {
            self.session
                .handle_connection_lost(std::time::Instant::now());
        }
    }

    fn key_pair(&mut self) -> Result<(), Failure> {
        let key = match &self.fixed_key {
            Some(key) => key.clone(),
            None => RsaPrivateKey::generate(&mut self.rng)
                .map_err(|e| Failure::local(format!("cannot generate an RSA key pair: {e}")))?,
        };
        self.session
            .handle_key_pair(key)
            .map_err(|e| Failure::usage(format!("{e}; --rsa-key needs a 1024-bit key with e = 17")))
    }

    fn failure(&self, outcome: &Outcome) -> Failure {
        self.failure_of(self.current, outcome)
    }

    /// The message and kind of `outcome` for file `file`.
    fn failure_of(&self, file: usize, outcome: &Outcome) -> Failure {
        let file_name = &self.inputs[file].arg.name;
        let s = self.settings;
        let server = &s.server;
        let rev = s.revision;
        match outcome {
            Outcome::Verified { .. } => Failure::new(FailKind::Protocol, "internal: not a failure"),
            Outcome::CrcFailed {
                attempts,
                server: theirs,
                local,
            } => Failure::new(
                FailKind::Crc,
                format!(
                    "{} arrived damaged {attempts} times (server cksum {theirs}, ours {local}); \
                     gave up ({}); check the network path and the server's storage",
                    quoted(file_name),
                    request_code(rev, RequestKind::CrcGiveUp)
                ),
            ),
            Outcome::RegistrationFailed {
                after_denied_reconnect,
            } => refused(s, *after_denied_reconnect),
            Outcome::ServerError { request } => Failure::new(
                FailKind::ServerError,
                format!(
                    "server responded with an error ({}) to {}, on the first try and on \
                     {MAX_ERROR_RETRIES} retries; check the server's log",
                    response_code(rev, ResponseKind::GeneralError),
                    request_label(rev, *request)
                ),
            ),
            Outcome::ConnectionFailed { request } => self.network_failure(*request),
            Outcome::OutcomeUnknown { cksum, .. } => Failure::new(
                FailKind::Unknown,
                format!(
                    "outcome unknown: {} was sent whole and the server was told it arrived \
                     intact (cksum {cksum}, {}), then the connection to {server} broke and the \
                     server's answer ({}) did not arrive, nor when asked again on a new \
                     connection; whether the server kept the file is not known. Run again to \
                     be sure: resending is safe, an upload of the same name replaces the stored \
                     copy once verified",
                    quoted(file_name),
                    request_code(rev, RequestKind::CrcOk),
                    response_code(rev, ResponseKind::Ack)
                ),
            ),
            Outcome::ProtocolViolation(v @ Violation::ForeignRevision { theirs, .. }) => {
                let hint = theirs.first().map_or(String::new(), |r| {
                    format!(
                        "; run with --revision {r} (or ${}={r})",
                        crate::cli::REVISION_ENV
                    )
                });
                Failure::new(
                    FailKind::Protocol,
                    format!("server at {server} speaks another revision: {v}{hint}"),
                )
            }
            Outcome::ProtocolViolation(v) => Failure::new(
                FailKind::Protocol,
                format!(
                    "server at {server} broke the protocol: {v}; is it a sealdrop server \
                     speaking revision {rev}?"
                ),
            ),
        }
    }

    /// A port that accepted [`MAX_UNANSWERED`] connections and answered
    /// none: exit 3, no more retries.
    fn unanswered_failure(&self, e: &NetError) -> Failure {
        let s = self.settings;
        let port = s.server_source.hint("server", 1);
        let tail = if e.stuck {
            format!(
                "not a single byte: is it a sealdrop server? A service of another protocol (an \
                 HTTP or TLS server, say) accepts the connection and waits for its own request; \
                 check the port in {port}, or raise --timeout if the server is only slow"
            )
        } else {
            format!(
                "is it a sealdrop server? One answers every request; check the port in {port} \
                 (another service may hold it) and the server's log"
            )
        };
        Failure::new(
            FailKind::Network,
            format!(
                "{} accepted the connection but {} in reply to request {}, on the first try \
                 and on one retry; {tail}",
                s.server,
                unanswered_what(e, s.timeout),
                self.last_request
            ),
        )
    }

    fn network_failure(&self, request: RequestKind) -> Failure {
        let s = self.settings;
        let spent = self.outage_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let tries = format!(
            "retried for {spent:.0} s, --retry-for {:.0} s",
            s.retry_for.as_secs_f64()
        );
        let message = match &self.last_error {
            Some(NetError {
                connecting: true,
                error,
                ..
            }) => format!(
                "could not connect to {}: {} ({tries}); is the server running, is the port in {} right?",
                s.server,
                describe(error),
                s.server_source.hint("server", 1)
            ),
            Some(NetError { stuck: true, .. }) => format!(
                "no answer from {} within {} s to {} (on the first try and on \
                 {MAX_ERROR_RETRIES} retries); is the server overloaded or stuck? --timeout \
                 raises the limit",
                s.server,
                s.timeout.as_secs_f64(),
                request_label(s.revision, request)
            ),
            other => format!(
                "connection to {} lost during {} ({tries}): {}; is the server running, \
                 reachable, and speaking revision {}?",
                s.server,
                request_label(s.revision, request),
                other.as_ref().map_or("closed".into(), |e| describe(&e.error)),
                s.revision
            ),
        };
        Failure::new(FailKind::Network, message)
    }
}

/// What an accepted connection did instead of answering.
fn unanswered_what(e: &NetError, timeout: Duration) -> String {
    if e.stuck {
        format!("sent nothing within {} s", timeout.as_secs_f64())
    } else {
        format!("closed it without sending a byte ({})", describe(&e.error))
    }
}

/// True for errors that mean the peer closed or reset the connection.
fn is_closed(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | BrokenPipe | ConnectionReset | ConnectionAborted
    )
}

fn refused(s: &Settings, after_denied_reconnect: bool) -> Failure {
    let name = quoted(&s.name);
    let fix = s.name_source.hint("name", 2);
    let rev = s.revision;
    let failed = response_code(rev, ResponseKind::RegistrationFailed);
    // 2022c has no reconnect: its "denied" is a saved key without a 2102.
    let denied = match rev.response_code(ResponseKind::ReconnectDenied) {
        Some(_) if rev.request_code(RequestKind::Reconnect).is_some() => {
            format!("{}", response_code(rev, ResponseKind::ReconnectDenied))
        }
        _ => format!(
            "no {} to our saved key",
            response_code(rev, ResponseKind::KeyAccepted)
        ),
    };
    let message = if after_denied_reconnect {
        format!(
            "server does not know the client in {} ({denied}) and refused to register {name} \
             anew ({failed}): another client holds that name. If that client is you, run \
             with the state folder that holds its {} (--state-dir; this run used {}); else \
             choose another name ({fix}), or ask the server's operator to free it \
             (sealdrop-server clients forget NAME)",
            identity::ME_INFO,
            identity::ME_INFO,
            quoted(&s.state_dir.to_string_lossy())
        )
    } else {
        format!(
            "server refused to register {name} ({failed}): the name is taken by another client \
             or invalid. If you registered it before, run with the state folder that holds \
             its {} (--state-dir; this run used {}); else choose another name ({fix}), or \
             ask the server's operator to free it (sealdrop-server clients forget NAME)",
            identity::ME_INFO,
            quoted(&s.state_dir.to_string_lossy())
        )
    };
    Failure::new(FailKind::Refused, message + &same_port_identities(s))
}

/// After a refused registration: the per-server folders of the default
/// location for this port, other than the one this run used, whose
/// `me.info` holds this name. The folder is named after the host as
/// typed, so `localhost:P` and `127.0.0.1:P` keep separate clients.
fn same_port_identities(s: &Settings) -> String {
    let Some(base) = crate::config::default_state_base() else {
        return String::new();
    };
    let Ok(entries) = std::fs::read_dir(&base) else {
        return String::new();
    };
    let used = std::fs::canonicalize(&s.state_dir).ok();
    let suffix = format!("_{}", s.port);
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        })
        .filter(|p| std::fs::canonicalize(p).ok() != used)
        .filter(|p| {
            std::fs::read_to_string(p.join(identity::ME_INFO))
                .ok()
                .and_then(|t| t.lines().next().map(|l| l.trim() == s.name))
                .unwrap_or(false)
        })
        .collect();
    found.sort();
    found
        .iter()
        .map(|p| {
            let dir = quoted(&p.to_string_lossy());
            format!(
                ". A client named {} is kept in {dir}, the folder of port {} under another \
                 spelling of the host: if that is this server, run with --state-dir {dir}",
                quoted(&s.name),
                s.port
            )
        })
        .collect()
}

/// A request's code in the revision (0 where it has none).
fn request_code(rev: Revision, kind: RequestKind) -> u16 {
    rev.request_code(kind).unwrap_or(0)
}

/// A response's code in the revision; 2022c's missing 2105-2107 are
/// named as 2023 numbers them (the client reads them so).
fn response_code(rev: Revision, kind: ResponseKind) -> u16 {
    rev.spec().response_base + kind as u16
}

/// "1025 (register)" and so on, for messages.
fn request_label(rev: Revision, kind: RequestKind) -> String {
    let what = match kind {
        RequestKind::Register => "register",
        RequestKind::PublicKey => "send public key",
        RequestKind::Reconnect => "reconnect",
        RequestKind::SendFile => "send file",
        RequestKind::CrcOk => "CRC ok",
        RequestKind::CrcBad => "CRC bad",
        RequestKind::CrcGiveUp => "CRC bad, giving up",
    };
    format!("{} ({what})", request_code(rev, kind))
}

/// Stats one file (or reads standard input) before anything is sent:
/// a folder or a missing file is refused at once.
fn open_input(arg: &FileArg, settings: &Settings) -> Result<Input, Failure> {
    let file = quoted(&arg.path.to_string_lossy());
    if arg.is_stdin() {
        let limit = max_plain_len(settings.revision);
        let source = Source::stdin(limit).map_err(Failure::local)?;
        return Ok(Input {
            arg: arg.clone(),
            len: source.len,
            source: Some(source),
        });
    }
    let meta = std::fs::metadata(&arg.path).map_err(|e| {
        // A path from the command line came as an argument or a --file.
        let fix = match arg.source {
            ConfigSource::Flag => "the path".to_owned(),
            ConfigSource::TransferInfo => arg.source.hint("file", 3),
        };
        Failure::local(format!("cannot read {file}: {}; check {fix}", describe(&e)))
    })?;
    if meta.is_dir() {
        return Err(Failure::usage(format!(
            "{file} is a folder; sealdrop sends files: name them (for example {}/*)",
            arg.path.to_string_lossy().trim_end_matches('/')
        )));
    }
    if !meta.is_file() {
        return Err(Failure::usage(format!(
            "{file} is not a regular file; to send what a device or pipe produces, \
             give `-` and feed it on standard input"
        )));
    }
    Ok(Input {
        arg: arg.clone(),
        len: meta.len(),
        source: None,
    })
}

/// Creates and checks the state folder before any network traffic
/// (identity::prepare_dir), and says where a legacy me.info is used from.
fn prepare_state_dir(settings: &Settings, report: &Report) -> Result<(), Failure> {
    let dir = &settings.state_dir;
    identity::prepare_dir(dir).map_err(|e| {
        Failure::local(format!(
            "cannot use {} to keep {} and {}: {}; nothing was sent. Make it a writable \
             folder or choose another with --state-dir",
            quoted(&dir.to_string_lossy()),
            identity::ME_INFO,
            identity::PRIV_KEY,
            describe(&e)
        ))
    })?;
    if let StateDirOrigin::Legacy { default } = &settings.state_dir_origin {
        report.note(&format!(
            "using {} in the current folder (the old default); move it and {} to {} \
             (or pass --state-dir .) to keep this client wherever the command runs",
            identity::ME_INFO,
            identity::PRIV_KEY,
            quoted(&default.to_string_lossy())
        ));
    }
    Ok(())
}

/// A state folder holds one client: a run whose name differs from the one
/// in its `me.info` would act as that other client. With `--name` that is
/// refused; with the name from `transfer.info` the saved client is used,
/// as the original clients do, and a note says so.
fn check_saved_name(settings: &Settings, report: &Report, saved: &str) -> Result<(), Failure> {
    if saved == settings.name {
        return Ok(());
    }
    let folder = quoted(&settings.state_dir.to_string_lossy());
    let (saved_q, asked) = (quoted(saved), quoted(&settings.name));
    match settings.name_source {
        ConfigSource::Flag => Err(Failure::usage(format!(
            "the state folder {folder} holds the client {saved_q} (its {}), and --name is \
             {asked}: this run would send as {saved_q}, so nothing was sent. To send as \
             {saved_q}, give --name {saved}; to send as {asked}, give it its own folder with \
             --state-dir DIR (the folder that holds its {} if it registered before, else a new \
             one)",
            identity::ME_INFO,
            identity::ME_INFO,
        ))),
        ConfigSource::TransferInfo => {
            report.note(&format!(
                "{} in {folder} is the client {saved_q} and line 2 of {} says {asked}: sending \
                 as {saved_q}, as the original clients do (the name in {} wins); to send as \
                 {asked}, run from another folder or give --state-dir",
                identity::ME_INFO,
                crate::config::TRANSFER_INFO,
                identity::ME_INFO,
            ));
            Ok(())
        }
    }
}

/// Seeds the retry jitter from the OS (any value will do if it fails).
fn jitter_seed() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

fn load_fixed_key(path: &std::path::Path) -> Result<RsaPrivateKey, Failure> {
    let key = identity::read_key_file(path).map_err(|e| match e {
        LoadError::Io(p, e) => Failure::usage(format!(
            "cannot read --rsa-key {}: {}",
            quoted(&p.to_string_lossy()),
            describe(&e)
        )),
        LoadError::Malformed(p, why) => Failure::usage(format!(
            "unusable --rsa-key {}: {why}",
            quoted(&p.to_string_lossy())
        )),
    })?;
    key.public_key().to_spki_der().map_err(|e| {
        Failure::usage(format!(
            "unusable --rsa-key {}: {e}; it needs a 1024-bit key with e = 17",
            quoted(&path.to_string_lossy())
        ))
    })?;
    Ok(key)
}

fn load_failure(e: LoadError) -> Failure {
    match e {
        LoadError::Io(path, e) => Failure::local(format!(
            "cannot read {}: {}; check its permissions",
            quoted(&path.to_string_lossy()),
            describe(&e)
        )),
        LoadError::Malformed(path, why) => Failure::usage(format!(
            "{} is malformed: {why}. Keep it: without its key the server refuses this client's \
             name to a new registration. Restore it from a backup, or run with --state-dir \
             naming the folder that holds the good {} and {}; else register another name \
             (--name) with another --state-dir, or ask the server's operator to free the name \
             (sealdrop-server clients forget NAME)",
            quoted(&path.to_string_lossy()),
            identity::ME_INFO,
            identity::PRIV_KEY
        )),
    }
}
