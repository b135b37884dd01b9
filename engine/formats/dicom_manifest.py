"""DICOM KOS imaging manifests (IHE XDS-I.b): read and check one, or build one (tests, tools).

A manifest is a Key Object Selection document (SOP Class 1.2.840.10008.5.1.4.1.1.88.59, modality
KO) titled (DCM, 113030, "Manifest"). It names the patient (PatientID + IssuerOfPatientID), the
accession number, and per referenced study (CurrentRequestedProcedureEvidenceSequence) the
series with where to retrieve them (RetrieveAETitle / RetrieveLocationUID / RetrieveURL) and
their instances (ReferencedSOPSequence). `read_manifest` refuses anything else (another DICOM
object such as a CT image, a KOS with another title, a damaged file) with a `ParseError` whose
text says why in words a sender can act on. No I/O; the text never quotes patient data.
"""

from __future__ import annotations

import io
import struct
import threading
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from engine.errors import ParseError

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
MANIFEST_TITLE = ("113030", "DCM", "Manifest")
MAX_BYTES = 20 * 1024 * 1024
# pydicom's strict reading (a truncated element raises instead of a warning) is a process-wide
# setting: reads take this lock so a strict read never overlaps a lenient one.
_STRICT = threading.Lock()
_DAMAGED = "the DICOM file is damaged, truncated or holds invalid values and cannot be read"
_UNDEFINED = 0xFFFFFFFF
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0, little endian
_SOP_CLASS_NAMES = {
    "1.2.840.10008.5.1.4.1.1.2": "a CT image",
    "1.2.840.10008.5.1.4.1.1.4": "an MR image",
    "1.2.840.10008.5.1.4.1.1.1": "a CR image",
    "1.2.840.10008.5.1.4.1.1.7": "a secondary capture image",
    "1.2.840.10008.5.1.4.1.1.88.11": "a basic text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "an enhanced SR",
}


@dataclass(frozen=True)
class SeriesRef:
    series_uid: str
    retrieve_ae_title: str
    retrieve_location_uid: str
    retrieve_url: str
    instances: tuple[tuple[str, str], ...]  # (SOP class UID, SOP instance UID)


@dataclass(frozen=True)
class StudyRef:
    study_uid: str
    series: tuple[SeriesRef, ...]


@dataclass(frozen=True)
class KosManifest:
    """The facts of a manifest a registry needs (holds patient ids: never log it)."""

    sop_instance_uid: str
    patient_id: str
    issuer: str
    accession: str
    study_uid: str
    content_time: str  # YYYYMMDDhhmmss (ContentDate/Time, else StudyDate/Time)
    title: str
    studies: tuple[StudyRef, ...]

    def instance_count(self) -> int:
        return sum(len(s.instances) for study in self.studies for s in study.series)


def read_manifest(data: bytes, max_bytes: int = MAX_BYTES) -> KosManifest:
    """The manifest in DICOM Part 10 bytes, checked; ParseError with the reason otherwise."""
    try:
        return _manifest(_dataset(data, max_bytes))
    except ParseError:
        raise
    except Exception as err:  # pydicom raises many types on damaged input; never crash on one
        raise ParseError(_DAMAGED + f" ({type(err).__name__})") from err


def _manifest(ds: Dataset) -> KosManifest:
    _check_kos(ds)
    patient_id = _text(ds, "PatientID")
    if not patient_id:
        raise ParseError("the KOS manifest has no PatientID (0010,0020): the patient cannot be identified")
    evidence = _items(ds, "CurrentRequestedProcedureEvidenceSequence")
    studies = tuple(_study(item, i) for i, item in enumerate(evidence))
    if not studies:
        raise ParseError("the KOS manifest references no study: CurrentRequestedProcedureEvidenceSequence "
                         "(0040,A375) is empty or missing")
    return KosManifest(
        sop_instance_uid=_required_uid(ds, "SOPInstanceUID", "(0008,0018)"),
        patient_id=patient_id,
        issuer=_text(ds, "IssuerOfPatientID"),
        accession=_text(ds, "AccessionNumber") or _referenced_accession(ds),
        study_uid=_text(ds, "StudyInstanceUID"),
        content_time=_when(ds),
        title=MANIFEST_TITLE[2],
        studies=studies,
    )


