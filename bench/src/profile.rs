//! `--profile`: where the time of the 1 GiB upload goes (`perf stat`,
//! `perf record` of client and server), and the system calls of small
//! sessions (`strace -c` on the server).

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::e2e::{BigFile, RealClient};
use crate::procs::{self, on_path, Guard, Res, Server};

/// Software events: this machine (a VM) has no hardware counters, and
/// these work everywhere perf does.
const EVENTS: &str = "task-clock,context-switches,cpu-migrations,page-faults";
/// Lines of each `perf report` kept.
const REPORT_LINES: usize = 14;

/// Whether `perf stat` works here.
pub fn perf_works() -> bool {
    on_path("perf").is_some()
        && Command::new("perf")
            .args(["stat", "-e", "task-clock", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Starts `perf ARGS -p PID`, its stderr (perf stat's summary) to `log`.
fn attach(args: &[&str], pid: u32, log: &Path) -> Res<Guard> {
    let err = File::create(log).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("perf");
    cmd.args(args)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let g = Guard::spawn(&mut cmd, "perf")?;
    // perf needs a moment to attach before the measured work starts.
    std::thread::sleep(Duration::from_millis(300));
    Ok(g)
}

/// The interesting lines of a `perf stat` summary.
fn stat_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Performance counter") && !l.contains("<not supported>")
        })
        .map(|l| format!("    {l}"))
        .collect()
}

/// `perf stat` and `perf record` of one more upload of `file` each, client
/// and server side; the report as lines.
pub fn upload(
    client: &RealClient,
    server: &Server,
    file: &BigFile,
    dir: &Path,
) -> Res<Vec<String>> {
    let mut out = Vec::new();
    let argv = client.argv(server.addr, &file.path);

    let srv_log = dir.join("perf-stat-server.txt");
    let mut srv = attach(&["stat", "-e", EVENTS], server.pid(), &srv_log)?;
    let mut cmd = Command::new("perf");
    cmd.args(["stat", "-e", EVENTS, "--"]).args(&argv);
    let cli = procs::run(
        &mut cmd,
        "perf stat sealdrop-client",
        Duration::from_secs(600),
    )?;
    srv.interrupt(Duration::from_secs(10))?;
    out.push("perf stat, sealdrop-client (whole process):".into());
    out.extend(stat_lines(&cli.stderr));
    out.push("perf stat, sealdrop-server (during that upload):".into());
    out.extend(stat_lines(
        &fs::read_to_string(&srv_log).unwrap_or_default(),
    ));

    let srv_data = dir.join("perf-server.data");
    let cli_data = dir.join("perf-client.data");
    let srv_data_s = srv_data.to_string_lossy().into_owned();
    let mut srv = attach(
        &[
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "-o",
            &srv_data_s,
        ],
        server.pid(),
        &dir.join("perf-record-server.txt"),
    )?;
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-q", "-e", "cpu-clock", "-F", "999", "-o"])
        .arg(&cli_data)
        .arg("--")
        .args(&argv);
    procs::run(
        &mut cmd,
        "perf record sealdrop-client",
        Duration::from_secs(600),
    )?;
    srv.interrupt(Duration::from_secs(30))?;
    out.push("perf record -e cpu-clock, sealdrop-client (top symbols):".into());
    out.extend(report(&cli_data)?);
    out.push("perf record -e cpu-clock, sealdrop-server (top symbols):".into());
    out.extend(report(&srv_data)?);
    Ok(out)
}

fn report(data: &Path) -> Res<Vec<String>> {
    let r = procs::run(
        Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "dso,sym",
                "--percent-limit",
                "1",
                "-i",
            ])
            .arg(data),
        "perf report",
        Duration::from_secs(120),
    )?;
    Ok(r.stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(REPORT_LINES)
        .map(|l| format!("    {}", l.trim_end()))
        .collect())
}

/// Runs `work` with `strace -c -f` attached to the server; the syscall
/// summary's top lines.
pub fn strace_during(
    server: &Server,
    dir: &Path,
    work: impl FnOnce() -> Res<()>,
) -> Res<Vec<String>> {
    on_path("strace").ok_or("no strace")?;
    let file = dir.join("strace.txt");
    let mut cmd = Command::new("strace");
    cmd.args(["-c", "-f", "-o"])
        .arg(&file)
        .args(["-p", &server.pid().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut g = Guard::spawn(&mut cmd, "strace")?;
    std::thread::sleep(Duration::from_millis(300));
    let result = work();
    g.interrupt(Duration::from_secs(10))?;
    result?;
    let text = fs::read_to_string(&file).unwrap_or_default();
    Ok(text.lines().take(14).map(|l| format!("    {l}")).collect())
}
