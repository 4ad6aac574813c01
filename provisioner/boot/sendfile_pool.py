"""Big file bodies sent by worker threads: ``sendfile(2)`` off the event loop.

The loop's own ``loop.sendfile`` makes every sendfile call in its one thread, and on a
boot storm that copying is most of the work: 32 clients fetching a root image got 0.83x
of nginx's throughput (nginx: two workers). Here a body of :data:`THREAD_MIN_BYTES` or
more is sent by one of :data:`THREADS` threads, which release the GIL in the syscall, so
the copying spreads over the cores while the loop goes on answering DHCP, TFTP and the
API.

The socket stays the loop's and stays non-blocking: the thread sends on its own
duplicate of the descriptor (a close by the loop cannot hand the number to another
file mid-send), waits for room in poll(2) in one-second slices, and stops when the loop
closes the connection, ``serve`` stops (:meth:`SendfilePool.close`), or the client takes
nothing for :data:`IDLE_SECONDS`. When every
thread is busy (slow clients), the body goes the loop's way: a thread is never waited
for, so slow readers cannot hold up a new node's kernel.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

THREADS = 16
THREAD_MIN_BYTES = 1 << 20  # kernels, initrds and images; small files stay on the loop
IDLE_SECONDS = 60.0  # a client that takes no byte for this long is given up
_SLICE_MS = 1000


class SendfilePool:
    def __init__(self, threads: int = THREADS):
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._busy = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def take(self) -> bool:
        """Reserve a thread, or False when all are busy (send on the loop then)."""
        with self._lock:
            if self._busy >= self.threads:
                return False
            self._busy += 1
            return True

    async def send(
        self, sock: int, fd: int, offset: int, count: int, closing: Callable[[], bool]
    ) -> None:
        """Send ``count`` bytes of ``fd`` from ``offset`` on socket ``sock`` in a reserved
        thread (:meth:`take` first); ConnectionError or TimeoutError when it cannot."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="sendfile")
        own = os.dup(sock)
        try:
            loop = asyncio.get_running_loop()
            stop = self._stopping.is_set
            await loop.run_in_executor(
                self._pool, send_all, own, fd, offset, count, lambda: closing() or stop()
            )
        finally:
            os.close(own)
            with self._lock:
                self._busy -= 1

    def close(self) -> None:
        """Stop the sends in progress (within a second) and the threads."""
        self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._stopping = threading.Event()  # a later serve in this process sends again


def send_all(
    sock: int,
    fd: int,
    offset: int,
    count: int,
    closing: Callable[[], bool] = lambda: False,
    idle_s: float = IDLE_SECONDS,
) -> None:
    """``sendfile(2)`` until ``count`` bytes went out on the non-blocking ``sock``."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    end = offset + count
    idle = 0.0
    while offset < end:
        if closing():
            raise ConnectionError("the connection was closed")
        try:
            sent = os.sendfile(sock, fd, offset, end - offset)
        except BlockingIOError:
            if poller.poll(_SLICE_MS):
                idle = 0.0
                continue
            idle += _SLICE_MS / 1000
            if idle >= idle_s:
                raise TimeoutError(f"the client took nothing for {idle_s:.0f} s") from None
            continue
        if sent == 0:
            raise ConnectionError("the file ended before its planned length")
        offset += sent
