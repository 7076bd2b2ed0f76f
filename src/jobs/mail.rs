//! The mail job: send one outbox row, exactly when it is still owed.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use super::queue::{Job, Queued};
use super::together::Together;
use crate::config::Settings;
use crate::email::templates::{self, Digest, FailureLine, Welcome};
use crate::email::transport::CLAIM_LEFT_TO_SEND;
use crate::email::{Email, SendError, Transport};
use crate::reconcile::Owed;
use crate::store::outbox::{self, OutboxRow};
use crate::store::{self, Store, invitations, now, orgs, users};

/// Send the outbox row `outbox_id`. The row, not the job, is the record:
/// a job for a row that is sent, being sent, or no longer owed does nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendMail {
    pub outbox_id: String,
    /// Unique per push, so a row can be queued again after a lost job.
    pub job_id: String,
}

impl SendMail {
    pub fn new(outbox_id: &str) -> Self {
        SendMail {
            outbox_id: outbox_id.to_owned(),
            job_id: ulid::Ulid::new().to_string(),
        }
    }
}

impl Job for SendMail {
    fn job_id(&self) -> String {
        self.job_id.clone()
    }
}

/// What the mail workers of a process share.
pub struct MailState {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub transport: Arc<Transport>,
    /// Base of invitation links, e.g. `https://scim.example.com`.
    pub public_url: String,
    /// Organizations as welcomes name them, read at most once a minute.
    pub orgs: OrgNames,
    /// Records what was sent, several sends to a statement.
    pub sent: SentMarks,
}

/// Records sent mail in the outbox. The sends that finish while one
/// record is being written share the next: under load one UPDATE marks a
/// burst of welcomes instead of one each. Each send still waits until its
/// own row is marked, so a send that reports success is on record.
pub struct SentMarks {
    marks: Together<outbox::Sent, Result<(), store::Error>>,
}

impl SentMarks {
    /// Most sends one statement marks.
    const MOST: usize = 64;

    /// Starts the writer on the current runtime; it ends with the last
    /// handle.
    pub fn start(store: Store) -> Self {
        let marks = Together::start(Self::MOST, move |sent: Vec<outbox::Sent>| {
            let store = store.clone();
            async move {
                let n = sent.len();
                let written = store
                    .run_write(move |c| outbox::mark_all_sent(c, &sent).map_err(store::Error::from))
                    .await;
                (0..n)
                    .map(|_| written.as_ref().map(|_| ()).map_err(store::Error::shared))
                    .collect()
            }
        });
        SentMarks { marks }
    }

    /// Marks the row `sent` names sent, while its claim holds.
    pub async fn record(&self, sent: outbox::Sent) -> Result<(), store::Error> {
        self.marks
            .call(sent)
            .await
            .unwrap_or(Err(store::Error::Cancelled))
    }
}

/// Organizations read recently, so that sending a welcome right after its
/// change commits reads nothing: a renamed organization shows in welcomes
/// within a minute.
#[derive(Debug, Default)]
pub struct OrgNames {
    read: std::sync::Mutex<std::collections::HashMap<String, (orgs::Org, std::time::Instant)>>,
}

impl OrgNames {
    const FOR: Duration = Duration::from_secs(60);

    fn get(&self, id: &str) -> Option<orgs::Org> {
        let read = self.read.lock().ok()?;
        let (org, at) = read.get(id)?;
        (at.elapsed() < Self::FOR).then(|| org.clone())
    }

    fn put(&self, org: &orgs::Org) {
        if let Ok(mut read) = self.read.lock() {
            read.insert(org.id.clone(), (org.clone(), std::time::Instant::now()));
        }
    }
}

