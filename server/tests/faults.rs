//! Faults of the environment around the server: a full disk, a database
//! another process holds locked, and a confirmed file that cannot be
//! placed, on an in-process server; a read-only data directory at start
//! (exit status and message) and `kill -9` at random points of many
//! uploads on the real `sealdrop-server` binary.
//!
//! The disk and read-only cases mount a tmpfs as the data directory (the
//! tests run as root; chmod would not stop root). Where mounting is not
//! permitted they print `skipped: cannot mount tmpfs here: ...` and pass.
//! Every mount is undone by a drop guard, after the server is stopped.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use sealdrop_protocol::cksum::cksum;
use sealdrop_protocol::server::CloseReason;
use sealdrop_protocol::{Request, Response, ServerEvent};

/// Prints the skip line and returns false if no tmpfs can be mounted.
fn can_mount() -> bool {
    match tmpfs_mount_works() {
        Ok(()) => true,
        Err(e) => {
            println!("skipped: cannot mount tmpfs here: {e}");
            false
        }
    }
}

/// Free bytes of the filesystem holding `dir` (`df`).
fn free_bytes(dir: &Path) -> u64 {
    let ran = run_bounded(
        Command::new("df").arg("-B1").arg("--output=avail").arg(dir),
        Duration::from_secs(10),
    );
    assert!(ran.status.success(), "df: {}", ran.stderr);
    ran.stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap_or_else(|| panic!("df output: {}", ran.stdout))
}

/// Expects 2107 on a connection that stays open (a 1027 of an unknown id
/// is still answered with 2106 afterwards).
fn expect_2107_stays_open(c: &mut Conn, within: Duration) {
    match c.try_recv(within) {
        Ok(Response::GeneralError) => {}
        other => panic!("expected 2107, got {other:?}"),
    }
    let nobody = sealdrop_protocol::ClientId([0x5a; 16]);
    c.request(
        &nobody,
        &Request::Reconnect {
            name: fixed("nobody"),
        },
    );
    match c.try_recv(Duration::from_secs(10)) {
        Ok(Response::ReconnectDenied { client_id }) => assert_eq!(client_id, nobody),
        other => panic!("connection not usable after 2107: {other:?}"),
    }
}

/// Expects 2107 followed by the server closing the connection: what a
/// verdict gets when the storage sync of its pass fails (the held 2104 is
/// replaced, and the session, whose view of what it answered is now
/// wrong, closes).
fn expect_2107_then_closed(c: &mut Conn, within: Duration) {
    match c.try_recv(within) {
        Ok(Response::GeneralError) => {}
        other => panic!("expected 2107, got {other:?}"),
    }
    let after = c.expect_closed(Duration::from_secs(10));
    assert!(after.is_empty(), "{} bytes after the 2107", after.len());
}

// ---------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------

#[test]
fn disk_full_mid_upload_gets_2107_and_damages_nothing() {
    if !can_mount() {
        return;
    }
    let _g = heavy();
    let mut m = MountedInProcess::start(|_| {}, "size=2m").unwrap();
    let s = &mut m.server;
    let (client, mut c) = Client::setup(s.addr(), &unique_name("full"));
    let v1 = random_bytes(1, 100_000);
    client.upload_verified(&mut c, "doc", &v1);
    let free = free_bytes(s.data_dir());
    assert!(free < 2 << 20, "tmpfs is mounted: {free} bytes free");

    // Bigger than the free space: a new version of "doc", then a new name.
    for (seed, name) in [(2u64, "doc"), (3, "big.bin")] {
        let big = random_bytes(seed, free as usize + (1 << 20));
        let t = Instant::now();
        // The whole frame goes out: the server drains the content.
        client.send_file(&mut c, name, &big);
        expect_2107_stays_open(&mut c, Duration::from_secs(30));
        eprintln!("{name}: 2107 after {:?}", t.elapsed());
        assert!(s.part_files().is_empty(), "{:?}", s.part_files());
        assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
        assert!(!s.final_path(&client.id, "big.bin").exists());
        s.assert_db_consistent();
        assert_eq!(s.file_row(&client.id, "doc").unwrap().verified, 1);
        assert!(s.file_row(&client.id, "big.bin").is_none());
    }
    assert!(
        s.wait_session(Duration::from_secs(5), |e| matches!(
            e,
            ServerEvent::Refused { reason, .. }
                if reason.to_string().contains("No space left on device")
        )),
        "the 2107s were for a full disk:\n{}",
        s.recent()
    );
    // The space came back: the same connection and a new client both work.
    let after = random_bytes(4, 200_000);
    client.upload_verified(&mut c, "after.bin", &after);
    assert_eq!(
        fs::read(s.final_path(&client.id, "after.bin")).unwrap(),
        after
    );
    s.good_client(50_000);
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    s.assert_db_consistent();
    s.assert_alive();
}

