"""The MPI facade: resolve identities, keep the register, answer PIX/PDQ, feed the review queue.

One `Mpi` per process and database file; `mpi_from(context)` gives the engine's shared one
(its database is the engine store's file). The in-memory register index is loaded on first
use and reloaded when another process (the CLI) changed the register (`register_version`).
Logs carry ids and counts only, never traits.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from engine.contracts import BuildContext
from engine.mpi.batch import decide_traits, query_columns
from engine.mpi.compare import FIELDS, levels
from engine.mpi.index import RegisterIndex
from engine.mpi.matcher import Decision, Matcher
from engine.mpi.model import Traits, problems, warnings
from engine.mpi.normalize import Norm
from engine.mpi.scoring import Scorer, Weights
from engine.mpi.settings import MpiConfig, load_mpi_config
from engine.mpi.storage import Storage
from engine.store.cipher import PayloadCipher
from engine.store.component_seal import ColumnSealer

log = structlog.get_logger("passerelle.mpi")
SYSTEM_USER = "engine"


@dataclass(frozen=True)
class Incoming:
    """One identity to resolve: the facility's local id (may be empty) and the traits."""

    authority: str
    local_id: str
    traits: Traits


@dataclass
class Resolution:
    outcome: str  # linked | review | new
    enterprise_id: str | None = None
    facility_id: int | None = None
    score: float = 0.0
    second: float | None = None
    method: str = ""
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    review_id: int | None = None


