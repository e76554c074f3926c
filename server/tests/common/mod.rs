//! Shared helpers of the server's integration tests.
//!
//! * [`Server`] starts the real `sealdrop-server` binary on an ephemeral
//!   port of 127.0.0.1 with its data directory in a fresh temporary folder,
//!   waits (bounded) for its `listening on` line, keeps its log, and kills
//!   it on drop.
//! * [`Conn`] and [`Client`] are a minimal blocking protocol client built
//!   only on the public API of `sealdrop-protocol`, with a timeout on every
//!   read and write.
//! * Storage helpers read `defensive.db` read-only and look for `.part-*`
//!   temporary files.
//!
//! Every wait in here is bounded; a helper that times out panics with the
//! server's log tail, so a failing test says why.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use sealdrop_protocol::cksum::Cksum;
use sealdrop_protocol::consts::{CLIENT_ID_LEN, NAME_LEN, PUBLIC_KEY_LEN};
use sealdrop_protocol::crypto::{
    cbc_encrypt, AesKey, CbcEncryptor, Entropy, RsaPrivateKey, TestEntropy,
};
use sealdrop_protocol::message::encode_file_header;
use sealdrop_protocol::{ClientId, FixedName, Request, Response, ResponseDecoder, Revision};

/// The binary under test.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_sealdrop-server");

/// How long a server gets to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Default read/write timeout of a test connection: generous (a debug
/// build decrypts only a few MB/s, and a hundred uploads queue behind each
/// other), only there so that a hung server fails the test instead of
/// hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(90);

/// Lines of server log kept (the newest ones).
const LOG_LINES_KEPT: usize = 20_000;

/// Revision every test speaks.
pub const REV: Revision = Revision::R2023c;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Path of a golden vector file.
pub fn vector_path(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vectors")).join(name)
}

/// Bytes of a golden vector file.
pub fn vector(name: &str) -> Vec<u8> {
    let p = vector_path(name);
    fs::read(&p).unwrap_or_else(|e| panic!("cannot read vector {}: {e}", p.display()))
}

/// The vector client's id (`client_id.bin`).
pub fn vector_client_id() -> ClientId {
    let b = vector("client_id.bin");
    ClientId(b.try_into().expect("client_id.bin is 16 bytes"))
}

/// The vector RSA key (parsed once: RSA in debug builds is slow enough
/// that every test should share it).
pub fn vector_private_key() -> RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        RsaPrivateKey::from_pkcs8_der(&vector("rsa1024_private_pkcs8.der"))
            .expect("vector private key parses")
    })
    .clone()
}

/// The vector public key as the 160-byte SPKI a 1026 carries.
pub fn vector_spki() -> [u8; PUBLIC_KEY_LEN] {
    vector("rsa1024_public_spki.der")
        .try_into()
        .expect("SPKI vector is 160 bytes")
}

/// A name unique in this test process (and across processes, by pid).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `len` deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    TestEntropy::new(seed).fill_bytes(&mut v);
    v
}

/// Writes `len` pseudo-random bytes to `path`, in pieces.
pub fn write_random_file(path: &Path, seed: u64, len: u64) {
    let mut f = io::BufWriter::new(fs::File::create(path).expect("create test file"));
    let mut rng = TestEntropy::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write test file");
        left -= n as u64;
    }
    f.flush().expect("flush test file");
}

/// Compares two files in pieces (like `cmp`); panics with the first
/// differing offset.
pub fn assert_same_file(a: &Path, b: &Path) {
    let la = fs::metadata(a)
        .unwrap_or_else(|e| panic!("{}: {e}", a.display()))
        .len();
    let lb = fs::metadata(b)
        .unwrap_or_else(|e| panic!("{}: {e}", b.display()))
        .len();
    assert_eq!(la, lb, "sizes differ: {} vs {}", a.display(), b.display());
    let mut fa = BufReader::new(fs::File::open(a).unwrap());
    let mut fb = BufReader::new(fs::File::open(b).unwrap());
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba);
        let m = read_full(&mut fb, &mut bb);
        assert_eq!(n, m);
        if n == 0 {
            return;
        }
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                off + i as u64
            );
        }
        off += n as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

