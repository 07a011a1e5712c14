//! Rialto's storage port and its embedded backend. The rest of Rialto depends on the
//! [`Store`] trait only: one atomic [`Commit`] per payment state change (new state, its
//! events — the outbox —, its ledger entry and the idempotency record), plus the reads the API
//! and recovery need. [`redb_store::RedbStore`] implements it on one local file with group
//! commit; a Scylla backend will implement the same trait.

pub mod redb_store;
mod rows;

use async_trait::async_trait;
use rialto_engine::{Currency, Event, JournalEntry, Payment, Recorded};

pub use redb_store::{RedbStore, StoreOptions};

/// Everything one payment state change writes, atomically and durably.
#[derive(Clone, Debug)]
pub struct Commit {
    /// The new state. Its `version` must be exactly one more than the stored one per event
    /// below (or the payment must be new).
    pub payment: Payment,
    /// Appended to the payment's log and to the global outbox, in order.
    pub events: Vec<Event>,
    /// Posted to the ledger; an entry id can be posted only once.
    pub entry: Option<JournalEntry>,
    pub idempotency: Option<IdempotencyWrite>,
    pub at_ms: i64,
    /// The committing payment's span; the ledger posting is traced as its child.
    pub span: tracing::Span,
}

/// The idempotency record of a merchant request, written with the state change it caused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyWrite {
    pub merchant_id: String,
    pub key: String,
    pub record: IdempotencyRecord,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// SHA-256 of the canonical request (method, path, body).
    pub fingerprint: [u8; 32],
    pub resource_id: String,
    /// `None` while the request is in progress, then the response to replay.
    pub response: Option<StoredResponse>,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merchant {
    pub id: String,
    pub name: String,
    /// SHA-256 of the API key, hex. The key itself is never stored.
    pub api_key_sha256: String,
    pub fee_bps: u32,
    pub created_at_ms: i64,
    /// Requests per minute sustained, and the burst, of this merchant's token bucket (R2.5);
    /// 0 means unlimited (the load generator's own merchant).
    pub rate_per_min: u32,
    pub burst: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    pub account: String,
    pub currency: Currency,
    /// Debit positive, credit negative.
    pub balance_minor: i64,
}

/// The outcome of a full offline ledger audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerReport {
    pub payments: u64,
    pub entries: u64,
    pub postings: u64,
    /// Sum of all postings per currency (zero in a sound ledger).
    pub totals: Vec<(Currency, i128)>,
    pub problems: Vec<String>,
}

impl LedgerReport {
    pub fn balanced(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("payment {payment_id} is at version {found}, the commit expected {expected}")]
    VersionConflict {
        payment_id: String,
        expected: u64,
        found: u64,
    },
    #[error("idempotency key {key} is already in use")]
    IdempotencyKeyTaken { key: String },
    #[error("journal entry {0} was already posted")]
    EntryAlreadyPosted(String),
    #[error("ledger refused the entry: {0}")]
    Ledger(String),
    #[error("a merchant with this API key already exists")]
    DuplicateApiKey,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage failure: {0}")]
    Io(String),
    #[error("the store is shut down")]
    Closed,
}

/// One page of a merchant's payments, newest first.
#[derive(Clone, Debug)]
pub struct Page {
    pub payments: Vec<Payment>,
    pub has_more: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies one commit atomically; returns once it is durable.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;
    async fn create_merchant(&self, merchant: Merchant) -> Result<(), StoreError>;
    async fn merchant_by_key_hash(&self, sha256_hex: &str) -> Result<Option<Merchant>, StoreError>;
    async fn merchant_count(&self) -> Result<u64, StoreError>;
    async fn payment(&self, id: &str) -> Result<Option<Payment>, StoreError>;
    /// A merchant's payments, newest first, after `starting_after` (exclusive) if given.
    async fn payments(
        &self,
        merchant_id: &str,
        limit: u32,
        starting_after: Option<&str>,
    ) -> Result<Page, StoreError>;
    async fn events(&self, payment_id: &str) -> Result<Vec<Recorded>, StoreError>;
    /// Payments with a PSP operation in flight, the ones to resume after a restart: at most
    /// `limit`, in id order, after `after` (exclusive) if given.
    async fn in_flight(&self, after: Option<&str>, limit: usize)
    -> Result<Vec<String>, StoreError>;
    /// Authorized payments waiting for a manual capture whose authorization expired before
    /// `expires_at_ms`: at most `limit`, those that expired first.
    async fn authorized_before(
        &self,
        expires_at_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    async fn idempotency(
        &self,
        merchant_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Balances of every account whose name starts with `account_prefix`.
    async fn balances(&self, account_prefix: &str) -> Result<Vec<Balance>, StoreError>;
    /// Re-derives every ledger invariant from the stored entries and payments.
    async fn ledger_check(&self) -> Result<LedgerReport, StoreError>;
    /// Proves the store can still commit durably (used by readiness).
    async fn health(&self) -> Result<(), StoreError>;
}
