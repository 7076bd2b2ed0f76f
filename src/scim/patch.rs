//! SCIM PATCH (RFC 7644 §3.5.2) with Microsoft Entra ID's dialects.
//!
//! [`parse_patch`] turns a request body into [`PatchOp`]s; [`apply_patch`]
//! applies them to a stored, normalised resource (see
//! `crate::scim::resource`) all-or-nothing. Group membership is not applied
//! to the JSON: it comes back as [`MemberChange`]s for the store, which keeps
//! members in a table.
//!
//! Entra ID specifics handled here (see ENTRA.md §2.4–2.7, §3):
//! capitalised ops (`"Replace"`), `"True"`/`"False"` strings for booleans,
//! path-less operations whose value keys are attribute paths
//! (`"name.givenName"`, `"urn:...:enterprise:2.0:User:employeeNumber"`),
//! `emails[type eq "work"].value` creating the element when missing, the
//! three manager forms and its removal by empty value, and `Remove` on
//! `members` with a value list removing only those members.

use std::fmt;

use serde_json::{Map, Value};

use crate::scim::error::{ScimError, ScimType};
use crate::scim::filter::{
    self, AttrPath, CompValue, CompareOp, Filter, get_ci, parse_patch_path_parts,
};
use crate::scim::resource::{
    check_member_count, check_unique_types, coerce_bool, is_manager, member_ids, merge_into,
    normalize_manager, normalize_value,
};
use crate::scim::schema::{
    self, AttrType, AttributeDef, PATCH_OP_SCHEMA, ResolvedAttr, ResourceKind, SchemaDef,
};

/// Most operations accepted in one PATCH request.
pub const MAX_PATCH_OPERATIONS: usize = 1000;

/// A PATCH operation kind; parsed case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Add a value (replace for single-valued attributes).
    Add,
    /// Remove a value.
    Remove,
    /// Replace a value.
    Replace,
}

impl OpKind {
    /// The operation name, lower-case.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Add => "add",
            OpKind::Remove => "remove",
            OpKind::Replace => "replace",
        }
    }
}

/// The target of a PATCH operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchPath {
    /// `userName`, `name.givenName`, `urn:...:User:department`.
    Attr(AttrPath),
    /// `emails[type eq "work"]` or `emails[type eq "work"].value`.
    Filtered {
        /// The multi-valued attribute.
        path: AttrPath,
        /// Which of its values the operation applies to.
        filter: Filter,
        /// The sub-attribute after `]`, if any.
        sub: Option<String>,
    },
}

impl fmt::Display for PatchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchPath::Attr(p) => write!(f, "{p}"),
            PatchPath::Filtered { path, filter, sub } => {
                write!(f, "{path}[{filter}]")?;
                if let Some(sub) = sub {
                    write!(f, ".{sub}")?;
                }
                Ok(())
            }
        }
    }
}

/// One parsed PATCH operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchOp {
    /// add / remove / replace.
    pub op: OpKind,
    /// The target; `None` means the resource itself (value is an object).
    pub path: Option<PatchPath>,
    /// The value as sent; `Some(Value::Null)` when the client sent `null`.
    pub value: Option<Value>,
}

/// A change to a Group's membership, for the store to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Add these user ids.
    Add(Vec<String>),
    /// Remove these user ids.
    Remove(Vec<String>),
    /// Remove every member.
    RemoveAll,
    /// Make these user ids the whole membership.
    ReplaceAll(Vec<String>),
}

fn syntax(detail: impl Into<String>) -> ScimError {
    ScimError::bad_request(ScimType::InvalidSyntax, detail)
}

fn invalid_path(detail: impl Into<String>) -> ScimError {
    ScimError::bad_request(ScimType::InvalidPath, detail)
}

