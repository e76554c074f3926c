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
    /// The file to send.
    pub file: PathBuf,
    /// Where `file` came from.
    pub file_source: Source,
    /// Its base name, sent in 1028 (§2).
    pub file_name: String,
    /// Folder of me.info and priv.key.
    pub state_dir: PathBuf,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Read/write timeout.
    pub timeout: Duration,
    /// Fixed RSA key instead of a generated one.
    pub rsa_key: Option<PathBuf>,
    /// Protocol revision (PROTOCOL.md §9).
    pub revision: Revision,
    /// 2024a/2024c packet options (defaults for the other revisions).
    pub packets: PacketOptions,
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
        let info = match (&args.server, &args.name, &args.file) {
            (Some(_), Some(_), Some(_)) => None,
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
        let file_flag = args.file.as_ref().map(|p| p.to_string_lossy().into_owned());
        let (file_text, file_source) = pick(file_flag, |i| &i.file);
        let file = match (&args.file, file_source) {
            (Some(p), _) => p.clone(),
            _ => PathBuf::from(file_text),
        };
        let (host, port) =
            parse_server(&server).ok_or_else(|| bad_server(&server, server_source))?;
        check_name(&name, name_source)?;
        let file_name = base_name(&file, file_source)?;
        let packets = packet_options(args)?;
        Ok(Settings {
            server,
            host,
            port,
            server_source,
            name,
            name_source,
            file,
            file_source,
            file_name,
            state_dir: args.state_dir.clone(),
            connect_timeout: args.connect_timeout(),
            timeout: args.timeout(),
            rsa_key: args.rsa_key.clone(),
            revision: args.revision,
            packets,
        })
    }
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
    let name = file
        .file_name()
        .ok_or_else(|| bad("the path has no file name"))?
        .to_str()
        .ok_or_else(|| bad("its name is not valid UTF-8"))?;
    file_name_field(name).map_err(|e| bad(&e.to_string()))?;
    Ok(name.to_string())
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
}
