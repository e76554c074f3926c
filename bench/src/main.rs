//! sealdrop-bench: starts the real `sealdrop-server`, drives the real
//! `sealdrop-client` and an in-bench protocol client on 127.0.0.1, and
//! prints one table of figures, references measured in the same run,
//! ratios and targets. See `bench/README.md`.

mod e2e;
mod idle;
mod pg;
mod procs;
mod profile;
mod proto;
mod sessions;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use sealdrop_protocol::client::PacketOptions;
use sealdrop_protocol::consts::MAX_PLAINTEXT_SIZE;
use sealdrop_protocol::Revision;
use sealdrop_testkit::data::random_bytes;

use crate::procs::{Binaries, Cpu, Res, Server, SysCpu};
use crate::proto::{Plain, Registered};
use crate::table::{num, Row, Target};

/// A key pair of the in-bench clients.
type Key = Arc<sealdrop_protocol::crypto::RsaPrivateKey>;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

const USAGE: &str = "\
usage: sealdrop-bench [--quick] [--profile] [--no-build] [--only STEPS]

  --quick      smoke run (< 1 minute): 64 MiB instead of 1 GiB, 1000 instead of
               10000 idle connections, 200 instead of 1000 concurrent clients,
               256 MiB instead of the 4 GiB uploads, shorter session batches
  --profile    also run the big upload under perf stat / perf record (client and
               server) and small sessions under strace -c, and print the results
  --no-build   do not run `cargo build --release -p sealdrop-server -p sealdrop-client`
               first; use the binaries next to this executable as they are
  --only STEPS comma-separated subset of: e2e,sessions,crowd,idle,big,pg

Every step is bounded in time and kills the processes it starts. Temporary
files go under $TMPDIR (default /tmp), which should be on the disk under test.";

/// What a run measures, and how much.
struct Plan {
    quick: bool,
    profile: bool,
    build: bool,
    only: Option<Vec<String>>,
    e2e_size: u64,
    e2e_rounds: usize,
    fsync_count: usize,
    fsync_limit: Duration,
    seq_count: usize,
    par_count: usize,
    par_threads: usize,
    batch_limit: Duration,
    session_rounds: usize,
    idle_counts: Vec<usize>,
    crowd_clients: usize,
    crowd_size: usize,
    big_size: u64,
    pg_rounds: usize,
    pg_threads: usize,
    pg_limit: Duration,
    pg_large_clients: usize,
    pg_large_size: u64,
}

impl Plan {
    fn from_args() -> Result<Plan, String> {
        let mut quick = false;
        let mut profile = false;
        let mut build = true;
        let mut only = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--profile" => profile = true,
                "--no-build" => build = false,
                "--only" => {
                    let list = args.next().ok_or("--only needs a list of steps")?;
                    only = Some(list.split(',').map(str::to_owned).collect());
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Plan {
            quick,
            profile,
            build,
            only,
            e2e_size: if quick { 64 * MIB } else { GIB },
            e2e_rounds: if quick { 1 } else { 3 },
            fsync_count: if quick { 300 } else { 2000 },
            fsync_limit: Duration::from_secs(if quick { 1 } else { 3 }),
            seq_count: if quick { 200 } else { 1000 },
            par_count: if quick { 500 } else { 3000 },
            par_threads: 32,
            batch_limit: Duration::from_secs(if quick { 3 } else { 15 }),
            session_rounds: if quick { 2 } else { 5 },
            idle_counts: if quick {
                vec![1000]
            } else {
                vec![1000, 10_000]
            },
            crowd_clients: if quick { 200 } else { 1000 },
            crowd_size: MIB as usize,
            big_size: if quick { 256 * MIB } else { MAX_PLAINTEXT_SIZE },
            pg_rounds: 2,
            pg_threads: 32,
            pg_limit: Duration::from_secs(if quick { 2 } else { 5 }),
            pg_large_clients: 4,
            pg_large_size: if quick { 32 * MIB } else { 256 * MIB },
        })
    }

    fn runs(&self, step: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|s| s == step))
    }
}

/// What one step produced.
#[derive(Default)]
struct Step {
    rows: Vec<Row>,
    /// Printed under "where time goes" when a row of the step missed.
    breakdown: Vec<String>,
    /// Printed always (skips, set-up facts).
    notes: Vec<String>,
    /// Printed with --profile.
    profile: Vec<String>,
}

