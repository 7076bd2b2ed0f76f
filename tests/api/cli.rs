//! The operator commands as an operator runs them: the real `scimsync`
//! binary, pointed by environment variables at a test app's database and
//! queue, read through its table and its `--json` output.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use scimsync::config::QueueUrl;
use scimsync::jobs::{ChangeOp, Queue, ScimChange};
use scimsync::scim::ResourceKind;
use scimsync::store::{self, log};
use serde_json::Value;

use crate::helpers::{PG_VAR, TestApp, eventually, user_body, user_create};
use crate::on_both_backends;

on_both_backends!(
    org_show_and_list_name_tokens_without_their_values,
    queue_stats_counts_applied_rejected_and_dead_changes,
    dead_changes_are_listed_shown_retried_and_discarded,
    dead_change_overtaken_by_a_later_one_is_not_retried,
    dead_change_overtaken_while_it_failed_is_not_retried,
    dead_changes_to_one_user_retried_oldest_first_all_apply,
    retry_that_cannot_be_queued_leaves_the_change_retryable,
    log_filters_by_org_user_outcome_and_age,
    doctor_passes_with_a_worker_and_names_a_bad_database,
);

/// What one run of the binary printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit status 0 and returns standard output.
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self}");
        &self.stdout
    }

    /// Asserts an ordinary failure (exit status 1: an error, not a panic).
    fn failed(&self) -> &Run {
        assert_eq!(self.code, Some(1), "{self}");
        assert!(!self.stderr.contains("panicked"), "{self}");
        self
    }

    /// Standard output as JSON.
    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {self}"))
    }

    /// Standard output as one JSON object per line.
    fn json_lines(&self) -> Vec<Value> {
        self.ok()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The environment under which the binary sees `app`'s data: only this,
/// so nothing of the test runner's environment leaks in.
fn env_of(app: &TestApp) -> Vec<(&'static str, String)> {
    let s = &app.settings;
    let queue_var = match s.queue_url().expect("queue url") {
        QueueUrl::Redis(_) => "REDIS_URL",
        QueueUrl::Sqlite(_) => "SCIMSYNC_QUEUE__URL",
    };
    vec![
        ("DATABASE_URL", s.database.url.clone()),
        (queue_var, s.queue.url.clone()),
        ("SCIMSYNC_QUEUE__NAME", s.queue.name.clone()),
        (
            "SCIMSYNC_PATHS__DATA_DIR",
            s.paths.data_dir.display().to_string(),
        ),
        // A database that is down fails `doctor` after this, not after 5 s.
        ("SCIMSYNC_DATABASE__CONNECT_TIMEOUT_SECS", "2".into()),
        ("RUST_LOG", "warn".into()),
    ]
}

/// Runs `scimsync ARGS` with `env`.
async fn run_with(env: &[(&str, String)], args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("working directory");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scimsync"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("scimsync starts");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("scimsync {args:?} did not finish within 30 s"))
        .expect("scimsync runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `scimsync ARGS` against `app`'s database and queue.
async fn scimsync(app: &TestApp, args: &[&str]) -> Run {
    run_with(&env_of(app), args).await
}

async fn org_id(app: &TestApp, slug: &str) -> String {
    let slug = slug.to_owned();
    app.store
        .run(move |c| store::orgs::find_by_slug(c, &slug).map_err(store::Error::from))
        .await
        .expect("query")
        .expect("org exists")
        .id
}

/// Logs a create of `user_name` in `org` that died (as after a database
/// outage outlasting every delivery); returns its change id.
async fn record_dead_change(app: &TestApp, org: &str, user_name: &str) -> String {
    record_dead(app, org, user_name, user_create(user_name)).await
}

/// Logs `op` on `subject` in `org` as a change that died; returns its id.
async fn record_dead(app: &TestApp, org: &str, subject: &str, op: ChangeOp) -> String {
    let org = org_id(app, org).await;
    crate::helpers::record_dead(app, &org, subject, op).await
}

/// Entra ID moving on: user `id` renamed through the API, applied.
async fn rename_over_http(app: &TestApp, id: &str) {
    let later = app
        .patch(
            &format!("/Users/{id}"),
            crate::helpers::patch_body(serde_json::json!([
                {"op": "Replace", "path": "displayName", "value": "Still Here"}
            ])),
        )
        .await;
    assert_eq!(later.status, StatusCode::OK, "{:?}", later.body);
}

/// A PATCH of user `id` that replaces `path` with `value`.
fn replace_in_user(id: &str, path: &str, value: Value) -> ChangeOp {
    ChangeOp::Patch {
        kind: ResourceKind::User,
        id: id.to_owned(),
        body: crate::helpers::patch_body(serde_json::json!([
            {"op": "Replace", "path": path, "value": value}
        ])),
        if_match: None,
    }
}

async fn logged(app: &TestApp, id: &str) -> Option<log::LogRow> {
    let id = id.to_owned();
    app.store
        .run(move |c| log::find(c, &id).map_err(store::Error::from))
        .await
        .expect("query")
}

/// Whether a user `user_name` exists in `app`'s organization.
async fn user_exists(app: &TestApp, user_name: &str) -> bool {
    let reply = app
        .get(&format!("/Users?filter=userName%20eq%20%22{user_name}%22"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body["totalResults"] == 1
}

/// The change ids of `queue list`/`log` JSON lines.
fn ids(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["change_id"].as_str().expect("change_id"))
        .collect()
}

async fn org_show_and_list_name_tokens_without_their_values(app: TestApp) {
    app.create_user("ada@example.com").await;
    let second = scimsync::ops::tokens::create(&app.store, "acme", "Entra ID production")
        .await
        .expect("token");
    let first = scimsync::ops::tokens::list(&app.store, "acme")
        .await
        .expect("tokens")
        .into_iter()
        .find(|t| t.label == "test")
        .expect("the app's token");
    scimsync::ops::tokens::revoke(&app.store, &first.id)
        .await
        .expect("revoked");
    let other = app.other_org_token("globex").await;
    let secrets = [
        app.token.clone(),
        scimsync::ops::tokens::hash_token(&app.token),
        second.token.clone(),
        scimsync::ops::tokens::hash_token(&second.token),
        other.clone(),
    ];
    let no_secret = |run: &Run| {
        for s in &secrets {
            assert!(!run.stdout.contains(s.as_str()), "token value shown: {run}");
            assert!(!run.stderr.contains(s.as_str()), "token value shown: {run}");
        }
    };

    let table = scimsync(&app, &["org", "show", "acme"]).await;
    no_secret(&table);
    let out = table.ok();
    assert!(out.contains("organization  acme (Acme)"), "{out}");
    assert!(
        out.contains("users         1 (1 active, 0 joined)"),
        "{out}"
    );
    assert!(out.contains("tokens        1 live of 2"), "{out}");
    let line = |needle: &str| {
        out.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}: {out}"))
            .to_owned()
    };
    let revoked = line(" test ");
    assert!(revoked.contains("revoked 20"), "{revoked}");
    let live = line(&second.info.id);
    assert!(live.contains("Entra ID production"), "{live}");
    assert!(!live.contains("revoked"), "{live}");

    let json = scimsync(&app, &["org", "show", "acme", "--json"]).await;
    no_secret(&json);
    let json = json.json();
    assert_eq!(json["info"]["slug"], "acme");
    assert_eq!(
        (json["users"].as_i64(), json["teams"].as_i64()),
        (Some(1), Some(0))
    );
    let tokens = json["token_list"].as_array().expect("token list");
    assert_eq!(tokens.len(), 2, "{json}");
    let listed = tokens
        .iter()
        .find(|t| t["id"] == second.info.id.as_str())
        .expect("the second token is listed");
    assert_eq!(listed["label"], "Entra ID production");
    assert_eq!(listed["revoked_at"], Value::Null);
    assert!(
        tokens
            .iter()
            .any(|t| t["label"] == "test" && t["revoked_at"].is_string())
    );

    let missing = scimsync(&app, &["org", "show", "initech"]).await;
    assert!(
        missing
            .failed()
            .stderr
            .contains("no organization \"initech\""),
        "{missing}"
    );
    assert!(missing.stderr.contains("scimsync org list"), "{missing}");

    let list = scimsync(&app, &["org", "list"]).await;
    no_secret(&list);
    let out = list.ok();
    assert!(
        out.lines().next().is_some_and(|h| h.starts_with("SLUG")),
        "{out}"
    );
    let slugs: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(slugs, ["acme", "globex"], "{out}");
    let json = scimsync(&app, &["org", "list", "--json"]).await.json();
    let orgs = json.as_array().expect("array");
    assert_eq!(orgs.len(), 2, "{json}");
    assert_eq!(
        (&orgs[0]["slug"], &orgs[0]["name"]),
        (&"acme".into(), &"Acme".into())
    );
    assert_eq!(orgs[1]["slug"], "globex");
}

async fn queue_stats_counts_applied_rejected_and_dead_changes(app: TestApp) {
    app.create_user("one@example.com").await;
    app.create_user("two@example.com").await;
    let dup = app.post("/Users", user_body("ONE@example.com")).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    record_dead_change(&app, "acme", "gone@example.com").await;
    // The welcome emails go through the mail queue; wait until it is idle
    // so that the figures below are final.
    let changes: Queue<ScimChange> = Queue::connect(
        &app.settings.queue_url().expect("url"),
        &app.settings.queue.name,
    )
    .await
    .expect("queue");
    let mail = changes.sibling(&format!("{}-mail", app.settings.queue.name));
    eventually("both welcomes are sent and the queues drained", || async {
        scimsync::ops::queue::stats(&app.store, &changes, &mail)
            .await
            .is_ok_and(|s| {
                s.mail.sent_total == 2
                    && s.queues
                        .iter()
                        .all(|q| q.pending == 0 && q.running == 0 && !q.workers.is_empty())
            })
    })
    .await;

    let json = scimsync(&app, &["queue", "stats", "--json"]).await.json();
    for window in ["last_5_minutes", "last_hour", "last_day"] {
        let o = &json[window];
        assert_eq!(
            (
                o["applied"].as_i64(),
                o["rejected"].as_i64(),
                o["dead"].as_i64()
            ),
            (Some(2), Some(1), Some(1)),
            "{window}: {json}"
        );
    }
    assert_eq!(json["applied_per_minute"].as_f64(), Some(0.4), "{json}");
    assert_eq!(json["mail"]["sent_total"], 2, "{json}");
    assert_eq!(json["mail"]["pending"], 0, "{json}");
    let queues = json["queues"].as_array().expect("queues");
    let names: Vec<&str> = queues.iter().filter_map(|q| q["queue"].as_str()).collect();
    let name = &app.settings.queue.name;
    assert_eq!(names, [name.clone(), format!("{name}-mail")], "{json}");
    for q in queues {
        assert_eq!(
            (q["pending"].as_i64(), q["running"].as_i64()),
            (Some(0), Some(0))
        );
        assert!(
            q["workers"].as_array().is_some_and(|w| !w.is_empty()),
            "the app's workers are registered: {json}"
        );
    }

    let table = scimsync(&app, &["queue", "stats"]).await;
    let out = table.ok();
    let row = |label: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line: {out}"))[label.len()..]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("last 5 minutes"), ["2", "1", "1"], "{out}");
    assert_eq!(row("last hour"), ["2", "1", "1"], "{out}");
    assert_eq!(row("last day"), ["2", "1", "1"], "{out}");
    let queue_row = row(&format!("{name} "));
    assert_eq!(&queue_row[..3], ["0", "0", "0"], "{out}");
    assert_ne!(
        queue_row.last().map(String::as_str),
        Some("0"),
        "workers: {out}"
    );
    assert!(out.contains("0.4 changes/minute"), "{out}");
    assert!(
        out.contains("mail outbox      0 pending, 0 sending, 2 sent"),
        "{out}"
    );
}

async fn dead_changes_are_listed_shown_retried_and_discarded(app: TestApp) {
    app.other_org_token("globex").await;
    let lazarus = record_dead_change(&app, "acme", "lazarus@example.com").await;
    let gone = record_dead_change(&app, "acme", "gone@example.com").await;
    let elsewhere = record_dead_change(&app, "globex", "far@example.com").await;
    let applied_id = {
        app.create_user("alive@example.com").await;
        let org = app.org_id().await;
        let rows = app
            .store
            .run(move |c| log::recent(c, &org, 10).map_err(store::Error::from))
            .await
            .expect("log");
        rows.into_iter()
            .find(|r| r.outcome == "applied")
            .expect("applied change logged")
            .change_id
    };

    // Listed, newest first, by organization too.
    let all = scimsync(&app, &["queue", "list", "--state", "dead", "--json"]).await;
    assert_eq!(
        ids(&all.json_lines()),
        [&elsewhere, &gone, &lazarus],
        "{all}"
    );
    let acme = scimsync(&app, &["queue", "list", "--org", "acme", "--json"]).await;
    assert_eq!(ids(&acme.json_lines()), [&gone, &lazarus], "{acme}");
    let table = scimsync(&app, &["queue", "list", "--state", "dead", "--org", "acme"]).await;
    let out = table.ok();
    assert!(out.starts_with("TIME (UTC)"), "{out}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].contains("gone@example.com") && rows[0].contains(&gone),
        "{out}"
    );
    assert!(
        rows[1].contains("lazarus@example.com") && rows[1].contains("dead"),
        "{out}"
    );
    assert!(rows[1].contains("no such table: users"), "{out}");

    // One change in full: the request it carried, never a token.
    let shown = scimsync(&app, &["queue", "show", &lazarus]).await;
    let out = shown.ok();
    for line in [
        format!("change      {lazarus}"),
        "subject     lazarus@example.com".to_owned(),
        "outcome     dead (HTTP 500)".to_owned(),
        "attempts    5".to_owned(),
        "error       no such table: users".to_owned(),
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?}: {out}");
    }
    let request = out
        .lines()
        .find_map(|l| l.strip_prefix("request     "))
        .expect("request shown");
    assert!(
        request.contains("\"userName\":\"lazarus@example.com\""),
        "{out}"
    );
    assert!(!out.contains(&app.token), "{out}");
    let json = scimsync(&app, &["queue", "show", &lazarus, "--json"]).await;
    assert!(!json.stdout.contains(&app.token), "{json}");
    let json = json.json();
    assert_eq!(
        (json["outcome"].as_str(), json["status"].as_i64()),
        (Some("dead"), Some(500))
    );
    assert_eq!(json["resolution"], Value::Null);
    assert_eq!(json["request"]["change_id"], lazarus.as_str());
    assert_eq!(
        json["request"]["op"]["resource"]["userName"], "lazarus@example.com",
        "{json}"
    );
    let missing = scimsync(&app, &["queue", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]).await;
    assert!(
        missing
            .failed()
            .stderr
            .contains("no change 01ARZ3NDEKTSV4RRFFQ69G5FAV")
    );

    // A dry run counts and changes nothing.
    let dry = scimsync(&app, &["queue", "retry", "--dead", "--dry-run"]).await;
    assert_eq!(
        dry.ok().trim(),
        "3 dead change(s) would be retried",
        "{dry}"
    );
    let dry = scimsync(
        &app,
        &["queue", "retry", "--dead", "--org", "acme", "--dry-run"],
    )
    .await;
    assert_eq!(
        dry.ok().trim(),
        "2 dead change(s) would be retried",
        "{dry}"
    );
    let dry = scimsync(&app, &["queue", "retry", &lazarus, "--dry-run"]).await;
    assert!(
        dry.ok().starts_with(&format!("would retry {lazarus}")),
        "{dry}"
    );
    let dry = scimsync(&app, &["queue", "retry", &applied_id, "--dry-run"]).await;
    assert!(
        dry.failed()
            .stderr
            .contains("only dead changes are retried"),
        "{dry}"
    );
    for id in [&lazarus, &gone, &elsewhere] {
        let row = logged(&app, id).await.expect("still logged");
        assert_eq!((row.outcome.as_str(), row.resolution), ("dead", None));
    }
    assert!(!user_exists(&app, "lazarus@example.com").await);

    // Retried by id: queued as a new change, which the workers apply.
    let retried = scimsync(&app, &["queue", "retry", &lazarus]).await;
    let out = retried.ok();
    let new = out
        .strip_prefix(&format!("retried {lazarus} as "))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    eventually("the retried change is applied", || async {
        logged(&app, &new).await.is_some()
    })
    .await;
    let row = logged(&app, &new).await.expect("logged");
    assert_eq!(
        (row.outcome.as_str(), row.status),
        ("applied", 201),
        "{row:?}"
    );
    assert!(user_exists(&app, "lazarus@example.com").await);
    let shown = scimsync(&app, &["queue", "show", &lazarus]).await;
    assert!(
        shown
            .ok()
            .contains(&format!("resolution  retried as {new}")),
        "{shown}"
    );
    let again = scimsync(&app, &["queue", "retry", &lazarus]).await;
    assert!(
        again.failed().stderr.contains("already dealt with"),
        "{again}"
    );

    // Discarded with a reason: kept, and no longer listed as dead.
    let reason = "the user left before the outage ended";
    let discarded = scimsync(&app, &["queue", "discard", &gone, "--reason", reason]).await;
    assert_eq!(discarded.ok().trim(), format!("discarded {gone}"));
    let json = scimsync(&app, &["queue", "show", &gone, "--json"])
        .await
        .json();
    assert_eq!(json["resolution"], format!("discarded: {reason}"));
    let dead = scimsync(&app, &["queue", "list", "--state", "dead", "--json"]).await;
    assert_eq!(ids(&dead.json_lines()), [&elsewhere], "{dead}");
    let table = scimsync(&app, &["queue", "list", "--org", "acme"]).await;
    assert_eq!(table.ok().trim(), "no matching entries", "{table}");
    let twice = scimsync(&app, &["queue", "discard", &gone, "--reason", "again"]).await;
    assert!(
        twice
            .failed()
            .stderr
            .contains("not an unresolved dead change"),
        "{twice}"
    );
    // The log still has the whole history.
    let history = scimsync(&app, &["log", "--outcome", "dead", "--json"]).await;
    assert_eq!(ids(&history.json_lines()).len(), 3, "{history}");

    // Every dead change of one organization.
    let retried = scimsync(&app, &["queue", "retry", "--dead", "--org", "globex"]).await;
    let out = retried.ok();
    assert!(out.contains(&format!("retried {elsewhere} as ")), "{out}");
    assert!(out.contains("1 of 1 dead change(s) retried"), "{out}");
    let new = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("retried {elsewhere} as ")))
        .expect("new id")
        .to_owned();
    eventually("the globex change is applied", || async {
        logged(&app, &new)
            .await
            .is_some_and(|r| r.outcome == "applied")
    })
    .await;
    let none = scimsync(&app, &["queue", "retry", "--dead", "--dry-run"]).await;
    assert_eq!(
        none.ok().trim(),
        "0 dead change(s) would be retried",
        "{none}"
    );
}

