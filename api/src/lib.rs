//! Rialto's HTTP edge, the only crate that knows HTTP and JSON. Two routers:
//! - the merchant API (`/v1/...`, `/openapi.json`), authenticated by API key, with
//!   problem+json errors, body and time limits and per-route latency metrics;
//! - the ops listener (`/healthz`, `/readyz`, `/metrics`), meant for a private address.
//!
//! Handlers translate between JSON and engine types by hand and hand commands to the
//! [`rialto_actors::Rialto`] engine; reads go straight to the store.

pub mod auth;
pub mod payments;
pub mod problem;
pub mod views;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dashmap::DashMap;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use utoipa::OpenApi;

use rialto_actors::Rialto;
use rialto_persistence::{Merchant, Store};

use crate::problem::Problem;

/// Limits of the merchant API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub body_bytes_max: usize,
    /// The gateway's own deadline for a request (R2.4: 30 s, above the engine's).
    pub request_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            body_bytes_max: 64 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub engine: Arc<Rialto>,
    pub store: Arc<dyn Store>,
    pub config: ApiConfig,
    /// (merchant, idempotency key) of requests running in this process.
    pub keys_in_progress: DashMap<(String, String), ()>,
    /// Authenticated merchants by API key hash. Merchants are immutable once created.
    pub merchants: DashMap<String, Merchant>,
    pub metrics: PrometheusHandle,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(engine: Arc<Rialto>, config: ApiConfig) -> AppState {
        AppState(Arc::new(Inner {
            store: engine.store().clone(),
            engine,
            config,
            keys_in_progress: DashMap::new(),
            merchants: DashMap::new(),
            metrics: metrics_handle(),
        }))
    }
}

/// Latency buckets (seconds) for every `_seconds` histogram: fine below 50 ms where Rialto
/// lives, and up to the 30 s gateway timeout.
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 1.2, 2.5, 10.0,
    30.0,
];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0, 2048.0];

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_S)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("rialto_store_batch_size".into()),
                        &BATCH_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process");
            let upkeep = handle.clone();
            // Histograms need periodic upkeep when the recorder is installed without an exporter.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn metrics upkeep thread");
            handle
        })
        .clone()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Rialto merchant API", description = "Take payments through Rialto. Amounts are integers in minor units; errors are application/problem+json."),
    paths(
        payments::create_payment,
        payments::list_payments,
        payments::get_payment,
        payments::capture_payment,
        payments::cancel_payment,
        payments::refund_payment,
        payments::list_events,
        payments::balances,
    ),
    modifiers(&ApiKeyScheme),
    tags((name = "payments"), (name = "ledger"))
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A merchant API key (`sk_...`)"))
                    .build(),
            ),
        );
    }
}

async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// The trivial endpoint `rialto sim --baseline` measures against: same server, no work.
async fn ping() -> &'static str {
    "pong"
}

async fn not_found() -> Problem {
    Problem::not_found("no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        "this route does not accept that method",
    )
}

/// Records `http_server_request_duration_seconds` by route template and enforces the gateway
/// timeout, answering 504 problem+json when it passes.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let response = match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("request_timeouts_total", "route" => route.clone()).increment(1);
            Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "Gateway timeout",
                "the request took too long; if it was a POST, retry with the same Idempotency-Key",
            )
            .into_response()
        }
    };
    metrics::histogram!(
        "http_server_request_duration_seconds",
        "http_response_status_code" => response.status().as_str().to_string(),
        "route" => route,
        "method" => method,
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// The merchant API.
pub fn merchant_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/payments",
            post(payments::create_payment).get(payments::list_payments),
        )
        .route("/v1/payments/{id}", get(payments::get_payment))
        .route("/v1/payments/{id}/capture", post(payments::capture_payment))
        .route("/v1/payments/{id}/cancel", post(payments::cancel_payment))
        .route("/v1/payments/{id}/refunds", post(payments::refund_payment))
        .route("/v1/payments/{id}/events", get(payments::list_events))
        .route("/v1/ledger/balances", get(payments::balances))
        .route("/openapi.json", get(openapi))
        .route("/ping", get(ping))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_bytes_max))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready when the store commits durably and every configured PSP has a live supervisor.
async fn readyz(State(state): State<AppState>) -> Response {
    let store = tokio::time::timeout(Duration::from_secs(2), state.store.health()).await;
    let store_ok = matches!(store, Ok(Ok(())));
    let psps_configured = state.engine.psp_ids().len();
    let psps_up = state.engine.psps_up();
    let ready = store_ok && psps_up == psps_configured && psps_configured > 0;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "store": if store_ok { "ok" } else { "failing" },
            "psps": { "configured": psps_configured, "up": psps_up, "ids": state.engine.psp_ids() },
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The ops listener: liveness, readiness, Prometheus metrics.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(state)
}
