//! `/metrics` in Prometheus text format: request counts and latencies of
//! this process, and queue and outcome figures read at scrape time (from
//! the queues and the database, so every process reports the same).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::AppState;
use crate::ops;

/// Latency buckets in seconds: Entra ID's requests should sit in the first few.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 25.0,
];

/// The process-wide recorder, installed on first use.
fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .as_ref()
}

/// Counts and times every SCIM request by route and status.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let op = format!("{} {route}", req.method());
    let response = next.run(req).await;
    if handle().is_some() {
        let status = response.status().as_u16().to_string();
        metrics::counter!("scimsync_scim_requests_total", "op" => op.clone(), "status" => status)
            .increment(1);
        metrics::histogram!("scimsync_scim_request_duration_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
    }
    response
}

fn gauge(name: &'static str, labels: &[(&'static str, String)], value: f64) {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.clone()))
        .collect();
    metrics::gauge!(name, labels).set(value);
}

/// When this process last read the queue and outcome figures. `/metrics`
/// needs no credential and those figures take several aggregate queries
/// over the provisioning log and the outbox, so they are read at most once
/// per [`Figures::EVERY`], by one scrape at a time; scrapes in between
/// get the figures last read. Scraping cannot load the database that
/// Entra ID's writes need.
#[derive(Default)]
pub struct Figures {
    read_at: tokio::sync::Mutex<Option<Instant>>,
}

impl Figures {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
}

/// `GET /metrics`
pub async fn render(State(state): State<AppState>) -> Response {
    let Some(handle) = handle() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not available\n",
        )
            .into_response();
    };
    let mut read_at = state.figures.read_at.lock().await;
    if read_at.is_none_or(|at| at.elapsed() >= Figures::EVERY) {
        read_figures(&state).await;
        *read_at = Some(Instant::now());
    }
    drop(read_at);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Reads the queue and outcome figures into the process's gauges.
async fn read_figures(state: &AppState) {
    match ops::queue::stats(&state.store, &state.queue, &state.mail).await {
        Ok(stats) => {
            for q in &stats.queues {
                let l = [("queue", q.queue.clone())];
                gauge("scimsync_queue_pending", &l, q.pending as f64);
                gauge("scimsync_queue_running", &l, q.running as f64);
                gauge("scimsync_queue_dead", &l, q.dead as f64);
                gauge(
                    "scimsync_queue_oldest_due_seconds",
                    &l,
                    q.oldest_due_secs.unwrap_or(0) as f64,
                );
                gauge("scimsync_queue_workers", &l, q.workers.len() as f64);
            }
            for (window, o) in [
                ("5m", &stats.last_5_minutes),
                ("1h", &stats.last_hour),
                ("1d", &stats.last_day),
            ] {
                for (outcome, n) in [
                    ("applied", o.applied),
                    ("rejected", o.rejected),
                    ("dead", o.dead),
                ] {
                    gauge(
                        "scimsync_changes",
                        &[
                            ("window", window.to_owned()),
                            ("outcome", outcome.to_owned()),
                        ],
                        n as f64,
                    );
                }
            }
            let m = &stats.mail;
            for (st, n) in [
                ("pending", m.pending),
                ("sending", m.sending),
                ("sent", m.sent_total),
                ("failed", m.failed_total),
                ("cancelled", m.cancelled_total),
            ] {
                gauge(
                    "scimsync_outbox_messages",
                    &[("state", st.to_owned())],
                    n as f64,
                );
            }
            gauge(
                "scimsync_outbox_oldest_owed_seconds",
                &[],
                m.oldest_owed_secs.unwrap_or(0) as f64,
            );
            gauge("scimsync_up", &[], 1.0);
        }
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "metrics: queue figures unavailable"
            );
            gauge("scimsync_up", &[], 0.0);
        }
    }
}
