//! SCIM PATCH (RFC 7644 §3.5.2) with Microsoft Entra ID's dialects.
//!
//! [`parse_patch`] turns a request body into [`PatchOp`]s; [`check_patch`]
//! checks them at ingest as far as the schema decides; [`apply_patch`]
//! applies them to a stored, normalised resource (see
//! `crate::scim::resource`) all-or-nothing. Group membership is not applied
//! to the JSON: it comes back as [`MemberChange`]s for the store, which keeps
//! members in a table.
//!
//! Entra ID specifics handled here (see docs/entra.md §2.4–2.7, §3):
//! capitalised ops (`"Replace"`), `"True"`/`"False"` strings for booleans,
//! path-less operations whose value keys are attribute paths
//! (`"name.givenName"`, `"urn:...:enterprise:2.0:User:employeeNumber"`),
//! `emails[type eq "work"].value` creating the element when missing, the
//! three manager forms and its removal by empty value, and `Remove` on
//! `members` with a value list removing only those members.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::scim::error::{ScimError, ScimType};
use crate::scim::filter::{
    self, AttrPath, CompValue, CompareOp, Filter, get_ci, parse_patch_path_parts,
};
use crate::scim::resource::{
    TYPE_UNIQUE_ATTRIBUTES, check_member_count, check_unique_types, check_value_count, coerce_bool,
    describe, is_manager, member_ids, merge_into, normalize_manager, normalize_value,
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
                "\"op\" must be the string add, remove or replace, not {}",
                describe(other)
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
                "\"path\" must be a string such as \"name.givenName\", not {}",
                describe(other)
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

/// How much applying operations can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Applying them to the stored resource (the worker): every check.
    Stored,
    /// Checking them at ingest on a resource that stands for any stored
    /// one (nothing but its required attribute, which every stored one
    /// has): only what the schema and the operations decide. A check whose
    /// answer depends on the stored values (noTarget, one element per
    /// type, one value of a single-valued attribute) passes here and is
    /// left to the worker.
    Schema,
}

/// Mutable state while applying one request.
struct Ctx {
    kind: ResourceKind,
    scope: Scope,
    changes: Vec<MemberChange>,
    member_ids: usize,
}

impl Ctx {
    fn new(kind: ResourceKind, scope: Scope) -> Self {
        Ctx {
            kind,
            scope,
            changes: Vec::new(),
            member_ids: 0,
        }
    }

    /// Applies `ops` to `doc` in order; an error names its operation.
    fn apply_all(
        &mut self,
        doc: &mut Map<String, Value>,
        ops: &[PatchOp],
    ) -> Result<(), ScimError> {
        let many = ops.len() > 1;
        for (i, op) in ops.iter().enumerate() {
            apply_op(self, doc, op).map_err(|e| number_error(e, i, many))?;
        }
        Ok(())
    }
}

/// Checks parsed operations at ingest, without the stored resource, so that
/// what is wrong whatever is stored is answered before anything is queued:
/// unknown or read-only paths, values of the wrong type or too long, member
/// filters other than `value eq`, more than 10,000 member ids or 200
/// values of another attribute (counted without the stored ones), removing
/// `userName` (a Group's `displayName`) for good. Each error is the one
/// [`apply_patch`] gives for the same operation, and a PATCH that
/// [`apply_patch`] accepts on some stored resource always passes; what
/// depends on the stored values is left to [`apply_patch`] (see `Scope`).
pub fn check_patch(kind: ResourceKind, ops: &[PatchOp]) -> Result<(), ScimError> {
    // Every stored resource has its required attribute, and only
    // operations on that attribute change it, so whether it is still set
    // at the end is decided by the operations alone.
    let mut doc = Map::new();
    doc.insert(
        required_attribute(kind).to_owned(),
        Value::String("stored".to_owned()),
    );
    Ctx::new(kind, Scope::Schema).apply_all(&mut doc, ops)?;
    finish(kind, &mut doc)
}

/// Applies parsed operations to a stored resource, all or nothing: the work
/// happens on a copy that replaces `resource` only if every operation
/// succeeded. Returns the Group membership changes, in request order (always
/// empty for Users).
///
/// Errors: unknown attribute → 400 invalidPath; read-only attribute (`id`,
/// `meta`, `groups`) → 400 mutability; wrong value type → 400 invalidValue;
/// a member filter other than `value eq "<id>"` → 400 invalidFilter; removing
/// `userName` / a Group's `displayName` → 400 mutability (RFC 7644 §3.5.2),
/// setting it empty → 400 invalidValue; more
/// than 10,000 member ids, or more than 200 values in another multi-valued
/// attribute once applied → 400 tooMany.
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
    let mut ctx = Ctx::new(kind, Scope::Stored);
    ctx.apply_all(&mut doc, ops)?;
    finish(kind, &mut doc)?;
    *resource = Value::Object(doc);
    Ok(ctx.changes)
}

