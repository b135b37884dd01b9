"""Recording decisions, and the identity-vigilance team's review queue.

Automatic decisions are recorded with user `engine` in the link history. Human decisions
(link, reject, merge, unmerge, unlink) need a user and a reason and write an audit record in the
same transaction as the change. A rejected pair ("different people") is remembered and never
proposed again for that facility identity.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import PasserelleError
from engine.mpi.matcher import Decision
from engine.mpi.storage import CANDIDATES, FACILITY_TRAITS, LOCAL_ID, audit, history

if TYPE_CHECKING:
    from engine.mpi.service import Incoming, Mpi, Resolution


END_LINK = "UPDATE mpi_link SET active = 0, ended_at = ?, ended_by = ?, end_reason = {reason} WHERE id = ?"


class ReviewError(PasserelleError):
    """A review command cannot be applied (unknown item, closed item, missing reason...)."""


@dataclass(frozen=True)
class Actor:
    user: str
    reason: str

    def check(self) -> None:
        if not self.user.strip() or not self.reason.strip():
            raise ReviewError("every review decision needs --user and --reason")


# -- automatic decisions ------------------------------------------------------------------------


def record_resolutions(
    mpi: Mpi,
    items: Sequence[Incoming],
    decisions: Sequence[Decision],
    results: Sequence[Resolution],
    user: str,
) -> None:
    with mpi.storage.write() as c:
        for item, d, res in zip(items, decisions, results, strict=True):
            res.facility_id = _upsert_facility(mpi, c, item, d.outcome)
            if d.method == "local-id":
                continue
            if d.outcome == "linked" and d.identity_id is not None:
                _link(
                    c, res.facility_id, d.identity_id, d.score, d.method, _evidence(mpi, d), user, "automatic"
                )
            elif d.outcome == "review":
                res.review_id = _open_review(mpi, c, res.facility_id, d)


def _upsert_facility(mpi: Mpi, c: sqlite3.Connection, item: Incoming, outcome: str) -> int:
    local_id = item.local_id or f"anonymous:{uuid.uuid4().hex}"
    sealer = mpi.storage.sealer
    traits = sealer.seal(json.dumps(item.traits.as_dict(), sort_keys=True), FACILITY_TRAITS)
    found = mpi.storage.facility_id(c, item.authority, local_id)
    stored_id = sealer.lookup(local_id, LOCAL_ID)  # a row stored in clear before is sealed now
    if found is not None:
        c.execute(
            "UPDATE mpi_facility SET traits = ?, local_id = ?, local_id_sealed = ?, "
            "status = CASE WHEN status = 'merged' THEN status ELSE ? END, "
            "updated_at = ? WHERE id = ?",
            (traits, *stored_id, outcome, time.time(), found),
        )
        return found
    cur = c.execute(
        "INSERT INTO mpi_facility(authority, local_id, local_id_sealed, traits, status, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (item.authority, *stored_id, traits, outcome, time.time()),
    )
    return int(cur.lastrowid or 0)


def _evidence(mpi: Mpi, d: Decision) -> dict[str, Any]:
    best = d.candidates[0].levels if d.candidates else []
    return {"levels": mpi.level_labels(best) if best else {}, "second": d.second, "reasons": d.reasons}


def _link(
    c: sqlite3.Connection,
    facility_id: int,
    identity_id: int,
    score: float,
    method: str,
    evidence: dict[str, Any],
    user: str,
    reason: str,
) -> None:
    _end_links(c, facility_id, user, "replaced by a new link")
    c.execute(
        "INSERT INTO mpi_link(facility_id, identity_id, score, method, evidence, created_at, created_by) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            facility_id,
            identity_id,
            score if score != float("inf") else None,
            method,
            json.dumps(evidence),
            time.time(),
            user,
        ),
    )
    c.execute("UPDATE mpi_facility SET status = 'linked' WHERE id = ? AND status != 'merged'", (facility_id,))
    history(c, "link", user, reason, facility_id, identity_id, details={"method": method})


def _end_links(c: sqlite3.Connection, facility_id: int, user: str, reason: str) -> list[int]:
    rows = c.execute(
        "SELECT id, identity_id FROM mpi_link WHERE facility_id = ? AND active = 1", (facility_id,)
    ).fetchall()
    for link_id, identity_id in rows:
        c.execute(
            "UPDATE mpi_link SET active = 0, ended_at = ?, ended_by = ?, end_reason = ? WHERE id = ?",
            (time.time(), user, reason, link_id),
        )
        history(c, "unlink", user, reason, facility_id, identity_id, details={"link": link_id})
    return [int(r[1]) for r in rows]


def _open_review(mpi: Mpi, c: sqlite3.Connection, facility_id: int, d: Decision) -> int:
    candidates = [
        {
            "identity_id": x.identity_id,
            "enterprise_id": mpi.enterprise_id(x.identity_id),
            "score": round(x.score, 2),
            "levels": mpi.level_labels(x.levels),
        }
        for x in d.candidates
    ]
    sealed = mpi.storage.sealer.seal(json.dumps(candidates), CANDIDATES)
    row = c.execute(
        "SELECT id FROM mpi_review WHERE facility_id = ? AND status = 'open'", (facility_id,)
    ).fetchone()
    if row:
        c.execute(
            "UPDATE mpi_review SET reasons = ?, candidates = ?, score = ? WHERE id = ?",
            (json.dumps(d.reasons), sealed, d.score, row[0]),
        )
        return int(row[0])
    cur = c.execute(
        "INSERT INTO mpi_review(facility_id, status, reasons, candidates, score, created_at) "
        "VALUES (?, 'open', ?, ?, ?, ?)",
        (facility_id, json.dumps(d.reasons), sealed, d.score, time.time()),
    )
    return int(cur.lastrowid or 0)


# -- the queue ----------------------------------------------------------------------------------


def list_items(mpi: Mpi, status: str = "open", limit: int = 50) -> list[dict[str, Any]]:
    rows = mpi.storage.query(
        "SELECT r.id, r.facility_id, f.authority, f.local_id, r.score, r.reasons, r.candidates, "
        "r.created_at, r.status, f.local_id_sealed FROM mpi_review r "
        "JOIN mpi_facility f ON f.id = r.facility_id "
        "WHERE r.status = ? ORDER BY r.id LIMIT ?",
        (status, limit),
    )
    return [
        {
            "id": r[0],
            "facility_id": r[1],
            "authority": r[2],
            "local_id": mpi.storage.local_id(r[3], r[9]),
            "score": r[4],
            "reasons": json.loads(r[5]),
            "candidates": len(json.loads(mpi.storage.sealer.open(r[6], CANDIDATES))),
            "created_at": r[7],
            "status": r[8],
        }
        for r in rows
    ]


def show_item(mpi: Mpi, review_id: int) -> dict[str, Any]:
    """The item with the incoming traits and each candidate's traits, scores and agreements."""
    row = mpi.storage.one(
        "SELECT r.facility_id, r.status, r.reasons, r.candidates, f.traits, f.authority, f.local_id, "
        "f.local_id_sealed FROM mpi_review r JOIN mpi_facility f ON f.id = r.facility_id WHERE r.id = ?",
        (review_id,),
    )
    if row is None:
        raise ReviewError(f"no review item {review_id}")
    sealer = mpi.storage.sealer
    candidates = json.loads(sealer.open(row[3], CANDIDATES))
    for cand in candidates:
        traits = mpi.identity_traits(int(cand["identity_id"]))
        cand["traits"] = traits.as_dict() if traits else {}
    return {
        "id": review_id,
        "facility_id": row[0],
        "status": row[1],
        "reasons": json.loads(row[2]),
        "authority": row[5],
        "local_id": mpi.storage.local_id(row[6], row[7]),
        "incoming": json.loads(sealer.open(row[4], FACILITY_TRAITS)),
        "candidates": candidates,
    }


