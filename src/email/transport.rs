//! Where mail goes: an SMTP server, Resend's HTTP API, or `.eml` files; how a
//! failed send is classified; and what to tell an operator about it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::message::{Email, build_message, one_line};
use super::resend;

/// Why a send failed, sorted by what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (connection refused/reset, timeout, DNS failure, TLS
    /// failure, SMTP 4xx, SMTP login refused, HTTP 429/5xx). `retry_after` is
    /// the server's own wait when it gave one (HTTP Retry-After).
    #[error("temporary failure: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Do not retry (SMTP 5xx, HTTP 4xx other than 429, an invalid address or
    /// id). `reason` includes the server's own answer.
    #[error("permanent failure: {reason}")]
    Permanent { reason: String },
}

impl SendError {
    /// Whether the same message may be sent again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient { .. })
    }

    /// What went wrong, with the server's answer; never holds a secret.
    pub fn reason(&self) -> &str {
        match self {
            SendError::Transient { reason, .. } | SendError::Permanent { reason } => reason,
        }
    }

    pub(crate) fn transient(reason: impl Into<String>) -> Self {
        SendError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub(crate) fn permanent(reason: impl Into<String>) -> Self {
        SendError::Permanent {
            reason: reason.into(),
        }
    }
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtp://`: plain connection upgraded with STARTTLS, which is required.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    ImplicitTls,
    /// `smtp://…?tls=none`: no encryption at all, for a test server on this machine.
    NoTls,
}

impl SmtpSecurity {
    fn label(self) -> &'static str {
        match self {
            SmtpSecurity::StartTls => "STARTTLS",
            SmtpSecurity::ImplicitTls => "implicit TLS",
            SmtpSecurity::NoTls => "no TLS",
        }
    }
}

/// A password or API key: kept out of `Debug`, logs and errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Self {
        Secret(s)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A configured way to send mail, built once per process from `SCIMSYNC_MAIL_URL`.
pub enum Transport {
    /// One `DIR/<id>.eml` file per message: the embedded default and tests.
    File { dir: PathBuf },
    /// An SMTP submission server, through lettre's pooled async client.
    Smtp {
        host: String,
        port: u16,
        security: SmtpSecurity,
        /// Whether the URL carried a user and password.
        login: bool,
        mailer: AsyncSmtpTransport<Tokio1Executor>,
    },
    /// Resend's HTTP API (`POST /emails`); see [`super::resend`] for why Resend.
    Resend {
        /// The full URL of the send endpoint; holds no secret.
        endpoint: url::Url,
        api_key: Secret,
        client: reqwest::Client,
    },
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Transport({})", self.describe())
    }
}

/// What `SCIMSYNC_MAIL_URL` may look like; every refusal repeats it.
pub(crate) const ACCEPTED: &str = "use one of: smtp://USER:PASS@HOST:587 (STARTTLS), \
smtps://USER:PASS@HOST:465 (implicit TLS), smtp://HOST:PORT?tls=none (a local test server only), \
resend://API_KEY@api.resend.com (Resend's HTTP API), file://DIR (.eml files)";

/// Per-command SMTP timeout: a server that says nothing for this long is gone.
const SMTP_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a whole send may take (the SMTP and HTTP send timeout). A send
/// runs under a claim on its outbox row (`reconciler.send_lease_secs`); past
/// the claim the reconciler may hand the row to another worker, which sends
/// it a second time. So a send starts only under a claim that outlasts it
/// ([`CLAIM_LEFT_TO_SEND`]), and the settings refuse a lease too short for
/// that ([`SHORTEST_SEND_LEASE`]).
pub(crate) const SEND_DEADLINE: Duration = Duration::from_secs(60);

/// What a claim must have left for a send to start under it: the longest
/// send, then 30 s to record its outcome, which also covers the clocks of
/// the processes that claim rows and take them back differing a little.
pub(crate) const CLAIM_LEFT_TO_SEND: Duration = Duration::from_secs(SEND_DEADLINE.as_secs() + 30);

/// The shortest `reconciler.send_lease_secs` accepted: [`CLAIM_LEFT_TO_SEND`]
/// and 30 s more, for a welcome, claimed when its change commits, to reach
/// its send; a welcome that takes longer waits for its claim to run out
/// and the reconciler's re-drive.
pub(crate) const SHORTEST_SEND_LEASE: Duration =
    Duration::from_secs(CLAIM_LEFT_TO_SEND.as_secs() + 30);

