"""What the dashboard reads, in one place: runs (runtime/queries.py), functions
(runtime/function_summaries.py) and events (runtime/event_queries.py). The pages import from here
only, so that the read model can change underneath without touching them."""

from __future__ import annotations

from ..event_queries import EventOutcome, EventPage, EventView, get_event, recent_events
from ..function_summaries import FunctionSummary, function_summaries
from ..queries import RunFilter, RunPage, RunView, StepView, count_runs, find_runs, get_run, search_runs

__all__ = [
    "EventOutcome",
    "EventPage",
    "EventView",
    "FunctionSummary",
    "RunFilter",
    "RunPage",
    "RunView",
    "StepView",
    "count_runs",
    "find_runs",
    "function_summaries",
    "get_event",
    "get_run",
    "recent_events",
    "search_runs",
]
