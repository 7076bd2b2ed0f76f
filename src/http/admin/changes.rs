//! The provisioning log (`/admin/log`), one change (`/admin/changes/{id}`),
//! and what an operator does about dead changes: retry or discard.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::SecondsFormat;
use serde::Deserialize;

use super::auth::{AdminState, Session};
use super::page::{self, Nav, badge, esc, json_block, query, seg, short, time, when};
use crate::http::AppState;
use crate::ops;
use crate::ops::admin::{Entry, LogSearch};
use crate::store::now;

/// Rows per log page unless asked otherwise.
const PAGE: i64 = 50;

/// A table of log entries, each linking to its change.
pub fn entries_table(entries: &[Entry]) -> String {
    let mut html = String::from(
        "<div class=\"scroll\"><table><tr><th>Time (UTC)</th><th>Organization</th><th>Operation</th>\
<th>Subject</th><th>Outcome</th><th class=\"num\">HTTP</th><th class=\"num\">Attempts</th>\
<th class=\"num\">ms</th><th>Error / resolution</th></tr>",
    );
    for Entry { org, row } in entries {
        let note = match (&row.error, &row.resolution) {
            (_, Some(r)) => format!("<span class=\"muted\">{}</span>", short(r, 80)),
            (Some(e), None) => short(e, 100),
            (None, None) => String::new(),
        };
        let _ = write!(
            html,
            "<tr><td class=\"nowrap\"><a href=\"/admin/changes/{}\">{}</a><div class=\"small muted\">{}</div></td>\
<td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td>{note}</td></tr>",
            seg(&row.change_id),
            time(row.applied_at),
            when(row.applied_at),
            esc(org),
            esc(&row.operation),
            esc(&row.resource_type),
            short(
                row.subject
                    .as_deref()
                    .or(row.resource_id.as_deref())
                    .unwrap_or("–"),
                60
            ),
            badge(&row.outcome),
            row.status,
            row.attempts,
            row.duration_ms,
        );
    }
    html.push_str("</table></div>");
    html
}

/// The log page's query string; every field may be empty.
#[derive(Debug, Default, Deserialize)]
pub struct LogParams {
    org: Option<String>,
    user: Option<String>,
    outcome: Option<String>,
    since: Option<String>,
    before: Option<String>,
    before_id: Option<String>,
    limit: Option<String>,
}

fn filled(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `GET /admin/log`
pub async fn log(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(p): Query<LogParams>,
) -> Response {
    let orgs = match ops::orgs::list(&state.store).await {
        Ok(orgs) => orgs,
        Err(e) => return page::failed(&session, Nav::Log, "Provisioning log", &e),
    };
    let mut problems = Vec::new();
    let org = filled(p.org.as_ref());
    if let Some(slug) = &org
        && !orgs.iter().any(|o| &o.slug == slug)
    {
        problems.push(format!("There is no organization \"{slug}\"."));
    }
    let outcome = filled(p.outcome.as_ref());
    if let Some(o) = &outcome
        && !["applied", "rejected", "dead", "failed"].contains(&o.as_str())
    {
        problems.push(format!("Unknown outcome \"{o}\"."));
    }
    let since_text = filled(p.since.as_ref());
    let since = since_text
        .as_deref()
        .and_then(|s| match ops::admin::parse_since(s, now()) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(format!("Since: {e}."));
                None
            }
        });
    let before = match (filled(p.before.as_ref()), filled(p.before_id.as_ref())) {
        (Some(t), Some(id)) => match chrono::DateTime::parse_from_rfc3339(&t) {
            Ok(t) => Some((t.naive_utc(), id)),
            Err(_) => {
                problems
                    .push("The page link is damaged; start again from the newest entries.".into());
                None
            }
        },
        _ => None,
    };
    let limit = filled(p.limit.as_ref())
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(PAGE)
        .clamp(1, 500);
    let user = filled(p.user.as_ref());

    let mut html = String::from("<h1>Provisioning log</h1>");
    html.push_str(&filter_form(
        &orgs,
        org.as_deref(),
        user.as_deref(),
        outcome.as_deref(),
        since_text.as_deref(),
    ));
    if !problems.is_empty() {
        for problem in &problems {
            let _ = write!(html, "<p class=\"flash error\">{}</p>", esc(problem));
        }
        return page::render(
            StatusCode::BAD_REQUEST,
            "Provisioning log",
            Nav::Log,
            &session,
            &html,
        );
    }
    let search = LogSearch {
        org: org.clone(),
        user: user.clone(),
        outcome: outcome.clone(),
        since,
        before: before.clone(),
        limit,
    };
    let found = match ops::admin::log_page(&state.store, search).await {
        Ok(found) => found,
        Err(e) => return page::failed(&session, Nav::Log, "Provisioning log", &e),
    };
    if found.entries.is_empty() {
        html.push_str("<p class=\"muted\">No entries match.</p>");
    } else {
        html.push_str(&entries_table(&found.entries));
    }
    let keep = |extra: &[(&str, &str)]| {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (k, v) in [
            ("org", &org),
            ("user", &user),
            ("outcome", &outcome),
            ("since", &since_text),
        ] {
            if let Some(v) = v {
                pairs.push((k, v.as_str()));
            }
        }
        let limit_text = limit.to_string();
        if limit != PAGE {
            pairs.push(("limit", &limit_text));
        }
        pairs.extend_from_slice(extra);
        query(&pairs)
    };
    html.push_str("<p class=\"actions\">");
    if before.is_some() {
        let _ = write!(
            html,
            "<a href=\"/admin/log?{}\">« Newest</a>",
            esc(&keep(&[]))
        );
    }
    if let Some((at, id)) = &found.older {
        let at = at.and_utc().to_rfc3339_opts(SecondsFormat::Micros, true);
        let _ = write!(
            html,
            "<a href=\"/admin/log?{}\">Older »</a>",
            esc(&keep(&[("before", &at), ("before_id", id)]))
        );
    }
    html.push_str("</p>");
    page::render(
        StatusCode::OK,
        "Provisioning log",
        Nav::Log,
        &session,
        &html,
    )
}

