//! Connections are opened once and kept: the load generator's client gives each request in
//! flight a connection and reuses it for the next, and the HTTP PSP adapter keeps as many
//! idle connections as its PSP's bulkhead allows calls. Both are counted by the server that
//! accepts them, on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::serve::ListenerExt;

use rialto_actors::psp::{PspAdapter, PspOutcome, PspRequest};
use rialto_actors::psp_http::HttpPsp;
use rialto_engine::{Currency, Money};
use rialto_sim::client::Client;
use rialto_sim::{Latency, SimConfig, SimPsp};

/// Serves `router` on loopback; the connections it accepted are counted.
async fn counted(router: Router) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let listener = listener.tap_io(move |_| {
        count.fetch_add(1, Ordering::Relaxed);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_gives_each_request_in_flight_a_connection_and_keeps_it() {
    // Echoes the body after 100 ms, so that requests sent together are in flight together.
    let slow = axum::routing::post(|body: Bytes| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        body
    });
    let (url, accepted) = counted(Router::new().route("/slow", slow)).await;
    let client = Arc::new(Client::new(&url, Duration::from_secs(5)).unwrap());
    // 8 at once, then 3, then 8 again: never more connections than requests at once.
    for (round, n) in [8, 3, 8].into_iter().enumerate() {
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..n {
            let client = client.clone();
            requests.spawn(async move {
                let sent = format!("{round}-{i}");
                let body = Bytes::from(sent.clone());
                (client.send(Method::POST, "/slow", &[], body).await, sent)
            });
        }
        for (reply, sent) in requests.join_all().await {
            let reply = reply.unwrap();
            assert_eq!(
                (reply.status, &reply.body[..]),
                (StatusCode::OK, sent.as_bytes())
            );
        }
        assert_eq!(client.idle(), 8, "round {round}");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_psp_adapter_keeps_a_connection_for_every_call_its_bulkhead_allows() {
    // Two rounds of 8 calls at once, each call on its own connection for 100 ms.
    async fn two_rounds(concurrency: usize) -> usize {
        let sim = Arc::new(SimPsp::new(SimConfig {
            latency: Latency::Fixed(Duration::from_millis(100)),
            ..SimConfig::new("remote")
        }));
        let (url, accepted) = counted(rialto_sim::server::router(sim, vec![b"s".to_vec()])).await;
        let psp = HttpPsp::new("remote", &url, b"s", Duration::from_secs(5), concurrency).unwrap();
        let psp = Arc::new(psp);
        for round in 0..2 {
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..8 {
                let psp = psp.clone();
                calls.spawn(async move {
                    psp.authorize(&PspRequest {
                        idempotency_key: format!("pay_{round}_{i}:authorize"),
                        payment_id: format!("pay_{round}_{i}"),
                        amount: Money::new(2_500, Currency::Eur),
                        payment_method: "pm_sim_approve".into(),
                        psp_reference: None,
                    })
                    .await
                });
            }
            for outcome in calls.join_all().await {
                assert!(
                    matches!(outcome, PspOutcome::Approved { .. }),
                    "{outcome:?}"
                );
            }
            // The connections go back to the pool once their answers are read.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        accepted.load(Ordering::Relaxed)
    }
    // Sized for 8, the second round reuses the first round's 8 connections.
    assert_eq!(two_rounds(8).await, 8);
    // Sized for 2, six of them were closed after the first round and opened again.
    assert!(two_rounds(2).await > 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_not_used_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server that answers one request per connection and then closes it, as a server
    // closing idle keep-alive connections does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client sent a whole request");
                    request.extend_from_slice(&buf[..n]);
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                socket.write_all(answer).await.unwrap();
            });
        }
    });
    let client = Client::new(&url, Duration::from_secs(5)).unwrap();
    for _ in 0..3 {
        let reply = client.send(Method::GET, "/", &[], Bytes::new()).await;
        assert_eq!(&reply.unwrap().body[..], b"ok");
        // Time for the close to arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 3);
}
