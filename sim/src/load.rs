//! The load generator. It drives Rialto only through its merchant HTTP API: closed loop
//! (virtual users that wait for each answer, then think) or open loop (a fixed arrival rate
//! whose latency counts from the scheduled start, so a slow server cannot hide behind
//! coordinated omission). It records HDR histograms, per-second series and every payment's
//! final status, and at the end waits for payments left `unknown` to be settled. What it keeps
//! stays small however long it runs: payments are counted as they settle (only unsettled ones
//! are kept, to be asked about), and each second's histogram is reduced to its percentiles
//! once no answer can still be expected for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{Method, StatusCode, header};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::client::Client;
use crate::scenario::{LoadMode, MixSpec, Scenario, scaled};

/// Where the load goes.
#[derive(Clone, Debug)]
pub struct Target {
    pub base_url: String,
    pub api_key: String,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub scale: f64,
    pub seed: u64,
    /// Draw live progress on the terminal (stderr).
    pub progress: bool,
    /// Drive `GET /ping` instead of payments: the trivial-endpoint baseline.
    pub trivial: bool,
    /// How long to wait after the load for `unknown` payments to settle.
    pub settle_max: Duration,
    /// Set to stop the load early (Ctrl-C): no payment starts after it, the ones in flight
    /// finish and settle, and the measurements cover what ran.
    pub stop: watch::Receiver<bool>,
}

/// Retries of a payment request answered 504 (still processing) or 409 (in progress).
const CLIENT_RETRIES_MAX: u32 = 600;

/// Latency histograms hold microseconds up to one hour.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// Each second's histogram, for the series: two significant digits (1%) serve a chart, at a
/// seventh of the size (27 KB, not 188 KB).
fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static bounds are valid")
}

/// How long a second's histogram is kept before it is reduced to its percentiles. Requests
/// time out after 120 s; an answer that comes later than this (after many 409/504 retries)
/// still counts in its second, but not in that second's percentiles.
const SECOND_HISTOGRAM_KEPT_S: usize = 300;

#[derive(Debug, Clone, Default)]
pub struct Second {
    pub requests: u64,
    pub payments: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// Everything one run measured.
#[derive(Debug)]
pub struct Measurements {
    pub duration: Duration,
    pub requests: u64,
    /// Payments attempted (or pings, for the trivial baseline).
    pub payments: u64,
    /// Latency of payment creation (or of pings), in microseconds.
    pub latency_us: Histogram<u64>,
    /// Latency of every request the run made, in microseconds.
    pub latency_all_us: Histogram<u64>,
    /// Final status of each payment (`http_<code>`, `transport_error` for failed requests).
    pub outcomes: BTreeMap<String, u64>,
    /// Payment requests answered with an error, by the problem `type` the server named
    /// (`overloaded`, `no_psp_available`, …), or `http_<code>` for an answer without one.
    pub problems: BTreeMap<String, u64>,
    pub by_psp: BTreeMap<String, BTreeMap<String, u64>>,
    /// Payment creation latency by PSP, in microseconds.
    pub by_psp_latency_us: BTreeMap<String, Histogram<u64>>,
    pub series: Vec<Second>,
    pub dropped_arrivals: u64,
    /// Payments read back (`mix.lookup_pct`).
    pub reads: u64,
    /// Reads that showed a settled payment in another status than the client's last answer.
    pub stale_reads: u64,
    pub unresolved_after_settle: u64,
    pub peak_rss_mb: Option<f64>,
    /// The load was stopped before its planned end.
    pub interrupted: bool,
}

impl Measurements {
    /// Payments that did not end in an error. A decline is the issuer's answer, not an error
    /// (the source's error definition); `failed`, an unresolved `unknown`, a 5xx, 409 or 429
    /// and a transport error are errors.
    pub fn successes(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(status, _)| is_success(status))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn success_rate(&self) -> f64 {
        if self.payments == 0 {
            return 0.0;
        }
        self.successes() as f64 / self.payments as f64
    }

