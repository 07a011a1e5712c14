//! One actor per payment operation in progress. It runs one [`Job`] — create, capture,
//! cancel, refund, resume or expire — by feeding events to the engine's pure `apply`,
//! committing each transition durably before acting on it, and executing the effects the
//! engine returns (a PSP call through the PSP supervisor, or a status query). It replies to
//! the merchant as soon as the payment rests (nothing left to call) and, if the outcome is
//! unknown, keeps querying the PSP in the background. Everything it knows is in the store, so
//! if it panics the transaction supervisor resumes the payment from there.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tracing::Instrument;

use rialto_engine::ledger::fee_for;
use rialto_engine::policy::backoff_ms;
use rialto_engine::{CaptureMethod, Effect, Event, Payment, PspOp, Rejection, Status, apply};
use rialto_persistence::{Commit, IdempotencyRecord, IdempotencyWrite, StoreError};

use crate::psp::{OperationStatus, PspOutcome, PspRequest};
use crate::psp_supervisor::{PspAnswer, PspCall, PspMsg};
use crate::txn_supervisor::TxnMsg;
use crate::{CommandError, CreatePayment, Deps, FaultPoint, IdempotencySpec};

/// What a merchant (or recovery) asked for.
pub enum Command {
    Create(CreatePayment),
    Capture {
        amount_minor: Option<i64>,
    },
    Cancel,
    Refund {
        refund_id: String,
        amount_minor: i64,
    },
    /// Continue a payment found in flight (after a crash or a sweep).
    Resume,
    /// Expire an authorization whose time is up.
    Expire,
}

impl Command {
    /// A short name for traces.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Create(_) => "create",
            Command::Capture { .. } => "capture",
            Command::Cancel => "cancel",
            Command::Refund { .. } => "refund",
            Command::Resume => "resume",
            Command::Expire => "expire",
        }
    }
}

pub type JobReply = oneshot::Sender<Result<Payment, CommandError>>;

pub struct Job {
    pub payment_id: String,
    /// The merchant making the request; `None` for internal jobs (resume, expire).
    pub merchant_id: Option<String>,
    pub command: Command,
    pub idempotency: Option<IdempotencySpec>,
    pub reply: Option<JobReply>,
    /// The span the job was asked for in (a merchant request's); none for internal jobs,
    /// whose traces start in the actor.
    pub span: tracing::Span,
}

impl Job {
    pub fn internal(payment_id: String, command: Command) -> Job {
        Job {
            payment_id,
            merchant_id: None,
            command,
            idempotency: None,
            reply: None,
            span: tracing::Span::none(),
        }
    }

    pub fn refuse(self, error: CommandError) {
        if let Some(reply) = self.reply {
            let _ = reply.send(Err(error)); // The requester may be gone; nothing to undo.
        }
    }
}

pub struct PaymentActor;

pub struct Run;

pub struct PaymentArgs {
    pub deps: Arc<Deps>,
    pub job: Job,
}

impl Actor for PaymentActor {
    type Msg = Run;
    type State = Option<PaymentArgs>;
    type Arguments = PaymentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Run>,
        args: PaymentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Work happens in `handle`, where a panic is caught and reported to the supervisor.
        myself.send_message(Run)?;
        Ok(Some(args))
    }

    async fn handle(
        &self,
        myself: ActorRef<Run>,
        _msg: Run,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(PaymentArgs { deps, job }) = state.take() {
            let span = tracing::info_span!(
                parent: job.span.id(),
                "payment.actor",
                payment_id = %job.payment_id,
                command = job.command.name(),
                status = tracing::field::Empty,
            );
            Driver {
                deps,
                actor: myself.get_id(),
                payment_id: job.payment_id.clone(),
                idempotency: job.idempotency,
                reply: job.reply,
                deferred: Vec::new(),
            }
            .run(job.merchant_id, job.command)
            .instrument(span)
            .await;
        }
        myself.stop(None);
        Ok(())
    }
}

struct Driver {
    deps: Arc<Deps>,
    actor: ractor::ActorId,
    payment_id: String,
    idempotency: Option<IdempotencySpec>,
    reply: Option<JobReply>,
    /// Events applied but not yet committed (see `Payment::may_defer_commit`); they go out
    /// with the next commit.
    deferred: Vec<Event>,
}