fn invalid_value(detail: impl Into<String>) -> ScimError {
    ScimError::bad_request(ScimType::InvalidValue, detail)
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    // Member names of the PATCH message compare case-insensitively: Entra's
    // guidance is not to require case-sensitive structural elements.
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

const PATCH_SHAPE: &str = "send {\"schemas\": [\"urn:ietf:params:scim:api:messages:2.0:PatchOp\"], \
     \"Operations\": [{\"op\": \"replace\", \"path\": \"displayName\", \"value\": \"...\"}]}";

/// Parses a PATCH request body (RFC 7644 §3.5.2).
///
/// Errors: not a PatchOp message → 400 invalidSyntax; more than
/// [`MAX_PATCH_OPERATIONS`] → 400 tooMany; unknown `op` or add/replace
/// without `value` → 400 invalidSyntax; malformed `path` → 400 invalidPath;
/// `remove` without `path` → 400 noTarget.
pub fn parse_patch(body: &Value) -> Result<Vec<PatchOp>, ScimError> {
    let Some(obj) = body.as_object() else {
        return Err(syntax(format!(
            "the PATCH body must be a JSON object: {PATCH_SHAPE}"
        )));
    };
    let has_schema = match field(obj, "schemas") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|s| s.trim().eq_ignore_ascii_case(PATCH_OP_SCHEMA)),
        _ => false,
    };
    if !has_schema {
        return Err(syntax(format!(
            "the PATCH body's \"schemas\" must contain \"{PATCH_OP_SCHEMA}\": {PATCH_SHAPE}"
        )));
    }
    let ops = match field(obj, "Operations") {
        Some(Value::Array(ops)) if !ops.is_empty() => ops,
        Some(Value::Array(_)) => {
            return Err(syntax(format!("\"Operations\" is empty: {PATCH_SHAPE}")));
        }
        _ => {
            return Err(syntax(format!(
                "the PATCH body needs an \"Operations\" array: {PATCH_SHAPE}"
            )));
        }
    };
    if ops.len() > MAX_PATCH_OPERATIONS {
        // `tooMany` rather than `invalidSyntax`: the body is well-formed, it
        // is only larger than the service will process in one request, and
        // tooMany is the RFC keyword with that meaning (defined for queries).
        return Err(ScimError::bad_request(
            ScimType::TooMany,
            format!(
                "the PATCH has {} operations; at most {MAX_PATCH_OPERATIONS} are accepted per \
                 request, split it",
                ops.len()
            ),
        ));
    }
    let many = ops.len() > 1;
    ops.iter()
        .enumerate()
        .map(|(i, op)| parse_op(op).map_err(|e| number_error(e, i, many)))
        .collect()
}

fn number_error(mut e: ScimError, index: usize, many: bool) -> ScimError {
    if many {
        e.detail = format!("operation {}: {}", index + 1, e.detail);
    }
    e
}

fn parse_op(op: &Value) -> Result<PatchOp, ScimError> {
    let Some(o) = op.as_object() else {
        return Err(syntax(
            "each operation must be an object with \"op\", \"path\" and \"value\"",
        ));
    };
    let kind = match field(o, "op") {
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "add" => OpKind::Add,
            "remove" => OpKind::Remove,
            "replace" => OpKind::Replace,
            _ => {
                return Err(syntax(format!(
                    "\"op\": \"{s}\" is not a PATCH operation; use add, remove or replace"
                )));
            }
        },
        Some(other) => {
            return Err(syntax(format!(
                "\"op\" must be the string add, remove or replace, not {other}"
            )));
        }
        None => {
            return Err(syntax(
                "an operation has no \"op\"; use add, remove or replace",
            ));
        }
    };
    let path = match field(o, "path") {
        None | Some(Value::Null) => None,
        // Some clients send "" for "no path".
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(parse_patch_path(s)?),
        Some(other) => {
            return Err(invalid_path(format!(
                "\"path\" must be a string such as \"name.givenName\", not {other}"
            )));
        }
    };
    let value = field(o, "value").cloned();
    match (kind, &path, &value) {
        (OpKind::Remove, None, _) => Err(ScimError::bad_request(
            ScimType::NoTarget,
            "a remove operation needs a \"path\" naming what to remove",
        )),
        (OpKind::Add | OpKind::Replace, _, None) => Err(syntax(format!(
            "the {} operation has no \"value\"",
            kind.as_str()
        ))),
        (OpKind::Add | OpKind::Replace, None, Some(v)) if !v.is_object() => Err(syntax(format!(
            "an {} without \"path\" needs an object \"value\" whose keys are attributes, \
             such as {{\"displayName\": \"...\"}}",
            kind.as_str()
        ))),
        _ => Ok(PatchOp {
            op: kind,
            path,
            value,
        }),
    }
}

/// Parses a PATCH `path` (`attr`, `attr.sub`, `urn:...:attr`, `attr[filter]`,
/// `attr[filter].sub`). Errors are 400 invalidPath.
pub fn parse_patch_path(input: &str) -> Result<PatchPath, ScimError> {
    let (path, rest) = parse_patch_path_parts(input)?;
    Ok(match rest {
        None => PatchPath::Attr(path),
        Some((filter, sub)) => PatchPath::Filtered { path, filter, sub },
    })
}

// ---------------------------------------------------------------------------
// Applying
// ---------------------------------------------------------------------------

/// Mutable state while applying one request.
struct Ctx {
    kind: ResourceKind,
    changes: Vec<MemberChange>,
    member_ids: usize,
}

