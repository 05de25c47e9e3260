//! `GET /metrics`: Prometheus text (admins only): API requests and latency,
//! sandboxes by state, runners online, SSH sessions and bytes (from the audit
//! trail).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::Caller;
use super::error::ApiError;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// The API's own counters, kept in memory since the gateway started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (method, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Metrics {
    pub fn record(&self, method: &str, status: u16, took: Duration) {
        // Only standard methods, so a client cannot grow the map without bound.
        let method = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
            _ => "OTHER",
        };
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((method.to_owned(), status)).or_default() += 1;
        }
        let secs = took.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String) {
        out.push_str("# HELP warren_api_requests_total HTTP API requests by method and status.\n");
        out.push_str("# TYPE warren_api_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for ((method, status), n) in requests.iter() {
                let _ = writeln!(
                    out,
                    "warren_api_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP warren_auth_failures_total Failed logins (SSH, API keys, runner joins).\n",
        );
        out.push_str("# TYPE warren_auth_failures_total counter\n");
        let _ = writeln!(
            out,
            "warren_auth_failures_total {}",
            crate::guard::limiter_failures_total()
        );
        out.push_str("# HELP warren_api_request_duration_seconds HTTP API latency.\n");
        out.push_str("# TYPE warren_api_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "warren_api_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "warren_api_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "warren_api_request_duration_seconds_sum {sum}");
        let _ = writeln!(
            out,
            "warren_api_request_duration_seconds_count {}",
            self.count.load(Ordering::Relaxed)
        );
    }
}

fn gauge(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Prometheus text (admins only).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses(
        (status = 200, description = "Prometheus text format", body = String,
            content_type = "text/plain"),
        (status = 403, description = "not an admin", body = super::views::ErrorBody),
    ))]
pub async fn metrics(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let by_state = state.lifecycle.store.count_sandboxes_by_state().await?;
    let ssh = state.lifecycle.store.ssh_totals().await?;
    let mut out = String::new();
    gauge(&mut out, "warren_sandboxes", "Sandboxes by state.", "gauge");
    for s in ["creating", "running", "stopped", "failed", "deleted"] {
        let n = by_state
            .iter()
            .find(|(st, _)| st.as_str() == s)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "warren_sandboxes{{state=\"{s}\"}} {n}");
    }
    gauge(
        &mut out,
        "warren_runners_online",
        "Runners with a live tunnel.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "warren_runners_online {}",
        state.lifecycle.hub.online_runners().len()
    );
    gauge(
        &mut out,
        "warren_ssh_sessions_total",
        "SSH connections that reached a sandbox.",
        "counter",
    );
    let _ = writeln!(out, "warren_ssh_sessions_total {}", ssh.sessions);
    gauge(
        &mut out,
        "warren_ssh_sessions_open",
        "SSH connections to sandboxes open now.",
        "gauge",
    );
    let _ = writeln!(out, "warren_ssh_sessions_open {}", ssh.open);
    gauge(
        &mut out,
        "warren_ssh_bytes_total",
        "Bytes relayed over ended SSH connections, by direction.",
        "counter",
    );
    let _ = writeln!(
        out,
        "warren_ssh_bytes_total{{direction=\"in\"}} {}",
        ssh.bytes_in
    );
    let _ = writeln!(
        out,
        "warren_ssh_bytes_total{{direction=\"out\"}} {}",
        ssh.bytes_out
    );
    state.metrics.write(&mut out);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
