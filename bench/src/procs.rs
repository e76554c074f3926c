//! Processes the bench starts (server, client, sshd, scp, openssl, perf),
//! each bounded in time and killed by PID when its guard drops, and what
//! `/proc` says about them.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Result type of the bench: errors are messages for the table's notes.
pub type Res<T> = Result<T, String>;

/// A started process: killed (with everything it started) when dropped.
pub struct Guard {
    child: Option<Child>,
    what: String,
}

impl Guard {
    /// Spawns `cmd`; `what` names it in errors.
    pub fn spawn(cmd: &mut Command, what: &str) -> Res<Guard> {
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok(Guard {
            child: Some(child),
            what: what.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The child, to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// Whether it has exited (and then how).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for it to exit, killing it after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Res<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "{} did not finish within {} s; killed",
                    self.what,
                    timeout.as_secs()
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends SIGINT (perf and strace then write their summaries) and
    /// waits up to `timeout` for it to exit; kills it after that.
    pub fn interrupt(&mut self, timeout: Duration) -> Res<ExitStatus> {
        signal_pid(self.pid(), "-INT");
        self.wait_timeout(timeout)
    }

    /// Kills it and its descendants by PID, then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                for pid in descendants(child.id()) {
                    kill_pid(pid);
                }
                // Already gone is fine.
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every descendant of `pid`, children before grandchildren.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in text.split_whitespace().filter_map(|s| s.parse().ok()) {
                out.push(child);
                todo.push(child);
            }
        }
    }
    out
}

/// SIGKILL to one process we started (or one it started), by PID, through
/// kill(1): the workspace denies the unsafe code a libc call would need.
fn kill_pid(pid: u32) {
    signal_pid(pid, "-KILL");
}

fn signal_pid(pid: u32, signal: &str) {
    if pid == 0 {
        return;
    }
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What a finished command printed, and how long it ran.
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub wall: Duration,
}

/// Runs `cmd` to completion with its output captured, killing it after
/// `timeout`.
pub fn run(cmd: &mut Command, what: &str, timeout: Duration) -> Res<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut guard = Guard::spawn(cmd, what)?;
    let out = reader(guard.child_mut().stdout.take());
    let err = reader(guard.child_mut().stderr.take());
    let status = guard.wait_timeout(timeout);
    let wall = start.elapsed();
    drop(guard);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let status = status.map_err(|e| format!("{e}; stderr: {}", last_line(&stderr)))?;
    Ok(Output {
        status,
        stdout,
        stderr,
        wall,
    })
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let mut bytes = Vec::new();
            let _ = p.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// The last non-empty line of `text`, for error messages.
pub fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// Whether `name` is an executable on PATH (`command -v`).
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// The binaries under test
// ---------------------------------------------------------------------------

/// The server and client binaries, from the target directory the bench
/// itself was built into.
pub struct Binaries {
    /// sealdrop-server.
    pub server: PathBuf,
    /// sealdrop-client, if it built.
    pub client: Option<PathBuf>,
    /// What happened while locating them.
    pub notes: Vec<String>,
}

/// Longest a release build may take on a busy 2-core machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

/// Builds (unless `build` is false) and locates the release binaries next
/// to the bench's own executable.
pub fn binaries(build: bool) -> Res<Binaries> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut notes = Vec::new();
    if build {
        if let Err(e) = cargo_build(&["sealdrop-server", "sealdrop-client"]) {
            notes.push(format!(
                "building server and client failed ({e}); building the server alone"
            ));
            if let Err(e) = cargo_build(&["sealdrop-server"]) {
                notes.push(format!(
                    "building the server failed too ({e}); using the sealdrop-server \
                     binary built earlier (it may be stale)"
                ));
            }
        }
    }
    let server = dir.join("sealdrop-server");
    if !server.is_file() {
        return Err(format!(
            "{} not found: run `cargo build --release -p sealdrop-server -p sealdrop-client`",
            server.display()
        ));
    }
    let client = dir.join("sealdrop-client");
    let client = client.is_file().then_some(client);
    if client.is_none() {
        notes.push("sealdrop-client not built: the real-client rows are skipped".into());
    } else if notes
        .iter()
        .any(|n| n.starts_with("building server and client failed"))
    {
        notes.push("using the sealdrop-client binary built earlier (it may be stale)".into());
    }
    Ok(Binaries {
        server,
        client,
        notes,
    })
}

