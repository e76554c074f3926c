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
    /// Line 3: path of the file.
    pub file: String,
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
            (true, Some(i)) => vec![(PathBuf::from(&i.file), Source::TransferInfo)],
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
        return Ok((dir.clone(), StateDirOrigin::Given));
    }
    if transfer_info {
        return Ok((PathBuf::from("."), StateDirOrigin::TransferInfo));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })
        .ok_or_else(|| {
            Failure::usage(
                "no folder for me.info: neither $XDG_STATE_HOME nor $HOME is set; \
                 give --state-dir DIR",
            )
        })?;
    let dir = base.join("sealdrop").join(server_folder(host, port));
    let legacy = Path::new(crate::identity::ME_INFO);
    if legacy.is_file() && !dir.join(crate::identity::ME_INFO).exists() {
        return Ok((PathBuf::from("."), StateDirOrigin::Legacy { default: dir }));
    }
    Ok((dir, StateDirOrigin::PerServer))
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

/// Reads and parses `transfer.info`.
fn read_transfer_info(path: &Path) -> Result<TransferInfo, Failure> {
    let text = read_small(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read {}: {}; create it (HOST:PORT, name, file path, one per line) \
             or give --server, --name and --file",
            path.display(),
            crate::net::describe(&e)
        ))
    })?;
    parse_transfer_info(&text).map_err(|what| {
        Failure::usage(format!(
            "{} is malformed: {what}; it needs 3 lines: HOST:PORT, client name, file path",
            path.display()
        ))
    })
}

fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TRANSFER_INFO_LEN)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Parses the three lines (§7). LF or CRLF; surrounding white space is
/// not part of a value (editors leave trailing blanks); lines after the
/// third are ignored.
pub fn parse_transfer_info(text: &str) -> Result<TransferInfo, String> {
    let mut lines = text.lines().map(str::trim);
    let mut next = |what: &str| match lines.next() {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(format!("{what} is missing")),
    };
    Ok(TransferInfo {
        server: next("line 1 (HOST:PORT)")?,
        name: next("line 2 (client name)")?,
        file: next("line 3 (file path)")?,
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
        Failure::usage(format!(
            "{e}: {}; fix {}",
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

    #[test]
    fn transfer_info_tolerates_crlf_and_blanks() {
        let info = parse_transfer_info("127.0.0.1:1357\r\nalice \r\n/tmp/a b.txt\r\n").unwrap();
        assert_eq!(
            info,
            TransferInfo {
                server: "127.0.0.1:1357".into(),
                name: "alice".into(),
                file: "/tmp/a b.txt".into(),
            }
        );
        assert!(parse_transfer_info("127.0.0.1:1357\nalice\n").is_err());
        assert!(parse_transfer_info("127.0.0.1:1357\n\nfile\n").is_err());
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
