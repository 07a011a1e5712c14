//! Every bound Rialto's domain enforces, together so their relations can be checked at
//! compile time. Other crates import these instead of inventing their own numbers.

/// Largest amount one payment may carry, in minor units (10^13 rials in IRR). Keeping single
/// amounts far below `i64::MAX` leaves balances room before checked arithmetic must refuse.
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000_000;
/// Refunds one payment may accumulate.
pub const REFUNDS_PER_PAYMENT_MAX: usize = 100;
/// Metadata pairs on one payment, and the size of each key and value.
pub const METADATA_PAIRS_MAX: usize = 20;
pub const METADATA_KEY_BYTES_MAX: usize = 40;
pub const METADATA_VALUE_BYTES_MAX: usize = 500;
pub const DESCRIPTION_BYTES_MAX: usize = 1_000;
pub const MERCHANT_REFERENCE_BYTES_MAX: usize = 128;
pub const PAYMENT_METHOD_BYTES_MAX: usize = 64;
/// Fees are basis points of the captured amount.
pub const FEE_BPS_MAX: u32 = 10_000;

// Thousands of maximal payments fit one balance before checked arithmetic has to refuse.
const _: () = assert!(AMOUNT_MINOR_MAX < i64::MAX / 1_000);
// Fees are computed as amount * bps / 10_000 in i128 and always fit back into i64.
const _: () = assert!(FEE_BPS_MAX == 10_000);
const _: () = assert!(REFUNDS_PER_PAYMENT_MAX > 0 && METADATA_PAIRS_MAX > 0);
