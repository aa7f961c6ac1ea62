"""Session-wide real servers (one Kafka broker, one Redis) and the --long flag."""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis  # noqa: F401  (imported early: a late import from the hypothesis plugin's
import pytest  #                  terminal summary trips CPython 3.11.7's AST recursion check)

from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.redis_server import RedisServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long forms of load and fault scenarios (minutes each)",
    )


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """True when the long forms of scenarios were asked for with --long."""
    return bool(request.config.getoption("--long"))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
