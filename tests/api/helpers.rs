//! Starting the real application for a test: port 0, a fresh database, and
//! a typed client. Each test runs on SQLite and on PostgreSQL + Redis.

use std::sync::Once;

use diesel::{Connection, RunQueryDsl, pg::PgConnection};
use reqwest::{Method, StatusCode};
use scimsync::config::Settings;
use scimsync::startup::{Application, Role};
use scimsync::store::Store;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Which backends a test app uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    PostgresRedis,
}

/// Runs each named `async fn(TestApp)` once per backend, as two tests:
/// `<name>::sqlite` and `<name>::postgres_redis`.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await;
                    super::$test(app).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_redis() {
                    if !$crate::helpers::postgres_redis_enabled() {
                        return;
                    }
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::PostgresRedis).await;
                    super::$test(app).await;
                }
            }
        )*
    };
}

/// Runs each named `async fn(Backend)` once per backend, as two tests:
/// `<name>::sqlite` and `<name>::postgres_redis`. For tests that build
/// their own app (other settings, another role) instead of taking one.
#[macro_export]
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$test($crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_redis() {
                    if $crate::helpers::postgres_redis_enabled() {
                        super::$test($crate::helpers::Backend::PostgresRedis).await;
                    }
                }
            }
        )*
    };
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a process the
/// test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Where the PostgreSQL + Redis suite connects; both must be set to run it.
pub const PG_VAR: &str = "SCIMSYNC_TEST_POSTGRES_URL";
pub const REDIS_VAR: &str = "SCIMSYNC_TEST_REDIS_URL";

static NOTICE: Once = Once::new();

/// Whether the PostgreSQL + Redis variants run. Says so once when not.
pub fn postgres_redis_enabled() -> bool {
    let enabled = std::env::var(PG_VAR).is_ok() && std::env::var(REDIS_VAR).is_ok();
    if !enabled {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CI=true but {PG_VAR} and {REDIS_VAR} are not both set: the PostgreSQL + Redis suite must run in CI"
            );
        }
        NOTICE.call_once(|| {
            eprintln!(
                "note: PostgreSQL + Redis variants skipped; set {PG_VAR} and {REDIS_VAR} to run them (.ci/run does)"
            );
        });
    }
    enabled
}

/// A running application and what a test needs to talk to it.
pub struct TestApp {
    /// `<address>/scim/v2`
    pub scim: String,
    pub token: String,
    pub org_slug: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub settings: Settings,
    shutdown: CancellationToken,
    _cleanup: Cleanup,
}

/// Removes what a test created outside the process: its PostgreSQL
/// database, its Redis keys, its temp directory.
struct Cleanup {
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
    redis: Option<(String, String)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some((admin_url, db)) = self.pg.take()
            && let Ok(mut conn) = PgConnection::establish(&admin_url)
        {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .execute(&mut conn);
        }
        if let Some((url, queue)) = self.redis.take()
            && let Ok(client) = redis::Client::open(url)
            && let Ok(mut conn) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{queue}*"))
                .query(&mut conn)
                .unwrap_or_default();
            for chunk in keys.chunks(100) {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
            // apalis lists every queue it has seen in one sorted set shared
            // by all queues; without this each test run leaves its names.
            const QUEUES: &str = "core:apalis:queues:list";
            let listed: Vec<String> = redis::cmd("ZRANGE")
                .arg(QUEUES)
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .unwrap_or_default();
            let ours: Vec<&String> = listed.iter().filter(|q| q.starts_with(&queue)).collect();
            if !ours.is_empty() {
                let _: redis::RedisResult<()> =
                    redis::cmd("ZREM").arg(QUEUES).arg(ours).query(&mut conn);
            }
        }
    }
}

/// Settings for a test: defaults, a port chosen by the OS, a short deadline.
/// Dropped without being started, it removes its storage as an app does.
pub struct TestEnv {
    pub settings: Settings,
    cleanup: Cleanup,
}

