//! The periodic reconciler: re-drives owed mail, takes back mail whose
//! sender died, writes failure digests, and sweeps finished jobs from the
//! queues. Every worker process runs one;
//! each step is safe to run in several processes at once.

use std::sync::Arc;
use std::time::Duration;

use diesel::Connection;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::jobs::mail::SendMail;
use crate::jobs::{Queue, ScimChange};
use crate::store::outbox::{self, OutboxRow};
use crate::store::{self, Conn, Store, invitations, log, now, orgs};

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Rows taken back from a sender whose lease ran out.
    pub released: usize,
    /// Send jobs queued for owed rows.
    pub queued: usize,
    /// Digest rows written.
    pub digests: usize,
    /// Log, outbox and invitation rows deleted past
    /// `reconciler.retention_days`.
    pub forgotten: usize,
}

/// Finished jobs forgotten per queue and pass: well above what a worker
/// finishes between passes, small enough to keep each sweep brief.
const SWEEP_PER_PASS: u32 = 10_000;

/// Rows past their retention deleted per table and pass: a log of
/// millions is trimmed over hours without holding a pass up.
const FORGET_PER_PASS: i64 = 5_000;

/// Largest number of failures listed in one digest; the rest are counted.
const DIGEST_LINES: i64 = 50;

/// One pass over the outbox and the provisioning log.
pub async fn pass(
    store: &Store,
    mail: &Queue<SendMail>,
    settings: &Settings,
) -> anyhow::Result<Pass> {
    let requeue = chrono::TimeDelta::seconds(
        i64::try_from(settings.reconciler.requeue_after_secs).unwrap_or(60),
    );
    let interval = chrono::TimeDelta::seconds(
        i64::try_from(settings.mail.digest_interval_secs).unwrap_or(900),
    );
    let settle = chrono::TimeDelta::seconds(
        i64::try_from(settings.reconciler.digest_settle_secs).unwrap_or(60),
    );
    let operator = Some(settings.mail.operator_email.trim().to_owned()).filter(|e| !e.is_empty());
    // Mail still waiting in the queue is most likely the owed mail whose
    // jobs look late: queuing it again would only lengthen the wait (a
    // first cycle's welcomes can take minutes to drain). So with a backlog
    // only rows that never had a job are queued: digests, retries now due,
    // rows taken back from a sender that died. A queue that lost its jobs
    // reads empty, and every owed row is queued again then.
    let backlog = mail.depth().await.map(|d| d.pending).unwrap_or(0);
    let (released, digests, due) = store
        .run_write(move |c| {
            let released = outbox::release_expired(c)?;
            let digests = write_digests(c, interval, settle, operator.as_deref(), requeue)?;
            let due = outbox::take_due(c, 1000, requeue, backlog > 0)?;
            Ok::<_, store::Error>((released, digests, due))
        })
        .await?;
    // 0 days, or more than any date can go back, keeps everything.
    let cutoff = i64::try_from(settings.reconciler.retention_days)
        .ok()
        .filter(|days| *days > 0)
        .and_then(chrono::TimeDelta::try_days)
        .and_then(|kept| store::now().checked_sub_signed(kept));
    let forgotten = match cutoff {
        None => 0,
        Some(before) => {
            store
                .run_write(move |c| {
                    Ok::<_, store::Error>(
                        log::delete_older_than(c, before, FORGET_PER_PASS)?
                            + outbox::delete_ended_before(c, before, FORGET_PER_PASS)?
                            + invitations::delete_expired_before(c, before, FORGET_PER_PASS)?,
                    )
                })
                .await?
        }
    };
    let mut queued = 0;
    for id in due.iter() {
        mail.push(&SendMail::new(id), 3).await?;
        queued += 1;
    }
    Ok(Pass {
        released,
        queued,
        digests,
        forgotten,
    })
}

/// Forgets finished jobs of both queues, [`SWEEP_PER_PASS`] of each at most.
async fn sweep_finished(mail: &Queue<SendMail>, settings: &Settings) {
    let changes = mail.sibling::<ScimChange>(&settings.queue.name);
    for swept in [
        changes.sweep_done(SWEEP_PER_PASS).await,
        mail.sweep_done(SWEEP_PER_PASS).await,
    ] {
        match swept {
            Ok(n) if n > 0 => tracing::debug!(jobs = n, "finished jobs swept from the queue"),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "cannot sweep finished jobs; trying again next pass"
            ),
        }
    }
}

