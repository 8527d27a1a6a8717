"""The Lua scripts, loaded once per connection pool and called by name."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_NAMES = (
    "create_run",
    "load_run",
    "commit_step",
    "schedule",
    "finish_run",
    "route_events",
    "register_app",
    "revive_timer",
    "fan_out",
    "resolve_step",
    "cancel_run",
    "enqueue_job",
    "claim_jobs",
    "nudge_run",
    "dead_letter",
    "renew_leases",
    "finish_job",
)


@cache
def source(name: str) -> str:
    """A script's text, with the shared prelude in front."""
    lua = resources.files("stepq.runtime") / "lua"
    return (lua / "prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Scripts:
    """The scripts registered on one client (redis-py caches their SHA1s and uses EVALSHA)."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {name: redis.register_script(source(name)) for name in _NAMES}

    async def call(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        return await self._scripts[name](keys=keys, args=args, client=client)
