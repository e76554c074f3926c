//! A throw-away PostgreSQL cluster for tests and the bench.
//!
//! [`PgCluster::start`] runs `initdb` into a fresh temporary folder and
//! starts `postgres` on a free TCP port of 127.0.0.1 (and a Unix socket in
//! that folder), trust authentication, superuser [`SUPERUSER`]. PostgreSQL
//! refuses to run as root, so when the tests run as root (CI does) the
//! folder is given to an unprivileged user ([`UNPRIVILEGED_USER`],
//! `nobody`) and `initdb`/`pg_ctl` run through `runuser`.
//!
//! The binaries are looked up in `$SEALDROP_PG_BIN`, then the newest
//! `/usr/lib/postgresql/*/bin` (Debian), then `pg_config --bindir`, then
//! `PATH`. Where none is found, [`PgCluster::start`] returns `None` and
//! prints [`SKIP_MESSAGE`]: the caller returns early and the test passes.
//! cargo shows a passing test's output only with `--nocapture`, so a run
//! where every PostgreSQL test skipped looks like one where they all
//! passed: with [`REQUIRE_ENV`]`=1` (CI sets it) a missing PostgreSQL
//! fails the test instead.
//!
//! Each cluster is stopped (`pg_ctl stop -m immediate`) and its folder
//! removed when the [`PgCluster`] is dropped, and also, through a small
//! watcher process, when the test process ends in any other way (a
//! `static` cluster is never dropped; a test binary may be killed).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::util::run_bounded;

/// The cluster's superuser (trust authentication, no password).
pub const SUPERUSER: &str = "sealdrop";

/// Who runs the cluster when the tests run as root.
pub const UNPRIVILEGED_USER: &str = "nobody";

/// What a test prints when it cannot run.
pub const SKIP_MESSAGE: &str = "skipped: PostgreSQL not found (install postgresql)";

/// The environment variable that, set to `1`, turns that skip into a
/// failure: for CI, which installs PostgreSQL and must not pass without
/// running the tests that need it.
pub const REQUIRE_ENV: &str = "SEALDROP_REQUIRE_PG";

/// PostgreSQL was not found: prints [`SKIP_MESSAGE`] (the caller skips),
/// or panics when `require` (the value of [`REQUIRE_ENV`]) is `1`.
pub fn not_found(require: Option<&str>) {
    if require == Some("1") {
        panic!(
            "PostgreSQL not found (install postgresql, or set SEALDROP_PG_BIN), and \
             {REQUIRE_ENV}=1 says the tests that need it must not be skipped"
        );
    }
    eprintln!("{SKIP_MESSAGE}");
}

/// How long `initdb`, `pg_ctl start/stop/restart` and `psql` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How a cluster is set up.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `fsync` in postgresql.conf. Off by default: tests do not survive
    /// power cuts, and on a shared 2-core machine every flush costs. A
    /// benchmark that compares durability costs turns it on.
    pub fsync: bool,
    /// `max_connections`.
    pub max_connections: u32,
    /// TLS only: a self-signed certificate for `localhost`
    /// ([`PgCluster::certificate`]) and `hostssl` lines in pg_hba.conf, so
    /// a TCP connection without TLS is refused. Needs the `openssl` tool.
    pub tls_only: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            fsync: false,
            max_connections: 100,
            tls_only: false,
        }
    }
}

/// A running throw-away cluster.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    /// `Some(user)` when commands run through `runuser -u user`.
    run_as: Option<String>,
}

/// The folder holding `initdb` and `pg_ctl`, if PostgreSQL is installed.
pub fn find_bin() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("SEALDROP_PG_BIN").map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    // Debian keeps the server binaries out of PATH.
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Some(dir);
        }
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has_tools(dir))
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

impl PgCluster {
    /// Starts a cluster with [`PgOptions::default`], or prints
    /// [`SKIP_MESSAGE`] and returns `None` when PostgreSQL is not
    /// installed ([`not_found`]: panics instead when [`REQUIRE_ENV`] is
    /// `1`). Panics if it is installed but will not start.
    pub fn start() -> Option<PgCluster> {
        PgCluster::start_with(PgOptions::default())
    }

