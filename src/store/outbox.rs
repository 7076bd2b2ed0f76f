//! The mail outbox: every email owed, written in the transaction that owes
//! it, and the source of truth for what is sent.
//!
//! States: `pending` (owed; `locked_until` set while a send job for it is
//! queued), `sending` (claimed by a worker until `locked_until`), `sent`,
//! `failed` (permanent failure or attempts spent), `cancelled` (no longer
//! owed, e.g. the invitation was revoked before it went out).

use diesel::prelude::*;

use super::schema::outbox;
use super::{Conn, Db, now};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = outbox)]
pub struct OutboxRow {
    pub id: String,
    pub org_id: String,
    pub kind: String,
    pub change_id: Option<String>,
    pub recipient: String,
    pub payload: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: chrono::NaiveDateTime,
    pub sent_at: Option<chrono::NaiveDateTime>,
    pub created_at: chrono::NaiveDateTime,
    pub locked_until: Option<chrono::NaiveDateTime>,
}

impl OutboxRow {
    /// A row owed now, marked as queued for `queued_for`.
    pub fn new(
        org_id: &str,
        kind: &str,
        change_id: Option<&str>,
        recipient: &str,
        payload: String,
        queued_for: chrono::TimeDelta,
    ) -> Self {
        let at = now();
        OutboxRow {
            id: ulid::Ulid::new().to_string(),
            org_id: org_id.to_owned(),
            kind: kind.to_owned(),
            change_id: change_id.map(str::to_owned),
            recipient: recipient.to_owned(),
            payload,
            state: "pending".into(),
            attempts: 0,
            last_error: None,
            next_attempt_at: at,
            sent_at: None,
            created_at: at,
            locked_until: Some(at + queued_for),
        }
    }

    /// A row owed now and already claimed for sending, for `lease`, by
    /// the process that writes it: its first attempt.
    pub fn claimed(
        org_id: &str,
        kind: &str,
        change_id: Option<&str>,
        recipient: &str,
        payload: String,
        lease: chrono::TimeDelta,
    ) -> Self {
        let mut row = OutboxRow::new(org_id, kind, change_id, recipient, payload, lease);
        row.state = "sending".into();
        row.attempts = 1;
        row
    }
}

/// `outbox.state = state`, for statements that name their row by id.
///
/// Written as `IS TRUE` so that PostgreSQL cannot answer it from
/// `outbox_state_next` and finds the row by its primary key. Its planner
/// otherwise took that index whenever the statistics said few rows were
/// `pending` or `sending` (always, between analyses, as mail goes out fast),
/// and stepped over every entry of the state, dead versions included, to
/// find one row: under a mail backlog, a scan of the backlog per claim.
fn row_in_state(state: &'static str) -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    debug_assert!(state.chars().all(|c| c.is_ascii_lowercase()));
    diesel::dsl::sql(&format!("(outbox.state = '{state}') IS TRUE"))
}

pub fn insert(conn: &mut Conn, row: &OutboxRow) -> QueryResult<()> {
    insert_all(conn, std::slice::from_ref(row))
}

/// Inserts `rows` (one statement on PostgreSQL; SQLite, in process, takes
/// rows with defaults one at a time).
pub fn insert_all(conn: &mut Conn, rows: &[OutboxRow]) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let insert = diesel::insert_into(outbox::table).values(rows);
    match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(())
}

pub fn find(conn: &mut Conn, id: &str) -> QueryResult<Option<OutboxRow>> {
    outbox::table
        .filter(outbox::id.eq(id))
        .select(OutboxRow::as_select())
        .first(conn)
        .optional()
}

