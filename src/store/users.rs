//! Users as Entra ID provisions them, scoped by organization in every query.

use diesel::prelude::*;

use super::schema::{user_emails, users};
use super::{Conn, Db, Order, SortKey};

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = users, treat_none_as_null = true, treat_none_as_default_value = false)]
pub struct UserRow {
    pub id: String,
    pub org_id: String,
    pub user_name: String,
    pub user_name_key: String,
    pub external_id: Option<String>,
    pub display_name: Option<String>,
    pub display_name_key: Option<String>,
    pub email: Option<String>,
    pub active: bool,
    pub resource: String,
    pub version: i64,
    pub created_at: chrono::NaiveDateTime,
    pub updated_at: chrono::NaiveDateTime,
    /// When the person accepted their invitation.
    pub joined_at: Option<chrono::NaiveDateTime>,
}

/// Conditions that run in SQL; anything else in a SCIM filter is evaluated
/// on the rows these select.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    pub id: Option<String>,
    pub user_name_key: Option<String>,
    pub external_id: Option<String>,
    pub display_name_key: Option<String>,
    pub email_key: Option<String>,
    pub active: Option<bool>,
}

impl UserQuery {
    /// Whether the conditions name a unique key (id, or the userName that is
    /// unique per organization), so at most one row can match.
    pub fn pins_one(&self) -> bool {
        self.id.is_some() || self.user_name_key.is_some()
    }
}

fn filtered<'a>(org_id: &'a str, q: &'a UserQuery) -> users::BoxedQuery<'a, Db> {
    let mut query = users::table.into_boxed();
    // The organization is named once: by the email index's subquery when
    // there is one, else here. With `org_id = ?` on users as well, SQLite's
    // planner walks the tenant's creation-order index and checks each user
    // against the subquery's list (statistics or not), instead of probing
    // the few ids the subquery finds.
    if q.email_key.is_none() {
        query = query.filter(users::org_id.eq(org_id));
    }
    if let Some(id) = &q.id {
        query = query.filter(users::id.eq(id));
    }
    if let Some(key) = &q.user_name_key {
        query = query.filter(users::user_name_key.eq(key));
    }
    if let Some(external_id) = &q.external_id {
        query = query.filter(users::external_id.eq(external_id));
    }
    if let Some(key) = &q.display_name_key {
        query = query.filter(users::display_name_key.eq(key));
    }
    if let Some(key) = &q.email_key {
        query = query.filter(
            users::id.eq_any(
                user_emails::table
                    .filter(user_emails::org_id.eq(org_id))
                    .filter(user_emails::value_key.eq(key))
                    .select(user_emails::user_id),
            ),
        );
    }
    if let Some(active) = q.active {
        query = query.filter(users::active.eq(active));
    }
    query
}

/// Inserts a new user unless its id or (organization, userName) is taken;
/// returns whether it did. One statement instead of a lookup and an
/// insert: the unique index is the check, and a taken name is rare.
pub fn insert_if_free(conn: &mut Conn, row: &UserRow) -> QueryResult<bool> {
    Ok(insert_all_if_free(conn, std::slice::from_ref(row))? == 1)
}

/// Inserts `rows` in one statement, skipping any whose id or userName is
/// taken (also by an earlier row of `rows`); returns how many were written.
pub fn insert_all_if_free(conn: &mut Conn, rows: &[UserRow]) -> QueryResult<usize> {
    let insert = diesel::insert_into(users::table)
        .values(rows)
        .on_conflict_do_nothing();
    match conn {
        Conn::Pg(c) => insert.execute(c),
        Conn::Sqlite(c) => insert.execute(c),
    }
}

pub fn find(conn: &mut Conn, org_id: &str, id: &str) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::org_id.eq(org_id))
        .filter(users::id.eq(id))
        .select(UserRow::as_select())
        .first(conn)
        .optional()
}

/// The row, locked until the transaction ends on PostgreSQL, for a change
/// that checks its version (`If-Match`) and then writes: another worker's
/// change to it waits, and this one then reads the version that change
/// committed. A delete takes the lock that also waits for rows being
/// added that refer to this one. SQLite has one writer at a time.
pub fn find_locked(
    conn: &mut Conn,
    org_id: &str,
    id: &str,
    deleting: bool,
) -> QueryResult<Option<UserRow>> {
    let Conn::Pg(c) = conn else {
        return find(conn, org_id, id);
    };
    let query = users::table
        .filter(users::org_id.eq(org_id))
        .filter(users::id.eq(id))
        .select(UserRow::as_select());
    if deleting {
        query.for_update().first(c).optional()
    } else {
        query.for_no_key_update().first(c).optional()
    }
}

