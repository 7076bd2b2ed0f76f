//! Welcome invitations and failure digests, through the file transport
//! (the embedded default). SMTP and the HTTP API are in `mail_transports`.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, eventually, invitation_token, patch_body, user_body};
use crate::{on_both_backends, on_each_backend};

on_both_backends!(
    active_user_gets_one_welcome_with_a_working_link,
    inactive_user_gets_no_welcome_until_activated,
    deactivation_revokes_the_invitation,
    failed_changes_are_reported_in_one_digest,
    every_failed_mail_is_counted_in_the_digest,
);

on_each_backend!(
    failure_committed_after_a_digest_is_in_the_next,
    digest_is_queued_behind_a_mail_backlog,
    a_quiet_organization_moves_its_digest_watermark,
    rows_past_their_retention_are_deleted,
    invitations_past_their_retention_are_deleted,
);

async fn welcome_for(app: &TestApp, email: &str) -> Vec<String> {
    app.mails()
        .into_iter()
        .filter(|m| m.contains(&format!("To: {email}")) || m.contains(&format!("<{email}>")))
        .collect()
}

async fn active_user_gets_one_welcome_with_a_working_link(app: TestApp) {
    let mut body = user_body("ada@example.com");
    body["name"]["givenName"] = json!("Ada <script>alert(1)</script>");
    app.post("/Users", body).await;
    eventually("the welcome email is written", || async {
        welcome_for(&app, "ada@example.com").await.len() == 1
    })
    .await;
    let mail = welcome_for(&app, "ada@example.com").await.remove(0);
    assert!(mail.contains("Acme"), "names the organization");
    let html = mail
        .split("Content-Type: text/html")
        .nth(1)
        .expect("an HTML part");
    assert!(
        !html.contains("<script>"),
        "markup from Entra is escaped in HTML"
    );
    assert!(html.contains("&lt;script&gt;"));
    let token = invitation_token(&mail).expect("a link in the email");
    let url = format!("{}/invitations/{token}", app.base_url());
    let page = app.client.get(&url).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains("ada@example.com") && html.contains("Accept"));
    let accepted = app.client.post(&url).send().await.expect("accept");
    assert_eq!(accepted.status(), StatusCode::OK);
    assert!(accepted.text().await.expect("html").contains("joined"));
    let again = app.client.get(&url).send().await.expect("page");
    assert_eq!(again.status(), StatusCode::GONE);
    assert!(again.text().await.expect("html").contains("already"));
    // More passes of the reconciler send nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(welcome_for(&app, "ada@example.com").await.len(), 1);
    let unknown = app
        .client
        .get(format!("{}/invitations/inv_nope", app.base_url()))
        .send()
        .await
        .expect("page");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

