"""docker-compose.yml, its two env examples, the Dockerfile and deploy/: no Docker engine needed.

`docker compose config` validates the file where the Compose plugin exists; everywhere, the
structure is checked with PyYAML, and the deploy scripts run against stand-in commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.processes import REPO
from twofa.cli import app as cli_app
from twofa.config import Settings
from twofa.store.db import async_url, sync_url

#: Independent of the database backend: run once, in the SQLite pass of `make test`.
pytestmark = pytest.mark.single_backend

COMPOSE_FILE = REPO / "docker-compose.yml"
#: compose's own settings (its ${...}), and the app services' environment
ENV_EXAMPLE = REPO / ".env.example"
APP_ENV_EXAMPLE = REPO / "twofa.env.example"
DEPLOY = REPO / "deploy"

ONE_SHOT = {"temporal-schema", "temporal-namespace", "migrate"}
LONG_RUNNING = {
    "postgresql",
    "temporal",
    "temporal-ui",
    "mailpit",
    "worker",
    "api",
    "dashboard",
    "prometheus",  # profile "metrics"
}
APP_COMMANDS = {
    "migrate": ["twofa", "migrate"],
    "worker": ["twofa", "worker"],
    "api": ["twofa", "api"],
    "dashboard": ["twofa", "dashboard"],
}
SECRETS = ("POSTGRES_PASSWORD", "TEMPORAL_DB_PASSWORD", "TWOFA_SERVICE_TOKEN")
APP_SECRETS = ("TWOFA_PEPPER",)
#: what only the database and Temporal may see, never an app container
COMPOSE_ONLY_SECRETS = ("POSTGRES_PASSWORD", "TEMPORAL_DB_PASSWORD")
PLACEHOLDER = "change-me"

# "$$" is a literal dollar; "${NAME...}" and "$NAME" are interpolated by Compose.
_DOLLAR = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"{path.name}:{number}: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation, enough for this file: $$, ${X}, ${X:-d}, ${X:?e}."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["braced"] or match["bare"]
        value = env.get(name, "")
        op = match["op"] or ""
        if not value and op.endswith("-"):
            return match["arg"]
        if not value and op.endswith("?"):
            raise KeyError(f"{name} is required: {match['arg']}")
        return value

    return _DOLLAR.sub(substitute, text)


def variables(text: str) -> set[str]:
    return {m["braced"] or m["bare"] for m in _DOLLAR.finditer(text) if m.group(0) != "$$"}


def strings(node: Any) -> Iterator[str]:
    """Every key and scalar of a loaded YAML document, as text."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif node is not None:
        yield str(node)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def app_env_example() -> dict[str, str]:
    return parse_env_file(APP_ENV_EXAMPLE)


def app_environment(
    service: dict[str, Any], env_example: dict[str, str], app_env_example: dict[str, str]
) -> dict[str, str]:
    """What an app container's environment holds: twofa.env, then compose's `environment`."""
    given = {
        name: interpolate(str(value), env_example) for name, value in service["environment"].items()
    }
    return app_env_example | given


