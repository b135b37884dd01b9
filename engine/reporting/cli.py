"""`passerelle reporting ...`: import the catalogue, look at cases, produce a weekly aggregate.

Output carries case ids, diseases, versions and times only (no patient data), except `cases show`,
which prints one case's report as the authority receives it (an operator's deliberate look).
`cases` and `aggregate` read `--engine-config` (default config/engine.yaml, when it exists) for the
store's encryption keys: with `store.encryption` the cases' patient data are sealed at rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.reporting.catalogue import DEFAULT_WINDOW_DAYS, dump_catalogue, import_ch_elm, load_catalogue
from engine.store.cipher import PayloadCipher

DEFAULT_DB = Path("var/passerelle.db")
DEFAULT_CATALOGUE = Path("config/notifiable-diseases.yaml")
DEFAULT_ENGINE = Path("config/engine.yaml")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="passerelle reporting", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import-catalogue", help="CH ELM FHIR ValueSets/ConceptMaps -> catalogue YAML")
    imp.add_argument("folder", type=Path)
    imp.add_argument("--out", type=Path, default=DEFAULT_CATALOGUE)
    imp.add_argument("--window-days", type=int, default=DEFAULT_WINDOW_DAYS)
    cases = commands.add_parser("cases", help="list cases, or show one case's current report")
    cases.add_argument("action", choices=["list", "show"])
    cases.add_argument("case_id", nargs="?")
    agg = commands.add_parser("aggregate", help="weekly aggregate CSV of an ISO week (YYYY-Www) to stdout")
    agg.add_argument("--week", required=True)
    agg.add_argument("--config", type=Path, default=Path("config/reporting.yaml"))
    for sub in (cases, agg):
        sub.add_argument("--db", type=Path, default=DEFAULT_DB, help="the engine's store file")
        sub.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE)
        sub.add_argument(
            "--engine-config",
            type=Path,
            default=DEFAULT_ENGINE,
            help="engine.yaml (the store's encryption keys)",
        )
    return top


def reporting_command(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "import-catalogue":
        return _import(args.folder, args.out, args.window_days)
    try:
        cipher = engine_cipher(args.engine_config)
    except ConfigError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 1
    if args.command == "cases":
        return _cases(args, cipher)
    return _aggregate(args, cipher)


def engine_cipher(config: Path) -> PayloadCipher | None:
    """The store's encryption at rest (engine.yaml `store.encryption`), None without it or the file."""
    if not config.exists():
        return None
    from engine.config import load_engine_config
    from engine.store import payload_cipher

    config = config.resolve()
    root = config.parent.parent if config.parent.name == "config" else config.parent
    return payload_cipher(load_engine_config(config).store, root)


def _import(folder: Path, out: Path, window_days: int) -> int:
    try:
        catalogue = import_ch_elm(folder, window_days)
    except (OSError, ValueError, KeyError) as err:
        print(f"cannot import {folder}: {err}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_catalogue(catalogue), encoding="utf-8")
    print(
        f"{out}: {len(catalogue.diseases)} diseases, {len(catalogue.by_test)} tests, "
        f"{len(catalogue.by_organism)} organisms"
    )
    return 0


def _cases(args: argparse.Namespace, cipher: PayloadCipher | None) -> int:
    from engine.reporting.cases import CaseStore
    from engine.reporting.report import render_report

    store = CaseStore(args.db, cipher=cipher)
    if args.action == "list":
        for case_id, disease, identity, version, action, updated in store.cases(1000):
            print(f"{case_id}\t{disease}\t{identity}\tv{version}\t{action}\t{updated:.0f}")
        return 0
    case = store.case(args.case_id or "")
    if case is None:
        print(f"no case {args.case_id!r}", file=sys.stderr)
        return 1
    print(render_report(case, load_catalogue(args.catalogue)).decode("utf-8").replace("\r", "\n"), end="")
    return 0


def _aggregate(args: argparse.Namespace, cipher: PayloadCipher | None) -> int:
    from engine.reporting.aggregates import weekly_csv
    from engine.reporting.cases import CaseStore
    from engine.reporting.settings import load_settings

    settings = load_settings(args.config)
    sys.stdout.write(weekly_csv(CaseStore(args.db, cipher=cipher), args.week, settings.aggregates))
    return 0
