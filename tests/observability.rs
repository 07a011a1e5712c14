//! Traces and logs end to end, with the real binary on loopback:
//! - the spans of one payment arrive at an OTLP/gRPC receiver (a small test-only collector)
//!   as one trace, continuing the caller's `traceparent`, with the chain API → payment actor
//!   → PSP call → the PSP's own side (an HTTP PSP in another process) and → store commit →
//!   ledger post;
//! - a payment whose description, reference and metadata carry a valid PAN and a CVV leaves
//!   them in no log line, metric, event, API answer or byte of the store.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Value, json};

/// Collects exported spans with their resource's `service.name`.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            let mut spans = self.0.lock().unwrap();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

/// Export each span within a fifth of a second instead of five seconds.
const FAST_EXPORT: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "200")];

/// A collector on loopback, listening before any process starts so that no export finds
/// the port closed; returns it and its endpoint.
async fn collector() -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (receiver, format!("http://{otlp}"))
}

/// `rialto psp-sim`, exporting its spans to `endpoint`; returns it and its URL.
async fn exporting_psp(dir: &std::path::Path, endpoint: &str) -> (tokio::process::Child, String) {
    let psp_config = common::write(dir, "psp.toml", common::PSP_SIM_TOML);
    let (psp, urls) = common::spawn_with(
        &[
            "psp-sim",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &psp_config,
            "--otlp-endpoint",
            endpoint,
        ],
        &FAST_EXPORT,
        "psp-sim listening",
        Stdio::null(),
    )
    .await;
    (psp, urls[0].clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|x| format!("{x:02x}")).collect()
}

