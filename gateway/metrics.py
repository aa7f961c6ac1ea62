"""Prometheus metrics of one gateway instance, on a registry of its own (no globals)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from itertools import accumulate
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class GatewayMetrics:
    """Every metric the gateway exports on ``GET /metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "sync_gateway_ingest_events",
            "Events received, by outcome (accepted, duplicate, rejected).",
            ["outcome"],
            registry=r,
        )
        self.requests_refused = Counter(
            "sync_gateway_ingest_requests_refused",
            "Ingest requests refused as a whole, by error code.",
            ["code"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "sync_gateway_ingest_ack_seconds",
            "From request body read to durable ack.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_group_events = Histogram(
            "sync_gateway_store_commit_group_events",
            "Events per group commit of the local store.",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.backlog_events = Gauge(
            "sync_gateway_backlog_events",
            "Stored events not yet forwarded to Kafka.",
            registry=r,
        )
        self.backlog_age = Gauge(
            "sync_gateway_backlog_oldest_age_seconds",
            "Age of the oldest event not yet forwarded to Kafka.",
            registry=r,
        )
        self.forwarded = Counter(
            "sync_gateway_forwarded_events",
            "Events committed to Kafka by the forwarder.",
            registry=r,
        )
        self.forward_latency = Histogram(
            "sync_gateway_forward_seconds",
            "From local ack to committed Kafka transaction, of each transaction's oldest event.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.kafka_up = Gauge(
            "sync_gateway_kafka_link_up",
            "1 when the forwarder's last Kafka transaction succeeded, else 0.",
            registry=r,
        )
        self.dlq_events = Gauge(
            "sync_gateway_dlq_events",
            "Events in the local quarantine (also sent to the dead-letter topic).",
            registry=r,
        )
        self.store_refusals = Counter(
            "sync_gateway_store_refusals",
            "Ingest requests answered 503 because the store could not commit (quota, I/O).",
            registry=r,
        )
        # -- downstream: consumer and stream --
        self.stream_connections = Gauge(
            "sync_gateway_stream_connections",
            "Open websocket connections of WS /v1/stream.",
            registry=r,
        )
        self.stream_subscriptions = Gauge(
            "sync_gateway_stream_subscriptions",
            "Open stream subscriptions (websocket and long-poll).",
            registry=r,
        )
        self.stream_updates = Counter(
            "sync_gateway_stream_updates_delivered",
            "Updates handed to the transport (websocket frames and long-poll answers).",
            registry=r,
        )
        self.stream_replays = Counter(
            "sync_gateway_stream_replays",
            "Subscriptions that resumed from a cursor (a replay).",
            registry=r,
        )
        self.stream_resets = Counter(
            "sync_gateway_stream_resets",
            "Reset frames sent (the client must re-snapshot), by reason.",
            ["reason"],
            registry=r,
        )
        self.stream_slow_closes = Counter(
            "sync_gateway_stream_slow_consumer_closes",
            "Connections closed because the client did not keep up.",
            registry=r,
        )
        self.stream_frame_errors = Counter(
            "sync_gateway_stream_frame_errors",
            "Client frames refused with an error frame, by error code.",
            ["code"],
            registry=r,
        )
        self.fleet_duplicates = Counter(
            "sync_gateway_fleet_duplicates",
            "Events answered duplicate because another instance of the fleet committed them.",
            registry=r,
        )
        self.fleet_conflicts = Counter(
            "sync_gateway_fleet_conflicts",
            "Events this instance committed that another instance also holds (a cross-instance "
            "duplicate happened; see the README's bound).",
            registry=r,
        )
        self.fleet_unavailable = Counter(
            "sync_gateway_fleet_dedup_unavailable",
            "Fleet dedup calls that Redis did not answer (local dedup only for that batch).",
            registry=r,
        )
        self.auth_refusals = Counter(
            "sync_gateway_auth_refusals",
            "Requests and handshakes refused at the edge, by reason (expired, bad_signature, "
            "origin_not_allowed, rate_limited, ...).",
            ["reason"],
            registry=r,
        )
        self.downstream_lag = Gauge(
            "sync_gateway_downstream_consumer_lag",
            "Committed records in the update topics not yet in the downstream log.",
            registry=r,
        )
        self.downstream_link_up = Gauge(
            "sync_gateway_downstream_kafka_link_up",
            "1 when the downstream consumer is connected to Kafka, else 0.",
            registry=r,
        )
        self.collector = CollectorStats()
        """The cycle collector's figures, filled in by :class:`gateway.gc_policy.GcPolicy`."""
        r.register(self.collector)
        self.downstream = ReadCounters(
            "sync_gateway_downstream_",
            {
                "records": "Records stored in the downstream log and handed to the streams.",
                "batches": "Fetched batches that stored records (records / batches: the batch "
                "size, which grows as the consumer falls behind).",
                "work_seconds": "Time the downstream consumer spent storing batches and fanning "
                "them out; a rate near 1 means the process has no time to spare, and latency "
                "grows with any backlog.",
                "log_held_seconds": "Time the downstream log's writes waited for a WAL "
                "checkpoint to copy the last commits' pages (so that the WAL starts again).",
            },
        )
        """The downstream consumer's running totals (its ``consumed``, ``batches``, ``work_s``)
        and the log's (``checkpoints_held_s``)."""
        r.register(self.downstream)


class ReadCounters(Collector):
    """Counters read from a callable at scrape time: a flow keeps a plain running total on its
    hot path (no metrics library call per batch) and the wiring points each counter at it, as
    ``Gauge.set_function`` does for a gauge. Unset, a counter reads 0."""

    def __init__(self, prefix: str, documentation: Mapping[str, str]) -> None:
        self._docs = {prefix + name: doc for name, doc in documentation.items()}
        self._prefix = prefix
        self._reads: dict[str, Callable[[], float]] = {}

    def set_function(self, name: str, read: Callable[[], float]) -> None:
        """Counter ``name`` (without the prefix) reads ``read()`` from now on."""
        full = self._prefix + name
        if full not in self._docs:
            raise KeyError(f"no counter {full}")
        self._reads[full] = read

    def collect(self) -> Iterator[Metric]:
        for name, documentation in self._docs.items():
            read = self._reads.get(name)
            yield CounterMetricFamily(name, documentation, value=read() if read else 0)

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class CollectorStats(Collector):
    """The cycle collector's pauses, freed cycles and freezes, by generation.

    Written from inside a collection (a ``gc.callbacks`` entry runs in whatever code allocated
    when the collection began) and exported at scrape time. It takes no lock: a callback that
    waited for a lock the interrupted code holds would wait forever (prometheus/client_python
    issue 363, the reason its own GC collector works this way), so it only adds to lists.
    """

    PAUSE_BOUNDS: Final = _LATENCY_BUCKETS
    _BOUND_LABELS: Final = [str(float(bound)) for bound in PAUSE_BOUNDS] + ["+Inf"]

    def __init__(self) -> None:
        self._buckets = [[0] * (len(self.PAUSE_BOUNDS) + 1) for _ in range(3)]
        self._pause_s = [0.0] * 3
        self._collected = [0] * 3
        self.freezes = 0

    def observe(self, generation: int, pause_s: float, collected: int) -> None:
        """One collection of ``generation``: its pause and the objects it freed."""
        self._buckets[generation][bisect_left(self.PAUSE_BOUNDS, pause_s)] += 1
        self._pause_s[generation] += pause_s
        self._collected[generation] += collected

    def collect(self) -> Iterator[Metric]:
        pause = HistogramMetricFamily(
            "sync_gateway_gc_pause_seconds",
            "Pauses of the event loop for Python's cycle collector, by generation collected.",
            labels=["generation"],
        )
        freed = CounterMetricFamily(
            "sync_gateway_gc_collected_objects",
            "Objects in reference cycles the collector freed, by generation (the gateway's "
            "connections make none: a steady rise points at a cycle).",
            labels=["generation"],
        )
        for generation in range(3):
            label = [str(generation)]
            counts = list(accumulate(self._buckets[generation]))
            buckets = list(zip(self._BOUND_LABELS, counts, strict=True))
            pause.add_metric(label, buckets, self._pause_s[generation])
            freed.add_metric(label, self._collected[generation])
        yield pause
        yield freed
        yield CounterMetricFamily(
            "sync_gateway_gc_freezes",
            "Times the surviving objects were moved out of the collector's reach (gc_policy).",
            value=self.freezes,
        )

    def describe(self) -> Iterator[Metric]:
        return self.collect()
