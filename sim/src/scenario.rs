//! Scenario files: what `rialto sim` runs. A scenario names its PSPs (and their behaviour and
//! incidents), the load shape and the payment mix; the built-in ones ship in
//! `sim/scenarios/*.toml` and are compiled into the binary. The format is documented in
//! `sim/scenarios/README.md`.

use std::time::Duration;

use serde::Deserialize;

use crate::spec::PspSpec;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub load: LoadSpec,
    #[serde(default)]
    pub mix: MixSpec,
    /// Overrides for the in-process Rialto (ignored with `--target`).
    #[serde(default)]
    pub engine: EngineOverrides,
    #[serde(default)]
    pub psp: Vec<PspSpec>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoadMode {
    /// Virtual users, each waiting for its answer and thinking before the next payment.
    Closed,
    /// A fixed arrival rate, whatever the answers; latency counts from the scheduled start,
    /// so a slow server cannot hide its slowness (no coordinated omission).
    Open,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    pub mode: LoadMode,
    /// Closed: peak virtual users, reached linearly over `ramp_ms`.
    #[serde(default)]
    pub vus: u32,
    /// Open: arrivals per second at peak, reached linearly over `ramp_ms`.
    #[serde(default)]
    pub rate_per_s: u32,
    /// Open: arrivals beyond this many in flight are counted as dropped, not sent.
    #[serde(default = "default_in_flight_max")]
    pub in_flight_max: u32,
    #[serde(default)]
    pub ramp_ms: u64,
    pub hold_ms: u64,
    #[serde(default)]
    pub think_min_ms: u64,
    #[serde(default)]
    pub think_max_ms: u64,
}

fn default_in_flight_max() -> u32 {
    20_000
}

impl LoadSpec {
    /// Fits the load to `connections` open at once, what the process's open files limit
    /// leaves it (each request in flight holds one). An open load's `in_flight_max` is
    /// lowered to it, and arrivals beyond are counted as dropped rather than failing for
    /// want of a descriptor; the new maximum is returned, to be told. A closed load with
    /// more users than that is refused: fewer users would be another scenario.
    pub fn fit_connections(&mut self, connections: usize) -> Result<Option<u32>, String> {
        let connections = u32::try_from(connections).unwrap_or(u32::MAX);
        match self.mode {
            LoadMode::Closed if self.vus > connections => Err(format!(
                "{} virtual users need as many connections, and the open files limit leaves {connections}; raise it (ulimit -n) or use fewer users",
                self.vus
            )),
            LoadMode::Open if self.in_flight_max > connections => {
                self.in_flight_max = connections;
                Ok(Some(connections))
            }
            _ => Ok(None),
        }
    }
}

/// Shares of payments, in whole percent; the rest are plain approvals (`pm_sim_approve`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixSpec {
    /// Authorized first, then captured with a second request.
    pub manual_capture_pct: u32,
    /// Captured, then half refunded with another request.
    pub refund_pct: u32,
    /// `pm_sim_decline`: a hard decline.
    pub decline_pct: u32,
    /// `pm_sim_timeout`: the PSP answers too late; resolved by a status query.
    pub timeout_pct: u32,
    /// `pm_card_…`: the outcome is drawn from the PSP's configured rates.
    pub card_pct: u32,
    /// Independent of the shares above: payments read back with `GET /v1/payments/{id}` after
    /// their last request, as a checkout page confirming its result does.
    pub lookup_pct: u32,
    pub currency: String,
    pub amount_min: i64,
    pub amount_max: i64,
}

impl Default for MixSpec {
    fn default() -> MixSpec {
        MixSpec {
            manual_capture_pct: 0,
            refund_pct: 0,
            decline_pct: 0,
            timeout_pct: 0,
            card_pct: 0,
            lookup_pct: 0,
            currency: "USD".into(),
            amount_min: 100,
            amount_max: 50_000,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOverrides {
    pub psp_call_timeout_ms: Option<u64>,
    pub status_query_backoff_ms: Option<u64>,
    pub status_query_attempts_max: Option<u32>,
    pub sweep_interval_ms: Option<u64>,
    pub psp_inflight_max: Option<usize>,
    /// The breakers' slow-call threshold: a scenario whose PSP is slow on purpose sets it
    /// well above that PSP's latency, so that a stalled machine does not trip it.
    pub slow_call_ms: Option<u64>,
}

/// The scenarios shipped with Rialto.
pub const BUILT_IN: [(&str, &str); 6] = [
    (
        "seed-profile",
        include_str!("../scenarios/seed-profile.toml"),
    ),
    (
        "max-throughput",
        include_str!("../scenarios/max-throughput.toml"),
    ),
    (
        "latency-spike",
        include_str!("../scenarios/latency-spike.toml"),
    ),
    ("drop-1pct", include_str!("../scenarios/drop-1pct.toml")),
    ("psp-outage", include_str!("../scenarios/psp-outage.toml")),
    ("memory-10k", include_str!("../scenarios/memory-10k.toml")),
];

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn built_in(name: &str) -> Result<Scenario, String> {
        let (_, text) = BUILT_IN.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<_> = BUILT_IN.iter().map(|(n, _)| *n).collect();
            format!("no built-in scenario `{name}` (have: {})", names.join(", "))
        })?;
        Scenario::parse(text)
    }

