//! The provisioning log: one row per change, holding its committed outcome.

use diesel::prelude::*;

use super::schema::provisioning_log;
use super::{Conn, Db};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = provisioning_log)]
pub struct LogRow {
    pub change_id: String,
    pub org_id: String,
    pub operation: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub subject: Option<String>,
    pub outcome: String,
    pub status: i32,
    pub response: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    pub received_at: chrono::NaiveDateTime,
    pub applied_at: chrono::NaiveDateTime,
    pub duration_ms: i64,
    /// The change itself (JSON), kept for dead changes so they can be retried.
    pub request: Option<String>,
    /// What an operator did about a dead change.
    pub resolution: Option<String>,
}

/// Deletes up to `limit` rows of changes applied before `before`; returns
/// how many. Dead changes not yet dealt with stay: `queue retry` and
/// `queue discard` need them.
pub fn delete_older_than(
    conn: &mut Conn,
    before: chrono::NaiveDateTime,
    limit: i64,
) -> QueryResult<usize> {
    let old = provisioning_log::table
        .filter(provisioning_log::applied_at.lt(before))
        .filter(
            provisioning_log::outcome
                .ne("dead")
                .or(provisioning_log::resolution.is_not_null()),
        )
        .select(provisioning_log::change_id)
        .limit(limit);
    // Planned on every pass (see `Unprepared`): a plan kept from the
    // service's first passes, over an empty log, scans all of it.
    let old: Vec<String> = super::Unprepared(old).load(conn)?;
    let mut deleted = 0;
    for chunk in old.chunks(500) {
        deleted += diesel::delete(
            provisioning_log::table.filter(provisioning_log::change_id.eq_any(chunk)),
        )
        .execute(conn)?;
    }
    Ok(deleted)
}

#[cfg(test)]
impl LogRow {
    /// An applied user create answered 201 at `at`, for unit tests.
    pub(crate) fn applied_at(change_id: &str, at: chrono::NaiveDateTime) -> LogRow {
        LogRow {
            change_id: change_id.to_owned(),
            org_id: "org".into(),
            operation: "create".into(),
            resource_type: "User".into(),
            resource_id: None,
            subject: None,
            outcome: "applied".into(),
            status: 201,
            response: None,
            error: None,
            attempts: 1,
            received_at: at,
            applied_at: at,
            duration_ms: 1,
            request: None,
            resolution: None,
        }
    }
}

pub fn insert(conn: &mut Conn, row: &LogRow) -> QueryResult<()> {
    insert_all(conn, std::slice::from_ref(row))
}

/// Inserts `rows` (one statement on PostgreSQL; SQLite, in process, takes
/// rows with defaults one at a time); a change id already logged fails it.
pub fn insert_all(conn: &mut Conn, rows: &[LogRow]) -> QueryResult<()> {
    let insert = diesel::insert_into(provisioning_log::table).values(rows);
    match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(())
}

pub fn find(conn: &mut Conn, change_id: &str) -> QueryResult<Option<LogRow>> {
    provisioning_log::table
        .filter(provisioning_log::change_id.eq(change_id))
        .select(LogRow::as_select())
        .first(conn)
        .optional()
}

/// Newest entries of an organization, for operators and tests.
pub fn recent(conn: &mut Conn, org_id: &str, limit: i64) -> QueryResult<Vec<LogRow>> {
    provisioning_log::table
        .filter(provisioning_log::org_id.eq(org_id))
        .order(provisioning_log::applied_at.desc())
        .limit(limit)
        .select(LogRow::as_select())
        .load(conn)
}

/// Changes of an organization that failed (rejected or dead) after
/// `after` and up to `through`, oldest first, at most `limit`.
pub fn failures_between(
    conn: &mut Conn,
    org_id: &str,
    after: chrono::NaiveDateTime,
    through: chrono::NaiveDateTime,
    limit: i64,
) -> QueryResult<Vec<LogRow>> {
    provisioning_log::table
        .filter(provisioning_log::org_id.eq(org_id))
        .filter(provisioning_log::outcome.ne("applied"))
        .filter(provisioning_log::applied_at.gt(after))
        .filter(provisioning_log::applied_at.le(through))
        .order(provisioning_log::applied_at.asc())
        .limit(limit)
        .select(LogRow::as_select())
        .load(conn)
}

/// How many failures [`failures_between`] would find without a limit.
pub fn count_failures_between(
    conn: &mut Conn,
    org_id: &str,
    after: chrono::NaiveDateTime,
    through: chrono::NaiveDateTime,
) -> QueryResult<i64> {
    provisioning_log::table
        .filter(provisioning_log::org_id.eq(org_id))
        .filter(provisioning_log::outcome.ne("applied"))
        .filter(provisioning_log::applied_at.gt(after))
        .filter(provisioning_log::applied_at.le(through))
        .count()
        .get_result(conn)
}

/// Changes per outcome logged after `since`, across organizations.
pub fn count_by_outcome_since(
    conn: &mut Conn,
    since: chrono::NaiveDateTime,
) -> QueryResult<Vec<(String, i64)>> {
    provisioning_log::table
        .filter(provisioning_log::applied_at.gt(since))
        .group_by(provisioning_log::outcome)
        .select((provisioning_log::outcome, diesel::dsl::count_star()))
        .load(conn)
}

/// Entries matching the operator's filters, newest first.
pub fn search(conn: &mut Conn, q: &LogQuery, limit: i64) -> QueryResult<Vec<LogRow>> {
    filtered(q)
        .order((
            provisioning_log::applied_at.desc(),
            provisioning_log::change_id.desc(),
        ))
        .limit(limit)
        .select(LogRow::as_select())
        .load(conn)
}

