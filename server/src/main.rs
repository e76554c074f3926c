//! sealdrop-server: the binary. Parses flags, opens storage, binds (or
//! adopts) the listening socket, tells systemd it is ready, and runs the
//! event loop until SIGTERM or SIGINT; or, given a subcommand (`clients`,
//! `files`, `stats`, `verify`), runs that administration command
//! ([`sealdrop_server::admin`]) and exits.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use sealdrop_protocol::decode::RevisionChoice;
use sealdrop_server::config::{self, Args, ListenSpec, Settings};
use sealdrop_server::event_loop::Server;
use sealdrop_server::store::DiskStore;
use sealdrop_server::{admin, logging, systemd};

fn main() -> ExitCode {
    // SIGHUP's default action ends the process. The event loop handles it
    // (a log line, nothing else), but only once it is set up, after the
    // database is open: until then this flag catches it, from the first
    // instruction of main on, and the loop logs it when it starts.
    let early_hup = Arc::new(AtomicBool::new(false));
    let early_hup_id = signal_hook::flag::register(signal_hook::consts::SIGHUP, early_hup.clone())
        .map_err(|e| eprintln!("sealdrop-server: warning: cannot catch SIGHUP at start: {e}"))
        .ok();
    if let Some(code) = packager_output() {
        return code;
    }
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
    if let Some(command) = &args.command {
        // An administration command ends on SIGHUP (a closed terminal) as
        // any command-line tool does.
        if let Some(id) = early_hup_id {
            signal_hook::low_level::unregister(id);
            let _ = signal_hook::flag::register_conditional_default(
                signal_hook::consts::SIGHUP,
                Arc::new(AtomicBool::new(true)),
            );
        }
        // Only what went wrong: the command's own output is its result.
        logging::init("warn");
        let database =
            match sealdrop_server::pg::DatabaseUrl::resolve(args.database.as_deref(), |k| {
                std::env::var(k).ok()
            }) {
                Ok(url) => url,
                Err(e) => {
                    eprintln!("sealdrop-server: error: --database: {e}");
                    return ExitCode::from(admin::EXIT_ERROR);
                }
            };
        // On PostgreSQL a server's socket is control.<id>.sock; the
        // commands find every server's in the data directory anyway.
        let socket = match (
            &args.control_socket,
            &args.server_id,
            database.is_postgres(),
        ) {
            (None, Some(id), true) => args.data_dir.join(format!("control.{id}.sock")),
            (explicit, _, _) => config::control_socket_path(explicit.as_deref(), &args.data_dir),
        };
        let place = admin::Place {
            data_dir: args.data_dir.clone(),
            socket,
            quota: sealdrop_protocol::store::Quota {
                max_bytes: args.quota_bytes,
                max_files: args.quota_files,
            },
            quota_given: args.quota_bytes.is_some() || args.quota_files.is_some(),
            database,
        };
        return ExitCode::from(admin::run(command, &place));
    }
    logging::init(args.log_level.filter());
    let early_hup = EarlyHup {
        id: early_hup_id,
        seen: early_hup,
    };
    match run(&args, early_hup) {
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

/// SIGHUP as caught before the event loop handles it.
struct EarlyHup {
    id: Option<signal_hook::SigId>,
    seen: Arc<AtomicBool>,
}

impl EarlyHup {
    /// The event loop handles SIGHUP now: stop catching it here, and log
    /// one that came during start-up.
    fn hand_over(self) {
        if let Some(id) = self.id {
            signal_hook::low_level::unregister(id);
        }
        if self.seen.load(Ordering::SeqCst) {
            log::info!(
                "SIGHUP received during start-up: ignored (nothing to reopen: the log goes to \
                 stderr; flags are read at start only, restart to change them)"
            );
        }
    }
}

fn run(args: &Args, early_hup: EarlyHup) -> Result<()> {
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
    early_hup.hand_over();
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

/// The generators for packagers (what `make install` runs), each alone
/// on the command line:
///
/// * `sealdrop-server --print-completions SHELL` prints the completion
///   script for bash, zsh, fish, elvish or powershell;
/// * `sealdrop-server --print-man` prints the man page (roff, section 8);
/// * `sealdrop-server --write-man-pages DIR` writes that page and one per
///   administration subcommand (`sealdrop-server-clients.8`,
///   `sealdrop-server-clients-forget.8`, ...) into DIR, each path on a
///   line of stdout: the pages the main one refers to.
///
/// They are read before clap, not declared to it: clap_complete completes
/// even hidden flags, and these belong in neither the completions, the
/// man page nor `--help`. `None` when the command line is not one of them.
fn packager_output() -> Option<ExitCode> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let argv: Vec<&str> = argv.iter().map(|a| a.to_str()).collect::<Option<_>>()?;
    let written = match argv.as_slice() {
        ["--print-completions", shell] => {
            let shell = match shell.parse::<clap_complete::Shell>() {
                Ok(shell) => shell,
                Err(_) => {
                    eprintln!(
                        "error: unknown shell '{shell}' for '--print-completions' \
                         (bash, zsh, fish, elvish, powershell)"
                    );
                    return Some(ExitCode::FAILURE);
                }
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), BIN_NAME, &mut script);
            let mut script = String::from_utf8_lossy(&script).into_owned();
            if shell == clap_complete::Shell::Bash {
                script = fix_bash_subcommands(&script, BIN_NAME);
            }
            let mut out = std::io::stdout().lock();
            out.write_all(script.as_bytes()).and_then(|()| out.flush())
        }
        ["--print-man"] => print_man(&mut std::io::stdout().lock()),
        ["--write-man-pages", dir] => {
            if let Err(e) = write_man_pages(Path::new(dir)) {
                eprintln!("sealdrop-server: error: --write-man-pages: {e}");
                return Some(ExitCode::FAILURE);
            }
            Ok(())
        }
        _ => return None,
    };
    match written {
        // A reader that went away (`--print-man | head`) is no error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("sealdrop-server: error: cannot write to stdout: {e}");
            Some(ExitCode::FAILURE)
        }
        _ => Some(ExitCode::SUCCESS),
    }
}

