//! What to send where: flags first, `transfer.info` for whatever they leave
//! out (PROTOCOL.md §7).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sealdrop_protocol::client::{client_name_field, file_name_field, PacketOptions};
use sealdrop_protocol::revision::FileLayout;
use sealdrop_protocol::Revision;

use crate::cli::Args;
use crate::report::Failure;

/// Name of the configuration file read from the working directory (§7).
pub const TRANSFER_INFO: &str = "transfer.info";

/// Largest `transfer.info` read: three short lines. Anything bigger is not
/// one, and reading it whole must stay cheap.
const MAX_TRANSFER_INFO_LEN: u64 = 64 * 1024;

/// Where a setting came from, so error messages point at the right place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// `transfer.info`.
    TransferInfo,
}

impl Source {
    /// Where to fix a value of `what`: "--server" or "line 1 of transfer.info".
    pub fn hint(self, flag: &str, line: u8) -> String {
        match self {
            Source::Flag => format!("--{flag}"),
            Source::TransferInfo => format!("line {line} of {TRANSFER_INFO}"),
        }
    }
}

/// The resolved configuration of one run.
#[derive(Debug)]
pub struct Settings {
    /// `HOST:PORT` as given.
    pub server: String,
    /// Host part, without IPv6 brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Where `server` came from.
    pub server_source: Source,
    /// Client name for 1025.
    pub name: String,
    /// Where `name` came from.
    pub name_source: Source,
    /// The files to send, in order (at least one).
    pub files: Vec<FileArg>,
    /// Folder of me.info and priv.key.
    pub state_dir: PathBuf,
    /// Where `state_dir` came from.
    pub state_dir_origin: StateDirOrigin,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Read/write timeout.
    pub timeout: Duration,
    /// How long connection failures are retried.
    pub retry_for: Duration,
    /// Fixed RSA key instead of a generated one.
    pub rsa_key: Option<PathBuf>,
    /// Protocol revision (PROTOCOL.md §9).
    pub revision: Revision,
    /// 2024a/2024c packet options (defaults for the other revisions).
    pub packets: PacketOptions,
}

/// One file to send.
#[derive(Debug, Clone)]
pub struct FileArg {
    /// The path as given; `-` is standard input.
    pub path: PathBuf,
    /// Where the path came from.
    pub source: Source,
    /// The name the server stores it under (its base name, or `--as`).
    pub name: String,
}

impl FileArg {
    /// True for `-`: standard input.
    pub fn is_stdin(&self) -> bool {
        self.path.as_os_str() == STDIN_PATH
    }
}

/// The path that means standard input.
pub const STDIN_PATH: &str = "-";

/// Why the state folder is where it is (README.md "Where the client keeps
/// its identity").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateDirOrigin {
    /// `--state-dir` or `$SEALDROP_STATE_DIR`.
    Given,
    /// Beside `transfer.info`, which drives the run (the original
    /// clients' layout).
    TransferInfo,
    /// The per-user default for this server.
    PerServer,
    /// `me.info` in the working directory, kept from before the per-user
    /// default existed; the run says where to move it.
    Legacy {
        /// The per-user folder it would otherwise be.
        default: PathBuf,
    },
}

/// The three lines of `transfer.info`.
#[derive(Debug, PartialEq, Eq)]
pub struct TransferInfo {
    /// Line 1: `HOST:PORT`.
    pub server: String,
    /// Line 2: client name.
    pub name: String,
    /// Line 3: path of the file, without surrounding spaces and tabs.
    pub file: String,
    /// Line 3 as written (only the line ending removed): the path when a
    /// file's name really begins or ends with a blank.
    pub file_as_written: String,
}

