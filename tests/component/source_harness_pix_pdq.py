"""Contract-suite harness for the `pix_pdq` source: the MLLP contract holds unchanged (a non-query
message is answered with the ordinary ACK, only after the commit). Register it in
`tests/component/test_source_contract.py::harnesses` as `found["pix_pdq"] = PixPdqHarness`."""

from __future__ import annotations

from tests.component.source_harness_mllp import MllpHarness


class PixPdqHarness(MllpHarness):
    type = "pix_pdq"
