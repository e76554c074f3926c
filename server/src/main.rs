//! sealdrop-server: the binary. Parses flags, opens storage, binds (or
//! adopts) the listening socket, tells systemd it is ready, and runs the
//! event loop until SIGTERM or SIGINT.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use sealdrop_protocol::decode::RevisionChoice;
use sealdrop_server::config::{Args, ListenSpec, Settings};
use sealdrop_server::event_loop::Server;
use sealdrop_server::store::DiskStore;
use sealdrop_server::{logging, systemd};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // --help and --version print to stdout and exit 0. Usage errors
        // exit 1 like every other start-up error (clap's own default is 2),
        // as the help's "Exit status" says: one status for "did not start".
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    logging::init(args.log_level.filter());
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if log::log_enabled!(log::Level::Error) {
                log::error!("{e:#}");
            } else {
                // RUST_LOG filtered errors out (RUST_LOG=off, or a module
                // name that matches nothing): why the server did not start
                // is shown all the same.
                eprintln!("sealdrop-server: error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if args.check_config {
        return check_config(&args.checked_settings()?);
    }
    let settings = args.settings()?;
    raise_descriptor_limit(settings.max_connections);
    let store = DiskStore::open(&settings.data_dir, settings.store.clone())
        .with_context(|| format!("cannot use data directory {}", settings.data_dir.display()))?;
    let (listeners, shown) = listeners(&settings)?;
    let mut server =
        Server::new(listeners, store, settings.clone()).context("cannot set up the event loop")?;
    server
        .handle_signals()
        .context("cannot set up the event loop")?;
    log::info!(
        "listening on {shown}, data in {}, up to {} connections",
        settings.data_dir.display(),
        settings.max_connections
    );
    systemd::ready(&format!("listening on {shown}"));
    server.run().context("event loop failed")?;
    log::info!("shut down cleanly");
    Ok(())
}

/// The sockets systemd passed, or new ones bound to every `--listen`,
/// each with the revisions its connections speak; and how to show them
/// in the log (`0.0.0.0:1357, 0.0.0.0:1256=2024a`).
fn listeners(
    settings: &Settings,
) -> Result<(Vec<(std::net::TcpListener, RevisionChoice)>, String)> {
    let passed = systemd::passed_listeners().context("cannot adopt the sockets systemd passed")?;
    let specs: Vec<(std::net::TcpListener, ListenSpec)> = if passed.is_empty() {
        bind(settings)?
    } else {
        log::info!(
            "using the {} listening socket(s) passed by systemd",
            passed.len()
        );
        let mut adopted = Vec::with_capacity(passed.len());
        for (socket, name) in passed {
            // FileDescriptorName= may carry a listener tag; systemd's default
            // name (the socket unit's) means untagged.
            let revision = ListenSpec::parse_tag(&name).unwrap_or(RevisionChoice::Auto {
                range_1025: sealdrop_protocol::Revision::R2023c,
            });
            let addr = socket.local_addr().context("a socket systemd passed")?;
            adopted.push((socket, ListenSpec { addr, revision }));
        }
        adopted
    };
    let shown = specs
        .iter()
        .map(|(_, spec)| spec.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let listeners = specs
        .into_iter()
        .map(|(l, spec)| (l, spec.revision))
        .collect();
    Ok((listeners, shown))
}

fn bind(settings: &Settings) -> Result<Vec<(std::net::TcpListener, ListenSpec)>> {
    settings
        .listen
        .iter()
        .map(|spec| {
            // std sets SO_REUSEADDR on Unix, so a restart right after a crash binds at once.
            let listener = std::net::TcpListener::bind(spec.addr)
                .with_context(|| format!("cannot listen on {}", spec.addr))?;
            // The address actually bound (port 0 picks one).
            let addr = listener.local_addr().unwrap_or(spec.addr);
            Ok((listener, ListenSpec { addr, ..*spec }))
        })
        .collect()
}

/// `--check-config`: validates without side effects on the data directory,
/// so it is safe beside a running server (no clean-up, no migration).
fn check_config(settings: &Settings) -> Result<()> {
    let dir = &settings.data_dir;
    let what = check_data_dir(dir)
        .with_context(|| format!("cannot use data directory {}", dir.display()))?;
    check_listen(settings)?;
    let listen = settings
        .listen
        .iter()
        .map(ListenSpec::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "configuration ok: listen {listen}, data directory {} ({what})",
        dir.display()
    );
    Ok(())
}

/// What `--check-config` found in the data directory.
enum DataDirState {
    /// It does not exist; the server will create it.
    WillBeCreated,
    /// It exists without a database.
    NoDatabase,
    /// Its database, as `Db::check_read_only` describes it.
    Database(String),
}

impl std::fmt::Display for DataDirState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataDirState::WillBeCreated => f.write_str("will be created"),
            DataDirState::NoDatabase => f.write_str("no database yet"),
            DataDirState::Database(what) => f.write_str(what),
        }
    }
}

/// The data directory (or, if it does not exist yet, its parent) must be
/// a writable directory, and an existing database must be readable and of
/// a schema this server knows.
fn check_data_dir(dir: &Path) -> Result<DataDirState> {
    if dir.to_str().is_none() {
        anyhow::bail!("the path is not UTF-8 (file paths are stored as text)");
    }
    let existing = dir.exists();
    let probe_in = if existing {
        dir.to_path_buf()
    } else {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        parent.unwrap_or(Path::new(".")).to_path_buf()
    };
    if !probe_in.is_dir() {
        anyhow::bail!("{} is not a directory", probe_in.display());
    }
    let probe = probe_in.join(format!(".sealdrop-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("{} is not writable", probe_in.display()))?;
    let _ = std::fs::remove_file(&probe);
    if !existing {
        return Ok(DataDirState::WillBeCreated);
    }
    let db = dir.join(sealdrop_server::db::DB_FILE_NAME);
    if !db.exists() {
        return Ok(DataDirState::NoDatabase);
    }
    Ok(DataDirState::Database(
        sealdrop_server::db::Db::check_read_only(&db)?,
    ))
}

fn check_listen(settings: &Settings) -> Result<()> {
    if std::env::var_os("LISTEN_FDS").is_some() {
        return Ok(());
    }
    bind(settings).map(drop)
}

/// Raises the soft open-file limit towards the hard one so the connection
/// cap can be reached; warns if it cannot.
fn raise_descriptor_limit(max_connections: usize) {
    let want = max_connections as u64 + DESCRIPTORS_RESERVED;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got >= want => log::debug!("open-file limit is {got}"),
        Ok(got) => log::warn!(
            "open-file limit {got} is below --max-connections {max_connections} + {DESCRIPTORS_RESERVED}; \
             accepts pause while descriptors run out"
        ),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// Descriptors kept for the database, files being written, the listener
/// and the poll instance, beyond one per connection.
const DESCRIPTORS_RESERVED: u64 = 64;
