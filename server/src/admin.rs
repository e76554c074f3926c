//! The administration commands: `sealdrop-server clients ...`, `files
//! ...`, `stats`, `verify` (docs/operations.md, "Administration").
//!
//! Commands that only look open the database read-only (WAL lets them read
//! beside a running server; they take no lock). Commands that change
//! something go through the running server's control socket
//! ([`crate::control`]) so the change applies between two passes of its
//! loop; when no server answers there (no socket, or nobody accepting)
//! they take the data directory's lock themselves and apply the same
//! change directly ([`control::apply`]), then commit it.
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
use sealdrop_protocol::store::{Quota, QuotaSetting, Store};
use sealdrop_protocol::ClientId;

use crate::control::{self, ApplyError, Reach};
use crate::db::{ClientRow, Db, FileRow};
use crate::files;
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
    /// records unrecorded files as verified instead.
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
    /// The server's quota settings (for a change applied directly).
    pub quota: Quota,
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
    let result = match cmd {
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
    };
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
    fn read(data_dir: &Path) -> Result<View, Failure> {
        let db = Db::open_read_only(data_dir)
            .map_err(|e| fail(format!("cannot read {}: {e}", data_dir.display())))?;
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
        let mut quotas = BTreeMap::new();
        for c in &clients {
            let own = db.quota_override(&c.id)?;
            if !own.is_default() {
                quotas.insert(c.id, own);
            }
        }
        let counters = db.counters()?;
        Ok(View {
            clients,
            files,
            quotas,
            counters: Outcomes::from_entries(counters.iter().map(|(k, n)| (k.as_str(), *n))),
        })
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

    fn client_json(&self, c: &ClientRow, server: Quota) -> Value {
        let (files, bytes) = self.usage(&c.id);
        let own = self.quotas.get(&c.id).copied().unwrap_or_default();
        let quota = own.apply(server);
        json!({
            "id": c.id.to_hex(),
            "name": c.name,
            "last_seen": c.last_seen,
            "key_exchanged": c.key_exchanged,
            "files": files,
            "bytes": bytes,
            "quota": {"bytes": quota.max_bytes, "files": quota.max_files},
            "own_quota": {"bytes": own.bytes.to_string(), "files": own.files.to_string()},
        })
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
    let view = View::read(&place.data_dir)?;
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
    let clients: Vec<Value> = view
        .clients
        .iter()
        .map(|c| view.client_json(c, place.quota))
        .collect();
    Ok((json!({ "clients": clients }), text, EXIT_OK))
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
    let view = View::read(&place.data_dir)?;
    let c = view.client(client)?;
    let mut value = view.client_json(c, place.quota);
    let names = view.names();
    let own: Vec<&FileView> = view.files.iter().filter(|f| f.row.client == c.id).collect();
    value["file_list"] = own.iter().map(|f| f.json(&names)).collect();
    let (files, bytes) = view.usage(&c.id);
    let own_quota = view.quotas.get(&c.id).copied().unwrap_or_default();
    let quota = own_quota.apply(place.quota);
    let whose = |s: QuotaSetting| {
        if s == QuotaSetting::Default {
            "server's"
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
                format!("{} ({})", limit(quota.max_bytes), whose(own_quota.bytes)),
            ],
            vec![
                "quota files".into(),
                format!("{} ({})", limit(quota.max_files), whose(own_quota.files)),
            ],
        ],
    );
    if !own.is_empty() {
        text.push('\n');
        text.push_str(&files_table(&view, &own));
    }
    Ok((value, text, EXIT_OK))
}

fn files_list(place: &Place, client: Option<&str>) -> Done {
    let view = View::read(&place.data_dir)?;
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
    let view = View::read(&place.data_dir)?;
    let (files, bytes) = view
        .files
        .iter()
        .filter(|f| f.row.verified)
        .fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.size.unwrap_or(0)));
    let running = match control::request(&place.socket, &json!({"op": "stats"}), ANSWER_TIMEOUT) {
        Ok(Reach::Answer(a)) if a["ok"] == json!(true) => Some(a["result"].clone()),
        Ok(Reach::Answer(a)) => return Err(fail(format!("the server: {}", a["error"]))),
        Ok(Reach::NoServer) => None,
        Err(e) => {
            return Err(fail(format!(
                "cannot ask the server on {}: {e}",
                place.socket.display()
            )))
        }
    };
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
            "connections",
            "uploads_in_flight",
            "uploads_awaiting_verdict",
            "uptime_secs",
        ] {
            rows.push(vec![
                key.replace('_', " "),
                String::new(),
                opt(r[key].as_u64()),
            ]);
        }
    }
    let text = table(&["", "LIFETIME", "SINCE START"], &rows);
    Ok((value, text, EXIT_OK))
}

