"""The key that signs stream cursors: the configured ``cursor_key``, else a random one made
once and kept in the data directory (``cursor.key``). Every instance of a fleet needs the same
key for a cursor to resume on any of them."""

from __future__ import annotations

import logging
import os

from gateway.config import GatewayConfig
from gateway.core.cursor import MIN_KEY_BYTES
from gateway.errors import ConfigError

log = logging.getLogger("gateway.app")
"""The wiring's logger, under which the made-a-key warning has always been logged."""


def cursor_key(config: GatewayConfig) -> bytes:
    """The configured cursor key, else the one kept in the data directory (made once)."""
    if config.cursor_key is not None:
        key = config.cursor_key.get_secret_value().encode()
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"cursor_key must be at least {MIN_KEY_BYTES} bytes")
        return key
    path = config.cursor_key_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(os.urandom(32).hex().encode())
            file.flush()
            os.fsync(file.fileno())
        log.warning(
            "no cursor_key configured: made %s; give every instance of a fleet the same key",
            path,
        )
    return path.read_bytes().strip()
