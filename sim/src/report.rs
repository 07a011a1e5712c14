//! Results of a run: the `report.json` document (schema in `sim/scenarios/README.md`), the
//! summary table printed at the end, and a self-contained `report.html` whose charts are
//! inline SVG, so it opens offline in any browser.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::load::Measurements;
use crate::psp::{Incident, IncidentKind};
use crate::scenario::{LoadMode, Scenario};

pub const SCHEMA_VERSION: u32 = 1;

/// What the run found besides the load generator's own measurements.
#[derive(Debug, Default)]
pub struct Extras {
    /// `None` when the ledger could not be checked (a remote `--target` without `--ops`).
    pub ledger_balanced: Option<bool>,
    /// Per PSP: the simulator's own counters (in-process runs, and `rialto psp-sim`s).
    pub psp_calls: BTreeMap<String, Vec<(String, u64)>>,
    /// Breaker state changes: `{ "t_s", "psp", "from", "to" }`.
    pub breaker_transitions: Vec<Value>,
    /// The incidents as applied (the scenario's, or `rialto psp-sim`s'): see [`incident`].
    pub incidents: Vec<Value>,
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
            .map(|c| c.iter().map(|(name, n)| (name.as_str(), *n)).collect())
            .unwrap_or_default();
        let latency = m.by_psp_latency_us.get(id).map(percentiles);
        psps.insert(
            id.clone(),
            json!({ "payments": payments, "outcomes": outcomes, "calls": calls, "latency_ms": latency }),
        );
    }
    // The load phase's seconds: requests made after it (the last payments' follow-ups and
    // reads) count in the totals, but a second of nothing but those is no throughput.
    let load_s = m.duration.as_secs_f64();
    let series: Vec<Value> = m
        .series
        .iter()
        .enumerate()
        .take_while(|(t, _)| (*t as f64) < load_s)
        .map(|(t, s)| {
            json!({
                "t_s": t, "requests": s.requests, "payments": s.payments, "errors": s.errors,
                "p50_ms": s.p50_ms, "p95_ms": s.p95_ms, "p99_ms": s.p99_ms,
            })
        })
        .collect();
    let mut report = json!({
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario.name,
        "description": scenario.description,
        "duration_scale": scale,
        "mode": format!("{:?}", scenario.load.mode).to_lowercase(),
        "duration_s": round2(m.duration.as_secs_f64()),
        "interrupted": m.interrupted,
        "requests": m.requests,
        "payments": m.payments,
        "throughput_per_s": round2(m.throughput_per_s()),
        "requests_per_s": round2(m.requests as f64 / m.duration.as_secs_f64().max(1e-9)),
        "success_rate": (m.success_rate() * 10_000.0).round() / 10_000.0,
        "latency_ms": percentiles(&m.latency_us),
        "latency_all_requests_ms": percentiles(&m.latency_all_us),
        "outcomes": m.outcomes,
        "problems": m.problems,
        "psps": psps,
        "breaker_transitions": extras.breaker_transitions,
        "incidents": extras.incidents,
        "ledger_balanced": extras.ledger_balanced,
        "dropped_arrivals": m.dropped_arrivals,
        "in_flight_max": (scenario.load.mode == LoadMode::Open).then_some(scenario.load.in_flight_max),
        "reads": m.reads,
        "stale_reads": m.stale_reads,
        "unresolved_after_settle": m.unresolved_after_settle,
        "peak_rss_mb": m.peak_rss_mb.map(round2),
        "series": series,
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

/// The scenario's incident schedule on the run's clock (times scaled, in seconds from the
/// start of the measured load), in order of start: see [`incident`].
pub fn incidents(scenario: &Scenario, scale: f64) -> Vec<Value> {
    let mut all: Vec<_> = scenario
        .psp
        .iter()
        .filter_map(|p| Some((p.id.as_str(), p.sim_config(scale).ok()?.incidents)))
        .flat_map(|(psp, incidents)| incidents.into_iter().map(move |i| (psp, i)))
        .collect();
    all.sort_by_key(|(_, i)| i.start);
    all.into_iter().map(|(psp, i)| incident(psp, &i)).collect()
}

/// A breaker change `ms` after the start of the measured load, as the report gives it.
pub fn breaker_change(ms: i64, psp: &str, from: &str, to: &str) -> Value {
    json!({ "t_s": ms as f64 / 1_000.0, "psp": psp, "from": from, "to": to })
}

/// An incident of `psp` as the report gives it: `{ "psp", "kind", "start_s", "end_s" }`, plus
/// `latency_ms` for a latency spike and `drop_ppm` for dropped calls.
pub fn incident(psp: &str, i: &Incident) -> Value {
    let mut v = json!({
        "psp": psp,
        "kind": match i.kind {
            IncidentKind::Outage => "outage",
            IncidentKind::LatencySpike { .. } => "latency_spike",
            IncidentKind::Drop { .. } => "drop",
        },
        "start_s": round2(i.start.as_secs_f64()),
        "end_s": round2(i.end.as_secs_f64()),
    });
    match i.kind {
        IncidentKind::Outage => {}
        IncidentKind::LatencySpike { latency } => {
            v["latency_ms"] = json!(round2(latency.as_secs_f64() * 1_000.0));
        }
        IncidentKind::Drop { ppm } => v["drop_ppm"] = json!(ppm),
    }
    v
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
    if r["interrupted"].as_bool() == Some(true) {
        let _ = writeln!(
            out,
            "interrupted      stopped early; the figures cover the load that ran"
        );
    }
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
    if r["problems"].as_object().is_some_and(|p| !p.is_empty()) {
        let _ = writeln!(out, "refused because  {}", r["problems"]);
    }
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
        let _ = writeln!(
            out,
            "dropped arrivals {}  (at most {} in flight)",
            r["dropped_arrivals"], r["in_flight_max"]
        );
    }
    let ledger = match r["ledger_balanced"].as_bool() {
        Some(true) => "balanced",
        Some(false) => "NOT BALANCED",
        None => "not checked (remote target without --ops)",
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

/// A step of 1, 2 or 5 × 10^k that cuts `span` into at most `parts` parts.
fn nice_step(span: f64, parts: f64) -> f64 {
    let raw = (span / parts).max(1e-9);
    let decade = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * decade)
}

/// A tick's label: at most three decimals, none if whole.
fn tick_label(v: f64) -> String {
    format!("{}", (v * 1_000.0).round() / 1_000.0)
}

/// A chart's value axis: where a value lands (0 at the bottom, 1 at the top) and the ticks
/// to label.
struct ValueAxis {
    log: bool,
    low: f64,
    high: f64,
    ticks: Vec<f64>,
}

impl ValueAxis {
    /// From 0 to a round number at or above `max` (and at least 1).
    fn linear(max: f64) -> ValueAxis {
        let max = max.max(1.0);
        let step = nice_step(max, 4.0);
        let parts = (max / step).ceil().max(1.0);
        ValueAxis {
            log: false,
            low: 0.0,
            high: parts * step,
            ticks: (0..=parts as usize).map(|k| k as f64 * step).collect(),
        }
    }

    /// Whole decades around the positive values: a latency chart whose tail reaches seconds
    /// still shows its body in milliseconds.
    fn log(values: impl Iterator<Item = f64>) -> ValueAxis {
        let (min, max) = values
            .filter(|v| *v > 0.0)
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if max == 0.0 {
            return ValueAxis::linear(1.0);
        }
        let low = min.log10().floor() as i32;
        let high = (max.log10().ceil() as i32).max(low + 1);
        ValueAxis {
            log: true,
            low: 10f64.powi(low),
            high: 10f64.powi(high),
            ticks: (low..=high).map(|e| 10f64.powi(e)).collect(),
        }
    }

    fn fraction(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.low).log10() - self.low.log10()) / (self.high.log10() - self.low.log10())
        } else {
            v / self.high
        };
        f.clamp(0.0, 1.0)
    }
}

