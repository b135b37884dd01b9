"""Which work queue a message goes to, and which work queues a worker process consumes.

Each channel has `partitions` quorum queues with single-active-consumer: the broker delivers a
queue's messages to one consumer at a time, in order. A message goes to the partition of its
order key (CRC-32: the same on every process and machine, unlike Python's salted `hash`), so one
key's messages are processed one after the other by one worker. Messages without a key need no
order and are spread by id.

The partitions are spread over the live workers (the store's `workers` table, the leases that
already decide who owns deliveries): worker of rank r among n consumes the partitions p with
p % n == r. RabbitMQ 3.10's single-active-consumer keeps the first consumer that subscribed
active, so subscribing everywhere would leave the first worker with every partition: each worker
subscribes only to its own share, and single-active-consumer guards the hand-over when the
share changes (the new consumer stays waiting until the old one has acked and cancelled).
"""

from __future__ import annotations

import zlib
from typing import Any

QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum", "x-single-active-consumer": True}
MEMBER_PREFIX = "bus-"  # the store worker ids of the processes that consume the bus


def partition_of(key: str, message_id: int, count: int) -> int:
    if not key:
        return message_id % count
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % count


def queue_name(channel: str, partition: int) -> str:
    return f"passerelle.work.{channel}.{partition:03d}"


def share(workers: list[str], me: str, count: int) -> set[int]:
    """The partitions worker `me` consumes when `workers` (in id order) are alive."""
    if me not in workers:
        return set()
    rank, size = workers.index(me), len(workers)
    return {p for p in range(count) if p % size == rank}
