//! Every built-in scenario, run by the real binary at `--duration-scale 0.02` (the whole set
//! in well under a minute): each ends with a balanced ledger, a report.json in the documented
//! schema, a report.html, and the outcome mix its configuration implies.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::BIN;

/// One scenario at a time: each is a whole Rialto under load, and at this scale their timeouts
/// are a few hundred milliseconds, which six of them sharing two cores would blow.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(scenario: &str, dir: &Path) -> Value {
    run_with(scenario, dir, &[])
}

fn run_with(scenario: &str, dir: &Path, extra: &[&str]) -> Value {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(BIN)
        .args([
            "sim",
            "--scenario",
            scenario,
            "--duration-scale",
            "0.02",
            "--quiet",
            "--report",
        ])
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "error")
        .output()
        .expect("run rialto sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ledger           balanced"), "{stdout}");
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.contains("<svg") && html.contains(scenario));
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    for key in [
        "scenario",
        "duration_s",
        "throughput_per_s",
        "success_rate",
        "latency_ms",
        "outcomes",
        "problems",
        "psps",
        "breaker_transitions",
        "incidents",
        "ledger_balanced",
        "series",
    ] {
        assert!(report.get(key).is_some(), "report.json lacks {key}");
    }
    for p in ["p50", "p95", "p99", "p999", "max"] {
        assert!(report["latency_ms"][p].is_number(), "latency_ms.{p}");
    }
    assert_eq!(report["scenario"], scenario);
    assert_eq!(report["ledger_balanced"], true);
    assert!(
        report["payments"].as_u64().unwrap() > 0,
        "{scenario} made no payments"
    );
    report
}

fn count(report: &Value, status: &str) -> u64 {
    report["outcomes"][status].as_u64().unwrap_or(0)
}

