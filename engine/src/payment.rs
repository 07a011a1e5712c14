//! The payment state machine. A payment changes only by applying an [`Event`] with the pure
//! [`apply`], which either rejects the event with a named [`Rejection`] or returns the next
//! state, the balanced ledger entry the event posts (if any) and the [`Effect`]s the caller
//! must carry out next (a PSP call or a status query). Actors execute effects; they never
//! decide transitions themselves.
//!
//! ```text
//! created ─► authorizing ─► authorized ─► capturing ─► captured ─► partially_refunded ─► refunded
//!                │   ▲           │  │           │
//!                │   └ unknown ◄─┘  └► canceled └► (capture failed: back to authorized)
//!                └► declined | failed            authorized ─► expired
//! ```
//!
//! `unknown` means a PSP call timed out: the payment keeps its pending operation and is only
//! ever settled by asking the PSP for that operation's status, never by sending it again.

use crate::ledger::{Account, JournalEntry, Posting};
use crate::limits::{FEE_BPS_MAX, REFUNDS_PER_PAYMENT_MAX};
use crate::money::{Currency, Money, MoneyError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Created,
    Authorizing,
    Authorized,
    Capturing,
    Captured,
    PartiallyRefunded,
    Refunded,
    Declined,
    Failed,
    Canceled,
    Expired,
    Unknown,
}

impl Status {
    pub const ALL: [Status; 12] = [
        Status::Created,
        Status::Authorizing,
        Status::Authorized,
        Status::Capturing,
        Status::Captured,
        Status::PartiallyRefunded,
        Status::Refunded,
        Status::Declined,
        Status::Failed,
        Status::Canceled,
        Status::Expired,
        Status::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Authorizing => "authorizing",
            Status::Authorized => "authorized",
            Status::Capturing => "capturing",
            Status::Captured => "captured",
            Status::PartiallyRefunded => "partially_refunded",
            Status::Refunded => "refunded",
            Status::Declined => "declined",
            Status::Failed => "failed",
            Status::Canceled => "canceled",
            Status::Expired => "expired",
            Status::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No event can ever move a payment out of a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Refunded
                | Status::Declined
                | Status::Failed
                | Status::Canceled
                | Status::Expired
        )
    }

    /// Money moved: the payment was captured (whatever was refunded since).
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Status::Captured | Status::PartiallyRefunded | Status::Refunded
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMethod {
    /// Capture the full amount as soon as the authorization succeeds.
    Automatic,
    /// Wait for the merchant to capture (all or part) before the authorization expires.
    Manual,
}

impl CaptureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Automatic => "automatic",
            CaptureMethod::Manual => "manual",
        }
    }
}

/// An operation sent to a PSP. Each has a stable idempotency key derived from the payment,
/// so asking the PSP about it (or sending it again after the PSP said it never saw it) can
/// never charge twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PspOp {
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

impl PspOp {
    pub fn name(&self) -> &'static str {
        match self {
            PspOp::Authorize => "authorize",
            PspOp::Capture { .. } => "capture",
            PspOp::Void => "void",
            PspOp::Refund { .. } => "refund",
        }
    }

    /// The key the PSP deduplicates this operation by.
    pub fn idempotency_key(&self, payment_id: &str) -> String {
        match self {
            PspOp::Refund { refund_id, .. } => format!("{payment_id}:refund:{refund_id}"),
            other => format!("{payment_id}:{}", other.name()),
        }
    }
}

/// The PSP operation a payment is waiting on. `outcome_unknown` is set when the call timed
/// out or the process died while it was in flight: only a status query may settle it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub op: PspOp,
    pub outcome_unknown: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refund {
    pub id: String,
    pub amount_minor: i64,
    pub status: RefundStatus,
    pub created_at_ms: i64,
    pub failure: Option<String>,
}

/// Why a payment did not go through: a PSP decline code or a failure reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

