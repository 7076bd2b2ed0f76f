//! Malformed input: every such request is answered at once with a 4xx SCIM
//! error saying what is wrong, and nothing of it is queued or applied.

use std::time::{Duration, Instant};

use reqwest::Method;
use scimsync::startup::Role;
use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, patch_body, spawn_with, test_env, user_body};
use crate::on_both_backends;

on_both_backends!(
    deeply_nested_bodies_are_refused_at_ingest,
    nul_characters_are_refused_before_the_database,
    overlong_indexed_values_and_ids_are_refused_before_the_database,
    repeated_members_and_parameters_are_refused,
    two_primary_values_are_refused_at_ingest,
    unreadable_if_match_and_urls_are_invalid_syntax,
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
    let shown: String = reply.body.to_string().chars().take(300).collect();
    assert_eq!(reply.status.as_u16(), status, "{shown}");
    assert_eq!(
        reply.body["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
    );
    assert_eq!(reply.body["status"], status.to_string());
    assert_eq!(reply.body["scimType"], scim_type, "{shown}");
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

/// `len` letters that do not compress: PostgreSQL compresses a large index
/// entry, so a run of one letter would fit where real text does not.
fn text(len: usize) -> String {
    let mut state: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            char::from(b'a' + u8::try_from(state % 26).unwrap_or(0))
        })
        .collect()
}

/// An address of exactly `bytes` bytes.
fn address(bytes: usize) -> String {
    let domain = "@example.com";
    format!("{}{domain}", text(bytes - domain.len()))
}

async fn overlong_indexed_values_and_ids_are_refused_before_the_database(app: TestApp) {
    // At the limit, everything is accepted and found again.
    let longest = address(1024);
    let mut body = user_body(&longest);
    body["externalId"] = json!(text(1024));
    body["displayName"] = json!(text(1024));
    let created = app.post("/Users", body).await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.body["detail"]);
    let id = created.body["id"].as_str().unwrap_or_default().to_owned();
    let found = app
        .get(&format!("/Users?filter=userName%20eq%20%22{longest}%22"))
        .await;
    assert_eq!(found.body["totalResults"], 1);

    let too_long = (400, "invalidValue", "at most 1024 bytes");
    let long = address(3000);
    let mut bodies: Vec<Value> = Vec::new();
    bodies.push(user_body(&long));
    for (key, value) in [
        ("displayName", json!(text(3000))),
        ("externalId", json!(text(3000))),
        ("emails", json!([{"type": "work", "value": long}])),
    ] {
        let mut body = user_body("ok@example.com");
        body[key] = value;
        bodies.push(body);
    }
    for body in &bodies {
        refused(&app, Method::POST, "/Users", &body.to_string(), too_long).await;
        let put = format!("/Users/{id}");
        refused(&app, Method::PUT, &put, &body.to_string(), too_long).await;
    }
    let group = app.create_group("Short", &[]).await;
    for key in ["displayName", "externalId"] {
        let mut body = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Long",
        });
        body[key] = json!(text(3000));
        refused(&app, Method::POST, "/Groups", &body.to_string(), too_long).await;
    }
    for (path, value) in [
        ("userName", json!(long)),
        ("displayName", json!(text(3000))),
        ("emails", json!([{"type": "home", "value": long}])),
    ] {
        let patch = patch_body(json!([{"op": "replace", "path": path, "value": value}]));
        let reply = app.patch(&format!("/Users/{id}"), patch).await;
        assert_refusal(&reply, 400, "invalidValue", "at most 1024 bytes");
    }
    // A value that a filter in the path creates is held to the same limit.
    let created = patch_body(json!([{"op": "add",
        "path": format!("emails[value eq \"{long}\"].type"), "value": "other"}]));
    let reply = app.patch(&format!("/Users/{id}"), created).await;
    assert_refusal(&reply, 400, "invalidValue", "at most 1024 bytes");
    let stored = app.get(&format!("/Users/{id}")).await;
    assert_eq!(stored.body["userName"], longest);
    assert_eq!(stored.body["emails"].as_array().map(Vec::len), Some(1));

    // An id longer than any this service issues names nothing.
    let long_id = "7".repeat(3000);
    let patch = patch_body(json!([{"op": "replace", "path": "displayName", "value": "x"}]));
    for (kind, put) in [
        ("Users", user_body("ok@example.com")),
        (
            "Groups",
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "x"}),
        ),
    ] {
        let path = format!("/{kind}/{long_id}");
        for (method, body) in [
            (Method::GET, None),
            (Method::DELETE, None),
            (Method::PUT, Some(put.clone())),
            (Method::PATCH, Some(patch.clone())),
        ] {
            let started = Instant::now();
            let reply = app.call(method.clone(), &path, body).await;
            assert_eq!(
                reply.status.as_u16(),
                404,
                "{method} {kind}: {:?}",
                reply.body
            );
            assert!(started.elapsed() < PROMPT, "{method} {kind}");
        }
    }

    // A filter value longer than any stored value matches nothing.
    let x = text(3000);
    for query in [
        format!("/Users?filter=userName%20eq%20%22{x}%22"),
        format!("/Users?filter=externalId%20eq%20%22{x}%22"),
        format!("/Users?filter=displayName%20eq%20%22{x}%22"),
        format!("/Users?filter=emails.value%20eq%20%22{x}%22"),
        format!("/Users?filter=id%20eq%20%22{x}%22"),
        format!("/Groups?filter=displayName%20eq%20%22{x}%22"),
        format!("/Groups?filter=externalId%20eq%20%22{x}%22"),
        format!("/Groups?filter=members%20eq%20%22{x}%22"),
    ] {
        let reply = app.get(&query).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.body["detail"]);
        assert_eq!(reply.body["totalResults"], 0);
    }
    assert_eq!(
        app.get(&format!("/Groups/{group}")).await.status.as_u16(),
        200
    );
}

