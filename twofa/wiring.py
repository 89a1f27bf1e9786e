"""The one place the parts are wired: settings → database → Temporal client → services.

The API, the CLI, the dashboard, the tests and the bench take the whole chain through
``async with services(settings) as s``; the worker takes only its first links,
``twofa.temporal.connected`` (so it does not import the service layer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from temporalio.client import Client

from twofa.admin import AdminService
from twofa.config import Settings
from twofa.service import TwoFactorService
from twofa.store.db import Database, migrate
from twofa.temporal import connected


@dataclass(frozen=True)
class Services:
    """The service layer: the users' operations and the operators' on top of them."""

    users: TwoFactorService
    admin: AdminService

    @classmethod
    def on(cls, settings: Settings, db: Database, client: Client) -> Services:
        """The services on a database and a client that their owner opens and closes."""
        users = TwoFactorService(settings, db, client)
        return cls(users, AdminService(users))

    @property
    def db(self) -> Database:
        return self.users.db

    @property
    def client(self) -> Client:
        return self.users.client


@asynccontextmanager
async def services(
    settings: Settings, *, migrated: bool = False, client: Client | None = None
) -> AsyncIterator[Services]:
    """The services on their own database engine; ``migrated`` brings the schema up first."""
    if migrated:
        await asyncio.to_thread(migrate, settings.resolved_database_url)
    async with connected(settings, client=client) as (db, connected_client):
        yield Services.on(settings, db, connected_client)