/// What a merchant asked for, already validated at the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPayment {
    pub id: String,
    pub merchant_id: String,
    pub amount: Money,
    pub payment_method: String,
    pub capture_method: CaptureMethod,
    pub merchant_reference: Option<String>,
    pub description: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub psp: String,
    /// The merchant's fee, in basis points of each capture.
    pub fee_bps: u32,
    /// How long an authorization may wait for a manual capture.
    pub authorization_ttl_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub id: String,
    pub merchant_id: String,
    pub amount: Money,
    pub amount_captured_minor: i64,
    pub amount_refunded_minor: i64,
    pub fee_minor: i64,
    pub fee_bps: u32,
    pub status: Status,
    pub capture_method: CaptureMethod,
    pub payment_method: String,
    pub psp: String,
    pub psp_reference: Option<String>,
    pub merchant_reference: Option<String>,
    pub description: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub refunds: Vec<Refund>,
    pub pending: Option<Pending>,
    pub failure: Option<Failure>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub authorization_ttl_ms: i64,
    pub authorization_expires_at_ms: Option<i64>,
    /// The outcome stayed unknown past the resolver's patience: a human should look (R4.3).
    pub escalated: bool,
    /// Number of events applied; storage uses it for optimistic concurrency.
    pub version: u64,
}

/// Something that happened to a payment. Every state change is exactly one of these, and the
/// event log of a payment replays to its current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
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
    /// The pending operation's outcome is not known (timeout, crash); query, don't resend.
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
    /// The pending authorization moves to another PSP (failover). Only after the previous
    /// PSP soft-failed, i.e. said it did not act.
    Rerouted {
        psp: String,
    },
    /// The pending operation's outcome is still unknown after the resolver's patience.
    Escalated,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Created => "payment.created",
            Event::AuthorizeRequested => "payment.authorize_requested",
            Event::Authorized { .. } => "payment.authorized",
            Event::AuthorizeDeclined { .. } => "payment.declined",
            Event::AuthorizeFailed { .. } => "payment.failed",
            Event::OutcomeUnknown => "payment.outcome_unknown",
            Event::CaptureRequested { .. } => "payment.capture_requested",
            Event::Captured { .. } => "payment.captured",
            Event::CaptureFailed { .. } => "payment.capture_failed",
            Event::VoidRequested => "payment.cancel_requested",
            Event::Voided => "payment.canceled",
            Event::VoidFailed { .. } => "payment.cancel_failed",
            Event::RefundRequested { .. } => "refund.requested",
            Event::Refunded { .. } => "refund.succeeded",
            Event::RefundFailed { .. } => "refund.failed",
            Event::Expired => "payment.expired",
            Event::Rerouted { .. } => "payment.rerouted",
            Event::Escalated => "payment.escalated",
        }
    }
}

/// An event as stored: its position in the payment's log and when it was committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub seq: u64,
    pub at_ms: i64,
    pub event: Event,
}

/// What the caller of [`apply`] must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this operation to the payment's PSP.
    Call(PspOp),
    /// Ask the PSP what became of this operation.
    Query(PspOp),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub payment: Payment,
    /// The balanced ledger entry this event posts, committed atomically with the state.
    pub entry: Option<JournalEntry>,
    pub effects: Vec<Effect>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("a {status} payment cannot take `{event}`")]
    IllegalTransition {
        status: &'static str,
        event: &'static str,
    },
    #[error("another operation is already in progress on this payment")]
    OperationInProgress,
    #[error("no operation is pending, so there is no outcome to record")]
    NothingPending,
    #[error("capture amount {requested} must be between 1 and the authorized {authorized}")]
    CaptureAmountInvalid { requested: i64, authorized: i64 },
    #[error("refund amount {requested} exceeds the refundable {refundable}")]
    RefundExceedsCaptured { requested: i64, refundable: i64 },
    #[error("refund amount must be positive, got {0}")]
    RefundAmountInvalid(i64),
    #[error("a payment may have at most {REFUNDS_PER_PAYMENT_MAX} refunds")]
    TooManyRefunds,
    #[error("the authorization has not expired yet")]
    NotExpired,
    #[error("fee {0} bps is outside 0..={FEE_BPS_MAX}")]
    FeeInvalid(u32),
    #[error("fee {fee} does not fit the captured {captured}")]
    FeeInvalidForCapture { fee: i64, captured: i64 },
    #[error("money arithmetic failed: {0}")]
    Money(#[from] MoneyError),
    #[error("ledger entry refused: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
}