impl Transport {
    /// From SCIMSYNC_MAIL_URL. Schemes: `file://DIR` (writes `DIR/<id>.eml`,
    /// creating DIR), `smtp://[user:pass@]host[:port][?tls=starttls|none]`
    /// (default port 587, STARTTLS required unless `tls=none`, which is for
    /// local test servers), `smtps://[user:pass@]host[:port]` (implicit TLS,
    /// default port 465), `resend://API_KEY@api.resend.com` (HTTPS) and
    /// `resend+http://API_KEY@127.0.0.1:PORT` (plain HTTP, for tests).
    /// User, password and key are percent-decoded. An unknown scheme is
    /// refused with the accepted forms; no error repeats a secret.
    ///
    /// SMTP transports must be built inside the tokio runtime, since lettre's
    /// connection pool starts a task there.
    pub fn from_url(url: &str) -> anyhow::Result<Transport> {
        let url = url.trim();
        if url.is_empty() {
            bail!("SCIMSYNC_MAIL_URL is empty; {ACCEPTED}");
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("SCIMSYNC_MAIL_URL has no scheme; {ACCEPTED}");
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => file_from_url(rest),
            "smtp" | "smtps" => smtp_from_url(&parse_url(url)?),
            "resend" | "resend+http" => resend::from_url(&parse_url(url)?),
            _ => bail!(
                "SCIMSYNC_MAIL_URL has an unsupported scheme ({}); {ACCEPTED}",
                printable_scheme(scheme)
            ),
        }
    }

    /// Sends one message; Ok holds what the server said (SMTP reply, Resend's
    /// email id, or the file written), for logs and `scimsync mail test`.
    #[tracing::instrument(name = "mail_send", skip_all, fields(email_id = %email.id))]
    pub async fn send(&self, email: &Email) -> Result<String, SendError> {
        match self {
            Transport::File { dir } => write_file(dir, email).await,
            Transport::Smtp {
                host, port, mailer, ..
            } => send_smtp(mailer, host, *port, email).await,
            Transport::Resend {
                endpoint,
                api_key,
                client,
            } => resend::send(client, endpoint, api_key, email).await,
        }
    }

    /// A one-line, secret-free description ("SMTP mail.example.com:587 (STARTTLS)").
    pub fn describe(&self) -> String {
        match self {
            Transport::File { dir } => format!("files in {}", dir.display()),
            Transport::Smtp {
                host,
                port,
                security,
                login,
                ..
            } => {
                let login = if *login { ", with login" } else { "" };
                format!(
                    "SMTP {}:{port} ({}{login})",
                    bracketed(host),
                    security.label()
                )
            }
            Transport::Resend { endpoint, .. } => format!("Resend API {endpoint}"),
        }
    }
}

/// The scheme for an error message, or a stand-in when it looks like it
/// could be something else (a pasted secret).
fn printable_scheme(scheme: &str) -> String {
    let plausible = !scheme.is_empty()
        && scheme.len() <= 20
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if plausible {
        format!("{scheme}://")
    } else {
        "an unreadable scheme".to_owned()
    }
}

fn parse_url(url: &str) -> anyhow::Result<url::Url> {
    // url::ParseError names the problem, never the input.
    url::Url::parse(url)
        .map_err(|e| anyhow!("SCIMSYNC_MAIL_URL is not a valid URL ({e}); {ACCEPTED}"))
}

/// IPv6 literals in brackets, so `host:port` stays readable.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Percent-decodes a URL user or password. Written out because
/// `form_urlencoded` would also turn `+` into a space, breaking passwords.
pub(crate) fn percent_decode(s: &str, what: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16));
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits are at most 0xFF: the cast loses nothing.
                out.push(((high << 4) | low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| anyhow!("the {what} in SCIMSYNC_MAIL_URL is not UTF-8 once percent-decoded"))
}

/// Refuses query parameters other than `allowed`, so a typo such as
/// `?tsl=none` is reported rather than silently ignored.
pub(crate) fn check_query(url: &url::Url, allowed: &[&str]) -> anyhow::Result<()> {
    for (key, _) in url.query_pairs() {
        if !allowed.contains(&key.as_ref()) {
            let known = if allowed.is_empty() {
                "none are known".to_owned()
            } else {
                format!("known: {}", allowed.join(", "))
            };
            bail!(
                "SCIMSYNC_MAIL_URL has an unknown parameter {:?} ({known})",
                one_line(&key)
            );
        }
    }
    Ok(())
}