/// POSIX cksum of a file, streamed.
pub fn cksum_file(path: &Path) -> u32 {
    let mut f = fs::File::open(path).unwrap();
    let mut c = Cksum::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_full(&mut f, &mut buf);
        if n == 0 {
            break;
        }
        c.update(&buf[..n]);
    }
    c.finish()
}

/// Serialises the CPU-heavy tests of one test binary (big uploads, many
/// clients) and the timing-sensitive ones: on 2 cores in a debug build
/// two of them at once only slow each other down past their timeouts.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

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
    dropped: usize,
    closed: bool,
}

/// A running `sealdrop-server`, killed (SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    tmp: tempfile::TempDir,
    data: PathBuf,
    opts: ServerOpts,
    addr: Option<SocketAddr>,
    log: Arc<Mutex<LogBuf>>,
    /// Log lines of earlier runs (before a restart).
    old_log: Vec<String>,
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

    /// Creates the temporary folder, runs `prepare(data_dir)` (to seed a
    /// database), then spawns the server without waiting for it.
    pub fn spawn_with(opts: ServerOpts, prepare: impl FnOnce(&Path)) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("sealdrop-test-")
            .tempdir()
            .expect("temporary directory");
        let data = tmp.path().join("data");
        fs::create_dir_all(&data).expect("create data dir");
        prepare(&data);
        let mut s = Server {
            child: None,
            exit: None,
            tmp,
            data,
            opts,
            addr: None,
            log: Arc::new(Mutex::new(LogBuf::default())),
            old_log: Vec::new(),
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
            .arg(&self.data)
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
                            l.dropped += 1;
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
            if let Some(addr) = self.find_listening() {
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

    fn find_listening(&self) -> Option<SocketAddr> {
        let l = self.log.lock().unwrap();
        l.lines.iter().find_map(|line| parse_listening(line))
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("server is listening")
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server was started").id()
    }

    /// The data directory (`--data-dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// A scratch folder beside the data directory, for test files.
    pub fn scratch(&self) -> PathBuf {
        let p = self.tmp.path().join("scratch");
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// The temporary folder holding data and scratch.
    pub fn tmp_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// A new connection to the server.
    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr())
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

    /// Panics (with the log) unless the process still runs.
    pub fn assert_alive(&mut self) {
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

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
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
        assert!(self.try_exit().is_some(), "start_again on a running server");
        let lines: Vec<String> = self.log.lock().unwrap().lines.iter().cloned().collect();
        self.old_log.extend(lines);
        self.spawn();
        self.wait_listening();
    }

    /// Graceful stop, then start again.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
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

    /// Number of lines (current run) containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    // --- storage -----------------------------------------------------------

    /// `DIR/files`.
    pub fn files_root(&self) -> PathBuf {
        self.data.join("files")
    }

    /// `DIR/files/<id hex>`.
    pub fn client_dir(&self, id: &ClientId) -> PathBuf {
        self.files_root().join(id.to_hex())
    }

    /// `DIR/files/<id hex>/<name>`.
    pub fn final_path(&self, id: &ClientId, name: &str) -> PathBuf {
        self.client_dir(id).join(name)
    }

    /// Every `.part-*` file anywhere under the data directory.
    pub fn part_files(&self) -> Vec<PathBuf> {
        walk(&self.data)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".part-"))
            })
            .collect()
    }

    /// Every regular file under the data directory except the database.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        walk(&self.files_root())
    }

    /// Waits (bounded) until no `.part-*` file is left; panics otherwise.
    pub fn assert_no_parts_within(&self, timeout: Duration) {
        if !wait_until(timeout, || self.part_files().is_empty()) {
            panic!(
                "temporary files left after {timeout:?}: {:?}\n{}",
                self.part_files(),
                self.log_tail(40)
            );
        }
    }

    /// A read-only connection to `defensive.db`.
    pub fn db(&self) -> Connection {
        open_db_read_only(&self.data)
    }

    /// All `files` rows.
    pub fn file_rows(&self) -> Vec<FileRow> {
        file_rows(&self.data)
    }

    /// The `files` row of one client's name.
    pub fn file_row(&self, id: &ClientId, name: &str) -> Option<FileRow> {
        self.file_rows()
            .into_iter()
            .find(|r| r.id == id.0 && r.file_name == name)
    }

    /// The `clients` row with this name.
    pub fn client_row(&self, name: &str) -> Option<ClientRow> {
        client_rows(&self.data).into_iter().find(|r| r.name == name)
    }

    /// Panics unless every Verified = 1 row's PathName exists under the
    /// client's folder; returns the rows.
    pub fn assert_db_consistent(&self) -> Vec<FileRow> {
        let rows = self.file_rows();
        for r in &rows {
            if r.verified == 1 {
                let p = Path::new(&r.path_name);
                assert!(p.is_file(), "Verified=1 row names a missing file: {r:?}");
                let id = ClientId(r.id.clone().try_into().expect("16-byte id"));
                assert_eq!(p, self.final_path(&id, &r.file_name), "PathName: {r:?}");
            }
        }
        rows
    }

    /// A complete good session on fresh connections: a new client
    /// registers, exchanges keys, uploads `len` bytes, verifies, and the
    /// stored file is byte-identical. Returns the client.
    pub fn good_client(&self, len: usize) -> Client {
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

    /// The server log of earlier runs and this one.
    pub fn full_log(&self) -> String {
        let mut all = self.old_log.clone();
        all.extend(self.log_lines());
        all.join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.exit.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
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

/// Every regular file under `dir`, recursively (missing dir: none).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Database
// ---------------------------------------------------------------------------

/// A `files` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub id: Vec<u8>,
    pub file_name: String,
    pub path_name: String,
    pub verified: i64,
}

/// A `clients` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    pub id: Vec<u8>,
    pub name: String,
    pub public_key: Option<Vec<u8>>,
    pub last_seen: Option<String>,
    pub aes_key: Option<Vec<u8>>,
}

