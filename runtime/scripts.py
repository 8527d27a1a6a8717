"""The Lua scripts, loaded once per connection pool and called by name."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from time import perf_counter
from typing import Any

from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from . import history, jobs, keys, metrics, run_status, shards
from .connection import RedisClient
from .script_args import BY_SCRIPT

SCRIPT_NAMES = (
    "create_run",
    "load_run",
    "apply_plan",
    "route_events",
    "register_app",
    "revive_timer",
    "resolve_step",
    "cancel_run",
    "enqueue_job",
    "claim_jobs",
    "dead_letter",
    "renew_leases",
    "finish_job",
    "release_mover",
    "record_history",
    "fork_run",
    "outbox_ack",
    "outbox_receive_run",
)


def script_text(name: str) -> str:
    """The text of ``runtime/lua/<name>.lua`` alone."""
    return (resources.files("stepq.runtime") / "lua" / f"{name}.lua").read_text()


@cache
def prelude() -> str:
    """What every script starts with: the key names (generated from ``stepq.runtime.keys``), then
    the run history's helpers (runtime/history.py), the run indexes' of run_index.lua, the shared
    helpers of prelude.lua and the concurrency limits' of slots.lua."""
    return (
        shards.lua_prelude()
        + keys.lua_prelude()
        + run_status.lua_prelude()
        + jobs.lua_prelude()
        + history.lua_prelude()
        + script_text("run_index")
        + script_text("prelude")
        + script_text("slots")
    )


#: Helpers only some scripts use (runtime/lua/<library>.lua), put after the prelude of those only.
LIBRARIES: dict[str, tuple[str, ...]] = {"create_run": ("flow_starts", "gather")}


def libraries(name: str) -> str:
    """The helper libraries script ``name`` uses (see ``LIBRARIES``), as one text ('' for none)."""
    return "".join("\n" + script_text(library) for library in LIBRARIES.get(name, ()))


def body(name: str) -> str:
    """A script without the prelude: its named ARGV (``runtime/script_args.py``), if it has them,
    then its text."""
    named = BY_SCRIPT.get(name)
    return (named.lua_header() if named else "") + script_text(name)


#: Scripts that run another script's body as a local function of their own KEYS and ARGV (as the
#: ingest runs create_run's), so that both make exactly the same writes; its libraries come along.
CALLS: dict[str, tuple[str, ...]] = {"fork_run": ("create_run",), "outbox_receive_run": ("create_run",)}


def called(name: str) -> str:
    """The scripts ``name`` calls (see ``CALLS``), each as ``local function <script>(KEYS, ARGV)``."""
    return "".join(
        f"{libraries(callee)}\nlocal function {callee}(KEYS, ARGV)\n{body(callee)}\nend\n"
        for callee in CALLS.get(name, ())
    )


@cache
def source(name: str) -> str:
    """A script's text, with the shared prelude (and its libraries, and the scripts it calls) in front."""
    return prelude() + libraries(name) + called(name) + "\n" + body(name)


#: The text of every script registered in this process, by SHA1 (``execute`` loads them).
_TEXTS: dict[str, str] = {}


def register(redis: RedisClient, text: str) -> AsyncScript:
    """``redis.register_script(text)`` for either client: redis-py's hints name only ``Redis``, but a
    ``RedisCluster`` runs its scripts as well (EVALSHA goes to the node of the first key; on
    NOSCRIPT the script is loaded on every master)."""
    script = AsyncScript(redis, text)  # type: ignore[arg-type]
    _TEXTS[script.sha] = text
    return script


async def pipelined(script: AsyncScript, pipe: Any, keys: Sequence[str | bytes], args: Sequence[Any]) -> None:
    """Queue a call of ``script`` on ``pipe``, a pipeline of either client (redis-py refuses
    ``evalsha`` on a cluster pipeline: the command goes as it is, routed by its first key). Run
    the pipeline with ``execute``."""
    if isinstance(pipe, ClusterPipeline):
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    else:
        await script(keys=keys, args=args, client=pipe)


async def execute(pipe: Any, *, raise_on_error: bool = True) -> list[Any]:
    """``await pipe.execute(raise_on_error=...)`` for a pipeline that may call scripts, on either client.

    redis-py loads a plain pipeline's scripts before sending it, but not a cluster pipeline's: a
    master that does not have a script (a new master, a replica just promoted: Redis does not
    replicate its script cache) answers NOSCRIPT, and the script did not run. Here each such call
    is sent again after the script is loaded on every master."""
    if not isinstance(pipe, ClusterPipeline):
        replies: list[Any] = await pipe.execute(raise_on_error=raise_on_error)
        return replies
    client, sent = pipe._client, [command.args for command in pipe._command_stack]  # (redis-py's own)
    replies = await pipe.execute(raise_on_error=False)
    for i, (args, reply) in enumerate(zip(sent, replies, strict=True)):
        text = _TEXTS.get(args[1]) if isinstance(reply, NoScriptError) and args[0] == "EVALSHA" else None
        if text is None:
            continue
        try:
            await client.script_load(text)  # on every master
            replies[i] = await client.execute_command(*args)
        except (RedisError, RedisClusterException) as exc:
            replies[i] = exc
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies


class Scripts:
    """The scripts registered on one client (redis-py caches their SHA1s and uses EVALSHA)."""

    def __init__(self, redis: RedisClient) -> None:
        self._scripts: dict[str, AsyncScript] = {name: register(redis, source(name)) for name in SCRIPT_NAMES}

    async def call(self, name: str, keys: Sequence[str | bytes], args: Sequence[Any], client: Any = None) -> Any:
        """Call script ``name``; ``client``: a pipeline to queue the call on instead (run it with
        ``execute``)."""
        if isinstance(client, ClusterPipeline):
            await pipelined(self._scripts[name], client, keys, args)
            return client
        if not metrics.enabled():
            return await self._scripts[name](keys=keys, args=args, client=client)
        # the round trip as this process sees it (stepq_redis_roundtrip_seconds): no extra command
        started = perf_counter()
        reply = await self._scripts[name](keys=keys, args=args, client=client)
        metrics.script_called(name, perf_counter() - started)
        return reply