/// The user holding a (lower-cased) userName, if any.
pub fn find_by_user_name_key(
    conn: &mut Conn,
    org_id: &str,
    key: &str,
) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::org_id.eq(org_id))
        .filter(users::user_name_key.eq(key))
        .select(UserRow::as_select())
        .first(conn)
        .optional()
}

/// The users holding any of `wanted`, (organization id, lower-cased
/// userName) pairs. Organizations and names are matched as two lists, so
/// a row may pair one organization with another's name: callers match
/// each pair on the rows.
pub fn find_by_user_name_keys(
    conn: &mut Conn,
    wanted: &[(String, String)],
) -> QueryResult<Vec<UserRow>> {
    let mut orgs: Vec<&str> = wanted.iter().map(|(org, _)| org.as_str()).collect();
    let mut keys: Vec<&str> = wanted.iter().map(|(_, key)| key.as_str()).collect();
    for list in [&mut orgs, &mut keys] {
        list.sort_unstable();
        list.dedup();
    }
    let query = users::table
        .filter(users::org_id.eq_any(orgs))
        .filter(users::user_name_key.eq_any(keys));
    // Planned on every call: see `Unprepared`.
    super::Unprepared(query.select(UserRow::as_select())).load(conn)
}

/// Writes `row`'s SCIM attributes if the stored version is still
/// `expected_version`; returns whether it did. A concurrent writer makes it
/// return false, and the caller retries its whole transaction instead of
/// overwriting that change.
///
/// When the person joined is not written: accepting an invitation sets it
/// without a new version (the SCIM representation does not change), so a
/// change that read the user just before would otherwise erase it.
pub fn update(conn: &mut Conn, row: &UserRow, expected_version: i64) -> QueryResult<bool> {
    let n = diesel::update(
        users::table
            .filter(users::org_id.eq(&row.org_id))
            .filter(users::id.eq(&row.id))
            .filter(users::version.eq(expected_version)),
    )
    .set((
        users::user_name.eq(&row.user_name),
        users::user_name_key.eq(&row.user_name_key),
        users::external_id.eq(&row.external_id),
        users::display_name.eq(&row.display_name),
        users::display_name_key.eq(&row.display_name_key),
        users::email.eq(&row.email),
        users::active.eq(row.active),
        users::resource.eq(&row.resource),
        users::version.eq(row.version),
        users::updated_at.eq(row.updated_at),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

pub fn delete(conn: &mut Conn, org_id: &str, id: &str) -> QueryResult<bool> {
    let n = diesel::delete(
        users::table
            .filter(users::org_id.eq(org_id))
            .filter(users::id.eq(id)),
    )
    .execute(conn)?;
    Ok(n == 1)
}

pub fn count(conn: &mut Conn, org_id: &str, q: &UserQuery) -> QueryResult<i64> {
    filtered(org_id, q).count().get_result(conn)
}

/// Adds `order` to a query, with the id as the tie-breaker so pages are stable.
fn ordered<'a>(query: users::BoxedQuery<'a, Db>, order: Order) -> users::BoxedQuery<'a, Db> {
    macro_rules! by {
        ($col:expr) => {
            if order.descending {
                query.order(($col.is_null().asc(), $col.desc(), users::id.desc()))
            } else {
                query.order(($col.is_null().asc(), $col.asc(), users::id.asc()))
            }
        };
    }
    match order.key {
        SortKey::Created => by!(users::created_at.nullable()),
        SortKey::LastModified => by!(users::updated_at.nullable()),
        SortKey::Id => by!(users::id.nullable()),
        SortKey::Name => by!(users::user_name_key.nullable()),
        SortKey::DisplayName => by!(users::display_name_key),
        SortKey::ExternalId => by!(users::external_id),
    }
}

/// One page in `order`.
pub fn page(
    conn: &mut Conn,
    org_id: &str,
    q: &UserQuery,
    order: Order,
    offset: i64,
    limit: i64,
) -> QueryResult<Vec<UserRow>> {
    let query = filtered(org_id, q);
    // At most one row: no order to keep, and no ORDER BY to tempt the
    // planner into walking the creation-order index of the whole tenant
    // (it did, before the table had statistics: every lookup read every
    // row of the organization).
    let query = if q.pins_one() {
        query
    } else {
        ordered(query, order)
    };
    query
        .offset(offset)
        .limit(limit)
        .select(UserRow::as_select())
        .load(conn)
}

/// `query` in id order, from after `after` on.
fn by_id<'a>(
    mut query: users::BoxedQuery<'a, Db>,
    descending: bool,
    after: Option<String>,
) -> users::BoxedQuery<'a, Db> {
    if let Some(id) = after {
        query = if descending {
            query.filter(users::id.lt(id))
        } else {
            query.filter(users::id.gt(id))
        };
    }
    if descending {
        query.order(users::id.desc())
    } else {
        query.order(users::id.asc())
    }
}

