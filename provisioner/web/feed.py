"""The dashboard's live feed: server-sent events from one poll of the registry.

One asyncio task (:meth:`Feed.run`) asks the :class:`~provisioner.web.board.Board` each
:data:`TICK_S` what changed (in a worker thread: SQLite blocks) and puts each change in
every subscriber's queue. It reads nothing while no browser follows (a page reads the
board itself, and a new stream starts from a fresh read), and under a storm a read that
took long pushes the next one back: the dashboard takes at most 1/:data:`BUSY_FACTOR`
of the time (a read of 10,000 nodes during a DHCP storm took a fifth of serve's CPU).
A browser's ``EventSource`` on ``GET /events`` gets the whole table first
(``snapshot``), then ``node`` and ``gone`` events as they happen, and a comment every
:data:`KEEPALIVE_S` so proxies keep the stream open. No browser polls, and the registry
is read once a tick however many watch.

Bounded: at most :data:`MAX_SUBSCRIBERS` streams (a 503 beyond), each with a queue of
:data:`QUEUE_LIMIT` changes; a browser that falls that far behind is sent ``resync`` and
dropped from the fan-out, and its ``EventSource`` reconnects to a fresh snapshot.
:func:`sse` (the wire format) is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from provisioner.web.board import Board, Change

log = logging.getLogger(__name__)

TICK_S = 1.0
KEEPALIVE_S = 15.0
MAX_SUBSCRIBERS = 256
QUEUE_LIMIT = 1024
RETRY_MS = 2000  # how long a browser waits before reconnecting
BUSY_FACTOR = 10  # the next read waits at least (BUSY_FACTOR - 1) x the last read's time


class FeedFull(Exception):
    """Too many browsers follow the feed already."""


def sse(event: str, data: Any, *, retry_ms: int | None = None) -> bytes:
    """One server-sent event: ``event:`` and one ``data:`` line of compact JSON (JSON
    escapes newlines, so a value can never end the event early)."""
    head = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    body = json.dumps(data, separators=(",", ":"), sort_keys=True)
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


class Feed:
    def __init__(self, board: Board, *, tick_s: float = TICK_S,
                 max_subscribers: int = MAX_SUBSCRIBERS):  # fmt: skip
        self.board = board
        self.tick_s = tick_s
        self.max_subscribers = max_subscribers
        self._queues: set[asyncio.Queue[Change | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="dashboard-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        await asyncio.to_thread(self.board.close)

    async def run(self) -> None:
        while True:
            spent = 0.0
            if self._queues:
                started = time.monotonic()
                await self.tick()
                spent = time.monotonic() - started
            await asyncio.sleep(max(self.tick_s, spent * (BUSY_FACTOR - 1)))

    async def tick(self) -> list[Change]:
        try:
            changes = await asyncio.to_thread(self.board.refresh)
        except Exception:  # a dashboard must not take serve down; logged, tried again
            log.exception("dashboard: refresh failed")
            return []
        self.ticks += 1
        for queue in list(self._queues):
            for change in changes:
                try:
                    queue.put_nowait(change)
                except asyncio.QueueFull:
                    self._queues.discard(queue)  # too far behind: it resyncs
                    break
        return changes

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def subscribe(self) -> asyncio.Queue[Change | None]:
        if len(self._queues) >= self.max_subscribers:
            raise FeedFull(f"{self.max_subscribers} browsers follow the dashboard already")
        queue: asyncio.Queue[Change | None] = asyncio.Queue(QUEUE_LIMIT)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Change | None]) -> None:
        self._queues.discard(queue)

    async def stream(
        self, queue: asyncio.Queue[Change | None], *, keepalive_s: float = KEEPALIVE_S
    ) -> AsyncIterator[bytes]:
        """What one browser reads: the table, then its changes (see the module)."""
        try:
            await self.tick()  # the feed reads nothing while nobody follows: fresh rows
            rows = [r.as_dict() for r in self.board.rows.values()]
            yield sse("snapshot", rows, retry_ms=RETRY_MS)
            while True:
                try:
                    change = await asyncio.wait_for(queue.get(), keepalive_s)
                except TimeoutError:
                    if queue not in self._queues:  # dropped for falling behind
                        yield sse("resync", {})
                        return
                    yield b": keepalive\n\n"
                    continue
                if change is None:  # the feed stopped
                    return
                yield sse(change.kind, change.data())
                if queue not in self._queues and queue.empty():
                    yield sse("resync", {})
                    return
        finally:
            self.unsubscribe(queue)
