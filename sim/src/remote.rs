//! What a `rialto sim --target` run learns besides its own measurements, so that its report is
//! as full as an in-process run's:
//! - from the running Rialto's ops listener (`--ops`, with the operator's admin token): the
//!   breaker changes during the load and a ledger check of the live store at the end;
//! - from each `rialto psp-sim` it is given (`--psp-sim ID=URL`, with the PSP's secret): it
//!   starts the PSP's incident schedule over as the measured load starts, so incidents fall
//!   where the PSP's config puts them on the run's clock, and reads the PSP's counters at the
//!   end. `ID` is the PSP's id in Rialto's config, the one payments report.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use rialto_actors::SystemClock;
use rialto_actors::psp_http::{SIGNATURE_HEADER, sign};
use rialto_engine::Clock;

use crate::report::breaker_change;

/// A status or counter read; short, so a wrong address fails the run quickly.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A ledger check reads the whole store: a long-running server's takes minutes.
const LEDGER_CHECK_TIMEOUT: Duration = Duration::from_secs(1_800);

/// A running Rialto's ops listener.
#[derive(Clone, Debug)]
pub struct Ops {
    pub base_url: String,
    pub admin_token: String,
}

/// A `rialto psp-sim` serving the PSP that Rialto calls `id`.
#[derive(Clone, Debug)]
pub struct PspSim {
    pub id: String,
    pub base_url: String,
    pub secret: String,
}

impl PspSim {
    /// `ID=URL`, as `--psp-sim` takes it.
    pub fn parse(arg: &str, secret: &str) -> anyhow::Result<PspSim> {
        let Some((id, url)) = arg.split_once('=').filter(|(id, url)| {
            !id.is_empty() && (url.starts_with("http://") || url.starts_with("https://"))
        }) else {
            bail!("--psp-sim takes ID=URL (the PSP's id in Rialto's config), not `{arg}`");
        };
        Ok(PspSim {
            id: id.to_string(),
            base_url: url.trim_end_matches('/').to_string(),
            secret: secret.to_string(),
        })
    }
}

pub struct Observers {
    client: reqwest::Client,
    ops: Option<Ops>,
    psp_sims: Vec<PspSim>,
}

async fn json_of(request: RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let response = request.send().await.with_context(|| what.to_string())?;
    let status = response.status();
    let body = response.text().await.with_context(|| what.to_string())?;
    if !status.is_success() {
        bail!("{what}: {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: not JSON"))
}

impl Observers {
    pub fn new(ops: Option<Ops>, psp_sims: Vec<PspSim>) -> anyhow::Result<Observers> {
        Ok(Observers {
            client: reqwest::Client::builder()
                .build()
                .context("building the HTTP client")?,
            ops,
            psp_sims,
        })
    }

    async fn psp_sim(&self, p: &PspSim, method: Method, path: &str) -> anyhow::Result<Value> {
        let signature = sign(p.secret.as_bytes(), method.as_str(), path, b"");
        let request = self
            .client
            .request(method, format!("{}{path}", p.base_url))
            .header(SIGNATURE_HEADER, signature)
            .timeout(READ_TIMEOUT);
        json_of(
            request,
            &format!("psp-sim {} at {}{path}", p.id, p.base_url),
        )
        .await
    }

    async fn ops(&self, ops: &Ops, path: &str, timeout: Duration) -> anyhow::Result<Value> {
        let request = self
            .client
            .get(format!("{}{path}", ops.base_url))
            .bearer_auth(&ops.admin_token)
            .timeout(timeout);
        json_of(request, &format!("ops {}{path}", ops.base_url)).await
    }

    /// Asks each of them something, so that a wrong address, token or secret fails the run
    /// before its load rather than after.
    pub async fn check(&self) -> anyhow::Result<()> {
        if let Some(ops) = &self.ops {
            self.ops(ops, "/admin/breakers", READ_TIMEOUT).await?;
        }
        for p in &self.psp_sims {
            self.psp_sim(p, Method::GET, "/admin/stats").await?;
        }
        Ok(())
    }

    /// Starts every PSP simulator's incident schedule over, now.
    pub async fn start_schedules(&self) -> anyhow::Result<()> {
        for p in &self.psp_sims {
            self.psp_sim(p, Method::POST, "/admin/schedule/start")
                .await?;
        }
        Ok(())
    }

    /// Each PSP simulator's incidents (under Rialto's id for the PSP), and its counters.
    pub async fn psp_sims_now(
        &self,
    ) -> anyhow::Result<(Vec<Value>, BTreeMap<String, Vec<(String, u64)>>)> {
        let (mut incidents, mut calls) = (Vec::new(), BTreeMap::new());
        for p in &self.psp_sims {
            let stats = self.psp_sim(p, Method::GET, "/admin/stats").await?;
            incidents.extend(
                stats["incidents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        let mut i = i.clone();
                        i["psp"] = json!(p.id);
                        i
                    }),
            );
            let counters = stats["calls"].as_object().into_iter().flatten();
            calls.insert(
                p.id.clone(),
                counters
                    .map(|(name, n)| (name.clone(), n.as_u64().unwrap_or(0)))
                    .collect(),
            );
        }
        let start = |i: &Value| i["start_s"].as_f64().unwrap_or(0.0);
        incidents.sort_by(|a, b| start(a).total_cmp(&start(b)));
        Ok((incidents, calls))
    }

    /// The breaker changes since `started_ms` (this process's clock), in seconds from it:
    /// `{ "t_s", "psp", "from", "to" }`. The server's clock is read with them, so a
    /// difference between the two clocks does not shift them (beyond a request's time).
    pub async fn breaker_transitions(&self, started_ms: i64) -> anyhow::Result<Vec<Value>> {
        let Some(ops) = &self.ops else {
            return Ok(Vec::new());
        };
        let answer = self.ops(ops, "/admin/breakers", READ_TIMEOUT).await?;
        let server_ahead_ms =
            answer["now_ms"].as_i64().context("no now_ms")? - SystemClock.now_ms();
        let started_ms = started_ms + server_ahead_ms;
        Ok(answer["transitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let at_ms = t["at_ms"].as_i64().filter(|&at| at >= started_ms)?;
                let text = |k: &str| t[k].as_str().unwrap_or_default();
                Some(breaker_change(
                    at_ms - started_ms,
                    text("psp"),
                    text("from"),
                    text("to"),
                ))
            })
            .collect())
    }

    /// A ledger check of the live store; `None` without `--ops`.
    pub async fn ledger_balanced(&self) -> anyhow::Result<Option<bool>> {
        let Some(ops) = &self.ops else {
            return Ok(None);
        };
        let answer = self
            .ops(ops, "/admin/ledger/check", LEDGER_CHECK_TIMEOUT)
            .await?;
        let balanced = answer["balanced"].as_bool().context("no `balanced`")?;
        if !balanced {
            tracing::error!(problems = %answer["problems"], "the target's ledger does not balance");
        }
        Ok(Some(balanced))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_psp_sim_is_named_by_rialtos_id_for_it() {
        let p = PspSim::parse("remote=http://127.0.0.1:7001/", "s").unwrap();
        assert_eq!(
            (p.id.as_str(), p.base_url.as_str()),
            ("remote", "http://127.0.0.1:7001")
        );
        for bad in [
            "http://127.0.0.1:7001",
            "=http://x",
            "remote=127.0.0.1:7001",
        ] {
            assert!(PspSim::parse(bad, "s").is_err(), "{bad}");
        }
    }
}
