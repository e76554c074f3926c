//! The blocking driver of `ClientSession`: carries out its actions on a
//! `std::net` socket and the file, feeds it the responses, and turns its
//! outcome into a report (see the driving contract in
//! `sealdrop_protocol::client`).

use std::io;
use std::time::Duration;

use sealdrop_protocol::client::{Action, ClientConfig, Event, Outcome, Violation, RETRY_DELAY};
use sealdrop_protocol::consts::{MAX_ERROR_RETRIES, MAX_SENDS};
use sealdrop_protocol::crypto::RsaPrivateKey;
use sealdrop_protocol::{ClientSession, FileUpload, RequestKind, ResponseKind, Revision};

use crate::config::Settings;
use crate::entropy::OsEntropy;
use crate::identity::{self, LoadError};
use crate::net::{describe, is_timeout, ConnectError, Endpoint, Link, ReadError};
use crate::progress::Progress;
use crate::report::{quoted, Done, FailKind, Failure, Report};
use crate::upload::{self, SendError, Source};

/// The last network error, for the final message.
struct NetError {
    /// True if opening the connection failed.
    connecting: bool,
    error: io::Error,
    /// A timeout on a connection that was open but from which not one
    /// byte ever came in this run: perhaps a service of another protocol
    /// that waits for its own request.
    silent: bool,
}

/// One run: the session plus everything it needs from the outside.
pub struct Job<'a> {
    settings: &'a Settings,
    report: &'a Report,
    session: ClientSession,
    source: Source,
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
}

impl<'a> Job<'a> {
    /// Opens the file, loads the state and the fixed key, and checks that
    /// the protocol can carry the file, all before anything is sent.
    pub fn prepare(
        settings: &'a Settings,
        report: &'a Report,
        quiet: bool,
    ) -> Result<Self, Failure> {
        let source = Source::open(&settings.file).map_err(|e| {
            Failure::local(format!(
                "cannot read {}: {}; check {}",
                quoted(&settings.file.to_string_lossy()),
                describe(&e),
                settings.file_source.hint("file", 3)
            ))
        })?;
        report.update(|s| s.bytes = Some(source.len));
        let fixed_key = settings
            .rsa_key
            .as_deref()
            .map(load_fixed_key)
            .transpose()?;
        let identity = identity::load(&settings.state_dir).map_err(load_failure)?;
        if let Some(id) = &identity {
            report.update(|s| s.client_id = Some(id.client_id));
        }
        let session = ClientSession::new(ClientConfig {
            revision: settings.revision,
            name: settings.name.clone(),
            file_name: settings.file_name.clone(),
            plain_len: source.len,
            identity,
            packets: settings.packets,
        })
        .map_err(|e| {
            let file = quoted(&settings.file.to_string_lossy());
            Failure::usage(format!("cannot send {file}: {e}"))
        })?;
        report.update(|s| s.packets = session.packet_plan().cloned());
        Ok(Job {
            settings,
            report,
            session,
            source,
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
        })
    }

    /// Runs the session to its end.
    pub fn run(&mut self) -> Result<Done, Failure> {
        loop {
            self.drain_events()?;
            let Some(action) = self.session.poll_action() else {
                self.receive()?;
                continue;
            };
            match action {
                Action::Connect { delay } => self.connect(delay)?,
                Action::Send(frame) => self.send(&frame),
                Action::SendFile(upload) => self.send_file(upload)?,
                Action::GenerateKeyPair => self.key_pair()?,
                Action::Done(outcome) => return self.finish(outcome),
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
            Event::ConnectionLost { retry, of } => {
                let why = self
                    .last_error
                    .as_ref()
                    .map_or("lost".into(), |e| describe(&e.error));
                report.note(&format!(
                    "connection problem: {why}; retrying ({retry} of {of})"
                ));
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
                "registered as {} but could not save {} and {} in {}: {}; make the folder writable \
                 (--state-dir), or the next run must register under another name",
                identity.client_id,
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
        if let Err(e) = link.write_all(frame) {
            self.lost(e, false);
        }
    }

    fn send_file(&mut self, upload: Box<FileUpload>) -> Result<(), Failure> {
        let Some(link) = &mut self.link else {
            self.lost(io::ErrorKind::NotConnected.into(), false);
            return Ok(());
        };
        log::debug!(
            "conn#{} -> {} attempt {}, content_size {}{}",
            self.conns,
            request_code(self.settings.revision, RequestKind::SendFile),
            upload.attempt,
            upload.content_size,
            upload
                .packets
                .as_ref()
                .map_or(String::new(), |p| format!(", {}", p.summary()))
        );
        match upload::send_file(link, &mut self.source, upload, &mut self.progress) {
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
                let file = quoted(&self.source.path.to_string_lossy());
                Err(Failure::local(format!(
                    "cannot send {file}: {why}; send it again once nothing writes to it"
                )))
            }
        }
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
        let silent = !connecting && !self.heard && is_timeout(&error);
        self.last_error = Some(NetError {
            connecting,
            error,
            silent,
        });
        self.session.handle_connection_lost();
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

    fn finish(&mut self, outcome: Outcome) -> Result<Done, Failure> {
        if let Some(link) = self.link.take() {
            link.close();
        }
        self.report.update(|s| s.attempts = self.session.attempts());
        match outcome {
            Outcome::Verified { attempts, cksum } => Ok(Done {
                file_name: self.settings.file_name.clone(),
                bytes: self.source.len,
                cksum,
                attempts,
                revision: self.settings.revision,
                packets: self.session.packet_plan().cloned(),
            }),
            other => Err(self.failure(&other)),
        }
    }

    fn failure(&self, outcome: &Outcome) -> Failure {
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
                    quoted(&s.file_name),
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

    fn network_failure(&self, request: RequestKind) -> Failure {
        let s = self.settings;
        let tries = format!(
            "{} tries {} s apart",
            MAX_ERROR_RETRIES + 1,
            RETRY_DELAY.as_secs_f32()
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
            Some(NetError { silent: true, .. }) => format!(
                "no answer from {} within {} s to {} ({tries}), not a single byte on any \
                 connection: is it a sealdrop server? A service of another protocol (an HTTP \
                 or TLS server, say) accepts the connection and waits for its own request; \
                 check the port in {}, or raise --timeout if the server is only slow",
                s.server,
                s.timeout.as_secs_f64(),
                request_label(s.revision, request),
                s.server_source.hint("server", 1)
            ),
            Some(NetError { error, .. }) if is_timeout(error) => format!(
                "no answer from {} within {} s to {} ({tries}); is the server overloaded or \
                 stuck? --timeout raises the limit",
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
             anew ({failed}): another client holds that name; choose another name ({fix}) or \
             restore that client's {}",
            identity::ME_INFO,
            identity::ME_INFO
        )
    } else {
        format!(
            "server refused to register {name} ({failed}): the name is taken by another client \
             or invalid; choose another name ({fix})"
        )
    };
    Failure::new(FailKind::Refused, message)
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
            "{} is malformed: {why}; restore it, or delete it to register as a new client",
            quoted(&path.to_string_lossy())
        )),
    }
}
