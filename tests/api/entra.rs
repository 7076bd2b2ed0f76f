//! Microsoft Entra ID's documented request sequences, replayed against the
//! running service. Request bodies are Microsoft's own, as the team's Entra
//! ID reference (docs/entra.md) quotes them; each test names its source. Sources:
//!
//! * MS-TUT: https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
//! * MS-COMPAT: https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
//! * MS-QUAR: https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-quarantine-status
//! * MS-LOGS: https://learn.microsoft.com/entra/identity/monitoring-health/howto-analyze-provisioning-logs
//! * VAL-CAPTURE: captures of scimvalidator.microsoft.com runs (pranems/SCIMServer docs)
//! * FIELD: bug reports quoting requests Entra sent (named at each test)

use std::collections::BTreeSet;
use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::USER_AGENT;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, patch_body, read};
use crate::on_both_backends;

on_both_backends!(
    test_connection_random_guid_filter_without_user_agent_is_empty_list,
    test_connection_with_bad_token_is_401,
    create_flow_finds_no_match_then_creates_tutorial_user,
    example_2_body_with_nulls_and_misspelled_enterprise_uri_is_created,
    duplicate_user_name_is_409_uniqueness,
    default_replace_of_work_email_and_family_name_updates_both,
    default_replace_of_user_name_updates_it,
    default_replace_of_many_attributes_by_path_updates_each,
    aad_opt_pathless_replace_with_dotted_and_urn_keys_updates_user,
    pathless_replace_of_user_name_updates_it,
    add_nick_name_sets_it_in_both_dialects,
    add_work_email_on_user_without_one_creates_it,
    replace_work_email_on_user_without_one_creates_it,
    mixed_verbs_set_work_address_and_add_department,
    add_department_by_urn_path_sets_enterprise_department,
    manager_added_as_bare_id_and_replaced_as_value_object,
    manager_added_as_tutorial_array_with_ref,
    manager_cleared_by_replace_with_empty_value_object,
    manager_cleared_by_replace_with_empty_string,
    manager_cleared_by_remove_on_urn_path,
    manager_cleared_by_remove_with_value_filter,
    manager_kept_when_its_ref_is_removed,
    manager_ref_sent_in_a_patch_is_derived_not_stored,
    filtered_manager_replace_that_matches_nothing_is_400_no_target,
    string_false_with_capital_replace_disables_and_user_stays_findable,
    boolean_false_with_lower_case_replace_disables_and_user_stays_findable,
    string_true_re_enables_disabled_user,
    delete_user_is_204_then_get_and_delete_are_404,
    group_lookup_by_display_name_excluding_members_is_empty_list,
    group_create_with_adscim_schema_uri_and_meta_is_201,
    group_get_by_id_excluding_members_has_no_members,
    add_several_members_in_one_op_is_204,
    default_remove_with_value_list_removes_only_listed_members,
    default_remove_with_value_list_finds_emails_in_any_case_and_member_ids_exactly,
    aad_opt_remove_with_member_filter_removes_only_that_member,
    group_rename_by_path_updates_display_name,
    group_rename_by_pathless_replace_updates_display_name,
    replace_members_with_list_sets_exactly_those_members,
    add_and_remove_of_same_member_in_one_request_leaves_it_out,
    group_filter_by_display_name_in_other_case_finds_it,
    duplicate_group_display_name_is_409_uniqueness,
    delete_group_is_204_then_get_and_delete_are_404,
    concurrent_member_adds_and_removes_leave_exact_member_set,
);

const CORE_USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const CORE_GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const MANAGER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager";
const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// The userName of the MS-TUT "Create User" example.
const TUTORIAL_USER_NAME: &str = "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee";
/// The work email of the MS-TUT "Create User" example.
const TUTORIAL_EMAIL: &str = "Test_User_11bb11bb-cc22-dd33-ee44-55ff55ff55ff@testuser.com";

// --- helpers -----------------------------------------------------------------

/// MS-TUT "Create User" request, verbatim.
fn tutorial_user() -> Value {
    json!({
        "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
        "active": true,
        "emails": [{
            "primary": true,
            "type": "work",
            "value": "Test_User_11bb11bb-cc22-dd33-ee44-55ff55ff55ff@testuser.com"
        }],
        "meta": {
            "resourceType": "User"
        },
        "name": {
            "formatted": "givenName familyName",
            "familyName": "familyName",
            "givenName": "givenName"
        },
        "roles": []
    })
}

