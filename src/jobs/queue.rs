//! The queue of SCIM changes: Redis in production, SQLite when embedded.
//!
//! Workers poll the queue on an interval, and are also nudged the moment a
//! change is pushed: directly when the push happens in their own process,
//! and through a Redis channel when it happens in a web process elsewhere.
//! The nudge is what keeps the answer to Entra ID fast; the interval is
//! what keeps nothing stranded if a nudge is lost.

use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use anyhow::Context;
use apalis::prelude::*;
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use futures::StreamExt;
use futures::channel::mpsc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::QueueUrl;

/// Where a queue lives.
pub enum Backend<T> {
    Redis {
        storage: Box<RedisStorage<Queued<T>>>,
        client: redis::Client,
        conn: redis::aio::ConnectionManager,
    },
    Sqlite(SqliteStorage<Queued<T>>),
}

impl<T> Clone for Backend<T> {
    fn clone(&self) -> Self {
        match self {
            Backend::Redis {
                storage,
                client,
                conn,
            } => Backend::Redis {
                storage: storage.clone(),
                client: client.clone(),
                conn: conn.clone(),
            },
            Backend::Sqlite(storage) => Backend::Sqlite(storage.clone()),
        }
    }
}

/// How this service uses an apalis-redis queue.
///
/// Task locks are off: apalis-redis 1.0 takes each lock with an `LREM` on
/// the queue's whole waiting list, so with a backlog (the welcome emails of
/// a large first cycle) every job cost Redis time in proportion to the
/// backlog and throughput fell from 690 to 150 requests/s within five
/// minutes. A lock only renews a lease for jobs that outlive a heartbeat;
/// these jobs last milliseconds, and a crashed worker's jobs are still
/// taken back through its in-flight set when its heartbeats stop.
///
/// Task events are off: apalis publishes one for every push and every
/// acknowledgement, for listeners this service does not run (its workers
/// wake on [`Queue::push`]'s own announcement), and each cost Redis a
/// PUBLISH inside the script: two per change and two per email.
fn redis_config(name: &str) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(name)
        .heartbeat_interval(Duration::from_secs(5))
        .missed_heartbeats(3)
        .lock_tasks(false)
        .emit_events(false)
}

/// Prepares the SQLite queue file (journal mode, tables), which every
/// process opening it does. Another process writing the file at that
/// moment (a worker fetching, every poll) can make SQLite refuse at once
/// with "database is locked" instead of waiting: a migration that read
/// the file cannot then write it. That passes; try again for a few
/// seconds before giving up.
async fn setup_sqlite(pool: &sqlx::SqlitePool) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(20);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match SqliteStorage::setup(pool).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.to_string().contains("database is locked")
                    && tokio::time::Instant::now() + wait < give_up =>
            {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("cannot create the SQLite queue tables"));
            }
        }
    }
}

/// What SQLite's planner is told about the queue's `Jobs` table: that
/// `lock_by` (one value per worker) and `status` (a handful of values)
/// each match a large share of its rows.
///
/// Without statistics SQLite takes any indexed equality to be selective,
/// and plans apalis-sqlite's acknowledgement, `UPDATE Jobs … FROM
/// json_each(?1) WHERE Jobs.id = j.task_id AND Jobs.lock_by = ?2`, as a
/// walk of the `lock_by` index (every job the worker ever took, finished
/// ones included, until they are swept) that parses the JSON argument
/// again for each: 2.1 ms a call on average in a 2,000-user embedded run,
/// 46 % of the process's CPU in the queue connection's thread. Its lock
/// statement walked every pending job by status in the same way. With
/// these figures both look their jobs up by id instead.
///
/// `ANALYZE Workers` makes `sqlite_stat1` where it is missing; `ANALYZE
/// sqlite_master` makes the connection read the figures again. apalis's
/// own set-up may have analysed `Jobs` (its `PRAGMA optimize`); the two
/// rows written here replace what it found for those two indexes.
async fn plan_for_many_jobs(pool: &sqlx::SqlitePool) -> sqlx::Result<()> {
    // IMMEDIATE: another process opening the same file at the same time
    // then waits for its turn instead of failing to upgrade a read.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("ANALYZE Workers").execute(&mut *tx).await?;
    sqlx::query(
        "DELETE FROM sqlite_stat1 WHERE tbl = 'Jobs' \
         AND idx IN ('LIdx', 'idx_jobs_status_run_at')",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES \
         ('Jobs', 'LIdx', '1000000 250000'), \
         ('Jobs', 'idx_jobs_status_run_at', '1000000 200000 2')",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE sqlite_master").execute(pool).await?;
    Ok(())
}

