"""MPI settings: `config/mpi.yaml` (optional; every key has a default, unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import ConfigError
from engine.mpi.matcher import Thresholds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class ThresholdSettings(Strict):
    link: float = 15.0
    """Score (log2 Bayes factor) from which the best candidate is linked automatically."""
    review: float = 5.0
    """Score from which a candidate goes to review; below it the identity is `new`."""
    margin: float = 8.0
    """Minimum lead (bits) of the best over the second-best candidate for an automatic link."""
    given_must_agree: bool = False
    """Also send to review when the given names disagree completely (stricter than the default)."""
    clear_lead: float = 5.0
    """Below `link + clear_lead` bits, an automatic link also needs at least 3 strongly agreeing
    traits (family name, given names, birth date, matricule, address). Raise it to be stricter."""

    def thresholds(self) -> Thresholds:
        return Thresholds(self.link, self.review, self.margin, self.given_must_agree, self.clear_lead)


class AuthoritySettings(Strict):
    namespace: str = "PASSERELLE"
    """CX-4.1 namespace id of the MPI's own (enterprise) identifiers."""
    universal_id: str = "2.999.1.99"
    """CX-4.2 universal id (OID; 2.999 is the example arc: replace it with the platform's OID)."""
    universal_id_type: str = "ISO"
    """CX-4.3."""
    type_code: str = "PI"
    """CX-5 identifier type code of the enterprise id."""


class RegisterSettings(Strict):
    delta_dir: str = ""
    """Folder where daily delta files (CSV with an `op` column) arrive; '' disables the refresh job."""
    refresh_at: str = Field(default="02:30", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    """Daily time (HH:MM, local) at which new delta files are applied."""
    check_every_minutes: int = Field(default=0, ge=0)
    """Also look for new delta files every N minutes (0: only at `refresh_at`)."""


class MpiConfig(Strict):
    national_authority: str = "RNPP"
    """CX-4.1 of the national identifier (matricule) in PID-3 and in PIX answers."""
    enterprise: AuthoritySettings = AuthoritySettings()
    """How the MPI's enterprise ids are labelled in PID-3 and PIX answers."""
    enterprise_id_prefix: str = "E"
    """Enterprise ids are this prefix + 10 digits."""
    thresholds: ThresholdSettings = ThresholdSettings()
    """Decision thresholds (see engine/mpi/README.md)."""
    refresh: RegisterSettings = RegisterSettings()
    """Daily refresh of the certified register."""


def load_mpi_config(path: Path) -> MpiConfig:
    """`path` validated; a missing file means all defaults."""
    if not path.exists():
        return MpiConfig()
    try:
        return MpiConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, OSError) as err:
        raise ConfigError([f"{path}: (top): {err}"]) from err
    except ValidationError as err:
        raise ConfigError(
            [f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        ) from err