    pub fn throughput_per_s(&self) -> f64 {
        self.payments as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

pub fn is_success(status: &str) -> bool {
    matches!(
        status,
        "captured"
            | "partially_refunded"
            | "refunded"
            | "authorized"
            | "canceled"
            | "declined"
            | "pong"
    )
}

/// Reduces a second's histogram to the percentiles the series shows.
fn finalize((second, histogram): &mut (Second, Option<Histogram<u64>>)) {
    if let Some(h) = histogram.take() {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
        second.p50_ms = ms(0.50);
        second.p95_ms = ms(0.95);
        second.p99_ms = ms(0.99);
    }
}

/// Counts one payment in `status` at `psp`.
fn tally(by_psp: &mut BTreeMap<String, BTreeMap<String, u64>>, psp: &str, status: &str) {
    *by_psp
        .entry(psp.to_string())
        .or_default()
        .entry(status.to_string())
        .or_default() += 1;
}

fn settled(status: &str) -> bool {
    !matches!(status, "unknown" | "authorizing" | "capturing" | "created")
}

#[derive(Default)]
struct Inner {
    latency_us: Option<Histogram<u64>>,
    latency_all_us: Option<Histogram<u64>>,
    /// Each second, with its histogram until it is reduced to percentiles (`finalize`).
    per_second: Vec<(Second, Option<Histogram<u64>>)>,
    /// Payments that settled: psp → final status → count.
    settled: BTreeMap<String, BTreeMap<String, u64>>,
    /// Payments not settled yet: id → (psp, last status). `settle` asks about them.
    open: HashMap<String, (String, String)>,
    /// Payment creation latency by the PSP that took the payment, in microseconds.
    by_psp_latency: BTreeMap<String, Histogram<u64>>,
    failures: BTreeMap<String, u64>,
    problems: BTreeMap<String, u64>,
}

/// Shared by every worker; one short lock per request.
struct Recorder {
    started: Instant,
    inner: Mutex<Inner>,
    requests: AtomicU64,
    payments: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    reads: AtomicU64,
    stale_reads: AtomicU64,
}

enum Kind {
    Payment,
    Follow,
    Read,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            inner: Mutex::new(Inner {
                latency_us: Some(histogram()),
                latency_all_us: Some(histogram()),
                ..Inner::default()
            }),
            requests: AtomicU64::new(0),
            payments: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            stale_reads: AtomicU64::new(0),
        }
    }

    fn record(&self, kind: Kind, scheduled: Instant, latency: Duration, error: bool) {
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        let second = scheduled.saturating_duration_since(self.started).as_secs() as usize;
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = inner.latency_all_us.as_mut().map(|h| h.record(us)); // Clamped into range above.
        while inner.per_second.len() <= second {
            let aged = inner.per_second.len().checked_sub(SECOND_HISTOGRAM_KEPT_S);
            inner
                .per_second
                .push((Second::default(), Some(second_histogram())));
            if let Some(aged) = aged {
                finalize(&mut inner.per_second[aged]);
            }
        }
        let slot = &mut inner.per_second[second];
        slot.0.requests += 1;
        slot.0.errors += u64::from(error);
        match kind {
            Kind::Payment => {
                self.payments.fetch_add(1, Ordering::Relaxed);
                slot.0.payments += 1;
                if let Some(h) = slot.1.as_mut() {
                    let _ = h.record(us); // Clamped into range above.
                }
                let _ = inner.latency_us.as_mut().map(|h| h.record(us));
            }
            Kind::Read => {
                self.reads.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Follow => {}
        }
    }

    fn psp_latency(&self, psp: &str, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let h = inner
            .by_psp_latency
            .entry(psp.to_string())
            .or_insert_with(histogram);
        let _ = h.record(us); // Clamped into range above.
    }

    /// A payment's latest status: counted if it settled, kept to be asked about if not.
    fn payment(&self, id: &str, psp: &str, status: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !settled(status) {
            inner
                .open
                .insert(id.to_string(), (psp.to_string(), status.to_string()));
            return;
        }
        inner.open.remove(id);
        tally(&mut inner.settled, psp, status);
    }

    fn failure(&self, what: String) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.failures.entry(what).or_default() += 1;
    }

