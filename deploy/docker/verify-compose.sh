#!/usr/bin/env bash
# Check by hand that the compose set-up works: run from the repository, with the image built
# (tag stepq:local), the secrets made (see docker-compose.yml), and no other project named
# stepqverify. It starts Redis, the API, three workers, the fake shop (its answers slowed) and the
# example app; sends an event through the API with the key from secrets/event_keys; sends 120 events and
# checks every worker ran steps; `docker stop`s a worker with steps in flight (drain), then a worker
# with STEPQ_DRAIN_GRACE=1 under 4 s steps (hand-back); stops and starts Redis (per-worker readiness);
# prints what Docker applied. Everything is torn down at the end (`down -v`). About 3 minutes.
#   STEPQ_REDIS_IMAGE=stepq-local/redis:7.0-bookworm deploy/docker/verify-compose.sh   # no registry
# Needs docker-compose (v1) or `docker compose` (v2): COMPOSE="docker compose" for the latter.
set -uo pipefail
cd "$(dirname "$0")/../.."
export COMPOSE_PROJECT_NAME=stepqverify
TMP="$(mktemp -d)"
trap '$C down -v >/dev/null 2>&1; rm -rf "$TMP"' EXIT
for latency in 0.5 4; do
    printf 'services:\n  shop:\n    command: ["--host", "0.0.0.0", "--port", "8080", "--total", "237", "--latency", "%s"]\n' \
        "$latency" > "$TMP/shop-$latency.yml"
done
cat > "$TMP/send_batch.py" <<'PY'
"""Send N product imports and N orders through Redis, as an app would."""
import asyncio
import sys

import stepq


async def main(n: int, tag: str) -> None:
    events = [stepq.Event(name="shop/import.requested", data={"api": "http://shop:8080"}) for _ in range(n)]
    events += [stepq.Event(name="shop/order.placed", data={"order_id": i, "email": f"{tag}{i}@example.com"}) for i in range(n)]
    ids = await stepq.Client("verify-sender").send(events)
    print(f"sent {len(ids)} events ({tag})")


asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
PY
chmod 644 "$TMP"/*
COMPOSE="${COMPOSE:-docker-compose}"
C="$COMPOSE -f docker-compose.yml -f $TMP/shop-0.5.yml --profile example"
timed_stop() { local t0; t0=$(date +%s.%N); docker stop "$1" >/dev/null; echo "docker stop $1 took $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"; }
# Containers by service (compose v1 names them project_service_1, v2 project-service-1).
of() { docker ps -a --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | sort; }
say() { echo; echo "### $(date +%T) $*"; }
runs() { $C exec -T worker stepq runs --limit 2000 --json | python3 -c "
import sys,json,collections
rows=[json.loads(l) for l in sys.stdin if l.strip()]
c=collections.Counter((r.get('function'), r['status']) for r in rows)
print(len(rows), 'runs:', dict(c))"; }
wait_all_ended() {  # wait_all_ended N: until N runs exist and none is running/queued
  for _ in $(seq 1 120); do
    out=$($C exec -T worker stepq runs --limit 2000 --json | python3 -c "
import sys,json
rows=[json.loads(l) for l in sys.stdin if l.strip()]
print(len(rows), sum(r['status'] not in ('completed','failed','cancelled') for r in rows))")
    set -- $out "$1"; [ "$1" -ge "$3" ] && [ "$2" -eq 0 ] && return 0; shift 2
    sleep 1
  done; echo "TIMEOUT waiting for runs"; return 1; }
per_worker() { for c in $(of worker); do
  docker logs "$c" 2>&1 | python3 -c "
import sys,json
rows=[json.loads(l) for l in sys.stdin if l.startswith('{')]
inv=[r for r in rows if r.get('event')=='invocation']
print('$c:', len(inv), 'invocations of', len({r['run_id'] for r in inv}), 'runs')"; done; }
send() { $C run --rm --no-deps -v "$TMP/send_batch.py:/app/send_batch.py:ro" --entrypoint python app send_batch.py "$1" "$2" 2>/dev/null | tail -1; }

say "docker-compose up -d --scale worker=3 (profile example: + fake shop, + app sending its one event)"
$C up -d --scale worker=3 2>&1 | grep -v "^$" | tail -8
for _ in $(seq 1 60); do [ "$(docker ps --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter label=com.docker.compose.service=worker --filter health=healthy -q | wc -l)" -eq 3 ] && break; sleep 1; done
$C ps
say "the app's event"; $C logs --no-color app | tail -1
wait_all_ended 1; runs
say "up again: the app sends again with the same event id"
$C up -d --scale worker=3 2>&1 | tail -1; sleep 8; $C logs --no-color app | tail -2; runs

say "the API (published on 127.0.0.1:8288): an event with the key from secrets/event_keys, then a wrong key"
for _ in $(seq 1 30); do [ "$(docker inspect "$(of api)" --format '{{.State.Health.Status}}')" = healthy ] && break; sleep 1; done
docker ps --filter "name=^$(of api)\$" --format '{{.Names}} {{.Status}} {{.Ports}}'
python3 - "$(cat secrets/event_keys)" <<'PY'
import json, sys, urllib.error, urllib.request
for key in (sys.argv[1], "not-the-key"):
    request = urllib.request.Request(f"http://127.0.0.1:8288/e/{key}", data=json.dumps({"name": "test/simple.function"}).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print("key from the secret:", response.status, response.read().decode())
    except urllib.error.HTTPError as error:
        print("wrong key:", error.code, error.read().decode()[:80])
PY
wait_all_ended 2; runs

say "batch 1: 60 imports + 60 orders"; send 60 batch1; wait_all_ended 122; runs; per_worker

say "batch 2, then docker stop of worker_2 while its steps are in flight (each page answer takes 0.5 s)"
send 60 batch2; sleep 1
W2=$(of worker | sed -n 2p)
timed_stop "$W2"
docker inspect "$W2" --format "$W2 exit code {{.State.ExitCode}}"
docker logs "$W2" 2>&1 | grep -E '"worker\.(draining|started)"'
docker logs "$W2" 2>&1 | python3 -c "
import sys,json
rows=[json.loads(l) for l in sys.stdin if l.startswith('{')]
d=[i for i,r in enumerate(rows) if r.get('event')=='worker.draining'][0]
after=[r for r in rows[d+1:] if r.get('event')=='invocation']
print('it finished', len(after), 'invocations after the drain began, outcomes', sorted({r['outcome'] for r in after}))"
wait_all_ended 242; runs; per_worker
$C exec -T worker stepq dead-letters

say "hand-back: a one-off worker with STEPQ_DRAIN_GRACE=1 while each page answer takes 4 s"
C="$COMPOSE -f docker-compose.yml -f $TMP/shop-4.yml --profile example"
$C up -d --no-deps shop 2>&1 | tail -1
W=$($C run -d --no-deps -e STEPQ_DRAIN_GRACE=1 worker 2>/dev/null | tail -1)
for _ in $(seq 1 30); do [ "$(docker inspect "$W" --format '{{.State.Health.Status}}')" = healthy ] && break; sleep 1; done
send 30 batch3; sleep 2
timed_stop "$W"
docker inspect "$W" --format 'one-off worker exit code {{.State.ExitCode}}'
docker logs "$W" 2>&1 | grep -E '"worker\.draining"'
echo "one-off worker invocation lines: $(docker logs "$W" 2>&1 | grep -c '"invocation"')"
wait_all_ended 302; runs
$C exec -T worker stepq dead-letters

say "Redis stopped: each worker's /readyz says so and its container turns unhealthy; Redis back: healthy"
docker stop "$(of redis)" >/dev/null; sleep 20
for c in $(of worker); do docker ps -a --filter "name=^$c\$" --format '{{.Names}} {{.Status}}'; done
docker exec "$(of worker | head -1)" python -c "
import urllib.request as u, urllib.error as e
try: u.urlopen('http://127.0.0.1:8081/readyz')
except e.HTTPError as x: print('readyz', x.code, x.read().decode())
print('livez', u.urlopen('http://127.0.0.1:8081/livez').read().decode())"
docker start "$(of redis)" >/dev/null; sleep 20
docker ps --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --format '{{.Names}} {{.Status}}' | sort
runs
say "logging limits and stop settings as Docker applied them"
for c in $(of redis) $(of api) $(of worker | head -1) $(of shop); do docker inspect $c --format "$c {{json .HostConfig.LogConfig}} stop_timeout={{.Config.StopTimeout}} init={{.HostConfig.Init}} user={{.Config.User}}"; done
docker rm -f "$W" >/dev/null
say "tearing down"
