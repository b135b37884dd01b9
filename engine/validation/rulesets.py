"""Rule sets: which one applies to a document, and its validator, compiled once per process.

`schematron/index.yaml` names the rule sets (folder name -> .sch file, processor, XSD) and
the selection rules (CDA `code`, header templateId, root element; first match wins). A rule set
whose file is absent (e.g. one read from `../shared/data`) is skipped by selection and reported
clearly when asked for by name.

Validators live for the life of the process. Every use checks, at most once per second, the
size and mtime of the files the rule set was compiled from; when one changed the content key is
recomputed and, if it differs, the rule set is recompiled: changed rules apply without restart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lxml import etree

from engine.formats.cda import header, is_cda
from engine.validation.cache import CompiledCache, content_key
from engine.validation.findings import Issue, RuleSetError
from engine.validation.runner import Validator, build
from engine.validation.xsd import xsd_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path("var/cache/schematron")
RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class RuleSet:
    """One rule set as the index describes it."""

    name: str
    sch: Path
    processor: str | None = None
    phase: str | None = None
    xsd: str | None = None  # "sdtc", "normative" or None (not a CDA document)


@dataclass
class _Live:
    validator: Validator
    key: str
    stamps: list[tuple[str, int, int]]
    from_cache: bool
    checked: float = field(default_factory=time.monotonic)


def _stamps(files: list[Path]) -> list[tuple[str, int, int]]:
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(f), -1, -1))
    return out


class Registry:
    """The rule sets of one installation (a repository root) and their live validators."""

    def __init__(self, root: Path = REPO_ROOT, cache_dir: Path | None = DEFAULT_CACHE) -> None:
        self.root = root.resolve()
        if cache_dir is not None and not cache_dir.is_absolute():
            cache_dir = self.root / cache_dir
        self.cache = CompiledCache(cache_dir)
        self.rule_sets, self.selectors = self._index()
        self._live: dict[RuleSet, _Live] = {}
        self._lock = threading.Lock()

    def _index(self) -> tuple[dict[str, RuleSet], list[dict[str, str]]]:
        path = self.root / "schematron" / "index.yaml"
        data: dict[str, Any] = yaml.safe_load(path.read_text("utf-8")) if path.is_file() else {}
        sets = {
            name: RuleSet(
                name,
                (self.root / spec["file"]).resolve(),
                spec.get("processor"),
                spec.get("phase"),
                spec.get("xsd"),
            )
            for name, spec in (data.get("rule_sets") or {}).items()
        }
        return sets, list(data.get("select") or [])

    def resolve(self, name: str) -> RuleSet:
        """A rule set by index name, folder name under schematron/, or path to a .sch file."""
        if name in self.rule_sets:
            found = self.rule_sets[name]
            if not found.sch.is_file():
                raise RuleSetError(f"rule set {name}: file {found.sch} is not available on this installation")
            return found
        path = Path(name)
        if path.suffix == ".sch" and path.is_file():
            return RuleSet(path.stem, path.resolve(), xsd=None)
        folder = self.root / "schematron" / name
        schs = sorted(folder.glob("*.sch")) if folder.is_dir() else []
        if len(schs) == 1:
            return RuleSet(name, schs[0])
        known = ", ".join(sorted(self.rule_sets))
        raise RuleSetError(f'unknown rule set "{name}" (known: {known}; or give a path to a .sch file)')

    def choose(self, tree: etree._ElementTree) -> RuleSet | None:
        """The first selector matching the document's root, CDA code and templateIds."""
        facts = _facts(tree)
        for sel in self.selectors:
            wanted = {k: v for k, v in sel.items() if k != "rules"}
            if all(_matches(facts, k, str(v)) for k, v in wanted.items()):
                found = self.rule_sets.get(sel["rules"])
                if found is not None and found.sch.is_file():
                    return found
        return None

    def validator(self, rule_set: RuleSet) -> tuple[Validator, bool]:
        """The live validator (compiled once per process); True when it came from disk cache."""
        with self._lock:
            live = self._live.get(rule_set)
            if live is None or self._changed(rule_set, live):
                live = self._load(rule_set)
                self._live[rule_set] = live
            return live.validator, live.from_cache

    def _load(self, rule_set: RuleSet) -> _Live:
        compiled, key, from_cache = self.cache.get(rule_set.sch, rule_set.phase, rule_set.processor)
        validator = build(compiled, rule_set.name, rule_set.sch.resolve().as_uri())
        return _Live(validator, key, _stamps(compiled.files), from_cache)

    def _changed(self, rule_set: RuleSet, live: _Live) -> bool:
        now = time.monotonic()
        if now - live.checked < RECHECK_SECONDS:
            return False
        live.checked = now
        files = [Path(s[0]) for s in live.stamps]
        stamps = _stamps(files)
        if stamps == live.stamps:
            return False
        options = self.cache._options(rule_set.sch, rule_set.phase, rule_set.processor)
        if content_key(files, options) == live.key:
            live.stamps = stamps
            return False
        return True

    def schematron(self, tree: etree._ElementTree, rule_set: RuleSet) -> list[Issue]:
        validator, _ = self.validator(rule_set)
        return validator.validate(tree)

    def xsd(self, tree: etree._ElementTree, flavour: str) -> list[Issue]:
        return xsd_validator(self.root, flavour).validate(tree)


def _facts(tree: etree._ElementTree) -> dict[str, list[str]]:
    root = tree.getroot()
    facts: dict[str, list[str]] = {"root": [str(root.tag)]}
    if is_cda(tree):
        h = header(tree)
        facts["code"] = [h.code]
        facts["template_id"] = list(h.template_ids)
    return facts


def _matches(facts: dict[str, list[str]], key: str, value: str) -> bool:
    return value in facts.get(key, [])


_registries: dict[tuple[Path, Path | None], Registry] = {}
_registries_lock = threading.Lock()


def registry(root: Path = REPO_ROOT, cache_dir: Path | None = DEFAULT_CACHE) -> Registry:
    """The process-wide registry for a root: steps and the CLI share compiled validators."""
    key = (root.resolve(), cache_dir)
    with _registries_lock:
        if key not in _registries:
            _registries[key] = Registry(root, cache_dir)
        return _registries[key]
