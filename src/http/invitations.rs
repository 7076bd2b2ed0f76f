//! The page a welcome email links to: see the invitation, accept it.
//! Plain server-rendered HTML that works without JavaScript.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use crate::email::templates::html_escape;
use crate::ops::tokens::hash_token;
use crate::store::{self, invitations, now, orgs, users};

/// Where an invitation stands.
enum Standing {
    Open { org: String, email: String },
    Accepted { org: String },
    AlreadyUsed { org: String },
    Revoked { org: String },
    Expired { org: String },
    Unknown,
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f5f6f8;color:#1d2330;margin:0}}\
main{{max-width:32rem;margin:4rem auto;background:#fff;padding:2rem 2.5rem;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12)}}\
h1{{font-size:1.4rem;margin-top:0}} p{{line-height:1.5}}\
button{{font-size:1rem;padding:.7rem 1.4rem;border:0;border-radius:6px;background:#2356d8;color:#fff;cursor:pointer}}\
.muted{{color:#5b6475;font-size:.9rem}}</style></head><body><main>\
<h1>{title}</h1>{body}</main></body></html>",
        title = html_escape(title),
    );
    (status, Html(html)).into_response()
}

async fn standing(state: &AppState, token: String, accept: bool) -> Result<Standing, store::Error> {
    let hash = hash_token(&token);
    let read = move |c: &mut store::Conn| {
        use diesel::Connection;
        c.transaction::<Standing, store::Error, _>(|c| {
            let Some(inv) = invitations::find_by_hash(c, &hash)? else {
                return Ok(Standing::Unknown);
            };
            let org = orgs::find(c, &inv.org_id)?
                .map(|o| o.name)
                .unwrap_or_default();
            if inv.used_at.is_some() {
                return Ok(Standing::AlreadyUsed { org });
            }
            if inv.revoked_at.is_some() {
                return Ok(Standing::Revoked { org });
            }
            if inv.expires_at <= now() {
                return Ok(Standing::Expired { org });
            }
            if !accept {
                return Ok(Standing::Open {
                    org,
                    email: inv.email,
                });
            }
            if !invitations::mark_used(c, &inv.id)? {
                return Ok(Standing::AlreadyUsed { org });
            }
            users::mark_joined(c, &inv.org_id, &inv.user_id, now())?;
            Ok(Standing::Accepted { org })
        })
    };
    // Showing the page only reads: on SQLite it must not queue behind
    // (or hold up) the writers applying Entra ID's changes, since anyone
    // can ask for any link.
    if accept {
        state.store.run_write(read).await
    } else {
        state.store.run(read).await
    }
}

fn render(standing: Standing, token: &str) -> Response {
    let esc = html_escape;
    match standing {
        Standing::Open { org, email } => page(
            StatusCode::OK,
            &format!("Join {org}"),
            &format!(
                "<p>You have been invited to join <strong>{}</strong> as <strong>{}</strong>.</p>\
<form method=\"post\" action=\"/invitations/{}\"><button type=\"submit\">Accept invitation</button></form>\
<p class=\"muted\">Not you? Ignore this page; nothing happens until the invitation is accepted.</p>",
                esc(&org),
                esc(&email),
                esc(token)
            ),
        ),
        Standing::Accepted { org } => page(
            StatusCode::OK,
            "You're in",
            &format!(
                "<p>You have joined <strong>{}</strong>. You can sign in with your organization's single sign-on.</p>",
                esc(&org)
            ),
        ),
        Standing::AlreadyUsed { org } => page(
            StatusCode::GONE,
            "This invitation was already used",
            &format!(
                "<p>The invitation to <strong>{}</strong> has already been accepted. Sign in with your organization's single sign-on.</p>",
                esc(&org)
            ),
        ),
        Standing::Revoked { org } => page(
            StatusCode::GONE,
            "This invitation was withdrawn",
            &format!(
                "<p>Your access to <strong>{}</strong> was removed before the invitation was accepted. If you think this is a mistake, ask your IT administrator to assign you to the application again.</p>",
                esc(&org)
            ),
        ),
        Standing::Expired { org } => page(
            StatusCode::GONE,
            "This invitation has expired",
            &format!(
                "<p>The invitation to <strong>{}</strong> is no longer valid. Ask your IT administrator for a new one: removing and re-assigning you to the application sends a fresh invitation.</p>",
                esc(&org)
            ),
        ),
        Standing::Unknown => page(
            StatusCode::NOT_FOUND,
            "This invitation link is not valid",
            "<p>Check that you opened the whole link from the email. If it still does not work, ask your IT administrator for a new invitation.</p>",
        ),
    }
}

fn unavailable(e: &store::Error) -> Response {
    tracing::warn!(error = %e, "invitation page: database unavailable");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again in a moment",
        "<p>The service is busy right now. Reload this page in a minute.</p>",
    )
}

/// `GET /invitations/{token}`
pub async fn show(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match standing(&state, token.clone(), false).await {
        Ok(s) => render(s, &token),
        Err(e) => unavailable(&e),
    }
}

/// `POST /invitations/{token}`: accept.
pub async fn accept(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match standing(&state, token.clone(), true).await {
        Ok(s) => render(s, &token),
        Err(e) => unavailable(&e),
    }
}
