"""Step `detect_notifiable`: mark a lab result (HL7 v2 ORU or CDA lab report) that is notifiable.

Pure: reads the catalogue (configuration) and the content, never filters. It records what it found in
`message.vars["notifiable"]` (JSON, `engine.reporting.detection.Detection`): the notifiable results
(disease, test, value, interpretation, status, time) and the patient traits the report and the
weekly aggregates need. An empty result list means "looked, nothing notifiable". The
`reporting_feed` destination reads only these vars, so this step must run while the content is
still the lab's own (before hl7_to_cda_lab), and the channel's other destinations are unaffected.
"""

from __future__ import annotations

from pydantic import Field

from engine.contracts import BuildContext, ComponentConfig
from engine.errors import Finding, ParseError, Rejected
from engine.message import CDA, HL7V2, XML, Message
from engine.reporting.catalogue import Catalogue, load_catalogue
from engine.reporting.detection import VAR, Detection, detect, detect_hl7
from engine.reporting.detection_cda import cda_observations, cda_patient, parse_cda


class Config(ComponentConfig):
    catalogue: str = "config/notifiable-diseases.yaml"
    """Notifiable-disease catalogue (YAML, see engine/reporting/README.md), relative to the project root."""
    national_authority: str = "RNPP"
    """HL7 v2: assigning authority (PID-3 CX-4.1) of the national identifier."""
    national_root: str = "2.999.1"
    """CDA: @root of the national identifier in recordTarget/patientRole/id."""
    report_negatives: list[str] = Field(default_factory=list)
    """Disease keys whose negative results are notifiable too (e.g. during an outbreak)."""


EXAMPLE = {
    "type": "detect_notifiable",
    "catalogue": "config/notifiable-diseases.yaml",
    "national_authority": "RNPP",
    "report_negatives": [],
}


class DetectNotifiable:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.catalogue: Catalogue = load_catalogue(context.path(config.catalogue))
        unknown = sorted(set(config.report_negatives) - set(self.catalogue.diseases))
        if unknown:
            raise ValueError(f"report_negatives: unknown disease(s) {', '.join(unknown)}")

    def __call__(self, message: Message) -> Message:
        detection = self.detect(message)
        message.vars[VAR] = detection.to_json()
        if detection.notifiable:  # what channels route on (`when: {var_present: notifiable_diseases}`)
            message.vars["notifiable_diseases"] = ",".join(detection.diseases())
        return message

    def detect(self, message: Message) -> Detection:
        if message.content_type == HL7V2:
            return detect_hl7(
                message.hl7, self.catalogue, self.config.national_authority, self.config.report_negatives
            )
        if message.content_type in (CDA, XML):
            return self._detect_cda(message)
        return Detection()

    def _detect_cda(self, message: Message) -> Detection:
        try:
            tree = parse_cda(message.content())
        except ParseError as err:
            raise Rejected([Finding(f"the CDA document cannot be read: {err}", code="102")]) from err
        return detect(
            cda_observations(tree),
            cda_patient(tree, self.config.national_root),
            self.catalogue,
            self.config.report_negatives,
            message.sender,
            message.control_id,
        )