#[test]
fn disk_full_at_the_verdict_keeps_the_upload_for_a_retried_1029() {
    if !can_mount() {
        return;
    }
    let _g = heavy();
    let mut m = MountedInProcess::start(|_| {}, "size=3m").unwrap();
    let s = &mut m.server;
    let (client, mut c) = Client::setup(s.addr(), &unique_name("fullv"));
    let v1 = random_bytes(5, 50_000);
    client.upload_verified(&mut c, "doc", &v1);
    // A new name: accepting it frees nothing (a replacement would free
    // the old version's space when renamed over it).
    let fresh = random_bytes(6, 1 << 20);
    client.send_file(&mut c, "fresh.bin", &fresh);
    let r = c.recv();
    client.check_received(&r, "fresh.bin", fresh.len() as u64, cksum(&fresh));
    // Someone else fills the disk to the last byte before the verdict.
    let filler = fill_disk(s.data_dir());
    assert_eq!(free_bytes(s.data_dir()), 0);
    // The database cannot grow: 2107, and the upload stays pending
    // (still temporary, or already renamed but not yet marked verified).
    client.send_verdict(&mut c, 1029, "fresh.bin");
    expect_2107_then_closed(&mut c, Duration::from_secs(20));
    let at_final = fs::read(s.final_path(&client.id, "fresh.bin")).ok();
    let parts = s.part_files();
    match &at_final {
        None => {
            assert_eq!(parts.len(), 1, "{parts:?}");
            assert!(fs::read(&parts[0]).unwrap() == fresh);
            eprintln!("1029 on a full disk: 2107, the upload is still temporary");
        }
        Some(bytes) => {
            assert!(*bytes == fresh, "partial bytes at the final path");
            assert!(parts.is_empty(), "{parts:?}");
            eprintln!("1029 on a full disk: 2107, renamed but not marked verified");
        }
    }
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    // The storage sync of the 1029's pass failed (the disk is full).
    assert!(
        s.wait_close(CloseReason::NotDurable, Duration::from_secs(5)),
        "{}",
        s.recent()
    );
    // Space again: the 1029 retried on a new connection completes the
    // verdict.
    fs::remove_file(&filler).unwrap();
    let mut c = s.connect();
    client.verify(&mut c, "fresh.bin");
    assert!(fs::read(s.final_path(&client.id, "fresh.bin")).unwrap() == fresh);
    assert_eq!(s.file_row(&client.id, "fresh.bin").unwrap().verified, 1);
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    s.assert_db_consistent();
    s.good_client(20_000);
    s.assert_alive();
}

/// Waits until the wall clock has just passed a whole second, so that
/// the next few milliseconds fall in one second of LastSeen (the server
/// skips a LastSeen write within the same second).
fn at_the_start_of_a_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = Duration::from_nanos(u64::from(now.subsec_nanos()));
    thread::sleep(Duration::from_secs(1) - into + Duration::from_millis(20));
}

/// Fills the filesystem holding `dir` to its last byte with `dir/filler`.
fn fill_disk(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&chunk[..1]).is_ok() {}
    filler
}