    /// [`PgCluster::start`] with options.
    pub fn start_with(options: PgOptions) -> Option<PgCluster> {
        let Some(bin) = find_bin() else {
            not_found(std::env::var(REQUIRE_ENV).ok().as_deref());
            return None;
        };
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "sealdrop-pg-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        let run_as = running_as_root().then(|| UNPRIVILEGED_USER.to_owned());
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&root)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown {user} {}", root.display());
        }
        let cluster = PgCluster {
            bin,
            data: root.join("data"),
            root,
            port: free_port(),
            run_as,
        };
        cluster.spawn_watcher();
        let data = cluster.data.to_str().expect("UTF-8 temp path").to_owned();
        cluster.run_ok(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        let conf = format!(
            "\n# sealdrop test cluster\nport = {}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nfsync = {}\nmax_connections = {}\n\
             shared_buffers = 32MB\n",
            cluster.port,
            cluster.root.display(),
            if options.fsync { "on" } else { "off" },
            options.max_connections,
        );
        let conf_path = cluster.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        if options.tls_only {
            text.push_str(&cluster.make_certificate());
            let hba_path = cluster.data.join("pg_hba.conf");
            let hba = std::fs::read_to_string(&hba_path).expect("read pg_hba.conf");
            let hba: String = hba
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&hba_path, hba).expect("write pg_hba.conf");
        }
        std::fs::write(&conf_path, text).expect("write postgresql.conf");
        cluster.pg_ctl(&["start"]);
        Some(cluster)
    }

    /// The self-signed certificate of a [`PgOptions::tls_only`] cluster
    /// (PEM; the certificate authority to trust for `verify-full`).
    pub fn certificate(&self) -> PathBuf {
        self.root.join("server.crt")
    }

    /// Makes a self-signed certificate for `localhost` in the cluster's
    /// folder; returns the postgresql.conf lines that use it.
    fn make_certificate(&self) -> String {
        let key = self.root.join("server.key");
        let ran = run_bounded(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args([
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(self.certificate()),
            COMMAND_TIMEOUT,
        );
        assert!(ran.status.success(), "openssl req: {}", ran.stderr);
        if let Some(user) = &self.run_as {
            let status = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&key)
                .arg(self.certificate())
                .status()
                .expect("run chown");
            assert!(status.success(), "chown the certificate");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            self.certificate().display(),
            key.display()
        )
    }

    /// The TCP port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder of the PostgreSQL binaries in use.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A URL for database `db` over TCP, as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// Runs SQL through `psql` on database `db`, returning its unaligned
    /// output (`-At`). Panics if psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let ran = run_bounded(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
                .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db])
                .args(["-c", sql]),
            COMMAND_TIMEOUT,
        );
        assert!(
            ran.status.success(),
            "psql {sql:?} failed: {}{}",
            ran.stdout,
            ran.stderr
        );
        ran.stdout
    }

    /// Creates the login role `user` with `password`, and makes TCP
    /// connections as that role (only) authenticate with it
    /// (scram-sha-256), so a wrong password is refused. Its line goes
    /// first in pg_hba.conf, before the cluster's trust lines.
    pub fn create_password_user(&self, user: &str, password: &str) {
        self.psql(
            "postgres",
            &format!("CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'"),
        );
        let hba_path = self.data.join("pg_hba.conf");
        let hba = std::fs::read_to_string(&hba_path).expect("read pg_hba.conf");
        let line = format!("host all \"{user}\" 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(&hba_path, line + &hba).expect("write pg_hba.conf");
        self.psql("postgres", "SELECT pg_reload_conf()");
    }

    /// `pg_ctl restart -m fast`: every connection is cut, data kept.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// `pg_ctl start` after [`PgCluster::stop`].
    pub fn start_again(&self) {
        self.pg_ctl(&["start"]);
    }

    /// `postgres --version` of the binaries in use.
    pub fn version(&self) -> String {
        let ran = run_bounded(
            Command::new(self.bin.join("postgres")).arg("--version"),
            COMMAND_TIMEOUT,
        );
        ran.stdout.trim().to_owned()
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data.to_str().expect("UTF-8 temp path");
        let log = self.root.join("server.log");
        let log = log.to_str().expect("UTF-8 temp path");
        let mut all = vec!["-D", data, "-l", log, "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run_ok("pg_ctl", &all);
    }

    /// A command for a PostgreSQL binary, as the unprivileged user when
    /// we are root.
    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run_ok(&self, tool: &str, args: &[&str]) {
        let mut cmd = self.command(tool);
        cmd.args(args).current_dir(&self.root);
        let ran = run_bounded(&mut cmd, COMMAND_TIMEOUT);
        if !ran.status.success() {
            let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
            panic!(
                "{tool} {args:?} failed ({}):\n{}{}\nserver log:\n{log}",
                ran.status, ran.stdout, ran.stderr
            );
        }
    }

    /// A process that waits for this test process to end, then stops the
    /// cluster and removes its folder, however the process ended.
    fn spawn_watcher(&self) {
        let stop = {
            let mut c = self.command("pg_ctl");
            c.args(["-D"])
                .arg(&self.data)
                .args(["stop", "-m", "immediate"]);
            let parts: Vec<String> = std::iter::once(c.get_program())
                .chain(c.get_args())
                .map(|a| shell_quote(&a.to_string_lossy()))
                .collect();
            parts.join(" ")
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -f {pidfile} ]; then {stop} >/dev/null 2>&1; fi; rm -rf {root}",
            pid = std::process::id(),
            pidfile = shell_quote(&self.data.join("postmaster.pid").to_string_lossy()),
            root = shell_quote(&self.root.to_string_lossy()),
        );
        // Not waited for: it outlives us on purpose.
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let data = self.data.to_str().unwrap_or_default().to_owned();
            let mut cmd = self.command("pg_ctl");
            cmd.args(["-D", &data, "stop", "-m", "immediate"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_postgresql_is_a_skip_unless_required() {
        not_found(None);
        not_found(Some("0"));
        not_found(Some(""));
        let required = std::panic::catch_unwind(|| not_found(Some("1")));
        let message = required.expect_err("SEALDROP_REQUIRE_PG=1 did not fail the test");
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.contains(REQUIRE_ENV), "{text}");
    }
}