impl Settings {
    /// Combines the flags with `transfer.info` (read from the working
    /// directory only when a flag is missing) and checks every value.
    pub fn resolve(args: &Args) -> Result<Settings, Failure> {
        let given = args.all_files();
        let info = match (&args.server, &args.name, given.is_empty()) {
            (Some(_), Some(_), false) => None,
            _ => Some(read_transfer_info(Path::new(TRANSFER_INFO))?),
        };
        let pick = |flag: Option<String>, line: fn(&TransferInfo) -> &String| match flag {
            Some(v) => (v, Source::Flag),
            None => (
                info.as_ref().map(line).cloned().unwrap_or_default(),
                Source::TransferInfo,
            ),
        };
        let (server, server_source) = pick(args.server.clone(), |i| &i.server);
        let (name, name_source) = pick(args.name.clone(), |i| &i.name);
        let (host, port) =
            parse_server(&server).ok_or_else(|| bad_server(&server, server_source))?;
        check_name(&name, name_source)?;
        let paths: Vec<(PathBuf, Source)> = match (given.is_empty(), &info) {
            (false, _) => given.into_iter().map(|p| (p, Source::Flag)).collect(),
            (true, Some(i)) => vec![(info_file(i), Source::TransferInfo)],
            (true, None) => Vec::new(),
        };
        let files = file_args(paths, args.store_as.as_deref())?;
        let packets = packet_options(args)?;
        let (state_dir, state_dir_origin) = state_dir(args, info.is_some(), &host, port)?;
        Ok(Settings {
            server,
            host,
            port,
            server_source,
            name,
            name_source,
            files,
            state_dir,
            state_dir_origin,
            connect_timeout: args.connect_timeout(),
            timeout: args.timeout(),
            retry_for: args.retry_for(),
            rsa_key: args.rsa_key.clone(),
            revision: args.revision,
            packets,
        })
    }
}

/// Names each file: its base name, or `--as` (one file only; required
/// for `-`).
fn file_args(
    paths: Vec<(PathBuf, Source)>,
    store_as: Option<&str>,
) -> Result<Vec<FileArg>, Failure> {
    if store_as.is_some() && paths.len() > 1 {
        return Err(Failure::usage(format!(
            "--as names one file, and {} are given; send them in separate runs to rename each",
            paths.len()
        )));
    }
    let stdin = paths
        .iter()
        .filter(|(p, _)| p.as_os_str() == STDIN_PATH)
        .count();
    if stdin > 1 {
        return Err(Failure::usage(
            "`-` (standard input) can be given only once",
        ));
    }
    paths
        .into_iter()
        .map(|(path, source)| {
            let name = match store_as {
                Some(name) => {
                    file_name_field(name).map_err(|_| {
                        Failure::usage(format!(
                            "cannot store a file as {}: {}",
                            crate::report::quoted(name),
                            name_problem(name)
                        ))
                    })?;
                    name.to_string()
                }
                None if path.as_os_str() == STDIN_PATH => {
                    return Err(Failure::usage(
                        "standard input (`-`) has no name: give the name to store it under \
                         with --as NAME",
                    ))
                }
                None => base_name(&path, source)?,
            };
            Ok(FileArg { path, source, name })
        })
        .collect()
}

/// Where `me.info` and `priv.key` live (README.md): `--state-dir`; else
/// beside `transfer.info` when it drives the run; else the per-user
/// state folder for this server, unless an older run left `me.info` in
/// the working directory.
fn state_dir(
    args: &Args,
    transfer_info: bool,
    host: &str,
    port: u16,
) -> Result<(PathBuf, StateDirOrigin), Failure> {
    if let Some(dir) = &args.state_dir {
        check_no_tilde(dir)?;
        return Ok((dir.clone(), StateDirOrigin::Given));
    }
    if transfer_info {
        return Ok((PathBuf::from("."), StateDirOrigin::TransferInfo));
    }
    let base = default_state_base().ok_or_else(|| {
        Failure::usage(
            "no folder for me.info: neither $XDG_STATE_HOME nor $HOME is set; \
             give --state-dir DIR",
        )
    })?;
    let dir = base.join(server_folder(host, port));
    let legacy = Path::new(crate::identity::ME_INFO);
    if legacy.is_file() && !dir.join(crate::identity::ME_INFO).exists() {
        return Ok((PathBuf::from("."), StateDirOrigin::Legacy { default: dir }));
    }
    Ok((dir, StateDirOrigin::PerServer))
}

/// The folder of the per-server state folders:
/// `$XDG_STATE_HOME/sealdrop`, else `$HOME/.local/state/sealdrop`.
pub fn default_state_base() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })
        .map(|b| b.join("sealdrop"))
}