/// KNOWN SERVER BUG (fails until fixed). `DiskStore::accept` renames the
/// upload into place, then marks the row verified. If that database
/// update fails (here: a full disk; equally a kill -9 during its commit,
/// which the kill -9 rounds above hit often), the file sits at its final
/// path with the row's Verified = 0, and when the client gives up (its
/// retried 1029s fail, it disconnects, the orphan expires: `drop_pending`
/// leaves a placed upload where it is) nothing ever repairs it, not even
/// a restart. That breaks store.rs's own rule "a Verified = 0 row never
/// claims a file" and PROTOCOL.md §6 "after 1029 ... its record says
/// Verified". Only `accept` ever renames into a final path, so the fix is
/// to treat such a file as confirmed: retry `mark_verified` in
/// `drop_pending` for a placed upload, and at `DiskStore::open` set
/// Verified = 1 on every Verified = 0 row whose final path exists.
#[test]
fn confirmed_file_whose_database_update_failed_is_left_with_verified_0() {
    if !can_mount() {
        return;
    }
    let _g = heavy();
    let mut m = MountedInProcess::start(|s| s.store.orphan_ttl = Duration::from_secs(1), "size=3m")
        .unwrap();
    let (mut client, mut c) = Client::setup(m.server.addr(), &unique_name("unmarked"));
    let fresh = random_bytes(8, 1 << 20);
    let mut name = None;
    // The 1029 must fail at the verdict's own write, not at LastSeen:
    // send the 1028 and the 1029 within one second.
    for attempt in 0..3 {
        let n = format!("fresh{attempt}.bin");
        at_the_start_of_a_second();
        client.send_file(&mut c, &n, &fresh);
        let r = c.recv();
        client.check_received(&r, &n, fresh.len() as u64, cksum(&fresh));
        let filler = fill_disk(m.server.data_dir());
        client.send_verdict(&mut c, 1029, &n);
        expect_2107_then_closed(&mut c, Duration::from_secs(20));
        fs::remove_file(&filler).unwrap();
        c = m.server.connect();
        if m.server.final_path(&client.id, &n).exists() {
            name = Some(n);
            break;
        }
        // LastSeen was due after all: discard and try again.
        client.send_verdict(&mut c, 1031, &n);
        c.expect(2104);
    }
    let name = name.expect("a 1029 failed after its rename in one of 3 tries");
    assert_eq!(m.server.file_row(&client.id, &name).unwrap().verified, 0);
    // The client gives up: it disconnects; the orphan expires (1 s).
    drop(c);
    thread::sleep(Duration::from_millis(2500));
    m.server.restart();
    let s = &m.server;
    let path = s.final_path(&client.id, &name);
    let row = s.file_row(&client.id, &name);
    let mut c = s.connect();
    assert!(matches!(
        client.reconnect(&mut c),
        Response::ReconnectAccepted { .. }
    ));
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    assert!(
        !path.exists() || row.as_ref().is_some_and(|r| r.verified == 1),
        "{name} is at its final path ({} bytes) but its row says {row:?}: \
         a file nobody will ever see as verified",
        fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
    );
}

// ---------------------------------------------------------------------------
// Read-only data directory
// ---------------------------------------------------------------------------

/// The server (already spawned) must exit 1 within a few seconds, and its
/// log must name the data directory and the read-only filesystem. (A
/// process of its own: its exit status and its log are the check.)
fn assert_refuses_read_only(s: &mut Server) {
    let t = Instant::now();
    let st = s.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "server still runs on a read-only data dir:\n{}",
            s.log_tail(20)
        )
    });
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(st.code(), Some(1), "exit status {st}");
    assert!(s.wait_log_closed(Duration::from_secs(5)));
    let log = s.log_lines().join("\n");
    let dir = s.data_dir().display().to_string();
    assert!(
        log.contains(&format!("cannot use data directory {dir}"))
            && log.contains("Read-only file system"),
        "unclear start-up error:\n{log}"
    );
    assert!(!log.contains("listening on"), "{log}");

    let ran = check_config(s.data_dir());
    assert_eq!(ran.status.code(), Some(1), "--check-config: {}", ran.stderr);
    assert!(
        ran.stderr.contains(&dir) && ran.stderr.contains("not writable"),
        "--check-config message: {}",
        ran.stderr
    );
    assert!(!ran.stdout.contains("configuration ok"), "{}", ran.stdout);
}

