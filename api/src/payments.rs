//! The `/v1` merchant routes. Each mutating route parses and validates its body, then runs
//! through [`idempotent`], which enforces R1.5: the same key and body replay the stored
//! response byte for byte, the same key with another body is 422, and the same key while
//! the first request still runs is 409. The engine commits the claim on the key and the final
//! response atomically with the payment's state changes.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;

use rialto_actors::{CommandError, CreatePayment, IdempotencySpec, Renderer, new_id};
use rialto_engine::{Effect, Payment};
use rialto_persistence::StoredResponse;

use crate::AppState;
use crate::auth::Authenticated;
use crate::problem::{Problem, ProblemBody, internal};
use crate::views::{
    BalanceList, BalanceView, CancelRequest, CaptureRequest, CreatePaymentRequest, EventList,
    EventView, PaymentList, PaymentView, RefundRequest, RefundView,
};

pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
pub const LIST_LIMIT_MAX: u32 = 100;
const LIST_LIMIT_DEFAULT: u32 = 10;

/// A payment id as Rialto issues them: `pay_` and 32 lowercase hex digits.
fn payment_id(raw: &str) -> Result<&str, Problem> {
    let ok = raw.strip_prefix("pay_").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    });
    if ok {
        Ok(raw)
    } else {
        Err(Problem::invalid(format!(
            "`{}` is not a payment id",
            raw.chars().take(64).collect::<String>().escape_debug()
        )))
    }
}

/// Parses a JSON body strictly; an empty body means `{}` where the route allows it.
fn parse<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    empty_ok: bool,
) -> Result<(T, serde_json::Value), Problem> {
    let body =
        body.map_err(|r| Problem::new(r.status(), "invalid_body", "Invalid body", r.body_text()))?;
    let bytes: &[u8] = if body.is_empty() && empty_ok {
        b"{}"
    } else {
        &body
    };
    if !body.is_empty() {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                "send `Content-Type: application/json`",
            ));
        }
    }
    // Parse once into a value (for the canonical fingerprint), then into the typed request.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Problem::invalid(format!("malformed JSON: {e}")))?;
    let typed = T::deserialize(&value)
        .map_err(|e| Problem::invalid(format!("invalid request body: {e}")))?;
    Ok((typed, value))
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        body: serde_json::to_vec(body).expect("views always serialize"),
    }
}

fn payment_renderer(status: StatusCode) -> Renderer {
    Arc::new(move |p: &Payment| json_response(status, &PaymentView::new(p)))
}

fn send(stored: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Removes the in-progress mark of a key when its request ends, however it ends.
struct InProgress<'a> {
    state: &'a AppState,
    slot: (String, String),
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.state.keys_in_progress.remove(&self.slot);
    }
}

/// Mutations are refused while Rialto is read-only (R2.7); reads keep working.
fn writable(state: &AppState) -> Result<(), Problem> {
    match state.engine.read_only_reason() {
        None => Ok(()),
        Some(reason) => Err(Problem::unavailable(
            "read_only",
            "Read-only mode",
            format!("Rialto is read-only: {reason}; reads still work"),
            5,
        )),
    }
}

/// Where a request finds out whether its Idempotency-Key was used before.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyCheck {
    /// Look the key up before running. Needed by a command on an existing payment: an
    /// earlier request with the key may have moved the payment on, so that running again
    /// would be refused for the payment's state (or, were the command to rest in one commit,
    /// done twice) rather than replayed.
    First,
    /// Run, and look the key up only if the command fails before its first commit. A new
    /// payment has a new id, so the store refuses its claim on a key already used
    /// (`IdempotencyKeyInUse`) before anything is done; the lookup is saved for the
    /// common case of a new key.
    OnRefusal,
}

/// What identifies a request under its Idempotency-Key: SHA-256 of its request line and its
/// canonical JSON body (serde_json's map is ordered, so equal bodies give equal fingerprints).
/// Takes the body, so that only its fingerprint outlives this point.
fn fingerprint(request_line: &str, canonical_body: serde_json::Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(request_line.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_body.to_string().as_bytes());
    hasher.finalize().into()
}

