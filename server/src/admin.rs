//! The administration commands: `sealdrop-server clients ...`, `files
//! ...`, `stats`, `verify` (docs/operations.md, "Administration").
//!
//! Commands that only look open the database read-only (WAL lets them read
//! beside a running server; they take no lock). Commands that change
//! something go through the running server's control socket
//! ([`crate::control`]) so the change applies between two passes of its
//! loop; when no server answers there (no socket, or nobody accepting)
//! they take the data directory's and the database's locks themselves
//! (`.sealdrop.lock`, `defensive.db.lock`) and apply the same
//! change directly ([`control::apply`]), then commit it.
//!
//! With the records in PostgreSQL (`--database postgres://…`) several
//! servers may run, on several machines: reads come from one read-only
//! snapshot ([`crate::pg::admin`]); a change is made by the command in one
//! transaction, after every server answering on a `control.*.sock` in the
//! data directory was told to withdraw the uploads concerned (and told
//! again after the commit), and files go from the shared tree once it
//! committed.
//!
//! Exit status: [`EXIT_OK`], [`EXIT_ERROR`], [`EXIT_FINDINGS`] (verify),
//! [`EXIT_NOT_FOUND`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use sealdrop_protocol::cksum::Cksum;
use sealdrop_protocol::store::{Quota, QuotaOverride, QuotaSetting, Store};
use sealdrop_protocol::ClientId;

use crate::control::{self, ApplyError, Reach};
use crate::db::{ClientRow, Db, FileMeta, FileRow};
use crate::files;
use crate::pg::{self, DatabaseUrl, PgError, PgUrl};
use crate::store::{DiskStore, Outcomes, StoreConfig};

/// Done (verify: nothing found).
pub const EXIT_OK: u8 = 0;
/// An error: unusable data directory or database, a server that does not
/// answer properly, a storage failure, bad arguments.
pub const EXIT_ERROR: u8 = 1;
/// `verify` found at least one problem (repaired or not).
pub const EXIT_FINDINGS: u8 = 2;
/// The client or file named does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;

/// How long a command waits for the running server's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// An administration command.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// List, show, forget clients, or set a client's own quota.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// List or delete stored files.
    #[command(subcommand)]
    Files(FilesCommand),
    /// Totals: clients, files, bytes; uploads by outcome over the
    /// database's life and, from a running server, since it started.
    Stats(Output),
    /// Hold the database against the file tree: records without files,
    /// files without records, leftovers; with --cksum also re-read every
    /// stored file. Exits 2 on any finding. Changes nothing unless
    /// --repair says what to do.
    Verify(VerifyArgs),
}

/// `clients ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientsCommand {
    /// Every client: id, name, last seen, key exchanged, files, bytes.
    List(Output),
    /// One client (ID or NAME), its quota and its files.
    Show {
        /// The client's id (32 hex digits) or name.
        client: String,
        #[command(flatten)]
        output: Output,
    },
    /// Forget a client: its record and own quota go and its name is free
    /// again; its uploads in flight are refused. Its files stay, recorded
    /// under its id, unless --delete-files.
    Forget {
        /// The client's id (32 hex digits) or name.
        client: String,
        /// Also delete the client's stored files and their records.
        #[arg(long)]
        delete_files: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Set a client's own quota, each limit a number (bytes take K, M, G,
    /// T), `unlimited`, or `default` (the server's --quota-*).
    Quota {
        /// The client's id (32 hex digits) or name.
        client: String,
        /// Most bytes the client may keep.
        #[arg(long, value_name = "N|unlimited|default", value_parser = parse_setting_bytes)]
        bytes: Option<QuotaSetting>,
        /// Most files the client may keep.
        #[arg(long, value_name = "N|unlimited|default")]
        files: Option<QuotaSetting>,
        /// Remove the client's own quota (both limits back to the server's).
        #[arg(long, conflicts_with_all = ["bytes", "files"])]
        clear: bool,
        #[command(flatten)]
        output: Output,
    },
}

/// `files ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum FilesCommand {
    /// Every file record: client, name, size, verified, stored path, cksum.
    List {
        /// Only this client's files (id or name).
        #[arg(long, value_name = "ID|NAME")]
        client: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Delete a client's file: its record and stored file; its uploads of
    /// that name in flight are refused.
    Delete {
        /// The client's id (32 hex digits) or name.
        client: String,
        /// The file's name.
        name: String,
        #[command(flatten)]
        output: Output,
    },
}

/// `--json`.
#[derive(Debug, Clone, Args)]
pub struct Output {
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `verify`'s flags.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Also re-read every stored file and compare its size and cksum with
    /// the recorded ones.
    #[arg(long)]
    pub cksum: bool,
    /// What to repair (comma-separated): `rows` deletes records of missing
    /// files; `strays` deletes unrecorded files and leftovers; `adopt`
    /// records unrecorded files as verified instead; `mismatched` drops the
    /// records of files whose size or cksum differ and keeps the files
    /// (then unrecorded: the next run's `adopt` or `strays`).
    #[arg(long, value_name = "WHAT", value_delimiter = ',', value_enum)]
    pub repair: Vec<Repair>,
    #[command(flatten)]
    pub output: Output,
}

/// `verify --repair` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Repair {
    /// Delete the records of verified files that are missing.
    Rows,
    /// Delete files that no record claims, and leftovers.
    Strays,
    /// Record files that no record claims as verified.
    Adopt,
    /// Drop the records of files whose size or cksum differ from the
    /// recorded ones; the files stay, unrecorded.
    Mismatched,
}

fn parse_setting_bytes(text: &str) -> Result<QuotaSetting, String> {
    match text.trim() {
        "default" | "unlimited" => text.parse(),
        n => crate::config::parse_size(n)
            .map(QuotaSetting::Max)
            .map_err(|e| e.to_string()),
    }
}

/// Where a command works.
#[derive(Debug, Clone)]
pub struct Place {
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// The control socket's path.
    pub socket: PathBuf,
    /// The command's `--quota-*` (for a change applied directly, and what
    /// the commands show as the server's default when no server answers).
    pub quota: Quota,
    /// Whether `--quota-bytes` or `--quota-files` was given.
    pub quota_given: bool,
    /// Where the records are (`--database`, or SEALDROP_DATABASE_URL).
    pub database: DatabaseUrl,
}

impl Place {
    /// The PostgreSQL database, if the records are there.
    fn pg(&self) -> Option<&PgUrl> {
        match &self.database {
            DatabaseUrl::Postgres(url) => Some(url),
            DatabaseUrl::Sqlite(_) => None,
        }
    }
}

/// A command's failure.
#[derive(Debug)]
struct Failure {
    status: u8,
    message: String,
}

impl From<ApplyError> for Failure {
    fn from(e: ApplyError) -> Self {
        Failure {
            status: if e.not_found {
                EXIT_NOT_FOUND
            } else {
                EXIT_ERROR
            },
            message: e.message,
        }
    }
}

impl From<PgError> for Failure {
    fn from(e: PgError) -> Self {
        fail(format!("PostgreSQL: {e}"))
    }
}

impl From<sealdrop_protocol::store::StoreError> for Failure {
    fn from(e: sealdrop_protocol::store::StoreError) -> Self {
        ApplyError::from(e).into()
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        status: EXIT_ERROR,
        message: message.into(),
    }
}

