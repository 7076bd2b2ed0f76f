//! Mail through a real SMTP server on loopback and through a local server
//! playing Resend's HTTP API, end to end through the service: once per owed
//! message, retried when the failure is temporary, recorded and reported
//! when it is not.

use reqwest::StatusCode;
use scimsync::startup::Role;
use scimsync::store::outbox::{self, OutboxRow};
use serde_json::json;

use crate::helpers::{Backend, TestApp, eventually, patch_body, spawn_with, test_env, user_body};
use crate::http_stub::{HttpStub, Reply};
use crate::smtp_sink::{SmtpSink, Stage};

/// Messages the sink accepted for `address`.
fn to(sink: &SmtpSink, address: &str) -> Vec<crate::smtp_sink::Received> {
    sink.messages()
        .into_iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(address)))
        .collect()
}

/// Transactions that reached the end of DATA, accepted or not.
fn transactions(sink: &SmtpSink) -> usize {
    sink.commands()
        .iter()
        .filter(|c| c.eq_ignore_ascii_case("DATA"))
        .count()
}

async fn app_with_mail(backend: Backend, url: String) -> TestApp {
    let mut env = test_env(backend);
    env.settings.mail.url = url;
    spawn_with(env, Role::All).await
}

/// An app that mails through a fresh SMTP sink, whose reconciler re-drives
/// owed mail and takes back claims after `secs`.
async fn app_with_sink_and_reconciler_after(backend: Backend, secs: u64) -> (SmtpSink, TestApp) {
    let sink = SmtpSink::start().await.expect("sink");
    let mut env = test_env(backend);
    env.settings.mail.url = sink.url();
    env.settings.reconciler.requeue_after_secs = secs;
    env.settings.reconciler.send_lease_secs = secs;
    (sink, spawn_with(env, Role::All).await)
}

async fn outbox_rows(app: &TestApp) -> Vec<OutboxRow> {
    let org = app.org_id().await;
    app.store
        .run(move |c| outbox::for_org(c, &org).map_err(scimsync::store::Error::from))
        .await
        .expect("outbox")
}

async fn welcome_row(app: &TestApp, to: &str) -> Option<OutboxRow> {
    outbox_rows(app)
        .await
        .into_iter()
        .find(|r| r.kind == "welcome" && r.recipient == to)
}

crate::on_each_backend!(
    smtp_one_welcome_per_active_user_none_for_inactive_or_deactivated,
    smtp_transient_failure_then_success_sends_exactly_once,
    smtp_permanent_failure_is_recorded_and_reported_in_the_next_digest,
    resend_api_is_called_as_documented_and_429_is_retried_after_its_delay,
    resend_rejection_is_permanent_and_keeps_the_answer,
    resend_refusing_the_key_keeps_the_mail_for_a_retry,
    owed_mail_whose_job_was_lost_is_sent_once_by_the_reconciler,
    welcome_owed_when_the_email_changes_goes_to_the_new_address,
    welcome_handed_back_is_sent_once_through_the_queue,
    sends_recorded_together_each_keep_their_own_payload,
    welcome_whose_claim_a_send_could_outlast_is_not_sent_under_it,
    welcomes_taken_back_unsent_keep_their_attempts,
);

async fn smtp_one_welcome_per_active_user_none_for_inactive_or_deactivated(backend: Backend) {
    let sink = SmtpSink::start().await.expect("sink");
    let app = app_with_mail(backend, sink.url()).await;
    for who in ["a@example.com", "b@example.com", "c@example.com"] {
        app.create_user(who).await;
    }
    let mut inactive = user_body("inactive@example.com");
    inactive["active"] = json!(false);
    assert_eq!(
        app.post("/Users", inactive).await.status,
        StatusCode::CREATED
    );
    eventually("three welcomes arrive", || async {
        sink.messages().len() == 3
    })
    .await;
    // Let the reconciler run a few passes: nothing more is owed.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for who in ["a@example.com", "b@example.com", "c@example.com"] {
        let got = to(&sink, who);
        assert_eq!(got.len(), 1, "{who} gets exactly one welcome");
        assert!(got[0].data.contains("/invitations/inv_"));
        assert_eq!(got[0].mail_from, "no-reply@example.com");
    }
    assert!(to(&sink, "inactive@example.com").is_empty());
    assert_eq!(
        welcome_row(&app, "a@example.com").await.map(|r| r.state),
        Some("sent".to_owned())
    );
}

