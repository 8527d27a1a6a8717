"""The ``stepq`` command: run workers, send events, inspect runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import uvicorn

from stepq.client import default_redis_url
from stepq.errors import StepqError
from stepq.event import Event
from stepq.redis_config import RedisConfigError, configured_redis_url
from stepq.runtime.actions import BULK_CAP, ActionRefused, Actions
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.connection import open_redis
from stepq.runtime.deadletter import DeadLetter, list_dead_letters
from stepq.runtime.gather import Gathered
from stepq.runtime.queries import RunFilter, get_run, list_runs
from stepq.runtime.registry import FunctionOwnedError
from stepq.runtime.run_status import RunStatus
from stepq.runtime.transport import RedisTransport
from stepq.secret_env import signing_key_from_env

from . import tracing
from .app import AppLoadError, load_client
from .embedded import EmbeddedRedis
from .endpoint import WorkerEndpoint, endpoint_address
from .health import Health
from .logs import configure
from .options import WorkerOptions
from .worker import build_http_worker, build_worker

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        # Logs go to stderr for every command: stdout carries only the command's answer (JSON).
        configure()
    except ValueError as exc:
        print(f"stepq {args.command}: STEPQ_LOG_LEVEL: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (CliError, RedisConfigError) as exc:
        print(f"stepq {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


class CliError(Exception):
    """A user error, printed without a traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepq", description="Durable functions on Redis.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def redis_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--redis-url",
            help="Redis to use: redis://, rediss:// (TLS) or redis+sentinel:// (default: STEPQ_REDIS_URL, "
            "else the file STEPQ_REDIS_URL_FILE names, else redis://localhost:6379/0)",
        )

    def endpoint_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--health-port",
            type=int,
            help="serve /livez, /readyz and /metrics on this port (default: STEPQ_HEALTH_PORT, else none)",
        )
        p.add_argument(
            "--health-host",
            help="address of that endpoint (default: STEPQ_HEALTH_HOST, else 127.0.0.1; it has no auth)",
        )
        p.add_argument(
            "--metrics-port",
            type=int,
            help="the same endpoint, named for Prometheus (default: STEPQ_METRICS_PORT); one port serves both",
        )
        p.add_argument("--metrics-host", help="the same as --health-host (default: STEPQ_METRICS_HOST)")

    p = sub.add_parser("worker", help="run a worker process for an app's functions")
    p.add_argument("app", metavar="MODULE:CLIENT", nargs="?", help="the app's stepq.Inngest, e.g. myapp.jobs:client")
    p.add_argument(
        "--http", action="store_true", help="invoke the functions apps registered over HTTP (POST /fn/register)"
    )
    redis_option(p)
    p.add_argument("--concurrency", type=int, help="steps run at once by this process (default 100)")
    p.add_argument(
        "--idle-check",
        type=float,
        help="seconds an idle worker waits for work before it checks the queue anyway (default 4)",
    )
    endpoint_options(p)
    p.set_defaults(handler=_worker)

    p = sub.add_parser("dev", help="a worker and the event API, with a private Redis when none is configured")
    p.add_argument("app", metavar="MODULE:CLIENT", nargs="?", help="omit to run functions served over HTTP")
    redis_option(p)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--api-port", type=int, default=8288, help="port of the event API (default 8288)")
    endpoint_options(p)
    p.set_defaults(handler=_dev)

    p = sub.add_parser("api", help="serve the HTTP event API (POST /e/{event_key}) on Redis")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8288, help="port to listen on (default 8288, as Inngest's)")
    redis_option(p)
    p.add_argument("--dev", action="store_true", help="accept any event key (also STEPQ_DEV=1)")
    p.set_defaults(handler=_api)

    p = sub.add_parser("send", help="send an event")
    p.add_argument("name", help="the event name, e.g. shop/import.requested")
    p.add_argument("--data", default="{}", help="the event data as a JSON object")
    p.add_argument("--id", default="", help="an idempotency key: functions start once per id within 24 h")
    redis_option(p)
    p.set_defaults(handler=_send)

    p = sub.add_parser("runs", help="list recent runs")
    p.add_argument("--function", help="only runs of this function id")
    # choices as text, so that a wrong one is answered with the list of the right ones
    p.add_argument("--status", choices=[s.value for s in RunStatus], help="only runs in this status")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print JSON lines")
    redis_option(p)
    p.set_defaults(handler=_runs)

    p = sub.add_parser(
        "cancel", help="cancel a run (it takes no further steps), or every run a filter selects (--function ...)"
    )
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the run to cancel; omit to cancel by filter")
    p.add_argument("--reason", default="cancelled from the command line")
    _bulk_options(p, "cancel")
    redis_option(p)
    p.set_defaults(handler=_cancel)

    p = sub.add_parser(
        "replay",
        help="run a failed, cancelled or completed run again as a new run (from the start, or from a step), "
        "or every run a filter selects",
    )
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the run to replay; omit to replay by filter")
    p.add_argument(
        "--from-step",
        metavar="STEP",
        help="keep the steps committed before STEP (a step's key or name) and run again from it",
    )
    _bulk_options(p, "replay")
    redis_option(p)
    p.set_defaults(handler=_replay)

    p = sub.add_parser("run", help="show one run: status, output or error, and each step")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true", help="print JSON")
    redis_option(p)
    p.set_defaults(handler=_run)

    p = sub.add_parser("dead-letters", help="list queue entries workers moved aside because no worker could run them")
    p.add_argument("--limit", type=int, default=20, help="newest first (default 20; at most 10,000 are kept)")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    redis_option(p)
    p.set_defaults(handler=_dead_letters)
    return parser