def _dataset(data: bytes, max_bytes: int) -> Dataset:
    if len(data) > max_bytes:
        raise ParseError(f"DICOM file is {len(data)} bytes, over the limit of {max_bytes} bytes")
    if len(data) < 132 or data[128:132] != b"DICM":
        raise ParseError("not a DICOM Part 10 file: no 'DICM' marker after the 128-byte preamble")
    try:
        with _STRICT, pydicom_config.strict_reading():
            ds = pydicom.dcmread(io.BytesIO(data))
            _check_complete(ds, data)
            for _ in ds.iterall():  # decode every element now: a damaged file fails here, not later
                pass
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, NotImplementedError,
            struct.error) as err:
        # pydicom's text may quote a value (patient data): name the kind of error only.
        raise ParseError(_DAMAGED + f" ({type(err).__name__})") from err
    return ds


def _check_complete(ds: Dataset, data: bytes) -> None:
    """EOFError unless the data set ends exactly at the end of the file: pydicom reads a truncated
    file without complaint, keeping the elements it could read. The last top-level element must
    end there (its defined length), or, with undefined length, be closed by the sequence
    delimitation item that ends the file."""
    if not len(ds):
        raise EOFError("no data set after the file meta information")
    last = ds.get_item(list(ds.keys())[-1])
    length = getattr(last, "length", 0)
    tell = getattr(last, "value_tell", 0)
    if length != _UNDEFINED and tell + length != len(data):
        raise EOFError("the file does not end where its last element ends")
    if length == _UNDEFINED and not data.endswith(_SEQUENCE_END):
        raise EOFError("a sequence of undefined length is not closed at the end of the file")


def _check_kos(ds: Dataset) -> None:
    sop_class = _text(ds, "SOPClassUID") or _text(ds.file_meta, "MediaStorageSOPClassUID")
    if sop_class != KOS_SOP_CLASS:
        what = _SOP_CLASS_NAMES.get(sop_class, f"SOP class {sop_class or '(none)'}")
        raise ParseError(f"not a KOS imaging manifest: the file is {what}; only Key Object Selection "
                         f"documents (SOP class {KOS_SOP_CLASS}) titled 113030 Manifest are accepted")
    titles = _items(ds, "ConceptNameCodeSequence")
    code = (_text(titles[0], "CodeValue"), _text(titles[0], "CodingSchemeDesignator")) if titles else ("", "")
    if code != MANIFEST_TITLE[:2]:
        raise ParseError(f"the KOS is not an imaging manifest: its title (ConceptNameCodeSequence) is "
                         f"{code[1] or '?'} {code[0] or '(none)'}, not DCM 113030 (Manifest)")


def _study(item: Dataset, index: int) -> StudyRef:
    where = f"study {index + 1} of CurrentRequestedProcedureEvidenceSequence"
    study_uid = _text(item, "StudyInstanceUID")
    if not study_uid:
        raise ParseError(f"{where} has no StudyInstanceUID")
    listed = _items(item, "ReferencedSeriesSequence")
    series = tuple(_series(s, f"{where}, series {k + 1}") for k, s in enumerate(listed))
    if not series:
        raise ParseError(f"{where} references no series (ReferencedSeriesSequence)")
    return StudyRef(study_uid, series)


def _series(item: Dataset, where: str) -> SeriesRef:
    series_uid = _text(item, "SeriesInstanceUID")
    if not series_uid:
        raise ParseError(f"{where} has no SeriesInstanceUID")
    instances = tuple((_text(i, "ReferencedSOPClassUID"), _text(i, "ReferencedSOPInstanceUID"))
                      for i in _items(item, "ReferencedSOPSequence"))
    if not instances or not all(uid for _, uid in instances):
        raise ParseError(f"{where} lists no instance, or one without ReferencedSOPInstanceUID")
    ref = SeriesRef(series_uid, _text(item, "RetrieveAETitle"), _text(item, "RetrieveLocationUID"),
                    _text(item, "RetrieveURL"), instances)
    if not (ref.retrieve_ae_title or ref.retrieve_location_uid or ref.retrieve_url):
        raise ParseError(f"{where} says nowhere to retrieve it: give RetrieveLocationUID (0040,E011), "
                         "RetrieveAETitle (0008,0054) or RetrieveURL (0008,1190)")
    return ref


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    value = ds.get(keyword)
    return list(value) if isinstance(value, Sequence) else []


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _required_uid(ds: Dataset, keyword: str, tag: str) -> str:
    value = _text(ds, keyword)
    if not value:
        raise ParseError(f"the KOS manifest has no {keyword} {tag}")
    return value


