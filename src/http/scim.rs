//! SCIM endpoints: writes go through the queue and answer with the committed
//! outcome; reads go straight to the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::auth::OrgId;
use super::error::{Error, scim_response, scim_text_response};
use crate::jobs::reply::Outcome;
use crate::jobs::{ChangeOp, ScimChange};
use crate::reconcile::apply::{matches_user, render_team, render_team_with, render_user};
use crate::scim::ResourceKind;
use crate::scim::body::parse_body;
use crate::scim::error::{ScimError, ScimType};
use crate::scim::filter::{
    AttrPath, CompValue, Filter, matches, parse_attr_path, parse_filter, validate_filter,
};
use crate::scim::patch::{check_patch, parse_patch};
use crate::scim::render::{etag, etag_matches};
use crate::scim::resource::{
    group_fields, group_member_ids, project, require_email, user_fields, validate_resource,
};
use crate::scim::schema::{LIST_RESPONSE_SCHEMA, SEARCH_REQUEST_SCHEMA};
use crate::store::teams::{self, TeamQuery, TeamRow};
use crate::store::users::{self, UserQuery, UserRow};
use crate::store::{Order, SortKey, Store};

/// Largest page a list returns; published in ServiceProviderConfig.
pub const MAX_PAGE_SIZE: i64 = 200;
/// Page size when the client names none.
pub const DEFAULT_PAGE_SIZE: i64 = 100;
/// Rows read per batch when a filter must be evaluated outside SQL.
const SCAN_BATCH: i64 = 500;

/// Parses a request body as JSON, whatever its Content-Type says, refusing
/// what no SCIM request may hold (see [`parse_body`]).
fn json_body(body: &Bytes) -> Result<Value, Error> {
    if body.is_empty() {
        return Err(ScimError::bad_request(
            ScimType::InvalidSyntax,
            "the request has no body; send a JSON object",
        )
        .into());
    }
    Ok(parse_body(body)?)
}

/// The entity tags of `If-Match`, its lines joined as one list (RFC 9110
/// §5.3). A value that is not visible ASCII is 400 invalidSyntax: taken as
/// no header, it would let the write apply unconditionally.
fn if_match(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let mut tags: Vec<&str> = Vec::new();
    for value in headers.get_all(header::IF_MATCH) {
        tags.push(value.to_str().map_err(|_| {
            ScimError::bad_request(
                ScimType::InvalidSyntax,
                "If-Match must hold entity tags in visible ASCII, such as W/\"3\" from \
                 meta.version",
            )
        })?);
    }
    Ok((!tags.is_empty()).then(|| tags.join(", ")))
}

/// Longest id a resource can have. The ids this service issues are
/// hyphenated UUIDs (36 bytes); the margin keeps the check from depending
/// on that format.
const MAX_ID_BYTES: usize = 64;

/// 404 for an id that names no resource whatever the database holds, so it
/// is answered without a query and a write naming it is never queued: an id
/// holding U+0000 could not even be compared in PostgreSQL, and one longer
/// than [`MAX_ID_BYTES`] would not fit the provisioning log's index.
fn check_id(kind: ResourceKind, id: &str) -> Result<(), Error> {
    if id.len() > MAX_ID_BYTES || id.contains('\0') {
        return Err(resource_not_found(kind));
    }
    Ok(())
}

fn resource_not_found(kind: ResourceKind) -> Error {
    ScimError::not_found(format!("{} not found", kind.name())).into()
}

/// Validates a User or Group body at ingest, so bad input never reaches the queue.
fn validated(kind: ResourceKind, body: &Bytes) -> Result<Value, Error> {
    let resource = validate_resource(kind, json_body(body)?)?;
    match kind {
        ResourceKind::User => {
            let fields = user_fields(&resource)?;
            require_email(&fields)?;
        }
        ResourceKind::Group => {
            group_fields(&resource)?;
            group_member_ids(&resource)?;
        }
    }
    Ok(resource)
}

/// Queues a change and waits for its committed outcome until the deadline.
async fn submit(state: &AppState, change: ScimChange) -> Result<Response, Error> {
    let change_id = change.change_id.clone();
    // Every later line of this request names the change it waits for.
    tracing::Span::current().record("change_id", change_id.as_str());
    let waiter = state.replies.register(&change_id);
    let queued = Instant::now();
    state
        .queue
        .push(&change, state.settings.queue.max_deliveries)
        .await
        .map_err(|e| Error::Unavailable(format!("{e:#}")))?;
    tracing::debug!(change_id, "change queued");
    let deadline = queued + Duration::from_secs(state.settings.server.request_deadline_secs);
    // The wake-up normally ends the wait; reading the log is for a lost
    // one (Redis reconnecting), so it starts late and never floods the
    // database with reads of changes that are simply still queued.
    let mut poll = Duration::from_millis(250);
    loop {
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(
                change_id,
                "no outcome before the deadline; answering 503, the change will still apply"
            );
            return Err(Error::Unavailable(format!(
                "change {change_id} was not applied within the request deadline"
            )));
        }
        if let Some(outcome) = waiter.wait(poll.min(deadline - now)).await {
            return Ok(answer(outcome));
        }
        let id = change_id.clone();
        // A failed read here is not a failed change: keep waiting.
        match state
            .store
            .run(move |c| crate::store::log::find(c, &id).map_err(crate::store::Error::from))
            .await
        {
            Ok(Some(row)) => return Ok(answer(Outcome::from(&row))),
            Ok(None) => {}
            Err(e) => tracing::warn!(change_id, error = %e, "cannot read the outcome yet"),
        }
        poll = (poll * 2).min(Duration::from_millis(500));
    }
}

/// What [`answer`] reads from a stored answer: its `meta`, for the
/// `ETag` and `Location` headers; the rest of the body is sent as stored.
#[derive(serde::Deserialize)]
struct StoredMeta<'a> {
    #[serde(borrow)]
    meta: Option<MetaHeaders<'a>>,
}

#[derive(serde::Deserialize)]
struct MetaHeaders<'a> {
    #[serde(borrow)]
    version: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    location: Option<std::borrow::Cow<'a, str>>,
}

