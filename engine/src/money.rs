//! Money as integer minor units of an ISO 4217 currency. There are no floats and no
//! `Default`: every amount is built from a currency and checked arithmetic.

use std::fmt;

use crate::limits::AMOUNT_MINOR_MAX;

/// ISO 4217 currencies Rialto accepts, each with its minor-unit exponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Currency {
    Eur,
    Gbp,
    Irr,
    Jpy,
    Kwd,
    Usd,
}

impl Currency {
    pub const ALL: [Currency; 6] = [
        Currency::Eur,
        Currency::Gbp,
        Currency::Irr,
        Currency::Jpy,
        Currency::Kwd,
        Currency::Usd,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Currency::Eur => "EUR",
            Currency::Gbp => "GBP",
            Currency::Irr => "IRR",
            Currency::Jpy => "JPY",
            Currency::Kwd => "KWD",
            Currency::Usd => "USD",
        }
    }

    /// Digits after the decimal point in the ISO 4217 table (IRR is 2 there, though the
    /// rial circulates without them).
    pub fn exponent(self) -> u32 {
        match self {
            Currency::Jpy => 0,
            Currency::Eur | Currency::Gbp | Currency::Irr | Currency::Usd => 2,
            Currency::Kwd => 3,
        }
    }

    /// Parses an upper-case ISO 4217 code; anything else is unknown.
    pub fn from_code(code: &str) -> Option<Currency> {
        Currency::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must be positive, got {0}")]
    NotPositive(i64),
    #[error("amount {0} exceeds the maximum of {AMOUNT_MINOR_MAX} minor units")]
    TooLarge(i64),
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("arithmetic overflow")]
    Overflow,
}

/// An amount of one currency in minor units. Signed, because ledger postings are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Money {
        Money {
            amount_minor,
            currency,
        }
    }

    /// An amount a customer may be charged: strictly positive and at most the limit.
    pub fn chargeable(amount_minor: i64, currency: Currency) -> Result<Money, MoneyError> {
        if amount_minor <= 0 {
            return Err(MoneyError::NotPositive(amount_minor));
        }
        if amount_minor > AMOUNT_MINOR_MAX {
            return Err(MoneyError::TooLarge(amount_minor));
        }
        Ok(Money::new(amount_minor, currency))
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let sum = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(sum, self.currency))
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let diff = self
            .amount_minor
            .checked_sub(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(diff, self.currency))
    }

    pub fn checked_neg(self) -> Result<Money, MoneyError> {
        let neg = self
            .amount_minor
            .checked_neg()
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(neg, self.currency))
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }
}

impl fmt::Display for Money {
    /// Major units with the currency's exponent, for humans only (logs, CLI output).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exponent = self.currency.exponent();
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let magnitude = self.amount_minor.unsigned_abs();
        if exponent == 0 {
            return write!(f, "{sign}{magnitude} {}", self.currency);
        }
        let scale = 10u64.pow(exponent);
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            magnitude / scale,
            magnitude % scale,
            self.currency,
            width = exponent as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_round_trip_and_unknown_codes_are_refused() {
        for c in Currency::ALL {
            assert_eq!(Currency::from_code(c.code()), Some(c));
        }
        for bad in ["usd", "XXX", "", "US"] {
            assert_eq!(Currency::from_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn chargeable_amounts_are_positive_and_bounded() {
        let check = |amount: i64, ok: bool| {
            assert_eq!(
                Money::chargeable(amount, Currency::Usd).is_ok(),
                ok,
                "{amount}"
            )
        };
        check(1, true);
        check(AMOUNT_MINOR_MAX, true);
        check(0, false);
        check(-5, false);
        check(AMOUNT_MINOR_MAX + 1, false);
        check(i64::MAX, false);
    }

    #[test]
    fn arithmetic_is_checked_and_currency_safe() {
        let usd = |a| Money::new(a, Currency::Usd);
        assert_eq!(usd(5).checked_add(usd(7)), Ok(usd(12)));
        assert_eq!(usd(i64::MAX).checked_add(usd(1)), Err(MoneyError::Overflow));
        assert_eq!(usd(i64::MIN).checked_sub(usd(1)), Err(MoneyError::Overflow));
        assert_eq!(usd(i64::MIN).checked_neg(), Err(MoneyError::Overflow));
        assert_eq!(
            usd(1).checked_add(Money::new(1, Currency::Eur)),
            Err(MoneyError::CurrencyMismatch(Currency::Usd, Currency::Eur))
        );
    }

    #[test]
    fn display_uses_the_currency_exponent() {
        let check = |m: Money, s: &str| assert_eq!(m.to_string(), s);
        check(Money::new(1234, Currency::Usd), "12.34 USD");
        check(Money::new(-5, Currency::Eur), "-0.05 EUR");
        check(Money::new(1234, Currency::Jpy), "1234 JPY");
        check(Money::new(1234, Currency::Kwd), "1.234 KWD");
    }
}
