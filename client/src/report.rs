//! What the user and scripts see at the end: the success line, the one-line
//! failure message, the `--json` object, and the exit code.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use sealdrop_protocol::client::PacketPlan;
use sealdrop_protocol::{ClientId, Revision};

/// Prefix of every message on stderr.
const PROGRAM: &str = "sealdrop-client";

/// The `outcome` of a file never started because the run ended before
/// its turn.
pub const NOT_SENT: &str = "not_sent";

/// The kinds of failure, each with its exit code (README.md, `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// 2: bad flags or configuration.
    Usage,
    /// 3: could not connect, or lost the connection on every try.
    Network,
    /// 4: the server refused the registration (2101).
    Refused,
    /// 5: the cksum was wrong after four sends.
    Crc,
    /// 6: 2107 on every try.
    ServerError,
    /// 7: the file or the state files could not be read or written.
    LocalIo,
    /// 8: the server broke the protocol, or is no sealdrop server.
    Protocol,
    /// 9: the connection broke after 1029 and before its 2104: the
    /// server may or may not have kept the file.
    Unknown,
}

/// The `outcome` of a successful run.
pub const VERIFIED: &str = "verified";

impl FailKind {
    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            FailKind::Usage => 2,
            FailKind::Network => 3,
            FailKind::Refused => 4,
            FailKind::Crc => 5,
            FailKind::ServerError => 6,
            FailKind::LocalIo => 7,
            FailKind::Protocol => 8,
            FailKind::Unknown => 9,
        }
    }

    /// The `outcome` of the `--json` object.
    pub fn outcome(self) -> &'static str {
        match self {
            FailKind::Usage => "usage_error",
            FailKind::Network => "network_error",
            FailKind::Refused => "registration_failed",
            FailKind::Crc => "crc_failed",
            FailKind::ServerError => "server_error",
            FailKind::LocalIo => "local_io_error",
            FailKind::Protocol => "protocol_error",
            FailKind::Unknown => "outcome_unknown",
        }
    }
}

/// A failed run: its kind and one line saying what failed and what to check.
#[derive(Debug)]
pub struct Failure {
    /// Decides the exit code.
    pub kind: FailKind,
    /// The message, without the program prefix.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: FailKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// A usage or configuration error (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(FailKind::Usage, message)
    }

    /// A local I/O error (exit 7).
    pub fn local(message: impl Into<String>) -> Failure {
        Failure::new(FailKind::LocalIo, message)
    }
}

/// A successful run.
#[derive(Debug)]
pub struct Done {
    /// The base name sent.
    pub file_name: String,
    /// Plaintext bytes.
    pub bytes: u64,
    /// The verified cksum.
    pub cksum: u32,
    /// Sends it took.
    pub attempts: u32,
    /// The revision spoken.
    pub revision: Revision,
    /// 2024a/2024c: how the file went in packets.
    pub packets: Option<PacketPlan>,
}

/// What is known so far, for the final report also on failure.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// The file path as given.
    pub file: Option<String>,
    /// Its plaintext length.
    pub bytes: Option<u64>,
    /// Our cksum of the last complete send.
    pub cksum: Option<u32>,
    /// Sends started.
    pub attempts: u32,
    /// Our client id, once known.
    pub client_id: Option<ClientId>,
    /// The revision, once the flags are read.
    pub revision: Option<Revision>,
    /// 2024a/2024c: the packet plan, once the file is known.
    pub packets: Option<PacketPlan>,
}

/// Writes the run's messages to stdout and stderr.
pub struct Report {
    quiet: bool,
    json: bool,
    started: Instant,
    summary: RefCell<Summary>,
}

impl Report {
    /// A reporter for `--quiet` and `--json` as given; `started` is when
    /// the run began, for the `seconds` reported.
    pub fn new(quiet: bool, json: bool, started: Instant) -> Report {
        Report {
            quiet,
            json,
            started,
            summary: RefCell::new(Summary::default()),
        }
    }

    /// Records the file path for the JSON object.
    pub fn set_file(&self, path: &std::path::Path) {
        self.summary.borrow_mut().file = Some(path.to_string_lossy().into_owned());
    }

    /// Updates what is known.
    pub fn update(&self, f: impl FnOnce(&mut Summary)) {
        f(&mut self.summary.borrow_mut());
    }

