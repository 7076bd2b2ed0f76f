//! Teams (Entra ID groups) and their memberships, scoped by organization.

use diesel::prelude::*;

use super::schema::{team_members, teams, users};
use super::{Conn, Db, Order, SortKey, now};

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = teams, treat_none_as_null = true)]
pub struct TeamRow {
    pub id: String,
    pub org_id: String,
    pub display_name: String,
    pub display_name_key: String,
    pub external_id: Option<String>,
    pub resource: String,
    pub version: i64,
    pub created_at: chrono::NaiveDateTime,
    pub updated_at: chrono::NaiveDateTime,
}

/// Conditions that run in SQL (see [`super::users::UserQuery`]).
#[derive(Debug, Clone, Default)]
pub struct TeamQuery {
    pub id: Option<String>,
    pub display_name_key: Option<String>,
    pub external_id: Option<String>,
    /// Teams that have this user as a member.
    pub member_id: Option<String>,
}

impl TeamQuery {
    /// Whether the conditions name a unique key (id, or the displayName that is
    /// unique per organization), so at most one row can match.
    pub fn pins_one(&self) -> bool {
        self.id.is_some() || self.display_name_key.is_some()
    }
}

/// A member as a group lists it.
#[derive(Debug, Clone, Queryable)]
pub struct Member {
    pub user_id: String,
    pub display_name: Option<String>,
    pub user_name: String,
}

fn filtered<'a>(org_id: &'a str, q: &'a TeamQuery) -> teams::BoxedQuery<'a, Db> {
    let mut query = teams::table.into_boxed();
    // The organization is named once, by the membership subquery when there
    // is one (see `users::filtered`: SQLite would otherwise walk the
    // tenant's teams and check each against the subquery's list).
    if q.member_id.is_none() {
        query = query.filter(teams::org_id.eq(org_id));
    }
    if let Some(id) = &q.id {
        query = query.filter(teams::id.eq(id));
    }
    if let Some(key) = &q.display_name_key {
        query = query.filter(teams::display_name_key.eq(key));
    }
    if let Some(external_id) = &q.external_id {
        query = query.filter(teams::external_id.eq(external_id));
    }
    if let Some(member) = &q.member_id {
        query = query.filter(
            teams::id.eq_any(
                team_members::table
                    .filter(team_members::org_id.eq(org_id))
                    .filter(team_members::user_id.eq(member))
                    .select(team_members::team_id),
            ),
        );
    }
    query
}

