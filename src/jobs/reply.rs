//! Waking the HTTP request that waits for its change to be committed.
//!
//! A worker in the same process wakes the waiter directly; a worker in
//! another process publishes the change id on Redis, and every web process
//! relays it to its own waiters. The wake-up carries the committed answer,
//! so the request needs no read of its own; an answer too large for a
//! message is read from the provisioning log instead. The waiter also
//! polls the database, so a lost wake-up only costs latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::together::Together;
use crate::store::log::LogRow;

/// Redis channel on which workers announce committed changes.
pub const APPLIED_CHANNEL: &str = "scimsync:applied";

/// Largest answer body carried in an announcement; a larger one (a group
/// with many members) is read from the provisioning log by the waiter.
const MAX_ANNOUNCED_BODY: usize = 64 * 1024;

/// A committed change's answer, as the provisioning log stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: i32,
    pub response: Option<String>,
}

impl From<&LogRow> for Outcome {
    fn from(row: &LogRow) -> Self {
        Outcome {
            status: row.status,
            response: row.response.clone(),
        }
    }
}

/// What a worker publishes on [`APPLIED_CHANNEL`]: the change id, and its
/// answer unless that is too large.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    change_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
}

impl Announcement {
    fn of(log: &LogRow) -> Self {
        let small = log
            .response
            .as_ref()
            .is_none_or(|r| r.len() <= MAX_ANNOUNCED_BODY);
        Announcement {
            change_id: log.change_id.clone(),
            outcome: small.then(|| Outcome::from(log)),
        }
    }

    /// Reads one announcement; a bare change id (as older workers
    /// published) is an announcement without an answer.
    fn parse(payload: &str) -> Self {
        serde_json::from_str(payload).unwrap_or_else(|_| Announcement {
            change_id: payload.to_owned(),
            outcome: None,
        })
    }

    /// Reads a published message: one announcement, or a JSON array of
    /// them (see [`Publisher`]).
    fn parse_all(payload: &str) -> Vec<Self> {
        if payload.starts_with('[')
            && let Ok(all) = serde_json::from_str::<Vec<Announcement>>(payload)
        {
            return all;
        }
        vec![Announcement::parse(payload)]
    }
}

/// Publishes announcements on Redis. Those ready while one PUBLISH is on
/// its way share the next message, a JSON array: the changes of a batch,
/// committed together, cost one or two messages instead of one each. A
/// web process of an older release reads an array as an unknown change
/// id, and its requests then find their answers in the log (from 250 ms).
#[derive(Clone)]
pub struct Publisher {
    ready: Together<Announcement, ()>,
}

impl Publisher {
    /// Most announcements in one message.
    const MOST: usize = 32;

