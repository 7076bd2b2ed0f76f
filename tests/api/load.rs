//! `scimsync load` against the real application: a short Entra cycle whose
//! every request must succeed, and whose effects the API must show exactly.
//! This checks counts, not speed.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use scimsync::load::data::{Plan, Spec};
use scimsync::load::{Options, ProgressLines, Secret};

use crate::helpers::TestApp;
use crate::on_both_backends;

on_both_backends!(simulated_entra_cycle_is_applied_exactly);

fn spec() -> Spec {
    Spec {
        users: 200,
        groups: 5,
        members_per_group: 20,
        incremental: 30,
        seed: 7,
    }
}

fn options(app: &TestApp) -> Options {
    Options {
        url: app.scim.parse().expect("SCIM URL"),
        token: Secret::new(app.token.clone()),
        spec: spec(),
        member_batch: 8,
        concurrency: vec![8],
        mail_dir: Some(app.mail_dir()),
        mail_timeout: Duration::from_secs(30),
        pids: vec![std::process::id()],
        progress: ProgressLines::Off,
        chart_dir: None,
    }
}

/// The one user with this userName, asserting there is exactly one.
async fn only_user_named(app: &TestApp, user_name: &str) -> serde_json::Value {
    let found = app
        .get(&format!(
            "/Users?{}",
            scimsync::load::data::eq_filter("userName", user_name)
        ))
        .await;
    assert_eq!(found.body["totalResults"], 1, "{user_name}");
    found.body["Resources"][0].clone()
}

fn count(report: &scimsync::load::Report, operation: &str) -> (u64, u64) {
    report
        .operations
        .iter()
        .find(|o| o.operation == operation)
        .map_or((0, 0), |o| (o.count, o.ok))
}

async fn simulated_entra_cycle_is_applied_exactly(app: TestApp) {
    // Arrange: the plan the simulator will send, regenerated from its seed.
    let plan = Plan::generate(spec());
    let batches: u64 = plan
        .groups
        .iter()
        .map(|g| g.members.len().div_ceil(8) as u64)
        .sum();
    let deactivated = plan.deactivated();
    let updated: Vec<(usize, &str)> = plan
        .changes
        .iter()
        .filter_map(|c| match c {
            scimsync::load::data::Change::UpdateUser {
                user, family_name, ..
            } => Some((*user, family_name.as_str())),
            _ => None,
        })
        .collect();
    let removals = plan.changes.len() - deactivated.len() - updated.len();

    // Act
    let report = scimsync::load::run(options(&app))
        .await
        .expect("the simulator runs");
    // Shown with --nocapture, and with a failure.
    eprintln!("{}", report.render());

    // Assert: every request answered 2xx, in the numbers planned.
    assert!(report.problems().is_empty(), "{}", report.render());
    assert_eq!(report.failed, 0);
    assert_eq!(report.skipped, 0);
    assert_eq!((report.existing_users, report.existing_groups), (0, 0));
    assert_eq!(count(&report, "test-connection"), (1, 1));
    assert_eq!(count(&report, "filter-user"), (200, 200));
    assert_eq!(count(&report, "create-user"), (200, 200));
    assert_eq!(count(&report, "filter-group"), (5, 5));
    assert_eq!(count(&report, "create-group"), (5, 5));
    assert_eq!(count(&report, "add-members"), (batches, batches));
    assert_eq!(count(&report, "patch-user"), (16, 16));
    assert_eq!(count(&report, "deactivate"), (7, 7));
    assert_eq!(count(&report, "remove-members"), (7, 7));
    assert_eq!(removals, 7);
    assert_eq!(
        report.requests,
        1 + 2 * 200 + 2 * 5 + batches + plan.changes.len() as u64
    );
    assert!(report.applied_secs.is_some());
    let mail = report.mail.as_ref().expect("mail report");
    assert_eq!((mail.expected, mail.found), (200 - 7, 200 - 7));
    assert!(mail.all_written_secs.is_some());
    assert!(report.memory[0].peak_rss_kb.is_some());
    let json = serde_json::to_value(&report).expect("report serializes");
    assert_eq!(json["operations"][2]["operation"], "create-user");
    assert_eq!(json["operations"][2]["count"], 200);

    // Assert: the service holds exactly what was sent.
    let all = app.get("/Users?count=0").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.body["totalResults"], 200);
    let groups = app.get("/Groups?count=0").await;
    assert_eq!(groups.body["totalResults"], 5);

    let mut ids = Vec::with_capacity(plan.users.len());
    for user in &plan.users {
        ids.push(only_user_named(&app, &user.user_name).await);
    }
    for (i, user) in ids.iter().enumerate() {
        assert_eq!(
            user["active"],
            !deactivated.contains(&i),
            "user {i} active should be {}",
            !deactivated.contains(&i)
        );
    }
    for (i, family_name) in &updated {
        assert_eq!(ids[*i]["name"]["familyName"], *family_name, "user {i}");
    }

    for (g, group) in plan.groups.iter().enumerate() {
        let found = app
            .get(&format!(
                "/Groups?{}",
                scimsync::load::data::eq_filter("displayName", &group.display_name)
            ))
            .await;
        assert_eq!(found.body["totalResults"], 1);
        let id = found.body["Resources"][0]["id"].as_str().expect("group id");
        let got = app.get(&format!("/Groups/{id}")).await;
        let members: HashSet<&str> = got.body["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["value"].as_str())
            .collect();
        let expected: HashSet<&str> = plan
            .final_members(g)
            .into_iter()
            .filter_map(|u| ids[u]["id"].as_str())
            .collect();
        assert_eq!(members, expected, "members of {}", group.display_name);
    }
}