/// The HTTP answer for a committed outcome, exactly as the worker stored
/// it: the body is sent as its text, not parsed and written again.
pub fn answer(row: Outcome) -> Response {
    let status = u16::try_from(row.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let Some(text) = row.response else {
        return status.into_response();
    };
    let meta = serde_json::from_str::<StoredMeta<'_>>(&text)
        .ok()
        .and_then(|m| m.meta);
    let mut headers = HeaderMap::new();
    if let Some(meta) = &meta {
        if let Some(v) = meta
            .version
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(header::ETAG, v);
        }
        if status == StatusCode::CREATED
            && let Some(v) = meta
                .location
                .as_deref()
                .and_then(|l| HeaderValue::from_str(l).ok())
        {
            headers.insert(header::LOCATION, v);
        }
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(super::error::RETRY_AFTER_SECS),
        );
    }
    let mut response = scim_text_response(status, text);
    response.headers_mut().extend(headers);
    response
}

async fn create(
    kind: ResourceKind,
    state: AppState,
    org: OrgId,
    body: Bytes,
) -> Result<Response, Error> {
    let resource = validated(kind, &body)?;
    let id = uuid::Uuid::new_v4().to_string();
    let change = ScimChange::new(
        &org.0,
        &state.base_url,
        ChangeOp::Create { kind, id, resource },
    );
    submit(&state, change).await
}

async fn replace(
    kind: ResourceKind,
    state: AppState,
    org: OrgId,
    id: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let resource = validated(kind, &body)?;
    check_id(kind, &id)?;
    let change = ScimChange::new(
        &org.0,
        &state.base_url,
        ChangeOp::Replace {
            kind,
            id,
            resource,
            if_match: if_match(&headers)?,
        },
    );
    submit(&state, change).await
}

async fn patch(
    kind: ResourceKind,
    state: AppState,
    org: OrgId,
    id: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let body = json_body(&body)?;
    // What is wrong whatever is stored is answered now; the worker parses
    // and applies again, and makes the checks that need the stored values.
    check_patch(kind, &parse_patch(&body)?)?;
    check_id(kind, &id)?;
    let change = ScimChange::new(
        &org.0,
        &state.base_url,
        ChangeOp::Patch {
            kind,
            id,
            body,
            if_match: if_match(&headers)?,
        },
    );
    submit(&state, change).await
}

async fn delete(
    kind: ResourceKind,
    state: AppState,
    org: OrgId,
    id: String,
    headers: HeaderMap,
) -> Result<Response, Error> {
    check_id(kind, &id)?;
    let change = ScimChange::new(
        &org.0,
        &state.base_url,
        ChangeOp::Delete {
            kind,
            id,
            if_match: if_match(&headers)?,
        },
    );
    submit(&state, change).await
}

/// Query parameters, looked up case-insensitively.
struct Params(HashMap<String, String>);

impl Params {
    /// The parameters of a query string, decoded as a form (`+` is a space).
    fn parse(query: Option<&str>) -> Result<Self, Error> {
        let pairs = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes());
        Self::from_pairs(pairs.map(|(k, v)| (k.into_owned(), v.into_owned())))
    }

    /// A parameter named twice, in any case, is 400 invalidSyntax: which
    /// one counts would be a guess (a map would keep either).
    fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, Error> {
        let mut params = HashMap::new();
        for (name, value) in pairs {
            if params.insert(name.to_ascii_lowercase(), value).is_some() {
                return Err(ScimError::bad_request(
                    ScimType::InvalidSyntax,
                    format!(
                        "the parameter \"{name}\" is given more than once (parameter names are \
                         case-insensitive); send it once"
                    ),
                )
                .into());
            }
        }
        Ok(Params(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    fn int(&self, name: &str) -> Result<Option<i64>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
                ScimError::bad_request(
                    ScimType::InvalidValue,
                    format!("{name} must be an integer, got \"{v}\""),
                )
                .into()
            }),
        }
    }

    fn paths(&self, name: &str) -> Result<Vec<AttrPath>, Error> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| parse_attr_path(p).map_err(Error::from))
                .collect(),
        }
    }
}

/// What `attributes` / `excludedAttributes` ask for.
struct Projection {
    attributes: Vec<AttrPath>,
    excluded: Vec<AttrPath>,
}

impl Projection {
    fn from_params(params: &Params) -> Result<Self, Error> {
        Ok(Projection {
            attributes: params.paths("attributes")?,
            excluded: params.paths("excludedAttributes")?,
        })
    }

    fn apply(&self, kind: ResourceKind, resource: &mut Value) {
        if !self.attributes.is_empty() || !self.excluded.is_empty() {
            project(kind, resource, &self.attributes, &self.excluded);
        }
    }

    /// Whether a group's members must be loaded to answer.
    fn wants_members(&self) -> bool {
        let is_members = |p: &AttrPath| p.name.eq_ignore_ascii_case("members");
        if self
            .excluded
            .iter()
            .any(|p| is_members(p) && p.sub.is_none())
        {
            return false;
        }
        self.attributes.is_empty() || self.attributes.iter().any(is_members)
    }
}

async fn get_one(
    kind: ResourceKind,
    state: AppState,
    org: OrgId,
    id: String,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let projection = Projection::from_params(&params)?;
    check_id(kind, &id)?;
    let with_members = projection.wants_members();
    let base = state.base_url.clone();
    let found = state
        .store
        .run(
            move |c| -> Result<Option<(Value, i64)>, crate::store::Error> {
                Ok(match kind {
                    ResourceKind::User => match users::find(c, &org.0, &id)? {
                        Some(row) => Some((render_user(&row, &base)?, row.version)),
                        None => None,
                    },
                    ResourceKind::Group => match teams::find(c, &org.0, &id)? {
                        Some(row) if with_members => {
                            Some((render_team(c, &row, &base)?, row.version))
                        }
                        Some(row) => Some((render_team_with(&row, &base, None)?, row.version)),
                        None => None,
                    },
                })
            },
        )
        .await?;
    let Some((mut resource, version)) = found else {
        return Err(resource_not_found(kind));
    };
    if let Some(tags) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && etag_matches(tags, version)
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag(version)) {
            response.headers_mut().insert(header::ETAG, v);
        }
        return Ok(response);
    }
    projection.apply(kind, &mut resource);
    let mut response = scim_response(StatusCode::OK, &resource);
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

