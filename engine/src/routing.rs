//! Choosing a PSP for a payment (R2.6). Pure: the caller passes each candidate's
//! configuration and current health, and a per-payment value that spreads traffic over PSPs
//! of equal priority by weight, deterministically.
//!
//! Unavailable PSPs (breaker open, bulkhead full, disabled, or excluded by the caller) are
//! skipped, and the best priority among the rest wins: leaving a priority tier is the
//! breaker's decision, made on enough calls. Within the tier, healthy PSPs — recent error rate
//! and p95 latency within the hints' limits — are preferred over degraded ones, and share the
//! traffic by weight; only when the whole tier is degraded does every member share it.

/// Limits beyond which a PSP counts as degraded: the source's adapter SLO (p95 ≤ 1200 ms,
/// error rate < 2%).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hints {
    pub error_rate_pct_max: u32,
    pub latency_p95_ms_max: u64,
}

impl Default for Hints {
    fn default() -> Hints {
        Hints {
            error_rate_pct_max: 2,
            latency_p95_ms_max: 1_200,
        }
    }
}

/// One PSP as routing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub psp: String,
    /// Lower goes first; PSPs of the best usable priority share traffic by weight.
    pub priority: u32,
    pub weight: u32,
    pub available: bool,
    pub error_rate_pct: u32,
    pub latency_p95_ms: u64,
}

impl Candidate {
    fn usable(&self) -> bool {
        self.available && self.weight > 0
    }

    fn healthy(&self, hints: &Hints) -> bool {
        self.error_rate_pct <= hints.error_rate_pct_max
            && self.latency_p95_ms <= hints.latency_p95_ms_max
    }
}

/// The PSP for a payment, or `None` when no candidate is available. `spread` is any value
/// that is uniform over payments (a hash of the payment id).
pub fn choose<'a>(candidates: &'a [Candidate], hints: &Hints, spread: u64) -> Option<&'a str> {
    let best = candidates
        .iter()
        .filter(|c| c.usable())
        .map(|c| c.priority)
        .min()?;
    let in_tier = |c: &&Candidate| c.usable() && c.priority == best;
    let any_healthy = candidates.iter().filter(in_tier).any(|c| c.healthy(hints));
    let tier = || {
        candidates
            .iter()
            .filter(in_tier)
            .filter(move |c| !any_healthy || c.healthy(hints))
    };
    let total: u64 = tier().map(|c| u64::from(c.weight)).sum();
    let mut point = spread % total;
    for c in tier() {
        let w = u64::from(c.weight);
        if point < w {
            return Some(&c.psp);
        }
        point -= w;
    }
    unreachable!("point < total always lands in the tier")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(psp: &str, priority: u32, weight: u32, available: bool) -> Candidate {
        Candidate {
            psp: psp.into(),
            priority,
            weight,
            available,
            error_rate_pct: 0,
            latency_p95_ms: 10,
        }
    }

    fn pick(cands: &[Candidate], spread: u64) -> Option<&str> {
        choose(cands, &Hints::default(), spread)
    }

    #[test]
    fn best_priority_wins_and_unavailable_psps_are_skipped() {
        assert_eq!(
            pick(&[c("a", 1, 1, true), c("b", 2, 1, true)], 7),
            Some("a")
        );
        assert_eq!(
            pick(&[c("a", 1, 1, false), c("b", 2, 1, true)], 7),
            Some("b")
        );
        assert_eq!(pick(&[c("a", 1, 1, false), c("b", 2, 0, true)], 7), None);
    }

    #[test]
    fn equal_priority_shares_by_weight() {
        let psps = [c("a", 1, 3, true), c("b", 1, 1, true)];
        let picks: Vec<_> = (0..4).map(|s| pick(&psps, s).unwrap()).collect();
        assert_eq!(picks, ["a", "a", "a", "b"]);
    }

    #[test]
    fn a_degraded_psp_yields_to_a_healthy_peer_but_keeps_its_tier() {
        let slow = Candidate {
            latency_p95_ms: 5_000,
            ..c("a", 1, 1, true)
        };
        let failing = Candidate {
            error_rate_pct: 10,
            ..c("a", 1, 1, true)
        };
        for degraded in [slow, failing] {
            for spread in 0..4 {
                assert_eq!(
                    pick(&[degraded.clone(), c("b", 1, 1, true)], spread),
                    Some("b")
                );
            }
            // A lower tier is reached only when the breaker (availability) says so.
            assert_eq!(pick(&[degraded.clone(), c("b", 2, 1, true)], 0), Some("a"));
            assert_eq!(pick(&[degraded.clone(), c("b", 1, 1, false)], 0), Some("a"));
        }
    }
}
