#!/usr/bin/env python3
"""Sends spans to Tally's POST /v1/traces through the official OpenTelemetry Python SDK and its
OTLP/HTTP protobuf exporter, as an instrumented application would (tests/otlp.rs runs it in the
environment of scripts/python-env).

Reads a JSON spec on stdin:
  {"endpoint": "http://127.0.0.1:PORT/v1/traces", "key": "tly_...",
   "resource": {"service.name": "...", ...},
   "exports": [[{"name": "...", "parent": null | index in this export, "start_ns": N, "end_ns": N,
                 "attributes": {...}, "error": null | "message"}, ...], ...]}
Each inner list is one export: its spans go through a BatchSpanProcessor and are flushed
together. Prints one JSON line: {"results": ["SUCCESS" | "FAILURE", ...]} per export.
"""
import json
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode


class RecordingExporter(OTLPSpanExporter):
    """The SDK's exporter, remembering the result of each export call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.results = []

    def export(self, spans):
        result = super().export(spans)
        self.results.append(result.name)
        return result


def main():
    spec = json.load(sys.stdin)
    exporter = RecordingExporter(endpoint=spec["endpoint"], headers={"Authorization": f"Bearer {spec['key']}"}, timeout=10)
    provider = TracerProvider(resource=Resource.create(spec.get("resource", {})))
    # One export per flush: a long delay and a batch large enough for any export of the spec.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000, max_export_batch_size=2048, max_queue_size=8192))
    tracer = provider.get_tracer("tally-tests.otlp-send")
    for export in spec["exports"]:
        started = []
        for span_spec in export:
            parent = span_spec.get("parent")
            context = trace.set_span_in_context(started[parent]) if parent is not None else None
            span = tracer.start_span(span_spec["name"], context=context, start_time=span_spec["start_ns"], attributes=span_spec.get("attributes", {}))
            if span_spec.get("error"):
                span.set_status(Status(StatusCode.ERROR, span_spec["error"]))
            started.append(span)
        # Children end before their parents, as in a real call tree.
        for span, span_spec in reversed(list(zip(started, export))):
            span.end(end_time=span_spec["end_ns"])
        if not provider.force_flush(timeout_millis=30_000):
            print(json.dumps({"error": "force_flush timed out"}))
            sys.exit(1)
    provider.shutdown()
    print(json.dumps({"results": exporter.results}))


if __name__ == "__main__":
    main()