async fn inactive_user_gets_no_welcome_until_activated(app: TestApp) {
    let mut body = user_body("later@example.com");
    body["active"] = json!(false);
    let created = app.post("/Users", body).await;
    let id = created.body["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(welcome_for(&app, "later@example.com").await.is_empty());
    app.patch(
        &format!("/Users/{id}"),
        patch_body(json!([{"op": "Replace", "path": "active", "value": "True"}])),
    )
    .await;
    eventually("activation sends the welcome", || async {
        welcome_for(&app, "later@example.com").await.len() == 1
    })
    .await;
}

async fn deactivation_revokes_the_invitation(app: TestApp) {
    let id = app.create_user("leaver@example.com").await;
    eventually("the welcome email is written", || async {
        welcome_for(&app, "leaver@example.com").await.len() == 1
    })
    .await;
    let mail = welcome_for(&app, "leaver@example.com").await.remove(0);
    let token = invitation_token(&mail).expect("link");
    app.patch(
        &format!("/Users/{id}"),
        patch_body(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await;
    let url = format!("{}/invitations/{token}", app.base_url());
    let page = app.client.get(&url).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::GONE);
    assert!(page.text().await.expect("html").contains("withdrawn"));
    let accept = app.client.post(&url).send().await.expect("accept");
    assert_eq!(accept.status(), StatusCode::GONE);
    // Reactivating someone who never joined invites them afresh.
    app.patch(
        &format!("/Users/{id}"),
        patch_body(json!([{"op": "Replace", "path": "active", "value": "True"}])),
    )
    .await;
    eventually("a fresh invitation is sent", || async {
        welcome_for(&app, "leaver@example.com").await.len() == 2
    })
    .await;
}

async fn failed_changes_are_reported_in_one_digest(app: TestApp) {
    scimsync::ops::orgs::set_notify(&app.store, &app.org_slug, Some("admins@example.com"))
        .await
        .expect("notify");
    app.create_user("taken@example.com").await;
    for _ in 0..3 {
        let dup = app.post("/Users", user_body("TAKEN@example.com")).await;
        assert_eq!(dup.status, StatusCode::CONFLICT);
    }
    eventually("a digest is written", || async {
        app.mails().iter().any(|m| m.contains("admins@example.com"))
    })
    .await;
    let digests: Vec<String> = app
        .mails()
        .into_iter()
        .filter(|m| m.contains("admins@example.com"))
        .collect();
    assert_eq!(
        digests.len(),
        1,
        "one digest for the burst, not one per failure"
    );
    assert!(digests[0].contains("TAKEN@example.com"));
    assert!(digests[0].contains("409"));
}

/// A failure's time is taken before its transaction commits. One that
/// commits just after a digest was written, stamped a second earlier, must
/// be in the next digest, not in none.
async fn failure_committed_after_a_digest_is_in_the_next(backend: crate::helpers::Backend) {
    use scimsync::store::{self, log};
    let mut env = crate::helpers::test_env(backend);
    env.settings.mail.digest_interval_secs = 0;
    env.settings.reconciler.digest_settle_secs = 2;
    let app = crate::helpers::spawn_with(env, scimsync::startup::Role::All).await;
    scimsync::ops::orgs::set_notify(&app.store, &app.org_slug, Some("admins@example.com"))
        .await
        .expect("notify");
    let org = app.org_id().await;
    let fail = |subject: &str, ago_ms: i64| {
        let at = store::now() - chrono::TimeDelta::milliseconds(ago_ms);
        log::LogRow {
            subject: Some(subject.to_owned()),
            status: 409,
            error: Some("userName is taken".into()),
            ..crate::helpers::log_row(&org, &ulid::Ulid::new().to_string(), "rejected", at)
        }
    };
    let first = fail("early@example.com", 0);
    app.store
        .run(move |c| log::insert(c, &first).map_err(store::Error::from))
        .await
        .expect("first failure");
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while digests(&app).await.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first failure is reported");
    // Right after that digest: a failure stamped a second before it commits.
    let late = fail("late@example.com", 1_000);
    app.store
        .run(move |c| log::insert(c, &late).map_err(store::Error::from))
        .await
        .expect("late failure");
    eventually("the late failure is reported", || async {
        app.mails().iter().any(|m| m.contains("late@example.com"))
    })
    .await;
    assert_eq!(
        app.mails()
            .iter()
            .filter(|m| m.contains("early@example.com"))
            .count(),
        1,
        "each failure is reported once"
    );
}

/// A relay that refuses a whole first cycle's welcomes: the digest lists
/// some of them and counts them all.
async fn every_failed_mail_is_counted_in_the_digest(app: TestApp) {
    use scimsync::store::{self, outbox};
    let org = app.org_id().await;
    let rows: Vec<outbox::OutboxRow> = (0..60)
        .map(|i| outbox::OutboxRow {
            state: "failed".into(),
            last_error: Some("550 5.7.1 relaying denied".into()),
            locked_until: None,
            ..outbox::OutboxRow::new(
                &org,
                "welcome",
                None,
                &format!("refused{i}@example.com"),
                "{}".into(),
                chrono::TimeDelta::zero(),
            )
        })
        .collect();
    app.store
        .run(move |c| outbox::insert_all(c, &rows).map_err(store::Error::from))
        .await
        .expect("failed mail");
    scimsync::ops::orgs::set_notify(&app.store, &app.org_slug, Some("admins@example.com"))
        .await
        .expect("notify");
    eventually("a digest is written", || async {
        !digests(&app).await.is_empty()
    })
    .await;
    let row = digests(&app).await.remove(0);
    let payload: serde_json::Value = serde_json::from_str(&row.payload).expect("payload");
    assert_eq!(payload["total"], 60, "{payload}");
    assert_eq!(payload["omitted"], 10, "{payload}");
}

/// The digest rows of `app`'s organization in its outbox.
async fn digests(app: &TestApp) -> Vec<scimsync::store::outbox::OutboxRow> {
    use scimsync::store::{self, outbox};
    let org = app.org_id().await;
    app.store
        .run(move |c| outbox::for_org(c, &org).map_err(store::Error::from))
        .await
        .expect("outbox")
        .into_iter()
        .filter(|r| r.kind == "digest")
        .collect()
}

/// During a long first cycle the mail queue is never empty. A digest, which
/// never had a job, is queued all the same; mail whose job is merely late
/// is not queued twice.
async fn digest_is_queued_behind_a_mail_backlog(backend: crate::helpers::Backend) {
    use scimsync::jobs::mail::SendMail;
    use scimsync::reconcile::periodic;
    // Web only: nothing takes jobs off the mail queue.
    let app = crate::helpers::spawn_with(
        crate::helpers::test_env(backend),
        scimsync::startup::Role::Web,
    )
    .await;
    let mail = app.mail_queue().await;
    mail.push(&SendMail::new("01ARZ3NDEKTSV4RRFFQ69G5FAV"), 3)
        .await
        .expect("a job in the backlog");
    scimsync::ops::orgs::set_notify(&app.store, &app.org_slug, Some("admins@example.com"))
        .await
        .expect("notify");
    let org = app.org_id().await;
    crate::helpers::record_dead(
        &app,
        &org,
        "stuck@example.com",
        crate::helpers::user_create("stuck@example.com"),
    )
    .await;

    let pass = periodic::pass(&app.store, &mail, &app.settings)
        .await
        .expect("pass");
    assert_eq!((pass.digests, pass.queued), (1, 1), "{pass:?}");
    let queued = digests(&app).await.remove(0);
    assert!(
        queued.locked_until.is_some(),
        "its job is on record: {queued:?}"
    );
    let again = periodic::pass(&app.store, &mail, &app.settings)
        .await
        .expect("pass");
    assert_eq!(again.queued, 0, "queued once: {again:?}");
}

/// An organization with nothing to report still moves the point its next
/// digest counts from, so a pass never counts over its whole log; a
/// failure after that point is still reported.
async fn a_quiet_organization_moves_its_digest_watermark(backend: crate::helpers::Backend) {
    use scimsync::reconcile::periodic;
    use scimsync::store::{self, orgs};
    let mut env = crate::helpers::test_env(backend);
    env.settings.mail.digest_interval_secs = 0;
    let app = crate::helpers::spawn_with(env, scimsync::startup::Role::Web).await;
    let mail = app.mail_queue().await;
    scimsync::ops::orgs::set_notify(&app.store, &app.org_slug, Some("admins@example.com"))
        .await
        .expect("notify");
    let watermark = || async {
        let slug = app.org_slug.clone();
        app.store
            .run(move |c| orgs::find_by_slug(c, &slug).map_err(store::Error::from))
            .await
            .expect("org")
            .expect("exists")
            .digest_through
    };
    assert_eq!(watermark().await, None);
    let quiet = periodic::pass(&app.store, &mail, &app.settings)
        .await
        .expect("pass");
    assert_eq!(quiet.digests, 0, "{quiet:?}");
    let moved = watermark().await.expect("the watermark moved");

    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let org = app.org_id().await;
    crate::helpers::record_dead(
        &app,
        &org,
        "later@example.com",
        crate::helpers::user_create("later@example.com"),
    )
    .await;
    let pass = periodic::pass(&app.store, &mail, &app.settings)
        .await
        .expect("pass");
    assert_eq!(pass.digests, 1, "{pass:?}");
    assert!(watermark().await.expect("watermark") > moved);
    let row = digests(&app).await.remove(0);
    let payload: serde_json::Value = serde_json::from_str(&row.payload).expect("payload");
    assert_eq!(payload["total"], 1, "{payload}");
}

/// The log and the mail that went out are kept `retention_days`; owed mail
/// and dead changes nobody dealt with are kept whatever their age.
async fn rows_past_their_retention_are_deleted(backend: crate::helpers::Backend) {
    use scimsync::reconcile::periodic;
    use scimsync::store::{self, log, outbox};
    let mut env = crate::helpers::test_env(backend);
    env.settings.reconciler.retention_days = 30;
    let app = crate::helpers::spawn_with(env, scimsync::startup::Role::Web).await;
    let mail = app.mail_queue().await;
    let org = app.org_id().await;
    let old = store::now() - chrono::TimeDelta::days(31);
    let logged = |name: &str, outcome: &str, resolution: Option<&str>, at| log::LogRow {
        resolution: resolution.map(str::to_owned),
        ..crate::helpers::log_row(&org, name, outcome, at)
    };
    let rows = vec![
        logged("old-applied", "applied", None, old),
        logged("old-dead", "dead", None, old),
        logged("old-discarded", "dead", Some("discarded"), old),
        logged("new-applied", "applied", None, store::now()),
    ];
    let mail_row = |state: &str, at| {
        let mut row = outbox::OutboxRow::new(
            &org,
            "welcome",
            None,
            &format!("{state}@example.com"),
            "{}".into(),
            chrono::TimeDelta::seconds(60),
        );
        row.state = state.to_owned();
        row.next_attempt_at = at;
        row
    };
    let sent_long_ago = mail_row("sent", old);
    let kept_mail = [mail_row("pending", old), mail_row("sent", store::now())];
    let kept_ids: Vec<String> = kept_mail.iter().map(|r| r.id.clone()).collect();
    let mut mail_rows = kept_mail.to_vec();
    mail_rows.push(sent_long_ago);
    app.store
        .run(move |c| {
            log::insert_all(c, &rows)?;
            outbox::insert_all(c, &mail_rows)?;
            Ok::<_, store::Error>(())
        })
        .await
        .expect("rows");

    let pass = periodic::pass(&app.store, &mail, &app.settings)
        .await
        .expect("pass");
    assert_eq!(pass.forgotten, 3, "{pass:?}");
    let org_id = org.clone();
    let (logged, mailed) = app
        .store
        .run(move |c| {
            let logged: Vec<String> = log::recent(c, &org_id, 100)?
                .into_iter()
                .map(|r| r.change_id)
                .collect();
            let mailed: Vec<String> = outbox::for_org(c, &org_id)?
                .into_iter()
                .map(|r| r.id)
                .collect();
            Ok::<_, store::Error>((logged, mailed))
        })
        .await
        .expect("read");
    let mut logged = logged;
    logged.sort();
    assert_eq!(logged, ["new-applied", "old-dead"]);
    let mut mailed = mailed;
    mailed.sort();
    let mut kept_ids = kept_ids;
    kept_ids.sort();
    assert_eq!(mailed, kept_ids);
    let again = periodic::pass(&app.store, &mail, &app.settings)
        .await
        .expect("pass");
    assert_eq!(again.forgotten, 0, "{again:?}");
}

/// An invitation is kept `retention_days` past its expiry, which ends it
/// whether or not it was used or revoked before; then it is deleted.
async fn invitations_past_their_retention_are_deleted(backend: crate::helpers::Backend) {
    use scimsync::reconcile::periodic;
    use scimsync::store::{self, invitations, users};
    // Arrange: a web process only, so no other reconciler runs.
    let mut env = crate::helpers::test_env(backend);
    env.settings.reconciler.retention_days = 30;
    let app = crate::helpers::spawn_with(env, scimsync::startup::Role::Web).await;
    let mail = app.mail_queue().await;
    let org = app.org_id().await;
    let now = store::now();
    let days = chrono::TimeDelta::days;
    let user = users::UserRow {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: org.clone(),
        user_name: "invited@example.com".into(),
        user_name_key: "invited@example.com".into(),
        external_id: None,
        display_name: None,
        display_name_key: None,
        email: Some("invited@example.com".into()),
        active: true,
        resource: "{}".into(),
        version: 1,
        created_at: now - days(60),
        updated_at: now - days(60),
        joined_at: None,
    };
    let invitation = |id: &str, expires_at, used_at, revoked_at| invitations::InvitationRow {
        id: id.to_owned(),
        org_id: org.clone(),
        user_id: user.id.clone(),
        token_hash: scimsync::ops::tokens::hash_token(id),
        email: "invited@example.com".into(),
        created_at: expires_at - days(7),
        expires_at,
        used_at,
        revoked_at,
    };
    let rows = vec![
        invitation("expired-long-ago", now - days(31), None, None),
        invitation("used-long-ago", now - days(31), Some(now - days(37)), None),
        invitation(
            "revoked-long-ago",
            now - days(32),
            None,
            Some(now - days(38)),
        ),
        invitation("expired-lately", now - days(29), None, None),
        invitation("used-lately", now + days(1), Some(now - days(1)), None),
        invitation("pending", now + days(7), None, None),
    ];
    app.store
        .run(move |c| {
            users::insert_if_free(c, &user)?;
            invitations::insert_all(c, &rows)?;
            Ok::<_, store::Error>(())
        })
        .await
        .expect("rows");

    // Act
    let pass = periodic::pass(&app.store, &mail, &app.settings)
        .await
        .expect("pass");

    // Assert
    assert_eq!(pass.forgotten, 3, "{pass:?}");
    let ids = [
        "expired-long-ago",
        "used-long-ago",
        "revoked-long-ago",
        "expired-lately",
        "used-lately",
        "pending",
    ];
    let left: Vec<&str> = app
        .store
        .run(move |c| {
            let mut left = Vec::new();
            for id in ids {
                if invitations::find(c, id)?.is_some() {
                    left.push(id);
                }
            }
            Ok::<_, store::Error>(left)
        })
        .await
        .expect("read");
    assert_eq!(left, ["expired-lately", "used-lately", "pending"]);
    let again = periodic::pass(&app.store, &mail, &app.settings)
        .await
        .expect("pass");
    assert_eq!(again.forgotten, 0, "{again:?}");
}
