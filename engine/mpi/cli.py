"""`passerelle mpi ...`: batch work and audits on the MPI (same database as the engine).

    passerelle mpi load-register FILE.csv [--user U] [--reason R]
    passerelle mpi apply-delta FILE.csv
    passerelle mpi link FILE.csv --out links.csv [--dry-run]
    passerelle mpi review list [--status open|linked|rejected|closed] [--json]
    passerelle mpi review show ITEM [--json]
    passerelle mpi review link ITEM ENTERPRISE_ID --user U --reason R
    passerelle mpi review reject ITEM ENTERPRISE_ID --user U --reason R
    passerelle mpi review merge SURVIVOR_ID ABSORBED_ID --user U --reason R
    passerelle mpi review unmerge ABSORBED_ID --user U --reason R
    passerelle mpi review unlink AUTHORITY LOCAL_ID --user U --reason R
    passerelle mpi audit [--limit N] [--json]
    passerelle mpi weights show | estimate FILE.csv --user U --reason R
All take `--config config/engine.yaml` (where the store, hence the MPI database, is).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.mpi.model import TRAIT_NAMES
from engine.mpi.register_load import apply_delta, load_register, read_rows, row_traits
from engine.mpi.review import (
    Actor,
    ReviewError,
    audit_log,
    link_item,
    list_items,
    merge_identities,
    reject_item,
    show_item,
    unlink_facility,
    unmerge_identity,
)
from engine.mpi.service import Incoming, Mpi, load_for_root

LINK_COLUMNS = ["record_id", "outcome", "enterprise_id", "score", "second_score", "method", "reasons"]


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="passerelle mpi", description="Master Patient Index")
    top.add_argument(
        "--config", type=Path, default=Path("config/engine.yaml"), help="engine.yaml (default: %(default)s)"
    )
    sub = top.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load-register", help="load or refresh the certified register from CSV")
    load.add_argument("file", type=Path)
    _actor(load, required=False)
    delta = sub.add_parser("apply-delta", help="apply one delta file (op column: upsert/delete)")
    delta.add_argument("file", type=Path)
    link = sub.add_parser("link", help="resolve every record of a CSV; write the outcomes")
    link.add_argument("file", type=Path)
    link.add_argument("--out", type=Path, required=True)
    link.add_argument("--dry-run", action="store_true", help="decide only; record nothing")
    review = sub.add_parser("review", help="the identity review queue").add_subparsers(
        dest="action", required=True
    )
    lst = review.add_parser("list")
    lst.add_argument("--status", default="open", choices=["open", "linked", "rejected", "closed"])
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--json", action="store_true")
    show = review.add_parser("show")
    show.add_argument("item", type=int)
    show.add_argument("--json", action="store_true")
    for name, args in (
        ("link", ("item", "enterprise_id")),
        ("reject", ("item", "enterprise_id")),
        ("merge", ("survivor", "absorbed")),
        ("unmerge", ("absorbed",)),
        ("unlink", ("authority", "local_id")),
    ):
        p = review.add_parser(name)
        for a in args:
            p.add_argument(a, type=int if a == "item" else str)
        _actor(p, required=True)
    aud = sub.add_parser("audit", help="the audit trail of decisions")
    aud.add_argument("--limit", type=int, default=100)
    aud.add_argument("--json", action="store_true")
    weights = sub.add_parser("weights", help="matching weights").add_subparsers(dest="action", required=True)
    weights.add_parser("show")
    est = weights.add_parser("estimate", help="estimate m/u by EM from a batch of incoming records")
    est.add_argument("file", type=Path)
    _actor(est, required=True)
    return top


def _actor(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--user", required=required, default="cli")
    p.add_argument("--reason", required=required, default="")


def open_mpi(config: Path) -> Mpi:
    from engine.config import load_engine_config
    from engine.store import payload_cipher

    config_file = config.resolve()
    engine = load_engine_config(config_file)
    root = config_file.parent.parent if config_file.parent.name == "config" else config_file.parent
    path = Path(engine.store.path)
    cipher = payload_cipher(engine.store, root)  # the MPI tables are sealed with the store's keys
    return Mpi(path if path.is_absolute() else root / path, load_for_root(root), cipher)


def mpi_command(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    handler = HANDLERS[
        args.command if args.command not in ("review", "weights") else f"{args.command} {args.action}"
    ]
    try:
        mpi = open_mpi(args.config)
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        return handler(mpi, args)
    except (ReviewError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        mpi.close()


def cmd_load(mpi: Mpi, args: argparse.Namespace) -> int:
    started = time.perf_counter()
    report = load_register(mpi, args.file, args.user, args.reason or "register load")
    print(
        f"{args.file}: read {report.read}, inserted {report.inserted}, updated {report.updated}, "
        f"skipped {report.skipped} (no key or no family name), doubtful birth dates {report.problems}; "
        f"{len(mpi.index)} certified identities in {time.perf_counter() - started:.1f} s"
    )
    return 0


def cmd_delta(mpi: Mpi, args: argparse.Namespace) -> int:
    report = apply_delta(mpi, args.file, "cli")
    print(
        f"{args.file}: already applied"
        if report is None
        else f"{args.file}: read {report.read}, inserted {report.inserted}, updated {report.updated}, "
        f"deleted {report.deleted}, skipped {report.skipped}"
    )
    return 0


def cmd_link(mpi: Mpi, args: argparse.Namespace) -> int:
    rows = list(read_rows(args.file))
    items = [
        Incoming((r.get("authority") or "").strip(), (r.get("local_id") or "").strip(), row_traits(r))
        for r in rows
    ]
    started = time.perf_counter()
    results = mpi.resolve_many(items, persist=not args.dry_run, user="cli-batch")
    elapsed = time.perf_counter() - started
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LINK_COLUMNS)
        for row, res in zip(rows, results, strict=True):
            writer.writerow(
                [
                    row.get("record_id", ""),
                    res.outcome,
                    res.enterprise_id or "",
                    f"{res.score:.2f}",
                    "" if res.second is None else f"{res.second:.2f}",
                    res.method,
                    "; ".join(res.reasons + res.warnings),
                ]
            )
    counts = {k: sum(1 for r in results if r.outcome == k) for k in ("linked", "review", "new")}
    print(
        f"{len(results)} records in {elapsed:.1f} s: linked {counts['linked']}, review {counts['review']}, "
        f"new {counts['new']} -> {args.out}"
    )
    return 0


def cmd_review_list(mpi: Mpi, args: argparse.Namespace) -> int:
    items = list_items(mpi, args.status, args.limit)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    for it in items:
        print(
            f"#{it['id']} {it['authority']}/{it['local_id']} score {it['score']:.1f} "
            f"{it['candidates']} candidate(s): {'; '.join(it['reasons']) or 'score between thresholds'}"
        )
    print(f"{len(items)} {args.status} item(s)")
    return 0


def cmd_review_show(mpi: Mpi, args: argparse.Namespace) -> int:
    item = show_item(mpi, args.item)
    if args.json:
        print(json.dumps(item, indent=2, ensure_ascii=False))
        return 0
    print(side_by_side(item))
    return 0


def side_by_side(item: dict[str, Any]) -> str:
    """Incoming traits and each candidate's, one row per trait, with the agreement level."""
    cands = item["candidates"]
    head = ["trait", f"incoming {item['authority']}/{item['local_id']}"] + [
        f"{c['enterprise_id']} ({c['score']:+.1f})" for c in cands
    ]
    level_of = {
        "family": "family",
        "given": "given",
        "birth_date": "birth_date",
        "sex": "sex",
        "matricule": "matricule",
        "house_number": "house_number",
        "street": "street",
        "city": "city",
        "postcode": "postcode",
        "birth_name": "family",
    }
    lines = [head]
    for name in TRAIT_NAMES:
        row = [name, str(item["incoming"].get(name, ""))]
        for c in cands:
            label = c["levels"].get(level_of.get(name, ""), "")
            row.append(f"{c['traits'].get(name, '')}" + (f" [{label}]" if label else ""))
        lines.append(row)
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    text = [
        f"review #{item['id']} ({item['status']}): {'; '.join(item['reasons']) or 'score between thresholds'}"
    ]
    text += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in lines]
    return "\n".join(text)


