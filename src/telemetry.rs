//! Logs and traces for the binary (R5.2, R3.7).
//!
//! - Logs go to stderr as JSON lines (or human-readable text for local use). Every JSON line
//!   carries `trace_id`, `span_id` and `correlation_id` (null outside any request or payment),
//!   and every line, in either format, passes through [`redact`] on its way out, so a PAN, a
//!   labelled CVV or a bearer credential never reaches the log whatever field it hid in.
//! - Spans (API request → payment actor → PSP call → store commit → ledger post) always get
//!   W3C trace and span ids, so log lines of one payment share a `trace_id`. With an OTLP
//!   endpoint they are recorded by OpenTelemetry and exported by OTLP/gRPC; without one,
//!   [`IdsLayer`] only gives them ids (recording spans to drop them cost ≈ 10% of the CPU of
//!   a payment).

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_opentelemetry::get_otel_context;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use rialto_actors::trace_context::{IdsLayer, TraceIds};
use rialto_engine::redact::redact;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, with trace, span and correlation ids.
    Json,
    /// Human-readable lines for a terminal.
    Text,
}

/// The installed tracer, if spans are exported; shut it down to flush spans still in the
/// export queue.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber and propagator. Call inside the Tokio runtime (the OTLP
    /// exporter's channel lives on it).
    pub fn init(
        service: &'static str,
        format: LogFormat,
        otlp_endpoint: Option<&str>,
    ) -> anyhow::Result<Telemetry> {
        let provider = tracer_provider(service, otlp_endpoint)?;
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,ractor=warn,h2=warn,tonic=warn,hyper=warn".into());
        let dispatch = dispatch(filter, provider.as_ref(), format, io::stderr);
        tracing::dispatcher::set_global_default(dispatch)?;
        Ok(Telemetry { provider })
    }

    /// Flushes and stops the exporter (blocking; call from a blocking thread).
    pub fn shutdown(self) {
        if let Some(Err(e)) = self.provider.map(|p| p.shutdown()) {
            eprintln!("rialto: flushing traces: {e}");
        }
    }
}

/// Spans exported in batches by OTLP/gRPC to `otlp_endpoint`; without one, none.
fn tracer_provider(
    service: &'static str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = otlp_endpoint else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let resource = Resource::builder().with_service_name(service).build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// The whole subscriber: spans to OpenTelemetry (with a provider) or only given ids
/// (without), correlation ids kept, log lines redacted, in `format`, written to `out`.
fn dispatch<M>(
    filter: impl Layer<Registry> + Send + Sync,
    provider: Option<&SdkTracerProvider>,
    format: LogFormat,
    out: M,
) -> Dispatch
where
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let json = JsonLines {
        dispatch: Arc::default(),
        out: Redacting(out),
    };
    let handle = json.dispatch.clone();
    let logs = match format {
        // Its own layer rather than a fmt formatter: fmt renders every new span's fields
        // into a string kept with the span, which JSON lines never read.
        LogFormat::Json => json.boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(json.out)
            .boxed(),
    };
    let dispatch = Dispatch::new(
        tracing_subscriber::registry()
            .with(filter)
            .with(provider.map(|provider| {
                // Per span: no thread or source-location attributes, no busy/idle timing,
                // and no OpenTelemetry context pushed on every poll of an instrumented
                // future; ids are built on demand (export, log lines, `traceparent`).
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("rialto"))
                    .with_location(false)
                    .with_threads(false)
                    .with_tracked_inactivity(false)
                    .with_context_activation(false)
            }))
            .with(provider.is_none().then_some(IdsLayer))
            .with(provider.is_none().then_some(WithoutTraceOnlySpans))
            .with(CorrelationLayer)
            .with(logs),
    );
    // Inside a subscriber callback `dispatcher::get_default` answers "none", so the
    // formatter keeps its own (weak) handle to read spans' OpenTelemetry ids.
    let _ = handle.set(dispatch.downgrade());
    dispatch
}

