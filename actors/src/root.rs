//! The root supervisor: parent of one PSP supervisor per PSP and of the transaction
//! supervisor. Children that fail are re-spawned (a bounded number of times) and their new
//! address published in [`Deps`], so a crash in one PSP's supervisor never reaches another
//! PSP, and a crash of the transaction supervisor (which takes its payment actors with it)
//! is followed by resuming every in-flight payment from storage.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::Deps;
use crate::psp::PspAdapter;
use crate::psp_supervisor::{PspArgs, PspSupervisor};
use crate::txn_supervisor::TxnSupervisor;

pub struct RootSupervisor;

pub struct RootArgs {
    pub deps: Arc<Deps>,
    pub adapters: Vec<Arc<dyn PspAdapter>>,
}

#[derive(Clone)]
enum Child {
    Psp(Arc<dyn PspAdapter>),
    Transactions,
}

pub struct RootState {
    deps: Arc<Deps>,
    children: HashMap<ActorId, Child>,
    restarts: u32,
}

impl RootState {
    async fn spawn(&mut self, myself: &ActorCell, child: Child) -> Result<(), ActorProcessingErr> {
        let id = match &child {
            Child::Psp(adapter) => {
                let args = PspArgs {
                    adapter: adapter.clone(),
                    health: self.deps.health[adapter.id()].clone(),
                    call_timeout: self.deps.config.psp_call_timeout,
                };
                let (actor, _) =
                    Actor::spawn_linked(None, PspSupervisor, args, myself.clone()).await?;
                self.deps
                    .psps
                    .insert(adapter.id().to_string(), actor.clone());
                actor.get_id()
            }
            Child::Transactions => {
                let (actor, _) =
                    Actor::spawn_linked(None, TxnSupervisor, self.deps.clone(), myself.clone())
                        .await?;
                self.deps.set_transactions(actor.clone());
                actor.get_id()
            }
        };
        self.children.insert(id, child);
        Ok(())
    }
}

pub enum RootMsg {}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut state = RootState {
            deps: args.deps,
            children: HashMap::new(),
            restarts: 0,
        };
        for adapter in args.adapters {
            state.spawn(&myself.get_cell(), Child::Psp(adapter)).await?;
        }
        state.spawn(&myself.get_cell(), Child::Transactions).await?;
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, e) => (cell, e.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.restarts += 1;
        let name = match &child {
            Child::Psp(adapter) => format!("psp:{}", adapter.id()),
            Child::Transactions => "transactions".to_string(),
        };
        metrics::counter!("rialto_supervisor_restarts_total", "supervisor" => name.clone())
            .increment(1);
        if state.restarts > state.deps.config.supervisor_restarts_max {
            tracing::error!(
                child = name,
                reason,
                "too many restarts; stopping the engine"
            );
            myself.stop(Some("restart limit reached".into()));
            return Ok(());
        }
        tracing::warn!(
            child = name,
            reason,
            "supervisor child exited; restarting it"
        );
        if let Child::Psp(adapter) = &child {
            self_remove_psp(&state.deps, adapter.id(), &cell);
        }
        state.spawn(&myself.get_cell(), child.clone()).await?;
        if matches!(child, Child::Transactions) {
            // Its payment actors died with it; their payments are in flight in the store.
            let deps = state.deps.clone();
            tokio::spawn(async move { deps.resume_in_flight().await });
        }
        Ok(())
    }
}

/// Unpublishes a dead PSP supervisor, unless a newer one already took its place.
fn self_remove_psp(deps: &Deps, psp: &str, dead: &ActorCell) {
    deps.psps
        .remove_if(psp, |_, current| current.get_id() == dead.get_id());
}
