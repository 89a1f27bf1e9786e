"""A request's id follows the work it causes (issue 14): into the audit records the API writes,
through Temporal headers into the workflow's handlers and on to their activities in the
worker, whose log lines and audit records then carry it too, and into the notifier's record of
the mail the request queued. History holds it only as a header; work that no request caused
(a timer) carries none. The id is covered by the audit chain's keyed hash when a record has one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from sqlalchemy import create_engine, insert, select
from temporalio.api.common.v1 import Header, Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from tests.conftest import PEPPER, SERVICE_TOKEN
from tests.support.history import CONVERTER, activities_run, header_id
from tests.support.journey import Api, User, audit_trail, eventually, new_user
from tests.support.processes import TWOFA, environment, free_port, started, wait_for_http
from tests.support.stores import clone_store, drop_guards, empty_store, sql
from twofa import audit
from twofa.admin import AdminService
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.observability import REQUEST_ID
from twofa.service import TwoFactorService
from twofa.store.db import Database, sync_url
from twofa.store.models import AuditRecord
from twofa.store.statements import table_of
from twofa.temporal_context import HEADER, RequestIdWorker, request_id_in
from twofa.workflows.messages import workflow_id
from twofa.workflows.two_factor import TwoFactorWorkflow

GENERATED = re.compile(r"[0-9a-f]{32}")


@dataclass
class Stack:
    """`twofa api` and `twofa worker` on a task queue of their own, both logging JSON."""

    api: Api
    api_log: Path
    worker_log: Path
    client: Client
    database: Database
    settings: Settings


@pytest.fixture(scope="module")
async def stack(
    base_settings: Settings,
    database: Database,
    client: Client,
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    logs = tmp_path_factory.mktemp("request-id")
    port = free_port()
    env = environment(
        base_settings,
        api_port=str(port),
        temporal_task_queue=f"request-id-{uuid.uuid4().hex[:8]}",  # only this worker serves it
        log_format="json",
        auto_logout_seconds="1.5",
        workflow_call_timeout_seconds="20",
    )
    url = f"http://127.0.0.1:{port}"
    async with (
        started([TWOFA, "worker"], env, logs / "worker.log"),
        started([TWOFA, "api"], env, logs / "api.log"),
    ):
        await wait_for_http(f"{url}/healthz")
        api = Api(url, SERVICE_TOKEN, data_dir)
        try:
            yield Stack(api, logs / "api.log", logs / "worker.log", client, database, base_settings)
        finally:
            await api.close()


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a part's log, each one JSON object."""
    return [json.loads(line) for line in path.read_text().splitlines()]


async def logged(path: Path, message: str) -> dict[str, Any]:
    """The one line whose message contains ``message``, once it is written."""
    found: list[dict[str, Any]] = []

    async def written() -> bool:
        found[:] = [r for r in log_lines(path) if message in r["message"]]
        return bool(found)

    await eventually(written, f"a log line with {message!r} in {path.name}")
    assert len(found) == 1, found
    return found[0]


async def events_of(database: Database, account_id: str) -> list[tuple[str, str | None]]:
    """The account's audit records as (event, request id), in order."""
    return [(r.event, r.request_id) for r in await audit_trail(database, account_id)]


async def audited(database: Database, account_id: str, event: str) -> str | None:
    """The request id of the account's one ``event`` record, once it is written."""
    found: list[str | None] = []

    async def written() -> bool:
        found[:] = [rid for e, rid in await events_of(database, account_id) if e == event]
        return bool(found)

    await eventually(written, f"an audit record {event} of account {account_id}")
    assert len(found) == 1, found
    return found[0]


def headers_stripped(message: Message) -> list[Header]:
    """Clears every header inside ``message`` (at any depth) and returns what they held."""
    found: list[Header] = []
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        message_type = field.message_type
        assert message_type is not None  # a TYPE_MESSAGE field has one
        if message_type.GetOptions().map_entry:
            is_message = message_type.fields_by_name["value"].message_type is not None
            values = list(value.values()) if is_message else []
        else:
            values = list(value) if field.is_repeated else [value]
        for inner in values:
            if inner.DESCRIPTOR.full_name == Header.DESCRIPTOR.full_name:
                kept = Header()
                kept.CopyFrom(inner)
                found.append(kept)
                inner.Clear()
            else:
                found.extend(headers_stripped(inner))
    return found


async def history_of(client: Client, account_id: str) -> WorkflowHistory:
    return await client.get_workflow_handle(workflow_id(account_id)).fetch_history()


