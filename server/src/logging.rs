//! Log set-up: env_logger, with journal-style `<N>` priority prefixes and
//! no timestamps when stderr is connected to the systemd journal.

use std::io::Write;
use std::os::unix::fs::MetadataExt;

/// True when stderr is the stream systemd's `JOURNAL_STREAM` names
/// (`<device>:<inode>`), i.e. the journal adds timestamps itself.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// syslog priority of a log level (sd-daemon(3) prefixes).
fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Initialises logging; `RUST_LOG` overrides `default_filter`.
pub fn init(default_filter: &str) {
    let env = env_logger::Env::default().default_filter_or(default_filter);
    let mut builder = env_logger::Builder::from_env(env);
    if stderr_is_journal() {
        builder
            .format(|buf, record| writeln!(buf, "<{}>{}", priority(record.level()), record.args()));
    } else {
        builder.format(|buf, record| {
            let ts = buf.timestamp_millis();
            writeln!(buf, "{ts} {:<5} {}", record.level(), record.args())
        });
    }
    builder.init();
}
