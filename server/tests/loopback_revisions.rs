//! The real `sealdrop-client` against the real `sealdrop-server` over
//! loopback, in every revision of PROTOCOL.md §9. One server process with
//! three listeners, set up as an operator serving every revision's default
//! port would (README: `--listen 0.0.0.0:1234 --listen 0.0.0.0:1357
//! --listen 0.0.0.0:1256=2024a`), each on an ephemeral port here:
//!
//! * every revision's whole flow (register with a generated key, upload,
//!   verify), then a second run of the same client (reconnect, or in 2022c
//!   its key again) with another file;
//! * clients of all five revisions at the same time on the three ports;
//! * one client's saved identity used over several revisions;
//! * 2024c packet variants (`--packet-size`, `--packet-mode each`,
//!   `--packet-base 0`, `--packet-fields packet`).
//!
//! * 2 GiB over 2023c and over 2024c packets, each server's peak RSS
//!   under the bench's bound for big uploads.
//!
//! Every stored file but the 2 GiB ones is compared with its source byte
//! for byte (those are checked by their cksum, which the client's 2104
//! confirms, and their length). The other files stay small (at most
//! 1 MiB); the throughput of big uploads is the bench's (`make bench`).
//!
//! The client binary is another package's, so cargo does not build it for
//! this test; [`client_bin`] runs `cargo build -p sealdrop-client` once
//! (a no-op under `cargo test --workspace`, which has built it already)
//! and takes it from beside the server binary.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use common::*;
use sealdrop_protocol::{ClientId, Revision};

/// How long one client run may take (a debug build generating an RSA key
/// and sending up to 1 MiB while other tests run).
const CLIENT_LIMIT: Duration = Duration::from_secs(120);

/// How long building the client may take.
const BUILD_LIMIT: Duration = Duration::from_secs(900);

/// The real client binary, built once per test process.
fn client_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let server = Path::new(SERVER_BIN);
        let profile_dir = server.parent().expect("server binary's folder");
        let target_dir = profile_dir.parent().expect("target folder");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "sealdrop-client", "--bin"])
            .arg("sealdrop-client")
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let ran = run_bounded(&mut cmd, BUILD_LIMIT);
        assert!(
            ran.status.success(),
            "cargo build -p sealdrop-client failed:\n{}",
            ran.stderr
        );
        let bin = profile_dir.join("sealdrop-client");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
}

/// The server's three listeners.
struct Ports {
    /// Untagged, in the role of 1357: 2023c (and 2024c, 2022c, 2023a).
    p1357: SocketAddr,
    /// Untagged, in the role of 1234: 2022c and 2023a.
    p1234: SocketAddr,
    /// Tagged `=2024a`, in the role of 1256: 2024a and 2024c.
    p1256: SocketAddr,
}

impl Ports {
    /// The port a client of `rev` is pointed at, as by its defaults.
    fn of(&self, rev: Revision) -> SocketAddr {
        match rev {
            Revision::R2022c | Revision::R2023a => self.p1234,
            Revision::R2023c => self.p1357,
            Revision::R2024a | Revision::R2024c => self.p1256,
        }
    }
}

/// A server with the three listeners, and their addresses from its
/// `listening on A, B, C=2024a, data in ...` line.
fn start_server() -> (Server, Ports) {
    let s = Server::start(&["--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0=2024a"]);
    let line = s
        .log_lines()
        .into_iter()
        .find(|l| l.contains("listening on "))
        .expect("listening line");
    let list = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
    let list = &list[..list.find(", data in").expect("end of the listener list")];
    let specs: Vec<&str> = list.split(", ").collect();
    assert_eq!(specs.len(), 3, "{line}");
    let addr = |spec: &str| -> SocketAddr { spec.parse().unwrap_or_else(|_| panic!("{line}")) };
    let tagged = specs[2]
        .strip_suffix("=2024a")
        .unwrap_or_else(|| panic!("third listener not tagged 2024a: {line}"));
    let ports = Ports {
        p1357: addr(specs[0]),
        p1234: addr(specs[1]),
        p1256: addr(tagged),
    };
    (s, ports)
}

