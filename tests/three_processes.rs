//! Three processes on loopback: `rialto psp-sim` serves a PSP over HTTP, `rialto serve` uses
//! it through the HTTP adapter (signed calls), and `rialto sim --target` drives the server.
//! The payments go end to end and the ledger balances.

mod common;

use serde_json::Value;
use tokio::process::Command;

use common::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psp_sim_serve_and_sim_target_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let psp_config = common::write(dir.path(), "psp.toml", common::PSP_SIM_TOML);
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
            "[engine]\npsp_call_timeout_ms = 2000\n\n{}",
            common::http_psp_toml(&psp_url)
        ),
    );
    let (mut serve, urls) = common::serve(
        data,
        &["--config", &serve_config],
        &[],
        std::process::Stdio::null(),
    )
    .await;
    let api_url = urls[0].clone();

    let report_dir = dir.path().join("report");
    let sim = Command::new(BIN)
        .args([
            "sim",
            "--scenario",
            "max-throughput",
            "--duration-scale",
            "0.02",
            "--quiet",
            "--target",
            &api_url,
            "--report",
        ])
        .arg(&report_dir)
        .env("RIALTO_API_KEY", &key)
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
    assert!(payments > 50, "{report}");
    assert_eq!(
        report["outcomes"]["captured"].as_u64(),
        Some(payments),
        "{}",
        report["outcomes"]
    );
    assert_eq!(
        report["psps"]["remote"]["payments"].as_u64(),
        Some(payments),
        "every payment went through the HTTP PSP"
    );
    assert_eq!(
        report["ledger_balanced"],
        Value::Null,
        "a remote target's ledger is checked offline, below"
    );

    serve.start_kill().unwrap();
    serve.wait().await.unwrap();
    psp.start_kill().unwrap();
    psp.wait().await.unwrap();
    let (balanced, text) = common::ledger_check(data);
    assert!(balanced, "{text}");
    assert!(
        text.contains(&format!("journal entries: {payments}")),
        "{text}"
    );
}
