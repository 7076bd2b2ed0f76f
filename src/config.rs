//! Settings: built-in defaults, an environment file, then environment variables.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The defaults, compiled in so that the binary runs from any directory.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Every setting of the service; `config/default.toml` documents each key.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub queue: QueueSettings,
    pub retry: RetrySettings,
    pub mail: MailSettings,
    pub reconciler: ReconcilerSettings,
    pub log: LogSettings,
    pub paths: PathSettings,
    pub admin: AdminSettings,
}

/// The admin web pages: off unless a password is configured.
#[derive(Clone, Deserialize)]
pub struct AdminSettings {
    /// Empty: the admin pages are off (404).
    pub password: String,
    pub session_hours: u64,
}

impl AdminSettings {
    pub fn enabled(&self) -> bool {
        !self.password.is_empty()
    }
}

// By hand, so that printing the settings never prints the password.
impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("password", &if self.enabled() { "***" } else { "" })
            .field("session_hours", &self.session_hours)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
pub struct MailSettings {
    pub url: String,
    pub from: String,
    pub contact: String,
    pub operator_email: String,
    pub invitation_ttl_hours: u64,
    pub digest_interval_secs: u64,
    pub max_attempts: u32,
    pub retry_initial_secs: u64,
    pub retry_max_secs: u64,
    pub concurrency: usize,
}

/// A URL as `Debug` shows it: without its user name, password or
/// `password=` query value (a Resend API key is the user name).
struct Hidden<'a>(&'a str);

impl std::fmt::Debug for Hidden<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = redact_url(self.0);
        let shown = match url::Url::parse(&redacted) {
            Ok(mut url) if !url.username().is_empty() => {
                let _ = url.set_username("***");
                url.to_string()
            }
            _ => redacted,
        };
        write!(f, "{shown:?}")
    }
}

impl std::fmt::Debug for MailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailSettings")
            .field("url", &Hidden(&self.url))
            .field("from", &self.from)
            .field("contact", &self.contact)
            .field("operator_email", &self.operator_email)
            .field("invitation_ttl_hours", &self.invitation_ttl_hours)
            .field("digest_interval_secs", &self.digest_interval_secs)
            .field("max_attempts", &self.max_attempts)
            .field("retry_initial_secs", &self.retry_initial_secs)
            .field("retry_max_secs", &self.retry_max_secs)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &Hidden(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .finish()
    }
}

impl std::fmt::Debug for QueueSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSettings")
            .field("url", &Hidden(&self.url))
            .field("name", &self.name)
            .field("concurrency", &self.concurrency)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("max_deliveries", &self.max_deliveries)
            .finish()
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Postgres(url) => f.debug_tuple("Postgres").field(&Hidden(url)).finish(),
            DatabaseUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
        }
    }
}

impl std::fmt::Debug for QueueUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueUrl::Redis(url) => f.debug_tuple("Redis").field(&Hidden(url)).finish(),
            QueueUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReconcilerSettings {
    pub interval_ms: u64,
    pub requeue_after_secs: u64,
    pub send_lease_secs: u64,
    pub digest_settle_secs: u64,
    pub retention_days: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub public_url: String,
    pub request_deadline_secs: u64,
    pub max_body_bytes: usize,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
}

#[derive(Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
    pub connect_timeout_secs: u64,
}

#[derive(Clone, Deserialize)]
pub struct QueueSettings {
    pub url: String,
    pub name: String,
    pub concurrency: usize,
    pub poll_interval_ms: u64,
    pub max_deliveries: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    pub initial_interval_ms: u64,
    pub max_interval_ms: u64,
    pub multiplier: f64,
    pub randomization_factor: f64,
    pub max_elapsed_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PathSettings {
    pub data_dir: PathBuf,
}

/// Where the data lives, decided from `database.url`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    /// A file path (the `sqlite://` prefix removed).
    Sqlite(PathBuf),
}

/// Where the queue lives, decided from `queue.url`.
#[derive(Clone, PartialEq, Eq)]
pub enum QueueUrl {
    Redis(String),
    Sqlite(PathBuf),
}

