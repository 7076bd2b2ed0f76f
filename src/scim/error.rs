//! SCIM error responses (RFC 7644 §3.12).
//!
//! Every parser and validator in `crate::scim` returns [`ScimError`]; the HTTP
//! layer turns it into a response with [`ScimError::to_json`] and the status code.

use serde_json::{Value, json};

/// The `schemas` URI of a SCIM error body.
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// The `scimType` keywords of RFC 7644 §3.12, Table 9: a machine-readable
/// reason for a 400 (or 409) answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScimType {
    /// The filter syntax was invalid or the comparison is not supported.
    InvalidFilter,
    /// The request asks the server to process more than it is willing to.
    TooMany,
    /// A value breaks a uniqueness constraint (duplicate userName, group name).
    Uniqueness,
    /// The request tries to change a readOnly or immutable attribute.
    Mutability,
    /// The body is not structured as the request type requires.
    InvalidSyntax,
    /// A PATCH `path` (or an attribute path parameter) is malformed or unknown.
    InvalidPath,
    /// A PATCH path selected no value where one is required.
    NoTarget,
    /// A value is missing or of the wrong type for its attribute.
    InvalidValue,
    /// The `If-Match` version did not match.
    InvalidVers,
    /// The request put sensitive data in the URI.
    Sensitive,
}

impl ScimType {
    /// The keyword as written in the `scimType` member of an error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::TooMany => "tooMany",
            ScimType::Uniqueness => "uniqueness",
            ScimType::Mutability => "mutability",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
            ScimType::InvalidVers => "invalidVers",
            ScimType::Sensitive => "sensitive",
        }
    }
}

impl std::fmt::Display for ScimType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol error: the HTTP status, the optional `scimType` and a detail
/// written for the person reading Entra's provisioning log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimError {
    /// HTTP status code (400, 404, 409, ...).
    pub status: u16,
    /// RFC 7644 error keyword; `None` for statuses that have none (404).
    pub scim_type: Option<ScimType>,
    /// What went wrong and, where possible, how to fix it.
    pub detail: String,
}

impl ScimError {
    /// Any status with an optional keyword.
    pub fn new(status: u16, scim_type: Option<ScimType>, detail: impl Into<String>) -> Self {
        ScimError {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    /// 400 Bad Request with the given keyword.
    pub fn bad_request(t: ScimType, detail: impl Into<String>) -> Self {
        Self::new(400, Some(t), detail)
    }

    /// 404 Not Found; RFC 7644 defines no `scimType` for it.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, None, detail)
    }

    /// 409 Conflict with `scimType: uniqueness` (duplicate userName or group name).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(409, Some(ScimType::Uniqueness), detail)
    }

    /// The RFC 7644 §3.12 error body. `status` is a JSON string, as the RFC's
    /// examples and Entra's own samples show; `scimType` is omitted when absent.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.to_string(),
            "detail": self.detail,
        });
        if let (Some(t), Some(obj)) = (self.scim_type, body.as_object_mut()) {
            obj.insert("scimType".to_owned(), Value::String(t.as_str().to_owned()));
        }
        body
    }
}

impl std::fmt::Display for ScimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.scim_type {
            Some(t) => write!(f, "{} {}: {}", self.status, t, self.detail),
            None => write!(f, "{}: {}", self.status, self.detail),
        }
    }
}

impl std::error::Error for ScimError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_string_status_and_scim_type() {
        let e = ScimError::bad_request(ScimType::InvalidFilter, "bad filter");
        assert_eq!(
            e.to_json(),
            json!({
                "schemas": [ERROR_SCHEMA],
                "status": "400",
                "scimType": "invalidFilter",
                "detail": "bad filter"
            })
        );
    }

    #[test]
    fn not_found_body_omits_scim_type() {
        let e = ScimError::not_found("Resource 42 not found");
        assert_eq!(e.status, 404);
        assert_eq!(e.scim_type, None);
        let body = e.to_json();
        assert_eq!(body["status"], "404");
        assert!(body.get("scimType").is_none());
    }

    #[test]
    fn conflict_is_409_uniqueness() {
        let e = ScimError::conflict("userName 'a@b.c' is already taken");
        assert_eq!(e.status, 409);
        assert_eq!(e.scim_type, Some(ScimType::Uniqueness));
        assert_eq!(e.to_json()["scimType"], "uniqueness");
    }

    #[test]
    fn every_scim_type_has_its_rfc_keyword() {
        let all = [
            (ScimType::InvalidFilter, "invalidFilter"),
            (ScimType::TooMany, "tooMany"),
            (ScimType::Uniqueness, "uniqueness"),
            (ScimType::Mutability, "mutability"),
            (ScimType::InvalidSyntax, "invalidSyntax"),
            (ScimType::InvalidPath, "invalidPath"),
            (ScimType::NoTarget, "noTarget"),
            (ScimType::InvalidValue, "invalidValue"),
            (ScimType::InvalidVers, "invalidVers"),
            (ScimType::Sensitive, "sensitive"),
        ];
        for (t, s) in all {
            assert_eq!(t.as_str(), s);
        }
    }

    #[test]
    fn display_shows_status_keyword_and_detail() {
        let e = ScimError::bad_request(ScimType::InvalidPath, "no such attribute");
        assert_eq!(e.to_string(), "400 invalidPath: no such attribute");
        assert_eq!(ScimError::not_found("gone").to_string(), "404: gone");
    }
}
