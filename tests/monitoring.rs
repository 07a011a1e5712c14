//! The monitoring kit is valid and its alerts behave: Prometheus config and rules pass
//! `promtool check`, every alert's unit tests pass (`promtool test rules`: fires on a breaking
//! series, silent on a healthy one), Alertmanager's config passes `amtool check-config` and
//! routes each severity to its receiver, every runbook link resolves, and every metric the
//! rules read is one Rialto exports. Needs Debian's `prometheus` and `prometheus-alertmanager`
//! packages (`.ci/run` installs them); without them it says so and skips, except in CI.

mod common;

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

/// Rialto's sources that export metrics.
const METRIC_SOURCES: [&str; 8] = [
    "src/server.rs",
    "api/src/lib.rs",
    "api/src/auth.rs",
    "actors/src/psp_supervisor.rs",
    "actors/src/lib.rs",
    "actors/src/txn_supervisor.rs",
    "actors/src/payment_actor.rs",
    "persistence/src/redb_store.rs",
];

/// Metric names in a PromQL text: lowercase identifiers that look like Rialto's or the
/// source's series (recording-rule names, with colons, are returned separately).
fn metric_references(promql: &str) -> (Vec<String>, Vec<String>) {
    let (mut metrics, mut recorded) = (Vec::new(), Vec::new());
    for token in promql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if token.contains(':') && token.contains('_') && !token.ends_with(':') {
            recorded.push(token.to_string());
            continue;
        }
        let is_metric = token.contains('_')
            && token.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && (token.ends_with("_total")
                || token.ends_with("_bucket")
                || token.ends_with("_count")
                || token.ends_with("_sum")
                || token.ends_with("_state")
                || token.ends_with("_seconds")
                || token.starts_with("rialto_"));
        if is_metric && !token.starts_with("http_response") {
            metrics.push(token.to_string());
        }
    }
    (metrics, recorded)
}

/// Whether Rialto's code names the metric (histogram series by their base name).
fn exported(metric: &str) -> bool {
    static SOURCES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sources = SOURCES.get_or_init(|| {
        METRIC_SOURCES
            .iter()
            .map(|p| read(&root().join(p)))
            .collect()
    });
    let base = metric
        .trim_end_matches("_bucket")
        .trim_end_matches("_count")
        .trim_end_matches("_sum");
    sources.contains(&format!("\"{base}\""))
}

/// Metrics the rules read that come from other exporters (the source's gateway), by design.
const EXTERNAL_METRICS: [&str; 1] = ["cert_expiry_seconds"];

fn rules_text() -> String {
    [
        read(&root().join("monitoring/prometheus/rules/recording.yml")),
        read(&root().join("monitoring/prometheus/rules/alerts.yml")),
    ]
    .concat()
}

/// Every metric the rules read is exported by Rialto's code (a rename would silently blind
/// the alerts otherwise).
#[test]
fn rules_read_only_metrics_rialto_exports() {
    let rules = rules_text();
    let (metrics, _) = metric_references(&rules);
    let mut checked = 0;
    for metric in metrics {
        if EXTERNAL_METRICS.contains(&metric.as_str()) {
            continue;
        }
        assert!(
            exported(&metric),
            "the rules read `{metric}`, which Rialto does not export"
        );
        checked += 1;
    }
    assert!(checked >= 8, "found only {checked} metric references");
}

/// The Grafana dashboards: `(file name, dashboard JSON)`, A–H.
fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = root().join("monitoring/grafana/dashboards");
    let mut all: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let json =
                serde_json::from_str(&read(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Every PromQL expression of every Prometheus panel.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for (file, dashboard) in dashboards() {
        for panel in dashboard["panels"].as_array().expect("panels") {
            if panel["datasource"]["type"] != "prometheus" {
                continue;
            }
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"]
                    .as_str()
                    .expect("a Prometheus target has an expr");
                queries.push((format!("{file}: {}", panel["title"]), expr.to_string()));
            }
        }
    }
    queries
}

#[test]
fn grafana_has_dashboards_a_to_h_with_provisioning_for_their_datasources() {
    let all = dashboards();
    let titles: Vec<&str> = all
        .iter()
        .map(|(_, d)| d["title"].as_str().unwrap())
        .collect();
    for letter in ["A.", "B.", "C.", "D.", "E.", "F.", "G.", "H."] {
        assert!(
            titles.iter().any(|t| t.starts_with(letter)),
            "no dashboard {letter} in {titles:?}"
        );
    }
    let mut uids: Vec<&str> = all
        .iter()
        .map(|(_, d)| d["uid"].as_str().unwrap())
        .collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), all.len(), "dashboard uids are unique");
    let datasources = read(&root().join("monitoring/grafana/provisioning/datasources/rialto.yml"));
    for (file, dashboard) in &all {
        for panel in dashboard["panels"].as_array().unwrap() {
            let uid = panel["datasource"]["uid"]
                .as_str()
                .expect("panel datasource uid");
            assert!(
                datasources.contains(&format!("uid: {uid}\n")),
                "{file}: datasource `{uid}` is not provisioned"
            );
            assert!(
                !panel["targets"].as_array().unwrap().is_empty(),
                "{file}: empty panel"
            );
        }
    }
    let provider = read(&root().join("monitoring/grafana/provisioning/dashboards/rialto.yml"));
    assert!(provider.contains("type: file"), "{provider}");
}