/// Removes up to `max` finished jobs' ids, payloads and metadata from a
/// Redis queue; returns how many. apalis-redis keeps them all otherwise,
/// and its own vacuum reads the whole payload hash in one call.
const SWEEP_DONE: &str = r"
local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
for _, id in ipairs(ids) do
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3] .. ':result', id)
    redis.call('DEL', KEYS[3] .. ':' .. id)
end
return #ids
";

/// A handle for pushing jobs of type `T`; cheap to clone.
pub struct Queue<T> {
    pub backend: Arc<Backend<T>>,
    name: Arc<str>,
    nudges: Arc<Nudges>,
    announcer: Arc<OnceLock<tokio::sync::mpsc::UnboundedSender<()>>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            backend: self.backend.clone(),
            name: self.name.clone(),
            nudges: self.nudges.clone(),
            announcer: self.announcer.clone(),
        }
    }
}

/// A job as a worker reads it back: the job, or JSON that no longer reads
/// as one (queued by another release, or edited by hand).
///
/// apalis ends a worker's whole fetch when one job's data does not decode,
/// and a worker that restarts fetches the same job again once its last
/// fetch is taken back: one such job stopped every worker of its queue,
/// over and over. Read this way, it reaches the handler, which records it
/// dead, and the jobs fetched with it run. The JSON on the queue is the
/// job's own either way.
#[derive(Debug, Clone)]
pub enum Queued<T> {
    Job(T),
    Unreadable(Unreadable),
}

/// A queued job's JSON that does not read as the job, and why.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub json: Box<serde_json::value::RawValue>,
    pub error: String,
}

impl<T: Serialize> Serialize for Queued<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Queued::Job(job) => job.serialize(serializer),
            Queued::Unreadable(unreadable) => unreadable.json.serialize(serializer),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Queued<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        Ok(match serde_json::from_str(json.get()) {
            Ok(job) => Queued::Job(job),
            Err(e) => Queued::Unreadable(Unreadable {
                json,
                error: e.to_string(),
            }),
        })
    }
}

impl Unreadable {
    /// A string field at the top of the JSON, if it has one (the ids that
    /// say which change or email it was).
    pub fn field(&self, name: &str) -> Option<String> {
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(self.json.get()).ok()?;
        value.get(name)?.as_str().map(str::to_owned)
    }
}

/// A job with an id of its own, used as its task id.
pub trait Job: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static {
    fn job_id(&self) -> String;
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match *self.backend {
            Backend::Redis { .. } => "Redis",
            Backend::Sqlite(_) => "SQLite",
        };
        write!(f, "Queue({kind}, {})", self.name)
    }
}

/// Starts the task that tells other processes' workers about this
/// process's pushes, on the current runtime; it ends with the last sender.
///
/// Pushes made while one PUBLISH is on its way share the next: under load
/// a message (and the fetch it wakes each worker for) stands for several
/// jobs, and a push never waits for its announcement. A worker fetches all
/// that is waiting, so one message after the last push is all it needs.
fn announce_pushes(
    conn: redis::aio::ConnectionManager,
    channel: String,
) -> tokio::sync::mpsc::UnboundedSender<()> {
    let (pushed, mut pushes) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let mut waiting = Vec::new();
        while pushes.recv_many(&mut waiting, usize::MAX).await > 0 {
            let jobs = waiting.len();
            waiting.clear();
            let mut conn = conn.clone();
            let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(jobs)
                .query_async(&mut conn)
                .await;
            if let Err(e) = published {
                tracing::debug!(error = %e, "could not announce pushes; workers will find them by polling");
            }
        }
    });
    pushed
}