/// Refuses a path, which these schemes do not use.
pub(crate) fn check_no_path(url: &url::Url) -> anyhow::Result<()> {
    if url.path().is_empty() || url.path() == "/" {
        Ok(())
    } else {
        bail!("{}:// URLs take no path; {ACCEPTED}", url.scheme())
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn file_from_url(rest: &str) -> anyhow::Result<Transport> {
    // Taken as written, not parsed as a URL: in file://data/mail the URL
    // parser would read "data" as a host.
    let dir = match rest.strip_prefix("localhost") {
        Some(path) if path.starts_with('/') => path,
        _ => rest,
    };
    if dir.is_empty() {
        bail!("file:// needs a directory, e.g. file://data/mail or file:///var/lib/scimsync/mail");
    }
    if dir.contains('?') || dir.contains('#') {
        bail!("file:// takes a directory only, without ? or #");
    }
    Ok(Transport::File {
        dir: PathBuf::from(dir),
    })
}

fn smtp_from_url(url: &url::Url) -> anyhow::Result<Transport> {
    let implicit = url.scheme() == "smtps";
    let host = match url.host() {
        // Non-special schemes keep the host as written; DNS names are case-blind.
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => bail!("the SMTP URL needs a host, e.g. smtp://USER:PASS@mail.example.com:587"),
    };
    check_no_path(url)?;
    let tls_param = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.to_ascii_lowercase());
    let security = match (implicit, tls_param.as_deref()) {
        (true, None) => SmtpSecurity::ImplicitTls,
        (true, Some(_)) => {
            bail!(
                "smtps:// is always implicit TLS and takes no tls= parameter; for STARTTLS use smtp://HOST:587"
            )
        }
        (false, None | Some("starttls")) => SmtpSecurity::StartTls,
        (false, Some("none")) => SmtpSecurity::NoTls,
        (false, Some(other)) => bail!(
            "tls={} is not known: use tls=starttls (the default) or tls=none (a local test server only); for implicit TLS use smtps://",
            one_line(other)
        ),
    };
    check_query(url, if implicit { &[] } else { &["tls"] })?;
    let port = url.port().unwrap_or(if implicit { 465 } else { 587 });

    let user = percent_decode(url.username(), "SMTP user")?;
    let password = url
        .password()
        .map(|p| percent_decode(p, "SMTP password"))
        .transpose()?;
    let credentials = match (user.is_empty(), password) {
        (true, None) => None,
        (false, Some(password)) => Some(Credentials::new(user, password)),
        (false, None) => {
            bail!("the SMTP URL has a user but no password: write smtp://USER:PASSWORD@HOST")
        }
        (true, Some(_)) => {
            bail!("the SMTP URL has a password but no user: write smtp://USER:PASSWORD@HOST")
        }
    };
    if security == SmtpSecurity::NoTls && !is_loopback(&host) {
        tracing::warn!(
            host = %host,
            "SMTP without TLS to a host that is not this machine: messages and any password travel in clear text"
        );
    }

    // lettre's pool spawns its cleanup task on build; without a runtime that
    // would panic, so say what is wrong instead.
    tokio::runtime::Handle::try_current()
        .map_err(|_| anyhow!("the SMTP transport must be built inside the tokio runtime"))?;
    let tls = match security {
        SmtpSecurity::NoTls => Tls::None,
        SmtpSecurity::StartTls | SmtpSecurity::ImplicitTls => {
            let params = TlsParameters::new(host.clone())
                .with_context(|| format!("cannot set up TLS for {host}"))?;
            if implicit {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let login = credentials.is_some();
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
        .port(port)
        .tls(tls)
        .timeout(Some(SMTP_COMMAND_TIMEOUT));
    if let Some(credentials) = credentials {
        builder = builder.credentials(credentials);
    }
    Ok(Transport::Smtp {
        host,
        port,
        security,
        login,
        mailer: builder.build(),
    })
}

/// An error and its sources on one line, skipping a source whose text the
/// previous one already printed (lettre prints its source, reqwest does not).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    // lettre nests errors of one kind ("Connection error: Connection error:
    // …"); say each part once.
    let mut parts: Vec<&str> = Vec::new();
    for part in out.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    one_line(&parts.join(": "))
}

async fn send_smtp(
    mailer: &AsyncSmtpTransport<Tokio1Executor>,
    host: &str,
    port: u16,
    email: &Email,
) -> Result<String, SendError> {
    let message = build_message(email)?;
    let at = format!("{}:{port}", bracketed(host));
    match tokio::time::timeout(SEND_DEADLINE, mailer.send(message)).await {
        Err(_) => Err(SendError::transient(format!(
            "the SMTP server {at} did not finish within {} s (timed out)",
            SEND_DEADLINE.as_secs()
        ))),
        Ok(Ok(response)) => {
            let text = response.message().collect::<Vec<_>>().join(" ");
            Ok(one_line(&format!("{} {text}", u16::from(response.code()))))
        }
        Ok(Err(e)) => Err(classify_smtp(&e, &at)),
    }
}

/// SMTP replies that mean "this login does not work": 530 authentication
/// required, 534 mechanism too weak, 535 credentials invalid, 538 encryption
/// required for the mechanism. They are 5xx, but nothing is wrong with the
/// message: retrying lets it go out once an operator fixes the settings,
/// where a permanent failure would drop every message sent meanwhile.
const LOGIN_REPLIES: [u16; 4] = [530, 534, 535, 538];

/// Sorts a lettre error into transient or permanent, keeping the server's words.
pub(crate) fn classify_smtp(e: &lettre::transport::smtp::Error, at: &str) -> SendError {
    use std::error::Error as _;
    if let Some(code) = e.status() {
        let code = u16::from(code);
        // For a reply error the source is the server's text, without the code.
        let said = e
            .source()
            .map(|s| one_line(&s.to_string()))
            .unwrap_or_default();
        let reason = format!("the SMTP server {at} answered {code} {said}");
        return if e.is_transient() {
            SendError::transient(reason)
        } else if LOGIN_REPLIES.contains(&code) {
            SendError::transient(format!(
                "{reason} (a login problem, not the message's: it is kept and retried)"
            ))
        } else {
            SendError::permanent(reason)
        };
    }
    let detail = error_chain(e);
    if e.is_timeout() {
        return SendError::transient(format!(
            "no answer from the SMTP server {at} (timed out): {detail}"
        ));
    }
    if e.is_tls() {
        return SendError::transient(format!("TLS with the SMTP server {at} failed: {detail}"));
    }
    if e.is_client() && detail.to_ascii_lowercase().contains("non-ascii") {
        // The server lacks SMTPUTF8 or 8BITMIME: this message cannot pass
        // there, others still can.
        return SendError::permanent(format!(
            "the SMTP server {at} cannot take this message: {detail}"
        ));
    }
    // Connection refused or reset, DNS failure, an unreadable reply, a
    // missing STARTTLS or AUTH offer: a problem of the path or the settings.
    SendError::transient(format!("SMTP with {at} failed: {detail}"))
}

/// Names the temporary files; with the process id they never collide.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `DIR/<id>.eml` through a temporary file and a rename, so a reader
/// never sees half a message and the same id written twice leaves one file.
async fn write_file(dir: &Path, email: &Email) -> Result<String, SendError> {
    let message = build_message(email)?;
    // build_message checked the id: it is safe as a file name.
    let path = dir.join(format!("{}.eml", email.id));
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    // A leading dot and no .eml suffix: readers that list *.eml skip it.
    let tmp = dir.join(format!(".{}.{}.{n}.tmp", email.id, std::process::id()));
    // Disk full or a permission problem is fixed outside the message.
    let io = |what: &str, p: &Path, e: std::io::Error| {
        SendError::transient(format!("cannot {what} {}: {e}", p.display()))
    };
    // One trip to the blocking pool for the whole write, not one for each
    // of its five system calls: this runs once for every welcome.
    let bytes = message.formatted();
    let (dir, written) = (dir.to_owned(), format!("written to {}", path.display()));
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| io("create the mail directory", &dir, e))?;
        let write = || {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("write", &path, e)
        })
    })
    .await
    .map_err(|e| SendError::transient(format!("the mail writer stopped: {e}")))??;
    Ok(written)
}