/// Each dashboard query parses (promtool checks it as a recording rule) and reads only
/// metrics Rialto exports or the recording rules record.
#[test]
fn grafana_queries_parse_and_read_only_known_series() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 30, "only {} queries", queries.len());
    let recording = read(&root().join("monitoring/prometheus/rules/recording.yml"));
    for (panel, expr) in &queries {
        let (metrics, recorded) = metric_references(expr);
        for metric in metrics {
            assert!(
                exported(&metric),
                "{panel} reads `{metric}`, which Rialto does not export"
            );
        }
        for rule in recorded {
            assert!(
                recording.contains(&format!("record: {rule}\n")),
                "{panel} reads `{rule}`, which no recording rule records"
            );
        }
    }
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboards.yml");
    std::fs::write(&file, rules).unwrap();
    let checked = run(Command::new(promtool).args(["check", "rules"]).arg(&file));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
}

/// The Collector config redacts in every pipeline, and its patterns (RE2, which Rust's regex
/// crate shares for these constructs) really mask a PAN, a CVV and bearer credentials.
#[test]
fn otel_collector_redacts_card_data_and_credentials_in_every_pipeline() {
    let config = read(&root().join("monitoring/otel-collector/config.yaml"));
    let pipelines: Vec<&str> = config
        .lines()
        .filter(|l| l.trim_start().starts_with("processors: ["))
        .collect();
    assert_eq!(pipelines.len(), 3, "traces, logs and metrics pipelines");
    for line in pipelines {
        assert!(line.contains("transform/redact"), "{line}");
    }
    // replace_pattern(target, "regex", "replacement") and replace_all_patterns(.., "value", ..).
    let mut replacements = Vec::new();
    for line in config.lines().map(str::trim) {
        let Some(call) = line
            .strip_prefix("- replace_pattern(body, ")
            .or_else(|| line.strip_prefix("- replace_all_patterns(attributes, \"value\", "))
        else {
            continue;
        };
        let args = call.strip_suffix(')').expect("one call per line");
        let (pattern, replacement) = args.split_once("\", \"").expect("two string arguments");
        let unquote = |s: &str| {
            s.trim_matches('"')
                .replace("\\\\", "\\")
                .replace("$${", "${")
        };
        replacements.push((
            regex::Regex::new(&unquote(pattern)).expect("a valid pattern"),
            unquote(replacement),
        ));
    }
    assert!(replacements.len() >= 10, "{} patterns", replacements.len());
    let redact = |text: &str| {
        replacements.iter().fold(text.to_string(), |t, (re, with)| {
            re.replace_all(&t, with.as_str()).into_owned()
        })
    };
    let sample = "paid with 4242 4242 4242 4242 (cvv: 737), Authorization: Bearer sk_live_abcdef123456, pan 5555555555554444";
    let clean = redact(sample);
    for secret in [
        "4242 4242 4242 4242",
        "5555555555554444",
        "737",
        "sk_live_abcdef123456",
    ] {
        assert!(!clean.contains(secret), "{secret} survived: {clean}");
    }
    assert!(
        clean.contains("[PAN REDACTED]") && clean.contains("Bearer [REDACTED]"),
        "{clean}"
    );
    assert_eq!(
        redact("payment pay_0192 for 1500 EUR"),
        "payment pay_0192 for 1500 EUR"
    );
}

/// A real Prometheus (Debian's package) scrapes `rialto serve` with the shipped config and
/// rules while the simulator drives it; then every series the alerts and dashboards read, and
/// every recording rule, must return data from Prometheus's HTTP API, so a name or label that
/// differs between the code and the kit fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_series_the_rules_and_dashboards_read() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let key = common::merchant(data, "scraped");
    let (_serve, urls) = common::serve(data, &[], &[], std::process::Stdio::null()).await;
    let ops = urls[1].trim_start_matches("http://").to_string();

    // The shipped config, pointed at this server, scraping and evaluating every second.
    let prom_dir = root().join("monitoring/prometheus");
    let shipped = read(&prom_dir.join("prometheus.yml"));
    assert!(shipped.contains("job_name: payments"), "{shipped}");
    let config = shipped
        .replace("127.0.0.1:9464", &ops)
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("rules/", &format!("{}/rules/", prom_dir.display()));
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _prometheus = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let http = reqwest::Client::new();
    let query = |q: String| {
        let http = http.clone();
        async move {
            let answer: serde_json::Value = http
                .get(format!("http://{web}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            answer["data"]["result"].as_array().cloned()
        }
    };
    let up = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            if let Some(result) = query("up{job=\"payments\"} == 1".into()).await
                && !result.is_empty()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "Prometheus never scraped Rialto");

    // Load through the simulator, including declines and a manual-capture share.
    let sim = tokio::process::Command::new(common::BIN)
        .args([
            "sim",
            "--scenario",
            "seed-profile",
            "--duration-scale",
            "0.01",
            "--quiet",
            "--target",
            &urls[0],
        ])
        .env("RIALTO_API_KEY", &key)
        .output()
        .await
        .unwrap();
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );

    let mut wanted: Vec<String> = Vec::new();
    let (metrics, _) = metric_references(&rules_text());
    wanted.extend(metrics);
    for (_, expr) in dashboard_queries() {
        wanted.extend(metric_references(&expr).0);
    }
    let recording = read(&prom_dir.join("rules/recording.yml"));
    wanted.extend(
        recording
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record: "))
            .map(str::to_string),
    );
    wanted.retain(|m| !EXTERNAL_METRICS.contains(&m.as_str()));
    wanted.sort();
    wanted.dedup();
    assert!(wanted.len() >= 30, "{wanted:?}");
    // Scrapes and rule evaluations catch up within a few seconds of the run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut missing = Vec::new();
        for series in &wanted {
            let q = format!("{series}{{job=\"payments\"}} or {series}");
            if query(q).await.is_none_or(|r| r.is_empty()) {
                missing.push(series.clone());
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no data in Prometheus for {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    // And the primary error-rate expression evaluates to a number.
    let rate = query("ratio:payments_error_rate_5m".into()).await.unwrap();
    assert_eq!(rate.len(), 1, "{rate:?}");
}
