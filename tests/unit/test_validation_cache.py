"""Compiled rule sets: cached on disk by content, reused on restart, recompiled when rules change."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from engine.formats.cda import parse_xml
from engine.validation import cache as cache_module
from engine.validation import rulesets
from engine.validation.cache import CompiledCache
from engine.validation.compiler import Compiled
from engine.validation.rulesets import Registry

REPO = Path(__file__).resolve().parents[2]
LRPH = REPO / "../shared/data/ch-lrph/schematrons/HL7.ch/CDA-CH/v1.2/cda-ch-lrph.sch"


def copy_rule_sets(tmp_path: Path) -> Path:
    """A throwaway installation root with our rule sets (so tests may edit them)."""
    root = tmp_path / "root"
    shutil.copytree(REPO / "schematron", root / "schematron", ignore=shutil.ignore_patterns("cda-core"))
    return root


def no_compiler(*_args: object, **_kwargs: object) -> Compiled:
    raise AssertionError("the compiler ran although the disk cache was valid")


def test_a_restart_reads_the_compiled_validator_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_rule_sets(tmp_path)
    first = Registry(root, tmp_path / "cache")
    _, from_cache = first.validator(first.resolve("lab-report"))
    assert not from_cache
    monkeypatch.setattr(cache_module, "compile_schematron", no_compiler)
    second = Registry(root, tmp_path / "cache")
    _, from_cache = second.validator(second.resolve("lab-report"))
    assert from_cache


def test_a_changed_include_is_picked_up_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rulesets, "RECHECK_SECONDS", 0.0)
    root = copy_rule_sets(tmp_path)
    registry = Registry(root, tmp_path / "cache")
    rules = registry.resolve("clinical-document")
    tree = parse_xml((REPO / "tests/data/validation/lab-report.xml").read_bytes())
    assert registry.schematron(tree, rules) == []
    header = root / "schematron/clinical-document/header.sch"
    header.write_text(header.read_text().replace('test="cda:author"', 'test="cda:authenticator"'))
    assert [i.code for i in registry.schematron(tree, rules)] == ["hdr-author"]


def test_unchanged_files_with_a_new_mtime_are_not_recompiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rulesets, "RECHECK_SECONDS", 0.0)
    root = copy_rule_sets(tmp_path)
    registry = Registry(root, tmp_path / "cache")
    rules = registry.resolve("clinical-document")
    before, _ = registry.validator(rules)
    (root / "schematron/clinical-document/header.sch").touch()
    time.sleep(0.01)
    assert registry.validator(rules)[0] is before


def test_the_key_covers_included_files(tmp_path: Path) -> None:
    root = copy_rule_sets(tmp_path)
    sch = root / "schematron/lab-report/lab-report.sch"
    compiled, key, _ = CompiledCache(tmp_path / "c").get(sch, None, None)
    assert {p.name for p in compiled.files} == {"lab-report.sch", "header.sch", "lab-rules.sch"}
    (root / "schematron/lab-report/lab-rules.sch").write_text(
        (root / "schematron/lab-report/lab-rules.sch").read_text().replace("lab-doc-type", "lab-doc-kind")
    )
    assert CompiledCache(tmp_path / "c").get(sch, None, None)[1] != key


def test_a_restart_reuses_the_compiled_lrph_rule_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real XSLT 2 rule set (../shared/data; its absence fails here, loudly): a restart does
    not compile it again (how fast a cached start is: bench/schematron_validate.py)."""
    assert LRPH.is_file(), f"{LRPH} is missing: the shared data folder must sit beside the repository"
    Registry(REPO, tmp_path).validator(Registry(REPO, tmp_path).resolve("ch-lrph"))
    monkeypatch.setattr(cache_module, "compile_schematron", no_compiler)
    registry = Registry(REPO, tmp_path)
    _, from_cache = registry.validator(registry.resolve("ch-lrph"))
    assert from_cache
