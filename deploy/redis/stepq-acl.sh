#!/bin/sh
# Print a Redis ACL file (for redis.conf's `aclfile`) with stepq's least-privilege users:
#
#   stepq-worker  workers: run steps, claim jobs, move timers, register their app
#   stepq-api     `stepq api`: the event API, the dashboard, cancel/replay, HTTP app registration
#   stepq-sender  apps that send events straight to Redis (stepq.Client without event_api_url)
#   stepq-admin   (optional) an operator; with it the `default` user is turned off
#
# Passwords come from files (Docker/Kubernetes secrets), one per user; a user whose file is not
# given is left out. Only their SHA-256 goes into the ACL file. Surrounding whitespace is not part
# of a password (as with STEPQ_REDIS_PASSWORD_FILE, which each process reads its own from).
#
#   STEPQ_WORKER_PASSWORD_FILE=/run/secrets/worker STEPQ_API_PASSWORD_FILE=/run/secrets/api \
#   STEPQ_SENDER_PASSWORD_FILE=/run/secrets/sender STEPQ_ADMIN_PASSWORD_FILE=/run/secrets/admin \
#       deploy/redis/stepq-acl.sh > /data/users.acl
#
# Why these rules (what stepq sends was read from MONITOR and INFO commandstats; tests/test_redis_acl.py
# runs every role under them, on one Redis and on a Redis Cluster, and fails on any ACL LOG entry):
# - Keys: stepq's are `stepq:*` and arq's job keys `arq:job:`, `arq:result:`, `arq:in-progress:`,
#   `arq:retry:` (runtime/keys.py). Nothing else in the Redis is reachable: another app's keys stay
#   its own. No pub/sub channels.
# - Commands: reads and writes of data (@read @write), but nothing @dangerous (FLUSHALL, FLUSHDB,
#   KEYS, CONFIG, DEBUG, SHUTDOWN, MONITOR, ACL, MIGRATE, RESTORE, SORT...), no SCAN/RANDOMKEY (stepq
#   never walks the keyspace), scripts by EVALSHA/EVAL with SCRIPT LOAD/EXISTS (not SCRIPT FLUSH
#   or KILL, not FUNCTION), and PING, SELECT, TIME, INFO (a process reads `INFO` once to tell a
#   cluster from a single Redis), CLIENT SETNAME (the URL's client_name), and for a Redis Cluster
#   CLUSTER SLOTS (the slot map), COMMAND (where each command's keys are) and ASKING (a slot on the
#   move). stepq's connections send no CLIENT SETINFO (Redis 7.2+), so none is refused.
#   A script runs with its caller's rights: EVAL grants nothing the commands do not.
# - stepq-api is stepq-worker without blocking commands (it never waits on a queue).
# - stepq-sender has stepq-api's rights. Sending an event runs scripts that store it, start runs
#   (flow control included), resume the runs waiting for it and cancel those it cancels, touching
#   the runs' keys and their jobs' locks; and Redis lets a script touch the keys it declares only
#   with read and write rights (EVALSHA's key spec). So no narrower key set holds: a sender with
#   Redis access is trusted with stepq's data (not with the rest of the Redis, nor its
#   administration). Its own user still lets it be revoked, rotated and told apart (ACL LOG,
#   CLIENT LIST) on its own.
#   Apps that only send events are better off with no Redis access at all: point them at the
#   event API (STEPQ_EVENT_API_URL and an event key).
set -eu

WORKER_RULES='resetkeys ~stepq:* ~arq:* resetchannels -@all +@read +@write -@dangerous -scan -randomkey'
API_RULES="$WORKER_RULES -@blocking"
SENDER_RULES="$API_RULES"
# Added last to every role: what the categories above leave out and stepq needs.
COMMON='+evalsha +eval +script|load +script|exists +ping +select +time +info +client|setname +cluster|slots +command +asking'

sha256_of() {
    if [ ! -r "$1" ]; then
        echo "stepq-acl.sh: cannot read the password file $1" >&2
        exit 1
    fi
    password=$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$1")
    if [ -z "$password" ]; then
        echo "stepq-acl.sh: the password file $1 is empty" >&2
        exit 1
    fi
    printf '%s' "$password" | sha256sum | cut -d' ' -f1
}

user() {  # user NAME PASSWORD_FILE RULES
    [ -n "$2" ] || return 0
    printf 'user %s on #%s %s %s\n' "$1" "$(sha256_of "$2")" "$3" "$COMMON"
}

user stepq-worker "${STEPQ_WORKER_PASSWORD_FILE:-}" "$WORKER_RULES"
user stepq-api "${STEPQ_API_PASSWORD_FILE:-}" "$API_RULES"
user stepq-sender "${STEPQ_SENDER_PASSWORD_FILE:-}" "$SENDER_RULES"
if [ -n "${STEPQ_ADMIN_PASSWORD_FILE:-}" ]; then
    printf 'user stepq-admin on #%s ~* &* +@all\n' "$(sha256_of "$STEPQ_ADMIN_PASSWORD_FILE")"
    echo 'user default off'
fi
