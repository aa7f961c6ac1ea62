#!/usr/bin/env bash
# `make run`: a local single-node Kafka (if Java is here) and the gateway on :8080, store in ./var.
set -u
cd "$(dirname "$0")/.."
mkdir -p var
bootstrap="${SYNC_GATEWAY_KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
kafka_pid=""
if .venv/bin/python -m gateway.testing.kafka_broker fetch-jars >var/kafka-fetch.log 2>&1; then
    .venv/bin/python -m gateway.testing.kafka_broker run --data-dir var/kafka \
        --port 9092 --controller-port 9093 >var/kafka.log 2>&1 &
    kafka_pid=$!
    trap 'kill "$kafka_pid" 2>/dev/null; wait "$kafka_pid" 2>/dev/null' EXIT
    echo "run: Kafka starting in the background on 127.0.0.1:9092 (log: var/kafka.log)"
else
    echo "run: WARNING: cannot start a local Kafka (no Java or Maven? see var/kafka-fetch.log)."
    echo "run: the gateway still starts, acknowledges events into ./var and buffers them"
    echo "run: until a broker at $bootstrap is reachable."
fi
# Authentication: unless JWT settings are given, a development HS256 secret kept in ./var and a
# token for it (all channels, all event types) printed for curl and the SDK.
if [ -z "${SYNC_GATEWAY_JWT_ALGORITHMS:-}" ]; then
    [ -s var/dev-jwt-secret ] || { umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >var/dev-jwt-secret; }
    export SYNC_GATEWAY_JWT_ALGORITHMS='["HS256"]'
    SYNC_GATEWAY_JWT_SECRET="$(cat var/dev-jwt-secret)"
    export SYNC_GATEWAY_JWT_SECRET
    token="$(.venv/bin/sync-gateway token --sub dev --channel 'orders:*' --channel 'inventory:*' \
        --publish '*' --ttl 86400)"
    echo "run: development token (24 h; its source is \"dev\"): export TOKEN=$token"
fi
SYNC_GATEWAY_KAFKA_BOOTSTRAP="$bootstrap" .venv/bin/sync-gateway serve "$@"