/// The next `limit` rows after `after` (the last row of the batch before)
/// in `order`, for scans that evaluate a filter batch by batch instead of
/// loading a tenant at once.
///
/// The order is [`page`]'s, but each batch resumes after the last row's
/// sort key and id instead of skipping an offset: an offset re-reads every
/// row before it, so a scan read the tenant over and over, and a row added
/// or removed before it meanwhile made the next batch repeat or miss one.
/// A key that is never null is ordered without `page`'s `IS NULL` term,
/// which no index serves (the order is the same, as no row has a null),
/// so the batch walks the key's index from the last row on where there is
/// one (there is none for the modification time: each batch sorts the
/// rows after the last). A key that may be null is read in two runs, the
/// rows that have it, over its index, then the rows without it, by id.
pub fn scan(
    conn: &mut Conn,
    org_id: &str,
    q: &UserQuery,
    order: Order,
    after: Option<&UserRow>,
    limit: i64,
) -> QueryResult<Vec<UserRow>> {
    if q.pins_one() {
        // At most one row, which the first batch holds; no ORDER BY, for
        // the reason `page` gives.
        if after.is_some() {
            return Ok(Vec::new());
        }
        return filtered(org_id, q)
            .limit(limit)
            .select(UserRow::as_select())
            .load(conn);
    }
    let desc = order.descending;
    // The rows after (key, id) in (key, id) order: `key >= k` (`<=`
    // descending) bounds an index range, the rest drops the rows of key k
    // up to the last one returned.
    macro_rules! after_key {
        ($query:expr, $col:expr, $key:expr, $id:expr) => {
            if desc {
                $query.filter(
                    $col.le($key.clone())
                        .and($col.lt($key).or(users::id.lt($id))),
                )
            } else {
                $query.filter(
                    $col.ge($key.clone())
                        .and($col.gt($key).or(users::id.gt($id))),
                )
            }
        };
    }
    macro_rules! by_key_then_id {
        ($query:expr, $col:expr) => {
            if desc {
                $query.order(($col.desc(), users::id.desc()))
            } else {
                $query.order(($col.asc(), users::id.asc()))
            }
        };
    }
    macro_rules! never_null {
        ($col:expr, $key:expr) => {{
            let mut query = filtered(org_id, q);
            if let Some(row) = after {
                query = after_key!(query, $col, $key(row), row.id.clone());
            }
            by_key_then_id!(query, $col)
                .limit(limit)
                .select(UserRow::as_select())
                .load(conn)
        }};
    }
    macro_rules! maybe_null {
        ($col:expr, $key:expr) => {{
            let resume: Option<(Option<String>, String)> = after.map(|r| ($key(r), r.id.clone()));
            let mut rows = Vec::new();
            // The rows that have the key, unless the last batch already
            // reached those without it.
            if !matches!(resume, Some((None, _))) {
                let mut query = filtered(org_id, q).filter($col.is_not_null());
                if let Some((Some(key), id)) = resume.clone() {
                    query = after_key!(query, $col, key, id);
                }
                rows = by_key_then_id!(query, $col)
                    .limit(limit)
                    .select(UserRow::as_select())
                    .load(conn)?;
            }
            let room = limit - i64::try_from(rows.len()).unwrap_or(limit);
            if room > 0 {
                let id = match resume {
                    Some((None, id)) => Some(id),
                    _ => None,
                };
                let query = by_id(filtered(org_id, q).filter($col.is_null()), desc, id);
                rows.extend(query.limit(room).select(UserRow::as_select()).load(conn)?);
            }
            Ok(rows)
        }};
    }
    match order.key {
        SortKey::Created => never_null!(users::created_at, |r: &UserRow| r.created_at),
        SortKey::LastModified => never_null!(users::updated_at, |r: &UserRow| r.updated_at),
        SortKey::Id => by_id(filtered(org_id, q), desc, after.map(|r| r.id.clone()))
            .limit(limit)
            .select(UserRow::as_select())
            .load(conn),
        SortKey::Name => never_null!(users::user_name_key, |r: &UserRow| r.user_name_key.clone()),
        SortKey::DisplayName => maybe_null!(users::display_name_key, |r: &UserRow| r
            .display_name_key
            .clone()),
        SortKey::ExternalId => maybe_null!(users::external_id, |r: &UserRow| r.external_id.clone()),
    }
}

