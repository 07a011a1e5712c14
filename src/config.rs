//! `rialto serve`'s configuration: a TOML file (every key optional) overridden by flags.
//! See `rialto.example.toml` for every key and its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use rialto_actors::{EngineConfig, PspRoute};
use rialto_sim::SimConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub engine: EngineSection,
    pub api: ApiSection,
    pub psp: Vec<PspSection>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: ([127, 0, 0, 1], 8080).into(),
            ops_listen: ([127, 0, 0, 1], 9464).into(),
            data_dir: PathBuf::from("./rialto-data"),
            engine: EngineSection::default(),
            api: ApiSection::default(),
            psp: ["sim_a", "sim_b", "sim_c"]
                .into_iter()
                .map(|id| PspSection {
                    id: id.to_string(),
                    ..PspSection::default()
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub psp_call_timeout_ms: u64,
    pub status_query_backoff_ms: u64,
    pub status_query_attempts_max: u32,
    pub psp_inflight_max: usize,
    pub transactions_max: usize,
    pub sweep_interval_ms: u64,
    pub authorization_ttl_s: u64,
}

impl Default for EngineSection {
    fn default() -> EngineSection {
        let d = EngineConfig::default();
        EngineSection {
            psp_call_timeout_ms: d.psp_call_timeout.as_millis() as u64,
            status_query_backoff_ms: d.status_query_backoff.as_millis() as u64,
            status_query_attempts_max: d.status_query_attempts_max,
            psp_inflight_max: d.psp_inflight_max,
            transactions_max: d.transactions_max,
            sweep_interval_ms: d.sweep_interval.as_millis() as u64,
            authorization_ttl_s: d.authorization_ttl.as_secs(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub body_bytes_max: usize,
    pub request_timeout_ms: u64,
}

impl Default for ApiSection {
    fn default() -> ApiSection {
        let d = rialto_api::ApiConfig::default();
        ApiSection {
            body_bytes_max: d.body_bytes_max,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PspSection {
    pub id: String,
    /// Only `sim` (in-process simulator) for now.
    pub kind: String,
    pub priority: u32,
    pub weight: u32,
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    pub decline_ppm: u32,
    pub soft_failure_ppm: u32,
    pub seed: u64,
}

impl Default for PspSection {
    fn default() -> PspSection {
        let sim = SimConfig::new("sim");
        PspSection {
            id: String::new(),
            kind: "sim".into(),
            priority: 1,
            weight: 1,
            latency_ms: sim.latency.as_millis() as u64,
            latency_jitter_ms: sim.latency_jitter.as_millis() as u64,
            decline_ppm: 0,
            soft_failure_ppm: 0,
            seed: sim.seed,
        }
    }
}

impl Config {
    pub fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
        let config: Config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        if config.psp.is_empty() {
            bail!("at least one [[psp]] is required");
        }
        for (i, psp) in config.psp.iter().enumerate() {
            if psp.id.is_empty()
                || !psp
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                bail!("psp #{i}: id must be non-empty letters, digits and `_`");
            }
            if config.psp[..i].iter().any(|other| other.id == psp.id) {
                bail!("psp `{}` is configured twice", psp.id);
            }
            if psp.kind != "sim" {
                bail!(
                    "psp `{}`: unknown kind `{}` (supported: sim)",
                    psp.id,
                    psp.kind
                );
            }
            if psp.decline_ppm + psp.soft_failure_ppm > 1_000_000 {
                bail!("psp `{}`: rates add up to more than 1,000,000 ppm", psp.id);
            }
        }
        let engine = config.engine_config();
        engine.validate().map_err(anyhow::Error::msg)?;
        if Duration::from_millis(config.api.request_timeout_ms) <= engine.psp_call_timeout {
            bail!("api.request_timeout_ms must exceed engine.psp_call_timeout_ms (timeouts nest)");
        }
        Ok(config)
    }

    pub fn engine_config(&self) -> EngineConfig {
        let e = &self.engine;
        EngineConfig {
            psp_call_timeout: Duration::from_millis(e.psp_call_timeout_ms),
            status_query_backoff: Duration::from_millis(e.status_query_backoff_ms),
            status_query_attempts_max: e.status_query_attempts_max,
            psp_inflight_max: e.psp_inflight_max,
            transactions_max: e.transactions_max,
            sweep_interval: Duration::from_millis(e.sweep_interval_ms),
            authorization_ttl: Duration::from_secs(e.authorization_ttl_s),
            ..EngineConfig::default()
        }
    }

    pub fn api_config(&self) -> rialto_api::ApiConfig {
        rialto_api::ApiConfig {
            body_bytes_max: self.api.body_bytes_max,
            request_timeout: Duration::from_millis(self.api.request_timeout_ms),
        }
    }

    pub fn routes(&self) -> Vec<PspRoute> {
        self.psp
            .iter()
            .map(|p| PspRoute {
                id: p.id.clone(),
                priority: p.priority,
                weight: p.weight,
            })
            .collect()
    }

    pub fn sims(&self) -> Vec<SimConfig> {
        self.psp
            .iter()
            .map(|p| SimConfig {
                latency: Duration::from_millis(p.latency_ms),
                latency_jitter: Duration::from_millis(p.latency_jitter_ms),
                decline_ppm: p.decline_ppm,
                soft_failure_ppm: p.soft_failure_ppm,
                seed: p.seed,
                ..SimConfig::new(&p.id)
            })
            .collect()
    }
}
