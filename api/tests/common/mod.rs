//! A whole Rialto API on loopback for tests: the redb store on a temp dir, simulated PSPs,
//! real HTTP. Each test file builds the engine it needs and wraps it here.
#![allow(dead_code)] // Each test file uses its own subset.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

use rialto_actors::psp::PspAdapter;
use rialto_actors::{Rialto, RialtoBuilder};
use rialto_api::{ApiConfig, AppState};
use rialto_persistence::{RedbStore, Store, StoreOptions};
use rialto_sim::{SimConfig, SimPsp};

pub struct Server {
    pub base: String,
    pub ops: String,
    pub store: Arc<dyn Store>,
    pub engine: Arc<Rialto>,
    pub client: Client,
    _dir: tempfile::TempDir,
}

/// Fast simulated PSPs with these ids.
pub fn sims(ids: &[&str]) -> Vec<Arc<dyn PspAdapter>> {
    ids.iter()
        .map(|id| {
            let config = SimConfig {
                latency: rialto_sim::Latency::Fixed(Duration::from_millis(1)),
                ..SimConfig::new(id)
            };
            Arc::new(SimPsp::new(config)) as Arc<dyn PspAdapter>
        })
        .collect()
}

/// The default test server: two fast simulated PSPs.
pub async fn server() -> Server {
    server_with(sims(&["sim_a", "sim_b"]), |_| {}, ApiConfig::default()).await
}

/// A server over these PSPs, with the engine configured by `tune`.
pub async fn server_with(
    adapters: Vec<Arc<dyn PspAdapter>>,
    tune: impl FnOnce(&mut RialtoBuilder),
    api: ApiConfig,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(dir.path(), StoreOptions::default()).unwrap());
    let mut builder = RialtoBuilder::new(store.clone(), adapters);
    builder.config.psp_call_timeout = Duration::from_millis(300);
    builder.config.service_timeout = Duration::from_secs(5);
    builder.config.status_query_backoff = Duration::from_millis(20);
    tune(&mut builder);
    let engine = Arc::new(builder.start().await.unwrap());
    let state = AppState::new(engine.clone(), api);
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", api.local_addr().unwrap());
    let ops_base = format!("http://{}", ops.local_addr().unwrap());
    let merchant_router = rialto_api::merchant_router(state.clone());
    let ops_router = rialto_api::ops_router(state);
    tokio::spawn(async move { axum::serve(api, merchant_router).await });
    tokio::spawn(async move { axum::serve(ops, ops_router).await });
    Server {
        base,
        ops: ops_base,
        store,
        engine,
        client: Client::new(),
        _dir: dir,
    }
}

impl Server {
    /// The ops listener's `/readyz` document.
    pub async fn readyz(&self) -> Value {
        let url = format!("{}/readyz", self.ops);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The event types of a payment, oldest first.
    pub async fn event_types(&self, key: &str, id: &str) -> Vec<String> {
        let events: Value = self
            .get(key, &format!("/v1/payments/{id}/events"))
            .await
            .json()
            .await
            .unwrap();
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn merchant(&self, name: &str) -> String {
        self.merchant_limited(name, Default::default()).await
    }

    pub async fn merchant_limited(&self, name: &str, limit: rialto_api::auth::RateLimit) -> String {
        rialto_api::auth::create_merchant(self.store.as_ref(), name, 0, limit)
            .await
            .unwrap()
            .1
    }

    pub async fn post(&self, key: &str, path: &str, idem: &str, body: Value) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("Idempotency-Key", idem)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, key: &str, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub async fn raw(&self, key: &str, body: &'static str, content_type: &str) -> Response {
        self.client
            .post(format!("{}/v1/payments", self.base))
            .bearer_auth(key)
            .header("Idempotency-Key", format!("raw-{}", body.len()))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn pay(&self, key: &str, idem: &str, body: Value) -> Value {
        let r = self.post(key, "/v1/payments", idem, body).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }
}

/// Asserts a problem+json answer with this status and returns its body.
pub async fn problem(r: Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = r.json().await.unwrap();
    for field in ["type", "title", "status", "detail"] {
        assert!(body.get(field).is_some(), "problem without {field}: {body}");
    }
    assert_eq!(body["status"], status.as_u16());
    body
}
