//! The spine: answers only after commit, redeliveries applied once, the
//! deadline path, and several workers sharing one queue.

use reqwest::StatusCode;
use scimsync::jobs::{ChangeOp, ScimChange};
use scimsync::reconcile;
use scimsync::scim::ResourceKind;
use scimsync::startup::{Application, Role};
use scimsync::store::{log, users};

use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, TestApp, eventually, patch_body, spawn_with, test_env, user_body};
use crate::on_both_backends;

on_both_backends!(
    answer_is_given_only_after_commit,
    change_delivered_twice_is_applied_once,
    changes_applied_together_end_as_they_would_alone,
    user_creates_written_at_once_end_as_they_would_alone,
    queued_change_this_release_cannot_read_is_recorded_dead,
    redelivered_create_that_collides_does_not_fail_its_batch,
);

async fn answer_is_given_only_after_commit(app: TestApp) {
    let reply = app.post("/Users", user_body("committed@example.com")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let id = reply.body["id"].as_str().expect("id").to_owned();
    // No waiting: the row must already be there when the answer arrives.
    let org_id = app.org_id().await;
    let row = app
        .store
        .run(move |c| users::find(c, &org_id, &id).map_err(scimsync::store::Error::from))
        .await
        .expect("query");
    assert!(row.is_some(), "201 was sent before the user was committed");
}

async fn change_delivered_twice_is_applied_once(app: TestApp) {
    let org = app.org_id().await;
    let change = ScimChange::new(
        &org,
        &app.scim,
        ChangeOp::Create {
            kind: ResourceKind::User,
            id: uuid::Uuid::new_v4().to_string(),
            resource: scimsync::scim::resource::validate_resource(
                ResourceKind::User,
                user_body("twice@example.com"),
            )
            .expect("valid"),
        },
    );
    // Two worker processes receive the same change at once (a redelivery
    // racing the original), then a third delivery arrives after both
    // committed, to a worker that also has it in one batch twice.
    let first = reconcile::Applier::start(app.store.clone(), &app.settings);
    let second = reconcile::Applier::start(app.store.clone(), &app.settings);
    let (a, b) = tokio::join!(
        reconcile::apply_with_retry(&first, &app.settings, &change, 1),
        reconcile::apply_with_retry(&second, &app.settings, &change, 2),
    );
    let (a, b) = (a.expect("first").log, b.expect("second").log);
    let (c, twice) = tokio::join!(
        reconcile::apply_with_retry(&first, &app.settings, &change, 3),
        reconcile::apply_with_retry(&first, &app.settings, &change, 4),
    );
    assert_eq!(twice.expect("fourth").log.status, 201);
    let c = c.expect("third").log;
    assert_eq!(a.status, 201);
    assert_eq!(
        (a.status, a.response.clone()),
        (b.status, b.response.clone())
    );
    assert_eq!((a.status, a.response.clone()), (c.status, c.response));
    let id = change.change_id.clone();
    let (users_named, log_rows) = app
        .store
        .run(move |c| {
            let q = users::UserQuery {
                user_name_key: Some("twice@example.com".into()),
                ..Default::default()
            };
            let n = users::count(c, &org, &q)?;
            let logged = log::find(c, &id)?.into_iter().count();
            Ok::<_, scimsync::store::Error>((n, logged))
        })
        .await
        .expect("query");
    assert_eq!(users_named, 1);
    assert_eq!(log_rows, 1);
}

/// Starts a worker-only process on the app's storage.
async fn start_worker(app: &TestApp) -> CancellationToken {
    let worker = Application::build(app.settings.clone(), Role::Worker, false)
        .await
        .expect("worker builds");
    let token = CancellationToken::new();
    tokio::spawn(worker.run_until(token.clone()));
    token
}

async fn deadline_answers_503_and_the_change_still_lands(backend: Backend) {
    let mut env = test_env(backend);
    env.settings.server.request_deadline_secs = 1;
    // Web only: nobody applies the change before the deadline.
    let app = spawn_with(env, Role::Web).await;
    let reply = app.post("/Users", user_body("late@example.com")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(reply.body["status"], "503");
    let worker = start_worker(&app).await;
    eventually("the late change is applied", || async {
        app.get("/Users?filter=userName%20eq%20%22late%40example.com%22")
            .await
            .body["totalResults"]
            == 1
    })
    .await;
    worker.cancel();
}

async fn two_workers_apply_each_change_once(backend: Backend) {
    let app = spawn_with(test_env(backend), Role::Web).await;
    let w1 = start_worker(&app).await;
    let w2 = start_worker(&app).await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.post("/Users", user_body(&format!("w{i}@example.com")))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::CREATED);
    }
    let all = app.get("/Users?count=0").await;
    assert_eq!(all.body["totalResults"], 40);
    w1.cancel();
    w2.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_path_sqlite() {
    deadline_answers_503_and_the_change_still_lands(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_path_postgres_redis() {
    if crate::helpers::postgres_redis_enabled() {
        deadline_answers_503_and_the_change_still_lands(Backend::PostgresRedis).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_sqlite() {
    two_workers_apply_each_change_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_postgres_redis() {
    if crate::helpers::postgres_redis_enabled() {
        two_workers_apply_each_change_once(Backend::PostgresRedis).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_that_cannot_be_applied_is_recorded_dead_and_answered() {
    use diesel::RunQueryDsl;
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    // Break the store under the worker: its users table disappears, so
    // every attempt fails the same way and retrying cannot help.
    app.store
        .run(|c| {
            diesel::sql_query("ALTER TABLE users RENAME TO users_gone").execute(c)?;
            Ok::<_, scimsync::store::Error>(())
        })
        .await
        .expect("rename");
    let reply = app.post("/Users", user_body("dead@example.com")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let detail = reply.body["detail"].as_str().expect("detail");
    assert!(detail.contains("recorded as dead"), "{detail}");
    let org = app.org_id().await;
    let logged = app
        .store
        .run(move |c| log::recent(c, &org, 5).map_err(scimsync::store::Error::from))
        .await
        .expect("log");
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].outcome, "dead");
    assert!(
        logged[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("users")
    );
}

/// A change as ingest would queue it.
fn change(org: &str, app: &TestApp, op: ChangeOp) -> ScimChange {
    ScimChange::new(org, &app.scim, op)
}

fn create_user(org: &str, app: &TestApp, body: serde_json::Value) -> ScimChange {
    let resource =
        scimsync::scim::resource::validate_resource(ResourceKind::User, body).expect("valid");
    change(
        org,
        app,
        ChangeOp::Create {
            kind: ResourceKind::User,
            id: uuid::Uuid::new_v4().to_string(),
            resource,
        },
    )
}

/// A PATCH of user `id` with the operation `op`.
fn patch_user(org: &str, app: &TestApp, id: &str, op: serde_json::Value) -> ScimChange {
    change(
        org,
        app,
        ChangeOp::Patch {
            kind: ResourceKind::User,
            id: id.to_owned(),
            body: patch_body(serde_json::json!([op])),
            if_match: None,
        },
    )
}

fn rename_user(org: &str, app: &TestApp, id: &str) -> ScimChange {
    patch_user(
        org,
        app,
        id,
        serde_json::json!({"op": "Replace", "path": "displayName", "value": "Renamed Together"}),
    )
}

/// The welcome rows of organization `org`'s outbox.
async fn welcomes_of(app: &TestApp, org: &str) -> Vec<scimsync::store::outbox::OutboxRow> {
    let org = org.to_owned();
    app.store
        .run(move |c| {
            scimsync::store::outbox::for_org(c, &org).map_err(scimsync::store::Error::from)
        })
        .await
        .expect("outbox")
        .into_iter()
        .filter(|row| row.kind == "welcome")
        .collect()
}

/// Asserts that one user has `email`, and whether it is active.
async fn found_once_by_email(app: &TestApp, email: &str, active: bool) {
    let found = app
        .get(&format!("/Users?filter=emails.value eq \"{email}\""))
        .await;
    assert_eq!(found.body["totalResults"], 1, "{email} once, by its email");
    assert_eq!(found.body["Resources"][0]["active"], active, "{email}");
}

/// Applies `batch` the way a worker's lane does: together, else each
/// change alone. Returns whether it went together, and (status, mail
/// owed) for each change.
async fn apply_batch(app: &TestApp, batch: &[ScimChange]) -> (bool, Vec<(i32, usize)>) {
    use reconcile::apply::{Together, apply_once, apply_together};
    let batch = batch.to_vec();
    let policy = reconcile::Policy::from_settings(&app.settings);
    app.store
        .run_write(move |conn| {
            let refs: Vec<(&ScimChange, i32)> = batch.iter().map(|c| (c, 1)).collect();
            let (together, results) = match apply_together(conn, &refs, &policy) {
                Together::Committed(all) => (true, all),
                Together::Apart(_) => (
                    false,
                    batch
                        .iter()
                        .map(|c| apply_once(conn, c, 1, &policy))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Together::Failed(e) => return Err(e),
            };
            let outcomes = results
                .iter()
                .map(|c| (c.log.status, c.mail.len()))
                .collect();
            Ok::<_, scimsync::store::Error>((together, outcomes))
        })
        .await
        .expect("store")
}

/// Batches of user creates only, which PostgreSQL writes in one statement
/// (SQLite in one transaction): a clean batch goes together with what each
/// owes, and a taken userName or a redelivery among them fails nothing
/// else and leaves nothing of the batch's first attempt behind.
async fn user_creates_written_at_once_end_as_they_would_alone(app: TestApp) {
    let org = app.org_id().await;
    let mut quiet = user_body("quiet.once@example.com");
    quiet["active"] = serde_json::json!(false);
    let first = create_user(&org, &app, user_body("first.once@example.com"));
    assert_eq!(
        apply_batch(&app, &[first.clone(), create_user(&org, &app, quiet)]).await,
        (true, vec![(201, 1), (201, 0)]),
        "together; an active new user owes a welcome, an inactive one does not"
    );

    let taken = vec![
        create_user(&org, &app, user_body("second.once@example.com")),
        create_user(&org, &app, user_body("FIRST.once@example.com")),
    ];
    assert_eq!(
        apply_batch(&app, &taken).await,
        (false, vec![(201, 1), (409, 0)]),
        "a userName taken case-insensitively is 409, the other create applies"
    );
    let redelivered = vec![
        first,
        create_user(&org, &app, user_body("third.once@example.com")),
    ];
    assert_eq!(
        apply_batch(&app, &redelivered).await,
        (false, vec![(201, 0), (201, 1)]),
        "a redelivery gets its stored outcome and owes nothing again"
    );

    for (email, active) in [
        ("first.once@example.com", true),
        ("quiet.once@example.com", false),
        ("second.once@example.com", true),
        ("third.once@example.com", true),
    ] {
        found_once_by_email(&app, email, active).await;
    }
    let all = app.get("/Users?count=0").await;
    assert_eq!(
        all.body["totalResults"], 4,
        "no user written twice or left half"
    );
    let welcomes = welcomes_of(&app, &org)
        .await
        .into_iter()
        .map(|row| row.recipient)
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        welcomes,
        [
            "first.once@example.com",
            "second.once@example.com",
            "third.once@example.com"
        ]
        .map(str::to_owned)
        .into(),
        "one welcome for each active user"
    );
}

async fn changes_applied_together_end_as_they_would_alone(app: TestApp) {
    let org = app.org_id().await;
    let existing = app.post("/Users", user_body("kept@example.com")).await;
    let kept = existing.body["id"].as_str().expect("id").to_owned();

    // A batch where everything applies: one transaction.
    let mut quiet = user_body("quiet@example.com");
    quiet["active"] = serde_json::json!(false);
    let first = create_user(&org, &app, user_body("first@example.com"));
    let clean = vec![
        first.clone(),
        create_user(&org, &app, quiet),
        rename_user(&org, &app, &kept),
    ];
    assert_eq!(
        apply_batch(&app, &clean).await,
        (true, vec![(201, 1), (201, 0), (200, 0)]),
        "one transaction; a new active user owes a welcome, an inactive one does not"
    );

    // A batch where some changes fail: each ends as it would alone, and
    // the failures leave nothing of the others undone.
    let mixed = vec![
        create_user(&org, &app, user_body("second@example.com")),
        create_user(&org, &app, user_body("FIRST@example.com")),
        rename_user(&org, &app, "00000000-0000-0000-0000-000000000000"),
        first.clone(),
    ];
    assert_eq!(
        apply_batch(&app, &mixed).await,
        (false, vec![(201, 1), (409, 0), (404, 0), (201, 0)]),
        "apart: a taken userName is 409, a missing user 404, a redelivery its stored outcome"
    );

    // A welcome that a later change of the same batch revokes is not owed.
    let gone = create_user(&org, &app, user_body("gone@example.com"));
    let ChangeOp::Create { id: gone_id, .. } = &gone.op else {
        unreachable!("a create")
    };
    let deactivate = patch_user(
        &org,
        &app,
        gone_id,
        serde_json::json!({"op": "Replace", "path": "active", "value": "False"}),
    );
    assert_eq!(
        apply_batch(&app, &[gone, deactivate]).await,
        (true, vec![(201, 0), (200, 0)]),
        "the welcome is withdrawn in the batch that revoked it"
    );

    for (email, active) in [
        ("first@example.com", true),
        ("quiet@example.com", false),
        ("second@example.com", true),
    ] {
        found_once_by_email(&app, email, active).await;
    }
    let renamed = app.get(&format!("/Users/{kept}")).await;
    assert_eq!(renamed.body["displayName"], "Renamed Together");
    let welcomes = welcomes_of(&app, &org).await;
    let gone_welcome = welcomes
        .iter()
        .find(|row| row.recipient == "gone@example.com")
        .expect("gone's welcome row");
    assert_eq!(gone_welcome.state, "cancelled", "withdrawn, never sent");
    assert_eq!(
        welcomes.len(),
        4,
        "kept, first, second and gone: one welcome each"
    );
}

/// A queued job's JSON as another release (or a hand) left it, pushed
/// under task id `id`.
#[derive(Clone)]
struct RawJob {
    id: String,
    json: serde_json::Value,
}

impl serde::Serialize for RawJob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for RawJob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = serde_json::Value::deserialize(d)?;
        Ok(RawJob {
            id: String::new(),
            json,
        })
    }
}

impl scimsync::jobs::queue::Job for RawJob {
    fn job_id(&self) -> String {
        self.id.clone()
    }
}

async fn queued_change_this_release_cannot_read_is_recorded_dead(app: TestApp) {
    let org = app.org_id().await;
    let raw: scimsync::jobs::Queue<RawJob> = scimsync::jobs::Queue::connect(
        &app.settings.queue_url().expect("url"),
        &app.settings.queue.name,
    )
    .await
    .expect("queue");
    let change_id = ulid::Ulid::new().to_string();
    // An operation this release does not know, then JSON that names no
    // change at all.
    let unknown = serde_json::json!({
        "change_id": change_id,
        "org_id": org,
        "base_url": app.scim,
        "received_at": "2026-11-29T10:00:00Z",
        "op": {"op": "merge", "kind": "User", "id": "u-1"},
    });
    let nameless = serde_json::json!({"nothing": [1, 2]});
    for (id, json) in [
        (change_id.clone(), unknown),
        (ulid::Ulid::new().to_string(), nameless),
    ] {
        raw.push(&RawJob { id, json }, 3).await.expect("push");
    }
    // The worker goes on with the changes queued after them.
    let reply = app
        .post("/Users", user_body("after-unreadable@example.com"))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let wanted = change_id.clone();
    let store = app.store.clone();
    eventually("the unreadable change is recorded dead", || {
        let wanted = wanted.clone();
        let store = store.clone();
        async move {
            store
                .run(move |c| log::find(c, &wanted).map_err(scimsync::store::Error::from))
                .await
                .expect("log")
                .is_some()
        }
    })
    .await;
    let row = app
        .store
        .run(move |c| log::find(c, &change_id).map_err(scimsync::store::Error::from))
        .await
        .expect("log")
        .expect("row");
    assert_eq!(row.outcome, "dead");
    assert_eq!(row.status, 500);
    assert_eq!(row.operation, "merge");
    assert_eq!(row.resource_type, "User");
    assert_eq!(row.resource_id.as_deref(), Some("u-1"));
    let error = row.error.as_deref().unwrap_or_default();
    assert!(error.contains("unreadable job"), "{error}");
    let request: serde_json::Value =
        serde_json::from_str(row.request.as_deref().expect("request kept")).expect("json");
    assert_eq!(
        request["op"]["op"], "merge",
        "the job's JSON is kept as it was"
    );
}

async fn redelivered_create_that_collides_does_not_fail_its_batch(app: TestApp) {
    let org = app.org_id().await;
    let id = uuid::Uuid::new_v4().to_string();
    let group = change(
        &org,
        &app,
        ChangeOp::Create {
            kind: ResourceKind::Group,
            id: id.clone(),
            resource: scimsync::scim::resource::validate_resource(
                ResourceKind::Group,
                serde_json::json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": "Eng",
                }),
            )
            .expect("valid"),
        },
    );
    assert_eq!(
        apply_batch(&app, std::slice::from_ref(&group)).await,
        (true, vec![(201, 0)])
    );
    let renamed = app
        .patch(
            &format!("/Groups/{id}"),
            patch_body(serde_json::json!([
                {"op": "replace", "path": "displayName", "value": "Engineering"}
            ])),
        )
        .await;
    assert!(renamed.status.is_success(), "{}", renamed.body);
    // The create is delivered again (its worker died before acknowledging
    // it) beside another tenant's change: its name is free now, its id is
    // not. Each still ends as it would alone.
    let other = create_user(&org, &app, user_body("alongside@example.com"));
    assert_eq!(
        apply_batch(&app, &[group, other]).await,
        (false, vec![(201, 0), (201, 1)]),
        "the redelivery gets its stored answer and the other change applies"
    );
    let kept = app.get(&format!("/Groups/{id}")).await;
    assert_eq!(kept.body["displayName"], "Engineering");
}

/// Two workers change one group at once, the second with the If-Match the
/// first makes stale: the second waits for the first and answers 412,
/// whichever statements its change runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_is_checked_against_a_change_committed_meanwhile() {
    use diesel::RunQueryDsl;
    use scimsync::reconcile::apply::apply_once;
    if !crate::helpers::postgres_redis_enabled() {
        return;
    }
    let app = crate::helpers::spawn_app(Backend::PostgresRedis).await;
    let org = app.org_id().await;
    let member = app.create_user("member@example.com").await;
    let group = app.create_group("Locked", &[]).await;
    let etag = app.get(&format!("/Groups/{group}")).await.body["meta"]["version"]
        .as_str()
        .expect("version")
        .to_owned();
    let add_member =
        serde_json::json!({"op": "add", "path": "members", "value": [{"value": member}]});
    let changes = [
        // A member-only PATCH, which writes no group row itself.
        change(
            &org,
            &app,
            ChangeOp::Patch {
                kind: ResourceKind::Group,
                id: group.clone(),
                body: patch_body(serde_json::json!([add_member])),
                if_match: Some(etag.clone()),
            },
        ),
        change(
            &org,
            &app,
            ChangeOp::Delete {
                kind: ResourceKind::Group,
                id: group.clone(),
                if_match: Some(etag),
            },
        ),
    ];
    let policy = reconcile::Policy::from_settings(&app.settings);
    for (n, second) in changes.into_iter().enumerate() {
        // The first: another worker's change, committed 300 ms after the
        // second started.
        let id = group.clone();
        let first = app.store.run_write(move |c| {
            use diesel::Connection;
            c.transaction(|c| {
                diesel::sql_query("UPDATE teams SET version = version + 1 WHERE id = $1")
                    .bind::<diesel::sql_types::Text, _>(&id)
                    .execute(c)?;
                std::thread::sleep(std::time::Duration::from_millis(400));
                Ok::<_, scimsync::store::Error>(())
            })
        });
        let policy = policy.clone();
        let store = app.store.clone();
        let second = async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            store
                .run_write(move |c| apply_once(c, &second, 1, &policy))
                .await
        };
        let (first, second) = tokio::join!(first, second);
        first.expect("first change");
        let second = second.expect("second change");
        assert_eq!(
            second.log.status, 412,
            "change {n}: {:?}",
            second.log.response
        );
    }
    let kept = app.get(&format!("/Groups/{group}")).await;
    assert_eq!(kept.status, StatusCode::OK, "the group was not deleted");
    let members = kept.body["members"].as_array().map_or(0, Vec::len);
    assert_eq!(members, 0, "no member was added");
}

/// The embedded files sync enough that a power loss cannot corrupt them,
/// and the store syncs every commit, so an answered change survives one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_files_survive_a_power_loss() {
    #[derive(diesel::QueryableByName)]
    struct Synchronous {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        synchronous: i32,
    }
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    let store: Vec<Synchronous> = app
        .store
        .run(|c| {
            use diesel::RunQueryDsl;
            diesel::sql_query("PRAGMA synchronous")
                .load(c)
                .map_err(scimsync::store::Error::from)
        })
        .await
        .expect("pragma");
    assert_eq!(
        store[0].synchronous, 2,
        "the store syncs every commit (FULL)"
    );
    let queue = app.change_queue().await;
    let scimsync::jobs::queue::Backend::Sqlite(storage) = &*queue.backend else {
        panic!("the embedded queue is SQLite");
    };
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(storage.pool())
        .await
        .expect("pragma");
    assert_eq!(
        synchronous, 1,
        "the queue is never written unsynced (NORMAL, not OFF)"
    );
}
