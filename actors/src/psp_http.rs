//! The HTTP PSP adapter and the small JSON/REST protocol it speaks (R4.1). `rialto psp-sim`
//! serves the same protocol, so the wire types and the signature scheme live here, once.
//!
//! Every call is `POST /v1/{authorize|capture|void|refund}` with an [`OperationRequest`], or
//! `GET /v1/operations/{idempotency key}` for its status, and carries:
//! - `Idempotency-Key`: the operation's stable key (the PSP deduplicates by it);
//! - `X-Psp-Signature: t=<unix ms>,v1=<hex HMAC-SHA256(secret, "{t}.{METHOD} {path}.{body}")>`.
//!
//! The answer is an [`OperationResponse`]. [`classify`] maps every HTTP result to one of the
//! four outcomes of R4.2, exhaustively and without I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::psp::{Capabilities, OperationStatus, PspAdapter, PspOutcome, PspRequest};

pub const SIGNATURE_HEADER: &str = "x-psp-signature";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// How far a signature's timestamp may be from the verifier's clock.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);
/// Largest body either side accepts.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    pub payment_id: String,
    /// Minor units; major-unit strings exist nowhere in this protocol.
    pub amount: i64,
    pub currency: String,
    pub payment_method: String,
    pub reference: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Succeeded,
    Declined,
    /// Received, no final result yet.
    Pending,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationResponse {
    pub state: OperationState,
    pub reference: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

fn unix_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn mac(secret: &[u8], t: i64, method: &str, path: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{t}.{method} {path}.").as_bytes());
    mac.update(body);
    mac
}

/// The `X-Psp-Signature` value for a request signed now.
pub fn sign(secret: &[u8], method: &str, path: &str, body: &[u8]) -> String {
    sign_at(secret, unix_ms(), method, path, body)
}

pub fn sign_at(secret: &[u8], t: i64, method: &str, path: &str, body: &[u8]) -> String {
    let tag = mac(secret, t, method, path, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(tag))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or malformed signature header")]
    Malformed,
    #[error("signature timestamp outside the tolerance")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// Verifies a signature in constant time, accepting any of `secrets` (current, previous).
pub fn verify(
    secrets: &[&[u8]],
    header: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Malformed)?;
    let mut t = None;
    let mut tag = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => tag = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (t, tag) = t.zip(tag).ok_or(SignatureError::Malformed)?;
    let skew = unix_ms().abs_diff(t);
    if skew > SIGNATURE_TOLERANCE.as_millis() as u64 {
        return Err(SignatureError::Stale);
    }
    let ok = secrets.iter().any(|secret| {
        mac(secret, t, method, path, body)
            .verify_slice(&tag)
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// What became of one HTTP call, before classification.
#[derive(Debug)]
pub enum Transport {
    /// The request never left: nothing can have happened at the PSP.
    NotSent,
    /// Sent, but no complete answer: the PSP may have acted.
    NoAnswer,
    Answered {
        status: u16,
        body: Option<OperationResponse>,
    },
}

/// Maps an HTTP result to an outcome (R4.2). Pure and exhaustive.
pub fn classify(result: Transport) -> PspOutcome {
    match result {
        Transport::NotSent => PspOutcome::SoftFailure {
            reason: "could not connect to the psp".into(),
        },
        Transport::NoAnswer => PspOutcome::Unknown {
            reason: "no answer from the psp".into(),
        },
        Transport::Answered {
            status: 200,
            body: Some(r),
        } => match r.state {
            OperationState::Succeeded => PspOutcome::Approved {
                psp_reference: r.reference.unwrap_or_default(),
            },
            OperationState::Declined => PspOutcome::HardDecline {
                code: r.code.unwrap_or_else(|| "declined".into()),
                message: r.message.unwrap_or_default(),
            },
            OperationState::Pending => PspOutcome::Unknown {
                reason: "the psp has not decided yet".into(),
            },
        },
        // A 200 we cannot read may still mean the PSP acted.
        Transport::Answered {
            status: 200,
            body: None,
        } => PspOutcome::Unknown {
            reason: "unreadable answer from the psp".into(),
        },
        // The PSP says it did not process the request and it may be retried.
        Transport::Answered {
            status: 429 | 503, ..
        } => PspOutcome::SoftFailure {
            reason: "the psp is unavailable".into(),
        },
        Transport::Answered { status, .. } if status >= 500 => PspOutcome::Unknown {
            reason: format!("psp answered {status}"),
        },
        // Any other answer is a final refusal of this request.
        Transport::Answered { status, body } => PspOutcome::HardDecline {
            code: body
                .and_then(|b| b.code)
                .unwrap_or_else(|| format!("psp_http_{status}")),
            message: format!("the psp refused the request with {status}"),
        },
    }
}

/// A PSP reached over HTTP with the protocol above.
pub struct HttpPsp {
    id: String,
    base_url: String,
    secret: Vec<u8>,
    client: reqwest::Client,
}

impl HttpPsp {
    /// `timeout` bounds one HTTP exchange; the PSP supervisor's call timeout bounds it again.
    /// `concurrency` is the PSP's bulkhead: the most calls in flight at once, each on a
    /// connection of its own. That many connections are kept open once opened, so a dip in
    /// traffic does not close connections the next rise must open again (each closed one
    /// holding a local port in TIME_WAIT).
    pub fn new(
        id: &str,
        base_url: &str,
        secret: &[u8],
        timeout: Duration,
        concurrency: usize,
    ) -> Result<HttpPsp, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(concurrency.max(1))
            .build()
            .map_err(|e| format!("http client for psp {id}: {e}"))?;
        if secret.is_empty() {
            return Err(format!("psp {id}: an HMAC secret is required"));
        }
        Ok(HttpPsp {
            id: id.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            secret: secret.to_vec(),
            client,
        })
    }

    async fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Vec<u8>,
    ) -> Transport {
        let signature = sign(&self.secret, method.as_str(), path, &body);
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url))
            .header(IDEMPOTENCY_HEADER, key)
            .header(SIGNATURE_HEADER, signature)
            .headers(crate::trace_context::outgoing());
        if !body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = match response.bytes().await {
                    Ok(bytes) if bytes.len() <= BODY_BYTES_MAX => {
                        serde_json::from_slice(&bytes).ok()
                    }
                    Ok(_) => None,
                    Err(_) if status == 200 => return Transport::NoAnswer,
                    Err(_) => None,
                };
                Transport::Answered { status, body }
            }
            Err(e) if e.is_connect() => Transport::NotSent,
            Err(_) => Transport::NoAnswer,
        }
    }

    async fn operate(&self, op: &str, req: &PspRequest) -> PspOutcome {
        let body = OperationRequest {
            payment_id: req.payment_id.clone(),
            amount: req.amount.amount_minor,
            currency: req.amount.currency.code().to_string(),
            payment_method: req.payment_method.clone(),
            reference: req.psp_reference.clone(),
        };
        let body = serde_json::to_vec(&body).expect("wire types serialize");
        let path = format!("/v1/{op}");
        let outcome = classify(
            self.exchange(reqwest::Method::POST, &path, &req.idempotency_key, body)
                .await,
        );
        if let PspOutcome::HardDecline { code, .. } = &outcome
            && code.starts_with("psp_http_")
        {
            tracing::error!(psp = %self.id, op, code, "psp refused a request: check its url and secret");
        }
        outcome
    }
}