/// Runs a mutating request at most once per (merchant, Idempotency-Key).
async fn idempotent<F, Fut>(
    state: &AppState,
    merchant_id: &str,
    check: KeyCheck,
    headers: HeaderMap,
    fingerprint: [u8; 32],
    render: Renderer,
    run: F,
) -> Result<Response, Problem>
where
    F: FnOnce(IdempotencySpec) -> Fut,
    Fut: Future<Output = Result<Payment, CommandError>>,
{
    writable(state)?;
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| Problem::invalid("the `Idempotency-Key` header is required on every POST"))?
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            Problem::invalid(format!(
                "`Idempotency-Key` must be 1..={IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"
            ))
        })?
        .to_string();
    // The header map shares the connection's read buffer (8 KiB); holding it while the
    // payment runs would make the connection allocate another for the same wait.
    drop(headers);

    let slot = (merchant_id.to_string(), key.clone());
    if state.keys_in_progress.insert(slot.clone(), ()).is_some() {
        return Err(Problem::conflict(
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still in progress",
        ));
    }
    let in_progress = InProgress { state, slot };

    if check == KeyCheck::First
        && let Some(answer) =
            earlier_answer(state, merchant_id, &key, &fingerprint, &render).await?
    {
        return Ok(answer);
    }
    let spec = IdempotencySpec {
        merchant_id: merchant_id.to_string(),
        key,
        fingerprint,
        render: render.clone(),
        claimed: false,
        rendered: Arc::default(),
    };
    let rendered = spec.rendered.clone();
    let key = &in_progress.slot.1;
    let payment = match run(spec).await {
        Ok(payment) => payment,
        // Failures before the first commit, where the key may have been used before.
        Err(
            error @ (CommandError::IdempotencyKeyInUse
            | CommandError::NoPspAvailable
            | CommandError::Overloaded
            | CommandError::Rejected(_)),
        ) if check == KeyCheck::OnRefusal => {
            return match earlier_answer(state, merchant_id, key, &fingerprint, &render).await? {
                Some(answer) => Ok(answer),
                None => Err(error.into()),
            };
        }
        Err(error) => return Err(error.into()),
    };
    if check == KeyCheck::OnRefusal {
        metrics::counter!("idempotency_cache_misses_total").increment(1); // Not looked up.
    }
    // The response committed for replay when the payment came to rest; a request that
    // returns before that (a parked capture) renders what it has.
    let committed = rendered.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(send(committed.unwrap_or_else(|| render(&payment)), false))
}

/// The answer owed to a request whose key was used before, if it was: the stored response
/// replayed, 422 for another request under the key, or 409 while the first one still runs.
async fn earlier_answer(
    state: &AppState,
    merchant_id: &str,
    key: &str,
    fingerprint: &[u8; 32],
    render: &Renderer,
) -> Result<Option<Response>, Problem> {
    let existing = state
        .store
        .idempotency(merchant_id, key)
        .await
        .map_err(|_| Problem::storage_unavailable())?;
    let Some(record) = existing else {
        metrics::counter!("idempotency_cache_misses_total").increment(1);
        return Ok(None);
    };
    if record.fingerprint != *fingerprint {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "Idempotency key reused",
            "this Idempotency-Key was used with a different request",
        ));
    }
    metrics::counter!("idempotency_cache_hits_total").increment(1);
    if let Some(stored) = record.response {
        return Ok(Some(send(stored, true)));
    }
    // The first attempt was interrupted before it answered; answer from the payment once
    // it rests again.
    let payment = state
        .store
        .payment(&record.resource_id)
        .await
        .map_err(|_| Problem::storage_unavailable())?;
    match payment {
        Some(p) if !matches!(p.effects().first(), Some(Effect::Call(_))) => {
            Ok(Some(send(render(&p), true)))
        }
        _ => Err(Problem::conflict(
            "idempotency_key_in_use",
            "the original request is still being processed; retry shortly",
        )),
    }
}

