//! The admin web pages at `/admin`: what the queues and workers are doing,
//! the provisioning log, retrying and discarding dead changes,
//! organizations and their tokens, user lookup.
//!
//! Server-rendered HTML without JavaScript, over the same `ops` functions
//! as the CLI. Off (404) unless `[admin] password` is configured; every
//! page needs a login and every form a CSRF token (see [`auth`]).

pub mod auth;
mod changes;
mod orgs;
mod overview;
mod page;
mod users;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};

pub use auth::AdminState;

use super::AppState;

/// The admin routes, to nest at `/admin`.
pub fn router(state: &AppState) -> Router<AppState> {
    let Some(admin) = state.admin.clone() else {
        // Off: indistinguishable from a path that does not exist.
        return Router::new()
            .route("/", any(off))
            .route("/{*rest}", any(off));
    };
    let pages = Router::new()
        .route("/", get(overview::show))
        .route("/retry-dead", post(changes::retry_dead))
        .route("/log", get(changes::log))
        .route("/changes/{id}", get(changes::show))
        .route("/changes/{id}/retry", post(changes::retry))
        .route("/changes/{id}/discard", post(changes::discard))
        .route("/orgs", get(orgs::list).post(orgs::create))
        .route("/orgs/{slug}", get(orgs::show))
        .route("/orgs/{slug}/tokens", post(orgs::create_token))
        .route("/orgs/{slug}/tokens/{id}/revoke", post(orgs::revoke_token))
        .route("/users", get(users::lookup))
        .route("/logout", post(auth::logout))
        .route_layer(middleware::from_fn(auth::require_session));
    Router::new()
        .route("/login", get(auth::login_form).post(auth::login))
        .merge(pages)
        .layer(Extension(admin))
        .layer(middleware::map_response(page::protect))
}

/// `/admin/` is where people type the overview's address by hand.
pub async fn trailing_slash(State(state): State<AppState>) -> Response {
    match state.admin {
        Some(_) => Redirect::permanent("/admin").into_response(),
        None => off().await,
    }
}

async fn off() -> Response {
    StatusCode::NOT_FOUND.into_response()
}
