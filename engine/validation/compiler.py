"""ISO Schematron -> XSLT validator compiler (our own, in Python).

Does what the ISO skeleton pipeline does (include -> abstract-expand -> compile), with the same
semantics as the skeleton: one XSLT mode per active pattern, the first matching rule of a
pattern wins, rule `let`s become local variables in document order, schema and pattern `let`s
become globals, `xsl:function`/`xsl:key` are copied. Differences, on purpose:

- the validator emits a compact report (`psv:f n="assertion index" l="location"`) instead of
  SVRL; assertion metadata (id, role, test) is kept on the Python side (`Assertion`);
- for Saxon, each pattern selects its rule contexts with one `//(c1 | c2 ...)` expression instead
  of walking every node of the document once per pattern (same nodes, same order, far faster);
- `document('literal')` lookups go through `psv:doc`, which serves vocabulary files parsed
  once per process (passed as parameters) instead of re-parsing them for every document;
- locations are real XPaths with the rule set's own prefixes and an index on every step
  (`/cda:ClinicalDocument[1]/cda:recordTarget[1]`), evaluable with the rule set's namespaces;
- the message text includes the text of foreign elements (e.g. `xhtml:p`), which the skeleton drops.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from engine.validation.findings import RuleSetError

SCH = "http://purl.oclc.org/dsdl/schematron"
XSL = "http://www.w3.org/1999/XSL/Transform"
PSV = "urn:passerelle:schematron"
S = f"{{{SCH}}}"
X = f"{{{XSL}}}"
XSLT2_BINDINGS = {"xslt2", "xslt3", "xpath2", "xpath3", "xpath31"}


class CompileError(RuleSetError):
    """The rule set cannot be compiled (unreadable include, unknown abstract rule, ...)."""


@dataclass(frozen=True)
class Assertion:
    """One assert/report of the rule set, as the report refers to it by index."""

    id: str
    kind: str  # "assert" | "report"
    role: str
    flag: str
    test: str
    pattern: str
    rule: str


@dataclass
class Compiled:
    """The generated validator and what it needs at run time."""

    xslt: str
    assertions: list[Assertion]
    binding: str
    saxon: bool
    files: list[Path]  # the .sch and every file it includes (the cache key covers them)
    vocabularies: dict[str, Path] = field(default_factory=dict)  # psv:doc name -> file


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True)


def load_schema(path: Path, files: list[Path]) -> etree._Element:
    """Parse a .sch (or included fragment) file; record it as a dependency."""
    files.append(path.resolve())
    try:
        return etree.parse(str(path), _safe_parser()).getroot()
    except (OSError, etree.XMLSyntaxError) as err:
        raise CompileError(f"cannot read rule set file {path}: {err}") from err


# ---------------------------------------------------------------- include


def _is_sch_or_xsl(el: etree._Element) -> bool:
    tag = el.tag if isinstance(el.tag, str) else ""
    return tag.startswith(S) or tag in (f"{X}function", f"{X}key")


def _fragments(href: str, base: Path, files: list[Path]) -> list[etree._Element]:
    """What an `include` brings: the root if it is a Schematron element, else its children."""
    doc, _, frag = href.partition("#")
    target = (base.parent / doc).resolve() if doc else base
    root = load_schema(target, files) if doc else None
    if root is None:
        raise CompileError(f"include without a document is not supported: {href}")
    _resolve_includes(root, target, files)
    if frag:
        found = root.xpath("//*[@id=$i]", i=frag)
        if not isinstance(found, list) or not found:
            raise CompileError(f"{href}: no element with id {frag}")
        return [found[0]]
    if root.tag != f"{S}schema" and _is_sch_or_xsl(root):
        return [root]
    return [c for c in root if isinstance(c.tag, str) and _is_sch_or_xsl(c)]


def _resolve_includes(root: etree._Element, base: Path, files: list[Path]) -> None:
    for inc in list(root.iter(f"{S}include", f"{S}extends")):
        href = inc.get("href")
        if not href:
            continue  # extends rule="..." is handled with abstract rules
        parent = inc.getparent()
        assert parent is not None
        pieces = _fragments(href, base, files)
        if inc.tag == f"{S}extends":  # ISO 2016: extends href brings the rule's children
            pieces = [c for p in pieces for c in p]
        at = parent.index(inc)
        parent.remove(inc)
        for offset, piece in enumerate(pieces):
            parent.insert(at + offset, copy.deepcopy(piece))


# ---------------------------------------------------------------- abstract patterns and rules


def _substitute(text: str, params: dict[str, str]) -> str:
    for name in sorted(params, key=len, reverse=True):
        # A plain-text replacement (no regex escapes in the value): $name not followed by a name char.
        pieces = re.split(r"\$" + re.escape(name) + r"(?![\w.\-])", text)
        text = params[name].join(pieces)
    return text


def _instantiate(instance: etree._Element, abstract: etree._Element) -> etree._Element:
    params = {p.get("name", ""): p.get("value", "") for p in instance.findall(f"{S}param")}
    made = etree.Element(f"{S}pattern", nsmap=abstract.nsmap)
    for key in ("id", "documents"):
        if instance.get(key) is not None:
            made.set(key, instance.get(key, ""))
    for child in abstract:
        made.append(copy.deepcopy(child))
    for el in made.iter():
        for key, value in el.attrib.items():
            el.set(key, _substitute(value, params))
    return made


def _expand_patterns(schema: etree._Element) -> None:
    abstracts = {p.get("id"): p for p in schema.findall(f"{S}pattern[@abstract='true']")}
    for inst in schema.findall(f"{S}pattern[@is-a]"):
        target = abstracts.get(inst.get("is-a"))
        if target is None:
            raise CompileError(f"pattern {inst.get('id')}: unknown abstract pattern {inst.get('is-a')}")
        schema.replace(inst, _instantiate(inst, target))
    for p in abstracts.values():
        schema.remove(p)


def _expand_rules(schema: etree._Element) -> None:
    abstract = {r.get("id"): r for r in schema.iter(f"{S}rule") if r.get("abstract") == "true"}
    for _ in range(20):  # nested extends: a few rounds are plenty; a cycle is an error
        pending = [e for e in schema.iter(f"{S}extends") if e.get("rule")]
        if not pending:
            break
        for ext in pending:
            _extend(ext, abstract)
    else:
        raise CompileError("abstract rules extend each other in a cycle")
    for rule in abstract.values():
        parent = rule.getparent()
        if parent is not None:
            parent.remove(rule)


def _extend(ext: etree._Element, abstract: dict[str | None, etree._Element]) -> None:
    parent = ext.getparent()
    assert parent is not None
    pattern = parent.getparent()
    local = [] if pattern is None else [r for r in pattern if r.get("id") == ext.get("rule")]
    target = local[0] if local else abstract.get(ext.get("rule"))
    if target is None:
        raise CompileError(f"extends: unknown abstract rule {ext.get('rule')}")
    at = parent.index(ext)
    parent.remove(ext)
    for offset, child in enumerate(target):
        parent.insert(at + offset, copy.deepcopy(child))


def expand(path: Path) -> tuple[etree._Element, list[Path]]:
    """The rule set with includes resolved and abstract patterns/rules instantiated."""
    files: list[Path] = []
    schema = load_schema(path, files)
    if schema.tag != f"{S}schema":
        raise CompileError(f"{path} is not an ISO Schematron schema (root {schema.tag})")
    _resolve_includes(schema, path.resolve(), files)
    _expand_patterns(schema)
    _expand_rules(schema)
    return schema, files


# ---------------------------------------------------------------- code generation

_DOCUMENT_CALL = re.compile(r"(?<![\w:.\-$])document\s*\(")
_QUOTED_XML = re.compile(r"""['"]([^'"\s]+\.xml)['"]""")


class _Generator:
    """Builds the validator stylesheet for one expanded schema."""

    def __init__(self, schema: etree._Element, path: Path, phase: str | None, saxon: bool) -> None:
        self.schema = schema
        self.path = path.resolve()
        self.saxon = saxon
        self.binding = (schema.get("queryBinding") or "xslt").lower()
        self.ns = {n.get("prefix", ""): n.get("uri", "") for n in schema.findall(f"{S}ns")}
        self.assertions: list[Assertion] = []
        self.vocabularies: dict[str, Path] = {}
        self.active = self._active_patterns(phase)
        self.diagnostics = {d.get("id"): d for d in schema.iter(f"{S}diagnostic")}
        self.out = self._stylesheet()

    def _active_patterns(self, phase: str | None) -> list[etree._Element]:
        patterns: list[etree._Element] = list(self.schema.findall(f"{S}pattern"))
        chosen = phase or self.schema.get("defaultPhase") or "#ALL"
        if chosen == "#ALL":
            return patterns
        found = self.schema.find(f"{S}phase[@id='{chosen}']")
        if found is None:
            raise CompileError(f"unknown phase {chosen}")
        ids = {a.get("pattern") for a in found.findall(f"{S}active")}
        return [p for p in patterns if p.get("id") in ids]

    def _stylesheet(self) -> etree._Element:
        nsmap: dict[str | None, str] = {"xsl": XSL, "psv": PSV}
        nsmap.update({k: v for k, v in self.ns.items() if k not in ("xsl", "psv")})
        version = "2.0" if self.binding in XSLT2_BINDINGS else "1.0"
        out = etree.Element(f"{X}stylesheet", nsmap=nsmap, version=version)
        out.set("{http://www.w3.org/XML/1998/namespace}base", self.path.parent.as_uri() + "/")
        etree.SubElement(out, f"{X}output", method="xml", indent="no")
        return out

    # -- XPath text -----------------------------------------------------------------

    def xp(self, expr: str | None) -> str:
        """An XPath from the rule set, with document('x.xml') served from preloaded files."""
        text = expr or ""
        if not self.saxon or "document" not in text:
            return text
        for name in _QUOTED_XML.findall(text):
            self._vocabulary(name)
        return _DOCUMENT_CALL.sub("psv:doc(", text)

    def _vocabulary(self, name: str) -> None:
        file = (self.path.parent / name).resolve()
        if file.is_file() and name not in self.vocabularies:
            self.vocabularies[name] = file

    # -- top level --------------------------------------------------------------------

    def build(self) -> str:
        for el in self.schema:
            if el.tag in (f"{X}function", f"{X}key"):
                self.out.append(copy.deepcopy(el))
        for let in self.schema.findall(f"{S}let"):
            self._let(self.out, let, "param")
        for pattern in self.active:
            for let in pattern.findall(f"{S}let"):
                self._let(self.out, let, "variable")
        # Collect vocabulary names from every let/test first, so psv:doc knows them all.
        for el in self.schema.iter():
            for key in ("value", "test", "select", "context"):
                self.xp(el.get(key))
        self._root_template()
        for index, pattern in enumerate(self.active):
            self._pattern(index, pattern)
        self._location_template()
        if self.saxon:
            self._doc_function()
        return str(etree.tostring(self.out, encoding="unicode"))

    def _let(self, parent: etree._Element, let: etree._Element, kind: str) -> None:
        var = etree.SubElement(parent, f"{X}{kind}", name=let.get("name", ""))
        if let.get("value") is not None:
            var.set("select", self.xp(let.get("value")))
        else:
            for child in let:
                var.append(copy.deepcopy(child))

    def _root_template(self) -> None:
        root = etree.SubElement(self.out, f"{X}template", match="/")
        report = etree.SubElement(root, f"{{{PSV}}}report")
        for index, pattern in enumerate(self.active):
            etree.SubElement(report, f"{X}apply-templates", select=self._select(pattern), mode=f"M{index}")

    def _select(self, pattern: etree._Element) -> str:
        contexts = [self.xp(r.get("context")) for r in pattern.findall(f"{S}rule")]
        if not self.saxon or not contexts:
            return "/"
        return "//(" + " | ".join(f"({c})" for c in contexts) + ")"

    def _pattern(self, index: int, pattern: etree._Element) -> None:
        rules = pattern.findall(f"{S}rule")
        for position, rule in enumerate(rules):
            priority = str(1000 + len(rules) - position)
            match = self.xp(rule.get("context"))
            template = etree.SubElement(self.out, f"{X}template", match=match, priority=priority)
            template.set("mode", f"M{index}")
            self._rule_body(template, pattern, rule)
            if not self.saxon:
                etree.SubElement(template, f"{X}apply-templates", select=self._children(), mode=f"M{index}")
        fallback = etree.SubElement(self.out, f"{X}template", match="@*|node()", priority="-2")
        fallback.set("mode", f"M{index}")
        if not self.saxon:
            etree.SubElement(fallback, f"{X}apply-templates", select=self._children(), mode=f"M{index}")

    def _children(self) -> str:
        contexts = " ".join(r.get("context", "") for r in self.schema.iter(f"{S}rule"))
        return "@*|*" if ("@" in contexts or "attribute" in contexts) else "*"

    def _rule_body(self, template: etree._Element, pattern: etree._Element, rule: etree._Element) -> None:
        for child in rule:
            if child.tag == f"{S}let":
                self._let(template, child, "variable")
            elif child.tag in (f"{S}assert", f"{S}report"):
                self._check(template, pattern, rule, child)

    def _check(
        self, parent: etree._Element, pattern: etree._Element, rule: etree._Element, el: etree._Element
    ) -> None:
        kind = "assert" if el.tag == f"{S}assert" else "report"
        index = len(self.assertions)
        self.assertions.append(
            Assertion(
                id=el.get("id") or f"{pattern.get('id', 'pattern')}-{index}",
                kind=kind,
                role=el.get("role") or "",
                flag=el.get("flag") or "",
                test=" ".join((el.get("test") or "").split()),
                pattern=pattern.get("id") or "",
                rule=rule.get("id") or rule.get("context") or "",
            )
        )
        if kind == "assert":
            choose = etree.SubElement(parent, f"{X}choose")
            etree.SubElement(choose, f"{X}when", test=self.xp(el.get("test")))
            where = etree.SubElement(choose, f"{X}otherwise")
        else:
            where = etree.SubElement(parent, f"{X}if", test=self.xp(el.get("test")))
        finding = etree.SubElement(where, f"{{{PSV}}}f", n=str(index))
        loc = etree.SubElement(finding, f"{X}attribute", name="l")
        etree.SubElement(loc, f"{X}call-template", name="psv-location")
        self._text(finding, el)
        for ref in (el.get("diagnostics") or "").split():
            diagnostic = self.diagnostics.get(ref)
            if diagnostic is not None:
                etree.SubElement(finding, f"{X}text").text = " "
                self._text(finding, diagnostic)

    def _text(self, target: etree._Element, source: etree._Element) -> None:
        """Message text: text, value-of, name; foreign and inline elements give their text."""
        if source.text:
            etree.SubElement(target, f"{X}text").text = source.text
        for child in source:
            if child.tag == f"{S}value-of":
                etree.SubElement(target, f"{X}value-of", select=self.xp(child.get("select") or "."))
            elif child.tag == f"{S}name":
                etree.SubElement(target, f"{X}value-of", select=f"name({self.xp(child.get('path') or '.')})")
            elif isinstance(child.tag, str):
                self._text(target, child)
            if child.tail:
                etree.SubElement(target, f"{X}text").text = child.tail

    # -- helpers emitted into the stylesheet ----------------------------------------------

    def _location_template(self) -> None:
        template = etree.SubElement(self.out, f"{X}template", name="psv-location")
        each = etree.SubElement(template, f"{X}for-each", select="ancestor-or-self::*")
        etree.SubElement(each, f"{X}text").text = "/"
        self._prefix(each)
        etree.SubElement(each, f"{X}value-of", select="local-name()")
        etree.SubElement(each, f"{X}text").text = "["
        etree.SubElement(
            each,
            f"{X}value-of",
            select=(
                "1 + count(preceding-sibling::*[local-name() = local-name(current())"
                " and namespace-uri() = namespace-uri(current())])"
            ),
        )
        etree.SubElement(each, f"{X}text").text = "]"
        attr = etree.SubElement(template, f"{X}if", test="count(. | ../@*) = count(../@*)")
        etree.SubElement(attr, f"{X}text").text = "/@"
        etree.SubElement(attr, f"{X}value-of", select="name()")
        root = etree.SubElement(template, f"{X}if", test="not(parent::node())")
        etree.SubElement(root, f"{X}text").text = "/"

    def _prefix(self, parent: etree._Element) -> None:
        choose = etree.SubElement(parent, f"{X}choose")
        etree.SubElement(choose, f"{X}when", test="namespace-uri() = ''")
        for prefix, uri in self.ns.items():
            when = etree.SubElement(choose, f"{X}when", test=f"namespace-uri() = '{uri}'")
            etree.SubElement(when, f"{X}text").text = f"{prefix}:"
        other = etree.SubElement(choose, f"{X}otherwise")
        etree.SubElement(other, f"{X}text").text = "Q{"
        etree.SubElement(other, f"{X}value-of", select="namespace-uri()")
        etree.SubElement(other, f"{X}text").text = "}"

    def _doc_function(self) -> None:
        """psv:doc(x): a preloaded vocabulary when x names one, else the real document(x)."""
        for arity in (1, 2):
            fn = etree.SubElement(self.out, f"{X}function", name="psv:doc", version="2.0")
            etree.SubElement(fn, f"{X}param", name="href")
            if arity == 2:
                etree.SubElement(fn, f"{X}param", name="base")
                etree.SubElement(fn, f"{X}sequence", select="document($href, $base)")
                continue
            if not self.vocabularies:
                etree.SubElement(fn, f"{X}sequence", select="document($href)")
                continue
            choose = etree.SubElement(fn, f"{X}choose")
            for number, name in enumerate(sorted(self.vocabularies)):
                test = f"count($href) = 1 and string($href) = '{name}' and exists($psv-doc-{number})"
                when = etree.SubElement(choose, f"{X}when", test=test)
                etree.SubElement(when, f"{X}sequence", select=f"$psv-doc-{number}")
            other = etree.SubElement(choose, f"{X}otherwise")
            etree.SubElement(other, f"{X}sequence", select="document($href)")
        for number in range(len(self.vocabularies)):
            etree.SubElement(self.out, f"{X}param", name=f"psv-doc-{number}", select="()", version="2.0")

    def vocabulary_params(self) -> dict[str, Path]:
        return {f"psv-doc-{n}": self.vocabularies[name] for n, name in enumerate(sorted(self.vocabularies))}


def uses_saxon(schema: etree._Element, processor: str | None) -> bool:
    """XSLT 2/3 bindings, and rule sets that declare no binding, run in Saxon.

    A missing queryBinding means XSLT 1, but real published rule sets (CDA-CH-LRPH) omit it and
    still use XPath 2 functions: Saxon runs them like the reference skeleton does (XSLT 1.0
    stylesheet in backwards-compatible mode). An explicit `xslt` runs in lxml (libxslt).
    """
    if processor in ("saxon", "lxml"):
        return processor == "saxon"
    binding = schema.get("queryBinding")
    return binding is None or binding.lower() in XSLT2_BINDINGS


def compile_schematron(path: Path, *, phase: str | None = None, processor: str | None = None) -> Compiled:
    """Compile a .sch file into a validator stylesheet (text) plus its assertion table."""
    schema, files = expand(path)
    saxon = uses_saxon(schema, processor)
    gen = _Generator(schema, path, phase, saxon)
    xslt = gen.build()
    binding = (schema.get("queryBinding") or "xslt").lower()
    return Compiled(xslt, gen.assertions, binding, saxon, files, gen.vocabulary_params())
