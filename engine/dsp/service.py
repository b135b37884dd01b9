"""The DSP facade: who the patient is, whether their DSP takes documents, and storing one.

One `Dsp` per process and database file; `dsp_from(context)` gives the engine's shared one (its
registry lives in the engine store's file, its blobs under `blob_dir`). Both the `dsp_check` step
(before the ACK, so the sender hears why) and the `dsp_store` destination (the safety net) ask
`refusal()`; only the destination writes. A refusal's text names the rule, never patient data.

Patients: a document is stored only for a patient the MPI knows (by national id, enterprise id or
a facility id already linked), because the DSP is keyed by the certified identity; the registry
row keeps both the matricule and the enterprise id, so either finds the documents.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from engine.contracts import BuildContext
from engine.dsp.registry import Entry, Registry
from engine.dsp.repository import Repository
from engine.dsp.settings import DspConfig, load_dsp_config
from engine.errors import ConfigError, ParseError, PasserelleError
from engine.formats import cda
from engine.formats.dicom_manifest import KosManifest, read_manifest
from engine.message import CDA, DICOM
from engine.store.cipher import PayloadCipher
from engine.store.component_seal import ColumnSealer

if TYPE_CHECKING:
    from engine.mpi.service import Mpi

log = structlog.get_logger("passerelle.dsp")
IMAGING_TYPE = "18748-4"  # LOINC Diagnostic imaging study: the type of every KOS manifest entry


class Refusal(PasserelleError):
    """The DSP will not take this document as it is; `code` is an HL7 0357 code or a rule id."""

    def __init__(self, text: str, code: str, location: str = "") -> None:
        super().__init__(text)
        self.text, self.code, self.location = text, code, location


@dataclass(frozen=True)
class PatientRef:
    """The patient ids a document carries (any may be empty)."""

    national: str = ""
    enterprise: str = ""
    local: tuple[tuple[str, str], ...] = ()  # (assigning authority, id)


@dataclass(frozen=True)
class Patient:
    matricule: str
    enterprise_id: str


@dataclass(frozen=True)
class Described:
    """A document's registry facts before the patient is resolved."""

    meta: dict[str, Any]
    patient: PatientRef
    mime: str
    details: dict[str, Any] = field(default_factory=dict)


class Dsp:
    def __init__(self, root: Path, db_path: Path, config: DspConfig, mpi: Callable[[], Mpi],
                 cipher: PayloadCipher | None = None) -> None:
        self.config = config
        self.registry = Registry(db_path, sealer=ColumnSealer(cipher))  # patient ids digested, sealed
        self.repository = Repository(blob_folder(root, config), cipher=cipher)  # sealed when keys are set
        self._mpi = mpi

    def close(self) -> None:
        self.registry.close()

    @property
    def mpi(self) -> Mpi:
        return self._mpi()

    # -- patients --------------------------------------------------------------------------------

    def identify(self, ref: PatientRef) -> Patient:
        """The certified identity behind the ids; Refusal (204) when the MPI knows none of them."""
        mpi = self.mpi
        tries = [(mpi.config.enterprise.namespace, ref.enterprise),
                 (mpi.config.national_authority, ref.national), *ref.local]
        identity = next((found for authority, value in tries if value
                         and (found := mpi.find_identity(authority, value)) is not None), None)
        if identity is None:
            raise Refusal("the patient is not known to the national patient index (MPI): a document is only "
                          "stored in the shared care record (DSP) of a known patient; check the national "
                          "identifier (matricule)", "204", "PID^1^3")
        traits = mpi.identity_traits(identity)
        return Patient(ref.national or (traits.matricule if traits else ""), mpi.enterprise_id(identity))

    def refusal(self, ref: PatientRef) -> Patient:
        """The patient, if their DSP takes documents; Refusal with the reason otherwise."""
        patient = self.identify(ref)
        closed = self.registry.closure(patient.matricule, patient.enterprise_id)
        if closed is not None:
            raise Refusal("the patient has closed their shared care record (DSP): nothing may be stored "
                          "for them; keep the document in your own record", "dsp-closed", "PID^1^3")
        return patient

    def patient_key(self, value: str) -> str:
        """What closures are keyed by: the matricule of a known identity (given its matricule or
        enterprise id), else the value as given (a record may be closed before it exists)."""
        try:
            patient = self.identify(PatientRef(national=value if value.isdigit() else "",
                                               enterprise="" if value.isdigit() else value))
        except Refusal:
            return value
        return patient.matricule or patient.enterprise_id

    # -- documents -------------------------------------------------------------------------------

    def describe(self, content: bytes) -> Described:
        """Registry facts of a CDA document or a KOS manifest; Refusal when it is neither."""
        try:
            if content[128:132] == b"DICM":
                return describe_manifest(read_manifest(content), self.mpi.config.national_authority)
            if content.lstrip()[:1] == b"<":
                return self._describe_cda(content)
        except ParseError as err:
            raise Refusal(str(err), "102") from err
        raise Refusal("the DSP stores CDA R2 documents and DICOM KOS manifests: this is neither", "102")

    def _describe_cda(self, content: bytes) -> Described:
        meta = cda.metadata(cda.parse_xml(content))
        ids = dict(reversed(meta.patient_ids))  # root -> extension, the first id of a root wins
        ref = PatientRef(national=ids.get(self.config.national_id_root, ""),
                         enterprise=ids.get(self.mpi.config.enterprise.universal_id, ""))
        values = {k: getattr(meta, k) for k in ("document_id", "set_id", "version", "replaces", "type_code",
                                                "title", "effective_time", "confidentiality", "author",
                                                "author_organization", "custodian")}
        return Described(values, ref, CDA)

    def document_type(self, code: str) -> str:
        """The platform's name of a document type; Refusal (103) when it is not one of its types."""
        name = self.config.type_name(code)
        if name is None:
            codes = ", ".join(t.code for t in self.config.document_types)
            raise Refusal(f"document type {code or '(none)'} is not one of the platform's document types "
                          f"({codes})", "103", "/ClinicalDocument/code")
        return name

    def store(self, content: bytes, source: str) -> tuple[Entry, bool]:
        """Store a document: (its entry, True) or (the entry already there, False) for the same
        document again. Refusal when it cannot be stored as it is; OSError / sqlite3 errors when
        the disk or the database refuse now (worth a retry)."""
        described = self.describe(content)
        type_name = self.document_type(str(described.meta["type_code"]))
        patient = self.refusal(described.patient)
        sha = self.repository.put(content)  # first the blob: a row never names a missing blob
        entry = Entry(**described.meta, type_name=type_name, mime=described.mime, matricule=patient.matricule,
                      enterprise_id=patient.enterprise_id, sha256=sha, size=len(content), source=source,
                      details=described.details)
        return self.registry.register(entry)

    def content(self, entry: Entry) -> bytes:
        """A stored document's bytes, verified against its SHA-256 (IntegrityError otherwise)."""
        return self.repository.get(entry.sha256)

    def seed_register(self, root: Path) -> None:
        """Load `mpi_seed_register` into an empty MPI register (demonstration machines only)."""
        if not self.config.mpi_seed_register:
            return
        from engine.mpi.register_load import load_register

        mpi = self.mpi
        row = mpi.storage.one("SELECT count(*) FROM mpi_identity")
        if row is None or int(row[0]) == 0:
            seed = root / self.config.mpi_seed_register
            load_register(mpi, seed, user="dsp-seed", reason="demonstration seed: the register was empty")
            log.warning("mpi_seed_register_loaded", file=seed.name)