/// POSTs the MS-TUT user and returns its id.
async fn create_tutorial_user(app: &TestApp) -> String {
    let reply = app.post("/Users", tutorial_user()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["id"].as_str().expect("id").to_owned()
}

/// Creates a user with no `emails` (Entra sends none for a user without
/// `mail`); the userName is an address, so the service can still invite it.
async fn create_user_without_emails(app: &TestApp, user_name: &str) -> String {
    let reply = app
        .post(
            "/Users",
            json!({"schemas": [CORE_USER], "userName": user_name, "active": true}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert!(reply.body.get("emails").is_none(), "{:?}", reply.body);
    reply.body["id"].as_str().expect("id").to_owned()
}

/// MS-TUT "Create Group" request, verbatim but for the displayName.
fn tutorial_group(display_name: &str) -> Value {
    json!({
        "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:Group",
            "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
        "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
        "displayName": display_name,
        "meta": {"resourceType": "Group"}
    })
}

async fn create_tutorial_group(app: &TestApp, display_name: &str) -> String {
    let reply = app.post("/Groups", tutorial_group(display_name)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["id"].as_str().expect("id").to_owned()
}

/// `attr eq "value"` form-encoded as Entra sends it: `attr+eq+%22value%22`.
fn eq_filter(attr: &str, value: &str) -> String {
    let filter = format!("{attr} eq \"{value}\"");
    url::form_urlencoded::byte_serialize(filter.as_bytes()).collect()
}

fn assert_scim_json(reply: &Reply) {
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/scim+json"),
        "Content-Type is {content_type:?}, want application/scim+json"
    );
}

/// Asserts an empty ListResponse, as Entra expects for "no match".
fn assert_empty_list(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_scim_json(reply);
    assert_eq!(reply.body["schemas"], json!([LIST_RESPONSE]));
    assert_eq!(reply.body["totalResults"], 0);
    assert_eq!(reply.body["Resources"], json!([]));
    assert_eq!(reply.body["startIndex"], 1);
}

/// Asserts a SCIM Error body with `status` as a string.
fn assert_scim_error(reply: &Reply, status: StatusCode, scim_type: Option<&str>) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_scim_json(reply);
    assert_eq!(reply.body["schemas"], json!([ERROR]));
    assert_eq!(reply.body["status"], status.as_str());
    if let Some(t) = scim_type {
        assert_eq!(reply.body["scimType"], t, "{:?}", reply.body);
    }
}

/// The users a form-encoded `userName eq` filter finds.
async fn find_users(app: &TestApp, user_name: &str) -> Reply {
    let reply = app
        .get(&format!(
            "/Users?filter={}",
            eq_filter("userName", user_name)
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_scim_json(&reply);
    assert_eq!(reply.body["schemas"], json!([LIST_RESPONSE]));
    reply
}

async fn get_user(app: &TestApp, id: &str) -> Value {
    let reply = app.get(&format!("/Users/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_scim_json(&reply);
    reply.body
}

/// PATCHes a user; Entra accepts 200 with the user or 204 [MS-TUT: "It
/// isn't necessary to include the entire resource in the PATCH response"].
async fn patch_user(app: &TestApp, id: &str, ops: Value) {
    let reply = app.patch(&format!("/Users/{id}"), patch_body(ops)).await;
    match reply.status {
        StatusCode::OK => {
            assert_scim_json(&reply);
            assert_eq!(reply.body["id"], id);
        }
        StatusCode::NO_CONTENT => {}
        other => panic!("PATCH /Users/{id} answered {other}: {:?}", reply.body),
    }
}

/// PATCHes a group; MS-TUT: "Update to the group PATCH request should
/// yield an HTTP 204 No Content".
async fn patch_group(app: &TestApp, id: &str, ops: Value) {
    let reply = app.patch(&format!("/Groups/{id}"), patch_body(ops)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.body);
    assert_eq!(reply.body, Value::Null, "a group PATCH has no body");
}

/// The enterprise extension object of a user, or null.
fn enterprise(user: &Value) -> &Value {
    &user[ENTERPRISE]
}

/// The manager of a user as rendered, if any.
fn manager(user: &Value) -> Option<&Value> {
    user.get(ENTERPRISE).and_then(|e| e.get("manager"))
}

/// Asserts the manager reads back as the RFC 7643 §4.3 complex object
/// `{"value": id}` that Entra parses (a missing object surfaces as
/// ServiceIncompatible, Budibase/budibase#15369); a `$ref`, if the service
/// adds one, must point at that user.
fn assert_manager(app: &TestApp, user: &Value, id: &str) {
    let Some(manager) = manager(user) else {
        panic!("no manager on {user:?}");
    };
    assert!(manager.is_object(), "manager is {manager:?}");
    assert_eq!(manager["value"], id, "{manager:?}");
    if let Some(reference) = manager.get("$ref") {
        assert_eq!(reference, &json!(format!("{}/Users/{id}", app.scim)));
    }
    let extra: Vec<&String> = manager
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .filter(|k| !["value", "$ref", "displayName"].contains(&k.as_str()))
        .collect();
    assert!(extra.is_empty(), "unexpected manager members {extra:?}");
}

/// The member ids of a group, read by GET.
async fn member_ids(app: &TestApp, group: &str) -> BTreeSet<String> {
    let reply = app.get(&format!("/Groups/{group}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["value"].as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn set_of(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

async fn create_users(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(app.create_user(&format!("{prefix}{i}@example.com")).await);
    }
    ids
}

// --- 1. Test Connection --------------------------------------------------------

async fn test_connection_random_guid_filter_without_user_agent_is_empty_list(app: TestApp) {
    // MS-TUT "Test Connection": "queries the SCIM endpoint for a user that
    // doesn't exist, using a random GUID as the matching property ... The
    // expected correct response is HTTP 200 OK with an empty SCIM
    // ListResponse message." A 404 here quarantines the job [MS-QUAR].
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    // On the wire the filter is form-encoded (AzureAD/SCIMReferenceCode#63)
    // and Entra sends no User-Agent (kortix-ai/suna PR #7297).
    let guid = uuid::Uuid::new_v4();
    let request = app
        .client
        .get(format!(
            "{}/Users?filter=userName+eq+%22{guid}%22",
            app.scim
        ))
        .bearer_auth(&app.token)
        .build()
        .expect("request builds");
    assert!(
        request.headers().get(USER_AGENT).is_none(),
        "the request must carry no User-Agent, as Entra's does not"
    );
    let reply = read(app.client.execute(request).await.expect("reaches server")).await;
    assert_empty_list(&reply);

    // MS-TUT "General": Entra "makes requests to fetch a random user and
    // group to ensure that the endpoint and the credentials are valid".
    let group = uuid::Uuid::new_v4();
    let reply = app
        .get(&format!(
            "/Groups?excludedAttributes=members&filter=displayName+eq+%22{group}%22"
        ))
        .await;
    assert_empty_list(&reply);
}

async fn test_connection_with_bad_token_is_401(app: TestApp) {
    // MS-QUAR: 401/403 on Test Connection is the "Invalid credentials"
    // quarantine reason; the status is what Entra reads.
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-quarantine-status
    let path = format!("/Users?filter=userName+eq+%22{}%22", uuid::Uuid::new_v4());
    let wrong = app
        .call_with_token(
            reqwest::Method::GET,
            &path,
            None,
            Some("not-the-secret-token"),
        )
        .await;
    assert_scim_error(&wrong, StatusCode::UNAUTHORIZED, None);
    assert!(wrong.header("www-authenticate").is_some());
    let missing = app
        .call_with_token(reqwest::Method::GET, &path, None, None)
        .await;
    assert_scim_error(&missing, StatusCode::UNAUTHORIZED, None);
}

// --- 2. User create flow ---------------------------------------------------------

async fn create_flow_finds_no_match_then_creates_tutorial_user(app: TestApp) {
    // MS-TUT "Get User by query - Zero results", then "Create User" (request
    // verbatim, with its client meta, empty roles and enterprise URI).
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    assert_empty_list(&find_users(&app, TUTORIAL_USER_NAME).await);

    let created = app.post("/Users", tutorial_user()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_scim_json(&created);
    let body = &created.body;
    let id = body["id"].as_str().expect("id is a string");
    assert!(!id.is_empty());
    assert!(
        body["schemas"]
            .as_array()
            .is_some_and(|s| s.contains(&json!(CORE_USER))),
        "{body:?}"
    );
    assert_eq!(body["meta"]["resourceType"], "User");
    assert!(body["meta"]["created"].is_string(), "{body:?}");
    assert!(body["meta"]["lastModified"].is_string(), "{body:?}");
    let location = format!("{}/Users/{id}", app.scim);
    assert_eq!(body["meta"]["location"], location.as_str());
    assert_eq!(created.header("location"), Some(location.as_str()));
    assert_eq!(body["userName"], TUTORIAL_USER_NAME);
    assert_eq!(body["externalId"], "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef");
    assert_eq!(body["active"], true);
    assert_eq!(
        body["emails"],
        json!([{"primary": true, "type": "work", "value": TUTORIAL_EMAIL}])
    );
    assert_eq!(
        body["name"],
        json!({"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"})
    );

    // MS-TUT "Get User by query": now one result, with the id Entra caches.
    let found = find_users(&app, TUTORIAL_USER_NAME).await;
    assert_eq!(found.body["totalResults"], 1);
    assert_eq!(found.body["Resources"][0]["id"], id);
    let got = get_user(&app, id).await;
    assert_eq!(got["userName"], TUTORIAL_USER_NAME);
    assert_eq!(got["emails"], body["emails"]);
}

async fn example_2_body_with_nulls_and_misspelled_enterprise_uri_is_created(app: TestApp) {
    // MS-TUT (older version) "Example 2. Provision a user", verbatim: explicit
    // nulls and the typo'd URI "...enterprise:2.0User".
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let reply = app
        .post(
            "/Users",
            json!({
              "schemas":
              [
                "urn:ietf:params:scim:schemas:core:2.0:User",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0User"],
              "externalId":"jyoung",
              "userName":"jyoung",
              "active":true,
              "addresses":null,
              "displayName":"Joy Young",
              "emails": [
                {
                  "type":"work",
                  "value":"jyoung@Contoso.com",
                  "primary":true}],
              "meta": {
                "resourceType":"User"},
               "name":{
                "familyName":"Young",
                "givenName":"Joy"},
              "phoneNumbers":null,
              "preferredLanguage":null,
              "title":null,
              "department":null,
              "manager":null}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_scim_json(&reply);
    let id = reply.body["id"].as_str().expect("id");
    let got = get_user(&app, id).await;
    assert_eq!(got["userName"], "jyoung");
    assert_eq!(got["externalId"], "jyoung");
    assert_eq!(got["displayName"], "Joy Young");
    assert_eq!(got["active"], true);
    assert_eq!(
        got["emails"],
        json!([{"type": "work", "value": "jyoung@Contoso.com", "primary": true}])
    );
    assert_eq!(
        got["name"],
        json!({"familyName": "Young", "givenName": "Joy"})
    );
    // A null is "unassigned" (RFC 7643 §2.5): nothing to store.
    for key in [
        "addresses",
        "phoneNumbers",
        "preferredLanguage",
        "title",
        "department",
        "manager",
    ] {
        assert!(got.get(key).is_none_or(Value::is_null), "{key}: {got:?}");
    }
    assert!(manager(&got).is_none(), "{got:?}");
}

async fn duplicate_user_name_is_409_uniqueness(app: TestApp) {
    // MS-TUT "Create User" then the same again: 409, which Entra logs as
    // EntryConflict [MS-LOGS] and retries next cycle.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    // https://learn.microsoft.com/entra/identity/monitoring-health/howto-analyze-provisioning-logs
    let id = create_tutorial_user(&app).await;
    let again = app.post("/Users", tutorial_user()).await;
    assert_scim_error(&again, StatusCode::CONFLICT, Some("uniqueness"));
    let found = find_users(&app, TUTORIAL_USER_NAME).await;
    assert_eq!(found.body["totalResults"], 1);
    assert_eq!(found.body["Resources"][0]["id"], id.as_str());
}

// --- 3. PATCH, both dialects -----------------------------------------------------

async fn default_replace_of_work_email_and_family_name_updates_both(app: TestApp) {
    // MS-TUT "Update User [Multi-valued properties]", verbatim.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([
            {"op":"Replace","path":"emails[type eq \"work\"].value","value":"updatedEmail@microsoft.com"},
            {"op":"Replace","path":"name.familyName","value":"updatedFamilyName"}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert_eq!(
        user["emails"],
        json!([{"primary": true, "type": "work", "value": "updatedEmail@microsoft.com"}])
    );
    assert_eq!(
        user["name"],
        json!({"formatted": "givenName familyName", "familyName": "updatedFamilyName", "givenName": "givenName"})
    );
}

async fn default_replace_of_user_name_updates_it(app: TestApp) {
    // MS-TUT "Update User [Single-valued properties]", verbatim.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"Replace","path":"userName","value":"5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com"}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert_eq!(
        user["userName"],
        "5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com"
    );
    let found = find_users(&app, "5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com").await;
    assert_eq!(found.body["totalResults"], 1);
    assert_eq!(found.body["Resources"][0]["id"], id.as_str());
    assert_empty_list(&find_users(&app, TUTORIAL_USER_NAME).await);
}

async fn default_replace_of_many_attributes_by_path_updates_each(app: TestApp) {
    // MS-COMPAT "Replace multiple attributes — without flag (default)", verbatim.
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([
            {"op":"Replace","path":"displayName","value":"Pvlo"},
            {"op":"Replace","path":"emails[type eq \"work\"].value","value":"TestBcwqnm@test.microsoft.com"},
            {"op":"Replace","path":"name.givenName","value":"Gtfd"},
            {"op":"Replace","path":"name.familyName","value":"Pkqf"},
            {"op":"Replace","path":"externalId","value":"Eqpj"},
            {"op":"Replace","path":"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber","value":"Eqpj"}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert_eq!(user["displayName"], "Pvlo");
    assert_eq!(
        user["emails"],
        json!([{"primary": true, "type": "work", "value": "TestBcwqnm@test.microsoft.com"}])
    );
    assert_eq!(
        user["name"],
        json!({"formatted": "givenName familyName", "familyName": "Pkqf", "givenName": "Gtfd"})
    );
    assert_eq!(user["externalId"], "Eqpj");
    assert_eq!(enterprise(&user), &json!({"employeeNumber": "Eqpj"}));
    assert!(
        user["schemas"]
            .as_array()
            .is_some_and(|s| s.contains(&json!(ENTERPRISE))),
        "{user:?}"
    );
}

async fn aad_opt_pathless_replace_with_dotted_and_urn_keys_updates_user(app: TestApp) {
    // MS-COMPAT "Replace multiple attributes — with aadOptscim062020", verbatim:
    // the keys of a path-less value are attribute paths, not nested JSON.
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([
            {"op":"replace","path":"emails[type eq \"work\"].value","value":"TestMhvaes@test.microsoft.com"},
            {"op":"replace","value":{
                "displayName":"Bjfe",
                "name.givenName":"Kkom",
                "name.familyName":"Unua",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber":"Aklq"}}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert_eq!(user["displayName"], "Bjfe");
    assert_eq!(
        user["emails"],
        json!([{"primary": true, "type": "work", "value": "TestMhvaes@test.microsoft.com"}])
    );
    assert_eq!(
        user["name"],
        json!({"formatted": "givenName familyName", "familyName": "Unua", "givenName": "Kkom"})
    );
    assert_eq!(enterprise(&user), &json!({"employeeNumber": "Aklq"}));
    assert!(user.get("name.givenName").is_none(), "{user:?}");
    assert!(user.get("name.familyName").is_none(), "{user:?}");
    assert!(
        user.get(format!("{ENTERPRISE}:employeeNumber")).is_none(),
        "{user:?}"
    );
}

async fn pathless_replace_of_user_name_updates_it(app: TestApp) {
    // VAL-CAPTURE "Update User userName": the validator's path-less form
    // (docs/entra.md §2.4).
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"replace","value":{"userName":"emilio@hermann.uk"}}]),
    )
    .await;
    assert_eq!(get_user(&app, &id).await["userName"], "emilio@hermann.uk");
    let found = find_users(&app, "emilio@hermann.uk").await;
    assert_eq!(found.body["totalResults"], 1);
}

async fn add_nick_name_sets_it_in_both_dialects(app: TestApp) {
    // MS-COMPAT "Add a single-value string attribute": `Add` without the
    // flag, `add` with aadOptscim062020, both verbatim.
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
    let default = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &default,
        json!([{"op":"Add","path":"nickName","value":"Babs"}]),
    )
    .await;
    assert_eq!(get_user(&app, &default).await["nickName"], "Babs");

    let flagged = app.create_user("babs@example.com").await;
    patch_user(
        &app,
        &flagged,
        json!([{"op":"add","path":"nickName","value":"Babs"}]),
    )
    .await;
    assert_eq!(get_user(&app, &flagged).await["nickName"], "Babs");
}

async fn add_work_email_on_user_without_one_creates_it(app: TestApp) {
    // FIELD Metatavu/keycloak-scim-server#35, Captain-P-Goldfish/SCIM-SDK#416:
    // Entra sends `Add` on emails[type eq "work"].value for a user that has
    // no work email and expects the element created (docs/entra.md §2.4).
    let id = create_user_without_emails(&app, "Adele.Vance@contoso.com").await;
    patch_user(
        &app,
        &id,
        json!([{"op":"Add","path":"emails[type eq \"work\"].value","value":"AdeleV@Contoso.onmicrosoft.com"}]),
    )
    .await;
    assert_eq!(
        get_user(&app, &id).await["emails"],
        json!([{"type": "work", "value": "AdeleV@Contoso.onmicrosoft.com"}])
    );
    // MS-TUT: "The 'type' subattribute values of multivalued complex
    // attributes must be unique": the next update changes that element.
    patch_user(
        &app,
        &id,
        json!([{"op":"Replace","path":"emails[type eq \"work\"].value","value":"AdeleV2@Contoso.onmicrosoft.com"}]),
    )
    .await;
    assert_eq!(
        get_user(&app, &id).await["emails"],
        json!([{"type": "work", "value": "AdeleV2@Contoso.onmicrosoft.com"}])
    );
}

async fn replace_work_email_on_user_without_one_creates_it(app: TestApp) {
    // FIELD Captain-P-Goldfish/scim-for-keycloak#73, SCIM-SDK#668/#680: the
    // same with `Replace`; a strict server's 400 noTarget made the sync fail.
    let id = create_user_without_emails(&app, "Adele.Vance@contoso.com").await;
    patch_user(
        &app,
        &id,
        json!([{"op":"Replace","path":"emails[type eq \"work\"].value","value":"AdeleV@Contoso.onmicrosoft.com"}]),
    )
    .await;
    assert_eq!(
        get_user(&app, &id).await["emails"],
        json!([{"type": "work", "value": "AdeleV@Contoso.onmicrosoft.com"}])
    );
}

async fn mixed_verbs_set_work_address_and_add_department(app: TestApp) {
    // FIELD limosa-io/laravel-scim-server#34: real Entra traffic mixing
    // `Replace` and `Add`, verbatim; the user has no address and no
    // department yet.
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([
            {"op":"Replace","path":"emails[type eq \"work\"].value","value":"AdeleV2@REDACTED.onmicrosoft.com"},
            {"op":"Replace","path":"addresses[type eq \"work\"].formatted","value":"18/2111"},
            {"op":"Add","path":"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department","value":"Retail"}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert_eq!(
        user["emails"],
        json!([{"primary": true, "type": "work", "value": "AdeleV2@REDACTED.onmicrosoft.com"}])
    );
    assert_eq!(
        user["addresses"],
        json!([{"type": "work", "formatted": "18/2111"}])
    );
    assert_eq!(enterprise(&user), &json!({"department": "Retail"}));
}

async fn add_department_by_urn_path_sets_enterprise_department(app: TestApp) {
    // MS-COMPAT table: enterprise attributes take a colon before the
    // attribute name; the op as in limosa-io/laravel-scim-server#34.
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"Add","path":"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department","value":"Retail"}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert_eq!(enterprise(&user), &json!({"department": "Retail"}));
    assert!(user.get("department").is_none(), "{user:?}");
    assert!(
        user.get(format!("{ENTERPRISE}:department")).is_none(),
        "{user:?}"
    );
}

// --- 4. Manager ----------------------------------------------------------------

/// A tutorial user whose manager was set the way Entra sets it: `Add` with
/// the manager's id as a bare string. Returns (user, manager).
async fn user_with_manager(app: &TestApp) -> (String, String) {
    let boss = app.create_user("boss@example.com").await;
    let id = create_tutorial_user(app).await;
    patch_user(
        app,
        &id,
        json!([{"op":"Add","path":"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager","value":boss}]),
    )
    .await;
    assert_manager(app, &get_user(app, &id).await, &boss);
    (id, boss)
}

async fn manager_added_as_bare_id_and_replaced_as_value_object(app: TestApp) {
    // FIELD Captain-P-Goldfish/SCIM-SDK#541, MicrosoftDocs/azure-docs#73842:
    // `Add` with the id as a bare string; VAL-CAPTURE "Patch User - Replace
    // Manager" with {"value": id}. Entra reads the manager back as
    // {"value": id} (Budibase/budibase#15369).
    let (id, _) = user_with_manager(&app).await;
    let next = app.create_user("next.boss@example.com").await;
    patch_user(
        &app,
        &id,
        json!([{"op":"Replace","path":MANAGER,"value":{"value":next}}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert_manager(&app, &user, &next);
    // Filter results carry the same representation.
    let found = find_users(&app, TUTORIAL_USER_NAME).await;
    assert_manager(&app, &found.body["Resources"][0], &next);
}

async fn manager_added_as_tutorial_array_with_ref(app: TestApp) {
    // MS-TUT (older version) "Example 5": `Add` on the unqualified path
    // `manager` with an array holding {"$ref", "value"}; the client's `$ref`
    // is not the service's URL, so only `value` counts.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let boss = app.create_user("boss@example.com").await;
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"Add","path":"manager","value":[
            {"$ref":format!("http://.../scim/Users/{boss}"),"value":boss}]}]),
    )
    .await;
    assert_manager(&app, &get_user(&app, &id).await, &boss);
}

async fn manager_cleared_by_replace_with_empty_value_object(app: TestApp) {
    // VAL-CAPTURE "Patch User - Remove Manager"; Microsoft's Logic App test 25
    // "remove (Replace with empty)" [REF SCIM-Validation-Test-Overview.md].
    let (id, _) = user_with_manager(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"replace","path":MANAGER,"value":{"value":""}}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert!(manager(&user).is_none(), "{user:?}");
}

async fn manager_cleared_by_replace_with_empty_string(app: TestApp) {
    // VAL-CAPTURE "Patch User - Remove Manager", the `"value": ""` variant.
    let (id, _) = user_with_manager(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"replace","path":MANAGER,"value":""}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert!(manager(&user).is_none(), "{user:?}");
}

async fn manager_cleared_by_remove_on_urn_path(app: TestApp) {
    // VAL-CAPTURE "Patch User - Remove Manager", the `remove` variant.
    let (id, _) = user_with_manager(&app).await;
    patch_user(&app, &id, json!([{"op":"remove","path":MANAGER}])).await;
    let user = get_user(&app, &id).await;
    assert!(manager(&user).is_none(), "{user:?}");
}

async fn manager_cleared_by_remove_with_value_filter(app: TestApp) {
    // FIELD thomaspoignant/scim-patch#453: `remove` on manager[value eq "id"].
    let (id, boss) = user_with_manager(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"remove","path":format!("manager[value eq \"{boss}\"]")}]),
    )
    .await;
    let user = get_user(&app, &id).await;
    assert!(manager(&user).is_none(), "{user:?}");
}

async fn manager_kept_when_its_ref_is_removed(app: TestApp) {
    // RFC 7644 §3.5.2.2: a remove of a sub-attribute removes that
    // sub-attribute. `$ref` follows from the id, so the manager stays as it
    // was read.
    let (id, boss) = user_with_manager(&app).await;
    for path in [format!("{MANAGER}.$ref"), "manager.$ref".to_owned()] {
        patch_user(&app, &id, json!([{"op":"remove","path":path}])).await;
        assert_manager(&app, &get_user(&app, &id).await, &boss);
    }
}

async fn manager_ref_sent_in_a_patch_is_derived_not_stored(app: TestApp) {
    // `$ref` is the URI of the manager's User resource, which the service
    // knows from the id; one sent by the client could name anyone.
    let (id, boss) = user_with_manager(&app).await;
    let elsewhere = "https://elsewhere.example/Users/x";
    patch_user(
        &app,
        &id,
        json!([{"op":"Replace","path":format!("{MANAGER}.$ref"),"value":elsewhere}]),
    )
    .await;
    assert_manager(&app, &get_user(&app, &id).await, &boss);
    // Without a manager, a $ref alone makes none.
    let other = app.create_user("no.boss@example.com").await;
    patch_user(
        &app,
        &other,
        json!([{"op":"Add","path":"manager.$ref","value":elsewhere}]),
    )
    .await;
    let user = get_user(&app, &other).await;
    assert!(manager(&user).is_none(), "{user:?}");
}

async fn filtered_manager_replace_that_matches_nothing_is_400_no_target(app: TestApp) {
    // RFC 7644 §3.5.2.3: a value filter that matches no value is 400
    // noTarget. A filter naming an old manager must not overwrite the
    // current one.
    let (id, boss) = user_with_manager(&app).await;
    let next = app.create_user("next.boss@example.com").await;
    for path in [
        format!("{MANAGER}[value eq \"someone-else\"].value"),
        "manager[value eq \"someone-else\"].value".to_owned(),
    ] {
        let reply = app
            .patch(
                &format!("/Users/{id}"),
                patch_body(json!([{"op":"Replace","path":path,"value":next}])),
            )
            .await;
        assert_scim_error(&reply, StatusCode::BAD_REQUEST, Some("noTarget"));
        assert_manager(&app, &get_user(&app, &id).await, &boss);
    }
    // The filter that names the current manager applies.
    patch_user(
        &app,
        &id,
        json!([{"op":"Replace","path":format!("manager[value eq \"{boss}\"].value"),"value":next}]),
    )
    .await;
    assert_manager(&app, &get_user(&app, &id).await, &next);
}

// --- 5. Disable / re-enable ------------------------------------------------------

/// Asserts the user is inactive by GET and by a userName filter: MS-TUT says
/// a user is returned "whether or not the user is active".
async fn assert_disabled_and_findable(app: &TestApp, id: &str) {
    assert_eq!(get_user(app, id).await["active"], false);
    let found = find_users(app, TUTORIAL_USER_NAME).await;
    assert_eq!(found.body["totalResults"], 1, "{:?}", found.body);
    assert_eq!(found.body["Resources"][0]["id"], id);
    assert_eq!(found.body["Resources"][0]["active"], false);
}

async fn string_false_with_capital_replace_disables_and_user_stays_findable(app: TestApp) {
    // MS-COMPAT "Disable user" without flag, verbatim: the string "False".
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"Replace","path":"active","value":"False"}]),
    )
    .await;
    assert_disabled_and_findable(&app, &id).await;
}

async fn boolean_false_with_lower_case_replace_disables_and_user_stays_findable(app: TestApp) {
    // MS-COMPAT "Disable user" with aadOptscim062020, verbatim.
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"replace","path":"active","value":false}]),
    )
    .await;
    assert_disabled_and_findable(&app, &id).await;
}

async fn string_true_re_enables_disabled_user(app: TestApp) {
    // MS-COMPAT: re-enable sends the string "True" (the other branch of
    // Switch([IsSoftDeleted], , "False", "True", "True", "False")).
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
    let id = create_tutorial_user(&app).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"Replace","path":"active","value":"False"}]),
    )
    .await;
    assert_disabled_and_findable(&app, &id).await;
    patch_user(
        &app,
        &id,
        json!([{"op":"Replace","path":"active","value":"True"}]),
    )
    .await;
    assert_eq!(get_user(&app, &id).await["active"], true);
    let found = find_users(&app, TUTORIAL_USER_NAME).await;
    assert_eq!(found.body["Resources"][0]["active"], true);
}