fn not_found(message: impl Into<String>) -> Failure {
    Failure {
        status: EXIT_NOT_FOUND,
        message: message.into(),
    }
}

/// Runs `cmd`; its exit status. Results go to stdout, errors to stderr.
pub fn run(cmd: &AdminCommand, place: &Place) -> u8 {
    let json = match cmd {
        AdminCommand::Clients(c) => match c {
            ClientsCommand::List(o) => o.json,
            ClientsCommand::Show { output, .. }
            | ClientsCommand::Forget { output, .. }
            | ClientsCommand::Quota { output, .. } => output.json,
        },
        AdminCommand::Files(FilesCommand::List { output, .. })
        | AdminCommand::Files(FilesCommand::Delete { output, .. }) => output.json,
        AdminCommand::Stats(o) => o.json,
        AdminCommand::Verify(v) => v.output.json,
    };
    // On PostgreSQL, a data directory that is not the database's (the
    // share not mounted) would show every file missing, and `verify
    // --repair rows` would drop their records: refused as at start.
    // A database it cannot reach or read: the command itself says so.
    let bound = match place
        .pg()
        .map(|url| pg::identity::probe(url, &place.data_dir))
    {
        Some(Err(sealdrop_protocol::store::StoreError::Invalid(why))) => Err(fail(why)),
        _ => Ok(()),
    };
    let result = bound.and_then(|()| match cmd {
        AdminCommand::Clients(ClientsCommand::List(_)) => clients_list(place),
        AdminCommand::Clients(ClientsCommand::Show { client, .. }) => clients_show(place, client),
        AdminCommand::Clients(ClientsCommand::Forget {
            client,
            delete_files,
            ..
        }) => clients_forget(place, client, *delete_files),
        AdminCommand::Clients(ClientsCommand::Quota {
            client,
            bytes,
            files,
            clear,
            ..
        }) => clients_quota(place, client, *bytes, *files, *clear),
        AdminCommand::Files(FilesCommand::List { client, .. }) => {
            files_list(place, client.as_deref())
        }
        AdminCommand::Files(FilesCommand::Delete { client, name, .. }) => {
            files_delete(place, client, name)
        }
        AdminCommand::Stats(_) => stats(place),
        AdminCommand::Verify(v) => verify(place, v),
    });
    match result {
        Ok((value, text, status)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{text}");
            }
            status
        }
        Err(f) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"error": f.message})).unwrap_or_default()
                );
            }
            eprintln!("sealdrop-server: error: {}", f.message);
            f.status
        }
    }
}

/// A command's result: the JSON document, the text, the exit status.
type Done = Result<(Value, String, u8), Failure>;

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// One stored file as the commands show it.
#[derive(Debug, Clone)]
struct FileView {
    row: FileRow,
    size: Option<u64>,
    cksum: Option<u32>,
}

impl FileView {
    fn json(&self, names: &BTreeMap<ClientId, String>) -> Value {
        json!({
            "client": self.row.client.to_hex(),
            "client_name": names.get(&self.row.client),
            "name": self.row.file_name,
            "size": self.size,
            "verified": self.row.verified,
            "path": self.row.path_name,
            "cksum": self.cksum,
        })
    }
}

/// The database as the read-only commands see it: one snapshot.
struct View {
    clients: Vec<ClientRow>,
    files: Vec<FileView>,
    quotas: BTreeMap<ClientId, sealdrop_protocol::store::QuotaOverride>,
    counters: Outcomes,
}

impl View {
    /// One snapshot of the records, from SQLite or PostgreSQL.
    fn read(place: &Place) -> Result<View, Failure> {
        let data_dir = &place.data_dir;
        if let Some(url) = place.pg() {
            let snap = pg::admin::snapshot(&mut pg::admin::open(url)?)?;
            return Ok(View::build(
                snap.clients,
                snap.files,
                snap.quotas.into_iter().collect(),
                snap.counters,
                data_dir,
            ));
        }
        let path = crate::store::sqlite_path(
            data_dir,
            &StoreConfig {
                database: place.database.clone(),
                ..StoreConfig::default()
            },
        )
        .ok_or_else(|| fail("no SQLite database"))?;
        let db = Db::open_read_only_at(&path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        db.begin_snapshot()?;
        let view = View::read_from(&db, data_dir);
        db.end_snapshot();
        view
    }

    fn read_from(db: &Db, data_dir: &Path) -> Result<View, Failure> {
        let clients = db.client_rows()?;
        let mut files = Vec::new();
        for row in db.files()? {
            let meta = db.file_meta(&row.client, &row.file_name)?;
            files.push((row, meta));
        }
        let mut quotas = BTreeMap::new();
        for c in &clients {
            quotas.insert(c.id, db.quota_override(&c.id)?);
        }
        let counters = db.counters()?;
        Ok(View::build(clients, files, quotas, counters, data_dir))
    }

    /// The view of rows read from either database.
    fn build(
        clients: Vec<ClientRow>,
        rows: Vec<(FileRow, FileMeta)>,
        mut quotas: BTreeMap<ClientId, sealdrop_protocol::store::QuotaOverride>,
        counters: Vec<(String, u64)>,
        data_dir: &Path,
    ) -> View {
        let mut files = Vec::new();
        for (row, meta) in rows {
            let size = match (row.verified, meta.size) {
                (true, Some(size)) => Some(size),
                (true, None) => {
                    std::fs::metadata(files::final_path(data_dir, &row.client, &row.file_name))
                        .ok()
                        .map(|m| m.len())
                }
                (false, _) => None,
            };
            files.push(FileView {
                size,
                cksum: meta.cksum.filter(|_| row.verified),
                row,
            });
        }
        quotas.retain(|_, own| !own.is_default());
        View {
            clients,
            files,
            quotas,
            counters: Outcomes::from_entries(counters.iter().map(|(k, n)| (k.as_str(), *n))),
        }
    }

    /// Ids with a client record or a file record: their folders belong.
    fn ids(&self) -> std::collections::BTreeSet<ClientId> {
        self.clients
            .iter()
            .map(|c| c.id)
            .chain(self.files.iter().map(|f| f.row.client))
            .collect()
    }

    fn names(&self) -> BTreeMap<ClientId, String> {
        self.clients
            .iter()
            .map(|c| (c.id, c.name.clone()))
            .collect()
    }

    /// A client by id (32 hex digits) or name.
    fn client(&self, text: &str) -> Result<&ClientRow, Failure> {
        let id = control::parse_id(text);
        self.clients
            .iter()
            .find(|c| Some(c.id) == id || c.name == text)
            .ok_or_else(|| not_found(format!("no client {text:?}")))
    }

    /// (files, bytes) of a client's verified files.
    fn usage(&self, id: &ClientId) -> (u64, u64) {
        self.files
            .iter()
            .filter(|f| f.row.client == *id && f.row.verified)
            .fold((0, 0), |(n, b), f| (n + 1, b + f.size.unwrap_or(0)))
    }

    fn client_json(&self, c: &ClientRow, defaults: &Defaults) -> Value {
        let (files, bytes) = self.usage(&c.id);
        let own = self.quotas.get(&c.id).copied().unwrap_or_default();
        json!({
            "id": c.id.to_hex(),
            "name": c.name,
            "last_seen": c.last_seen,
            "key_exchanged": c.key_exchanged,
            "files": files,
            "bytes": bytes,
            "quota": defaults.in_effect_json(own),
            "own_quota": {"bytes": own.bytes.to_string(), "files": own.files.to_string()},
        })
    }
}

/// Where the server's default quota that the commands show comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefaultsFrom {
    /// The running server said (on PostgreSQL: every server that answered,
    /// all the same).
    Server,
    /// No server answered: the command's own `--quota-*`.
    Flags,
    /// No server answered and no `--quota-*` was given (or, on
    /// PostgreSQL, the servers that answered differ).
    Unknown,
}

