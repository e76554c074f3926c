//! The control socket: how administration commands reach a running server.
//!
//! A Unix stream socket ([`SOCKET_NAME`] in the data directory unless
//! `--control-socket` says otherwise), mode 0600, served by the event loop
//! itself as mio sources, so a change applies between two passes through
//! the [`Store`] contract and commits with the pass, never racing an
//! upload in flight (docs/operations.md, "Administration").
//!
//! The protocol is one JSON object per line each way: a request
//! (`{"op":"forget","client":"alice","delete_files":true}`) and its answer
//! (`{"ok":true,"result":{...}}` or `{"ok":false,"error":"...",
//! "not_found":true}`), several requests per connection, one at a time.
//! Every limit is a constant here: [`MAX_REQUEST`] bytes per line,
//! [`MAX_CONNECTIONS`] connections at once (more are closed at once),
//! [`TIMEOUT`] of silence before a connection is closed. An answer that
//! reports a change is written only once the commit that makes it durable
//! succeeded ([`Control::committed`]).
//!
//! [`apply`] is what a request does; the administration commands call it
//! themselves, on a store they opened, when no server runs.
//!
//! `defaults` answers the server's default quota (its `--quota-*`).
//!
//! A server whose records are in PostgreSQL serves only `ping`, `stats`,
//! `defaults`, `refresh` and `withdraw`
//! (`{"op":"withdraw","client":"<hex>","file":null}`): the command makes
//! its change in the shared database itself, and asks every server to
//! withdraw the uploads the change concerns
//! ([`DiskStore::withdraw_changed`]).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use serde_json::{json, Value};

use sealdrop_protocol::store::{Ctx, QuotaOverride, QuotaSetting, Store, StoreError};
use sealdrop_protocol::ClientId;

use crate::store::DiskStore;

/// The control socket's file name in the data directory.
pub const SOCKET_NAME: &str = "control.sock";
/// Longest request line, in bytes (a request is a few hundred bytes; a
/// longer line closes the connection with an error).
pub const MAX_REQUEST: usize = 4096;
/// Most control connections at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 4;
/// A control connection that sends nothing for this long (or does not
/// read its answer) is closed.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The connection serial the store sees for an administrator's changes
/// (connections of clients count from 1).
pub const ADMIN_CONN: u64 = 0;

const LISTENER: Token = Token(usize::MAX / 2);

/// Whether the loop's token `t` belongs to the control socket.
pub fn owns(t: Token) -> bool {
    (LISTENER.0..=LISTENER.0 + MAX_CONNECTIONS).contains(&t.0)
}

/// What the loop tells `stats` about itself.
#[derive(Debug, Clone, Copy)]
pub struct LoopStats {
    /// Client connections open.
    pub connections: usize,
    /// When the server started.
    pub started: Instant,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    /// The client or file does not exist (exit status 3).
    pub not_found: bool,
    /// What to tell the administrator.
    pub message: String,
}

impl ApplyError {
    fn bad(message: impl Into<String>) -> ApplyError {
        ApplyError {
            not_found: false,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError {
            not_found: matches!(e, StoreError::NotFound { .. }),
            message: e.to_string(),
        }
    }
}

/// The client a command names: 32 hex digits are an id (a forgotten
/// client's files are still reached this way), anything else a name.
pub fn resolve_client(store: &DiskStore, text: &str) -> Result<ClientId, ApplyError> {
    if let Some(id) = parse_id(text) {
        return Ok(id);
    }
    match store.records().client_by_name(text)? {
        Some(c) => Ok(c.id),
        None => Err(ApplyError {
            not_found: true,
            message: format!("no client named {text:?}"),
        }),
    }
}

/// 32 hex digits as a client id.
pub fn parse_id(text: &str) -> Option<ClientId> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(ClientId(id))
}

fn field<'a>(req: &'a Value, name: &str) -> Result<&'a str, ApplyError> {
    req.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ApplyError::bad(format!("request without \"{name}\"")))
}