    /// A payment refused with an error answer: counted by the problem it names.
    fn problem(&self, code: u16, kind: &str) {
        let name = match kind.strip_prefix(PROBLEM_PREFIX) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => format!("http_{code}"),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.problems.entry(name).or_default() += 1;
    }

    fn p99_ms(&self) -> f64 {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .latency_us
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1_000.0)
    }
}

/// A small deterministic generator per worker (xorshift64*): the same seed draws the same mix.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        Rng((seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            low
        } else {
            low + self.next() % (high - low + 1)
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Flow {
    Approve,
    Manual,
    Refund,
    Decline,
    Timeout,
    Card,
}

fn pick(mix: &MixSpec, rng: &mut Rng) -> Flow {
    let mut roll = rng.between(0, 99) as u32;
    for (pct, flow) in [
        (mix.manual_capture_pct, Flow::Manual),
        (mix.refund_pct, Flow::Refund),
        (mix.decline_pct, Flow::Decline),
        (mix.timeout_pct, Flow::Timeout),
        (mix.card_pct, Flow::Card),
    ] {
        if roll < pct {
            return flow;
        }
        roll -= pct;
    }
    Flow::Approve
}

/// The fields of an answer (a payment or a refund) the load generator reads; the rest of the
/// body is skipped rather than built into a JSON tree.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Answer {
    id: String,
    psp: String,
    status: String,
    amount: Option<i64>,
    /// An error answer's problem type (`urn:rialto:problem:<name>`).
    #[serde(skip)]
    problem: String,
}

/// The field of an error answer (problem+json, whose `status` is a number) the load
/// generator reads.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct ProblemAnswer {
    #[serde(rename = "type")]
    kind: String,
}

/// How every problem `type` Rialto answers begins.
const PROBLEM_PREFIX: &str = "urn:rialto:problem:";

struct Worker {
    client: Arc<Client>,
    /// `Bearer <the target's API key>`.
    bearer: String,
    recorder: Arc<Recorder>,
    mix: MixSpec,
    run_id: String,
    trivial: bool,
}

impl Worker {
    async fn post(&self, path: &str, key: &str, body: &Value) -> Result<(u16, Answer), String> {
        let headers = [
            (header::AUTHORIZATION, self.bearer.as_str()),
            (header::HeaderName::from_static("idempotency-key"), key),
            (header::CONTENT_TYPE, "application/json"),
        ];
        let body = Bytes::from(serde_json::to_vec(body).map_err(|e| e.to_string())?);
        let reply = self
            .client
            .send(Method::POST, path, &headers, body)
            .await
            .map_err(|_| "transport_error".to_string())?;
        let answer = if reply.status.is_success() {
            serde_json::from_slice::<Answer>(&reply.body).unwrap_or_default()
        } else {
            let problem = serde_json::from_slice::<ProblemAnswer>(&reply.body).unwrap_or_default();
            Answer {
                problem: problem.kind,
                ..Answer::default()
            }
        };
        Ok((reply.status.as_u16(), answer))
    }