/// Wakes this process's idle workers.
#[derive(Debug, Default)]
pub struct Nudges {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<()>>>,
}

impl Nudges {
    /// A stream that yields whenever work was pushed.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<()> {
        let (tx, rx) = mpsc::unbounded();
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(tx);
        }
        rx
    }

    pub fn nudge(&self) {
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.retain(|tx| tx.unbounded_send(()).is_ok());
        }
    }
}

/// When a worker asks its queue for work: after a nudge (a push this
/// process saw) and at every tick of an interval in any case.
///
/// apalis 1.0's own `Strategy` returns as soon as one of its sources is
/// ready, without polling the others and without polling the ready one
/// again, so a wake-up can leave no source holding the worker's waker:
/// pushes then waited for the queue's next heartbeat. Measured at 16
/// clients: 16 changes received within 2 ms were applied together 1.15 s
/// later, by a 6 ms transaction; single creates stalled 1.5-5 s (the
/// heartbeat is 5 s). This strategy polls every source until it is
/// pending, so each always holds the waker: a push waits at most one
/// interval even when its nudge is consumed by a fetch already running.
pub struct Wakeups {
    nudges: mpsc::UnboundedReceiver<()>,
    tick: tokio::time::Interval,
}

impl Wakeups {
    /// Needs a Tokio runtime.
    pub fn new(nudges: mpsc::UnboundedReceiver<()>, every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Wakeups { nudges, tick }
    }
}