def _referenced_accession(ds: Dataset) -> str:
    requests = _items(ds, "ReferencedRequestSequence")
    return _text(requests[0], "AccessionNumber") if requests else ""


def _when(ds: Dataset) -> str:
    date = _text(ds, "ContentDate") or _text(ds, "StudyDate")
    clock = _text(ds, "ContentTime") if _text(ds, "ContentDate") else _text(ds, "StudyTime")
    return (date + clock.split(".")[0]).ljust(14, "0")[:14] if date else ""


# -- building (tests, tools, benchmarks) -----------------------------------------------------------


@dataclass(frozen=True)
class ManifestSpec:
    """What `build_manifest` writes: one study with one series of `instances` images."""

    patient_id: str
    issuer: str
    accession: str
    study_uid: str
    series_uid: str
    instances: tuple[str, ...]
    sop_instance_uid: str
    retrieve_ae_title: str = "PACS"
    retrieve_location_uid: str = "2.999.20.1"
    content_date: str = "20250314"
    content_time: str = "101500"
    sop_class: str = KOS_SOP_CLASS
    title_code: str = MANIFEST_TITLE[0]
    referenced_class: str = "1.2.840.10008.5.1.4.1.1.2"


def build_manifest(spec: ManifestSpec) -> bytes:
    """A KOS manifest as DICOM Part 10 bytes (explicit VR little endian), written with pydicom."""
    ds = Dataset()
    ds.file_meta = _file_meta(spec)
    _header(ds, spec)
    ds.ConceptNameCodeSequence = Sequence([_code(spec.title_code, "DCM", "Manifest")])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([_evidence(spec)])
    ds.ContentSequence = Sequence([_content_item(spec)])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _file_meta(spec: ManifestSpec) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(spec.sop_class)
    meta.MediaStorageSOPInstanceUID = UID(spec.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _header(ds: Dataset, spec: ManifestSpec) -> None:
    values: dict[str, Any] = {
        "SOPClassUID": spec.sop_class, "SOPInstanceUID": spec.sop_instance_uid, "Modality": "KO",
        "PatientName": "TEST^PATIENT", "PatientID": spec.patient_id, "IssuerOfPatientID": spec.issuer,
        "PatientBirthDate": "", "PatientSex": "", "StudyInstanceUID": spec.study_uid,
        "SeriesInstanceUID": spec.series_uid + ".99", "SeriesNumber": 99, "InstanceNumber": 1,
        "StudyDate": spec.content_date, "StudyTime": spec.content_time, "AccessionNumber": spec.accession,
        "ReferringPhysicianName": "", "StudyID": "1", "Manufacturer": "Passerelle",
        "ContentDate": spec.content_date, "ContentTime": spec.content_time, "ValueType": "CONTAINER",
        "ContinuityOfContent": "SEPARATE",
    }
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.ReferencedPerformedProcedureStepSequence = Sequence()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _sop(sop_class: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, uid
    return item


def _evidence(spec: ManifestSpec) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = spec.series_uid
    series.RetrieveAETitle = spec.retrieve_ae_title
    series.RetrieveLocationUID = spec.retrieve_location_uid
    series.ReferencedSOPSequence = Sequence([_sop(spec.referenced_class, uid) for uid in spec.instances])
    study = Dataset()
    study.StudyInstanceUID = spec.study_uid
    study.ReferencedSeriesSequence = Sequence([series])
    return study


def _content_item(spec: ManifestSpec) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
    item.ReferencedSOPSequence = Sequence([_sop(spec.referenced_class, spec.instances[0])])
    return item
