"""The end users' pages (issue 7): the product document's journey as server-rendered screens.

httpx tests check what a browser cannot be trusted to check by eye: cookie flags, CSRF refusals,
that no secret ever rides in a URL, labels on every field, and that everything works without
JavaScript. One real-browser test (Debian's Chromium driven by Playwright) then walks the whole
document, with the codes read from the SMTP sink and a screenshot per step.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import NotRequired, TypedDict

import httpx
import pytest
from sqlalchemy import update
from temporalio.client import Client

from tests.conftest import ApiFactory
from tests.support.browser import launch
from tests.support.journey import (
    Api,
    User,
    account_row,
    eventually,
    new_user,
    sleep_until,
)
from twofa.config import Settings
from twofa.store.db import Database
from twofa.store.models import Account
from twofa.temporal import build_worker

#: The product's own 10 seconds: the pages say it, and no test waits for it to pass.
AUTO_LOGOUT = 10
PAGE_PATHS = {
    "/",
    "/login",
    "/login/code",
    "/login/activate",
    "/login/activated",
    "/login/pin",
    "/login/not-trusted",
    "/settings",
    "/settings/enabled",
    "/settings/disable",
    "/settings/browsers",
}
#: The document's words after Yes on the disable confirmation.
DISABLED_SENTENCE = (
    "Two-factor authentication is disabled for your account, and automatically for all the "
    "browsers you had enrolled as trusted devices."
)
#: What the code page says after a login that mailed a new code, and after an expired one.
NEW_CODE_SENT = "An email with a new activation code was sent"
CODE_EXPIRED = "Log in to Cockpit again to receive another email with a new activation"
#: Where forms post (each also a page path above, or one of these).
FORM_PATHS = {
    "/logout",
    "/settings/two-factor/enable",
    "/settings/two-factor/disable",
    "/settings/browsers/delete",
}


async def pages_api(start_api: ApiFactory) -> Api:
    return await start_api(auto_logout_seconds=AUTO_LOGOUT)


# -- a browser without JavaScript


class PageAudit(HTMLParser):
    """Form fields and their labels, scripts, and hidden values of one page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.fields: list[dict[str, str | None]] = []
        self.labels: set[str] = set()
        self.scripts = 0
        self.hidden: dict[str, list[str]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("input", "select", "textarea"):
            if a.get("type") == "hidden":
                self.hidden.setdefault(a.get("name") or "", []).append(a.get("value") or "")
            elif a.get("type") not in ("submit", "button"):
                self.fields.append(a)
        elif tag == "label" and a.get("for"):
            self.labels.add(a["for"] or "")
        elif tag == "script":
            self.scripts += 1


class Visitor:
    """One browser without JavaScript: a cookie jar, forms posted with its CSRF token, and a log
    of every URL it was sent to and every page it was shown."""

    def __init__(self, base_url: str, **headers: str) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=60, headers=headers)
        self.urls: list[str] = []
        self.pages: list[tuple[str, httpx.Response]] = []

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, path: str) -> httpx.Response:
        return await self._follow(await self.http.get(path))

    async def post(self, path: str, data: dict[str, str], csrf: bool = True) -> httpx.Response:
        form = dict(data)
        if csrf:
            form["csrf_token"] = self.http.cookies.get("twofa_csrf") or ""
        return await self._follow(await self.http.post(path, data=form))

    async def _follow(self, response: httpx.Response) -> httpx.Response:
        self.urls.append(str(response.request.url))
        while response.status_code in (301, 302, 303, 307, 308):
            location = response.headers["location"]
            self.urls.append(location)
            response = await self.http.get(location)
        self.pages.append((response.request.url.path, response))
        return response

    def hidden(self, name: str, response: httpx.Response) -> list[str]:
        return PageAudit(response.text).hidden.get(name, [])