fn cargo_build(packages: &[&str]) -> Res<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest);
    for p in packages {
        cmd.args(["-p", p]);
    }
    eprintln!("bench: cargo build --release -p {}", packages.join(" -p "));
    let out = run(&mut cmd, "cargo build", BUILD_TIMEOUT)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(last_line(&out.stderr).to_owned())
    }
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

/// Longest the server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Log lines kept for error reports.
const LOG_TAIL: usize = 20;

/// A running `sealdrop-server` on 127.0.0.1 with a private data dir.
pub struct Server {
    guard: Guard,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    /// The data directory's guard when the server has one of its own
    /// (removed after the server is killed); `None` when servers share
    /// one ([`Server::start_shared`]).
    _own_data: Option<tempfile::TempDir>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Starts the server with a fresh data dir under `base`.
    pub fn start(bin: &Path, base: &Path) -> Res<Server> {
        let data = tempfile::Builder::new()
            .prefix("sealdrop-bench-data-")
            .tempdir_in(base)
            .map_err(|e| format!("cannot create a data dir in {}: {e}", base.display()))?;
        let mut server = Server::start_shared(bin, data.path(), &[])?;
        server._own_data = Some(data);
        Ok(server)
    }

    /// Starts the server with a fresh data dir under `base` and one
    /// listener tagged `=tag` (`2024a`: 1025-1031 mean 2024a there), the
    /// address of which is [`Server::addr`].
    pub fn start_tagged(bin: &Path, base: &Path, tag: &str) -> Res<Server> {
        let data = tempfile::Builder::new()
            .prefix("sealdrop-bench-data-")
            .tempdir_in(base)
            .map_err(|e| format!("cannot create a data dir in {}: {e}", base.display()))?;
        let listen = format!("127.0.0.1:0={tag}");
        let mut server = Server::spawn(bin, data.path(), &listen, &[])?;
        server._own_data = Some(data);
        Ok(server)
    }

    /// Starts the server on data directory `data` (which the caller
    /// keeps, and other servers may share) with `extra` flags.
    pub fn start_shared(bin: &Path, data: &Path, extra: &[&str]) -> Res<Server> {
        Server::spawn(bin, data, "127.0.0.1:0", extra)
    }

