"""The client SDK's one error tree.

Every error the SDK raises derives from :class:`SdkError`. Each class says whether trying the
same thing again later can succeed (``retriable``); the uploader retries retriable failures by
itself (with backoff) and never drops an event because of one::

    SdkError                         retriable?
    ├── InvalidEvent (ValueError)    no   publish() arguments that can never form an envelope
    ├── OutboxError                  no   the local outbox database failed
    │   └── OutboxClosed             no   used after close()
    ├── UploadError                  -    one upload of a batch failed (the batch stays pending)
    │   ├── ConnectionFailed         yes  no connection, reset, timeout, unreadable answer
    │   ├── ServerError              yes  5xx answer
    │   │   └── ServiceUnavailable   yes  503 / 429 with Retry-After (store full or failing)
    │   ├── BatchTooLarge            yes  413: the uploader halves the batch and sends again
    │   ├── TokenRefused             yes  401: the token source is asked again for the next try
    │   └── BatchRefused             no   400 / 415 / other 4xx: the request as a whole is wrong
    ├── FlushTimeout (TimeoutError)  yes  flush() ran out of time; what remains stays pending
    ├── ClientClosed                 no   the uploader or blocking client was closed
    ├── ProtocolError                no   the stream protocol was broken
    │   ├── ProtocolViolation        no   the server sent a frame not allowed there
    │   └── LocalProtocolError       no   (ValueError) the app asked for something not allowed
    └── StreamClosedByPolicy         no   closed with a code that forbids reconnecting in a loop

Whatever the error, an event acknowledged by ``publish()`` stays in the outbox until the
gateway has answered for it.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BatchRefused",
    "BatchTooLarge",
    "ClientClosed",
    "ConnectionFailed",
    "FlushTimeout",
    "InvalidEvent",
    "LocalProtocolError",
    "OutboxClosed",
    "OutboxError",
    "ProtocolError",
    "ProtocolViolation",
    "SdkError",
    "ServerError",
    "ServiceUnavailable",
    "StreamClosedByPolicy",
    "TokenRefused",
    "UploadError",
]


class SdkError(Exception):
    """Base of every error raised by the client SDK."""

    retriable: ClassVar[bool] = False
    """True when the same operation may succeed if tried again later."""


class InvalidEvent(SdkError, ValueError):
    """``publish()`` was given arguments that can never form a valid envelope (nothing stored)."""


class OutboxError(SdkError):
    """The local outbox database failed (disk full, file unreadable, ...)."""


class OutboxClosed(OutboxError):
    """The outbox was used after ``close()``."""


class UploadError(SdkError):
    """One upload of a batch failed; its events stay pending.

    ``status`` is the HTTP status when the gateway answered, ``code`` its machine-readable
    error code when it gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class ConnectionFailed(UploadError):
    """No answer usable: connection refused or reset, timeout, truncated or garbled answer.
    Retriable."""

    retriable = True


class ServerError(UploadError):
    """The gateway answered 5xx. Retriable."""

    retriable = True


class ServiceUnavailable(ServerError):
    """The gateway asked to come back later (503 or 429); ``retry_after`` in seconds, if it
    said. Retriable."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class BatchTooLarge(UploadError):
    """413: the batch exceeds the gateway's limits. Retriable with a smaller batch (the
    uploader halves it)."""

    retriable = True


class TokenRefused(UploadError):
    """The gateway refused the token (401: expired, malformed, wrong key...). Retriable: the
    next try asks the token source again (a static token keeps failing; see the state)."""

    retriable = True


class BatchRefused(UploadError):
    """The gateway refused the request as a whole (400, 415 or another 4xx): a client or
    configuration problem that repeating the same request will not fix. The events stay pending."""


class FlushTimeout(SdkError, TimeoutError):
    """``flush()`` did not upload everything in time; ``pending`` events remain (still safe in
    the outbox). Retriable."""

    retriable = True

    def __init__(self, message: str, *, pending: int):
        super().__init__(message)
        self.pending = pending


class ClientClosed(SdkError):
    """The uploader or blocking client was used after ``close()``."""


class ProtocolError(SdkError):
    """The stream protocol was broken (by the server or by the app)."""


class ProtocolViolation(ProtocolError):
    """The server sent a frame the protocol does not allow here (or not a frame at all)."""


class LocalProtocolError(ProtocolError, ValueError):
    """The client asked for something the protocol does not allow; nothing was sent."""


class StreamClosedByPolicy(SdkError):
    """The gateway closed the connection with a code that forbids reconnecting in a loop
    (``code``, ``reason``, ``retry_after_s``: when trying again makes sense, if ever)."""

    def __init__(self, code: int | None, reason: str, retry_after_s: float | None) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason
        self.retry_after_s = retry_after_s
