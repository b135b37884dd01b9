"""`passerelle validate FILE... [--rules NAME]`: the conformity check a sender can run locally.

Prints, per file, the rule set used and each finding (severity, assertion id, location, text),
then a summary line. Exit status: 0 valid (warnings allowed), 1 errors found, 2 a file could not
be read, was refused as unsafe XML, or no rule set could be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from engine.errors import ParseError
from engine.formats.cda import MAX_BYTES, MAX_DEPTH, parse_xml
from engine.validation.document import Report, validate_tree
from engine.validation.findings import RuleSetError
from engine.validation.rulesets import DEFAULT_CACHE, REPO_ROOT, registry

LABEL = {"E": "ERROR", "W": "WARNING", "I": "INFO"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="passerelle validate", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="XML document(s) to check")
    p.add_argument(
        "--rules",
        help="rule set: a folder name under schematron/ or a path to a .sch file "
        "(default: chosen from the document's type)",
    )
    p.add_argument(
        "--xsd",
        dest="xsd",
        action="store_true",
        default=None,
        help="check the CDA R2 XML Schema (default: when the rule set asks for it)",
    )
    p.add_argument("--no-xsd", dest="xsd", action="store_false", help="skip the XML Schema")
    p.add_argument(
        "--schema",
        default="sdtc",
        choices=("sdtc", "normative"),
        help="which CDA schema --xsd uses (default: %(default)s)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--all", action="store_true", help="also show information-level findings")
    p.add_argument("--root", type=Path, default=REPO_ROOT, help="installation root (default: %(default)s)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="compiled rule set cache, relative to --root (default: %(default)s)",
    )
    return p


def _xsd_choice(args: argparse.Namespace) -> str | None:
    if args.xsd is None:
        return "auto"
    return str(args.schema) if args.xsd else None


def _check(args: argparse.Namespace, file: Path) -> tuple[int, Report | None, str]:
    """(status, report, problem) for one file."""
    try:
        data = file.read_bytes()
        tree = parse_xml(data, max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
        report = validate_tree(registry(args.root, args.cache_dir), tree, args.rules, _xsd_choice(args))
    except OSError as err:
        return 2, None, f"cannot read {file}: {err.strerror or err}"
    except (ParseError, RuleSetError) as err:
        return 2, None, str(err)
    return (0 if report.valid else 1), report, ""


def _text(out: TextIO, file: Path, report: Report | None, problem: str, show_all: bool) -> None:
    print(f"{file}", file=out)
    if report is None:
        print(f"  REFUSED  {problem}", file=out)
        return
    rs = report.rule_set
    schema = f"; XML Schema: CDA R2 ({report.xsd})" if report.xsd else ""
    print(f"  rule set: {rs.name if rs else '-'} ({rs.sch if rs else ''}){schema}", file=out)
    for issue in report.issues:
        if issue.severity == "I" and not show_all:
            continue
        label = LABEL.get(issue.severity, issue.severity)
        print(f"  {label:<8} {issue.code}  at {issue.location or '/'}", file=out)
        print(f"           {issue.text}", file=out)
    hidden = "" if show_all or not report.count("I") else " (use --all to show them)"
    verdict = "VALID" if report.valid else "INVALID"
    print(
        f"  {verdict}: {report.count('E')} error(s), {report.count('W')} warning(s), "
        f"{report.count('I')} information{hidden}",
        file=out,
    )


def _json(file: Path, status: int, report: Report | None, problem: str) -> dict[str, object]:
    if report is None:
        return {"file": str(file), "status": status, "refused": problem}
    return {
        "file": str(file),
        "status": status,
        "valid": report.valid,
        "rule_set": report.rule_set.name if report.rule_set else None,
        "xsd": report.xsd,
        "issues": [i.as_dict() for i in report.issues],
    }


def validate_command(argv: list[str], out: TextIO | None = None) -> int:
    """Run the check on every FILE; the exit status is the worst of them."""
    out = out or sys.stdout
    args = parser().parse_args(argv)
    worst, results = 0, []
    for file in args.files:
        status, report, problem = _check(args, file)
        worst = max(worst, status)
        if args.format == "json":
            results.append(_json(file, status, report, problem))
        else:
            _text(out, file, report, problem, args.all)
    if args.format == "json":
        print(json.dumps(results, indent=2, ensure_ascii=False), file=out)
    return worst


if __name__ == "__main__":
    sys.exit(validate_command(sys.argv[1:]))
