//! Operators' figures: queue depth and workers from the queues themselves,
//! outcomes and mail from the database, and `/metrics`.

use reqwest::StatusCode;

use crate::helpers::{TestApp, eventually, user_body};
use crate::on_both_backends;

on_both_backends!(queue_stats_and_metrics_report_what_happened);

mod finished_jobs_are_swept_from_the_queue {
    use scimsync::startup::Role;

    use crate::helpers::{Backend, postgres_redis_enabled, spawn_with, test_env};

    /// The app's own reconciler sweeps too, from its second pass on: a
    /// long interval keeps it from sweeping while the test runs.
    async fn app(backend: Backend) -> crate::helpers::TestApp {
        let mut env = test_env(backend);
        env.settings.reconciler.interval_ms = 3_600_000;
        spawn_with(env, Role::All).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::finished_jobs_are_swept_from_the_queue(app(Backend::Sqlite).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        if postgres_redis_enabled() {
            super::finished_jobs_are_swept_from_the_queue(app(Backend::PostgresRedis).await).await;
        }
    }
}

async fn queue_stats_and_metrics_report_what_happened(app: TestApp) {
    app.create_user("one@example.com").await;
    app.create_user("two@example.com").await;
    let dup = app.post("/Users", user_body("ONE@example.com")).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let changes: scimsync::jobs::Queue<scimsync::jobs::ScimChange> =
        scimsync::jobs::Queue::connect(
            &app.settings.queue_url().expect("url"),
            &app.settings.queue.name,
        )
        .await
        .expect("queue");
    let mail = changes.sibling(&format!("{}-mail", app.settings.queue.name));
    eventually("both welcomes are sent", || async {
        scimsync::ops::queue::stats(&app.store, &changes, &mail)
            .await
            .is_ok_and(|s| s.mail.sent_total == 2)
    })
    .await;
    // A job's effects commit before the queue records it done (acks are
    // flushed after the handler returns), so the depth reaches 0 a moment
    // after the last email.
    eventually("both queues are drained", || async {
        scimsync::ops::queue::stats(&app.store, &changes, &mail)
            .await
            .is_ok_and(|s| s.queues.iter().all(|q| q.pending == 0 && q.running == 0))
    })
    .await;
    let stats = scimsync::ops::queue::stats(&app.store, &changes, &mail)
        .await
        .expect("stats");
    assert_eq!(stats.last_hour.applied, 2);
    assert_eq!(stats.last_hour.rejected, 1);
    assert_eq!(stats.last_hour.dead, 0);
    assert_eq!(stats.queues.len(), 2);
    for q in &stats.queues {
        assert_eq!(q.pending, 0, "{q:?}");
        assert!(
            !q.workers.is_empty(),
            "the running app's workers are registered: {q:?}"
        );
    }
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base_url()))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("text");
    assert!(
        text.contains("scimsync_scim_requests_total{op=\"POST /scim/v2/Users\",status=\"409\"}"),
        "{text}"
    );
    assert!(
        text.contains("scimsync_scim_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("scimsync_up 1"), "{text}");
    assert!(
        text.contains(&format!(
            "scimsync_queue_pending{{queue=\"{}\"}} 0",
            app.settings.queue.name
        )),
        "{text}"
    );
    assert!(!text.contains(&app.token), "no token in metrics");
    let ready = app
        .client
        .get(format!("{}/readyz", app.base_url()))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::OK);
}

async fn finished_jobs_are_swept_from_the_queue(app: TestApp) {
    let changes = app.change_queue().await;
    let mail = app.mail_queue().await;
    for n in 0..3 {
        app.create_user(&format!("swept{n}@example.com")).await;
        // Welcomes go out from the worker that commits them; mail jobs are
        // for retries and re-drives. These name rows that are not owed.
        mail.push(
            &scimsync::jobs::mail::SendMail::new(&format!("not-owed-{n}")),
            1,
        )
        .await
        .expect("push mail job");
    }
    // Three changes and three mail jobs finish; each is forgotten once.
    let swept = std::sync::atomic::AtomicU64::new(0);
    eventually("every finished job is swept", || async {
        let n = changes.sweep_done(2).await.expect("sweep changes")
            + mail.sweep_done(2).await.expect("sweep mail");
        swept.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n >= 6
    })
    .await;
    let swept = swept.into_inner();
    assert_eq!(swept, 6, "no job is swept twice");
    assert_eq!(changes.sweep_done(100).await.expect("sweep"), 0);
    assert_eq!(mail.sweep_done(100).await.expect("sweep"), 0);
    // What operators read is untouched: the users and their log rows.
    for n in 0..3 {
        let found = app
            .get(&format!(
                "/Users?filter=userName%20eq%20%22swept{n}@example.com%22"
            ))
            .await;
        assert_eq!(found.body["totalResults"], 1);
    }
}
