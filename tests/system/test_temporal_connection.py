"""Connecting to a real cluster: namespace, TLS and API key come from settings (issue 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from twofa.config import Settings
from twofa.temporal import connect_options

#: Independent of the database backend: run once, in the SQLite pass of `make test`.
pytestmark = pytest.mark.single_backend


def test_embedded_default_is_plain_text_on_the_default_namespace() -> None:
    options = connect_options(Settings(_env_file=None))
    assert options == {"namespace": "default", "tls": False, "api_key": None}


def test_mtls_with_private_ca_reads_the_files(tmp_path: Path) -> None:
    for name in ("client.pem", "client.key", "ca.pem"):
        (tmp_path / name).write_bytes(f"-----{name}-----".encode())
    options = connect_options(
        Settings(
            temporal_namespace="twofa.a1b2c",
            temporal_tls_client_cert=tmp_path / "client.pem",
            temporal_tls_client_key=tmp_path / "client.key",
            temporal_tls_server_ca=tmp_path / "ca.pem",
            temporal_tls_server_name="temporal.internal",
        )
    )
    assert options["namespace"] == "twofa.a1b2c"
    assert options["tls"] == TLSConfig(
        server_root_ca_cert=b"-----ca.pem-----",
        client_cert=b"-----client.pem-----",
        client_private_key=b"-----client.key-----",
        domain="temporal.internal",
    )


def test_an_api_key_implies_tls() -> None:
    options = connect_options(Settings(temporal_api_key="key-123"))
    assert options["tls"] is True and options["api_key"] == "key-123"


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "client.pem").write_bytes(b"cert")
    with pytest.raises(ValueError, match="go together"):
        connect_options(Settings(temporal_tls_client_cert=tmp_path / "client.pem"))


def test_settings_come_from_twofa_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOFA_TEMPORAL_NAMESPACE", "prod")
    monkeypatch.setenv("TWOFA_TEMPORAL_TLS", "true")
    assert connect_options(Settings()) == {"namespace": "prod", "tls": True, "api_key": None}