    /// A note on stderr (a retry, a mismatch), unless `--quiet`.
    pub fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("{PROGRAM}: {}", printable(message));
        }
    }

    /// One file of the run verified: its line (or JSON object), which
    /// names the file.
    pub fn file_success(&self, done: &Done) {
        let _ = self.success(done);
    }

    /// One file of the run failed (the run goes on with the next).
    pub fn file_failure(&self, failure: &Failure) {
        let _ = self.failure(failure);
    }

    /// Files never started because the run ended early: one line each
    /// (stderr), or one JSON object each with outcome `not_sent`.
    pub fn not_sent(&self, files: &[std::path::PathBuf], why: FailKind) {
        let secs = self.started.elapsed().as_secs_f64();
        for file in files {
            let name = file.to_string_lossy();
            let message = format!(
                "{}: not sent: the run ended early ({})",
                printable(&name),
                why.outcome()
            );
            eprintln!("{PROGRAM}: {message}");
            if self.json {
                let summary = Summary {
                    file: Some(name.into_owned()),
                    revision: self.summary.borrow().revision,
                    client_id: self.summary.borrow().client_id,
                    ..Summary::default()
                };
                println!("{}", json_object(&summary, secs, NOT_SENT, Some(&message)));
            }
        }
    }

    /// Prints the success line (or the JSON object); exit code 0.
    pub fn success(&self, done: &Done) -> ExitCode {
        let secs = self.started.elapsed().as_secs_f64();
        if self.json {
            println!(
                "{}",
                json_object(&self.summary.borrow(), secs, VERIFIED, None)
            );
        } else if !self.quiet {
            let packets = done
                .packets
                .as_ref()
                .map_or(String::new(), |p| format!(", {}", p.summary()));
            println!(
                "sent {}: {} bytes, cksum {}, verified ({secs:.2} s, attempt {}, revision {}{packets})",
                printable(&done.file_name),
                done.bytes,
                done.cksum,
                done.attempts,
                done.revision
            );
        }
        ExitCode::SUCCESS
    }

    /// Prints the failure line (and the JSON object); its exit code.
    pub fn failure(&self, failure: &Failure) -> ExitCode {
        let secs = self.started.elapsed().as_secs_f64();
        let message = printable(&failure.message);
        eprintln!("{PROGRAM}: {message}");
        if self.json {
            let outcome = failure.kind.outcome();
            let summary = self.summary.borrow();
            println!("{}", json_object(&summary, secs, outcome, Some(&message)));
        }
        ExitCode::from(failure.kind.exit_code())
    }
}

/// Reports a failure before the flags could be parsed.
pub fn early_failure(kind: FailKind, message: &str, json: bool, started: Instant) -> ExitCode {
    let message = printable(message);
    eprintln!("{PROGRAM}: {message}");
    if json {
        let secs = started.elapsed().as_secs_f64();
        let object = json_object(&Summary::default(), secs, kind.outcome(), Some(&message));
        println!("{object}");
    }
    ExitCode::from(kind.exit_code())
}