impl Settings {
    /// Loads the settings: defaults, then `<config_dir>/<SCIMSYNC_ENV>.toml`,
    /// then `SCIMSYNC_*` variables, then `DATABASE_URL`, `REDIS_URL`, `PORT`.
    pub fn load(config_dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Ok(env_name) = std::env::var("SCIMSYNC_ENV") {
            let dir = config_dir
                .map(Path::to_path_buf)
                .or_else(|| std::env::var_os("SCIMSYNC_CONFIG_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("config"));
            let file = dir.join(format!("{env_name}.toml"));
            if !file.is_file() {
                bail!(
                    "SCIMSYNC_ENV={env_name} names {} which does not exist; create it or pass --config-dir",
                    file.display()
                );
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("SCIMSYNC_").split("__").ignore(&[
            "ENV",
            "CONFIG_DIR",
            "MAIL_URL",
            "PUBLIC_URL",
            // Read as is below: figment would parse a password such as
            // `123` or `[x]` as a number or an array.
            "ADMIN.PASSWORD",
        ]));
        let mut settings: Settings = figment
            .extract()
            .context("invalid configuration (see config/default.toml for every key)")?;
        if let Ok(url) = std::env::var("SCIMSYNC_PUBLIC_URL") {
            settings.server.public_url = url;
        }
        if let Ok(password) = std::env::var("SCIMSYNC_ADMIN__PASSWORD") {
            settings.admin.password = password;
        }
        if let Ok(url) = std::env::var("SCIMSYNC_MAIL_URL") {
            settings.mail.url = url;
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            settings.database.url = url;
        }
        if let Ok(url) = std::env::var("REDIS_URL") {
            settings.queue.url = url;
        }
        if let Ok(port) = std::env::var("PORT") {
            settings.server.port = port
                .parse()
                .with_context(|| format!("PORT={port} is not a port number"))?;
        }
        settings.database_url()?;
        settings.queue_url()?;
        settings.check_send_lease()?;
        Ok(settings)
    }

    /// Refuses a send lease that a send could outlast. A send may take up
    /// to the transports' timeout; if its claim on the outbox row runs out
    /// first, the reconciler takes the row back while the send still runs
    /// and another worker sends the mail again. Refused rather than raised
    /// in silence: an operator who set the lease should learn it is not
    /// the one in force.
    fn check_send_lease(&self) -> anyhow::Result<()> {
        use crate::email::transport::{CLAIM_LEFT_TO_SEND, SEND_DEADLINE, SHORTEST_SEND_LEASE};
        let lease = self.reconciler.send_lease_secs;
        let shortest = SHORTEST_SEND_LEASE.as_secs();
        if lease < shortest {
            let timeout = SEND_DEADLINE.as_secs();
            bail!(
                "reconciler.send_lease_secs = {lease} is too short for the mail send timeout of {timeout} s \
                 (SMTP and HTTP API, fixed): a mail's claim must outlast its send, or the reconciler takes \
                 the mail back while it is still being sent and it goes out twice. Set \
                 reconciler.send_lease_secs (SCIMSYNC_RECONCILER__SEND_LEASE_SECS) to at least {shortest}: \
                 the send timeout, {} s to record the outcome, and {} s for a welcome to reach its send \
                 after its change commits",
                CLAIM_LEFT_TO_SEND.as_secs() - timeout,
                shortest - CLAIM_LEFT_TO_SEND.as_secs(),
            );
        }
        Ok(())
    }

    /// The database to use; refuses schemes it does not know with the fix.
    pub fn database_url(&self) -> anyhow::Result<DatabaseUrl> {
        let url = self.database.url.trim();
        if url.is_empty() {
            return Ok(DatabaseUrl::Sqlite(self.paths.data_dir.join("scimsync.db")));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                bail!(
                    "DATABASE_URL=sqlite:// needs a file path, for example sqlite://data/scimsync.db"
                );
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        bail!(
            "DATABASE_URL has an unsupported scheme ({}); write postgres://USER:PASSWORD@HOST/DB \
             or sqlite://PATH/TO/FILE.db, or leave it unset for the embedded SQLite default",
            scheme_of(url)
        )
    }

    /// The queue to use; refuses schemes it does not know with the fix.
    pub fn queue_url(&self) -> anyhow::Result<QueueUrl> {
        let url = self.queue.url.trim();
        if url.is_empty() {
            return Ok(QueueUrl::Sqlite(self.paths.data_dir.join("queue.db")));
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(QueueUrl::Redis(url.to_owned()));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Ok(QueueUrl::Sqlite(PathBuf::from(path)));
        }
        bail!(
            "REDIS_URL has an unsupported scheme ({}); write redis://HOST:6379/0 (or rediss:// for TLS), \
             or leave it unset for the embedded SQLite queue",
            scheme_of(url)
        )
    }

    /// Where mail goes: the configured URL, or `.eml` files under the data directory.
    pub fn mail_url(&self) -> String {
        let url = self.mail.url.trim();
        if url.is_empty() {
            format!("file://{}", self.paths.data_dir.join("mail").display())
        } else {
            url.to_owned()
        }
    }

    /// The base URL clients use, without a trailing slash.
    pub fn public_url(&self) -> String {
        let url = self.server.public_url.trim().trim_end_matches('/');
        if url.is_empty() {
            format!("http://{}:{}", self.server.host, self.server.port)
        } else {
            url.to_owned()
        }
    }
}

/// The scheme of a URL for an error message, never the rest (it may hold a password).
fn scheme_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://"),
        None => "no scheme".to_owned(),
    }
}

/// A URL with its password replaced, for logs and `doctor` output. A URL
/// that does not parse shows its scheme only: libpq accepts passwords that
/// end a URL's authority early (`pa#ss`), which would otherwise be printed
/// whole. Passwords in the query (`?password=`) are hidden too.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return format!("{}…", scheme_of(url));
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let query: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let secret = k.to_ascii_lowercase().contains("password");
                (
                    k.into_owned(),
                    if secret {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(query);
    }
    parsed.to_string()
}

/// `text` with every form of the password in `url` replaced by `***`: a
/// client library's error may quote the URL, or the part of it that it
/// could not read (libpq: `invalid percent-encoded token: "<password>"`).
/// The password is taken as broadly as a URL could mean it, from the first
/// `:` after the scheme to the last `@`, raw and percent-decoded, and from
/// any `password=` in the query.
pub fn scrub_secrets(text: &str, url: &str) -> String {
    let mut secrets: Vec<String> = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    if let Some(at) = rest.rfind('@')
        && let Some((_, password)) = rest[..at].split_once(':')
    {
        secrets.push(password.to_owned());
        if let Ok(decoded) = urlencoding_decode(password) {
            secrets.push(decoded);
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && k.to_ascii_lowercase().contains("password")
            {
                secrets.push(v.to_owned());
                if let Ok(decoded) = urlencoding_decode(v) {
                    secrets.push(decoded);
                }
            }
        }
    }
    // Longest first, so that a password containing another is hidden whole.
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for secret in &secrets {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// Percent-decoding that fails on a malformed escape rather than guess.
fn urlencoding_decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_printed_for_debugging_hold_no_secret() {
        let mut settings = Settings::load(None).expect("defaults");
        settings.database.url = "postgres://app:db-secret@db.example.com/scim".into();
        settings.queue.url = "redis://:queue-secret@cache.example.com:6379/0".into();
        settings.mail.url = "resend://re_api-secret@api.resend.com".into();
        settings.admin.password = "admin-secret-password".into();
        let printed = format!(
            "{settings:?} {:?} {:?}",
            settings.database_url().expect("url"),
            settings.queue_url().expect("url")
        );
        for secret in ["db-secret", "queue-secret", "api-secret", "admin-secret"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("db.example.com"), "{printed}");
    }

    #[test]
    fn scrubbed_errors_hold_no_form_of_the_password() {
        let url = "postgres://app:50%off@db.example.com/scim";
        let said = "invalid percent-encoded token: \"50%off\"";
        assert_eq!(
            scrub_secrets(said, url),
            "invalid percent-encoded token: \"***\""
        );
        let url = "postgres://app:p%40ss%2Fword@db.example.com/scim?password=q%20r";
        let said = "bad p@ss/word, p%40ss%2Fword, q r and q%20r";
        assert_eq!(scrub_secrets(said, url), "bad ***, ***, *** and ***");
        let url = "postgres://app:pa@ss@db.example.com/scim";
        assert_eq!(scrub_secrets("user app, pa@ss", url), "user app, ***");
        assert_eq!(
            scrub_secrets("connection refused", "postgres://db.example.com/scim"),
            "connection refused"
        );
    }

    fn settings_with(db: &str, queue: &str) -> Settings {
        let mut s: Settings = Figment::from(Toml::string(DEFAULTS))
            .extract()
            .expect("defaults parse");
        s.database.url = db.into();
        s.queue.url = queue.into();
        s
    }

    #[test]
    fn unset_urls_mean_embedded_sqlite_under_data_dir() {
        let s = settings_with("", "");
        assert_eq!(
            s.database_url().expect("db"),
            DatabaseUrl::Sqlite(PathBuf::from("data/scimsync.db"))
        );
        assert_eq!(
            s.queue_url().expect("queue"),
            QueueUrl::Sqlite(PathBuf::from("data/queue.db"))
        );
    }

    #[test]
    fn unknown_database_scheme_is_refused_with_the_fix() {
        let s = settings_with("mysql://root:secret@localhost/x", "");
        let err = s.database_url().expect_err("mysql refused").to_string();
        assert!(err.contains("postgres://"), "{err}");
        assert!(err.contains("sqlite://"), "{err}");
        assert!(!err.contains("secret"), "password leaked: {err}");
    }

    #[test]
    fn unknown_queue_scheme_is_refused_with_the_fix() {
        let s = settings_with("", "amqp://localhost");
        let err = s.queue_url().expect_err("amqp refused").to_string();
        assert!(err.contains("redis://"), "{err}");
    }

    #[test]
    fn redact_url_hides_password() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db.example.com/scim"),
            "postgres://app:***@db.example.com/scim"
        );
        assert_eq!(
            redact_url("postgres://db.example.com/scim?sslmode=require"),
            "postgres://db.example.com/scim?sslmode=require"
        );
    }

    #[test]
    fn redact_url_hides_what_it_cannot_parse_and_passwords_in_the_query() {
        // libpq takes "pa#ss" as the password; the URL parser stops at '#'.
        assert_eq!(
            redact_url("postgres://app:pa#ss@db.example.com/scim"),
            "postgres://…"
        );
        let shown = redact_url(
            "postgres://app@db.example.com/scim?password=hunter2&sslpassword=x2&sslmode=require",
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("x2"),
            "{shown}"
        );
        assert!(shown.contains("sslmode=require"), "{shown}");
    }
}
