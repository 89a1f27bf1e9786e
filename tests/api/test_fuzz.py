"""Bad input (issue 3, point 5): every endpoint fuzzed from its OpenAPI schema, plus hand-picked
cases; never a 5xx, always the contract's error shape, and a refused request changes nothing.

The fuzzing is schemathesis against the live uvicorn server, run in a thread: the server runs on
this test's event loop, which must stay free to answer. "Changes nothing" is checked against a
snapshot of the store (the accounts' projection rows, their devices, sessions, logins in progress,
activation drafts, mails, password throttles) and of each account's workflow (``progress_now``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Err
from sqlalchemy import func, inspect, select
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from tests.conftest import SERVICE_TOKEN
from tests.support.journey import Api, User, eventually, new_user, progress, untrusted
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.store.db import Database
from twofa.store.models import (
    Account,
    ActivationDraft,
    Device,
    LoginChallenge,
    LoginThrottle,
    SentMail,
    Session,
)

AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
JSON = {"Content-Type": "application/json"}
MAX_EXAMPLES = 30  # per operation and generation mode
#: Longer than any field may be, yet under the 64 KiB body limit (past it: 413, not 422).
HUGE = "x" * 60_000
ERROR_CODE = re.compile(r"[a-z]+(_[a-z]+)*")
USER_PATHS = ("/v1/session", "/v1/account/")
#: The message's framing, the HTTP server's to judge before any application sees the request:
#: uvicorn answers a malformed Content-Length (a negative case once drew "content-length: ~V")
#: with its own plain-text 400. Negative cases keep every other header they draw.
FRAMING_HEADERS = {"content-length", "transfer-encoding", "host", "connection"}


# -- the contract's error shape


def contract_problem(status: int, content_type: str, content: bytes) -> str | None:
    """What is wrong with an answer, by the contract's rules; None when nothing is."""
    if status >= 500:
        return f"server error {status}: {content[:300]!r}"
    if status < 400:
        return None
    if not content_type.startswith("application/json"):
        return f"{status} is not JSON but {content_type!r}: {content[:300]!r}"
    try:
        body = json.loads(content)
    except ValueError:
        return f"{status} body is not JSON: {content[:300]!r}"
    if not isinstance(body, dict):
        return f"{status} body is not an object: {body!r:.300}"
    if not (isinstance(body.get("error"), str) and ERROR_CODE.fullmatch(body["error"])):
        return f"{status} without a snake_case 'error': {body!r:.300}"
    if not (isinstance(body.get("message"), str) and body["message"]):
        return f"{status} without a 'message': {body!r:.300}"
    if status == 422 and not (isinstance(body.get("field"), str) and body["field"]):
        return f"422 that names no 'field': {body!r:.300}"
    if len(content) > 20_000:
        return f"{status} echoes a huge input back ({len(content)} bytes)"
    return None


def assert_refusal(r: httpx.Response, *statuses: int) -> dict[str, Any]:
    """A clean 4xx in the contract's shape (one of ``statuses`` when given)."""
    problem = contract_problem(r.status_code, r.headers.get("content-type", ""), r.content)
    assert problem is None, f"{r.request.method} {r.request.url.path[:100]}: {problem}"
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text[:300])
    body: dict[str, Any] = r.json()
    return body


# -- property-based fuzzing from the OpenAPI schema


class FuzzSessions:
    """A logged-in user (2FA off) for the session calls; replaced once fuzzing spends it."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.current: str | None = None
        self.created = 0

    def token(self) -> str:
        if self.current is None:
            email = f"fuzz.{uuid.uuid4().hex[:12]}@example.com"
            password = f"pw-{uuid.uuid4().hex}"
            r = self.http.post("/v1/accounts", json={"email": email, "password": password})
            assert r.status_code == 201, r.text
            r = self.http.post("/v1/login", json={"email": email, "password": password})
            assert r.status_code == 200 and r.json()["outcome"] == "authenticated", r.text
            self.current = str(r.json()["session_token"])
            self.created += 1
        return self.current

    def after(self, method: str, path: str, status: int) -> None:
        """Logging out, switching 2FA or an ended session spends this user's session."""
        spent = status == 401 or (
            200 <= status < 300
            and (method, path) in {("DELETE", "/v1/session"), ("PUT", "/v1/account/two-factor")}
        )
        if spent:
            self.current = None


