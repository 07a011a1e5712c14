//! The PSP port: what Rialto needs from a payment service provider, with capabilities as
//! data. The in-process simulator (`rialto-sim`) and, later, the HTTP adapter implement it;
//! a PSP supervisor owns one adapter and is the only caller of it.

use async_trait::async_trait;
use rialto_engine::{Currency, Money};

/// What a PSP can do, as data rather than marker traits or "not implemented" stubs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub partial_capture: bool,
    pub partial_refund: bool,
    pub void: bool,
    pub currencies: Vec<Currency>,
}

impl Capabilities {
    /// Every operation, partial ones included, in every currency Rialto knows.
    pub fn full() -> Capabilities {
        Capabilities {
            partial_capture: true,
            partial_refund: true,
            void: true,
            currencies: Currency::ALL.to_vec(),
        }
    }
}

/// One call to a PSP. The idempotency key is stable per payment operation, so the PSP can
/// deduplicate a resend and answer a status query about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PspRequest {
    pub idempotency_key: String,
    pub payment_id: String,
    pub amount: Money,
    pub payment_method: String,
    pub psp_reference: Option<String>,
}

/// A PSP's answer to an operation, classified (R4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PspOutcome {
    Approved {
        psp_reference: String,
    },
    /// Final: never retried.
    HardDecline {
        code: String,
        message: String,
    },
    /// Retryable in principle (the resilience layer decides); the operation did not happen.
    SoftFailure {
        reason: String,
    },
    /// No answer in time, or the adapter crashed mid-call: the PSP may or may not have acted.
    Unknown {
        reason: String,
    },
}

/// What a PSP knows about an operation, by its idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationStatus {
    /// The PSP never received it: it is safe to send it (with the same key).
    NotFound,
    /// Received, no final result yet.
    Pending,
    Succeeded {
        psp_reference: String,
    },
    Declined {
        code: String,
        message: String,
    },
}

#[async_trait]
pub trait PspAdapter: Send + Sync + 'static {
    fn id(&self) -> &str;
    fn capabilities(&self) -> Capabilities;
    async fn authorize(&self, req: &PspRequest) -> PspOutcome;
    async fn capture(&self, req: &PspRequest) -> PspOutcome;
    async fn void(&self, req: &PspRequest) -> PspOutcome;
    async fn refund(&self, req: &PspRequest) -> PspOutcome;
    async fn status(&self, req: &PspRequest) -> OperationStatus;
}