/// Applies parsed operations to a stored resource, all or nothing: the work
/// happens on a copy that replaces `resource` only if every operation
/// succeeded. Returns the Group membership changes, in request order (always
/// empty for Users).
///
/// Errors: unknown attribute → 400 invalidPath; read-only attribute (`id`,
/// `meta`, `groups`) → 400 mutability; wrong value type → 400 invalidValue;
/// a member filter other than `value eq "<id>"` → 400 invalidFilter; removing
/// or emptying `userName` / a Group's `displayName` → 400 invalidValue; more
/// than 10,000 member ids → 400 tooMany.
pub fn apply_patch(
    kind: ResourceKind,
    resource: &mut Value,
    ops: &[PatchOp],
) -> Result<Vec<MemberChange>, ScimError> {
    let Some(original) = resource.as_object() else {
        return Err(ScimError::new(
            500,
            None,
            "the stored resource is not a JSON object",
        ));
    };
    let mut doc = original.clone();
    let mut ctx = Ctx {
        kind,
        changes: Vec::new(),
        member_ids: 0,
    };
    let many = ops.len() > 1;
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut ctx, &mut doc, op).map_err(|e| number_error(e, i, many))?;
    }
    finish(kind, &mut doc)?;
    *resource = Value::Object(doc);
    Ok(ctx.changes)
}

/// Post-conditions: required attributes still set, `schemas` listing the
/// extension exactly when its object is present.
fn finish(kind: ResourceKind, doc: &mut Map<String, Value>) -> Result<(), ScimError> {
    let required = match kind {
        ResourceKind::User => "userName",
        ResourceKind::Group => "displayName",
    };
    let ok = doc
        .get(required)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty());
    if !ok {
        return Err(invalid_value(format!(
            "{required} is required: it cannot be removed or set empty"
        )));
    }
    for ext in kind.extensions() {
        let key = take_ci(doc, ext.id);
        let present = match key {
            Some(Value::Object(m)) if !m.is_empty() => {
                doc.insert(ext.id.to_owned(), Value::Object(m));
                true
            }
            _ => false,
        };
        if let Some(Value::Array(list)) = doc.get_mut("schemas") {
            let listed = list
                .iter()
                .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(ext.id)));
            if present && !listed {
                list.push(Value::String(ext.id.to_owned()));
            } else if !present && listed {
                list.retain(|s| !s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(ext.id)));
            }
        }
    }
    Ok(())
}

/// Removes a member whose name matches `name` ignoring case and returns its
/// value, so it can be re-inserted under the schema's spelling.
fn take_ci(map: &mut Map<String, Value>, name: &str) -> Option<Value> {
    if let Some(v) = map.remove(name) {
        return Some(v);
    }
    let key = map.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()?;
    map.remove(&key)
}

fn apply_op(ctx: &mut Ctx, doc: &mut Map<String, Value>, op: &PatchOp) -> Result<(), ScimError> {
    match &op.path {
        Some(path) => apply_at(ctx, doc, op.op, path, op.value.as_ref()),
        None => {
            let Some(Value::Object(obj)) = &op.value else {
                return Err(syntax(
                    "an operation without \"path\" needs an object \"value\" whose keys are attributes",
                ));
            };
            apply_pathless(ctx, doc, op.op, obj, None)
        }
    }
}

/// A path-less add/replace: each key is an attribute path (plain, dotted,
/// URN-qualified, even filtered), or a schema URN holding an object of that
/// schema's attributes.
fn apply_pathless(
    ctx: &mut Ctx,
    doc: &mut Map<String, Value>,
    op: OpKind,
    obj: &Map<String, Value>,
    within: Option<&'static SchemaDef>,
) -> Result<(), ScimError> {
    for (key, value) in obj {
        if within.is_none() && key.eq_ignore_ascii_case("schemas") {
            // The resource's schemas follow from its attributes.
            continue;
        }
        let named_schema = match within {
            None => schema::schema_by_urn(ctx.kind, key.trim()),
            Some(_) => None,
        };
        if let Some(s) = named_schema {
            match value {
                Value::Object(inner) => apply_pathless(ctx, doc, op, inner, Some(s))?,
                Value::Null if s.id != ctx.kind.core_schema().id => {
                    take_ci(doc, s.id);
                }
                other => {
                    return Err(invalid_value(format!(
                        "\"{}\" must be an object of its attributes, not {other}",
                        s.id
                    )));
                }
            }
            continue;
        }
        let mut path = parse_patch_path(key)?;
        if let Some(s) = within {
            let p = match &mut path {
                PatchPath::Attr(p) | PatchPath::Filtered { path: p, .. } => p,
            };
            if p.urn.is_none() {
                p.urn = Some(s.id.to_owned());
            }
        }
        apply_at(ctx, doc, op, &path, Some(value))?;
    }
    Ok(())
}

