//! `rialto serve`'s configuration: a TOML file (every key optional) overridden by flags.
//! See `rialto.example.toml` for every key and its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use rialto_actors::{EngineConfig, PspRoute};
use rialto_engine::breaker::BreakerConfig;
use rialto_sim::spec::{PspKind, PspSpec};

const SCALED_GATEWAY_FLOOR: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub engine: EngineSection,
    pub api: ApiSection,
    pub psp: Vec<PspSpec>,
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
                .map(PspSpec::named)
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub psp_call_timeout_ms: u64,
    pub service_timeout_ms: u64,
    pub psp_queue_max: usize,
    pub retry_attempts_max: u32,
    pub retry_backoff_max_ms: u64,
    pub escalate_after_ms: u64,
    pub health_interval_ms: u64,
    pub breaker: BreakerSection,
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
            service_timeout_ms: d.service_timeout.as_millis() as u64,
            psp_queue_max: d.psp_queue_max,
            retry_attempts_max: d.retry_attempts_max,
            retry_backoff_max_ms: d.retry_backoff_max.as_millis() as u64,
            escalate_after_ms: d.escalate_after.as_millis() as u64,
            health_interval_ms: d.health_interval.as_millis() as u64,
            breaker: BreakerSection::default(),
            status_query_backoff_ms: d.status_query_backoff.as_millis() as u64,
            status_query_attempts_max: d.status_query_attempts_max,
            psp_inflight_max: d.psp_inflight_max,
            transactions_max: d.transactions_max,
            sweep_interval_ms: d.sweep_interval.as_millis() as u64,
            authorization_ttl_s: d.authorization_ttl.as_secs(),
        }
    }
}

/// The circuit breaker every PSP gets (R2.1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSection {
    pub window_ms: u64,
    pub min_calls: u32,
    pub failure_rate_pct: u32,
    pub slow_call_ms: u64,
    pub open_ms: u64,
    pub half_open_trials: u32,
}

