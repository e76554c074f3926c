//! Command-line flags, `port.info`, and the limits they set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pg::DatabaseUrl;
use crate::store::{StoreConfig, SyncMode};
use clap::Parser;
use sealdrop_protocol::consts::{DEFAULT_PORT, MAX_PLAINTEXT_SIZE};
use sealdrop_protocol::crypto::encrypted_len;
use sealdrop_protocol::decode::RevisionChoice;
use sealdrop_protocol::store::Quota;
use sealdrop_protocol::{Revision, ServerConfig};

/// Default cap on open client connections. Each idle connection costs a
/// few KiB and one file descriptor; the server raises its soft descriptor
/// limit to fit at start.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time given to transfers in flight after SIGTERM or SIGINT.
pub const DEFAULT_DRAIN_SECS: u64 = 30;

/// Receives files from sealdrop clients (every protocol revision) and
/// stores them under the data directory.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Args {
    /// Address and port to listen on; may be given several times. Each
    /// listener detects every connection's protocol revision from its first
    /// request; codes 1025-1031 mean 2023c there unless tagged `=2024a`
    /// (`0.0.0.0:1256=2024a`). `=only:REV` pins a listener to one revision.
    /// Without it the port comes from --port-file, on all IPv4 addresses.
    #[arg(long, value_name = "ADDR:PORT[=TAG]")]
    pub listen: Vec<ListenSpec>,

    /// File holding the TCP port on one line, as the original server read
    /// it. Missing or invalid: a warning and port 1357.
    #[arg(long, value_name = "PATH", default_value = "port.info")]
    pub port_file: PathBuf,

    /// Directory for the database (defensive.db) and received files
    /// (`files/<client id hex>/<name>`).
    #[arg(long, value_name = "DIR", default_value = ".", global = true)]
    pub data_dir: PathBuf,

    /// Most client connections open at once; beyond it the server stops
    /// accepting until connections fall below 90% of the cap.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Largest file (plaintext bytes) accepted; suffixes K, M, G, T (powers
    /// of 1024). Default and maximum: the protocol's limit, 4294967023.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value_t = MAX_PLAINTEXT_SIZE)]
    pub max_file_size: u64,

    /// Seconds a client may take to send a complete request header.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub header_timeout: u64,

    /// Seconds a connection may stay idle between requests (or not read
    /// its responses) before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub idle_timeout: u64,

    /// Minimum upload rate in bytes per second while file content streams,
    /// averaged over --progress-window; slower uploads are closed.
    #[arg(long, value_name = "BYTES_PER_SEC", default_value_t = 6554)]
    pub min_rate: u64,

    /// Window in seconds over which --min-rate is measured.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub progress_window: u64,

    /// Bytes of responses buffered for a client that does not read them
    /// before the server stops reading from it.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64K")]
    pub max_output: u64,

    /// Seconds a complete upload whose connection closed waits for a
    /// verdict from another connection before it is thrown away.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub orphan_ttl: u64,

    /// Seconds given to transfers in flight after SIGTERM or SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_timeout: u64,

    /// How confirmed files are made durable before 2104. syncfs: one or
    /// two filesystem syncs for all files confirmed in one loop pass (fastest
    /// with many clients; also waits for other dirty data on the same
    /// filesystem, so give the data directory its own). fsync: one fsync
    /// per file and per client folder (touches nothing else).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = SyncModeArg::Syncfs)]
    pub sync_mode: SyncModeArg,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by
    /// default). The page is not authenticated: give a loopback or private
    /// address. It holds counts and sizes, never names, keys or content.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// Least severe messages logged; `warning` (journald's name) is
    /// accepted for warn. RUST_LOG, if set, replaces it.
    #[arg(
        long,
        value_name = "LEVEL",
        value_enum,
        ignore_case = true,
        default_value_t = LogLevel::Info
    )]
    pub log_level: LogLevel,

    /// Validate the configuration (flags, port file, data directory,
    /// database) and exit: 0 if usable, 1 if not, also 1 when other servers
    /// hold the data directory or the SQLite database a start would need
    /// (a running server of this same configuration: 0 and a note).
    /// Without --listen (and outside socket activation) the port file must
    /// hold a port.
    #[arg(long)]
    pub check_config: bool,

    /// Most bytes one client may keep (its stored files added up);
    /// suffixes K, M, G, T. An upload that would exceed it is refused with
    /// the revision's error answer. Default unlimited; a client's own quota
    /// (`clients quota`) replaces it. Administration commands: the server's
    /// default to show when no server answers on the control socket.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, global = true)]
    pub quota_bytes: Option<u64>,

    /// Most files one client may keep. Default unlimited; a client's own
    /// quota (`clients quota`) replaces it. Administration commands: the
    /// server's default to show when no server answers on the control
    /// socket.
    #[arg(long, value_name = "N", global = true)]
    pub quota_files: Option<u64>,

    /// Unix socket on which the running server takes administration
    /// commands (mode 0600; see `sealdrop-server help clients`). Default:
    /// control.sock in the data directory.
    #[arg(long, value_name = "PATH", global = true)]
    pub control_socket: Option<PathBuf>,

    /// Where the records are kept: `sqlite:` (the default: defensive.db in
    /// the data directory), `sqlite:PATH`, or
    /// `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=verify-full]`, which lets
    /// several servers share one database and one data directory. Read
    /// from SEALDROP_DATABASE_URL when not given; leave the password out
    /// and set PGPASSWORD. The administration commands take it too.
    #[arg(long, value_name = "URL", global = true)]
    pub database: Option<String>,

    /// This server's name among the servers sharing a data directory
    /// (PostgreSQL only): its temporary files and its control socket
    /// (control.ID.sock) carry it, so each server cleans up only its own.
    /// Letters, digits, '.' and '_'; unique per server and the same across
    /// its restarts. Default: SEALDROP_SERVER_ID, else the host name.
    #[arg(long, value_name = "ID", global = true)]
    pub server_id: Option<String>,

    /// An administration command instead of running the server.
    #[command(subcommand)]
    pub command: Option<crate::admin::AdminCommand>,
}

