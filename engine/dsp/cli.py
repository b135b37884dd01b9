"""`passerelle dsp ...`: list and get a patient's documents, close or reopen a DSP (audited).

passerelle dsp list --patient <matricule|enterprise id> [--type LOINC] [--from D] [--to D]
                    [--status current|deprecated] [--json]
passerelle dsp get DOCUMENT_ID [--out FILE]        the document itself (verified), to stdout or FILE
passerelle dsp close  --patient P --user U --reason TEXT
passerelle dsp reopen --patient P --user U --reason TEXT
passerelle dsp audit [--patient P]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from engine.config import load_engine_config
from engine.dsp.query import QueryError, build_query
from engine.dsp.registry import Entry
from engine.dsp.repository import IntegrityError
from engine.dsp.service import Dsp, open_dsp
from engine.errors import ConfigError
from engine.store import payload_cipher

DEFAULT_CONFIG = Path("config/engine.yaml")


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="passerelle dsp", description="the DSP document store")
    top.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="engine.yaml (default: %(default)s)")
    commands = top.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="a patient's documents, newest first")
    listing.add_argument("--patient", required=True, help="national id (matricule) or enterprise id")
    listing.add_argument("--type", default="", help="document type (LOINC code, e.g. 11502-2)")
    listing.add_argument("--from", dest="date_from", default="", help="effective on or after (YYYY-MM-DD)")
    listing.add_argument("--to", dest="date_to", default="", help="effective on or before (YYYY-MM-DD)")
    listing.add_argument("--status", default="", help="current or deprecated (default: both)")
    listing.add_argument("--limit", type=int, default=100, help="most documents shown (default: %(default)s)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    get = commands.add_parser("get", help="write one document (verified against its SHA-256)")
    get.add_argument("document_id", help="the document's unique id (root^extension, as `list` shows it)")
    get.add_argument("--out", type=Path, help="file to write (default: standard output)")
    for name, text in (("close", "close a patient's DSP: nothing is stored for them any more"),
                       ("reopen", "reopen a closed DSP")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--patient", required=True, help="national id (matricule) or enterprise id")
        sub.add_argument("--user", required=True, help="who decides (recorded in the audit trail)")
        sub.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    audit = commands.add_parser("audit", help="closures and reopenings, oldest first")
    audit.add_argument("--patient", default="", help="only this patient")
    return top


def open_from_config(config: Path) -> Dsp:
    config = config.resolve()
    root = config.parent.parent if config.parent.name == "config" else config.parent
    engine = load_engine_config(config)
    return open_dsp(root, root / engine.store.path, cipher=payload_cipher(engine.store, root))


def dsp_command(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        dsp = open_from_config(args.config)
    except ConfigError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 1
    try:
        return int(COMMANDS[args.command](dsp, args))
    except QueryError as err:
        print(f"passerelle dsp: {err}", file=sys.stderr)
        return 2
    finally:
        dsp.close()


def cmd_list(dsp: Dsp, args: argparse.Namespace) -> int:
    query = build_query(args.patient, args.type, args.status, args.date_from, args.date_to, args.limit,
                        dsp.config.max_list)
    entries = dsp.registry.documents(query)
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2, ensure_ascii=False))
    else:
        print("\n".join(_line(e) for e in entries) or "no documents")
    return 0


def _line(e: Entry) -> str:
    t = e.effective_time
    when = f"{t[:4]}-{t[4:6]}-{t[6:8]}" if len(t) >= 8 else "?"
    return f"{when}  {e.type_code:<8} {e.status:<10} v{e.version}  {e.document_id}  {e.type_name}"


def cmd_get(dsp: Dsp, args: argparse.Namespace) -> int:
    entry = dsp.registry.get(args.document_id)
    if entry is None:
        print(f"passerelle dsp: no document {args.document_id} in the DSP", file=sys.stderr)
        return 1
    try:
        content = dsp.content(entry)
    except IntegrityError as err:
        print(f"passerelle dsp: {err}", file=sys.stderr)
        return 1
    if args.out:
        args.out.write_bytes(content)
    else:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
    return 0


def cmd_close(dsp: Dsp, args: argparse.Namespace) -> int:
    done = dsp.registry.close_record(dsp.patient_key(args.patient), args.user, args.reason)
    print("DSP closed" if done else "DSP was already closed (recorded in the audit trail)")
    return 0


def cmd_reopen(dsp: Dsp, args: argparse.Namespace) -> int:
    done = dsp.registry.reopen_record(dsp.patient_key(args.patient), args.user, args.reason)
    print("DSP reopened" if done else "DSP was not closed (recorded in the audit trail)")
    return 0


def cmd_audit(dsp: Dsp, args: argparse.Namespace) -> int:
    subject = dsp.patient_key(args.patient) if args.patient else ""
    for at, user, action, patient, reason in dsp.registry.audit_trail(subject):
        stamp = datetime.datetime.fromtimestamp(at).isoformat(timespec="seconds")
        print(f"{stamp}  {action:<7} {patient}  by {user}: {reason}")
    return 0


COMMANDS = {"list": cmd_list, "get": cmd_get, "close": cmd_close, "reopen": cmd_reopen, "audit": cmd_audit}
