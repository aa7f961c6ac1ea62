"""Logging: one JSON object per line (or plain text for development), each line of a request
carrying that request's correlation id."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final, Literal

CORRELATION_ID: ContextVar[str | None] = ContextVar("sync_gateway_correlation_id", default=None)
"""The correlation id of the request the current task serves (set by the HTTP edge)."""

LogFormat = Literal["json", "text"]


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "instance", "correlation_id"?, "exception"?}``."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "instance": self.instance,
        }
        correlation = CORRELATION_ID.get()
        if correlation is not None:
            line["correlation_id"] = correlation
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        correlation = CORRELATION_ID.get()
        return text if correlation is None else f"{text} [correlation_id={correlation}]"


KAFKA_TRANSIENT_ERRORS: Final = (
    "NotLeaderForPartitionError",
    "LeaderNotAvailableError",
    "NotCoordinatorForGroupError",
    "CoordinatorLoadInProgressError",
)
"""Errors aiokafka logs at ERROR level and then retries by itself (e.g. while a topic just
created elects its leader): warnings, not errors, for whoever alerts on error lines."""


def demote_transient_kafka_errors(record: logging.LogRecord) -> bool:
    """A logging filter: aiokafka's retried :data:`KAFKA_TRANSIENT_ERRORS` become warnings."""
    if (
        record.levelno == logging.ERROR
        and record.name.startswith("aiokafka")
        and any(name in record.getMessage() for name in KAFKA_TRANSIENT_ERRORS)
    ):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def configure_logging(level: str, fmt: LogFormat, instance: str) -> None:
    """Route every logger (uvicorn's too) to stderr in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(demote_transient_kafka_errors)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(instance))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
