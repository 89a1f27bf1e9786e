"""docs/rules.md R2 on the address as typed, at enable and at activation; one account per
address."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, text

from tests.conftest import BACKEND
from tests.support.journey import Api, User, account_row, new_user
from twofa.store.account_queries import email_matches
from twofa.store.db import Database
from twofa.store.models import Account

#: Each lowercases into allowed characters or renames itself: U+212A KELVIN SIGN into "k",
#: U+0130 LATIN CAPITAL LETTER I WITH DOT ABOVE into "i" and U+0307 COMBINING DOT ABOVE.
FOREIGN = {"kelvin_sign": "\u212a", "dotted_capital_i": "\u0130"}


def _address(character: str) -> str:
    return f"{character}ate.{uuid.uuid4().hex[:12]}@example.com"


def _refused_naming(r: object, character: str) -> None:
    body = r.json()  # type: ignore[attr-defined]
    assert r.status_code == 422, r.text  # type: ignore[attr-defined]
    assert body["error"] == "unsupported_email", body
    assert body["character"] == character, body
    assert f"U+{ord(character):04X}" in body["message"], body


@pytest.mark.parametrize("character", FOREIGN.values(), ids=FOREIGN.keys())
async def test_enable_judges_the_address_as_typed(
    api: Api, database: Database, character: str
) -> None:
    user = User(email=_address(character))
    await api.register(user)
    assert (await account_row(database, user.account_id)).email == user.email  # as typed
    await api.login_ok(user)
    r = await api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
    _refused_naming(r, character)
    r = await api.call("GET", "/v1/account/two-factor", user)
    assert r.status_code == 200 and r.json()["state"] == "disabled", r.text
    account = await account_row(database, user.account_id)
    assert (account.two_factor_state, account.email) == ("disabled", user.email)


@pytest.mark.parametrize("character", FOREIGN.values(), ids=FOREIGN.keys())
async def test_activation_judges_a_new_address_as_typed(
    api: Api, database: Database, character: str
) -> None:
    user = new_user()
    await api.enabled(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    r = await api.submit_code(login["login_id"], code)
    assert r.status_code == 200, r.text
    r = await api.activate(login["login_id"], user, email=_address(character))
    _refused_naming(r, character)
    account = await account_row(database, user.account_id)
    assert (account.two_factor_state, account.email) == ("pending_activation", user.email)
    r = await api.activate(login["login_id"], user)  # nothing was used up by the refusal
    assert r.status_code == 200, r.text


async def test_one_account_per_address_whatever_its_case(api: Api, database: Database) -> None:
    local = f"Bob.{uuid.uuid4().hex[:12]}"
    bob = await api.register(User(email=f"{local}@Example.com"))
    assert (await account_row(database, bob.account_id)).email == f"{local}@Example.com"
    r = await api.call(
        "POST", "/v1/accounts", json={"email": f"{local.lower()}@example.com", "password": "x" * 12}
    )
    assert r.status_code == 409 and r.json()["error"] == "email_taken", r.text
    for typed in (f"{local.lower()}@example.com", f"{local.upper()}@EXAMPLE.COM"):
        login = await api.login_ok(User(email=typed, password=bob.password))
        assert login["outcome"] == "authenticated", login
        r = await api.call(
            "GET", "/v1/session", headers={"X-Session-Token": login["session_token"]}
        )
        assert r.json()["account_id"] == bob.account_id, r.text


async def test_activation_refuses_another_accounts_address_in_another_case(api: Api) -> None:
    other = await api.register(User(email=f"Taken.{uuid.uuid4().hex[:12]}@Example.com"))
    user = new_user()
    await api.enabled(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    assert (await api.submit_code(login["login_id"], code)).status_code == 200
    r = await api.activate(login["login_id"], user, email=other.email.upper())
    assert r.status_code == 409 and r.json()["error"] == "email_taken", r.text


async def test_the_login_lookup_uses_the_index_on_lower_email(database: Database) -> None:
    """Case-insensitive, yet no full scan of the accounts."""
    query = select(Account.id).where(email_matches("Bob@Example.com"))
    async with database.read() as db:
        if BACKEND == "sqlite":
            compiled = query.compile(db.bind, compile_kwargs={"literal_binds": True})
            rows = await db.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
        else:  # the planner may scan a small table; what matters is that it can use the index
            await db.execute(text("SET LOCAL enable_seqscan = off"))
            compiled = query.compile(db.bind, compile_kwargs={"literal_binds": True})
            rows = await db.execute(text(f"EXPLAIN {compiled}"))
        plan = " ".join(str(value) for row in rows for value in row)
    assert "uq_accounts_email_lower" in plan, plan
    assert "SCAN accounts" not in plan and "Seq Scan" not in plan, plan
