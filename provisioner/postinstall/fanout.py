"""The fan-out engine: every node's plan at once, over SSH, one progress line per step.

For each node, in its own thread: connect (host key pinned to the one it reported, the
control node's key), then each step in order: ``check`` (passes: ``unchanged``, nothing
runs, nothing restarts), else write its file if it differs and run its action, then
``verify``. Every outcome (status, exit status, output, seconds) goes to the registry.
The first failed step stops that node: it goes to ``failed`` naming the step and its
output; the next run checks the steps before it (unchanged: cheap) and goes on from it.
Success is ``installed`` (a node that had failed is repaired).
"""

from __future__ import annotations

import shlex
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from provisioner.postinstall.plan import NodePlan, Step
from provisioner.postinstall.ssh import Connection, SshError
from provisioner.registry import Registry
from provisioner.states import NodeEvent

Progress = Callable[[str], None]
Connect = Callable[[NodePlan], Connection]


@dataclass
class StepOutcome:
    step: str
    status: str  # unchanged | changed | failed
    exit_status: int | None
    output: str
    seconds: float


@dataclass
class NodeRun:
    hostname: str
    mac: str
    outcomes: list[StepOutcome] = field(default_factory=list)
    error: str | None = None
    resumed_at: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> list[str]:
        return [o.step for o in self.outcomes if o.status == "changed"]

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.hostname,
            "ok": self.ok,
            "error": self.error,
            "resumed_at": self.resumed_at,
            "changed": self.changed,
            "seconds": round(self.seconds, 2),
            "steps": [o.__dict__ for o in self.outcomes],
        }


def last_failed_step(registry: Registry, mac: str) -> str | None:
    """The step the node's latest run failed at, if its latest run failed."""
    rows = registry.steps(mac)
    if not rows:
        return None
    last_run = rows[-1]["run"]
    failed = [r for r in rows if r["run"] == last_run and r["status"] == "failed"]
    return str(failed[-1]["step"]) if failed else None


def _run_step(conn: Connection, step: Step) -> StepOutcome:
    started = time.monotonic()
    check = conn.run(step.check, timeout=step.timeout)
    if check.ok:
        return StepOutcome(step.name, "unchanged", 0, "", time.monotonic() - started)
    action = step.action
    if step.put is not None:
        same = conn.run(step.same or "false", timeout=60)
        if not same.ok:
            path, data, mode = step.put
            conn.run(f"mkdir -p {shlex.quote(str(PurePosixPath(path).parent))}", timeout=60)
            conn.put(path, data, mode)
            action = step.changed_action or step.action
    done = conn.run(action, timeout=step.timeout)
    if not done.ok:
        return StepOutcome(
            step.name, "failed", done.exit_status, done.output(), time.monotonic() - started
        )
    verify = conn.run(step.verify, timeout=step.timeout)
    if not verify.ok:
        output = f"verification failed: {verify.output()}\n(action output: {done.output(1000)})"
        return StepOutcome(
            step.name, "failed", verify.exit_status, output, time.monotonic() - started
        )
    return StepOutcome(step.name, "changed", 0, done.output(2000), time.monotonic() - started)


def run_node(
    registry: Registry,
    plan: NodePlan,
    connect: Connect,
    run_id: str,
    progress: Progress,
) -> NodeRun:
    member = plan.member
    result = NodeRun(member.hostname, member.mac)
    started = time.monotonic()
    result.resumed_at = last_failed_step(registry, member.mac)
    if result.resumed_at:
        progress(f"{member.hostname:10} resuming: the last run failed at {result.resumed_at!r}")
    total = len(plan.steps)
    where = "(connect)"  # what a lost connection is charged to: connecting, or the step
    try:
        with connect(plan) as conn:
            for i, step in enumerate(plan.steps, 1):
                where = step.name
                outcome = _run_step(conn, step)
                result.outcomes.append(outcome)
                registry.add_step(run_id, member.mac, step.name, outcome.status,
                                  outcome.exit_status, outcome.output, outcome.seconds)  # fmt: skip
                progress(
                    f"{member.hostname:10} [{i}/{total}] {step.name}: {outcome.status} "
                    f"({outcome.seconds:.1f} s)"
                )
                if outcome.status == "failed":
                    tail = "\n".join(outcome.output.splitlines()[-8:])
                    result.error = f"step {step.name!r} failed (exit {outcome.exit_status}): {tail}"
                    break
    except SshError as exc:
        result.error = str(exc) if where == "(connect)" else f"step {where!r}: {exc}"
        registry.add_step(run_id, member.mac, where, "failed", None, str(exc), 0.0)
    result.seconds = time.monotonic() - started
    if result.error:
        registry.transition(member.mac, NodeEvent.FAIL, reason=f"post-install: {result.error}")
        progress(f"{member.hostname:10} failed: {result.error.splitlines()[0]}")
    else:
        registry.transition(member.mac, NodeEvent.INSTALLED, reason="post-install")
        changed = len(result.changed)
        progress(
            f"{member.hostname:10} done: {changed} changed, {total - changed} unchanged "
            f"in {result.seconds:.1f} s"
        )
    return result


def run(
    registry: Registry,
    plans: Sequence[NodePlan],
    connect: Connect,
    progress: Progress,
) -> list[NodeRun]:
    """Every node's plan in parallel; results in the plans' order."""
    run_id = uuid.uuid4().hex[:12]
    results: dict[int, NodeRun] = {}

    def work(i: int, plan: NodePlan) -> None:
        try:
            results[i] = run_node(registry, plan, connect, run_id, progress)
        except Exception as exc:  # a bug or a registry error must not hide other nodes
            run = NodeRun(
                plan.member.hostname, plan.member.mac, error=f"{type(exc).__name__}: {exc}"
            )
            results[i] = run

    threads = [
        threading.Thread(target=work, args=(i, p), name=f"postinstall-{p.member.hostname}")
        for i, p in enumerate(plans)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[i] for i in range(len(plans))]
