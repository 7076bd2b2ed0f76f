//! Bearer-token authentication: a token maps to exactly one organization.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::Error;
use crate::jobs::together::Together;
use crate::ops::tokens::hash_token;
use crate::scim::error::ScimError;
use crate::store::{self, Store, tokens};

/// When this process last recorded the use of each token. `last_used_at`
/// only needs minute precision, so the write (and its round trip) happens
/// about once a minute per token and process instead of on every request.
#[derive(Debug, Default)]
pub struct TokenUse {
    recorded: Mutex<HashMap<String, Instant>>,
}

impl TokenUse {
    const EVERY: Duration = Duration::from_secs(60);

    /// True when the use of `token_id` should be written now; from then on
    /// false for a minute.
    pub fn due(&self, token_id: &str, now: Instant) -> bool {
        let Ok(mut recorded) = self.recorded.lock() else {
            return true;
        };
        match recorded.get(token_id) {
            Some(at) if now.saturating_duration_since(*at) < Self::EVERY => false,
            _ => {
                recorded.insert(token_id.to_owned(), now);
                true
            }
        }
    }
}

/// Looks tokens up for the requests of this process. The requests that
/// arrive while one lookup runs share the next: one query answers them all,
/// and as Entra ID sends every request of a tenant with the same token,
/// usually for one row. Each request is still answered by a query that
/// started after it arrived, so a token revoked before a request is refused
/// by that request, as with a query of its own.
pub struct TokenLookups {
    lookups: Together<String, Result<Option<tokens::TokenRow>, store::Error>>,
}

impl TokenLookups {
    /// Most requests one query answers.
    const MOST: usize = 64;

    /// Starts the lookups on the current runtime; they end with the last
    /// handle.
    pub fn start(store: Store) -> Self {
        let token_use = Arc::new(TokenUse::default());
        let lookups = Together::start(Self::MOST, move |wanted: Vec<String>| {
            let (store, token_use) = (store.clone(), token_use.clone());
            async move {
                let mut hashes = wanted.clone();
                hashes.sort_unstable();
                hashes.dedup();
                let found = store
                    .run(move |c| {
                        let rows = tokens::find_live_by_hashes(c, &hashes)?;
                        for row in &rows {
                            if token_use.due(&row.id, Instant::now()) {
                                tokens::touch(c, &row.id)?;
                            }
                        }
                        Ok::<_, store::Error>(rows)
                    })
                    .await;
                wanted
                    .iter()
                    .map(|hash| match &found {
                        Ok(rows) => Ok(rows.iter().find(|r| &r.token_hash == hash).cloned()),
                        Err(e) => Err(e.shared()),
                    })
                    .collect()
            }
        });
        TokenLookups { lookups }
    }

    /// The live token whose hash is `hash`.
    pub async fn find(&self, hash: String) -> Result<Option<tokens::TokenRow>, store::Error> {
        self.lookups
            .call(hash)
            .await
            .unwrap_or(Err(store::Error::Cancelled))
    }
}

/// The organization the request's token belongs to; every query is scoped by it.
#[derive(Debug, Clone)]
pub struct OrgId(pub String);

fn unauthorized(detail: &str) -> Response {
    let mut response = Error::Scim(ScimError::new(401, None, detail)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"scimsync\""),
    );
    response
}

/// Resolves `Authorization: Bearer <token>` to an [`OrgId`] or answers 401.
///
/// Only the SHA-256 of the token is looked up, so the comparison happens
/// between hashes: timing reveals nothing about the token's characters.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return unauthorized("missing Authorization header; send Authorization: Bearer <token>");
    };
    let token = match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            token.trim()
        }
        _ => return unauthorized("the Authorization header must be Bearer <token>"),
    };
    let found = state.tokens.find(hash_token(token)).await;
    match found {
        Ok(Some(row)) => {
            if let Err(wait) = state.limiter.check(&row.id) {
                let secs = wait.as_secs().max(1);
                tracing::warn!(token_id = %row.id, "rate limit reached");
                let mut response = Error::Scim(ScimError::new(
                    429,
                    None,
                    format!("too many requests for this token; retry after {secs} seconds"),
                ))
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return response;
            }
            req.extensions_mut().insert(OrgId(row.org_id));
            next.run(req).await
        }
        Ok(None) => unauthorized("the bearer token is not valid or has been revoked"),
        Err(e) => Error::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_recorded_once_a_minute() {
        let uses = TokenUse::default();
        let start = Instant::now();
        assert!(uses.due("a", start));
        assert!(!uses.due("a", start + Duration::from_secs(59)));
        assert!(
            uses.due("b", start + Duration::from_secs(1)),
            "each token on its own"
        );
        assert!(uses.due("a", start + Duration::from_secs(60)));
        assert!(!uses.due("a", start + Duration::from_secs(61)));
    }
}