@dataclass
class FuzzReport:
    calls: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


CREDENTIAL_PATHS = ("/v1/accounts", "/v1/login")
CREDENTIALS = st.fixed_dictionaries(
    {"email": st.emails(), "password": st.text(min_size=8, max_size=100)}
)


def with_login(login_id: str) -> Callable[[schemathesis.Case], schemathesis.Case]:
    """A case sent on a real login waiting for its step (S8: the login id is in the body)."""

    def put(case: schemathesis.Case) -> schemathesis.Case:
        if isinstance(case.body, dict):
            case.body = {**case.body, "login_id": login_id}
        return case

    return put


def with_credentials(pair: tuple[schemathesis.Case, dict[str, str]]) -> schemathesis.Case:
    case, credentials = pair
    if isinstance(case.body, dict):
        case.body = {**case.body, **credentials}
    return case


@dataclass
class Fuzzer:
    """Runs schemathesis on every operation, positive and negative data (in a thread)."""

    base_url: str
    live_logins: dict[str, str]
    max_examples: int
    report: FuzzReport = field(default_factory=FuzzReport)

    def run(self) -> FuzzReport:
        schema = schemathesis.openapi.from_url(
            f"{self.base_url}/openapi.json", headers=AUTH, timeout=30
        )
        operations = []
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                raise result.err()  # the API's own schema did not load
            operations.append(result.ok())
        # Logging out spends the session: the session calls' fuzzing keeps replacing it, but
        # let the other operations run first.
        operations.sort(key=lambda op: (op.method.upper(), op.path) == ("DELETE", "/v1/session"))
        with httpx.Client(base_url=self.base_url, headers=AUTH, timeout=60) as http:
            sessions = FuzzSessions(http)
            for operation in operations:
                for mode in schemathesis.GenerationMode:
                    self.fuzz(operation, mode, sessions)
        return self.report

    def fuzz(
        self,
        operation: schemathesis.APIOperation,
        mode: schemathesis.GenerationMode,
        sessions: FuzzSessions,
    ) -> None:
        method, path = operation.method.upper(), operation.path
        label = f"{method} {path}"
        is_user_call = path.startswith(USER_PATHS)
        strategy = operation.as_strategy(generation_mode=mode)
        live = self.live_logins.get(path.removeprefix("/v1/login/"))
        if live is not None:  # half the cases on a real login waiting for this step
            strategy = st.one_of(strategy, strategy.map(with_login(live)))
        if mode is schemathesis.GenerationMode.POSITIVE and path in CREDENTIAL_PATHS:
            # Random strings are hardly ever email addresses: half the cases get one, so that
            # accounts get created and passwords checked, not only refused by validation.
            strategy = st.one_of(strategy, st.tuples(strategy, CREDENTIALS).map(with_credentials))

        @settings(
            max_examples=self.max_examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # report every failure, no shrinking
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: schemathesis.Case) -> None:
            if case.headers:
                for framing in [k for k in case.headers if k.lower() in FRAMING_HEADERS]:
                    del case.headers[framing]
            headers = dict(AUTH)
            if is_user_call:
                headers["X-Session-Token"] = sessions.token()
            response = case.call(base_url=self.base_url, headers=headers, timeout=60)
            status = response.status_code
            content_type = response.headers.get("content-type", [""])[0]
            problem = contract_problem(status, content_type, response.content)
            if problem is None and 200 <= status < 300:
                try:
                    case.operation.validate_response(response, case=case)
                except Exception as error:  # a FailureGroup of schema violations
                    problem = f"{status} does not match the schema: {error}"[:1000]
            if is_user_call:
                sessions.after(method, path, status)
            self.report.calls[label] = self.report.calls.get(label, 0) + 1
            self.report.statuses.setdefault(label, Counter())[status] += 1
            if problem is not None:
                curl = case.as_curl_command(headers=headers)
                self.report.failures.append(f"{label} [{mode.value}] {problem}\n  {curl}")

        try:
            run()
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): there is no negative case.
            assert mode is schemathesis.GenerationMode.NEGATIVE, label
            self.report.calls.setdefault(label, 0)


