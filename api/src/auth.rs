//! Merchant authentication by API key. A key is 32 random bytes shown once at creation; only
//! its SHA-256 is stored (a fast hash is right for a high-entropy secret, unlike a password).
//! Every `/v1` route extracts an [`Authenticated`] merchant or answers 401.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};

use rialto_engine::policy::TokenBucket;
use rialto_persistence::{Merchant, Store, StoreError};

use crate::AppState;
use crate::problem::Problem;

pub const API_KEY_PREFIX: &str = "sk_";
/// Fee charged to merchants created without one, in basis points.
pub const DEFAULT_FEE_BPS: u32 = 30;

pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The source's rate limit (R2.5): 1000 requests a minute sustained, bursts of 100.
pub const DEFAULT_RATE_PER_MIN: u32 = 1_000;
pub const DEFAULT_BURST: u32 = 100;

/// A merchant's rate limit; `per_min == 0` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_min: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit {
            per_min: DEFAULT_RATE_PER_MIN,
            burst: DEFAULT_BURST,
        }
    }
}

/// Creates a merchant and returns its API key, which is never stored or shown again.
pub async fn create_merchant(
    store: &dyn Store,
    name: &str,
    now_ms: i64,
    limit: RateLimit,
) -> Result<(Merchant, String), StoreError> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{API_KEY_PREFIX}{}", hex::encode(secret));
    let merchant = Merchant {
        id: rialto_actors::new_id("mer"),
        name: name.to_string(),
        api_key_sha256: key_hash(&key),
        fee_bps: DEFAULT_FEE_BPS,
        created_at_ms: now_ms,
        rate_per_min: limit.per_min,
        burst: limit.burst.max(1),
    };
    store.create_merchant(merchant.clone()).await?;
    Ok((merchant, key))
}

/// The merchant making this request.
pub struct Authenticated(pub Merchant);

/// One token from the merchant's bucket, or 429 with `Retry-After` (R2.5).
fn rate_limit(state: &AppState, merchant: &Merchant) -> Result<(), Problem> {
    if merchant.rate_per_min == 0 {
        return Ok(());
    }
    let now = rialto_engine::Clock::now_ms(&rialto_actors::SystemClock);
    let mut bucket = state
        .buckets
        .entry(merchant.id.clone())
        .or_insert_with(|| TokenBucket::new(merchant.rate_per_min, merchant.burst.max(1), now));
    bucket.try_take(now).map_err(|wait_ms| {
        metrics::counter!("rialto_rate_limited_total").increment(1);
        Problem {
            retry_after_s: Some(u32::try_from(wait_ms.div_ceil(1_000)).unwrap_or(u32::MAX).max(1)),
            ..Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
                format!(
                    "this merchant may make {} requests a minute (bursts of {}); retry after the Retry-After seconds",
                    merchant.rate_per_min, merchant.burst
                ),
            )
        }
    })
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("missing `Authorization: Bearer <api key>`"))?;
        let key = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|k| k.starts_with(API_KEY_PREFIX) && k.len() <= 128)
            .ok_or_else(|| Problem::unauthorized("malformed API key"))?;
        let hash = key_hash(key);
        let cached = state.merchants.get(&hash).map(|m| m.clone());
        let merchant = match cached {
            Some(m) => m,
            None => match state.store.merchant_by_key_hash(&hash).await {
                Ok(Some(m)) => {
                    state.merchants.insert(hash, m.clone());
                    m
                }
                Ok(None) => return Err(Problem::unauthorized("unknown API key")),
                Err(e) => {
                    tracing::error!(error = %e, "merchant lookup failed");
                    return Err(Problem::storage_unavailable());
                }
            },
        };
        rate_limit(state, &merchant)?;
        Ok(Authenticated(merchant))
    }
}
