"""What the dashboard does (as opposed to shows): reprocess, resend, MPI review decisions.

Each action goes through the running engine (so its queues pick the work up) and is written
to the audit log with the user, whatever its outcome. Shared by the pages and the JSON API.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import TYPE_CHECKING, Any

from engine.contracts import Intake
from engine.dashboard.auth import Session
from engine.errors import PasserelleError
from engine.message import SourceMeta

if TYPE_CHECKING:
    from engine.dashboard.app import Dashboard

PROCESSED_WAIT = 10.0  # seconds a reprocess waits for the steps of a received-mode channel
MAX_BULK = 500


class ActionError(PasserelleError):
    """An action cannot be done as asked; the text says why (shown to the user)."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.status = status


async def reprocess(dash: Dashboard, session: Session, message_id: int, client: str) -> dict[str, Any]:
    """Run a stored message through its channel again, as a new message linked to the original.

    The control id is the original's plus `~reprocess-<random>`: the copy is not collapsed by
    de-duplication, and a search by the original control id finds both.
    """
    row = await dash.engine.store.message(message_id)
    if row is None:
        raise ActionError(f"no message {message_id}", 404)
    channel = dash.channel(row.channel)
    if channel is None:
        raise ActionError(f"channel {row.channel} is not running", 409)
    intake = Intake(
        row.raw,
        SourceMeta("dashboard", f"reprocess of #{message_id}"),
        row.content_type,
        control_id=f"{row.control_id}~reprocess-{secrets.token_hex(4)}",
        sender=row.sender,
        charset=channel.charset,
    )
    receipt = await channel.accept(intake)
    verdict = receipt.verdict
    if receipt.processed is not None:
        # Still running its steps after the wait: the new message's page shows the outcome.
        with contextlib.suppress(TimeoutError):
            verdict = await asyncio.wait_for(asyncio.shield(receipt.processed), PROCESSED_WAIT)
    result = {
        "original": message_id,
        "new_message": receipt.message_id,
        "status": verdict.status,
        "ack_code": verdict.code,
    }
    await dash.queries.audit(session.user, session.role, "reprocess", f"message {message_id}", result, client)
    return result


async def resend(dash: Dashboard, session: Session, delivery_ids: list[int], client: str) -> dict[str, Any]:
    """Re-open dead or rejected deliveries and hand them to their running queues."""
    if not delivery_ids or len(delivery_ids) > MAX_BULK:
        raise ActionError(f"give between 1 and {MAX_BULK} delivery ids")
    known = await dash.queries.delivery_channels(delivery_ids)
    done, skipped = [], []
    for delivery_id in delivery_ids:
        row = await dash.engine.store.requeue_delivery(delivery_id)
        if row is None or delivery_id not in known:
            skipped.append(delivery_id)
            continue
        channel = dash.channel(known[delivery_id])
        queue = next((q for q in channel.queues if q.name == row.destination), None) if channel else None
        if queue is not None:
            queue.resume(row)  # otherwise the store keeps it queued until the channel runs again
        done.append(delivery_id)
        await dash.queries.audit(
            session.user,
            session.role,
            "resend",
            f"delivery {delivery_id}",
            {"message_id": row.message_id, "channel": known[delivery_id], "destination": row.destination},
            client,
        )
    return {"resent": done, "skipped": skipped}


# -- MPI review (engine/mpi/review.py) ----------------------------------------------------------


async def review_decision(
    dash: Dashboard,
    session: Session,
    review_id: int,
    decision: str,
    enterprise_id: str,
    reason: str,
    client: str,
) -> dict[str, Any]:
    """`link` the item to a candidate identity, or `reject` a candidate (different people)."""
    from engine.mpi.review import Actor, ReviewError, link_item, reject_item

    apply = {"link": link_item, "reject": reject_item}.get(decision)
    if apply is None:
        raise ActionError("decision must be link or reject")
    actor = Actor(session.user, reason)
    try:
        await asyncio.to_thread(apply, dash.mpi(), review_id, enterprise_id, actor)
    except ReviewError as err:
        raise ActionError(str(err)) from err
    result = {"review": review_id, "decision": decision, "enterprise_id": enterprise_id, "reason": reason}
    await dash.queries.audit(
        session.user, session.role, f"review-{decision}", f"review {review_id}", result, client
    )
    return result


async def merge(
    dash: Dashboard, session: Session, survivor: str, absorbed: str, reason: str, client: str
) -> dict[str, Any]:
    from engine.mpi.review import Actor, ReviewError, merge_identities

    try:
        moved = await asyncio.to_thread(
            merge_identities, dash.mpi(), survivor, absorbed, Actor(session.user, reason)
        )
    except ReviewError as err:
        raise ActionError(str(err)) from err
    result = {"survivor": survivor, "absorbed": absorbed, "links_moved": moved, "reason": reason}
    await dash.queries.audit(session.user, session.role, "merge", f"identity {absorbed}", result, client)
    return result


async def review_items(dash: Dashboard, status: str = "open", limit: int = 100) -> list[dict[str, Any]]:
    from engine.mpi.review import list_items

    items: list[dict[str, Any]] = await asyncio.to_thread(list_items, dash.mpi(), status, limit)
    return items


async def review_item(dash: Dashboard, session: Session, review_id: int, client: str) -> dict[str, Any]:
    """One item with the traits side by side (patient data: the view is audited)."""
    from engine.mpi.review import ReviewError, show_item

    try:
        item: dict[str, Any] = await asyncio.to_thread(show_item, dash.mpi(), review_id)
    except ReviewError as err:
        raise ActionError(str(err), 404) from err
    await dash.queries.audit(session.user, session.role, "view-review", f"review {review_id}", {}, client)
    item["comparison"] = compare_traits(item)
    return item


def compare_traits(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows trait by trait: the incoming value, each candidate's, and whether each agrees."""
    from engine.mpi.model import TRAIT_NAMES

    incoming = item.get("incoming", {})
    rows = []
    for name in TRAIT_NAMES:
        mine = normal(incoming.get(name))
        cells = []
        for cand in item.get("candidates", []):
            theirs = normal(cand.get("traits", {}).get(name))
            agree = None if not mine or not theirs else mine == theirs
            cells.append(
                {
                    "value": cand.get("traits", {}).get(name, ""),
                    "agree": agree,
                    "level": cand.get("levels", {}).get(name, ""),
                }
            )
        rows.append({"trait": name, "incoming": incoming.get(name, ""), "candidates": cells})
    return rows


def normal(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    return " ".join(str(value or "").casefold().split())