impl Payment {
    /// A new payment, waiting to be authorized. Its first events are `Created` and
    /// `AuthorizeRequested`, committed together.
    pub fn create(new: NewPayment, now_ms: i64) -> Result<(Payment, [Event; 2]), Rejection> {
        if new.fee_bps > FEE_BPS_MAX {
            return Err(Rejection::FeeInvalid(new.fee_bps));
        }
        let amount = Money::chargeable(new.amount.amount_minor, new.amount.currency)?;
        let payment = Payment {
            id: new.id,
            merchant_id: new.merchant_id,
            amount,
            amount_captured_minor: 0,
            amount_refunded_minor: 0,
            fee_minor: 0,
            fee_bps: new.fee_bps,
            status: Status::Created,
            capture_method: new.capture_method,
            payment_method: new.payment_method,
            psp: new.psp,
            psp_reference: None,
            merchant_reference: new.merchant_reference,
            description: new.description,
            metadata: new.metadata,
            refunds: Vec::new(),
            pending: None,
            failure: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            authorization_ttl_ms: new.authorization_ttl_ms,
            authorization_expires_at_ms: None,
            escalated: false,
            version: 1,
        };
        Ok((payment, [Event::Created, Event::AuthorizeRequested]))
    }

    pub fn currency(&self) -> Currency {
        self.amount.currency
    }

    /// Captured minus refunded minus refunds still in flight.
    pub fn refundable_minor(&self) -> i64 {
        let in_flight: i64 = self
            .refunds
            .iter()
            .filter(|r| r.status == RefundStatus::Pending)
            .map(|r| r.amount_minor)
            .sum();
        self.amount_captured_minor - self.amount_refunded_minor - in_flight
    }

    pub fn refund(&self, refund_id: &str) -> Option<&Refund> {
        self.refunds.iter().find(|r| r.id == refund_id)
    }

    /// The effects implied by the current state: a pending operation is called, or queried if
    /// its outcome is unknown.
    pub fn effects(&self) -> Vec<Effect> {
        match &self.pending {
            None => Vec::new(),
            Some(Pending {
                op,
                outcome_unknown: false,
            }) => vec![Effect::Call(op.clone())],
            Some(Pending {
                op,
                outcome_unknown: true,
            }) => vec![Effect::Query(op.clone())],
        }
    }

    /// The event automatic capture adds right after an authorization, if any. Never after a
    /// failed capture: that would retry it without bound.
    pub fn follow_up(&self) -> Option<Event> {
        (self.status == Status::Authorized
            && self.capture_method == CaptureMethod::Automatic
            && self.pending.is_none()
            && self.failure.is_none())
        .then_some(Event::CaptureRequested {
            amount_minor: self.amount.amount_minor,
        })
    }

    /// Whether the step from `self` to `next` may go unrecorded until the next commit. True
    /// only for an approved authorization that automatic capture follows: after a crash the
    /// stored `authorizing` payment is settled by asking the PSP about the authorization, which
    /// re-derives the capture request, and the capture itself is sent with the payment's one
    /// capture key, so a PSP that already captured answers with that capture instead of
    /// capturing again. Skipping this commit saves one durable write per payment.
    pub fn may_defer_commit(&self, next: &Payment) -> bool {
        matches!(
            &self.pending,
            Some(Pending {
                op: PspOp::Authorize,
                ..
            })
        ) && next.capture_method == CaptureMethod::Automatic
            && matches!(
                &next.pending,
                Some(Pending {
                    op: PspOp::Capture { .. },
                    outcome_unknown: false
                })
            )
    }

