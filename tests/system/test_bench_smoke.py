"""The benchmark suite runs end to end and prints its tables (smoke sizes, a minute or two).

``make bench`` runs the real sizes; this only guards ``python -m bench`` against rot: a private
stack starts on free ports, the engine floor, the journey at concurrency 1, five logins on SQLite
and five on a throwaway PostgreSQL server (through an API and a worker of their own), the listing
and the overview over 1,000 accounts (SQLite only) and one worker kill per step (recovery) run,
every table prints, and every process is gone afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("psutil", reason="the bench extra: pip install -e '.[bench]'")
from tests.support.processes import REPO

#: The bench runs the embedded default (SQLite) on its own stack: once per ``make test``.
pytestmark = pytest.mark.single_backend


def test_quick_bench_prints_every_table(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    only = "floor,journey,login,listing,recovery"
    command = [sys.executable, "-m", "bench", "--quick", "--only", only]
    command += ["--set", "login_backends=sqlite,postgresql"]  # make test installs PostgreSQL
    run = subprocess.run(
        [*command, "--json", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={k: v for k, v in os.environ.items() if not k.startswith("TWOFA_")},
    )
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    for title in (
        "engine floor — flows/s and latency",
        "engine floor — processes",
        "engine floor — settings",
        "journey — throughput",
        "journey — per-step latency (ms)",
        "journey c=1 vs engine floor c=1",
        "journey c=1 — processes",
        "login on SQLite — trusted browser + PIN, vs bare argon2",
        "login on PostgreSQL — trusted browser + PIN, vs bare argon2",
        "login on PostgreSQL c=1 — processes",
        "listing — AdminService.accounts, 1,000 accounts",
        "overview — AdminService.overview, 1,000 accounts",
        "listing — processes",
        "recovery — seconds from a new worker's first poll to the step's answer",
        "targets (issue 5) — measured in this run",
    ):
        assert title in out, f"missing table {title!r}"
    for column in ("p50 ms", "p95 ms", "p99 ms", "RSS peak MiB"):
        assert column in out
    assert results.exists()
    data_dirs = [line for line in out.splitlines() if "starting a private stack in" in line]
    assert data_dirs and not Path(data_dirs[0].split(" in ")[-1].strip()).exists()
