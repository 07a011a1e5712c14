//! The `rialto` binary: parse flags, build, run. All behaviour lives in the library crates;
//! this file and its two helpers (`config`, `server`) only wire them.

mod config;
mod server;
mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::Deserialize;

use rialto_actors::SystemClock;
use rialto_engine::Clock;
use rialto_sim::load::{self, Target};
use rialto_sim::remote;
use rialto_sim::report::{self, Extras};
use rialto_sim::scenario::Scenario;
use rialto_sim::spec::PspSpec;

use crate::config::Config;
use crate::telemetry::{LogFormat, Telemetry};

/// glibc's allocator spends a sixth of a payment's CPU under load (profiled with perf).
/// An allocator with per-thread caches removes most of that. jemalloc costs 6–8% less CPU per
/// payment than mimalloc (`benches/side-by-side.sh`), with a little less resident memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "rialto",
    version,
    about = "Actor-based payment transaction engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as JSON (with trace, span and correlation ids) or as text for a terminal.
    #[arg(
        long,
        global = true,
        env = "RIALTO_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormat,
    /// Export traces by OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317); off if unset.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the merchant API and the ops listener.
    Serve {
        /// A TOML config (every key optional; see rialto.example.toml). Without it: embedded
        /// store, three simulated PSPs, the defaults below.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the embedded store lives (overrides the config) [default: ./rialto-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The merchant API's address (overrides the config) [default: 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The ops listener's address: /metrics, /healthz, /readyz, admin (overrides the
        /// config) [default: 127.0.0.1:9464].
        #[arg(long)]
        ops_listen: Option<SocketAddr>,
    },
    /// Load-test Rialto with a scenario, in-process or against a running server.
    Sim {
        /// A built-in scenario: seed-profile, max-throughput, latency-spike, drop-1pct, psp-outage, memory-10k.
        #[arg(long, conflicts_with = "scenario_file")]
        scenario: Option<String>,
        /// A scenario file (TOML; the format is in sim/scenarios/README.md).
        #[arg(long)]
        scenario_file: Option<PathBuf>,
        /// Drive a running Rialto at this URL instead of starting one in this process.
        #[arg(long)]
        target: Option<String>,
        /// The merchant API key for --target (or RIALTO_API_KEY).
        #[arg(long, env = "RIALTO_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Multiply every time in the scenario (0.02 runs a 20-minute profile in 24 s).
        #[arg(long, default_value_t = 1.0)]
        duration_scale: f64,
        /// Write report.json and report.html here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// First drive the same load at a trivial endpoint, and report the ratio.
        #[arg(long)]
        baseline: bool,
        /// Seeds the load's payment mix and think times (each PSP has its own `seed` in the
        /// scenario): the same seeds draw the same run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// No live progress.
        #[arg(long)]
        quiet: bool,
        /// With --target: the server's ops listener (http://HOST:PORT), for its breaker
        /// changes during the load and a ledger check of its store at the end.
        #[arg(long, requires = "target")]
        ops: Option<String>,
        /// The server's admin token, for --ops (or RIALTO_ADMIN_TOKEN).
        #[arg(long, env = "RIALTO_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// With --target: a `rialto psp-sim` serving the PSP that Rialto's config calls ID
        /// (repeatable). Its incident schedule starts over with the measured load, and its
        /// incidents and counters go in the report.
        #[arg(long = "psp-sim", requires = "target", value_name = "ID=URL")]
        psp_sims: Vec<String>,
        /// The PSP simulators' secret, for --psp-sim (or RIALTO_PSP_SECRET).
        #[arg(long, env = "RIALTO_PSP_SECRET", hide_env_values = true)]
        psp_secret: Option<String>,
    },
    /// Serve a simulated PSP over HTTP (Rialto's PSP protocol, HMAC-signed requests).
    PspSim {
        /// The address to serve the PSP protocol on.
        #[arg(long, default_value = "127.0.0.1:7001")]
        listen: SocketAddr,
        /// TOML with one `[psp]` table (see sim/src/spec.rs); needs `secret`.
        #[arg(long)]
        config: Option<PathBuf>,
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
        /// The store of the Rialto that will serve this merchant.
        #[arg(long, default_value = "./rialto-data")]
        data_dir: PathBuf,
        /// A name for people; the merchant's id is generated.
        #[arg(long)]
        name: String,
        /// Requests a minute this merchant may make, sustained (0: unlimited).
        #[arg(long, default_value_t = rialto_api::auth::DEFAULT_RATE_PER_MIN)]
        rate_per_min: u32,
        /// Requests it may make at once before the sustained rate applies.
        #[arg(long, default_value_t = rialto_api::auth::DEFAULT_BURST)]
        burst: u32,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Verify every ledger invariant offline; exits 0 only if the ledger balances.
    Check {
        /// The store to check (with the server stopped, or on a copy).
        #[arg(long, default_value = "./rialto-data")]
        data_dir: PathBuf,
    },
}

