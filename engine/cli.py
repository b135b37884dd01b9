"""`passerelle` command line (also `python run_engine.py`).

passerelle run      [--config config/engine.yaml] [--workers N]   run the engine until SIGTERM
passerelle check    [--config ...]                  validate engine.yaml and every channel
passerelle stats    [--config ...] [--json]         counts per channel / status / destination queue
passerelle schema   [--config ...] [--output F]     write the channel JSON Schema
passerelle validate FILE [--rules NAME]             check a CDA document (schema + Schematron)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from engine.config import Project, load_engine_config, load_project
from engine.errors import ConfigError

DEFAULT_CONFIG = Path("config/engine.yaml")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="passerelle", description="Passerelle integration engine")
    commands = top.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the engine"),
        ("check", "validate the configuration and channels"),
        ("stats", "message and queue counts"),
        ("schema", "write the channel JSON Schema"),
        ("docs", "write the component reference (docs/reference/) and the JSON Schema"),
        ("test", "run the channels' test cases offline (destinations captured)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--config", type=Path, default=DEFAULT_CONFIG, help="engine.yaml (default: %(default)s)"
        )
        if name == "run":
            sub.add_argument("--workers", type=int, default=1,
                             help="engine processes sharing the PostgreSQL store (default: %(default)s)")
        if name == "test":
            sub.add_argument("channels", nargs="*", help="channel names (default: every channel with tests)")
        if name == "stats":
            sub.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "schema":
            sub.add_argument(
                "--output", type=Path, help="file to write (default: config/schema/channel.schema.json)"
            )
    channels = commands.add_parser("channels", help="channel versions: history and rollback")
    actions = channels.add_subparsers(dest="action", required=True)
    history = actions.add_parser("history", help="versions a channel ran, newest first")
    rollback = actions.add_parser("rollback", help="write an earlier version back to the channel file")
    for action in (history, rollback):
        action.add_argument("name", help="channel name")
        action.add_argument(
            "--config", type=Path, default=DEFAULT_CONFIG, help="engine.yaml (default: %(default)s)"
        )
    rollback.add_argument("version", help="a version from `history` (a unique prefix is enough)")
    store = commands.add_parser("store", help="the message store: encryption keys")
    store_actions = store.add_subparsers(dest="action", required=True)
    new_key = store_actions.add_parser("new-key", help="write a fresh 256-bit key file (mode 0600)")
    new_key.add_argument("file", type=Path)
    reencrypt = store_actions.add_parser(
        "reencrypt", help="move every payload and DSP blob to the active key (online)"
    )
    reencrypt.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="engine.yaml (default: %(default)s)"
    )
    for name, text in (
        ("validate", "validate a CDA document (XML Schema + Schematron)"),
        ("mpi", "the Master Patient Index: load the register, link, review, audit"),
        ("dsp", "the DSP document store: list, get, close, reopen"),
        ("reporting", "notifiable diseases: import the catalogue, cases, weekly aggregates"),
        ("user", "dashboard users: add NAME --role ROLE, remove NAME, list"),
    ):
        forwarded = commands.add_parser(name, help=text, add_help=False)
        forwarded.add_argument("args", nargs=argparse.REMAINDER)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["validate"]:
        from engine.validation.cli import validate_command

        return validate_command(argv[1:])
    if argv[:1] == ["mpi"]:
        from engine.mpi.cli import mpi_command

        return mpi_command(argv[1:])
    if argv[:1] == ["reporting"]:
        from engine.reporting.cli import reporting_command

        return reporting_command(argv[1:])
    if argv[:1] == ["user"]:
        from engine.dashboard.users_cli import user_command

        return user_command(argv[1:])
    if argv[:1] == ["dsp"]:
        from engine.dsp.cli import dsp_command

        return dsp_command(argv[1:])
    args = parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        print(f"{len(err.problems)} problem(s) found; nothing was started", file=sys.stderr)
        return 1


def cmd_run(args: argparse.Namespace) -> int:
    from engine import log, supervisor

    project = load_project(args.config)
    log.configure(project.engine.logging.level, project.engine.logging.format)
    if args.workers != 1:
        from engine.workers import run_workers

        return run_workers(project, args.config, args.workers)
    supervisor.run(project)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    project = load_project(args.config)
    for spec in project.channels:
        state = "" if spec.enabled else " (disabled)"
        print(
            f"{spec.file}: ok: channel {spec.name}{state}, source {spec.source.type}, "
            f"{len(spec.steps)} step(s), {len(spec.destinations)} destination(s)"
        )
    encryption = project.engine.store.encryption
    if encryption is not None and not encryption.digest_key:
        print(f"{args.config}: warning: {NO_DIGEST_KEY}")
    print(f"{args.config}: ok: {len(project.channels)} channel(s)")
    return 0


NO_DIGEST_KEY = (
    "store.encryption has no digest_key: order_by keys are digested with the active key, so rotating it "
    "breaks a patient's order between deliveries created before and after the rotation, and the MPI, DSP "
    "and case look-up digests change with it (run `passerelle store reencrypt` before removing the old key; "
    "better, set digest_key to a file made by `passerelle store new-key`)"
)


def engine_only(config: Path) -> Project:
    """The project without its channels (for commands that must work while a channel is broken)."""
    config_file = config.resolve()
    root = config_file.parent.parent if config_file.parent.name == "config" else config_file.parent
    return Project(root=root, engine=load_engine_config(config_file), channels=[])


def cmd_stats(args: argparse.Namespace) -> int:
    stats = asyncio.run(read_stats(engine_only(args.config)))
    print(json.dumps(stats, indent=2, sort_keys=True) if args.json else format_stats(stats))
    return 0


async def read_stats(project: Project) -> dict[str, Any]:
    from engine.store import open_store

    if project.engine.store.type == "sqlite" and not project.store_path.exists():
        return {"channels": {}}
    store = open_store(project.engine.store, project.root)
    await store.open()
    try:
        return await store.stats()
    finally:
        await store.close()


def format_stats(stats: dict[str, Any]) -> str:
    lines = []
    for name, entry in sorted(stats["channels"].items()):
        counts = ", ".join(f"{s} {n}" for s, n in sorted(entry["messages"].items()))
        lines.append(f"{name}: {counts}")
        for dest, d in sorted(entry["destinations"].items()):
            lines.append(f"  -> {dest}: " + ", ".join(f"{s} {n}" for s, n in sorted(d["deliveries"].items())))
    return "\n".join(lines) or "no messages yet"


def cmd_schema(args: argparse.Namespace) -> int:
    from engine.schema import channel_schema

    project_root = args.config.resolve().parent.parent
    output = args.output or project_root / "config" / "schema" / "channel.schema.json"
    output.write_text(json.dumps(channel_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from engine.reference import write_reference

    written = write_reference(args.config.resolve().parent.parent)
    print(f"wrote {len(written)} files under docs/reference/ and config/schema/")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from engine import log
    from engine.channel_tests import format_results, load_cases, run_channel_tests

    log.configure("error", "console")
    project = load_project(args.config)
    known = {spec.name: spec for spec in project.channels}
    unknown = [name for name in args.channels if name not in known]
    if unknown:
        print(
            f"unknown channel(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})", file=sys.stderr
        )
        return 2
    chosen = [known[name] for name in args.channels] or [s for s in project.channels if s.tests]

    async def run_all() -> list[Any]:
        results = []
        for spec in chosen:
            results += await run_channel_tests(project, spec, load_cases(spec))
        return results

    results = asyncio.run(run_all())
    print(format_results(results))
    return 0 if results and all(r.passed for r in results) else 1


def cmd_channels(args: argparse.Namespace) -> int:
    project = engine_only(args.config)  # works while a channel file is broken, when rollback matters
    versions = asyncio.run(read_versions(project, args.name))
    if not versions:
        print(f"no recorded versions of channel {args.name!r}", file=sys.stderr)
        return 2
    if args.action == "history":
        for v in versions:
            loaded = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["loaded_at"]))
            print(f"{v['version']}  {loaded}  {v['messages']} message(s)")
        return 0
    return rollback_channel(project, args.name, args.version, versions)


async def read_versions(project: Project, name: str) -> list[dict[str, Any]]:
    from engine.store import open_store

    store = open_store(project.engine.store, project.root)
    await store.open()
    try:
        return await store.channel_versions(name)
    finally:
        await store.close()


def rollback_channel(project: Project, name: str, prefix: str, versions: list[dict[str, Any]]) -> int:
    """Write the chosen version's YAML back to the channel file; a running engine reloads it."""
    matches = [v for v in versions if v["version"].startswith(prefix)]
    if len(matches) != 1:
        print(f"version {prefix!r} matches {len(matches)} recorded versions of {name!r}", file=sys.stderr)
        return 2
    target = project.root / project.engine.channels_dir / f"{name}.yaml"
    temp = target.with_name(f".{target.name}.rollback")
    temp.write_text(matches[0]["content"], encoding="utf-8")
    os.replace(temp, target)
    print(f"{target}: rolled back to version {matches[0]['version']}")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from engine.store.cipher import new_key_file

    if args.action == "new-key":
        new_key_file(args.file)
        print(f"wrote {args.file} (keep it out of the database's backups)")
        return 0
    project = engine_only(args.config)
    moved = asyncio.run(reencrypt_store(project))
    print(f"re-encrypted {moved} payload row(s) with the active key")
    blobs = reencrypt_dsp_blobs(project)
    print(f"re-encrypted {blobs} DSP document blob(s) with the active key")
    rows = reencrypt_component_tables(project, case_files(args.config, project))
    print(f"re-encrypted {rows} MPI, DSP registry and case row(s) with the active key")
    return 0


