"""Validate one parsed document: XML Schema first (CDA only), then the chosen Schematron rule set."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from engine.formats.cda import is_cda
from engine.validation.findings import Issue, RuleSetError
from engine.validation.rulesets import Registry, RuleSet


@dataclass
class Report:
    """What a validation found, and with which rules."""

    rule_set: RuleSet | None
    xsd: str | None
    issues: list[Issue] = field(default_factory=list)

    def count(self, severity: str) -> int:
        return sum(1 for i in self.issues if i.severity == severity)

    @property
    def valid(self) -> bool:
        return self.count("E") == 0


def choose_rule_set(registry: Registry, tree: etree._ElementTree, rules: str | None) -> RuleSet:
    """The rule set named by configuration, else the one the document's header selects."""
    if rules:
        return registry.resolve(rules)
    chosen = registry.choose(tree)
    if chosen is None:
        raise RuleSetError(
            f"no rule set applies to a document with root {tree.getroot().tag}: name one (--rules / rules:)"
        )
    return chosen


def validate_tree(
    registry: Registry, tree: etree._ElementTree, rules: str | None = None, xsd: str | None = "auto"
) -> Report:
    """XSD (`auto`: the rule set's schema, for CDA documents; None: skip) then Schematron.

    When the document breaks the XML Schema the Schematron rules still run: the sender gets
    every problem at once, as a conformity validator would report them.
    """
    rule_set = choose_rule_set(registry, tree, rules)
    flavour = (rule_set.xsd if is_cda(tree) else None) if xsd == "auto" else xsd
    if flavour in ("none", ""):
        flavour = None
    report = Report(rule_set, flavour)
    if flavour:
        report.issues.extend(registry.xsd(tree, flavour))
    report.issues.extend(registry.schematron(tree, rule_set))
    return report
