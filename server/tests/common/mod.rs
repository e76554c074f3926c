//! Shared helpers of the server's integration tests.
//!
//! The client, the golden vectors, test data and the view of a data
//! directory come from `sealdrop-testkit` (re-exported here). On top:
//!
//! * [`InProcess`] (inprocess.rs): the server's event loop on a thread of
//!   the test, observed through its [`Observed`] events. What most tests
//!   use.
//! * [`Server`] (here): the real `sealdrop-server` binary on an ephemeral
//!   port, its log kept, killed on drop. Only for what needs a process of
//!   its own: signals, `kill -9`, systemd, flags and `--check-config`,
//!   exit status, the log, the process's memory and descriptors.
//! * [`TestServer`]: what both have (an address, a data directory), with
//!   the storage checks and a good client on top.
//! * tmpfs mounts (tmpfs.rs) for the disk-full and read-only tests.
//!
//! Every wait in here is bounded; a helper that times out panics with the
//! server's recent activity (log tail or last events), so a failing test
//! says why.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

mod inprocess;
mod tmpfs;

#[allow(unused_imports)] // not every test binary uses both
pub use inprocess::*;
pub use sealdrop_testkit::prelude::*;
#[allow(unused_imports)]
pub use tmpfs::*;

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealdrop_protocol::ClientId;

/// What an in-process server and a server process both offer.
pub trait TestServer {
    /// The address it listens on.
    fn addr(&self) -> SocketAddr;
    /// Its data directory.
    fn data(&self) -> &DataDir;
    /// The temporary folder holding `data` and `scratch`.
    fn tmp_dir(&self) -> &Path;
    /// What it did last (log tail, events), for failure messages.
    fn recent(&self) -> String;
    /// Panics (saying why) unless it still runs.
    fn assert_alive(&mut self);

    /// A new connection to it.
    fn connect(&self) -> Conn {
        Conn::connect(self.addr())
    }

    /// The data directory's path.
    fn data_dir(&self) -> &Path {
        self.data().path()
    }

    /// A scratch folder beside the data directory, for test files.
    fn scratch(&self) -> PathBuf {
        let p = self.tmp_dir().join("scratch");
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// `DIR/files/<id hex>`.
    fn client_dir(&self, id: &ClientId) -> PathBuf {
        self.data().client_dir(id)
    }

    /// `DIR/files/<id hex>/<name>`.
    fn final_path(&self, id: &ClientId, name: &str) -> PathBuf {
        self.data().final_path(id, name)
    }

    /// Every `.part-*` file anywhere under the data directory.
    fn part_files(&self) -> Vec<PathBuf> {
        self.data().part_files()
    }

    /// All `files` rows.
    fn file_rows(&self) -> Vec<FileRow> {
        self.data().file_rows()
    }

    /// The `files` row of one client's name.
    fn file_row(&self, id: &ClientId, name: &str) -> Option<FileRow> {
        self.data().file_row(id, name)
    }

    /// The `clients` row with this name.
    fn client_row(&self, name: &str) -> Option<ClientRow> {
        self.data().client_row(name)
    }

    /// Panics unless every Verified = 1 row's PathName exists under the
    /// client's folder; returns the rows.
    fn assert_db_consistent(&self) -> Vec<FileRow> {
        self.data().assert_db_consistent()
    }

    /// Waits (bounded) until no `.part-*` file is left; panics otherwise.
    fn assert_no_parts_within(&self, timeout: Duration) {
        if !self.data().wait_no_parts(timeout) {
            panic!(
                "temporary files left after {timeout:?}: {:?}\n{}",
                self.part_files(),
                self.recent()
            );
        }
    }

    /// A complete good session on a fresh connection: a new client
    /// registers, exchanges keys, uploads `len` bytes, verifies, and the
    /// stored file is byte-identical. Returns the client.
    fn good_client(&self, len: usize) -> Client {
        let mut conn = self.connect();
        let mut client = Client::new(&unique_name("good"));
        client.register(&mut conn);
        client.exchange_key(&mut conn);
        let data = random_bytes(len as u64 ^ 0x5eed, len);
        client.upload_verified(&mut conn, "good.bin", &data);
        let stored = fs::read(self.final_path(&client.id, "good.bin")).expect("stored file");
        assert!(
            stored == data,
            "stored file differs from the good client's data"
        );
        client
    }
}

/// A fresh temporary folder `sealdrop-test-*` with an empty `data` in it.
pub fn temp_data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("sealdrop-test-")
        .tempdir()
        .expect("temporary directory");
    let data = tmp.path().join("data");
    fs::create_dir_all(&data).expect("create data dir");
    (tmp, data)
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

/// The binary under test.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_sealdrop-server");

/// How long a server gets to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of server log kept (the newest ones).
const LOG_LINES_KEPT: usize = 20_000;

/// Options for starting a [`Server`].
#[derive(Clone, Default)]
pub struct ServerOpts {
    /// Extra flags after `--listen 127.0.0.1:0 --data-dir DIR`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Soft and hard open-file limit for the server (`ulimit -n`).
    pub fd_limit: Option<u32>,
}

impl ServerOpts {
    pub fn args(args: &[&str]) -> ServerOpts {
        ServerOpts {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..ServerOpts::default()
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> ServerOpts {
        self.env.push((key.into(), value.into()));
        self
    }
}

#[derive(Default)]
struct LogBuf {
    lines: VecDeque<String>,
    closed: bool,
}

/// A running `sealdrop-server`, killed (SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    tmp: tempfile::TempDir,
    data: DataDir,
    opts: ServerOpts,
    addr: Option<SocketAddr>,
    log: Arc<Mutex<LogBuf>>,
}

impl TestServer for Server {
    fn addr(&self) -> SocketAddr {
        self.addr.expect("server is listening")
    }

