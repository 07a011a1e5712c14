//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: continued from
//! incoming HTTP requests (the merchant API, `rialto psp-sim`) and sent on outgoing PSP calls.
//! Uses whatever propagator the binary installed; without one, both are no-ops.

use reqwest::header::HeaderMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` continue the trace a `traceparent` header names (the caller's span becomes
/// its parent). Without the header, or with a malformed one, the span starts its own trace.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent); // A malformed header leaves a root span.
}

/// `traceparent` (and `tracestate`) for the current span, to send on an outgoing call.
pub fn outgoing() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(
            &context,
            &mut opentelemetry_http::HeaderInjector(&mut headers),
        );
    });
    headers
}
