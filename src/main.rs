//! The `rialto` binary: parse flags, build the engine, run. All behaviour lives in the
//! library crates; this file only wires them.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use rialto_actors::psp::PspAdapter;
use rialto_actors::{RialtoBuilder, SystemClock};
use rialto_engine::Clock;
use rialto_persistence::{RedbStore, Store, StoreOptions};
use rialto_sim::SimPsp;

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "rialto",
    version,
    about = "Actor-based payment transaction engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the merchant API and the ops listener.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[arg(long)]
        ops_listen: Option<std::net::SocketAddr>,
    },
    /// Manage merchants (with the server stopped: the store has one writer).
    Merchant {
        #[command(subcommand)]
        command: MerchantCommand,
    },
    /// Ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
}

#[derive(Subcommand)]
enum MerchantCommand {
    /// Create a merchant; prints only its API key on stdout.
    Create {
        #[arg(long, default_value = "./rialto-data")]
        data_dir: PathBuf,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Verify every ledger invariant offline; exits 0 only if the ledger balances.
    Check {
        #[arg(long, default_value = "./rialto-data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ractor=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rialto: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rialto: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open_store(dir: &std::path::Path) -> anyhow::Result<Arc<dyn Store>> {
    let store = RedbStore::open(dir, StoreOptions::default())
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    Ok(Arc::new(store))
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            config,
            data_dir,
            listen,
            ops_listen,
        } => {
            let mut config = Config::load(config.as_ref())?;
            config.data_dir = data_dir.unwrap_or(config.data_dir);
            config.listen = listen.unwrap_or(config.listen);
            config.ops_listen = ops_listen.unwrap_or(config.ops_listen);
            serve(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Merchant {
            command: MerchantCommand::Create { data_dir, name },
        } => {
            let store = open_store(&data_dir)?;
            let (merchant, key) =
                rialto_api::auth::create_merchant(store.as_ref(), &name, SystemClock.now_ms())
                    .await?;
            eprintln!(
                "created merchant {} ({}); its API key follows, shown once",
                merchant.id, merchant.name
            );
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ledger {
            command: LedgerCommand::Check { data_dir },
        } => {
            let store = open_store(&data_dir)?;
            let report = store.ledger_check().await?;
            println!(
                "payments: {}  journal entries: {}  postings: {}",
                report.payments, report.entries, report.postings
            );
            for (currency, total) in &report.totals {
                println!("sum of postings in {currency}: {total}");
            }
            if report.balanced() {
                println!("ledger balanced");
                Ok(ExitCode::SUCCESS)
            } else {
                for problem in &report.problems {
                    println!("PROBLEM: {problem}");
                }
                println!("ledger NOT balanced ({} problems)", report.problems.len());
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let store = open_store(&config.data_dir)?;
    if store.merchant_count().await? == 0 {
        let (merchant, key) =
            rialto_api::auth::create_merchant(store.as_ref(), "demo", SystemClock.now_ms()).await?;
        eprintln!(
            "created the demo merchant {}; its API key (shown once) is on stdout",
            merchant.id
        );
        println!("demo API key: {key}");
    }
    let adapters: Vec<Arc<dyn PspAdapter>> = config
        .sims()
        .into_iter()
        .map(|sim| Arc::new(SimPsp::new(sim)) as Arc<dyn PspAdapter>)
        .collect();
    let mut builder = RialtoBuilder::new(store, adapters);
    builder.routes = config.routes();
    builder.config = config.engine_config();
    let engine = Arc::new(builder.start().await.map_err(anyhow::Error::msg)?);
    let state = rialto_api::AppState::new(engine.clone(), config.api_config());

    let api = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let ops = tokio::net::TcpListener::bind(config.ops_listen)
        .await
        .with_context(|| format!("binding {}", config.ops_listen))?;
    println!(
        "rialto listening: api http://{} ops http://{}",
        api.local_addr()?,
        ops.local_addr()?
    );
    tracing::info!(data_dir = %config.data_dir.display(), "rialto serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // A closed channel means the process is exiting anyway.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api_server = axum::serve(api, rialto_api::merchant_router(state.clone()))
        .with_graceful_shutdown(wait(stop_rx.clone()));
    let ops_server =
        axum::serve(ops, rialto_api::ops_router(state)).with_graceful_shutdown(wait(stop_rx));
    let servers = tokio::spawn(async move {
        tokio::try_join!(api_server.into_future(), ops_server.into_future())
    });

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true); // Receivers live inside the servers until they finish.
    servers.await.context("server task")??;
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        // Without a ctrl-c handler we still stop on SIGTERM.
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
