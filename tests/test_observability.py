"""What an operator watches (issue 14): /metrics after a journey, the worker's Temporal
metrics, and JSON log lines that carry each request's id and never a secret."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SERVICE_TOKEN, ApiFactory
from tests.support.journey import Api, User, eventually, new_user
from tests.support.processes import TWOFA, environment, free_port, started, wait_for_http
from twofa.api import create_app
from twofa.api import router as api_routes
from twofa.config import Settings
from twofa.observability import METHODS
from twofa.web import router as pages

AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(api: Api) -> tuple[str, Samples]:
    r = await api.call("GET", "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return r.text, parse(r.text)


async def test_metrics_need_the_service_token(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.http.base_url, timeout=30) as bare:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = await bare.get("/metrics", headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"] == "invalid_service_token"


async def test_metrics_count_a_journey_and_name_no_one(api: Api, base_settings: Settings) -> None:
    _, before = await scrape(api)
    user = await api.activated(new_user("metrics"))
    await api.pin_login(user)
    login = await api.login_ok(user)
    r = await api.pin(login["login_id"], "90909090")
    assert r.status_code == 400, r.text
    # Five wrong PINs in a row lock the account's 2FA.
    locked = await api.activated(new_user("metricslock"))
    login = await api.login_ok(locked)
    for _ in range(5):
        r = await api.pin(login["login_id"], "90909090")
    assert r.status_code == 423 and r.json()["error"] == "locked", r.text
    async with httpx.AsyncClient(base_url=api.http.base_url, timeout=30) as browser:
        assert (await browser.get("/login")).status_code == 200
        for token in ("XQZ1", "XQZ2"):  # any token is a method to the parser, no token needed
            assert (await browser.request(token, "/v1/login")).status_code == 401
    text, after = await scrape(api)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("twofa_login_outcomes_total", outcome="authenticated") >= 3
    assert moved("twofa_login_outcomes_total", outcome="activation_code_required") >= 2
    assert moved("twofa_login_outcomes_total", outcome="pin_required") >= 4
    assert moved("twofa_login_steps_total", step="activation_code", result="ok") >= 2
    assert moved("twofa_login_steps_total", step="activate", result="ok") >= 2
    assert moved("twofa_login_steps_total", step="pin", result="ok") >= 3
    assert moved("twofa_login_steps_total", step="pin", result="invalid_pin") >= 5
    assert moved("twofa_login_steps_total", step="pin", result="locked") >= 1
    assert moved("twofa_locks_total", kind="pin") >= 1
    assert moved("twofa_mails_requested_total", kind="activation_code") >= 2
    latency = dict(method="POST", route="/v1/login/pin", status="200")
    assert moved("twofa_http_request_duration_seconds_count", **latency) >= 3
    assert moved("twofa_http_request_duration_seconds_sum", **latency) > 0
    methods = {dict(labels).get("method") for (_, labels) in after} - {None}
    assert methods <= {*METHODS, "other"}, methods  # bounded: a made-up method adds no series
    other = dict(method="other", route="unmatched", status="401")
    assert moved("twofa_http_request_duration_seconds_count", **other) >= 2

    # Labels hold route templates and codes: never a path with an id, an email or a secret.
    routes = {dict(labels).get("route") for (_, labels) in after} - {None}
    app_routes = [*create_app(base_settings).routes, *api_routes.routes, *pages.routes]
    templates = {route.path for route in app_routes if hasattr(route, "path")} | {"unmatched"}
    assert "/login" in routes, routes  # the pages are timed by their templates too
    assert routes <= templates, routes - templates
    secrets = [*user.secrets(), *locked.secrets(), user.email, locked.email, user.account_id]
    leaks = [s for s in secrets if s in text]
    assert not leaks, leaks


# -- the worker's Temporal SDK metrics


def mails_sent(text: str) -> float:
    """The README's count of activation mails sent: the mail activity's finished runs, local
    (its first try) and remote (the retries after a busy relay)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name
        in (
            "temporal_local_activity_execution_latency_count",
            "temporal_activity_execution_latency_count",
        )
        and sample.labels.get("activity_type") == "send_activation_code"
    )


