//! Validating POST/PUT bodies into the normalised JSON the service stores,
//! deriving the columns it indexes, and projecting responses
//! (`attributes=` / `excludedAttributes=`, RFC 7644 §3.9).
//!
//! A normalised resource has: `schemas` listing only URIs the service
//! supports, attribute names spelled as the schema spells them, no nulls, no
//! read-only attributes, real JSON booleans, `manager` as `{"value": id}`, and
//! enterprise attributes inside an object under the enterprise URN.

use serde_json::{Map, Value};

use crate::scim::error::{ScimError, ScimType};
use crate::scim::filter::{AttrPath, get_ci, parse_attr_path};
use crate::scim::schema::{
    self, AttrType, AttributeDef, ENTERPRISE_USER_SCHEMA, ResourceKind, Returned,
};

/// Most member ids one request may carry (POST/PUT body or one PATCH).
pub const MAX_MEMBER_IDS: usize = 10_000;

/// Most values one multi-valued attribute other than `members` may hold
/// (`emails`, `phoneNumbers`, `roles`, ...), in a request and once a PATCH
/// is applied. Entra ID sends a handful; merging a PATCH's values into the
/// stored ones costs time that grows with their number, on the thread that
/// answers requests, so an unbounded list would let one small body keep a
/// thread busy for minutes.
pub const MAX_ATTRIBUTE_VALUES: usize = 200;

/// Longest value, in UTF-8 bytes, of an attribute the store indexes
/// (userName, displayName, externalId, emails.value). PostgreSQL refuses an
/// index entry over 2,704 bytes; 1,024 leaves room for the other columns
/// of an index and for lower-casing, which can lengthen text, and is far
/// above real values (an email address has at most 254).
pub const MAX_INDEXED_BYTES: usize = 1024;

/// Multi-valued attributes whose `type` values must be unique: Entra ID
/// ("The 'type' subattribute values of multivalued complex attributes must
/// be unique") addresses one element per type with `emails[type eq "work"]`.
/// `roles` is left out on purpose: Entra sends several roles of one type.
pub(crate) const TYPE_UNIQUE_ATTRIBUTES: [&str; 3] = ["emails", "phoneNumbers", "addresses"];

fn invalid_value(detail: impl Into<String>) -> ScimError {
    ScimError::bad_request(ScimType::InvalidValue, detail)
}

/// Reads `true`/`false` and Entra's `"True"`/`"False"` strings (any case).
pub(crate) fn coerce_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// True when `def` is the enterprise `manager` attribute, which has its own
/// value forms (see [`normalize_manager`]).
pub(crate) fn is_manager(def: &AttributeDef) -> bool {
    schema::ENTERPRISE_USER_SCHEMA_DEF
        .attribute("manager")
        .is_some_and(|m| std::ptr::eq(m, def))
}

/// Normalises one client value for `def`: type-checks it, coerces boolean
/// strings, re-keys sub-attributes to the schema spelling, drops nulls,
/// unknown and read-only sub-attributes. `Ok(None)` means "no value" (null,
/// empty array, object with nothing left). Strings are kept exactly as sent.
pub(crate) fn normalize_value(
    def: &'static AttributeDef,
    value: Value,
    label: &str,
) -> Result<Option<Value>, ScimError> {
    if is_manager(def) {
        return normalize_manager(value);
    }
    if !def.multi_valued {
        return normalize_single(def, value, label);
    }
    // A single element where an array is expected is accepted as a one-element
    // array; clients send `"members": {"value": ".."}` and the like.
    let items = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        other => vec![other],
    };
    // Counted as sent, before any work that grows with the number.
    check_value_count(def, items.len())?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some(v) = normalize_single(def, item, label)? {
            out.push(v);
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    check_one_primary(def, &out)?;
    let out = Value::Array(out);
    check_unique_types(def, &out)?;
    Ok(Some(out))
}

/// Rejects more than one normalised element with `"primary": true` (RFC
/// 7643 §2.4: "The primary attribute value 'true' MUST appear no more than
/// once"). Keeping one of them would be a guess, and it decides where
/// invitations go (see [`user_fields`]).
fn check_one_primary(def: &AttributeDef, items: &[Value]) -> Result<(), ScimError> {
    let primaries = items
        .iter()
        .filter(|e| e.get("primary") == Some(&Value::Bool(true)))
        .count();
    if primaries > 1 {
        return Err(invalid_value(format!(
            "'{}' has {primaries} values with \"primary\": true; at most one may be primary",
            def.name
        )));
    }
    Ok(())
}

fn normalize_single(
    def: &'static AttributeDef,
    value: Value,
    label: &str,
) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    match def.ty {
        AttrType::Boolean => match coerce_bool(&value) {
            Some(b) => Ok(Some(Value::Bool(b))),
            None => Err(invalid_value(format!(
                "'{label}' must be true or false (or the strings \"True\"/\"False\"), not {}",
                describe(&value)
            ))),
        },
        AttrType::String | AttrType::DateTime | AttrType::Reference | AttrType::Binary => {
            match value {
                Value::String(s) if def.indexed => {
                    check_indexed_len(label, &s)?;
                    Ok(Some(Value::String(s)))
                }
                Value::String(_) => Ok(Some(value)),
                other => Err(invalid_value(format!(
                    "'{label}' must be a string, not {}",
                    describe(&other)
                ))),
            }
        }
        AttrType::Integer => match &value {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Some(value)),
            other => Err(invalid_value(format!(
                "'{label}' must be a whole number, not {}",
                describe(other)
            ))),
        },
        AttrType::Decimal => match &value {
            Value::Number(_) => Ok(Some(value)),
            other => Err(invalid_value(format!(
                "'{label}' must be a number, not {}",
                describe(other)
            ))),
        },
        AttrType::Complex => normalize_complex(def, value, label),
    }
}

fn normalize_complex(
    def: &'static AttributeDef,
    value: Value,
    label: &str,
) -> Result<Option<Value>, ScimError> {
    let obj = match value {
        Value::Object(obj) => obj,
        // `"emails": ["a@example.com"]`, `"members": ["id"]`: a bare string
        // stands for the `value` sub-attribute.
        Value::String(s) if schema::find_sub_attribute(def, "value").is_some() => {
            let mut m = Map::new();
            m.insert("value".to_owned(), Value::String(s));
            m
        }
        other => {
            let subs: Vec<&str> = def.sub_attributes.iter().map(|s| s.name).collect();
            return Err(invalid_value(format!(
                "'{label}' must be an object with the sub-attributes {}, not {}",
                subs.join(", "),
                describe(&other)
            )));
        }
    };
    let mut out = Map::new();
    for (key, v) in obj {
        // Unknown sub-attributes are ignored like unknown attributes (RFC 7644
        // §3.3 lets the server ignore what it does not store), and read-only
        // ones are ignored as RFC 7643 §2.2 prescribes for client input.
        let Some(sub) = schema::find_sub_attribute(def, &key) else {
            continue;
        };
        if sub.is_read_only() {
            continue;
        }
        let sub_label = format!("{label}.{}", sub.name);
        if let Some(v) = normalize_value(sub, v, &sub_label)? {
            out.insert(sub.name.to_owned(), v);
        }
    }
    if out.is_empty() {
        Ok(None)
    } else {
        Ok(Some(Value::Object(out)))
    }
}