/// What a soft failure leads to.
enum Retry {
    /// Ask the same PSP again (after the backoff).
    Again,
    /// Fail over to this PSP.
    Moved(String),
    /// Record the failure.
    GiveUp,
}

/// How a PSP's answer moves the payment on.
enum Resolution {
    Events(Vec<Event>),
    /// The PSP never saw the operation: send it (same key, so still at most once).
    Send,
    /// No final answer yet: ask again later.
    Wait,
}

impl Driver {
    async fn run(mut self, merchant_id: Option<String>, command: Command) {
        // Boxed, like every commit below: a commit's state is large and short-lived, and the
        // actor's future, which lives as long as the payment waits for its PSP, stays small.
        let result = Box::pin(self.start(merchant_id, command)).await;
        match result {
            Ok(Some(p)) => self.drive(p).await,
            Ok(None) => self.finish(Err(CommandError::NotFound)),
            Err(e) => self.finish(Err(e)),
        }
    }

    /// Validates the command against the stored payment and commits its first transition.
    async fn start(
        &mut self,
        merchant_id: Option<String>,
        command: Command,
    ) -> Result<Option<Payment>, CommandError> {
        let now = self.deps.clock.now_ms();
        if let Command::Create(create) = command {
            let (p, events) = self.deps.new_payment(&self.payment_id, create, now)?;
            let p = apply(&p, &events[1], now)?.payment;
            return self.commit(p, events.to_vec(), None).await.map(Some);
        }
        let Some(p) = self.deps.store.payment(&self.payment_id).await? else {
            return Ok(None);
        };
        if merchant_id.as_ref().is_some_and(|m| *m != p.merchant_id) {
            return Ok(None);
        }
        let event = match command {
            Command::Create(_) => unreachable!("handled above"),
            Command::Capture { amount_minor } => Event::CaptureRequested {
                amount_minor: amount_minor.unwrap_or(p.amount.amount_minor),
            },
            Command::Cancel => Event::VoidRequested,
            Command::Refund {
                refund_id,
                amount_minor,
            } => Event::RefundRequested {
                refund_id,
                amount_minor,
            },
            Command::Resume => match &p.pending {
                // Nobody knows whether the call left before the crash: ask, don't resend.
                Some(pending) if !pending.outcome_unknown => Event::OutcomeUnknown,
                Some(_) => return Ok(Some(p)),
                None => match p.follow_up() {
                    Some(event) => event,
                    None => return Ok(Some(p)),
                },
            },
            Command::Expire => Event::Expired,
        };
        let t = apply(&p, &event, now)?;
        self.commit(t.payment, vec![event], t.entry).await.map(Some)
    }

