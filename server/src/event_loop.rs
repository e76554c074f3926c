//! The server's single thread: one mio poll loop, each connection a
//! [`ServerSession`] in a slab keyed by its token.
//!
//! Per wake-up: signals, the listener, the ready connections, the timers
//! that are due, then housekeeping. A connection is "driven" whenever
//! something may have changed for it: write what it has, feed it what it
//! has read, read more, until nothing moves or its budget is used (then it
//! is queued to be driven again without waiting for an event).
//!
//! Group commit is the store's contract ([`Store::commit`]): storage
//! changes made during a pass are not synced one by one, and a session
//! holds every answer it produces while the store has uncommitted
//! changes. A pass ends with one commit if anything waits; the loop hands
//! each session that holds answers the commit's outcome for its
//! connection ([`ServerSession::handle_commit`]) and queues it to write.
//! The loop never edits a session's output. So no answer ever
//! acknowledges a change that is not durable, and one sync serves every
//! client of the pass.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::store::DiskStore;
use sealdrop_protocol::crypto::Entropy;
use sealdrop_protocol::decode::RevisionChoice;
use sealdrop_protocol::error::DecodeError;
use sealdrop_protocol::server::{CloseReason, ServerConfig, ServerEvent, VerdictKind};
use sealdrop_protocol::store::{Commit, Durability, Store};
use sealdrop_protocol::{ResponseKind, Revision, ServerSession};

use crate::config::Settings;
use crate::control::{self, Control};
use crate::inprocess::Observed;
use crate::metrics::{LoopView, Metrics};
use crate::systemd;

/// Listener `i` has token `LISTENER_BASE - i` (connections use their slab
/// keys, far below).
const LISTENER_BASE: usize = usize::MAX - 16;
/// Most listening sockets one server takes (`--listen` given this many
/// times, or as many sockets passed by systemd).
pub const MAX_LISTENERS: usize = 64;
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
/// Read size between requests: requests are at most 438 bytes, so a small
/// read keeps what an idle or hostile connection can leave buffered small.
const SMALL_READ: usize = 16 * 1024;
/// Read size while file content streams: large reads move loopback data
/// 1.6-2.3x faster than 64 KiB ones.
const CONTENT_READ: usize = 1 << 20;
/// Reads and writes one connection may do per drive before others get a
/// turn (sozu's MAX_LOOP_ITERATIONS idea).
const DRIVE_BUDGET: usize = 16;
/// After a 2107 for an undecodable frame the server stops writing and
/// reads (and drops) what the peer still sends for up to this long, so
/// closing with unread input does not reset the connection before the
/// peer has read the 2107 (the reference server drains briefly too).
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes dropped while lingering before the connection is closed.
const LINGER_BYTES: usize = 1 << 20;
/// Connections accepted per listener wake-up before the loop turns to the
/// others.
const ACCEPT_BUDGET: usize = 256;
/// Pause after the process runs out of descriptors (EMFILE/ENFILE), so
/// the loop never spins on a listener it cannot serve.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accepting resumes once connections fall below this share of the cap.
const RESUME_PERCENT: usize = 90;
/// How often orphaned uploads are expired.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Events collected per poll.
const EVENTS_CAPACITY: usize = 1024;

/// The only source of randomness: the operating system's CSPRNG (§4).
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if let Err(e) = getrandom::fill(dest) {
            // Without a CSPRNG there is no safe key to hand out.
            log::error!("the operating system's random generator failed: {e}");
            std::process::abort();
        }
    }
}

/// An I/O outcome folded to what the loop acts on; the only place that
/// looks at `io::ErrorKind`.
enum IoOutcome {
    Done(usize),
    WouldBlock,
    Closed,
    Failed(io::Error),
}