#[test]
fn read_only_data_directory_is_refused_at_start_with_a_clear_message() {
    if !can_mount() {
        return;
    }
    // An empty read-only filesystem.
    let mut m =
        MountedServer::spawn(ServerOpts::default(), "size=1m", |mnt| mnt.remount("ro")).unwrap();
    assert_refuses_read_only(&mut m.server);
    assert!(walk(m.server.data_dir()).is_empty(), "wrote to a ro fs?");
    drop(m);

    // The data directory of an earlier run, remounted read-only.
    let mut m = MountedServer::start(ServerOpts::default(), "size=4m").unwrap();
    let (mut client, mut c) = Client::setup(m.server.addr(), &unique_name("ro"));
    let v1 = random_bytes(7, 30_000);
    client.upload_verified(&mut c, "doc", &v1);
    drop(c);
    m.server.stop();
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = walk(m.server.data_dir())
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    m.mount.remount("ro");
    m.server.spawn_again();
    assert_refuses_read_only(&mut m.server);
    let after: Vec<(std::path::PathBuf, Vec<u8>)> = walk(m.server.data_dir())
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    assert!(
        before == after,
        "the refused start changed the data directory"
    );
    // Writable again: the server starts and the client is still known.
    m.mount.remount("rw");
    m.server.start_again();
    let mut c = m.server.connect();
    match client.reconnect(&mut c) {
        Response::ReconnectAccepted { .. } => {}
        other => panic!("reconnect after the read-only episode: {other:?}"),
    }
    assert_eq!(
        fs::read(m.server.final_path(&client.id, "doc")).unwrap(),
        v1
    );
}

// ---------------------------------------------------------------------------
// kill -9 at random points of 20 uploads
// ---------------------------------------------------------------------------

/// splitmix64: tiny, seedable, good enough to pick sizes and delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The seed: `SEALDROP_FAULT_SEED` if set, else drawn from the clock.
fn fault_seed() -> u64 {
    match std::env::var("SEALDROP_FAULT_SEED") {
        Ok(v) => v.trim().parse().expect("SEALDROP_FAULT_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// 1029, expecting 2104.
    Accept,
    /// 1031, expecting 2104 (nothing stored).
    GiveUp,
    /// No verdict: the connection is dropped after 2103.
    Abandon,
}

/// How far a round's upload got before the kill (times since the
/// worker started).
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    frame_sent: Option<Duration>,
    got_2103: Option<Duration>,
    verdict_sent: Option<Duration>,
    got_2104: Option<Duration>,
}

impl Progress {
    fn stage(&self, verdict: Verdict) -> &'static str {
        let p = (
            self.frame_sent.is_some(),
            self.got_2103.is_some(),
            self.verdict_sent.is_some(),
            self.got_2104.is_some(),
        );
        match (p, verdict) {
            ((false, ..), _) => "while the 1028 was being sent",
            ((true, false, ..), _) => "1028 sent, before its 2103",
            ((_, true, false, _), _) => "after the 2103, before a verdict",
            ((_, true, true, false), Verdict::Accept) => "1029 in flight",
            ((_, true, true, false), _) => "1031 in flight",
            ((_, true, true, true), Verdict::Accept) => "after the 2104 of a 1029",
            ((_, true, true, true), _) => "after the 2104 of a 1031",
        }
    }

    /// Whether the server may have acted on a 1029.
    fn accept_sent(&self, verdict: Verdict) -> bool {
        verdict == Verdict::Accept && self.verdict_sent.is_some()
    }

    /// Whether the client holds the 2104 of a 1029.
    fn accept_acked(&self, verdict: Verdict) -> bool {
        verdict == Verdict::Accept && self.got_2104.is_some()
    }
}

