//! The merchant contract's JSON shapes and their hand-written mapping from engine types.
//! Requests are validated here, at the edge, into engine values; responses are rendered
//! from engine values. Amounts are integers in minor units.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use rialto_engine::limits::{
    DESCRIPTION_BYTES_MAX, MERCHANT_REFERENCE_BYTES_MAX, METADATA_KEY_BYTES_MAX,
    METADATA_PAIRS_MAX, METADATA_VALUE_BYTES_MAX, PAYMENT_METHOD_BYTES_MAX,
};
use rialto_engine::redact::{redact, redact_metadata_value};
use rialto_engine::{CaptureMethod, Currency, Event, Money, Payment, Recorded, Refund};

use crate::problem::Problem;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentRequest {
    /// Amount in minor units of `currency` (cents for USD), 1 to 10^15.
    pub amount: i64,
    /// ISO 4217 code: EUR, GBP, IRR, JPY, KWD or USD.
    pub currency: String,
    /// A payment method token, e.g. `pm_sim_approve`.
    pub payment_method: String,
    /// `automatic` (default) captures as soon as the payment is authorized.
    pub capture_method: Option<CaptureMethodDto>,
    pub merchant_reference: Option<String>,
    pub description: Option<String>,
    /// Up to 20 string pairs.
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethodDto {
    Automatic,
    Manual,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Amount to capture; defaults to the full authorized amount.
    pub amount: Option<i64>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Amount to refund; at most what is captured and not yet refunded.
    pub amount: i64,
}

/// Validated fields of a new payment.
pub struct NewPaymentFields {
    pub amount: Money,
    pub payment_method: String,
    pub capture_method: CaptureMethod,
    pub merchant_reference: Option<String>,
    pub description: Option<String>,
    pub metadata: Vec<(String, String)>,
}

fn bounded(field: &str, value: Option<String>, max: usize) -> Result<Option<String>, Problem> {
    match value {
        Some(v) if v.len() > max => Err(Problem::invalid(format!(
            "`{field}` is longer than {max} bytes"
        ))),
        other => Ok(other),
    }
}

impl CreatePaymentRequest {
    pub fn validate(self) -> Result<NewPaymentFields, Problem> {
        let currency = Currency::from_code(&self.currency).ok_or_else(|| {
            Problem::invalid(format!(
                "unknown currency `{}`",
                self.currency.escape_debug()
            ))
        })?;
        let amount = Money::chargeable(self.amount, currency)
            .map_err(|e| Problem::invalid(format!("`amount`: {e}")))?;
        let pm = &self.payment_method;
        let pm_ok = pm.len() <= PAYMENT_METHOD_BYTES_MAX
            && pm.starts_with("pm_")
            && pm.len() > 3
            && pm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !pm_ok {
            return Err(Problem::invalid(
                "`payment_method` must be a token like `pm_sim_approve` (lowercase letters, digits, `_`)",
            ));
        }
        let metadata = self.metadata.unwrap_or_default();
        if metadata.len() > METADATA_PAIRS_MAX {
            return Err(Problem::invalid(format!(
                "`metadata` has more than {METADATA_PAIRS_MAX} keys"
            )));
        }
        for (k, v) in &metadata {
            if k.is_empty()
                || k.len() > METADATA_KEY_BYTES_MAX
                || v.len() > METADATA_VALUE_BYTES_MAX
            {
                return Err(Problem::invalid(format!(
                    "`metadata` keys must be 1..={METADATA_KEY_BYTES_MAX} bytes and values at most {METADATA_VALUE_BYTES_MAX}"
                )));
            }
        }
        Ok(NewPaymentFields {
            amount,
            payment_method: self.payment_method,
            capture_method: match self.capture_method.unwrap_or(CaptureMethodDto::Automatic) {
                CaptureMethodDto::Automatic => CaptureMethod::Automatic,
                CaptureMethodDto::Manual => CaptureMethod::Manual,
            },
            // Card data never rests (R3.7): merchant text is masked before it goes anywhere.
            merchant_reference: bounded(
                "merchant_reference",
                self.merchant_reference,
                MERCHANT_REFERENCE_BYTES_MAX,
            )?
            .map(|r| redact(&r).into_owned()),
            description: bounded("description", self.description, DESCRIPTION_BYTES_MAX)?
                .map(|d| redact(&d).into_owned()),
            metadata: metadata
                .into_iter()
                .map(|(k, v)| {
                    let v = redact_metadata_value(&k, &v);
                    (redact(&k).into_owned(), v)
                })
                .collect(),
        })
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[derive(Serialize, ToSchema)]
pub struct FailureView {
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct RefundView {
    pub id: String,
    pub object: &'static str,
    pub payment_id: String,
    pub amount: i64,
    pub currency: &'static str,
    /// `pending`, `succeeded` or `failed`.
    pub status: &'static str,
    pub failure_reason: Option<String>,
    pub created_at: String,
}

impl RefundView {
    pub fn new(p: &Payment, r: &Refund) -> RefundView {
        RefundView {
            id: r.id.clone(),
            object: "refund",
            payment_id: p.id.clone(),
            amount: r.amount_minor,
            currency: p.currency().code(),
            status: r.status.as_str(),
            failure_reason: r.failure.clone(),
            created_at: timestamp(r.created_at_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PaymentView {
    pub id: String,
    pub object: &'static str,
    /// created, authorizing, authorized, capturing, captured, partially_refunded, refunded,
    /// declined, failed, canceled, expired or unknown.
    pub status: &'static str,
    pub amount: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub currency: &'static str,
    pub capture_method: &'static str,
    pub payment_method: String,
    pub psp: String,
    pub psp_reference: Option<String>,
    pub merchant_reference: Option<String>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub failure: Option<FailureView>,
    pub refunds: Vec<RefundView>,
    pub authorization_expires_at: Option<String>,
    /// True when the outcome stayed unknown past the resolver's patience; Rialto keeps
    /// asking the PSP, and an operator should look.
    pub escalated: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl PaymentView {
    pub fn new(p: &Payment) -> PaymentView {
        PaymentView {
            id: p.id.clone(),
            object: "payment",
            status: p.status.as_str(),
            amount: p.amount.amount_minor,
            amount_captured: p.amount_captured_minor,
            amount_refunded: p.amount_refunded_minor,
            currency: p.currency().code(),
            capture_method: p.capture_method.as_str(),
            payment_method: p.payment_method.clone(),
            psp: p.psp.clone(),
            psp_reference: p.psp_reference.clone(),
            merchant_reference: p.merchant_reference.clone(),
            description: p.description.clone(),
            metadata: p.metadata.iter().cloned().collect(),
            failure: p.failure.as_ref().map(|f| FailureView {
                code: f.code.clone(),
                message: f.message.clone(),
            }),
            refunds: p.refunds.iter().map(|r| RefundView::new(p, r)).collect(),
            authorization_expires_at: p.authorization_expires_at_ms.map(timestamp),
            escalated: p.escalated,
            created_at: timestamp(p.created_at_ms),
            updated_at: timestamp(p.updated_at_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PaymentList {
    pub object: &'static str,
    pub data: Vec<PaymentView>,
    pub has_more: bool,
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub seq: u64,
    /// e.g. `payment.authorized`, `payment.captured`, `refund.succeeded`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub created_at: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl EventView {
    pub fn new(r: &Recorded) -> EventView {
        use serde_json::json;
        let data = match &r.event {
            Event::Authorized { psp_reference } => json!({ "psp_reference": psp_reference }),
            Event::AuthorizeDeclined { code, message } => {
                json!({ "code": code, "message": message })
            }
            Event::AuthorizeFailed { reason }
            | Event::CaptureFailed { reason }
            | Event::VoidFailed { reason } => json!({ "reason": reason }),
            Event::CaptureRequested { amount_minor } => json!({ "amount": amount_minor }),
            Event::Captured { fee_minor } => json!({ "fee": fee_minor }),
            Event::RefundRequested {
                refund_id,
                amount_minor,
            } => {
                json!({ "refund_id": refund_id, "amount": amount_minor })
            }
            Event::Refunded { refund_id } => json!({ "refund_id": refund_id }),
            Event::Rerouted { psp } => json!({ "psp": psp }),
            Event::RefundFailed { refund_id, reason } => {
                json!({ "refund_id": refund_id, "reason": reason })
            }
            Event::Created
            | Event::AuthorizeRequested
            | Event::OutcomeUnknown
            | Event::VoidRequested
            | Event::Voided
            | Event::Expired
            | Event::Escalated => json!({}),
        };
        EventView {
            seq: r.seq,
            kind: r.event.name(),
            created_at: timestamp(r.at_ms),
            data,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    pub object: &'static str,
    pub data: Vec<EventView>,
}

#[derive(Serialize, ToSchema)]
pub struct BalanceView {
    pub currency: &'static str,
    /// What Rialto owes the merchant in this currency: captures minus fees minus refunds.
    pub payable: i64,
}

#[derive(Serialize, ToSchema)]
pub struct BalanceList {
    pub object: &'static str,
    pub data: Vec<BalanceView>,
}