/// A hint for a failed send, for operators: what to check or change in
/// `SCIMSYNC_MAIL_URL` or around it. None when there is nothing to add to
/// the reason itself.
pub fn hint(error: &SendError, transport: &Transport) -> Option<String> {
    let reason = error.reason().to_ascii_lowercase();
    match transport {
        Transport::Smtp {
            host,
            port,
            security,
            ..
        } => smtp_hint(&reason, host, *port, *security),
        Transport::Resend { endpoint, .. } => resend::hint(&reason, endpoint),
        Transport::File { dir } => file_hint(&reason, dir),
    }
}

const PORTS: &str = "for port 587 use smtp:// (STARTTLS), for 465 smtps:// (implicit TLS)";

fn smtp_hint(reason: &str, host: &str, port: u16, security: SmtpSecurity) -> Option<String> {
    let hp = format!("{}:{port}", bracketed(host));
    let answered = |code: &str| reason.contains(&format!("answered {code}"));
    if reason.contains("connection refused") {
        return Some(format!(
            "nothing accepts connections on {hp}: is the server running and listening on that port? {PORTS}"
        ));
    }
    if reason.contains("failed to lookup")
        || reason.contains("name or service not known")
        || reason.contains("could not resolve")
        || reason.contains("no such host")
        || reason.contains("nodename nor servname")
    {
        return Some(format!(
            "the host name {host} does not resolve: check its spelling and this machine's DNS"
        ));
    }
    if reason.contains("starttls is not supported") {
        return Some(format!(
            "{hp} offers no STARTTLS: if it expects TLS from the first byte (usually port 465), use smtps://{}:{port}; tls=none is only for a test server on this machine",
            bracketed(host)
        ));
    }
    if answered("530") && reason.contains("starttls") {
        return Some("the server wants STARTTLS first: remove tls=none from the URL".to_owned());
    }
    if answered("535") || answered("534") || answered("538") {
        return Some(
            "the server refused the user name or password: check both in SCIMSYNC_MAIL_URL, and percent-encode @ : / ? # % in them"
                .to_owned(),
        );
    }
    if answered("530") {
        return Some("the server wants a login: write smtp://USER:PASSWORD@HOST:PORT".to_owned());
    }
    if reason.contains("no compatible authentication mechanism") {
        return Some(
            "the server offers no AUTH PLAIN or LOGIN on this connection; many servers offer AUTH only after STARTTLS"
                .to_owned(),
        );
    }
    if reason.contains("certificate")
        || reason.contains("unknownissuer")
        || reason.contains("notvalidforname")
    {
        return Some(format!(
            "the server's certificate is not valid for {host}: use the host name the certificate names, or fix the server's certificate chain"
        ));
    }
    if reason.contains("tls") || reason.contains("handshake") || reason.contains("corrupt message")
    {
        return Some(match security {
            SmtpSecurity::ImplicitTls => format!(
                "the TLS handshake with {hp} failed: if the server expects STARTTLS (usually port 587), use smtp://{}:587",
                bracketed(host)
            ),
            SmtpSecurity::StartTls | SmtpSecurity::NoTls => format!(
                "the TLS upgrade with {hp} failed: if the server expects implicit TLS (usually port 465), use smtps://{}:465",
                bracketed(host)
            ),
        });
    }
    if reason.contains("timed out") || reason.contains("did not finish") {
        if port == 465 && security != SmtpSecurity::ImplicitTls {
            return Some(format!(
                "port 465 usually expects TLS from the first byte, so both sides wait: use smtps://{}:465",
                bracketed(host)
            ));
        }
        return Some(format!(
            "no answer from {hp}: a firewall may drop the connection (many hosting providers block outgoing 25, 465 and 587), or the port expects the other TLS mode ({PORTS})"
        ));
    }
    if answered("55") && (reason.contains("5.7.1") || reason.contains("relay")) {
        return Some(
            "the server will not relay this message: log in (USER:PASSWORD@), or use a From address it accepts"
                .to_owned(),
        );
    }
    if answered("55") && reason.contains("5.1.1") {
        return Some("the receiving server says this mailbox does not exist".to_owned());
    }
    if reason.contains("non-ascii") {
        return Some(
            "the server does not accept non-ASCII addresses or content (no SMTPUTF8/8BITMIME)"
                .to_owned(),
        );
    }
    None
}