/// One upload as the client thread runs it (`frame` is the 1028, built
/// beforehand so the clock starts with the first byte); every step is
/// recorded in `progress`. Returns quietly when the server dies under it.
fn upload_round(
    mut c: Conn,
    me: Client,
    name: &str,
    data: &[u8],
    frame: &[u8],
    verdict: Verdict,
    progress: &Mutex<Progress>,
) {
    let t0 = Instant::now();
    if c.try_send(frame).is_err() {
        return;
    }
    progress.lock().unwrap().frame_sent = Some(t0.elapsed());
    match c.try_recv(Duration::from_secs(20)) {
        Ok(r) => me.check_received(&r, name, data.len() as u64, cksum(data)),
        Err(_) => return,
    }
    progress.lock().unwrap().got_2103 = Some(t0.elapsed());
    let file_name = fixed(name);
    let req = match verdict {
        Verdict::Accept => Request::CrcOk { file_name },
        Verdict::GiveUp => Request::CrcGiveUp { file_name },
        Verdict::Abandon => return,
    };
    // Recorded before the bytes leave: the server may act on them.
    progress.lock().unwrap().verdict_sent = Some(t0.elapsed());
    if c.try_send(&request_frame(&me.id, &req)).is_err() {
        return;
    }
    match c.try_recv(Duration::from_secs(20)) {
        Ok(Response::Ack { client_id }) => {
            assert_eq!(client_id, me.id);
            progress.lock().unwrap().got_2104 = Some(t0.elapsed());
        }
        Ok(other) => panic!("verdict {verdict:?} for {name}: {other:?}"),
        Err(_) => {}
    }
}

