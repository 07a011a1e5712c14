//! The redb store on a real temp dir: atomic commits, refusals that write nothing, durability
//! across reopen, and concurrent commits batched by the writer.

use std::sync::Arc;

use rialto_engine::ledger::fee_for;
use rialto_engine::{CaptureMethod, Currency, Event, Money, NewPayment, Payment, Status, apply};
use rialto_persistence::{
    Commit, IdempotencyRecord, IdempotencyWrite, Merchant, RedbStore, Store, StoreError,
    StoreOptions, StoredResponse,
};

fn new_payment(id: &str, merchant: &str) -> (Payment, Vec<Event>) {
    let (p, events) = Payment::create(
        NewPayment {
            id: id.into(),
            merchant_id: merchant.into(),
            amount: Money::new(5_000, Currency::Eur),
            payment_method: "pm_sim_approve".into(),
            capture_method: CaptureMethod::Automatic,
            merchant_reference: None,
            description: None,
            metadata: vec![("order".into(), "42".into())],
            psp: "sim_a".into(),
            fee_bps: 100,
            authorization_ttl_ms: 60_000,
        },
        1,
    )
    .unwrap();
    let p = apply(&p, &events[1], 1).unwrap().payment;
    (p, events.to_vec())
}

fn commit(payment: Payment, events: Vec<Event>) -> Commit {
    Commit {
        payment,
        events,
        entry: None,
        idempotency: None,
        at_ms: 1,
        span: tracing::Span::none(),
    }
}

/// Drives a payment to captured, committing each step; returns the final state.
async fn capture(store: &RedbStore, id: &str) -> Payment {
    let (p, events) = new_payment(id, "mer_a");
    store.commit(commit(p.clone(), events)).await.unwrap();
    let auth = Event::Authorized {
        psp_reference: "r".into(),
    };
    let p1 = apply(&p, &auth, 2).unwrap().payment;
    let req = p1.follow_up().unwrap();
    let p2 = apply(&p1, &req, 2).unwrap().payment;
    store
        .commit(commit(p2.clone(), vec![auth, req]))
        .await
        .unwrap();
    let captured = Event::Captured {
        fee_minor: fee_for(5_000, 100),
    };
    let t = apply(&p2, &captured, 3).unwrap();
    store
        .commit(Commit {
            entry: t.entry.clone(),
            ..commit(t.payment.clone(), vec![captured])
        })
        .await
        .unwrap();
    t.payment
}

#[tokio::test]
async fn commits_round_trip_with_events_ledger_and_in_flight_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
    let (p, events) = new_payment("pay_a", "mer_a");
    store.commit(commit(p.clone(), events)).await.unwrap();
    assert_eq!(store.payment("pay_a").await.unwrap(), Some(p.clone()));
    assert_eq!(store.in_flight(None, 10).await.unwrap(), ["pay_a"]);

    let done = capture(&store, "pay_b").await;
    assert_eq!(done.status, Status::Captured);
    let names: Vec<_> = store
        .events("pay_b")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.event.name()))
        .collect();
    assert_eq!(
        names,
        [
            (1, "payment.created"),
            (2, "payment.authorize_requested"),
            (3, "payment.authorized"),
            (4, "payment.capture_requested"),
            (5, "payment.captured"),
        ]
    );
    assert!(
        !store
            .in_flight(None, 10)
            .await
            .unwrap()
            .contains(&"pay_b".to_string())
    );
    let balances = store.balances("merchant_payable:mer_a").await.unwrap();
    assert_eq!(balances.len(), 1);
    assert_eq!(balances[0].balance_minor, -(5_000 - 50));
    let report = store.ledger_check().await.unwrap();
    assert!(report.balanced(), "{:?}", report.problems);
    assert_eq!((report.entries, report.payments), (1, 2));

    // Paged in id order.
    for id in ["pay_c", "pay_d", "pay_e"] {
        let (p, events) = new_payment(id, "mer_a");
        store.commit(commit(p, events)).await.unwrap();
    }
    assert_eq!(store.in_flight(None, 2).await.unwrap(), ["pay_a", "pay_c"]);
    assert_eq!(
        store.in_flight(Some("pay_c"), 2).await.unwrap(),
        ["pay_d", "pay_e"]
    );
    assert!(store.in_flight(Some("pay_e"), 2).await.unwrap().is_empty());
}