async def test_a_known_request_id_follows_its_steps_into_the_worker(stack: Stack) -> None:
    api, database = stack.api, stack.database
    user = await api.registered_and_logged_in(new_user("requestid"))
    steps = ("enable", "activate", "wrong_pin", "pin")
    known = {step: f"req-{step}-{uuid.uuid4().hex}" for step in steps}

    r = await api.call(
        "PUT",
        "/v1/account/two-factor",
        user,
        json={"enabled": True},
        headers={"X-Request-ID": known["enable"]},
    )
    assert r.status_code == 202, r.text
    assert r.headers["x-request-id"] == known["enable"]
    code = await api.code_mail(user)
    login = await api.login_ok(user)
    r = await api.submit_code(login["login_id"], code)
    assert r.status_code == 200, r.text
    code_step = r.headers["x-request-id"]  # sent without one: ours
    assert GENERATED.fullmatch(code_step), code_step
    body = {"login_id": login["login_id"], "pin": user.pin, "pin_confirmation": user.pin}
    r = await api.call(
        "POST",
        "/v1/login/activate",
        json={**body, "seal": user.seal},
        headers={"X-Request-ID": known["activate"]},
    )
    assert r.status_code == 200, r.text
    user.device_token = r.json()["device_token"]
    r = await api.pin(login["login_id"], user.pin)
    assert r.status_code == 200, r.text
    first_pin = r.headers["x-request-id"]
    login = await api.login_ok(user)
    assert login["outcome"] == "pin_required", login
    r = await api.call(
        "POST",
        "/v1/login/pin",
        json={"login_id": login["login_id"], "pin": "90909090"},
        headers={"X-Request-ID": known["wrong_pin"]},
    )
    assert r.status_code == 400, r.text
    r = await api.call(
        "POST",
        "/v1/login/pin",
        json={"login_id": login["login_id"], "pin": user.pin},
        headers={"X-Request-ID": known["pin"]},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == known["pin"]

    # The audit records: those the API wrote, and those the worker's activities and notifier
    # wrote for the same request.
    assert await audited(database, user.account_id, "code_issued") == known["enable"]
    assert await audited(database, user.account_id, "device_enrolled") == known["activate"]
    assert await audited(database, user.account_id, "notification_sent") == known["activate"]
    events = await events_of(database, user.account_id)
    by_id: dict[str | None, list[str]] = {}
    for event, request_id in events:
        by_id.setdefault(request_id, []).append(event)
    assert sorted(by_id[known["enable"]]) == ["code_issued", "two_factor_state_changed"], events
    assert sorted(by_id[known["activate"]]) == [
        "device_enrolled",
        "login_step_passed",
        "notification_sent",
        "two_factor_state_changed",
    ], events
    assert by_id[known["wrong_pin"]] == ["pin_rejected"], events
    assert by_id[known["pin"]] == ["login_succeeded"], events
    assert "login_step_passed" in by_id[code_step], events
    # The auto-logout is a timer's work: no request caused it.
    assert await audited(database, user.account_id, "sessions_ended") is None
    # The dashboard's audit trail shows each record's request id.
    admin = AdminService(TwoFactorService(stack.settings, database, stack.client))
    trail = await admin.audit_trail(user.account_id)
    shown = [(r.event, r.request_id) for r in trail]
    assert shown == (await events_of(database, user.account_id))[: len(shown)], shown
    assert {("code_issued", known["enable"]), ("pin_rejected", known["wrong_pin"])} <= {*shown}

    # The worker's own log lines for those activities.
    mailed = await logged(
        stack.worker_log, f"activation code 1 mailed for account {user.account_id}"
    )
    assert mailed["request_id"] == known["enable"]
    activated = await logged(stack.worker_log, f"2FA activated for account {user.account_id}")
    assert activated["request_id"] == known["activate"]
    auto_logout = await logged(stack.worker_log, f"session(s) of account {user.account_id}")
    assert auto_logout["request_id"] is None
    assert (await logged(stack.worker_log, "worker polling"))["request_id"] is None

    # History: the ids are in headers of calls and activities, and nowhere else.
    history = await history_of(stack.client, user.account_id)
    called = {*known.values(), code_step}  # the steps that called the workflow
    ids = {*called, first_pin}
    activities: list[tuple[str, str | None]] = []
    in_headers: set[str | None] = set()
    for history_event in history.events:
        stripped = HistoryEvent()
        stripped.CopyFrom(history_event)
        found = {header_id(h) for h in headers_stripped(stripped)}
        in_headers |= found
        rest = stripped.SerializeToString()
        assert not [i for i in ids if i.encode() in rest], history_event
        if history_event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = history_event.activity_task_scheduled_event_attributes
            activities.append((scheduled.activity_type.name, header_id(scheduled.header)))
    assert called <= in_headers, in_headers
    # Every effect ran as a local activity, recorded as a marker that keeps no header (their
    # audit records and log lines above carry the ids): the mail too, as the relay answered.
    assert activities == [], activities
    assert ("local", "send_activation_code", False) in activities_run(history.events)

    # Headers are not commands: the history replays with the interceptor and without it.
    for interceptors in ([RequestIdWorker()], []):
        replayed = await Replayer(
            workflows=[TwoFactorWorkflow], interceptors=interceptors
        ).replay_workflow(history, raise_on_replay_failure=False)
        assert replayed.replay_failure is None, replayed.replay_failure


async def test_a_request_without_an_id_gets_one_shared_by_its_log_and_records(
    stack: Stack,
) -> None:
    api, database = stack.api, stack.database
    user: User = await api.registered_and_logged_in(new_user("requestidless"))
    r = await api.call("PUT", "/v1/account/two-factor", user, json={"enabled": True})
    assert r.status_code == 202, r.text
    generated = r.headers["x-request-id"]
    assert GENERATED.fullmatch(generated), generated
    assert await audited(database, user.account_id, "code_issued") == generated
    mailed = await logged(
        stack.worker_log, f"activation code 1 mailed for account {user.account_id}"
    )
    assert mailed["request_id"] == generated

    found: list[dict[str, Any]] = []

    async def access_line() -> bool:
        found[:] = [
            r
            for r in log_lines(stack.api_log)
            if r["logger"] == "uvicorn.access" and r["request_id"] == generated
        ]
        return bool(found)

    await eventually(access_line, "the enable's access line")
    assert len(found) == 1 and "PUT /v1/account/two-factor" in found[0]["message"], found


def test_a_header_that_is_no_id_is_none() -> None:
    """Whoever can write to Temporal cannot put text into the worker's logs or audit records."""
    for value in ("not an id\nlevel=ERROR", "x" * 200, "", 42):
        assert request_id_in({HEADER: CONVERTER.to_payload(value)}, CONVERTER) is None
    unreadable = Payload(metadata={"encoding": b"binary/unknown"}, data=b"\x00")
    assert request_id_in({HEADER: unreadable}, CONVERTER) is None
    assert request_id_in({HEADER: CONVERTER.to_payload("req-0123456789")}, CONVERTER)


def _hash_before_request_ids(key: bytes, prev: str, record: AuditRecord) -> str:
    """A keyed hash exactly as the release before request ids computed it."""
    content = {
        "seq": record.seq,
        "at": record.at.astimezone(UTC).isoformat(),
        "account_id": record.account_id,
        "actor": record.actor,
        "event": record.event,
        "details": json.loads(record.details),
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    message = f"audit-chain-v2\x00{prev}\n{text}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


async def test_the_chain_covers_request_ids_and_still_verifies_older_records(
    database_url: str, tmp_path: Path
) -> None:
    store = empty_store(database_url, "audit_request_ids", tmp_path)
    key = Keyring(PEPPER.encode()).audit_key
    prev, rows = audit.GENESIS, []
    for seq in (1, 2):  # written before the column existed: no request id
        record = AuditRecord(
            seq=seq,
            at=datetime(2026, 12, 1, 12, seq, tzinfo=UTC),
            account_id=None,
            actor="system",
            event="old_event",
            details="{}",
            prev_hash=prev,
            version=audit.KEYED,
        )
        record.hash = prev = _hash_before_request_ids(key, prev, record)
        rows.append({c.name: getattr(record, c.name) for c in AuditRecord.__table__.columns})
    engine = create_engine(sync_url(store.url))
    try:
        with engine.begin() as connection:
            connection.execute(insert(table_of(AuditRecord)), rows)
    finally:
        engine.dispose()
    store.chain.advance(audit.Anchor(2, prev))
    database = Database(store.url, audit=store.chain)
    try:
        for request_id in ("req-new-record-3", None, "req-new-record-5"):
            token = REQUEST_ID.set(request_id)
            try:
                async with database.write() as db:
                    await audit.append(db, "new_event", actor="user")
            finally:
                REQUEST_ID.reset(token)
        await store.chain.settle()
        async with database.read() as db:
            stored = (await db.scalars(select(AuditRecord).order_by(AuditRecord.seq))).all()
    finally:
        await database.dispose()
    assert [r.request_id for r in stored] == [
        None,
        None,
        "req-new-record-3",
        None,
        "req-new-record-5",
    ]
    # A record without an id hashes as it did before ids existed.
    assert stored[3].hash == _hash_before_request_ids(key, stored[2].hash, stored[3])
    result = store.verify()
    assert result.returncode == 0, result.stderr
    assert "intact: 5 records (5 keyed" in result.stdout, result.stdout

    for name, statement, broken in [
        ("changed", "UPDATE audit_log SET request_id = 'req-another-one' WHERE seq = 3", 3),
        ("removed", "UPDATE audit_log SET request_id = NULL WHERE seq = 5", 5),
        ("added", "UPDATE audit_log SET request_id = 'req-made-up-one' WHERE seq = 1", 1),
    ]:
        copy = clone_store(store, f"audit_request_id_{name}", tmp_path)
        sql(copy.url, *drop_guards(copy.url), statement)
        result = copy.verify()
        assert result.returncode == 1, (name, result.stdout)
        assert f"BROKEN at record {broken}" in result.stderr, (name, result.stderr)