/// Takes a due pending row for sending, for `lease`; None if another
/// worker has it, it is not due, or it is no longer owed.
pub fn claim(
    conn: &mut Conn,
    id: &str,
    lease: chrono::TimeDelta,
) -> QueryResult<Option<OutboxRow>> {
    let at = now();
    let claim = diesel::update(
        outbox::table
            .filter(outbox::id.eq(id))
            .filter(row_in_state("pending"))
            .filter(outbox::next_attempt_at.le(at)),
    )
    .set((
        outbox::state.eq("sending"),
        outbox::locked_until.eq(Some(at + lease)),
        outbox::attempts.eq(outbox::attempts + 1),
    ));
    // One round trip with RETURNING, which diesel offers per backend only.
    match conn {
        Conn::Pg(c) => claim
            .returning(OutboxRow::as_returning())
            .get_result(c)
            .optional(),
        Conn::Sqlite(c) => claim
            .returning(OutboxRow::as_returning())
            .get_result(c)
            .optional(),
    }
}

/// The claim a process holds on an outbox row: the `locked_until` its
/// claim wrote. The statements that settle a claimed row (sent, retry,
/// handed back, finished) name it as well as the state, so a process whose
/// claim ran out, and was taken back and claimed again by another, changes
/// nothing: the row is the other claim's now.
pub type Held = Option<chrono::NaiveDateTime>;

/// The row `id` while it is being sent under the claim `held`.
fn held_row(id: &str, held: Held) -> HeldRow<'_> {
    outbox::table
        .filter(outbox::id.eq(id))
        .filter(row_in_state("sending"))
        .filter(outbox::locked_until.eq(held))
}

type HeldRow<'a> = diesel::dsl::Filter<
    diesel::dsl::Filter<
        diesel::dsl::Filter<outbox::table, diesel::dsl::Eq<outbox::id, &'a str>>,
        diesel::expression::SqlLiteral<diesel::sql_types::Bool>,
    >,
    diesel::dsl::Eq<outbox::locked_until, Held>,
>;

/// A send to record: the row, the claim it was sent under, and the payload
/// to keep (without its token).
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub held: Held,
    pub payload: String,
}

/// Records a successful send; the payload is replaced (it may hold a token).
pub fn mark_sent(conn: &mut Conn, id: &str, held: Held, payload: &str) -> QueryResult<()> {
    diesel::update(held_row(id, held))
        .set((
            outbox::state.eq("sent"),
            outbox::sent_at.eq(Some(now())),
            outbox::locked_until.eq(None::<chrono::NaiveDateTime>),
            outbox::payload.eq(payload),
            outbox::last_error.eq(None::<String>),
        ))
        .execute(conn)?;
    Ok(())
}

/// Records several successful sends, each as [`mark_sent`] would: one
/// statement on PostgreSQL, one transaction on SQLite (in process, where a
/// statement costs no round trip).
pub fn mark_all_sent(conn: &mut Conn, sent: &[Sent]) -> QueryResult<()> {
    match conn {
        Conn::Pg(c) => super::unnest::mark_all_sent(c, now(), sent),
        Conn::Sqlite(_) => conn.transaction(|c| {
            for one in sent {
                mark_sent(c, &one.id, one.held, &one.payload)?;
            }
            Ok(())
        }),
    }
}

