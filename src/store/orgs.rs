//! Organizations: the tenants every other row belongs to.

use diesel::prelude::*;

use super::schema::organizations;
use super::{Conn, now};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = organizations)]
pub struct Org {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub notify_email: Option<String>,
    pub created_at: chrono::NaiveDateTime,
    pub digest_through: Option<chrono::NaiveDateTime>,
}

pub fn insert(
    conn: &mut Conn,
    slug: &str,
    name: &str,
    notify_email: Option<&str>,
) -> QueryResult<Org> {
    let org = Org {
        id: uuid::Uuid::new_v4().to_string(),
        slug: slug.to_owned(),
        name: name.to_owned(),
        notify_email: notify_email.map(str::to_owned),
        created_at: now(),
        digest_through: None,
    };
    diesel::insert_into(organizations::table)
        .values(&org)
        .execute(conn)?;
    Ok(org)
}

pub fn find_by_slug(conn: &mut Conn, slug: &str) -> QueryResult<Option<Org>> {
    organizations::table
        .filter(organizations::slug.eq(slug))
        .select(Org::as_select())
        .first(conn)
        .optional()
}

pub fn list(conn: &mut Conn) -> QueryResult<Vec<Org>> {
    organizations::table
        .order(organizations::slug.asc())
        .select(Org::as_select())
        .load(conn)
}

pub fn count(conn: &mut Conn) -> QueryResult<i64> {
    organizations::table.count().get_result(conn)
}

pub fn find(conn: &mut Conn, id: &str) -> QueryResult<Option<Org>> {
    organizations::table
        .filter(organizations::id.eq(id))
        .select(Org::as_select())
        .first(conn)
        .optional()
}

/// Changes where an organization's failure digests go.
pub fn set_notify_email(conn: &mut Conn, slug: &str, email: Option<&str>) -> QueryResult<bool> {
    let n = diesel::update(organizations::table.filter(organizations::slug.eq(slug)))
        .set(organizations::notify_email.eq(email))
        .execute(conn)?;
    Ok(n == 1)
}

/// Moves the digest watermark forward if it is still `expected`; returns
/// whether it did, so two reconcilers never report the same failures.
pub fn advance_digest(
    conn: &mut Conn,
    id: &str,
    expected: Option<chrono::NaiveDateTime>,
    through: chrono::NaiveDateTime,
) -> QueryResult<bool> {
    let target = organizations::table.filter(organizations::id.eq(id));
    let n = match expected {
        Some(at) => diesel::update(target.filter(organizations::digest_through.eq(at)))
            .set(organizations::digest_through.eq(Some(through)))
            .execute(conn)?,
        None => diesel::update(target.filter(organizations::digest_through.is_null()))
            .set(organizations::digest_through.eq(Some(through)))
            .execute(conn)?,
    };
    Ok(n == 1)
}