/// A `--state-dir` starting with a literal `~` came through a shell that
/// did not expand it (`--state-dir=~/x`: bash expands `~` only at the
/// start of a word): taken as it is, it would create a folder named `~`
/// in the working directory and keep the identity there.
fn check_no_tilde(dir: &Path) -> Result<(), Failure> {
    let text = dir.to_string_lossy();
    if !text.starts_with('~') {
        return Ok(());
    }
    let fix = match text.strip_prefix("~/").or((text == "~").then_some("")) {
        Some(rest) => {
            format!("--state-dir ~/{rest} (with a space) or --state-dir=\"$HOME/{rest}\"")
        }
        None => "--state-dir and the folder as two words, so the shell expands the ~, or the \
                 full path"
            .to_string(),
    };
    Err(Failure::usage(format!(
        "--state-dir {} starts with a literal ~ that no shell expanded (a shell expands ~ only \
         at the start of a word, so not in --state-dir=~/...); nothing was sent. Write {fix}",
        crate::report::quoted(&text)
    )))
}

/// The per-server folder name: `HOST_PORT`, with anything but letters,
/// digits, `.` and `-` turned into `_` (IPv6 colons, say).
pub fn server_folder(host: &str, port: u16) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{host}_{port}")
}

/// The `--packet-*` flags: only for the revisions that send packets
/// (2024a, 2024c), and consistent with each other.
fn packet_options(args: &Args) -> Result<PacketOptions, Failure> {
    let given = [
        ("--packet-size", args.packet_size.is_some()),
        ("--packet-base", args.packet_base.is_some()),
        ("--packet-mode", args.packet_mode.is_some()),
        ("--packet-fields", args.packet_fields.is_some()),
    ];
    let rev = args.revision;
    if rev.file_layout() != FileLayout::Packets {
        if let Some((flag, _)) = given.iter().find(|(_, on)| *on) {
            return Err(Failure::usage(format!(
                "{flag} applies to revisions 2024a and 2024c only, and the revision is {rev} \
                 (--revision or ${}); drop {flag} or choose a 2024 revision",
                crate::cli::REVISION_ENV
            )));
        }
    }
    let d = PacketOptions::default();
    let options = PacketOptions {
        size: args.packet_size,
        base: args.packet_base.unwrap_or(d.base),
        mode: args.packet_mode.map_or(d.mode, Into::into),
        fields: args.packet_fields.map_or(d.fields, Into::into),
    };
    options
        .check()
        .map_err(|e| Failure::usage(format!("{e}; see sealdrop-client --help")))?;
    Ok(options)
}

/// The file line 3 names: the path without surrounding blanks, unless
/// only the path as written names a file (a name may begin or end with a
/// space; an editor's stray blank is the likelier reading otherwise).
fn info_file(info: &TransferInfo) -> PathBuf {
    let trimmed = Path::new(&info.file);
    let written = Path::new(&info.file_as_written);
    if written != trimmed && !trimmed.exists() && written.exists() {
        return written.to_path_buf();
    }
    trimmed.to_path_buf()
}

/// Reads and parses `transfer.info`.
fn read_transfer_info(path: &Path) -> Result<TransferInfo, Failure> {
    let bytes = read_small(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read {}: {}; create it (HOST:PORT, name, file path, one per line) \
             or give --server, --name and --file",
            path.display(),
            crate::net::describe(&e)
        ))
    })?;
    parse_transfer_info(&bytes).map_err(|what| {
        Failure::usage(format!(
            "{} is malformed: {what}; it needs 3 lines: HOST:PORT, client name, file path \
             (or give --server, --name and --file)",
            path.display()
        ))
    })
}

fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_TRANSFER_INFO_LEN)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The UTF-8 byte-order mark some Windows editors put first.
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// What surrounds a value by accident and is dropped: spaces and tabs.
const BLANKS: [char; 2] = [' ', '\t'];

/// What each line holds, for messages.
const LINE_NAMES: [&str; 3] = ["HOST:PORT", "client name", "file path"];

