//! Where mail goes: an SMTP server, Postmark's HTTP API, or `.eml` files.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::templates::one_line;

/// One message ready to send. `id` is the outbox row id: it becomes the
/// Message-ID and the `.eml` file name, so a resend is recognisable.
#[derive(Debug, Clone)]
pub struct Email {
    pub id: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a send failed, sorted by what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Try again later: connection trouble, timeouts, SMTP 4xx, HTTP 429/5xx.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Do not retry: SMTP 5xx, HTTP 4xx, an address that cannot be used.
    Permanent { reason: String },
}

impl SendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            SendError::Transient { reason, .. } | SendError::Permanent { reason } => reason,
        }
    }

    fn transient(reason: impl Into<String>) -> Self {
        SendError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    fn permanent(reason: impl Into<String>) -> Self {
        SendError::Permanent {
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient { reason, .. } => write!(f, "temporary failure: {reason}"),
            SendError::Permanent { reason } => write!(f, "permanent failure: {reason}"),
        }
    }
}

impl std::error::Error for SendError {}

/// How SMTP is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    StartTls,
    ImplicitTls,
    /// Plain text, for a test server on this machine only.
    None,
}

/// A configured transport; built once per process.
pub enum Transport {
    File {
        dir: PathBuf,
    },
    Smtp {
        mailer: AsyncSmtpTransport<Tokio1Executor>,
        host: String,
        port: u16,
        security: SmtpSecurity,
    },
    /// Postmark's "send a single email" API (`POST /email`), chosen as
    /// the HTTP provider: <https://postmarkapp.com/developer/user-guide/send-email-with-api>.
    /// Postmark has no idempotency key; the outbox id goes in `Metadata`
    /// so a duplicate after a crash can be traced.
    Postmark {
        client: reqwest::Client,
        endpoint: String,
        token: String,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

const ACCEPTED: &str = "write smtp://USER:PASS@HOST:587 (STARTTLS), smtps://USER:PASS@HOST:465 \
(implicit TLS), postmark://SERVER_TOKEN@api.postmarkapp.com, or file://DIR";

impl Transport {
    /// Builds the transport `SCIMSYNC_MAIL_URL` names.
    pub fn from_url(url: &str) -> anyhow::Result<Transport> {
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                bail!("file:// needs a directory, e.g. file://data/mail");
            }
            return Ok(Transport::File {
                dir: PathBuf::from(dir),
            });
        }
        let parsed = url::Url::parse(url)
            .map_err(|_| anyhow::anyhow!("SCIMSYNC_MAIL_URL is not a URL; {ACCEPTED}"))?;
        match parsed.scheme() {
            "smtp" | "smtps" => smtp_from_url(&parsed),
            "postmark" | "postmark+http" => {
                let token = percent_decode(parsed.username());
                if token.is_empty() {
                    bail!(
                        "postmark:// needs the server token as the user part: postmark://SERVER_TOKEN@api.postmarkapp.com"
                    );
                }
                let host = parsed.host_str().unwrap_or("api.postmarkapp.com");
                let scheme = if parsed.scheme() == "postmark" {
                    "https"
                } else {
                    "http"
                };
                let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
                Ok(Transport::Postmark {
                    client: reqwest::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .context("cannot build the HTTP client")?,
                    endpoint: format!("{scheme}://{host}{port}/email"),
                    token,
                })
            }
            other => bail!("unsupported mail scheme {other}://; {ACCEPTED}"),
        }
    }

    /// A one-line description without secrets.
    pub fn describe(&self) -> String {
        match self {
            Transport::File { dir } => format!("files in {}", dir.display()),
            Transport::Smtp {
                host,
                port,
                security,
                ..
            } => {
                let mode = match security {
                    SmtpSecurity::StartTls => "STARTTLS",
                    SmtpSecurity::ImplicitTls => "implicit TLS",
                    SmtpSecurity::None => "no TLS",
                };
                format!("SMTP {host}:{port} ({mode})")
            }
            Transport::Postmark { endpoint, .. } => format!("Postmark API {endpoint}"),
        }
    }

