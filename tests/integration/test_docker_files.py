"""The deployment files under docker/: the compose file is valid for the real Docker Compose v2
(``docker compose config``, no engine needed), it only uses configuration variables the gateway
knows, the Grafana dashboard queries only metrics the gateway exports, and the image's entrypoint
is a console script of the package."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric

from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DASHBOARD = DOCKER / "grafana" / "sync-gateway-dashboard.json"
HAPROXY_CFG = DOCKER / "haproxy.cfg"
PROMETHEUS_CFG = DOCKER / "prometheus" / "prometheus.yml"

PROFILES = [None, "monitoring"]
ENV_PREFIX = "SYNC_GATEWAY_"
GATEWAYS = ("gateway-1", "gateway-2")
# A stand-in for the secret compose requires from the environment (never a default in the file).
TEST_JWT_SECRET = "test-only-jwt-secret-0123456789abcdef0123456789abcdef"

# What the dashboard must show (issue 7, item 5), by metric family name.
DASHBOARD_REQUIRED = {
    "sync_gateway_ingest_events",
    "sync_gateway_ingest_ack_seconds",
    "sync_gateway_backlog_events",
    "sync_gateway_backlog_oldest_age_seconds",
    "sync_gateway_forwarded_events",
    "sync_gateway_forward_seconds",
    "sync_gateway_kafka_link_up",
    "sync_gateway_dlq_events",
    "sync_gateway_stream_connections",
    "sync_gateway_stream_subscriptions",
    "sync_gateway_stream_updates_delivered",
    "sync_gateway_stream_resets",
    "sync_gateway_stream_slow_consumer_closes",
    "sync_gateway_downstream_consumer_lag",
    "sync_gateway_downstream_work_seconds",
    "sync_gateway_gc_pause_seconds",
}
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
_METRIC_NAME = re.compile(r"\bsync_gateway_[a-z0-9_]+")


# -- running docker compose --


def _docker() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH: the docker/ files are not checked by compose")
    return docker


def _compose_env(*, jwt_secret: str | None = TEST_JWT_SECRET) -> dict[str, str]:
    """The caller's environment without SYNC_GATEWAY_* (compose interpolates those)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    if jwt_secret is not None:
        env["SYNC_GATEWAY_JWT_SECRET"] = jwt_secret
    return env


def _compose(
    *args: str, profile: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    docker = _docker()
    command = [docker, "compose", "-f", str(COMPOSE_FILE)]
    if profile is not None:
        command += ["--profile", profile]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=dict(env if env is not None else _compose_env()),
    )