    /// What to do after a PSP said it did not act (a soft failure), R2.3: retry, possibly at
    /// another PSP, a bounded number of times; a hard decline is never retried.
    async fn after_soft_failure(&self, p: &Payment, op: &PspOp, attempts: &mut u32) -> Retry {
        *attempts += 1;
        if *attempts >= self.deps.config.retry_attempts_max {
            return Retry::GiveUp;
        }
        metrics::counter!("rialto_psp_retries_total", "psp" => p.psp.clone()).increment(1);
        if *op == PspOp::Authorize
            && let Some(other) = self.deps.route(&p.id, Some(&p.psp))
        {
            // Failover is immediate: another PSP is not the one that just struggled.
            return Retry::Moved(other);
        }
        let jitter = crate::spread(&p.id)
            ^ (self.deps.clock.now_ms() as u64).wrapping_mul(u64::from(*attempts));
        let cap = self.deps.config.retry_backoff_max.as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(backoff_ms(*attempts, jitter, cap))).await;
        Retry::Again
    }

    /// Executes effects until the payment rests, replying once it does.
    async fn drive(mut self, mut p: Payment) {
        let mut queries = 0u32;
        let mut attempts = 0u32;
        loop {
            let Some(effect) = p.effects().into_iter().next() else {
                self.finish(Ok(p));
                return;
            };
            let resolution = match &effect {
                Effect::Call(op) => {
                    let outcome = self.call_psp(&p, op).await;
                    self.fault(&p, FaultPoint::PspAnswered);
                    let soft = matches!(outcome, PspOutcome::SoftFailure { .. });
                    match if soft {
                        self.after_soft_failure(&p, op, &mut attempts).await
                    } else {
                        Retry::GiveUp
                    } {
                        Retry::Again => continue,
                        Retry::Moved(psp) => Resolution::Events(vec![Event::Rerouted { psp }]),
                        // Nobody will ask again for an automatic capture: park it, pending
                        // and durable, for the sweeper to finish when the PSP takes it.
                        Retry::GiveUp if soft && parks(&p, op) => {
                            if !self.deferred.is_empty()
                                && let Err(e) =
                                    Box::pin(self.commit(p.clone(), Vec::new(), None)).await
                            {
                                self.finish(Err(e));
                                return;
                            }
                            metrics::counter!("rialto_captures_parked_total").increment(1);
                            self.finish(Ok(p));
                            return;
                        }
                        Retry::GiveUp => Resolution::Events(events_for_outcome(&p, op, outcome)),
                    }
                }
                Effect::Query(op) => {
                    // The merchant has its answer (the payment is in doubt); resolve quietly.
                    self.respond(Ok(p.clone()));
                    let waited = self.deps.clock.now_ms() - p.updated_at_ms;
                    let overdue = waited >= self.deps.config.escalate_after.as_millis() as i64;
                    if queries >= self.deps.config.status_query_attempts_max || overdue {
                        if !p.escalated {
                            tracing::warn!(payment_id = %p.id, queries, "payment outcome unknown; escalated");
                            metrics::counter!("rialto_payments_escalated_total").increment(1);
                            if let Err(e) =
                                Box::pin(self.transition(&p, vec![Event::Escalated])).await
                            {
                                tracing::error!(payment_id = %p.id, error = %e, "could not record the escalation");
                            }
                        }
                        // The sweeper keeps asking on its own schedule.
                        return;
                    }
                    let backoff = self.deps.config.status_query_backoff * 2u32.pow(queries.min(8));
                    queries += 1;
                    tokio::time::sleep(backoff).await;
                    self.query_psp(&p, op).await
                }
            };
            let events = match resolution {
                Resolution::Events(events) => events,
                Resolution::Wait => continue,
                Resolution::Send => {
                    let Effect::Query(op) = &effect else {
                        unreachable!("only a query can find the operation missing")
                    };
                    let outcome = self.call_psp(&p, op).await;
                    self.fault(&p, FaultPoint::PspAnswered);
                    let soft = matches!(outcome, PspOutcome::SoftFailure { .. });
                    if soft && parks(&p, op) {
                        // Still durable as it was (pending, in doubt): the sweeper asks again.
                        metrics::counter!("rialto_captures_parked_total").increment(1);
                        self.finish(Ok(p));
                        return;
                    }
                    events_for_outcome(&p, op, outcome)
                }
            };
            match Box::pin(self.transition(&p, events)).await {
                Ok(next) => p = next,
                Err(e) => {
                    tracing::error!(payment_id = %p.id, error = %e, "payment transition failed");
                    self.finish(Err(e));
                    return;
                }
            }
        }
    }

    fn fault(&self, p: &Payment, point: FaultPoint) {
        if let Some(faults) = &self.deps.faults
            && faults.panic_at(p, point)
        {
            panic!(
                "injected fault at {point:?} for {} ({})",
                p.id,
                p.status.as_str()
            );
        }
    }

    /// Applies the events (plus automatic capture's follow-up) and commits them as one, unless
    /// the engine says this step may ride along with the next commit.
    async fn transition(
        &mut self,
        p: &Payment,
        events: Vec<Event>,
    ) -> Result<Payment, CommandError> {
        let now = self.deps.clock.now_ms();
        let mut next = p.clone();
        let mut entry = None;
        let mut all = Vec::with_capacity(events.len() + 1);
        for event in events {
            let t = apply(&next, &event, now)?;
            next = t.payment;
            entry = entry.or(t.entry);
            all.push(event);
            if let Some(follow) = next.follow_up() {
                next = apply(&next, &follow, now)?.payment;
                all.push(follow);
            }
        }
        if entry.is_none() && p.may_defer_commit(&next) {
            self.deferred.extend(all);
            return Ok(next);
        }
        self.commit(next, all, entry).await
    }

    /// Commits a transition with the request's idempotency record: a claim on the key with
    /// the first commit, the response to replay with the commit that makes the payment rest.
    async fn commit(
        &mut self,
        payment: Payment,
        events: Vec<Event>,
        entry: Option<rialto_engine::JournalEntry>,
    ) -> Result<Payment, CommandError> {
        let now = self.deps.clock.now_ms();
        let rests = !matches!(payment.effects().first(), Some(Effect::Call(_)));
        let idempotency = self.idempotency.as_ref().and_then(|spec| {
            let response = rests.then(|| (spec.render)(&payment));
            if response.is_none() && spec.claimed {
                return None;
            }
            Some(IdempotencyWrite {
                merchant_id: spec.merchant_id.clone(),
                key: spec.key.clone(),
                record: IdempotencyRecord {
                    fingerprint: spec.fingerprint,
                    resource_id: self.payment_id.clone(),
                    response,
                    created_at_ms: now,
                },
            })
        });
        let completes = idempotency.as_ref().and_then(|w| w.record.response.clone());
        let mut all = std::mem::take(&mut self.deferred);
        all.extend(events);
        let span = tracing::info_span!(
            "store.commit",
            status = payment.status.as_str(),
            events = all.len(),
            ledger_entry = entry.is_some(),
        );
        self.deps
            .store
            .commit(Commit {
                payment: payment.clone(),
                events: all,
                entry,
                idempotency,
                at_ms: now,
                span: span.clone(),
            })
            .instrument(span)
            .await
            .map_err(|e| match e {
                StoreError::IdempotencyKeyTaken { .. } => CommandError::IdempotencyKeyInUse,
                StoreError::VersionConflict { .. } => CommandError::Busy,
                other => CommandError::Store(other),
            })?;
        if let Some(spec) = self.idempotency.as_mut() {
            spec.claimed = true;
            if let Some(response) = completes {
                *spec.rendered.lock().unwrap_or_else(|e| e.into_inner()) = Some(response);
                self.idempotency = None;
            }
        }
        self.fault(&payment, FaultPoint::Committed);
        Ok(payment)
    }

    async fn ask_psp(&self, p: &Payment, op: &PspOp, call: PspCall) -> Option<PspAnswer> {
        let psp = self.deps.psp(&p.psp)?;
        let amount_minor = match op {
            PspOp::Authorize | PspOp::Void => p.amount.amount_minor,
            PspOp::Capture { amount_minor } | PspOp::Refund { amount_minor, .. } => *amount_minor,
        };
        let req = PspRequest {
            idempotency_key: op.idempotency_key(&p.id),
            payment_id: p.id.clone(),
            amount: rialto_engine::Money::new(amount_minor, p.currency()),
            payment_method: p.payment_method.clone(),
            psp_reference: p.psp_reference.clone(),
        };
        // The supervisor enforces the PSP call timeout; this outer one only guards against a
        // supervisor that died with our request in its mailbox.
        let outer = self.deps.config.psp_call_timeout + Duration::from_secs(1);
        let answer = psp
            .call(
                |reply| PspMsg::Call {
                    call,
                    req,
                    reply,
                    span: tracing::Span::current(),
                },
                Some(outer),
            )
            .await;
        match answer {
            Ok(ractor::rpc::CallResult::Success(answer)) => Some(answer),
            _ => None,
        }
    }

    async fn call_psp(&self, p: &Payment, op: &PspOp) -> PspOutcome {
        let call = match op {
            PspOp::Authorize => PspCall::Authorize,
            PspOp::Capture { .. } => PspCall::Capture,
            PspOp::Void => PspCall::Void,
            PspOp::Refund { .. } => PspCall::Refund,
        };
        match self.ask_psp(p, op, call).await {
            Some(PspAnswer::Outcome(outcome)) => outcome,
            _ => PspOutcome::Unknown {
                reason: format!("psp {} unreachable", p.psp),
            },
        }
    }

    async fn query_psp(&self, p: &Payment, op: &PspOp) -> Resolution {
        let status = match self.ask_psp(p, op, PspCall::Status).await {
            Some(PspAnswer::Status(status)) => status,
            _ => OperationStatus::Pending,
        };
        match status {
            OperationStatus::Pending => Resolution::Wait,
            OperationStatus::NotFound if *op == PspOp::Authorize => {
                Resolution::Events(vec![Event::AuthorizeFailed {
                    reason: "the psp has no record of the authorization".into(),
                }])
            }
            OperationStatus::NotFound => Resolution::Send,
            OperationStatus::Succeeded { psp_reference } => Resolution::Events(events_for_outcome(
                p,
                op,
                PspOutcome::Approved { psp_reference },
            )),
            OperationStatus::Declined { code, message } => Resolution::Events(events_for_outcome(
                p,
                op,
                PspOutcome::HardDecline { code, message },
            )),
        }
    }

    /// The job's last word: free the payment for its next command, then answer.
    fn finish(&mut self, result: Result<Payment, CommandError>) {
        if let Some(txn) = self.deps.transactions() {
            let done = TxnMsg::Done {
                payment_id: self.payment_id.clone(),
                actor: self.actor,
            };
            // If the supervisor is gone, so is the busy mark: nothing to free.
            let _ = txn.send_message(done);
        }
        self.respond(result);
    }

    fn respond(&mut self, result: Result<Payment, CommandError>) {
        if let Ok(p) = &result {
            tracing::Span::current().record("status", p.status.as_str());
        }
        if let Ok(p) = &result
            && p.effects().is_empty()
        {
            metrics::counter!(
                "rialto_payments_total",
                "status" => p.status.as_str(),
                "psp" => p.psp.clone(),
            )
            .increment(1);
            if p.status == Status::Captured {
                metrics::counter!("rialto_amount_captured_minor_total", "currency" => p.currency().code())
                    .increment(p.amount_captured_minor.unsigned_abs());
            }
        }
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result); // The requester may have timed out; the work stands.
        }
    }
}

