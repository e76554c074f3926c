//! `--database URL`: where the server keeps its records.
//!
//! * `sqlite:` (the default): `defensive.db` in the data directory, as
//!   before.
//! * `sqlite:PATH`: a SQLite database at `PATH`.
//! * `postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?PARAMS]` (or
//!   `postgresql://…`): a PostgreSQL database several servers may share.
//!   A Unix socket is named with `?host=/run/postgresql` (a percent-encoded
//!   path as HOST works too). `sslmode=disable` (the default), `prefer`,
//!   `require`, `verify-ca` or `verify-full` choose TLS; `sslrootcert=FILE`
//!   names the certificate authorities for the `verify-*` modes (else the
//!   system's). TLS client certificates (`sslcert`, `sslkey`,
//!   `sslpassword`) are not supported and refused by name. Other
//!   parameters (`connect_timeout`, `application_name`, `options`, ...)
//!   go to the driver as they are.
//!
//! The URL may come from `SEALDROP_DATABASE_URL` instead of the command
//! line, and a password missing from it from `PGPASSWORD` (a missing user
//! from `PGUSER`), so no secret needs to be on a command line that `ps`
//! shows. `~/.pgpass` and the other libpq files and variables are not
//! read. [`DatabaseUrl`]'s `Display` and `Debug` never print a password.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The environment variable that holds the URL when no flag gives one.
pub const DATABASE_URL_ENV: &str = "SEALDROP_DATABASE_URL";

/// The environment variable for a password the URL does not carry (the
/// name libpq and `psql` use).
pub const PASSWORD_ENV: &str = "PGPASSWORD";

/// The environment variable for a user the URL does not name (as libpq).
pub const USER_ENV: &str = "PGUSER";

/// What `Display` prints in place of a password.
const REDACTED: &str = "***";

/// Where the records live.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// SQLite: `None` is `defensive.db` in the data directory.
    Sqlite(Option<PathBuf>),
    /// PostgreSQL.
    Postgres(Box<PgUrl>),
}

/// How the connection to PostgreSQL uses TLS (the libpq `sslmode` values
/// this server supports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP or a Unix socket (the default without `sslmode`).
    Disable,
    /// TLS if the server offers it, else plain; no certificate check.
    Prefer,
    /// TLS or no connection; the certificate is not checked (it protects
    /// against eavesdropping, not against an impostor).
    Require,
    /// TLS with the server's certificate checked against the authorities
    /// (`sslrootcert`, else the system's), not its host name.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl TlsMode {
    /// The `sslmode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<TlsMode, UrlError> {
        Ok(match value {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(UrlError(format!(
                    "sslmode={other} is not supported (disable, prefer, require, verify-ca, verify-full)"
                )))
            }
        })
    }
}

/// A parsed `postgres://` URL: the driver's settings and the TLS choice.
#[derive(Clone)]
pub struct PgUrl {
    /// The URL as given, for `Display` (which redacts the password).
    text: String,
    config: postgres::Config,
    tls: TlsMode,
    root_cert: Option<PathBuf>,
}

impl PartialEq for PgUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
            && self.tls == other.tls
            && self.root_cert == other.root_cert
            && self.config.get_password() == other.config.get_password()
    }
}

impl Eq for PgUrl {}

impl PgUrl {
    /// The driver's settings (user, password, hosts, database, timeouts).
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// The TLS mode the URL asked for.
    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    /// The certificate authorities file (`sslrootcert`), if given.
    pub fn root_cert(&self) -> Option<&std::path::Path> {
        self.root_cert.as_deref()
    }

    /// Whether a password is set (from the URL or the environment).
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.text))
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(None) => f.write_str("sqlite:"),
            DatabaseUrl::Sqlite(Some(path)) => write!(f, "sqlite:{}", path.display()),
            DatabaseUrl::Postgres(url) => url.fmt(f),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// A URL that cannot be used. The message never contains a password,
/// and does not name the flag (the caller says where the URL came from:
/// `--database: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// libpq's parameters for a TLS client certificate, which this server
/// does not support: a URL with one is refused naming it.
const CLIENT_CERT_PARAMS: [&str; 3] = ["sslcert", "sslkey", "sslpassword"];

impl std::error::Error for UrlError {}

impl Default for DatabaseUrl {
    fn default() -> Self {
        DatabaseUrl::Sqlite(None)
    }
}

