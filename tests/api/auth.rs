//! Tokens and tenants: who may see and change what.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, patch_body, user_body};
use crate::on_both_backends;

on_both_backends!(
    missing_or_bad_token_is_401_with_scim_body,
    revoked_token_is_refused_at_once,
    another_organization_can_neither_see_nor_change_resources,
    requests_at_once_with_different_tokens_each_get_their_own_answer,
    lookups_by_user_name_at_once_each_see_their_own_tenant,
);

async fn missing_or_bad_token_is_401_with_scim_body(app: TestApp) {
    for token in [None, Some("scimsync_not-a-real-token")] {
        let reply = app
            .call_with_token(Method::GET, "/Users", None, token)
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.body["status"], "401");
        assert!(reply.header("www-authenticate").is_some());
    }
}

async fn revoked_token_is_refused_at_once(app: TestApp) {
    let issued = scimsync::ops::tokens::create(&app.store, &app.org_slug, "short-lived")
        .await
        .expect("token");
    let ok = app
        .call_with_token(Method::GET, "/Users", None, Some(&issued.token))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    scimsync::ops::tokens::revoke(&app.store, &issued.info.id)
        .await
        .expect("revoke");
    let refused = app
        .call_with_token(Method::GET, "/Users", None, Some(&issued.token))
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

async fn another_organization_can_neither_see_nor_change_resources(app: TestApp) {
    let user = app.create_user("private@example.com").await;
    let group = app.create_group("Secret team", &[&user]).await;
    let other = app.other_org_token("globex").await;
    let as_other = |method: Method, path: String, body: Option<serde_json::Value>| {
        let app = &app;
        let other = other.clone();
        async move { app.call_with_token(method, &path, body, Some(&other)).await }
    };
    for path in [format!("/Users/{user}"), format!("/Groups/{group}")] {
        assert_eq!(
            as_other(Method::GET, path.clone(), None).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            as_other(Method::DELETE, path.clone(), None).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let list = as_other(
        Method::GET,
        "/Users?filter=userName%20eq%20%22private%40example.com%22".into(),
        None,
    )
    .await;
    assert_eq!(list.body["totalResults"], 0);
    let all = as_other(Method::GET, "/Groups".into(), None).await;
    assert_eq!(all.body["totalResults"], 0);
    let patch = as_other(
        Method::PATCH,
        format!("/Users/{user}"),
        Some(patch_body(
            json!([{"op": "replace", "path": "active", "value": false}]),
        )),
    )
    .await;
    assert_eq!(patch.status, StatusCode::NOT_FOUND);
    let put = as_other(
        Method::PUT,
        format!("/Users/{user}"),
        Some(user_body("private@example.com")),
    )
    .await;
    assert_eq!(put.status, StatusCode::NOT_FOUND);
    // The other tenant cannot put our user into its own group either.
    let theirs = as_other(
        Method::POST,
        "/Groups".into(),
        Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Theirs", "members": [{"value": user}]})),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::BAD_REQUEST);
    assert_eq!(theirs.body["scimType"], "invalidValue");
    // Nor find them through POST /.search, at the root or per type.
    for (path, filter) in [
        (
            "/.search",
            "userName eq \"private@example.com\" or displayName eq \"Secret team\"",
        ),
        ("/Users/.search", "userName eq \"private@example.com\""),
        ("/Groups/.search", "displayName eq \"Secret team\""),
    ] {
        let search = serde_json::json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": filter,
        });
        let found = as_other(Method::POST, path.into(), Some(search)).await;
        assert_eq!(found.status, StatusCode::OK, "{path}");
        assert_eq!(found.body["totalResults"], 0, "{path}");
    }
    // Same userName is fine in another organization.
    let same_name = as_other(
        Method::POST,
        "/Users".into(),
        Some(user_body("private@example.com")),
    )
    .await;
    assert_eq!(same_name.status, StatusCode::CREATED);
    // And ours is untouched.
    let ours = app.get(&format!("/Users/{user}")).await;
    assert_eq!(ours.body["active"], true);
    assert_eq!(
        app.get(&format!("/Groups/{group}")).await.body["members"][0]["value"],
        user.as_str()
    );
}

/// Requests that arrive together share one token lookup; each must still
/// get the answer for its own token: its organization, or 401.
async fn requests_at_once_with_different_tokens_each_get_their_own_answer(app: TestApp) {
    app.create_user("ours@example.com").await;
    let other = app.other_org_token("initech").await;
    let revoked = scimsync::ops::tokens::create(&app.store, &app.org_slug, "gone")
        .await
        .expect("token");
    scimsync::ops::tokens::revoke(&app.store, &revoked.info.id)
        .await
        .expect("revoke");
    let tokens = [
        Some(app.token.as_str()),
        Some(other.as_str()),
        Some(revoked.token.as_str()),
        Some("scimsync_not-a-real-token"),
    ];
    let app = &app;
    let requests = (0..32).map(|i| {
        let token = tokens[i % tokens.len()];
        async move {
            let reply = app
                .call_with_token(Method::GET, "/Users", None, token)
                .await;
            (i % tokens.len(), reply)
        }
    });
    for (which, reply) in futures::future::join_all(requests).await {
        match which {
            0 => {
                assert_eq!(reply.status, StatusCode::OK);
                assert_eq!(reply.body["totalResults"], 1, "our one user");
            }
            1 => {
                assert_eq!(reply.status, StatusCode::OK);
                assert_eq!(reply.body["totalResults"], 0, "the other tenant is empty");
            }
            _ => assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{:?}", reply.body),
        }
    }
}

/// Entra ID looks every user up by userName before creating it; lookups
/// that arrive together share a query. Two tenants holding the same
/// userName, and names in the other tenant only, must each get their own
/// tenant's answer, and a name's case must not matter.
async fn lookups_by_user_name_at_once_each_see_their_own_tenant(app: TestApp) {
    let ours = app.create_user("both@example.com").await;
    let other = app.other_org_token("umbrella").await;
    let as_other = |method: Method, path: &str, body: Option<serde_json::Value>| {
        let (app, other) = (&app, other.clone());
        let path = path.to_owned();
        async move { app.call_with_token(method, &path, body, Some(&other)).await }
    };
    let theirs = as_other(
        Method::POST,
        "/Users",
        Some(crate::helpers::user_body("both@example.com")),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{:?}", theirs.body);
    let theirs = theirs.body["id"].as_str().expect("id").to_owned();
    let only_theirs = as_other(
        Method::POST,
        "/Users",
        Some(crate::helpers::user_body("theirs@example.com")),
    )
    .await;
    assert_eq!(only_theirs.status, StatusCode::CREATED);
    let lookup = |name: &str| format!("/Users?filter=userName%20eq%20%22{name}%22");
    let requests = (0..48).map(|i| {
        let (app, other) = (&app, other.clone());
        async move {
            let (token, name) = match i % 4 {
                0 => (app.token.clone(), "both%40example.com"),
                1 => (other, "BOTH%40example.com"),
                2 => (app.token.clone(), "theirs%40example.com"),
                _ => (
                    app.token.clone(),
                    format!("nobody{i}%40example.com").leak() as &str,
                ),
            };
            let reply = app
                .call_with_token(Method::GET, &lookup(name), None, Some(&token))
                .await;
            (i % 4, reply)
        }
    });
    for (which, reply) in futures::future::join_all(requests).await {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let ids: Vec<&str> = reply.body["Resources"]
            .as_array()
            .expect("Resources")
            .iter()
            .filter_map(|r| r["id"].as_str())
            .collect();
        match which {
            0 => assert_eq!(ids, [ours.as_str()], "ours"),
            1 => assert_eq!(ids, [theirs.as_str()], "theirs, whatever the case"),
            _ => assert!(ids.is_empty(), "another tenant's or nobody's: {ids:?}"),
        }
        assert_eq!(reply.body["totalResults"], ids.len());
    }
}
