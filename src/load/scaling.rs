//! `scimsync bench-scaling`: whether the cost of Entra ID's requests stays
//! flat as a tenant grows.
//!
//! Each tenant is seeded straight into the database with set-based SQL
//! (PostgreSQL `generate_series`, SQLite a recursive CTE), in batches of
//! [`BATCH`] rows. Every row is the one applying a change writes: the
//! columns and stored resource come from the same functions as
//! `reconcile::apply`, for the body Entra ID sends (the load simulator's,
//! with a displayName), and each email is indexed in `user_emails`. Seeded
//! users are in the state of users who accepted their invitation long ago:
//! joined, with no invitation or mail rows, so seeding owes no mail.
//!
//! Then the requests Entra ID sends most are timed one at a time through
//! HTTP, the PATCHes through the queue and the worker as always: a lookup
//! by userName and by email, a GET by id, a user's groups, adding and removing one member of a small and
//! of a large group, and the two reads of the large group without members.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Secret;
use super::data;
use super::stats::Latency;
use crate::config::Settings;
use crate::reconcile::apply::{email_values, new_team_row, new_user_row};
use crate::scim::ResourceKind;
use crate::scim::resource::validate_resource;
use crate::startup::{Application, Role};
use crate::store::schema::{
    invitations, organizations, outbox, provisioning_log, scim_tokens, team_members, teams,
    user_emails, users,
};
use crate::store::{self, Backend, Conn, Store};

/// Rows written per statement and transaction while seeding.
const BATCH: usize = 50_000;
/// Slugs of seeded organizations start with this.
const SLUG_PREFIX: &str = "scaling-";
/// Stands for a user's number in a template.
const NUMBER: &str = "{{i}}";
/// Stands for a user's number padded to 12 digits (the end of its id).
const PADDED: &str = "{{i12}}";

/// Seed tenants of growing size straight into the database and time the
/// requests Entra ID sends most against each: does their cost stay flat
/// as a tenant grows?
///
/// For each size, an organization `scaling-<users>-<hex>` is seeded (users
/// as Entra ID creates them, each email indexed; a small and a large group)
/// and a token issued for it. Then, one request at a time, after warm-up
/// requests that are not timed: GET /Users?filter=userName eq "…"; GET
/// /Users/{id}; GET /Users?filter=emails.value eq "…"; GET
/// /Groups?filter=members.value eq "…" (a user's groups); a PATCH adding one member to the small and to the large
/// group, each followed by a PATCH removing it again (through the queue
/// and the worker, as every write); GET /Groups/{id}?excludedAttributes=members
/// and GET /Groups?filter=displayName eq "…"&excludedAttributes=members on
/// the large group. Reports p50/p95/p99/max per operation and size.
///
/// The database is the configured one (DATABASE_URL; the embedded default
/// otherwise): use a scratch database. Without --url a server runs in this
/// process on a free port, on that database and the configured queue; it
/// logs every request at info level as `scimsync run` does
/// (SCIMSYNC_LOG__LEVEL=warn keeps the output to the report). Seeded
/// organizations are removed at the end unless --keep is given.
///
/// Example, on a scratch PostgreSQL database and a Redis database and
/// queue of its own (its worker would otherwise take a running service's
/// changes):
///
///   DATABASE_URL=postgres://postgres@127.0.0.1/scimsync_scaling REDIS_URL=redis://127.0.0.1:6379/5 SCIMSYNC_QUEUE__NAME=scaling-bench scimsync bench-scaling
#[derive(Debug, Clone, clap::Args)]
pub struct ScalingArgs {
    /// Tenant sizes in users, comma-separated, smallest first. Each gets a
    /// fresh organization.
    #[arg(
        long,
        value_name = "N,…",
        value_delimiter = ',',
        default_value = "1000,1000000"
    )]
    pub sizes: Vec<usize>,
    /// Members of the small group.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub small_group: usize,
    /// Members of the large group; a tenant with fewer users gets all but
    /// one (one user stays in no group, to be added and removed).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub large_group: usize,
    /// Timed requests per operation and size.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub requests: usize,
    /// Requests per operation and size sent first and not timed.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub warmup: usize,
    /// SCIM base URL of a running service that uses the same database;
    /// without it a server is started in this process.
    #[arg(long, value_name = "URL")]
    pub url: Option<url::Url>,
    /// Leave the seeded organizations in the database.
    #[arg(long)]
    pub keep: bool,
    /// Seed even though the database holds other organizations.
    #[arg(long)]
    pub shared_database: bool,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What to seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant {
    pub users: usize,
    /// Members wanted in each group; see [`Tenant::members`].
    pub small_group: usize,
    pub large_group: usize,
}

impl Tenant {
    /// Members a group of `wanted` gets: the last user stays in no group.
    pub fn members(&self, wanted: usize) -> usize {
        wanted.min(self.users.saturating_sub(1))
    }
}

