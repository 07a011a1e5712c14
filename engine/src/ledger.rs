//! The double-entry ledger. Every capture and refund posts one [`JournalEntry`] whose
//! postings sum to zero per currency; [`JournalEntry::new`] refuses anything else. Debits are
//! positive, credits negative. [`Audit`] re-checks every invariant over stored entries and
//! payments, for `rialto ledger check` and for the tests.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::limits::FEE_BPS_MAX;
use crate::money::Currency;
use crate::payment::Payment;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// What a PSP owes us for captured payments (an asset: debit-normal).
    PspClearing(String),
    /// What we owe a merchant (a liability: credit-normal).
    MerchantPayable(String),
    /// Our fees (revenue: credit-normal).
    FeeRevenue,
}

impl Account {
    pub fn parse(s: &str) -> Option<Account> {
        match s.split_once(':') {
            Some(("psp_clearing", psp)) if !psp.is_empty() => {
                Some(Account::PspClearing(psp.to_string()))
            }
            Some(("merchant_payable", m)) if !m.is_empty() => {
                Some(Account::MerchantPayable(m.to_string()))
            }
            None if s == "fee_revenue" => Some(Account::FeeRevenue),
            _ => None,
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::PspClearing(psp) => write!(f, "psp_clearing:{psp}"),
            Account::MerchantPayable(m) => write!(f, "merchant_payable:{m}"),
            Account::FeeRevenue => f.write_str("fee_revenue"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    pub account: Account,
    /// Debit positive, credit negative.
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Posting {
    pub fn new(account: Account, amount_minor: i64, currency: Currency) -> Posting {
        Posting {
            account,
            amount_minor,
            currency,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("entry {entry_id} does not balance in {currency}: postings sum to {sum}")]
    Unbalanced {
        entry_id: String,
        currency: Currency,
        sum: i128,
    },
    #[error("entry {0} has fewer than two postings")]
    TooFewPostings(String),
    #[error("ledger arithmetic overflowed")]
    Overflow,
}

/// One balanced set of postings, identified so it can be posted at most once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Unique per business fact (`{payment}:capture`, `{payment}:refund:{refund}`).
    pub id: String,
    pub payment_id: String,
    pub postings: Vec<Posting>,
}

impl JournalEntry {
    pub fn new(
        id: String,
        payment_id: String,
        postings: Vec<Posting>,
    ) -> Result<JournalEntry, LedgerError> {
        if postings.len() < 2 {
            return Err(LedgerError::TooFewPostings(id));
        }
        let entry = JournalEntry {
            id,
            payment_id,
            postings,
        };
        entry.check_balanced()?;
        Ok(entry)
    }

    /// Sums per currency in i128 so a hostile entry can't hide an imbalance in an overflow.
    pub fn check_balanced(&self) -> Result<(), LedgerError> {
        let mut sums: BTreeMap<Currency, i128> = BTreeMap::new();
        for p in &self.postings {
            *sums.entry(p.currency).or_default() += i128::from(p.amount_minor);
        }
        match sums.into_iter().find(|(_, sum)| *sum != 0) {
            None => Ok(()),
            Some((currency, sum)) => Err(LedgerError::Unbalanced {
                entry_id: self.id.clone(),
                currency,
                sum,
            }),
        }
    }
}

/// Our fee on a capture: `amount * bps / 10_000`, rounded down, in integers only.
pub fn fee_for(amount_minor: i64, fee_bps: u32) -> i64 {
    assert!(fee_bps <= FEE_BPS_MAX, "fee_bps {fee_bps} out of range");
    assert!(amount_minor >= 0);
    let fee = i128::from(amount_minor) * i128::from(fee_bps) / 10_000;
    i64::try_from(fee).expect("fee is at most the amount")
}

/// Running balances per account and currency, with checked arithmetic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    pub by_account: BTreeMap<(Account, Currency), i64>,
}

impl Balances {
    pub fn post(&mut self, entry: &JournalEntry) -> Result<(), LedgerError> {
        entry.check_balanced()?;
        for p in &entry.postings {
            let balance = self
                .by_account
                .entry((p.account.clone(), p.currency))
                .or_default();
            *balance = balance
                .checked_add(p.amount_minor)
                .ok_or(LedgerError::Overflow)?;
        }
        Ok(())
    }

    /// Sum of every balance per currency; zero for all of them in a sound ledger.
    pub fn totals(&self) -> BTreeMap<Currency, i128> {
        let mut totals = BTreeMap::new();
        for ((_, currency), balance) in &self.by_account {
            *totals.entry(*currency).or_default() += i128::from(*balance);
        }
        totals
    }
}

/// Verifies the whole ledger against the payments it came from, holding one entry per account
/// and currency, however many payments there are. Feed it every entry (`entry`), every
/// stored balance (`stored_balance`), every payment with the entries filed under it
/// (`payment`) and every entry that no payment's entries included (`orphan`), then read
/// [`Audit::problems`].
#[derive(Debug, Default)]
pub struct Audit {
    recomputed: Balances,
    /// Recomputed balances the store has shown us, to catch any it lacks.
    balances_seen: HashSet<(Account, Currency)>,
    problems: Vec<String>,
    pub entries: u64,
    pub postings: u64,
    pub payments: u64,
}

impl Audit {
    /// An entry, for the balances: each must balance, and together they must give the stored
    /// balances.
    pub fn entry(&mut self, entry: &JournalEntry) {
        self.entries += 1;
        self.postings += entry.postings.len() as u64;
        if let Err(e) = self.recomputed.post(entry) {
            self.problems.push(e.to_string());
        }
    }

    /// A balance as the store keeps it; it must equal the one recomputed from entries.
    pub fn stored_balance(&mut self, account: &Account, currency: Currency, balance: i64) {
        self.balances_seen.insert((account.clone(), currency));
        let recomputed = self
            .recomputed
            .by_account
            .get(&(account.clone(), currency))
            .copied()
            .unwrap_or(0);
        if recomputed != balance {
            self.problems.push(format!(
                "stored balance of {account} {currency} is {balance}, entries say {recomputed}"
            ));
        }
    }

    /// A payment and the entries filed under it: what it says it captured and refunded must
    /// be what they moved through PSP clearing, and no entry may be posted twice.
    pub fn payment<'e>(
        &mut self,
        p: &Payment,
        entries: impl IntoIterator<Item = &'e JournalEntry>,
    ) {
        self.payments += 1;
        let (mut captured, mut refunded) = (0i128, 0i128);
        let mut ids: Vec<&str> = Vec::new();
        for entry in entries {
            if ids.contains(&entry.id.as_str()) {
                self.problems
                    .push(format!("entry {} posted twice", entry.id));
                continue;
            }
            ids.push(&entry.id);
            if entry.payment_id != p.id {
                self.problems.push(format!(
                    "entry {} of payment {} is filed under payment {}",
                    entry.id, entry.payment_id, p.id
                ));
                continue;
            }
            let clearing: i128 = entry
                .postings
                .iter()
                .filter(|p| matches!(p.account, Account::PspClearing(_)))
                .map(|p| i128::from(p.amount_minor))
                .sum();
            if clearing >= 0 {
                captured += clearing;
            } else {
                refunded -= clearing;
            }
        }
        if captured != i128::from(p.amount_captured_minor) {
            self.problems.push(format!(
                "payment {} says captured {}, ledger says {captured}",
                p.id, p.amount_captured_minor
            ));
        }
        if refunded != i128::from(p.amount_refunded_minor) {
            self.problems.push(format!(
                "payment {} says refunded {}, ledger says {refunded}",
                p.id, p.amount_refunded_minor
            ));
        }
        if p.amount_captured_minor > p.amount.amount_minor {
            self.problems
                .push(format!("payment {} captured more than authorized", p.id));
        }
        if p.amount_refunded_minor > p.amount_captured_minor {
            self.problems
                .push(format!("payment {} refunded more than captured", p.id));
        }
    }

    /// An entry that no payment's entries included: its payment does not exist, or the entry
    /// is filed apart from it.
    pub fn orphan(&mut self, entry: &JournalEntry) {
        self.problems.push(format!(
            "entry {} references unknown payment {}",
            entry.id, entry.payment_id
        ));
    }

    /// Everything wrong with the ledger; empty means it balances.
    pub fn problems(mut self) -> (Vec<String>, BTreeMap<Currency, i128>) {
        for ((account, currency), balance) in &self.recomputed.by_account {
            if *balance != 0 && !self.balances_seen.contains(&(account.clone(), *currency)) {
                self.problems.push(format!(
                    "entries give {account} {currency} a balance of {balance}, the store has none"
                ));
            }
        }
        let totals = self.recomputed.totals();
        for (currency, total) in &totals {
            if *total != 0 {
                self.problems
                    .push(format!("postings in {currency} sum to {total}, not zero"));
            }
        }
        self.problems.sort();
        (self.problems, totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbalanced_entries_are_refused() {
        let p = |a: Account, amount| Posting::new(a, amount, Currency::Usd);
        let bad = JournalEntry::new(
            "e".into(),
            "pay".into(),
            vec![
                p(Account::FeeRevenue, 5),
                p(Account::PspClearing("a".into()), -4),
            ],
        );
        assert!(matches!(bad, Err(LedgerError::Unbalanced { sum: 1, .. })));
        // Equal and opposite amounts in *different* currencies do not balance either.
        let mixed = JournalEntry::new(
            "e".into(),
            "pay".into(),
            vec![
                Posting::new(Account::FeeRevenue, 5, Currency::Usd),
                Posting::new(Account::FeeRevenue, -5, Currency::Eur),
            ],
        );
        assert!(mixed.is_err());
        let single = JournalEntry::new("e".into(), "pay".into(), vec![p(Account::FeeRevenue, 0)]);
        assert_eq!(single, Err(LedgerError::TooFewPostings("e".into())));
    }

    #[test]
    fn fees_round_down_in_integers() {
        let check = |amount, bps, fee| assert_eq!(fee_for(amount, bps), fee, "{amount}@{bps}");
        check(10_000, 250, 250);
        check(99, 100, 0);
        check(1, 10_000, 1);
        check(
            crate::limits::AMOUNT_MINOR_MAX,
            10_000,
            crate::limits::AMOUNT_MINOR_MAX,
        );
    }

    #[test]
    fn accounts_round_trip_through_their_names() {
        for a in [
            Account::PspClearing("sim_a".into()),
            Account::MerchantPayable("mer_1".into()),
            Account::FeeRevenue,
        ] {
            assert_eq!(Account::parse(&a.to_string()), Some(a));
        }
        for bad in ["", "psp_clearing:", "fee_revenue:x", "cash"] {
            assert_eq!(Account::parse(bad), None, "{bad}");
        }
    }

    fn capture_of(payment_id: &str, amount: i64) -> JournalEntry {
        JournalEntry::new(
            format!("{payment_id}:capture"),
            payment_id.into(),
            vec![
                Posting::new(Account::PspClearing("a".into()), amount, Currency::Usd),
                Posting::new(Account::MerchantPayable("m".into()), -amount, Currency::Usd),
            ],
        )
        .unwrap()
    }

    /// A payment of 10 USD that says it captured `captured`.
    fn payment_that_captured(id: &str, captured: i64) -> Payment {
        let new = crate::NewPayment {
            id: id.into(),
            merchant_id: "m".into(),
            amount: crate::Money::new(10, Currency::Usd),
            payment_method: "pm_sim_approve".into(),
            capture_method: crate::CaptureMethod::Automatic,
            merchant_reference: None,
            description: None,
            metadata: vec![],
            psp: "a".into(),
            fee_bps: 0,
            authorization_ttl_ms: 10_000,
        };
        let (mut p, _) = Payment::create(new, 0).unwrap();
        p.amount_captured_minor = captured;
        p
    }

    #[test]
    fn audit_checks_each_payment_against_its_own_entries() {
        let entry = capture_of("pay_1", 10);
        let mut audit = Audit::default();
        audit.payment(&payment_that_captured("pay_1", 10), [&entry]);
        assert_eq!(audit.problems().0, Vec::<String>::new());

        let mut audit = Audit::default();
        audit.payment(&payment_that_captured("pay_1", 10), [&entry, &entry]);
        audit.payment(&payment_that_captured("pay_2", 10), []);
        audit.payment(&payment_that_captured("pay_3", 0), [&entry]);
        let (problems, _) = audit.problems();
        assert_eq!(
            problems,
            [
                "entry pay_1:capture of payment pay_1 is filed under payment pay_3",
                "entry pay_1:capture posted twice",
                "payment pay_2 says captured 10, ledger says 0",
            ]
        );
    }

    #[test]
    fn audit_catches_stored_balances_that_disagree_or_are_missing() {
        let entry = JournalEntry::new(
            "pay_1:capture".into(),
            "pay_1".into(),
            vec![
                Posting::new(Account::PspClearing("a".into()), 10, Currency::Usd),
                Posting::new(Account::MerchantPayable("m".into()), -10, Currency::Usd),
            ],
        )
        .unwrap();
        let mut audit = Audit::default();
        audit.entry(&entry);
        audit.orphan(&entry);
        audit.stored_balance(&Account::PspClearing("a".into()), Currency::Usd, 11);
        let (problems, _) = audit.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("stored balance of psp_clearing:a"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("merchant_payable:m USD a balance of -10, the store has none"))
        );
        assert!(problems.iter().any(|p| p.contains("unknown payment pay_1")));
    }
}