    fn data(&self) -> &DataDir {
        &self.data
    }

    fn tmp_dir(&self) -> &Path {
        self.tmp.path()
    }

    fn recent(&self) -> String {
        self.log_tail(40)
    }

    fn assert_alive(&mut self) {
        if !self.is_alive() {
            // Let the log reader catch up with the last lines.
            std::thread::sleep(Duration::from_millis(300));
            let signals: Vec<String> = self
                .log_lines()
                .into_iter()
                .filter(|l| l.contains("signal") || l.contains("ERROR") || l.contains("panicked"))
                .collect();
            panic!(
                "server is not running any more (exit {:?}); signal/error lines: {signals:?}\n{}",
                self.exit,
                self.log_tail(60)
            );
        }
    }
}

impl Server {
    /// Starts a server with `args` in a fresh temporary data directory and
    /// waits until it listens.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(ServerOpts::args(args))
    }

    /// As [`Server::start`] with full options.
    pub fn start_with(opts: ServerOpts) -> Server {
        let mut s = Server::spawn_with(opts, |_| {});
        s.wait_listening();
        s
    }

    /// Starts a server on an existing data directory `data` (one that
    /// other servers share: PostgreSQL mode), with a temporary folder of
    /// its own for its working directory, and waits until it listens.
    pub fn start_in(data: &Path, opts: ServerOpts) -> Server {
        let mut s = Server::spawn_in(data, opts);
        s.wait_listening();
        s
    }

    /// As [`Server::start_in`] without waiting: for a start that is
    /// expected to fail (see [`Server::wait_exit`]).
    pub fn spawn_in(data: &Path, opts: ServerOpts) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("sealdrop-test-")
            .tempdir()
            .expect("temporary directory");
        let mut s = Server {
            child: None,
            exit: None,
            tmp,
            data: DataDir::new(data),
            opts,
            addr: None,
            log: Arc::new(Mutex::new(LogBuf::default())),
        };
        s.spawn();
        s
    }

