//! Rialto's HTTP edge, the only crate that knows HTTP and JSON. Two routers:
//! - the merchant API (`/v1/...`, `/openapi.json`), authenticated by API key, with
//!   problem+json errors, body and time limits and per-route latency metrics;
//! - the ops listener (`/healthz`, `/readyz`, `/metrics`, and `/admin/...` for operators
//!   holding the admin token), meant for a private address.
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
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dashmap::DashMap;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tracing::Instrument;
use utoipa::OpenApi;

use rialto_actors::Rialto;
use rialto_persistence::{Merchant, Store};

use crate::problem::{Problem, internal};

/// Limits of the merchant API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub body_bytes_max: usize,
    /// The gateway's own deadline for a request (R2.4: 30 s, above the engine's).
    pub request_timeout: Duration,
    /// The operator token for `/admin` on the ops listener; `None` turns admin off.
    pub admin_token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            body_bytes_max: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            admin_token: None,
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
    /// Each merchant's rate-limit bucket (per process; R6.2 moves them to Redis).
    pub buckets: DashMap<String, rialto_engine::policy::TokenBucket>,
    /// SHA-256 of the operator's admin token; admin routes are off without one.
    pub admin_token_sha256: Option<String>,
    pub metrics: PrometheusHandle,
    /// One ledger check at a time: each reads the whole store.
    pub ledger_check: tokio::sync::Semaphore,
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
            config: config.clone(),
            keys_in_progress: DashMap::new(),
            merchants: DashMap::new(),
            buckets: DashMap::new(),
            admin_token_sha256: config.admin_token.as_deref().map(auth::key_hash),
            metrics: metrics_handle(),
            ledger_check: tokio::sync::Semaphore::new(1),
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

/// Counters the dashboards and alerts read, present from the first scrape (at zero) so
/// `rate()` and `increase()` see their first increment. `webhooks_in_total` and
/// `webhook_store_failures_total` stay zero until inbound PSP webhooks (R4.4) exist.
const COUNTERS_FROM_START: [&str; 10] = [
    "app_exceptions_total",
    "request_timeouts_total",
    "webhook_store_failures_total",
    "webhooks_in_total",
    "idempotency_cache_hits_total",
    "idempotency_cache_misses_total",
    "rialto_payments_escalated_total",
    "rialto_rate_limited_total",
    "rialto_captures_parked_total",
    "rialto_store_rejected_total",
];

fn register_counters() {
    for name in COUNTERS_FROM_START {
        metrics::counter!(name).increment(0);
    }
}

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
            register_counters();
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
    modifiers(&ApiKeyScheme, &CommonResponses),
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

/// Answers any merchant route may give besides its own: a missing or wrong key, the rate
/// limit, and the 503s that refuse a request without doing anything. POSTs may also have
/// their body refused before it is read.
struct CommonResponses;

const ANY_ROUTE: [(&str, &str); 3] = [
    ("401", "No API key, or not a valid one (`unauthorized`)"),
    (
        "429",
        "The merchant's rate limit (`rate_limited`); retry after `Retry-After`",
    ),
    (
        "503",
        "Nothing was done; retry after `Retry-After`. `type` names the cause: `at_capacity` (the \
         server's connection limit), `overloaded` (its limit of payments in progress), \
         `no_psp_available`, `read_only`, `storage_unavailable` or `shutting_down`",
    ),
];

const WITH_BODY: [(&str, &str); 2] = [
    ("413", "The body is larger than the limit (`invalid_body`)"),
    (
        "415",
        "The body is not `application/json` (`unsupported_media_type`)",
    ),
];

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for item in openapi.paths.paths.values_mut() {
            let post = item.post.iter_mut().map(|op| (op, true));
            let others = [
                &mut item.get,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            let others = others.into_iter().flatten().map(|op| (op, false));
            for (operation, has_body) in post.chain(others) {
                let extra = if has_body { &WITH_BODY[..] } else { &[] };
                for (status, description) in ANY_ROUTE.iter().chain(extra) {
                    let problem = ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ProblemBody")))
                        .build();
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(*description)
                                .content("application/problem+json", problem)
                                .into()
                        });
                }
            }
        }
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

