"""The generated reference is current: regenerate with `make docs` when a component changes."""

from __future__ import annotations

from pathlib import Path

from engine.reference import reference_pages

ROOT = Path(__file__).resolve().parents[2]


def test_every_reference_page_is_current() -> None:
    folder = ROOT / "docs" / "reference"
    pages = reference_pages()
    committed = {p.name for p in folder.glob("*.md")}
    assert committed == set(pages), "run `make docs`: pages missing or obsolete"
    stale = [name for name, text in pages.items() if (folder / name).read_text(encoding="utf-8") != text]
    assert not stale, f"run `make docs`: stale pages {stale}"


def test_every_component_page_has_options_and_an_example() -> None:
    for name, text in reference_pages().items():
        if "-" in name:
            assert "## Options" in text and "## Example" in text and "```yaml" in text, name