// --- 6. Delete -----------------------------------------------------------------

async fn delete_user_is_204_then_get_and_delete_are_404(app: TestApp) {
    // MS-TUT "Delete User" → 204, "Get User" of an unknown id → 404;
    // VAL-CAPTURE preview "Delete the same User twice" → 204 then 404.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let id = create_tutorial_user(&app).await;
    let deleted = app.delete(&format!("/Users/{id}")).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{:?}", deleted.body);
    assert_eq!(deleted.body, Value::Null);
    let got = app.get(&format!("/Users/{id}")).await;
    assert_scim_error(&got, StatusCode::NOT_FOUND, None);
    let again = app.delete(&format!("/Users/{id}")).await;
    assert_scim_error(&again, StatusCode::NOT_FOUND, None);
    // Hard-deleted: the only time a user is not returned by a filter [MS-TUT].
    assert_empty_list(&find_users(&app, TUTORIAL_USER_NAME).await);
}

// --- 7. Groups -----------------------------------------------------------------

async fn group_lookup_by_display_name_excluding_members_is_empty_list(app: TestApp) {
    // MS-TUT "Get Group by displayName", form-encoded.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let reply = app
        .get("/Groups?excludedAttributes=members&filter=displayName+eq+%22displayName%22")
        .await;
    assert_empty_list(&reply);
}

