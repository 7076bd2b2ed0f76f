//! Protocol edges: discovery, unsupported endpoints, wrong methods, limits.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::TestApp;
use crate::{on_both_backends, on_each_backend};

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

on_each_backend!(filtered_lists_sort_and_count_as_unfiltered_ones_do);

/// A filter that SQL cannot run is evaluated on a scan of the tenant, read
/// in batches; whatever the order asked for, the scan must list in the
/// order, and count the matches, that the SQL path gives. The data puts
/// ties, keys that differ in case only and resources without the key
/// across the edges of the batches (500 rows).
async fn filtered_lists_sort_and_count_as_unfiltered_ones_do(backend: crate::helpers::Backend) {
    // A web process only: no worker acts on the rows written here.
    let app = crate::helpers::spawn_with(
        crate::helpers::test_env(backend),
        scimsync::startup::Role::Web,
    )
    .await;
    seed_for_sorting(&app, 1100).await;
    let orders = |names: &[&'static str]| {
        let mut orders = Vec::new();
        for name in names {
            for direction in ["ascending", "descending"] {
                orders.push(format!("sortBy={name}&sortOrder={direction}"));
            }
        }
        orders
    };
    let lists = [
        (
            "/Users",
            "userName%20pr",
            orders(&[
                "userName",
                "displayName",
                "externalId",
                "id",
                "meta.created",
                "meta.lastModified",
            ]),
        ),
        (
            "/Groups",
            "displayName%20pr",
            orders(&[
                "displayName",
                "externalId",
                "id",
                "meta.created",
                "meta.lastModified",
            ]),
        ),
    ];
    for (path, everything, orders) in lists {
        for order in orders {
            // The SQL path's whole list, page by page.
            let mut all = Vec::new();
            loop {
                let page = app
                    .get(&format!(
                        "{path}?{order}&startIndex={}&count=200",
                        all.len() + 1
                    ))
                    .await;
                assert_eq!(page.status, StatusCode::OK, "{order}: {:?}", page.body);
                let resources = page.body["Resources"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if resources.is_empty() {
                    break;
                }
                all.extend(resources);
            }
            assert_eq!(all.len(), 1100, "{path} {order}");
            let with_external_id: Vec<_> = all
                .iter()
                .filter(|r| r["externalId"].is_string())
                .cloned()
                .collect();
            let ids = |resources: &[serde_json::Value]| -> Vec<String> {
                resources
                    .iter()
                    .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            };
            for (filter, expected) in [(everything, &all), ("externalId%20pr", &with_external_id)] {
                for (start, count) in [(1, 50), (481, 40), (701, 200)] {
                    let scanned = app
                        .get(&format!(
                            "{path}?filter={filter}&{order}&startIndex={start}&count={count}"
                        ))
                        .await;
                    let at = format!("{path}?filter={filter}&{order}&startIndex={start}");
                    assert_eq!(scanned.status, StatusCode::OK, "{at}: {:?}", scanned.body);
                    assert_eq!(scanned.body["totalResults"], expected.len(), "{at}");
                    let window: Vec<_> = expected
                        .iter()
                        .skip(start - 1)
                        .take(count)
                        .cloned()
                        .collect();
                    let got = scanned.body["Resources"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    assert_eq!(ids(&got), ids(&window), "{at}");
                }
            }
        }
    }
}

/// `n` users and `n` groups written straight to the store, shaped to test
/// orders: displayNames and externalIds that repeat and differ in case
/// only, some missing; creation and modification times shared by several
/// and with and without fractions of a second; random ids.
async fn seed_for_sorting(app: &TestApp, n: usize) {
    use diesel::Connection;
    use scimsync::store::{self, teams, users};

    let org = app.org_id().await;
    app.store
        .run(move |c| {
            c.transaction(|c| -> Result<(), store::Error> {
                let base = store::now();
                let at = |ms: usize| base + chrono::TimeDelta::milliseconds(ms as i64);
                let external = |i: usize| {
                    (!i.is_multiple_of(3))
                        .then(|| ["B7", "a3", "b7", "A3", "z-1", "Z_1"][i % 6].to_owned())
                };
                // A resource as a client sends it: unset attributes left out.
                let present = |mut resource: serde_json::Value| {
                    if let Some(fields) = resource.as_object_mut() {
                        fields.retain(|_, v| !v.is_null());
                    }
                    resource.to_string()
                };
                let mut rows = Vec::with_capacity(n);
                for i in 0..n {
                    let user_name = format!("{}User{i:04}@example.com", ["a", "B"][i % 2]);
                    let display = (!i.is_multiple_of(4)).then(|| {
                        [
                            "Alpha", "ALPHA", "beta", "Beta", "gamma", "Zeta", "_under", "ärger",
                        ][i % 8]
                            .to_owned()
                    });
                    let external_id = external(i);
                    let resource = present(json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": user_name,
                        "displayName": display,
                        "externalId": external_id,
                    }));
                    rows.push(users::UserRow {
                        id: uuid::Uuid::new_v4().to_string(),
                        org_id: org.clone(),
                        user_name_key: user_name.to_lowercase(),
                        user_name,
                        external_id,
                        display_name_key: display.as_deref().map(str::to_lowercase),
                        display_name: display,
                        email: None,
                        active: true,
                        resource,
                        version: 1,
                        created_at: at(i / 10 * 1500),
                        updated_at: at((i * 7) % 50 * 1000 + i % 3 * 250),
                        joined_at: None,
                    });
                }
                // A few at a time: SQLite limits the values of a statement.
                for chunk in rows.chunks(50) {
                    users::insert_all_if_free(c, chunk)?;
                }
                for i in 0..n {
                    let name = format!("{}Group {i:04}", ["a", "B", "_", "z"][i % 4]);
                    let external_id = external(i);
                    let resource = present(json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                        "displayName": name,
                        "externalId": external_id,
                    }));
                    teams::insert(
                        c,
                        &teams::TeamRow {
                            id: uuid::Uuid::new_v4().to_string(),
                            org_id: org.clone(),
                            display_name_key: name.to_lowercase(),
                            display_name: name,
                            external_id,
                            resource,
                            version: 1,
                            created_at: at(i / 10 * 1500),
                            updated_at: at((i * 7) % 50 * 1000 + i % 3 * 250),
                        },
                    )?;
                }
                Ok(())
            })
        })
        .await
        .expect("seed");
}