/// Refuses a value of an indexed attribute that no index entry could hold
/// (see [`MAX_INDEXED_BYTES`]).
pub(crate) fn check_indexed_len(label: &str, value: &str) -> Result<(), ScimError> {
    if value.len() > MAX_INDEXED_BYTES {
        return Err(invalid_value(format!(
            "'{label}' is {} bytes long; the service stores at most {MAX_INDEXED_BYTES} bytes in \
             userName, displayName, externalId and emails.value",
            value.len()
        )));
    }
    Ok(())
}

/// A short description of a client value for error details (never the
/// whole value: it may be large).
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() <= 40 => format!("the string \"{s}\""),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        other => json_kind(other).to_owned(),
    }
}

/// Normalises the enterprise `manager`: a bare id string, `{"value": id}`, or
/// an array holding one such value all become `{"value": id}`; `""`, null,
/// `{"value": ""}` and `[]` mean "no manager" (`Ok(None)`), which is how
/// Entra ID clears a manager.
pub(crate) fn normalize_manager(value: Value) -> Result<Option<Value>, ScimError> {
    let id = match value {
        Value::Null => return Ok(None),
        Value::String(s) => s,
        Value::Object(obj) => match obj
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("value"))
        {
            Some((_, Value::String(s))) => s,
            Some((_, Value::Null)) | None => return Ok(None),
            Some((_, other)) => {
                return Err(invalid_value(format!(
                    "manager.value must be the manager's user id as a string, not {}",
                    describe(&other)
                )));
            }
        },
        Value::Array(items) => {
            let mut items = items.into_iter();
            let first = items.next();
            if items.next().is_some() {
                return Err(invalid_value(
                    "manager takes a single value: send {\"value\": \"<manager id>\"}",
                ));
            }
            return match first {
                None => Ok(None),
                Some(Value::Array(_)) => Err(invalid_value(
                    "manager must be a user id or {\"value\": \"<manager id>\"}, not a nested array",
                )),
                Some(v) => normalize_manager(v),
            };
        }
        other => {
            return Err(invalid_value(format!(
                "manager must be a user id or {{\"value\": \"<manager id>\"}}, not {}",
                describe(&other)
            )));
        }
    };
    if id.is_empty() {
        return Ok(None);
    }
    let mut m = Map::new();
    m.insert("value".to_owned(), Value::String(id));
    Ok(Some(Value::Object(m)))
}

/// Rejects two elements with the same `type` (compared ignoring case) in
/// the attributes listed in [`TYPE_UNIQUE_ATTRIBUTES`].
pub(crate) fn check_unique_types(def: &AttributeDef, value: &Value) -> Result<(), ScimError> {
    if !TYPE_UNIQUE_ATTRIBUTES.contains(&def.name) {
        return Ok(());
    }
    let Value::Array(items) = value else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for t in items
        .iter()
        .filter_map(|e| e.get("type"))
        .filter_map(Value::as_str)
    {
        if !seen.insert(t.to_lowercase()) {
            return Err(invalid_value(format!(
                "'{}' has more than one element of type \"{t}\"; each type may appear once",
                def.name
            )));
        }
    }
    Ok(())
}

/// Fails when multi-valued `def` would hold more than
/// [`MAX_ATTRIBUTE_VALUES`] values. `members` has its own limit
/// ([`check_member_count`]) and is let through.
pub(crate) fn check_value_count(def: &AttributeDef, count: usize) -> Result<(), ScimError> {
    if def.name == "members" || count <= MAX_ATTRIBUTE_VALUES {
        return Ok(());
    }
    // tooMany, as for too many member ids (see check_member_count).
    Err(ScimError::bad_request(
        ScimType::TooMany,
        format!(
            "'{}' would hold {count} values; at most {MAX_ATTRIBUTE_VALUES} are accepted in one \
             multi-valued attribute",
            def.name
        ),
    ))
}

/// Merges `src` into `dst` when both are objects (keys of `src` win);
/// otherwise `src` replaces `dst`.
pub(crate) fn merge_into(dst: &mut Value, src: Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                d.insert(k, v);
            }
        }
        (d, s) => *d = s,
    }
}

/// The member ids in a `members` value: an array of `{"value": id}` objects
/// or bare id strings, or a single one of those. `$ref`, `display` and
/// `type` are ignored. Empty ids are rejected (400 invalidValue).
pub(crate) fn member_ids(value: &Value) -> Result<Vec<String>, ScimError> {
    let items: Vec<&Value> = match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let id = match item {
            Value::String(s) => s,
            Value::Object(_) => match get_ci(item, "value") {
                Some(Value::String(s)) => s,
                Some(other) => {
                    return Err(invalid_value(format!(
                        "members.value must be a user id string, not {}",
                        describe(other)
                    )));
                }
                None => {
                    return Err(invalid_value(
                        "each member needs a \"value\" holding the member's user id",
                    ));
                }
            },
            other => {
                return Err(invalid_value(format!(
                    "each member must be {{\"value\": \"<user id>\"}}, not {}",
                    describe(other)
                )));
            }
        };
        if id.trim().is_empty() {
            return Err(invalid_value("a member's \"value\" (its user id) is empty"));
        }
        ids.push(id.clone());
    }
    Ok(ids)
}

/// Fails when a request carries more than [`MAX_MEMBER_IDS`] member ids.
pub(crate) fn check_member_count(count: usize) -> Result<(), ScimError> {
    if count > MAX_MEMBER_IDS {
        // RFC 7644 defines `tooMany` for queries, but it is the one keyword
        // that says "more than the server will process", which is the case
        // here; `invalidSyntax` would wrongly call a well-formed body
        // malformed. Entra treats any 400 the same way (escrow, retry).
        return Err(ScimError::bad_request(
            ScimType::TooMany,
            format!(
                "the request names {count} members; at most {MAX_MEMBER_IDS} are accepted per \
                 request, send the rest in further PATCH requests"
            ),
        ));
    }
    Ok(())
}

/// Where a body key lands: a core attribute or an extension attribute, and
/// the sub-attribute when the key was dotted.
struct KeyTarget {
    def: &'static AttributeDef,
    in_extension: bool,
    sub: Option<&'static AttributeDef>,
}