async fn group_create_with_adscim_schema_uri_and_meta_is_201(app: TestApp) {
    // MS-TUT "Create Group", verbatim: the extra ADSCIM schema URI and a
    // client meta.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let created = app.post("/Groups", tutorial_group("displayName")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_scim_json(&created);
    let body = &created.body;
    let id = body["id"].as_str().expect("id");
    assert!(
        body["schemas"]
            .as_array()
            .is_some_and(|s| s.contains(&json!(CORE_GROUP))),
        "{body:?}"
    );
    assert_eq!(body["externalId"], "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159");
    assert_eq!(body["displayName"], "displayName");
    assert_eq!(body["members"], json!([]));
    assert_eq!(body["meta"]["resourceType"], "Group");
    let location = format!("{}/Groups/{id}", app.scim);
    assert_eq!(created.header("location"), Some(location.as_str()));

    let found = app
        .get("/Groups?excludedAttributes=members&filter=displayName+eq+%22displayName%22")
        .await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.body["totalResults"], 1);
    assert_eq!(found.body["Resources"][0]["id"], id);
    assert!(found.body["Resources"][0].get("members").is_none());
}

async fn group_get_by_id_excluding_members_has_no_members(app: TestApp) {
    // MS-TUT "Get Group": GET /Groups/{id}?excludedAttributes=members → 200
    // without members.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let user = app.create_user("member@example.com").await;
    let id = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &id,
        json!([{"op":"Add","path":"members","value":[{"$ref":null,"value":user}]}]),
    )
    .await;
    let reply = app
        .get(&format!("/Groups/{id}?excludedAttributes=members"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_scim_json(&reply);
    assert_eq!(reply.body["id"], id.as_str());
    assert_eq!(reply.body["displayName"], "displayName");
    assert!(reply.body.get("members").is_none(), "{:?}", reply.body);
    assert_eq!(member_ids(&app, &id).await, set_of(&[&user]));
}

async fn add_several_members_in_one_op_is_204(app: TestApp) {
    // MS-TUT "Add Member" ({"$ref": null}), with several members in one op
    // (gallery checklist: "Support updating multiple group memberships with
    // a single PATCH").
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let users = create_users(&app, "m", 3).await;
    let id = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &id,
        json!([{"op":"Add","path":"members","value":[
            {"$ref":null,"value":users[0]},
            {"$ref":null,"value":users[1]},
            {"$ref":null,"value":users[2]}]}]),
    )
    .await;
    assert_eq!(
        member_ids(&app, &id).await,
        set_of(&[&users[0], &users[1], &users[2]])
    );
}