/// A process of its own: `kill -9`.
#[test]
fn kill9_at_random_points_of_20_uploads_then_restart() {
    const NAMES: [&str; 3] = ["alpha.bin", "beta.doc", "gamma"];
    let seed = fault_seed();
    println!("kill -9 rounds: seed {seed} (SEALDROP_FAULT_SEED={seed} replays the choices)");
    eprintln!("kill -9 rounds: seed {seed}");
    let mut rng = Rng(seed);
    let _g = heavy();
    let mut s = Server::start(&[]);
    let (mut client, mut c) = Client::setup(s.addr(), &unique_name("k9"));
    // How long a whole upload takes here, to aim the kills: 4 MB, verified.
    let calib = random_bytes(seed, 4 << 20);
    let calib_frame = client.file_frame("calibration", &calib);
    let t = Instant::now();
    c.send(&calib_frame);
    let r = c.recv();
    client.check_received(&r, "calibration", calib.len() as u64, cksum(&calib));
    client.verify(&mut c, "calibration");
    let per_mib = t.elapsed() / 4;
    println!("a verified upload takes {per_mib:?} per MiB");
    let mut conn = Some(c);
    // What each name's final path holds for sure (None: nothing).
    let mut confirmed: HashMap<&str, Option<Vec<u8>>> = NAMES.iter().map(|n| (*n, None)).collect();
    let mut stages: HashMap<&'static str, u32> = HashMap::new();
    let mut window_hits = 0;
    // Names whose final file has a Verified = 0 row (see below).
    let mut unmarked: std::collections::HashSet<&str> = Default::default();
    let t_all = Instant::now();
    for round in 0..20u64 {
        let name = NAMES[(round % 3) as usize];
        let len = rng.range(100_000, 4_000_000) as usize;
        let data = random_bytes(rng.next(), len);
        let verdict = match rng.next() % 4 {
            0 | 1 => Verdict::Accept,
            2 => Verdict::GiveUp,
            _ => Verdict::Abandon,
        };
        // Anywhere from before the first byte to well after the expected
        // end of the whole exchange (the calibration runs warm, so the
        // rounds take longer than it predicts).
        let expected = per_mib.mul_f64(len as f64 / f64::from(1 << 20));
        let delay = expected.mul_f64(rng.range(0, 2500) as f64 / 1000.0);
        let frame = client.file_frame(name, &data);

        let progress = Arc::new(Mutex::new(Progress::default()));
        let worker = {
            let progress = Arc::clone(&progress);
            let c = conn.take().unwrap();
            let mut me = Client::new(&client.name);
            me.id = client.id;
            me.aes = Some(client.key().clone());
            let data = data.clone();
            thread::spawn(move || upload_round(c, me, name, &data, &frame, verdict, &progress))
        };
        thread::sleep(delay);
        s.kill9();
        join_all(vec![worker], Duration::from_secs(30));
        let p = *progress.lock().unwrap();
        let stage = p.stage(verdict);
        *stages.entry(stage).or_default() += 1;
        println!(
            "round {round}: {name} {len} bytes {verdict:?}, killed after {delay:?}: {stage} ({p:?})"
        );

        // Allowed contents of this round's name: the confirmed version;
        // with a 1029 in flight also the new one; after its 2104 only that.
        let old = confirmed[name].clone();
        let allowed: Vec<Option<Vec<u8>>> = if p.accept_acked(verdict) {
            vec![Some(data.clone())]
        } else if p.accept_sent(verdict) {
            vec![old.clone(), Some(data.clone())]
        } else {
            vec![old.clone()]
        };
        let check_final = |s: &Server, when: &str| {
            for n in NAMES {
                let got = fs::read(s.final_path(&client.id, n)).ok();
                let ok = if n == name {
                    allowed.contains(&got)
                } else {
                    got == confirmed[n]
                };
                assert!(
                    ok,
                    "round {round} (seed {seed}), {when}: {n} holds {:?} bytes, not a confirmed version",
                    got.map(|g| g.len())
                );
            }
        };
        check_final(&s, "right after the kill");

        s.start_again();
        assert!(
            s.part_files().is_empty(),
            "round {round} (seed {seed}): left after restart: {:?}",
            s.part_files()
        );
        check_final(&s, "after the restart");
        let rows = s.assert_db_consistent();
        for n in NAMES {
            let got = fs::read(s.final_path(&client.id, n)).ok();
            let row = rows
                .iter()
                .find(|r| r.id == client.id.0 && r.file_name == n);
            match (&got, row) {
                (None, None) => {}
                (None, Some(r)) => assert_eq!(r.verified, 0, "round {round}: {n}: {r:?}"),
                (Some(_), None) => panic!("round {round} (seed {seed}): {n} stored without a row"),
                (Some(bytes), Some(r)) if r.verified == 0 => {
                    // A kill between the rename and the database update
                    // of a name with no Verified = 1 row yet leaves this,
                    // and nothing repairs it at start-up (see
                    // `confirmed_file_whose_database_update_failed_is_left_with_verified_0`).
                    // Tolerated here (the bytes are the confirmed ones),
                    // counted and printed.
                    let new_now = n == name
                        && p.accept_sent(verdict)
                        && *bytes == data
                        && (old.is_none() || unmarked.contains(n));
                    let from_before = unmarked.contains(n) && confirmed[n].as_ref() == Some(bytes);
                    assert!(
                        new_now || from_before,
                        "round {round} (seed {seed}): {n} at its final path with Verified = 0"
                    );
                    if new_now {
                        window_hits += 1;
                        println!(
                            "round {round}: {n} renamed into place but left Verified = 0 by the kill"
                        );
                    }
                    unmarked.insert(n);
                }
                (Some(_), Some(_)) => {
                    unmarked.remove(n);
                }
            }
            confirmed.insert(n, got);
        }

        let mut c = s.connect();
        match client.reconnect(&mut c) {
            Response::ReconnectAccepted { client_id, .. } => assert_eq!(client_id, client.id),
            other => panic!("round {round} (seed {seed}): reconnect after the restart: {other:?}"),
        }
        conn = Some(c);
    }
    println!(
        "20 rounds in {:?}; kill points: {stages:?}; killed between rename and database update \
         {window_hits} time(s), names left with Verified = 0 at the end: {unmarked:?}",
        t_all.elapsed()
    );
    assert_eq!(
        fs::read(s.final_path(&client.id, "calibration")).unwrap(),
        calib,
        "the first verified file survived twenty crashes"
    );
    // A last upload on the final run.
    let mut c = conn.take().unwrap();
    client.upload_verified(&mut c, "last.bin", b"after twenty crashes");
    s.assert_alive();
}

// ---------------------------------------------------------------------------
// Database locked by another process
// ---------------------------------------------------------------------------

