//! Three processes on loopback: `rialto psp-sim` serves a PSP over HTTP, `rialto serve` uses
//! it through the HTTP adapter (signed calls), and `rialto sim --target` drives the server.
//! The payments go end to end and the ledger balances. The PSP has an outage: `rialto sim`
//! starts its schedule with the load (`--psp-sim`) and reads the server's breaker changes and
//! a ledger check from its ops listener (`--ops`), so the report is as full as in-process.

mod common;

use serde_json::Value;
use tokio::process::Command;

use common::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psp_sim_serve_and_sim_target_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let outage = "[[psp.incident]]\nkind = \"outage\"\nstart_ms = 1500\nend_ms = 5000\n";
    let psp_config = common::write(
        dir.path(),
        "psp.toml",
        &format!("{}{outage}", common::PSP_SIM_TOML),
    );
    let (mut psp, psp_url) = common::spawn(
        &[
            "psp-sim",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &psp_config,
        ],
        "psp-sim listening",
    )
    .await;

    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let key = common::merchant(data, "e2e");
    let serve_config = common::write(
        dir.path(),
        "rialto.toml",
        &format!(
            "[engine]\npsp_call_timeout_ms = 2000\n\n\
             [engine.breaker]\nwindow_ms = 1000\nmin_calls = 4\nopen_ms = 500\n\n{}",
            common::http_psp_toml(&psp_url)
        ),
    );
    let admin_token = "loopback-admin-token";
    let (mut serve, urls) = common::serve(
        data,
        &["--config", &serve_config],
        &[("RIALTO_ADMIN_TOKEN", admin_token)],
        std::process::Stdio::null(),
    )
    .await;
    let (api_url, ops_url) = (urls[0].clone(), urls[1].clone());
    // The PSP has run a while before the load starts: its outage must still fall where its
    // config puts it on the run's clock, 1.5 s into the load, not before.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let scenario = common::write(
        dir.path(),
        "scenario.toml",
        "name = \"remote-outage\"\n[load]\nmode = \"closed\"\nvus = 20\nhold_ms = 7000\n",
    );

    // `rialto sim --target` with the ops listener, and `more` arguments.
    let sim_at = |more: &[&str]| {
        let mut sim = Command::new(BIN);
        sim.args(["sim", "--scenario-file", &scenario, "--quiet"])
            .args(["--target", &api_url, "--ops", &ops_url])
            .args(more)
            .env("RIALTO_API_KEY", &key);
        sim
    };
    // A wrong admin token fails the run before its load: no payment is made (the journal
    // entries counted at the end are the real run's alone).
    let refused = sim_at(&[])
        .env("RIALTO_ADMIN_TOKEN", "not-the-admin-token")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("401"),
        "{stderr}"
    );

    let report_dir = dir.path().join("report");
    let psp_sim = format!("remote={psp_url}");
    let sim = sim_at(&["--psp-sim", &psp_sim, "--report"])
        .arg(&report_dir)
        .env("RIALTO_ADMIN_TOKEN", admin_token)
        .env("RIALTO_PSP_SECRET", "loopback-secret")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&sim.stdout);
    assert!(
        sim.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let payments = report["payments"].as_u64().unwrap();
    let captured = report["outcomes"]["captured"].as_u64().unwrap_or(0);
    assert!(payments > 50, "{report}");
    assert!(captured > 0, "{}", report["outcomes"]);
    assert_eq!(
        report["psps"]["remote"]["payments"].as_u64(),
        Some(payments),
        "every payment went through the HTTP PSP"
    );
    assert_eq!(
        report["incidents"],
        serde_json::json!([{"psp": "remote", "kind": "outage", "start_s": 1.5, "end_s": 5.0}])
    );
    // Payments the outage caught were retried; the PSP's own counters show its refusals.
    let calls = &report["psps"]["remote"]["calls"];
    assert!(calls["refused_down"].as_u64() > Some(0), "{calls}");
    assert!(calls["approved"].as_u64() >= Some(captured), "{calls}");
    // The breaker opened during the outage on the run's clock: not before it (as it would if
    // the PSP's schedule had kept its own start), and not long after.
    let transitions = report["breaker_transitions"].as_array().unwrap();
    let first = &transitions[0];
    assert_eq!(
        (&first["psp"], &first["from"], &first["to"]),
        (&"remote".into(), &"closed".into(), &"open".into()),
        "{transitions:?}"
    );
    let opened_s = first["t_s"].as_f64().unwrap();
    assert!((1.5..5.0).contains(&opened_s), "{transitions:?}");
    assert_eq!(
        report["ledger_balanced"],
        Value::Bool(true),
        "the server's own ledger check, through its ops listener"
    );

    serve.start_kill().unwrap();
    serve.wait().await.unwrap();
    psp.start_kill().unwrap();
    psp.wait().await.unwrap();
    let (balanced, text) = common::ledger_check(data);
    assert!(balanced, "{text}");
    assert!(
        text.contains(&format!("journal entries: {captured}")),
        "{text}"
    );
}