fn fold(result: io::Result<usize>) -> IoOutcome {
    match result {
        Ok(0) => IoOutcome::Closed,
        Ok(n) => IoOutcome::Done(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => IoOutcome::WouldBlock,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => IoOutcome::Done(0),
        Err(e) => IoOutcome::Failed(e),
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    session: ServerSession<<DiskStore as sealdrop_protocol::Store>::Upload>,
    /// Bytes read but not yet taken by the session (backpressure).
    leftover: Vec<u8>,
    readable: bool,
    writable: bool,
    eof: bool,
    serial: u64,
    /// The deadline a timer entry is queued for, if any.
    armed: Option<Instant>,
    /// Set while lingering after a fatal 2107: the close deadline and the
    /// bytes dropped so far.
    linger: Option<(Instant, usize)>,
    /// Driven in the current pass (listed in `Server::touched`).
    in_pass: bool,
}

/// A listening socket and the revisions its connections speak.
struct Listener {
    socket: TcpListener,
    addr: SocketAddr,
    revision: RevisionChoice,
    /// Connections may be waiting that were not accepted yet.
    backlog: bool,
}

/// The server: listeners, connections, timers, storage.
pub struct Server {
    poll: Poll,
    /// Emptied when a drain starts.
    listeners: Vec<Listener>,
    local_addrs: Vec<SocketAddr>,
    /// SIGTERM/SIGINT as poll events, once [`Server::handle_signals`] ran.
    signals: Option<Signals>,
    /// Wakes the loop for a [`StopHandle`].
    waker: Arc<Waker>,
    stop_requested: Arc<AtomicBool>,
    /// Where a copy of every loop and session event goes (tests, bench).
    observer: Option<Sender<Observed>>,
    conns: Slab<Conn>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    store: DiskStore,
    rng: OsEntropy,
    settings: Settings,
    read_buf: Vec<u8>,
    serial: u64,
    /// Accepting paused until this instant (descriptor exhaustion).
    accept_paused_until: Option<Instant>,
    /// Connections to drive again without waiting for an event.
    again: Vec<Token>,
    /// Connections driven in this pass: those whose sessions hold answers
    /// get the outcome of the pass's commit.
    touched: Vec<usize>,
    /// Set once SIGTERM/SIGINT arrived: the drain deadline.
    draining: Option<Instant>,
    /// The connection cap was hit; accepting waits for RESUME_PERCENT.
    capped: bool,
    next_housekeeping: Instant,
    watchdog: Option<(Duration, Instant)>,
    /// The control socket (administration commands), if it could be bound.
    control: Option<Control>,
    started: Instant,
    /// Counters, `--metrics-listen` and `STATUS=`.
    metrics: Metrics,
    /// The key of each open connection by its serial number (what the
    /// store names connections by).
    by_serial: HashMap<u64, usize>,
    /// When the store's commit in flight started (PostgreSQL: it ends
    /// when the database answers, some passes later).
    commit_started: Option<Instant>,
    /// The summary lines of accepted uploads, logged once the commit that
    /// keeps them is known to have succeeded (or failed).
    held_verdicts: Vec<HeldVerdict>,
}

/// An accepted upload's summary line, waiting for the outcome of the
/// commit of its batch: `outcome=verified` may only be logged for a file
/// that is durable, or the log would claim a file a crash discarded.
struct HeldVerdict {
    /// The connection's serial (what a [`Commit`] names connections by).
    serial: u64,
    /// The store's batch the acceptance went into ([`Store::batch`]).
    batch: u64,
    /// The line up to its outcome.
    line: String,
    /// It replaces a verified file of that name.
    replaced: bool,
    /// What the connection's revision answers a failure with.
    error_answer: String,
}

impl Server {
    /// Sets up polling on already bound listeners, each with the
    /// revisions its connections speak.
    pub fn new(
        listeners: Vec<(std::net::TcpListener, RevisionChoice)>,
        store: DiskStore,
        settings: Settings,
    ) -> io::Result<Server> {
        if listeners.is_empty() || listeners.len() > MAX_LISTENERS {
            return Err(io::Error::other(format!(
                "{} listening sockets: between 1 and {MAX_LISTENERS} are possible",
                listeners.len()
            )));
        }
        let mut store = store;
        store.housekeeping(Instant::now(), SystemTime::now());
        let poll = Poll::new()?;
        let mut bound = Vec::with_capacity(listeners.len());
        for (i, (listener, revision)) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let mut socket = TcpListener::from_std(listener);
            let addr = socket.local_addr()?;
            poll.registry()
                .register(&mut socket, Token(LISTENER_BASE - i), Interest::READABLE)?;
            bound.push(Listener {
                socket,
                addr,
                revision,
                backlog: false,
            });
        }
        let local_addrs = bound.iter().map(|l| l.addr).collect();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        store
            .attach(waker.clone())
            .map_err(|e| io::Error::other(format!("cannot start the database worker: {e}")))?;
        let db_path = store.db().and_then(crate::db::Db::path);
        let metrics = Metrics::new(
            &settings.data_dir,
            db_path.as_deref(),
            &crate::metrics::store_label(&settings.store.database, db_path.as_deref()),
            settings.max_connections,
            settings.metrics_listen,
            poll.registry(),
        )?;
        let now = Instant::now();
        let control = Control::bind(&settings.control_socket_path(), poll.registry())
            .inspect(|c| log::info!("administration commands on {}", c.path().display()))
            .map_err(|e| {
                log::warn!(
                    "cannot serve the control socket {}: {e}; administration commands that \
                     change something will not work while the server runs",
                    settings.control_socket_path().display()
                )
            })
            .ok();
        Ok(Server {
            poll,
            listeners: bound,
            local_addrs,
            signals: None,
            waker,
            stop_requested: Arc::new(AtomicBool::new(false)),
            observer: None,
            conns: Slab::with_capacity(settings.max_connections.min(1024)),
            timers: BinaryHeap::new(),
            store,
            rng: OsEntropy,
            read_buf: vec![0; CONTENT_READ],
            serial: 0,
            accept_paused_until: None,
            again: Vec::new(),
            touched: Vec::new(),
            draining: None,
            capped: false,
            next_housekeeping: now + HOUSEKEEPING,
            watchdog: systemd::watchdog_interval().map(|d| (d, now)),
            settings,
            control,
            started: now,
            metrics,
            by_serial: HashMap::new(),
            commit_started: None,
            held_verdicts: Vec::new(),
        })
    }

    /// Makes SIGTERM and SIGINT start a drain, and SIGHUP (whose default
    /// action would kill the process) only a log line: there is nothing
    /// to reopen, the log is stderr. What the binary does; an in-process
    /// server is stopped through its [`StopHandle`] instead.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// A handle that starts a drain from another thread, as SIGTERM does.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            waker: Arc::clone(&self.waker),
            requested: Arc::clone(&self.stop_requested),
        }
    }

    /// Sends a copy of every event the loop logs to `observer` (tests and
    /// the benchmark read what the server did from it, not from the log).
    pub fn set_observer(&mut self, observer: Sender<Observed>) {
        self.observer = Some(observer);
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// Every address listened on, in the order given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Where `GET /metrics` is served, with `--metrics-listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.addr()
    }

    /// Runs until a signal asks it to stop and the drain is over.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    WAKER => self.on_wake(),
                    Token(t) if t <= LISTENER_BASE && t > LISTENER_BASE - MAX_LISTENERS => {
                        if let Some(l) = self.listeners.get_mut(LISTENER_BASE - t) {
                            l.backlog = true;
                        }
                    }
                    token if control::owns(token) => {
                        if let Some(c) = self.control.as_mut() {
                            c.on_event(token);
                        }
                    }
                    token if self.metrics.owns(token) => self.metrics.on_event(token, event),
                    token => self.on_conn_event(token, event),
                }
            }
            let now = Instant::now();
            if let Some(c) = self.control.as_mut() {
                let stats = control::LoopStats {
                    connections: self.conns.len(),
                    started: self.started,
                };
                c.serve(self.poll.registry(), &mut self.store, now, stats);
            }
            self.store_progress(now);
            self.accept(now);
            for token in std::mem::take(&mut self.again) {
                self.drive(token);
            }
            self.fire_timers(now);
            // Before any scrape: what the pass's requests and the
            // control socket's changes put out of the pending uploads.
            self.count_dropped_pending();
            self.metrics.serve(self.poll.registry(), now, self.view());
            self.housekeeping(now);
            self.end_pass();
            self.measure_files(Instant::now());
            if self.drain_done(now) {
                if self.store.uncommitted() || self.commit_started.is_some() {
                    let commit = self.store.commit(Instant::now());
                    if let Some(e) = &commit.error {
                        log::error!("storage sync at exit failed: {e}");
                    }
                    self.settle_verdicts(&commit);
                }
                return Ok(());
            }
        }
    }

    /// Lists a connection as driven in this pass.
    fn enter(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.in_pass {
            conn.in_pass = true;
            self.touched.push(key);
        }
    }

    /// What the store finished since the last pass (PostgreSQL): parked
    /// requests whose reads arrived are decided, and a finished commit
    /// releases (or fails) the answers held for it.
    fn store_progress(&mut self, now: Instant) {
        for serial in self.store.take_ready() {
            let Some(&key) = self.by_serial.get(&serial) else {
                continue;
            };
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.session
                .handle_store_ready(now, &mut self.store, &mut self.rng);
            self.enter(key);
            self.again.push(Token(key));
        }
        if let Some(started) = self.commit_started {
            if let Some(commit) = self.store.poll_commit() {
                self.commit_started = None;
                self.commit_done(&commit, started.elapsed(), None);
            }
        }
    }

    /// Ends a pass: one store commit for everything the pass changed, then
    /// each session holding answers gets the outcome for its connection
    /// and is queued to write what it released (or its 2107). With
    /// PostgreSQL the commit is only started here (unless one is in flight
    /// already) and its outcome comes in a later pass.
    fn end_pass(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        let touched: Vec<usize> = touched
            .into_iter()
            .filter(|&key| match self.conns.get_mut(key) {
                // Listed twice (a reused key) counts once.
                Some(conn) => std::mem::replace(&mut conn.in_pass, false),
                None => false,
            })
            .collect();
        let started = Instant::now();
        if self.commit_started.is_some() {
            return; // its outcome releases what waits
        }
        if !self.store.uncommitted() {
            self.metrics.pass_ended(None, started.elapsed());
            if let Some(c) = self.control.as_mut() {
                if c.committed(self.poll.registry(), None) {
                    self.metrics.measure_soon();
                }
            }
            for key in touched {
                let Some(conn) = self.conns.get_mut(key) else {
                    continue;
                };
                if conn.session.holds_output() {
                    conn.session
                        .handle_commit(Durability::Durable, &mut self.store);
                    log_events(
                        key,
                        conn,
                        &self.observer,
                        &mut self.metrics,
                        &mut self.held_verdicts,
                        self.store.batch(),
                    );
                    self.again.push(Token(key));
                }
            }
            return;
        }
        match self.store.begin_commit(Instant::now()) {
            Some(commit) => self.commit_done(&commit, started.elapsed(), Some(touched)),
            None => self.commit_started = Some(started),
        }
    }

    /// A commit finished: its outcome to the sessions holding answers
    /// (`keys`, or every connection's), the metrics and the control socket.
    fn commit_done(&mut self, commit: &Commit, took: Duration, keys: Option<Vec<usize>>) {
        self.metrics.pass_ended(Some(commit), took);
        self.metrics.files_removed(self.store.take_removed_bytes());
        if let Some(e) = commit.error.as_ref() {
            log::error!(
                "storage sync failed: {e}; the answers that waited for it become the \
                 revision's error answer (2107, 1607 in 2024a/c; a close in 2022c)"
            );
        }
        self.settle_verdicts(commit);
        if let Some(c) = self.control.as_mut() {
            if c.committed(self.poll.registry(), commit.error.as_ref()) {
                // A repair changes records with no client event to count.
                self.metrics.measure_soon();
            }
        }
        let keys = keys.unwrap_or_else(|| self.conns.iter().map(|(k, _)| k).collect());
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if !conn.session.holds_output() {
                continue;
            }
            if commit.outcome(conn.serial) == Durability::Failed
                && commit.refusal(conn.serial).is_none()
            {
                log::warn!(
                    "conn#{} {}: answers withheld (not durable): {}",
                    conn.serial,
                    conn.peer,
                    error_sent(conn.session.answer_revision()),
                );
            }
            conn.session.handle_commit_of(commit, &mut self.store);
            log_events(
                key,
                conn,
                &self.observer,
                &mut self.metrics,
                &mut self.held_verdicts,
                self.store.batch(),
            );
            self.again.push(Token(key));
        }
    }

    /// Logs the summary lines of the accepted uploads `commit` decided:
    /// `outcome=verified` for those it made durable, what happened
    /// instead for the others. Lines of a later batch wait for theirs.
    fn settle_verdicts(&mut self, commit: &Commit) {
        for h in self
            .held_verdicts
            .extract_if(.., |h| h.batch <= commit.batch)
        {
            let line = &h.line;
            if let Some(refusal) = commit.refusal(h.serial) {
                log::warn!(
                    "{line} outcome=refused-at-commit({}) reason=\"{}\"",
                    h.error_answer,
                    refusal.error
                );
            } else if commit.outcome(h.serial) == Durability::Failed {
                log::warn!("{line} outcome=commit-failed({})", h.error_answer);
            } else if h.replaced {
                // §6 allows it, but an operator wants to know.
                log::info!("{line} outcome=verified replaced=earlier-file");
            } else {
                log::info!("{line} outcome=verified");
            }
        }
    }

    /// The metrics' measurement of the stored files (SQLite): started
    /// between commits, so the snapshot it reads holds every placement the
    /// running figure counted and none it will count.
    fn measure_files(&mut self, now: Instant) {
        let quiet = self.commit_started.is_none() && !self.store.uncommitted();
        self.metrics.measure(now, quiet);
    }

    /// What the metrics read from the loop at a scrape.
    fn view(&self) -> LoopView {
        LoopView {
            open_connections: self.conns.len(),
            awaiting_verdict: self.store.pending_count(),
            shared_sizes: self.store.shared_sizes(),
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let backlog = self.listeners.iter().any(|l| l.backlog);
        if !self.again.is_empty() || (backlog && self.can_accept(now)) {
            return Some(Duration::ZERO);
        }
        let mut next = self.next_housekeeping;
        if let Some(Reverse((at, _, _))) = self.timers.peek() {
            next = next.min(*at);
        }
        if let Some(until) = self.accept_paused_until {
            next = next.min(until);
        }
        if let Some((every, last)) = self.watchdog {
            next = next.min(last + every);
        }
        if let Some(deadline) = self.draining {
            next = next.min(deadline);
        }
        if let Some(at) = self.control.as_ref().and_then(Control::next_deadline) {
            next = next.min(at);
        }
        if let Some(at) = self.metrics.next_deadline() {
            next = next.min(at);
        }
        Some(next.saturating_duration_since(now))
    }

    fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let got: Vec<i32> = signals.pending().collect();
        let mut stop = None;
        for signal in got {
            if signal == signal_hook::consts::SIGHUP {
                log::info!(
                    "SIGHUP received: ignored (nothing to reopen: the log goes to stderr; \
                     flags are read at start only, restart to change them)"
                );
            } else {
                stop.get_or_insert(signal);
            }
        }
        let Some(signal) = stop else {
            return;
        };
        if self.draining.is_some() {
            return;
        }
        log::info!(
            "signal {signal} received: no new connections, draining {} connection(s) for up to {:?}",
            self.conns.len(),
            self.settings.drain_timeout
        );
        self.start_drain();
    }

    fn on_wake(&mut self) {
        if !self.stop_requested.load(Ordering::Acquire) || self.draining.is_some() {
            return;
        }
        log::info!(
            "stop requested: no new connections, draining {} connection(s) for up to {:?}",
            self.conns.len(),
            self.settings.drain_timeout
        );
        self.start_drain();
    }

    fn start_drain(&mut self) {
        systemd::stopping();
        self.draining = Some(Instant::now() + self.settings.drain_timeout);
        for mut l in std::mem::take(&mut self.listeners) {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| drain_can_close(c, &self.store))
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.close(key, "server shutting down");
        }
    }

    fn drain_done(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.draining else {
            return false;
        };
        if now >= deadline && !self.conns.is_empty() {
            log::warn!(
                "drain deadline passed: closing {} connection(s) still busy",
                self.conns.len()
            );
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.close(key, "drain deadline passed");
            }
        }
        self.conns.is_empty()
    }

    fn can_accept(&self, now: Instant) -> bool {
        if self.listeners.is_empty() || self.accept_paused_until.is_some_and(|t| now < t) {
            return false;
        }
        if self.capped {
            // Hysteresis: once at the cap, resume only below RESUME_PERCENT.
            return false;
        }
        self.conns.len() < self.settings.max_connections
    }

    /// Accepts from every listener with connections waiting, up to
    /// [`ACCEPT_BUDGET`] in all per wake-up.
    fn accept(&mut self, now: Instant) {
        let mut budget = ACCEPT_BUDGET;
        for i in 0..self.listeners.len() {
            if budget == 0 {
                return;
            }
            budget -= self.accept_from(i, budget, now);
        }
    }

    /// Accepts up to `budget` connections from listener `i`; how many
    /// attempts it used.
    fn accept_from(&mut self, i: usize, budget: usize, now: Instant) -> usize {
        if !self.listeners.get(i).is_some_and(|l| l.backlog) {
            return 0;
        }
        for used in 0..budget {
            if !self.can_accept(now) {
                if !self.listeners.is_empty()
                    && self.conns.len() >= self.settings.max_connections
                    && !self.capped
                {
                    self.capped = true;
                    log::warn!(
                        "connection cap of {} reached: not accepting until below {}%",
                        self.settings.max_connections,
                        RESUME_PERCENT
                    );
                }
                return used;
            }
            self.accept_paused_until = None;
            let Some(listener) = self.listeners.get_mut(i) else {
                return used;
            };
            let revision = listener.revision;
            match listener.socket.accept() {
                Ok((stream, peer)) => self.add_conn(stream, peer, revision, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    listener.backlog = false;
                    return used + 1;
                }
                Err(e) if is_descriptor_exhaustion(&e) => {
                    log::error!("cannot accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return used + 1;
                }
                Err(e) => log::warn!("accept failed: {e}"),
            }
        }
        budget
    }

    fn add_conn(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        revision: RevisionChoice,
        now: Instant,
    ) {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), interest)
        {
            log::warn!("connection from {peer}: cannot register: {e}");
            return;
        }
        let _ = stream.set_nodelay(true);
        self.serial += 1;
        self.by_serial.insert(self.serial, key);
        self.metrics.connection_accepted();
        entry.insert(Conn {
            stream,
            peer,
            session: ServerSession::new(
                ServerConfig {
                    revision,
                    ..self.settings.session.clone()
                },
                self.serial,
                now,
            ),
            leftover: Vec::new(),
            readable: true,
            writable: true,
            eof: false,
            serial: self.serial,
            armed: None,
            linger: None,
            in_pass: false,
        });
        log::info!(
            "conn#{} {peer}: connected ({} open)",
            self.serial,
            self.conns.len()
        );
        observe(
            &self.observer,
            Observed::Connected {
                conn: key,
                serial: self.serial,
                peer,
            },
        );
        self.drive(Token(key));
    }

    fn on_conn_event(&mut self, token: Token, event: &mio::event::Event) {
        let Some(conn) = self.conns.get_mut(token.0) else {
            return; // spurious: already closed
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            conn.readable = true;
        }
        if event.is_writable() || event.is_write_closed() {
            conn.writable = true;
        }
        self.again.push(token);
    }

    /// Moves bytes for one connection until nothing changes or its budget
    /// is spent. The clock is read at every step: a step may have waited
    /// on the disk.
    fn drive(&mut self, token: Token) {
        let key = token.0;
        self.enter(key);
        let mut budget = DRIVE_BUDGET;
        loop {
            let now = Instant::now();
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if let Some((until, _)) = conn.linger {
                match linger_step(conn, &mut self.read_buf, &self.metrics) {
                    Step::Moved if now < until => {}
                    Step::Idle if now < until => break,
                    _ => return self.close(key, "framing lost"),
                }
            } else {
                let step = step(
                    conn,
                    &mut self.store,
                    &mut self.rng,
                    &mut self.read_buf,
                    now,
                    &self.metrics,
                );
                log_events(
                    key,
                    conn,
                    &self.observer,
                    &mut self.metrics,
                    &mut self.held_verdicts,
                    self.store.batch(),
                );
                let finished = conn.session.is_finished();
                match step {
                    Step::Failed(why) => return self.close(key, &why),
                    _ if finished && should_linger(conn) => {
                        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                        conn.linger = Some((now + LINGER, 0));
                    }
                    _ if finished => return self.close(key, "done"),
                    Step::Idle => break,
                    Step::Moved => {}
                }
            }
            budget -= 1;
            if budget == 0 {
                self.again.push(token);
                break;
            }
        }
        let draining = self.draining.is_some();
        if let Some(conn) = self.conns.get(key) {
            if draining && drain_can_close(conn, &self.store) {
                return self.close(key, "server shutting down");
            }
        }
        self.arm_timer(key);
    }

    fn arm_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = match conn.linger {
            Some((until, _)) => Some(until),
            None => conn.session.poll_timeout(),
        };
        let Some(deadline) = deadline else {
            return;
        };
        if conn.armed.is_none_or(|armed| deadline < armed) {
            conn.armed = Some(deadline);
            self.timers.push(Reverse((deadline, key, conn.serial)));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, key, serial))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.serial != serial || conn.armed != Some(at) {
                continue; // stale entry
            }
            conn.armed = None;
            if conn.linger.is_some_and(|(until, _)| now >= until) {
                self.close(key, "framing lost");
                continue;
            }
            self.enter(key);
            if let Some(conn) = self.conns.get_mut(key) {
                conn.session.handle_timeout(now, &mut self.store);
            }
            self.drive(Token(key));
        }
    }

    /// Counts in the metrics the uploads awaiting a verdict that the
    /// store dropped without one (expired, put out for room, withdrawn).
    fn count_dropped_pending(&mut self) {
        let d = self.store.take_dropped_pending();
        self.metrics.pending_dropped(d.expired, d.withdrawn);
    }

    fn housekeeping(&mut self, now: Instant) {
        if let Some((every, last)) = self.watchdog {
            if now >= last + every {
                systemd::watchdog();
                self.watchdog = Some((every, now));
            }
        }
        if now >= self.next_housekeeping {
            self.store.housekeeping(now, SystemTime::now());
            self.count_dropped_pending();
            if let Some(line) = self
                .metrics
                .status_update(self.conns.len(), self.draining.is_some())
            {
                systemd::status(line);
            }
            self.next_housekeeping = now + HOUSEKEEPING;
        }
    }

    fn close(&mut self, key: usize, why: &str) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        self.by_serial.remove(&conn.serial);
        conn.session.close(Instant::now(), &mut self.store);
        log_events(
            key,
            &mut conn,
            &self.observer,
            &mut self.metrics,
            &mut self.held_verdicts,
            self.store.batch(),
        );
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let reason = conn
            .session
            .close_reason()
            .map(|r| describe_close(r, conn.session.answer_revision()))
            .unwrap_or_else(|| "closed".to_owned());
        log::info!(
            "conn#{} {}: closed: {reason} ({why}); {} open",
            conn.serial,
            conn.peer,
            self.conns.len()
        );
        observe(
            &self.observer,
            Observed::Closed {
                conn: key,
                serial: conn.serial,
                reason: conn.session.close_reason(),
                why: why.to_owned(),
            },
        );
        if self.capped && self.conns.len() * 100 < self.settings.max_connections * RESUME_PERCENT {
            self.capped = false;
            for l in &mut self.listeners {
                l.backlog = true;
            }
            log::info!("below {RESUME_PERCENT}% of the connection cap: accepting again");
        }
    }
}