fn main() -> ExitCode {
    let plan = match Plan::from_args() {
        Ok(p) => p,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sealdrop-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealdrop-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn progress(text: &str) {
    eprintln!("bench: {text}");
}

fn run(plan: &Plan) -> Res<()> {
    let started = Instant::now();
    let command: Vec<String> = std::env::args().collect();
    let date = utc_now();
    let base = std::env::temp_dir();
    let machine_line = machine(&base);
    let bins = procs::binaries(plan.build)?;
    // 10,000 idle connections need 10,000 descriptors on our side too.
    let nofile = rlimit::increase_nofile_limit(25_000).unwrap_or(0);
    let mut steps: Vec<(&str, Step)> = Vec::new();
    let mut setup = Step {
        notes: bins.notes.clone(),
        ..Step::default()
    };
    setup
        .notes
        .push(format!("open-file limit of the bench: {nofile}"));

    let keys = if ["e2e", "sessions", "crowd", "big", "pg"]
        .iter()
        .any(|s| plan.runs(s))
    {
        progress("generating 4 RSA-1024 key pairs for the in-bench clients");
        let t = Instant::now();
        let k = proto::key_pool(4)?;
        setup.notes.push(format!(
            "in-bench client keys: 4 RSA-1024 pairs made in {:.1} s, shared by all clients",
            t.elapsed().as_secs_f64()
        ));
        if let Ok((enc, dec, fast)) = proto::rsa_costs(&k[0], 50) {
            setup.notes.push(format!(
                "RSA-1024 OAEP: encrypt (server, per 2102/2105) {enc:.2} ms; decrypt per session \
                 {dec:.2} ms blinded (sealdrop-client) and {fast:.2} ms unblinded (the in-bench \
                 load generator, to leave the 2 cores to the server)"
            ));
        }
        k
    } else {
        Vec::new()
    };
    steps.push(("setup", setup));
    if plan.runs("e2e") {
        steps.push(("e2e", step_e2e(plan, &bins, &base, &keys)));
    }
    if plan.runs("sessions") || plan.runs("crowd") {
        let (s, c) = step_sessions_and_crowd(plan, &bins, &base, &keys);
        if plan.runs("sessions") {
            steps.push(("sessions", s));
        }
        if plan.runs("crowd") {
            steps.push(("crowd", c));
        }
    }
    if plan.runs("idle") {
        steps.push(("idle", step_idle(plan, &bins, &base, nofile)));
    }
    if plan.runs("big") {
        steps.push(("big", step_big(plan, &bins, &base, &keys)));
    }
    if plan.runs("pg") {
        steps.push(("pg", step_pg(plan, &bins, &base, &keys)));
    }
    // The table keeps the order of the issues: e2e, sessions, idle, crowd,
    // big, then the servers on PostgreSQL (issue 17).
    let order = ["setup", "e2e", "sessions", "idle", "crowd", "big", "pg"];
    steps.sort_by_key(|(name, _)| order.iter().position(|o| o == name));
    print_report(
        plan,
        &command,
        &date,
        &machine_line,
        &steps,
        started.elapsed(),
    );
    Ok(())
}

fn print_report(
    plan: &Plan,
    command: &[String],
    date: &str,
    machine: &str,
    steps: &[(&str, Step)],
    took: Duration,
) {
    println!(
        "sealdrop-bench{}",
        if plan.quick { " (quick smoke run)" } else { "" }
    );
    println!("command: {}", command.join(" "));
    println!("date:    {date}");
    println!("machine: {machine}");
    println!();
    let rows: Vec<Row> = steps
        .iter()
        .flat_map(|(_, s)| s.rows.iter().cloned())
        .collect();
    print!("{}", table::render(&rows));
    println!();
    let notes: Vec<&String> = steps.iter().flat_map(|(_, s)| &s.notes).collect();
    let skips: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.skipped
                .as_ref()
                .map(|w| format!("{}: skipped ({w})", r.what))
        })
        .collect();
    if !notes.is_empty() || !skips.is_empty() {
        println!("notes:");
        for n in notes {
            println!("  {n}");
        }
        for s in skips {
            println!("  {s}");
        }
        println!();
    }
    let missed: Vec<&(&str, Step)> = steps
        .iter()
        .filter(|(_, s)| s.rows.iter().any(Row::missed))
        .collect();
    if !missed.is_empty() {
        println!("where time goes (steps with a missed target):");
        for (name, s) in missed {
            println!("  [{name}]");
            for l in &s.breakdown {
                println!("    {l}");
            }
        }
        println!();
    }
    let others: Vec<&(&str, Step)> = steps
        .iter()
        .filter(|(_, s)| !s.breakdown.is_empty() && !s.rows.iter().any(Row::missed))
        .collect();
    if !others.is_empty() {
        println!("details of the other steps:");
        for (name, s) in others {
            println!("  [{name}]");
            for l in &s.breakdown {
                println!("    {l}");
            }
        }
        println!();
    }
    if plan.profile {
        println!("profile:");
        for (name, s) in steps.iter().filter(|(_, s)| !s.profile.is_empty()) {
            println!("  [{name}]");
            for l in &s.profile {
                println!("  {l}");
            }
        }
        println!();
    }
    let n_miss = rows.iter().filter(|r| r.missed()).count();
    let n_pass = rows.iter().filter(|r| r.verdict() == "PASS").count();
    println!(
        "{n_pass} targets met, {n_miss} missed, {} skipped; bench took {:.0} s",
        rows.iter().filter(|r| r.verdict() == "SKIP").count(),
        took.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// e2e: real client vs scp vs openssl
// ---------------------------------------------------------------------------

const E2E_SCP_DEFAULT: f64 = 2.0;
const E2E_SCP_GCM: f64 = 1.3;
const E2E_OPENSSL: f64 = 0.4;
/// Issue 14: the 2024c upload (AES-256, packets) at no less than 0.9x the
/// 2023c one measured in the same run.
const E2E_2024C_VS_2023C: f64 = 0.9;
/// The revisions the e2e upload also goes over, beside 2023c (the
/// client's default), each held against 2023c in the same run. Only 2024c
/// has a target (issue 14); the others' ratios are information.
const E2E_OTHER_REVISIONS: [&str; 4] = ["2022c", "2023a", "2024a", "2024c"];
const GCM: &str = "aes128-gcm@openssh.com";

fn size_label(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// One of [`E2E_OTHER_REVISIONS`] in the e2e step: its registered client
/// and its timed runs.
struct OtherRevision {
    rev: &'static str,
    /// Its client talks to the server with the 2024a listener.
    on_2024a: bool,
    client: Option<e2e::RealClient>,
    runs: Vec<e2e::Run>,
    /// Why it has no figure (preparing or a run failed).
    error: Option<String>,
}

fn step_e2e(plan: &Plan, bins: &Binaries, base: &Path, keys: &[Key]) -> Step {
    let mut step = Step::default();
    let label = size_label(plan.e2e_size);
    let what = format!("e2e {label}");
    let skip_all = |step: &mut Step, why: &str| {
        for (w, t) in [
            (format!("{what} vs scp, default cipher"), E2E_SCP_DEFAULT),
            (format!("{what} vs scp {GCM}"), E2E_SCP_GCM),
            (
                format!("{what} vs openssl aes-128-cbc encrypt"),
                E2E_OPENSSL,
            ),
        ] {
            step.rows
                .push(Row::skipped(&w, "MB/s", Target::RatioAtLeast(t), why));
        }
    };
    let Some(client_bin) = bins.client.as_ref() else {
        skip_all(&mut step, "sealdrop-client not built");
        return step;
    };
    if let Err(e) = e2e_inner(plan, client_bin, &bins.server, base, keys, &mut step, &what) {
        step.rows.clear();
        skip_all(&mut step, &e);
    }
    step
}

fn e2e_inner(
    plan: &Plan,
    client_bin: &Path,
    server_bin: &Path,
    base: &Path,
    keys: &[Key],
    step: &mut Step,
    what: &str,
) -> Res<()> {
    let dir = tempdir(base, "sealdrop-bench-e2e-")?;
    progress(&format!(
        "e2e: writing a {} file and reading it into the page cache",
        size_label(plan.e2e_size)
    ));
    let file = e2e::make_file(dir.path(), plan.e2e_size)?;
    let mut server = Server::start(server_bin, base)?;
    let client = e2e::RealClient::prepare(client_bin, dir.path(), &server)?;
    // The same upload over every other revision (2024a/c: AES-256, one
    // packet per file by default), to hold each against 2023c in the same
    // run. 2024a shares 2023c's request codes, so its clients go to a
    // second server whose one listener is tagged 2024a (PROTOCOL.md §9);
    // the others are detected on the first server's untagged listener.
    let server_2024a = Server::start_tagged(server_bin, base, "2024a");
    let mut others: Vec<OtherRevision> = E2E_OTHER_REVISIONS
        .iter()
        .map(|&rev| {
            let on_2024a = rev == "2024a";
            let client = match (&server_2024a, on_2024a) {
                (Err(e), true) => Err(format!("server with a 2024a listener: {e}")),
                (Ok(s), true) => {
                    e2e::RealClient::prepare_revision(client_bin, dir.path(), s, Some(rev))
                }
                (_, false) => {
                    e2e::RealClient::prepare_revision(client_bin, dir.path(), &server, Some(rev))
                }
            };
            OtherRevision {
                rev,
                on_2024a,
                error: client.as_ref().err().cloned(),
                client: client.ok(),
                runs: Vec::new(),
            }
        })
        .collect();
    let ssh_dir = tempdir(base, "sealdrop-bench-sshd-")?;
    let sshd = e2e::Sshd::start(ssh_dir.path());
    let default_cipher = e2e::default_cipher();
    match &sshd {
        Ok(s) => step.notes.extend(s.notes.iter().cloned()),
        Err(e) => step.notes.push(format!("scp: skipped ({e})")),
    }
    let mut runs = Vec::new();
    let mut scp_default = Vec::new();
    let mut scp_gcm = Vec::new();
    let mut scp_error = None;
    let mut openssl = Vec::new();
    let mut openssl_error = None;
    let mut json = String::new();
    for round in 0..plan.e2e_rounds {
        progress(&format!(
            "e2e: round {}/{}: sealdrop-client in every revision, scp, scp {GCM}, openssl speed",
            round + 1,
            plan.e2e_rounds
        ));
        let (run, j) = e2e::timed_client(&client, &server, &file)?;
        runs.push(run);
        json = j;
        server.check_alive()?;
        for other in &mut others {
            let (Some(c), None) = (&other.client, &other.error) else {
                continue;
            };
            let s = match (&server_2024a, other.on_2024a) {
                (Ok(s), true) => s,
                _ => &server,
            };
            match e2e::timed_client(c, s, &file)
                .and_then(|(run, j)| e2e::check_stored(s, &j, &file).map(|()| run))
            {
                Ok(run) => other.runs.push(run),
                Err(e) => other.error = Some(e),
            }
        }
        if let Ok(s) = &sshd {
            match s
                .copy(&file.path, None)
                .and_then(|d| Ok((d, s.copy(&file.path, Some(GCM))?)))
            {
                Ok((d, g)) => {
                    scp_default.push(file.size as f64 / 1e6 / d.as_secs_f64());
                    scp_gcm.push(file.size as f64 / 1e6 / g.as_secs_f64());
                }
                Err(e) => scp_error = Some(e),
            }
        }
        match e2e::openssl_speed() {
            Ok(bps) => openssl.push(bps),
            Err(e) => openssl_error = Some(e),
        }
    }
    e2e::check_stored(&server, &json, &file)?;
    let openssl = median(openssl).ok_or_else(|| openssl_error.unwrap_or_default());

    let mbps: Vec<f64> = runs.iter().map(|r| r.mb_per_s(file.size)).collect();
    let e2e_mbps = median(mbps.clone()).unwrap_or(0.0);
    let n = runs.len();
    step.rows.push(
        Row::info(
            &format!("{what} upload, sealdrop-client: wall, median of {n}"),
            file.size as f64 / 1e6 / e2e_mbps,
            "s",
        )
        .reference(format!(
            "runs {}",
            mbps.iter().map(|m| num(*m)).collect::<Vec<_>>().join(" / ") + " MB/s"
        )),
    );
    for other in others {
        let rev = other.rev;
        let label = format!("{what} upload over {rev} vs 2023c, sealdrop-client");
        let target = if rev == "2024c" {
            Target::RatioAtLeast(E2E_2024C_VS_2023C)
        } else {
            Target::None
        };
        let mbps: Vec<f64> = other.runs.iter().map(|r| r.mb_per_s(file.size)).collect();
        step.rows.push(match median(mbps) {
            Some(r) if other.error.is_none() => Row::info(&label, r, "MB/s")
                .reference(format!("2023c {} MB/s", num(e2e_mbps)))
                .ratio(e2e_mbps, E2E_2024C_VS_2023C)
                .target(target),
            _ => Row::skipped(
                &label,
                "MB/s",
                target,
                other.error.unwrap_or_else(|| format!("no {rev} run")),
            ),
        });
    }
    let scp_row = |label: String, rates: &[f64], target: f64| match (
        median(rates.to_vec()),
        &scp_error,
        &sshd,
    ) {
        (Some(r), _, _) => Row::info(&label, e2e_mbps, "MB/s")
            .reference(format!("scp {} MB/s", num(r)))
            .ratio(r, target),
        (None, Some(e), _) => Row::skipped(&label, "MB/s", Target::RatioAtLeast(target), e.clone()),
        (None, None, Err(e)) => {
            Row::skipped(&label, "MB/s", Target::RatioAtLeast(target), e.clone())
        }
        (None, None, Ok(_)) => {
            Row::skipped(&label, "MB/s", Target::RatioAtLeast(target), "no scp run")
        }
    };
    step.rows.push(scp_row(
        format!("{what} vs scp, default cipher {default_cipher}"),
        &scp_default,
        E2E_SCP_DEFAULT,
    ));
    step.rows.push(scp_row(
        format!("{what} vs scp {GCM}"),
        &scp_gcm,
        E2E_SCP_GCM,
    ));
    let label = format!("{what} vs openssl aes-128-cbc encrypt");
    step.rows.push(match &openssl {
        Ok(bps) => Row::info(&label, e2e_mbps, "MB/s")
            .reference(format!("openssl {} MB/s", num(bps / 1e6)))
            .ratio(bps / 1e6, E2E_OPENSSL),
        Err(e) => Row::skipped(&label, "MB/s", Target::RatioAtLeast(E2E_OPENSSL), e.clone()),
    });
    step.breakdown = e2e_breakdown(&runs, file.size, openssl.as_ref().ok().copied());
    if let Some(key) = keys.first() {
        progress("e2e: the same upload from the in-bench client, phase by phase");
        match in_bench_phases(&server, key, &file) {
            Ok(line) => step.breakdown.push(line),
            Err(e) => step.breakdown.push(format!("in-bench upload failed: {e}")),
        }
    }
    if plan.profile {
        progress("e2e: profiling one more upload (perf stat, perf record)");
        step.profile = if profile::perf_works() {
            profile::upload(&client, &server, &file, dir.path())
                .unwrap_or_else(|e| vec![format!("perf failed: {e}")])
        } else {
            vec!["perf not available (perf stat -e task-clock true fails)".into()]
        };
    }
    Ok(())
}

/// Uploads `file` (read into memory) with the in-bench client and says
/// how long each phase took: where the real client's wall time goes.
fn in_bench_phases(server: &Server, key: &Key, file: &e2e::BigFile) -> Res<String> {
    let client = proto::register(server.addr, "bench-e2e-phases", key)?;
    let data = std::fs::read(&file.path).map_err(|e| e.to_string())?;
    let (srv0, me0) = (server.cpu(), Cpu::me());
    let t = proto::session(
        server.addr,
        &client,
        "phases.bin",
        Plain::Bytes(&data),
        Duration::from_secs(600),
    )?;
    let me = Cpu::me().since(me0);
    let srv = server.cpu().since(srv0);
    let send = t.total - t.wait_2103 - t.wait_2104;
    Ok(format!(
        "in-bench client, same file from memory: {:.2} s = reconnect+encrypt+send {:.2} s ({} MB/s), \
         wait 2103 {:.2} s, wait 2104 (server fsync+rename) {:.2} s; server CPU user {:.2} s, sys {:.2} s; \
         in-bench client CPU {:.2} s",
        t.total.as_secs_f64(),
        send.as_secs_f64(),
        num(file.size as f64 / 1e6 / send.as_secs_f64()),
        t.wait_2103.as_secs_f64(),
        t.wait_2104.as_secs_f64(),
        srv.user,
        srv.sys,
        me.user + me.sys
    ))
}

fn e2e_breakdown(runs: &[e2e::Run], size: u64, openssl: Option<f64>) -> Vec<String> {
    let mut out = Vec::new();
    let gb = size as f64 / 1e9;
    for (i, r) in runs.iter().enumerate() {
        let wall = r.wall.as_secs_f64();
        let srv = r.server_user + r.server_sys;
        out.push(format!(
            "run {}: wall {:.2} s; client CPU {:.2} s ({:.2} s/GB); server CPU {:.2} s (user {:.2}, sys {:.2}; {:.2} s/GB); \
             together {:.0}% of the cores",
            i + 1,
            wall,
            r.cpu,
            r.cpu / gb,
            srv,
            r.server_user,
            r.server_sys,
            srv / gb,
            100.0 * (r.cpu + srv) / (cores() * wall)
        ));
        out.push(format!(
            "run {}: {}",
            i + 1,
            r.machine.describe(r.cpu + srv)
        ));
    }
    if let Some(bps) = openssl {
        out.push(format!(
            "openssl aes-128-cbc encrypt alone needs {:.2} s/GB of one core; the client encrypts serially (CBC)",
            1e9 / bps
        ));
    }
    out.push("the wall time includes the RSA reconnect, the server's fsync of the whole file before 2104, and process start".into());
    out
}

// ---------------------------------------------------------------------------
// sessions/s and 1000 concurrent uploads, on one server
// ---------------------------------------------------------------------------

const SESSIONS_RATIO: f64 = 0.6;

/// Both session steps skipped for the same reason.
fn skip_sessions_and_crowd(mut s: Step, mut c: Step, why: String) -> (Step, Step) {
    s.rows.push(Row::skipped(
        "sessions/s",
        "1/s",
        Target::RatioAtLeast(SESSIONS_RATIO),
        why.clone(),
    ));
    c.rows.push(Row::skipped(
        "concurrent uploads",
        "uploads",
        Target::None,
        why,
    ));
    (s, c)
}

fn step_sessions_and_crowd(
    plan: &Plan,
    bins: &Binaries,
    base: &Path,
    keys: &[Key],
) -> (Step, Step) {
    let mut s = Step::default();
    let mut c = Step::default();
    let mut server = match Server::start(&bins.server, base) {
        Ok(x) => x,
        Err(e) => return skip_sessions_and_crowd(s, c, e),
    };
    let count = plan.crowd_clients.max(plan.par_threads);
    progress(&format!("sessions: registering {count} clients in advance"));
    let t = Instant::now();
    let clients = match sessions::register_many(server.addr, keys, "bench", count) {
        Ok(x) => x,
        Err(e) => return skip_sessions_and_crowd(s, c, e),
    };
    s.notes.push(format!(
        "registered {count} clients (1025 + 1026) in {:.1} s before timing",
        t.elapsed().as_secs_f64()
    ));
    if plan.runs("sessions") {
        if let Err(e) = sessions_inner(plan, &mut server, &clients, &mut s) {
            s.rows.push(Row::skipped(
                "sessions/s",
                "1/s",
                Target::RatioAtLeast(SESSIONS_RATIO),
                e,
            ));
        }
    }
    if plan.runs("crowd") {
        let n = plan.crowd_clients;
        progress(&format!(
            "crowd: {n} concurrent clients uploading {} each",
            size_label(plan.crowd_size as u64)
        ));
        let what = format!(
            "{n} concurrent clients x {}",
            size_label(plan.crowd_size as u64)
        );
        match crowd_inner(&mut server, &clients[..n], plan.crowd_size, &what) {
            Ok(step) => c = step,
            Err(e) => c.rows.push(Row::skipped(
                &format!("{what}: verified"),
                "uploads",
                Target::AtLeast(n as f64),
                e,
            )),
        }
    }
    (s, c)
}

fn sessions_inner(
    plan: &Plan,
    server: &mut Server,
    clients: &[Registered],
    step: &mut Step,
) -> Res<()> {
    let ref_dir = tempdir(
        server.data.parent().unwrap_or(Path::new(".")),
        "sealdrop-bench-fsync-",
    )?;
    // Reference loop, sequential and concurrent batches in turns, so drift
    // on a shared machine hits all three alike.
    let rounds = plan.session_rounds;
    let per = |n: usize| n.div_ceil(rounds);
    let limit = plan.batch_limit / rounds as u32;
    let (mut loops, mut seqs, mut pars) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_seq, mut cpu_par) = (
        (Cpu::default(), Cpu::default()),
        (Cpu::default(), Cpu::default()),
    );
    let sys0 = SysCpu::now();
    let (me_all, srv_all) = (Cpu::me(), server.cpu());
    for r in 0..rounds {
        progress(&format!(
            "sessions: round {}/{rounds}: fsync loop, sequential sessions, {} threads",
            r + 1,
            plan.par_threads
        ));
        loops.push(sessions::fsync_loop(
            ref_dir.path(),
            per(plan.fsync_count),
            plan.fsync_limit / rounds as u32,
        )?);
        let (me0, srv0) = (Cpu::me(), server.cpu());
        seqs.push(sessions::small_sessions(
            server.addr,
            clients,
            1,
            per(plan.seq_count),
            limit,
        )?);
        let (me1, srv1) = (Cpu::me(), server.cpu());
        pars.push(sessions::small_sessions(
            server.addr,
            clients,
            plan.par_threads,
            per(plan.par_count),
            limit,
        )?);
        let (me2, srv2) = (Cpu::me(), server.cpu());
        cpu_seq = (
            add(cpu_seq.0, me1.since(me0)),
            add(cpu_seq.1, srv1.since(srv0)),
        );
        cpu_par = (
            add(cpu_par.0, me2.since(me1)),
            add(cpu_par.1, srv2.since(srv1)),
        );
    }
    let sys = SysCpu::now().since(sys0);
    let ours = total(Cpu::me().since(me_all)) + total(server.cpu().since(srv_all));
    server.check_alive()?;
    let reference = sessions::Rate::sum(&loops).per_sec();
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{}..{}", num(lo), num(hi))
    };
    let loop_rates: Vec<f64> = loops.iter().map(sessions::Rate::per_sec).collect();
    step.rows.push(
        Row::info(
            "reference: write 1 KiB + fsync + rename loop",
            reference,
            "1/s",
        )
        .reference(format!("{rounds} turns, {} /s", spread(&loop_rates))),
    );
    let seq = sessions::Sessions::merge(&seqs);
    let par = sessions::Sessions::merge(&pars);
    let what = "sessions/s (1027, 1028 of 1 KiB, 1029)";
    // One client at a time is information, not the target: its session
    // is three round trips, the client's RSA decryption and at least
    // three flushes in a row (key update, contents, folders and commit),
    // so it cannot approach one fsync's time. The server's rate is what
    // it sustains for many clients, the row below.
    step.rows.push(
        Row::info(&format!("{what}, sequential"), seq.rate.per_sec(), "1/s")
            .reference(format!("fsync loop {}/s", num(reference)))
            .ratio(reference, SESSIONS_RATIO)
            .target(Target::None),
    );
    step.rows.push(
        Row::info(
            &format!("{what}, {} threads", plan.par_threads),
            par.rate.per_sec(),
            "1/s",
        )
        .reference(format!("fsync loop {}/s", num(reference)))
        .ratio(reference, SESSIONS_RATIO),
    );
    let per_ms = |cpu: Cpu, n: usize| 1000.0 * total(cpu) / n.max(1) as f64;
    for (label, b, (me, srv)) in [("sequential", &seq, cpu_seq), ("concurrent", &par, cpu_par)] {
        let m = b.mean;
        step.breakdown.push(format!(
            "{label}: {} sessions in {:.2} s; per session {:.2} ms = connect+1027/2105+RSA decrypt+send {:.2} ms, \
             wait 2103 {:.2} ms, wait 2104 (sync, rename, folder sync, commit) {:.2} ms; \
             CPU per session: server {:.2} ms, bench client {:.2} ms",
            b.rate.count,
            b.rate.elapsed.as_secs_f64(),
            m.total_ms,
            m.other_ms(),
            m.wait_2103_ms,
            m.wait_2104_ms,
            per_ms(srv, b.rate.count),
            per_ms(me, b.rate.count),
        ));
    }
    step.breakdown.push(format!(
        "reference loop: {:.2} ms per write+fsync+rename; the server also makes each session's \
         key update, folder entry and database rows durable before answering, sharing each \
         sync among the sessions of one loop pass (group commit); one client at a time \
         cannot share, so the sequential row has no target",
        1000.0 / reference
    ));
    step.breakdown.push(sys.describe(ours));
    if plan.profile {
        progress("sessions: strace -c on the server during 200 sequential sessions");
        let r = profile::strace_during(server, ref_dir.path(), || {
            sessions::small_sessions(server.addr, clients, 1, 200, plan.batch_limit).map(drop)
        });
        step.profile = match r {
            Ok(lines) => {
                std::iter::once("strace -c -f, server, 200 sequential sessions:".to_owned())
                    .chain(lines)
                    .collect()
            }
            Err(e) => vec![format!("strace failed: {e}")],
        };
    }
    Ok(())
}

fn add(a: Cpu, b: Cpu) -> Cpu {
    Cpu {
        user: a.user + b.user,
        sys: a.sys + b.sys,
        child_user: a.child_user + b.child_user,
        child_sys: a.child_sys + b.child_sys,
    }
}

fn total(c: Cpu) -> f64 {
    c.user + c.sys + c.child_user + c.child_sys
}

fn crowd_inner(server: &mut Server, clients: &[Registered], size: usize, what: &str) -> Res<Step> {
    let mut step = Step::default();
    let n = clients.len();
    let (me0, srv0, sys0) = (Cpu::me(), server.cpu(), SysCpu::now());
    let c = sessions::crowd(server.addr, clients, size)?;
    let (me, srv) = (Cpu::me().since(me0), server.cpu().since(srv0));
    let sys = SysCpu::now().since(sys0);
    server.check_alive()?;
    let wall = c.wall.as_secs_f64();
    step.rows.push(
        Row::info(&format!("{what}: verified"), c.verified as f64, "uploads")
            .reference(format!("{} failed", c.failed))
            .target(Target::AtLeast(n as f64)),
    );
    step.rows.push(
        Row::info(&format!("{what}: wall"), wall, "s").reference(format!(
            "{} MB/s aggregate",
            num((c.verified * size) as f64 / 1e6 / wall.max(1e-9))
        )),
    );
    step.rows.push(Row::info(
        &format!("{what}: p50 session latency"),
        c.p50.as_secs_f64() * 1000.0,
        "ms",
    ));
    step.rows.push(Row::info(
        &format!("{what}: p99 session latency"),
        c.p99.as_secs_f64() * 1000.0,
        "ms",
    ));
    if !c.failures.is_empty() {
        step.breakdown
            .push(format!("first failures: {}", c.failures.join(" | ")));
    }
    step.breakdown.push(format!(
        "mean session {:.0} ms: wait 2103 {:.0} ms, wait 2104 {:.0} ms; CPU: server {:.2} s, bench clients {:.2} s over {wall:.2} s",
        c.mean.total_ms,
        c.mean.wait_2103_ms,
        c.mean.wait_2104_ms,
        srv.user + srv.sys,
        me.user + me.sys
    ));
    step.breakdown.push(format!(
        "one upload completed every {:.1} ms on average; the server syncs the files, folders and \
         database rows of each loop pass together before it answers that pass's 2104s",
        1000.0 * wall / c.verified.max(1) as f64
    ));
    step.breakdown.push(sys.describe(total(srv) + total(me)));
    Ok(step)
}

// ---------------------------------------------------------------------------
// idle connections
// ---------------------------------------------------------------------------

const IDLE_KIB: f64 = 16.0;

fn step_idle(plan: &Plan, bins: &Binaries, base: &Path, nofile: u64) -> Step {
    let mut step = Step::default();
    let max = *plan.idle_counts.last().unwrap_or(&0);
    let row_name = |n: usize| format!("{n} idle connections: server RSS per connection");
    let target_of = |n: usize| {
        if n >= 10_000 {
            Target::Below(IDLE_KIB)
        } else {
            Target::None
        }
    };
    let counts: Vec<usize> = plan.idle_counts.clone();
    if nofile < max as u64 + 100 {
        step.notes.push(format!(
            "open-file limit {nofile} is too low for {max} connections"
        ));
    }
    progress(&format!(
        "idle: holding {} connections",
        counts
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", then ")
    ));
    let result = Server::start(&bins.server, base).and_then(|mut s| {
        let points = idle::hold(&mut s, &counts)?;
        Ok((points, s.status_kib("RssAnon"), s.status_kib("RssFile")))
    });
    match result {
        Ok((points, anon, file)) => {
            for p in &points {
                step.rows.push(
                    Row::info(&row_name(p.conns), p.kib_per_conn(), "KiB")
                        .reference(format!(
                            "VmRSS {} -> {} MiB",
                            num(p.rss_before as f64 / 1024.0),
                            num(p.rss_after as f64 / 1024.0)
                        ))
                        .target(target_of(p.conns)),
                );
            }
            step.breakdown.push(format!(
                "server at the end: RssAnon {} KiB, RssFile {} KiB; kernel socket buffers are not in RSS",
                anon.unwrap_or(0),
                file.unwrap_or(0)
            ));
        }
        Err(e) => {
            for &n in &counts {
                step.rows
                    .push(Row::skipped(&row_name(n), "KiB", target_of(n), e.clone()));
            }
        }
    }
    step
}

