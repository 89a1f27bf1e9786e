"""Every setting of the system, read once from ``TWOFA_*`` environment variables."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from twofa.policy import Policy

#: ``none``: plain SMTP (the embedded sink); ``starttls``: upgrade on the submission port (587);
#: ``tls``: TLS from the first byte (SMTPS, 465). TLS always verifies the relay's certificate.
SmtpSecurity = Literal["none", "starttls", "tls"]
#: In the data dir: the current pepper, and the ones a rotation replaced (newest first).
PEPPER_FILE, PREVIOUS_PEPPERS_FILE = "pepper", "pepper-previous"
#: The audit keys of peppers dropped from the keyring (hex, newest first): verify still needs them.
RETIRED_AUDIT_KEYS_FILE = "audit-keys-retired"


class Settings(BaseSettings):
    # a settings error must not echo the values it read: among them are passwords and keys
    model_config = SettingsConfigDict(
        env_prefix="TWOFA_", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Path(".data")
    database_url: str | None = None
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_task_queue: str = "two-factor"
    temporal_tls: bool = False
    temporal_tls_client_cert: Path | None = None
    temporal_tls_client_key: Path | None = None
    temporal_tls_server_ca: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: str | None = None
    host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    dashboard_port: int = Field(8501, ge=1, le=65535)
    temporal_port: int = Field(7233, ge=1, le=65535)
    temporal_ui_port: int = Field(8233, ge=1, le=65535)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(1025, ge=1, le=65535)
    smtp_sink: bool = True
    smtp_security: SmtpSecurity = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_ca_file: FilePath | None = None
    smtp_timeout_seconds: float = Field(10, gt=0)
    mail_from: str = "Cockpit 2FA <no-reply@cockpit.localhost>"
    service_token: str | None = None
    pepper: str | None = None
    #: Peppers replaced by a rotation, newest first, comma-separated: still read, never used
    #: to make anything new (``<data dir>/pepper-previous`` adds one per line).
    pepper_previous: str | None = None

    auto_logout_seconds: float = Field(Policy.auto_logout_seconds, gt=0)
    code_ttl_seconds: float = Field(Policy.code_ttl_seconds, gt=0)
    pin_lock_seconds: float = Field(Policy.pin_lock_seconds, gt=0)
    login_ttl_seconds: float = Field(900, gt=0)
    session_ttl_seconds: float = Field(12 * 3600, gt=0)
    history_event_limit: int = Field(Policy.history_event_limit, ge=50)
    workflow_call_timeout_seconds: float = Field(30, gt=0)
    #: Interactive API docs (/docs, /redoc, /openapi.json); production may turn them off.
    api_docs: bool = True
    #: Log lines as text for a terminal, or one JSON object per line for a log shipper.
    log_format: Literal["text", "json"] = "text"
    #: Where the worker serves the Temporal SDK's Prometheus metrics; unset: not served.
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _smtp_credentials_only_over_tls(self) -> Self:
        """A relay login never travels in clear, and half a login or a CA for no TLS is a typo."""
        if self.smtp_username is not None and self.smtp_password is None:
            raise ValueError("TWOFA_SMTP_USERNAME is set but TWOFA_SMTP_PASSWORD is not")
        if self.smtp_password is not None and self.smtp_username is None:
            raise ValueError("TWOFA_SMTP_PASSWORD is set but TWOFA_SMTP_USERNAME is not")
        if self.smtp_security == "none":
            if self.smtp_username is not None:
                raise ValueError(
                    "TWOFA_SMTP_USERNAME needs TWOFA_SMTP_SECURITY=starttls or tls: "
                    "the relay's credentials must never be sent in clear"
                )
            if self.smtp_ca_file is not None:
                raise ValueError("TWOFA_SMTP_CA_FILE needs TWOFA_SMTP_SECURITY=starttls or tls")
        return self

    @property
    def policy(self) -> Policy:
        """The durations and limits a workflow started under these settings runs with."""
        return Policy(
            auto_logout_seconds=self.auto_logout_seconds,
            code_ttl_seconds=self.code_ttl_seconds,
            pin_lock_seconds=self.pin_lock_seconds,
            history_event_limit=self.history_event_limit,
        )

    def environment(self, names: Iterable[str] | None = None, **extra: object) -> dict[str, str]:
        """The environment of a child process that reads these settings (a test's, the bench's).

        This process's environment without its ``TWOFA_*`` variables, then one variable per
        setting in ``names`` that has a value (by default, per setting given explicitly), then
        ``extra``, named as settings.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFA_")}
        given = self.model_dump(exclude_unset=names is None)
        for name in self.model_fields_set if names is None else names:
            value = given[name]
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                env[f"TWOFA_{name.upper()}"] = str(value)
        return env | {f"TWOFA_{k.upper()}": str(v) for k, v in extra.items()}

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'twofa.db').resolve()}"

    @property
    def embedded_temporal(self) -> bool:
        """No address given means: start and use the embedded dev server."""
        return not self.temporal_address

    @property
    def resolved_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @cached_property
    def resolved_service_token(self) -> str:
        return self.service_token or _read_or_create_secret(self.data_dir / "service-token")

    @cached_property
    def pepper_bytes(self) -> bytes:
        """The server-side key of every keyed hash; kept out of the database (S3)."""
        value = self.pepper or _read_or_create_secret(self.data_dir / PEPPER_FILE)
        return value.encode()

    @cached_property
    def previous_pepper_bytes(self) -> list[bytes]:
        """The peppers a rotation replaced, newest first: TWOFA_PEPPER_PREVIOUS, then the file."""
        values = (self.pepper_previous or "").split(",")
        path = self.data_dir / PREVIOUS_PEPPERS_FILE
        if path.exists():
            values += path.read_text().splitlines()
        return [value.strip().encode() for value in values if value.strip()]

    @cached_property
    def retired_audit_keys(self) -> list[bytes]:
        """What ``twofa pepper drop`` kept of each dropped pepper: its audit key, not the pepper."""
        path = self.data_dir / RETIRED_AUDIT_KEYS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        return [bytes.fromhex(line.strip()) for line in lines if line.strip()]


def _read_or_create_secret(path: Path) -> str:
    """Generated once per data dir, so a restart keeps tokens and hashes valid.

    Created through a hard link so that two processes starting together agree on one value.
    """
    if path.exists():
        return path.read_text().strip()
    private_dir(path.parent)
    value = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    tmp.touch(mode=0o600)
    tmp.write_text(value)
    try:
        path.hardlink_to(tmp)
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        tmp.unlink()
    return value


def private_dir(path: Path) -> None:
    """Creates a directory (the data dir) readable by its owner only; an existing one is kept."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