pub fn open_db_read_only(data: &Path) -> Connection {
    let c = Connection::open_with_flags(
        data.join("defensive.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open defensive.db read-only");
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

pub fn file_rows(data: &Path) -> Vec<FileRow> {
    let c = open_db_read_only(data);
    let mut st = c
        .prepare("SELECT ID, FileName, PathName, Verified FROM files ORDER BY FileName")
        .unwrap();
    st.query_map([], |r| {
        Ok(FileRow {
            id: r.get(0)?,
            file_name: r.get(1)?,
            path_name: r.get(2)?,
            verified: r.get(3)?,
        })
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

pub fn client_rows(data: &Path) -> Vec<ClientRow> {
    let c = open_db_read_only(data);
    let mut st = c
        .prepare("SELECT ID, Name, PublicKey, LastSeen, AESKey FROM clients")
        .unwrap();
    st.query_map([], |r| {
        Ok(ClientRow {
            id: r.get(0)?,
            name: r.get(1)?,
            public_key: r.get(2)?,
            last_seen: r.get(3)?,
            aes_key: r.get(4)?,
        })
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

/// Creates `DIR/defensive.db` with the §8 tables and one client row, as
/// another implementation (or an operator) would have left it.
pub fn seed_client(data: &Path, id: &ClientId, name: &str, spki: &[u8], aes: &[u8]) {
    let c = Connection::open(data.join("defensive.db")).expect("create db");
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS clients(ID BLOB(16) PRIMARY KEY, Name TEXT UNIQUE, PublicKey BLOB(160), LastSeen TEXT, AESKey BLOB(16));
         CREATE TABLE IF NOT EXISTS files(ID BLOB(16), FileName TEXT, PathName TEXT, Verified INTEGER, PRIMARY KEY(ID, FileName));",
    )
    .unwrap();
    c.execute(
        "INSERT INTO clients (ID, Name, PublicKey, LastSeen, AESKey) VALUES (?1, ?2, ?3, ?4, ?5)",
        (&id.0[..], name, spki, "2024-01-01T00:00:00Z", aes),
    )
    .unwrap();
}

/// Seeds the golden-vector client "alice" (id, key and AES key of the vectors).
pub fn seed_vector_client(data: &Path) {
    seed_client(
        data,
        &vector_client_id(),
        "alice",
        &vector("rsa1024_public_spki.der"),
        &vector("aes_key.bin"),
    );
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// A fixed name field; panics on an unencodable text (tests pass literals).
pub fn fixed(text: &str) -> FixedName {
    FixedName::new(text.as_bytes()).expect("name fits the field")
}

/// A fixed name field from raw text bytes (any bytes but NUL).
pub fn fixed_bytes(text: &[u8]) -> FixedName {
    FixedName::new(text).expect("name fits the field")
}

/// A raw 23-byte request header.
pub fn header(id: &ClientId, version: u8, code: u16, payload_size: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(23);
    h.extend_from_slice(&id.0);
    h.push(version);
    h.extend_from_slice(&code.to_le_bytes());
    h.extend_from_slice(&payload_size.to_le_bytes());
    h
}

/// A whole request frame from the protocol crate's encoder.
pub fn request_frame(id: &ClientId, req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode(REV, id, &mut out);
    out
}

/// A whole 1028 frame: header, prefix and `content` (already encrypted).
pub fn file_frame(id: &ClientId, name: &FixedName, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_file_header(REV, id, content.len() as u32, name, &mut out);
    out.extend_from_slice(content);
    out
}

/// A 255-byte field holding `text` then NULs (no check at all).
pub fn raw_field(text: &[u8]) -> [u8; NAME_LEN] {
    let mut f = [0u8; NAME_LEN];
    f[..text.len()].copy_from_slice(text);
    f
}

/// Response code of a response kind.
pub fn code_of(r: &Response) -> u16 {
    REV.response_code(r.kind())
}

// ---------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------

/// What ended a read attempt.
#[derive(Debug)]
pub enum RecvError {
    /// The server closed (EOF) or reset the connection.
    Closed,
    /// Nothing arrived in time.
    Timeout,
    /// Another I/O error.
    Io(io::Error),
    /// The bytes were not a valid response.
    Decode(String),
}

/// One blocking TCP connection to the server, with response decoding.
pub struct Conn {
    pub stream: TcpStream,
    dec: ResponseDecoder,
    rbuf: Vec<u8>,
    /// Every raw byte received, for byte-exact checks.
    pub raw_in: Vec<u8>,
}

impl Conn {
    /// Connects with [`IO_TIMEOUT`] on reads and writes.
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Conn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            dec: ResponseDecoder::new(REV),
            rbuf: Vec::new(),
            raw_in: Vec::new(),
        }
    }

    /// Writes all of `bytes`; panics on an error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send {} bytes: {e}", bytes.len()));
    }

    /// Writes all of `bytes`, returning the error instead of panicking
    /// (for hostile peers the server may have cut off).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one request.
    pub fn request(&mut self, id: &ClientId, req: &Request) {
        let f = request_frame(id, req);
        self.send(&f);
    }

    /// Reads more bytes into the buffer, with a timeout.
    fn fill(&mut self, timeout: Duration) -> Result<usize, RecvError> {
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        let r = self.stream.read(&mut buf);
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match r {
            Ok(0) => Err(RecvError::Closed),
            Ok(n) => {
                self.rbuf.extend_from_slice(&buf[..n]);
                self.raw_in.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Err(RecvError::Timeout)
            }
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionReset
                    || e.kind() == io::ErrorKind::ConnectionAborted
                    || e.kind() == io::ErrorKind::BrokenPipe =>
            {
                Err(RecvError::Closed)
            }
            Err(e) => Err(RecvError::Io(e)),
        }
    }

    /// The next response, or why there is none within `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Result<Response, RecvError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut input = &self.rbuf[..];
            let before = input.len();
            let r = self.dec.decode(&mut input);
            let used = before - input.len();
            self.rbuf.drain(..used);
            match r {
                Ok(Some(resp)) => return Ok(resp),
                Ok(None) => {}
                Err(e) => return Err(RecvError::Decode(format!("{e:?}"))),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout);
            }
            self.fill(deadline - now)?;
        }
    }

    /// The next response; panics if none arrives within [`IO_TIMEOUT`].
    pub fn recv(&mut self) -> Response {
        match self.try_recv(IO_TIMEOUT) {
            Ok(r) => r,
            Err(e) => panic!("expected a response, got {e:?}"),
        }
    }

    /// The next response, which must have this code.
    pub fn expect(&mut self, code: u16) -> Response {
        let r = self.recv();
        assert_eq!(code_of(&r), code, "unexpected response {r:?}");
        r
    }

    /// Exactly `n` raw bytes (no decoding).
    pub fn recv_raw(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.rbuf.len() < n {
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for {n} raw bytes");
            if let Err(e) = self.fill(deadline - now) {
                panic!(
                    "waiting for {n} raw bytes (have {}): {e:?}",
                    self.rbuf.len()
                );
            }
        }
        self.rbuf.drain(..n).collect()
    }

    /// Waits up to `timeout` for the server to close the connection;
    /// returns the bytes that arrived before the close. Panics if it
    /// stays open.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<u8> {
        match self.wait_closed(timeout) {
            Ok(bytes) => bytes,
            Err(bytes) => panic!(
                "connection still open after {timeout:?} ({} bytes received)",
                bytes.len()
            ),
        }
    }

    /// `Ok(bytes before close)` if closed within `timeout`, else
    /// `Err(bytes so far)`.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(std::mem::take(&mut self.rbuf));
            }
            match self.fill(deadline - now) {
                Ok(_) => {}
                Err(RecvError::Closed) => return Ok(std::mem::take(&mut self.rbuf)),
                Err(RecvError::Timeout) => return Err(std::mem::take(&mut self.rbuf)),
                Err(e) => panic!("while waiting for close: {e:?}"),
            }
        }
    }

    /// Panics unless nothing arrives and the connection stays open for `dur`.
    pub fn expect_silence(&mut self, dur: Duration) {
        match self.fill(dur) {
            Err(RecvError::Timeout) => {}
            other => panic!(
                "expected silence for {dur:?}, got {other:?} ({:?})",
                self.rbuf
            ),
        }
    }

    /// 2107 and then the server closes the connection (a frame it cannot
    /// decode). Panics otherwise.
    pub fn expect_error_then_close(&mut self) {
        let r = self.try_recv(Duration::from_secs(10));
        match r {
            Ok(Response::GeneralError) => {}
            other => panic!("expected 2107 before close, got {other:?}"),
        }
        let extra = self.expect_closed(Duration::from_secs(10));
        assert!(extra.is_empty(), "bytes after 2107: {extra:?}");
    }

    /// Half-closes our sending side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A protocol client's identity and keys.
