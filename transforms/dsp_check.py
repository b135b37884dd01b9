"""Step `dsp_check`: refuse, before the ACK, what the DSP would refuse: a patient unknown to the
MPI (AE, 204) or whose shared care record is closed (AE, rule `dsp-closed`), and for documents
(CDA, DICOM) one that cannot be read or whose type is not one of the platform's.

Reads the DSP registry's closure list and the MPI (synchronous reads, no writes). For HL7 v2 the
patient is PID-3 (the national id by its assigning authority, the facility's ids) and the
enterprise id `resolve_patient` set in `message.vars`; put this step after `resolve_patient`.
The `dsp_store` destination checks the same again (a DSP may close between the two).

`on_refusal: route` keeps the message for its other destinations: the refusal becomes a
warning in the ACK (ERR severity W with the reason) and the variable `dsp_refused`, on which a
channel routes (`when: {var_absent: dsp_refused}` on its `dsp_store`). A lab result of a
patient whose DSP is closed must still reach the notifiable-disease feed.
"""

from __future__ import annotations

from typing import Literal

from engine.contracts import BuildContext, ComponentConfig
from engine.dsp.service import Dsp, PatientRef, Refusal, dsp_from
from engine.errors import Finding, Rejected
from engine.message import HL7V2, Message
from engine.mpi.hl7_traits import patient_ids


class Config(ComponentConfig):
    national_authority: str = "RNPP"
    """Assigning authority (PID-3 CX-4.1) of the national identifier (matricule) in HL7 v2 messages."""
    on_refusal: Literal["reject", "route"] = "reject"
    """`reject`: AE, the message goes nowhere. `route`: a warning and the variable `dsp_refused`;
    other destinations still get the message."""


EXAMPLE = {"type": "dsp_check", "national_authority": "RNPP", "on_refusal": "route"}


class DspCheck:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.dsp: Dsp = dsp_from(context)

    def __call__(self, message: Message) -> Message:
        try:
            if message.content_type == HL7V2:
                self.dsp.refusal(self._hl7_patient(message))
            else:
                self._document(message.content())
        except Refusal as err:
            where = err.location if message.content_type == HL7V2 else ""
            if self.config.on_refusal == "reject":
                raise Rejected([Finding(err.text, code=err.code, location=where)], ack_code="AE") from err
            message.findings.append(Finding(f"not stored in the DSP: {err.text}", err.code, where, "W"))
            message.vars["dsp_refused"] = err.code
        return message

    def _hl7_patient(self, message: Message) -> PatientRef:
        ids = patient_ids(message.hl7, self.config.national_authority)
        return PatientRef(ids.national, message.vars.get("enterprise_id", ""), tuple(ids.local))

    def _document(self, content: bytes) -> None:
        described = self.dsp.describe(content)
        self.dsp.document_type(str(described.meta["type_code"]))
        self.dsp.refusal(described.patient)