/// The header that ties a merchant's request to Rialto's logs: accepted, or generated, and
/// echoed on the response.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The caller's correlation id when it is 1–128 visible ASCII characters, else a new one.
fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string)
}

/// Opens the request's span (continuing a W3C `traceparent` when one came in, carrying the
/// correlation id every log line inside it shows), records
/// `http_server_request_duration_seconds` by route template, and enforces the gateway timeout,
/// answering 504 problem+json when it passes.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let correlation = correlation_id(req.headers());
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        correlation_id = %correlation,
    );
    rialto_actors::trace_context::continue_trace(&span, req.headers());
    let work = tokio::time::timeout(state.config.request_timeout, next.run(req));
    let mut response = match work.instrument(span.clone()).await {
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
    span.record("http.response.status_code", response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&correlation) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    response
}

/// The merchant API.
pub fn merchant_router(state: AppState) -> Router {
    merchant_routes(state, false)
}

/// The merchant API as a connection beyond the server's connection limit sees it: the same
/// routes, each answered 503 problem+json `at_capacity` (with `Retry-After`) without running,
/// and measured and traced like any other answer, so that the error rate counts them.
pub fn merchant_router_at_capacity(state: AppState) -> Router {
    merchant_routes(state, true)
}

fn merchant_routes(state: AppState, at_capacity: bool) -> Router {
    let router = Router::new()
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
        .method_not_allowed_fallback(method_not_allowed);
    let router = if at_capacity {
        router.layer(middleware::from_fn_with_state(state.clone(), refuse))
    } else {
        router
    };
    router
        .layer(DefaultBodyLimit::max(state.config.body_bytes_max))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Answers a request on a connection beyond the limit. Its body is read first (up to the
/// body limit): closing a socket with unread data resets it, and the client could lose the
/// answer.
async fn refuse(State(state): State<AppState>, req: Request, _next: Next) -> Problem {
    let _ = axum::body::to_bytes(req.into_body(), state.config.body_bytes_max).await;
    Problem::unavailable(
        "at_capacity",
        "At capacity",
        "Rialto is serving as many connections as it may; nothing was done, retry shortly",
        1,
    )
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Deep health (R2.7): the store (the monitor's durable probe commit, every
/// `health_interval` — the same verdict read-only mode uses), each PSP's supervisor, breaker,
/// bulkhead and recent figures, and read-only mode. 200 `ready`; 200 `degraded` while
/// read-only (reads are still served); 503 `not_ready` when storage fails or a PSP supervisor
/// is missing.
async fn readyz(State(state): State<AppState>) -> Response {
    let store_ok = state.engine.store_healthy();
    let supervisors_ok = state.engine.psps_up() == state.engine.psp_ids().len();
    let read_only = state.engine.read_only_reason();
    let psps: Vec<_> = state
        .engine
        .psp_health()
        .into_iter()
        .map(|h| {
            json!({
                "psp": h.psp,
                "circuit_breaker": h.breaker.as_str(),
                "circuit_breaker_state": h.breaker as u8,
                "can_take_payments": h.can_take,
                "disabled": h.disabled,
                "down": h.down,
                "calls_in_window": h.calls_in_window,
                "error_rate_pct": h.error_rate_pct,
                "latency_p95_ms": h.latency_p95_ms,
                "inflight": h.inflight,
                "waiting": h.waiting,
            })
        })
        .collect();
    let (status, code) = match (store_ok && supervisors_ok, read_only) {
        (false, _) => ("not_ready", StatusCode::SERVICE_UNAVAILABLE),
        (true, Some(_)) => ("degraded", StatusCode::OK),
        (true, None) => ("ready", StatusCode::OK),
    };
    let body = json!({
        "status": status,
        "read_only": read_only,
        "checks": { "store": if store_ok { "ok" } else { "failing" }, "psps": psps },
    });
    (code, Json(body)).into_response()
}

/// Checks the operator's bearer token against the configured one (by hash).
fn require_admin(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), Problem> {
    let Some(expected) = &state.admin_token_sha256 else {
        return Err(Problem::not_found(
            "admin endpoints are off: no admin token is configured",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(auth::key_hash);
    // Comparing hashes: equal-length hex, and a mismatch reveals nothing about the token.
    if given.as_deref() == Some(expected.as_str()) {
        Ok(())
    } else {
        metrics::counter!("rialto_admin_auth_failures_total").increment(1);
        Err(Problem::unauthorized("a valid admin token is required"))
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadOnlyRequest {
    enabled: bool,
}

async fn admin_read_only(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<ReadOnlyRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    require_admin(&state, &headers)?;
    let Json(req) = body.map_err(|e| Problem::invalid(e.body_text()))?;
    state.engine.set_forced_read_only(req.enabled);
    Ok(Json(json!({ "read_only": state.engine.read_only_reason() })).into_response())
}

async fn admin_psp(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path((psp, action)): axum::extract::Path<(String, String)>,
) -> Result<Response, Problem> {
    require_admin(&state, &headers)?;
    let enabled = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => {
            return Err(Problem::not_found(
                "use /admin/psps/{id}/enable or /disable",
            ));
        }
    };
    if !state.engine.set_psp_enabled(&psp, enabled) {
        return Err(Problem::not_found("no such psp"));
    }
    Ok(Json(json!({ "psp": psp, "enabled": enabled })).into_response())
}

/// Every breaker change kept (the last 1,000 per PSP), oldest first, with the engine's clock
/// now, so a client on another clock can place them: `rialto sim --target --ops` does.
async fn admin_breakers(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Problem> {
    require_admin(&state, &headers)?;
    let transitions: Vec<_> = state
        .engine
        .breaker_transitions()
        .into_iter()
        .map(|t| json!({ "psp": t.psp, "at_ms": t.at_ms, "from": t.from.as_str(), "to": t.to.as_str() }))
        .collect();
    Ok(
        Json(json!({ "now_ms": state.engine.now_ms(), "transitions": transitions }))
            .into_response(),
    )
}

/// Problems a ledger check lists in its answer; `problems_total` counts them all.
const LEDGER_PROBLEMS_SHOWN: usize = 100;

/// The offline `rialto ledger check`, on the live store: every invariant over one consistent
/// snapshot, while the server runs. One at a time (409 while one runs); it reads the whole
/// store on a blocking thread, so it takes no runtime worker from the API.
async fn admin_ledger_check(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Problem> {
    require_admin(&state, &headers)?;
    let Ok(_running) = state.ledger_check.try_acquire() else {
        return Err(Problem::conflict(
            "ledger_check_running",
            "a ledger check is already running",
        ));
    };
    let store = state.store.clone();
    let runtime = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || runtime.block_on(store.ledger_check()))
        .await
        .map_err(|_| internal("the ledger check stopped"))?
        .map_err(|_| Problem::storage_unavailable())?;
    // Sums are i128; JSON numbers past i64 are not portable, so those go as strings.
    let totals: serde_json::Map<_, _> = report
        .totals
        .iter()
        .map(|(currency, sum)| {
            let sum = i64::try_from(*sum).map_or_else(|_| json!(sum.to_string()), |s| json!(s));
            (currency.code().to_string(), sum)
        })
        .collect();
    Ok(Json(json!({
        "balanced": report.balanced(),
        "payments": report.payments,
        "entries": report.entries,
        "postings": report.postings,
        "totals": totals,
        "problems_total": report.problems.len(),
        "problems": report.problems.iter().take(LEDGER_PROBLEMS_SHOWN).collect::<Vec<_>>(),
    }))
    .into_response())
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
        .route("/admin/read-only", post(admin_read_only))
        .route("/admin/psps/{psp}/{action}", post(admin_psp))
        .route("/admin/breakers", get(admin_breakers))
        .route("/admin/ledger/check", get(admin_ledger_check))
        .fallback(not_found)
        .with_state(state)
}
