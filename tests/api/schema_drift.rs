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
