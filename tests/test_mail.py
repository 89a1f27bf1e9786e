"""Mail to a real relay: STARTTLS or implicit TLS with a verified certificate, AUTH, refusals.

Every relay here is a real aiosmtpd server on loopback, with a certificate signed by a private
CA this module makes; a TCP hop in front of it keeps every byte the client sends, to prove that
nothing but the greeting and STARTTLS ever travels in clear.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from tests.support.processes import free_port
from tests.support.relay import PASSWORD, USERNAME, RelayHandler, relay, silent_server
from twofa.config import Settings
from twofa.crypto import CODE_ALPHABET, CODE_LENGTH, Keyring
from twofa.devstack import read_mails, start_smtp_sink
from twofa.mail import (
    MailRefused,
    activation_mail,
    browser_enrolled,
    deliver,
    message_id,
    two_factor_disabled,
    two_factor_locked,
)

pytestmark = [
    pytest.mark.single_backend,
    # aiosmtpd counts only STARTTLS as TLS; the SMTPS relay here is TLS from the first byte
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

CODE = "7K3M9QXD"
SENDER = "Cockpit 2FA <no-reply@cockpit.localhost>"
RECIPIENT = "ann@example.com"
WHEN = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
#: the AUTH PLAIN and AUTH LOGIN forms of the credentials, as they would appear in clear
CREDENTIAL_FORMS = [
    PASSWORD.encode(),
    base64.b64encode(f"\0{USERNAME}\0{PASSWORD}".encode()),
    base64.b64encode(PASSWORD.encode()),
]


# -- a private CA and the relay's certificates


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    localhost: ssl.SSLContext  # 127.0.0.1 and localhost, signed by the CA
    other_name: ssl.SSLContext  # mail.example.net only, signed by the same CA


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _server_context(
    directory: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[x509.GeneralName],
) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("test relay"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Cockpit 2FA test relay CA"))
        .issuer_name(_name("Cockpit 2FA test relay CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / "localhost").mkdir()
    (directory / "other").mkdir()
    local_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    return Pki(
        ca_file=ca_file,
        localhost=_server_context(directory / "localhost", ca_key, ca_cert, local_names),
        other_name=_server_context(
            directory / "other", ca_key, ca_cert, [x509.DNSName("mail.example.net")]
        ),
    )


# -- the relay, and a wiretap in front of it


def starttls_relay(handler: RelayHandler, context: ssl.SSLContext) -> Any:
    """Like a submission port (587): no command but EHLO and STARTTLS before TLS, then AUTH."""
    return relay(handler, tls_context=context, require_starttls=True, auth_required=True)


def smtps_relay(handler: RelayHandler, context: ssl.SSLContext) -> Any:
    """Like SMTPS (465): TLS from the first byte, then AUTH (the connection is TLS already)."""
    return relay(handler, ssl_context=context, auth_required=True, auth_require_tls=False)


class Wiretap:
    """A TCP hop between the client and the relay that keeps every byte the client sends."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent = bytearray()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bool
        ) -> None:
            try:
                while data := await source.read(65536):
                    if record:
                        self.sent += data
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(
            pipe(reader, up_writer, True), pipe(up_reader, writer, False), return_exceptions=True
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()

    def assert_nothing_secret(self) -> None:
        for secret in [*CREDENTIAL_FORMS, CODE.encode(), b"Activation code"]:
            assert secret not in self.sent


def settings_for(port: int, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_timeout_seconds=overrides.pop("smtp_timeout_seconds", 5),
        **overrides,
    )


def relay_login(pki: Pki, security: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "smtp_security": security,
        "smtp_username": USERNAME,
        "smtp_password": password,
        "smtp_ca_file": pki.ca_file,
    }


def a_mail(number: int = 1) -> EmailMessage:
    return activation_mail(
        sender=SENDER,
        to=RECIPIENT,
        code=CODE,
        expires_at=WHEN,
        message_id=message_id("activation", "0b7f9d1e-enrollment", number),
    )


async def refused(message: EmailMessage, settings: Settings) -> MailRefused:
    with pytest.raises(MailRefused) as caught:
        await deliver(message, settings)
    error = caught.value
    text = f"{error} {error!r} {error.args}"
    for secret in [PASSWORD, CODE, base64.b64encode(f"\0{USERNAME}\0{PASSWORD}".encode()).decode()]:
        assert secret not in text
    assert error.__cause__ is None and error.__suppress_context__
    return error


# -- (a), (b): the mail arrives over TLS, after AUTH, and nothing readable crosses the wire


async def test_starttls_relay_with_auth_and_a_private_ca(tmp_path: Path, pki: Pki) -> None:
    handler = RelayHandler()
    with starttls_relay(handler, pki.localhost) as port:
        tap = Wiretap(port)
        async with tap.running() as tapped:
            await deliver(a_mail(), settings_for(tapped, tmp_path, **relay_login(pki, "starttls")))
    assert handler.logins == [(USERNAME.encode(), True)]
    [(mail, over_tls, authenticated)] = handler.accepted
    assert over_tls and authenticated
    assert f"Activation code: {CODE}" in mail.get_content()
    assert mail["Message-ID"] == "<activation-0b7f9d1e-enrollment.1@cockpit-2fa>"
    # in clear: EHLO and STARTTLS, nothing else; then only ciphertext
    cleartext_end = tap.sent.index(b"STARTTLS\r\n") + len(b"STARTTLS\r\n")
    assert re.fullmatch(rb"EHLO [^\r\n]+\r\nSTARTTLS\r\n", bytes(tap.sent[:cleartext_end]))
    tap.assert_nothing_secret()


async def test_implicit_tls_relay_with_auth(tmp_path: Path, pki: Pki) -> None:
    handler = RelayHandler()
    with smtps_relay(handler, pki.localhost) as port:
        tap = Wiretap(port)
        async with tap.running() as tapped:
            await deliver(a_mail(), settings_for(tapped, tmp_path, **relay_login(pki, "tls")))
    assert handler.logins == [(USERNAME.encode(), True)]
    [(mail, over_tls, authenticated)] = handler.accepted
    assert over_tls and authenticated
    assert f"Activation code: {CODE}" in mail.get_content()
    assert b"EHLO" not in tap.sent  # TLS from the first byte
    tap.assert_nothing_secret()


# -- (c), (d): a certificate that does not verify, or a wrong password, is a permanent refusal


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_untrusted_certificate_is_permanent_and_nothing_goes_in_clear(
    tmp_path: Path, pki: Pki, security: str
) -> None:
    """Without the CA file the system store is used, and it does not know the private CA."""
    handler = RelayHandler()
    make = starttls_relay if security == "starttls" else smtps_relay
    login = relay_login(pki, security) | {"smtp_ca_file": None}
    with make(handler, pki.localhost) as port:
        tap = Wiretap(port)
        async with tap.running() as tapped:
            error = await refused(a_mail(), settings_for(tapped, tmp_path, **login))
    assert error.permanent and error.code is None
    assert "certificate" in str(error)
    assert handler.logins == [] and handler.mail_commands == 0 and handler.accepted == []
    assert b"MAIL FROM" not in tap.sent and b"AUTH" not in tap.sent
    tap.assert_nothing_secret()


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_certificate_for_another_name_is_permanent(
    tmp_path: Path, pki: Pki, security: str
) -> None:
    """Signed by the trusted CA but for mail.example.net: the relay's name is checked too."""
    handler = RelayHandler()
    make = starttls_relay if security == "starttls" else smtps_relay
    with make(handler, pki.other_name) as port:
        error = await refused(a_mail(), settings_for(port, tmp_path, **relay_login(pki, security)))
    assert error.permanent
    assert handler.logins == [] and handler.accepted == []


async def test_wrong_password_is_permanent(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handler = RelayHandler()
    wrong = "wrong-password-Kx7-never-logged"
    with starttls_relay(handler, pki.localhost) as port:
        settings = settings_for(port, tmp_path, **relay_login(pki, "starttls", password=wrong))
        error = await refused(a_mail(), settings)
    assert error.permanent and error.code == 535
    assert str(error) == "the relay answered 535 5.7.8 to AUTH"
    assert handler.logins and not any(ok for _, ok in handler.logins)
    assert handler.accepted == []
    ours = [r for r in caplog.records if not r.name.startswith("mail.")]  # not the test relay
    assert any("535" in r.getMessage() for r in ours)
    for record in ours:
        assert wrong not in record.getMessage() and CODE not in record.getMessage()


async def test_relay_without_starttls_is_permanent_and_never_gets_the_mail(
    tmp_path: Path, pki: Pki
) -> None:
    """No STARTTLS offered (as when a man in the middle strips it), AUTH offered in clear:
    neither the login nor the mail is sent."""
    handler = RelayHandler()
    with relay(handler, auth_require_tls=False) as port:
        tap = Wiretap(port)
        async with tap.running() as tapped:
            settings = settings_for(tapped, tmp_path, **relay_login(pki, "starttls"))
            error = await refused(a_mail(), settings)
    assert error.permanent
    assert handler.mail_commands == 0 and handler.accepted == []
    assert b"AUTH" not in tap.sent and b"MAIL FROM" not in tap.sent
    tap.assert_nothing_secret()


async def test_relay_without_auth_is_permanent(tmp_path: Path, pki: Pki) -> None:
    """A TLS relay that offers no AUTH does not match the settings: retrying will not help."""
    handler = RelayHandler()
    with relay(handler, ssl_context=pki.localhost) as port:
        error = await refused(a_mail(), settings_for(port, tmp_path, **relay_login(pki, "tls")))
    assert error.permanent and error.code is None
    assert handler.mail_commands == 0 and handler.accepted == []


# -- (e), (f): 4xx and a relay that is down are transient, 5xx permanent


@pytest.mark.parametrize(
    ("stage", "reply", "permanent"),
    [
        ("RCPT", "450 4.2.1 Mailbox busy, try later", False),
        ("RCPT", "421 4.3.2 Service shutting down", False),
        ("DATA", "451 4.3.0 Local error in processing", False),
        ("DATA", "421 4.7.0 Try again later, closing connection", False),
        ("RCPT", "550 5.1.1 <ann@example.com>: Recipient address rejected", True),
        ("DATA", "554 5.7.1 Message rejected", True),
    ],
)
async def test_refusals_by_reply_code(
    tmp_path: Path, pki: Pki, stage: str, reply: str, permanent: bool
) -> None:
    handler = RelayHandler(refuse={stage: reply})
    with starttls_relay(handler, pki.localhost) as port:
        error = await refused(
            a_mail(), settings_for(port, tmp_path, **relay_login(pki, "starttls"))
        )
    code = int(reply[:3])
    assert (error.permanent, error.code) == (permanent, code)
    expected_stage = "RCPT TO" if stage == "RCPT" else "DATA"
    assert str(error) == f"the relay answered {code} {reply.split()[1]} to {expected_stage}"
    assert RECIPIENT not in str(error)  # the relay's own words stay out
    assert handler.accepted == []


async def test_connection_refused_is_transient(tmp_path: Path) -> None:
    error = await refused(a_mail(), settings_for(free_port(), tmp_path))
    assert not error.permanent and error.code is None


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
async def test_relay_that_never_answers_is_transient(
    tmp_path: Path, pki: Pki, security: str
) -> None:
    login = relay_login(pki, security) if security != "none" else {}
    async with silent_server(close_at_once=False) as silent:
        port = silent.port
        settings = settings_for(port, tmp_path, smtp_timeout_seconds=0.5, **login)
        error = await refused(a_mail(), settings)
    assert not error.permanent
    assert "in time" in str(error)


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_relay_hanging_up_is_transient(tmp_path: Path, pki: Pki, security: str) -> None:
    """A TLS handshake, or a greeting, cut short by a relay going down."""
    async with silent_server(close_at_once=True) as silent:
        port = silent.port
        error = await refused(a_mail(), settings_for(port, tmp_path, **relay_login(pki, security)))
    assert not error.permanent


# -- (g): the embedded sink, in clear and without a login


async def test_security_none_delivers_to_the_embedded_sink(tmp_path: Path) -> None:
    port = free_port()
    sink = start_smtp_sink(tmp_path / "mail", "127.0.0.1", port)
    try:
        await deliver(a_mail(), settings_for(port, tmp_path))
    finally:
        sink.stop()
    [mail] = read_mails(tmp_path / "mail")
    assert f"Activation code: {CODE}" in mail.get_content()
    assert mail["Message-ID"] == "<activation-0b7f9d1e-enrollment.1@cockpit-2fa>"


# -- settings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"smtp_username": USERNAME, "smtp_password": PASSWORD},
            "TWOFA_SMTP_USERNAME needs TWOFA_SMTP_SECURITY=starttls or tls",
        ),
        (
            {"smtp_security": "starttls", "smtp_username": USERNAME},
            "TWOFA_SMTP_PASSWORD is not",
        ),
        (
            {"smtp_security": "tls", "smtp_password": PASSWORD},
            "TWOFA_SMTP_USERNAME is not",
        ),
        ({"smtp_security": "ssl"}, "'none', 'starttls' or 'tls'"),
        ({"smtp_timeout_seconds": 0}, "greater than 0"),
    ],
)
def test_settings_refuse_credentials_in_clear_and_half_logins(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(data_dir=tmp_path, **values)
    assert message in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_settings_refuse_a_ca_file_without_tls_or_missing(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValidationError, match="TWOFA_SMTP_CA_FILE needs"):
        Settings(data_dir=tmp_path, smtp_ca_file=pki.ca_file)
    with pytest.raises(ValidationError, match="smtp_ca_file"):
        Settings(data_dir=tmp_path, smtp_security="tls", smtp_ca_file=tmp_path / "missing.pem")


def test_settings_read_the_relay_from_the_environment_and_hide_the_password(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "TWOFA_SMTP_SECURITY": "starttls",
        "TWOFA_SMTP_USERNAME": USERNAME,
        "TWOFA_SMTP_PASSWORD": PASSWORD,
        "TWOFA_SMTP_CA_FILE": str(pki.ca_file),
        "TWOFA_SMTP_TIMEOUT_SECONDS": "7.5",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(data_dir=tmp_path)
    assert settings.smtp_security == "starttls" and settings.smtp_timeout_seconds == 7.5
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.model_dump())
    for name in [n for n in os.environ if n.startswith("TWOFA_SMTP_")]:
        monkeypatch.delenv(name)
    plain = Settings(data_dir=tmp_path)
    assert (plain.smtp_security, plain.smtp_timeout_seconds) == ("none", 10)
    assert plain.smtp_username is plain.smtp_password is plain.smtp_ca_file is None


# -- S10: the notification mails


def test_notifications_name_what_happened_and_when_without_any_secret() -> None:
    keyring = Keyring(b"test-pepper")
    code = keyring.activation_code("0b7f9d1e-enrollment", 1)
    device = "d41d8cd98f00b204"
    enrolled = browser_enrolled(
        sender=SENDER, to=RECIPIENT, device_name="Work laptop", when=WHEN, key=device
    )
    by_user = two_factor_disabled(sender=SENDER, to=RECIPIENT, by_admin=False, when=WHEN, key="d1")
    by_admin = two_factor_disabled(sender=SENDER, to=RECIPIENT, by_admin=True, when=WHEN, key="d2")
    until = WHEN + timedelta(minutes=15)
    locked = two_factor_locked(sender=SENDER, to=RECIPIENT, locked_until=until, when=WHEN, key="l1")
    held = two_factor_locked(sender=SENDER, to=RECIPIENT, locked_until=None, when=WHEN, key="l2")
    mails = [enrolled, by_user, by_admin, locked, held]

    assert '"Work laptop"' in enrolled.get_content()
    assert "by an administrator" in by_admin.get_content()
    assert "from your account" in by_user.get_content()
    assert "until 2031-05-06 07:23:09 UTC" in locked.get_content()
    assert "log in again" in locked.get_content()
    assert "until an administrator unlocks it" in held.get_content()
    assert "Contact your administrator to unlock it" in held.get_content()
    for mail in mails:
        body = mail.get_content()
        assert mail.get_content_type() == "text/plain" and not mail.is_multipart()
        assert mail["To"] == RECIPIENT and mail["From"] == SENDER
        assert "2031-05-06 07:08:09 UTC" in body
        assert code not in body and "Activation code" not in body
        # nothing shaped like a code, a token or a digest
        assert not re.search(rf"\b[{CODE_ALPHABET}]{{{CODE_LENGTH}}}\b", body)
        assert not re.search(r"[A-Za-z0-9_-]{20,}", body)
    ids = [mail["Message-ID"] for mail in mails]
    assert len(set(ids)) == len(ids)
    assert enrolled["Message-ID"] == f"<browser-enrolled-{device}@cockpit-2fa>"


def test_a_notification_keeps_its_message_id_when_composed_again() -> None:
    """A retried activity recomposes the mail: the relay and the user see the same Message-ID."""
    first = browser_enrolled(sender=SENDER, to=RECIPIENT, device_name=None, when=WHEN, key="x.1")
    again = browser_enrolled(sender=SENDER, to=RECIPIENT, device_name=None, when=WHEN, key="x.1")
    assert first["Message-ID"] == again["Message-ID"] == "<browser-enrolled-x.1@cockpit-2fa>"
    assert "without a name" in first.get_content()
    disabled = two_factor_disabled(sender=SENDER, to=RECIPIENT, by_admin=True, when=WHEN, key="x.1")
    assert disabled["Message-ID"] != first["Message-ID"]
    with pytest.raises(ValueError):
        message_id("browser-enrolled", "bad>id\r\nBcc: x@example.com")


async def test_a_notification_goes_through_the_starttls_relay(tmp_path: Path, pki: Pki) -> None:
    handler = RelayHandler()
    when = datetime.now(UTC)
    mail = two_factor_locked(sender=SENDER, to=RECIPIENT, locked_until=None, when=when, key="n1")
    with starttls_relay(handler, pki.localhost) as port:
        await deliver(mail, settings_for(port, tmp_path, **relay_login(pki, "starttls")))
    [(received, over_tls, authenticated)] = handler.accepted
    assert over_tls and authenticated
    assert received["Message-ID"] == "<two-factor-locked-n1@cockpit-2fa>"
    assert "until an administrator unlocks it" in received.get_content()