/// The server's default quota: what a client without a quota of its own
/// gets.
#[derive(Debug, Clone, Copy)]
struct Defaults {
    quota: Quota,
    from: DefaultsFrom,
}

/// One limit in effect: `None` not known, `Some(None)` unlimited.
type Limit = Option<Option<u64>>;

impl Defaults {
    /// One limit in effect for a client whose own setting is `own`.
    fn limit(&self, own: QuotaSetting, default: Option<u64>) -> Limit {
        match own {
            QuotaSetting::Default => (self.from != DefaultsFrom::Unknown).then_some(default),
            QuotaSetting::Unlimited => Some(None),
            QuotaSetting::Max(n) => Some(Some(n)),
        }
    }

    /// (bytes, files) in effect for a client whose own quota is `own`.
    fn in_effect(&self, own: QuotaOverride) -> (Limit, Limit) {
        (
            self.limit(own.bytes, self.quota.max_bytes),
            self.limit(own.files, self.quota.max_files),
        )
    }

    /// `{"bytes": …, "files": …}`: a number, `null` (unlimited) or
    /// `"unknown"`.
    fn in_effect_json(&self, own: QuotaOverride) -> Value {
        let (bytes, files) = self.in_effect(own);
        json!({"bytes": limit_json(bytes), "files": limit_json(files)})
    }

    fn source(&self) -> &'static str {
        match self.from {
            DefaultsFrom::Server => "server",
            DefaultsFrom::Flags => "flags",
            DefaultsFrom::Unknown => "unknown",
        }
    }

    /// `{"bytes": …, "files": …, "from": "server"|"flags"|"unknown"}`.
    fn json(&self) -> Value {
        let own = QuotaOverride::default();
        let mut value = self.in_effect_json(own);
        value["from"] = json!(self.source());
        value
    }

    /// One line for the text output.
    fn text(&self) -> String {
        let q = self.quota;
        let both = format!("bytes {}, files {}", limit(q.max_bytes), limit(q.max_files));
        match self.from {
            DefaultsFrom::Server => format!("{both} (the running server's)"),
            DefaultsFrom::Flags => {
                format!("{both} (from --quota-bytes/--quota-files: no server answers)")
            }
            DefaultsFrom::Unknown => {
                "not known: no server answers and no --quota-bytes/--quota-files given".into()
            }
        }
    }
}

fn limit_json(l: Limit) -> Value {
    match l {
        None => json!("unknown"),
        Some(v) => json!(v),
    }
}

fn limit_text(l: Limit) -> String {
    match l {
        None => "not known".into(),
        Some(v) => limit(v),
    }
}

/// The server's default quota: asked from the running server (on
/// PostgreSQL every server answering in the data directory); when none
/// answers, the command's `--quota-*` if given; else not known.
fn server_defaults(place: &Place) -> Defaults {
    let sockets = match place.pg() {
        Some(_) => control_sockets(place),
        None => vec![place.socket.clone()],
    };
    let mut answers: Vec<Quota> = Vec::new();
    for socket in &sockets {
        match control::request(socket, &json!({"op": "defaults"}), ANSWER_TIMEOUT) {
            Ok(Reach::Answer(a)) if a["ok"] == json!(true) => {
                let q = &a["result"]["quota"];
                answers.push(Quota {
                    max_bytes: q["bytes"].as_u64(),
                    max_files: q["files"].as_u64(),
                });
            }
            Ok(Reach::NoServer) => {}
            Ok(Reach::Answer(a)) => eprintln!(
                "sealdrop-server: warning: the server on {} did not say its default quota: {}",
                socket.display(),
                a["error"].as_str().unwrap_or("?")
            ),
            Err(e) => eprintln!(
                "sealdrop-server: warning: no answer from the server on {}: {e}",
                socket.display()
            ),
        }
    }
    match answers.first() {
        Some(first) if answers.iter().all(|q| q == first) => Defaults {
            quota: *first,
            from: DefaultsFrom::Server,
        },
        Some(_) => {
            eprintln!(
                "sealdrop-server: warning: the servers answering have different default \
                 quotas (--quota-*): the default is shown as not known"
            );
            Defaults {
                quota: Quota::UNLIMITED,
                from: DefaultsFrom::Unknown,
            }
        }
        None if place.quota_given => Defaults {
            quota: place.quota,
            from: DefaultsFrom::Flags,
        },
        None => Defaults {
            quota: Quota::UNLIMITED,
            from: DefaultsFrom::Unknown,
        },
    }
}

/// Text columns, each as wide as its widest cell, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn limit(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".into(), |v| v.to_string())
}

fn clients_list(place: &Place) -> Done {
    let view = View::read(place)?;
    let rows: Vec<Vec<String>> = view
        .clients
        .iter()
        .map(|c| {
            let (files, bytes) = view.usage(&c.id);
            vec![
                c.id.to_hex(),
                c.name.clone(),
                opt(c.last_seen.as_deref()),
                if c.key_exchanged { "yes" } else { "no" }.into(),
                files.to_string(),
                bytes.to_string(),
            ]
        })
        .collect();
    let text = table(&["ID", "NAME", "LAST SEEN", "KEY", "FILES", "BYTES"], &rows);
    let defaults = server_defaults(place);
    let clients: Vec<Value> = view
        .clients
        .iter()
        .map(|c| view.client_json(c, &defaults))
        .collect();
    Ok((
        json!({ "clients": clients, "default_quota": defaults.json() }),
        text,
        EXIT_OK,
    ))
}

fn files_table(view: &View, files: &[&FileView]) -> String {
    let names = view.names();
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                names
                    .get(&f.row.client)
                    .cloned()
                    .unwrap_or_else(|| "(forgotten)".into()),
                f.row.client.to_hex(),
                f.row.file_name.clone(),
                opt(f.size),
                if f.row.verified { "yes" } else { "no" }.into(),
                opt(f.cksum),
                f.row.path_name.clone(),
            ]
        })
        .collect();
    table(
        &["CLIENT", "ID", "NAME", "SIZE", "VERIFIED", "CKSUM", "PATH"],
        &rows,
    )
}

