//! The simulated PSP. [`SimPsp`] behaves like a PSP with configurable latency (fixed, uniform
//! or log-normal), outcome rates and a schedule of incidents (outage, latency spike, dropped
//! calls), plus test payment methods that force an outcome:
//!
//! | payment method      | authorize                                                        |
//! |---------------------|------------------------------------------------------------------|
//! | `pm_sim_approve`    | approved                                                         |
//! | `pm_sim_decline`    | hard decline `card_declined`                                     |
//! | `pm_sim_timeout`    | approved at the PSP, but the answer never arrives in time; a status query says approved |
//! | `pm_sim_psp_crash`  | the adapter panics mid-call (tests supervision)                  |
//! | anything else       | drawn from the configured rates                                  |
//!
//! A soft failure is transient: the same request sent again goes through. Every random
//! choice is a pure function of the seed, the operation's idempotency key and what is being
//! drawn, so the same requests give the same outcomes in any order (Rialto's keys hold
//! the payment id, new in every run: a repeated run repeats the rates, not each outcome).
//! Capture, void and refund are approved. Every operation is recorded by its
//! idempotency key: sending it again replays the recorded answer, and `status` reports it.
//! Like a real PSP, the simulator acts on a request once it has received it, whether or not
//! the caller waits for the answer: until the operation's latency has passed, `status` says
//! it is pending, then what was done. The book lives in memory: after a crash of the whole
//! process the PSP "forgets". Like a real PSP's idempotency records, it keeps each operation
//! for a retention period (1 hour by default) and at most a set number of operations (250,000
//! by default, about 200 bytes each), forgetting the oldest first, so a long run's memory
//! stays bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, so that tests with paused time move the incident schedule too.
use tokio::time::Instant;

use async_trait::async_trait;
use dashmap::DashMap;

use rialto_actors::psp::{Capabilities, OperationStatus, PspAdapter, PspOutcome, PspRequest};

/// How long a PSP takes to answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    Uniform {
        min: Duration,
        max: Duration,
    },
    /// Log-normal, given by its median and 99th percentile.
    LogNormal {
        p50: Duration,
        p99: Duration,
    },
}