#[tokio::test]
async fn stale_versions_reused_keys_and_double_posts_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
    let (p, events) = new_payment("pay_a", "mer_a");
    let idem = |resource: &str, response: Option<StoredResponse>| IdempotencyWrite {
        merchant_id: "mer_a".into(),
        key: "key-1".into(),
        record: IdempotencyRecord {
            fingerprint: [7; 32],
            resource_id: resource.into(),
            response,
            created_at_ms: 1,
        },
    };
    store
        .commit(Commit {
            idempotency: Some(idem("pay_a", None)),
            ..commit(p.clone(), events.clone())
        })
        .await
        .unwrap();

    // The same creation again: stale version.
    let again = store.commit(commit(p.clone(), events.clone())).await;
    assert!(
        matches!(again, Err(StoreError::VersionConflict { .. })),
        "{again:?}"
    );

    // Another payment claiming the same idempotency key: refused, and not stored at all.
    let (q, q_events) = new_payment("pay_q", "mer_a");
    let taken = store
        .commit(Commit {
            idempotency: Some(idem("pay_q", None)),
            ..commit(q, q_events)
        })
        .await;
    assert!(matches!(taken, Err(StoreError::IdempotencyKeyTaken { .. })));
    assert_eq!(store.payment("pay_q").await.unwrap(), None);
    assert!(store.events("pay_q").await.unwrap().is_empty());

    // The capture entry can be posted once only.
    let captured = capture(&store, "pay_c").await;
    let t_entry = rialto_engine::JournalEntry {
        id: "pay_c:capture".into(),
        ..store_entry_like(&captured)
    };
    let mut replay = captured.clone();
    replay.version += 1;
    let dup = store
        .commit(Commit {
            entry: Some(t_entry),
            ..commit(replay, vec![Event::Captured { fee_minor: 50 }])
        })
        .await;
    assert!(
        matches!(dup, Err(StoreError::EntryAlreadyPosted(_))),
        "{dup:?}"
    );
    assert!(store.ledger_check().await.unwrap().balanced());

    // In progress: the claim is there, no response yet.
    let claim = store.idempotency("mer_a", "key-1").await.unwrap().unwrap();
    assert_eq!(
        (claim.resource_id.as_str(), claim.response),
        ("pay_a", None)
    );

    // Completing the original request stores its response for replay.
    let mut done = p.clone();
    done.version += 1;
    store
        .commit(Commit {
            idempotency: Some(idem(
                "pay_a",
                Some(StoredResponse {
                    status: 201,
                    body: b"{}".to_vec(),
                }),
            )),
            ..commit(done, vec![Event::OutcomeUnknown])
        })
        .await
        .unwrap();
    let record = store.idempotency("mer_a", "key-1").await.unwrap().unwrap();
    assert_eq!(
        record.response,
        Some(StoredResponse {
            status: 201,
            body: b"{}".to_vec()
        })
    );
    assert_eq!(record.fingerprint, [7; 32]);
    // Another merchant's same key is another key.
    assert_eq!(store.idempotency("mer_b", "key-1").await.unwrap(), None);
}

fn store_entry_like(p: &Payment) -> rialto_engine::JournalEntry {
    use rialto_engine::{Account, Posting};
    rialto_engine::JournalEntry::new(
        format!("{}:capture", p.id),
        p.id.clone(),
        vec![
            Posting::new(Account::PspClearing(p.psp.clone()), 10, p.currency()),
            Posting::new(
                Account::MerchantPayable(p.merchant_id.clone()),
                -10,
                p.currency(),
            ),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn concurrent_commits_are_all_durable_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(RedbStore::open(dir.path(), StoreOptions::default()).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { capture(&store, &format!("pay_{i:04}")).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        store
            .create_merchant(Merchant {
                id: "mer_a".into(),
                name: "A".into(),
                api_key_sha256: "ab".repeat(32),
                fee_bps: 100,
                created_at_ms: 1,
                rate_per_min: 1_000,
                burst: 100,
            })
            .await
            .unwrap();
    }
    let store = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
    let page = store.payments("mer_a", 150, None).await.unwrap();
    assert_eq!(page.payments.len(), 150);
    assert!(page.has_more);
    assert_eq!(page.payments[0].id, "pay_0199", "newest first");
    let rest = store
        .payments("mer_a", 150, Some(&page.payments[149].id))
        .await
        .unwrap();
    assert_eq!((rest.payments.len(), rest.has_more), (50, false));
    assert_eq!(rest.payments[49].id, "pay_0000");
    let report = store.ledger_check().await.unwrap();
    assert!(report.balanced(), "{:?}", report.problems);
    assert_eq!(report.entries, 200);
    let merchant = store.merchant_by_key_hash(&"ab".repeat(32)).await.unwrap();
    assert_eq!(merchant.map(|m| m.id), Some("mer_a".to_string()));
    assert_eq!(store.merchant_count().await.unwrap(), 1);
    store.health().await.unwrap();
}

/// The audit finds each payment's entries under its id: an entry whose payment is gone, or
/// that is filed apart from its payment, is reported, and so is the payment left without it.
#[tokio::test]
async fn the_ledger_check_reports_entries_without_their_payment() {
    const ENTRIES: redb::TableDefinition<&str, &[u8]> =
        redb::TableDefinition::new("journal_entries");
    const PAYMENTS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("payments");
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        for id in ["pay_a", "pay_b", "pay_c"] {
            capture(&store, id).await;
        }
        let report = store.ledger_check().await.unwrap();
        assert!(report.balanced(), "{:?}", report.problems);
    }
    {
        let db = redb::Database::open(dir.path().join("rialto.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut entries = txn.open_table(ENTRIES).unwrap();
            let row = entries
                .remove("pay_a:capture")
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            entries.insert("moved:pay_a", row.as_slice()).unwrap();
            txn.open_table(PAYMENTS).unwrap().remove("pay_b").unwrap();
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
    let report = store.ledger_check().await.unwrap();
    assert_eq!((report.payments, report.entries), (2, 3));
    assert_eq!(
        report.problems,
        [
            "entry moved:pay_a references unknown payment pay_a",
            "entry pay_b:capture references unknown payment pay_b",
            "payment pay_a says captured 5000, ledger says 0",
        ]
    );
}