    /// Sends one message; Ok holds what the server said.
    pub async fn send(&self, email: &Email) -> Result<String, SendError> {
        match self {
            Transport::File { dir } => write_file(dir, email).await,
            Transport::Smtp { mailer, .. } => {
                let message = build_message(email)?;
                match mailer.send(message).await {
                    Ok(response) => Ok(format!(
                        "{} {}",
                        response.code(),
                        response.message().collect::<Vec<_>>().join(" ")
                    )),
                    Err(e) => Err(classify_smtp(&e)),
                }
            }
            Transport::Postmark {
                client,
                endpoint,
                token,
            } => send_postmark(client, endpoint, token, email).await,
        }
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn smtp_from_url(url: &url::Url) -> anyhow::Result<Transport> {
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .context("the SMTP URL needs a host, e.g. smtp://mail.example.com:587")?
        .to_owned();
    let tls_param = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let security = match (url.scheme(), tls_param.as_deref()) {
        ("smtps", _) => SmtpSecurity::ImplicitTls,
        (_, Some("none")) => SmtpSecurity::None,
        (_, None | Some("starttls")) => SmtpSecurity::StartTls,
        (_, Some(other)) => {
            bail!("tls={other} is not known: use tls=starttls (default) or tls=none")
        }
    };
    let port = url.port().unwrap_or(match security {
        SmtpSecurity::ImplicitTls => 465,
        SmtpSecurity::StartTls => 587,
        SmtpSecurity::None => 25,
    });
    let tls = match security {
        SmtpSecurity::None => Tls::None,
        _ => {
            let params = TlsParameters::new(host.clone()).context("cannot set up TLS for SMTP")?;
            if security == SmtpSecurity::ImplicitTls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
        .port(port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)));
    if !url.username().is_empty() {
        builder = builder.credentials(Credentials::new(
            percent_decode(url.username()),
            percent_decode(url.password().unwrap_or_default()),
        ));
    }
    Ok(Transport::Smtp {
        mailer: builder.build(),
        host,
        port,
        security,
    })
}

/// The MIME message: text and HTML alternatives, Message-ID from the id.
/// Header values are flattened to one line first; lettre then encodes them.
fn build_message(email: &Email) -> Result<Message, SendError> {
    let from: Mailbox = one_line(&email.from).parse().map_err(|e| {
        SendError::permanent(format!(
            "the sender address {:?} is not valid: {e}",
            email.from
        ))
    })?;
    let to: Mailbox = one_line(&email.to).parse().map_err(|e| {
        SendError::permanent(format!(
            "the recipient address {:?} is not valid: {e}",
            email.to
        ))
    })?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(one_line(&email.subject))
        .message_id(Some(format!("<{}@scimsync>", one_line(&email.id))))
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| SendError::permanent(format!("cannot build the message: {e}")))
}

async fn write_file(dir: &std::path::Path, email: &Email) -> Result<String, SendError> {
    let message = build_message(email)?;
    let safe_id: String = email
        .id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let path = dir.join(format!("{safe_id}.eml"));
    let tmp = dir.join(format!(".{safe_id}.eml.tmp"));
    let io =
        |e: std::io::Error| SendError::transient(format!("cannot write to {}: {e}", dir.display()));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    tokio::fs::write(&tmp, message.formatted())
        .await
        .map_err(io)?;
    // Rename is atomic: the same id written twice leaves one whole file.
    tokio::fs::rename(&tmp, &path).await.map_err(io)?;
    Ok(format!("written to {}", path.display()))
}

fn classify_smtp(e: &lettre::transport::smtp::Error) -> SendError {
    let reason = e.to_string();
    if e.is_permanent() {
        SendError::permanent(reason)
    } else {
        // Transient replies (4xx), connection and TLS failures, timeouts.
        SendError::transient(reason)
    }
}

async fn send_postmark(
    client: &reqwest::Client,
    endpoint: &str,
    token: &str,
    email: &Email,
) -> Result<String, SendError> {
    let body = serde_json::json!({
        "From": one_line(&email.from),
        "To": one_line(&email.to),
        "Subject": one_line(&email.subject),
        "TextBody": email.text,
        "HtmlBody": email.html,
        "MessageStream": "outbound",
        "Metadata": {"outbox_id": email.id},
    });
    let response = client
        .post(endpoint)
        .header("Accept", "application/json")
        .header("X-Postmark-Server-Token", token)
        .json(&body)
        .send()
        .await
        .map_err(|e| SendError::transient(format!("cannot reach Postmark: {}", without_url(&e))))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let text = response.text().await.unwrap_or_default();
    let answer: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let message = answer
        .as_ref()
        .and_then(|a| a.get("Message"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect());
    if status.is_success() {
        // Postmark answers ErrorCode 0 and a MessageID. A 2xx without them
        // may still mean the message was accepted: retrying could send it
        // twice, so it is recorded as sent with what was said.
        let id = answer
            .as_ref()
            .and_then(|a| a.get("MessageID"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        return Ok(match id {
            Some(id) => format!("Postmark MessageID {id}"),
            None => format!("Postmark answered {status} without a MessageID: {message}"),
        });
    }
    let reason = format!("Postmark answered {status}: {message}");
    if status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::Transient {
            reason,
            retry_after,
        })
    } else {
        Err(SendError::permanent(reason))
    }
}

/// reqwest errors print the URL; ours holds no secret, but keep it short.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "the API");
    }
    s
}