/// Holds `BEGIN EXCLUSIVE` on the server's database from another thread
/// (another connection, as another process would) for `hold`. `locked`
/// fires once the lock is held; the returned flag turns true on release.
fn hold_exclusive_lock(
    data_dir: &Path,
    hold: Duration,
) -> (mpsc::Receiver<()>, Arc<AtomicBool>, thread::JoinHandle<()>) {
    let path = data_dir.join("defensive.db");
    let released = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let flag = Arc::clone(&released);
    let h = thread::spawn(move || {
        let lock = rusqlite::Connection::open(path).unwrap();
        lock.busy_timeout(Duration::from_secs(5)).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
        tx.send(()).unwrap();
        thread::sleep(hold);
        flag.store(true, Ordering::SeqCst);
        lock.execute_batch("ROLLBACK").unwrap();
    });
    (rx, released, h)
}

#[test]
fn database_locked_across_the_1029_of_a_big_upload_keeps_it_for_a_retry() {
    let _g = heavy();
    let mut s = InProcess::start();
    let (client, mut c) = Client::setup(s.addr(), &unique_name("lock1029"));
    let v1 = random_bytes(20, 20_000);
    client.upload_verified(&mut c, "doc", &v1);
    let v2 = random_bytes(21, 8 << 20);
    client.send_file(&mut c, "doc", &v2);
    let r = c.recv();
    client.check_received(&r, "doc", v2.len() as u64, cksum(&v2));
    let parts = s.part_files();
    assert_eq!(parts.len(), 1, "{parts:?}");

    let (locked, released, h) = hold_exclusive_lock(s.data_dir(), Duration::from_secs(3));
    locked.recv_timeout(Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    client.send_verdict(&mut c, 1029, "doc");
    match c.try_recv(Duration::from_secs(10)) {
        Ok(Response::GeneralError) => {}
        other => panic!("1029 under a held lock: {other:?}"),
    }
    let waited = t.elapsed();
    eprintln!("1029 under the lock: 2107 after {waited:?}");
    assert!(
        !released.load(Ordering::SeqCst),
        "the 2107 came only after the lock was released ({waited:?}): the busy timeout did not apply"
    );
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    // The complete upload survives, byte for byte, and the old version
    // is still the one at the final path.
    assert_eq!(s.part_files(), parts, "the temporary file survives");
    assert!(fs::read(&parts[0]).unwrap() == v2, "temporary file content");
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    join_all(vec![h], Duration::from_secs(10));
    assert_eq!(s.file_row(&client.id, "doc").unwrap().verified, 1);

    // Released: the retried 1029 on the same connection stores v2.
    client.verify(&mut c, "doc");
    assert!(fs::read(s.final_path(&client.id, "doc")).unwrap() == v2);
    assert_eq!(s.file_row(&client.id, "doc").unwrap().verified, 1);
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());

    // A lock shorter than the busy timeout is ridden out: 2104, no 2107.
    let v3 = random_bytes(22, 1 << 20);
    client.send_file(&mut c, "doc", &v3);
    let r = c.recv();
    client.check_received(&r, "doc", v3.len() as u64, cksum(&v3));
    let (locked, released, h) = hold_exclusive_lock(s.data_dir(), Duration::from_millis(800));
    locked.recv_timeout(Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    client.send_verdict(&mut c, 1029, "doc");
    match c.try_recv(Duration::from_secs(10)) {
        Ok(Response::Ack { client_id }) => assert_eq!(client_id, client.id),
        other => panic!("1029 under a short lock: {other:?}"),
    }
    assert!(
        released.load(Ordering::SeqCst),
        "answered while still locked?"
    );
    eprintln!("1029 under a 0.8 s lock: 2104 after {:?}", t.elapsed());
    join_all(vec![h], Duration::from_secs(10));
    assert!(fs::read(s.final_path(&client.id, "doc")).unwrap() == v3);
    s.assert_db_consistent();
    s.good_client(5000);
    s.assert_alive();
}

#[test]
fn database_locked_when_a_big_upload_ends_gets_2107_and_a_resend_succeeds() {
    let _g = heavy();
    let mut s = InProcess::start();
    let (client, mut c) = Client::setup(s.addr(), &unique_name("lockend"));
    let v1 = random_bytes(30, 20_000);
    client.upload_verified(&mut c, "doc", &v1);
    let v2 = random_bytes(31, 8 << 20);
    let frame = client.file_frame("doc", &v2);
    let tail = 1 << 20;
    c.send(&frame[..frame.len() - tail]);
    assert!(
        wait_until(Duration::from_secs(30), || s.part_files().iter().any(|p| {
            fs::metadata(p)
                .map(|m| m.len() >= (6 << 20))
                .unwrap_or(false)
        })),
        "the upload is being written: {:?}",
        s.part_files()
    );
    let (locked, released, h) = hold_exclusive_lock(s.data_dir(), Duration::from_secs(3));
    locked.recv_timeout(Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    // The content ends while the database is locked: the upload cannot be
    // recorded, so it is refused after its last byte.
    c.send(&frame[frame.len() - tail..]);
    expect_2107_stays_open(&mut c, Duration::from_secs(10));
    let waited = t.elapsed();
    eprintln!("end of upload under the lock: 2107 after {waited:?}");
    assert!(
        !released.load(Ordering::SeqCst),
        "2107 only after the release ({waited:?})"
    );
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    assert_eq!(fs::read(s.final_path(&client.id, "doc")).unwrap(), v1);
    join_all(vec![h], Duration::from_secs(10));
    assert_eq!(s.file_row(&client.id, "doc").unwrap().verified, 1);
    // Released: the resent 1028 and its 1029 store v2.
    c.send(&frame);
    let r = c.recv();
    client.check_received(&r, "doc", v2.len() as u64, cksum(&v2));
    client.verify(&mut c, "doc");
    assert!(fs::read(s.final_path(&client.id, "doc")).unwrap() == v2);
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    s.assert_db_consistent();
    s.good_client(5000);
    s.assert_alive();
}

// ---------------------------------------------------------------------------
// A confirmed file that cannot be placed (group commit fails one actor)
// ---------------------------------------------------------------------------

/// The server syncs a whole loop pass at once and holds that pass's
/// answers until then. When one confirmed file cannot be placed (here a
/// folder sits at its final path), only that client's held 2104 becomes a
/// 2107 (and its connection closes); a client confirming in the same
/// moment gets its 2104, and the retried 1029 succeeds once the way is
/// clear.
#[test]
fn a_confirmed_file_that_cannot_be_placed_gets_2107_and_a_retry_succeeds() {
    let _g = heavy();
    let mut s = InProcess::start();
    let (alice, mut a) = Client::setup(s.addr(), &unique_name("blocked"));
    let (bob, mut b) = Client::setup(s.addr(), &unique_name("beside"));
    let data_a = random_bytes(40, 30_000);
    let data_b = random_bytes(41, 30_000);
    for (client, conn, data) in [(&alice, &mut a, &data_a), (&bob, &mut b, &data_b)] {
        client.send_file(conn, "report.pdf", data);
        let r = conn.recv();
        client.check_received(&r, "report.pdf", data.len() as u64, cksum(data));
    }
    let in_the_way = s.final_path(&alice.id, "report.pdf");
    fs::create_dir(&in_the_way).unwrap();
    fs::write(in_the_way.join("keep"), b"k").unwrap();
    alice.send_verdict(&mut a, 1029, "report.pdf");
    bob.send_verdict(&mut b, 1029, "report.pdf");
    expect_2107_then_closed(&mut a, Duration::from_secs(20));
    b.expect(2104);
    assert!(fs::read(s.final_path(&bob.id, "report.pdf")).unwrap() == data_b);
    assert_eq!(s.file_row(&bob.id, "report.pdf").unwrap().verified, 1);
    assert_eq!(s.file_row(&alice.id, "report.pdf").unwrap().verified, 0);
    assert!(in_the_way.join("keep").exists());
    // Alice's held answers were withheld: not durable, 2107 and close.
    assert!(
        s.wait_close(CloseReason::NotDurable, Duration::from_secs(5)),
        "{}",
        s.recent()
    );
    fs::remove_dir_all(&in_the_way).unwrap();
    let mut a = s.connect();
    alice.verify(&mut a, "report.pdf");
    assert!(fs::read(&in_the_way).unwrap() == data_a);
    assert_eq!(s.file_row(&alice.id, "report.pdf").unwrap().verified, 1);
    assert!(s.part_files().is_empty(), "{:?}", s.part_files());
    s.assert_db_consistent();
    s.good_client(5000);
    s.assert_alive();
}
