"""Structured logs (structlog), JSON by default.

Contract: the engine logs events about channels, connections, queues and the store, never
message content. Fields allowed per message are the internal message/delivery id and the
channel; never names, birth dates, national ids, results, or raw HL7/XML.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the moment of writing. Binding the stream object at
    configure time wrote into a stream that was later replaced and closed (pytest's capture: a
    test logging after another had configured the engine's logs failed with "I/O operation on
    closed file"; a daemon redirecting stderr after start-up would have lost lines the same way)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", fmt: str = "json") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
