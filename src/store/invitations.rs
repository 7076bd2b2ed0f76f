//! Welcome invitations: single-use tokens, stored hashed, with an expiry.

use diesel::prelude::*;

use super::schema::invitations;
use super::{Conn, now};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = invitations)]
pub struct InvitationRow {
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    pub token_hash: String,
    pub email: String,
    pub created_at: chrono::NaiveDateTime,
    pub expires_at: chrono::NaiveDateTime,
    pub used_at: Option<chrono::NaiveDateTime>,
    pub revoked_at: Option<chrono::NaiveDateTime>,
}

pub fn insert(conn: &mut Conn, row: &InvitationRow) -> QueryResult<()> {
    insert_all(conn, std::slice::from_ref(row))
}

/// Inserts `rows` (one statement on PostgreSQL; SQLite, in process, takes
/// rows with defaults one at a time).
pub fn insert_all(conn: &mut Conn, rows: &[InvitationRow]) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let insert = diesel::insert_into(invitations::table).values(rows);
    match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(())
}

pub fn find_by_hash(conn: &mut Conn, token_hash: &str) -> QueryResult<Option<InvitationRow>> {
    invitations::table
        .filter(invitations::token_hash.eq(token_hash))
        .select(InvitationRow::as_select())
        .first(conn)
        .optional()
}

pub fn find(conn: &mut Conn, id: &str) -> QueryResult<Option<InvitationRow>> {
    invitations::table
        .filter(invitations::id.eq(id))
        .select(InvitationRow::as_select())
        .first(conn)
        .optional()
}

/// Whether the user has an invitation that can still be accepted.
pub fn has_pending(conn: &mut Conn, user_id: &str) -> QueryResult<bool> {
    let n: i64 = invitations::table
        .filter(invitations::user_id.eq(user_id))
        .filter(invitations::used_at.is_null())
        .filter(invitations::revoked_at.is_null())
        .filter(invitations::expires_at.gt(now()))
        .count()
        .get_result(conn)?;
    Ok(n > 0)
}

/// Revokes the user's unused invitations; returns how many.
pub fn revoke_pending(conn: &mut Conn, user_id: &str) -> QueryResult<usize> {
    diesel::update(
        invitations::table
            .filter(invitations::user_id.eq(user_id))
            .filter(invitations::used_at.is_null())
            .filter(invitations::revoked_at.is_null()),
    )
    .set(invitations::revoked_at.eq(Some(now())))
    .execute(conn)
}

/// Marks an invitation used if it still can be; returns whether it did.
pub fn mark_used(conn: &mut Conn, id: &str) -> QueryResult<bool> {
    let at = now();
    let n = diesel::update(
        invitations::table
            .filter(invitations::id.eq(id))
            .filter(invitations::used_at.is_null())
            .filter(invitations::revoked_at.is_null())
            .filter(invitations::expires_at.gt(at)),
    )
    .set(invitations::used_at.eq(Some(at)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Deletes up to `limit` invitations that expired before `before`; returns
/// how many. The expiry bounds every invitation: one used or revoked ended
/// sooner, and one still pending has not reached it.
pub fn delete_expired_before(
    conn: &mut Conn,
    before: chrono::NaiveDateTime,
    limit: i64,
) -> QueryResult<usize> {
    let old = invitations::table
        .filter(invitations::expires_at.lt(before))
        .select(invitations::id)
        .limit(limit);
    // Planned on every pass, as the log's sweep is.
    let old: Vec<String> = super::Unprepared(old).load(conn)?;
    let mut deleted = 0;
    for chunk in old.chunks(500) {
        deleted += diesel::delete(invitations::table.filter(invitations::id.eq_any(chunk)))
            .execute(conn)?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scratch::full_scans_after_growth;

    /// As for the provisioning log: a pass of the reconciler that finds no
    /// invitation past its retention reads none of them.
    #[test]
    fn forgetting_old_invitations_reads_only_the_old_rows() {
        let long_ago = now() - chrono::TimeDelta::days(90);
        let Some((deleted, scans)) = full_scans_after_growth(
            "invitations",
            &[
                "INSERT INTO users (id, org_id, user_name, user_name_key, active, resource, version, \
                 created_at, updated_at) \
                 VALUES ('user', 'org', 'someone@example.com', 'someone@example.com', true, '{}', 1, \
                 now(), now())",
                "INSERT INTO invitations (id, org_id, user_id, token_hash, email, created_at, expires_at) \
                 SELECT 'invitation-' || n, 'org', 'user', 'hash-' || n, 'someone@example.com', now(), \
                 now() + interval '7 days' FROM generate_series(1, 20000) AS n",
            ],
            |c| delete_expired_before(c, long_ago, 5_000).expect("sweep"),
        ) else {
            return;
        };
        assert_eq!(deleted, 0);
        assert_eq!(scans, 0, "the sweep scanned the invitations");
    }
}
