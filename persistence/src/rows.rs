//! The stored shape of payments, events, journal entries, merchants and idempotency
//! records. These rows belong to persistence alone; they are mapped to and from engine types
//! by hand so the engine never carries storage derives, and a change to either side is a
//! visible edit here.

use serde::{Deserialize, Serialize};

use rialto_engine::{
    Account, CaptureMethod, Currency, Event, Failure, JournalEntry, Money, Payment, Pending,
    Posting, PspOp, Refund, RefundStatus, Status,
};

use crate::{IdempotencyRecord, Merchant, StoreError, StoredResponse};

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("unknown {what} `{value}`"))
}

pub fn currency(code: &str) -> Result<Currency, StoreError> {
    Currency::from_code(code).ok_or_else(|| corrupt("currency", code))
}

#[derive(Serialize, Deserialize)]
pub struct PaymentRow {
    id: String,
    merchant_id: String,
    amount_minor: i64,
    currency: String,
    amount_captured_minor: i64,
    amount_refunded_minor: i64,
    fee_minor: i64,
    fee_bps: u32,
    status: String,
    capture_method: String,
    payment_method: String,
    psp: String,
    psp_reference: Option<String>,
    merchant_reference: Option<String>,
    description: Option<String>,
    metadata: Vec<(String, String)>,
    refunds: Vec<RefundRow>,
    pending: Option<PendingRow>,
    failure: Option<(String, String)>,
    created_at_ms: i64,
    updated_at_ms: i64,
    authorization_ttl_ms: i64,
    authorization_expires_at_ms: Option<i64>,
    version: u64,
    escalated: bool,
}

#[derive(Serialize, Deserialize)]
struct RefundRow {
    id: String,
    amount_minor: i64,
    status: String,
    created_at_ms: i64,
    failure: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct PendingRow {
    op: OpRow,
    outcome_unknown: bool,
}

#[derive(Serialize, Deserialize)]
enum OpRow {
    Authorize,
    Capture {
        amount_minor: i64,
    },
    Void,
    Refund {
        refund_id: String,
        amount_minor: i64,
    },
}

impl From<&PspOp> for OpRow {
    fn from(op: &PspOp) -> OpRow {
        match op {
            PspOp::Authorize => OpRow::Authorize,
            PspOp::Capture { amount_minor } => OpRow::Capture {
                amount_minor: *amount_minor,
            },
            PspOp::Void => OpRow::Void,
            PspOp::Refund {
                refund_id,
                amount_minor,
            } => OpRow::Refund {
                refund_id: refund_id.clone(),
                amount_minor: *amount_minor,
            },
        }
    }
}

impl From<OpRow> for PspOp {
    fn from(op: OpRow) -> PspOp {
        match op {
            OpRow::Authorize => PspOp::Authorize,
            OpRow::Capture { amount_minor } => PspOp::Capture { amount_minor },
            OpRow::Void => PspOp::Void,
            OpRow::Refund {
                refund_id,
                amount_minor,
            } => PspOp::Refund {
                refund_id,
                amount_minor,
            },
        }
    }
}

impl From<&Payment> for PaymentRow {
    fn from(p: &Payment) -> PaymentRow {
        PaymentRow {
            id: p.id.clone(),
            merchant_id: p.merchant_id.clone(),
            amount_minor: p.amount.amount_minor,
            currency: p.amount.currency.code().to_string(),
            amount_captured_minor: p.amount_captured_minor,
            amount_refunded_minor: p.amount_refunded_minor,
            fee_minor: p.fee_minor,
            fee_bps: p.fee_bps,
            status: p.status.as_str().to_string(),
            capture_method: p.capture_method.as_str().to_string(),
            payment_method: p.payment_method.clone(),
            psp: p.psp.clone(),
            psp_reference: p.psp_reference.clone(),
            merchant_reference: p.merchant_reference.clone(),
            description: p.description.clone(),
            metadata: p.metadata.clone(),
            refunds: p
                .refunds
                .iter()
                .map(|r| RefundRow {
                    id: r.id.clone(),
                    amount_minor: r.amount_minor,
                    status: r.status.as_str().to_string(),
                    created_at_ms: r.created_at_ms,
                    failure: r.failure.clone(),
                })
                .collect(),
            pending: p.pending.as_ref().map(|x| PendingRow {
                op: OpRow::from(&x.op),
                outcome_unknown: x.outcome_unknown,
            }),
            failure: p
                .failure
                .as_ref()
                .map(|f| (f.code.clone(), f.message.clone())),
            created_at_ms: p.created_at_ms,
            updated_at_ms: p.updated_at_ms,
            authorization_ttl_ms: p.authorization_ttl_ms,
            authorization_expires_at_ms: p.authorization_expires_at_ms,
            version: p.version,
            escalated: p.escalated,
        }
    }
}

impl TryFrom<PaymentRow> for Payment {
    type Error = StoreError;