/// What happened to the PSPs during the run, drawn on every chart over time.
struct Marks<'a> {
    /// `incidents` of report.json.
    incidents: &'a [Value],
    /// `breaker_transitions` of report.json.
    transitions: &'a [Value],
    /// How long the load ran: changes after it (while its last payments settled) are past
    /// the charts' end, so only the table shows them.
    load_s: f64,
}

/// The plot area of a chart over the run's seconds.
struct Frame {
    seconds: f64,
}

impl Frame {
    const W: f64 = 760.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 16.0;
    const TOP: f64 = 28.0;
    const BOTTOM: f64 = 36.0;

    fn x(&self, t_s: f64) -> f64 {
        Self::LEFT + (Self::W - Self::LEFT - Self::RIGHT) * (t_s / self.seconds).clamp(0.0, 1.0)
    }

    fn y(&self, fraction: f64) -> f64 {
        Self::H - Self::BOTTOM - (Self::H - Self::TOP - Self::BOTTOM) * fraction
    }
}

fn breaker_colour(state: &str) -> &'static str {
    match state {
        "open" => "#c62828",
        "half_open" => "#ef6c00",
        _ => "#2e7d32",
    }
}

/// An SVG line chart of `series` (name, colour, a value per second of the run), with the
/// run's incidents shaded and its breaker changes as dashed lines.
fn line_chart(
    title: &str,
    unit: &str,
    axis: &ValueAxis,
    series: &[(&str, &str, Vec<f64>)],
    marks: &Marks,
) -> String {
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0);
    let frame = Frame {
        seconds: n.saturating_sub(1).max(1) as f64,
    };
    let (w, h) = (Frame::W, Frame::H);
    let (left, right, top, bottom) = (Frame::LEFT, w - Frame::RIGHT, Frame::TOP, frame.y(0.0));
    let mut svg = format!(
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" role="img" font-size="10"><title>{}</title>"#,
        escape(title)
    );
    for (k, i) in marks.incidents.iter().enumerate() {
        let (start, end) = (
            i["start_s"].as_f64().unwrap_or(0.0),
            i["end_s"].as_f64().unwrap_or(0.0),
        );
        let (x0, x1) = (frame.x(start), frame.x(end));
        let what = format!(
            "{} {}",
            i["psp"].as_str().unwrap_or(""),
            i["kind"].as_str().unwrap_or("").replace('_', " ")
        );
        let _ = write!(
            svg,
            r##"<rect class="incident" x="{x0:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#f9a825" fill-opacity="0.15"><title>{} from {start} s to {end} s</title></rect><text x="{:.1}" y="{:.1}" fill="#8a6d00">{}</text>"##,
            x1 - x0,
            bottom - top,
            escape(&what),
            x0 + 3.0,
            top + 11.0 + 11.0 * (k % 3) as f64,
            escape(&what)
        );
    }
    for tick in &axis.ticks {
        let y = frame.y(axis.fraction(*tick));
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
            left - 6.0,
            y + 3.5,
            tick_label(*tick)
        );
    }
    let step = nice_step(frame.seconds, 10.0).max(1.0);
    let mut t = 0.0;
    while t <= frame.seconds + 1e-9 {
        let x = frame.x(t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="#888"/><text x="{x:.1}" y="{}" text-anchor="middle" fill="#444">{} s</text>"##,
            bottom + 4.0,
            bottom + 16.0,
            tick_label(t)
        );
        t += step;
    }
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#888"/>"##
    );
    for t in marks.transitions {
        let t_s = t["t_s"].as_f64().unwrap_or(0.0);
        if t_s > marks.load_s {
            continue;
        }
        let x = frame.x(t_s);
        let to = t["to"].as_str().unwrap_or("");
        let _ = write!(
            svg,
            r#"<line class="breaker" x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="{}" stroke-dasharray="4 3"><title>{} s: {} breaker {} → {}</title></line>"#,
            breaker_colour(to),
            t["t_s"],
            escape(t["psp"].as_str().unwrap_or("")),
            escape(t["from"].as_str().unwrap_or("")),
            escape(to)
        );
    }
    for (_, colour, points) in series {
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", frame.x(i as f64), frame.y(axis.fraction(*v))))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
    }
    let mut legend = left;
    for (name, colour, _) in series {
        let _ = write!(
            svg,
            r#"<text x="{legend}" y="14" font-size="12" fill="{colour}">{}</text>"#,
            escape(name)
        );
        legend += 90.0;
    }
    let scale = if axis.log { ", log scale" } else { "" };
    let _ = write!(
        svg,
        r##"<text x="{legend}" y="14" font-size="11" fill="#666">{}{scale}</text>"##,
        escape(unit)
    );
    svg.push_str("</svg>");
    svg
}