impl PollStrategy for Wakeups {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> Poll<Option<()>> {
        let mut woke = false;
        // Until pending (or closed: then only the interval wakes).
        while let Poll::Ready(Some(())) = self.nudges.poll_next_unpin(cx) {
            woke = true;
        }
        while self.tick.poll_tick(cx).is_ready() {
            woke = true;
        }
        if woke {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

impl<T: Job> Queue<T> {
    /// Connects and prepares the queue (SQLite: creates the file and tables).
    /// A Redis that does not answer is tried again for about six seconds
    /// (processes starting beside it), then refused.
    pub async fn connect(url: &QueueUrl, name: &str) -> anyhow::Result<Queue<T>> {
        Self::connect_with_retries(url, name, 6).await
    }

    /// Like [`Queue::connect`], trying a Redis that does not answer only
    /// once more: for `doctor`, which should say so at once.
    pub async fn connect_once(url: &QueueUrl, name: &str) -> anyhow::Result<Queue<T>> {
        Self::connect_with_retries(url, name, 1).await
    }

    async fn connect_with_retries(
        url: &QueueUrl,
        name: &str,
        retries: usize,
    ) -> anyhow::Result<Queue<T>> {
        let backend = match url {
            QueueUrl::Redis(url) => {
                let client = redis::Client::open(url.as_str())
                    .context("REDIS_URL is not a valid Redis URL")?;
                // redis-rs answers a stall after 500 ms by default, which apalis
                // treats as fatal; a longer timeout rides out short hiccups.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(retries);
                let conn = client
                    .get_connection_manager_with_config(config)
                    .await
                    .context("cannot connect to Redis (is it running? check REDIS_URL)")?;
                let storage = RedisStorage::new(conn.clone()).with_config(redis_config(name));
                Backend::Redis {
                    storage: Box::new(storage),
                    client,
                    conn,
                }
            }
            QueueUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| {
                        format!("cannot create the queue directory {}", dir.display())
                    })?;
                }
                let options = apalis_sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .busy_timeout(Duration::from_secs(10))
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
                // One connection: SQLite admits one writer at a time, and
                // every queue step (push, fetch, lock, ack) writes. Waiting
                // in the pool's queue hands the file over at once; several
                // connections would instead meet in SQLite's busy handler,
                // which sleeps in steps of up to 100 ms and made the tail
                // of the embedded mode's answers 5-10 times its median.
                //
                // No idle timeout and no lifetime: a local file's connection
                // needs no reaping, and the reaper of sqlx 0.9.0 can read a
                // wrapped-around idle count while a connection is handed
                // over and then spin a core forever (sqlx issue #3645; it
                // once left a test process spinning).
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("cannot open the SQLite queue {}", path.display()))?;
                setup_sqlite(&pool).await?;
                // apalis's set-up turns synchronous writes off, with which an
                // operating system crash or power loss can corrupt the file
                // and lose every queued change. NORMAL (in WAL mode) keeps
                // the file whole; what a change's answer promises is made
                // durable by the store, which syncs every commit.
                async {
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&pool)
                        .await?;
                    plan_for_many_jobs(&pool).await
                }
                .await
                .with_context(|| format!("cannot set up the SQLite queue {}", path.display()))?;
                Backend::Sqlite(
                    SqliteStorage::new(&pool).with_config(
                        apalis_sqlite::Config::default()
                            .queue(name)
                            .heartbeat_interval(Duration::from_secs(5)),
                    ),
                )
            }
        };
        Ok(Queue {
            backend: Arc::new(backend),
            name: name.into(),
            nudges: Arc::new(Nudges::default()),
            announcer: Arc::default(),
        })
    }

    /// The Redis channel on which pushes to this queue are announced.
    fn pushed_channel(&self) -> String {
        format!("scimsync:pushed:{}", self.name)
    }

    /// A queue of another job type on the same connection.
    pub fn sibling<U: Job>(&self, name: &str) -> Queue<U> {
        let backend = match &*self.backend {
            Backend::Redis { client, conn, .. } => Backend::Redis {
                storage: Box::new(RedisStorage::new(conn.clone()).with_config(redis_config(name))),
                client: client.clone(),
                conn: conn.clone(),
            },
            Backend::Sqlite(storage) => Backend::Sqlite(
                SqliteStorage::new(storage.pool()).with_config(
                    apalis_sqlite::Config::default()
                        .queue(name)
                        .heartbeat_interval(Duration::from_secs(5)),
                ),
            ),
        };
        Queue {
            backend: Arc::new(backend),
            name: name.into(),
            nudges: Arc::new(Nudges::default()),
            announcer: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a job under its own id and wakes the workers.
    pub async fn push(&self, job: &T, max_deliveries: u32) -> anyhow::Result<()> {
        let id = job.job_id();
        let task = TaskBuilder::new(Queued::Job(job.clone()))
            .task_id(TaskId::from_string(id.clone()))
            .max_attempts(max_deliveries as usize)
            .build();
        match &*self.backend {
            Backend::Redis { storage, conn, .. } => {
                (**storage)
                    .clone()
                    .push_task(task)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot queue a job on Redis: {e}"))?;
                let announcer = self
                    .announcer
                    .get_or_init(|| announce_pushes(conn.clone(), self.pushed_channel()));
                let _ = announcer.send(());
            }
            Backend::Sqlite(storage) => storage
                .clone()
                .push_task(task)
                .await
                .map_err(|e| anyhow::anyhow!("cannot queue a job in SQLite: {e}"))?,
        }
        self.nudges.nudge();
        Ok(())
    }

    /// A stream of nudges for one worker.
    pub fn nudges(&self) -> mpsc::UnboundedReceiver<()> {
        self.nudges.subscribe()
    }

    /// When one worker of this queue asks for work: see [`Wakeups`].
    pub fn wakeups(&self, every: Duration) -> Wakeups {
        Wakeups::new(self.nudges(), every)
    }

    /// Relays pushes announced on Redis by other processes to this process's
    /// workers, reconnecting after errors; returns at once for SQLite.
    pub async fn relay_pushes(self) {
        let Backend::Redis { client, .. } = &*self.backend else {
            return;
        };
        let channel = self.pushed_channel();
        let mut delay = Duration::from_millis(100);
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        delay = Duration::from_millis(100);
                        let mut messages = pubsub.on_message();
                        while messages.next().await.is_some() {
                            self.nudges.nudge();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to queue pushes"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot connect to Redis for queue pushes"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Forgets up to `max` jobs that finished; returns how many. The
    /// provisioning log and the outbox keep what operators need, so a
    /// finished job is only weight: Redis memory, or rows the SQLite
    /// queue's every fetch and count has to step over.
    pub async fn sweep_done(&self, max: u32) -> anyhow::Result<u64> {
        match &*self.backend {
            Backend::Redis { storage, conn, .. } => {
                let config = storage.get_config();
                let mut conn = conn.clone();
                let swept: u64 = redis::Script::new(SWEEP_DONE)
                    .key(config.done_jobs_set())
                    .key(config.job_data_hash())
                    .key(config.job_meta_hash())
                    .arg(max)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(swept)
            }
            Backend::Sqlite(storage) => {
                let swept = sqlx::query(
                    "DELETE FROM Jobs WHERE rowid IN \
                     (SELECT rowid FROM Jobs WHERE job_type = ?1 AND status = 'Done' LIMIT ?2)",
                )
                .bind(&self.name)
                .bind(i64::from(max))
                .execute(storage.pool())
                .await?;
                Ok(swept.rows_affected())
            }
        }
    }

    /// Round trip for `/readyz`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match &*self.backend {
            Backend::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
            Backend::Sqlite(storage) => {
                sqlx::query("SELECT 1").execute(storage.pool()).await?;
                Ok(())
            }
        }
    }
}

/// A worker as the queue knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerSeen {
    pub name: String,
    /// Seconds since its last heartbeat.
    pub seen_secs_ago: i64,
    /// Seconds since it started, read from the ULID that ends its name.
    pub up_secs: Option<i64>,
}

