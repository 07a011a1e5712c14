//! Starting and stopping a whole Rialto in this process: store, engine, merchant API and ops
//! listener. `rialto serve` runs one until a signal; `rialto sim` runs one on loopback to load.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};

use rialto_actors::psp::PspAdapter;
use rialto_actors::{Rialto, RialtoBuilder};
use rialto_persistence::{RedbStore, Store, StoreOptions};
use rialto_sim::SimPsp;

use crate::config::{Config, OPS_CONNECTIONS_MAX};

pub fn open_store(dir: &std::path::Path) -> anyhow::Result<Arc<dyn Store>> {
    let store = RedbStore::open(dir, StoreOptions::default())
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    Ok(Arc::new(store))
}

pub struct Running {
    pub api_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    /// The in-process simulated PSPs, for their counters.
    pub sims: Vec<Arc<SimPsp>>,
    engine: Arc<Rialto>,
    stop: watch::Sender<bool>,
    servers: tokio::task::JoinHandle<((), ())>,
}

/// Starts Rialto as `config` says, with every engine and PSP time multiplied by `scale`.
pub async fn start(config: &Config, scale: f64) -> anyhow::Result<Running> {
    config.validate()?;
    // The recorder first: the store, the supervisors and the breakers register their series
    // (at zero) as they start, and a series recorded before the recorder exists is lost.
    rialto_api::metrics_handle();
    let store = open_store(&config.data_dir)?;
    let engine_config = config.engine_config(scale);
    let mut adapters: Vec<Arc<dyn PspAdapter>> = Vec::new();
    let mut sims = Vec::new();
    for spec in &config.psp {
        let built = spec
            .adapter(
                scale,
                engine_config.psp_call_timeout,
                engine_config.psp_inflight_max,
            )
            .map_err(anyhow::Error::msg)?;
        adapters.push(built.adapter);
        sims.extend(built.sim);
    }
    let mut builder = RialtoBuilder::new(store.clone(), adapters);
    builder.routes = config.routes();
    builder.config = engine_config;
    let engine = Arc::new(builder.start().await.map_err(anyhow::Error::msg)?);
    let state = rialto_api::AppState::new(engine.clone(), config.api_config(scale));

    let api = listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let ops =
        listen(config.ops_listen).with_context(|| format!("binding {}", config.ops_listen))?;
    let (api_addr, ops_addr) = (api.local_addr()?, ops.local_addr()?);
    let (stop, stopped) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        // A closed channel means we are stopping anyway.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let open_files = crate::open_files_limit();
    let api_connections = Connections {
        name: "api",
        max: config.api_connections_max(open_files),
        at_capacity: Some(rialto_api::merchant_router_at_capacity(state.clone())),
    };
    if api_connections.max < config.api.connections_max {
        tracing::warn!(
            configured = config.api.connections_max,
            serving = api_connections.max,
            open_files_limit = open_files,
            "api.connections_max lowered to what the open files limit leaves"
        );
    }
    let api_server = serve_http(
        api,
        rialto_api::merchant_router(state.clone()),
        api_connections,
        wait(stopped.clone()),
    );
    let ops_connections = Connections {
        name: "ops",
        max: OPS_CONNECTIONS_MAX,
        at_capacity: None,
    };
    let ops_server = serve_http(
        ops,
        rialto_api::ops_router(state),
        ops_connections,
        wait(stopped),
    );
    tokio::spawn(watch_runtime(wait(stop.subscribe())));
    let servers = tokio::spawn(async move { tokio::join!(api_server, ops_server) });
    Ok(Running {
        api_addr,
        ops_addr,
        store,
        sims,
        engine,
        stop,
        servers,
    })
}

/// Connections the kernel may complete and queue before we accept them (capped by
/// `net.core.somaxconn`). Tokio's `TcpListener::bind` asks for 1,024: a burst of new clients
/// beyond that had their SYNs dropped, and each such client waited out the retransmission
/// (1 s, then 3 s, 7 s…) before its request even started.
const LISTEN_BACKLOG: u32 = 4_096;

