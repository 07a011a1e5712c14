//! The actor tree against the real redb store and simulated PSPs: payments reach their
//! outcomes, panics in a payment actor or a PSP adapter are contained and recovered from
//! storage, and a restarted engine resumes what an earlier one left in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rialto_actors::psp::PspAdapter;
use rialto_actors::{
    CommandError, CreatePayment, FaultInjector, FaultPoint, Rialto, RialtoBuilder,
};
use rialto_engine::{CaptureMethod, Currency, Money, Payment, Status};
use rialto_persistence::{RedbStore, Store, StoreOptions};
use rialto_sim::{SimConfig, SimPsp};

fn sims() -> Vec<Arc<dyn PspAdapter>> {
    ["sim_a", "sim_b", "sim_c"]
        .into_iter()
        .map(|id| {
            let config = SimConfig {
                latency: rialto_sim::Latency::Uniform {
                    min: Duration::from_millis(1),
                    max: Duration::from_millis(1 + 2),
                },
                hang: Duration::from_secs(30),
                ..SimConfig::new(id)
            };
            Arc::new(SimPsp::new(config)) as Arc<dyn PspAdapter>
        })
        .collect()
}

async fn start(store: Arc<dyn Store>, faults: Option<Arc<dyn FaultInjector>>) -> Rialto {
    start_with(store, faults, 2).await
}

async fn start_tuned(store: Arc<dyn Store>, tune: impl FnOnce(&mut RialtoBuilder)) -> Rialto {
    let mut b = RialtoBuilder::new(store, sims());
    b.config.psp_call_timeout = Duration::from_millis(200);
    b.config.status_query_backoff = Duration::from_millis(20);
    tune(&mut b);
    b.start().await.expect("engine starts")
}

async fn start_with(
    store: Arc<dyn Store>,
    faults: Option<Arc<dyn FaultInjector>>,
    payment_restarts_max: u32,
) -> Rialto {
    let mut b = RialtoBuilder::new(store, sims());
    b.config.psp_call_timeout = Duration::from_millis(200);
    b.config.status_query_backoff = Duration::from_millis(20);
    b.config.payment_restarts_max = payment_restarts_max;
    b.faults = faults;
    b.start().await.expect("engine starts")
}

fn create(method: &str, reference: &str) -> CreatePayment {
    CreatePayment {
        merchant_id: "mer_1".into(),
        fee_bps: 100,
        amount: Money::new(12_345, Currency::Usd),
        payment_method: method.into(),
        capture_method: CaptureMethod::Automatic,
        merchant_reference: Some(reference.into()),
        description: None,
        metadata: vec![],
    }
}