// ---------------------------------------------------------------------------
// Changing
// ---------------------------------------------------------------------------

/// Carries out a change: through the running server's control socket, or
/// directly on the data directory when no server answers there.
fn change(place: &Place, req: &Value) -> Result<Value, Failure> {
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
            Ok(result)
        }
        Err(e) => Err(fail(format!(
            "cannot talk to the server on {}: {e}",
            place.socket.display()
        ))),
    }
}

/// The data directory, locked, for a change while no server runs.
fn open_directly(place: &Place) -> Result<DiskStore, Failure> {
    let config = StoreConfig {
        quota: place.quota,
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
    let view = View::read(&place.data_dir)?;
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
    let r = change(
        place,
        &json!({"op": "quota", "client": client,
                "bytes": bytes.to_string(), "files": files.to_string()}),
    )?;
    let text = format!(
        "quota of {}: bytes {} ({}), files {} ({})\n",
        r["id"].as_str().unwrap_or(""),
        limit(r["quota"]["bytes"].as_u64()),
        r["own"]["bytes"].as_str().unwrap_or(""),
        limit(r["quota"]["files"].as_u64()),
        r["own"]["files"].as_str().unwrap_or(""),
    );
    Ok((r, text, EXIT_OK))
}

fn files_delete(place: &Place, client: &str, name: &str) -> Done {
    let r = change(
        place,
        &json!({"op": "delete", "client": client, "file": name}),
    )?;
    let text = format!(
        "deleted {name:?} of {}; uploads withdrawn: {}\n",
        r["client"].as_str().unwrap_or(""),
        r["uploads_withdrawn"]
    );
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
    detail: String,
    repaired: bool,
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
    let running = matches!(
        control::request(&place.socket, &json!({"op": "ping"}), ANSWER_TIMEOUT),
        Ok(Reach::Answer(_))
    );
    let view = View::read(&place.data_dir)?;
    let mut findings = Vec::new();
    let rows: BTreeMap<(ClientId, String), &FileView> = view
        .files
        .iter()
        .map(|f| ((f.row.client, f.row.file_name.clone()), f))
        .collect();
    let mut in_progress = 0usize;
    let mut files_seen = 0usize;
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
            });
            continue;
        };
        let Ok(inner) = std::fs::read_dir(&path) else {
            continue;
        };
        for e in inner.flatten() {
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
            });
            continue;
        }
        if !args.cksum {
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
            }),
            Ok((size, ck)) => {
                if f.size.is_some_and(|s| s != size) {
                    findings.push(Finding {
                        kind: "size-mismatch",
                        path,
                        file,
                        detail: format!("{size} bytes, recorded {}", opt(f.size)),
                        repaired: false,
                    });
                } else if f.cksum.is_some_and(|c| c != ck) {
                    findings.push(Finding {
                        kind: "cksum-mismatch",
                        path,
                        file,
                        detail: format!("cksum {ck}, recorded {}", opt(f.cksum)),
                        repaired: false,
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
                "client": f.file.as_ref().map(|(id, _)| id.to_hex()),
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
    let fresh = View::read(&place.data_dir)?;
    let row = |id: &ClientId, name: &str| {
        fresh
            .files
            .iter()
            .find(|f| f.row.client == *id && f.row.file_name == name)
    };
    findings.retain(|f| {
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
    let mut direct = if running {
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
            ("leftover", None) if what.contains(&Repair::Strays) => {
                // Outside any client's folder: the server never touches
                // these; a file or an empty folder goes.
                f.repaired = std::fs::remove_file(&f.path)
                    .or_else(|_| std::fs::remove_dir(&f.path))
                    .is_ok();
                continue;
            }
            _ => continue,
        };
        let result = match direct.as_mut() {
            Some(store) => control::apply(store, &req, Instant::now(), None)?,
            None => change(place, &req)?,
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
