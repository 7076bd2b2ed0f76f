//! Applying changes: each change and its log row in one transaction (or
//! several changes that arrived together in one), the log row's primary
//! key doubling as the idempotency check.

use std::time::Instant;

use diesel::Connection;
use serde_json::Value;

use crate::jobs::{ChangeOp, ScimChange};
use crate::scim::ResourceKind;
use crate::scim::error::{ScimError, ScimType};
use crate::scim::patch::{MemberChange, apply_patch, parse_patch};
use crate::scim::render::{self, MemberRef};
use crate::scim::resource::{group_fields, group_member_ids, require_email, user_fields};
use crate::store::invitations::{self, InvitationRow};
use crate::store::log::LogRow;
use crate::store::outbox::{self, OutboxRow};
use crate::store::teams::TeamRow;
use crate::store::unnest::UserCreates;
use crate::store::users::UserRow;
use crate::store::{self, Conn, log, now, teams, users};

/// Why a change did not apply.
#[derive(Debug)]
enum ApplyError {
    /// The change is wrong for the current state: a committed outcome.
    Rejected(ScimError),
    /// The database failed: roll back and let the caller decide.
    Store(store::Error),
}

impl From<diesel::result::Error> for ApplyError {
    fn from(e: diesel::result::Error) -> Self {
        ApplyError::Store(store::Error::Query(e))
    }
}

impl From<ScimError> for ApplyError {
    fn from(e: ScimError) -> Self {
        ApplyError::Rejected(e)
    }
}

impl From<store::Error> for ApplyError {
    fn from(e: store::Error) -> Self {
        ApplyError::Store(e)
    }
}

/// A change that applied: the answer to give, what the log shows, and
/// the welcomes it wrote.
struct Applied {
    status: u16,
    body: Option<Value>,
    subject: Option<String>,
    mail: Vec<Owed>,
}

/// A welcome that a change wrote, claimed for sending by the worker that
/// committed it (see [`Policy::send_lease`]), with the invitation it mails.
#[derive(Clone)]
pub struct Owed {
    pub row: OutboxRow,
    pub invitation: InvitationRow,
}

/// Names the rows only: the outbox payload holds the invitation's clear
/// token until the mail is sent, and must not reach a log line.
impl std::fmt::Debug for Owed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owed")
            .field("outbox_id", &self.row.id)
            .field("invitation_id", &self.invitation.id)
            .finish()
    }
}

/// What applying needs besides the change: settings of the product.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a welcome invitation stays valid.
    pub invitation_ttl: chrono::TimeDelta,
    /// A welcome is written already claimed by the worker that commits it,
    /// for this long: that worker sends it right after the commit. If it
    /// dies first, the reconciler takes the row back once the claim runs
    /// out and queues it.
    pub send_lease: chrono::TimeDelta,
}

/// A committed change: its log row, and the welcomes to send now.
#[derive(Debug, Clone)]
pub struct Committed {
    pub log: LogRow,
    pub mail: Vec<Owed>,
}

/// Why the optimistic transaction of [`apply_once`] rolled back.
enum RolledBack {
    /// The change is rejected; its log row is written on its own.
    Rejected(ScimError),
    /// The change already has a log row: this is a redelivery.
    AlreadyLogged,
    Store(store::Error),
}

impl From<diesel::result::Error> for RolledBack {
    fn from(e: diesel::result::Error) -> Self {
        RolledBack::Store(store::Error::Query(e))
    }
}

/// Applies `change` in one transaction and returns its log row. A change
/// already in the log is not applied again: its stored outcome is returned.
///
/// The common case costs one transaction and no extra round trip: the
/// change and its log row are written together, and the log's primary key
/// (the change id) is the idempotency check. A redelivered change fails
/// that insert, the whole transaction rolls back, and the stored outcome is
/// read instead. A rejected change rolls back too, and only its log row is
/// then written, so a rejection leaves no other trace.
pub fn apply_once(
    conn: &mut Conn,
    change: &ScimChange,
    attempts: i32,
    policy: &Policy,
) -> Result<Committed, store::Error> {
    if let Some(mut written) = user_creates_at_once(conn, &[(change, attempts)], policy) {
        return Ok(written.remove(0));
    }
    let started = Instant::now();
    let attempt = conn.transaction::<Committed, RolledBack, _>(|c| {
        let applied = match apply_op(c, change, policy) {
            Ok(applied) => applied,
            Err(ApplyError::Rejected(e)) => return Err(RolledBack::Rejected(e)),
            Err(ApplyError::Store(e)) => return Err(RolledBack::Store(e)),
        };
        let (row, mail) = applied_log(change, attempts, applied, started);
        insert_log(c, &row)?;
        Ok(Committed { log: row, mail })
    });
    match attempt {
        Ok(committed) => Ok(committed),
        Err(RolledBack::Rejected(e)) => {
            let mut row = log_row(change, attempts, "rejected");
            row.status = i32::from(e.status);
            row.response = Some(e.to_json().to_string());
            row.error = Some(e.detail.clone());
            row.subject = subject_of(&change.op);
            row.duration_ms = elapsed_ms(started);
            let written = conn.transaction::<Committed, RolledBack, _>(|c| {
                insert_log(c, &row)?;
                Ok(Committed {
                    log: row,
                    mail: Vec::new(),
                })
            });
            match written {
                Ok(committed) => Ok(committed),
                Err(RolledBack::Store(e)) => Err(e),
                Err(_) => stored_outcome(conn, change),
            }
        }
        Err(RolledBack::AlreadyLogged) => stored_outcome(conn, change),
        // A failure may also be how a redelivery shows (its insert collided
        // with what the first delivery wrote): its stored outcome wins.
        Err(RolledBack::Store(e)) => match log::find(conn, &change.change_id) {
            Ok(Some(done)) => Ok(redelivered(done)),
            _ => Err(e),
        },
    }
}