async fn default_remove_with_value_list_removes_only_listed_members(app: TestApp) {
    // MS-COMPAT "Remove group member" without flag, verbatim shape (MS-TUT
    // adds "$ref": null): `Remove` with a value list removes only those (the classic "removes everyone"
    // bug: MicrosoftDocs/azure-docs#30826).
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
    let users = create_users(&app, "m", 3).await;
    let id = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &id,
        json!([{"op":"Add","path":"members","value":[
            {"value":users[0]},{"value":users[1]},{"value":users[2]}]}]),
    )
    .await;
    patch_group(
        &app,
        &id,
        json!([{"op":"Remove","path":"members","value":[
            {"value":users[0]},{"$ref":null,"value":users[2]}]}]),
    )
    .await;
    assert_eq!(member_ids(&app, &id).await, set_of(&[&users[1]]));
}

async fn default_remove_with_value_list_finds_emails_in_any_case_and_member_ids_exactly(
    app: TestApp,
) {
    // The default dialect's `Remove` with a value list, on emails: their
    // value is caseExact false (RFC 7643 §4.1.2), so "Ann@Home.org" names
    // the stored "ann@home.org". Member values are user ids, compared exactly.
    let mut body = tutorial_user();
    body["emails"] = json!([
        {"primary": true, "type": "work", "value": TUTORIAL_EMAIL},
        {"type": "home", "value": "ann@home.org"}
    ]);
    let reply = app.post("/Users", body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let id = reply.body["id"].as_str().expect("id").to_owned();
    patch_user(
        &app,
        &id,
        json!([{"op":"Remove","path":"emails","value":[{"value":"Ann@Home.org"}]}]),
    )
    .await;
    assert_eq!(
        get_user(&app, &id).await["emails"],
        json!([{"primary": true, "type": "work", "value": TUTORIAL_EMAIL}])
    );

    let group = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &group,
        json!([{"op":"Add","path":"members","value":[{"value":id}]}]),
    )
    .await;
    patch_group(
        &app,
        &group,
        json!([{"op":"Remove","path":"members","value":[{"value":id.to_uppercase()}]}]),
    )
    .await;
    assert_eq!(member_ids(&app, &group).await, set_of(&[&id]));
}

