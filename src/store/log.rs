//! The provisioning log: one row per change, holding its committed outcome.

use diesel::prelude::*;

use super::Conn;
use super::schema::provisioning_log;

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
}

pub fn insert(conn: &mut Conn, row: &LogRow) -> QueryResult<()> {
    diesel::insert_into(provisioning_log::table)
        .values(row)
        .execute(conn)?;
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
