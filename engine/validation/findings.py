"""Validation findings (`Issue`) and how they become the engine's `Finding`s."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.errors import Finding, PasserelleError

_SEVERITY = {"fatal": "E", "error": "E", "warning": "W", "warn": "W", "info": "I", "information": "I"}


class RuleSetError(PasserelleError):
    """A rule set or schema cannot be compiled or run: a defect of the rules, not of the document."""


@dataclass(frozen=True)
class Issue:
    """One problem found in a document: which rule, where, and what to do about it.

    `severity` is E/W/I; `code` the assertion id (or "xsd"); `location` an XPath; `line` the
    line in the document when known (XSD); `source` names the rule set or schema.
    """

    severity: str
    code: str
    location: str
    text: str
    line: int = 0
    source: str = ""

    def finding(self) -> Finding:
        return Finding(text=self.text, code=self.code, location=self.location, severity=self.severity)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def severity_of(kind: str, role: str, flag: str) -> str:
    """E/W/I from the assertion's role (or flag); asserts default to E, reports to I."""
    for word in (role, flag):
        found = _SEVERITY.get(word.strip().lower())
        if found:
            return found
    return "E" if kind == "assert" else "I"