fn setting(req: &Value, name: &str) -> Result<QuotaSetting, ApplyError> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(QuotaSetting::Default),
        Some(Value::String(s)) => s.parse().map_err(ApplyError::bad),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(QuotaSetting::Max)
            .ok_or_else(|| ApplyError::bad(format!("\"{name}\" is not a count"))),
        Some(_) => Err(ApplyError::bad(format!("\"{name}\" is not a count"))),
    }
}

/// Carries out one request on `store` (changes wait for its next commit)
/// and returns its result. `stats` is `Some` in a running server.
pub fn apply(
    store: &mut DiskStore,
    req: &Value,
    now: Instant,
    stats: Option<LoopStats>,
) -> Result<Value, ApplyError> {
    let cx = Ctx {
        conn: ADMIN_CONN,
        now,
    };
    let op = field(req, "op")?;
    let shared = store.records().is_shared();
    if shared && !matches!(op, "ping" | "stats" | "withdraw" | "refresh" | "defaults") {
        // With PostgreSQL the command changes the database itself (several
        // servers share it) and only asks each server to "withdraw".
        return Err(ApplyError::bad(format!(
            "\"{op}\" is not served by a server whose records are in PostgreSQL: \
             the command makes the change in the database itself"
        )));
    }
    match op {
        "ping" => Ok(json!({})),
        "defaults" => {
            // The server's own --quota-* (what a client without a quota of
            // its own gets), for the commands that show quotas.
            let quota = store.config().quota;
            Ok(json!({"quota": {"bytes": quota.max_bytes, "files": quota.max_files}}))
        }
        "withdraw" => {
            // An administrator is about to change (or just changed) this
            // client, or one of its files, in the shared database: uploads
            // in flight go, and the client is read again. No database read.
            if !shared {
                return Err(ApplyError::bad(
                    "\"withdraw\" is for servers whose records are in PostgreSQL",
                ));
            }
            let id = parse_id(field(req, "client")?)
                .ok_or_else(|| ApplyError::bad("withdraw needs a client id (32 hex digits)"))?;
            let file = match req.get("file") {
                None | Some(Value::Null) => None,
                Some(Value::String(name)) => Some(name.as_str()),
                Some(_) => return Err(ApplyError::bad("\"file\" is not a name")),
            };
            let withdrawn = store.withdraw_changed(&id, file);
            Ok(json!({ "withdrawn": withdrawn }))
        }
        "refresh" => {
            // An administrator changed this client's quota in the shared
            // database: it is read again at its connections' next request.
            if !shared {
                return Err(ApplyError::bad(
                    "\"refresh\" is for servers whose records are in PostgreSQL",
                ));
            }
            let id = parse_id(field(req, "client")?)
                .ok_or_else(|| ApplyError::bad("refresh needs a client id (32 hex digits)"))?;
            store.refresh_client(&id);
            Ok(json!({}))
        }
        "forget" => {
            let id = resolve_client(store, field(req, "client")?)?;
            let delete = req.get("delete_files").and_then(Value::as_bool) == Some(true);
            let done = store.forget_client(cx, &id, delete)?;
            Ok(json!({
                "id": id.to_hex(),
                "name": done.name,
                "files_deleted": done.files_deleted,
                "files_kept": done.files_kept,
                "uploads_withdrawn": done.uploads_withdrawn,
            }))
        }
        "delete" => {
            let id = resolve_client(store, field(req, "client")?)?;
            let name = field(req, "file")?;
            let done = store.delete_file(cx, &id, name)?;
            Ok(json!({
                "client": id.to_hex(),
                "name": name,
                "had_record": done.had_record,
                "uploads_withdrawn": done.uploads_withdrawn,
            }))
        }
        "quota" => {
            let id = resolve_client(store, field(req, "client")?)?;
            let own = QuotaOverride {
                bytes: setting(req, "bytes")?,
                files: setting(req, "files")?,
            };
            store.set_quota(cx, &id, own)?;
            let quota = store.quota_of(&id)?;
            Ok(json!({
                "id": id.to_hex(),
                "own": {"bytes": own.bytes.to_string(), "files": own.files.to_string()},
                "quota": {"bytes": quota.max_bytes, "files": quota.max_files},
            }))
        }
        "stats" => {
            let since = store.outcomes_since_start();
            let uploads: serde_json::Map<String, Value> = since
                .entries()
                .into_iter()
                .map(|(k, n)| (k.to_owned(), json!(n)))
                .collect();
            let stats = stats.ok_or_else(|| ApplyError::bad("stats needs a running server"))?;
            Ok(json!({
                "uptime_secs": now.saturating_duration_since(stats.started).as_secs(),
                "connections": stats.connections,
                "uploads_in_flight": store.uploads_in_flight(),
                "uploads_awaiting_verdict": store.pending_count(),
                "uploads": uploads,
            }))
        }
        "repair" => {
            let id = parse_id(field(req, "client")?)
                .ok_or_else(|| ApplyError::bad("repair needs a client id"))?;
            let name = field(req, "file")?;
            let action = field(req, "action")?;
            let done = match action {
                "drop-row" => store.repair_drop_row(cx, &id, name)?,
                "delete-stray" => store.repair_delete_stray(&id, name, stats.is_some())?,
                "adopt" => {
                    let size = req.get("size").and_then(Value::as_u64);
                    let cksum = req
                        .get("cksum")
                        .and_then(Value::as_u64)
                        .and_then(|c| u32::try_from(c).ok());
                    let (Some(size), Some(cksum)) = (size, cksum) else {
                        return Err(ApplyError::bad("adopt needs \"size\" and \"cksum\""));
                    };
                    store.repair_adopt(&id, name, size, cksum)?
                }
                "drop-mismatched" => {
                    let recorded = recorded_meta(req).ok_or_else(|| {
                        ApplyError::bad(
                            "drop-mismatched needs \"recorded_size\" and \"recorded_cksum\"",
                        )
                    })?;
                    store.repair_drop_mismatched(&id, name, recorded)?
                }
                other => return Err(ApplyError::bad(format!("unknown repair {other:?}"))),
            };
            Ok(json!({ "repaired": done }))
        }
        other => Err(ApplyError::bad(format!("unknown request {other:?}"))),
    }
}