async fn aad_opt_remove_with_member_filter_removes_only_that_member(app: TestApp) {
    // MS-COMPAT "Remove group member" with aadOptscim062020, verbatim shape.
    // https://learn.microsoft.com/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
    let users = create_users(&app, "m", 3).await;
    let id = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &id,
        json!([{"op":"Add","path":"members","value":[
            {"value":users[0]},{"value":users[1]},{"value":users[2]}]}]),
    )
    .await;
    patch_group(
        &app,
        &id,
        json!([{"op":"remove","path":format!("members[value eq \"{}\"]", users[1])}]),
    )
    .await;
    assert_eq!(member_ids(&app, &id).await, set_of(&[&users[0], &users[2]]));
}

async fn group_rename_by_path_updates_display_name(app: TestApp) {
    // MS-TUT "Update Group [Non-member attributes]", verbatim.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let user = app.create_user("member@example.com").await;
    let id = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &id,
        json!([{"op":"Add","path":"members","value":[{"value":user}]}]),
    )
    .await;
    patch_group(
        &app,
        &id,
        json!([{"op":"Replace","path":"displayName","value":"1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName"}]),
    )
    .await;
    let got = app.get(&format!("/Groups/{id}")).await;
    assert_eq!(
        got.body["displayName"],
        "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName"
    );
    assert_eq!(member_ids(&app, &id).await, set_of(&[&user]));
    let found = app
        .get(&format!(
            "/Groups?excludedAttributes=members&filter={}",
            eq_filter(
                "displayName",
                "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName"
            )
        ))
        .await;
    assert_eq!(found.body["totalResults"], 1);
    assert_empty_list(
        &app.get("/Groups?excludedAttributes=members&filter=displayName+eq+%22displayName%22")
            .await,
    );
}

