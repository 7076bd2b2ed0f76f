//! Turning stored documents into SCIM resources: `id`, `meta`, members.

use chrono::NaiveDateTime;
use serde_json::{Map, Value, json};

use super::ResourceKind;

/// What `meta` says about a resource (RFC 7643 §3.1).
#[derive(Debug)]
pub struct Meta<'a> {
    pub kind: ResourceKind,
    pub id: &'a str,
    pub created: NaiveDateTime,
    pub last_modified: NaiveDateTime,
    pub version: i64,
    /// `…/scim/v2`
    pub base_url: &'a str,
}

/// A group member as listed in `members`.
#[derive(Debug)]
pub struct MemberRef<'a> {
    pub id: &'a str,
}

/// The weak ETag of a version, as `meta.version` and the `ETag` header.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// Whether an `If-Match` / `If-None-Match` header value names `version`
/// (`*` matches anything; weak and strong forms compare alike).
pub fn etag_matches(header: &str, version: i64) -> bool {
    let want = version.to_string();
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").trim_matches('"') == want)
}

pub fn endpoint(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::User => "Users",
        ResourceKind::Group => "Groups",
    }
}

fn timestamp(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The stored document with `id` and `meta` set, `id` first for readers.
pub fn resource(stored: Value, meta: &Meta<'_>) -> Value {
    let mut out = Map::new();
    let mut stored = match stored {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(schemas) = stored.remove("schemas") {
        out.insert("schemas".into(), schemas);
    }
    out.insert("id".into(), Value::String(meta.id.to_owned()));
    for (k, v) in stored {
        if k != "id" && k != "meta" {
            out.insert(k, v);
        }
    }
    let resource_type = match meta.kind {
        ResourceKind::User => "User",
        ResourceKind::Group => "Group",
    };
    if meta.kind == ResourceKind::User {
        add_manager_ref(&mut out, meta.base_url);
    }
    out.insert(
        "meta".into(),
        json!({
            "resourceType": resource_type,
            "created": timestamp(meta.created),
            "lastModified": timestamp(meta.last_modified),
            "location": format!("{}/{}/{}", meta.base_url, endpoint(meta.kind), meta.id),
            "version": etag(meta.version),
        }),
    );
    Value::Object(out)
}

/// Gives the enterprise `manager` its `$ref` (RFC 7643 §4.3), derived
/// from the stored id rather than stored, so it follows the public URL.
fn add_manager_ref(user: &mut Map<String, Value>, base_url: &str) {
    let manager = user
        .get_mut(super::schema::ENTERPRISE_USER_SCHEMA)
        .and_then(|e| e.get_mut("manager"))
        .and_then(Value::as_object_mut);
    if let Some(manager) = manager
        && let Some(id) = manager
            .get("value")
            .and_then(Value::as_str)
            .map(str::to_owned)
    {
        manager.insert(
            "$ref".into(),
            Value::String(format!("{base_url}/Users/{id}")),
        );
    }
}

/// Sets a group's `members` list. `display` is left out: it is read-only,
/// Entra ID does not read it, and leaving it out keeps a group's answer
/// what the client sent.
pub fn set_members(group: &mut Value, members: &[MemberRef<'_>], base_url: &str) {
    let list: Vec<Value> = members
        .iter()
        .map(|m| {
            json!({
                "value": m.id,
                "$ref": format!("{base_url}/Users/{}", m.id),
                "type": "User",
            })
        })
        .collect();
    if let Some(obj) = group.as_object_mut() {
        obj.insert("members".into(), Value::Array(list));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_matching_accepts_weak_strong_lists_and_star() {
        assert!(etag_matches("W/\"3\"", 3));
        assert!(etag_matches("\"3\"", 3));
        assert!(etag_matches("W/\"1\", W/\"3\"", 3));
        assert!(etag_matches("*", 9));
        assert!(!etag_matches("W/\"2\"", 3));
    }

    #[test]
    fn rendered_resource_has_id_meta_and_no_client_meta() {
        let t = chrono::DateTime::from_timestamp(0, 0)
            .expect("epoch")
            .naive_utc();
        let out = resource(
            json!({"schemas": ["s"], "userName": "a", "meta": {"resourceType": "Bogus"}}),
            &Meta {
                kind: ResourceKind::User,
                id: "u1",
                created: t,
                last_modified: t,
                version: 2,
                base_url: "http://h/scim/v2",
            },
        );
        assert_eq!(out["id"], "u1");
        assert_eq!(out["meta"]["resourceType"], "User");
        assert_eq!(out["meta"]["location"], "http://h/scim/v2/Users/u1");
        assert_eq!(out["meta"]["version"], "W/\"2\"");
        assert_eq!(out["meta"]["created"], "1970-01-01T00:00:00.000Z");
    }
}
