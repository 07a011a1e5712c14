//! The HTTP PSP adapter against `psp-sim`'s router on loopback: they agree on the protocol and
//! its signatures, a wrong secret is refused before the simulator acts, a secret rotation keeps
//! working, and a call whose answer never comes is `Unknown` until a status query settles it.
//! A load generator (`rialto sim --psp-sim`) restarts the simulator's incident schedule and
//! reads its counters through signed admin routes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rialto_actors::psp::{OperationStatus, PspAdapter, PspOutcome, PspRequest};
use rialto_actors::psp_http::HttpPsp;
use rialto_engine::{Currency, Money};
use rialto_sim::remote::{Observers, PspSim};
use rialto_sim::{Incident, IncidentKind, Latency, SimConfig, SimPsp};
use serde_json::json;

async fn psp_sim(secrets: &[&str]) -> (String, Arc<SimPsp>) {
    psp_sim_with(secrets, Vec::new()).await
}

async fn psp_sim_with(secrets: &[&str], incidents: Vec<Incident>) -> (String, Arc<SimPsp>) {
    let sim = Arc::new(SimPsp::new(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(1)),
        hang: Duration::from_secs(5),
        incidents,
        ..SimConfig::new("remote")
    }));
    let router = rialto_sim::server::router(
        sim.clone(),
        secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, sim)
}

fn req(key: &str, method: &str) -> PspRequest {
    PspRequest {
        idempotency_key: key.into(),
        payment_id: "pay_1".into(),
        amount: Money::new(2_500, Currency::Eur),
        payment_method: method.into(),
        psp_reference: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_and_simulator_agree_and_a_bad_signature_is_refused() {
    let (url, sim) = psp_sim(&["secret-now"]).await;
    let psp = HttpPsp::new("remote", &url, b"secret-now", Duration::from_secs(2), 8).unwrap();

    let auth = psp
        .authorize(&req("pay_1:authorize", "pm_sim_approve"))
        .await;
    let PspOutcome::Approved { psp_reference } = auth else {
        panic!("{auth:?}")
    };
    assert!(psp_reference.starts_with("remote_"));
    // Resending the same key replays the answer; the PSP does not act twice.
    assert_eq!(
        psp.authorize(&req("pay_1:authorize", "pm_sim_approve"))
            .await,
        PspOutcome::Approved {
            psp_reference: psp_reference.clone()
        }
    );
    assert_eq!(sim.stats.approved.load(Ordering::Relaxed), 2);
    assert!(matches!(
        psp.capture(&req("pay_1:capture", "pm_sim_approve")).await,
        PspOutcome::Approved { .. }
    ));
    assert!(matches!(
        psp.authorize(&req("pay_2:authorize", "pm_sim_decline")).await,
        PspOutcome::HardDecline { code, .. } if code == "card_declined"
    ));
    assert!(matches!(
        psp.status(&req("pay_1:capture", "")).await,
        OperationStatus::Succeeded { .. }
    ));
    assert_eq!(
        psp.status(&req("pay_9:capture", "")).await,
        OperationStatus::NotFound
    );

    let calls_before = sim.stats.calls.load(Ordering::Relaxed);
    let forged = HttpPsp::new("remote", &url, b"wrong-secret", Duration::from_secs(2), 8).unwrap();
    let refused = forged
        .authorize(&req("pay_3:authorize", "pm_sim_approve"))
        .await;
    assert!(
        matches!(&refused, PspOutcome::HardDecline { code, .. } if code == "psp_http_401"),
        "{refused:?}"
    );
    assert_eq!(
        forged.status(&req("pay_1:capture", "")).await,
        OperationStatus::Pending,
        "a refused query settles nothing"
    );
    assert_eq!(
        sim.stats.calls.load(Ordering::Relaxed),
        calls_before,
        "the simulator never saw the forged call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_keeps_working_during_the_rotation() {
    let (url, _) = psp_sim(&["new-secret", "old-secret"]).await;
    for secret in ["new-secret", "old-secret"] {
        let psp =
            HttpPsp::new("remote", &url, secret.as_bytes(), Duration::from_secs(2), 8).unwrap();
        let key = format!("pay_{secret}:authorize");
        assert!(
            matches!(
                psp.authorize(&req(&key, "pm_sim_approve")).await,
                PspOutcome::Approved { .. }
            ),
            "{secret}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_never_comes_is_unknown_until_a_status_query() {
    let (url, _) = psp_sim(&["s"]).await;
    let psp = HttpPsp::new("remote", &url, b"s", Duration::from_millis(200), 8).unwrap();
    let outcome = psp
        .authorize(&req("pay_t:authorize", "pm_sim_timeout"))
        .await;
    assert!(matches!(outcome, PspOutcome::Unknown { .. }), "{outcome:?}");
    assert!(matches!(
        psp.status(&req("pay_t:authorize", "")).await,
        OperationStatus::Succeeded { .. }
    ));

    // A PSP nobody listens on: the request never left, so nothing can have happened.
    let gone = HttpPsp::new(
        "gone",
        "http://127.0.0.1:1",
        b"s",
        Duration::from_millis(200),
        8,
    )
    .unwrap();
    assert!(matches!(
        gone.authorize(&req("pay_g:authorize", "pm_sim_approve"))
            .await,
        PspOutcome::SoftFailure { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_admin_request_starts_the_schedule_over_and_reads_the_counters() {
    let outage = Incident {
        kind: IncidentKind::Outage,
        start: Duration::from_secs(10),
        end: Duration::from_millis(20_500),
    };
    let (url, sim) = psp_sim_with(&["secret-now"], vec![outage]).await;
    let observers = |secret: &str| {
        // Rialto's id for this PSP, which the report uses, is not the simulator's own.
        let p = PspSim::parse(&format!("primary={url}/"), secret).unwrap();
        Observers::new(None, vec![p]).unwrap()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let forged = observers("wrong-secret");
    let refused = forged.start_schedules().await.unwrap_err();
    assert!(format!("{refused:#}").contains("401"), "{refused:#}");
    assert!(forged.psp_sims_now().await.is_err());
    let ran = sim.schedule_elapsed();
    assert!(ran >= Duration::from_millis(200), "not restarted: {ran:?}");

    let signed = observers("secret-now");
    signed.start_schedules().await.unwrap();
    assert!(sim.schedule_elapsed() < ran, "restarted");
    let psp = HttpPsp::new("remote", &url, b"secret-now", Duration::from_secs(2), 8).unwrap();
    assert!(matches!(
        psp.authorize(&req("pay_1:authorize", "pm_sim_approve"))
            .await,
        PspOutcome::Approved { .. }
    ));
    let (incidents, calls) = signed.psp_sims_now().await.unwrap();
    assert_eq!(
        incidents,
        [json!({"psp": "primary", "kind": "outage", "start_s": 10.0, "end_s": 20.5})]
    );
    let calls = &calls["primary"];
    let count = |name: &str| calls.iter().find(|(n, _)| n == name).map(|(_, n)| *n);
    assert_eq!((count("calls"), count("approved")), (Some(1), Some(1)));
    assert_eq!(sim.stats.calls.load(Ordering::Relaxed), 1);
}
