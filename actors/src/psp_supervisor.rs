//! One supervisor actor per PSP. It owns that PSP's adapter and its concurrency limit (the
//! home of the breaker and bulkhead), and is the only way a transaction reaches the PSP.
//! Each call runs in its own task under the PSP call timeout, so a slow call never blocks the
//! mailbox; a call that panics is caught, answered as `Unknown` (the PSP may have acted) and
//! reported back here, so one crashing adapter call harms neither other payments nor other
//! PSPs.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;

use crate::psp::{OperationStatus, PspAdapter, PspOutcome, PspRequest};

/// What to ask the PSP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PspCall {
    Authorize,
    Capture,
    Void,
    Refund,
    Status,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PspAnswer {
    Outcome(PspOutcome),
    Status(OperationStatus),
}

pub enum PspMsg {
    Call {
        call: PspCall,
        req: PspRequest,
        reply: RpcReplyPort<PspAnswer>,
    },
    /// A call task caught a panic in the adapter.
    AdapterPanicked { call: PspCall },
}

pub struct PspSupervisor;

pub struct PspArgs {
    pub adapter: Arc<dyn PspAdapter>,
    pub call_timeout: Duration,
    pub inflight_max: usize,
}

pub struct PspState {
    adapter: Arc<dyn PspAdapter>,
    call_timeout: Duration,
    /// Bounds concurrent calls to this PSP; waiting for a permit counts against the timeout.
    inflight: Arc<Semaphore>,
    panics: u64,
}

impl Actor for PspSupervisor {
    type Msg = PspMsg;
    type State = PspState;
    type Arguments = PspArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<PspMsg>,
        args: PspArgs,
    ) -> Result<PspState, ActorProcessingErr> {
        Ok(PspState {
            adapter: args.adapter,
            call_timeout: args.call_timeout,
            inflight: Arc::new(Semaphore::new(args.inflight_max)),
            panics: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PspMsg>,
        msg: PspMsg,
        state: &mut PspState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PspMsg::Call { call, req, reply } => {
                let adapter = state.adapter.clone();
                let inflight = state.inflight.clone();
                let timeout = state.call_timeout;
                tokio::spawn(async move {
                    let answer = run_call(adapter, inflight, timeout, call, req, &myself).await;
                    // The transaction may have given up waiting; its own timeout covers that.
                    let _ = reply.send(answer);
                });
            }
            PspMsg::AdapterPanicked { call } => {
                state.panics += 1;
                tracing::error!(
                    psp = state.adapter.id(),
                    ?call,
                    panics = state.panics,
                    "psp adapter call panicked"
                );
                metrics::counter!("rialto_psp_adapter_panics_total", "psp" => state.adapter.id().to_string())
                    .increment(1);
            }
        }
        Ok(())
    }
}

async fn run_call(
    adapter: Arc<dyn PspAdapter>,
    inflight: Arc<Semaphore>,
    timeout: Duration,
    call: PspCall,
    req: PspRequest,
    supervisor: &ActorRef<PspMsg>,
) -> PspAnswer {
    let started = Instant::now();
    let work = async {
        // The semaphore is never closed, so acquiring only waits.
        let _permit = inflight.acquire().await;
        match call {
            PspCall::Authorize => PspAnswer::Outcome(adapter.authorize(&req).await),
            PspCall::Capture => PspAnswer::Outcome(adapter.capture(&req).await),
            PspCall::Void => PspAnswer::Outcome(adapter.void(&req).await),
            PspCall::Refund => PspAnswer::Outcome(adapter.refund(&req).await),
            PspCall::Status => PspAnswer::Status(adapter.status(&req).await),
        }
    };
    let answer = match AssertUnwindSafe(tokio::time::timeout(timeout, work))
        .catch_unwind()
        .await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(_elapsed)) => {
            metrics::counter!("request_timeouts_total", "peer" => adapter.id().to_string())
                .increment(1);
            unknown(call, "psp did not answer in time")
        }
        Err(_panic) => {
            // Tell the supervisor; if it is gone the panic is still answered as unknown.
            let _ = supervisor.send_message(PspMsg::AdapterPanicked { call });
            unknown(call, "psp adapter crashed during the call")
        }
    };
    metrics::histogram!(
        "http_client_request_duration_seconds",
        "peer" => adapter.id().to_string(),
        "http_response_status_code" => synthetic_status(&answer),
    )
    .record(started.elapsed().as_secs_f64());
    answer
}

fn unknown(call: PspCall, reason: &str) -> PspAnswer {
    match call {
        PspCall::Status => PspAnswer::Status(OperationStatus::Pending),
        _ => PspAnswer::Outcome(PspOutcome::Unknown {
            reason: reason.to_string(),
        }),
    }
}

/// An HTTP-like status for in-process calls, so PSP dashboards read the same either way.
fn synthetic_status(answer: &PspAnswer) -> &'static str {
    match answer {
        PspAnswer::Outcome(PspOutcome::Approved { .. }) => "200",
        PspAnswer::Outcome(PspOutcome::HardDecline { .. }) => "402",
        PspAnswer::Outcome(PspOutcome::SoftFailure { .. }) => "503",
        PspAnswer::Outcome(PspOutcome::Unknown { .. }) => "504",
        PspAnswer::Status(OperationStatus::NotFound) => "404",
        PspAnswer::Status(_) => "200",
    }
}