/// An automatic capture the PSP would not take is parked rather than failed: nobody else
/// would ever ask for it again.
fn parks(p: &Payment, op: &PspOp) -> bool {
    matches!(op, PspOp::Capture { .. }) && p.capture_method == CaptureMethod::Automatic
}

/// The events a PSP's answer to `op` records. Pure.
fn events_for_outcome(p: &Payment, op: &PspOp, outcome: PspOutcome) -> Vec<Event> {
    let event = match (op, outcome) {
        (_, PspOutcome::Unknown { .. }) => Event::OutcomeUnknown,
        (PspOp::Authorize, PspOutcome::Approved { psp_reference }) => {
            Event::Authorized { psp_reference }
        }
        (PspOp::Authorize, PspOutcome::HardDecline { code, message }) => {
            Event::AuthorizeDeclined { code, message }
        }
        (PspOp::Authorize, PspOutcome::SoftFailure { reason }) => Event::AuthorizeFailed { reason },
        (PspOp::Capture { amount_minor }, PspOutcome::Approved { .. }) => Event::Captured {
            fee_minor: fee_for(*amount_minor, p.fee_bps),
        },
        (
            PspOp::Capture { .. },
            PspOutcome::HardDecline {
                message: reason, ..
            },
        )
        | (PspOp::Capture { .. }, PspOutcome::SoftFailure { reason }) => {
            Event::CaptureFailed { reason }
        }
        (PspOp::Void, PspOutcome::Approved { .. }) => Event::Voided,
        (
            PspOp::Void,
            PspOutcome::HardDecline {
                message: reason, ..
            },
        )
        | (PspOp::Void, PspOutcome::SoftFailure { reason }) => Event::VoidFailed { reason },
        (PspOp::Refund { refund_id, .. }, PspOutcome::Approved { .. }) => Event::Refunded {
            refund_id: refund_id.clone(),
        },
        (
            PspOp::Refund { refund_id, .. },
            PspOutcome::HardDecline {
                message: reason, ..
            },
        )
        | (PspOp::Refund { refund_id, .. }, PspOutcome::SoftFailure { reason }) => {
            Event::RefundFailed {
                refund_id: refund_id.clone(),
                reason,
            }
        }
    };
    vec![event]
}

impl From<Rejection> for CommandError {
    fn from(r: Rejection) -> CommandError {
        CommandError::Rejected(r)
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> CommandError {
        CommandError::Store(e)
    }
}