/// Schedules another attempt after a transient failure.
pub fn mark_retry(
    conn: &mut Conn,
    id: &str,
    held: Held,
    at: chrono::NaiveDateTime,
    error: &str,
) -> QueryResult<()> {
    diesel::update(held_row(id, held))
        .set((
            outbox::state.eq("pending"),
            outbox::next_attempt_at.eq(at),
            outbox::locked_until.eq(None::<chrono::NaiveDateTime>),
            outbox::last_error.eq(Some(error)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Ends a row for good: `failed` (with the server's answer) or `cancelled`.
/// `next_attempt_at` then records when the last attempt ended, which the
/// failure digest reads.
///
/// `payload` is the row's payload; it is kept without its invitation token,
/// which nothing will send any more and which is stored nowhere else in
/// clear (invitations keep only its SHA-256).
pub fn finish(
    conn: &mut Conn,
    id: &str,
    held: Held,
    state: &str,
    error: &str,
    payload: &str,
) -> QueryResult<()> {
    diesel::update(held_row(id, held))
        .set((
            outbox::state.eq(state),
            outbox::next_attempt_at.eq(now()),
            outbox::locked_until.eq(None::<chrono::NaiveDateTime>),
            outbox::last_error.eq(Some(error)),
            outbox::payload.eq(without_token(payload)),
        ))
        .execute(conn)?;
    Ok(())
}

/// A payload without its invitation token, for keeping once the mail that
/// carries the token was sent or will never be.
pub fn without_token(payload: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(mut value) => {
            if let Some(obj) = value.as_object_mut() {
                obj.remove("token");
            }
            value.to_string()
        }
        // Not ours to read: keep nothing rather than a token.
        Err(_) => "{}".to_owned(),
    }
}

/// Hands a row claimed by this process back unsent, marked as queued for
/// `queued_for`, as if its first attempt had not begun.
pub fn unclaim(
    conn: &mut Conn,
    id: &str,
    held: Held,
    queued_for: chrono::TimeDelta,
) -> QueryResult<()> {
    diesel::update(held_row(id, held))
        .set((
            outbox::state.eq("pending"),
            outbox::attempts.eq(outbox::attempts - 1),
            outbox::locked_until.eq(Some(now() + queued_for)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Returns rows whose claim ran out to `pending`; returns how many.
///
/// The attempt the claim counted is given back, as [`unclaim`] does: no
/// outcome of it was recorded, and most often no send began at all (a
/// welcome whose worker died after its commit, or skipped it as claimed
/// too long ago). Counted, such a row would reach `mail.max_attempts`
/// with fewer real attempts, and be recorded failed after a temporary
/// failure it was allowed to retry. A claimed row has counted at least
/// one attempt, so this never goes below zero.
pub fn release_expired(conn: &mut Conn) -> QueryResult<usize> {
    diesel::update(
        outbox::table
            .filter(outbox::state.eq("sending"))
            .filter(outbox::locked_until.lt(now())),
    )
    .set((
        outbox::state.eq("pending"),
        outbox::locked_until.eq(None::<chrono::NaiveDateTime>),
        outbox::attempts.eq(outbox::attempts - 1),
    ))
    .execute(conn)
}

/// Pending rows that are due and have no send job queued (or whose job was
/// lost), marked as queued for `queued_for`; returns their ids. With
/// `never_queued`, only rows no job was ever queued for (digests, retries,
/// rows taken back from a sender that died), not those whose job is late.
pub fn take_due(
    conn: &mut Conn,
    limit: i64,
    queued_for: chrono::TimeDelta,
    never_queued: bool,
) -> QueryResult<Vec<String>> {
    let at = now();
    let mut due = outbox::table
        .filter(outbox::state.eq("pending"))
        .filter(outbox::next_attempt_at.le(at))
        .into_boxed();
    due = if never_queued {
        due.filter(outbox::locked_until.is_null())
    } else {
        due.filter(
            outbox::locked_until
                .is_null()
                .or(outbox::locked_until.lt(at)),
        )
    };
    let ids: Vec<String> = due
        .order(outbox::next_attempt_at.asc())
        .limit(limit)
        .select(outbox::id)
        .load(conn)?;
    // Marked only if still due: a worker of another process may have
    // claimed a row since it was read, and its lease must not be cut short.
    let mut taken = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let still_due = outbox::table
            .filter(outbox::id.eq_any(chunk))
            .filter(row_in_state("pending"))
            .filter(
                outbox::locked_until
                    .is_null()
                    .or(outbox::locked_until.lt(at)),
            );
        let mark = diesel::update(still_due).set(outbox::locked_until.eq(Some(at + queued_for)));
        let marked: Vec<String> = match conn {
            Conn::Pg(c) => mark.returning(outbox::id).get_results(c)?,
            Conn::Sqlite(c) => mark.returning(outbox::id).get_results(c)?,
        };
        taken.extend(marked);
    }
    Ok(taken)
}

/// When the organization's last digest was written, if ever.
pub fn last_created(
    conn: &mut Conn,
    org_id: &str,
    kind: &str,
) -> QueryResult<Option<chrono::NaiveDateTime>> {
    outbox::table
        .filter(outbox::org_id.eq(org_id))
        .filter(outbox::kind.eq(kind))
        .select(diesel::dsl::max(outbox::created_at))
        .first(conn)
}

/// Rows of an organization, newest first (operators and tests).
pub fn for_org(conn: &mut Conn, org_id: &str) -> QueryResult<Vec<OutboxRow>> {
    outbox::table
        .filter(outbox::org_id.eq(org_id))
        .order(outbox::created_at.desc())
        .select(OutboxRow::as_select())
        .load(conn)
}

/// Mail to people (not digests) that failed for good after `after` and up
/// to `through`: reported in the next digest.
pub fn failed_between(
    conn: &mut Conn,
    org_id: &str,
    after: chrono::NaiveDateTime,
    through: chrono::NaiveDateTime,
    limit: i64,
) -> QueryResult<Vec<OutboxRow>> {
    failed_in(org_id, after, through)
        .order(outbox::next_attempt_at.asc())
        .limit(limit)
        .select(OutboxRow::as_select())
        .load(conn)
}

/// How many rows [`failed_between`] would find without a limit.
pub fn count_failed_between(
    conn: &mut Conn,
    org_id: &str,
    after: chrono::NaiveDateTime,
    through: chrono::NaiveDateTime,
) -> QueryResult<i64> {
    failed_in(org_id, after, through).count().get_result(conn)
}

/// Failed mail of an organization, digests aside, that failed after
/// `after` and up to `through`.
fn failed_in<'a>(
    org_id: &'a str,
    after: chrono::NaiveDateTime,
    through: chrono::NaiveDateTime,
) -> outbox::BoxedQuery<'a, Db> {
    outbox::table
        .filter(outbox::org_id.eq(org_id))
        .filter(outbox::state.eq("failed"))
        .filter(outbox::kind.ne("digest"))
        .filter(outbox::next_attempt_at.gt(after))
        .filter(outbox::next_attempt_at.le(through))
        .into_boxed()
}

/// Rows per state, across organizations.
pub fn count_by_state(conn: &mut Conn) -> QueryResult<Vec<(String, i64)>> {
    outbox::table
        .group_by(outbox::state)
        .select((outbox::state, diesel::dsl::count_star()))
        .load(conn)
}

/// Rows sent after `since`.
pub fn sent_since(conn: &mut Conn, since: chrono::NaiveDateTime) -> QueryResult<i64> {
    outbox::table
        .filter(outbox::state.eq("sent"))
        .filter(outbox::sent_at.gt(since))
        .count()
        .get_result(conn)
}

/// When the oldest owed row was written.
pub fn oldest_pending(conn: &mut Conn) -> QueryResult<Option<chrono::NaiveDateTime>> {
    outbox::table
        .filter(outbox::state.eq_any(["pending", "sending"]))
        .select(diesel::dsl::min(outbox::created_at))
        .first(conn)
}

/// Deletes up to `limit` rows that ended (sent, failed, cancelled) before
/// `before`; returns how many. Owed rows always stay.
pub fn delete_ended_before(
    conn: &mut Conn,
    before: chrono::NaiveDateTime,
    limit: i64,
) -> QueryResult<usize> {
    let old = outbox::table
        .filter(outbox::state.eq_any(["sent", "failed", "cancelled"]))
        .filter(outbox::next_attempt_at.lt(before))
        .select(outbox::id)
        .limit(limit)
        .load::<String>(conn)?;
    let mut deleted = 0;
    for chunk in old.chunks(500) {
        deleted += diesel::delete(outbox::table.filter(outbox::id.eq_any(chunk))).execute(conn)?;
    }
    Ok(deleted)
}