/// The man page's section: the server is a system administration
/// command (a daemon), like sshd(8).
pub const MAN_SECTION: &str = "8";

/// `--log-level` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    #[value(alias = "warning")]
    Warn,
    /// Connections, requests, uploads, start and stop (the default).
    Info,
    /// Also protocol details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The env_logger filter this level stands for.
    pub fn filter(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `--sync-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncModeArg {
    /// syncfs(2) per batch.
    Syncfs,
    /// fsync(2) per file and folder.
    Fsync,
}

/// The end of `--help`: blocks of `Heading: text`, one blank line apart
/// (the man page makes each block a section).
pub const AFTER_HELP: &str = "\
Environment:
  RUST_LOG         log filter in env_logger's syntax, replaces --log-level
                   (e.g. RUST_LOG=debug); start-up errors are shown even when
                   it filters them out
  NOTIFY_SOCKET    set by systemd for Type=notify: READY=1, STOPPING=1, WATCHDOG=1,
                   and STATUS= (connections, uploads in flight, verified since start)
  LISTEN_FDS       set by systemd socket activation: the passed socket is used
                   instead of --listen

Signals: SIGTERM and SIGINT stop accepting and give transfers in flight up to
--drain-timeout before a clean exit; SIGHUP is logged and ignored (nothing to
reopen: the log is stderr; flags are read at start only).

Exit status: 0 after a clean shutdown (SIGTERM/SIGINT) or a good --check-config,
1 on a start-up error (bad flags or values, bad configuration, unusable data
directory or port). Administration commands: 0 done, 1 error, 2 verify found
problems, 3 no such client or file.

Example:
  sealdrop-server --listen 127.0.0.1:1357 --data-dir /var/lib/sealdrop
  # every revision's default port at once (2022c/2023a 1234, 2023c 1357, 2024a/c 1256):
  sealdrop-server --listen 0.0.0.0:1234 --listen 0.0.0.0:1357 --listen 0.0.0.0:1256=2024a";

/// One listening address and the revisions its connections may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSpec {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Detected per connection, or pinned (see [`ListenSpec::parse_tag`]).
    pub revision: RevisionChoice,
}

impl ListenSpec {
    /// A listener on `addr` that detects every revision, reading 1025-1031
    /// as 2023c.
    pub fn auto(addr: SocketAddr) -> ListenSpec {
        ListenSpec {
            addr,
            revision: RevisionChoice::Auto {
                range_1025: Revision::R2023c,
            },
        }
    }

    /// The revision choice a tag names: empty (detect, 1025-1031 as
    /// 2023c), `2023c` or `2024a` (detect, 1025-1031 as that), or
    /// `only:REV` (every connection speaks REV). Also used for the
    /// `FileDescriptorName=` of a systemd socket.
    pub fn parse_tag(tag: &str) -> Result<RevisionChoice, ConfigError> {
        let tag = tag.trim();
        if tag.is_empty() {
            return Ok(RevisionChoice::Auto {
                range_1025: Revision::R2023c,
            });
        }
        if let Some(rev) = tag.strip_prefix("only:") {
            let rev = rev
                .parse::<Revision>()
                .map_err(|_| ConfigError::BadListenTag(tag.to_owned()))?;
            return Ok(RevisionChoice::Fixed(rev));
        }
        match tag.parse::<Revision>() {
            Ok(rev @ (Revision::R2023c | Revision::R2024a)) => {
                Ok(RevisionChoice::Auto { range_1025: rev })
            }
            _ => Err(ConfigError::BadListenTag(tag.to_owned())),
        }
    }
}

impl std::str::FromStr for ListenSpec {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, tag) = text.split_once('=').unwrap_or((text, ""));
        let addr = addr
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::BadListenAddr(addr.to_owned()))?;
        Ok(ListenSpec {
            addr,
            revision: ListenSpec::parse_tag(tag)?,
        })
    }
}

impl std::fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.revision {
            RevisionChoice::Auto {
                range_1025: Revision::R2023c,
            } => write!(f, "{}", self.addr),
            RevisionChoice::Auto { range_1025 } => write!(f, "{}={range_1025}", self.addr),
            RevisionChoice::Fixed(rev) => write!(f, "{}=only:{rev}", self.addr),
        }
    }
}

/// A flag or `port.info` value the server cannot use. The messages are
/// what the operator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A byte count that does not parse.
    NotASize(String),
    /// A byte count beyond 2^64.
    SizeTooLarge(String),
    /// `port.info` cannot be read.
    PortFileUnreadable {
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        detail: String,
    },
    /// `port.info` does not hold a port number.
    PortFileInvalid {
        /// Its path.
        path: PathBuf,
        /// Its first line.
        found: String,
    },
    /// `--max-connections 0`.
    NoConnections,
    /// `--max-file-size` beyond the protocol's limit.
    FileSizeOverLimit(u64),
    /// A timeout or window of 0 seconds.
    ZeroDuration,
    /// A `--listen` address that does not parse.
    BadListenAddr(String),
    /// A `--listen` tag that names no revision choice.
    BadListenTag(String),
    /// `--metrics-listen` names an address a `--listen` also uses.
    MetricsClash(SocketAddr),
    /// `--check-config` without `--listen`: the port file is unusable
    /// (the server itself would fall back to the default port).
    PortFileRequired(Box<ConfigError>),
    /// `--database` (or SEALDROP_DATABASE_URL) does not parse.
    Database(String),
    /// `--server-id` (or SEALDROP_SERVER_ID) is not usable.
    ServerId(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Database(why) => write!(f, "--database: {why}"),
            ConfigError::ServerId(why) => write!(f, "--server-id: {why}"),
            ConfigError::NotASize(text) => {
                write!(f, "'{text}' is not a byte count (e.g. 1048576, 64K, 2G)")
            }
            ConfigError::SizeTooLarge(text) => write!(f, "'{text}' is too large"),
            ConfigError::PortFileUnreadable { path, detail } => {
                write!(f, "cannot read {}: {detail}", path.display())
            }
            ConfigError::PortFileInvalid { path, found } => write!(
                f,
                "{} does not hold a port number (found {found:?})",
                path.display()
            ),
            ConfigError::NoConnections => f.write_str("--max-connections must be at least 1"),
            ConfigError::FileSizeOverLimit(size) => write!(
                f,
                "--max-file-size {size} exceeds the protocol's limit of {MAX_PLAINTEXT_SIZE} bytes"
            ),
            ConfigError::ZeroDuration => {
                f.write_str("timeouts and --progress-window must be at least 1 second")
            }
            ConfigError::BadListenAddr(addr) => write!(
                f,
                "'{addr}' is not an address and port (e.g. 0.0.0.0:1357 or [::]:1357)"
            ),
            ConfigError::BadListenTag(tag) => write!(
                f,
                "'{tag}' is not a listener tag: use 2023c or 2024a (what codes 1025-1031 \
                 mean there), or only:REV with REV one of 2022c, 2023a, 2023c, 2024a, 2024c"
            ),
            ConfigError::MetricsClash(addr) => write!(
                f,
                "--metrics-listen {addr} is also a --listen address: give the metrics their own port"
            ),
            ConfigError::PortFileRequired(why) => write!(
                f,
                "{why}: without --listen the port comes from this file (the server would \
                 fall back to port {DEFAULT_PORT} with a warning); fix the file or give --listen ADDR:PORT"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses a byte count with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| ConfigError::NotASize(text.to_owned()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| ConfigError::SizeTooLarge(text.to_owned()))
}

/// Reads the port from a `port.info` file (§8). `Err` is the warning.
pub fn read_port_file(path: &Path) -> Result<u16, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::PortFileUnreadable {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let line = text.lines().next().unwrap_or("").trim();
    match line.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::PortFileInvalid {
            path: path.to_path_buf(),
            found: line.to_owned(),
        }),
    }
}

/// Everything the running server needs, resolved from the flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen when no socket is passed by systemd (at least one).
    pub listen: Vec<ListenSpec>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Connection cap.
    pub max_connections: usize,
    /// Per-connection session limits.
    pub session: ServerConfig,
    /// Storage settings.
    pub store: StoreConfig,
    /// Drain deadline on shutdown.
    pub drain_timeout: Duration,
    /// `--control-socket`, if given (else [`Settings::control_socket_path`]
    /// is in the data directory).
    pub control_socket: Option<PathBuf>,
    /// Where `GET /metrics` is served (`--metrics-listen`); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
}

impl Settings {
    /// Where the control socket is: `--control-socket`, else
    /// [`crate::control::SOCKET_NAME`] in the data directory (on
    /// PostgreSQL, `control.<server id>.sock`: the directory is shared).
    pub fn control_socket_path(&self) -> PathBuf {
        match (&self.control_socket, &self.store.server_id) {
            (None, Some(id)) => self.data_dir.join(format!("control.{id}.sock")),
            (explicit, _) => control_socket_path(explicit.as_deref(), &self.data_dir),
        }
    }

    /// The defaults of every flag, listening on `listen` with data in
    /// `data_dir`: what an in-process server of the tests runs with.
    pub fn with_defaults(listen: SocketAddr, data_dir: &Path) -> Settings {
        let args = Args::parse_from(["sealdrop-server", "--listen", &listen.to_string()]);
        let mut settings = args
            .settings()
            .expect("the default flags form valid settings");
        settings.data_dir = data_dir.to_path_buf();
        settings
    }
}

/// The control socket's path: `explicit`, else
/// [`crate::control::SOCKET_NAME`] in `data_dir`.
pub fn control_socket_path(explicit: Option<&Path>, data_dir: &Path) -> PathBuf {
    explicit.map_or_else(
        || data_dir.join(crate::control::SOCKET_NAME),
        Path::to_path_buf,
    )
}

/// Where `--server-id` is read from when the flag is absent.
pub const SERVER_ID_ENV: &str = "SEALDROP_SERVER_ID";

/// What to do when the port file is needed but unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortFile {
    /// Warn and use [`DEFAULT_PORT`] (the server, as documented).
    FallBack,
    /// Fail ([`ConfigError::PortFileRequired`]; `--check-config`).
    Required,
}

impl Args {
    /// Resolves the flags into settings; warnings (port file) are logged.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.resolve(PortFile::FallBack)
    }

    /// As [`Args::settings`], but a port file that is needed (no
    /// `--listen`, no socket activation) and missing or invalid is an
    /// error instead of a warning: what `--check-config` checks.
    pub fn checked_settings(&self) -> Result<Settings, ConfigError> {
        self.resolve(PortFile::Required)
    }

    fn resolve(&self, port_file: PortFile) -> Result<Settings, ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if self.max_file_size > MAX_PLAINTEXT_SIZE {
            return Err(ConfigError::FileSizeOverLimit(self.max_file_size));
        }
        if self.progress_window == 0 || self.header_timeout == 0 || self.idle_timeout == 0 {
            return Err(ConfigError::ZeroDuration);
        }
        let listen = if !self.listen.is_empty() {
            self.listen.clone()
        } else if std::env::var_os("LISTEN_FDS").is_some() {
            // systemd passes the sockets: the port file is not consulted.
            vec![ListenSpec::auto(SocketAddr::from((
                [0, 0, 0, 0],
                DEFAULT_PORT,
            )))]
        } else {
            let port = match read_port_file(&self.port_file) {
                Ok(port) => port,
                Err(e) if port_file == PortFile::Required => {
                    return Err(ConfigError::PortFileRequired(Box::new(e)))
                }
                Err(warning) => {
                    log::warn!("{warning}; using port {DEFAULT_PORT}");
                    DEFAULT_PORT
                }
            };
            vec![ListenSpec::auto(SocketAddr::from(([0, 0, 0, 0], port)))]
        };
        if let Some(metrics) = self.metrics_listen {
            let clash = |l: &ListenSpec| {
                l.addr.port() == metrics.port()
                    && (l.addr.ip() == metrics.ip()
                        || l.addr.ip().is_unspecified()
                        || metrics.ip().is_unspecified())
            };
            if metrics.port() != 0 && listen.iter().any(clash) {
                return Err(ConfigError::MetricsClash(metrics));
            }
        }
        let session = ServerConfig {
            max_content: encrypted_len(self.max_file_size),
            header_timeout: Duration::from_secs(self.header_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            progress_window: Duration::from_secs(self.progress_window),
            min_progress_bytes: self.min_rate.saturating_mul(self.progress_window),
            max_output: self.max_output.clamp(512, 16 << 20) as usize,
            ..ServerConfig::default()
        };
        let store = StoreConfig {
            orphan_ttl: Duration::from_secs(self.orphan_ttl),
            sync_mode: match self.sync_mode {
                SyncModeArg::Syncfs => SyncMode::Syncfs,
                SyncModeArg::Fsync => SyncMode::Fsync,
            },
            quota: Quota {
                max_bytes: self.quota_bytes,
                max_files: self.quota_files,
            },
            database: DatabaseUrl::resolve(self.database.as_deref(), |k| std::env::var(k).ok())
                .map_err(|e| ConfigError::Database(e.to_string()))?,
            ..StoreConfig::default()
        };
        let mut store = store;
        if store.database.is_postgres() {
            let id = self
                .server_id
                .clone()
                .or_else(|| std::env::var(SERVER_ID_ENV).ok().filter(|v| !v.is_empty()))
                .unwrap_or_else(crate::files::default_server_id);
            crate::files::check_server_id(&id)
                .map_err(|e| ConfigError::ServerId(format!("{id:?}: {e}")))?;
            store.server_id = Some(id);
        }
        Ok(Settings {
            listen,
            data_dir: self.data_dir.clone(),
            max_connections: self.max_connections,
            session,
            store,
            drain_timeout: Duration::from_secs(self.drain_timeout),
            control_socket: self.control_socket.clone(),
            metrics_listen: self.metrics_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("17"), Ok(17));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn port_file_must_hold_a_port() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("port.info");
        std::fs::write(&p, "4242\r\n").unwrap();
        assert_eq!(read_port_file(&p), Ok(4242));
        std::fs::write(&p, "banana\n").unwrap();
        assert!(read_port_file(&p).is_err());
        assert!(read_port_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn an_unusable_port_file_is_a_warning_to_the_server_and_an_error_to_check_config() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("port.info");
        let args = Args::parse_from(["sealdrop-server", "--port-file", missing.to_str().unwrap()]);
        if std::env::var_os("LISTEN_FDS").is_some() {
            return; // socket activation: the port file is not consulted
        }
        let settings = args.settings().unwrap();
        assert_eq!(settings.listen[0].addr.port(), DEFAULT_PORT);
        assert!(matches!(
            args.checked_settings(),
            Err(ConfigError::PortFileRequired(_))
        ));
        std::fs::write(&missing, "4242\n").unwrap();
        assert_eq!(args.checked_settings().unwrap().listen[0].addr.port(), 4242);
    }

    #[test]
    fn log_levels_take_journalds_warning() {
        for (text, level) in [
            ("warning", LogLevel::Warn),
            ("WARN", LogLevel::Warn),
            ("Info", LogLevel::Info),
            ("trace", LogLevel::Trace),
        ] {
            let args = Args::parse_from(["sealdrop-server", "--log-level", text]);
            assert_eq!(args.log_level, level, "{text}");
        }
        for bad in ["loud", "warnings", "off", ""] {
            assert!(
                Args::try_parse_from(["sealdrop-server", "--log-level", bad]).is_err(),
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    #[test]
    fn listen_values_take_a_tag() {
        let plain: ListenSpec = "127.0.0.1:1357".parse().unwrap();
        assert_eq!(plain, ListenSpec::auto("127.0.0.1:1357".parse().unwrap()));
        let tagged: ListenSpec = "0.0.0.0:1256=2024a".parse().unwrap();
        assert_eq!(
            tagged.revision,
            RevisionChoice::Auto {
                range_1025: Revision::R2024a
            }
        );
        let pinned: ListenSpec = "[::1]:1234=only:2022c".parse().unwrap();
        assert_eq!(pinned.revision, RevisionChoice::Fixed(Revision::R2022c));
        for spec in [plain, tagged, pinned] {
            assert_eq!(spec.to_string().parse::<ListenSpec>().unwrap(), spec);
        }
        for bad in [
            "1357",
            "0.0.0.0:1256=2024c",
            "0.0.0.0:1256=only:2025a",
            "x:1=2023c",
        ] {
            assert!(bad.parse::<ListenSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_needs_its_own_port() {
        let args = Args::parse_from(["sealdrop-server", "--listen", "127.0.0.1:1357"]);
        assert_eq!(args.settings().unwrap().metrics_listen, None);
        let with = |listen: &str, metrics: &str| {
            Args::parse_from([
                "sealdrop-server",
                "--listen",
                listen,
                "--metrics-listen",
                metrics,
            ])
            .settings()
        };
        let ok = with("0.0.0.0:1357", "127.0.0.1:9357").unwrap();
        assert_eq!(ok.metrics_listen, Some("127.0.0.1:9357".parse().unwrap()));
        for (listen, metrics) in [
            ("127.0.0.1:1357", "127.0.0.1:1357"),
            ("0.0.0.0:1357", "127.0.0.1:1357"),
            ("127.0.0.1:1357", "0.0.0.0:1357"),
        ] {
            assert!(
                matches!(with(listen, metrics), Err(ConfigError::MetricsClash(_))),
                "{listen} {metrics}"
            );
        }
        assert!(with("127.0.0.1:0", "127.0.0.1:0").is_ok());
        assert!(Args::try_parse_from(["sealdrop-server", "--metrics-listen", "9357"]).is_err());
    }

    #[test]
    fn several_listen_flags_are_kept_in_order() {
        let args = Args::parse_from([
            "sealdrop-server",
            "--listen",
            "0.0.0.0:1234",
            "--listen",
            "0.0.0.0:1357",
            "--listen",
            "0.0.0.0:1256=2024a",
        ]);
        let s = args.settings().unwrap();
        let ports: Vec<u16> = s.listen.iter().map(|l| l.addr.port()).collect();
        assert_eq!(ports, [1234, 1357, 1256]);
    }
}
