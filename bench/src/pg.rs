//! Two servers on one PostgreSQL database against one server on SQLite
//! (issue 17): full sessions of new clients (1025, 1026, 1028 of 1 KiB,
//! 1029) per second, and a few large uploads at once, in MB/s, with the
//! clients spread over the servers round robin.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sealdrop_testkit::data::random_bytes;
use sealdrop_testkit::Client;

use crate::procs::Res;
use crate::proto::{self, Plain, Registered};
use crate::sessions::Rate;
use crate::Key;

/// Socket timeout of each read and write of these sessions.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs up to `count` sessions of new clients named `prefix-N` on
/// `threads` threads, client N on server `N % addrs.len()`: connect,
/// register (1025 -> 2100), key (1026 -> 2102), upload 1 KiB (1028 ->
/// 2103, cksum checked), verify (1029 -> 2104). Stops early after `limit`.
pub fn new_client_sessions(
    addrs: &[SocketAddr],
    keys: &[Key],
    prefix: &str,
    threads: usize,
    count: usize,
    limit: Duration,
) -> Res<Rate> {
    let data = random_bytes(21, 1024);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let err: Mutex<Option<String>> = Mutex::new(None);
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || start.elapsed() >= limit || err.lock().is_ok_and(|e| e.is_some()) {
                    break;
                }
                let addr = addrs[i % addrs.len()];
                let key = &keys[i % keys.len()];
                match one_new_client(addr, key, &format!("{prefix}-{i}"), &data) {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        *err.lock().expect("not poisoned") =
                            Some(format!("session {i} on {addr}: {e}"));
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
    Ok(Rate {
        count: done.into_inner(),
        elapsed,
    })
}

fn one_new_client(addr: SocketAddr, key: &Key, name: &str, data: &[u8]) -> Res<()> {
    let mut me = Client::with_key(name, Arc::clone(key)).with_unblinded_decryption();
    let mut conn = me
        .open(addr, TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    me.try_register(&mut conn).map_err(|e| e.to_string())?;
    me.try_exchange_key(&mut conn).map_err(|e| e.to_string())?;
    let mut upload = me
        .begin_upload(&mut conn, "small.bin", data.len() as u64)
        .map_err(|e| e.to_string())?;
    upload.write(data).map_err(|e| format!("write: {e}"))?;
    let want = upload.finish().map_err(|e| format!("write: {e}"))?;
    let reply = conn.try_recv(TIMEOUT).map_err(|e| e.to_string())?;
    me.try_check_received(&reply, "small.bin", data.len() as u64, want)
        .map_err(|e| e.to_string())?;
    me.try_verify(&mut conn, "small.bin")
        .map_err(|e| e.to_string())
}

/// `clients.len()` uploads of `size` bytes at once, client N through
/// server `N % addrs.len()`; returns the aggregate MB/s (10^6 bytes/s,
/// from the release to the last 2104).
pub fn large_uploads(addrs: &[SocketAddr], clients: &[Registered], size: u64) -> Res<f64> {
    let block = random_bytes(22, 1 << 20);
    let start = Instant::now();
    let results: Vec<Res<()>> = thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let (addr, block) = (addrs[i % addrs.len()], &block);
                s.spawn(move || {
                    proto::session(
                        addr,
                        client,
                        "large.bin",
                        Plain::Generated { len: size, block },
                        TIMEOUT,
                    )
                    .map(|_| ())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("upload thread panicked".into()))
            })
            .collect()
    });
    let wall = start.elapsed();
    results.into_iter().collect::<Res<Vec<()>>>()?;
    Ok(clients.len() as f64 * size as f64 / 1e6 / wall.as_secs_f64())
}
