//! The merchant contract over real HTTP on loopback, against the redb store on a temp dir
//! and in-process simulated PSPs.

mod common;

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use common::{problem, server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_capture_approve_and_decline() {
    let s = server().await;
    let key = s.merchant("shop").await;
    let p = s
        .pay(&key, "a1", json!({"amount": 1999, "currency": "USD", "payment_method": "pm_sim_approve", "merchant_reference": "order-1"}))
        .await;
    assert_eq!(p["status"], "captured");
    assert_eq!(p["amount_captured"], 1999);
    assert!(p["psp"] == "sim_a" || p["psp"] == "sim_b");
    let id = p["id"].as_str().unwrap();

    let fetched: Value = s
        .get(&key, &format!("/v1/payments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, p);
    let types = s.event_types(&key, id).await;
    assert_eq!(
        types,
        [
            "payment.created",
            "payment.authorize_requested",
            "payment.authorized",
            "payment.capture_requested",
            "payment.captured"
        ]
    );

    let d = s
        .pay(
            &key,
            "d1",
            json!({"amount": 500, "currency": "EUR", "payment_method": "pm_sim_decline"}),
        )
        .await;
    assert_eq!(d["status"], "declined");
    assert_eq!(d["failure"]["code"], "card_declined");
    assert_eq!(d["amount_captured"], 0);

    let balances: Value = s
        .get(&key, "/v1/ledger/balances")
        .await
        .json()
        .await
        .unwrap();
    // 1999 captured, 30 bps fee rounded down = 5.
    assert_eq!(
        balances["data"],
        json!([{"currency": "USD", "payable": 1994}])
    );
    let list: Value = s
        .get(&key, "/v1/payments?limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], d["id"], "newest first");
    assert_eq!(list["has_more"], true);
    let next: Value = s
        .get(
            &key,
            &format!(
                "/v1/payments?limit=1&starting_after={}",
                d["id"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["data"][0]["id"], p["id"]);
    assert_eq!(next["has_more"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_capture_partial_capture_refunds_and_cancel() {
    let s = server().await;
    let key = s.merchant("shop").await;
    let p = s
        .pay(&key, "m1", json!({"amount": 1000, "currency": "IRR", "payment_method": "pm_sim_approve", "capture_method": "manual"}))
        .await;
    assert_eq!(p["status"], "authorized");
    assert!(p["authorization_expires_at"].is_string());
    let id = p["id"].as_str().unwrap();

    let too_much = s
        .post(
            &key,
            &format!("/v1/payments/{id}/capture"),
            "c0",
            json!({"amount": 1001}),
        )
        .await;
    problem(too_much, StatusCode::BAD_REQUEST).await;
    let c = s
        .post(
            &key,
            &format!("/v1/payments/{id}/capture"),
            "c1",
            json!({"amount": 600}),
        )
        .await;
    assert_eq!(c.status(), StatusCode::OK);
    let c: Value = c.json().await.unwrap();
    assert_eq!(
        (c["status"].as_str(), c["amount_captured"].as_i64()),
        (Some("captured"), Some(600))
    );
    let again = s
        .post(&key, &format!("/v1/payments/{id}/capture"), "c2", json!({}))
        .await;
    problem(again, StatusCode::CONFLICT).await;

    let r1 = s
        .post(
            &key,
            &format!("/v1/payments/{id}/refunds"),
            "r1",
            json!({"amount": 400}),
        )
        .await;
    assert_eq!(r1.status(), StatusCode::CREATED);
    let r1: Value = r1.json().await.unwrap();
    assert_eq!(
        (
            r1["object"].as_str(),
            r1["status"].as_str(),
            r1["amount"].as_i64()
        ),
        (Some("refund"), Some("succeeded"), Some(400))
    );
    let over = s
        .post(
            &key,
            &format!("/v1/payments/{id}/refunds"),
            "r2",
            json!({"amount": 201}),
        )
        .await;
    let body = problem(over, StatusCode::BAD_REQUEST).await;
    assert!(
        body["detail"].as_str().unwrap().contains("refundable 200"),
        "{body}"
    );
    let r3 = s
        .post(
            &key,
            &format!("/v1/payments/{id}/refunds"),
            "r3",
            json!({"amount": 200}),
        )
        .await;
    assert_eq!(r3.status(), StatusCode::CREATED);
    let p: Value = s
        .get(&key, &format!("/v1/payments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (p["status"].as_str(), p["amount_refunded"].as_i64()),
        (Some("refunded"), Some(600))
    );
    assert_eq!(p["refunds"].as_array().unwrap().len(), 2);
    let refund_again = s
        .post(
            &key,
            &format!("/v1/payments/{id}/refunds"),
            "r4",
            json!({"amount": 1}),
        )
        .await;
    problem(refund_again, StatusCode::CONFLICT).await;

    // Cancel voids an authorization; a canceled payment cannot be captured.
    let m = s
        .pay(&key, "m2", json!({"amount": 700, "currency": "USD", "payment_method": "pm_sim_approve", "capture_method": "manual"}))
        .await;
    let mid = m["id"].as_str().unwrap();
    let canceled = s
        .post(&key, &format!("/v1/payments/{mid}/cancel"), "x1", json!({}))
        .await;
    assert_eq!(canceled.status(), StatusCode::OK);
    assert_eq!(
        canceled.json::<Value>().await.unwrap()["status"],
        "canceled"
    );
    let late = s
        .post(
            &key,
            &format!("/v1/payments/{mid}/capture"),
            "x2",
            json!({}),
        )
        .await;
    problem(late, StatusCode::CONFLICT).await;

    let balances: Value = s
        .get(&key, "/v1/ledger/balances")
        .await
        .json()
        .await
        .unwrap();
    // 600 captured, fee 1 (30 bps of 600 = 1.8, rounded down), 600 refunded: payable -1.
    assert_eq!(
        balances["data"],
        json!([{"currency": "IRR", "payable": -1}])
    );
    assert!(s.store.ledger_check().await.unwrap().balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_replays_refuses_other_bodies_and_concurrent_duplicates() {
    let s = server().await;
    let key = s.merchant("shop").await;
    let body = json!({"amount": 1234, "currency": "USD", "payment_method": "pm_sim_approve", "metadata": {"a": "1", "b": "2"}});
    let first = s.post(&key, "/v1/payments", "same", body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_bytes = first.bytes().await.unwrap();

    // The same body (keys in another order) replays the stored response byte for byte.
    let reordered = json!({"metadata": {"b": "2", "a": "1"}, "payment_method": "pm_sim_approve", "currency": "USD", "amount": 1234});
    let replay = s.post(&key, "/v1/payments", "same", reordered).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), first_bytes);
    let list: Value = s.get(&key, "/v1/payments").await.json().await.unwrap();
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "one payment, not two"
    );

    let other = s
        .post(
            &key,
            "/v1/payments",
            "same",
            json!({"amount": 1235, "currency": "USD", "payment_method": "pm_sim_approve"}),
        )
        .await;
    problem(other, StatusCode::UNPROCESSABLE_ENTITY).await;
    let list: Value = s.get(&key, "/v1/payments").await.json().await.unwrap();
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "the refused request left nothing behind"
    );

    // Another merchant's identical key is its own.
    let key_b = s.merchant("other").await;
    let b = s.post(&key_b, "/v1/payments", "same", body.clone()).await;
    assert_eq!(b.status(), StatusCode::CREATED);

    // While the first request is still running (a PSP that times out), a duplicate is 409.
    let slow = json!({"amount": 50, "currency": "USD", "payment_method": "pm_sim_timeout"});
    let (a, b) = tokio::join!(s.post(&key, "/v1/payments", "slow", slow.clone()), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.post(&key, "/v1/payments", "slow", slow.clone()).await
    });
    assert_eq!(a.status(), StatusCode::CREATED);
    let a: Value = a.json().await.unwrap();
    assert_eq!(a["status"], "unknown");
    problem(b, StatusCode::CONFLICT).await;

    let missing = s
        .client
        .post(format!("{}/v1/payments", s.base))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(missing, StatusCode::BAD_REQUEST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_never_sees_or_touches_another_merchants_payment() {
    let s = server().await;
    let a = s.merchant("a").await;
    let b = s.merchant("b").await;
    let p = s
        .pay(&a, "p", json!({"amount": 900, "currency": "USD", "payment_method": "pm_sim_approve", "capture_method": "manual"}))
        .await;
    let id = p["id"].as_str().unwrap();
    problem(
        s.get(&b, &format!("/v1/payments/{id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        s.get(&b, &format!("/v1/payments/{id}/events")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        s.post(&b, &format!("/v1/payments/{id}/capture"), "c", json!({}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        s.post(&b, &format!("/v1/payments/{id}/cancel"), "x", json!({}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let list: Value = s.get(&b, "/v1/payments").await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
    let still: Value = s
        .get(&a, &format!("/v1/payments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        still["status"], "authorized",
        "B's attempts changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let s = server().await;
    let key = s.merchant("shop").await;
    let valid = || json!({"amount": 100, "currency": "USD", "payment_method": "pm_sim_approve"});
    let with = |field: &str, value: Value| {
        let mut v = valid();
        v[field] = value;
        v
    };
    let check = |r: Response, status: StatusCode| problem(r, status);

    check(
        s.raw(&key, "{not json", "application/json").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    check(s.raw(&key, r#"{"amount": 100000000000000000000, "currency": "USD", "payment_method": "pm_sim_approve"}"#, "application/json").await, StatusCode::BAD_REQUEST).await;
    check(
        s.raw(
            &key,
            r#"{"amount":1,"currency":"USD","payment_method":"pm_sim_approve"}"#,
            "text/plain",
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    let cases = [
        ("unknown currency", with("currency", json!("XXX"))),
        ("lowercase currency", with("currency", json!("usd"))),
        ("zero amount", with("amount", json!(0))),
        ("negative amount", with("amount", json!(-5))),
        (
            "over the limit",
            with("amount", json!(1_000_000_000_000_001i64)),
        ),
        ("fractional amount", with("amount", json!(10.5))),
        ("string amount", with("amount", json!("100"))),
        ("bad capture method", with("capture_method", json!("later"))),
        (
            "bad payment method",
            with("payment_method", json!("4242424242424242")),
        ),
        ("unknown field", with("amount_major", json!(1))),
        ("missing field", json!({"amount": 100, "currency": "USD"})),
        (
            "too much metadata",
            with(
                "metadata",
                json!(
                    (0..21)
                        .map(|i| (format!("k{i}"), json!("v")))
                        .collect::<serde_json::Map<_, _>>()
                ),
            ),
        ),
        (
            "long description",
            with("description", json!("x".repeat(1001))),
        ),
    ];
    for (i, (name, body)) in cases.into_iter().enumerate() {
        let r = s
            .post(&key, "/v1/payments", &format!("bad-{i}"), body)
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{name}");
        problem(r, StatusCode::BAD_REQUEST).await;
    }
    let huge = json!({"amount": 1, "currency": "USD", "payment_method": "pm_sim_approve", "description": "x".repeat(70_000)});
    check(
        s.post(&key, "/v1/payments", "huge", huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    check(
        s.get(&key, "/v1/payments/not-an-id").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    check(
        s.get(&key, "/v1/payments/pay_00000000000000000000000000000000")
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    check(
        s.get(&key, "/v1/payments?limit=0").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    check(
        s.get(&key, "/v1/payments?limit=abc").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    check(
        s.get("sk_wrong", "/v1/payments").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    check(
        s.client
            .get(format!("{}/v1/payments", s.base))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    check(s.get(&key, "/v2/nothing").await, StatusCode::NOT_FOUND).await;
    check(
        s.client
            .delete(format!("{}/v1/payments", s.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;

    let list: Value = s.get(&key, "/v1/payments").await.json().await.unwrap();
    assert_eq!(list["data"], json!([]), "no bad request stored anything");
    assert_eq!(s.store.ledger_check().await.unwrap().payments, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_and_ops_endpoints_describe_and_measure_the_api() {
    let s = server().await;
    let key = s.merchant("shop").await;
    let p = s
        .pay(
            &key,
            "o1",
            json!({"amount": 1, "currency": "USD", "payment_method": "pm_sim_approve"}),
        )
        .await;
    s.get(&key, &format!("/v1/payments/{}", p["id"].as_str().unwrap()))
        .await;

    let doc: Value = s
        .client
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/payments",
        "/v1/payments/{id}",
        "/v1/payments/{id}/capture",
        "/v1/payments/{id}/cancel",
        "/v1/payments/{id}/refunds",
        "/v1/payments/{id}/events",
        "/v1/ledger/balances",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    // Every operation names the answers any route may give, as problem+json.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let mut expected = vec!["401", "429", "503"];
            if method == "post" {
                expected.extend(["413", "415"]);
            }
            for status in expected {
                let answer = &operation["responses"][status];
                assert!(
                    answer["content"]["application/problem+json"]["schema"]["$ref"]
                        .as_str()
                        .is_some_and(|r| r.ends_with("/ProblemBody")),
                    "{method} {path} does not document {status}: {answer}"
                );
            }
        }
    }
    assert_eq!(operations, 8);
    let create_503 = doc["paths"]["/v1/payments"]["post"]["responses"]["503"]["description"]
        .as_str()
        .unwrap();
    for kind in ["at_capacity", "overloaded", "no_psp_available", "read_only"] {
        assert!(create_503.contains(kind), "{create_503}");
    }
    for schema in [
        "PaymentView",
        "RefundView",
        "CreatePaymentRequest",
        "ProblemBody",
        "PaymentList",
        "EventList",
        "BalanceList",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema} missing"
        );
    }

    let health = s
        .client
        .get(format!("{}/healthz", s.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = s
        .client
        .get(format!("{}/readyz", s.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["store"], "ok");
    let metrics = s
        .client
        .get(format!("{}/metrics", s.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("http_server_request_duration_seconds_bucket")
                && l.contains(r#"route="/v1/payments/{id}""#)
                && l.contains(r#"method="GET""#)
                && l.contains(r#"http_response_status_code="200""#)
        ),
        "route template histogram missing:\n{metrics}"
    );
    assert!(metrics.contains("http_client_request_duration_seconds_bucket{"));
}