/// During a drain a connection may be closed once it is between requests,
/// has written everything and holds no upload awaiting its verdict.
fn drain_can_close(conn: &Conn, store: &DiskStore) -> bool {
    conn.session.is_idle()
        && conn.leftover.is_empty()
        && !conn.session.has_unsent_output()
        && !store.has_pending(conn.serial)
}

enum Step {
    Moved,
    Idle,
    Failed(String),
}

/// One round of write, feed, read for a connection.
fn step(
    conn: &mut Conn,
    store: &mut DiskStore,
    rng: &mut OsEntropy,
    buf: &mut [u8],
    now: Instant,
    metrics: &Metrics,
) -> Step {
    let mut moved = false;
    // 1. Write what the session released.
    let out = conn.session.pending_output();
    if conn.writable && !out.is_empty() {
        match fold(conn.stream.write(out)) {
            IoOutcome::Done(n) => {
                conn.session.consume_output(n, now);
                moved = n > 0;
            }
            IoOutcome::WouldBlock => conn.writable = false,
            IoOutcome::Closed => return Step::Failed("peer stopped reading".into()),
            IoOutcome::Failed(e) => return Step::Failed(format!("write error: {e}")),
        }
    }
    // 2. Offer bytes held back earlier.
    if !conn.leftover.is_empty() && conn.session.wants_input() {
        let mut input = &conn.leftover[..];
        let before = input.len();
        conn.session.handle_input(&mut input, now, store, rng);
        let used = before - input.len();
        conn.leftover.drain(..used);
        moved |= used > 0;
        return if moved { Step::Moved } else { Step::Idle };
    }
    // 3. Read more.
    if conn.readable && !conn.eof && conn.leftover.is_empty() && conn.session.wants_input() {
        // Large reads only inside file content, and no further than its
        // end: what a read brings past the content may have to be held
        // back, and that must stay small.
        let size = match conn.session.content_remaining() {
            Some(left) => (left as usize).clamp(SMALL_READ, CONTENT_READ),
            None => SMALL_READ,
        };
        match fold(conn.stream.read(&mut buf[..size])) {
            IoOutcome::Done(0) => {}
            IoOutcome::Done(n) => {
                metrics.received(n);
                let mut input = &buf[..n];
                conn.session.handle_input(&mut input, now, store, rng);
                conn.leftover.extend_from_slice(input);
                moved = true;
            }
            IoOutcome::WouldBlock => conn.readable = false,
            IoOutcome::Closed => {
                conn.eof = true;
                conn.session.handle_eof(store);
                moved = true;
            }
            IoOutcome::Failed(e) => return Step::Failed(format!("read error: {e}")),
        }
    }
    if moved {
        Step::Moved
    } else {
        Step::Idle
    }
}

