//! Persistence: one diesel code path over PostgreSQL and SQLite.
//!
//! Store functions are synchronous over `&mut Conn`; async code reaches them
//! through [`Store::run`], which runs them on the blocking pool.

pub mod admin;
pub mod invitations;
pub mod log;
pub mod orgs;
pub mod outbox;
pub mod schema;
#[cfg(test)]
pub(crate) mod scratch;
pub mod teams;
pub mod tokens;
pub mod unnest;
pub mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::{InstrumentationEvent, SimpleConnection};
use diesel::pg::PgConnection;
use diesel::r2d2::{self, ManageConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::DatabaseUrl;

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// The PostgreSQL advisory lock held while migrating (an arbitrary key,
/// "scimsync" in ASCII).
const MIGRATION_LOCK: i64 = 0x7363_696d_7379_6e63;

/// A connection to either backend; every query is written once against it.
#[derive(diesel::MultiConnection)]
pub enum Conn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

/// The diesel backend of [`Conn`], for boxed queries.
pub type Db = <Conn as Connection>::Backend;

/// What a list is sorted by (SCIM `sortBy`), each backed by a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// Creation order: the stable default.
    #[default]
    Created,
    LastModified,
    Id,
    /// Users: userName; groups: displayName (their unique names).
    Name,
    DisplayName,
    ExternalId,
}

/// A sort key and direction. Unset values sort last either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Order {
    pub key: SortKey,
    pub descending: bool,
}

/// A query sent unprepared: parsed and planned on every call, with the
/// values at hand. A prepared statement keeps the plan a connection made
/// for it until the table's statistics change, which with autovacuum off
/// is never, and the plan made while a table was small scans all of it:
/// an initial cycle's userName lookups, planned while the table was
/// nearly empty, went on reading the whole table at every lookup. For
/// statements whose plan depends on a table's size and which cost little
/// to plan; the text still travels with its values in one round trip. On
/// SQLite, whose plans do not depend on a table's size, it only costs
/// preparing the statement again, in process.
#[derive(Debug, Clone, Copy)]
pub struct Unprepared<Q>(pub Q);

impl<Q> diesel::query_builder::QueryId for Unprepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Unprepared<Q> {
    type SqlType = Q::SqlType;
}

impl<DB, Q> diesel::query_builder::QueryFragment<DB> for Unprepared<Q>
where
    DB: diesel::backend::Backend,
    Q: diesel::query_builder::QueryFragment<DB>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        out.unsafe_to_cache_prepared();
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q, C> RunQueryDsl<C> for Unprepared<Q> {}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Failures of the store, sorted by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be had (database down, pool exhausted): try later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] DieselError),
    /// A row changed between read and write (optimistic concurrency):
    /// the transaction is retried and sees the other change.
    #[error("the resource changed while this change was applied")]
    Contended,
    /// Stored data that cannot be read back (a bug, or a hand edit).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The blocking task was cancelled (runtime shutting down).
    #[error("database task cancelled")]
    Cancelled,
    /// Work done together with this (one transaction for several changes)
    /// failed for a reason that may pass; the text is that failure's.
    #[error("{0}")]
    Shared(String),
}

impl Error {
    /// Whether trying the same work again may succeed: lost connections,
    /// serialization failures, deadlocks, a busy SQLite file, and unique
    /// violations from a race that the retried transaction will see and
    /// answer with a clean 409 or no-op.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable(_) | Error::Contended | Error::Cancelled | Error::Shared(_) => true,
            Error::Query(e) => is_transient_diesel(e),
            Error::Corrupt(_) => false,
        }
    }

    /// This failure as each of the callers whose work failed with it
    /// sees it.
    pub fn shared(&self) -> Error {
        Error::Shared(self.to_string())
    }
}

fn is_transient_diesel(e: &DieselError) -> bool {
    match e {
        DieselError::DatabaseError(kind, info) => match kind {
            // A foreign key violated by a row another transaction deleted
            // meanwhile (a member removed as it is added): read again, the
            // change gets its proper answer, such as an unknown member.
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation => true,
            _ => {
                let msg = info.message().to_ascii_lowercase();
                msg.contains("deadlock")
                    || msg.contains("database is locked")
                    || msg.contains("busy")
                    || msg.contains("terminating connection")
                    || msg.contains("server closed the connection")
                    || msg.contains("could not connect")
                    || msg.contains("connection")
            }
        },
        DieselError::BrokenTransactionManager => true,
        _ => false,
    }
}

/// A connection in the pool, and what the pool knows of its health.
pub struct Pooled {
    conn: Conn,
    /// Set when a query failed because the connection itself is gone
    /// (PostgreSQL restarted, the network dropped): the pool discards it.
    lost: Arc<AtomicBool>,
    /// When a call through [`Store::run`] last finished with it.
    used: Option<Instant>,
}

/// A connection used this recently is taken as alive without a test query.
const RECENTLY_USED: Duration = Duration::from_secs(1);