on_both_backends!(wrong_token_stops_at_test_connection);

async fn wrong_token_stops_at_test_connection(app: TestApp) {
    let mut options = options(&app);
    options.token = Secret::new("not-a-token");
    let error = scimsync::load::run(options)
        .await
        .expect_err("a refused Test Connection ends the run");
    let text = format!("{error:#}");
    assert!(text.contains("refused with 401"), "{text}");
    assert!(!text.contains("not-a-token"), "{text}");
    let users = app.get("/Users?count=0").await;
    assert_eq!(users.body["totalResults"], 0);
}

on_both_backends!(concurrency_sweep_creates_each_level_once_and_draws_charts);

async fn concurrency_sweep_creates_each_level_once_and_draws_charts(app: TestApp) {
    // Arrange: two levels of 20 users, no groups, no incremental cycle.
    let spec = Spec {
        users: 20,
        groups: 0,
        members_per_group: 0,
        incremental: 0,
        seed: 8,
    };
    let charts = tempfile::tempdir().expect("chart dir");
    let chart_dir = charts.path().join("charts");
    let options = Options {
        spec,
        concurrency: vec![4, 2],
        mail_dir: None,
        pids: vec![],
        chart_dir: Some(chart_dir.clone()),
        ..options(&app)
    };

    // Act
    let report = scimsync::load::run(options)
        .await
        .expect("the simulator runs");
    eprintln!("{}", report.render());

    // Assert: each level sent its own 20 users, each created once.
    assert!(report.problems().is_empty(), "{}", report.render());
    assert_eq!(count(&report, "filter-user"), (40, 40));
    assert_eq!(count(&report, "create-user"), (40, 40));
    assert_eq!(report.existing_users, 0);
    let levels: Vec<(usize, usize, usize)> = report
        .sweep
        .iter()
        .map(|l| (l.concurrency, l.first_user, l.users))
        .collect();
    assert_eq!(levels, [(4, 0, 20), (2, 20, 20)]);
    for level in &report.sweep {
        let create = level.create_user.as_ref().expect("creates measured");
        assert_eq!((create.count, create.ok), (20, 20));
        assert!(create.requests_per_sec.is_some() && level.users_per_sec.is_some());
    }
    let json = serde_json::to_value(&report).expect("report serializes");
    assert_eq!(json["sweep"].as_array().map(Vec::len), Some(2));

    // Assert: the service holds every user of every level exactly once.
    let all = app.get("/Users?count=0").await;
    assert_eq!(all.body["totalResults"], 40);
    let plan = Plan::generate(Spec { users: 40, ..spec });
    for user in &plan.users {
        let found = only_user_named(&app, &user.user_name).await;
        assert_eq!(found["externalId"], *user.external_id);
    }

    // Assert: both charts written, as SVG.
    for name in ["throughput.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(chart_dir.join(name)).expect(name);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN"), "{name}");
    }
    assert_eq!(report.charts.len(), 2);
}