/// The `--json` object: exactly the keys file, bytes, cksum, attempts,
/// seconds, client_id, outcome, revision, packets, error; unknown values
/// are `null`. `outcome` is a value of the closed set in README.md; `error` is the failure
/// line without the program's name (null on success). `packets` is null outside 2024a/2024c, else
/// `{"count","size","base","mode","fields"}`: the number of packets, the
/// bytes per packet (ciphertext in split mode, plaintext in each mode; the
/// whole ciphertext for one packet), the first number, split or each,
/// whole or packet.
pub fn json_object(s: &Summary, seconds: f64, outcome: &str, error: Option<&str>) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "null".into());
    let packets = s.packets.as_ref().map(|p| {
        format!(
            "{{\"count\":{},\"size\":{},\"base\":{},\"mode\":{},\"fields\":{}}}",
            p.total,
            p.piece,
            p.base,
            json_string(&p.mode.to_string()),
            json_string(&p.fields.to_string())
        )
    });
    format!(
        "{{\"file\":{},\"bytes\":{},\"cksum\":{},\"attempts\":{},\"seconds\":{seconds:.3},\
         \"client_id\":{},\"outcome\":{},\"revision\":{},\"packets\":{},\"error\":{}}}",
        opt(s.file.as_deref().map(json_string)),
        opt(s.bytes.map(|b| b.to_string())),
        opt(s.cksum.map(|c| c.to_string())),
        s.attempts,
        opt(s.client_id.map(|id| json_string(&id.to_hex()))),
        json_string(outcome),
        opt(s.revision.map(|r| json_string(r.name()))),
        opt(packets),
        opt(error.map(json_string)),
    )
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `text` with control characters escaped, so nothing a user or a file
/// name holds can move the terminal's cursor or change its colours.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` in quotes, control characters escaped: for values in messages.
pub fn quoted(text: &str) -> String {
    format!("'{}'", printable(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_exactly_the_keys() {
        let s = Summary {
            file: Some("a\"b\n.txt".into()),
            bytes: Some(5),
            cksum: None,
            attempts: 2,
            client_id: Some(ClientId([0xab; 16])),
            revision: Some(Revision::R2023c),
            packets: None,
        };
        let text = json_object(&s, 1.5, "crc_failed", Some("it said \"no\""));
        assert_eq!(
            text,
            "{\"file\":\"a\\\"b\\u000a.txt\",\"bytes\":5,\"cksum\":null,\"attempts\":2,\
             \"seconds\":1.500,\"client_id\":\"abababababababababababababababab\",\
             \"outcome\":\"crc_failed\",\"revision\":\"2023c\",\"packets\":null,\
             \"error\":\"it said \\\"no\\\"\"}"
        );
    }

    #[test]
    fn json_describes_the_packets() {
        use sealdrop_protocol::client::{Granularity, PacketOptions};
        let options = PacketOptions {
            size: Some(1024),
            base: 0,
            mode: Granularity::Each,
            ..PacketOptions::default()
        };
        let s = Summary {
            revision: Some(Revision::R2024c),
            packets: Some(PacketPlan::new(5000, &options).unwrap()),
            ..Summary::default()
        };
        let text = json_object(&s, 0.0, VERIFIED, None);
        assert!(
            text.ends_with(
                "\"revision\":\"2024c\",\"packets\":{\"count\":5,\"size\":1024,\"base\":0,\
                 \"mode\":\"each\",\"fields\":\"whole\"},\"error\":null}"
            ),
            "{text}"
        );
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("ok \u{1b}[31mred\n"), "ok \\u{1b}[31mred\\n");
        assert_eq!(printable("café"), "café");
    }

    /// Every `outcome` of the `--json` object with its exit code: a closed
    /// set, documented in README.md ("Client exit codes and outcomes").
    const OUTCOMES: [(&str, u8); 9] = [
        (VERIFIED, 0),
        ("usage_error", 2),
        ("network_error", 3),
        ("registration_failed", 4),
        ("crc_failed", 5),
        ("server_error", 6),
        ("local_io_error", 7),
        ("protocol_error", 8),
        ("outcome_unknown", 9),
    ];

    const KINDS: [FailKind; 8] = [
        FailKind::Usage,
        FailKind::Network,
        FailKind::Refused,
        FailKind::Crc,
        FailKind::ServerError,
        FailKind::LocalIo,
        FailKind::Protocol,
        FailKind::Unknown,
    ];

    #[test]
    fn exit_codes_are_distinct() {
        let mut codes: Vec<u8> = KINDS.iter().map(|k| k.exit_code()).collect();
        codes.dedup();
        assert_eq!(codes, [2, 3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn outcomes_are_the_closed_set_with_their_exit_codes() {
        let mut from_kinds: Vec<(&str, u8)> = vec![(VERIFIED, 0)];
        from_kinds.extend(KINDS.iter().map(|k| (k.outcome(), k.exit_code())));
        assert_eq!(from_kinds, OUTCOMES);
    }

    /// README.md's table of outcomes lists exactly [`OUTCOMES`], each
    /// with its exit code.
    #[test]
    fn readme_documents_every_outcome() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let documented: Vec<(String, u8)> = readme
            .lines()
            .filter_map(|line| {
                // | 3 | `network_error` | ... |
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let code = cells.get(1)?.parse().ok()?;
                let outcome = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((outcome.to_string(), code))
            })
            .collect();
        let expected: Vec<(String, u8)> =
            OUTCOMES.iter().map(|(o, c)| (o.to_string(), *c)).collect();
        assert_eq!(documented, expected);
        // not_sent has no exit code of its own, and a row of the table.
        assert!(
            readme.contains(&format!("| – | `{NOT_SENT}` |")),
            "README.md lacks the not_sent row"
        );
        assert!(crate::cli::AFTER_HELP.contains(&format!("and {NOT_SENT} for a file")));
    }
}
