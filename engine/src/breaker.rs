//! The circuit breaker (R2.1) as a pure state machine over an injected clock. Closed, it
//! counts calls in buckets of a tenth of its rolling window and opens when at least
//! `min_calls` were seen and `failure_rate_pct` of them failed; a call slower than
//! `slow_call_ms` counts as a failure even if it succeeded. Open, it refuses calls for
//! `open_ms`, then goes half-open and lets `half_open_trials` calls through: all of them
//! succeeding closes it, any failure opens it again.

use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    pub window_ms: u64,
    pub min_calls: u32,
    pub failure_rate_pct: u32,
    pub slow_call_ms: u64,
    pub open_ms: u64,
    pub half_open_trials: u32,
}

impl Default for BreakerConfig {
    /// The source's numbers: 50% failures, 10 s slow calls, 30 s before half-open. It gives
    /// no window; 10 s lets a sudden outage outweigh the calls that went well before it.
    fn default() -> BreakerConfig {
        BreakerConfig {
            window_ms: 10_000,
            min_calls: 20,
            failure_rate_pct: 50,
            slow_call_ms: 10_000,
            open_ms: 30_000,
            half_open_trials: 3,
        }
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.window_ms < 10 || self.min_calls == 0 || self.half_open_trials == 0 {
            return Err("breaker: window_ms ≥ 10, min_calls ≥ 1 and half_open_trials ≥ 1".into());
        }
        if !(1..=100).contains(&self.failure_rate_pct) {
            return Err("breaker: failure_rate_pct must be 1..=100".into());
        }
        if self.open_ms == 0 || self.slow_call_ms == 0 {
            return Err("breaker: open_ms and slow_call_ms must be positive".into());
        }
        Ok(())
    }
}

/// The exported encoding of `circuit_breaker_state{psp}`: 0 closed, 1 half-open, 2 open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub at_ms: i64,
    pub from: BreakerState,
    pub to: BreakerState,
}

#[derive(Clone, Debug)]
enum Phase {
    Closed,
    Open { since_ms: i64 },
    HalfOpen { admitted: u32, succeeded: u32 },
}

/// (bucket number, calls, failures); a bucket is a tenth of the window.
type Bucket = (i64, u32, u32);