async fn smtp_transient_failure_then_success_sends_exactly_once(backend: Backend) {
    let sink = SmtpSink::start().await.expect("sink");
    sink.script(
        Stage::EndOfData,
        "451 4.3.0 mailbox busy, try again later",
        1,
    );
    let app = app_with_mail(backend, sink.url()).await;
    app.create_user("retry@example.com").await;
    eventually("the retried welcome arrives", || async {
        to(&sink, "retry@example.com").len() == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(to(&sink, "retry@example.com").len(), 1);
    assert_eq!(transactions(&sink), 2, "one refused, one accepted");
    let row = welcome_row(&app, "retry@example.com").await.expect("row");
    assert_eq!(row.state, "sent");
    assert_eq!(row.attempts, 2);
    assert!(
        !row.payload.contains("inv_"),
        "the token is dropped once sent"
    );
}

async fn smtp_permanent_failure_is_recorded_and_reported_in_the_next_digest(backend: Backend) {
    let sink = SmtpSink::start().await.expect("sink");
    sink.script(
        Stage::EndOfData,
        "550 5.1.1 <bounce@example.com>: mailbox unavailable",
        1,
    );
    let app = app_with_mail(backend, sink.url()).await;
    scimsync::ops::orgs::set_notify(&app.store, &app.org_slug, Some("admins@example.com"))
        .await
        .expect("notify");
    app.create_user("bounce@example.com").await;
    eventually("the failure is recorded", || async {
        welcome_row(&app, "bounce@example.com")
            .await
            .is_some_and(|r| r.state == "failed")
    })
    .await;
    let row = welcome_row(&app, "bounce@example.com").await.expect("row");
    assert_eq!(row.attempts, 1, "a permanent failure is not retried");
    assert!(
        !row.payload.contains("inv_"),
        "no token is kept for mail that will never be sent: {}",
        row.payload
    );
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("550"),
        "{row:?}"
    );
    eventually("the digest reports it", || async {
        !to(&sink, "admins@example.com").is_empty()
    })
    .await;
    let digest = crate::helpers::decode_quoted_printable(&to(&sink, "admins@example.com")[0].data);
    assert!(digest.contains("bounce@example.com"), "{digest}");
    assert!(digest.contains("550"), "{digest}");
    assert!(to(&sink, "bounce@example.com").is_empty());
}

async fn resend_api_is_called_as_documented_and_429_is_retried_after_its_delay(backend: Backend) {
    let provider = HttpStub::start().await.expect("stub");
    provider.push(
        Reply::json(
            429,
            r#"{"statusCode":429,"name":"rate_limit_exceeded","message":"Too many requests"}"#,
        )
        .with_header("Retry-After", "1"),
    );
    let app = app_with_mail(
        backend,
        format!("resend+http://re_test_key@{}", provider.addr()),
    )
    .await;
    app.create_user("api@example.com").await;
    eventually("the message is accepted", || async {
        welcome_row(&app, "api@example.com")
            .await
            .is_some_and(|r| r.state == "sent")
    })
    .await;
    let seen = provider.requests();
    assert_eq!(seen.len(), 2, "one 429, one accepted");
    let row = welcome_row(&app, "api@example.com").await.expect("row");
    for request in &seen {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/emails");
        assert_eq!(request.header("Authorization"), Some("Bearer re_test_key"));
        // The outbox id is the idempotency key: a retry can never send twice.
        assert_eq!(request.header("Idempotency-Key"), Some(row.id.as_str()));
    }
    let body = seen[1].json();
    assert!(body["to"].to_string().contains("api@example.com"));
    assert!(
        body["text"]
            .as_str()
            .expect("text")
            .contains("/invitations/inv_")
    );
    assert!(body["html"].as_str().expect("html").contains("Accept"));
    assert_eq!(row.attempts, 2);
}

async fn resend_rejection_is_permanent_and_keeps_the_answer(backend: Backend) {
    let provider = HttpStub::start().await.expect("stub");
    provider.push(Reply::json(
        422,
        r#"{"statusCode":422,"name":"validation_error","message":"Invalid `to` field."}"#,
    ));
    let app = app_with_mail(
        backend,
        format!("resend+http://re_test_key@{}", provider.addr()),
    )
    .await;
    app.create_user("rejected@example.com").await;
    eventually("the rejection is recorded", || async {
        welcome_row(&app, "rejected@example.com")
            .await
            .is_some_and(|r| r.state == "failed")
    })
    .await;
    let row = welcome_row(&app, "rejected@example.com")
        .await
        .expect("row");
    assert_eq!(row.attempts, 1);
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("Invalid `to` field"),
        "{row:?}"
    );
    // A 500 and a malformed 2xx are retried under the same idempotency key.
    provider.push(Reply::text(500, "upstream exploded"));
    provider.push(Reply::text(200, "this is not JSON"));
    app.create_user("flaky@example.com").await;
    eventually("the flaky message is sent", || async {
        welcome_row(&app, "flaky@example.com")
            .await
            .is_some_and(|r| r.state == "sent")
    })
    .await;
    let row = welcome_row(&app, "flaky@example.com").await.expect("row");
    assert_eq!(row.attempts, 3, "500, malformed 200, then accepted");
}