impl MailState {
    /// The organization `id`, from [`OrgNames`] or the database.
    async fn org(&self, id: &str) -> Result<Option<orgs::Org>, store::Error> {
        if let Some(org) = self.orgs.get(id) {
            return Ok(Some(org));
        }
        let id = id.to_owned();
        let org = self
            .store
            .run(move |c| orgs::find(c, &id).map_err(store::Error::from))
            .await?;
        if let Some(org) = &org {
            self.orgs.put(org);
        }
        Ok(org)
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// Transient failure; another attempt is scheduled.
    Retrying,
    Failed,
    /// No longer owed (invitation revoked, used or expired; user deleted).
    Cancelled,
    /// Not ours to send now: done already, or another worker has it.
    Skipped,
}

/// The apalis handler.
pub async fn handle(job: Queued<SendMail>, state: Data<Arc<MailState>>) -> Result<(), BoxDynError> {
    let outbox_id = match job {
        Queued::Job(job) => job.outbox_id,
        // The outbox row is the record: its id is all a send needs. Without
        // one, the row's lease runs out and the reconciler queues it again.
        Queued::Unreadable(unreadable) => match unreadable.field("outbox_id") {
            Some(id) => id,
            None => {
                tracing::error!(error = %unreadable.error, "a queued email job cannot be read and names no outbox row; dropping it");
                return Err(AbortError::new(std::io::Error::other(unreadable.error)).into());
            }
        },
    };
    deliver(&state, &outbox_id).await?;
    Ok(())
}

/// Claims, renders, sends and records one outbox row.
pub async fn deliver(state: &MailState, outbox_id: &str) -> Result<Delivery, store::Error> {
    let lease = chrono::TimeDelta::seconds(secs(state.settings.reconciler.send_lease_secs));
    let id = outbox_id.to_owned();
    // The claim and what a welcome needs from the database, in one trip
    // to the blocking pool: this runs once for every user provisioned.
    let Some((row, facts)) = state
        .store
        .run_write(move |c| {
            let Some(row) = outbox::claim(c, &id, lease)? else {
                return Ok(None);
            };
            let facts = match row.kind.as_str() {
                "welcome" => Some(WelcomeFacts::load(c, &row)?),
                _ => None,
            };
            Ok::<_, store::Error>(Some((row, facts)))
        })
        .await?
    else {
        return Ok(Delivery::Skipped);
    };
    send_claimed(state, row, facts).await
}

/// Sends a welcome that the change just committed in this process wrote
/// already claimed, with what that change knows: the invitation is the one
/// it wrote, and the person's name travels in the row. Only the
/// organization is read (once a minute per organization and process).
pub async fn send_owed(state: &MailState, owed: Owed) -> Result<Delivery, store::Error> {
    // The claim runs from the commit. A send that could outlast what is
    // left of it could overlap with the reconciler's re-drive once it runs
    // out, and the mail would go out twice: then leave the row to that
    // re-drive instead.
    let needed = chrono::TimeDelta::from_std(CLAIM_LEFT_TO_SEND).unwrap_or(chrono::TimeDelta::MAX);
    let left = owed.row.locked_until.map(|until| until - now());
    if left.is_none_or(|left| left < needed) {
        tracing::info!(outbox_id = %owed.row.id, "welcome claimed too long ago to send now; the reconciler will queue it");
        return Ok(Delivery::Skipped);
    }
    let org = state.org(&owed.row.org_id).await?;
    let facts = WelcomeFacts {
        person: payload_person(&owed.row.payload),
        invitation: Some(owed.invitation),
        org,
        user_exists: true,
    };
    send_claimed(state, owed.row, Some(facts)).await
}

/// Hands a row this process claimed but will not send back to the queue,
/// for any worker: unclaimed, then a send job pushed. A failure of either
/// step leaves the row to the reconciler.
pub async fn hand_back(
    store: &Store,
    queue: &super::Queue<SendMail>,
    row: &OutboxRow,
    queued_for: chrono::TimeDelta,
) {
    let outbox_id = row.id.as_str();
    let (id, held) = (row.id.clone(), row.locked_until);
    let unclaimed = store
        .run_write(move |c| outbox::unclaim(c, &id, held, queued_for).map_err(store::Error::from))
        .await;
    if let Err(e) = unclaimed {
        tracing::warn!(outbox_id, error = %e, "could not hand back a welcome; the reconciler will queue it once its claim runs out");
        return;
    }
    // If this push is lost the reconciler queues the row again.
    if let Err(e) = queue.push(&SendMail::new(outbox_id), 3).await {
        tracing::warn!(
            outbox_id,
            error = format!("{e:#}"),
            "could not queue mail; the reconciler will"
        );
    }
}

/// The greeting name written into a welcome's payload.
fn payload_person(payload: &str) -> Option<String> {
    let payload: Value = serde_json::from_str(payload).ok()?;
    payload.get("person")?.as_str().map(str::to_owned)
}

/// Renders, sends and records a row this process has claimed.
async fn send_claimed(
    state: &MailState,
    row: OutboxRow,
    facts: Option<WelcomeFacts>,
) -> Result<Delivery, store::Error> {
    let span =
        tracing::info_span!("mail", outbox_id = %row.id, kind = %row.kind, attempt = row.attempts);
    let rendered = render(state, &row, facts);
    let (email, sent_payload) = match rendered {
        Rendered::Send(email, payload) => (email, payload),
        Rendered::Cancel(reason) => {
            tracing::info!(parent: &span, %reason, "mail no longer owed");
            finish(state, &row, "cancelled", &reason).await?;
            return Ok(Delivery::Cancelled);
        }
    };
    match state.transport.send(&email).await {
        Ok(said) => {
            tracing::info!(parent: &span, server = %said, "mail sent");
            let sent = outbox::Sent {
                id: row.id.clone(),
                held: row.locked_until,
                payload: sent_payload,
            };
            record_sent(state, sent).instrument(span).await?;
            Ok(Delivery::Sent)
        }
        Err(e)
            if e.is_transient()
                && row.attempts
                    < i32::try_from(state.settings.mail.max_attempts).unwrap_or(i32::MAX) =>
        {
            let delay = retry_delay(&state.settings, row.attempts, &e);
            tracing::warn!(parent: &span, error = %e.reason(), ?delay, "mail failed; will retry");
            let at =
                now() + chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::hours(1));
            let (id, held) = (row.id.clone(), row.locked_until);
            let reason = e.reason().to_owned();
            state
                .store
                .run_write(move |c| {
                    outbox::mark_retry(c, &id, held, at, &reason).map_err(store::Error::from)
                })
                .await?;
            Ok(Delivery::Retrying)
        }
        Err(e) => {
            tracing::error!(parent: &span, error = %e.reason(), "mail failed for good");
            finish(state, &row, "failed", e.reason()).await?;
            Ok(Delivery::Failed)
        }
    }
}