    pub fn validate(&self) -> Result<(), String> {
        let l = &self.load;
        match l.mode {
            LoadMode::Closed if l.vus == 0 => return Err("closed load needs vus > 0".into()),
            LoadMode::Open if l.rate_per_s == 0 => {
                return Err("open load needs rate_per_s > 0".into());
            }
            _ => {}
        }
        if l.hold_ms == 0 {
            return Err("hold_ms must be positive".into());
        }
        if l.think_max_ms < l.think_min_ms {
            return Err("think_max_ms is below think_min_ms".into());
        }
        let m = &self.mix;
        let total =
            m.manual_capture_pct + m.refund_pct + m.decline_pct + m.timeout_pct + m.card_pct;
        if total > 100 {
            return Err(format!("the mix adds up to {total}%"));
        }
        if m.lookup_pct > 100 {
            return Err(format!("lookup_pct is {}%", m.lookup_pct));
        }
        if m.amount_min <= 0 || m.amount_max < m.amount_min {
            return Err("amounts must satisfy 0 < amount_min <= amount_max".into());
        }
        for p in &self.psp {
            p.validate()?;
        }
        Ok(())
    }

    /// Ramp plus hold, scaled.
    pub fn duration(&self, scale: f64) -> Duration {
        scaled(self.load.ramp_ms + self.load.hold_ms, scale)
    }
}

pub fn scaled(ms: u64, scale: f64) -> Duration {
    Duration::from_secs_f64(ms as f64 / 1_000.0 * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_scenario_parses() {
        for (name, _) in BUILT_IN {
            let s = Scenario::built_in(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.name, name);
            assert!(!s.psp.is_empty(), "{name} names its PSPs");
        }
        assert!(Scenario::built_in("nope").is_err());
    }

    #[test]
    fn the_seed_profile_matches_the_source() {
        let s = Scenario::built_in("seed-profile").unwrap();
        assert_eq!((s.load.mode, s.load.vus), (LoadMode::Closed, 400));
        assert_eq!((s.load.ramp_ms, s.load.hold_ms), (300_000, 900_000));
        assert_eq!((s.load.think_min_ms, s.load.think_max_ms), (1_000, 3_000));
        assert_eq!(s.duration(0.02), Duration::from_secs(24));
    }

    #[test]
    fn a_load_is_fitted_to_the_connections_it_may_open() {
        let mut open = Scenario::built_in("memory-10k").unwrap().load;
        assert_eq!(open.in_flight_max, 15_000);
        assert_eq!(open.fit_connections(20_000), Ok(None));
        assert_eq!(open.in_flight_max, 15_000);
        assert_eq!(open.fit_connections(9_000), Ok(Some(9_000)));
        assert_eq!(open.in_flight_max, 9_000);
        let mut closed = Scenario::built_in("max-throughput").unwrap().load;
        assert_eq!(closed.fit_connections(400), Ok(None));
        let refused = closed.fit_connections(399).unwrap_err();
        assert!(refused.contains("400 virtual users"), "{refused}");
        assert_eq!(closed.vus, 400, "a closed load is never changed");
    }

    #[test]
    fn inconsistent_scenarios_are_refused() {
        let base = Scenario::built_in("max-throughput").unwrap();
        let mut bad = base.clone();
        bad.mix.refund_pct = 60;
        bad.mix.decline_pct = 50;
        assert!(bad.validate().is_err());
        let mut bad = base.clone();
        bad.load.vus = 0;
        assert!(bad.validate().is_err());
        let mut bad = base.clone();
        bad.load.think_min_ms = 10;
        assert!(bad.validate().is_err());
        let mut bad = base;
        bad.mix.lookup_pct = 101;
        assert!(bad.validate().is_err());
    }
}
