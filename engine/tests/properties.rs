//! Property tests: random event sequences thrown at a payment never break the ledger or the
//! lifecycle rules, whatever the state machine accepts or rejects.

use proptest::prelude::*;
use rialto_engine::ledger::{Balances, fee_for};
use rialto_engine::{
    Audit, CaptureMethod, Currency, Event, Money, NewPayment, Payment, PspOp, Status, apply,
};

#[derive(Clone, Debug)]
enum Step {
    Approve,
    Decline,
    Fail,
    Unknown,
    Capture(i64),
    CaptureSucceeds,
    CaptureFails,
    Void,
    VoidSucceeds,
    Refund(i64),
    RefundSucceeds,
    RefundFails,
    Expire(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Approve),
        Just(Step::Decline),
        Just(Step::Fail),
        Just(Step::Unknown),
        (-5i64..12_000).prop_map(Step::Capture),
        Just(Step::CaptureSucceeds),
        Just(Step::CaptureFails),
        Just(Step::Void),
        Just(Step::VoidSucceeds),
        (-5i64..12_000).prop_map(Step::Refund),
        Just(Step::RefundSucceeds),
        Just(Step::RefundFails),
        (0i64..20_000).prop_map(Step::Expire),
    ]
}

/// Turns a step into the event it stands for, given what is pending.
fn event(p: &Payment, step: &Step, n: usize) -> Event {
    let pending_refund = || match p.pending.as_ref().map(|x| &x.op) {
        Some(PspOp::Refund { refund_id, .. }) => refund_id.clone(),
        _ => "re_none".into(),
    };
    match step {
        Step::Approve => Event::Authorized {
            psp_reference: "ref".into(),
        },
        Step::Decline => Event::AuthorizeDeclined {
            code: "do_not_honor".into(),
            message: "declined".into(),
        },
        Step::Fail => Event::AuthorizeFailed {
            reason: "soft".into(),
        },
        Step::Unknown => Event::OutcomeUnknown,
        Step::Capture(a) => Event::CaptureRequested { amount_minor: *a },
        Step::CaptureSucceeds => {
            let amount = match p.pending.as_ref().map(|x| &x.op) {
                Some(PspOp::Capture { amount_minor }) => *amount_minor,
                _ => 0,
            };
            Event::Captured {
                fee_minor: fee_for(amount.max(0), p.fee_bps),
            }
        }
        Step::CaptureFails => Event::CaptureFailed {
            reason: "psp".into(),
        },
        Step::Void => Event::VoidRequested,
        Step::VoidSucceeds => Event::Voided,
        Step::Refund(a) => Event::RefundRequested {
            refund_id: format!("re_{n}"),
            amount_minor: *a,
        },
        Step::RefundSucceeds => Event::Refunded {
            refund_id: pending_refund(),
        },
        Step::RefundFails => Event::RefundFailed {
            refund_id: pending_refund(),
            reason: "psp".into(),
        },
        Step::Expire(_) => Event::Expired,
    }
}

fn start(capture_method: CaptureMethod, amount: i64) -> Payment {
    let (p, events) = Payment::create(
        NewPayment {
            id: "pay_prop".into(),
            merchant_id: "mer_prop".into(),
            amount: Money::new(amount, Currency::Irr),
            payment_method: "pm_sim_approve".into(),
            capture_method,
            merchant_reference: None,
            description: None,
            metadata: vec![],
            psp: "sim_a".into(),
            fee_bps: 290,
            authorization_ttl_ms: 10_000,
        },
        0,
    )
    .expect("valid payment");
    apply(&p, &events[1], 0)
        .expect("authorize requested")
        .payment
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Postings balance, refunds stay within captures, terminal states stay terminal, and the
    /// ledger agrees with the payment, for any sequence of events.
    #[test]
    fn random_event_sequences_keep_every_invariant(
        manual in any::<bool>(),
        amount in 1i64..10_000,
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let capture = if manual { CaptureMethod::Manual } else { CaptureMethod::Automatic };
        let mut p = start(capture, amount);
        let mut balances = Balances::default();
        let mut entries = Vec::new();
        let mut now = 0i64;
        for (n, s) in steps.iter().enumerate() {
            now += match s { Step::Expire(dt) => *dt, _ => 1 };
            let e = event(&p, s, n);
            let was_terminal = p.status.is_terminal();
            // A rejected event changes nothing: `p` is untouched by construction.
            if let Ok(t) = apply(&p, &e, now) {
                prop_assert!(!was_terminal, "{:?} moved a terminal payment", e);
                prop_assert_eq!(t.payment.version, p.version + 1);
                if let Some(entry) = &t.entry {
                    prop_assert!(entry.check_balanced().is_ok());
                    balances.post(entry).expect("posting never overflows here");
                    entries.push(entry.clone());
                }
                p = t.payment;
                if let Some(follow) = p.follow_up() {
                    p = apply(&p, &follow, now).expect("automatic capture is legal").payment;
                }
            }
            prop_assert!(p.amount_refunded_minor <= p.amount_captured_minor);
            prop_assert!(p.amount_captured_minor <= p.amount.amount_minor);
            prop_assert!(p.refundable_minor() >= 0);
            prop_assert!(balances.totals().values().all(|t| *t == 0));
            if p.status == Status::Refunded {
                prop_assert_eq!(p.amount_refunded_minor, p.amount_captured_minor);
            }
        }
        let mut audit = Audit::default();
        for e in &entries { audit.entry(e); }
        for ((account, currency), b) in &balances.by_account { audit.stored_balance(account, *currency, *b); }
        audit.payment(&p, &entries);
        let (problems, _) = audit.problems();
        prop_assert!(problems.is_empty(), "{:?}", problems);
    }

    /// Money arithmetic never wraps: it either gives the exact i128 result or refuses.
    #[test]
    fn money_never_overflows_silently(a in any::<i64>(), b in any::<i64>()) {
        let m = |x| Money::new(x, Currency::Usd);
        let exact = i128::from(a) + i128::from(b);
        match m(a).checked_add(m(b)) {
            Ok(sum) => prop_assert_eq!(i128::from(sum.amount_minor), exact),
            Err(_) => prop_assert!(exact > i128::from(i64::MAX) || exact < i128::from(i64::MIN)),
        }
    }
}