/// A refused key (rotated, revoked, or the sending domain not verified) is
/// the account's problem, not the message's: the mail is kept and retried,
/// and goes out once the key works, instead of every welcome sent
/// meanwhile failing for good.
async fn resend_refusing_the_key_keeps_the_mail_for_a_retry(backend: Backend) {
    let provider = HttpStub::start().await.expect("stub");
    provider.push(Reply::json(
        401,
        r#"{"statusCode":401,"name":"missing_api_key","message":"Missing API key in the authorization header."}"#,
    ));
    provider.push(Reply::json(
        403,
        r#"{"statusCode":403,"name":"invalid_api_key","message":"API key is invalid."}"#,
    ));
    let app = app_with_mail(
        backend,
        format!("resend+http://re_test_key@{}", provider.addr()),
    )
    .await;
    app.create_user("keyed@example.com").await;
    eventually("the message goes out once the key works", || async {
        welcome_row(&app, "keyed@example.com")
            .await
            .is_some_and(|r| r.state == "sent" || r.state == "failed")
    })
    .await;
    let row = welcome_row(&app, "keyed@example.com").await.expect("row");
    assert_eq!(row.state, "sent", "{row:?}");
    assert_eq!(row.attempts, 3, "401, 403, then accepted");
}

/// Creates a user the way a worker applies the change, through an
/// applier of its own, and returns what it committed without sending the
/// welcome it owes (a worker that died right after the commit).
async fn commit_without_sending(app: &TestApp, user_name: &str) -> scimsync::reconcile::Committed {
    let change = scimsync::jobs::ScimChange::new(
        &app.org_id().await,
        &app.scim,
        crate::helpers::user_create(user_name),
    );
    let applier = scimsync::reconcile::Applier::start(app.store.clone(), &app.settings);
    scimsync::reconcile::apply_with_retry(&applier, &app.settings, &change, 1)
        .await
        .expect("commit")
}

