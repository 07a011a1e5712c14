//! Rialto's actor tree: it turns the engine's decisions into effects.
//!
//! ```text
//! RootSupervisor
//! ├── PspSupervisor (one per PSP: adapter, concurrency limit; breaker and bulkhead later)
//! └── TxnSupervisor
//!     └── PaymentActor (one per payment operation in progress)
//! ```
//!
//! [`Rialto`] is the handle the API and the binary use: it starts the tree, submits merchant
//! commands as jobs, resumes in-flight payments from the store at start-up and on a timer,
//! and expires stale authorizations. It talks to the store through the `Store` port and to
//! PSPs only through their supervisors.

pub mod payment_actor;
pub mod psp;
pub mod psp_http;
pub mod psp_supervisor;
pub mod root;
pub mod txn_supervisor;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use ractor::{Actor, ActorRef};
use tokio::sync::oneshot;

use rialto_engine::routing::{Candidate, choose};
use rialto_engine::{CaptureMethod, Clock, Event, Money, NewPayment, Payment, Rejection};
use rialto_persistence::{Store, StoreError, StoredResponse};

use crate::payment_actor::{Command, Job};
use crate::psp::PspAdapter;
use crate::psp_supervisor::PspMsg;
use crate::root::{RootArgs, RootSupervisor};
use crate::txn_supervisor::TxnMsg;

/// Engine settings. Every number here is a bound or a timeout; `validate` checks their
/// relations at start-up.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// One PSP call, queueing for a permit included (R2.4: 20 s).
    pub psp_call_timeout: Duration,
    /// First wait before asking a PSP about an unknown outcome; doubles per attempt.
    pub status_query_backoff: Duration,
    /// Status queries an actor makes before leaving the payment to the sweeper.
    pub status_query_attempts_max: u32,
    /// Concurrent calls per PSP.
    pub psp_inflight_max: usize,
    /// Payment actors alive at once; more requests are refused with `Overloaded`.
    pub transactions_max: usize,
    /// Times a crashing payment is resumed before it is left to the next sweep.
    pub payment_restarts_max: u32,
    /// Restarts of supervisors under the root before the engine stops itself.
    pub supervisor_restarts_max: u32,
    /// How often in-flight payments without an actor are resumed and authorizations expired.
    pub sweep_interval: Duration,
    /// How long a manual-capture authorization lasts.
    pub authorization_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            psp_call_timeout: Duration::from_secs(20),
            status_query_backoff: Duration::from_secs(1),
            status_query_attempts_max: 6,
            psp_inflight_max: 1_024,
            transactions_max: 50_000,
            payment_restarts_max: 3,
            supervisor_restarts_max: 100,
            sweep_interval: Duration::from_secs(30),
            authorization_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("psp_call_timeout", self.psp_call_timeout),
            ("status_query_backoff", self.status_query_backoff),
            ("sweep_interval", self.sweep_interval),
            ("authorization_ttl", self.authorization_ttl),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be positive"));
        }
        if self.psp_inflight_max == 0 || self.transactions_max == 0 {
            return Err("psp_inflight_max and transactions_max must be positive".into());
        }
        if self.status_query_attempts_max > 30 {
            return Err("status_query_attempts_max must be at most 30".into());
        }
        Ok(())
    }
}

/// A PSP as routing sees it.
#[derive(Clone, Debug)]
pub struct PspRoute {
    pub id: String,
    pub priority: u32,
    pub weight: u32,
}

/// A merchant's request for a new payment, validated by the API.
#[derive(Clone, Debug)]
pub struct CreatePayment {
    pub merchant_id: String,
    pub fee_bps: u32,
    pub amount: Money,
    pub payment_method: String,
    pub capture_method: CaptureMethod,
    pub merchant_reference: Option<String>,
    pub description: Option<String>,
    pub metadata: Vec<(String, String)>,
}

/// Renders the response a request's idempotency record replays. Supplied by the API (the
/// only crate that knows HTTP), called by the payment actor when the payment rests, so the
/// stored response is committed atomically with the state it describes.
pub type Renderer = Arc<dyn Fn(&Payment) -> StoredResponse + Send + Sync>;

#[derive(Clone)]
pub struct IdempotencySpec {
    pub merchant_id: String,
    pub key: String,
    pub fingerprint: [u8; 32],
    pub render: Renderer,
    /// Set once the key is claimed in the store by this request's first commit.
    pub claimed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no such payment")]
    NotFound,
    #[error("another operation on this payment is in progress")]
    Busy,
    #[error("the engine is at its limit of concurrent transactions")]
    Overloaded,
    #[error("{0}")]
    Rejected(Rejection),
    #[error("no payment service provider is available")]
    NoPspAvailable,
    #[error("the idempotency key is in use by another request")]
    IdempotencyKeyInUse,
    #[error("storage: {0}")]
    Store(StoreError),
    #[error("processing was interrupted; the payment is being recovered")]
    Interrupted,
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Where a payment actor consults the fault injector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// A transition was committed durably.
    Committed,
    /// A PSP answered the pending operation, and nothing of the answer is stored yet.
    PspAnswered,
}

