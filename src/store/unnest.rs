//! PostgreSQL statements over many rows whose text does not depend on how
//! many rows they carry: each column travels as one array parameter and
//! `unnest` turns the arrays back into rows. Inserts into several tables
//! are one statement, every table but the last written by a
//! data-modifying `WITH` item.
//!
//! One statement is one round trip, and one unchanging text is a statement
//! the connection prepares once. diesel's multi-row `insert_into` is a new
//! statement text for every row count, and its `sql_query` is parsed and
//! planned again on every call. Foreign keys are checked at the end of the
//! statement, so a row may refer to a row of another table of the same
//! statement.

use std::marker::PhantomData;

use chrono::NaiveDateTime;
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{Array, BigInt, Bool, HasSqlType, Integer, Nullable, Text, Timestamp};
use diesel::{QueryResult, RunQueryDsl};

use super::invitations::InvitationRow;
use super::log::LogRow;
use super::outbox::{OutboxRow, Sent};
use super::users::{EmailKey, UserRow};

/// One column's values, bound as one array parameter.
trait Column {
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
    /// The array type the parameter is cast to, so that PostgreSQL infers
    /// the types of `unnest`'s columns.
    fn cast(&self) -> &'static str;
}

struct Values<ST, T> {
    values: Vec<T>,
    cast: &'static str,
    sql_type: PhantomData<ST>,
}

impl<ST: 'static, T> Column for Values<ST, T>
where
    Pg: HasSqlType<Array<ST>>,
    Vec<T>: ToSql<Array<ST>, Pg>,
{
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<Array<ST>, Vec<T>>(&self.values)
    }

    fn cast(&self) -> &'static str {
        self.cast
    }
}

/// The column `name` of `rows`, as `read` gives it.
fn column<'a, R, ST: 'static, T: 'a>(
    name: &'static str,
    cast: &'static str,
    rows: &'a [R],
    read: impl Fn(&'a R) -> T,
) -> (&'static str, Box<dyn Column + 'a>)
where
    Pg: HasSqlType<Array<ST>>,
    Vec<T>: ToSql<Array<ST>, Pg>,
{
    let values = Values::<ST, T> {
        values: rows.iter().map(read).collect(),
        cast,
        sql_type: PhantomData,
    };
    (name, Box::new(values))
}

/// `INSERT INTO table (columns) SELECT * FROM unnest(arrays)`.
struct Insert<'a> {
    table: &'static str,
    columns: Vec<(&'static str, Box<dyn Column + 'a>)>,
}

impl<'a> Insert<'a> {
    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("INSERT INTO ");
        out.push_sql(self.table);
        out.push_sql(" (");
        for (i, (name, _)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_sql(name);
        }
        out.push_sql(") SELECT * FROM unnest(");
        for (i, (_, values)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            values.bind(out)?;
            out.push_sql("::");
            out.push_sql(values.cast());
        }
        out.push_sql(")");
        Ok(())
    }
}

/// Several inserts as one statement; see the module's documentation.
struct Together<'a>(Vec<Insert<'a>>);

impl QueryFragment<Pg> for Together<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let Some((last, first)) = self.0.split_last() else {
            return Ok(());
        };
        for (i, insert) in first.iter().enumerate() {
            out.push_sql(if i == 0 { "WITH " } else { ", " });
            // Names only need to differ; nothing reads them.
            out.push_sql(insert.table);
            out.push_sql("_written AS (");
            insert.walk(&mut out)?;
            out.push_sql(")");
        }
        if !first.is_empty() {
            out.push_sql(" ");
        }
        last.walk(&mut out)
    }
}

impl QueryId for Together<'_> {
    type QueryId = ();
    // Without a static id diesel keys its prepared statements by the text,
    // which is the same for every batch.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl RunQueryDsl<PgConnection> for Together<'_> {}

/// What a batch of user creates writes.
#[derive(Default)]
pub struct UserCreates {
    pub users: Vec<UserRow>,
    pub emails: Vec<EmailKey>,
    pub invitations: Vec<InvitationRow>,
    pub outbox: Vec<OutboxRow>,
    pub log: Vec<LogRow>,
}

