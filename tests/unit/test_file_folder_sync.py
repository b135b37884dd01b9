"""The file destination's shared folder fsync: every caller returns only after a folder fsync that
started after its rename, concurrent callers share fsyncs, and a failing fsync is reported."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine.connectors.file import destination
from engine.connectors.file.destination import FolderSync


def test_concurrent_renames_share_folder_fsyncs_and_each_is_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []  # the rename count each fsync started with
    folder_sync = FolderSync(tmp_path)
    real = destination.sync_directory
    gate = threading.Barrier(16)

    def counting_sync(directory: Path) -> None:
        syncs.append(folder_sync._renames)
        real(directory)

    monkeypatch.setattr(destination, "sync_directory", counting_sync)
    covered: list[bool] = []

    def deliver() -> None:
        gate.wait()
        folder_sync.after_rename()
        covered.append(folder_sync._synced >= 1)

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(covered) == 16 and all(covered)
    assert folder_sync._synced == 16  # the last fsync started after the last rename
    assert 1 <= len(syncs) <= 16


def test_a_failing_folder_fsync_is_raised_and_the_next_caller_syncs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder_sync = FolderSync(tmp_path)
    failures = [OSError(5, "Input/output error")]

    def flaky_sync(directory: Path) -> None:
        if failures:
            raise failures.pop()

    monkeypatch.setattr(destination, "sync_directory", flaky_sync)
    with pytest.raises(OSError, match="Input/output error"):
        folder_sync.after_rename()
    folder_sync.after_rename()
    assert folder_sync._synced == 2
