"""The product document's whole journey, end to end through the HTTP API on real parts."""

from __future__ import annotations

from tests.support.journey import Api, new_user


async def test_whole_journey(api: Api) -> None:
    user = await api.activated(new_user())
    r = await api.call("GET", "/v1/session", user)
    assert r.status_code == 200, r.text
    assert r.json()["account_id"] == user.account_id
    status = (await api.call("GET", "/v1/account/two-factor", user)).json()
    assert status["state"] == "active"
    assert [d["id"] for d in status["devices"]] == [user.device_id]
