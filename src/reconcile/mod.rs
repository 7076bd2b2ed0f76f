//! Applying changes to the store, with retries for transient failures, and
//! the periodic reconciler.

pub mod apply;
pub mod periodic;

use std::sync::Arc;

use futures::FutureExt;

use crate::config::Settings;
use crate::jobs::ScimChange;
use crate::jobs::retry;
use crate::store::{self, Store, log::LogRow};

pub use apply::{Committed, Owed, Policy};

impl Policy {
    pub fn from_settings(settings: &Settings) -> Self {
        let hours = i64::try_from(settings.mail.invitation_ttl_hours).unwrap_or(168);
        let lease = i64::try_from(settings.reconciler.send_lease_secs).unwrap_or(120);
        Policy {
            invitation_ttl: chrono::TimeDelta::hours(hours),
            send_lease: chrono::TimeDelta::seconds(lease),
        }
    }
}

/// Applies a change, retrying transient failures with backoff until the
/// schedule gives up. Earlier deliveries count once each in `attempts`.
pub async fn apply_with_retry(
    applier: &Applier,
    settings: &Settings,
    change: &ScimChange,
    delivery: u32,
) -> Result<Committed, store::Error> {
    let change = Arc::new(change.clone());
    let mut schedule = retry::schedule(&settings.retry);
    let mut tries: i32 = 0;
    loop {
        tries += 1;
        let attempts = tries.saturating_add(i32::try_from(delivery.saturating_sub(1)).unwrap_or(0));
        match applier.apply(change.clone(), attempts).await {
            Ok(committed) => return Ok(committed),
            Err(e) if e.is_transient() => match retry::next_delay(&mut schedule) {
                Some(delay) => {
                    tracing::warn!(change_id = %change.change_id, tries, error = %e, ?delay, "transient failure; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// Most changes one transaction applies together.
const MAX_BATCH: usize = 32;

/// How long a lane under load waits for more changes to join a batch.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Applies the changes of a worker process, several in one transaction
/// when they are in flight at the same time (see [`apply::apply_batch`]).
///
/// Each lane takes whatever changes are waiting, up to [`MAX_BATCH`], and
/// applies them while the next lane gathers the next batch. A lone change
/// is applied at once, so batching costs no latency when traffic is light.
#[derive(Clone)]
pub struct Applier {
    waiting: tokio::sync::mpsc::Sender<Pending>,
}

struct Pending {
    change: Arc<ScimChange>,
    attempts: i32,
    done: tokio::sync::oneshot::Sender<Result<Committed, store::Error>>,
}

impl Applier {
    /// Starts the lanes on the current runtime: two on PostgreSQL, so one
    /// batch gathers while another commits; one on SQLite, which lets a
    /// single writer in at a time anyway.
    pub fn start(store: Store, settings: &Settings) -> Self {
        let lanes = match store.backend() {
            store::Backend::Postgres => 2,
            store::Backend::Sqlite => 1,
        };
        let policy = Arc::new(Policy::from_settings(settings));
        let (waiting, queue) = tokio::sync::mpsc::channel::<Pending>(MAX_BATCH * 4);
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        for _ in 0..lanes {
            tokio::spawn(lane(store.clone(), policy.clone(), queue.clone()));
        }
        Applier { waiting }
    }

    /// Applies `change` with the next batch and returns its result.
    pub async fn apply(
        &self,
        change: Arc<ScimChange>,
        attempts: i32,
    ) -> Result<Committed, store::Error> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.waiting
            .send(Pending {
                change,
                attempts,
                done,
            })
            .await
            .map_err(|_| store::Error::Cancelled)?;
        result.await.map_err(|_| store::Error::Cancelled)?
    }
}

/// One lane: gather what is waiting, apply it, answer each change.
async fn lane(
    store: Store,
    policy: Arc<Policy>,
    queue: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Pending>>>,
) {
    let mut busy = false;
    loop {
        let mut batch = Vec::new();
        {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            batch.push(first);
            // Under load (the last batch had company) wait a moment for
            // more: one commit then serves them all.
            let until = tokio::time::Instant::now() + LINGER;
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) if busy => match tokio::time::timeout_at(until, queue.recv()).await {
                        Ok(Some(next)) => batch.push(next),
                        _ => break,
                    },
                    Err(_) => break,
                }
            }
        }
        busy = batch.len() > 1;
        tracing::debug!(changes = batch.len(), "applying a batch");
        let changes: Vec<(Arc<ScimChange>, i32)> = batch
            .iter()
            .map(|p| (p.change.clone(), p.attempts))
            .collect();
        let results = match apply_in_store(&store, &policy, changes).await {
            Some(results) => results,
            // A panic is a bug in one change, most likely: apply them one
            // by one so that only the change that panics fails.
            None => {
                let mut results = Vec::with_capacity(batch.len());
                for pending in &batch {
                    let one = vec![(pending.change.clone(), pending.attempts)];
                    results.push(match apply_in_store(&store, &policy, one).await {
                        Some(mut r) => r.pop().unwrap_or(Err(store::Error::Cancelled)),
                        None => {
                            tracing::error!(change_id = %pending.change.change_id, "applying the change panicked");
                            Err(store::Error::Corrupt(
                                "applying the change panicked; see the worker's log".into(),
                            ))
                        }
                    });
                }
                results
            }
        };
        for (pending, result) in batch.into_iter().zip(results) {
            let _ = pending.done.send(result);
        }
    }
}

/// Applies `changes` on a pooled connection: one result each, or None if
/// applying panicked.
async fn apply_in_store(
    store: &Store,
    policy: &Arc<Policy>,
    changes: Vec<(Arc<ScimChange>, i32)>,
) -> Option<Vec<Result<Committed, store::Error>>> {
    let count = changes.len();
    let policy = policy.clone();
    let work = store.run_write(move |conn| {
        let refs: Vec<(&ScimChange, i32)> = changes.iter().map(|(c, a)| (&**c, *a)).collect();
        Ok::<_, store::Error>(apply::apply_batch(conn, &refs, &policy))
    });
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(results)) => Some(results),
        // No connection to be had: the same for every change.
        Ok(Err(e)) => {
            let message = e.to_string();
            Some(
                (0..count)
                    .map(|_| Err(store::Error::Unavailable(message.clone())))
                    .collect(),
            )
        }
        Err(_) => None,
    }
}

/// Records a change as dead (its retries are spent), unless it has an outcome.
pub async fn record_dead(
    store: &Store,
    change: &ScimChange,
    delivery: u32,
    error: &store::Error,
) -> Result<LogRow, store::Error> {
    let change = change.clone();
    let attempts = i32::try_from(delivery).unwrap_or(i32::MAX);
    let transient = error.is_transient();
    let message = error.to_string();
    store
        .run_write(move |conn| {
            apply::record_dead_once(conn, &change, attempts, transient, &message)
        })
        .await
}
