//! One supervisor actor per PSP. It owns that PSP's adapter and its [`PspHealth`]: the circuit
//! breaker (R2.1), the bulkhead (bounded concurrency and a bounded wait queue, R2.2), the
//! operator's enable/disable switch and recent latency and error figures that routing reads.
//! Each call runs in its own task under the PSP call timeout, so a slow call never blocks the
//! mailbox; a call that panics is caught, answered `Unknown` (the PSP may have acted) and
//! reported here. A PSP whose adapter keeps panicking is marked down for a cool-off period.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;
use tracing::Instrument;

use rialto_engine::Clock;
use rialto_engine::breaker::{Breaker, BreakerConfig, BreakerState, Transition};

use crate::psp::{OperationStatus, PspAdapter, PspOutcome, PspRequest};

/// What to ask the PSP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PspCall {
    Authorize,
    Capture,
    Void,
    Refund,
    Status,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PspAnswer {
    Outcome(PspOutcome),
    Status(OperationStatus),
}

impl PspAnswer {
    /// A short name for traces.
    pub fn kind(&self) -> &'static str {
        match self {
            PspAnswer::Outcome(PspOutcome::Approved { .. }) => "approved",
            PspAnswer::Outcome(PspOutcome::HardDecline { .. }) => "declined",
            PspAnswer::Outcome(PspOutcome::SoftFailure { .. }) => "soft_failure",
            PspAnswer::Outcome(PspOutcome::Unknown { .. }) => "unknown",
            PspAnswer::Status(OperationStatus::Pending) => "pending",
            PspAnswer::Status(OperationStatus::NotFound) => "not_found",
            PspAnswer::Status(OperationStatus::Succeeded { .. }) => "succeeded",
            PspAnswer::Status(OperationStatus::Declined { .. }) => "declined",
        }
    }
}

pub enum PspMsg {
    Call {
        call: PspCall,
        req: PspRequest,
        reply: RpcReplyPort<PspAnswer>,
        /// The asking payment's span: the call's span is its child.
        span: tracing::Span,
    },
    /// A call task caught a panic in the adapter.
    AdapterPanicked { call: PspCall },
}

/// Limits of one PSP's bulkhead and crash-loop guard.
#[derive(Clone, Debug)]
pub struct PspLimits {
    pub breaker: BreakerConfig,
    pub inflight_max: usize,
    /// Calls waiting for a free slot; beyond it a call is refused at once ("bulkhead full").
    pub queue_max: usize,
    /// Adapter panics within `crash_window` that mark the PSP down.
    pub crash_max: u32,
    pub crash_window: Duration,
}

/// A breaker state change, kept for reports (`rialto sim`) and the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerChange {
    pub psp: String,
    pub at_ms: i64,
    pub from: BreakerState,
    pub to: BreakerState,
}

const LATENCY_SAMPLES: usize = 256;
/// How long a latency summary (samples in the window, p95) serves before it is recomputed.
/// Routing reads every PSP's summary for every payment; recomputing each time meant copying
/// and selecting over all samples of all PSPs per payment, for a figure that hardly moves.
const LATENCY_SUMMARY_MS: i64 = 100;
const TRANSITIONS_KEPT: usize = 1_000;

/// A PSP's protective state. Owned by its supervisor, shared read-mostly with routing and
/// health. The mutexes are `std`: held for a few instructions, never across an await.
pub struct PspHealth {
    pub id: String,
    /// `psp:<id>`: this PSP's name as a queue and as a supervisor in metrics.
    label: String,
    clock: Arc<dyn Clock>,
    limits: PspLimits,
    breaker: Mutex<Breaker>,
    inflight: Arc<Semaphore>,
    waiting: AtomicUsize,
    disabled: AtomicBool,
    down_until_ms: AtomicI64,
    panics: Mutex<VecDeque<i64>>,
    /// (when, latency) of recent calls, kept for one breaker window: a PSP nobody calls
    /// any more must not stay "slow" on old figures.
    latencies_ms: Mutex<VecDeque<(i64, u64)>>,
    /// The last summary of `latencies_ms` and when it was made.
    latency_summary: Mutex<LatencySummary>,
    transitions: Mutex<VecDeque<BreakerChange>>,
}

