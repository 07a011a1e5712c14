//! Resilience over real HTTP (R2): rate limits, read-only mode when every PSP is down and its
//! end when they return, operator switches, the bulkhead, retries of soft failures, and the
//! escalation of outcomes that stay unknown.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use rialto_actors::psp::PspAdapter;
use rialto_api::ApiConfig;
use rialto_api::auth::RateLimit;
use rialto_engine::breaker::BreakerConfig;
use rialto_sim::{Incident, IncidentKind, Latency, SimConfig, SimPsp};

use common::{problem, server, server_with, sims};

fn payment(method: &str) -> Value {
    json!({"amount": 1_000, "currency": "USD", "payment_method": method})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_over_its_budget_gets_429_and_another_is_unaffected() {
    let s = server().await;
    let limited = s
        .merchant_limited(
            "busy",
            RateLimit {
                per_min: 60,
                burst: 3,
            },
        )
        .await;
    let other = s.merchant("calm").await;
    for _ in 0..3 {
        assert_eq!(
            s.get(&limited, "/v1/payments").await.status(),
            StatusCode::OK
        );
    }
    let refused = s.get(&limited, "/v1/payments").await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&retry_after),
        "one token a second at 60/min: {retry_after}"
    );
    let body = problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["type"], "urn:rialto:problem:rate_limited");
    // Mutations count too, and are refused before they do anything.
    let post = s
        .post(&limited, "/v1/payments", "x", payment("pm_sim_approve"))
        .await;
    problem(post, StatusCode::TOO_MANY_REQUESTS).await;
    for _ in 0..5 {
        assert_eq!(s.get(&other, "/v1/payments").await.status(), StatusCode::OK);
    }
    assert_eq!(s.store.ledger_check().await.unwrap().payments, 0);
}