def test_docker_compose_config_accepts_the_file() -> None:
    """The real validator, where the Compose plugin is installed (skipped where it is not)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False
    )
    if version.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWOFA_", "COMPOSE_"))}
    result = subprocess.run(
        [docker, "compose", "--env-file", ".env.example", "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_part_of_the_production_shape_is_a_service(
    services: dict[str, dict[str, Any]],
) -> None:
    assert set(services) == ONE_SHOT | LONG_RUNNING


def test_images_are_pinned(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    for name, service in services.items():
        image = interpolate(service["image"], env_example)
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")
    assert services["postgresql"]["image"] == "postgres:16"
    for one_shot in ("temporal-schema", "temporal-namespace"):
        assert services[one_shot]["image"].startswith("temporalio/admin-tools:")
    # the schema is set up by the admin-tools release matching the server
    tools_tag = services["temporal-schema"]["image"].rpartition(":")[2]
    assert services["temporal"]["image"].endswith(f":{tools_tag}")


def test_app_services_run_the_project_image(services: dict[str, dict[str, Any]]) -> None:
    cli_commands = {
        command.name or command.callback.__name__.replace("_", "-")
        for command in cli_app.registered_commands
        if command.callback is not None
    }
    for name, command in APP_COMMANDS.items():
        service = services[name]
        assert service["build"]["context"] == "."
        assert service["image"] == services["api"]["image"]
        assert service["command"][: len(command)] == command, name
        assert command[1] in cli_commands, f"`twofa {command[1]}` does not exist"
        assert service["init"] is True
    # one uvicorn process: Prometheus scrapes api:8000, and the counters live in each process
    assert services["api"]["command"] == ["twofa", "api"]


def test_long_running_services_have_health_checks(services: dict[str, dict[str, Any]]) -> None:
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check.get("interval") and check.get("retries"), name
        assert services[name]["restart"] == "unless-stopped", name
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no", f"{name} runs once"
    assert "pg_isready" in " ".join(services["postgresql"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/_stcore/health" in " ".join(services["dashboard"]["healthcheck"]["test"])
    assert "task-queue describe" in " ".join(services["worker"]["healthcheck"]["test"])


def test_depends_on_waits_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for target, rule in depends_on.items():
            assert target in services, f"{name} depends on unknown {target}"
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert rule.get("condition") == expected, f"{name} -> {target}"

    def needs(name: str) -> set[str]:
        direct = set(services[name].get("depends_on", {}))
        return direct.union(*(needs(target) for target in direct))

    assert needs("temporal") >= {"temporal-schema", "postgresql"}
    for app in ("worker", "api", "dashboard"):
        assert needs(app) >= {"migrate", "temporal-namespace", "temporal", "postgresql"}, app
    assert "postgresql" in needs("migrate")


def test_worker_scales(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert not any("container_name" in service for service in services.values())
    assert worker.get("stop_grace_period"), "graceful shutdown needs more than the 10 s default"


def published(service: dict[str, Any], env: dict[str, str]) -> dict[int, tuple[str, int]]:
    """host port -> (host address, container port) of a service."""
    ports: dict[int, tuple[str, int]] = {}
    for entry in service.get("ports", []):
        assert isinstance(entry, str), "short syntax expected"
        parts = interpolate(entry, env).split("/")[0].split(":")
        address = parts[0] if len(parts) == 3 else "0.0.0.0"
        host, container = parts[-2], parts[-1]
        ports[int(host)] = (address, int(container))
    return ports


def test_ports_are_published(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    assert published(services["api"], env_example)[8000][1] == 8000
    assert published(services["dashboard"], env_example)[8501][1] == 8501
    assert published(services["temporal-ui"], env_example)[8080][1] == 8080
    # what has no login of its own stays on loopback; the database is not published at all
    for name in ("temporal-ui", "temporal", "mailpit"):
        for address, _ in published(services[name], env_example).values():
            assert address == "127.0.0.1", name
    assert "ports" not in services["postgresql"]


def test_every_variable_is_defined_in_env_example(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    used = set().union(*(variables(text) for text in strings(compose)))
    assert used, "the compose file takes its settings from .env"
    assert used <= set(env_example), f"missing from .env.example: {sorted(used - set(env_example))}"
    for text in strings(compose):
        interpolate(text, env_example)  # every required (:?) variable has a value


def test_twofa_names_are_real_settings() -> None:
    texts = [COMPOSE_FILE.read_text(), ENV_EXAMPLE.read_text(), APP_ENV_EXAMPLE.read_text()]
    texts += [script.read_text() for script in DEPLOY.rglob("*.sh")]
    names = set(re.findall(r"\bTWOFA_[A-Z0-9_]+", "\n".join(texts)))
    assert {"TWOFA_DATABASE_URL", "TWOFA_PEPPER", "TWOFA_SERVICE_TOKEN"} <= names
    fields = set(Settings.model_fields)
    unknown = sorted(n for n in names if n.removeprefix("TWOFA_").lower() not in fields)
    assert not unknown, f"not fields of twofa.config.Settings: {unknown}"


def test_the_app_gets_its_own_env_file_and_no_compose_secret(
    compose: dict[str, Any],
    services: dict[str, dict[str, Any]],
    env_example: dict[str, str],
    app_env_example: dict[str, str],
) -> None:
    """.env is compose's own; the app services get twofa.env and the few values they share."""
    used = set().union(*(variables(text) for text in strings(compose)))
    assert set(env_example) == used, (
        f".env.example beyond compose's ${{...}}: {set(env_example) - used}"
    )
    assert all(
        name.startswith("TWOFA_") or name == "FORWARDED_ALLOW_IPS" for name in app_env_example
    ), sorted(app_env_example)
    assert not set(app_env_example) & set(env_example), "each value has one home"
    for name, service in services.items():
        env_files = service.get("env_file", [])
        paths = [entry if isinstance(entry, str) else entry["path"] for entry in env_files]
        assert ".env" not in paths, f"{name} must not get .env whole"
        given = " ".join(str(value) for value in (service.get("environment") or {}).values())
        if name in APP_COMMANDS:
            assert paths == ["twofa.env"], name
            for secret in COMPOSE_ONLY_SECRETS:
                assert secret not in given, f"{name} gets {secret}"
        else:
            assert not paths, f"{name} gets the app's env file"
    # what compose hands the app from .env is not also in twofa.env, where it would be ignored
    assert not set(services["api"]["environment"]) & set(app_env_example)


