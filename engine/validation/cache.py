"""Disk cache of compiled validators, keyed by the content of the rule set and its includes.

Layout under the cache directory (default `var/cache/schematron/`):
- `deps-<h>.json`: for one (.sch path, phase, processor), the files the last compile read;
- `<key>.xsl` + `<key>.json`: the generated validator and its assertion table, where `key` is
  the sha256 of the compiler version, the options, and the bytes of every file listed in deps.
A cached start hashes the files (a few ms) and reads the validator: the compiler does not run.
Writes are atomic (temp file + rename), so concurrent processes never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from engine.validation.compiler import Assertion, Compiled, compile_schematron

COMPILER_VERSION = "psv-sch-1"


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def content_key(files: list[Path], options: str) -> str | None:
    """sha256 over the options and every file's bytes; None when a file is gone."""
    try:
        blobs = [f.read_bytes() for f in files]
    except OSError:
        return None
    names = [str(f).encode() for f in files]
    return _sha(COMPILER_VERSION.encode(), options.encode(), *names, *blobs)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


class CompiledCache:
    """Compile a rule set once per content, across processes and restarts."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def _options(self, sch: Path, phase: str | None, processor: str | None) -> str:
        return f"{sch.resolve()}|{phase or ''}|{processor or ''}"

    def get(self, sch: Path, phase: str | None, processor: str | None) -> tuple[Compiled, str, bool]:
        """(compiled validator, content key, True when it came from the disk cache)."""
        options = self._options(sch, phase, processor)
        cached = self._load(options)
        if cached is not None:
            return cached[0], cached[1], True
        compiled = compile_schematron(sch, phase=phase, processor=processor)
        key = content_key(compiled.files, options) or ""
        if self.directory is not None and key:
            self._store(options, key, compiled)
        return compiled, key, False

    def _deps_file(self, options: str) -> Path:
        assert self.directory is not None
        return self.directory / f"deps-{_sha(options.encode())[:32]}.json"

    def _load(self, options: str) -> tuple[Compiled, str] | None:
        if self.directory is None:
            return None
        try:
            files = [Path(p) for p in json.loads(self._deps_file(options).read_text("utf-8"))]
            key = content_key(files, options)
            if key is None:
                return None
            meta = json.loads((self.directory / f"{key}.json").read_text("utf-8"))
            xslt = (self.directory / f"{key}.xsl").read_text("utf-8")
        except (OSError, ValueError):
            return None
        return _from_meta(meta, xslt), key

    def _store(self, options: str, key: str, compiled: Compiled) -> None:
        assert self.directory is not None
        meta = {
            "assertions": [asdict(a) for a in compiled.assertions],
            "binding": compiled.binding,
            "saxon": compiled.saxon,
            "files": [str(f) for f in compiled.files],
            "vocabularies": {k: str(v) for k, v in compiled.vocabularies.items()},
        }
        _write(self.directory / f"{key}.xsl", compiled.xslt)
        _write(self.directory / f"{key}.json", json.dumps(meta))
        _write(self._deps_file(options), json.dumps(meta["files"]))


def _from_meta(meta: dict[str, object], xslt: str) -> Compiled:
    assertions = [Assertion(**a) for a in meta["assertions"]]  # type: ignore[attr-defined]
    files = [Path(str(f)) for f in meta["files"]]  # type: ignore[attr-defined]
    vocab = {str(k): Path(str(v)) for k, v in meta["vocabularies"].items()}  # type: ignore[attr-defined]
    return Compiled(xslt, assertions, str(meta["binding"]), bool(meta["saxon"]), files, vocab)