/// Starts `n` payments concurrently, references `{prefix}-{i}`.
fn spawn_many(
    engine: &Arc<Rialto>,
    method: &'static str,
    prefix: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<Payment, CommandError>>> {
    (0..n)
        .map(|i| {
            let engine = engine.clone();
            let reference = format!("{prefix}-{i}");
            tokio::spawn(async move {
                engine
                    .create_payment(create(method, &reference), None)
                    .await
            })
        })
        .collect()
}

/// Polls the store until the payment has nothing in flight.
async fn settled(store: &Arc<dyn Store>, id: &str) -> Payment {
    for _ in 0..500 {
        let p = store.payment(id).await.unwrap().expect("payment stored");
        if p.pending.is_none() {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("payment {id} never settled");
}

async fn payment_by_reference(store: &Arc<dyn Store>, reference: &str) -> Payment {
    let page = store.payments("mer_1", 1_000, None).await.unwrap();
    page.payments
        .into_iter()
        .find(|p| p.merchant_reference.as_deref() == Some(reference))
        .expect("payment with that reference")
}

fn open(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(dir, StoreOptions::default()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_reach_their_outcomes_and_timeouts_resolve_by_status_query() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let engine = start(store.clone(), None).await;

    let approved = engine
        .create_payment(create("pm_sim_approve", "a"), None)
        .await
        .unwrap();
    assert_eq!(approved.status, Status::Captured);
    assert_eq!(approved.amount_captured_minor, 12_345);

    let declined = engine
        .create_payment(create("pm_sim_decline", "d"), None)
        .await
        .unwrap();
    assert_eq!(declined.status, Status::Declined);

    let timed_out = engine
        .create_payment(create("pm_sim_timeout", "t"), None)
        .await
        .unwrap();
    assert_eq!(
        timed_out.status,
        Status::Unknown,
        "the merchant hears `unknown` at once"
    );
    let resolved = settled(&store, &timed_out.id).await;
    assert_eq!(
        resolved.status,
        Status::Captured,
        "the status query found the approval"
    );
    let events: Vec<_> = store
        .events(&timed_out.id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event.name())
        .collect();
    assert!(events.contains(&"payment.outcome_unknown"));
    assert_eq!(
        events.iter().filter(|e| **e == "payment.captured").count(),
        1
    );

    assert!(store.ledger_check().await.unwrap().balanced());
    engine.shutdown().await;
}

/// Panics in the payment actor for one payment, once, right after the PSP approved its
/// authorization and before anything of that answer is stored: the most awkward moment.
struct CrashOnce {
    reference: &'static str,
    fired: AtomicUsize,
}

impl FaultInjector for CrashOnce {
    fn panic_at(&self, p: &Payment, point: FaultPoint) -> bool {
        point == FaultPoint::PspAnswered
            && p.merchant_reference.as_deref() == Some(self.reference)
            && p.status == Status::Authorizing
            && self.fired.fetch_add(1, Ordering::SeqCst) == 0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_payment_actor_is_contained_and_its_payment_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let faults = Arc::new(CrashOnce {
        reference: "crash-me",
        fired: AtomicUsize::new(0),
    });
    let engine = Arc::new(start(store.clone(), Some(faults.clone())).await);

    let others = spawn_many(&engine, "pm_sim_approve", "ok", 100);
    let crashed = engine
        .create_payment(create("pm_sim_approve", "crash-me"), None)
        .await;
    assert_eq!(crashed, Err(CommandError::Interrupted));
    for o in others {
        assert_eq!(o.await.unwrap().unwrap().status, Status::Captured);
    }
    assert_eq!(
        faults.fired.load(Ordering::SeqCst),
        1,
        "the fault fired exactly once"
    );

    let p = payment_by_reference(&store, "crash-me").await;
    let p = settled(&store, &p.id).await;
    assert_eq!(
        p.status,
        Status::Captured,
        "recovered from storage by the supervisor"
    );
    let captures = store
        .events(&p.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event.name() == "payment.captured")
        .count();
    assert_eq!(captures, 1);
    let report = store.ledger_check().await.unwrap();
    assert!(report.balanced(), "{:?}", report.problems);
    assert_eq!(report.entries, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_psp_adapter_harms_no_other_payment_or_psp() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Below the crash-loop guard (tested on its own below): this test is about containment.
    let engine = Arc::new(start_tuned(store.clone(), |b| b.config.crash_max = 1_000).await);
    let crashes = spawn_many(&engine, "pm_sim_psp_crash", "crash", 10);
    let healthy = spawn_many(&engine, "pm_sim_approve", "ok", 60);
    let mut psps_used = std::collections::HashSet::new();
    for h in healthy {
        let p = h.await.unwrap().unwrap();
        assert_eq!(p.status, Status::Captured);
        psps_used.insert(p.psp);
    }
    assert_eq!(
        psps_used.len(),
        3,
        "every PSP, crashing calls or not, kept serving"
    );
    for c in crashes {
        // A crash mid-call is an unknown outcome, never an approval or a blind resend.
        let p = c.await.unwrap().unwrap();
        assert_eq!(p.status, Status::Unknown);
        let p = settled(&store, &p.id).await;
        assert_eq!(
            p.status,
            Status::Failed,
            "the PSP has no record, so nothing was charged"
        );
    }
    assert_eq!(engine.psps_up(), 3);
    assert!(store.ledger_check().await.unwrap().balanced());
}

/// Panics for one payment once its manual capture request is committed; with no restarts
/// allowed, the payment stays in flight in the store with its capture pending.
struct AlwaysCrash;

impl FaultInjector for AlwaysCrash {
    fn panic_at(&self, p: &Payment, point: FaultPoint) -> bool {
        point == FaultPoint::Committed
            && p.merchant_reference.as_deref() == Some("stuck")
            && p.status == Status::Capturing
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_resumes_payments_left_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let engine = start_with(store.clone(), Some(Arc::new(AlwaysCrash)), 0).await;
    let manual = CreatePayment {
        capture_method: CaptureMethod::Manual,
        ..create("pm_sim_approve", "stuck")
    };
    let p = engine.create_payment(manual, None).await.unwrap();
    assert_eq!(p.status, Status::Authorized);
    let stuck = engine.capture("mer_1", &p.id, None, None).await;
    assert_eq!(stuck, Err(CommandError::Interrupted));
    // Restarts are bounded (here: none), so the payment is left in flight, capture pending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = store.payment(&p.id).await.unwrap().unwrap();
    assert_eq!(p.status, Status::Capturing);
    assert_eq!(store.in_flight(None, 10).await.unwrap(), vec![p.id.clone()]);
    engine.shutdown().await;

    // A new engine (fresh PSPs that remember nothing) finishes it exactly once.
    let engine = start(store.clone(), None).await;
    let done = settled(&store, &p.id).await;
    assert_eq!(done.status, Status::Captured);
    assert!(store.in_flight(None, 10).await.unwrap().is_empty());
    let report = store.ledger_check().await.unwrap();
    assert!(report.balanced(), "{:?}", report.problems);
    assert_eq!(report.entries, 1);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_psp_is_marked_down_and_traffic_goes_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let engine = start_tuned(store.clone(), |b| {
        b.config.crash_max = 3;
        // Every payment tries sim_a first.
        for r in &mut b.routes {
            r.priority = if r.id == "sim_a" { 1 } else { 2 };
        }
    })
    .await;
    for i in 0..3 {
        let p = engine
            .create_payment(create("pm_sim_psp_crash", &format!("c{i}")), None)
            .await
            .unwrap();
        assert_eq!((p.psp.as_str(), p.status), ("sim_a", Status::Unknown));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let a = engine
        .psp_health()
        .into_iter()
        .find(|h| h.psp == "sim_a")
        .unwrap();
    assert!(a.down && !a.can_take, "three panics mark sim_a down: {a:?}");
    let p = engine
        .create_payment(create("pm_sim_approve", "after"), None)
        .await
        .unwrap();
    assert_ne!(p.psp, "sim_a", "traffic moved on");
    assert_eq!(p.status, Status::Captured);
    engine.shutdown().await;
}

/// A backlog in flight is resumed a page at a time, half of what may run at once, each sweep
/// going on where the last one stopped; every payment is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_left_in_flight_are_resumed_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let engine = start_with(store.clone(), Some(Arc::new(AlwaysCrash)), 0).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let manual = CreatePayment {
            capture_method: CaptureMethod::Manual,
            ..create("pm_sim_approve", "stuck")
        };
        let p = engine.create_payment(manual, None).await.unwrap();
        let stuck = engine.capture("mer_1", &p.id, None, None).await;
        assert_eq!(stuck, Err(CommandError::Interrupted));
        ids.push(p.id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    ids.sort();
    assert_eq!(store.in_flight(None, 10).await.unwrap(), ids);
    engine.shutdown().await;

    // At most 4 jobs at once: start-up resumes the first 2, each later sweep the next 2.
    let engine = start_tuned(store.clone(), |b| {
        b.config.transactions_max = 4;
        b.config.sweep_interval = Duration::from_secs(3_600);
    })
    .await;
    for (start, end) in [(0, 2), (2, 4), (4, 5)] {
        for id in &ids[start..end] {
            assert_eq!(settled(&store, id).await.status, Status::Captured);
        }
        // The rest waits for the next sweep, untouched.
        assert_eq!(store.in_flight(None, 10).await.unwrap(), ids[end..]);
        assert_eq!(engine.resume_in_flight().await, (ids.len() - end).min(2));
    }
    assert!(store.in_flight(None, 10).await.unwrap().is_empty());
    assert_eq!(
        engine.resume_in_flight().await,
        0,
        "started over, nothing left"
    );
    assert!(store.ledger_check().await.unwrap().balanced());
    engine.shutdown().await;
}