impl Latency {
    /// The latency for two independent uniform draws in `0..1_000_000`.
    pub fn sample(&self, u1: u64, u2: u64) -> Duration {
        match self {
            Latency::Fixed(d) => *d,
            Latency::Uniform { min, max } => {
                let span = max.saturating_sub(*min).as_micros() as u64;
                *min + Duration::from_micros(span * u1 / 999_999)
            }
            Latency::LogNormal { p50, p99 } => {
                // Box–Muller for a standard normal, then exp(mu + sigma z). Simulation only:
                // no money depends on these floats.
                let a = (u1 as f64 + 0.5) / 1_000_000.0;
                let b = (u2 as f64 + 0.5) / 1_000_000.0;
                let z = (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos();
                let mu = (p50.as_secs_f64().max(1e-6)).ln();
                let sigma = ((p99.as_secs_f64().max(1e-6)).ln() - mu).max(0.0) / 2.326_348;
                Duration::from_secs_f64((mu + sigma * z).exp().min(3_600.0))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum IncidentKind {
    /// The PSP refuses every call (connection refused): nothing it is asked happens.
    Outage,
    /// Every call takes this long.
    LatencySpike { latency: Duration },
    /// This share of calls (parts per million) is acted on but the answer is lost.
    Drop { ppm: u32 },
}

/// An incident active from `start` to `end`, measured from the simulator's start.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub kind: IncidentKind,
    pub start: Duration,
    pub end: Duration,
}

/// Outcome rates are parts per million for payment methods that do not force one; whatever is
/// left after declines, soft failures and timeouts is approved.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub id: String,
    pub latency: Latency,
    pub decline_ppm: u32,
    pub soft_failure_ppm: u32,
    /// Acted on, answered too late (like `pm_sim_timeout`).
    pub timeout_ppm: u32,
    /// How long a timed-out or dropped call keeps the caller waiting.
    pub hang: Duration,
    pub seed: u64,
    pub incidents: Vec<Incident>,
    /// How long the PSP remembers an operation (for resends and status queries).
    pub retention: Duration,
    /// The most operations it remembers at once; past that it forgets the oldest.
    pub records_max: usize,
}

impl SimConfig {
    pub fn new(id: &str) -> SimConfig {
        SimConfig {
            id: id.to_string(),
            latency: Latency::Uniform {
                min: Duration::from_millis(2),
                max: Duration::from_millis(5),
            },
            decline_ppm: 0,
            soft_failure_ppm: 0,
            timeout_ppm: 0,
            hang: Duration::from_secs(3_600),
            seed: 0x5eed,
            incidents: Vec::new(),
            retention: RETENTION_DEFAULT,
            records_max: RECORDS_MAX_DEFAULT,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.records_max == 0 || self.retention.is_zero() {
            return Err(format!(
                "psp `{}`: the simulator must remember operations (records_max and retention above 0)",
                self.id
            ));
        }
        let total = u64::from(self.decline_ppm)
            + u64::from(self.soft_failure_ppm)
            + u64::from(self.timeout_ppm);
        if total > 1_000_000 {
            return Err(format!(
                "psp `{}`: outcome rates add up to more than 1,000,000 ppm",
                self.id
            ));
        }
        for i in &self.incidents {
            if i.end <= i.start {
                return Err(format!(
                    "psp `{}`: an incident ends before it starts",
                    self.id
                ));
            }
            if let IncidentKind::Drop { ppm } = i.kind
                && ppm > 1_000_000
            {
                return Err(format!("psp `{}`: drop rate above 1,000,000 ppm", self.id));
            }
        }
        Ok(())
    }
}

/// What the incident schedule says at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditions {
    pub down: bool,
    pub latency_override: Option<Duration>,
    pub drop_ppm: u32,
}

/// The conditions in force `elapsed` after the start. Pure, so the schedule is testable.
pub fn conditions(incidents: &[Incident], elapsed: Duration) -> Conditions {
    let mut c = Conditions::default();
    for i in incidents
        .iter()
        .filter(|i| i.start <= elapsed && elapsed < i.end)
    {
        match &i.kind {
            IncidentKind::Outage => c.down = true,
            IncidentKind::LatencySpike { latency } => {
                c.latency_override = Some(c.latency_override.map_or(*latency, |l| l.max(*latency)))
            }
            IncidentKind::Drop { ppm } => c.drop_ppm = c.drop_ppm.max(*ppm),
        }
    }
    c
}

/// What the PSP did. Small, as the book holds many: the reference is drawn again from the
/// key when it is needed, and decline reasons are fixed texts.
#[derive(Clone, Copy, Debug)]
enum Record {
    Succeeded,
    Declined {
        code: &'static str,
        message: &'static str,
    },
}

/// An operation the PSP has received: what it does, done from `done_at` on.
#[derive(Clone, Copy, Debug)]
struct Entry {
    record: Record,
    done_at: Instant,
}

pub const RETENTION_DEFAULT: Duration = Duration::from_secs(3_600);
pub const RECORDS_MAX_DEFAULT: usize = 250_000;

/// What the PSP remembers by idempotency key: each key for `retention` after it was first
/// seen, and at most `records_max` keys, the oldest forgotten first.
struct Book<V> {
    /// Each value with when its key was first seen.
    entries: DashMap<Arc<str>, (Instant, V)>,
    /// Keys in the order they were first seen, each once, with when.
    order: Mutex<VecDeque<(Instant, Arc<str>)>>,
    retention: Duration,
    records_max: usize,
}

impl<V: Clone> Book<V> {
    fn new(retention: Duration, records_max: usize) -> Book<V> {
        Book {
            entries: DashMap::new(),
            order: Mutex::new(VecDeque::new()),
            retention,
            records_max,
        }
    }

    /// Whether a key first seen at `seen` is still remembered at `now`.
    fn kept(&self, seen: Instant, now: Instant) -> bool {
        now.saturating_duration_since(seen) < self.retention
    }

    fn get(&self, key: &str) -> Option<V> {
        let entry = self.entries.get(key)?;
        let (seen, value) = entry.value();
        // Past its retention a key is forgotten, even before the next insert drops it.
        self.kept(*seen, Instant::now()).then(|| value.clone())
    }

    /// Remembers `value` for `key` unless the key is already known; returns what was known.
    fn insert(&self, key: &str, value: V) -> Option<V> {
        let key: Arc<str> = Arc::from(key);
        let now = Instant::now();
        {
            // The shard's lock is released before `order`'s is taken: `forget` takes them
            // the other way round.
            match self.entries.entry(key.clone()) {
                dashmap::Entry::Occupied(known) if self.kept(known.get().0, now) => {
                    return Some(known.get().1.clone());
                }
                // Forgotten (expired, not yet dropped): the key starts afresh.
                dashmap::Entry::Occupied(mut expired) => {
                    expired.insert((now, value));
                }
                dashmap::Entry::Vacant(slot) => {
                    slot.insert((now, value));
                }
            }
        }
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        order.push_back((now, key));
        self.forget(&mut order, now);
        None
    }

    fn forget(&self, order: &mut VecDeque<(Instant, Arc<str>)>, now: Instant) {
        while let Some((seen, _)) = order.front() {
            if self.kept(*seen, now) && order.len() <= self.records_max {
                break;
            }
            if let Some((seen, key)) = order.pop_front() {
                // Unless the key was forgotten and seen anew since: that is a later entry.
                self.entries
                    .remove_if(&*key, |_, (current, _)| *current == seen);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Counters of what the simulator was asked and answered.
#[derive(Debug, Default)]
pub struct SimStats {
    pub calls: AtomicU64,
    pub approved: AtomicU64,
    pub declined: AtomicU64,
    pub soft_failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub dropped: AtomicU64,
    pub refused_down: AtomicU64,
    pub status_queries: AtomicU64,
}

impl SimStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("calls", get(&self.calls)),
            ("approved", get(&self.approved)),
            ("declined", get(&self.declined)),
            ("soft_failures", get(&self.soft_failures)),
            ("timeouts", get(&self.timeouts)),
            ("dropped", get(&self.dropped)),
            ("refused_down", get(&self.refused_down)),
            ("status_queries", get(&self.status_queries)),
        ]
    }
}

/// Sleeps for a PSP's latency; a zero latency does not touch the timer.
async fn pause(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub struct SimPsp {
    config: SimConfig,
    book: Book<Entry>,
    /// Keys that already had their one soft failure: soft failures are transient, so the
    /// same request succeeds when sent again.
    soft_failed: Book<()>,
    created: Instant,
    /// When the incident schedule's clock started, in nanoseconds after `created`: at
    /// creation, or at the last `start_schedule`.
    schedule_origin_ns: AtomicU64,
    pub stats: SimStats,
}

/// What to draw, so each choice uses its own independent stream.
#[derive(Clone, Copy)]
enum Draw {
    Outcome = 0,
    Latency1 = 1,
    Latency2 = 2,
    Reference = 3,
    Drop = 4,
}

impl SimPsp {
    pub fn new(config: SimConfig) -> SimPsp {
        assert!(config.validate().is_ok(), "{:?}", config.validate());
        SimPsp {
            book: Book::new(config.retention, config.records_max),
            soft_failed: Book::new(config.retention, config.records_max),
            config,
            created: Instant::now(),
            schedule_origin_ns: AtomicU64::new(0),
            stats: SimStats::default(),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Starts the incident schedule over from now. A PSP's schedule runs from its creation
    /// unless this is called: `rialto sim` calls it as the measured load starts, so that an
    /// incident falls where the scenario puts it whatever ran before (the `--baseline` phase,
    /// start-up).
    pub fn start_schedule(&self) {
        let now = self.created.elapsed().as_nanos();
        self.schedule_origin_ns
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long the incident schedule has run.
    pub fn schedule_elapsed(&self) -> Duration {
        let origin = Duration::from_nanos(self.schedule_origin_ns.load(Ordering::Relaxed));
        self.created.elapsed().saturating_sub(origin)
    }

    fn now(&self) -> Conditions {
        conditions(&self.config.incidents, self.schedule_elapsed())
    }

    /// A uniform value in `0..1_000_000` per (seed, key, what).
    fn draw(&self, key: &str, what: Draw) -> u64 {
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        splitmix64(h ^ self.config.seed ^ (what as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            % 1_000_000
    }

    fn latency(&self, key: &str, conditions: &Conditions) -> Duration {
        conditions.latency_override.unwrap_or_else(|| {
            self.config.latency.sample(
                self.draw(key, Draw::Latency1),
                self.draw(key, Draw::Latency2),
            )
        })
    }

    async fn think(&self, key: &str, conditions: &Conditions) {
        pause(self.latency(key, conditions)).await;
    }

    fn reference(&self, key: &str) -> String {
        format!(
            "{}_{:06}{:06}",
            self.config.id,
            self.draw(key, Draw::Reference),
            self.draw(key, Draw::Latency2)
        )
    }

    /// Records what the PSP does for a key, done after `latency`, unless it already has that
    /// operation: then what it has stands.
    fn accept(&self, key: &str, record: Record, latency: Duration) -> Record {
        let entry = Entry {
            record,
            done_at: Instant::now() + latency,
        };
        self.book
            .insert(key, entry)
            .map_or(record, |known| known.record)
    }

    /// The answer for a recorded operation.
    fn answer(&self, key: &str, record: Record) -> PspOutcome {
        match record {
            Record::Succeeded => {
                bump(&self.stats.approved);
                PspOutcome::Approved {
                    psp_reference: self.reference(key),
                }
            }
            Record::Declined { code, message } => {
                bump(&self.stats.declined);
                PspOutcome::HardDecline {
                    code: code.into(),
                    message: message.into(),
                }
            }
        }
    }

    /// Has acted, but never answers in time: the outcome is only visible to a status query.
    async fn hang(&self, key: &str, record: Record) -> PspOutcome {
        tokio::time::sleep(self.config.hang).await;
        self.answer(key, record)
    }

    /// Runs one operation under the incident schedule.
    async fn operate(
        &self,
        req: &PspRequest,
        decide: impl FnOnce(&Self) -> Decision,
    ) -> PspOutcome {
        bump(&self.stats.calls);
        let key = &req.idempotency_key;
        let conditions = self.now();
        if conditions.down {
            bump(&self.stats.refused_down);
            return PspOutcome::SoftFailure {
                reason: format!("{} is down", self.config.id),
            };
        }
        if let Some(known) = self.book.get(key) {
            // A resend: answered once the first one is done, and never sooner than a call.
            self.think(key, &conditions).await;
            tokio::time::sleep_until(known.done_at).await;
            return self.answer(key, known.record);
        }
        let decision = decide(self);
        let dropped =
            conditions.drop_ppm > 0 && self.draw(key, Draw::Drop) < u64::from(conditions.drop_ppm);
        let latency = self.latency(key, &conditions);
        // The PSP has the request: what it does, it does whether or not the caller waits.
        let record = match &decision {
            Decision::Approve | Decision::Timeout => Some(Record::Succeeded),
            Decision::Decline { code, message } => Some(Record::Declined { code, message }),
            Decision::SoftFailure => None,
            Decision::Crash => panic!("simulated adapter crash for {}", req.payment_id),
        }
        .map(|record| self.accept(key, record, latency));
        pause(latency).await;
        match (decision, record) {
            (Decision::Approve | Decision::Timeout, Some(record)) if dropped => {
                bump(&self.stats.dropped);
                self.hang(key, record).await
            }
            (Decision::Timeout, Some(record)) => {
                bump(&self.stats.timeouts);
                self.hang(key, record).await
            }
            (_, Some(record)) => self.answer(key, record),
            (_, None) => {
                // Nothing is recorded: a soft failure means the PSP did not act.
                bump(&self.stats.soft_failures);
                PspOutcome::SoftFailure {
                    reason: "issuer unavailable".into(),
                }
            }
        }
    }

    fn authorize_decision(&self, req: &PspRequest) -> Decision {
        match req.payment_method.as_str() {
            "pm_sim_approve" => Decision::Approve,
            "pm_sim_decline" => Decision::Decline {
                code: "card_declined",
                message: "the card was declined",
            },
            "pm_sim_timeout" => Decision::Timeout,
            "pm_sim_psp_crash" => Decision::Crash,
            _ => {
                let draw = self.draw(&req.idempotency_key, Draw::Outcome);
                let declines = u64::from(self.config.decline_ppm);
                let soft = declines + u64::from(self.config.soft_failure_ppm);
                let timeouts = soft + u64::from(self.config.timeout_ppm);
                if draw < declines {
                    Decision::Decline {
                        code: "do_not_honor",
                        message: "the issuer declined",
                    }
                } else if draw < soft {
                    let first = self.soft_failed.insert(&req.idempotency_key, ()).is_none();
                    if first {
                        Decision::SoftFailure
                    } else {
                        Decision::Approve
                    }
                } else if draw < timeouts {
                    Decision::Timeout
                } else {
                    Decision::Approve
                }
            }
        }
    }
}

enum Decision {
    Approve,
    Decline {
        code: &'static str,
        message: &'static str,
    },
    SoftFailure,
    Timeout,
    Crash,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[async_trait]
impl PspAdapter for SimPsp {
    fn id(&self) -> &str {
        &self.config.id
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    async fn authorize(&self, req: &PspRequest) -> PspOutcome {
        self.operate(req, |psp| psp.authorize_decision(req)).await
    }

    async fn capture(&self, req: &PspRequest) -> PspOutcome {
        self.operate(req, |_| Decision::Approve).await
    }

    async fn void(&self, req: &PspRequest) -> PspOutcome {
        self.operate(req, |_| Decision::Approve).await
    }

    async fn refund(&self, req: &PspRequest) -> PspOutcome {
        self.operate(req, |_| Decision::Approve).await
    }

    async fn status(&self, req: &PspRequest) -> OperationStatus {
        bump(&self.stats.status_queries);
        let conditions = self.now();
        if conditions.down {
            return OperationStatus::Pending;
        }
        let key = &req.idempotency_key;
        self.think(key, &conditions).await;
        match self.book.get(key) {
            None => OperationStatus::NotFound,
            Some(e) if Instant::now() < e.done_at => OperationStatus::Pending,
            Some(Entry {
                record: Record::Succeeded,
                ..
            }) => OperationStatus::Succeeded {
                psp_reference: self.reference(key),
            },
            Some(Entry {
                record: Record::Declined { code, message },
                ..
            }) => OperationStatus::Declined {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rialto_engine::{Currency, Money};

    fn req(key: &str, method: &str) -> PspRequest {
        PspRequest {
            idempotency_key: key.into(),
            payment_id: "pay".into(),
            amount: Money::new(100, Currency::Usd),
            payment_method: method.into(),
            psp_reference: None,
        }
    }

    fn fast(id: &str) -> SimConfig {
        SimConfig {
            latency: Latency::Fixed(Duration::ZERO),
            hang: Duration::from_millis(50),
            ..SimConfig::new(id)
        }
    }

    #[tokio::test]
    async fn forced_methods_force_their_outcome() {
        let psp = SimPsp::new(fast("sim"));
        assert!(matches!(
            psp.authorize(&req("a", "pm_sim_approve")).await,
            PspOutcome::Approved { .. }
        ));
        assert!(matches!(
            psp.authorize(&req("d", "pm_sim_decline")).await,
            PspOutcome::HardDecline { .. }
        ));
        assert_eq!(
            psp.status(&req("nobody", "pm_sim_approve")).await,
            OperationStatus::NotFound
        );
        // The timeout method acts before it hangs, so a status query sees the approval.
        let hung = tokio::time::timeout(
            Duration::from_millis(5),
            psp.authorize(&req("t", "pm_sim_timeout")),
        )
        .await;
        assert!(hung.is_err());
        assert!(matches!(
            psp.status(&req("t", "pm_sim_timeout")).await,
            OperationStatus::Succeeded { .. }
        ));
    }

    #[tokio::test]
    async fn resends_replay_the_first_answer() {
        let psp = SimPsp::new(fast("sim"));
        let first = psp.capture(&req("k", "pm_sim_approve")).await;
        let again = psp.capture(&req("k", "pm_sim_approve")).await;
        assert_eq!(first, again);
        assert_eq!(psp.book.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_book_forgets_after_its_retention_and_beyond_its_size() {
        let book: Book<u32> = Book::new(Duration::from_secs(60), 3);
        assert_eq!(book.insert("a", 1), None);
        assert_eq!(
            book.insert("a", 2),
            Some(1),
            "a known key keeps its first value"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(book.insert("b", 3), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(book.get("a"), None, "60 s after it was first seen");
        assert_eq!(book.get("b"), Some(3));
        // Seen anew after it was forgotten, `a` starts afresh, and dropping its expired first
        // sighting from the order does not drop the new one.
        assert_eq!(book.insert("a", 4), None);
        assert_eq!(book.get("a"), Some(4));
        assert_eq!(book.insert("c", 5), None);
        assert_eq!(book.get("a"), Some(4));
        // Past three keys the oldest go first.
        assert_eq!(book.insert("d", 6), None);
        assert_eq!(book.insert("e", 7), None);
        assert_eq!(book.get("b"), None);
        assert_eq!(book.get("a"), None);
        assert_eq!(book.get("e"), Some(7));
        assert_eq!(book.len(), 3, "what is forgotten is freed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_operation_is_unknown_and_is_acted_on_anew() {
        let psp = SimPsp::new(SimConfig {
            retention: Duration::from_secs(60),
            records_max: 2,
            ..fast("sim")
        });
        let first = psp.capture(&req("k1", "pm_sim_approve")).await;
        assert!(matches!(first, PspOutcome::Approved { .. }));
        for key in ["k2", "k3"] {
            psp.capture(&req(key, "pm_sim_approve")).await;
        }
        assert_eq!(
            psp.book.len(),
            2,
            "the book holds at most records_max operations"
        );
        assert_eq!(
            psp.status(&req("k1", "pm_sim_approve")).await,
            OperationStatus::NotFound
        );
        assert!(matches!(
            psp.status(&req("k3", "pm_sim_approve")).await,
            OperationStatus::Succeeded { .. }
        ));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            psp.status(&req("k3", "pm_sim_approve")).await,
            OperationStatus::NotFound,
            "nor past the retention"
        );
        let calls = psp.stats.approved.load(Ordering::Relaxed);
        psp.capture(&req("k1", "pm_sim_approve")).await;
        assert_eq!(psp.stats.approved.load(Ordering::Relaxed), calls + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_its_caller_stops_waiting_for_still_happens() {
        // Calls received in the first 50 ms take 200 ms; later ones (the status queries) none.
        let config = SimConfig {
            incidents: vec![Incident {
                kind: IncidentKind::LatencySpike {
                    latency: Duration::from_millis(200),
                },
                start: Duration::ZERO,
                end: Duration::from_millis(50),
            }],
            ..fast("slow")
        };
        let psp = SimPsp::new(config);
        let request = req("gave-up", "pm_sim_approve");
        let cut_short =
            tokio::time::timeout(Duration::from_millis(10), psp.authorize(&request)).await;
        assert!(cut_short.is_err(), "the caller stopped waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            psp.status(&request).await,
            OperationStatus::Pending,
            "received at 0 ms, asked at 60 ms: not done yet"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            matches!(
                psp.status(&request).await,
                OperationStatus::Succeeded { .. }
            ),
            "done at 200 ms, though nobody waited for the answer"
        );
        assert_eq!(
            psp.stats.approved.load(Ordering::Relaxed),
            0,
            "no answer sent"
        );
        // Sent again, it replays what was done.
        assert!(matches!(
            psp.authorize(&request).await,
            PspOutcome::Approved { .. }
        ));
        assert_eq!(psp.book.len(), 1);
    }

    /// Counts outcomes of `n` authorizations with fresh keys.
    async fn outcomes(psp: &SimPsp, n: usize) -> [u32; 4] {
        let mut counts = [0u32; 4];
        for i in 0..n {
            let request = req(&format!("k{i}"), "pm_card");
            let call = tokio::time::timeout(Duration::from_millis(20), psp.authorize(&request));
            let slot = match call.await {
                Ok(PspOutcome::Approved { .. }) => 0,
                Ok(PspOutcome::HardDecline { .. }) => 1,
                Ok(PspOutcome::SoftFailure { .. }) => 2,
                Ok(PspOutcome::Unknown { .. }) | Err(_) => 3,
            };
            counts[slot] += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn rates_are_deterministic_per_seed_and_close_to_configured() {
        let config = SimConfig {
            decline_ppm: 200_000,
            soft_failure_ppm: 100_000,
            timeout_ppm: 50_000,
            ..fast("sim")
        };
        let a = outcomes(&SimPsp::new(config.clone()), 2_000).await;
        let b = outcomes(&SimPsp::new(config.clone()), 2_000).await;
        assert_eq!(a, b, "same seed, same outcomes");
        let other_seed = outcomes(&SimPsp::new(SimConfig { seed: 7, ..config }), 2_000).await;
        assert_ne!(a, other_seed, "another seed, another run");
        // 2,000 draws: expected 1300 / 400 / 200 / 100, within about four standard deviations.
        let check =
            |got: u32, expected: u32, slack: u32| assert!(got.abs_diff(expected) <= slack, "{a:?}");
        check(a[0], 1_300, 90);
        check(a[1], 400, 75);
        check(a[2], 200, 55);
        check(a[3], 100, 40);
    }

    #[test]
    fn latency_distributions_respect_their_parameters() {
        let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
        let draws = |l: &Latency| -> Vec<f64> {
            let mut v: Vec<f64> = (0..10_000u64)
                .map(|i| {
                    ms(l.sample(
                        splitmix64(i) % 1_000_000,
                        splitmix64(i + 77_777) % 1_000_000,
                    ))
                })
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v
        };
        let fixed = draws(&Latency::Fixed(Duration::from_millis(7)));
        assert!(fixed.iter().all(|x| *x == 7.0));
        let uniform = draws(&Latency::Uniform {
            min: Duration::from_millis(10),
            max: Duration::from_millis(20),
        });
        assert!(uniform[0] >= 10.0 && uniform[9_999] <= 20.0);
        assert!(
            (uniform[5_000] - 15.0).abs() < 0.5,
            "median {}",
            uniform[5_000]
        );
        let lognormal = draws(&Latency::LogNormal {
            p50: Duration::from_millis(100),
            p99: Duration::from_millis(800),
        });
        assert!(
            (lognormal[5_000] / 100.0 - 1.0).abs() < 0.08,
            "p50 {}",
            lognormal[5_000]
        );
        assert!(
            (lognormal[9_900] / 800.0 - 1.0).abs() < 0.2,
            "p99 {}",
            lognormal[9_900]
        );
    }

    #[test]
    fn the_incident_schedule_applies_only_inside_its_window() {
        let s = |x: u64| Duration::from_secs(x);
        let incidents = vec![
            Incident {
                kind: IncidentKind::Outage,
                start: s(10),
                end: s(20),
            },
            Incident {
                kind: IncidentKind::LatencySpike {
                    latency: Duration::from_millis(900),
                },
                start: s(15),
                end: s(30),
            },
            Incident {
                kind: IncidentKind::Drop { ppm: 10_000 },
                start: s(0),
                end: s(5),
            },
        ];
        assert_eq!(
            conditions(&incidents, s(2)),
            Conditions {
                drop_ppm: 10_000,
                ..Conditions::default()
            }
        );
        assert_eq!(conditions(&incidents, s(5)), Conditions::default());
        assert_eq!(
            conditions(&incidents, s(12)),
            Conditions {
                down: true,
                ..Conditions::default()
            }
        );
        assert_eq!(
            conditions(&incidents, s(16)),
            Conditions {
                down: true,
                latency_override: Some(Duration::from_millis(900)),
                drop_ppm: 0
            }
        );
        assert_eq!(conditions(&incidents, s(30)), Conditions::default());
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_refuses_calls_and_dropped_calls_are_acted_on() {
        let down = SimConfig {
            incidents: vec![Incident {
                kind: IncidentKind::Outage,
                start: Duration::ZERO,
                end: Duration::from_secs(60),
            }],
            ..fast("down")
        };
        let psp = SimPsp::new(down);
        assert!(matches!(
            psp.authorize(&req("x", "pm_sim_approve")).await,
            PspOutcome::SoftFailure { .. }
        ));
        assert_eq!(
            psp.status(&req("x", "pm_sim_approve")).await,
            OperationStatus::Pending
        );

        let lossy = SimConfig {
            incidents: vec![Incident {
                kind: IncidentKind::Drop { ppm: 1_000_000 },
                start: Duration::ZERO,
                end: Duration::from_secs(60),
            }],
            ..fast("lossy")
        };
        let psp = SimPsp::new(lossy);
        let call = tokio::time::timeout(
            Duration::from_millis(10),
            psp.authorize(&req("y", "pm_sim_approve")),
        )
        .await;
        assert!(call.is_err(), "the answer was dropped");
        assert!(matches!(
            psp.status(&req("y", "pm_sim_approve")).await,
            OperationStatus::Succeeded { .. }
        ));
        assert_eq!(psp.stats.dropped.load(Ordering::Relaxed), 1);
    }

    /// `rialto sim --baseline` runs a phase before the measured one; the schedule must start
    /// over with the measured phase, or the incidents happen while nobody pays.
    #[tokio::test(start_paused = true)]
    async fn the_incident_schedule_starts_over_when_told() {
        let psp = SimPsp::new(SimConfig {
            incidents: vec![Incident {
                kind: IncidentKind::Outage,
                start: Duration::from_secs(10),
                end: Duration::from_secs(20),
            }],
            ..fast("later")
        });
        let refused = |psp: &SimPsp| psp.stats.refused_down.load(Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(25)).await;
        psp.authorize(&req("a", "pm_sim_approve")).await;
        assert_eq!(refused(&psp), 0, "25 s after creation the outage is over");

        psp.start_schedule();
        tokio::time::advance(Duration::from_secs(5)).await;
        psp.authorize(&req("b", "pm_sim_approve")).await;
        assert_eq!(refused(&psp), 0, "5 s into the new schedule: not yet");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(
            psp.authorize(&req("c", "pm_sim_approve")).await,
            PspOutcome::SoftFailure { .. }
        ));
        assert_eq!(refused(&psp), 1, "15 s into the new schedule: down");
    }
}
