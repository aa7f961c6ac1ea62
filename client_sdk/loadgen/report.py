"""The load generator's configuration (:class:`LoadConfig`) and result (:class:`LoadReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from client_sdk.loadgen.latency import LatencySummary
from client_sdk.loadgen.proxy import ProxyMode, ProxyStats

__all__ = ["LoadConfig", "LoadReport"]


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """What to simulate. Times are in seconds.

    ``rate`` is the target publish rate of all devices together in events per second (0: as
    fast as each device can); ``duration`` caps the publishing phase (None: until every device
    published ``events_per_device``). The link pattern (``up_s``/``down_s``, each jittered by
    +-50 %) runs during the publishing phase only; uploads then drain over a healthy link
    within ``drain_timeout``. ``kafka_bootstrap`` and ``topics`` enable the verification pass.
    """

    gateway_url: str = "http://127.0.0.1:8080"
    devices: int = 10
    events_per_device: int = 100
    rate: float = 0.0
    duration: float | None = None
    workdir: Path | None = None
    subscribe: bool = False
    stores: int = 10
    faults: bool = True
    up_s: float = 5.0
    down_s: float = 1.0
    proxy_mode: ProxyMode = "refuse"
    latency_s: float = 0.0
    kafka_bootstrap: str | None = None
    topics: tuple[str, ...] = ("inventory.events",)
    drain_timeout: float = 120.0
    live_timeout: float = 60.0
    batch_events: int = 100
    request_timeout: float = 10.0
    token: str | None = None
    seed: int = 0
    progress: bool = False
    plot: Path | None = None

    def validate(self) -> None:
        """Raise ValueError for settings that cannot run."""
        if self.devices < 1 or self.events_per_device < 0 or self.stores < 1:
            raise ValueError("devices and stores must be >= 1, events_per_device >= 0")
        if self.rate < 0 or self.up_s <= 0 or self.down_s <= 0 or self.latency_s < 0:
            raise ValueError("rate and latency must be >= 0, up and down > 0")
        if not self.gateway_url.startswith("http://"):
            raise ValueError("the gateway URL must be http://host:port (the proxy relays TCP)")


@dataclass(slots=True)
class LoadReport:
    """What a run did and whether anything was lost or doubled (see :attr:`ok`)."""

    devices: int
    published: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    pending: int = 0
    """Still in the outboxes at the end (the drain timed out)."""
    publish_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    """From the first publish until every event was answered (or the drain gave up)."""
    ack_latency: LatencySummary | None = None
    e2e_latency: LatencySummary | None = None
    upload_reconnects: int = 0
    """Uploaders that went offline and came back online."""
    stream_reconnects: int = 0
    resumes: int = 0
    """Subscriptions live again after a disconnect (resumed from their stored cursor)."""
    stream_received: int = 0
    stream_duplicates: int = 0
    stream_missing: int = 0
    proxy: ProxyStats | None = None
    verified: bool = False
    kafka_records: int = 0
    """Records of this run's events found in the topics (read_committed)."""
    lost: int = 0
    """Published (acknowledged by publish()) and not rejected, but absent from Kafka."""
    duplicated: int = 0
    """Event ids of this run found more than once in Kafka."""
    lost_sample: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        """Events the gateway answered for."""
        return self.accepted + self.duplicate + self.rejected

    @property
    def throughput(self) -> float:
        """Events answered per second over :attr:`elapsed_seconds`."""
        return self.answered / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Nothing lost or doubled: in Kafka (when verified) and in the subscriptions."""
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.stream_duplicates == 0
            and self.pending == 0
        )

    def table(self) -> Table:
        """The report as a rich table."""
        out = Table(title="sync-gateway load report", show_header=False)
        out.add_column("what", style="bold")
        out.add_column("value")
        for name, value in self.rows():
            out.add_row(name, value)
        return out

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) lines of the report."""
        rows = [
            ("devices", str(self.devices)),
            ("published", str(self.published)),
            (
                "accepted / duplicate / rejected",
                f"{self.accepted} / {self.duplicate} / {self.rejected}",
            ),
            ("pending at end", str(self.pending)),
            ("publish phase", f"{self.publish_seconds:.2f} s"),
            ("all answered after", f"{self.elapsed_seconds:.2f} s"),
            ("throughput", f"{self.throughput:,.0f} events/s answered"),
            ("ack latency (publish->receipt)", _lat(self.ack_latency)),
            ("upload reconnects", str(self.upload_reconnects)),
        ]
        if self.e2e_latency is not None:
            rows += [
                ("end-to-end latency", _lat(self.e2e_latency)),
                (
                    "stream received / duplicates / missing",
                    f"{self.stream_received} / {self.stream_duplicates} / {self.stream_missing}",
                ),
                ("stream reconnects / resumes", f"{self.stream_reconnects} / {self.resumes}"),
            ]
        if self.proxy is not None:
            p = self.proxy
            rows.append(
                (
                    "link (proxy)",
                    f"{p.cuts} cuts, {p.dropped} connections dropped, "
                    f"{p.refused} refused, {p.connections} relayed, "
                    f"{p.bytes_up:,} B up / {p.bytes_down:,} B down",
                )
            )
        if self.verified:
            rows += [
                ("kafka records (this run)", str(self.kafka_records)),
                ("LOST", str(self.lost) + (f" e.g. {self.lost_sample}" if self.lost else "")),
                ("DUPLICATED", str(self.duplicated)),
            ]
        else:
            rows.append(("kafka verification", "skipped (no --kafka-bootstrap)"))
        rows.append(("result", "OK" if self.ok else "FAILED"))
        rows += [("note", note) for note in self.notes]
        return rows

    def text(self) -> str:
        """The report as plain text (what the CLI prints without a terminal)."""
        width = max(len(name) for name, _ in self.rows())
        return "\n".join(f"{name:<{width}}  {value}" for name, value in self.rows())

    def print(self, console: Console | None = None) -> None:
        """Print the report table."""
        (console or Console()).print(self.table())


def _lat(summary: LatencySummary | None) -> str:
    return "-" if summary is None else summary.text()
