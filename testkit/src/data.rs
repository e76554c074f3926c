//! Deterministic test data: pseudo-random bytes and files from a seed,
//! unique names, and file comparisons.

use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sealdrop_protocol::crypto::{Entropy, TestEntropy};

/// `len` pseudo-random bytes, the same for the same seed (not secret).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    TestEntropy::new(seed).fill_bytes(&mut v);
    v
}

/// Writes `len` pseudo-random bytes to `path`, 1 MiB at a time.
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

/// A name unique in this process (and across processes, by pid).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
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

/// Reads until `buf` is full or the end; the bytes read. Panics on an
/// error.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
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