pub fn insert(conn: &mut Conn, row: &TeamRow) -> QueryResult<()> {
    diesel::insert_into(teams::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn find(conn: &mut Conn, org_id: &str, id: &str) -> QueryResult<Option<TeamRow>> {
    teams::table
        .filter(teams::org_id.eq(org_id))
        .filter(teams::id.eq(id))
        .select(TeamRow::as_select())
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
) -> QueryResult<Option<TeamRow>> {
    let Conn::Pg(c) = conn else {
        return find(conn, org_id, id);
    };
    let query = teams::table
        .filter(teams::org_id.eq(org_id))
        .filter(teams::id.eq(id))
        .select(TeamRow::as_select());
    if deleting {
        query.for_update().first(c).optional()
    } else {
        query.for_no_key_update().first(c).optional()
    }
}

pub fn find_by_display_name_key(
    conn: &mut Conn,
    org_id: &str,
    key: &str,
) -> QueryResult<Option<TeamRow>> {
    teams::table
        .filter(teams::org_id.eq(org_id))
        .filter(teams::display_name_key.eq(key))
        .select(TeamRow::as_select())
        .first(conn)
        .optional()
}

/// Writes `row` if the stored version is still `expected_version`.
pub fn update(conn: &mut Conn, row: &TeamRow, expected_version: i64) -> QueryResult<bool> {
    let n = diesel::update(
        teams::table
            .filter(teams::org_id.eq(&row.org_id))
            .filter(teams::id.eq(&row.id))
            .filter(teams::version.eq(expected_version)),
    )
    .set(row)
    .execute(conn)?;
    Ok(n == 1)
}

/// Advances the version after a membership change. An increment, not a
/// compare-and-set: concurrent member PATCHes of one group all succeed.
pub fn bump_version(conn: &mut Conn, org_id: &str, id: &str) -> QueryResult<()> {
    diesel::update(
        teams::table
            .filter(teams::org_id.eq(org_id))
            .filter(teams::id.eq(id)),
    )
    .set((
        teams::version.eq(teams::version + 1),
        teams::updated_at.eq(now()),
    ))
    .execute(conn)?;
    Ok(())
}

/// Advances the version of every team `user_id` is a member of, before
/// that user is deleted and the memberships go with it: the members of
/// those teams change.
pub fn bump_versions_of_member(conn: &mut Conn, org_id: &str, user_id: &str) -> QueryResult<usize> {
    use super::schema::team_members;
    diesel::update(
        teams::table.filter(teams::org_id.eq(org_id)).filter(
            teams::id.eq_any(
                team_members::table
                    .filter(team_members::user_id.eq(user_id))
                    .select(team_members::team_id),
            ),
        ),
    )
    .set((
        teams::version.eq(teams::version + 1),
        teams::updated_at.eq(now()),
    ))
    .execute(conn)
}

pub fn delete(conn: &mut Conn, org_id: &str, id: &str) -> QueryResult<bool> {
    let n = diesel::delete(
        teams::table
            .filter(teams::org_id.eq(org_id))
            .filter(teams::id.eq(id)),
    )
    .execute(conn)?;
    Ok(n == 1)
}

pub fn count(conn: &mut Conn, org_id: &str, q: &TeamQuery) -> QueryResult<i64> {
    filtered(org_id, q).count().get_result(conn)
}

/// Adds `order` to a query, with the id as the tie-breaker so pages are stable.
fn ordered<'a>(query: teams::BoxedQuery<'a, Db>, order: Order) -> teams::BoxedQuery<'a, Db> {
    macro_rules! by {
        ($col:expr) => {
            if order.descending {
                query.order(($col.is_null().asc(), $col.desc(), teams::id.desc()))
            } else {
                query.order(($col.is_null().asc(), $col.asc(), teams::id.asc()))
            }
        };
    }
    match order.key {
        SortKey::Created => by!(teams::created_at.nullable()),
        SortKey::LastModified => by!(teams::updated_at.nullable()),
        SortKey::Id => by!(teams::id.nullable()),
        SortKey::Name | SortKey::DisplayName => by!(teams::display_name_key.nullable()),
        SortKey::ExternalId => by!(teams::external_id),
    }
}

/// One page in `order`.
pub fn page(
    conn: &mut Conn,
    org_id: &str,
    q: &TeamQuery,
    order: Order,
    offset: i64,
    limit: i64,
) -> QueryResult<Vec<TeamRow>> {
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
        .select(TeamRow::as_select())
        .load(conn)
}

/// `query` in id order, from after `after` on.
fn by_id<'a>(
    mut query: teams::BoxedQuery<'a, Db>,
    descending: bool,
    after: Option<String>,
) -> teams::BoxedQuery<'a, Db> {
    if let Some(id) = after {
        query = if descending {
            query.filter(teams::id.lt(id))
        } else {
            query.filter(teams::id.gt(id))
        };
    }
    if descending {
        query.order(teams::id.desc())
    } else {
        query.order(teams::id.asc())
    }
}

