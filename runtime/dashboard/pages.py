"""The dashboard's pages and actions: each reads what it shows in one or two pipelined Redis calls
(through ``sources``) and renders a template; each action checks its input, acts, and redirects
back with a message (post/redirect/get)."""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from stepq.errors import InvalidEventError

from .. import keys
from ..actions import ActionRefused, Actions
from ..codec import unpack
from ..ingest import Ingest
from ..run_status import RunStatus
from ..timeline import get_timeline
from . import auth, sources, views, waterfall

#: Runs per page of the list.
PAGE_SIZE = 50
#: Why a run was cancelled, as its error says.
REASON = "cancelled from the dashboard"
ACTIVE = {s.value for s in RunStatus if not s.terminal}
ENDED = {s.value for s in RunStatus if s.terminal and s is not RunStatus.SKIPPED}


def _now() -> int:
    return int(time.time() * 1000)


def _redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


def _ingest(request: Request) -> Ingest:
    ingest: Ingest = request.app.state.ingest
    return ingest


def _actions(request: Request) -> Actions:
    return Actions(_ingest(request))


def _templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def flash(request: Request, message: str, kind: str = "ok") -> None:
    """A message shown once, on the next page."""
    auth.session_of(request)["flash"] = [kind, message[:500]]


def render(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
    """``template`` with ``context`` and what every page shows (CSRF token, message, mode...)."""
    # A live refresh (htmx) leaves the message for the page it belongs to.
    shown = None if request.headers.get("hx-request") else auth.session_of(request).pop("flash", None)
    base = {
        "request": request,
        "root": request.scope.get("root_path", ""),
        "csrf": auth.csrf_token(request),
        "dev": request.app.state.auth.dev,
        "flash": shown if isinstance(shown, list) and len(shown) == 2 else None,
        "now_ms": _now(),
        "v": views,
        "statuses": [s.value for s in RunStatus],
        "static": request.app.state.static_versions,
    }
    return _templates(request).TemplateResponse(request, template, {**base, **context}, status_code=status)


def _back(request: Request, path: str) -> Response:
    return RedirectResponse(request.scope.get("root_path", "") + path, 303)


def _filter_from(request: Request) -> tuple[sources.RunFilter, str | None]:
    """The list's filter from the query string, and the error naming a bad field (then no filter)."""
    q = request.query_params
    try:
        return (
            sources.RunFilter.parse(
                function=q.get("function"),
                status=q.get("status"),
                since=q.get("since"),
                until=q.get("until"),
                event=q.get("event"),
            ),
            None,
        )
    except ValueError as exc:
        return sources.RunFilter(), str(exc)


async def _runs_context(request: Request) -> dict[str, Any]:
    flt, problem = _filter_from(request)
    q = request.query_params
    search = (q.get("q") or "").strip()
    cursor = q.get("cursor") or None
    runs: list[sources.RunView] = []
    next_cursor, truncated = None, False
    if search:
        runs = await sources.search_runs(_redis(request), search)
    elif problem is None:
        try:
            page = await sources.find_runs(_redis(request), flt, limit=PAGE_SIZE, cursor=cursor)
        except ValueError as exc:  # a cursor that is not one of ours
            problem = str(exc)
        else:
            runs, next_cursor, truncated = page.runs, page.cursor, page.truncated
    form = {k: q.get(k, "") for k in ("function", "status", "since", "until", "event", "q")}
    # The live table keeps the page's query; the first page only is refreshed (a later page stays put).
    return {
        "runs": runs,
        "cursor": next_cursor,
        "truncated": truncated,
        "form": form,
        "problem": problem,
        "search": search,
        "query": str(request.query_params),
        "live": not cursor,
        "next_params": {**{k: v for k, v in form.items() if v}, "cursor": next_cursor or ""},
    }


@auth.page
async def runs_page(request: Request) -> Response:
    context = await _runs_context(request)
    return render(request, "runs.html", context, 400 if context["problem"] else 200)


@auth.page
async def runs_table(request: Request) -> Response:
    """The runs table alone, for the page's live refresh."""
    return render(request, "_runs_table.html", await _runs_context(request))


@auth.page
async def run_page(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    redis = _redis(request)
    timeline = await get_timeline(redis, run_id)
    if timeline is None:
        return render(request, "missing.html", {"what": f"run {run_id}"}, 404)
    run = timeline.run
    blob = await redis.get(keys.events(run_id))
    events = unpack(blob) if blob else []
    now = _now()
    rows = waterfall.rows(timeline, now)
    scale = views.lay_out(rows, now, run.created_ms)
    context = {
        "run": run,
        "events": events,
        "rows": rows,
        "scale": scale,
        "failed_at": timeline.failed_at,
        "truncated": timeline.truncated,
        "active": run.status in ACTIVE,
        "ended": run.status in ENDED,
        "from_step": next((step.name for step in run.steps if step.key == run.from_step), run.from_step),
        "output": views.memo_view({"data": run.output}) if run.status == RunStatus.COMPLETED else None,
    }
    template = "_run_body.html" if request.headers.get("hx-request") else "run.html"
    return render(request, template, context)


@auth.action
async def cancel_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    done = await _actions(request).cancel(run_id, REASON)
    if done.cancelled:
        flash(request, f"run {run_id} cancelled")
    else:
        why = "it had ended already" if done.outcome == "done" else f"{done.outcome}"
        flash(request, f"run {run_id} was not cancelled: {why}", "error")
    return _back(request, f"/runs/{run_id}")


@auth.action
async def replay_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    try:
        started = await _actions(request).replay(run_id)
    except ActionRefused as refused:
        flash(request, f"not replayed: {refused}", "error")
        return _back(request, f"/runs/{run_id}")
    flash(request, f"run {started.run_id} started: a replay of {run_id}")
    return _back(request, f"/runs/{started.run_id}")


@auth.action
async def resume_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    step = (await auth.form_of(request)).get("step", "")
    try:
        started = await _actions(request).resume(run_id, step)
    except ActionRefused as refused:
        flash(request, f"not resumed: {refused}", "error")
        return _back(request, f"/runs/{run_id}")
    kept = f"keeping {started.kept_steps} step(s) before it"
    flash(request, f"run {started.run_id} started from step {started.from_step_name} of {run_id}, {kept}")
    return _back(request, f"/runs/{started.run_id}")


@auth.page
async def functions_page(request: Request) -> Response:
    functions = await sources.function_summaries(_redis(request))
    return render(request, "functions.html", {"functions": functions})


async def _events_context(request: Request) -> dict[str, Any]:
    q = request.query_params
    name = (q.get("name") or "").strip() or None
    context: dict[str, Any] = {"events": [], "cursor": None, "name": name or "", "form": {"name": "", "data": "{}"}}
    try:
        page = await sources.recent_events(_redis(request), limit=PAGE_SIZE, cursor=q.get("cursor") or None, name=name)
    except ValueError as exc:  # a cursor that is not one of ours
        context["problem"] = str(exc)
        return context
    return context | {"events": page.events, "cursor": page.cursor}


@auth.page
async def events_page(request: Request) -> Response:
    return render(request, "events.html", await _events_context(request))


def _test_event_data(text: str) -> dict[str, Any]:
    """The test event's data from the form; InvalidEventError naming the field."""
    try:
        data = json.loads(text or "{}")
    except ValueError as exc:
        raise InvalidEventError(f"data: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidEventError(f"data: expected a JSON object, got {type(data).__name__}")
    return data


@auth.action
async def send_event(request: Request) -> Response:
    form = await auth.form_of(request)
    name, data_text = form.get("name", ""), form.get("data", "")
    try:
        data = _test_event_data(data_text)
        sent = await _actions(request).send_test_event(name.strip(), data)
    except InvalidEventError as exc:
        context = await _events_context(request)
        context |= {"send_error": str(exc), "form": {"name": name, "data": data_text}}
        return render(request, "events.html", context, 400)
    started = ", ".join(f"{run_id} ({slug})" for run_id, slug in sent.runs.items()) or "no run"
    flash(request, f"event {sent.event_id} sent: started {started}")
    return _back(request, "/events")


def _bulk_filter(values: Any) -> tuple[sources.RunFilter | None, str | None]:
    try:
        flt = sources.RunFilter.parse(
            function=values.get("function"),
            status=values.get("status"),
            since=values.get("since"),
            until=values.get("until"),
            event=values.get("event"),
        )
    except ValueError as exc:
        return None, str(exc)
    if flt.empty:
        return None, "choose at least one filter: a bulk action on every run is too easy to do by mistake"
    return flt, None


@auth.page
async def bulk_page(request: Request) -> Response:
    q = request.query_params
    form = {k: q.get(k, "") for k in ("function", "status", "since", "until", "event", "action")}
    context: dict[str, Any] = {"form": form, "preview": None, "problem": None}
    if q.get("preview"):
        flt, problem = _bulk_filter(q)
        context["problem"] = problem
        if flt is not None:
            preview = await _actions(request).preview(flt)
            context["preview"] = {"count": preview.count, "capped": preview.capped, "params": flt.to_params()}
    return render(request, "bulk.html", context, 400 if context["problem"] else 200)


@auth.action
async def bulk_apply(request: Request) -> Response:
    form = await auth.form_of(request)
    flt, problem = _bulk_filter(form)
    action = form.get("action", "")
    if flt is None or action not in ("cancel", "replay"):
        flash(request, problem or "action: choose cancel or replay", "error")
        return _back(request, "/bulk")
    actions = _actions(request)
    try:
        if action == "cancel":
            result = await actions.bulk_cancel(flt, reason=f"{REASON} (bulk)")
        else:
            result = await actions.bulk_replay(flt)
    except ActionRefused as refused:
        flash(request, f"bulk {action}: {refused}", "error")
        return _back(request, "/bulk")
    done = "cancelled" if action == "cancel" else "replayed"
    message = f"bulk {action}: {result.done} of {result.matched} run(s) {done}"
    if result.skipped:
        run_id, why = next(iter(result.skipped.items()))
        message += f"; {len(result.skipped)} skipped (run {run_id}: {why})"
    if result.capped:
        message += "; more runs matched than one request acts on: run it again for the rest"
    flash(request, message)
    return _back(request, "/bulk")