/// A connection closed for an undecodable frame lingers (see [`LINGER`])
/// unless the peer already closed its side.
fn should_linger(conn: &Conn) -> bool {
    matches!(
        conn.session.close_reason(),
        Some(CloseReason::Decode(_) | CloseReason::NotDurable | CloseReason::RefusedAtCommit)
    ) && !conn.eof
}

/// Reads and drops input while lingering; `Failed` once the peer closed,
/// errs, or sent more than [`LINGER_BYTES`].
fn linger_step(conn: &mut Conn, buf: &mut [u8], metrics: &Metrics) -> Step {
    if !conn.readable {
        return Step::Idle;
    }
    let Some((_, dropped)) = conn.linger.as_mut() else {
        return Step::Idle;
    };
    match fold(conn.stream.read(&mut buf[..SMALL_READ])) {
        IoOutcome::Done(n) if *dropped + n <= LINGER_BYTES => {
            metrics.received(n);
            *dropped += n;
            Step::Moved
        }
        IoOutcome::WouldBlock => {
            conn.readable = false;
            Step::Idle
        }
        _ => Step::Failed("lingering over".into()),
    }
}

fn is_descriptor_exhaustion(e: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(e.raw_os_error(), Some(24) | Some(23) | Some(105) | Some(12))
}

