"""One load run: N simulated devices behind a flaky link, then a verification against Kafka.

:func:`run_load` does, every wait bounded in time:

1. start a :class:`~client_sdk.loadgen.proxy.FaultProxy` in front of the gateway and the
   devices (each an outbox file + uploader, and optionally a subscription) behind it; with
   subscriptions, wait until every one is live;
2. publish (paced by ``rate``) while the link goes up and down (``up_s``/``down_s``);
3. restore the link and wait until every event got its receipt (``drain_timeout``), and every
   subscriber saw every accepted event of its store;
4. with ``kafka_bootstrap``: wait until the gateway's backlog is forwarded, read the topics
   ``read_committed`` and count this run's events lost (published, not rejected, absent) and
   duplicated (same ``event_id`` twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from client_sdk.loadgen.devices import Device, Tally, open_files
from client_sdk.loadgen.proxy import FaultProxy
from client_sdk.loadgen.report import LoadConfig, LoadReport
from client_sdk.records import ReceiptStatus

__all__ = ["Sample", "run_load"]

POLL_S = 0.1
MAX_SAMPLES = 100_000

Sample = tuple[float, int, int, bool]
"""(seconds since start, published, answered, link up) for the plot."""


async def run_load(config: LoadConfig, console: Console | None = None) -> LoadReport:
    """Run the load described by ``config`` (see the module docstring); the report."""
    config.validate()
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="sync-gateway-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return await _Run(config, workdir, console or Console(stderr=True)).run()
    finally:
        if config.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


class _Run:
    def __init__(self, config: LoadConfig, workdir: Path, console: Console) -> None:
        self.config = config
        self.workdir = workdir
        self.console = console
        self.tally = Tally()
        self.report = LoadReport(devices=config.devices)
        target = urlsplit(config.gateway_url)
        self.proxy = FaultProxy(
            target.hostname or "127.0.0.1",
            target.port or 80,
            latency_s=config.latency_s,
            mode=config.proxy_mode,
        )
        self.devices: list[Device] = []
        self.samples: list[Sample] = []
        self.rate_now = 0.0
        self.started = time.monotonic()

    async def run(self) -> LoadReport:
        await self.proxy.start()
        try:
            await self._make_devices()
            for device in self.devices:
                device.start()
            await self._wait_live()
            sampler = asyncio.create_task(self._sample())
            try:
                with self._live_view():
                    await self._publish_phase()
                    await self._drain_phase()
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            self.report.pending = sum(
                await asyncio.gather(*(asyncio.to_thread(d.pending) for d in self.devices))
            )
        finally:
            await asyncio.gather(*(d.close() for d in self.devices), return_exceptions=True)
            await self.proxy.stop()
        self._fill_report()
        if self.config.kafka_bootstrap:
            await self._verify(self.config.kafka_bootstrap)
        if self.config.plot is not None:
            from client_sdk.loadgen.plot import plot_timeline

            note = plot_timeline(self.samples, self.config.plot)
            if note:
                self.report.notes.append(note)
        return self.report

    async def _make_devices(self) -> None:
        """Open every device's files in worker threads, then build the devices. One TLS
        context for all HTTP clients (building one per client costs ~0.1 s each)."""
        config = self.config
        files = await asyncio.gather(
            *(
                asyncio.to_thread(open_files, i, self.workdir, config.subscribe)
                for i in range(config.devices)
            )
        )
        tls = ssl.create_default_context()
        for i, opened in enumerate(files):
            http = httpx.AsyncClient(timeout=config.request_timeout, verify=tls)
            self.devices.append(Device(i, config, self.proxy.url, self.tally, opened, http))

    # -- phases ---------------------------------------------------------------------------------

    async def _wait_live(self) -> None:
        subscribed = [d for d in self.devices if d.subscriber is not None]
        if not subscribed:
            return
        waits = [asyncio.create_task(d.live.wait()) for d in subscribed]
        _, pending = await asyncio.wait(waits, timeout=self.config.live_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        if pending:
            self.report.notes.append(
                f"{len(pending)} subscriptions not live after {self.config.live_timeout} s"
            )

    async def _publish_phase(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        self.started = time.monotonic()
        end = loop.time() + (config.duration if config.duration is not None else 1e9)
        pattern: asyncio.Task[None] | None = None
        if config.faults:
            rng = random.Random(config.seed)
            pattern = asyncio.create_task(
                self.proxy.run_pattern(config.up_s, config.down_s, rng, end)
            )
        interval = config.devices / config.rate if config.rate > 0 else 0.0
        try:
            await asyncio.gather(
                *(self._publish(d, interval, loop.time(), end) for d in self.devices)
            )
        finally:
            if pattern is not None:
                pattern.cancel()
                await asyncio.gather(pattern, return_exceptions=True)
            self.proxy.restore()
        self.report.publish_seconds = time.monotonic() - self.started

    async def _publish(self, device: Device, interval: float, start: float, end: float) -> None:
        loop = asyncio.get_running_loop()
        offset = interval * device.index / self.config.devices
        for k in range(self.config.events_per_device):
            due = start + offset + k * interval
            if due >= end:
                return
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            await device.publish_one()

    async def _drain_phase(self) -> None:
        tally = self.tally
        deadline = time.monotonic() + self.config.drain_timeout
        await _until(lambda: tally.answered >= tally.published, deadline)
        self.report.elapsed_seconds = time.monotonic() - self.started
        if tally.answered < tally.published:
            self.report.notes.append(
                f"drain timed out: {tally.published - tally.answered} events unanswered"
            )
        if not self.config.subscribe:
            return
        deadline = max(deadline, time.monotonic() + 30.0)
        await _until(lambda: self._stream_missing() == 0, deadline)
        self.report.stream_missing = self._stream_missing()
        if self.report.stream_missing:
            self.report.notes.append(self._stream_missing_note())
            self.report.notes.append(f"gateway downstream: {await self._downstream_status()}")

    def _stream_missing(self) -> int:
        expected = self.tally.ok_events_by_store()
        return sum(max(0, expected[d.store] - d.received) for d in self.devices)

    def _stream_missing_note(self) -> str:
        """Which subscriptions miss updates, and what their connections are doing."""
        expected = self.tally.ok_events_by_store()
        behind = [
            f"{d.name} ({d.store}) {d.received}/{expected[d.store]}"
            f" {d.subscriber.state.value if d.subscriber is not None else '-'}"
            for d in self.devices
            if d.received < expected[d.store]
        ]
        shown = ", ".join(behind[:8]) + (", ..." if len(behind) > 8 else "")
        return f"stream updates missing on {len(behind)} subscriptions: {shown}"

    # -- verification ---------------------------------------------------------------------------

    async def _verify(self, bootstrap: str) -> None:
        from gateway.testing.kafka_reader import read_committed

        await self._wait_forwarded()
        ours = self.tally.published_at
        records = await read_committed(bootstrap, list(self.config.topics), timeout_s=120.0)
        counts = Counter(r.event_id for r in records if "event_id" in r.headers)
        found = {event_id: n for event_id, n in counts.items() if event_id in ours}
        rejected = {e for e, s in self.tally.status.items() if s is ReceiptStatus.REJECTED}
        lost = [e for e in ours if e not in found and e not in rejected]
        report = self.report
        report.verified = True
        report.kafka_records = sum(found.values())
        report.lost = len(lost)
        report.lost_sample = lost[:5]
        report.duplicated = sum(1 for n in found.values() if n > 1)

    async def _downstream_status(self) -> object:
        """The gateway's downstream consumer status from /readyz (directly, not through the
        proxy): whether it consumed what the subscriptions miss."""
        try:
            async with httpx.AsyncClient(base_url=self.config.gateway_url, timeout=5.0) as http:
                status: object = (await http.get("/readyz")).json()
        except (httpx.HTTPError, ValueError) as exc:
            return f"unknown ({exc!r})"
        return status.get("downstream") if isinstance(status, dict) else status

    async def _wait_forwarded(self) -> None:
        """Poll the gateway's /readyz (directly, not through the proxy) until its backlog is
        empty, within ``drain_timeout``."""
        deadline = time.monotonic() + self.config.drain_timeout
        status: object = None
        async with httpx.AsyncClient(base_url=self.config.gateway_url, timeout=5.0) as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    status = (await http.get("/readyz")).json()
                    if isinstance(status, dict) and status.get("backlog", {}).get("events") == 0:
                        return
                await asyncio.sleep(0.2)
        self.report.notes.append(f"gateway backlog not forwarded in time: {status}")

    # -- progress -------------------------------------------------------------------------------

    def _fill_report(self) -> None:
        tally, report = self.tally, self.report
        report.published = tally.published
        report.accepted = tally.receipts[ReceiptStatus.ACCEPTED]
        report.duplicate = tally.receipts[ReceiptStatus.DUPLICATE]
        report.rejected = tally.receipts[ReceiptStatus.REJECTED]
        report.ack_latency = tally.ack_latency.summary()
        report.upload_reconnects = tally.upload_reconnects
        report.proxy = self.proxy.stats()
        if tally.publish_errors:
            report.notes.append(f"{tally.publish_errors} publish() calls failed")
        if self.config.subscribe:
            report.e2e_latency = tally.e2e_latency.summary()
            report.stream_reconnects = tally.stream_reconnects
            report.resumes = tally.resumes
            report.stream_received = tally.stream_received
            report.stream_duplicates = tally.stream_duplicates
        if not tally.ack_latency.exact:
            report.notes.append("hdrhistogram not installed: latency percentiles are sampled")

    async def _sample(self) -> None:
        previous, before = 0, time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            answered = self.tally.answered
            self.rate_now = (answered - previous) / max(1e-9, now - before)
            previous, before = answered, now
            if len(self.samples) < MAX_SAMPLES:
                sample = (now - self.started, self.tally.published, answered, self.proxy.is_up)
                self.samples.append(sample)

    def _live_view(self) -> contextlib.AbstractContextManager[object]:
        if not self.config.progress:
            return contextlib.nullcontext()
        return Live(
            get_renderable=self._progress_table,
            console=self.console,
            refresh_per_second=4,
            transient=False,
        )

    def _progress_table(self) -> Table:
        tally = self.tally
        stats = self.proxy.stats()
        table = Table(title=f"{self.config.devices} devices -> {self.config.gateway_url}")
        for name in (
            "sent",
            "acked",
            "duplicates",
            "rejected",
            "pending",
            "events/s",
            "reconnects",
            "link",
        ):
            table.add_column(name, justify="right")
        acked = tally.receipts[ReceiptStatus.ACCEPTED]
        table.add_row(
            str(tally.published),
            str(acked),
            str(tally.receipts[ReceiptStatus.DUPLICATE]),
            str(tally.receipts[ReceiptStatus.REJECTED]),
            str(tally.published - tally.answered),
            f"{self.rate_now:,.0f}",
            str(tally.upload_reconnects + tally.stream_reconnects),
            ("up" if self.proxy.is_up else "[red]down[/red]") + f" ({stats.cuts} cuts)",
        )
        return table


async def _until(condition: Callable[[], bool], deadline: float) -> None:
    """Poll ``condition`` until it holds or the monotonic ``deadline`` passes."""
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110 (plain counters)
        await asyncio.sleep(POLL_S)