fn unknown_attribute(kind: ResourceKind, path: &AttrPath) -> ScimError {
    match &path.urn {
        Some(urn) if schema::schema_by_urn(kind, urn).is_none() => invalid_path(format!(
            "'{path}': '{urn}' is not a schema of {} resources",
            kind.name()
        )),
        _ => match &path.sub {
            Some(sub)
                if schema::find_attribute(
                    kind,
                    &AttrPath {
                        sub: None,
                        ..path.clone()
                    },
                )
                .is_some() =>
            {
                invalid_path(format!(
                    "'{path}': '{sub}' is not a sub-attribute of '{}'",
                    path.name
                ))
            }
            _ => invalid_path(format!(
                "'{path}' is not an attribute of {} resources",
                kind.name()
            )),
        },
    }
}

fn check_writable(r: &ResolvedAttr, label: &dyn fmt::Display) -> Result<(), ScimError> {
    if r.attr.is_read_only() || r.sub.is_some_and(AttributeDef::is_read_only) {
        return Err(ScimError::bad_request(
            ScimType::Mutability,
            format!("'{label}' is read-only and cannot be changed"),
        ));
    }
    Ok(())
}

fn apply_at(
    ctx: &mut Ctx,
    doc: &mut Map<String, Value>,
    op: OpKind,
    path: &PatchPath,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let attr_path = match path {
        PatchPath::Attr(p) | PatchPath::Filtered { path: p, .. } => p,
    };
    if let Some(ext) = schema::path_names_schema(ctx.kind, attr_path) {
        if let PatchPath::Filtered { .. } = path {
            return Err(invalid_path(format!(
                "'{path}': a filter cannot apply to a whole schema"
            )));
        }
        return apply_whole_schema(ctx, doc, op, ext, value);
    }
    let r = schema::resolve_attribute(ctx.kind, attr_path)
        .ok_or_else(|| unknown_attribute(ctx.kind, attr_path))?;
    check_writable(&r, path)?;
    if ctx.kind == ResourceKind::Group && r.attr.name == "members" {
        return apply_members(ctx, op, path, r, value);
    }
    match path {
        PatchPath::Attr(_) => apply_plain(doc, op, r, value, path),
        PatchPath::Filtered { filter, sub, .. } => {
            let sub_def = match sub {
                Some(s) => Some(schema::find_sub_attribute(r.attr, s).ok_or_else(|| {
                    invalid_path(format!(
                        "'{path}': '{s}' is not a sub-attribute of '{}'",
                        r.attr.name
                    ))
                })?),
                None => None,
            };
            if sub_def.is_some_and(AttributeDef::is_read_only) {
                return Err(ScimError::bad_request(
                    ScimType::Mutability,
                    format!("'{path}' is read-only and cannot be changed"),
                ));
            }
            apply_filtered(doc, op, r, filter, sub_def, value, path)
        }
    }
}

fn apply_whole_schema(
    ctx: &mut Ctx,
    doc: &mut Map<String, Value>,
    op: OpKind,
    ext: &'static SchemaDef,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    if ext.id == ctx.kind.core_schema().id {
        return Err(invalid_path(format!(
            "'{}' names the whole resource; leave out \"path\" to change several attributes",
            ext.id
        )));
    }
    match (op, value) {
        (OpKind::Remove, _) | (_, None | Some(Value::Null)) => {
            take_ci(doc, ext.id);
            Ok(())
        }
        (_, Some(Value::Object(inner))) => apply_pathless(ctx, doc, op, inner, Some(ext)),
        (_, Some(other)) => Err(invalid_value(format!(
            "the value for '{}' must be an object of its attributes, not {other}",
            ext.id
        ))),
    }
}

/// The object holding attribute `r` (the resource, or its extension object),
/// created when `create` is set.
fn container<'d>(
    doc: &'d mut Map<String, Value>,
    r: &ResolvedAttr,
    create: bool,
) -> Option<&'d mut Map<String, Value>> {
    if !r.in_extension() {
        return Some(doc);
    }
    let ext = match take_ci(doc, r.schema.id) {
        Some(Value::Object(m)) => m,
        other => {
            if !create {
                // Absent (or malformed) and nothing to create: leave it be.
                if let Some(v) = other {
                    doc.insert(r.schema.id.to_owned(), v);
                }
                return None;
            }
            Map::new()
        }
    };
    // Re-inserted under the schema's spelling; `finish` drops it if it ends
    // up empty.
    match doc
        .entry(r.schema.id.to_owned())
        .or_insert(Value::Object(ext))
    {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn as_items(v: Option<Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other],
    }
}

fn put(map: &mut Map<String, Value>, name: &str, v: Option<Value>) {
    match v {
        Some(Value::Array(items)) if items.is_empty() => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(v) => {
            map.insert(name.to_owned(), v);
        }
        None => {}
    }
}