@pytest.mark.parametrize("missing", ["TWOFA_PEPPER", "TWOFA_TEMPORAL_ADDRESS"])
def test_app_services_refuse_to_start_without_their_required_settings(
    services: dict[str, dict[str, Any]], app_env_example: dict[str, str], missing: str
) -> None:
    """A missing pepper would be generated in the data volume; a missing address, loopback."""
    entrypoint = [interpolate(part, {}) for part in services["api"]["entrypoint"]]
    for name in APP_COMMANDS:
        assert services[name]["entrypoint"] == services["api"]["entrypoint"], name
    env = {"PATH": os.environ["PATH"], **app_env_example}
    started = subprocess.run(
        [*entrypoint, "printf", "%s|", "twofa", "a b"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert (started.returncode, started.stdout) == (0, "twofa|a b|"), started.stderr
    del env[missing]
    refused = subprocess.run(
        [*entrypoint, "true"], env=env, capture_output=True, text=True, check=False, timeout=30
    )
    assert refused.returncode != 0
    assert f"{missing}: is not set: add it to twofa.env" in refused.stderr


@pytest.mark.parametrize("remote", [False, True])
def test_worker_healthcheck_connects_as_the_worker_does(
    services: dict[str, dict[str, Any]], bin_dir: Path, tmp_path: Path, remote: bool
) -> None:
    """The bundled plaintext server, or a cluster with TLS and an API key: the CLI gets them."""
    check = services["worker"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    calls = tmp_path / "temporal.env"
    stand_in(
        bin_dir,
        "temporal",
        f"""\
        {{ echo "$*"; env | grep '^TEMPORAL_' | sort; }} > {calls}
        echo "Pollers: 1@$(python -c 'import socket; print(socket.gethostname())')"
        """,
    )
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "TWOFA_TEMPORAL_ADDRESS": "temporal:7233",
        "TWOFA_TEMPORAL_NAMESPACE": "twofa",
    }
    if remote:
        env |= {
            "TWOFA_TEMPORAL_ADDRESS": "acme.tmprl.cloud:7233",
            "TWOFA_TEMPORAL_TLS": "True",
            "TWOFA_TEMPORAL_TLS_CLIENT_CERT": "/etc/twofa/client.pem",
            "TWOFA_TEMPORAL_TLS_CLIENT_KEY": "/etc/twofa/client.key",
            "TWOFA_TEMPORAL_TLS_SERVER_CA": "/etc/twofa/ca.pem",
            "TWOFA_TEMPORAL_TLS_SERVER_NAME": "acme.tmprl.cloud",
            "TWOFA_TEMPORAL_API_KEY": "key-value",
        }
    result = subprocess.run(
        ["sh", "-c", interpolate(check[1], {})],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    args, *handed_over = calls.read_text().splitlines()
    assert f"--address {env['TWOFA_TEMPORAL_ADDRESS']} --namespace twofa" in args
    assert "--task-queue two-factor" in args and "key-value" not in args
    expected = (
        [
            "TEMPORAL_API_KEY=key-value",
            "TEMPORAL_TLS=true",
            "TEMPORAL_TLS_CLIENT_CERT_PATH=/etc/twofa/client.pem",
            "TEMPORAL_TLS_CLIENT_KEY_PATH=/etc/twofa/client.key",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH=/etc/twofa/ca.pem",
            "TEMPORAL_TLS_SERVER_NAME=acme.tmprl.cloud",
        ]
        if remote
        else []
    )
    assert handed_over == expected


def test_env_examples_point_the_app_at_the_compose_services(
    env_example: dict[str, str],
    app_env_example: dict[str, str],
    services: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app_env = app_environment(services["api"], env_example, app_env_example)
    assert app_env["TWOFA_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert app_env["TWOFA_SMTP_HOST"] == "mailpit"
    assert app_env["TWOFA_SMTP_PORT"] == "1025"
    assert app_env["TWOFA_HOST"] == "0.0.0.0"
    assert app_env["TWOFA_SMTP_SINK"] == "false"
    assert app_env["TWOFA_PEPPER"] == app_env_example["TWOFA_PEPPER"]
    assert app_env["TWOFA_SERVICE_TOKEN"] == env_example["TWOFA_SERVICE_TOKEN"]
    url = urlsplit(app_env["TWOFA_DATABASE_URL"])
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "postgresql",
        "postgresql",
        5432,
        "/twofa",
    )
    for host in ("temporal", "mailpit", "postgresql"):
        assert host in services
    # the app reads these values as they are
    for name in [n for n in os.environ if n.startswith("TWOFA_")]:
        monkeypatch.delenv(name)
    for name, value in app_env.items():
        if name.startswith("TWOFA_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.smtp_sink is False and settings.smtp_port == 1025
    assert not settings.embedded_temporal
    assert async_url(settings.resolved_database_url).startswith("postgresql+asyncpg://")
    assert sync_url(settings.resolved_database_url).startswith("postgresql+psycopg://")


def test_env_examples_hold_no_real_secret(
    env_example: dict[str, str], app_env_example: dict[str, str]
) -> None:
    for example, secrets in ((env_example, SECRETS), (app_env_example, APP_SECRETS)):
        for name in secrets:
            assert PLACEHOLDER in example[name], f"{name} must be a placeholder"
    db_password = urlsplit(env_example["TWOFA_DATABASE_URL"]).password or ""
    assert PLACEHOLDER in db_password
    for name, value in (env_example | app_env_example).items():
        if re.search(r"PASSWORD|TOKEN|PEPPER|SECRET|KEY", name):
            assert PLACEHOLDER in value, name
        # nothing that looks generated: long runs of letters and digits
        for run in re.findall(r"[A-Za-z0-9+/=_]{24,}", value):
            pytest.fail(f"{name} holds {run!r}, which looks like a real secret")
    gitignore = REPO.joinpath(".gitignore").read_text().split()
    ignore = [
        line.strip()
        for line in REPO.joinpath(".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "everything stays out of the image unless let in"
    for real in (".env", "twofa.env"):
        assert real in gitignore, f"{real} must never be committed"
        assert not [line for line in ignore if line.startswith("!") and real in line], real


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).is_file(), f"{name}: {source} is missing"
                assert volume.endswith(":ro"), f"{name}: {source} should be mounted read-only"


def test_app_services_share_one_persistent_data_dir(services: dict[str, dict[str, Any]]) -> None:
    """The audit anchor is one file whichever container writes it, and outlives recreation."""
    for name in ("migrate", "worker", "api", "dashboard"):
        assert "twofa-data:/var/lib/twofa" in services[name].get("volumes", []), name


def test_temporal_server_reads_the_mounted_dynamic_config(
    services: dict[str, dict[str, Any]],
) -> None:
    temporal = services["temporal"]
    env = temporal["environment"]
    assert env["DB"] == "postgres12" and env["POSTGRES_SEEDS"] == "postgresql"
    assert (env["DBNAME"], env["VISIBILITY_DBNAME"]) == ("temporal", "temporal_visibility")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in temporal["volumes"]}
    source = mounts[env["DYNAMIC_CONFIG_FILE_PATH"]]
    config = yaml.safe_load((REPO / source).read_text())
    for key in (
        "frontend.enableUpdateWorkflowExecution",
        "frontend.enableExecuteMultiOperation",
        "frontend.enableCancelWorkerPollsOnShutdown",
    ):
        assert config[key] == [{"value": True, "constraints": {}}], key


def test_dockerfile_builds_a_non_root_image_of_the_project() -> None:
    dockerfile = REPO.joinpath("Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert dockerfile.rstrip().endswith('CMD ["twofa", "api"]')


# -- the deploy scripts, run against stand-ins for psql, temporal-sql-tool and temporal


def stand_in(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)


def run_script(
    script: Path, bin_dir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    shell = "bash" if "bash" in script.read_text().splitlines()[0] else "sh"
    return subprocess.run(
        [shell, str(script)],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    return directory


def test_postgres_init_takes_the_app_role_from_the_database_url(
    bin_dir: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "psql.args"
    stand_in(bin_dir, "psql", f'printf "%s\\n" "$@" > {calls}\ncat > {calls}.sql\n')
    script = DEPLOY / "postgres" / "init-databases.sh"
    env = {
        "TWOFA_DATABASE_URL": "postgresql://app_user:p%40ss-w0rd@postgresql:5432/app_db?sslmode=disable",
        "TEMPORAL_DB_PASSWORD": "temporal-secret",
    }
    result = run_script(script, bin_dir, env)
    assert result.returncode == 0, result.stderr
    args = calls.read_text().splitlines()
    for expected in (
        "app_user=app_user",
        "app_password=p@ss-w0rd",
        "app_db=app_db",
        "temporal_password=temporal-secret",
        "ON_ERROR_STOP=1",
    ):
        assert expected in args
    sql = calls.with_suffix(".args.sql").read_text()
    assert "PASSWORD :'app_password'" in sql and "p@ss" not in sql  # values never in the text
    assert 'CREATE DATABASE :"app_db" OWNER :"app_user"' in sql
    assert "CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_password'" in sql

    env["TWOFA_DATABASE_URL"] = "postgresql://postgresql:5432/twofa"
    assert run_script(script, bin_dir, env).returncode != 0, "a URL without credentials"


def test_temporal_schema_setup_is_idempotent(bin_dir: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    stand_in(bin_dir, "nc", "exit 0\n")
    stand_in(
        bin_dir,
        "temporal-sql-tool",
        f"""\
        echo "$*" >> {calls}
        case "$*" in
          *"--db temporal create"*) echo 'pq: database "temporal" already exists'; exit 1 ;;
          *"--db temporal_visibility create"*)
            if [ -n "$FAIL_CREATE" ]; then echo 'pq: password authentication failed'; exit 1; fi ;;
        esac
        """,
    )
    script = DEPLOY / "temporal" / "setup-schema.sh"
    env = {"SQL_HOST": "postgresql", "SQL_PORT": "5432"}
    result = run_script(script, bin_dir, env)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        "--db temporal create",
        "--db temporal setup-schema -v 0.0",
        "--db temporal update-schema -d /etc/temporal/schema/postgresql/v12/temporal/versioned",
        "--db temporal_visibility create",
        "--db temporal_visibility setup-schema -v 0.0",
        "--db temporal_visibility update-schema -d "
        "/etc/temporal/schema/postgresql/v12/visibility/versioned",
    ]
    failed = run_script(script, bin_dir, {**env, "FAIL_CREATE": "1"})
    assert failed.returncode != 0 and "password authentication failed" in failed.stderr


@pytest.mark.parametrize("exists", [False, True])
def test_temporal_namespace_gets_retention_and_search_attribute(
    bin_dir: Path, tmp_path: Path, exists: bool
) -> None:
    calls = tmp_path / "calls"
    stand_in(bin_dir, "getent", "exit 2\n")
    stand_in(
        bin_dir,
        "temporal",
        f"""\
        echo "$*" >> {calls}
        case "$*" in
          *"cluster health"*) echo SERVING ;;
          *"namespace describe"*) [ -n "$EXISTS" ] ;;
          *"search-attribute list"*) [ -z "$EXISTS" ] || echo "TwoFactorState  Keyword" ;;
        esac
        """,
    )
    env = {"NAMESPACE": "twofa", "RETENTION": "720h", "TEMPORAL_ADDRESS": "temporal:7233"}
    if exists:
        env["EXISTS"] = "1"
    result = run_script(DEPLOY / "temporal" / "create-namespace.sh", bin_dir, env)
    assert result.returncode == 0, result.stderr
    made = calls.read_text()
    verb = "update" if exists else "create"
    assert f"operator namespace {verb} --address temporal:7233 -n twofa --retention 720h" in made
    registered = "--name TwoFactorState --type Keyword" in made
    assert registered is not exists