fn describe_close(reason: CloseReason, rev: Revision) -> String {
    let sent = error_sent(rev);
    match reason {
        CloseReason::Decode(DecodeError::ContentTooLarge {
            content_size,
            limit,
        }) => format!(
            "file over the size limit (--max-file-size): {content_size} encrypted bytes \
             declared, at most {limit} accepted ({sent})"
        ),
        CloseReason::Decode(e) => format!("undecodable frame: {e} ({sent})"),
        CloseReason::HeaderTimeout => "header timeout".into(),
        CloseReason::IdleTimeout => "idle timeout".into(),
        CloseReason::TooSlow => "upload slower than the minimum rate".into(),
        CloseReason::WriteStalled => "peer not reading its responses".into(),
        CloseReason::PeerClosed => "peer closed".into(),
        CloseReason::PeerClosedMidFrame => "peer closed inside a request".into(),
        CloseReason::Local => "closed by the server".into(),
        CloseReason::NotDurable => format!("storage sync failed ({sent})"),
        CloseReason::RefusedAtCommit => {
            format!("accepted upload refused by the database ({sent})")
        }
        CloseReason::NoErrorResponse => {
            "request refused; the revision has no error response".into()
        }
    }
}

/// What the log says of the error answer of `rev` that preceded a close:
/// `2107 sent`, `1607 sent`, or none (2022c has no error response).
fn error_sent(rev: Revision) -> String {
    match rev.response_code(ResponseKind::GeneralError) {
        Some(code) => format!("{code} sent"),
        None => format!("no error answer in {}", rev.name()),
    }
}