/// An operation on `attr` or `attr.sub` (no filter).
fn apply_plain(
    doc: &mut Map<String, Value>,
    op: OpKind,
    r: ResolvedAttr,
    value: Option<&Value>,
    label: &PatchPath,
) -> Result<(), ScimError> {
    let label = label.to_string();
    let Some(map) = container(doc, &r, op != OpKind::Remove) else {
        return Ok(());
    };
    let name = r.attr.name;
    let current = take_ci(map, name);
    let new = plain_value(op, r, current, value, &label)?;
    put(map, name, new);
    Ok(())
}

fn plain_value(
    op: OpKind,
    r: ResolvedAttr,
    current: Option<Value>,
    value: Option<&Value>,
    label: &str,
) -> Result<Option<Value>, ScimError> {
    let attr = r.attr;
    if is_manager(attr) {
        return match (op, r.sub) {
            (OpKind::Remove, _) => Ok(None),
            (_, None) => normalize_manager(value.cloned().unwrap_or(Value::Null)),
            (_, Some(sub)) if sub.name == "value" => {
                normalize_manager(value.cloned().unwrap_or(Value::Null))
            }
            (_, Some(sub)) => {
                let mut obj = match current {
                    Some(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                let v = normalize_value(sub, value.cloned().unwrap_or(Value::Null), label)?;
                set_or_remove(&mut obj, sub.name, v);
                Ok(Some(Value::Object(obj)))
            }
        };
    }
    match r.sub {
        Some(sub) if attr.multi_valued => {
            // `emails.value` without a filter applies to every element.
            let mut items = as_items(current);
            match op {
                OpKind::Remove => {
                    for item in &mut items {
                        if let Some(obj) = item.as_object_mut() {
                            take_ci(obj, sub.name);
                        }
                    }
                    items.retain(|e| !e.as_object().is_some_and(Map::is_empty));
                }
                OpKind::Add | OpKind::Replace => {
                    let v = normalize_value(sub, value.cloned().unwrap_or(Value::Null), label)?;
                    if items.is_empty() {
                        if let Some(v) = v {
                            let mut m = Map::new();
                            m.insert(sub.name.to_owned(), v);
                            items.push(Value::Object(m));
                        }
                    } else {
                        for item in &mut items {
                            if let Some(obj) = item.as_object_mut() {
                                take_ci(obj, sub.name);
                                set_or_remove(obj, sub.name, v.clone());
                            }
                        }
                    }
                    finish_items(attr, &mut items, None)?;
                }
            }
            Ok(Some(Value::Array(items)))
        }
        Some(sub) => {
            // `name.givenName`: one sub-attribute of a single complex value.
            let mut obj = match current {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            take_ci(&mut obj, sub.name);
            if op != OpKind::Remove {
                let v = normalize_value(sub, value.cloned().unwrap_or(Value::Null), label)?;
                set_or_remove(&mut obj, sub.name, v);
            }
            Ok(Some(Value::Object(obj)))
        }
        None => whole_attribute_value(op, attr, current, value, label),
    }
}

fn set_or_remove(obj: &mut Map<String, Value>, name: &str, v: Option<Value>) {
    match v {
        Some(v) => {
            obj.insert(name.to_owned(), v);
        }
        None => {
            obj.remove(name);
        }
    }
}

fn whole_attribute_value(
    op: OpKind,
    attr: &'static AttributeDef,
    current: Option<Value>,
    value: Option<&Value>,
    label: &str,
) -> Result<Option<Value>, ScimError> {
    let value = match (op, value) {
        (OpKind::Remove, None | Some(Value::Null)) => return Ok(None),
        (OpKind::Remove, Some(v)) if attr.multi_valued => {
            // Entra's dialect: `Remove` with a value list removes those
            // values only, as it does for group members.
            return remove_listed(attr, current, v, label);
        }
        (OpKind::Remove, Some(_)) => return Ok(None),
        // RFC 7644 §3.5.2: replacing with null unassigns the attribute.
        (_, None | Some(Value::Null)) => return Ok(None),
        (_, Some(v)) => v,
    };
    if attr.multi_valued {
        let new = as_items(normalize_value(attr, value.clone(), label)?);
        let mut items = match op {
            OpKind::Add => as_items(current),
            _ => Vec::new(),
        };
        let preferred = merge_items(attr, &mut items, new);
        finish_items(attr, &mut items, preferred)?;
        return Ok(Some(Value::Array(items)));
    }
    if attr.is_complex() {
        // RFC 7644 §3.5.2.1/§3.5.2.3: sub-attributes not in the value are
        // left as they are; a null sub-attribute removes it.
        let mut obj = match current {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        if let Value::Object(sent) = value {
            let nulled = sent
                .iter()
                .filter(|(_, v)| v.is_null())
                .filter_map(|(k, _)| schema::find_sub_attribute(attr, k));
            for sub in nulled {
                take_ci(&mut obj, sub.name);
            }
        }
        if let Some(Value::Object(new)) = normalize_value(attr, value.clone(), label)? {
            for (k, v) in new {
                take_ci(&mut obj, &k);
                obj.insert(k, v);
            }
        }
        return Ok(Some(Value::Object(obj)));
    }
    normalize_value(attr, value.clone(), label)
}

/// Removes from a multi-valued attribute the elements listed in `listed`
/// (compared by their `value` sub-attribute when they have one).
fn remove_listed(
    attr: &'static AttributeDef,
    current: Option<Value>,
    listed: &Value,
    label: &str,
) -> Result<Option<Value>, ScimError> {
    let gone = as_items(normalize_value(attr, listed.clone(), label)?);
    let mut items = as_items(current);
    items.retain(|e| {
        !gone
            .iter()
            .any(|g| match (get_ci(g, "value"), get_ci(e, "value")) {
                (Some(a), Some(b)) => a == b,
                _ => g == e,
            })
    });
    Ok(Some(Value::Array(items)))
}

fn same_type(a: &Value, b: &Value) -> bool {
    match (
        get_ci(a, "type").and_then(Value::as_str),
        get_ci(b, "type").and_then(Value::as_str),
    ) {
        (Some(x), Some(y)) => x.to_lowercase() == y.to_lowercase(),
        _ => false,
    }
}

fn is_primary(e: &Value) -> bool {
    get_ci(e, "primary").and_then(coerce_bool) == Some(true)
}

/// Adds `new` elements to `items`: an element whose `type` an existing one
/// already has is merged into it (Entra requires unique types), an exact
/// duplicate is skipped, anything else is appended. Returns the index of
/// the last added element marked primary.
fn merge_items(attr: &AttributeDef, items: &mut Vec<Value>, new: Vec<Value>) -> Option<usize> {
    let typed = attr.is_complex() && schema::find_sub_attribute(attr, "type").is_some();
    let mut preferred = None;
    for n in new {
        let primary = is_primary(&n);
        let idx = if let Some(i) = items.iter().position(|e| typed && same_type(e, &n)) {
            if let Some(e) = items.get_mut(i) {
                merge_into(e, n);
            }
            Some(i)
        } else if let Some(i) = items.iter().position(|e| *e == n) {
            Some(i)
        } else {
            items.push(n);
            items.len().checked_sub(1)
        };
        if primary {
            preferred = idx;
        }
    }
    preferred
}

/// Final checks on a multi-valued attribute after a change: unique types,
/// and at most one `primary: true` (RFC 7643 §2.4; the element the request
/// made primary wins, RFC 7644 §3.5.2.1).
fn finish_items(
    attr: &AttributeDef,
    items: &mut Vec<Value>,
    preferred: Option<usize>,
) -> Result<(), ScimError> {
    items.retain(|e| !e.is_null() && !e.as_object().is_some_and(Map::is_empty));
    let primaries: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, e)| is_primary(e))
        .map(|(i, _)| i)
        .collect();
    if primaries.len() > 1 {
        let keep = preferred
            .filter(|p| primaries.contains(p))
            .or(primaries.last().copied());
        for (i, e) in items.iter_mut().enumerate() {
            let demote = Some(i) != keep && is_primary(e);
            if let (true, Some(obj)) = (demote, e.as_object_mut()) {
                take_ci(obj, "primary");
                obj.insert("primary".to_owned(), Value::Bool(false));
            }
        }
    }
    // Moved out and back rather than cloned: the check needs a Value.
    let list = Value::Array(std::mem::take(items));
    let checked = check_unique_types(attr, &list);
    if let Value::Array(back) = list {
        *items = back;
    }
    checked
}

/// The element a filter describes, for creating it when nothing matches:
/// `type eq "work"` gives `{"type": "work"}`. Only `eq` comparisons of
/// sub-attributes joined by `and` describe an element.
fn element_from_filter(attr: &'static AttributeDef, filter: &Filter) -> Option<Map<String, Value>> {
    let mut m = Map::new();
    for term in filter.conjuncts() {
        let (path, lit) = term.as_simple_eq()?;
        if path.urn.is_some() || path.sub.is_some() {
            return None;
        }
        let sub = schema::find_sub_attribute(attr, &path.name)?;
        let v = match (lit, sub.ty) {
            (CompValue::Str(s), AttrType::Boolean) => {
                Value::Bool(coerce_bool(&Value::String(s.clone()))?)
            }
            (CompValue::Str(s), _) => Value::String(s.clone()),
            (CompValue::Bool(b), AttrType::Boolean) => Value::Bool(*b),
            (CompValue::Num(n), t) if t.is_string_like() => Value::String(n.to_string()),
            (CompValue::Num(n), AttrType::Integer | AttrType::Decimal) => Value::Number(n.clone()),
            _ => return None,
        };
        m.insert(sub.name.to_owned(), v);
    }
    Some(m)
}

/// An operation on `attr[filter]` or `attr[filter].sub`.
fn apply_filtered(
    doc: &mut Map<String, Value>,
    op: OpKind,
    r: ResolvedAttr,
    filter: &Filter,
    sub: Option<&'static AttributeDef>,
    value: Option<&Value>,
    label: &PatchPath,
) -> Result<(), ScimError> {
    let attr = r.attr;
    if !attr.is_complex() || r.sub.is_some() {
        return Err(invalid_path(format!(
            "'{label}': '[...]' filters apply to complex attributes such as emails or addresses"
        )));
    }
    let label = label.to_string();
    let Some(map) = container(doc, &r, op != OpKind::Remove) else {
        return Ok(());
    };
    let current = take_ci(map, attr.name);

    if is_manager(attr) {
        // `manager[value eq "id"]`: the one manager, if it matches.
        let matched = current
            .as_ref()
            .is_some_and(|m| filter::matches_value(filter, attr, m));
        let new = match op {
            OpKind::Remove if matched => match sub {
                Some(s) if s.name != "value" => plain_value(
                    op,
                    ResolvedAttr { sub: Some(s), ..r },
                    current,
                    value,
                    &label,
                )?,
                _ => None,
            },
            OpKind::Remove => current,
            _ => plain_value(op, ResolvedAttr { sub, ..r }, current, value, &label)?,
        };
        put(map, attr.name, new);
        return Ok(());
    }

    let single = !attr.multi_valued;
    let mut items = as_items(current);
    let hits: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_object() && filter::matches_value(filter, attr, e))
        .map(|(i, _)| i)
        .collect();
    let removing = op == OpKind::Remove || value.is_none_or(Value::is_null);
    let mut preferred = None;
    match sub {
        Some(sub) if removing => {
            for i in &hits {
                if let Some(obj) = items.get_mut(*i).and_then(Value::as_object_mut) {
                    take_ci(obj, sub.name);
                }
            }
        }
        None if removing => {
            let mut i = 0;
            items.retain(|_| {
                let keep = !hits.contains(&i);
                i += 1;
                keep
            });
        }
        Some(sub) => {
            let v = normalize_value(sub, value.cloned().unwrap_or(Value::Null), &label)?;
            let makes_primary = sub.name == "primary" && v == Some(Value::Bool(true));
            if hits.is_empty() {
                // Entra ID sends add/replace on `emails[type eq "work"].value`
                // for a user without a work email and expects it created;
                // RFC 7644's noTarget would make that sync fail forever.
                let mut elem =
                    element_from_filter(attr, filter).ok_or_else(|| no_target(&label))?;
                if let Some(v) = v {
                    elem.insert(sub.name.to_owned(), v);
                    items.push(Value::Object(elem));
                }
            } else {
                for i in &hits {
                    if let Some(obj) = items.get_mut(*i).and_then(Value::as_object_mut) {
                        take_ci(obj, sub.name);
                        set_or_remove(obj, sub.name, v.clone());
                    }
                }
            }
            if makes_primary {
                preferred = hits.last().copied().or(items.len().checked_sub(1));
            }
        }
        None => {
            let sent = value.cloned().unwrap_or(Value::Null);
            let v = normalize_value(attr, sent, &label)?;
            let elem = match v {
                Some(Value::Array(mut list)) if list.len() == 1 => list.pop(),
                Some(Value::Object(m)) => Some(Value::Object(m)),
                Some(_) => {
                    return Err(invalid_value(format!(
                        "'{label}' selects single values of '{}'; send one object as the value",
                        attr.name
                    )));
                }
                None => None,
            };
            if let Some(elem) = elem {
                if hits.is_empty() {
                    let mut created = Value::Object(
                        element_from_filter(attr, filter).ok_or_else(|| no_target(&label))?,
                    );
                    merge_into(&mut created, elem);
                    items.push(created);
                    preferred = items
                        .len()
                        .checked_sub(1)
                        .filter(|i| items.get(*i).is_some_and(is_primary));
                } else {
                    let make_primary = is_primary(&elem);
                    for i in &hits {
                        if let Some(e) = items.get_mut(*i) {
                            merge_into(e, elem.clone());
                        }
                    }
                    if make_primary {
                        preferred = hits.last().copied();
                    }
                }
            }
        }
    }
    finish_items(attr, &mut items, preferred)?;
    if single {
        if items.len() > 1 {
            return Err(invalid_value(format!(
                "'{label}' would give the single-valued '{}' more than one value",
                attr.name
            )));
        }
        put(map, attr.name, items.pop());
    } else {
        put(map, attr.name, Some(Value::Array(items)));
    }
    Ok(())
}

fn no_target(label: &str) -> ScimError {
    ScimError::bad_request(
        ScimType::NoTarget,
        format!(
            "'{label}' matches no value, and its filter does not describe one to create \
             (only 'sub eq \"value\"' terms joined by 'and' do)"
        ),
    )
}

/// The user ids in a member filter: `value eq "id"`, possibly joined by `or`.
fn member_filter_ids(filter: &Filter, out: &mut Vec<String>) -> Result<(), ScimError> {
    match filter {
        Filter::Or(l, r) => {
            member_filter_ids(l, out)?;
            member_filter_ids(r, out)
        }
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value,
        } if path.urn.is_none()
            && path.sub.is_none()
            && path.name.eq_ignore_ascii_case("value") =>
        {
            let id = match value {
                CompValue::Str(s) => s.clone(),
                CompValue::Num(n) => n.to_string(),
                _ => return Err(member_filter_error()),
            };
            if id.trim().is_empty() {
                return Err(invalid_value("a member filter names an empty id"));
            }
            out.push(id);
            Ok(())
        }
        _ => Err(member_filter_error()),
    }
}

