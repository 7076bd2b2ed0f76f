//! `GET /admin/users?org=…&q=…`: what happened to user X.

use std::fmt::Write as _;

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::auth::Session;
use super::changes::entries_table;
use super::page::{self, Nav, esc, json_block, query, time, when};
use crate::http::AppState;
use crate::ops;
use crate::ops::admin::Entry;

#[derive(Debug, Default, Deserialize)]
pub struct LookupParams {
    org: Option<String>,
    q: Option<String>,
}

/// `GET /admin/users`
pub async fn lookup(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(p): Query<LookupParams>,
) -> Response {
    let orgs = match ops::orgs::list(&state.store).await {
        Ok(orgs) => orgs,
        Err(e) => return page::failed(&session, Nav::Users, "Users", &e),
    };
    let org = p.org.as_deref().map(str::trim).filter(|o| !o.is_empty());
    let q = p.q.as_deref().map(str::trim).unwrap_or_default();
    let mut html = String::from(
        "<h1>Find a user</h1><form method=\"get\" action=\"/admin/users\" class=\"filters\">\
<label>Organization<select name=\"org\"><option value=\"\">All</option>",
    );
    for o in &orgs {
        let _ = write!(
            html,
            "<option value=\"{0}\"{1}>{0}</option>",
            esc(&o.slug),
            if org == Some(o.slug.as_str()) {
                " selected"
            } else {
                ""
            }
        );
    }
    let _ = write!(
        html,
        "</select></label><label>userName, externalId, email or id<input name=\"q\" value=\"{}\" size=\"40\" autofocus></label>\
<button type=\"submit\">Find</button></form>",
        esc(q)
    );
    if let Some(slug) = org
        && !orgs.iter().any(|o| o.slug == slug)
    {
        let _ = write!(
            html,
            "<p class=\"flash error\">There is no organization \"{}\".</p>",
            esc(slug)
        );
        return page::render(
            StatusCode::BAD_REQUEST,
            "Users",
            Nav::Users,
            &session,
            &html,
        );
    }
    if q.is_empty() {
        return page::render(StatusCode::OK, "Users", Nav::Users, &session, &html);
    }
    let found = match ops::admin::find_users(&state.store, org, q, &state.base_url).await {
        Ok(found) => found,
        Err(e) => return page::failed(&session, Nav::Users, "Users", &e),
    };
    if found.is_empty() {
        let _ = write!(
            html,
            "<p class=\"muted\">No user matches. Changes that were rejected before a user existed are in the \
<a href=\"/admin/log?{}\">provisioning log</a>.</p>",
            esc(&query(&[("user", q)]))
        );
    }
    for f in found {
        let u = &f.user;
        let _ = write!(
            html,
            "<h2>{} <span class=\"muted small\">in {}</span></h2><div class=\"card\"><dl class=\"kv\">",
            esc(&u.user_name),
            esc(&f.org)
        );
        let mut item = |label: &str, value: String| {
            let _ = write!(html, "<dt>{label}</dt><dd>{value}</dd>");
        };
        item("Id", format!("<code>{}</code>", esc(&u.id)));
        item(
            "Display name",
            esc(u.display_name.as_deref().unwrap_or("–")),
        );
        item("externalId", esc(u.external_id.as_deref().unwrap_or("–")));
        item("Email", esc(u.email.as_deref().unwrap_or("–")));
        item(
            "Active",
            if u.active {
                "<span class=\"badge ok\">active</span>".to_owned()
            } else {
                "<span class=\"badge bad\">inactive</span>".to_owned()
            },
        );
        item(
            "Joined",
            u.joined_at.map_or_else(
                || "not yet (invitation not accepted)".to_owned(),
                |t| format!("{} UTC", time(t)),
            ),
        );
        item("Created", format!("{} UTC", time(u.created_at)));
        item(
            "Updated",
            format!("{} UTC · {}", time(u.updated_at), when(u.updated_at)),
        );
        item("Version", u.version.to_string());
        let teams = if f.teams.is_empty() {
            "none".to_owned()
        } else {
            f.teams
                .iter()
                .map(|t| esc(&t.display_name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        item("Teams", teams);
        html.push_str("</dl></div>");
        html.push_str("<h3>Recent log entries</h3>");
        if f.log.is_empty() {
            html.push_str("<p class=\"muted\">None.</p>");
        } else {
            let entries: Vec<Entry> = f
                .log
                .into_iter()
                .map(|row| Entry {
                    org: f.org.clone(),
                    row,
                })
                .collect();
            html.push_str(&entries_table(&entries));
        }
        let scim = serde_json::to_string(&f.scim).unwrap_or_default();
        let _ = write!(
            html,
            "<details open><summary>SCIM representation</summary>{}</details>",
            json_block(&scim)
        );
    }
    page::render(StatusCode::OK, "Users", Nav::Users, &session, &html)
}
