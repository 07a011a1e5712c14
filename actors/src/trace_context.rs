//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: continued from
//! incoming HTTP requests (the merchant API, `rialto psp-sim`) and sent on outgoing PSP calls.
//!
//! Two ways to give spans their ids, chosen by the binary at start-up:
//! - with an OTLP endpoint, the OpenTelemetry layer: spans are recorded and exported, and
//!   their ids are OpenTelemetry's;
//! - without one, [`IdsLayer`]: each span only gets W3C ids ([`TraceIds`]) — the trace
//!   inherited from its parent or from the caller's `traceparent`, and the caller's sampling
//!   decision — which is all the log lines and outgoing calls need. Nothing is recorded, so
//!   nothing costs what recording costs (attributes collected for each span, then dropped).
//!
//! The functions here read whichever the span has. Without a propagator installed, the
//! OpenTelemetry path is a no-op.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use reqwest::header::HeaderMap;
use tracing::Subscriber;
use tracing::span::{Attributes, Id};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// A span's W3C ids when spans are not recorded (see [`IdsLayer`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's sampling decision, passed on to the PSPs we call.
    pub sampled: bool,
    /// The caller's vendor state, passed on as it came.
    pub trace_state: TraceState,
}

impl TraceIds {
    fn root() -> TraceIds {
        TraceIds {
            trace_id: TraceId::from(nonzero_u128()),
            span_id: new_span_id(),
            sampled: false,
            trace_state: TraceState::NONE,
        }
    }

    fn child(&self) -> TraceIds {
        TraceIds {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// The ids a call made inside this span sends, as an OpenTelemetry context.
    fn as_context(&self) -> opentelemetry::Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let span = SpanContext::new(
            self.trace_id,
            self.span_id,
            flags,
            false,
            self.trace_state.clone(),
        );
        opentelemetry::Context::new().with_remote_span_context(span)
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

/// Gives every new span its [`TraceIds`]: its parent's trace (a root span starts one), a span
/// id of its own.
pub struct IdsLayer;

impl<S> Layer<S> for IdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let ids = span
            .parent()
            .and_then(|parent| parent.extensions().get::<TraceIds>().map(TraceIds::child))
            .unwrap_or_else(TraceIds::root);
        span.extensions_mut().insert(ids);
    }
}

/// Runs `f` on the [`TraceIds`] of `span`; false when it has none (spans are recorded by
/// OpenTelemetry instead, or the span is disabled).
fn with_ids(span: &tracing::Span, f: impl FnOnce(&mut TraceIds)) -> bool {
    span.with_subscriber(|(id, dispatch)| {
        let Some(registry) = dispatch.downcast_ref::<Registry>() else {
            return false;
        };
        let Some(span) = registry.span(id) else {
            return false;
        };
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<TraceIds>() {
            Some(ids) => {
                f(ids);
                true
            }
            None => false,
        }
    })
    .unwrap_or(false)
}

/// Makes `span` continue the trace a `traceparent` header names (the caller's span becomes
/// its parent). Without the header, or with a malformed one, the span starts its own trace.
/// Call it before any child of `span` is created.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let caller = parent.span().span_context().clone();
    if !caller.is_valid() {
        return; // A malformed header leaves a root span.
    }
    let has_ids = with_ids(span, |ids| {
        ids.trace_id = caller.trace_id();
        ids.sampled = caller.is_sampled();
        ids.trace_state = caller.trace_state().clone();
    });
    if !has_ids {
        let _ = span.set_parent(parent);
    }
}

/// `traceparent` (and `tracestate`) for the current span, to send on an outgoing call.
pub fn outgoing() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let current = tracing::Span::current();
    let mut context = None;
    with_ids(&current, |ids| context = Some(ids.as_context()));
    let context = context.unwrap_or_else(|| current.context());
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(
            &context,
            &mut opentelemetry_http::HeaderInjector(&mut headers),
        );
    });
    headers
}
