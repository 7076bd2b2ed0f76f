//! A PostgreSQL database of its own for a unit test that needs the real
//! planner, dropped when the test ends, passed or not.

use diesel::pg::PgConnection;
use diesel::sql_types::BigInt;
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::MigrationHarness;

pub(crate) struct Scratch {
    admin_url: String,
    db: String,
}

impl Scratch {
    /// A migrated database and a connection to it, or None (with a note)
    /// when `SCIMSYNC_TEST_POSTGRES_URL` is not set.
    pub(crate) fn create() -> Option<(Scratch, PgConnection)> {
        let Ok(admin_url) = std::env::var("SCIMSYNC_TEST_POSTGRES_URL") else {
            eprintln!("note: skipped; set SCIMSYNC_TEST_POSTGRES_URL to run it");
            return None;
        };
        let scratch = Scratch {
            db: format!(
                "scimsync_plan_{}",
                ulid::Ulid::new().to_string().to_lowercase()
            ),
            admin_url,
        };
        let mut admin = PgConnection::establish(&scratch.admin_url).expect("PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE \"{}\"", scratch.db))
            .execute(&mut admin)
            .expect("scratch database");
        let mut url = url::Url::parse(&scratch.admin_url).expect("PostgreSQL URL");
        url.set_path(&scratch.db);
        let mut conn = PgConnection::establish(url.as_str()).expect("scratch connection");
        conn.run_pending_migrations(super::PG_MIGRATIONS)
            .expect("migrations");
        diesel::sql_query(
            "INSERT INTO organizations (id, slug, name, created_at) VALUES ('org', 'org', 'Org', now())",
        )
        .execute(&mut conn)
        .expect("organization");
        Some((scratch, conn))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db
            ))
            .execute(&mut admin);
        }
    }
}

#[derive(diesel::QueryableByName)]
struct Scans {
    #[diesel(sql_type = BigInt)]
    seq_scan: i64,
}

/// Full scans of `table` so far, this connection's included.
pub(crate) fn full_scans(conn: &mut PgConnection, table: &str) -> i64 {
    diesel::sql_query("SELECT pg_stat_force_next_flush()")
        .execute(conn)
        .expect("flush statistics");
    diesel::sql_query("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1")
        .bind::<diesel::sql_types::Text, _>(table)
        .get_result::<Scans>(conn)
        .expect("table statistics")
        .seq_scan
}

/// Runs `run` eight times on a new database, more often than PostgreSQL
/// plans a statement afresh before it settles on a plan for the
/// connection; then runs each of `fill`, and `run` once more on the same
/// connection. Returns what that last run returned and how many full scans
/// of `table` it made; None (with a note) without PostgreSQL.
pub(crate) fn full_scans_after_growth<T>(
    table: &str,
    fill: &[&str],
    mut run: impl FnMut(&mut super::Conn) -> T,
) -> Option<(T, i64)> {
    let (_scratch, pg) = Scratch::create()?;
    let mut conn = super::Conn::Pg(pg);
    for _ in 0..8 {
        run(&mut conn);
    }
    let super::Conn::Pg(pg) = &mut conn else {
        unreachable!("a PostgreSQL connection")
    };
    for statement in fill {
        diesel::sql_query(*statement)
            .execute(pg)
            .expect("fill the table");
    }
    let before = full_scans(pg, table);
    let last = run(&mut conn);
    let super::Conn::Pg(pg) = &mut conn else {
        unreachable!("a PostgreSQL connection")
    };
    Some((last, full_scans(pg, table) - before))
}