// ---------------------------------------------------------------------------
// the 4 GiB upload, over 2023c and over 2024c
// ---------------------------------------------------------------------------

const BIG_RSS_MIB: f64 = 32.0;
/// Issue 14: the 2024c upload (AES-256, packets) at no less than 0.9x the
/// 2023c one measured in the same run, under the same RSS bound.
const BIG_2024C_VS_2023C: f64 = 0.9;
/// Bytes of ciphertext per 2024c packet of the big upload: 1 MiB, the
/// largest size public 2024 clients send (PROTOCOL.md §9.1), so the
/// server reassembles 4096 packets in split mode rather than one.
const BIG_PACKET_SIZE: u32 = 1 << 20;

/// What one big upload gave.
struct BigRun {
    /// MB/s (10^6 bytes/s) of the whole session, 2104 included.
    mbps: f64,
    /// GB (10^9 bytes) the server took in per second of its own CPU time
    /// (user + system): its cost of the path, whoever is the bottleneck.
    server_gb_per_cpu_s: f64,
    /// The in-bench client's CPU time over the wall time (1.0: it never
    /// waited, so it was the limit).
    client_busy: f64,
}

/// The revisions the big upload goes over, each with how it cuts the file.
fn big_revisions() -> [(Revision, PacketOptions, String); 2] {
    let packets = PacketOptions {
        size: Some(BIG_PACKET_SIZE),
        ..PacketOptions::default()
    };
    [
        (
            Revision::R2023c,
            PacketOptions::default(),
            "2023c".to_owned(),
        ),
        (
            Revision::R2024c,
            packets,
            format!(
                "2024c, {} MiB split packets",
                u64::from(BIG_PACKET_SIZE) / MIB
            ),
        ),
    ]
}