/// Writes `rows` in one statement, outside any transaction: it commits
/// whole or not at all. A taken userName or id, or a change id already
/// logged (a redelivery), fails the statement with a unique violation.
pub fn insert_user_creates(conn: &mut PgConnection, rows: &UserCreates) -> QueryResult<()> {
    user_creates(rows).execute(conn).map(drop)
}

fn user_creates(rows: &UserCreates) -> Together<'_> {
    const TEXT: &str = "text[]";
    const TIME: &str = "timestamp[]";
    let users = &rows.users[..];
    let emails = &rows.emails[..];
    let invitations = &rows.invitations[..];
    let outbox = &rows.outbox[..];
    let log = &rows.log[..];
    Together(vec![
        Insert {
            table: "users",
            columns: vec![
                column::<_, Text, _>("id", TEXT, users, |r| r.id.as_str()),
                column::<_, Text, _>("org_id", TEXT, users, |r| r.org_id.as_str()),
                column::<_, Text, _>("user_name", TEXT, users, |r| r.user_name.as_str()),
                column::<_, Text, _>("user_name_key", TEXT, users, |r| r.user_name_key.as_str()),
                column::<_, Nullable<Text>, _>("external_id", TEXT, users, |r| {
                    r.external_id.as_deref()
                }),
                column::<_, Nullable<Text>, _>("display_name", TEXT, users, |r| {
                    r.display_name.as_deref()
                }),
                column::<_, Nullable<Text>, _>("display_name_key", TEXT, users, |r| {
                    r.display_name_key.as_deref()
                }),
                column::<_, Nullable<Text>, _>("email", TEXT, users, |r| r.email.as_deref()),
                column::<_, Bool, _>("active", "bool[]", users, |r| r.active),
                column::<_, Text, _>("resource", TEXT, users, |r| r.resource.as_str()),
                column::<_, BigInt, _>("version", "int8[]", users, |r| r.version),
                column::<_, Timestamp, _>("created_at", TIME, users, |r| r.created_at),
                column::<_, Timestamp, _>("updated_at", TIME, users, |r| r.updated_at),
                column::<_, Nullable<Timestamp>, _>("joined_at", TIME, users, |r| r.joined_at),
            ],
        },
        Insert {
            table: "user_emails",
            columns: vec![
                column::<_, Text, _>("user_id", TEXT, emails, |r| r.0.as_str()),
                column::<_, Text, _>("org_id", TEXT, emails, |r| r.1.as_str()),
                column::<_, Text, _>("value_key", TEXT, emails, |r| r.2.as_str()),
            ],
        },
        Insert {
            table: "invitations",
            columns: vec![
                column::<_, Text, _>("id", TEXT, invitations, |r| r.id.as_str()),
                column::<_, Text, _>("org_id", TEXT, invitations, |r| r.org_id.as_str()),
                column::<_, Text, _>("user_id", TEXT, invitations, |r| r.user_id.as_str()),
                column::<_, Text, _>("token_hash", TEXT, invitations, |r| r.token_hash.as_str()),
                column::<_, Text, _>("email", TEXT, invitations, |r| r.email.as_str()),
                column::<_, Timestamp, _>("created_at", TIME, invitations, |r| r.created_at),
                column::<_, Timestamp, _>("expires_at", TIME, invitations, |r| r.expires_at),
                column::<_, Nullable<Timestamp>, _>("used_at", TIME, invitations, |r| r.used_at),
                column::<_, Nullable<Timestamp>, _>("revoked_at", TIME, invitations, |r| {
                    r.revoked_at
                }),
            ],
        },
        Insert {
            table: "outbox",
            columns: vec![
                column::<_, Text, _>("id", TEXT, outbox, |r| r.id.as_str()),
                column::<_, Text, _>("org_id", TEXT, outbox, |r| r.org_id.as_str()),
                column::<_, Text, _>("kind", TEXT, outbox, |r| r.kind.as_str()),
                column::<_, Nullable<Text>, _>("change_id", TEXT, outbox, |r| {
                    r.change_id.as_deref()
                }),
                column::<_, Text, _>("recipient", TEXT, outbox, |r| r.recipient.as_str()),
                column::<_, Text, _>("payload", TEXT, outbox, |r| r.payload.as_str()),
                column::<_, Text, _>("state", TEXT, outbox, |r| r.state.as_str()),
                column::<_, Integer, _>("attempts", "int4[]", outbox, |r| r.attempts),
                column::<_, Nullable<Text>, _>("last_error", TEXT, outbox, |r| {
                    r.last_error.as_deref()
                }),
                column::<_, Timestamp, _>("next_attempt_at", TIME, outbox, |r| r.next_attempt_at),
                column::<_, Nullable<Timestamp>, _>("sent_at", TIME, outbox, |r| r.sent_at),
                column::<_, Timestamp, _>("created_at", TIME, outbox, |r| r.created_at),
                column::<_, Nullable<Timestamp>, _>("locked_until", TIME, outbox, |r| {
                    r.locked_until
                }),
            ],
        },
        Insert {
            table: "provisioning_log",
            columns: vec![
                column::<_, Text, _>("change_id", TEXT, log, |r| r.change_id.as_str()),
                column::<_, Text, _>("org_id", TEXT, log, |r| r.org_id.as_str()),
                column::<_, Text, _>("operation", TEXT, log, |r| r.operation.as_str()),
                column::<_, Text, _>("resource_type", TEXT, log, |r| r.resource_type.as_str()),
                column::<_, Nullable<Text>, _>("resource_id", TEXT, log, |r| {
                    r.resource_id.as_deref()
                }),
                column::<_, Nullable<Text>, _>("subject", TEXT, log, |r| r.subject.as_deref()),
                column::<_, Text, _>("outcome", TEXT, log, |r| r.outcome.as_str()),
                column::<_, Integer, _>("status", "int4[]", log, |r| r.status),
                column::<_, Nullable<Text>, _>("response", TEXT, log, |r| r.response.as_deref()),
                column::<_, Nullable<Text>, _>("error", TEXT, log, |r| r.error.as_deref()),
                column::<_, Integer, _>("attempts", "int4[]", log, |r| r.attempts),
                column::<_, Timestamp, _>("received_at", TIME, log, |r| r.received_at),
                column::<_, Timestamp, _>("applied_at", TIME, log, |r| r.applied_at),
                column::<_, BigInt, _>("duration_ms", "int8[]", log, |r| r.duration_ms),
                column::<_, Nullable<Text>, _>("request", TEXT, log, |r| r.request.as_deref()),
                column::<_, Nullable<Text>, _>("resolution", TEXT, log, |r| {
                    r.resolution.as_deref()
                }),
            ],
        },
    ])
}

