//! Bounded waits: conditions, threads, child processes. Nothing in here
//! waits forever; what times out panics (or says so) with what it saw.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// Serialises the CPU-heavy tests of one test binary (big uploads, many
/// clients) and the timing-sensitive ones: on 2 cores in a debug build
/// two of them at once only slow each other down past their timeouts.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Joins every thread, panicking if they are not all done within
/// `timeout` or if one panicked. Returns their results in order.
pub fn join_all<T>(handles: Vec<JoinHandle<T>>, timeout: Duration) -> Vec<T> {
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

/// Output of a command that ran to completion within its time limit.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
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

/// One sample of a server's `GET /metrics` (Prometheus text format):
/// the value on the line whose name and labels are exactly `sample`
/// (`sealdrop_refusals_total{reason="quota"}`), or, for a `sample`
/// without labels, the first line of that name whatever its labels
/// (`sealdrop_files_size_bytes` has only one, labelled `store`); 0 if
/// there is none. The request is bounded by a 10 s timeout.
pub fn scrape_metric(addr: std::net::SocketAddr, sample: &str) -> f64 {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .expect("connect to the metrics address");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sealdrop\r\n\r\n")
        .expect("send the scrape");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the scrape");
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let bare = !sample.contains('{') && name.split('{').next() == Some(sample);
            (name == sample || bare)
                .then(|| value.parse().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}
