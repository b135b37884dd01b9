"""Hot reload of channel files, without dropping connections or messages.

A source delivers to a `ChannelSlot`, which forwards to the current channel version. A swap:

1. builds the new version; unchanged destinations keep their running queue (same object),
   an unchanged source keeps its listener and its connections;
2. points the slot at the new version: new messages use it, in-flight ones finish on the old;
3. waits until the old version has no intake in flight, stops its pipeline (messages not yet
   processed stay `received` in the store) and its changed queues (attempts finish);
4. starts the new pipeline and queues, which reload from the store whatever is open.

Step 3 before 4 is what makes it safe: no delivery or step run is ever owned by two versions.
A source whose own configuration changed is stopped and started again (its connections close;
senders reconnect and resend what was not acknowledged). An invalid file is refused with the
same `file: path: message` lines as `passerelle check`, and the running version stays.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog

from engine.channel import Channel
from engine.config import ChannelSpec, DestinationSpec, Project, load_channels
from engine.contracts import Intake, Receipt
from engine.dispatch import DestinationQueue
from engine.errors import ConfigError

log = structlog.get_logger("passerelle.reload")

Snapshot = dict[Path, tuple[int, int]]


class ChannelSlot:
    """What a source delivers to: the channel version currently in charge."""

    def __init__(self, channel: Channel) -> None:
        self.current = channel

    async def accept(self, intake: Intake) -> Receipt:
        return await self.current.accept(intake)


def same_destination(queue: DestinationQueue, spec: DestinationSpec, old: ChannelSpec) -> bool:
    previous = next((d for d in old.destinations if d.name == spec.name), None)
    return previous is not None and previous == spec and queue.name == spec.name


async def swap(slot: ChannelSlot, spec: ChannelSpec, builder: Any, timeout: float) -> None:
    """Replace the slot's channel by a new version built from `spec` (see the module contract)."""
    old = slot.current
    keep_source = old.spec.source == spec.source
    kept = {q.name: q for q in old.queues if any(same_destination(q, d, old.spec) for d in spec.destinations)}
    new: Channel = builder(spec, old.source if keep_source else None, kept)
    slot.current = new
    await old.drained()
    await old.stop_pipeline(timeout)
    old.hand_over_waiters(new)
    await asyncio.gather(*(q.stop(timeout) for q in old.queues if q.name not in kept))
    if not keep_source:
        await old.source.stop()
    new.start_work()
    if not keep_source:
        await new.source.start(slot.accept)
    log.info(
        "channel_reloaded",
        channel=spec.name,
        version=spec.version,
        source_restarted=not keep_source,
        queues_kept=sorted(kept),
    )


def snapshot(folder: Path) -> Snapshot:
    """What identifies the channel files' state: path -> (mtime, size)."""
    result: Snapshot = {}
    for path in folder.glob("*.yaml"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # removed while listing
        result[path] = (stat.st_mtime_ns, stat.st_size)
    return result


def load_or_report(project: Project) -> list[ChannelSpec] | None:
    try:
        return load_channels(project.root / project.engine.channels_dir, project.root)
    except ConfigError as err:
        log.error("channel_reload_refused", problems=err.problems)
        return None
