//! Read queries behind the admin pages: the provisioning log page by page,
//! recent failures, activity per organization, a user's log entries.
//!
//! Each is shaped for an index of `provisioning_log` (see the migration
//! `admin_log_indexes`), so the pages stay fast on a large log.

use diesel::prelude::*;

use super::log::LogRow;
use super::schema::provisioning_log as pl;
use super::{Conn, Db};

/// Which outcomes a log page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeFilter {
    /// One outcome: `applied`, `rejected` or `dead`.
    Is(String),
    /// Rejected or dead.
    Failed,
}

/// The admin log page's filters and where the page starts.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub org_id: Option<String>,
    pub outcome: Option<OutcomeFilter>,
    /// A userName or displayName as logged, or a resource id.
    pub user: Option<String>,
    /// Only entries logged after this time.
    pub since: Option<chrono::NaiveDateTime>,
    /// Only entries older than this (time, change id): the last entry of
    /// the previous page, so that entries sharing a timestamp are neither
    /// skipped nor shown twice.
    pub before: Option<(chrono::NaiveDateTime, String)>,
}

/// Which column a user filter matches.
#[derive(Debug, Clone, Copy)]
enum UserColumn {
    Subject,
    ResourceId,
}

/// Up to `limit` entries matching `f`, newest first.
///
/// A user filter runs as one query per organization and column, each an
/// index range ((org_id, subject | resource_id, applied_at)), merged here:
/// SQLite plans `subject = ? OR resource_id = ?` as a walk through the
/// whole organization.
pub fn log_page(conn: &mut Conn, f: &LogFilter, limit: i64) -> QueryResult<Vec<LogRow>> {
    let Some(user) = &f.user else {
        return page_query(f, None).limit(limit).load(conn);
    };
    let orgs = match &f.org_id {
        Some(org) => vec![org.clone()],
        None => super::orgs::list(conn)?.into_iter().map(|o| o.id).collect(),
    };
    let mut rows = Vec::new();
    for org in &orgs {
        for column in [UserColumn::Subject, UserColumn::ResourceId] {
            rows.extend(
                page_query(f, Some((org, column, user)))
                    .limit(limit)
                    .load(conn)?,
            );
        }
    }
    Ok(newest_first(rows, limit))
}

fn page_query<'a>(
    f: &'a LogFilter,
    user: Option<(&'a str, UserColumn, &'a str)>,
) -> diesel::dsl::Select<pl::BoxedQuery<'a, Db>, diesel::dsl::AsSelect<LogRow, Db>> {
    let mut query: pl::BoxedQuery<'a, Db> = pl::table.into_boxed();
    if let Some(org) = &f.org_id {
        query = query.filter(pl::org_id.eq(org));
    }
    match &f.outcome {
        Some(OutcomeFilter::Is(outcome)) => query = query.filter(pl::outcome.eq(outcome)),
        // Spelled as a set rather than `<> 'applied'` so the (outcome,
        // applied_at) index can serve it.
        Some(OutcomeFilter::Failed) => {
            query = query.filter(pl::outcome.eq_any(["rejected", "dead"]));
        }
        None => {}
    }
    match user {
        Some((org, UserColumn::Subject, user)) => {
            query = query
                .filter(pl::org_id.eq(org))
                .filter(pl::subject.eq(user));
        }
        Some((org, UserColumn::ResourceId, user)) => {
            query = query
                .filter(pl::org_id.eq(org))
                .filter(pl::resource_id.eq(user));
        }
        None => {}
    }
    if let Some(since) = f.since {
        query = query.filter(pl::applied_at.gt(since));
    }
    if let Some((at, id)) = &f.before {
        // `applied_at <= at` bounds the index range; the rest breaks ties.
        query = query
            .filter(pl::applied_at.le(*at))
            .filter(pl::applied_at.lt(*at).or(pl::change_id.lt(id)));
    }
    query
        .order((pl::applied_at.desc(), pl::change_id.desc()))
        .select(LogRow::as_select())
}

/// Rows from several queries as one page: newest first, each once.
fn newest_first(mut rows: Vec<LogRow>, limit: i64) -> Vec<LogRow> {
    rows.sort_by(|a, b| (b.applied_at, &b.change_id).cmp(&(a.applied_at, &a.change_id)));
    rows.dedup_by(|a, b| a.change_id == b.change_id);
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    rows
}

/// The newest `limit` rejected or dead changes across organizations.
pub fn recent_failures(conn: &mut Conn, limit: i64) -> QueryResult<Vec<LogRow>> {
    // One ordered index range per outcome, merged here: a single query over
    // both outcomes would sort every failure ever logged.
    let mut rows = Vec::new();
    for outcome in ["rejected", "dead"] {
        rows.extend(
            pl::table
                .filter(pl::outcome.eq(outcome))
                .order((pl::applied_at.desc(), pl::change_id.desc()))
                .limit(limit)
                .select(LogRow::as_select())
                .load(conn)?,
        );
    }
    Ok(newest_first(rows, limit))
}

/// How many changes of one outcome an organization had in a window.
#[derive(Debug, Clone, Queryable)]
pub struct Activity {
    pub org_id: String,
    pub outcome: String,
    pub count: i64,
    /// When the newest of them was logged.
    pub last_at: Option<chrono::NaiveDateTime>,
}

/// Changes logged after `since`, per organization and outcome.
pub fn activity_since(conn: &mut Conn, since: chrono::NaiveDateTime) -> QueryResult<Vec<Activity>> {
    // The upper bound excludes nothing (two days on covers clock skew
    // between machines) but tells SQLite the range is narrow, so it reads
    // the covering (applied_at, outcome, org_id) index instead of walking
    // every organization's entries to save a sort.
    let through = since + chrono::TimeDelta::days(2);
    pl::table
        .filter(pl::applied_at.gt(since))
        .filter(pl::applied_at.le(through))
        .group_by((pl::org_id, pl::outcome))
        .select((
            pl::org_id,
            pl::outcome,
            diesel::dsl::count_star(),
            diesel::dsl::max(pl::applied_at),
        ))
        .load(conn)
}

/// Dead changes nobody has retried or discarded yet.
pub fn count_unresolved_dead(conn: &mut Conn, org_id: Option<&str>) -> QueryResult<i64> {
    let mut query = pl::table
        .filter(pl::outcome.eq("dead"))
        .filter(pl::resolution.is_null())
        .into_boxed();
    if let Some(org) = org_id {
        query = query.filter(pl::org_id.eq(org));
    }
    query.count().get_result(conn)
}

/// The newest log entries about one user of an organization: by its id,
/// or by its userName for entries that never got as far as an id.
pub fn user_log(
    conn: &mut Conn,
    org_id: &str,
    user_id: &str,
    user_name: &str,
    limit: i64,
) -> QueryResult<Vec<LogRow>> {
    // Two index ranges rather than one OR (see `log_page`).
    let mut rows = pl::table
        .filter(pl::org_id.eq(org_id))
        .filter(pl::resource_id.eq(user_id))
        .filter(pl::resource_type.eq("User"))
        .order((pl::applied_at.desc(), pl::change_id.desc()))
        .limit(limit)
        .select(LogRow::as_select())
        .load(conn)?;
    rows.extend(
        pl::table
            .filter(pl::org_id.eq(org_id))
            .filter(pl::subject.eq(user_name))
            .filter(pl::resource_type.eq("User"))
            .order((pl::applied_at.desc(), pl::change_id.desc()))
            .limit(limit)
            .select(LogRow::as_select())
            .load(conn)?,
    );
    Ok(newest_first(rows, limit))
}