/// A welcome still owed when Entra ID corrects the user's email goes to
/// the new address: the invitation sent to the old one would let whoever
/// reads that mailbox join as the user.
async fn welcome_owed_when_the_email_changes_goes_to_the_new_address(backend: Backend) {
    let (sink, app) = app_with_sink_and_reconciler_after(backend, 1).await;
    // The welcome to the old address is owed but not out yet (its sender
    // died; a temporary failure leaves it waiting the same way).
    let committed = commit_without_sending(&app, "old.address@example.com").await;
    assert_eq!(committed.mail.len(), 1, "the change owes one welcome");
    let id = committed.log.resource_id.clone().expect("id");
    let moved = app
        .patch(
            &format!("/Users/{id}"),
            patch_body(json!([{
                "op": "replace",
                "path": "emails[type eq \"work\"].value",
                "value": "new.address@example.com"
            }])),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{:?}", moved.body);

    eventually("the welcome reaches the new address", || async {
        to(&sink, "new.address@example.com").len() == 1
    })
    .await;
    eventually(
        "the old welcome is given up once its claim runs out",
        || async {
            welcome_row(&app, "old.address@example.com")
                .await
                .is_some_and(|r| r.state == "cancelled")
        },
    )
    .await;
    assert!(to(&sink, "old.address@example.com").is_empty());
    assert_eq!(to(&sink, "new.address@example.com").len(), 1, "once");
}

async fn owed_mail_whose_job_was_lost_is_sent_once_by_the_reconciler(backend: Backend) {
    let (sink, app) = app_with_sink_and_reconciler_after(backend, 1).await;
    // Commit a change that owes a welcome, as a worker would, but never
    // send it: the process died between the commit and the send, holding
    // the claim the welcome was written with.
    let committed = commit_without_sending(&app, "orphan@example.com").await;
    assert_eq!(committed.mail.len(), 1, "the change owes one welcome");
    if backend == Backend::PostgresRedis {
        // And the queue itself is flushed.
        let client = redis::Client::open(app.settings.queue.url.as_str()).expect("redis");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", app.settings.queue.name))
            .query_async(&mut conn)
            .await
            .expect("keys");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    }
    eventually("the reconciler sends the owed welcome", || async {
        to(&sink, "orphan@example.com").len() == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(to(&sink, "orphan@example.com").len(), 1, "exactly once");
    // The deactivated user's mail is not owed any more: nothing new goes out.
    let id = committed.log.resource_id.clone().expect("id");
    app.patch(
        &format!("/Users/{id}"),
        patch_body(json!([{"op": "replace", "path": "active", "value": false}])),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(to(&sink, "orphan@example.com").len(), 1);
}

/// A worker with no sender free hands the welcome it wrote (claimed) back
/// to the queue; a mail worker then sends it, as its first attempt.
async fn welcome_handed_back_is_sent_once_through_the_queue(backend: Backend) {
    // Only the queue may send it: the reconciler waits longer than the test.
    let (sink, app) = app_with_sink_and_reconciler_after(backend, 600).await;
    let committed = commit_without_sending(&app, "handed@example.com").await;
    let [owed] = committed.mail.as_slice() else {
        panic!("the change owes one welcome, not {}", committed.mail.len());
    };
    let born = welcome_row(&app, "handed@example.com").await.expect("row");
    assert_eq!(
        (born.state.as_str(), born.attempts),
        ("sending", 1),
        "written claimed"
    );

    let mail = app.mail_queue().await;
    scimsync::jobs::mail::hand_back(
        &app.store,
        &mail,
        &owed.row,
        chrono::TimeDelta::seconds(600),
    )
    .await;
    eventually("the queued welcome is sent", || async {
        to(&sink, "handed@example.com").len() == 1
    })
    .await;
    eventually("the welcome is recorded as sent", || async {
        welcome_row(&app, "handed@example.com")
            .await
            .is_some_and(|r| r.state == "sent")
    })
    .await;
    let sent = welcome_row(&app, "handed@example.com").await.expect("row");
    assert_eq!(
        sent.attempts, 1,
        "handing back does not count as an attempt"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(to(&sink, "handed@example.com").len(), 1, "exactly once");
}

/// Several sends recorded in one statement: each row marked sent with its
/// own payload; a row that is not being sent, or is being sent under
/// another claim than the one named (its first claim ran out and it was
/// claimed again), is left as it is.
async fn sends_recorded_together_each_keep_their_own_payload(backend: Backend) {
    let (_sink, app) = app_with_sink_and_reconciler_after(backend, 600).await;
    let mut claimed = Vec::new();
    for name in ["first@example.com", "second@example.com"] {
        let committed = commit_without_sending(&app, name).await;
        claimed.push(committed.mail[0].row.clone());
    }
    let third = commit_without_sending(&app, "third@example.com").await.mail[0]
        .row
        .clone();
    let (id, held, payload) = (third.id.clone(), third.locked_until, third.payload.clone());
    app.store
        .run(move |c| {
            outbox::finish(c, &id, held, "failed", "given up", &payload)
                .map_err(scimsync::store::Error::from)
        })
        .await
        .expect("finish");
    let fourth = commit_without_sending(&app, "fourth@example.com")
        .await
        .mail[0]
        .row
        .clone();
    let stale = fourth
        .locked_until
        .map(|t| t - chrono::TimeDelta::seconds(1));
    let (id, payload) = (fourth.id.clone(), fourth.payload.clone());
    app.store
        .run(move |c| {
            outbox::finish(c, &id, stale, "failed", "given up", &payload)
                .map_err(scimsync::store::Error::from)
        })
        .await
        .expect("finish under a stale claim");

    let sent: Vec<outbox::Sent> = claimed
        .iter()
        .chain([&third])
        .map(|row| (row, row.locked_until))
        .chain([(&fourth, stale)])
        .map(|(row, held)| outbox::Sent {
            id: row.id.clone(),
            held,
            payload: json!({ "kept": row.id }).to_string(),
        })
        .collect();
    app.store
        .run(move |c| outbox::mark_all_sent(c, &sent).map_err(scimsync::store::Error::from))
        .await
        .expect("mark");
    let claimed: Vec<String> = claimed.into_iter().map(|row| row.id).collect();
    let third = third.id;

    let rows = outbox_rows(&app).await;
    for id in &claimed {
        let row = rows.iter().find(|r| &r.id == id).expect("row");
        assert_eq!(row.state, "sent");
        assert!(row.sent_at.is_some() && row.locked_until.is_none());
        let payload: serde_json::Value = serde_json::from_str(&row.payload).expect("json");
        assert_eq!(
            payload,
            json!({ "kept": id }),
            "its own payload, the token gone"
        );
    }
    let other = rows.iter().find(|r| r.id == fourth.id).expect("row");
    assert_eq!(
        (other.state.as_str(), other.locked_until),
        ("sending", fourth.locked_until),
        "a stale claim neither finishes nor marks a row claimed again"
    );
    assert_eq!(other.payload, fourth.payload);
    let untouched = rows.iter().find(|r| r.id == third).expect("row");
    assert_eq!(untouched.state, "failed", "only rows being sent are marked");
    assert!(untouched.sent_at.is_none());
    assert!(
        !untouched.payload.contains("kept"),
        "its payload is not replaced"
    );
    assert!(
        !untouched.payload.contains("token") && untouched.payload.contains("person"),
        "finished: kept without its token: {}",
        untouched.payload
    );
}

/// A welcome whose claim, written when its change committed, has less left
/// than the longest send and the time to record it is not sent under that
/// claim: the send could still run when the claim runs out and the
/// reconciler hands the row to another sender, and the mail would go out
/// twice. It waits for the reconciler instead.
async fn welcome_whose_claim_a_send_could_outlast_is_not_sent_under_it(backend: Backend) {
    // The default lease (120 s): only the claim's age decides.
    let sink = SmtpSink::start().await.expect("sink");
    let mut env = test_env(backend);
    env.settings.mail.url = sink.url();
    let app = spawn_with(env, Role::All).await;
    let committed = commit_without_sending(&app, "stalled@example.com").await;
    let [owed] = committed.mail.as_slice() else {
        panic!("the change owes one welcome, not {}", committed.mail.len());
    };
    // The worker stalled 40 s after the commit: 80 s of the claim are
    // left, more than half the lease but less than a 60 s send and 30 s to
    // record it.
    let mut owed = owed.clone();
    let held = Some(scimsync::store::now() + chrono::TimeDelta::seconds(80));
    let id = owed.row.id.clone();
    app.store
        .run(move |c| {
            use diesel::prelude::*;
            use scimsync::store::schema::outbox as table;
            diesel::update(table::table.filter(table::id.eq(&id)))
                .set(table::locked_until.eq(held))
                .execute(c)
                .map_err(scimsync::store::Error::from)
        })
        .await
        .expect("claim aged");
    owed.row.locked_until = held;

    let worker = scimsync::startup::Application::build(app.settings.clone(), Role::Worker, false)
        .await
        .expect("worker builds");
    let delivery = scimsync::jobs::mail::send_owed(&worker.mail_state(), owed)
        .await
        .expect("send_owed");

    assert_eq!(delivery, scimsync::jobs::mail::Delivery::Skipped);
    let row = welcome_row(&app, "stalled@example.com").await.expect("row");
    assert_eq!(
        (row.state.as_str(), row.locked_until),
        ("sending", held),
        "left claimed for the reconciler"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(to(&sink, "stalled@example.com").is_empty(), "nothing sent");
}

/// A welcome taken back unsent, because its worker died after the commit
/// or skipped it as claimed too long ago, has made no attempt: with two
/// attempts allowed, its first real send failing for a moment is retried,
/// not recorded as the last.
async fn welcomes_taken_back_unsent_keep_their_attempts(backend: Backend) {
    let sink = SmtpSink::start().await.expect("sink");
    let mut env = test_env(backend);
    env.settings.mail.url = sink.url();
    env.settings.mail.max_attempts = 2;
    // Claims that run out at once, taken back within a pass.
    env.settings.reconciler.requeue_after_secs = 1;
    env.settings.reconciler.send_lease_secs = 1;
    let app = spawn_with(env, Role::All).await;
    let worker = scimsync::startup::Application::build(app.settings.clone(), Role::Worker, false)
        .await
        .expect("worker builds");
    let mailer = worker.mail_state();
    // One after the other, so that each meets the server's 451 once.
    for (who, skipped) in [("orphan@example.com", false), ("skipped@example.com", true)] {
        sink.script(
            Stage::EndOfData,
            "451 4.3.0 mailbox busy, try again later",
            1,
        );
        let committed = commit_without_sending(&app, who).await;
        if skipped {
            // Its worker finds less of the claim left than a send needs.
            let skip = scimsync::jobs::mail::send_owed(&mailer, committed.mail[0].clone()).await;
            assert_eq!(
                skip.expect("send_owed"),
                scimsync::jobs::mail::Delivery::Skipped
            );
        }
        // Otherwise its worker died right after the commit.
        eventually("the welcome ends", || async {
            welcome_row(&app, who)
                .await
                .is_some_and(|r| r.state == "sent" || r.state == "failed")
        })
        .await;
        let row = welcome_row(&app, who).await.expect("row");
        assert_eq!(
            (row.state.as_str(), row.attempts, row.last_error.is_some()),
            ("sent", 2, false),
            "{who}: a 451, then accepted"
        );
        assert_eq!(to(&sink, who).len(), 1, "{who}");
    }
}