async fn group_rename_by_pathless_replace_updates_display_name(app: TestApp) {
    // VAL-CAPTURE "Update Group displayName": the validator's path-less form
    // (docs/entra.md §2.7).
    let id = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &id,
        json!([{"op":"replace","value":{"displayName":"WUZPWMBDDCGI"}}]),
    )
    .await;
    let got = app.get(&format!("/Groups/{id}")).await;
    assert_eq!(got.body["displayName"], "WUZPWMBDDCGI");
    assert_eq!(
        got.body["externalId"],
        "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159"
    );
}

async fn replace_members_with_list_sets_exactly_those_members(app: TestApp) {
    // VAL-CAPTURE "Patch Group - Add Member" sent as `replace members`
    // (docs/entra.md §2.7).
    let users = create_users(&app, "m", 3).await;
    let id = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &id,
        json!([{"op":"Add","path":"members","value":[{"value":users[0]},{"value":users[1]}]}]),
    )
    .await;
    patch_group(
        &app,
        &id,
        json!([{"op":"replace","path":"members","value":[{"value":users[2]},{"value":users[0]}]}]),
    )
    .await;
    assert_eq!(member_ids(&app, &id).await, set_of(&[&users[0], &users[2]]));
}

async fn add_and_remove_of_same_member_in_one_request_leaves_it_out(app: TestApp) {
    // VAL-CAPTURE preview "Patch Group - Multiple Ops same attr (add +
    // remove)": operations apply in order (RFC 7644 §3.5.2), so the member
    // added then removed ends up out; the others are untouched.
    let users = create_users(&app, "m", 2).await;
    let id = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &id,
        json!([{"op":"add","path":"members","value":[{"value":users[0]}]}]),
    )
    .await;
    patch_group(
        &app,
        &id,
        json!([
            {"op":"add","path":"members","value":[{"value":users[1]}]},
            {"op":"remove","path":format!("members[value eq \"{}\"]", users[1])}]),
    )
    .await;
    assert_eq!(member_ids(&app, &id).await, set_of(&[&users[0]]));
}

