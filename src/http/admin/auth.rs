//! Admin login, sessions and CSRF protection.
//!
//! The password comes from configuration and is compared in constant time
//! (as SHA-256 digests, so neither its length nor its content leaks through
//! timing). A login gets a random 256-bit session id in an `HttpOnly;
//! SameSite=Strict` cookie limited to `/admin`; the session, kept in this
//! process's memory, holds its own random CSRF token, which every form
//! carries in a hidden field and every POST must present.
//!
//! Sessions in memory mean a restart logs operators out and, with several
//! web processes behind a load balancer, an operator must be pinned to one
//! (sticky sessions) or log in on each. A shared store was rejected: it
//! would put a credential in the database for a tool used by a few people.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, Form, OriginalUri, Query, Request};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::page::{self, esc};
use crate::config::Settings;
use crate::ops::tokens::random_secret;

const COOKIE: &str = "scimsync_admin";
/// Largest admin form body read to find its CSRF token.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// What the admin pages share: the credential and the live sessions.
pub struct AdminState {
    /// SHA-256 of the configured password; the password itself is not kept.
    password_digest: [u8; 32],
    /// Sessions by the SHA-256 of their id, so a memory dump or a timing
    /// difference in the map does not give a usable cookie.
    sessions: Mutex<HashMap<[u8; 32], SessionData>>,
    ttl: Duration,
    /// Whether cookies get `Secure` (the public URL is https).
    secure: bool,
    /// When the recent wrong passwords were given, across all clients.
    failures: Mutex<std::collections::VecDeque<Instant>>,
}

/// Shortest admin password the pages accept: the password opens every
/// organization's tokens.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Wrong passwords accepted per [`FAILURE_WINDOW`], from everyone
/// together: beyond them every login is refused unread until the window
/// moves on, so guessing runs at 10 tries a minute however many clients
/// try. The real operator is held up too while that lasts; their sessions
/// are not.
const MAX_FAILURES: usize = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

struct SessionData {
    csrf: String,
    expires: Instant,
    /// A message for the next page shown (after a form's redirect).
    flash: Option<Flash>,
}

/// A message about what the previous action did.
#[derive(Debug, Clone)]
pub struct Flash {
    pub failed: bool,
    pub text: String,
}

/// The session of the request being served, for handlers.
#[derive(Clone)]
pub struct Session {
    key: [u8; 32],
    /// This session's CSRF token, for the forms a page renders.
    pub csrf: String,
    /// A message left by the previous action, shown once.
    pub flash: Option<Flash>,
}

impl AdminState {
    /// The admin state, or `None` when no password is configured (the
    /// pages are off).
    pub fn from_settings(settings: &Settings) -> Option<Arc<AdminState>> {
        if !settings.admin.enabled() {
            return None;
        }
        if settings.admin.password.chars().count() < MIN_PASSWORD_CHARS {
            tracing::error!(
                "the admin pages stay off: the admin password is shorter than {MIN_PASSWORD_CHARS} characters"
            );
            return None;
        }
        Some(Arc::new(AdminState {
            password_digest: Sha256::digest(settings.admin.password.as_bytes()).into(),
            sessions: Mutex::new(HashMap::new()),
            ttl: Duration::from_secs(settings.admin.session_hours.max(1) * 3600),
            secure: settings.public_url().starts_with("https://"),
            failures: Mutex::new(std::collections::VecDeque::new()),
        }))
    }

    /// Whether a login may be tried now: fewer than [`MAX_FAILURES`]
    /// wrong passwords within the last [`FAILURE_WINDOW`].
    fn may_try(&self, now: Instant) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        while failures
            .front()
            .is_some_and(|at| now.duration_since(*at) >= FAILURE_WINDOW)
        {
            failures.pop_front();
        }
        failures.len() < MAX_FAILURES
    }

    fn failed(&self, now: Instant) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(now);
    }

    fn password_matches(&self, given: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        digest.ct_eq(&self.password_digest).into()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], SessionData>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session; returns its id (the cookie value).
    fn open(&self) -> String {
        let id = random_secret("");
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            key(&id),
            SessionData {
                csrf: random_secret(""),
                expires: now + self.ttl,
                flash: None,
            },
        );
        id
    }

    /// The live session a cookie names; takes its flash message when
    /// `take_flash` is set.
    fn find(&self, id: &str, take_flash: bool) -> Option<Session> {
        let key = key(id);
        let mut sessions = self.sessions();
        let data = sessions.get_mut(&key)?;
        if data.expires <= Instant::now() {
            sessions.remove(&key);
            return None;
        }
        Some(Session {
            key,
            csrf: data.csrf.clone(),
            flash: if take_flash { data.flash.take() } else { None },
        })
    }

    /// Leaves a message for the session's next page.
    pub fn flash(&self, session: &Session, text: impl Into<String>) {
        self.set_flash(session, false, text.into());
    }

    /// Leaves an error for the session's next page.
    pub fn flash_error(&self, session: &Session, text: impl Into<String>) {
        self.set_flash(session, true, text.into());
    }

    fn set_flash(&self, session: &Session, failed: bool, text: String) {
        if let Some(data) = self.sessions().get_mut(&session.key) {
            data.flash = Some(Flash { failed, text });
        }
    }

    fn close(&self, session: &Session) {
        self.sessions().remove(&session.key);
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        format!(
            "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The value of our cookie in a request, if any.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Where to go after login: only a page of the admin site, never elsewhere.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n == "/admin" || n.starts_with("/admin/") || n.starts_with("/admin?"))
                && !n.contains("//")
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n
        }
        _ => "/admin",
    }
}

