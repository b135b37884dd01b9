"""Step `validate_schematron`: check a document against an ISO Schematron rule set.

The rule set is named in configuration or chosen from the document (CDA `code` / templateId /
root element, see `schematron/index.yaml`). XSLT 2/3 rule sets run in Saxon-HE, XSLT 1 rule
sets in lxml; each is compiled once per process (and cached on disk by content). A failed
error-level assertion rejects the message (AE) with one finding per failure: the assertion id,
the XPath of the offending node and the rule's own text; warnings travel with the message.
For HL7 v2 messages the CDA is read from `hl7_path` (the ED data component, Base64 when the
encoding component says so).
"""

from __future__ import annotations

from pathlib import Path

from engine.contracts import BuildContext, ComponentConfig
from engine.errors import ConfigError
from engine.formats.cda import MAX_BYTES, MAX_DEPTH
from engine.message import Message
from engine.validation.document import choose_rule_set
from engine.validation.findings import RuleSetError
from engine.validation.rulesets import DEFAULT_CACHE, registry
from engine.validation.steps import conclude, parsed


class Config(ComponentConfig):
    rules: str | None = None
    """Rule set: a name from `schematron/index.yaml`, a folder under `schematron/`, or a path to
    a .sch file. Empty: chosen from the document's type (CDA code, templateId, root element)."""
    hl7_path: str = "OBX-5.5"
    """For HL7 v2 messages: the field holding the CDA (ED data; Base64 when the component before
    it, e.g. OBX-5.4, is `Base64`)."""
    keep_information: bool = False
    """Also attach information-level findings (rule sets' debug reports) to the message."""
    max_bytes: int = MAX_BYTES
    """Refuse documents larger than this many bytes."""
    max_depth: int = MAX_DEPTH
    """Refuse documents nesting elements deeper than this."""
    cache_dir: Path = DEFAULT_CACHE
    """Where compiled rule sets are cached (relative to the project root)."""


EXAMPLE: dict[str, object] = {"type": "validate_schematron", "rules": "lab-report"}
SchematronConfig = Config


class ValidateSchematron:
    def __init__(self, config: SchematronConfig, context: BuildContext) -> None:
        self.config = config
        self.registry = registry(context.root, config.cache_dir)
        if config.rules:  # compile now: a broken or missing rule set is a configuration error
            try:
                self.registry.validator(self.registry.resolve(config.rules))
            except RuleSetError as err:
                raise ConfigError([f"channel {context.channel}: rules: {err}"]) from err

    def __call__(self, message: Message) -> Message:
        c = self.config
        tree = parsed(message, c.hl7_path, c.max_bytes, c.max_depth)
        rule_set = choose_rule_set(self.registry, tree, c.rules)
        return conclude(message, self.registry.schematron(tree, rule_set), c.keep_information)