/// An idempotency key as a URL path segment (keys are ours: ASCII letters, digits, `_:`).
fn path_segment(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[async_trait]
impl PspAdapter for HttpPsp {
    fn id(&self) -> &str {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    async fn authorize(&self, req: &PspRequest) -> PspOutcome {
        self.operate("authorize", req).await
    }

    async fn capture(&self, req: &PspRequest) -> PspOutcome {
        self.operate("capture", req).await
    }

    async fn void(&self, req: &PspRequest) -> PspOutcome {
        self.operate("void", req).await
    }

    async fn refund(&self, req: &PspRequest) -> PspOutcome {
        self.operate("refund", req).await
    }

    async fn status(&self, req: &PspRequest) -> OperationStatus {
        let path = format!("/v1/operations/{}", path_segment(&req.idempotency_key));
        match self
            .exchange(
                reqwest::Method::GET,
                &path,
                &req.idempotency_key,
                Vec::new(),
            )
            .await
        {
            Transport::Answered { status: 404, .. } => OperationStatus::NotFound,
            Transport::Answered {
                status: 200,
                body: Some(r),
            } => match r.state {
                OperationState::Succeeded => OperationStatus::Succeeded {
                    psp_reference: r.reference.unwrap_or_default(),
                },
                OperationState::Declined => OperationStatus::Declined {
                    code: r.code.unwrap_or_else(|| "declined".into()),
                    message: r.message.unwrap_or_default(),
                },
                OperationState::Pending => OperationStatus::Pending,
            },
            // Anything else leaves the outcome unknown: ask again later.
            _ => OperationStatus::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_current_or_previous_secret_and_nothing_else() {
        let sig = sign(b"current", "POST", "/v1/authorize", b"{}");
        let check = |secrets: &[&[u8]], header: &str, path: &str, body: &[u8]| {
            verify(secrets, Some(header), "POST", path, body)
        };
        assert_eq!(check(&[b"current"], &sig, "/v1/authorize", b"{}"), Ok(()));
        assert_eq!(
            check(&[b"next", b"current"], &sig, "/v1/authorize", b"{}"),
            Ok(())
        );
        assert_eq!(
            check(&[b"other"], &sig, "/v1/authorize", b"{}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&[b"current"], &sig, "/v1/capture", b"{}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&[b"current"], &sig, "/v1/authorize", b"{ }"),
            Err(SignatureError::Mismatch)
        );
        let old = sign_at(
            b"current",
            unix_ms() - 301_000,
            "POST",
            "/v1/authorize",
            b"{}",
        );
        assert_eq!(
            check(&[b"current"], &old, "/v1/authorize", b"{}"),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check(&[b"current"], "v1=00", "/v1/authorize", b"{}"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&[b"current"], None, "POST", "/", b""),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn every_http_result_maps_to_one_outcome() {
        let answer = |state, code: Option<&str>| {
            Some(OperationResponse {
                state,
                reference: Some("r".into()),
                code: code.map(String::from),
                message: None,
            })
        };
        let kind = |t: Transport| match classify(t) {
            PspOutcome::Approved { .. } => "approved",
            PspOutcome::HardDecline { .. } => "hard_decline",
            PspOutcome::SoftFailure { .. } => "soft_failure",
            PspOutcome::Unknown { .. } => "unknown",
        };
        let cases = [
            (Transport::NotSent, "soft_failure"),
            (Transport::NoAnswer, "unknown"),
            (
                Transport::Answered {
                    status: 200,
                    body: answer(OperationState::Succeeded, None),
                },
                "approved",
            ),
            (
                Transport::Answered {
                    status: 200,
                    body: answer(OperationState::Declined, Some("do_not_honor")),
                },
                "hard_decline",
            ),
            (
                Transport::Answered {
                    status: 200,
                    body: answer(OperationState::Pending, None),
                },
                "unknown",
            ),
            (
                Transport::Answered {
                    status: 200,
                    body: None,
                },
                "unknown",
            ),
            (
                Transport::Answered {
                    status: 503,
                    body: None,
                },
                "soft_failure",
            ),
            (
                Transport::Answered {
                    status: 429,
                    body: None,
                },
                "soft_failure",
            ),
            (
                Transport::Answered {
                    status: 500,
                    body: None,
                },
                "unknown",
            ),
            (
                Transport::Answered {
                    status: 504,
                    body: None,
                },
                "unknown",
            ),
            (
                Transport::Answered {
                    status: 401,
                    body: None,
                },
                "hard_decline",
            ),
            (
                Transport::Answered {
                    status: 400,
                    body: None,
                },
                "hard_decline",
            ),
        ];
        for (transport, expected) in cases {
            let label = format!("{transport:?}");
            assert_eq!(kind(transport), expected, "{label}");
        }
    }

    #[test]
    fn keys_become_safe_path_segments() {
        assert_eq!(path_segment("pay_01ab:capture"), "pay_01ab%3Acapture");
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
    }
}