class Mpi:
    def __init__(
        self, db_path: Path, config: MpiConfig | None = None, cipher: PayloadCipher | None = None
    ) -> None:
        self.config = config or MpiConfig()
        self.storage = Storage(db_path, sealer=ColumnSealer(cipher))  # cipher: the store's keys
        self._index: RegisterIndex | None = None
        self._version = -1
        self._load_lock = threading.Lock()
        self.scheduler: Any = None
        self._matcher: Matcher | None = None

    def close(self) -> None:
        if self.scheduler is not None:
            from engine.mpi.register_load import stop_refresh

            stop_refresh(self.scheduler)
        self.storage.close()

    # -- the in-memory register ------------------------------------------------------------------

    @property
    def index(self) -> RegisterIndex:
        version = self.storage.register_version()
        if self._index is None or version != self._version:
            with self._load_lock:
                if self._index is None or version != self._version:
                    self._index = self._load_index()
                    self._version = version
        return self._index

    def _load_index(self) -> RegisterIndex:
        started = time.perf_counter()
        index = RegisterIndex.from_chunks(self._norm_chunks())
        log.info("mpi_index_loaded", identities=len(index), seconds=round(time.perf_counter() - started, 2))
        return index

    def _norm_chunks(self, size: int = 100_000) -> Iterator[tuple[list[int], list[Norm]]]:
        with self.storage.lock:
            cursor = self.storage.conn.execute(
                "SELECT id, norm FROM mpi_identity WHERE status = 'active' ORDER BY id"
            )
            while rows := cursor.fetchmany(size):
                yield [r[0] for r in rows], [Norm(*self.storage.norm_values(r[1])) for r in rows]

    def replace_index(self, index: RegisterIndex, version: int) -> None:
        """Install an index built by this process for the register at `version` (bulk loads)."""
        self._index, self._version = index, version

    def note_own_change(self) -> None:
        """This process changed the register and updated its index itself: do not reload it."""
        self._version = self.storage.register_version()

    def weights(self) -> Weights:
        row = self.storage.one("SELECT weights FROM mpi_weights WHERE active = 1 ORDER BY id DESC LIMIT 1")
        return Weights.from_json(json.loads(row[0])) if row else Weights()

    def save_weights(self, weights: Weights, user: str, reason: str) -> None:
        from engine.mpi.storage import audit

        with self.storage.write() as c:
            c.execute("UPDATE mpi_weights SET active = 0")
            c.execute(
                "INSERT INTO mpi_weights(created_at, weights, active) VALUES (?, ?, 1)",
                (time.time(), json.dumps(weights.to_json())),
            )
            audit(c, user, "weights", weights.source, reason, {"pairs": weights.pairs})
        self._matcher = None

    def matcher(self) -> Matcher:
        index = self.index
        cached = self._matcher
        if cached is None or cached.index is not index:
            cached = Matcher(index, Scorer(self.weights()), self.config.thresholds.thresholds())
            self._matcher = cached
        return cached

    def enterprise_id(self, identity_id: int) -> str:
        return f"{self.config.enterprise_id_prefix}{identity_id:010d}"

    def identity_id(self, enterprise_id: str) -> int | None:
        prefix = self.config.enterprise_id_prefix
        digits = enterprise_id[len(prefix) :] if enterprise_id.startswith(prefix) else ""
        return int(digits) if digits.isdigit() else None

    def survivor(self, identity_id: int) -> int:
        """Follow merges to the identity that absorbed `identity_id` (itself if none)."""
        seen = {identity_id}
        while True:
            row = self.storage.one("SELECT merged_into FROM mpi_identity WHERE id = ?", (identity_id,))
            if not row or row[0] is None or row[0] in seen:
                return identity_id
            identity_id = int(row[0])
            seen.add(identity_id)

    # -- resolving -------------------------------------------------------------------------------

    def resolve(self, incoming: Incoming, persist: bool = True, user: str = SYSTEM_USER) -> Resolution:
        return self.resolve_many([incoming], persist, user)[0]

    def resolve_many(
        self, items: Sequence[Incoming], persist: bool = True, user: str = SYSTEM_USER
    ) -> list[Resolution]:
        """Decide every item (known local ids first, then matching), then record all at once."""
        known = [self._known(i) for i in items]
        todo = [k for k, found in enumerate(known) if found is None]
        decisions: dict[int, Decision] = {}
        if todo:
            matcher = self.matcher()
            excluded = [self._distinct(items[k]) for k in todo]
            found = decide_traits(matcher, [items[k].traits for k in todo], excluded)
            decisions = dict(zip(todo, found, strict=True))
        results = []
        for k, item in enumerate(items):
            decision = known[k] or decisions[k]
            results.append(self._resolution(decision, item))
        if persist:
            from engine.mpi.review import record_resolutions

            record_resolutions(
                self, items, [known[k] or decisions[k] for k in range(len(items))], results, user
            )
        return results

    def _resolution(self, d: Decision, item: Incoming) -> Resolution:
        eid = (
            self.enterprise_id(d.identity_id) if d.outcome == "linked" and d.identity_id is not None else None
        )
        return Resolution(
            d.outcome, eid, None, d.score, d.second, d.method, list(d.reasons), warnings(item.traits)
        )

    def facility_row(self, authority: str, local_id: str) -> tuple[Any, ...] | None:
        return self.storage.facility_row(authority, local_id) if local_id else None

    def active_link(self, facility_id: int) -> int | None:
        row = self.storage.one(
            "SELECT identity_id FROM mpi_link WHERE facility_id = ? AND active = 1", (facility_id,)
        )
        return int(row[0]) if row else None

    def _known(self, item: Incoming) -> Decision | None:
        """Fast path: a local id already linked (following facility merges), traits not conflicting."""
        identity = self.linked_identity(item.authority, item.local_id)
        return None if identity is None else self._check_known(item.traits, identity)

    def linked_identity(self, authority: str, local_id: str) -> int | None:
        """The certified identity a facility's local id is linked to (following merges), if any."""
        row = self.facility_row(authority, local_id)
        hops = 0
        while row is not None and row[1] == "merged" and row[2] is not None and hops < 10:
            row = self.storage.one("SELECT id, status, merged_into FROM mpi_facility WHERE id = ?", (row[2],))
            hops += 1
        linked = self.active_link(int(row[0])) if row is not None else None
        return None if linked is None else self.survivor(linked)

    def _check_known(self, traits: Traits, identity_id: int) -> Decision | None:
        index = self.index
        r = index.row_of.get(identity_id)
        if r is None:
            return None
        lv = levels(
            query_columns([traits]), index.cols, np.zeros(1, dtype=np.intp), np.array([r], dtype=np.intp)
        )[0]
        from engine.mpi.guards import MATRICULE, SEX

        if lv[SEX] == 1 or lv[MATRICULE] == 1 or problems(traits):
            return None  # the local id says one thing, the traits another: decide afresh (review)
        return Decision("linked", identity_id, float("inf"), None, "local-id")

    def _distinct(self, item: Incoming) -> set[int]:
        row = self.facility_row(item.authority, item.local_id)
        if row is None:
            return set()
        return {
            int(r[0])
            for r in self.storage.query(
                "SELECT identity_id FROM mpi_distinct WHERE facility_id = ?", (row[0],)
            )
        }

    # -- reading identities ----------------------------------------------------------------------

    def identity_traits(self, identity_id: int) -> Traits | None:
        found = self.storage.identity_traits(identity_id)
        return Traits.from_dict(found) if found is not None else None

    def linked_ids(self, identity_id: int) -> list[tuple[str, str]]:
        """(authority, local id) of every facility identity linked to the identity."""
        return sorted(
            (str(a), self.storage.local_id(b, c))
            for a, b, c in self.storage.query(
                "SELECT f.authority, f.local_id, f.local_id_sealed FROM mpi_link l "
                "JOIN mpi_facility f ON f.id = l.facility_id WHERE l.identity_id = ? AND l.active = 1",
                (identity_id,),
            )
        )

    def find_identity(self, authority: str, value: str) -> int | None:
        """The certified identity behind an id in any domain: national, enterprise or a facility's."""
        if authority == self.config.national_authority:
            found = self.storage.identity_by_matricule(value)
            return self.survivor(found) if found is not None else None
        if authority == self.config.enterprise.namespace:
            iid = self.identity_id(value)
            row = (
                self.storage.one("SELECT id FROM mpi_identity WHERE id = ?", (iid,))
                if iid is not None
                else None
            )
            return self.survivor(int(row[0])) if row else None
        return self.linked_identity(authority, value)

    def level_labels(self, lv: Sequence[int]) -> dict[str, str]:
        return {
            name: ("missing" if level < 0 else labels[level])
            for (name, labels), level in zip(FIELDS.items(), lv, strict=True)
        }


def load_for_root(root: Path) -> MpiConfig:
    return load_mpi_config(root / "config" / "mpi.yaml")


_SERVICES_LOCK = threading.Lock()


def mpi_from(context: BuildContext) -> Mpi:
    """The engine's shared MPI (cached in `context.services["mpi"]`), on the store's database file."""
    with _SERVICES_LOCK:
        existing = context.services.get("mpi")
        if isinstance(existing, Mpi):
            return existing
        store = context.services.get("store")
        path = Path(store.path) if store is not None else context.path("var/passerelle.db")
        mpi = Mpi(path, load_for_root(context.root), getattr(store, "cipher", None))
        context.services["mpi"] = mpi
        if mpi.config.refresh.delta_dir:
            from engine.mpi.register_load import start_refresh

            mpi.scheduler = start_refresh(mpi, context.path(mpi.config.refresh.delta_dir))
        return mpi
