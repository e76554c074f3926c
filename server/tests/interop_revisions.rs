//! Every revision of PROTOCOL.md §9, spoken by the Python reference peer's
//! client, against ONE in-process server with two listeners: an untagged
//! one (1025-1031 mean 2023c; 825-902 and 1100-1106 detected) and one
//! tagged `=2024a`. All clients run at once: several revisions on one
//! server, one database, one file tree. Each 2024 packet variant the peer
//! can send (split or each, numbered from 0 or 1, sizes of the whole file
//! or of the packet, 1,024- and 4,000-byte pieces) is sent, every returning
//! client comes back (reconnect, or in 2022c its key again), and every
//! stored file is compared byte for byte.
//!
//! Skipped unless `SEALDROP_INTEROP=1` (`make interop`); skipped with a
//! message when python3 or PyCryptodome is missing. The peer is found
//! through `SEALDROP_PEER`, else `../shared/peer/sealdrop_peer.py`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

use common::peer;
use sealdrop_protocol::ClientId;
use sealdrop_server::config::{ListenSpec, Settings};
use sealdrop_server::inprocess;

/// `len` bytes of a pattern that differs per seed.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One peer client run: its revision, packet flags and file.
#[derive(Debug, Clone)]
struct Run {
    revision: &'static str,
    flags: Vec<&'static str>,
    len: usize,
}

/// Runs the peer client, bounded by a wall-clock limit.
fn send(peer: &Path, addr: SocketAddr, run: &Run, name: &str, file: &Path, state: &Path) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("240")
        .arg("python3")
        .arg(peer)
        .arg("client")
        .arg("--server")
        .arg(addr.to_string())
        .arg("--name")
        .arg(name)
        .arg("--file")
        .arg(file)
        .arg("--state")
        .arg(state)
        .arg("--revision")
        .arg(run.revision)
        .args(&run.flags)
        .stdin(Stdio::null());
    cmd.output().expect("run the peer client")
}

fn saved_id(state: &Path) -> ClientId {
    let text = std::fs::read_to_string(state.join("me.info")).expect("me.info written");
    ClientId::from_hex(text.lines().nth(1).unwrap().trim()).expect("hex id")
}

#[test]
fn interop_every_revision_and_packet_variant_on_one_server() {
    let Some(peer) = peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut settings = Settings::with_defaults(any, &data);
    settings
        .listen
        .push("127.0.0.1:0=2024a".parse::<ListenSpec>().unwrap());
    let server = inprocess::spawn(settings).unwrap();
    let (untagged, tagged_2024a) = (server.addrs()[0], server.addrs()[1]);

    let mut runs = Vec::new();
    for revision in ["2022c", "2023a", "2023c"] {
        for len in [0, 1000, 70_000] {
            runs.push(Run {
                revision,
                flags: vec![],
                len,
            });
        }
    }
    for revision in ["2024a", "2024c"] {
        for mode in ["split", "each"] {
            for base in ["0", "1"] {
                for fields in ["whole", "packet"] {
                    if mode == "split" && fields == "packet" {
                        continue; // the peer sends packet fields in each mode only
                    }
                    for size in ["1024", "4000"] {
                        if mode == "split" && size == "4000" {
                            continue; // split pieces are ciphertext: multiples of 16
                        }
                        runs.push(Run {
                            revision,
                            flags: vec![
                                "--packet-mode",
                                mode,
                                "--packet-base",
                                base,
                                "--packet-fields",
                                fields,
                                "--packet-size",
                                size,
                            ],
                            len: 9_000,
                        });
                    }
                }
            }
        }
        for len in [0, 16, 1024] {
            runs.push(Run {
                revision,
                flags: vec![],
                len,
            });
        }
    }

    let threads: Vec<_> = runs
        .into_iter()
        .enumerate()
        .map(|(i, run)| {
            let peer = peer.clone();
            let base = dir.path().join(format!("run{i}"));
            let data = data.clone();
            let addr = if run.revision == "2024a" {
                tagged_2024a
            } else {
                untagged
            };
            std::thread::spawn(move || {
                std::fs::create_dir_all(&base).unwrap();
                let state = base.join("state");
                let name = format!("peer-{}-{i}", run.revision);
                let mut sent = Vec::new();
                // A new client, then the same client returning.
                for round in 0..2 {
                    let file = base.join(format!("f{round}.bin"));
                    let bytes = content(i as u64 * 10 + round, run.len + round as usize * 33);
                    std::fs::write(&file, &bytes).unwrap();
                    let out = send(&peer, addr, &run, &name, &file, &state);
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    assert!(
                        out.status.success() && stdout.contains("verified"),
                        "{run:?} round {round}: {}\nstdout: {stdout}\nstderr: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                    sent.push((format!("f{round}.bin"), bytes));
                }
                let id = saved_id(&state);
                for (file_name, bytes) in sent {
                    let stored = data.join("files").join(id.to_hex()).join(&file_name);
                    let got = std::fs::read(&stored).unwrap_or_else(|e| {
                        panic!("{run:?}: {} not stored: {e}", stored.display())
                    });
                    assert!(got == bytes, "{run:?}: {file_name} differs");
                }
                run.revision
            })
        })
        .collect();
    let mut done = std::collections::BTreeMap::new();
    for t in threads {
        let revision = t.join().expect("a client run failed");
        *done.entry(revision).or_insert(0) += 1;
    }
    println!("verified uploads per revision (two per run): {done:?}");
    assert_eq!(done.len(), 5);
    server.stop().unwrap();
}