/// Fresh storage for one test on `backend`.
pub fn test_env(backend: Backend) -> TestEnv {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::load(None).expect("default settings");
    settings.server.port = 0;
    settings.server.public_url = String::new();
    settings.server.request_deadline_secs = 20;
    settings.database.pool_size = 8;
    settings.paths.data_dir = dir.path().to_path_buf();
    settings.queue.poll_interval_ms = 20;
    settings.retry.max_elapsed_ms = 5_000;
    settings.reconciler.interval_ms = 100;
    settings.mail.retry_initial_secs = 0;
    settings.mail.retry_max_secs = 1;
    settings.mail.digest_interval_secs = 3600;
    settings.reconciler.digest_settle_secs = 0;
    let suffix = ulid::Ulid::new().to_string().to_lowercase();
    let mut pg = None;
    let mut redis = None;
    match backend {
        Backend::Sqlite => {
            settings.database.url =
                format!("sqlite://{}", dir.path().join("scimsync.db").display());
            settings.queue.url = format!("sqlite://{}", dir.path().join("queue.db").display());
        }
        Backend::PostgresRedis => {
            let admin_url = std::env::var(PG_VAR).expect("PostgreSQL URL");
            let redis_url = std::env::var(REDIS_VAR).expect("Redis URL");
            let db = format!("scimsync_test_{suffix}");
            let mut conn = PgConnection::establish(&admin_url).unwrap_or_else(|e| {
                panic!("{PG_VAR} is set but PostgreSQL cannot be reached: {e}")
            });
            diesel::sql_query(format!("CREATE DATABASE \"{db}\""))
                .execute(&mut conn)
                .expect("create test database");
            let mut url = url::Url::parse(&admin_url).expect("PostgreSQL URL parses");
            url.set_path(&db);
            settings.database.url = url.to_string();
            settings.queue.url = redis_url.clone();
            settings.queue.name = format!("scimsync-test-{suffix}");
            pg = Some((admin_url, db));
            redis = Some((redis_url, settings.queue.name.clone()));
        }
    }
    TestEnv {
        settings,
        cleanup: Cleanup {
            _dir: dir,
            pg,
            redis,
        },
    }
}

/// Starts the whole application (web + workers) as `scimsync run` does, with
/// one organization and a token for it.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_with(test_env(backend), Role::All).await
}

/// Starts the application with `role` on prepared storage.
pub async fn spawn_with(env: TestEnv, role: Role) -> TestApp {
    init_logs();
    let settings = env.settings.clone();
    let app = Application::build(settings.clone(), role, true)
        .await
        .expect("application builds");
    let address = app.public_url().to_owned();
    let store = app.store().clone();
    let org_slug = "acme".to_owned();
    scimsync::ops::orgs::create(&store, &org_slug, Some("Acme"), None)
        .await
        .expect("org");
    let token = scimsync::ops::tokens::create(&store, &org_slug, "test")
        .await
        .expect("token")
        .token;
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until(shutdown.clone()));
    TestApp {
        scim: format!("{address}/scim/v2"),
        token,
        org_slug,
        client: reqwest::Client::new(),
        store,
        settings,
        shutdown,
        _cleanup: env.cleanup,
    }
}