/// The `recorded_size` and `recorded_cksum` of a `drop-mismatched`
/// repair (each a number or null); `None` if either is something else.
pub fn recorded_meta(req: &Value) -> Option<crate::db::FileMeta> {
    let size = match &req["recorded_size"] {
        Value::Null => None,
        v => Some(v.as_u64()?),
    };
    let cksum = match &req["recorded_cksum"] {
        Value::Null => None,
        v => Some(u32::try_from(v.as_u64()?).ok()?),
    };
    Some(crate::db::FileMeta { size, cksum })
}

/// Where a control connection is.
enum State {
    /// Reading a request line.
    Reading,
    /// A request changed the store: its answer waits for the commit.
    AwaitingCommit(Value),
    /// Writing an answer; then reading again (or closing, if `last`).
    Writing { last: bool },
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    state: State,
    deadline: Instant,
}

/// The control socket as the event loop serves it.
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
    /// The socket's inode, so only our own socket is removed at exit.
    inode: u64,
    conns: Vec<Option<Conn>>,
    /// Connections may wait in the listener's backlog.
    backlog: bool,
    /// Connections with an event since the last pass.
    ready: Vec<usize>,
}

impl Control {
    /// Binds the socket at `path` with mode 0600 and registers it. A stale
    /// socket at `path` is replaced (the caller holds the data directory's
    /// lock, so no other server uses it). The socket is bound under a
    /// temporary name and renamed into place once its mode is set, so it
    /// is never reachable with a wider mode.
    pub fn bind(path: &Path, registry: &Registry) -> io::Result<Control> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("the control socket path has no file name"))?;
        let temp = dir.join(format!(
            ".{}.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&temp);
        let mut listener = UnixListener::bind(&temp)?;
        let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path)?);
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Control {
            listener,
            path: path.to_path_buf(),
            inode,
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            backlog: true,
            ready: Vec::new(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A poll event for one of [`owns`]'s tokens.
    pub fn on_event(&mut self, token: Token) {
        if token == LISTENER {
            self.backlog = true;
        } else {
            self.ready.push(token.0 - LISTENER.0 - 1);
        }
    }

    /// The earliest deadline of a control connection (now, if one has
    /// requests left to read).
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(Instant::now());
        }
        self.conns.iter().flatten().map(|c| c.deadline).min()
    }

    /// Accepts, reads and carries out requests, writes answers, closes
    /// what timed out. Called once per pass, before the connections of
    /// clients are driven, so a change is part of this pass's commit.
    pub fn serve(
        &mut self,
        registry: &Registry,
        store: &mut DiskStore,
        now: Instant,
        stats: LoopStats,
    ) {
        if self.backlog {
            self.accept(registry, now);
        }
        let ready = std::mem::take(&mut self.ready);
        let expired: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].as_ref().is_some_and(|c| now >= c.deadline))
            .collect();
        for i in expired {
            log::info!("control connection closed: no request for {TIMEOUT:?}");
            self.close(registry, i);
        }
        for i in ready {
            self.drive(registry, i, store, now, stats);
        }
    }

    /// The outcome of the pass's commit: answers that waited for it go
    /// out (an error in place of each if it failed). Whether any did (the
    /// commit carried an administrator's change).
    pub fn committed(&mut self, registry: &Registry, error: Option<&StoreError>) -> bool {
        let mut carried = false;
        for i in 0..self.conns.len() {
            let Some(conn) = self.conns[i].as_mut() else {
                continue;
            };
            let State::AwaitingCommit(answer) = &conn.state else {
                continue;
            };
            carried = true;
            let answer = match error {
                None => answer.clone(),
                Some(e) => json!({
                    "ok": false,
                    "not_found": false,
                    "error": format!("the change could not be made durable: {e}"),
                }),
            };
            queue(conn, &answer, false);
            if self.flush(registry, i) {
                // Requests sent meanwhile wait in its input.
                self.ready.push(i);
            }
        }
        carried
    }

    fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backlog = false;
                    return;
                }
                Err(e) => {
                    log::warn!("control socket: accept failed: {e}");
                    self.backlog = false;
                    return;
                }
            };
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                log::warn!(
                    "control socket: {MAX_CONNECTIONS} connections already open; closing a new one"
                );
                continue;
            };
            let token = Token(LISTENER.0 + 1 + slot);
            if let Err(e) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                log::warn!("control socket: cannot register a connection: {e}");
                continue;
            }
            self.conns[slot] = Some(Conn {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                written: 0,
                state: State::Reading,
                deadline: now + TIMEOUT,
            });
            self.ready.push(slot);
        }
    }

    fn close(&mut self, registry: &Registry, i: usize) {
        if let Some(mut conn) = self.conns[i].take() {
            let _ = registry.deregister(&mut conn.stream);
        }
    }

    /// Writes what waits; false if the connection was closed.
    fn flush(&mut self, registry: &Registry, i: usize) -> bool {
        let Some(conn) = self.conns[i].as_mut() else {
            return false;
        };
        while conn.written < conn.output.len() {
            match conn.stream.write(&conn.output[conn.written..]) {
                Ok(0) => break,
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(registry, i);
                    return false;
                }
            }
        }
        if let State::Writing { last } = conn.state {
            if conn.written == conn.output.len() {
                if last {
                    self.close(registry, i);
                    return false;
                }
                conn.output.clear();
                conn.written = 0;
                conn.state = State::Reading;
            }
        }
        true
    }

    fn drive(
        &mut self,
        registry: &Registry,
        i: usize,
        store: &mut DiskStore,
        now: Instant,
        stats: LoopStats,
    ) {
        if !self.flush(registry, i) {
            return;
        }
        let mut buf = [0u8; 1024];
        loop {
            let Some(conn) = self.conns[i].as_mut() else {
                return;
            };
            if !matches!(conn.state, State::Reading) {
                return;
            }
            if let Some(end) = conn.input.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = conn.input.drain(..=end).collect();
                conn.deadline = now + TIMEOUT;
                let answer = answer(store, &line, now, stats);
                if store.uncommitted() {
                    conn.state = State::AwaitingCommit(answer);
                    return;
                }
                queue(conn, &answer, false);
                if !self.flush(registry, i) {
                    return;
                }
                continue;
            }
            if conn.input.len() > MAX_REQUEST {
                let refusal = json!({"ok": false, "not_found": false,
                    "error": format!("request longer than {MAX_REQUEST} bytes")});
                queue(conn, &refusal, true);
                self.flush(registry, i);
                return;
            }
            match conn.stream.read(&mut buf) {
                Ok(0) => return self.close(registry, i),
                Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(registry, i),
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // Only our own socket: a later server may have replaced it.
        let ours = std::fs::metadata(&self.path)
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn queue(conn: &mut Conn, answer: &Value, last: bool) {
    conn.output = answer.to_string().into_bytes();
    conn.output.push(b'\n');
    conn.written = 0;
    conn.state = State::Writing { last };
}

/// The answer to one request line.
fn answer(store: &mut DiskStore, line: &[u8], now: Instant, stats: LoopStats) -> Value {
    let result = serde_json::from_slice::<Value>(line)
        .map_err(|e| ApplyError::bad(format!("not a JSON request: {e}")))
        .and_then(|req| {
            let result = apply(store, &req, now, Some(stats));
            if let Err(e) = &result {
                log::info!("control request {} refused: {}", req["op"], e.message);
            }
            result
        });
    match result {
        Ok(result) => json!({"ok": true, "result": result}),
        Err(e) => json!({"ok": false, "not_found": e.not_found, "error": e.message}),
    }
}

/// How a command's request to a server went.
#[derive(Debug)]
pub enum Reach {
    /// No server listens there (no socket, or nobody accepting).
    NoServer,
    /// The server's answer.
    Answer(Value),
}

/// Sends one request to the server listening at `path` and waits up to
/// `timeout` for its answer.
pub fn request(path: &Path, req: &Value, timeout: Duration) -> io::Result<Reach> {
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Reach::NoServer)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = req.to_string().into_bytes();
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.contains(&b'\n') {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the control connection without an answer",
            ));
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.len() > 1 << 20 {
            return Err(io::Error::other("the server's answer is too long"));
        }
    }
    serde_json::from_slice(&answer[..answer.iter().position(|&b| b == b'\n').unwrap_or(0)])
        .map(Reach::Answer)
        .map_err(|e| io::Error::other(format!("the server's answer is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits() {
        let id = parse_id("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(id.to_hex(), "00112233445566778899aabbccddeeff");
        assert!(parse_id("alice").is_none());
        assert!(parse_id("00112233445566778899aabbccddeefg").is_none());
    }

    #[test]
    fn withdraw_is_refused_by_a_server_on_sqlite() {
        // On SQLite the server makes every change itself: an outside
        // "withdraw" would only cut uploads off.
        let dir = tempfile::tempdir().unwrap();
        let mut store = DiskStore::open(dir.path(), crate::store::StoreConfig::default()).unwrap();
        let req = json!({"op": "withdraw", "client": "00112233445566778899aabbccddeeff"});
        let e = apply(&mut store, &req, Instant::now(), None).unwrap_err();
        assert!(!e.not_found);
        assert!(e.message.contains("PostgreSQL"), "{}", e.message);
    }

    #[test]
    fn tokens_of_the_control_socket_are_its_own() {
        assert!(owns(LISTENER));
        assert!(owns(Token(LISTENER.0 + MAX_CONNECTIONS)));
        assert!(!owns(Token(LISTENER.0 + MAX_CONNECTIONS + 1)));
        assert!(!owns(Token(3)));
    }
}