def describe_manifest(kos: KosManifest, national_authority: str) -> Described:
    """A KOS manifest as a DSP imaging entry: one version, typed Diagnostic imaging study."""
    national = kos.issuer == national_authority or kos.issuer.startswith(national_authority + "&")
    ref = PatientRef(national=kos.patient_id) if national else PatientRef(
        local=((kos.issuer, kos.patient_id),))
    first = kos.studies[0].series[0]
    meta = {"document_id": kos.sop_instance_uid, "set_id": kos.sop_instance_uid, "version": 1, "replaces": "",
            "type_code": IMAGING_TYPE, "title": "Imaging manifest", "effective_time": kos.content_time,
            "confidentiality": "N", "author": "", "author_organization": first.retrieve_ae_title,
            "custodian": first.retrieve_location_uid or first.retrieve_ae_title}
    return Described(meta, ref, DICOM, {"accession": kos.accession, "studies": _studies(kos)})


def _studies(kos: KosManifest) -> list[dict[str, Any]]:
    return [{"study_uid": study.study_uid,
             "series": [{"series_uid": s.series_uid, "retrieve_ae_title": s.retrieve_ae_title,
                         "retrieve_location_uid": s.retrieve_location_uid, "retrieve_url": s.retrieve_url,
                         "instances": len(s.instances)} for s in study.series]} for study in kos.studies]


def content_id(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


_LOCK = threading.Lock()


def blob_folder(root: Path, config: DspConfig) -> Path:
    return root / config.blob_dir if not Path(config.blob_dir).is_absolute() else Path(config.blob_dir)


def reencrypt_blobs(root: Path, cipher: PayloadCipher) -> int:
    """Move every DSP blob of the installation at `root` to the cipher's active key; blobs moved."""
    folder = blob_folder(root, load_dsp_config(root / "config" / "dsp.yaml"))
    return Repository(folder, cipher=cipher).reencrypt() if folder.is_dir() else 0


def open_dsp(root: Path, db_path: Path, mpi: Callable[[], Mpi] | None = None,
             cipher: PayloadCipher | None = None) -> Dsp:
    """A Dsp on `db_path` with `config/dsp.yaml` (CLI, tests); the MPI is opened on first use.
    `cipher`: the store's encryption at rest (engine.yaml `store.encryption`), sealing the blobs."""
    holder: dict[str, Mpi] = {}

    def own_mpi() -> Mpi:
        from engine.mpi.service import Mpi, load_for_root

        if "mpi" not in holder:
            holder["mpi"] = Mpi(db_path, load_for_root(root), cipher)
        return holder["mpi"]

    return Dsp(root, db_path, load_dsp_config(root / "config" / "dsp.yaml"), mpi or own_mpi, cipher)


def dsp_from(context: BuildContext) -> Dsp:
    """The engine's shared DSP (cached in `context.services["dsp"]`), on the store's database file."""
    with _LOCK:
        existing = context.services.get("dsp")
        if isinstance(existing, Dsp):
            return existing
        from engine.mpi.service import mpi_from

        store = context.services.get("store")
        path = getattr(store, "path", None) if store is not None else context.path("var/passerelle.db")
        if not isinstance(path, Path):
            raise ConfigError(["the DSP keeps its documents in the SQLite store file; it cannot run on the"
                               " PostgreSQL store yet"])
        cipher = getattr(store, "cipher", None)  # the store's encryption keys seal the blobs too
        dsp = open_dsp(context.root, path, lambda: mpi_from(context), cipher)
        context.services["dsp"] = dsp
    dsp.seed_register(context.root)
    return dsp
