//! Small pure policies: retry backoff (R2.3) and the per-client token bucket (R2.5).

/// Wait before retry number `attempt` (1-based) of a soft failure: 2^attempt s plus a jitter
/// of 0..1000 ms (`jitter_draw` is any uniform value; its remainder is used), capped by
/// `cap_ms`. The source's rule, so retries of many payments spread out.
pub fn backoff_ms(attempt: u32, jitter_draw: u64, cap_ms: u64) -> u64 {
    let base = 1_000u64.saturating_mul(1u64 << attempt.min(20));
    base.saturating_add(jitter_draw % 1_000).min(cap_ms)
}

/// A token bucket in exact integers: a token is 60,000 units and the bucket refills
/// `per_minute` units every millisecond, so no refill ever loses a fraction. It holds `burst`
/// tokens at most.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    per_minute: u64,
    capacity: u64,
    units: u64,
    last_ms: i64,
}

const TOKEN: u64 = 60_000;

impl TokenBucket {
    /// A full bucket. `per_minute` and `burst` must be positive.
    pub fn new(per_minute: u32, burst: u32, now_ms: i64) -> TokenBucket {
        assert!(per_minute > 0 && burst > 0);
        let capacity = u64::from(burst) * TOKEN;
        TokenBucket {
            per_minute: u64::from(per_minute),
            capacity,
            units: capacity,
            last_ms: now_ms,
        }
    }

    /// Takes one token, or says how many milliseconds until one is available.
    pub fn try_take(&mut self, now_ms: i64) -> Result<(), u64> {
        let elapsed = u64::try_from(now_ms - self.last_ms).unwrap_or(0);
        self.units = self
            .units
            .saturating_add(elapsed.saturating_mul(self.per_minute))
            .min(self.capacity);
        self.last_ms = self.last_ms.max(now_ms);
        if self.units >= TOKEN {
            self.units -= TOKEN;
            return Ok(());
        }
        Err((TOKEN - self.units).div_ceil(self.per_minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let check =
            |attempt, jitter, expected| assert_eq!(backoff_ms(attempt, jitter, 60_000), expected);
        check(1, 0, 2_000);
        check(1, 999, 2_999);
        check(2, 1_500, 4_500);
        check(3, 0, 8_000);
        assert_eq!(backoff_ms(30, 0, 60_000), 60_000, "capped");
    }

    #[test]
    fn the_bucket_allows_its_burst_then_its_sustained_rate() {
        // 1000/min sustained, 100 burst: the source's numbers.
        let mut b = TokenBucket::new(1_000, 100, 0);
        for _ in 0..100 {
            assert_eq!(b.try_take(0), Ok(()));
        }
        let wait = b.try_take(0).unwrap_err();
        assert_eq!(wait, 60, "one token every 60 ms at 1000/min");
        assert!(b.try_take(59).is_err());
        assert_eq!(b.try_take(60), Ok(()));
        // A minute of refill gives back at most the burst.
        let mut b = TokenBucket::new(1_000, 100, 0);
        for _ in 0..100 {
            b.try_take(0).unwrap();
        }
        let later = 10 * 60_000;
        let taken = (0..200).filter(|_| b.try_take(later).is_ok()).count();
        assert_eq!(taken, 100);
    }
}
