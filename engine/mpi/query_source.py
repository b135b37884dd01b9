"""Source `pix_pdq`: an MLLP listener that answers IHE PIX/PDQ queries from the MPI.

Exactly the MLLP source (framing, TLS, persist-then-answer: the query is stored like any
message, for audit) except for the answer: a QBP^Q23 gets RSP^K23 and a QBP^Q22 RSP^K22, built
from the MPI when the message was accepted; anything refused still gets the ordinary ACK
(AE/AR with the reason). Use it in a channel with `respond_after: received` and no destination.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.connectors.mllp.source import Config as MllpConfig
from engine.connectors.mllp.source import MllpSource, ack_responder
from engine.contracts import BuildContext, Verdict
from engine.errors import ParseError
from engine.formats.hl7v2 import Header, parse
from engine.mpi.pix_pdq import respond
from engine.mpi.service import Mpi, mpi_from


class Config(MllpConfig):
    """Same options as the `mllp` source."""


EXAMPLE = {"type": "pix_pdq", "host": "0.0.0.0", "port": 3600}


SourceConfig = Config  # the annotation below must not resolve to the class attribute


class PixPdqSource(MllpSource):
    def __init__(self, config: SourceConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.context = context
        self._mpi: Mpi | None = None

    @property
    def mpi(self) -> Mpi:
        if self._mpi is None:
            self._mpi = mpi_from(self.context)
        return self._mpi

    def responder(
        self, payload: bytes, header: Header, codec: str, problem: bool
    ) -> Callable[[Verdict], bytes]:
        fallback = ack_responder(header, codec, problem)
        if problem or header.message_code != "QBP":
            return fallback

        def respond_query(verdict: Verdict) -> bytes:
            if not verdict.accepted:
                return fallback(verdict)
            try:
                return respond(parse(payload, codec), self.mpi)
            except ParseError:
                return fallback(Verdict("AE", verdict.status, verdict.findings))

        return respond_query