pub struct Client {
    pub name: String,
    pub id: ClientId,
    pub rsa: RsaPrivateKey,
    pub spki: [u8; PUBLIC_KEY_LEN],
    pub aes: Option<AesKey>,
    rng: TestEntropy,
}

impl Client {
    /// A new client with the vector RSA key (RSA key generation is slow in
    /// debug builds; the server does not care that keys repeat).
    pub fn new(name: &str) -> Client {
        Client {
            name: name.to_string(),
            id: ClientId::ZERO,
            rsa: vector_private_key(),
            spki: vector_spki(),
            aes: None,
            rng: TestEntropy::new(0x1234_5678 ^ name.len() as u64),
        }
    }

    /// A new client with a freshly generated RSA-1024 key (e = 17).
    pub fn with_generated_key(name: &str, seed: u64) -> Client {
        let mut rng = TestEntropy::new(seed);
        let rsa = RsaPrivateKey::generate(&mut rng).expect("generate RSA key");
        let spki = rsa.public_key().to_spki_der().expect("160-byte SPKI");
        Client {
            name: name.to_string(),
            id: ClientId::ZERO,
            rsa,
            spki,
            aes: None,
            rng,
        }
    }

    pub fn name_field(&self) -> FixedName {
        fixed(&self.name)
    }

