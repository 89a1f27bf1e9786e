"""The engine floor: a bare workflow with an enrollment's shape, and nothing else.

Start, update, update, done, with one no-op activity per update: the same Temporal round trips
as an enrollment's request/response steps, with no database, mail, argon2 or HTTP around them.
Kept free of project imports so the workflow sandbox loads it quickly.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

TASK_QUEUE = "bench-engine-floor"


@activity.defn(name="BenchNoop")
async def noop(step: int) -> int:
    return step


@workflow.defn(name="BenchEnrollmentShape")
class EnrollmentShape:
    def __init__(self) -> None:
        self.steps = 0

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.steps >= 2 and workflow.all_handlers_finished())
        return self.steps

    @workflow.update
    async def step(self) -> int:
        await workflow.execute_activity(
            noop, self.steps, start_to_close_timeout=timedelta(seconds=30)
        )
        self.steps += 1
        return self.steps
