"""The ADT feed keeps the MPI current: A01/A04/A08/A28/A31 create or update the facility identity
(and resolve it again), A40 merges a prior local id into the surviving one (MRG-1), A37 unlinks.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.formats.hl7v2 import Hl7Message
from engine.mpi.hl7_traits import patient_ids, traits_from
from engine.mpi.review import Actor, merge_facility, unlink_facility
from engine.mpi.service import Incoming, Mpi, Resolution

UPDATES = frozenset({"A01", "A04", "A08", "A28", "A31"})


@dataclass
class AdtResult:
    event: str
    action: str  # resolved | merged | unlinked | ignored
    resolution: Resolution | None = None


def apply_adt(msg: Hl7Message, mpi: Mpi, national_authority: str) -> AdtResult:
    event = msg.header.trigger_event
    skip = (mpi.config.enterprise.namespace,)
    ids = patient_ids(msg, national_authority, skip)
    sender = msg.header.sending_facility.split("^")[0] or "adt"
    actor = Actor(f"adt:{sender}", f"ADT^{event} {msg.header.control_id}")
    if event in UPDATES:
        authority, local_id = ids.local[0] if ids.local else ("", "")
        result = mpi.resolve(
            Incoming(authority, local_id, traits_from(msg, national_authority)), user=actor.user
        )
        return AdtResult(event, "resolved", result)
    if event == "A40" and ids.local:
        authority, survivor = ids.local[0]
        prior = msg.get("MRG-1.1")
        prior_authority = msg.get("MRG-1.4.1") or authority
        if prior and prior_authority == authority and merge_facility(mpi, authority, prior, survivor, actor):
            return AdtResult(event, "merged")
        return AdtResult(event, "ignored")
    if event == "A37":
        done = False
        for n in range(1, msg.count("PID") + 1):
            for authority, local_id in patient_ids(msg, national_authority, skip, f"PID[{n}]").local:
                done = unlink_facility(mpi, authority, local_id, actor) or done
        return AdtResult(event, "unlinked" if done else "ignored")
    return AdtResult(event, "ignored")