impl WorkerSeen {
    /// A worker whose heartbeat (every 5 s) is at most this old is taken
    /// for alive. A killed worker stays registered until another one
    /// clears it, if ever.
    pub const ALIVE_WITHIN_SECS: i64 = 20;

    /// Whether its heartbeats show it running.
    pub fn alive(&self) -> bool {
        self.seen_secs_ago <= Self::ALIVE_WITHIN_SECS
    }

    pub(crate) fn new(name: String, seen_secs_ago: i64) -> Self {
        let up_secs = name
            .rsplit('-')
            .next()
            .and_then(|tail| ulid::Ulid::from_string(&tail.to_ascii_uppercase()).ok())
            .map(|started| {
                let started_ms = i64::try_from(started.timestamp_ms()).unwrap_or(i64::MAX);
                (chrono::Utc::now().timestamp_millis() - started_ms).max(0) / 1000
            });
        WorkerSeen {
            name,
            seen_secs_ago,
            up_secs,
        }
    }
}

/// What is in a queue now, read from the queue's own keys or tables.
/// apalis-redis 1.0's own statistics calls cannot be used against Redis
/// 7.0: `fetch_by_queue` fails with WRONGTYPE (it counts the `done` and
/// `dead` sets as sorted sets), `list_tasks` always answers an empty list,
/// and `global` reads a key that registration never writes, so all zeros.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Depth {
    pub queue: String,
    /// Waiting to run, including retries scheduled for later.
    pub pending: i64,
    pub running: i64,
    /// Given up by the queue (the provisioning log has the outcome).
    pub dead: i64,
    /// Age of the oldest job that is due and not started, in seconds.
    pub oldest_due_secs: Option<i64>,
    pub workers: Vec<WorkerSeen>,
}