    fn status_after_refunds(&self) -> Status {
        if self.amount_refunded_minor == 0 {
            Status::Captured
        } else if self.amount_refunded_minor == self.amount_captured_minor {
            Status::Refunded
        } else {
            Status::PartiallyRefunded
        }
    }
}

/// Applies one event. Pure: the input is untouched, and the same inputs always give the same
/// answer.
pub fn apply(payment: &Payment, event: &Event, now_ms: i64) -> Result<Transition, Rejection> {
    let illegal = || Rejection::IllegalTransition {
        status: payment.status.as_str(),
        event: event.name(),
    };
    if payment.status.is_terminal() {
        return Err(illegal());
    }
    let mut next = payment.clone();
    let mut entry = None;
    let pending_op = payment.pending.as_ref().map(|p| &p.op);
    match event {
        Event::Created => return Err(illegal()),
        Event::AuthorizeRequested => {
            if payment.status != Status::Created {
                return Err(illegal());
            }
            next.status = Status::Authorizing;
            next.pending = Some(Pending {
                op: PspOp::Authorize,
                outcome_unknown: false,
            });
        }
        Event::Authorized { psp_reference } => {
            expect_pending(payment, |op| *op == PspOp::Authorize)?;
            next.status = Status::Authorized;
            next.pending = None;
            next.psp_reference = Some(psp_reference.clone());
            next.authorization_expires_at_ms =
                Some(now_ms.saturating_add(payment.authorization_ttl_ms));
        }
        Event::AuthorizeDeclined { code, message } => {
            expect_pending(payment, |op| *op == PspOp::Authorize)?;
            next.status = Status::Declined;
            next.pending = None;
            next.failure = Some(Failure {
                code: code.clone(),
                message: message.clone(),
            });
        }
        Event::AuthorizeFailed { reason } => {
            expect_pending(payment, |op| *op == PspOp::Authorize)?;
            next.status = Status::Failed;
            next.pending = None;
            next.failure = Some(Failure {
                code: "processing_error".into(),
                message: reason.clone(),
            });
        }
        Event::OutcomeUnknown => {
            let pending = payment.pending.as_ref().ok_or(Rejection::NothingPending)?;
            next.pending = Some(Pending {
                op: pending.op.clone(),
                outcome_unknown: true,
            });
            if pending.op == PspOp::Authorize {
                next.status = Status::Unknown;
            }
        }
        Event::CaptureRequested { amount_minor } => {
            if payment.status != Status::Authorized {
                return Err(illegal());
            }
            if payment.pending.is_some() {
                return Err(Rejection::OperationInProgress);
            }
            if *amount_minor <= 0 || *amount_minor > payment.amount.amount_minor {
                return Err(Rejection::CaptureAmountInvalid {
                    requested: *amount_minor,
                    authorized: payment.amount.amount_minor,
                });
            }
            next.status = Status::Capturing;
            next.failure = None;
            next.pending = Some(Pending {
                op: PspOp::Capture {
                    amount_minor: *amount_minor,
                },
                outcome_unknown: false,
            });
        }
        Event::Captured { fee_minor } => {
            let Some(PspOp::Capture { amount_minor }) = pending_op else {
                return Err(illegal());
            };
            let captured = *amount_minor;
            if *fee_minor < 0 || *fee_minor > captured {
                return Err(Rejection::FeeInvalidForCapture {
                    fee: *fee_minor,
                    captured,
                });
            }
            next.status = Status::Captured;
            next.pending = None;
            next.amount_captured_minor = captured;
            next.fee_minor = *fee_minor;
            entry = Some(capture_entry(payment, captured, *fee_minor)?);
        }
        Event::CaptureFailed { reason } => {
            expect_pending(payment, |op| matches!(op, PspOp::Capture { .. }))?;
            next.status = Status::Authorized;
            next.pending = None;
            next.failure = Some(Failure {
                code: "capture_failed".into(),
                message: reason.clone(),
            });
        }
        Event::VoidRequested => {
            if payment.status != Status::Authorized {
                return Err(illegal());
            }
            if payment.pending.is_some() {
                return Err(Rejection::OperationInProgress);
            }
            next.pending = Some(Pending {
                op: PspOp::Void,
                outcome_unknown: false,
            });
        }
        Event::Voided => {
            expect_pending(payment, |op| *op == PspOp::Void)?;
            next.status = Status::Canceled;
            next.pending = None;
        }
        Event::VoidFailed { reason } => {
            expect_pending(payment, |op| *op == PspOp::Void)?;
            next.pending = None;
            next.failure = Some(Failure {
                code: "cancel_failed".into(),
                message: reason.clone(),
            });
        }
        Event::RefundRequested {
            refund_id,
            amount_minor,
        } => {
            if !payment.status.is_settled() {
                return Err(illegal());
            }
            if payment.pending.is_some() {
                return Err(Rejection::OperationInProgress);
            }
            if *amount_minor <= 0 {
                return Err(Rejection::RefundAmountInvalid(*amount_minor));
            }
            if payment.refunds.len() >= REFUNDS_PER_PAYMENT_MAX {
                return Err(Rejection::TooManyRefunds);
            }
            let refundable = payment.refundable_minor();
            if *amount_minor > refundable {
                return Err(Rejection::RefundExceedsCaptured {
                    requested: *amount_minor,
                    refundable,
                });
            }
            next.refunds.push(Refund {
                id: refund_id.clone(),
                amount_minor: *amount_minor,
                status: RefundStatus::Pending,
                created_at_ms: now_ms,
                failure: None,
            });
            next.pending = Some(Pending {
                op: PspOp::Refund {
                    refund_id: refund_id.clone(),
                    amount_minor: *amount_minor,
                },
                outcome_unknown: false,
            });
        }
        Event::Refunded { refund_id } => {
            let amount_minor = pending_refund(payment, refund_id)?;
            next.pending = None;
            set_refund(&mut next, refund_id, RefundStatus::Succeeded, None);
            next.amount_refunded_minor = payment
                .amount_refunded_minor
                .checked_add(amount_minor)
                .ok_or(MoneyError::Overflow)?;
            assert!(next.amount_refunded_minor <= next.amount_captured_minor);
            next.status = next.status_after_refunds();
            entry = Some(refund_entry(payment, refund_id, amount_minor)?);
        }
        Event::RefundFailed { refund_id, reason } => {
            pending_refund(payment, refund_id)?;
            next.pending = None;
            set_refund(
                &mut next,
                refund_id,
                RefundStatus::Failed,
                Some(reason.clone()),
            );
        }
        Event::Rerouted { psp } => {
            match &payment.pending {
                Some(Pending {
                    op: PspOp::Authorize,
                    outcome_unknown: false,
                }) => {}
                Some(_) => return Err(Rejection::OperationInProgress),
                None => return Err(Rejection::NothingPending),
            }
            if *psp == payment.psp {
                return Err(illegal());
            }
            next.psp = psp.clone();
        }
        Event::Escalated => {
            if !payment.pending.as_ref().is_some_and(|p| p.outcome_unknown) || payment.escalated {
                return Err(illegal());
            }
            next.escalated = true;
        }
        Event::Expired => {
            if payment.status != Status::Authorized || payment.pending.is_some() {
                return Err(illegal());
            }
            let expires = payment.authorization_expires_at_ms.unwrap_or(i64::MAX);
            if now_ms < expires {
                return Err(Rejection::NotExpired);
            }
            next.status = Status::Expired;
        }
    }
    next.version = payment.version + 1;
    next.updated_at_ms = now_ms;
    let effects = next.effects();
    Ok(Transition {
        payment: next,
        entry,
        effects,
    })
}