/// Post-conditions: required attributes still set, `schemas` listing the
/// extension exactly when its object is present.
fn finish(kind: ResourceKind, doc: &mut Map<String, Value>) -> Result<(), ScimError> {
    let required = required_attribute(kind);
    match doc.get(required) {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        // RFC 7644 §3.5.2: a required attribute that is removed or becomes
        // unassigned is a "mutability" error.
        None | Some(Value::Null) => {
            return Err(ScimError::bad_request(
                ScimType::Mutability,
                format!("{required} is required: it cannot be removed"),
            ));
        }
        Some(_) => {
            return Err(invalid_value(format!(
                "{required} is required: it cannot be set empty"
            )));
        }
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

/// The attribute a resource of `kind` cannot be without.
fn required_attribute(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::User => "userName",
        ResourceKind::Group => "displayName",
    }
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
        if key.eq_ignore_ascii_case("schemas") {
            // The resource's schemas follow from its attributes; inside an
            // extension object the member is redundant, and POST accepts it.
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
                        "\"{}\" must be an object of its attributes, not {}",
                        s.id,
                        describe(other)
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
        PatchPath::Attr(_) => apply_plain(doc, op, r, value, path, ctx.scope),
        PatchPath::Filtered { filter, sub, .. } => {
            if !r.attr.is_complex() || r.sub.is_some() {
                return Err(invalid_path(format!(
                    "'{path}': '[...]' filters apply to complex attributes such as emails or \
                     addresses"
                )));
            }
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
            let r = ResolvedAttr { sub: sub_def, ..r };
            apply_filtered(doc, op, r, filter, value, path, ctx.scope)
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
            "the value for '{}' must be an object of its attributes, not {}",
            ext.id,
            describe(other)
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
    scope: Scope,
) -> Result<(), ScimError> {
    let label = label.to_string();
    let Some(map) = container(doc, &r, op != OpKind::Remove) else {
        return Ok(());
    };
    let name = r.attr.name;
    let current = take_ci(map, name);
    let new = plain_value(op, r, current, value, &label, scope)?;
    put(map, name, new);
    Ok(())
}

fn plain_value(
    op: OpKind,
    r: ResolvedAttr,
    current: Option<Value>,
    value: Option<&Value>,
    label: &str,
    scope: Scope,
) -> Result<Option<Value>, ScimError> {
    let attr = r.attr;
    if is_manager(attr) {
        return match (op, r.sub) {
            // The id is the manager: without it there is none.
            (OpKind::Remove, None) => Ok(None),
            (OpKind::Remove, Some(sub)) if sub.name == "value" => Ok(None),
            // Any other sub-attribute goes alone (RFC 7644 §3.5.2.2).
            (OpKind::Remove, Some(sub)) => Ok(current.map(|mut m| {
                if let Some(obj) = m.as_object_mut() {
                    take_ci(obj, sub.name);
                }
                m
            })),
            (_, None) => normalize_manager(value.cloned().unwrap_or(Value::Null)),
            (_, Some(sub)) if sub.name == "value" => {
                normalize_manager(value.cloned().unwrap_or(Value::Null))
            }
            // `$ref` is derived from the id when the user is rendered
            // (RFC 7643 §4.3: the URI of the manager's User resource), so a
            // client's is not kept, as in a POST or PUT; nor does one make
            // a manager without an id.
            (_, Some(sub)) if sub.name == "$ref" => Ok(current.and_then(|mut m| {
                let obj = m.as_object_mut()?;
                take_ci(obj, sub.name);
                obj.contains_key("value").then_some(m)
            })),
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
                    finish_items(attr, &mut items, None, scope)?;
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
        None => whole_attribute_value(op, attr, current, value, label, scope),
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
    scope: Scope,
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
        finish_items(attr, &mut items, preferred, scope)?;
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

/// Removes from a multi-valued attribute the elements listed in `listed`:
/// an element goes when its `value` sub-attribute is the same as a listed
/// element's, or when it is the same as a listed element as a whole (see
/// [`value_key`]).
fn remove_listed(
    attr: &'static AttributeDef,
    current: Option<Value>,
    listed: &Value,
    label: &str,
) -> Result<Option<Value>, ScimError> {
    let gone = as_items(normalize_value(attr, listed.clone(), label)?);
    let value_def = schema::find_sub_attribute(attr, "value");
    // Sets rather than a comparison of every pair: the stored list is as
    // long as the store let it grow.
    let whole: HashSet<String> = gone.iter().map(|g| value_key(attr, g)).collect();
    let values: HashSet<String> = match value_def {
        Some(def) => gone
            .iter()
            .filter_map(|g| get_ci(g, "value"))
            .map(|v| value_key(def, v))
            .collect(),
        None => HashSet::new(),
    };
    let mut items = as_items(current);
    items.retain(|e| {
        let listed_value = match (get_ci(e, "value"), value_def) {
            (Some(v), Some(def)) => values.contains(&value_key(def, v)),
            _ => false,
        };
        !listed_value && !whole.contains(&value_key(attr, e))
    });
    Ok(Some(Value::Array(items)))
}

/// A key that two values of `def` share exactly when they are the same:
/// strings compare as its `caseExact` says (RFC 7643 §2.2), folded as
/// filters fold them, so "Ann@Home.org" names the stored "ann@home.org";
/// complex values compare sub-attribute by sub-attribute (names ignoring
/// case), each by its own definition; anything else compares exactly.
/// Keys let a hash set find duplicates where comparing every pair of
/// elements would take time growing with the square of their number.
fn value_key(def: &AttributeDef, v: &Value) -> String {
    canonical(Some(def), v).to_string()
}

/// `v` with strings folded as `def` says and object members sorted, so that
/// equal values serialise alike (the maps keep insertion order).
fn canonical(def: Option<&AttributeDef>, v: &Value) -> Value {
    match v {
        Value::String(s) => match def {
            Some(def) => Value::String(filter::fold(s, def.case_exact)),
            None => v.clone(),
        },
        Value::Object(m) => {
            let complex = def.filter(|d| d.is_complex());
            let mut members: Vec<(String, Value)> = m
                .iter()
                .map(|(k, v)| match complex {
                    Some(d) => (
                        k.to_ascii_lowercase(),
                        canonical(schema::find_sub_attribute(d, k), v),
                    ),
                    None => (k.clone(), canonical(None, v)),
                })
                .collect();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(members.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(|e| canonical(None, e)).collect()),
        _ => v.clone(),
    }
}

/// An element's `type`, lower-cased, when it has one.
fn type_key(e: &Value) -> Option<String> {
    get_ci(e, "type")
        .and_then(Value::as_str)
        .map(str::to_lowercase)
}

fn is_primary(e: &Value) -> bool {
    get_ci(e, "primary").and_then(coerce_bool) == Some(true)
}

/// Where the elements of a multi-valued attribute are, by `type` (when
/// types are unique) and by [`value_key`], so that [`merge_items`] finds
/// the first element of a type or value without scanning them all.
struct Positions<'a> {
    attr: &'a AttributeDef,
    typed: bool,
    by_type: HashMap<String, BTreeSet<usize>>,
    by_value: HashMap<String, BTreeSet<usize>>,
}

impl<'a> Positions<'a> {
    fn new(attr: &'a AttributeDef, items: &[Value]) -> Self {
        let mut positions = Positions {
            attr,
            typed: TYPE_UNIQUE_ATTRIBUTES.contains(&attr.name),
            by_type: HashMap::new(),
            by_value: HashMap::new(),
        };
        for (i, e) in items.iter().enumerate() {
            positions.insert(i, e);
        }
        positions
    }

    fn insert(&mut self, i: usize, e: &Value) {
        if let Some(t) = type_key(e).filter(|_| self.typed) {
            self.by_type.entry(t).or_default().insert(i);
        }
        let key = value_key(self.attr, e);
        self.by_value.entry(key).or_default().insert(i);
    }

    fn remove(&mut self, i: usize, e: &Value) {
        if let Some(set) = type_key(e)
            .filter(|_| self.typed)
            .and_then(|t| self.by_type.get_mut(&t))
        {
            set.remove(&i);
        }
        if let Some(set) = self.by_value.get_mut(&value_key(self.attr, e)) {
            set.remove(&i);
        }
    }

    /// The first element with `n`'s type, when types are unique.
    fn same_type(&self, n: &Value) -> Option<usize> {
        let t = type_key(n).filter(|_| self.typed)?;
        self.by_type.get(&t)?.first().copied()
    }

    /// The first element that is the same as `n`.
    fn same_value(&self, n: &Value) -> Option<usize> {
        self.by_value
            .get(&value_key(self.attr, n))?
            .first()
            .copied()
    }
}

/// Adds `new` elements to `items`: in the attributes whose types are
/// unique ([`TYPE_UNIQUE_ATTRIBUTES`]: Entra requires it there), an element
/// whose `type` an existing one already has is merged into it; a
/// duplicate ([`value_key`]) is skipped; anything else is appended, so several roles of
/// one type stay apart as POST keeps them. Returns the index of the last
/// added element marked primary.
fn merge_items(attr: &AttributeDef, items: &mut Vec<Value>, new: Vec<Value>) -> Option<usize> {
    let mut positions = Positions::new(attr, items);
    let mut preferred = None;
    for n in new {
        let primary = is_primary(&n);
        let idx = if let Some(i) = positions.same_type(&n) {
            if let Some(e) = items.get_mut(i) {
                positions.remove(i, e);
                merge_into(e, n);
                positions.insert(i, e);
            }
            Some(i)
        } else if let Some(i) = positions.same_value(&n) {
            Some(i)
        } else {
            let i = items.len();
            positions.insert(i, &n);
            items.push(n);
            Some(i)
        };
        if primary {
            preferred = idx;
        }
    }
    preferred
}

/// Final checks on a multi-valued attribute after a change: at most
/// [`MAX_ATTRIBUTE_VALUES`](crate::scim::resource::MAX_ATTRIBUTE_VALUES)
/// values, unique types (in [`Scope::Stored`]), and at most one `primary: true` (RFC 7643 §2.4;
/// the element the request made primary wins, RFC 7644 §3.5.2.1). When the
/// request made none primary, the first stays so: it is the one the stored
/// resource's email follows (`resource::user_fields`), and an unrelated
/// change such as a new work address must not move it.
fn finish_items(
    attr: &AttributeDef,
    items: &mut Vec<Value>,
    preferred: Option<usize>,
    scope: Scope,
) -> Result<(), ScimError> {
    items.retain(|e| !e.is_null() && !e.as_object().is_some_and(Map::is_empty));
    // The request's values were counted at ingest; this counts what they
    // add up to with the stored ones, or across operations.
    check_value_count(attr, items.len())?;
    let primaries: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, e)| is_primary(e))
        .map(|(i, _)| i)
        .collect();
    if primaries.len() > 1 {
        let keep = preferred
            .filter(|p| primaries.contains(p))
            .or(primaries.first().copied());
        for (i, e) in items.iter_mut().enumerate() {
            let demote = Some(i) != keep && is_primary(e);
            if let (true, Some(obj)) = (demote, e.as_object_mut()) {
                take_ci(obj, "primary");
                obj.insert("primary".to_owned(), Value::Bool(false));
            }
        }
    }
    if scope == Scope::Schema {
        return Ok(());
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

/// An operation on `attr[filter]` or `attr[filter].sub`; `r.sub` is the
/// sub-attribute after the filter.
fn apply_filtered(
    doc: &mut Map<String, Value>,
    op: OpKind,
    r: ResolvedAttr,
    filter: &Filter,
    value: Option<&Value>,
    label: &PatchPath,
    scope: Scope,
) -> Result<(), ScimError> {
    let (attr, sub) = (r.attr, r.sub);
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
            OpKind::Remove if matched => plain_value(op, r, current, value, &label, scope)?,
            OpKind::Remove => current,
            _ => {
                // The value is checked first, so that a wrong one is refused
                // at ingest with the answer applying gives.
                let new = plain_value(op, r, current.clone(), value, &label, scope)?;
                match (matched, scope) {
                    (true, _) => new,
                    // An empty value clears the manager, which for one the
                    // filter does not match is a remove that matches nothing.
                    (false, _) if new.is_none() => current,
                    // Unlike `emails[type eq "work"]`, the filter describes
                    // no manager to create: it names the one being replaced.
                    (false, Scope::Stored) => return Err(no_manager_target(&label)),
                    // Whether the stored manager matches is for the worker.
                    (false, Scope::Schema) => current,
                }
            }
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
                // `hits` is in ascending order.
                let keep = hits.binary_search(&i).is_err();
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
                if let (Some(mut elem), Some(v)) =
                    (element_to_create(attr, filter, &label, scope)?, v)
                {
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
                    if let Some(created) = element_to_create(attr, filter, &label, scope)? {
                        let mut created = Value::Object(created);
                        merge_into(&mut created, elem);
                        items.push(created);
                        preferred = items
                            .len()
                            .checked_sub(1)
                            .filter(|i| items.get(*i).is_some_and(is_primary));
                    }
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
    finish_items(attr, &mut items, preferred, scope)?;
    if single {
        if items.len() > 1 && scope == Scope::Stored {
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

/// The element to create when `filter` matches nothing: the one it
/// describes, else noTarget. In [`Scope::Schema`] there is nothing to match
/// and a stored element might, so an element the filter cannot describe is
/// neither created nor refused.
fn element_to_create(
    attr: &'static AttributeDef,
    filter: &Filter,
    label: &str,
    scope: Scope,
) -> Result<Option<Map<String, Value>>, ScimError> {
    match element_from_filter(attr, filter) {
        Some(elem) => Ok(Some(elem)),
        None if scope == Scope::Schema => Ok(None),
        None => Err(no_target(label)),
    }
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

/// RFC 7644 §3.5.2.3: a value filter that matches nothing is noTarget.
fn no_manager_target(label: &str) -> ScimError {
    ScimError::bad_request(
        ScimType::NoTarget,
        format!(
            "'{label}' matches no value: the user's manager is not the one the filter names; \
             to set the manager whoever it is, leave the filter out of the path"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::{ENTERPRISE_USER_SCHEMA, GROUP_SCHEMA, USER_SCHEMA};
    use proptest::prelude::*;
    use serde_json::json;

    const ENT: &str = ENTERPRISE_USER_SCHEMA;

    fn body(ops: Value) -> Value {
        json!({"schemas": [PATCH_OP_SCHEMA], "Operations": ops})
    }

    fn user() -> Value {
        json!({
            "schemas": [USER_SCHEMA],
            "id": "6764549bef60420686bc",
            "meta": {"resourceType": "User", "created": "2024-01-01T00:00:00Z"},
            "userName": "Test_User@testuser.com",
            "externalId": "0a21f0f2",
            "active": true,
            "name": {"givenName": "givenName", "familyName": "familyName"},
            "emails": [{"value": "old@testuser.com", "type": "work", "primary": true}]
        })
    }

    fn bare_user() -> Value {
        json!({"schemas": [USER_SCHEMA], "id": "u1", "userName": "bare@x.com"})
    }

    fn group() -> Value {
        json!({"schemas": [GROUP_SCHEMA], "id": "a99962b9", "displayName": "Team", "externalId": "8aa1"})
    }

    /// A user with something in every multi-valued attribute a PATCH can
    /// match, so that checks of stored values have something to find.
    fn rich_user() -> Value {
        json!({
            "schemas": [USER_SCHEMA, ENT],
            "id": "u2",
            "userName": "rich@x.com",
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [
                {"value": "work@x.com", "type": "work", "primary": true},
                {"value": "home@x.com", "type": "home"}
            ],
            "phoneNumbers": [{"value": "1", "type": "work"}],
            "roles": [{"value": "Admin", "type": "R"}, {"value": "Reader", "type": "R"}],
            ENT: {"department": "Ops", "manager": {"value": "m"}}
        })
    }

    /// Parses and applies `ops` to `resource`; panics on error.
    fn patch(kind: ResourceKind, resource: &mut Value, ops: Value) -> Vec<MemberChange> {
        let parsed = parse_patch(&body(ops)).unwrap();
        apply_patch(kind, resource, &parsed).unwrap()
    }

    fn patch_user(resource: &mut Value, ops: Value) {
        assert!(patch(ResourceKind::User, resource, ops).is_empty());
    }

    /// Parses and applies, expecting an error; checks the resource is untouched.
    fn patch_err(kind: ResourceKind, resource: &Value, ops: Value) -> ScimError {
        let mut copy = resource.clone();
        let e = match parse_patch(&body(ops)) {
            Err(e) => e,
            Ok(parsed) => apply_patch(kind, &mut copy, &parsed).unwrap_err(),
        };
        assert_eq!(
            &copy, resource,
            "a failed PATCH must leave the resource unchanged"
        );
        e
    }

    fn assert_scim(e: &ScimError, status: u16, t: ScimType) {
        assert_eq!((e.status, e.scim_type), (status, Some(t)), "{}", e.detail);
    }

    // --- Checking at ingest ------------------------------------------------

    /// The error `check_patch` gives, asserting that applying the same
    /// operations to `stored` gives the very same one.
    fn check_err(kind: ResourceKind, stored: &Value, ops: Value) -> ScimError {
        let parsed = parse_patch(&body(ops)).unwrap();
        let e = check_patch(kind, &parsed).unwrap_err();
        assert_eq!(
            apply_patch(kind, &mut stored.clone(), &parsed),
            Err(e.clone())
        );
        e
    }

    #[test]
    fn schema_errors_are_found_without_the_stored_resource() {
        let user_op = |op: Value, t| (ResourceKind::User, user(), json!([op]), t);
        let group_op = |op: Value, t| (ResourceKind::Group, group(), json!([op]), t);
        let half: Vec<Value> = (0..6000).map(|i| json!({"value": i.to_string()})).collect();
        let cases = [
            user_op(
                json!({"op": "replace", "path": "shoeSize", "value": "9"}),
                ScimType::InvalidPath,
            ),
            user_op(
                json!({"op": "replace", "path": "id", "value": "x"}),
                ScimType::Mutability,
            ),
            user_op(
                json!({"op": "replace", "value": {"name": {"givenName": 7}}}),
                ScimType::InvalidValue,
            ),
            user_op(
                json!({"op": "add", "path": "emails[type eq \"work\"].value", "value": ["a", "b"]}),
                ScimType::InvalidValue,
            ),
            user_op(
                json!({"op": "remove", "path": "userName"}),
                ScimType::Mutability,
            ),
            group_op(
                json!({"op": "replace", "path": "displayName", "value": " "}),
                ScimType::InvalidValue,
            ),
            group_op(
                json!({"op": "remove", "path": "members[display eq \"Ann\"]"}),
                ScimType::InvalidFilter,
            ),
            (
                ResourceKind::Group,
                group(),
                json!([{"op": "add", "path": "members", "value": half},
                       {"op": "remove", "path": "members", "value": half}]),
                ScimType::TooMany,
            ),
            (
                ResourceKind::User,
                user(),
                json!([{"op": "replace", "path": "displayName", "value": "ok"},
                       {"op": "Replace", "path": "active", "value": "maybe"}]),
                ScimType::InvalidValue,
            ),
        ];
        for (kind, stored, ops, scim_type) in cases {
            let e = check_err(kind, &stored, ops);
            assert_scim(&e, 400, scim_type);
        }
        // Removed, then set again: nothing is missing at the end.
        let back = json!([
            {"op": "remove", "path": "userName"},
            {"op": "add", "value": {"userName": "back@x.com"}}]);
        check_patch(ResourceKind::User, &parse_patch(&body(back)).unwrap()).unwrap();
    }

    #[test]
    fn checks_that_need_the_stored_values_are_left_to_applying() {
        let cases = [
            // No element matches on this user, and the filter cannot describe one.
            json!([{"op": "replace", "path": "emails[value co \"nobody\"].display", "value": "x"}]),
            // Two emails would then have type work.
            json!([{"op": "replace", "path": "emails.type", "value": "work"}]),
            // A second value for the single-valued name.
            json!([{"op": "add", "path": "name[givenName eq \"Bo\"]", "value": {"familyName": "X"}}]),
        ];
        for ops in cases {
            let parsed = parse_patch(&body(ops.clone())).unwrap();
            check_patch(ResourceKind::User, &parsed).unwrap();
            let e = apply_patch(ResourceKind::User, &mut rich_user(), &parsed).unwrap_err();
            assert_eq!(e.status, 400, "{ops}");
        }
    }

    // --- docs/entra.md §2.4: user updates -------------------------------------

    #[test]
    fn default_dialect_replaces_work_email_and_family_name() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([
                {"op":"Replace","path":"emails[type eq \"work\"].value","value":"updatedEmail@microsoft.com"},
                {"op":"Replace","path":"name.familyName","value":"updatedFamilyName"}]),
        );
        assert_eq!(
            u["emails"],
            json!([{"value": "updatedEmail@microsoft.com", "type": "work", "primary": true}])
        );
        assert_eq!(
            u["name"],
            json!({"givenName": "givenName", "familyName": "updatedFamilyName"})
        );
    }

    #[test]
    fn capitalised_replace_updates_user_name() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"Replace","path":"userName","value":"5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com"}]),
        );
        assert_eq!(
            u["userName"],
            "5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com"
        );
    }

    #[test]
    fn default_dialect_replace_of_many_attributes_creates_missing_work_email() {
        let mut u = bare_user();
        patch_user(
            &mut u,
            json!([
                {"op":"Replace","path":"displayName","value":"Pvlo"},
                {"op":"Replace","path":"emails[type eq \"work\"].value","value":"TestBcwqnm@test.microsoft.com"},
                {"op":"Replace","path":"name.givenName","value":"Gtfd"},
                {"op":"Replace","path":"name.familyName","value":"Pkqf"},
                {"op":"Replace","path":"externalId","value":"Eqpj"},
                {"op":"Replace","path":"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber","value":"Eqpj"}]),
        );
        assert_eq!(
            u,
            json!({
                "schemas": [USER_SCHEMA, ENT],
                "id": "u1",
                "userName": "bare@x.com",
                "displayName": "Pvlo",
                "emails": [{"type": "work", "value": "TestBcwqnm@test.microsoft.com"}],
                "name": {"givenName": "Gtfd", "familyName": "Pkqf"},
                "externalId": "Eqpj",
                ENT: {"employeeNumber": "Eqpj"}
            })
        );
    }

    #[test]
    fn flagged_pathless_replace_with_dotted_and_urn_keys_updates_each_attribute() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([
                {"op":"replace","path":"emails[type eq \"work\"].value","value":"TestMhvaes@test.microsoft.com"},
                {"op":"replace","value":{
                    "displayName":"Bjfe",
                    "name.givenName":"Kkom",
                    "name.familyName":"Unua",
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber":"Aklq"}}]),
        );
        assert_eq!(u["displayName"], "Bjfe");
        assert_eq!(
            u["name"],
            json!({"givenName": "Kkom", "familyName": "Unua"})
        );
        assert_eq!(u[ENT], json!({"employeeNumber": "Aklq"}));
        assert_eq!(u["emails"][0]["value"], "TestMhvaes@test.microsoft.com");
        assert_eq!(u["schemas"], json!([USER_SCHEMA, ENT]));
        assert!(u.get("name.givenName").is_none());
    }

    #[test]
    fn validator_pathless_user_name_replace() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"replace","value":{"userName":"emilio@hermann.uk"}}]),
        );
        assert_eq!(u["userName"], "emilio@hermann.uk");
    }

    #[test]
    fn add_on_single_valued_string_acts_as_replace_in_both_dialects() {
        for op in ["Add", "add"] {
            let mut u = user();
            patch_user(
                &mut u,
                json!([{"op": op, "path":"nickName","value":"Babs"}]),
            );
            assert_eq!(u["nickName"], "Babs");
            patch_user(
                &mut u,
                json!([{"op": op, "path":"nickName","value":"Barbara"}]),
            );
            assert_eq!(u["nickName"], "Barbara");
        }
    }

    #[test]
    fn mixed_verbs_create_work_address_and_add_department() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([
                {"op":"Replace","path":"emails[type eq \"work\"].value","value":"AdeleV2@REDACTED.onmicrosoft.com"},
                {"op":"Replace","path":"addresses[type eq \"work\"].formatted","value":"18/2111"},
                {"op":"Add","path":"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department","value":"Retail"}]),
        );
        assert_eq!(
            u["addresses"],
            json!([{"type": "work", "formatted": "18/2111"}])
        );
        assert_eq!(u[ENT]["department"], "Retail");
        assert_eq!(u["emails"][0]["value"], "AdeleV2@REDACTED.onmicrosoft.com");
    }

    #[test]
    fn filtered_add_on_missing_element_creates_it_and_later_ops_merge_into_it() {
        let mut u = bare_user();
        patch_user(
            &mut u,
            json!([
                {"op":"Add","path":"addresses[type eq \"work\"].streetAddress","value":"1 Main St"},
                {"op":"Add","path":"addresses[type eq \"work\"].locality","value":"Springfield"},
                {"op":"Add","path":"phoneNumbers[type eq \"mobile\"].value","value":"55555555555"}]),
        );
        assert_eq!(
            u["addresses"],
            json!([{"type": "work", "streetAddress": "1 Main St", "locality": "Springfield"}])
        );
        assert_eq!(
            u["phoneNumbers"],
            json!([{"type": "mobile", "value": "55555555555"}])
        );
    }

    #[test]
    fn filter_with_string_true_creates_element_with_boolean_primary() {
        let mut u = bare_user();
        patch_user(
            &mut u,
            json!([{"op":"Add","path":"roles[primary eq \"True\"].value","value":"Admin"}]),
        );
        assert_eq!(u["roles"], json!([{"primary": true, "value": "Admin"}]));
    }

    #[test]
    fn filtered_replace_with_an_unbuildable_filter_is_no_target() {
        let e = patch_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"replace","path":"emails[value co \"zzz\"].display","value":"x"}]),
        );
        assert_scim(&e, 400, ScimType::NoTarget);
    }

    #[test]
    fn remove_with_filter_removes_elements_or_one_sub_attribute() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"add","path":"emails","value":[{"value":"h@x.com","type":"home"}]}]),
        );
        assert_eq!(u["emails"].as_array().unwrap().len(), 2);
        patch_user(
            &mut u,
            json!([{"op":"remove","path":"emails[type eq \"home\"]"}]),
        );
        assert_eq!(
            u["emails"],
            json!([{"value": "old@testuser.com", "type": "work", "primary": true}])
        );
        patch_user(
            &mut u,
            json!([{"op":"remove","path":"emails[type eq \"work\"].value"}]),
        );
        assert_eq!(u["emails"], json!([{"type": "work", "primary": true}]));
        // Removing what is not there succeeds: Entra retries must be idempotent.
        patch_user(
            &mut u,
            json!([{"op":"remove","path":"emails[type eq \"other\"]"}]),
        );
        patch_user(&mut u, json!([{"op":"remove","path":"emails"}]));
        assert!(u.get("emails").is_none());
    }

    #[test]
    fn add_to_multi_valued_appends_and_merges_same_type() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"add","path":"emails","value":[
                {"value":"new-work@x.com","type":"Work"},
                {"value":"home@x.com","type":"home"}]}]),
        );
        assert_eq!(
            u["emails"],
            json!([
                {"value": "new-work@x.com", "type": "Work", "primary": true},
                {"value": "home@x.com", "type": "home"}
            ])
        );
    }

    #[test]
    fn new_primary_element_demotes_the_old_primary() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"add","path":"emails","value":[{"value":"h@x.com","type":"home","primary":"True"}]}]),
        );
        assert_eq!(u["emails"][0]["primary"], false);
        assert_eq!(u["emails"][1]["primary"], true);
    }

    #[test]
    fn a_patch_that_chooses_no_primary_keeps_the_first_one() {
        // Two primaries stored before they were refused: invitations go to
        // the first (user_fields), and an unrelated change must not move it.
        let mut u = user();
        u["emails"] = json!([
            {"value": "work@x.com", "type": "work", "primary": true},
            {"value": "home@x.com", "type": "home", "primary": true}
        ]);
        patch_user(
            &mut u,
            json!([{"op":"Replace","path":"emails[type eq \"work\"].value","value":"x@example.com"}]),
        );
        assert_eq!(
            u["emails"],
            json!([
                {"value": "x@example.com", "type": "work", "primary": true},
                {"value": "home@x.com", "type": "home", "primary": false}
            ])
        );
        let fields = crate::scim::resource::user_fields(&u).unwrap();
        assert_eq!(fields.email.as_deref(), Some("x@example.com"));
    }

    #[test]
    fn a_patch_value_with_two_primaries_is_invalid_value() {
        let e = check_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"add","path":"emails","value":[
                {"value":"a@x.com","type":"home","primary":true},
                {"value":"b@x.com","type":"other","primary":true}]}]),
        );
        assert_scim(&e, 400, ScimType::InvalidValue);
        assert!(e.detail.contains("emails"), "{}", e.detail);
    }

    #[test]
    fn replace_on_multi_valued_replaces_the_whole_list() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"replace","path":"emails","value":[{"value":"only@x.com","type":"home"}]}]),
        );
        assert_eq!(
            u["emails"],
            json!([{"value": "only@x.com", "type": "home"}])
        );
        let e = patch_err(
            ResourceKind::User,
            &u,
            json!([{"op":"replace","path":"emails","value":[
                {"value":"a@x.com","type":"work"},{"value":"b@x.com","type":"work"}]}]),
        );
        assert_scim(&e, 400, ScimType::InvalidValue);
    }

    #[test]
    fn entra_roles_add_appends_role_objects() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"Add","path":"roles","value":[{"value":"{\"id\":\"06b07648\",\"value\":\"Admin\",\"displayName\":\"Admin\"}"}]}]),
        );
        assert_eq!(
            u["roles"],
            json!([{"value": "{\"id\":\"06b07648\",\"value\":\"Admin\",\"displayName\":\"Admin\"}"}])
        );
    }

    #[test]
    fn roles_and_entitlements_of_one_type_are_all_kept() {
        // Entra sends several roles of one type; POST keeps them, and so
        // must PATCH (only emails, phoneNumbers and addresses have one
        // element per type).
        for attr in ["roles", "entitlements"] {
            let two = json!([
                {"value": "Admin", "type": "WindowsAzureActiveDirectoryRole"},
                {"value": "Reader", "type": "WindowsAzureActiveDirectoryRole"}
            ]);
            let mut u = user();
            patch_user(
                &mut u,
                json!([{"op": "replace", "path": attr, "value": two}]),
            );
            assert_eq!(u[attr], two, "{attr}");
            let mut u = user();
            patch_user(&mut u, json!([{"op": "add", "path": attr, "value": two}]));
            assert_eq!(u[attr], two, "{attr}");
            let third = json!([{"value": "Writer", "type": "WindowsAzureActiveDirectoryRole"}]);
            patch_user(&mut u, json!([{"op": "Add", "path": attr, "value": third}]));
            assert_eq!(u[attr].as_array().map(Vec::len), Some(3), "{attr}");
        }
    }

    #[test]
    fn remove_with_value_list_on_multi_valued_removes_only_those() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"add","path":"roles","value":[{"value":"a"},{"value":"b"}]},
                   {"op":"Remove","path":"roles","value":[{"value":"a"}]}]),
        );
        assert_eq!(u["roles"], json!([{"value": "b"}]));
    }

    #[test]
    fn listed_values_compare_as_their_schema_says() {
        // emails.value is caseExact false (RFC 7643 §4.1.2).
        let mut u = rich_user();
        patch_user(
            &mut u,
            json!([{"op":"Remove","path":"emails","value":[{"value":"HOME@X.com"}]}]),
        );
        assert_eq!(
            u["emails"],
            json!([{"value": "work@x.com", "type": "work", "primary": true}])
        );
        // Without a value, every sub-attribute is compared.
        let mut u = user();
        u["addresses"] = json!([{"locality": "Oslo", "type": "work"}]);
        patch_user(
            &mut u,
            json!([{"op":"remove","path":"addresses","value":[{"locality":"OSLO","type":"Work"}]}]),
        );
        assert!(u.get("addresses").is_none(), "{u}");
        // Adding a value that differs only in case adds nothing.
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"add","path":"roles","value":[{"value":"Admin","display":"Admin"}]},
                   {"op":"add","path":"roles","value":[{"value":"admin","display":"ADMIN"}]}]),
        );
        assert_eq!(u["roles"], json!([{"value": "Admin", "display": "Admin"}]));
        // Member ids stay exact: the store removes exactly these.
        let (_, changes) = patch_group(json!([
            {"op":"Remove","path":"members","value":[{"value":"A1b2"}]}]));
        assert_eq!(changes, vec![MemberChange::Remove(ids(&["A1b2"]))]);
    }

    #[test]
    fn capitalised_path_updates_the_schema_spelled_attribute() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"replace","path":"USERNAME","value":"x@y.com"},
                                   {"op":"replace","path":"Name.GivenName","value":"G"}]),
        );
        assert_eq!(u["userName"], "x@y.com");
        assert_eq!(u["name"]["givenName"], "G");
        assert!(u.get("USERNAME").is_none());
    }

    #[test]
    fn values_are_stored_verbatim() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"replace","path":"displayName","value":"  MiXeD Case  "}]),
        );
        assert_eq!(u["displayName"], "  MiXeD Case  ");
    }

    #[test]
    fn null_replace_removes_the_attribute() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"replace","path":"externalId","value":null},
                                   {"op":"replace","path":"name","value":{"givenName":null}}]),
        );
        assert!(u.get("externalId").is_none());
        assert_eq!(u["name"], json!({"familyName": "familyName"}));
    }

    #[test]
    fn pathless_nested_object_merges_into_complex_attribute() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"replace","value":{"name":{"middleName":"M"}}}]),
        );
        assert_eq!(
            u["name"],
            json!({"givenName": "givenName", "familyName": "familyName", "middleName": "M"})
        );
    }

    #[test]
    fn pathless_enterprise_urn_object_merges_into_the_extension() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"add","value":{ENT: {"department":"Ops","costCenter":"42"}}}]),
        );
        patch_user(
            &mut u,
            json!([{"op":"replace","value":{ENT: {"department":"Sales"}}}]),
        );
        assert_eq!(u[ENT], json!({"department": "Sales", "costCenter": "42"}));
        patch_user(&mut u, json!([{"op":"remove","path": ENT}]));
        assert!(u.get(ENT).is_none());
        assert_eq!(u["schemas"], json!([USER_SCHEMA]));
    }

    // --- docs/entra.md §2.5: disable / re-enable ------------------------------

    #[test]
    fn capitalised_replace_with_string_false_deactivates() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"Replace","path":"active","value":"False"}]),
        );
        assert_eq!(u["active"], json!(false));
    }

    #[test]
    fn string_true_reactivates() {
        let mut u = user();
        u["active"] = json!(false);
        patch_user(
            &mut u,
            json!([{"op":"Replace","path":"active","value":"True"}]),
        );
        assert_eq!(u["active"], json!(true));
    }

    #[test]
    fn boolean_false_in_either_dialect_deactivates() {
        for (op, v) in [
            ("replace", json!(false)),
            ("Replace", json!(false)),
            ("replace", json!("fAlSe")),
        ] {
            let mut u = user();
            patch_user(&mut u, json!([{"op": op, "path":"active","value": v}]));
            assert_eq!(u["active"], json!(false));
        }
        let mut u = user();
        patch_user(&mut u, json!([{"op":"replace","value":{"active":"False"}}]));
        assert_eq!(u["active"], json!(false));
    }

    #[test]
    fn non_boolean_active_is_invalid_value() {
        for v in [json!("no"), json!(0), json!({"x": 1})] {
            let e = patch_err(
                ResourceKind::User,
                &user(),
                json!([{"op":"replace","path":"active","value":v}]),
            );
            assert_scim(&e, 400, ScimType::InvalidValue);
            assert!(e.detail.contains("'active'"), "{}", e.detail);
        }
    }

    // --- manager -------------------------------------------------------------

    fn manager_of(u: &Value) -> Option<Value> {
        u.get(ENT).and_then(|e| e.get("manager")).cloned()
    }

    const MANAGER_PATH: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager";

    #[test]
    fn manager_accepts_bare_id_value_object_and_array() {
        for (op, path, value) in [
            ("Add", MANAGER_PATH, json!("271")),
            ("add", MANAGER_PATH, json!("271")),
            ("replace", MANAGER_PATH, json!({"value": "271"})),
            (
                "Add",
                "manager",
                json!([{"$ref": "http://x/scim/Users/271", "value": "271"}]),
            ),
            ("replace", &format!("{MANAGER_PATH}.value"), json!("271")),
        ] {
            let mut u = user();
            patch_user(&mut u, json!([{"op": op, "path": path, "value": value}]));
            assert_eq!(manager_of(&u), Some(json!({"value": "271"})), "{op} {path}");
            assert_eq!(u["schemas"], json!([USER_SCHEMA, ENT]));
        }
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"replace","value":{MANAGER_PATH: "271"}}]),
        );
        assert_eq!(manager_of(&u), Some(json!({"value": "271"})));
    }

    #[test]
    fn manager_is_removed_by_empty_values_and_remove_ops() {
        let with_manager = || {
            let mut u = user();
            patch_user(
                &mut u,
                json!([{"op":"add","path": MANAGER_PATH,"value":"271"}]),
            );
            u
        };
        for op in [
            json!({"op":"replace","path": MANAGER_PATH,"value":{"value":""}}),
            json!({"op":"replace","path": MANAGER_PATH,"value":""}),
            json!({"op":"Add","path": MANAGER_PATH,"value":null}),
            json!({"op":"remove","path": MANAGER_PATH}),
            json!({"op":"remove","path":"manager[value eq \"271\"]"}),
            json!({"op":"Remove","path": format!("{MANAGER_PATH}[value eq \"271\"]")}),
        ] {
            let mut u = with_manager();
            patch_user(&mut u, json!([op.clone()]));
            assert_eq!(manager_of(&u), None, "{op}");
            assert!(u.get(ENT).is_none(), "empty extension object dropped: {op}");
            assert_eq!(u["schemas"], json!([USER_SCHEMA]));
        }
        let mut u = with_manager();
        patch_user(
            &mut u,
            json!([{"op":"remove","path":"manager[value eq \"someone-else\"]"}]),
        );
        assert_eq!(manager_of(&u), Some(json!({"value": "271"})));
    }

    #[test]
    fn removing_a_manager_sub_attribute_removes_only_it() {
        let with_ref = || {
            let mut u = rich_user();
            u[ENT]["manager"] = json!({"value": "m", "$ref": "https://x/Users/m"});
            u
        };
        for path in [
            format!("{MANAGER_PATH}.$ref"),
            "manager.$ref".to_owned(),
            format!("{MANAGER_PATH}[value eq \"m\"].$ref"),
        ] {
            let mut u = with_ref();
            patch_user(&mut u, json!([{"op": "remove", "path": path}]));
            assert_eq!(manager_of(&u), Some(json!({"value": "m"})), "{path}");
        }
        // The id is the manager: without it there is none.
        for path in [
            format!("{MANAGER_PATH}.value"),
            "manager[value eq \"m\"].value".to_owned(),
        ] {
            let mut u = with_ref();
            patch_user(&mut u, json!([{"op": "remove", "path": path}]));
            assert_eq!(manager_of(&u), None, "{path}");
        }
        // displayName is read-only, so removing it is refused, not the manager.
        let e = patch_err(
            ResourceKind::User,
            &with_ref(),
            json!([{"op": "remove", "path": format!("{MANAGER_PATH}.displayName")}]),
        );
        assert_scim(&e, 400, ScimType::Mutability);
    }

    #[test]
    fn manager_ref_sent_in_a_patch_is_not_stored() {
        // The service derives `$ref` from the id when it renders the user,
        // as it does for a POST or PUT that sends one.
        let elsewhere = json!("https://elsewhere.example/Users/x");
        for (op, path) in [
            ("replace", format!("{MANAGER_PATH}.$ref")),
            ("Add", "manager.$ref".to_owned()),
            ("replace", format!("{MANAGER_PATH}[value eq \"m\"].$ref")),
        ] {
            let mut u = rich_user();
            patch_user(
                &mut u,
                json!([{"op": op, "path": path, "value": elsewhere}]),
            );
            assert_eq!(manager_of(&u), Some(json!({"value": "m"})), "{op} {path}");
            // Without a manager there is nothing to refer to.
            let mut u = user();
            patch_user(
                &mut u,
                json!([{"op": op, "path": format!("{MANAGER_PATH}.$ref"), "value": elsewhere}]),
            );
            assert_eq!(manager_of(&u), None, "{op} {path}");
        }
    }

    #[test]
    fn filtered_manager_change_that_matches_nothing_is_no_target() {
        // rich_user's manager is "m"; user() has none.
        for op in [
            json!({"op": "replace", "path": "manager[value eq \"old\"].value", "value": "new"}),
            json!({"op": "add", "path": format!("{MANAGER_PATH}[value eq \"old\"].value"), "value": "new"}),
            json!({"op": "Replace", "path": "manager[value eq \"old\"]", "value": {"value": "new"}}),
        ] {
            for stored in [rich_user(), user()] {
                let e = patch_err(ResourceKind::User, &stored, json!([op.clone()]));
                assert_scim(&e, 400, ScimType::NoTarget);
            }
            // At ingest the stored manager is unknown: left to applying.
            check_patch(
                ResourceKind::User,
                &parse_patch(&body(json!([op]))).unwrap(),
            )
            .unwrap();
        }
        let mut u = rich_user();
        patch_user(
            &mut u,
            json!([{"op": "replace", "path": "manager[value eq \"m\"].value", "value": "new"}]),
        );
        assert_eq!(manager_of(&u), Some(json!({"value": "new"})));
        // Clearing a manager the filter does not match leaves it, as
        // removing it does.
        let mut u = rich_user();
        patch_user(
            &mut u,
            json!([{"op": "replace", "path": "manager[value eq \"old\"]", "value": ""}]),
        );
        assert_eq!(manager_of(&u), Some(json!({"value": "m"})));
        // A wrong value is refused at ingest, with the worker's answer.
        let e = check_err(
            ResourceKind::User,
            &rich_user(),
            json!([{"op": "replace", "path": "manager[value eq \"old\"].value", "value": 7}]),
        );
        assert_scim(&e, 400, ScimType::InvalidValue);
    }

    #[test]
    fn manager_display_name_is_read_only() {
        let e = patch_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"replace","path": format!("{MANAGER_PATH}.displayName"),"value":"Boss"}]),
        );
        assert_scim(&e, 400, ScimType::Mutability);
    }

    // --- errors on users -------------------------------------------------

    #[test]
    fn unknown_attribute_is_invalid_path_naming_it() {
        let e = patch_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"replace","path":"favouriteColour","value":"x"}]),
        );
        assert_scim(&e, 400, ScimType::InvalidPath);
        assert!(e.detail.contains("favouriteColour"), "{}", e.detail);
        let e = patch_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"replace","path":"name.nick","value":"x"}]),
        );
        assert_scim(&e, 400, ScimType::InvalidPath);
        assert!(
            e.detail.contains("'nick' is not a sub-attribute of 'name'"),
            "{}",
            e.detail
        );
        let e = patch_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"replace","value":{"shoeSize":"9"}}]),
        );
        assert_scim(&e, 400, ScimType::InvalidPath);
        let e = patch_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"replace","path":"urn:example:custom:User:x","value":"9"}]),
        );
        assert_scim(&e, 400, ScimType::InvalidPath);
    }

    #[test]
    fn read_only_attributes_are_mutability_errors() {
        for path in ["id", "meta", "meta.created", "groups"] {
            let e = patch_err(
                ResourceKind::User,
                &user(),
                json!([{"op":"replace","path": path,"value":"x"}]),
            );
            assert_scim(&e, 400, ScimType::Mutability);
        }
        let e = patch_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"replace","value":{"id":"x"}}]),
        );
        assert_scim(&e, 400, ScimType::Mutability);
    }

    #[test]
    fn wrong_value_types_are_invalid_value() {
        for (path, v) in [
            ("displayName", json!({"a": 1})),
            ("name", json!("x")),
            ("name.givenName", json!(["x"])),
            ("emails[type eq \"work\"].value", json!(5)),
        ] {
            let e = patch_err(
                ResourceKind::User,
                &user(),
                json!([{"op":"replace","path": path,"value": v}]),
            );
            assert_scim(&e, 400, ScimType::InvalidValue);
        }
    }

    #[test]
    fn removing_user_name_is_mutability_and_emptying_it_invalid_value() {
        for (op, scim_type) in [
            (
                json!({"op":"remove","path":"userName"}),
                ScimType::Mutability,
            ),
            (
                json!({"op":"replace","path":"userName","value":null}),
                ScimType::Mutability,
            ),
            (
                json!({"op":"replace","path":"userName","value":""}),
                ScimType::InvalidValue,
            ),
        ] {
            let e = patch_err(ResourceKind::User, &user(), json!([op]));
            assert_scim(&e, 400, scim_type);
            assert!(e.detail.contains("userName is required"));
        }
    }

    #[test]
    fn failing_later_operation_leaves_resource_unchanged() {
        let e = patch_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"replace","path":"displayName","value":"changed"},
                   {"op":"replace","path":"active","value":"maybe"}]),
        );
        assert_scim(&e, 400, ScimType::InvalidValue);
        assert!(e.detail.starts_with("operation 2: "), "{}", e.detail);
    }

    // --- parse errors --------------------------------------------------------

    #[test]
    fn body_without_patch_op_schema_is_invalid_syntax() {
        for b in [
            json!([]),
            json!({"Operations": [{"op":"add","path":"nickName","value":"x"}]}),
            json!({"schemas": [USER_SCHEMA], "Operations": [{"op":"add","path":"nickName","value":"x"}]}),
            json!({"schemas": [PATCH_OP_SCHEMA]}),
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": []}),
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": {"op": "add"}}),
        ] {
            let e = parse_patch(&b).unwrap_err();
            assert_scim(&e, 400, ScimType::InvalidSyntax);
            assert!(
                e.detail.contains("PatchOp") || e.detail.contains("Operations"),
                "{}",
                e.detail
            );
        }
    }

    #[test]
    fn structural_names_are_case_insensitive() {
        let ops = parse_patch(&json!({
            "Schemas": [PATCH_OP_SCHEMA],
            "operations": [{"OP": "REPLACE", "Path": "nickName", "Value": "x"}]
        }))
        .unwrap();
        assert_eq!(ops[0].op, OpKind::Replace);
        assert_eq!(ops[0].value, Some(json!("x")));
    }

    #[test]
    fn more_than_a_thousand_operations_is_too_many() {
        let ops: Vec<Value> = (0..=MAX_PATCH_OPERATIONS)
            .map(|_| json!({"op":"add","path":"nickName","value":"x"}))
            .collect();
        let e = parse_patch(&body(Value::Array(ops))).unwrap_err();
        assert_scim(&e, 400, ScimType::TooMany);
    }

    #[test]
    fn operation_errors_have_rfc_keywords() {
        let cases = [
            (
                json!({"op":"move","path":"nickName","value":"x"}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"path":"nickName","value":"x"}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"op": 1,"path":"nickName","value":"x"}),
                ScimType::InvalidSyntax,
            ),
            (json!("add"), ScimType::InvalidSyntax),
            (json!({"op":"remove"}), ScimType::NoTarget),
            (json!({"op":"remove","path":""}), ScimType::NoTarget),
            (
                json!({"op":"replace","path":"nickName"}),
                ScimType::InvalidSyntax,
            ),
            (json!({"op":"add"}), ScimType::InvalidSyntax),
            (json!({"op":"replace","value":"x"}), ScimType::InvalidSyntax),
            (
                json!({"op":"replace","path":"emails[type eq]","value":"x"}),
                ScimType::InvalidPath,
            ),
            (
                json!({"op":"replace","path":"a.b.c","value":"x"}),
                ScimType::InvalidPath,
            ),
            (
                json!({"op":"replace","path": 7,"value":"x"}),
                ScimType::InvalidPath,
            ),
        ];
        for (op, t) in cases {
            let e = parse_patch(&body(json!([op.clone()]))).unwrap_err();
            assert_scim(&e, 400, t);
        }
        let e = parse_patch(&body(json!([{"op":"move","path":"a","value":1}]))).unwrap_err();
        assert!(
            e.detail.contains("use add, remove or replace"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn parsed_paths_keep_filter_and_sub_attribute() {
        let ops = parse_patch(&body(json!([
            {"op":"Replace","path":"emails[type eq \"work\"].value","value":"x"}])))
        .unwrap();
        let Some(PatchPath::Filtered { path, sub, .. }) = &ops[0].path else {
            panic!()
        };
        assert_eq!(path.name, "emails");
        assert_eq!(sub.as_deref(), Some("value"));
        assert_eq!(
            ops[0].path.as_ref().unwrap().to_string(),
            "emails[type eq \"work\"].value"
        );
    }

    // --- docs/entra.md §2.7: groups -----------------------------------------------

    fn patch_group(ops: Value) -> (Value, Vec<MemberChange>) {
        let mut g = group();
        let changes = patch(ResourceKind::Group, &mut g, ops);
        (g, changes)
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entra_add_members_is_returned_not_stored() {
        let (g, changes) = patch_group(
            json!([{"op":"Add","path":"members","value":[{"$ref":null,"value":"f648f8d5ea4e4cd38e9c"}]}]),
        );
        assert_eq!(changes, [MemberChange::Add(ids(&["f648f8d5ea4e4cd38e9c"]))]);
        assert_eq!(g, group());
    }

    #[test]
    fn several_members_in_one_add_and_plain_string_values() {
        let (_, changes) = patch_group(json!([
            {"op":"add","path":"members","value":[{"value":"a","display":"A","name":"x"},{"value":"b","type":"User"}]},
            {"op":"add","path":"members","value":"c"},
            {"op":"add","path":"members","value":{"value":"d"}}]));
        assert_eq!(
            changes,
            [
                MemberChange::Add(ids(&["a", "b"])),
                MemberChange::Add(ids(&["c"])),
                MemberChange::Add(ids(&["d"]))
            ]
        );
    }

    #[test]
    fn default_dialect_remove_with_value_removes_only_listed_members() {
        let (_, changes) =
            patch_group(json!([{"op":"Remove","path":"members","value":[{"value":"u1091"}]}]));
        assert_eq!(changes, [MemberChange::Remove(ids(&["u1091"]))]);
        let (_, changes) = patch_group(
            json!([{"op":"Remove","path":"members","value":[{"$ref":null,"value":"u1"},{"value":"u2"}]}]),
        );
        assert_eq!(changes, [MemberChange::Remove(ids(&["u1", "u2"]))]);
    }

    #[test]
    fn flagged_remove_with_member_filter_removes_that_member() {
        let (_, changes) = patch_group(
            json!([{"op":"remove","path":"members[value eq \"7f4bc1a3-285e-48ae-8202-5accb43efb0e\"]"}]),
        );
        assert_eq!(
            changes,
            [MemberChange::Remove(ids(&[
                "7f4bc1a3-285e-48ae-8202-5accb43efb0e"
            ]))]
        );
        let (_, changes) = patch_group(
            json!([{"op":"remove","path":"members[value eq \"a\" or VALUE EQ \"b\"]"}]),
        );
        assert_eq!(changes, [MemberChange::Remove(ids(&["a", "b"]))]);
    }

    #[test]
    fn remove_members_without_value_removes_all() {
        let (_, changes) = patch_group(json!([{"op":"remove","path":"members"}]));
        assert_eq!(changes, [MemberChange::RemoveAll]);
    }

    #[test]
    fn replace_members_replaces_all() {
        let (_, changes) = patch_group(
            json!([{"op":"replace","path":"members","value":[{"value":"a"},{"value":"b"}]}]),
        );
        assert_eq!(changes, [MemberChange::ReplaceAll(ids(&["a", "b"]))]);
        let (_, changes) = patch_group(json!([{"op":"replace","path":"members","value":[]}]));
        assert_eq!(changes, [MemberChange::ReplaceAll(vec![])]);
    }

    #[test]
    fn pathless_members_keys_become_member_changes() {
        let (g, changes) = patch_group(json!([
            {"op":"replace","value":{"members":[{"value":"a"}], "displayName":"New"}},
            {"op":"add","value":{"members":[{"value":"b"}]}}]));
        assert_eq!(
            changes,
            [
                MemberChange::ReplaceAll(ids(&["a"])),
                MemberChange::Add(ids(&["b"]))
            ]
        );
        assert_eq!(g["displayName"], "New");
        assert!(g.get("members").is_none());
    }

    #[test]
    fn add_and_remove_of_the_same_member_keep_their_order() {
        let (_, changes) = patch_group(json!([
            {"op":"add","path":"members","value":[{"value":"a"}]},
            {"op":"remove","path":"members[value eq \"a\"]"}]));
        assert_eq!(
            changes,
            [
                MemberChange::Add(ids(&["a"])),
                MemberChange::Remove(ids(&["a"]))
            ]
        );
    }

    #[test]
    fn group_rename_by_path_and_pathless_and_external_id() {
        let (g, _) = patch_group(
            json!([{"op":"Replace","path":"displayName","value":"1879db59updatedDisplayName"}]),
        );
        assert_eq!(g["displayName"], "1879db59updatedDisplayName");
        let (g, _) = patch_group(json!([{"op":"replace","value":{"displayName":"WUZPWMBDDCGI"}}]));
        assert_eq!(g["displayName"], "WUZPWMBDDCGI");
        let (g, _) = patch_group(json!([{"op":"replace","value":{"externalId":"new-ext"}}]));
        assert_eq!(g["externalId"], "new-ext");
    }

    #[test]
    fn other_member_filters_are_invalid_filter() {
        for path in [
            "members[display eq \"Ann\"]",
            "members[value ne \"a\"]",
            "members[value eq \"a\" and type eq \"User\"]",
            "members[value pr]",
        ] {
            let e = patch_err(
                ResourceKind::Group,
                &group(),
                json!([{"op":"remove","path": path}]),
            );
            assert_scim(&e, 400, ScimType::InvalidFilter);
            assert!(e.detail.contains("value eq"), "{}", e.detail);
        }
    }

    #[test]
    fn group_member_errors() {
        let e = patch_err(
            ResourceKind::Group,
            &group(),
            json!([{"op":"add","path":"members","value":[{"value":""}]}]),
        );
        assert_scim(&e, 400, ScimType::InvalidValue);
        let e = patch_err(
            ResourceKind::Group,
            &group(),
            json!([{"op":"add","path":"members","value":[{"value": 5}]}]),
        );
        assert_scim(&e, 400, ScimType::InvalidValue);
        let e = patch_err(
            ResourceKind::Group,
            &group(),
            json!([{"op":"add","path":"members[value eq \"a\"]","value":"a"}]),
        );
        assert_scim(&e, 400, ScimType::InvalidPath);
        let e = patch_err(
            ResourceKind::Group,
            &group(),
            json!([{"op":"remove","path":"displayName"}]),
        );
        assert_scim(&e, 400, ScimType::Mutability);
        let e = patch_err(
            ResourceKind::Group,
            &group(),
            json!([{"op":"replace","path":"id","value":"x"}]),
        );
        assert_scim(&e, 400, ScimType::Mutability);
        let e = patch_err(
            ResourceKind::Group,
            &group(),
            json!([{"op":"replace","path":"userName","value":"x"}]),
        );
        assert_scim(&e, 400, ScimType::InvalidPath);
    }

    #[test]
    fn more_than_ten_thousand_member_ids_is_too_many() {
        let half: Vec<Value> = (0..5001).map(|i| json!({"value": i.to_string()})).collect();
        let e = patch_err(
            ResourceKind::Group,
            &group(),
            json!([{"op":"add","path":"members","value": half.clone()},
                   {"op":"add","path":"members","value": half}]),
        );
        assert_scim(&e, 400, ScimType::TooMany);
    }

    #[test]
    fn more_values_than_an_attribute_may_hold_is_too_many() {
        use crate::scim::resource::MAX_ATTRIBUTE_VALUES;
        let roles = |from: usize, n: usize| -> Vec<Value> {
            (from..from + n).map(|i| json!(format!("r{i}"))).collect()
        };
        // In one value.
        let e = check_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"add","path":"roles","value": roles(0, MAX_ATTRIBUTE_VALUES + 1)}]),
        );
        assert_scim(&e, 400, ScimType::TooMany);
        assert!(e.detail.contains("'roles'"), "{}", e.detail);
        // Added up over operations.
        let half = MAX_ATTRIBUTE_VALUES / 2 + 1;
        let e = check_err(
            ResourceKind::User,
            &user(),
            json!([{"op":"add","path":"roles","value": roles(0, half)},
                   {"op":"add","path":"roles","value": roles(half, half)}]),
        );
        assert_scim(&e, 400, ScimType::TooMany);
        // Added to the stored values: only applying can tell.
        let mut full = user();
        full["roles"] = json!(
            roles(0, MAX_ATTRIBUTE_VALUES)
                .into_iter()
                .map(|v| json!({"value": v}))
                .collect::<Vec<_>>()
        );
        let one_more = json!([{"op":"add","path":"roles","value": "another"}]);
        assert!(
            check_patch(
                ResourceKind::User,
                &parse_patch(&body(one_more.clone())).unwrap()
            )
            .is_ok()
        );
        let e = patch_err(ResourceKind::User, &full, one_more);
        assert_scim(&e, 400, ScimType::TooMany);
        // A value already there adds nothing, so it is not refused.
        patch_user(
            &mut full,
            json!([{"op":"add","path":"roles","value": "r0"}]),
        );
        assert_eq!(
            full["roles"].as_array().map(Vec::len),
            Some(MAX_ATTRIBUTE_VALUES)
        );
    }

    #[test]
    fn duplicates_are_found_whatever_the_order_and_case_of_sub_attributes() {
        let mut u = user();
        patch_user(
            &mut u,
            json!([{"op":"add","path":"roles","value":[{"value":"A","display":"x","type":"t"}]},
                   {"op":"add","path":"roles","value":[{"TYPE":"T","Display":"X","value":"a"}]},
                   {"op":"remove","path":"addresses"},
                   {"op":"add","path":"addresses","value":[{"locality":"Oslo","country":"NO"}]},
                   {"op":"add","path":"addresses","value":[{"country":"no","locality":"OSLO"}]}]),
        );
        assert_eq!(
            u["roles"],
            json!([{"value": "A", "display": "x", "type": "t"}])
        );
        assert_eq!(
            u["addresses"],
            json!([{"locality": "Oslo", "country": "NO"}])
        );
    }

    // --- properties ----------------------------------------------------------

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            prop::sample::select(vec![
                "add",
                "Replace",
                "remove",
                "True",
                "",
                "work",
                "emails[type eq \"work\"].value",
                "members",
                "members[value eq \"a\"]",
                "name.givenName",
                "active",
                "userName",
                MANAGER_PATH,
                ENT,
                "id",
                "displayName",
                "emails",
                "roles[primary eq \"True\"].value",
            ])
            .prop_map(Value::from),
            "\\PC{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 20, 5, |inner| {
            let key = prop::sample::select(vec![
                "op",
                "path",
                "value",
                "schemas",
                "Operations",
                "userName",
                "displayName",
                "type",
                "name.givenName",
                "members",
                "active",
                MANAGER_PATH,
                ENT,
                "emails",
                "x",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key.prop_map(str::to_owned), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_op() -> impl Strategy<Value = Value> {
        let op = prop::sample::select(vec!["add", "Replace", "remove", "REMOVE"]);
        let path = prop::option::of(prop::sample::select(vec![
            "userName",
            "displayName",
            "active",
            "emails",
            "emails[type eq \"work\"].value",
            "emails[type eq \"home\"]",
            "addresses[type eq \"work\"].formatted",
            "name",
            "name.familyName",
            MANAGER_PATH,
            "manager[value eq \"m\"]",
            "manager[value eq \"m\"].value",
            "manager.$ref",
            ENT,
            "members",
            "members[value eq \"a\"]",
            "members[value eq \"a\" or value eq \"b\"]",
            "externalId",
            "id",
            "groups",
            "roles",
            "roles[type eq \"R\"]",
            "emails.type",
            "emails[value co \"x\"].display",
            "emails[type eq \"work\" or type eq \"home\"]",
            "phoneNumbers[type eq \"work\"]",
            "name[givenName eq \"Ann\"].familyName",
            "bogus",
        ]));
        (op, path, prop::option::of(arb_json())).prop_map(|(op, path, value)| {
            let mut m = Map::new();
            m.insert("op".into(), json!(op));
            if let Some(p) = path {
                m.insert("path".into(), json!(p));
            }
            if let Some(v) = value {
                m.insert("value".into(), v);
            }
            Value::Object(m)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(384))]

        #[test]
        fn parse_patch_never_panics_on_arbitrary_json(b in arb_json()) {
            let _ = parse_patch(&b);
            let _ = parse_patch(&body(b));
        }

        #[test]
        fn apply_patch_is_all_or_nothing(ops in prop::collection::vec(arb_op(), 1..6), is_user in any::<bool>()) {
            let (kind, start) = if is_user { (ResourceKind::User, user()) } else { (ResourceKind::Group, group()) };
            if let Ok(parsed) = parse_patch(&body(Value::Array(ops))) {
                let mut r = start.clone();
                match apply_patch(kind, &mut r, &parsed) {
                    Err(e) => {
                        prop_assert_eq!(&r, &start);
                        prop_assert_eq!(e.status, 400);
                    }
                    Ok(_) => {
                        // Still a valid resource of its kind.
                        let v = crate::scim::resource::validate_resource(kind, r.clone());
                        prop_assert!(v.is_ok(), "{:?} -> {}", v, r);
                    }
                }
            }
        }

        #[test]
        fn checking_never_refuses_what_applying_accepts(
            ops in prop::collection::vec(arb_op(), 1..6),
            stored in 0..4usize,
        ) {
            let (kind, mut resource) = match stored {
                0 => (ResourceKind::User, user()),
                1 => (ResourceKind::User, bare_user()),
                2 => (ResourceKind::User, rich_user()),
                _ => (ResourceKind::Group, group()),
            };
            if let Ok(parsed) = parse_patch(&body(Value::Array(ops))) {
                let checked = check_patch(kind, &parsed);
                let applied = apply_patch(kind, &mut resource, &parsed).map(|_| ());
                if applied.is_ok() {
                    prop_assert!(checked.is_ok(), "{:?}", checked);
                }
                // With one operation nothing earlier can fail first: the
                // refusal is the very one the worker would give.
                if parsed.len() == 1 && checked.is_err() {
                    prop_assert_eq!(checked, applied);
                }
            }
        }

        #[test]
        fn apply_patch_never_panics_on_arbitrary_resources(resource in arb_json(), ops in prop::collection::vec(arb_op(), 1..4)) {
            if let Ok(parsed) = parse_patch(&body(Value::Array(ops))) {
                let mut r = resource.clone();
                if apply_patch(ResourceKind::User, &mut r, &parsed).is_err() {
                    prop_assert_eq!(&r, &resource);
                }
            }
        }
    }
}