impl DatabaseUrl {
    /// The URL to use: the flag's value if given, else
    /// [`DATABASE_URL_ENV`], else `sqlite:`. A PostgreSQL URL without a
    /// password takes [`PASSWORD_ENV`], without a user [`USER_ENV`].
    /// `env` looks up a variable (`|k| std::env::var(k).ok()` in the
    /// server; a map in tests).
    pub fn resolve(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<DatabaseUrl, UrlError> {
        let from_env = env(DATABASE_URL_ENV).filter(|v| !v.is_empty());
        let text = match (flag, from_env.as_deref()) {
            (Some(flag), _) => flag,
            (None, Some(var)) => var,
            (None, None) => return Ok(DatabaseUrl::default()),
        };
        DatabaseUrl::parse_with_env(text, env)
    }

    /// Parses a URL alone (no environment).
    pub fn parse(text: &str) -> Result<DatabaseUrl, UrlError> {
        DatabaseUrl::parse_with_env(text, |_| None)
    }

    fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<DatabaseUrl, UrlError> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("sqlite:") {
            return Ok(DatabaseUrl::Sqlite(if path.is_empty() {
                None
            } else {
                Some(PathBuf::from(path))
            }));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return parse_postgres(text, env).map(|p| DatabaseUrl::Postgres(Box::new(p)));
        }
        let scheme = text.split(':').next().unwrap_or("");
        Err(UrlError(format!(
            "unknown kind of database {:?}: use sqlite:, sqlite:PATH or postgres://USER@HOST/DBNAME",
            // Only the scheme: the rest may hold a password.
            if text.contains(':') { scheme } else { "" }
        )))
    }

    /// Whether this is a PostgreSQL URL (several servers may share it).
    pub fn is_postgres(&self) -> bool {
        matches!(self, DatabaseUrl::Postgres(_))
    }
}

impl FromStr for DatabaseUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DatabaseUrl::parse(s)
    }
}

/// Parses a `postgres://` URL: takes out the parameters the driver does
/// not know (`sslmode` values beyond `require`, `sslrootcert`), hands the
/// rest to the driver, then fills password and user from the environment.
fn parse_postgres(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<PgUrl, UrlError> {
    let (base, query) = match text.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (text, None),
    };
    let mut tls = TlsMode::Disable;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => tls = TlsMode::parse(&percent_decode(value)?)?,
            "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value)?)),
            key if CLIENT_CERT_PARAMS.contains(&key) => {
                return Err(UrlError(format!(
                    "{key}: TLS client certificates are not supported; authenticate with a \
                     password (in the URL or {PASSWORD_ENV})"
                )))
            }
            _ => kept.push(pair),
        }
    }
    let driver_text = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config = postgres::Config::from_str(&driver_text)
        // The driver's messages name the option, never its value.
        .map_err(|e| UrlError(format!("not a usable PostgreSQL URL: {e}")))?;
    if config.get_hosts().is_empty() {
        return Err(UrlError(
            "the PostgreSQL URL names no host (postgres://USER@HOST/DBNAME, or ?host=/socket/dir)"
                .into(),
        ));
    }
    if config.get_password().is_none() {
        if let Some(password) = env(PASSWORD_ENV) {
            config.password(password);
        }
    }
    if config.get_user().is_none() {
        match env(USER_ENV).filter(|u| !u.is_empty()) {
            Some(user) => {
                config.user(&user);
            }
            None => {
                return Err(UrlError(format!(
                    "the PostgreSQL URL names no user (postgres://USER@HOST/DBNAME) and {USER_ENV} is not set"
                )))
            }
        }
    }
    if root_cert.is_some() && matches!(tls, TlsMode::Disable) {
        return Err(UrlError(
            "sslrootcert is given but sslmode is disable: add sslmode=verify-full".into(),
        ));
    }
    config.ssl_mode(match tls {
        TlsMode::Disable => postgres::config::SslMode::Disable,
        TlsMode::Prefer => postgres::config::SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => {
            postgres::config::SslMode::Require
        }
    });
    Ok(PgUrl {
        text: text.to_owned(),
        config,
        tls,
        root_cert,
    })
}

/// `%XX` escapes of a URL parameter value.
fn percent_decode(value: &str) -> Result<String, UrlError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UrlError("a bad %-escape in a URL parameter".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError("a URL parameter that is not UTF-8".into()))
}