/// The parts of a filter that run in SQL, and whether anything is left over.
fn user_query(filter: Option<&Filter>) -> (UserQuery, bool) {
    let mut q = UserQuery::default();
    let Some(filter) = filter else {
        return (q, false);
    };
    let mut residual = false;
    for term in filter.conjuncts() {
        let pushed = match term.as_simple_eq() {
            Some((path, value)) if is_core_attr(path, ResourceKind::User) => {
                match (
                    path.name.to_ascii_lowercase().as_str(),
                    path.sub.as_deref(),
                    value,
                ) {
                    ("username", None, CompValue::Str(s)) => {
                        set(&mut q.user_name_key, s.to_lowercase())
                    }
                    ("externalid", None, CompValue::Str(s)) => set(&mut q.external_id, s.clone()),
                    ("displayname", None, CompValue::Str(s)) => {
                        set(&mut q.display_name_key, s.to_lowercase())
                    }
                    ("id", None, CompValue::Str(s)) => set(&mut q.id, s.clone()),
                    ("active", None, CompValue::Bool(b)) => set(&mut q.active, *b),
                    ("emails", Some(sub), CompValue::Str(s))
                        if sub.eq_ignore_ascii_case("value") =>
                    {
                        set(&mut q.email_key, s.to_lowercase())
                    }
                    _ => false,
                }
            }
            _ => {
                // emails[type eq "work" and value eq "x"] (Entra's form of
                // matching by work email): narrow by the value in SQL and
                // leave the whole term to the evaluator.
                if let Filter::ValuePath { path, filter } = term
                    && path.name.eq_ignore_ascii_case("emails")
                    && is_core_attr(path, ResourceKind::User)
                {
                    for inner in filter.conjuncts() {
                        if let Some((p, CompValue::Str(s))) = inner.as_simple_eq()
                            && p.name.eq_ignore_ascii_case("value")
                            && p.sub.is_none()
                            && q.email_key.is_none()
                        {
                            q.email_key = Some(s.to_lowercase());
                        }
                    }
                }
                false
            }
        };
        residual |= !pushed;
    }
    (q, residual)
}

