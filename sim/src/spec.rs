//! How a PSP is described in TOML, the same way in `rialto serve --config`, in
//! `rialto psp-sim --config` and in scenario files:
//!
//! ```toml
//! [[psp]]
//! id = "sim_a"
//! kind = "sim"                  # in-process simulator, or "http" (below)
//! priority = 1                  # lower goes first
//! weight = 1                    # share among equal priorities
//! latency = { kind = "lognormal", p50_ms = 80, p99_ms = 400 }   # or fixed { ms } / uniform { min_ms, max_ms }
//! decline_ppm = 20000           # for payment methods that do not force an outcome
//! soft_failure_ppm = 0
//! timeout_ppm = 0
//! seed = 24301
//! retention_ms = 3600000        # how long the simulator remembers an operation (resends, status)
//! records_max = 250000          # and how many at most (≈ 200 bytes each), oldest forgotten first
//! # kind = "http": url = "http://127.0.0.1:7001", secret = "…" (shared with `rialto psp-sim`)
//!
//! [[psp.incident]]
//! kind = "latency_spike"        # or "outage", or "drop" with drop_ppm
//! start_ms = 10000
//! end_ms = 20000
//! latency_ms = 12000
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use rialto_actors::psp::PspAdapter;
use rialto_actors::psp_http::HttpPsp;