#[utoipa::path(
    post, path = "/v1/payments", tag = "payments",
    request_body = CreatePaymentRequest,
    params(("Idempotency-Key" = String, Header, description = "Required; 1-255 visible ASCII characters")),
    responses(
        (status = 201, description = "The payment, at rest: captured, authorized, declined, failed or unknown", body = PaymentView),
        (status = 400, description = "Invalid request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The same key is in use by a running request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The key was used with a different request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_payment(
    State(state): State<AppState>,
    Authenticated(merchant): Authenticated,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let (req, canonical) = parse::<CreatePaymentRequest>(&headers, body, false)?;
    let fields = req.validate()?;
    // Merchant text is already masked (`validate`); the log writer masks again.
    tracing::debug!(
        merchant_id = %merchant.id,
        amount_minor = fields.amount.amount_minor,
        currency = fields.amount.currency.code(),
        description = ?fields.description,
        metadata = ?fields.metadata,
        "creating payment"
    );
    let create = CreatePayment {
        merchant_id: merchant.id.clone(),
        fee_bps: merchant.fee_bps,
        amount: fields.amount,
        payment_method: fields.payment_method,
        capture_method: fields.capture_method,
        merchant_reference: fields.merchant_reference,
        description: fields.description,
        metadata: fields.metadata,
    };
    let render = payment_renderer(StatusCode::CREATED);
    idempotent(
        &state,
        &merchant.id,
        KeyCheck::OnRefusal,
        headers,
        fingerprint("POST /v1/payments", canonical),
        render,
        |spec| state.engine.create_payment(create, Some(spec)),
    )
    .await
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/capture", tag = "payments",
    request_body(content = CaptureRequest, description = "Optional; empty means the full amount"),
    params(("id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses(
        (status = 200, description = "The captured payment", body = PaymentView),
        (status = 400, description = "Invalid amount", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not capturable in its state, or busy", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn capture_payment(
    State(state): State<AppState>,
    Authenticated(merchant): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = payment_id(&id)?;
    let (req, canonical) = parse::<CaptureRequest>(&headers, body, true)?;
    let line = format!("POST /v1/payments/{id}/capture");
    let render = payment_renderer(StatusCode::OK);
    idempotent(
        &state,
        &merchant.id,
        KeyCheck::First,
        headers,
        fingerprint(&line, canonical),
        render,
        |spec| {
            state
                .engine
                .capture(&merchant.id, id, req.amount, Some(spec))
        },
    )
    .await
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/cancel", tag = "payments",
    params(("id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses(
        (status = 200, description = "The canceled payment", body = PaymentView),
        (status = 404, description = "No such payment", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not cancelable in its state, or busy", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn cancel_payment(
    State(state): State<AppState>,
    Authenticated(merchant): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = payment_id(&id)?;
    let (_, canonical) = parse::<CancelRequest>(&headers, body, true)?;
    let line = format!("POST /v1/payments/{id}/cancel");
    let render = payment_renderer(StatusCode::OK);
    idempotent(
        &state,
        &merchant.id,
        KeyCheck::First,
        headers,
        fingerprint(&line, canonical),
        render,
        |spec| state.engine.cancel(&merchant.id, id, Some(spec)),
    )
    .await
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/refunds", tag = "payments",
    request_body = RefundRequest,
    params(("id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses(
        (status = 201, description = "The refund", body = RefundView),
        (status = 400, description = "Invalid amount, or more than is refundable", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not refundable in its state, or busy", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn refund_payment(
    State(state): State<AppState>,
    Authenticated(merchant): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = payment_id(&id)?;
    let (req, canonical) = parse::<RefundRequest>(&headers, body, false)?;
    let refund_id = new_id("re");
    let line = format!("POST /v1/payments/{id}/refunds");
    let rendered_id = refund_id.clone();
    let render: Renderer = Arc::new(move |p: &Payment| match p.refund(&rendered_id) {
        Some(r) => json_response(StatusCode::CREATED, &RefundView::new(p, r)),
        // Only reachable if the refund was refused, which happens before anything is stored.
        None => json_response(StatusCode::OK, &PaymentView::new(p)),
    });
    idempotent(
        &state,
        &merchant.id,
        KeyCheck::First,
        headers,
        fingerprint(&line, canonical),
        render,
        |spec| {
            state
                .engine
                .refund(&merchant.id, id, refund_id, req.amount, Some(spec))
        },
    )
    .await
}

/// Loads a payment of this merchant; another merchant's payment does not exist for it.
async fn owned(state: &AppState, merchant_id: &str, id: &str) -> Result<Payment, Problem> {
    let id = payment_id(id)?;
    match state.store.payment(id).await {
        Ok(Some(p)) if p.merchant_id == merchant_id => Ok(p),
        Ok(_) => Err(Problem::not_found("no such payment")),
        Err(e) => {
            tracing::error!(error = %e, "payment read failed");
            Err(Problem::storage_unavailable())
        }
    }
}

#[utoipa::path(
    get, path = "/v1/payments/{id}", tag = "payments",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = PaymentView),
        (status = 404, description = "No such payment", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_payment(
    State(state): State<AppState>,
    Authenticated(merchant): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let p = owned(&state, &merchant.id, &id).await?;
    Ok(axum::Json(PaymentView::new(&p)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1 to 100, default 10.
    limit: Option<u32>,
    /// A payment id: list the payments created before it (the page after it).
    starting_after: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/payments", tag = "payments",
    params(ListParams),
    responses(
        (status = 200, description = "The merchant's payments, newest first", body = PaymentList),
        (status = 400, description = "Invalid parameters", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_payments(
    State(state): State<AppState>,
    Authenticated(merchant): Authenticated,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|r| Problem::invalid(r.body_text()))?;
    let limit = params.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(Problem::invalid(format!(
            "`limit` must be 1..={LIST_LIMIT_MAX}"
        )));
    }
    let after = params
        .starting_after
        .as_deref()
        .map(payment_id)
        .transpose()?;
    let page = state
        .store
        .payments(&merchant.id, limit, after)
        .await
        .map_err(|_| Problem::storage_unavailable())?;
    Ok(axum::Json(PaymentList {
        object: "list",
        data: page.payments.iter().map(PaymentView::new).collect(),
        has_more: page.has_more,
    })
    .into_response())
}

#[utoipa::path(
    get, path = "/v1/payments/{id}/events", tag = "payments",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The payment's events, oldest first", body = EventList),
        (status = 404, description = "No such payment", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_events(
    State(state): State<AppState>,
    Authenticated(merchant): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let p = owned(&state, &merchant.id, &id).await?;
    let events = state
        .store
        .events(&p.id)
        .await
        .map_err(|_| Problem::storage_unavailable())?;
    Ok(axum::Json(EventList {
        object: "list",
        data: events.iter().map(EventView::new).collect(),
    })
    .into_response())
}

#[utoipa::path(
    get, path = "/v1/ledger/balances", tag = "ledger",
    responses((status = 200, description = "What Rialto owes the calling merchant, per currency", body = BalanceList)),
    security(("api_key" = []))
)]
pub async fn balances(
    State(state): State<AppState>,
    Authenticated(merchant): Authenticated,
) -> Result<Response, Problem> {
    let account = rialto_engine::Account::MerchantPayable(merchant.id.clone()).to_string();
    let balances = state
        .store
        .balances(&account)
        .await
        .map_err(|_| Problem::storage_unavailable())?;
    let data = balances
        .into_iter()
        .filter(|b| b.account == account)
        .map(|b| {
            // A liability is credit-normal (negative); merchants read it as a positive payable.
            let payable = b
                .balance_minor
                .checked_neg()
                .ok_or_else(|| internal("balance out of range"))?;
            Ok(BalanceView {
                currency: b.currency.code(),
                payable,
            })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(axum::Json(BalanceList {
        object: "list",
        data,
    })
    .into_response())
}