/// Retry-After as seconds or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// A hint for an operator when a send fails.
pub fn hint(error: &SendError, transport: &Transport) -> Option<String> {
    let reason = error.reason().to_ascii_lowercase();
    match transport {
        Transport::Smtp { port, security, .. } => {
            if reason.contains("connection refused") {
                Some(format!(
                    "nothing accepts connections on port {port}: check the host and port (587 is usually STARTTLS with smtp://, 465 implicit TLS with smtps://)"
                ))
            } else if reason.contains("tls")
                || reason.contains("handshake")
                || reason.contains("certificate")
            {
                Some(match security {
                    SmtpSecurity::ImplicitTls => "the TLS handshake failed: if the server expects STARTTLS (usually port 587), use smtp:// instead of smtps://".to_owned(),
                    _ => "the TLS handshake failed: if the server expects implicit TLS (usually port 465), use smtps://".to_owned(),
                })
            } else if reason.contains("535") || reason.contains("authentication") {
                Some("the server refused the credentials: check the user and password in the URL (percent-encode special characters)".to_owned())
            } else if reason.contains("timed out") || reason.contains("timeout") {
                Some("the server did not answer in time: check firewalls and the port".to_owned())
            } else {
                None
            }
        }
        Transport::Postmark { .. } if reason.contains("401") => Some(
            "Postmark refused the token: use a Server API token (not the Account token)".to_owned(),
        ),
        Transport::Postmark { .. } if reason.contains("422") => Some(
            "Postmark refused the message: the From address must be a confirmed Sender Signature"
                .to_owned(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Building an SMTP transport starts its connection pool's task.
    #[tokio::test]
    async fn urls_pick_the_transport_and_tls_mode() {
        assert!(matches!(
            Transport::from_url("file://data/mail"),
            Ok(Transport::File { .. })
        ));
        let t = Transport::from_url("smtp://u:p@mail.example.com").expect("smtp");
        assert_eq!(t.describe(), "SMTP mail.example.com:587 (STARTTLS)");
        let t = Transport::from_url("smtps://mail.example.com").expect("smtps");
        assert_eq!(t.describe(), "SMTP mail.example.com:465 (implicit TLS)");
        let t = Transport::from_url("smtp://127.0.0.1:2525?tls=none").expect("plain");
        assert_eq!(t.describe(), "SMTP 127.0.0.1:2525 (no TLS)");
        let t = Transport::from_url("postmark://tok@api.postmarkapp.com").expect("postmark");
        assert_eq!(
            t.describe(),
            "Postmark API https://api.postmarkapp.com/email"
        );
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused_without_leaking_secrets() {
        let err = Transport::from_url("sendgrid://s3cret@api.example.com")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("smtp://") && err.contains("file://"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let t = Transport::from_url("smtp://user:s3cret@mail.example.com").expect("smtp");
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn header_injection_in_subject_and_names_is_flattened() {
        let m = build_message(&Email {
            id: "01X".into(),
            from: "scimsync <no-reply@example.com>".into(),
            to: "ada@example.com".into(),
            subject: "Hi\r\nBcc: evil@example.com".into(),
            text: "t".into(),
            html: "<p>h</p>".into(),
        })
        .expect("message");
        let raw = String::from_utf8_lossy(&m.formatted()).into_owned();
        assert!(!raw.to_ascii_lowercase().contains("\r\nbcc:"), "{raw}");
        assert!(raw.contains("Message-ID: <01X@scimsync>"));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
