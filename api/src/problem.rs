//! RFC 9457 problem details: every error the API returns is `application/problem+json` with
//! `type`, `title`, `status` and `detail`, and changes nothing on the server.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use rialto_actors::CommandError;
use rialto_engine::Rejection;

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// A short snake_case name; the `type` URI is built from it.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after_s: Option<u32>,
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ProblemBody {
    /// A URI naming the kind of problem, e.g. `urn:rialto:problem:invalid_request`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    /// A 400; the detail is redacted, since parse errors quote the offending value.
    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid request",
            rialto_engine::redact::redact(&detail.into()).into_owned(),
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", "Not found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    pub fn conflict(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, kind, "Conflict", detail)
    }

    /// A 503 with `Retry-After`: nothing was done, and the same request may succeed later.
    pub fn unavailable(
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
        retry_after_s: u32,
    ) -> Problem {
        Problem {
            retry_after_s: Some(retry_after_s),
            ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, kind, title, detail)
        }
    }

    /// The store could not be read or written.
    pub fn storage_unavailable() -> Problem {
        Problem::unavailable(
            "storage_unavailable",
            "Storage unavailable",
            "storage is unavailable",
            1,
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("urn:rialto:problem:{}", self.kind),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

impl From<CommandError> for Problem {
    fn from(e: CommandError) -> Problem {
        let detail = e.to_string();
        match e {
            CommandError::NotFound => Problem::not_found("no such payment"),
            CommandError::Busy | CommandError::IdempotencyKeyInUse => {
                Problem::conflict("concurrent_request", detail)
            }
            CommandError::Rejected(r) => match r {
                Rejection::CaptureAmountInvalid { .. }
                | Rejection::RefundExceedsCaptured { .. }
                | Rejection::RefundAmountInvalid(_)
                | Rejection::TooManyRefunds
                | Rejection::Money(_) => Problem::invalid(detail),
                Rejection::IllegalTransition { .. }
                | Rejection::OperationInProgress
                | Rejection::NothingPending
                | Rejection::NotExpired => Problem::conflict("invalid_state", detail),
                Rejection::FeeInvalid(_)
                | Rejection::FeeInvalidForCapture { .. }
                | Rejection::Ledger(_) => internal(detail),
            },
            // Each 503 names its cause, so that a client, a dashboard or a load test can tell
            // an engine at its limit from a PSP that cannot take payments.
            CommandError::Overloaded => Problem::unavailable("overloaded", "Overloaded", detail, 1),
            CommandError::NoPspAvailable => {
                Problem::unavailable("no_psp_available", "No PSP available", detail, 1)
            }
            CommandError::ShuttingDown => {
                Problem::unavailable("shutting_down", "Shutting down", detail, 1)
            }
            CommandError::Store(_) => Problem::storage_unavailable(),
            CommandError::StillProcessing => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "still_processing",
                "Still processing",
                "the payment is still being processed; retry with the same Idempotency-Key to get its result",
            ),
            CommandError::Interrupted => internal(format!(
                "{detail}; retry with the same Idempotency-Key to get its result"
            )),
        }
    }
}

pub fn internal(detail: impl Into<String>) -> Problem {
    metrics::counter!("app_exceptions_total").increment(1);
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "Internal error",
        detail,
    )
}