def _open_item(mpi: Mpi, c: sqlite3.Connection, review_id: int) -> tuple[int, list[dict[str, Any]]]:
    row = c.execute(
        "SELECT facility_id, status, candidates FROM mpi_review WHERE id = ?", (review_id,)
    ).fetchone()
    if row is None:
        raise ReviewError(f"no review item {review_id}")
    if row[1] != "open":
        raise ReviewError(f"review item {review_id} is already {row[1]}")
    return int(row[0]), json.loads(mpi.storage.sealer.open(row[2], CANDIDATES))


def link_item(mpi: Mpi, review_id: int, enterprise_id: str, actor: Actor) -> None:
    actor.check()
    identity_id = _existing_identity(mpi, enterprise_id)
    with mpi.storage.write() as c:
        facility_id, candidates = _open_item(mpi, c, review_id)
        score = next((float(x["score"]) for x in candidates if x["identity_id"] == identity_id), None)
        _link(
            c,
            facility_id,
            identity_id,
            score if score is not None else float("inf"),
            "manual",
            {"review": review_id},
            actor.user,
            actor.reason,
        )
        _close(c, review_id, "linked", actor)
        audit(
            c,
            actor.user,
            "review-link",
            f"review {review_id}",
            actor.reason,
            {"facility_id": facility_id, "enterprise_id": enterprise_id},
        )