    /// 1025; returns the response (2100 sets the id).
    pub fn try_register(&mut self, c: &mut Conn) -> Response {
        c.request(
            &ClientId::ZERO,
            &Request::Register {
                name: self.name_field(),
            },
        );
        let r = c.recv();
        if let Response::Registered { client_id } = r {
            self.id = client_id;
        }
        r
    }

    /// 1025, which must give 2100.
    pub fn register(&mut self, c: &mut Conn) -> ClientId {
        match self.try_register(c) {
            Response::Registered { client_id } => client_id,
            other => panic!("register {:?}: {other:?}", self.name),
        }
    }

    /// 1026, which must give 2102 with our id; decrypts the AES key.
    pub fn exchange_key(&mut self, c: &mut Conn) {
        c.request(
            &self.id,
            &Request::PublicKey {
                name: self.name_field(),
                public_key: Box::new(self.spki),
            },
        );
        match c.recv() {
            Response::KeyAccepted {
                client_id,
                encrypted_key,
            } => {
                assert_eq!(client_id, self.id, "2102 echoes our id");
                self.aes = Some(
                    self.rsa
                        .decrypt_aes_key(&encrypted_key[..], &mut self.rng)
                        .expect("2102 key decrypts"),
                );
            }
            other => panic!("1026 of {:?}: {other:?}", self.name),
        }
    }

