"""The names the Lua scripts use come from Python: key builders, statuses, job ids and named ARGV,
checked by running the generated Lua in Redis against the Python that generated it."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from stepq.runtime import jobs, keys, scripts, shards
from stepq.runtime.run_status import TERMINAL, RunStatus
from stepq.runtime.script_args import BY_SCRIPT

IDS = ["01JABC", "run:with:colons", "a{b}c", "ünïcode"]


async def _lua(redis: Redis, body: str, *args: Any) -> Any:
    return await redis.eval(scripts.prelude() + "\n" + body, 0, *args)  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(keys.LUA_BUILDERS))
async def test_each_generated_key_builder_names_the_key_python_names(redis: Redis, name: str) -> None:
    got = await _lua(
        redis, f"local out = {{}} for i, id in ipairs(ARGV) do out[i] = key_{name}(id) end return out", *IDS
    )
    assert [g.decode() for g in got] == [keys.LUA_BUILDERS[name](i) for i in IDS]


RUN_IDS = [shards.new_run_id(shard=s) for s in (0, 1, 17, 31)] + ["01jabc", "no-shard", "run-u", ""]


@pytest.mark.parametrize("name", sorted(keys.RUN_SHAPES | keys.JOB_SHAPES))
async def test_each_run_and_job_key_builder_names_the_key_python_names(redis: Redis, name: str) -> None:
    ids = RUN_IDS + [f"{r}:p3:a0" for r in RUN_IDS]
    got = await _lua(
        redis, f"local out = {{}} for i, id in ipairs(ARGV) do out[i] = key_{name}(id) end return out", *ids
    )
    assert [g.decode() for g in got] == [getattr(keys, name)(i) for i in ids]


@pytest.mark.parametrize("name", sorted(keys.QUEUE_SHAPES | keys.SLOT_SHAPES))
async def test_each_queue_key_builder_names_the_key_python_names(redis: Redis, name: str) -> None:
    tags = list(shards.SHARD_TAGS)
    body = f"local out = {{}} for i, tag in ipairs(ARGV) do out[i] = key_{name}(tag, 'app-1') end return out"
    got = await _lua(redis, body, *tags)
    assert [g.decode() for g in got] == [getattr(keys, name)(s, "app-1") for s in range(shards.SHARD_LIMIT)]


async def test_a_run_ids_shard_is_read_alike_in_lua_and_python(redis: Redis) -> None:
    ids = RUN_IDS + [f"{r}:s2:timer" for r in RUN_IDS]
    got = await _lua(redis, "local out = {} for i, id in ipairs(ARGV) do out[i] = tag_of(id) end return out", *ids)
    assert [g.decode() for g in got] == [shards.tag_of(i) for i in ids]
    assert [shards.shard_of(shards.new_run_id(shard=s)) for s in range(32)] == list(range(32))
    # a run's keys and its jobs' keys share one slot, whatever its shard
    for run_id in RUN_IDS[:4]:
        tags = {shards.tag_of(run_id)} | {
            k.split("{")[1].split("}")[0] for k in (keys.run(run_id), keys.job(run_id + ":p1:a0"))
        }
        assert len(tags) == 1


def test_the_shards_tags_spread_over_the_slots_of_a_cluster() -> None:
    from redis.crc import key_slot

    slots = [key_slot(keys.timers(s).encode()) for s in range(shards.SHARD_LIMIT)]
    assert [slot * shards.SHARD_LIMIT // 16384 for slot in slots] == list(range(shards.SHARD_LIMIT))


@pytest.mark.parametrize("name", keys.LUA_INVERSES)
async def test_ids_are_read_back_from_keys(redis: Redis, name: str) -> None:
    build = {"job": keys.job, "run": keys.run}.get(name) or (lambda i: keys.queue(3, i))
    built = [build(i) for i in IDS]
    got = await _lua(
        redis, f"local out = {{}} for i, k in ipairs(ARGV) do out[i] = {name}_id_of(k) end return out", *built
    )
    assert [g.decode() for g in got] == IDS


async def test_fixed_keys_statuses_and_wake_job_ids_match(redis: Redis) -> None:
    constants = sorted(keys.LUA_CONSTANTS)
    got = await _lua(redis, "return {" + ", ".join(f"KEY_{c}" for c in constants) + "}")
    assert [g.decode() for g in got] == [keys.LUA_CONSTANTS[c] for c in constants]
    statuses = list(RunStatus)
    got = await _lua(
        redis,
        "local out = {} for i, s in ipairs(ARGV) do out[i] = TERMINAL[s] and 1 or 0 end return out",
        *statuses,
    )
    assert got == [int(s in TERMINAL) for s in statuses]
    got = await _lua(redis, "return {" + ", ".join(f"STATUS_{s.name}" for s in statuses) + "}")
    assert [g.decode() for g in got] == [s.value for s in statuses]
    assert (await _lua(redis, "return wake_job_id(ARGV[1], ARGV[2])", "r1", 7)).decode() == jobs.wake_job_id("r1", 7)
    assert jobs.wake_job_id("r1", 7) == jobs.JobSpec("r1", 7, kind=jobs.JobKind.WAKE).job_id
    assert (await _lua(redis, "return step_job_id(ARGV[1], ARGV[2])", "r1", 7)).decode() == jobs.step_job_id("r1", 7)
    assert jobs.step_job_id("r1", 7) == jobs.JobSpec("r1", 7).job_id


def test_a_job_payload_split_around_its_position_rebuilds_the_job() -> None:
    prefix, suffix = jobs.encode_around_position("r1", 1_700_000_000_000)
    for position in (0, 1, 127, 128, 70_000, 2**33):
        payload = prefix + msgpack.packb(position) + suffix
        assert payload == jobs.JobSpec("r1", position).encode(1_700_000_000_000)


@pytest.mark.parametrize("script", sorted(BY_SCRIPT))
async def test_named_argv_reads_each_field_at_its_position(redis: Redis, script: str) -> None:
    fields = [f.name for f in dataclasses.fields(BY_SCRIPT[script])]
    header = BY_SCRIPT[script].lua_header()
    body = header + "local out = {} for i, name in ipairs({" + ", ".join(f"'{f}'" for f in fields) + "}) do"
    body += " out[i] = ARG[name] end out[#out + 1] = ARG_REST return out"
    values = [f"value-{i}" for i in range(len(fields))]
    got = await redis.eval(body, 0, *values)  # type: ignore[misc]
    assert [g.decode() for g in got[:-1]] == values
    assert got[-1] == len(fields) + 1
    assert "ARGV[" not in scripts.script_text(script)  # the script reads its fields by name only


def test_the_scripts_spell_no_key() -> None:
    for name in (*scripts.SCRIPT_NAMES, "prelude", "ingest_events", "gather"):
        text = scripts.script_text(name)
        for prefix in ("stepq:", "arq:"):
            assert prefix not in text, f"{name}.lua spells a key ({prefix})"
