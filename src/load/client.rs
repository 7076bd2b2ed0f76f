//! The SCIM client side of a run: sends one Entra-shaped request, times it,
//! judges the answer and records it. Only ever calls the base URL it was
//! given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::Secret;
use super::data::{self, Group, User};
use super::stats::{Op, Outcome, Recorder};

/// A 429 is waited out and retried this many times before it counts as a
/// failure; Entra ID too suspends for the Retry-After and retries.
const MAX_THROTTLED_RETRIES: u32 = 10;
/// The longest Retry-After honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Longer than the service's own request deadline (25 s by default), so its
/// 503 arrives before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends requests to one SCIM base URL with one token; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    token: Secret,
    recorder: Arc<Recorder>,
}

/// An answer read whole.
struct Answer {
    status: StatusCode,
    body: Option<Value>,
    /// Retry-After in seconds, when given as a number.
    retry_after: Option<u64>,
}

/// How a user or group lookup ended.
pub enum Found {
    /// Not there: create it.
    Missing,
    /// There already, with this id.
    Existing(String),
    /// The lookup failed (already recorded).
    Failed,
}

impl Client {
    pub fn new(base: &url::Url, token: Secret, recorder: Arc<Recorder>) -> anyhow::Result<Self> {
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            anyhow::bail!("--url must be an http:// or https:// SCIM base URL, got {base}");
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            base: base.clone(),
            token,
            recorder,
        })
    }

    fn url(&self, segments: &[&str], query: Option<&str>) -> url::Url {
        below(&self.base, segments, query)
    }

    /// Sends one request and records it under `op`; `accept` judges a 2xx
    /// answer (a body without an id is not a success). Returns the answer's
    /// body when it was a success.
    async fn send(
        &self,
        op: Op,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
        accept: impl Fn(&Answer) -> bool,
    ) -> Option<Value> {
        let payload = body.map(Value::to_string);
        let mut throttled = 0;
        loop {
            let started = Instant::now();
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(self.token.expose());
            if let Some(p) = &payload {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/scim+json")
                    .body(p.clone());
            }
            let answer = match request.send().await {
                Ok(response) => read(response).await,
                Err(e) => Err(e),
            };
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    let what = if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connect"
                    } else {
                        "transport"
                    };
                    self.recorder
                        .record(op, started, false, &Outcome::Transport(what));
                    return None;
                }
            };
            if answer.status == StatusCode::TOO_MANY_REQUESTS && throttled < MAX_THROTTLED_RETRIES {
                throttled += 1;
                self.recorder.throttled(op);
                tokio::time::sleep(answer_retry_after(&answer)).await;
                continue;
            }
            let outcome = if !answer.status.is_success() {
                Outcome::Status(answer.status.as_u16())
            } else if !accept(&answer) {
                Outcome::BadBody
            } else {
                Outcome::Ok
            };
            self.recorder.record(op, started, true, &outcome);
            return (outcome == Outcome::Ok).then(|| answer.body.unwrap_or(Value::Null));
        }
    }

    /// Entra's Test Connection: a filter on a random GUID, which must be
    /// answered 200 with an empty list.
    pub async fn test_connection(&self) -> Outcome {
        let guid = uuid::Uuid::new_v4().hyphenated().to_string();
        let url = self.url(&["Users"], Some(&data::eq_filter("userName", &guid)));
        let started = Instant::now();
        // Not through `send`: a 429 here is an answer to report, not to wait out.
        let answer = match self
            .http
            .get(url)
            .bearer_auth(self.token.expose())
            .send()
            .await
        {
            Ok(r) => read(r).await.ok(),
            Err(_) => None,
        };
        let outcome = match &answer {
            None => Outcome::Transport("connect"),
            Some(a) if !a.status.is_success() => Outcome::Status(a.status.as_u16()),
            Some(a) if total_results(a) != Some(0) => Outcome::BadBody,
            Some(_) => Outcome::Ok,
        };
        self.recorder
            .record(Op::TestConnection, started, answer.is_some(), &outcome);
        outcome
    }

    /// `GET /Users?filter=userName eq "…"`.
    pub async fn find_user(&self, user: &User) -> Found {
        let url = self.url(
            &["Users"],
            Some(&data::eq_filter("userName", &user.user_name)),
        );
        self.find(Op::FilterUser, url).await
    }

    /// `GET /Groups?excludedAttributes=members&filter=displayName eq "…"`.
    pub async fn find_group(&self, group: &Group) -> Found {
        let query = format!(
            "excludedAttributes=members&{}",
            data::eq_filter("displayName", &group.display_name)
        );
        self.find(Op::FilterGroup, self.url(&["Groups"], Some(&query)))
            .await
    }

    async fn find(&self, op: Op, url: url::Url) -> Found {
        let Some(body) = self
            .send(op, Method::GET, url, None, |a| total_results(a).is_some())
            .await
        else {
            return Found::Failed;
        };
        match body["Resources"][0]["id"].as_str() {
            Some(id) => Found::Existing(id.to_owned()),
            None => Found::Missing,
        }
    }

    /// `POST /Users`; the new user's id.
    pub async fn create_user(&self, user: &User) -> Option<String> {
        let body = data::create_user_body(user);
        self.create(Op::CreateUser, "Users", &body).await
    }

    /// `POST /Groups`; the new group's id.
    pub async fn create_group(&self, group: &Group) -> Option<String> {
        let body = data::create_group_body(group);
        self.create(Op::CreateGroup, "Groups", &body).await
    }

    async fn create(&self, op: Op, collection: &str, body: &Value) -> Option<String> {
        let url = self.url(&[collection], None);
        let answer = self
            .send(op, Method::POST, url, Some(body), |a| {
                a.status == StatusCode::CREATED && id_of(a).is_some()
            })
            .await?;
        answer["id"].as_str().map(str::to_owned)
    }

    /// `PATCH /<collection>/<id>` with `body`; true when answered 2xx.
    pub async fn patch(&self, op: Op, collection: &str, id: &str, body: &Value) -> bool {
        let url = self.url(&[collection, id], None);
        self.send(op, Method::PATCH, url, Some(body), |_| true)
            .await
            .is_some()
    }
}

async fn read(response: reqwest::Response) -> Result<Answer, reqwest::Error> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let bytes = response.bytes().await?;
    let body = if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}

/// How long a 429 asks to wait: its Retry-After (seconds), at least 100 ms
/// and at most [`MAX_RETRY_AFTER`]; 1 s when it gives none.
fn answer_retry_after(answer: &Answer) -> Duration {
    answer.retry_after.map_or(Duration::from_secs(1), |s| {
        Duration::from_secs(s).clamp(Duration::from_millis(100), MAX_RETRY_AFTER)
    })
}

fn total_results(answer: &Answer) -> Option<u64> {
    answer.body.as_ref()?["totalResults"].as_u64()
}

fn id_of(answer: &Answer) -> Option<&str> {
    answer.body.as_ref()?["id"].as_str()
}

/// `<base>/<segments…>?<query>`, with each segment percent-encoded.
pub(crate) fn below(base: &url::Url, segments: &[&str], query: Option<&str>) -> url::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url.set_query(query);
    url
}