fn body_key_target(kind: ResourceKind, key: &str) -> Option<KeyTarget> {
    let path = parse_attr_path(key).ok()?;
    // Unqualified keys of a body are core attributes (RFC 7643 §3); the
    // enterprise fallback of `resolve_attribute` is meant for filters.
    if path.urn.is_none() {
        let def = kind.core_schema().attribute(&path.name)?;
        let sub = match &path.sub {
            Some(s) => Some(schema::find_sub_attribute(def, s)?),
            None => None,
        };
        return Some(KeyTarget {
            def,
            in_extension: false,
            sub,
        });
    }
    let r = schema::resolve_attribute(kind, &path)?;
    Some(KeyTarget {
        def: r.attr,
        in_extension: r.in_extension(),
        sub: r.sub,
    })
}

fn insert_attr(
    map: &mut Map<String, Value>,
    def: &AttributeDef,
    value: Value,
) -> Result<(), ScimError> {
    match map.get_mut(def.name) {
        None => {
            map.insert(def.name.to_owned(), value);
            Ok(())
        }
        // `name` and `name.givenName` (or `NAME`) both given: merge.
        Some(existing) if existing.is_object() && value.is_object() => {
            merge_into(existing, value);
            Ok(())
        }
        Some(_) => Err(ScimError::bad_request(
            ScimType::InvalidSyntax,
            format!(
                "'{}' is given more than once (attribute names are case-insensitive)",
                def.name
            ),
        )),
    }
}

fn add_body_attr(
    core: &mut Map<String, Value>,
    ext: &mut Map<String, Value>,
    target: KeyTarget,
    value: Value,
) -> Result<(), ScimError> {
    let KeyTarget {
        def,
        in_extension,
        sub,
    } = target;
    if def.is_read_only() || sub.is_some_and(|s| s.is_read_only()) {
        // RFC 7643 §2.2: read-only values sent by a client are ignored.
        return Ok(());
    }
    let value = match sub {
        Some(s) => {
            let mut m = Map::new();
            m.insert(s.name.to_owned(), value);
            Value::Object(m)
        }
        None => value,
    };
    let Some(v) = normalize_value(def, value, def.name)? else {
        return Ok(());
    };
    let map = if in_extension { ext } else { core };
    insert_attr(map, def, v)
}

/// Validates and normalises a POST or PUT body for `kind` (see the module
/// docs for the normal form).
///
/// Tolerates what Entra ID sends: unknown schema URIs next to the core one
/// (the ADSCIM Group URI, a typo'd enterprise URI), `null` attributes, a
/// client `meta`, `"active": "True"`. Unknown attributes are dropped (RFC
/// 7644 §3.3); read-only ones (`id`, `meta`, `groups`) are ignored.
///
/// For Groups the normalised `members` stay in the result so that
/// [`group_member_ids`] can read them; the store keeps membership in its own
/// table and should not persist this array.
pub fn validate_resource(kind: ResourceKind, body: Value) -> Result<Value, ScimError> {
    let core_urn = kind.core_schema().id;
    let Value::Object(body) = body else {
        return Err(ScimError::bad_request(
            ScimType::InvalidSyntax,
            format!(
                "the request body must be a JSON object such as {{\"schemas\": [\"{core_urn}\"], ...}}"
            ),
        ));
    };
    let schemas = body
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("schemas"))
        .map(|(_, v)| v);
    let fix = format!("send \"schemas\": [\"{core_urn}\"]");
    match schemas {
        None | Some(Value::Null) => {
            return Err(ScimError::bad_request(
                ScimType::InvalidSyntax,
                format!("the body has no \"schemas\"; {fix}"),
            ));
        }
        Some(Value::Array(list)) => {
            let has_core = list
                .iter()
                .filter_map(Value::as_str)
                .any(|s| s.trim().eq_ignore_ascii_case(core_urn));
            if !has_core {
                return Err(invalid_value(format!(
                    "\"schemas\" does not include the {} schema; {fix}",
                    kind.name()
                )));
            }
        }
        Some(_) => {
            return Err(ScimError::bad_request(
                ScimType::InvalidSyntax,
                format!("\"schemas\" must be an array of schema URIs; {fix}"),
            ));
        }
    }

    let mut core = Map::new();
    let mut ext = Map::new();
    for (key, value) in body {
        if key.eq_ignore_ascii_case("schemas") || value.is_null() {
            continue;
        }
        if let Some(ext_schema) = kind
            .extensions()
            .iter()
            .find(|s| s.id.eq_ignore_ascii_case(&key))
        {
            let Value::Object(inner) = value else {
                return Err(invalid_value(format!(
                    "\"{}\" must be an object holding the extension's attributes, not {}",
                    ext_schema.id,
                    describe(&value)
                )));
            };
            for (k, v) in inner {
                if v.is_null() {
                    continue;
                }
                let Ok(path) = parse_attr_path(&k) else {
                    continue;
                };
                let Some(def) = ext_schema.attribute(&path.name) else {
                    continue;
                };
                let sub = match &path.sub {
                    Some(s) => match schema::find_sub_attribute(def, s) {
                        Some(sub) => Some(sub),
                        None => continue,
                    },
                    None => None,
                };
                let target = KeyTarget {
                    def,
                    in_extension: true,
                    sub,
                };
                add_body_attr(&mut core, &mut ext, target, v)?;
            }
            continue;
        }
        if let Some(target) = body_key_target(kind, &key) {
            add_body_attr(&mut core, &mut ext, target, value)?;
        }
    }

    match kind {
        ResourceKind::User => {
            if core
                .get("userName")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                return Err(invalid_value(
                    "userName is required: send a non-empty \"userName\" string",
                ));
            }
        }
        ResourceKind::Group => {
            if core
                .get("displayName")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                return Err(invalid_value(
                    "displayName is required: send a non-empty \"displayName\" string",
                ));
            }
            if let Some(members) = core.get("members") {
                check_member_count(members.as_array().map_or(1, Vec::len))?;
                // What the group's members are read as is valid too: an
                // accepted group never fails later for its member ids.
                member_ids(members)?;
            }
        }
    }

    let mut schemas = vec![Value::String(core_urn.to_owned())];
    let mut out = core;
    if !ext.is_empty() {
        schemas.push(Value::String(ENTERPRISE_USER_SCHEMA.to_owned()));
        out.insert(ENTERPRISE_USER_SCHEMA.to_owned(), Value::Object(ext));
    }
    out.insert("schemas".to_owned(), Value::Array(schemas));
    Ok(Value::Object(out))
}

/// The User columns the service indexes and uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFields {
    /// `userName`, as sent (compare it case-insensitively).
    pub user_name: String,
    /// `externalId` (case-exact).
    pub external_id: Option<String>,
    /// `displayName`.
    pub display_name: Option<String>,
    /// `active`; true when absent (RFC 7643 does not default it, but a user
    /// Entra provisions without the IsSoftDeleted mapping is meant to be in).
    pub active: bool,
    /// The address to send mail to: see [`user_fields`].
    pub email: Option<String>,
}

