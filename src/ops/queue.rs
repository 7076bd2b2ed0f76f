//! Queue and outcome figures for `scimsync queue stats`, `/metrics` and
//! (later) the admin pages: the queues' own depth, and the database's
//! record of what was applied, rejected, died, and mailed.

use serde::Serialize;

use crate::jobs::mail::SendMail;
use crate::jobs::queue::Depth;
use crate::jobs::{Queue, ScimChange};
use crate::store::{self, Store, log, now, outbox};

/// Changes by outcome over a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcomes {
    pub applied: i64,
    pub rejected: i64,
    pub dead: i64,
}

/// The mail outbox now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MailFigures {
    pub pending: i64,
    pub sending: i64,
    pub sent_total: i64,
    pub sent_last_hour: i64,
    pub failed_total: i64,
    pub cancelled_total: i64,
    pub oldest_owed_secs: Option<i64>,
}

/// Everything `queue stats` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub queues: Vec<Depth>,
    pub last_5_minutes: Outcomes,
    pub last_hour: Outcomes,
    pub last_day: Outcomes,
    /// Changes applied per minute over the last five minutes.
    pub applied_per_minute: f64,
    pub mail: MailFigures,
}

fn outcomes(rows: Vec<(String, i64)>) -> Outcomes {
    let mut o = Outcomes::default();
    for (outcome, n) in rows {
        match outcome.as_str() {
            "applied" => o.applied += n,
            "rejected" => o.rejected += n,
            "dead" => o.dead += n,
            _ => {}
        }
    }
    o
}

/// Reads the figures. A queue that cannot be read is an error, never zeros.
pub async fn stats(
    store: &Store,
    changes: &Queue<ScimChange>,
    mail: &Queue<SendMail>,
) -> anyhow::Result<Stats> {
    let queues = vec![changes.depth().await?, mail.depth().await?];
    let (five, hour, day, mail) = store
        .run(|c| {
            let at = now();
            let five = outcomes(log::count_by_outcome_since(
                c,
                at - chrono::TimeDelta::minutes(5),
            )?);
            let hour = outcomes(log::count_by_outcome_since(
                c,
                at - chrono::TimeDelta::hours(1),
            )?);
            let day = outcomes(log::count_by_outcome_since(
                c,
                at - chrono::TimeDelta::days(1),
            )?);
            let mut figures = MailFigures::default();
            for (state, n) in outbox::count_by_state(c)? {
                match state.as_str() {
                    "pending" => figures.pending = n,
                    "sending" => figures.sending = n,
                    "sent" => figures.sent_total = n,
                    "failed" => figures.failed_total = n,
                    "cancelled" => figures.cancelled_total = n,
                    _ => {}
                }
            }
            figures.sent_last_hour = outbox::sent_since(c, at - chrono::TimeDelta::hours(1))?;
            figures.oldest_owed_secs =
                outbox::oldest_pending(c)?.map(|t| (at - t).num_seconds().max(0));
            Ok::<_, store::Error>((five, hour, day, figures))
        })
        .await?;
    Ok(Stats {
        queues,
        applied_per_minute: five.applied as f64 / 5.0,
        last_5_minutes: five,
        last_hour: hour,
        last_day: day,
        mail,
    })
}

/// The logged change `change_id` if it can be retried now: dead, and
/// neither retried nor discarded yet.
pub async fn retryable(store: &Store, change_id: &str) -> anyhow::Result<log::LogRow> {
    let id = change_id.to_owned();
    let row = store
        .run(move |c| log::find(c, &id).map_err(store::Error::from))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no change {change_id} in the provisioning log"))?;
    if row.outcome != "dead" {
        anyhow::bail!(
            "change {change_id} was {} (HTTP {}); only dead changes are retried",
            row.outcome,
            row.status
        );
    }
    if let Some(done) = &row.resolution {
        anyhow::bail!("change {change_id} was already dealt with: {done}");
    }
    Ok(row)
}