#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    phase: Phase,
    buckets: VecDeque<Bucket>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            phase: Phase::Closed,
            buckets: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state as of `now_ms` (an open breaker past its open time reads as half-open).
    pub fn state(&self, now_ms: i64) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { since_ms } if now_ms - since_ms >= self.config.open_ms as i64 => {
                BreakerState::HalfOpen
            }
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go through now. A half-open breaker admits a bounded number of
    /// trial calls; the caller must `record` each admitted call's result.
    pub fn allow(&mut self, now_ms: i64) -> (bool, Option<Transition>) {
        let mut transition = None;
        if let Phase::Open { since_ms } = self.phase
            && now_ms - since_ms >= self.config.open_ms as i64
        {
            self.phase = Phase::HalfOpen {
                admitted: 0,
                succeeded: 0,
            };
            transition = Some(Transition {
                at_ms: now_ms,
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
            });
        }
        let allowed = match &mut self.phase {
            Phase::Closed => true,
            Phase::Open { .. } => false,
            Phase::HalfOpen { admitted, .. } => {
                if *admitted < self.config.half_open_trials {
                    *admitted += 1;
                    true
                } else {
                    false
                }
            }
        };
        (allowed, transition)
    }

    /// Whether a call would be allowed, without admitting it (for routing).
    pub fn would_allow(&self, now_ms: i64) -> bool {
        match &self.phase {
            Phase::Closed => true,
            Phase::Open { since_ms } => now_ms - since_ms >= self.config.open_ms as i64,
            Phase::HalfOpen { admitted, .. } => *admitted < self.config.half_open_trials,
        }
    }

    /// Records a finished call. `failed` is the PSP's own failure (soft failure, no answer);
    /// a call slower than the slow-call threshold counts as failed too.
    pub fn record(&mut self, now_ms: i64, failed: bool, duration_ms: u64) -> Option<Transition> {
        let failed = failed || duration_ms > self.config.slow_call_ms;
        match &mut self.phase {
            Phase::Closed => {
                self.count(now_ms, failed);
                let (calls, failures) = self.totals();
                let rate_exceeded = u64::from(failures) * 100
                    >= u64::from(self.config.failure_rate_pct) * u64::from(calls);
                if calls >= self.config.min_calls && rate_exceeded {
                    return Some(self.open(now_ms, BreakerState::Closed));
                }
                None
            }
            // A late result from before the breaker opened changes nothing.
            Phase::Open { .. } => None,
            Phase::HalfOpen { succeeded, .. } => {
                if failed {
                    return Some(self.open(now_ms, BreakerState::HalfOpen));
                }
                *succeeded += 1;
                if *succeeded >= self.config.half_open_trials {
                    self.phase = Phase::Closed;
                    self.buckets.clear();
                    return Some(Transition {
                        at_ms: now_ms,
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Closed,
                    });
                }
                None
            }
        }
    }

    /// Forces the breaker open (an operator disabling the PSP, or a crash-looping adapter).
    pub fn force_open(&mut self, now_ms: i64) -> Option<Transition> {
        let from = self.state(now_ms);
        let t = self.open(now_ms, from);
        (from != BreakerState::Open).then_some(t)
    }

    /// Calls and failures in the window, for health reporting.
    pub fn window(&mut self, now_ms: i64) -> (u32, u32) {
        self.expire(now_ms);
        self.totals()
    }

    fn open(&mut self, now_ms: i64, from: BreakerState) -> Transition {
        self.phase = Phase::Open { since_ms: now_ms };
        self.buckets.clear();
        Transition {
            at_ms: now_ms,
            from,
            to: BreakerState::Open,
        }
    }

    fn count(&mut self, now_ms: i64, failed: bool) {
        self.expire(now_ms);
        let second = now_ms.div_euclid(self.bucket_ms());
        match self.buckets.back_mut() {
            Some((s, calls, failures)) if *s == second => {
                *calls += 1;
                *failures += u32::from(failed);
            }
            _ => self.buckets.push_back((second, 1, u32::from(failed))),
        }
    }

    fn bucket_ms(&self) -> i64 {
        (self.config.window_ms as i64 / 10).max(1)
    }

    fn expire(&mut self, now_ms: i64) {
        let oldest = (now_ms - self.config.window_ms as i64).div_euclid(self.bucket_ms());
        while self.buckets.front().is_some_and(|(s, _, _)| *s <= oldest) {
            self.buckets.pop_front();
        }
    }

    fn totals(&self) -> (u32, u32) {
        self.buckets
            .iter()
            .fold((0, 0), |(c, f), (_, calls, failures)| {
                (c + calls, f + failures)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            min_calls: 10,
            ..BreakerConfig::default()
        })
    }

    #[test]
    fn opens_at_the_failure_rate_once_enough_calls_were_seen() {
        let mut b = breaker();
        // Nine failures: fewer than min_calls, still closed.
        for i in 0..9 {
            assert_eq!(b.record(i * 100, true, 5), None);
        }
        let t = b.record(950, true, 5).expect("the tenth failure opens it");
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(b.state(1_000), BreakerState::Open);
        assert!(!b.allow(1_000).0);
    }

    #[test]
    fn stays_closed_below_the_rate_and_forgets_old_calls() {
        let mut b = breaker();
        for i in 0..20 {
            // A third of the calls fail, spread out: below 50% at every point.
            assert_eq!(b.record(i * 10, i % 3 == 0, 5), None);
        }
        // Once the window has passed, the old calls are gone: 10 fresh failures out of 10.
        let mut opened = None;
        for i in 0..10 {
            opened = opened.or(b.record(12_000 + i, true, 5));
        }
        assert!(opened.is_some());
    }

    #[test]
    fn slow_calls_count_as_failures() {
        let mut b = breaker();
        let mut opened = None;
        for i in 0..10 {
            opened = opened.or(b.record(i, false, 10_001));
        }
        assert!(opened.is_some(), "ten successful but slow calls open it");
        let mut b = breaker();
        for i in 0..10 {
            assert_eq!(
                b.record(i, false, 10_000),
                None,
                "exactly the threshold is not slow"
            );
        }
    }

    #[test]
    fn half_opens_after_the_open_time_and_closes_after_trial_successes() {
        let mut b = breaker();
        for i in 0..10 {
            b.record(i, true, 5);
        }
        assert_eq!(b.state(29_999), BreakerState::Open);
        assert!(!b.allow(29_999).0);
        let (allowed, t) = b.allow(30_009);
        assert!(allowed);
        assert_eq!(t.map(|t| t.to), Some(BreakerState::HalfOpen));
        assert!(b.allow(30_010).0 && b.allow(30_011).0);
        assert!(!b.allow(30_012).0, "only three trial calls");
        assert_eq!(b.record(30_100, false, 5), None);
        assert_eq!(b.record(30_101, false, 5), None);
        let closed = b.record(30_102, false, 5).expect("third success closes");
        assert_eq!(
            (closed.from, closed.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert!(b.allow(30_103).0);
    }

    #[test]
    fn a_failed_trial_reopens_it() {
        let mut b = breaker();
        for i in 0..10 {
            b.record(i, true, 5);
        }
        assert!(b.allow(31_000).0);
        let t = b.record(31_001, true, 5).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
        assert!(!b.allow(31_002).0);
        assert_eq!(
            b.state(61_001),
            BreakerState::HalfOpen,
            "open time starts again"
        );
    }
}