async def test_every_operation_fuzzed_from_the_openapi_schema(api: Api, client: Client) -> None:
    world = await World.build(api, client)
    live_logins = {
        "activation-code": world.code_login,
        "activate": world.activation_login,
        "enroll-browser": world.enroll_login,
        "pin": world.pin_login,
    }
    base_url = str(api.http.base_url).rstrip("/")
    report = await asyncio.to_thread(Fuzzer(base_url, live_logins, MAX_EXAMPLES).run)
    for label, statuses in sorted(report.statuses.items()):
        print(f"{label}: {dict(sorted(statuses.items()))}")

    operations = {
        "GET /healthz",
        "POST /v1/accounts",
        "POST /v1/login",
        "POST /v1/login/activation-code",
        "POST /v1/login/activate",
        "POST /v1/login/enroll-browser",
        "POST /v1/login/pin",
        "GET /v1/session",
        "DELETE /v1/session",
        "GET /v1/account/two-factor",
        "PUT /v1/account/two-factor",
        "GET /v1/account/devices",
        "DELETE /v1/account/devices/{device_id}",
    }
    assert set(report.calls) == operations, "the schema lost or gained an operation"
    for label, calls in report.calls.items():
        # An operation without any input has one request to make; the others got their share.
        assert calls >= (1 if label == "GET /healthz" else MAX_EXAMPLES), (label, calls)
    assert not report.failures, f"{len(report.failures)} bad answers:\n" + "\n".join(
        report.failures[:25]
    )
    # The fuzzing reached past validation: some calls were answered by the service itself.
    assert any(s < 400 for s in report.statuses["POST /v1/accounts"]), report.statuses
    assert any(s in (400, 404, 409, 423) for s in report.statuses["POST /v1/login/pin"])
    assert any(s in (200, 400, 409) for s in report.statuses["PUT /v1/account/two-factor"])


# -- hand-picked bad input, and proof that a refusal changes nothing


async def progress_if_any(client: Client, account_id: str) -> dict[str, Any] | None:
    """The workflow's whole state, or None when the account has no workflow."""
    try:
        return await progress(client, account_id)
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
        return None


def row(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in inspect(obj).mapper.column_attrs}


@dataclass
class World:
    """Accounts in every state, each with a login waiting for its step, and their snapshots."""

    api: Api
    client: Client
    active: User  # 2FA active, a trusted browser and a session
    pending: User  # 2FA enabled, code not validated yet
    activating: User  # code validated, not activated yet
    plain: User  # 2FA off, with a session
    pin_login: str
    enroll_login: str
    code_login: str
    activation_login: str

    @classmethod
    async def build(cls, api: Api, client: Client) -> World:
        active = await api.activated(new_user("bad-active"))
        pin = await api.login_ok(active)
        assert pin["outcome"] == "pin_required", pin
        enroll = await api.login_ok(untrusted(active))
        assert enroll["outcome"] == "browser_not_trusted", enroll

        pending = new_user("bad-pending")
        await api.enabled(pending)
        await api.code_mail(pending)
        code = await api.login_ok(pending)
        assert code["outcome"] == "activation_code_required", code

        activating = new_user("bad-activating")
        await api.enabled(activating)
        activation = await api.login_ok(activating)
        r = await api.submit_code(activation["login_id"], await api.code_mail(activating))
        assert r.status_code == 200, r.text

        plain = await api.registered_and_logged_in(new_user("bad-plain"))
        world = cls(
            api=api,
            client=client,
            active=active,
            pending=pending,
            activating=activating,
            plain=plain,
            pin_login=pin["login_id"],
            enroll_login=enroll["login_id"],
            code_login=code["login_id"],
            activation_login=activation["login_id"],
        )
        await world.settle()
        return world

    @property
    def users(self) -> list[User]:
        return [self.active, self.pending, self.activating, self.plain]

    async def settle(self) -> None:
        """Waits for the auto-logout timers, the only changes these accounts still expect."""

        async def logged_out() -> bool:
            for user in self.users[:3]:
                state = await progress_if_any(self.client, user.account_id)
                if state is None or not state["auto_logout_done"]:
                    return False
            return True

        await eventually(logged_out, "the auto-logout of every account")