/// A seeded organization and the names of what it holds.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub org_id: String,
    pub slug: String,
    /// A SCIM token of the organization.
    pub token: Secret,
    pub users: usize,
    pub small: SeededGroup,
    pub large: SeededGroup,
    /// How long seeding took, counting the checks and statistics.
    pub seed_secs: f64,
    /// User `i`'s id is this followed by `i` in 12 digits.
    id_prefix: String,
}

/// A seeded group. Its members are users `0..members`.
#[derive(Debug, Clone)]
pub struct SeededGroup {
    pub id: String,
    pub display_name: String,
    pub members: usize,
}

impl Seeded {
    /// The id of user `i` (from 0).
    pub fn user_id(&self, i: usize) -> String {
        format!("{}{i:012}", self.id_prefix)
    }

    /// The userName of user `i`.
    pub fn user_name(&self, i: usize) -> String {
        user_name(&i.to_string())
    }

    /// The user in no group: the one the PATCHes add and remove.
    pub fn outsider(&self) -> usize {
        self.users - 1
    }
}

fn user_name(number: &str) -> String {
    format!("user{number}@example.com")
}

/// The first 24 characters of a random UUID; 12 digits complete it.
fn uuid_prefix() -> String {
    let uuid = uuid::Uuid::new_v4().hyphenated().to_string();
    uuid[..24].to_owned()
}

/// What Entra ID sends to create user `number` (the simulator's body,
/// with a displayName as Entra's default mappings send one).
fn user_body(number: &str, padded: &str, external_prefix: &str) -> Value {
    let mut body = data::create_user_body(&data::User {
        user_name: user_name(number),
        external_id: format!("{external_prefix}{padded}"),
        given_name: "Scale".to_owned(),
        family_name: format!("User {number}"),
        department: "Engineering".to_owned(),
    });
    body["displayName"] = json!(format!("Scale User {number}"));
    body
}

/// The text of every column of a seeded user, with [`NUMBER`] and
/// [`PADDED`] where the user's number goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserTemplate {
    id: String,
    user_name: String,
    user_name_key: String,
    external_id: Option<String>,
    display_name: Option<String>,
    display_name_key: Option<String>,
    email: Option<String>,
    active: bool,
    resource: String,
    /// The `user_emails` keys.
    email_keys: Vec<String>,
}

/// The columns applying the creation of user `number` writes; with the
/// markers as number, the template of every seeded user.
fn user_template(
    id_prefix: &str,
    external_prefix: &str,
    number: &str,
    padded: &str,
) -> anyhow::Result<UserTemplate> {
    let resource = validate_resource(
        ResourceKind::User,
        user_body(number, padded, external_prefix),
    )?;
    let mut email_keys: Vec<String> = Vec::new();
    for value in email_values(&resource) {
        let key = value.to_lowercase();
        if !key.is_empty() && !email_keys.contains(&key) {
            email_keys.push(key);
        }
    }
    let row = new_user_row("", &format!("{id_prefix}{padded}"), resource)?;
    Ok(UserTemplate {
        id: row.id,
        user_name: row.user_name,
        user_name_key: row.user_name_key,
        external_id: row.external_id,
        display_name: row.display_name,
        display_name_key: row.display_name_key,
        email: row.email,
        active: row.active,
        resource: row.resource,
        email_keys,
    })
}

/// An SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A template as an SQL text expression of the series column `s.i`.
fn sql_text(template: &str, backend: Backend) -> String {
    let padded = match backend {
        Backend::Postgres => "lpad(CAST(s.i AS TEXT), 12, '0')",
        Backend::Sqlite => "printf('%012d', s.i)",
    };
    let mut parts = Vec::new();
    let mut rest = template;
    loop {
        let next = [NUMBER, PADDED]
            .into_iter()
            .filter_map(|m| rest.find(m).map(|at| (at, m)))
            .min();
        let Some((at, marker)) = next else {
            if !rest.is_empty() || parts.is_empty() {
                parts.push(literal(rest));
            }
            break;
        };
        if at > 0 {
            parts.push(literal(&rest[..at]));
        }
        parts.push(if marker == NUMBER {
            "CAST(s.i AS TEXT)".to_owned()
        } else {
            padded.to_owned()
        });
        rest = &rest[at + marker.len()..];
    }
    parts.join(" || ")
}

fn sql_opt(template: Option<&str>, backend: Backend) -> String {
    template.map_or_else(|| "NULL".to_owned(), |t| sql_text(t, backend))
}

/// The `n`-th bound parameter. Every seeding statement binds the same
/// four (see [`execute`]): the organization, the time, and the first and
/// last number of the batch.
fn param(backend: Backend, n: u8) -> String {
    match backend {
        Backend::Postgres => format!("${n}"),
        Backend::Sqlite => format!("?{n}"),
    }
}

/// `INSERT INTO <into> SELECT <select>` for each number `s.i` of the batch.
fn series_insert(backend: Backend, into: &str, select: &str) -> String {
    match backend {
        Backend::Postgres => format!(
            "INSERT INTO {into} SELECT {select} FROM generate_series($3::BIGINT, $4::BIGINT) AS s(i)"
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE s(i) AS (SELECT ?3 UNION ALL SELECT i + 1 FROM s WHERE i < ?4) \
             INSERT INTO {into} SELECT {select} FROM s"
        ),
    }
}