async fn two_primary_values_are_refused_at_ingest(app: TestApp) {
    // RFC 7643 §2.4: "The primary attribute value 'true' MUST appear no
    // more than once". Invitations go to the primary email.
    let id = app.create_user("primary@example.com").await;
    let two_primaries = (400, "invalidValue", "emails");
    let mut body = user_body("other@example.com");
    body["emails"] = json!([
        {"primary": true, "type": "work", "value": "other@example.com"},
        {"primary": "True", "type": "home", "value": "other@home.example"}
    ]);
    refused(
        &app,
        Method::POST,
        "/Users",
        &body.to_string(),
        two_primaries,
    )
    .await;
    let mut put = body.clone();
    put["userName"] = json!("primary@example.com");
    let path = format!("/Users/{id}");
    refused(&app, Method::PUT, &path, &put.to_string(), two_primaries).await;
    let patch = patch_body(json!([{"op": "add", "path": "emails", "value": [
        {"primary": true, "type": "home", "value": "a@home.example"},
        {"primary": true, "type": "other", "value": "b@other.example"}]}]));
    refused(
        &app,
        Method::PATCH,
        &path,
        &patch.to_string(),
        two_primaries,
    )
    .await;
    let mut phones = user_body("other@example.com");
    phones["phoneNumbers"] = json!([
        {"primary": true, "type": "work", "value": "1"},
        {"primary": true, "type": "mobile", "value": "2"}
    ]);
    let phone_primaries = (400, "invalidValue", "phoneNumbers");
    refused(
        &app,
        Method::POST,
        "/Users",
        &phones.to_string(),
        phone_primaries,
    )
    .await;

    let stored = app.get(&path).await;
    assert_eq!(
        stored.body["emails"],
        json!([{"primary": true, "type": "work", "value": "primary@example.com"}])
    );
    let others = app
        .get("/Users?filter=userName%20eq%20%22other@example.com%22")
        .await;
    assert_eq!(others.body["totalResults"], 0);
}

async fn repeated_members_and_parameters_are_refused(app: TestApp) {
    let id = app.create_user("twice@example.com").await;
    let repeated = |name: &'static str| (400, "invalidSyntax", name);
    // serde_json would keep the last "Operations" and apply only it.
    let patch = format!(
        r#"{{"schemas": ["{PATCH_OP}"],
            "Operations": [{{"op": "replace", "path": "displayName", "value": "First"}}],
            "Operations": [{{"op": "replace", "path": "title", "value": "Second"}}]}}"#
    );
    let path = format!("/Users/{id}");
    refused(
        &app,
        Method::PATCH,
        &path,
        &patch,
        repeated("\"Operations\""),
    )
    .await;
    let patch = format!(
        r#"{{"schemas": ["{PATCH_OP}"], "Operations": [{{"op": "replace",
            "path": "displayName", "value": "First", "Value": "Second"}}]}}"#
    );
    refused(&app, Method::PATCH, &path, &patch, repeated("\"Value\"")).await;
    for (body, name) in [
        (
            format!(
                r#"{{"schemas": ["{USER}"], "userName": "a@example.com", "userName": "b@example.com"}}"#
            ),
            "\"userName\"",
        ),
        (
            format!(
                r#"{{"schemas": ["{USER}"], "userName": "a@example.com", "USERNAME": "b@example.com"}}"#
            ),
            "\"USERNAME\"",
        ),
        (
            format!(
                r#"{{"schemas": ["{USER}"], "userName": "a@example.com",
                "emails": [{{"value": "a@example.com", "value": "b@example.com"}}]}}"#
            ),
            "\"value\"",
        ),
    ] {
        refused(&app, Method::POST, "/Users", &body, repeated(name)).await;
        refused(&app, Method::PUT, &path, &body, repeated(name)).await;
    }
    let stored = app.get(&path).await;
    assert_eq!(stored.body["userName"], "twice@example.com");
    assert!(stored.body.get("displayName").is_none_or(|d| d != "First"));
    assert!(stored.body.get("title").is_none());
    let none = app
        .get("/Users?filter=userName%20eq%20%22b%40example.com%22")
        .await;
    assert_eq!(none.body["totalResults"], 0);

    // A query parameter named twice, in any case, would be a guess.
    for query in [
        "/Users?filter=userName%20eq%20%22x%22&Filter=userName%20eq%20%22y%22".to_owned(),
        "/Groups?count=1&count=2".to_owned(),
        format!("{path}?attributes=userName&ATTRIBUTES=id"),
    ] {
        let reply = app.get(&query).await;
        assert_refusal(&reply, 400, "invalidSyntax", "more than once");
    }
}

