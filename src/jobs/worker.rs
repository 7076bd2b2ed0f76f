//! Workers: take changes off the queue and apply each in one transaction.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;

use super::change::ScimChange;
use super::queue::{Backend, Queue};
use super::reply::Announcer;
use crate::config::Settings;
use crate::reconcile;
use crate::store::Store;

/// What every task of a worker process shares.
pub struct WorkerState {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub announcer: Announcer,
}

/// Applies one delivery of a change. Transient failures are retried here
/// with backoff; when a delivery's budget is spent the error goes back to
/// the queue for redelivery, and the last delivery records the change dead.
async fn apply(
    change: ScimChange,
    attempt: Attempt,
    state: Data<Arc<WorkerState>>,
) -> Result<(), BoxDynError> {
    let delivery = u32::try_from(attempt.current().max(1)).unwrap_or(u32::MAX);
    let span = tracing::info_span!(
        "change",
        change_id = %change.change_id,
        org_id = %change.org_id,
        op = change.op.name(),
        delivery
    );
    let _entered = span.enter();
    drop(_entered);
    let max = state.settings.queue.max_deliveries.max(1);
    match reconcile::apply_with_retry(&state.store, &state.settings.retry, &change, delivery).await
    {
        Ok(row) => {
            tracing::debug!(parent: &span, outcome = %row.outcome, status = row.status, "change committed");
            state.announcer.applied(&change.change_id).await;
            Ok(())
        }
        Err(e) if !e.is_transient() || delivery >= max => {
            tracing::error!(parent: &span, error = %e, "change failed for good; recording it as dead");
            match reconcile::record_dead(&state.store, &change, delivery, &e).await {
                Ok(_) => state.announcer.applied(&change.change_id).await,
                Err(e2) => {
                    tracing::error!(parent: &span, error = %e2, "could not record the dead change; it was never acknowledged")
                }
            }
            Err(AbortError::new(e).into())
        }
        Err(e) => {
            tracing::warn!(parent: &span, error = %e, "delivery failed; the queue will redeliver");
            Err(e.into())
        }
    }
}

/// A worker name unique to this process, so a restarted process never
/// collides with the registration of the one it replaces.
fn worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    format!(
        "scim-{host}-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// Runs workers until `shutdown` resolves, then lets in-flight changes finish.
pub async fn run<S>(queue: Queue, state: Arc<WorkerState>, shutdown: S) -> anyhow::Result<()>
where
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let poll = Duration::from_millis(state.settings.queue.poll_interval_ms.max(10));
    let concurrency = state.settings.queue.concurrency.max(1);
    let signal = async move {
        shutdown.await;
        Ok(())
    };
    let monitor = Monitor::new()
        .shutdown_timeout(Duration::from_secs(30))
        // Backend errors (Redis restarted, SQLite file busy) end a worker's
        // run; start it again rather than leave the process idle.
        .should_restart(|ctx, err| {
            tracing::warn!(worker = ctx.name(), error = %err, "worker stopped; restarting");
            true
        });
    // A fresh nudge stream per (re)started worker: the monitor's factory
    // may build the worker again after a backend error.
    let strategy = {
        let queue = queue.clone();
        move || Strategy::new().stream(queue.nudges()).interval(poll)
    };
    let result = match queue.backend.clone() {
        Backend::Redis { storage, .. } => {
            monitor
                .register(move |_| {
                    WorkerBuilder::new(worker_name())
                        .backend((*storage).clone().poll_with_strategy(strategy()))
                        .data(state.clone())
                        .concurrency(concurrency)
                        .parallelize(tokio::spawn)
                        .catch_panic()
                        .build(apply)
                })
                .run_with_signal(signal)
                .await
        }
        Backend::Sqlite(storage) => {
            monitor
                .register(move |_| {
                    WorkerBuilder::new(worker_name())
                        .backend(storage.clone().poll_with_strategy(strategy()))
                        .data(state.clone())
                        .concurrency(concurrency)
                        .parallelize(tokio::spawn)
                        .catch_panic()
                        .build(apply)
                })
                .run_with_signal(signal)
                .await
        }
    };
    result.map_err(|e| anyhow::anyhow!("worker monitor failed: {e}"))
}
