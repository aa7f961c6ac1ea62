"""Whether a file written without syncs can be trusted after a stop: a marker, next to it, that
names the machine's boot while the file is open.

The downstream log writes with ``synchronous=OFF`` (see :mod:`gateway.adapters.sqlite_downstream`
for why). A process that crashes leaves everything it wrote in the kernel's page cache, which
reaches the disk in time: nothing is lost and the file stays consistent. Only a stop of the
machine itself (power, kernel crash) can leave such a file torn. So:

- :meth:`OpenMarker.mark_open`, before the file is written, writes the marker with the current
  boot id (Linux: ``/proc/sys/kernel/random/boot_id``) and syncs it and its directory;
- :meth:`OpenMarker.mark_closed`, at a clean close, syncs the files, then removes the marker;
- at the next open, :meth:`OpenMarker.left_by_a_stopped_machine` says whether a marker from another
  boot (or from any boot, where the boot cannot be told) is still there: the machine stopped with
  the file open, and its content is not to be trusted.

Operating-system errors leave as :class:`~gateway.errors.StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from gateway.errors import StoreUnavailable

BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")
"""Where Linux names the current boot (a random UUID, new at every boot)."""

_UNKNOWN_BOOT: Final = "unknown"


def current_boot_id(path: Path = BOOT_ID_PATH) -> str | None:
    """The current boot's id, or ``None`` where the system does not tell it."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OpenMarker:
    """The marker file ``path`` of one data file; see the module docstring."""

    def __init__(self, path: Path, boot_id: Callable[[], str | None] = current_boot_id) -> None:
        """``boot_id`` names the current boot (``None``: unknown); tests pass their own."""
        self._path = path
        self._boot_id = boot_id

    def left_by_a_stopped_machine(self) -> bool:
        """Whether the marker of an open that was never closed cleanly is there, from another
        boot than this one (or from any boot, where the boot cannot be told)."""
        try:
            left = self._path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return False
        except (OSError, UnicodeDecodeError):
            return True  # unreadable: the marker itself may be torn
        current = self._boot_id()
        return current is None or left != current

    def mark_open(self) -> None:
        """Write the marker with the current boot and make it durable, before any write."""
        temporary = self._path.with_name(self._path.name + ".tmp")
        try:
            with temporary.open("w", encoding="utf-8") as out:
                out.write((self._boot_id() or _UNKNOWN_BOOT) + "\n")
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(self._path)
            _fsync(self._path.parent, directory=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write the open marker {self._path}: {exc}") from exc

    def mark_closed(self, files: Iterable[Path]) -> None:
        """Sync ``files`` (those that exist), then remove the marker durably."""
        try:
            for file in files:
                with contextlib.suppress(FileNotFoundError):
                    _fsync(file)
            self._path.unlink(missing_ok=True)
            _fsync(self._path.parent, directory=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot sync and close {self._path}: {exc}") from exc