fn team_query(filter: Option<&Filter>) -> (TeamQuery, bool) {
    let mut q = TeamQuery::default();
    let Some(filter) = filter else {
        return (q, false);
    };
    let mut residual = false;
    for term in filter.conjuncts() {
        let pushed = match term.as_simple_eq() {
            Some((path, value)) if is_core_attr(path, ResourceKind::Group) => {
                match (
                    path.name.to_ascii_lowercase().as_str(),
                    path.sub.as_deref(),
                    value,
                ) {
                    ("displayname", None, CompValue::Str(s)) => {
                        set(&mut q.display_name_key, s.to_lowercase())
                    }
                    ("externalid", None, CompValue::Str(s)) => set(&mut q.external_id, s.clone()),
                    ("id", None, CompValue::Str(s)) => set(&mut q.id, s.clone()),
                    ("members", None | Some("value"), CompValue::Str(s)) => {
                        set(&mut q.member_id, s.clone())
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        residual |= !pushed;
    }
    (q, residual)
}

/// Sets a SQL condition unless one is already set (a second `userName eq`
/// in one conjunction is left to the evaluator).
fn set<T>(slot: &mut Option<T>, value: T) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(value);
    true
}

fn is_core_attr(path: &AttrPath, kind: ResourceKind) -> bool {
    let core = match kind {
        ResourceKind::User => crate::scim::schema::USER_SCHEMA,
        ResourceKind::Group => crate::scim::schema::GROUP_SCHEMA,
    };
    path.urn
        .as_deref()
        .is_none_or(|u| u.eq_ignore_ascii_case(core))
}

/// The order `sortBy` / `sortOrder` ask for (RFC 7644 §3.4.2.3).
fn sort_order(kind: ResourceKind, params: &Params) -> Result<Order, Error> {
    let descending = match params.get("sortOrder").map(str::trim) {
        None | Some("") => false,
        Some(o) if o.eq_ignore_ascii_case("ascending") => false,
        Some(o) if o.eq_ignore_ascii_case("descending") => true,
        Some(o) => {
            return Err(ScimError::bad_request(
                ScimType::InvalidValue,
                format!("sortOrder must be \"ascending\" or \"descending\", got \"{o}\""),
            )
            .into());
        }
    };
    let Some(by) = params
        .get("sortBy")
        .map(str::trim)
        .filter(|b| !b.is_empty())
    else {
        return Ok(Order {
            key: SortKey::Created,
            descending,
        });
    };
    let path = parse_attr_path(by)?;
    let name = match &path.sub {
        Some(sub) => format!("{}.{sub}", path.name),
        None => path.name.clone(),
    }
    .to_ascii_lowercase();
    let key = match (kind, name.as_str()) {
        (_, "meta.created") => SortKey::Created,
        (_, "meta.lastmodified") => SortKey::LastModified,
        (_, "id") => SortKey::Id,
        (_, "externalid") => SortKey::ExternalId,
        (ResourceKind::User, "username") => SortKey::Name,
        (_, "displayname") => SortKey::DisplayName,
        _ => {
            let names = match kind {
                ResourceKind::User => {
                    "userName, displayName, externalId, id, meta.created, meta.lastModified"
                }
                ResourceKind::Group => {
                    "displayName, externalId, id, meta.created, meta.lastModified"
                }
            };
            return Err(ScimError::bad_request(
                ScimType::InvalidValue,
                format!("cannot sort by \"{by}\"; sortBy accepts {names}"),
            )
            .into());
        }
    };
    Ok(Order { key, descending })
}

/// One page of resources and the total.
struct Page {
    total: i64,
    resources: Vec<Value>,
}

async fn list(
    kind: ResourceKind,
    state: AppState,
    org: OrgId,
    params: Params,
) -> Result<Response, Error> {
    let filter = match params.get("filter") {
        Some(f) if !f.trim().is_empty() => {
            let filter = parse_filter(f)?;
            validate_filter(&filter, kind)?;
            Some(filter)
        }
        _ => None,
    };
    let start = params.int("startIndex")?.unwrap_or(1).max(1);
    let count = params
        .int("count")?
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .clamp(0, MAX_PAGE_SIZE);
    let projection = Projection::from_params(&params)?;
    let with_members = projection.wants_members();
    let order = sort_order(kind, &params)?;
    let base = state.base_url.clone();
    let page = match lone_user_name(kind, filter.as_ref()) {
        Some(key) if start == 1 && count > 0 => {
            let row = state.user_names.find(org.0.clone(), key).await?;
            let resources = row
                .iter()
                .map(|r| render_user(r, &base))
                .collect::<Result<Vec<_>, _>>()?;
            Page {
                total: i64::try_from(resources.len()).unwrap_or(1),
                resources,
            }
        }
        _ => {
            let spec = ListSpec {
                filter: filter.map(Arc::new),
                order,
                start,
                count,
                base: Arc::from(base),
                with_members,
            };
            match kind {
                ResourceKind::User => list_users(&state.store, &org.0, &spec).await?,
                ResourceKind::Group => list_teams(&state.store, &org.0, &spec).await?,
            }
        }
    };
    let mut resources = page.resources;
    for r in &mut resources {
        projection.apply(kind, r);
    }
    let body = json!({
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": page.total,
        "startIndex": start,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    });
    Ok(scim_response(StatusCode::OK, &body))
}

/// The lower-cased userName when a filter on users is Entra ID's lookup,
/// `userName eq "…"` and nothing else: at most one user matches.
fn lone_user_name(kind: ResourceKind, filter: Option<&Filter>) -> Option<String> {
    if kind != ResourceKind::User {
        return None;
    }
    match user_query(filter) {
        (
            UserQuery {
                user_name_key: Some(key),
                id: None,
                external_id: None,
                display_name_key: None,
                email_key: None,
                active: None,
            },
            false,
        ) => Some(key),
        _ => None,
    }
}

/// The total number of matches when the first page already holds them all
/// (it came back short), which spares Entra ID's lookups by userName or
/// displayName a second, counting query.
fn page_total(offset: i64, limit: i64, returned: usize) -> Option<i64> {
    let returned = i64::try_from(returned).ok()?;
    (offset == 0 && limit > 0 && returned < limit).then_some(returned)
}

fn window(start: i64, count: i64) -> (i64, i64) {
    (start - 1, count)
}

/// What one list asks for. Owned, so that each batch of a scan can take it
/// along to the blocking pool.
struct ListSpec {
    filter: Option<Arc<Filter>>,
    order: Order,
    start: i64,
    count: i64,
    base: Arc<str>,
    /// Whether groups are rendered with their members.
    with_members: bool,
}

/// What one batch of a scan found.
struct Batch<R> {
    /// How many rows of the batch match the filter.
    matched: i64,
    /// Those of them that fall in the window, rendered.
    resources: Vec<Value>,
    /// The batch's last row, where the next batch resumes; `None` when the
    /// batch came back short, so the scan is over.
    resume: Option<R>,
}

impl<R> Batch<R> {
    /// Whether the next match, after `seen` in the batches before, falls
    /// in the window.
    fn next_on_page(&self, seen: i64, (offset, limit): (i64, i64)) -> bool {
        let at = seen + self.matched;
        at >= offset && at < offset + limit
    }

    /// Where the next batch resumes: after the last row, if the batch was
    /// full and more rows may follow.
    fn resume_after(&mut self, mut rows: Vec<R>) {
        let full = i64::try_from(rows.len()).unwrap_or(0) >= SCAN_BATCH;
        self.resume = if full { rows.pop() } else { None };
    }
}

impl<R> Default for Batch<R> {
    fn default() -> Self {
        Batch {
            matched: 0,
            resources: Vec::new(),
            resume: None,
        }
    }
}

async fn list_users(
    store: &Store,
    org: &str,
    spec: &ListSpec,
) -> Result<Page, crate::store::Error> {
    let (q, residual) = user_query(spec.filter.as_deref());
    let window = window(spec.start, spec.count);
    let (offset, limit) = window;
    let order = spec.order;
    let org = org.to_owned();
    let base = spec.base.clone();
    let Some(filter) = spec.filter.clone().filter(|_| residual) else {
        return store
            .run(move |c| {
                let rows = if limit > 0 {
                    users::page(c, &org, &q, order, offset, limit)?
                } else {
                    Vec::new()
                };
                let total = match page_total(offset, limit, rows.len()) {
                    Some(total) => total,
                    None => users::count(c, &org, &q)?,
                };
                let resources = rows
                    .iter()
                    .map(|r| render_user(r, &base))
                    .collect::<Result<_, _>>()?;
                Ok(Page { total, resources })
            })
            .await;
    };
    // Evaluate the rest of the filter batch by batch: memory stays bounded
    // by the batch and the page, whatever the tenant's size. Each batch
    // takes a connection and gives it back, so a scan of a large tenant
    // keeps none from the other requests for its whole length, and one
    // whose client has gone stops at the next batch.
    let mut total = 0;
    let mut resources = Vec::new();
    let mut after = None;
    loop {
        let (org, q, base, filter) = (org.clone(), q.clone(), base.clone(), filter.clone());
        let seen = total;
        let batch = store
            .run(move |c| -> Result<Batch<UserRow>, crate::store::Error> {
                let rows = users::scan(c, &org, &q, order, after.as_ref(), SCAN_BATCH)?;
                let mut batch = Batch::default();
                for row in &rows {
                    let resource = render_user(row, &base)?;
                    if matches_user(&filter, &resource, row.active) {
                        if batch.next_on_page(seen, window) {
                            batch.resources.push(resource);
                        }
                        batch.matched += 1;
                    }
                }
                batch.resume_after(rows);
                Ok(batch)
            })
            .await?;
        total += batch.matched;
        resources.extend(batch.resources);
        after = batch.resume;
        if after.is_none() {
            break;
        }
    }
    Ok(Page { total, resources })
}

/// A group as a list answers it, with its members or without.
fn render_group(
    c: &mut crate::store::Conn,
    row: &teams::TeamRow,
    base: &str,
    members: bool,
) -> Result<Value, crate::store::Error> {
    if members {
        render_team(c, row, base)
    } else {
        render_team_with(row, base, None)
    }
}

async fn list_teams(
    store: &Store,
    org: &str,
    spec: &ListSpec,
) -> Result<Page, crate::store::Error> {
    let (q, residual) = team_query(spec.filter.as_deref());
    let window = window(spec.start, spec.count);
    let (offset, limit) = window;
    let order = spec.order;
    let with_members = spec.with_members;
    let org = org.to_owned();
    let base = spec.base.clone();
    let Some(filter) = spec.filter.clone().filter(|_| residual) else {
        return store
            .run(move |c| {
                let rows = if limit > 0 {
                    teams::page(c, &org, &q, order, offset, limit)?
                } else {
                    Vec::new()
                };
                let total = match page_total(offset, limit, rows.len()) {
                    Some(total) => total,
                    None => teams::count(c, &org, &q)?,
                };
                let mut resources = Vec::with_capacity(rows.len());
                for row in &rows {
                    resources.push(render_group(c, row, &base, with_members)?);
                }
                Ok(Page { total, resources })
            })
            .await;
    };
    // Members are loaded to match only when the filter looks at them, and
    // to answer only for the groups on the page: a group's members may
    // number a hundred thousand. Batches as in `list_users`.
    let match_members = names_members(&filter);
    let mut total = 0;
    let mut resources = Vec::new();
    let mut after = None;
    loop {
        let (org, q, base, filter) = (org.clone(), q.clone(), base.clone(), filter.clone());
        let seen = total;
        let batch = store
            .run(move |c| -> Result<Batch<TeamRow>, crate::store::Error> {
                let rows = teams::scan(c, &org, &q, order, after.as_ref(), SCAN_BATCH)?;
                let mut batch = Batch::default();
                for row in &rows {
                    let resource = render_group(c, row, &base, match_members)?;
                    if matches(&filter, ResourceKind::Group, &resource) {
                        if batch.next_on_page(seen, window) {
                            let resource = if with_members == match_members {
                                resource
                            } else {
                                render_group(c, row, &base, with_members)?
                            };
                            batch.resources.push(resource);
                        }
                        batch.matched += 1;
                    }
                }
                batch.resume_after(rows);
                Ok(batch)
            })
            .await?;
        total += batch.matched;
        resources.extend(batch.resources);
        after = batch.resume;
        if after.is_none() {
            break;
        }
    }
    Ok(Page { total, resources })
}

/// Whether a filter looks at a group's members anywhere.
fn names_members(filter: &Filter) -> bool {
    match filter {
        Filter::Compare { path, .. } | Filter::Present(path) | Filter::ValuePath { path, .. } => {
            path.name.eq_ignore_ascii_case("members")
        }
        Filter::And(a, b) | Filter::Or(a, b) => names_members(a) || names_members(b),
        Filter::Not(inner) => names_members(inner),
    }
}

/// Turns a SearchRequest body (RFC 7644 §3.4.3) into the parameters a GET
/// list takes, so both run the same code.
fn search_params(body: &Bytes) -> Result<Params, Error> {
    let body = json_body(body)?;
    let Some(obj) = body.as_object() else {
        return Err(ScimError::bad_request(
            ScimType::InvalidSyntax,
            "a search request must be a JSON object",
        )
        .into());
    };
    let has_schema = obj
        .get("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|u| u.as_str() == Some(SEARCH_REQUEST_SCHEMA)));
    if !has_schema {
        return Err(ScimError::bad_request(
            ScimType::InvalidSyntax,
            format!("a search request needs \"schemas\": [\"{SEARCH_REQUEST_SCHEMA}\"]"),
        )
        .into());
    }
    let mut params = Vec::with_capacity(obj.len());
    for (key, value) in obj {
        let text = match (key.as_str(), value) {
            ("schemas", _) | (_, Value::Null) => continue,
            ("attributes" | "excludedAttributes", Value::Array(items)) => {
                let mut names = Vec::with_capacity(items.len());
                for item in items {
                    let Some(name) = item.as_str() else {
                        return Err(ScimError::bad_request(
                            ScimType::InvalidValue,
                            format!("{key} must be a list of attribute names"),
                        )
                        .into());
                    };
                    names.push(name.to_owned());
                }
                names.join(",")
            }
            (_, Value::String(text)) => text.clone(),
            (_, Value::Number(n)) => n.to_string(),
            _ => {
                return Err(ScimError::bad_request(
                    ScimType::InvalidValue,
                    format!("search request member {key} has the wrong type"),
                )
                .into());
            }
        };
        params.push((key.clone(), text));
    }
    Params::from_pairs(params)
}

pub async fn search_users(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    body: Bytes,
) -> Result<Response, Error> {
    list(ResourceKind::User, s, o, search_params(&body)?).await
}

pub async fn search_groups(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    body: Bytes,
) -> Result<Response, Error> {
    list(ResourceKind::Group, s, o, search_params(&body)?).await
}

/// `POST /.search`: Users then Groups, paged as one list. A filter naming
/// attributes only one type has matches only resources of that type.
pub async fn search_all(
    State(state): State<AppState>,
    Extension(org): Extension<OrgId>,
    body: Bytes,
) -> Result<Response, Error> {
    let params = search_params(&body)?;
    let filter = match params.get("filter") {
        Some(f) if !f.trim().is_empty() => Some(parse_filter(f)?),
        _ => None,
    };
    let applies = |kind| {
        filter
            .as_ref()
            .is_none_or(|f| validate_filter(f, kind).is_ok())
    };
    let (users_ok, groups_ok) = (applies(ResourceKind::User), applies(ResourceKind::Group));
    if !users_ok
        && !groups_ok
        && let Some(f) = &filter
    {
        validate_filter(f, ResourceKind::User)?;
    }
    let start = params.int("startIndex")?.unwrap_or(1).max(1);
    let count = params
        .int("count")?
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .clamp(0, MAX_PAGE_SIZE);
    let projection = Projection::from_params(&params)?;
    let with_members = projection.wants_members();
    // Across types only attributes both have can order the list.
    let order = sort_order(ResourceKind::Group, &params)?;
    let empty = || Page {
        total: 0,
        resources: Vec::new(),
    };
    let spec = ListSpec {
        filter: filter.map(Arc::new),
        order,
        start,
        count,
        base: Arc::from(state.base_url.as_str()),
        with_members,
    };
    let users_page = if users_ok {
        list_users(&state.store, &org.0, &spec).await?
    } else {
        empty()
    };
    // The groups' window starts where the users' total ends.
    let skip = (start - 1 - users_page.total).max(0);
    let room = count - i64::try_from(users_page.resources.len()).unwrap_or(0);
    let groups_page = if groups_ok {
        let rest = ListSpec {
            start: skip + 1,
            count: room.max(0),
            ..spec
        };
        list_teams(&state.store, &org.0, &rest).await?
    } else {
        empty()
    };
    let mut resources = Vec::new();
    for (kind, page) in [
        (ResourceKind::User, users_page.resources),
        (ResourceKind::Group, groups_page.resources),
    ] {
        for mut r in page {
            projection.apply(kind, &mut r);
            resources.push(r);
        }
    }
    let body = json!({
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": users_page.total + groups_page.total,
        "startIndex": start,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    });
    Ok(scim_response(StatusCode::OK, &body))
}

// Route handlers: one per method and resource type, each a thin wrapper.

pub async fn create_user(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    body: Bytes,
) -> Result<Response, Error> {
    create(ResourceKind::User, s, o, body).await
}

pub async fn create_group(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    body: Bytes,
) -> Result<Response, Error> {
    create(ResourceKind::Group, s, o, body).await
}

pub async fn list_user_resources(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    RawQuery(q): RawQuery,
) -> Result<Response, Error> {
    list(ResourceKind::User, s, o, Params::parse(q.as_deref())?).await
}

pub async fn list_group_resources(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    RawQuery(q): RawQuery,
) -> Result<Response, Error> {
    list(ResourceKind::Group, s, o, Params::parse(q.as_deref())?).await
}

pub async fn get_user(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, Error> {
    get_one(
        ResourceKind::User,
        s,
        o,
        id,
        Params::parse(q.as_deref())?,
        h,
    )
    .await
}

pub async fn get_group(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, Error> {
    get_one(
        ResourceKind::Group,
        s,
        o,
        id,
        Params::parse(q.as_deref())?,
        h,
    )
    .await
}

pub async fn replace_user(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    replace(ResourceKind::User, s, o, id, h, body).await
}

pub async fn replace_group(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    replace(ResourceKind::Group, s, o, id, h, body).await
}

pub async fn patch_user(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    patch(ResourceKind::User, s, o, id, h, body).await
}

pub async fn patch_group(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    patch(ResourceKind::Group, s, o, id, h, body).await
}

pub async fn delete_user(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, Error> {
    delete(ResourceKind::User, s, o, id, h).await
}

pub async fn delete_group(
    State(s): State<AppState>,
    Extension(o): Extension<OrgId>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, Error> {
    delete(ResourceKind::Group, s, o, id, h).await
}

/// `/Bulk` and `/Me`: not offered (ServiceProviderConfig says so).
pub async fn not_implemented() -> Response {
    Error::Scim(ScimError::new(
        501,
        None,
        "this endpoint is not implemented; send one request per resource",
    ))
    .into_response()
}

/// Any path under `/scim/v2` that names no endpoint.
pub async fn not_found() -> Response {
    Error::Scim(ScimError::not_found(
        "no such endpoint; the SCIM endpoints are /Users, /Groups, /ServiceProviderConfig, /ResourceTypes and /Schemas",
    ))
    .into_response()
}

/// Gives every error that axum itself produces (a body over the size
/// limit, an unreadable path) the SCIM error body that clients expect.
pub async fn scim_errors(response: Response) -> Response {
    let status = response.status();
    let is_scim = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/scim+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_scim {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        t => t.to_owned(),
    };
    // axum's own 400s are requests it could not read (an id that is not
    // UTF-8 once percent-decoded, say): malformed, as invalidSyntax means.
    let (scim_type, detail) = if status == StatusCode::BAD_REQUEST {
        (
            Some(ScimType::InvalidSyntax),
            format!("the request cannot be read: {detail}"),
        )
    } else {
        (None, detail)
    };
    let mut rebuilt =
        Error::Scim(ScimError::new(status.as_u16(), scim_type, detail)).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}

/// A known path with a method it does not accept.
pub async fn method_not_allowed() -> Response {
    Error::Scim(ScimError::new(
        405,
        None,
        "this method is not allowed on this endpoint",
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::{ListSpec, Page, list_teams, list_users, names_members, page_total};
    use crate::scim::ResourceKind;
    use crate::scim::filter::parse_filter;
    use crate::store::users::{self, UserQuery};
    use crate::store::{Order, SortKey, Store};

    /// A filter that does not look at members matches without them: the
    /// members of a group are loaded when it is on the page, not for every
    /// group scanned (one may have a hundred thousand).
    #[tokio::test]
    async fn members_are_loaded_for_the_groups_on_the_page_only() {
        use diesel::Connection;
        use diesel::connection::InstrumentationEvent;

        use crate::config::DatabaseUrl;
        use crate::store::{now, orgs, teams};

        let dir = tempfile::tempdir().expect("temp dir");
        let url = DatabaseUrl::Sqlite(dir.path().join("scim.db"));
        // One connection, so the one counting here is the one the list uses.
        let store = Store::open(&url, 1, std::time::Duration::from_secs(5)).expect("store");
        store.migrate().await.expect("migrations");
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let org = store
            .run(move |c| -> Result<String, crate::store::Error> {
                let org = orgs::insert(c, "org", "Org", None)?;
                for (i, name) in ["Eng", "Ops", "Sales", "Eng2"].into_iter().enumerate() {
                    let at = now();
                    teams::insert(
                        c,
                        &teams::TeamRow {
                            id: format!("t{i}"),
                            org_id: org.id.clone(),
                            display_name: name.to_owned(),
                            display_name_key: name.to_lowercase(),
                            external_id: None,
                            resource: serde_json::json!({"displayName": name}).to_string(),
                            version: 1,
                            created_at: at,
                            updated_at: at,
                        },
                    )?;
                }
                c.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                    if let InstrumentationEvent::StartQuery { query, .. } = event
                        && query.to_string().contains("team_members")
                    {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                });
                Ok(org.id)
            })
            .await
            .expect("seed");
        let filter = parse_filter("displayName sw \"Eng\"").expect("filter parses");
        let spec = ListSpec {
            filter: Some(Arc::new(filter)),
            order: Order::default(),
            start: 2,
            count: 10,
            base: Arc::from("https://scim.example.com"),
            with_members: true,
        };
        let page = list_teams(&store, &org, &spec).await.expect("list");
        assert_eq!(page.total, 2);
        assert_eq!(page.resources.len(), 1);
        assert_eq!(page.resources[0]["displayName"], "Eng2");
        assert_eq!(loads.load(Ordering::Relaxed), 1, "one group is on the page");
    }

    /// A store with one connection, `users` users and `teams` groups in
    /// one organization; returns its directory, the store and the
    /// organization's id. Every third user has no displayName and the
    /// others share seven; ids do not follow names or creation. So ties and
    /// rows without the sort key cross the edges of a scan's batches.
    async fn seeded(
        users: usize,
        teams: usize,
        events: Option<Box<dyn diesel::r2d2::HandleEvent>>,
    ) -> (tempfile::TempDir, Store, String) {
        use crate::config::DatabaseUrl;
        use crate::store::{now, orgs, teams as team_rows, users as user_rows};

        let dir = tempfile::tempdir().expect("temp dir");
        let url = DatabaseUrl::Sqlite(dir.path().join("scim.db"));
        let timeout = std::time::Duration::from_secs(5);
        let store = match events {
            Some(events) => Store::open_observed(&url, 1, timeout, events),
            None => Store::open(&url, 1, timeout),
        }
        .expect("store");
        store.migrate().await.expect("migrations");
        let org = store
            .run(move |c| -> Result<String, crate::store::Error> {
                let org = orgs::insert(c, "org", "Org", None)?;
                let at = now();
                let rows: Vec<user_rows::UserRow> = (0..users)
                    .map(|i| {
                        let name = format!("User{i:04}@Example.com");
                        let display = (!i.is_multiple_of(3)).then(|| format!("Team {}", i % 7));
                        user_rows::UserRow {
                            id: format!("u{:04}", (i * 37) % users),
                            org_id: org.id.clone(),
                            user_name: name.clone(),
                            user_name_key: name.to_lowercase(),
                            external_id: None,
                            display_name: display.clone(),
                            display_name_key: display.as_deref().map(str::to_lowercase),
                            email: None,
                            active: true,
                            resource: json!({"userName": name, "displayName": display}).to_string(),
                            version: 1,
                            created_at: at,
                            updated_at: at,
                            joined_at: None,
                        }
                    })
                    .collect();
                // A few at a time: SQLite limits the values of a statement.
                for chunk in rows.chunks(50) {
                    user_rows::insert_all_if_free(c, chunk)?;
                }
                for i in 0..teams {
                    let name = format!("Group {i:04}");
                    team_rows::insert(
                        c,
                        &team_rows::TeamRow {
                            id: format!("t{:04}", (i * 37) % teams),
                            org_id: org.id.clone(),
                            display_name: name.clone(),
                            display_name_key: name.to_lowercase(),
                            external_id: None,
                            resource: json!({"displayName": name}).to_string(),
                            version: 1,
                            created_at: at,
                            updated_at: at,
                        },
                    )?;
                }
                Ok(org.id)
            })
            .await
            .expect("seed");
        (dir, store, org)
    }

    /// A list whose filter is left to the evaluator (`pr` never runs in
    /// SQL) and matches every resource.
    fn scan_spec(filter: &str, order: Order, start: i64, count: i64) -> ListSpec {
        ListSpec {
            filter: Some(Arc::new(parse_filter(filter).expect("filter parses"))),
            order,
            start,
            count,
            base: Arc::from("https://scim.example.com"),
            with_members: false,
        }
    }

    fn ids(page: &Page) -> Vec<String> {
        page.resources
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// A scan sorted other than by creation resumes each batch after the
    /// last row's key and id, in the order the SQL path pages in. With an
    /// offset, every batch sorted and stepped over all the rows before it
    /// again: a scan of a tenant read it over and over.
    #[tokio::test]
    async fn a_sorted_scan_resumes_after_the_last_row_instead_of_an_offset() {
        use diesel::Connection;
        use diesel::connection::InstrumentationEvent;

        let (_dir, store, org) = seeded(1200, 0, None).await;
        let orders = [
            (SortKey::DisplayName, false),
            (SortKey::DisplayName, true),
            (SortKey::Name, true),
            (SortKey::LastModified, false),
        ]
        .map(|(key, descending)| Order { key, descending });
        // What the SQL path answers for a window across the first batch's
        // edge, and for the last rows, which have no displayName.
        let windows = [(481, 40), (1150, 100)];
        let mut expected = Vec::new();
        for order in orders {
            for (start, count) in windows {
                let org = org.clone();
                let rows = store
                    .run(move |c| {
                        users::page(c, &org, &UserQuery::default(), order, start - 1, count)
                            .map_err(crate::store::Error::from)
                    })
                    .await
                    .expect("page");
                expected.push(rows.into_iter().map(|r| r.id).collect::<Vec<_>>());
            }
        }
        let statements = Arc::new(Mutex::new(Vec::new()));
        let seen = statements.clone();
        store
            .run(move |c| -> Result<(), crate::store::Error> {
                c.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                    if let InstrumentationEvent::StartQuery { query, .. } = event {
                        seen.lock().expect("lock").push(query.to_string());
                    }
                });
                Ok(())
            })
            .await
            .expect("instrument");
        let mut answered = Vec::new();
        for order in orders {
            for (start, count) in windows {
                let spec = scan_spec("userName pr", order, start, count);
                let page = list_users(&store, &org, &spec).await.expect("list");
                assert_eq!(page.total, 1200, "{order:?}");
                answered.push(ids(&page));
            }
        }
        assert_eq!(answered, expected);
        let statements = statements.lock().expect("lock");
        let scans = statements
            .iter()
            .filter(|s| s.contains("FROM `users`"))
            .count();
        assert!(scans >= 3 * orders.len() * windows.len(), "{statements:#?}");
        let offsets: Vec<_> = statements.iter().filter(|s| s.contains("OFFSET")).collect();
        assert!(
            offsets.is_empty(),
            "{} statements step over rows with OFFSET, such as {:?}",
            offsets.len(),
            offsets.first()
        );
    }

    /// Counts the connections the pool hands out and takes back.
    #[derive(Debug, Default)]
    struct Checkouts {
        out: AtomicUsize,
        back: AtomicUsize,
    }

    #[derive(Debug)]
    struct CountCheckouts(Arc<Checkouts>);

    impl diesel::r2d2::HandleEvent for CountCheckouts {
        fn handle_checkout(&self, _: diesel::r2d2::event::CheckoutEvent) {
            self.0.out.fetch_add(1, Ordering::SeqCst);
        }

        fn handle_checkin(&self, _: diesel::r2d2::event::CheckinEvent) {
            self.0.back.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A scan takes a connection for each batch and gives it back before
    /// the next: held for a whole scan of a large tenant, one connection
    /// was kept from every other request for as long as the scan lasted,
    /// and a few such lists could take the whole pool.
    #[tokio::test]
    async fn a_scan_takes_a_connection_per_batch_and_gives_it_back() {
        let checkouts = Arc::new(Checkouts::default());
        let events = Box::new(CountCheckouts(checkouts.clone()));
        let (_dir, store, org) = seeded(1200, 1200, Some(events)).await;
        let order = Order {
            key: SortKey::Name,
            descending: false,
        };
        // 1,200 rows: two full batches and a short one.
        for kind in [ResourceKind::User, ResourceKind::Group] {
            let before = checkouts.out.load(Ordering::SeqCst);
            let page = match kind {
                ResourceKind::User => {
                    list_users(&store, &org, &scan_spec("userName pr", order, 1, 10)).await
                }
                ResourceKind::Group => {
                    list_teams(&store, &org, &scan_spec("displayName pr", order, 1, 10)).await
                }
            }
            .expect("list");
            assert_eq!(page.total, 1200, "{kind:?}");
            assert_eq!(
                checkouts.out.load(Ordering::SeqCst) - before,
                3,
                "{kind:?}: one connection for each batch"
            );
            assert_eq!(
                checkouts.back.load(Ordering::SeqCst),
                checkouts.out.load(Ordering::SeqCst),
                "{kind:?}: each given back"
            );
        }
    }

    /// A user added during a sorted scan, before the rows scanned so far,
    /// moves no other from one batch into the next: with an offset the
    /// next batch began one row early, and a user was counted and listed
    /// twice.
    #[tokio::test]
    async fn a_user_added_during_a_sorted_scan_repeats_no_other() {
        use diesel::Connection;
        use diesel::connection::InstrumentationEvent;
        use diesel::sqlite::SqliteConnection;

        use crate::store::{Conn, now, users as user_rows};

        let (dir, store, org) = seeded(1200, 0, None).await;
        let path = dir.path().join("scim.db");
        let mut other = Conn::Sqlite(
            SqliteConnection::establish(&path.to_string_lossy()).expect("second connection"),
        );
        let added = org.clone();
        store
            .run(move |c| -> Result<(), crate::store::Error> {
                let mut selects = 0;
                c.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                    let InstrumentationEvent::StartQuery { query, .. } = event else {
                        return;
                    };
                    if !query.to_string().contains("FROM `users`") {
                        return;
                    }
                    selects += 1;
                    if selects != 2 {
                        return;
                    }
                    // Just before the second batch is read.
                    let at = now();
                    let row = user_rows::UserRow {
                        id: "added".into(),
                        org_id: added.clone(),
                        user_name: "aaron@example.com".into(),
                        user_name_key: "aaron@example.com".into(),
                        external_id: None,
                        display_name: None,
                        display_name_key: None,
                        email: None,
                        active: true,
                        resource: json!({"userName": "aaron@example.com"}).to_string(),
                        version: 1,
                        created_at: at,
                        updated_at: at,
                        joined_at: None,
                    };
                    let inserted = user_rows::insert_all_if_free(&mut other, &[row]);
                    assert_eq!(inserted.ok(), Some(1), "the user is added");
                });
                Ok(())
            })
            .await
            .expect("instrument");
        let order = Order {
            key: SortKey::Name,
            descending: false,
        };
        let page = list_users(&store, &org, &scan_spec("userName pr", order, 1, 2000))
            .await
            .expect("list");
        let ids = ids(&page);
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "no user listed twice");
        assert_eq!(page.total, 1200, "the users there were when the scan began");
        assert_eq!(ids.len(), 1200);
    }

    #[test]
    fn only_filters_on_members_need_them_loaded() {
        let names = |f: &str| names_members(&parse_filter(f).expect("filter parses"));
        assert!(!names("displayName sw \"Eng\""));
        assert!(!names("displayName co \"x\" or externalId pr"));
        assert!(names("members pr"));
        assert!(names("displayName sw \"Eng\" and members.value eq \"u1\""));
        assert!(names("not (members[value eq \"u1\"])"));
        assert!(names(
            "urn:ietf:params:scim:schemas:core:2.0:Group:members.value eq \"u1\""
        ));
    }

    #[test]
    fn only_a_short_first_page_gives_the_total() {
        assert_eq!(page_total(0, 100, 1), Some(1));
        assert_eq!(page_total(0, 100, 0), Some(0));
        // A full page may have more behind it; a later page or count=0
        // says nothing about what came before or after.
        assert_eq!(page_total(0, 100, 100), None);
        assert_eq!(page_total(100, 100, 3), None);
        assert_eq!(page_total(0, 0, 0), None);
    }
}
