//! Workers: apply SCIM changes, each in one transaction, and send mail.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use tracing::Instrument;

use super::change::ScimChange;
use super::mail::{self, MailState, SendMail};
use super::queue::{Backend, Queue, Queued, Unreadable};
use super::reply::Announcer;
use crate::config::Settings;
use crate::reconcile::{self, Owed};
use crate::store::Store;

/// What every change task of a worker process shares.
pub struct WorkerState {
    pub store: Store,
    /// Applies changes, several to a transaction when they arrive together.
    pub applier: reconcile::Applier,
    pub settings: Arc<Settings>,
    pub announcer: Announcer,
    /// Where the mail a change owes is queued when this process has no
    /// sender free to send it at once.
    pub mail: Queue<SendMail>,
    /// Sends the mail a change owes right after it commits.
    pub mailer: Arc<MailState>,
    /// Senders free in this process for mail sent right after a commit.
    pub senders: Arc<tokio::sync::Semaphore>,
}

impl WorkerState {
    /// Sends a welcome that a committed change owes from this process,
    /// which holds its claim, when one of its senders is free; otherwise
    /// hands the claim back and queues the row for any worker.
    ///
    /// The outbox row is the record either way: a send cut short (the
    /// process dies) leaves the row claimed until its lease runs out, and
    /// the reconciler then queues it again. Sending here spares every new
    /// user a claim, two reads, and the mail queue's push, fetch and
    /// acknowledgement.
    async fn send_or_queue(&self, owed: Owed) {
        if let Ok(permit) = self.senders.clone().try_acquire_owned() {
            let mailer = self.mailer.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let id = owed.row.id.clone();
                if let Err(e) = mail::send_owed(&mailer, owed).await {
                    tracing::warn!(outbox_id = %id, error = %e, "could not send mail; the reconciler will once its claim runs out");
                }
            });
            return;
        }
        let requeue = i64::try_from(self.settings.reconciler.requeue_after_secs).unwrap_or(60);
        mail::hand_back(
            &self.store,
            &self.mail,
            &owed.row,
            chrono::TimeDelta::seconds(requeue),
        )
        .await;
    }

    /// Waits until the mail sent from this process is out, or `deadline`.
    async fn senders_done(&self, deadline: tokio::time::Instant) {
        let all = u32::try_from(self.settings.mail.concurrency.max(1)).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout_at(deadline, self.senders.acquire_many(all)).await;
    }
}

/// Applies one delivery of a change. Transient failures are retried here
/// with backoff; when a delivery's budget is spent the error goes back to
/// the queue for redelivery, and the last delivery records the change dead.
async fn apply(
    change: Queued<ScimChange>,
    attempt: Attempt,
    state: Data<Arc<WorkerState>>,
) -> Result<(), BoxDynError> {
    let change = match change {
        Queued::Job(change) => change,
        Queued::Unreadable(unreadable) => return record_unreadable(&state, unreadable).await,
    };
    let delivery = u32::try_from(attempt.current().max(1)).unwrap_or(u32::MAX);
    let span = tracing::info_span!(
        "change",
        change_id = %change.change_id,
        org_id = %change.org_id,
        op = change.op.name(),
        delivery
    );
    apply_delivery(change, delivery, &state)
        .instrument(span)
        .await
}

async fn apply_delivery(
    change: ScimChange,
    delivery: u32,
    state: &WorkerState,
) -> Result<(), BoxDynError> {
    let max = state.settings.queue.max_deliveries.max(1);
    match reconcile::apply_with_retry(&state.applier, &state.settings, &change, delivery).await {
        Ok(committed) => {
            tracing::debug!(outcome = %committed.log.outcome, status = committed.log.status, "change committed");
            state.announcer.applied(&committed.log).await;
            for owed in committed.mail {
                state.send_or_queue(owed).await;
            }
            Ok(())
        }
        Err(e) if !e.is_transient() || delivery >= max => {
            tracing::error!(error = %e, "change failed for good; recording it as dead");
            if let Some(row) = record_dead(state, &change, delivery, &e).await {
                state.announcer.applied(&row).await;
            }
            Err(AbortError::new(e).into())
        }
        Err(e) => {
            tracing::warn!(error = %e, "delivery failed; the queue will redeliver");
            Err(e.into())
        }
    }
}

/// Records a queued change that this release cannot read as dead, so that
/// its request gets an answer and operators see it; the queue then keeps
/// it in its dead set. Without a change id and an organization there is
/// nothing to record it under, and only the log says it was dropped.
async fn record_unreadable(state: &WorkerState, unreadable: Unreadable) -> Result<(), BoxDynError> {
    let ids = unreadable
        .field("change_id")
        .zip(unreadable.field("org_id"));
    let span = tracing::error_span!(
        "change",
        change_id = ids.as_ref().map_or("unknown", |(c, _)| c.as_str()),
        org_id = ids.as_ref().map_or("unknown", |(_, o)| o.as_str()),
    );
    let _entered = span.enter();
    tracing::error!(error = %unreadable.error, "a queued change cannot be read by this release; recording it as dead");
    let why = format!("unreadable job: {}", unreadable.error);
    match ids {
        None => tracing::error!(
            "the unreadable change names no change id and organization; it is in the queue's dead set only"
        ),
        Some((change_id, org_id)) => {
            let recorded = state
                .store
                .run_write(move |c| {
                    reconcile::apply::record_unreadable_once(c, &unreadable, &change_id, &org_id)
                })
                .await;
            match recorded {
                Ok(row) => state.announcer.applied(&row).await,
                Err(e) => {
                    tracing::error!(error = %e, "could not record the unreadable change; it is in the queue's dead set only")
                }
            }
        }
    }
    Err(AbortError::new(std::io::Error::other(why)).into())
}

