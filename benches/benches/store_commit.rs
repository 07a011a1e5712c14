//! Durable payment commits per second on the embedded store: group commit (one fsync per
//! batch) against one fsync per commit, at 1, 64 and 400 concurrent writers. Each commit is
//! what creating a payment writes: its state, two events (outbox), an idempotency claim.
//!
//! `payment_lifecycle` writes what a whole payment with automatic capture writes — the
//! authorization commit (state, events, idempotency claim) and, once it is durable, the
//! capture commit (state, events, journal entry, the response to replay) — with idempotency
//! keys that look like clients' (random), from 400 concurrent payments, and counts payments.
//!
//! `cargo bench -p rialto-benches --bench store_commit`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rialto_engine::{CaptureMethod, Currency, Event, Money, NewPayment, Payment, apply};
use rialto_persistence::{
    Commit, IdempotencyRecord, IdempotencyWrite, RedbStore, Store, StoreOptions, StoredResponse,
};

/// The allocator `rialto` runs with, so that the writer thread's allocations cost here what
/// they cost in the server.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn payment_commit(n: u64) -> Commit {
    let id = format!("pay_{n:032x}");
    let (p, events) = Payment::create(
        NewPayment {
            id: id.clone(),
            merchant_id: "mer_bench".into(),
            amount: Money::new(10_000, Currency::Usd),
            payment_method: "pm_sim_approve".into(),
            capture_method: CaptureMethod::Automatic,
            merchant_reference: Some(format!("order-{n}")),
            description: None,
            metadata: vec![],
            psp: "sim_a".into(),
            fee_bps: 30,
            authorization_ttl_ms: 604_800_000,
        },
        1,
    )
    .expect("valid payment");
    let p = apply(&p, &events[1], 1).expect("authorize").payment;
    Commit {
        payment: p,
        events: events.to_vec(),
        entry: None,
        idempotency: Some(IdempotencyWrite {
            merchant_id: "mer_bench".into(),
            key: id.clone(),
            record: IdempotencyRecord {
                fingerprint: [1; 32],
                resource_id: id,
                response: None,
                created_at_ms: 1,
            },
        }),
        at_ms: 1,
        span: tracing::Span::none(),
    }
}

/// A client's idempotency key: 128 scattered bits, as a UUID v4 would be.
fn client_key(n: u64) -> String {
    let mix = |x: u64| {
        let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    format!("{:016x}{:016x}", mix(n), mix(!n))
}

/// Both commits of one payment with automatic capture, the second after the first is durable.
async fn payment_lifecycle(store: &RedbStore, n: u64) {
    let key = client_key(n);
    let mut first = payment_commit(n);
    let write = first.idempotency.as_mut().expect("claims a key");
    write.key = key.clone();
    let authorizing = first.payment.clone();
    store.commit(first).await.expect("durable commit");
    let authorized_event = Event::Authorized {
        psp_reference: format!("psp_{n}"),
    };
    let authorized = apply(&authorizing, &authorized_event, 2)
        .expect("authorized")
        .payment;
    let capture = authorized.follow_up().expect("automatic capture");
    let capturing = apply(&authorized, &capture, 2).expect("capture").payment;
    let captured_event = Event::Captured { fee_minor: 30 };
    let captured = apply(&capturing, &captured_event, 3).expect("captured");
    let id = captured.payment.id.clone();
    store
        .commit(Commit {
            payment: captured.payment,
            events: vec![authorized_event, capture, captured_event],
            entry: captured.entry,
            idempotency: Some(IdempotencyWrite {
                merchant_id: "mer_bench".into(),
                key,
                record: IdempotencyRecord {
                    fingerprint: [1; 32],
                    resource_id: id,
                    response: Some(StoredResponse {
                        status: 201,
                        body: vec![b'x'; 560],
                    }),
                    created_at_ms: 3,
                },
            }),
            at_ms: 3,
            span: tracing::Span::none(),
        })
        .await
        .expect("durable commit");
}

/// Runs `iters` operations from `writers` concurrent tasks, each operation numbered from
/// `next`, and returns the time scaled to exactly `iters` operations.
fn run_concurrently<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<RedbStore>,
    next: &Arc<AtomicU64>,
    writers: u64,
    iters: u64,
    op: F,
) -> Duration
where
    F: Fn(Arc<RedbStore>, u64) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (store, next) = (store.clone(), next.clone());
    runtime.block_on(async move {
        let per_writer = iters.div_ceil(writers);
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let (store, next) = (store.clone(), next.clone());
                tokio::spawn(async move {
                    for _ in 0..per_writer {
                        op(store.clone(), next.fetch_add(1, Ordering::Relaxed)).await;
                    }
                })
            })
            .collect();
        for t in futures::future::join_all(tasks).await {
            t.expect("writer task");
        }
        started
            .elapsed()
            .mul_f64(iters as f64 / (per_writer * writers) as f64)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn payments(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("payment_lifecycle");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(RedbStore::open(dir.path(), StoreOptions::default()).expect("open"));
    let next = Arc::new(AtomicU64::new(0));
    let writers = 400u64;
    group.bench_function(BenchmarkId::new("group_commit", writers), |b| {
        b.iter_custom(|iters| {
            run_concurrently(
                &runtime,
                &store,
                &next,
                writers,
                iters,
                |store, n| async move {
                    payment_lifecycle(&store, n).await;
                },
            )
        })
    });
    group.finish();
}

fn commits(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("durable_commits");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(1));
    for (mode, batch_max) in [
        ("group_commit", StoreOptions::default().batch_max),
        ("fsync_each", 1),
    ] {
        for writers in [1u64, 64, 400] {
            let dir = tempfile::tempdir().expect("tempdir");
            let options = StoreOptions {
                batch_max,
                ..StoreOptions::default()
            };
            let store = Arc::new(RedbStore::open(dir.path(), options).expect("open store"));
            let next = Arc::new(AtomicU64::new(0));
            group.bench_with_input(BenchmarkId::new(mode, writers), &writers, |b, &writers| {
                b.iter_custom(|iters| {
                    run_concurrently(
                        &runtime,
                        &store,
                        &next,
                        writers,
                        iters,
                        |store, n| async move {
                            store
                                .commit(payment_commit(n))
                                .await
                                .expect("durable commit");
                        },
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, payments, commits);
criterion_main!(benches);