async def snapshot(database: Database, world: World, keyring: Keyring) -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    state: dict[str, Any] = {}
    async with database.read() as db:
        # Rows only the API creates, each in the request that creates it: no test left behind
        # can add one while this runs.
        for model in (Account, Session, LoginChallenge, ActivationDraft):
            state[f"count {model.__tablename__}"] = await db.scalar(
                select(func.count()).select_from(model)
            )
        for user in world.users:
            account = await db.get(Account, user.account_id)
            assert account is not None
            state[f"{user.email} account"] = row(account)
            for owned in (Device, Session, LoginChallenge, ActivationDraft, SentMail):
                rows = await db.scalars(select(owned).where(owned.account_id == user.account_id))
                state[f"{user.email} {owned.__tablename__}"] = sorted(
                    (row(r) for r in rows), key=lambda r: sorted(map(str, r.values()))
                )
            throttle = await db.get(LoginThrottle, keyring.digest("login-throttle", user.email))
            state[f"{user.email} throttle"] = row(throttle) if throttle else None
    for user in world.users:
        state[f"{user.email} workflow"] = await progress_if_any(world.client, user.account_id)
    return state


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [
        f"{key}: {before.get(key)!r:.400} -> {after.get(key)!r:.400}"
        for key in keys
        if before.get(key) != after.get(key)
    ]


@dataclass(frozen=True)
class Bad:
    """One hand-picked bad request: its target is a path template over the world's ids."""

    name: str
    method: str
    path: str
    body: Any = None  # JSON-encoded (ASCII, so lone surrogates travel as escapes)
    raw: bytes | None = None  # sent as is, instead of ``body``
    content_type: str = "application/json"
    session: str | bytes | None = None  # "active", "plain", or a literal header value
    statuses: tuple[int, ...] = ()  # the acceptable refusals; () means any 4xx
    field: str | None = None  # what a 422 must name (its end, for header/path parameters)


#: Values that are never valid for the field they replace: (name, value).
WRONG_TYPES: list[tuple[str, Any]] = [
    ("null", None),
    ("number", 12345678),
    ("float", 1.5),
    ("nan", math.nan),
    ("boolean", True),
    ("list", ["27182818"]),
    ("object", {"value": "27182818"}),
    ("1 MB string", HUGE),
    ("lone surrogate", "\ud800"),
]
NOT_JSON: list[tuple[str, bytes]] = [
    ("garbage", b"not json at all"),
    ("truncated", b'{"pin": "1234'),
    ("empty", b""),
    ("binary", b"\xff\xfe\x00\x01garbage"),
    ("null", b"null"),
    ("array", b"[1, 2, 3]"),
    ("string", b'"27182818"'),
    ("deep nesting", b"[" * 50_000),
]
#: A body that is not JSON at all: refused before any field is read.
UNPARSABLE = (400, 422)
#: Fields that may be left out or be null.
OPTIONAL = {"device_name", "device_token"}
UNICODE = "ünïcödé ✓ 😀 \u202e مرحبا"


