"""LIS-like senders of numbered messages, one patient each, and the checks on what arrived.

Shared by the kill -9 tests (tests/integration/test_crash_safety.py, test_scale_out.py,
test_bus_scale_out.py): each sender sends its messages one by one over a real socket and resends
the current one until it is acknowledged AA, as an LIS does; control ids are `S<sender>N<number>`
and the patient (PID-3[2], the channels' ordering key) is `PAT<sender>`.
"""

from __future__ import annotations

import threading
import time

from tests.support.mllp_peers import MllpClient
from tests.unit.hl7_samples import ORU_R01_25

# An MLLP channel delivering to a downstream MLLP receiver, ordered by patient; `mode` is its
# respond_after.
ORDERED_CHANNEL = """
respond_after: {mode}
source: {{type: mllp, port: {port}}}
steps:
  - {{type: validate_hl7, required_fields: [PID-3]}}
destinations:
  - name: downstream
    type: mllp
    host: 127.0.0.1
    port: {downstream}
    queue: {{order_by: "PID-3[2].1", concurrency: 8, initial_backoff: 0.05, max_backoff: 0.5}}
"""


def message(sender: int, number: int) -> bytes:
    control = f"S{sender}N{number}"
    return ORU_R01_25.replace(b"|LAB20250314000123|", f"|{control}|".encode()).replace(
        b"P000123456", f"PAT{sender}".encode()
    )


class Sender(threading.Thread):
    """Sends `count` messages in order; resends the current one until it is acknowledged."""

    def __init__(self, index: int, port: int, acked: list[str], count: int) -> None:
        super().__init__(daemon=True)
        self.index, self.port, self.acked, self.count = index, port, acked, count
        self.error: BaseException | None = None

    def run(self) -> None:
        client: MllpClient | None = None
        try:
            for number in range(self.count):
                client = self._send_until_acked(client, number)
        except BaseException as err:
            self.error = err
        finally:
            if client is not None:
                client.close()

    def _send_until_acked(self, client: MllpClient | None, number: int) -> MllpClient:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                client = client or MllpClient(self.port, timeout=10)
                ack = client.send(message(self.index, number))
                if b"MSA|AA|" in ack:
                    self.acked.append(f"S{self.index}N{number}")
                    return client
            except OSError:
                pass
            if client is not None:
                client.close()
                client = None
            time.sleep(0.05)
        raise TimeoutError(f"S{self.index}N{number} was never acknowledged")


def control_ids(payloads: list[bytes]) -> list[str]:
    return [p.split(b"\r", 1)[0].split(b"|")[9].decode() for p in payloads]


def assert_per_patient_order(payloads: list[bytes]) -> None:
    """Per sender (= patient, PID-3[2] local id: the ordering key), first deliveries come in sending
    order; different patients run in parallel (redeliveries may repeat)."""
    first_seen: dict[str, list[int]] = {}
    for control in dict.fromkeys(control_ids(payloads)):
        sender, number = control[1:].split("N")
        first_seen.setdefault(sender, []).append(int(number))
    for numbers in first_seen.values():
        assert numbers == sorted(numbers)