/// Writes the session's events to the log: one line per event, one summary
/// line per upload, each naming the connection by its serial (`conn#N`,
/// unique for the process's life; `key`, the slab key, is reused and only
/// goes to the observer), and counts it in the metrics. Never key
/// material or content.
///
/// The summary line of an accepted upload waits in `held` (with the
/// store's current `batch`, the one its acceptance went into) until the
/// commit that keeps it is decided ([`Server::settle_verdicts`]).
fn log_events(
    key: usize,
    conn: &mut Conn,
    observer: &Option<Sender<Observed>>,
    metrics: &mut Metrics,
    held: &mut Vec<HeldVerdict>,
    batch: u64,
) {
    while let Some(event) = conn.session.poll_event() {
        metrics.session_event(conn.serial, conn.session.answer_revision(), &event);
        if observer.is_some() {
            observe(
                observer,
                Observed::Session {
                    conn: key,
                    serial: conn.serial,
                    event: event.clone(),
                },
            );
        }
        let (n, p) = (conn.serial, conn.peer);
        let rev = conn.session.answer_revision();
        match event {
            ServerEvent::Registered {
                client_id,
                name,
                replaced,
            } => log::info!(
                "conn#{n} {p}: 1025 registered {name:?} as {client_id}{}",
                if replaced { " (released an unkeyed record)" } else { "" }
            ),
            ServerEvent::RegistrationFailed { name, reason } => {
                log::info!(
                    "conn#{n} {p}: 1025 {name:?} refused ({}): {reason}",
                    answer_code(rev, ResponseKind::RegistrationFailed)
                )
            }
            ServerEvent::KeyAccepted { client_id } => {
                log::info!(
                    "conn#{n} {p}: 1026 key accepted for {client_id} ({})",
                    answer_code(rev, ResponseKind::KeyAccepted)
                )
            }
            ServerEvent::Reconnected { client_id } => {
                log::info!(
                    "conn#{n} {p}: 1027 reconnect accepted for {client_id} ({})",
                    answer_code(rev, ResponseKind::ReconnectAccepted)
                )
            }
            ServerEvent::ReconnectDenied { client_id, reason } => {
                log::info!(
                    "conn#{n} {p}: 1027 reconnect denied for {client_id} ({}): {reason}",
                    answer_code(rev, ResponseKind::ReconnectDenied)
                )
            }
            ServerEvent::UploadStarted {
                client_id,
                file_name,
                content_size,
                attempt,
            } => log::info!(
                "conn#{n} {p}: 1028 upload started client={client_id} file={file_name:?} encrypted_bytes={content_size} attempt={attempt}"
            ),
            ServerEvent::UploadReceived {
                client_id,
                file_name,
                bytes,
                cksum,
                attempt,
                duration,
            } => log::info!(
                "conn#{n} {p}: 1028 received client={client_id} file={file_name:?} bytes={bytes} cksum={cksum} attempt={attempt} in {:.3}s ({}, awaiting verdict)",
                duration.as_secs_f64(),
                answer_code(rev, ResponseKind::FileReceived)
            ),
            ServerEvent::Verdict {
                client_id,
                file_name,
                verdict,
                applied,
                replaced,
                attempts,
                last,
                duration,
            } => {
                let (bytes, cksum) = match last {
                    Some(s) => (s.plain_len.to_string(), s.cksum.to_string()),
                    None => ("?".into(), "?".into()),
                };
                let secs = duration.map_or("?".into(), |d| format!("{:.3}s", d.as_secs_f64()));
                let line = format!(
                    "conn#{n} {p}: upload client={client_id} file={file_name:?} bytes={bytes} cksum={cksum} attempts={attempts} duration={secs}"
                );
                let outcome = match (verdict, applied) {
                    (VerdictKind::CrcOk, true) => {
                        held.push(HeldVerdict {
                            serial: n,
                            batch,
                            line,
                            replaced,
                            error_answer: answer_code(rev, ResponseKind::GeneralError),
                        });
                        continue;
                    }
                    (VerdictKind::CrcBad, _) => "crc-mismatch-resending".to_owned(),
                    (VerdictKind::CrcGiveUp, _) => "crc-mismatch-gave-up".to_owned(),
                    (VerdictKind::CrcOk, false) => format!(
                        "nothing-pending({})",
                        answer_code(rev, ResponseKind::GeneralError)
                    ),
                };
                log::info!("{line} outcome={outcome}")
            }
            ServerEvent::Refused {
                kind,
                client_id,
                reason,
            } => log::warn!(
                "conn#{n} {p}: {kind:?} from {client_id} refused ({}): {reason}",
                answer_code(rev, ResponseKind::GeneralError)
            ),
            ServerEvent::RevisionDetected { revision } => {
                log::info!("conn#{n} {p}: speaks revision {revision}")
            }
            ServerEvent::Closing(reason) => {
                log::debug!("conn#{n} {p}: closing: {}", describe_close(reason, rev))
            }
        }
    }
}

/// The code `kind` has in revision `rev`, as the log shows an answer the
/// server sent: `2107` in 2023c, `1607` in 2024a/c; `closed` where the
/// revision has no such response (2022c has no 2105-2107: the session
/// closes the connection without a word instead).
fn answer_code(rev: Revision, kind: ResponseKind) -> String {
    match rev.response_code(kind) {
        Some(code) => code.to_string(),
        None => "closed".to_owned(),
    }
}

/// Hands a copy of an event to the observer, if one listens.
fn observe(observer: &Option<Sender<Observed>>, event: Observed) {
    if let Some(tx) = observer {
        // A test that stopped listening must not stop the server.
        let _ = tx.send(event);
    }
}

/// Starts a drain of a running [`Server`] from another thread, as SIGTERM
/// does: no new connections, transfers in flight get `--drain-timeout`.
#[derive(Clone)]
pub struct StopHandle {
    waker: Arc<Waker>,
    requested: Arc<AtomicBool>,
}

impl StopHandle {
    /// Asks the loop to drain and return.
    pub fn stop(&self) {
        self.requested.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            log::warn!("cannot wake the event loop to stop it: {e}");
        }
    }
}
