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