@pytest.mark.single_backend
async def test_worker_serves_temporal_metrics_and_logs_json(
    base_settings: Settings, start_api: ApiFactory, tmp_path: Path
) -> None:
    port = free_port()
    queue = f"metrics-{uuid.uuid4().hex[:8]}"  # its own queue: only this test's mail
    env = environment(
        base_settings, worker_metrics_port=str(port), temporal_task_queue=queue, log_format="json"
    )
    log = tmp_path / "worker.log"
    text = ""
    async with started([TWOFA, "worker"], env, log), httpx.AsyncClient(timeout=2) as http:

        async def served() -> bool:
            nonlocal text
            try:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.HTTPError:
                text = ""
            return "temporal_" in text

        await eventually(served, lambda: f"Temporal metrics:\n{text[:2000]}", 60, 0.2)

        def polling() -> bool:  # the metrics come with the SDK's runtime, before the client
            return "worker polling" in log.read_text()

        await eventually(polling, lambda: f"the worker's log line:\n{log.read_text()[-2000:]}")
        api = await start_api(temporal_task_queue=queue)
        await api.enabled(new_user("metrics"))

        async def mail_counted() -> bool:
            nonlocal text
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            return mails_sent(text) == 1

        await eventually(mail_counted, lambda: f"one mail sent in:\n{text[:3000]}")
    names = {family.name for family in text_string_to_metric_families(text)}
    assert any(name.startswith("temporal_") for name in names), names
    lines = log.read_text().splitlines()
    assert lines, "the worker wrote no log line"
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    assert any("worker polling" in json.loads(line)["message"] for line in lines), lines


# -- JSON logs of the API, each line with its request id


def records(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        record = json.loads(line)  # every line is one JSON object
        assert isinstance(record, dict), line
        found.append(record)
    return found


@pytest.mark.single_backend
async def test_json_logs_carry_the_request_id_and_no_secret(
    worker: None, base_settings: Settings, tmp_path: Path, data_dir: Path
) -> None:
    port = free_port()
    env = environment(base_settings, api_port=str(port), log_format="json")
    log = tmp_path / "api.log"
    url = f"http://127.0.0.1:{port}"
    async with started([TWOFA, "api"], env, log):
        await wait_for_http(f"{url}/healthz")
        api = Api(url, SERVICE_TOKEN, data_dir)
        ids: list[str] = []
        login_ids: set[str] = set()

        async def keep_id(response: httpx.Response) -> None:
            ids.append(response.headers["x-request-id"])
            body = json.loads(await response.aread() or b"null")
            if isinstance(body, dict) and "login_id" in body:
                login_ids.add(body["login_id"])

        api.http.event_hooks["response"].append(keep_id)
        try:
            user: User = await api.activated(new_user("jsonlogs"))
            await api.login_ok(user)
            own = "req-" + uuid.uuid4().hex
            r = await api.call("GET", "/healthz", headers={"X-Request-ID": own})
            assert r.headers["x-request-id"] == own  # a sane incoming id is kept
            odd = "not an id, " + "x" * 200
            r = await api.call("GET", "/healthz", headers={"X-Request-ID": odd})
            assert r.headers["x-request-id"] != odd  # replaced by one of ours
            assert len(set(ids)) == len(ids), "request ids repeat"
            async with httpx.AsyncClient(base_url=url, timeout=30) as bare:
                refused = await bare.post("/v1/login", content=b"{bad json")
            assert refused.status_code == 401
            ids.append(refused.headers["x-request-id"])
        finally:
            await api.close()
        # The access line of the last request is written as its answer goes out.
        await eventually(
            lambda: refused.headers["x-request-id"] in log.read_text(),
            "the last access line",
            10,
            0.05,
        )
    found = records(log)
    access = [r for r in found if r["logger"] == "uvicorn.access"]
    assert all(r["request_id"] for r in access), "an access line without a request id"
    assert set(ids) <= {r["request_id"] for r in access}, "a request without its access line"
    assert own in {r["request_id"] for r in access}
    # The app's own lines written while serving a request carry that request's id.
    registered = [r for r in found if "registered" in r["message"]]
    assert registered and all(r["request_id"] in ids for r in registered), registered
    text = log.read_text()
    assert len(login_ids) >= 2, login_ids
    leaks = [s for s in [*user.secrets(), *login_ids] if s in text]
    assert not leaks, leaks