    /// 1027; on 2105 the AES key is decrypted and kept.
    pub fn reconnect(&mut self, c: &mut Conn) -> Response {
        c.request(
            &self.id,
            &Request::Reconnect {
                name: self.name_field(),
            },
        );
        let r = c.recv();
        if let Response::ReconnectAccepted {
            client_id,
            encrypted_key,
        } = &r
        {
            assert_eq!(*client_id, self.id, "2105 echoes our id");
            self.aes = Some(
                self.rsa
                    .decrypt_aes_key(&encrypted_key[..], &mut self.rng)
                    .expect("2105 key decrypts"),
            );
        }
        r
    }

    /// Connects, registers and exchanges keys.
    pub fn setup(addr: SocketAddr, name: &str) -> (Client, Conn) {
        let mut c = Conn::connect(addr);
        let mut client = Client::new(name);
        client.register(&mut c);
        client.exchange_key(&mut c);
        (client, c)
    }

    pub fn key(&self) -> &AesKey {
        self.aes.as_ref().expect("client holds an AES key")
    }

    /// The 1028 frame for `data` under `name`, encrypted with our key.
    pub fn file_frame(&self, name: &str, data: &[u8]) -> Vec<u8> {
        file_frame(&self.id, &fixed(name), &cbc_encrypt(self.key(), data))
    }

    /// Sends a 1028 of `data` (does not read the reply).
    pub fn send_file(&self, c: &mut Conn, name: &str, data: &[u8]) {
        let f = self.file_frame(name, data);
        c.send(&f);
    }

    /// Streams the file at `path` as a 1028 named `name` (encrypting on
    /// the way, 1 MiB at a time); returns the plaintext cksum.
    pub fn send_file_path(&self, c: &mut Conn, name: &str, path: &Path) -> u32 {
        self.send_file_path_paced(c, name, path, |_| {})
    }

    /// As [`Client::send_file_path`], calling `pace(bytes_sent_so_far)`
    /// after each piece (to throttle or interrupt).
    pub fn send_file_path_paced(
        &self,
        c: &mut Conn,
        name: &str,
        path: &Path,
        mut pace: impl FnMut(u64),
    ) -> u32 {
        let len = fs::metadata(path).expect("file to send").len();
        let content = sealdrop_protocol::crypto::encrypted_len(len);
        let mut head = Vec::new();
        encode_file_header(REV, &self.id, content as u32, &fixed(name), &mut head);
        c.send(&head);
        let mut f = fs::File::open(path).unwrap();
        let mut enc = CbcEncryptor::new(self.key());
        let mut ck = Cksum::new();
        let mut plain = vec![0u8; 1 << 20];
        let mut out = Vec::with_capacity((1 << 20) + 32);
        let mut sent = head.len() as u64;
        loop {
            let n = read_full(&mut f, &mut plain);
            if n == 0 {
                break;
            }
            ck.update(&plain[..n]);
            out.clear();
            enc.update(&plain[..n], &mut out);
            c.send(&out);
            sent += out.len() as u64;
            pace(sent);
        }
        out.clear();
        enc.finish(&mut out);
        c.send(&out);
        ck.finish()
    }