/// The name the completions and man pages are written for.
const BIN_NAME: &str = "sealdrop-server";

/// Repairs clap_complete's bash script for a binary whose name has a
/// hyphen (clap-rs/clap#6421, still in clap_complete 4.6.12): the loop
/// that reads the command line names the state of `sealdrop-server
/// clients` `sealdrop__server__subcmd__clients`, but the arms that
/// complete it are spelled `sealdrop__subcmd__server__subcmd__clients`
/// (the hyphen of the binary's name escaped as a subcommand separator),
/// so nothing after a subcommand completed. The arms get the loop's
/// spelling. A script without the fault (a fixed clap_complete) is left
/// as it is.
fn fix_bash_subcommands(script: &str, bin: &str) -> String {
    const SEP: &str = "__subcmd__";
    let wrong = format!("{}{SEP}", bin.replace('-', SEP));
    let right = format!("{}{SEP}", bin.replace('-', "__"));
    if wrong == right {
        return script.to_owned();
    }
    script.replace(&wrong, &right)
}

/// `--print-man`: clap_mangen's page of the flags, with the blocks after
/// the help (environment, signals, exit status, example) as sections of
/// their own, their lines kept as they are (clap_mangen would fill them
/// into one paragraph).
fn print_man(out: &mut impl Write) -> std::io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(man_command().after_help(None::<&str>))
        .section(config::MAN_SECTION)
        .render(&mut page)?;
    let page = String::from_utf8_lossy(&page);
    let mut sections = String::new();
    for block in config::AFTER_HELP.split("\n\n") {
        let Some((heading, body)) = block.split_once(':') else {
            continue;
        };
        sections += &format!(".SH \"{}\"\n.nf\n", roff_escape(&heading.to_uppercase()));
        for line in body
            .trim_start_matches(' ')
            .trim_start_matches('\n')
            .lines()
        {
            sections += &format!("\\&{}\n", roff_escape(line));
        }
        sections += ".fi\n";
    }
    // Before the VERSION section clap_mangen ends with.
    let at = page.find("\n.SH VERSION").map_or(page.len(), |i| i + 1);
    out.write_all(page[..at].as_bytes())?;
    out.write_all(sections.as_bytes())?;
    out.write_all(page[at..].as_bytes())?;
    out.flush()
}

/// The command as the man pages show it: without the `help` subcommands,
/// which have no page (`--help` and `help` are the same text), so every
/// `sealdrop-server-*(8)` a page refers to is one `--write-man-pages`
/// writes.
fn man_command() -> clap::Command {
    fn without_help(cmd: clap::Command) -> clap::Command {
        cmd.disable_help_subcommand(true)
            .mut_subcommands(without_help)
    }
    let mut cmd = without_help(Args::command());
    // Names each subcommand `sealdrop-server-clients-forget` and so on.
    cmd.build();
    cmd
}