@pytest.fixture(scope="module")
def compose_plugin() -> str:
    """The version of the real Docker Compose v2 plugin; fails (does not skip) without it."""
    version = subprocess.run(
        [_docker(), "compose", "version", "--short"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert version.returncode == 0, (
        "docker is installed but `docker compose` is not: run `make docker-compose` "
        f"(it builds the Compose v2 plugin).\n{version.stderr}"
    )
    text = version.stdout.strip().removeprefix("v")
    assert text.startswith("2."), f"expected Docker Compose v2, got {text!r}"
    return text


@pytest.fixture(scope="module")
def compose_model(compose_plugin: str) -> dict[str, Any]:
    """The compose project as Compose resolves it (all profiles), as JSON."""
    result = _compose("config", "--format", "json", profile="monitoring")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def _services(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = model["services"]
    return services


def _environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    environment: dict[str, str | None] = service.get("environment") or {}
    return environment


# -- compose --


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_config_is_valid(compose_plugin: str, profile: str | None) -> None:
    result = _compose("config", "--quiet", profile=profile)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_run_without_a_jwt_secret(compose_plugin: str) -> None:
    result = _compose("config", "--quiet", env=_compose_env(jwt_secret=None))
    assert result.returncode != 0
    assert "SYNC_GATEWAY_JWT_SECRET" in result.stderr


def test_compose_monitoring_profile_adds_prometheus_and_grafana(
    compose_plugin: str, compose_model: dict[str, Any]
) -> None:
    plain = _compose("config", "--services")
    assert plain.returncode == 0, plain.stderr
    default_services = set(plain.stdout.split())
    assert {"kafka", "redis", "lb", *GATEWAYS} <= default_services
    assert not {"prometheus", "grafana"} & default_services
    assert {"prometheus", "grafana"} <= set(_services(compose_model))


def test_compose_gateway_variables_are_config_fields(compose_model: dict[str, Any]) -> None:
    fields = set(GatewayConfig.model_fields)
    used: set[str] = set()
    for name, service in _services(compose_model).items():
        for variable in _environment(service):
            if variable.startswith(ENV_PREFIX):
                used.add(variable)
                field = variable.removeprefix(ENV_PREFIX).lower()
                assert field in fields, f"{name}: {variable} is not a GatewayConfig field"
    assert used, "no SYNC_GATEWAY_* variable found in compose.yaml"


@pytest.mark.parametrize("service", GATEWAYS)
def test_compose_gateway_environment_is_a_valid_config(
    compose_model: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values parse too (e.g. list settings are JSON), as the gateway will read them."""
    for variable in list(os.environ):
        if variable.startswith(ENV_PREFIX):
            monkeypatch.delenv(variable)
    environment = _environment(_services(compose_model)[service])
    for variable, value in environment.items():
        if variable.startswith(ENV_PREFIX) and value is not None:
            monkeypatch.setenv(variable, value)
    config = GatewayConfig()
    assert config.host == "0.0.0.0"
    assert config.instance_id == service
    assert config.redis_url is not None
    assert config.jwt_algorithms == ["HS256"]
    assert config.jwt_secret is not None
    assert config.jwt_secret.get_secret_value() == TEST_JWT_SECRET


def test_compose_gateways_form_one_fleet(compose_model: dict[str, Any]) -> None:
    services = _services(compose_model)
    envs = [_environment(services[name]) for name in GATEWAYS]
    instance_ids = {env["SYNC_GATEWAY_INSTANCE_ID"] for env in envs}
    assert len(instance_ids) == len(GATEWAYS), "each instance needs its own instance id"
    cursor_keys = {env["SYNC_GATEWAY_CURSOR_KEY"] for env in envs}
    assert len(cursor_keys) == 1, "every instance must share the cursor key"
    (cursor_key,) = cursor_keys
    assert cursor_key is not None
    assert len(cursor_key.encode()) >= 16
    for key in ("SYNC_GATEWAY_KAFKA_BOOTSTRAP", "SYNC_GATEWAY_REDIS_URL"):
        assert {env[key] for env in envs} != {None}, key
        assert len({env[key] for env in envs}) == 1, f"{key} differs between instances"

    data_sources = []
    for name in GATEWAYS:
        service = services[name]
        build = service["build"]
        assert Path(build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
        data_dir = _environment(service)["SYNC_GATEWAY_DATA_DIR"]
        mounts = [v for v in service.get("volumes", []) if v["target"] == data_dir]
        assert len(mounts) == 1, f"{name}: its data dir {data_dir} is not a volume"
        assert mounts[0]["type"] == "volume"
        data_sources.append(mounts[0]["source"])
    assert len(set(data_sources)) == len(GATEWAYS), "instances must not share a store"


def test_load_balancer_checks_readiness_of_every_gateway(compose_model: dict[str, Any]) -> None:
    config = HAPROXY_CFG.read_text()
    assert re.search(r"http-check send meth GET uri /readyz\b", config)
    assert "timeout tunnel" in config, "websockets need a tunnel timeout"
    servers = set(re.findall(r"^\s*server\s+\S+\s+([\w.-]+):8080\b", config, re.MULTILINE))
    assert servers == set(GATEWAYS)
    assert set(GATEWAYS) <= set(_services(compose_model))
    mounts = _services(compose_model)["lb"]["volumes"]
    assert any(Path(m["source"]) == HAPROXY_CFG for m in mounts)


def test_prometheus_scrapes_every_gateway() -> None:
    targets = set(re.findall(r"\b(gateway-\d+):8080\b", PROMETHEUS_CFG.read_text()))
    assert targets == set(GATEWAYS)


# -- Grafana dashboard --


def _exported_names() -> set[str]:
    """Every sample name a fresh GatewayMetrics registry can expose on /metrics."""
    names: set[str] = set()
    family: Metric
    for family in GatewayMetrics().registry.collect():
        names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def _family_names() -> set[str]:
    return {family.name for family in GatewayMetrics().registry.collect()}


def _queries(node: object) -> Iterator[str]:
    """Every PromQL text of a dashboard: panel targets and templating queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"expr", "definition", "query"} and isinstance(value, str):
                yield value
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _queries(item)


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def test_dashboard_queries_only_exported_metrics() -> None:
    queries = list(_queries(_dashboard()))
    assert queries
    referenced = {name for query in queries for name in _METRIC_NAME.findall(query)}
    unknown = referenced - _exported_names()
    assert not unknown, f"dashboard queries metrics the gateway does not export: {unknown}"


def test_dashboard_shows_every_required_metric() -> None:
    assert _family_names() >= DASHBOARD_REQUIRED, "a required metric left gateway/metrics.py"
    text = "\n".join(_queries(_dashboard()))
    referenced = {name for name in _METRIC_NAME.findall(text)}
    families = {
        family
        for family in DASHBOARD_REQUIRED
        for name in referenced
        if name == family or re.fullmatch(re.escape(family) + r"_(total|bucket|sum|count)", name)
    }
    assert families == DASHBOARD_REQUIRED, DASHBOARD_REQUIRED - families
    for quantile in ("0.5", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(" in text
        assert "sync_gateway_ingest_ack_seconds_bucket" in text


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


# -- Dockerfile --


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_entrypoint_is_a_console_script() -> None:
    entrypoints = [args for keyword, args in _final_stage() if keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    command = json.loads(entrypoints[0])
    assert command == ["sync-gateway", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts


def test_dockerfile_image_shape() -> None:
    instructions = _dockerfile_instructions()
    final = _final_stage()
    assert instructions[0] == ("ARG", "PYTHON_IMAGE=python:3.11-slim")
    assert any(k == "RUN" and re.search(r"\bpip install \.(\s|$)", a) for k, a in instructions)
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the gateway must not run as root"
    assert users[-1] not in {"root", "0"}, "the gateway must not run as root"
    assert ("EXPOSE", "8080") in final
    healthchecks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0]

    env: dict[str, str] = {}
    for keyword, args in final:
        if keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    fields = set(GatewayConfig.model_fields)
    for variable in env:
        if variable.startswith(ENV_PREFIX):
            assert variable.removeprefix(ENV_PREFIX).lower() in fields, variable
    assert env["SYNC_GATEWAY_HOST"] == "0.0.0.0"
    volumes = [json.loads(args) for keyword, args in final if keyword == "VOLUME"]
    assert [env["SYNC_GATEWAY_DATA_DIR"]] in volumes, "the data dir must be a VOLUME"
    schema_dir = env["SYNC_GATEWAY_SCHEMA_DIR"]
    assert ("COPY", f"schemas {schema_dir}") in final, "the schemas must be in the image"


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".cache", "var", ".git"} <= patterns
    for needed in ("pyproject.toml", "README.md", "gateway", "client_sdk", "schemas"):
        assert needed not in patterns, f"{needed} is needed by the image"
