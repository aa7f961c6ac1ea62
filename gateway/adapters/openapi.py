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
            },
        }
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


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def openapi_document() -> dict[str, Any]:
    envelope = Envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    batch_media = {"schema": {"$ref": "#/components/schemas/Batch"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sync gateway", "version": gateway.__version__},
        "paths": {
            "/v1/events": {
                "post": {
                    "summary": "Publish a batch of events",
                    "description": (
                        "Answered only once every accepted event is durable in the local store. "
                        "One result per event, in batch order."
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
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/BatchResult"}
                                }
                            },
                        },
                        "400": _error_response("Malformed body."),
                        "413": _error_response("Body or batch too large."),
                        "415": _error_response("Unsupported Content-Type."),
                        "503": _error_response("Store cannot commit now; see Retry-After."),
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "Up"}}}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: store open; Kafka link state reported, not required",
                    "responses": {"200": {"description": "Ready"}, "503": {"description": "Not"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "OK"}},
                }
            },
        },
        "components": {
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
                "Error": _ERROR,
            }
        },
    }