def _who(args: argparse.Namespace) -> Actor:
    return Actor(args.user, args.reason)


def cmd_review_link(mpi: Mpi, args: argparse.Namespace) -> int:
    link_item(mpi, args.item, args.enterprise_id, _who(args))
    print(f"review #{args.item}: linked to {args.enterprise_id}")
    return 0


def cmd_review_reject(mpi: Mpi, args: argparse.Namespace) -> int:
    reject_item(mpi, args.item, args.enterprise_id, _who(args))
    print(f"review #{args.item}: {args.enterprise_id} recorded as a different person")
    return 0


def cmd_review_merge(mpi: Mpi, args: argparse.Namespace) -> int:
    moved = merge_identities(mpi, args.survivor, args.absorbed, _who(args))
    print(f"{args.absorbed} merged into {args.survivor}: {moved} link(s) moved")
    return 0


def cmd_review_unmerge(mpi: Mpi, args: argparse.Namespace) -> int:
    restored = unmerge_identity(mpi, args.absorbed, _who(args))
    print(f"{args.absorbed} unmerged: {restored} link(s) restored")
    return 0


def cmd_review_unlink(mpi: Mpi, args: argparse.Namespace) -> int:
    done = unlink_facility(mpi, args.authority, args.local_id, _who(args))
    print(f"{args.authority}/{args.local_id}: {'unlinked' if done else 'had no link'}")
    return 0


def cmd_audit(mpi: Mpi, args: argparse.Namespace) -> int:
    entries = audit_log(mpi, args.limit)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        print(f"{when} {e['user']} {e['action']} {e['subject']}: {e['reason']}")
    return 0


def cmd_weights_show(mpi: Mpi, args: argparse.Namespace) -> int:
    print("\n".join(mpi.weights().describe()))
    return 0


def cmd_weights_estimate(mpi: Mpi, args: argparse.Namespace) -> int:
    from engine.mpi.batch import estimate_weights

    traits = [row_traits(r) for r in read_rows(args.file)]
    weights = estimate_weights(mpi.index, traits, mpi.weights(), source=f"em:{args.file.name}")
    mpi.save_weights(weights, args.user, args.reason)
    print("\n".join(weights.describe()))
    return 0


HANDLERS: dict[str, Callable[[Mpi, argparse.Namespace], int]] = {
    "load-register": cmd_load,
    "apply-delta": cmd_delta,
    "link": cmd_link,
    "audit": cmd_audit,
    "review list": cmd_review_list,
    "review show": cmd_review_show,
    "review link": cmd_review_link,
    "review reject": cmd_review_reject,
    "review merge": cmd_review_merge,
    "review unmerge": cmd_review_unmerge,
    "review unlink": cmd_review_unlink,
    "weights show": cmd_weights_show,
    "weights estimate": cmd_weights_estimate,
}
