//! Results of a run: the `report.json` document (schema in `sim/scenarios/README.md`), the
//! summary table printed at the end, and a self-contained `report.html` whose charts are
//! inline SVG, so it opens offline in any browser.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::load::Measurements;
use crate::scenario::Scenario;

pub const SCHEMA_VERSION: u32 = 1;

/// What the run found besides the load generator's own measurements.
#[derive(Debug, Default)]
pub struct Extras {
    /// `None` when the ledger could not be checked (a remote `--target`).
    pub ledger_balanced: Option<bool>,
    /// Per PSP: the simulator's own counters (in-process runs).
    pub psp_calls: BTreeMap<String, Vec<(&'static str, u64)>>,
    /// Breaker state changes: `{ "t_s", "psp", "from", "to" }`.
    pub breaker_transitions: Vec<Value>,
    pub baseline: Option<Measurements>,
}

fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64 / 1_000.0 * 1_000.0).round() / 1_000.0;
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p95": ms(h.value_at_quantile(0.95)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": ms(h.mean() as u64),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn build(scenario: &Scenario, scale: f64, m: &Measurements, extras: &Extras) -> Value {
    let mut psps = serde_json::Map::new();
    let ids: std::collections::BTreeSet<&String> =
        m.by_psp.keys().chain(extras.psp_calls.keys()).collect();
    for id in ids {
        let outcomes = m.by_psp.get(id).cloned().unwrap_or_default();
        let payments: u64 = outcomes.values().sum();
        let calls: BTreeMap<&str, u64> = extras
            .psp_calls
            .get(id)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        let latency = m.by_psp_latency_us.get(id).map(percentiles);
        psps.insert(
            id.clone(),
            json!({ "payments": payments, "outcomes": outcomes, "calls": calls, "latency_ms": latency }),
        );
    }
    let mut report = json!({
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario.name,
        "description": scenario.description,
        "duration_scale": scale,
        "mode": format!("{:?}", scenario.load.mode).to_lowercase(),
        "duration_s": round2(m.duration.as_secs_f64()),
        "requests": m.requests,
        "payments": m.payments,
        "throughput_per_s": round2(m.throughput_per_s()),
        "requests_per_s": round2(m.requests as f64 / m.duration.as_secs_f64().max(1e-9)),
        "success_rate": (m.success_rate() * 10_000.0).round() / 10_000.0,
        "latency_ms": percentiles(&m.latency_us),
        "latency_all_requests_ms": percentiles(&m.latency_all_us),
        "outcomes": m.outcomes,
        "psps": psps,
        "breaker_transitions": extras.breaker_transitions,
        "ledger_balanced": extras.ledger_balanced,
        "dropped_arrivals": m.dropped_arrivals,
        "reads": m.reads,
        "stale_reads": m.stale_reads,
        "unresolved_after_settle": m.unresolved_after_settle,
        "peak_rss_mb": m.peak_rss_mb.map(round2),
        "series": m.series.iter().enumerate().map(|(t, s)| json!({
            "t_s": t, "requests": s.requests, "payments": s.payments, "errors": s.errors,
            "p50_ms": s.p50_ms, "p95_ms": s.p95_ms, "p99_ms": s.p99_ms,
        })).collect::<Vec<_>>(),
    });
    if let Some(b) = &extras.baseline {
        let base = b.throughput_per_s();
        report["baseline_throughput_per_s"] = json!(round2(base));
        report["baseline_latency_ms"] = percentiles(&b.latency_us);
        report["ratio_to_baseline"] = json!(if base > 0.0 {
            (m.throughput_per_s() / base * 1_000.0).round() / 1_000.0
        } else {
            0.0
        });
    }
    report
}

/// The table printed at the end of a run.
pub fn summary(r: &Value) -> String {
    let mut out = String::new();
    let l = &r["latency_ms"];
    let _ = writeln!(
        out,
        "scenario         {} (duration scale {})",
        r["scenario"].as_str().unwrap_or(""),
        r["duration_scale"]
    );
    let _ = writeln!(out, "duration         {} s", r["duration_s"]);
    let _ = writeln!(
        out,
        "payments         {}  ({} requests)",
        r["payments"], r["requests"]
    );
    let _ = writeln!(
        out,
        "throughput       {} payments/s  ({} requests/s)",
        r["throughput_per_s"], r["requests_per_s"]
    );
    let _ = writeln!(
        out,
        "success rate     {:.2} %",
        r["success_rate"].as_f64().unwrap_or(0.0) * 100.0
    );
    let _ = writeln!(
        out,
        "latency (ms)     p50 {}  p95 {}  p99 {}  p99.9 {}  max {}",
        l["p50"], l["p95"], l["p99"], l["p999"], l["max"]
    );
    if let Some(base) = r.get("baseline_throughput_per_s") {
        let _ = writeln!(
            out,
            "baseline         {base} trivial requests/s  → payments/trivial ratio {}",
            r["ratio_to_baseline"]
        );
    }
    let _ = writeln!(out, "outcomes         {}", r["outcomes"]);
    if let Some(psps) = r["psps"].as_object() {
        for (id, p) in psps {
            let _ = writeln!(
                out,
                "psp {id:<12} {} payments, outcomes {}, calls {}",
                p["payments"], p["outcomes"], p["calls"]
            );
        }
    }
    let transitions = r["breaker_transitions"].as_array().map_or(0, Vec::len);
    let _ = writeln!(out, "breaker changes  {transitions}");
    if let Some(rss) = r["peak_rss_mb"].as_f64() {
        let _ = writeln!(out, "peak RSS         {rss:.1} MB");
    }
    if r["reads"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            out,
            "reads            {}  ({} stale)",
            r["reads"], r["stale_reads"]
        );
    }
    if r["dropped_arrivals"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(out, "dropped arrivals {}", r["dropped_arrivals"]);
    }
    let ledger = match r["ledger_balanced"].as_bool() {
        Some(true) => "balanced",
        Some(false) => "NOT BALANCED",
        None => "not checked (remote target)",
    };
    let _ = writeln!(out, "ledger           {ledger}");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG line chart of `series` (name, colour, points) over the run's seconds.
