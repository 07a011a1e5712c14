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
pub mod trace_context;
pub mod txn_supervisor;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use ractor::{Actor, ActorRef};
use tokio::sync::oneshot;

use rialto_engine::breaker::BreakerConfig;
use rialto_engine::routing::{Candidate, Hints, choose};
use rialto_engine::{CaptureMethod, Clock, Event, Money, NewPayment, Payment, Rejection};
use rialto_persistence::{Store, StoreError, StoredResponse};

use crate::payment_actor::{Command, Job};
use crate::psp::PspAdapter;
use crate::psp_supervisor::{BreakerChange, HealthReport, PspHealth, PspLimits, PspMsg};
use crate::root::{RootArgs, RootSupervisor};
use crate::txn_supervisor::TxnMsg;

/// Engine settings. Every number here is a bound or a timeout; `validate` checks their
/// relations at start-up.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// One PSP call, queueing for a permit included (R2.4: 20 s).
    pub psp_call_timeout: Duration,
    /// How long a merchant request waits for its payment to rest (R2.4: 25 s); then it is
    /// answered "still processing" and the payment carries on.
    pub service_timeout: Duration,
    /// First wait before asking a PSP about an unknown outcome; doubles per attempt.
    pub status_query_backoff: Duration,
    /// Status queries an actor makes before leaving the payment to the sweeper.
    pub status_query_attempts_max: u32,
    /// Concurrent calls per PSP (the bulkhead), and calls allowed to wait for a slot.
    pub psp_inflight_max: usize,
    pub psp_queue_max: usize,
    /// The circuit breaker of every PSP (R2.1).
    pub breaker: BreakerConfig,
    /// Authorization attempts per payment, failovers included (R2.3); retries of the same PSP
    /// wait 2^n s + jitter, capped by `retry_backoff_max`.
    pub retry_attempts_max: u32,
    pub retry_backoff_max: Duration,
    /// An unknown outcome unresolved this long is escalated (R4.3: 5 min).
    pub escalate_after: Duration,
    /// Adapter panics within `crash_window` that mark a PSP down.
    pub crash_max: u32,
    pub crash_window: Duration,
    /// Routing's limits for a healthy PSP (R2.6).
    pub hints: Hints,
    /// How often storage health is probed (read-only mode, R2.7).
    pub health_interval: Duration,
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
            service_timeout: Duration::from_secs(25),
            status_query_backoff: Duration::from_secs(1),
            status_query_attempts_max: 3,
            psp_inflight_max: 1_024,
            psp_queue_max: 1_024,
            breaker: BreakerConfig::default(),
            retry_attempts_max: 3,
            retry_backoff_max: Duration::from_secs(8),
            escalate_after: Duration::from_secs(300),
            crash_max: 5,
            crash_window: Duration::from_secs(60),
            hints: Hints::default(),
            health_interval: Duration::from_secs(1),
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
        if self.status_query_attempts_max > 30
            || self.retry_attempts_max == 0
            || self.retry_attempts_max > 10
        {
            return Err("status_query_attempts_max ≤ 30 and retry_attempts_max 1..=10".into());
        }
        if self.service_timeout <= self.psp_call_timeout {
            return Err("service_timeout must exceed psp_call_timeout (timeouts nest)".into());
        }
        if self.crash_max == 0 || self.crash_window.is_zero() || self.health_interval.is_zero() {
            return Err("crash_max, crash_window and health_interval must be positive".into());
        }
        self.breaker.validate()
    }
}

/// A PSP as routing sees it, with its own bulkhead sizes when they differ from the engine's.
#[derive(Clone, Debug, Default)]
pub struct PspRoute {
    pub id: String,
    pub priority: u32,
    pub weight: u32,
    pub inflight_max: Option<usize>,
    pub queue_max: Option<usize>,
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
    /// The response committed for replay, handed to the request that is waiting for it so
    /// that it answers with the very bytes it would replay (rendered once, not twice).
    pub rendered: Arc<std::sync::Mutex<Option<StoredResponse>>>,
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
    #[error(
        "no payment service provider can take the payment now: each is at its limit of calls in progress, or out of service"
    )]
    NoPspAvailable,
    #[error("the idempotency key is in use by another request")]
    IdempotencyKeyInUse,
    #[error("storage: {0}")]
    Store(StoreError),
    #[error("processing was interrupted; the payment is being recovered")]
    Interrupted,
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("the payment is still being processed")]
    StillProcessing,
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
    /// Each PSP's breaker, bulkhead and health, owned by its supervisor.
    pub health: HashMap<String, Arc<PspHealth>>,
    pub store_healthy: AtomicBool,
    pub forced_read_only: AtomicBool,
    /// A std lock: held only to clone or swap the address, never across an await.
    transactions: RwLock<Option<ActorRef<TxnMsg>>>,
    /// Where the next resume sweep goes on: the last payment the previous one resumed.
    resume_after: Mutex<Option<String>>,
}

