//! Command-line flags. Flags override `transfer.info` (PROTOCOL.md §7), so
//! scripts need no file on disk.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{Parser, ValueEnum};
use sealdrop_protocol::client::{Granularity, PacketFields};
use sealdrop_protocol::Revision;

use crate::report::{self, FailKind};

/// The environment variable that sets `--revision` when the flag is absent.
pub const REVISION_ENV: &str = "SEALDROP_REVISION";

/// The environment variable that sets `--state-dir` when the flag is absent.
pub const STATE_DIR_ENV: &str = "SEALDROP_STATE_DIR";

/// Default `--retry-for`: [`sealdrop_protocol::client::DEFAULT_RETRY_FOR`].
pub const DEFAULT_RETRY_FOR_SECS: f64 = 30.0;

/// Default `--connect-timeout`: generous for a loaded server on a LAN,
/// short enough that a wrong address fails a script quickly.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: f64 = 10.0;

/// Default `--timeout`: the longest wait for one read or write. A server
/// answers 2103 only after decrypting the last block and 2104 after an
/// fsync of the stored file, which can take seconds for a large file on a
/// slow disk.
pub const DEFAULT_TIMEOUT_SECS: f64 = 30.0;

/// Exit codes, shown after `--help` and documented in README.md. It names
/// no hidden flag: help shows only what users are meant to use.
pub const AFTER_HELP: &str = "\
Exit codes:
  0  every file was sent and verified (2104 after 1029)
  2  usage or configuration error: bad flags, missing or malformed transfer.info,
     malformed me.info, an unusable key file, a file name or size the protocol
     cannot carry
  3  network failure: the host name does not resolve (not retried), or the connection
     could not be opened or kept breaking for --retry-for (at least 3 retries), or no
     answer within --timeout on the first try and 3 retries; or the port accepted the
     connection and closed it or said nothing within --timeout, on the first try and
     one retry, never sending a byte (not how a sealdrop server answers: check the port)
  4  the server refused us: registration failed (2101), also after a denied reconnect (2106)
  5  the cksum was still wrong after four sends (1031 sent)
  6  the server answered 2107 (general error) on the first try and on all 3 retries
  7  local I/O error: a file cannot be read or changed size while being sent, or the
     state folder (me.info, priv.key) cannot be created or written; checked before sending
  8  protocol violation: the server sent a response the protocol does not allow there,
     or answered in another revision's codes (the message names the revision it
     seems to speak), or the port answered in another protocol (HTTP, SSH, TLS...):
     no sealdrop server there (not retried)
  9  outcome unknown: the file was sent and the server told it arrived intact (1029),
     and the server's answer (2104) did not arrive, also when asked again; whether
     it kept the file is not known. Run again: resending is safe (a same-name upload
     replaces the stored copy once verified)
With several files: the code of the first file that failed; each failure line starts
with its file, and the files a failure left unsent follow it as \"FILE: not sent\".
The codes above are 2023c's; every revision uses its own (PROTOCOL.md §9), e.g. 1607
for 2107 in 2024a/2024c. With --json the object's \"outcome\" names the exit code:
verified (0), usage_error (2), network_error (3), registration_failed (4),
crc_failed (5), server_error (6), local_io_error (7), protocol_error (8),
outcome_unknown (9); and not_sent for a file never started because a failure ended
the run first (no code of its own: the run's is the first failure's).

Revisions and packets:
  --revision picks the protocol revision (default 2023c, or $SEALDROP_REVISION).
  2024a/2024c send the file as packets. By default the whole file goes as one packet
  (1 of 1): every public 2024 server surveyed accepts that, whatever its own cutting
  rule. --packet-size N and the other --packet-* flags choose the common public forms
  instead; a file that would need more than 65535 packets of N bytes is sent in the
  smallest multiple of 16 that fits (a note says so).

Examples:
  sealdrop-client                      # everything from ./transfer.info
  sealdrop-client --server 127.0.0.1:1357 --name alice --file ./report.pdf --state-dir ~/.sealdrop
  sealdrop-client --json --quiet --timeout 60 --file big.iso
  sealdrop-client --revision 2024c --server files.example:1256   # one packet per file
  sealdrop-client --revision 2024c --packet-size 1024            # 1 KiB split packets, from 1
  sealdrop-client --revision 2024a --packet-size 4096 --packet-mode each --packet-fields packet";

