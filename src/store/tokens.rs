//! SCIM bearer tokens, stored as SHA-256 hashes.

use diesel::prelude::*;

use super::schema::scim_tokens;
use super::{Conn, now};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = scim_tokens)]
pub struct TokenRow {
    pub id: String,
    pub org_id: String,
    pub token_hash: String,
    pub label: String,
    pub created_at: chrono::NaiveDateTime,
    pub last_used_at: Option<chrono::NaiveDateTime>,
    pub revoked_at: Option<chrono::NaiveDateTime>,
}

pub fn insert(
    conn: &mut Conn,
    org_id: &str,
    token_hash: &str,
    label: &str,
) -> QueryResult<TokenRow> {
    let row = TokenRow {
        id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        org_id: org_id.to_owned(),
        token_hash: token_hash.to_owned(),
        label: label.to_owned(),
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
    };
    diesel::insert_into(scim_tokens::table)
        .values(&row)
        .execute(conn)?;
    Ok(row)
}

/// The live tokens among these hashes, in one query.
pub fn find_live_by_hashes(conn: &mut Conn, hashes: &[String]) -> QueryResult<Vec<TokenRow>> {
    scim_tokens::table
        .filter(scim_tokens::token_hash.eq_any(hashes))
        .filter(scim_tokens::revoked_at.is_null())
        .select(TokenRow::as_select())
        .load(conn)
}

pub fn list_for_org(conn: &mut Conn, org_id: &str) -> QueryResult<Vec<TokenRow>> {
    scim_tokens::table
        .filter(scim_tokens::org_id.eq(org_id))
        .order(scim_tokens::created_at.asc())
        .select(TokenRow::as_select())
        .load(conn)
}

/// Marks a token revoked; returns whether a live token was found.
pub fn revoke(conn: &mut Conn, id: &str) -> QueryResult<bool> {
    let n = diesel::update(
        scim_tokens::table
            .filter(scim_tokens::id.eq(id))
            .filter(scim_tokens::revoked_at.is_null()),
    )
    .set(scim_tokens::revoked_at.eq(Some(now())))
    .execute(conn)?;
    Ok(n > 0)
}

/// Records use, at most once a minute per token so reads stay reads.
pub fn touch(conn: &mut Conn, id: &str) -> QueryResult<()> {
    let at = now();
    let stale = at - chrono::TimeDelta::seconds(60);
    diesel::update(
        scim_tokens::table.filter(scim_tokens::id.eq(id)).filter(
            scim_tokens::last_used_at
                .is_null()
                .or(scim_tokens::last_used_at.lt(stale)),
        ),
    )
    .set(scim_tokens::last_used_at.eq(Some(at)))
    .execute(conn)?;
    Ok(())
}