#[derive(Clone, Copy)]
struct LatencySummary {
    at_ms: i64,
    samples: usize,
    p95_ms: u64,
}

/// A PSP's health as `/readyz` and routing report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    pub psp: String,
    pub breaker: BreakerState,
    pub can_take: bool,
    pub disabled: bool,
    pub down: bool,
    pub calls_in_window: u32,
    pub error_rate_pct: u32,
    /// Calls within the last window behind `latency_p95_ms`.
    pub latency_samples: usize,
    pub latency_p95_ms: u64,
    pub inflight: usize,
    pub waiting: usize,
}

impl PspHealth {
    pub fn new(id: &str, limits: PspLimits, clock: Arc<dyn Clock>) -> PspHealth {
        metrics::gauge!("circuit_breaker_state", "psp" => id.to_string()).set(0.0);
        let label = format!("psp:{id}");
        // The bulkhead's waiting line, as a queue.
        metrics::gauge!("rialto_queue_capacity", "queue" => label.clone())
            .set(limits.queue_max as f64);
        metrics::gauge!("rialto_queue_depth", "queue" => label.clone()).set(0.0);
        // Present from the first scrape, so `rate()` sees the first increment.
        for counter in [
            "rialto_bulkhead_rejections_total",
            "rialto_psp_retries_total",
            "rialto_psp_adapter_panics_total",
        ] {
            metrics::counter!(counter, "psp" => id.to_string()).increment(0);
        }
        metrics::counter!("rialto_supervisor_restarts_total", "supervisor" => label.clone())
            .increment(0);
        PspHealth {
            id: id.to_string(),
            label,
            clock,
            breaker: Mutex::new(Breaker::new(limits.breaker.clone())),
            inflight: Arc::new(Semaphore::new(limits.inflight_max)),
            limits,
            waiting: AtomicUsize::new(0),
            disabled: AtomicBool::new(false),
            down_until_ms: AtomicI64::new(i64::MIN),
            panics: Mutex::new(VecDeque::new()),
            latencies_ms: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
            latency_summary: Mutex::new(LatencySummary {
                at_ms: i64::MIN,
                samples: 0,
                p95_ms: 0,
            }),
            transitions: Mutex::new(VecDeque::new()),
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bulkhead_full(&self) -> bool {
        self.inflight.available_permits() == 0
            && self.waiting.load(Ordering::Relaxed) >= self.limits.queue_max
    }

    fn down(&self, now_ms: i64) -> bool {
        now_ms < self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Whether this PSP takes payments at all now: not disabled, not down, its breaker not
    /// refusing. A full bulkhead is not out of service: it frees up as calls return.
    pub fn in_service(&self) -> bool {
        let now = self.clock.now_ms();
        !self.disabled.load(Ordering::Relaxed) && !self.down(now) && self.breaker().would_allow(now)
    }

    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Relaxed);
    }

    /// Everything routing and `/readyz` read, in one pass: one breaker lock and the latency
    /// summary, at most `LATENCY_SUMMARY_MS` old (this runs for every payment routed).
    pub fn report(&self) -> HealthReport {
        let now = self.clock.now_ms();
        let (state, (calls, failures), would_allow) = {
            let mut b = self.breaker();
            (b.state(now), b.window(now), b.would_allow(now))
        };
        let disabled = self.disabled.load(Ordering::Relaxed);
        let down = self.down(now);
        let latency = self.latency_summary(now);
        HealthReport {
            psp: self.id.clone(),
            breaker: state,
            can_take: !disabled && !down && !self.bulkhead_full() && would_allow,
            disabled,
            down,
            calls_in_window: calls,
            error_rate_pct: (failures * 100).checked_div(calls).unwrap_or(0),
            latency_samples: latency.samples,
            latency_p95_ms: latency.p95_ms,
            inflight: self.limits.inflight_max - self.inflight.available_permits(),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Calls within the last breaker window and their p95, recomputed when the last summary
    /// is older than `LATENCY_SUMMARY_MS` (or from a clock that went back).
    fn latency_summary(&self, now: i64) -> LatencySummary {
        let mut summary = self
            .latency_summary
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let age = now.saturating_sub(summary.at_ms);
        if (0..LATENCY_SUMMARY_MS).contains(&age) {
            return *summary;
        }
        let horizon = now - self.limits.breaker.window_ms as i64;
        let mut samples: Vec<u64> = {
            let mut l = self.latencies_ms.lock().unwrap_or_else(|e| e.into_inner());
            while l.front().is_some_and(|(at, _)| *at < horizon) {
                l.pop_front();
            }
            l.iter().map(|(_, ms)| *ms).collect()
        };
        *summary = LatencySummary {
            at_ms: now,
            samples: samples.len(),
            p95_ms: p95(&mut samples),
        };
        *summary
    }

    pub fn transitions(&self) -> Vec<BreakerChange> {
        self.transitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn note(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        metrics::gauge!("circuit_breaker_state", "psp" => self.id.clone()).set(t.to as u8 as f64);
        tracing::warn!(psp = %self.id, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker changed");
        let mut log = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == TRANSITIONS_KEPT {
            log.pop_front();
        }
        log.push_back(BreakerChange {
            psp: self.id.clone(),
            at_ms: t.at_ms,
            from: t.from,
            to: t.to,
        });
    }

    fn observe(&self, duration: Duration, failed: bool) {
        let ms = duration.as_millis() as u64;
        {
            let mut l = self.latencies_ms.lock().unwrap_or_else(|e| e.into_inner());
            if l.len() == LATENCY_SAMPLES {
                l.pop_front();
            }
            l.push_back((self.clock.now_ms(), ms));
        }
        let t = self.breaker().record(self.clock.now_ms(), failed, ms);
        self.note(t);
    }

    /// Counts an adapter panic; too many in the window mark the PSP down and open its breaker.
    fn panicked(&self) -> bool {
        let now = self.clock.now_ms();
        let window = self.limits.crash_window.as_millis() as i64;
        let mut panics = self.panics.lock().unwrap_or_else(|e| e.into_inner());
        panics.push_back(now);
        while panics.front().is_some_and(|t| *t <= now - window) {
            panics.pop_front();
        }
        if panics.len() as u32 >= self.limits.crash_max {
            panics.clear();
            drop(panics);
            self.down_until_ms
                .store(now + self.limits.breaker.open_ms as i64, Ordering::Relaxed);
            let t = self.breaker().force_open(now);
            self.note(t);
            return true;
        }
        false
    }
}

pub struct PspSupervisor;

pub struct PspArgs {
    pub adapter: Arc<dyn PspAdapter>,
    pub health: Arc<PspHealth>,
    pub call_timeout: Duration,
}

pub struct PspState {
    adapter: Arc<dyn PspAdapter>,
    health: Arc<PspHealth>,
    call_timeout: Duration,
}

impl Actor for PspSupervisor {
    type Msg = PspMsg;
    type State = PspState;
    type Arguments = PspArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<PspMsg>,
        args: PspArgs,
    ) -> Result<PspState, ActorProcessingErr> {
        Ok(PspState {
            adapter: args.adapter,
            health: args.health,
            call_timeout: args.call_timeout,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PspMsg>,
        msg: PspMsg,
        state: &mut PspState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PspMsg::Call {
                call,
                req,
                reply,
                span: caller,
            } => {
                let adapter = state.adapter.clone();
                let health = state.health.clone();
                let timeout = state.call_timeout;
                let span = tracing::info_span!(
                    parent: &caller,
                    "psp.call",
                    otel.kind = "client",
                    psp = %health.id,
                    call = ?call,
                    outcome = tracing::field::Empty,
                );
                // Without its own span (traces not exported), the call still runs in the
                // payment's, whose ids the PSP is sent.
                let span = if span.is_disabled() { caller } else { span };
                tokio::spawn(
                    async move {
                        let answer = run_call(adapter, &health, timeout, call, req, &myself).await;
                        tracing::Span::current().record("outcome", answer.kind());
                        // The transaction may have given up waiting; its own timeout covers that.
                        let _ = reply.send(answer);
                    }
                    .instrument(span),
                );
            }
            PspMsg::AdapterPanicked { call } => {
                let psp = state.adapter.id().to_string();
                metrics::counter!("rialto_psp_adapter_panics_total", "psp" => psp.clone())
                    .increment(1);
                metrics::counter!("rialto_supervisor_restarts_total", "supervisor" => state.health.label.clone()).increment(1);
                let marked_down = state.health.panicked();
                tracing::error!(psp, ?call, marked_down, "psp adapter call panicked");
            }
        }
        Ok(())
    }
}

/// The 95th percentile (0 without samples). A selection, not a sort: routing asks for every
/// PSP's report on every payment.
fn p95(samples: &mut [u64]) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let rank = (samples.len() * 95).div_ceil(100) - 1;
    *samples.select_nth_unstable(rank).1
}

fn refused(call: PspCall, reason: &str) -> PspAnswer {
    match call {
        PspCall::Status => PspAnswer::Status(OperationStatus::Pending),
        _ => PspAnswer::Outcome(PspOutcome::SoftFailure {
            reason: reason.to_string(),
        }),
    }
}

async fn run_call(
    adapter: Arc<dyn PspAdapter>,
    health: &PspHealth,
    timeout: Duration,
    call: PspCall,
    req: PspRequest,
    supervisor: &ActorRef<PspMsg>,
) -> PspAnswer {
    let now = health.clock.now_ms();
    if health.disabled.load(Ordering::Relaxed) || health.down(now) {
        return refused(call, "psp is disabled");
    }
    // The bulkhead first, so a call the breaker admits (a half-open trial) always runs and
    // is always recorded.
    let started = Instant::now();
    let permit = match health.inflight.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            let waiting = health.waiting.fetch_add(1, Ordering::Relaxed);
            if waiting >= health.limits.queue_max {
                health.waiting.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!("rialto_bulkhead_rejections_total", "psp" => health.id.clone())
                    .increment(1);
                return refused(call, "psp bulkhead is full");
            }
            let depth = metrics::gauge!("rialto_queue_depth", "queue" => health.label.clone());
            depth.set((waiting + 1) as f64);
            let waited =
                tokio::time::timeout(timeout, health.inflight.clone().acquire_owned()).await;
            let waiting = health.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
            depth.set(waiting as f64);
            match waited {
                Ok(Ok(permit)) => permit,
                // Never sent: nothing can have happened at the PSP.
                _ => return refused(call, "timed out waiting for a psp slot"),
            }
        }
    };
    // Status queries bypass the breaker: they are how unknown outcomes get settled.
    if call != PspCall::Status {
        let (allowed, t) = health.breaker().allow(health.clock.now_ms());
        health.note(t);
        if !allowed {
            return refused(call, "circuit breaker is open");
        }
    }
    let remaining = timeout.saturating_sub(started.elapsed());
    let work = async {
        match call {
            PspCall::Authorize => PspAnswer::Outcome(adapter.authorize(&req).await),
            PspCall::Capture => PspAnswer::Outcome(adapter.capture(&req).await),
            PspCall::Void => PspAnswer::Outcome(adapter.void(&req).await),
            PspCall::Refund => PspAnswer::Outcome(adapter.refund(&req).await),
            PspCall::Status => PspAnswer::Status(adapter.status(&req).await),
        }
    };
    let answer = match AssertUnwindSafe(tokio::time::timeout(remaining, work))
        .catch_unwind()
        .await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(_elapsed)) => {
            metrics::counter!("request_timeouts_total", "peer" => adapter.id().to_string())
                .increment(1);
            unknown(call, "psp did not answer in time")
        }
        Err(_panic) => {
            // Tell the supervisor; if it is gone the panic is still answered as unknown.
            let _ = supervisor.send_message(PspMsg::AdapterPanicked { call });
            unknown(call, "psp adapter crashed during the call")
        }
    };
    drop(permit);
    let failed = matches!(
        answer,
        PspAnswer::Outcome(PspOutcome::SoftFailure { .. } | PspOutcome::Unknown { .. })
    );
    if call != PspCall::Status {
        health.observe(started.elapsed(), failed);
    }
    metrics::histogram!(
        "http_client_request_duration_seconds",
        "peer" => adapter.id().to_string(),
        "http_response_status_code" => synthetic_status(&answer),
    )
    .record(started.elapsed().as_secs_f64());
    answer
}