/// Retries a dead change as a new change (a new id, so the idempotency
/// rules apply to it like to any other); returns the new change id.
///
/// Refused when a later change to the same resource was applied: Entra ID
/// sends its writes without preconditions, so the old one would overwrite
/// the newer state (reactivate a user deactivated since, say), and Entra
/// ID would not notice. Such a change is discarded instead.
pub async fn retry(
    store: &Store,
    queue: &Queue<ScimChange>,
    change_id: &str,
    max_deliveries: u32,
) -> anyhow::Result<String> {
    let row = retryable(store, change_id).await?;
    let original: ScimChange = row
        .request
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .ok_or_else(|| anyhow::anyhow!("change {change_id} has no stored request to retry"))?;
    if let Some(later) = applied_since(store, &row).await? {
        anyhow::bail!(
            "change {change_id} is not retried: {} {} was changed again since ({} {}, applied {}), and retrying would overwrite that; discard it with `scimsync queue discard {change_id} --reason …`",
            row.resource_type,
            row.resource_id.as_deref().unwrap_or_default(),
            later.operation,
            later.change_id,
            later.applied_at.format("%Y-%m-%d %H:%M:%S UTC"),
        );
    }
    let mut again = ScimChange::new(&original.org_id, &original.base_url, original.op.clone());
    // The retry stands for the request Entra ID sent then: a change it sent
    // later stays later than the retry, and a dead change it sent later
    // can still be retried after this one.
    again.received_at = original.received_at;
    // The claim and the push run as one task of their own, so an operator
    // who goes away (a closed admin tab drops its request) cannot leave a
    // change marked retried that was never queued.
    let (store, queue) = (store.clone(), queue.clone());
    let old = change_id.to_owned();
    tokio::spawn(async move {
        let note = format!("retried as {}", again.change_id);
        let (id, claim) = (old.clone(), note.clone());
        let claimed = store
            .run(move |c| log::resolve(c, &id, &claim).map_err(store::Error::from))
            .await?;
        if !claimed {
            anyhow::bail!("change {old} was retried or discarded meanwhile");
        }
        if let Err(e) = queue.push(&again, max_deliveries).await {
            let id = old.clone();
            if let Err(undo) = store
                .run(move |c| log::unresolve(c, &id, &note).map_err(store::Error::from))
                .await
            {
                tracing::error!(change_id = %old, error = %undo, "the retry was not queued and the change still reads as retried; discard its resolution by hand");
            }
            return Err(e.context(format!("change {old} was not retried")));
        }
        tracing::info!(change_id = %old, retried_as = %again.change_id, "dead change retried");
        Ok(again.change_id)
    })
    .await?
}

/// An applied change to the resource of `dead` that Entra ID sent after
/// it, if any. What counts is when each was received, not when `dead` was
/// recorded dead: a change can fail for minutes while a later one to the
/// same resource applies.
async fn applied_since(store: &Store, dead: &log::LogRow) -> anyhow::Result<Option<log::LogRow>> {
    let Some(resource) = dead.resource_id.clone() else {
        return Ok(None);
    };
    let (org, after) = (dead.org_id.clone(), dead.received_at);
    Ok(store
        .run(move |c| {
            log::applied_to_resource_received_after(c, &org, &resource, after)
                .map_err(store::Error::from)
        })
        .await?)
}

/// What `queue retry --dead` found or did.
#[derive(Debug, Clone, Serialize)]
pub struct RetryReport {
    pub dead: usize,
    /// (old change id, new change id) for each retried change.
    pub retried: Vec<(String, String)>,
    pub errors: Vec<String>,
}

/// Retries every unresolved dead change (of one organization, if given);
/// with `dry_run`, only counts them.
pub async fn retry_dead(
    store: &Store,
    queue: &Queue<ScimChange>,
    org_id: Option<String>,
    dry_run: bool,
    max_deliveries: u32,
) -> anyhow::Result<RetryReport> {
    let rows = store
        .run(move |c| {
            log::unresolved_dead(c, org_id.as_deref(), 10_000).map_err(store::Error::from)
        })
        .await?;
    let mut report = RetryReport {
        dead: rows.len(),
        retried: Vec::new(),
        errors: Vec::new(),
    };
    if dry_run {
        return Ok(report);
    }
    for row in rows {
        match retry(store, queue, &row.change_id, max_deliveries).await {
            Ok(new) => report.retried.push((row.change_id, new)),
            Err(e) => report.errors.push(format!("{}: {e:#}", row.change_id)),
        }
    }
    Ok(report)
}

/// Marks a dead change as dealt with, without retrying it.
pub async fn discard(store: &Store, change_id: &str, reason: &str) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        anyhow::bail!("say why with --reason");
    }
    let (id, note) = (
        change_id.to_owned(),
        format!("discarded: {}", reason.trim()),
    );
    let done = store
        .run(move |c| log::resolve(c, &id, &note).map_err(store::Error::from))
        .await?;
    if !done {
        anyhow::bail!("change {change_id} is not an unresolved dead change");
    }
    tracing::info!(change_id, "dead change discarded");
    Ok(())
}