    /// Checks a 2103 against what was sent.
    pub fn check_received(&self, r: &Response, name: &str, plain_len: u64, cksum: u32) {
        match r {
            Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum: got,
            } => {
                assert_eq!(*client_id, self.id, "2103 client id");
                assert_eq!(
                    *content_size as u64,
                    sealdrop_protocol::crypto::encrypted_len(plain_len),
                    "2103 content_size"
                );
                assert_eq!(
                    file_name.raw(),
                    fixed(name).raw(),
                    "2103 echoes the name field"
                );
                assert_eq!(*got, cksum, "2103 cksum");
            }
            other => panic!("expected 2103 for {name:?}, got {other:?}"),
        }
    }

    /// A verdict request (1029/1030/1031) for `name`.
    pub fn send_verdict(&self, c: &mut Conn, code: u16, name: &str) {
        let file_name = fixed(name);
        let req = match code {
            1029 => Request::CrcOk { file_name },
            1030 => Request::CrcBad { file_name },
            1031 => Request::CrcGiveUp { file_name },
            _ => panic!("not a verdict code: {code}"),
        };
        c.request(&self.id, &req);
    }

    /// 1029 for `name`, which must give 2104 with our id.
    pub fn verify(&self, c: &mut Conn, name: &str) {
        self.send_verdict(c, 1029, name);
        match c.recv() {
            Response::Ack { client_id } => assert_eq!(client_id, self.id, "2104 echoes our id"),
            other => panic!("1029 {name:?}: {other:?}"),
        }
    }

    /// 1028 of `data`, checks the 2103, then 1029 -> 2104.
    pub fn upload_verified(&self, c: &mut Conn, name: &str, data: &[u8]) {
        self.send_file(c, name, data);
        let r = c.recv();
        self.check_received(
            &r,
            name,
            data.len() as u64,
            sealdrop_protocol::cksum::cksum(data),
        );
        self.verify(c, name);
    }

    /// Streams the file at `path`, checks the 2103, then 1029 -> 2104.
    pub fn upload_path_verified(&self, c: &mut Conn, name: &str, path: &Path) {
        let ck = self.send_file_path(c, name, path);
        let r = c.recv();
        self.check_received(&r, name, fs::metadata(path).unwrap().len(), ck);
        self.verify(c, name);
    }
}

/// The client id echoed by a response that carries one.
pub fn response_id(r: &Response) -> Option<ClientId> {
    match r {
        Response::Registered { client_id }
        | Response::KeyAccepted { client_id, .. }
        | Response::FileReceived { client_id, .. }
        | Response::Ack { client_id }
        | Response::ReconnectAccepted { client_id, .. }
        | Response::ReconnectDenied { client_id } => Some(*client_id),
        _ => None,
    }
}

/// Length of a client id, re-exported for raw frame building.
pub const ID_LEN: usize = CLIENT_ID_LEN;

// ---------------------------------------------------------------------------
// Processes and threads, bounded
// ---------------------------------------------------------------------------

/// Output of a command that ran to completion within its time limit.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
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

/// Runs `cmd` to completion, killing it if it takes longer than `timeout`
/// (then panics). Stdout and stderr are collected.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Ran {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = t_err.join().unwrap_or_default();
            panic!("{cmd:?} did not finish within {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Joins every thread, panicking if they are not all done within
/// `timeout` or if one panicked. Returns their results in order.
pub fn join_all<T>(handles: Vec<std::thread::JoinHandle<T>>, timeout: Duration) -> Vec<T> {
    let deadline = Instant::now() + timeout;
    while !handles.iter().all(|h| h.is_finished()) {
        let left = handles.iter().filter(|h| !h.is_finished()).count();
        assert!(
            Instant::now() < deadline,
            "{left} of {} threads still running after {timeout:?}",
            handles.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| h.join().unwrap_or_else(|_| panic!("thread {i} panicked")))
        .collect()
}

// ---------------------------------------------------------------------------
// Restarts expected to fail, mounts (faults.rs, flipped_bytes.rs)
// ---------------------------------------------------------------------------

impl Server {
    /// As [`Server::start_again`] but without waiting for `listening on`:
    /// for a restart that is expected to fail (see [`Server::wait_exit`]).
    pub fn spawn_again(&mut self) {
        assert!(self.try_exit().is_some(), "spawn_again on a running server");
        let lines: Vec<String> = self.log.lock().unwrap().lines.iter().cloned().collect();
        self.old_log.extend(lines);
        self.spawn();
    }

    /// Waits (bounded) until the log reader has seen the end of the
    /// server's stderr, so that every line of an exited run is in the log.
    pub fn wait_log_closed(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.log.lock().unwrap().closed)
    }
}

/// Runs `mount ARGS...` (bounded); `Err` carries its stderr.
pub fn run_mount(args: &[&str]) -> Result<(), String> {
    let ran = run_bounded(Command::new("mount").args(args), Duration::from_secs(20));
    if ran.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {}: {} {}",
            args.join(" "),
            ran.status,
            ran.stderr.trim()
        ))
    }
}