fn clients_show(place: &Place, client: &str) -> Done {
    let view = View::read(place)?;
    let c = view.client(client)?;
    let defaults = server_defaults(place);
    let mut value = view.client_json(c, &defaults);
    value["default_quota"] = defaults.json();
    let names = view.names();
    let own: Vec<&FileView> = view.files.iter().filter(|f| f.row.client == c.id).collect();
    value["file_list"] = own.iter().map(|f| f.json(&names)).collect();
    let (files, bytes) = view.usage(&c.id);
    let own_quota = view.quotas.get(&c.id).copied().unwrap_or_default();
    let (quota_bytes, quota_files) = defaults.in_effect(own_quota);
    let whose = |s: QuotaSetting| {
        if s == QuotaSetting::Default {
            "server's default"
        } else {
            "own"
        }
    };
    let mut text = table(
        &["FIELD", "VALUE"],
        &[
            vec!["id".into(), c.id.to_hex()],
            vec!["name".into(), c.name.clone()],
            vec!["last seen".into(), opt(c.last_seen.as_deref())],
            vec![
                "key exchanged".into(),
                if c.key_exchanged { "yes" } else { "no" }.into(),
            ],
            vec!["files".into(), files.to_string()],
            vec!["bytes".into(), bytes.to_string()],
            vec![
                "quota bytes".into(),
                format!("{} ({})", limit_text(quota_bytes), whose(own_quota.bytes)),
            ],
            vec![
                "quota files".into(),
                format!("{} ({})", limit_text(quota_files), whose(own_quota.files)),
            ],
            vec!["server's default".into(), defaults.text()],
        ],
    );
    if !own.is_empty() {
        text.push('\n');
        text.push_str(&files_table(&view, &own));
    }
    Ok((value, text, EXIT_OK))
}

fn files_list(place: &Place, client: Option<&str>) -> Done {
    let view = View::read(place)?;
    let id = match client {
        None => None,
        Some(text) => match view.client(text) {
            Ok(c) => Some(c.id),
            // A forgotten client's files are reached by its id.
            Err(e) => Some(control::parse_id(text).ok_or(e)?),
        },
    };
    let chosen: Vec<&FileView> = view
        .files
        .iter()
        .filter(|f| id.is_none_or(|id| f.row.client == id))
        .collect();
    let names = view.names();
    let list: Vec<Value> = chosen.iter().map(|f| f.json(&names)).collect();
    let text = files_table(&view, &chosen);
    Ok((json!({ "files": list }), text, EXIT_OK))
}

fn stats(place: &Place) -> Done {
    let view = View::read(place)?;
    let (files, bytes) = view
        .files
        .iter()
        .filter(|f| f.row.verified)
        .fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.size.unwrap_or(0)));
    let running = server_stats(place)?;
    let lifetime: serde_json::Map<String, Value> = view
        .counters
        .entries()
        .into_iter()
        .map(|(k, n)| (k.to_owned(), json!(n)))
        .collect();
    let value = json!({
        "clients": view.clients.len(),
        "files": files,
        "bytes": bytes,
        "uploads": lifetime,
        "server": running,
    });
    let mut rows = vec![
        vec![
            "clients".into(),
            view.clients.len().to_string(),
            String::new(),
        ],
        vec!["files".into(), files.to_string(), String::new()],
        vec!["bytes".into(), bytes.to_string(), String::new()],
    ];
    for (key, n) in view.counters.entries() {
        let since = running
            .as_ref()
            .and_then(|r| r["uploads"][key].as_u64())
            .map_or_else(|| "-".into(), |n| n.to_string());
        rows.push(vec![format!("uploads {key}"), n.to_string(), since]);
    }
    if let Some(r) = &running {
        for key in [
            "servers",
            "connections",
            "uploads_in_flight",
            "uploads_awaiting_verdict",
            "uptime_secs",
        ] {
            if let Some(n) = r.get(key) {
                rows.push(vec![key.replace('_', " "), String::new(), opt(n.as_u64())]);
            }
        }
    }
    let text = table(&["", "LIFETIME", "SINCE START"], &rows);
    Ok((value, text, EXIT_OK))
}

/// `stats` of the running server, or on PostgreSQL of every server that
/// answers on a control socket in the data directory, added up (`servers`
/// says how many; `uptime_secs` is the longest). `None`: none runs.
fn server_stats(place: &Place) -> Result<Option<Value>, Failure> {
    let sockets = match place.pg() {
        Some(_) => control_sockets(place),
        None => vec![place.socket.clone()],
    };
    let mut answers = Vec::new();
    for socket in &sockets {
        match control::request(socket, &json!({"op": "stats"}), ANSWER_TIMEOUT) {
            Ok(Reach::Answer(a)) if a["ok"] == json!(true) => answers.push(a["result"].clone()),
            Ok(Reach::Answer(a)) => return Err(fail(format!("the server: {}", a["error"]))),
            Ok(Reach::NoServer) => {}
            Err(e) => {
                return Err(fail(format!(
                    "cannot ask the server on {}: {e}",
                    socket.display()
                )))
            }
        }
    }
    if place.pg().is_none() || answers.is_empty() {
        return Ok(answers.pop());
    }
    let mut sum = json!({"servers": answers.len()});
    for a in &answers {
        for key in [
            "connections",
            "uploads_in_flight",
            "uploads_awaiting_verdict",
        ] {
            sum[key] = json!(sum[key].as_u64().unwrap_or(0) + a[key].as_u64().unwrap_or(0));
        }
        let up = a["uptime_secs"].as_u64().unwrap_or(0);
        sum["uptime_secs"] = json!(sum["uptime_secs"].as_u64().unwrap_or(0).max(up));
        if let Some(uploads) = a["uploads"].as_object() {
            for (k, n) in uploads {
                let before = sum["uploads"][k].as_u64().unwrap_or(0);
                sum["uploads"][k] = json!(before + n.as_u64().unwrap_or(0));
            }
        }
    }
    Ok(Some(sum))
}

// ---------------------------------------------------------------------------
// Changing
// ---------------------------------------------------------------------------

/// On PostgreSQL: the control sockets of the servers sharing the data
/// directory (`control.<server id>.sock` there), and `--control-socket`
/// if it exists. Stale ones (a server killed with -9, or one on another
/// machine) are among them; a request to one finds nobody accepting.
fn control_sockets(place: &Place) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(&place.data_dir)
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("control.")
                        .and_then(|rest| rest.strip_suffix(".sock"))
                        .is_some_and(|id| !id.is_empty())
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if !found.contains(&place.socket) && place.socket.exists() {
        found.push(place.socket.clone());
    }
    found
}

/// What telling the servers to withdraw came to.
#[derive(Debug, Default)]
struct Told {
    /// Servers that answered (in the round most answered).
    servers: usize,
    /// Uploads they withdrew.
    withdrawn: u64,
    /// Sockets where a server accepted but gave no proper answer.
    failed: Vec<String>,
}

/// On PostgreSQL, before (and again after) a change to client `id` (and
/// its `file`): every server that answers on its control socket withdraws
/// that client's (that file's) uploads in flight and reads the client
/// again. A socket nobody accepts on is stale and skipped; a server that
/// accepts but does not answer properly is reported on stderr.
fn tell_servers(place: &Place, id: &ClientId, file: Option<&str>, told: &mut Told) {
    let req = json!({"op": "withdraw", "client": id.to_hex(), "file": file});
    ask_servers(place, &req, told);
}