fn psp_calls(report: &Value, counter: &str) -> u64 {
    report["psps"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["calls"][counter].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn max_throughput_captures_everything() {
    let dir = tempfile::tempdir().unwrap();
    let r = run("max-throughput", dir.path());
    assert_eq!(count(&r, "captured"), r["payments"].as_u64().unwrap());
    assert_eq!(r["success_rate"], 1.0);
    assert_eq!(
        r["psps"].as_object().unwrap().len(),
        3,
        "spread over the three PSPs"
    );
}

#[test]
fn seed_profile_has_its_mix_of_captures_refunds_and_declines() {
    let dir = tempfile::tempdir().unwrap();
    let r = run("seed-profile", dir.path());
    let payments = r["payments"].as_u64().unwrap();
    assert!(
        payments >= 500,
        "only {payments} payments in the scaled profile"
    );
    assert!(count(&r, "captured") > payments / 2);
    assert!(count(&r, "partially_refunded") > 0, "refunds in the mix");
    assert!(count(&r, "declined") > 0, "declines in the mix");
    // A third of payments are read back (`lookup_pct = 35`), and each read of a settled
    // payment shows what its last answer said.
    let reads = r["reads"].as_u64().unwrap();
    assert!(
        reads > payments / 4 && reads < payments / 2,
        "{reads} reads of {payments} payments"
    );
    assert_eq!(r["stale_reads"], 0, "{}", r["outcomes"]);
    assert!(
        r["success_rate"].as_f64().unwrap() >= 0.99,
        "{}",
        r["outcomes"]
    );
    assert!(
        r["series"].as_array().unwrap().len() >= 20,
        "a per-second series over the 24 s run"
    );
}

/// The (psp, from, to) breaker changes a run reported, in order.
fn transitions(report: &Value) -> Vec<(String, String, String)> {
    report["breaker_transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["psp"].as_str().unwrap().into(),
                t["from"].as_str().unwrap().into(),
                t["to"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn opened_then_closed(report: &Value, psp: &str) -> bool {
    let t = transitions(report);
    let opened = t.iter().position(|(p, _, to)| p == psp && to == "open");
    let closed = t
        .iter()
        .rposition(|(p, from, to)| p == psp && from == "half_open" && to == "closed");
    matches!((opened, closed), (Some(o), Some(c)) if o < c)
}

#[test]
fn latency_spike_opens_the_slow_psps_breaker_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = run("latency-spike", dir.path());
    assert!(opened_then_closed(&r, "psp_a"), "{:?}", transitions(&r));
    assert!(
        transitions(&r).iter().all(|(p, _, _)| p == "psp_a"),
        "only the slow PSP: {:?}",
        transitions(&r)
    );
    assert!(
        r["success_rate"].as_f64().unwrap() >= 0.99,
        "{}",
        r["outcomes"]
    );
    assert_eq!(
        count(&r, "captured"),
        r["payments"].as_u64().unwrap(),
        "{}",
        r["outcomes"]
    );
}

#[test]
fn drop_1pct_resolves_every_dropped_call_by_status_query() {
    let dir = tempfile::tempdir().unwrap();
    let r = run("drop-1pct", dir.path());
    assert!(psp_calls(&r, "dropped") > 0, "some answers were dropped");
    assert!(psp_calls(&r, "status_queries") > 0, "and then queried");
    assert_eq!(r["unresolved_after_settle"], 0);
    assert_eq!(count(&r, "unknown"), 0, "{}", r["outcomes"]);
    assert_eq!(
        count(&r, "captured"),
        r["payments"].as_u64().unwrap(),
        "{}",
        r["outcomes"]
    );
}

/// With `--baseline`, which runs the same load at `/ping` first: the outage still falls in
/// the measured run, 30 s (scaled) after its start, not in the baseline phase.
#[test]
fn psp_outage_fails_over_and_the_primary_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_with("psp-outage", dir.path(), &["--baseline"]);
    assert!(r["ratio_to_baseline"].as_f64().unwrap() > 0.0);
    assert_eq!(
        r["incidents"],
        serde_json::json!([{"psp": "psp_primary", "kind": "outage", "start_s": 0.6, "end_s": 1.2}])
    );
    assert!(psp_calls(&r, "refused_down") > 0, "the outage happened");
    assert!(
        r["success_rate"].as_f64().unwrap() >= 0.99,
        "{}",
        r["outcomes"]
    );
    assert_eq!(
        count(&r, "captured"),
        r["payments"].as_u64().unwrap(),
        "{}",
        r["outcomes"]
    );
    assert!(
        r["psps"]["psp_secondary"]["payments"].as_u64().unwrap() > 0,
        "failover used the secondary"
    );
    assert!(
        opened_then_closed(&r, "psp_primary"),
        "{:?}",
        transitions(&r)
    );
    let opened = r["breaker_transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["to"] == "open")
        .unwrap();
    assert!(
        opened["t_s"].as_f64().unwrap() >= 0.6,
        "opened by the outage, on the run's clock: {opened}"
    );
}

#[test]
fn memory_10k_keeps_thousands_in_flight_and_reports_memory() {
    let dir = tempfile::tempdir().unwrap();
    let r = run("memory-10k", dir.path());
    assert_eq!(r["mode"], "open");
    assert!(r["peak_rss_mb"].as_f64().unwrap() > 0.0);
    assert_eq!(
        count(&r, "captured"),
        r["payments"].as_u64().unwrap(),
        "{}",
        r["outcomes"]
    );
}

/// `rialto sim` with `args`, once its load has started: the process, the rest of its
/// stderr, and the path of its in-process store.
fn start_sim(
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    std::path::PathBuf,
) {
    use std::io::BufRead;
    let mut sim = Command::new(BIN)
        .arg("sim")
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rialto sim");
    let mut stderr = std::io::BufReader::new(sim.stderr.take().unwrap()).lines();
    let mut store = None;
    for line in stderr.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("(store in ").nth(1) {
            store = Some(std::path::PathBuf::from(rest.trim_end_matches(')')));
        }
        if line.starts_with("running scenario") {
            break;
        }
    }
    let store = store.expect("the in-process store's path");
    assert!(store.exists());
    (sim, stderr, store)
}

fn interrupt(sim: &std::process::Child) {
    signal(sim, libc::SIGINT);
}

fn signal(sim: &std::process::Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(sim.id() as i32, signal) }, 0);
}

/// Ctrl-C in the middle of a 90 s run: no payment starts after it, the ones in flight finish,
/// and the summary, the report and the ledger check cover what ran; the temp store goes.
#[test]
fn an_interrupted_run_settles_what_it_started_and_reports_it() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().to_str().unwrap();
    let (sim, stderr, store) =
        start_sim(&["--scenario", "psp-outage", "--quiet", "--report", report]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    interrupt(&sim);
    let rest: Vec<String> = stderr.map_while(Result::ok).collect();
    let out = sim.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{rest:?}");
    assert!(
        stdout.contains("interrupted      stopped early"),
        "{stdout}"
    );
    assert!(stdout.contains("ledger           balanced"), "{stdout}");
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(r["interrupted"], true);
    assert!(
        r["duration_s"].as_f64().unwrap() < 30.0,
        "{}",
        r["duration_s"]
    );
    assert!(r["payments"].as_u64().unwrap() > 0);
    assert_eq!(r["unresolved_after_settle"], 0);
    assert_eq!(count(&r, "captured"), r["payments"].as_u64().unwrap());
    assert_eq!(
        r["incidents"],
        serde_json::json!([]),
        "the outage at 30 s never came"
    );
    assert!(!store.exists(), "the temp store is removed");
}

/// A second Ctrl-C while payments in flight finish (here each takes two 2.5 s PSP calls)
/// quits at once, without a report, and still removes the temp store.
#[test]
fn a_second_ctrl_c_quits_at_once_and_removes_the_store() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().to_str().unwrap();
    let (sim, stderr, store) =
        start_sim(&["--scenario", "memory-10k", "--quiet", "--report", report]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    interrupt(&sim);
    let mut stderr = stderr.map_while(Result::ok);
    assert!(stderr.any(|line| line.starts_with("stopping")));
    interrupt(&sim);
    let out = sim.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ledger"),
        "no summary"
    );
    assert!(!dir.path().join("report.json").exists(), "no report");
    assert!(!store.exists(), "the temp store is removed");
}