/// `rialto serve` with the HTTP PSP at `psp_url` and a merchant; returns it, its API URL and
/// the merchant's key.
async fn serve_with_psp(
    dir: &std::path::Path,
    psp_url: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (tokio::process::Child, String, String) {
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let key = common::merchant(data, "traced");
    let config = common::write(dir, "rialto.toml", &common::http_psp_toml(psp_url));
    let mut args = vec!["--config", config.as_str()];
    args.extend_from_slice(extra);
    let (serve, urls) = common::serve(data, &args, envs, Stdio::null()).await;
    (serve, urls[0].clone(), key)
}

/// Creates a payment inside the caller's trace (`traceparent` with the sampled flag); returns
/// the answer, which must be 201.
async fn pay_in_trace(
    api: &str,
    key: &str,
    idempotency_key: &str,
    trace_id: &str,
    caller_span: &str,
) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{api}/v1/payments"))
        .bearer_auth(key)
        .header("Idempotency-Key", idempotency_key)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({ "amount": 1250, "currency": "EUR", "payment_method": "pm_sim_approve" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_payment_is_one_trace_from_the_api_through_the_psp_to_the_ledger() {
    let (receiver, endpoint) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let (_psp, psp_url) = exporting_psp(dir.path(), &endpoint).await;
    let (_serve, api, key) = serve_with_psp(
        dir.path(),
        &psp_url,
        &["--otlp-endpoint", &endpoint],
        &FAST_EXPORT,
    )
    .await;

    // The merchant's own trace: Rialto's spans must continue it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let payment = pay_in_trace(&api, &key, "traced-1", trace_id, caller_span).await;
    assert_eq!(payment["status"], "captured");
    let payment_id = payment["id"].as_str().unwrap().to_string();

    // Wait for the whole chain: both PSP operations seen from both sides, and the posting.
    let trace = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let spans: Vec<(String, Span)> = receiver
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| hex(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            let count = |name: &str| spans.iter().filter(|(_, s)| s.name == name).count();
            if count("ledger.post") == 1
                && count("psp.call") >= 2
                && count("psp_sim.operation") >= 2
            {
                return spans;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        let got: Vec<String> = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(service, s)| format!("{service}/{} trace {}", s.name, hex(&s.trace_id)))
            .collect();
        panic!("the payment's spans did not all arrive; got {got:#?}")
    });

    let by_id: HashMap<String, &Span> = trace.iter().map(|(_, s)| (hex(&s.span_id), s)).collect();
    let parent_of = |span: &Span| {
        by_id
            .get(&hex(&span.parent_span_id))
            .map(|p| p.name.as_str())
            .unwrap_or("<outside>")
    };
    let named = |name: &str| -> Vec<&Span> {
        trace
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.name == name)
            .collect()
    };
    let request = named("POST /v1/payments");
    assert_eq!(request.len(), 1, "one server span for the request");
    assert_eq!(
        hex(&request[0].parent_span_id),
        caller_span,
        "continues the caller's span"
    );
    let actor = named("payment.actor");
    assert_eq!(actor.len(), 1);
    assert_eq!(parent_of(actor[0]), "POST /v1/payments");
    assert_eq!(
        attribute(actor[0], "payment_id").as_deref(),
        Some(payment_id.as_str())
    );
    assert_eq!(attribute(actor[0], "status").as_deref(), Some("captured"));
    let calls = named("psp.call");
    assert_eq!(calls.len(), 2, "authorize and capture");
    for call in &calls {
        assert_eq!(parent_of(call), "payment.actor");
        assert_eq!(attribute(call, "outcome").as_deref(), Some("approved"));
    }
    let remote = named("psp_sim.operation");
    for op in &remote {
        assert_eq!(parent_of(op), "psp.call", "the PSP continued the trace");
    }
    let services: Vec<&str> = trace
        .iter()
        .filter(|(_, s)| s.name == "psp_sim.operation")
        .map(|(service, _)| service.as_str())
        .collect();
    assert_eq!(services, ["rialto-psp-sim", "rialto-psp-sim"]);
    let commits = named("store.commit");
    assert_eq!(
        commits.len(),
        2,
        "two durable commits per automatic-capture payment"
    );
    for commit in &commits {
        assert_eq!(parent_of(commit), "payment.actor");
    }
    let posting = named("ledger.post");
    assert_eq!(parent_of(posting[0]), "store.commit");
    assert_eq!(
        attribute(posting[0], "posted").as_deref(),
        Some("true"),
        "the posting's span closes once it is durable"
    );
    assert!(
        trace
            .iter()
            .all(|(service, s)| s.name == "psp_sim.operation" || service == "rialto")
    );
}

/// Rialto without an exporter records no spans, yet it still passes the merchant's trace
/// on: the PSP (which does export) sees the caller's trace id, sampled, with a span of
/// Rialto's as the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_rialto_still_passes_the_callers_trace_to_the_psp() {
    let (receiver, endpoint) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let (_psp, psp_url) = exporting_psp(dir.path(), &endpoint).await;
    let (_serve, api, key) = serve_with_psp(dir.path(), &psp_url, &[], &[]).await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    pay_in_trace(&api, &key, "traced-quietly-1", trace_id, caller_span).await;

    let operations = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let spans = receiver.0.lock().unwrap().clone();
            let ops: Vec<Span> = spans
                .into_iter()
                .filter(|(_, s)| s.name == "psp_sim.operation" && hex(&s.trace_id) == trace_id)
                .map(|(_, s)| s)
                .collect();
            if ops.len() >= 2 {
                return ops;
            }
        }
    })
    .await
    .expect("the PSP's spans (authorize, capture) never arrived in the caller's trace");
    for op in &operations {
        let parent = hex(&op.parent_span_id);
        assert_eq!(parent.len(), 16, "{parent}");
        assert_ne!(parent, "0".repeat(16), "the PSP's span has a parent");
        assert_ne!(parent, caller_span, "Rialto's own span is the PSP's parent");
    }
    let spans = receiver.0.lock().unwrap().clone();
    assert!(
        spans.iter().all(|(service, _)| service == "rialto-psp-sim"),
        "Rialto exported nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_data_reaches_no_log_line_metric_event_answer_or_stored_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_str = data.to_str().unwrap();
    let key = common::merchant(data_str, "careless");
    let log_path = dir.path().join("rialto.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut serve, urls) = common::serve(
        data_str,
        &[],
        &[("RUST_LOG", "info,rialto=debug")],
        Stdio::from(log),
    )
    .await;
    let (api, ops) = (&urls[0], &urls[1]);
    let http = reqwest::Client::new();
    let body = json!({
        "amount": 4200,
        "currency": "USD",
        "payment_method": "pm_sim_approve",
        "merchant_reference": "order for 4111-1111-1111-1111",
        "description": "card 4111 1111 1111 1111 cvv 737, exp 12/29",
        "metadata": { "cvv": "737", "note": "backup card 5555555555554444" },
    });
    let response = http
        .post(format!("{api}/v1/payments"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "pan-in-text")
        .header("X-Correlation-Id", "corr-pan-test")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["x-correlation-id"],
        "corr-pan-test",
        "the correlation id is echoed"
    );
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        created["description"],
        "card **** **** **** 1111 cvv ***, exp 12/29"
    );
    assert_eq!(
        created["merchant_reference"],
        "order for ****-****-****-1111"
    );
    assert_eq!(created["metadata"]["cvv"], "[REDACTED]");
    assert_eq!(created["metadata"]["note"], "backup card ************4444");
    let id = created["id"].as_str().unwrap();

    // A replay answers from the stored record; a bad amount's error quotes no card number.
    let mut answers = vec![created.to_string()];
    let replay = http
        .post(format!("{api}/v1/payments"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "pan-in-text")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    answers.push(replay.text().await.unwrap());
    let invalid = http
        .post(format!("{api}/v1/payments"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "pan-as-amount")
        .json(&json!({ "amount": "4111111111111111", "currency": "USD", "payment_method": "pm_sim_approve" }))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    answers.push(invalid.text().await.unwrap());
    for path in [
        format!("/v1/payments/{id}"),
        format!("/v1/payments/{id}/events"),
    ] {
        let text = http
            .get(format!("{api}{path}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        answers.push(text);
    }
    let metrics = http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    serve.start_kill().unwrap();
    serve.wait().await.unwrap();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        stored.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let stored = String::from_utf8_lossy(&stored);

    // The request was logged (at debug), inside its request: the check below has lines to read.
    let line = logs
        .lines()
        .find(|l| l.contains("creating payment"))
        .unwrap_or_else(|| panic!("no request log line in:\n{logs}"));
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["correlation_id"], "corr-pan-test");
    assert_eq!(line["trace_id"].as_str().map(str::len), Some(32));
    assert!(
        stored.contains("**** **** **** 1111"),
        "the masked text is what is stored"
    );

    let places = [
        ("log", logs.as_str()),
        ("metrics", metrics.as_str()),
        ("store", &stored),
        ("answers", &answers.join("\n")),
    ];
    for (place, text) in places {
        for secret in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "5555555555554444",
            "cvv 737",
            "\"cvv\":\"737\"",
        ] {
            assert!(!text.contains(secret), "{place} holds {secret:?}");
        }
    }
}