def bad_requests(world: World) -> list[Bad]:
    a = world.active
    # A login id in a body is a template over the world's logins, filled in by ``send``.
    secret = {
        "login_id": "{activation}",
        "pin": a.pin,
        "pin_confirmation": a.pin,
        "seal": "a fine seal",
    }
    login_calls: list[tuple[str, dict[str, Any], list[str]]] = [
        # (path, a valid body, the fields whose bad values must all be refused)
        ("/v1/login/pin", {"login_id": "{pin}", "pin": a.pin}, ["login_id", "pin"]),
        (
            "/v1/login/activation-code",
            {"login_id": "{code}", "code": "ABCDEFGH"},
            ["login_id", "code"],
        ),
        ("/v1/login/activate", secret, ["login_id", "pin", "pin_confirmation", "seal"]),
        (
            "/v1/login/enroll-browser",
            {"login_id": "{enroll}", "device_name": "laptop"},
            ["login_id", "device_name"],
        ),
        ("/v1/login", {"email": a.email, "password": a.password}, ["email", "password"]),
        ("/v1/accounts", {"email": "fresh@example.com", "password": "pw-long-enough"}, []),
    ]
    cases: list[Bad] = []
    for path, valid, fields in login_calls:
        fields = fields or list(valid)
        for name, content in NOT_JSON:
            cases.append(Bad(f"not JSON: {name}", "POST", path, raw=content, statuses=UNPARSABLE))
        # Duplicate keys: the last one counts, and it is wrong.
        duplicated = json.dumps(valid)[:-1] + f', "{fields[0]}": [1]}}'
        cases.append(Bad("duplicate key", "POST", path, raw=duplicated.encode(), statuses=(422,)))
        cases.append(
            Bad(
                "form-encoded",
                "POST",
                path,
                raw=b"pin=1234",
                content_type="application/x-www-form-urlencoded",
                statuses=(422,),
            )
        )
        cases.append(
            Bad(
                "JSON as text/plain",
                "POST",
                path,
                raw=json.dumps(valid).encode(),
                content_type="text/plain",
                statuses=(422,),
            )
        )
        cases.append(Bad("no body", "POST", path, statuses=(422,)))
        for missing in (f for f in fields if f not in OPTIONAL):
            body = {k: v for k, v in valid.items() if k != missing}
            cases.append(
                Bad(f"{missing} missing", "POST", path, body, statuses=(422,), field=missing)
            )
        for bad_field in fields:
            for name, value in WRONG_TYPES:
                if value is None and bad_field in OPTIONAL:
                    continue
                body = {**valid, bad_field: value}
                cases.append(
                    Bad(f"{bad_field} {name}", "POST", path, body, statuses=(422,), field=bad_field)
                )
    # Values of the right type that the rules refuse, without counting as a guess.
    for pin in [
        "",
        "123",
        "123456789",
        "12 34",
        " 1234",
        "١٢٣٤٥",
        "\uff11\uff12\uff13\uff14",
        UNICODE,
        "0x1234",
    ]:
        cases.append(
            Bad(
                f"pin {pin!r}",
                "POST",
                "/v1/login/pin",
                {"login_id": "{pin}", "pin": pin},
                statuses=(422,),
                field="pin",
            )
        )
    activation_refusals = [
        ("pin", "1111"),  # one digit only
        ("pin", "12a4"),
        ("pin", "١٢٣٤٥"),
        ("pin_confirmation", "27182819"),
        ("seal", ""),
        ("seal", "   \t  "),
        ("seal", "s" * 201),
        ("device_name", "laptop\u202e"),
        ("device_name", "bell\x07"),
        ("device_name", "d" * 65),
        ("device_name", 7),
        ("email", "new+tag@example.com"),
        ("email", "ünï@example.com"),
        ("email", "two words@example.com"),
        ("email", "no-at-sign"),
        ("email", world.plain.email),  # taken by another account: 409
    ]
    for bad_field, value in activation_refusals:
        body = {**secret, bad_field: value}
        if bad_field == "pin":
            body["pin_confirmation"] = value
        statuses = (409,) if value == world.plain.email else (422,)
        cases.append(
            Bad(
                f"activate {bad_field}={value!r}",
                "POST",
                "/v1/login/activate",
                body,
                statuses=statuses,
                field=bad_field,
            )
        )
    for device_name in ["bell\x07", "x" * 65, "rtl\u202e", 12]:
        cases.append(
            Bad(
                f"device name {device_name!r:.20}",
                "POST",
                "/v1/login/enroll-browser",
                {"login_id": "{enroll}", "device_name": device_name},
                statuses=(422,),
                field="device_name",
            )
        )
    # Registration of what no account may be.
    for email in [
        "",
        "no-at-sign",
        "two@at@example.com",
        "spa ce@example.com",
        "e" * 250 + "@x.io",
    ]:
        cases.append(
            Bad(
                f"register {email!r:.20}",
                "POST",
                "/v1/accounts",
                {"email": email, "password": "pw-long-enough"},
                statuses=(422,),
                field="email",
            )
        )
    for password in ["", "short", "p" * 1025]:
        cases.append(
            Bad(
                f"register password len {len(password)}",
                "POST",
                "/v1/accounts",
                {"email": f"fresh.{uuid.uuid4().hex[:8]}@example.com", "password": password},
                statuses=(422,),
                field="password",
            )
        )
    cases.append(
        Bad(
            "register a taken email",
            "POST",
            "/v1/accounts",
            {"email": a.email.upper(), "password": "pw-long-enough"},
            statuses=(409,),
        )
    )

    # Unknown, malformed and wrong-step login ids, with valid bodies.
    steps = {
        "pin": ({"pin": a.pin}, "{pin}"),
        "activation-code": ({"code": "ABCDEFGH"}, "{code}"),
        "activate": (secret, "{activation}"),
        "enroll-browser": ({"device_name": "x"}, "{enroll}"),
    }
    # (a login at the activation step has passed the code: sending a code again gets that
    # outcome, S9; so the code step's "other" login is one at the PIN step)
    others = {
        "{pin}": "{code}",
        "{code}": "{pin}",
        "{activation}": "{pin}",
        "{enroll}": "{pin}",
    }
    for step, (body, own) in steps.items():
        for name, login_id, statuses in [
            ("unknown login id", uuid.uuid4().hex, (404,)),
            ("unicode login id", "ünï✓😀", (404,)),
            ("login id of another step", others[own], (409,)),
            ("login id too long", "L" * 1100, (422,)),
        ]:
            field_name = "login_id" if statuses == (422,) else None
            cases.append(
                Bad(
                    f"{step}: {name}",
                    "POST",
                    f"/v1/login/{step}",
                    {**body, "login_id": login_id},
                    statuses=statuses,
                    field=field_name,
                )
            )

    # Session calls: bad sessions, bad switches, and devices that are not the caller's.
    for method, path in [
        ("GET", "/v1/session"),
        ("DELETE", "/v1/session"),
        ("GET", "/v1/account/two-factor"),
        ("GET", "/v1/account/devices"),
        ("PUT", "/v1/account/two-factor"),
        ("DELETE", "/v1/account/devices/{device}"),
    ]:
        call_body = {"enabled": False, "confirm": True} if method == "PUT" else None
        for name, token, statuses in [
            ("no session", None, (401,)),
            ("unknown session", "s" * 43, (401,)),
            ("non-ASCII session", "sëssion✓".encode(), (401,)),
            ("session too long", "s" * 5000, (422,)),
        ]:
            field_name = "x-session-token" if statuses == (422,) else None
            cases.append(
                Bad(
                    f"{method} {path}: {name}",
                    method,
                    path,
                    call_body,
                    session=token or "",
                    statuses=statuses,
                    field=field_name,
                )
            )
    switch_values = [(n, v) for n, v in WRONG_TYPES if not isinstance(v, bool)]
    for name, value in [*switch_values, ("string", "true"), ("number 1", 1)]:
        for who in ("active", "plain"):
            cases.append(
                Bad(
                    f"switch {who}: enabled {name}",
                    "PUT",
                    "/v1/account/two-factor",
                    {"enabled": value},
                    session=who,
                    statuses=(422,),
                    field="enabled",
                )
            )
    for who in ("active", "plain"):
        for name, content in NOT_JSON:
            cases.append(
                Bad(
                    f"switch {who}: not JSON {name}",
                    "PUT",
                    "/v1/account/two-factor",
                    raw=content,
                    session=who,
                    statuses=UNPARSABLE,
                )
            )
        cases.append(
            Bad(
                f"switch {who}: confirm 'yes'",
                "PUT",
                "/v1/account/two-factor",
                {"enabled": False, "confirm": "yes"},
                session=who,
                statuses=(422,),
                field="confirm",
            )
        )
        cases.append(
            Bad(
                f"switch {who}: enabled missing",
                "PUT",
                "/v1/account/two-factor",
                {"confirm": True},
                session=who,
                statuses=(422,),
                field="enabled",
            )
        )
    cases.append(
        Bad(
            "disable without confirmation",
            "PUT",
            "/v1/account/two-factor",
            {"enabled": False},
            session="active",
            statuses=(400,),
        )
    )
    cases.append(
        Bad(
            "enable twice",
            "PUT",
            "/v1/account/two-factor",
            {"enabled": True},
            session="active",
            statuses=(409,),
        )
    )
    for name, device in [
        ("unknown device", str(uuid.uuid4())),
        ("unicode device id", "ünï✓😀"),
        ("device id with quote", "x' OR '1'='1"),
        ("device id too long", "d" * 1100),
    ]:
        statuses = (422,) if len(device) > 1024 else (404,)
        cases.append(
            Bad(
                f"delete {name}",
                "DELETE",
                f"/v1/account/devices/{device}",
                session="active",
                statuses=statuses,
                field="device_id" if statuses == (422,) else None,
            )
        )
    # Another account's browser is not the caller's to delete.
    cases.append(
        Bad(
            "delete another account's device",
            "DELETE",
            "/v1/account/devices/{device}",
            session="plain",
            statuses=(404,),
        )
    )
    return cases