fn expect_pending(payment: &Payment, is: impl Fn(&PspOp) -> bool) -> Result<(), Rejection> {
    match &payment.pending {
        Some(p) if is(&p.op) => Ok(()),
        Some(_) => Err(Rejection::OperationInProgress),
        None => Err(Rejection::NothingPending),
    }
}

fn pending_refund(payment: &Payment, refund_id: &str) -> Result<i64, Rejection> {
    match &payment.pending {
        Some(Pending {
            op:
                PspOp::Refund {
                    refund_id: id,
                    amount_minor,
                },
            ..
        }) if id == refund_id => Ok(*amount_minor),
        Some(_) => Err(Rejection::OperationInProgress),
        None => Err(Rejection::NothingPending),
    }
}

fn set_refund(
    payment: &mut Payment,
    refund_id: &str,
    status: RefundStatus,
    failure: Option<String>,
) {
    let refund = payment
        .refunds
        .iter_mut()
        .find(|r| r.id == refund_id)
        .expect("a pending refund is always in the payment's refund list");
    refund.status = status;
    refund.failure = failure;
}

/// Capture: the PSP owes us the captured amount; we owe the merchant that minus our fee.
fn capture_entry(payment: &Payment, captured: i64, fee: i64) -> Result<JournalEntry, Rejection> {
    let currency = payment.currency();
    let payable = Money::new(captured, currency).checked_sub(Money::new(fee, currency))?;
    let mut postings = vec![
        Posting::new(
            Account::PspClearing(payment.psp.clone()),
            captured,
            currency,
        ),
        Posting::new(
            Account::MerchantPayable(payment.merchant_id.clone()),
            payable.checked_neg()?.amount_minor,
            currency,
        ),
    ];
    if fee > 0 {
        postings.push(Posting::new(Account::FeeRevenue, -fee, currency));
    }
    Ok(JournalEntry::new(
        format!("{}:capture", payment.id),
        payment.id.clone(),
        postings,
    )?)
}

