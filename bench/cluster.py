"""Scaling out: the throughput workload on one Redis (1 shard) and on a Redis Cluster of 3 masters.

The workload is throughput's (runs of 10 no-op plain ``def`` steps, drained by 2 worker processes,
``bench.apps:client``), on two deployments started side by side and measured in interleaved rounds
(A/B, then B/A, ...) so that load from elsewhere falls on both alike:

- **1 Redis**: a private redis-server, one shard (what a single Redis always uses);
- **3 masters**: a local Redis Cluster (tests/cluster.py's ``LocalCluster``) of 3 masters and no
  replicas, all 32 shards spread over them (11, 11 and 10 shards: ``redis-cli --cluster create``'s
  even split of the slots). No replicas: a replica replays every write of its master, which costs
  CPU on the same 2 cores the workers need, while in production it would run on a machine of its
  own; and what is measured here is the masters' CPU per step.

Each round of each deployment is a drain, as in throughput: the runs are started first (through the
ingest, ``Client.send``, as users start them; where the ingest of the code under test cannot run on
a cluster, by ``RunStore.create_run`` on a run id of a random shard, and the output says so), each
shard's queue is renamed aside, the workers are started and registered, and one pipeline renames
every shard's queue back and puts a token on its ready list; the clock runs until every run is
done. Neither starting runs nor starting workers is timed.

Measured per deployment: steps/s; Redis CPU per step (INFO ``used_cpu_user`` + ``used_cpu_sys`` of
each master, before and after the drain), in total and per master; each master's share of that CPU
and of the steps (from the shards of the runs' ids); commands per step per master (INFO
commandstats, scripts' calls included; the bench's own polling, gate and INFO/CONFIG calls taken
out); the workers' CPU per step. From the CPU per step each master spends on the steps of its own
shards, the projection: the steps/s one Redis core can carry (1000 / that CPU in ms), and what a
cluster of N masters on N cores could carry. Here the 2 workers and 3 Redis processes share 2 cores,
so the cluster's absolute steps/s is not expected to beat one Redis: the projection is the point.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import Redis

from bench.common import (
    APP_ID,
    BenchError,
    BenchResult,
    Env,
    Metric,
    RedisServer,
    command_calls,
    cpu_seconds,
    median,
    redis_cpu,
    wait_until,
)

NAME = "cluster"
STEPS = 10
WORKERS = 2
MASTERS = 3
#: An event no function listens to, sent once to each deployment to find out whether its ingest works.
PROBE_EVENT = "bench/probe"
#: Commands the bench itself sends to the masters (besides the polling, gate and tokens it counts).
OWN_COMMANDS = ("info", "config")


def _ours(command: str) -> bool:
    """A command the bench sends itself (Redis 7 names subcommands ``config|resetstat``)."""
    return command.partition("|")[0] in OWN_COMMANDS


POLL_S = 0.02
#: Idle workers are measured from this long after they started (their start-up's commands left out).
IDLE_SETTLE_S = 5.0


@dataclasses.dataclass(eq=False)
class Master:
    """One Redis process that serves shards, and a plain connection to it for INFO."""

    label: str
    port: int
    shards: list[int]
    client: Redis


@dataclasses.dataclass(eq=False)
class Deployment:
    """One set-up under test: what workers connect to (``url``: a ``bench.common.Server``) and the
    masters measured."""

    name: str
    title: str
    workdir: Path
    base_url: str
    shard_count: int
    client: Any  # RedisClient: Redis or RedisCluster
    masters: list[Master]
    sender: Any = None  # stepq.Client
    #: How runs are started: "events" (``Client.send``: the ingest, as users do) or "direct"
    #: (``RunStore.create_run``), with the reason (``find_start_via``).
    start_via: str = ""

    def url(self, db: int = 0) -> str:
        # (db 1 of a cluster does not exist: the workload's no-op steps record no marks)
        return f"{self.base_url}/{db}"

    def pipeline(self) -> Any:
        from redis.asyncio import RedisCluster

        return self.client.pipeline() if isinstance(self.client, RedisCluster) else self.client.pipeline(False)


# -- the two deployments ----------------------------------------------------------------------------


async def _open(url: str) -> Any:
    from stepq.runtime.connection import open_redis

    return await open_redis(url)


@contextlib.asynccontextmanager
async def single_redis(env: Env) -> AsyncIterator[Deployment]:
    async with env.redis(f"{NAME}-single") as server:
        deployment = await _single(server)
        try:
            yield deployment
        finally:
            await _close(deployment)


async def _single(server: RedisServer) -> Deployment:
    client = await _open(server.url())
    master = Master(f"redis :{server.port}", server.port, [0], Redis.from_url(server.url()))
    return Deployment(
        "single", "1 Redis (1 shard)", server.workdir, f"redis://127.0.0.1:{server.port}", 1, client, [master]
    )


@contextlib.asynccontextmanager
async def local_cluster(env: Env) -> AsyncIterator[Deployment]:
    from stepq.runtime import shards
    from tests.cluster import LocalCluster

    workdir = env.workdir / f"{NAME}-cluster"
    # Redis's default node timeout (15 s): the tests' 1 s makes the nodes gossip more often
    cluster = LocalCluster(workdir, masters=MASTERS, replicas=0, node_timeout_ms=15_000)
    await asyncio.to_thread(cluster.start)
    deployment: Deployment | None = None
    try:
        client = await _open(cluster.url)

        def port_of(shard: int) -> int:
            return int(client.get_node_from_key(f"{{{shards.SHARD_TAGS[shard]}}}").port)

        masters = []
        for i, node in enumerate(sorted(cluster.masters(), key=lambda n: n.port)):
            owned = [s for s in range(shards.SHARD_LIMIT) if port_of(s) == node.port]
            masters.append(Master(f"master {i + 1} :{node.port}", node.port, owned, Redis.from_url(node.url)))
        deployment = Deployment(
            "cluster",
            f"{MASTERS} masters ({shards.SHARD_LIMIT} shards)",
            workdir,
            cluster.url.rsplit("/", 1)[0],
            shards.SHARD_LIMIT,
            client,
            masters,
        )
        yield deployment
    finally:
        if deployment is not None:
            await _close(deployment)
        await asyncio.to_thread(cluster.stop)


async def _close(deployment: Deployment) -> None:
    from stepq.runtime.connection import close

    if deployment.sender is not None:
        await deployment.sender.aclose()
    for master in deployment.masters:
        await master.client.aclose()
    await close(deployment.client)


# -- one drain --------------------------------------------------------------------------------------


def _staging(shard: int) -> str:
    from stepq.runtime import shards

    return f"bench:{{{shards.SHARD_TAGS[shard]}}}:staging"


async def _per_shard(dep: Deployment, command: str, make_key: Any) -> list[Any]:
    """One command per shard of ``dep``, in one pipeline; the replies in shard order."""
    async with dep.pipeline() as pipe:
        for shard in range(dep.shard_count):
            getattr(pipe, command)(make_key(shard))
        return list(await pipe.execute())


async def _register(dep: Deployment) -> None:
    """Register the bench app as a worker would, so that events route to it before any worker runs."""
    from bench.apps import client
    from stepq.runtime.registry import Registry

    await Registry(dep.client).register_app(APP_ID, [fn.config() for fn in client.functions.values()])


async def find_start_via(dep: Deployment) -> None:
    """Start runs through the ingest (``Client.send``) where it works on ``dep``: a probe event tells
    (the ingest before issue 13's outbox took keys of several slots in one script, which a cluster
    refuses); else by ``RunStore.create_run``, saying why."""
    import stepq

    dep.sender = stepq.Client(f"{APP_ID}-sender", redis_url=dep.url())
    try:
        await dep.sender.send(stepq.Event(name=PROBE_EVENT, data={}))
    except Exception as exc:
        root: BaseException = exc
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__  # type: ignore[assignment]
        dep.start_via = f"direct (RunStore.create_run: the ingest failed here: {type(root).__name__}: {root})"
    else:
        dep.start_via = "events (Client.send)"


async def _start_runs(dep: Deployment, runs: int) -> None:
    """Start ``runs`` runs of the 10-step function (``Deployment.start_via``)."""
    import stepq
    from bench.apps import steps
    from stepq.expressions import Bindings
    from stepq.runtime import placement, shards
    from stepq.runtime.store import RunStore

    data: dict[str, Any] = {"n": STEPS}
    if dep.start_via.startswith("events"):
        for start in range(0, runs, 250):
            await dep.sender.send([stepq.Event(name="bench/steps", data=data) for _ in range(min(250, runs - start))])
        shards.configure(dep.shard_count)  # (a sender sets this process's count when it opens its Redis)
        return
    store = RunStore(dep.client)
    for _ in range(runs):
        event = stepq.Event(name="bench/steps", data=data)
        run_id = placement.new_run_id(steps.slug, None, Bindings(event=event.to_dict()))
        reply = await store.create_run(
            run_id=run_id, fn_slug=steps.slug, app_id=APP_ID, events=[event], dedupe_key=None
        )
        if int(reply[0]) != 1:
            raise BenchError(f"create_run {run_id}: {reply!r}")


async def drain(env: Env, dep: Deployment, runs: int, *, profile: str | None = None) -> dict[str, Any]:
    """Start ``runs`` runs, gate them, start the workers, open the gate and time the drain (with
    ``profile``, a file name: py-spy records the first worker meanwhile, see ``bench/profiling.py``)."""
    from stepq.runtime import keys, shards

    shards.configure(dep.shard_count)  # this process creates runs for either deployment in turn
    every = range(dep.shard_count)
    async with dep.pipeline() as pipe:
        for shard in every:
            pipe.delete(keys.runs_done(shard))
            pipe.delete(keys.runs_active(shard))
            pipe.delete(_staging(shard))
        await pipe.execute()
    await _register(dep)
    await _start_runs(dep, runs)
    # each run's first job, on its shard's queue: how many runs (and so steps) each shard got
    queued = await _per_shard(dep, "zcard", lambda s: keys.queue(s, APP_ID))
    if sum(queued) != runs:
        raise BenchError(f"{dep.title}: {sum(queued)} first jobs queued for {runs} runs started")
    staged = [s for s in every if queued[s]]
    async with dep.pipeline() as pipe:
        for shard in staged:
            pipe.execute_command(
                "RENAME", keys.queue(shard, APP_ID), _staging(shard)
            )  # (redis-py blocks .rename in a cluster pipeline)
        await pipe.execute()
    workers = await env.stepq_workers(dep, WORKERS)
    spy = None
    if profile is not None and env.profile_dir is not None:
        from bench.profiling import PySpy

        spy = PySpy(workers[0].pid, env.profile_dir / profile)
    try:
        for master in dep.masters:
            await master.client.config_resetstat()
        cpu_before = [await redis_cpu(m.client) for m in dep.masters]
        worker_before = sum(cpu_seconds(w.pid) for w in workers)
        began = time.perf_counter()
        async with dep.pipeline() as pipe:
            for shard in staged:
                pipe.execute_command("RENAME", _staging(shard), keys.queue(shard, APP_ID))
                # the workers wait on each shard's ready list: wake them as an enqueue would
                pipe.lpush(keys.ready(shard, APP_ID), b"1")
            await pipe.execute()
        polls = 0

        async def all_done() -> bool:
            nonlocal polls
            polls += 1
            return sum(int(n) for n in await _per_shard(dep, "zcard", keys.runs_done)) >= runs

        try:
            await wait_until(
                all_done, 60 + runs * STEPS / 50, f"{runs} runs on {dep.title} to end", interval=POLL_S, watch=workers
            )
        except BenchError as exc:
            raise BenchError(f"{exc}\n{await _stuck(dep)}") from None
        seconds = time.perf_counter() - began
        worker_cpu = sum(cpu_seconds(w.pid) for w in workers) - worker_before
        cpu_after = [await redis_cpu(m.client) for m in dep.masters]
        calls = [await command_calls(m.client) for m in dep.masters]
    finally:
        if spy is not None:
            spy.stop()
        for w in workers:
            w.stop()
    active = sum(await _per_shard(dep, "zcard", keys.runs_active))
    if active:
        raise BenchError(f"{dep.title}: the drain ended with {active} runs still active")
    masters = []
    for master, before, after, counts in zip(dep.masters, cpu_before, cpu_after, calls, strict=True):
        mine = [s for s in staged if s in master.shards]
        # the bench's own commands: a ZCARD per shard per poll, the gate's RENAME and token LPUSH
        own = {"zcard": polls * len(master.shards), "rename": len(mine), "lpush": len(mine)}
        step_calls = {
            name: n - own.get(name, 0) for name, n in counts.items() if not _ours(name) and n - own.get(name, 0) > 0
        }
        masters.append(
            {
                "label": master.label,
                "shards": len(master.shards),
                "steps": STEPS * sum(queued[s] for s in master.shards),
                "cpu_s": after - before,
                "calls": step_calls,
            }
        )
    figures: dict[str, Any] = {
        "steps": runs * STEPS,
        "seconds": seconds,
        "worker_cpu_s": worker_cpu,
        "masters": masters,
    }
    if spy is not None:
        from bench.profiling import analyse

        figures["profile"] = analyse(spy.out)
    return figures


async def _stuck(dep: Deployment) -> str:
    """Where the runs that did not end are: per shard (and its master), runs active and jobs queued."""
    from stepq.runtime import keys

    active = await _per_shard(dep, "zcard", keys.runs_active)
    queued = await _per_shard(dep, "zcard", lambda s: keys.queue(s, APP_ID))
    master_of = {s: m.label for m in dep.masters for s in m.shards}
    lines = [
        f"  shard {s} ({master_of.get(s, '?')}): {active[s]} runs active, {queued[s]} jobs on its queue"
        for s in range(dep.shard_count)
        if active[s] or queued[s]
    ]
    return "where the runs are:\n" + "\n".join(lines or ["  (no run active, no job queued)"])


async def idle(env: Env, deployments: list[Deployment], window_s: float) -> dict[str, Any]:
    """Redis commands/s with ``WORKERS`` idle workers on each deployment (all at once: idle workers
    use next to no CPU), over ``window_s`` from ``IDLE_SETTLE_S`` after they started."""
    started = {d.name: await env.stepq_workers(d, WORKERS) for d in deployments}
    try:
        await asyncio.sleep(IDLE_SETTLE_S)
        for dep in deployments:
            for master in dep.masters:
                await master.client.config_resetstat()
        await asyncio.sleep(window_s)
        found: dict[str, Any] = {"window_s": window_s}
        for dep in deployments:
            per_master: list[dict[str, Any]] = []
            for master in dep.masters:
                calls = {k: v for k, v in (await command_calls(master.client)).items() if not _ours(k)}
                top = dict(sorted(calls.items(), key=lambda kv: -kv[1])[:5])
                per_master.append({"label": master.label, "commands_per_s": round(sum(calls.values()) / window_s, 2),
                                   "top": {k: round(v / window_s, 2) for k, v in top.items()}})  # fmt: skip
            found[dep.name] = {
                "commands_per_s": round(sum(m["commands_per_s"] for m in per_master), 2),
                "masters": per_master,
            }
        return found
    finally:
        for workers in started.values():
            for w in workers:
                w.stop()


# -- figures ----------------------------------------------------------------------------------------


def totals(dep: Deployment, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates over every round of one deployment, and its costs per step, per master."""
    steps = sum(r["steps"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    redis_cpu_s = sum(m["cpu_s"] for r in rounds for m in r["masters"])
    masters = []
    for i, master in enumerate(dep.masters):
        rows = [r["masters"][i] for r in rounds]
        cpu_s = sum(m["cpu_s"] for m in rows)
        carried = sum(m["steps"] for m in rows)
        calls: collections.Counter[str] = collections.Counter()
        for m in rows:
            calls.update(m["calls"])
        # what this master spends on each step of its own shards: the projection's basis
        cpu_ms_per_own_step = 1000 * cpu_s / carried if carried else float("nan")
        masters.append(
            {
                "label": master.label,
                "shards": len(master.shards),
                "shard_share": round(len(master.shards) / dep.shard_count, 4),
                "step_share": round(carried / steps, 4),
                "cpu_share": round(cpu_s / redis_cpu_s, 4) if redis_cpu_s else None,
                "cpu_ms_per_step": round(1000 * cpu_s / steps, 4),
                "cpu_ms_per_own_step": round(cpu_ms_per_own_step, 4),
                "steps_per_s_per_core": round(1000 / cpu_ms_per_own_step, 0) if carried else None,
                "commands_per_step": round(sum(calls.values()) / steps, 2),
                "commands_by_name_per_step": {k: round(v / steps, 3) for k, v in calls.most_common()},
            }
        )
    busiest = max(m["cpu_ms_per_step"] for m in masters)
    return {
        "title": dep.title,
        "start_via": dep.start_via,
        "steps_per_s": round(steps / seconds, 1),
        "steps_per_s_by_round": [round(r["steps"] / r["seconds"], 1) for r in rounds],
        "steps": steps,
        "seconds": round(seconds, 3),
        "redis_cpu_ms_per_step": round(1000 * redis_cpu_s / steps, 4),
        "worker_cpu_ms_per_step": round(1000 * sum(r["worker_cpu_s"] for r in rounds) / steps, 4),
        "commands_per_step": round(sum(m["commands_per_step"] for m in masters), 2),
        # one master per core: the busiest master saturates first
        "projected_steps_per_s_on_one_core_per_master": round(1000 / busiest, 0),
        "masters": masters,
    }


def report(single: dict[str, Any], cluster: dict[str, Any], ratios: dict[str, float]) -> str:
    """The figures as prose lines, printed under the table."""
    runs = single["steps"] // STEPS
    lines = [f"Scaling out: {runs} runs x {STEPS} no-op steps on each deployment, {WORKERS} workers"]
    for t in (single, cluster):
        lines.append(
            f"  {t['title']} (runs started by {t['start_via']}):\n"
            f"    {t['steps_per_s']:,.0f} steps/s (rounds: {t['steps_per_s_by_round']}); "
            f"Redis CPU {t['redis_cpu_ms_per_step']:.4f} ms/step in all, {t['commands_per_step']:.1f} commands/step; "
            f"workers' CPU {t['worker_cpu_ms_per_step']:.3f} ms/step"
        )
        for m in t["masters"]:
            lines.append(
                f"      {m['label']}: {m['shards']} shards, {m['step_share']:.1%} of the steps, "
                f"{m['cpu_share']:.1%} of the Redis CPU; {m['cpu_ms_per_step']:.4f} ms/step "
                f"({m['cpu_ms_per_own_step']:.4f} ms per step of its shards), "
                f"{m['commands_per_step']:.1f} commands/step -> {m['steps_per_s_per_core']:,.0f} steps/s per Redis core"
            )
    per_core = [m["steps_per_s_per_core"] for m in cluster["masters"]]
    one = single["masters"][0]["steps_per_s_per_core"]
    lines += [
        f"  ratios, 3 masters / 1 Redis (medians of the rounds): steps/s {ratios['steps_per_s']:.2f}x, "
        f"Redis CPU per step {ratios['redis_cpu_per_step']:.2f}x, "
        f"workers' CPU per step {ratios['worker_cpu_per_step']:.2f}x",
        f"  projection: a Redis core carries {one:,.0f} steps/s as one Redis, "
        f"{min(per_core):,.0f}-{max(per_core):,.0f} as a cluster master; {MASTERS} masters on {MASTERS} cores "
        f"~{cluster['projected_steps_per_s_on_one_core_per_master']:,.0f} steps/s (the busiest master saturates "
        f"first); N masters about N x {sum(per_core) / len(per_core):,.0f}, given the workers cores enough "
        f"({cluster['worker_cpu_ms_per_step']:.3f} ms of worker CPU per step: "
        f"{1000 / cluster['worker_cpu_ms_per_step']:,.0f} steps/s per worker core)",
        f"  caveat: here {WORKERS} workers and {MASTERS} Redis processes share {os.cpu_count()} cores, so the "
        "cluster's steps/s is not expected to beat one Redis's; the CPU per step is what carries over to a "
        "cluster with a core per master",
    ]
    return "\n".join(lines)


def idle_report(idled: dict[str, Any]) -> str:
    """The idle workers' cost as a line of the report."""
    parts = []
    for name in ("single", "cluster"):
        masters = idled[name]["masters"]
        each = " + ".join(f"{m['commands_per_s']:g}" for m in masters) if len(masters) > 1 else ""
        parts.append(f"{name} {idled[name]['commands_per_s']:g}" + (f" ({each})" if each else ""))
    summed: collections.Counter[str] = collections.Counter()
    for m in idled["cluster"]["masters"]:
        summed.update(m["top"])
    top = summed.most_common(3)
    return (
        f"  idle: {WORKERS} idle workers cost Redis commands/s over {idled['window_s']:g} s: {', '.join(parts)}; "
        f"on the cluster mostly {', '.join(f'{k} {v:.1f}/s' for k, v in top)}"
    )


async def run(env: Env) -> BenchResult:
    # this process sends events: on a cluster the outbox logs a debug line per run created in another
    # shard, which structlog's default set-up prints
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    result = BenchResult(NAME)
    runs = env.size(1000, 100)
    n_rounds = env.size(6, 2)
    result.details = {
        "runs_per_round": runs,
        "steps_per_run": STEPS,
        "rounds": n_rounds,
        "workers": WORKERS,
        "masters": MASTERS,
        "replicas": 0,
    }
    from stepq.runtime import shards

    try:
        async with single_redis(env) as single, local_cluster(env) as cluster:
            deployments = [single, cluster]
            for d in deployments:
                await find_start_via(d)
            result.details["start_via"] = {d.name: d.start_via for d in deployments}
            # (the cluster's nodes run the redis-server on PATH: EmbeddedRedis's choice, not $STEPQ_BENCH_REDIS_SERVER)
            result.details["redis_versions"] = {
                d.name: sorted({str((await m.client.info("server"))["redis_version"]) for m in d.masters})
                for d in deployments
            }
            rounds: dict[str, list[dict[str, Any]]] = {d.name: [] for d in deployments}
            for r in range(n_rounds):
                for dep in deployments if r % 2 == 0 else deployments[::-1]:
                    print(f"[bench] {NAME}: round {r + 1}, {dep.title}", flush=True)
                    rounds[dep.name].append(await drain(env, dep, runs))
            t_single, t_cluster = totals(single, rounds["single"]), totals(cluster, rounds["cluster"])
            print(f"[bench] {NAME}: idle workers", flush=True)
            idled = await idle(env, deployments, env.size(60, 5))
            if env.profile_dir is not None:  # after the measured rounds: sampling skews no figure
                result.details["profiles"] = {
                    f"{dep.title}, worker 1 of {WORKERS}": (
                        await drain(env, dep, runs, profile=f"cluster-{dep.name}-worker.txt")
                    )["profile"]
                    for dep in deployments
                }
    finally:
        shards.configure(1)

    def per_round(key: str) -> float:
        return median(
            [_figure(c, key) / _figure(s, key) for s, c in zip(rounds["single"], rounds["cluster"], strict=True)]
        )

    ratios = {
        "steps_per_s": round(per_round("steps_per_s"), 3),
        "redis_cpu_per_step": round(per_round("redis_cpu"), 3),
        "worker_cpu_per_step": round(per_round("worker_cpu"), 3),
    }
    result.details |= {"single": t_single, "cluster": t_cluster, "ratios_median_of_rounds": ratios}
    result.details["idle"] = idled
    result.details["report"] = report(t_single, t_cluster, ratios) + "\n" + idle_report(idled)
    caveat = f"{WORKERS} workers and {MASTERS} Redis share the machine's cores: not expected to beat 1 Redis here"
    result.metrics += [
        Metric(f"steps/s, {t_cluster['title']}", "steps/s", t_cluster["steps_per_s"], t_single["steps_per_s"],
               t_single["title"], note=caveat),
        Metric(f"Redis CPU per step, {t_cluster['title']}", "ms", t_cluster["redis_cpu_ms_per_step"],
               t_single["redis_cpu_ms_per_step"], t_single["title"]),
    ]  # fmt: skip
    for m in t_cluster["masters"]:
        result.metrics.append(
            Metric(
                f"Redis CPU per step, {m['label']}",
                "ms",
                m["cpu_ms_per_step"],
                t_cluster["redis_cpu_ms_per_step"],
                "all masters",
                note=f"{m['shards']} of 32 shards, {m['step_share']:.1%} of the steps, "
                f"{m['commands_per_step']} commands/step; ratio = its share of the CPU",
            )
        )
    result.metrics += [
        Metric("projected steps/s per Redis core", "steps/s",
               sum(m["steps_per_s_per_core"] for m in t_cluster["masters"]) / MASTERS,
               t_single["masters"][0]["steps_per_s_per_core"], "as one Redis",
               note="1000 / (a master's CPU ms per step of its own shards), mean of the masters"),
        Metric(f"idle: Redis commands/s, {WORKERS} idle workers, {MASTERS} masters", "commands/s",
               idled["cluster"]["commands_per_s"], idled["single"]["commands_per_s"], "1 Redis"),
        Metric(f"projected steps/s, {MASTERS} masters on {MASTERS} cores", "steps/s",
               t_cluster["projected_steps_per_s_on_one_core_per_master"],
               t_single["masters"][0]["steps_per_s_per_core"], "1 Redis on 1 core"),
    ]  # fmt: skip
    return result


def _figure(round_: dict[str, Any], key: str) -> float:
    if key == "steps_per_s":
        return float(round_["steps"]) / float(round_["seconds"])
    if key == "redis_cpu":
        return sum(float(m["cpu_s"]) for m in round_["masters"]) / float(round_["steps"])
    return float(round_["worker_cpu_s"]) / float(round_["steps"])
