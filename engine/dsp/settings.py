"""DSP settings: `config/dsp.yaml` (optional; every key has a default, unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class DocumentType(Strict):
    code: str = Field(pattern=r"^[0-9]{1,7}-[0-9]$")
    """LOINC code of the document type (ClinicalDocument/code/@code)."""
    name: str
    """The type's name as the platform shows it."""


DEFAULT_TYPES = (
    DocumentType(code="11502-2", name="Laboratory report"),
    DocumentType(code="18842-5", name="Discharge summary"),
    DocumentType(code="34133-9", name="Summary of episode note (hospital stay report)"),
    DocumentType(code="28570-0", name="Procedure note"),
    DocumentType(code="59258-4", name="Emergency department discharge summary"),
    DocumentType(code="18748-4", name="Diagnostic imaging study (manifest)"),
    DocumentType(code="60591-5", name="Patient summary"),
    DocumentType(code="57833-6", name="Prescription"),
    DocumentType(code="11369-6", name="Immunization history"),
)


class DspConfig(Strict):
    document_types: list[DocumentType] = Field(default_factory=lambda: list(DEFAULT_TYPES), min_length=1)
    """The platform's document types: a document of any other type is refused."""
    blob_dir: str = "var/dsp/blobs"
    """Repository folder (content-addressed by SHA-256), relative to the project root."""
    national_id_root: str = "470c5913-065e-4720-a3b6-e9d38a4e18eb"
    """OID/UUID of the national identifier in CDA (recordTarget/patientRole/id/@root); keep it equal to
    `national-id-root` in schematron/lab-report/lab-rules.sch."""
    mpi_seed_register: str = ""
    """Demonstration only: a register CSV (invented identities) loaded into the MPI at start when the
    MPI register is empty, so a fresh machine knows the sample patients. '' (the default): never."""
    max_list: int = Field(default=500, ge=1, le=10_000)
    """Most documents one listing returns."""

    def type_name(self, code: str) -> str | None:
        """The platform's name of a document type, None when it is not one of the platform's."""
        return next((t.name for t in self.document_types if t.code == code), None)


def load_dsp_config(path: Path) -> DspConfig:
    """`path` validated; a missing file means all defaults."""
    if not path.exists():
        return DspConfig()
    try:
        return DspConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, OSError) as err:
        raise ConfigError([f"{path}: (top): {err}"]) from err
    except ValidationError as err:
        lines = [f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError(lines) from err
