//! The admin pages' layout and the small pieces every page uses. Every
//! value that came from Entra ID or a person goes through [`esc`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::NaiveDateTime;

use super::auth::Session;
pub use crate::email::templates::html_escape as esc;

/// Which item of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Log,
    Orgs,
    Users,
}

const CSS: &str = "\
:root{--bg:#f4f5f7;--fg:#1d2330;--muted:#5b6475;--line:#e2e5ea;--accent:#2356d8;--ok:#1a7f37;--warn:#8a5a00;--bad:#c62828}\
*{box-sizing:border-box}\
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;background:var(--bg);color:var(--fg)}\
header{background:#1d2330;color:#fff;display:flex;align-items:center;gap:1.5rem;padding:.55rem 1.5rem}\
header .brand{font-weight:650;letter-spacing:.01em}\
header nav a{color:#c2cadb;text-decoration:none;margin-right:1.1rem;padding:.3rem 0}\
header nav a.on{color:#fff;border-bottom:2px solid #fff}\
header form{margin-left:auto}\
header button{background:transparent;color:#c2cadb;border:1px solid #4a5366;padding:.2rem .7rem}\
main{max-width:1280px;margin:1.2rem auto 3rem;padding:0 1.5rem}\
h1{font-size:1.35rem;margin:.3rem 0 1rem}\
h2{font-size:1.05rem;margin:1.6rem 0 .6rem}\
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:1rem 1.2rem;margin-bottom:1rem}\
.scroll{overflow-x:auto}\
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line)}\
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}\
th{background:#eef0f3;font-weight:600;font-size:.82rem;color:#39414f;white-space:nowrap}\
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
td.nowrap{white-space:nowrap}\
.badge{display:inline-block;padding:.05rem .5rem;border-radius:10px;font-size:.78rem;font-weight:600}\
.applied,.ok{background:#dafbe1;color:var(--ok)}\
.rejected,.warn{background:#fff4c2;color:var(--warn)}\
.dead,.bad{background:#ffe3e0;color:var(--bad)}\
.muted{color:var(--muted)}\
.err{color:var(--bad)}\
.small{font-size:.85rem}\
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.84rem}\
pre{background:#f6f8fa;border:1px solid var(--line);padding:.8rem;border-radius:6px;overflow:auto;max-height:30rem;white-space:pre-wrap;word-break:break-word;margin:.3rem 0}\
.flash{padding:.6rem .9rem;border-radius:6px;background:#ddf4ff;border:1px solid #8cc8ff;margin-bottom:1rem}\
.flash.error{background:#ffebe9;border-color:#ff9e98}\
form.inline{display:inline}\
button{font:inherit;padding:.35rem .9rem;border-radius:5px;border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}\
button.danger{background:var(--bad);border-color:var(--bad)}\
button.plain{background:#fff;color:var(--fg);border-color:#c4c9d2}\
input,select{font:inherit;padding:.3rem .5rem;border:1px solid #c4c9d2;border-radius:5px;background:#fff}\
.filters{display:flex;flex-wrap:wrap;gap:.7rem;align-items:end;margin-bottom:1rem}\
.filters label{display:flex;flex-direction:column;font-size:.8rem;color:var(--muted);gap:.15rem}\
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(12rem,1fr));gap:.8rem;margin-bottom:1rem}\
.stat{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.7rem 1rem}\
.stat .v{font-size:1.5rem;font-weight:650;font-variant-numeric:tabular-nums}\
.stat .l{color:var(--muted);font-size:.82rem}\
dl.kv{display:grid;grid-template-columns:9rem 1fr;gap:.35rem 1rem;margin:0}\
dl.kv dt{color:var(--muted)}\
dl.kv dd{margin:0;word-break:break-word}\
.login{max-width:24rem;margin:5rem auto;background:#fff;padding:2rem;border-radius:8px;border:1px solid var(--line)}\
.login h1{margin-top:0}\
.login label{font-weight:600}\
.login input{width:100%;margin:.3rem 0 1rem}\
a{color:var(--accent)}\
.actions{display:flex;flex-wrap:wrap;gap:1rem;align-items:end}\
";

/// A whole HTML document.
fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\">\
<title>{} · scimsync admin</title><style>{CSS}</style></head><body>{body}</body></html>",
        esc(title)
    )
}

/// A page without navigation (login, refusals).
pub fn bare(status: StatusCode, title: &str, body: &str) -> Response {
    (status, Html(document(title, body))).into_response()
}

/// A short message page without navigation.
pub fn message(status: StatusCode, title: &str, body: &str) -> Response {
    bare(
        status,
        title,
        &format!(
            "<main class=\"login\"><h1>{}</h1>{body}<p><a href=\"/admin\">Admin overview</a></p></main>",
            esc(title)
        ),
    )
}

/// A page of the admin site: navigation, the session's message, `body`.
pub fn render(
    status: StatusCode,
    title: &str,
    nav: Nav,
    session: &Session,
    body: &str,
) -> Response {
    let link = |item: Nav, href: &str, label: &str| {
        format!(
            "<a href=\"{href}\"{}>{label}</a>",
            if item == nav { " class=\"on\"" } else { "" }
        )
    };
    let flash = session
        .flash
        .as_ref()
        .map(|f| {
            let class = if f.failed { "flash error" } else { "flash" };
            format!("<p class=\"{class}\">{}</p>", esc(&f.text))
        })
        .unwrap_or_default();
    let html = format!(
        "<header><span class=\"brand\">scimsync admin</span><nav>{}{}{}{}</nav>\
<form method=\"post\" action=\"/admin/logout\">{}<button type=\"submit\">Log out</button></form></header>\
<main>{flash}{body}</main>",
        link(Nav::Overview, "/admin", "Overview"),
        link(Nav::Log, "/admin/log", "Provisioning log"),
        link(Nav::Orgs, "/admin/orgs", "Organizations"),
        link(Nav::Users, "/admin/users", "Users"),
        csrf_field(session),
    );
    (status, Html(document(title, &html))).into_response()
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(session: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&session.csrf)
    )
}

/// Headers for every admin response: never cached, never framed, no
/// script at all (the pages use none, so an escaping slip cannot run one).
pub async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A stored time as UTC, to the second.
pub fn time(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A time with how long ago it was, for tables.
pub fn when(t: NaiveDateTime) -> String {
    let secs = (crate::store::now() - t).num_seconds();
    format!(
        "<span title=\"{} UTC\">{}</span>",
        time(t),
        if secs < 0 {
            time(t)
        } else {
            format!("{} ago", age(secs))
        }
    )
}

/// Seconds as a short age: 42 s, 5 min, 3 h, 2 d.
pub fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// An outcome as a coloured label.
pub fn badge(outcome: &str) -> String {
    let class = match outcome {
        "applied" => "applied",
        "rejected" => "rejected",
        _ => "dead",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(outcome))
}

/// A path segment, percent-encoded for a link or a redirect.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs, encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Stored JSON, indented and escaped; other text escaped as it is.
pub fn json_block(text: &str) -> String {
    let shown = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned());
    format!("<pre>{}</pre>", esc(&shown))
}

/// At most `max` characters of `s`, escaped, with an ellipsis when cut.
pub fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return esc(s);
    }
    let cut: String = s.chars().take(max).collect();
    format!("<span title=\"{}\">{}…</span>", esc(s), esc(&cut))
}

/// A page that could not be read: the cause for the operator, logged too.
pub fn failed(session: &Session, nav: Nav, what: &str, e: &anyhow::Error) -> Response {
    tracing::error!(error = format!("{e:#}"), "admin page: {what}");
    render(
        StatusCode::SERVICE_UNAVAILABLE,
        what,
        nav,
        session,
        &format!(
            "<h1>{}</h1><p class=\"flash error\">{}</p><p>Reload in a moment; <code>scimsync doctor</code> checks the configuration, database and queue.</p>",
            esc(what),
            esc(&format!("{e:#}"))
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(seg("01J9Z-ab_c.~"), "01J9Z-ab_c.~");
        assert_eq!(seg("a/b c?<"), "a%2Fb%20c%3F%3C");
    }

    #[test]
    fn json_is_indented_and_escaped() {
        let html = json_block(r#"{"displayName":"<script>alert(1)</script>"}"#);
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(42), "42 s");
        assert_eq!(age(300), "5 min");
        assert_eq!(age(3 * 3600), "3 h");
        assert_eq!(age(3 * 86_400), "3 d");
    }
}