fn member_filter_error() -> ScimError {
    ScimError::bad_request(
        ScimType::InvalidFilter,
        "member filters must be value eq \"<user id>\" (several may be joined with 'or'), \
         as in members[value eq \"2819c223-7f76-453a-919d-413861904646\"]",
    )
}

fn record(ctx: &mut Ctx, change: MemberChange) -> Result<(), ScimError> {
    let n = match &change {
        MemberChange::Add(ids) | MemberChange::Remove(ids) | MemberChange::ReplaceAll(ids) => {
            ids.len()
        }
        MemberChange::RemoveAll => 0,
    };
    ctx.member_ids = ctx.member_ids.saturating_add(n);
    check_member_count(ctx.member_ids)?;
    ctx.changes.push(change);
    Ok(())
}

/// Operations on a Group's `members`, turned into [`MemberChange`]s.
fn apply_members(
    ctx: &mut Ctx,
    op: OpKind,
    path: &PatchPath,
    r: ResolvedAttr,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    if r.sub.is_some() {
        return Err(invalid_path(format!(
            "'{path}': change membership through 'members' or 'members[value eq \"<id>\"]'"
        )));
    }
    let ids_of = |v: &Value, ctx: &mut Ctx| -> Result<Vec<String>, ScimError> {
        // Count before converting so a huge list fails fast.
        if let Value::Array(items) = v {
            check_member_count(ctx.member_ids.saturating_add(items.len()))?;
        }
        member_ids(v)
    };
    match path {
        PatchPath::Filtered { filter, sub, .. } => {
            if sub.is_some() || op != OpKind::Remove {
                return Err(invalid_path(format!(
                    "'{path}': only remove takes a member filter; to add members use \
                     {{\"op\": \"add\", \"path\": \"members\", \"value\": [{{\"value\": \"<id>\"}}]}}"
                )));
            }
            let mut ids = Vec::new();
            member_filter_ids(filter, &mut ids)?;
            record(ctx, MemberChange::Remove(ids))
        }
        PatchPath::Attr(_) => match (op, value) {
            (OpKind::Remove, None | Some(Value::Null)) => record(ctx, MemberChange::RemoveAll),
            (OpKind::Replace, None | Some(Value::Null)) => record(ctx, MemberChange::RemoveAll),
            (OpKind::Remove, Some(v)) => {
                // Entra's default dialect: Remove with a value list removes
                // only those members. An empty list removes nothing rather
                // than everything, since a mass removal must be explicit.
                let ids = ids_of(v, ctx)?;
                if ids.is_empty() {
                    return Ok(());
                }
                record(ctx, MemberChange::Remove(ids))
            }
            (OpKind::Replace, Some(v)) => {
                let ids = ids_of(v, ctx)?;
                record(ctx, MemberChange::ReplaceAll(ids))
            }
            (OpKind::Add, Some(v)) => {
                let ids = ids_of(v, ctx)?;
                if ids.is_empty() {
                    return Ok(());
                }
                record(ctx, MemberChange::Add(ids))
            }
            (OpKind::Add, None) => Err(syntax("the add operation has no \"value\"")),
        },
    }
}
