"""Contract harness for `dsp_store`: the DSP registry and repository in a throw-away project.

The peer "accepts" when the document is in the registry and its bytes in the repository; it
refuses for good when the patient's DSP is closed; it is unavailable when the repository folder
cannot be written (a full or read-only disk), which must be retryable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.contracts import BuildContext
from engine.dsp.service import dsp_from
from engine.message import CDA, HL7V2, Message, SourceMeta
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25

REPO = Path(__file__).resolve().parents[2]


class DspStoreHarness:
    type = "dsp_store"

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "dsp-project"
        (self.root / "config").mkdir(parents=True)
        for name in ("mpi.yaml", "dsp-demo-register.csv"):
            shutil.copy(REPO / "config" / name, self.root / "config" / name)
        (self.root / "schematron").symlink_to(REPO / "schematron")
        self._context = BuildContext(self.root, "contract", {})
        self._sample: Message | None = None

    def context(self) -> BuildContext:
        return self._context

    def sample(self) -> Message:
        """The ORU sample turned into a CDA lab report by the lab channel's own steps."""
        if self._sample is None:
            from engine import registry

            message = Message("contract", ORU_R01_25, HL7V2, SourceMeta("test"), id=7)
            for step_type in ("resolve_patient", "hl7_to_cda_lab"):
                config = registry.config_model("step", step_type).model_validate(
                    {"national_authority": "RNPP"}
                )
                message = registry.load("step", step_type)(config, self._context)(message)
            self._sample = Message(
                "contract", message.content(), CDA, SourceMeta("test"), id=7, vars=message.vars
            )
        return self._sample

    def expected(self, _oru: bytes) -> bytes:
        return self.sample().content()

    async def config(self, scenario: str) -> dict[str, object]:
        blobs = self.root / "var" / "blobs"
        if scenario in ("unavailable", "retryable", "silent"):
            blocker = self.root / "not-a-folder"
            blocker.write_text("a file where the repository folder should be")
            blobs = blocker / "blobs"
        seed = self.root / "config" / "dsp-demo-register.csv"
        (self.root / "config" / "dsp.yaml").write_text(f"blob_dir: {blobs}\nmpi_seed_register: {seed}\n")
        self.sample()
        if scenario == "permanent":
            dsp_from(self._context).registry.close_record(
                MATRICULE, "contract-suite", "patient closed the DSP"
            )
        return {}

    async def delivered(self) -> list[bytes]:
        from engine.dsp.registry import Query

        dsp = dsp_from(self._context)
        return [dsp.content(entry) for entry in dsp.registry.documents(Query(matricule=MATRICULE))]

    async def stop(self) -> None:
        return None
