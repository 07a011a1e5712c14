//! Simulated PSPs. [`SimPsp`] is an in-process PSP with configurable latency and outcome
//! rates, plus test payment methods that force an outcome:
//!
//! | payment method      | authorize                                                        |
//! |---------------------|------------------------------------------------------------------|
//! | `pm_sim_approve`    | approved                                                         |
//! | `pm_sim_decline`    | hard decline `card_declined`                                     |
//! | `pm_sim_timeout`    | approved at the PSP, but the answer never arrives in time; a status query says approved |
//! | `pm_sim_psp_crash`  | the adapter panics mid-call (tests supervision)                  |
//! | anything else       | drawn from the configured rates, deterministically per idempotency key |
//!
//! Capture, void and refund are approved. Every operation is recorded by its idempotency key:
//! sending it again replays the recorded answer, and `status` reports it, like a real PSP.
//! The book lives in memory, so after a crash of the whole process the PSP "forgets" and
//! answers `NotFound`, which Rialto must handle safely anyway.

use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;

use rialto_actors::psp::{Capabilities, OperationStatus, PspAdapter, PspOutcome, PspRequest};
use rialto_engine::Currency;

/// Outcome rates in parts per million for payment methods that do not force one; whatever is
/// left after declines and soft failures is approved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    pub id: String,
    pub latency: Duration,
    /// Extra latency drawn uniformly from `0..=latency_jitter` per call.
    pub latency_jitter: Duration,
    pub decline_ppm: u32,
    pub soft_failure_ppm: u32,
    /// How long a `pm_sim_timeout` authorization keeps the caller waiting.
    pub hang: Duration,
    pub seed: u64,
}

impl SimConfig {
    pub fn new(id: &str) -> SimConfig {
        SimConfig {
            id: id.to_string(),
            latency: Duration::from_millis(2),
            latency_jitter: Duration::from_millis(3),
            decline_ppm: 0,
            soft_failure_ppm: 0,
            hang: Duration::from_secs(3_600),
            seed: 0x5eed,
        }
    }
}

#[derive(Clone, Debug)]
enum Record {
    Succeeded { psp_reference: String },
    Declined { code: String, message: String },
}

pub struct SimPsp {
    config: SimConfig,
    book: DashMap<String, Record>,
}

impl SimPsp {
    pub fn new(config: SimConfig) -> SimPsp {
        assert!(config.decline_ppm + config.soft_failure_ppm <= 1_000_000);
        SimPsp {
            config,
            book: DashMap::new(),
        }
    }

    /// A uniform value in `0..1_000_000` per (seed, key, salt): the same request always
    /// draws the same value, so a run repeats exactly.
    fn draw(&self, key: &str, salt: u64) -> u64 {
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        splitmix64(h ^ self.config.seed ^ salt) % 1_000_000
    }

    async fn think(&self, key: &str) {
        let jitter_us = self.config.latency_jitter.as_micros() as u64;
        let extra = if jitter_us == 0 {
            0
        } else {
            self.draw(key, 1) * (jitter_us + 1) / 1_000_000
        };
        let total = self.config.latency + Duration::from_micros(extra);
        if !total.is_zero() {
            tokio::time::sleep(total).await;
        }
    }

    fn reference(&self, key: &str) -> String {
        format!(
            "{}_{:012x}",
            self.config.id,
            self.draw(key, 2) * 1_000_003 + self.draw(key, 3)
        )
    }

    /// Records the first answer for a key and returns whatever is recorded.
    fn record(&self, key: &str, record: Record) -> PspOutcome {
        let stored = self.book.entry(key.to_string()).or_insert(record).clone();
        match stored {
            Record::Succeeded { psp_reference } => PspOutcome::Approved { psp_reference },
            Record::Declined { code, message } => PspOutcome::HardDecline { code, message },
        }
    }

    async fn approve(&self, req: &PspRequest) -> PspOutcome {
        self.think(&req.idempotency_key).await;
        let psp_reference = self.reference(&req.idempotency_key);
        self.record(&req.idempotency_key, Record::Succeeded { psp_reference })
    }
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
        Capabilities {
            partial_capture: true,
            partial_refund: true,
            void: true,
            currencies: Currency::ALL.to_vec(),
        }
    }

    async fn authorize(&self, req: &PspRequest) -> PspOutcome {
        let key = &req.idempotency_key;
        if let Some(done) = self.book.get(key).map(|r| r.clone()) {
            return self.record(key, done);
        }
        match req.payment_method.as_str() {
            "pm_sim_approve" => self.approve(req).await,
            "pm_sim_decline" => {
                self.think(key).await;
                self.record(
                    key,
                    Record::Declined {
                        code: "card_declined".into(),
                        message: "the card was declined".into(),
                    },
                )
            }
            "pm_sim_timeout" => {
                // The PSP acts, but its answer arrives long after any caller gave up.
                let outcome = self.record(
                    key,
                    Record::Succeeded {
                        psp_reference: self.reference(key),
                    },
                );
                tokio::time::sleep(self.config.hang).await;
                outcome
            }
            "pm_sim_psp_crash" => panic!("simulated adapter crash for {}", req.payment_id),
            _ => {
                let draw = self.draw(key, 0);
                let declines = u64::from(self.config.decline_ppm);
                let soft = declines + u64::from(self.config.soft_failure_ppm);
                if draw < declines {
                    self.think(key).await;
                    self.record(
                        key,
                        Record::Declined {
                            code: "do_not_honor".into(),
                            message: "the issuer declined".into(),
                        },
                    )
                } else if draw < soft {
                    // Nothing is recorded: a soft failure means the PSP did not act.
                    self.think(key).await;
                    PspOutcome::SoftFailure {
                        reason: "issuer unavailable".into(),
                    }
                } else {
                    self.approve(req).await
                }
            }
        }
    }

    async fn capture(&self, req: &PspRequest) -> PspOutcome {
        self.approve(req).await
    }

    async fn void(&self, req: &PspRequest) -> PspOutcome {
        self.approve(req).await
    }

    async fn refund(&self, req: &PspRequest) -> PspOutcome {
        self.approve(req).await
    }

    async fn status(&self, req: &PspRequest) -> OperationStatus {
        self.think(&req.idempotency_key).await;
        match self.book.get(&req.idempotency_key).map(|r| r.clone()) {
            None => OperationStatus::NotFound,
            Some(Record::Succeeded { psp_reference }) => {
                OperationStatus::Succeeded { psp_reference }
            }
            Some(Record::Declined { code, message }) => OperationStatus::Declined { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rialto_engine::Money;

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
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
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

    #[tokio::test]
    async fn rates_are_deterministic_per_seed_and_close_to_configured() {
        let config = SimConfig {
            decline_ppm: 200_000,
            soft_failure_ppm: 100_000,
            ..fast("sim")
        };
        let count = |psp: SimPsp| async move {
            let mut declines = 0;
            let mut soft = 0;
            for i in 0..2_000 {
                match psp.authorize(&req(&format!("k{i}"), "pm_card")).await {
                    PspOutcome::HardDecline { .. } => declines += 1,
                    PspOutcome::SoftFailure { .. } => soft += 1,
                    _ => {}
                }
            }
            (declines, soft)
        };
        let a = count(SimPsp::new(config.clone())).await;
        let b = count(SimPsp::new(config.clone())).await;
        assert_eq!(a, b, "same seed, same run");
        assert!((300..500).contains(&a.0), "declines {a:?}");
        assert!((130..270).contains(&a.1), "soft failures {a:?}");
    }
}