def at(response: httpx.Response, path: str, *texts: str) -> None:
    assert response.status_code < 500, response.text
    assert response.request.url.path == path, (response.request.url, response.text)
    for text in texts:
        assert text in response.text, (text, response.text)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """The Set-Cookie headers of one response, by cookie name, lower-cased for flag checks."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        found[header.split("=", 1)[0]] = header.lower()
    return found


# -- tests over HTTP


async def test_pages_journey_without_javascript(start_api: ApiFactory) -> None:
    """The whole document through plain forms: it works with no script, no URL holds a secret,
    every field has its label, and only the auto-logout notice carries a script."""
    api = await pages_api(start_api)
    base = str(api.http.base_url)
    user = await api.register(new_user("web"))
    first, second = Visitor(base), Visitor(base)
    try:
        r = await first.get("/")
        at(r, "/login", "Log in to Cockpit")
        r = await first.post("/login", {"email": user.email, "password": "wrong-password"})
        assert r.status_code == 401 and "Wrong email or password." in r.text
        r = await first.post("/login", {"email": user.email, "password": user.password})
        at(r, "/", user.email)
        r = await first.get("/settings")
        at(r, "/settings", 'role="switch" aria-checked="false"')

        r = await first.post("/settings/two-factor/enable", {})
        at(
            r,
            "/settings/enabled",
            "You are automatically logged out from Cockpit after 10 seconds",
            "Auto-logout",
            'id="countdown"',
        )
        r = await first.post("/logout", {})
        at(r, "/login", "You are logged out from Cockpit.")
        assert (await first.get("/settings")).request.url.path == "/login"

        code = await api.code_mail(user)
        r = await first.post("/login", {"email": user.email, "password": user.password})
        at(r, "/login/code", "Enter an inWebo Secure Site ID", "valid during 15 minutes")
        r = await first.post("/login/code", {"code": "00000000"})
        assert r.status_code == 400 and "Wrong activation code. 4 attempts left." in r.text
        r = await first.post("/login/code", {"code": code})
        at(r, "/login/activate", "Name this trusted device (optional)", "Antiphishing seal")

        refusals: list[tuple[dict[str, str], str, str]] = [
            ({"pin": "1111"}, "pin", "at least 2 different digits"),
            ({"pin_confirmation": "99999999"}, "pin_confirmation", "does not match"),
            ({"seal": " "}, "seal", "The antiphishing seal is required."),
            ({"email": "me+2fa@example.com"}, "email", "&#39;+&#39;"),
        ]
        for change, field, message in refusals:
            form = {
                "device_name": "Laptop",
                "pin": user.pin,
                "pin_confirmation": user.pin,
                "seal": user.seal,
                "email": "",
                **change,
            }
            if change.get("pin"):
                form["pin_confirmation"] = change["pin"]
            r = await first.post("/login/activate", form)
            at(r, "/login/activate", message, f'id="{field}-error"')
            assert r.status_code == 422
            assert re.search(rf'id="{field}"[^>]*aria-invalid="true"', r.text), r.text
            assert "Laptop" in r.text  # kept; the PIN only when both its boxes were right
            assert (user.pin in r.text) is (field not in ("pin", "pin_confirmation")), field
        form = {"device_name": "Laptop", "pin": user.pin, "pin_confirmation": user.pin}
        r = await first.post("/login/activate", {**form, "seal": user.seal, "email": ""})
        at(r, "/login/activated", "your browser is enrolled as a trusted device")
        r = await first.get("/login/pin")
        at(r, "/login/pin", user.seal, "Connect")
        r = await first.post("/login/pin", {"pin": "90817263"})
        assert r.status_code == 400 and "Wrong password. 4 attempts left." in r.text
        assert user.seal in r.text
        r = await first.post("/login/pin", {"pin": user.pin})
        at(r, "/", "You are securely connected to your Cockpit account")
        r = await first.get("/settings/browsers")
        at(r, "/settings/browsers", "Laptop", "this browser")

        r = await second.post("/login", {"email": user.email, "password": user.password}, False)
        assert r.status_code == 403  # a first visit has no CSRF cookie yet
        await second.get("/login")
        r = await second.post("/login", {"email": user.email, "password": user.password})
        at(r, "/login/not-trusted", "This browser is not a trusted device")
        r = await second.post("/login/not-trusted", {"device_name": "Tablet"})
        at(r, "/login/code", "To enroll this browser as a trusted device")
        r = await second.post("/login/code", {"code": await api.code_mail(user, count=2)})
        at(r, "/login/pin", user.seal)
        r = await second.post("/login/pin", {"pin": user.pin})
        at(r, "/", "This browser is enrolled as a trusted device.")

        r = await first.get("/settings/browsers")
        assert len(first.hidden("device_id", r)) == 2
        tablet = re.search(r'Tablet.*?name="device_id" value="([^"]+)"', r.text, re.DOTALL)
        assert tablet, r.text
        r = await first.post("/settings/browsers/delete", {"device_id": tablet.group(1)})
        at(r, "/settings/browsers/delete", "Delete the trusted browser “Tablet”?")
        at(await second.get("/"), "/")  # nothing deleted before the Yes
        form = {"device_id": tablet.group(1), "confirm": "yes"}
        r = await first.post("/settings/browsers/delete", form)
        at(r, "/settings/browsers", "The browser “Tablet” was deleted from your trusted devices.")
        assert "Tablet" not in r.text.split("</h1>", 1)[1] and "Laptop" in r.text  # the list
        r = await first.post("/settings/browsers/delete", form)  # repeated: already gone (S9)
        at(r, "/settings/browsers", "That browser is no longer among your trusted devices.")
        at(await second.get("/"), "/login", "Your session has ended.")
        r = await second.post("/login", {"email": user.email, "password": user.password})
        at(r, "/login/not-trusted")

        r = await first.get("/settings")
        at(r, "/settings", 'role="switch" aria-checked="true"')
        r = await first.get("/settings/disable")
        at(r, "/settings/disable", "Yes", "No")
        r = await first.post("/settings/two-factor/disable", {"confirm": "yes"})
        at(r, "/settings", DISABLED_SENTENCE, 'aria-checked="false"', user.email)
        at(await first.get("/"), "/", user.email)  # still signed in

        user.codes.append(code)
        for visitor in (first, second):
            assert_no_secret_in_urls(visitor, user)
            for path, page in visitor.pages:
                audit = PageAudit(page.text)
                for form_field in audit.fields:
                    assert form_field.get("id") in audit.labels, (path, form_field)
                assert audit.scripts == (1 if path == "/settings/enabled" else 0), path
                assert page.headers["cache-control"] == "no-store"
                assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    finally:
        await first.close()
        await second.close()


def assert_no_secret_in_urls(visitor: Visitor, user: User) -> None:
    """Every URL and redirect is a bare page path: no login_id, token, code, PIN or email."""
    secrets = [*user.secrets(), user.email]
    secrets += [value for _, value in visitor.http.cookies.items()]
    for url in visitor.urls:
        parsed = httpx.URL(url)
        assert parsed.path in PAGE_PATHS | FORM_PATHS, url
        assert not parsed.query and not parsed.fragment, url
        for secret in secrets:
            assert secret not in url, url


async def test_cookie_flags(start_api: ApiFactory) -> None:
    """HttpOnly and SameSite=Strict always; Secure exactly when the request came over HTTPS
    (directly, or X-Forwarded-Proto from a proxy uvicorn trusts: here loopback)."""
    api = await start_api()
    base = str(api.http.base_url)
    for https in (False, True):
        user = await api.register(new_user("cookie"))
        headers = {"X-Forwarded-Proto": "https"} if https else {}
        visitor = Visitor(base, **headers)
        try:
            r = await visitor.http.get("/login")
            csrf = set_cookies(r)["twofa_csrf"]
            token = csrf.split("=", 1)[1].split(";", 1)[0]
            r = await visitor.http.post(
                "/login",
                data={"email": user.email, "password": user.password, "csrf_token": token},
                headers={"Cookie": f"twofa_csrf={token}"},  # a Secure cookie httpx keeps back
            )
            assert r.status_code == 303 and r.headers["location"] == "/"
            session = set_cookies(r)["twofa_session"]
            for cookie in (csrf, session):
                assert "; httponly" in cookie and "; samesite=strict" in cookie, cookie
                assert ("; secure" in cookie) is https, cookie
                assert "; path=/" in cookie, cookie
        finally:
            await visitor.close()


async def test_enable_and_disable_repeated_after_an_outage(
    start_api: ApiFactory, base_settings: Settings, client: Client, database: Database
) -> None:
    """With no worker, the enable's and the disable's pages answer 503 and offer the same
    button again, which, once a worker is back, finishes the step (S9): the disable's too,
    whose session the first try kept for it (it serves nothing else meanwhile)."""
    queue = f"pages-held-{uuid.uuid4().hex[:8]}"
    api = await start_api(temporal_task_queue=queue, auto_logout_seconds=60)
    # the same queue, but its workflow calls give up after a second: for the posts that 503
    impatient = await start_api(
        temporal_task_queue=queue, workflow_call_timeout_seconds=1, auto_logout_seconds=60
    )
    worker = lambda: build_worker(  # noqa: E731
        client, base_settings.model_copy(update={"temporal_task_queue": queue}), database
    )
    async with worker():
        trusted = await api.activated(new_user("pages-disable-503"))
        login = await api.login_ok(trusted)
        r = await api.pin(login["login_id"], trusted.pin)
        assert r.status_code == 200, r.text
    plain = await api.register(new_user("pages-enable-503"))
    disabling, enabling = Visitor(str(api.http.base_url)), Visitor(str(api.http.base_url))
    held = str(impatient.http.base_url).rstrip("/")  # cookies are per host, not per port
    try:
        disabling.http.cookies.set("twofa_session", r.json()["session_token"])
        at(await disabling.get("/settings/disable"), "/settings/disable", "Yes")
        await enabling.get("/login")
        r = await enabling.post("/login", {"email": plain.email, "password": plain.password})
        at(r, "/", "You are connected to Cockpit")

        r = await enabling.post(f"{held}/settings/two-factor/enable", {})
        assert r.status_code == 503 and "try again" in r.text, r.text
        assert 'action="/settings/two-factor/enable"' in r.text  # the button, to repeat it
        for _ in range(2):  # the repeat reaches the disable, not the login page, and so on
            r = await disabling.post(f"{held}/settings/two-factor/disable", {"confirm": "yes"})
            assert r.status_code == 503 and "try again" in r.text, r.text
            assert 'name="confirm" value="yes"' in r.text  # the Yes, to repeat it
        async with worker():
            r = await enabling.post("/settings/two-factor/enable", {})
            at(r, "/settings/enabled", "logged out")
            r = await disabling.post("/settings/two-factor/disable", {"confirm": "yes"})
            at(r, "/settings", DISABLED_SENTENCE)
        assert (await account_row(database, plain.account_id)).two_factor_state == "pending_code"
        assert (await account_row(database, trusted.account_id)).two_factor_state == "disabled"
    finally:
        await disabling.close()
        await enabling.close()


async def test_login_id_and_device_token_cookies(start_api: ApiFactory) -> None:
    """The login in progress is encrypted in a cookie scoped to /login; the device token is a
    long-lived cookie; neither is readable by scripts."""
    api = await start_api()
    user = await api.activated(new_user("cookie2fa"))
    visitor = Visitor(str(api.http.base_url))
    try:
        await visitor.get("/login")
        token = visitor.http.cookies["twofa_csrf"]
        r = await visitor.http.post(
            "/login", data={"email": user.email, "password": user.password, "csrf_token": token}
        )
        assert r.status_code == 303 and r.headers["location"] == "/login/not-trusted"
        login = set_cookies(r)["twofa_login"]
        assert "; httponly" in login and "; samesite=strict" in login and "; path=/login" in login
        assert "max-age=" in login
        value = login.split("=", 1)[1].split(";", 1)[0]
        assert user.email.lower() not in value and user.seal.lower() not in value

        visitor.http.cookies.set("twofa_device", user.device_token or "")
        r = await visitor.http.post(
            "/login", data={"email": user.email, "password": user.password, "csrf_token": token}
        )
        assert r.headers["location"] == "/login/pin"
        r = await visitor.get("/login/pin")
        assert user.seal in r.text
        visitor.http.cookies.set("twofa_login", "tampered", path="/login")
        r = await visitor.get("/login/pin")
        at(r, "/login", "This login has expired.")
    finally:
        await visitor.close()


async def test_forms_refused_without_csrf_token(start_api: ApiFactory) -> None:
    """Every form post needs the browser's CSRF token: missing or wrong, 403 and nothing done."""
    api = await start_api()
    user = await api.register(new_user("csrf"))
    visitor = Visitor(str(api.http.base_url))
    try:
        await visitor.get("/login")
        credentials = {"email": user.email, "password": user.password}
        r = await visitor.post("/login", credentials, csrf=False)
        assert r.status_code == 403 and "did not come from this site" in r.text
        r = await visitor.post("/login", {**credentials, "csrf_token": "x" * 43}, csrf=False)
        assert r.status_code == 403
        assert "twofa_session" not in visitor.http.cookies
        # a matching token from another origin's page (a sibling subdomain may set the
        # cookie): refused when the browser says where the post came from
        token = {"csrf_token": visitor.http.cookies["twofa_csrf"]}
        for where in ("same-site", "cross-site"):
            r = await visitor.http.post(
                "/login", data={**credentials, **token}, headers={"Sec-Fetch-Site": where}
            )
            assert r.status_code == 403 and "did not come from this site" in r.text, where
        assert "twofa_session" not in visitor.http.cookies
        r = await visitor.http.post(
            "/login", data={**credentials, **token}, headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert r.status_code == 303, r.text
        r = await visitor.post("/login", credentials)
        at(r, "/", user.email)
        for path, form in [
            ("/settings/two-factor/enable", {}),
            ("/settings/two-factor/disable", {"confirm": "yes"}),
            ("/settings/browsers/delete", {"device_id": "x"}),
            ("/logout", {}),
        ]:
            r = await visitor.post(path, form, csrf=False)
            assert r.status_code == 403, (path, r.text)
        # the token alone is not enough: it must match this browser's own CSRF cookie
        stranger = httpx.AsyncClient(base_url=str(api.http.base_url))
        r = await stranger.post(
            "/settings/two-factor/enable",
            data={"csrf_token": visitor.http.cookies["twofa_csrf"]},
            headers={"Cookie": f"twofa_session={visitor.http.cookies['twofa_session']}"},
        )
        await stranger.aclose()
        assert r.status_code == 403
        at(await visitor.get("/settings"), "/settings", 'aria-checked="false"')  # still disabled
    finally:
        await visitor.close()


async def test_expired_code_means_logging_in_again(
    start_api: ApiFactory, database: Database
) -> None:
    """R4 as the code page tells it: an expired code sends the browser back to the login page,
    and the next login mails a new code.

    Every code of the enrollment lives 2 s (the workflow's policy), so where a loaded machine
    lands is read from the clock and the store, never assumed: which code a login waits for,
    and when it expires."""
    api = await start_api(code_ttl_seconds=2)
    user = new_user("expired")
    await api.enabled(user)
    await api.code_mail(user)
    visitor = Visitor(str(api.http.base_url))

    async def code_in_force(r: httpx.Response, mails_before: int) -> tuple[str, int, datetime]:
        """The code this login waits for, how many codes were mailed, and its expiry."""
        mails = mails_before + (NEW_CODE_SENT in r.text)
        code = await api.code_mail(user, count=mails)
        expires_at = (await account_row(database, user.account_id)).code_expires_at
        assert expires_at is not None
        return code, mails, expires_at

    try:
        await visitor.get("/login")
        credentials = {"email": user.email, "password": user.password}
        r = await visitor.post("/login", credentials)
        at(r, "/login/code", "valid during 2 seconds")
        # the enable's code, or a new one if the enable's had expired by this login
        code, mails, expires_at = await code_in_force(r, 1)
        # the code's expiry is on the clock: the page must refuse it from that instant on
        await sleep_until(expires_at)
        r = await visitor.post("/login/code", {"code": code})
        at(r, "/login", CODE_EXPIRED)
        r = await visitor.post("/login", credentials)
        at(r, "/login/code", NEW_CODE_SENT)
        new_code, _, new_expires_at = await code_in_force(r, mails)
        assert new_code != code and new_expires_at > expires_at
        # the new code is taken while it lasts, and refused as expired after: the clock at the
        # request says which, as the workflow judged it between `before` and `after`
        before = datetime.now(UTC)
        r = await visitor.post("/login/code", {"code": new_code})
        after = datetime.now(UTC)
        if r.request.url.path == "/login/activate":
            assert before < new_expires_at, f"a code expired at {new_expires_at} was taken"
        else:
            at(r, "/login", CODE_EXPIRED)
            assert after >= new_expires_at, f"a code valid until {new_expires_at} was refused"
    finally:
        await visitor.close()


# -- the real browser


async def test_document_in_a_real_browser(start_api: ApiFactory, tmp_path: Path) -> None:
    """Chromium walks the product document: enable, auto-logout, code, activation with a refused
    PIN first, PIN login with the seal, a second browser enrolled, one deleted, 2FA disabled."""
    from playwright.async_api import Page, async_playwright, expect

    api = await pages_api(start_api)
    base = str(api.http.base_url).rstrip("/")
    user = await api.register(new_user("chromium"))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    step = 0

    async def shot(page: Page, name: str) -> None:
        nonlocal step
        step += 1
        await page.screenshot(path=shots / f"{step:02d}-{name}.png", full_page=True)

    async def log_in(page: Page) -> None:
        await page.goto(f"{base}/login")
        await page.get_by_label("Email address").fill(user.email)
        await page.get_by_label("Password").fill(user.password)
        await page.get_by_role("button", name="Log in").click()

    urls: list[str] = []  # every request either browser made, redirects included

    async def new_page() -> Page:
        page = await (await browser.new_context()).new_page()
        page.on("request", lambda request: urls.append(request.url))
        return page

    async with async_playwright() as p:
        browser = await launch(p)
        try:
            first = await new_page()
            await log_in(first)
            await expect(first.get_by_text("You are connected to Cockpit")).to_be_visible()
            await shot(first, "logged-in")

            await first.locator("header summary").click()  # your name, in the top bar
            await first.locator("header").get_by_role("link", name="Settings").click()
            switch = first.get_by_role("switch", name="Two-factor authentication")
            await expect(switch).to_have_attribute("aria-checked", "false")
            await shot(first, "settings")
            await switch.click()
            await expect(
                first.get_by_text("You are automatically logged out from Cockpit after 10 seconds")
            ).to_be_visible()
            counter = first.locator("#countdown")
            start = int(await counter.inner_text())
            await expect(counter).not_to_have_text(str(start), timeout=3000)  # it counts down
            assert 0 < int(await counter.inner_text()) < start
            await shot(first, "auto-logout-notice")
            await first.get_by_role("button", name="Auto-logout").click()
            await expect(first.get_by_text("You are logged out from Cockpit.")).to_be_visible()
            await shot(first, "logged-out")

            code = await api.code_mail(user)
            await log_in(first)
            await expect(first.get_by_text("valid during 15 minutes")).to_be_visible()
            await first.get_by_label("Enter an inWebo Secure Site ID").fill(code)
            await shot(first, "activation-code")
            await first.get_by_role("button", name="Validate").click()

            await first.get_by_label("Name this trusted device (optional)").fill("Work laptop")
            await first.get_by_label("Password", exact=True).fill("1111")
            await first.get_by_label("Confirm password").fill("1111")
            await first.get_by_label("Antiphishing seal").fill(user.seal)
            await first.get_by_role("button", name="Activate inWebo").click()
            pin_box = first.get_by_label("Password", exact=True)
            await expect(pin_box).to_have_attribute("aria-invalid", "true")
            await expect(first.locator("#pin-error")).to_contain_text("2 different digits")
            await shot(first, "activation-refused-pin")
            await pin_box.fill(user.pin)
            await first.get_by_label("Confirm password").fill(user.pin)
            await first.get_by_role("button", name="Activate inWebo").click()
            await expect(first.get_by_text("enrolled as a trusted device")).to_be_visible()
            await shot(first, "activated")
            await first.get_by_role("link", name="OK").click()

            await expect(first.locator("#seal")).to_have_text(user.seal)
            await shot(first, "pin-with-seal")
            await first.get_by_label("Password").fill(user.pin)
            await first.get_by_role("button", name="Connect").click()
            await expect(first.get_by_text("securely connected to your Cockpit")).to_be_visible()
            await shot(first, "connected")

            # Logging in again from this browser: trusted, so the seal and the PIN only.
            await first.context.clear_cookies(name="twofa_session")
            await log_in(first)
            await expect(first.locator("#seal")).to_have_text(user.seal)
            await first.get_by_label("Password").fill(user.pin)
            await first.get_by_role("button", name="Connect").click()
            await expect(first.get_by_text("securely connected to your Cockpit")).to_be_visible()

            second = await new_page()
            await log_in(second)
            await expect(second.get_by_text("This browser is not a trusted device")).to_be_visible()
            await shot(second, "second-browser-not-trusted")
            await second.get_by_label("Name this trusted device (optional)").fill("Home PC")
            await second.get_by_role("button", name="Enroll this browser").click()
            await second.get_by_label("Enter an inWebo Secure Site ID").fill(
                await api.code_mail(user, count=2)
            )
            await second.get_by_role("button", name="Validate").click()
            await expect(second.locator("#seal")).to_have_text(user.seal)
            await shot(second, "second-browser-pin")
            await second.get_by_label("Password").fill(user.pin)
            await second.get_by_role("button", name="Connect").click()
            await expect(second.get_by_text("This browser is enrolled")).to_be_visible()
            await shot(second, "second-browser-connected")

            await first.locator("header summary").click()
            await first.locator("header").get_by_role("link", name="Trusted browsers").click()
            rows = first.locator("tbody tr")
            await expect(rows).to_have_count(2)
            await shot(first, "trusted-browsers")
            await first.get_by_role("button", name="Delete Home PC").click()
            await first.get_by_role("button", name="Yes, delete “Home PC”").click()
            await expect(first.get_by_text("The browser “Home PC” was deleted")).to_be_visible()
            await expect(rows).to_have_count(1)
            await expect(rows.first).to_contain_text("Work laptop")
            await shot(first, "browser-deleted")
            await second.reload()
            await expect(second.get_by_text("Your session has ended.")).to_be_visible()

            await first.locator("header summary").click()
            await first.locator("header").get_by_role("link", name="Settings").click()
            switch = first.get_by_role("switch", name="Two-factor authentication")
            await expect(switch).to_have_attribute("aria-checked", "true")
            await switch.click()
            await expect(first.get_by_text("Disable two-factor authentication?")).to_be_visible()
            await shot(first, "disable-confirmation")
            await first.get_by_role("button", name="Yes").click()
            await expect(first.get_by_text(DISABLED_SENTENCE)).to_be_visible()
            await expect(switch).to_have_attribute("aria-checked", "false")
            await shot(first, "disabled")
            await first.context.clear_cookies(name="twofa_session")
            await log_in(first)
            await expect(first.get_by_text("You are connected to Cockpit")).to_be_visible()
            await shot(first, "logged-in-without-2fa")
        finally:
            await browser.close()
    names = sorted(path.name for path in shots.iterdir())
    assert len(names) == step and step >= 15, names
    assert urls and all(url.startswith(base) for url in urls)
    for url in urls:
        assert httpx.URL(url).path in PAGE_PATHS | FORM_PATHS and not httpx.URL(url).query, url
        for secret in [*user.secrets(), user.email]:
            assert secret not in url, url


async def test_countdown_logs_out_with_and_without_javascript(start_api: ApiFactory) -> None:
    """At the end of the countdown the browser lands on the login page by itself: the script
    posts the Auto-logout form, and without JavaScript a meta refresh does it."""
    from playwright.async_api import async_playwright, expect

    api = await start_api(auto_logout_seconds=3)
    base = str(api.http.base_url).rstrip("/")
    async with async_playwright() as p:
        browser = await launch(p)
        try:
            for javascript in (True, False):
                user = await api.register(new_user("countdown"))
                context = await browser.new_context(java_script_enabled=javascript)
                page = await context.new_page()
                await page.goto(f"{base}/login")
                await page.get_by_label("Email address").fill(user.email)
                await page.get_by_label("Password").fill(user.password)
                await page.get_by_role("button", name="Log in").click()
                await page.locator("header summary").click()
                await page.locator("header").get_by_role("link", name="Settings").click()
                await page.get_by_role("switch", name="Two-factor authentication").click()
                await expect(page.get_by_text("after 3 seconds")).to_be_visible()
                await expect(page).to_have_url(f"{base}/login", timeout=10_000)
                await expect(page.get_by_text("Log in to Cockpit")).to_be_visible()
                await expect(page.get_by_label("Email address")).to_have_value(user.email)
                if javascript:
                    await expect(
                        page.get_by_text("You are logged out from Cockpit.")
                    ).to_be_visible()
                await page.goto(f"{base}/settings")
                await expect(page).to_have_url(f"{base}/login")
                await context.close()
        finally:
            await browser.close()


# -- issue 13: the pages as a person meets them, at a desktop width and on a 375 px phone


class Viewport(TypedDict):
    width: int
    height: int


class ContextOptions(TypedDict):
    """The keyword arguments of Playwright's ``Browser.new_context`` that a form factor sets."""

    viewport: Viewport
    is_mobile: NotRequired[bool]
    has_touch: NotRequired[bool]
    device_scale_factor: NotRequired[float]


VIEWPORTS: dict[str, ContextOptions] = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {
        "viewport": {"width": 375, "height": 740},
        "is_mobile": True,
        "has_touch": True,
        "device_scale_factor": 2,
    },
}


