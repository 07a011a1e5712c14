//! Connections are bounded at both ends of the merchant API, by real processes on loopback:
//! `rialto serve` serves at most `api.connections_max` at once and defers the rest to the
//! listen backlog (its ops listener still answering), and `rialto sim` keeps its requests in
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
async fn the_api_serves_at_most_its_connection_limit_and_the_ops_listener_still_answers() {
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

    // The fifth connects (the kernel queues it) but is not served while four are open.
    let mut fifth = TcpStream::connect(&api).await.unwrap();
    fifth.write_all(PING).await.unwrap();
    let mut answer = [0u8; 512];
    let early = tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut answer)).await;
    assert!(
        early.is_err(),
        "a fifth connection was served beyond the limit of 4"
    );

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

    // One closes: the fifth is accepted and answered.
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(10), fifth.read(&mut answer))
        .await
        .expect("served once a connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
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
    assert!(
        report["dropped_arrivals"].as_u64().unwrap() > 500,
        "{report}"
    );
    assert!(report["payments"].as_u64().unwrap() > 500, "{report}");
    assert_eq!(report["ledger_balanced"], Value::Bool(true));
}