async fn dead_change_overtaken_by_a_later_one_is_not_retried(app: TestApp) {
    let id = app.create_user("stale@example.com").await;
    let deactivate = replace_in_user(&id, "active", serde_json::json!("False"));
    let dead = record_dead(&app, "acme", "stale@example.com", deactivate).await;
    // Entra ID moves on: the user is changed again and that applies.
    rename_over_http(&app, &id).await;

    let refused = scimsync(&app, &["queue", "retry", &dead]).await;
    let err = &refused.failed().stderr;
    assert!(err.contains("was changed again since"), "{refused}");
    assert!(err.contains("scimsync queue discard"), "{refused}");
    let all = scimsync(&app, &["queue", "retry", "--dead"]).await;
    assert!(
        all.stdout.contains("was changed again since")
            || all.stderr.contains("was changed again since"),
        "{all}"
    );
    let row = logged(&app, &dead).await.expect("still logged");
    assert_eq!(row.resolution, None, "left for the operator to discard");
    let user = app.get(&format!("/Users/{id}")).await;
    assert_eq!(user.body["active"], true, "{:?}", user.body);
}

/// A change that kept failing while a later one to the same user applied,
/// and was recorded dead only after that, is still the older of the two.
async fn dead_change_overtaken_while_it_failed_is_not_retried(app: TestApp) {
    let id = app.create_user("slow@example.com").await;
    let deactivate = replace_in_user(&id, "active", serde_json::json!("False"));
    let change = ScimChange::new(&org_id(&app, "acme").await, &app.scim, deactivate);
    rename_over_http(&app, &id).await;
    let dead = crate::helpers::record_change_dead(&app, change, "slow@example.com").await;

    let refused = scimsync(&app, &["queue", "retry", &dead]).await;
    assert!(
        refused.failed().stderr.contains("was changed again since"),
        "{refused}"
    );
    let user = app.get(&format!("/Users/{id}")).await;
    assert_eq!(user.body["active"], true, "{:?}", user.body);
}

