//! Limits: every oversized or abusive request gets a clear SCIM error.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use scimsync::startup::Role;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, patch_body, spawn_with, test_env, user_body};
use crate::on_both_backends;

on_both_backends!(
    deeply_nested_json_filters_patches_and_member_lists_are_refused,
    too_many_values_of_one_attribute_are_refused_at_once,
);

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

async fn too_many_values_of_one_attribute_are_refused_at_once(app: TestApp) {
    let id = app.create_user("values@example.com").await;
    let bare: Vec<Value> = (0..20_000).map(|i| json!(i.to_string())).collect();
    let typed: Vec<Value> = (0..10_000)
        .map(|i| json!({"value": format!("{i}@example.com"), "type": format!("t{i}")}))
        .collect();
    let mut user = user_body("more-values@example.com");
    user["emails"] = json!(typed);
    let mut same_user = user_body("values@example.com");
    same_user["emails"] = json!(typed);
    let sent = [
        (
            Method::PATCH,
            format!("/Users/{id}"),
            patch_body(json!([{"op": "add", "path": "emails", "value": bare}])),
        ),
        (Method::POST, "/Users".to_owned(), user),
        (Method::PUT, format!("/Users/{id}"), same_user),
    ];
    for (method, path, body) in sent {
        // Refusing is immediate; work that grows with the square of the
        // values' number would keep a runtime thread for minutes.
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            app.call(method.clone(), &path, Some(body)),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path} took longer than 2 s"));
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {path}");
        assert_eq!(reply.body["scimType"], "tooMany", "{method} {path}");
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("'emails'") && detail.contains("at most 200"),
            "{method} {path}: {detail}"
        );
    }

    // Operations that each stay within the limit cannot add up past it.
    let phones = |op: usize| {
        let numbers: Vec<Value> = (0..100)
            .map(|i| json!(format!("+1 555 {op}{i:03}")))
            .collect();
        json!({"op": "add", "path": "phoneNumbers", "value": numbers})
    };
    let summed = app
        .patch(
            &format!("/Users/{id}"),
            patch_body(json!([phones(1), phones(2), phones(3)])),
        )
        .await;
    assert_eq!(summed.status, StatusCode::BAD_REQUEST, "{:?}", summed.body);
    assert_eq!(summed.body["scimType"], "tooMany");
    let detail = summed.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("'phoneNumbers'"), "{detail}");

    // The limit itself is accepted.
    let roles: Vec<Value> = (0..200).map(|i| json!(format!("role{i}"))).collect();
    let full = app
        .patch(
            &format!("/Users/{id}"),
            patch_body(json!([{"op": "add", "path": "roles", "value": roles}])),
        )
        .await;
    assert_eq!(full.status, StatusCode::OK, "{:?}", full.body);
    assert_eq!(full.body["roles"].as_array().map(Vec::len), Some(200));
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
