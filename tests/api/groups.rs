//! Groups become teams: create, look up, members, rename, delete.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, patch_body};
use crate::on_both_backends;

on_both_backends!(
    writes_that_change_nothing_keep_the_version,
    deleting_a_member_gives_the_group_a_new_version,
    group_lifecycle_as_entra_drives_it,
    duplicate_group_name_in_another_case_is_409,
    concurrent_member_patches_lose_no_member,
    member_ids_and_certificates_compare_case_exactly,
);

async fn group_lifecycle_as_entra_drives_it(app: TestApp) {
    let alice = app.create_user("alice@example.com").await;
    let bob = app.create_user("bob@example.com").await;
    // Entra looks the group up by name, without members, then creates it
    // with its extra Microsoft schema URI.
    let lookup = app
        .get("/Groups?excludedAttributes=members&filter=displayName+eq+%22Platform%22")
        .await;
    assert_eq!(lookup.status, StatusCode::OK);
    assert_eq!(lookup.body["totalResults"], 0);
    let created = app
        .post(
            "/Groups",
            json!({
                "schemas": [
                    "urn:ietf:params:scim:schemas:core:2.0:Group",
                    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"
                ],
                "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
                "displayName": "Platform",
                "meta": {"resourceType": "Group"}
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(created.body["members"], json!([]));

    let add = app
        .patch(
            &format!("/Groups/{id}"),
            patch_body(json!([{"op": "Add", "path": "members", "value": [
                {"$ref": null, "value": alice}, {"value": bob}
            ]}])),
        )
        .await;
    assert_eq!(add.status, StatusCode::NO_CONTENT, "{:?}", add.body);
    let got = app.get(&format!("/Groups/{id}")).await;
    let mut members: Vec<&str> = got.body["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["value"].as_str())
        .collect();
    members.sort_unstable();
    let mut expected = vec![alice.as_str(), bob.as_str()];
    expected.sort_unstable();
    assert_eq!(members, expected);

    let found = app
        .get("/Groups?excludedAttributes=members&filter=displayName+eq+%22platform%22")
        .await;
    assert_eq!(found.body["totalResults"], 1);
    assert!(found.body["Resources"][0].get("members").is_none());

    // Entra's default dialect: Remove with a value list removes only those.
    let remove = app
        .patch(
            &format!("/Groups/{id}"),
            patch_body(json!([{"op": "Remove", "path": "members", "value": [{"value": alice}]}])),
        )
        .await;
    assert_eq!(remove.status, StatusCode::NO_CONTENT);
    let after = app.get(&format!("/Groups/{id}")).await;
    assert_eq!(after.body["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(after.body["members"][0]["value"], bob.as_str());

    let rename = app
        .patch(
            &format!("/Groups/{id}"),
            patch_body(json!([{"op": "Replace", "path": "displayName", "value": "Platform Eng"}])),
        )
        .await;
    assert_eq!(rename.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get(&format!("/Groups/{id}")).await.body["displayName"],
        "Platform Eng"
    );

    assert_eq!(
        app.delete(&format!("/Groups/{id}")).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/Groups/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    // The users remain.
    assert_eq!(
        app.get(&format!("/Users/{bob}")).await.status,
        StatusCode::OK
    );
}

async fn duplicate_group_name_in_another_case_is_409(app: TestApp) {
    app.create_group("Sales", &[]).await;
    let reply = app
        .post(
            "/Groups",
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "SALES"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["scimType"], "uniqueness");
}

async fn concurrent_member_patches_lose_no_member(app: TestApp) {
    let group = app.create_group("Everyone", &[]).await;
    let mut users = Vec::new();
    for i in 0..12 {
        users.push(app.create_user(&format!("member{i}@example.com")).await);
    }
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for user in &users {
        let app = app.clone();
        let path = format!("/Groups/{group}");
        let body =
            patch_body(json!([{"op": "Add", "path": "members", "value": [{"value": user}]}]));
        tasks.push(tokio::spawn(
            async move { app.patch(&path, body).await.status },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::NO_CONTENT);
    }
    let got = app.get(&format!("/Groups/{group}")).await;
    assert_eq!(
        got.body["members"].as_array().map(Vec::len),
        Some(users.len())
    );
}

/// A deleted user leaves every group it was in: those groups' members
/// changed, so their versions (ETags) do too.
async fn deleting_a_member_gives_the_group_a_new_version(app: TestApp) {
    let user = app.create_user("leaving@example.com").await;
    let group = app.create_group("Left behind", &[&user]).await;
    let before = app.get(&format!("/Groups/{group}")).await;
    assert_eq!(before.body["members"].as_array().map(Vec::len), Some(1));
    let deleted = app.delete(&format!("/Users/{user}")).await;
    assert_eq!(deleted.status, reqwest::StatusCode::NO_CONTENT);
    let after = app.get(&format!("/Groups/{group}")).await;
    assert_eq!(
        after.body["members"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{:?}",
        after.body
    );
    assert_ne!(
        after.body["meta"]["version"], before.body["meta"]["version"],
        "a new version for new members"
    );
    assert_ne!(after.header("etag"), before.header("etag"));
}

/// Entra ID re-sends what it sent before; a write that changes nothing
/// keeps the version (ETag) and when the resource was last modified.
async fn writes_that_change_nothing_keep_the_version(app: TestApp) {
    let a = app.create_user("same-a@example.com").await;
    let b = app.create_user("same-b@example.com").await;
    let group = app.create_group("Unchanged", &[&a, &b]).await;
    let path = format!("/Groups/{group}");
    let before = app.get(&path).await;
    let same = patch_body(json!([
        {"op": "replace", "path": "members", "value": [{"value": b}, {"value": a}]}
    ]));
    assert_eq!(app.patch(&path, same).await.status, StatusCode::NO_CONTENT);
    let after = app.get(&path).await;
    assert_eq!(after.body["meta"], before.body["meta"], "the same members");
    assert_eq!(after.body["members"].as_array().map(Vec::len), Some(2));

    let user = app.get(&format!("/Users/{a}")).await;
    let mut put = user.body.clone();
    put.as_object_mut().expect("object").remove("meta");
    let replaced = app.put(&format!("/Users/{a}"), put).await;
    assert_eq!(replaced.status, StatusCode::OK, "{:?}", replaced.body);
    assert_eq!(
        replaced.body["meta"], user.body["meta"],
        "a PUT of what is stored"
    );

    // A PUT of the group as it is, members included.
    let mut put = before.body.clone();
    put.as_object_mut().expect("object").remove("meta");
    let replaced = app.put(&path, put).await;
    assert_eq!(replaced.status, StatusCode::OK, "{:?}", replaced.body);
    assert_eq!(
        replaced.body["meta"], before.body["meta"],
        "a group PUT of what is stored"
    );
    // An add and a remove of one user in one PATCH (Microsoft's validator
    // sends this): no member changes, so neither does the version.
    let c = app.create_user("same-c@example.com").await;
    let undone = patch_body(json!([
        {"op": "add", "path": "members", "value": [{"value": c}]},
        {"op": "remove", "path": format!("members[value eq \"{c}\"]")}
    ]));
    assert_eq!(
        app.patch(&path, undone).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&path).await.body["meta"],
        before.body["meta"],
        "an add undone by a remove"
    );

    let fewer = patch_body(json!([
        {"op": "replace", "path": "members", "value": [{"value": b}]}
    ]));
    assert_eq!(app.patch(&path, fewer).await.status, StatusCode::NO_CONTENT);
    let changed = app.get(&path).await;
    assert_ne!(
        changed.body["meta"]["version"],
        before.body["meta"]["version"]
    );
    let members: Vec<&str> = changed.body["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["value"].as_str())
        .collect();
    assert_eq!(members, [b.as_str()]);
}

/// Member ids are resource ids, which are case-exact (RFC 7643 §3.1), and
/// binary values are case-exact (RFC 7643 §2.3.6): a filter evaluated on
/// the document must agree with the one run in SQL.
async fn member_ids_and_certificates_compare_case_exactly(app: TestApp) {
    // Arrange
    let ada = app.create_user("ada@example.com").await;
    let group = app.create_group("Platform", &[&ada]).await;
    let shouted = ada.to_uppercase();
    assert_ne!(shouted, ada, "the id has letters");
    let mut cert = crate::helpers::user_body("cert@example.com");
    cert["x509Certificates"] = json!([{"value": "TUlJRGRq"}]);
    assert_eq!(app.post("/Users", cert).await.status, StatusCode::CREATED);
    let count = |query: String| {
        let app = &app;
        async move {
            let reply = app.get(&query).await;
            assert_eq!(reply.status, StatusCode::OK, "{query}: {:?}", reply.body);
            reply.body["totalResults"].clone()
        }
    };

    // Act and Assert: in SQL, and on the document.
    for (id, found) in [(&ada, 1), (&shouted, 0)] {
        for filter in [
            format!("members%20eq%20%22{id}%22"),
            format!("members.value%20eq%20%22{id}%22"),
            format!("members%5Bvalue%20eq%20%22{id}%22%5D"),
            format!(
                "displayName%20eq%20%22Platform%22%20and%20members%5Bvalue%20eq%20%22{id}%22%5D"
            ),
        ] {
            assert_eq!(
                count(format!("/Groups?filter={filter}")).await,
                found,
                "{filter}"
            );
        }
    }
    for (value, found) in [("TUlJRGRq", 1), ("tuljrgrq", 0)] {
        let filter = format!("x509Certificates.value%20eq%20%22{value}%22");
        assert_eq!(
            count(format!("/Users?filter={filter}")).await,
            found,
            "{filter}"
        );
    }
    // Removing a member by an id in another case removes no one.
    let path = format!("/Groups/{group}");
    let remove = patch_body(json!([
        {"op": "remove", "path": format!("members[value eq \"{shouted}\"]")}
    ]));
    assert_eq!(
        app.patch(&path, remove).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&path).await.body["members"][0]["value"], json!(ada));
    // The schema says so.
    let schemas = app.get("/Schemas").await;
    let sub = |attr: &str| {
        schemas.body["Resources"]
            .as_array()
            .expect("schemas")
            .iter()
            .flat_map(|s| s["attributes"].as_array().expect("attributes"))
            .find(|a| a["name"] == attr)
            .and_then(|a| a["subAttributes"].as_array())
            .and_then(|subs| subs.iter().find(|s| s["name"] == "value"))
            .map(|v| v["caseExact"].clone())
    };
    assert_eq!(sub("members"), Some(json!(true)));
    assert_eq!(sub("x509Certificates"), Some(json!(true)));
}
