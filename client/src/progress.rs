//! The progress bar on stderr, drawn only when stderr is a terminal and
//! `--quiet` is off. User-facing output, separate from any log.
//!
//! While the file goes out: bytes, rate and time left beside a bar that
//! takes the rest of the terminal's width (fewer figures on a narrow
//! terminal, so the line never wraps). After the last byte, until the
//! server's answer: a spinner saying the server is verifying. The send
//! number shows only on a resend ("attempt 2/4"), not on the first send.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// Redraws per second: smooth enough to read, cheap at GB/s.
const REFRESH_HZ: u8 = 8;

/// How often the spinner turns while the server verifies.
const SPIN_INTERVAL: Duration = Duration::from_millis(125);

/// Shown while the server verifies the file after its last byte.
pub const VERIFYING: &str = "verifying on the server...";

/// Layouts of the bar, the widest that fits the terminal: (the narrowest
/// terminal it is for, template). The bar (`{wide_bar}`) takes whatever
/// the figures leave. The text beside it is at most: `{msg}` 12 columns
/// ("attempt 4/4 "), `{bytes}/{total_bytes}` 23 ("1023.99 MiB/1.00 GiB"),
/// the rate 13, " ETA " and the time left ("59m", "3d") 9, brackets and
/// spaces 4: about 61, which leaves a bar of some 19 columns at 80.
const LAYOUTS: [(u16, &str); 4] = [
    (
        80,
        "{msg}[{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ),
    (56, "{msg}[{wide_bar}] {percent:>3}% ETA {eta}"),
    (24, "{msg}[{wide_bar}] {percent:>3}%"),
    (0, "{percent:>3}%"),
];

/// The spinner's layout: the message is cut to the terminal's width.
const SPINNER: &str = "{spinner} {wide_msg}";

/// The spinner's frames: ASCII, so any terminal shows them.
const SPINNER_FRAMES: [&str; 5] = ["|", "/", "-", "\\", " "];

/// A progress bar, or nothing when there is no terminal to draw on.
pub struct Progress {
    /// Where bars are drawn; `None` draws nothing.
    term: Option<Arc<dyn TermLike>>,
    /// Redraw limit; `None` redraws on every change (tests).
    hz: Option<u8>,
    bar: Option<ProgressBar>,
    /// The current (or last) send's label: empty on the first send.
    attempt: String,
    /// True if the last bar was cleared with every byte sent, and no
    /// answer was read since: the server is verifying.
    sent_all: bool,
}

impl Progress {
    /// A bar for this run: drawn only if `!quiet` and stderr is a terminal.
    pub fn new(quiet: bool) -> Progress {
        let term: Option<Arc<dyn TermLike>> = (!quiet && std::io::stderr().is_terminal())
            .then(|| Arc::new(console::Term::stderr()) as Arc<dyn TermLike>);
        Progress {
            term,
            hz: Some(REFRESH_HZ),
            bar: None,
            attempt: String::new(),
            sent_all: false,
        }
    }

    /// Starts the bar of send `attempt` (of `of`) over `total` bytes.
    pub fn start(&mut self, attempt: u32, of: u32, total: u64) {
        self.clear();
        self.sent_all = false;
        self.attempt = if attempt >= 2 {
            format!("attempt {attempt}/{of}")
        } else {
            String::new()
        };
        let Some(term) = &self.term else {
            return;
        };
        let template = layout(term.width());
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let msg = if self.attempt.is_empty() {
            String::new()
        } else {
            format!("{} ", self.attempt)
        };
        let bar = ProgressBar::with_draw_target(Some(total), self.target(term))
            .with_style(style)
            .with_message(msg);
        bar.tick();
        self.bar = Some(bar);
    }

    /// `n` more plaintext bytes were sent.
    pub fn advance(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Removes the bar (or spinner), so the next line of text starts
    /// clean. Clearing a bar whose every byte was sent leaves the run in
    /// the verifying phase, for [`Progress::verifying`].
    pub fn clear(&mut self) {
        self.sent_all = match self.bar.take() {
            Some(bar) => {
                let done = bar.length().is_some_and(|len| bar.position() >= len);
                bar.finish_and_clear();
                done
            }
            None => false,
        };
    }

    /// Before waiting for an answer: if the file was just sent whole, a
    /// spinner says the server is verifying it, until [`Progress::clear`].
    pub fn verifying(&mut self) {
        if !std::mem::take(&mut self.sent_all) {
            return;
        }
        let Some(term) = &self.term else {
            return;
        };
        let style = ProgressStyle::with_template(SPINNER)
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .tick_strings(&SPINNER_FRAMES);
        let msg = if self.attempt.is_empty() {
            VERIFYING.to_string()
        } else {
            format!("{VERIFYING} ({})", self.attempt)
        };
        let spinner = ProgressBar::with_draw_target(None, self.target(term))
            .with_style(style)
            .with_message(msg);
        spinner.enable_steady_tick(SPIN_INTERVAL);
        self.bar = Some(spinner);
    }

    fn target(&self, term: &Arc<dyn TermLike>) -> ProgressDrawTarget {
        let term = Box::new(Shared(Arc::clone(term)));
        match self.hz {
            Some(hz) => ProgressDrawTarget::term_like_with_hz(term, hz),
            None => ProgressDrawTarget::term_like(term),
        }
    }
}

/// The bar's template for a terminal `width` columns wide.
fn layout(width: u16) -> &'static str {
    LAYOUTS
        .iter()
        .find(|(min, _)| width >= *min)
        .map_or(LAYOUTS[LAYOUTS.len() - 1].1, |(_, t)| t)
}

/// One terminal shared by the bars of a run (each draw target owns a box).
#[derive(Debug)]
struct Shared(Arc<dyn TermLike>);

impl TermLike for Shared {
    fn width(&self) -> u16 {
        self.0.width()
    }
    fn height(&self) -> u16 {
        self.0.height()
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A terminal of a fixed width that keeps every line drawn.
    #[derive(Debug)]
    struct FakeTerm {
        width: u16,
        drawn: Mutex<Vec<String>>,
    }

    impl FakeTerm {
        fn new(width: u16) -> Arc<FakeTerm> {
            Arc::new(FakeTerm {
                width,
                drawn: Mutex::new(Vec::new()),
            })
        }

        /// The non-empty lines drawn so far.
        fn lines(&self) -> Vec<String> {
            let drawn = self.drawn.lock().unwrap();
            drawn.iter().filter(|l| !l.is_empty()).cloned().collect()
        }
    }

    impl TermLike for FakeTerm {
        fn width(&self) -> u16 {
            self.width
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.drawn.lock().unwrap().push(s.to_string());
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn on(term: &Arc<FakeTerm>) -> Progress {
        Progress {
            term: Some(Arc::clone(term) as Arc<dyn TermLike>),
            hz: None,
            bar: None,
            attempt: String::new(),
            sent_all: false,
        }
    }

    /// Sends a large file in steps with `p`, then clears the bar.
    fn send(p: &mut Progress, attempt: u32) {
        let total = 5 << 30;
        p.start(attempt, 4, total);
        for _ in 0..4 {
            p.advance(total / 4);
        }
        p.clear();
    }

    #[test]
    fn every_line_fits_the_terminal() {
        for width in [10u16, 23, 24, 40, 55, 56, 79, 80, 120, 300] {
            let term = FakeTerm::new(width);
            let mut p = on(&term);
            send(&mut p, 3);
            p.verifying();
            std::thread::sleep(SPIN_INTERVAL * 2);
            p.clear();
            let lines = term.lines();
            assert!(lines.len() >= 5, "{width}: {lines:?}");
            for line in lines {
                assert!(
                    line.chars().count() <= usize::from(width),
                    "{width}: {line:?}"
                );
            }
        }
    }

    #[test]
    fn the_bar_takes_the_width_the_figures_leave() {
        for width in [80u16, 200] {
            let term = FakeTerm::new(width);
            let mut p = on(&term);
            send(&mut p, 1);
            let lines = term.lines();
            let full = lines.iter().find(|l| l.contains(" GiB/")).unwrap();
            assert_eq!(full.chars().count(), usize::from(width), "{full:?}");
            assert!(full.contains("ETA"), "{full}");
        }
        let term = FakeTerm::new(40);
        send(&mut on(&term), 1);
        assert!(term.lines().iter().any(|l| l.ends_with("] 100%")));
    }

    #[test]
    fn attempt_numbers_show_only_on_a_resend() {
        let term = FakeTerm::new(100);
        let mut p = on(&term);
        send(&mut p, 1);
        assert!(term.lines().iter().all(|l| !l.contains("attempt")));
        send(&mut p, 2);
        assert!(term.lines().iter().any(|l| l.starts_with("attempt 2/4 [")));
    }

    #[test]
    fn a_spinner_shows_while_the_server_verifies() {
        let term = FakeTerm::new(100);
        let mut p = on(&term);
        send(&mut p, 2);
        p.verifying();
        std::thread::sleep(SPIN_INTERVAL * 2);
        p.clear();
        let lines = term.lines();
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with(&format!("{VERIFYING} (attempt 2/4)"))),
            "{lines:?}"
        );
        // Once: the next wait (for the answer to a later request) is not
        // a verification.
        let drawn = term.lines().len();
        p.verifying();
        p.clear();
        assert_eq!(term.lines().len(), drawn);
    }

    #[test]
    fn no_spinner_after_a_send_that_broke_off() {
        let term = FakeTerm::new(100);
        let mut p = on(&term);
        p.start(1, 4, 1000);
        p.advance(500);
        p.clear();
        p.verifying();
        p.clear();
        assert!(term.lines().iter().all(|l| !l.contains(VERIFYING)));
    }

    #[test]
    fn nothing_is_drawn_without_a_terminal() {
        let mut p = Progress::new(true);
        p.start(2, 4, 100);
        p.advance(100);
        p.clear();
        p.verifying();
        assert!(p.bar.is_none());
    }
}
