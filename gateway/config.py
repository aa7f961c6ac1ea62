"""The gateway's one configuration object.

Every setting comes from a ``SYNC_GATEWAY_<NAME>`` environment variable or the matching
``--<name>`` flag of ``sync-gateway serve``; the defaults below are the named defaults.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.channels import DEFAULT_CHANNEL_RULES_SPEC
from gateway.core.routing import DEFAULT_ROUTES
from gateway.core.schemas import default_schema_root
from gateway.gc_policy import DEFAULT_FREEZE_INTERVAL_S, MIN_FREEZE_INTERVAL_S
from gateway.logs import LogFormat

KIB = 1024
MIB = 1024 * KIB

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = Path("./var")
DEFAULT_KAFKA_BOOTSTRAP = "localhost:9092"
DEFAULT_MAX_BODY_BYTES = 4 * MIB
DEFAULT_MAX_BATCH_EVENTS = 1000
DEFAULT_MAX_EVENT_BYTES = 256 * KIB
DEFAULT_GROUP_COMMIT_MAX_EVENTS = 5000
DEFAULT_STORE_RETRY_AFTER_S = 5
DEFAULT_RETENTION_S = 7 * 24 * 3600  # the ADR's minimum retention; also the dedup window
DEFAULT_DEAD_LETTER_TOPIC = "sync-gateway.dead-letters"
DEFAULT_POSITION_TOPIC = "sync-gateway.forwarder-positions"


class GatewayConfig(BaseSettings):
    """Configuration of one gateway instance."""

    model_config = SettingsConfigDict(
        env_prefix="SYNC_GATEWAY_",
        extra="forbid",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    host: str = Field(DEFAULT_HOST, description="Address the HTTP/WS server binds to.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="Port of the HTTP/WS server.")
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Directory of the local SQLite store.")
    downstream_dir: Path | None = Field(
        None,
        description="Directory of the downstream log (the streams' local history); unset: "
        "data_dir. On a volume other than the store's, a full store device refuses ingest "
        "(503) while streams keep delivering.",
    )
    kafka_bootstrap: str = Field(DEFAULT_KAFKA_BOOTSTRAP, description="Kafka bootstrap servers.")
    redis_url: str | None = Field(
        None,
        description="Redis URL for fleet-wide dedup and shared rate limits; unset means a "
        "single instance.",
    )
    fleet_pending_ttl_s: float = Field(
        30.0,
        gt=0,
        description="With Redis: how long another instance waits on this one's claim of an "
        "event it is storing (longer than any store commit).",
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=64,
        description="Stable id of this instance (names its Kafka transactional id).",
    )
    schema_dir: Path = Field(
        default_factory=default_schema_root, description="Root of the versioned event schemas."
    )
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES, gt=0, description="Largest accepted request body (413 above)."
    )
    max_batch_events: int = Field(
        DEFAULT_MAX_BATCH_EVENTS, gt=0, description="Most events in one POST /v1/events batch."
    )
    max_event_bytes: int = Field(
        DEFAULT_MAX_EVENT_BYTES, gt=0, description="Largest encoded event (rejected above)."
    )
    group_commit_max_events: int = Field(
        DEFAULT_GROUP_COMMIT_MAX_EVENTS, gt=0, description="Most events in one store commit."
    )
    store_retry_after_s: int = Field(
        DEFAULT_STORE_RETRY_AFTER_S, gt=0, description="Retry-After sent when the store refuses."
    )
    log_level: str = Field("info", description="Log level of the gateway's loggers.")
    log_format: LogFormat = Field(
        "json", description="json: one JSON object per line (with correlation_id); or text."
    )

    # -- authentication, authorization and limits (DESIGN.md guarantee 6) --
    jwt_algorithms: list[str] = Field(
        default_factory=list,
        description='Algorithms tokens may use, e.g. ["HS256"] or ["RS256"] (never taken '
        "from the token). Empty: no authentication, which serve refuses without insecure_no_auth.",
    )
    jwt_secret: SecretStr | None = Field(None, description="HS* shared secret (>= 32 bytes).")
    jwt_public_key: str | None = Field(
        None, description="RS*/ES* public key: PEM text, or the path of a PEM file."
    )
    jwks: Path | None = Field(None, description="RS*/ES* keys as a JWKS file (kid picks the key).")
    jwt_audience: str | None = Field(None, description="Required `aud` claim.")
    jwt_issuer: str | None = Field(None, description="Required `iss` claim.")
    jwt_leeway_s: float = Field(30.0, ge=0, le=300, description="Clock leeway for exp/nbf.")
    tenant: str | None = Field(
        None, description="This gateway's tenant: tokens must carry the same `tenant` claim."
    )
    insecure_no_auth: bool = Field(
        False,
        description="Development only: serve without authentication (every caller may read and "
        "write everything). Announced loudly at start-up.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins (exact match) whose browser pages may open websockets; a handshake "
        "with any other Origin header is refused. Clients that send no Origin are not affected.",
    )
    public_metrics: bool = Field(
        False, description="Serve GET /metrics and /openapi.json without a token."
    )
    handshake_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection must send its request headers within this (slowloris).",
    )
    body_timeout_s: float = Field(30.0, gt=0, description="A request body must arrive within this.")
    max_connections_per_subject: int = Field(
        16, gt=0, description="Websocket connections one token subject may hold (429 above)."
    )
    rate_limit_requests_per_s: float = Field(
        50.0, ge=0, description="Per subject: HTTP requests + websocket frames per second (0: off)."
    )
    rate_limit_requests_burst: int = Field(200, gt=0, description="Burst of the request bucket.")
    rate_limit_events_per_s: float = Field(
        1000.0, ge=0, description="Per subject: published events per second (0: off)."
    )
    rate_limit_events_burst: int = Field(
        5000, gt=0, description="Burst of the event bucket (at least max_batch_events)."
    )

    # -- forwarding to Kafka --
    topic_routes: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ROUTES),
        description="Aggregate (part of event_type before the dot) -> Kafka topic, as JSON.",
    )
    dead_letter_topic: str = Field(DEFAULT_DEAD_LETTER_TOPIC, min_length=1)
    position_topic: str = Field(
        DEFAULT_POSITION_TOPIC, min_length=1, description="Compacted topic of forwarder positions."
    )
    create_topics: bool = Field(True, description="Create missing topics at start-up.")
    topic_partitions: int = Field(3, gt=0, description="Partitions of topics the gateway creates.")
    topic_replication_factor: int = Field(
        1, gt=0, description="Replication factor of created topics (use 3 in production)."
    )
    forward_batch_max: int = Field(5000, gt=0, description="Most events per Kafka transaction.")
    forward_min_interval_ms: int = Field(
        25,
        ge=0,
        le=10_000,
        description="At least this long between the starts of two Kafka transactions (each "
        "costs the broker a fixed amount of work, whatever it carries); an event that arrives "
        "when the last transaction began longer ago than this goes at once.",
    )
    kafka_request_timeout_ms: int = Field(15_000, gt=0)
    kafka_transaction_timeout_s: float = Field(
        30.0, gt=0, description="A transaction not committed by then is abandoned and retried."
    )
    max_record_bytes: int = Field(
        1_000_000, gt=0, description="Larger Kafka records go to the dead letters."
    )
    retention_s: int = Field(
        DEFAULT_RETENTION_S, gt=0, description="Forwarded events are pruned after this."
    )
    prune_interval_s: float = Field(
        60.0, gt=0, description="How often forwarded events past retention are pruned."
    )
    max_store_bytes: int | None = Field(
        None, gt=0, description="Store quota; ingest answers 503 when it is reached."
    )
    store_min_free_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Reserve on the store's device: ingest answers 503 while less is free "
        "(counting pages the store can reuse), so that forwarding, pruning and checkpoints, "
        "which free space, never run out of it. 0 disables the check.",
    )
    shutdown_drain_s: float = Field(
        5.0, ge=0, description="On shutdown, time given to forward the backlog."
    )
    shutdown_grace_s: int = Field(
        10,
        ge=0,
        description="On SIGTERM, time in-flight requests get to finish (then they are cut); the "
        "process exits within about shutdown_grace_s + shutdown_drain_s.",
    )
    # -- downstream: Kafka -> downstream log -> streams --
    channel_rules: str = Field(
        DEFAULT_CHANNEL_RULES_SPEC,
        description="topic=channel-template rules, comma-separated; their topics are consumed.",
    )
    cursor_key: SecretStr | None = Field(
        None,
        description="Key that signs stream cursors (at least 16 bytes); give every instance of "
        "a fleet the same one. Unset: a random key kept in <data_dir>/cursor.key.",
    )
    downstream_retention_s: int = Field(
        DEFAULT_RETENTION_S, gt=0, description="Updates older than this leave the local log."
    )
    downstream_start_from_latest: bool = Field(
        False, description="A partition the log has never seen starts at its end (not earliest)."
    )
    snapshot_families: list[str] = Field(
        default_factory=lambda: ["inventory"],
        description="Channel families with a compacted snapshot (GET /v1/snapshot).",
    )
    stream_queue_max: int = Field(
        1000, gt=0, description="Bound of each subscription's send queue (slow consumer above)."
    )
    stream_send_stall_timeout_s: float = Field(
        15.0, gt=0, description="Close a connection whose socket does not drain this long (4001)."
    )
    stream_max_subscriptions: int = Field(64, gt=0, description="Subscriptions per connection.")
    stream_idle_timeout_s: float = Field(
        60.0, gt=0, description="Close a connection with no subscription and no frame this long."
    )
    ws_ping_interval_s: float = Field(20.0, gt=0, description="Websocket keepalive ping interval.")
    ws_ping_timeout_s: float = Field(20.0, gt=0, description="Close when a ping gets no pong.")
    ws_max_frame_bytes: int = Field(
        MIB, gt=0, description="Largest websocket frame accepted from a client (1009 above)."
    )
    changes_max_wait_s: float = Field(30.0, gt=0, description="Longest long-poll of /v1/changes.")
    gc_freeze_interval_s: float = Field(
        DEFAULT_FREEZE_INTERVAL_S,
        ge=0,
        description="Seconds between two freezes of the objects that survived (out of the cycle "
        "collector's scans: bounded pauses at any connection count); 0: only at start-up.",
    )
    crash_point: str | None = Field(
        None,
        description="Testing only: exit abruptly at this named point: after_parse, "
        "mid_store_commit, after_store_commit (ingest), before_kafka_commit, after_kafka_commit "
        "(forwarder), mid_replay (streams).",
    )

    @model_validator(mode="after")
    def _check_limits(self) -> GatewayConfig:
        if (
            self.rate_limit_events_per_s > 0
            and self.rate_limit_events_burst < self.max_batch_events
        ):
            raise ValueError(
                "rate_limit_events_burst must be at least max_batch_events, or a full batch "
                "could never be admitted"
            )
        if 0 < self.gc_freeze_interval_s < MIN_FREEZE_INTERVAL_S:
            raise ValueError(
                f"gc_freeze_interval_s must be 0 (off) or at least {MIN_FREEZE_INTERVAL_S:g}: "
                "each freeze runs a collection"
            )
        return self

    @property
    def auth_configured(self) -> bool:
        return bool(self.jwt_algorithms)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "gateway.sqlite3"

    @property
    def downstream_path(self) -> Path:
        return (self.downstream_dir or self.data_dir) / "downstream.sqlite3"

    @property
    def cursor_key_path(self) -> Path:
        return self.data_dir / "cursor.key"
