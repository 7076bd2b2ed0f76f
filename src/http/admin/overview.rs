//! `GET /admin`: is provisioning healthy, what is queued, who is being
//! provisioned right now, and what failed.

use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::auth::Session;
use super::changes::entries_table;
use super::page::{self, Nav, age, esc, seg, when};
use crate::http::AppState;
use crate::ops;

pub async fn show(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> Response {
    let stats = async {
        match tokio::time::timeout(
            Duration::from_secs(5),
            ops::queue::stats(&state.store, &state.queue, &state.mail),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!(
                "the queue or database did not answer within 5 s"
            )),
        }
    };
    let (health, stats, activity, failures, dead) = tokio::join!(
        ops::admin::health(&state.store, &state.queue),
        stats,
        ops::admin::activity(&state.store),
        ops::admin::recent_failures(&state.store, 20),
        ops::admin::dead_count(&state.store),
    );
    let mut html = String::from("<h1>Overview</h1>");

    // Health, and what needs a decision.
    let chip = |name: &str, problem: &Option<String>| match problem {
        None => format!(
            "<div class=\"stat\"><div class=\"l\">{name}</div><div class=\"v\"><span class=\"badge ok\">reachable</span></div></div>"
        ),
        Some(p) => format!(
            "<div class=\"stat\"><div class=\"l\">{name}</div><div class=\"v\"><span class=\"badge bad\">unreachable</span></div><div class=\"small err\">{}</div></div>",
            esc(p)
        ),
    };
    html.push_str("<div class=\"grid\">");
    html.push_str(&chip("Database", &health.database));
    html.push_str(&chip("Queue", &health.queue));
    match &stats {
        Ok(s) => {
            let _ = write!(
                html,
                "<div class=\"stat\"><div class=\"l\">Applied per minute (last 5 min)</div><div class=\"v\">{:.1}</div></div>",
                s.applied_per_minute
            );
        }
        Err(_) => html.push_str(
            "<div class=\"stat\"><div class=\"l\">Applied per minute</div><div class=\"v\">–</div></div>",
        ),
    }
    match &dead {
        Ok(0) => html.push_str(
            "<div class=\"stat\"><div class=\"l\">Dead changes waiting</div><div class=\"v\">0</div></div>",
        ),
        Ok(n) => {
            let _ = write!(
                html,
                "<div class=\"stat\"><div class=\"l\">Dead changes waiting</div><div class=\"v\"><a href=\"/admin/log?outcome=dead\">{n}</a></div>\
<form method=\"post\" action=\"/admin/retry-dead\">{}<button type=\"submit\">Retry all dead ({n})</button></form>\
<div class=\"small muted\">Each is queued again as a new change.</div></div>",
                page::csrf_field(&session)
            );
        }
        Err(e) => {
            let _ = write!(
                html,
                "<div class=\"stat\"><div class=\"l\">Dead changes waiting</div><div class=\"small err\">{}</div></div>",
                esc(&format!("{e:#}"))
            );
        }
    }
    html.push_str("</div>");

    // Provisioning right now, per organization.
    html.push_str("<h2>Provisioning now</h2>");
    match &activity {
        Ok(rows) if rows.is_empty() => {
            html.push_str("<p class=\"muted\">No changes in the last hour.</p>");
        }
        Ok(rows) => {
            html.push_str(
                "<div class=\"scroll\"><table><tr><th>Organization</th><th class=\"num\">Applied, last 5 min</th>\
<th class=\"num\">Per minute</th><th class=\"num\">Failed, last 5 min</th><th class=\"num\">Applied, last hour</th>\
<th class=\"num\">Failed, last hour</th><th class=\"num\">Users now</th><th>Last change</th></tr>",
            );
            for a in rows {
                let _ = write!(
                    html,
                    "<tr><td><a href=\"/admin/orgs/{}\">{}</a></td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                    seg(&a.slug),
                    esc(&a.slug),
                    a.applied_5m,
                    a.per_minute,
                    a.failed_5m,
                    a.applied_hour,
                    a.failed_hour,
                    a.users,
                    a.last_at.map(when).unwrap_or_default()
                );
            }
            html.push_str(
                "</table></div><p class=\"small muted\">No time left is shown: Entra ID does not say how many \
changes a cycle still holds, so scimsync can only report the rate and the count so far. \
Entra ID's own provisioning logs show the cycle's progress.</p>",
            );
        }
        Err(e) => {
            let _ = write!(
                html,
                "<p class=\"flash error\">{}</p>",
                esc(&format!("{e:#}"))
            );
        }
    }

    match &stats {
        Ok(s) => {
            html.push_str("<h2>Queues</h2><div class=\"scroll\"><table><tr><th>Queue</th><th class=\"num\">Pending</th>\
<th class=\"num\">Running</th><th class=\"num\" title=\"Jobs the queue gave up on, ever; the provisioning log says which still need a decision\">Given up</th><th class=\"num\">Oldest due</th><th>Workers (heartbeat age)</th></tr>");
            for q in &s.queues {
                let workers = if q.workers.is_empty() {
                    "<span class=\"badge bad\">none</span>".to_owned()
                } else {
                    q.workers
                        .iter()
                        .map(|w| {
                            let class = if w.seen_secs_ago > 60 { "warn" } else { "ok" };
                            let up = w
                                .up_secs
                                .map(|s| format!(" <span class=\"small\">up {}</span>", age(s)))
                                .unwrap_or_default();
                            format!(
                                "<div><code>{}</code> <span class=\"badge {class}\">{}</span>{up}</div>",
                                esc(&w.name),
                                age(w.seen_secs_ago)
                            )
                        })
                        .collect()
                };
                let _ = write!(
                    html,
                    "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td>{workers}</td></tr>",
                    esc(&q.queue),
                    q.pending,
                    q.running,
                    q.dead,
                    q.oldest_due_secs.map(age).unwrap_or_else(|| "–".to_owned()),
                );
            }
            html.push_str("</table></div>");

            html.push_str("<h2>Changes</h2><div class=\"scroll\"><table><tr><th>Window</th><th class=\"num\">Applied</th>\
<th class=\"num\">Rejected</th><th class=\"num\">Dead</th></tr>");
            for (label, o, since) in [
                ("Last 5 minutes", &s.last_5_minutes, "5m"),
                ("Last hour", &s.last_hour, "1h"),
                ("Last day", &s.last_day, "1d"),
            ] {
                let cell = |n: i64, outcome: &str| {
                    if n == 0 {
                        "0".to_owned()
                    } else {
                        format!(
                            "<a href=\"/admin/log?outcome={outcome}&amp;since={since}\">{n}</a>"
                        )
                    }
                };
                let _ = write!(
                    html,
                    "<tr><td>{label}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    cell(o.applied, "applied"),
                    cell(o.rejected, "rejected"),
                    cell(o.dead, "dead")
                );
            }
            html.push_str("</table></div>");

            let m = &s.mail;
            let _ = write!(
                html,
                "<h2>Mail outbox</h2><div class=\"scroll\"><table><tr><th class=\"num\">Pending</th><th class=\"num\">Sending</th>\
<th class=\"num\">Sent, last hour</th><th class=\"num\">Sent in all</th><th class=\"num\">Failed</th><th class=\"num\">Cancelled</th>\
<th class=\"num\">Oldest owed</th></tr><tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr></table></div>",
                m.pending,
                m.sending,
                m.sent_last_hour,
                m.sent_total,
                m.failed_total,
                m.cancelled_total,
                m.oldest_owed_secs
                    .map(age)
                    .unwrap_or_else(|| "–".to_owned())
            );
        }
        Err(e) => {
            let _ = write!(
                html,
                "<h2>Queues</h2><p class=\"flash error\">Cannot read the queue figures: {}</p>",
                esc(&format!("{e:#}"))
            );
        }
    }

    html.push_str("<h2>Recent failures</h2>");
    match &failures {
        Ok(rows) if rows.is_empty() => {
            html.push_str("<p class=\"muted\">No rejected or dead changes.</p>");
        }
        Ok(rows) => {
            html.push_str(&entries_table(rows));
            html.push_str(
                "<p class=\"small\"><a href=\"/admin/log?outcome=failed\">All failures</a></p>",
            );
        }
        Err(e) => {
            let _ = write!(
                html,
                "<p class=\"flash error\">{}</p>",
                esc(&format!("{e:#}"))
            );
        }
    }

    // 200 even when something is down: the page itself worked, and says
    // what is wrong; /readyz is the probe for machines.
    page::render(StatusCode::OK, "Overview", Nav::Overview, &session, &html)
}
