import pytest

from gateway.core.trace import correlation_id, parse_traceparent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        VALID.upper(),  # W3C: lowercase hex only
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        VALID + "-extra",
        VALID[:-1],
    ],
)
def test_malformed_traceparents_are_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_a_valid_traceparent_is_kept() -> None:
    assert parse_traceparent(f" {VALID} ") == VALID


def test_correlation_id_prefers_the_clients_then_the_trace_id() -> None:
    assert correlation_id("order-flow-7", VALID) == "order-flow-7"
    assert correlation_id("bad id with spaces", VALID) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert correlation_id("x" * 129, None) != "x" * 129
    fresh = correlation_id(None, None)
    assert len(fresh) == 32
    assert fresh != correlation_id(None, None)