/// Sends `req` to every server that answers on its control socket (see
/// [`tell_servers`]).
fn ask_servers(place: &Place, req: &Value, told: &mut Told) {
    let mut answered = 0;
    for socket in control_sockets(place) {
        let shown = socket.display().to_string();
        match control::request(&socket, req, ANSWER_TIMEOUT) {
            Ok(Reach::Answer(a)) if a["ok"] == json!(true) => {
                answered += 1;
                told.withdrawn += a["result"]["withdrawn"].as_u64().unwrap_or(0);
            }
            Ok(Reach::NoServer) => {}
            Ok(Reach::Answer(a)) => {
                eprintln!(
                    "sealdrop-server: warning: the server on {shown} refused {}: {}",
                    req["op"].as_str().unwrap_or("?"),
                    a["error"].as_str().unwrap_or("?")
                );
                if !told.failed.contains(&shown) {
                    told.failed.push(shown);
                }
            }
            Err(e) => {
                eprintln!("sealdrop-server: warning: no answer from the server on {shown}: {e}");
                if !told.failed.contains(&shown) {
                    told.failed.push(shown);
                }
            }
        }
    }
    // Told before and after the change: the servers, counted once.
    told.servers = told.servers.max(answered);
}

/// Deletes stored files once the change that removed their records
/// committed, then the client's folder if `dir` and it is empty.
fn unlink_after(place: &Place, id: &ClientId, names: &[&str], dir: bool) {
    for name in names {
        if name.is_empty() || name.contains('/') || *name == "." || *name == ".." {
            continue;
        }
        let path = files::final_path(&place.data_dir, id, name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "sealdrop-server: warning: cannot delete {}: {e}",
                path.display()
            ),
        }
    }
    if dir {
        let _ = std::fs::remove_dir(files::client_dir(&place.data_dir, id));
    }
}

/// The client a command names, on PostgreSQL: 32 hex digits are an id,
/// anything else a name.
fn pg_resolve(db: &mut postgres::Client, text: &str) -> Result<ClientId, Failure> {
    if let Some(id) = control::parse_id(text) {
        return Ok(id);
    }
    pg::admin::client_by_name(db, text)?
        .ok_or_else(|| not_found(format!("no client named {text:?}")))
}

/// A change on PostgreSQL, made by the command itself: the same requests
/// and results as the control socket's, plus `servers_told` (and
/// `servers_failed`, sockets that accepted but did not answer) for those
/// that withdraw uploads. `running`: a server answers (temporary files
/// are then uploads in progress).
fn pg_apply(
    place: &Place,
    db: &mut postgres::Client,
    req: &Value,
    running: bool,
) -> Result<Value, Failure> {
    let text = |name: &str| {
        req[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("request without \"{name}\"")))
    };
    let mut told = Told::default();
    let told_json = |told: &Told| (json!(told.servers), json!(told.failed));
    match req["op"].as_str().unwrap_or("") {
        "forget" => {
            let id = pg_resolve(db, &text("client")?)?;
            let delete = req["delete_files"] == json!(true);
            if !pg::admin::client_exists(db, &id)? {
                return Err(not_found(format!(
                    "forget client: no such client {}",
                    id.to_hex()
                )));
            }
            tell_servers(place, &id, None, &mut told);
            let done = pg::admin::forget(db, &id, delete)?.ok_or_else(|| {
                not_found(format!("forget client: no such client {}", id.to_hex()))
            })?;
            let verified = |f: &&FileRow| f.verified;
            let names: Vec<String> = done
                .rows
                .iter()
                .filter(verified)
                .map(|f| f.file_name.clone())
                .collect();
            if delete {
                let all: Vec<&str> = done.rows.iter().map(|f| f.file_name.as_str()).collect();
                unlink_after(place, &id, &all, true);
            }
            tell_servers(place, &id, None, &mut told);
            let (servers, failed) = told_json(&told);
            Ok(json!({
                "id": id.to_hex(),
                "name": done.name,
                "files_deleted": if delete { names.clone() } else { Vec::new() },
                "files_kept": if delete { Vec::new() } else { names },
                "uploads_withdrawn": told.withdrawn,
                "servers_told": servers,
                "servers_failed": failed,
            }))
        }
        "delete" => {
            let id = pg_resolve(db, &text("client")?)?;
            let name = text("file")?;
            tell_servers(place, &id, Some(&name), &mut told);
            let had_record = pg::admin::delete_file(db, &id, &name, false)?;
            if had_record {
                unlink_after(place, &id, &[&name], false);
            }
            tell_servers(place, &id, Some(&name), &mut told);
            if !had_record && told.withdrawn == 0 {
                return Err(not_found(format!("delete file: no such file {name:?}")));
            }
            let (servers, failed) = told_json(&told);
            Ok(json!({
                "client": id.to_hex(),
                "name": name,
                "had_record": had_record,
                "uploads_withdrawn": told.withdrawn,
                "servers_told": servers,
                "servers_failed": failed,
            }))
        }
        "quota" => {
            let id = pg_resolve(db, &text("client")?)?;
            let setting = |name: &str| -> Result<QuotaSetting, Failure> {
                match req.get(name) {
                    None | Some(Value::Null) => Ok(QuotaSetting::Default),
                    Some(Value::String(v)) => v.parse().map_err(fail),
                    Some(_) => Err(fail(format!("\"{name}\" is not a count"))),
                }
            };
            let own = sealdrop_protocol::store::QuotaOverride {
                bytes: setting("bytes")?,
                files: setting("files")?,
            };
            if !pg::admin::set_quota(db, &id, own)? {
                return Err(not_found(format!(
                    "set quota: no such client {}",
                    id.to_hex()
                )));
            }
            let quota = pg::admin::quota_of(db, &id)?.apply(place.quota);
            // Open connections read the client again at their next request.
            let mut told = Told::default();
            ask_servers(
                place,
                &json!({"op": "refresh", "client": id.to_hex()}),
                &mut told,
            );
            Ok(json!({
                "id": id.to_hex(),
                "own": {"bytes": own.bytes.to_string(), "files": own.files.to_string()},
                "quota": {"bytes": quota.max_bytes, "files": quota.max_files},
                "servers_told": told.servers,
            }))
        }
        "repair" => {
            let id = control::parse_id(&text("client")?)
                .ok_or_else(|| fail("repair needs a client id"))?;
            let name = text("file")?;
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(fail(format!("unusable file name {name:?}")));
            }
            let path = files::final_path(&place.data_dir, &id, &name);
            let verified = pg::admin::file(db, &id, &name)?.is_some_and(|r| r.verified);
            let done = match text("action")?.as_str() {
                "drop-row" => {
                    if !verified || path.exists() {
                        false
                    } else {
                        tell_servers(place, &id, Some(&name), &mut told);
                        let done = !path.exists() && pg::admin::delete_file(db, &id, &name, true)?;
                        tell_servers(place, &id, Some(&name), &mut told);
                        done
                    }
                }
                "delete-stray" => {
                    let keep = if files::is_part_name(&name) {
                        running
                    } else {
                        verified
                    };
                    !keep && std::fs::remove_file(&path).is_ok()
                }
                "adopt" => {
                    let size = req["size"].as_u64();
                    let cksum = req["cksum"].as_u64().and_then(|c| u32::try_from(c).ok());
                    let (Some(size), Some(cksum)) = (size, cksum) else {
                        return Err(fail("adopt needs \"size\" and \"cksum\""));
                    };
                    let fits =
                        std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size);
                    let path_name = path.to_str().ok_or_else(|| fail("the path is not UTF-8"))?;
                    !files::is_part_name(&name)
                        && !verified
                        && fits
                        && pg::admin::adopt(db, &id, &name, path_name, size, cksum)?
                }
                "drop-mismatched" => {
                    let recorded = control::recorded_meta(req).ok_or_else(|| {
                        fail("drop-mismatched needs \"recorded_size\" and \"recorded_cksum\"")
                    })?;
                    let done = verified
                        && path.is_file()
                        && pg::admin::drop_if_recorded(db, &id, &name, recorded)?;
                    if done {
                        // Open connections read the client again.
                        ask_servers(
                            place,
                            &json!({"op": "refresh", "client": id.to_hex()}),
                            &mut told,
                        );
                    }
                    done
                }
                other => return Err(fail(format!("unknown repair {other:?}"))),
            };
            Ok(json!({ "repaired": done }))
        }
        other => Err(fail(format!("unknown request {other:?}"))),
    }
}

