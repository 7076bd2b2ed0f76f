//! `scimsync bench-scaling`: a tenant seeded in bulk reads and changes
//! through the API exactly like one provisioned request by request, and a
//! run at tiny sizes times every operation without a failure.

use reqwest::{Method, StatusCode};
use scimsync::load::data::{add_members_body, eq_filter, remove_member_body};
use scimsync::load::scaling::{self, ScalingArgs, Seeded, Tenant};
use serde_json::Value;

use crate::helpers::{Reply, TestApp, patch_body};
use crate::on_both_backends;

on_both_backends!(seeded_tenant_behaves_like_a_provisioned_one);

/// A request with the seeded organization's token.
async fn call(
    app: &TestApp,
    seeded: &Seeded,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    app.call_with_token(method, path, body, Some(seeded.token.expose()))
        .await
}

async fn get(app: &TestApp, seeded: &Seeded, path: &str) -> Reply {
    call(app, seeded, Method::GET, path, None).await
}

fn member_ids(group: &Value) -> Vec<String> {
    group["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["value"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn seeded_tenant_behaves_like_a_provisioned_one(app: TestApp) {
    // Arrange
    let tenant = Tenant {
        users: 300,
        small_group: 10,
        large_group: 120,
    };

    // Act
    let seeded = scaling::seed(&app.store, tenant)
        .await
        .expect("the tenant seeds");

    // Assert: the counts, through the API.
    let all = get(&app, &seeded, "/Users?count=0").await;
    assert_eq!(all.status, StatusCode::OK, "{:?}", all.body);
    assert_eq!(all.body["totalResults"], 300);
    let groups = get(&app, &seeded, "/Groups?count=0").await;
    assert_eq!(groups.body["totalResults"], 2);
    let other = app.get("/Users?count=0").await;
    assert_eq!(other.body["totalResults"], 0, "another tenant sees nothing");

    // A seeded user, by id, by userName in any case, and by email.
    let id = seeded.user_id(123);
    let user = get(&app, &seeded, &format!("/Users/{id}")).await;
    assert_eq!(user.status, StatusCode::OK, "{:?}", user.body);
    assert_eq!(user.body["userName"], "user123@example.com");
    assert_eq!(user.body["emails"][0]["value"], "user123@example.com");
    assert_eq!(user.body["active"], true);
    assert_eq!(user.body["meta"]["version"], "W/\"1\"");
    assert!(
        user.body["meta"]["location"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/Users/{id}"))),
        "{:?}",
        user.body
    );
    for filter in [
        eq_filter("userName", "USER123@example.com"),
        eq_filter("emails.value", "user123@example.com"),
        format!(
            "filter={}",
            url::form_urlencoded::byte_serialize(
                b"emails[type eq \"work\" and value eq \"user123@example.com\"]"
            )
            .collect::<String>()
        ),
    ] {
        let found = get(&app, &seeded, &format!("/Users?{filter}")).await;
        assert_eq!(found.body["totalResults"], 1, "{filter}: {:?}", found.body);
        assert_eq!(found.body["Resources"][0]["id"], id.as_str(), "{filter}");
    }

    // The groups and their members.
    let small = get(&app, &seeded, &format!("/Groups/{}", seeded.small.id)).await;
    assert_eq!(small.body["displayName"], "Scaling small group");
    assert_eq!(member_ids(&small.body).len(), 10);
    let outsider = seeded.user_id(seeded.outsider());
    let large_path = format!("/Groups/{}", seeded.large.id);
    let large = get(&app, &seeded, &large_path).await;
    let members = member_ids(&large.body);
    assert_eq!(members.len(), 120);
    assert!(members.contains(&seeded.user_id(0)));
    assert!(!members.contains(&outsider));
    let lean = get(
        &app,
        &seeded,
        &format!(
            "/Groups?excludedAttributes=members&{}",
            eq_filter("displayName", "Scaling large group")
        ),
    )
    .await;
    assert_eq!(lean.body["totalResults"], 1);
    assert_eq!(lean.body["Resources"][0]["id"], seeded.large.id.as_str());
    assert!(lean.body["Resources"][0].get("members").is_none());

    // A member PATCH through the queue and the worker, both ways.
    let added = call(
        &app,
        &seeded,
        Method::PATCH,
        &large_path,
        Some(add_members_body([outsider.as_str()])),
    )
    .await;
    assert_eq!(added.status, StatusCode::NO_CONTENT, "{:?}", added.body);
    let large = get(&app, &seeded, &large_path).await;
    assert_eq!(member_ids(&large.body).len(), 121);
    assert!(member_ids(&large.body).contains(&outsider));
    let removed = call(
        &app,
        &seeded,
        Method::PATCH,
        &large_path,
        Some(remove_member_body(&outsider)),
    )
    .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{:?}", removed.body);
    let large = get(&app, &seeded, &large_path).await;
    assert_eq!(member_ids(&large.body).len(), 120);
    assert!(!member_ids(&large.body).contains(&outsider));

    // A seeded user's stored resource takes a PATCH like any other.
    let deactivated = call(
        &app,
        &seeded,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(patch_body(
            serde_json::json!([{"op": "Replace", "path": "active", "value": "False"}]),
        )),
    )
    .await;
    assert_eq!(deactivated.status, StatusCode::OK, "{:?}", deactivated.body);
    assert_eq!(deactivated.body["active"], false);
    assert_eq!(deactivated.body["name"]["givenName"], "Scale");

    // Removing the tenant leaves nothing of it.
    scaling::remove(&app.store, &seeded)
        .await
        .expect("the tenant is removed");
    let refused = get(&app, &seeded, "/Users?count=0").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let orgs = scimsync::ops::orgs::list(&app.store).await.expect("orgs");
    assert_eq!(orgs.len(), 1);
}

on_both_backends!(a_run_times_every_operation_and_cleans_up);

fn args(sizes: Vec<usize>) -> ScalingArgs {
    ScalingArgs {
        sizes,
        small_group: 5,
        large_group: 50,
        requests: 3,
        warmup: 1,
        url: None,
        keep: false,
        shared_database: false,
        json: false,
    }
}

async fn a_run_times_every_operation_and_cleans_up(app: TestApp) {
    // The test's own organization is there: refused without the flag.
    let refused = scaling::run(&app.settings, &args(vec![20]))
        .await
        .expect_err("a database with other tenants is refused");
    assert!(format!("{refused:#}").contains("acme"), "{refused:#}");

    // Act: two sizes against a server started in process.
    let mut args = args(vec![20, 60]);
    args.shared_database = true;
    let report = scaling::run(&app.settings, &args)
        .await
        .expect("the run completes");

    // Assert
    eprintln!("{}", report.render());
    assert_eq!(report.failed(), 0, "{}", report.render());
    assert_eq!(report.server, "in-process");
    let sizes: Vec<(usize, usize, usize)> = report
        .tenants
        .iter()
        .map(|t| (t.users, t.small_group_members, t.large_group_members))
        .collect();
    assert_eq!(sizes, vec![(20, 5, 19), (60, 5, 50)]);
    for tenant in &report.tenants {
        let operations: Vec<&str> = tenant.operations.iter().map(|o| o.operation).collect();
        assert_eq!(
            operations,
            vec![
                "filter-user",
                "get-user",
                "filter-user-email",
                "filter-group-member",
                "add-member-small",
                "remove-member-small",
                "add-member-large",
                "remove-member-large",
                "get-group-no-members",
                "filter-group-no-members",
            ]
        );
        for o in &tenant.operations {
            assert_eq!((o.count, o.ok), (3, 3), "{}", o.operation);
            assert!(o.latency_us.is_some(), "{}", o.operation);
        }
    }
    let json = serde_json::to_value(&report).expect("the report serializes");
    assert_eq!(json["tenants"][1]["operations"][6]["group_members"], 50);
    let orgs = scimsync::ops::orgs::list(&app.store).await.expect("orgs");
    let slugs: Vec<&str> = orgs.iter().map(|o| o.slug.as_str()).collect();
    assert_eq!(slugs, vec!["acme"], "the seeded tenants are removed");
}
