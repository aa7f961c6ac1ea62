"""schemathesis against a real gateway process over HTTP, driven by the gateway's own OpenAPI
description (``GET /openapi.json``, fetched with a token).

For every operation the description lists, schemathesis generates requests that fit it
(positive) and requests that do not (negative), each sent with a valid bearer token, and checks
every answer: never a server error, and a status code, content type, headers and body that the
description declares. Bounded: a few dozen examples per operation and mode (``--long``: many
more); ``/v1/changes`` long-polls are capped by ``changes_max_wait_s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.adapters.jwt_auth import JwtSettings, mint
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.integration.gateway_client import streaming_gateway
from tests.integration.kafka_topics import TestTopics

pytestmark = pytest.mark.integration

SECRET = "openapi-fuzz-hs256-secret-0123456789abcdef"
JWT = JwtSettings(algorithms=("HS256",), secret=SECRET)

SHORT_EXAMPLES = 25
"""Examples per operation and generation mode in the default (CI) run."""
LONG_EXAMPLES = 500

EXPECTED_OPERATIONS = {
    "POST /v1/events",
    "GET /v1/changes",
    "GET /v1/snapshot",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /openapi.json",
}
"""Operations the description must list (a missing one would not be fuzzed at all)."""

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schemathesis.serializer("application/msgpack")
def _msgpack_body(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):  # negative data: ints over 64 bits
        return b"\xc1"  # a byte msgpack never uses: a malformed body
    return packed


@schemathesis.deserializer("application/msgpack")
def _msgpack_answer(ctx: schemathesis.DeserializationContext, response: Any) -> Any:
    return msgpack.unpackb(response.content, raw=False, strict_map_key=False)


@pytest.fixture(scope="module")
def gateway(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    settings = TestTopics().settings(kafka_broker.bootstrap) | {
        "jwt_algorithms": '["HS256"]',
        "jwt_secret": SECRET,
        "changes_max_wait_s": "0.2",
        "rate_limit_requests_per_s": "100000",
        "rate_limit_requests_burst": "100000",
        "rate_limit_events_per_s": "1000000",
        "rate_limit_events_burst": "1000000",
    }
    with streaming_gateway(tmp_path_factory.mktemp("gw"), settings) as gw:
        yield gw


@pytest.fixture(scope="module")
def token() -> str:
    return mint(JWT, "device-1", channels=["orders:*", "inventory:*"], publish=["*"], ttl_s=3600)


@pytest.fixture(scope="module")
def description(gateway: GatewayProcess, token: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{gateway.url}/openapi.json", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def test_openapi_json_needs_a_token_unless_public(gateway: GatewayProcess) -> None:
    answer = httpx.get(f"{gateway.url}/openapi.json", timeout=30)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"


def test_the_description_lists_every_http_operation(description: dict[str, Any]) -> None:
    listed = {
        f"{method.upper()} {path}"
        for path, operations in description["paths"].items()
        for method in operations
    }
    assert listed >= EXPECTED_OPERATIONS


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_server_error_and_no_nonconforming_answer(
    gateway: GatewayProcess,
    token: str,
    description: dict[str, Any],
    long_run: bool,
    mode: GenerationMode,
) -> None:
    schema = schemathesis.openapi.from_dict(description)
    headers = {"Authorization": f"Bearer {token}"}
    examples = LONG_EXAMPLES if long_run else SHORT_EXAMPLES
    failures: list[str] = []
    tested: set[str] = set()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                failures.append(f"invalid operation in the description: {result.err()}")
                continue
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            tested.add(label)
            problem = _fuzz_operation(
                operation.as_strategy(mode), gateway, session, headers, examples
            )
            if problem is not None:
                failures.append(f"{label} ({mode.value}): {problem}")
    assert tested >= EXPECTED_OPERATIONS
    assert not failures, _report(failures, gateway.log_path)


def _fuzz_operation(
    strategy: Any,
    gateway: GatewayProcess,
    session: requests.Session,
    headers: dict[str, str],
    examples: int,
) -> str | None:
    """Run one operation's cases; the first failure found (shrunk by hypothesis), else None."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Case[Any]) -> None:
        response = case.call(base_url=gateway.url, session=session, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        check()
    except Unsatisfiable:
        return None  # no negative case exists (an operation without parameters or body)
    except (AssertionError, FailureGroup) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _report(failures: list[str], log_path: Path) -> str:
    tail = log_path.read_text(errors="replace")[-6000:] if log_path.exists() else ""
    return "\n\n".join(failures) + f"\n\n--- gateway log tail ---\n{tail}"
