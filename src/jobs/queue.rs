//! The queue of SCIM changes: Redis in production, SQLite when embedded.

use std::time::Duration;

use anyhow::Context;
use apalis::prelude::*;
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;

use super::change::ScimChange;
use crate::config::QueueUrl;

/// A handle for pushing changes; cheap to clone.
#[derive(Clone)]
pub enum Queue {
    Redis {
        storage: Box<RedisStorage<ScimChange>>,
        client: redis::Client,
        conn: redis::aio::ConnectionManager,
    },
    Sqlite(SqliteStorage<ScimChange>),
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Queue::Redis { .. } => "Queue::Redis",
            Queue::Sqlite(_) => "Queue::Sqlite",
        })
    }
}

impl Queue {
    /// Connects and prepares the queue (SQLite: creates the file and tables).
    pub async fn connect(url: &QueueUrl, name: &str) -> anyhow::Result<Queue> {
        match url {
            QueueUrl::Redis(url) => {
                let client = redis::Client::open(url.as_str())
                    .context("REDIS_URL is not a valid Redis URL")?;
                // redis-rs answers a stall after 500 ms by default, which apalis
                // treats as fatal; a longer timeout rides out short hiccups.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_connection_timeout(Some(Duration::from_secs(5)));
                let conn = client
                    .get_connection_manager_with_config(config)
                    .await
                    .context("cannot connect to Redis (is it running? check REDIS_URL)")?;
                let storage = RedisStorage::new(conn.clone()).with_config(
                    apalis_redis::Config::default()
                        .queue(name)
                        .heartbeat_interval(Duration::from_secs(5))
                        .missed_heartbeats(3),
                );
                Ok(Queue::Redis {
                    storage: Box::new(storage),
                    client,
                    conn,
                })
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
                    .busy_timeout(Duration::from_secs(10));
                let pool = apalis_sqlite::SqlitePool::connect_with(options)
                    .await
                    .with_context(|| format!("cannot open the SQLite queue {}", path.display()))?;
                SqliteStorage::setup(&pool)
                    .await
                    .context("cannot create the SQLite queue tables")?;
                let storage = SqliteStorage::new(&pool).with_config(
                    apalis_sqlite::Config::default()
                        .queue(name)
                        .heartbeat_interval(Duration::from_secs(5)),
                );
                Ok(Queue::Sqlite(storage))
            }
        }
    }

    /// Queues a change under its own id.
    pub async fn push(&self, change: &ScimChange, max_deliveries: u32) -> anyhow::Result<()> {
        let task = |c: ScimChange| {
            TaskBuilder::new(c)
                .task_id(TaskId::from_string(change.change_id.clone()))
                .max_attempts(max_deliveries as usize)
                .build()
        };
        match self {
            Queue::Redis { storage, .. } => (**storage)
                .clone()
                .push_task(task(change.clone()))
                .await
                .map_err(|e| anyhow::anyhow!("cannot queue the change on Redis: {e}")),
            Queue::Sqlite(storage) => storage
                .clone()
                .push_task(task(change.clone()))
                .await
                .map_err(|e| anyhow::anyhow!("cannot queue the change in SQLite: {e}")),
        }
    }

    /// Round trip for `/readyz`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Queue::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
            Queue::Sqlite(storage) => {
                sqlx::query("SELECT 1").execute(storage.pool()).await?;
                Ok(())
            }
        }
    }
}