/// Spans only a trace backend reads: the steps inside a payment. Without an exporter they
/// are not created at all (each would cost as much as the work it describes, in a commit of
/// a few microseconds), and a log line inside one belongs to the payment actor's span.
const TRACE_ONLY_SPANS: [&str; 3] = ["store.commit", "ledger.post", "psp.call"];

/// Turns the [`TRACE_ONLY_SPANS`] off, once per call site.
struct WithoutTraceOnlySpans;

impl WithoutTraceOnlySpans {
    fn skips(meta: &Metadata<'_>) -> bool {
        meta.is_span() && TRACE_ONLY_SPANS.contains(&meta.name())
    }
}

impl<S: Subscriber> Layer<S> for WithoutTraceOnlySpans {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::skips(meta) {
            Interest::never()
        } else {
            Interest::always()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        !Self::skips(meta)
    }
}

/// A writer whose every line passes through [`redact`]: the fmt layer hands over each
/// formatted line in one write.
struct Redacting<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(self.0.make_writer())
    }
}

struct RedactingWriter<W>(W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A request's correlation id, kept on its span for the log lines inside it.
struct CorrelationId(String);

/// Stores the `correlation_id` field of a new span in the span's extensions.
struct CorrelationLayer;

impl<S> Layer<S> for CorrelationLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        struct Find(Option<String>);
        impl Visit for Find {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "correlation_id" {
                    self.0 = Some(value.to_string());
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                if field.name() == "correlation_id" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        if !attrs.fields().iter().any(|f| f.name() == "correlation_id") {
            return;
        }
        let mut find = Find(None);
        attrs.record(&mut find);
        if let (Some(value), Some(span)) = (find.0, ctx.span(id)) {
            span.extensions_mut().insert(CorrelationId(value));
        }
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, `message`, `trace_id`,
/// `span_id`, `correlation_id`, `span` (the innermost span's name) and `fields`.
struct JsonLines<M> {
    /// Inside a subscriber callback `dispatcher::get_default` answers "none", so the layer
    /// keeps its own (weak) handle to read spans' OpenTelemetry ids.
    dispatch: Arc<OnceLock<WeakDispatch>>,
    out: Redacting<M>,
}

impl<S, M> Layer<S> for JsonLines<M>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    M: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = fields.remove("message").unwrap_or(Value::Null);
        let (mut trace_id, mut span_id, mut correlation_id, mut span_name) =
            (Value::Null, Value::Null, Value::Null, Value::Null);
        if let Some(scope) = ctx.event_scope(event) {
            let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
            for span in scope {
                if span_name.is_null() {
                    span_name = Value::from(span.name());
                    let ids = span.extensions().get::<TraceIds>().cloned();
                    if let Some(ids) = ids {
                        trace_id = Value::from(ids.trace_id.to_string());
                        span_id = Value::from(ids.span_id.to_string());
                    } else if let Some(cx) = dispatch
                        // The innermost span's OpenTelemetry ids (its extensions must not be
                        // held here).
                        .as_ref()
                        .and_then(|d| get_otel_context(&span.id(), d))
                    {
                        let otel = cx.span();
                        let ids = otel.span_context();
                        if ids.is_valid() {
                            trace_id = Value::from(ids.trace_id().to_string());
                            span_id = Value::from(ids.span_id().to_string());
                        }
                    }
                }
                if correlation_id.is_null()
                    && let Some(CorrelationId(id)) = span.extensions().get::<CorrelationId>()
                {
                    correlation_id = Value::from(id.as_str());
                }
            }
        }
        let meta = event.metadata();
        let line = serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            "level": meta.level().as_str(),
            "target": meta.target(),
            "message": message,
            "trace_id": trace_id,
            "span_id": span_id,
            "correlation_id": correlation_id,
            "span": span_name,
            "fields": fields,
        });
        let mut text = line.to_string();
        text.push('\n');
        // Nowhere to report a failed log write.
        let _ = self.out.make_writer().write_all(text.as_bytes());
    }
}