fn line_chart(title: &str, unit: &str, series: &[(&str, &str, Vec<f64>)]) -> String {
    let (w, h, pad) = (760.0, 240.0, 48.0);
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let max = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1) as f64;
    let y = |v: f64| h - pad + -(h - 2.0 * pad) * v / max;
    let mut svg = format!(
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" role="img"><title>{}</title>"#,
        escape(title)
    );
    let _ = write!(
        svg,
        r##"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="#888"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="#888"/>"##,
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    let _ = write!(
        svg,
        r##"<text x="{pad}" y="{}" font-size="11" fill="#444">{max:.1} {unit}</text><text x="{}" y="{}" font-size="11" fill="#444">{} s</text>"##,
        pad - 6.0,
        w - pad - 20.0,
        h - pad + 16.0,
        n - 1
    );
    for (k, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="16" font-size="12" fill="{colour}">{}</text>"#,
            pad + 120.0 * k as f64,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal stacked bars: payments per PSP by final status.
fn psp_chart(psps: &serde_json::Map<String, Value>) -> String {
    let palette = [
        "#2e7d32", "#c62828", "#f9a825", "#1565c0", "#6a1b9a", "#00838f", "#ef6c00", "#4e342e",
    ];
    let mut statuses: Vec<String> = psps
        .values()
        .flat_map(|p| {
            p["outcomes"]
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    statuses.sort();
    statuses.dedup();
    let colour =
        |s: &str| palette[statuses.iter().position(|x| x == s).unwrap_or(0) % palette.len()];
    let max = psps
        .values()
        .filter_map(|p| p["payments"].as_u64())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (w, row) = (760.0, 30.0);
    let h = 40.0 + row * psps.len() as f64 + 20.0;
    let mut svg = format!(
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" role="img"><title>Payments per PSP by outcome</title>"#
    );
    for (k, s) in statuses.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<rect x="{}" y="6" width="10" height="10" fill="{}"/><text x="{}" y="15" font-size="11">{}</text>"#,
            140.0 + 110.0 * k as f64,
            colour(s),
            154.0 + 110.0 * k as f64,
            escape(s)
        );
    }
    for (i, (id, p)) in psps.iter().enumerate() {
        let top = 30.0 + row * i as f64;
        let _ = write!(
            svg,
            r#"<text x="4" y="{}" font-size="12">{}</text>"#,
            top + 16.0,
            escape(id)
        );
        let mut left = 140.0;
        for (status, n) in p["outcomes"].as_object().into_iter().flatten() {
            let width = (w - 160.0) * n.as_f64().unwrap_or(0.0) / max;
            let _ = write!(
                svg,
                r#"<rect x="{left:.1}" y="{top}" width="{width:.1}" height="20" fill="{}"><title>{}: {n}</title></rect>"#,
                colour(status),
                escape(status)
            );
            left += width;
        }
    }
    svg.push_str("</svg>");
    svg
}

pub fn html(r: &Value) -> String {
    let series = r["series"].as_array().cloned().unwrap_or_default();
    let column = |k: &str| {
        series
            .iter()
            .map(|s| s[k].as_f64().unwrap_or(0.0))
            .collect::<Vec<_>>()
    };
    let throughput = line_chart(
        "Throughput per second",
        "/s",
        &[
            ("payments/s", "#1565c0", column("payments")),
            ("errors/s", "#c62828", column("errors")),
        ],
    );
    let latency = line_chart(
        "Payment latency percentiles per second",
        "ms",
        &[
            ("p50", "#2e7d32", column("p50_ms")),
            ("p95", "#f9a825", column("p95_ms")),
            ("p99", "#c62828", column("p99_ms")),
        ],
    );
    let psps = psp_chart(r["psps"].as_object().unwrap_or(&serde_json::Map::new()));
    let pretty = serde_json::to_string_pretty(r).unwrap_or_default();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Rialto sim: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}h2{{margin-top:1.5em}}</style></head>
<body><h1>Rialto sim — {name}</h1><p>{description}</p><pre>{summary}</pre>
<h2>Throughput</h2>{throughput}<h2>Latency</h2>{latency}<h2>PSP outcomes</h2>{psps}
<h2>report.json</h2><details><summary>show</summary><pre>{json}</pre></details></body></html>"#,
        name = escape(r["scenario"].as_str().unwrap_or("")),
        description = escape(r["description"].as_str().unwrap_or("")),
        summary = escape(&summary(r)),
        json = escape(&pretty),
    )
}

pub fn write(dir: &Path, report: &Value) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?,
    )?;
    std::fs::write(dir.join("report.html"), html(report))
}