fn init_logs() {
    static LOGS: Once = Once::new();
    LOGS.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    /// Sends a SCIM request with this app's token.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_with_token(method, path, body, Some(&self.token))
            .await
    }

    pub async fn call_with_token(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.scim));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        let response = req.send().await.expect("request reaches the server");
        read(response).await
    }

    /// Sends `body` exactly as given: for bodies a `Value` cannot hold,
    /// such as a member named twice.
    pub async fn call_raw(&self, method: Method, path: &str, body: &str) -> Reply {
        let response = self
            .client
            .request(method, format!("{}{path}", self.scim))
            .bearer_auth(&self.token)
            .header("content-type", "application/scim+json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request reaches the server");
        read(response).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates a user and returns its id, asserting 201.
    pub async fn create_user(&self, user_name: &str) -> String {
        let reply = self.post("/Users", user_body(user_name)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body["id"].as_str().expect("id").to_owned()
    }

    /// Creates a group and returns its id, asserting 201.
    pub async fn create_group(&self, name: &str, members: &[&str]) -> String {
        let members: Vec<Value> = members
            .iter()
            .map(|m| serde_json::json!({"value": m}))
            .collect();
        let reply = self
            .post(
                "/Groups",
                serde_json::json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": name,
                    "members": members,
                }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body["id"].as_str().expect("id").to_owned()
    }

    /// A second organization with its own token, for isolation tests.
    pub async fn other_org_token(&self, slug: &str) -> String {
        scimsync::ops::orgs::create(&self.store, slug, None, None)
            .await
            .expect("org");
        scimsync::ops::tokens::create(&self.store, slug, "other")
            .await
            .expect("token")
            .token
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn read(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A user as Entra ID's create request shapes it.
pub fn user_body(user_name: &str) -> Value {
    serde_json::json!({
        "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
        ],
        "externalId": format!("ext-{user_name}"),
        "userName": user_name,
        "active": true,
        "emails": [{"primary": true, "type": "work", "value": user_name}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Ada Lovelace", "familyName": "Lovelace", "givenName": "Ada"},
        "roles": []
    })
}

/// A PATCH body with the given operations.
pub fn patch_body(ops: Value) -> Value {
    serde_json::json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": ops,
    })
}

/// Waits until `check` holds, for at most 20 s; panics with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

impl TestApp {
    /// Where the file transport (the default) writes messages.
    pub fn mail_dir(&self) -> std::path::PathBuf {
        self.settings.paths.data_dir.join("mail")
    }

    /// The messages written so far, decoded enough to search their text.
    pub fn mails(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.mail_dir()) else {
            return Vec::new();
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|raw| decode_quoted_printable(&raw))
            .collect()
    }

    /// The organization's id.
    /// The app's queue of changes, on a connection of the test's own.
    pub async fn change_queue(&self) -> scimsync::jobs::Queue<scimsync::jobs::ScimChange> {
        scimsync::jobs::Queue::connect(
            &self.settings.queue_url().expect("url"),
            &self.settings.queue.name,
        )
        .await
        .expect("queue")
    }

    /// The app's mail queue, on a connection of the test's own.
    pub async fn mail_queue(&self) -> scimsync::jobs::Queue<scimsync::jobs::mail::SendMail> {
        self.change_queue()
            .await
            .sibling(&format!("{}-mail", self.settings.queue.name))
    }

    pub async fn org_id(&self) -> String {
        let slug = self.org_slug.clone();
        self.store
            .run(move |c| {
                scimsync::store::orgs::find_by_slug(c, &slug).map_err(scimsync::store::Error::from)
            })
            .await
            .expect("query")
            .expect("org exists")
            .id
    }
}

/// Undoes quoted-printable soft line breaks and `=XX` escapes, so links and
/// names can be found in a message's text.
pub fn decode_quoted_printable(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The invitation token in a message's link, if any.
pub fn invitation_token(mail: &str) -> Option<String> {
    let at = mail.find("/invitations/inv_")? + "/invitations/".len();
    let token: String = mail[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (token.len() == 4 + 64).then_some(token)
}

impl TestApp {
    /// The service's base URL (scheme, host, port).
    pub fn base_url(&self) -> &str {
        self.scim.trim_end_matches("/scim/v2")
    }
}

/// A user create of `user_name` that would apply now.
pub fn user_create(user_name: &str) -> scimsync::jobs::ChangeOp {
    scimsync::jobs::ChangeOp::Create {
        kind: scimsync::scim::ResourceKind::User,
        id: uuid::Uuid::new_v4().to_string(),
        resource: scimsync::scim::resource::validate_resource(
            scimsync::scim::ResourceKind::User,
            user_body(user_name),
        )
        .expect("valid"),
    }
}

/// A provisioning log row of organization `org_id` for a user create,
/// change `change_id`, applied at `at` with `outcome` (answered 201, or
/// 500 when dead); tests change what they need with `..`.
pub fn log_row(
    org_id: &str,
    change_id: &str,
    outcome: &str,
    at: chrono::NaiveDateTime,
) -> scimsync::store::log::LogRow {
    scimsync::store::log::LogRow {
        change_id: change_id.to_owned(),
        org_id: org_id.to_owned(),
        operation: "create".into(),
        resource_type: "User".into(),
        resource_id: None,
        subject: None,
        outcome: outcome.into(),
        status: if outcome == "dead" { 500 } else { 201 },
        response: None,
        error: None,
        attempts: 1,
        received_at: at,
        applied_at: at,
        duration_ms: 1,
        request: None,
        resolution: None,
    }
}

/// Logs `op` on `subject` in organization `org_id` as a change that died
/// (as after a database outage outlasting every delivery), its request
/// kept for a retry; returns its change id.
pub async fn record_dead(
    app: &TestApp,
    org_id: &str,
    subject: &str,
    op: scimsync::jobs::ChangeOp,
) -> String {
    let change = scimsync::jobs::ScimChange::new(org_id, &app.scim, op);
    record_change_dead(app, change, subject).await
}

/// Logs `change`, received when it says, as dead now; returns its id.
pub async fn record_change_dead(
    app: &TestApp,
    change: scimsync::jobs::ScimChange,
    subject: &str,
) -> String {
    use scimsync::store::{self, log};
    let at = store::now();
    let org_id = change.org_id.as_str();
    let row = log::LogRow {
        received_at: change.received_at.naive_utc(),
        operation: change.op.name().to_owned(),
        resource_id: Some(change.op.id().to_owned()),
        subject: Some(subject.to_owned()),
        error: Some("no such table: users".into()),
        attempts: 5,
        duration_ms: 12,
        request: Some(serde_json::to_string(&change).expect("json")),
        ..log_row(org_id, &change.change_id, "dead", at)
    };
    app.store
        .run(move |c| log::insert(c, &row).map_err(store::Error::from))
        .await
        .expect("dead change recorded");
    change.change_id
}
