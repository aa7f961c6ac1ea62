"""The OpenAPI description of the gateway's HTTP API, served at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

import gateway
from gateway.core.envelope import Envelope
from gateway.core.ingest import Status
from gateway.core.rejections import RejectCode

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "retriable"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "retriable": {"type": "boolean"},
                "reason": {
                    "type": "string",
                    "description": "Why authentication or authorization refused (401, 403).",
                },
            },
        }
    },
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}

_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_PUBLIC: list[dict[str, list[str]]] = []

_UPDATE = {
    "type": "object",
    "required": ["topic", "partition", "offset", "key", "timestamp", "data", "cursor"],
    "properties": {
        "topic": {"type": "string"},
        "partition": {"type": "integer", "minimum": 0},
        "offset": {"type": "integer", "minimum": 0},
        "key": {"type": ["string", "null"]},
        "timestamp": {"type": "integer"},
        "data": {"type": ["object", "null"], "description": "The envelope; null: tombstone."},
        "cursor": {"type": "string", "description": "Persist once this update is applied."},
    },
}

_CHANGES = {
    "type": "object",
    "required": ["channel", "cursor", "live", "reset", "events"],
    "properties": {
        "channel": {"type": "string"},
        "cursor": {"type": ["string", "null"], "description": "Where to poll from next."},
        "live": {"type": "boolean"},
        "reset": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["reason"],
                    "properties": {"reason": {"type": "string"}},
                },
            ]
        },
        "events": {"type": "array", "items": {"$ref": "#/components/schemas/Update"}},
    },
}

_SNAPSHOT = {
    "type": "object",
    "required": ["channel", "items", "cursor", "next"],
    "properties": {
        "channel": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "key_encoding", "topic", "partition", "offset", "data"],
                "properties": {
                    "key": {"type": ["string", "null"]},
                    "key_encoding": {"type": ["string", "null"]},
                    "topic": {"type": "string"},
                    "partition": {"type": "integer"},
                    "offset": {"type": "integer"},
                    "timestamp": {"type": "integer"},
                    "data": {"type": ["object", "null"]},
                },
            },
        },
        "cursor": {"type": "string", "description": "Stream from the first page's cursor."},
        "next": {"type": ["string", "null"], "description": "`after` of the next page."},
    },
}

_RESULT = {
    "type": "object",
    "required": ["index", "status"],
    "properties": {
        "index": {"type": "integer", "description": "Position of the event in the batch."},
        "status": {"type": "string", "enum": [s.value for s in Status]},
        "event_id": {"type": "string"},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [c.value for c in RejectCode]},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "Dotted path, e.g. payload.sku"},
            },
        },
    },
}


def _error_response(
    description: str, *, retry_after: bool = False, msgpack: bool = False
) -> dict[str, Any]:
    media = {"schema": {"$ref": "#/components/schemas/Error"}}
    content = {"application/json": media}
    if msgpack:
        content["application/msgpack"] = media
    response: dict[str, Any] = {"description": description, "content": content}
    if retry_after:
        response["headers"] = _RETRY_AFTER
    return response


def _auth_responses(*, msgpack: bool = False) -> dict[str, Any]:
    """Answers of the authentication middleware, on every route that needs a token."""
    return {
        "401": _error_response(
            "No token, or not a valid one (see WWW-Authenticate).", msgpack=msgpack
        ),
        "429": _error_response(
            "Over the token subject's request rate limit.", retry_after=True, msgpack=msgpack
        ),
    }


def _query(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> Any:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def openapi_document() -> dict[str, Any]:
    envelope = Envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    batch_media = {"schema": {"$ref": "#/components/schemas/Batch"}}
    result_media = {"schema": {"$ref": "#/components/schemas/BatchResult"}}
    changes_media = {"schema": {"$ref": "#/components/schemas/Changes"}}
    channel = _query("channel", {"type": "string"}, "Channel, e.g. `inventory:S1`.", required=True)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sync gateway", "version": gateway.__version__},
        "security": _BEARER,
        "paths": {
            "/v1/events": {
                "post": {
                    "summary": "Publish a batch of events",
                    "description": (
                        "Answered only once every accepted event is durable in the local store. "
                        "One result per event, in batch order. The answer is in the Accept "
                        "header's media type, else the body's."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": batch_media,
                            "application/msgpack": batch_media,
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Every accepted event is durable.",
                            "content": {
                                "application/json": result_media,
                                "application/msgpack": result_media,
                            },
                        },
                        "400": _error_response("Malformed body.", msgpack=True),
                        **_auth_responses(msgpack=True),
                        "408": _error_response("The body did not arrive in time.", msgpack=True),
                        "413": _error_response("Body or batch too large.", msgpack=True),
                        "415": _error_response("Unsupported Content-Type."),
                        "503": _error_response(
                            "Store cannot commit now; see Retry-After.",
                            retry_after=True,
                            msgpack=True,
                        ),
                    },
                }
            },
            "/v1/changes": {
                "get": {
                    "summary": "Long-poll the updates of one channel after a cursor",
                    "parameters": [
                        channel,
                        _query("cursor", {"type": "string"}, "Resume after; none: from now."),
                        _query("wait", {"type": "number", "minimum": 0}, "Longest wait, s."),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 1000},
                            "Most updates in the answer.",
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "Updates, the next cursor, or a reset.",
                            "content": {
                                "application/json": changes_media,
                                "application/msgpack": changes_media,
                            },
                        },
                        "400": _error_response(
                            "Invalid channel, cursor, wait or limit.", msgpack=True
                        ),
                        **_auth_responses(msgpack=True),
                        "403": _error_response("The token does not allow this channel."),
                    },
                }
            },
            "/v1/snapshot": {
                "get": {
                    "summary": "The current state of one channel, page by page",
                    "parameters": [
                        channel,
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 1000},
                            "Most items in the page.",
                        ),
                        _query(
                            "after",
                            {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"},
                            "The `next` of the previous page.",
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "One page of the channel's latest update per key.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Snapshot"}
                                }
                            },
                        },
                        "400": _error_response("Invalid channel, limit or after."),
                        **_auth_responses(),
                        "403": _error_response("The token does not allow this channel."),
                        "404": _error_response("The channel's family keeps no snapshot."),
                        "503": _error_response(
                            "The log cannot be read now; see Retry-After.", retry_after=True
                        ),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "security": _PUBLIC,
                    "responses": {
                        "200": {
                            "description": "Up",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: store open; Kafka link state reported, not required",
                    "security": _PUBLIC,
                    "responses": {
                        "200": {
                            "description": "Ready",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "503": {
                            "description": "Not ready",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (public when the gateway says so)",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_auth_responses(),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This description (public when the metrics are)",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_auth_responses(),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "`Authorization: Bearer <token>` on every non-public route.",
                }
            },
            "schemas": {
                "Envelope": envelope,
                "Batch": {
                    "type": "object",
                    "required": ["events"],
                    "additionalProperties": False,
                    "properties": {
                        "events": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Envelope"},
                        }
                    },
                },
                "EventResult": _RESULT,
                "BatchResult": {
                    "type": "object",
                    "required": ["results", *[s.value for s in Status]],
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/EventResult"},
                        },
                        **{s.value: {"type": "integer"} for s in Status},
                    },
                },
                "Update": _UPDATE,
                "Changes": _CHANGES,
                "Snapshot": _SNAPSHOT,
                "Error": _ERROR,
            },
        },
    }