def case_files(config: Path, project: Project) -> set[Path]:
    """Notifiable-case files apart from the store's: config/reporting.yaml's `database` and each
    `reporting_feed` destination's. Channels that fail to load are skipped with a warning (the
    store's rotation must work while a channel is broken)."""
    from engine.reporting.settings import load_settings
    from engine.store import resolve

    reporting = project.root / "config" / "reporting.yaml"
    named = [load_settings(reporting).database] if reporting.exists() else []
    try:
        channels = load_project(config).channels
    except ConfigError as err:
        print(f"warning: channels not read, their own case files not re-encrypted: {err.problems[0]}")
        channels = []
    named += [str(getattr(d.config, "database", "")) for c in channels for d in c.destinations
              if d.type == "reporting_feed"]
    store_file = resolve(project.root, project.engine.store.path)
    return {path for name in named if name and (path := resolve(project.root, name)) != store_file}


def reencrypt_component_tables(project: Project, cases: set[Path] | None = None) -> int:
    """The MPI, DSP registry and case tables of the store's file, and the case tables of `cases`
    (engine/store/component_seal.py): clear rows sealed, rows under old keys moved to the active
    key and their digests to the current secret."""
    from engine.dsp.registry import PROTECTED as DSP
    from engine.mpi.storage import PROTECTED as MPI
    from engine.reporting.cases import PROTECTED as CASES
    from engine.store import payload_cipher, resolve
    from engine.store.component_seal import reencrypt_components

    cipher = payload_cipher(project.engine.store, project.root)
    if cipher is None:
        raise ConfigError([f"{project.root}: store encryption is not configured"])
    store_file = resolve(project.root, project.engine.store.path)
    moved = reencrypt_components(store_file, cipher, (*MPI, *DSP, *CASES))
    for path in sorted(cases or ()):
        moved += reencrypt_components(path, cipher, CASES)
    return moved


def reencrypt_dsp_blobs(project: Project) -> int:
    """The DSP's document blobs are sealed with the store's keys: rotation moves them too."""
    from engine.dsp.service import reencrypt_blobs
    from engine.store import payload_cipher

    cipher = payload_cipher(project.engine.store, project.root)
    if cipher is None:
        raise ConfigError([f"{project.root}: store encryption is not configured"])
    return reencrypt_blobs(project.root, cipher)


async def reencrypt_store(project: Project) -> int:
    from engine.store import open_store

    store = open_store(project.engine.store, project.root)
    await store.open()
    try:
        return await store.reencrypt()
    finally:
        await store.close()


COMMANDS = {
    "store": cmd_store,
    "channels": cmd_channels,
    "test": cmd_test,
    "run": cmd_run,
    "check": cmd_check,
    "stats": cmd_stats,
    "schema": cmd_schema,
    "docs": cmd_docs,
}