/// Parses the three lines (§7), forgiving what editors add and naming
/// anything else plainly (the line, what is wrong, where):
///
/// * a UTF-8 byte-order mark is skipped; LF or CRLF line endings;
/// * spaces and tabs around a value are dropped (line 3 keeps them in
///   [`TransferInfo::file_as_written`]);
/// * lines after the third are ignored, so blank trailing lines are too;
/// * a missing or blank line, text that is not UTF-8 (UTF-16 included),
///   a control character (a lone CR, an escape) or a blank inside
///   `HOST:PORT` is an error.
pub fn parse_transfer_info(bytes: &[u8]) -> Result<TransferInfo, String> {
    if bytes.starts_with(b"\xff\xfe") || bytes.starts_with(b"\xfe\xff") {
        return Err(format!(
            "it is UTF-16 text (it starts with the bytes {:02X} {:02X}); save it as UTF-8 or ASCII",
            bytes[0], bytes[1]
        ));
    }
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut lines = bytes.split(|&b| b == b'\n');
    let mut values = Vec::with_capacity(LINE_NAMES.len());
    for (i, what) in LINE_NAMES.iter().enumerate() {
        let n = i + 1;
        let raw = lines.next().unwrap_or_default();
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| {
            let at = e.valid_up_to();
            let column = String::from_utf8_lossy(&raw[..at]).chars().count() + 1;
            format!(
                "line {n} ({what}) is not UTF-8 text: byte {:02X} at column {column}; \
                 save the file as UTF-8 or ASCII",
                raw[at]
            )
        })?;
        let value = line.trim_matches(BLANKS);
        if value.is_empty() {
            let state = if raw.is_empty() { "empty" } else { "blank" };
            return Err(format!("line {n} ({what}) is {state}"));
        }
        let lead = line.len() - line.trim_start_matches(BLANKS).len();
        let lead = line[..lead].chars().count();
        if let Some((column, c)) = value.chars().enumerate().find(|(_, c)| c.is_control()) {
            let c = match c {
                '\r' => "a carriage return (CR: lines must end with LF or CRLF)".to_string(),
                '\t' => "a tab".to_string(),
                c => format!("the control character {}", c.escape_default()),
            };
            return Err(format!(
                "line {n} ({what}) holds {c} at column {}: {}",
                lead + column + 1,
                crate::report::quoted(line)
            ));
        }
        values.push((value.to_string(), line.to_string()));
    }
    let (server, server_line) = values.remove(0);
    if let Some((column, c)) = server.char_indices().find(|(_, c)| c.is_whitespace()) {
        let column = server_line.find(&server).unwrap_or(0) + column;
        let which = if c == ' ' {
            "a space".to_string()
        } else {
            format!("a blank (U+{:04X})", u32::from(c))
        };
        return Err(format!(
            "line 1 (HOST:PORT) holds {which} at column {}: {}",
            server_line[..column].chars().count() + 1,
            crate::report::quoted(&server_line)
        ));
    }
    let (name, _) = values.remove(0);
    let (file, file_as_written) = values.remove(0);
    Ok(TransferInfo {
        server,
        name,
        file,
        file_as_written,
    })
}

/// Splits `HOST:PORT`; IPv6 hosts are written `[::1]:1357`.
pub fn parse_server(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
        return None;
    }
    Some((host.to_string(), port))
}

fn bad_server(text: &str, source: Source) -> Failure {
    Failure::usage(format!(
        "server address must be HOST:PORT with a port of 1-65535, got {}; fix {}",
        crate::report::quoted(text),
        source.hint("server", 1)
    ))
}

fn check_name(name: &str, source: Source) -> Result<(), Failure> {
    client_name_field(name).map(drop).map_err(|e| {
        // Point at the first character a server would refuse.
        let at = name
            .chars()
            .enumerate()
            .find(|(_, c)| !matches!(c, ' '..='~'))
            .map_or(String::new(), |(i, c)| {
                format!(
                    " ({} at column {} is not printable ASCII)",
                    crate::report::quoted(&c.to_string()),
                    i + 1
                )
            });
        Failure::usage(format!(
            "{e}: {}{at}; fix {}",
            crate::report::quoted(name),
            source.hint("name", 2)
        ))
    })
}

