"""R6 at the API: an activation with several wrong fields names each of them in one answer."""

from __future__ import annotations

from tests.support.journey import Api, account_row, new_user
from twofa.store.db import Database


async def test_activation_names_every_wrong_field_at_once(api: Api, database: Database) -> None:
    user = new_user("fields")
    await api.enabled(user)
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    r = await api.submit_code(login["login_id"], code)
    assert r.status_code == 200, r.text

    wrong = {"pin": "12", "pin_confirmation": "99", "seal": " ", "email": "erin new@example.com"}
    r = await api.activate(login["login_id"], user, **wrong)
    assert r.status_code == 422, r.text
    body = r.json()
    # the contract's shape, naming the first wrong field, and each wrong field in `fields`
    assert body["error"] == "invalid_pin_format" and body["field"] == "pin", body
    assert [f["field"] for f in body["fields"]] == ["pin", "pin_confirmation", "seal", "email"]
    assert [f["error"] for f in body["fields"]] == [
        "invalid_pin_format",
        "pin_mismatch",
        "seal_required",
        "unsupported_email",
    ]
    assert body["fields"][3]["character"] == " "
    assert all(f["message"] for f in body["fields"])
    account = await account_row(database, user.account_id)
    assert account.two_factor_state == "pending_activation" and account.pin_hash is None

    # only the confirmation wrong: one field, in both places
    r = await api.activate(login["login_id"], user, pin_confirmation="27182817")
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "pin_confirmation"
    assert [f["field"] for f in r.json()["fields"]] == ["pin_confirmation"]

    r = await api.activate(login["login_id"], user)
    assert r.status_code == 200, r.text
