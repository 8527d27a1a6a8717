"""Fuzzing the event and register endpoints with generated input (Hypothesis).

The API runs in-process under uvicorn on a loopback port (``ApiServer``), on the real test Redis.
Bodies are random JSON (deep, wide, lone surrogates, huge numbers, wrong types), raw bytes, and
valid events and register payloads with one part replaced, removed or added. For every body:

- the answer is never a 5xx;
- a 4xx stored nothing: every key of the database and its value are as before;
- a 2xx stored what was sent: each event as sent, each function with the URL it gave.

Examples are derandomized (the same on every run, as CI needs); Hypothesis prints a failing body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis as sync_redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stepq.runtime import keys
from stepq.runtime.api import ApiServer, ApiSettings
from stepq.runtime.codec import unpack
from tests.helpers import REDIS_URL

EVENT = "fuzz/event"
APP_URL = "http://127.0.0.1:9/api/inngest"
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
EDGE_INTS = [0, -1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**40]

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

text = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(SURROGATES)), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(text, children, max_size=4),
    ),
    max_leaves=24,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# -- fixtures (module-scoped: Hypothesis runs many examples per test) -------------------------------------


@pytest.fixture(scope="module")
def db() -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def api(db: sync_redis.Redis) -> Iterator[str]:
    with ApiServer(REDIS_URL, settings=ApiSettings(dev=True)) as server:
        yield server.url


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


#: Keys that expire within this long are left out of snapshots: the recent-events list a new wait
#: looks back in lives 10 s, so on a slow machine it can expire between two snapshots of a request
#: that wrote nothing. It is only ever written beside an event's own keys, which snapshots keep.
SHORT_LIVED_MS = 60_000


def snapshot(db: sync_redis.Redis) -> dict[bytes, Any]:
    keys = list(db.scan_iter(count=1000))
    with db.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key)
            pipe.dump(key)
        replies = pipe.execute()
    return {
        key: dumped
        for key, ttl, dumped in zip(keys, replies[::2], replies[1::2], strict=True)
        if not 0 <= ttl < SHORT_LIVED_MS
    }


def base_function(slug: str = "fuzz-f") -> dict[str, Any]:
    return {
        "id": slug,
        "name": "f",
        "triggers": [{"event": EVENT, "expression": "event.data.n != 13"}],
        "steps": {
            "step": {
                "id": "step",
                "name": "step",
                "runtime": {"type": "http", "url": APP_URL},
                "retries": {"attempts": 2},
            }
        },
        "cancel": [{"event": "fuzz/cancel", "if": "async.data.id == event.data.id", "timeout": "1h"}],
        "timeouts": {"start": "10m", "finish": "1h"},
        "checkpoint": {"batchSteps": 2},
    }


def base_register(app: str = "fuzz") -> dict[str, Any]:
    return {"url": APP_URL, "appName": app, "sdk": "py:v0.5.0", "framework": "fastapi", "functions": [base_function()]}


def fresh(db: sync_redis.Redis, http: httpx.Client, api: str) -> dict[bytes, Any]:
    """An empty database with the fuzz app registered (so events start runs); its snapshot."""
    db.flushdb()
    response = http.post(f"{api}/fn/register", json=base_register())
    assert response.status_code == 200, response.text
    return snapshot(db)


def post(http: httpx.Client, url: str, body: bytes) -> httpx.Response:
    response = http.post(url, content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    return response


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # a lone surrogate travels as "\ud800"


# -- the event endpoint -----------------------------------------------------------------------------------

valid_events = st.fixed_dictionaries(
    {"name": st.just(EVENT), "data": st.dictionaries(st.sampled_from(["n", "id", "x"]), json_values, max_size=3)},
    optional={
        "id": st.text(max_size=10),
        "ts": st.integers(min_value=1, max_value=2**63 - 1),
        "v": st.text(max_size=5),
        "user": st.dictionaries(text, scalars, max_size=2),
    },
)
FIELDS = ["name", "data", "id", "ts", "v", "user", "extra"]


@st.composite
def mutated_events(draw: st.DrawFn) -> Any:
    """A valid event with one field replaced, removed or added, or data nested deep, alone or in a list."""
    event = draw(valid_events)
    how = draw(st.sampled_from(["replace", "remove", "deep", "as-is"]))
    field = draw(st.sampled_from(FIELDS))
    if how == "replace":
        event[field] = draw(json_values)
    elif how == "remove":
        event.pop(field, None)
    elif how == "deep":
        event["data"] = {"deep": nested(draw(st.integers(min_value=90, max_value=1200)))}
    if draw(st.booleans()):
        return [*draw(st.lists(valid_events, max_size=3)), event]
    return event


def check_event_answer(db: sync_redis.Redis, before: dict[bytes, Any], sent: Any, response: httpx.Response) -> None:
    if response.status_code != 200:
        assert snapshot(db) == before, f"a {response.status_code} stored something: {response.text[:300]}"
        return
    events = sent if isinstance(sent, list) else [sent]
    ids = response.json()["ids"]
    assert len(ids) == len(events)
    for event_id, event in zip(ids, events, strict=True):
        blob: bytes | None = db.get(keys.event(event_id))  # type: ignore[assignment]
        assert blob is not None, f"event {event_id} is not stored"
        stored = unpack(blob)
        assert stored["name"] == event["name"]
        assert stored["data"] == (event.get("data") if event.get("data") is not None else {})
        assert stored["user"] == (event.get("user") if event.get("user") is not None else {})
        assert stored["id"] == (event.get("id") or event_id)
        assert stored.get("v") == event.get("v")
        if event.get("ts"):
            assert stored["ts"] == event["ts"]


@FUZZ
@given(body=st.one_of(mutated_events(), json_values))
def test_events_never_5xx_and_4xx_store_nothing(db: sync_redis.Redis, api: str, http: httpx.Client, body: Any) -> None:
    before = fresh(db, http, api)
    response = post(http, f"{api}/e/key", encode(body))
    check_event_answer(db, before, json.loads(encode(body)), response)


def deep_body(depth: int) -> bytes:
    return b'{"name":"fuzz/event","data":' + b"[" * depth + b"]" * depth + b"}"


@settings(FUZZ, max_examples=40)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.integers(min_value=1, max_value=200_000).map(
            lambda n: b'{"name":"fuzz/event","data":' + b"[" * n + b"]" * n + b"}"
        ),
        st.sampled_from(
            [b'{"name":"fuzz/event","data":{"x":1e999}}', b'{"name":"fuzz/event","ts":1' + b"0" * 5000 + b"}"]
        ),
    )
)
def test_raw_bodies_never_5xx_and_4xx_store_nothing(
    db: sync_redis.Redis, api: str, http: httpx.Client, raw: bytes
) -> None:
    before = fresh(db, http, api)
    response = post(http, f"{api}/e/key", raw)
    if response.status_code != 200:
        assert snapshot(db) == before


# -- the register endpoint --------------------------------------------------------------------------------

REGISTER_PATHS = [
    ("appName",),
    ("url",),
    ("functions",),
    ("functions", 0),
    ("functions", 0, "id"),
    ("functions", 0, "name"),
    ("functions", 0, "triggers"),
    ("functions", 0, "triggers", 0),
    ("functions", 0, "triggers", 0, "event"),
    ("functions", 0, "triggers", 0, "expression"),
    ("functions", 0, "steps"),
    ("functions", 0, "steps", "step"),
    ("functions", 0, "steps", "step", "runtime"),
    ("functions", 0, "steps", "step", "runtime", "url"),
    ("functions", 0, "steps", "step", "retries"),
    ("functions", 0, "steps", "step", "retries", "attempts"),
    ("functions", 0, "retries"),
    ("functions", 0, "cancel"),
    ("functions", 0, "cancel", 0),
    ("functions", 0, "cancel", 0, "if"),
    ("functions", 0, "cancel", 0, "timeout"),
    ("functions", 0, "timeouts"),
    ("functions", 0, "timeouts", "start"),
    ("functions", 0, "backoff"),
    ("functions", 0, "concurrency"),
    ("functions", 0, "throttle"),
    ("functions", 0, "rateLimit"),
    ("functions", 0, "idempotency"),
    ("functions", 0, "debounce"),
    ("functions", 0, "batchEvents"),
    ("functions", 0, "priority"),
    ("functions", 0, "singleton"),
]
URLS = [
    APP_URL,
    "http://169.254.169.254/latest",
    "http://[::ffff:169.254.169.254]/",
    "http://0.0.0.0:80/",
    "http://metadata.google.internal/",
    "http://127.0.0.1:6379/",
    "http://localhost:99999/",
    "ftp://127.0.0.1/",
    "http://",
]


@st.composite
def mutated_registers(draw: st.DrawFn) -> Any:
    payload = base_register(draw(st.sampled_from(["fuzz", "other-app"])))
    path = draw(st.sampled_from(REGISTER_PATHS))
    target: Any = payload
    for part in path[:-1]:
        target = target[part]
    how = draw(st.sampled_from(["replace", "remove", "url"]))
    if how == "url":
        payload["functions"][0]["steps"]["step"]["runtime"]["url"] = draw(st.sampled_from(URLS))
    elif how == "remove":
        if isinstance(target, dict):
            target.pop(path[-1], None)
        else:
            del target[path[-1]]
    else:
        target[path[-1]] = draw(st.one_of(json_values, st.integers(90, 300).map(nested)))
    return payload


@FUZZ
@given(payload=st.one_of(mutated_registers(), json_values))
def test_register_never_5xx_and_4xx_store_nothing(
    db: sync_redis.Redis, api: str, http: httpx.Client, payload: Any
) -> None:
    before = fresh(db, http, api)
    response = post(http, f"{api}/fn/register", encode(payload))
    if response.status_code != 200:
        assert snapshot(db) == before, f"a {response.status_code} stored something: {response.text[:300]}"
        return
    sent = json.loads(encode(payload))
    app = response.json()["app_id"]
    functions: dict[bytes, bytes] = db.hgetall(keys.FUNCTIONS)  # type: ignore[assignment]
    stored = {slug.decode(): unpack(blob) for slug, blob in functions.items()}
    mine = {slug: config for slug, config in stored.items() if config["app_id"] == app}
    assert set(mine) == {f["id"] for f in sent["functions"]}
    for function in sent["functions"]:
        assert mine[function["id"]]["url"] == function["steps"]["step"]["runtime"]["url"]


# -- the run reads and the operator actions (issue 12) ------------------------------------------------------
# Filters, cursors, limits and step names with odd text: never a 5xx; a 4xx names the field it refuses
# (the parameter, or ``body.<field>``) and stores nothing. The database holds one cancelled run (a
# replay or resume candidate) and its events.

RUN_PARAMS = ["function", "status", "since", "until", "event", "limit", "cursor", "q"]
plain_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=16)  # no lone surrogates: URLs
odd_values = st.one_of(
    plain_text,
    st.sampled_from(
        [
            "²",  # a digit to str.isdigit, not to int()
            "١٢",
            "0",
            "201",
            "-1",
            "99999999999999d",
            "1e400s",
            "9" * 40,
            "failed",
            " FAILED ",
            "2026-13-45T99:00:00Z",
            "1796035920904.01M8P1AH0EB3Q4KYRJTH7BAWH0",
            "²²².abc",
            "1.",
            ".abc",
            "9" * 17 + ".a",
            "<script>alert(1)</script>",
            "fuzz-f|failed",
            "\x00",
        ]
    ),
)
NAMED = (*RUN_PARAMS, "body", "step", "filter", "cap", "dry_run", "bogus", "x")


@pytest.fixture(scope="module")
def cancelled_run(db: sync_redis.Redis, api: str, http: httpx.Client) -> str:
    """A run of the fuzz app (no worker serves it), cancelled: one that a replay or resume may take."""
    fresh(db, http, api)
    response = http.post(f"{api}/e/key", json={"name": EVENT, "data": {"n": 1}})
    assert response.status_code == 200, response.text
    [run] = http.get(f"{api}/v0/runs").json()["runs"]
    assert http.post(f"{api}/v0/runs/{run['run_id']}/cancel").status_code == 200
    return str(run["run_id"])


def check_refusal(db: sync_redis.Redis, before: dict[bytes, Any], response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if 400 <= response.status_code < 500:
        if not response.headers.get("content-type", "").startswith("application/json"):
            assert response.status_code in (404, 405), response.text[:200]  # the router: no such route
            assert snapshot(db) == before
            return
        message = response.json()["error"]
        if response.status_code == 400:
            named = message.startswith("body.") or message.split(":")[0] in NAMED
            assert named, f"the refusal names no field: {message}"
        after = snapshot(db)
        changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
        assert not changed, f"a {response.status_code} stored something: {message}; changed {changed[:5]}"


@settings(FUZZ, max_examples=40)
@given(params=st.dictionaries(st.sampled_from([*RUN_PARAMS, "bogus"]), odd_values, max_size=4))
@example(params={"limit": "²"})  # str.isdigit() holds, int() refuses it
@example(params={"cursor": "²²².abc"})
@example(params={"since": "99999999999999d", "until": "1e400s"})
def test_run_list_parameters_never_5xx(
    db: sync_redis.Redis, api: str, http: httpx.Client, cancelled_run: str, params: dict[str, str]
) -> None:
    before = snapshot(db)
    response = http.get(f"{api}/v0/runs", params=params)
    check_refusal(db, before, response)
    if response.status_code == 200:
        assert {"runs", "cursor", "truncated"} <= set(response.json())


@settings(FUZZ, max_examples=40)
@given(
    which=st.sampled_from(["the run", "odd"]),
    odd_id=odd_values,
    action=st.sampled_from(["resume", "replay", "cancel"]),
    body=st.one_of(st.fixed_dictionaries({"step": st.one_of(odd_values, json_values)}), json_values),
)
def test_run_actions_never_5xx(
    db: sync_redis.Redis,
    api: str,
    http: httpx.Client,
    cancelled_run: str,
    which: str,
    odd_id: str,
    action: str,
    body: Any,
) -> None:
    run_id = cancelled_run if which == "the run" else quote(odd_id, safe="") or "x"
    before = snapshot(db)
    response = post(http, f"{api}/v0/runs/{run_id}/{action}", encode(body))
    check_refusal(db, before, response)
    if response.status_code == 200 and action != "cancel":
        started = response.json()
        assert db.hget(keys.run(started["run_id"]), "status") is not None
        assert started["source_run_id"] == cancelled_run


@settings(FUZZ, max_examples=30)
@given(
    action=st.sampled_from(["cancel", "replay"]),
    body=st.one_of(
        st.dictionaries(
            st.sampled_from(["function", "status", "since", "until", "event", "dry_run", "cap", "reason", "x"]),
            st.one_of(odd_values, json_values),
            max_size=4,
        ),
        json_values,
    ),
)
def test_bulk_actions_never_5xx(
    db: sync_redis.Redis, api: str, http: httpx.Client, cancelled_run: str, action: str, body: Any
) -> None:
    before = snapshot(db)
    response = post(http, f"{api}/v0/runs/{action}", encode(body))
    check_refusal(db, before, response)
