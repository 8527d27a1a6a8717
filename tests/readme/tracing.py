"""README's tracing example: a worker that traces (its spans written to a file, as
``STEPQ_TRACING_FILE`` does), and the block's ``place_order`` sending inside a span of the test's
own tracer: the run's spans are in the sender's trace, and the app's span nests in its step's."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

if TYPE_CHECKING:
    from tests.readme.harness import ReadmeBlock

__all__: list[str] = []


async def check(block: ReadmeBlock) -> None:
    spans_file = block.directory / "spans.jsonl"
    block.setenv("STEPQ_TRACING_FILE", str(spans_file))
    block.start_worker()
    module = block.load()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    setattr(module, "tracer", provider.get_tracer("shop"))  # noqa: B010 (not the global provider: other tests share this process)

    [event_id] = await module.place_order("o-1")
    view = await block.run_of("fulfil", event_id)
    assert (view.status, view.output) == ("completed", "shipped"), view
    [checkout] = exporter.get_finished_spans()
    trace_id = f"0x{checkout.context.trace_id:032x}"

    spans: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not any(s["name"] == "run shop-fulfil" for s in spans):
        assert time.monotonic() < deadline, spans
        await asyncio.sleep(0.05)
        spans = [json.loads(line) for line in spans_file.read_text().splitlines()] if spans_file.exists() else []
    assert {s["context"]["trace_id"] for s in spans} == {trace_id}
    by_name = {s["name"]: s for s in spans}
    assert by_name["run shop-fulfil"]["parent_id"] == f"0x{checkout.context.span_id:016x}"
    assert by_name["warehouse.reserve"]["parent_id"] == by_name["step reserve"]["context"]["span_id"]
    provider.shutdown()
