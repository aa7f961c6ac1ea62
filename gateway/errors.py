"""The gateway's one error tree. Third-party errors are translated at the adapter boundary
(``raise StoreUnavailable(...) from exc``) so that flows only ever see these::

    GatewayError
    ├── RequestError              the client's request is refused as a whole; nothing is acked
    │   ├── MalformedBody           400: body is not valid JSON / msgpack, or not {"events": [...]}
    │   ├── BodyTooLarge            413: body over max_body_bytes (refused before it is read whole)
    │   ├── BodyTimeout             408: the body did not arrive within body_timeout_s
    │   ├── BatchTooLarge           413: more events than max_batch_events
    │   ├── UnsupportedMediaType    415: neither application/json nor application/msgpack
    │   ├── InvalidParameter        400: a query parameter is missing or malformed
    │   ├── SnapshotUnavailable     404: the channel's family keeps no snapshot
    │   ├── RateLimited             429 + Retry-After, retriable: over the subject's rate limit
    │   └── InFlightElsewhere       503 + Retry-After, retriable: another instance of the fleet
    │                               is storing one of the batch's events right now
    ├── AuthError                 a request refused by authentication or authorization
    │   ├── Unauthorized            401: no token, or not a valid one (never quoted in errors)
    │   └── Forbidden               403: a valid token that does not allow this
    ├── StoreError
    │   ├── StoreUnavailable        retriable: disk full, I/O error, closing (503 + Retry-After)
    │   └── StoreCorrupt            not retriable: the database fails its integrity check
    ├── KafkaError
    │   ├── KafkaUnavailable        retriable: unreachable, timed out, wedged; rebuild and retry
    │   ├── KafkaFenced             retriable: a newer producer took our transactional id
    │   └── RecordsRefused          some records can never be written (too large, invalid)
    ├── StreamError               a stream subscription or cursor cannot go on as asked
    │   ├── InvalidCursor           not retriable: garbage, forged or out-of-bounds cursor token
    │   ├── FrameError              a client frame refused (malformed, unknown type, bad field)
    │   └── IllegalTransition       a bug: a subscription's state machine refuses an event
    ├── FleetError
    │   └── FleetDedupUnavailable   retriable: Redis does not answer; go on with local dedup
    ├── SchemaRegistryError       a schema file or directory is malformed (at start-up)
    └── ConfigError               the configuration cannot work

``retriable`` tells a caller whether the same request may succeed later unchanged.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    retriable: ClassVar[bool] = False


class RequestError(GatewayError):
    """A request refused as a whole, with an HTTP status and a machine-readable code."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"


class MalformedBody(RequestError):
    status = 400
    code = "malformed_body"


class BodyTooLarge(RequestError):
    status = 413
    code = "body_too_large"


class BodyTimeout(RequestError):
    status = 408
    code = "body_timeout"


class BatchTooLarge(RequestError):
    status = 413
    code = "batch_too_large"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


class InvalidParameter(RequestError):
    """A query parameter is missing or malformed."""

    status = 400
    code = "invalid_parameter"


class SnapshotUnavailable(RequestError):
    """The channel's family keeps no snapshot (it is not a snapshot family of the log)."""

    status = 404
    code = "snapshot_unavailable"


class RateLimited(RequestError):
    """429: the caller is over its rate limit; ``retry_after_s`` says when to try again."""

    status = 429
    code = "rate_limited"
    retriable = True

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InFlightElsewhere(RequestError):
    """503: another instance of the fleet holds a pending claim on an event of the batch (it
    is storing it now); retry shortly and the event is ``duplicate`` or, if that instance
    failed, accepted here."""

    status = 503
    code = "in_flight_elsewhere"
    retriable = True
    retry_after_s = 1


class AuthError(GatewayError):
    """A request refused by authentication or authorization.

    ``reason`` is short and machine-readable (``missing_token``, ``expired``, ``bad_claims``,
    ...); it and the message never contain the token itself.
    """

    status: ClassVar[int] = 401
    code: ClassVar[str] = "unauthorized"

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message if message is not None else reason)
        self.reason = reason


class Unauthorized(AuthError):
    """401: no token, or a token that is not valid (signature, time, audience, claims)."""

    status = 401
    code = "unauthorized"


class Forbidden(AuthError):
    """403: a valid token that does not allow this (another tenant, channel or event type)."""

    status = 403
    code = "forbidden"


class StoreError(GatewayError):
    """The local store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The store cannot commit now (disk full, I/O error, closing); try again later."""

    retriable = True


class StoreCorrupt(StoreError):
    """The store's database is damaged; the gateway refuses to use it."""


class KafkaError(GatewayError):
    """The Kafka link failed; nothing of the current transaction is committed."""


class KafkaUnavailable(KafkaError):
    """Kafka cannot be reached or did not answer in time; rebuild the producer and retry."""

    retriable = True


class KafkaFenced(KafkaError):
    """Another producer with our transactional id took over; rebuild and re-read the position."""

    retriable = True


class RecordsRefused(KafkaError):
    """Kafka refuses these records for good; the transaction was aborted, nothing committed."""

    def __init__(self, refused: dict[int, str]) -> None:
        super().__init__(f"{len(refused)} record(s) refused for good")
        self.refused = refused
        """Local sequence -> reason."""


class StreamError(GatewayError):
    """A downstream stream request (subscribe, cursor, long-poll) cannot go on as asked."""

    code: ClassVar[str] = "stream_error"


class InvalidCursor(StreamError):
    """A cursor token that is not one this gateway fleet issued, or not usable as such.

    Not retriable: the same token always fails. ``reason`` says why, for logs and error frames
    (``malformed``, ``too_large``, ``unsupported_version``, ``bad_signature``,
    ``invalid_position``); the client should treat it as a reset: re-snapshot, then stream from
    the snapshot's cursor.
    """

    code = "invalid_cursor"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FrameError(StreamError):
    """A client frame of the stream protocol that is refused; the connection goes on.

    ``error_code`` is the machine-readable code of the ``error`` frame; ``sub`` / ``req``
    name the subscription or request it concerns when the frame said so.
    """

    def __init__(
        self, error_code: str, message: str, *, sub: str | None = None, req: str | None = None
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.sub = sub
        self.req = req


class IllegalTransition(StreamError):
    """An event a subscription's state machine does not allow in its current state (a bug)."""

    code = "illegal_transition"


class FleetError(GatewayError):
    """The fleet's shared state (Redis) cannot be used."""


class FleetDedupUnavailable(FleetError):
    """Redis could not answer (down, slow, refusing): go on with local dedup only."""

    retriable = True


class SchemaRegistryError(GatewayError):
    """A schema file or directory under the schema root is malformed."""


class ConfigError(GatewayError):
    """The configuration cannot work (e.g. a missing directory or key)."""
