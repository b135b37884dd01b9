"""Secure mail end to end over real SMTP servers on 127.0.0.1, checked by OpenSSL.

Outbound: the `secure_mail` destination -> an aiosmtpd server (STARTTLS + AUTH) -> the saved mail
is opened with `openssl cms -decrypt` and `openssl cms -verify`, an independent implementation.
Inbound: mail made with `openssl cms -sign` then `openssl cms -encrypt`, sent with smtplib
(STARTTLS) into the engine's `smtp` source, is stored and delivered; tampered, unsigned,
unknown-sender, expired-certificate and wrong-recipient mail is refused 5xx with the reason and
stored as rejected.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.connectors.smtp.destination import Config, SecureMailDestination
from engine.connectors.smtp.mail import attachments, document_entity
from engine.contracts import BuildContext
from engine.dsp.registry import Query
from engine.dsp.service import Dsp
from engine.errors import PermanentError, RetryableError
from engine.message import CDA, Message, SourceMeta
from tests.component.destination_harness_secure_mail import destination_config
from tests.component.source_harness_smtp import smtp_send
from tests.support.engine_process import free_port, write_project
from tests.support.engine_thread import EngineThread
from tests.support.smime_pki import PLATFORM_DOMAIN, Person, SmimePki, make_smime_pki
from tests.support.smtp_server import SmtpServer

LETTER = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3">'
    b'<id root="2.999.7" extension="letter-1"/><informationRecipient><intendedRecipient>'
    b'<id root="2.999.100" extension="{recipient}"/></intendedRecipient></informationRecipient>'
    b"</ClinicalDocument>\n"
)


def letter(recipient: str) -> bytes:
    return LETTER.replace(b"{recipient}", recipient.encode())


def openssl(*args: str | Path, data: bytes = b"") -> bytes:
    done = subprocess.run(
        ["openssl", *map(str, args)], input=data, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmimePki]:
    yield make_smime_pki(tmp_path_factory.mktemp("secure-mail"))


# -- outbound ------------------------------------------------------------------------------------


@pytest.fixture
def server(pki: SmimePki) -> Iterator[SmtpServer]:
    running = SmtpServer(pki.tls)
    yield running
    running.stop()


def destination(pki: SmimePki, port: int, recipient: str = "", **extra: object) -> SecureMailDestination:
    options = {**destination_config(pki, port, recipient), "timeout": 10, **extra}
    return SecureMailDestination(Config.model_validate(options), BuildContext(pki.root, "letters"))


def discharge_letter(recipient: str, message_id: int = 1) -> Message:
    return Message(
        "letters", letter(recipient), CDA, SourceMeta("test"), id=message_id, control_id="letter-1"
    )


def opened_by_openssl(pki: SmimePki, person: Person, mail: bytes) -> bytes:
    decrypted = openssl("cms", "-decrypt", "-recip", person.cert, "-inkey", person.key, data=mail)
    return openssl("cms", "-verify", "-CAfile", pki.ca, "-purpose", "smimesign", data=decrypted)


@pytest.mark.parametrize("person", ["gp", "cardiologist"])  # PKCS#1 v1.5 and RSA-OAEP key transport
async def test_letter_is_relayed_signed_and_encrypted_and_openssl_opens_it(
    pki: SmimePki, server: SmtpServer, person: str
) -> None:
    recipient: Person = getattr(pki, person)
    dest = destination(pki, server.port)  # recipient from the CDA's intendedRecipient
    reply = await dest.send(discharge_letter(recipient.ehealth_id))
    assert reply is not None and reply.startswith(b"250")
    [(sender, recipients, mail)] = server.mails
    assert (sender, recipients) == (pki.platform.email, [recipient.email])
    assert b"ClinicalDocument" not in mail and b"Subject: Secure medical document" in mail
    [attachment] = attachments(opened_by_openssl(pki, recipient, mail))
    assert attachment.data == letter(recipient.ehealth_id) and attachment.content_type == CDA


async def test_retried_letter_keeps_its_message_id(pki: SmimePki, server: SmtpServer) -> None:
    dest = destination(pki, server.port, pki.gp.ehealth_id)
    await dest.send(discharge_letter(pki.gp.ehealth_id, 9))
    await dest.send(discharge_letter(pki.gp.ehealth_id, 9))
    ids = {
        line for _, _, mail in server.mails for line in mail.split(b"\r\n") if line.startswith(b"Message-ID")
    }
    assert ids == {b"Message-ID: <passerelle.letters.9@secure.passerelle.test>"}


@pytest.mark.parametrize(
    ("recipient", "reason"),
    [
        ("GP0003", "cannot encrypt for GP0003: the certificate expired on"),
        ("GP0004", "not issued by a CA the provider directory trusts"),
        ("GP0006", "no certificate registered"),
        ("GP9999", "recipient eHealth ID GP9999 is not in the provider directory"),
    ],
)
async def test_unusable_recipient_is_permanent_before_anything_is_sent(
    pki: SmimePki, server: SmtpServer, recipient: str, reason: str
) -> None:
    with pytest.raises(PermanentError, match=reason):
        await destination(pki, server.port).send(discharge_letter(recipient))
    assert server.mails == []


@pytest.mark.parametrize(
    ("answer", "error"), [("451 4.3.0 mailbox busy", RetryableError), ("554 5.7.1 policy", PermanentError)]
)
async def test_server_answers_map_to_retry_or_permanent_with_its_reason(
    pki: SmimePki, answer: str, error: type[Exception]
) -> None:
    server = SmtpServer(pki.tls, answer)
    try:
        with pytest.raises(error, match=answer):
            await destination(pki, server.port, pki.gp.ehealth_id).send(discharge_letter(pki.gp.ehealth_id))
    finally:
        server.stop()


async def test_wrong_credentials_are_retryable(pki: SmimePki, server: SmtpServer) -> None:
    dest = destination(pki, server.port, pki.gp.ehealth_id, password="wrong")
    with pytest.raises(RetryableError, match=r"refused our login .*535"):
        await dest.send(discharge_letter(pki.gp.ehealth_id))


async def test_untrusted_server_certificate_is_retryable(pki: SmimePki, server: SmtpServer) -> None:
    dest = destination(pki, server.port, pki.gp.ehealth_id, tls={"ca": str(pki.ca)})  # not the TLS CA
    with pytest.raises(RetryableError, match="TLS failed"):
        await dest.send(discharge_letter(pki.gp.ehealth_id))
    assert server.mails == []


async def test_directory_change_is_picked_up_without_restart(pki: SmimePki, server: SmtpServer) -> None:
    dest = destination(pki, server.port, "GP0005")
    with pytest.raises(PermanentError, match="not in the provider directory"):
        await dest.send(discharge_letter("GP0005"))
    original = pki.providers.read_text()
    try:
        entry = f"  - {{ehealth_id: GP0005, name: Dr New, email: {pki.intruder.email}, "
        entry += "certificate: smime/intruder.pem}\n"
        pki.providers.write_text(original + entry)
        os.utime(pki.providers, ns=(time.time_ns(), time.time_ns() + 10**9))  # a visibly new mtime
        await dest.send(discharge_letter("GP0005"))
        assert [to for _, to, _ in server.mails] == [[pki.intruder.email]]
    finally:
        pki.providers.write_text(original)


# -- inbound -------------------------------------------------------------------------------------

INBOUND = """
respond_after: processed
source:
  type: smtp
  port: {port}
  domains: [{domain}]
  tls: {{cert: {tls_cert}, key: {tls_key}}}
  identity: {{cert: {cert}, key: {key}}}
