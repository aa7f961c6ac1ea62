"""What a Kafka broker's work directory holds before the broker starts: its server.properties
(a one-node KRaft cluster on loopback, broker and controller in one process), a quiet
log4j2.yaml, and its storage, formatted once with a new cluster id.

:class:`~gateway.testing.kafka_broker.KafkaBroker` writes and formats it with these.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from gateway.testing.ports import LOOPBACK

# Quiet: warnings and errors only, plus the one line saying the server has started.
LOG4J2_YAML: Final = """\
Configuration:
  status: warn
  shutdownHook: disable
  Appenders:
    Console:
      name: STDOUT
      target: SYSTEM_OUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
        additivity: false
        AppenderRef:
          - ref: STDOUT
"""


def one_node_properties(
    *,
    port: int,
    controller_port: int,
    internal_port: int | None,
    advertised_bootstrap: str,
    data_dir: Path,
) -> dict[str, str]:
    """The server properties of a one-node loopback cluster; with ``internal_port``, the
    broker's own traffic goes through a third, direct listener on it."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{advertised_bootstrap}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.check.interval.ms": "5000",
    }
    if internal_port is not None:
        internal = f"INTERNAL://{LOOPBACK}:{internal_port}"
        props["listeners"] += f",{internal}"
        props["advertised.listeners"] += f",{internal}"
        props["listener.security.protocol.map"] += ",INTERNAL:PLAINTEXT"
        props["inter.broker.listener.name"] = "INTERNAL"
    return props


def write_properties(path: Path, properties: Mapping[str, str]) -> None:
    """``properties`` as a Java properties file."""
    lines = [f"{key}={_escape_property(value)}" for key, value in properties.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def storage_formatted(data_dir: Path) -> bool:
    """Whether the data directory has been formatted (holds meta.properties)."""
    return (data_dir / "meta.properties").is_file()


def format_storage(
    java: str,
    classpath: str,
    log4j: str,
    *,
    properties_path: Path,
    data_dir: Path,
    log_path: Path,
    timeout: float,
) -> None:
    """Format ``data_dir`` for the cluster of ``properties_path`` with a new cluster id (a
    format that never completed is started over); the tool's output goes to ``log_path``."""
    if data_dir.exists():  # a format that never completed: start over
        shutil.rmtree(data_dir)
    argv = [
        java,
        "-Xmx256m",
        "-XX:TieredStopAtLevel=1",
        log4j,
        "-cp",
        classpath,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _new_cluster_id(),
        "-c",
        str(properties_path),
    ]
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"formatting Kafka storage took over {timeout:g} s") from exc
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(result.stdout + result.stderr)
    if result.returncode != 0 or not storage_formatted(data_dir):
        raise RuntimeError(
            f"kafka.tools.StorageTool format failed (exit code {result.returncode}):\n"
            f"{(result.stdout + result.stderr).strip()[-4000:]}"
        )


def _new_cluster_id() -> str:
    """16 random bytes, base64url without padding, not starting with '-' (as Kafka's Uuid)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _escape_property(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