/// Lets a request through only with a live session; a state-changing
/// request also needs the session's CSRF token in its form.
pub async fn require_session(
    Extension(admin): Extension<Arc<AdminState>>,
    req: Request,
    next: Next,
) -> Response {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    let session = cookie_value(req.headers()).and_then(|id| admin.find(&id, reads));
    let Some(session) = session else {
        if !reads {
            return Redirect::to("/admin/login").into_response();
        }
        // The URI as sent: inside the nested router the path lacks `/admin`.
        let uri = req
            .extensions()
            .get::<OriginalUri>()
            .map_or_else(|| req.uri().clone(), |o| o.0.clone());
        let wanted = uri
            .path_and_query()
            .map_or("/admin", |p| p.as_str())
            .to_owned();
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &wanted)
            .finish();
        return Redirect::to(&format!("/admin/login?{query}")).into_response();
    };
    let mut req = req;
    if !reads {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return page::message(StatusCode::PAYLOAD_TOO_LARGE, "Form too large", "");
        };
        let presented = url::form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == "csrf")
            .map(|(_, value)| value.into_owned());
        let valid = presented
            .is_some_and(|token| bool::from(token.as_bytes().ct_eq(session.csrf.as_bytes())));
        if !valid {
            tracing::warn!(method = %parts.method, path = %parts.uri.path(), "admin form without a valid CSRF token refused");
            return page::message(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "<p>The form was not sent from a current admin page, so nothing was changed. \
                 Go back, reload the page and try again.</p>",
            );
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p class=\"flash error\">{}</p>", esc(e)))
        .unwrap_or_default();
    page::bare(
        status,
        "Sign in",
        &format!(
            "<main class=\"login\"><h1>scimsync admin</h1>{error}\
<form method=\"post\" action=\"/admin/login\">\
<input type=\"hidden\" name=\"next\" value=\"{}\">\
<label for=\"password\">Admin password</label>\
<input id=\"password\" type=\"password\" name=\"password\" autocomplete=\"current-password\" autofocus required>\
<button type=\"submit\">Sign in</button></form>\
<p class=\"muted\">The password is <code>[admin] password</code> in the configuration \
(<code>SCIMSYNC_ADMIN__PASSWORD</code>).</p></main>",
            esc(next)
        ),
    )
}

/// `GET /admin/login`
pub async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    login_page(StatusCode::OK, safe_next(q.next.as_deref()), None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    password: String,
    next: Option<String>,
}

/// `POST /admin/login`
pub async fn login(
    Extension(admin): Extension<Arc<AdminState>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref()).to_owned();
    let now = Instant::now();
    if !admin.may_try(now) {
        tracing::warn!("admin login refused unread: too many wrong passwords in the last minute");
        let mut page = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some("Too many wrong passwords. Try again in a minute."),
        );
        page.headers_mut()
            .insert(header::RETRY_AFTER, FAILURE_WINDOW.as_secs().into());
        return page;
    }
    if !admin.password_matches(&form.password) {
        admin.failed(now);
        tracing::warn!("admin login refused: wrong password");
        // Slows guessing a little without locking the real operator out.
        tokio::time::sleep(Duration::from_millis(300)).await;
        return login_page(StatusCode::UNAUTHORIZED, &next, Some("Wrong password."));
    }
    let id = admin.open();
    tracing::info!("admin logged in");
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = admin.cookie(&id, admin.ttl.as_secs()).parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /admin/logout`
pub async fn logout(
    Extension(admin): Extension<Arc<AdminState>>,
    Extension(session): Extension<Session>,
) -> Response {
    admin.close(&session);
    let mut response = Redirect::to("/admin/login").into_response();
    if let Ok(value) = admin.cookie("", 0).parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_inside_the_admin_pages() {
        assert_eq!(safe_next(Some("/admin/log?org=a")), "/admin/log?org=a");
        assert_eq!(safe_next(Some("https://evil.example/admin")), "/admin");
        assert_eq!(safe_next(Some("//evil.example")), "/admin");
        assert_eq!(safe_next(Some("/admin//evil.example")), "/admin");
        assert_eq!(safe_next(Some("/administrator")), "/admin");
        assert_eq!(safe_next(None), "/admin");
    }

    #[test]
    fn off_without_a_password_and_the_password_is_never_printed() {
        let mut settings = Settings::load(None).expect("defaults");
        settings.admin.password = String::new();
        assert!(AdminState::from_settings(&settings).is_none());
        settings.admin.password = "hunter2-hunter2".into();
        assert!(AdminState::from_settings(&settings).is_some());
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn password_must_match_exactly() {
        let mut settings = Settings::load(None).expect("defaults");
        settings.admin.password = "s3cret".into();
        assert!(
            AdminState::from_settings(&settings).is_none(),
            "too short: the pages stay off"
        );
        settings.admin.password = "s3cret-s3cret".into();
        let admin = AdminState::from_settings(&settings).expect("on");
        assert!(admin.password_matches("s3cret-s3cret"));
        for wrong in ["", "s3cret-s3cre", "s3cret-s3cret ", "S3CRET-S3CRET"] {
            assert!(!admin.password_matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; scimsync_admin=abc; b=2".parse().expect("header"),
        );
        assert_eq!(cookie_value(&headers).as_deref(), Some("abc"));
    }
}
