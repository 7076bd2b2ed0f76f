//! Users: the lifecycle Entra ID drives, on both backends.

use chrono::Timelike;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, patch_body, user_body};
use crate::on_both_backends;

on_both_backends!(
    a_change_read_before_the_person_joined_keeps_them_joined,
    test_connection_filter_for_unknown_user_is_an_empty_list,
    created_user_is_returned_with_id_meta_and_location,
    user_is_found_by_filter_on_user_name_in_any_case,
    duplicate_user_name_in_another_case_is_409_uniqueness,
    string_false_deactivates_and_user_stays_findable,
    omitted_or_null_active_never_reenables_a_user,
    put_replaces_the_user,
    delete_answers_204_then_404,
    unknown_id_is_404_with_scim_error,
    user_without_email_is_rejected_before_queueing,
    malformed_json_is_400_invalid_syntax,
    bad_filter_is_400_invalid_filter,
    list_pages_are_stable_and_count_zero_gives_totals,
    users_are_found_by_any_email_and_by_work_email,
    users_are_found_by_creation_time_as_an_instant,
    concurrent_patches_of_one_user_lose_no_update,
    manager_ids_compare_case_exactly,
);

async fn test_connection_filter_for_unknown_user_is_an_empty_list(app: TestApp) {
    // Entra's Test Connection: form-encoded filter and no User-Agent.
    let response = app
        .client
        .get(format!(
            "{}/Users?filter=userName+eq+%22cf4d78e8-cc4f-4d5d-b8b9-183561c0104a%22",
            app.scim
        ))
        .bearer_auth(&app.token)
        .send()
        .await
        .expect("request");
    let reply = crate::helpers::read(response).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/scim+json"));
    assert_eq!(reply.body["totalResults"], 0);
    assert_eq!(reply.body["Resources"], json!([]));
    assert_eq!(
        reply.body["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:ListResponse"])
    );
}