/// Runs passes until `shutdown`, logging what they did. Finished jobs are
/// swept before every pass but the first: the pass at start-up is for what
/// a crash left owed, and finished jobs are only weight that can wait an
/// interval.
pub async fn run(
    store: Store,
    mail: Queue<SendMail>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let every = Duration::from_millis(settings.reconciler.interval_ms.max(50));
    let mut first = true;
    loop {
        if !first {
            sweep_finished(&mail, &settings).await;
        }
        first = false;
        match pass(&store, &mail, &settings).await {
            Ok(p) if p != Pass::default() => tracing::info!(
                released = p.released,
                queued = p.queued,
                digests = p.digests,
                forgotten = p.forgotten,
                "reconciler pass"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "reconciler pass failed; trying again"
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Writes one digest per organization whose failures are unreported and
/// whose last digest is older than `interval`; returns how many rows. A
/// digest covers failures older than `settle` (see `digest_settle_secs`).
fn write_digests(
    c: &mut Conn,
    interval: chrono::TimeDelta,
    settle: chrono::TimeDelta,
    operator: Option<&str>,
    queued_for: chrono::TimeDelta,
) -> Result<usize, store::Error> {
    let mut written = 0;
    for org in orgs::list(c)? {
        let mut recipients: Vec<String> = Vec::new();
        for r in [org.notify_email.as_deref(), operator]
            .into_iter()
            .flatten()
        {
            if !recipients.iter().any(|x| x.eq_ignore_ascii_case(r)) {
                recipients.push(r.to_owned());
            }
        }
        if recipients.is_empty() {
            continue;
        }
        if let Some(last) = outbox::last_created(c, &org.id, "digest")?
            && now() - last < interval
        {
            continue;
        }
        let through = now() - settle;
        let since = org.digest_through.unwrap_or(org.created_at);
        if through <= since {
            continue;
        }
        let mail_failures = outbox::failed_between(c, &org.id, since, through, DIGEST_LINES)?;
        let total = log::count_failures_between(c, &org.id, since, through)?
            + outbox::count_failed_between(c, &org.id, since, through)?;
        if total == 0 {
            // Nothing to report: move the watermark anyway (at most once an
            // interval), or every pass would count failures over the whole
            // log of a healthy organization, its first day to now.
            if through - since >= interval {
                orgs::advance_digest(c, &org.id, org.digest_through, through)?;
            }
            continue;
        }
        let listed = log::failures_between(c, &org.id, since, through, DIGEST_LINES)?;
        // Failed welcome mail is reported too; a failed digest never is,
        // so a notification cannot trigger one about itself.
        let mail_lines = mail_failures.iter().map(|m| {
            json!({
                "at": m.next_attempt_at.and_utc().format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                "operation": format!("{} email", m.kind),
                "resource": "mail",
                "subject": m.recipient,
                "status": 0,
                "outcome": "not delivered",
                "reason": m.last_error.clone().unwrap_or_default(),
                "change_id": m.change_id.clone().unwrap_or_default(),
            })
        });
        let listed_count = listed.len() + mail_failures.len();
        let failures: Vec<_> = listed
            .iter()
            .map(|f| {
                json!({
                    "at": f.applied_at.and_utc().format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                    "operation": f.operation,
                    "resource": match &f.resource_id {
                        Some(id) => format!("{} {id}", f.resource_type),
                        None => f.resource_type.clone(),
                    },
                    "subject": f.subject,
                    "status": f.status,
                    "outcome": f.outcome,
                    "reason": f.error.clone().unwrap_or_default(),
                    "change_id": f.change_id,
                })
            })
            .chain(mail_lines)
            .collect();
        let payload = json!({
            "org_name": org.name,
            "since": since.and_utc().format("%Y-%m-%d %H:%M UTC").to_string(),
            "total": total,
            "omitted": total - i64::try_from(listed_count).unwrap_or(0),
            "failures": failures,
        })
        .to_string();
        let wrote = c.transaction::<bool, store::Error, _>(|c| {
            // The watermark moves once: a second reconciler finds it moved
            // and writes nothing.
            if !orgs::advance_digest(c, &org.id, org.digest_through, through)? {
                return Ok(false);
            }
            for to in &recipients {
                let row = OutboxRow::new(&org.id, "digest", None, to, payload.clone(), queued_for);
                // Queued by the caller's take_due in this same pass.
                let row = OutboxRow {
                    locked_until: None,
                    ..row
                };
                outbox::insert(c, &row)?;
            }
            Ok(true)
        })?;
        if wrote {
            written += recipients.len();
        }
    }
    Ok(written)
}