fn unknown(call: PspCall, reason: &str) -> PspAnswer {
    match call {
        PspCall::Status => PspAnswer::Status(OperationStatus::Pending),
        _ => PspAnswer::Outcome(PspOutcome::Unknown {
            reason: reason.to_string(),
        }),
    }
}

/// An HTTP-like status for in-process calls, so PSP dashboards read the same either way.
fn synthetic_status(answer: &PspAnswer) -> &'static str {
    match answer {
        PspAnswer::Outcome(PspOutcome::Approved { .. }) => "200",
        PspAnswer::Outcome(PspOutcome::HardDecline { .. }) => "402",
        PspAnswer::Outcome(PspOutcome::SoftFailure { .. }) => "503",
        PspAnswer::Outcome(PspOutcome::Unknown { .. }) => "504",
        PspAnswer::Status(OperationStatus::NotFound) => "404",
        PspAnswer::Status(_) => "200",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    /// A PSP's health with default breaker settings, on a clock the test moves.
    fn health_on(clock: &Arc<ManualClock>) -> PspHealth {
        let limits = PspLimits {
            breaker: BreakerConfig::default(),
            inflight_max: 4,
            queue_max: 4,
            crash_max: 5,
            crash_window: Duration::from_secs(60),
        };
        PspHealth::new("psp", limits, clock.clone())
    }

    /// Old latency figures expire with the breaker window: a PSP that stopped getting traffic
    /// after a slow spell does not stay "slow" (and shunned by routing) forever.
    #[test]
    fn latency_figures_expire_with_the_window() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let health = health_on(&clock);
        for _ in 0..30 {
            health.observe(Duration::from_secs(12), false);
        }
        let r = health.report();
        assert_eq!((r.latency_p95_ms, r.latency_samples), (12_000, 30));
        clock.0.store(10_001, Ordering::Relaxed);
        let r = health.report();
        assert_eq!((r.latency_p95_ms, r.latency_samples), (0, 0));
    }

    /// Routing reads a summary that is recomputed every `LATENCY_SUMMARY_MS`, not per payment:
    /// calls observed in between show up once it is due, and not before.
    #[test]
    fn the_latency_summary_is_recomputed_when_due() {
        let clock = Arc::new(ManualClock(AtomicI64::new(1_000)));
        let health = health_on(&clock);
        for _ in 0..20 {
            health.observe(Duration::from_millis(10), false);
        }
        let r = health.report();
        assert_eq!((r.latency_p95_ms, r.latency_samples), (10, 20));
        for _ in 0..20 {
            health.observe(Duration::from_millis(900), false);
        }
        clock
            .0
            .store(1_000 + LATENCY_SUMMARY_MS - 1, Ordering::Relaxed);
        let r = health.report();
        assert_eq!((r.latency_p95_ms, r.latency_samples), (10, 20));
        clock.0.store(1_000 + LATENCY_SUMMARY_MS, Ordering::Relaxed);
        let r = health.report();
        assert_eq!((r.latency_p95_ms, r.latency_samples), (900, 40));
        // A clock that steps back does not pin an old summary.
        health.observe(Duration::from_millis(5), false);
        clock.0.store(500, Ordering::Relaxed);
        assert_eq!(health.report().latency_samples, 41);
    }

    #[test]
    fn p95_is_the_nearest_rank_percentile() {
        assert_eq!(p95(&mut []), 0);
        assert_eq!(p95(&mut [7]), 7);
        // 1..=100 shuffled: the 95th smallest.
        let mut samples: Vec<u64> = (1..=100).map(|i| (i * 37) % 101).collect();
        assert_eq!(p95(&mut samples), 95);
        // 20 samples: rank ceil(19) = 19th smallest.
        let mut samples: Vec<u64> = (1..=20).rev().map(|i| i * 10).collect();
        assert_eq!(p95(&mut samples), 190);
    }
}