/// Binds a listener (with `SO_REUSEADDR`, as std does) and a backlog of `LISTEN_BACKLOG`:
/// the merchant API, the ops listener and `rialto psp-sim`.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How many connections a listener serves at once, the name its gauges carry
/// (`rialto_queue_depth` and `rialto_queue_capacity`, `queue` = `NAME_connections`), and what
/// serves the ones beyond: without it, they wait in the listen backlog.
pub struct Connections {
    pub name: &'static str,
    pub max: usize,
    pub at_capacity: Option<Router>,
}

/// Connections beyond the limit answered at once (`Connections::at_capacity`). Each takes
/// one request, is answered and closed; beyond these, new ones wait in the backlog.
const REFUSING_MAX: usize = 64;

/// Serves `router` over HTTP/1.1 on `listener` until `stop` resolves, then lets open requests
/// finish. `axum::serve` does the same but offers no say over hyper's connection settings:
/// here each connection's read buffer is capped at 8 KiB (hyper's smallest), which is what a
/// JSON API with 64 KiB bodies needs and what keeps 10,000 open keep-alive connections cheap.
///
/// At most `limit.max` connections are served at once, instead of accepting until the
/// process runs out of descriptors (which would fail its PSP calls too). At the limit, up to
/// `REFUSING_MAX` more are served `limit.at_capacity` for one request each, then closed: a
/// client learns at once that it should retry, rather than waiting in the backlog until
/// some connection closes (a kept-alive one may stay 30 s idle first).
async fn serve_http(
    listener: TcpListener,
    router: Router,
    limit: Connections,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1, and HTTP/2 for clients that speak it without TLS (as `axum::serve` does).
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .max_buf_size(8 * 1024)
        .header_read_timeout(Duration::from_secs(30));
    let slots = Arc::new(Semaphore::new(limit.max));
    let refusing = Arc::new(Semaphore::new(if limit.at_capacity.is_some() {
        REFUSING_MAX
    } else {
        0
    }));
    // One request per connection, and little patience for it.
    let mut refuse = auto::Builder::new(TokioExecutor::new()).http1_only();
    refuse
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .max_buf_size(8 * 1024)
        .header_read_timeout(Duration::from_secs(5));
    let queue = format!("{}_connections", limit.name);
    metrics::gauge!("rialto_queue_capacity", "queue" => queue.clone()).set(limit.max as f64);
    let open = metrics::gauge!("rialto_queue_depth", "queue" => queue);
    open.set(0.0);
    let mut last_warning: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let never_closed = "the semaphores are never closed";
        let slot = tokio::select! {
            biased;
            slot = slots.clone().acquire_owned() => Ok(slot.expect(never_closed)),
            slot = refusing.clone().acquire_owned() => Err(slot.expect(never_closed)),
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: not fatal.
                    // Once a second at most: a server out of descriptors fails every accept.
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, listener = limit.name, "accept failed");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true); // Responses go out in one write; no Nagle wait.
        let io = TokioIo::new(stream);
        // A place may have come free while this one waited to be accepted.
        let slot = slot.or_else(|refused| slots.clone().try_acquire_owned().map_err(|_| refused));
        let served: Pin<Box<dyn Future<Output = ()> + Send>> = match slot {
            Ok(slot) => {
                let service = TowerToHyperService::new(router.clone());
                let connection = graceful.watch(
                    http.serve_connection_with_upgrades(io, service)
                        .into_owned(),
                );
                let open = open.clone();
                open.increment(1.0);
                Box::pin(async move {
                    let _ = connection.await; // A client that hangs up is not our error.
                    open.decrement(1.0);
                    drop(slot);
                })
            }
            Err(slot) => {
                let refusal = limit
                    .at_capacity
                    .clone()
                    .expect("refusing needs at_capacity");
                let service = TowerToHyperService::new(refusal);
                let connection = graceful.watch(refuse.serve_connection(io, service).into_owned());
                Box::pin(async move {
                    let _ = connection.await;
                    drop(slot);
                })
            }
        };
        tokio::spawn(served);
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Publishes how busy the runtime is, until `stop`: `rialto_runtime_lag_seconds`, the longest
/// a due task waited to run over the last second (from [`probe_lag`]), and
/// `rialto_runtime_tasks`, the tasks alive. On saturated cores the lag rises before anything
/// else does; a slow PSP leaves it alone (tasks waiting on a PSP are not due).
async fn watch_runtime(stop: impl Future<Output = ()>) {
    let lag = metrics::gauge!("rialto_runtime_lag_seconds");
    let tasks = metrics::gauge!("rialto_runtime_tasks");
    let runtime = tokio::runtime::Handle::current();
    lag.set(0.0);
    tasks.set(runtime.metrics().num_alive_tasks() as f64);
    let probe = probe_lag(Duration::from_secs(1), move |worst| {
        lag.set(worst.as_secs_f64());
        tasks.set(runtime.metrics().num_alive_tasks() as f64);
    });
    tokio::select! {
        () = probe => {}
        () = stop => {}
    }
}

