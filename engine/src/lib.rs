//! Rialto's pure payment domain. Money, the payment state machine, the double-entry ledger
//! and PSP routing live here as plain data and pure functions: no async, no I/O, no storage
//! formats and no dependency on any other Rialto crate. `actors` executes what this crate
//! decides; `persistence` stores what it produces; `api` translates to and from it.

pub mod breaker;
pub mod ledger;
pub mod limits;
pub mod money;
pub mod payment;
pub mod policy;
pub mod redact;
pub mod routing;

pub use ledger::{Account, Audit, JournalEntry, LedgerError, Posting};
pub use money::{Currency, Money, MoneyError};
pub use payment::{
    CaptureMethod, Effect, Event, Failure, NewPayment, Payment, Pending, PspOp, Recorded, Refund,
    RefundStatus, Rejection, Status, Transition, apply,
};

/// The one source of time for domain decisions. Actors hold an implementation; tests use a
/// manual one so expiry and timeouts can be driven without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}