destinations:
  - {{name: dsp, type: file, directory: {out}}}
"""


def start_inbound(pki: SmimePki, tmp_path: Path, channel: str) -> tuple[EngineThread, int]:
    port = free_port()
    channel = channel.format(
        port=port,
        domain=PLATFORM_DOMAIN,
        tls_cert=pki.tls.server_cert,
        tls_key=pki.tls.server_key,
        cert=pki.platform.cert,
        key=pki.platform.key,
        out=tmp_path / "out",
    )
    config = write_project(tmp_path, {"secure-mail-in": channel})
    (tmp_path / "config" / "directory.yaml").write_text(
        f"file: {pki.providers}\nca: {pki.ca}\n"  # the test PKI's directory, certificates under its root
    )
    os.symlink(pki.root / "smime", tmp_path / "smime")
    return EngineThread(config).start(), port


@pytest.fixture
def engine(pki: SmimePki, tmp_path: Path) -> Iterator[tuple[EngineThread, int]]:
    running, port = start_inbound(pki, tmp_path, INBOUND)
    yield running, port
    running.stop()


def signed_by(person: Person, entity: bytes, *extra: str) -> bytes:
    return openssl("cms", "-sign", "-signer", person.cert, "-inkey", person.key, *extra, data=entity)


def encrypted_for(
    person: Person, sender: Person, signed: bytes, message_id: str = "<m1@practice.test>"
) -> bytes:
    mail = openssl(
        "cms",
        "-encrypt",
        "-aes256",
        "-from",
        sender.email,
        "-to",
        "inbox@" + PLATFORM_DOMAIN,
        "-subject",
        "Letter",
        person.cert,
        data=signed,
    )
    return f"Message-ID: {message_id}\n".encode() + mail


def send(port: int, pki: SmimePki, sender: Person, mail: bytes) -> tuple[int, str]:
    try:
        smtp_send(port, pki.tls.ca, sender.email, mail)
    except smtplib.SMTPResponseException as err:
        return err.smtp_code, err.smtp_error.decode() if isinstance(err.smtp_error, bytes) else err.smtp_error
    return 250, ""


def statuses(engine: EngineThread) -> dict[str, int]:
    stats = engine.call(engine.engine.store.stats())
    return dict(stats["channels"].get("secure-mail-in", {}).get("messages", {}))


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_openssl_signed_and_encrypted_letter_is_stored_and_delivered(
    engine: tuple[EngineThread, int], pki: SmimePki, tmp_path: Path
) -> None:
    running, port = engine
    entity = document_entity(letter("GP0001"), CDA, "letter.xml", "Letter attached.")
    mail = encrypted_for(pki.platform, pki.gp, signed_by(pki.gp, entity))
    assert send(port, pki, pki.gp, mail) == (250, "")
    wait_until(lambda: list((tmp_path / "out").glob("*.xml")), "the delivered document")
    [delivered] = list((tmp_path / "out").glob("*.xml"))
    assert delivered.read_bytes() == letter("GP0001")
    stored = running.call(running.engine.store.message(1))
    assert stored is not None and (stored.sender, stored.control_id) == ("GP0001", "<m1@practice.test>#1")
    assert stored.content_type == CDA and "GP0001" in stored.tls_subject and stored.raw == letter("GP0001")
    assert send(port, pki, pki.gp, mail) == (250, "")  # a resend is recognised, stored once
    assert sum(statuses(running).values()) == 1


def refusals(pki: SmimePki) -> dict[str, tuple[Person, bytes, str]]:
    entity = document_entity(letter("GP0001"), CDA, "letter.xml", "Letter attached.")
    signed = signed_by(pki.gp, entity)
    tampered = signed.replace(b"Letter attached.", b"Letter attached!", 1)
    unsigned = openssl("cms", "-encrypt", "-aes256", "-from", pki.gp.email, pki.platform.cert, data=entity)
    return {
        "tampered": (pki.gp, encrypted_for(pki.platform, pki.gp, tampered), "changed after it was signed"),
        "unsigned": (pki.gp, unsigned, "the message is not signed"),
        "unknown sender": (
            pki.intruder,
            encrypted_for(pki.platform, pki.intruder, signed_by(pki.intruder, entity)),
            "the signer is not a professional in the provider directory",
        ),
        "expired": (
            pki.expired,
            encrypted_for(pki.platform, pki.expired, signed_by(pki.expired, entity)),
            "the signer's certificate expired on",
        ),
        "wrong recipient": (
            pki.gp,
            encrypted_for(pki.cardiologist, pki.gp, signed),
            "not encrypted for this platform's certificate",
        ),
        "not encrypted": (pki.gp, b"From: gp@practice.test\n" + signed, "not S/MIME encrypted"),
        "forged From": (
            pki.cardiologist,
            encrypted_for(pki.platform, pki.cardiologist, signed),
            "the From address is not the address of the signer",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["tampered", "unsigned", "unknown sender", "expired", "wrong recipient", "not encrypted", "forged From"],
)
def test_bad_mail_is_refused_with_the_reason_and_stored_rejected(
    engine: tuple[EngineThread, int], pki: SmimePki, tmp_path: Path, case: str
) -> None:
    running, port = engine
    sender, mail, reason = refusals(pki)[case]
    code, text = send(port, pki, sender, mail)
    assert code == 554 and text.startswith("5.7.1") and reason in text
    assert statuses(running) == {"rejected": 1}
    stored = running.call(running.engine.store.message(1))
    assert (
        stored is not None
        and stored.raw.replace(b"\r\n", b"\n").strip() == mail.replace(b"\r\n", b"\n").strip()
    )
    assert not (tmp_path / "out").exists()


def test_mail_to_another_domain_is_not_relayed(engine: tuple[EngineThread, int], pki: SmimePki) -> None:
    _, port = engine
    with pytest.raises(smtplib.SMTPRecipientsRefused, match="relaying denied"):
        smtp_send(port, pki.tls.ca, pki.gp.email, b"Subject: x\r\n\r\nx\r\n", to="someone@elsewhere.test")


def test_clear_text_mail_is_refused_before_starttls(engine: tuple[EngineThread, int]) -> None:
    _, port = engine
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, text = client.mail("gp@practice.test")
    assert code == 530 and b"STARTTLS" in text


# -- inbound into the DSP (the example channel's route: dsp_check, then dsp_store) ---------------

REPO = Path(__file__).resolve().parents[2]
DEMO_PATIENT = "1980010112302"  # DEMO-1 of config/dsp-demo-register.csv
INTO_DSP = INBOUND.replace(
    "destinations:\n  - {{name: dsp, type: file, directory: {out}}}",
    "steps:\n  - {{type: dsp_check, national_authority: RNPP}}\n"
    "destinations:\n  - {{name: dsp, type: dsp_store, queue: {{max_attempts: 3}}}}",
)


def test_mailed_lab_report_lands_in_the_dsp(pki: SmimePki, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    seed = REPO / "config" / "dsp-demo-register.csv"
    (tmp_path / "config" / "dsp.yaml").write_text(f"mpi_seed_register: {seed}\n", encoding="utf-8")
    report = (
        (REPO / "tests/data/validation/lab-report.xml")
        .read_bytes()
        .replace(b"1983010112374", DEMO_PATIENT.encode())
    )
    running, port = start_inbound(pki, tmp_path, INTO_DSP)
    try:
        entity = document_entity(report, CDA, "report.xml", "Report attached.")
        assert send(port, pki, pki.gp, encrypted_for(pki.platform, pki.gp, signed_by(pki.gp, entity))) == (
            250,
            "",
        )
        dsp = running.engine.services["dsp"]
        assert isinstance(dsp, Dsp)
        wait_until(lambda: dsp.registry.documents(Query(matricule=DEMO_PATIENT)), "the document in the DSP")
    finally:
        running.stop()
