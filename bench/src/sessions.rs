//! Small full sessions per second (sequential and concurrent), the bare
//! write + fsync + rename loop they are compared with, and many clients
//! uploading at once.

use std::fs::{self, File};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use sealdrop_protocol::crypto::RsaPrivateKey;
use sealdrop_testkit::data::random_bytes;

use crate::procs::Res;
use crate::proto::{self, Plain, Registered, SessionTimes};

/// Socket timeout of the in-bench client's sessions (each read and write):
/// generous, since 1000 clients may queue behind the server's fsyncs on a
/// busy disk.
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// Threads registering clients in advance.
const REGISTER_THREADS: usize = 8;

/// Registers `count` clients named `prefix-N`, keys taken round robin
/// from `keys`.
pub fn register_many(
    addr: SocketAddr,
    keys: &[Arc<RsaPrivateKey>],
    prefix: &str,
    count: usize,
) -> Res<Vec<Registered>> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Registered>>> = Mutex::new(vec![None; count]);
    let err: Mutex<Option<String>> = Mutex::new(None);
    thread::scope(|s| {
        for _ in 0..REGISTER_THREADS.min(count.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || err.lock().is_ok_and(|e| e.is_some()) {
                    break;
                }
                match proto::register(addr, &format!("{prefix}-{i}"), &keys[i % keys.len()]) {
                    Ok(r) => out.lock().expect("not poisoned")[i] = Some(r),
                    Err(e) => {
                        *err.lock().expect("not poisoned") =
                            Some(format!("registering client {i}: {e}"));
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().expect("not poisoned") {
        return Err(e);
    }
    Ok(out
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .flatten()
        .collect())
}

/// Rate of the bare reference loop: write a 1 KiB file, fsync it, rename
/// it over the previous one, in `dir` (the server's disk).
pub fn fsync_loop(dir: &Path, count: usize, limit: Duration) -> Res<Rate> {
    let data = random_bytes(11, 1024);
    let tmp = dir.join("ref.part");
    let fin = dir.join("ref.bin");
    let start = Instant::now();
    let mut done = 0;
    while done < count && start.elapsed() < limit {
        let mut f = File::create(&tmp).map_err(|e| format!("reference loop: {e}"))?;
        f.write_all(&data)
            .map_err(|e| format!("reference loop: {e}"))?;
        f.sync_all()
            .map_err(|e| format!("reference loop: fsync: {e}"))?;
        drop(f);
        fs::rename(&tmp, &fin).map_err(|e| format!("reference loop: rename: {e}"))?;
        done += 1;
    }
    let _ = fs::remove_file(&fin);
    Ok(Rate::new(done, start.elapsed()))
}

/// A count over a time.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Operations completed.
    pub count: usize,
    /// Time they took.
    pub elapsed: Duration,
}

impl Rate {
    fn new(count: usize, elapsed: Duration) -> Rate {
        Rate { count, elapsed }
    }

    /// All of `rates` as one: counts and times added.
    pub fn sum(rates: &[Rate]) -> Rate {
        Rate::new(
            rates.iter().map(|r| r.count).sum(),
            rates.iter().map(|r| r.elapsed).sum(),
        )
    }

    /// Operations per second.
    pub fn per_sec(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Result of a batch of small sessions.
#[derive(Debug, Clone)]
pub struct Sessions {
    /// Sessions completed and how long the batch took.
    pub rate: Rate,
    /// Mean time per session in each phase, over all sessions.
    pub mean: Phases,
}

impl Sessions {
    /// Batches run in turns with the reference loop, as one batch.
    pub fn merge(batches: &[Sessions]) -> Sessions {
        let rate = Rate::sum(&batches.iter().map(|b| b.rate).collect::<Vec<_>>());
        let n = rate.count.max(1) as f64;
        let w = |f: fn(&Phases) -> f64| {
            batches
                .iter()
                .map(|b| f(&b.mean) * b.rate.count as f64)
                .sum::<f64>()
                / n
        };
        Sessions {
            rate,
            mean: Phases {
                total_ms: w(|p| p.total_ms),
                wait_2103_ms: w(|p| p.wait_2103_ms),
                wait_2104_ms: w(|p| p.wait_2104_ms),
            },
        }
    }
}

/// Mean duration of a session's phases, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Whole session.
    pub total_ms: f64,
    /// Waiting for 2103 after the last content byte.
    pub wait_2103_ms: f64,
    /// Waiting for 2104 after 1029.
    pub wait_2104_ms: f64,
}

impl Phases {
    fn of(times: &[SessionTimes]) -> Phases {
        let n = times.len().max(1) as f64;
        let ms = |f: fn(&SessionTimes) -> Duration| {
            times
                .iter()
                .map(|t| f(t).as_secs_f64() * 1000.0)
                .sum::<f64>()
                / n
        };
        Phases {
            total_ms: ms(|t| t.total),
            wait_2103_ms: ms(|t| t.wait_2103),
            wait_2104_ms: ms(|t| t.wait_2104),
        }
    }

    /// The part of a session not spent waiting for 2103 or 2104:
    /// connecting, reconnect with RSA, sending.
    pub fn other_ms(&self) -> f64 {
        self.total_ms - self.wait_2103_ms - self.wait_2104_ms
    }
}

/// Runs up to `count` full 1 KiB sessions on `threads` threads (each with
/// its own clients), stopping early after `limit`.
pub fn small_sessions(
    addr: SocketAddr,
    clients: &[Registered],
    threads: usize,
    count: usize,
    limit: Duration,
) -> Res<Sessions> {
    let data = random_bytes(12, 1024);
    let next = AtomicUsize::new(0);
    let times = Mutex::new(Vec::with_capacity(count));
    let err: Mutex<Option<String>> = Mutex::new(None);
    let start = Instant::now();
    let threads = threads.min(clients.len()).max(1);
    thread::scope(|s| {
        for t in 0..threads {
            let (data, next, times, err) = (&data, &next, &times, &err);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || start.elapsed() >= limit || err.lock().is_ok_and(|e| e.is_some()) {
                    break;
                }
                // Thread t uses the clients t, t + threads, ...: no two
                // threads share a client.
                let per = clients.len() / threads;
                let client = &clients[t + threads * (i % per.max(1))];
                match proto::session(
                    addr,
                    client,
                    "small.bin",
                    Plain::Bytes(data),
                    SESSION_TIMEOUT,
                ) {
                    Ok(st) => times.lock().expect("not poisoned").push(st),
                    Err(e) => {
                        *err.lock().expect("not poisoned") = Some(format!("session {i}: {e}"));
                        break;
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    if let Some(e) = err.into_inner().expect("not poisoned") {
        return Err(e);
    }
    let times = times.into_inner().expect("not poisoned");
    Ok(Sessions {
        rate: Rate::new(times.len(), elapsed),
        mean: Phases::of(&times),
    })
}

/// Result of many clients uploading at once.
#[derive(Debug, Clone)]
pub struct Crowd {
    /// Uploads verified (2104 after a matching 2103).
    pub verified: usize,
    /// The first few failures.
    pub failures: Vec<String>,
    /// Failures in all.
    pub failed: usize,
    /// From the start signal to the last session's end.
    pub wall: Duration,
    /// Median session latency (connect to 2104).
    pub p50: Duration,
    /// 99th percentile session latency.
    pub p99: Duration,
    /// Mean phases of the verified sessions.
    pub mean: Phases,
}

/// Stack of each client thread: the session needs a few KiB; 256 KiB keeps
/// 1000 threads at 256 MiB of address space, mostly never touched.
const CROWD_STACK: usize = 256 * 1024;

/// `clients.len()` threads, released at once, each uploading `size` bytes
/// in one full session.
pub fn crowd(addr: SocketAddr, clients: &[Registered], size: usize) -> Res<Crowd> {
    let data = Arc::new(random_bytes(13, size));
    // Held for writing until every thread is spawned: each thread's read()
    // blocks on it, so all start together.
    let gate = Arc::new(RwLock::new(()));
    let held = gate.write().map_err(|_| "gate poisoned".to_owned())?;
    let mut handles = Vec::with_capacity(clients.len());
    let mut spawn_error = None;
    for (i, client) in clients.iter().enumerate() {
        let (data, gate, client) = (Arc::clone(&data), Arc::clone(&gate), client.clone());
        let spawned = thread::Builder::new()
            .name(format!("crowd-{i}"))
            .stack_size(CROWD_STACK)
            .spawn(move || {
                drop(gate.read());
                let file = format!("crowd-{i}.bin");
                proto::session(addr, &client, &file, Plain::Bytes(&data), SESSION_TIMEOUT)
                    .map(|t| (t, Instant::now()))
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                spawn_error = Some(format!("could start only {i} client threads: {e}"));
                break;
            }
        }
    }
    let start = Instant::now();
    drop(held);
    let mut times = Vec::new();
    let mut failures = Vec::new();
    let mut failed = 0;
    let mut last = start;
    for h in handles {
        match h.join() {
            Ok(Ok((t, end))) => {
                times.push(t);
                last = last.max(end);
            }
            Ok(Err(e)) => {
                failed += 1;
                if failures.len() < 3 {
                    failures.push(e);
                }
            }
            Err(_) => failed += 1,
        }
    }
    if let Some(e) = spawn_error {
        failures.insert(0, e);
    }
    let mut lat: Vec<Duration> = times.iter().map(|t| t.total).collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    Ok(Crowd {
        verified: times.len(),
        failures,
        failed,
        wall: last - start,
        p50: pct(0.50),
        p99: pct(0.99),
        mean: Phases::of(&times),
    })
}