/// Up to `limit` entries matching `q` after the position `after` (time,
/// then change id), oldest first: the pages of `scimsync log --follow`.
pub fn search_after(
    conn: &mut Conn,
    q: &LogQuery,
    after: (chrono::NaiveDateTime, &str),
    limit: i64,
) -> QueryResult<Vec<LogRow>> {
    let (at, id) = after;
    filtered(q)
        .filter(
            provisioning_log::applied_at
                .gt(at)
                .or(provisioning_log::applied_at
                    .eq(at)
                    .and(provisioning_log::change_id.gt(id.to_owned()))),
        )
        .order((
            provisioning_log::applied_at.asc(),
            provisioning_log::change_id.asc(),
        ))
        .limit(limit)
        .select(LogRow::as_select())
        .load(conn)
}

fn filtered(q: &LogQuery) -> provisioning_log::BoxedQuery<'_, Db> {
    let mut query = provisioning_log::table.into_boxed();
    if let Some(org) = &q.org_id {
        query = query.filter(provisioning_log::org_id.eq(org));
    }
    if let Some(outcome) = &q.outcome {
        query = query.filter(provisioning_log::outcome.eq(outcome));
    }
    if let Some(subject) = &q.subject {
        query = query.filter(
            provisioning_log::subject
                .eq(subject)
                .or(provisioning_log::resource_id.eq(subject)),
        );
    }
    if let Some(since) = q.since {
        query = query.filter(provisioning_log::applied_at.gt(since));
    }
    if let Some(until) = q.until {
        query = query.filter(provisioning_log::applied_at.le(until));
    }
    if q.unresolved {
        query = query.filter(provisioning_log::resolution.is_null());
    }
    query
}

/// What `scimsync log` filters by.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub org_id: Option<String>,
    pub outcome: Option<String>,
    /// A userName/displayName as logged, or a resource id.
    pub subject: Option<String>,
    pub since: Option<chrono::NaiveDateTime>,
    pub until: Option<chrono::NaiveDateTime>,
    /// Only entries nobody has dealt with (no retry or discard recorded).
    pub unresolved: bool,
}

/// Records what was done about a dead change, if nothing was yet; returns
/// whether it did (two operators cannot both retry it).
pub fn resolve(conn: &mut Conn, change_id: &str, resolution: &str) -> QueryResult<bool> {
    let n = diesel::update(
        provisioning_log::table
            .filter(provisioning_log::change_id.eq(change_id))
            .filter(provisioning_log::outcome.eq("dead"))
            .filter(provisioning_log::resolution.is_null()),
    )
    .set(provisioning_log::resolution.eq(Some(resolution)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Takes back a resolution recorded by [`resolve`] (the retry it stood
/// for could not be queued); returns whether it did.
pub fn unresolve(conn: &mut Conn, change_id: &str, resolution: &str) -> QueryResult<bool> {
    let n = diesel::update(
        provisioning_log::table
            .filter(provisioning_log::change_id.eq(change_id))
            .filter(provisioning_log::resolution.eq(resolution)),
    )
    .set(provisioning_log::resolution.eq(None::<String>))
    .execute(conn)?;
    Ok(n == 1)
}

/// The newest applied change to a resource that was received after
/// `after`, if any.
pub fn applied_to_resource_received_after(
    conn: &mut Conn,
    org_id: &str,
    resource_id: &str,
    after: chrono::NaiveDateTime,
) -> QueryResult<Option<LogRow>> {
    provisioning_log::table
        .filter(provisioning_log::org_id.eq(org_id))
        .filter(provisioning_log::resource_id.eq(resource_id))
        .filter(provisioning_log::received_at.gt(after))
        .filter(provisioning_log::outcome.eq("applied"))
        .order(provisioning_log::applied_at.desc())
        .select(LogRow::as_select())
        .first(conn)
        .optional()
}

/// Dead changes nobody has dealt with, oldest first.
pub fn unresolved_dead(
    conn: &mut Conn,
    org_id: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<LogRow>> {
    let mut query = provisioning_log::table
        .filter(provisioning_log::outcome.eq("dead"))
        .filter(provisioning_log::resolution.is_null())
        .into_boxed();
    if let Some(org) = org_id {
        query = query.filter(provisioning_log::org_id.eq(org));
    }
    query
        .order(provisioning_log::applied_at.asc())
        .limit(limit)
        .select(LogRow::as_select())
        .load(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scratch::full_scans_after_growth;

    /// The reconciler looks for changes past their retention on every pass
    /// (every 5 s by default), from the service's first minute on. A pass
    /// that finds none reads none of the log, however small the log was
    /// when the connection first looked: a plan kept from then scanned it
    /// all, every pass.
    #[test]
    fn forgetting_old_changes_reads_only_the_old_rows() {
        let long_ago = crate::store::now() - chrono::TimeDelta::days(90);
        let Some((deleted, scans)) = full_scans_after_growth(
            "provisioning_log",
            &[
                "INSERT INTO provisioning_log (change_id, org_id, operation, resource_type, outcome, \
               status, attempts, received_at, applied_at, duration_ms) \
               SELECT 'change-' || n, 'org', 'create', 'User', 'applied', 201, 1, now(), now(), 1 \
               FROM generate_series(1, 20000) AS n",
            ],
            |c| delete_older_than(c, long_ago, 5_000).expect("sweep"),
        ) else {
            return;
        };
        assert_eq!(deleted, 0);
        assert_eq!(scans, 0, "the sweep scanned the log");
    }
}