/// Which of `ids` are users of this organization.
pub fn existing_ids(conn: &mut Conn, org_id: &str, ids: &[String]) -> QueryResult<Vec<String>> {
    let mut found = Vec::with_capacity(ids.len());
    // Bounded IN lists: SQLite limits bind parameters per statement.
    for chunk in ids.chunks(500) {
        // By primary key alone, the organization checked here: with
        // `org_id = ?` in the query SQLite's planner may walk the whole
        // tenant's index instead of probing each id (it did at 100,000
        // users, 18 ms for 50 ids).
        let part: Vec<(String, String)> = users::table
            .filter(users::id.eq_any(chunk))
            .select((users::id, users::org_id))
            .load(conn)?;
        found.extend(
            part.into_iter()
                .filter(|(_, org)| org == org_id)
                .map(|(id, _)| id),
        );
    }
    Ok(found)
}

/// Marks a user as having joined (accepted an invitation).
pub fn mark_joined(
    conn: &mut Conn,
    org_id: &str,
    id: &str,
    at: chrono::NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(
        users::table
            .filter(users::org_id.eq(org_id))
            .filter(users::id.eq(id))
            .filter(users::joined_at.is_null()),
    )
    .set(users::joined_at.eq(Some(at)))
    .execute(conn)?;
    Ok(())
}

/// (all, active, joined) users of an organization.
pub fn counts(conn: &mut Conn, org_id: &str) -> QueryResult<(i64, i64, i64)> {
    let all = users::table
        .filter(users::org_id.eq(org_id))
        .count()
        .get_result(conn)?;
    let active = users::table
        .filter(users::org_id.eq(org_id))
        .filter(users::active.eq(true))
        .count()
        .get_result(conn)?;
    let joined = users::table
        .filter(users::org_id.eq(org_id))
        .filter(users::joined_at.is_not_null())
        .count()
        .get_result(conn)?;
    Ok((all, active, joined))
}

/// Replaces the user's indexed email values (lower-cased, each once).
pub fn set_emails(
    conn: &mut Conn,
    org_id: &str,
    user_id: &str,
    values: &[String],
) -> QueryResult<()> {
    diesel::delete(user_emails::table.filter(user_emails::user_id.eq(user_id))).execute(conn)?;
    add_emails(conn, org_id, user_id, values)
}

/// Indexes the emails of a user who has none indexed yet (a new user).
pub fn add_emails(
    conn: &mut Conn,
    org_id: &str,
    user_id: &str,
    values: &[String],
) -> QueryResult<()> {
    let mut keys = Vec::new();
    email_keys(org_id, user_id, values, &mut keys);
    insert_email_keys(conn, &keys)
}

/// A `user_emails` row: user id, organization id, lower-cased address.
pub type EmailKey = (String, String, String);

/// Appends the `user_emails` rows of one user's `values` to `keys`.
pub fn email_keys(org_id: &str, user_id: &str, values: &[String], keys: &mut Vec<EmailKey>) {
    let mut seen = std::collections::HashSet::new();
    for value in values {
        let key = value.to_lowercase();
        if !key.is_empty() && seen.insert(key.clone()) {
            keys.push((user_id.to_owned(), org_id.to_owned(), key));
        }
    }
}

/// Writes `user_emails` rows made by [`email_keys`] in one statement.
pub fn insert_email_keys(conn: &mut Conn, keys: &[EmailKey]) -> QueryResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = keys
        .iter()
        .map(|(user_id, org_id, key)| {
            (
                user_emails::user_id.eq(user_id),
                user_emails::org_id.eq(org_id),
                user_emails::value_key.eq(key),
            )
        })
        .collect();
    let insert = diesel::insert_into(user_emails::table).values(rows);
    match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(())
}