/// A log row for `change` with the given outcome, to fill in.
fn log_row(change: &ScimChange, attempts: i32, outcome: &str) -> LogRow {
    LogRow {
        change_id: change.change_id.clone(),
        org_id: change.org_id.clone(),
        operation: change.op.name().to_owned(),
        resource_type: kind_name(change.op.kind()).to_owned(),
        resource_id: Some(change.op.id().to_owned()),
        subject: None,
        outcome: outcome.to_owned(),
        status: 0,
        response: None,
        error: None,
        attempts,
        received_at: change.received_at.naive_utc(),
        applied_at: now(),
        duration_ms: 0,
        request: None,
        resolution: None,
    }
}

/// The log row of a change that applied, and the mail it owes.
fn applied_log(
    change: &ScimChange,
    attempts: i32,
    applied: Applied,
    started: Instant,
) -> (LogRow, Vec<Owed>) {
    let mut row = log_row(change, attempts, "applied");
    row.status = i32::from(applied.status);
    row.response = applied.body.map(|b| b.to_string());
    row.subject = applied.subject;
    row.duration_ms = elapsed_ms(started);
    (row, applied.mail)
}

/// The id and resource of a user create.
fn as_user_create(change: &ScimChange) -> Option<(&str, &Value)> {
    match &change.op {
        ChangeOp::Create {
            kind: ResourceKind::User,
            id,
            resource,
        } => Some((id, resource)),
        _ => None,
    }
}

/// Adds the rows that creating user `id` from `resource` writes.
fn add_user_create(
    rows: &mut UserCreates,
    change: &ScimChange,
    id: &str,
    resource: &Value,
    policy: &Policy,
) -> Result<Applied, ApplyError> {
    let row = new_user_row(&change.org_id, id, resource.clone())?;
    users::email_keys(
        &change.org_id,
        id,
        &email_values(resource),
        &mut rows.emails,
    );
    let mut mail = Vec::new();
    if row.active {
        let invite = Invite {
            org: &change.org_id,
            change_id: &change.change_id,
            policy,
        };
        let owed = invite.rows(&row);
        rows.invitations.push(owed.invitation.clone());
        rows.outbox.push(owed.row.clone());
        mail.push(owed);
    }
    let applied = Applied {
        status: 201,
        subject: Some(row.user_name.clone()),
        body: Some(render_user(&row, &change.base_url)?),
        mail,
    };
    rows.users.push(row);
    Ok(applied)
}

/// On PostgreSQL, changes that are all user creates (most of an initial
/// cycle) are written with their log rows by one statement, outside a
/// transaction: one round trip instead of seven (see [`store::unnest`]).
/// None when they are not all user creates, or when the statement failed:
/// it then wrote nothing, and the caller applies them as usual, which
/// tells a taken userName from a redelivery.
fn user_creates_at_once(
    conn: &mut Conn,
    batch: &[(&ScimChange, i32)],
    policy: &Policy,
) -> Option<Vec<Committed>> {
    let Conn::Pg(c) = conn else {
        return None;
    };
    // Before any row is made: a mixed batch would make invitation tokens
    // for its creates only to drop them.
    if !batch
        .iter()
        .all(|(change, _)| as_user_create(change).is_some())
    {
        return None;
    }
    let started = Instant::now();
    let mut rows = UserCreates::default();
    let mut mail = Vec::with_capacity(batch.len());
    for (change, attempts) in batch {
        let (id, resource) = as_user_create(change)?;
        let applied = add_user_create(&mut rows, change, id, resource, policy).ok()?;
        let (log, owed) = applied_log(change, *attempts, applied, started);
        rows.log.push(log);
        mail.push(owed);
    }
    if let Err(e) = store::unnest::insert_user_creates(c, &rows) {
        tracing::debug!(changes = batch.len(), error = %e, "user creates written apart");
        return None;
    }
    Some(
        rows.log
            .into_iter()
            .zip(mail)
            .map(|(log, mail)| Committed { log, mail })
            .collect(),
    )
}

