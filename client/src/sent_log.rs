//! `sent.log` in the state folder: one line per verified upload
//! (`UNIX-SECONDS CKSUM NAME`), so a later run can say that it replaced a
//! file it sent before. The protocol gives no way to ask the server
//! whether a name is taken, so this is what the client can know; a name
//! sent by the same client from another state folder is not in it.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The log's file name in the state folder.
pub const SENT_LOG: &str = "sent.log";

/// Most of the log read when looking a name up: its last 1 MiB (some
/// 10,000 uploads); older entries are not consulted.
const MAX_READ: u64 = 1 << 20;

/// What the log says about a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Previous {
    /// No log yet: the first verified upload from this state folder.
    NoLog,
    /// The log does not name it.
    NotSent,
    /// Sent and verified before, at this many seconds since 1970 (UTC).
    SentAt(u64),
}

/// Looks `name` up (the latest entry wins).
pub fn previous(dir: &Path, name: &str) -> Previous {
    let Ok(mut file) = std::fs::File::open(dir.join(SENT_LOG)) else {
        return Previous::NoLog;
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if len > MAX_READ {
        use std::io::Seek;
        if file.seek(io::SeekFrom::Start(len - MAX_READ)).is_err() {
            return Previous::NotSent;
        }
    }
    let mut bytes = Vec::new();
    if file.take(MAX_READ).read_to_end(&mut bytes).is_err() {
        return Previous::NotSent;
    }
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .rev()
        .find_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let secs = parts.next()?.parse::<u64>().ok()?;
            let _cksum = parts.next()?;
            (parts.next()? == name).then_some(secs)
        })
        .map_or(Previous::NotSent, Previous::SentAt)
}

/// Appends a verified upload.
pub fn record(dir: &Path, name: &str, cksum: u32) -> io::Result<()> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SENT_LOG))?;
    // One write per line: concurrent runs append whole lines.
    file.write_all(format!("{secs} {cksum} {name}\n").as_bytes())
}

/// `YYYY-MM-DD HH:MM UTC` for seconds since 1970.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_finds_the_latest_entry() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(previous(dir.path(), "a b.txt"), Previous::NoLog);
        record(dir.path(), "other", 1).unwrap();
        assert_eq!(previous(dir.path(), "a b.txt"), Previous::NotSent);
        record(dir.path(), "a b.txt", 2).unwrap();
        assert!(
            matches!(previous(dir.path(), "a b.txt"), Previous::SentAt(s) if s > 1_700_000_000)
        );
        // A name that is a prefix of another is not it.
        assert_eq!(previous(dir.path(), "a"), Previous::NotSent);
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_796_432_520), "2026-12-05 01:02 UTC");
    }
}