fn opt_string(resource: &Value, key: &str) -> Option<String> {
    get_ci(resource, key)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// True for `local@domain` with a dot inside the domain and no spaces: the
/// test for "this userName is an email address".
pub fn looks_like_email(s: &str) -> bool {
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && !s.chars().any(char::is_whitespace)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

/// A string attribute the store indexes, refused when no index entry
/// could hold it. Normalisation checks what a client sends; this checks
/// what is stored, which a PATCH may also build from a path's filter
/// (`emails[value eq "..."].type`).
fn indexed_string(resource: &Value, key: &str) -> Result<Option<String>, ScimError> {
    let value = opt_string(resource, key);
    if let Some(v) = &value {
        check_indexed_len(key, v)?;
    }
    Ok(value)
}

/// Derives the indexed User columns from a normalised resource.
///
/// `email` is the primary email's value, else the `type: "work"` email's,
/// else the first email's, else `userName` when it looks like an address.
pub fn user_fields(resource: &Value) -> Result<UserFields, ScimError> {
    let user_name = indexed_string(resource, "userName")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            invalid_value("userName is required: send a non-empty \"userName\" string")
        })?;
    let active = match get_ci(resource, "active") {
        None | Some(Value::Null) => true,
        Some(v) => coerce_bool(v).ok_or_else(|| {
            invalid_value(format!(
                "'active' must be true or false, not {}",
                describe(v)
            ))
        })?,
    };
    let emails: Vec<&Value> = match get_ci(resource, "emails") {
        Some(Value::Array(items)) => items.iter().collect(),
        _ => Vec::new(),
    };
    for value in emails.iter().filter_map(|e| get_ci(e, "value")?.as_str()) {
        check_indexed_len("emails.value", value)?;
    }
    let value_of = |e: &&Value| {
        get_ci(e, "value")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let primary = emails
        .iter()
        .filter(|e| get_ci(e, "primary").and_then(coerce_bool) == Some(true))
        .find_map(value_of);
    let work = || {
        emails
            .iter()
            .filter(|e| {
                get_ci(e, "type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case("work"))
            })
            .find_map(value_of)
    };
    let email = primary
        .or_else(work)
        .or_else(|| emails.iter().find_map(value_of))
        .or_else(|| looks_like_email(&user_name).then(|| user_name.clone()));
    Ok(UserFields {
        external_id: indexed_string(resource, "externalId")?,
        display_name: indexed_string(resource, "displayName")?,
        active,
        email,
        user_name,
    })
}

/// The address to invite a user at, or 400 invalidValue saying what Entra
/// must send: the service cannot onboard a user it cannot email.
pub fn require_email(fields: &UserFields) -> Result<&str, ScimError> {
    fields.email.as_deref().ok_or_else(|| {
        invalid_value(
            "the user has no email address: send emails[type eq \"work\"].value or a userName \
             that is an email address",
        )
    })
}

/// The Group columns the service indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFields {
    /// `displayName`, unique per tenant ignoring case.
    pub display_name: String,
    /// `externalId` (Entra's objectId by default).
    pub external_id: Option<String>,
}

/// Derives the indexed Group columns from a normalised resource.
pub fn group_fields(resource: &Value) -> Result<GroupFields, ScimError> {
    let display_name = indexed_string(resource, "displayName")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            invalid_value("displayName is required: send a non-empty \"displayName\" string")
        })?;
    Ok(GroupFields {
        display_name,
        external_id: indexed_string(resource, "externalId")?,
    })
}

