//! HTTP: the SCIM API, discovery documents, health.

pub mod admin;
pub mod auth;
pub mod discovery;
pub mod error;
pub mod invitations;
pub mod lookups;
pub mod metrics;
pub mod ratelimit;
pub mod scim;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, Request, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::config::Settings;
use crate::jobs::mail::SendMail;
use crate::jobs::reply::Replies;
use crate::jobs::{Queue, ScimChange};
use crate::store::Store;

/// What every handler shares, behind one reference count: axum clones the
/// state for each request and for each layer that reads it, and a copy of
/// every field (each a reference count to bump and drop, the base URL an
/// allocation) was about 1.5 % of the web process's CPU samples.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub store: Store,
    pub queue: Queue<ScimChange>,
    pub mail: Queue<SendMail>,
    pub replies: Arc<Replies>,
    pub settings: Arc<Settings>,
    /// `<public_url>/scim/v2`
    pub base_url: String,
    pub limiter: Arc<ratelimit::RateLimiter>,
    pub tokens: Arc<auth::TokenLookups>,
    /// Users looked up by userName, shared by requests that arrive together.
    pub user_names: Arc<lookups::UserNameLookups>,
    /// When `/metrics` last read the queue and outcome figures.
    pub figures: Arc<metrics::Figures>,
    /// The admin pages' sessions; `None` when they are off.
    pub admin: Option<Arc<admin::AdminState>>,
}

const REQUEST_ID: &str = "x-request-id";

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.server.max_body_bytes;
    let scim_api = Router::new()
        .route(
            "/Users",
            get(scim::list_user_resources).post(scim::create_user),
        )
        .route(
            "/Users/{id}",
            get(scim::get_user)
                .put(scim::replace_user)
                .patch(scim::patch_user)
                .delete(scim::delete_user),
        )
        .route("/Users/.search", post(scim::search_users))
        .route("/Groups/.search", post(scim::search_groups))
        .route("/.search", post(scim::search_all))
        .route(
            "/Groups",
            get(scim::list_group_resources).post(scim::create_group),
        )
        .route(
            "/Groups/{id}",
            get(scim::get_group)
                .put(scim::replace_group)
                .patch(scim::patch_group)
                .delete(scim::delete_group),
        )
        .route(
            "/ServiceProviderConfig",
            get(discovery::service_provider_config),
        )
        .route("/ResourceTypes", get(discovery::resource_types))
        .route("/ResourceTypes/{id}", get(discovery::resource_type))
        .route("/Schemas", get(discovery::schemas))
        .route("/Schemas/{id}", get(discovery::schema))
        .route("/Bulk", any(scim::not_implemented))
        .route("/Me", any(scim::not_implemented))
        .fallback(scim::not_found)
        .method_not_allowed_fallback(scim::method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::map_response(scim::scim_errors))
        .route_layer(middleware::from_fn(metrics::track));

    let request_id = HeaderName::from_static(REQUEST_ID);
    Router::new()
        .nest("/scim/v2", scim_api)
        .nest("/admin", admin::router(&state))
        .route("/admin/", get(admin::trailing_slash))
        .route(
            "/invitations/{token}",
            get(invitations::show).post(invitations::accept),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            TraceLayer::new_for_http()
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    // The path only: query strings can carry filter values, and
                    // headers (Authorization) are never recorded.
                    // change_id is filled in once a write has been queued.
                    tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %req.method(),
                        path = %loggable_path(req.uri().path()),
                        change_id = tracing::field::Empty
                    )
                }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// A request path as logs may show it: an invitation link's path is its
/// token, which whoever reads the logs could accept the invitation with.
fn loggable_path(path: &str) -> &str {
    if path.starts_with("/invitations/") {
        "/invitations/…"
    } else {
        path
    }
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The database and the queue answer.
async fn readyz(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(3), state.store.ping()).await;
    let queue = tokio::time::timeout(Duration::from_secs(3), state.queue.ping()).await;
    let db_ok = matches!(db, Ok(Ok(())));
    let queue_ok = matches!(queue, Ok(Ok(())));
    let body = format!(
        "database: {}\nqueue: {}\n",
        if db_ok { "ok" } else { "unreachable" },
        if queue_ok { "ok" } else { "unreachable" }
    );
    let status = if db_ok && queue_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_never_show_an_invitation_token() {
        assert_eq!(
            super::loggable_path("/invitations/inv_0123abcd"),
            "/invitations/…"
        );
        assert_eq!(
            super::loggable_path("/scim/v2/Users/42"),
            "/scim/v2/Users/42"
        );
    }
}