fn elapsed_ms(since: Instant) -> i64 {
    i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// Inserts the log row; a row already there means a redelivery.
fn insert_log(c: &mut Conn, row: &LogRow) -> Result<(), RolledBack> {
    match log::insert(c, row) {
        Ok(()) => Ok(()),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Err(RolledBack::AlreadyLogged),
        Err(e) => Err(e.into()),
    }
}

/// The outcome an earlier delivery committed.
fn stored_outcome(conn: &mut Conn, change: &ScimChange) -> Result<Committed, store::Error> {
    match log::find(conn, &change.change_id)? {
        Some(done) => Ok(redelivered(done)),
        None => Err(store::Error::Contended),
    }
}

/// A redelivery's result: its mail, if any, is already owed in the outbox
/// and the reconciler sends it.
fn redelivered(log: LogRow) -> Committed {
    Committed {
        log,
        mail: Vec::new(),
    }
}

/// What became of changes applied together by [`apply_together`].
pub enum Together {
    /// Every change committed, in one transaction.
    Committed(Vec<Committed>),
    /// Nothing was written, because one of the changes is rejected,
    /// collides with another write or was delivered before: apply each on
    /// its own with [`apply_once`], and each ends as it would have alone.
    /// The reason is for the log.
    Apart(&'static str),
    /// Nothing was written, and the database failed for a reason that may
    /// pass (a lost connection, a deadlock, a busy file): try again later.
    Failed(store::Error),
}

/// Why a batch did not commit together.
enum Apart {
    /// One change is at fault: apply them one by one.
    OneByOne(&'static str),
    /// The database failed for a passing reason.
    Failed(store::Error),
}

impl From<diesel::result::Error> for Apart {
    fn from(e: diesel::result::Error) -> Self {
        Apart::from(store::Error::Query(e))
    }
}

impl From<store::Error> for Apart {
    /// A collision is one change's (a redelivered create whose name was
    /// changed since, a member deleted meanwhile, a row another lane
    /// changed): the others must not wait for it, nor fail with it.
    fn from(e: store::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as Kind, Error as Diesel};
        match e {
            store::Error::Query(Diesel::DatabaseError(
                Kind::UniqueViolation | Kind::ForeignKeyViolation,
                _,
            ))
            | store::Error::Contended => Apart::OneByOne(
                "a write collided (a duplicate, a redelivery or a concurrent change)",
            ),
            e if e.is_transient() => Apart::Failed(e),
            _ => Apart::OneByOne("the database refused a write"),
        }
    }
}

impl From<ApplyError> for Apart {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Rejected(_) => Apart::OneByOne("a change is rejected"),
            ApplyError::Store(e) => Apart::from(e),
        }
    }
}

/// Applies `batch` in one transaction, the user creates among them with
/// one insert per table (one statement on PostgreSQL; SQLite, in process,
/// takes rows with defaults one at a time). The changes of a batch were
/// all in flight at once (no client waited for one before sending
/// another), so any order is one they could have had.
pub fn apply_together(conn: &mut Conn, batch: &[(&ScimChange, i32)], policy: &Policy) -> Together {
    if let Some(written) = user_creates_at_once(conn, batch, policy) {
        return Together::Committed(written);
    }
    let started = Instant::now();
    let outcome = conn.transaction::<_, Apart, _>(|c| {
        let mut done: Vec<Option<(Applied, i32)>> = Vec::with_capacity(batch.len());
        done.resize_with(batch.len(), || None);
        // User creates first, together: nothing else in the batch can
        // depend on them being absent, and a group may name them.
        let mut creates = UserCreates::default();
        for (i, (change, attempts)) in batch.iter().enumerate() {
            let Some((id, resource)) = as_user_create(change) else {
                continue;
            };
            let applied = add_user_create(&mut creates, change, id, resource, policy)?;
            done[i] = Some((applied, *attempts));
        }
        if !creates.users.is_empty() {
            if users::insert_all_if_free(c, &creates.users)? != creates.users.len() {
                return Err(Apart::OneByOne("a userName or id is taken"));
            }
            users::insert_email_keys(c, &creates.emails)?;
            invitations::insert_all(c, &creates.invitations)?;
            outbox::insert_all(c, &creates.outbox)?;
        }
        for (i, (change, attempts)) in batch.iter().enumerate() {
            if done[i].is_none() {
                done[i] = Some((apply_op(c, change, policy)?, *attempts));
            }
        }
        let mut logs = Vec::with_capacity(batch.len());
        let mut mail = Vec::with_capacity(batch.len());
        for ((change, _), slot) in batch.iter().zip(done) {
            let Some((applied, attempts)) = slot else {
                return Err(Apart::OneByOne("a change was not applied"));
            };
            let (row, owed) = applied_log(change, attempts, applied, started);
            logs.push(row);
            mail.push(owed);
        }
        log::insert_all(c, &logs)?;
        let mut committed: Vec<Committed> = logs
            .into_iter()
            .zip(mail)
            .map(|(log, mail)| Committed { log, mail })
            .collect();
        withdraw_revoked_welcomes(c, batch, &mut committed)?;
        Ok(committed)
    });
    match outcome {
        Ok(all) => Together::Committed(all),
        Err(Apart::OneByOne(why)) => Together::Apart(why),
        Err(Apart::Failed(e)) => Together::Failed(e),
    }
}

