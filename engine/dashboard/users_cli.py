"""`passerelle user ...`: the dashboard's local users (config/users.yaml, scrypt hashes, mode 0600).

    passerelle user add NAME --role viewer|operator|vigilance|admin [--password-file F] [--force]
    passerelle user remove NAME
    passerelle user list
All take `--config config/engine.yaml`. The password is prompted for (twice) unless
`--password-file` gives a file holding it. Every change is written to the audit log; a running
engine picks the file up at the next login (a removed user's sessions end at once).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.config import load_engine_config
from engine.dashboard.auth import ROLES, User, hash_password, read_users, write_users
from engine.dashboard.queries import ensure_audit_table, write_audit
from engine.errors import ConfigError

MIN_PASSWORD = 12


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, default=Path("config/engine.yaml"), help="engine.yaml (default: %(default)s)"
    )
    top = argparse.ArgumentParser(prog="passerelle user", description="dashboard users")
    sub = top.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a user (or replace one with --force)", parents=[common])
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument(
        "--password-file", type=Path, help="read the password from this file instead of prompting"
    )
    add.add_argument("--force", action="store_true", help="replace an existing user (new password and role)")
    remove = sub.add_parser("remove", help="delete a user", parents=[common])
    remove.add_argument("name")
    sub.add_parser("list", help="users and roles", parents=[common])
    return top


def user_command(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        config_file: Path = args.config.resolve()
        engine = load_engine_config(config_file)
    except ConfigError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 1
    root = config_file.parent.parent if config_file.parent.name == "config" else config_file.parent
    users_file = root / engine.dashboard.users_file
    store = AuditLog(root / engine.store.path, engine.store.dsn if engine.store.type == "postgresql" else "")
    users = read_users(users_file) if users_file.exists() else {}
    if args.command == "list":
        for user in sorted(users.values(), key=lambda u: u.name):
            print(f"{user.name}\t{user.role}")
        return 0
    if args.command == "remove":
        return remove_user(users, args.name, users_file, store)
    return add_user(users, args, users_file, store)


def add_user(users: dict[str, User], args: argparse.Namespace, users_file: Path, store: AuditLog) -> int:
    if args.name in users and not args.force:
        print(f"user {args.name} exists; use --force to replace it", file=sys.stderr)
        return 1
    if not args.name.strip() or any(c.isspace() for c in args.name):
        print("a user name has no spaces", file=sys.stderr)
        return 1
    password = read_password(args.password_file)
    if password is None:
        return 1
    users[args.name] = User(args.name, args.role, hash_password(password))
    write_users(users_file, users)
    store.record("user-add", args.name, args.role)
    print(f"{users_file}: user {args.name} ({args.role}) saved")
    return 0


def remove_user(users: dict[str, User], name: str, users_file: Path, store: AuditLog) -> int:
    if users.pop(name, None) is None:
        print(f"no user {name}", file=sys.stderr)
        return 1
    write_users(users_file, users)
    store.record("user-remove", name, "")
    print(f"{users_file}: user {name} removed")
    return 0


def read_password(file: Path | None) -> str | None:
    if file is not None:
        password = file.read_text(encoding="utf-8").rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return None
    if len(password) < MIN_PASSWORD:
        print(f"a password has at least {MIN_PASSWORD} characters", file=sys.stderr)
        return None
    return password


@dataclass(frozen=True)
class AuditLog:
    """The store's audit log, where user changes are recorded by the operating-system user who made
    them: the SQLite store file, or the PostgreSQL store's `audit_log` when `dsn` is set."""

    sqlite_path: Path
    dsn: str = ""

    def record(self, action: str, name: str, role: str) -> None:
        detail = {"role": role} if role else {}
        if self.dsn:
            asyncio.run(record_on_postgres(self.dsn, action, f"user {name}", detail))
            return
        import sqlite3

        self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        ensure_audit_table(self.sqlite_path)
        conn = sqlite3.connect(self.sqlite_path, timeout=30.0)
        try:
            with conn:
                write_audit(conn, os_user(), "", action, f"user {name}", detail, "cli")
        finally:
            conn.close()


async def record_on_postgres(dsn: str, action: str, subject: str, detail: dict[str, str]) -> None:
    """The schema is brought up to date first: the audit log may be written before any engine ran."""
    from psycopg import AsyncConnection

    from engine.dashboard.pg_queries import PostgresQueries
    from engine.store.pg_schema import migrate

    async with await AsyncConnection.connect(dsn) as conn:
        await migrate(conn)
    queries = PostgresQueries(dsn, pool_size=1)
    await queries.open()
    try:
        await queries.audit(os_user(), "", action, subject, detail, "cli")
    finally:
        await queries.close()


def os_user() -> str:
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"os:uid {os.getuid()}"