impl<T: Job> Queue<T> {
    /// Reads the queue's current depth.
    pub async fn depth(&self) -> anyhow::Result<Depth> {
        let now = chrono::Utc::now().timestamp();
        match &*self.backend {
            Backend::Redis { storage, conn, .. } => {
                let config = storage.get_config();
                let mut conn = conn.clone();
                let scheduled: i64 = redis::cmd("ZCARD")
                    .arg(config.scheduled_jobs_set())
                    .query_async(&mut conn)
                    .await?;
                let active: i64 = redis::cmd("LLEN")
                    .arg(config.active_jobs_list())
                    .query_async(&mut conn)
                    .await?;
                let dead: i64 = redis::cmd("SCARD")
                    .arg(config.dead_jobs_set())
                    .query_async(&mut conn)
                    .await?;
                let oldest: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(config.scheduled_jobs_set())
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?;
                let workers: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(config.workers_set())
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?;
                let mut running = 0;
                let mut seen = Vec::new();
                for (inflight, beat) in workers {
                    let n: i64 = redis::cmd("SCARD")
                        .arg(&inflight)
                        .query_async(&mut conn)
                        .await?;
                    running += n;
                    let prefix = format!("{}:", config.inflight_jobs_set());
                    seen.push(WorkerSeen::new(
                        inflight
                            .strip_prefix(&prefix)
                            .unwrap_or(&inflight)
                            .to_owned(),
                        (now - beat as i64).max(0),
                    ));
                }
                let oldest_due_secs = oldest
                    .first()
                    .map(|(_, at)| now - *at as i64)
                    .filter(|age| *age >= 0);
                Ok(Depth {
                    queue: self.name.to_string(),
                    pending: scheduled + active,
                    running,
                    dead,
                    oldest_due_secs,
                    workers: seen,
                })
            }
            Backend::Sqlite(storage) => {
                let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
                    "SELECT status, COUNT(*), MIN(CASE WHEN run_at <= ?2 THEN run_at END) \
                     FROM Jobs WHERE job_type = ?1 GROUP BY status",
                )
                .bind(&self.name)
                .bind(now)
                .fetch_all(storage.pool())
                .await?;
                let mut depth = Depth {
                    queue: self.name.to_string(),
                    pending: 0,
                    running: 0,
                    dead: 0,
                    oldest_due_secs: None,
                    workers: Vec::new(),
                };
                for (status, count, oldest) in rows {
                    match status.as_str() {
                        "Pending" | "Queued" => {
                            depth.pending += count;
                            depth.oldest_due_secs = oldest.map(|at| (now - at).max(0));
                        }
                        "Running" => depth.running += count,
                        "Killed" => depth.dead += count,
                        _ => {}
                    }
                }
                let workers: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT id, last_seen FROM Workers WHERE worker_type = ?1 ORDER BY id",
                )
                .bind(&self.name)
                .fetch_all(storage.pool())
                .await?;
                depth.workers = workers
                    .into_iter()
                    .map(|(name, last)| WorkerSeen::new(name, (now - last).max(0)))
                    .collect();
                Ok(depth)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use apalis::prelude::{PollSnapshot, PollStrategy};
    use futures::channel::mpsc;

    use super::{Wakeups, WorkerSeen};

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn drive(w: &mut Wakeups, waker: &Waker) -> Poll<Option<()>> {
        w.poll_drive(&mut Context::from_waker(waker), &PollSnapshot::default())
    }

    /// The worker must be woken by every later nudge and tick, also right
    /// after a wake-up that a nudge caused (apalis's own strategy then held
    /// no waker, and pushes waited for the next heartbeat).
    #[tokio::test(start_paused = true)]
    async fn every_nudge_and_tick_after_a_wake_up_wakes_the_worker_again() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let woken = || count.0.load(Ordering::SeqCst);
        let (nudge, nudges) = mpsc::unbounded();
        let mut wakeups = Wakeups::new(nudges, Duration::from_secs(1));
        assert!(
            drive(&mut wakeups, &waker).is_ready(),
            "the first tick is at once"
        );
        assert!(drive(&mut wakeups, &waker).is_pending());

        for round in 1..=3 {
            nudge.unbounded_send(()).expect("send");
            nudge.unbounded_send(()).expect("send");
            assert_eq!(woken(), round, "a nudge wakes the worker");
            assert!(drive(&mut wakeups, &waker).is_ready());
            assert!(
                drive(&mut wakeups, &waker).is_pending(),
                "both nudges taken at once"
            );
        }

        let before = woken();
        tokio::time::advance(Duration::from_millis(1001)).await;
        tokio::task::yield_now().await;
        assert_eq!(woken(), before + 1, "the tick wakes the worker");
        assert!(drive(&mut wakeups, &waker).is_ready());
        nudge.unbounded_send(()).expect("send");
        assert_eq!(
            woken(),
            before + 2,
            "a nudge right after a tick wakes it too"
        );
        assert!(drive(&mut wakeups, &waker).is_ready());
        tokio::time::advance(Duration::from_millis(1001)).await;
        tokio::task::yield_now().await;
        assert_eq!(woken(), before + 3, "and so does the next tick");
    }