/// Two dead changes to one user, retried oldest first: the retry of the
/// first is not a later change that refuses the second.
async fn dead_changes_to_one_user_retried_oldest_first_all_apply(app: TestApp) {
    let id = app.create_user("twice@example.com").await;
    let rename = |name: &str| replace_in_user(&id, "displayName", serde_json::json!(name));
    let first = record_dead(&app, "acme", "twice@example.com", rename("First")).await;
    let second = record_dead(&app, "acme", "twice@example.com", rename("Second")).await;

    scimsync(&app, &["queue", "retry", &first]).await.ok();
    let path = format!("/Users/{id}");
    eventually("the first retry applies", || async {
        app.get(&path).await.body["displayName"] == "First"
    })
    .await;
    scimsync(&app, &["queue", "retry", &second]).await.ok();
    eventually("the second retry applies", || async {
        app.get(&path).await.body["displayName"] == "Second"
    })
    .await;
}

async fn retry_that_cannot_be_queued_leaves_the_change_retryable(app: TestApp) {
    use diesel::{Connection, RunQueryDsl};
    let dead = record_dead_change(&app, "acme", "unqueued@example.com").await;
    // A queue that cannot take jobs: its table is gone.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken-queue.db");
    let broken: Queue<ScimChange> = Queue::connect(&QueueUrl::Sqlite(path.clone()), "broken")
        .await
        .expect("queue");
    let mut conn = diesel::SqliteConnection::establish(&path.display().to_string()).expect("open");
    diesel::sql_query("ALTER TABLE Jobs RENAME TO jobs_gone")
        .execute(&mut conn)
        .expect("break the queue");

    let err = scimsync::ops::queue::retry(&app.store, &broken, &dead, 5)
        .await
        .expect_err("the push fails");
    assert!(format!("{err:#}").contains("was not retried"), "{err:#}");
    let row = logged(&app, &dead).await.expect("still logged");
    assert_eq!(row.resolution, None, "not marked retried");
    // So the operator can retry it once the queue is back.
    let retried = scimsync(&app, &["queue", "retry", &dead]).await;
    assert!(
        retried.ok().starts_with(&format!("retried {dead} as ")),
        "{retried}"
    );
}