/// Test-only fault injection: lets a test crash a payment actor at a chosen point.
pub trait FaultInjector: Send + Sync + 'static {
    /// Returning true panics the payment actor right there.
    fn panic_at(&self, payment: &Payment, point: FaultPoint) -> bool;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// What every actor shares.
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: EngineConfig,
    pub routes: Vec<PspRoute>,
    pub faults: Option<Arc<dyn FaultInjector>>,
    /// Live PSP supervisors by PSP id, replaced when one is restarted.
    pub psps: DashMap<String, ActorRef<PspMsg>>,
    /// A std lock: held only to clone or swap the address, never across an await.
    transactions: RwLock<Option<ActorRef<TxnMsg>>>,
}

impl Deps {
    pub fn psp(&self, id: &str) -> Option<ActorRef<PspMsg>> {
        self.psps.get(id).map(|r| r.clone())
    }

    fn set_transactions(&self, actor: ActorRef<TxnMsg>) {
        *self.transactions.write().unwrap_or_else(|e| e.into_inner()) = Some(actor);
    }

    fn transactions(&self) -> Option<ActorRef<TxnMsg>> {
        self.transactions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn submit(&self, job: Job) {
        match self.transactions() {
            Some(txn) => {
                // The job comes back inside the error; refuse it rather than drop it.
                if let Err(ractor::MessagingErr::SendErr(TxnMsg::Start(job))) =
                    txn.send_message(TxnMsg::Start(job))
                {
                    job.refuse(CommandError::ShuttingDown);
                }
            }
            None => job.refuse(CommandError::ShuttingDown),
        }
    }

    /// Builds a payment and picks its PSP.
    fn new_payment(
        &self,
        id: &str,
        create: CreatePayment,
        now_ms: i64,
    ) -> Result<(Payment, [Event; 2]), CommandError> {
        let candidates: Vec<Candidate> = self
            .routes
            .iter()
            .map(|r| Candidate {
                psp: r.id.clone(),
                priority: r.priority,
                weight: r.weight,
                available: self.psps.contains_key(&r.id),
            })
            .collect();
        let psp = choose(&candidates, spread(id))
            .ok_or(CommandError::NoPspAvailable)?
            .to_string();
        let ttl = i64::try_from(self.config.authorization_ttl.as_millis()).unwrap_or(i64::MAX);
        Ok(Payment::create(
            NewPayment {
                id: id.to_string(),
                merchant_id: create.merchant_id,
                amount: create.amount,
                payment_method: create.payment_method,
                capture_method: create.capture_method,
                merchant_reference: create.merchant_reference,
                description: create.description,
                metadata: create.metadata,
                psp,
                fee_bps: create.fee_bps,
                authorization_ttl_ms: ttl,
            },
            now_ms,
        )?)
    }

    /// Submits a resume job for every payment the store has in flight; busy ones are
    /// skipped by the transaction supervisor.
    pub async fn resume_in_flight(&self) -> usize {
        match self.store.in_flight().await {
            Ok(ids) => {
                let n = ids.len();
                for id in ids {
                    self.submit(Job::internal(id, Command::Resume));
                }
                n
            }
            Err(e) => {
                tracing::error!(error = %e, "could not list in-flight payments");
                0
            }
        }
    }

    async fn expire_authorizations(&self) {
        match self.store.authorized_before(self.clock.now_ms()).await {
            Ok(ids) => ids
                .into_iter()
                .for_each(|id| self.submit(Job::internal(id, Command::Expire))),
            Err(e) => tracing::error!(error = %e, "could not list expired authorizations"),
        }
    }
}

/// FNV-1a of the payment id: spreads payments over equal-priority PSPs deterministically.
fn spread(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The running engine.
pub struct Rialto {
    deps: Arc<Deps>,
    root: ActorRef<root::RootMsg>,
    sweeper: tokio::task::JoinHandle<()>,
}

pub struct RialtoBuilder {
    pub store: Arc<dyn Store>,
    pub adapters: Vec<Arc<dyn PspAdapter>>,
    pub routes: Vec<PspRoute>,
    pub config: EngineConfig,
    pub clock: Arc<dyn Clock>,
    pub faults: Option<Arc<dyn FaultInjector>>,
}

impl RialtoBuilder {
    pub fn new(store: Arc<dyn Store>, adapters: Vec<Arc<dyn PspAdapter>>) -> RialtoBuilder {
        let routes = adapters
            .iter()
            .map(|a| PspRoute {
                id: a.id().to_string(),
                priority: 1,
                weight: 1,
            })
            .collect();
        RialtoBuilder {
            store,
            adapters,
            routes,
            config: EngineConfig::default(),
            clock: Arc::new(SystemClock),
            faults: None,
        }
    }

    /// Starts the actor tree, then resumes every payment left in flight by a previous run.
    pub async fn start(self) -> Result<Rialto, String> {
        self.config.validate()?;
        for route in &self.routes {
            if !self.adapters.iter().any(|a| a.id() == route.id) {
                return Err(format!("route names unknown psp `{}`", route.id));
            }
        }
        let deps = Arc::new(Deps {
            store: self.store,
            clock: self.clock,
            config: self.config,
            routes: self.routes,
            faults: self.faults,
            psps: DashMap::new(),
            transactions: RwLock::new(None),
        });
        let args = RootArgs {
            deps: deps.clone(),
            adapters: self.adapters,
        };
        let (root, _) = Actor::spawn(None, RootSupervisor, args)
            .await
            .map_err(|e| format!("could not start the actor tree: {e}"))?;
        let resumed = deps.resume_in_flight().await;
        if resumed > 0 {
            tracing::info!(resumed, "resuming payments left in flight");
        }
        let sweeper = tokio::spawn(sweep(deps.clone()));
        Ok(Rialto {
            deps,
            root,
            sweeper,
        })
    }
}

async fn sweep(deps: Arc<Deps>) {
    let mut tick = tokio::time::interval(deps.config.sweep_interval);
    tick.tick().await; // The first tick is immediate; start-up already resumed.
    loop {
        tick.tick().await;
        deps.resume_in_flight().await;
        deps.expire_authorizations().await;
    }
}

/// A new, time-ordered id: the prefix and a UUIDv7 in lowercase hex.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

impl Rialto {
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.deps.store
    }

    pub fn psp_ids(&self) -> Vec<String> {
        self.deps.routes.iter().map(|r| r.id.clone()).collect()
    }

    /// PSPs whose supervisor is currently running.
    pub fn psps_up(&self) -> usize {
        self.deps.psps.len()
    }

    async fn run(
        &self,
        job: Job,
        done: oneshot::Receiver<Result<Payment, CommandError>>,
    ) -> Result<Payment, CommandError> {
        self.deps.submit(job);
        match done.await {
            Ok(result) => result,
            // The actor died with our reply port; the supervisor resumes the payment from the
            // store, and a retry with the same idempotency key reports its outcome.
            Err(_) => Err(CommandError::Interrupted),
        }
    }

    fn job(
        payment_id: String,
        merchant_id: &str,
        command: Command,
        idempotency: Option<IdempotencySpec>,
    ) -> (Job, oneshot::Receiver<Result<Payment, CommandError>>) {
        let (reply, done) = oneshot::channel();
        let job = Job {
            payment_id,
            merchant_id: Some(merchant_id.to_string()),
            command,
            idempotency,
            reply: Some(reply),
        };
        (job, done)
    }

    /// Creates a payment and drives it until it rests: captured (automatic capture),
    /// authorized (manual), declined, failed, or unknown (resolved in the background).
    pub async fn create_payment(
        &self,
        create: CreatePayment,
        idempotency: Option<IdempotencySpec>,
    ) -> Result<Payment, CommandError> {
        let merchant = create.merchant_id.clone();
        let (job, done) = Self::job(
            new_id("pay"),
            &merchant,
            Command::Create(create),
            idempotency,
        );
        self.run(job, done).await
    }

    pub async fn capture(
        &self,
        merchant_id: &str,
        payment_id: &str,
        amount_minor: Option<i64>,
        idempotency: Option<IdempotencySpec>,
    ) -> Result<Payment, CommandError> {
        let command = Command::Capture { amount_minor };
        let (job, done) = Self::job(payment_id.into(), merchant_id, command, idempotency);
        self.run(job, done).await
    }

    pub async fn cancel(
        &self,
        merchant_id: &str,
        payment_id: &str,
        idempotency: Option<IdempotencySpec>,
    ) -> Result<Payment, CommandError> {
        let (job, done) = Self::job(payment_id.into(), merchant_id, Command::Cancel, idempotency);
        self.run(job, done).await
    }

    /// Refunds part or all of a captured payment; `refund_id` names the new refund.
    pub async fn refund(
        &self,
        merchant_id: &str,
        payment_id: &str,
        refund_id: String,
        amount_minor: i64,
        idempotency: Option<IdempotencySpec>,
    ) -> Result<Payment, CommandError> {
        let command = Command::Refund {
            refund_id,
            amount_minor,
        };
        let (job, done) = Self::job(payment_id.into(), merchant_id, command, idempotency);
        self.run(job, done).await
    }

    /// Resumes in-flight payments now (also done at start-up and every sweep).
    pub async fn resume_in_flight(&self) -> usize {
        self.deps.resume_in_flight().await
    }

    /// Stops the actor tree. In-flight payments stay in the store and resume on next start.
    pub async fn shutdown(self) {
        self.sweeper.abort();
        self.root.stop(None);
        // Waiting is best effort: the store holds everything that matters.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.root.get_status() != ractor::ActorStatus::Stopped {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}