def _url(args: argparse.Namespace) -> str:
    return str(args.redis_url or default_redis_url())


def _worker(args: argparse.Namespace) -> int:
    http = bool(getattr(args, "http", False)) or (args.command == "dev" and not args.app)
    if http == bool(args.app):
        raise CliError("give MODULE:CLIENT to run an app's functions, or --http for functions served over HTTP")
    try:
        options = WorkerOptions.from_env(concurrency=args.concurrency, idle_check_s=args.idle_check)
        client = load_client(args.app) if args.app else None
        address = endpoint_address(args.health_port, args.health_host, args.metrics_port, args.metrics_host)
    except (AppLoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    health = Health(options.liveness_timeout_s)

    async def serve() -> None:
        # The heartbeat runs from the start: building the worker waits for Redis, alive meanwhile.
        heartbeat = asyncio.create_task(health.beat(), name="stepq-heartbeat")
        try:
            try:
                if client is not None:
                    worker = await build_worker(client, _url(args), options, health=health)
                else:
                    signing_key = signing_key_from_env()
                    worker = await build_http_worker(_url(args), options, signing_key=signing_key, health=health)
            except ValueError as exc:  # a bad cron expression, a bad stored shard count
                raise CliError(str(exc)) from None
            await worker.serve()
        finally:
            heartbeat.cancel()

    server = None
    if address is not None:
        try:
            server = WorkerEndpoint(address, health).start()
        except OSError as exc:
            raise CliError(f"cannot serve the worker's endpoint on {address.host}:{address.port}: {exc}") from None
        print(f"stepq worker: /livez, /readyz and /metrics at {server.url}", file=sys.stderr)
    try:
        asyncio.run(serve())
    except FunctionOwnedError as exc:
        # Retrying cannot help: the function id is another app's until that app drops it.

        structlog.get_logger("stepq.worker").error(
            "worker.app_conflict", function=exc.slug, owner=exc.owner, app_id=exc.app_id
        )
        raise CliError(f"cannot register app {exc.app_id!r}: {exc}") from None
    finally:
        if server is not None:
            server.stop()
    return 0


def _dev(args: argparse.Namespace) -> int:
    """A worker and the event API (any key accepted), on a private Redis unless one is configured."""

    with contextlib.ExitStack() as stack:
        url = args.redis_url or configured_redis_url()
        if not url:
            url = stack.enter_context(EmbeddedRedis()).url
            print(f"stepq dev: private Redis at {url}", file=sys.stderr)
            print(f"stepq dev: to use it from another shell: export STEPQ_REDIS_URL={url}", file=sys.stderr)
        api = ApiServer(url, port=args.api_port, settings=ApiSettings.from_env(dev=True)).start()
        stack.callback(api.stop)
        print(f"stepq dev: event API at {api.url} (POST /e/<any key>)", file=sys.stderr)
        print(f"stepq dev: dashboard at {api.url}/ui/ (open to this machine only)", file=sys.stderr)
        return _worker(argparse.Namespace(**{**vars(args), "redis_url": url, "idle_check": None}))
    return 0


def _api(args: argparse.Namespace) -> int:
    try:
        tracing.setup_api()
        settings = ApiSettings.from_env(dev=args.dev)
        app = settings.create_app(_url(args))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    mode = "dev mode: any event key is accepted" if settings.dev else f"{len(settings.event_keys)} event key(s)"
    print(f"stepq api: http://{args.host}:{args.port}/e/<event key> ({mode})", file=sys.stderr)
    login = "open to loopback clients" if settings.dev else "log in with STEPQ_DASHBOARD_TOKEN or the signing key"
    print(f"stepq api: dashboard at http://{args.host}:{args.port}/ui/ ({login})", file=sys.stderr)
    scrape = "needs Authorization: Bearer $STEPQ_METRICS_TOKEN" if settings.metrics_token else "open"
    print(f"stepq api: Prometheus metrics at http://{args.host}:{args.port}/metrics ({scrape})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return 0


def _parse_data(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CliError(f"--data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"--data must be a JSON object, got {type(data).__name__}")
    return data


def _send(args: argparse.Namespace) -> int:
    event = Event(name=args.name, data=_parse_data(args.data), id=args.id)
    transport = RedisTransport(_url(args))
    try:
        ids = transport.send_sync([event.validated()])
    except StepqError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"ids": ids}))
    return 0


def _runs(args: argparse.Namespace) -> int:
    async def fetch() -> list[Any]:
        redis = await open_redis(_url(args))
        try:
            status = RunStatus(args.status) if args.status else None
            return await list_runs(redis, function=args.function, status=status, limit=args.limit)
        finally:
            await redis.aclose()

    runs = asyncio.run(fetch())
    if args.json:
        for view in runs:
            print(json.dumps(view.to_dict(), default=str))
        return 0
    print(f"{'RUN':<28} {'FUNCTION':<32} {'STATUS':<10} {'CREATED':<20} {'DURATION':<10} WHY")
    for view in runs:
        print(
            f"{view.run_id:<28} {view.function:<32} {view.status:<10} "
            f"{_time(view.created_ms):<20} {_duration(view.started_ms or view.created_ms, view.ended_ms):<10} "
            f"{_why(view)}".rstrip()
        )
    return 0


def _why(view: Any) -> str:
    """Why flow control skipped, cancelled or held the run ('' when it did none of these)."""
    if view.reason:
        return str(view.reason)
    if view.waiting:
        return str(view.waiting)
    if view.waiting_for:
        return str(view.waiting_for)
    if view.held:
        return f"waited: {_held(view)}"
    return ""


def _held(view: Any) -> str:
    """'throttled until <time> (key ...)' from the run's held fields."""
    held = str(view.held)
    if view.held_until_ms is None:
        return held
    kind, _, rest = held.partition(" ")
    return f"{kind} until {_time(view.held_until_ms)}{' ' + rest if rest else ''}"


def _bulk_options(p: argparse.ArgumentParser, action: str) -> None:
    """The filter of a bulk action, and its confirmation."""
    p.add_argument("--function", help="runs of this function (its id, or its slug <app>-<id>)")
    p.add_argument("--status", help="runs in this status (e.g. failed)")
    p.add_argument("--since", help="runs created since: ISO 8601, or a duration ago ('30m', '1h', '2d')")
    p.add_argument("--until", help="runs created before: ISO 8601, or a duration ago")
    p.add_argument("--event", help="runs started by an event of this name")
    p.add_argument("--cap", type=int, default=BULK_CAP, help=f"at most this many runs (default and limit {BULK_CAP})")
    confirm = p.add_mutually_exclusive_group()
    confirm.add_argument("--dry-run", action="store_true", help=f"only count the runs it would {action}")
    confirm.add_argument("--yes", action="store_true", help=f"{action} them (without it, only the count is shown)")


def _bulk_filter(args: argparse.Namespace) -> RunFilter | None:
    """The filter given, or None when the command names one run (RUN_ID); CliError when both or neither."""
    given = {name: getattr(args, name) for name in ("function", "status", "since", "until", "event")}
    named = {name: value for name, value in given.items() if value}
    if args.run_id:
        if named or args.dry_run or args.yes:
            options = ", ".join(f"--{name}" for name in named) or ("--dry-run" if args.dry_run else "--yes")
            raise CliError(f"give RUN_ID or a filter, not both ({options} with run {args.run_id})")
        return None
    if not named:
        raise CliError("give RUN_ID, or a filter: --function, --status, --since, --until, --event")
    try:
        return RunFilter.parse(**given)
    except ValueError as exc:
        raise CliError(f"--{exc}") from None


def _actions(args: argparse.Namespace, act: Callable[[Actions], Awaitable[Any]]) -> Any:
    """``act`` on the Redis of ``args``; an action that cannot be done is a CliError saying why."""

    async def go() -> Any:
        redis = await open_redis(_url(args))
        try:
            return await act(Actions.on(redis))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except ActionRefused as exc:
        raise CliError(str(exc)) from None


def _bulk(args: argparse.Namespace, flt: RunFilter, action: str, act: Callable[[Actions], Awaitable[Any]]) -> int:
    """A bulk action: its preview unless --yes (exit 2 without --dry-run), else what it did."""
    if not args.yes:
        preview = _actions(args, lambda actions: actions.preview(flt, cap=args.cap))
        print(json.dumps({"action": action, "dry_run": True, "filter": flt.to_params(), **preview.to_dict()}))
        if args.dry_run:
            return 0
        message = f"{preview.count} run(s) match; nothing done: add --yes to {action} them"
        print(f"stepq {action}: {message}", file=sys.stderr)
        return EXIT_USAGE
    result = _actions(args, act)
    print(json.dumps({"filter": flt.to_params(), **result.to_dict()}))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    flt = _bulk_filter(args)
    if flt is not None:
        return _bulk(args, flt, "cancel", lambda a: a.bulk_cancel(flt, reason=args.reason, cap=args.cap))
    done = _actions(args, lambda actions: actions.cancel(args.run_id, args.reason))
    if not done.cancelled:
        raise CliError(f"run {args.run_id!r} was not cancelled: it has ended already, or does not exist")
    print(json.dumps({"cancelled": args.run_id}))
    return 0


def _replay(args: argparse.Namespace) -> int:
    flt = _bulk_filter(args)
    if flt is not None:
        if args.from_step:
            raise CliError("--from-step resumes one run: give RUN_ID")
        return _bulk(args, flt, "replay", lambda a: a.bulk_replay(flt, cap=args.cap))
    if args.from_step:
        started = _actions(args, lambda actions: actions.resume(args.run_id, args.from_step))
    else:
        started = _actions(args, lambda actions: actions.replay(args.run_id))
    print(json.dumps(started.to_dict()))
    return 0


def _run(args: argparse.Namespace) -> int:
    async def fetch() -> Any:
        redis = await open_redis(_url(args))
        try:
            return await get_run(redis, args.run_id)
        finally:
            await redis.aclose()

    view = asyncio.run(fetch())
    if view is None:
        raise CliError(f"no run {args.run_id!r} (unknown, or expired after the retention period)")
    if args.json:
        print(json.dumps(view.to_dict(), default=str, indent=2))
        return 0
    print(f"run       {view.run_id}")
    print(f"function  {view.function}")
    print(f"status    {view.status}")
    print(f"created   {_time(view.created_ms)}")
    if view.ended_ms:
        print(f"ended     {_time(view.ended_ms)} ({_duration(view.started_ms or view.created_ms, view.ended_ms)})")
    if view.wake_at_ms:
        print(f"wakes at  {_time(view.wake_at_ms)}")
    if view.waiting:
        print(f"waiting   {view.waiting}")
    elif view.gathered:
        print(f"gathered  {Gathered(**view.gathered).summary()}")
    if view.replay_of:
        print(f"replays   {view.replay_of}")
    if view.forked_from:
        print(f"resumes   {view.forked_from} from step {view.from_step}")
    if view.replays:
        print(f"rerun as  {', '.join(view.replays)}")
    if view.reason:
        print(f"{'skipped' if view.status == 'skipped' else 'reason':<9} {view.reason}")
    if view.held:
        print(f"waited    {_held(view)}")
    if view.waiting_for:
        print(f"held      {view.waiting_for}")
    elif view.waited:
        print(f"waited    {view.waited} ({view.held_ms} ms in all)")
    if view.status == "completed":
        print(f"output    {json.dumps(view.output)}")
    if view.error is not None:
        error = view.error
        print(f"error     {error.get('name')}: {error.get('message')}" if isinstance(error, dict) else error)
    if view.retries is not None:
        print(f"retries   {view.retries} (each step's, and the function's own)")
    if view.function_retries:
        # retries of the function body itself: its code failed outside any step
        times = f"{view.function_retries} time{'s' if view.function_retries != 1 else ''}"
        print(f"retried   {times} after errors outside steps (last: {view.function_error})")
    duplicates = view.duplicate_executions
    extra = f", {duplicates} duplicate execution{'s' if duplicates != 1 else ''}" if duplicates else ""
    print(f"steps     {len([s for s in view.steps if s.done])} done{extra}")
    for i, step in enumerate(view.steps, 1):
        state = "done" if step.done else "pending"
        if not step.done and step.error and step.finished_ms is not None:
            state = "failed"  # its code raised a NonRetriableError: the run failed at once, at this step
        took = f"{step.duration_ms} ms" if step.duration_ms is not None else "-"
        runs = f"executions={step.executions:<3} " if step.executions else ""
        line = f"  {i:>3}. {step.name:<30} {state:<8} attempts={step.attempts:<3} {runs}{took}"
        if step.error:
            line += f"  last error: {step.error}"
        print(line)
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")

    async def fetch() -> list[DeadLetter]:
        redis = await open_redis(_url(args))
        try:
            return await list_dead_letters(redis, limit=args.limit)
        finally:
            await redis.aclose()

    letters = asyncio.run(fetch())
    if args.json:
        for letter in letters:
            print(json.dumps(letter.to_dict()))
        return 0
    print(f"{'WHEN':<20} {'QUEUE':<32} {'ENTRY':<40} REASON")
    for letter in letters:
        if letter.member is not None:
            entry = f"{letter.member_text} score={letter.score}"
        else:
            entry = f"whole key ({letter.key_type}) -> {letter.moved_to}"
        print(f"{_time(letter.at_ms):<20} {letter.queue:<32} {entry:<40} {letter.reason}")
    return 0


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms or not end_ms:
        return "-"
    seconds = (end_ms - start_ms) / 1000
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