async fn log_filters_by_org_user_outcome_and_age(app: TestApp) {
    let globex = app.other_org_token("globex").await;
    app.create_user("ada@example.com").await;
    app.create_user("bob@example.com").await;
    let dup = app.post("/Users", user_body("ada@example.com")).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let far = app
        .call_with_token(
            reqwest::Method::POST,
            "/Users",
            Some(user_body("far@example.com")),
            Some(&globex),
        )
        .await;
    assert_eq!(far.status, StatusCode::CREATED, "{:?}", far.body);
    // An entry from three hours ago, as a `--since` boundary.
    let old = record_dead_change(&app, "acme", "old@example.com").await;
    let three_hours_ago = store::now() - chrono::TimeDelta::hours(3);
    let id = old.clone();
    app.store
        .run(move |c| {
            use diesel::prelude::*;
            use scimsync::store::schema::provisioning_log::dsl;
            diesel::update(dsl::provisioning_log.filter(dsl::change_id.eq(&id)))
                .set(dsl::applied_at.eq(three_hours_ago))
                .execute(c)
                .map_err(store::Error::from)
        })
        .await
        .expect("backdated");

    let subjects = |lines: &[Value]| -> Vec<String> {
        lines
            .iter()
            .map(|l| l["subject"].as_str().unwrap_or("-").to_owned())
            .collect()
    };

    // Everything, newest first.
    let all = scimsync(&app, &["log", "--json"]).await.json_lines();
    assert_eq!(
        subjects(&all),
        [
            "far@example.com",
            "ada@example.com",
            "bob@example.com",
            "ada@example.com",
            "old@example.com"
        ],
        "{all:?}"
    );
    let table = scimsync(&app, &["log"]).await;
    let out = table.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("TIME (UTC)"), "{out}");
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[1].contains("far@example.com"), "newest first: {out}");
    assert!(
        lines[5].contains("old@example.com") && lines[5].contains(&old),
        "{out}"
    );

    let org = scimsync(&app, &["log", "--org", "globex", "--json"])
        .await
        .json_lines();
    assert_eq!(subjects(&org), ["far@example.com"]);
    assert_eq!(org[0]["org_id"], org_id(&app, "globex").await.as_str());
    let org = scimsync(&app, &["log", "--org", "acme", "--json"])
        .await
        .json_lines();
    assert_eq!(org.len(), 4, "{org:?}");

    let ada = scimsync(&app, &["log", "--user", "ada@example.com", "--json"]).await;
    let ada = ada.json_lines();
    let outcomes: Vec<(&str, i64)> = ada
        .iter()
        .map(|l| {
            (
                l["outcome"].as_str().unwrap_or(""),
                l["status"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(outcomes, [("rejected", 409), ("applied", 201)], "{ada:?}");
    let by_id = ada[1]["resource_id"].as_str().expect("resource id");
    let same = scimsync(&app, &["log", "--user", by_id, "--json"])
        .await
        .json_lines();
    assert_eq!(ids(&same), [ada[1]["change_id"].as_str().expect("id")]);

    let rejected = scimsync(&app, &["log", "--outcome", "rejected"]).await;
    let out = rejected.ok();
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(
        rows[0].contains("ada@example.com")
            && rows[0].contains("rejected")
            && rows[0].contains("409"),
        "{out}"
    );
    let rejected = scimsync(&app, &["log", "--outcome", "rejected", "--json"]).await;
    let rejected = rejected.json_lines();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0]["error"].is_string(), "{rejected:?}");

    let recent = scimsync(&app, &["log", "--since", "2h", "--json"])
        .await
        .json_lines();
    assert_eq!(recent.len(), 4, "{recent:?}");
    assert!(!ids(&recent).contains(&old.as_str()));
    let recent = scimsync(&app, &["log", "--since", "4h", "--json"])
        .await
        .json_lines();
    assert_eq!(recent.len(), 5);
    let combined = scimsync(
        &app,
        &[
            "log",
            "--org",
            "acme",
            "--outcome",
            "applied",
            "--since",
            "1h",
            "--json",
        ],
    )
    .await
    .json_lines();
    assert_eq!(subjects(&combined), ["bob@example.com", "ada@example.com"]);
    let limited = scimsync(&app, &["log", "--limit", "2", "--json"])
        .await
        .json_lines();
    assert_eq!(subjects(&limited), ["far@example.com", "ada@example.com"]);

    let none = scimsync(&app, &["log", "--user", "nobody@example.com"]).await;
    assert_eq!(none.ok().trim(), "no matching entries");
    let none = scimsync(&app, &["log", "--user", "nobody@example.com", "--json"]).await;
    assert_eq!(none.ok(), "", "JSON output stays parseable when empty");
    for bad in ["yesterday", "2µ", "h"] {
        let run = scimsync(&app, &["log", "--since", bad]).await;
        assert!(run.failed().stderr.contains("30s, 15m, 2h, 7d"), "{run}");
    }
    let run = scimsync(&app, &["log", "--org", "initech"]).await;
    assert!(run.failed().stderr.contains("scimsync org list"), "{run}");
    let run = scimsync(&app, &["log", "--outcome", "lost"]).await;
    assert_eq!(run.code, Some(2), "a usage error: {run}");
    assert!(run.stderr.contains("applied"), "{run}");
}

async fn doctor_passes_with_a_worker_and_names_a_bad_database(app: TestApp) {
    let changes: Queue<ScimChange> = Queue::connect(
        &app.settings.queue_url().expect("url"),
        &app.settings.queue.name,
    )
    .await
    .expect("queue");
    eventually("the app's workers are registered", || async {
        changes.depth().await.is_ok_and(|d| !d.workers.is_empty())
    })
    .await;

    let healthy = scimsync(&app, &["doctor"]).await;
    let out = healthy.ok();
    assert!(!out.contains("FAIL"), "{out}");
    for line in ["ok   database: reachable", "ok   migrations: all applied"] {
        assert!(out.lines().any(|l| l == line), "no line {line:?}: {out}");
    }
    assert!(out.contains("worker(s) alive"), "{out}");
    assert!(out.trim_end().ends_with("everything looks right"), "{out}");

    // The same setup with only the database wrong: the database line says
    // what is wrong and what to do, and the status is non-zero.
    let with_database = |url: String| {
        let mut env = env_of(&app);
        env.retain(|(k, _)| *k != "DATABASE_URL");
        env.push(("DATABASE_URL", url));
        env
    };
    let database_line = |run: &Run| {
        run.stdout
            .lines()
            .find(|l| l.get(5..).is_some_and(|l| l.starts_with("database:")))
            .unwrap_or_else(|| panic!("no database line: {run}"))
            .to_owned()
    };
    let refused = run_with(
        &with_database("postgres://postgres@127.0.0.1:1/scimsync".into()),
        &["doctor"],
    )
    .await;
    refused.failed();
    let line = database_line(&refused);
    assert!(line.starts_with("FAIL database:"), "{refused}");
    assert!(
        line.contains("port 1 failed: Connection refused"),
        "{refused}"
    );
    assert!(
        line.ends_with("is it running, and is DATABASE_URL right?"),
        "{refused}"
    );
    assert!(
        refused.stderr.contains("doctor found problems"),
        "{refused}"
    );
    assert!(
        refused.stdout.lines().any(|l| l.starts_with("ok   queue:")),
        "only the database is wrong: {refused}"
    );

    if let Ok(server) = std::env::var(PG_VAR) {
        let mut url = url::Url::parse(&server).expect("PostgreSQL URL");
        url.set_path("scimsync_no_such_database");
        let missing = run_with(&with_database(url.to_string()), &["doctor"]).await;
        missing.failed();
        let line = database_line(&missing);
        assert!(line.starts_with("FAIL database:"), "{missing}");
        assert!(
            line.contains("database \"scimsync_no_such_database\" does not exist"),
            "{missing}"
        );
        assert!(
            line.ends_with("or correct the name in DATABASE_URL"),
            "{missing}"
        );
        assert!(
            missing.stderr.contains("doctor found problems"),
            "{missing}"
        );
    }
}

#[tokio::test]
async fn help_lists_every_command() {
    let top = run_with(&[], &["--help"]).await;
    let out = top.ok();
    for command in [
        "run", "serve", "work", "migrate", "org", "token", "mail", "queue", "log", "doctor", "load",
    ] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{command} is not listed: {out}"
        );
    }
    assert!(out.contains("DATABASE_URL"), "{out}");
    let queue = run_with(&[], &["queue", "--help"]).await;
    let out = queue.ok();
    for (command, says) in [
        ("stats", "Pending, running and dead jobs"),
        ("list", "List changes by outcome"),
        ("show", "Show one change"),
        ("retry", "Retry a dead change"),
        ("discard", "Mark a dead change as dealt with"),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("{command} is not listed: {out}"));
        assert!(line.contains(says), "{line}");
    }
    let retry = run_with(&[], &["queue", "retry", "--help"]).await;
    let out = retry.ok();
    assert!(out.contains("--dry-run") && out.contains("--dead") && out.contains("--org"));
    let usage = run_with(&[], &["queue", "retry"]).await;
    assert_eq!(usage.code, Some(2), "{usage}");
    assert!(usage.stderr.contains("<ID>"), "{usage}");
}

