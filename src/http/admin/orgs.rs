//! Organizations and their SCIM tokens: list, create, issue and revoke.
//! A token's value is shown once, on the page that issues it.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Extension, Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{AdminState, Session};
use super::page::{self, Nav, esc, query, seg};
use crate::http::AppState;
use crate::ops;

fn rfc_time(t: &str) -> String {
    // ops gives RFC 3339 to the second; tables read better without the T and Z.
    esc(t.replace('T', " ").trim_end_matches('Z'))
}

/// `GET /admin/orgs`
pub async fn list(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> Response {
    let orgs = match ops::orgs::list(&state.store).await {
        Ok(orgs) => orgs,
        Err(e) => return page::failed(&session, Nav::Orgs, "Organizations", &e),
    };
    let mut html = String::from(
        "<h1>Organizations</h1><div class=\"scroll\"><table><tr><th>Slug</th><th>Name</th><th class=\"num\">Users</th>\
<th class=\"num\">Active</th><th class=\"num\">Joined</th><th class=\"num\">Teams</th><th class=\"num\">Live tokens</th>\
<th class=\"num\">Failures, last day</th><th>Notifications to</th><th>Created (UTC)</th></tr>",
    );
    for org in &orgs {
        match ops::orgs::show(&state.store, &org.slug).await {
            Ok(d) => {
                let failures = if d.failures_last_day > 0 {
                    format!(
                        "<a href=\"/admin/log?{}\">{}</a>",
                        esc(&query(&[
                            ("org", &org.slug),
                            ("outcome", "failed"),
                            ("since", "1d")
                        ])),
                        d.failures_last_day
                    )
                } else {
                    "0".to_owned()
                };
                let _ = write!(
                    html,
                    "<tr><td><a href=\"/admin/orgs/{}\">{}</a></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} of {}</td><td class=\"num\">{failures}</td><td>{}</td><td>{}</td></tr>",
                    seg(&org.slug),
                    esc(&org.slug),
                    esc(&org.name),
                    d.users,
                    d.active_users,
                    d.joined_users,
                    d.teams,
                    d.live_tokens,
                    d.tokens,
                    esc(org.notify_email.as_deref().unwrap_or("–")),
                    rfc_time(&org.created_at),
                );
            }
            Err(e) => return page::failed(&session, Nav::Orgs, "Organizations", &e),
        }
    }
    html.push_str("</table></div>");
    let _ = write!(
        html,
        "<h2>Create an organization</h2><form method=\"post\" action=\"/admin/orgs\" class=\"filters card\">{}\
<label>Slug<input name=\"slug\" required pattern=\"[a-z0-9][a-z0-9-]{{0,62}}\" placeholder=\"acme-corp\"></label>\
<label>Name<input name=\"name\" placeholder=\"Acme Corporation\"></label>\
<label>Failure digests to<input name=\"notify\" type=\"email\" placeholder=\"it@acme.example\"></label>\
<button type=\"submit\">Create</button></form>",
        page::csrf_field(&session)
    );
    page::render(StatusCode::OK, "Organizations", Nav::Orgs, &session, &html)
}

#[derive(Debug, Deserialize)]
pub struct CreateOrg {
    #[serde(default)]
    slug: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    notify: String,
}

/// `POST /admin/orgs`
pub async fn create(
    State(state): State<AppState>,
    Extension(admin): Extension<Arc<AdminState>>,
    Extension(session): Extension<Session>,
    Form(form): Form<CreateOrg>,
) -> Response {
    let slug = form.slug.trim();
    let name = Some(form.name.trim()).filter(|n| !n.is_empty());
    let notify = Some(form.notify.trim()).filter(|n| !n.is_empty());
    match ops::orgs::create(&state.store, slug, name, notify).await {
        Ok(org) => {
            admin.flash(
                &session,
                format!(
                    "Organization {} was created. Issue a token for Entra ID below.",
                    org.slug
                ),
            );
            Redirect::to(&format!("/admin/orgs/{}", seg(&org.slug))).into_response()
        }
        Err(e) => {
            admin.flash_error(&session, format!("Not created: {e:#}"));
            Redirect::to("/admin/orgs").into_response()
        }
    }
}

/// `GET /admin/orgs/{slug}`
pub async fn show(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(slug): Path<String>,
) -> Response {
    let detail = match ops::orgs::show(&state.store, &slug).await {
        Ok(d) => d,
        Err(e) => {
            // `show` fails the same way for a missing organization and a
            // database error; tell them apart by asking for the list.
            return match ops::orgs::list(&state.store).await {
                Ok(orgs) if !orgs.iter().any(|o| o.slug == slug) => page::render(
                    StatusCode::NOT_FOUND,
                    "No such organization",
                    Nav::Orgs,
                    &session,
                    &format!(
                        "<h1>No organization \"{}\"</h1><p><a href=\"/admin/orgs\">All organizations</a></p>",
                        esc(&slug)
                    ),
                ),
                _ => page::failed(&session, Nav::Orgs, "Organization", &e),
            };
        }
    };
    let tokens = match ops::tokens::list(&state.store, &slug).await {
        Ok(t) => t,
        Err(e) => return page::failed(&session, Nav::Orgs, "Organization", &e),
    };
    let info = &detail.info;
    let mut html = format!(
        "<h1>{} <span class=\"muted\">{}</span></h1><div class=\"grid\">",
        esc(&info.name),
        esc(&info.slug)
    );
    for (label, value) in [
        ("Users", detail.users),
        ("Active", detail.active_users),
        ("Joined", detail.joined_users),
        ("Teams", detail.teams),
        ("Failures, last day", detail.failures_last_day),
    ] {
        let _ = write!(
            html,
            "<div class=\"stat\"><div class=\"l\">{label}</div><div class=\"v\">{value}</div></div>"
        );
    }
    let _ = write!(
        html,
        "</div><p>Failure digests go to {}. Created {} UTC. \
<a href=\"/admin/log?{}\">Provisioning log</a> · <a href=\"/admin/users?{}\">Find a user</a></p>",
        info.notify_email.as_deref().map_or_else(
            || "nobody (set an address with <code>scimsync org notify</code>)".to_owned(),
            esc
        ),
        rfc_time(&info.created_at),
        esc(&query(&[("org", &info.slug)])),
        esc(&query(&[("org", &info.slug)])),
    );
    html.push_str(
        "<h2>SCIM tokens</h2><div class=\"scroll\"><table><tr><th>Label</th><th>Id</th><th>Created (UTC)</th>\
<th>Last used (UTC)</th><th>Revoked (UTC)</th><th></th></tr>",
    );
    for t in &tokens {
        let action = if t.revoked_at.is_none() {
            format!(
                "<form method=\"post\" action=\"/admin/orgs/{}/tokens/{}/revoke\" class=\"inline\">{}\
<button type=\"submit\" class=\"danger\">Revoke</button></form>",
                seg(&info.slug),
                seg(&t.id),
                page::csrf_field(&session)
            )
        } else {
            String::new()
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
            esc(&t.label),
            esc(&t.id),
            rfc_time(&t.created_at),
            t.last_used_at
                .as_deref()
                .map_or_else(|| "never".to_owned(), rfc_time),
            t.revoked_at
                .as_deref()
                .map_or_else(|| "–".to_owned(), rfc_time),
        );
    }
    if tokens.is_empty() {
        html.push_str("<tr><td colspan=\"6\" class=\"muted\">No tokens yet.</td></tr>");
    }
    let _ = write!(
        html,
        "</table></div><h2>Issue a token</h2><form method=\"post\" action=\"/admin/orgs/{}/tokens\" class=\"filters card\">{}\
<label>Label<input name=\"label\" required placeholder=\"Entra ID production\" size=\"30\"></label>\
<button type=\"submit\">Issue token</button><span class=\"small muted\">The token is shown once, on the next page.</span></form>",
        seg(&info.slug),
        page::csrf_field(&session)
    );
    page::render(StatusCode::OK, &info.slug, Nav::Orgs, &session, &html)
}

#[derive(Debug, Deserialize)]
pub struct CreateToken {
    #[serde(default)]
    label: String,
}

/// `POST /admin/orgs/{slug}/tokens`: issues a token and shows it, once.
pub async fn create_token(
    State(state): State<AppState>,
    Extension(admin): Extension<Arc<AdminState>>,
    Extension(session): Extension<Session>,
    Path(slug): Path<String>,
    Form(form): Form<CreateToken>,
) -> Response {
    let label = match form.label.trim() {
        "" => "issued in the admin pages",
        l => l,
    };
    let issued = match ops::tokens::create(&state.store, &slug, label).await {
        Ok(issued) => issued,
        Err(e) => {
            admin.flash_error(&session, format!("Not issued: {e:#}"));
            return Redirect::to(&format!("/admin/orgs/{}", seg(&slug))).into_response();
        }
    };
    tracing::info!(org = %slug, token_id = %issued.info.id, "SCIM token issued in the admin pages");
    let html = format!(
        "<h1>New token for {org}</h1><div class=\"card\"><p>Copy it now: it is stored only as a hash and \
will not be shown again.</p><pre>{token}</pre><dl class=\"kv\"><dt>Label</dt><dd>{label}</dd><dt>Id</dt><dd><code>{id}</code></dd>\
<dt>Tenant URL</dt><dd><code>{base}</code></dd></dl><p class=\"small muted\">In Entra ID, set the enterprise application's \
Tenant URL to the address above and the Secret Token to this token.</p></div>\
<p><a href=\"/admin/orgs/{slug}\">Back to {org}</a></p>",
        org = esc(&slug),
        token = esc(&issued.token),
        label = esc(&issued.info.label),
        id = esc(&issued.info.id),
        base = esc(&state.base_url),
        slug = seg(&slug),
    );
    page::render(StatusCode::CREATED, "New token", Nav::Orgs, &session, &html)
}

/// `POST /admin/orgs/{slug}/tokens/{id}/revoke`
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(admin): Extension<Arc<AdminState>>,
    Extension(session): Extension<Session>,
    Path((slug, id)): Path<(String, String)>,
) -> Response {
    // Only a token of the organization whose page the form was on.
    let belongs = ops::tokens::list(&state.store, &slug)
        .await
        .map(|tokens| tokens.iter().any(|t| t.id == id));
    let outcome = match belongs {
        Ok(true) => ops::tokens::revoke(&state.store, &id).await,
        Ok(false) => Err(anyhow::anyhow!("{slug} has no token {id}")),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => admin.flash(
            &session,
            format!("Token {id} was revoked; it is refused from now on."),
        ),
        Err(e) => admin.flash_error(&session, format!("Not revoked: {e:#}")),
    }
    Redirect::to(&format!("/admin/orgs/{}", seg(&slug))).into_response()
}