/// The URL with any password replaced by `***`: the one in the user
/// information (`user:secret@host`) and a `password=` parameter.
pub fn redact(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let (scheme, rest) = text.split_at(scheme_end + 3);
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = String::from(scheme);
    // The last '@' before the query ends the user information, even if an
    // unescaped '@' or '/' sits inside the password.
    match before_query.rfind('@') {
        Some(at) => {
            let userinfo = &before_query[..at];
            match userinfo.split_once(':') {
                Some((user, _secret)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&before_query[at..]);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key == "password" => format!("{key}={REDACTED}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn pg(url: &DatabaseUrl) -> &PgUrl {
        match url {
            DatabaseUrl::Postgres(p) => p,
            other => panic!("not postgres: {other}"),
        }
    }

    #[test]
    fn default_is_sqlite_in_the_data_directory() {
        let url = DatabaseUrl::resolve(None, env_of(&[])).unwrap();
        assert_eq!(url, DatabaseUrl::Sqlite(None));
        assert_eq!(url.to_string(), "sqlite:");
        assert_eq!(DatabaseUrl::parse("sqlite:").unwrap(), url);
    }

    #[test]
    fn sqlite_with_a_path() {
        let url = DatabaseUrl::parse("sqlite:/srv/sealdrop/records.db").unwrap();
        assert_eq!(
            url,
            DatabaseUrl::Sqlite(Some(PathBuf::from("/srv/sealdrop/records.db")))
        );
        assert_eq!(url.to_string(), "sqlite:/srv/sealdrop/records.db");
        assert!(!url.is_postgres());
    }

    #[test]
    fn postgres_url_parts_reach_the_driver() {
        for scheme in ["postgres", "postgresql"] {
            let url =
                DatabaseUrl::parse(&format!("{scheme}://drop:s3cret@db.example:6543/sealdrop"))
                    .unwrap();
            let p = pg(&url);
            let c = p.config();
            assert_eq!(c.get_user(), Some("drop"));
            assert_eq!(c.get_password(), Some(&b"s3cret"[..]));
            assert_eq!(c.get_dbname(), Some("sealdrop"));
            assert_eq!(
                c.get_hosts(),
                &[postgres::config::Host::Tcp("db.example".into())]
            );
            assert_eq!(c.get_ports(), &[6543]);
            assert_eq!(p.tls(), TlsMode::Disable);
            assert_eq!(c.get_ssl_mode(), postgres::config::SslMode::Disable);
        }
    }

    #[test]
    fn unix_socket_host_parameter() {
        let url = DatabaseUrl::parse("postgres://drop@/sealdrop?host=/run/postgresql").unwrap();
        assert_eq!(
            pg(&url).config().get_hosts(),
            &[postgres::config::Host::Unix("/run/postgresql".into())]
        );
    }

    #[test]
    fn display_and_debug_never_show_the_password() {
        let url = DatabaseUrl::parse(
            "postgres://drop:hunter2@db:5432/sealdrop?sslmode=require&password=hunter3",
        )
        .unwrap();
        let shown = url.to_string();
        let debug = format!("{url:?}");
        for text in [&shown, &debug] {
            assert!(!text.contains("hunter"), "{text}");
        }
        assert_eq!(
            shown,
            "postgres://drop:***@db:5432/sealdrop?sslmode=require&password=***"
        );
    }

    #[test]
    fn redaction_survives_odd_passwords() {
        assert_eq!(
            redact("postgres://u:p@ss/w:rd@h/db"),
            "postgres://u:***@h/db",
            "an unescaped @ and / inside the password"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact("postgres://u:%40x@h/db?host=/tmp"),
            "postgres://u:***@h/db?host=/tmp"
        );
    }

    #[test]
    fn password_from_pgpassword_when_the_url_has_none() {
        let env = env_of(&[(PASSWORD_ENV, "from-env")]);
        let url = DatabaseUrl::resolve(Some("postgres://drop@db/sealdrop"), &env).unwrap();
        assert_eq!(pg(&url).config().get_password(), Some(&b"from-env"[..]));
        assert!(!url.to_string().contains("from-env"));
        assert!(!format!("{url:?}").contains("from-env"));
        // A password in the URL wins.
        let url = DatabaseUrl::resolve(Some("postgres://drop:inline@db/sealdrop"), &env).unwrap();
        assert_eq!(pg(&url).config().get_password(), Some(&b"inline"[..]));
    }

    #[test]
    fn url_from_the_environment_when_no_flag() {
        let env = env_of(&[(DATABASE_URL_ENV, "postgres://drop:pw@db/sealdrop")]);
        let url = DatabaseUrl::resolve(None, &env).unwrap();
        assert_eq!(pg(&url).config().get_dbname(), Some("sealdrop"));
        // The flag wins over the environment.
        let url = DatabaseUrl::resolve(Some("sqlite:"), &env).unwrap();
        assert_eq!(url, DatabaseUrl::Sqlite(None));
        // An empty variable counts as unset.
        let env = env_of(&[(DATABASE_URL_ENV, "")]);
        assert_eq!(
            DatabaseUrl::resolve(None, &env).unwrap(),
            DatabaseUrl::Sqlite(None)
        );
    }

    #[test]
    fn user_from_pguser_or_a_clear_error() {
        let err = DatabaseUrl::parse("postgres://db/sealdrop").unwrap_err();
        assert!(err.to_string().contains("no user"), "{err}");
        let url = DatabaseUrl::resolve(
            Some("postgres://db/sealdrop"),
            env_of(&[(USER_ENV, "envuser")]),
        )
        .unwrap();
        assert_eq!(pg(&url).config().get_user(), Some("envuser"));
    }

    #[test]
    fn ssl_modes() {
        let cases = [
            ("", TlsMode::Disable),
            ("?sslmode=disable", TlsMode::Disable),
            ("?sslmode=prefer", TlsMode::Prefer),
            ("?sslmode=require", TlsMode::Require),
            ("?sslmode=verify-ca", TlsMode::VerifyCa),
            (
                "?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
                TlsMode::VerifyFull,
            ),
        ];
        for (query, mode) in cases {
            let url = DatabaseUrl::parse(&format!("postgres://u@h/db{query}")).unwrap();
            assert_eq!(pg(&url).tls(), mode, "{query}");
            let driver = pg(&url).config().get_ssl_mode();
            let want = match mode {
                TlsMode::Disable => postgres::config::SslMode::Disable,
                TlsMode::Prefer => postgres::config::SslMode::Prefer,
                _ => postgres::config::SslMode::Require,
            };
            assert_eq!(driver, want, "{query}");
        }
        let url =
            DatabaseUrl::parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem")
                .unwrap();
        assert_eq!(
            pg(&url).root_cert(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        let err = DatabaseUrl::parse("postgres://u@h/db?sslmode=allow").unwrap_err();
        assert!(err.to_string().contains("sslmode=allow"), "{err}");
        let err = DatabaseUrl::parse("postgres://u@h/db?sslrootcert=/x").unwrap_err();
        assert!(err.to_string().contains("sslmode"), "{err}");
    }

    #[test]
    fn other_parameters_reach_the_driver() {
        let url = DatabaseUrl::parse(
            "postgres://u@h/db?connect_timeout=7&application_name=edge1&sslmode=require",
        )
        .unwrap();
        let c = pg(&url).config();
        assert_eq!(
            c.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(7))
        );
        assert_eq!(c.get_application_name(), Some("edge1"));
    }

    #[test]
    fn client_certificates_are_refused_naming_the_parameter() {
        for key in CLIENT_CERT_PARAMS {
            let err = DatabaseUrl::parse(&format!(
                "postgres://u:topsecret@h/db?sslmode=verify-full&{key}=/etc/x"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.starts_with(&format!("{key}: ")), "{err}");
            assert!(err.contains("not supported"), "{err}");
            assert!(!err.contains("topsecret"), "{err}");
        }
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_secrets() {
        for bad in [
            "mysql://u:topsecret@h/db",
            "topsecret",
            "postgres://u:topsecret@h:notaport/db",
            "postgres://u:topsecret@h/db?bogus_option=1",
            "postgres://u:topsecret@/db",
        ] {
            let err = DatabaseUrl::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("topsecret"), "{bad}: {err}");
            assert!(!err.contains("--database"), "{err}");
        }
        let err = DatabaseUrl::parse("mysql://u@h/db").unwrap_err();
        assert!(err.to_string().contains("\"mysql\""), "{err}");
    }
}