/// Refund: the merchant gives the amount back; the PSP returns it to the customer.
fn refund_entry(
    payment: &Payment,
    refund_id: &str,
    amount: i64,
) -> Result<JournalEntry, Rejection> {
    let currency = payment.currency();
    let postings = vec![
        Posting::new(
            Account::MerchantPayable(payment.merchant_id.clone()),
            amount,
            currency,
        ),
        Posting::new(
            Account::PspClearing(payment.psp.clone()),
            Money::new(amount, currency).checked_neg()?.amount_minor,
            currency,
        ),
    ];
    Ok(JournalEntry::new(
        format!("{}:refund:{refund_id}", payment.id),
        payment.id.clone(),
        postings,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn new_payment(capture_method: CaptureMethod) -> Payment {
        let (p, events) = Payment::create(
            NewPayment {
                id: "pay_1".into(),
                merchant_id: "mer_1".into(),
                amount: Money::new(10_000, Currency::Usd),
                payment_method: "pm_sim_approve".into(),
                capture_method,
                merchant_reference: None,
                description: None,
                metadata: vec![],
                psp: "sim_a".into(),
                fee_bps: 250,
                authorization_ttl_ms: 1_000,
            },
            0,
        )
        .unwrap();
        step(&p, &events[1])
    }

    fn step(p: &Payment, e: &Event) -> Payment {
        apply(p, e, 10).unwrap().payment
    }

    fn authorized(capture_method: CaptureMethod) -> Payment {
        step(
            &new_payment(capture_method),
            &Event::Authorized {
                psp_reference: "psp_1".into(),
            },
        )
    }

    #[test]
    fn automatic_capture_follows_authorization_and_posts_a_balanced_entry() {
        let p = authorized(CaptureMethod::Automatic);
        let follow = p.follow_up().expect("automatic capture asks to capture");
        let p = step(&p, &follow);
        assert_eq!(p.status, Status::Capturing);
        assert_eq!(
            p.effects(),
            vec![Effect::Call(PspOp::Capture {
                amount_minor: 10_000
            })]
        );
        let t = apply(&p, &Event::Captured { fee_minor: 250 }, 20).unwrap();
        assert_eq!(t.payment.status, Status::Captured);
        assert_eq!(t.payment.amount_captured_minor, 10_000);
        let entry = t.entry.expect("capture posts");
        assert_eq!(
            entry.postings.iter().map(|p| p.amount_minor).sum::<i64>(),
            0
        );
        assert!(t.effects.is_empty());
    }

    #[test]
    fn only_the_automatic_capture_request_may_skip_its_commit() {
        let authorizing = new_payment(CaptureMethod::Automatic);
        let authorized = step(
            &authorizing,
            &Event::Authorized {
                psp_reference: "r".into(),
            },
        );
        let capturing = step(&authorized, &authorized.follow_up().unwrap());
        assert!(authorizing.may_defer_commit(&capturing));
        let captured = step(&capturing, &Event::Captured { fee_minor: 0 });
        assert!(
            !capturing.may_defer_commit(&captured),
            "a capture result is always committed"
        );
        let manual = new_payment(CaptureMethod::Manual);
        let manual_authorized = step(
            &manual,
            &Event::Authorized {
                psp_reference: "r".into(),
            },
        );
        assert!(
            !manual.may_defer_commit(&manual_authorized),
            "the merchant's answer rests on it"
        );
        let declined = step(
            &authorizing,
            &Event::AuthorizeDeclined {
                code: "x".into(),
                message: "y".into(),
            },
        );
        assert!(!authorizing.may_defer_commit(&declined));
    }

    #[test]
    fn automatic_capture_does_not_follow_a_failed_capture() {
        let p = authorized(CaptureMethod::Automatic);
        let p = step(&p, &p.follow_up().unwrap());
        let failed = step(
            &p,
            &Event::CaptureFailed {
                reason: "psp".into(),
            },
        );
        assert_eq!(failed.status, Status::Authorized);
        assert_eq!(failed.follow_up(), None);
    }

    #[test]
    fn manual_capture_waits_and_may_be_partial() {
        let p = authorized(CaptureMethod::Manual);
        assert_eq!(p.follow_up(), None);
        assert_eq!(p.authorization_expires_at_ms, Some(1_010));
        let over = apply(
            &p,
            &Event::CaptureRequested {
                amount_minor: 10_001,
            },
            20,
        );
        assert!(matches!(over, Err(Rejection::CaptureAmountInvalid { .. })));
        let p = step(
            &p,
            &Event::CaptureRequested {
                amount_minor: 4_000,
            },
        );
        let p = step(&p, &Event::Captured { fee_minor: 100 });
        assert_eq!(
            (p.status, p.amount_captured_minor),
            (Status::Captured, 4_000)
        );
        let again = apply(&p, &Event::CaptureRequested { amount_minor: 1 }, 30);
        assert!(matches!(again, Err(Rejection::IllegalTransition { .. })));
    }

    #[test]
    fn refunds_never_exceed_what_was_captured() {
        let p = authorized(CaptureMethod::Automatic);
        let p = step(&p, &p.follow_up().unwrap());
        let p = step(&p, &Event::Captured { fee_minor: 0 });
        let refund = |id: &str, amount| Event::RefundRequested {
            refund_id: id.into(),
            amount_minor: amount,
        };
        let p = step(&p, &refund("re_1", 6_000));
        // A second refund while the first is in flight is refused, whatever its size.
        assert_eq!(
            apply(&p, &refund("re_2", 1), 20),
            Err(Rejection::OperationInProgress)
        );
        let p = step(
            &p,
            &Event::Refunded {
                refund_id: "re_1".into(),
            },
        );
        assert_eq!(p.status, Status::PartiallyRefunded);
        assert_eq!(
            apply(&p, &refund("re_2", 4_001), 20),
            Err(Rejection::RefundExceedsCaptured {
                requested: 4_001,
                refundable: 4_000
            })
        );
        let p = step(&p, &refund("re_2", 4_000));
        let p = step(
            &p,
            &Event::Refunded {
                refund_id: "re_2".into(),
            },
        );
        assert_eq!(
            (p.status, p.amount_refunded_minor),
            (Status::Refunded, 10_000)
        );
        assert!(p.status.is_terminal());
    }

    #[test]
    fn timeout_leaves_payment_unknown_and_only_a_query_follows() {
        let p = new_payment(CaptureMethod::Automatic);
        let t = apply(&p, &Event::OutcomeUnknown, 20).unwrap();
        assert_eq!(t.payment.status, Status::Unknown);
        assert_eq!(t.effects, vec![Effect::Query(PspOp::Authorize)]);
        let settled = step(
            &t.payment,
            &Event::Authorized {
                psp_reference: "r".into(),
            },
        );
        assert_eq!(settled.status, Status::Authorized);
    }

    #[test]
    fn illegal_transitions_are_named() {
        let check = |p: &Payment, e: Event| {
            assert!(
                matches!(
                    apply(p, &e, 0),
                    Err(Rejection::IllegalTransition { .. })
                        | Err(Rejection::NothingPending)
                        | Err(Rejection::OperationInProgress)
                ),
                "{:?} on {:?}",
                e,
                p.status
            )
        };
        let authorizing = new_payment(CaptureMethod::Manual);
        check(&authorizing, Event::Created);
        check(&authorizing, Event::Captured { fee_minor: 0 });
        check(&authorizing, Event::VoidRequested);
        check(&authorizing, Event::Voided);
        let declined = step(
            &authorizing,
            &Event::AuthorizeDeclined {
                code: "do_not_honor".into(),
                message: "no".into(),
            },
        );
        check(&declined, Event::AuthorizeRequested);
        check(
            &declined,
            Event::Authorized {
                psp_reference: "x".into(),
            },
        );
    }

    #[test]
    fn authorization_expires_only_after_its_ttl() {
        let p = authorized(CaptureMethod::Manual);
        assert_eq!(
            apply(&p, &Event::Expired, 1_009),
            Err(Rejection::NotExpired)
        );
        let t = apply(&p, &Event::Expired, 1_010).unwrap();
        assert_eq!(t.payment.status, Status::Expired);
    }

    #[test]
    fn only_a_known_failed_authorization_may_move_to_another_psp() {
        let p = new_payment(CaptureMethod::Automatic);
        let moved = step(
            &p,
            &Event::Rerouted {
                psp: "sim_b".into(),
            },
        );
        assert_eq!(
            (moved.psp.as_str(), moved.status),
            ("sim_b", Status::Authorizing)
        );
        assert!(matches!(
            apply(
                &p,
                &Event::Rerouted {
                    psp: "sim_a".into()
                },
                0
            ),
            Err(Rejection::IllegalTransition { .. })
        ));
        let unknown = step(&p, &Event::OutcomeUnknown);
        assert_eq!(
            apply(
                &unknown,
                &Event::Rerouted {
                    psp: "sim_b".into()
                },
                0
            ),
            Err(Rejection::OperationInProgress),
            "an authorization in doubt never moves: the first PSP may have acted"
        );
        let escalated = step(&unknown, &Event::Escalated);
        assert!(escalated.escalated);
        assert!(apply(&escalated, &Event::Escalated, 0).is_err(), "once");
        assert!(
            apply(&p, &Event::Escalated, 0).is_err(),
            "only an unknown outcome escalates"
        );
    }

    #[test]
    fn cancel_voids_an_authorization() {
        let p = authorized(CaptureMethod::Manual);
        let p = step(&p, &Event::VoidRequested);
        assert_eq!(p.effects(), vec![Effect::Call(PspOp::Void)]);
        let p = step(&p, &Event::Voided);
        assert_eq!(p.status, Status::Canceled);
    }
}