/// Records a change dead, waiting out an outage of the database first: the
/// record is all that keeps a dead change in sight (the provisioning log,
/// the failure digest, `queue retry`), and the queue forgets the job once
/// it is dead. So a transient failure to write it is retried, at the retry
/// schedule's pace and then at its longest delay, for as long as this
/// process runs. None when it cannot be recorded.
async fn record_dead(
    state: &WorkerState,
    change: &ScimChange,
    delivery: u32,
    error: &crate::store::Error,
) -> Option<crate::store::log::LogRow> {
    let mut schedule = super::retry::schedule(&state.settings.retry);
    loop {
        match reconcile::record_dead(&state.store, change, delivery, error).await {
            Ok(row) => return Some(row),
            Err(e) if e.is_transient() => {
                let delay = super::retry::persistent_delay(&mut schedule, &state.settings.retry);
                tracing::warn!(error = %e, ?delay, "could not record the dead change yet; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record the dead change; it is in the queue's dead set only");
                return None;
            }
        }
    }
}

/// How long a stopping worker process lets in-flight changes and mail
/// finish, in all (platforms such as Heroku allow 30 s after SIGTERM).
const GRACE: Duration = Duration::from_secs(25);

/// A worker name unique to this process, so a restarted process never
/// collides with the registration of the one it replaces.
fn worker_name(kind: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!(
        "{kind}-{host}-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// Registers a worker for `$queue` running `$handler` with `$data`, on
/// whichever backend the queue has. A macro because apalis's worker types
/// differ per backend and their bounds do not fit in a generic function.
macro_rules! register {
    ($monitor:expr, $queue:expr, $kind:expr, $poll:expr, $concurrency:expr, $data:expr, $handler:expr) => {{
        let queue = $queue.clone();
        let data = $data.clone();
        let strategy = move || queue.wakeups($poll);
        match (*$queue.backend).clone() {
            Backend::Redis { storage, .. } => $monitor.register(move |_| {
                WorkerBuilder::new(worker_name($kind))
                    .backend((*storage).clone().poll_with_strategy(strategy()))
                    .data(data.clone())
                    .concurrency($concurrency)
                    .parallelize(tokio::spawn)
                    .catch_panic()
                    .build($handler)
            }),
            Backend::Sqlite(storage) => $monitor.register(move |_| {
                WorkerBuilder::new(worker_name($kind))
                    .backend(storage.clone().poll_with_strategy(strategy()))
                    .data(data.clone())
                    .concurrency($concurrency)
                    .parallelize(tokio::spawn)
                    .catch_panic()
                    .build($handler)
            }),
        }
    }};
}

/// Runs change and mail workers until `shutdown` resolves, then lets
/// in-flight work finish.
pub async fn run<S>(
    changes: Queue<ScimChange>,
    state: Arc<WorkerState>,
    mail_state: Arc<MailState>,
    shutdown: S,
) -> anyhow::Result<()>
where
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let poll = Duration::from_millis(state.settings.queue.poll_interval_ms.max(10));
    let concurrency = state.settings.queue.concurrency.max(1);
    let mail_concurrency = state.settings.mail.concurrency.max(1);
    let mail_queue = state.mail.clone();
    // One grace period for the whole stop: in-flight changes, then the
    // mail this process is still sending.
    let stopping = Arc::new(std::sync::OnceLock::new());
    let stopped_at = stopping.clone();
    let signal = async move {
        shutdown.await;
        let _ = stopped_at.set(tokio::time::Instant::now());
        Ok(())
    };
    let monitor = Monitor::new()
        .shutdown_timeout(GRACE)
        // Backend errors (Redis restarted, SQLite file busy) end a worker's
        // run; start it again rather than leave the process idle.
        .should_restart(|ctx, err| {
            tracing::warn!(worker = ctx.name(), error = %err, "worker stopped; restarting");
            true
        });
    let monitor = register!(monitor, changes, "scim", poll, concurrency, state, apply);
    let sending = state.clone();
    let monitor = register!(
        monitor,
        mail_queue,
        "mail",
        poll,
        mail_concurrency,
        mail_state,
        mail::handle
    );
    let ran = monitor
        .run_with_signal(signal)
        .await
        .map_err(|e| anyhow::anyhow!("worker monitor failed: {e}"));
    let deadline = stopping
        .get()
        .map_or_else(tokio::time::Instant::now, |at| *at + GRACE);
    sending.senders_done(deadline).await;
    ran
}