async fn group_filter_by_display_name_in_other_case_finds_it(app: TestApp) {
    // VAL-CAPTURE "Filter for an existing group with a different case":
    // displayName is caseExact=false (RFC 7643 §4.2); stored as sent.
    let id = create_tutorial_group(&app, "displayName").await;
    let found = app
        .get("/Groups?excludedAttributes=members&filter=displayName+eq+%22DISPLAYNAME%22")
        .await;
    assert_eq!(found.status, StatusCode::OK, "{:?}", found.body);
    assert_eq!(found.body["totalResults"], 1);
    assert_eq!(found.body["Resources"][0]["id"], id.as_str());
    assert_eq!(found.body["Resources"][0]["displayName"], "displayName");
    assert!(found.body["Resources"][0].get("members").is_none());
}

async fn duplicate_group_display_name_is_409_uniqueness(app: TestApp) {
    // MS-TUT "/Groups": unique displayName is "a requirement for integrating
    // with Microsoft Entra ID"; VAL-CAPTURE "Create a duplicate Group" → 409.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    create_tutorial_group(&app, "displayName").await;
    let again = app.post("/Groups", tutorial_group("displayName")).await;
    assert_scim_error(&again, StatusCode::CONFLICT, Some("uniqueness"));
    let other_case = app.post("/Groups", tutorial_group("DisplayName")).await;
    assert_scim_error(&other_case, StatusCode::CONFLICT, Some("uniqueness"));
}

async fn delete_group_is_204_then_get_and_delete_are_404(app: TestApp) {
    // MS-TUT "Delete Group" → 204; VAL-CAPTURE preview "Delete the same
    // Group twice" → 404.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let user = app.create_user("member@example.com").await;
    let id = create_tutorial_group(&app, "displayName").await;
    patch_group(
        &app,
        &id,
        json!([{"op":"Add","path":"members","value":[{"value":user}]}]),
    )
    .await;
    let deleted = app.delete(&format!("/Groups/{id}")).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{:?}", deleted.body);
    assert_eq!(deleted.body, Value::Null);
    assert_scim_error(
        &app.get(&format!("/Groups/{id}")).await,
        StatusCode::NOT_FOUND,
        None,
    );
    assert_scim_error(
        &app.delete(&format!("/Groups/{id}")).await,
        StatusCode::NOT_FOUND,
        None,
    );
    // Deleting a team does not delete its members.
    assert_eq!(get_user(&app, &user).await["id"], user.as_str());
}

// --- 8. Concurrency ------------------------------------------------------------

async fn concurrent_member_adds_and_removes_leave_exact_member_set(app: TestApp) {
    // Entra sends membership PATCHes of one group in parallel, one member
    // per request (MS-TUT "Add Member" / MS-COMPAT "Remove group member"
    // bodies). 20 adds and 5 removes race; none may be lost.
    // https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
    let users = create_users(&app, "c", 25).await;
    let (early, late) = users.split_at(5);
    let group = create_tutorial_group(&app, "displayName").await;
    let early_values: Vec<Value> = early.iter().map(|u| json!({"value": u})).collect();
    patch_group(
        &app,
        &group,
        json!([{"op":"Add","path":"members","value":early_values}]),
    )
    .await;

    let app = Arc::new(app);
    let path = format!("/Groups/{group}");
    let mut tasks = Vec::new();
    let adds = late
        .iter()
        .map(|u| json!([{"op":"Add","path":"members","value":[{"$ref":null,"value":u}]}]));
    let removes = early
        .iter()
        .map(|u| json!([{"op":"Remove","path":"members","value":[{"value":u}]}]));
    for ops in adds.chain(removes) {
        let app = Arc::clone(&app);
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let reply = app.patch(&path, patch_body(ops.clone())).await;
            (ops, reply.status, reply.body)
        }));
    }
    for task in tasks {
        let (ops, status, body) = task.await.expect("task");
        assert_eq!(status, StatusCode::NO_CONTENT, "{ops} → {body:?}");
    }
    let expected: BTreeSet<String> = late.iter().cloned().collect();
    assert_eq!(member_ids(&app, &group).await, expected);
}
