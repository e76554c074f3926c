//! A server running on a thread of the calling process: what the tests
//! and the benchmark use instead of spawning the binary, when they do not
//! need a process of its own (signals, `kill -9`, systemd, flags).
//!
//! [`spawn`] binds the listening address of its [`Settings`] (port 0 picks
//! a free one), opens the data directory, and runs the same event loop as
//! the binary. The [`Running`] handle tells the address, hands out what
//! the loop did as [`Observed`] events, and stops the loop (a drain, as
//! SIGTERM) when asked or dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sealdrop_protocol::decode::RevisionChoice;
use sealdrop_protocol::server::CloseReason;
use sealdrop_protocol::ServerEvent;

use crate::config::Settings;
use crate::event_loop::{Server, StopHandle};
use crate::store::DiskStore;

/// Something the event loop did, as it logs it.
#[derive(Debug, Clone)]
pub enum Observed {
    /// A connection was accepted.
    Connected {
        /// Its slab key (reused once the connection is closed).
        conn: usize,
        /// Its serial number, unique for the server's life: the `conn#N`
        /// of the log.
        serial: u64,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// A session reported an event (see [`ServerEvent`]).
    Session {
        /// The connection's slab key.
        conn: usize,
        /// The connection's serial number.
        serial: u64,
        /// What happened.
        event: ServerEvent,
    },
    /// A connection was closed.
    Closed {
        /// The connection's slab key.
        conn: usize,
        /// The connection's serial number.
        serial: u64,
        /// The session's reason, if it was closing on its own.
        reason: Option<CloseReason>,
        /// What the loop saw ("done", "read error: ...", ...).
        why: String,
    },
}

/// A server running in this process. Dropping it stops the loop and
/// waits for it.
pub struct Running {
    addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    stop: StopHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
    events: Receiver<Observed>,
}

/// Opens the data directory of `settings`, binds every address of
/// `settings.listen`, and runs the event loop on a new thread.
pub fn spawn(settings: Settings) -> io::Result<Running> {
    let store = DiskStore::open(&settings.data_dir, settings.store.clone())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut listeners = Vec::with_capacity(settings.listen.len());
    for spec in &settings.listen {
        listeners.push((std::net::TcpListener::bind(spec.addr)?, spec.revision));
    }
    spawn_with(listeners, store, settings)
}

/// Runs the event loop on a new thread over open listeners (each with
/// the revisions its connections speak) and an open store.
pub fn spawn_with(
    listeners: Vec<(std::net::TcpListener, RevisionChoice)>,
    store: DiskStore,
    settings: Settings,
) -> io::Result<Running> {
    let mut server = Server::new(listeners, store, settings)?;
    let (tx, events) = mpsc::channel();
    server.set_observer(tx);
    let addr = server.local_addr();
    let addrs = server.local_addrs().to_vec();
    let metrics_addr = server.metrics_addr();
    let stop = server.stop_handle();
    let thread = std::thread::Builder::new()
        .name(format!("sealdrop-server {addr}"))
        .spawn(move || server.run())?;
    Ok(Running {
        addr,
        addrs,
        metrics_addr,
        stop,
        thread: Some(thread),
        events,
    })
}

impl Running {
    /// The (first) address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every address the server listens on, in the order of
    /// `settings.listen`.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Where `GET /metrics` is served, if `settings.metrics_listen` was set
    /// (port 0 picks a free one).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or
    /// once the loop is gone.
    pub fn next_event(&self, timeout: Duration) -> Option<Observed> {
        // Timeout or the loop gone: nothing more to see.
        self.events.recv_timeout(timeout).ok()
    }

    /// Every event observed so far, without waiting.
    pub fn drain_events(&self) -> Vec<Observed> {
        self.events.try_iter().collect()
    }

    /// Waits up to `timeout` for an event that `pick` maps to `Some`,
    /// dropping the events before it.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&Observed) -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let event = self.next_event(left)?;
            if let Some(t) = pick(&event) {
                return Some(t);
            }
        }
    }

    /// A handle that starts the drain from anywhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Drains and waits for the loop to return; its result.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        self.stop.stop();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the event loop panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