/// Records a message the server accepted. A transient failure to write
/// that down is retried until the claim on the row runs out: left as it
/// is, the row would be taken back and the message sent again.
async fn record_sent(state: &MailState, sent: outbox::Sent) -> Result<(), store::Error> {
    let lease = Duration::from_secs(state.settings.reconciler.send_lease_secs);
    let started = std::time::Instant::now();
    let mut schedule = super::retry::schedule(&state.settings.retry);
    loop {
        match state.sent.record(sent.clone()).await {
            Err(e) if e.is_transient() => {
                let delay = super::retry::persistent_delay(&mut schedule, &state.settings.retry);
                if started.elapsed() + delay >= lease {
                    return Err(e);
                }
                tracing::warn!(error = %e, ?delay, "mail sent but not yet recorded; retrying");
                tokio::time::sleep(delay).await;
            }
            done => return done,
        }
    }
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

async fn finish(
    state: &MailState,
    row: &OutboxRow,
    st: &str,
    reason: &str,
) -> Result<(), store::Error> {
    let (id, held, payload) = (row.id.clone(), row.locked_until, row.payload.clone());
    let (st, reason) = (st.to_owned(), reason.to_owned());
    state
        .store
        .run_write(move |c| {
            outbox::finish(c, &id, held, &st, &reason, &payload).map_err(store::Error::from)
        })
        .await
}

/// The delay before attempt `attempts + 1`: exponential with jitter from the
/// `backoff` crate, and never sooner than the server's Retry-After.
pub fn retry_delay(settings: &Settings, attempts: i32, error: &SendError) -> Duration {
    use backoff::backoff::Backoff;
    let mut schedule = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_secs(settings.mail.retry_initial_secs))
        .with_max_interval(Duration::from_secs(settings.mail.retry_max_secs))
        .with_multiplier(growth(&settings.mail))
        .with_max_elapsed_time(None)
        .build();
    let mut delay = Duration::from_secs(settings.mail.retry_initial_secs);
    for _ in 0..attempts.max(1) {
        delay = schedule.next_backoff().unwrap_or(delay);
    }
    match error {
        SendError::Transient {
            retry_after: Some(after),
            ..
        } => delay.max(*after),
        _ => delay,
    }
}