/// The statements that seed a batch of users: the users, then their emails.
fn user_statements(t: &UserTemplate, backend: Backend) -> Vec<String> {
    let text = |s: &str| sql_text(s, backend);
    let opt = |s: &Option<String>| sql_opt(s.as_deref(), backend);
    let (org, at) = (param(backend, 1), param(backend, 2));
    let select = [
        text(&t.id),
        org.clone(),
        text(&t.user_name),
        text(&t.user_name_key),
        opt(&t.external_id),
        opt(&t.display_name),
        opt(&t.display_name_key),
        opt(&t.email),
        if t.active { "TRUE" } else { "FALSE" }.to_owned(),
        text(&t.resource),
        "1".to_owned(),
        at.clone(),
        at.clone(),
        at,
    ]
    .join(", ");
    let mut statements = vec![series_insert(
        backend,
        "users (id, org_id, user_name, user_name_key, external_id, display_name, \
         display_name_key, email, active, resource, version, created_at, updated_at, joined_at)",
        &select,
    )];
    for key in &t.email_keys {
        statements.push(series_insert(
            backend,
            "user_emails (user_id, org_id, value_key)",
            &format!("{}, {org}, {}", text(&t.id), text(key)),
        ));
    }
    statements
}

/// The statement that makes a batch of users members of `team_id`.
fn member_statement(id_prefix: &str, team_id: &str, backend: Backend) -> String {
    series_insert(
        backend,
        "team_members (team_id, user_id, org_id, created_at)",
        &format!(
            "{}, {}, {}, {}",
            literal(team_id),
            sql_text(&format!("{id_prefix}{PADDED}"), backend),
            param(backend, 1),
            param(backend, 2)
        ),
    )
}

/// Runs one seeding statement over the numbers `lo..=hi`.
fn execute(
    c: &mut Conn,
    sql: &str,
    org_id: &str,
    at: chrono::NaiveDateTime,
    lo: i64,
    hi: i64,
) -> QueryResult<usize> {
    match c {
        Conn::Pg(c) => diesel::sql_query(sql)
            .bind::<Text, _>(org_id)
            .bind::<Timestamp, _>(at)
            .bind::<BigInt, _>(lo)
            .bind::<BigInt, _>(hi)
            .execute(c),
        Conn::Sqlite(c) => diesel::sql_query(sql)
            .bind::<Text, _>(org_id)
            .bind::<Timestamp, _>(at)
            .bind::<BigInt, _>(lo)
            .bind::<BigInt, _>(hi)
            .execute(c),
    }
}