fn file_hint(reason: &str, dir: &Path) -> Option<String> {
    if reason.contains("permission denied") || reason.contains("read-only file system") {
        Some(format!(
            "make {} writable by the user the service runs as, or point file:// elsewhere",
            dir.display()
        ))
    } else if reason.contains("no space left") {
        Some(format!("the disk holding {} is full", dir.display()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        format!("{:#}", Transport::from_url(url).expect_err(url))
    }

    #[test]
    fn file_urls_take_relative_and_absolute_directories() {
        for (url, dir) in [
            ("file://data/mail", "data/mail"),
            ("file:///var/lib/scimsync/mail", "/var/lib/scimsync/mail"),
            ("file://localhost/var/mail", "/var/mail"),
        ] {
            match Transport::from_url(url) {
                Ok(Transport::File { dir: d }) => assert_eq!(d, PathBuf::from(dir), "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(err("file://").contains("needs a directory"));
    }

    #[tokio::test]
    async fn smtp_urls_pick_host_port_and_tls_mode() {
        let cases = [
            (
                "smtp://u:p@mail.example.com",
                "SMTP mail.example.com:587 (STARTTLS, with login)",
            ),
            (
                "smtp://mail.example.com:2525?tls=starttls",
                "SMTP mail.example.com:2525 (STARTTLS)",
            ),
            (
                "smtps://u:p@mail.example.com",
                "SMTP mail.example.com:465 (implicit TLS, with login)",
            ),
            (
                "smtps://mail.example.com:1465",
                "SMTP mail.example.com:1465 (implicit TLS)",
            ),
            (
                "smtp://127.0.0.1:2525?tls=none",
                "SMTP 127.0.0.1:2525 (no TLS)",
            ),
            ("smtp://[::1]:2525?tls=none", "SMTP [::1]:2525 (no TLS)"),
            (
                "SMTP://Mail.Example.com",
                "SMTP mail.example.com:587 (STARTTLS)",
            ),
        ];
        for (url, described) in cases {
            let t = Transport::from_url(url).unwrap_or_else(|e| panic!("{url}: {e:#}"));
            assert_eq!(t.describe(), described, "{url}");
        }
    }

    #[tokio::test]
    async fn smtp_credentials_are_percent_decoded_without_turning_plus_into_space() {
        let t =
            Transport::from_url("smtp://a%40b.example:p%2Bq+r%25@mail.example.com").expect("ok");
        assert!(matches!(t, Transport::Smtp { login: true, .. }));
        assert_eq!(percent_decode("p%2Bq+r%25", "x").expect("ok"), "p+q+r%");
        assert_eq!(percent_decode("100%", "x").expect("ok"), "100%");
        assert!(percent_decode("%FF", "x").is_err());
    }

    #[tokio::test]
    async fn smtp_urls_with_mistakes_are_refused_with_the_fix() {
        assert!(err("smtp://").contains("needs a host"));
        assert!(err("smtp://mail.example.com?tls=implicit").contains("tls=implicit is not known"));
        assert!(err("smtp://mail.example.com?tsl=none").contains("unknown parameter \"tsl\""));
        assert!(err("smtps://mail.example.com?tls=none").contains("takes no tls= parameter"));
        assert!(err("smtp://mail.example.com/x").contains("take no path"));
        assert!(err("smtp://user@mail.example.com").contains("no password"));
        assert!(err("smtp://:pw@mail.example.com").contains("no user"));
    }

    #[test]
    fn unknown_schemes_are_refused_with_the_accepted_forms_and_no_secret() {
        for url in [
            "sendgrid://s3cret@api.example.com",
            "postmark://s3cret@api.postmarkapp.com",
            "s3cret@mail.example.com",
            "",
        ] {
            let e = err(url);
            for form in ["smtp://", "smtps://", "resend://", "file://", "tls=none"] {
                assert!(e.contains(form), "{url}: {e}");
            }
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
        assert!(err("sendgrid://x@y").contains("unsupported scheme (sendgrid://)"));
        assert!(err("pass word@x://y").contains("unreadable scheme"));
    }

    #[tokio::test]
    async fn secrets_stay_out_of_errors_debug_and_descriptions() {
        let t = Transport::from_url("smtp://user:s3cret-pw@mail.example.com").expect("smtp");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(!t.describe().contains("s3cret") && !t.describe().contains("user"));
        let t = Transport::from_url("resend://re_s3cret@api.resend.com").expect("resend");
        assert!(!format!("{t:?}").contains("s3cret"), "{t:?}");
        assert!(!t.describe().contains("s3cret"));
        if let Transport::Resend { api_key, .. } = &t {
            assert_eq!(format!("{api_key:?}"), "Secret(***)");
        }
        for url in [
            "smtp://user:s3cret@mail.example.com?tls=bogus",
            "smtp://user:s3cret@mail.example.com/path",
            "smtp://user:s3cret@mail.example.com:99999",
            "smtps://user:s3cret@mail.example.com?tls=none",
            "resend://re_s3cret@api.resend.com/v2",
            "resend://re_s3cret:more@api.resend.com",
        ] {
            let e = err(url);
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
    }

    #[test]
    fn chains_print_each_distinct_cause_once() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let outer = anyhow::Error::new(inner).context("cannot connect");
        let chain = error_chain(outer.as_ref());
        assert_eq!(chain, "cannot connect: Connection refused");
        let nested = anyhow::anyhow!("Connection error: Connection error: corrupt message");
        assert_eq!(
            error_chain(nested.as_ref()),
            "Connection error: corrupt message"
        );
    }

    fn smtp_transport(port: u16, security: SmtpSecurity) -> impl Fn(&str) -> Option<String> {
        move |reason: &str| {
            smtp_hint(
                &reason.to_ascii_lowercase(),
                "mail.example.com",
                port,
                security,
            )
        }
    }

    #[test]
    fn hints_name_the_fix_for_common_smtp_mistakes() {
        let starttls_465 = smtp_transport(465, SmtpSecurity::StartTls);
        let h = starttls_465("SMTP with mail.example.com:465 failed: Connection error: Connection refused (os error 111)").expect("hint");
        assert!(h.contains("listening") && h.contains("smtps://"), "{h}");
        let h = starttls_465(
            "no answer from the SMTP server mail.example.com:465 (timed out): network error",
        )
        .expect("hint");
        assert!(h.contains("smtps://mail.example.com:465"), "{h}");

        let implicit = smtp_transport(587, SmtpSecurity::ImplicitTls);
        let h = implicit("TLS with the SMTP server mail.example.com:587 failed: tls error: received corrupt message").expect("hint");
        assert!(h.contains("smtp://mail.example.com:587"), "{h}");
        let starttls = smtp_transport(587, SmtpSecurity::StartTls);
        let h =
            starttls("TLS with the SMTP server mail.example.com:587 failed: tls error: handshake")
                .expect("hint");
        assert!(h.contains("smtps://mail.example.com:465"), "{h}");
        let h =
            starttls("TLS with the SMTP server x failed: invalid peer certificate: UnknownIssuer")
                .expect("hint");
        assert!(h.contains("certificate"), "{h}");
        let h = starttls("the SMTP server x answered 535 5.7.8 Authentication credentials invalid")
            .expect("hint");
        assert!(h.contains("user name or password"), "{h}");
        let h = starttls(
            "SMTP with x failed: internal client error: STARTTLS is not supported on this server",
        )
        .expect("hint");
        assert!(h.contains("smtps://"), "{h}");
        let h = starttls("the SMTP server x answered 550 5.7.1 Relaying denied").expect("hint");
        assert!(h.contains("relay"), "{h}");
        assert_eq!(
            starttls("the SMTP server x answered 552 5.3.4 too big"),
            None
        );
    }

    #[test]
    fn hints_for_files_name_the_directory() {
        let h = file_hint(
            "cannot write x: permission denied (os error 13)",
            Path::new("/srv/mail"),
        )
        .expect("hint");
        assert!(h.contains("/srv/mail"));
    }

    #[tokio::test]
    async fn hint_dispatches_on_the_transport() {
        let t = Transport::from_url("smtps://mail.example.com:465").expect("ok");
        let e = SendError::transient(
            "SMTP with mail.example.com:465 failed: Connection refused (os error 111)",
        );
        assert!(hint(&e, &t).is_some_and(|h| h.contains("587")));
        let t = Transport::from_url("file:///srv/mail").expect("ok");
        assert_eq!(hint(&e, &t), None);
    }

    #[test]
    fn send_errors_say_what_happens_next() {
        let t = SendError::Transient {
            reason: "451 try later".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(t.is_transient());
        assert_eq!(t.reason(), "451 try later");
        assert_eq!(t.to_string(), "temporary failure: 451 try later");
        let p = SendError::permanent("550 no such user");
        assert!(!p.is_transient());
        assert_eq!(p.to_string(), "permanent failure: 550 no such user");
        let boxed: Box<dyn std::error::Error> = Box::new(p);
        assert!(boxed.to_string().contains("550"));
    }
}