    /// Creates the temporary folder, runs `prepare(data_dir)` (to seed a
    /// database or mount something), then spawns the server without
    /// waiting for it.
    pub fn spawn_with(opts: ServerOpts, prepare: impl FnOnce(&Path)) -> Server {
        let (tmp, data) = temp_data_dir();
        prepare(&data);
        let mut s = Server {
            child: None,
            exit: None,
            tmp,
            data: DataDir::new(&data),
            opts,
            addr: None,
            log: Arc::new(Mutex::new(LogBuf::default())),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = match self.opts.fd_limit {
            // The shell execs the server, so the pid stays the server's.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(SERVER_BIN);
                c
            }
            None => Command::new(SERVER_BIN),
        };
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data.path())
            .args(&self.opts.args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sealdrop-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(LogBuf::default()));
        self.log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        if std::env::var_os("SEALDROP_TEST_ECHO").is_some() {
                            eprintln!("[server] {text}");
                        }
                        let mut l = log.lock().unwrap();
                        l.lines.push_back(text);
                        if l.lines.len() > LOG_LINES_KEPT {
                            l.lines.pop_front();
                        }
                    }
                }
            }
            log.lock().unwrap().closed = true;
        });
        self.child = Some(child);
        self.exit = None;
        self.addr = None;
    }

    /// Waits (bounded) for the `listening on 127.0.0.1:PORT` line.
    pub fn wait_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let found = self.log_lines().iter().find_map(|l| parse_listening(l));
            if let Some(addr) = found {
                self.addr = Some(addr);
                return addr;
            }
            if let Some(st) = self.try_exit() {
                panic!(
                    "server exited ({st}) before listening:\n{}",
                    self.log_tail(50)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "server did not listen within {START_TIMEOUT:?}:\n{}",
                    self.log_tail(50)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server was started").id()
    }

    /// Exit status if the process has ended (reaped).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    self.exit = Some(st);
                }
            }
        }
        self.exit
    }

    /// True while the process runs (not exited, not a zombie).
    pub fn is_alive(&mut self) -> bool {
        if self.try_exit().is_some() {
            return false;
        }
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()));
        match status {
            Ok(s) => !s
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z')),
            Err(_) => false,
        }
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// Peak resident set size in KiB over the process's life (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    /// A `kB` field of /proc/PID/status, 0 if it cannot be read.
    fn status_kib(&self, field: &str) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Open descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Sends a signal with `kill -SIG PID`.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL now, and reap.
    pub fn kill9(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.exit.is_none() {
                let _ = child.kill();
                self.exit = child.wait().ok();
            }
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit 0.
    pub fn stop(&mut self) {
        if self.try_exit().is_none() {
            self.signal("TERM");
        }
        let st = self
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("server did not stop on SIGTERM:\n{}", self.log_tail(40)));
        assert!(
            st.success(),
            "server exited with {st}:\n{}",
            self.log_tail(40)
        );
    }

    /// Starts the server again on the same data directory and flags (a new
    /// ephemeral port) after it stopped or was killed.
    pub fn start_again(&mut self) {
        self.spawn_again();
        self.wait_listening();
    }

    /// As [`Server::start_again`] but without waiting for `listening on`:
    /// for a restart that is expected to fail (see [`Server::wait_exit`]).
    pub fn spawn_again(&mut self) {
        assert!(self.try_exit().is_some(), "restart of a running server");
        self.spawn();
    }

    /// The log lines of the current run.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().lines.iter().cloned().collect()
    }

    /// The last `n` log lines, as one string.
    pub fn log_tail(&self, n: usize) -> String {
        let l = self.log.lock().unwrap();
        let skip = l.lines.len().saturating_sub(n);
        l.lines
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether the log (current run) has a line containing `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .lines
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_contains(needle))
    }

    /// Waits (bounded) until the log reader has seen the end of the
    /// server's stderr, so that every line of an exited run is in the log.
    pub fn wait_log_closed(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.log.lock().unwrap().closed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `127.0.0.1:PORT` from a log line holding `listening on 127.0.0.1:PORT`.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let end = rest
        .find(|c: char| c == ',' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `sealdrop-server --check-config` on `data_dir` (any port, no systemd
/// environment), bounded to 20 s.
pub fn check_config(data_dir: &Path) -> Ran {
    run_bounded(
        Command::new(SERVER_BIN)
            .arg("--check-config")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET"),
        Duration::from_secs(20),
    )
}

// ---------------------------------------------------------------------------
// The Python reference peer (interop tests)
// ---------------------------------------------------------------------------

const DEFAULT_PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/peer/sealdrop_peer.py"
);

/// The peer script if the interop tests should run; otherwise prints why
/// they are skipped and returns None.
pub fn peer() -> Option<PathBuf> {
    if std::env::var("SEALDROP_INTEROP").as_deref() != Ok("1") {
        println!("skipped: set SEALDROP_INTEROP=1 to run the Python reference peer interop tests");
        return None;
    }
    let python = Command::new("python3").arg("--version").output();
    if !python.is_ok_and(|o| o.status.success()) {
        println!("skipped: python3 is not installed");
        return None;
    }
    let crypto = Command::new("python3")
        .args([
            "-c",
            "import Crypto.Cipher.PKCS1_OAEP, Crypto.PublicKey.RSA",
        ])
        .output();
    if !crypto.is_ok_and(|o| o.status.success()) {
        println!("skipped: PyCryptodome is missing (python3 -m pip install pycryptodome)");
        return None;
    }
    let path = std::env::var_os("SEALDROP_PEER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PEER));
    assert!(
        path.is_file(),
        "SEALDROP_INTEROP=1 but the peer {} does not exist (set SEALDROP_PEER)",
        path.display()
    );
    Some(path)
}
