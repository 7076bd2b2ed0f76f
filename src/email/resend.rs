//! Resend's HTTP API, the HTTP provider of [`Transport::Resend`].
//!
//! Why Resend rather than Postmark: the outbox promises one email per row,
//! and the hard case is a send whose answer is lost (a timeout, a reset, a
//! garbled 2xx) after the provider accepted it. Postmark's `POST /email` has
//! no idempotency mechanism, so a retry there may deliver twice. Resend
//! documents an `Idempotency-Key` header on `POST /emails`: a request that
//! repeats a key seen in the last 24 hours is answered with the first
//! answer and sends nothing. With the outbox id as the key, every retry is
//! safe, since the whole retry schedule (`mail.max_attempts`,
//! `mail.retry_max_secs`) ends well inside 24 hours.
//!
//! Followed as documented:
//! - send: <https://resend.com/docs/api-reference/emails/send-email>
//!   (`POST https://api.resend.com/emails`, JSON `from`, `to`, `subject`,
//!   `html`, `text`, `headers`; answer `{"id": "…"}`)
//! - authentication, the required `User-Agent`, response codes and rate-limit
//!   headers (`retry-after` on 429): <https://resend.com/docs/api-reference/introduction>
//! - idempotency keys (1–256 characters, 24 hours, 409
//!   `invalid_idempotent_request` / `concurrent_idempotent_requests`):
//!   <https://resend.com/docs/dashboard/emails/idempotency-keys>
//! - error bodies `{"statusCode", "message", "name"}` and their names:
//!   <https://resend.com/docs/api-reference/errors>

use std::time::Duration;

use anyhow::{anyhow, bail};
use chrono::{DateTime, NaiveDateTime, Utc};
use lettre::message::Mailbox;
use serde_json::{Value, json};

use super::message::{Email, check_id, mailbox, one_line};
use super::transport::{
    ACCEPTED, SEND_DEADLINE, Secret, SendError, Transport, check_no_path, check_query, error_chain,
    is_loopback, percent_decode,
};

/// Resend rejects requests without a User-Agent (403, error 1010).
const USER_AGENT: &str = concat!("scimsync/", env!("CARGO_PKG_VERSION"));

/// A server's Retry-After is honoured up to this; a larger value is taken as
/// this, so one odd header cannot park a message for weeks.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Builds the transport for `resend://API_KEY@HOST[:PORT]` (HTTPS) or
/// `resend+http://API_KEY@HOST:PORT` (plain HTTP, for a local test server).
pub(crate) fn from_url(url: &url::Url) -> anyhow::Result<Transport> {
    let plain_http = url.scheme() == "resend+http";
    let key = percent_decode(url.username(), "Resend API key")?;
    if key.is_empty() || url.password().is_some() {
        bail!(
            "resend:// takes the API key as the user part, with no ':' — resend://API_KEY@api.resend.com"
        );
    }
    // The key travels in a header: only visible ASCII can.
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the Resend API key has characters an HTTP header cannot carry");
    }
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
        _ => bail!("resend:// needs a host: resend://API_KEY@api.resend.com"),
    };
    check_no_path(url)?;
    check_query(url, &[])?;
    if plain_http && !is_loopback(&host) {
        tracing::warn!(host = %host, "resend+http:// sends the API key in clear text; use resend:// (HTTPS)");
    }
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let scheme = if plain_http { "http" } else { "https" };
    let endpoint = url::Url::parse(&format!("{scheme}://{host}{port}/emails"))
        .map_err(|e| anyhow!("cannot form the Resend endpoint ({e}); {ACCEPTED}"))?;
    let client = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(SEND_DEADLINE)
        .connect_timeout(Duration::from_secs(10))
        // A redirected POST would be replayed as a GET or to another host
        // with our key: an answer of 3xx is reported instead.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| anyhow!("cannot build the HTTP client: {}", error_chain(&e)))?;
    Ok(Transport::Resend {
        endpoint,
        api_key: Secret::new(key),
        client,
    })
}

/// The JSON body of `POST /emails`. The outbox id also goes in
/// `X-Entity-Ref-ID`, the header Resend's docs suggest to keep Gmail from
/// threading separate messages, which also ties the delivered mail to its row.
///
/// `to` is sent as the bare address: Resend documents the `Name <address>`
/// form for `from` only.
fn request_body(email: &Email, to: &Mailbox, id: &str) -> Value {
    json!({
        "from": one_line(&email.from),
        "to": to.email.to_string(),
        "subject": one_line(&email.subject),
        "html": email.html,
        "text": email.text,
        "headers": {
            "X-Entity-Ref-ID": id,
            "Auto-Submitted": "auto-generated",
        },
    })
}