/// What a client run printed with `--json`.
#[derive(Debug)]
struct Outcome {
    id: ClientId,
    outcome: String,
    revision: String,
    /// The `packets` object, as text (`null` outside 2024).
    packets: String,
}

/// A value of the one-line `--json` object: a string's contents, or the
/// raw text of anything else (up to the next key).
fn json_value(json: &str, key: &str) -> Option<String> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    if let Some(s) = rest.strip_prefix('"') {
        return Some(s[..s.find('"')?].to_owned());
    }
    let mut depth = 0;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '{' => depth += 1,
                '}' if depth > 0 => depth -= 1,
                ',' | '}' if depth == 0 => return true,
                _ => {}
            }
            false
        })
        .map_or(rest.len(), |(i, _)| i);
    Some(rest[..end].to_owned())
}

/// Runs the client once: `--revision rev`, `file` as `name`'s upload to
/// `addr`, state in `state`, plus `extra` flags. Panics unless it exits 0
/// with outcome `verified`.
fn run_client(
    rev: Revision,
    addr: SocketAddr,
    state: &Path,
    name: &str,
    file: &Path,
    extra: &[&str],
) -> Outcome {
    run_client_within(CLIENT_LIMIT, rev, addr, state, name, file, extra)
}

/// [`run_client`] with its own time limit.
fn run_client_within(
    limit: Duration,
    rev: Revision,
    addr: SocketAddr,
    state: &Path,
    name: &str,
    file: &Path,
    extra: &[&str],
) -> Outcome {
    let mut cmd = Command::new(client_bin());
    cmd.arg("--server")
        .arg(addr.to_string())
        .arg("--name")
        .arg(name)
        .arg("--file")
        .arg(file)
        .arg("--state-dir")
        .arg(state)
        .args(["--revision", rev.name(), "--json", "--quiet"])
        .args(["--timeout", "60", "--connect-timeout", "10"])
        .args(extra)
        .env_remove("SEALDROP_REVISION")
        .env_remove("RUST_LOG")
        .current_dir(state);
    let ran = run_bounded(&mut cmd, limit);
    let what = format!("{rev} client {name:?} {extra:?}");
    assert_eq!(
        ran.status.code(),
        Some(0),
        "{what}: exit {}\nstdout: {}\nstderr: {}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
    let json = ran.stdout.trim();
    let field = |k: &str| json_value(json, k).unwrap_or_else(|| panic!("{what}: no {k} in {json}"));
    let out = Outcome {
        id: ClientId::from_hex(&field("client_id")).expect("client_id hex"),
        outcome: field("outcome"),
        revision: field("revision"),
        packets: field("packets"),
    };
    assert_eq!(out.outcome, "verified", "{what}: {json}");
    assert_eq!(out.revision, rev.name(), "{what}: {json}");
    out
}

/// A test file of `len` bytes in `dir`.
fn source(dir: &Path, name: &str, seed: u64, len: u64) -> PathBuf {
    let path = dir.join(name);
    write_random_file(&path, seed, len);
    path
}

/// Panics unless `file` is stored for `id` under its base name, byte for
/// byte, and its row says verified.
fn assert_stored(s: &Server, id: &ClientId, file: &Path) {
    let name = file.file_name().unwrap().to_str().unwrap();
    let stored = s.final_path(id, name);
    assert!(
        stored.is_file(),
        "{} not stored\n{}",
        stored.display(),
        s.log_tail(30)
    );
    assert_same_file(file, &stored);
    let row = s.file_row(id, name).expect("files row");
    assert_eq!(row.verified, 1, "{name}");
}

/// The id line of `me.info` in `state`.
fn saved_id(state: &Path) -> ClientId {
    let text = fs::read_to_string(state.join("me.info")).expect("me.info");
    let line = text.lines().nth(1).expect("me.info line 2");
    ClientId::from_hex(line.trim()).expect("id hex in me.info")
}

/// Panics unless the client row of `name` holds a key of `rev`'s size.
fn assert_key_size(s: &Server, name: &str, rev: Revision) {
    let row = s.client_row(name).expect("clients row");
    let key = row.aes_key.expect("AESKey set");
    assert_eq!(key.len(), rev.aes_key_len(), "{name} after {rev}");
}

/// A new client of each revision registers, uploads and verifies; run
/// again, it comes back as the same client (1027, 1102 or 827; in 2022c
/// its key again, 1101) and sends a second file.
#[test]
fn every_revision_registers_then_comes_back_with_the_real_client() {
    let _heavy = heavy();
    let (mut s, ports) = start_server();
    let scratch = s.scratch();
    for (i, rev) in Revision::ALL.into_iter().enumerate() {
        let state = scratch.join(format!("state-{rev}"));
        fs::create_dir_all(&state).unwrap();
        let name = format!("loop-{rev}");
        let first = source(&scratch, &format!("first-{rev}.bin"), i as u64, 300_007);
        let a = run_client(rev, ports.of(rev), &state, &name, &first, &[]);
        assert_eq!(saved_id(&state), a.id, "{rev}: me.info holds the id");
        assert_stored(&s, &a.id, &first);
        assert_key_size(&s, &name, rev);
        let is_2024 = matches!(rev, Revision::R2024a | Revision::R2024c);
        assert_eq!(a.packets == "null", !is_2024, "{rev}: {a:?}");

        let second = source(
            &scratch,
            &format!("second-{rev}.bin"),
            100 + i as u64,
            65_536,
        );
        let b = run_client(rev, ports.of(rev), &state, &name, &second, &[]);
        assert_eq!(b.id, a.id, "{rev}: the second run is the same client");
        assert_stored(&s, &a.id, &second);
        assert_stored(&s, &a.id, &first);
        assert_key_size(&s, &name, rev);
        // The server saw it come back the revision's way.
        let id = a.id.to_hex();
        let came_back = if rev == Revision::R2022c {
            s.log_lines()
                .iter()
                .filter(|l| l.contains(&format!("key accepted for {id}")))
                .count()
                == 2
        } else {
            s.log_contains(&format!("reconnect accepted for {id}"))
        };
        assert!(came_back, "{rev}: no return of {id} in\n{}", s.log_tail(40));
        assert!(
            s.log_contains(&format!("speaks revision {rev}")),
            "{rev} never detected:\n{}",
            s.log_tail(40)
        );
    }
    assert_eq!(s.data().client_rows().len(), Revision::ALL.len());
    s.assert_db_consistent();
    s.assert_no_parts_within(Duration::from_secs(5));
    s.assert_alive();
}

/// Clients of all five revisions at once, two each, on the three ports
/// of one server: one database, one file tree.
#[test]
fn five_revisions_at_once_on_three_ports_of_one_server() {
    let _heavy = heavy();
    let (mut s, ports) = start_server();
    let scratch = s.scratch();
    let mut jobs = Vec::new();
    for (i, rev) in Revision::ALL.into_iter().enumerate() {
        for k in 0..2u64 {
            let state = scratch.join(format!("state-{rev}-{k}"));
            fs::create_dir_all(&state).unwrap();
            let name = format!("crowd-{rev}-{k}");
            let seed = 1000 + 10 * i as u64 + k;
            let file = source(&scratch, &format!("{name}.bin"), seed, 40_000 + seed * 97);
            let addr = ports.of(rev);
            jobs.push(thread::spawn(move || {
                let out = run_client(rev, addr, &state, &name, &file, &[]);
                (rev, name, file, out.id)
            }));
        }
    }
    let done = join_all(jobs, Duration::from_secs(300));
    for (rev, name, file, id) in &done {
        assert_stored(&s, id, file);
        assert_key_size(&s, name, *rev);
    }
    let ids: std::collections::HashSet<_> = done.iter().map(|d| d.3).collect();
    assert_eq!(ids.len(), done.len(), "every client got its own id");
    assert_eq!(s.data().client_rows().len(), done.len());
    s.assert_db_consistent();
    s.assert_alive();
}

/// One saved identity (`me.info`) used over 2023c, then 2024c, 2023a and
/// 2024a: always the same client, with a key of each revision's size.
#[test]
fn one_saved_identity_across_revisions() {
    let _heavy = heavy();
    let (mut s, ports) = start_server();
    let scratch = s.scratch();
    let state = scratch.join("state");
    fs::create_dir_all(&state).unwrap();
    let order = [
        Revision::R2023c,
        Revision::R2024c,
        Revision::R2023a,
        Revision::R2024a,
    ];
    let mut id = None;
    for (i, rev) in order.into_iter().enumerate() {
        let file = source(
            &scratch,
            &format!("across-{rev}.bin"),
            50 + i as u64,
            12_345,
        );
        let out = run_client(rev, ports.of(rev), &state, "wanderer", &file, &[]);
        assert_eq!(*id.get_or_insert(out.id), out.id, "{rev}: same client");
        assert_stored(&s, &out.id, &file);
        assert_key_size(&s, "wanderer", rev);
    }
    assert_eq!(s.data().client_rows().len(), 1);
    s.assert_alive();
}

/// 2024c with the packet variants public clients send: one file each,
/// cut as the flags say, joined by the server byte for byte.
#[test]
fn packet_variants_of_2024c_with_the_real_client() {
    let _heavy = heavy();
    let (mut s, ports) = start_server();
    let scratch = s.scratch();
    let state = scratch.join("state");
    fs::create_dir_all(&state).unwrap();
    // (flags, file length, packets the client reports)
    let variants: [(&[&str], u64, u64); 7] = [
        // Split, 4096 bytes of ciphertext each, a ragged last packet.
        (&["--packet-size", "4096"], 100_000, 100_000 / 4096 + 1),
        // Split, the ciphertext in exactly full packets (65,536 + 16 =
        // 65,552 = 3,856 x 17).
        (&["--packet-size", "3856"], 65_536, 17),
        // Numbered from 0.
        (&["--packet-size", "8192", "--packet-base", "0"], 50_000, 7),
        // Each packet encrypted alone, 4,000 plaintext bytes each.
        (
            &["--packet-size", "4000", "--packet-mode", "each"],
            30_001,
            8,
        ),
        // Each, numbered from 0, sizes of the packet.
        (
            &[
                "--packet-size",
                "1024",
                "--packet-mode",
                "each",
                "--packet-base",
                "0",
                "--packet-fields",
                "packet",
            ],
            10_240,
            10,
        ),
        // 1 MiB packets, a file of a bit more than 1 MiB: two packets.
        (&["--packet-size", "1048576"], 1_048_577, 2),
        // The default: one packet.
        (&[], 20_000, 1),
    ];
    for (i, (flags, len, count)) in variants.into_iter().enumerate() {
        let file = source(&scratch, &format!("variant-{i}.bin"), 200 + i as u64, len);
        let out = run_client(
            Revision::R2024c,
            ports.p1256,
            &state,
            "packets",
            &file,
            flags,
        );
        assert_eq!(
            json_value(&out.packets, "count").as_deref(),
            Some(count.to_string().as_str()),
            "{flags:?}: {}",
            out.packets
        );
        assert_stored(&s, &out.id, &file);
    }
    // The same on the untagged port, where 825-902 are detected too.
    let file = source(&scratch, "untagged.bin", 300, 9_999);
    let out = run_client(
        Revision::R2024c,
        ports.p1357,
        &state,
        "packets",
        &file,
        &["--packet-size", "512", "--packet-mode", "each"],
    );
    assert_stored(&s, &out.id, &file);
    s.assert_no_parts_within(Duration::from_secs(5));
    s.assert_alive();
}

/// The size of the big uploads below: 2 GiB.
const BIG_FILE: u64 = 2 << 30;

/// The server's peak RSS bound for a big upload, the bench's for its
/// 4 GiB step (`BIG_RSS_MIB` in bench/src/main.rs): 32 MiB.
const BIG_PEAK_RSS_KIB: u64 = 32 * 1024;

/// How long one 2 GiB run of the debug client may take (about 20 s on an
/// idle 2-core machine; other tests share the cores).
const BIG_CLIENT_LIMIT: Duration = Duration::from_secs(600);

/// The real client sends 2 GiB over 2023c, then over the 2024c packet path
/// (1 MiB split packets, 2,049 of them, joined by the server into one
/// stream), each to a server process of its own: neither server's peak RSS
/// (`VmHWM`, the whole process life) may reach the bound, so the packet
/// path streams in the same constant memory as 2023c.
#[test]
fn two_gib_over_2024c_packets_stays_under_the_rss_bound_of_2023c() {
    let _heavy = heavy();
    let runs: [(Revision, &[&str]); 2] = [
        (Revision::R2023c, &[]),
        (Revision::R2024c, &["--packet-size", "1048576"]),
    ];
    let mut peaks = Vec::new();
    for (rev, flags) in runs {
        let (mut s, ports) = start_server();
        let scratch = s.scratch();
        let state = scratch.join("state");
        fs::create_dir_all(&state).unwrap();
        // A sparse file: 2 GiB of zeros that cost no disk to hold and
        // little to read. The cipher makes every block of it different on
        // the wire; the client's 2104 says the server's cksum matched.
        let file = scratch.join("big.bin");
        fs::File::create(&file)
            .and_then(|f| f.set_len(BIG_FILE))
            .expect("sparse 2 GiB file");
        let out = run_client_within(
            BIG_CLIENT_LIMIT,
            rev,
            ports.of(rev),
            &state,
            "big",
            &file,
            flags,
        );
        let peak = s.peak_rss_kib();
        let stored = s.final_path(&out.id, "big.bin");
        let len = fs::metadata(&stored).map(|m| m.len());
        let row = s.file_row(&out.id, "big.bin").expect("files row");
        // Give the 2 GiB back before the next server writes its own.
        fs::remove_file(&stored).ok();
        fs::remove_file(&file).ok();
        assert_eq!(len.ok(), Some(BIG_FILE), "{rev}: stored length");
        assert_eq!(row.verified, 1, "{rev}");
        if rev == Revision::R2024c {
            assert_eq!(
                json_value(&out.packets, "count").as_deref(),
                Some("2049"),
                "{}",
                out.packets
            );
        }
        eprintln!("{rev} {flags:?}: 2 GiB verified, server VmHWM {peak} KiB");
        assert!(peak > 0, "{rev}: VmHWM not read");
        s.assert_alive();
        peaks.push((rev, peak));
    }
    for (rev, peak) in peaks {
        assert!(
            peak < BIG_PEAK_RSS_KIB,
            "{rev}: server VmHWM {peak} KiB during a 2 GiB upload, bound {BIG_PEAK_RSS_KIB} KiB"
        );
    }
}

#[test]
fn json_values_are_read_as_the_client_prints_them() {
    let j = r#"{"file":"a.bin","bytes":5,"client_id":"00ff","outcome":"verified","revision":"2024c","packets":{"count":3,"size":16,"base":1,"mode":"split","fields":"whole"}}"#;
    assert_eq!(json_value(j, "file").as_deref(), Some("a.bin"));
    assert_eq!(json_value(j, "bytes").as_deref(), Some("5"));
    assert_eq!(
        json_value(j, "packets").as_deref(),
        Some(r#"{"count":3,"size":16,"base":1,"mode":"split","fields":"whole"}"#)
    );
    assert_eq!(json_value(j, "missing"), None);
    let p = json_value(j, "packets").unwrap();
    assert_eq!(json_value(&p, "count").as_deref(), Some("3"));
    assert_eq!(json_value(&p, "fields").as_deref(), Some("whole"));
}