async fn created_user_is_returned_with_id_meta_and_location(app: TestApp) {
    let reply = app.post("/Users", user_body("ada@example.com")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let id = reply.body["id"].as_str().expect("id");
    assert_eq!(reply.body["userName"], "ada@example.com");
    assert_eq!(reply.body["meta"]["resourceType"], "User");
    let location = format!("{}/Users/{id}", app.scim);
    assert_eq!(reply.body["meta"]["location"], location.as_str());
    assert_eq!(reply.header("location"), Some(location.as_str()));
    assert!(reply.header("etag").is_some());
    let got = app.get(&format!("/Users/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["name"]["givenName"], "Ada");
    assert_eq!(got.body["active"], true);
}

async fn user_is_found_by_filter_on_user_name_in_any_case(app: TestApp) {
    let id = app.create_user("Grace.Hopper@example.com").await;
    app.create_user("alan@example.com").await;
    let reply = app
        .get("/Users?filter=userName%20eq%20%22grace.hopper%40EXAMPLE.com%22")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["totalResults"], 1);
    assert_eq!(reply.body["Resources"][0]["id"], id.as_str());
    // Stored exactly as sent.
    assert_eq!(
        reply.body["Resources"][0]["userName"],
        "Grace.Hopper@example.com"
    );
    let by_external = app
        .get("/Users?filter=externalId%20eq%20%22ext-alan%40example.com%22")
        .await;
    assert_eq!(by_external.body["totalResults"], 1);
}

async fn duplicate_user_name_in_another_case_is_409_uniqueness(app: TestApp) {
    app.create_user("dup@example.com").await;
    let reply = app.post("/Users", user_body("DUP@Example.com")).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["scimType"], "uniqueness");
    assert_eq!(reply.body["status"], "409");
    assert!(
        reply.body["detail"]
            .as_str()
            .expect("detail")
            .contains("userName")
    );
}

async fn string_false_deactivates_and_user_stays_findable(app: TestApp) {
    let id = app.create_user("leaver@example.com").await;
    let reply = app
        .patch(
            &format!("/Users/{id}"),
            patch_body(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
    let got = app.get(&format!("/Users/{id}")).await;
    assert_eq!(got.body["active"], false);
    let found = app
        .get("/Users?filter=userName%20eq%20%22leaver%40example.com%22")
        .await;
    assert_eq!(found.body["totalResults"], 1);
    assert_eq!(found.body["Resources"][0]["active"], false);
    let back = app
        .patch(
            &format!("/Users/{id}"),
            patch_body(json!([{"op": "Replace", "path": "active", "value": "True"}])),
        )
        .await;
    assert!(back.status.is_success());
    assert_eq!(app.get(&format!("/Users/{id}")).await.body["active"], true);
}

async fn omitted_or_null_active_never_reenables_a_user(app: TestApp) {
    let id = app.create_user("kept-out@example.com").await;
    let path = format!("/Users/{id}");
    // Whether the user is found with `active eq <state>`: the state that
    // decides sign-in. A filter answered in SQL and one evaluated on the
    // representation (`sw` is not pushed down) agree on it, and GET shows
    // it unless it is unassigned.
    let is = |state: bool| {
        let app = &app;
        let path = path.clone();
        async move {
            let found = app
                .get(&format!(
                    "/Users?filter=userName%20eq%20%22kept-out%40example.com%22%20and%20active%20eq%20{state}"
                ))
                .await;
            let in_sql = found.body["totalResults"] == 1;
            let found = app
                .get(&format!(
                    "/Users?filter=userName%20sw%20%22kept-out%22%20and%20active%20eq%20{state}"
                ))
                .await;
            let in_document = found.body["totalResults"] == 1;
            assert_eq!(
                in_sql, in_document,
                "active eq {state}: SQL and the document disagree"
            );
            let shown = app.get(&path).await.body["active"].clone();
            assert!(
                shown.is_null() || (shown == state) == in_sql,
                "GET shows active {shown} where SQL finds active eq {state}: {in_sql}"
            );
            in_sql
        }
    };
    assert!(is(true).await, "a new user is active");
    let off = app
        .patch(
            &path,
            patch_body(json!([{"op": "replace", "path": "active", "value": false}])),
        )
        .await;
    assert!(off.status.is_success(), "{:?}", off.body);
    assert!(is(false).await);

    let mut omitted = user_body("kept-out@example.com");
    omitted.as_object_mut().expect("object").remove("active");
    let mut null = user_body("kept-out@example.com");
    null["active"] = json!(null);
    for (what, body) in [("omitted", omitted), ("null", null)] {
        let reply = app.put(&path, body).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "PUT, active {what}: {:?}",
            reply.body
        );
        assert_ne!(reply.body["active"], true, "PUT answer, active {what}");
        assert!(
            is(false).await,
            "still deactivated after a PUT with active {what}"
        );
        assert!(!is(true).await, "not active after a PUT with active {what}");
    }
    let removed = app
        .patch(
            &path,
            patch_body(json!([{"op": "remove", "path": "active"}])),
        )
        .await;
    assert!(removed.status.is_success(), "{:?}", removed.body);
    assert!(
        is(false).await,
        "still deactivated after PATCH remove active"
    );

    // An explicit value still decides, and an active user stays active.
    let on = app
        .patch(
            &path,
            patch_body(json!([{"op": "replace", "path": "active", "value": "True"}])),
        )
        .await;
    assert!(on.status.is_success(), "{:?}", on.body);
    assert!(is(true).await);
    let mut omitted = user_body("kept-out@example.com");
    omitted.as_object_mut().expect("object").remove("active");
    app.put(&path, omitted).await;
    assert!(
        is(true).await,
        "an omitted active does not deactivate either"
    );
    assert!(!is(false).await);
}

async fn put_replaces_the_user(app: TestApp) {
    let created = app.post("/Users", user_body("put@example.com")).await;
    let id = created.body["id"].as_str().expect("id");
    let mut body = user_body("put@example.com");
    body["name"] = json!({"givenName": "Put", "familyName": "Replaced"});
    body.as_object_mut().expect("object").remove("externalId");
    let reply = app.put(&format!("/Users/{id}"), body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let got = app.get(&format!("/Users/{id}")).await;
    assert_eq!(got.body["name"]["familyName"], "Replaced");
    assert!(
        got.body.get("externalId").is_none(),
        "PUT removes what it omits"
    );
    assert_ne!(got.body["meta"]["version"], created.body["meta"]["version"]);
}

async fn delete_answers_204_then_404(app: TestApp) {
    let id = app.create_user("gone@example.com").await;
    assert_eq!(
        app.delete(&format!("/Users/{id}")).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/Users/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    let again = app.delete(&format!("/Users/{id}")).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.body["status"], "404");
}

async fn unknown_id_is_404_with_scim_error(app: TestApp) {
    for path in ["/Users/nope", "/Groups/nope"] {
        let reply = app.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(
            reply.body["schemas"],
            json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
        );
    }
    let patch = app
        .patch(
            "/Users/nope",
            patch_body(json!([{"op": "replace", "path": "active", "value": false}])),
        )
        .await;
    assert_eq!(patch.status, StatusCode::NOT_FOUND);
}

async fn user_without_email_is_rejected_before_queueing(app: TestApp) {
    let reply = app
        .post(
            "/Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "no-email-here",
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["scimType"], "invalidValue");
    assert!(
        reply.body["detail"]
            .as_str()
            .expect("detail")
            .contains("email")
    );
}

async fn malformed_json_is_400_invalid_syntax(app: TestApp) {
    let response = app
        .client
        .post(format!("{}/Users", app.scim))
        .bearer_auth(&app.token)
        .header("content-type", "application/scim+json")
        .body("{\"userName\": ")
        .send()
        .await
        .expect("request");
    let reply = crate::helpers::read(response).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["scimType"], "invalidSyntax");
    let wrong_type = app
        .post(
            "/Users",
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": 42}),
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
}

async fn bad_filter_is_400_invalid_filter(app: TestApp) {
    for filter in [
        "userName%20eq",
        "userName%20equals%20%22x%22",
        "(userName%20eq%20%22x%22",
    ] {
        let reply = app.get(&format!("/Users?filter={filter}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{filter}");
        assert_eq!(reply.body["scimType"], "invalidFilter", "{filter}");
    }
}

async fn list_pages_are_stable_and_count_zero_gives_totals(app: TestApp) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create_user(&format!("page{i}@example.com")).await);
    }
    let first = app.get("/Users?startIndex=1&count=2").await;
    let second = app.get("/Users?startIndex=3&count=2").await;
    let third = app.get("/Users?startIndex=5&count=2").await;
    assert_eq!(first.body["totalResults"], 5);
    assert_eq!(first.body["itemsPerPage"], 2);
    assert_eq!(third.body["itemsPerPage"], 1);
    let seen: Vec<String> = [&first, &second, &third]
        .iter()
        .flat_map(|r| r.body["Resources"].as_array().cloned().unwrap_or_default())
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(seen, ids, "pages in creation order, no gaps or repeats");
    let totals = app.get("/Users?count=0").await;
    assert_eq!(totals.body["totalResults"], 5);
    assert_eq!(totals.body["Resources"], json!([]));
}

async fn users_are_found_by_any_email_and_by_work_email(app: TestApp) {
    let mut body = user_body("Matched.Person@example.com");
    body["emails"] = json!([
        {"type": "work", "value": "Matched.Person@example.com", "primary": true},
        {"type": "home", "value": "home.person@example.org"}
    ]);
    let created = app.post("/Users", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id");
    app.create_user("someone.else@example.com").await;
    let any = app
        .get("/Users?filter=emails.value%20eq%20%22HOME.person%40example.org%22")
        .await;
    assert_eq!(any.body["totalResults"], 1);
    assert_eq!(any.body["Resources"][0]["id"], id);
    let work = app
        .get("/Users?filter=emails%5Btype%20eq%20%22work%22%5D.value%20eq%20%22matched.person%40example.com%22")
        .await;
    assert_eq!(work.status, StatusCode::OK, "{:?}", work.body);
    assert_eq!(work.body["totalResults"], 1);
    let wrong_type = app
        .get("/Users?filter=emails%5Btype%20eq%20%22work%22%5D.value%20eq%20%22home.person%40example.org%22")
        .await;
    assert_eq!(
        wrong_type.body["totalResults"], 0,
        "the home address is not a work address"
    );
    // After a PATCH replaces the work address, the old one no longer matches.
    app.patch(
        &format!("/Users/{id}"),
        patch_body(json!([{"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "new.person@example.com"}])),
    )
    .await;
    let old = app
        .get("/Users?filter=emails.value%20eq%20%22matched.person%40example.com%22")
        .await;
    assert_eq!(old.body["totalResults"], 0);
    let new = app
        .get("/Users?filter=emails.value%20eq%20%22new.person%40example.com%22")
        .await;
    assert_eq!(new.body["totalResults"], 1);
}

/// The number of users a filter finds, asserting 200.
async fn count_found(app: &TestApp, filter: &str) -> u64 {
    let encoded: String = url::form_urlencoded::byte_serialize(filter.as_bytes()).collect();
    let reply = app.get(&format!("/Users?filter={encoded}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{filter}: {:?}", reply.body);
    reply.body["totalResults"].as_u64().unwrap_or_default()
}

async fn users_are_found_by_creation_time_as_an_instant(app: TestApp) {
    // RFC 7644 §3.4.2.2: dateTimes order chronologically. meta.created is
    // rendered with milliseconds and "Z"; clients write whole seconds and
    // other offsets.
    let id = app.create_user("dated@example.com").await;
    let user = app.get(&format!("/Users/{id}")).await;
    let rendered = user.body["meta"]["created"].as_str().expect("created");
    let created = chrono::DateTime::parse_from_rfc3339(rendered).expect("RFC 3339");
    let second = created.with_nanosecond(0).expect("whole second");
    let next = second + chrono::Duration::seconds(1);
    let east = chrono::FixedOffset::east_opt(3600).expect("+01:00");
    let west = chrono::FixedOffset::west_opt(5 * 3600).expect("-05:00");
    let z = |t: chrono::DateTime<chrono::FixedOffset>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let at = |t: chrono::DateTime<chrono::FixedOffset>, tz| {
        t.with_timezone(&tz)
            .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
            .to_string()
    };
    for (filter, found) in [
        (format!("meta.created ge \"{}\"", z(second)), 1),
        (format!("meta.created lt \"{}\"", z(second)), 0),
        (format!("meta.created lt \"{}\"", at(next, west)), 1),
        (format!("meta.created gt \"{}\"", at(next, west)), 0),
        (format!("meta.created eq \"{}\"", at(created, east)), 1),
        (format!("meta.created ne \"{}\"", at(created, east)), 0),
        // userName goes to SQL, the rest is evaluated on what it finds.
        (
            format!(
                "userName eq \"dated@example.com\" and meta.created ge \"{}\"",
                at(second, east)
            ),
            1,
        ),
        (
            format!(
                "userName eq \"dated@example.com\" and meta.created lt \"{}\"",
                at(second, east)
            ),
            0,
        ),
    ] {
        assert_eq!(count_found(&app, &filter).await, found, "{filter}");
    }
    for filter in [
        "meta.created ge \"2026\"",
        "meta.lastModified lt \"yesterday\"",
        "x509Certificates.value gt \"TUlJQ\"",
    ] {
        let encoded: String = url::form_urlencoded::byte_serialize(filter.as_bytes()).collect();
        let reply = app.get(&format!("/Users?filter={encoded}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{filter}");
        assert_eq!(reply.body["scimType"], "invalidFilter", "{filter}");
    }
}

async fn concurrent_patches_of_one_user_lose_no_update(app: TestApp) {
    let id = app.create_user("raced@example.com").await;
    let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let paths: Vec<String> = [
        "displayName",
        "nickName",
        "title",
        "userType",
        "locale",
        "preferredLanguage",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .chain(
        [
            "employeeNumber",
            "costCenter",
            "organization",
            "division",
            "department",
        ]
        .iter()
        .map(|p| format!("{ent}:{p}")),
    )
    .collect();
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let (app, path, id) = (app.clone(), path.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            app.patch(
                &format!("/Users/{id}"),
                patch_body(json!([{"op": "Replace", "path": path, "value": format!("v{i}")}])),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    let got = app.get(&format!("/Users/{id}")).await.body;
    for (i, path) in paths.iter().enumerate() {
        let value = match path.strip_prefix(&format!("{ent}:")) {
            Some(attr) => &got[ent][attr],
            None => &got[path.as_str()],
        };
        assert_eq!(value, &json!(format!("v{i}")), "{path} kept its update");
    }
}

/// The person accepts their invitation while a change to them, which read
/// them just before, is being written: they stay joined.
async fn a_change_read_before_the_person_joined_keeps_them_joined(app: TestApp) {
    use scimsync::store::{self, users};
    let id = app.create_user("joiner@example.com").await;
    let org = app.org_id().await;
    let joined = app
        .store
        .run(move |c| {
            let read = users::find(c, &org, &id)?.expect("user");
            users::mark_joined(c, &org, &id, store::now())?;
            let changed = users::UserRow {
                display_name: Some("Changed".into()),
                version: read.version + 1,
                ..read.clone()
            };
            assert!(
                users::update(c, &changed, read.version)?,
                "the version still matches"
            );
            Ok::<_, store::Error>(users::find(c, &org, &id)?.expect("user").joined_at)
        })
        .await
        .expect("store");
    assert!(joined.is_some(), "the change did not erase the join");
}

/// A manager is named by a user's id, which is case-exact (RFC 7643
/// §3.1): a filter with the id in other letters finds no report.
async fn manager_ids_compare_case_exactly(app: TestApp) {
    let boss = app.create_user("boss@example.com").await;
    let shouted = boss.to_uppercase();
    assert_ne!(shouted, boss, "the id has letters");
    let mut report = user_body("report@example.com");
    report["schemas"]
        .as_array_mut()
        .expect("schemas")
        .push(json!(ENTERPRISE));
    report[ENTERPRISE] = json!({"manager": {"value": boss}});
    let created = app.post("/Users", report).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    for (id, found) in [(&boss, 1), (&shouted, 0)] {
        let filter = format!("{ENTERPRISE}:manager.value eq \"{id}\"");
        let reply = app
            .get(&format!(
                "/Users?filter={}",
                url::form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
            ))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{filter}: {:?}", reply.body);
        assert_eq!(reply.body["totalResults"], found, "{filter}");
    }
}

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
