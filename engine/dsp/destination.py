"""Destination `dsp_store`: store each message's document in the DSP (registry + repository).

Takes the message's current content: a CDA R2 document (e.g. made by `hl7_to_cda_lab`) or a DICOM
KOS manifest. Idempotent on the document's unique id: the same document again is one entry, its
id with different content is refused. A replacement (CDA relatedDocument RPLC) deprecates the
version it replaces. Refusals (unknown patient, closed DSP, a type the platform does not have, a
document that cannot be read) are `PermanentError`s with the reason: put `dsp_check` among the
steps so the sender hears it in the ACK; this is the safety net. A full disk or a locked
database is retryable.
"""

from __future__ import annotations

import asyncio
import sqlite3

from engine.contracts import BuildContext, ComponentConfig
from engine.dsp.registry import DocumentConflict
from engine.dsp.service import Dsp, Refusal, dsp_from
from engine.errors import PermanentError, RetryableError
from engine.message import Message


class Config(ComponentConfig):
    source: str = ""
    """Name recorded as the document's source in the registry; '' records the channel name."""


EXAMPLE = {"type": "dsp_store", "name": "dsp"}


class DspStore:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.source = config.source or context.channel
        self.dsp: Dsp = dsp_from(context)

    async def send(self, message: Message) -> bytes | None:
        await asyncio.to_thread(self._store, message.content())
        return None

    def _store(self, content: bytes) -> None:
        try:
            self.dsp.store(content, self.source)
        except Refusal as err:
            raise PermanentError(f"DSP refused the document: {err.text}") from err
        except (OSError, sqlite3.OperationalError) as err:
            raise RetryableError(f"DSP storage is unavailable now ({type(err).__name__})") from err
        except DocumentConflict as err:
            raise PermanentError(f"DSP refused the document: {err}") from err

    async def close(self) -> None:
        return None
