//! Merchant authentication by API key. A key is 32 random bytes shown once at creation; only
//! its SHA-256 is stored (a fast hash is right for a high-entropy secret, unlike a password).
//! Every `/v1` route extracts an [`Authenticated`] merchant or answers 401.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};

use rialto_persistence::{Merchant, Store, StoreError};

use crate::AppState;
use crate::problem::Problem;

pub const API_KEY_PREFIX: &str = "sk_";
/// Fee charged to merchants created without one, in basis points.
pub const DEFAULT_FEE_BPS: u32 = 30;

pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates a merchant and returns its API key, which is never stored or shown again.
pub async fn create_merchant(
    store: &dyn Store,
    name: &str,
    now_ms: i64,
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
    };
    store.create_merchant(merchant.clone()).await?;
    Ok((merchant, key))
}

/// The merchant making this request.
pub struct Authenticated(pub Merchant);

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
        if let Some(m) = state.merchants.get(&hash) {
            return Ok(Authenticated(m.clone()));
        }
        match state.store.merchant_by_key_hash(&hash).await {
            Ok(Some(m)) => {
                state.merchants.insert(hash, m.clone());
                Ok(Authenticated(m))
            }
            Ok(None) => Err(Problem::unauthorized("unknown API key")),
            Err(e) => {
                tracing::error!(error = %e, "merchant lookup failed");
                Err(Problem::unavailable("storage is unavailable", 1))
            }
        }
    }
}