impl Default for BreakerSection {
    fn default() -> BreakerSection {
        let d = BreakerConfig::default();
        BreakerSection {
            window_ms: d.window_ms,
            min_calls: d.min_calls,
            failure_rate_pct: d.failure_rate_pct,
            slow_call_ms: d.slow_call_ms,
            open_ms: d.open_ms,
            half_open_trials: d.half_open_trials,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub body_bytes_max: usize,
    pub request_timeout_ms: u64,
    /// Merchant connections served at once; one beyond it is answered 503 and closed.
    /// Lowered at start to what the open files limit leaves ([`Config::api_connections_max`]).
    pub connections_max: usize,
}

/// Descriptors a server needs besides its merchant and PSP connections: the store's files,
/// the listeners, the ops listener's connections (`OPS_CONNECTIONS_MAX`), logs, the runtime's.
const RESERVED_FILES: usize = 512;

/// The descriptors an `open_files` limit leaves for merchant connections (both ends of them,
/// in a process that also loads itself), after `RESERVED_FILES` and `outbound` PSP ones.
pub fn files_left(open_files: u64, outbound: usize) -> usize {
    usize::try_from(open_files)
        .unwrap_or(usize::MAX)
        .saturating_sub(RESERVED_FILES + outbound)
}

/// Connections the ops listener serves at once: scrapes, probes and admin calls. Its own
/// limit, so that a merchant API at its limit can still be watched and managed.
pub const OPS_CONNECTIONS_MAX: usize = 256;

impl Default for ApiSection {
    fn default() -> ApiSection {
        let d = rialto_api::ApiConfig::default();
        ApiSection {
            body_bytes_max: d.body_bytes_max,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
            connections_max: 16_384,
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
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.psp.is_empty() {
            bail!("at least one [[psp]] is required");
        }
        for (i, psp) in self.psp.iter().enumerate() {
            psp.validate().map_err(anyhow::Error::msg)?;
            if self.psp[..i].iter().any(|other| other.id == psp.id) {
                bail!("psp `{}` is configured twice", psp.id);
            }
        }
        let engine = self.engine_config(1.0);
        engine.validate().map_err(anyhow::Error::msg)?;
        if self.api.connections_max == 0 {
            bail!("api.connections_max must be at least 1");
        }
        if Duration::from_millis(self.api.request_timeout_ms) <= engine.service_timeout {
            bail!(
                "timeouts must nest: api.request_timeout_ms > engine.service_timeout_ms > engine.psp_call_timeout_ms"
            );
        }
        Ok(())
    }

    /// The engine's settings with every duration multiplied by `scale` (1 outside `rialto sim`).
    pub fn engine_config(&self, scale: f64) -> EngineConfig {
        let e = &self.engine;
        let ms = |ms: u64| {
            Duration::from_secs_f64(ms as f64 / 1_000.0 * scale).max(Duration::from_millis(1))
        };
        let scaled = |v: u64| (v as f64 * scale).round().max(1.0) as u64;
        let b = &e.breaker;
        EngineConfig {
            psp_call_timeout: ms(e.psp_call_timeout_ms),
            service_timeout: ms(e.service_timeout_ms),
            psp_queue_max: e.psp_queue_max,
            retry_attempts_max: e.retry_attempts_max,
            retry_backoff_max: ms(e.retry_backoff_max_ms),
            escalate_after: ms(e.escalate_after_ms),
            health_interval: ms(e.health_interval_ms),
            breaker: BreakerConfig {
                window_ms: scaled(b.window_ms).max(10),
                min_calls: b.min_calls,
                failure_rate_pct: b.failure_rate_pct,
                slow_call_ms: scaled(b.slow_call_ms),
                open_ms: scaled(b.open_ms),
                half_open_trials: b.half_open_trials,
            },
            hints: rialto_engine::routing::Hints {
                latency_p95_ms_max: scaled(
                    rialto_engine::routing::Hints::default().latency_p95_ms_max,
                ),
                ..rialto_engine::routing::Hints::default()
            },
            status_query_backoff: ms(e.status_query_backoff_ms),
            status_query_attempts_max: e.status_query_attempts_max,
            psp_inflight_max: e.psp_inflight_max,
            transactions_max: e.transactions_max,
            sweep_interval: ms(e.sweep_interval_ms),
            authorization_ttl: Duration::from_secs(e.authorization_ttl_s),
            ..EngineConfig::default()
        }
    }

    /// The API's settings. A scaled run keeps the gateway deadline at least
    /// `SCALED_GATEWAY_FLOOR`: fsync stalls and scheduling do not shrink with a scenario, and a
    /// 600 ms deadline (30 s × 0.02) would time out requests that are merely unlucky.
    pub fn api_config(&self, scale: f64) -> rialto_api::ApiConfig {
        let configured = Duration::from_millis(self.api.request_timeout_ms);
        let scaled = configured.mul_f64(scale);
        rialto_api::ApiConfig {
            body_bytes_max: self.api.body_bytes_max,
            request_timeout: scaled.max(configured.min(SCALED_GATEWAY_FLOOR)),
            // A secret belongs in the environment, not in a config file.
            admin_token: std::env::var("RIALTO_ADMIN_TOKEN")
                .ok()
                .filter(|t| t.len() >= 16),
        }
    }

    /// Connections to PSPs this server may hold open at once: an HTTP PSP's pool may open up
    /// to twice its bulkhead (a new connection races the return of an idle one).
    pub fn outbound_connections_max(&self) -> usize {
        self.psp
            .iter()
            .filter(|p| p.kind == PspKind::Http)
            .map(|p| 2 * p.bulkhead(self.engine.psp_inflight_max))
            .sum()
    }

    /// The merchant connections to serve at once: `api.connections_max`, or fewer if the
    /// process may not open that many files besides its PSP connections and
    /// `RESERVED_FILES`. A server out of descriptors fails whatever it opens next, a PSP
    /// connection as much as a merchant's; one at its connection limit only turns new
    /// merchant connections away. Never below 64, however low the limit.
    pub fn api_connections_max(&self, open_files: Option<u64>) -> usize {
        let Some(files) = open_files else {
            return self.api.connections_max;
        };
        let left = files_left(files, self.outbound_connections_max());
        self.api.connections_max.min(left.max(64))
    }

    pub fn routes(&self) -> Vec<PspRoute> {
        self.psp
            .iter()
            .map(|p| PspRoute {
                id: p.id.clone(),
                priority: p.priority,
                weight: p.weight,
                inflight_max: p.inflight_max,
                queue_max: p.queue_max,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example stays a valid configuration equal to the defaults it describes.
    #[test]
    fn the_example_config_loads_and_matches_the_defaults() {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/rialto.example.toml"));
        let example = Config::load(Some(&path)).expect("rialto.example.toml is valid");
        let defaults = Config::default();
        assert_eq!(example.listen, defaults.listen);
        assert_eq!(example.ops_listen, defaults.ops_listen);
        assert_eq!(example.psp, defaults.psp);
        assert_eq!(example.api.connections_max, defaults.api.connections_max);
        assert_eq!(
            example.engine_config(1.0).psp_call_timeout,
            defaults.engine_config(1.0).psp_call_timeout
        );
    }

    /// The merchant connection limit leaves the PSP connections and the spare descriptors
    /// their share of the open files limit.
    #[test]
    fn the_connection_limit_leaves_room_for_the_psp_connections() {
        let mut config = Config::default();
        assert_eq!(config.outbound_connections_max(), 0, "simulated PSPs: none");
        assert_eq!(config.api_connections_max(None), 16_384);
        assert_eq!(config.api_connections_max(Some(1 << 20)), 16_384);
        assert_eq!(config.api_connections_max(Some(10_000)), 10_000 - 512);
        config.psp[0].kind = PspKind::Http;
        config.psp[1].kind = PspKind::Http;
        config.psp[1].inflight_max = Some(100);
        assert_eq!(config.outbound_connections_max(), 2 * 1_024 + 2 * 100);
        assert_eq!(
            config.api_connections_max(Some(10_000)),
            10_000 - 512 - 2_248
        );
        assert_eq!(config.api_connections_max(Some(1_024)), 64, "a floor");
        let mut config = Config::default();
        config.api.connections_max = 0;
        assert!(config.validate().is_err(), "no connections at all");
    }

    #[test]
    fn timeouts_must_nest_and_scaled_gateways_keep_a_floor() {
        let mut config = Config::default();
        config.api.request_timeout_ms = config.engine.service_timeout_ms;
        assert!(
            config.validate().is_err(),
            "the gateway must outlast the service"
        );
        let mut config = Config::default();
        config.engine.service_timeout_ms = config.engine.psp_call_timeout_ms;
        assert!(
            config.validate().is_err(),
            "the service must outlast a PSP call"
        );
        let config = Config::default();
        assert!(config.validate().is_ok());
        assert_eq!(
            config.api_config(0.02).request_timeout,
            SCALED_GATEWAY_FLOOR
        );
        assert_eq!(
            config.api_config(1.0).request_timeout,
            Duration::from_secs(30)
        );
        let engine = config.engine_config(0.02);
        assert!(engine.psp_call_timeout < engine.service_timeout);
        assert!(engine.service_timeout < config.api_config(0.02).request_timeout);
    }
}
