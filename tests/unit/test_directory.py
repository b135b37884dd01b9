"""The provider directory: YAML and CSV, lookups, certificate checks, reload on change."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.contracts import BuildContext
from engine.directory import Directory, Settings, directory_from
from engine.errors import ConfigError
from tests.support.smime_pki import SmimePki, make_smime_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmimePki]:
    yield make_smime_pki(tmp_path_factory.mktemp("directory"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def directory(pki: SmimePki, file: Path, clock: Clock | None = None) -> Directory:
    settings = Settings(file=str(file), ca=str(pki.ca), check_interval=5)
    return Directory(settings, pki.root, clock or Clock())


def touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_yaml_directory_lookups(pki: SmimePki) -> None:
    found = directory(pki, pki.providers)
    gp = found.get("GP0001")
    assert gp is not None and gp.email == pki.gp.email and gp.profession == "general_practitioner"
    assert found.by_email("GP@Practice.test") == gp
    assert gp.certificate is not None
    assert found.by_signer(gp.certificate.issuer.public_bytes(), gp.certificate.serial_number) == gp
    assert found.by_signer(b"other issuer", gp.certificate.serial_number) is None
    assert found.get("nobody") is None and len(found) == 5


def test_certificate_problems_are_named(pki: SmimePki) -> None:
    found = directory(pki, pki.providers)

    def problem(ehealth_id: str) -> str:
        provider = found.get(ehealth_id)
        assert provider is not None
        return found.certificate_problem(provider)

    assert problem("GP0001") == "" and problem("SP0002") == ""
    assert problem("GP0003").startswith("expired on ")
    assert problem("GP0004") == "is not issued by a CA the provider directory trusts"
    assert problem("GP0006") == "is not in the directory (no certificate registered)"


def test_csv_directory(pki: SmimePki, tmp_path: Path) -> None:
    csv = tmp_path / "providers.csv"
    csv.write_text(
        "ehealth_id,name,profession,email,certificate\n"
        f"GP0001,Dr One,general_practitioner,{pki.gp.email},{pki.gp.cert}\n"
        "GP0009,Dr Nine,nurse,nine@practice.test,\n"
    )
    found = directory(pki, csv)
    assert found.get("GP0001") is not None and found.get("GP0009") is not None
    assert found.certificate_problem(found.get("GP0001")) == ""  # type: ignore[arg-type]


def test_change_is_reloaded_after_the_check_interval(pki: SmimePki, tmp_path: Path) -> None:
    file = tmp_path / "providers.yaml"
    file.write_text("providers:\n  - {ehealth_id: A1, name: A, email: a@x.test}\n")
    clock = Clock()
    found = directory(pki, file, clock)
    file.write_text("providers:\n  - {ehealth_id: B2, name: B, email: b@x.test}\n")
    touch_later(file)
    assert found.get("A1") is not None  # not checked yet: within the interval
    clock.now = 6
    assert found.get("A1") is None and found.get("B2") is not None


def test_broken_reload_keeps_the_previous_directory(pki: SmimePki, tmp_path: Path) -> None:
    file = tmp_path / "providers.yaml"
    file.write_text("providers:\n  - {ehealth_id: A1, name: A, email: a@x.test}\n")
    clock = Clock()
    found = directory(pki, file, clock)
    file.write_text("providers:\n  - {ehealth_id: A1, name: A, email: not-an-address}\n")
    touch_later(file)
    clock.now = 6
    assert found.get("A1") is not None and found.get("A1").email == "a@x.test"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "providers:\n  - {ehealth_id: A, name: A, email: a@x.test}\n"
            "  - {ehealth_id: A, name: B, email: b@x.test}\n",
            "eHealth ID A is listed twice",
        ),
        (
            "providers:\n  - {ehealth_id: A, name: A, email: a@x.test, color: blue}\n",
            r"providers\[0\]\.color: Extra inputs",
        ),
        ("nothing: here\n", "a list of providers is required"),
    ],
)
def test_invalid_directory_fails_at_start_naming_the_problem(
    pki: SmimePki, tmp_path: Path, text: str, problem: str
) -> None:
    file = tmp_path / "providers.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        directory(pki, file)


def test_one_directory_per_engine(pki: SmimePki) -> None:
    services: dict[str, object] = {}
    first = directory_from(BuildContext(pki.root, "a", services))
    assert directory_from(BuildContext(pki.root, "b", services)) is first
    assert first.get("GP0001") is not None  # config/directory.yaml of the project root