    /// Starts publishing on the current runtime; it ends with the last handle.
    pub fn start(conn: redis::aio::ConnectionManager) -> Self {
        let ready = Together::start(Self::MOST, move |announced: Vec<Announcement>| {
            let mut conn = conn.clone();
            async move {
                let message = match announced.as_slice() {
                    [one] => serde_json::to_string(one),
                    all => serde_json::to_string(all),
                };
                match message {
                    Ok(message) => {
                        let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                            .arg(APPLIED_CHANNEL)
                            .arg(message)
                            .query_async(&mut conn)
                            .await;
                        if let Err(e) = published {
                            // The waiters' database polls still find the outcomes.
                            tracing::warn!(changes = announced.len(), error = %e, "could not announce committed changes on Redis");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not write an announcement"),
                }
                vec![(); announced.len()]
            }
        });
        Publisher { ready }
    }

    /// Publishes `announcement`, with whatever else is ready.
    async fn publish(&self, announcement: Announcement) {
        self.ready.call(announcement).await;
    }
}

/// Requests currently waiting, by change id.
#[derive(Debug, Default)]
pub struct Replies {
    waiters: Mutex<HashMap<String, Arc<Slot>>>,
}

/// Where a waiting request is woken, and its answer left.
#[derive(Debug, Default)]
struct Slot {
    notify: Notify,
    outcome: Mutex<Option<Outcome>>,
}

/// One waiting request; unregisters itself when dropped.
#[derive(Debug)]
pub struct Waiter {
    replies: Arc<Replies>,
    change_id: String,
    slot: Arc<Slot>,
}

impl Replies {
    pub fn new() -> Arc<Self> {
        Arc::new(Replies::default())
    }

    /// Registers before the change is queued, so no wake-up can be missed.
    pub fn register(self: &Arc<Self>, change_id: &str) -> Waiter {
        let slot = Arc::new(Slot::default());
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.insert(change_id.to_owned(), slot.clone());
        }
        Waiter {
            replies: self.clone(),
            change_id: change_id.to_owned(),
            slot,
        }
    }

    /// Wakes the request waiting for `change_id`, if it is in this
    /// process, with its answer when that is known.
    pub fn wake(&self, change_id: &str, outcome: Option<Outcome>) {
        let slot = self
            .waiters
            .lock()
            .ok()
            .and_then(|w| w.get(change_id).cloned());
        if let Some(slot) = slot {
            if let Some(outcome) = outcome
                && let Ok(mut left) = slot.outcome.lock()
            {
                *left = Some(outcome);
            }
            // notify_one stores a permit, so a wake before the wait is kept.
            slot.notify.notify_one();
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiters.lock().map(|w| w.len()).unwrap_or(0)
    }
}

impl Waiter {
    /// Returns when woken or after `timeout`, whichever is first, with
    /// the answer if the wake-up carried it.
    pub async fn wait(&self, timeout: Duration) -> Option<Outcome> {
        let _ = tokio::time::timeout(timeout, self.slot.notify.notified()).await;
        self.slot.outcome.lock().ok().and_then(|mut o| o.take())
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
        publisher: Publisher,
    },
}

impl Announcer {
    /// Announces the committed outcome `log` to the request waiting for it.
    pub async fn applied(&self, log: &LogRow) {
        let change_id = log.change_id.as_str();
        match self {
            Announcer::Local(replies) => replies.wake(change_id, Some(Outcome::from(log))),
            Announcer::Redis { local, publisher } => {
                local.wake(change_id, Some(Outcome::from(log)));
                publisher.publish(Announcement::of(log)).await;
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
                        if let Ok(payload) = msg.get_payload::<String>() {
                            for announced in Announcement::parse_all(&payload) {
                                replies.wake(&announced.change_id, announced.outcome);
                            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(change_id: &str, response: Option<String>) -> LogRow {
        LogRow {
            response,
            ..LogRow::applied_at(change_id, chrono::DateTime::UNIX_EPOCH.naive_utc())
        }
    }

    #[test]
    fn an_announcement_carries_the_answer_unless_it_is_large() {
        let small = logged("c1", Some(r#"{"id":"u1"}"#.into()));
        let message = serde_json::to_string(&Announcement::of(&small)).expect("json");
        let read = Announcement::parse(&message);
        assert_eq!(read.change_id, "c1");
        assert_eq!(read.outcome, Some(Outcome::from(&small)));

        let large = logged("c2", Some("x".repeat(MAX_ANNOUNCED_BODY + 1)));
        let message = serde_json::to_string(&Announcement::of(&large)).expect("json");
        let read = Announcement::parse(&message);
        assert_eq!((read.change_id.as_str(), read.outcome), ("c2", None));

        let together = serde_json::to_string(&[Announcement::of(&small), Announcement::of(&large)])
            .expect("json");
        let read: Vec<(String, bool)> = Announcement::parse_all(&together)
            .into_iter()
            .map(|a| (a.change_id, a.outcome.is_some()))
            .collect();
        assert_eq!(read, [("c1".to_owned(), true), ("c2".to_owned(), false)]);
        let one = Announcement::parse_all(&message);
        assert_eq!((one.len(), one[0].change_id.as_str()), (1, "c2"));

        let bare = Announcement::parse("01JBARECHANGEID");
        assert_eq!(
            (bare.change_id.as_str(), bare.outcome),
            ("01JBARECHANGEID", None)
        );
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept_with_its_answer() {
        let replies = Replies::new();
        let waiter = replies.register("c1");
        replies.wake("c1", Some(Outcome::from(&logged("c1", None))));
        replies.wake("someone-else", None);
        let outcome = waiter.wait(Duration::from_secs(5)).await;
        assert_eq!(outcome.map(|o| o.status), Some(201));
        drop(waiter);
        assert_eq!(replies.waiting(), 0);
    }
}