/// An event's fields as JSON values.
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_string(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Log lines captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Both ways spans get ids: given ids only (no exporter), and recorded by OpenTelemetry
    /// (a provider without an exporter stands for one with).
    fn providers() -> [Option<SdkTracerProvider>; 2] {
        [None, Some(SdkTracerProvider::builder().build())]
    }

    /// Runs `f` under the production layers with logs captured; returns the lines.
    fn capture(
        format: LogFormat,
        provider: Option<&SdkTracerProvider>,
        f: impl FnOnce(),
    ) -> Vec<String> {
        let out = Captured::default();
        let filter = EnvFilter::new("info");
        tracing::dispatcher::with_default(&dispatch(filter, provider, format, out.clone()), f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn json_lines_carry_trace_span_and_correlation_ids_inside_a_request() {
        for provider in providers() {
            let lines = capture(LogFormat::Json, provider.as_ref(), || {
                tracing::info!("outside");
                let request = tracing::info_span!("http.request", correlation_id = "corr-42");
                let _request = request.enter();
                tracing::info!("in the request");
                let actor = tracing::info_span!("payment.actor");
                let _actor = actor.enter();
                tracing::warn!(payment_id = "pay_1", attempts = 3u64, "inside");
            });
            let outside: Value = serde_json::from_str(&lines[0]).unwrap();
            assert_eq!(outside["message"], "outside");
            assert!(outside["trace_id"].is_null() && outside["correlation_id"].is_null());
            let request: Value = serde_json::from_str(&lines[1]).unwrap();
            let inside: Value = serde_json::from_str(&lines[2]).unwrap();
            assert_eq!(inside["level"], "WARN");
            assert_eq!(inside["correlation_id"], "corr-42");
            assert_eq!(inside["span"], "payment.actor");
            assert_eq!(inside["fields"]["payment_id"], "pay_1");
            assert_eq!(inside["fields"]["attempts"], 3);
            let trace_id = inside["trace_id"].as_str().unwrap();
            let span_id = inside["span_id"].as_str().unwrap();
            assert_eq!(trace_id.len(), 32);
            assert_eq!(span_id.len(), 16);
            assert_ne!(trace_id, "0".repeat(32));
            // One trace, a span each.
            assert_eq!(request["trace_id"], trace_id, "{provider:?}");
            assert_ne!(request["span_id"], span_id, "{provider:?}");
        }
    }

    /// Without an exporter the steps inside a payment get no spans of their own; with one,
    /// they do.
    #[test]
    fn trace_only_spans_exist_only_when_traces_are_exported() {
        for provider in providers() {
            let exported = provider.is_some();
            let lines = capture(LogFormat::Json, provider.as_ref(), || {
                let actor = tracing::info_span!("payment.actor");
                let _actor = actor.enter();
                for name in TRACE_ONLY_SPANS {
                    let span = match name {
                        "store.commit" => tracing::info_span!("store.commit"),
                        "ledger.post" => tracing::info_span!("ledger.post"),
                        _ => tracing::info_span!("psp.call"),
                    };
                    assert_eq!(span.is_disabled(), !exported, "{name}");
                    let _span = span.enter();
                    tracing::info!("inside");
                }
            });
            for (line, name) in lines.iter().zip(TRACE_ONLY_SPANS) {
                let line: Value = serde_json::from_str(line).unwrap();
                let innermost = if exported { name } else { "payment.actor" };
                assert_eq!(line["span"], innermost);
            }
        }
    }

    #[test]
    fn separate_requests_are_separate_traces() {
        let lines = capture(LogFormat::Json, None, || {
            for _ in 0..2 {
                let request = tracing::info_span!("http.request");
                let _request = request.enter();
                tracing::info!("in a request");
            }
        });
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert!(first["trace_id"].is_string());
        assert_ne!(first["trace_id"], second["trace_id"]);
    }
    #[test]
    fn no_pan_cvv_or_bearer_token_reaches_a_line_in_either_format() {
        for format in [LogFormat::Json, LogFormat::Text] {
            let lines = capture(format, None, || {
                tracing::info!(
                    card = "4242 4242 4242 4242",
                    header = "Bearer sk_live_0123456789abcdef",
                    "merchant wrote cvv: 737 and 5555555555554444"
                );
            });
            let text = lines.join("\n");
            assert!(text.contains("merchant wrote"), "{text}");
            // The CVV is looked for where it was written: any three digits can turn up in a
            // line's timestamp.
            for secret in [
                "4242 4242 4242 4242",
                "5555555555554444",
                "cvv: 737",
                "sk_live_0123456789abcdef",
            ] {
                assert!(!text.contains(secret), "{format:?} leaked {secret}: {text}");
            }
            assert!(
                text.contains("4444") && text.contains("cvv: ***") && text.contains("[REDACTED]"),
                "{text}"
            );
        }
    }

    /// A caller's trace flows through, exported or not: the request span continues it and
    /// a PSP call inside carries the same trace id, sampled as the caller decided, and the
    /// log lines inside show that trace id.
    #[test]
    fn the_callers_trace_context_is_continued_logged_and_sent_on() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        for provider in providers() {
            for (flags, sampled) in [("01", true), ("00", false)] {
                let mut incoming = reqwest::header::HeaderMap::new();
                let parent = format!("00-{trace_id}-00f067aa0ba902b7-{flags}");
                incoming.insert("traceparent", parent.parse().unwrap());
                let mut sent = None;
                let lines = capture(LogFormat::Json, provider.as_ref(), || {
                    let request = tracing::info_span!("http.request");
                    rialto_actors::trace_context::continue_trace(&request, &incoming);
                    let _request = request.enter();
                    let call = tracing::info_span!("psp.call");
                    let _call = call.enter();
                    tracing::info!("calling");
                    sent = Some(rialto_actors::trace_context::outgoing());
                });
                let sent = sent.unwrap()["traceparent"].to_str().unwrap().to_string();
                let parts: Vec<&str> = sent.split('-').collect();
                assert_eq!(parts[1], trace_id, "{sent}");
                assert_ne!(
                    parts[2], "00f067aa0ba902b7",
                    "our own span is the PSP's parent"
                );
                assert_eq!(parts[3] == "01", sampled, "{sent}");
                let line: Value = serde_json::from_str(&lines[0]).unwrap();
                assert_eq!(line["trace_id"], trace_id);
                assert_eq!(line["span_id"], parts[2], "the call's span is the line's");
            }
        }
    }

    /// Without a caller's trace (or with a malformed `traceparent`) a request starts its
    /// own, unsampled, and sends that on.
    #[test]
    fn a_request_without_a_valid_traceparent_starts_its_own_trace() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let dispatch = dispatch(EnvFilter::new("info"), None, LogFormat::Json, io::sink);
        let mut malformed = reqwest::header::HeaderMap::new();
        malformed.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        for incoming in [reqwest::header::HeaderMap::new(), malformed] {
            let sent = tracing::dispatcher::with_default(&dispatch, || {
                let request = tracing::info_span!("http.request");
                rialto_actors::trace_context::continue_trace(&request, &incoming);
                let _request = request.enter();
                rialto_actors::trace_context::outgoing()
            });
            let sent = sent["traceparent"].to_str().unwrap().to_string();
            let parts: Vec<&str> = sent.split('-').collect();
            assert_eq!(parts.len(), 4, "{sent}");
            assert_ne!(parts[1], "0".repeat(32), "{sent}");
            assert_ne!(parts[2], "00f067aa0ba902b7", "{sent}");
            assert_eq!(parts[3], "00", "{sent}");
        }
    }
}