def reject_item(mpi: Mpi, review_id: int, enterprise_id: str, actor: Actor) -> None:
    """These are different people: remembered; the item closes when no candidate is left."""
    actor.check()
    identity_id = _existing_identity(mpi, enterprise_id)
    with mpi.storage.write() as c:
        facility_id, candidates = _open_item(mpi, c, review_id)
        c.execute(
            "INSERT OR IGNORE INTO mpi_distinct(facility_id, identity_id, created_at, created_by, reason) "
            "VALUES (?, ?, ?, ?, ?)",
            (facility_id, identity_id, time.time(), actor.user, actor.reason),
        )
        left = [x for x in candidates if x["identity_id"] != identity_id]
        c.execute(
            "UPDATE mpi_review SET candidates = ? WHERE id = ?",
            (mpi.storage.sealer.seal(json.dumps(left), CANDIDATES), review_id),
        )
        if identity_id in _end_links_to(c, facility_id, identity_id, actor):
            c.execute("UPDATE mpi_facility SET status = 'review' WHERE id = ?", (facility_id,))
        if not left:
            _close(c, review_id, "rejected", actor)
            c.execute(
                "UPDATE mpi_facility SET status = 'new' WHERE id = ? AND status = 'review'", (facility_id,)
            )
        history(c, "distinct", actor.user, actor.reason, facility_id, identity_id)
        audit(
            c,
            actor.user,
            "review-reject",
            f"review {review_id}",
            actor.reason,
            {"facility_id": facility_id, "enterprise_id": enterprise_id},
        )


def _end_links_to(c: sqlite3.Connection, facility_id: int, identity_id: int, actor: Actor) -> list[int]:
    row = c.execute(
        "SELECT 1 FROM mpi_link WHERE facility_id = ? AND identity_id = ? AND active = 1",
        (facility_id, identity_id),
    ).fetchone()
    return _end_links(c, facility_id, actor.user, actor.reason) if row else []


def _close(c: sqlite3.Connection, review_id: int, status: str, actor: Actor) -> None:
    c.execute(
        "UPDATE mpi_review SET status = ?, decided_at = ?, decided_by = ?, decision_reason = ? WHERE id = ?",
        (status, time.time(), actor.user, actor.reason, review_id),
    )


def _existing_identity(mpi: Mpi, enterprise_id: str) -> int:
    identity_id = mpi.identity_id(enterprise_id)
    row = (
        mpi.storage.one("SELECT status FROM mpi_identity WHERE id = ?", (identity_id,))
        if identity_id
        else None
    )
    if identity_id is None or row is None:
        raise ReviewError(f"no certified identity {enterprise_id}")
    if row[0] != "active":
        raise ReviewError(f"identity {enterprise_id} is {row[0]}")
    return identity_id


def unlink_facility(mpi: Mpi, authority: str, local_id: str, actor: Actor) -> bool:
    """End the facility identity's link (A37, or a reviewer's unlink); it goes back to review."""
    actor.check()
    with mpi.storage.write() as c:
        facility_id = mpi.storage.facility_id(c, authority, local_id)
        if facility_id is None:
            return False
        ended = _end_links(c, facility_id, actor.user, actor.reason)
        c.execute("UPDATE mpi_facility SET status = 'unlinked' WHERE id = ?", (facility_id,))
        audit(c, actor.user, "unlink", f"facility {facility_id}", actor.reason, {"identities": ended})
    return bool(ended)


# -- merges of certified identities ---------------------------------------------------------------


def merge_identities(mpi: Mpi, survivor_eid: str, absorbed_eid: str, actor: Actor) -> int:
    """The absorbed identity's links move to the survivor; returns how many moved."""
    actor.check()
    survivor, absorbed = _existing_identity(mpi, survivor_eid), _existing_identity(mpi, absorbed_eid)
    if survivor == absorbed:
        raise ReviewError("an identity cannot be merged into itself")
    with mpi.storage.write() as c:
        links = c.execute(
            "SELECT id, facility_id, score FROM mpi_link WHERE identity_id = ? AND active = 1", (absorbed,)
        ).fetchall()
        for link_id, facility_id, score in links:
            c.execute(
                END_LINK.format(reason="'merge'"),
                (time.time(), actor.user, link_id),
            )
            cur = c.execute(
                "INSERT INTO mpi_link(facility_id, identity_id, score, method, evidence, created_at, "
                "created_by) VALUES (?, ?, ?, 'merge', ?, ?, ?)",
                (facility_id, survivor, score, json.dumps({"moved_from": link_id}), time.time(), actor.user),
            )
            history(
                c,
                "move",
                actor.user,
                actor.reason,
                facility_id,
                survivor,
                absorbed,
                {"old_link": link_id, "new_link": cur.lastrowid},
            )
        c.execute(
            "UPDATE mpi_identity SET status = 'merged', merged_into = ?, updated_at = ? WHERE id = ?",
            (survivor, time.time(), absorbed),
        )
        history(c, "merge", actor.user, actor.reason, None, survivor, absorbed, {"links": len(links)})
        audit(
            c, actor.user, "merge", f"{absorbed_eid} into {survivor_eid}", actor.reason, {"links": len(links)}
        )
        mpi.storage.bump_register_version(c)
    return len(links)


