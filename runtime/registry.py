"""The function registry on Redis: which functions exist, which events start them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis

from runtime import keys
from runtime.codec import pack, unpack
from runtime.scripts import Scripts


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionRecord:
    """A registered function as the router sees it."""

    slug: str
    app_id: str
    config: dict[str, Any]

    @property
    def event_names(self) -> list[str]:
        return [t["event"] for t in self.config.get("triggers", []) if "event" in t]


class Registry:
    def __init__(self, redis: Redis, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis)

    async def register_app(self, app_id: str, configs: Sequence[dict[str, Any]]) -> int:
        """Make ``configs`` the app's whole function set (functions no longer defined are dropped)."""
        args: list[Any] = [keys.PREFIX, app_id, len(configs)]
        for config in configs:
            events = sorted({t["event"] for t in config.get("triggers", []) if "event" in t})
            args += [config["id"], pack(config), len(events), *events]
        return int(await self.scripts.call("register_app", [], args))

    async def route(self, event_names: Iterable[str]) -> dict[str, list[FunctionRecord]]:
        """For each event name, the functions it triggers."""
        names = sorted(set(event_names))
        reply = await self.scripts.call("route_events", [keys.trigger(n) for n in names], [keys.FUNCTIONS])
        out: dict[str, list[FunctionRecord]] = {}
        for name, flat in zip(names, reply, strict=True):
            records = []
            for i in range(0, len(flat), 2):
                config = unpack(flat[i + 1])
                records.append(FunctionRecord(flat[i].decode(), config["app_id"], config))
            out[name] = records
        return out

    async def get(self, slug: str) -> FunctionRecord | None:
        """One registered function by its app-qualified id."""
        blob = await self.redis.hget(keys.FUNCTIONS, slug)  # type: ignore[misc]
        if blob is None:
            return None
        config = unpack(blob)
        return FunctionRecord(slug, config["app_id"], config)

    async def functions(self) -> list[FunctionRecord]:
        """Every registered function."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.FUNCTIONS)  # type: ignore[misc]
        records = []
        for slug, blob in raw.items():
            config = unpack(blob)
            records.append(FunctionRecord(slug.decode(), config["app_id"], config))
        return sorted(records, key=lambda r: r.slug)
