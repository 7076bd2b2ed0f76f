//! Protocol edges: discovery, unsupported endpoints, wrong methods, limits.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::TestApp;
use crate::on_both_backends;

on_both_backends!(
    discovery_documents_describe_users_and_groups,
    bulk_and_me_answer_501_and_wrong_method_405,
    oversized_body_is_413_with_scim_error,
    filter_on_unknown_attribute_is_400,
    search_with_post_pages_users_and_groups,
    if_match_guards_writes_and_if_none_match_gives_304,
    sort_by_and_sort_order_order_lists,
);

async fn discovery_documents_describe_users_and_groups(app: TestApp) {
    let spc = app.get("/ServiceProviderConfig").await;
    assert_eq!(spc.status, StatusCode::OK);
    assert_eq!(spc.body["patch"]["supported"], true);
    assert_eq!(spc.body["bulk"]["supported"], false);
    let types = app.get("/ResourceTypes").await;
    let endpoints: Vec<&str> = types.body["Resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["endpoint"].as_str())
        .collect();
    assert_eq!(endpoints, vec!["/Users", "/Groups"]);
    let schemas = app.get("/Schemas").await;
    let ids: Vec<&str> = schemas.body["Resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    for want in [
        "urn:ietf:params:scim:schemas:core:2.0:User",
        "urn:ietf:params:scim:schemas:core:2.0:Group",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
    ] {
        assert!(ids.contains(&want), "{want} missing from /Schemas");
        let one = app.get(&format!("/Schemas/{want}")).await;
        assert_eq!(one.status, StatusCode::OK);
    }
    assert_eq!(
        app.get("/Schemas/urn:nope").await.status,
        StatusCode::NOT_FOUND
    );
}

async fn bulk_and_me_answer_501_and_wrong_method_405(app: TestApp) {
    let bulk = app.post("/Bulk", json!({})).await;
    assert_eq!(bulk.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(bulk.body["status"], "501");
    assert_eq!(app.get("/Me").await.status, StatusCode::NOT_IMPLEMENTED);
    let wrong = app.call(Method::DELETE, "/Users", None).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.body["status"], "405");
    let unknown = app.get("/Widgets").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["status"], "404");
}

async fn oversized_body_is_413_with_scim_error(app: TestApp) {
    let big = "x".repeat(app.settings.server.max_body_bytes + 1);
    let reply = app
        .post(
            "/Users",
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": big}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body["status"], "413");
}

async fn filter_on_unknown_attribute_is_400(app: TestApp) {
    let reply = app.get("/Users?filter=shoeSize%20eq%20%2242%22").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["scimType"], "invalidFilter");
}

async fn search_with_post_pages_users_and_groups(app: TestApp) {
    let ada = app.create_user("ada@example.com").await;
    app.create_user("bob@example.com").await;
    app.create_group("Ops", &[&ada]).await;
    let search = |filter: serde_json::Value| {
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": filter,
            "startIndex": 1,
            "count": 10,
            "attributes": ["userName", "displayName"],
        })
    };
    let users = app
        .post(
            "/Users/.search",
            search(json!("userName eq \"ADA@example.com\"")),
        )
        .await;
    assert_eq!(users.status, StatusCode::OK, "{:?}", users.body);
    assert_eq!(users.body["totalResults"], 1);
    assert_eq!(users.body["Resources"][0]["id"], ada.as_str());
    assert!(
        users.body["Resources"][0].get("emails").is_none(),
        "attributes= limits the answer"
    );
    let everything = app.post("/.search", search(serde_json::Value::Null)).await;
    assert_eq!(everything.body["totalResults"], 3);
    let page2 = app
        .post(
            "/.search",
            json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                "startIndex": 3,
                "count": 1,
            }),
        )
        .await;
    assert_eq!(
        page2.body["Resources"][0]["displayName"], "Ops",
        "users first, then groups"
    );
    let no_schema = app
        .post("/Users/.search", json!({"filter": "userName pr"}))
        .await;
    assert_eq!(no_schema.status, StatusCode::BAD_REQUEST);
}

async fn if_match_guards_writes_and_if_none_match_gives_304(app: TestApp) {
    let id = app.create_user("etag@example.com").await;
    let got = app.get(&format!("/Users/{id}")).await;
    let etag = got.header("etag").expect("etag").to_owned();
    let fresh = app
        .client
        .get(format!("{}/Users/{id}", app.scim))
        .bearer_auth(&app.token)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("request");
    assert_eq!(fresh.status(), StatusCode::NOT_MODIFIED);
    let patch = |tag: &str| {
        app.client
            .patch(format!("{}/Users/{id}", app.scim))
            .bearer_auth(&app.token)
            .header("if-match", tag)
            .body(
                crate::helpers::patch_body(
                    json!([{"op": "replace", "path": "displayName", "value": "E"}]),
                )
                .to_string(),
            )
            .send()
    };
    let stale = crate::helpers::read(patch("W/\"999\"").await.expect("request")).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let ok = crate::helpers::read(patch(&etag).await.expect("request")).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_ne!(
        ok.header("etag"),
        Some(etag.as_str()),
        "the version changes with the change"
    );
}

async fn sort_by_and_sort_order_order_lists(app: TestApp) {
    for name in ["carol@example.com", "Alice@example.com", "bob@example.com"] {
        app.create_user(name).await;
    }
    let names = |reply: &crate::helpers::Reply| -> Vec<String> {
        reply.body["Resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["userName"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let asc = app.get("/Users?sortBy=userName").await;
    assert_eq!(
        names(&asc),
        ["Alice@example.com", "bob@example.com", "carol@example.com"]
    );
    let desc = app
        .get("/Users?sortBy=userName&sortOrder=descending&count=2")
        .await;
    assert_eq!(names(&desc), ["carol@example.com", "bob@example.com"]);
    // With a filter evaluated outside SQL the order holds too.
    let filtered = app
        .get("/Users?filter=userName%20sw%20%22b%22%20or%20userName%20sw%20%22c%22&sortBy=userName&sortOrder=descending")
        .await;
    assert_eq!(names(&filtered), ["carol@example.com", "bob@example.com"]);
    let bad = app.get("/Users?sortBy=nickName").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["scimType"], "invalidValue");
    let bad_order = app.get("/Users?sortBy=userName&sortOrder=sideways").await;
    assert_eq!(bad_order.status, StatusCode::BAD_REQUEST);
}