/// The factor between one retry's delay and the next, such that the last
/// retry `max_attempts` allows waits `retry_max_secs`: an outage of the
/// mail server is ridden out for as long as the settings say, not for the
/// quarter hour a fixed factor of 1.5 would give with the defaults. 2 when
/// the settings leave no room to grow.
fn growth(mail: &crate::config::MailSettings) -> f64 {
    let (first, last) = (mail.retry_initial_secs as f64, mail.retry_max_secs as f64);
    let steps = f64::from(mail.max_attempts.saturating_sub(2));
    if first <= 0.0 || last <= first || steps < 1.0 {
        return 2.0;
    }
    (last / first).powf(steps.recip())
}

enum Rendered {
    /// The message, and the payload to keep once it is sent.
    Send(Email, String),
    Cancel(String),
}

/// What the database says about a welcome row at the time it is sent.
struct WelcomeFacts {
    invitation: Option<invitations::InvitationRow>,
    org: Option<orgs::Org>,
    /// The name to greet the person by.
    person: Option<String>,
    /// Whether the user still exists.
    user_exists: bool,
}

impl WelcomeFacts {
    fn load(c: &mut store::Conn, row: &OutboxRow) -> Result<WelcomeFacts, store::Error> {
        let payload: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
        let invitation_id = payload
            .get("invitation_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let invitation = invitations::find(c, invitation_id)?;
        let org = orgs::find(c, &row.org_id)?;
        // Rows written since the name travels in the payload need no user
        // lookup: deleting a user revokes its invitation, which the
        // invitation row shows.
        let (person, user_exists) = match (payload.get("person"), &invitation) {
            (Some(person), _) => (person.as_str().map(str::to_owned), true),
            (None, Some(i)) => match users::find(c, &i.org_id, &i.user_id)? {
                Some(user) => (greeting_name(&user), true),
                None => (None, false),
            },
            (None, None) => (None, false),
        };
        Ok(WelcomeFacts {
            invitation,
            org,
            person,
            user_exists,
        })
    }
}

fn render(state: &MailState, row: &OutboxRow, facts: Option<WelcomeFacts>) -> Rendered {
    let payload: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
    let from = state.settings.mail.from.clone();
    match (row.kind.as_str(), facts) {
        ("welcome", Some(facts)) => render_welcome(state, row, payload, from, facts),
        ("digest", _) => render_digest(row, &payload, from),
        ("test", _) => {
            let subject = "scimsync test message".to_owned();
            let text =
                "This is a test message from scimsync. If you can read it, mail delivery works.\n"
                    .to_owned();
            let html = format!("<p>{}</p>", templates::html_escape(text.trim()));
            Rendered::Send(
                Email {
                    id: row.id.clone(),
                    from,
                    to: row.recipient.clone(),
                    subject,
                    text,
                    html,
                },
                row.payload.clone(),
            )
        }
        (other, _) => Rendered::Cancel(format!("unknown mail kind {other}")),
    }
}

fn render_welcome(
    state: &MailState,
    row: &OutboxRow,
    payload: Value,
    from: String,
    facts: WelcomeFacts,
) -> Rendered {
    let token = payload
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let (Some(inv), Some(org), true) = (&facts.invitation, &facts.org, facts.user_exists) else {
        return Rendered::Cancel("the invitation or its user no longer exists".into());
    };
    let at = now();
    if inv.revoked_at.is_some() {
        return Rendered::Cancel("the invitation was revoked before it was sent".into());
    }
    if inv.used_at.is_some() {
        return Rendered::Cancel("the invitation was already used".into());
    }
    if inv.expires_at <= at {
        return Rendered::Cancel("the invitation expired before it was sent".into());
    }
    if token.is_empty() {
        return Rendered::Cancel("the outbox row holds no invitation token".into());
    }
    let link = format!("{}/invitations/{token}", state.public_url);
    let expires = inv
        .expires_at
        .and_utc()
        .format("%-d %B %Y, %H:%M UTC")
        .to_string();
    let contact = Some(state.settings.mail.contact.as_str()).filter(|c| !c.is_empty());
    let (subject, text_body, html) = templates::welcome(&Welcome {
        org_name: &org.name,
        person_name: facts.person.as_deref(),
        email: &inv.email,
        link: &link,
        expires: &expires,
        contact,
    });
    let mut kept = payload.clone();
    if let Some(obj) = kept.as_object_mut() {
        obj.remove("token");
    }
    Rendered::Send(
        Email {
            id: row.id.clone(),
            from,
            to: inv.email.clone(),
            subject,
            text: text_body,
            html,
        },
        kept.to_string(),
    )
}

/// The name a welcome greets `user` by: givenName, else the formatted
/// name, else displayName. Written into the outbox row when the invitation
/// is issued, so sending needs no user lookup.
pub fn greeting_name(user: &users::UserRow) -> Option<String> {
    person_name(&user.resource).or(user.display_name.clone())
}

/// givenName, else formatted name, from a stored user document.
fn person_name(resource: &str) -> Option<String> {
    let v: Value = serde_json::from_str(resource).ok()?;
    let name = v.get("name")?;
    name.get("givenName")
        .or_else(|| name.get("formatted"))
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

fn render_digest(row: &OutboxRow, payload: &Value, from: String) -> Rendered {
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let items: Vec<Value> = payload
        .get("failures")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let owned: Vec<[String; 7]> = items
        .iter()
        .map(|f| {
            [
                s(f, "at"),
                s(f, "operation"),
                s(f, "resource"),
                s(f, "subject"),
                s(f, "outcome"),
                s(f, "reason"),
                s(f, "change_id"),
            ]
        })
        .collect();
    let statuses: Vec<i32> = items
        .iter()
        .map(|f| {
            f.get("status")
                .and_then(Value::as_i64)
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or(0)
        })
        .collect();
    let lines: Vec<FailureLine<'_>> = owned
        .iter()
        .zip(&statuses)
        .map(|(f, status)| FailureLine {
            at: &f[0],
            operation: &f[1],
            resource: &f[2],
            subject: Some(f[3].as_str()).filter(|x| !x.is_empty()),
            status: *status,
            outcome: &f[4],
            reason: &f[5],
            change_id: &f[6],
        })
        .collect();
    let omitted = payload
        .get("omitted")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    let (org_name, since) = (s(payload, "org_name"), s(payload, "since"));
    let (subject, text, html) = templates::digest(&Digest {
        org_name: &org_name,
        since: &since,
        failures: &lines,
        omitted,
        retry_hint: RETRY_HINT,
    });
    Rendered::Send(
        Email {
            id: row.id.clone(),
            from,
            to: row.recipient.clone(),
            subject,
            text,
            html,
        },
        row.payload.clone(),
    )
}

/// What admins can do about failed changes.
pub const RETRY_HINT: &str = "Entra ID sends failed changes again in its next provisioning cycle \
(about every 40 minutes). Fix the cause (for a 409, the user or group that holds the name; for a \
400, the attribute mapping in Entra ID) and the change applies then; each change id above is in \
the provisioning log with its full answer.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_spread_from_the_first_delay_to_the_largest() {
        let settings = Settings::load(None).expect("default settings");
        let (first, last) = (
            settings.mail.retry_initial_secs,
            settings.mail.retry_max_secs,
        );
        let refused = SendError::Transient {
            reason: "421 try later".into(),
            retry_after: None,
        };
        let retries = i32::try_from(settings.mail.max_attempts).expect("small") - 1;
        // Jitter picks each delay within half of it either way.
        for _ in 0..20 {
            let d = retry_delay(&settings, 1, &refused).as_secs_f64();
            assert!(
                d >= first as f64 * 0.5 && d <= first as f64 * 1.5,
                "first {d}"
            );
            let d = retry_delay(&settings, retries, &refused).as_secs_f64();
            assert!(d >= last as f64 * 0.5 && d <= last as f64 * 1.5, "last {d}");
        }
        let without_jitter: f64 = (0..retries)
            .map(|i| first as f64 * growth(&settings.mail).powi(i))
            .sum();
        assert!(
            without_jitter > 3600.0,
            "an hour's outage is ridden out: {without_jitter}"
        );
    }

    #[test]
    fn a_retry_after_is_a_floor() {
        let settings = Settings::load(None).expect("default settings");
        let busy = SendError::Transient {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(7200)),
        };
        assert!(retry_delay(&settings, 1, &busy) >= Duration::from_secs(7200));
    }
}
