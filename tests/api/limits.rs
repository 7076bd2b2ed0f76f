//! Limits: every oversized or abusive request gets a clear SCIM error.

use reqwest::{Method, StatusCode};
use scimsync::startup::Role;
use serde_json::json;

use crate::helpers::{Backend, TestApp, patch_body, spawn_with, test_env};
use crate::on_both_backends;

on_both_backends!(deeply_nested_json_filters_patches_and_member_lists_are_refused);

async fn deeply_nested_json_filters_patches_and_member_lists_are_refused(app: TestApp) {
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let response = app
        .client
        .post(format!("{}/Users", app.scim))
        .bearer_auth(&app.token)
        .body(deep)
        .send()
        .await
        .expect("request");
    let reply = crate::helpers::read(response).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.body["scimType"], "invalidSyntax");

    let long = "a".repeat(5000);
    let filter = app
        .get(&format!("/Users?filter=userName%20eq%20%22{long}%22"))
        .await;
    assert_eq!(filter.status, StatusCode::BAD_REQUEST);
    assert_eq!(filter.body["scimType"], "invalidFilter");
    let nested = format!("{}userName pr{}", "(".repeat(40), ")".repeat(40));
    let nested = app
        .get(&format!("/Users?filter={}", urlencode(&nested)))
        .await;
    assert_eq!(nested.status, StatusCode::BAD_REQUEST);
    assert_eq!(nested.body["scimType"], "invalidFilter");

    let id = app.create_user("limits@example.com").await;
    let ops: Vec<_> = (0..1001)
        .map(|i| json!({"op": "replace", "path": "displayName", "value": format!("n{i}")}))
        .collect();
    let many = app
        .patch(&format!("/Users/{id}"), patch_body(json!(ops)))
        .await;
    assert_eq!(many.status, StatusCode::BAD_REQUEST);
    assert_eq!(many.body["scimType"], "tooMany");

    let group = app.create_group("Big", &[]).await;
    let members: Vec<_> = (0..10_001)
        .map(|i| json!({"value": format!("u{i}")}))
        .collect();
    let big = app
        .patch(
            &format!("/Groups/{group}"),
            patch_body(json!([{"op": "add", "path": "members", "value": members}])),
        )
        .await;
    assert_eq!(big.status, StatusCode::BAD_REQUEST);
    assert_eq!(big.body["scimType"], "tooMany");

    let page = app.get("/Users?count=100000").await;
    assert_eq!(page.status, StatusCode::OK);
    let spc = app.get("/ServiceProviderConfig").await;
    assert!(
        page.body["itemsPerPage"].as_i64() <= spc.body["filter"]["maxResults"].as_i64(),
        "pages never exceed the published maximum"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn rate_limit(backend: Backend) {
    let mut env = test_env(backend);
    env.settings.server.rate_limit_per_second = 1;
    env.settings.server.rate_limit_burst = 5;
    let app = std::sync::Arc::new(spawn_with(env, Role::All).await);
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(app.call(Method::GET, "/Users?count=0", None).await);
    }
    let limited: Vec<_> = statuses
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(
        !limited.is_empty(),
        "20 quick requests exceed 1/s with a burst of 5"
    );
    assert!(
        statuses
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count()
            >= 5
    );
    let first = limited[0];
    assert_eq!(first.body["status"], "429");
    assert!(first.header("retry-after").is_some());
    // Another organization's token has its own budget.
    let other = app.other_org_token("second").await;
    let theirs = app
        .call_with_token(Method::GET, "/Users?count=0", None, Some(&other))
        .await;
    assert_eq!(theirs.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_token_sqlite() {
    rate_limit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_token_postgres_redis() {
    if crate::helpers::postgres_redis_enabled() {
        rate_limit(Backend::PostgresRedis).await;
    }
}
