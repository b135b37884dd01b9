"""Running a compiled validator: XSLT 2/3 in Saxon-HE (saxonche), XSLT 1 in lxml (libxslt).

One `PySaxonProcessor` per process, created on first use and kept for the life of the process
(creating several is slow and unsafe). Saxon-HE cannot save a compiled stylesheet, so each rule
set is compiled once per process and its executable reused for every document.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from lxml import etree

from engine.validation.compiler import PSV, Assertion, Compiled
from engine.validation.findings import Issue, RuleSetError, severity_of

_lock = threading.Lock()
_processor: list[Any] = []  # the one PySaxonProcessor of this process, once created


def saxon() -> Any:
    """The process-wide Saxon processor."""
    with _lock:
        if not _processor:
            from saxonche import PySaxonProcessor

            _processor.append(PySaxonProcessor(license=False))
        return _processor[0]


class Validator(Protocol):
    def validate(self, tree: etree._ElementTree) -> list[Issue]: ...


def _issues(report: etree._Element, assertions: list[Assertion], source: str) -> list[Issue]:
    issues = []
    for f in report.iter(f"{{{PSV}}}f"):
        a = assertions[int(f.get("n", "0"))]
        text = " ".join("".join(f.itertext()).split()) or f"{a.kind} failed: {a.test}"
        issues.append(Issue(severity_of(a.kind, a.role, a.flag), a.id, f.get("l", ""), text, 0, source))
    return issues


class SaxonValidator:
    """An XSLT 2/3 validator compiled once in Saxon; vocabularies parsed once and passed in."""

    def __init__(self, compiled: Compiled, source: str) -> None:
        from saxonche import PySaxonApiError

        self._error = PySaxonApiError
        self.assertions = compiled.assertions
        self.source = source
        proc = saxon()
        try:
            self._exe = proc.new_xslt30_processor().compile_stylesheet(stylesheet_text=compiled.xslt)
            for name, path in compiled.vocabularies.items():
                self._exe.set_parameter(name, proc.parse_xml(xml_file_name=str(path)))
        except PySaxonApiError as err:
            raise RuleSetError(f"rule set {source} does not compile in Saxon: {err}") from err

    def validate(self, tree: etree._ElementTree) -> list[Issue]:
        text = etree.tostring(tree.getroot(), encoding="unicode")
        try:
            node = saxon().parse_xml(xml_text=text)
            out = self._exe.transform_to_string(xdm_node=node)
        except self._error as err:
            raise RuleSetError(f"rule set {self.source} failed on this document: {err}") from err
        report = etree.fromstring(out.encode("utf-8"))
        return _issues(report, self.assertions, self.source)


class LxmlValidator:
    """An XSLT 1 validator in libxslt: reads only local files, never the network."""

    def __init__(self, compiled: Compiled, source: str, base_url: str) -> None:
        self.assertions = compiled.assertions
        self.source = source
        access = etree.XSLTAccessControl(
            read_file=True, write_file=False, create_dir=False, read_network=False, write_network=False
        )
        try:
            doc = etree.fromstring(compiled.xslt.encode("utf-8"), base_url=base_url)
            self._xslt = etree.XSLT(doc, access_control=access)
        except (etree.XSLTParseError, etree.XMLSyntaxError) as err:
            raise RuleSetError(f"rule set {source} does not compile as XSLT 1: {err}") from err

    def validate(self, tree: etree._ElementTree) -> list[Issue]:
        try:
            result = self._xslt(tree)
        except etree.XSLTApplyError as err:
            raise RuleSetError(f"rule set {self.source} failed on this document: {err}") from err
        root = result.getroot()
        return [] if root is None else _issues(root, self.assertions, self.source)


def build(compiled: Compiled, source: str, base_url: str) -> Validator:
    if compiled.saxon:
        return SaxonValidator(compiled, source)
    return LxmlValidator(compiled, source, base_url)