/// Whether a query's error means the connection is gone.
fn connection_lost(e: &DieselError) -> bool {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => true,
        DieselError::DatabaseError(_, info) => {
            let msg = info.message().to_ascii_lowercase();
            [
                "server closed the connection",
                "terminating connection",
                "no connection to the server",
                "could not receive data",
                "could not send data",
                "connection to server",
            ]
            .iter()
            .any(|m| msg.contains(m))
        }
        _ => false,
    }
}

/// Opens connections for the pool, with each backend's session settings.
#[derive(Debug, Clone)]
pub struct ConnManager {
    url: DatabaseUrl,
}

impl ManageConnection for ConnManager {
    type Connection = Pooled;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<Pooled, r2d2::Error> {
        let lost = Arc::new(AtomicBool::new(false));
        let conn = match &self.url {
            DatabaseUrl::Postgres(url) => {
                // libpq's error may quote the password (a malformed URL's
                // part it could not read); this error reaches the logs.
                let mut conn = PgConnection::establish(url).map_err(|e| {
                    r2d2::Error::ConnectionError(diesel::ConnectionError::BadConnection(
                        crate::config::scrub_secrets(&e.to_string(), url),
                    ))
                })?;
                let flag = lost.clone();
                conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                    if let InstrumentationEvent::FinishQuery { error: Some(e), .. } = event
                        && connection_lost(e)
                    {
                        flag.store(true, Ordering::Relaxed);
                    }
                });
                Conn::Pg(conn)
            }
            DatabaseUrl::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())
                    .map_err(r2d2::Error::ConnectionError)?;
                // busy_timeout first, so that even switching to WAL waits
                // for another process instead of failing; WAL lets readers
                // run beside the one writer; FULL syncs every commit, as an
                // answered change must survive a power loss (NORMAL can lose
                // the last commits); foreign_keys defaults vary by build.
                conn.batch_execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Conn::Sqlite(conn)
            }
        };
        Ok(Pooled {
            conn,
            lost,
            used: None,
        })
    }

    /// A connection that failed as a connection is invalid; one used in the
    /// last second is valid; any other (idle since before a database
    /// restart, say) must answer a round trip first.
    fn is_valid(&self, pooled: &mut Pooled) -> Result<(), r2d2::Error> {
        if pooled.lost.load(Ordering::Relaxed) {
            return Err(r2d2::Error::QueryError(
                DieselError::BrokenTransactionManager,
            ));
        }
        if pooled.used.is_some_and(|at| at.elapsed() < RECENTLY_USED) {
            return Ok(());
        }
        diesel::sql_query("SELECT 1")
            .execute(&mut pooled.conn)
            .map(|_| ())
            .map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, pooled: &mut Pooled) -> bool {
        pooled.lost.load(Ordering::Relaxed) || std::thread::panicking()
    }
}

