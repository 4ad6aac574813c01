"""Which replicas are up (the book is pure; :class:`Prober` is its asyncio adapter).

Two kinds of evidence feed one :class:`HealthBook`:

- **passive**, from the traffic: a connection refused or reset before the first byte
  drains the replica at once (``definitive``); a stream cut mid-way counts as one failure;
- **active**, from the :class:`Prober`: ``GET <replica>/health`` (llama-server and vLLM
  both answer it, without the API key) every ``interval`` seconds. :data:`FALL` failed
  probes in a row drain a replica; :data:`RISE` passed ones in a row bring it back.

A replica the book has not heard of is up: a new cluster takes traffic at once, and the
first failure moves it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

RISE = 2  # passed probes in a row that bring a drained replica back
FALL = 2  # failed probes in a row that drain one (a refused connection: at once)
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0


@dataclass
class Health:
    up: bool = True
    fails: int = 0  # in a row
    passes: int = 0  # in a row
    since: float = 0.0  # when ``up`` last changed
    reason: str | None = None  # why it is down (or last failed)


class HealthBook:
    def __init__(self, rise: int = RISE, fall: int = FALL):
        self.rise, self.fall = rise, fall
        self._book: dict[str, Health] = {}

    def get(self, replica: str) -> Health:
        return self._book.get(replica) or Health()

    def up(self, replica: str) -> bool:
        found = self._book.get(replica)
        return found is None or found.up

    def failed(self, replica: str, now: float, reason: str, *, definitive: bool = False) -> bool:
        """Record a failure; True when it drained the replica."""
        h = self._book.setdefault(replica, Health(since=now))
        h.fails, h.passes, h.reason = h.fails + 1, 0, reason
        if h.up and (definitive or h.fails >= self.fall):
            h.up, h.since = False, now
            return True
        return False

    def passed(self, replica: str, now: float) -> bool:
        """Record a passed probe; True when it brought the replica back."""
        h = self._book.setdefault(replica, Health(since=now))
        h.passes, h.fails = h.passes + 1, 0
        if not h.up and h.passes >= self.rise:
            h.up, h.since, h.reason = True, now, None
            return True
        return False

    def keep(self, replicas: Iterable[str]) -> None:
        """Forget replicas that are gone from the table."""
        keep = set(replicas)
        for gone in set(self._book) - keep:
            del self._book[gone]


async def probe(client: httpx.AsyncClient, url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if ``url``/health answers 200; else why not."""
    try:
        answer = await client.get(f"{url}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return f"health probe: {type(exc).__name__}: {exc}".rstrip(": ")
    if answer.status_code != 200:
        return f"health probe: HTTP {answer.status_code}"
    return None


class Prober:
    """Probes each replica of ``targets()`` (id -> base URL) every ``interval`` s."""

    def __init__(
        self,
        book: HealthBook,
        client: httpx.AsyncClient,
        targets: Callable[[], dict[str, str]],
        *,
        interval: float = PROBE_INTERVAL,
        on_change: Callable[[str, bool, str | None], None] | None = None,
    ):
        self.book, self.client, self.targets = book, client, targets
        self.interval = interval
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def round(self) -> None:
        targets = self.targets()
        results = await asyncio.gather(*(probe(self.client, u) for u in targets.values()))
        now = time.monotonic()
        for replica, failure in zip(targets, results, strict=True):
            if failure is None:
                changed = self.book.passed(replica, now)
            else:
                changed = self.book.failed(replica, now, failure)
            if changed:
                log.warning(
                    "replica %s %s",
                    replica,
                    "back up" if failure is None else f"drained: {failure}",
                )
                if self.on_change is not None:
                    self.on_change(replica, failure is None, failure)

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:  # a probe round must never end the prober
                log.exception("health probe round failed")
            await asyncio.sleep(self.interval)
