//! Each migration set produces the schema that `schema.rs` describes.

use diesel::prelude::*;
use scimsync::store::schema::*;
use scimsync::store::{
    Conn, log::LogRow, orgs::Org, teams::TeamRow, tokens::TokenRow, users::UserRow,
};

use crate::helpers::TestApp;
use crate::on_both_backends;

on_both_backends!(migrations_match_schema_rs);

/// Columns the database has for `table`, in any order.
fn db_columns(c: &mut Conn, table: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let sql = match c {
        Conn::Pg(_) => format!(
            "SELECT column_name::text AS name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = '{table}'"
        ),
        Conn::Sqlite(_) => format!("SELECT name FROM pragma_table_info('{table}')"),
    };
    let mut names: Vec<String> = diesel::sql_query(sql)
        .load::<Name>(c)
        .expect("columns")
        .into_iter()
        .map(|n| n.name)
        .collect();
    names.sort();
    names
}

/// Column names of a `schema.rs` table, read from the SQL diesel writes for it.
macro_rules! declared {
    ($table:ident) => {
        column_names(
            &diesel::debug_query::<diesel::pg::Pg, _>(&$table::table.select($table::all_columns))
                .to_string(),
        )
    };
}

fn column_names(sql: &str) -> Vec<String> {
    let select = sql
        .trim_start_matches("SELECT ")
        .split(" FROM ")
        .next()
        .unwrap_or_default();
    let mut names: Vec<String> = select
        .split(", ")
        .filter_map(|c| c.rsplit('.').next())
        .map(|c| c.trim().trim_matches('"').to_owned())
        .collect();
    names.sort();
    names
}

async fn migrations_match_schema_rs(app: TestApp) {
    app.store
        .run(|c| {
            for (table, want) in [
                ("organizations", declared!(organizations)),
                ("scim_tokens", declared!(scim_tokens)),
                ("users", declared!(users)),
                ("teams", declared!(teams)),
                ("team_members", declared!(team_members)),
                ("provisioning_log", declared!(provisioning_log)),
                ("outbox", declared!(outbox)),
                ("invitations", declared!(invitations)),
                ("user_emails", declared!(user_emails)),
            ] {
                assert_eq!(db_columns(c, table), want, "columns of {table}");
            }
            // Reading through the models checks the column types too.
            organizations::table.select(Org::as_select()).load(c)?;
            scim_tokens::table.select(TokenRow::as_select()).load(c)?;
            users::table.select(UserRow::as_select()).load(c)?;
            teams::table.select(TeamRow::as_select()).load(c)?;
            provisioning_log::table
                .select(LogRow::as_select())
                .load(c)?;
            Ok::<(), scimsync::store::Error>(())
        })
        .await
        .expect("schema readable");
}

/// Two processes starting together on a new PostgreSQL database both
/// migrate it: one waits for the other and finds nothing left to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_both_migrate() {
    if !crate::helpers::postgres_redis_enabled() {
        return;
    }
    let env = crate::helpers::test_env(crate::helpers::Backend::PostgresRedis);
    let url = env.settings.database_url().expect("url");
    let timeout = std::time::Duration::from_secs(10);
    let a = scimsync::store::Store::open(&url, 1, timeout).expect("store");
    let b = scimsync::store::Store::open(&url, 1, timeout).expect("store");
    let (a, b) = tokio::join!(a.migrate(), b.migrate());
    let (a, b) = (a.expect("first migrates"), b.expect("second migrates"));
    assert!(!a.is_empty() || !b.is_empty(), "the migrations ran");
    assert_eq!(
        a.len() + b.len(),
        a.len().max(b.len()),
        "each ran once: {a:?} {b:?}"
    );
    let store = scimsync::store::Store::open(&url, 1, timeout).expect("store");
    assert!(
        store
            .pending_migrations()
            .await
            .expect("pending")
            .is_empty()
    );
}