/// Two PSPs, both down from `down_from` to `down_until`, with a small, fast breaker.
async fn fragile_server(down_from: Duration, down_until: Duration) -> common::Server {
    let adapters: Vec<Arc<dyn PspAdapter>> = ["psp_a", "psp_b"]
        .into_iter()
        .map(|id| {
            let config = SimConfig {
                latency: Latency::Fixed(Duration::from_millis(1)),
                incidents: vec![Incident {
                    kind: IncidentKind::Outage,
                    start: down_from,
                    end: down_until,
                }],
                ..SimConfig::new(id)
            };
            Arc::new(SimPsp::new(config)) as Arc<dyn PspAdapter>
        })
        .collect();
    server_with(
        adapters,
        |b| {
            b.config.breaker = BreakerConfig {
                window_ms: 1_000,
                min_calls: 4,
                open_ms: 400,
                ..BreakerConfig::default()
            };
            b.config.retry_backoff_max = Duration::from_millis(20);
            b.config.health_interval = Duration::from_millis(50);
        },
        ApiConfig::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_psps_down_means_read_only_until_they_return() {
    let s = fragile_server(Duration::from_millis(300), Duration::from_millis(1_500)).await;
    let key = s.merchant("shop").await;
    let before = s
        .post(&key, "/v1/payments", "before", payment("pm_sim_approve"))
        .await;
    assert_eq!(before.status(), StatusCode::CREATED);
    let before: Value = before.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;

    // Payments fail (both PSPs refuse) until both breakers open; then Rialto is read-only.
    let mut read_only = None;
    for i in 0..40 {
        let r = s
            .post(
                &key,
                "/v1/payments",
                &format!("down-{i}"),
                payment("pm_sim_approve"),
            )
            .await;
        match r.status() {
            StatusCode::CREATED => {
                let p: Value = r.json().await.unwrap();
                assert_eq!(
                    p["status"], "failed",
                    "nothing is charged while the PSPs are down"
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                read_only = Some(r);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let r = read_only.expect("read-only once every breaker is open");
    assert!(r.headers().contains_key("retry-after"));
    let body = problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["type"], "urn:rialto:problem:read_only");
    // Reads keep working, and /readyz says why.
    let got = s
        .get(
            &key,
            &format!("/v1/payments/{}", before["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(got.status(), StatusCode::OK);
    let ready = s.readyz().await;
    assert_eq!(ready["status"], "degraded");
    assert!(
        ready["checks"]["psps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["circuit_breaker"] == "open"),
        "{ready}"
    );

    // The PSPs come back; after the open time a trial payment goes through and closes the breaker.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        i += 1;
        let r = s
            .post(
                &key,
                "/v1/payments",
                &format!("back-{i}"),
                payment("pm_sim_approve"),
            )
            .await;
        if r.status() == StatusCode::CREATED {
            let p: Value = r.json().await.unwrap();
            if p["status"] == "captured" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Rialto never left read-only mode"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.engine.read_only_reason(), None);
    assert!(s.store.ledger_check().await.unwrap().balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_switch_read_only_and_psps_with_the_admin_token() {
    let token = "an-operator-token-of-some-length";
    let api = ApiConfig {
        admin_token: Some(token.into()),
        ..ApiConfig::default()
    };
    let s = server_with(sims(&["sim_a", "sim_b"]), |_| {}, api).await;
    let key = s.merchant("shop").await;
    let admin = |path: &str, body: Value, auth: Option<&str>| {
        let mut req = s.client.post(format!("{}{path}", s.ops)).json(&body);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    problem(
        admin("/admin/read-only", json!({"enabled": true}), None)
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        admin(
            "/admin/read-only",
            json!({"enabled": true}),
            Some("wrong-token-wrong-token"),
        )
        .await
        .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        admin("/admin/read-only", json!({"enabled": true}), Some(token))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let refused = s
        .post(&key, "/v1/payments", "ro", payment("pm_sim_approve"))
        .await;
    problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        admin("/admin/read-only", json!({"enabled": false}), Some(token))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    assert_eq!(
        admin("/admin/psps/sim_a/disable", json!({}), Some(token))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    for i in 0..8 {
        let p: Value = s
            .post(
                &key,
                "/v1/payments",
                &format!("b{i}"),
                payment("pm_sim_approve"),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(p["psp"], "sim_b", "a disabled PSP gets no payments");
    }
    problem(
        admin("/admin/psps/nope/disable", json!({}), Some(token))
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        admin("/admin/psps/sim_a/enable", json!({}), Some(token))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let psps: std::collections::HashSet<String> = futures_psps(&s, &key).await;
    assert!(psps.contains("sim_a"), "enabled again: {psps:?}");

    // A ledger check of the live store, and the breaker changes (none here), for operators.
    let read = |path: &str, auth: Option<&str>| {
        let mut req = s.client.get(format!("{}{path}", s.ops));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    for path in ["/admin/ledger/check", "/admin/breakers"] {
        problem(read(path, None).await.unwrap(), StatusCode::UNAUTHORIZED).await;
    }
    let answer = |path| async move {
        let r = read(path, Some(token)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json::<Value>().await.unwrap()
    };
    let check = answer("/admin/ledger/check").await;
    assert_eq!(
        (&check["balanced"], &check["payments"], &check["problems"]),
        (&json!(true), &json!(20), &json!([])),
        "8 payments while sim_a was off, 12 after: {check}"
    );
    let breakers = answer("/admin/breakers").await;
    assert_eq!(breakers["transitions"], json!([]));
    let now_ms = breakers["now_ms"].as_i64().unwrap();
    assert!(now_ms > 0 && now_ms <= s.engine.now_ms(), "{breakers}");
}

async fn futures_psps(s: &common::Server, key: &str) -> std::collections::HashSet<String> {
    let mut seen = std::collections::HashSet::new();
    for i in 0..12 {
        let p: Value = s
            .post(
                key,
                "/v1/payments",
                &format!("e{i}"),
                payment("pm_sim_approve"),
            )
            .await
            .json()
            .await
            .unwrap();
        seen.insert(p["psp"].as_str().unwrap().to_string());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_psps_bulkhead_fills_and_payments_fail_over_to_a_healthy_one() {
    let slow = Arc::new(SimPsp::new(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(400)),
        ..SimConfig::new("slow")
    }));
    let fast = Arc::new(SimPsp::new(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(1)),
        ..SimConfig::new("fast")
    }));
    let adapters: Vec<Arc<dyn PspAdapter>> = vec![slow.clone(), fast.clone()];
    let s = server_with(
        adapters,
        |b| {
            let slow = b.routes.iter_mut().find(|r| r.id == "slow").unwrap();
            slow.inflight_max = Some(4);
            slow.queue_max = Some(2);
            b.config.psp_call_timeout = Duration::from_secs(2);
        },
        ApiConfig::default(),
    )
    .await;
    let key = s
        .merchant_limited(
            "shop",
            RateLimit {
                per_min: 0,
                burst: 1,
            },
        )
        .await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (client, base, key) = (s.client.clone(), s.base.clone(), key.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let r = client
                    .post(format!("{base}/v1/payments"))
                    .bearer_auth(key)
                    .header("Idempotency-Key", format!("bh-{i}"))
                    .json(&payment("pm_sim_approve"))
                    .send()
                    .await
                    .unwrap();
                (r.json::<Value>().await.unwrap(), started.elapsed())
            })
        })
        .collect();
    let mut fast_latencies = Vec::new();
    for t in tasks {
        let (p, took) = t.await.unwrap();
        assert_eq!(p["status"], "captured", "{p}");
        if p["psp"] == "fast" {
            fast_latencies.push(took);
        }
    }
    let slow_report = s
        .engine
        .psp_health()
        .into_iter()
        .find(|h| h.psp == "slow")
        .unwrap();
    assert!(slow_report.inflight <= 4);
    assert!(slow.stats.calls.load(std::sync::atomic::Ordering::Relaxed) <= 60);
    assert!(
        fast_latencies.len() > 30,
        "the full bulkhead sent most payments to the healthy PSP"
    );
    fast_latencies.sort();
    eprintln!(
        "payments on the healthy PSP beside a 400 ms one: {} of 60, p99 {:?}",
        fast_latencies.len(),
        fast_latencies[fast_latencies.len() * 99 / 100]
    );
    assert!(s.store.ledger_check().await.unwrap().balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_failure_is_retried_and_a_hard_decline_never_is() {
    let flaky = Arc::new(SimPsp::new(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(1)),
        soft_failure_ppm: 1_000_000,
        ..SimConfig::new("flaky")
    }));
    let s = server_with(
        vec![flaky.clone() as Arc<dyn PspAdapter>],
        |b| b.config.retry_backoff_max = Duration::from_millis(20),
        ApiConfig::default(),
    )
    .await;
    let key = s.merchant("shop").await;
    let p: Value = s
        .post(&key, "/v1/payments", "soft", payment("pm_card_visa"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        p["status"], "captured",
        "the retry with the same key went through"
    );
    assert_eq!(
        flaky
            .stats
            .soft_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let calls_before = flaky.stats.calls.load(std::sync::atomic::Ordering::Relaxed);
    let d: Value = s
        .post(&key, "/v1/payments", "hard", payment("pm_sim_decline"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["status"], "declined");
    assert_eq!(
        flaky.stats.calls.load(std::sync::atomic::Ordering::Relaxed),
        calls_before + 1,
        "one call, no retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_that_stays_unknown_is_escalated_not_retried() {
    // The PSP acts on the authorization, never answers it, then goes down: status queries
    // cannot settle the payment.
    let psp = Arc::new(SimPsp::new(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(1)),
        hang: Duration::from_secs(5),
        incidents: vec![Incident {
            kind: IncidentKind::Outage,
            start: Duration::from_millis(60),
            end: Duration::from_secs(60),
        }],
        ..SimConfig::new("vanishing")
    }));
    let s = server_with(
        vec![psp.clone() as Arc<dyn PspAdapter>],
        |b| {
            b.config.psp_call_timeout = Duration::from_millis(100);
            b.config.status_query_backoff = Duration::from_millis(30);
        },
        ApiConfig::default(),
    )
    .await;
    let key = s.merchant("shop").await;
    let p: Value = s
        .post(&key, "/v1/payments", "lost", payment("pm_sim_timeout"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p["status"], "unknown");
    let id = p["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: Value = s
            .get(&key, &format!("/v1/payments/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if now["escalated"] == true {
            assert_eq!(now["status"], "unknown", "still unknown, never resent");
            break;
        }
        assert!(Instant::now() < deadline, "never escalated: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let types = s.event_types(&key, id).await;
    assert!(types.iter().any(|t| t == "payment.escalated"), "{types:?}");
    assert_eq!(
        psp.stats.calls.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the authorization was sent once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_capture_the_psp_cannot_take_yet_is_finished_later() {
    // The PSP authorizes, then refuses everything for a while: the capture soft-fails past its
    // retries, and must be finished by the sweeper once the PSP is back, not left authorized.
    // The PSP's clock starts now, and the outage is timed from it.
    let born = Instant::now();
    let psp = Arc::new(SimPsp::new(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(30)),
        incidents: vec![Incident {
            kind: IncidentKind::Outage,
            start: Duration::from_millis(200),
            end: Duration::from_millis(700),
        }],
        ..SimConfig::new("flaky")
    }));
    let s = server_with(
        vec![psp.clone() as Arc<dyn PspAdapter>],
        |b| {
            b.config.retry_backoff_max = Duration::from_millis(10);
            b.config.sweep_interval = Duration::from_millis(100);
            // The sweeper settles the parked capture by status queries first (never a blind
            // resend); at the default 1 s backoff, doubling, they could outlast the deadline.
            b.config.status_query_backoff = Duration::from_millis(50);
            // The breaker opens on the first refused capture and stays open past the outage,
            // so the sweeper's resend meets it too: parked again, not failed.
            b.config.breaker = BreakerConfig {
                window_ms: 1_000,
                min_calls: 1,
                open_ms: 800,
                ..BreakerConfig::default()
            };
        },
        ApiConfig::default(),
    )
    .await;
    let key = s.merchant("shop").await;
    // Authorize lands before the outage (t ≈ 30 ms after the payment starts at 170 ms, on the
    // PSP's clock, however long the server took to start); the capture (t ≈ 200 ms) meets it.
    tokio::time::sleep_until((born + Duration::from_millis(170)).into()).await;
    let p: Value = s
        .post(&key, "/v1/payments", "parked", payment("pm_sim_approve"))
        .await
        .json()
        .await
        .unwrap();
    let id = p["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: Value = s
            .get(&key, &format!("/v1/payments/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if now["status"] == "captured" {
            break;
        }
        assert_ne!(
            now["status"], "authorized",
            "an automatic capture was abandoned: {now}"
        );
        assert!(Instant::now() < deadline, "never captured: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let types = s.event_types(&key, &id).await;
    let attempts = types
        .iter()
        .filter(|t| *t == "payment.capture_requested")
        .count();
    assert!(
        types.len() <= 12 && attempts == 1,
        "retries stay bounded: {types:?}"
    );
    assert!(
        psp.stats
            .refused_down
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the capture met the outage"
    );
    assert!(s.store.ledger_check().await.unwrap().balanced());
}

/// One PSP taking 400 ms per call, whose bulkhead holds `inflight_max` calls and none waiting,
/// under an engine allowing `transactions_max` payments in progress.
async fn one_slow_psp(inflight_max: usize, transactions_max: usize) -> common::Server {
    let slow = Arc::new(SimPsp::new(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(400)),
        ..SimConfig::new("slow")
    }));
    server_with(
        vec![slow as Arc<dyn PspAdapter>],
        |b| {
            let slow = b.routes.iter_mut().find(|r| r.id == "slow").unwrap();
            slow.inflight_max = Some(inflight_max);
            slow.queue_max = Some(0);
            b.config.transactions_max = transactions_max;
            b.config.psp_call_timeout = Duration::from_secs(2);
        },
        ApiConfig::default(),
    )
    .await
}

/// Starts a payment and waits until its authorization holds a slot of the PSP's bulkhead.
async fn occupy(s: &common::Server, key: &str, idem: &str) -> tokio::task::JoinHandle<Value> {
    let (client, base, key, idem) = (
        s.client.clone(),
        s.base.clone(),
        key.to_string(),
        idem.to_string(),
    );
    let held = s.engine.psp_health()[0].inflight;
    let running = tokio::spawn(async move {
        let r = client
            .post(format!("{base}/v1/payments"))
            .bearer_auth(key)
            .header("Idempotency-Key", idem)
            .json(&payment("pm_sim_approve"))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    });
    let started = Instant::now();
    while s.engine.psp_health()[0].inflight == held {
        assert!(started.elapsed() < Duration::from_secs(5), "never called");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running
}

/// Sends a refused payment again, as its client would after `Retry-After`, until it is taken
/// (the slot it waits for is freed just after the answer that frees it).
async fn retry_until_created(s: &common::Server, key: &str, idem: &str) {
    for _ in 0..50 {
        let r = s
            .post(key, "/v1/payments", idem, payment("pm_sim_approve"))
            .await;
        if r.status() == StatusCode::CREATED {
            return;
        }
        problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{idem} was never taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bulkhead_refuses_new_payments_as_no_psp_available_not_read_only() {
    let s = one_slow_psp(2, 100).await;
    let key = s.merchant("shop").await;
    let first = occupy(&s, &key, "a").await;
    let second = occupy(&s, &key, "b").await;

    let refused = s
        .post(&key, "/v1/payments", "c", payment("pm_sim_approve"))
        .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        body["type"], "urn:rialto:problem:no_psp_available",
        "{body}"
    );
    // Load, not an outage: Rialto stays writable and ready while its only PSP is busy.
    assert_eq!(s.engine.read_only_reason(), None);
    let ready = s.readyz().await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["read_only"], Value::Null);
    assert_eq!(ready["checks"]["psps"][0]["can_take_payments"], false);

    for p in [first, second] {
        assert_eq!(p.await.unwrap()["status"], "captured");
    }
    // The refused key did nothing: the same request now goes through.
    retry_until_created(&s, &key, "c").await;
    let ledger = s.store.ledger_check().await.unwrap();
    assert_eq!(ledger.payments, 3);
    assert!(ledger.balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_limit_of_payments_in_progress_the_engine_refuses_as_overloaded() {
    let s = one_slow_psp(8, 1).await;
    let key = s.merchant("shop").await;
    let first = occupy(&s, &key, "a").await;

    let refused = s
        .post(&key, "/v1/payments", "b", payment("pm_sim_approve"))
        .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["type"], "urn:rialto:problem:overloaded", "{body}");

    assert_eq!(first.await.unwrap()["status"], "captured");
    retry_until_created(&s, &key, "b").await;
    let ledger = s.store.ledger_check().await.unwrap();
    assert_eq!(ledger.payments, 2);
    assert!(ledger.balanced());
}