def unmerge_identity(mpi: Mpi, absorbed_eid: str, actor: Actor) -> int:
    """Undo the last merge of `absorbed_eid`: it becomes active again and gets its links back."""
    actor.check()
    absorbed = mpi.identity_id(absorbed_eid)
    row = mpi.storage.one(
        "SELECT merged_into FROM mpi_identity WHERE id = ? AND status = 'merged'", (absorbed,)
    )
    if absorbed is None or row is None:
        raise ReviewError(f"identity {absorbed_eid} is not merged")
    survivor = int(row[0])
    with mpi.storage.write() as c:
        merged_at = (
            c.execute(
                "SELECT max(at) FROM mpi_history WHERE action = 'merge' AND other_id = ?", (absorbed,)
            ).fetchone()[0]
            or 0.0
        )
        moves = c.execute(
            "SELECT details FROM mpi_history WHERE action = 'move' AND other_id = ? AND at >= ? - 1",
            (absorbed, merged_at),
        ).fetchall()
        restored = 0
        for (details,) in moves:
            info = json.loads(details)
            moved = c.execute(
                "SELECT facility_id, active FROM mpi_link WHERE id = ?", (info["new_link"],)
            ).fetchone()
            if moved is None or not moved[1]:
                continue  # changed since the merge: left to the reviewers
            c.execute(
                END_LINK.format(reason="'unmerge'"),
                (time.time(), actor.user, info["new_link"]),
            )
            c.execute(
                "UPDATE mpi_link SET active = 1, ended_at = NULL, ended_by = NULL, end_reason = NULL "
                "WHERE id = ?",
                (info["old_link"],),
            )
            restored += 1
        c.execute(
            "UPDATE mpi_identity SET status = 'active', merged_into = NULL, updated_at = ? WHERE id = ?",
            (time.time(), absorbed),
        )
        history(c, "unmerge", actor.user, actor.reason, None, survivor, absorbed, {"links": restored})
        audit(
            c,
            actor.user,
            "unmerge",
            f"{absorbed_eid} out of {mpi.enterprise_id(survivor)}",
            actor.reason,
            {"links": restored},
        )
        mpi.storage.bump_register_version(c)
    return restored


# -- facility identities (ADT A40) -----------------------------------------------------------------


def merge_facility(mpi: Mpi, authority: str, prior_id: str, survivor_id: str, actor: Actor) -> bool:
    """A40: the facility merged its prior local id into the surviving one."""
    with mpi.storage.write() as c:
        prior_row = mpi.storage.facility_id(c, authority, prior_id)
        survivor_row = mpi.storage.facility_id(c, authority, survivor_id)
        if prior_row is None or survivor_row is None or prior_row == survivor_row:
            return False
        prior, survivor = (prior_row,), (survivor_row,)
        ended = _end_links(c, int(prior[0]), actor.user, actor.reason)
        c.execute(
            "UPDATE mpi_facility SET status = 'merged', merged_into = ?, updated_at = ? WHERE id = ?",
            (survivor[0], time.time(), prior[0]),
        )
        c.execute(
            "UPDATE mpi_review SET status = 'closed', decided_at = ?, decided_by = ?, decision_reason = ? "
            "WHERE facility_id = ? AND status = 'open'",
            (time.time(), actor.user, actor.reason, prior[0]),
        )
        history(
            c,
            "facility-merge",
            actor.user,
            actor.reason,
            int(prior[0]),
            None,
            int(survivor[0]),
            {"ended_links_to": ended},
        )
        audit(c, actor.user, "facility-merge", f"facility {prior[0]} into {survivor[0]}", actor.reason)
    return True


def audit_log(mpi: Mpi, limit: int = 100) -> list[dict[str, Any]]:
    rows = mpi.storage.query(
        "SELECT id, at, user, action, subject, reason, details FROM mpi_audit ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [
        {
            "id": r[0],
            "at": r[1],
            "user": r[2],
            "action": r[3],
            "subject": r[4],
            "reason": r[5],
            "details": json.loads(r[6]),
        }
        for r in rows
    ]
