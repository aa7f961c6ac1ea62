"""A real single-node Apache Kafka broker (KRaft, combined broker+controller) on loopback.

The broker runs from the jars of Maven Central (`kafka-pom.xml` next to this file), fetched once
by `mvn` into a cache directory, on the installed Java 17. `KafkaBroker` is a synchronous handle
usable from pytest fixtures, benchmarks and the command line::

    python -m gateway.testing.kafka_broker fetch-jars
    python -m gateway.testing.kafka_broker run --data-dir var/kafka --port 9092

`run` keeps its data directory between runs (the persistent development broker of `make run`).
What the work directory holds (properties, log4j2 configuration, formatted storage) is
:mod:`gateway.testing.kafka_workdir`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from gateway.testing.kafka_jars import (
    ToolchainMissingError,
    ensure_jars,
    find_java,
    has_kafka_jars,
)
from gateway.testing.kafka_readiness import NotReady, run_in_private_loop, wait_until_ready
from gateway.testing.kafka_workdir import (
    LOG4J2_YAML,
    format_storage,
    one_node_properties,
    storage_formatted,
    write_properties,
)
from gateway.testing.ports import (
    LOOPBACK,
    ChildProcess,
    ServerProcess,
    free_ports,
    port_is_bindable,
    wait_for_port,
)


class KafkaBroker(ServerProcess):
    """One real Kafka 4.x node (broker and controller) on 127.0.0.1, living in `workdir`.

    `workdir` holds server.properties, log4j2.yaml, broker.log and the data directory `data/`.
    Storage is formatted on the first start only, so stop()/start() keeps topics and committed
    data. Ports are chosen at construction, so a restart keeps the bootstrap address.

    `advertised_port` / `advertised_host` (default: the broker's own port and 127.0.0.1) make
    the broker advertise another address to clients, e.g. a fault-injecting proxy relaying to
    `port`: clients that bootstrap anywhere then talk to the broker through that address. It
    must relay to the broker before start() (the readiness check follows the advertisement).
    The broker's own inter-broker traffic (e.g. transaction markers to itself) then uses a
    third, direct listener (`internal_port`), so that only clients go through that address.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        libs: Path | None = None,
        extra_properties: Mapping[str, str] | None = None,
        advertised_port: int | None = None,
        advertised_host: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).expanduser().resolve()
        spare = iter([p for p in free_ports(3) if p not in (port, controller_port)])
        self.port = port if port is not None else next(spare)
        self.controller_port = controller_port if controller_port is not None else next(spare)
        if self.controller_port == self.port:
            raise ValueError("the broker and controller ports must differ")
        self.advertised_port = advertised_port if advertised_port is not None else self.port
        self.advertised_host = advertised_host if advertised_host is not None else LOOPBACK
        self.internal_port: int | None = None
        """The direct inter-broker listener's port, only when advertising another address."""
        if self.advertised_bootstrap != f"{LOOPBACK}:{self.port}":
            self.internal_port = next(spare)
        self._libs = libs
        self._extra = dict(extra_properties or {})
        self._child: ChildProcess | None = None
        self._paused = False
        self.last_start_seconds: float | None = None
        """Wall time of the last successful start(), from launch (incl. format) to ready."""

    # -- paths and configuration ------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The broker's log.dirs (also the KRaft metadata log)."""
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        """The broker's stdout and stderr."""
        return self.workdir / "broker.log"

    @property
    def properties_path(self) -> Path:
        """The server.properties the broker runs with (rewritten on each start)."""
        return self.workdir / "server.properties"

    @property
    def log4j_path(self) -> Path:
        """The log4j2 configuration (WARN and above)."""
        return self.workdir / "log4j2.yaml"

    @property
    def bootstrap(self) -> str:
        """The bootstrap address for clients, "127.0.0.1:<port>"."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def advertised_bootstrap(self) -> str:
        """The address the broker advertises, "<advertised_host>:<advertised_port>" (the same
        as `bootstrap` unless an advertised port or host was given)."""
        return f"{self.advertised_host}:{self.advertised_port}"

    @property
    def is_running(self) -> bool:
        """Whether the broker process is alive (it may be paused)."""
        return self._child is not None and self._child.poll() is None

    @property
    def is_formatted(self) -> bool:
        """Whether the data directory has been formatted (holds meta.properties)."""
        return storage_formatted(self.data_dir)

    def properties(self) -> dict[str, str]:
        """The server properties: a one-node loopback cluster, plus `extra_properties`."""
        props = one_node_properties(
            port=self.port,
            controller_port=self.controller_port,
            internal_port=self.internal_port,
            advertised_bootstrap=self.advertised_bootstrap,
            data_dir=self.data_dir,
        )
        props.update(self._extra)
        return props

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_properties(self.properties_path, self.properties())
        self.log4j_path.write_text(LOG4J2_YAML, encoding="utf-8")

    def _resolve_libs(self) -> Path:
        if self._libs is not None and has_kafka_jars(self._libs):
            return self._libs.resolve()
        return ensure_jars(self._libs)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start the broker (formatting storage on the first start) and wait until it is ready.

        Ready means: the port is open, metadata lists the broker, the group coordinator answers,
        and a transactional producer can initialise (the transaction coordinator works).
        Raises TimeoutError (with the tail of broker.log) if that takes over `timeout` seconds,
        RuntimeError if the broker exits, ToolchainMissingError if java or mvn is missing.
        Fetching the jars, when not yet cached, is not counted in `timeout`.
        """
        if self.is_running:
            return
        java = find_java()
        libs = self._resolve_libs()
        self._write_config()
        for port in (self.port, self.controller_port, self.internal_port):
            if port is not None and not port_is_bindable(port):
                raise RuntimeError(
                    f"port {LOOPBACK}:{port} is already in use (another broker still running?)"
                )
        started = time.monotonic()
        deadline = started + timeout
        classpath = f"{libs}{os.sep}*"
        log4j = f"-Dlog4j2.configurationFile={self.log4j_path}"
        if not self.is_formatted:
            format_storage(
                java,
                classpath,
                log4j,
                properties_path=self.properties_path,
                data_dir=self.data_dir,
                log_path=self.log_path,
                timeout=timeout,
            )
        self._child = ChildProcess(
            [
                java,
                "-Xms256m",
                "-Xmx512m",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                log4j,
                "-cp",
                classpath,
                "kafka.Kafka",
                str(self.properties_path),
            ],
            log_path=self.log_path,
            cwd=self.workdir,
        )
        self._paused = False
        try:
            self._wait_ready(deadline, timeout)
        except BaseException:
            self.kill()
            raise
        self.last_start_seconds = time.monotonic() - started

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        child = self._child
        assert child is not None

        def alive() -> bool:
            return child.poll() is None

        def failure(reason: str) -> str:
            return (
                f"Kafka broker at {self.bootstrap} {reason}\n"
                f"--- tail of {self.log_path} ---\n{self.log_tail()}"
            )

        try:
            while True:
                if not alive():
                    raise NotReady("the broker process exited")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("its port did not open")
                try:
                    wait_for_port(LOOPBACK, self.port, timeout=min(0.5, remaining))
                    break
                except TimeoutError:
                    continue
            run_in_private_loop(lambda: wait_until_ready(self.bootstrap, deadline, alive))
        except NotReady:
            code = child.poll()
            raise RuntimeError(failure(f"exited during start-up (exit code {code})")) from None
        except TimeoutError as exc:
            raise TimeoutError(failure(f"was not ready within {timeout:g} s ({exc})")) from None
        if not alive():
            raise RuntimeError(failure("exited right after becoming ready"))

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down cleanly (SIGTERM), SIGKILL after `timeout` seconds. No-op if not running."""
        child, self._child = self._child, None
        self._paused = False
        if child is not None:
            child.stop(timeout)

    def kill(self) -> None:
        """SIGKILL the broker (an unclean crash: data not yet flushed may be recovered or lost)."""
        child, self._child = self._child, None
        self._paused = False
        if child is not None:
            child.kill()

    def restart(self, timeout: float = 60.0) -> None:
        """stop() then start(): same ports, same data."""
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers.

        Returns once every thread of the JVM has stopped (not merely once the signal is sent).
        """
        self._paused = True
        self._require_running().pause()

    def resume(self) -> None:
        """Unfreeze a paused broker (SIGCONT)."""
        self._require_running().resume()
        self._paused = False

    @property
    def is_paused(self) -> bool:
        """Whether pause() was called without a resume() since."""
        return self._paused

    def _require_running(self) -> ChildProcess:
        if self._child is None or self._child.poll() is not None:
            raise RuntimeError("the Kafka broker is not running")
        return self._child

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"KafkaBroker({self.bootstrap}, {state}, workdir={self.workdir})"


