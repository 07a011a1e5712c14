//! Crash safety (R2.8), end to end with the real binary: `rialto serve` takes a few hundred
//! concurrent payments, is killed with SIGKILL mid-load, and restarted on the same data dir.
//! Every acknowledged payment must still be there, every payment must reach a terminal state,
//! none may be captured twice, and `rialto ledger check` must pass.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Child;

const CONFIG: &str = r#"
[engine]
psp_call_timeout_ms = 300
service_timeout_ms = 5000
status_query_backoff_ms = 50
sweep_interval_ms = 500

[api]
request_timeout_ms = 10000
"#;

/// Starts `rialto serve` on the test's data dir and returns it with its API base URL.
async fn serve(dir: &Path) -> (Child, String) {
    let data = dir.join("data");
    let config = dir.join("rialto.toml");
    let (child, mut urls) = common::serve(
        data.to_str().unwrap(),
        &["--config", config.to_str().unwrap()],
        &[],
        Stdio::null(),
    )
    .await;
    (child, urls.remove(0))
}

fn terminal(status: &str) -> bool {
    matches!(
        status,
        "captured"
            | "declined"
            | "failed"
            | "canceled"
            | "expired"
            | "refunded"
            | "partially_refunded"
    )
}

async fn all_payments(client: &reqwest::Client, base: &str, key: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/payments?limit=100");
        if let Some(a) = &after {
            url.push_str(&format!("&starting_after={a}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let data = page["data"].as_array().unwrap().clone();
        after = data.last().map(|p| p["id"].as_str().unwrap().to_string());
        out.extend(data);
        if page["has_more"] != true {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_nothing_and_captures_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rialto.toml"), CONFIG).unwrap();
    let data = dir.path().join("data");
    let key = common::merchant(data.to_str().unwrap(), "crash-test");

    let (mut child, base) = serve(dir.path()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let acked: Arc<std::sync::Mutex<HashMap<String, String>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..200)
        .map(|w| {
            let (client, base, key, acked, stop, sent) =
                (client.clone(), base.clone(), key.clone(), acked.clone(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && n < 20 {
                    n += 1;
                    let i = sent.fetch_add(1, Ordering::SeqCst);
                    let method = if i % 5 == 0 { "pm_sim_timeout" } else if i % 11 == 0 { "pm_sim_decline" } else { "pm_sim_approve" };
                    let r = client
                        .post(format!("{base}/v1/payments"))
                        .bearer_auth(&key)
                        .header("Idempotency-Key", format!("crash-{w}-{n}"))
                        .json(&json!({"amount": 1_000 + i as i64, "currency": "USD", "payment_method": method}))
                        .send()
                        .await;
                    let Ok(r) = r else { return };
                    if r.status().is_success() {
                        let Ok(p) = r.json::<Value>().await else { return };
                        acked.lock().unwrap().insert(p["id"].as_str().unwrap().to_string(), p["status"].as_str().unwrap().to_string());
                    }
                }
            })
        })
        .collect();

    // Kill mid-load: once a few hundred payments are acknowledged, with hundreds in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.start_kill().expect("SIGKILL");
    child.wait().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let sent = sent.load(Ordering::SeqCst);
    eprintln!("sent {sent}, acknowledged {} before SIGKILL", acked.len());
    assert!(acked.len() >= 300, "the load ran before the kill");
    assert!(sent > acked.len(), "the kill landed mid-load");

    let (mut child, base) = serve(dir.path()).await;
    // Every acknowledged payment survived, and every payment settles.
    let deadline = Instant::now() + Duration::from_secs(60);
    let payments = loop {
        let payments = all_payments(&client, &base, &key).await;
        let open = payments
            .iter()
            .filter(|p| !terminal(p["status"].as_str().unwrap()))
            .count();
        if open == 0 {
            break payments;
        }
        assert!(
            Instant::now() < deadline,
            "{open} payments never reached a terminal state"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: HashMap<&str, &Value> = payments
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    for (id, acked_status) in &acked {
        let p = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("acknowledged payment {id} lost"));
        if terminal(acked_status) {
            assert_eq!(
                p["status"],
                acked_status.as_str(),
                "{id} changed after it was final"
            );
        }
    }
    let mut captured = 0;
    for p in &payments {
        let id = p["id"].as_str().unwrap();
        assert!(p["amount_captured"].as_i64() <= p["amount"].as_i64());
        let events: Value = client
            .get(format!("{base}/v1/payments/{id}/events"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let captures = events["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "payment.captured")
            .count();
        assert!(captures <= 1, "{id} captured {captures} times");
        assert_eq!(captures == 1, p["status"] == "captured", "{id}: {p}");
        captured += captures;
    }
    eprintln!(
        "{} payments stored, {captured} captured, all terminal",
        payments.len()
    );

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (balanced, report) = common::ledger_check(data.to_str().unwrap());
    eprintln!("{report}");
    assert!(balanced, "ledger check failed:\n{report}");
    assert!(report.contains(&format!("payments: {}", payments.len())));
}