/// Sends recorded together; see [`mark_all_sent`].
struct MarkSent<'a> {
    at: NaiveDateTime,
    ids: Vec<&'a str>,
    held: Vec<Option<NaiveDateTime>>,
    payloads: Vec<&'a str>,
}

impl QueryFragment<Pg> for MarkSent<'_> {
    /// Planned on every call, unlike the other statements here. A
    /// connection keeps the generic plan of a prepared statement until the
    /// outbox's statistics change, and a plan made while the outbox was
    /// small scans the whole table: with autovacuum off that plan stays, and
    /// every mark reads every row ever sent. Planned with the ids at hand,
    /// it is an index lookup on any outbox worth one. The text is short, so
    /// parsing it each time costs little; it still travels in one round trip.
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("UPDATE outbox SET state = 'sent', sent_at = ");
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql(", locked_until = NULL, last_error = NULL, payload = (");
        out.push_bind_param::<Array<Text>, _>(&self.payloads)?;
        out.push_sql("::text[])[array_position(");
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql("::text[], outbox.id)] WHERE outbox.id = ANY(");
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql(
            "::text[]) AND (outbox.state = 'sending') IS TRUE \
             AND outbox.locked_until = (",
        );
        out.push_bind_param::<Array<Nullable<Timestamp>>, _>(&self.held)?;
        out.push_sql("::timestamp[])[array_position(");
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql("::text[], outbox.id)]");
        Ok(())
    }
}

