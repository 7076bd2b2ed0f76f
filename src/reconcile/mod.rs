//! Applying changes to the store, with retries for transient failures, and
//! the periodic reconciler.

pub mod apply;
pub mod periodic;

use std::sync::Arc;

use crate::config::Settings;
use crate::jobs::ScimChange;
use crate::jobs::retry;
use crate::store::{self, Store, log::LogRow};

pub use apply::{Committed, Policy};

impl Policy {
    pub fn from_settings(settings: &Settings) -> Self {
        let hours = i64::try_from(settings.mail.invitation_ttl_hours).unwrap_or(168);
        let requeue = i64::try_from(settings.reconciler.requeue_after_secs).unwrap_or(60);
        Policy {
            invitation_ttl: chrono::TimeDelta::hours(hours),
            mail_queued_for: chrono::TimeDelta::seconds(requeue),
        }
    }
}

/// Applies a change, retrying transient failures with backoff until the
/// schedule gives up. Earlier deliveries count once each in `attempts`.
pub async fn apply_with_retry(
    store: &Store,
    settings: &Settings,
    change: &ScimChange,
    delivery: u32,
) -> Result<Committed, store::Error> {
    let change = Arc::new(change.clone());
    let policy = Arc::new(Policy::from_settings(settings));
    let mut schedule = retry::schedule(&settings.retry);
    let mut tries: i32 = 0;
    loop {
        tries += 1;
        let attempts = tries.saturating_add(i32::try_from(delivery.saturating_sub(1)).unwrap_or(0));
        let (c, p) = (change.clone(), policy.clone());
        match store
            .run_write(move |conn| apply::apply_once(conn, &c, attempts, &p))
            .await
        {
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
