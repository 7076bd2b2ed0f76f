//! Waking the HTTP request that waits for its change to be committed.
//!
//! A worker in the same process wakes the waiter directly; a worker in
//! another process publishes the change id on Redis, and every web process
//! relays it to its own waiters. The waiter also polls the database, so a
//! lost wake-up only costs latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

/// Redis channel on which workers announce committed change ids.
pub const APPLIED_CHANNEL: &str = "scimsync:applied";

/// Requests currently waiting, by change id.
#[derive(Debug, Default)]
pub struct Replies {
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

/// One waiting request; unregisters itself when dropped.
#[derive(Debug)]
pub struct Waiter {
    replies: Arc<Replies>,
    change_id: String,
    notify: Arc<Notify>,
}

impl Replies {
    pub fn new() -> Arc<Self> {
        Arc::new(Replies::default())
    }

    /// Registers before the change is queued, so no wake-up can be missed.
    pub fn register(self: &Arc<Self>, change_id: &str) -> Waiter {
        let notify = Arc::new(Notify::new());
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.insert(change_id.to_owned(), notify.clone());
        }
        Waiter {
            replies: self.clone(),
            change_id: change_id.to_owned(),
            notify,
        }
    }

    /// Wakes the request waiting for `change_id`, if it is in this process.
    pub fn wake(&self, change_id: &str) {
        let notify = self
            .waiters
            .lock()
            .ok()
            .and_then(|w| w.get(change_id).cloned());
        if let Some(notify) = notify {
            // notify_one stores a permit, so a wake before the wait is kept.
            notify.notify_one();
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiters.lock().map(|w| w.len()).unwrap_or(0)
    }
}

impl Waiter {
    /// Returns when woken or after `timeout`, whichever is first.
    pub async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.replies.waiters.lock() {
            waiters.remove(&self.change_id);
        }
    }
}

/// How a worker announces that a change committed.
#[derive(Clone)]
pub enum Announcer {
    /// Web and worker share this process.
    Local(Arc<Replies>),
    /// Also publish on Redis for web processes elsewhere.
    Redis {
        local: Arc<Replies>,
        conn: redis::aio::ConnectionManager,
    },
}

impl Announcer {
    pub async fn applied(&self, change_id: &str) {
        match self {
            Announcer::Local(replies) => replies.wake(change_id),
            Announcer::Redis { local, conn } => {
                local.wake(change_id);
                let mut conn = conn.clone();
                let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(APPLIED_CHANNEL)
                    .arg(change_id)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = published {
                    // The waiter's database poll still finds the outcome.
                    tracing::warn!(change_id, error = %e, "could not announce a committed change on Redis");
                }
            }
        }
    }
}

/// Relays Redis announcements to this process's waiters until the process
/// ends, reconnecting after errors.
pub async fn relay_from_redis(client: redis::Client, replies: Arc<Replies>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(APPLIED_CHANNEL).await {
                Ok(()) => {
                    delay = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        if let Ok(change_id) = msg.get_payload::<String>() {
                            replies.wake(&change_id);
                        }
                    }
                    tracing::warn!("Redis announcement channel closed; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis announcements"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot connect to Redis for announcements"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