/// A welcome that one change of a batch issued and a later change of the
/// same batch revoked (the user deactivated or deleted) is not owed: it is
/// cancelled in the batch's transaction, as a send job would cancel it.
/// Only users that two changes of the batch name are looked at.
fn withdraw_revoked_welcomes(
    c: &mut Conn,
    batch: &[(&ScimChange, i32)],
    committed: &mut [Committed],
) -> Result<(), Apart> {
    for (i, (change, _)) in batch.iter().enumerate() {
        let named_again = batch[i + 1..]
            .iter()
            .any(|(later, _)| later.op.id() == change.op.id());
        if !named_again || committed[i].mail.is_empty() {
            continue;
        }
        let mut kept = Vec::new();
        for owed in std::mem::take(&mut committed[i].mail) {
            let live = invitations::find(c, &owed.invitation.id)?
                .is_some_and(|inv| inv.revoked_at.is_none() && inv.used_at.is_none());
            if live {
                kept.push(owed);
            } else {
                outbox::finish(
                    c,
                    &owed.row.id,
                    owed.row.locked_until,
                    "cancelled",
                    "the invitation was revoked before it was sent",
                    &owed.row.payload,
                )?;
            }
        }
        committed[i].mail = kept;
    }
    Ok(())
}

/// Records a change that could not be applied at all, unless an outcome
/// was committed meanwhile.
pub fn record_dead_once(
    conn: &mut Conn,
    change: &ScimChange,
    attempts: i32,
    transient: bool,
    error: &str,
) -> Result<LogRow, store::Error> {
    conn.transaction::<LogRow, store::Error, _>(|c| {
        if let Some(done) = log::find(c, &change.change_id)? {
            return Ok(done);
        }
        let status: u16 = if transient { 503 } else { 500 };
        let answer = ScimError::new(
            status,
            None,
            format!(
                "the change could not be applied after {attempts} attempts and was recorded as dead; \
                 send it again later, or ask an operator to retry change {}",
                change.change_id
            ),
        );
        let row = LogRow {
            change_id: change.change_id.clone(),
            org_id: change.org_id.clone(),
            operation: change.op.name().to_owned(),
            resource_type: kind_name(change.op.kind()).to_owned(),
            resource_id: Some(change.op.id().to_owned()),
            subject: subject_of(&change.op),
            outcome: "dead".into(),
            status: i32::from(status),
            response: Some(answer.to_json().to_string()),
            error: Some(error.to_owned()),
            attempts,
            received_at: change.received_at.naive_utc(),
            applied_at: now(),
            duration_ms: 0,
            request: serde_json::to_string(change).ok(),
            resolution: None,
        };
        log::insert(c, &row)?;
        Ok(row)
    })
}

/// Records as dead a queued change this release cannot read, from what
/// its JSON still says (`change_id` and `org_id` at least), unless an
/// outcome was committed meanwhile. The JSON is kept as its request.
pub fn record_unreadable_once(
    conn: &mut Conn,
    unreadable: &crate::jobs::queue::Unreadable,
    change_id: &str,
    org_id: &str,
) -> Result<LogRow, store::Error> {
    let json: Value = serde_json::from_str(unreadable.json.get()).unwrap_or(Value::Null);
    let op = &json["op"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    conn.transaction::<LogRow, store::Error, _>(|c| {
        if let Some(done) = log::find(c, change_id)? {
            return Ok(done);
        }
        let answer = ScimError::new(
            500,
            None,
            format!(
                "the queued change could not be read by this release of scimsync and was \
                 recorded as dead; send it again (change {change_id})"
            ),
        );
        let resource_type = match op["kind"].as_str() {
            Some(k) if k.eq_ignore_ascii_case("user") => "User",
            Some(k) if k.eq_ignore_ascii_case("group") => "Group",
            _ => "unknown",
        };
        let at = now();
        let row = LogRow {
            change_id: change_id.to_owned(),
            org_id: org_id.to_owned(),
            operation: text(&op["op"]).unwrap_or_else(|| "unknown".into()),
            resource_type: resource_type.to_owned(),
            resource_id: text(&op["id"]),
            subject: None,
            outcome: "dead".into(),
            status: 500,
            response: Some(answer.to_json().to_string()),
            error: Some(format!("unreadable job: {}", unreadable.error)),
            attempts: 1,
            received_at: json["received_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(at, |t| t.naive_utc()),
            applied_at: at,
            duration_ms: 0,
            request: Some(unreadable.json.get().to_owned()),
            resolution: None,
        };
        log::insert(c, &row)?;
        Ok(row)
    })
}

pub fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::User => "User",
        ResourceKind::Group => "Group",
    }
}

