"""One power operation on many nodes at once: a thread per node, one deadline for all.

A node whose BMC hangs cannot hold the others up: each node runs in a daemon thread,
the caller waits at most ``timeout`` (plus a little grace) in total, and a node still
running then is reported as timed out while its thread is left to die with the process.
Every failure becomes one line naming the node and the cause (:func:`format_result`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from provisioner.power.base import Operation, PowerError, PowerState

log = logging.getLogger(__name__)

GRACE = 1.0  # seconds past the timeout before a node counts as timed out


@dataclass(frozen=True)
class PowerResult:
    node: str
    op: Operation
    ok: bool
    state: PowerState | None = None
    error: str | None = None
    driver: str | None = None
    target: str | None = None  # host:port, MAC or socket: never credentials
    seconds: float = 0.0

    def as_dict(self) -> dict[str, str | bool | float | None]:
        return {
            "node": self.node,
            "op": self.op.value,
            "ok": self.ok,
            "state": self.state.value if self.state else None,
            "error": self.error,
            "driver": self.driver,
            "target": self.target,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Job:
    """One node's share: ``work`` does the operation, returns the state (status) or None."""

    node: str
    work: Callable[[], PowerState | None]
    driver: str | None = None
    target: str | None = None


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, PowerError) else f"{type(exc).__name__}: {text}"


def run_jobs(
    jobs: Sequence[Job], op: Operation, timeout: float, *, grace: float = GRACE
) -> list[PowerResult]:
    """Run every job in parallel; results in the jobs' order, within timeout + grace."""
    results: dict[int, PowerResult] = {}
    started = time.monotonic()

    def work(i: int, job: Job) -> None:
        begin = time.monotonic()
        try:
            state = job.work()
            result = PowerResult(job.node, op, True, state, None, job.driver, job.target)
        except Exception as exc:  # one node's failure, whatever it is, is its own line
            log.debug("node=%s power %s failed", job.node, op.value, exc_info=True)
            result = PowerResult(job.node, op, False, None, one_line(exc), job.driver, job.target)
        results[i] = replace(result, seconds=time.monotonic() - begin)

    threads = [
        threading.Thread(target=work, args=(i, job), name=f"power-{job.node}", daemon=True)
        for i, job in enumerate(jobs)
    ]
    for thread in threads:
        thread.start()
    deadline = started + timeout + grace
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    out = []
    for i, job in enumerate(jobs):
        result = results.get(i)
        if result is None:
            result = PowerResult(
                job.node,
                op,
                False,
                error=f"timed out after {timeout:.0f} s",
                driver=job.driver,
                target=job.target,
                seconds=time.monotonic() - started,
            )
        out.append(result)
    return out


def format_result(result: PowerResult) -> str:
    """One line for a human: ``node0: on`` or ``node1: failed: <cause> (ipmi 10.0.0.32)``."""
    via = f" ({result.driver} {result.target})" if result.driver and result.target else ""
    if not result.ok:
        return f"{result.node}: {result.op.value} failed: {result.error}{via}"
    if result.op is Operation.STATUS:
        return f"{result.node}: {result.state.value if result.state else 'unknown'}"
    return f"{result.node}: {result.op.value} done{via}"