/// A tmpfs mounted on a folder, unmounted when dropped (lazily if a
/// process still uses it).
pub struct TmpfsMount {
    path: PathBuf,
    mounted: bool,
}

impl TmpfsMount {
    /// Mounts a tmpfs with `options` (e.g. `size=2m`) on `path`, which
    /// must exist.
    pub fn mount(path: &Path, options: &str) -> Result<TmpfsMount, String> {
        let p = path.to_str().expect("UTF-8 mount point");
        run_mount(&["-t", "tmpfs", "-o", options, "tmpfs", p])?;
        Ok(TmpfsMount {
            path: path.to_path_buf(),
            mounted: true,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remounts read-only (`ro`) or read-write (`rw`).
    pub fn remount(&self, mode: &str) {
        let p = self.path.to_str().unwrap();
        run_mount(&["-o", &format!("remount,{mode}"), p])
            .unwrap_or_else(|e| panic!("remount {mode}: {e}"));
    }

    /// Unmounts now (lazily if busy); idempotent.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        let p = self.path.to_str().unwrap().to_string();
        for args in [vec![p.clone()], vec!["-l".to_string(), p.clone()]] {
            let ran = run_bounded(Command::new("umount").args(&args), Duration::from_secs(20));
            if ran.status.success() {
                return;
            }
            eprintln!("umount {args:?}: {}", ran.stderr.trim());
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Whether a tmpfs can be mounted here (a sandbox may forbid it): mounts
/// and unmounts one on a scratch folder. `Err` carries the reason.
pub fn tmpfs_mount_works() -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("sealdrop-mount-probe-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut m = TmpfsMount::mount(dir.path(), "size=64k")?;
    m.unmount();
    Ok(())
}

/// A [`Server`] whose data directory is a tmpfs: on drop the server is
/// killed first, then the tmpfs unmounted, then the temporary folder
/// removed (in that order, so nothing stays mounted or behind).
pub struct MountedServer {
    pub server: Server,
    pub mount: TmpfsMount,
}

impl MountedServer {
    /// Mounts a tmpfs with `options` on the new server's data directory,
    /// runs `prepare` on it, then spawns the server (without waiting).
    pub fn spawn(
        opts: ServerOpts,
        options: &str,
        prepare: impl FnOnce(&TmpfsMount),
    ) -> Result<MountedServer, String> {
        let mut mount: Option<Result<TmpfsMount, String>> = None;
        let server = Server::spawn_with(opts, |data| {
            let m = TmpfsMount::mount(data, options);
            if let Ok(m) = &m {
                prepare(m);
            }
            mount = Some(m);
        });
        match mount.expect("prepare ran") {
            Ok(mount) => Ok(MountedServer { server, mount }),
            Err(e) => {
                drop(server);
                Err(e)
            }
        }
    }

    /// As [`MountedServer::spawn`], then waits for `listening on`.
    pub fn start(opts: ServerOpts, options: &str) -> Result<MountedServer, String> {
        let mut m = MountedServer::spawn(opts, options, |_| {})?;
        m.server.wait_listening();
        Ok(m)
    }
}

impl Drop for MountedServer {
    fn drop(&mut self) {
        self.server.kill9();
        self.mount.unmount();
    }
}