/// The userName or displayName a change names, for the log.
fn subject_of(op: &ChangeOp) -> Option<String> {
    let resource = match op {
        ChangeOp::Create { resource, .. } | ChangeOp::Replace { resource, .. } => resource,
        _ => return None,
    };
    ["userName", "displayName"]
        .iter()
        .find_map(|k| resource.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

fn apply_op(c: &mut Conn, change: &ScimChange, policy: &Policy) -> Result<Applied, ApplyError> {
    let org = change.org_id.as_str();
    let base = change.base_url.as_str();
    let mut mail = Vec::new();
    let invite = Invite {
        org,
        change_id: &change.change_id,
        policy,
    };
    match &change.op {
        ChangeOp::Create {
            kind: ResourceKind::User,
            id,
            resource,
        } => {
            let row = new_user_row(org, id, resource.clone())?;
            if !users::insert_if_free(c, &row)? {
                // Says who holds the name; a redelivery finds its own
                // user here, and its stored outcome then wins.
                ensure_user_name_free(c, org, &row.user_name_key, &row.user_name, None)?;
                return Err(ScimError::conflict(format!("user id {id} is already taken")).into());
            }
            users::add_emails(c, org, id, &email_values(resource))?;
            if row.active {
                mail.push(invite.issue(c, &row)?);
            }
            Ok(Applied {
                status: 201,
                subject: Some(row.user_name.clone()),
                body: Some(render_user(&row, base)?),
                mail,
            })
        }
        ChangeOp::Create {
            kind: ResourceKind::Group,
            id,
            resource,
        } => {
            let member_ids = group_member_ids(resource)?;
            let row = new_team_row(org, id, resource.clone())?;
            ensure_team_name_free(c, org, &row.display_name_key, &row.display_name, None)?;
            teams::insert(c, &row)?;
            add_members(c, org, id, &member_ids)?;
            Ok(Applied {
                status: 201,
                subject: Some(row.display_name.clone()),
                body: Some(render_team(c, &row, base)?),
                mail,
            })
        }
        ChangeOp::Replace {
            kind: ResourceKind::User,
            id,
            resource,
            if_match,
        } => {
            let old = find_user(c, org, id, false)?;
            check_version(if_match.as_deref(), old.version)?;
            let row = update_user(c, &old, resource.clone())?;
            mail.extend(invite.on_transition(c, &old, &row)?);
            Ok(Applied {
                status: 200,
                subject: Some(row.user_name.clone()),
                body: Some(render_user(&row, base)?),
                mail,
            })
        }
        ChangeOp::Replace {
            kind: ResourceKind::Group,
            id,
            resource,
            if_match,
        } => {
            let old = find_team(c, org, id, false)?;
            check_version(if_match.as_deref(), old.version)?;
            let member_ids = group_member_ids(resource)?;
            let mut row = new_team_row(org, id, resource.clone())?;
            ensure_team_name_free(c, org, &row.display_name_key, &row.display_name, Some(id))?;
            // PUT replaces the whole resource, members included (RFC 7644
            // §3.5.1); members who stay keep their rows, and a PUT that
            // changes nothing keeps the version, as a user's does.
            let members_changed = replace_members(c, org, id, &member_ids)?;
            let row = if row.resource != old.resource {
                row.created_at = old.created_at;
                row.version = old.version + 1;
                if !teams::update(c, &row, old.version)? {
                    return Err(ApplyError::Store(store::Error::Contended));
                }
                row
            } else if members_changed {
                teams::bump_version(c, org, id)?;
                find_team(c, org, id, false)?
            } else {
                old
            };
            Ok(Applied {
                status: 200,
                subject: Some(row.display_name.clone()),
                body: Some(render_team(c, &row, base)?),
                mail,
            })
        }
        ChangeOp::Patch {
            kind: ResourceKind::User,
            id,
            body,
            if_match,
        } => {
            let old = find_user(c, org, id, false)?;
            check_version(if_match.as_deref(), old.version)?;
            let ops = parse_patch(body)?;
            let mut resource = stored_resource(&old.resource)?;
            let before = resource.clone();
            apply_patch(ResourceKind::User, &mut resource, &ops)?;
            if resource == before {
                // Entra re-sends unchanged values every cycle; a no-op
                // keeps the version (and ETag) as it was.
                return Ok(Applied {
                    status: 200,
                    subject: Some(old.user_name.clone()),
                    body: Some(render_user(&old, base)?),
                    mail,
                });
            }
            let row = update_user(c, &old, resource)?;
            mail.extend(invite.on_transition(c, &old, &row)?);
            Ok(Applied {
                status: 200,
                subject: Some(row.user_name.clone()),
                body: Some(render_user(&row, base)?),
                mail,
            })
        }
        ChangeOp::Patch {
            kind: ResourceKind::Group,
            id,
            body,
            if_match,
        } => {
            let old = find_team(c, org, id, false)?;
            check_version(if_match.as_deref(), old.version)?;
            let ops = parse_patch(body)?;
            let mut resource = stored_resource(&old.resource)?;
            let before = resource.clone();
            let member_changes = apply_patch(ResourceKind::Group, &mut resource, &ops)?;
            let mut changed = false;
            if resource != before {
                let mut row = new_team_row(org, id, resource)?;
                ensure_team_name_free(c, org, &row.display_name_key, &row.display_name, Some(id))?;
                row.created_at = old.created_at;
                row.version = old.version + 1;
                if !teams::update(c, &row, old.version)? {
                    return Err(ApplyError::Store(store::Error::Contended));
                }
                changed = true;
            }
            // Operations that may undo each other (an add and a remove of
            // one user, as Microsoft's validator sends) are judged by the
            // members they touch before and after, not step by step; one
            // operation alone never needs the extra reads.
            let touched = undoable_member_ids(&member_changes);
            let before = match &touched {
                Some(ids) => Some(teams::members_among(c, id, ids)?),
                None => None,
            };
            let mut members_changed = false;
            for mc in &member_changes {
                members_changed |= match mc {
                    MemberChange::Add(ids) => add_members(c, org, id, ids)? > 0,
                    MemberChange::Remove(ids) => teams::remove_members(c, id, ids)? > 0,
                    MemberChange::RemoveAll => teams::remove_all_members(c, id)? > 0,
                    MemberChange::ReplaceAll(ids) => replace_members(c, org, id, ids)?,
                };
            }
            if let (Some(ids), Some(before)) = (&touched, before) {
                members_changed = teams::members_among(c, id, ids)? != before;
            }
            if members_changed && !changed {
                teams::bump_version(c, org, id)?;
            }
            // Entra ID asks for 204 on group PATCH: a body listing every
            // member would be large and is not read.
            Ok(Applied {
                status: 204,
                subject: Some(old.display_name.clone()),
                body: None,
                mail,
            })
        }
        ChangeOp::Delete {
            kind: ResourceKind::User,
            id,
            if_match,
        } => {
            let old = find_user(c, org, id, true)?;
            check_version(if_match.as_deref(), old.version)?;
            invitations::revoke_pending(c, id)?;
            teams::bump_versions_of_member(c, org, id)?;
            users::delete(c, org, id)?;
            Ok(Applied {
                status: 204,
                subject: Some(old.user_name),
                body: None,
                mail,
            })
        }
        ChangeOp::Delete {
            kind: ResourceKind::Group,
            id,
            if_match,
        } => {
            let old = find_team(c, org, id, true)?;
            check_version(if_match.as_deref(), old.version)?;
            teams::delete(c, org, id)?;
            Ok(Applied {
                status: 204,
                subject: Some(old.display_name),
                body: None,
                mail,
            })
        }
    }
}

fn stored_resource(text: &str) -> Result<Value, ApplyError> {
    serde_json::from_str(text).map_err(|e| {
        ApplyError::Store(store::Error::Corrupt(format!(
            "stored resource is not JSON: {e}"
        )))
    })
}

fn check_version(if_match: Option<&str>, version: i64) -> Result<(), ScimError> {
    match if_match {
        None => Ok(()),
        Some(tags) if render::etag_matches(tags, version) => Ok(()),
        Some(_) => Err(ScimError::new(
            412,
            Some(ScimType::InvalidVers),
            format!(
                "If-Match does not match the current version {}; GET the resource and retry with its meta.version",
                render::etag(version)
            ),
        )),
    }
}

/// The user a change writes, locked for it (see [`users::find_locked`]).
fn find_user(c: &mut Conn, org: &str, id: &str, deleting: bool) -> Result<UserRow, ApplyError> {
    users::find_locked(c, org, id, deleting)?
        .ok_or_else(|| ScimError::not_found(format!("User {id} not found")).into())
}

/// The group a change writes, locked for it (see [`teams::find_locked`]).
fn find_team(c: &mut Conn, org: &str, id: &str, deleting: bool) -> Result<TeamRow, ApplyError> {
    teams::find_locked(c, org, id, deleting)?
        .ok_or_else(|| ScimError::not_found(format!("Group {id} not found")).into())
}

fn ensure_user_name_free(
    c: &mut Conn,
    org: &str,
    key: &str,
    user_name: &str,
    except: Option<&str>,
) -> Result<(), ApplyError> {
    match users::find_by_user_name_key(c, org, key)? {
        Some(other) if Some(other.id.as_str()) != except => Err(ScimError::conflict(format!(
            "userName \"{user_name}\" is already taken by user {} (userName is compared case-insensitively)",
            other.id
        ))
        .into()),
        _ => Ok(()),
    }
}

fn ensure_team_name_free(
    c: &mut Conn,
    org: &str,
    key: &str,
    display_name: &str,
    except: Option<&str>,
) -> Result<(), ApplyError> {
    match teams::find_by_display_name_key(c, org, key)? {
        Some(other) if Some(other.id.as_str()) != except => Err(ScimError::conflict(format!(
            "a group named \"{display_name}\" already exists ({}); group displayName is unique per organization, compared case-insensitively",
            other.id
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Adds members after checking that each is a user of this organization.
fn add_members(
    c: &mut Conn,
    org: &str,
    team_id: &str,
    ids: &[String],
) -> Result<usize, ApplyError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let found = users::existing_ids(c, org, ids)?;
    let missing: Vec<&str> = ids
        .iter()
        .filter(|id| !found.contains(id))
        .map(String::as_str)
        .take(5)
        .collect();
    if !missing.is_empty() {
        return Err(ScimError::bad_request(
            ScimType::InvalidValue,
            format!(
                "members must be ids of users of this organization; unknown: {}",
                missing.join(", ")
            ),
        )
        .into());
    }
    Ok(teams::add_members(c, org, team_id, ids)?)
}

/// The row that creating user `id` from `resource` writes (the bulk
/// seeding of `scimsync bench-scaling` writes the same).
pub(crate) fn new_user_row(org: &str, id: &str, resource: Value) -> Result<UserRow, ScimError> {
    let fields = user_fields(&resource)?;
    require_email(&fields)?;
    let at = now();
    Ok(UserRow {
        id: id.to_owned(),
        org_id: org.to_owned(),
        user_name_key: fields.user_name.to_lowercase(),
        user_name: fields.user_name,
        external_id: fields.external_id,
        display_name_key: fields.display_name.as_ref().map(|d| d.to_lowercase()),
        display_name: fields.display_name,
        email: fields.email,
        active: fields.active,
        resource: resource.to_string(),
        version: 1,
        created_at: at,
        updated_at: at,
        joined_at: None,
    })
}

/// The users named by several member adds and removes, whose net effect
/// may be nothing; None for a single operation, or when one of them
/// replaces or removes all members (those judge their own effect).
fn undoable_member_ids(changes: &[MemberChange]) -> Option<Vec<String>> {
    if changes.len() < 2 {
        return None;
    }
    let mut ids = std::collections::BTreeSet::new();
    for change in changes {
        match change {
            MemberChange::Add(named) | MemberChange::Remove(named) => {
                ids.extend(named.iter().cloned());
            }
            MemberChange::RemoveAll | MemberChange::ReplaceAll(_) => return None,
        }
    }
    Some(ids.into_iter().collect())
}

/// Makes `ids` the team's members, touching only the memberships that
/// change (those kept keep when they began); returns whether any did. A
/// replace with the members the team has changes nothing, version included
/// (RFC 7644 §3.5.2).
fn replace_members(
    c: &mut Conn,
    org: &str,
    team: &str,
    ids: &[String],
) -> Result<bool, ApplyError> {
    let current: std::collections::HashSet<String> = teams::members(c, team)?
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    let wanted: std::collections::HashSet<&String> = ids.iter().collect();
    let gone: Vec<String> = current
        .iter()
        .filter(|m| !wanted.contains(m))
        .cloned()
        .collect();
    let new: Vec<String> = ids
        .iter()
        .filter(|m| !current.contains(*m))
        .cloned()
        .collect();
    let removed = if gone.is_empty() {
        0
    } else {
        teams::remove_members(c, team, &gone)?
    };
    let added = if new.is_empty() {
        0
    } else {
        add_members(c, org, team, &new)?
    };
    Ok(removed > 0 || added > 0)
}

/// Writes a new version of a user from `resource`, keeping what the
/// document does not carry (creation time, joined state).
///
/// A PUT that omits `active` or sends it null, or a PATCH that removes it,
/// leaves `active` unassigned in the representation (RFC 7644 §3.5.2.2)
/// and the user's state as it was: only an explicit `active` changes who
/// can sign in. (Giving it the default that creation uses, true, would let
/// a deactivated user back in.)
fn update_user(c: &mut Conn, old: &UserRow, mut resource: Value) -> Result<UserRow, ApplyError> {
    let assigned = assigns_active(&mut resource);
    let mut row = new_user_row(&old.org_id, &old.id, resource)?;
    if !assigned {
        row.active = old.active;
    }
    if row.resource == old.resource && row.active == old.active {
        // A PUT of what is stored changes nothing, version included.
        return Ok(old.clone());
    }
    ensure_user_name_free(
        c,
        &old.org_id,
        &row.user_name_key,
        &row.user_name,
        Some(&old.id),
    )?;
    row.created_at = old.created_at;
    row.joined_at = old.joined_at;
    row.version = old.version + 1;
    if !users::update(c, &row, old.version)? {
        return Err(ApplyError::Store(store::Error::Contended));
    }
    let stored: Value = serde_json::from_str(&row.resource).unwrap_or(Value::Null);
    users::set_emails(c, &old.org_id, &old.id, &email_values(&stored))?;
    Ok(row)
}

/// Whether `resource` assigns `active` (a null does not); drops a null
/// `active`, which means the same as none.
fn assigns_active(resource: &mut Value) -> bool {
    let Some(obj) = resource.as_object_mut() else {
        return false;
    };
    let given = obj
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("active") && !v.is_null());
    if !given {
        obj.retain(|k, _| !k.eq_ignore_ascii_case("active"));
    }
    given
}

/// The `value` of each element of a user's `emails`.
pub(crate) fn email_values(resource: &Value) -> Vec<String> {
    resource
        .get("emails")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|e| e.get("value").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Welcome invitations owed by user changes.
struct Invite<'a> {
    org: &'a str,
    change_id: &'a str,
    policy: &'a Policy,
}

impl Invite<'_> {
    /// Writes an invitation and the outbox row that mails it.
    fn issue(&self, c: &mut Conn, user: &UserRow) -> Result<Owed, ApplyError> {
        let owed = self.rows(user);
        invitations::insert(c, &owed.invitation)?;
        outbox::insert(c, &owed.row)?;
        Ok(owed)
    }

    /// The invitation for `user` and the outbox row that mails it, claimed
    /// for the worker that commits them.
    fn rows(&self, user: &UserRow) -> Owed {
        let token = crate::ops::tokens::random_secret("inv_");
        let at = now();
        let recipient = user.email.clone().unwrap_or_default();
        let invitation = InvitationRow {
            id: ulid::Ulid::new().to_string(),
            org_id: self.org.to_owned(),
            user_id: user.id.clone(),
            token_hash: crate::ops::tokens::hash_token(&token),
            email: recipient.clone(),
            created_at: at,
            expires_at: at + self.policy.invitation_ttl,
            used_at: None,
            revoked_at: None,
        };
        // The clear token lives only here, until the message is sent.
        let payload = serde_json::json!({
            "invitation_id": invitation.id,
            "user_id": user.id,
            "token": token,
            "person": crate::jobs::mail::greeting_name(user),
        });
        let row = OutboxRow::claimed(
            self.org,
            "welcome",
            Some(self.change_id),
            &recipient,
            payload.to_string(),
            self.policy.send_lease,
        );
        Owed { row, invitation }
    }

    /// Deactivation revokes pending invitations; activating a user who
    /// never joined and has none pending issues a fresh one. A new email
    /// address while an invitation is pending revokes it and issues one to
    /// the new address: whoever reads the old mailbox must not join as the
    /// user, and a welcome still owed there is cancelled when its turn
    /// comes.
    fn on_transition(
        &self,
        c: &mut Conn,
        old: &UserRow,
        new: &UserRow,
    ) -> Result<Option<Owed>, ApplyError> {
        if !new.active {
            if old.active {
                invitations::revoke_pending(c, &new.id)?;
            }
            return Ok(None);
        }
        if !old.active && new.joined_at.is_none() && !invitations::has_pending(c, &new.id)? {
            return Ok(Some(self.issue(c, new)?));
        }
        let moved = !old
            .email
            .as_deref()
            .map(str::to_lowercase)
            .eq(&new.email.as_deref().map(str::to_lowercase));
        if old.active && moved && new.joined_at.is_none() && invitations::has_pending(c, &new.id)? {
            invitations::revoke_pending(c, &new.id)?;
            if new.email.is_some() {
                return Ok(Some(self.issue(c, new)?));
            }
        }
        Ok(None)
    }
}

/// The row that creating group `id` from `resource` writes; members are
/// not part of it.
pub(crate) fn new_team_row(org: &str, id: &str, mut resource: Value) -> Result<TeamRow, ScimError> {
    let fields = group_fields(&resource)?;
    // Members live in team_members, not in the stored document.
    if let Some(obj) = resource.as_object_mut() {
        obj.remove("members");
    }
    let at = now();
    Ok(TeamRow {
        id: id.to_owned(),
        org_id: org.to_owned(),
        display_name_key: fields.display_name.to_lowercase(),
        display_name: fields.display_name,
        external_id: fields.external_id,
        resource: resource.to_string(),
        version: 1,
        created_at: at,
        updated_at: at,
    })
}

/// The SCIM representation of a stored user.
///
/// `active` is shown as assigned: a create that left it out, a PUT that
/// omitted it or a PATCH that removed it leaves it unassigned, and absent
/// (RFC 7644 §3.5.2.2), while the row keeps the state that access follows
/// (see [`matches_user`]).
pub fn render_user(row: &UserRow, base: &str) -> Result<Value, store::Error> {
    let resource: Value = serde_json::from_str(&row.resource)
        .map_err(|e| store::Error::Corrupt(format!("stored user {} is not JSON: {e}", row.id)))?;
    Ok(render::resource(
        resource,
        &render::Meta {
            kind: ResourceKind::User,
            id: &row.id,
            created: row.created_at,
            last_modified: row.updated_at,
            version: row.version,
            base_url: base,
        },
    ))
}

/// Whether a rendered user matches `filter`, its `active` taken from the
/// row when the representation leaves it unassigned: the same state that
/// `active eq ...` finds in SQL, and that sign-in follows.
pub fn matches_user(filter: &crate::scim::filter::Filter, resource: &Value, active: bool) -> bool {
    use crate::scim::filter::matches;
    if resource.get("active").is_some_and(|a| !a.is_null()) {
        return matches(filter, ResourceKind::User, resource);
    }
    let mut seen = resource.clone();
    if let Some(obj) = seen.as_object_mut() {
        obj.insert("active".to_owned(), Value::Bool(active));
    }
    matches(filter, ResourceKind::User, &seen)
}

/// The SCIM representation of a stored team, with its members.
pub fn render_team(c: &mut Conn, row: &TeamRow, base: &str) -> Result<Value, store::Error> {
    let members = teams::members(c, &row.id)?;
    render_team_with(row, base, Some(&members))
}

/// The SCIM representation of a stored team; `members: None` leaves them out.
pub fn render_team_with(
    row: &TeamRow,
    base: &str,
    members: Option<&[teams::Member]>,
) -> Result<Value, store::Error> {
    let resource: Value = serde_json::from_str(&row.resource)
        .map_err(|e| store::Error::Corrupt(format!("stored group {} is not JSON: {e}", row.id)))?;
    let refs: Option<Vec<MemberRef<'_>>> =
        members.map(|ms| ms.iter().map(|m| MemberRef { id: &m.user_id }).collect());
    let mut out = render::resource(
        resource,
        &render::Meta {
            kind: ResourceKind::Group,
            id: &row.id,
            created: row.created_at,
            last_modified: row.updated_at,
            version: row.version,
            base_url: base,
        },
    );
    if let Some(refs) = refs {
        render::set_members(&mut out, &refs, base);
    }
    Ok(out)
}
