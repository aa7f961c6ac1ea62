"""Device-side SDK of the sync gateway: a durable outbox, resumable subscriptions.

Publishing (``Outbox`` + ``Uploader``, or ``BlockingOutboxClient`` from a plain script): an
event is durable on the device when ``publish()`` returns, and reaches the gateway exactly once
whatever the link does. Subscribing (``Subscriber`` + ``CursorStore``): updates of a channel are
handled in order, each once, across disconnects and restarts; ``StreamSession`` is the sans-I/O
protocol core both are built on (``docs/protocol.md``).
"""

from client_sdk.auth import TokenSource
from client_sdk.blocking import BlockingOutboxClient
from client_sdk.cursor_store import CursorStore
from client_sdk.errors import (
    ClientClosed,
    FlushTimeout,
    InvalidEvent,
    SdkError,
    StreamClosedByPolicy,
)
from client_sdk.outbox import Outbox
from client_sdk.protocol import StreamSession, Update, reconnect_policy
from client_sdk.records import NewEvent, OutboxStats, Receipt, ReceiptStatus, RejectedEvent
from client_sdk.states import ConnectionState, StateChange, StreamState, StreamStateChange
from client_sdk.subscriber import Subscriber
from client_sdk.uploader import Uploader

__all__ = [
    "BlockingOutboxClient",
    "ClientClosed",
    "ConnectionState",
    "CursorStore",
    "FlushTimeout",
    "InvalidEvent",
    "NewEvent",
    "Outbox",
    "OutboxStats",
    "Receipt",
    "ReceiptStatus",
    "RejectedEvent",
    "SdkError",
    "StateChange",
    "StreamClosedByPolicy",
    "StreamSession",
    "StreamState",
    "StreamStateChange",
    "Subscriber",
    "TokenSource",
    "Update",
    "Uploader",
    "reconnect_policy",
]