/// Carries out a change: through the running server's control socket, or
/// directly on the data directory when no server answers there.
fn change(place: &Place, req: &Value) -> Result<Value, Failure> {
    if let Some(url) = place.pg() {
        return pg_apply(place, &mut pg::admin::open(url)?, req, false);
    }
    match control::request(&place.socket, req, ANSWER_TIMEOUT) {
        Ok(Reach::Answer(a)) if a["ok"] == json!(true) => Ok(a["result"].clone()),
        Ok(Reach::Answer(a)) => Err(Failure {
            status: if a["not_found"] == json!(true) {
                EXIT_NOT_FOUND
            } else {
                EXIT_ERROR
            },
            message: a["error"]
                .as_str()
                .unwrap_or("the server refused")
                .to_owned(),
        }),
        Ok(Reach::NoServer) => {
            let mut store = open_directly(place)?;
            let result = control::apply(&mut store, req, Instant::now(), None)?;
            commit(&mut store)?;
            if req["op"] == "forget" && req["delete_files"] == json!(true) {
                // Still holding the lock: temporary files in the client's
                // folder are leftovers of uploads cut off (a running
                // server deletes those at its start), so they go too, and
                // then the folder.
                if let Some(id) = result["id"].as_str().and_then(control::parse_id) {
                    remove_leftovers(&files::client_dir(&place.data_dir, &id));
                }
            }
            Ok(result)
        }
        Err(e) => Err(fail(format!(
            "cannot talk to the server on {}: {e}",
            place.socket.display()
        ))),
    }
}

/// Deletes the temporary files (`.part-*`) in a forgotten client's folder,
/// then the folder if nothing else is in it. Only while the data
/// directory's lock is held and no server runs.
fn remove_leftovers(folder: &Path) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if files::is_part_name(&name) && e.file_type().is_ok_and(|t| t.is_file()) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                eprintln!(
                    "sealdrop-server: warning: cannot delete {}: {err}",
                    e.path().display()
                );
            }
        }
    }
    let _ = std::fs::remove_dir(folder);
}

/// The data directory, locked, for a change while no server runs.
fn open_directly(place: &Place) -> Result<DiskStore, Failure> {
    let config = StoreConfig {
        quota: place.quota,
        database: place.database.clone(),
        ..StoreConfig::default()
    };
    DiskStore::open_for_admin(&place.data_dir, config).map_err(|e| {
        fail(format!(
            "{e}; no server answers on its control socket {} (started with another \
             --control-socket?)",
            place.socket.display()
        ))
    })
}

fn commit(store: &mut DiskStore) -> Result<(), Failure> {
    match store.commit(Instant::now()).error {
        None => Ok(()),
        Some(e) => Err(fail(format!("the change could not be made durable: {e}"))),
    }
}

fn names_line(names: &Value) -> String {
    let list: Vec<&str> = names
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// On PostgreSQL: how many servers were told to withdraw, and which did
/// not answer (nothing on SQLite).
fn servers_line(r: &Value) -> String {
    let Some(n) = r.get("servers_told") else {
        return String::new();
    };
    let mut line = format!("servers told: {n}\n");
    if let Some(failed) = r["servers_failed"].as_array().filter(|f| !f.is_empty()) {
        line += &format!("servers not answering: {}\n", names_line(&json!(failed)));
    }
    line
}

fn clients_forget(place: &Place, client: &str, delete_files: bool) -> Done {
    let r = change(
        place,
        &json!({"op": "forget", "client": client, "delete_files": delete_files}),
    )?;
    let who = match r["name"].as_str() {
        Some(name) => format!("{name} ({})", r["id"].as_str().unwrap_or("")),
        None => r["id"].as_str().unwrap_or("").to_owned(),
    };
    let mut text = format!("forgot client {who}\n");
    if delete_files {
        text += &format!("files deleted: {}\n", names_line(&r["files_deleted"]));
    } else {
        text += &format!(
            "files kept (under its id): {}\n",
            names_line(&r["files_kept"])
        );
    }
    text += &format!("uploads withdrawn: {}\n", r["uploads_withdrawn"]);
    text += &servers_line(&r);
    Ok((r, text, EXIT_OK))
}

fn clients_quota(
    place: &Place,
    client: &str,
    bytes: Option<QuotaSetting>,
    files: Option<QuotaSetting>,
    clear: bool,
) -> Done {
    if !clear && bytes.is_none() && files.is_none() {
        return Err(fail("say --bytes, --files or --clear"));
    }
    // A limit not given keeps its current value.
    let view = View::read(place)?;
    let current = match view.client(client) {
        Ok(c) => view.quotas.get(&c.id).copied().unwrap_or_default(),
        Err(_) => Default::default(),
    };
    let (bytes, files) = if clear {
        (QuotaSetting::Default, QuotaSetting::Default)
    } else {
        (
            bytes.unwrap_or(current.bytes),
            files.unwrap_or(current.files),
        )
    };
    let mut r = change(
        place,
        &json!({"op": "quota", "client": client,
                "bytes": bytes.to_string(), "files": files.to_string()}),
    )?;
    // In effect: the answer's, unless no server answered and no --quota-*
    // was given (a change applied directly does not know the default).
    let defaults = server_defaults(place);
    let own = QuotaOverride { bytes, files };
    r["quota"] = defaults.in_effect_json(own);
    r["default_quota"] = defaults.json();
    let (in_bytes, in_files) = defaults.in_effect(own);
    let mut text = format!(
        "quota of {}: bytes {} ({}), files {} ({})\n",
        r["id"].as_str().unwrap_or(""),
        limit_text(in_bytes),
        bytes,
        limit_text(in_files),
        files,
    );
    text += &format!("server's default: {}\n", defaults.text());
    Ok((r, text, EXIT_OK))
}

fn files_delete(place: &Place, client: &str, name: &str) -> Done {
    let r = change(
        place,
        &json!({"op": "delete", "client": client, "file": name}),
    )?;
    let mut text = format!(
        "deleted {name:?} of {}; uploads withdrawn: {}\n",
        r["client"].as_str().unwrap_or(""),
        r["uploads_withdrawn"]
    );
    text += &servers_line(&r);
    Ok((r, text, EXIT_OK))
}

// ---------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------

/// One problem `verify` found.
#[derive(Debug, Clone)]
struct Finding {
    /// `missing-file`, `unrecorded-file`, `leftover`, `cksum-mismatch`,
    /// `size-mismatch`, `unreadable`.
    kind: &'static str,
    path: PathBuf,
    /// The client and file name, for findings in a client's folder.
    file: Option<(ClientId, String)>,
    /// The client, for `empty-folder`.
    folder_of: Option<ClientId>,
    detail: String,
    repaired: bool,
    /// For `size-mismatch` and `cksum-mismatch`: the size and cksum the
    /// record held when it was read (`--repair mismatched` drops the
    /// record only if it still holds them).
    recorded: Option<FileMeta>,
}

/// A client's folder with nothing in it, of an id that neither a client
/// record nor a file record has (left by a forget, or by deleting a
/// forgotten client's files one by one).
fn empty_folder(id: ClientId, path: PathBuf) -> Finding {
    Finding {
        kind: "empty-folder",
        path,
        file: None,
        folder_of: Some(id),
        recorded: None,
        detail: "empty folder of no client".into(),
        repaired: false,
    }
}

/// After `--repair strays`: the folders its repairs emptied (a leftover
/// deleted, the last record of a forgotten client dropped), of ids that
/// have no record any more, go too, each reported as a repaired
/// `empty-folder`. Read against fresh records, as a server may run.
fn remove_emptied_folders(place: &Place, findings: &mut Vec<Finding>) -> Result<(), Failure> {
    let known = View::read(place)?.ids();
    let Ok(entries) = std::fs::read_dir(files::files_root(&place.data_dir)) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = control::parse_id(&name).filter(|id| id.to_hex() == name) else {
            continue;
        };
        if known.contains(&id) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // remove_dir deletes only an empty folder.
        if std::fs::remove_dir(entry.path()).is_ok() {
            let mut f = empty_folder(id, entry.path());
            f.repaired = true;
            findings.push(f);
        }
    }
    Ok(())
}