/// A send lease that a send could outlast is refused when the settings
/// load, naming the lease, the send timeout and the shortest lease that
/// works; that shortest lease is accepted.
#[tokio::test]
async fn a_send_lease_a_send_could_outlast_is_refused() {
    let lease = |secs: &str| vec![("SCIMSYNC_RECONCILER__SEND_LEASE_SECS", secs.to_owned())];
    for short in ["60", "119"] {
        let refused = run_with(&lease(short), &["migrate"]).await;
        let said = &refused.failed().stderr;
        for part in [
            format!("reconciler.send_lease_secs = {short} is too short"),
            "send timeout of 60 s".to_owned(),
            "goes out twice".to_owned(),
            "SCIMSYNC_RECONCILER__SEND_LEASE_SECS) to at least 120".to_owned(),
        ] {
            assert!(said.contains(&part), "{part:?} not said: {refused}");
        }
    }
    run_with(&lease("120"), &["migrate"]).await.ok();
}

/// Whether `text` holds something shaped like a SCIM token.
fn holds_a_token(text: &str) -> bool {
    text.match_indices("scimsync_").any(|(at, prefix)| {
        let rest = &text[at + prefix.len()..];
        rest.len() >= 64 && rest.bytes().take(64).all(|b| b.is_ascii_hexdigit())
    })
}

