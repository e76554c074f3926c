//! [`InProcess`]: the server's event loop on a thread of the test
//! (`sealdrop_server::inprocess`), with the data directory in a fresh
//! temporary folder. What it did is read from its [`Observed`] events,
//! not from a log.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sealdrop_protocol::server::CloseReason;
use sealdrop_protocol::{ClientId, Request, Response, ServerEvent};
use sealdrop_server::config::Settings;
use sealdrop_server::inprocess::{self, Running};

pub use sealdrop_server::inprocess::Observed;

use super::{fixed, request_frame, temp_data_dir, wait_until, Conn, DataDir, TestServer};

/// Events kept for [`InProcess::events`] and failure messages (the
/// newest; the counts stay exact beyond).
const EVENTS_KEPT: usize = 200_000;

/// What the current run was seen doing.
#[derive(Default)]
struct Seen {
    events: Vec<Observed>,
    connected: usize,
    closed: usize,
    peak_open: usize,
}

impl Seen {
    fn add(&mut self, e: Observed) {
        match &e {
            Observed::Connected { .. } => {
                self.connected += 1;
                self.peak_open = self.peak_open.max(self.connected - self.closed);
            }
            Observed::Closed { .. } => self.closed += 1,
            Observed::Session { .. } => {}
        }
        if self.events.len() == EVENTS_KEPT {
            self.events.drain(..EVENTS_KEPT / 2);
        }
        self.events.push(e);
    }
}

/// A server running on a thread of this process, stopped (drained and
/// joined) when dropped; a loop that failed fails the test then.
pub struct InProcess {
    running: Option<Running>,
    settings: Settings,
    data: DataDir,
    seen: RefCell<Seen>,
    // Last: removed after the server stopped.
    tmp: tempfile::TempDir,
}

impl TestServer for InProcess {
    fn addr(&self) -> SocketAddr {
        self.running().addr()
    }

    fn data(&self) -> &DataDir {
        &self.data
    }

    fn tmp_dir(&self) -> &Path {
        self.tmp.path()
    }

    fn recent(&self) -> String {
        self.pull();
        let seen = self.seen.borrow();
        let skip = seen.events.len().saturating_sub(40);
        let lines: Vec<String> = seen.events[skip..]
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        format!("last events of the server:\n{}", lines.join("\n"))
    }

