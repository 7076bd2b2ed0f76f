//! Discovery documents (RFC 7644 §4): what this service supports.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::AppState;
use super::error::{Error, scim_response};
use super::scim::MAX_PAGE_SIZE;
use crate::scim::error::ScimError;
use crate::scim::schema::{
    ENTERPRISE_USER_SCHEMA, GROUP_SCHEMA, LIST_RESPONSE_SCHEMA, USER_SCHEMA, schemas_json,
};

fn list(resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": resources.len(),
        "startIndex": 1,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

pub async fn service_provider_config(State(state): State<AppState>) -> Response {
    let body = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_PAGE_SIZE},
        "changePassword": {"supported": false},
        "sort": {"supported": true},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "A long-lived bearer token issued by `scimsync token create`, sent as Authorization: Bearer <token>",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{}/ServiceProviderConfig", state.base_url),
        },
    });
    scim_response(StatusCode::OK, &body)
}

fn resource_type_docs(base: &str) -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User",
            "name": "User",
            "endpoint": "/Users",
            "description": "A person provisioned by the identity provider",
            "schema": USER_SCHEMA,
            "schemaExtensions": [{"schema": ENTERPRISE_USER_SCHEMA, "required": false}],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group",
            "name": "Group",
            "endpoint": "/Groups",
            "description": "A group, kept as a team of the product",
            "schema": GROUP_SCHEMA,
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")},
        }),
    ]
}

pub async fn resource_types(State(state): State<AppState>) -> Response {
    scim_response(StatusCode::OK, &list(resource_type_docs(&state.base_url)))
}

pub async fn resource_type(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    resource_type_docs(&state.base_url)
        .into_iter()
        .find(|r| {
            r["id"]
                .as_str()
                .is_some_and(|i| i.eq_ignore_ascii_case(&id))
        })
        .map(|r| scim_response(StatusCode::OK, &r))
        .ok_or_else(|| {
            ScimError::not_found(format!("no resource type {id}; there are User and Group")).into()
        })
}

fn schema_docs(base: &str) -> Vec<Value> {
    let mut docs = schemas_json();
    for doc in &mut docs {
        let id = doc["id"].as_str().unwrap_or_default().to_owned();
        if let Some(meta) = doc.get_mut("meta").and_then(Value::as_object_mut) {
            meta.insert(
                "location".into(),
                Value::String(format!("{base}/Schemas/{id}")),
            );
        }
    }
    docs
}

pub async fn schemas(State(state): State<AppState>) -> Response {
    scim_response(StatusCode::OK, &list(schema_docs(&state.base_url)))
}

pub async fn schema(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    schema_docs(&state.base_url)
        .into_iter()
        .find(|s| {
            s["id"]
                .as_str()
                .is_some_and(|i| i.eq_ignore_ascii_case(&id))
        })
        .map(|s| scim_response(StatusCode::OK, &s))
        .ok_or_else(|| ScimError::not_found(format!("no schema {id}")).into())
}