fn step_big(plan: &Plan, bins: &Binaries, base: &Path, keys: &[Key]) -> Step {
    let mut step = Step::default();
    let label = if plan.big_size == MAX_PLAINTEXT_SIZE {
        "4 GiB - 1 KiB".to_owned()
    } else {
        size_label(plan.big_size)
    };
    let mut rates = Vec::new();
    let mut costs: Vec<(Revision, f64, f64)> = Vec::new();
    // Each upload on a server of its own: VmHWM is a process's peak, and
    // the first stored file is gone (with its server) before the second.
    for (rev, packets, how) in big_revisions() {
        let what = format!("{label} upload over {how}");
        let result = match keys.first() {
            Some(key) => big_inner(plan, bins, base, key, rev, packets, &what, &mut step),
            None => Err("no client key".to_owned()),
        };
        match result {
            Ok(run) => {
                costs.push((rev, run.server_gb_per_cpu_s, run.client_busy));
                rates.push((rev, Some(run.mbps), None));
            }
            Err(e) => {
                step.rows.push(Row::skipped(
                    &format!("{what}: server peak RSS (VmHWM)"),
                    "MiB",
                    Target::Below(BIG_RSS_MIB),
                    e.clone(),
                ));
                rates.push((rev, None, Some(e)));
            }
        }
    }
    let rate = |r: Revision| rates.iter().find(|(x, _, _)| *x == r);
    let what = format!("{label} upload over 2024c vs 2023c: throughput (in-bench client)");
    step.rows
        .push(match (rate(Revision::R2023c), rate(Revision::R2024c)) {
            (Some((_, Some(old), _)), Some((_, Some(new), _))) => Row::info(&what, *new, "MB/s")
                .reference(format!("2023c {} MB/s", num(*old)))
                .ratio(*old, BIG_2024C_VS_2023C),
            (a, b) => {
                let why = [a, b]
                    .into_iter()
                    .flatten()
                    .find_map(|(r, _, e)| e.as_ref().map(|e| format!("{r}: {e}")))
                    .unwrap_or_else(|| "no run".into());
                Row::skipped(&what, "MB/s", Target::RatioAtLeast(BIG_2024C_VS_2023C), why)
            }
        });
    // The same comparison by the server's own CPU: what the 2024 packet
    // path costs the server, apart from the load generator (whose AES-256
    // is serial CBC and on 2 cores often the limit of the row above).
    let cost = |r: Revision| costs.iter().find(|(x, _, _)| *x == r);
    if let (Some(&(_, old, old_busy)), Some(&(_, new, new_busy))) =
        (cost(Revision::R2023c), cost(Revision::R2024c))
    {
        step.rows.push(
            Row::info(
                &format!("{label} upload over 2024c vs 2023c: server GB per CPU-second"),
                new,
                "GB/s",
            )
            .reference(format!("2023c {} GB/s", num(old)))
            .ratio(old, BIG_2024C_VS_2023C),
        );
        step.notes.push(format!(
            "big: the in-bench client was busy {:.0}% (2023c) and {:.0}% (2024c) of the wall time; \
             near 100% it, not the server, set the throughput",
            old_busy * 100.0,
            new_busy * 100.0
        ));
    }
    step
}