/// Send files to a sealdrop server, encrypted, and verify their checksums.
///
/// Without flags, reads `transfer.info` from the working directory: line 1
/// HOST:PORT, line 2 the client name, line 3 the path of the file. A first
/// run registers and saves `me.info` and `priv.key` (in the state folder);
/// later runs reconnect with them. Several files go in one session.
#[derive(Debug, Parser)]
#[command(name = "sealdrop-client", version, after_help = AFTER_HELP, args_override_self = true)]
pub struct Args {
    /// Server address, overriding line 1 of transfer.info [example: --server 127.0.0.1:1357]
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,

    /// Client name to register with, 1-100 printable ASCII characters, overriding line 2
    /// of transfer.info [example: --name alice]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Files to send, all in one session; their base names are what the server stores.
    /// `-` reads standard input (needs --as). Without files, line 3 of transfer.info
    /// names the one file [example: report.pdf notes.txt]
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// A file to send, as a positional FILE; may be repeated [example: --file ./reports/q3.pdf]
    #[arg(long = "file", value_name = "PATH", action = clap::ArgAction::Append)]
    pub file_flags: Vec<PathBuf>,

    /// Store the file under this name instead of its base name (one file only; needed
    /// with `-`) [example: --as q3-final.pdf]
    #[arg(long = "as", value_name = "NAME")]
    pub store_as: Option<String>,

    /// Folder holding me.info and priv.key, created if missing. Default: beside
    /// transfer.info when that file is read, else $XDG_STATE_HOME/sealdrop/HOST_PORT
    /// (~/.local/state/sealdrop/HOST_PORT) [example: --state-dir ~/.sealdrop]
    #[arg(long, value_name = "DIR", env = STATE_DIR_ENV)]
    pub state_dir: Option<PathBuf>,

    /// Seconds to keep retrying while the server cannot be reached or the connection
    /// breaks (waits double from 0.2 s up to 5 s, with jitter; at least 3 retries)
    /// [example: --retry-for 120]
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_RETRY_FOR_SECS,
          value_parser = parse_seconds)]
    pub retry_for: f64,

    /// Seconds to wait for the TCP connection to open [example: --connect-timeout 3]
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS,
          value_parser = parse_seconds)]
    pub connect_timeout: f64,

    /// Seconds to wait for any one read or write (a response, or progress while sending);
    /// each of the 3 retries waits again [example: --timeout 120]
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_SECS,
          value_parser = parse_seconds)]
    pub timeout: f64,

    /// Print nothing but errors: no progress bar, no retry notes, no success line
    #[arg(long, short)]
    pub quiet: bool,

    /// Print one JSON object on stdout at the end, also on failure:
    /// {"file","bytes","cksum","attempts","seconds","client_id","outcome","revision","packets",
    /// "error"}
    #[arg(long)]
    pub json: bool,

    /// Protocol revision to speak (PROTOCOL.md §9): 2022c, 2023a, 2023c, 2024a or 2024c.
    /// Their default ports: 1234 (2022c, 2023a), 1357 (2023c), 1256 (2024a, 2024c)
    #[arg(long, value_name = "REV", env = REVISION_ENV, default_value = "2023c",
          value_parser = revision_parser())]
    pub revision: Revision,

    /// 2024a/2024c: bytes per packet, a positive multiple of 16: ciphertext bytes in split
    /// mode, plaintext bytes in each mode (N + 16 on the wire). Public peers use 1024, 4000,
    /// 4096, 8192, 1048576 [default: the whole file in one packet, which every public 2024
    /// server accepts]
    #[arg(long, value_name = "N", value_parser = parse_packet_size)]
    pub packet_size: Option<u32>,

    /// 2024a/2024c: number of the first packet, 0 or 1 [default: 1, as every public client]
    #[arg(long, value_name = "0|1", value_parser = clap::value_parser!(u16).range(0..=1))]
    pub packet_base: Option<u16>,

    /// 2024a/2024c: split = encrypt the whole file once and cut the ciphertext; each =
    /// encrypt and pad every packet alone (zero IV each time) [default: split]
    #[arg(long, value_name = "MODE", value_enum)]
    pub packet_mode: Option<PacketMode>,

    /// 2024a/2024c: what content_size and orig_file_size describe: the whole file, or
    /// (with --packet-mode each) each packet [default: whole]
    #[arg(long, value_name = "FIELDS", value_enum)]
    pub packet_fields: Option<PacketFieldsArg>,

    /// Use this RSA private key (DER PKCS#8 or PKCS#1, or their base64) instead of
    /// generating one; for byte-exact tests
    #[arg(long, value_name = "FILE", hide = true)]
    pub rsa_key: Option<PathBuf>,
}