/// The connection pool and the entry point of every database call.
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<ConnManager>,
    backend: Backend,
    /// Turns of this process's SQLite writers (see [`Store::run_write`]).
    writers: Arc<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Builds the pool without connecting yet; the first query connects.
    pub fn open(url: &DatabaseUrl, pool_size: u32, timeout: Duration) -> anyhow::Result<Self> {
        Self::open_with(url, pool_size, timeout, None)
    }

    /// [`Store::open`], with `events` told each time the pool hands out or
    /// takes back a connection: tests see how long work keeps one.
    #[cfg(test)]
    pub(crate) fn open_observed(
        url: &DatabaseUrl,
        pool_size: u32,
        timeout: Duration,
        events: Box<dyn r2d2::HandleEvent>,
    ) -> anyhow::Result<Self> {
        Self::open_with(url, pool_size, timeout, Some(events))
    }

    fn open_with(
        url: &DatabaseUrl,
        pool_size: u32,
        timeout: Duration,
        events: Option<Box<dyn r2d2::HandleEvent>>,
    ) -> anyhow::Result<Self> {
        let backend = match url {
            DatabaseUrl::Postgres(_) => Backend::Postgres,
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display())
                    })?;
                }
                Backend::Sqlite
            }
        };
        let mut pool = r2d2::Pool::builder();
        if let Some(events) = events {
            pool = pool.event_handler(events);
        }
        let pool = pool
            .max_size(pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(timeout)
            // A PostgreSQL restart leaves dead connections in the pool:
            // a connection is checked on checkout (see `is_valid`; no round
            // trip while it is in steady use) and dropped once it failed as
            // a connection, instead of failing requests until each was tried.
            .test_on_check_out(backend == Backend::Postgres)
            .build_unchecked(ConnManager { url: url.clone() });
        Ok(Store {
            pool,
            backend,
            writers: Arc::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `f` with a pooled connection on the blocking thread pool.
    /// A panic inside `f` is re-raised here rather than turned into an error.
    pub async fn run<F, T, E>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.run_with(false, f).await
    }

    /// Like [`Store::run`], for the hot writes (applying a change, claiming
    /// and settling mail). SQLite lets one writer in at a time and makes
    /// the others sleep in its busy handler, in steps of up to 100 ms;
    /// taking turns on a lock in this process instead hands the database
    /// from one writer to the next at once. PostgreSQL needs no such turn.
    pub async fn run_write<F, T, E>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.run_with(self.backend == Backend::Sqlite, f).await
    }

    async fn run_with<F, T, E>(&self, take_turn: bool, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let pool = self.pool.clone();
        let writers = self.writers.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _turn = take_turn.then(|| writers.lock().unwrap_or_else(|e| e.into_inner()));
            let mut pooled = pool
                .get()
                .map_err(|e| E::from(Error::Unavailable(e.to_string())))?;
            let result = f(&mut pooled.conn);
            pooled.used = Some(Instant::now());
            result
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(E::from(Error::Cancelled)),
        }
    }

    /// Applies the migrations this backend has not seen yet; returns their names.
    pub async fn migrate(&self) -> anyhow::Result<Vec<String>> {
        self.run(|conn| -> anyhow::Result<Vec<String>> {
            let applied = match conn {
                Conn::Pg(c) => {
                    // One process migrates at a time. Without the lock, two
                    // starting together (replicas, or `run` and a CLI
                    // command of a new release) both found the same
                    // migrations pending, and the second failed on what the
                    // first had created and exited.
                    diesel::sql_query("SELECT pg_advisory_lock($1)")
                        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
                        .execute(c)
                        .map_err(|e| anyhow::anyhow!("cannot take the migration lock: {e}"))?;
                    let applied = c
                        .run_pending_migrations(PG_MIGRATIONS)
                        .map(|done| done.iter().map(ToString::to_string).collect())
                        .map_err(|e| anyhow::anyhow!("PostgreSQL migration failed: {e}"));
                    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
                        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
                        .execute(c);
                    if let Err(e) = unlocked {
                        // It ends with the connection at the latest.
                        tracing::warn!(error = %e, "could not release the migration lock");
                    }
                    applied?
                }
                Conn::Sqlite(c) => c
                    .run_pending_migrations(SQLITE_MIGRATIONS)
                    .map_err(|e| anyhow::anyhow!("SQLite migration failed: {e}"))?
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            };
            Ok(applied)
        })
        .await
    }

    /// Migrations known to the binary that the database has not applied.
    pub async fn pending_migrations(&self) -> anyhow::Result<Vec<String>> {
        self.run(|conn| -> anyhow::Result<Vec<String>> {
            let pending = match conn {
                Conn::Pg(c) => c
                    .pending_migrations(PG_MIGRATIONS)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .iter()
                    .map(|m| m.name().to_string())
                    .collect(),
                Conn::Sqlite(c) => c
                    .pending_migrations(SQLITE_MIGRATIONS)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .iter()
                    .map(|m| m.name().to_string())
                    .collect(),
            };
            Ok(pending)
        })
        .await
    }

    /// PostgreSQL only: whether autovacuum is off. Without it the tables
    /// never get statistics, and the planner may answer a lookup by
    /// userName by walking a whole tenant's index (seen at 100,000 users).
    pub async fn autovacuum_off(&self) -> Result<bool, Error> {
        if self.backend != Backend::Postgres {
            return Ok(false);
        }
        #[derive(diesel::QueryableByName)]
        struct Setting {
            #[diesel(sql_type = diesel::sql_types::Text)]
            setting: String,
        }
        self.run(|conn| {
            let row: Setting =
                diesel::sql_query("SELECT setting FROM pg_settings WHERE name = 'autovacuum'")
                    .get_result(conn)?;
            Ok::<bool, Error>(row.setting == "off")
        })
        .await
    }

    /// Cheap round trip for `/readyz` and `doctor`.
    pub async fn ping(&self) -> Result<(), Error> {
        self.run(|conn| {
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok::<(), Error>(())
        })
        .await
    }
}

/// The current time as stored: UTC without an offset, to the microsecond.
pub fn now() -> chrono::NaiveDateTime {
    let now = chrono::Utc::now().naive_utc();
    // SQLite keeps what it is given and PostgreSQL rounds to microseconds;
    // truncating here makes both return the value that was written.
    chrono::DurationRound::duration_trunc(now, chrono::TimeDelta::microseconds(1)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libpq quotes the part of a URL it cannot read, here the password;
    /// the error that reaches callers and logs holds it no more.
    #[tokio::test]
    async fn a_connection_error_does_not_quote_the_password() {
        let url = DatabaseUrl::Postgres("postgres://app:50%off@127.0.0.1:1/scim".into());
        let store = Store::open(&url, 1, Duration::from_millis(300)).expect("pool");
        let error = store
            .run(|c| {
                diesel::sql_query("SELECT 1")
                    .execute(c)
                    .map_err(Error::from)
            })
            .await
            .expect_err("no such server");
        let said = error.to_string();
        assert!(!said.contains("50%off"), "{said}");
        assert!(
            said.contains("***"),
            "the error still says what was wrong: {said}"
        );
    }
}