#[allow(clippy::too_many_arguments)]
fn big_inner(
    plan: &Plan,
    bins: &Binaries,
    base: &Path,
    key: &Key,
    rev: Revision,
    packets: PacketOptions,
    what: &str,
    step: &mut Step,
) -> Res<BigRun> {
    let free = procs::free_bytes(base).unwrap_or(u64::MAX);
    if free < plan.big_size + GIB {
        return Err(format!(
            "only {} MiB free in {}",
            free / MIB,
            base.display()
        ));
    }
    let mut server = Server::start(&bins.server, base)?;
    let client = proto::register_in(server.addr, "bench-big", key, rev, packets)?;
    let hwm_before = server.status_kib("VmHWM").unwrap_or(0);
    progress(&format!("big: {what}, generated on the fly"));
    let block = random_bytes(14, MIB as usize);
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (Arc::clone(&peak), Arc::clone(&stop), server.pid());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = procs::status_kib(pid, "VmRSS") {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let (srv0, me0, sys0, t) = (server.cpu(), Cpu::me(), SysCpu::now(), Instant::now());
    let result = proto::session(
        server.addr,
        &client,
        "big.bin",
        Plain::Generated {
            len: plan.big_size,
            block: &block,
        },
        Duration::from_secs(600),
    );
    let wall = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let times = result?;
    server.check_alive()?;
    let srv = server.cpu().since(srv0);
    let me = Cpu::me().since(me0);
    let sys = SysCpu::now().since(sys0);
    let hwm = server.status_kib("VmHWM").ok_or("cannot read VmHWM")?;
    let mbps = plan.big_size as f64 / 1e6 / wall.as_secs_f64();
    let server_cpu = (srv.user + srv.sys).max(1e-3);
    let server_gb_per_cpu_s = plan.big_size as f64 / 1e9 / server_cpu;
    let client_busy = (me.user + me.sys) / wall.as_secs_f64();
    step.rows.push(
        Row::info(
            &format!("{what}: server peak RSS (VmHWM)"),
            hwm as f64 / 1024.0,
            "MiB",
        )
        .reference(format!(
            "sampled VmRSS max {} MiB; idle {} MiB",
            num(peak.load(Ordering::Relaxed) as f64 / 1024.0),
            num(hwm_before as f64 / 1024.0)
        ))
        .target(Target::Below(BIG_RSS_MIB)),
    );
    step.rows.push(
        Row::info(
            &format!("{what}: throughput (in-bench client)"),
            mbps,
            "MB/s",
        )
        .reference(format!(
            "2103 after {:.1} s, 2104 (fsync) {:.1} s later",
            (times.total - times.wait_2104).as_secs_f64(),
            times.wait_2104.as_secs_f64()
        )),
    );
    step.breakdown.push(format!(
        "{rev}: server VmHWM {hwm} KiB, RssAnon {} KiB, RssFile {} KiB; CPU {:.1} s over {:.1} s; \
         in-bench client CPU {:.1} s",
        server.status_kib("RssAnon").unwrap_or(0),
        server.status_kib("RssFile").unwrap_or(0),
        srv.user + srv.sys,
        wall.as_secs_f64(),
        me.user + me.sys
    ));
    step.breakdown
        .push(format!("{rev}: {}", sys.describe(total(srv) + total(me))));
    Ok(BigRun {
        mbps,
        server_gb_per_cpu_s,
        client_busy,
    })
}

// ---------------------------------------------------------------------------
// two servers on PostgreSQL vs one on SQLite
// ---------------------------------------------------------------------------

/// The servers of one side of the comparison, and what keeps them up.
struct Side {
    servers: Vec<Server>,
    /// The shared data directory (PostgreSQL side only).
    _data: Option<tempfile::TempDir>,
}

impl Side {
    fn addrs(&self) -> Vec<std::net::SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    fn cpu(&self) -> f64 {
        self.servers.iter().map(|s| total(s.cpu())).sum()
    }

    fn check_alive(&mut self) -> Res<()> {
        self.servers.iter_mut().try_for_each(Server::check_alive)
    }
}

/// What one side measured.
#[derive(Default)]
struct PgFigures {
    sessions: Vec<sessions::Rate>,
    server_cpu: f64,
    mbps: Option<f64>,
}

fn step_pg(plan: &Plan, bins: &Binaries, base: &Path, keys: &[Key]) -> Step {
    let mut step = Step::default();
    let what_s =
        "sessions/s (1025, 1026, 1028 of 1 KiB, 1029), 2 servers on PostgreSQL vs 1 on SQLite";
    let what_m = format!(
        "{} x {} uploads at once, 2 servers on PostgreSQL vs 1 on SQLite",
        plan.pg_large_clients,
        size_label(plan.pg_large_size)
    );
    let skip = |step: &mut Step, why: &str| {
        step.rows
            .push(Row::skipped(what_s, "1/s", Target::None, why.to_owned()));
        step.rows
            .push(Row::skipped(&what_m, "MB/s", Target::None, why.to_owned()));
    };
    if keys.is_empty() {
        skip(&mut step, "no client keys");
        return step;
    }
    progress("pg: starting a throw-away PostgreSQL cluster (fsync on)");
    let cluster =
        match sealdrop_testkit::pg::PgCluster::start_with(sealdrop_testkit::pg::PgOptions {
            fsync: true,
            ..sealdrop_testkit::pg::PgOptions::default()
        }) {
            Some(c) => c,
            None => {
                skip(
                    &mut step,
                    "PostgreSQL not found (install postgresql; initdb and pg_ctl are looked up in \
                 $SEALDROP_PG_BIN, /usr/lib/postgresql/*/bin, pg_config --bindir, PATH)",
                );
                return step;
            }
        };
    step.notes.push(format!(
        "pg: throw-away cluster of {} on 127.0.0.1:{}, fsync on, database bench",
        cluster.version(),
        cluster.port()
    ));
    match pg_inner(plan, bins, base, keys, &cluster, &mut step, what_s, &what_m) {
        Ok(()) => {}
        Err(e) => {
            step.rows.clear();
            skip(&mut step, &e);
        }
    }
    progress("pg: stopping the cluster");
    drop(cluster);
    progress("pg: done");
    step
}

#[allow(clippy::too_many_arguments)]
fn pg_inner(
    plan: &Plan,
    bins: &Binaries,
    base: &Path,
    keys: &[Key],
    cluster: &sealdrop_testkit::pg::PgCluster,
    step: &mut Step,
    what_s: &str,
    what_m: &str,
) -> Res<()> {
    let url = cluster.create_database("bench");
    let sqlite = Side {
        servers: vec![Server::start(&bins.server, base)?],
        _data: None,
    };
    let shared = tempdir(base, "sealdrop-bench-pgdata-")?;
    let pg_side = Side {
        servers: (0..2)
            .map(|i| {
                Server::start_shared(
                    &bins.server,
                    shared.path(),
                    &["--database", &url, "--server-id", &format!("bench{i}")],
                )
            })
            .collect::<Res<Vec<_>>>()?,
        _data: Some(shared),
    };
    let mut sides = [("SQLite", sqlite), ("PostgreSQL", pg_side)];
    let mut figures = [PgFigures::default(), PgFigures::default()];
    // Turns: each round runs the SQLite side, then the PostgreSQL side,
    // so drift on a shared machine hits both alike.
    for round in 0..plan.pg_rounds {
        for (k, (name, side)) in sides.iter_mut().enumerate() {
            progress(&format!(
                "pg: round {}/{}: new-client sessions on {name}, {} threads",
                round + 1,
                plan.pg_rounds,
                plan.pg_threads
            ));
            let cpu0 = side.cpu();
            let rate = pg::new_client_sessions(
                &side.addrs(),
                keys,
                &format!("r{round}"),
                plan.pg_threads,
                usize::MAX,
                plan.pg_limit,
            )?;
            figures[k].server_cpu += side.cpu() - cpu0;
            figures[k].sessions.push(rate);
            side.check_alive()?;
        }
    }
    for (k, (name, side)) in sides.iter_mut().enumerate() {
        progress(&format!(
            "pg: {} uploads of {} at once on {name}",
            plan.pg_large_clients,
            size_label(plan.pg_large_size)
        ));
        let addrs = side.addrs();
        let clients = (0..plan.pg_large_clients)
            .map(|i| {
                proto::register(
                    addrs[i % addrs.len()],
                    &format!("large-{i}"),
                    &keys[i % keys.len()],
                )
            })
            .collect::<Res<Vec<_>>>()?;
        figures[k].mbps = Some(pg::large_uploads(&addrs, &clients, plan.pg_large_size)?);
        side.check_alive()?;
    }
    let rate = |f: &PgFigures| sessions::Rate::sum(&f.sessions);
    let (sq, pgr) = (rate(&figures[0]), rate(&figures[1]));
    let mut row = Row::info(what_s, pgr.per_sec(), "1/s")
        .reference(format!("1 server on SQLite {}/s", num(sq.per_sec())));
    row.ratio = (sq.per_sec() > 0.0).then(|| pgr.per_sec() / sq.per_sec());
    step.rows.push(row);
    if let (Some(sq_m), Some(pg_m)) = (figures[0].mbps, figures[1].mbps) {
        let mut row = Row::info(what_m, pg_m, "MB/s")
            .reference(format!("1 server on SQLite {} MB/s", num(sq_m)));
        row.ratio = (sq_m > 0.0).then(|| pg_m / sq_m);
        step.rows.push(row);
    }
    for (k, (name, _)) in sides.iter().enumerate() {
        let r = rate(&figures[k]);
        step.breakdown.push(format!(
            "{name}: {} new-client sessions in {:.1} s over {} turns; sealdrop-server CPU \
             {:.2} ms per session (PostgreSQL's own processes not counted)",
            r.count,
            r.elapsed.as_secs_f64(),
            plan.pg_rounds,
            1000.0 * figures[k].server_cpu / r.count.max(1) as f64
        ));
    }
    progress("pg: stopping the servers, removing their data");
    drop(sides);
    step.notes.push(format!(
        "pg: {} threads of new clients, each session 1025, 1026, 1028 of 1 KiB, 1029, client N \
         on server N mod 2; {} s per side per turn",
        plan.pg_threads,
        plan.pg_limit.as_secs()
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn cores() -> f64 {
    thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn tempdir(base: &Path, prefix: &str) -> Res<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .map_err(|e| {
            format!(
                "cannot create a temporary directory in {}: {e}",
                base.display()
            )
        })
}

/// One line about the machine: CPUs, memory, kernel, the temp dir's disk.
fn machine(base: &Path) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let mem = procs::status_kib_file("/proc/meminfo", "MemTotal").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let device = std::process::Command::new("df")
        .arg("-P")
        .arg(base)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_default();
    format!(
        "{cpus} x {model}, {:.1} GiB RAM, Linux {}; temp dir {} on {device}; load average {} at start",
        mem as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        PathBuf::from(base).display(),
        procs::load_average()
    )
}

/// The current UTC time, as the server writes LastSeen
/// (`YYYY-MM-DDTHH:MM:SSZ`).
fn utc_now() -> String {
    sealdrop_server::db::utc_timestamp(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![1.0, 4.0]), Some(4.0));
    }
}
