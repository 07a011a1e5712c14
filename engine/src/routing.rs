//! Choosing a PSP for a new payment. Pure: the caller passes each candidate's configuration
//! and current availability, and a per-payment value that spreads equal-priority traffic by
//! weight deterministically.

/// One PSP as routing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub psp: String,
    /// Lower goes first; PSPs of the best available priority share traffic by weight.
    pub priority: u32,
    pub weight: u32,
    pub available: bool,
}

/// The PSP for a payment, or `None` when no candidate is available. `spread` is any value
/// that is uniform over payments (a hash of the payment id).
pub fn choose(candidates: &[Candidate], spread: u64) -> Option<&str> {
    let best = candidates
        .iter()
        .filter(|c| c.available && c.weight > 0)
        .map(|c| c.priority)
        .min()?;
    let tier = || {
        candidates
            .iter()
            .filter(move |c| c.available && c.weight > 0 && c.priority == best)
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
        }
    }

    #[test]
    fn best_priority_wins_and_unavailable_psps_are_skipped() {
        let psps = [c("a", 1, 1, true), c("b", 2, 1, true)];
        assert_eq!(choose(&psps, 7), Some("a"));
        let psps = [c("a", 1, 1, false), c("b", 2, 1, true)];
        assert_eq!(choose(&psps, 7), Some("b"));
        let psps = [c("a", 1, 1, false), c("b", 2, 0, true)];
        assert_eq!(choose(&psps, 7), None);
    }

    #[test]
    fn equal_priority_shares_by_weight() {
        let psps = [c("a", 1, 3, true), c("b", 1, 1, true)];
        let picks: Vec<_> = (0..4).map(|s| choose(&psps, s).unwrap()).collect();
        assert_eq!(picks, ["a", "a", "a", "b"]);
    }
}
