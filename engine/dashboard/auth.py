"""Local users, roles, sessions, CSRF tokens and login rate limiting.

Users live in `dashboard.users_file` (YAML, mode 0600, written by `passerelle user ...`):
`{users: {NAME: {role: ROLE, password: "scrypt$n$r$p$salt$hash"}}}`. The file is re-read when it
changes, so a user added while the engine runs can log in at once.

Sessions are server-side (a random token in an HttpOnly, SameSite=Strict cookie), so logout and
user removal end them at once; a restart ends them all. Each session has its own CSRF token:
every unsafe request must echo it (form field `csrf` or header `X-CSRF-Token`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROLES = ("viewer", "operator", "vigilance", "admin")

# What each permission needs. `phi`: see patient data unmasked and search by patient.
PERMISSIONS: dict[str, frozenset[str]] = {
    "view": frozenset(ROLES),
    "act": frozenset({"operator", "admin"}),  # reprocess, resend
    "phi": frozenset({"vigilance", "admin"}),
    "review": frozenset({"vigilance", "admin"}),  # MPI review decisions
    "audit": frozenset({"admin"}),
}

# scrypt cost: 2**15 * 8 * 128 bytes = 32 MiB and ~0.1 s per check (OWASP's minimum is 2**17/8/1
# with 128 MiB; this keeps login on a small shared host responsive while rate limiting caps guessing).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


def hash_password(password: str, n: int = SCRYPT_N) -> str:
    salt = os.urandom(16)
    digest = _scrypt(password, salt, n, SCRYPT_R, SCRYPT_P)
    return "$".join(("scrypt", str(n), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)))


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@functools.cache
def dummy_hash() -> str:
    """A hash checked for unknown users, so the response time does not reveal which names exist."""
    return hash_password(secrets.token_hex(8))


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password: str


class UserFile:
    """The users file, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._users: dict[str, User] = {}

    def users(self) -> dict[str, User]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return {}
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            self._users, self._stamp = read_users(self.path), stamp
        return self._users

    def get(self, name: str) -> User | None:
        return self.users().get(name)


def read_users(path: Path) -> dict[str, User]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries: dict[str, Any] = data.get("users") or {}
    return {
        name: User(name, str(entry.get("role", "")), str(entry.get("password", "")))
        for name, entry in entries.items()
        if isinstance(entry, dict) and entry.get("role") in ROLES
    }


def write_users(path: Path, users: dict[str, User]) -> None:
    """Write atomically, readable by the owner only (the hashes are still secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"users": {u.name: {"role": u.role, "password": u.password} for u in users.values()}}
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# Dashboard users: edit with `passerelle user ...` (scrypt-hashed passwords).\n")
        yaml.safe_dump(body, out, sort_keys=True)
    os.chmod(temp, 0o600)
    os.replace(temp, path)


@dataclass
class Session:
    token: str
    user: str
    role: str
    csrf: str
    created: float
    seen: float

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]


@dataclass
class Sessions:
    idle_seconds: float
    max_seconds: float
    _by_token: dict[str, Session] = field(default_factory=dict)

    def create(self, user: User) -> Session:
        now = time.time()
        session = Session(
            secrets.token_urlsafe(32), user.name, user.role, secrets.token_urlsafe(32), now, now
        )
        self._by_token[session.token] = session
        return session

    def get(self, token: str, users: UserFile) -> Session | None:
        """The live session for `token`; ends it if expired or if its user was removed or changed role."""
        session = self._by_token.get(token)
        if session is None:
            return None
        now = time.time()
        user = users.get(session.user)
        expired = now - session.seen > self.idle_seconds or now - session.created > self.max_seconds
        if expired or user is None or user.role != session.role:
            self.end(token)
            return None
        session.seen = now
        return session

    def alive(self, token: str) -> bool:
        """Still open (not logged out, not ended), without counting as use (live streams)."""
        return token in self._by_token

    def end(self, token: str) -> None:
        self._by_token.pop(token, None)


@dataclass
class RateLimiter:
    """At most `attempts` failures per key (user name, client address) within `window` seconds."""

    attempts: int
    window: float
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def blocked(self, key: str) -> bool:
        return len(self._recent(key, time.time())) >= self.attempts

    def failed(self, key: str) -> None:
        now = time.time()
        self._recent(key, now).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        if len(self._failures) > 10_000:  # bound memory under a spray of names/addresses
            self._failures = {k: v for k, v in self._failures.items() if v and now - v[-1] <= self.window}
        line = self._failures.setdefault(key, deque())
        while line and now - line[0] > self.window:
            line.popleft()
        return line


def csrf_ok(expected: str, given: str) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected, given)
