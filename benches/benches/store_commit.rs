//! Durable payment commits per second on the embedded store: group commit (one fsync per
//! batch) against one fsync per commit, at 1, 64 and 400 concurrent writers. Each commit is
//! what creating a payment writes: its state, two events (outbox), an idempotency claim.
//!
//! `cargo bench -p rialto-benches --bench store_commit`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rialto_engine::{CaptureMethod, Currency, Money, NewPayment, Payment, apply};
use rialto_persistence::{
    Commit, IdempotencyRecord, IdempotencyWrite, RedbStore, Store, StoreOptions,
};

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

fn commits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
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
                    let store = store.clone();
                    let next = next.clone();
                    runtime.block_on(async move {
                        let per_writer = iters.div_ceil(writers);
                        let started = Instant::now();
                        let tasks: Vec<_> = (0..writers)
                            .map(|_| {
                                let store = store.clone();
                                let next = next.clone();
                                tokio::spawn(async move {
                                    for _ in 0..per_writer {
                                        let n = next.fetch_add(1, Ordering::Relaxed);
                                        store
                                            .commit(payment_commit(n))
                                            .await
                                            .expect("durable commit");
                                    }
                                })
                            })
                            .collect();
                        for t in futures::future::join_all(tasks).await {
                            t.expect("writer task");
                        }
                        // Scale to exactly `iters` commits' worth of time.
                        started
                            .elapsed()
                            .mul_f64(iters as f64 / (per_writer * writers) as f64)
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, commits);
criterion_main!(benches);