/// Runs `statements` over `0..count` in batches, one transaction each,
/// printing progress as `what`.
async fn seed_series(
    store: &Store,
    label: &str,
    what: &str,
    statements: Vec<String>,
    org_id: &str,
    count: usize,
    started: Instant,
) -> anyhow::Result<()> {
    let at = store::now();
    let mut done = 0;
    while done < count {
        let n = BATCH.min(count - done);
        let lo = i64::try_from(done)?;
        let hi = i64::try_from(done + n - 1)?;
        let statements = statements.clone();
        let org_id = org_id.to_owned();
        store
            .run(move |c| {
                c.transaction(|c| {
                    for sql in &statements {
                        let written = execute(c, sql, &org_id, at, lo, hi)?;
                        if written != n {
                            return Err(store::Error::Corrupt(format!(
                                "a seeding statement wrote {written} rows instead of {n}"
                            )));
                        }
                    }
                    Ok::<(), store::Error>(())
                })
            })
            .await
            .with_context(|| format!("cannot seed {what} {lo}..={hi} of {label}"))?;
        done += n;
        eprintln!(
            "bench-scaling: {label}: {what} {} / {} ({:.1} s)",
            thousands(done),
            thousands(count),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Creates an organization of `tenant.users` users and two groups, and a
/// token for it. On failure, what was seeded is removed again.
pub async fn seed(store: &Store, tenant: Tenant) -> anyhow::Result<Seeded> {
    if tenant.users < 2 {
        bail!("a tenant needs at least 2 users (one stays in no group)");
    }
    let started = Instant::now();
    let slug = format!(
        "{SLUG_PREFIX}{}-{}",
        tenant.users,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let org = crate::ops::orgs::create(
        store,
        &slug,
        Some(&format!("Scaling test, {} users", thousands(tenant.users))),
        None,
    )
    .await?;
    let token = crate::ops::tokens::create(store, &org.slug, "bench-scaling").await?;
    let org_id = org_id_of(store, &slug).await?;
    let mut seeded = Seeded {
        org_id,
        slug,
        token: Secret::new(token.token),
        users: tenant.users,
        small: SeededGroup {
            id: uuid::Uuid::new_v4().to_string(),
            display_name: "Scaling small group".to_owned(),
            members: tenant.members(tenant.small_group),
        },
        large: SeededGroup {
            id: uuid::Uuid::new_v4().to_string(),
            display_name: "Scaling large group".to_owned(),
            members: tenant.members(tenant.large_group),
        },
        seed_secs: 0.0,
        id_prefix: uuid_prefix(),
    };
    match fill(store, &seeded, started).await {
        Ok(()) => {
            seeded.seed_secs = started.elapsed().as_secs_f64();
            Ok(seeded)
        }
        Err(e) => {
            if let Err(cleanup) = remove(store, &seeded).await {
                eprintln!(
                    "bench-scaling: could not remove the partly seeded {}: {cleanup:#}",
                    seeded.slug
                );
            }
            Err(e)
        }
    }
}

/// Writes the users, groups and memberships of `seeded`, checks the
/// counts, and on PostgreSQL updates the planner's statistics.
async fn fill(store: &Store, seeded: &Seeded, started: Instant) -> anyhow::Result<()> {
    let backend = store.backend();
    let label = seeded.slug.as_str();
    let template = user_template(&seeded.id_prefix, &uuid_prefix(), NUMBER, PADDED)?;
    seed_series(
        store,
        label,
        "users",
        user_statements(&template, backend),
        &seeded.org_id,
        seeded.users,
        started,
    )
    .await?;
    for group in [&seeded.small, &seeded.large] {
        let body = data::create_group_body(&data::Group {
            display_name: group.display_name.clone(),
            external_id: uuid::Uuid::new_v4().to_string(),
            members: Vec::new(),
        });
        let resource = validate_resource(ResourceKind::Group, body)?;
        let row = new_team_row(&seeded.org_id, &group.id, resource)?;
        store
            .run(move |c| store::teams::insert(c, &row).map_err(store::Error::from))
            .await
            .context("cannot seed a group")?;
        seed_series(
            store,
            label,
            &format!("members of \"{}\"", group.display_name),
            vec![member_statement(&seeded.id_prefix, &group.id, backend)],
            &seeded.org_id,
            group.members,
            started,
        )
        .await?;
    }
    let org_id = seeded.org_id.clone();
    let counts = store
        .run(move |c| -> Result<(i64, i64, i64), store::Error> {
            Ok((
                users::table
                    .filter(users::org_id.eq(&org_id))
                    .count()
                    .get_result(c)?,
                user_emails::table
                    .filter(user_emails::org_id.eq(&org_id))
                    .count()
                    .get_result(c)?,
                team_members::table
                    .filter(team_members::org_id.eq(&org_id))
                    .count()
                    .get_result(c)?,
            ))
        })
        .await?;
    let expected = (
        i64::try_from(seeded.users)?,
        i64::try_from(seeded.users * template.email_keys.len())?,
        i64::try_from(seeded.small.members + seeded.large.members)?,
    );
    if counts != expected {
        bail!(
            "{label} holds (users, emails, memberships) {counts:?} instead of {expected:?}; \
             was something else writing to it?"
        );
    }
    if backend == Backend::Postgres {
        // What autovacuum would do within a minute of such a load: without
        // statistics the planner may read a whole tenant per lookup.
        store
            .run(|c| {
                diesel::sql_query("ANALYZE users, user_emails, teams, team_members")
                    .execute(c)
                    .map_err(store::Error::from)
            })
            .await
            .context("cannot update the planner's statistics")?;
    }
    eprintln!(
        "bench-scaling: {label}: seeded and checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn org_id_of(store: &Store, slug: &str) -> anyhow::Result<String> {
    let slug = slug.to_owned();
    let org = store
        .run(move |c| store::orgs::find_by_slug(c, &slug).map_err(store::Error::from))
        .await?
        .context("the organization just created is missing")?;
    Ok(org.id)
}

/// Deletes a seeded organization and everything in it, table by table
/// (one bulk delete each, rather than a cascade row by row).
pub async fn remove(store: &Store, seeded: &Seeded) -> anyhow::Result<()> {
    let started = Instant::now();
    let org_id = seeded.org_id.clone();
    store
        .run(move |c| {
            let org = org_id.as_str();
            c.transaction(|c| {
                diesel::delete(team_members::table.filter(team_members::org_id.eq(org)))
                    .execute(c)?;
                diesel::delete(user_emails::table.filter(user_emails::org_id.eq(org)))
                    .execute(c)?;
                diesel::delete(invitations::table.filter(invitations::org_id.eq(org)))
                    .execute(c)?;
                diesel::delete(outbox::table.filter(outbox::org_id.eq(org))).execute(c)?;
                diesel::delete(provisioning_log::table.filter(provisioning_log::org_id.eq(org)))
                    .execute(c)?;
                diesel::delete(users::table.filter(users::org_id.eq(org))).execute(c)?;
                diesel::delete(teams::table.filter(teams::org_id.eq(org))).execute(c)?;
                diesel::delete(scim_tokens::table.filter(scim_tokens::org_id.eq(org)))
                    .execute(c)?;
                diesel::delete(organizations::table.filter(organizations::id.eq(org)))
                    .execute(c)?;
                Ok::<(), store::Error>(())
            })
        })
        .await
        .with_context(|| format!("cannot remove {}", seeded.slug))?;
    eprintln!(
        "bench-scaling: {}: removed in {:.1} s",
        seeded.slug,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The results of one kind of request on one tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpResult {
    pub operation: &'static str,
    /// The request, in short.
    pub request: &'static str,
    /// Members of the group the request is about, if any.
    pub group_members: Option<usize>,
    /// Timed requests sent.
    pub count: u64,
    /// Of those, answered as expected.
    pub ok: u64,
    /// Over every answered timed request, in microseconds.
    pub latency_us: Option<Latency>,
    /// Failures by HTTP status, `bad-body`, or `transport`.
    pub errors: BTreeMap<String, u64>,
}

/// The timed requests of one operation.
struct Samples {
    /// Warm-up answers still to leave out.
    untimed: usize,
    operation: &'static str,
    request: &'static str,
    group_members: Option<usize>,
    latencies_us: Vec<u32>,
    count: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Samples {
    /// Samples of `operation` that leave the first `untimed` answers out.
    fn new(
        operation: &'static str,
        request: &'static str,
        group_members: Option<usize>,
        untimed: usize,
    ) -> Self {
        Samples {
            untimed,
            operation,
            request,
            group_members,
            latencies_us: Vec::new(),
            count: 0,
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    /// Records an answer, unless it is one of the warm-up answers.
    fn add(&mut self, answer: Answered) {
        if self.untimed > 0 {
            self.untimed -= 1;
            return;
        }
        self.count += 1;
        if let Some(took) = answer.took {
            self.latencies_us
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
        match answer.verdict {
            Ok(()) => self.ok += 1,
            Err(key) => *self.errors.entry(key).or_default() += 1,
        }
    }

    fn finish(mut self) -> OpResult {
        OpResult {
            operation: self.operation,
            request: self.request,
            group_members: self.group_members,
            count: self.count,
            ok: self.ok,
            latency_us: Latency::of(&mut self.latencies_us),
            errors: self.errors,
        }
    }
}

/// One request's time, when it was answered, and whether as expected.
struct Answered {
    took: Option<Duration>,
    verdict: Result<(), String>,
}

/// Sends the timed requests: one at a time, over one kept-alive connection.
struct Probe {
    http: reqwest::Client,
    base: url::Url,
    token: Secret,
}

impl Probe {
    fn new(base: &url::Url, token: Secret) -> anyhow::Result<Self> {
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            bail!("--url must be an http:// or https:// SCIM base URL, got {base}");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Probe {
            http,
            base: base.clone(),
            token,
        })
    }

    fn url(&self, segments: &[&str], query: Option<&str>) -> url::Url {
        super::client::below(&self.base, segments, query)
    }

    /// Sends one request and times it until its body has been read;
    /// `expect` is the status it must have, `check` judges the body.
    async fn send(
        &self,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
        expect: StatusCode,
        check: impl Fn(&Value) -> bool,
    ) -> Answered {
        let started = Instant::now();
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/scim+json")
                .body(body.to_string());
        }
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|bytes| (status, bytes))
            }
            Err(e) => Err(e),
        };
        let took = started.elapsed();
        let (status, bytes) = match answer {
            Ok(a) => a,
            Err(_) => {
                return Answered {
                    took: None,
                    verdict: Err("transport".to_owned()),
                };
            }
        };
        let verdict = if status != expect {
            Err(status.as_u16().to_string())
        } else {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if check(&body) {
                Ok(())
            } else {
                Err("bad-body".to_owned())
            }
        };
        Answered {
            took: Some(took),
            verdict,
        }
    }
}

/// The user the `j`-th request of an operation asks about: spread over
/// the whole tenant, never the same twice in a row.
fn pick(j: usize, users: usize) -> usize {
    j.wrapping_mul(7_919).wrapping_add(13) % users
}

/// Times every operation on `seeded` through the SCIM API at `base`:
/// `warmup` untimed requests, then `requests` timed ones, each.
pub async fn measure(
    base: &url::Url,
    seeded: &Seeded,
    requests: usize,
    warmup: usize,
) -> anyhow::Result<Vec<OpResult>> {
    let probe = Probe::new(base, seeded.token.clone())?;
    let outsider = seeded.user_id(seeded.outsider());
    // Nothing else makes sense if the service cannot see the tenant.
    let first = probe
        .send(
            Method::GET,
            probe.url(&["Users", &outsider], None),
            None,
            StatusCode::OK,
            |b| b["id"] == outsider.as_str(),
        )
        .await;
    match first.verdict {
        Ok(()) => {}
        Err(e) if e == "401" => bail!(
            "the service at {base} refused the seeded organization's token: \
             does it use the same database as this command (DATABASE_URL)?"
        ),
        Err(e) => bail!("GET /Users/{outsider} at {base} was answered {e}, not 200 with the user"),
    }
    let rounds = warmup + requests;
    let label = format!("{} users", thousands(seeded.users));
    let mut results = Vec::new();

    eprintln!("bench-scaling: {label}: timing lookups by userName and by id");
    let mut by_name = Samples::new(
        "filter-user",
        "GET /Users?filter=userName eq \"…\"",
        None,
        warmup,
    );
    let mut by_id = Samples::new("get-user", "GET /Users/{id}", None, warmup);
    for j in 0..rounds {
        let i = pick(j, seeded.users);
        let name = seeded.user_name(i);
        let url = probe.url(&["Users"], Some(&data::eq_filter("userName", &name)));
        let answer = probe
            .send(Method::GET, url, None, StatusCode::OK, |b| {
                b["totalResults"] == 1 && b["Resources"][0]["userName"] == name.as_str()
            })
            .await;
        by_name.add(answer);
        let id = seeded.user_id(i);
        let answer = probe
            .send(
                Method::GET,
                probe.url(&["Users", &id], None),
                None,
                StatusCode::OK,
                |b| b["id"] == id.as_str() && b["userName"] == name.as_str(),
            )
            .await;
        by_id.add(answer);
    }
    results.push(by_name.finish());
    results.push(by_id.finish());

    eprintln!("bench-scaling: {label}: timing lookups by email and of a user's groups");
    let mut by_email = Samples::new(
        "filter-user-email",
        "GET /Users?filter=emails.value eq \"…\"",
        None,
        warmup,
    );
    let member = seeded.user_id(0);
    let mut by_member = Samples::new(
        "filter-group-member",
        "GET /Groups?filter=members.value eq \"…\"&excludedAttributes=members",
        None,
        warmup,
    );
    let member_url = probe.url(
        &["Groups"],
        Some(&format!(
            "excludedAttributes=members&{}",
            data::eq_filter("members.value", &member)
        )),
    );
    for j in 0..rounds {
        let i = pick(j, seeded.users);
        let name = seeded.user_name(i);
        let url = probe.url(&["Users"], Some(&data::eq_filter("emails.value", &name)));
        let answer = probe
            .send(Method::GET, url, None, StatusCode::OK, |b| {
                b["totalResults"] == 1 && b["Resources"][0]["userName"] == name.as_str()
            })
            .await;
        by_email.add(answer);
        // User 0 is in both seeded groups.
        let answer = probe
            .send(Method::GET, member_url.clone(), None, StatusCode::OK, |b| {
                b["totalResults"] == 2
            })
            .await;
        by_member.add(answer);
    }
    results.push(by_email.finish());
    results.push(by_member.finish());

    let groups = [
        (
            &seeded.small,
            "small",
            "add-member-small",
            "remove-member-small",
        ),
        (
            &seeded.large,
            "large",
            "add-member-large",
            "remove-member-large",
        ),
    ];
    for (group, size, add_name, remove_name) in groups {
        eprintln!(
            "bench-scaling: {label}: timing member PATCHes of the {size} group ({} members)",
            thousands(group.members)
        );
        let members = Some(group.members);
        let mut adds = Samples::new(
            add_name,
            "PATCH /Groups/{id} Add members (one)",
            members,
            warmup,
        );
        let mut removes = Samples::new(
            remove_name,
            "PATCH /Groups/{id} Remove members (one)",
            members,
            warmup,
        );
        let url = probe.url(&["Groups", &group.id], None);
        let add_body = data::add_members_body([outsider.as_str()]);
        let remove_body = data::remove_member_body(&outsider);
        for _ in 0..rounds {
            let answer = probe
                .send(
                    Method::PATCH,
                    url.clone(),
                    Some(&add_body),
                    StatusCode::NO_CONTENT,
                    |_| true,
                )
                .await;
            adds.add(answer);
            let answer = probe
                .send(
                    Method::PATCH,
                    url.clone(),
                    Some(&remove_body),
                    StatusCode::NO_CONTENT,
                    |_| true,
                )
                .await;
            removes.add(answer);
        }
        results.push(adds.finish());
        results.push(removes.finish());
    }

    let large = &seeded.large;
    eprintln!(
        "bench-scaling: {label}: timing reads of the large group without members ({} members)",
        thousands(large.members)
    );
    let members = Some(large.members);
    let mut get = Samples::new(
        "get-group-no-members",
        "GET /Groups/{id}?excludedAttributes=members",
        members,
        warmup,
    );
    let mut find = Samples::new(
        "filter-group-no-members",
        "GET /Groups?filter=displayName eq \"…\"&excludedAttributes=members",
        members,
        warmup,
    );
    let get_url = probe.url(&["Groups", &large.id], Some("excludedAttributes=members"));
    let find_url = probe.url(
        &["Groups"],
        Some(&format!(
            "excludedAttributes=members&{}",
            data::eq_filter("displayName", &large.display_name)
        )),
    );
    for _ in 0..rounds {
        let answer = probe
            .send(Method::GET, get_url.clone(), None, StatusCode::OK, |b| {
                b["id"] == large.id.as_str() && b.get("members").is_none()
            })
            .await;
        get.add(answer);
        let answer = probe
            .send(Method::GET, find_url.clone(), None, StatusCode::OK, |b| {
                let group = &b["Resources"][0];
                b["totalResults"] == 1
                    && group["id"] == large.id.as_str()
                    && group.get("members").is_none()
            })
            .await;
        find.add(answer);
    }
    results.push(get.finish());
    results.push(find.finish());
    Ok(results)
}

/// One tenant's seeding and measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantReport {
    pub users: usize,
    pub small_group_members: usize,
    pub large_group_members: usize,
    pub seed_secs: f64,
    pub operations: Vec<OpResult>,
}

/// What `bench-scaling` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `postgres` or `sqlite`.
    pub database: &'static str,
    /// `in-process`, or the --url measured.
    pub server: String,
    pub requests: usize,
    pub warmup: usize,
    pub tenants: Vec<TenantReport>,
}

impl Report {
    /// Timed requests not answered as expected.
    pub fn failed(&self) -> u64 {
        self.tenants
            .iter()
            .flat_map(|t| &t.operations)
            .map(|o| o.count - o.ok)
            .sum()
    }

    /// The report as a table, one row per operation and tenant size, with
    /// each p50 next to that of the smallest tenant.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let database = match self.database {
            "postgres" => "PostgreSQL",
            _ => "SQLite",
        };
        let _ = writeln!(
            out,
            "bench-scaling: {database}, {} server; each operation {} times after {} untimed, one request at a time\n",
            self.server, self.requests, self.warmup
        );
        let _ = writeln!(
            out,
            "{:>10}  {:>9}  {:>11}  {:>11}",
            "USERS", "SEEDED IN", "SMALL GROUP", "LARGE GROUP"
        );
        for t in &self.tenants {
            let _ = writeln!(
                out,
                "{:>10}  {:>7.1} s  {:>11}  {:>11}",
                thousands(t.users),
                t.seed_secs,
                thousands(t.small_group_members),
                thousands(t.large_group_members)
            );
        }
        let _ = writeln!(
            out,
            "\n{:<24} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  ERRORS",
            "OPERATION",
            "USERS",
            "MEMBERS",
            "OK",
            "P50 ms",
            "P95 ms",
            "P99 ms",
            "MAX ms",
            "P50/1ST"
        );
        let names: Vec<&str> = self
            .tenants
            .first()
            .map(|t| t.operations.iter().map(|o| o.operation).collect())
            .unwrap_or_default();
        let ms = |us: u32| format!("{:.2}", f64::from(us) / 1000.0);
        for name in names {
            let mut base_p50 = None;
            for t in &self.tenants {
                let Some(o) = t.operations.iter().find(|o| o.operation == name) else {
                    continue;
                };
                let (p50, p95, p99, max) = o.latency_us.map_or_else(
                    || {
                        (
                            "-".to_owned(),
                            "-".to_owned(),
                            "-".to_owned(),
                            "-".to_owned(),
                        )
                    },
                    |l| (ms(l.p50), ms(l.p95), ms(l.p99), ms(l.max)),
                );
                let p50_us = o.latency_us.map(|l| l.p50);
                base_p50 = base_p50.or(p50_us);
                let ratio = match (p50_us, base_p50) {
                    (Some(p), Some(b)) if b > 0 => format!("{:.2}", f64::from(p) / f64::from(b)),
                    _ => "-".to_owned(),
                };
                let errors = if o.errors.is_empty() {
                    "-".to_owned()
                } else {
                    o.errors
                        .iter()
                        .map(|(k, n)| format!("{k}: {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(
                    out,
                    "{:<24} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  {errors}",
                    o.operation,
                    thousands(t.users),
                    o.group_members.map_or_else(|| "-".to_owned(), thousands),
                    format!("{}/{}", o.ok, o.count),
                    p50,
                    p95,
                    p99,
                    max,
                    ratio
                );
            }
        }
        out
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Where the timed requests go.
enum Server {
    /// A server started here, and how to stop it.
    InProcess {
        url: url::Url,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    },
    External(url::Url),
}

impl Server {
    /// Builds the application on `settings` with a free port and runs its
    /// web server and workers in this process.
    async fn start(settings: &Settings) -> anyhow::Result<Server> {
        let mut settings = settings.clone();
        settings.server.port = 0;
        settings.server.public_url = String::new();
        let app = Application::build(settings, Role::All, true)
            .await
            .context("cannot start the in-process server")?;
        let url = format!("{}/scim/v2", app.public_url())
            .parse()
            .context("the in-process server's URL does not parse")?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until(stop.clone()));
        Ok(Server::InProcess { url, stop, task })
    }

    fn url(&self) -> &url::Url {
        match self {
            Server::InProcess { url, .. } | Server::External(url) => url,
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        if let Server::InProcess { stop, task, .. } = self {
            stop.cancel();
            task.await.context("the in-process server panicked")??;
        }
        Ok(())
    }
}

/// Seeds, measures and (unless `--keep`) removes each tenant in turn.
pub async fn run(settings: &Settings, args: &ScalingArgs) -> anyhow::Result<Report> {
    if args.sizes.is_empty() {
        bail!("--sizes needs at least one size");
    }
    if let Some(small) = args.sizes.iter().find(|&&n| n < 2) {
        bail!("--sizes: a tenant needs at least 2 users, got {small}");
    }
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    if args.small_group == 0 || args.large_group == 0 {
        bail!("--small-group and --large-group must be at least 1");
    }
    let store = Store::open(
        &settings.database_url()?,
        2,
        Duration::from_secs(settings.database.connect_timeout_secs),
    )?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    if !args.shared_database {
        let others: Vec<String> = crate::ops::orgs::list(&store)
            .await?
            .into_iter()
            .map(|o| o.slug)
            .filter(|s| !s.starts_with(SLUG_PREFIX))
            .collect();
        if !others.is_empty() {
            bail!(
                "the database holds other organizations ({}); bench-scaling writes tenants of \
                 up to {} users: point DATABASE_URL at a scratch database, or pass \
                 --shared-database",
                others.join(", "),
                thousands(args.sizes.iter().copied().max().unwrap_or(0))
            );
        }
    }
    let server = match &args.url {
        Some(url) => Server::External(url.clone()),
        None => Server::start(settings).await?,
    };
    let mut tenants = Vec::new();
    let mut outcome = Ok(());
    for &users in &args.sizes {
        let tenant = Tenant {
            users,
            small_group: args.small_group,
            large_group: args.large_group,
        };
        let seeded = match seed(&store, tenant).await {
            Ok(s) => s,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        let measured = measure(server.url(), &seeded, args.requests, args.warmup).await;
        if args.keep {
            eprintln!("bench-scaling: kept {}", seeded.slug);
        } else if let Err(e) = remove(&store, &seeded).await {
            eprintln!("bench-scaling: {e:#}");
        }
        match measured {
            Ok(operations) => tenants.push(TenantReport {
                users,
                small_group_members: seeded.small.members,
                large_group_members: seeded.large.members,
                seed_secs: seeded.seed_secs,
                operations,
            }),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let server_name = match &server {
        Server::InProcess { .. } => "in-process".to_owned(),
        Server::External(url) => url.to_string(),
    };
    server.stop().await?;
    outcome?;
    Ok(Report {
        database: match store.backend() {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        },
        server: server_name,
        requests: args.requests,
        warmup: args.warmup,
        tenants,
    })
}

/// `scimsync bench-scaling`: runs, prints the report (a table, or JSON
/// with `--json`), and fails when any timed request failed.
pub async fn command(args: ScalingArgs, settings: Settings) -> anyhow::Result<()> {
    let report = run(&settings, &args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    let failed = report.failed();
    if failed > 0 {
        bail!("{failed} timed request(s) were not answered as expected (see ERRORS)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template with user `i`'s number put in, as the SQL computes it.
    fn expand(template: &str, i: usize) -> String {
        template
            .replace(PADDED, &format!("{i:012}"))
            .replace(NUMBER, &i.to_string())
    }

    #[test]
    fn the_template_gives_each_user_the_row_its_creation_writes() {
        let template = user_template("p-", "e-", NUMBER, PADDED).expect("template");
        for i in [0, 7, 42, 999_999] {
            let direct =
                user_template("p-", "e-", &i.to_string(), &format!("{i:012}")).expect("user");
            let expanded = UserTemplate {
                id: expand(&template.id, i),
                user_name: expand(&template.user_name, i),
                user_name_key: expand(&template.user_name_key, i),
                external_id: template.external_id.as_deref().map(|t| expand(t, i)),
                display_name: template.display_name.as_deref().map(|t| expand(t, i)),
                display_name_key: template.display_name_key.as_deref().map(|t| expand(t, i)),
                email: template.email.as_deref().map(|t| expand(t, i)),
                active: template.active,
                resource: expand(&template.resource, i),
                email_keys: template.email_keys.iter().map(|t| expand(t, i)).collect(),
            };
            assert_eq!(expanded, direct, "user {i}");
        }
        assert_eq!(template.email_keys, vec!["user{{i}}@example.com"]);
        let resource: Value = serde_json::from_str(&expand(&template.resource, 5)).expect("JSON");
        assert_eq!(resource["userName"], "user5@example.com");
    }

    #[test]
    fn templates_become_concatenations_of_quoted_literals() {
        assert_eq!(
            sql_text("a'b{{i}}c{{i12}}", Backend::Sqlite),
            "'a''b' || CAST(s.i AS TEXT) || 'c' || printf('%012d', s.i)"
        );
        assert_eq!(
            sql_text("{{i12}}", Backend::Postgres),
            "lpad(CAST(s.i AS TEXT), 12, '0')"
        );
        assert_eq!(sql_text("", Backend::Postgres), "''");
    }

    #[test]
    fn one_user_stays_in_no_group() {
        let tenant = Tenant {
            users: 1_000,
            small_group: 10,
            large_group: 100_000,
        };
        assert_eq!(tenant.members(10), 10);
        assert_eq!(tenant.members(100_000), 999);
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
