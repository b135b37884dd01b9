"""Step `resolve_patient`: link the message's patient to a certified identity of the MPI.

Reads PID-3 (the national identifier by its assigning authority, and the facility's local id),
PID-5 (name in use, birth name by name type B/M), PID-7, PID-8, PID-11, PID-24/25, and resolves
them (known local id, equal valid matricule, then probabilistic matching with guard rules).
`linked`: `message.vars["enterprise_id"]` is set and, optionally, the enterprise id is added to
PID-3 as a new repetition. `review` / `new`: what `on_review` / `on_new` say. Every outcome is
recorded in the MPI (facility identity, link or review item). No patient data is logged.
"""

from __future__ import annotations

from typing import Literal

from engine.contracts import BuildContext, ComponentConfig
from engine.errors import Filtered, Finding, Rejected
from engine.message import Message
from engine.mpi.hl7_traits import add_identifier, patient_ids, traits_from
from engine.mpi.service import Incoming, Mpi, Resolution, mpi_from

Action = Literal["accept", "hold", "reject"]


class Config(ComponentConfig):
    national_authority: str = "RNPP"
    """Assigning authority (PID-3 CX-4.1) of the national identifier (matricule)."""
    facility_authority: str = ""
    """Assigning authority of the sender's local patient ids; '' takes the first PID-3 id that is
    neither national nor the MPI's own (its CX-4.1, else MSH-4)."""
    write_enterprise_id: bool = True
    """Add the enterprise id to PID-3 as a new repetition (authority from config/mpi.yaml;
    default `E0000000042^^^PASSERELLE&2.999.1.99&ISO^PI`)."""
    on_review: Action = "accept"
    """When the identity goes to review: `accept` (continue, warning finding), `hold` (stop here, outcome
    filtered with the reason, ACK AA; reprocess after the review) or `reject` (AE with a finding)."""
    on_new: Action = "accept"
    """When no certified identity matches (e.g. a patient unknown to the register): same choices."""


EXAMPLE = {"type": "resolve_patient", "national_authority": "RNPP", "on_review": "accept", "on_new": "accept"}


StepConfig = Config  # the annotation below must not resolve to the class attribute


class ResolvePatient:
    def __init__(self, config: StepConfig, context: BuildContext) -> None:
        self.config = config
        self.context = context
        self._mpi: Mpi | None = None

    @property
    def mpi(self) -> Mpi:
        if self._mpi is None:
            self._mpi = mpi_from(self.context)
        return self._mpi

    def __call__(self, message: Message) -> Message:
        hl7 = message.hl7
        if not hl7.count("PID"):
            raise Rejected(
                [Finding("no PID segment: the patient cannot be identified", code="100", location="PID")]
            )
        mpi = self.mpi
        enterprise = mpi.config.enterprise
        ids = patient_ids(hl7, self.config.national_authority, (enterprise.namespace,))
        authority, local_id = self._local_id(ids.local)
        traits = traits_from(hl7, self.config.national_authority)
        result = mpi.resolve(Incoming(authority, local_id, traits))
        message.vars["mpi_outcome"] = result.outcome
        for text in result.warnings:
            message.findings.append(
                Finding(f"patient identity: {text}", code="102", location="PID^1^7", severity="W")
            )
        if result.outcome == "linked" and result.enterprise_id:
            self._linked(message, result)
        else:
            self._unlinked(message, result)
        return message

    def _local_id(self, local: list[tuple[str, str]]) -> tuple[str, str]:
        wanted = self.config.facility_authority
        for authority, value in local:
            if not wanted or authority == wanted:
                return authority, value
        return wanted, ""

    def _linked(self, message: Message, result: Resolution) -> None:
        assert result.enterprise_id is not None
        message.vars["enterprise_id"] = result.enterprise_id
        if self.config.write_enterprise_id:
            e = self.mpi.config.enterprise
            add_identifier(
                message.hl7,
                result.enterprise_id,
                e.namespace,
                e.universal_id,
                e.universal_id_type,
                e.type_code,
            )

    def _unlinked(self, message: Message, result: Resolution) -> None:
        action = self.config.on_review if result.outcome == "review" else self.config.on_new
        if result.outcome == "review":
            why = "; ".join(result.reasons) or "the best candidate is not certain enough"
            text = f"patient identity sent to identity review (item {result.review_id}): {why}"
        else:
            text = "patient identity not found in the national register (no enterprise id)"
        if action == "reject":
            raise Rejected([Finding(text, code="204", location="PID^1^3")])
        if action == "hold":
            raise Filtered(f"held: {text}")
        message.findings.append(Finding(text, code="204", location="PID^1^3", severity="W"))