/// Sleeps 10 ms at a time and measures how much later than due it was woken and polled
/// again; calls `report` with the largest such delay once a `window`. Never returns.
async fn probe_lag(window: Duration, mut report: impl FnMut(Duration)) {
    const EVERY: Duration = Duration::from_millis(10);
    let mut worst = Duration::ZERO;
    let mut window_start = Instant::now();
    loop {
        let asked = Instant::now();
        tokio::time::sleep(EVERY).await;
        worst = worst.max(asked.elapsed().saturating_sub(EVERY));
        if window_start.elapsed() >= window {
            report(worst);
            worst = Duration::ZERO;
            window_start = Instant::now();
        }
    }
}

impl Running {
    /// Every circuit breaker change so far.
    pub fn breaker_transitions(&self) -> Vec<rialto_actors::psp_supervisor::BreakerChange> {
        self.engine.breaker_transitions()
    }

    /// Stops accepting requests, lets running ones finish, then stops the actor tree.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true); // Receivers live in the servers until they finish.
        self.servers.await.context("server task")?;
        if let Ok(engine) = Arc::try_unwrap(self.engine) {
            engine.shutdown().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that holds the only worker thread for 300 ms shows as a lag of about that much,
    /// in the window it happened in.
    #[tokio::test]
    async fn the_lag_probe_sees_a_blocked_worker() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(probe_lag(Duration::from_millis(100), move |worst| {
            let _ = tx.send(worst);
        }));
        let first = rx.recv().await.expect("a first window");
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(300)) })
            .await
            .unwrap();
        let mut worst = Duration::ZERO;
        for _ in 0..3 {
            worst = worst.max(rx.recv().await.expect("later windows"));
        }
        assert!(worst >= Duration::from_millis(250), "{worst:?}");
        assert!(first < worst, "{first:?} before, {worst:?} blocked");
    }

    /// A burst of connections bigger than tokio's default backlog (1,024) all get in while
    /// nobody accepts: none waits for a SYN retransmission. With the default backlog the ones
    /// past the 1,025th are dropped and time out here.
    #[tokio::test]
    async fn a_burst_of_new_connections_is_queued_not_dropped() {
        const BURST: usize = 1_600;
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if somaxconn < BURST + 64 {
            eprintln!(
                "net.core.somaxconn is {somaxconn}: the kernel caps the backlog below the burst; not checked"
            );
            return;
        }
        crate::raise_fd_limit(); // 1,600 client sockets, as `rialto` itself would allow.
        let files = crate::open_files_limit().unwrap_or(0);
        if files < (BURST + 256) as u64 {
            eprintln!("open files are limited to {files}: not checked");
            return;
        }
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            connects.spawn(tokio::time::timeout(
                Duration::from_millis(700),
                tokio::net::TcpStream::connect(addr),
            ));
        }
        let mut streams = Vec::with_capacity(BURST);
        while let Some(done) = connects.join_next().await {
            if let Ok(Ok(stream)) = done.unwrap() {
                streams.push(stream);
            }
        }
        assert_eq!(
            streams.len(),
            BURST,
            "connections completed without an accept"
        );
        drop(listener);
    }
}