async def send(world: World, case: Bad) -> httpx.Response:
    logins = {
        "pin": world.pin_login,
        "code": world.code_login,
        "activation": world.activation_login,
        "enroll": world.enroll_login,
    }
    path = case.path.format(device=world.active.device_id)
    headers: dict[str, Any] = {}
    if case.session == "active":
        headers["X-Session-Token"] = world.active.session_token
    elif case.session == "plain":
        headers["X-Session-Token"] = world.plain.session_token
    elif case.session:
        headers["X-Session-Token"] = case.session
    content = case.raw
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("login_id"), str):
        body = {**body, "login_id": body["login_id"].format(**logins)}
    if content is None and body is not None:
        content = json.dumps(body).encode()  # ensure_ascii: a lone surrogate as \ud800
    if content is not None:
        headers["Content-Type"] = case.content_type
    return await world.api.call(case.method, path, headers=headers, content=content)


async def test_hand_picked_bad_input_is_refused_cleanly_and_changes_nothing(
    api: Api, client: Client, database: Database, base_settings: Settings
) -> None:
    world = await World.build(api, client)
    keyring = Keyring(base_settings.pepper_bytes)
    cases = bad_requests(world)
    assert len(cases) > 250
    problems: list[str] = []
    before = await snapshot(database, world, keyring)
    for case in cases:
        r = await send(world, case)
        problem = contract_problem(r.status_code, r.headers.get("content-type", ""), r.content)
        if problem is None and not 400 <= r.status_code < 500:
            problem = f"accepted with {r.status_code}: {r.text[:200]}"
        if problem is None and case.statuses and r.status_code not in case.statuses:
            problem = f"{r.status_code} where {case.statuses} was expected: {r.text[:300]}"
        if problem is None and r.status_code == 422 and case.field is not None:
            named = r.json()["field"]
            if not (named == case.field or named.endswith(f".{case.field}")):
                problem = f"422 names {named!r}, not {case.field!r}"
        after = await snapshot(database, world, keyring)
        changed = changes(before, after)
        if changed:
            problem = (problem or "") + " and it changed: " + "; ".join(changed)
            before = after
        if problem:
            problems.append(f"{case.name} ({case.method} {case.path[:60]}): {problem}")
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)

    # Every login waits for its step as before, and each still works with good input.
    r = await api.pin(world.pin_login, world.active.pin)
    assert r.status_code == 200, r.text
    r = await api.activate(world.activation_login, world.activating)
    assert r.status_code == 200, r.text
    code = await api.code_mail(world.pending)
    r = await api.submit_code(world.code_login, code)
    assert r.status_code == 200, r.text
    r = await api.call("GET", "/v1/account/devices", world.active)
    assert r.status_code == 200 and len(r.json()) == 1, r.text