fn cksum_of(path: &Path) -> std::io::Result<(u64, u32)> {
    let mut f = std::fs::File::open(path)?;
    let mut ck = Cksum::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ck.update(&buf[..n]);
    }
    Ok((ck.len(), ck.finish()))
}

fn verify(place: &Place, args: &VerifyArgs) -> Done {
    if args.repair.contains(&Repair::Strays) && args.repair.contains(&Repair::Adopt) {
        return Err(fail(
            "--repair strays and adopt disagree on unrecorded files: choose one",
        ));
    }
    let running = match place.pg() {
        // Any server of the data directory: their temporary files are
        // uploads in progress.
        Some(_) => control_sockets(place).iter().any(|socket| {
            matches!(
                control::request(socket, &json!({"op": "ping"}), ANSWER_TIMEOUT),
                Ok(Reach::Answer(_))
            )
        }),
        None => matches!(
            control::request(&place.socket, &json!({"op": "ping"}), ANSWER_TIMEOUT),
            Ok(Reach::Answer(_))
        ),
    };
    let view = View::read(place)?;
    let mut findings = Vec::new();
    let rows: BTreeMap<(ClientId, String), &FileView> = view
        .files
        .iter()
        .map(|f| ((f.row.client, f.row.file_name.clone()), f))
        .collect();
    let mut in_progress = 0usize;
    let mut files_seen = 0usize;
    let known = view.ids();
    // The file tree against the records.
    let root = files::files_root(&place.data_dir);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e.collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(fail(format!("cannot read {}: {e}", root.display()))),
    };
    for entry in entries.into_iter().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = control::parse_id(&name).filter(|id| id.to_hex() == name);
        let (Some(id), true) = (id, path.is_dir() && !path.is_symlink()) else {
            findings.push(Finding {
                kind: "leftover",
                path,
                file: None,
                detail: "not a client's folder".into(),
                repaired: false,
                folder_of: None,
                recorded: None,
            });
            continue;
        };
        let Ok(inner) = std::fs::read_dir(&path) else {
            continue;
        };
        let inner: Vec<_> = inner.flatten().collect();
        if inner.is_empty() && !known.contains(&id) {
            findings.push(empty_folder(id, path));
            continue;
        }
        for e in inner {
            let file = e.file_name().to_string_lossy().into_owned();
            let fpath = e.path();
            let regular = e.file_type().is_ok_and(|t| t.is_file());
            if files::is_part_name(&file) && regular {
                if running {
                    in_progress += 1;
                } else {
                    findings.push(Finding {
                        kind: "leftover",
                        path: fpath,
                        file: Some((id, file)),
                        detail: "temporary file of an upload cut off".into(),
                        repaired: false,
                        folder_of: None,
                        recorded: None,
                    });
                }
                continue;
            }
            if !regular {
                findings.push(Finding {
                    kind: "leftover",
                    path: fpath,
                    file: None,
                    detail: "not a regular file".into(),
                    repaired: false,
                    folder_of: None,
                    recorded: None,
                });
                continue;
            }
            files_seen += 1;
            match rows.get(&(id, file.clone())) {
                Some(f) if f.row.verified => {}
                found => findings.push(Finding {
                    kind: "unrecorded-file",
                    path: fpath,
                    detail: if found.is_some() {
                        "its record says it was never confirmed".into()
                    } else {
                        "no record".into()
                    },
                    file: Some((id, file)),
                    repaired: false,
                    folder_of: None,
                    recorded: None,
                }),
            }
        }
    }
    // The records against the file tree, and the contents.
    let mut cksums = 0usize;
    for f in view.files.iter().filter(|f| f.row.verified) {
        let path = files::final_path(&place.data_dir, &f.row.client, &f.row.file_name);
        let file = Some((f.row.client, f.row.file_name.clone()));
        if !path.is_file() {
            findings.push(Finding {
                kind: "missing-file",
                path,
                file,
                detail: "recorded as verified, not on disk".into(),
                repaired: false,
                folder_of: None,
                recorded: None,
            });
            continue;
        }
        let recorded = Some(FileMeta {
            size: f.size,
            cksum: f.cksum,
        });
        if !args.cksum {
            // The size costs a stat: a record that describes another
            // version of the file (an accept cut off between its rename
            // and its commit) shows without --cksum.
            if let Some(len) = std::fs::metadata(&path)
                .ok()
                .map(|m| m.len())
                .filter(|&len| f.size.is_some_and(|s| s != len))
            {
                findings.push(Finding {
                    kind: "size-mismatch",
                    path,
                    file,
                    detail: format!("{len} bytes, recorded {}", opt(f.size)),
                    repaired: false,
                    folder_of: None,
                    recorded,
                });
            }
            continue;
        }
        cksums += 1;
        match cksum_of(&path) {
            Err(e) => findings.push(Finding {
                kind: "unreadable",
                path,
                file,
                detail: e.to_string(),
                repaired: false,
                folder_of: None,
                recorded: None,
            }),
            Ok((size, ck)) => {
                if f.size.is_some_and(|s| s != size) {
                    findings.push(Finding {
                        kind: "size-mismatch",
                        path,
                        file,
                        detail: format!("{size} bytes, recorded {}", opt(f.size)),
                        repaired: false,
                        folder_of: None,
                        recorded,
                    });
                } else if f.cksum.is_some_and(|c| c != ck) {
                    findings.push(Finding {
                        kind: "cksum-mismatch",
                        path,
                        file,
                        detail: format!("cksum {ck}, recorded {}", opt(f.cksum)),
                        repaired: false,
                        folder_of: None,
                        recorded,
                    });
                }
            }
        }
    }
    if running {
        drop_raced(place, &mut findings, args.cksum)?;
    }
    if !args.repair.is_empty() && !findings.is_empty() {
        repair(place, &mut findings, &args.repair, running)?;
        if args.repair.contains(&Repair::Strays) {
            remove_emptied_folders(place, &mut findings)?;
        }
    }
    let status = if findings.is_empty() {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    };
    let list: Vec<Value> = findings
        .iter()
        .map(|f| {
            json!({
                "kind": f.kind,
                "path": f.path.display().to_string(),
                "client": f.file.as_ref().map(|(id, _)| id).or(f.folder_of.as_ref()).map(ClientId::to_hex),
                "name": f.file.as_ref().map(|(_, n)| n),
                "detail": f.detail,
                "repaired": f.repaired,
            })
        })
        .collect();
    let value = json!({
        "findings": list,
        "checked": {"records": view.files.len(), "files": files_seen, "cksums": cksums,
                    "uploads_in_progress": in_progress},
        "server_running": running,
    });
    let mut text = String::new();
    if !findings.is_empty() {
        let rows: Vec<Vec<String>> = findings
            .iter()
            .map(|f| {
                vec![
                    f.kind.into(),
                    f.path.display().to_string(),
                    f.detail.clone(),
                    if f.repaired { "repaired" } else { "" }.into(),
                ]
            })
            .collect();
        text = table(&["PROBLEM", "PATH", "DETAIL", ""], &rows);
    }
    let repaired = findings.iter().filter(|f| f.repaired).count();
    text += &format!(
        "checked {} record(s), {files_seen} file(s), {cksums} cksum(s): {} problem(s), {repaired} repaired\n",
        view.files.len(),
        findings.len(),
    );
    Ok((value, text, status))
}