impl QueryId for MarkSent<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl RunQueryDsl<PgConnection> for MarkSent<'_> {}

/// Marks the outbox rows `sent` sent at `at`, each with its payload
/// without the token, and only while the claim it was sent under holds.
pub fn mark_all_sent(conn: &mut PgConnection, at: NaiveDateTime, sent: &[Sent]) -> QueryResult<()> {
    MarkSent {
        at,
        ids: sent.iter().map(|s| s.id.as_str()).collect(),
        held: sent.iter().map(|s| s.held).collect(),
        payloads: sent.iter().map(|s| s.payload.as_str()).collect(),
    }
    .execute(conn)
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scratch::full_scans;

    fn sql(rows: &UserCreates) -> String {
        let text = diesel::debug_query::<Pg, _>(&user_creates(rows)).to_string();
        text.split(" -- binds:")
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn the_statement_text_is_the_same_for_any_number_of_rows() {
        let at = crate::store::now();
        let user = |id: &str| UserRow {
            id: id.into(),
            org_id: "org".into(),
            user_name: format!("{id}@example.com"),
            user_name_key: format!("{id}@example.com"),
            external_id: None,
            display_name: None,
            display_name_key: None,
            email: None,
            active: false,
            resource: "{}".into(),
            version: 1,
            created_at: at,
            updated_at: at,
            joined_at: None,
        };
        let one = UserCreates {
            users: vec![user("a")],
            ..UserCreates::default()
        };
        let three = UserCreates {
            users: vec![user("a"), user("b"), user("c")],
            emails: vec![("a".into(), "org".into(), "a@example.com".into())],
            ..UserCreates::default()
        };
        let text = sql(&one);
        assert_eq!(text, sql(&three));
        assert_eq!(text, sql(&UserCreates::default()));
        assert!(text.starts_with("WITH users_written AS (INSERT INTO users ("));
        assert!(text.contains(") INSERT INTO provisioning_log ("));
        assert_eq!(text.matches("unnest(").count(), 5);
        assert!(text.contains("$55::text[]"));
    }

    /// A connection marks sends from the outbox's first rows on; when the
    /// outbox has grown, a mark still reads only the rows it marks.
    #[test]
    fn marking_sends_reads_by_key_however_small_the_outbox_was() {
        let Some((_scratch, mut conn)) = crate::store::scratch::Scratch::create() else {
            return;
        };
        let outbox_rows = |from: i32, to: i32| {
            format!(
                "INSERT INTO outbox (id, org_id, kind, recipient, payload, state, attempts, \
                 next_attempt_at, created_at, locked_until) \
                 SELECT 'row-' || n, 'org', 'welcome', 'someone@example.com', '{{}}', \
                 'sending', 1, now(), now(), '2030-01-01' FROM generate_series({from}, {to}) AS n"
            )
        };
        diesel::sql_query(outbox_rows(1, 300))
            .execute(&mut conn)
            .expect("first rows");
        let held = chrono::NaiveDate::from_ymd_opt(2030, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
        let sent = |n: i32| Sent {
            id: format!("row-{n}"),
            held,
            payload: "{}".into(),
        };
        // More marks than PostgreSQL plans afresh before it settles on a
        // plan for the connection.
        for n in (1..=40).step_by(4) {
            let batch: Vec<Sent> = (n..n + 4).map(sent).collect();
            mark_all_sent(&mut conn, crate::store::now(), &batch).expect("mark");
        }
        diesel::sql_query(outbox_rows(301, 20_000))
            .execute(&mut conn)
            .expect("more rows");

        let before = full_scans(&mut conn, "outbox");
        mark_all_sent(
            &mut conn,
            crate::store::now(),
            &[sent(10_000), sent(10_001)],
        )
        .expect("mark");
        assert_eq!(
            full_scans(&mut conn, "outbox"),
            before,
            "the mark scanned the outbox"
        );
    }
}