    /// One payment's whole flow; latency of the first request counts from `scheduled`.
    async fn iterate(&self, rng: &mut Rng, n: u64, scheduled: Instant) {
        if self.trivial {
            let sent = self
                .client
                .send(Method::GET, "/ping", &[], Bytes::new())
                .await;
            let ok = matches!(&sent, Ok(r) if r.status.is_success());
            self.recorder
                .record(Kind::Payment, scheduled, scheduled.elapsed(), !ok);
            self.recorder.failure(if ok {
                "pong".into()
            } else {
                "http_error".into()
            });
            return;
        }
        let flow = pick(&self.mix, rng);
        let (method, capture) = match flow {
            Flow::Approve | Flow::Refund => ("pm_sim_approve", "automatic"),
            Flow::Manual => ("pm_sim_approve", "manual"),
            Flow::Decline => ("pm_sim_decline", "automatic"),
            Flow::Timeout => ("pm_sim_timeout", "automatic"),
            Flow::Card => ("pm_card_visa", "automatic"),
        };
        let amount = rng.between(self.mix.amount_min as u64, self.mix.amount_max as u64) as i64;
        let key = format!("{}-{n}", self.run_id);
        let body = json!({"amount": amount, "currency": self.mix.currency, "payment_method": method,
                          "capture_method": capture, "merchant_reference": key});
        // Like a real client: a 504 "still processing" or a 409 "in progress" is retried with
        // the same Idempotency-Key (bounded), and latency runs until the final answer.
        let mut result = self.post("/v1/payments", &key, &body).await;
        for _ in 0..CLIENT_RETRIES_MAX {
            if !matches!(result, Ok((504 | 409, _))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            result = self.post("/v1/payments", &key, &body).await;
        }
        let (status, payment) = match result {
            Ok((201, p)) => (201, p),
            Ok((code, answer)) => {
                self.recorder
                    .record(Kind::Payment, scheduled, scheduled.elapsed(), true);
                self.recorder.failure(format!("http_{code}"));
                self.recorder.problem(code, &answer.problem);
                return;
            }
            Err(e) => {
                self.recorder
                    .record(Kind::Payment, scheduled, scheduled.elapsed(), true);
                self.recorder.failure(e);
                return;
            }
        };
        debug_assert_eq!(status, 201);
        let took = scheduled.elapsed();
        self.recorder.record(Kind::Payment, scheduled, took, false);
        let Answer {
            id,
            psp,
            status: mut last,
            ..
        } = payment;
        self.recorder.psp_latency(&psp, took);
        // Whether `last` is certain to be the payment's status once the client's requests end.
        let mut sure = true;
        let follow = match (flow, last.as_str()) {
            (Flow::Manual, "authorized") => Some((format!("/v1/payments/{id}/capture"), json!({}))),
            (Flow::Refund, "captured") => Some((
                format!("/v1/payments/{id}/refunds"),
                json!({"amount": (amount / 2).max(1)}),
            )),
            _ => None,
        };
        if let Some((path, body)) = follow {
            let started = Instant::now();
            let result = self.post(&path, &format!("{key}-2"), &body).await;
            let ok = matches!(&result, Ok((200 | 201, _)));
            self.recorder
                .record(Kind::Follow, started, started.elapsed(), !ok);
            match result {
                Ok((200, p)) => last = p.status,
                // The refund object: the payment is now (partially) refunded if it succeeded.
                Ok((201, r)) if r.status == "succeeded" => {
                    let full = r.amount == Some(amount);
                    last = if full {
                        "refunded"
                    } else {
                        "partially_refunded"
                    }
                    .to_string();
                }
                // What the second request did is not known (it failed, or is still pending).
                _ => sure = false,
            }
        }
        if self.mix.lookup_pct > 0 && rng.between(0, 99) < u64::from(self.mix.lookup_pct) {
            let expected = (sure && settled(&last)).then_some(last.as_str());
            if let Some(read) = self.look_up(&id, expected).await {
                last = read;
            }
        }
        self.recorder.payment(&id, &psp, &last);
    }

    /// Reads a payment back, as a checkout page confirming its result does, and returns the
    /// status it shows. Where the client's last answer was settled (`expected`), the read must
    /// show the same: an answer is only given once what it says is durable.
    async fn look_up(&self, id: &str, expected: Option<&str>) -> Option<String> {
        let started = Instant::now();
        let read = read_payment(&self.client, &self.bearer, id).await;
        let stale = match (&read, expected) {
            (Some(a), Some(seen)) => a.status != seen,
            _ => false,
        };
        if stale {
            self.recorder.stale_reads.fetch_add(1, Ordering::Relaxed);
        }
        self.recorder.record(
            Kind::Read,
            started,
            started.elapsed(),
            read.is_none() || stale,
        );
        read.map(|a| a.status)
    }
}

fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs the scenario's load against `target`.
pub async fn run(
    scenario: &Scenario,
    target: &Target,
    options: &Options,
) -> anyhow::Result<Measurements> {
    let client = Arc::new(
        Client::new(&target.base_url, Duration::from_secs(120)).map_err(anyhow::Error::msg)?,
    );
    let bearer = format!("Bearer {}", target.api_key);
    let recorder = Arc::new(Recorder::new());
    let load = &scenario.load;
    let ramp = scaled(load.ramp_ms, options.scale);
    let total = scenario.duration(options.scale);
    let end = recorder.started + total;
    let think = (
        scaled(load.think_min_ms, options.scale),
        scaled(load.think_max_ms, options.scale),
    );
    let worker = Arc::new(Worker {
        client: client.clone(),
        bearer: bearer.clone(),
        recorder: recorder.clone(),
        mix: scenario.mix.clone(),
        run_id: format!(
            "sim-{}-{}",
            scenario.name,
            recorder.started.elapsed().as_nanos()
                ^ options.seed as u128
                ^ std::process::id() as u128
        ),
        trivial: options.trivial,
    });
    let progress = options
        .progress
        .then(|| spawn_progress(recorder.clone(), total));
    let peak_rss = Arc::new(Mutex::new(rss_mb()));
    let sampler = {
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = rss_mb();
                let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                *p = match (*p, now) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
        })
    };

    match load.mode {
        LoadMode::Closed => {
            let vus = u64::from(load.vus);
            let tasks: Vec<_> = (0..vus)
                .map(|vu| {
                    let worker = worker.clone();
                    let seed = options.seed;
                    let mut stop = options.stop.clone();
                    tokio::spawn(async move {
                        let mut rng = Rng::new(seed, vu);
                        let start = worker.recorder.started + ramp.mul_f64(vu as f64 / vus as f64);
                        let mut n = 0u64;
                        let mut wait = start.saturating_duration_since(Instant::now());
                        // Waits (the ramp, think time) end early when the load is stopped.
                        while until_stopped(&mut stop, wait).await && Instant::now() < end {
                            worker.iterate(&mut rng, vu << 32 | n, Instant::now()).await;
                            n += 1;
                            wait = Duration::from_micros(
                                rng.between(think.0.as_micros() as u64, think.1.as_micros() as u64),
                            );
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.context("virtual user")?;
            }
        }
        LoadMode::Open => {
            let peak = f64::from(load.rate_per_s);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(load.in_flight_max as usize));
            let mut tasks = tokio::task::JoinSet::new();
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let now = Instant::now();
                if now >= end || *options.stop.borrow() {
                    break;
                }
                let t = now.duration_since(recorder.started).as_secs_f64();
                let r = ramp.as_secs_f64();
                // Arrivals due by now: the integral of a rate ramping linearly to `peak`.
                let due = if t < r {
                    peak * t * t / (2.0 * r)
                } else {
                    peak * (r / 2.0 + (t - r))
                };
                while (sent as f64) < due {
                    let n = sent;
                    sent += 1;
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        recorder.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let worker = worker.clone();
                    let seed = options.seed;
                    tasks.spawn(async move {
                        let mut rng = Rng::new(seed, n);
                        worker.iterate(&mut rng, n, now).await;
                        drop(permit);
                    });
                }
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let duration = recorder
        .started
        .elapsed()
        .min(total.max(Duration::from_millis(1)));
    let interrupted = *options.stop.borrow() && recorder.started.elapsed() < total;
    if let Some(p) = progress {
        p.abort();
    }
    let unresolved = settle(
        &client,
        &bearer,
        &recorder,
        options.settle_max,
        options.progress,
    )
    .await;
    sampler.abort();
    let peak_rss_mb = *peak_rss.lock().unwrap_or_else(|e| e.into_inner());
    Ok(finish(
        &recorder,
        duration,
        unresolved,
        peak_rss_mb,
        interrupted,
    ))
}

/// Sleeps for `wait` unless the load is stopped first; whether it may go on.
async fn until_stopped(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    if wait.is_zero() {
        return true;
    }
    let slept = tokio::select! {
        () = tokio::time::sleep(wait) => true,
        // Err: nobody can stop this load any more (the sender is gone); sleep on.
        Ok(_) = stop.wait_for(|stopped| *stopped) => false,
    };
    slept && !*stop.borrow()
}

/// `GET /v1/payments/{id}`: the payment, if it could be read.
async fn read_payment(client: &Client, bearer: &str, id: &str) -> Option<Answer> {
    let path = format!("/v1/payments/{id}");
    let reply = client
        .send(
            Method::GET,
            &path,
            &[(header::AUTHORIZATION, bearer)],
            Bytes::new(),
        )
        .await
        .ok()
        .filter(|r| r.status == StatusCode::OK)?;
    let p = serde_json::from_slice::<Answer>(&reply.body).ok()?;
    (!p.status.is_empty() && !p.psp.is_empty()).then_some(p)
}

/// Polls payments that were still in flight at the end until they settle (or time runs out);
/// says so on the terminal (`tell`) if there are any.
async fn settle(
    client: &Client,
    bearer: &str,
    recorder: &Recorder,
    settle_max: Duration,
    tell: bool,
) -> u64 {
    let deadline = Instant::now() + settle_max;
    let mut told = !tell;
    loop {
        let open: Vec<String> = {
            let inner = recorder.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.open.keys().cloned().collect()
        };
        if open.is_empty() || Instant::now() >= deadline {
            return open.len() as u64;
        }
        if !told {
            eprintln!(
                "\nwaiting for {} payments still in flight to settle (at most {} s)",
                open.len(),
                settle_max.as_secs()
            );
            told = true;
        }
        for id in open {
            if let Some(p) = read_payment(client, bearer, &id).await {
                recorder.payment(&id, &p.psp, &p.status);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn finish(
    recorder: &Recorder,
    duration: Duration,
    unresolved: u64,
    peak_rss_mb: Option<f64>,
    interrupted: bool,
) -> Measurements {
    let mut inner = recorder.inner.lock().unwrap_or_else(|e| e.into_inner());
    let mut by_psp = std::mem::take(&mut inner.settled);
    for (psp, status) in inner.open.values() {
        tally(&mut by_psp, psp, status);
    }
    let mut outcomes: BTreeMap<String, u64> = inner.failures.clone();
    for (status, n) in by_psp.values().flatten() {
        *outcomes.entry(status.clone()).or_default() += n;
    }
    let series = inner
        .per_second
        .iter_mut()
        .map(|slot| {
            finalize(slot);
            slot.0.clone()
        })
        .collect();
    Measurements {
        duration,
        requests: recorder.requests.load(Ordering::Relaxed),
        payments: recorder.payments.load(Ordering::Relaxed),
        latency_us: inner.latency_us.take().unwrap_or_else(histogram),
        latency_all_us: inner.latency_all_us.take().unwrap_or_else(histogram),
        outcomes,
        problems: std::mem::take(&mut inner.problems),
        by_psp,
        by_psp_latency_us: std::mem::take(&mut inner.by_psp_latency),
        series,
        dropped_arrivals: recorder.dropped.load(Ordering::Relaxed),
        reads: recorder.reads.load(Ordering::Relaxed),
        stale_reads: recorder.stale_reads.load(Ordering::Relaxed),
        unresolved_after_settle: unresolved,
        peak_rss_mb,
        interrupted,
    }
}

/// Live progress on stderr: elapsed, requests/s, success rate, p99. Drawn only on a terminal.
fn spawn_progress(recorder: Arc<Recorder>, total: Duration) -> tokio::task::JoinHandle<()> {
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    tokio::spawn(async move {
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let requests = recorder.requests.load(Ordering::Relaxed);
            let errors = recorder.errors.load(Ordering::Relaxed);
            let rps = (requests - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), requests);
            let ok = if requests == 0 {
                100.0
            } else {
                100.0 * (requests - errors) as f64 / requests as f64
            };
            bar.set_position(recorder.started.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{rps:>8.0} req/s  ok {ok:6.2}%  p99 {:.1} ms",
                recorder.p99_ms()
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_drawn_in_the_configured_shares() {
        let mix = MixSpec {
            manual_capture_pct: 30,
            refund_pct: 20,
            decline_pct: 10,
            ..MixSpec::default()
        };
        let mut rng = Rng::new(1, 2);
        let mut counts = [0u32; 6];
        for _ in 0..10_000 {
            counts[pick(&mix, &mut rng) as usize] += 1;
        }
        let [approve, manual, refund, decline, timeout, card] = counts;
        assert!(
            approve.abs_diff(4_000) < 250 && manual.abs_diff(3_000) < 250,
            "{counts:?}"
        );
        assert!(
            refund.abs_diff(2_000) < 200 && decline.abs_diff(1_000) < 150,
            "{counts:?}"
        );
        assert_eq!((timeout, card), (0, 0));
    }

    #[test]
    fn payments_are_counted_once_by_their_last_status_and_only_open_ones_are_kept() {
        let recorder = Recorder::new();
        recorder.payment("pay_1", "psp_a", "captured");
        recorder.payment("pay_2", "psp_a", "unknown");
        recorder.payment("pay_3", "psp_b", "declined");
        recorder.payment("pay_4", "psp_b", "capturing");
        {
            let inner = recorder.inner.lock().unwrap();
            let mut open: Vec<&String> = inner.open.keys().collect();
            open.sort();
            assert_eq!(
                open,
                ["pay_2", "pay_4"],
                "settled payments are only counted"
            );
        }
        // `settle` finds pay_2 approved and captured; pay_4 never settles.
        recorder.payment("pay_2", "psp_a", "captured");
        let m = finish(&recorder, Duration::from_secs(1), 1, None, false);
        let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
        };
        assert_eq!(
            m.outcomes,
            counts(&[("captured", 2), ("capturing", 1), ("declined", 1)])
        );
        assert_eq!(m.by_psp["psp_a"], counts(&[("captured", 2)]));
        assert_eq!(
            m.by_psp["psp_b"],
            counts(&[("capturing", 1), ("declined", 1)])
        );
    }

    #[test]
    fn refusals_are_counted_by_the_problem_they_name_or_by_status_without_one() {
        let recorder = Recorder::new();
        recorder.problem(503, "urn:rialto:problem:no_psp_available");
        recorder.problem(503, "urn:rialto:problem:no_psp_available");
        recorder.problem(503, "urn:rialto:problem:overloaded");
        recorder.problem(502, "");
        recorder.problem(500, "about:blank");
        let m = finish(&recorder, Duration::from_secs(1), 0, None, false);
        let names: Vec<(&str, u64)> = m.problems.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(
            names,
            [
                ("http_500", 1),
                ("http_502", 1),
                ("no_psp_available", 2),
                ("overloaded", 1)
            ]
        );
    }

    #[test]
    fn each_seconds_histogram_is_reduced_to_percentiles_once_it_is_old() {
        let recorder = Recorder::new();
        let at = |s: u64| recorder.started + Duration::from_secs(s);
        for ms in 1..=100 {
            recorder.record(Kind::Payment, at(0), Duration::from_millis(ms), false);
        }
        recorder.record(Kind::Payment, at(1), Duration::from_millis(7), false);
        let kept = SECOND_HISTOGRAM_KEPT_S as u64;
        recorder.record(Kind::Payment, at(kept), Duration::from_millis(5), false);
        {
            let inner = recorder.inner.lock().unwrap();
            let (second, histogram) = &inner.per_second[0];
            assert!(histogram.is_none(), "second 0 is {kept} s old");
            assert!((second.p50_ms - 50.0).abs() < 1.0, "{second:?}");
            assert!((second.p99_ms - 99.0).abs() < 1.5, "{second:?}");
            assert!(inner.per_second[1].1.is_some(), "second 1 is younger");
        }
        // A late answer for a reduced second still counts in it.
        recorder.record(Kind::Payment, at(0), Duration::from_secs(400), true);
        let m = finish(&recorder, Duration::from_secs(kept), 0, None, false);
        assert_eq!(m.series.len(), kept as usize + 1);
        assert_eq!((m.series[0].payments, m.series[0].errors), (101, 1));
        assert!((m.series[0].p99_ms - 99.0).abs() < 1.5);
        assert!((m.series[1].p50_ms - 7.0).abs() < 0.1, "{:?}", m.series[1]);
        assert!((m.series[kept as usize].p50_ms - 5.0).abs() < 0.1);
        assert_eq!(m.payments, 103);
    }

    #[test]
    fn success_excludes_errors_but_not_declines() {
        for s in ["captured", "declined", "refunded", "pong"] {
            assert!(is_success(s), "{s}");
        }
        for s in [
            "failed",
            "unknown",
            "http_500",
            "http_409",
            "transport_error",
        ] {
            assert!(!is_success(s), "{s}");
        }
    }
}