/// `--packet-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PacketMode {
    /// The whole file encrypted once, the ciphertext cut into packets.
    Split,
    /// Every packet's plaintext encrypted and padded alone.
    Each,
}

impl From<PacketMode> for Granularity {
    fn from(m: PacketMode) -> Self {
        match m {
            PacketMode::Split => Granularity::Split,
            PacketMode::Each => Granularity::Each,
        }
    }
}

/// `--packet-fields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PacketFieldsArg {
    /// Sizes of the whole file.
    Whole,
    /// Sizes of each packet (each mode only).
    Packet,
}

impl From<PacketFieldsArg> for PacketFields {
    fn from(f: PacketFieldsArg) -> Self {
        match f {
            PacketFieldsArg::Whole => PacketFields::Whole,
            PacketFieldsArg::Packet => PacketFields::Packet,
        }
    }
}

/// `--revision`: one of the five names, which the help and the shell
/// completions list.
fn revision_parser() -> impl clap::builder::TypedValueParser<Value = Revision> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Revision::ALL.map(Revision::name))
        .try_map(|text| text.parse::<Revision>().map_err(|e| e.to_string()))
}

fn parse_packet_size(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of bytes"))?;
    if n == 0 || !n.is_multiple_of(16) {
        return Err(format!("{n} is not a positive multiple of 16"));
    }
    Ok(n)
}

impl Args {
    /// `--connect-timeout` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout)
    }

    /// `--timeout` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }

    /// `--retry-for` as a duration.
    pub fn retry_for(&self) -> Duration {
        Duration::from_secs_f64(self.retry_for)
    }

    /// Every file named, positional ones first, then the `--file` ones.
    pub fn all_files(&self) -> Vec<PathBuf> {
        self.files.iter().chain(&self.file_flags).cloned().collect()
    }
}

/// Longest timeout accepted: a day. A longer one is almost surely a typo,
/// and `Duration::from_secs_f64` must not overflow.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

fn parse_seconds(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= MAX_TIMEOUT_SECS) {
        return Err(format!(
            "must be more than 0 and at most {MAX_TIMEOUT_SECS} seconds"
        ));
    }
    Ok(secs)
}

/// The command line as completions and the man page show it: the flags of
/// `--help`, without the hidden ones (clap_complete would offer those too).
pub fn public_command() -> clap::Command {
    use clap::CommandFactory;
    let full = Args::command();
    clap::Command::new(PROGRAM)
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .long_about(full.get_long_about().cloned().unwrap_or_default())
        .args(full.get_arguments().filter(|a| !a.is_hide_set()).cloned())
}

/// The program's name, as completions and the man page call it.
pub const PROGRAM: &str = "sealdrop-client";

/// Reports a flag error (exit 2) in one line, or prints --help / --version
/// (exit 0).
pub fn usage_error(e: clap::Error, started: Instant) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // Printing help cannot usefully fail.
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("bad arguments");
    let first = first.trim_start_matches("error: ");
    // clap lists the accepted values on a line of their own: keep them.
    let values = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("[possible values: "))
        .and_then(|v| v.strip_suffix(']'))
        .map(|v| format!(" (one of {v})"))
        .unwrap_or_default();
    let message = format!("{first}{values}; see sealdrop-client --help");
    let json = std::env::args().any(|a| a == "--json");
    report::early_failure(FailKind::Usage, &message, json, started)
}
