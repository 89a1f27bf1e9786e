"""Every setting of the system, read once from ``TWOFA_*`` environment variables."""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWOFA_", extra="ignore")

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
    mail_from: str = "Cockpit 2FA <no-reply@cockpit.localhost>"
    service_token: str | None = None
    pepper: str | None = None

    auto_logout_seconds: float = Field(10, gt=0)
    code_ttl_seconds: float = Field(900, gt=0)
    pin_lock_seconds: float = Field(900, gt=0)
    login_ttl_seconds: float = Field(900, gt=0)
    session_ttl_seconds: float = Field(12 * 3600, gt=0)
    history_event_limit: int = Field(2000, ge=50)
    workflow_call_timeout_seconds: float = Field(30, gt=0)

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
        value = self.pepper or _read_or_create_secret(self.data_dir / "pepper")
        return value.encode()


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