/// Sends one message; the outbox id is the `Idempotency-Key`.
pub(crate) async fn send(
    client: &reqwest::Client,
    endpoint: &url::Url,
    api_key: &Secret,
    email: &Email,
) -> Result<String, SendError> {
    let id = check_id(&email.id)?;
    // Same address rules as SMTP, so a bad address fails the same way on
    // every transport, before anything leaves.
    mailbox("sender", &email.from)?;
    let to = mailbox("recipient", &email.to)?;
    let host = match (endpoint.host_str(), endpoint.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => endpoint.to_string(),
    };
    let response = client
        .post(endpoint.clone())
        .bearer_auth(api_key.expose())
        .header("Idempotency-Key", id)
        .json(&request_body(email, &to, id))
        .send()
        .await
        .map_err(|e| request_failed(e, &host))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    let body = match response.text().await {
        Ok(body) => body,
        Err(e) if (200..300).contains(&status) => {
            return Err(SendError::transient(format!(
                "Resend answered {status} but the body could not be read ({}); it may have accepted the message, and a retry with the same Idempotency-Key returns the first answer instead of sending twice",
                error_chain(&e.without_url())
            )));
        }
        // The status alone decides what happens next.
        Err(_) => String::new(),
    };
    classify(status, retry_after, &body)
}

/// A request that got no answer: nothing says whether Resend took it, and
/// the Idempotency-Key makes the retry safe either way.
fn request_failed(e: reqwest::Error, host: &str) -> SendError {
    let timeout = e.is_timeout();
    let connect = e.is_connect();
    let builder = e.is_builder();
    // The URL holds no secret, but the host is named once already.
    let detail = error_chain(&e.without_url());
    if builder {
        SendError::permanent(format!("cannot form the request to Resend: {detail}"))
    } else if timeout {
        SendError::transient(format!(
            "no answer from Resend at {host} within {} s (timed out): {detail}",
            SEND_DEADLINE.as_secs()
        ))
    } else if connect {
        SendError::transient(format!("cannot connect to Resend at {host}: {detail}"))
    } else {
        SendError::transient(format!("the request to Resend at {host} failed: {detail}"))
    }
}

/// What Resend's answer means for the message.
///
/// A 2xx without the documented `{"id": "…"}` is **transient**: Resend may
/// have accepted the message, but the retry carries the same
/// Idempotency-Key, so Resend answers it with the first answer instead of
/// sending again; and if the 2xx came from something in between (a proxy, a
/// captive portal) the retry is what gets the message out. Taking it as sent
/// would lose it in the second case; taking it as permanent would lose it in
/// both.
pub(crate) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
) -> Result<String, SendError> {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let text = |key: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .map(one_line)
            .filter(|s| !s.is_empty())
    };
    if (200..300).contains(&status) {
        return match text("id") {
            Some(id) => Ok(format!("Resend email id {id}")),
            None => Err(SendError::transient(format!(
                "Resend answered {status} without the documented {{\"id\": …}} body ({}); it may have accepted the message, and a retry with the same Idempotency-Key returns the first answer instead of sending twice",
                excerpt(body)
            ))),
        };
    }
    let name = text("name");
    let message = text("message").unwrap_or_else(|| excerpt(body));
    let reason = match &name {
        Some(name) => format!("Resend answered {status} {name}: {message}"),
        None => format!("Resend answered {status}: {message}"),
    };
    match (status, name.as_deref()) {
        (429 | 500..=599, _) | (409, Some("concurrent_idempotent_requests")) => {
            Err(SendError::Transient {
                reason,
                retry_after,
            })
        }
        // A key that is missing, wrong, revoked or restricted, or a sending
        // domain not verified: the account's problem, not the message's.
        // Kept and retried, it goes out once an operator fixes the
        // settings; failed for good, every welcome meanwhile would be lost.
        (401 | 403, _) => Err(SendError::Transient {
            reason: format!(
                "{reason} (the API key or the account, not the message: it is kept and retried)"
            ),
            retry_after,
        }),
        (409, Some("invalid_idempotent_request")) => Err(SendError::permanent(format!(
            "{reason} (Resend already accepted a different message with this outbox id in the last 24 hours; not sending another)"
        ))),
        (300..=399, _) => Err(SendError::permanent(format!(
            "{reason} (a redirect: check the host in SCIMSYNC_MAIL_URL)"
        ))),
        _ => Err(SendError::permanent(reason)),
    }
}

