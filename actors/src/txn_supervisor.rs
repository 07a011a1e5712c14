//! The transaction supervisor: parent of every payment actor. It admits one actor per payment
//! at a time (a second request for a busy payment is refused, not queued), bounds how many
//! run at once, and overrides ractor's default supervision — which would stop this actor
//! when any child exits — so a finished child is simply forgotten and a crashed one is
//! re-spawned as a `Resume` job that picks the payment up from storage.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::payment_actor::{Command, Job, PaymentActor, PaymentArgs};
use crate::{CommandError, Deps};

pub enum TxnMsg {
    Start(Box<Job>),
    /// A payment actor finished its job: the payment may take its next command. Sent before
    /// the actor answers, so a merchant's next request always finds the payment free.
    Done {
        payment_id: String,
        actor: ActorId,
    },
}

pub struct TxnSupervisor;

pub struct TxnState {
    deps: Arc<Deps>,
    /// Live payment actors and the payment each drives.
    running: HashMap<ActorId, String>,
    busy: HashMap<String, ActorId>,
    /// Crash-and-resume count per payment, bounded by `payment_restarts_max`.
    restarts: HashMap<String, u32>,
}

impl TxnState {
    async fn spawn(&mut self, myself: &ActorRef<TxnMsg>, job: Job) {
        if self.busy.contains_key(&job.payment_id) {
            job.refuse(CommandError::Busy);
            return;
        }
        if self.running.len() >= self.deps.config.transactions_max {
            metrics::counter!("rialto_transactions_refused_total").increment(1);
            job.refuse(CommandError::Overloaded);
            return;
        }
        let payment_id = job.payment_id.clone();
        let args = PaymentArgs {
            deps: self.deps.clone(),
            job,
        };
        match Actor::spawn_linked(None, PaymentActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.busy.insert(payment_id.clone(), actor.get_id());
                self.running.insert(actor.get_id(), payment_id);
                metrics::gauge!("rialto_transactions_in_flight").set(self.running.len() as f64);
            }
            Err(e) => {
                // The job (and its reply port) went down with the failed spawn.
                tracing::error!(payment_id, error = %e, "could not spawn payment actor");
            }
        }
    }

    /// Frees the payment, unless a newer actor already holds it.
    fn release(&mut self, payment_id: &str, actor: ActorId) {
        if self.busy.get(payment_id) == Some(&actor) {
            self.busy.remove(payment_id);
        }
    }

    fn forget(&mut self, actor: ActorId) -> Option<String> {
        let payment_id = self.running.remove(&actor)?;
        self.release(&payment_id, actor);
        metrics::gauge!("rialto_transactions_in_flight").set(self.running.len() as f64);
        Some(payment_id)
    }
}

impl Actor for TxnSupervisor {
    type Msg = TxnMsg;
    type State = TxnState;
    type Arguments = Arc<Deps>;

    async fn pre_start(
        &self,
        _myself: ActorRef<TxnMsg>,
        deps: Arc<Deps>,
    ) -> Result<TxnState, ActorProcessingErr> {
        metrics::counter!("rialto_supervisor_restarts_total", "supervisor" => "transactions")
            .increment(0);
        metrics::gauge!("rialto_transactions_in_flight").set(0.0);
        Ok(TxnState {
            deps,
            running: HashMap::new(),
            busy: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TxnMsg>,
        msg: TxnMsg,
        state: &mut TxnState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TxnMsg::Start(job) => state.spawn(&myself, *job).await,
            TxnMsg::Done { payment_id, actor } => state.release(&payment_id, actor),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TxnMsg>,
        event: SupervisionEvent,
        state: &mut TxnState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(payment_id) = state.forget(cell.get_id()) {
                    state.restarts.remove(&payment_id);
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(payment_id) = state.forget(cell.get_id()) else {
                    return Ok(());
                };
                metrics::counter!("rialto_supervisor_restarts_total", "supervisor" => "transactions")
                    .increment(1);
                let restarts = state.restarts.entry(payment_id.clone()).or_default();
                *restarts += 1;
                if *restarts > state.deps.config.payment_restarts_max {
                    // Left in flight in the store: the next sweep or start-up tries again.
                    tracing::error!(payment_id, %error, "payment actor keeps failing; giving up for now");
                    state.restarts.remove(&payment_id);
                    return Ok(());
                }
                tracing::warn!(payment_id, %error, "payment actor failed; resuming from storage");
                state
                    .spawn(&myself, Job::internal(payment_id, Command::Resume))
                    .await;
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}