# -- command line ---------------------------------------------------------------------------


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _cmd_fetch_jars(args: argparse.Namespace) -> int:
    libs = ensure_jars(args.cache_dir)
    print(libs)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    broker = KafkaBroker(
        args.data_dir,
        port=args.port,
        controller_port=args.controller_port,
        libs=args.libs,
    )
    # Explicitly for SIGINT too: a shell starting us in the background may have ignored it.
    previous = {
        sig: signal.signal(sig, _raise_keyboard_interrupt)
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        reused = broker.is_formatted
        broker.start(timeout=args.timeout)
        state = "reusing" if reused else "new"
        print(
            f"Kafka ready at {broker.bootstrap} "
            f"(data {broker.data_dir}, {state}; started in {broker.last_start_seconds:.1f} s; "
            f"log {broker.log_path})",
            flush=True,
        )
        while broker.is_running:
            time.sleep(0.5)
        print(
            f"Kafka broker exited unexpectedly; tail of {broker.log_path}:\n{broker.log_tail()}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("stopping Kafka broker ...", file=sys.stderr, flush=True)
        return 0
    finally:
        for sig in previous:  # no second interrupt in the middle of a clean shutdown
            signal.signal(sig, signal.SIG_IGN)
        try:
            broker.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `fetch-jars` prints the jar directory; `run` runs a persistent broker."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.testing.kafka_broker",
        description="A real single-node Kafka broker on 127.0.0.1, from Maven Central jars.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch-jars", help="fetch the broker jars; print their directory")
    fetch.add_argument("--cache-dir", type=Path, default=None, help="default: %(default)s")
    fetch.set_defaults(func=_cmd_fetch_jars)
    run = commands.add_parser("run", help="run a broker until SIGINT/SIGTERM, keeping its data")
    run.add_argument("--data-dir", type=Path, required=True, help="kept between runs")
    run.add_argument("--port", type=int, default=9092)
    run.add_argument("--controller-port", type=int, default=9093)
    run.add_argument("--libs", type=Path, default=None, help="jar directory (default: cache)")
    run.add_argument("--timeout", type=float, default=120.0, help="start-up timeout, seconds")
    run.set_defaults(func=_cmd_run)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ToolchainMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