/// The run's incidents and breaker changes as table rows, in order of time.
fn events_table(marks: &Marks) -> String {
    let number = |v: &Value| tick_label(v.as_f64().unwrap_or(0.0));
    let mut rows: Vec<(f64, String, String, String)> = Vec::new();
    for i in marks.incidents {
        let what = match i["kind"].as_str().unwrap_or("") {
            "outage" => "outage: every call refused".to_string(),
            "latency_spike" => format!("latency spike: {} ms per call", number(&i["latency_ms"])),
            "drop" => format!(
                "{}% of answers dropped",
                tick_label(i["drop_ppm"].as_f64().unwrap_or(0.0) / 10_000.0)
            ),
            other => other.to_string(),
        };
        rows.push((
            i["start_s"].as_f64().unwrap_or(0.0),
            format!("{} – {} s", number(&i["start_s"]), number(&i["end_s"])),
            i["psp"].as_str().unwrap_or("").to_string(),
            what,
        ));
    }
    for t in marks.transitions {
        let t_s = t["t_s"].as_f64().unwrap_or(0.0);
        let after = if t_s > marks.load_s {
            " (after the load)"
        } else {
            ""
        };
        rows.push((
            t_s,
            format!("{} s{after}", number(&t["t_s"])),
            t["psp"].as_str().unwrap_or("").to_string(),
            format!(
                "breaker {} → {}",
                t["from"].as_str().unwrap_or(""),
                t["to"].as_str().unwrap_or("")
            ),
        ));
    }
    if rows.is_empty() {
        return "<p>No incidents were scheduled and no breaker changed state.</p>".into();
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut table = String::from("<table><tr><th>time</th><th>PSP</th><th>what</th></tr>");
    for (_, time, psp, what) in rows {
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&time),
            escape(&psp),
            escape(&what)
        );
    }
    table.push_str("</table>");
    table
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
    let none = Vec::new();
    let marks = Marks {
        incidents: r["incidents"].as_array().unwrap_or(&none),
        transitions: r["breaker_transitions"].as_array().unwrap_or(&none),
        load_s: r["duration_s"].as_f64().unwrap_or(f64::INFINITY),
    };
    let (payments, errors) = (column("payments"), column("errors"));
    let throughput = line_chart(
        "Throughput per second",
        "per second",
        &ValueAxis::linear(payments.iter().chain(&errors).copied().fold(0.0, f64::max)),
        &[
            ("payments/s", "#1565c0", payments),
            ("errors/s", "#c62828", errors),
        ],
        &marks,
    );
    let percentiles = [
        ("p50", "#2e7d32", column("p50_ms")),
        ("p95", "#f9a825", column("p95_ms")),
        ("p99", "#c62828", column("p99_ms")),
    ];
    let latency = line_chart(
        "Payment latency percentiles per second",
        "ms",
        &ValueAxis::log(percentiles.iter().flat_map(|p| p.2.iter().copied())),
        &percentiles,
        &marks,
    );
    let events = events_table(&marks);
    let psps = psp_chart(r["psps"].as_object().unwrap_or(&serde_json::Map::new()));
    let pretty = serde_json::to_string_pretty(r).unwrap_or_default();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Rialto sim: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}h2{{margin-top:1.5em}}table{{border-collapse:collapse}}td,th{{text-align:left;padding:.2em 1em .2em 0;border-bottom:1px solid #e4e4e4}}</style></head>
<body><h1>Rialto sim — {name}</h1><p>{description}</p><pre>{summary}</pre>
<h2>Throughput</h2>{throughput}<h2>Latency</h2>{latency}
<p>Each second's percentiles are of the payments that started in it. Shaded: the scenario's incidents; dashed: circuit breaker changes (red open, orange half-open, green closed).</p>
<h2>Incidents and breaker changes</h2>{events}<h2>PSP outcomes</h2>{psps}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_axis_spans_whole_decades_and_the_throughput_axis_round_numbers() {
        let log = ValueAxis::log([0.0, 22.2, 51.4, 4_825.1].into_iter());
        assert_eq!(log.ticks, vec![10.0, 100.0, 1_000.0, 10_000.0]);
        assert_eq!(log.fraction(10.0), 0.0);
        assert_eq!(
            log.fraction(0.0),
            0.0,
            "a second without payments sits at the bottom"
        );
        assert_eq!(log.fraction(10_000.0), 1.0);
        let decade = log.fraction(100.0) - log.fraction(10.0);
        assert!((log.fraction(1_000.0) - log.fraction(100.0) - decade).abs() < 1e-9);
        assert!((decade - 1.0 / 3.0).abs() < 1e-9);

        let linear = ValueAxis::linear(2_790.0);
        assert_eq!(linear.ticks, vec![0.0, 1_000.0, 2_000.0, 3_000.0]);
        assert_eq!(
            ValueAxis::linear(0.0).ticks,
            vec![0.0, 0.5, 1.0],
            "nothing to show"
        );
        assert_eq!(linear.fraction(1_500.0), 0.5);
        assert_eq!(nice_step(90.0, 10.0), 10.0);
        assert_eq!(nice_step(26.0, 10.0), 5.0);
    }

    #[test]
    fn the_series_ends_with_the_load() {
        let second = |payments| crate::load::Second {
            requests: payments + 10,
            payments,
            ..Default::default()
        };
        let m = Measurements {
            duration: std::time::Duration::from_secs(2),
            requests: 0,
            payments: 0,
            latency_us: Histogram::new(2).unwrap(),
            latency_all_us: Histogram::new(2).unwrap(),
            outcomes: BTreeMap::new(),
            problems: BTreeMap::new(),
            by_psp: BTreeMap::new(),
            by_psp_latency_us: BTreeMap::new(),
            // The third second holds only follow-ups made after the load ended.
            series: vec![second(900), second(950), second(0)],
            dropped_arrivals: 0,
            reads: 0,
            stale_reads: 0,
            unresolved_after_settle: 0,
            peak_rss_mb: None,
            interrupted: false,
        };
        let scenario = Scenario::built_in("max-throughput").unwrap();
        let r = build(&scenario, 1.0, &m, &Extras::default());
        let payments: Vec<u64> = r["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["payments"].as_u64().unwrap())
            .collect();
        assert_eq!(payments, vec![900, 950]);
    }

    #[test]
    fn incidents_are_on_the_runs_clock_in_order_of_start() {
        let scenario = Scenario::parse(
            r#"
name = "two-incidents"
[load]
mode = "closed"
vus = 1
hold_ms = 100000
[[psp]]
id = "a"
[[psp.incident]]
kind = "latency_spike"
start_ms = 40000
end_ms = 80000
latency_ms = 12000
[[psp]]
id = "b"
[[psp.incident]]
kind = "outage"
start_ms = 10000
end_ms = 20000
"#,
        )
        .unwrap();
        assert_eq!(
            incidents(&scenario, 0.5),
            vec![
                json!({"psp": "b", "kind": "outage", "start_s": 5.0, "end_s": 10.0}),
                json!({"psp": "a", "kind": "latency_spike", "start_s": 20.0, "end_s": 40.0,
                       "latency_ms": 6000.0}),
            ]
        );
    }

    #[test]
    fn incidents_and_breaker_changes_are_drawn_where_they_happened() {
        let series: Vec<Value> = (0..=90)
            .map(|t| json!({"t_s": t, "payments": 900, "errors": 0, "p50_ms": 40.0, "p95_ms": 60.0, "p99_ms": 80.0}))
            .collect();
        let r = json!({
            "scenario": "psp-outage", "series": series, "psps": {},
            "incidents": [{"psp": "psp_primary", "kind": "outage", "start_s": 30.0, "end_s": 60.0}],
            "breaker_transitions": [
                {"t_s": 36.5, "psp": "psp_primary", "from": "closed", "to": "open"},
                {"t_s": 97.25, "psp": "psp_primary", "from": "open", "to": "half_open"},
            ],
            "duration_s": 91.0,
        });
        let page = html(&r);
        let frame = Frame { seconds: 90.0 };
        let band = format!(
            r#"<rect class="incident" x="{:.1}" y="{}" width="{:.1}""#,
            frame.x(30.0),
            Frame::TOP,
            frame.x(60.0) - frame.x(30.0)
        );
        assert_eq!(page.matches(&band).count(), 2, "on both charts: {band}");
        let marker = format!(r#"<line class="breaker" x1="{:.1}""#, frame.x(36.5));
        assert_eq!(page.matches(&marker).count(), 2, "on both charts: {marker}");
        assert_eq!(
            page.matches(r#"<line class="breaker""#).count(),
            2,
            "a change after the load is not drawn at the charts' edge"
        );
        let settling = "<tr><td>97.25 s (after the load)</td><td>psp_primary</td><td>breaker open → half_open</td></tr>";
        assert!(page.contains(settling), "the table still lists it");
        let outage =
            "<tr><td>30 – 60 s</td><td>psp_primary</td><td>outage: every call refused</td></tr>";
        let opened = "<tr><td>36.5 s</td><td>psp_primary</td><td>breaker closed → open</td></tr>";
        let (o, b) = (page.find(outage), page.find(opened));
        assert!(
            matches!((o, b), (Some(o), Some(b)) if o < b),
            "in order of time"
        );
    }
}