def screenshots(tmp_path: Path) -> Path:
    """Where the screenshots go: the test's own folder, or TWOFA_TEST_SCREENSHOTS to keep them."""
    folder = Path(os.environ.get("TWOFA_TEST_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def enroll_second_browser(api: Api, user: User, name: str) -> None:
    """Another browser of ``user`` enrolled through the pages (no script needed)."""
    other = Visitor(str(api.http.base_url))
    try:
        await other.get("/login")
        await other.post("/login", {"email": user.email, "password": user.password})
        await other.post("/login/not-trusted", {"device_name": name})
        # the user's second mail: the activation's code came first
        r = await other.post("/login/code", {"code": await api.code_mail(user, count=2)})
        r = await other.post("/login/pin", {"pin": user.pin})
        at(r, "/", "This browser is enrolled as a trusted device.")
    finally:
        await other.close()


@pytest.mark.parametrize("form_factor", list(VIEWPORTS))
async def test_issue_13_pages_in_chromium(
    start_api: ApiFactory, tmp_path: Path, form_factor: str
) -> None:
    """Each page point of issue 13, seen by Chromium at a desktop width and at 375 px:
    the home page names what the top bar shows; the login form remembers the email after the
    auto-logout; the activation form reports every wrong field at once and keeps the valid
    ones; "1 attempt left"; five wrong PINs lead to a lock page of its own; the trusted
    browsers fit a phone and a deletion asks first, naming the browser; disabling 2FA keeps
    the user signed in, on Settings, with the document's sentence."""
    from playwright.async_api import Page, async_playwright, expect

    api = await pages_api(start_api)
    base = str(api.http.base_url).rstrip("/")
    shots = screenshots(tmp_path)
    width = VIEWPORTS[form_factor]["viewport"]["width"]

    async def shot(page: Page, name: str) -> None:
        await page.screenshot(path=shots / f"{form_factor}-{name}.png", full_page=True)

    async def fits(page: Page) -> None:
        """Nothing wider than the screen: no sideways scrolling at 375 px."""
        scroll = await page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width, (page.url, scroll, width)

    async def log_in(page: Page, user: User, email: bool = True) -> None:
        await page.goto(f"{base}/login")
        if email:
            await page.get_by_label("Email address").fill(user.email)
        await page.get_by_label("Password").fill(user.password)
        await page.get_by_role("button", name="Log in").click()

    async with async_playwright() as p:
        browser = await launch(p)
        try:
            # A new user: the home page, the auto-logout, then the activation.
            erin = await api.register(new_user("erin"))
            page = await (await browser.new_context(**VIEWPORTS[form_factor])).new_page()
            await log_in(page, erin)
            await expect(page.locator("header summary")).to_have_text(erin.email)
            await expect(
                page.get_by_text("click your email address in the top bar")
            ).to_be_visible()
            await fits(page)
            await shot(page, "home")
            await page.goto(f"{base}/settings")
            await page.get_by_role("switch", name="Two-factor authentication").click()
            await page.get_by_role("button", name="Auto-logout").click()
            await expect(page.get_by_text("You are logged out from Cockpit.")).to_be_visible()
            await expect(page.get_by_label("Email address")).to_have_value(erin.email)
            await expect(page.get_by_label("Password")).to_be_focused()
            await fits(page)
            await shot(page, "login-after-auto-logout")

            code = await api.code_mail(erin)
            await log_in(page, erin, email=False)  # the remembered email, as a person would
            await page.get_by_label("Enter an inWebo Secure Site ID").fill(code)
            await page.get_by_role("button", name="Validate").click()
            await page.get_by_label("Name this trusted device (optional)").fill("Erin phone")
            await page.get_by_label("Password", exact=True).fill("12")
            await page.get_by_label("Confirm password").fill("99")
            await page.get_by_label("Antiphishing seal").fill("")
            await page.get_by_label("Email address (optional)").fill("erin new@example.com")
            await page.get_by_role("button", name="Activate inWebo").click()
            for field, words in [
                ("pin", "between 4 and 8 digits"),
                ("pin_confirmation", "does not match"),
                ("seal", "The antiphishing seal is required."),
                ("email", "' '"),
            ]:
                await expect(page.locator(f"#{field}-error")).to_contain_text(words)
                await expect(page.locator(f"#{field}")).to_have_attribute("aria-invalid", "true")
            await expect(page.locator(".field-error")).to_have_count(4)
            await expect(page.get_by_label("Password", exact=True)).to_have_value("")
            await expect(page.get_by_label("Confirm password")).to_have_value("")
            await expect(page.get_by_label("Name this trusted device (optional)")).to_have_value(
                "Erin phone"
            )
            await expect(page.get_by_label("Email address (optional)")).to_have_value(
                "erin new@example.com"
            )
            await fits(page)
            await shot(page, "activation-four-errors")
            await page.get_by_label("Password", exact=True).fill(erin.pin)
            await page.get_by_label("Confirm password").fill(erin.pin)
            await page.get_by_label("Email address (optional)").fill("")
            await page.get_by_role("button", name="Activate inWebo").click()
            await expect(page.locator(".field-error")).to_have_count(1)
            await expect(page.locator("#seal-error")).to_be_visible()
            await expect(page.get_by_label("Password", exact=True)).to_have_value(erin.pin)
            await expect(page.get_by_label("Confirm password")).to_have_value(erin.pin)
            await page.get_by_label("Antiphishing seal").fill(erin.seal)
            await page.get_by_role("button", name="Activate inWebo").click()
            await page.get_by_role("link", name="OK").click()

            # Wrong PINs: the count in correct English, then the lock page.
            for left in (4, 3, 2, 1):
                await page.get_by_label("Password").fill("90817263")
                await page.get_by_role("button", name="Connect").click()
                noun = "attempt" if left == 1 else "attempts"
                await expect(page.locator("#pin-error")).to_have_text(
                    f"Wrong password. {left} {noun} left."
                )
            await shot(page, "pin-one-attempt-left")
            await page.get_by_label("Password").fill("90817263")
            await page.get_by_role("button", name="Connect").click()
            await expect(
                page.get_by_role("heading", name="Two-factor authentication is locked")
            ).to_be_visible()
            await expect(page.get_by_text("locked for your account until")).to_be_visible()
            await expect(page.get_by_text("until an administrator unlocks it")).to_be_visible()
            assert "Something stopped here" not in await page.content()
            await fits(page)
            await shot(page, "locked")

            # A user with two trusted browsers: the list fits, a deletion asks first.
            ann = await api.activated(new_user("ann"), device_name="Ann laptop")
            await enroll_second_browser(api, ann, "Ann home PC with a rather long name")
            context = await browser.new_context(**VIEWPORTS[form_factor])
            await context.add_cookies(
                [{"name": "twofa_device", "value": ann.device_token or "", "url": base}]
            )
            page = await context.new_page()
            await log_in(page, ann)
            await page.get_by_label("Password").fill(ann.pin)
            await page.get_by_role("button", name="Connect").click()
            await page.goto(f"{base}/settings/browsers")
            await expect(page.locator("table.devices tbody tr")).to_have_count(2)
            await fits(page)
            for button in await page.get_by_role("button", name=re.compile("^Delete ")).all():
                await expect(button).to_be_visible()
                box = await button.bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
            await shot(page, "trusted-browsers")
            other = "Ann home PC with a rather long name"
            await page.get_by_role("button", name=f"Delete {other}").click()
            await expect(page.get_by_role("heading")).to_have_text(
                f"Delete the trusted browser “{other}”?"
            )
            await fits(page)
            await shot(page, "delete-browser-confirmation")
            await page.get_by_role("link", name="No").click()
            await expect(page.locator("table.devices tbody tr")).to_have_count(2)
            await page.get_by_role("button", name=f"Delete {other}").click()
            await page.get_by_role("button", name=f"Yes, delete “{other}”").click()
            await expect(
                page.get_by_text(f"The browser “{other}” was deleted from your trusted devices.")
            ).to_be_visible()
            await expect(page.locator("table.devices tbody tr")).to_have_count(1)
            await shot(page, "browser-deleted")

            # Disabling: Yes keeps Ann signed in, on Settings, with the document's sentence.
            await page.goto(f"{base}/settings")
            await page.get_by_role("switch", name="Two-factor authentication").click()
            await page.get_by_role("button", name="Yes").click()
            await expect(page).to_have_url(f"{base}/settings")
            await expect(page.get_by_text(DISABLED_SENTENCE)).to_be_visible()
            switch = page.get_by_role("switch", name="Two-factor authentication")
            await expect(switch).to_have_attribute("aria-checked", "false")
            await expect(page.locator("header summary")).to_have_text(ann.email)
            await fits(page)
            await shot(page, "disabled-stays-signed-in")
            await page.reload()  # the session really lives on, on the server
            await expect(page).to_have_url(f"{base}/settings")
            await expect(page.locator("header summary")).to_have_text(ann.email)
        finally:
            await browser.close()


async def test_a_pin_posted_while_another_is_checked_gets_the_pin_page(
    start_api: ApiFactory, database: Database
) -> None:
    """A double click on Connect: the second post finds the first one's check under way (429)
    and gets the PIN page again, with the seal, instead of an error page; typed again, the
    password connects."""
    api = await start_api()
    user = await api.activated(new_user("pin-double-click"))
    visitor = Visitor(str(api.http.base_url))
    visitor.http.cookies.set("twofa_device", user.device_token or "")
    try:
        await visitor.get("/login")
        r = await visitor.post("/login", {"email": user.email, "password": user.password})
        at(r, "/login/pin", user.seal)
        async with database.write() as db:  # the first click's check, holding the slot
            await db.execute(
                update(Account)
                .where(Account.id == user.account_id)
                .values(pin_check_until=datetime.now(UTC) + timedelta(seconds=60))
            )
        r = await visitor.post("/login/pin", {"pin": user.pin})
        assert r.status_code == 429 and r.request.url.path == "/login/pin", r.text
        assert user.seal in r.text and "being checked" in r.text, r.text
        async with database.write() as db:  # that check over
            await db.execute(
                update(Account).where(Account.id == user.account_id).values(pin_check_until=None)
            )
        r = await visitor.post("/login/pin", {"pin": user.pin})
        at(r, "/", "You are securely connected")
    finally:
        await visitor.close()


async def test_third_lock_in_a_row_says_an_admin_unlocks(start_api: ApiFactory) -> None:
    """S2 as the lock page tells it: two short locks say until when; the third lock in a row
    has no end time, and the page says an administrator unlocks it."""
    api = await start_api(pin_lock_seconds=1)
    user = await api.activated(new_user("thirdlock"))
    visitor = Visitor(str(api.http.base_url))
    visitor.http.cookies.set("twofa_device", user.device_token or "")
    try:
        await visitor.get("/login")
        for lock in (1, 2, 3):

            async def lock_over(lock: int = lock) -> bool:
                """Until the last lock is over, the login answers with the lock page."""
                r = await visitor.post("/login", {"email": user.email, "password": user.password})
                if r.request.url.path == "/login/pin":
                    return True
                assert r.status_code == 423 and lock > 1, r.text
                return False

            await eventually(lock_over, f"the end of lock #{lock - 1}", interval=0.2)
            for _ in range(4):
                r = await visitor.post("/login/pin", {"pin": "90817263"})
                assert r.status_code == 400, r.text
            r = await visitor.post("/login/pin", {"pin": "90817263"})
            assert r.status_code == 423, r.text
            assert "Two-factor authentication is locked" in r.text
            if lock < 3:
                assert "locked for your account until" in r.text
            else:
                assert "until an administrator unlocks it" in r.text
                assert "locked for your account until" not in r.text
                assert "Contact your Cockpit administrator" in r.text
        r = await visitor.post("/login", {"email": user.email, "password": user.password})
        assert r.status_code == 423 and "Contact your Cockpit administrator" in r.text
    finally:
        await visitor.close()