use crate::psp::{
    Incident, IncidentKind, Latency, RECORDS_MAX_DEFAULT, RETENTION_DEFAULT, SimConfig, SimPsp,
};
use crate::scenario::scaled;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LatencySpec {
    Fixed { ms: u64 },
    Uniform { min_ms: u64, max_ms: u64 },
    Lognormal { p50_ms: u64, p99_ms: u64 },
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKindSpec {
    Outage,
    LatencySpike,
    Drop,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IncidentSpec {
    pub kind: IncidentKindSpec,
    pub start_ms: u64,
    pub end_ms: u64,
    pub latency_ms: Option<u64>,
    pub drop_ppm: Option<u32>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PspKind {
    #[default]
    Sim,
    Http,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PspSpec {
    pub id: String,
    pub kind: PspKind,
    pub priority: u32,
    pub weight: u32,
    pub latency: LatencySpec,
    pub decline_ppm: u32,
    pub soft_failure_ppm: u32,
    pub timeout_ppm: u32,
    pub hang_ms: u64,
    pub seed: u64,
    pub retention_ms: u64,
    pub records_max: usize,
    pub url: Option<String>,
    pub secret: Option<String>,
    /// This PSP's bulkhead, if not the engine's `psp_inflight_max` / `psp_queue_max`.
    pub inflight_max: Option<usize>,
    pub queue_max: Option<usize>,
    #[serde(rename = "incident")]
    pub incidents: Vec<IncidentSpec>,
}

impl Default for PspSpec {
    fn default() -> PspSpec {
        PspSpec {
            id: String::new(),
            kind: PspKind::Sim,
            priority: 1,
            weight: 1,
            latency: LatencySpec::Uniform {
                min_ms: 2,
                max_ms: 5,
            },
            decline_ppm: 0,
            soft_failure_ppm: 0,
            timeout_ppm: 0,
            hang_ms: 3_600_000,
            seed: 0x5eed,
            retention_ms: RETENTION_DEFAULT.as_millis() as u64,
            records_max: RECORDS_MAX_DEFAULT,
            url: None,
            secret: None,
            inflight_max: None,
            queue_max: None,
            incidents: Vec::new(),
        }
    }
}

/// A PSP ready for the engine, and its simulator when it is one (for its counters).
pub struct BuiltPsp {
    pub adapter: Arc<dyn PspAdapter>,
    pub sim: Option<Arc<SimPsp>>,
}

impl PspSpec {
    pub fn named(id: &str) -> PspSpec {
        PspSpec {
            id: id.to_string(),
            ..PspSpec::default()
        }
    }

    /// The simulator this spec describes, with every time (latencies, the incident schedule,
    /// the hang of a timed-out call, how long it remembers) multiplied by `scale`.
    pub fn sim_config(&self, scale: f64) -> Result<SimConfig, String> {
        let ms = |ms: u64| scaled(ms, scale);
        let incidents = self
            .incidents
            .iter()
            .map(|i| {
                let kind = match i.kind {
                    IncidentKindSpec::Outage => IncidentKind::Outage,
                    IncidentKindSpec::LatencySpike => IncidentKind::LatencySpike {
                        latency: ms(i.latency_ms.ok_or("a latency_spike needs latency_ms")?),
                    },
                    IncidentKindSpec::Drop => IncidentKind::Drop {
                        ppm: i.drop_ppm.ok_or("a drop incident needs drop_ppm")?,
                    },
                };
                Ok(Incident {
                    kind,
                    start: ms(i.start_ms),
                    end: ms(i.end_ms),
                })
            })
            .collect::<Result<Vec<_>, &str>>()
            .map_err(|e| format!("psp `{}`: {e}", self.id))?;
        let latency = match self.latency {
            LatencySpec::Fixed { ms: fixed } => Latency::Fixed(ms(fixed)),
            LatencySpec::Uniform { min_ms, max_ms } => {
                if max_ms < min_ms {
                    return Err(format!("psp `{}`: latency max_ms below min_ms", self.id));
                }
                Latency::Uniform {
                    min: ms(min_ms),
                    max: ms(max_ms),
                }
            }
            LatencySpec::Lognormal { p50_ms, p99_ms } => {
                if p99_ms < p50_ms {
                    return Err(format!("psp `{}`: latency p99_ms below p50_ms", self.id));
                }
                Latency::LogNormal {
                    p50: ms(p50_ms),
                    p99: ms(p99_ms),
                }
            }
        };
        let config = SimConfig {
            id: self.id.clone(),
            latency,
            decline_ppm: self.decline_ppm,
            soft_failure_ppm: self.soft_failure_ppm,
            timeout_ppm: self.timeout_ppm,
            hang: ms(self.hang_ms),
            seed: self.seed,
            incidents,
            retention: ms(self.retention_ms),
            records_max: self.records_max,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty()
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "psp id `{}` must be letters, digits and `_`",
                self.id
            ));
        }
        match self.kind {
            PspKind::Sim => self.sim_config(1.0).map(|_| ()),
            PspKind::Http
                if self.url.is_none() || self.secret.as_deref().is_none_or(str::is_empty) =>
            {
                Err(format!(
                    "psp `{}`: kind = \"http\" needs url and secret",
                    self.id
                ))
            }
            PspKind::Http => Ok(()),
        }
    }

    /// This PSP's bulkhead: the most calls in flight at once (`inflight_max`, else the
    /// engine's `psp_inflight_max`).
    pub fn bulkhead(&self, engine_inflight_max: usize) -> usize {
        self.inflight_max.unwrap_or(engine_inflight_max)
    }

    /// The adapter Rialto uses for this PSP: an in-process simulator (times scaled by `scale`)
    /// or the HTTP adapter, sized for this PSP's [`bulkhead`](Self::bulkhead).
    pub fn adapter(
        &self,
        scale: f64,
        call_timeout: Duration,
        engine_inflight_max: usize,
    ) -> Result<BuiltPsp, String> {
        self.validate()?;
        match self.kind {
            PspKind::Sim => {
                let sim = Arc::new(SimPsp::new(self.sim_config(scale)?));
                Ok(BuiltPsp {
                    adapter: sim.clone(),
                    sim: Some(sim),
                })
            }
            PspKind::Http => {
                let url = self.url.as_deref().unwrap_or_default();
                let secret = self.secret.as_deref().unwrap_or_default();
                let concurrency = self.bulkhead(engine_inflight_max);
                let http =
                    HttpPsp::new(&self.id, url, secret.as_bytes(), call_timeout, concurrency)?;
                Ok(BuiltPsp {
                    adapter: Arc::new(http),
                    sim: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_scale() {
        #[derive(Deserialize)]
        struct File {
            psp: Vec<PspSpec>,
        }
        let file: File = toml::from_str(
            r#"
            [[psp]]
            id = "slow"
            latency = { kind = "lognormal", p50_ms = 80, p99_ms = 400 }
            decline_ppm = 10000
            retention_ms = 600000
            records_max = 1000
            [[psp.incident]]
            kind = "latency_spike"
            start_ms = 10000
            end_ms = 20000
            latency_ms = 12000
            "#,
        )
        .unwrap();
        let config = file.psp[0].sim_config(0.5).unwrap();
        assert_eq!(config.incidents[0].start, Duration::from_secs(5));
        assert_eq!(config.incidents[0].end, Duration::from_secs(10));
        assert_eq!(
            config.incidents[0].kind,
            IncidentKind::LatencySpike {
                latency: Duration::from_secs(6)
            },
            "every time scales, latencies included"
        );
        assert_eq!(
            config.latency,
            Latency::LogNormal {
                p50: Duration::from_millis(40),
                p99: Duration::from_millis(200)
            }
        );
        assert_eq!(config.decline_ppm, 10_000);
        assert_eq!(config.retention, Duration::from_secs(300));
        assert_eq!(config.records_max, 1_000);
    }

    #[test]
    fn bad_specs_are_refused() {
        let bad = [
            PspSpec {
                id: "has space".into(),
                ..PspSpec::default()
            },
            PspSpec {
                decline_ppm: 900_000,
                soft_failure_ppm: 200_000,
                ..PspSpec::named("x")
            },
            PspSpec {
                kind: PspKind::Http,
                ..PspSpec::named("x")
            },
            PspSpec {
                latency: LatencySpec::Lognormal {
                    p50_ms: 10,
                    p99_ms: 5,
                },
                ..PspSpec::named("x")
            },
            PspSpec {
                incidents: vec![IncidentSpec {
                    kind: IncidentKindSpec::Drop,
                    start_ms: 0,
                    end_ms: 10,
                    latency_ms: None,
                    drop_ppm: None,
                }],
                ..PspSpec::named("x")
            },
            PspSpec {
                records_max: 0,
                ..PspSpec::named("x")
            },
            PspSpec {
                retention_ms: 0,
                ..PspSpec::named("x")
            },
        ];
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?}");
        }
        assert!(PspSpec::named("ok").validate().is_ok());
    }
}