/// The base name sent in 1028 (§2): the last path component, which must be
/// printable ASCII since servers refuse anything else.
fn base_name(file: &Path, source: Source) -> Result<String, Failure> {
    let bad = |why: &str| {
        Failure::usage(format!(
            "cannot send {}: {why}; fix {}",
            crate::report::quoted(&file.to_string_lossy()),
            source.hint("file", 3)
        ))
    };
    let raw = file
        .file_name()
        .ok_or_else(|| bad("the path has no file name"))?;
    let name = raw.to_string_lossy();
    if file_name_field(&name).is_err() || raw.to_str().is_none() {
        return Err(Failure::usage(format!(
            "cannot send {}: {}",
            crate::report::quoted(&file.to_string_lossy()),
            name_problem(&name)
        )));
    }
    Ok(name.into_owned())
}

/// Says exactly why the protocol cannot carry `name` (§2: 1 to 254
/// printable ASCII bytes, not `.` or `..`, no `/` or `\\`) and how to
/// send the file anyway.
pub fn name_problem(name: &str) -> String {
    const FIX: &str = "send it under another name with --as NAME";
    if name.is_empty() || name == "." || name == ".." {
        return format!(
            "the name {} is not a file name; {FIX}",
            crate::report::quoted(name)
        );
    }
    if let Some((at, c)) = name
        .char_indices()
        .find(|(_, c)| !(' '..='~').contains(c) || *c == '/' || *c == '\\')
    {
        let bytes: Vec<String> = c
            .to_string()
            .bytes()
            .map(|b| format!("0x{b:02X}"))
            .collect();
        let what = match c {
            '/' | '\\' => "a path separator".to_string(),
            c if c.is_control() => "a control character".to_string(),
            '\u{FFFD}' => "not valid UTF-8".to_string(),
            c => format!("{c:?}, not ASCII"),
        };
        return format!(
            "byte {} at offset {at} of the name ({what}) cannot be sent: the protocol carries \
             printable ASCII names only (0x20-0x7E); {FIX}",
            bytes.join(" ")
        );
    }
    if name.len() > 254 {
        return format!(
            "the name is {} bytes and the protocol carries at most 254; {FIX}",
            name.len()
        );
    }
    format!("the protocol cannot carry this name; {FIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &[u8]) -> Result<TransferInfo, String> {
        parse_transfer_info(text)
    }

    #[test]
    fn transfer_info_tolerates_crlf_and_blanks() {
        let info = info(b"127.0.0.1:1357\r\nalice \r\n/tmp/a b.txt\r\n").unwrap();
        assert_eq!(
            info,
            TransferInfo {
                server: "127.0.0.1:1357".into(),
                name: "alice".into(),
                file: "/tmp/a b.txt".into(),
                file_as_written: "/tmp/a b.txt".into(),
            }
        );
    }

    #[test]
    fn a_bom_and_stray_blanks_are_dropped() {
        let got =
            info(b"\xef\xbb\xbf 127.0.0.1:1357\t\n\talice  \n  data/r.pdf \n\n \n\n").unwrap();
        assert_eq!(got.server, "127.0.0.1:1357");
        assert_eq!(got.name, "alice");
        assert_eq!(got.file, "data/r.pdf");
        assert_eq!(got.file_as_written, "  data/r.pdf ");
        // Inner spaces belong to the value.
        assert_eq!(info(b"h:1\nal ice\na  b\n").unwrap().name, "al ice");
        // No line ending after the last line; lines after the third.
        assert_eq!(info(b"h:1\na\nf").unwrap().file, "f");
        assert_eq!(info(b"h:1\na\nf\nextra\n").unwrap().file, "f");
    }

    #[test]
    fn what_cannot_be_fixed_is_named_with_its_line_and_column() {
        let err = |text: &[u8]| info(text).unwrap_err();
        assert_eq!(err(b"h:1\na\n"), "line 3 (file path) is empty");
        assert_eq!(err(b"h:1\n \t\nf\n"), "line 2 (client name) is blank");
        assert_eq!(err(b""), "line 1 (HOST:PORT) is empty");
        assert_eq!(
            err(b"127.0.0.1 :1357\na\nf\n"),
            "line 1 (HOST:PORT) holds a space at column 10: '127.0.0.1 :1357'"
        );
        assert_eq!(
            err(b"  host\xc2\xa0:1\na\nf\n"),
            "line 1 (HOST:PORT) holds a blank (U+00A0) at column 7: '  host\u{a0}:1'"
        );
        assert_eq!(
            err(b"h:1\nali\tce\nf\n"),
            "line 2 (client name) holds a tab at column 4: 'ali\\tce'"
        );
        let old_mac = err(b"h:1\ralice\rfile\r");
        assert!(
            old_mac.starts_with("line 1 (HOST:PORT) holds a carriage return (CR: lines must end with LF or CRLF) at column 4: 'h:1\\ralice"),
            "{old_mac}"
        );
        assert_eq!(
            err(b"h:1\na\nev\x1bil\n"),
            "line 3 (file path) holds the control character \\u{1b} at column 3: 'ev\\u{1b}il'"
        );
        assert_eq!(
            err(b"h:1\ncaf\xe9\nf\n"),
            "line 2 (client name) is not UTF-8 text: byte E9 at column 4; save the file as UTF-8 or ASCII"
        );
        let utf16 = err(b"\xff\xfeh\x00:\x001\x00");
        assert!(
            utf16.starts_with("it is UTF-16 text (it starts with the bytes FF FE)"),
            "{utf16}"
        );
    }

    #[test]
    fn line_3_keeps_its_blanks_only_when_a_file_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let with = |file: String, file_as_written: String| TransferInfo {
            server: "h:1".into(),
            name: "a".into(),
            file,
            file_as_written,
        };
        // Neither exists: the trimmed path (the one an error names).
        let i = with(at("r.pdf"), at("r.pdf") + " ");
        assert_eq!(info_file(&i), Path::new(&at("r.pdf")));
        // Only the name with the blank exists: that one.
        std::fs::write(at("r.pdf "), b"x").unwrap();
        assert_eq!(info_file(&i), Path::new(&(at("r.pdf") + " ")));
        // Both exist: the trimmed one.
        std::fs::write(at("r.pdf"), b"x").unwrap();
        assert_eq!(info_file(&i), Path::new(&at("r.pdf")));
    }

    #[test]
    fn a_refused_name_points_at_the_character() {
        let e = check_name("caf\u{e9}", Source::TransferInfo).unwrap_err();
        assert!(
            e.message.contains(
                "('\u{e9}' at column 4 is not printable ASCII); fix line 2 of transfer.info"
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn server_address_forms() {
        assert_eq!(
            parse_server("localhost:1357"),
            Some(("localhost".into(), 1357))
        );
        assert_eq!(parse_server("[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(parse_server("host"), None);
        assert_eq!(parse_server("host:0"), None);
        assert_eq!(parse_server("host:70000"), None);
        assert_eq!(parse_server(":1357"), None);
    }

    #[test]
    fn base_name_is_the_last_component() {
        let f = |p: &str| base_name(Path::new(p), Source::Flag).map_err(|e| e.message);
        assert_eq!(f("/data/x/report.pdf").unwrap(), "report.pdf");
        assert_eq!(f("report.pdf").unwrap(), "report.pdf");
        assert!(f("/").is_err());
        assert!(f("dir/..").is_err());
        assert!(f("caf\u{e9}.txt").is_err());
    }

    #[test]
    fn a_refused_name_names_the_byte_and_suggests_as() {
        let m = name_problem("caf\u{e9}.txt");
        assert!(m.contains("0xC3 0xA9 at offset 3"), "{m}");
        assert!(m.contains("--as NAME"), "{m}");
        let m = name_problem("a\tb");
        assert!(
            m.contains("0x09 at offset 1") && m.contains("control"),
            "{m}"
        );
        let m = name_problem(&"x".repeat(255));
        assert!(m.contains("255 bytes"), "{m}");
        // Spaces are printable ASCII: allowed.
        assert!(file_name_field("a b.txt").is_ok());
    }

    #[test]
    fn per_server_folders_are_safe_names() {
        assert_eq!(server_folder("Files.Example", 1357), "files.example_1357");
        assert_eq!(server_folder("::1", 1256), "__1_1256");
        assert_eq!(server_folder("../x", 1), ".._x_1");
    }
}
