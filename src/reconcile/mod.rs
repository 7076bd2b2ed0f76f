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

/// A batch at least this large means load: the next one may wait
/// [`LINGER`] for more. Two changes together are as likely two clients
/// that each wait for their answer as a burst.
const BUSY: usize = 3;

/// Whether a lane under load waits [`LINGER`] for more changes.
///
/// Waiting pays when more changes are on their way: one commit then
/// serves them all. It is pure delay when every change in flight is in
/// the batch already, as with n clients that each wait for their answer
/// and a batch of n. So after a wait that brought nothing, the lane skips
/// the wait for one batch, then two, four, up to
/// [`Linger::MOST_SKIPPED`], and waits every time again as soon as a wait
/// brings a change. Measured against waiting after every batch of two or
/// more: creates at 2 clients 2.7 instead of 6.2 ms p50 on PostgreSQL +
/// Redis and 2.9 instead of 6.0 ms embedded; at 4 clients 4.8 instead of
/// 7.3 ms on PostgreSQL + Redis; at 16 clients the same.
#[derive(Debug)]
struct Linger {
    /// Batches still to gather without waiting.
    skip: u32,
    /// Batches to skip after the next wait that brings nothing.
    next_skip: u32,
}

impl Linger {
    const MOST_SKIPPED: u32 = 16;

    fn new() -> Self {
        Linger {
            skip: 0,
            next_skip: 1,
        }
    }

    /// Whether to wait while gathering this batch, given whether the
    /// last one was [`BUSY`].
    fn wait(&mut self, busy: bool) -> bool {
        if !busy {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// What a wait brought.
    fn waited(&mut self, brought: usize) {
        if brought > 0 {
            self.next_skip = 1;
        } else {
            self.skip = self.next_skip;
            self.next_skip = (self.next_skip * 2).min(Self::MOST_SKIPPED);
        }
    }
}

/// Applies the changes of a worker process, several in one transaction
/// when they are in flight at the same time (see [`apply::apply_together`]).
///
/// Each lane takes whatever changes are waiting, up to [`MAX_BATCH`], and
/// applies them while the next lane gathers the next batch. A PostgreSQL
/// lane whose last batch had [`BUSY`] changes or more may wait up to [`LINGER`] for
/// more (see [`Linger`]); otherwise what is waiting is applied at once,
/// so batching costs no latency when traffic is light.
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
    /// single writer in at a time anyway. The one SQLite lane never waits
    /// for more changes: while it waited nothing would be written, and
    /// changes gather on their own while it commits (measured embedded,
    /// against waiting as on PostgreSQL: at 4 clients 612-621 against
    /// 420-442 creates/s, p50 4.7-4.8 against 7.3-7.7 ms; at 16 clients
    /// the same).
    pub fn start(store: Store, settings: &Settings) -> Self {
        let (lanes, waits) = match store.backend() {
            store::Backend::Postgres => (2, true),
            store::Backend::Sqlite => (1, false),
        };
        let policy = Arc::new(Policy::from_settings(settings));
        let (waiting, queue) = tokio::sync::mpsc::channel::<Pending>(MAX_BATCH * 4);
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        for _ in 0..lanes {
            tokio::spawn(lane(store.clone(), policy.clone(), queue.clone(), waits));
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
    waits: bool,
) {
    let mut busy = false;
    let mut linger = Linger::new();
    loop {
        let mut batch = Vec::new();
        {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            batch.push(first);
            // Under load wait a moment for more, while waiting brings
            // any: see [`Linger`].
            let wait = waits && linger.wait(busy);
            let until = tokio::time::Instant::now() + LINGER;
            let mut brought = 0;
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) if wait => match tokio::time::timeout_at(until, queue.recv()).await {
                        Ok(Some(next)) => {
                            batch.push(next);
                            brought += 1;
                        }
                        _ => break,
                    },
                    Err(_) => break,
                }
            }
            if wait {
                linger.waited(brought);
            }
        }
        busy = batch.len() >= BUSY;
        if batch.len() > 1 {
            let changes: Vec<(Arc<ScimChange>, i32)> = batch
                .iter()
                .map(|p| (p.change.clone(), p.attempts))
                .collect();
            let policy = policy.clone();
            let together = in_store(&store, move |conn| {
                let refs: Vec<(&ScimChange, i32)> =
                    changes.iter().map(|(c, a)| (&**c, *a)).collect();
                apply::apply_together(conn, &refs, &policy)
            })
            .await;
            match together {
                Ok(apply::Together::Committed(all)) => {
                    for (pending, committed) in batch.into_iter().zip(all) {
                        let _ = pending.done.send(Ok(committed));
                    }
                    continue;
                }
                // Nothing was written; every change tries again after
                // its own backoff, and may then find a quieter batch.
                Ok(apply::Together::Failed(e)) => {
                    fail_all(batch, &e);
                    continue;
                }
                Err(e) if e.is_transient() => {
                    fail_all(batch, &e);
                    continue;
                }
                Ok(apply::Together::Apart(why)) => {
                    tracing::debug!(
                        changes = batch.len(),
                        reason = why,
                        "applying a batch change by change"
                    );
                }
                // A panic: one by one, so that only the change at fault fails.
                Err(_) => {}
            }
        }
        // One change, or a batch applied apart: each answered as soon as
        // its own transaction ends.
        for pending in batch {
            let (change, attempts, policy) =
                (pending.change.clone(), pending.attempts, policy.clone());
            let result = in_store(&store, move |conn| {
                apply::apply_once(conn, &change, attempts, &policy)
            })
            .await
            .and_then(|r| r);
            let _ = pending.done.send(result);
        }
    }
}

/// Answers every change of a batch that failed for a passing reason.
fn fail_all(batch: Vec<Pending>, e: &store::Error) {
    for pending in batch {
        let _ = pending.done.send(Err(e.shared()));
    }
}

/// Runs `f` on a pooled connection for writing. A panic inside is a bug,
/// and retrying will not fix it: it fails the change at once (recorded
/// dead, with this reason, for an operator to retry after the fix)
/// instead of ending the lane.
async fn in_store<T, F>(store: &Store, f: F) -> Result<T, store::Error>
where
    F: FnOnce(&mut store::Conn) -> T + Send + 'static,
    T: Send + 'static,
{
    let work = store.run_write(move |conn| Ok::<_, store::Error>(f(conn)));
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(_) => {
            tracing::error!("applying a change panicked");
            Err(store::Error::Corrupt(
                "applying the change panicked; see the worker's log".into(),
            ))
        }
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

#[cfg(test)]
mod tests {
    use super::Linger;

    #[test]
    fn a_lane_stops_waiting_while_waiting_brings_nothing() {
        let mut linger = Linger::new();
        assert!(!linger.wait(false), "a lone change is applied at once");
        assert!(linger.wait(true), "under load it waits");
        linger.waited(3);
        assert!(linger.wait(true), "and again while waiting brings changes");
        // Each fruitless wait skips twice as many batches, up to 16.
        let mut pattern = Vec::new();
        for _ in 0..40 {
            let wait = linger.wait(true);
            pattern.push(wait);
            if wait {
                linger.waited(0);
            }
        }
        let waits: Vec<usize> = pattern
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.then_some(i))
            .collect();
        assert_eq!(waits, vec![0, 2, 5, 10, 19, 36]);
        // One wait that brings a change restores waiting every time.
        while !linger.wait(true) {}
        linger.waited(1);
        assert!(linger.wait(true));
        linger.waited(1);
        assert!(linger.wait(true));
    }
}
