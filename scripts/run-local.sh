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
SYNC_GATEWAY_KAFKA_BOOTSTRAP="$bootstrap" .venv/bin/sync-gateway serve "$@"
