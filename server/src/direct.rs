//! Appending a large upload to its file with O_DIRECT: [`DirectWriter`].
//!
//! A buffered write copies every byte into the page cache, and the kernel
//! later writes it out and, at the fsync before 2104, waits for it. On the
//! virtual machines this runs on, that copy into freshly allocated cache
//! pages is the server's largest cost and swings wildly (1 GiB measured at
//! 0.8 s and at 12.6 s of `dd`, 7 s of it system time, on one machine in
//! one hour), while O_DIRECT wrote the same GiB in 0.95-1.3 s with
//! 0.2-0.26 s of system time. So uploads of at least [`DIRECT_MIN_SIZE`]
//! are collected in an aligned buffer of [`DIRECT_CHUNK`] bytes and
//! written straight to the disk a chunk at a time; the unaligned tail goes
//! through a normal descriptor at the end. A filesystem without O_DIRECT
//! (tmpfs) and more than [`MAX_DIRECT_WRITERS`] such uploads at once fall
//! back to buffered writes, so memory stays bounded.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Alignment of buffer address, file offset and length for O_DIRECT:
/// 4096 covers disks with 512-byte and 4 KiB logical blocks.
pub const DIRECT_ALIGN: usize = 4096;

/// Bytes collected before one direct write: 1 MiB, the size the session
/// hands decrypted content over in, so a write rarely waits for more.
pub const DIRECT_CHUNK: usize = 1 << 20;

/// Uploads whose encrypted content is at least this big are written with
/// O_DIRECT: 16 MiB. Smaller files gain little (their cost is the fsync,
/// not the copy) and would each hold a 1 MiB buffer.
pub const DIRECT_MIN_SIZE: u64 = 16 << 20;

/// Most direct writers (each holding a [`DIRECT_CHUNK`] buffer) at once,
/// server-wide: 64, so at most 64 MiB of such buffers. Further large
/// uploads use buffered writes.
pub const MAX_DIRECT_WRITERS: usize = 64;

/// Direct writers alive now.
static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_DIRECT_WRITERS`] places, given back when dropped.
#[derive(Debug)]
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        IN_USE
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_DIRECT_WRITERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        IN_USE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Direct writers alive now (for tests and the log).
pub fn direct_writers_in_use() -> usize {
    IN_USE.load(Ordering::Acquire)
}

/// Appends to a file through an O_DIRECT descriptor, a chunk at a time.
pub struct DirectWriter {
    file: File,
    /// [`DIRECT_CHUNK`] + [`DIRECT_ALIGN`] bytes; the chunk starts at
    /// `start`, the first aligned address.
    buf: Vec<u8>,
    start: usize,
    /// Bytes collected in the chunk.
    len: usize,
    /// File offset of the chunk's first byte (a multiple of
    /// [`DIRECT_ALIGN`]).
    offset: u64,
    _slot: Slot,
}

impl std::fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the buffer: it holds file content.
        f.debug_struct("DirectWriter")
            .field("buffered", &self.len)
            .field("offset", &self.offset)
            .finish()
    }
}

impl DirectWriter {
    /// Opens the (empty, just created) file at `path` for direct appends.
    /// `None` when all [`MAX_DIRECT_WRITERS`] are in use or the filesystem
    /// refuses O_DIRECT; the caller then writes buffered.
    pub fn open(path: &Path) -> Option<DirectWriter> {
        let slot = Slot::take()?;
        let file = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => file,
            Err(e) => {
                log::debug!("O_DIRECT refused for {}: {e}", path.display());
                return None;
            }
        };
        let buf = vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        if start >= DIRECT_ALIGN {
            return None;
        }
        Some(DirectWriter {
            file,
            buf,
            start,
            len: 0,
            offset: 0,
            _slot: slot,
        })
    }

    /// Appends `data`; every full chunk goes to the disk before this
    /// returns.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (DIRECT_CHUNK - self.len).min(data.len());
            let at = self.start + self.len;
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == DIRECT_CHUNK {
                self.write_aligned()?;
            }
        }
        Ok(())
    }

    /// Writes the aligned part of the chunk and keeps the rest.
    fn write_aligned(&mut self) -> io::Result<()> {
        let n = self.len & !(DIRECT_ALIGN - 1);
        if n == 0 {
            return Ok(());
        }
        let chunk = &self.buf[self.start..self.start + n];
        self.file.write_all_at(chunk, self.offset)?;
        self.offset += n as u64;
        self.buf
            .copy_within(self.start + n..self.start + self.len, self.start);
        self.len -= n;
        Ok(())
    }

    /// Writes everything still collected: the aligned part directly, the
    /// tail (under [`DIRECT_ALIGN`] bytes) through `tail`, a normal
    /// descriptor of the same file.
    pub fn finish(mut self, tail: &File) -> io::Result<()> {
        self.write_aligned()?;
        if self.len > 0 {
            tail.write_all_at(&self.buf[self.start..self.start + self.len], self.offset)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file on the disk under test, if its filesystem takes O_DIRECT
    /// (the build directory's; tmpfs does not).
    fn direct_dir() -> Option<tempfile::TempDir> {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let dir = tempfile::tempdir_in(target).ok()?;
        let probe = dir.path().join("probe");
        File::create(&probe).ok()?;
        let ok = DirectWriter::open(&probe).is_some();
        ok.then_some(dir)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn writes_land_byte_exact_for_every_kind_of_length() {
        let Some(dir) = direct_dir() else {
            eprintln!("skipped: no O_DIRECT on this filesystem");
            return;
        };
        for (i, len) in [
            0,
            1,
            4095,
            4096,
            4097,
            DIRECT_CHUNK - 1,
            DIRECT_CHUNK,
            3 * DIRECT_CHUNK + 12_345,
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("f{i}"));
            let tail = File::create(&path).unwrap();
            let mut w = DirectWriter::open(&path).unwrap();
            let data = pattern(len);
            // Odd piece sizes, as decrypted content arrives.
            for piece in data.chunks(65_531) {
                w.write(piece).unwrap();
            }
            w.finish(&tail).unwrap();
            assert!(std::fs::read(&path).unwrap() == data, "length {len}");
        }
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        let Some(dir) = direct_dir() else {
            eprintln!("skipped: no O_DIRECT on this filesystem");
            return;
        };
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        let mut held = Vec::new();
        while let Some(w) = DirectWriter::open(&path) {
            held.push(w);
            assert!(held.len() <= MAX_DIRECT_WRITERS);
        }
        // Other tests may hold a few at the same moment.
        assert!(held.len() + 4 >= MAX_DIRECT_WRITERS, "{}", held.len());
        drop(held);
        assert!(DirectWriter::open(&path).is_some());
    }

    #[test]
    fn a_filesystem_without_o_direct_falls_back() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        // tmpfs refuses O_DIRECT on older kernels and accepts it on newer
        // ones; either way nothing panics and a writer, if any, works.
        if let Some(mut w) = DirectWriter::open(&path) {
            w.write(&pattern(5000)).unwrap();
            w.finish(&File::options().write(true).open(&path).unwrap())
                .unwrap();
            assert!(std::fs::read(&path).unwrap() == pattern(5000));
        }
    }
}