    /// Starts the server on `data` with one listener `listen` (a `--listen`
    /// value) and `extra` flags.
    fn spawn(bin: &Path, data: &Path, listen: &str, extra: &[&str]) -> Res<Server> {
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", listen, "--max-connections", "20000"])
            .args(["--log-level", "info", "--data-dir"])
            .arg(data)
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut guard = Guard::spawn(&mut cmd, "sealdrop-server")?;
        let stderr = guard.child_mut().stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let tail = Arc::clone(&log);
        thread::spawn(move || read_log(stderr, &tail, &tx));
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let tail: Vec<String> = log
                    .lock()
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default();
                return Err(format!("server did not start: {}", tail.join(" | ")));
            }
        };
        Ok(Server {
            guard,
            addr,
            data: data.to_path_buf(),
            _own_data: None,
            log,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// A `/proc/PID/status` field in KiB (VmRSS, VmHWM, RssAnon, ...).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        status_kib(self.pid(), field)
    }

    /// CPU seconds used so far.
    pub fn cpu(&self) -> Cpu {
        Cpu::of(&format!("/proc/{}/stat", self.pid()))
    }

    /// Open descriptors.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// Fails if the server has exited.
    pub fn check_alive(&mut self) -> Res<()> {
        match self.guard.try_wait() {
            None => Ok(()),
            Some(status) => Err(format!(
                "server exited ({status}): {}",
                self.log_tail().join(" | ")
            )),
        }
    }

    /// Its last log lines.
    pub fn log_tail(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn read_log(stderr: impl Read, tail: &Mutex<VecDeque<String>>, tx: &mpsc::Sender<SocketAddr>) {
    let mut sent = false;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if !sent {
            if let Some(addr) = listening_addr(&line) {
                let _ = tx.send(addr);
                sent = true;
            }
        }
        if let Ok(mut t) = tail.lock() {
            if t.len() == LOG_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

/// The first address in the server's `listening on 127.0.0.1:PORT, ...`
/// line (a tagged listener reads `127.0.0.1:PORT=2024a`).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let end = rest.find([',', ' ', '=']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A `/proc/PID/status` field in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    status_kib_file(&format!("/proc/{pid}/status"), field)
}

/// A `Field:   N kB` line of a `/proc` file (status, meminfo).
pub fn status_kib_file(path: &str, field: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of a process, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// User time.
    pub user: f64,
    /// System time.
    pub sys: f64,
    /// User time of reaped children (only meaningful for ourselves).
    pub child_user: f64,
    /// System time of reaped children.
    pub child_sys: f64,
}

impl Cpu {
    /// Reads a `/proc/.../stat` file.
    pub fn of(path: &str) -> Cpu {
        let text = fs::read_to_string(path).unwrap_or_default();
        // Fields after the ")" that ends the command name: state is field 3,
        // utime 14, stime 15, cutime 16, cstime 17 (proc(5)).
        let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
        let f: Vec<f64> = after
            .split_whitespace()
            .map(|s| s.parse().unwrap_or(0.0))
            .collect();
        let tick = clock_ticks();
        let get = |i: usize| f.get(i - 3).copied().unwrap_or(0.0) / tick;
        Cpu {
            user: get(14),
            sys: get(15),
            child_user: get(16),
            child_sys: get(17),
        }
    }

    /// This process (all threads) and its reaped children.
    pub fn me() -> Cpu {
        Cpu::of("/proc/self/stat")
    }

    /// `self - earlier`, field by field.
    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user - earlier.user,
            sys: self.sys - earlier.sys,
            child_user: self.child_user - earlier.child_user,
            child_sys: self.child_sys - earlier.child_sys,
        }
    }
}

/// USER_HZ, from getconf (100 on every Linux we know of).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Free bytes on the filesystem holding `dir` (`df -Pk`).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let line = "1764620000000 INFO  listening on 127.0.0.1:40123, data in /tmp/x, up to 20000 connections";
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(listening_addr("something else"), None);
        let tagged = "1764620000000 INFO  listening on 127.0.0.1:40124=2024a, data in /tmp/x";
        assert_eq!(
            listening_addr(tagged),
            Some("127.0.0.1:40124".parse().unwrap())
        );
    }

    #[test]
    fn reads_own_status_and_cpu() {
        assert!(status_kib(std::process::id(), "VmRSS").unwrap() > 0);
        assert!(Cpu::me().user >= 0.0);
    }
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in seconds
/// summed over all CPUs: what else ran while a step ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct SysCpu {
    /// user + nice + system: time charged to processes (ours and others).
    pub tasks: f64,
    /// irq + softirq: not charged to any process; on loopback most of it
    /// is TCP receive processing for our own sockets.
    pub irq: f64,
    /// idle + iowait.
    pub idle: f64,
    /// Time the hypervisor gave to other guests.
    pub steal: f64,
}

impl SysCpu {
    /// Now.
    pub fn now() -> SysCpu {
        let text = fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<f64> = text
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .map(|s| s.parse().unwrap_or(0.0))
            .collect();
        let t = clock_ticks();
        let g = |i: usize| f.get(i).copied().unwrap_or(0.0) / t;
        SysCpu {
            tasks: g(0) + g(1) + g(2),
            irq: g(5) + g(6),
            idle: g(3) + g(4),
            steal: g(7),
        }
    }

    /// `self - earlier`.
    pub fn since(self, earlier: SysCpu) -> SysCpu {
        SysCpu {
            tasks: self.tasks - earlier.tasks,
            irq: self.irq - earlier.irq,
            idle: self.idle - earlier.idle,
            steal: self.steal - earlier.steal,
        }
    }

    /// One line: how the machine's CPU time was spent, given `ours` CPU
    /// seconds used by the processes under test.
    pub fn describe(&self, ours: f64) -> String {
        let total = (self.tasks + self.irq + self.idle + self.steal).max(1e-9);
        let pct = |x: f64| 100.0 * x / total;
        format!(
            "machine CPU during the step: {:.0}% ours (server + clients), {:.0}% irq/softirq \
             (mostly loopback TCP), {:.0}% other processes and kernel threads, {:.0}% steal, {:.0}% idle",
            pct(ours.min(self.tasks)),
            pct(self.irq),
            pct((self.tasks - ours).max(0.0)),
            pct(self.steal),
            pct(self.idle)
        )
    }
}

/// The 1-minute load average.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
