//! The monitoring kit is valid and its alerts behave: Prometheus config and rules pass
//! `promtool check`, every alert's unit tests pass (`promtool test rules`: fires on a breaking
//! series, silent on a healthy one), Alertmanager's config passes `amtool check-config` and
//! routes each severity to its receiver, every runbook link resolves, and every metric the
//! rules read is one Rialto exports. Needs Debian's `prometheus` and `prometheus-alertmanager`
//! packages (`.ci/run` installs them); without them it says so and skips, except in CI.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tool's path, or `None` (skip) outside CI. In CI a missing tool fails the test.
fn tool(name: &str) -> Option<&str> {
    let found = Command::new(name).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed; .ci/run installs it"
        );
        eprintln!(
            "SKIPPED: {name} is not installed (apt-get install prometheus prometheus-alertmanager)"
        );
        return None;
    }
    Some(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn prometheus_config_rules_and_alert_unit_tests_pass() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let prom = root().join("monitoring/prometheus");
    let checked = run(Command::new(promtool)
        .arg("check")
        .arg("config")
        .arg(prom.join("prometheus.yml")));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(Command::new(promtool)
        .arg("test")
        .arg("rules")
        .arg(prom.join("tests/alerts_test.yml")));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn alertmanager_routes_each_severity_to_its_receiver() {
    let Some(amtool) = tool("amtool") else { return };
    let config = root().join("monitoring/alertmanager/alertmanager.yml");
    run(Command::new(amtool).arg("check-config").arg(&config));
    for (severity, receiver) in [
        ("SEV-1", "pager"),
        ("SEV-2", "oncall-email"),
        ("SEV-3", "chat"),
    ] {
        let routed = run(Command::new(amtool)
            .args(["config", "routes", "test"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("severity={severity}"))
            .arg("service=payments"));
        assert_eq!(
            routed.lines().next().map(str::trim),
            Some(receiver),
            "{severity}: {routed}"
        );
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_runbook_link_resolves() {
    let prom = root().join("monitoring/prometheus");
    let alerts = read(&prom.join("rules/alerts.yml"));
    let links: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .collect();
    assert!(links.len() >= 11, "every alert links a runbook");
    for link in links {
        assert!(prom.join(link).is_file(), "missing runbook {link}");
    }
}

/// Every metric the rules read is exported by Rialto's code (a rename would silently blind
/// the alerts otherwise).
#[test]
fn rules_read_only_metrics_rialto_exports() {
    let rules = [
        read(&root().join("monitoring/prometheus/rules/recording.yml")),
        read(&root().join("monitoring/prometheus/rules/alerts.yml")),
    ]
    .concat();
    let sources: String = [
        "api/src/lib.rs",
        "actors/src/psp_supervisor.rs",
        "actors/src/lib.rs",
        "api/src/problem.rs",
        "persistence/src/redb_store.rs",
    ]
    .iter()
    .map(|p| read(&root().join(p)))
    .collect();
    let exported = |metric: &str| {
        let base = metric
            .trim_end_matches("_bucket")
            .trim_end_matches("_count");
        sources.contains(&format!("\"{base}\""))
    };
    let mut checked = 0;
    for token in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        let is_metric = token.contains('_')
            && !token.contains(':')
            && token.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && (token.ends_with("_total")
                || token.ends_with("_bucket")
                || token.ends_with("_count")
                || token.ends_with("_state")
                || token.starts_with("rialto_"));
        if is_metric && !token.starts_with("http_response") {
            assert!(
                exported(token),
                "the rules read `{token}`, which Rialto does not export"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "found only {checked} metric references");
}