    #[test]
    fn a_worker_is_up_since_the_ulid_in_its_name() {
        let started = ulid::Ulid::from_parts(
            u64::try_from(chrono::Utc::now().timestamp_millis() - 90_000).unwrap_or(0),
            7,
        );
        let name = format!("scim-host-42-{}", started.to_string().to_lowercase());
        let up = WorkerSeen::new(name, 1)
            .up_secs
            .expect("read from the name");
        assert!((90..95).contains(&up), "{up}");
        assert_eq!(WorkerSeen::new("someone-else".into(), 1).up_secs, None);
    }

    /// The SQLite queue's acknowledgement and lock statements (apalis's,
    /// in the same shape) find their jobs by id, not by walking every job
    /// of the worker or of a status; reopening the file keeps one figure
    /// per index.
    #[tokio::test]
    async fn the_sqlite_queue_finds_acknowledged_and_locked_jobs_by_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = super::QueueUrl::Sqlite(dir.path().join("queue.db"));
        let queue = super::Queue::<crate::jobs::mail::SendMail>::connect(&url, "plans")
            .await
            .expect("queue");
        drop(super::Queue::<crate::jobs::mail::SendMail>::connect(&url, "plans").await);
        let super::Backend::Sqlite(storage) = &*queue.backend else {
            panic!("an SQLite queue");
        };
        let pool = storage.pool();
        let plan = |sql: &'static str| async move {
            let rows: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(pool)
                    .await
                    .expect("plan");
            rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("; ")
        };
        let ack = plan(
            "WITH j AS (SELECT value ->> 'task_id' AS task_id FROM json_each('[]')) \
             UPDATE Jobs SET status = 'Done' FROM j \
             WHERE Jobs.id = j.task_id AND Jobs.lock_by = 'worker'",
        )
        .await;
        let lock = plan(
            "UPDATE Jobs SET status = 'Running', lock_by = 'worker' \
             WHERE id IN (SELECT value FROM json_each('[]')) \
             AND (status = 'Queued' OR status = 'Pending' \
             OR (status = 'Failed' AND attempts < max_attempts))",
        )
        .await;
        for plan in [&ack, &lock] {
            assert!(plan.contains("(id=?)"), "{plan}");
            assert!(!plan.contains("LIdx"), "{plan}");
            assert!(!plan.contains("idx_jobs_status_run_at"), "{plan}");
        }
        let figures: Vec<(String,)> = sqlx::query_as(
            "SELECT idx FROM sqlite_stat1 WHERE tbl = 'Jobs' \
             AND idx IN ('LIdx', 'idx_jobs_status_run_at') ORDER BY idx",
        )
        .fetch_all(pool)
        .await
        .expect("figures");
        assert_eq!(
            figures,
            [("LIdx".to_owned(),), ("idx_jobs_status_run_at".to_owned(),)]
        );
    }
}
