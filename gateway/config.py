"""The gateway's one configuration object.

Every setting comes from a ``SYNC_GATEWAY_<NAME>`` environment variable or the matching
``--<name>`` flag of ``sync-gateway serve``; the defaults below are the named defaults.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.schemas import default_schema_root

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
    kafka_bootstrap: str = Field(DEFAULT_KAFKA_BOOTSTRAP, description="Kafka bootstrap servers.")
    redis_url: str | None = Field(
        None, description="Redis URL for fleet-wide dedup; unset means a single instance."
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=200,
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

    @property
    def store_path(self) -> Path:
        return self.data_dir / "gateway.sqlite3"