async fn unreadable_if_match_and_urls_are_invalid_syntax(app: TestApp) {
    let id = app.create_user("ifmatch@example.com").await;
    let url = format!("{}/Users/{id}", app.scim);
    // Not visible ASCII: it used to count as no If-Match at all, and the
    // write applied unconditionally.
    let tag = reqwest::header::HeaderValue::from_bytes(b"W/\"1\xff\"").expect("obs-text");
    let patch = patch_body(json!([{"op": "replace", "path": "displayName", "value": "Changed"}]));
    let sent = app
        .client
        .patch(&url)
        .bearer_auth(&app.token)
        .header("if-match", tag.clone())
        .header("content-type", "application/scim+json")
        .body(patch.to_string())
        .send()
        .await
        .expect("request");
    let reply = crate::helpers::read(sent).await;
    assert_refusal(&reply, 400, "invalidSyntax", "If-Match");
    let sent = app
        .client
        .delete(&url)
        .bearer_auth(&app.token)
        .header("if-match", tag)
        .send()
        .await
        .expect("request");
    let reply = crate::helpers::read(sent).await;
    assert_refusal(&reply, 400, "invalidSyntax", "If-Match");
    let stored = app.get(&format!("/Users/{id}")).await;
    assert_eq!(stored.status.as_u16(), 200);
    assert!(
        stored
            .body
            .get("displayName")
            .is_none_or(|d| d != "Changed")
    );

    // An id that is not UTF-8 once percent-decoded: axum refuses it, and
    // the answer is a SCIM error like any other.
    for path in ["/Users/%FF", "/Groups/a%C3"] {
        let reply = app.get(path).await;
        assert_refusal(&reply, 400, "invalidSyntax", "UTF-8");
    }
}

/// With no worker running (or a backlog), a PATCH that is wrong whatever
/// is stored must still be answered at once, not with 503 at the deadline.
async fn patch_content_is_checked_without_a_worker(backend: Backend) {
    let mut env = test_env(backend);
    env.settings.server.request_deadline_secs = 3;
    let app = spawn_with(env, Role::Web).await;
    let user = "/Users/2819c223-7f76-453a-919d-413861904646";
    for (ops, expected) in [
        (
            json!([{"op": "replace", "path": "shoeSize", "value": "9"}]),
            (
                400,
                "invalidPath",
                "'shoeSize' is not an attribute of User resources",
            ),
        ),
        (
            json!([{"op": "replace", "path": "meta.created", "value": "2020-01-01T00:00:00Z"}]),
            (400, "mutability", "read-only"),
        ),
        (
            json!([{"op": "remove", "path": "userName"}]),
            (400, "mutability", "userName is required"),
        ),
        (
            json!([{"op": "Replace", "path": "active", "value": "maybe"}]),
            (400, "invalidValue", "'active' must be true or false"),
        ),
        (
            json!([{"op": "add", "path": "emails[type eq \"work\"].value", "value": text(1025)}]),
            (400, "invalidValue", "at most 1024 bytes"),
        ),
    ] {
        refused(
            &app,
            Method::PATCH,
            user,
            &patch_body(ops).to_string(),
            expected,
        )
        .await;
    }
    let members: Vec<Value> = (0..10_001)
        .map(|i| json!({"value": format!("u{i}")}))
        .collect();
    let big = patch_body(json!([{"op": "add", "path": "members", "value": members}]));
    let group = "/Groups/8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159";
    let expected = (400, "tooMany", "at most 10000");
    refused(&app, Method::PATCH, group, &big.to_string(), expected).await;
    let filter = patch_body(json!([{"op": "remove", "path": "members[display eq \"Ann\"]"}]));
    let expected = (400, "invalidFilter", "value eq");
    refused(&app, Method::PATCH, group, &filter.to_string(), expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_content_is_checked_without_a_worker_sqlite() {
    patch_content_is_checked_without_a_worker(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_content_is_checked_without_a_worker_postgres_redis() {
    if crate::helpers::postgres_redis_enabled() {
        patch_content_is_checked_without_a_worker(Backend::PostgresRedis).await;
    }
}
