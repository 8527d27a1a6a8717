"""The function registry on Redis: which functions exist, which events start them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from stepq.errors import StepqError
from stepq.flow_spec import FlowControl, parse_flow_control

from . import keys, waits
from .codec import pack, unpack
from .connection import RedisClient
from .scripts import Scripts


class FunctionOwnedError(StepqError):
    """An app tried to register a function id that another app registered; nothing was changed.

    A function id belongs to the app that registered it first, until that app's own sync drops it:
    otherwise any app could take over another's function (its events, with their data, would go to
    the newcomer) or delete it with an empty sync.
    """

    def __init__(self, slug: str, owner: str, app_id: str) -> None:
        super().__init__(f"function {slug!r} belongs to app {owner!r}")
        self.slug = slug
        self.owner = owner
        self.app_id = app_id


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionRecord:
    """A registered function as the router sees it."""

    slug: str
    app_id: str
    config: dict[str, Any]
    #: Its flow control, read from ``config["flow"]`` (validated when it was registered).
    flow: FlowControl = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        cancel = self.config.get("cancel")
        spec = parse_flow_control(
            self.config.get("flow") or {},
            prefix=f"function {self.slug!r}: ",
            has_cancel=isinstance(cancel, list) and bool(cancel),
        )
        object.__setattr__(self, "flow", spec)

    @property
    def event_names(self) -> list[str]:
        return [t["event"] for t in self.config.get("triggers", []) if "event" in t]


#: Event names whose routes a sender keeps (the cache starts afresh beyond).
ROUTE_CACHE_MAX = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """The functions each event name triggers, as of registry ``version`` (None: none written yet)."""

    version: bytes | None
    functions: dict[str, list[FunctionRecord]]


class Registry:
    def __init__(self, redis: RedisClient, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis)
        self._cache: dict[str, list[FunctionRecord]] = {}
        self._version: bytes | None = None

    async def register_app(self, app_id: str, configs: Sequence[dict[str, Any]]) -> int:
        """Make ``configs`` the app's whole function set (its functions no longer defined are dropped);
        returns how many it has.

        Raises ``FunctionOwnedError`` (and changes nothing) when one of the ids belongs to another app.
        """
        count, _ = await self._register(app_id, configs, "")
        return count

    async def sync_app(self, app_id: str, configs: Sequence[dict[str, Any]], checksum: str) -> bool:
        """``register_app`` for a sync that carries a checksum of its payload; returns whether the
        checksum differs from the app's previous sync's (Inngest's ``modified``). The checksum is
        stored with the functions, in the same script: a refused sync changes neither."""
        _, modified = await self._register(app_id, configs, checksum)
        return modified

    async def _register(self, app_id: str, configs: Sequence[dict[str, Any]], checksum: str) -> tuple[int, bool]:
        args: list[Any] = [app_id, checksum, len(configs)]
        for config in configs:
            events = sorted({t["event"] for t in config.get("triggers", []) if "event" in t})
            args += [config["id"], pack(config), len(events), *events]
        app_keys = [keys.FUNCTIONS, keys.app_functions(app_id), keys.app_checksum(app_id)]
        # before the functions exist: their runs' cancellation rules are waits on these names
        await waits.note_waited(self.redis, (name for config in configs for name in waits.cancel_events(config)))
        reply = await self.scripts.call("register_app", app_keys, args)
        if reply[0] == b"owned":
            raise FunctionOwnedError(reply[1].decode(errors="replace"), reply[2].decode(errors="replace"), app_id)
        return int(reply[1]), bool(reply[2])

    async def route(self, event_names: Iterable[str]) -> dict[str, list[FunctionRecord]]:
        """For each event name, the functions it triggers."""
        return (await self._route(sorted(set(event_names))))[1]

    async def cached_route(self, event_names: Iterable[str]) -> Route:
        """``route``, from this registry's cache when it knows every name: the routes come with the
        registry version they were read under, and a write made under them checks that version
        (``keys.FUNCTIONS_VERSION``); when it changed, ``forget`` and route again."""
        names = sorted(set(event_names))
        if self._version is not None and all(name in self._cache for name in names):
            return Route(self._version, {name: self._cache[name] for name in names})
        version, routes = await self._route(names)
        if version != self._version or len(self._cache) > ROUTE_CACHE_MAX:
            self._cache.clear()
            self._version = version
        if version is not None:
            self._cache.update(routes)
        return Route(version, routes)

    def forget(self) -> None:
        """Drop the cached routes (a write found the registry changed since they were read)."""
        self._cache.clear()
        self._version = None

    async def _route(self, names: list[str]) -> tuple[bytes | None, dict[str, list[FunctionRecord]]]:
        version, flats = await self.scripts.call(
            "route_events", [keys.FUNCTIONS, *(keys.trigger(n) for n in names)], []
        )
        out: dict[str, list[FunctionRecord]] = {}
        for name, flat in zip(names, flats, strict=True):
            records = []
            for i in range(0, len(flat), 2):
                config = unpack(flat[i + 1])
                records.append(FunctionRecord(flat[i].decode(), config["app_id"], config))
            out[name] = records
        return version, out

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
