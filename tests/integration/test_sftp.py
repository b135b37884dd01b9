"""SFTP source and destination end to end against a real OpenSSH sshd on 127.0.0.1.

The engine runs in-process (EngineThread) or as the real process (EngineProcess, for kill -9).
The remote party (the laboratory) writes with its own SFTP client, like a LIS would.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.connectors.sftp.remote import RemoteError, Session
from engine.connectors.sftp.source import SftpSource
from engine.message import CDA, HL7V2
from tests.support.engine_process import EngineProcess, write_project
from tests.support.engine_thread import EngineThread
from tests.support.sshd import Sshd
from tests.unit.hl7_samples import ORU_R01_25

CHANNEL = """
respond_after: processed
source: {source}
steps: {steps}
destinations:
  - {{name: out, type: file, directory: {out}}}
"""

HL7_STEPS = "[{type: validate_hl7, required_fields: [PID-3]}]"

CDA_DOC = (b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- lab report -->\n'
           b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="2.999.1" extension="doc-1"/>'
           b"</ClinicalDocument>\n")


def oru(control_id: str) -> bytes:
    return ORU_R01_25.replace(b"|LAB20250314000123|", f"|{control_id}|".encode())


def batch(*messages: bytes, trailer: bool = True) -> bytes:
    body = b"FHS|^~\\&|GLIMS|LABO-TEST\rBHS|^~\\&|GLIMS|LABO-TEST\r" + b"".join(messages)
    return body + (f"BTS|{len(messages)}\rFTS|1\r".encode() if trailer else b"")


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = Sshd(tmp_path / "sshd").start()
    (server.root / "in").mkdir()
    yield server
    server.stop()


def source_yaml(sshd: Sshd, **extra: object) -> str:
    options = sshd.source_config(**{"poll_interval": 0.2, "workers": 2, **extra})
    return json.dumps({"type": "sftp", **options})


def start_engine(tmp_path: Path, sshd: Sshd, steps: str = HL7_STEPS, **extra: object) -> EngineThread:
    channel = CHANNEL.format(source=source_yaml(sshd, **extra), out=tmp_path / "out", steps=steps)
    return EngineThread(write_project(tmp_path / "project", {"lab": channel})).start()


@pytest.fixture
def engine(tmp_path: Path, sshd: Sshd) -> Iterator[EngineThread]:
    running = start_engine(tmp_path, sshd)
    yield running
    running.stop()


def source_of(engine: EngineThread) -> SftpSource:
    source = engine.engine.channels[0].source
    assert isinstance(source, SftpSource)
    return source


def stored(engine: EngineThread) -> dict[str, int]:
    stats = engine.call(engine.engine.store.stats())
    return dict(stats["channels"].get("lab", {}).get("messages", {}))


def polls_pass(engine: EngineThread, count: int) -> None:
    target = source_of(engine).polls + count
    wait_until(lambda: source_of(engine).polls >= target, f"{count} polls")


def drop(sshd: Sshd, name: str, content: bytes) -> None:
    """Upload as a careful sender does: a hidden name first, then a rename."""
    client = sshd.client()
    try:
        with client.open(f"{sshd.root}/in/.{name}.part", "wb") as remote:
            remote.write(content)
        client.rename(f"{sshd.root}/in/.{name}.part", f"{sshd.root}/in/{name}")
    finally:
        client.close()


def test_complete_file_is_stored_then_moved_to_done(engine: EngineThread, sshd: Sshd, tmp_path: Path) -> None:
    drop(sshd, "result-1.hl7", oru("F1"))
    done = sshd.root / "in" / "done" / "result-1.hl7"
    wait_until(done.exists, "the file in done/")
    assert not (sshd.root / "in" / "result-1.hl7").exists()
    assert sum(stored(engine).values()) == 1
    wait_until(lambda: list((tmp_path / "out").glob("*.hl7")), "the delivered copy")
    assert next((tmp_path / "out").glob("*.hl7")).read_bytes() == oru("F1")


def test_half_written_file_is_not_taken_until_its_marker_exists(tmp_path: Path, sshd: Sshd) -> None:
    engine = start_engine(tmp_path, sshd, completion="marker")
    try:
        client = sshd.client()
        content = oru("HALF1")
        with client.open(f"{sshd.root}/in/result.hl7", "wb") as remote:
            remote.write(content[:300])
            remote.flush()
            polls_pass(engine, 3)
            assert stored(engine) == {} and (sshd.root / "in" / "result.hl7").exists()
            remote.write(content[300:])
        polls_pass(engine, 2)
        assert stored(engine) == {}  # complete, but no marker yet
        client.open(f"{sshd.root}/in/result.hl7.done", "wb").close()
        client.close()
        wait_until((sshd.root / "in" / "done" / "result.hl7").exists, "the file in done/")
        assert not (sshd.root / "in" / "result.hl7.done").exists()
        row = engine.call(engine.engine.store.message(1))
        assert row is not None and row.raw == content and row.control_id == "HALF1"
    finally:
        engine.stop()


def test_growing_file_is_not_taken_while_it_changes(engine: EngineThread, sshd: Sshd) -> None:
    client = sshd.client()
    content = oru("GROW1")
    with client.open(f"{sshd.root}/in/growing.hl7", "wb") as remote:
        for start in range(0, len(content), 40):
            remote.write(content[start:start + 40])
            remote.flush()
            time.sleep(0.07)  # a slow sender: the size changes between polls
            assert stored(engine) == {}
    client.close()
    wait_until((sshd.root / "in" / "done" / "growing.hl7").exists, "the file in done/")
    row = engine.call(engine.engine.store.message(1))
    assert row is not None and row.raw == content


def test_failure_between_store_and_move_does_not_duplicate(
    tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_move = Session.move
    failures: list[str] = []

    def move_once_failing(self: Session, source: str, folder: str, name: str) -> str:
        if not failures:
            failures.append(name)
            raise RemoteError("connection lost (simulated) after the commit")
        return real_move(self, source, folder, name)

    monkeypatch.setattr(Session, "move", move_once_failing)
    engine = start_engine(tmp_path, sshd, steps="[]")
    try:
        drop(sshd, "once.hl7", oru("ONCE1"))
        drop(sshd, "report.xml", CDA_DOC)
        wait_until(lambda: (sshd.root / "in" / "done" / "once.hl7").exists()
                   and (sshd.root / "in" / "done" / "report.xml").exists(), "both files in done/")
        assert failures and sum(stored(engine).values()) == 2  # re-offered as a duplicate, stored once
    finally:
        engine.stop()


def test_kill_9_between_store_and_move_never_duplicates(tmp_path: Path, sshd: Sshd) -> None:
    files = 300
    client = sshd.client()
    for i in range(files):
        with client.open(f"{sshd.root}/in/r{i:04d}.hl7", "wb") as remote:
            remote.write(oru(f"K{i:04d}"))
    client.close()
    channel = CHANNEL.format(source=source_yaml(sshd, completion="stable", workers=4), out=tmp_path / "out",
                             steps=HL7_STEPS)
    config = write_project(tmp_path / "project", {"lab": channel})
    database = tmp_path / "project" / "var" / "passerelle.db"
    first = EngineProcess(config, []).start()
    try:
        wait_until(lambda: count_messages(database) >= 60, "some files stored", 60)
    finally:
        first.kill()  # SIGKILL: some files are stored but not moved yet
    second = EngineProcess(config, []).start()
    try:
        done = sshd.root / "in" / "done"
        wait_until(lambda: len(list(done.glob("*.hl7"))) == files, "every file in done/", 120)
    finally:
        second.stop()
    assert count_messages(database) == files
    assert distinct_control_ids(database) == files
    assert not list((sshd.root / "in").glob("*.hl7"))


def count_messages(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def distinct_control_ids(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(DISTINCT control_id) FROM messages").fetchone()[0])


def test_changed_host_key_is_refused_until_pinned_again(engine: EngineThread, sshd: Sshd) -> None:
    polls_pass(engine, 1)
    sshd.change_host_key()
    drop(sshd, "after-change.hl7", oru("HK1"))
    wait_until(lambda: "does not match" in source_of(engine).last_error, "the host key refusal", 30)
    assert stored(engine) == {} and (sshd.root / "in" / "after-change.hl7").exists()
    sshd.write_known_hosts()  # the operator checks the new key and pins it
    wait_until((sshd.root / "in" / "done" / "after-change.hl7").exists, "the file in done/", 60)


def test_unknown_host_is_refused(tmp_path: Path, sshd: Sshd) -> None:
    sshd.known_hosts.write_text("")
    engine = start_engine(tmp_path, sshd)
    try:
        wait_until(lambda: "no host key" in source_of(engine).last_error, "the unknown-host refusal")
    finally:
        engine.stop()


def test_hl7_batch_is_split_into_its_messages(engine: EngineThread, sshd: Sshd) -> None:
    drop(sshd, "batch.hl7", batch(oru("B1"), oru("B2"), oru("B3")).replace(b"\r", b"\r\n"))
    wait_until((sshd.root / "in" / "done" / "batch.hl7").exists, "the batch in done/")
    rows = [engine.call(engine.engine.store.message(i)) for i in (1, 2, 3)]
    assert [r.control_id for r in rows if r] == ["B1", "B2", "B3"]
    assert all(r is not None and r.raw == oru(r.control_id) for r in rows)


def test_cda_is_stored_whole_with_its_content_type(tmp_path: Path, sshd: Sshd) -> None:
    engine = start_engine(tmp_path, sshd, steps="[]")
    try:
        drop(sshd, "report.xml", CDA_DOC)
        wait_until((sshd.root / "in" / "done" / "report.xml").exists, "the document in done/")
        row = engine.call(engine.engine.store.message(1))
        assert row is not None and row.content_type == CDA and row.raw == CDA_DOC
        assert len(row.control_id) == 32  # the content hash: a document has no control id of its own
    finally:
        engine.stop()


NO_PID3 = oru("V1").replace(b"|1||1980010112302^^^RNPP&2.999.1&ISO^NI~P000123456^^^LABO-TEST&2.999.10"
                            b"&ISO^PI||", b"|1||||")
LATIN1 = oru("U1").replace(b"TEST^PATIENT", "TÉST^PATIENT".encode("latin-1"))  # declared UTF-8

BAD_FILES = {
    "empty.hl7": (b"", "empty", "100"),
    "garbage.bin": (bytes(range(256)) * 8, "unrecognised", "102"),
    "truncated.hl7": (batch(oru("T1"), oru("T2"), trailer=False)[:-40], "truncated", "100"),
    "undecodable.hl7": (LATIN1, "rejected", "102"),
    "invalid.hl7": (NO_PID3, "rejected", "101"),
    "big.xml": (CDA_DOC.replace(b"<id ", b"<!--" + b"x" * 20_000 + b"--><id "), "too_large", "100"),
}


def test_bad_files_go_to_the_error_folder_with_a_specific_report(tmp_path: Path, sshd: Sshd) -> None:
    engine = start_engine(tmp_path, sshd, max_message_bytes=8192)
    try:
        for name, (content, _, _) in BAD_FILES.items():
            drop(sshd, name, content)
        errors = sshd.root / "in" / "error"
        wait_until(lambda: all((errors / f"{n}.err.json").exists() and (errors / n).exists()
                               for n in BAD_FILES), "every bad file in error/")
        for name, (content, kind, code) in BAD_FILES.items():
            report = json.loads((errors / f"{name}.err.json").read_text())
            assert report["error"] == kind, (name, report)
            codes = [f["code"] for f in report["findings"]] + [
                f["code"] for m in report["rejected_messages"] for f in m["findings"]]
            assert code in codes, (name, report)
            assert (errors / name).read_bytes() == content
        assert stored(engine)["rejected"] == len(BAD_FILES)
    finally:
        engine.stop()


def test_truncated_batch_report_keeps_the_complete_messages(engine: EngineThread, sshd: Sshd) -> None:
    drop(sshd, "cut.hl7", batch(oru("C1"), oru("C2"), trailer=False))
    report_file = sshd.root / "in" / "error" / "cut.hl7.err.json"
    wait_until(report_file.exists, "the report")
    report = json.loads(report_file.read_text())
    assert report["error"] == "truncated" and report["accepted_messages"] == 1
    assert "without FTS" in report["text"]


def test_sftp_destination_writes_atomically_and_creates_folders(tmp_path: Path, sshd: Sshd) -> None:
    out = sshd.root / "outbox" / "lab" / "results"
    destination = {"type": "sftp", "name": "remote", "host": "127.0.0.1", "port": sshd.port,
                   "username": sshd.user, "private_key": str(sshd.user_key),
                   "known_hosts": str(sshd.known_hosts),
                   "directory": str(out), "filename": "{control_id}.{ext}"}
    channel = (f"respond_after: received\nsource: {source_yaml(sshd)}\n"
               f"destinations:\n  - {json.dumps(destination)}\n")
    engine = EngineThread(write_project(tmp_path / "project", {"lab": channel})).start()
    try:
        drop(sshd, "a.hl7", oru("D1"))
        drop(sshd, "b.hl7", oru("D2"))
        wait_until(lambda: (out / "D1.hl7").exists() and (out / "D2.hl7").exists(), "both files delivered")
        assert (out / "D1.hl7").read_bytes() == oru("D1")
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
        wait_until(lambda: stored(engine) == {"sent": 2}, "both messages sent")
    finally:
        engine.stop()


def test_content_type_of_hl7_is_recognised(engine: EngineThread, sshd: Sshd) -> None:
    drop(sshd, "x.txt", oru("CT1"))
    wait_until((sshd.root / "in" / "done" / "x.txt").exists, "the file in done/")
    row = engine.call(engine.engine.store.message(1))
    assert row is not None and row.content_type == HL7V2