/// A terminal closed under a run (SIGHUP): it quits at once, and the temp store goes with it.
#[test]
fn a_closed_terminal_quits_and_removes_the_store() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (sim, _stderr, store) = start_sim(&["--scenario", "memory-10k", "--quiet"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    signal(&sim, libc::SIGHUP);
    let out = sim.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(129));
    assert!(!store.exists(), "the temp store is removed");
}

#[test]
fn past_its_only_psps_bulkhead_payments_are_refused_and_the_report_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("bulkhead.toml");
    std::fs::write(
        &scenario,
        r#"name = "bulkhead"
description = "Ten times more payments than the only PSP's bulkhead takes"

[load]
mode = "open"
rate_per_s = 400
hold_ms = 1500

[[psp]]
id = "slow"
latency = { kind = "fixed", ms = 300 }
inflight_max = 10
queue_max = 0
"#,
    )
    .unwrap();
    let report = dir.path().join("report");
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(BIN)
        .args(["sim", "--quiet", "--scenario-file"])
        .arg(&scenario)
        .arg("--report")
        .arg(&report)
        .env("RUST_LOG", "error")
        .output()
        .expect("run rialto sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ledger           balanced"), "{stdout}");
    assert!(
        stdout.contains("refused because  {\"no_psp_available\":"),
        "{stdout}"
    );
    let r: Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    // A busy PSP is load, not an outage: refused one payment at a time, never read-only.
    let problems = r["problems"].as_object().unwrap();
    assert_eq!(
        problems.keys().collect::<Vec<_>>(),
        ["no_psp_available"],
        "{problems:?}"
    );
    let refused = problems["no_psp_available"].as_u64().unwrap();
    assert_eq!(refused, count(&r, "http_503"), "{}", r["outcomes"]);
    assert!(refused > r["payments"].as_u64().unwrap() / 2, "{r}");
    assert!(count(&r, "captured") > 10, "{}", r["outcomes"]);
}