/// The member ids of a Group POST/PUT body (raw or normalised), in order,
/// without duplicates. Absent or null `members` gives an empty list; more
/// than [`MAX_MEMBER_IDS`] is 400 tooMany; an empty id is 400 invalidValue.
pub fn group_member_ids(body: &Value) -> Result<Vec<String>, ScimError> {
    let Some(members) = get_ci(body, "members") else {
        return Ok(Vec::new());
    };
    if let Value::Array(items) = members {
        check_member_count(items.len())?;
    }
    let ids = member_ids(members)?;
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    for id in ids {
        if seen.insert(id.clone()) {
            out.push(id);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Projection (RFC 7644 §3.9)
// ---------------------------------------------------------------------------

fn key_ci(map: &Map<String, Value>, name: &str) -> Option<String> {
    if map.contains_key(name) {
        return Some(name.to_owned());
    }
    map.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

/// Where a projection path points inside a resource object.
enum Selection {
    /// A whole extension object (`attributes=urn:...:enterprise:2.0:User`).
    Extension(&'static str),
    /// An attribute, optionally one sub-attribute of it.
    Attr {
        container: Option<&'static str>,
        name: &'static str,
        sub: Option<&'static str>,
        always: bool,
    },
}

fn select(kind: ResourceKind, path: &AttrPath) -> Option<Selection> {
    if let Some(s) = schema::path_names_schema(kind, path) {
        if s.id == kind.core_schema().id {
            return None;
        }
        return Some(Selection::Extension(s.id));
    }
    let r = schema::resolve_attribute(kind, path)?;
    Some(Selection::Attr {
        container: r.in_extension().then_some(r.schema.id),
        name: r.attr.name,
        sub: r.sub.map(|s| s.name),
        always: r.attr.returned == Returned::Always || r.attr.name == "meta",
    })
}

fn copy_selected(
    src: &Map<String, Value>,
    dst: &mut Map<String, Value>,
    name: &str,
    sub: Option<&str>,
) {
    let Some(key) = key_ci(src, name) else { return };
    let Some(value) = src.get(&key) else { return };
    let Some(sub) = sub else {
        dst.insert(key, value.clone());
        return;
    };
    let pick = |e: &Value| -> Value {
        let mut m = Map::new();
        let found = e
            .as_object()
            .and_then(|obj| key_ci(obj, sub).and_then(|k| obj.get(&k).map(|v| (k, v))));
        if let Some((k, v)) = found {
            m.insert(k, v.clone());
        }
        Value::Object(m)
    };
    let picked = match value {
        Value::Array(items) => Value::Array(items.iter().map(pick).collect()),
        other => pick(other),
    };
    match dst.get_mut(&key) {
        // Two sub-attributes of one attribute (`emails.value,emails.type`):
        // merge element by element.
        Some(Value::Array(existing)) => {
            if let Value::Array(new) = picked {
                for (e, n) in existing.iter_mut().zip(new) {
                    merge_into(e, n);
                }
            }
        }
        Some(existing @ Value::Object(_)) => merge_into(existing, picked),
        _ => {
            dst.insert(key, picked);
        }
    }
}

fn remove_selected(map: &mut Map<String, Value>, name: &str, sub: Option<&str>) {
    let Some(key) = key_ci(map, name) else { return };
    let Some(sub) = sub else {
        map.remove(&key);
        return;
    };
    let strip = |e: &mut Value| {
        let found = e.as_object().and_then(|obj| key_ci(obj, sub));
        if let (Some(obj), Some(k)) = (e.as_object_mut(), found) {
            obj.remove(&k);
        }
    };
    match map.get_mut(&key) {
        Some(Value::Array(items)) => items.iter_mut().for_each(strip),
        Some(v) => strip(v),
        None => {}
    }
}

/// Applies `attributes=` / `excludedAttributes=` to a resource about to be
/// returned (RFC 7644 §3.9). With `attributes`, only the named attributes
/// (or sub-attributes, or whole extensions) are kept; then everything named
/// in `excluded` is removed. `schemas`, `id` and `meta` are always kept.
/// Unknown paths are ignored, as a projection cannot fail.
pub fn project(
    kind: ResourceKind,
    resource: &mut Value,
    attributes: &[AttrPath],
    excluded: &[AttrPath],
) {
    let Value::Object(obj) = resource else { return };
    if !attributes.is_empty() {
        let mut kept = Map::new();
        for key in ["schemas", "id", "meta"] {
            if let Some((k, v)) = key_ci(obj, key).and_then(|k| obj.get(&k).map(|v| (k, v))) {
                kept.insert(k, v.clone());
            }
        }
        for path in attributes {
            match select(kind, path) {
                Some(Selection::Extension(urn)) => copy_selected(obj, &mut kept, urn, None),
                Some(Selection::Attr {
                    container: None,
                    name,
                    sub,
                    ..
                }) => copy_selected(obj, &mut kept, name, sub),
                Some(Selection::Attr {
                    container: Some(urn),
                    name,
                    sub,
                    ..
                }) => {
                    let Some(src) = key_ci(obj, urn)
                        .and_then(|k| obj.get(&k))
                        .and_then(Value::as_object)
                    else {
                        continue;
                    };
                    let mut dst = match kept.remove(urn) {
                        Some(Value::Object(m)) => m,
                        _ => Map::new(),
                    };
                    copy_selected(src, &mut dst, name, sub);
                    if !dst.is_empty() {
                        kept.insert(urn.to_owned(), Value::Object(dst));
                    }
                }
                None => {}
            }
        }
        *obj = kept;
    }
    for path in excluded {
        match select(kind, path) {
            Some(Selection::Extension(urn)) => remove_selected(obj, urn, None),
            Some(Selection::Attr { always: true, .. }) | None => {}
            Some(Selection::Attr {
                container: None,
                name,
                sub,
                ..
            }) => remove_selected(obj, name, sub),
            Some(Selection::Attr {
                container: Some(urn),
                name,
                sub,
                ..
            }) => {
                let Some(k) = key_ci(obj, urn) else { continue };
                let now_empty = match obj.get_mut(&k) {
                    Some(Value::Object(ext)) => {
                        remove_selected(ext, name, sub);
                        ext.is_empty()
                    }
                    _ => false,
                };
                if now_empty {
                    obj.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::{GROUP_SCHEMA, USER_SCHEMA};
    use proptest::prelude::*;
    use serde_json::json;

    fn assert_err(r: Result<Value, ScimError>, status: u16, t: ScimType) -> ScimError {
        let e = r.expect_err("expected an error");
        assert_eq!(e.status, status, "{e}");
        assert_eq!(e.scim_type, Some(t), "{e}");
        e
    }

    fn entra_create_user() -> Value {
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
            "meta": {"resourceType": "User"},
            "name": {
                "formatted": "givenName familyName",
                "familyName": "familyName",
                "givenName": "givenName"
            },
            "roles": []
        })
    }

    #[test]
    fn entra_create_user_body_is_normalised() {
        let out = validate_resource(ResourceKind::User, entra_create_user()).unwrap();
        assert_eq!(
            out,
            json!({
                // Enterprise URI dropped: the body carries no enterprise data.
                "schemas": [USER_SCHEMA],
                "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
                "userName": "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
                "active": true,
                "emails": [{
                    "primary": true,
                    "type": "work",
                    "value": "Test_User_11bb11bb-cc22-dd33-ee44-55ff55ff55ff@testuser.com"
                }],
                "name": {
                    "formatted": "givenName familyName",
                    "familyName": "familyName",
                    "givenName": "givenName"
                }
            })
        );
    }

    #[test]
    fn entra_example_two_nulls_and_typoed_schema_are_tolerated() {
        let body = json!({
            "schemas": [USER_SCHEMA, "urn:ietf:params:scim:schemas:extension:enterprise:2.0User"],
            "userName": "UserName123",
            "active": true,
            "addresses": null,
            "displayName": "Test User",
            "emails": [{"primary": true, "type": "work", "value": "u@example.com"}],
            "phoneNumbers": null,
            "title": null,
            "manager": null,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": null}
        });
        let out = validate_resource(ResourceKind::User, body).unwrap();
        assert_eq!(out["schemas"], json!([USER_SCHEMA]));
        for gone in [
            "addresses",
            "phoneNumbers",
            "title",
            "manager",
            ENTERPRISE_USER_SCHEMA,
        ] {
            assert!(out.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn string_true_active_is_stored_as_a_boolean() {
        let mut body = entra_create_user();
        body["active"] = json!("True");
        let out = validate_resource(ResourceKind::User, body).unwrap();
        assert_eq!(out["active"], json!(true));
        let mut body = entra_create_user();
        body["active"] = json!("fALSE");
        assert_eq!(
            validate_resource(ResourceKind::User, body).unwrap()["active"],
            json!(false)
        );
    }

    #[test]
    fn non_boolean_active_is_invalid_value() {
        let mut body = entra_create_user();
        body["active"] = json!("yes");
        let e = assert_err(
            validate_resource(ResourceKind::User, body),
            400,
            ScimType::InvalidValue,
        );
        assert!(e.detail.contains("'active'"), "{}", e.detail);
    }

    #[test]
    fn missing_or_empty_user_name_is_invalid_value() {
        let mut body = entra_create_user();
        body.as_object_mut().unwrap().remove("userName");
        let e = assert_err(
            validate_resource(ResourceKind::User, body),
            400,
            ScimType::InvalidValue,
        );
        assert!(e.detail.starts_with("userName is required"));
        let mut body = entra_create_user();
        body["userName"] = json!("  ");
        assert_err(
            validate_resource(ResourceKind::User, body),
            400,
            ScimType::InvalidValue,
        );
        let mut body = entra_create_user();
        body["userName"] = json!(42);
        assert_err(
            validate_resource(ResourceKind::User, body),
            400,
            ScimType::InvalidValue,
        );
    }

    #[test]
    fn body_that_is_not_an_object_is_invalid_syntax() {
        assert_err(
            validate_resource(ResourceKind::User, json!([1, 2])),
            400,
            ScimType::InvalidSyntax,
        );
    }

    #[test]
    fn schemas_must_be_an_array_with_the_core_schema() {
        let e = assert_err(
            validate_resource(ResourceKind::User, json!({"userName": "a"})),
            400,
            ScimType::InvalidSyntax,
        );
        assert!(
            e.detail.contains(USER_SCHEMA),
            "fix-it names the URI: {}",
            e.detail
        );
        assert_err(
            validate_resource(
                ResourceKind::User,
                json!({"schemas": USER_SCHEMA, "userName": "a"}),
            ),
            400,
            ScimType::InvalidSyntax,
        );
        assert_err(
            validate_resource(
                ResourceKind::User,
                json!({"schemas": [GROUP_SCHEMA], "userName": "a"}),
            ),
            400,
            ScimType::InvalidValue,
        );
    }

    #[test]
    fn attribute_names_in_any_case_are_rekeyed_to_the_schema_spelling() {
        let body = json!({
            "SCHEMAS": [USER_SCHEMA],
            "USERNAME": "a@example.com",
            "Name": {"GivenName": "Ann", "FAMILYNAME": "Smith"},
            "Emails": [{"Value": "a@example.com", "TYPE": "work", "Primary": "true"}],
            "Urn:Ietf:Params:Scim:Schemas:Extension:Enterprise:2.0:User": {"Department": "Ops"}
        });
        let out = validate_resource(ResourceKind::User, body).unwrap();
        assert_eq!(
            out,
            json!({
                "schemas": [USER_SCHEMA, ENTERPRISE_USER_SCHEMA],
                "userName": "a@example.com",
                "name": {"givenName": "Ann", "familyName": "Smith"},
                "emails": [{"value": "a@example.com", "type": "work", "primary": true}],
                ENTERPRISE_USER_SCHEMA: {"department": "Ops"}
            })
        );
    }

    #[test]
    fn same_attribute_twice_in_different_case_is_invalid_syntax() {
        let body = json!({"schemas": [USER_SCHEMA], "userName": "a", "USERNAME": "b"});
        assert_err(
            validate_resource(ResourceKind::User, body),
            400,
            ScimType::InvalidSyntax,
        );
    }

    #[test]
    fn unknown_and_read_only_attributes_are_dropped() {
        let body = json!({
            "schemas": [USER_SCHEMA],
            "userName": "a",
            "id": "client-chosen",
            "meta": {"resourceType": "User"},
            "groups": [{"value": "g1"}],
            "userNaem": "misspelled",
            "urn:example:custom:2.0:User:color": "blue",
            ENTERPRISE_USER_SCHEMA: {"manager": {"value": "m1", "displayName": "Boss"}, "shoeSize": 9}
        });
        let out = validate_resource(ResourceKind::User, body).unwrap();
        assert_eq!(
            out,
            json!({
                "schemas": [USER_SCHEMA, ENTERPRISE_USER_SCHEMA],
                "userName": "a",
                ENTERPRISE_USER_SCHEMA: {"manager": {"value": "m1"}}
            })
        );
    }

    #[test]
    fn wrong_value_types_name_the_attribute_and_expected_type() {
        let cases = [
            (json!({"displayName": 5}), "'displayName' must be a string"),
            (json!({"name": "Ann"}), "'name' must be an object"),
            (
                json!({"emails": [{"value": true}]}),
                "'emails.value' must be a string",
            ),
            (
                json!({"emails": [{"primary": "maybe"}]}),
                "'emails.primary' must be true or false",
            ),
        ];
        for (extra, expected) in cases {
            let mut body = json!({"schemas": [USER_SCHEMA], "userName": "a"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let e = assert_err(
                validate_resource(ResourceKind::User, body),
                400,
                ScimType::InvalidValue,
            );
            assert!(e.detail.contains(expected), "{} / {expected}", e.detail);
        }
    }

    #[test]
    fn urn_qualified_top_level_keys_fold_into_the_extension_object() {
        let body = json!({
            "schemas": [USER_SCHEMA],
            "userName": "a",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department": "Retail",
            ENTERPRISE_USER_SCHEMA: {"employeeNumber": "701984"}
        });
        let out = validate_resource(ResourceKind::User, body).unwrap();
        assert_eq!(
            out[ENTERPRISE_USER_SCHEMA],
            json!({"department": "Retail", "employeeNumber": "701984"})
        );
        assert_eq!(out["schemas"], json!([USER_SCHEMA, ENTERPRISE_USER_SCHEMA]));
    }

    #[test]
    fn manager_forms_are_normalised_to_a_value_object() {
        for (sent, stored) in [
            (json!("271"), Some(json!({"value": "271"}))),
            (
                json!({"value": "271", "$ref": "../Users/271"}),
                Some(json!({"value": "271"})),
            ),
            (json!({"Value": "271"}), Some(json!({"value": "271"}))),
            (
                json!([{"$ref": "http://x/scim/Users/00aa", "value": "00aa"}]),
                Some(json!({"value": "00aa"})),
            ),
            (json!(""), None),
            (json!({"value": ""}), None),
            (json!([]), None),
        ] {
            let body = json!({"schemas": [USER_SCHEMA], "userName": "a", ENTERPRISE_USER_SCHEMA: {"manager": sent}});
            let out = validate_resource(ResourceKind::User, body).unwrap();
            assert_eq!(
                out.get(ENTERPRISE_USER_SCHEMA)
                    .map(|e| e["manager"].clone()),
                stored
            );
        }
        let body = json!({"schemas": [USER_SCHEMA], "userName": "a", ENTERPRISE_USER_SCHEMA: {"manager": 7}});
        assert_err(
            validate_resource(ResourceKind::User, body),
            400,
            ScimType::InvalidValue,
        );
        let body = json!({"schemas": [USER_SCHEMA], "userName": "a",
            ENTERPRISE_USER_SCHEMA: {"manager": [{"value": "a"}, {"value": "b"}]}});
        assert_err(
            validate_resource(ResourceKind::User, body),
            400,
            ScimType::InvalidValue,
        );
    }

    #[test]
    fn two_emails_of_one_type_are_invalid_value() {
        let body = json!({
            "schemas": [USER_SCHEMA],
            "userName": "a",
            "emails": [{"value": "a@x.com", "type": "work"}, {"value": "b@x.com", "type": "Work"}]
        });
        let e = assert_err(
            validate_resource(ResourceKind::User, body),
            400,
            ScimType::InvalidValue,
        );
        assert!(e.detail.contains("emails"));
        // Roles may repeat a type (Entra sends several roles of one type).
        let body = json!({
            "schemas": [USER_SCHEMA],
            "userName": "a",
            "roles": [{"value": "Admin", "type": "Role"}, {"value": "Reader", "type": "Role"}]
        });
        validate_resource(ResourceKind::User, body).unwrap();
    }

    #[test]
    fn two_primary_values_of_one_attribute_are_invalid_value() {
        for (attr, items) in [
            (
                "emails",
                json!([{"value": "a@x.com", "type": "work", "primary": true},
                       {"value": "b@x.com", "type": "home", "primary": "True"}]),
            ),
            (
                "phoneNumbers",
                json!([{"value": "1", "primary": true}, {"value": "2", "primary": true}]),
            ),
            (
                "addresses",
                json!([{"locality": "Oslo", "type": "work", "primary": true},
                       {"locality": "Bergen", "type": "home", "primary": true}]),
            ),
        ] {
            let mut body = json!({"schemas": [USER_SCHEMA], "userName": "a"});
            body[attr] = items;
            let e = assert_err(
                validate_resource(ResourceKind::User, body),
                400,
                ScimType::InvalidValue,
            );
            assert!(e.detail.contains(attr), "{attr}: {}", e.detail);
        }
        // One primary among values marked false or not marked is fine.
        let body = json!({
            "schemas": [USER_SCHEMA],
            "userName": "a",
            "emails": [{"value": "a@x.com", "primary": true},
                       {"value": "b@x.com", "primary": false},
                       {"value": "c@x.com"}]
        });
        validate_resource(ResourceKind::User, body).unwrap();
    }

    #[test]
    fn indexed_values_are_limited_to_max_indexed_bytes() {
        let user = |key: &str, value: Value| {
            let mut body = json!({"schemas": [USER_SCHEMA], "userName": "a@b.c"});
            body[key] = value;
            validate_resource(ResourceKind::User, body)
        };
        let at_limit = "é".repeat(MAX_INDEXED_BYTES / 2);
        let over = format!("{at_limit}x");
        for key in ["userName", "displayName", "externalId"] {
            user(key, json!(at_limit)).unwrap();
            let e = assert_err(user(key, json!(over)), 400, ScimType::InvalidValue);
            assert!(e.detail.contains("at most 1024 bytes"), "{}", e.detail);
        }
        assert_err(
            user("emails", json!([{"value": over}])),
            400,
            ScimType::InvalidValue,
        );
        // Attributes that are not indexed may be longer.
        user("title", json!("t".repeat(3000))).unwrap();
        user("emails", json!([{"value": "a@b.c", "display": over}])).unwrap();
        // What is stored is checked too, however it was built.
        let stored = json!({"userName": "a@b.c", "emails": [{"value": over}]});
        assert_eq!(
            user_fields(&stored).unwrap_err().scim_type,
            Some(ScimType::InvalidValue)
        );
        let group = json!({"displayName": "T", "externalId": over});
        assert_eq!(
            group_fields(&group).unwrap_err().scim_type,
            Some(ScimType::InvalidValue)
        );
    }

    #[test]
    fn values_are_stored_exactly_as_sent() {
        let body = json!({
            "schemas": [USER_SCHEMA],
            "userName": "  MiXeD@Example.COM ",
            "phoneNumbers": [{"value": "55555555555", "type": "work"}]
        });
        let out = validate_resource(ResourceKind::User, body).unwrap();
        assert_eq!(out["userName"], "  MiXeD@Example.COM ");
        assert_eq!(out["phoneNumbers"][0]["value"], "55555555555");
    }

    #[test]
    fn entra_create_group_body_with_adscim_uri_is_accepted() {
        let body = json!({
            "schemas": [GROUP_SCHEMA, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
            "displayName": "displayName",
            "meta": {"resourceType": "Group"}
        });
        let out = validate_resource(ResourceKind::Group, body).unwrap();
        assert_eq!(
            out,
            json!({
                "schemas": [GROUP_SCHEMA],
                "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
                "displayName": "displayName"
            })
        );
    }

    #[test]
    fn group_members_are_kept_for_group_member_ids() {
        let body = json!({
            "schemas": [GROUP_SCHEMA],
            "displayName": "Team",
            "members": [{"value": "u1", "display": "Ann", "$ref": null}, "u2", {"value": "u1"}]
        });
        let out = validate_resource(ResourceKind::Group, body).unwrap();
        assert_eq!(
            out["members"],
            json!([{"value": "u1"}, {"value": "u2"}, {"value": "u1"}])
        );
        assert_eq!(group_member_ids(&out).unwrap(), ["u1", "u2"]);
    }

    #[test]
    fn group_without_display_name_is_invalid_value() {
        let e = assert_err(
            validate_resource(ResourceKind::Group, json!({"schemas": [GROUP_SCHEMA]})),
            400,
            ScimType::InvalidValue,
        );
        assert!(e.detail.starts_with("displayName is required"));
    }

    #[test]
    fn group_member_ids_reject_empty_ids_and_too_many() {
        assert_eq!(
            group_member_ids(&json!({"displayName": "x"})).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            group_member_ids(&json!({"members": null})).unwrap(),
            Vec::<String>::new()
        );
        let e = group_member_ids(&json!({"members": [{"value": ""}]})).unwrap_err();
        assert_eq!((e.status, e.scim_type), (400, Some(ScimType::InvalidValue)));
        let e = group_member_ids(&json!({"members": [{"display": "no id"}]})).unwrap_err();
        assert_eq!((e.status, e.scim_type), (400, Some(ScimType::InvalidValue)));
        let many: Vec<Value> = (0..=MAX_MEMBER_IDS)
            .map(|i| json!({"value": i.to_string()}))
            .collect();
        let e = group_member_ids(&json!({"members": many})).unwrap_err();
        assert_eq!((e.status, e.scim_type), (400, Some(ScimType::TooMany)));
    }

    #[test]
    fn more_values_than_an_attribute_may_hold_is_too_many() {
        let phones = |n: usize| -> Vec<Value> {
            (0..n)
                .map(|i| json!({"value": i.to_string(), "type": format!("t{i}")}))
                .collect()
        };
        let mut body = entra_create_user();
        body["phoneNumbers"] = json!(phones(MAX_ATTRIBUTE_VALUES));
        assert!(validate_resource(ResourceKind::User, body.clone()).is_ok());
        body["phoneNumbers"] = json!(phones(MAX_ATTRIBUTE_VALUES + 1));
        let e = assert_err(
            validate_resource(ResourceKind::User, body),
            400,
            ScimType::TooMany,
        );
        assert!(e.detail.contains("'phoneNumbers'"), "{}", e.detail);
        // Members have their own, higher limit.
        let members: Vec<Value> = (0..MAX_MEMBER_IDS).map(|i| json!(i.to_string())).collect();
        let group = json!({"schemas": [GROUP_SCHEMA], "displayName": "g", "members": members});
        assert!(validate_resource(ResourceKind::Group, group).is_ok());
    }

    #[test]
    fn user_fields_prefer_the_primary_email() {
        let u = json!({
            "userName": "ann",
            "externalId": "e1",
            "displayName": "Ann",
            "emails": [
                {"value": "home@x.com", "type": "home"},
                {"value": "work@x.com", "type": "work"},
                {"value": "main@x.com", "type": "other", "primary": true}
            ]
        });
        let f = user_fields(&u).unwrap();
        assert_eq!(
            f,
            UserFields {
                user_name: "ann".into(),
                external_id: Some("e1".into()),
                display_name: Some("Ann".into()),
                active: true,
                email: Some("main@x.com".into()),
            }
        );
    }

    #[test]
    fn user_fields_fall_back_to_work_then_first_email_then_user_name() {
        let u = json!({"userName": "ann", "active": false, "emails": [
            {"value": "home@x.com", "type": "home"}, {"value": "work@x.com", "type": "work"}]});
        let f = user_fields(&u).unwrap();
        assert_eq!(f.email.as_deref(), Some("work@x.com"));
        assert!(!f.active);
        let u = json!({"userName": "ann", "emails": [{"value": "home@x.com", "type": "home"}]});
        assert_eq!(
            user_fields(&u).unwrap().email.as_deref(),
            Some("home@x.com")
        );
        let u = json!({"userName": "ann@contoso.com"});
        assert_eq!(
            user_fields(&u).unwrap().email.as_deref(),
            Some("ann@contoso.com")
        );
        let u = json!({"userName": "Test_User_00aa00aa"});
        assert_eq!(user_fields(&u).unwrap().email, None);
    }

    #[test]
    fn user_without_any_address_fails_require_email_with_a_fix() {
        let f = user_fields(&json!({"userName": "cf4d78e8-cc4f"})).unwrap();
        let e = require_email(&f).unwrap_err();
        assert_eq!((e.status, e.scim_type), (400, Some(ScimType::InvalidValue)));
        assert_eq!(
            e.detail,
            "the user has no email address: send emails[type eq \"work\"].value or a userName \
             that is an email address"
        );
        let f = user_fields(&json!({"userName": "a@b.io"})).unwrap();
        assert_eq!(require_email(&f).unwrap(), "a@b.io");
    }

    #[test]
    fn email_detection_needs_one_at_and_a_dotted_domain() {
        assert!(looks_like_email("a@b.co"));
        for not in [
            "ab.co", "a@b", "@b.co", "a@.b", "a@b.", "a@b@c.d", "a b@c.d",
        ] {
            assert!(!looks_like_email(not), "{not}");
        }
    }

    #[test]
    fn group_fields_need_a_display_name() {
        let g = group_fields(&json!({"displayName": "Team", "externalId": "x"})).unwrap();
        assert_eq!(
            g,
            GroupFields {
                display_name: "Team".into(),
                external_id: Some("x".into())
            }
        );
        let e = group_fields(&json!({"displayName": ""})).unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::InvalidValue));
    }

    fn stored_user() -> Value {
        json!({
            "schemas": [USER_SCHEMA, ENTERPRISE_USER_SCHEMA],
            "id": "u1",
            "meta": {"resourceType": "User", "created": "2024-01-01T00:00:00Z"},
            "userName": "ann@x.com",
            "displayName": "Ann",
            "emails": [{"value": "ann@x.com", "type": "work", "primary": true}],
            ENTERPRISE_USER_SCHEMA: {"department": "Ops", "employeeNumber": "7"}
        })
    }

    fn paths(list: &[&str]) -> Vec<AttrPath> {
        list.iter().map(|p| parse_attr_path(p).unwrap()).collect()
    }

    #[test]
    fn attributes_parameter_keeps_only_named_attributes_plus_always_returned() {
        let mut u = stored_user();
        project(
            ResourceKind::User,
            &mut u,
            &paths(&["userName", "emails.value"]),
            &[],
        );
        assert_eq!(
            u,
            json!({
                "schemas": [USER_SCHEMA, ENTERPRISE_USER_SCHEMA],
                "id": "u1",
                "meta": {"resourceType": "User", "created": "2024-01-01T00:00:00Z"},
                "userName": "ann@x.com",
                "emails": [{"value": "ann@x.com"}]
            })
        );
    }

    #[test]
    fn attributes_parameter_selects_enterprise_attributes_and_whole_extensions() {
        let mut u = stored_user();
        let ent = format!("{ENTERPRISE_USER_SCHEMA}:department");
        project(ResourceKind::User, &mut u, &paths(&[&ent]), &[]);
        assert_eq!(u[ENTERPRISE_USER_SCHEMA], json!({"department": "Ops"}));
        assert!(u.get("userName").is_none());
        let mut u = stored_user();
        project(
            ResourceKind::User,
            &mut u,
            &paths(&[ENTERPRISE_USER_SCHEMA]),
            &[],
        );
        assert_eq!(
            u[ENTERPRISE_USER_SCHEMA],
            json!({"department": "Ops", "employeeNumber": "7"})
        );
    }

    #[test]
    fn excluded_attributes_are_removed_but_id_and_meta_stay() {
        let mut u = stored_user();
        let ent = format!("{ENTERPRISE_USER_SCHEMA}:department");
        project(
            ResourceKind::User,
            &mut u,
            &[],
            &paths(&["emails", "id", "meta", &ent]),
        );
        assert!(u.get("emails").is_none());
        assert_eq!(u["id"], "u1");
        assert!(u.get("meta").is_some());
        assert_eq!(u[ENTERPRISE_USER_SCHEMA], json!({"employeeNumber": "7"}));
        let mut g = json!({"schemas": [GROUP_SCHEMA], "id": "g1", "displayName": "T", "members": [{"value": "u1"}]});
        project(ResourceKind::Group, &mut g, &[], &paths(&["members"]));
        assert_eq!(
            g,
            json!({"schemas": [GROUP_SCHEMA], "id": "g1", "displayName": "T"})
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(vec!["True", "false", "", "work", "a@b.c", "x"])
                .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            let key = prop::sample::select(vec![
                "schemas",
                "userName",
                "USERNAME",
                "displayName",
                "name",
                "givenName",
                "emails",
                "value",
                "type",
                "primary",
                "active",
                "members",
                "manager",
                "id",
                "meta",
                ENTERPRISE_USER_SCHEMA,
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
                "roles",
                "addresses",
                "x",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key.prop_map(str::to_owned), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(384))]

        #[test]
        fn validation_never_panics_and_is_idempotent(mut body in arb_json(), kind_is_user in any::<bool>()) {
            let kind = if kind_is_user { ResourceKind::User } else { ResourceKind::Group };
            if let Some(obj) = body.as_object_mut() {
                obj.insert("schemas".into(), json!([kind.core_schema().id]));
            }
            if let Ok(out) = validate_resource(kind, body) {
                prop_assert_eq!(validate_resource(kind, out.clone()).ok(), Some(out.clone()));
                match kind {
                    ResourceKind::User => { user_fields(&out).unwrap(); }
                    ResourceKind::Group => {
                        group_fields(&out).unwrap();
                        group_member_ids(&out).unwrap();
                    }
                }
                let mut projected = out.clone();
                project(kind, &mut projected, &paths(&["userName", "emails.value"]), &paths(&["members"]));
            }
        }
    }
}
