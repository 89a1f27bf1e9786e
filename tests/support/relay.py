"""A real SMTP relay on loopback (aiosmtpd in its own thread) that records what it accepted,
over what, and who logged in, and refuses on demand."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from temporalio.client import Client

from tests.support.journey import Api
from tests.support.processes import free_port
from twofa.config import Settings
from twofa.store.db import Database
from twofa.temporal import serving

if TYPE_CHECKING:
    from tests.conftest import ApiFactory

USERNAME = "twofa-relay-user"
PASSWORD = "relay-password-Zq81-never-in-clear"


class RelayHandler:
    """The relay's side: what it accepted, over what, and who logged in; refuses on demand."""

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        self.refuse = refuse or {}
        self.logins: list[tuple[bytes, bool]] = []
        self.accepted: list[tuple[EmailMessage, bool, bool]] = []  # (mail, over TLS, AUTHed)
        self.mail_commands = 0

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USERNAME.encode(),
            PASSWORD.encode(),
        )
        self.logins.append((data.login if isinstance(data, LoginPassword) else b"", ok))
        return AuthResult(success=ok, handled=False)  # the server answers 235 or 535

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mail_commands += 1
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if "RCPT" in self.refuse:
            return self.refuse["RCPT"]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if "DATA" in self.refuse:
            return self.refuse["DATA"]
        mail = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        over_tls = server.transport is not None and bool(
            server.transport.get_extra_info("sslcontext")
        )
        self.accepted.append((mail, over_tls, bool(session.authenticated)))
        return "250 OK"


@contextmanager
def relay(handler: RelayHandler, **smtp_options: Any) -> Iterator[int]:
    """A real SMTP server on loopback, in its own thread; yields its port."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # it would log what clients send
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, authenticator=handler.authenticate, **smtp_options
    )
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@asynccontextmanager
async def api_on_relay(
    handler: RelayHandler,
    client: Client,
    base_settings: Settings,
    database: Database,
    start_api: ApiFactory,
    **api_settings: object,
) -> AsyncIterator[Api]:
    """A relay run by ``handler``, and an API and a worker on a task queue of their own whose
    mail goes through it."""
    queue = f"relay-{uuid.uuid4().hex[:8]}"
    with relay(handler) as port:
        settings = base_settings.model_copy(
            update={"temporal_task_queue": queue, "smtp_port": port}
        )
        async with serving(client, settings, database):
            yield await start_api(temporal_task_queue=queue, smtp_port=port, **api_settings)


@dataclass
class SilentServer:
    """A relay that accepts connections and says nothing: a client waits for its greeting."""

    port: int
    held: list[asyncio.StreamWriter] = field(default_factory=list)

    def hang_up(self) -> None:
        """Ends every connection held so far: each client's wait ends at once."""
        for writer in self.held:
            writer.close()
        self.held.clear()


@asynccontextmanager
async def silent_server(close_at_once: bool, port: int = 0) -> AsyncIterator[SilentServer]:
    """Accepts connections and then says nothing, or hangs up at once (a relay going down)."""
    silent = SilentServer(port)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if close_at_once:
            writer.close()
        else:
            silent.held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    silent.port = int(server.sockets[0].getsockname()[1])
    try:
        yield silent
    finally:
        silent.hang_up()
        server.close()
        await server.wait_closed()