fn filter_form(
    orgs: &[ops::orgs::OrgInfo],
    org: Option<&str>,
    user: Option<&str>,
    outcome: Option<&str>,
    since: Option<&str>,
) -> String {
    let selected = |on: bool| if on { " selected" } else { "" };
    let mut html = String::from(
        "<form method=\"get\" action=\"/admin/log\" class=\"filters\"><label>Organization<select name=\"org\"><option value=\"\">All</option>",
    );
    for o in orgs {
        let _ = write!(
            html,
            "<option value=\"{0}\"{1}>{0}</option>",
            esc(&o.slug),
            selected(org == Some(o.slug.as_str()))
        );
    }
    html.push_str("</select></label>");
    let _ = write!(
        html,
        "<label>User or resource<input name=\"user\" value=\"{}\" placeholder=\"userName, group name or id\" size=\"28\"></label>",
        esc(user.unwrap_or_default())
    );
    html.push_str("<label>Outcome<select name=\"outcome\"><option value=\"\">Any</option>");
    for (value, label) in [
        ("applied", "applied"),
        ("rejected", "rejected"),
        ("dead", "dead"),
        ("failed", "rejected or dead"),
    ] {
        let _ = write!(
            html,
            "<option value=\"{value}\"{}>{label}</option>",
            selected(outcome == Some(value))
        );
    }
    let _ = write!(
        html,
        "</select></label><label>Since<input name=\"since\" value=\"{}\" placeholder=\"1h, 7d, 2026-11-28 09:00\" size=\"20\"></label>\
<button type=\"submit\">Filter</button> <a href=\"/admin/log\">Clear</a></form>",
        esc(since.unwrap_or_default())
    );
    html
}

