"""Step `dsp_check`: refuse, before the ACK, what the DSP would refuse: a patient unknown to the
MPI (AE, 204) or whose shared care record is closed (AE, rule `dsp-closed`), and for documents
(CDA, DICOM) one that cannot be read or whose type is not one of the platform's.

Reads the DSP registry's closure list and the MPI (synchronous reads, no writes). For HL7 v2 the
patient is PID-3 (the national id by its assigning authority, the facility's ids) and the
enterprise id `resolve_patient` set in `message.vars`; put this step after `resolve_patient`.
The `dsp_store` destination checks the same again (a DSP may close between the two).
"""

from __future__ import annotations

from engine.contracts import BuildContext, ComponentConfig
from engine.dsp.service import Dsp, PatientRef, Refusal, dsp_from
from engine.errors import Finding, Rejected
from engine.message import HL7V2, Message
from engine.mpi.hl7_traits import patient_ids


class Config(ComponentConfig):
    national_authority: str = "RNPP"
    """Assigning authority (PID-3 CX-4.1) of the national identifier (matricule) in HL7 v2 messages."""


EXAMPLE = {"type": "dsp_check", "national_authority": "RNPP"}


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
            raise Rejected([Finding(err.text, code=err.code, location=where)], ack_code="AE") from err
        return message

    def _hl7_patient(self, message: Message) -> PatientRef:
        ids = patient_ids(message.hl7, self.config.national_authority)
        return PatientRef(ids.national, message.vars.get("enterprise_id", ""), tuple(ids.local))

    def _document(self, content: bytes) -> None:
        described = self.dsp.describe(content)
        self.dsp.document_type(str(described.meta["type_code"]))
        self.dsp.refusal(described.patient)