async def test_nul_characters_are_refused_not_crashing(api: Api, database: Database) -> None:
    """A NUL (U+0000) in any text: a clean 4xx, on every backend (PostgreSQL cannot store one)."""
    user = await api.activated(new_user("nul"))
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/accounts", {"email": "nul\x00@example.com", "password": "pw-long-enough"}),
        (
            "POST",
            "/v1/accounts",
            {"email": f"nul.{uuid.uuid4().hex[:6]}@example.com", "password": "pw-\x00-long-enough"},
        ),
        ("POST", "/v1/login", {"email": "nul\x00@example.com", "password": "pw-long-enough"}),
        (
            "POST",
            "/v1/login",
            {"email": user.email, "password": user.password, "device_token": "\x00"},
        ),
        ("POST", "/v1/login/pin", {"login_id": "\x00", "pin": "1234"}),
        ("POST", "/v1/login/activation-code", {"login_id": "abc", "code": "\x00"}),
        ("DELETE", "/v1/account/devices/%00", {}),
    ]
    problems = []
    for method, path, body in cases:
        content = json.dumps(body).encode() if body else None
        r = await api.call(method, path, user, content=content, headers=JSON)
        problem = contract_problem(r.status_code, r.headers.get("content-type", ""), r.content)
        if problem is None and r.status_code >= 500:
            problem = f"{r.status_code}"
        if problem:
            problems.append(f"{method} {path} {body!r:.80}: {problem}")
    assert not problems, "\n".join(problems)
    # An email with a NUL is no address: no account may get one.
    r = await api.call(
        "POST",
        "/v1/accounts",
        content=json.dumps({"email": "a\x00b@example.com", "password": "pw-long-enough"}).encode(),
        headers=JSON,
    )
    assert r.status_code == 422 and r.json().get("field") == "email", r.text
    async with database.read() as db:  # in Python: SQLite's LIKE stops at a NUL
        emails = (await db.scalars(select(Account.email))).all()
    assert not [e for e in emails if "\x00" in e]


async def test_unparsable_json_names_the_body_as_the_field(api: Api) -> None:
    """A body that is not JSON at all: the offending "field" is the body, not a byte offset."""
    for content in (b"not json", b'{"email": "a@b.c", "password": ', b"\xff\xfe"):
        r = await api.call("POST", "/v1/login", content=content, headers=JSON)
        body = assert_refusal(r, 422)
        assert body["field"] == "body", body
