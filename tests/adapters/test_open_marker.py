"""The open marker: a file written without syncs is trusted after a process crash, not after a
stop of the machine (another boot) or where the boot cannot be told."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.adapters.open_marker import OpenMarker, current_boot_id
from gateway.errors import StoreUnavailable


def boot(name: str | None) -> Callable[[], str | None]:
    return lambda: name


def test_no_marker_means_a_clean_close_or_a_new_file(tmp_path: Path) -> None:
    assert not OpenMarker(tmp_path / "f.open", boot("b1")).left_by_a_stopped_machine()


def test_a_marker_of_this_boot_is_a_process_crash(tmp_path: Path) -> None:
    OpenMarker(tmp_path / "f.open", boot("b1")).mark_open()
    assert not OpenMarker(tmp_path / "f.open", boot("b1")).left_by_a_stopped_machine()


def test_a_marker_of_another_boot_is_a_machine_stop(tmp_path: Path) -> None:
    OpenMarker(tmp_path / "f.open", boot("b1")).mark_open()
    assert OpenMarker(tmp_path / "f.open", boot("b2")).left_by_a_stopped_machine()


def test_where_the_boot_cannot_be_told_any_marker_is_a_machine_stop(tmp_path: Path) -> None:
    OpenMarker(tmp_path / "f.open", boot(None)).mark_open()
    assert (tmp_path / "f.open").read_text() == "unknown\n"
    assert OpenMarker(tmp_path / "f.open", boot(None)).left_by_a_stopped_machine()


def test_an_unreadable_marker_is_a_machine_stop(tmp_path: Path) -> None:
    (tmp_path / "f.open").write_bytes(b"\xff\xfe torn")
    assert OpenMarker(tmp_path / "f.open", boot("b1")).left_by_a_stopped_machine()


def test_a_clean_close_syncs_the_files_and_removes_the_marker(tmp_path: Path) -> None:
    data = tmp_path / "f"
    data.write_bytes(b"x")
    marker = OpenMarker(tmp_path / "f.open", boot("b1"))
    marker.mark_open()
    assert (tmp_path / "f.open").read_text() == "b1\n"
    marker.mark_closed([data, tmp_path / "f-wal"])  # a file that is not there is skipped
    assert not (tmp_path / "f.open").exists()
    assert not list(tmp_path.glob("*.tmp"))
    assert not OpenMarker(tmp_path / "f.open", boot("b2")).left_by_a_stopped_machine()


def test_a_marker_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="open marker"):
        OpenMarker(tmp_path / "missing-dir" / "f.open", boot("b1")).mark_open()


def test_the_boot_id_is_read_from_the_system(tmp_path: Path) -> None:
    source = tmp_path / "boot_id"
    source.write_text("3f1c\n")
    assert current_boot_id(source) == "3f1c"
    assert current_boot_id(tmp_path / "absent") is None
    assert current_boot_id(Path("/proc/sys/kernel/random/boot_id")) is not None  # Linux
