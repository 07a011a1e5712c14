//! The double-entry ledger. Every capture and refund posts one [`JournalEntry`] whose
//! postings sum to zero per currency; [`JournalEntry::new`] refuses anything else. Debits are
//! positive, credits negative. [`Audit`] re-checks every invariant over stored entries and
//! payments, for `rialto ledger check` and for the tests.

use std::collections::{BTreeMap, HashMap};
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

/// Verifies the whole ledger against the payments it came from. Feed it every entry, every
/// stored balance and every payment, then read [`Audit::problems`].
#[derive(Debug, Default)]
pub struct Audit {
    recomputed: Balances,
    /// Recomputed balances the store has shown us, to catch any it lacks.
    balances_seen: std::collections::HashSet<(Account, Currency)>,
    entries_seen: HashMap<String, ()>,
    /// payment id → (captured postings to PSP clearing, refunded postings), from the entries.
    by_payment: HashMap<String, (i64, i64)>,
    problems: Vec<String>,
    pub entries: u64,
    pub postings: u64,
    pub payments: u64,
}

impl Audit {
    pub fn entry(&mut self, entry: &JournalEntry) {
        self.entries += 1;
        self.postings += entry.postings.len() as u64;
        if self.entries_seen.insert(entry.id.clone(), ()).is_some() {
            self.problems
                .push(format!("entry {} posted twice", entry.id));
        }
        if let Err(e) = self.recomputed.post(entry) {
            self.problems.push(e.to_string());
            return;
        }
        let clearing: i64 = entry
            .postings
            .iter()
            .filter(|p| matches!(p.account, Account::PspClearing(_)))
            .map(|p| p.amount_minor)
            .sum();
        let slot = self.by_payment.entry(entry.payment_id.clone()).or_default();
        if clearing >= 0 {
            slot.0 += clearing;
        } else {
            slot.1 -= clearing;
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

    pub fn payment(&mut self, p: &Payment) {
        self.payments += 1;
        let (captured, refunded) = self.by_payment.remove(&p.id).unwrap_or((0, 0));
        if captured != p.amount_captured_minor {
            self.problems.push(format!(
                "payment {} says captured {}, ledger says {captured}",
                p.id, p.amount_captured_minor
            ));
        }
        if refunded != p.amount_refunded_minor {
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

    /// Everything wrong with the ledger; empty means it balances.
    pub fn problems(mut self) -> (Vec<String>, BTreeMap<Currency, i128>) {
        for (payment_id, _) in self.by_payment.drain() {
            self.problems
                .push(format!("entries reference unknown payment {payment_id}"));
        }
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

    #[test]
    fn audit_catches_a_double_posted_entry() {
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
        audit.entry(&entry);
        let (problems, _) = audit.problems();
        assert!(
            problems.iter().any(|p| p.contains("posted twice")),
            "{problems:?}"
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
