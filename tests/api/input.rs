//! Malformed input: every such request is answered at once with a 4xx SCIM
//! error saying what is wrong, and nothing of it is queued or applied.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Reply, TestApp};
use crate::on_both_backends;

on_both_backends!(
    deeply_nested_bodies_are_refused_at_ingest,
    nul_characters_are_refused_before_the_database,
);

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Well under the request deadline: an answer that had to wait for a
/// worker would take the whole deadline.
const PROMPT: Duration = Duration::from_secs(5);

/// Sends a raw body and checks it is refused promptly with `status`,
/// `scim_type` and a detail containing `says`.
async fn refused(
    app: &TestApp,
    method: Method,
    path: &str,
    body: &str,
    (status, scim_type, says): (u16, &str, &str),
) -> Reply {
    let started = Instant::now();
    let reply = app.call_raw(method.clone(), path, body).await;
    assert_refusal(&reply, status, scim_type, says);
    assert!(
        started.elapsed() < PROMPT,
        "{method} {path} took {:?}",
        started.elapsed()
    );
    reply
}

fn assert_refusal(reply: &Reply, status: u16, scim_type: &str, says: &str) {
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    assert_eq!(
        reply.body["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
    );
    assert_eq!(reply.body["status"], status.to_string());
    assert_eq!(reply.body["scimType"], scim_type, "{:?}", reply.body);
    let detail = reply.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(says), "{detail:?} should say {says:?}");
}

fn nested_arrays(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

async fn deeply_nested_bodies_are_refused_at_ingest(app: TestApp) {
    let id = app.create_user("nested@example.com").await;
    let too_deep = (400, "invalidSyntax", "deeper than 32 levels");
    // 127 levels in all: within serde_json's own limit of 128, but not
    // once the queued change wraps the body.
    let deep = nested_arrays(124);
    let patch = format!(
        r#"{{"schemas": ["{PATCH_OP}"], "Operations": [{{"op": "replace",
            "path": "displayName", "value": "Changed", "x": {deep}}}]}}"#
    );
    refused(
        &app,
        Method::PATCH,
        &format!("/Users/{id}"),
        &patch,
        too_deep,
    )
    .await;
    let user = format!(r#"{{"schemas": ["{USER}"], "userName": "deep@example.com", "x": {deep}}}"#);
    refused(&app, Method::POST, "/Users", &user, too_deep).await;
    refused(&app, Method::PUT, &format!("/Users/{id}"), &user, too_deep).await;

    let stored = app.get(&format!("/Users/{id}")).await;
    assert_eq!(stored.body["userName"], "nested@example.com");
    assert_ne!(stored.body["displayName"], "Changed");
    let found = app
        .get("/Users?filter=userName%20eq%20%22deep%40example.com%22")
        .await;
    assert_eq!(found.body["totalResults"], 0);
}

async fn nul_characters_are_refused_before_the_database(app: TestApp) {
    let id = app.create_user("nul@example.com").await;
    let team = app.create_group("Nul", &[]).await;
    let nul_value = (400, "invalidValue", "U+0000");
    let user = format!(r#"{{"schemas": ["{USER}"], "userName": "a\u0000b@example.com"}}"#);
    refused(&app, Method::POST, "/Users", &user, nul_value).await;
    refused(&app, Method::PUT, &format!("/Users/{id}"), &user, nul_value).await;
    let patch = format!(
        r#"{{"schemas": ["{PATCH_OP}"], "Operations": [{{"op": "replace",
            "path": "displayName", "value": "a\u0000b"}}]}}"#
    );
    refused(
        &app,
        Method::PATCH,
        &format!("/Users/{id}"),
        &patch,
        nul_value,
    )
    .await;
    let search = r#"{"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
        "filter": "userName eq \"a\u0000b\""}"#;
    refused(&app, Method::POST, "/Users/.search", search, nul_value).await;

    let filter = app.get("/Users?filter=userName%20eq%20%22a%00b%22").await;
    assert_refusal(&filter, 400, "invalidFilter", "U+0000");

    // An id with NUL names nothing: 404 at once, for every method.
    let user = user.replace("a\\u0000b@", "ok@");
    let group =
        r#"{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "ok"}"#;
    let ok_patch = patch.replace("a\\u0000b", "ok");
    for (path, put) in [
        ("/Users/a%00b", user.as_str()),
        ("/Users/%00", user.as_str()),
        ("/Groups/a%00b", group),
    ] {
        for (method, body) in [
            (Method::GET, None),
            (Method::DELETE, None),
            (Method::PUT, Some(put)),
            (Method::PATCH, Some(ok_patch.as_str())),
        ] {
            let started = Instant::now();
            let reply = match body {
                Some(body) => app.call_raw(method.clone(), path, body).await,
                None => app.call(method.clone(), path, None).await,
            };
            assert_eq!(
                reply.status.as_u16(),
                404,
                "{method} {path}: {:?}",
                reply.body
            );
            assert_eq!(reply.body["status"], "404");
            assert!(started.elapsed() < PROMPT, "{method} {path}");
        }
    }
    let stored = app.get(&format!("/Users/{id}")).await;
    assert_eq!(stored.body["userName"], "nul@example.com");
    assert_eq!(
        app.get(&format!("/Groups/{team}")).await.status.as_u16(),
        200
    );
}
