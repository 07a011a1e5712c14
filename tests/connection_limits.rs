//! Connections are bounded at both ends of the merchant API, by real processes on loopback:
//! `rialto serve` serves at most `api.connections_max` at once and answers the rest 503 at
//! once (its ops listener still answering), and `rialto sim` keeps its requests in
//! flight within what the open files limit leaves, counting arrivals beyond as dropped
//! instead of failing them for want of a descriptor.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::BIN;

const PING: &[u8] = b"GET /ping HTTP/1.1\r\nHost: rialto\r\n\r\n";

/// Sends `GET /ping` on `stream` and returns the first bytes of the answer.
async fn ping(stream: &mut TcpStream) -> String {
    stream.write_all(PING).await.unwrap();
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// The value of the gauge `rialto_queue_depth` (or `_capacity`) for `queue` in a scrape.
fn gauge(scrape: &str, name: &str, queue: &str) -> Option<f64> {
    let label = format!("queue=\"{queue}\"");
    scrape
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn beyond_its_connection_limit_the_api_answers_503_at_once_and_the_ops_listener_still_answers()
 {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write(dir.path(), "rialto.toml", "[api]\nconnections_max = 4\n");
    let data = dir.path().join("data");
    let (_server, urls) = common::serve(
        data.to_str().unwrap(),
        &["--config", &config],
        &[],
        Stdio::null(),
    )
    .await;
    let api = urls[0].trim_start_matches("http://").to_string();

    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&api).await.unwrap();
        let answer = ping(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream); // Kept alive: each holds one of the four.
    }

    // A fifth is answered at once, and closed: 503 problem+json, retry shortly.
    let mut fifth = TcpStream::connect(&api).await.unwrap();
    fifth.write_all(PING).await.unwrap();
    let mut refusal = String::new();
    tokio::time::timeout(Duration::from_secs(10), fifth.read_to_string(&mut refusal))
        .await
        .expect("answered and closed at once")
        .unwrap();
    let head = refusal.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{refusal}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{refusal}"
    );
    assert!(head.contains("retry-after: 1"), "{refusal}");
    assert!(head.contains("connection: close"), "{refusal}");
    assert!(
        refusal.contains("urn:rialto:problem:at_capacity"),
        "{refusal}"
    );

    // The four still work, the ops listener answers, and the gauges and the error rate tell.
    let answer = ping(&mut held[0]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let scrape = reqwest::get(format!("{}/metrics", urls[1]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let depth = |queue| gauge(&scrape, "rialto_queue_depth", queue);
    let capacity = |queue| gauge(&scrape, "rialto_queue_capacity", queue);
    assert_eq!(depth("api_connections"), Some(4.0), "{scrape}");
    assert_eq!(capacity("api_connections"), Some(4.0));
    assert_eq!(depth("ops_connections"), Some(1.0), "this scrape's own");
    assert_eq!(capacity("ops_connections"), Some(256.0));
    for gauge in ["rialto_runtime_lag_seconds ", "rialto_runtime_tasks "] {
        assert!(
            scrape.lines().any(|l| l.starts_with(gauge)),
            "{gauge}in {scrape}"
        );
    }
    let refused = scrape.lines().find(|l| {
        l.starts_with("http_server_request_duration_seconds_count{")
            && l.contains("http_response_status_code=\"503\"")
            && l.contains("route=\"/ping\"")
    });
    assert!(refused.is_some_and(|l| l.ends_with(" 1")), "{scrape}");

    // One closes: a new connection is served again.
    drop(held.pop());
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut stream = TcpStream::connect(&api).await.unwrap();
            let answer = ping(&mut stream).await;
            if answer.starts_with("HTTP/1.1 200") {
                return stream;
            }
            // The closed one's place may not be free yet.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    held.push(served.await.expect("served once a connection closed"));
}

/// Whether this process may raise its hard limits (CAP_SYS_RESOURCE, bit 24): then `rialto`
/// would lift the limit this test sets, and there is nothing to check.
fn may_raise_limits() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

#[test]
fn an_open_load_stays_within_the_open_files_limit_and_counts_the_rest_as_dropped() {
    if may_raise_limits() {
        eprintln!("this process may raise its open files limit: not checked");
        return;
    }
    const FILES: u64 = 1_600;
    let dir = tempfile::tempdir().unwrap();
    // 3,000 arrivals a second, each payment 0.8 s at the PSP: ≈ 2,400 in flight, each
    // holding a descriptor at both ends in this one process.
    let scenario = common::write(
        dir.path(),
        "scenario.toml",
        r#"name = "open-files"
description = "More payments in flight than the open files limit allows"

[load]
mode = "open"
rate_per_s = 3000
hold_ms = 1000

[[psp]]
id = "slow"
latency = { kind = "fixed", ms = 400 }
"#,
    );
    let report = dir.path().join("report");
    let mut sim = std::process::Command::new(BIN);
    sim.args(["sim", "--quiet", "--scenario-file", &scenario, "--report"])
        .arg(&report)
        .env("RUST_LOG", "error");
    // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
    unsafe {
        sim.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FILES,
                rlim_max: FILES,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = sim.output().expect("run rialto sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // (1,600 − 512 reserved) ÷ 2 ends.
    assert!(
        stderr.contains("at most 544 payments in flight"),
        "{stderr}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let outcomes = report["outcomes"].as_object().unwrap();
    assert_eq!(
        outcomes.keys().collect::<Vec<_>>(),
        ["captured"],
        "every payment sent was captured: {outcomes:?}"
    );
    assert_eq!(report["in_flight_max"], 544);
    assert!(
        report["dropped_arrivals"].as_u64().unwrap() > 500,
        "{report}"
    );
    assert!(report["payments"].as_u64().unwrap() > 500, "{report}");
    assert_eq!(report["ledger_balanced"], Value::Bool(true));
}