/// This process's open files limit (soft and hard), if it can tell.
#[cfg(unix)]
fn nofile_limit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    known.then_some(limit)
}

/// Lets this process hold as many sockets as the system allows: a payment server (or the load
/// generator, with thousands of requests in flight) runs out of descriptors long before memory.
#[cfg(unix)]
fn raise_fd_limit() {
    const WANTED: libc::rlim_t = 1 << 20;
    let Some(mut limit) = nofile_limit() else {
        return;
    };
    // Raising the hard limit needs privileges; if it fails, settle for the hard limit.
    let raised = libc::rlimit {
        rlim_cur: WANTED,
        rlim_max: WANTED.max(limit.rlim_max),
    };
    // SAFETY: setrlimit only reads the struct we pass.
    unsafe {
        if limit.rlim_cur < WANTED && libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit); // Best effort.
        }
    }
}

/// The open files this process may hold (its soft limit), if it can tell.
#[cfg(unix)]
pub fn open_files_limit() -> Option<u64> {
    #[allow(clippy::unnecessary_cast)] // rlim_t is 32 bits on some targets.
    nofile_limit().map(|limit| limit.rlim_cur as u64)
}

#[cfg(not(unix))]
pub fn open_files_limit() -> Option<u64> {
    None
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(unix)]
    raise_fd_limit();
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
    let telemetry = {
        let _runtime = runtime.enter();
        let service = match cli.command {
            Command::PspSim { .. } => "rialto-psp-sim",
            Command::Sim { .. } => "rialto-sim",
            _ => "rialto",
        };
        match Telemetry::init(service, cli.log_format, cli.otlp_endpoint.as_deref()) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("rialto: cannot set up logs and traces: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    };
    let outcome = runtime.block_on(async {
        let outcome = run(cli.command).await;
        // Spans still queued for export go out before the process ends.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        outcome
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rialto: {e:#}");
            ExitCode::FAILURE
        }
    }
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
        Command::Sim {
            scenario,
            scenario_file,
            target,
            api_key,
            duration_scale,
            report,
            baseline,
            seed,
            quiet,
            ops,
            admin_token,
            psp_sims,
            psp_secret,
        } => {
            let remote = match target {
                Some(url) => {
                    let ops = match ops {
                        Some(url) => Some(remote::Ops {
                            base_url: url.trim_end_matches('/').to_string(),
                            admin_token: admin_token
                                .context("--ops needs --admin-token (or RIALTO_ADMIN_TOKEN)")?,
                        }),
                        None => None,
                    };
                    let psp_sims = psp_sims
                        .iter()
                        .map(|arg| {
                            let secret = psp_secret
                                .as_deref()
                                .context("--psp-sim needs --psp-secret (or RIALTO_PSP_SECRET)")?;
                            remote::PspSim::parse(arg, secret)
                        })
                        .collect::<anyhow::Result<_>>()?;
                    Some(Remote {
                        target: Target {
                            base_url: url.trim_end_matches('/').to_string(),
                            api_key: api_key
                                .context("--target needs --api-key (or RIALTO_API_KEY)")?,
                        },
                        observers: remote::Observers::new(ops, psp_sims)?,
                    })
                }
                None => None,
            };
            let scenario = match (scenario, scenario_file) {
                (_, Some(file)) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    Scenario::parse(&text)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("scenario file {}", file.display()))?
                }
                (name, None) => Scenario::built_in(name.as_deref().unwrap_or("max-throughput"))
                    .map_err(anyhow::Error::msg)?,
            };
            if !(duration_scale > 0.0 && duration_scale <= 100.0) {
                bail!("--duration-scale must be in (0, 100]");
            }
            // The in-process Rialto's store, removed at the end, or by a second Ctrl-C.
            let scratch = tempfile::tempdir().context("temp dir for the in-process store")?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let scratch_path = scratch.path().to_path_buf();
            tokio::spawn(async move {
                // The first Ctrl-C (or SIGTERM) ends the load early; a second one quits at once.
                shutdown_signal().await;
                eprintln!(
                    "\nstopping: no new payments; those in flight finish and the report covers what ran (Ctrl-C again to quit now)"
                );
                let _ = stop.send(true);
                shutdown_signal().await;
                quit_removing(&scratch_path, INTERRUPTED);
            });
            #[cfg(unix)]
            {
                // A closed terminal (SIGHUP) leaves nobody to read a summary: quit at once,
                // but do not leave the in-process store behind in the temp dir.
                use tokio::signal::unix::{SignalKind, signal};
                let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
                let scratch_path = scratch.path().to_path_buf();
                tokio::spawn(async move {
                    hangup.recv().await;
                    quit_removing(&scratch_path, HUNG_UP);
                });
            }
            let options = load::Options {
                scale: duration_scale,
                seed,
                progress: !quiet,
                trivial: false,
                settle_max: Duration::from_secs(30),
                stop: stopped,
            };
            simulate(scenario, remote, options, baseline, report, scratch).await
        }
        Command::PspSim { listen, config } => {
            psp_sim(listen, config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Merchant {
            command:
                MerchantCommand::Create {
                    data_dir,
                    name,
                    rate_per_min,
                    burst,
                },
        } => {
            let store = server::open_store(&data_dir)?;
            let limit = rialto_api::auth::RateLimit {
                per_min: rate_per_min,
                burst,
            };
            let (merchant, key) = rialto_api::auth::create_merchant(
                store.as_ref(),
                &name,
                SystemClock.now_ms(),
                limit,
            )
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
            let store = server::open_store(&data_dir)?;
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
    {
        let store = server::open_store(&config.data_dir)?;
        if store.merchant_count().await? == 0 {
            let (merchant, key) = rialto_api::auth::create_merchant(
                store.as_ref(),
                "demo",
                SystemClock.now_ms(),
                Default::default(),
            )
            .await?;
            eprintln!(
                "created the demo merchant {}; its API key (shown once) is on stdout",
                merchant.id
            );
            println!("demo API key: {key}");
        }
    } // The store closes here; the server opens it again.
    let running = server::start(&config, 1.0).await?;
    println!(
        "rialto listening: api http://{} ops http://{}",
        running.api_addr, running.ops_addr
    );
    tracing::info!(data_dir = %config.data_dir.display(), "rialto serving");
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await
}

/// A running Rialto for `rialto sim` to drive (`--target`), and what else it can ask.
struct Remote {
    target: Target,
    observers: remote::Observers,
}

/// The incidents a load of `ran_s` seconds reached: a run stopped early never got to the later ones.
fn reached(incidents: Vec<serde_json::Value>, ran_s: f64) -> Vec<serde_json::Value> {
    incidents
        .into_iter()
        .filter(|i| i["start_s"].as_f64().is_some_and(|start| start < ran_s))
        .collect()
}

/// Asks a `--target` run's observers what the report needs from them.
async fn observe(
    observers: &remote::Observers,
    extras: &mut Extras,
    started_ms: i64,
    ran_s: f64,
) -> anyhow::Result<()> {
    let (incidents, psp_calls) = observers.psp_sims_now().await?;
    extras.incidents = reached(incidents, ran_s);
    extras.psp_calls = psp_calls;
    extras.breaker_transitions = observers.breaker_transitions(started_ms).await?;
    extras.ledger_balanced = observers.ledger_balanced().await?;
    Ok(())
}

/// Runs a scenario, prints the summary, writes the report; fails if the ledger does not balance.
async fn simulate(
    mut scenario: Scenario,
    remote: Option<Remote>,
    options: load::Options,
    baseline: bool,
    report_dir: Option<PathBuf>,
    scratch: tempfile::TempDir,
) -> anyhow::Result<ExitCode> {
    let mut extras = Extras::default();
    let mut local = None;
    // Descriptors the load's connections may take: in process, the server takes as many for
    // its ends of them, and its PSP connections besides.
    let connections = |outbound: usize, shares: usize| {
        open_files_limit().map(|files| config::files_left(files, outbound) / shares)
    };
    let connections_left;
    let target = match &remote {
        Some(remote) => {
            remote.observers.check().await?;
            connections_left = connections(0, 1);
            remote.target.clone()
        }
        None => {
            let mut config = Config {
                listen: ([127, 0, 0, 1], 0).into(),
                ops_listen: ([127, 0, 0, 1], 0).into(),
                data_dir: scratch.path().to_path_buf(),
                psp: if scenario.psp.is_empty() {
                    ["sim_a", "sim_b", "sim_c"]
                        .into_iter()
                        .map(PspSpec::named)
                        .collect()
                } else {
                    scenario.psp.clone()
                },
                ..Config::default()
            };
            let o = &scenario.engine;
            let e = &mut config.engine;
            e.psp_call_timeout_ms = o.psp_call_timeout_ms.unwrap_or(e.psp_call_timeout_ms);
            e.status_query_backoff_ms = o
                .status_query_backoff_ms
                .unwrap_or(e.status_query_backoff_ms);
            e.status_query_attempts_max = o
                .status_query_attempts_max
                .unwrap_or(e.status_query_attempts_max);
            e.sweep_interval_ms = o.sweep_interval_ms.unwrap_or(e.sweep_interval_ms);
            e.psp_inflight_max = o.psp_inflight_max.unwrap_or(e.psp_inflight_max);
            e.breaker.slow_call_ms = o.slow_call_ms.unwrap_or(e.breaker.slow_call_ms);
            connections_left = connections(config.outbound_connections_max(), 2);
            let running = server::start(&config, options.scale).await?;
            // The load generator's merchant is not rate limited: the load is the point.
            let unlimited = rialto_api::auth::RateLimit {
                per_min: 0,
                burst: 1,
            };
            let (_, key) = rialto_api::auth::create_merchant(
                running.store.as_ref(),
                "sim",
                SystemClock.now_ms(),
                unlimited,
            )
            .await?;
            eprintln!(
                "rialto running in-process at http://{} (store in {})",
                running.api_addr,
                scratch.path().display()
            );
            let target = Target {
                base_url: format!("http://{}", running.api_addr),
                api_key: key,
            };
            local = Some(running);
            target
        }
    };
    if let Some(left) = connections_left {
        let fitted = scenario
            .load
            .fit_connections(left)
            .map_err(anyhow::Error::msg);
        if let Some(max) = fitted? {
            eprintln!(
                "at most {max} payments in flight: what the open files limit leaves (ulimit -n); arrivals beyond count as dropped"
            );
        }
    }
    if baseline {
        let trivial = load::Options {
            trivial: true,
            ..options.clone()
        };
        eprintln!("baseline: the same load at GET /ping");
        extras.baseline = Some(load::run(&scenario, &target, &trivial).await?);
        if *options.stop.borrow() {
            eprintln!("stopped during the baseline phase: the scenario did not run");
            if let Some(running) = local {
                running.stop().await?;
            }
            return Ok(ExitCode::from(INTERRUPTED));
        }
    }
    eprintln!("running scenario {}", scenario.name);
    // Incidents are timed from the start of the load they measure.
    if let Some(running) = &local {
        running.sims.iter().for_each(|s| s.start_schedule());
    }
    if let Some(remote) = &remote {
        remote.observers.start_schedules().await?;
    }
    let started_ms = SystemClock.now_ms();
    let measured = load::run(&scenario, &target, &options).await?;
    let ran_s = measured.duration.as_secs_f64();
    // What the target could not tell after the load: the report is still written without it.
    let unobserved = match &remote {
        Some(remote) => observe(&remote.observers, &mut extras, started_ms, ran_s)
            .await
            .err(),
        None => None,
    };
    if let Some(running) = local {
        extras.incidents = reached(report::incidents(&scenario, options.scale), ran_s);
        extras.breaker_transitions = running
            .breaker_transitions()
            .into_iter()
            .filter(|t| t.at_ms >= started_ms)
            .map(|t| {
                report::breaker_change(t.at_ms - started_ms, &t.psp, t.from.as_str(), t.to.as_str())
            })
            .collect();
        extras.ledger_balanced = Some(running.store.ledger_check().await?.balanced());
        extras.psp_calls = running
            .sims
            .iter()
            .map(|s| {
                let calls = s.stats.snapshot().into_iter();
                let calls = calls.map(|(name, n)| (name.to_string(), n)).collect();
                (s.config().id.clone(), calls)
            })
            .collect::<BTreeMap<_, _>>();
        running.stop().await?;
    }
    drop(scratch); // The in-process store, once its server has stopped.
    let report = report::build(&scenario, options.scale, &measured, &extras);
    println!("{}", report::summary(&report));
    if let Some(dir) = report_dir {
        report::write(&dir, &report)
            .with_context(|| format!("writing the report to {}", dir.display()))?;
        eprintln!(
            "report written to {}/report.json and report.html",
            dir.display()
        );
    }
    if let Some(e) = unobserved {
        return Err(e.context("the report lacks what the target could not tell"));
    }
    Ok(if extras.ledger_balanced == Some(false) {
        ExitCode::FAILURE
    } else if measured.interrupted {
        ExitCode::from(INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

/// The exit code of a `rialto sim` stopped early (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

/// The exit code of a `rialto sim` whose terminal closed (128 + SIGHUP).
const HUNG_UP: u8 = 129;

/// Ends a `rialto sim` at once, from a signal task: removes the in-process store (its
/// `TempDir` is not dropped by `exit`) and exits with `code`.
fn quit_removing(store: &Path, code: u8) -> ! {
    let _ = std::fs::remove_dir_all(store);
    std::process::exit(i32::from(code));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PspSimFile {
    psp: PspSpec,
    /// Still accepted during a secret rotation.
    previous_secret: Option<String>,
}

async fn psp_sim(listen: SocketAddr, config: Option<PathBuf>) -> anyhow::Result<()> {
    let file = match config {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<PspSimFile>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => PspSimFile {
            psp: PspSpec::named("psp_sim"),
            previous_secret: None,
        },
    };
    let secret = file
        .psp
        .secret
        .clone()
        .or_else(|| std::env::var("RIALTO_PSP_SECRET").ok())
        .filter(|s| !s.is_empty())
        .context("psp-sim needs a secret: `secret` in its [psp] table or RIALTO_PSP_SECRET")?;
    let sim = Arc::new(rialto_sim::SimPsp::new(
        file.psp.sim_config(1.0).map_err(anyhow::Error::msg)?,
    ));
    let mut secrets = vec![secret.into_bytes()];
    secrets.extend(file.previous_secret.map(String::into_bytes));
    let listener = server::listen(listen).with_context(|| format!("binding {listen}"))?;
    println!(
        "psp-sim listening: http://{} (psp {})",
        listener.local_addr()?,
        file.psp.id
    );
    axum::serve(listener, rialto_sim::server::router(sim, secrets))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
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
