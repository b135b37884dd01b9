"""Reading DICOM KOS imaging manifests, cross-checked with Debian's dcmtk: files written by pydicom
are read by dcmdump/dsrdump as the same manifest, files written by dcmtk's xml2dcm are read by the
engine, and anything that is not a manifest is refused with a reason a sender can act on."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from engine.errors import ParseError
from engine.formats.dicom_manifest import ManifestSpec, build_manifest, read_manifest
from tests.unit.hl7_samples import MATRICULE

DATA = Path(__file__).resolve().parents[1] / "data" / "dicom"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def spec(**changes: object) -> ManifestSpec:
    values: dict[str, object] = {
        "patient_id": MATRICULE, "issuer": "RNPP", "accession": "ACC-0001", "study_uid": "2.999.30.1",
        "series_uid": "2.999.30.1.1", "instances": ("2.999.30.1.1.1", "2.999.30.1.1.2"),
        "sop_instance_uid": "2.999.30.1.9.1",
    }
    return ManifestSpec(**{**values, **changes})  # type: ignore[arg-type]


def dcmtk(tool: str, *args: str) -> str:
    """Run a dcmtk tool; dcmtk is a test dependency (scripts/debian-packages.txt), never skipped."""
    assert shutil.which(tool), f"{tool} is missing: apt-get install dcmtk"
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def xml2dcm(tmp_path: Path, xml: str) -> bytes:
    source, target = tmp_path / "kos.xml", tmp_path / "kos.dcm"
    source.write_text(xml, encoding="utf-8")
    dcmtk("xml2dcm", str(source), str(target))
    return target.read_bytes()


def test_a_pydicom_manifest_is_read_with_its_references() -> None:
    kos = read_manifest(build_manifest(spec()))
    assert (kos.patient_id, kos.issuer, kos.accession) == (MATRICULE, "RNPP", "ACC-0001")
    [study] = kos.studies
    [series] = study.series
    assert (study.study_uid, series.series_uid) == ("2.999.30.1", "2.999.30.1.1")
    assert (series.retrieve_ae_title, series.retrieve_location_uid) == ("PACS", "2.999.20.1")
    assert [uid for _, uid in series.instances] == ["2.999.30.1.1.1", "2.999.30.1.1.2"]
    assert kos.content_time == "20250314101500"


def test_dcmtk_reads_the_pydicom_manifest_as_the_same_kos(tmp_path: Path) -> None:
    path = tmp_path / "kos.dcm"
    path.write_bytes(build_manifest(spec()))
    dump = dcmtk("dcmdump", "-Un", str(path))  # UIDs as numbers, not names
    assert "1.2.840.10008.5.1.4.1.1.88.59" in dump and f"[{MATRICULE}]" in dump and "[ACC-0001]" in dump
    assert "[2.999.30.1.1.2]" in dump and "[113030]" in dump
    report = dcmtk("dsrdump", str(path))
    assert report.startswith("Key Object Selection Document") and '"Manifest"' in report


def test_a_manifest_written_by_dcmtk_is_read(tmp_path: Path) -> None:
    kos = read_manifest(xml2dcm(tmp_path, (DATA / "kos-manifest.dcmtk.xml").read_text(encoding="utf-8")))
    assert (kos.patient_id, kos.issuer, kos.accession) == ("H0042", "HOPITAL-TEST", "RAD-2025-0042")
    [series] = kos.studies[0].series
    assert series.retrieve_url.startswith("https://pacs.hopital-test.example/")
    assert kos.instance_count() == 3 and kos.content_time == "20250311090000"
    dump = dcmtk("dcmdump", str(tmp_path / "kos.dcm"))
    assert "[2.999.40.7.9.1]" in dump and kos.sop_instance_uid == "2.999.40.7.9.1"


def ct_image() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(CT_IMAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID("2.999.30.1.1.1")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CT_IMAGE, "2.999.30.1.1.1", "CT"
    ds.PatientID, ds.Rows, ds.Columns, ds.BitsAllocated = MATRICULE, 2, 2, 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 15, 0, 1
    ds.PhotometricInterpretation, ds.PixelData = "MONOCHROME2", b"\x00" * 8
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(("data", "reason"), [
    (ct_image(), "not a KOS imaging manifest: the file is a CT image"),
    (build_manifest(spec(title_code="113000")), "its title (ConceptNameCodeSequence) is DCM 113000"),
    (build_manifest(spec())[:700], "damaged, truncated"),
    (b"MSH|^~\\&|not dicom", "not a DICOM Part 10 file"),
    (build_manifest(spec(patient_id="")), "no PatientID"),
    (build_manifest(spec(retrieve_ae_title="", retrieve_location_uid="")), "says nowhere to retrieve it"),
])
def test_anything_else_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        read_manifest(data)
    assert reason in str(err.value)
    assert MATRICULE not in str(err.value)  # reasons never quote patient data


def test_every_truncation_is_refused_not_misread() -> None:
    data = build_manifest(spec())
    accepted = []
    for cut in range(132, len(data), 7):
        try:
            accepted.append(read_manifest(data[:cut]))
        except ParseError:
            continue
    # a cut exactly between two complete top-level elements can only drop trailing content items
    assert all(kos.instance_count() == 2 for kos in accepted)


def test_the_pydicom_writer_round_trips_through_pydicom() -> None:
    ds = pydicom.dcmread(io.BytesIO(build_manifest(spec())))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59" and ds.Modality == "KO"
