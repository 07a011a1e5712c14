//! `rialto psp-sim`: a [`SimPsp`] served over HTTP with Rialto's PSP protocol
//! (`rialto_actors::psp_http`). Every request must carry an `Idempotency-Key` and a valid
//! HMAC-SHA256 `X-Psp-Signature`; a bad or missing signature is refused with 401 before the
//! simulator sees the request. Two admin routes, signed the same way, let a load generator
//! line its run up with the PSP's: `POST /admin/schedule/start` starts the incident schedule
//! over, and `GET /admin/stats` gives the schedule and the counters.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::Instrument;

use rialto_actors::psp::{OperationStatus, PspAdapter, PspOutcome, PspRequest};
use rialto_actors::psp_http::{
    BODY_BYTES_MAX, IDEMPOTENCY_HEADER, OperationRequest, OperationResponse, OperationState,
    SIGNATURE_HEADER, SignatureError, verify,
};
use rialto_actors::trace_context::continue_trace;
use rialto_engine::{Currency, Money};

use crate::psp::SimPsp;

#[derive(Clone)]
struct Served {
    psp: Arc<SimPsp>,
    /// Current secret first, then previous ones still accepted during a rotation.
    secrets: Arc<Vec<Vec<u8>>>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn answer(
    state: OperationState,
    reference: Option<String>,
    code: Option<String>,
    message: Option<String>,
) -> Response {
    axum::Json(OperationResponse {
        state,
        reference,
        code,
        message,
    })
    .into_response()
}

/// Verifies the request's signature against the secrets accepted.
fn signed(
    served: &Served,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), SignatureError> {
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let secrets: Vec<&[u8]> = served.secrets.iter().map(Vec::as_slice).collect();
    verify(&secrets, signature, method.as_str(), uri.path(), body)
}

/// Checks the signature and extracts the idempotency key; the error is the refusal to send.
fn authenticate(
    served: &Served,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, (StatusCode, String)> {
    if let Err(e) = signed(served, method, uri, headers, body) {
        return Err((StatusCode::UNAUTHORIZED, e.to_string()));
    }
    headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_string)
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "Idempotency-Key is required".into(),
            )
        })
}

async fn operate(
    State(served): State<Served>,
    Path(op): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match authenticate(&served, &method, &uri, &headers, &body) {
        Ok(key) => key,
        Err((status, message)) => return error(status, &message),
    };
    let Ok(req) = serde_json::from_slice::<OperationRequest>(&body) else {
        return error(StatusCode::BAD_REQUEST, "malformed operation request");
    };
    let Some(currency) = Currency::from_code(&req.currency) else {
        return error(StatusCode::BAD_REQUEST, "unknown currency");
    };
    let call = PspRequest {
        idempotency_key: key,
        payment_id: req.payment_id,
        amount: Money::new(req.amount, currency),
        payment_method: req.payment_method,
        psp_reference: req.reference,
    };
    // The PSP's side of the call, in the caller's trace when it sent a `traceparent`.
    let span = tracing::info_span!(
        "psp_sim.operation",
        otel.kind = "server",
        operation = %op,
        payment_id = %call.payment_id,
    );
    continue_trace(&span, &headers);
    let outcome = match op.as_str() {
        "authorize" => served.psp.authorize(&call).instrument(span).await,
        "capture" => served.psp.capture(&call).instrument(span).await,
        "void" => served.psp.void(&call).instrument(span).await,
        "refund" => served.psp.refund(&call).instrument(span).await,
        _ => return error(StatusCode::NOT_FOUND, "unknown operation"),
    };
    match outcome {
        PspOutcome::Approved { psp_reference } => {
            answer(OperationState::Succeeded, Some(psp_reference), None, None)
        }
        PspOutcome::HardDecline { code, message } => {
            answer(OperationState::Declined, None, Some(code), Some(message))
        }
        PspOutcome::SoftFailure { reason } => error(StatusCode::SERVICE_UNAVAILABLE, &reason),
        PspOutcome::Unknown { reason } => error(StatusCode::INTERNAL_SERVER_ERROR, &reason),
    }
}

async fn status(
    State(served): State<Served>,
    Path(key): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err((status, message)) = authenticate(&served, &method, &uri, &headers, b"") {
        return error(status, &message);
    }
    let query = PspRequest {
        idempotency_key: key,
        payment_id: String::new(),
        amount: Money::new(0, Currency::Usd),
        payment_method: String::new(),
        psp_reference: None,
    };
    match served.psp.status(&query).await {
        OperationStatus::NotFound => error(StatusCode::NOT_FOUND, "no such operation"),
        OperationStatus::Pending => answer(OperationState::Pending, None, None, None),
        OperationStatus::Succeeded { psp_reference } => {
            answer(OperationState::Succeeded, Some(psp_reference), None, None)
        }
        OperationStatus::Declined { code, message } => {
            answer(OperationState::Declined, None, Some(code), Some(message))
        }
    }
}

/// Checks an admin request's signature (signed like an operation, with the PSP's secret).
fn admin(served: &Served, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    signed(served, method, uri, headers, b"")
        .err()
        .map(|e| error(StatusCode::UNAUTHORIZED, &e.to_string()))
}

/// What the simulator is doing: its incident schedule (on the schedule's clock, as in
/// `rialto sim`'s report), how far that clock is, and its counters.
fn describe(psp: &SimPsp) -> Response {
    let incidents: Vec<_> = psp
        .config()
        .incidents
        .iter()
        .map(|i| crate::report::incident(&psp.config().id, i))
        .collect();
    let calls: serde_json::Map<_, _> = psp
        .stats
        .snapshot()
        .into_iter()
        .map(|(name, n)| (name.to_string(), json!(n)))
        .collect();
    axum::Json(json!({
        "psp": psp.config().id,
        "schedule_elapsed_s": psp.schedule_elapsed().as_secs_f64(),
        "incidents": incidents,
        "calls": calls,
    }))
    .into_response()
}

/// `GET /admin/stats`: see [`describe`].
async fn stats(
    State(served): State<Served>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    admin(&served, &method, &uri, &headers).unwrap_or_else(|| describe(&served.psp))
}

/// `POST /admin/schedule/start`: starts the incident schedule over from now, as `rialto sim`
/// does when its measured load starts (`--psp-sim`).
async fn start_schedule(
    State(served): State<Served>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    admin(&served, &method, &uri, &headers).unwrap_or_else(|| {
        served.psp.start_schedule();
        tracing::info!(psp = %served.psp.config().id, "incident schedule started over");
        describe(&served.psp)
    })
}

/// The simulator's routes. `secrets`: the current secret, then any still-accepted previous ones.
pub fn router(psp: Arc<SimPsp>, secrets: Vec<Vec<u8>>) -> Router {
    assert!(
        !secrets.is_empty() && secrets.iter().all(|s| !s.is_empty()),
        "psp-sim needs a secret"
    );
    let served = Served {
        psp,
        secrets: Arc::new(secrets),
    };
    Router::new()
        .route("/v1/operations/{key}", get(status))
        .route("/v1/{op}", post(operate))
        .route("/admin/stats", get(stats))
        .route("/admin/schedule/start", post(start_schedule))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(served)
}