/// While a server runs, a commit between reading the records and reading
/// the tree can make a file look unrecorded or a record look orphaned:
/// such findings are checked again against a fresh read.
fn drop_raced(place: &Place, findings: &mut Vec<Finding>, cksum: bool) -> Result<(), Failure> {
    let fresh = View::read(place)?;
    let row = |id: &ClientId, name: &str| {
        fresh
            .files
            .iter()
            .find(|f| f.row.client == *id && f.row.file_name == name)
    };
    findings.retain(|f| {
        if let Some(id) = &f.folder_of {
            // A client registered meanwhile may have begun an upload.
            let still_empty = std::fs::read_dir(&f.path).is_ok_and(|mut d| d.next().is_none());
            let known = fresh.clients.iter().any(|c| c.id == *id)
                || fresh.files.iter().any(|r| r.row.client == *id);
            return still_empty && !known;
        }
        let Some((id, name)) = &f.file else {
            return true;
        };
        match f.kind {
            "unrecorded-file" => f.path.exists() && !row(id, name).is_some_and(|r| r.row.verified),
            "missing-file" => !f.path.exists() && row(id, name).is_some_and(|r| r.row.verified),
            "size-mismatch" | "cksum-mismatch" if cksum => {
                // Replaced by a new accept meanwhile: compare again.
                match (row(id, name), cksum_of(&f.path)) {
                    (Some(r), Ok((size, ck))) => {
                        r.size.is_some_and(|s| s != size) || r.cksum.is_some_and(|c| c != ck)
                    }
                    _ => true,
                }
            }
            "size-mismatch" => match (row(id, name), std::fs::metadata(&f.path)) {
                (Some(r), Ok(m)) => r.size.is_some_and(|s| s != m.len()),
                _ => true,
            },
            _ => true,
        }
    });
    Ok(())
}

fn repair(
    place: &Place,
    findings: &mut [Finding],
    what: &[Repair],
    running: bool,
) -> Result<(), Failure> {
    let mut shared = match place.pg() {
        Some(url) => Some(pg::admin::open(url)?),
        None => None,
    };
    let mut direct = if running || shared.is_some() {
        None
    } else {
        Some(open_directly(place)?)
    };
    for f in findings.iter_mut() {
        let req = match (f.kind, &f.file) {
            ("missing-file", Some((id, name))) if what.contains(&Repair::Rows) => {
                json!({"op": "repair", "action": "drop-row", "client": id.to_hex(), "file": name})
            }
            ("unrecorded-file" | "leftover", Some((id, name)))
                if what.contains(&Repair::Strays) =>
            {
                json!({"op": "repair", "action": "delete-stray", "client": id.to_hex(), "file": name})
            }
            ("unrecorded-file", Some((id, name))) if what.contains(&Repair::Adopt) => {
                let Ok((size, cksum)) = cksum_of(&f.path) else {
                    continue;
                };
                json!({"op": "repair", "action": "adopt", "client": id.to_hex(), "file": name,
                       "size": size, "cksum": cksum})
            }
            ("size-mismatch" | "cksum-mismatch", Some((id, name)))
                if what.contains(&Repair::Mismatched) =>
            {
                let recorded = f.recorded.unwrap_or_default();
                json!({"op": "repair", "action": "drop-mismatched", "client": id.to_hex(),
                       "file": name, "recorded_size": recorded.size,
                       "recorded_cksum": recorded.cksum})
            }
            ("leftover" | "empty-folder", None) if what.contains(&Repair::Strays) => {
                // Outside any client's folder: the server never touches
                // these; a file or an empty folder goes.
                f.repaired = std::fs::remove_file(&f.path)
                    .or_else(|_| std::fs::remove_dir(&f.path))
                    .is_ok();
                continue;
            }
            _ => continue,
        };
        let result = match (shared.as_mut(), direct.as_mut()) {
            (Some(db), _) => pg_apply(place, db, &req, running)?,
            (None, Some(store)) => control::apply(store, &req, Instant::now(), None)?,
            (None, None) => change(place, &req)?,
        };
        f.repaired = result["repaired"] == json!(true);
    }
    if let Some(store) = direct.as_mut() {
        commit(store)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let t = table(
            &["ID", "NAME", "X"],
            &[
                vec!["1".into(), "alice".into(), "".into()],
                vec!["22".into(), "bo".into(), "y".into()],
            ],
        );
        assert_eq!(t, "ID  NAME   X\n1   alice\n22  bo     y\n");
    }

    #[test]
    fn quota_values_take_sizes_unlimited_and_default() {
        assert_eq!(parse_setting_bytes("2K"), Ok(QuotaSetting::Max(2048)));
        assert_eq!(
            parse_setting_bytes("unlimited"),
            Ok(QuotaSetting::Unlimited)
        );
        assert_eq!(parse_setting_bytes("default"), Ok(QuotaSetting::Default));
        assert!(parse_setting_bytes("lots").is_err());
    }
}
