"""Every recorded history of every release replays on the current workflow code.

Accounts enabled under an older release keep their workflow for as long as their 2FA lives, so
the current code must take over each of their histories exactly where it stopped. The
histories come from ``tests/workflows/record_histories.py``, run on each release's own commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from twofa.temporal import WORKFLOW_RUNNER
from twofa.workflows.two_factor import TwoFactorWorkflow

HISTORIES = Path(__file__).parent / "histories"
RECORDED = sorted(HISTORIES.glob("*/*.json"))
# Every state and timer of the workflow, as each release's set must cover them.
SCENARIOS = {
    "pending_code",
    "pending_code_logged_out",
    "pending_code_replaced",
    "pending_code_burned",
    "pending_activation",
    "active",
    "active_second_browser",
    "locked",
    "lock_ended",
    "disabled",
    "disabled_while_pending",
    "continued_as_new",
}

#: Recorded since release ea117d1 (the mail's first try local): its two ways out.
MAIL_SCENARIOS = {"pending_code_relay_busy", "pending_code_mail_refused"}
RELEASES_BEFORE_MAIL_SCENARIOS = {"be3d6ff", "2026-12-01", "2026-12-02"}
#: Recorded since release ea0e2f8 (the mail's retries after the step): retries called off.
CALLED_OFF_SCENARIOS = {"pending_code_mail_called_off"}
RELEASES_BEFORE_CALLED_OFF = RELEASES_BEFORE_MAIL_SCENARIOS | {"ea117d1", "855e7da"}
#: Recorded since release 2026-12-04: a retry refused for good, and a disable calling retries off.
RETRY_SCENARIOS = {"pending_code_mail_refused_on_retry", "disabled_while_mailing"}
RELEASES_BEFORE_RETRY_SCENARIOS = RELEASES_BEFORE_CALLED_OFF | {"ea0e2f8"}

pytestmark = pytest.mark.single_backend


def test_the_first_release_is_recorded() -> None:
    assert (HISTORIES / "be3d6ff").is_dir()


@pytest.mark.parametrize("release", sorted(p.name for p in HISTORIES.iterdir() if p.is_dir()))
def test_each_release_covers_every_state(release: str) -> None:
    names = {p.name.split(".")[0] for p in (HISTORIES / release).glob("*.json")}
    expected = SCENARIOS | (set() if release in RELEASES_BEFORE_MAIL_SCENARIOS else MAIL_SCENARIOS)
    if release not in RELEASES_BEFORE_CALLED_OFF:
        expected |= CALLED_OFF_SCENARIOS
    if release not in RELEASES_BEFORE_RETRY_SCENARIOS:
        expected |= RETRY_SCENARIOS
    assert names >= expected, expected - names


#: The worker's runner, and the SDK's sandbox, which refuses a clock, random numbers or I/O in
#: workflow code: the worker runs without it (twofa.temporal.WORKFLOW_RUNNER), so these replays,
#: which cover every state and timer, are where such a call is caught.
RUNNERS = {"worker": WORKFLOW_RUNNER, "sandbox": SandboxedWorkflowRunner()}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("path", RECORDED, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recorded_history_replays(path: Path, runner: str) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[TwoFactorWorkflow], workflow_runner=RUNNERS[runner])
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