/// `GET /admin/changes/{id}`: everything `scimsync queue show` shows.
pub async fn show(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let entry = match ops::admin::change(&state.store, &id).await {
        Ok(Some(entry)) => entry,
        Ok(None) => {
            return page::render(
                StatusCode::NOT_FOUND,
                "Change not found",
                Nav::Log,
                &session,
                &format!(
                    "<h1>Change <code>{}</code></h1><p>It is not in the provisioning log (yet): a change appears \
there once a worker has applied, rejected or given up on it. If it was just queued, reload in a moment.</p>",
                    esc(&id)
                ),
            );
        }
        Err(e) => return page::failed(&session, Nav::Log, "Change", &e),
    };
    let Entry { org, row } = &entry;
    let mut html = format!(
        "<h1>Change <code>{}</code> {}</h1>",
        esc(&row.change_id),
        badge(&row.outcome)
    );
    html.push_str("<div class=\"card\"><dl class=\"kv\">");
    let mut item = |label: &str, value: String| {
        let _ = write!(html, "<dt>{label}</dt><dd>{value}</dd>");
    };
    item(
        "Organization",
        format!("<a href=\"/admin/orgs/{}\">{}</a>", seg(org), esc(org)),
    );
    let resource = match (&row.resource_id, row.resource_type.as_str()) {
        (Some(rid), "User") => format!(
            "<a href=\"/admin/users?{}\"><code>{}</code></a>",
            esc(&query(&[("org", org), ("q", rid)])),
            esc(rid)
        ),
        (Some(rid), _) => format!("<code>{}</code>", esc(rid)),
        (None, _) => "–".to_owned(),
    };
    item(
        "Operation",
        format!(
            "{} {} {resource}",
            esc(&row.operation),
            esc(&row.resource_type)
        ),
    );
    item("Subject", esc(row.subject.as_deref().unwrap_or("–")));
    item(
        "Outcome",
        format!("{} (HTTP {})", badge(&row.outcome), row.status),
    );
    item("Attempts", row.attempts.to_string());
    item("Received", format!("{} UTC", time(row.received_at)));
    item(
        "Finished",
        format!(
            "{} UTC ({} ms) · {}",
            time(row.applied_at),
            row.duration_ms,
            when(row.applied_at)
        ),
    );
    if let Some(e) = &row.error {
        item("Error", format!("<span class=\"err\">{}</span>", esc(e)));
    }
    if let Some(r) = &row.resolution {
        let shown = match r.strip_prefix("retried as ") {
            Some(new) => format!(
                "retried as <a href=\"/admin/changes/{}\"><code>{}</code></a>",
                seg(new),
                esc(new)
            ),
            None => esc(r),
        };
        item("Resolution", shown);
    }
    if let Some(rid) = &row.resource_id {
        item(
            "History",
            format!(
                "<a href=\"/admin/log?{}\">every entry for this {}</a>",
                esc(&query(&[("org", org), ("user", rid)])),
                esc(&row.resource_type.to_lowercase())
            ),
        );
    }
    html.push_str("</dl></div>");

    if row.outcome == "dead" && row.resolution.is_none() {
        let _ = write!(
            html,
            "<h2>Deal with this dead change</h2><div class=\"card actions\">\
<form method=\"post\" action=\"/admin/changes/{id}/retry\">{csrf}<button type=\"submit\">Retry</button>\
<div class=\"small muted\">Queued again as a new change.</div></form>\
<form method=\"post\" action=\"/admin/changes/{id}/discard\">{csrf}\
<label class=\"small muted\" for=\"reason\">Reason</label><br>\
<input id=\"reason\" name=\"reason\" required size=\"40\" placeholder=\"why it will not be retried\"> \
<button type=\"submit\" class=\"danger\">Discard</button></form></div>",
            id = seg(&row.change_id),
            csrf = page::csrf_field(&session),
        );
        if row.request.is_none() {
            html.push_str("<p class=\"muted small\">No request was stored with this change, so it cannot be retried.</p>");
        }
    }
    if let Some(req) = &row.request {
        let _ = write!(html, "<h2>Request</h2>{}", json_block(req));
    }
    if let Some(resp) = &row.response {
        let _ = write!(html, "<h2>Answer</h2>{}", json_block(resp));
    }
    page::render(StatusCode::OK, "Change", Nav::Log, &session, &html)
}

fn back_to(id: &str) -> Response {
    Redirect::to(&format!("/admin/changes/{}", seg(id))).into_response()
}

/// `POST /admin/changes/{id}/retry`
pub async fn retry(
    State(state): State<AppState>,
    Extension(admin): Extension<Arc<AdminState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let max = state.settings.queue.max_deliveries;
    match ops::queue::retry(&state.store, &state.queue, &id, max).await {
        Ok(new) => {
            admin.flash(&session, format!("Change {id} was queued again as {new}."));
            back_to(&new)
        }
        Err(e) => {
            admin.flash_error(&session, format!("Not retried: {e:#}"));
            back_to(&id)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct DiscardForm {
    #[serde(default)]
    reason: String,
}

/// `POST /admin/changes/{id}/discard`
pub async fn discard(
    State(state): State<AppState>,
    Extension(admin): Extension<Arc<AdminState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Form(form): Form<DiscardForm>,
) -> Response {
    match ops::queue::discard(&state.store, &id, &form.reason).await {
        Ok(()) => admin.flash(&session, format!("Change {id} was discarded.")),
        Err(e) => admin.flash_error(&session, format!("Not discarded: {e:#}")),
    }
    back_to(&id)
}

/// `POST /admin/retry-dead`: every unresolved dead change, queued again.
pub async fn retry_dead(
    State(state): State<AppState>,
    Extension(admin): Extension<Arc<AdminState>>,
    Extension(session): Extension<Session>,
) -> Response {
    let max = state.settings.queue.max_deliveries;
    match ops::queue::retry_dead(&state.store, &state.queue, None, false, max).await {
        Ok(report) if report.errors.is_empty() => admin.flash(
            &session,
            format!(
                "{} of {} dead change(s) were queued again.",
                report.retried.len(),
                report.dead
            ),
        ),
        Ok(report) => admin.flash_error(
            &session,
            format!(
                "{} of {} dead change(s) were queued again; {} were not, the first because {}",
                report.retried.len(),
                report.dead,
                report.errors.len(),
                report.errors[0]
            ),
        ),
        Err(e) => admin.flash_error(&session, format!("Not retried: {e:#}")),
    }
    Redirect::to("/admin").into_response()
}