/// `--write-man-pages DIR`: the page of `--print-man` as
/// `sealdrop-server.8`, and a page per subcommand, at every depth, named
/// as the pages refer to them (`sealdrop-server-clients-forget.8`).
fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    fn write(dir: &Path, name: &str, page: &[u8]) -> std::io::Result<()> {
        let path = dir.join(format!("{name}.{}", config::MAN_SECTION));
        std::fs::write(&path, page)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", path.display())
    }
    fn subcommand_pages(dir: &Path, cmd: &clap::Command) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let man = clap_mangen::Man::new(sub.clone())
                .section(config::MAN_SECTION)
                .source(concat!("sealdrop-server ", env!("CARGO_PKG_VERSION")));
            let mut page = Vec::new();
            man.render(&mut page)?;
            let name = sub.get_display_name().unwrap_or_else(|| sub.get_name());
            write(dir, name, &page)?;
            subcommand_pages(dir, sub)?;
        }
        Ok(())
    }
    let mut page = Vec::new();
    print_man(&mut page)?;
    write(dir, BIN_NAME, &page)?;
    subcommand_pages(dir, &man_command())?;
    std::io::stdout().flush()
}

/// Text as roff shows it literally: backslashes, hyphens (a plain `-` may
/// print as a typographic hyphen, which cannot be pasted into a shell)
/// and apostrophes escaped.
fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('\'', "\\(aq")
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
/// Fails when a start would be refused because another server holds the
/// data directory or the SQLite database
/// ([`sealdrop_server::store::check_locks`]); notes it when a server of
/// this same configuration runs.
fn check_config(settings: &Settings) -> Result<()> {
    let dir = &settings.data_dir;
    let what = match &settings.store.database {
        sealdrop_server::pg::DatabaseUrl::Postgres(url) => {
            check_data_dir(dir)
                .with_context(|| format!("cannot use data directory {}", dir.display()))?;
            let found =
                sealdrop_server::pg::schema::check(url, &sealdrop_server::pg::Settings::default())
                    .with_context(|| format!("cannot use the database {url}"))?;
            // A directory that is not the database's (the share not
            // mounted) is refused at start: so here too.
            let bound = sealdrop_server::pg::identity::probe(url, dir)
                .context("a server started with this configuration would be refused")?;
            format!(
                "records in {found}; server id {}{}",
                settings.store.server_id.as_deref().unwrap_or("?"),
                bound.map(|b| format!("; {b}")).unwrap_or_default()
            )
        }
        sealdrop_server::pg::DatabaseUrl::Sqlite(Some(path)) => {
            check_data_dir(dir)
                .with_context(|| format!("cannot use data directory {}", dir.display()))?;
            if path.exists() {
                sealdrop_server::db::Db::check_read_only(path)
                    .with_context(|| format!("cannot use the database {}", path.display()))?
            } else {
                format!("database {} will be created", path.display())
            }
        }
        sealdrop_server::pg::DatabaseUrl::Sqlite(None) => check_data_dir(dir)
            .with_context(|| format!("cannot use data directory {}", dir.display()))?
            .to_string(),
    };
    // What another server holds that a start would need: the data
    // directory (held shared by servers on PostgreSQL, exclusively by one
    // on SQLite), the SQLite database, this server id. Held by a server of
    // this same configuration (the one a pre-flight check is about to
    // restart): a note, not a failure.
    let note = sealdrop_server::store::check_locks(dir, &settings.store)
        .context("a server started with this configuration would be refused")?;
    // Beside a running server of this configuration its addresses are in
    // use by it: expected before its restart, so a note rather than a
    // failure. Any other reason an address cannot be bound still fails.
    let mut listen_note = None;
    if let Err(e) = check_listen(settings) {
        if note.is_none() || !addr_in_use(&e) {
            return Err(e);
        }
        listen_note = Some(format!(
            "{e:#}: in use by the running server, as expected while it runs"
        ));
    }
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
    if let Some(note) = note {
        println!("note: {note}");
    }
    if let Some(note) = listen_note {
        println!("note: {note}");
    }
    Ok(())
}

/// Whether binding failed because the address is taken.
fn addr_in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
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
    if let Some(addr) = settings.metrics_listen {
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    }
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