/// Runs `scimsync run` in `dir` on an empty embedded database with
/// standard output a pipe, as on a platform that ships it to a log
/// service, until it serves; then stops it.
async fn first_start_without_a_terminal(dir: &std::path::Path) -> Run {
    let port = crate::helpers::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scimsync"))
        .arg("run")
        .env_clear()
        .env("PORT", port.to_string())
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("scimsync starts");
    let client = reqwest::Client::new();
    crate::helpers::eventually("the service answers", || async {
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    child.start_kill().expect("kill");
    let out = child.wait_with_output().await.expect("output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The embedded database a first start in `dir` wrote.
fn embedded_store(dir: &std::path::Path) -> scimsync::store::Store {
    scimsync::store::Store::open(
        &scimsync::config::DatabaseUrl::Sqlite(dir.join("data").join("scimsync.db")),
        1,
        Duration::from_secs(5),
    )
    .expect("database")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_without_a_terminal_writes_the_token_to_a_private_file() {
    // Arrange: an empty working directory.
    let dir = tempfile::tempdir().expect("working directory");

    // Act: the first start runs until it serves, then stops.
    let run = first_start_without_a_terminal(dir.path()).await;

    // Assert: no token in the output, which names the file instead.
    assert!(!holds_a_token(&run.stdout), "token shown: {run}");
    assert!(!holds_a_token(&run.stderr), "token logged: {run}");
    let file = dir.path().join("data").join("first-scim-token");
    assert!(
        run.stdout.contains("data/first-scim-token"),
        "the file is named: {run}"
    );
    let token = std::fs::read_to_string(&file).expect("token file");
    let token = token.trim_end();
    assert!(holds_a_token(token) && token.len() == 73, "{token:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let db = embedded_store(dir.path());
    let hash = scimsync::ops::tokens::hash_token(token);
    let live = db
        .run(move |c| store::tokens::find_live_by_hashes(c, &[hash]).map_err(store::Error::from))
        .await
        .expect("query");
    assert_eq!(live.len(), 1, "the file holds the live first token");
}

/// A first start that cannot write the token file issues no token: one
/// live in the database but written nowhere would be a valid secret that
/// nobody holds. The error says how to issue one, and the service runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_that_cannot_write_the_token_file_issues_no_token() {
    // Arrange: something the file cannot be created over (a directory;
    // a read-only data directory would not stop root) at its path.
    let dir = tempfile::tempdir().expect("working directory");
    let file = dir.path().join("data").join("first-scim-token");
    std::fs::create_dir_all(&file).expect("obstacle");

    // Act: the first start runs until it serves, then stops.
    let run = first_start_without_a_terminal(dir.path()).await;

    // Assert: no token live, none shown, and the way to issue one said.
    let tokens = scimsync::ops::tokens::list(&embedded_store(dir.path()), "default")
        .await
        .expect("the organization \"default\" was created");
    assert!(
        tokens.iter().all(|t| t.revoked_at.is_some()),
        "a live token nobody holds: {tokens:?}"
    );
    assert!(!holds_a_token(&run.stdout), "token shown: {run}");
    assert!(!holds_a_token(&run.stderr), "token logged: {run}");
    assert!(
        run.stderr.contains("issued it no SCIM token")
            && run.stderr.contains("`scimsync token create default`"),
        "the fix is named: {run}"
    );
    assert!(file.is_dir(), "the obstacle is left as it was");
}