/// The start of a body for a reason: one line, at most 200 characters.
fn excerpt(body: &str) -> String {
    let flat = one_line(body);
    if flat.is_empty() {
        return "an empty body".to_owned();
    }
    match flat.char_indices().nth(200) {
        Some((at, _)) => format!("body: {}…", &flat[..at]),
        None => format!("body: {flat}"),
    }
}

/// Retry-After as delay-seconds or an HTTP-date (RFC 9110 §10.2.3: the
/// IMF-fixdate, or the obsolete RFC 850 and asctime forms). A date in the
/// past means "now"; anything unreadable is ignored.
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = DateTime::parse_from_rfc2822(value)
            .map(|d| d.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                    .iter()
                    .find_map(|f| NaiveDateTime::parse_from_str(value, f).ok())
                    .map(|n| n.and_utc())
            })?;
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Hints for Resend failures; `reason` is lower-cased.
pub(crate) fn hint(reason: &str, endpoint: &url::Url) -> Option<String> {
    let answered = |code: &str| reason.contains(&format!("resend answered {code}"));
    if reason.contains("api_key") || answered("401") {
        return Some(
            "Resend refused the API key: create a key with sending access at resend.com/api-keys and write resend://API_KEY@api.resend.com"
                .to_owned(),
        );
    }
    if answered("403") && (reason.contains("domain") || reason.contains("testing emails")) {
        return Some(
            "verify your sending domain in Resend, then use an address of that domain in mail.from"
                .to_owned(),
        );
    }
    if reason.contains("invalid_from_address") || (answered("422") && reason.contains("from")) {
        return Some(
            "mail.from must be `Name <address@your-verified-domain>` or a bare address of a verified domain"
                .to_owned(),
        );
    }
    if reason.contains("quota_exceeded") {
        return Some(
            "the Resend account's sending quota is used up: raise the plan, or wait for the quota to reset"
                .to_owned(),
        );
    }
    if answered("403") {
        return Some(
            "Resend refused the request: check the API key and that the key may send from this domain"
                .to_owned(),
        );
    }
    let host = endpoint.host_str().unwrap_or("the host");
    if reason.contains("connection refused") {
        return Some(format!(
            "nothing accepts connections at {host}: the URL should be resend://API_KEY@api.resend.com"
        ));
    }
    if reason.contains("dns error") || reason.contains("failed to lookup") {
        return Some(format!(
            "the host name {host} does not resolve: check the URL (resend://API_KEY@api.resend.com) and this machine's DNS"
        ));
    }
    if reason.contains("certificate") {
        return Some(format!("the TLS certificate of {host} is not trusted"));
    }
    if answered("404") || answered("405") {
        return Some(format!(
            "{endpoint} is not Resend's send endpoint: the URL should be resend://API_KEY@api.resend.com"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resend_urls_build_https_and_local_http_endpoints() {
        let t = Transport::from_url("resend://re_123@api.resend.com").expect("ok");
        assert_eq!(t.describe(), "Resend API https://api.resend.com/emails");
        let t = Transport::from_url("resend+http://re_123@127.0.0.1:8025").expect("ok");
        assert_eq!(t.describe(), "Resend API http://127.0.0.1:8025/emails");
        match Transport::from_url("resend://re%5F1%2B2@api.resend.com/") {
            Ok(Transport::Resend { api_key, .. }) => assert_eq!(api_key.expose(), "re_1+2"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resend_urls_with_mistakes_are_refused() {
        let err = |u: &str| format!("{:#}", Transport::from_url(u).expect_err(u));
        assert!(err("resend://api.resend.com").contains("API key as the user part"));
        assert!(err("resend://re_1:x@api.resend.com").contains("no ':'"));
        assert!(err("resend://re%0A1@api.resend.com").contains("cannot carry"));
        assert!(err("resend://re_1@api.resend.com/emails").contains("take no path"));
        assert!(err("resend://re_1@api.resend.com?stream=x").contains("unknown parameter"));
    }

    #[test]
    fn the_request_body_uses_resends_field_names() {
        let email = Email {
            id: "01JID".into(),
            from: "scimsync <no-reply@example.com>".into(),
            to: "Ada <ada@example.com>".into(),
            subject: "Hi\r\nBcc: evil@example.com".into(),
            text: "t\n".into(),
            html: "<p>h</p>".into(),
        };
        let to = mailbox("recipient", &email.to).expect("valid");
        let body = request_body(&email, &to, "01JID");
        assert_eq!(
            body,
            json!({
                "from": "scimsync <no-reply@example.com>",
                "to": "ada@example.com",
                "subject": "Hi  Bcc: evil@example.com",
                "html": "<p>h</p>",
                "text": "t\n",
                "headers": {"X-Entity-Ref-ID": "01JID", "Auto-Submitted": "auto-generated"},
            })
        );
    }

    #[test]
    fn a_documented_success_returns_the_email_id() {
        let ok = classify(
            200,
            None,
            r#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#,
        );
        assert_eq!(
            ok,
            Ok("Resend email id 49a3999c-0ce1-4ea6-ab68-afcd6dc2e794".into())
        );
    }

    #[test]
    fn a_2xx_without_an_id_is_retried_under_the_same_key() {
        for body in ["", "<html>ok</html>", "{}", r#"{"id":""}"#, r#"{"id":42}"#] {
            let e = classify(200, None, body).expect_err(body);
            assert!(e.is_transient(), "{body}: {e}");
            assert!(e.reason().contains("Idempotency-Key"), "{e}");
        }
    }

    #[test]
    fn rate_limits_and_server_errors_are_transient_with_retry_after() {
        let wait = Some(Duration::from_secs(2));
        let body =
            r#"{"statusCode":429,"message":"Too many requests.","name":"rate_limit_exceeded"}"#;
        assert_eq!(
            classify(429, wait, body),
            Err(SendError::Transient {
                reason: "Resend answered 429 rate_limit_exceeded: Too many requests.".into(),
                retry_after: wait,
            })
        );
        for status in [500, 502, 503] {
            let e = classify(status, None, "Bad Gateway").expect_err("error");
            assert!(e.is_transient(), "{status}");
            assert!(e.reason().contains("Bad Gateway"), "{e}");
        }
        let busy = r#"{"statusCode":409,"message":"Same idempotency key used while original request is still in progress.","name":"concurrent_idempotent_requests"}"#;
        assert!(classify(409, None, busy).expect_err("409").is_transient());
    }

    #[test]
    fn other_client_errors_are_permanent_with_resends_message() {
        let body =
            r#"{"statusCode":422,"message":"Invalid `to` field.","name":"validation_error"}"#;
        assert_eq!(
            classify(422, None, body),
            Err(SendError::permanent(
                "Resend answered 422 validation_error: Invalid `to` field."
            ))
        );
        let reused = r#"{"statusCode":409,"message":"Same idempotency key used with a different request payload.","name":"invalid_idempotent_request"}"#;
        let e = classify(409, None, reused).expect_err("409");
        assert!(
            !e.is_transient() && e.reason().contains("already accepted"),
            "{e}"
        );
        for status in [400, 404, 422, 451] {
            assert!(
                !classify(status, None, "")
                    .expect_err("error")
                    .is_transient(),
                "{status}"
            );
        }
        // The key or the account, not the message: kept for a retry.
        for status in [401, 403] {
            let e = classify(status, None, "").expect_err("error");
            assert!(e.is_transient() && e.reason().contains("kept"), "{e}");
        }
        let e = classify(301, None, "").expect_err("redirect");
        assert!(!e.is_transient() && e.reason().contains("redirect"));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .expect("date")
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:05 2015", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Tue, 20 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn hints_point_at_the_key_the_domain_and_the_url() {
        let endpoint = url::Url::parse("https://api.resend.com/emails").expect("url");
        let h = |r: &str| hint(&r.to_ascii_lowercase(), &endpoint);
        assert!(
            h("Resend answered 401 missing_api_key: Missing API key")
                .is_some_and(|s| s.contains("API key"))
        );
        assert!(
            h("Resend answered 403 invalid_api_key: API key is invalid")
                .is_some_and(|s| s.contains("API key"))
        );
        assert!(
            h("Resend answered 403 validation_error: The example.com domain is not verified")
                .is_some_and(|s| s.contains("verify"))
        );
        assert!(
            h("Resend answered 429 daily_quota_exceeded: quota")
                .is_some_and(|s| s.contains("quota"))
        );
        assert!(h("cannot connect to Resend at x: tcp connect error: Connection refused (os error 111)").is_some());
        assert_eq!(
            h("Resend answered 422 validation_error: Invalid `to` field."),
            None
        );
    }
}
