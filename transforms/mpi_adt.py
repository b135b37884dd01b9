"""Step `mpi_adt`: apply an ADT message to the MPI (A01/A04/A08/A28/A31 create or update and
resolve, A40 merge of local ids, A37 unlink); other events pass through untouched.

A resolved patient's enterprise id is put in `message.vars["enterprise_id"]`. No patient data
is logged; the MPI records who (the sending facility) and why (the message) for each change.
"""

from __future__ import annotations

from engine.contracts import BuildContext, ComponentConfig
from engine.message import Message
from engine.mpi.adt import apply_adt
from engine.mpi.service import mpi_from


class Config(ComponentConfig):
    national_authority: str = "RNPP"
    """Assigning authority (PID-3 CX-4.1) of the national identifier (matricule)."""


EXAMPLE = {"type": "mpi_adt", "national_authority": "RNPP"}


StepConfig = Config  # the annotation below must not resolve to the class attribute


class MpiAdt:
    def __init__(self, config: StepConfig, context: BuildContext) -> None:
        self.config = config
        self.context = context

    def __call__(self, message: Message) -> Message:
        if message.hl7.header.message_code != "ADT":
            return message
        result = apply_adt(message.hl7, mpi_from(self.context), self.config.national_authority)
        message.vars["mpi_adt"] = result.action
        if result.resolution is not None:
            message.vars["mpi_outcome"] = result.resolution.outcome
            if result.resolution.enterprise_id:
                message.vars["enterprise_id"] = result.resolution.enterprise_id
        return message
