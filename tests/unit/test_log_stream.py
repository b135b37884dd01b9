"""engine/log.py writes to the stderr of the moment, not to the one present at configure time."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from engine import log


def test_logs_follow_a_replaced_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    log.configure("info")
    logger = structlog.get_logger("test")
    logger.info("one")
    first.close()  # what pytest does to a finished test's capture
    monkeypatch.setattr(sys, "stderr", second)
    logger.info("two")
    assert '"event": "two"' in second.getvalue()