impl Deps {
    pub fn psp(&self, id: &str) -> Option<ActorRef<PspMsg>> {
        self.psps.get(id).map(|r| r.clone())
    }

    fn set_transactions(&self, actor: ActorRef<TxnMsg>) {
        *self.transactions.write().unwrap_or_else(|e| e.into_inner()) = Some(actor);
    }

    pub(crate) fn transactions(&self) -> Option<ActorRef<TxnMsg>> {
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
                    txn.send_message(TxnMsg::Start(Box::new(job)))
                {
                    job.refuse(CommandError::ShuttingDown);
                }
            }
            None => job.refuse(CommandError::ShuttingDown),
        }
    }

    /// The PSP for a payment, skipping `exclude` (a PSP that just failed it).
    pub fn route(&self, payment_id: &str, exclude: Option<&str>) -> Option<String> {
        let candidates: Vec<Candidate> = self
            .routes
            .iter()
            .map(|r| {
                let report = self.health[&r.id].report();
                // Hints speak only with enough data: one early failure must not steer all
                // traffic away (and starve the breaker of the calls it decides on).
                let enough_calls = report.calls_in_window >= self.config.breaker.min_calls;
                Candidate {
                    psp: r.id.clone(),
                    priority: r.priority,
                    weight: r.weight,
                    available: exclude != Some(r.id.as_str())
                        && self.psps.contains_key(&r.id)
                        && report.can_take,
                    error_rate_pct: if enough_calls {
                        report.error_rate_pct
                    } else {
                        0
                    },
                    latency_p95_ms: if report.latency_samples >= HINT_SAMPLES_MIN {
                        report.latency_p95_ms
                    } else {
                        0
                    },
                }
            })
            .collect();
        choose(&candidates, &self.config.hints, spread(payment_id)).map(str::to_string)
    }

    /// Why new payments are refused right now, if they are (R2.7).
    pub fn read_only_reason(&self) -> Option<&'static str> {
        if self.forced_read_only.load(Ordering::Relaxed) {
            Some("an operator put Rialto in read-only mode")
        } else if !self.store_healthy.load(Ordering::Relaxed) {
            Some("storage is unhealthy")
        } else if !self.health.values().any(|h| h.in_service()) {
            // Not when every bulkhead is full: that is load, answered 503 `no_psp_available`
            // per payment, and it passes as calls return.
            Some("no payment service provider can take payments")
        } else {
            None
        }
    }

    /// Builds a payment and picks its PSP.
    fn new_payment(
        &self,
        id: &str,
        create: CreatePayment,
        now_ms: i64,
    ) -> Result<(Payment, [Event; 2]), CommandError> {
        let psp = self.route(id, None).ok_or(CommandError::NoPspAvailable)?;
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

    /// Most jobs one sweep starts of each kind: half of what may run at once, so that a
    /// backlog (after an outage, or a crash with many payments in flight) leaves the other
    /// half to merchants, and what a sweep lists stays bounded.
    fn sweep_jobs_max(&self) -> usize {
        (self.config.transactions_max / 2).max(1)
    }

    /// Submits resume jobs for the next payments the store has in flight, at most
    /// `sweep_jobs_max`, going on after the last one the previous call resumed and starting
    /// over once it reaches the end. Busy ones are skipped by the transaction supervisor.
    pub async fn resume_in_flight(&self) -> usize {
        let limit = self.sweep_jobs_max();
        let after = self
            .resume_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match self.store.in_flight(after.as_deref(), limit).await {
            Ok(ids) => {
                // A short page reached the end: the next sweep starts from the beginning.
                *self.resume_after.lock().unwrap_or_else(|e| e.into_inner()) =
                    (ids.len() == limit).then(|| ids.last().cloned()).flatten();
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

    /// Expires the authorizations that ran out first, at most `sweep_jobs_max` a sweep.
    async fn expire_authorizations(&self) {
        let limit = self.sweep_jobs_max();
        match self
            .store
            .authorized_before(self.clock.now_ms(), limit)
            .await
        {
            Ok(ids) => ids
                .into_iter()
                .for_each(|id| self.submit(Job::internal(id, Command::Expire))),
            Err(e) => tracing::error!(error = %e, "could not list expired authorizations"),
        }
    }
}

/// Latency samples a PSP needs before its p95 steers routing.
const HINT_SAMPLES_MIN: usize = 20;

/// FNV-1a of the payment id: spreads payments over equal-priority PSPs deterministically.
pub(crate) fn spread(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The running engine.
pub struct Rialto {
    deps: Arc<Deps>,
    root: ActorRef<root::RootMsg>,
    background: [tokio::task::JoinHandle<()>; 2],
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
                ..PspRoute::default()
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
        let limits = PspLimits {
            breaker: self.config.breaker.clone(),
            inflight_max: self.config.psp_inflight_max,
            queue_max: self.config.psp_queue_max,
            crash_max: self.config.crash_max,
            crash_window: self.config.crash_window,
        };
        let health = self
            .adapters
            .iter()
            .map(|a| {
                let id = a.id().to_string();
                let route = self.routes.iter().find(|r| r.id == id);
                let limits = PspLimits {
                    inflight_max: route
                        .and_then(|r| r.inflight_max)
                        .unwrap_or(limits.inflight_max),
                    queue_max: route.and_then(|r| r.queue_max).unwrap_or(limits.queue_max),
                    ..limits.clone()
                };
                (
                    id.clone(),
                    Arc::new(PspHealth::new(&id, limits, self.clock.clone())),
                )
            })
            .collect();
        let deps = Arc::new(Deps {
            store: self.store,
            clock: self.clock,
            config: self.config,
            routes: self.routes,
            faults: self.faults,
            psps: DashMap::new(),
            health,
            store_healthy: AtomicBool::new(true),
            forced_read_only: AtomicBool::new(false),
            transactions: RwLock::new(None),
            resume_after: Mutex::new(None),
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
        let monitor = tokio::spawn(monitor_store(deps.clone()));
        Ok(Rialto {
            deps,
            root,
            background: [sweeper, monitor],
        })
    }
}

/// Probes storage with a durable write every `health_interval`; a failed or slow probe puts
/// Rialto in read-only mode until one succeeds again.
async fn monitor_store(deps: Arc<Deps>) {
    let mut tick = tokio::time::interval(deps.config.health_interval);
    loop {
        tick.tick().await;
        let probe = tokio::time::timeout(Duration::from_secs(2), deps.store.health()).await;
        let healthy = matches!(probe, Ok(Ok(())));
        if deps.store_healthy.swap(healthy, Ordering::Relaxed) != healthy {
            tracing::warn!(healthy, "storage health changed");
        }
        metrics::gauge!("rialto_read_only")
            .set(f64::from(u8::from(deps.read_only_reason().is_some())));
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

    /// The engine's clock: the time its breaker changes are stamped with.
    pub fn now_ms(&self) -> i64 {
        self.deps.clock.now_ms()
    }

    pub fn psp_ids(&self) -> Vec<String> {
        self.deps.routes.iter().map(|r| r.id.clone()).collect()
    }

    /// PSPs whose supervisor is currently running.
    pub fn psps_up(&self) -> usize {
        self.deps.psps.len()
    }

    /// Each PSP's breaker, bulkhead and recent figures, in route order.
    pub fn psp_health(&self) -> Vec<HealthReport> {
        self.deps
            .routes
            .iter()
            .map(|r| self.deps.health[&r.id].report())
            .collect()
    }

    /// Every breaker state change so far (most recent 1,000 per PSP).
    pub fn breaker_transitions(&self) -> Vec<BreakerChange> {
        let mut all: Vec<_> = self
            .deps
            .health
            .values()
            .flat_map(|h| h.transitions())
            .collect();
        all.sort_by_key(|t| t.at_ms);
        all
    }

    /// The storage monitor's last verdict: its durable probe commit succeeded.
    pub fn store_healthy(&self) -> bool {
        self.deps.store_healthy.load(Ordering::Relaxed)
    }

    /// Why new payments are refused now, if they are.
    pub fn read_only_reason(&self) -> Option<&'static str> {
        self.deps.read_only_reason()
    }

    /// An operator's switch: refuse new payments regardless of health.
    pub fn set_forced_read_only(&self, on: bool) {
        self.deps.forced_read_only.store(on, Ordering::Relaxed);
        tracing::warn!(read_only = on, "operator changed read-only mode");
    }

    /// An operator's switch for one PSP; false when there is no such PSP.
    pub fn set_psp_enabled(&self, psp: &str, enabled: bool) -> bool {
        match self.deps.health.get(psp) {
            Some(h) => {
                h.set_disabled(!enabled);
                tracing::warn!(psp, enabled, "operator changed a psp");
                true
            }
            None => false,
        }
    }

    async fn run(
        &self,
        job: Job,
        done: oneshot::Receiver<Result<Payment, CommandError>>,
    ) -> Result<Payment, CommandError> {
        self.deps.submit(job);
        match tokio::time::timeout(self.deps.config.service_timeout, done).await {
            // The payment carries on; a retry with the same idempotency key reports it.
            Err(_) => Err(CommandError::StillProcessing),
            Ok(Ok(result)) => result,
            // The actor died with our reply port; the supervisor resumes the payment from the
            // store, and a retry with the same idempotency key reports its outcome.
            Ok(Err(_)) => Err(CommandError::Interrupted),
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
            // The request's span (the API's), so the payment's trace continues in the actor.
            span: tracing::Span::current(),
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

    /// Resumes the next page of in-flight payments now, as start-up and every sweep do;
    /// returns how many it submitted.
    pub async fn resume_in_flight(&self) -> usize {
        self.deps.resume_in_flight().await
    }

    /// Stops the actor tree. In-flight payments stay in the store and resume on next start.
    pub async fn shutdown(self) {
        for task in &self.background {
            task.abort();
        }
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