    /// A 1027 of an unknown id on a new connection must get its 2106.
    fn assert_alive(&mut self) {
        let nobody = ClientId([0xa1; 16]);
        let probe = Conn::open(self.addr(), Duration::from_secs(10)).and_then(|mut c| {
            c.try_send(&request_frame(
                &nobody,
                &Request::Reconnect {
                    name: fixed("alive?"),
                },
            ))?;
            c.try_recv(Duration::from_secs(10))
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        match probe {
            Ok(Response::ReconnectDenied { client_id }) if client_id == nobody => {}
            other => panic!(
                "the server does not serve any more: {other:?}\n{}",
                self.recent()
            ),
        }
    }
}

impl InProcess {
    /// A server with the defaults of every flag.
    pub fn start() -> InProcess {
        InProcess::start_with(|_| {})
    }

    /// A server whose settings `configure` changes first (the equivalent
    /// of flags).
    pub fn start_with(configure: impl FnOnce(&mut Settings)) -> InProcess {
        InProcess::start_prepared(configure, |_| {})
    }

    /// As [`InProcess::start_with`], after `prepare(data_dir)` (to seed a
    /// database or mount a filesystem there).
    pub fn start_prepared(
        configure: impl FnOnce(&mut Settings),
        prepare: impl FnOnce(&Path),
    ) -> InProcess {
        let (tmp, data) = temp_data_dir();
        prepare(&data);
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut settings = Settings::with_defaults(any_port, &data);
        configure(&mut settings);
        let mut s = InProcess {
            running: None,
            settings,
            data: DataDir::new(&data),
            seen: RefCell::default(),
            tmp,
        };
        s.start_again();
        s
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("the server is running")
    }

    /// Where it serves `/metrics`, if `metrics_listen` was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running().metrics_addr()
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Starts the server again on the same data directory and settings
    /// (a new ephemeral port) after [`InProcess::stop`].
    pub fn start_again(&mut self) {
        assert!(self.running.is_none(), "start_again on a running server");
        let running = inprocess::spawn(self.settings.clone()).unwrap_or_else(|e| {
            panic!(
                "in-process server on {} did not start: {e}",
                self.data.path().display()
            )
        });
        self.running = Some(running);
        *self.seen.borrow_mut() = Seen::default();
    }

    /// Drains (as SIGTERM does) and waits for the loop; its result.
    pub fn try_stop(&mut self) -> std::io::Result<()> {
        match self.running.take() {
            Some(r) => r.stop(),
            None => Ok(()),
        }
    }

    /// Drains (as SIGTERM does) and waits for the loop; panics if it
    /// failed.
    pub fn stop(&mut self) {
        if let Err(e) = self.try_stop() {
            panic!("the event loop failed: {e}");
        }
    }

    /// Graceful stop, then start again.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Moves the events the loop sent since the last call into `seen`.
    fn pull(&self) {
        let Some(r) = self.running.as_ref() else {
            return;
        };
        let new = r.drain_events();
        let mut seen = self.seen.borrow_mut();
        for e in new {
            seen.add(e);
        }
    }

    /// The events of the current run so far (the newest
    /// [`EVENTS_KEPT`]).
    pub fn events(&self) -> Vec<Observed> {
        self.pull();
        self.seen.borrow().events.clone()
    }

    /// The session events of the current run so far.
    pub fn session_events(&self) -> Vec<ServerEvent> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Observed::Session { event, .. } => Some(event),
                _ => None,
            })
            .collect()
    }

    /// Whether an event of the current run so far satisfies `pred`.
    pub fn saw(&self, mut pred: impl FnMut(&Observed) -> bool) -> bool {
        self.pull();
        self.seen.borrow().events.iter().any(&mut pred)
    }

    /// Waits (bounded) for an event that satisfies `pred` (one already
    /// seen counts).
    pub fn wait_saw(&self, timeout: Duration, mut pred: impl FnMut(&Observed) -> bool) -> bool {
        wait_until(timeout, || self.saw(&mut pred))
    }

    /// Whether a session event of the current run satisfies `pred`.
    pub fn saw_session(&self, mut pred: impl FnMut(&ServerEvent) -> bool) -> bool {
        self.saw(|e| matches!(e, Observed::Session { event, .. } if pred(event)))
    }

    /// Waits (bounded) for a session event that satisfies `pred` (one
    /// already seen counts).
    pub fn wait_session(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&ServerEvent) -> bool,
    ) -> bool {
        wait_until(timeout, || self.saw_session(&mut pred))
    }

    /// Waits (bounded) until a session of the current run is closing, or
    /// a connection was closed, for `reason`.
    pub fn wait_close(&self, reason: CloseReason, timeout: Duration) -> bool {
        self.wait_saw(timeout, |e| match e {
            Observed::Session {
                event: ServerEvent::Closing(r),
                ..
            } => *r == reason,
            Observed::Closed {
                reason: Some(r), ..
            } => *r == reason,
            _ => false,
        })
    }

    /// Connections accepted in the current run.
    pub fn connected(&self) -> usize {
        self.pull();
        self.seen.borrow().connected
    }

    /// Connections open now (as far as the events tell).
    pub fn open_connections(&self) -> usize {
        self.pull();
        let seen = self.seen.borrow();
        seen.connected - seen.closed
    }

    /// The most connections open at once in the current run.
    pub fn peak_open(&self) -> usize {
        self.pull();
        self.seen.borrow().peak_open
    }

    /// Waits (bounded) until `n` connections were open at once.
    pub fn wait_open(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.peak_open() >= n)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let result = self.try_stop();
        if let Err(e) = result {
            if !std::thread::panicking() {
                panic!("the event loop failed: {e}");
            }
        }
    }
}