    fn try_from(r: PaymentRow) -> Result<Payment, StoreError> {
        let refunds = r
            .refunds
            .into_iter()
            .map(|x| {
                let status = match x.status.as_str() {
                    "pending" => RefundStatus::Pending,
                    "succeeded" => RefundStatus::Succeeded,
                    "failed" => RefundStatus::Failed,
                    other => return Err(corrupt("refund status", other)),
                };
                Ok(Refund {
                    id: x.id,
                    amount_minor: x.amount_minor,
                    status,
                    created_at_ms: x.created_at_ms,
                    failure: x.failure,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let capture_method = match r.capture_method.as_str() {
            "automatic" => CaptureMethod::Automatic,
            "manual" => CaptureMethod::Manual,
            other => return Err(corrupt("capture method", other)),
        };
        Ok(Payment {
            amount: Money::new(r.amount_minor, currency(&r.currency)?),
            status: Status::parse(&r.status).ok_or_else(|| corrupt("status", &r.status))?,
            id: r.id,
            merchant_id: r.merchant_id,
            amount_captured_minor: r.amount_captured_minor,
            amount_refunded_minor: r.amount_refunded_minor,
            fee_minor: r.fee_minor,
            fee_bps: r.fee_bps,
            capture_method,
            payment_method: r.payment_method,
            psp: r.psp,
            psp_reference: r.psp_reference,
            merchant_reference: r.merchant_reference,
            description: r.description,
            metadata: r.metadata,
            refunds,
            pending: r.pending.map(|x| Pending {
                op: x.op.into(),
                outcome_unknown: x.outcome_unknown,
            }),
            failure: r.failure.map(|(code, message)| Failure { code, message }),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            authorization_ttl_ms: r.authorization_ttl_ms,
            authorization_expires_at_ms: r.authorization_expires_at_ms,
            escalated: r.escalated,
            version: r.version,
        })
    }
}

#[derive(Serialize, Deserialize)]
enum EventKind {
    Created,
    AuthorizeRequested,
    Authorized {
        psp_reference: String,
    },
    AuthorizeDeclined {
        code: String,
        message: String,
    },
    AuthorizeFailed {
        reason: String,
    },
    OutcomeUnknown,
    CaptureRequested {
        amount_minor: i64,
    },
    Captured {
        fee_minor: i64,
    },
    CaptureFailed {
        reason: String,
    },
    VoidRequested,
    Voided,
    VoidFailed {
        reason: String,
    },
    RefundRequested {
        refund_id: String,
        amount_minor: i64,
    },
    Refunded {
        refund_id: String,
    },
    RefundFailed {
        refund_id: String,
        reason: String,
    },
    Expired,
    Rerouted {
        psp: String,
    },
    Escalated,
}

#[derive(Serialize, Deserialize)]
pub struct EventRow {
    at_ms: i64,
    event: EventKind,
}

impl EventRow {
    pub fn new(event: &Event, at_ms: i64) -> EventRow {
        let event = match event.clone() {
            Event::Created => EventKind::Created,
            Event::AuthorizeRequested => EventKind::AuthorizeRequested,
            Event::Authorized { psp_reference } => EventKind::Authorized { psp_reference },
            Event::AuthorizeDeclined { code, message } => {
                EventKind::AuthorizeDeclined { code, message }
            }
            Event::AuthorizeFailed { reason } => EventKind::AuthorizeFailed { reason },
            Event::OutcomeUnknown => EventKind::OutcomeUnknown,
            Event::CaptureRequested { amount_minor } => {
                EventKind::CaptureRequested { amount_minor }
            }
            Event::Captured { fee_minor } => EventKind::Captured { fee_minor },
            Event::CaptureFailed { reason } => EventKind::CaptureFailed { reason },
            Event::VoidRequested => EventKind::VoidRequested,
            Event::Voided => EventKind::Voided,
            Event::VoidFailed { reason } => EventKind::VoidFailed { reason },
            Event::RefundRequested {
                refund_id,
                amount_minor,
            } => EventKind::RefundRequested {
                refund_id,
                amount_minor,
            },
            Event::Refunded { refund_id } => EventKind::Refunded { refund_id },
            Event::RefundFailed { refund_id, reason } => {
                EventKind::RefundFailed { refund_id, reason }
            }
            Event::Expired => EventKind::Expired,
            Event::Rerouted { psp } => EventKind::Rerouted { psp },
            Event::Escalated => EventKind::Escalated,
        };
        EventRow { at_ms, event }
    }

    pub fn into_recorded(self, seq: u64) -> Recorded {
        let event = match self.event {
            EventKind::Created => Event::Created,
            EventKind::AuthorizeRequested => Event::AuthorizeRequested,
            EventKind::Authorized { psp_reference } => Event::Authorized { psp_reference },
            EventKind::AuthorizeDeclined { code, message } => {
                Event::AuthorizeDeclined { code, message }
            }
            EventKind::AuthorizeFailed { reason } => Event::AuthorizeFailed { reason },
            EventKind::OutcomeUnknown => Event::OutcomeUnknown,
            EventKind::CaptureRequested { amount_minor } => {
                Event::CaptureRequested { amount_minor }
            }
            EventKind::Captured { fee_minor } => Event::Captured { fee_minor },
            EventKind::CaptureFailed { reason } => Event::CaptureFailed { reason },
            EventKind::VoidRequested => Event::VoidRequested,
            EventKind::Voided => Event::Voided,
            EventKind::VoidFailed { reason } => Event::VoidFailed { reason },
            EventKind::RefundRequested {
                refund_id,
                amount_minor,
            } => Event::RefundRequested {
                refund_id,
                amount_minor,
            },
            EventKind::Refunded { refund_id } => Event::Refunded { refund_id },
            EventKind::RefundFailed { refund_id, reason } => {
                Event::RefundFailed { refund_id, reason }
            }
            EventKind::Expired => Event::Expired,
            EventKind::Rerouted { psp } => Event::Rerouted { psp },
            EventKind::Escalated => Event::Escalated,
        };
        Recorded {
            seq,
            at_ms: self.at_ms,
            event,
        }
    }
}

use rialto_engine::Recorded;

#[derive(Serialize, Deserialize)]
pub struct EntryRow {
    payment_id: String,
    at_ms: i64,
    postings: Vec<(String, i64, String)>,
}

impl EntryRow {
    pub fn new(entry: &JournalEntry, at_ms: i64) -> EntryRow {
        EntryRow {
            payment_id: entry.payment_id.clone(),
            at_ms,
            postings: entry
                .postings
                .iter()
                .map(|p| {
                    (
                        p.account.to_string(),
                        p.amount_minor,
                        p.currency.code().to_string(),
                    )
                })
                .collect(),
        }
    }

    pub fn into_entry(self, id: String) -> Result<JournalEntry, StoreError> {
        let postings = self
            .postings
            .into_iter()
            .map(|(account, amount, code)| {
                let account =
                    Account::parse(&account).ok_or_else(|| corrupt("account", &account))?;
                Ok(Posting::new(account, amount, currency(&code)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Assert on the way out too: a stored entry that no longer balances is corruption.
        JournalEntry::new(id, self.payment_id, postings)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

#[derive(Serialize, Deserialize)]
pub struct MerchantRow {
    id: String,
    name: String,
    api_key_sha256: String,
    fee_bps: u32,
    created_at_ms: i64,
    rate_per_min: u32,
    burst: u32,
}

impl From<&Merchant> for MerchantRow {
    fn from(m: &Merchant) -> MerchantRow {
        MerchantRow {
            id: m.id.clone(),
            name: m.name.clone(),
            api_key_sha256: m.api_key_sha256.clone(),
            fee_bps: m.fee_bps,
            created_at_ms: m.created_at_ms,
            rate_per_min: m.rate_per_min,
            burst: m.burst,
        }
    }
}

impl From<MerchantRow> for Merchant {
    fn from(m: MerchantRow) -> Merchant {
        Merchant {
            id: m.id,
            name: m.name,
            api_key_sha256: m.api_key_sha256,
            fee_bps: m.fee_bps,
            created_at_ms: m.created_at_ms,
            rate_per_min: m.rate_per_min,
            burst: m.burst,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct IdempotencyRow {
    fingerprint: String,
    resource_id: String,
    /// Always `None` in what Rialto writes now (the response has a table of its own, see
    /// `redb_store`); kept so rows written by earlier versions, which held it here, still read.
    response: Option<(u16, Vec<u8>)>,
    created_at_ms: i64,
}

impl IdempotencyRow {
    /// The claim on a key: everything but the response, which is stored apart.
    pub fn claim(r: &IdempotencyRecord) -> IdempotencyRow {
        IdempotencyRow {
            fingerprint: hex::encode(r.fingerprint),
            resource_id: r.resource_id.clone(),
            response: None,
            created_at_ms: r.created_at_ms,
        }
    }
}

impl TryFrom<IdempotencyRow> for IdempotencyRecord {
    type Error = StoreError;

    fn try_from(r: IdempotencyRow) -> Result<IdempotencyRecord, StoreError> {
        let mut fingerprint = [0u8; 32];
        hex::decode_to_slice(&r.fingerprint, &mut fingerprint)
            .map_err(|_| corrupt("fingerprint", &r.fingerprint))?;
        Ok(IdempotencyRecord {
            fingerprint,
            resource_id: r.resource_id,
            response: r
                .response
                .map(|(status, body)| StoredResponse { status, body }),
            created_at_ms: r.created_at_ms,
        })
    }
}

/// Rows are stored in postcard, a compact binary serde format: a payment row takes about a
/// third of its JSON size, so more rows share a page and each batch dirties fewer pages.
/// Variants and fields are positional, so a row type's fields may only be appended to.
pub fn encode<T: Serialize>(row: &T) -> Vec<u8> {
    postcard::to_stdvec(row).expect("rows always serialize")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim's fingerprint is stored as 64 lowercase hex digits, as every earlier version
    /// wrote it, and reads back byte for byte; anything else is reported as corrupt.
    #[test]
    fn a_claims_fingerprint_keeps_its_stored_form() {
        let fingerprint: [u8; 32] = std::array::from_fn(|i| (i * 9) as u8 ^ 0xa5);
        let record = IdempotencyRecord {
            fingerprint,
            resource_id: "pay_1".into(),
            response: None,
            created_at_ms: 7,
        };
        let row = IdempotencyRow::claim(&record);
        let written: String = fingerprint.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(row.fingerprint, written);
        let read = IdempotencyRecord::try_from(row).unwrap();
        assert_eq!(read.fingerprint, fingerprint);

        for bad in ["", "zz", &written[..62], &format!("{written}00")] {
            let row = IdempotencyRow {
                fingerprint: bad.to_string(),
                resource_id: "pay_1".into(),
                response: None,
                created_at_ms: 7,
            };
            assert!(matches!(
                IdempotencyRecord::try_from(row),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
