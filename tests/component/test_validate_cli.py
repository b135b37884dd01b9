"""`passerelle validate`: a readable report, and an exit status a script can use."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from engine.validation.cli import validate_command

REPO = Path(__file__).resolve().parents[2]
PCR = REPO / "../shared/data/ch-lrph/projects/BAG/Meldesysteme/v1.0/CDA-CH-LRPH-PCRNachweis.xml"
SAMPLE = REPO / "tests/data/validation/lab-report.xml"


def run(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    return validate_command([str(a) for a in argv], out), out.getvalue()


def test_the_lrph_sample_gives_the_reference_findings(tmp_path: Path) -> None:
    status, text = run(PCR, "--cache-dir", tmp_path)
    assert status == 0
    assert "rule set: ch-lrph" in text and "XML Schema: CDA R2 (normative)" in text
    assert "WARNING  cda-ch-lrph_as00009  at /cda:ClinicalDocument[1]\n" in text
    assert (
        "WARNING  cda-ch-lrph_as00019  at /cda:ClinicalDocument[1]/cda:recordTarget[1]/cda:patientRole[1]"
        in text
    )
    assert "Wohnkantons" in text
    assert "VALID: 0 error(s), 2 warning(s), 7 information (use --all to show them)" in text


def test_errors_exit_1_with_assertion_location_and_text(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_bytes(SAMPLE.read_bytes().replace(b'<code code="718-7"', b'<code code="HGB"'))
    status, text = run(bad, "--rules", "lab-report", "--cache-dir", tmp_path)
    assert status == 1
    assert "ERROR    lab-res-loinc-syntax  at /cda:ClinicalDocument[1]/cda:component[1]" in text
    assert 'has the LOINC code "HGB"' in text
    assert "INVALID: 1 error(s)" in text


def test_rules_by_path_and_json_output(tmp_path: Path) -> None:
    sch = REPO / "schematron/clinical-document/clinical-document.sch"
    status, text = run(SAMPLE, "--rules", sch, "--format", "json", "--no-xsd", "--cache-dir", tmp_path)
    [result] = json.loads(text)
    assert (
        status == 0
        and result["valid"]
        and result["rule_set"] == "clinical-document"
        and result["xsd"] is None
    )


def test_unsafe_or_unreadable_input_exits_2(tmp_path: Path) -> None:
    attack = tmp_path / "attack.xml"
    attack.write_bytes(b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>')
    status, text = run(attack, tmp_path / "missing.xml", "--cache-dir", tmp_path)
    assert status == 2
    assert "REFUSED  XML document declares a DTD or entities" in text
    assert "REFUSED  cannot read" in text


def test_unknown_rule_set_exits_2(tmp_path: Path) -> None:
    status, text = run(SAMPLE, "--rules", "nope", "--cache-dir", tmp_path)
    assert status == 2 and 'unknown rule set "nope"' in text


def test_runs_as_a_module(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "engine.validation.cli", str(SAMPLE), "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "rule set: notifiable-lab-report" in done.stdout and "VALID: 0 error(s)" in done.stdout
