//! The progress bar: bytes, rate, ETA and send number on stderr, drawn
//! only when stderr is a terminal and `--quiet` is off. User-facing output,
//! separate from any log.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Redraws per second: smooth enough to read, cheap at GB/s.
const REFRESH_HZ: u8 = 8;

/// Bar layout: send number, bar, bytes done / total, rate, time left.
const TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";

/// A progress bar, or nothing when there is no terminal to draw on.
pub struct Progress {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for this run: drawn only if `!quiet` and stderr is a terminal.
    pub fn new(quiet: bool) -> Progress {
        Progress {
            enabled: !quiet && std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    /// Starts the bar of send `attempt` (of `of`) over `total` bytes.
    pub fn start(&mut self, attempt: u32, of: u32, total: u64) {
        self.clear();
        if !self.enabled {
            return;
        }
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(
            Some(total),
            ProgressDrawTarget::stderr_with_hz(REFRESH_HZ),
        )
        .with_style(style)
        .with_message(format!("attempt {attempt}/{of}"));
        self.bar = Some(bar);
    }

    /// `n` more plaintext bytes were sent.
    pub fn advance(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Removes the bar, so the next line of text starts clean.
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