/// The next `limit` rows after `after` in `order`, resuming from the last
/// row's sort key and id (see [`super::users::scan`]).
pub fn scan(
    conn: &mut Conn,
    org_id: &str,
    q: &TeamQuery,
    order: Order,
    after: Option<&TeamRow>,
    limit: i64,
) -> QueryResult<Vec<TeamRow>> {
    if q.pins_one() {
        // At most one row, which the first batch holds; no ORDER BY, for
        // the reason `page` gives.
        if after.is_some() {
            return Ok(Vec::new());
        }
        return filtered(org_id, q)
            .limit(limit)
            .select(TeamRow::as_select())
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
                        .and($col.lt($key).or(teams::id.lt($id))),
                )
            } else {
                $query.filter(
                    $col.ge($key.clone())
                        .and($col.gt($key).or(teams::id.gt($id))),
                )
            }
        };
    }
    macro_rules! by_key_then_id {
        ($query:expr, $col:expr) => {
            if desc {
                $query.order(($col.desc(), teams::id.desc()))
            } else {
                $query.order(($col.asc(), teams::id.asc()))
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
                .select(TeamRow::as_select())
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
                    .select(TeamRow::as_select())
                    .load(conn)?;
            }
            let room = limit - i64::try_from(rows.len()).unwrap_or(limit);
            if room > 0 {
                let id = match resume {
                    Some((None, id)) => Some(id),
                    _ => None,
                };
                let query = by_id(filtered(org_id, q).filter($col.is_null()), desc, id);
                rows.extend(query.limit(room).select(TeamRow::as_select()).load(conn)?);
            }
            Ok(rows)
        }};
    }
    match order.key {
        SortKey::Created => never_null!(teams::created_at, |r: &TeamRow| r.created_at),
        SortKey::LastModified => never_null!(teams::updated_at, |r: &TeamRow| r.updated_at),
        SortKey::Id => by_id(filtered(org_id, q), desc, after.map(|r| r.id.clone()))
            .limit(limit)
            .select(TeamRow::as_select())
            .load(conn),
        SortKey::Name | SortKey::DisplayName => {
            never_null!(teams::display_name_key, |r: &TeamRow| r
                .display_name_key
                .clone())
        }
        SortKey::ExternalId => maybe_null!(teams::external_id, |r: &TeamRow| r.external_id.clone()),
    }
}

/// Members of a team in a stable order.
pub fn members(conn: &mut Conn, team_id: &str) -> QueryResult<Vec<Member>> {
    team_members::table
        .inner_join(users::table)
        .filter(team_members::team_id.eq(team_id))
        .order(team_members::user_id.asc())
        .select((users::id, users::display_name, users::user_name))
        .load(conn)
}

/// Adds the users not already members; returns how many were added.
/// Checked first rather than relying on the primary key, because a failed
/// insert aborts a PostgreSQL transaction.
pub fn add_members(
    conn: &mut Conn,
    org_id: &str,
    team_id: &str,
    user_ids: &[String],
) -> QueryResult<usize> {
    let at = now();
    let mut added = 0;
    let mut seen = std::collections::HashSet::new();
    for chunk in user_ids.chunks(500) {
        let present = members_among(conn, team_id, chunk)?;
        // One multi-row INSERT per chunk: Entra adds members in batches,
        // and a row per statement made a 50-member PATCH 50 round trips.
        let rows: Vec<_> = chunk
            .iter()
            .filter(|id| !present.contains(id.as_str()) && seen.insert(id.as_str()))
            .map(|id| {
                (
                    team_members::team_id.eq(team_id),
                    team_members::user_id.eq(id),
                    team_members::org_id.eq(org_id),
                    team_members::created_at.eq(at),
                )
            })
            .collect();
        if !rows.is_empty() {
            let insert = diesel::insert_into(team_members::table).values(&rows);
            // diesel offers multi-row inserts per backend only.
            added += match conn {
                Conn::Pg(c) => insert.execute(c)?,
                Conn::Sqlite(c) => insert.execute(c)?,
            };
        }
    }
    Ok(added)
}

/// Which of `user_ids` are members of the team.
pub fn members_among(
    conn: &mut Conn,
    team_id: &str,
    user_ids: &[String],
) -> QueryResult<std::collections::BTreeSet<String>> {
    let mut found = std::collections::BTreeSet::new();
    for chunk in user_ids.chunks(500) {
        let present: Vec<String> = team_members::table
            .filter(team_members::team_id.eq(team_id))
            .filter(team_members::user_id.eq_any(chunk))
            .select(team_members::user_id)
            .load(conn)?;
        found.extend(present);
    }
    Ok(found)
}

pub fn remove_members(conn: &mut Conn, team_id: &str, user_ids: &[String]) -> QueryResult<usize> {
    let mut removed = 0;
    for chunk in user_ids.chunks(500) {
        removed += diesel::delete(
            team_members::table
                .filter(team_members::team_id.eq(team_id))
                .filter(team_members::user_id.eq_any(chunk)),
        )
        .execute(conn)?;
    }
    Ok(removed)
}

pub fn remove_all_members(conn: &mut Conn, team_id: &str) -> QueryResult<usize> {
    diesel::delete(team_members::table.filter(team_members::team_id.eq(team_id))).execute(conn)
}
